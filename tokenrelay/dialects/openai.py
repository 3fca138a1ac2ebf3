"""The `openai` dialect: a stream's log as OpenAI chat completion chunks.

    data: {"id":"chatcmpl-<stream_id>","object":"chat.completion.chunk","created":…,
           "model":"…","choices":[{"index":0,"delta":{…},"finish_reason":null}]}

one per event, then the last chunk with the `finish_reason` (and, when the request
asked for `stream_options.include_usage`, a chunk with `usage` and no choices), then
`data: [DONE]`. A stream that fails ends with `data: {"error": {…}}` and no `[DONE]`,
so the openai SDK raises rather than hand over a truncated answer as complete.

What is shared, and what each reader adds: an entry's JSON (a text delta as a JSON
string, a tool call's fields) is encoded once and kept on the entry; a reader only
pastes it between its own prefix and suffix, which hold the chunk id, `created` and
the model. A tool call's `index` (its place among the answer's tool calls) is the
reader's too, as is the first chunk's `"role": "assistant"`.

Events with no place in the format are left out: `queued` (the response waits),
thinking (a chat completion has no reasoning field). A `reset` (the answer starts
again) cannot be shown once text has gone out: the stream ends with an error instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from tokenrelay.dialects.openai_errors import (
    INTERRUPTED,
    RESTARTED,
    OpenAIError,
    from_failed,
    from_gateway_error,
)
from tokenrelay.errors import GatewayError
from tokenrelay.events import (
    Done,
    Event,
    Failed,
    Reset,
    Start,
    Text,
    ToolInput,
    ToolUse,
    ToolUseStart,
)
from tokenrelay.streams.log import Entry

NAME = "openai"
CALL = "openai.call"  # a tool_use block as one whole tool call (no start event before it)
PING = b": ping\n\n"
DONE = b"data: [DONE]\n\n"

FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}


def finish_reason(stop_reason: str | None) -> str:
    return FINISH_REASONS.get(stop_reason or "end_turn", "stop")


def usage_of(done: Done | Failed) -> dict[str, Any]:
    """Claude's usage in OpenAI's words. OpenAI's prompt tokens include the cached
    ones, which Claude counts apart (read from the cache, and written to it)."""
    usage = done.usage
    read = usage.get("cache_read_input_tokens", 0)
    written = usage.get("cache_creation_input_tokens", 0)
    prompt = usage.get("input_tokens", 0) + read + written
    completion = usage.get("output_tokens", 0)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": read, "cache_write_tokens": written},
    }


def _copy(data: bytes) -> bytes:
    # orjson's result sits in a 4 KiB buffer for as long as it lives; what an entry
    # keeps is copied to its own size (see dialects/tokens.py).
    return b"%b" % data


def _call_tail(call_id: str, name: str, arguments: str) -> bytes:
    """A tool call's JSON after its `"index":N`, to the end of the `tool_calls` list."""
    fields = {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}
    return b",%b]" % orjson.dumps(fields)[1:]


def _encode(event: Event) -> bytes:
    """An entry's shared JSON in this dialect (see the module's docstring)."""
    kind = type(event)
    if kind is Text:
        return _copy(orjson.dumps(event))
    if isinstance(event, ToolUseStart):
        return _call_tail(event.id, event.name, "")
    if isinstance(event, ToolInput):
        return _copy(orjson.dumps(event.partial_json))
    if isinstance(event, ToolUse):  # its input whole, as a JSON string (the arguments)
        return _copy(orjson.dumps(orjson.dumps(event.input).decode()))
    if isinstance(event, Done):
        return _copy(orjson.dumps(usage_of(event)))
    if isinstance(event, Failed):
        return from_failed(event).body()
    raise TypeError(f"no {NAME} encoding for {event!r}")


def _encode_call(event: Event) -> bytes:
    assert isinstance(event, ToolUse)
    return _call_tail(event.id, event.name, orjson.dumps(event.input).decode())


def _literal(data: bytes) -> bytes:
    """`data` inside a %-format: its own percent signs doubled."""
    return data.replace(b"%", b"%%")


class ChatChunks:
    """One reader's chunks of one stream. Besides the bytes, it tells the route how
    far it has got: `shown` once a render has returned part of the answer (text, a
    tool call, its end), `failure` once it has rendered an error (after which it
    renders nothing more), `complete` once it has rendered `[DONE]`."""

    heartbeat = PING
    final = b""  # `[DONE]` goes out with the end of the answer, never after an error

    __slots__ = (
        "_arguments",
        "_call",
        "_finish",
        "_include_usage",
        "_open_call",
        "_role",
        "_text",
        "_tool_calls",
        "_usage",
        "complete",
        "failure",
        "shown",
    )

    def __init__(self, stream_id: str, model: str, created: int, include_usage: bool) -> None:
        head = b'data: {"id":"chatcmpl-%b","object":"chat.completion.chunk","created":%d,' % (
            stream_id.encode(),
            created,
        )
        head = _literal(head + b'"model":%b,' % orjson.dumps(model))

        def chunk(delta: bytes, finish: bytes) -> bytes:
            return head + b'"choices":[{"index":0,"delta":%b,"finish_reason":%b}]}\n\n' % (
                delta,
                finish,
            )

        self._text = chunk(b'{"content":%b}', b"null")
        self._call = chunk(b'{"tool_calls":[{"index":%d%b}', b"null")
        self._role = chunk(b'{"role":"assistant","content":""}', b"null") % ()
        self._finish = chunk(b"{}", b'"%b"')
        self._usage = head + b'"choices":[],"usage":%b}\n\n'
        self._include_usage = include_usage
        self._tool_calls = 0  # how many the answer has opened so far
        self._open_call: str | None = None  # the id of the one whose input is streaming
        self._arguments = False  # whether any of its input has gone out
        self.shown = False
        self.failure: OpenAIError | None = None
        self.complete = False

    def render(self, entries: Sequence[Entry]) -> bytes:
        if self.failure is not None or self.complete:
            return b""
        text = self._text
        parts: list[bytes] = []
        kept = 0  # what a reset before anything was shown keeps: the role chunk
        for entry in entries:
            event = entry.event
            kind = type(event)
            if kind is Text:
                parts.append(text % entry.encoded(NAME, _encode))
            elif kind is Start:
                parts.append(self._role)
                kept = len(parts)
            elif kind in _TOOL_TYPES:
                parts.append(self._tool_call(entry))
            elif kind is Done:
                parts.append(self._end(entry))
                break
            elif kind is Failed:
                assert isinstance(event, Failed)
                self.failure = from_failed(event)
                parts.append(b"data: %b\n\n" % entry.encoded(NAME, _encode))
                break
            elif kind is Reset:
                if self.shown:
                    # The client has text that is no longer the answer, and this
                    # format has no way to take it back.
                    parts.append(self.fail(RESTARTED))
                    break
                del parts[kept:]  # none of it went out: the answer starts afresh
                self._tool_calls, self._open_call = 0, None
        if self.failure is None and len(parts) > kept:
            self.shown = True
        return b"".join(parts)

    def _tool_call(self, entry: Entry) -> bytes:
        """A tool call's chunk: opened, a fragment of its arguments, or whole."""
        event = entry.event
        if isinstance(event, ToolUseStart):
            self._tool_calls += 1
            self._open_call, self._arguments = event.id, False
            return self._call % (self._tool_calls - 1, entry.encoded(NAME, _encode))
        if isinstance(event, ToolInput):
            self._arguments = True
            return self._call % (self._tool_calls - 1, _arguments(entry.encoded(NAME, _encode)))
        assert isinstance(event, ToolUse)
        if self._open_call == event.id:
            self._open_call = None
            if self._arguments:
                return b""  # its input went out in fragments
            # Opened, but no fragment came (an empty input): the arguments whole.
            return self._call % (self._tool_calls - 1, _arguments(entry.encoded(NAME, _encode)))
        # A block that arrived whole, with no start before it.
        self._tool_calls += 1
        return self._call % (self._tool_calls - 1, entry.encoded(CALL, _encode_call))

    def _end(self, entry: Entry) -> bytes:
        event = entry.event
        assert isinstance(event, Done)
        self.complete = True
        end = self._finish % finish_reason(event.stop_reason).encode()
        if self._include_usage:
            end += self._usage % entry.encoded(NAME, _encode)
        return end + DONE

    def error(self, error: GatewayError) -> bytes:
        return self.fail(from_gateway_error(error))

    def fail(self, error: OpenAIError) -> bytes:
        """The stream's last chunk: `error` (nothing, if it has already ended)."""
        if self.failure is not None or self.complete:
            return b""
        self.failure = error
        return b"data: %b\n\n" % error.body()

    def interrupted(self) -> bytes:
        """The last chunk of a response that ends before its stream did."""
        return self.fail(INTERRUPTED)


def _arguments(fragment: bytes) -> bytes:
    """A tool call's delta after its index: a fragment (a JSON string) of its arguments."""
    return b',"function":{"arguments":%b}}]' % fragment


_TOOL_TYPES: frozenset[type[Any]] = frozenset({ToolUseStart, ToolInput, ToolUse})
