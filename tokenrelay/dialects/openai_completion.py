"""A whole stream as one OpenAI `chat.completion` object (a request without `stream`).

Unlike a stream, a whole answer can take a `reset` in its stride: what came before
it was never sent, so it is dropped and the answer that followed is the message.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from tokenrelay.dialects.openai import finish_reason, usage_of
from tokenrelay.dialects.openai_errors import INTERRUPTED, OpenAIError, from_failed
from tokenrelay.events import Done, Failed, Reset, Text, ToolUse
from tokenrelay.streams.log import Entry


def completion(
    entries: Sequence[Entry], stream_id: str, model: str, created: int
) -> bytes | OpenAIError:
    """The `chat.completion` JSON of a finished stream, or the error it ended in."""
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for entry in entries:
        event = entry.event
        if type(event) is Text:
            texts.append(event)
        elif isinstance(event, ToolUse):
            arguments = orjson.dumps(event.input).decode()
            function = {"name": event.name, "arguments": arguments}
            calls.append({"id": event.id, "type": "function", "function": function})
        elif isinstance(event, Reset):
            texts.clear()
            calls.clear()
        elif isinstance(event, Failed):
            return from_failed(event)
        elif isinstance(event, Done):
            return _body(stream_id, model, created, "".join(texts), calls, event)
    return INTERRUPTED


def _body(
    stream_id: str, model: str, created: int, text: str, calls: list[dict[str, Any]], done: Done
) -> bytes:
    message: dict[str, Any] = {
        "role": "assistant",
        # OpenAI's content is null when the answer is only tool calls.
        "content": text if text or not calls else None,
        "refusal": None,
    }
    if calls:
        message["tool_calls"] = calls
    choice = {
        "index": 0,
        "message": message,
        "logprobs": None,
        "finish_reason": finish_reason(done.stop_reason),
    }
    return orjson.dumps(
        {
            "id": f"chatcmpl-{stream_id}",
            "object": "chat.completion",
            "created": created,
            "model": done.model or model,  # the one that answered: a fallback may differ
            "choices": [choice],
            "usage": usage_of(done),
        }
    )
