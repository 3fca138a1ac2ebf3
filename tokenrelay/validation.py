"""Turning a client's request into a `GenerationRequest`, or a clear 400.

HTTP-free: the routes hand over the raw body or query values and get back a
request or an `InvalidRequest` whose message says what to fix.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tokenrelay.blocks import check_conversation, check_thinking, check_tools, texts_of
from tokenrelay.errors import InvalidRequest
from tokenrelay.pricing import ModelTable
from tokenrelay.providers.base import GenerationRequest


class Message(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")
    role: Literal["user", "assistant"]
    # Blocks are checked by `blocks.check_conversation`, whose messages say more.
    content: str | list[Any]


class StreamRequestBody(BaseModel):
    """Body of `POST /api/stream-response`: a `prompt` or a list of `messages`."""

    model_config = ConfigDict(strict=True, extra="forbid")
    prompt: str | None = None
    messages: list[Message] | None = None
    model: str | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    system: str | list[dict[str, Any]] | None = None
    temperature: float | None = Field(default=None, ge=0.0, le=1.0)
    stop_sequences: list[str] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: dict[str, Any] | None = None
    # e.g. {"type": "enabled", "budget_tokens": 2048}: thinking deltas before the text.
    thinking: dict[str, Any] | None = None
    metadata: dict[str, Any] | None = None
    # False: a fresh answer, never one from the response cache.
    cache: bool | None = None
    # False: only the model asked for may answer, never one of its fallbacks.
    fallback: bool | None = None


@dataclass(frozen=True, slots=True)
class Parsed:
    """A validated request, and how the caller wants it served."""

    request: GenerationRequest
    use_cache: bool = True  # False: "cache": false in the body
    fallback: bool = True  # False: "fallback": false in the body


@dataclass(frozen=True, slots=True)
class Limits:
    max_prompt_chars: int = 10_000
    max_messages: int = 200
    default_max_tokens: int = 1024
    max_tokens_ceiling: int = 64_000


class RequestValidator:
    def __init__(
        self,
        limits: Limits,
        models: ModelTable,
        default_model: str,
        screen: list[str] | None = None,
    ) -> None:
        self.limits = limits
        self.models = models
        self.default_model = default_model
        # A heuristic, not a defence: see docs/security.md.
        self.screen = [re.compile(p, re.IGNORECASE) for p in screen or []]

    def from_json(self, raw: bytes) -> Parsed:
        if not raw.strip():
            raise InvalidRequest("Request body is empty; send a JSON object with a prompt")
        try:
            body = StreamRequestBody.model_validate_json(raw)
        except ValidationError as exc:
            raise InvalidRequest(describe(exc)) from None
        return Parsed(
            self.from_body(body),
            use_cache=body.cache is not False,
            fallback=body.fallback is not False,
        )

    def from_query(self, params: dict[str, str]) -> GenerationRequest:
        unknown = set(params) - {"prompt", "model", "max_tokens", "system", "temperature"}
        if unknown:
            raise InvalidRequest(f"Unknown query parameter: {sorted(unknown)[0]}")
        max_tokens = params.get("max_tokens")
        if max_tokens is not None and not (max_tokens.isascii() and max_tokens.isdigit()):
            raise InvalidRequest("max_tokens must be a positive integer")
        fields = {"prompt": params.get("prompt"), "model": params.get("model"),
                  "system": params.get("system"), "temperature": params.get("temperature"),
                  "max_tokens": int(max_tokens) if max_tokens is not None else None}  # fmt: skip
        try:  # temperature as text: pydantic reads the number and checks its range
            body = StreamRequestBody.model_validate(fields, strict=False)
        except ValidationError as exc:
            raise InvalidRequest(describe(exc)) from None
        return self.from_body(body)

    def from_body(self, body: StreamRequestBody) -> GenerationRequest:
        limits = self.limits
        if body.prompt is not None and body.messages is not None:
            raise InvalidRequest("Send either prompt or messages, not both")
        if body.messages is not None:
            messages = [m.model_dump() for m in body.messages]
            self._check_messages(messages)
        elif body.prompt is not None:
            if not body.prompt.strip():
                raise InvalidRequest("prompt must not be empty")
            self._check_length(len(body.prompt))
            messages = [{"role": "user", "content": body.prompt}]
        else:
            raise InvalidRequest("prompt is required (a non-empty string), or send messages")
        if self.screen:
            self._screen(messages, body.system)
        model = body.model or self.default_model
        if model not in self.models:
            raise InvalidRequest(f"Unknown model: {model[:100]}")
        max_tokens = body.max_tokens or limits.default_max_tokens
        if max_tokens < 1 or max_tokens > limits.max_tokens_ceiling:
            raise InvalidRequest(f"max_tokens must be between 1 and {limits.max_tokens_ceiling}")
        check_tools(body.tools, body.tool_choice)
        check_thinking(body.thinking, max_tokens, body.temperature, body.tool_choice)
        request = GenerationRequest(
            model=model,
            messages=messages,
            max_tokens=max_tokens,
            system=body.system,
            temperature=body.temperature,
            stop_sequences=body.stop_sequences,
            tools=body.tools,
            metadata=body.metadata,
            tool_choice=body.tool_choice,
            thinking=body.thinking,
        )
        try:
            # What the gateway keeps of a request (its coalescing key, the Redis copy
            # for a takeover) is this encoding: refuse here what it cannot hold.
            orjson.dumps(request)
        except TypeError:
            raise InvalidRequest(
                "A number in the request is out of range: integers must fit in 64 bits"
            ) from None
        return request

    def _check_messages(self, messages: list[dict[str, Any]]) -> None:
        if not messages:
            raise InvalidRequest("messages must not be empty")
        if len(messages) > self.limits.max_messages:
            raise InvalidRequest(f"Too many messages: at most {self.limits.max_messages}")
        if messages[0]["role"] != "user":
            raise InvalidRequest("The first message must have role 'user'")
        check_conversation(messages)
        total = 0
        for message in messages:
            content = message["content"]
            if isinstance(content, str) and not content.strip() and message["role"] == "user":
                raise InvalidRequest("A user message must not be empty")
            total += sum(len(text) for text in texts_of(content))
        self._check_length(total)

    def _screen(self, messages: list[dict[str, Any]], system: object) -> None:
        texts = [system] if isinstance(system, str) else []
        for message in messages:
            texts += texts_of(message["content"])
        for pattern in self.screen:
            if any(pattern.search(text) for text in texts):
                raise InvalidRequest("Prompt rejected by the content screen")

    def _check_length(self, chars: int) -> None:
        if chars > self.limits.max_prompt_chars:
            raise InvalidRequest(
                f"Prompt is too long: {chars} characters, the limit is "
                f"{self.limits.max_prompt_chars}"
            )


def describe(exc: ValidationError) -> str:
    """One clear sentence from pydantic's first error."""
    err = exc.errors(include_url=False)[0]
    where = ".".join(str(p) for p in err["loc"]) or "body"
    if err["type"] == "json_invalid":
        return "Request body is not valid JSON"
    if err["type"] == "model_type" and not err["loc"]:
        return "Request body must be a JSON object"
    if err["type"] == "extra_forbidden":
        return f"Unknown field: {where}"
    return f"Invalid {where}: {err['msg']}"
