"""The normalized events a stream log holds: Claude's vocabulary plus the gateway's own.

A producer appends these and every reader renders them in its own wire format
(`dialects/`); nothing outside `dialects/` knows what they look like on the wire.
Each event is a small frozen value with a `kind`, the name the Redis store knows it
by; a text delta, the one event per token, is a plain `str`.

    Start         the stream exists (first entry, always)
    Queued        waiting for capacity, at `position`
    Text          a text delta: a plain `str`
    ToolUseStart  a tool_use block opens
    ToolInput     a fragment of the block's input JSON, as generated
    ToolUse       the complete tool_use block (it closes)
    Thinking      an extended-thinking delta
    ThinkingSignature  the thinking block's signature (it closes): a client sends it
                  back with the block in a later turn, as Claude requires
    Reset         the answer restarts: discard the text so far
    Done          terminal: the answer is complete (usage and cost)
    Failed        terminal: the stream ended in an error (usage and cost so far)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar


@dataclass(frozen=True, slots=True)
class Start:
    kind: ClassVar[str] = "start"
    stream_id: str
    request_id: str
    model: str


@dataclass(frozen=True, slots=True)
class Queued:
    kind: ClassVar[str] = "queued"
    position: int


# A text delta is its own `str`: it is the one event made per token, and it is kept
# for the stream's life, so it costs nothing beside its characters (the producer's
# answer-so-far holds the same object). `Text("…")` makes one; `type(e) is Text`
# tells one apart. (A str subclass would cost more: CPython stores a subclass's
# characters in a separate buffer.)
Text = str
TEXT_KIND = "text"


@dataclass(frozen=True, slots=True)
class ToolUseStart:
    kind: ClassVar[str] = "tool_use_start"
    id: str
    name: str


@dataclass(frozen=True, slots=True)
class ToolInput:
    kind: ClassVar[str] = "tool_input"
    partial_json: str


@dataclass(frozen=True, slots=True)
class ToolUse:
    kind: ClassVar[str] = "tool_use"
    id: str
    name: str
    input: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Thinking:
    kind: ClassVar[str] = "thinking"
    thinking: str


@dataclass(frozen=True, slots=True)
class ThinkingSignature:
    kind: ClassVar[str] = "thinking_signature"
    signature: str


@dataclass(frozen=True, slots=True)
class Reset:
    kind: ClassVar[str] = "reset"
    reason: str = "upstream_error"


@dataclass(frozen=True, slots=True)
class Done:
    kind: ClassVar[str] = "done"
    stop_reason: str | None
    usage: dict[str, int]
    cost_usd: float
    cached: bool = False
    stop_sequence: str | None = None  # the one the answer stopped at (stop_sequence)
    model: str | None = None  # the model that answered (a fallback may differ)


@dataclass(frozen=True, slots=True)
class Failed:
    kind: ClassVar[str] = "error"
    message: str
    code: str
    retryable: bool
    usage: dict[str, int]
    cost_usd: float


Event = (
    Start
    | Queued
    | Text
    | ToolUseStart
    | ToolInput
    | ToolUse
    | Thinking
    | ThinkingSignature
    | Reset
    | Done
    | Failed
)

EVENT_TYPES: dict[str, type[Event]] = {
    cls.kind: cls
    for cls in (
        Start,
        Queued,
        ToolUseStart,
        ToolInput,
        ToolUse,
        Thinking,
        ThinkingSignature,
        Reset,
        Done,
        Failed,
    )
}
TERMINAL_TYPES: frozenset[type[Event]] = frozenset({Done, Failed})


def event_fields(event: Event) -> dict[str, Any]:
    """The event's fields by name (for a store that keeps them, e.g. as JSON)."""
    if type(event) is Text:
        return {"text": event}
    return {f.name: getattr(event, f.name) for f in dataclasses.fields(event)}  # type: ignore[arg-type]


def kind_of(event: Event) -> str:
    return TEXT_KIND if type(event) is Text else event.kind  # type: ignore[union-attr]


def event_from(kind: str, fields: dict[str, Any]) -> Event:
    """The event of `kind` with these fields; KeyError/TypeError for anything else."""
    if kind == TEXT_KIND:
        return Text(fields["text"])
    return EVENT_TYPES[kind](**fields)
