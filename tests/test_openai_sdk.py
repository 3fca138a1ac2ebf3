"""`POST /v1/chat/completions` through the official `openai` SDK, over a real gateway
in front of the simulator: sync and async, streamed and whole, text and tool calls,
multi-turn with tool results, usage, stop sequences, and a stream healed or ended
mid-way. Each answer is compared with the simulator's own, asked directly in
Claude's format with the official `anthropic` SDK."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from openai.types.chat import ChatCompletionChunk

from tests.support import Stack, run_stack, unique
from tests.support.direct import Direct, direct
from tests.support.metrics import key, scrape

MODEL = "claude-haiku-4-5"
SEARCH = {
    "type": "function",
    "function": {
        "name": "search",
        "description": "Search the web",
        "parameters": {"type": "object", "properties": {"query": {"type": "string"}}},
    },
}
CLAUDE_SEARCH = {
    "name": "search",
    "description": "Search the web",
    "input_schema": {"type": "object", "properties": {"query": {"type": "string"}}},
}


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with run_stack(tmp_path_factory.mktemp("openai")) as stack:
        yield stack


def client(stack: Stack, **options: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{stack.gateway}/v1", api_key="unused", max_retries=0, **options)


def async_client(stack: Stack) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{stack.gateway}/v1", api_key="unused", max_retries=0)


def user(prompt: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": prompt}]


def usage_of(answer: Direct) -> dict[str, Any]:
    prompt, completion = answer.input_tokens, answer.output_tokens
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "completion_tokens_details": None,
        "prompt_tokens_details": {
            "audio_tokens": None,
            "cache_write_tokens": 0,
            "cached_tokens": 0,
            "image_tokens": None,
            "text_tokens": None,
        },
    }


def content_of(chunks: list[ChatCompletionChunk]) -> str:
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


# -- text -------------------------------------------------------------------------


async def test_create_returns_the_simulators_answer_with_its_exact_usage(gateway: Stack) -> None:
    prompt = unique("Tell me about rivers")
    raw = client(gateway).chat.completions.with_raw_response.create(
        model=MODEL, messages=user(prompt)
    )
    completion = raw.parse()
    expected = await direct(gateway, user(prompt))
    stream_id = raw.headers["x-stream-id"]
    assert completion.id == f"chatcmpl-{stream_id}" and raw.headers["x-request-id"]
    assert completion.object == "chat.completion" and completion.model == MODEL
    [choice] = completion.choices
    assert choice.message.role == "assistant" and choice.message.content == expected.text
    assert choice.message.tool_calls is None
    assert choice.finish_reason == "stop"
    assert completion.usage is not None
    assert completion.usage.model_dump() == usage_of(expected)


async def test_a_stream_of_chunks_carries_the_same_answer_one_delta_a_chunk(
    gateway: Stack,
) -> None:
    prompt = unique("Tell me about lakes")
    stream = client(gateway).chat.completions.create(
        model=MODEL, messages=user(prompt), stream=True
    )
    chunks = list(stream)
    expected = await direct(gateway, user(prompt))
    stream_id = stream.response.headers["x-stream-id"]
    assert stream.response.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert {c.id for c in chunks} == {f"chatcmpl-{stream_id}"}
    assert {c.object for c in chunks} == {"chat.completion.chunk"}
    # The role, then one chunk per delta, then the finish reason.
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].delta.content for c in chunks[1:-1]] == expected.deltas
    assert [c.choices[0].finish_reason for c in chunks] == [None] * (len(chunks) - 1) + ["stop"]
    assert all(c.usage is None for c in chunks)


async def test_async_streams_end_with_the_usage_chunk_when_asked(gateway: Stack) -> None:
    prompt = unique("Tell me about seas")
    system = "Answer in one paragraph."
    messages = [{"role": "system", "content": system}, *user(prompt)]
    async with async_client(gateway) as sdk:
        stream = await sdk.chat.completions.create(
            model=MODEL, messages=messages, stream=True, stream_options={"include_usage": True}
        )
        chunks = [chunk async for chunk in stream]
    expected = await direct(gateway, user(prompt), system=system)
    assert content_of(chunks) == expected.text
    *answer, last = chunks
    assert answer[-1].choices[0].finish_reason == "stop"
    assert last.choices == [] and last.usage is not None
    assert last.usage.model_dump() == usage_of(expected)
    assert all(c.usage is None for c in answer)


async def test_async_create_takes_content_parts_and_developer_messages(gateway: Stack) -> None:
    prompt = unique("Tell me about hills")
    messages = [
        {"role": "developer", "content": [{"type": "text", "text": "Be brief."}]},
        {"role": "user", "content": [{"type": "text", "text": prompt}]},
    ]
    async with async_client(gateway) as sdk:
        completion = await sdk.chat.completions.create(model=MODEL, messages=messages)  # type: ignore[arg-type]
    claude = [{"role": "user", "content": [{"type": "text", "text": prompt}]}]
    expected = await direct(gateway, claude, system="Be brief.")
    assert completion.choices[0].message.content == expected.text
    assert completion.usage is not None and completion.usage.prompt_tokens == expected.input_tokens


async def test_a_stop_sequence_ends_the_answer_before_it(gateway: Stack) -> None:
    prompt = unique("Tell me about forests")
    whole = await direct(gateway, user(prompt))
    stop = whole.deltas[4]  # a word with its leading space, in the middle of the answer
    before = whole.text[: whole.text.index(stop)]
    sdk = client(gateway)
    completion = sdk.chat.completions.create(model=MODEL, messages=user(prompt), stop=stop)
    assert completion.choices[0].message.content == before
    assert completion.choices[0].finish_reason == "stop"
    stream = sdk.chat.completions.create(
        model=MODEL, messages=user(prompt), stop=[stop, "never"], stream=True
    )
    chunks = list(stream)
    assert content_of(chunks) == before and chunks[-1].choices[0].finish_reason == "stop"


async def test_max_completion_tokens_cuts_the_answer_with_finish_reason_length(
    gateway: Stack,
) -> None:
    prompt = unique("Tell me about deserts")
    completion = client(gateway).chat.completions.create(
        model=MODEL, messages=user(prompt), max_completion_tokens=4
    )
    expected = await direct(gateway, user(prompt), max_tokens=4)
    assert expected.stop_reason == "max_tokens" and len(expected.deltas) == 4
    assert completion.choices[0].message.content == expected.text
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage is not None and completion.usage.completion_tokens == 4


async def test_temperature_and_top_p_are_sent_on_claudes_sampling_api_version(
    gateway: Stack,
) -> None:
    # The SDK's own API version refuses both (the simulator too): they go on the older one.
    prompt = unique("Tell me about valleys")
    completion = client(gateway).chat.completions.create(
        model=MODEL, messages=user(prompt), temperature=0.3, top_p=0.9
    )
    expected = await direct(gateway, user(prompt))
    assert completion.choices[0].message.content == expected.text


# -- tool calls -------------------------------------------------------------------


async def test_a_tool_call_streams_as_it_forms_and_its_fragments_join_into_the_arguments(
    gateway: Stack,
) -> None:
    prompt = unique("Look it up [[sim:tool=search]]")
    chunks = list(
        client(gateway).chat.completions.create(
            model=MODEL, messages=user(prompt), tools=[SEARCH], stream=True
        )
    )
    expected = await direct(gateway, user(prompt), tools=[CLAUDE_SEARCH])
    assert expected.tool is not None and len(expected.fragments) > 1
    calls = [call for c in chunks for call in c.choices[0].delta.tool_calls or []]
    opened, *fragments = calls
    assert (opened.index, opened.id, opened.type) == (0, expected.tool["id"], "function")
    assert opened.function is not None and opened.function.name == "search"
    assert opened.function.arguments == ""
    assert [f.index for f in fragments] == [0] * len(expected.fragments)
    assert [f.function.arguments for f in fragments if f.function] == expected.fragments
    arguments = "".join(f.function.arguments or "" for f in fragments if f.function)
    assert json.loads(arguments) == expected.tool["input"]
    assert content_of(chunks) == expected.text
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


async def test_a_whole_completion_holds_the_tool_call_and_the_stream_helper_parses_it(
    gateway: Stack,
) -> None:
    prompt = unique("Find it [[sim:tool=search]]")
    sdk = client(gateway)
    completion = sdk.chat.completions.create(model=MODEL, messages=user(prompt), tools=[SEARCH])
    expected = await direct(gateway, user(prompt), tools=[CLAUDE_SEARCH])
    assert expected.tool is not None
    message = completion.choices[0].message
    assert message.content == expected.text
    assert message.tool_calls is not None
    [call] = message.tool_calls
    assert call.type == "function" and call.id == expected.tool["id"]
    assert call.function.name == "search"
    assert json.loads(call.function.arguments) == expected.tool["input"]
    assert completion.choices[0].finish_reason == "tool_calls"
    # The SDK's own accumulator over the stream builds the same message.
    with sdk.chat.completions.stream(model=MODEL, messages=user(prompt), tools=[SEARCH]) as s:
        final = s.get_final_completion()
    assert final.choices[0].message.content == expected.text
    assert final.choices[0].message.tool_calls is not None
    [streamed] = final.choices[0].message.tool_calls
    assert (streamed.id, streamed.function.name) == (call.id, "search")
    assert json.loads(streamed.function.arguments) == expected.tool["input"]


async def test_a_tool_result_goes_back_as_the_next_turn(gateway: Stack) -> None:
    prompt = unique("What is the news [[sim:tool=search]]")
    sdk = client(gateway)
    first = sdk.chat.completions.create(model=MODEL, messages=user(prompt), tools=[SEARCH])
    asked = first.choices[0].message
    assert asked.tool_calls is not None
    [call] = asked.tool_calls
    # The SDK's message object goes straight back, as applications do.
    messages: list[Any] = [
        *user(prompt),
        asked,
        {"role": "tool", "tool_call_id": call.id, "content": "Nothing new today."},
    ]
    chunks = list(
        sdk.chat.completions.create(model=MODEL, messages=messages, tools=[SEARCH], stream=True)
    )
    arguments = json.loads(call.function.arguments)
    claude = [
        *user(prompt),
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": asked.content},
                {"type": "tool_use", "id": call.id, "name": "search", "input": arguments},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": call.id, "content": "Nothing new today."}
            ],
        },
    ]
    expected = await direct(gateway, claude, tools=[CLAUDE_SEARCH])
    assert expected.tool is None and expected.text  # an answer, no second call
    assert content_of(chunks) == expected.text
    assert all(not c.choices[0].delta.tool_calls for c in chunks)
    assert chunks[-1].choices[0].finish_reason == "stop"


# -- failures mid-way -------------------------------------------------------------


async def test_a_drop_mid_stream_is_continued_into_one_clean_answer(tmp_path: Path) -> None:
    words = unique("Breaks midway [[sim:tokens=20]]")
    prompt = f"{words} [[sim:drop_after=6]] [[sim:fail_times=1]]"
    with run_stack(tmp_path) as stack:
        before = scrape(stack.gateway)
        chunks = list(
            client(stack).chat.completions.create(
                model=MODEL,
                messages=user(prompt),
                stream=True,
                stream_options={"include_usage": True},
            )
        )
        moved = scrape(stack.gateway).moved_since(before)
        assert stack.sim_stats()["requests"] == 2  # the attempt cut, and its continuation
        expected = await direct(stack, user(words))
    assert content_of(chunks) == expected.text and len(expected.deltas) == 20
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 20
    labels = {"route": "chat_completions", "model": MODEL}
    assert moved[key("tokenrelay_streams_started_total", **labels)] == 1
    assert moved[key("tokenrelay_streams_completed_total", status="done", **labels)] == 1
    assert moved[key("tokenrelay_time_to_first_token_seconds_count", **labels)] == 1


async def test_an_answer_that_must_start_again_ends_a_stream_but_not_a_whole_one(
    tmp_path: Path,
) -> None:
    # claude-sonnet-4-6 takes no prefill: after a drop, the answer would start again.
    model = "claude-sonnet-4-6"
    words = unique("No prefill here [[sim:tokens=15]]")
    prompt = f"{words} [[sim:drop_after=5]] [[sim:fail_times=1]]"
    with run_stack(tmp_path) as stack:
        sdk = client(stack)
        stream = sdk.chat.completions.create(model=model, messages=user(prompt), stream=True)
        seen: list[ChatCompletionChunk] = []
        with pytest.raises(openai.APIError) as caught:
            for chunk in stream:
                seen.append(chunk)
        # Streamed, the text sent cannot be taken back: the stream ends, no second attempt.
        assert stack.sim_stats()["requests"] == 1
        expected = await direct(stack, user(words), model=model)
        assert type(caught.value) is openai.APIError
        assert (caught.value.type, caught.value.code) == ("server_error", "overloaded")
        assert caught.value.message == (
            "The upstream failed mid-answer and this answer cannot be continued: retry the request"
        )
        assert content_of(seen) == "".join(expected.deltas[:5])
        assert all(c.choices[0].finish_reason is None for c in seen)
        # Whole, the restart is invisible: the answer is the one that followed it.
        words = unique("No prefill there [[sim:tokens=15]]")
        prompt = f"{words} [[sim:drop_after=5]] [[sim:fail_times=1]]"
        completion = sdk.chat.completions.create(model=model, messages=user(prompt))
        expected = await direct(stack, user(words), model=model)
    assert completion.choices[0].message.content == expected.text
    assert completion.usage is not None and completion.usage.completion_tokens == 5 + 15


async def test_identical_requests_share_one_generation_then_the_cached_answer(
    tmp_path: Path,
) -> None:
    prompt = unique("Shared answer [[sim:tokens=12]] [[sim:tps=40]]")
    with run_stack(tmp_path, TOKENRELAY_CACHE_TTL="60") as stack:
        async with async_client(stack) as sdk:

            async def streamed() -> list[ChatCompletionChunk]:
                stream = await sdk.chat.completions.create(
                    model=MODEL, messages=user(prompt), stream=True, temperature=0
                )
                return [chunk async for chunk in stream]

            # Two at once: the second joins the first's stream (one upstream call).
            first, second = await asyncio.gather(streamed(), streamed())
            assert stack.sim_stats()["requests"] == 1
            # Afterwards: the answer comes from the response cache, at no cost.
            cached = await sdk.chat.completions.create(
                model=MODEL, messages=user(prompt), temperature=0
            )
            assert stack.sim_stats()["requests"] == 1
        expected = await direct(stack, user(prompt))
    assert content_of(first) == content_of(second) == expected.text
    assert first[0].id == second[0].id  # one stream
    assert cached.choices[0].message.content == expected.text
    assert cached.id != first[0].id and cached.choices[0].finish_reason == "stop"
    assert cached.usage is not None and cached.usage.total_tokens == 0
