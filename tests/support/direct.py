"""The simulator's answer to a request in Claude's format, read straight from it with
the official `anthropic` SDK, event by event: to compare what another wire format
made of the same answer with (its text deltas, a tool call and its input fragments,
the usage, the stop reason)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import anthropic

from tests.support.stack import Stack

MODEL = "claude-haiku-4-5"


@dataclass
class Direct:
    """The simulator's answer to a request in Claude's format, read straight from it."""

    text: str = ""
    deltas: list[str] = field(default_factory=list)
    tool: dict[str, Any] | None = None  # id, name, input
    fragments: list[str] = field(default_factory=list)  # the tool input's, as streamed
    input_tokens: int = 0
    output_tokens: int = 0
    stop_reason: str | None = None


async def direct(stack: Stack, messages: list[dict[str, Any]], **params: Any) -> Direct:
    sdk = anthropic.AsyncAnthropic(base_url=stack.simulator, api_key="k", max_retries=0)
    answer = Direct()
    params = {"model": MODEL, "max_tokens": 1024, **params}
    async with sdk:
        stream = await sdk.messages.create(messages=messages, stream=True, **params)  # type: ignore[call-overload]
        async for event in stream:
            if event.type == "message_start":
                answer.input_tokens = event.message.usage.input_tokens
            elif event.type == "content_block_start" and event.content_block.type == "tool_use":
                block = event.content_block
                answer.tool = {"id": block.id, "name": block.name}
            elif event.type == "content_block_delta" and event.delta.type == "text_delta":
                answer.deltas.append(event.delta.text)
            elif event.type == "content_block_delta" and event.delta.type == "input_json_delta":
                answer.fragments.append(event.delta.partial_json)
            elif event.type == "message_delta":
                answer.output_tokens = event.usage.output_tokens
                answer.stop_reason = event.delta.stop_reason
    answer.text = "".join(answer.deltas)
    if answer.tool is not None:
        answer.tool["input"] = json.loads("".join(answer.fragments))
    return answer
