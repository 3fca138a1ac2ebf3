"""Running the gateway under granian, in this process, with a shutdown that ends
streams first.

Why granian rather than uvicorn: its HTTP layer is Rust on a thread of its own, so the
event loop runs only the gateway's Python. At 500 paced streams that halves the CPU
per token and keeps the asked rate where uvicorn kept half of it (docs/benchmarks.md).

Why embedded (granian's `embed.Server`) rather than its process manager: one
process, whose event loop, signals and lifespan are ours. The order of a shutdown is
the gateway's to keep: on SIGTERM or SIGINT the streams are drained while the port
still answers (new streams get a retryable 503, clients of running ones resume on
another instance), then the server stops, then the lifespan closes the store and
flushes the ledger. A second signal ends the running streams at once (with the
retryable `shutdown` error) instead of waiting for them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import sys
from collections.abc import Coroutine
from typing import Any
from urllib.parse import urlsplit

import uvloop
from fastapi import FastAPI
from granian.constants import HTTPModes, Interfaces, SSLProtocols
from granian.http import HTTP1Settings
from granian.log import LogLevels
from granian.server.embed import Server

from tokenrelay.app import create_app, gateway_of
from tokenrelay.config import Settings
from tokenrelay.middleware.access_log import AccessLog
from tokenrelay.observability.log import configure_logging, default_format, log_event
from tokenrelay.routes.direct import DirectLane

log = logging.getLogger("tokenrelay.server")

# Connections granian takes before the kernel's queue: a burst of 2,000 streams
# opened at once must not be refused.
BACKLOG = 4096
# Once the streams are drained, what is left (a request mid-way) gets this long.
STOP_TIMEOUT_S = 5.0


def serve(settings: Settings) -> None:
    """Run until SIGTERM or SIGINT; logs go to stdout, one event a line."""
    configure_logging(
        settings.log_format or default_format(sys.stdout),
        settings.log_level,
        flush_after=settings.log_flush_ms / 1000,
    )
    # Alembic announces each of its plugins at start; the migration itself is worth a line.
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)
    app = create_app(settings)
    scheme = "https" if settings.tls else "http"
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    log_event(
        log, "serving", url=f"{scheme}://{host}:{settings.port}",
        provider=settings.resolved_provider(), store=_without_credentials(settings.store),
        model=settings.model, auth=settings.auth, metrics_port=settings.metrics_port or None,
    )  # fmt: skip
    try:
        uvloop.run(_serve_until_signalled(app, settings))
    except StartupFailed:
        sys.exit(3)


class StartupFailed(Exception):
    pass


class StopRequest:
    """Called once: drain, then stop. Called again: stop now."""

    def __init__(self) -> None:
        self.requested = asyncio.Event()
        self.forced = asyncio.Event()

    def __call__(self) -> None:
        (self.forced if self.requested.is_set() else self.requested).set()


async def _serve_until_signalled(app: FastAPI, settings: Settings) -> None:
    stop = StopRequest()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop)
    await run(app, settings, stop)


async def run(
    app: FastAPI, settings: Settings, stop: StopRequest, started: asyncio.Event | None = None
) -> None:
    """Open the app's lifespan, serve it on `settings.host:port` (`started` is set
    once the port listens) until `stop()`, drain, stop serving, close the lifespan."""
    _refuse_a_port_in_use(settings.host, settings.port)
    async with contextlib.AsyncExitStack() as stack:
        try:
            await stack.enter_async_context(app.router.lifespan_context(app))
        except Exception as exc:
            log.exception("startup_failed", exc_info=exc)
            raise StartupFailed from exc
        lane = DirectLane(app)
        server = _server(AccessLog(lane) if settings.access_log else lane, settings)
        if started is not None:
            server.on_startup(started.set)
        serving = asyncio.create_task(server.serve(), name="http-server")
        await _first(serving, stop.requested.wait())
        if serving.done():  # it could not bind, or its worker died
            serving.result()
            return
        gw = gateway_of(app)
        if gw is not None and not stop.forced.is_set():
            manager = gw.manager
            log_event(
                log, "shutdown", active_streams=manager.active_streams,
                connected_readers=manager.connected_readers,
                drain_timeout_s=settings.drain_timeout,
            )  # fmt: skip
            draining = asyncio.create_task(manager.drain(settings.drain_timeout))
            await _first(draining, stop.forced.wait())
            if not draining.done():  # a second signal: end the streams now
                draining.cancel()
                await asyncio.gather(draining, return_exceptions=True)
                await manager.aclose()
        server.stop()  # type: ignore[no-untyped-call]
        try:
            await asyncio.wait_for(serving, STOP_TIMEOUT_S)
        except TimeoutError:
            log_event(log, "shutdown_forced", level=logging.WARNING, after_s=STOP_TIMEOUT_S)


async def _first(task: asyncio.Task[None], other: Coroutine[Any, Any, Any]) -> None:
    """Wait until `task` is done or `other` returns (it is then cancelled)."""
    waiter = asyncio.ensure_future(other)
    await asyncio.wait([task, waiter], return_when=asyncio.FIRST_COMPLETED)
    waiter.cancel()


def _refuse_a_port_in_use(host: str, port: int) -> None:
    """granian binds with SO_REUSEPORT: a second gateway on a port already served would
    silently share its connections. A bind without it fails on a listening port."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is fine
        try:
            probe.bind((host, port))
        except OSError as exc:
            log_event(
                log, "bind_failed", level=logging.ERROR, host=host, port=port,
                error=exc.strerror or type(exc).__name__,
            )  # fmt: skip
            raise StartupFailed from exc


def _server(app: object, settings: Settings) -> Server:
    server = Server(
        app,
        address=settings.host,
        port=settings.port,
        # The lifespan is run above, around the server, not by it.
        interface=Interfaces.ASGINL,
        http=HTTPModes.http1,
        websockets=False,
        backlog=BACKLOG,
        backpressure=BACKLOG,
        http1_settings=HTTP1Settings(keep_alive=True),
        # granian's errors (a request it could not hand over) in the same JSON lines as
        # ours; not its announcements (the gateway says what it serves), nor a line per
        # write to a client that has gone.
        log_level=LogLevels.error,
        log_dictconfig={"loggers": {"_granian": {"propagate": True}}},
        ssl_cert=settings.ssl_certfile,
        ssl_key=settings.ssl_keyfile,
        ssl_protocol_min=SSLProtocols.tls12,
    )
    server.workers_kill_timeout = int(STOP_TIMEOUT_S)
    return server


def _without_credentials(url: str) -> str:
    """A store URL as it may be logged: redis://:secret@host/0 -> redis://host/0."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()
