"""What a request costs the HTTP layer, counted rather than timed, so that a
regression fails here (the stream core's counts are tests/test_hot_path.py's).

- The streaming routes start a stream without FastAPI's per-request parameter solver,
  and past the rest of its stack (the direct lane: the app's own middleware only); a
  request whose parameters need its validation still gets it, and its error word for
  word.
- An error on the direct lane is rendered by the app's own handlers; a bug is a 500 in
  Claude's shape with the request's id on it, on the lane or off it.
- The middleware chain sees an SSE response's start, none of its body chunks.
- An open stream holds two tasks, its request's and its producer's: the response
  waits for its client's leaving with a callback on the server's `receive()`.
- A request is compared with each route once (and once more for a trailing slash).
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from pathlib import Path
from typing import Any

import fastapi.routing
import httpx
import pytest
from starlette.middleware.errors import ServerErrorMiddleware
from starlette.middleware.exceptions import ExceptionMiddleware
from starlette.routing import Mount, Route
from starlette.types import Message

from tests.support.inprocess import served
from tests.support.polling import eventually_async
from tests.support.processes import free_port
from tokenrelay.app import create_app
from tokenrelay.config import Settings
from tokenrelay.observability.metrics import REGISTRY
from tokenrelay.streams.manager import StreamManager

MODEL = "claude-haiku-4-5"


# -- no parameter solver per stream ---------------------------------------------------


async def test_streams_start_without_fastapis_parameter_solver(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    solved: list[str] = []
    solve = fastapi.routing.solve_dependencies

    async def counted(*args: Any, **kwargs: Any) -> Any:
        solved.append(kwargs["request"].url.path)
        return await solve(*args, **kwargs)

    monkeypatch.setattr(fastapi.routing, "solve_dependencies", counted)
    # What goes through FastAPI's own stack, past the direct lane: the server-error
    # middleware is its outermost layer, the exception middleware its innermost.
    entered: list[str] = []
    below: list[str] = []
    for layer, seen in ((ServerErrorMiddleware, entered), (ExceptionMiddleware, below)):
        monkeypatch.setattr(layer, "__call__", _counting(layer.__call__, seen))
    port = free_port()
    config = Settings(port=port, provider="simulator", database_url="off", drain_timeout=1)
    prompt = "Direct route [[sim:tokens=4]]"
    async with (
        served(create_app(config), config),
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client,
    ):
        tokens = await client.post(
            "/api/stream-response",
            json={"prompt": prompt, "model": MODEL},
            headers={"Idempotency-Key": "k" * 255},
        )
        assert tokens.status_code == 200 and tokens.text.count('{"token":') == 4
        claude = await client.post(
            "/v1/messages",
            json={"model": MODEL, "max_tokens": 50, "stream": True,
                  "messages": [{"role": "user", "content": prompt}]},
        )  # fmt: skip
        assert claude.status_code == 200 and claude.text.count("text_delta") == 4
        openai_chat = await client.post(
            "/v1/chat/completions",
            json={"model": MODEL, "stream": True,
                  "messages": [{"role": "user", "content": prompt}]},
        )  # fmt: skip
        assert openai_chat.status_code == 200 and openai_chat.text.endswith("[DONE]\n\n")
        assert solved == [] and entered == [] and below == []
        # A header over its limit: FastAPI's validation, and its error, as before.
        too_long = await client.post(
            "/api/stream-response",
            json={"prompt": prompt, "model": MODEL},
            headers={"Idempotency-Key": "k" * 256},
        )
        assert too_long.status_code == 400
        message = "Invalid header.idempotency-key: String should have at most 255 characters"
        assert too_long.json() == {
            "type": "error", "error": {"type": "invalid_request_error", "message": message},
        }  # fmt: skip
        # A route with query parameters is FastAPI's.
        stream_id = tokens.headers["x-stream-id"]
        again = await client.get(f"/api/streams/{stream_id}", params={"after": 1})
        assert again.status_code == 200 and again.text.count('{"token":') == 3  # seq 2 on
        assert solved == ["/api/stream-response", f"/api/streams/{stream_id}"]
        assert entered == below == solved


def _counting(call: Any, seen: list[str]) -> Any:
    async def counted(self: Any, scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope["path"])
        await call(self, scope, receive, send)

    return counted


async def test_an_error_in_the_direct_lane_is_rendered_by_the_apps_handlers(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Past the exception middleware, a direct route's errors still get the app's own
    handlers: a gateway error its status and shape. A bug is a 500 in Claude's shape,
    on the direct lane or down FastAPI's stack alike, with the request's id on it and
    on the line that logs its traceback."""
    port = free_port()
    config = Settings(port=port, provider="simulator", database_url="off", drain_timeout=1)
    body = {"model": MODEL, "max_tokens": 50, "stream": True,
            "messages": [{"role": "user", "content": "Lane errors [[sim:tokens=2]]"}]}  # fmt: skip
    internal = {
        "type": "error",
        "error": {"type": "api_error", "message": "Internal gateway error"},
    }
    logged: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            logged.append(record)

    keep = Keep(logging.ERROR)
    logging.getLogger("tokenrelay.http").addHandler(keep)
    async with (
        served(create_app(config), config),
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client,
    ):
        unknown = await client.post("/v1/messages", json={**body, "model": "claude-nonesuch"})
        assert unknown.status_code == 404
        assert unknown.json()["error"]["type"] == "not_found_error"

        async def broken(*args: Any, **kwargs: Any) -> str:
            raise RuntimeError("a bug in a stream's start")

        def broken_page(*args: Any, **kwargs: Any) -> bytes:
            raise RuntimeError("a bug in a page of models")

        monkeypatch.setattr(StreamManager, "start", broken)
        monkeypatch.setattr("tokenrelay.routes.messages.models_page", broken_page)
        failed = await client.post("/v1/messages", json=body, headers={"x-request-id": "rq-1"})
        paged = await client.get("/v1/models", headers={"x-request-id": "rq-2"})
        for answer, rid in ((failed, "rq-1"), (paged, "rq-2")):
            assert answer.status_code == 500 and answer.json() == internal
            assert answer.headers["x-request-id"] == rid
            assert answer.headers["x-content-type-options"] == "nosniff"
        monkeypatch.undo()
        fine = await client.post("/v1/messages", json=body)
        assert fine.status_code == 200 and fine.text.count("text_delta") == 2
    logging.getLogger("tokenrelay.http").removeHandler(keep)
    assert [(r.getMessage(), str(r.exc_info[1]) if r.exc_info else None) for r in logged] == [
        ("unhandled error", "a bug in a stream's start"),
        ("unhandled error", "a bug in a page of models"),
    ]


# -- SSE bodies past the middleware chain ---------------------------------------


async def test_sse_bodies_go_to_the_server_past_the_middleware_chain() -> None:
    """The middleware chain sees a stream's response start (its layers add headers), and
    none of its body chunks: each is one call to the server's `send`."""
    seen: list[str] = []

    class Counting:
        def __init__(self, app: Any) -> None:
            self.app = app

        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            async def counted(message: Message) -> None:
                seen.append(message["type"])
                await send(message)

            await self.app(scope, receive, counted)

    port = free_port()
    config = Settings(port=port, provider="simulator", database_url="off", drain_timeout=1,
                      simulator_ttft_ms=0, simulator_tps=200)  # fmt: skip
    app = create_app(config)
    app.add_middleware(Counting)
    async with (
        served(app, config),
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client,
    ):
        body = {"prompt": "Past the chain [[sim:tokens=20]]", "model": MODEL}
        answer = await client.post("/api/stream-response", json=body)
        assert answer.text.count('{"token":') == 20
        assert answer.headers["x-content-type-options"] == "nosniff"  # a layer's header
        assert seen == ["http.response.start"]
        health = await client.get("/healthz")
        assert health.status_code == 200
        assert seen == ["http.response.start"] * 2 + ["http.response.body"]


async def test_an_open_stream_holds_no_task_to_notice_its_client_leave() -> None:
    """Under granian, `receive()` is a future: the response waits on it with a callback,
    and an open stream holds its request's task and its producer's, nothing else. A
    client that leaves is noticed at once all the same, while its stream runs on."""
    port = free_port()
    config = Settings(port=port, provider="simulator", database_url="off", drain_timeout=1,
                      simulator_ttft_ms=0, simulator_tps=5)  # fmt: skip
    app = create_app(config)
    body = {"model": MODEL, "max_tokens": 100, "stream": True,
            "messages": [{"role": "user", "content": "Watched [[sim:tokens=20]]"}]}  # fmt: skip

    def left() -> float:
        return REGISTRY.get_sample_value("tokenrelay_client_disconnects_total") or 0.0

    async with (
        served(app, config),
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client,
    ):
        assert (await client.get("/healthz")).status_code == 200
        idle, before = asyncio.all_tasks(), left()
        async with client.stream("POST", "/v1/messages", json=body) as answer:
            async for line in answer.aiter_lines():
                if line == "event: content_block_delta":
                    break
            held = sorted(task.get_coro().__qualname__ for task in asyncio.all_tasks() - idle)
            assert held == ["Producer.run", "_future_watcher_wrapper.<locals>.future_watcher"]
        await eventually_async(lambda: left() == before + 1, what="the client's leaving noticed")
        # Noticed by the watch, not by the stream's end (20 tokens at 5 a second).
        running = [task.get_coro().__qualname__ for task in asyncio.all_tasks() - idle]
        assert running == ["Producer.run"]


# -- one scan of the routes ----------------------------------------------------------


async def test_a_request_is_matched_against_each_route_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The routes sit on the app's own router: a request is compared with each route
    in one scan. Included routers would be branches, each scanned twice for the
    request that reaches it."""
    app = create_app(Settings(provider="simulator", database_url="off"))
    routes = [route for route in app.router.routes if isinstance(route, fastapi.routing.APIRoute)]
    # Routes and the static files' mount only: no branch standing for a router.
    assert all(isinstance(route, Route | Mount) for route in app.router.routes)
    matched: Counter[str] = Counter()
    original = fastapi.routing.APIRoute.matches

    def counted(self: fastapi.routing.APIRoute, scope: Any) -> Any:
        matched[f"{sorted(self.methods)} {self.path}"] += 1
        return original(self, scope)

    monkeypatch.setattr(fastapi.routing.APIRoute, "matches", counted)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
        response = await client.get("/no/such/route")
    assert response.status_code == 404
    # Once to find it, once more as `/no/such/route/` (a slash to redirect to).
    assert len(matched) == len(routes) and set(matched.values()) == {2}
