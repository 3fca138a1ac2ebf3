"""The `tokens` dialect: each log entry as one unnamed SSE message (DESIGN §3.1).

    retry: <ms>                 (the first frame only)
    id: <stream_id>:<seq>
    data: <the event's JSON>

The JSON of an entry is encoded once (`encode_event`) and kept on the entry; a
batch of entries becomes one bytes object, sent to the client in one write.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import orjson

from tokenrelay.errors import GatewayError
from tokenrelay.events import (
    Done,
    Event,
    Failed,
    Queued,
    Reset,
    Start,
    Text,
    Thinking,
    ThinkingSignature,
    ToolInput,
    ToolUse,
    ToolUseStart,
)
from tokenrelay.streams.log import Entry

NAME = "tokens"
PING = b": ping\n\n"


def _json(value: Any) -> bytes:
    """JSON bytes of exactly their own size, for what a log entry keeps.

    orjson returns its bytes inside the 4 KiB buffer it wrote them to, and the buffer
    stays allocated as long as the result lives: a log of 100 entries would hold
    400 KiB. One copy (about 0.1 µs) makes each the size of its JSON.
    """
    return b"%b" % orjson.dumps(value)


def _text(e: Text) -> bytes:
    return b'{"token":%b}' % orjson.dumps(e)


def _start(e: Start) -> bytes:
    return _json({"stream_id": e.stream_id, "request_id": e.request_id, "model": e.model})


def _done(e: Done) -> bytes:
    done = {
        "done": True,
        "stop_reason": e.stop_reason,
        "usage": e.usage,
        "cost_usd": e.cost_usd,
        "cached": e.cached,
    }
    if e.model is not None:
        done["model"] = e.model
    return _json(done)


def _failed(e: Failed) -> bytes:
    return _json(
        {
            "error": e.message,
            "code": e.code,
            "retryable": e.retryable,
            "usage": e.usage,
            "cost_usd": e.cost_usd,
        }
    )


_ENCODERS: dict[type[Any], Callable[[Any], bytes]] = {
    Text: _text,
    Start: _start,
    Queued: lambda e: _json({"queued": True, "position": e.position}),
    ToolUseStart: lambda e: _json({"tool_use_start": {"id": e.id, "name": e.name}}),
    ToolInput: lambda e: _json({"tool_input": e.partial_json}),
    ToolUse: lambda e: _json({"tool_use": {"id": e.id, "name": e.name, "input": e.input}}),
    Thinking: lambda e: _json({"thinking": e.thinking}),
    ThinkingSignature: lambda e: _json({"thinking_signature": e.signature}),
    Reset: lambda e: _json({"reset": True, "reason": e.reason}),
    Done: _done,
    Failed: _failed,
}


def encode_event(event: Event) -> bytes:
    """The event's `data:` JSON in this dialect."""
    return _ENCODERS[type(event)](event)


class TokensDialect:
    heartbeat = PING
    final = b""

    __slots__ = ("_prefix", "_retry")

    def __init__(self, stream_id: str, retry_ms: int) -> None:
        self._prefix = b"id: " + stream_id.encode() + b":"
        self._retry: bytes | None = retry_field(retry_ms)

    def render(self, entries: Sequence[Entry]) -> bytes:
        prefix = self._prefix
        chunk = b"".join(
            [
                b"%b%d\ndata: %b\n\n" % (prefix, e.seq, e.encoded(NAME, encode_event))
                for e in entries
            ]
        )
        if self._retry is not None:
            # The first event carries the reconnection delay for EventSource.
            chunk, self._retry = self._retry + chunk, None
        return chunk

    def error(self, error: GatewayError) -> bytes:
        # No `id:`: a client resuming after it asks from the last event it really got.
        data = {"error": error.message, "code": error.code, "retryable": error.retryable}
        return b"data: %b\n\n" % orjson.dumps(data)


def retry_field(retry_ms: int) -> bytes:
    return b"retry: %d\n" % retry_ms


def parse_last_event_id(value: str) -> tuple[str, int] | None:
    """`<stream_id>:<seq>` → (stream_id, seq); None when malformed."""
    stream_id, sep, seq = value.strip().rpartition(":")
    if not sep or not (seq.isascii() and seq.isdigit()) or len(seq) > 12:
        return None
    if not 0 < len(stream_id) <= 64 or not stream_id.isascii():
        return None
    if not all(c.isalnum() or c in "-_" for c in stream_id):
        return None
    return stream_id, int(seq)
