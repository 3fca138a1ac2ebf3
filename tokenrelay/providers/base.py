"""The provider seam: one upstream attempt, as a stream of normalized deltas.

A provider makes exactly one attempt per `stream()` call; retries, continuation and
accounting live in the producer, so every provider gets them the same way.

The stream yields, in order:
  - `MessageStart` once (input usage),
  - the content blocks, each as its deltas in order:
      text      `str` deltas (plain `str` keeps the per-token path free of wrapper
                objects);
      thinking  `Thinking` deltas, then one `ThinkingSignature`;
      tool_use  `ToolUseStart`, `ToolInput` fragments of its input JSON as generated,
                then `ToolUse`, the complete block with its parsed input;
    the thinking and tool deltas are the log's own events (`tokenrelay.events`), so
    the producer appends them as they come;
  - `MessageEnd` once, only when the upstream sent `message_stop`.
A provider raises `UpstreamError` for a failure before the stream starts and
`UpstreamIncomplete` when a started stream ends without `message_stop`.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any, Protocol

from tokenrelay.events import Thinking, ThinkingSignature, ToolInput, ToolUseStart


@dataclass(slots=True)
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0

    def add(self, other: Usage) -> None:
        self.input_tokens += other.input_tokens
        self.output_tokens += other.output_tokens
        self.cache_creation_input_tokens += other.cache_creation_input_tokens
        self.cache_read_input_tokens += other.cache_read_input_tokens

    def as_dict(self) -> dict[str, int]:
        out = {"input_tokens": self.input_tokens, "output_tokens": self.output_tokens}
        if self.cache_creation_input_tokens:
            out["cache_creation_input_tokens"] = self.cache_creation_input_tokens
        if self.cache_read_input_tokens:
            out["cache_read_input_tokens"] = self.cache_read_input_tokens
        return out


@dataclass(slots=True)
class MessageStart:
    model: str
    usage: Usage


@dataclass(slots=True)
class ToolUse:
    id: str
    name: str
    input: dict[str, Any]


@dataclass(slots=True)
class MessageEnd:
    stop_reason: str | None
    output_tokens: int
    stop_sequence: str | None = None


Delta = (
    str
    | MessageStart
    | Thinking
    | ThinkingSignature
    | ToolUseStart
    | ToolInput
    | ToolUse
    | MessageEnd
)


@dataclass(slots=True)
class GenerationRequest:
    """What to ask the model; validated by the routes, free of HTTP."""

    model: str
    messages: list[dict[str, Any]]
    max_tokens: int
    system: str | list[dict[str, Any]] | None = None
    temperature: float | None = None
    stop_sequences: list[str] | None = None
    tools: list[dict[str, Any]] | None = None
    metadata: dict[str, Any] | None = None
    tool_choice: dict[str, Any] | None = None
    thinking: dict[str, Any] | None = None  # e.g. {"type": "enabled", "budget_tokens": N}
    top_p: float | None = None


class Provider(Protocol):
    name: str

    def stream(self, request: GenerationRequest) -> AsyncGenerator[Delta, None]:
        """One attempt. Raises `UpstreamError` / `UpstreamIncomplete` as described above."""
        ...

    async def count_tokens(self, request: GenerationRequest) -> int:
        """The input tokens the request would use (Claude's count_tokens); raises
        `UpstreamError` as the upstream refuses it."""
        ...

    async def aclose(self) -> None: ...
