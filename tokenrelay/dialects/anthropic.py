"""The `anthropic` dialect: a stream's log as Claude's own event stream, so that the
official SDKs read a gateway stream as they read Claude's (ANTHROPIC-PROTOCOL.md §2).

    event: message_start          at the first content (or the end, if there is none)
    event: content_block_start    a block opens: text, thinking, or tool_use
    event: ping                   once, after the first block opens, as Claude sends it
    event: content_block_delta    text_delta, thinking_delta, signature_delta,
                                  input_json_delta
    event: content_block_stop     the block closes: another begins, or the answer ends
    event: message_delta          stop_reason, stop_sequence and the usage, summed over
                                  every upstream call the answer took
    event: message_stop
    event: error                  instead of the rest, when the stream fails

The log does not say where a block starts or stops; the kinds of its events do: text
deltas make one text block until something else comes, thinking deltas one thinking
block until its signature, a tool call one block from `ToolUseStart` to `ToolUse`. A
block's index is its place in that order, the same for every reader, so what a reader
adds to an entry's cached JSON (`Entry.encoded`) is formatting, never JSON.

Each entry's last frame carries `id: <stream_id>:<seq>`, which the SDKs ignore and
`GET /v1/streams/{id}` resumes from (`Last-Event-ID` or `?after=`). A resumed reader
replays the entries up to the one it names without a sound, to know which block is
open and at what index.

Two things Claude's format cannot say end the response with an `error` event instead:
a restart of the answer (`Reset`: the text already shown would have to be taken back,
and a splice would be a lie), and a gateway failure that is not in the log.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import orjson

from tokenrelay.errors import ERROR_TYPES, GatewayError
from tokenrelay.events import (
    Done,
    Event,
    Failed,
    Reset,
    Start,
    Text,
    Thinking,
    ThinkingSignature,
    ToolInput,
    ToolUse,
    ToolUseStart,
)
from tokenrelay.streams.log import Entry, Opening

NAME = "anthropic"
# Frames are kept without the blank line that ends them: an entry's last frame gets
# its `id:` line before it.
PING_FRAME = b'event: ping\ndata: {"type":"ping"}'
PING = PING_FRAME + b"\n\n"
MESSAGE_STOP = b'event: message_stop\ndata: {"type":"message_stop"}'
# A delta's frame: its block's index, and the delta's JSON (cached on the entry).
DELTA = b'event: content_block_delta\ndata: {"type":"content_block_delta","index":%d,"delta":%b}'
# The same with the entry's id line and the blank line: a text token's whole frame.
DELTA_WITH_ID = DELTA + b"\n%b%d\n\n"
# What message_start says of output tokens: a placeholder, as Claude's does.
OUTPUT_PLACEHOLDER = 1

TEXT, THINKING, TOOL_USE = "text", "thinking", "tool_use"
_EMPTY_BLOCK = {
    TEXT: b'{"type":"text","text":""}',
    THINKING: b'{"type":"thinking","thinking":"","signature":""}',
}

# Claude's error types; a gateway code that is not one is mapped here.
CLAUDE_ERROR_TYPES = frozenset(ERROR_TYPES.values())
_CODE_TYPES = {
    "shutdown": "overloaded_error",
    "budget_exceeded": "rate_limit_error",
    "cancelled": "conflict_error",
}


def error_type_of(code: str) -> str:
    """Claude's `error.type` for a stream's failure code (`Failed.code`)."""
    for candidate in (code, code + "_error"):
        if candidate in CLAUDE_ERROR_TYPES:
            return candidate
    return _CODE_TYPES.get(code, "api_error")


def _json(value: Any) -> bytes:
    # An exact-size copy: orjson's result sits in a 4 KiB buffer (see dialects/tokens).
    return b"%b" % orjson.dumps(value)


# What an event's frame holds of its own, encoded once per entry: a delta's JSON, or
# the content_block of a tool_use block's start.
_ENCODERS: dict[type[Any], Callable[[Any], bytes]] = {
    Text: lambda e: b'{"type":"text_delta","text":%b}' % orjson.dumps(e),
    Thinking: lambda e: b'{"type":"thinking_delta","thinking":%b}' % orjson.dumps(e.thinking),
    ThinkingSignature: lambda e: _json({"type": "signature_delta", "signature": e.signature}),
    ToolInput: lambda e: _json({"type": "input_json_delta", "partial_json": e.partial_json}),
    ToolUseStart: lambda e: _json({"type": "tool_use", "id": e.id, "name": e.name, "input": {}}),
}


def encode_event(event: Event) -> bytes:
    return _ENCODERS[type(event)](event)


def message_id(stream_id: str) -> str:
    """The id of the message a stream is: it names the stream, for a resume."""
    return "msg_" + stream_id


def start_usage(opening: Opening | None) -> dict[str, int]:
    """message_start's usage: the input as the upstream reported it."""
    usage = dict(opening.usage) if opening is not None else {"input_tokens": 0}
    usage["output_tokens"] = OUTPUT_PLACEHOLDER
    return usage


def final_usage(done: Done, opening: Opening | None) -> dict[str, int]:
    """message_delta's usage: the output of every upstream call the answer took and,
    when there were several, the input they were billed for (each re-sent the
    prompt), which then differs from message_start's: the SDKs keep the last."""
    usage = {"output_tokens": done.usage.get("output_tokens", 0)}
    started = opening.usage if opening is not None else {}
    inputs = {k: v for k, v in done.usage.items() if k != "output_tokens"}
    if any(started.get(k, 0) != v for k, v in inputs.items()):
        usage = {**inputs, **usage}
    return usage


class CannotContinue(GatewayError):
    """The answer restarted upstream after part of it was sent: Claude's format has no
    way to take that part back. (Not an `Overloaded`: that one ends a response without
    a frame, for the client to resume elsewhere.)"""

    status = 529
    error_type = "overloaded_error"
    retryable = True


RESTARTED = "The upstream failed mid-answer and this model cannot continue it; retry the request"


class AnthropicDialect:
    """One reader's rendering of one stream. `opening` is how the upstream's answer
    began (set before the first content is rendered); `after`: entries up to this seq
    were sent to the client already (a resume) and only move the state on."""

    heartbeat = PING
    final = b""

    __slots__ = (
        "_after",
        "_block",
        "_ended",
        "_index",
        "_pending",
        "_prefix",
        "_request_id",
        "_signed",
        "_started",
        "_stream_id",
        "_tool_id",
        "model",
        "opening",
    )

    def __init__(self, stream_id: str, *, after: int = -1, opening: Opening | None = None):
        self._stream_id = stream_id
        self._prefix = b"id: " + stream_id.encode() + b":"
        self._after = after
        self.opening = opening
        self.model = ""
        self._request_id = ""
        self._started = False  # message_start went out
        self._block: str | None = None  # the kind of the open block
        self._index = -1  # the open (or last) block's index
        self._signed = False  # the open thinking block has its signature
        self._tool_id = ""
        self._pending = b""  # rendered before a failure the next error() reports
        self._ended = False  # the stream's end (or an error) was rendered

    @property
    def started(self) -> bool:
        return self._started

    @property
    def ended(self) -> bool:
        """Whether the response has its end: the stream's own, or an error frame."""
        return self._ended

    def render(self, entries: Sequence[Entry]) -> bytes:
        out: list[bytes] = []
        prefix, after = self._prefix, self._after
        for entry in entries:
            event = entry.event
            if type(event) is Text and self._block is TEXT:  # the per-token path
                if entry.seq > after:
                    wire = entry.encoded(NAME, encode_event)
                    out.append(DELTA_WITH_ID % (self._index, wire, prefix, entry.seq))
                continue
            frames = self._frames(entry)
            if entry.seq > after and frames:
                out.append(b"%b\n%b%d\n\n" % (b"\n\n".join(frames), prefix, entry.seq))
            if type(event) is Reset and self._started and entry.seq > after:
                self._pending = b"".join(out)
                raise CannotContinue(RESTARTED)
        return b"".join(out)

    def error(self, error: GatewayError) -> bytes:
        """An error event after whatever the batch it interrupted had rendered. No `id`:
        a client resuming asks from the last event it really got."""
        pending, self._pending = self._pending, b""
        self._ended = True
        return pending + error_frame(error.error_type, error.message, self._request_id) + b"\n\n"

    # -- one entry's frames (each without its blank line) -------------------------

    def _frames(self, entry: Entry) -> list[bytes]:
        event = entry.event
        kind = type(event)
        if kind is Text:
            frames = self._open(TEXT)
            return [*frames, self._delta(entry)]
        if kind is Thinking:
            frames = self._open(THINKING) if self._block is not THINKING or self._signed else []
            return [*frames, self._delta(entry)]
        if kind is ThinkingSignature:
            frames = [] if self._block is THINKING and not self._signed else self._open(THINKING)
            self._signed = True
            return [*frames, self._delta(entry)]
        if kind is ToolUseStart:
            assert isinstance(event, ToolUseStart)
            frames = self._open(TOOL_USE, entry.encoded(NAME, encode_event))
            self._tool_id = event.id
            return frames
        if kind is ToolInput:
            return [self._delta(entry)] if self._block is TOOL_USE else []
        if kind is ToolUse:
            assert isinstance(event, ToolUse)
            return self._whole_tool(event)
        if kind is Done:
            assert isinstance(event, Done)
            self._ended = True
            return [*self._close(), *self._message_start(), *_message_end(event, self.opening)]
        if kind is Failed:
            assert isinstance(event, Failed)
            self._ended = True
            return [error_frame(error_type_of(event.code), event.message, self._request_id)]
        if kind is Start:
            assert isinstance(event, Start)
            self.model, self._request_id = event.model, event.request_id
        elif kind is Reset and not self._started:
            # Nothing was shown: the answer may start again unseen.
            self._block, self._index, self._signed = None, -1, False
        return []  # Start, Queued: nothing in Claude's format

    def _delta(self, entry: Entry) -> bytes:
        return DELTA % (self._index, entry.encoded(NAME, encode_event))

    def _open(self, block: str, content: bytes | None = None) -> list[bytes]:
        """Close the open block (starting the message first if need be), open `block`."""
        frames = [*self._message_start(), *self._close()]
        first = self._index < 0
        self._block, self._index, self._signed = block, self._index + 1, False
        frames.append(
            b'event: content_block_start\ndata: {"type":"content_block_start","index":%d,'
            b'"content_block":%b}' % (self._index, content or _EMPTY_BLOCK[block])
        )
        if first:
            frames.append(PING_FRAME)
        return frames

    def _close(self) -> list[bytes]:
        if self._block is None:
            return []
        self._block = None
        return [
            b'event: content_block_stop\ndata: {"type":"content_block_stop","index":%d}'
            % self._index
        ]

    def _whole_tool(self, tool: ToolUse) -> list[bytes]:
        if self._block is TOOL_USE and self._tool_id == tool.id:
            return self._close()
        # A block that arrived whole (no start, no fragments): all of it at once.
        start = _json({"type": "tool_use", "id": tool.id, "name": tool.name, "input": {}})
        frames = self._open(TOOL_USE, start)
        whole = orjson.dumps(tool.input).decode()
        frames.append(
            DELTA % (self._index, _json({"type": "input_json_delta", "partial_json": whole}))
        )
        return [*frames, *self._close()]

    def _message_start(self) -> list[bytes]:
        if self._started:
            return []
        self._started = True
        opening = self.opening
        message: dict[str, Any] = {
            "id": message_id(self._stream_id),
            "type": "message",
            "role": "assistant",
            "model": opening.model if opening is not None and opening.model else self.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": start_usage(opening),
        }
        data = orjson.dumps({"type": "message_start", "message": message})
        return [b"event: message_start\ndata: " + data]


def _message_end(done: Done, opening: Opening | None) -> list[bytes]:
    delta = {
        "type": "message_delta",
        "delta": {"stop_reason": done.stop_reason, "stop_sequence": done.stop_sequence},
        "usage": final_usage(done, opening),
    }
    return [b"event: message_delta\ndata: " + orjson.dumps(delta), MESSAGE_STOP]


def error_frame(error_type: str, message: str, request_id: str) -> bytes:
    """Claude's `error` event."""
    data = {
        "type": "error",
        "error": {"details": None, "type": error_type, "message": message},
        "request_id": request_id,
    }
    return b"event: error\ndata: " + orjson.dumps(data)
