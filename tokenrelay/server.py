"""Running the gateway under uvicorn, with a shutdown that ends streams first.

uvicorn waits for open connections before it runs the lifespan shutdown, and an
SSE connection stays open until its stream ends; so the streams are ended first.
"""

from __future__ import annotations

import logging
import signal
import socket

import uvicorn
from fastapi import FastAPI

from tokenrelay.app import create_app, gateway_of
from tokenrelay.config import Settings


class GatewayServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, app: FastAPI, drain_timeout: float) -> None:
        super().__init__(config)
        self.app = app
        self.drain_timeout = drain_timeout

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        gw = gateway_of(self.app)
        if gw is not None:
            await gw.manager.drain(self.drain_timeout)
        await super().shutdown(sockets)
        # uvicorn re-raises a captured SIGTERM after shutdown, which would make a clean,
        # complete shutdown exit with -15; the drain above is the answer to that signal.
        self._captured_signals = [s for s in self._captured_signals if s != signal.SIGTERM]


def serve(settings: Settings, log_level: str = "info") -> None:
    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # One line per upstream request is noise at this volume; failures are logged by us.
    logging.getLogger("httpx2").setLevel(logging.WARNING)
    # Alembic announces each of its plugins at start; the migration itself is worth a line.
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        log_level=log_level,
        access_log=False,
        timeout_graceful_shutdown=5,
        backlog=4096,
        ssl_certfile=str(settings.ssl_certfile) if settings.ssl_certfile else None,
        ssl_keyfile=str(settings.ssl_keyfile) if settings.ssl_keyfile else None,
    )
    GatewayServer(config, app, settings.drain_timeout).run()
