"""`tokenrelay simulate`: the simulator as a standalone Messages API server.

Speaks Claude's HTTP API well enough for the official SDK: `POST /v1/messages` with
`stream` true (the exact SSE wire format) or false, Claude's error JSON and status
codes, a `request-id` on every response. `GET /_sim/stats` counts what happened, so
tests can see, for instance, that a cancelled stream's connection really went away;
`GET /_sim/traceparents` lists the `traceparent` headers the latest requests carried
(oldest first), so they can follow a trace into the upstream.

As one deployment of a gateway's pool it has Claude's rate limits and their headers,
serves only the models it is told to, and takes faults from `POST /_sim/fault` (see
control.py), applied before anything the prompt asks; `POST /_sim/reset` starts it afresh.
Claude's Message Batches API is batches.py's; this layer only hands it its requests.

Plain ASGI rather than a framework: it is also the fast fake upstream of benchmarks,
so each delta costs one pre-formatted write.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson
import uvicorn
from starlette.types import Message, Receive, Scope, Send

from tokenrelay.simulator import batches
from tokenrelay.simulator.control import Faults, Header, RateLimits, admission_tokens
from tokenrelay.simulator.engine import Fault, Plan, SimError, Simulator, whole_message
from tokenrelay.simulator.replay import Replays, requested

# Versions of the API that refuse sampling parameters (ANTHROPIC-PROTOCOL.md §1).
NO_SAMPLING_VERSIONS = frozenset({"2026-10-21"})


class DroppedConnection(Exception):
    """Raised mid-body on purpose: uvicorn then cuts the connection without finishing."""


@dataclass(slots=True)
class Stats:
    requests: int = 0
    active: int = 0
    completed: int = 0
    disconnected: int = 0
    errors: int = 0
    by_model: dict[str, int] = field(default_factory=dict)  # /v1/messages requests
    statuses: dict[int, int] = field(default_factory=dict)  # /v1/messages answers

    def reset(self) -> None:
        """Every count back to zero; `active` is not a count but what is going on."""
        self.requests = self.completed = self.disconnected = self.errors = 0
        self.by_model.clear()
        self.statuses.clear()


def _frame(event: str, data: dict[str, Any]) -> bytes:
    return b"event: %b\ndata: %b\n\n" % (event.encode(), orjson.dumps(data))


def _error_json(error_type: str, message: str, request_id: str) -> bytes:
    return orjson.dumps(
        {
            "type": "error",
            "error": {"type": error_type, "message": message},
            "request_id": request_id,
        }
    )


class SimulatorApp:
    def __init__(
        self, simulator: Simulator, replays: Replays | None = None,
        limits: RateLimits | None = None, batch_seconds: float = 2.0,
    ) -> None:  # fmt: skip
        self.simulator = simulator
        self.replays = replays
        self.limits = limits or RateLimits()
        self.batches = batches.Batches(simulator, batch_seconds)
        self.faults = Faults()
        self.stats = Stats()
        self.traceparents: deque[str] = deque(maxlen=1000)
        # The credentials the latest requests came with, oldest first: a test can see
        # whose key reached the upstream.
        self.api_keys: deque[str] = deque(maxlen=1000)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        request_id = "req_" + secrets.token_hex(12)
        path, method = scope["path"], scope["method"]
        if path == "/v1/messages" and method == "POST":
            await self._messages(scope, receive, send, request_id)
        elif path == "/v1/messages/count_tokens" and method == "POST":
            await self._count_tokens(scope, receive, send, request_id)
        elif path.startswith(batches.PREFIX):
            await self._batches(scope, receive, send, request_id)
        elif path == "/healthz" and method == "GET":
            await _json(send, 200, b'{"status":"ok"}', request_id)
        elif path == "/_sim/stats" and method == "GET":
            stats = orjson.dumps(asdict(self.stats), option=orjson.OPT_NON_STR_KEYS)
            await _json(send, 200, stats, request_id)
        elif path == "/_sim/fault":
            await self._fault(method, receive, send, request_id)
        elif path == "/_sim/reset" and method == "POST":
            self.stats.reset()
            self.limits.reset()
            self.faults.clear()
            await _json(send, 200, b'{"status":"ok"}', request_id)
        elif path == "/_sim/traceparents" and method == "GET":
            await _json(send, 200, orjson.dumps(list(self.traceparents)), request_id)
        elif path == "/_sim/api_keys" and method == "GET":
            await _json(send, 200, orjson.dumps(list(self.api_keys)), request_id)
        else:
            await _json(
                send, 404, _error_json("not_found_error", "Not found", request_id), request_id
            )

    async def _fault(self, method: str, receive: Receive, send: Send, request_id: str) -> None:
        """The control route: `POST` sets the fault in force, `DELETE` clears it, `GET`
        shows it (what is left of its count or its seconds)."""
        if method == "POST":
            try:
                self.faults.set(orjson.loads(await _read_body(receive)))
            except orjson.JSONDecodeError:
                err = _error_json("invalid_request_error", "Request body is not valid JSON",
                                  request_id)  # fmt: skip
                await _json(send, 400, err, request_id)
                return
            except SimError as exc:
                err = _error_json(exc.error_type, exc.message, request_id)
                await _json(send, exc.status, err, request_id)
                return
        elif method == "DELETE":
            self.faults.clear()
        elif method != "GET":
            err = _error_json("not_found_error", "Not found", request_id)
            await _json(send, 404, err, request_id)
            return
        await _json(send, 200, orjson.dumps({"fault": self.faults.describe()}), request_id)

    async def _messages(self, scope: Scope, receive: Receive, send: Send, request_id: str) -> None:
        stats = self.stats
        stats.requests += 1
        raw = await _read_body(receive)
        headers = dict(scope["headers"])
        traceparent = headers.get(b"traceparent")
        if traceparent is not None:
            self.traceparents.append(traceparent.decode("latin-1"))
        self._note_key(headers)
        limits = self.limits
        extra: list[Header] = []
        try:
            body = orjson.loads(raw)
            if not isinstance(body, dict):
                raise SimError(400, "Request body must be a JSON object")
            model = body.get("model")
            if isinstance(model, str):
                stats.by_model[model] = stats.by_model.get(model, 0) + 1
            # A deployment that is down answers so before it counts anything.
            if (down := self.faults.error()) is not None:
                extra = limits.headers()
                raise down
            if limits.enabled:
                extra, refused = limits.admit(admission_tokens(body))
                if refused is not None:
                    raise refused
            replay = requested(body)
            if replay is not None:
                if self.replays is None:
                    raise SimError(400, "replays need tokenrelay simulate --replay-dir")
                events = self.replays.events(replay, body)
                await self._stream_events(events, send, request_id, extra)
                return
            version = headers.get(b"anthropic-version", b"").decode()
            if version in NO_SAMPLING_VERSIONS:
                for name in ("temperature", "top_p", "top_k"):
                    if name in body:
                        raise SimError(400, f"{name}: not supported by anthropic-version {version}")
            plan = self.simulator.plan(body)
        except orjson.JSONDecodeError:
            stats.errors += 1
            stats.statuses[400] = stats.statuses.get(400, 0) + 1
            err = _error_json("invalid_request_error", "Request body is not valid JSON", request_id)
            await _json(send, 400, err, request_id, limits.headers())
            return
        except SimError as exc:
            stats.errors += 1
            stats.statuses[exc.status] = stats.statuses.get(exc.status, 0) + 1
            if exc.retry_after:
                extra = [*extra, (b"retry-after", b"%d" % exc.retry_after)]
            err = _error_json(exc.error_type, exc.message, request_id)
            await _json(send, exc.status, err, request_id, extra)
            return
        stats.statuses[200] = stats.statuses.get(200, 0) + 1
        if body.get("stream"):
            if (broken := self.faults.mid_stream()) is not None:
                _break_at(plan, *broken)
            await self._stream(plan, receive, send, request_id, extra)
        else:
            await self._complete(plan, send, request_id, extra)

    async def _batches(self, scope: Scope, receive: Receive, send: Send, request_id: str) -> None:
        self._note_key(dict(scope["headers"]))
        host = dict(scope["headers"]).get(b"host", b"127.0.0.1").decode("latin-1")
        reply = batches.route(
            self.batches, scope["method"], scope["path"], scope["query_string"],
            await _read_body(receive), f"http://{host}", request_id,
        )  # fmt: skip
        headers = [
            (b"content-type", reply.content_type),
            (b"content-length", b"%d" % len(reply.body)),
            (b"request-id", request_id.encode()),
        ]
        await send({"type": "http.response.start", "status": reply.status, "headers": headers})
        await send({"type": "http.response.body", "body": reply.body})

    async def _count_tokens(
        self, scope: Scope, receive: Receive, send: Send, request_id: str
    ) -> None:
        self._note_key(dict(scope["headers"]))
        try:
            body = orjson.loads(await _read_body(receive))
            if not isinstance(body, dict):
                raise SimError(400, "Request body must be a JSON object")
            counted = self.simulator.count_tokens(body)
        except orjson.JSONDecodeError:
            err = _error_json("invalid_request_error", "Request body is not valid JSON", request_id)
            await _json(send, 400, err, request_id)
            return
        except SimError as exc:
            await _json(send, exc.status, _error_json(exc.error_type, exc.message, request_id),
                        request_id)  # fmt: skip
            return
        await _json(send, 200, orjson.dumps({"input_tokens": counted}), request_id)

    def _note_key(self, headers: dict[bytes, bytes]) -> None:
        key = headers.get(b"x-api-key") or headers.get(b"authorization")
        if key is not None:
            self.api_keys.append(key.decode("latin-1"))

    async def _stream_events(
        self, events: list[bytes], send: Send, request_id: str, extra: list[Header]
    ) -> None:
        self.stats.statuses[200] = self.stats.statuses.get(200, 0) + 1
        await send({"type": "http.response.start", "status": 200, "headers": [
            (b"content-type", b"text/event-stream; charset=utf-8"),
            (b"request-id", request_id.encode()), *extra,
        ]})  # fmt: skip
        for event in events:
            await send({"type": "http.response.body", "body": event, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        self.stats.completed += 1

    async def _complete(self, plan: Plan, send: Send, request_id: str, extra: list[Header]) -> None:
        if plan.ttft_s:
            await asyncio.sleep(plan.ttft_s)
        message = whole_message(plan)
        self.stats.completed += 1
        await _json(send, 200, orjson.dumps(message), request_id, extra)

    async def _stream(
        self, plan: Plan, receive: Receive, send: Send, request_id: str, extra: list[Header]
    ) -> None:
        self.stats.active += 1
        gone = asyncio.Event()

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            gone.set()

        watcher = asyncio.create_task(watch())
        finished = False
        try:
            await send({"type": "http.response.start", "status": 200, "headers": [
                (b"content-type", b"text/event-stream; charset=utf-8"),
                (b"cache-control", b"no-cache"),
                (b"request-id", request_id.encode()), *extra,
            ]})  # fmt: skip
            for chunk in _stream_frames(plan):
                if isinstance(chunk, float):
                    await _sleep_until(chunk, gone)
                    if gone.is_set():
                        self.stats.disconnected += 1
                        return
                    continue
                if chunk is DROP:
                    # "Cut after N deltas" promises the client got N: a client (aiohttp)
                    # that sees the connection fail drops what it had buffered but not
                    # yet read, so the frames are given time to be read first.
                    await asyncio.sleep(DROP_GRACE_S)
                    raise DroppedConnection
                if chunk is STALL:  # silent until the client gives up on us
                    await gone.wait()
                    self.stats.disconnected += 1
                    return
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            finished = True
            self.stats.completed += 1
        finally:
            watcher.cancel()
            self.stats.active -= 1
            if not finished and not gone.is_set():
                self.stats.errors += 1


def _break_at(plan: Plan, fault: Fault, after: int) -> None:
    """The control route's break in place of any the prompt asks for."""
    plan.error_after = after if fault is Fault.ERROR else None
    plan.drop_after = after if fault is Fault.DROP else None
    plan.stall_after = after if fault is Fault.STALL else None


DROP = b"<drop>"
DROP_GRACE_S = 0.05
STALL = b"<stall>"


def _stream_frames(plan: Plan) -> Iterator[bytes | float]:
    """Frames and due times (floats, monotonic) in order; DROP to cut the connection,
    STALL to fall silent. The plan says where it breaks (`Plan.fault_at`)."""
    start = time.monotonic()
    message: dict[str, Any] = {
        "id": plan.message_id, "type": "message", "role": "assistant", "model": plan.model,
        "content": [], "stop_reason": None, "stop_sequence": None,
        "usage": {"input_tokens": plan.input_tokens, "output_tokens": 1},
    }  # fmt: skip
    yield _frame("message_start", {"type": "message_start", "message": message})
    index = 0  # of the block streaming
    sent = 0  # deltas so far, of every block (what faults and pacing count)
    if plan.thinking is not None:
        block: dict[str, Any] = {"type": "thinking", "thinking": "", "signature": ""}
        yield _block_start(index, block)
        yield _frame("ping", {"type": "ping"})
        for thinking in plan.thinking:
            if (fault := plan.fault_at(sent)) is not None:
                yield _fault_frame(fault)
                return
            if (due := start + plan.delay_before(sent)) > time.monotonic():
                yield due
            yield _delta(index, {"type": "thinking_delta", "thinking": thinking})
            sent += 1
        # The signature is the block's last delta, not a generated token.
        yield _delta(index, {"type": "signature_delta", "signature": plan.signature})
        yield _frame("content_block_stop", {"type": "content_block_stop", "index": index})
        index += 1
    # Claude opens no empty text block before a tool call it was made to make at once.
    texts = bool(plan.deltas) or plan.tool is None
    if texts:
        yield _block_start(index, {"type": "text", "text": ""})
        if index == 0:
            yield _frame("ping", {"type": "ping"})
    text_delta = b'event: content_block_delta\ndata: {"type":"content_block_delta","index":%d,' \
                 b'"delta":{"type":"text_delta","text":' % index  # fmt: skip
    for text in plan.deltas:
        if (fault := plan.fault_at(sent)) is not None:
            yield _fault_frame(fault)
            return
        if (due := start + plan.delay_before(sent)) > time.monotonic():
            yield due
        yield b"%b%b}}\n\n" % (text_delta, orjson.dumps(text))
        sent += 1
    if plan.tool is not None:
        if texts:
            yield _frame("content_block_stop", {"type": "content_block_stop", "index": index})
            index += 1
        tool = {"type": "tool_use", "id": plan.tool.id, "name": plan.tool.name, "input": {}}
        yield _block_start(index, tool)
        if index == 0 and not texts:  # the one ping, after the first block opens
            yield _frame("ping", {"type": "ping"})
        for fragment in plan.tool.json_fragments():
            if (fault := plan.fault_at(sent)) is not None:
                yield _fault_frame(fault)
                return
            if (due := start + plan.delay_before(sent)) > time.monotonic():
                yield due
            yield _delta(index, {"type": "input_json_delta", "partial_json": fragment})
            sent += 1
    # A fault after the last delta still lands inside the last block, before its stop.
    if (fault := plan.fault_at(sent)) is not None:
        yield _fault_frame(fault)
        return
    yield _frame("content_block_stop", {"type": "content_block_stop", "index": index})
    yield _frame("message_delta", {
        "type": "message_delta",
        "delta": {"stop_reason": plan.stop_reason, "stop_sequence": plan.stop_sequence},
        "usage": {"output_tokens": sent},
    })  # fmt: skip
    yield _frame("message_stop", {"type": "message_stop"})


def _block_start(index: int, block: dict[str, Any]) -> bytes:
    return _frame(
        "content_block_start",
        {"type": "content_block_start", "index": index, "content_block": block},
    )


def _delta(index: int, delta: dict[str, Any]) -> bytes:
    return _frame(
        "content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta}
    )


def _overloaded() -> bytes:
    return _frame("error", {
        "type": "error", "error": {"details": None, "type": "overloaded_error",
                                   "message": "Overloaded"},
        "request_id": "req_" + secrets.token_hex(12),
    })  # fmt: skip


def _fault_frame(fault: Fault) -> bytes:
    """What a fault puts on the wire: the error event, or a marker `_stream` acts on."""
    if fault is Fault.ERROR:
        return _overloaded()
    return DROP if fault is Fault.DROP else STALL


async def _sleep_until(due: float, gone: asyncio.Event) -> None:
    delay = due - time.monotonic()
    if delay <= 0:
        return
    try:
        async with asyncio.timeout(delay):
            await gone.wait()
    except TimeoutError:
        pass


async def _read_body(receive: Receive) -> bytes:
    chunks: list[bytes] = []
    while True:
        message: Message = await receive()
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            break
    return b"".join(chunks)


async def _json(
    send: Send, status: int, body: bytes, request_id: str,
    extra: list[tuple[bytes, bytes]] | None = None,
) -> None:  # fmt: skip
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", b"%d" % len(body)),
        (b"request-id", request_id.encode()),
        *(extra or []),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


def create_app(
    ttft_ms: int = 300, tps: float = 60.0, replay_dir: Path | None = None, *,
    limits: RateLimits | None = None, models: frozenset[str] | None = None,
    batch_seconds: float = 2.0,
) -> SimulatorApp:  # fmt: skip
    replays = Replays(replay_dir) if replay_dir is not None else None
    simulator = Simulator(ttft_ms=ttft_ms, tps=tps, served=models)
    return SimulatorApp(simulator, replays, limits, batch_seconds)


class _QuietDrops(logging.Filter):
    """The deliberate cuts of `drop_after` are not errors worth a traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], DroppedConnection))


def run(
    host: str, port: int, *, ttft_ms: int, tps: float, replay_dir: Path | None = None,
    limits: RateLimits | None = None, models: frozenset[str] | None = None,
    batch_seconds: float = 2.0,
) -> None:  # fmt: skip
    logging.getLogger("uvicorn.error").addFilter(_QuietDrops())
    app = create_app(
        ttft_ms, tps, replay_dir, limits=limits, models=models, batch_seconds=batch_seconds
    )
    uvicorn.run(
        app,
        host=host,
        port=port,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        log_level="warning",
        access_log=False,
        backlog=4096,
        timeout_graceful_shutdown=1,
    )
