"""`POST /v1/messages` through the official `anthropic` SDK with `base_url` set to a
real gateway in front of the simulator: `Anthropic` and `AsyncAnthropic`, each call
style (`create`, `create(stream=True)`, `stream()` with `text_stream` and
`get_final_message()`), text, tool use and thinking, each message compared with the
simulator's own answer to the same request, asked straight with the same SDK; a drop
healed into one clean message; errors raised as the SDK's usual classes with their
`.type`."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import anthropic
import pytest
from anthropic.types import Message

from tests.support import Stack, run_stack, unique
from tests.support.metrics import key, scrape

MODEL = "claude-haiku-4-5"
NO_PREFILL = "claude-sonnet-4-6"
WEATHER = {
    "name": "weather",
    "description": "The weather in a city",
    "input_schema": {"type": "object", "properties": {"query": {"type": "string"}}},
}
STYLES = ["create", "create_stream", "stream_helper"]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with run_stack(tmp_path_factory.mktemp("messages-sdk")) as running:
        yield running


def params(prompt: str, **more: Any) -> dict[str, Any]:
    return {
        "model": MODEL,
        "max_tokens": 2048,
        "messages": [{"role": "user", "content": prompt}],
        **more,
    }


def sync_message(client: anthropic.Anthropic, style: str, ask: dict[str, Any]) -> Message:
    """The message `style` yields, and (for the streaming styles) its text as streamed."""
    if style == "create":
        return client.messages.create(**ask)
    if style == "create_stream":
        events = list(client.messages.create(stream=True, **ask))
        return accumulate(events)
    with client.messages.stream(**ask) as stream:
        streamed = "".join(stream.text_stream)
        message = stream.get_final_message()
    assert streamed == text(message)
    return message


async def async_message(
    client: anthropic.AsyncAnthropic, style: str, ask: dict[str, Any]
) -> Message:
    if style == "create":
        return await client.messages.create(**ask)
    if style == "create_stream":
        events = await client.messages.create(stream=True, **ask)
        return accumulate([event async for event in events])
    async with client.messages.stream(**ask) as stream:
        streamed = "".join([t async for t in stream.text_stream])
        message = await stream.get_final_message()
    assert streamed == text(message)
    return message


def accumulate(events: list[Any]) -> Message:
    """A message from raw stream events, as a client without the helper builds it: one
    message_start, blocks by index, one message_delta, then message_stop."""
    kinds = [e.type for e in events]
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    assert kinds.count("message_start") == kinds.count("message_delta") == 1
    message = events[0].message.model_copy(deep=True)
    json_parts: dict[int, str] = {}
    for event in events[1:]:
        if event.type == "content_block_start":
            assert event.index == len(message.content)
            message.content.append(event.content_block.model_copy(deep=True))
        elif event.type == "content_block_delta":
            block, delta = message.content[event.index], event.delta
            if delta.type == "text_delta":
                block.text += delta.text
            elif delta.type == "thinking_delta":
                block.thinking += delta.thinking
            elif delta.type == "signature_delta":
                block.signature = delta.signature
            elif delta.type == "input_json_delta":
                json_parts[event.index] = json_parts.get(event.index, "") + delta.partial_json
        elif event.type == "message_delta":
            message.stop_reason = event.delta.stop_reason
            message.usage.output_tokens = event.usage.output_tokens
            if event.usage.input_tokens is not None:  # cumulative, as the SDK reads it
                message.usage.input_tokens = event.usage.input_tokens
    for index, raw in json_parts.items():
        message.content[index].input = json.loads(raw)
    return message


def text(message: Message) -> str:
    return "".join(b.text for b in message.content if b.type == "text")


def direct(stack: Stack, ask: dict[str, Any]) -> Message:
    """The simulator's own message for the same request."""
    with anthropic.Anthropic(base_url=stack.simulator, api_key="k", max_retries=0) as sim:
        return sim.messages.create(**ask)


def same_message(got: Message, want: Message) -> None:
    """The same answer, ids aside (and the usage's absent fields as the SDK fills them)."""
    assert got.id.startswith("msg_") and got.type == "message" and got.role == "assistant"
    assert got.model == want.model
    assert [b.model_dump() for b in got.content] == [b.model_dump() for b in want.content]
    assert got.stop_reason == want.stop_reason and got.stop_sequence == want.stop_sequence
    assert got.usage.input_tokens == want.usage.input_tokens
    assert got.usage.output_tokens == want.usage.output_tokens


def gateway_sync(stack: Stack, **options: Any) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=stack.gateway, api_key="unused", max_retries=0, **options)


def gateway_async(stack: Stack) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=stack.gateway, api_key="unused", max_retries=0)


@pytest.mark.parametrize("style", STYLES)
def test_sync_client_gets_the_simulators_message(stack: Stack, style: str) -> None:
    ask = params(unique(f"Tell me something, {style} [[sim:tokens=17]]"))
    with gateway_sync(stack) as client:
        got = sync_message(client, style, ask)
    same_message(got, direct(stack, ask))
    assert len(text(got).split()) == 17


@pytest.mark.parametrize("style", STYLES)
async def test_async_client_gets_the_simulators_message(stack: Stack, style: str) -> None:
    ask = params(unique(f"Tell me more, {style} [[sim:tokens=11]]"))
    async with gateway_async(stack) as client:
        got = await async_message(client, style, ask)
    same_message(got, direct(stack, ask))


@pytest.mark.parametrize("style", STYLES)
async def test_a_tool_call_arrives_as_the_sdks_tool_use_block(stack: Stack, style: str) -> None:
    ask = params(unique(f"Weather in Paris? {style} [[sim:tool=weather]]"), tools=[WEATHER])
    with gateway_sync(stack) as client:
        got = sync_message(client, style, ask)
    async with gateway_async(stack) as client:
        got_async = await async_message(client, style, ask)
    want = direct(stack, ask)
    for message in (got, got_async):
        same_message(message, want)
        assert [b.type for b in message.content] == ["text", "tool_use"]
        assert message.stop_reason == "tool_use"
        tool = message.content[1]
        assert tool.type == "tool_use" and tool.name == "weather" and set(tool.input) == {"query"}


@pytest.mark.parametrize("style", STYLES)
def test_thinking_arrives_with_its_signature(stack: Stack, style: str) -> None:
    thinking = {"type": "enabled", "budget_tokens": 1024}
    ask = params(unique(f"Why is the sky blue? {style} [[sim:tokens=6]]"), thinking=thinking)
    with gateway_sync(stack) as client:
        got = sync_message(client, style, ask)
    same_message(got, direct(stack, ask))
    assert [b.type for b in got.content] == ["thinking", "text"]
    assert got.content[0].signature  # type: ignore[union-attr]


def test_a_replayed_claude_stream_is_read_by_the_sdk_as_claudes(stack: Stack) -> None:
    ask = params(unique("Weather? [[sim:replay=every-event]]"))
    with gateway_sync(stack) as client, client.messages.stream(**ask) as stream:
        events = list(stream)
        message = stream.get_final_message()
    assert [b.type for b in message.content] == ["thinking", "text", "tool_use"]
    assert message.content[1].text == "Let me check the weather in Paris — “right now”.\n"  # type: ignore[union-attr]
    tool = message.content[2]
    assert tool.type == "tool_use" and tool.id == "toolu_01T1x1fJ34qAmk2tNTrN7Up6"
    assert tool.input == {"location": "Paris, France", "unit": "celsius"}
    assert message.content[0].signature.startswith("EqQBCgIYAhIM")  # type: ignore[union-attr]
    assert message.usage.input_tokens == 472 and message.usage.output_tokens == 89
    assert message.usage.cache_creation_input_tokens == 1024
    assert message.usage.cache_read_input_tokens == 2048
    assert sum(e.type == "input_json" for e in events) == 4


@pytest.mark.parametrize("style", STYLES)
async def test_an_upstream_drop_is_healed_into_one_clean_message(stack: Stack, style: str) -> None:
    prompt = unique(f"A long answer, {style} [[sim:tokens=30]]")
    faulty = params(prompt + " [[sim:drop_after=10]] [[sim:fail_times=1]]")
    async with gateway_async(stack) as client:
        got = await async_message(client, style, faulty)
    # Asked straight once the fault is spent (it is for the first call only).
    want = direct(stack, faulty)
    assert [b.type for b in got.content] == ["text"]  # one block, however many calls
    assert text(got) == text(want)
    assert got.stop_reason == "end_turn"
    # Two upstream calls: 10 deltas, then the other 20; the prompt billed twice.
    assert got.usage.output_tokens == 30
    assert got.usage.input_tokens == 2 * want.usage.input_tokens


def test_metrics_count_these_streams_under_the_messages_route(stack: Stack) -> None:
    before = scrape(stack.gateway)
    with gateway_sync(stack) as client:
        client.messages.create(**params(unique("Counted [[sim:tokens=3]]")))
    moved = scrape(stack.gateway).moved_since(before)
    labels = {"route": "messages", "model": MODEL}
    assert moved[key("tokenrelay_streams_started_total", **labels)] == 1
    assert moved[key("tokenrelay_streams_completed_total", status="done", **labels)] == 1


# -- errors -----------------------------------------------------------------------------


def test_bad_input_raises_bad_request_error(stack: Stack) -> None:
    with gateway_sync(stack) as client:
        with pytest.raises(anthropic.BadRequestError) as missing:
            client.messages.create(model=MODEL, max_tokens=10, messages=[])
        with pytest.raises(anthropic.BadRequestError) as unknown:
            client.messages.create(**params("Hi"), extra_body={"colour": "blue"})
    assert missing.value.type == "invalid_request_error"
    assert missing.value.api_message == "messages must not be empty"
    assert unknown.value.api_message == "Unknown field: colour"


def test_an_unknown_model_raises_not_found_error(stack: Stack) -> None:
    with gateway_sync(stack) as client, pytest.raises(anthropic.NotFoundError) as raised:
        client.messages.create(**{**params("Hi"), "model": "claude-nonexistent-1"})
    assert raised.value.type == "not_found_error"
    assert raised.value.status_code == 404


@pytest.mark.parametrize("stream", [False, True])
def test_persistent_overload_raises_overloaded_error_once(stack: Stack, stream: bool) -> None:
    before = stack.sim_stats()["requests"]
    # The SDK's own retries are left on: the gateway tells it not to stack them.
    with (
        anthropic.Anthropic(base_url=stack.gateway, api_key="k") as client,
        pytest.raises(anthropic.OverloadedError) as raised,
    ):
        client.messages.create(stream=stream, **params(unique("Busy [[sim:status=529]]")))
    assert raised.value.type == "overloaded_error"
    assert stack.sim_stats()["requests"] == before + 3  # the gateway's call and two retries


def test_a_failure_once_the_answer_started_raises_from_the_stream(stack: Stack) -> None:
    ask = params(unique("Broken [[sim:tokens=20]] [[sim:drop_after=5]]"), model=NO_PREFILL)
    seen: list[str] = []
    with gateway_sync(stack) as client, client.messages.stream(**ask) as stream:
        with pytest.raises(anthropic.APIStatusError) as raised:
            for piece in stream.text_stream:
                seen.append(piece)
        partial = stream.current_message_snapshot
    assert raised.value.status_code == 200  # an `error` event, not an HTTP error
    assert raised.value.type == "overloaded_error"
    assert len(seen) == 5 and text(partial) == "".join(seen)
    assert partial.stop_reason is None  # never a complete-looking message


@pytest.mark.parametrize("style", STYLES)
def test_an_overloaded_upstream_is_retried_before_the_first_token(stack: Stack, style: str) -> None:
    prompt = unique(f"Busy at first, {style} [[sim:tokens=8]]")
    before = stack.sim_stats()["requests"]
    with gateway_sync(stack) as client:
        got = sync_message(
            client, style, params(prompt + " [[sim:status=529]] [[sim:fail_times=2]]")
        )
    assert stack.sim_stats()["requests"] == before + 3  # two refusals, then the answer
    same_message(got, direct(stack, params(prompt + " [[sim:status=529]] [[sim:fail_times=2]]")))
