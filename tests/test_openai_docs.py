"""docs/sdk.md's OpenAI examples, run as a reader would run them, against a real
gateway (the address in the text swapped for the test's): the Python example with
the `openai` SDK, and the curl one. What they print is checked against the
simulator's own answers."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator

import pytest

from tests.support import Stack, run_stack
from tests.support.direct import direct
from tests.support.docs import code_block, run, section


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with run_stack(tmp_path_factory.mktemp("openai_docs")) as stack:
        yield stack


async def test_the_python_example_streams_calls_a_tool_and_answers_its_result(
    gateway: Stack,
) -> None:
    out = run(
        [sys.executable, "-c"], code_block(section("OpenAI's SDK (`openai`)"), "python"), gateway
    )
    streamed, counts, call, answer = out.splitlines()
    question = [{"role": "user", "content": "Why is the sky blue?"}]
    expected = await direct(gateway, question, system="Answer in one sentence.")
    assert streamed == expected.text
    assert counts == f"[{expected.input_tokens} in, {expected.output_tokens} out]"
    ask = [{"role": "user", "content": "Weather in Paris? [[sim:tool=get_weather]]"}]
    tool = {"name": "get_weather", "description": "The weather in a city"}
    tool["input_schema"] = {"type": "object", "properties": {"city": {"type": "string"}}}
    asked = await direct(gateway, ask, tools=[tool])
    assert asked.tool is not None
    finish, name, arguments = call.split(" ", 2)
    assert (finish, name, json.loads(arguments)) == (
        "tool_calls",
        "get_weather",
        asked.tool["input"],
    )
    turns = [
        *ask,
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": asked.text},
                {"type": "tool_use", **asked.tool},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": asked.tool["id"], "content": "18 °C"}
            ],
        },
    ]
    assert answer == (await direct(gateway, turns, tools=[tool])).text


async def test_the_curl_example_prints_chunks_then_done(gateway: Stack) -> None:
    out = run(["bash", "-c"], code_block(section("OpenAI's SDK (`openai`)"), "sh"), gateway)
    frames = out.split("\n\n")
    assert frames[-2:] == ["data: [DONE]", ""]
    chunks = [json.loads(f.removeprefix("data: ")) for f in frames[:-2]]
    expected = await direct(gateway, [{"role": "user", "content": "Say hello [[sim:tokens=3]]"}])
    assert [c["choices"][0]["delta"].get("content") for c in chunks] == ["", *expected.deltas, None]
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
