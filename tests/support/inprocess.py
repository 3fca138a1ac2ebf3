"""A gateway served by uvicorn inside the test's own event loop, for tests that hand
`create_app` something of their own (a tracer provider) or count calls inside it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import uvicorn
from fastapi import FastAPI

from tests.support.polling import eventually_async
from tokenrelay.config import Settings
from tokenrelay.server import GatewayServer


@contextlib.asynccontextmanager
async def served(app: FastAPI, config: Settings) -> AsyncIterator[GatewayServer]:
    """`app` on 127.0.0.1:`config.port` until the block ends (then drained and stopped)."""
    server = GatewayServer(
        uvicorn.Config(app, host="127.0.0.1", port=config.port, log_level="warning",
                       lifespan="on"),
        app,
        config.drain_timeout,
    )  # fmt: skip
    serving = asyncio.create_task(server.serve())
    await eventually_async(lambda: server.started or serving.done(), what="the gateway")
    assert server.started, serving.exception()
    try:
        yield server
    finally:
        server.should_exit = True
        await serving
