"""The simulator: deterministic text, directives, prefill; and its HTTP server, read by the
official `anthropic` SDK over a real socket. That the in-process provider streams what the
server sends is the provider contract's business (tests/contracts)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anthropic
import httpx
import httpx2
import pytest

from tests.support import free_port, spawn
from tokenrelay.simulator.engine import (
    PREFILL_REJECTED,
    Fault,
    SimError,
    Simulator,
    signature_of,
)


def body(prompt: str, model: str = "claude-haiku-4-5", **extra: Any) -> dict[str, Any]:
    return {"model": model, "max_tokens": 1024, "messages": [{"role": "user", "content": prompt}],
            **extra}  # fmt: skip


def test_same_request_same_deltas_and_directives_do_not_change_the_text() -> None:
    sim = Simulator()
    plain = sim.plan(body("Tell me a story"))
    assert sim.plan(body("Tell me a story")).deltas == plain.deltas
    assert len(plain.deltas) == 50 and plain.stop_reason == "end_turn"
    faulty = sim.plan(body("Tell me [[sim:error_after=3]] a [[sim:tps=0]]story"))
    assert faulty.deltas == plain.deltas and faulty.error_after == 3 and faulty.tps == 0
    assert sim.plan(body("Tell me a story", model="claude-sonnet-4-5")).text != plain.text
    assert plain.deltas[0][0].isupper() and all(d.startswith(" ") for d in plain.deltas[1:])


def test_the_plan_names_the_fault_due_after_each_number_of_deltas() -> None:
    faulty = "Breaks [[sim:error_after=2]] [[sim:drop_after=4]] [[sim:stall_after=6]]"
    plan = Simulator().plan(body(f"{faulty} [[sim:tokens=6]]"))
    faults = [plan.fault_at(sent) for sent in range(8)]
    assert faults == [None, None, Fault.ERROR, None, Fault.DROP, None, Fault.STALL, None]
    assert Simulator().plan(body("Clean [[sim:tokens=6]]")).fault_at(0) is None


def test_echo_answers_with_the_prompt_itself_word_by_word() -> None:
    sim = Simulator()
    plan = sim.plan(body('Say <img src=x onerror="alert(1)">  [[sim:echo=1]] [[sim:tps=5]]'))
    assert plan.deltas == ["Say", " <img", " src=x", ' onerror="alert(1)">']
    assert plan.stop_reason == "end_turn" and plan.tps == 5
    # Prefill continues an echoed answer like any other.
    request = body("One two three four [[sim:echo=1]]")
    request["messages"].append({"role": "assistant", "content": "One two"})
    assert sim.plan(request).deltas == [" three", " four"]


def test_tokens_and_max_tokens_set_the_length() -> None:
    sim = Simulator()
    assert len(sim.plan(body("Hi [[sim:tokens=7]]")).deltas) == 7
    capped = sim.plan({**body("Hi [[sim:tokens=30]]"), "max_tokens": 12})
    assert len(capped.deltas) == 12 and capped.stop_reason == "max_tokens"


def test_prefill_continues_with_exactly_the_rest_even_mid_word() -> None:
    sim = Simulator()
    full = sim.plan(body("Continue me [[sim:tokens=20]]"))
    for cut in (1, 5, len(full.deltas[0]) + 3, len(full.text) - 1):
        prefill = full.text[:cut].rstrip()
        request = body("Continue me [[sim:tokens=20]]")
        request["messages"].append({"role": "assistant", "content": prefill})
        rest = sim.plan(request)
        assert prefill + rest.text == full.text
    request = body("Continue me [[sim:tokens=20]]")
    request["messages"].append({"role": "assistant", "content": full.deltas[0]})
    assert sim.plan(request).deltas == full.deltas[1:]


def test_claudes_prefill_rules() -> None:
    sim = Simulator()
    rejecting = body("Hi", model="claude-sonnet-4-6")
    rejecting["messages"].append({"role": "assistant", "content": "Sure"})
    with pytest.raises(SimError) as info:
        sim.plan(rejecting)
    assert (info.value.status, info.value.message) == (400, PREFILL_REJECTED)
    trailing = body("Hi")
    trailing["messages"].append({"role": "assistant", "content": "Sure "})
    with pytest.raises(SimError) as info:
        sim.plan(trailing)
    assert info.value.status == 400 and "trailing whitespace" in info.value.message


def test_unknown_model_is_404() -> None:
    with pytest.raises(SimError) as info:
        Simulator().plan(body("Hi", model="claude-nope"))
    assert (info.value.status, info.value.error_type) == (404, "not_found_error")


def test_fail_times_applies_the_fault_to_the_first_attempts_only() -> None:
    sim = Simulator()
    request = body("Flaky [[sim:status=529]] [[sim:fail_times=2]]")
    for _ in range(2):
        with pytest.raises(SimError) as info:
            sim.plan(request)
        assert (info.value.status, info.value.retry_after) == (529, 1)
    assert len(sim.plan(request).deltas) == 50
    # A continuation (the same request plus a prefill) counts as a further attempt.
    cut = body("Cut [[sim:error_after=2]] [[sim:fail_times=1]]")
    assert sim.plan(cut).error_after == 2
    first = sim.plan(body("Cut")).deltas[0]
    cut["messages"].append({"role": "assistant", "content": first})
    assert sim.plan(cut).error_after is None


@pytest.fixture(scope="module")
def simulator_url() -> Iterator[str]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with spawn(["simulate", "--port", str(port), "--ttft-ms", "0", "--tps", "0"], f"{url}/healthz"):
        yield url


@pytest.fixture
async def sdk(simulator_url: str) -> AsyncIterator[anthropic.AsyncAnthropic]:
    client = anthropic.AsyncAnthropic(base_url=simulator_url, api_key="k", max_retries=0)
    yield client
    await client.close()


async def test_sdk_streams_exactly_the_planned_text_and_usage(
    sdk: anthropic.AsyncAnthropic,
) -> None:
    prompt = "An SDK reads this [[sim:tokens=25]]"
    planned = Simulator().plan(body(prompt))
    texts: list[str] = []
    async with sdk.messages.stream(
        model="claude-haiku-4-5", max_tokens=1024, messages=[{"role": "user", "content": prompt}]
    ) as stream:
        async for text in stream.text_stream:
            texts.append(text)
        message = await stream.get_final_message()
    assert texts == planned.deltas
    assert message.stop_reason == "end_turn"
    assert message.usage.output_tokens == 25
    assert message.usage.input_tokens == planned.input_tokens


async def test_sdk_non_streaming_message(sdk: anthropic.AsyncAnthropic) -> None:
    prompt = "Whole at once [[sim:tokens=9]]"
    message = await sdk.messages.create(
        model="claude-haiku-4-5", max_tokens=1024, messages=[{"role": "user", "content": prompt}]
    )
    assert message.content[0].type == "text"
    assert message.content[0].text == Simulator().plan(body(prompt)).text
    assert message.usage.output_tokens == 9


async def test_sdk_tool_use_block(sdk: anthropic.AsyncAnthropic) -> None:
    async with sdk.messages.stream(
        model="claude-haiku-4-5", max_tokens=1024,
        messages=[{"role": "user", "content": "Weather? [[sim:tool=weather]]"}],
    ) as stream:  # fmt: skip
        message = await stream.get_final_message()
    tool = message.content[1]
    assert tool.type == "tool_use" and tool.name == "weather" and set(tool.input) == {"query"}
    assert message.stop_reason == "tool_use"


async def test_sdk_sees_claudes_errors(sdk: anthropic.AsyncAnthropic) -> None:
    messages: Any = [{"role": "user", "content": "Busy [[sim:status=429]]"}]
    with pytest.raises(anthropic.RateLimitError) as limited:
        await sdk.messages.create(model="claude-haiku-4-5", max_tokens=10, messages=messages)
    assert limited.value.response.headers["retry-after"] == "1"
    assert limited.value.type == "rate_limit_error"
    with pytest.raises(anthropic.NotFoundError):
        await sdk.messages.create(model="claude-x", max_tokens=10, messages=messages)
    with pytest.raises(anthropic.InternalServerError) as overloaded:
        messages = [{"role": "user", "content": "Busy [[sim:status=529]]"}]
        await sdk.messages.create(model="claude-haiku-4-5", max_tokens=10, messages=messages)
    assert overloaded.value.status_code == 529


async def test_sdk_error_event_after_n_deltas(sdk: anthropic.AsyncAnthropic) -> None:
    texts: list[str] = []
    with pytest.raises(anthropic.APIStatusError) as info:
        async with sdk.messages.stream(
            model="claude-haiku-4-5", max_tokens=1024,
            messages=[{"role": "user", "content": "Breaks [[sim:error_after=4]]"}],
        ) as stream:  # fmt: skip
            async for text in stream.text_stream:
                texts.append(text)
    assert info.value.type == "overloaded_error" and len(texts) == 4


async def test_sdk_sees_a_cut_connection_after_n_deltas(sdk: anthropic.AsyncAnthropic) -> None:
    texts: list[str] = []
    with pytest.raises((httpx2.TransportError, anthropic.APIConnectionError)):
        async with sdk.messages.stream(
            model="claude-haiku-4-5", max_tokens=1024,
            messages=[{"role": "user", "content": "Cut [[sim:drop_after=3]]"}],
        ) as stream:  # fmt: skip
            async for text in stream.text_stream:
                texts.append(text)
    assert len(texts) == 3


def test_new_api_version_rejects_sampling_parameters(simulator_url: str) -> None:
    headers = {"anthropic-version": "2026-10-21", "x-api-key": "k"}
    response = httpx.post(
        f"{simulator_url}/v1/messages", headers=headers,
        json={**body("Hi"), "temperature": 0.5},
    )  # fmt: skip
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert response.headers["request-id"].startswith("req_")
    old = httpx.post(
        f"{simulator_url}/v1/messages", headers={**headers, "anthropic-version": "2023-06-01"},
        json={**body("Hi [[sim:tokens=2]]"), "temperature": 0.5},
    )  # fmt: skip
    assert old.status_code == 200


def test_tool_input_streams_in_fragments_cut_inside_its_key_and_its_string() -> None:
    plan = Simulator().plan(body("Weather in Lima? [[sim:tool=weather]]"))
    assert plan.tool is not None
    fragments = plan.tool.json_fragments()
    text = "".join(fragments)
    assert json.loads(text) == plan.tool.input and set(plan.tool.input) == {"query"}
    assert all(3 <= len(f) <= 10 for f in fragments[:-1]) and 1 <= len(fragments[-1]) <= 10
    # Where each fragment ends: inside the key `"query"`, and inside the query's string.
    ends = [sum(len(f) for f in fragments[: i + 1]) for i in range(len(fragments) - 1)]
    key = range(text.index('"query"') + 1, text.index('"query"') + len('"query"'))
    value = range(text.index(': "') + 3, len(text) - 2)
    assert fragments == ['{"qu', 'ery": ', '"forest ', "fol", "lows rive", "r h", 'ears"', "}"]
    assert sum(end in key for end in ends) == 1 and sum(end in value for end in ends) == 4
    assert Simulator().plan(body("Weather in Lima? [[sim:tool=weather]]")).tool == plan.tool
    assert plan.output_tokens == 5 + len(fragments)


def test_thinking_enabled_opens_the_answer_with_a_signed_thinking_block() -> None:
    think = {"type": "enabled", "budget_tokens": 1024}
    plan = Simulator().plan(body("Ponder", max_tokens=2048, thinking=think))
    plain = Simulator().plan(body("Ponder"))
    assert plan.thinking is not None and len(plan.thinking) == 8
    assert plan.deltas == plain.deltas and plain.thinking is None  # the same text
    assert len(plan.thinking_text.split(" ")) == 32  # four words a delta
    assert plan.signature == signature_of(plan.thinking_text) and len(plan.signature) == 88
    assert plan.output_tokens == 8 + 50
    directed = Simulator().plan(body("Ponder [[sim:thinking=2]]"))
    assert directed.thinking is not None and len(directed.thinking) == 2
    assert directed.thinking[0] == plan.thinking[0] and directed.thinking_text.endswith(".")
    disabled = Simulator().plan(body("Ponder", thinking={"type": "disabled"}))
    assert disabled.thinking is None


@pytest.mark.parametrize(
    ("thinking", "max_tokens", "message"),
    [
        ({"type": "enabled"}, 2048, "thinking.enabled.budget_tokens: Field required"),
        ({"type": "enabled", "budget_tokens": 1000}, 2048,
         "thinking.enabled.budget_tokens: Input should be >= 1024"),
        ({"type": "enabled", "budget_tokens": 2048}, 2048,
         "`max_tokens` must be greater than `thinking.budget_tokens`"),
        ({"type": "sometimes"}, 2048,
         "thinking: Input tag does not match any of the expected tags"),
    ],
)  # fmt: skip
def test_a_thinking_config_claude_refuses_is_a_400(
    thinking: dict[str, Any], max_tokens: int, message: str
) -> None:
    with pytest.raises(SimError) as info:
        Simulator().plan(body("Ponder", max_tokens=max_tokens, thinking=thinking))
    assert (info.value.status, info.value.message) == (400, message)


def test_a_thinking_block_sent_back_must_keep_its_signature() -> None:
    think = {"type": "enabled", "budget_tokens": 1024}
    first = Simulator().plan(body("Ponder [[sim:tool=look]]", max_tokens=2048, thinking=think))
    assert first.tool is not None
    block = {"type": "thinking", "thinking": first.thinking_text, "signature": first.signature}
    tool_use = {"type": "tool_use", "id": first.tool.id, "name": "look", "input": first.tool.input}
    result = {"type": "tool_result", "tool_use_id": first.tool.id, "content": "found"}
    request = body("Ponder [[sim:tool=look]]", max_tokens=2048, thinking=think)
    request["messages"] += [
        {"role": "assistant", "content": [block, {"type": "text", "text": first.text}, tool_use]},
        {"role": "user", "content": [result]},
    ]
    answer = Simulator().plan(request)
    # Handed the tool's result, the answer is text: the directive asks for no second call.
    assert answer.tool is None and answer.stop_reason == "end_turn"
    assert answer.deltas != first.deltas
    block["signature"] = first.signature[:-4] + "AAA="
    with pytest.raises(SimError) as info:
        Simulator().plan(request)
    assert info.value.message == "messages.1.content.0: Invalid `signature` in `thinking` block"


async def test_sdk_reads_thinking_and_its_signature(sdk: anthropic.AsyncAnthropic) -> None:
    think: Any = {"type": "enabled", "budget_tokens": 1024}
    messages: Any = [{"role": "user", "content": "Ponder slowly [[sim:tokens=6]]"}]
    planned = Simulator().plan(body("Ponder slowly [[sim:tokens=6]]", max_tokens=2048,
                                    thinking=think))  # fmt: skip
    thinking: list[str] = []
    async with sdk.messages.stream(
        model="claude-haiku-4-5", max_tokens=2048, thinking=think, messages=messages
    ) as stream:
        async for event in stream:
            if event.type == "thinking":
                thinking.append(event.thinking)
        message = await stream.get_final_message()
    assert thinking == planned.thinking
    [block, text] = message.content
    assert block.type == "thinking" and block.signature == planned.signature
    assert text.type == "text" and text.text == planned.text
    assert message.usage.output_tokens == 8 + 6
    whole = await sdk.messages.create(
        model="claude-haiku-4-5", max_tokens=2048, thinking=think, messages=messages
    )
    assert [b.type for b in whole.content] == ["thinking", "text"]
    assert whole.content[0].thinking == planned.thinking_text  # type: ignore[union-attr]


async def test_sdk_reads_a_tool_call_tool_choice_forced(sdk: anthropic.AsyncAnthropic) -> None:
    tools: Any = [{"name": "maps", "input_schema": {"type": "object"}},
                  {"name": "weather", "input_schema": {"type": "object"}}]  # fmt: skip
    messages: Any = [{"role": "user", "content": "Where? [[sim:tool=weather]]"}]
    for choice, name in (({"type": "tool", "name": "maps"}, "maps"), ({"type": "any"}, "weather")):
        async with sdk.messages.stream(
            model="claude-haiku-4-5", max_tokens=1024, messages=messages, tools=tools,
            tool_choice=choice,  # type: ignore[arg-type]
        ) as stream:  # fmt: skip
            message = await stream.get_final_message()
        [tool] = message.content
        assert tool.type == "tool_use" and tool.name == name and message.stop_reason == "tool_use"
    none = await sdk.messages.create(
        model="claude-haiku-4-5", max_tokens=1024, messages=messages, tools=tools,
        tool_choice={"type": "none"},
    )  # fmt: skip
    assert [b.type for b in none.content] == ["text"] and none.stop_reason == "end_turn"
    with pytest.raises(anthropic.BadRequestError) as info:
        await sdk.messages.create(
            model="claude-haiku-4-5", max_tokens=2048, messages=messages, tools=tools,
            tool_choice={"type": "any"}, thinking={"type": "enabled", "budget_tokens": 1024},
        )  # fmt: skip
    assert "tool_choice forces tool use" in str(info.value.message)
