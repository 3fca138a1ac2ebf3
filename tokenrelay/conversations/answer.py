"""A stream's log entries as the assistant turn to store: what it says, and how it ended.

The answer's content is what a client was last shown: the text after the last `reset`
(a restart discards what came before), with its tool calls as Claude's `tool_use`
blocks, so that a later turn answering them with `tool_result` blocks is valid history.
Thinking is not kept: it is not part of what the next turn needs to send.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tokenrelay.events import Done, Event, Failed, Reset, Text, ToolUse

Content = str | list[dict[str, Any]]

COMPLETE = "complete"
FAILED = "failed"
PENDING = "pending"
# A stream's error code that is a status of its own; any other error is `failed`.
STATUS_OF_CODE = {"cancelled": "cancelled", "budget_exceeded": "budget_exceeded"}
LOST = "Stream lost: it ended with its gateway instance, or its log expired"


@dataclass(frozen=True, slots=True)
class Outcome:
    """The stored form of an answer that has ended."""

    content: Content
    status: str
    error: str | None = None


class AnswerBuilder:
    """Fed the stream's events in order; `outcome` once the terminal one arrives."""

    __slots__ = ("_blocks", "_texts")

    def __init__(self) -> None:
        self._blocks: list[dict[str, Any]] = []
        self._texts: list[str] = []

    def add(self, event: Event) -> None:
        if type(event) is Text:
            self._texts.append(event)
        elif isinstance(event, ToolUse):
            self._close_text()
            self._blocks.append(
                {"type": "tool_use", "id": event.id, "name": event.name, "input": event.input}
            )
        elif isinstance(event, Reset):
            self._blocks.clear()
            self._texts.clear()

    def content(self) -> Content:
        self._close_text()
        blocks = self._blocks
        if not blocks:
            return ""
        if len(blocks) == 1 and blocks[0]["type"] == "text":
            return str(blocks[0]["text"])
        return list(blocks)

    def outcome(self, terminal: Done | Failed) -> Outcome:
        if isinstance(terminal, Done):
            return Outcome(self.content(), COMPLETE)
        return Outcome(self.content(), STATUS_OF_CODE.get(terminal.code, FAILED), terminal.message)

    def lost(self) -> Outcome:
        return Outcome(self.content(), FAILED, LOST)

    def _close_text(self) -> None:
        if self._texts:
            self._blocks.append({"type": "text", "text": "".join(self._texts)})
            self._texts.clear()
