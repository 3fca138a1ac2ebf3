"""Claude's format for a whole answer: the `message` object of a non-streaming
`POST /v1/messages`, and the HTTP error of a stream that failed before its answer
began (ANTHROPIC-PROTOCOL.md §3), for both streaming and not.

A restart (`Reset`) is no trouble here: nothing was sent, so the message is what
followed the last one. A failure is the HTTP status Claude would have answered with,
so the SDKs raise their usual class; the gateway has already retried what was worth
retrying, so it tells them not to again (`x-should-retry`), except when it is only
shutting down, where another instance will answer.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from tokenrelay.dialects.anthropic import error_type_of, message_id
from tokenrelay.errors import UpstreamError
from tokenrelay.events import (
    Done,
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

# The events of an answer, as opposed to the stream's own (start, queued, the end).
ANSWER_TYPES: frozenset[type[Any]] = frozenset(
    {Text, Thinking, ThinkingSignature, ToolUseStart, ToolInput, ToolUse}
)

_STATUS_OF_TYPE = {
    "invalid_request_error": 400,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "conflict_error": 409,
    "timeout_error": 504,
    "overloaded_error": 529,
}
# The upstream refused the gateway's own credentials or account: not the caller's
# doing, so not the caller's 401, 402 or 403.
_GATEWAY_SIDE = frozenset({"authentication_error", "permission_error", "billing_error"})


def gateway_side(exc: UpstreamError) -> UpstreamError:
    """An upstream's refusal as the caller should see it: its own status, unless it
    refused the gateway's credentials or account (then an `api_error`, 500)."""
    if exc.error_type not in _GATEWAY_SIDE:
        return exc
    return UpstreamError(exc.message, status=500, error_type="api_error")


class StreamFailed(UpstreamError):
    """A stream that ended in an error before anything of its answer was sent."""

    def __init__(self, failed: Failed) -> None:
        error_type = error_type_of(failed.code)
        if error_type in _GATEWAY_SIDE:
            error_type = "api_error"
        status = _STATUS_OF_TYPE.get(error_type, 500)
        super().__init__(
            failed.message, status=status, error_type=error_type, retryable=failed.retryable
        )
        # A shutting-down instance's answer is worth asking another for; anything
        # else the gateway retried itself, as far as it was worth it.
        self.headers = {"x-should-retry": "true" if failed.code == "shutdown" else "false"}


def failure_before_answer(entries: Sequence[Entry]) -> StreamFailed | None:
    """The error to answer with when the stream failed before its answer began."""
    if not entries or type(entries[-1].event) is not Failed:
        return None
    if any(type(e.event) in ANSWER_TYPES for e in entries):
        return None
    failed = entries[-1].event
    assert isinstance(failed, Failed)
    return StreamFailed(failed)


def whole_message(stream_id: str, entries: Sequence[Entry], opening: Opening | None) -> bytes:
    """The message of a stream that ended with `Done` (its answer after the last reset)."""
    done = entries[-1].event
    assert isinstance(done, Done)
    model = opening.model if opening is not None else ""
    content: list[dict[str, Any]] = []
    for entry in entries:
        event = entry.event
        kind = type(event)
        last = content[-1] if content else None
        if kind is Text:
            if last is None or last["type"] != "text":
                content.append(last := {"type": "text", "text": ""})
            last["text"] += event
        elif kind is Thinking:
            assert isinstance(event, Thinking)
            if last is None or last["type"] != "thinking" or last["signature"]:
                content.append(last := {"type": "thinking", "thinking": "", "signature": ""})
            last["thinking"] += event.thinking
        elif kind is ThinkingSignature:
            assert isinstance(event, ThinkingSignature)
            if last is None or last["type"] != "thinking" or last["signature"]:
                content.append(last := {"type": "thinking", "thinking": "", "signature": ""})
            last["signature"] = event.signature
        elif kind is ToolUse:  # whole: its start and fragments add nothing to it
            assert isinstance(event, ToolUse)
            block = {"type": "tool_use", "id": event.id, "name": event.name, "input": event.input}
            content.append(block)
        elif kind is Reset:
            content = []
        elif kind is Start and not model:
            assert isinstance(event, Start)
            model = event.model
    message = {
        "id": message_id(stream_id),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": done.stop_reason,
        "stop_sequence": done.stop_sequence,
        "usage": done.usage,
    }
    return orjson.dumps(message)
