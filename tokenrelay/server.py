"""Running the gateway under uvicorn, with a shutdown that ends streams first.

uvicorn waits for open connections before it runs the lifespan shutdown, and an
SSE connection stays open until its stream ends; so the streams are ended first.
"""

from __future__ import annotations

import logging
import signal
import socket
import sys
from urllib.parse import urlsplit

import uvicorn
from fastapi import FastAPI

from tokenrelay.app import create_app, gateway_of
from tokenrelay.config import Settings
from tokenrelay.observability.log import configure_logging, default_format, log_event

log = logging.getLogger("tokenrelay.server")


class GatewayServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, app: FastAPI, drain_timeout: float) -> None:
        super().__init__(config)
        self.app = app
        self.drain_timeout = drain_timeout

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        gw = gateway_of(self.app)
        if gw is not None:
            manager = gw.manager
            log_event(
                log, "shutdown", active_streams=manager.active_streams,
                connected_readers=manager.connected_readers, drain_timeout_s=self.drain_timeout,
            )  # fmt: skip
            await manager.drain(self.drain_timeout)
        await super().shutdown(sockets)
        # uvicorn re-raises a captured SIGTERM after shutdown, which would make a clean,
        # complete shutdown exit with -15; the drain above is the answer to that signal.
        self._captured_signals = [s for s in self._captured_signals if s != signal.SIGTERM]


def serve(settings: Settings) -> None:
    """Run until SIGTERM or SIGINT; logs go to stdout, one event a line."""
    configure_logging(settings.log_format or default_format(sys.stdout), settings.log_level)
    # One line per upstream request is noise at this volume; failures are logged by us.
    logging.getLogger("httpx2").setLevel(logging.WARNING)
    # Alembic announces each of its plugins at start; the migration itself is worth a line.
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)
    app = create_app(settings)
    scheme = "https" if settings.tls else "http"
    log_event(
        log, "serving", url=f"{scheme}://{settings.host}:{settings.port}",
        provider=settings.resolved_provider(), store=_without_credentials(settings.store),
        model=settings.model, auth=settings.auth, metrics_port=settings.metrics_port or None,
    )  # fmt: skip
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        # uvicorn's loggers propagate to the root handler configured above.
        log_config=None,
        log_level=settings.log_level,
        access_log=settings.access_log,
        timeout_graceful_shutdown=5,
        backlog=4096,
        ssl_certfile=str(settings.ssl_certfile) if settings.ssl_certfile else None,
        ssl_keyfile=str(settings.ssl_keyfile) if settings.ssl_keyfile else None,
    )
    GatewayServer(config, app, settings.drain_timeout).run()


def _without_credentials(url: str) -> str:
    """A store URL as it may be logged: redis://:secret@host/0 -> redis://host/0."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()
