"""create_app(settings): the HTTP layer over the stream core."""

from __future__ import annotations

import contextlib
import ctypes
import gc
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import TYPE_CHECKING

from fastapi import APIRouter, FastAPI

from tokenrelay import __version__, middleware
from tokenrelay.config import Settings
from tokenrelay.gateway import Gateway, open_gateway, prepare
from tokenrelay.observability import telemetry
from tokenrelay.observability.exporter import metrics_server
from tokenrelay.routes import (
    batches,
    conversations,
    errors,
    health,
    messages,
    metrics,
    openai_chat,
    openapi,
    ops,
    stream,
    upstreams,
    usage,
    web,
)

if TYPE_CHECKING:
    from opentelemetry.trace import TracerProvider


GC_THRESHOLDS = (10_000, 20, 20)


def create_app(settings: Settings, *, tracer_provider: TracerProvider | None = None) -> FastAPI:
    """The app; its `Gateway` (store, provider, manager) opens with the lifespan.
    What can be checked without I/O (keys, models, limits) fails here, at start."""
    prepared = prepare(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            gw = await stack.enter_async_context(open_gateway(settings, prepared, tracer_provider))
            if settings.metrics_port:
                host = settings.metrics_host or settings.host
                await stack.enter_async_context(metrics_server(host, settings.metrics_port))
            telemetry.watch(gw.manager, gw.ledger)
            stack.callback(telemetry.unwatch)
            app.state.gateway = gw
            # Everything loaded so far (the SDK, SQLAlchemy, the app: some 10^5 objects)
            # lives as long as the process: out of the collector's sight, so that its
            # full collections, which the per-token allocations set off, do not walk it.
            gc.collect()
            gc.freeze()
            # Streams keep tens of thousands of objects alive for seconds (suspended
            # coroutines, their futures and timers, the log's entries): at the default
            # thresholds the collector walks them again and again, 29 % of the CPU at
            # 500 paced streams. A young generation of 10,000 and older ones collected a
            # twentieth as often halve that (GC_THRESHOLDS in docs/benchmarks.md).
            stack.callback(gc.set_threshold, *gc.get_threshold())
            gc.set_threshold(*GC_THRESHOLDS)
            _give_back_freed_heap()
            yield

    app = FastAPI(
        title="tokenrelay",
        version=__version__,
        lifespan=lifespan,
        # FastAPI's own OpenTelemetry spans would record a request's query string (an
        # EventSource stream's prompt): the gateway's spans are observability/tracing.py's.
        telemetry={"tracing": False, "metrics": False, "logs": False},
        middleware=middleware.stack(settings),
    )
    errors.install(app)
    openapi.install(app, sorted(prepared.models.models), prepared.validator.limits)
    routers = [stream, conversations, batches, messages, openai_chat, usage, upstreams, health]
    if not settings.metrics_port:  # else /metrics is on its own port only
        routers.append(metrics)
    routers += [web, ops]
    for module in routers:
        _add_routes(app, module.router)
    app.mount("/static", web.static, name="static")
    return app


def _add_routes(app: FastAPI, router: APIRouter) -> None:
    """The router's routes, on the app's own router: what `include_router` does, flat.

    Why not `include_router`: FastAPI keeps each included router as a branch that a
    request is matched against in turn, each branch scanning its routes twice (once
    to match, once to pick the route). Over eleven routers that was half of what the
    stack cost a request (`GET /healthz`: 180 µs in all, docs/benchmarks.md). The
    routers here have no prefix, dependency, tag or lifespan of their own, which is
    what would make an inclusion differ from their routes added as they are."""
    assert not (router.prefix or router.dependencies or router.tags), router
    app.router.routes.extend(router.routes)


def _give_back_freed_heap() -> None:
    """What starting freed (a migration's work above all) glibc keeps mapped unless
    asked; malloc_trim hands it back: idle RSS 95 -> 93 MiB, 108 -> 104 after Alembic."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def gateway_of(app: FastAPI) -> Gateway | None:
    """The app's gateway once its lifespan has opened it."""
    gw: Gateway | None = getattr(app.state, "gateway", None)
    return gw
