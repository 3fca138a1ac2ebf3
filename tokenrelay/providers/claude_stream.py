"""Claude's Messages API as both `anthropic` provider paths speak it: what a request's
body and headers are, how an answer's events become deltas, how long an error says to
wait. Free of the SDK, so the lean path (`anthropic_http`) never imports it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

import orjson

from tokenrelay.errors import UpstreamIncomplete
from tokenrelay.events import Thinking, ThinkingSignature, ToolInput, ToolUseStart
from tokenrelay.observability.tracing import upstream_headers
from tokenrelay.providers.base import (
    Delta,
    GenerationRequest,
    MessageEnd,
    MessageStart,
    ToolUse,
    Usage,
)

# The API version the SDK sends; it rejects temperature and top_p, which the older one
# keeps (ANTHROPIC-PROTOCOL.md §1).
API_VERSION = "2026-10-21"
SAMPLING_API_VERSION = "2023-06-01"

# The request fields sent as they are, when set.
OPTIONAL = ("system", "stop_sequences", "tools", "tool_choice", "metadata", "thinking")
# Not part of a token count.
NOT_COUNTED = ("max_tokens", "stop_sequences", "metadata")


def request_parts(
    request: GenerationRequest,
) -> tuple[dict[str, Any], dict[str, Any], dict[str, str]]:
    """(body, sampling, headers): the Messages API body without the sampling fields,
    those (temperature, top_p; they need `SAMPLING_API_VERSION`), and the attempt's
    trace headers (the upstream's spans join its trace)."""
    body: dict[str, Any] = {
        "model": request.model,
        "messages": request.messages,
        "max_tokens": request.max_tokens,
    }
    for name in OPTIONAL:
        value = getattr(request, name)
        if value is not None:
            body[name] = value
    sampling = {"temperature": request.temperature, "top_p": request.top_p}
    sampling = {name: value for name, value in sampling.items() if value is not None}
    trace = upstream_headers()
    return body, sampling, {} if trace is None else dict(trace)


def retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds an error answer says to wait (`retry-after-ms`, else `retry-after`)."""
    for header in ("retry-after-ms", "retry-after"):
        value = headers.get(header)
        if value is None:
            continue
        try:
            seconds = float(value)
        except ValueError:
            continue
        return seconds / 1000 if header == "retry-after-ms" else seconds
    return None


class BlockState:
    """Turns Claude's stream events into deltas, remembering which block is open."""

    __slots__ = ("open_block", "output_tokens", "stop_reason", "stop_sequence", "tool", "tool_json")

    def __init__(self) -> None:
        self.open_block: str | None = None
        self.tool: tuple[str, str] | None = None
        self.tool_json: list[str] = []
        self.stop_reason: str | None = None
        self.stop_sequence: str | None = None
        self.output_tokens = 0

    def feed(self, event: dict[str, Any]) -> Delta | None:
        kind = event["type"]
        if kind == "content_block_delta":
            delta = event["delta"]
            of = delta["type"]
            if of == "text_delta":
                return cast(str, delta["text"])
            if of == "input_json_delta":
                fragment: str = delta["partial_json"]
                self.tool_json.append(fragment)
                return ToolInput(fragment)
            if of == "thinking_delta":
                return Thinking(delta["thinking"])
            if of == "signature_delta":
                return ThinkingSignature(delta["signature"])
        elif kind == "message_start":
            message = event["message"]
            usage = message.get("usage") or {}
            return MessageStart(
                message.get("model", ""),
                Usage(
                    input_tokens=usage.get("input_tokens") or 0,
                    cache_creation_input_tokens=usage.get("cache_creation_input_tokens") or 0,
                    cache_read_input_tokens=usage.get("cache_read_input_tokens") or 0,
                ),
            )
        elif kind == "content_block_start":
            block = event["content_block"]
            self.open_block = block["type"]
            if block["type"] == "tool_use":
                self.tool, self.tool_json = (block["id"], block["name"]), []
                return ToolUseStart(block["id"], block["name"])
        elif kind == "content_block_stop":
            self.open_block = None
            if self.tool is not None:
                tool_id, name = self.tool
                self.tool = None
                return ToolUse(tool_id, name, orjson.loads("".join(self.tool_json) or "{}"))
        elif kind == "message_delta":
            self.stop_reason = event["delta"].get("stop_reason")
            self.stop_sequence = event["delta"].get("stop_sequence")
            self.output_tokens = (event.get("usage") or {}).get("output_tokens", 0)
        elif kind == "message_stop":
            return MessageEnd(self.stop_reason, self.output_tokens, self.stop_sequence)
        elif kind == "error":
            error = event.get("error") or {}
            raise UpstreamIncomplete(
                error.get("message", "upstream error"), error_type=error.get("type", "api_error")
            )
        return None
