"""create_app(settings): the HTTP layer over the stream core."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from tokenrelay import __version__, middleware
from tokenrelay.auth.factory import build_authenticator
from tokenrelay.config import Settings
from tokenrelay.gateway import Gateway, open_gateway
from tokenrelay.pricing import ModelTable
from tokenrelay.routes import errors, health, openapi, stream, web
from tokenrelay.validation import Limits, RequestValidator


def create_app(settings: Settings) -> FastAPI:
    """The app; its `Gateway` (store, provider, manager) opens with the lifespan.
    What can be checked without I/O (keys, models, limits) fails here, at start."""
    models = ModelTable.from_file(settings.prices_file)
    authenticator = build_authenticator(settings)
    validator = RequestValidator(
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

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with open_gateway(
            settings, models=models, validator=validator, authenticator=authenticator
        ) as gw:
            app.state.gateway = gw
            yield

    app = FastAPI(
        title="tokenrelay",
        version=__version__,
        lifespan=lifespan,
        middleware=middleware.stack(settings),
    )
    errors.install(app)
    openapi.install(app, sorted(models.models), validator.limits)
    app.include_router(stream.router)
    app.include_router(health.router)
    app.include_router(web.router)
    app.mount("/static", web.static, name="static")
    return app


def gateway_of(app: FastAPI) -> Gateway | None:
    """The app's gateway once its lifespan has opened it."""
    gw: Gateway | None = getattr(app.state, "gateway", None)
    return gw
