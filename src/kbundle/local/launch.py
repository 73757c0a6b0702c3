"""The command line and environment the KServe controller would give each component, made local.

What changes from the cluster, and only that: ports are free local ports instead of 8080/8081,
`/mnt/models` (and other mount paths) become the fetched local folders, and the transformer's
`--predictor_host` names the local predictor instead of `<isvc>-predictor.<namespace>`.
What the controller appends to a custom transformer is appended here too: `--model_name <isvc>`,
`--predictor_host`, `--http_port`, and `--workers <containerConcurrency>` when that is set
(transformer_custom.go). A `spec.predictor.model` gets the runtime's usual
`--model_name <isvc> --model_dir /mnt/models`.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass

from kbundle.local.manifest import ComponentSpec
from kbundle.serving.limits import BIND_HOST_ENV

REVISION_ENV = "KBUNDLE_MODEL_VERSION"
# The revision label of the components' metrics (K_REVISION on a Knative pod, else this), and the
# Knative-like service/configuration names, so local metrics have the cluster's shape.
METRICS_REVISION_ENV = "KBUNDLE_REVISION"


@dataclass(frozen=True)
class Launch:
    argv: list[str]
    env: dict[str, str]
    model_name: str
    http_port: int
    grpc_port: int


def get_flag(args: Sequence[str], flag: str) -> str | None:
    for i, arg in enumerate(args):
        if arg == flag and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return None


def set_flag(args: Sequence[str], flag: str, value: str) -> list[str]:
    """Replace `--flag V` / `--flag=V`, or append `--flag value`."""
    out, i, done = [], 0, False
    while i < len(args):
        arg = args[i]
        if arg == flag and i + 1 < len(args):
            out += [flag, value]
            i, done = i + 2, True
            continue
        if arg.startswith(flag + "="):
            out.append(f"{flag}={value}")
            i, done = i + 1, True
            continue
        out.append(arg)
        i += 1
    return out if done else [*out, flag, value]


def map_mounts(value: str, mounts: dict[str, str]) -> str:
    """'/mnt/models/x' -> '<local>/x', also inside '--flag=/mnt/models'."""
    if value.startswith("--") and "=" in value:
        flag, _, rest = value.partition("=")
        return f"{flag}={map_mounts(rest, mounts)}"
    for mount, local in sorted(mounts.items(), key=lambda kv: -len(kv[0])):
        if value == mount or value.startswith(mount + "/"):
            return local + value[len(mount) :]
    return value


def _base_env(
    spec: ComponentSpec, mounts: dict[str, str], revision: str, service: str
) -> dict[str, str]:
    env = {k: map_mounts(v, mounts) if k != "STORAGE_URI" else v for k, v in spec.env}
    env.setdefault(REVISION_ENV, revision)
    env.setdefault(METRICS_REVISION_ENV, revision)
    env.setdefault("K_SERVICE", service)
    env.setdefault("K_CONFIGURATION", service)
    env.setdefault(BIND_HOST_ENV, "127.0.0.1")  # local components: loopback only
    return env


def predictor_launch(
    spec: ComponentSpec,
    isvc: str,
    revision: str,
    mounts: dict[str, str],
    http_port: int,
    grpc_port: int,
) -> Launch:
    args = [map_mounts(a, mounts) for a in spec.args]
    if spec.model_style:
        if get_flag(args, "--model_name") is None:
            args = set_flag(args, "--model_name", isvc)
        if get_flag(args, "--model_dir") is None and "/mnt/models" in mounts:
            args = set_flag(args, "--model_dir", mounts["/mnt/models"])
    args = set_flag(set_flag(args, "--http_port", str(http_port)), "--grpc_port", str(grpc_port))
    return Launch(
        argv=[sys.executable, "-m", spec.module, *args],
        env=_base_env(spec, mounts, revision, f"{isvc}-predictor"),
        model_name=get_flag(args, "--model_name") or "model",
        http_port=http_port,
        grpc_port=grpc_port,
    )


def transformer_launch(
    spec: ComponentSpec,
    isvc: str,
    revision: str,
    mounts: dict[str, str],
    predictor: Launch,
    http_port: int,
    grpc_port: int,
) -> Launch:
    args = [map_mounts(a, mounts) for a in spec.args]
    if get_flag(args, "--model_name") is None:
        args = set_flag(args, "--model_name", isvc)
    protocol = get_flag(args, "--predictor_protocol") or "v1"
    port = predictor.grpc_port if protocol.startswith("grpc") else predictor.http_port
    args = set_flag(args, "--predictor_host", f"127.0.0.1:{port}")
    args = set_flag(set_flag(args, "--http_port", str(http_port)), "--grpc_port", str(grpc_port))
    if spec.container_concurrency and get_flag(args, "--workers") is None:
        args = set_flag(args, "--workers", str(spec.container_concurrency))
    return Launch(
        argv=[sys.executable, "-m", spec.module, *args],
        env=_base_env(spec, mounts, revision, f"{isvc}-transformer"),
        model_name=get_flag(args, "--model_name") or isvc,
        http_port=http_port,
        grpc_port=grpc_port,
    )
