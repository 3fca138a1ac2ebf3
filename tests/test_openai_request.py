"""OpenAI's chat request, without a network: the translator from OpenAI's body to
Claude's request, or the 400 that names the parameter."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from tokenrelay.chat_request import ChatRequest, translate
from tokenrelay.dialects.openai_errors import (
    InvalidParam,
    ModelNotFound,
    OpenAIError,
    from_gateway_error,
)
from tokenrelay.errors import (
    InvalidRequest,
)
from tokenrelay.pricing import ModelTable
from tokenrelay.providers.base import GenerationRequest
from tokenrelay.validation import Limits, RequestValidator

MODEL = "claude-haiku-4-5"
VALIDATOR = RequestValidator(Limits(), ModelTable(), MODEL)
HI = [{"role": "user", "content": "Hi"}]


def chat(**body: Any) -> ChatRequest:
    return translate(orjson.dumps({"model": MODEL, "messages": HI, **body}), VALIDATOR)


def refused(body: dict[str, Any]) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as caught:
        translate(orjson.dumps(body), VALIDATOR)
    return caught.value


# -- the translator -------------------------------------------------------------


def test_a_conversation_with_tools_becomes_claudes_request() -> None:
    body = {
        "model": MODEL,
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "developer", "content": [{"type": "text", "text": "Use tools."}]},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Weather in Paris? "},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBO"}},
                ],
            },
            {
                "role": "assistant",
                "content": "Looking.",
                "refusal": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "weather", "arguments": '{"city": "Paris"}'},
                    },
                    {
                        "id": "call_2",
                        "type": "function",
                        "function": {"name": "time", "arguments": ""},
                    },
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "18 C"},
            {
                "role": "tool",
                "tool_call_id": "call_2",
                "content": [{"type": "text", "text": "noon"}],
            },
            {"role": "user", "content": "Thanks"},
        ],
        "max_completion_tokens": 300,
        "stop": "END",
        "temperature": 0.5,
        "top_p": 0.9,
        "tools": [
            {
                "type": "function",
                "function": {
                    "name": "weather",
                    "description": "Current weather",
                    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
                },
            },
            {"type": "function", "function": {"name": "time"}},
        ],
        "tool_choice": "required",
        "parallel_tool_calls": False,
        "user": "u-42",
        "stream": True,
        "stream_options": {"include_usage": True},
        "n": 1,
        "store": False,
        "metadata": {"app": "x"},
    }
    assert translate(orjson.dumps(body), VALIDATOR) == ChatRequest(
        GenerationRequest(
            model=MODEL,
            system="Be brief.\n\nUse tools.",
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "Weather in Paris? "},
                        {
                            "type": "image",
                            "source": {"type": "base64", "media_type": "image/png", "data": "iVBO"},
                        },
                    ],
                },
                {
                    "role": "assistant",
                    "content": [
                        {"type": "text", "text": "Looking."},
                        {
                            "type": "tool_use",
                            "id": "call_1",
                            "name": "weather",
                            "input": {"city": "Paris"},
                        },
                        {"type": "tool_use", "id": "call_2", "name": "time", "input": {}},
                    ],
                },
                {
                    "role": "user",
                    "content": [
                        {"type": "tool_result", "tool_use_id": "call_1", "content": "18 C"},
                        {"type": "tool_result", "tool_use_id": "call_2", "content": "noon"},
                        {"type": "text", "text": "Thanks"},
                    ],
                },
            ],
            max_tokens=300,
            temperature=0.5,
            top_p=0.9,
            stop_sequences=["END"],
            tools=[
                {
                    "name": "weather",
                    "description": "Current weather",
                    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
                },
                {"name": "time", "input_schema": {"type": "object", "properties": {}}},
            ],
            tool_choice={"type": "any", "disable_parallel_tool_use": True},
            metadata={"user_id": "u-42"},
        ),
        stream=True,
        include_usage=True,
    )


def test_a_plain_request_keeps_the_gateways_defaults() -> None:
    assert chat() == ChatRequest(
        GenerationRequest(model=MODEL, messages=HI, max_tokens=Limits().default_max_tokens),
        stream=False,
        include_usage=False,
    )


@pytest.mark.parametrize(
    ("choice", "parallel", "claude"),
    [
        ("auto", None, {"type": "auto"}),
        ("none", None, {"type": "none"}),
        ("required", None, {"type": "any"}),
        ({"type": "function", "function": {"name": "f"}}, None, {"type": "tool", "name": "f"}),
        (None, False, {"type": "auto", "disable_parallel_tool_use": True}),
        ("none", False, {"type": "none"}),
        (None, True, {"type": "auto"}),
    ],
)
def test_tool_choice_maps_onto_claudes(
    choice: object, parallel: bool | None, claude: object
) -> None:
    tools = [{"type": "function", "function": {"name": "f"}}]
    options = {"tool_choice": choice, "parallel_tool_calls": parallel}
    request = chat(tools=tools, **{k: v for k, v in options.items() if v is not None})
    assert request.generation.tool_choice == claude


def test_max_tokens_is_either_name_and_stop_a_string_or_a_list() -> None:
    assert chat(max_tokens=7).generation.max_tokens == 7
    assert chat(max_tokens=7, max_completion_tokens=7).generation.max_tokens == 7
    assert chat(stop=["a", "b"]).generation.stop_sequences == ["a", "b"]
    assert chat(stop=[]).generation.stop_sequences is None
    assert chat(safety_identifier="s-1").generation.metadata == {"user_id": "s-1"}


@pytest.mark.parametrize(
    ("extra", "reason"),
    [
        ({"n": 2}, "only one choice (n = 1) is generated"),
        ({"n": True}, "only one choice (n = 1) is generated"),
        ({"logprobs": True}, "Claude does not return log probabilities"),
        ({"top_logprobs": 3}, "Claude does not return log probabilities"),
        ({"presence_penalty": 0.5}, "Claude has no presence penalty"),
        ({"frequency_penalty": 1}, "Claude has no frequency penalty"),
        ({"logit_bias": {"50256": -100}}, "Claude has no logit bias"),
        ({"seed": 7}, "Claude has no seeded sampling"),
        (
            {"response_format": {"type": "json_object"}},
            "only text responses are supported (no json_object or json_schema mode)",
        ),
        ({"store": True}, "completions are not stored"),
        ({"functions": [{"name": "f"}]}, "the deprecated functions are not supported: use tools"),
        ({"service_tier": "flex"}, "only the default service tier is served"),
        ({"reasoning_effort": "high"}, "reasoning_effort is not supported"),
        ({"audio": {"voice": "alloy"}}, "audio output is not supported"),
    ],
)
def test_what_has_no_counterpart_in_claudes_api_is_a_400_saying_so(
    extra: dict[str, Any], reason: str
) -> None:
    error = refused({"model": MODEL, "messages": HI, **extra})
    [name] = extra
    assert isinstance(error, InvalidParam)
    assert (error.status, error.message, error.param, error.openai_code) == (
        400,
        f"{name} is not supported: {reason}",
        name,
        "unsupported_parameter",
    )


def tool_call(arguments: str) -> dict[str, Any]:
    return {"id": "c", "type": "function", "function": {"name": "f", "arguments": arguments}}


F = [{"type": "function", "function": {"name": "f"}}]
AUDIO = {"type": "input_audio", "input_audio": {}}
HTTP_IMAGE = {"type": "image_url", "image_url": {"url": "http://x/y.png"}}


@pytest.mark.parametrize(
    ("extra", "param", "message"),
    [
        ({"frobnicate": 1}, "frobnicate", "Unrecognized request argument supplied: frobnicate"),
        (
            {"temperature": 1.5},
            "temperature",
            "Invalid temperature: expected a number from 0 to 1 (Claude's range)",
        ),
        (
            {"top_p": "high"},
            "top_p",
            "Invalid top_p: expected a number from 0 to 1 (Claude's range)",
        ),
        (
            {"max_tokens": 0},
            "max_tokens",
            "Invalid max_tokens: expected an integer from 1 to 64000",
        ),
        (
            {"max_completion_tokens": 64001},
            "max_completion_tokens",
            "Invalid max_completion_tokens: expected an integer from 1 to 64000",
        ),
        (
            {"max_tokens": 5, "max_completion_tokens": 6},
            "max_tokens",
            "max_tokens and max_completion_tokens differ: send one of them",
        ),
        ({"stop": 3}, "stop", "Invalid stop: expected a string or a list of strings"),
        ({"stop": [" "]}, "stop", "Invalid stop: a stop sequence must not be blank"),
        (
            {"stream_options": {"include_usage": True}},
            "stream_options",
            "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
        ),
        ({"stream": "yes"}, "stream", "Invalid stream: expected a boolean"),
        (
            {"tool_choice": "auto"},
            "tool_choice",
            "tool_choice is only allowed when tools are specified",
        ),
        (
            {"tools": [{"type": "custom", "custom": {"name": "x"}}]},
            "tools[0]",
            "Invalid tools[0]: only tools of type 'function' are supported",
        ),
        (
            {"tools": F, "tool_choice": {"type": "function", "function": {"name": "g"}}},
            "tool_choice",
            "tool_choice names a function that is not in tools: g",
        ),
        ({"messages": []}, "messages", "messages must be a non-empty list"),
        (
            {"messages": [{"role": "function", "content": "x"}]},
            "messages[0].role",
            "Invalid messages[0].role: expected system, developer, user, assistant or tool",
        ),
        (
            {"messages": [{"role": "system", "content": "x"}]},
            "messages",
            "messages must hold at least one user message",
        ),
        (
            {"messages": [{"role": "user", "content": [AUDIO]}]},
            "messages[0].content[0]",
            "Invalid messages[0].content[0]: only text and image_url parts are supported",
        ),
        (
            {"messages": [{"role": "user", "content": [HTTP_IMAGE]}]},
            "messages[0].content[0].image_url.url",
            "Invalid messages[0].content[0].image_url.url: expected an https URL or a base64 "
            "data URL of a JPEG, PNG, GIF or WebP image",
        ),
        (
            {"messages": [*HI, {"role": "tool", "tool_call_id": "call_9", "content": "x"}]},
            "messages[1].tool_call_id",
            "messages[1].tool_call_id must name a tool call of the assistant message before it",
        ),
        (
            {"messages": [*HI, {"role": "assistant", "tool_calls": [tool_call("[1]")]}]},
            "messages[1].tool_calls[0].function.arguments",
            "Invalid messages[1].tool_calls[0].function.arguments: expected a JSON object",
        ),
        (
            {"messages": [*HI, {"role": "assistant", "content": None}]},
            "messages[1].content",
            "messages[1] needs content or tool_calls",
        ),
        ({"model": None}, "model", "you must provide a model parameter"),
    ],
)
def test_what_cannot_be_served_is_a_400_naming_the_parameter(
    extra: dict[str, Any], param: str, message: str
) -> None:
    error = refused({"model": MODEL, "messages": HI, **extra})
    assert isinstance(error, InvalidParam)
    assert (error.status, error.message, error.param, error.openai_code) == (
        400,
        message,
        param,
        None,
    )


def test_what_asks_for_nothing_is_accepted() -> None:
    defaults: dict[str, Any] = {"n": 1, "logprobs": False, "presence_penalty": 0}
    defaults |= {"frequency_penalty": 0.0, "logit_bias": {}, "response_format": {"type": "text"}}
    defaults |= {"store": False, "modalities": ["text"], "service_tier": "auto", "seed": None}
    assert chat(**defaults) == chat()


def test_bodies_that_are_not_requests_are_400s_and_unknown_models_404s() -> None:
    assert refused({}).message == "you must provide a model parameter"
    for raw, message in [
        (b"", "Request body is empty; send a JSON object"),
        (b"{", "Request body is not valid JSON"),
        (b"[1]", "Request body must be a JSON object"),
    ]:
        with pytest.raises(InvalidParam, match=message):
            translate(raw, VALIDATOR)
    with pytest.raises(ModelNotFound) as caught:
        translate(orjson.dumps({"model": "gpt-4o", "messages": HI}), VALIDATOR)
    error = from_gateway_error(caught.value)
    assert error == OpenAIError(
        404,
        "The model `gpt-4o` does not exist or you do not have access to it.",
        "invalid_request_error",
        "model_not_found",
    )
    # The gateway's own checks still hold: the first turn is the user's.
    first = refused({"model": MODEL, "messages": [{"role": "assistant", "content": "Hi"}]})
    assert first.message == "The first message must have role 'user'"
