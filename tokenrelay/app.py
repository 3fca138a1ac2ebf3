"""create_app(settings): the HTTP layer over the stream core."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware

from tokenrelay import __version__
from tokenrelay.auth.factory import build_authenticator
from tokenrelay.config import Settings
from tokenrelay.pricing import ModelTable
from tokenrelay.providers.registry import build_provider, build_store, build_tickets
from tokenrelay.routes import errors, health, openapi, stream, web
from tokenrelay.routes.limits import BodySizeLimit
from tokenrelay.routes.security import SecurityHeaders
from tokenrelay.streams.manager import StreamManager, StreamTimings
from tokenrelay.streams.producer import RetryPolicy
from tokenrelay.validation import Limits, RequestValidator

CORS_REQUEST_HEADERS = [
    "authorization", "x-api-key", "content-type", "last-event-id", "idempotency-key",
    "x-request-id", "anthropic-version", "anthropic-beta",
]  # fmt: skip


def create_app(settings: Settings) -> FastAPI:
    models = ModelTable.from_file(settings.prices_file)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            store = build_store(settings)
            stack.push_async_callback(store.aclose)
            provider = build_provider(settings)
            stack.push_async_callback(provider.aclose)
            manager = StreamManager(
                log=store,
                provider=provider,
                models=models,
                retry=RetryPolicy(
                    retries=settings.upstream_retries,
                    base_delay=settings.retry_base_delay,
                    max_delay=settings.retry_max_delay,
                    retry_after_ceiling=settings.retry_after_ceiling,
                    continuations=settings.continuation_attempts,
                ),
                timings=StreamTimings(
                    heartbeat_interval=settings.heartbeat_interval,
                    abandon_after=settings.abandon_after,
                ),
            )
            stack.push_async_callback(manager.aclose)
            await manager.open()
            app.state.manager = manager
            app.state.tickets = build_tickets(settings, store)
            yield

    app = FastAPI(title="tokenrelay", version=__version__, lifespan=lifespan)
    app.state.settings = settings
    app.state.authenticator = build_authenticator(settings)
    app.state.validator = RequestValidator(
        Limits(
            max_prompt_chars=settings.max_prompt_chars,
            max_messages=settings.max_messages,
            default_max_tokens=settings.default_max_tokens,
            max_tokens_ceiling=settings.max_tokens_ceiling,
        ),
        models,
        settings.model,
        screen=settings.prompt_screen,
    )
    errors.install(app)
    openapi.install(app, sorted(models.models), app.state.validator.limits)
    app.include_router(stream.router)
    app.include_router(health.router)
    app.include_router(web.router)
    app.mount("/static", web.static, name="static")
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_credentials=settings.cors_allow_credentials,
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=CORS_REQUEST_HEADERS,
            expose_headers=["x-request-id", "x-stream-id"],
            max_age=600,
        )
    app.add_middleware(SecurityHeaders, hsts=settings.tls)
    return app
