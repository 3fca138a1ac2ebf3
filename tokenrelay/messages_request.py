"""A Messages API request body (Claude's own, as the official SDKs send it) turned
into a `GenerationRequest`, or Claude's own refusal: a 400 `invalid_request_error`
that says what to fix, and a 404 `not_found_error` for a model the gateway does not
serve, as Claude answers one it does not know.

HTTP-free. The conversation's checks (turns, blocks, tools, thinking, the limits,
the content screen) are the ones every route applies, in `validation.py`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tokenrelay.errors import GatewayError, InvalidRequest
from tokenrelay.providers.base import GenerationRequest
from tokenrelay.validation import Message, RequestValidator, StreamRequestBody, describe


class ModelNotFound(GatewayError):
    status = 404
    error_type = "not_found_error"


class _Conversation(BaseModel):
    """What `count_tokens` takes: a conversation, without the answer's settings."""

    model_config = ConfigDict(strict=True, extra="forbid")
    model: str
    messages: list[Message]
    system: str | list[dict[str, Any]] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: dict[str, Any] | None = None
    thinking: dict[str, Any] | None = None


class _MessagesBody(_Conversation):
    max_tokens: int = Field(ge=1)
    stream: bool = False
    stop_sequences: list[str] | None = None
    temperature: float | None = Field(default=None, ge=0.0, le=1.0)
    top_p: float | None = Field(default=None, ge=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=0)
    metadata: dict[str, Any] | None = None
    # Claude's capacity tier: there is one here, whatever is asked.
    service_tier: str | None = None


_Body = TypeVar("_Body", bound=BaseModel)


@dataclass(frozen=True, slots=True)
class MessagesRequest:
    generation: GenerationRequest
    stream: bool


def _parse(model: type[_Body], raw: bytes) -> _Body:
    if not raw.strip():
        raise InvalidRequest("Request body is empty; send a JSON object")
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        raise InvalidRequest(describe(exc)) from None


def _generation(
    body: _Conversation, validator: RequestValidator, **answer: Any
) -> GenerationRequest:
    if body.model not in validator.models:
        raise ModelNotFound(f"model: {body.model[:100]}")
    fields = {
        "messages": body.messages,
        "model": body.model,
        "system": body.system,
        "tools": body.tools,
        "tool_choice": body.tool_choice,
        "thinking": body.thinking,
        **answer,
    }
    return validator.from_body(StreamRequestBody(**fields))


def parse_messages(raw: bytes, validator: RequestValidator) -> MessagesRequest:
    body = _parse(_MessagesBody, raw)
    if body.top_k is not None:
        raise InvalidRequest("top_k: not supported by this gateway; leave it out")
    generation = _generation(
        body,
        validator,
        max_tokens=body.max_tokens,
        stop_sequences=body.stop_sequences,
        temperature=body.temperature,
        metadata=body.metadata,
    )
    if body.top_p is not None:
        generation = dataclasses.replace(generation, top_p=body.top_p)
    return MessagesRequest(generation, body.stream)


def parse_count_tokens(raw: bytes, validator: RequestValidator) -> GenerationRequest:
    """The conversation to count (with the gateway's default max_tokens, not counted)."""
    return _generation(_parse(_Conversation, raw), validator)
