"""The simulator: deterministic text, directives, prefill; and its HTTP server, read by the
official `anthropic` SDK over a real socket. That the in-process provider streams what the
server sends is the provider contract's business (tests/contracts)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import anthropic
import httpx
import httpx2
import pytest

from tests.support import free_port, spawn
from tokenrelay.simulator.engine import PREFILL_REJECTED, Fault, SimError, Simulator


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
