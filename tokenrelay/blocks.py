"""The content of a Messages API conversation: its blocks, tools and thinking config,
checked before anything goes upstream, each mistake a 400 that names where it is.

HTTP-free, like `validation.py`, which calls these. The rules are Claude's:

  - a turn's content is a string or a non-empty list of blocks, each an object with a
    `type`; a user turn holds text, image, document, search_result and tool_result
    blocks, an assistant turn text, tool_use, thinking and redacted_thinking blocks
    (and the server tools' own);
  - every tool_use of an assistant turn is answered by a tool_result with its id in
    the next (user) turn, and a tool_result answers a tool_use of the turn before;
  - a thinking block sent back keeps its signature (Claude checks it);
  - tools have unique names, a custom tool an object `input_schema`; `tool_choice` is
    auto, any, none, or one named tool;
  - thinking is enabled with `budget_tokens` of at least 1024 and below `max_tokens`,
    and then `temperature`, if set, is 1, and `tool_choice` forces no tool.
"""

from __future__ import annotations

import re
from typing import Any

from tokenrelay.errors import InvalidRequest

USER_BLOCKS = frozenset({"text", "image", "document", "search_result", "tool_result"})
ASSISTANT_BLOCKS = frozenset(
    {"text", "tool_use", "thinking", "redacted_thinking", "server_tool_use"}
    | {"web_search_tool_result", "web_fetch_tool_result", "code_execution_tool_result"}
)
TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,128}$")
TOOL_CHOICES = frozenset({"auto", "any", "tool", "none"})
THINKING_TYPES = frozenset({"enabled", "disabled", "adaptive"})
MIN_THINKING_BUDGET = 1024


def _is_str(value: object, *, empty: bool = False) -> bool:
    return isinstance(value, str) and (empty or bool(value))


def _check_block(block: object, role: str, where: str) -> dict[str, Any]:
    if not isinstance(block, dict):
        raise InvalidRequest(f"{where}: a content block must be an object")
    kind = block.get("type")
    allowed = USER_BLOCKS if role == "user" else ASSISTANT_BLOCKS
    if not isinstance(kind, str):
        raise InvalidRequest(f"{where}.type: a content block needs a string type")
    if kind not in allowed:
        other = "assistant" if role == "user" else "user"
        if kind in (ASSISTANT_BLOCKS if role == "user" else USER_BLOCKS):
            raise InvalidRequest(f"{where}: a {kind} block belongs in an {other} turn, not {role}")
        raise InvalidRequest(
            f"{where}.type: unknown block type {kind[:40]!r}; a {role} turn holds "
            + ", ".join(sorted(allowed))
        )
    if kind == "text" and not _is_str(block.get("text"), empty=True):
        raise InvalidRequest(f"{where}.text: a text block needs a string text")
    elif kind == "tool_use":
        if not _is_str(block.get("id")) or not _is_str(block.get("name")):
            raise InvalidRequest(f"{where}: a tool_use block needs a string id and name")
        if not isinstance(block.get("input"), dict):
            raise InvalidRequest(f"{where}.input: a tool_use block's input must be an object")
    elif kind == "tool_result":
        _check_tool_result(block, where)
    elif kind == "thinking":
        if not _is_str(block.get("thinking"), empty=True):
            raise InvalidRequest(f"{where}.thinking: a thinking block needs a string thinking")
        if not _is_str(block.get("signature")):
            raise InvalidRequest(
                f"{where}.signature: a thinking block sent back needs the signature it came with"
            )
    elif kind == "redacted_thinking" and not _is_str(block.get("data")):
        raise InvalidRequest(f"{where}.data: a redacted_thinking block needs its data")
    elif kind in ("image", "document") and not isinstance(block.get("source"), dict):
        raise InvalidRequest(f"{where}.source: an {kind} block needs a source object")
    return block


def _check_tool_result(block: dict[str, Any], where: str) -> None:
    if not _is_str(block.get("tool_use_id")):
        raise InvalidRequest(f"{where}.tool_use_id: a tool_result block needs a tool_use_id")
    content = block.get("content")
    if content is not None and not isinstance(content, str):
        if not isinstance(content, list):
            raise InvalidRequest(f"{where}.content: a tool_result's content is a string or blocks")
        for k, inner in enumerate(content):
            inner_where = f"{where}.content.{k}"
            if not isinstance(inner, dict) or inner.get("type") not in USER_BLOCKS - {
                "tool_result"
            }:
                raise InvalidRequest(
                    f"{inner_where}: a tool_result holds text, image, document or "
                    "search_result blocks"
                )
            _check_block(inner, "user", inner_where)
    if block.get("is_error") is not None and not isinstance(block["is_error"], bool):
        raise InvalidRequest(f"{where}.is_error: must be true or false")


def _tool_use_ids(content: object) -> list[str]:
    if not isinstance(content, list):
        return []
    return [b["id"] for b in content if b.get("type") == "tool_use"]


def check_conversation(messages: list[dict[str, Any]]) -> None:
    """Every block well formed and in its place, every tool call answered."""
    for i, message in enumerate(messages):
        content = message["content"]
        if isinstance(content, str):
            continue
        if not content:
            raise InvalidRequest(f"messages.{i}.content: a list of blocks must not be empty")
        for j, block in enumerate(content):
            _check_block(block, message["role"], f"messages.{i}.content.{j}")
    for i, message in enumerate(messages):
        if message["role"] != "user" or isinstance(message["content"], str):
            continue
        asked = set(_tool_use_ids(messages[i - 1]["content"])) if i else set()
        for j, block in enumerate(message["content"]):
            if block["type"] == "tool_result" and block["tool_use_id"] not in asked:
                raise InvalidRequest(
                    f"messages.{i}.content.{j}: tool_result for {block['tool_use_id'][:64]!r}, "
                    "which no tool_use of the previous (assistant) turn has"
                )
    for i, message in enumerate(messages[:-1]):
        if message["role"] != "assistant":
            continue
        answer = messages[i + 1]["content"]
        answered = (
            {b["tool_use_id"] for b in answer if b["type"] == "tool_result"}
            if isinstance(answer, list)
            else set()
        )
        missing = [t for t in _tool_use_ids(message["content"]) if t not in answered]
        if missing:
            raise InvalidRequest(
                f"messages.{i + 1}: tool_use {missing[0][:64]!r} of the assistant turn before "
                "has no tool_result: each tool_use needs a tool_result in the next turn"
            )


def texts_of(content: str | list[dict[str, Any]]) -> list[str]:
    """The text a turn sends the model: its text blocks and its tool results' text."""
    if isinstance(content, str):
        return [content]
    texts: list[str] = []
    for block in content:
        if block.get("type") == "text":
            texts.append(block["text"])
        elif block.get("type") == "tool_result":
            result = block.get("content")
            if isinstance(result, str):
                texts.append(result)
            elif isinstance(result, list):
                texts += [b["text"] for b in result if b.get("type") == "text"]
    return texts


def check_tools(tools: list[dict[str, Any]] | None, tool_choice: dict[str, Any] | None) -> None:
    names: set[str] = set()
    for i, tool in enumerate(tools or []):
        name = tool.get("name")
        if not isinstance(name, str) or not TOOL_NAME.match(name):
            raise InvalidRequest(
                f"tools.{i}.name: a tool needs a name of 1 to 128 letters, digits, _ or -"
            )
        if name in names:
            raise InvalidRequest(f"tools.{i}.name: tool names must be unique ({name!r} twice)")
        names.add(name)
        custom = tool.get("type") in (None, "custom")
        if custom and not isinstance(tool.get("input_schema"), dict):
            raise InvalidRequest(f"tools.{i}.input_schema: a tool needs a JSON schema object")
    if tool_choice is None:
        return
    kind = tool_choice.get("type")
    if kind not in TOOL_CHOICES:
        raise InvalidRequest("tool_choice.type: one of auto, any, tool, none")
    if kind in ("any", "tool") and not names:
        raise InvalidRequest(f"tool_choice: {kind} needs tools to choose from")
    if kind == "tool" and tool_choice.get("name") not in names:
        raise InvalidRequest("tool_choice.name: the name of one of the tools")
    parallel = tool_choice.get("disable_parallel_tool_use")
    if parallel is not None and not isinstance(parallel, bool):
        raise InvalidRequest("tool_choice.disable_parallel_tool_use: must be true or false")


def check_thinking(
    thinking: dict[str, Any] | None,
    max_tokens: int,
    temperature: float | None,
    tool_choice: dict[str, Any] | None = None,
) -> None:
    if thinking is None:
        return
    kind = thinking.get("type")
    if kind not in THINKING_TYPES:
        raise InvalidRequest("thinking.type: one of enabled, disabled, adaptive")
    if kind == "disabled":
        return
    if tool_choice is not None and tool_choice.get("type") in ("any", "tool"):
        raise InvalidRequest("thinking cannot be on when tool_choice forces a tool (any, tool)")
    if kind != "enabled":
        return
    budget = thinking.get("budget_tokens")
    if not isinstance(budget, int) or isinstance(budget, bool):
        raise InvalidRequest("thinking.budget_tokens: an integer is required with enabled")
    if budget < MIN_THINKING_BUDGET:
        raise InvalidRequest(f"thinking.budget_tokens: at least {MIN_THINKING_BUDGET}")
    if budget >= max_tokens:
        raise InvalidRequest(
            f"max_tokens ({max_tokens}) must be greater than thinking.budget_tokens ({budget})"
        )
    if temperature is not None and temperature != 1:
        raise InvalidRequest("temperature may only be 1 (or unset) when thinking is enabled")
