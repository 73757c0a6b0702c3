"""What `kbundle up` offers Prometheus: a file_sd target file with the labels a PodMonitor gives
on a cluster, and the ingress's queue-proxy-shaped per-revision metrics.

On a cluster the PodMonitor in inferenceservices/monitoring/ relabels each pod to
{namespace, isvc, component, revision, pod}; locally each component process is one "pod" with
the same labels, and the ingress (which plays Knative's queue-proxy) is container "queue-proxy"
of component "predictor".
The file is rewritten (atomically) whenever the routed revisions change; Prometheus watches it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from kbundle.atomic import atomic_write
from kbundle.local.metrics import exposition

if TYPE_CHECKING:
    from kbundle.local.service import LocalService

SD_FILE = "prometheus-targets.json"
METRICS_PATH = "/kbundle/metrics"


def sd_path(state_dir: Path) -> Path:
    return Path(state_dir) / SD_FILE


def targets(service: LocalService, ingress: str) -> list[dict]:
    """file_sd entries: every component process of every revision with traffic, and the ingress."""
    spec = service.spec
    if spec is None:
        return []
    base = {"namespace": spec.namespace, "isvc": spec.name}
    out = [
        {
            "targets": [ingress],
            # As on a cluster: the queue-proxy container of the predictor's pod.
            "labels": {
                **base,
                "component": "predictor",
                "container": "queue-proxy",
                "__metrics_path__": METRICS_PATH,
            },
        }
    ]
    for t in service.targets:
        for proc, launch in zip(t.runtime.processes, t.runtime.launches, strict=True):
            role = proc.label.rsplit("/", 1)[-1]
            labels = {**base, "component": role, "revision": t.runtime.name}
            labels["container"] = "kserve-container"
            labels["pod"] = f"{t.runtime.name}-{role}"
            out.append({"targets": [f"127.0.0.1:{launch.http_port}"], "labels": labels})
    return out


def write_targets(service: LocalService, ingress: str) -> None:
    atomic_write(
        sd_path(service.options.state_dir), json.dumps(targets(service, ingress), indent=1)
    )


def metrics_text(service: LocalService) -> str:
    """The ingress's /kbundle/metrics: queue-proxy metrics for every revision it routes to."""
    spec = service.spec
    revisions = []
    for t in service.targets:
        labels = {
            "namespace_name": spec.namespace,
            "service_name": f"{spec.name}-predictor",
            "configuration_name": f"{spec.name}-predictor",
            "revision_name": t.runtime.name,
        }
        revisions.append((t.runtime.stats, labels))
    return exposition(revisions)
