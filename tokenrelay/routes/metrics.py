"""`GET /metrics`: the process's Prometheus metrics (observability/metrics.py).

On the main port it is open while the gateway has no authentication (its port is
then its own machine's, or knowingly open), and for admins only when it has: the
figures say how busy the gateway is and on which models. A scraper sends an admin
key (`Authorization: Bearer …`), or the metrics go on a port of their own
(`TOKENRELAY_METRICS_PORT`, observability/exporter.py) that is not published.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from prometheus_client.exposition import choose_encoder
from starlette.responses import Response

from tokenrelay.errors import PermissionDenied
from tokenrelay.observability.metrics import REGISTRY
from tokenrelay.routes.deps import GatewayDep, authenticate

router = APIRouter()


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request, gw: GatewayDep) -> Response:
    if gw.authenticator.mode != "none" and not (await authenticate(gw, request)).admin:
        raise PermissionDenied("Only an admin may read the metrics")
    # Prometheus asks for OpenMetrics when it can; the classic text format otherwise.
    encode, content_type = choose_encoder(request.headers.get("accept", ""))
    return Response(encode(REGISTRY), headers={"content-type": content_type})
