"""A gateway served as `tokenrelay serve` serves it, inside the test's own event loop,
for tests that hand `create_app` something of their own (a tracer provider) or count
calls inside it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from fastapi import FastAPI

from tokenrelay.config import Settings
from tokenrelay.server import StopRequest, run


@contextlib.asynccontextmanager
async def served(app: FastAPI, config: Settings) -> AsyncIterator[None]:
    """`app` on `config.host`:`config.port` until the block ends (then drained and
    stopped)."""
    stop, started = StopRequest(), asyncio.Event()
    serving = asyncio.create_task(run(app, config, stop, started))
    waiting = asyncio.create_task(started.wait())
    await asyncio.wait([serving, waiting], return_when=asyncio.FIRST_COMPLETED)
    waiting.cancel()
    if serving.done():
        serving.result()  # it failed to start: say why
        raise AssertionError("the gateway stopped before it served")
    try:
        yield
    finally:
        stop()
        await serving
