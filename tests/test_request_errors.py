"""Every bad input of DESIGN §3.2: its status, Claude's JSON error shape, never a 500."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from typing import Any

import h11
import httpx
import orjson
import pytest

from tests.support import Stack, assert_error, free_port, start, unique
from tests.support.inprocess import served
from tokenrelay.app import create_app
from tokenrelay.config import Settings
from tokenrelay.middleware import body_limit

BAD_BODIES: list[tuple[str, bytes | dict[str, Any], str]] = [
    ("not json", b"{prompt: hi", "Request body is not valid JSON"),
    ("empty body", b"", "Request body is empty; send a JSON object with a prompt"),
    ("json array", b"[1, 2]", "Request body must be a JSON object"),
    ("prompt missing", {}, "prompt is required (a non-empty string), or send messages"),
    ("prompt empty", {"prompt": "   "}, "prompt must not be empty"),
    ("prompt not a string", {"prompt": 42}, "Invalid prompt: Input should be a valid string"),
    ("max_tokens a string", {"prompt": "hi", "max_tokens": "10"},
     "Invalid max_tokens: Input should be a valid integer"),
    ("max_tokens zero", {"prompt": "hi", "max_tokens": 0},
     "Invalid max_tokens: Input should be greater than or equal to 1"),
    ("max_tokens over ceiling", {"prompt": "hi", "max_tokens": 10**6},
     "max_tokens must be between 1 and 64000"),
    ("unknown field", {"prompt": "hi", "bogus": 1}, "Unknown field: bogus"),
    ("integer beyond 64 bits", {"prompt": "hi", "metadata": {"n": 2**64}},
     "A number in the request is out of range: integers must fit in 64 bits"),
    ("unknown model", {"prompt": "hi", "model": "claude-nope-9"}, "Unknown model: claude-nope-9"),
    ("both prompt and messages", {"prompt": "a", "messages": [{"role": "user", "content": "b"}]},
     "Send either prompt or messages, not both"),
    ("messages empty", {"messages": []}, "messages must not be empty"),
    ("bad role", {"messages": [{"role": "robot", "content": "x"}]},
     "Invalid messages.0.role: Input should be 'user' or 'assistant'"),
    ("assistant first", {"messages": [{"role": "assistant", "content": "x"}]},
     "The first message must have role 'user'"),
    ("too many messages",
     {"messages": [{"role": "user" if i % 2 == 0 else "assistant", "content": "m"}
                   for i in range(201)]},
     "Too many messages: at most 200"),
    ("prompt over the limit", {"prompt": "x" * 10_001},
     "Prompt is too long: 10001 characters, the limit is 10000"),
    ("messages over the limit",
     {"messages": [{"role": "user", "content": "x" * 6000}, {"role": "assistant", "content": "y"},
                   {"role": "user", "content": "z" * 4001}]},
     "Prompt is too long: 10002 characters, the limit is 10000"),
]  # fmt: skip


@pytest.mark.parametrize(("case", "body", "message"), BAD_BODIES, ids=[c[0] for c in BAD_BODIES])
async def test_bad_body_is_a_400_with_a_clear_message(
    client: httpx.AsyncClient, case: str, body: bytes | dict[str, Any], message: str
) -> None:
    if isinstance(body, bytes):
        response = await client.post(
            "/api/stream-response", content=body, headers={"content-type": "application/json"}
        )
    else:
        response = await client.post("/api/stream-response", json=body)
    assert assert_error(response, 400, "invalid_request_error") == message


async def test_prompt_at_the_limit_is_accepted(client: httpx.AsyncClient) -> None:
    read = await start(client, {"prompt": "x" * 9_960 + unique("[[sim:tokens=2]]")[:40]})
    assert read.events[-1].data["done"] is True


async def test_body_over_one_mib_is_413_by_content_length(client: httpx.AsyncClient) -> None:
    body = b'{"prompt": "' + b"x" * (1024 * 1024) + b'"}'
    response = await client.post(
        "/api/stream-response", content=body, headers={"content-type": "application/json"}
    )
    message = assert_error(response, 413, "request_too_large")
    assert message == "Request body is too large: the limit is 1048576 bytes"


async def test_chunked_body_over_one_mib_is_413(client: httpx.AsyncClient) -> None:
    async def chunks():  # type: ignore[no-untyped-def]
        yield b'{"prompt": "'
        for _ in range(20):
            yield b"x" * 65536
        yield b'"}'

    response = await client.post(
        "/api/stream-response", content=chunks(), headers={"content-type": "application/json"}
    )
    assert_error(response, 413, "request_too_large")


class Connection:
    """One raw keep-alive connection to the gateway: the client sends what it likes, when
    it likes (part of a body, the rest later), and reads each answer with h11."""

    def __init__(self, gateway: str) -> None:
        host, port = gateway.removeprefix("http://").split(":")
        self.sock = socket.create_connection((host, int(port)), timeout=10)
        self.http = h11.Connection(h11.CLIENT)

    def send(self, *events: Any) -> None:
        for event in events:
            self.sock.sendall(self.http.send(event) or b"")

    def answer(self) -> tuple[int, dict[bytes, bytes], bytes]:
        response, body = None, b""
        while True:
            event = self.http.next_event()
            if event is h11.NEED_DATA:
                self.http.receive_data(self.sock.recv(65536))
            elif isinstance(event, h11.Response):
                response = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                assert response is not None
                return response.status_code, dict(response.headers), body
            else:
                raise AssertionError(f"unexpected {event!r}")

    def next_request(self) -> None:
        self.http.start_next_cycle()

    def close(self) -> None:
        self.sock.close()


POST = [(b"host", b"x"), (b"content-type", b"application/json")]


def _post(path: str, *headers: tuple[bytes, bytes]) -> h11.Request:
    return h11.Request(method="POST", target=path, headers=[*POST, *headers])


def _health_on(conn: Connection) -> int:
    conn.next_request()
    conn.send(h11.Request(method="GET", target="/healthz", headers=[(b"host", b"x")]))
    conn.send(h11.EndOfMessage())
    return conn.answer()[0]


def test_a_refused_body_is_read_to_its_end_and_the_connection_serves_on(stack: Stack) -> None:
    """The 413 goes out before the body has arrived; the rest of it is read and dropped,
    so the client sees the answer and its next request on the connection is answered."""
    size = 2 << 20
    with contextlib.closing(Connection(stack.gateway)) as conn:
        conn.send(_post("/api/stream-response", (b"content-length", str(size).encode())))
        conn.send(h11.Data(data=b"x" * 65536))
        status, headers, body = conn.answer()
        assert (status, headers.get(b"connection")) == (413, None)
        assert orjson.loads(body)["error"]["type"] == "request_too_large"
        conn.send(h11.Data(data=b"x" * (size - 65536)), h11.EndOfMessage())
        assert _health_on(conn) == 200


def test_a_chunked_body_refused_midway_is_read_to_its_end(stack: Stack) -> None:
    with contextlib.closing(Connection(stack.gateway)) as conn:
        conn.send(_post("/api/stream-response", (b"transfer-encoding", b"chunked")))
        for _ in range(40):
            conn.send(h11.Data(data=b"x" * 65536))
        status, _, body = conn.answer()
        assert (status, orjson.loads(body)["error"]["type"]) == (413, "request_too_large")
        conn.send(h11.EndOfMessage())
        assert _health_on(conn) == 200


def test_a_body_the_gateway_answers_without_reading_is_read_to_its_end(stack: Stack) -> None:
    with contextlib.closing(Connection(stack.gateway)) as conn:
        conn.send(_post("/no/such/route", (b"content-length", str(512 << 10).encode())))
        conn.send(h11.Data(data=b"x" * (512 << 10)), h11.EndOfMessage())
        assert conn.answer()[0] == 404
        assert _health_on(conn) == 200


def test_a_body_too_long_to_read_is_refused_with_the_connection_closed(stack: Stack) -> None:
    with contextlib.closing(Connection(stack.gateway)) as conn:
        conn.send(_post("/api/stream-response", (b"content-length", str(1 << 30).encode())))
        status, headers, _ = conn.answer()
        assert (status, headers.get(b"connection")) == (413, b"close")


async def test_a_refused_body_that_stops_arriving_is_waited_for_only_so_long(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A client that declares a body and stops sending it does not hold the request's
    task: after DISCARD_WAIT_S the connection is closed."""
    monkeypatch.setattr(body_limit, "DISCARD_WAIT_S", 0.2)
    port = free_port()
    config = Settings(port=port, provider="simulator", database_url="off", drain_timeout=1)
    async with served(create_app(config), config):
        conn = Connection(f"http://127.0.0.1:{port}")
        with contextlib.closing(conn):
            conn.send(_post("/api/stream-response", (b"content-length", str(2 << 20).encode())))
            conn.send(h11.Data(data=b"x" * 65536))
            status, _, _ = await asyncio.to_thread(conn.answer)
            assert status == 413
            conn.sock.settimeout(10)  # the close comes after 0.2 s; 10 s is a hang
            assert await asyncio.to_thread(conn.sock.recv, 65536) == b""


def test_truncated_body_does_not_hang_the_connection(stack: Stack) -> None:
    host, port = stack.gateway.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(
            b"POST /api/stream-response HTTP/1.1\r\nHost: x\r\n"
            b'Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"prompt":'
        )
        sock.shutdown(socket.SHUT_WR)  # the client gives up mid-body
        answer = b""
        while chunk := sock.recv(65536):  # until closed, not hung (the 5 s timeout raises)
            answer += chunk
    # The half-closed socket still reads: it gets a bodiless 400, and the connection ends.
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert b"\r\ncontent-length: 0" in head.lower()
    assert body == b""


async def test_unknown_stream_is_404(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/streams/AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA")
    assert assert_error(response, 404, "not_found_error").startswith("No stream")
    response = await client.delete("/api/streams/AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA")
    assert_error(response, 404, "not_found_error")


@pytest.mark.parametrize(
    "last_event_id",
    ["garbage", "abc:", ":5", "abc:-1", "abc:1.5", "a b:1", "abc:\u00b2", "x" * 80 + ":1"],
)
async def test_malformed_last_event_id_is_400(
    client: httpx.AsyncClient, last_event_id: str
) -> None:
    header = last_event_id.encode()  # as raw bytes: non-ASCII too
    response = await client.get("/api/streams/abc", headers={"Last-Event-ID": header})
    message = assert_error(response, 400, "invalid_request_error")
    assert message == "Last-Event-ID must look like <stream_id>:<seq>"


async def test_last_event_id_of_another_stream_is_400(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/streams/abc", headers={"Last-Event-ID": "xyz:3"})
    assert assert_error(response, 400, "invalid_request_error") == (
        "Last-Event-ID names a different stream"
    )


async def test_bad_after_parameter_is_400(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/streams/abc?after=banana")
    assert_error(response, 400, "invalid_request_error")


async def test_eventsource_get_without_prompt_is_400(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/stream-response")
    assert assert_error(response, 400, "invalid_request_error") == (
        "prompt is required (a non-empty string), or send messages"
    )
    response = await client.get("/api/stream-response", params={"prompt": "a", "max_tokens": "x"})
    assert assert_error(response, 400, "invalid_request_error") == (
        "max_tokens must be a positive integer"
    )
    for temperature, message in [
        ("1.5", "Invalid temperature: Input should be less than or equal to 1"),
        ("warm", "Invalid temperature: Input should be a valid number, unable to parse "
                 "string as a number"),
    ]:  # fmt: skip
        params = {"prompt": "a", "temperature": temperature}
        response = await client.get("/api/stream-response", params=params)
        assert assert_error(response, 400, "invalid_request_error") == message


def test_a_reader_that_cannot_reset_never_joins_one_that_may() -> None:
    from tokenrelay.providers.base import GenerationRequest
    from tokenrelay.streams.coalesce import Coalescer

    request = GenerationRequest(
        model="claude-haiku-4-5", messages=[{"role": "user", "content": "Hi"}], max_tokens=64
    )
    coalescer = Coalescer("principal", guest_ttl=1)
    may_reset, fixed = coalescer.key(request, "alice"), coalescer.key(request, "alice", False)
    assert may_reset is not None and fixed is not None and may_reset != fixed
    assert coalescer.key(request, "alice", False) == fixed


async def test_unknown_route_and_wrong_method_use_the_error_shape(
    client: httpx.AsyncClient,
) -> None:
    assert_error(await client.get("/nope"), 404, "not_found_error")
    assert_error(await client.put("/api/stream-response"), 405, "invalid_request_error")


async def test_same_idempotency_key_attaches_to_the_same_stream(own_stack: Stack) -> None:
    body = {"prompt": unique("Once only [[sim:tokens=10]]")}
    headers = {"Idempotency-Key": "order-42"}
    async with httpx.AsyncClient(base_url=own_stack.gateway, timeout=30) as client:
        first = await start(client, body, headers=headers)
        second = await start(client, body, headers=headers)
        assert second.events[0].stream_id == first.events[0].stream_id
        assert [e.data for e in second.events] == [e.data for e in first.events]
        other = await client.post(
            "/api/stream-response", json={"prompt": "different"}, headers=headers
        )
        assert assert_error(other, 422, "invalid_request_error") == (
            "Idempotency-Key was already used with a different request body"
        )
    assert own_stack.sim_stats()["requests"] == 1
