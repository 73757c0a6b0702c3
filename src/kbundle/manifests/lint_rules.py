"""Our lint: things the cluster accepts that hurt in production (warnings), plus the pod rules
the API server enforces only when it creates the pod (errors: the InferenceService is accepted,
its pods never start)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from kbundle.manifests import isvc
from kbundle.manifests.findings import Issue, error, format_path, warning

PROGRESS_DEADLINE = "serving.knative.dev/progress-deadline"
KNATIVE_DEFAULT_PROGRESS_DEADLINE_S = 600
# Whole words of an env name (AWS_SECRET_ACCESS_KEY, HF_TOKEN, DB_PASSWORD, APIKEY), so that
# TOKENIZERS_PARALLELISM or KEYCLOAK_URL are not mistaken for secrets.
SECRET_WORD = re.compile(r"(KEY|SECRET|TOKEN|PASSWORD|PASSWD|PWD|CREDENTIALS?)$", re.IGNORECASE)
DURATION = re.compile(r"^(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")


def check(obj: dict[str, Any], default_mode: str) -> list[Issue]:
    mode = isvc.deployment_mode(obj, default_mode)
    gpu_names = isvc.gpu_resource_names(obj)
    issues: list[Issue] = []
    for name, path, comp in isvc.serving_units(obj):
        for cpath, container in isvc.containers(comp, path):
            issues += _gpu_limits(cpath, container, gpu_names)
            issues += _image_tag(cpath, container)
            issues += _plain_secrets(cpath, container)
        issues += _gpu_cold_start(obj, mode, path, comp, gpu_names)
        issues += _workers(name, path, comp)
        if name == "transformer":
            issues += _predictor_protocol(path, comp)
    return issues


def _gpu_limits(
    path: isvc.Path_, container: dict[str, Any], gpu_names: set[str]
) -> Iterator[Issue]:
    resources = container.get("resources") or {}
    requests, limits = resources.get("requests") or {}, resources.get("limits") or {}
    for res in sorted(
        {str(k) for k in (*requests, *limits) if isvc.is_gpu_resource(str(k), gpu_names)}
    ):
        req, lim = requests.get(res), limits.get(res)
        if lim is None:
            yield error(
                (*path, "resources", "limits"),
                f"{res} is requested ({req}) without a limit: "
                "extended resources need limits, and the pod will be rejected",
                "pod/gpu-limits",
            )
        elif req is not None and str(req) != str(lim):
            yield error(
                (*path, "resources", "requests", res),
                f"{res} requests ({req}) != limits ({lim}): "
                "GPUs cannot be overcommitted, the pod will be rejected",
                "pod/gpu-limits",
            )


def _seconds(value: Any) -> int | None:
    """Knative durations like '20m', '1h30m', '900s' (or a bare number of seconds)."""
    text = str(value).strip()
    if text.isdigit():
        return int(text)
    match = DURATION.match(text)
    if not match or not any(match.groups()):
        return None
    h, m, s = (int(g or 0) for g in match.groups())
    return h * 3600 + m * 60 + s


def _probe_budget(probe: dict[str, Any]) -> int:
    """Longest a startup probe lets a container start: delay + failureThreshold x period."""
    return int(probe.get("initialDelaySeconds", 0)) + int(probe.get("failureThreshold", 3)) * int(
        probe.get("periodSeconds", 10)
    )


def _gpu_cold_start(
    obj: dict[str, Any], mode: str, path: isvc.Path_, comp: dict[str, Any], gpu_names: set[str]
) -> Iterator[Issue]:
    if mode != isvc.KNATIVE or comp.get("minReplicas") != 0:
        return
    main = isvc.main_container(comp, path)
    if main is None or not any(isvc.has_gpu(c, gpu_names) for _, c in isvc.containers(comp, path)):
        return
    cpath, container = main
    deadline_raw = (comp.get("annotations") or {}).get(PROGRESS_DEADLINE) or isvc.annotations(
        obj
    ).get(PROGRESS_DEADLINE)
    where = (*path, "minReplicas")
    probe = container.get("startupProbe")
    if not isinstance(probe, dict):
        yield warning(
            where,
            "GPU component scales to zero but its container has no startupProbe: a cold "
            "start (image pull, CUDA init, engine build) will fail readiness before the model "
            f"is loaded; add a startupProbe on {format_path(cpath)}",
            "lint/gpu-cold-start",
        )
    if deadline_raw is None:
        yield warning(
            where,
            f"GPU component scales to zero without the {PROGRESS_DEADLINE} annotation: "
            f"Knative gives up on a revision after {KNATIVE_DEFAULT_PROGRESS_DEADLINE_S}s",
            "lint/gpu-cold-start",
        )
    deadline = (
        _seconds(deadline_raw) if deadline_raw is not None else KNATIVE_DEFAULT_PROGRESS_DEADLINE_S
    )
    if isinstance(probe, dict) and deadline is not None and _probe_budget(probe) > deadline:
        yield warning(
            (*cpath, "startupProbe"),
            f"startup probe budget {_probe_budget(probe)}s exceeds the "
            f"progress deadline {deadline}s: Knative fails the revision first",
            "lint/gpu-cold-start",
        )


def _workers(name: str, path: isvc.Path_, comp: dict[str, Any]) -> Iterator[Issue]:
    for index, container in enumerate(comp.get("containers") or []):
        if not isinstance(container, dict):
            continue
        found = isvc.arg_value(isvc.container_args(container), "--workers")
        cpath = (*path, "containers", index)
        several = found is not None and found[1] is not None and found[1].isdigit()
        if several and int(found[1]) > 1 and name == "transformer":
            yield warning(
                (*cpath, "args"),
                f"--workers {found[1]}: KServe's multi-process mode pickles "
                "the model server (the transformer loses its predictor config); scale with "
                "replicas instead",
                "lint/workers",
            )
        elif several and int(found[1]) > 1 and not _memory_dev_shm(container, comp):
            yield warning(
                (*cpath, "args"),
                f"--workers {found[1]}: the workers hand tensors to the engine through /dev/shm, "
                "64 MiB in a pod unless an emptyDir with medium: Memory is mounted there",
                "lint/workers",
            )
        cc = comp.get("containerConcurrency")
        if (
            name == "transformer"
            and index == 0
            and found is None
            and isinstance(cc, int)
            and cc > 1
        ):
            yield warning(
                (*cpath, "args"),
                f"the controller appends --workers {cc} (containerConcurrency) "
                "to a custom transformer without --workers; add '--workers', '1'",
                "lint/workers",
            )


def _memory_dev_shm(container: dict[str, Any], comp: dict[str, Any]) -> bool:
    """The container mounts an emptyDir with medium: Memory at /dev/shm (kbundle --workers)."""
    mounts = [m for m in container.get("volumeMounts") or [] if isinstance(m, dict)]
    names = {m.get("name") for m in mounts if m.get("mountPath") == "/dev/shm"}
    volumes = [v for v in comp.get("volumes") or [] if isinstance(v, dict)]
    return any(
        v.get("name") in names and (v.get("emptyDir") or {}).get("medium") == "Memory"
        for v in volumes
    )


def _predictor_protocol(path: isvc.Path_, comp: dict[str, Any]) -> Iterator[Issue]:
    main = isvc.main_container(comp, path)
    if main is None or "containers" not in main[0]:
        return
    cpath, container = main
    args = isvc.container_args(container)
    if isvc.arg_value(args, "--predictor_protocol") is None:
        hint = (
            " (--protocol is parsed but ignored by KServe)"
            if isvc.arg_value(args, "--protocol")
            else ""
        )
        yield warning(
            (*cpath, "args"),
            "transformer has no --predictor_protocol: KServe defaults to v1 and "
            f"the controller does not add it{hint}; set v2 or grpc-v2",
            "lint/predictor-protocol",
        )


def _image_tag(path: isvc.Path_, container: dict[str, Any]) -> Iterator[Issue]:
    image = container.get("image")
    if not isinstance(image, str) or "@" in image:
        return
    last = image.rsplit("/", 1)[-1]
    tag = last.split(":", 1)[1] if ":" in last else None
    if tag is None or tag == "latest":
        what = "no tag (means latest)" if tag is None else "the 'latest' tag"
        yield warning(
            (*path, "image"),
            f"image {image!r} has {what}: revisions become unreproducible and "
            "nodes may run different builds; pin a version or digest",
            "lint/image-tag",
        )


def _plain_secrets(path: isvc.Path_, container: dict[str, Any]) -> Iterator[Issue]:
    for index, item in enumerate(container.get("env") or []):
        if not isinstance(item, dict):
            continue
        name, value = str(item.get("name", "")), item.get("value")
        words = re.split(r"[_\-.]", name)
        if value in (None, "") or str(value).startswith("/"):  # unset, or a path to a mounted file
            continue
        if any(SECRET_WORD.search(w) for w in words if w):
            yield warning(
                (*path, "env", index, "value"),
                f"env {name} carries a literal value that looks "
                "like a secret: use valueFrom.secretKeyRef",
                "lint/plain-secret",
            )
