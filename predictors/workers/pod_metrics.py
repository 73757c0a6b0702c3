"""/metrics of the whole pod on every worker: prometheus-client's multiprocess mode.

The supervisor sets PROMETHEUS_MULTIPROC_DIR before any child starts, so every process (owner
and workers) writes its counters and histograms to files there; a scrape of any worker sums
them. Counters of a worker that died stay in the sum, so request totals still add up.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastapi import Request, Response
from prometheus_client import CollectorRegistry, exposition, multiprocess

if TYPE_CHECKING:
    from kbundle.serving.server import KbundleRESTServer


async def pod_metrics(request: Request) -> Response:
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    encoder, content_type = exposition.choose_encoder(request.headers.get("accept"))
    return Response(content=encoder(registry), headers={"content-type": content_type})


def pod_metrics_hook(server: KbundleRESTServer) -> None:
    """Added ahead of kserve's own /metrics (which reads this process's registry only)."""
    from kserve.model_server import app

    app.add_api_route("/metrics", pod_metrics, methods=["GET"], include_in_schema=False)
