"""docs/sdk.md's examples for Claude's SDKs, run as a reader would run them against a
real gateway (the address in the text swapped for the test's): the Python one with
the `anthropic` SDK, the TypeScript one under node with `@anthropic-ai/sdk`, and the
curl one. What they print is checked against the simulator's own answers."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import pytest

from tests.support import ROOT, Stack, run_stack
from tests.support.claude_wire import body, post, without_ids
from tests.support.docs import DOCS_URL, code_block, run, section

MODEL = "claude-haiku-4-5"
WEATHER = {
    "name": "get_weather",
    "description": "The weather in a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with run_stack(tmp_path_factory.mktemp("messages-docs")) as running:
        yield running


def direct(stack: Stack, **params: Any) -> anthropic.types.Message:
    with anthropic.Anthropic(base_url=stack.simulator, api_key="k", max_retries=0) as sim:
        return sim.messages.create(model=MODEL, max_tokens=1024, **params)


def sky(stack: Stack) -> anthropic.types.Message:
    question = [{"role": "user", "content": "Why is the sky blue?"}]
    return direct(stack, messages=question, system="Answer in one sentence.")


def test_the_python_example_streams_calls_a_tool_answers_its_result_and_counts(
    stack: Stack,
) -> None:
    code = code_block(section("Claude's Python SDK (`anthropic`)"), "python")
    streamed, counts, call, answer, counted = run([sys.executable, "-c"], code, stack).splitlines()
    expected = sky(stack)
    assert streamed == expected.content[0].text  # type: ignore[union-attr]
    assert counts == f"[{expected.usage.input_tokens} in, {expected.usage.output_tokens} out]"
    question = [{"role": "user", "content": "Weather in Paris? [[sim:tool=get_weather]]"}]
    asked = direct(stack, messages=question, tools=[WEATHER])
    tool = asked.content[1]
    assert tool.type == "tool_use"
    stop, name, arguments = call.split(" ", 2)
    assert (stop, name, json.loads(arguments)) == ("tool_use", "get_weather", tool.input)
    result = {"type": "tool_result", "tool_use_id": tool.id, "content": "18 °C"}
    turns = [*question, {"role": "assistant", "content": asked.content}]
    turns.append({"role": "user", "content": [result]})
    assert answer == direct(stack, messages=turns, tools=[WEATHER]).content[0].text  # type: ignore[union-attr, arg-type]
    with anthropic.Anthropic(base_url=stack.simulator, api_key="k") as sim:
        count = sim.messages.count_tokens(model=MODEL, messages=question)  # type: ignore[arg-type]
    assert counted == str(count.input_tokens)


def test_the_typescript_example_streams_under_node(stack: Stack, tmp_path: Path) -> None:
    code = code_block(section("Claude's TypeScript SDK (`@anthropic-ai/sdk`)"), "js")
    (tmp_path / "node_modules").symlink_to(ROOT / "tests" / "node" / "node_modules")
    script = tmp_path / "ask.mjs"
    assert DOCS_URL in code
    script.write_text(code.replace(DOCS_URL, stack.gateway))
    done = subprocess.run(
        ["node", str(script)], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    expected = direct(stack, messages=[{"role": "user", "content": "Why is the sky blue?"}])
    assert done.stdout == (
        f"{expected.content[0].text}\n"  # type: ignore[union-attr]
        f"[{expected.usage.input_tokens} in, {expected.usage.output_tokens} out]\n"
    )


def test_the_curl_example_prints_claudes_stream(stack: Stack) -> None:
    out = run(["bash", "-c"], code_block(section("curl, in Claude's format"), "sh"), stack)
    direct_stream = post(stack.simulator, body("Say hello [[sim:tokens=3]]"))
    assert without_ids(out.encode()) == without_ids(direct_stream.content)
    assert out.count("\nid: ") == 4  # three tokens and the end, each resumable after
