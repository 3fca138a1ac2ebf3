"""The stored turns of a conversation as the messages of its next request.

The rule (docs/conversations.md):

- Turns go back to the model in pairs, a user turn and the answer to it, and only a
  pair whose answer is `complete` (and not empty). A failed, cancelled or budget-cut
  answer is kept and shown, but neither it nor the user turn it answered is sent again:
  the model never sees a half answer as if it were whole, nor a question twice.
- The history is trimmed from the oldest pair, whole pairs at a time, until the request
  fits: its estimated input tokens (the characters of the system prompt and of every
  turn's text, tool inputs and tool results, divided by 4, plus 1, as admission
  estimates a request) within `max_input_tokens`, its characters within the prompt
  limit, its messages within the message limit. A pair whose user turn answers tool
  calls (`tool_result` blocks) is never kept without the pair before it, that made them.
- The new user turn is always sent; if it alone does not fit, the request is refused
  (400) as any request that is too long.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from tokenrelay.blocks import texts_of
from tokenrelay.conversations.answer import COMPLETE, Content
from tokenrelay.conversations.store import Turn


@dataclass(frozen=True, slots=True)
class Fit:
    """What a request must fit in."""

    max_input_tokens: int
    max_prompt_chars: int  # the validator's limit on the turns' text
    max_messages: int


@dataclass(frozen=True, slots=True)
class History:
    messages: list[dict[str, Any]]
    dropped: int  # sendable pairs trimmed off the front


def sendable(turns: Sequence[Turn]) -> list[tuple[Turn, Turn]]:
    """The (user, answer) pairs that may be sent back: those answered completely."""
    pairs = []
    for i in range(len(turns) - 1):
        user, answer = turns[i], turns[i + 1]
        if (
            user.role == "user"
            and answer.role == "assistant"
            and answer.status == COMPLETE
            and answer.content
        ):
            pairs.append((user, answer))
    return pairs


def prompt_chars(content: Content) -> int:
    """The characters the validator counts against the prompt limit."""
    return sum(len(text) for text in texts_of(content))


def estimated_chars(content: Content) -> int:
    """The characters of a turn for the token estimate: its text and its tool inputs."""
    chars = prompt_chars(content)
    if isinstance(content, list):
        for block in content:
            if block.get("type") == "tool_use":
                chars += len(orjson.dumps(block.get("input")))
    return chars


def estimate_tokens(chars: int) -> int:
    return chars // 4 + 1


def _answers_tools(content: Content) -> bool:
    return isinstance(content, list) and any(b.get("type") == "tool_result" for b in content)


def build(turns: Sequence[Turn], new: Content, system: str | None, fit: Fit) -> History:
    """The messages to send: the sendable pairs that fit, oldest first, and `new`."""
    pairs = sendable(turns)
    prompt = [prompt_chars(u.content) + prompt_chars(a.content) for u, a in pairs]
    estimate = [estimated_chars(u.content) + estimated_chars(a.content) for u, a in pairs]
    prompt_total = sum(prompt) + prompt_chars(new)
    estimate_total = sum(estimate) + estimated_chars(new) + len(system or "")
    start = 0

    def fits() -> bool:
        return (
            estimate_tokens(estimate_total) <= fit.max_input_tokens
            and prompt_total <= fit.max_prompt_chars
            and 2 * (len(pairs) - start) + 1 <= fit.max_messages
        )

    while start < len(pairs) and (not fits() or _answers_tools(pairs[start][0].content)):
        prompt_total -= prompt[start]
        estimate_total -= estimate[start]
        start += 1
    messages: list[dict[str, Any]] = []
    for user, answer in pairs[start:]:
        messages.append({"role": "user", "content": user.content})
        messages.append({"role": "assistant", "content": answer.content})
    messages.append({"role": "user", "content": new})
    return History(messages, start)
