"""Prompts no other test asks, and the answers the simulator gives them directly."""

from __future__ import annotations

import uuid
from typing import Any

import anthropic
from anthropic.types import Message


def unique(prompt: str) -> str:
    """A prompt no other test asks, so upstream attempt counters never mix."""
    return f"{prompt} ({uuid.uuid4().hex[:8]})"


async def direct_text(simulator: str, prompt: str, model: str = "claude-haiku-4-5") -> str:
    """The simulator's answer, read straight from it with the official SDK."""
    sdk = anthropic.AsyncAnthropic(base_url=simulator, api_key="k", max_retries=0)
    async with sdk.messages.stream(
        model=model, max_tokens=1024, messages=[{"role": "user", "content": prompt}]
    ) as stream:
        message = await stream.get_final_message()
    await sdk.close()
    return "".join(block.text for block in message.content if block.type == "text")


async def direct_message(simulator: str, messages: list[Any], **params: Any) -> Message:
    """The simulator's whole answer to `messages` (thinking and tool blocks too), read
    straight from it with the official SDK's streaming helper."""
    params = {"model": "claude-haiku-4-5", "max_tokens": 1024, **params}
    sdk = anthropic.AsyncAnthropic(base_url=simulator, api_key="k", max_retries=0)
    async with sdk.messages.stream(messages=messages, **params) as stream:
        message = await stream.get_final_message()
    await sdk.close()
    return message
