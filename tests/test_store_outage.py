"""The Redis store goes down under a running gateway: every route that needs the store
(all but a stream this instance has just written, from its cache) answers 503 with
Retry-After in Claude's error shape (never a 500, never a hung or cut
connection), liveness stays 200, and once Redis is back the gateway serves again."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support import (
    Redis,
    Stack,
    assert_whole_answer,
    direct_text,
    eventually,
    read_stream,
    redis_server,
    run_stack,
    start,
    unique,
)
from tests.support.auth import api_key_auth


@dataclass
class StoreGateway:
    stack: Stack
    redis: Redis
    key: str

    @property
    def auth(self) -> dict[str, str]:
        return {"x-api-key": self.key}


@pytest.fixture
def store_gateway(tmp_path: Path) -> Iterator[StoreGateway]:
    args, key = api_key_auth(tmp_path, "alice")
    with (
        redis_server(tmp_path / "redis") as redis,
        run_stack(tmp_path, *args, "--store", redis.url) as stack,
    ):
        yield StoreGateway(stack, redis, key)
        if redis.proc is None:  # a test that failed mid-outage: let the gateway stop cleanly
            redis.start()


Answer = tuple[int, str | None, str | None, Any]

STORE_DOWN: Answer = (
    503,
    "1",
    "application/json",
    {
        "type": "error",
        "error": {
            "type": "overloaded_error",
            "message": "Stream store unavailable: ConnectionError",
        },
    },
)


async def answer(client: httpx.AsyncClient, request: httpx.Request) -> Answer | str:
    """Status, Retry-After, content type and JSON body; or how the connection failed."""
    try:
        response = await client.send(request)
    except httpx.HTTPError as exc:  # hung (the client's timeout) or cut
        return type(exc).__name__
    try:
        body = response.json()
    except ValueError:
        body = response.text[:200]
    headers = response.headers
    return response.status_code, headers.get("retry-after"), headers.get("content-type"), body


async def test_every_route_answers_503_while_the_store_is_down_then_serves_again(
    store_gateway: StoreGateway,
) -> None:
    gw = store_gateway
    prompt = unique("Before the outage [[sim:tokens=5]]")
    # Far below any wait of the gateway's own: a route that hangs fails here.
    async with httpx.AsyncClient(base_url=gw.stack.gateway, timeout=10) as client:
        before = await start(client, {"prompt": prompt}, headers=gw.auth)
        stream_id = before.events[0].stream_id
        issued = await client.post("/api/tickets", headers=gw.auth)
        assert issued.status_code == 200
        ticket = issued.json()["ticket"]

        gw.redis.stop()
        request = client.build_request
        routes = {
            "POST /api/stream-response": request(
                "POST", "/api/stream-response", json={"prompt": prompt}, headers=gw.auth
            ),
            "GET /api/stream-response": request(
                "GET", "/api/stream-response", params={"prompt": prompt}, headers=gw.auth
            ),
            "GET /api/stream-response?ticket=": request(
                "GET", "/api/stream-response", params={"prompt": prompt, "ticket": ticket}
            ),
            # A stream this instance did not write, or not lately: only Redis has it.
            "GET /api/streams/{id}": request(
                "GET", "/api/streams/sm0zBZ0qcxDo3TfKUbsBXPwYgm9bXWZo", headers=gw.auth
            ),
            "DELETE /api/streams/{id}": request(
                "DELETE", f"/api/streams/{stream_id}", headers=gw.auth
            ),
            "POST /api/tickets": request("POST", "/api/tickets", headers=gw.auth),
            "GET /readyz": request("GET", "/readyz"),
            "GET /healthz": request("GET", "/healthz"),
        }
        # One request after another on one client: a route that broke its connection
        # would show as the next route's failure, so each answer is read in full first.
        answers = {route: await answer(client, r) for route, r in routes.items()}
        assert answers == {
            "POST /api/stream-response": STORE_DOWN,
            "GET /api/stream-response": STORE_DOWN,
            "GET /api/stream-response?ticket=": STORE_DOWN,
            "GET /api/streams/{id}": STORE_DOWN,
            "DELETE /api/streams/{id}": STORE_DOWN,
            "POST /api/tickets": STORE_DOWN,
            "GET /readyz": (503, None, "application/json", {"status": "store unreachable"}),
            "GET /healthz": (200, None, "application/json", {"status": "ok"}),
        }
        # The stream this instance wrote and finished a moment ago is still in its
        # cache (for FINISHED_TAIL_S): served whole, the store down or not.
        cached = await read_stream(client, "GET", f"/api/streams/{stream_id}", headers=gw.auth)
        assert [e.data for e in cached.events] == [e.data for e in before.events]

        gw.redis.start()
        eventually(
            lambda: httpx.get(f"{gw.stack.gateway}/readyz").status_code == 200,
            what="readiness once Redis is back",
        )
        again = unique("After the outage [[sim:tokens=7]]")
        after = await start(client, {"prompt": again}, headers=gw.auth)
        assert_whole_answer(after.events, await direct_text(gw.stack.simulator, again))
        # The stream from before the outage is still there (Redis persisted it).
        replay = await read_stream(client, "GET", f"/api/streams/{stream_id}", headers=gw.auth)
        assert [e.data for e in replay.events] == [e.data for e in before.events]
        assert (await client.post("/api/tickets", headers=gw.auth)).status_code == 200
    assert "Traceback" not in gw.stack.log_text()
