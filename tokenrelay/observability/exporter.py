"""The metrics on a port of their own (`TOKENRELAY_METRICS_PORT`), so that they need
not be served where the API is: prometheus_client's own small HTTP server, in a
daemon thread. Reading the registry there is safe: its metrics take their locks, and
the gauges read integers the event loop keeps (observability/telemetry.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from prometheus_client import start_http_server

from tokenrelay.observability.metrics import REGISTRY


@asynccontextmanager
async def metrics_server(host: str, port: int) -> AsyncIterator[None]:
    """Serve the registry on `host:port` (any path) while the block runs; OSError
    when the port cannot be bound."""
    server, thread = start_http_server(port, addr=host, registry=REGISTRY)
    try:
        yield
    finally:
        # shutdown() waits for the serving loop's next poll (up to 0.5 s): not here.
        await asyncio.to_thread(server.shutdown)
        server.server_close()
        thread.join()
