"""Turning an OpenAI chat completions request into a `GenerationRequest`, or a clear 400.

HTTP-free, like `validation.py`, whose checks it ends with (the prompt's limits, the
content screen, `max_tokens`' ceiling): the request is put into Claude's shape,

    OpenAI                                    Claude
    system and developer messages             system (joined by blank lines)
    user content: a string, text parts,       the string, text blocks,
      image_url parts (data: or https:)         image blocks (base64 or url)
    assistant content and tool_calls          text and tool_use blocks (arguments parsed)
    tool messages (tool_call_id, content)     tool_result blocks, in the next user turn
    max_completion_tokens (or max_tokens)     max_tokens
    stop: a string or a list                  stop_sequences
    temperature, top_p                        temperature, top_p (Claude's range: 0 to 1)
    tools: [{type: function, function}]       tools: [{name, description, input_schema}]
    tool_choice: none, auto, required, named  tool_choice: none, auto, any, tool
    parallel_tool_calls: false                tool_choice.disable_parallel_tool_use
    user (or safety_identifier)               metadata.user_id

and consecutive messages of one role become one turn, as Claude wants them. What has
no counterpart in Claude's API (n > 1, logprobs, penalties, seed, audio, JSON modes,
…) is a 400 that says so, never silently dropped; only what changes nothing about the
answer (`store: false`, `metadata`, `prompt_cache_key`, `service_tier: auto`) is
accepted and ignored.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from tokenrelay.chat_messages import Messages
from tokenrelay.dialects.openai_errors import InvalidParam, ModelNotFound
from tokenrelay.providers.base import GenerationRequest
from tokenrelay.validation import RequestValidator, StreamRequestBody


@dataclass(frozen=True, slots=True)
class ChatRequest:
    generation: GenerationRequest
    stream: bool
    include_usage: bool  # stream_options.include_usage: a last chunk with the usage


def _default_or(*values: object) -> Callable[[object], bool]:
    # `True == 1` in Python: a bool is never taken for a number here.
    return lambda v: v is None or any(type(v) is type(d) and v == d for d in values)


# Parameters Claude has no counterpart for: accepted at the value that asks nothing,
# refused otherwise, with the reason.
_AT_DEFAULT_ONLY: dict[str, tuple[Callable[[object], bool], str]] = {
    "n": (_default_or(1), "only one choice (n = 1) is generated"),
    "logprobs": (_default_or(False), "Claude does not return log probabilities"),
    "top_logprobs": (_default_or(0), "Claude does not return log probabilities"),
    "presence_penalty": (_default_or(0, 0.0), "Claude has no presence penalty"),
    "frequency_penalty": (_default_or(0, 0.0), "Claude has no frequency penalty"),
    "logit_bias": (_default_or({}), "Claude has no logit bias"),
    "seed": (_default_or(), "Claude has no seeded sampling"),
    "response_format": (
        _default_or({"type": "text"}),
        "only text responses are supported (no json_object or json_schema mode)",
    ),
    "store": (_default_or(False), "completions are not stored"),
    "modalities": (_default_or(["text"]), "only text output is supported"),
    "audio": (_default_or(), "audio output is not supported"),
    "prediction": (_default_or(), "predicted outputs are not supported"),
    "reasoning_effort": (_default_or(), "reasoning_effort is not supported"),
    "verbosity": (_default_or(), "verbosity is not supported"),
    "web_search_options": (_default_or(), "web search is not supported"),
    "moderation": (_default_or(), "moderation is not supported"),
    "functions": (_default_or(), "the deprecated functions are not supported: use tools"),
    "function_call": (_default_or(), "the deprecated function_call is not supported: use tools"),
    "service_tier": (_default_or("auto", "default"), "only the default service tier is served"),
    "prompt_cache_options": (_default_or(), "prompt_cache_options are not supported"),
}
# Accepted and ignored: they change nothing about the answer.
_IGNORED = frozenset({"metadata", "prompt_cache_key", "prompt_cache_retention"})
_MAPPED = frozenset(
    {
        "model",
        "messages",
        "max_tokens",
        "max_completion_tokens",
        "stop",
        "temperature",
        "top_p",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "stream",
        "stream_options",
        "user",
        "safety_identifier",
    }
)


def translate(raw: bytes, validator: RequestValidator) -> ChatRequest:
    """The request a chat completions body asks for; `InvalidParam` (400, naming the
    parameter) or `ModelNotFound` (404) when it cannot be served."""
    if not raw.strip():
        raise InvalidParam("Request body is empty; send a JSON object", None)
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise InvalidParam("Request body is not valid JSON", None) from None
    if not isinstance(body, dict):
        raise InvalidParam("Request body must be a JSON object", None)
    _check_parameters(body)
    model = _string(body, "model", required=True)
    assert model is not None
    if model not in validator.models:
        raise ModelNotFound(
            f"The model `{model[:100]}` does not exist or you do not have access to it."
        )
    stream = _flag(body, "stream")
    options = body.get("stream_options")
    if options is not None and not stream:
        raise InvalidParam(
            "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
            "stream_options",
        )
    include_usage = _stream_options(options)
    system, messages = Messages().translate(body.get("messages"))
    tools = _tools(body.get("tools"))
    claude = StreamRequestBody.model_validate(
        {
            "messages": messages,
            "model": model,
            "max_tokens": _max_tokens(body, validator.limits.max_tokens_ceiling),
            "system": system,
            "stop_sequences": _stop(body.get("stop")),
            "tools": tools,
            "metadata": _metadata(body),
        }
    )
    generation = validator.from_body(claude)
    generation = dataclasses.replace(
        generation,
        temperature=_unit(body, "temperature"),
        top_p=_unit(body, "top_p"),
        tool_choice=_tool_choice(body, tools),
    )
    return ChatRequest(generation, stream, include_usage)


def _check_parameters(body: dict[str, Any]) -> None:
    for name, value in body.items():
        if name in _MAPPED or name in _IGNORED:
            continue
        rule = _AT_DEFAULT_ONLY.get(name)
        if rule is None:
            raise InvalidParam(f"Unrecognized request argument supplied: {name}", name)
        accepts, reason = rule
        if not accepts(value):
            raise InvalidParam(f"{name} is not supported: {reason}", name, "unsupported_parameter")


# -- scalar parameters ------------------------------------------------------------


def _string(body: dict[str, Any], name: str, *, required: bool = False) -> str | None:
    value = body.get(name)
    if value is None:
        if required:
            raise InvalidParam(f"you must provide a {name} parameter", name)
        return None
    if not isinstance(value, str) or not value:
        raise InvalidParam(f"Invalid {name}: expected a non-empty string", name)
    return value


def _flag(body: dict[str, Any], name: str) -> bool:
    value = body.get(name)
    if value is not None and not isinstance(value, bool):
        raise InvalidParam(f"Invalid {name}: expected a boolean", name)
    return bool(value)


def _stream_options(options: object) -> bool:
    if options is None:
        return False
    if not isinstance(options, dict):
        raise InvalidParam("Invalid stream_options: expected an object", "stream_options")
    unknown = set(options) - {"include_usage", "include_obfuscation"}
    if unknown:
        name = sorted(unknown)[0]
        raise InvalidParam(f"Unrecognized stream option: {name}", f"stream_options.{name}")
    include = options.get("include_usage")
    if include is not None and not isinstance(include, bool):
        raise InvalidParam(
            "Invalid stream_options.include_usage: expected a boolean",
            "stream_options.include_usage",
        )
    return bool(include)


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _unit(body: dict[str, Any], name: str) -> float | None:
    """temperature or top_p: OpenAI's go up to 2 and 1, Claude's both to 1."""
    value = body.get(name)
    if value is None:
        return None
    if not _number(value) or not 0 <= value <= 1:
        raise InvalidParam(f"Invalid {name}: expected a number from 0 to 1 (Claude's range)", name)
    return float(value)


def _max_tokens(body: dict[str, Any], ceiling: int) -> int | None:
    chosen = None
    for name in ("max_completion_tokens", "max_tokens"):
        value = body.get(name)
        if value is None:
            continue
        if type(value) is not int or not 1 <= value <= ceiling:
            raise InvalidParam(f"Invalid {name}: expected an integer from 1 to {ceiling}", name)
        if chosen is not None and value != chosen:
            raise InvalidParam(
                "max_tokens and max_completion_tokens differ: send one of them", "max_tokens"
            )
        chosen = value
    return chosen


def _stop(stop: object) -> list[str] | None:
    if stop is None:
        return None
    sequences = [stop] if isinstance(stop, str) else stop
    if not isinstance(sequences, list) or not all(isinstance(s, str) for s in sequences):
        raise InvalidParam("Invalid stop: expected a string or a list of strings", "stop")
    if any(not s.strip() for s in sequences):
        raise InvalidParam("Invalid stop: a stop sequence must not be blank", "stop")
    return sequences or None


def _metadata(body: dict[str, Any]) -> dict[str, Any] | None:
    user = _string(body, "user") or _string(body, "safety_identifier")
    return {"user_id": user} if user else None


# -- tools ------------------------------------------------------------------------


def _tools(tools: object) -> list[dict[str, Any]] | None:
    if tools is None:
        return None
    if not isinstance(tools, list):
        raise InvalidParam("Invalid tools: expected a list", "tools")
    out = []
    for i, tool in enumerate(tools):
        where = f"tools[{i}]"
        if not isinstance(tool, dict) or tool.get("type") != "function":
            raise InvalidParam(
                f"Invalid {where}: only tools of type 'function' are supported", where
            )
        function = tool.get("function")
        if not isinstance(function, dict):
            raise InvalidParam(f"Invalid {where}.function: expected an object", f"{where}.function")
        name = function.get("name")
        if not isinstance(name, str) or not name:
            raise InvalidParam(
                f"Invalid {where}.function.name: expected a non-empty string",
                f"{where}.function.name",
            )
        schema = function.get("parameters")
        if schema is None:
            schema = {"type": "object", "properties": {}}
        elif not isinstance(schema, dict):
            raise InvalidParam(
                f"Invalid {where}.function.parameters: expected a JSON schema",
                f"{where}.function.parameters",
            )
        claude: dict[str, Any] = {"name": name, "input_schema": schema}
        description = function.get("description")
        if isinstance(description, str) and description:
            claude["description"] = description
        out.append(claude)
    return out or None


def _tool_choice(body: dict[str, Any], tools: list[dict[str, Any]] | None) -> dict[str, Any] | None:
    choice = body.get("tool_choice")
    parallel = body.get("parallel_tool_calls")
    if parallel is not None and not isinstance(parallel, bool):
        raise InvalidParam("Invalid parallel_tool_calls: expected a boolean", "parallel_tool_calls")
    if choice is None and parallel is None:
        return None
    if tools is None:
        name = "tool_choice" if choice is not None else "parallel_tool_calls"
        raise InvalidParam(f"{name} is only allowed when tools are specified", name)
    claude: dict[str, Any]
    if choice is None or choice == "auto":
        claude = {"type": "auto"}
    elif choice == "none":
        claude = {"type": "none"}
    elif choice == "required":
        claude = {"type": "any"}
    elif (
        isinstance(choice, dict)
        and choice.get("type") == "function"
        and isinstance(choice.get("function"), dict)
        and isinstance(choice["function"].get("name"), str)
    ):
        name = choice["function"]["name"]
        if all(tool["name"] != name for tool in tools):
            raise InvalidParam(
                f"tool_choice names a function that is not in tools: {name[:100]}", "tool_choice"
            )
        claude = {"type": "tool", "name": name}
    else:
        raise InvalidParam(
            "Invalid tool_choice: expected 'none', 'auto', 'required' or "
            '{"type": "function", "function": {"name": ...}}',
            "tool_choice",
        )
    if parallel is False and claude["type"] != "none":
        claude["disable_parallel_tool_use"] = True
    return claude
