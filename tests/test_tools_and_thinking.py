"""Tool use and thinking, live on /api/*: a tool call as it forms, thinking before the
text, and conversations that hand tool results (and thinking) back, over real sockets
(the gateway reads `tokenrelay simulate` through the official SDK). The expected
blocks are the simulator's own, read straight from it with the official SDK."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from tests.support import Event, Stack, assert_error, resume, start, unique
from tests.support.answers import direct_message

WEATHER = {
    "name": "weather",
    "description": "The weather now in a city",
    "input_schema": {"type": "object", "properties": {"query": {"type": "string"}}},
}
THINK = {"type": "enabled", "budget_tokens": 2048}


def kind(event: Event) -> str:
    """What a tokens event is, by the key that says so."""
    data = event.data
    if "stream_id" in data:
        return "start"
    for key in ("token", "tool_use_start", "tool_input", "tool_use", "thinking", "done"):
        if key in data:
            return key
    return "thinking_signature" if "thinking_signature" in data else "other"


def of(events: list[Event], key: str) -> list[Any]:
    return [e.data[key] for e in events if key in e.data]


async def test_a_tool_call_streams_its_start_then_its_input_as_generated_then_the_block(
    client: httpx.AsyncClient, stack: Stack
) -> None:
    prompt = unique("What is the weather in Paris? [[sim:tool=weather]]")
    read = await start(client, {"prompt": prompt, "tools": [WEATHER]})
    message = await direct_message(
        stack.simulator, [{"role": "user", "content": prompt}], tools=[WEATHER]
    )
    [text, tool] = message.content
    assert text.type == "text" and tool.type == "tool_use"

    fragments = of(read.events, "tool_input")
    assert len(fragments) >= 2
    assert [kind(e) for e in read.events] == [
        "start", *["token"] * 5, "tool_use_start", *["tool_input"] * len(fragments),
        "tool_use", "done",
    ]  # fmt: skip
    assert read.text == text.text
    assert of(read.events, "tool_use_start") == [{"id": tool.id, "name": "weather"}]
    # The fragments, joined, are exactly the input the closing block carries parsed.
    assert json.loads("".join(fragments)) == tool.input
    assert of(read.events, "tool_use") == [{"id": tool.id, "name": "weather", "input": tool.input}]
    done = read.events[-1].data
    assert done["stop_reason"] == "tool_use"
    # Five text deltas, then one token per input fragment, as Claude counts them.
    assert done["usage"]["output_tokens"] == 5 + len(fragments) == message.usage.output_tokens


async def test_thinking_streams_its_deltas_and_signature_before_the_text(
    client: httpx.AsyncClient, stack: Stack
) -> None:
    prompt = unique("Why is the sea salty?")
    body = {"prompt": prompt, "max_tokens": 4096, "thinking": THINK}
    read = await start(client, body)
    message = await direct_message(
        stack.simulator, [{"role": "user", "content": prompt}], max_tokens=4096, thinking=THINK
    )
    [thinking, text] = message.content
    assert thinking.type == "thinking" and text.type == "text"

    assert [kind(e) for e in read.events] == [
        "start", *["thinking"] * 8, "thinking_signature", *["token"] * 50, "done",
    ]  # fmt: skip
    assert "".join(of(read.events, "thinking")) == thinking.thinking
    assert of(read.events, "thinking_signature") == [thinking.signature]
    assert read.text == text.text
    done = read.events[-1].data
    assert done["stop_reason"] == "end_turn"
    # Thinking tokens are output tokens.
    assert done["usage"]["output_tokens"] == 8 + 50 == message.usage.output_tokens


async def test_the_thinking_directive_thinks_without_the_field(client: httpx.AsyncClient) -> None:
    words = unique("Think aloud")
    read = await start(client, {"prompt": f"{words} [[sim:thinking=3]] [[sim:tokens=4]]"})
    assert [kind(e) for e in read.events] == [
        "start", *["thinking"] * 3, "thinking_signature", *["token"] * 4, "done",
    ]  # fmt: skip


async def test_a_tool_result_handed_back_gets_a_text_answer(
    client: httpx.AsyncClient, stack: Stack
) -> None:
    prompt = unique("Weather in Oslo? [[sim:tool=weather]]")
    first = await start(client, {"prompt": prompt, "tools": [WEATHER]})
    [tool_use] = of(first.events, "tool_use")
    turns: list[dict[str, Any]] = [
        {"role": "user", "content": prompt},
        {
            "role": "assistant",
            "content": [{"type": "text", "text": first.text}, {"type": "tool_use", **tool_use}],
        },
    ]
    answers = {}
    for result in ("4°C and snowing", "30°C and sunny"):
        handed_back = {"type": "tool_result", "tool_use_id": tool_use["id"], "content": result}
        messages = [*turns, {"role": "user", "content": [handed_back]}]
        read = await start(client, {"messages": messages, "tools": [WEATHER]})
        message = await direct_message(stack.simulator, messages, tools=[WEATHER])
        assert [kind(e) for e in read.events] == ["start", *["token"] * 50, "done"]
        assert read.events[-1].data["stop_reason"] == "end_turn"
        assert [b.type for b in message.content] == ["text"]
        assert read.text == message.content[0].text  # type: ignore[union-attr]
        answers[result] = read.text
    # The answer follows from the result handed back.
    assert len(set(answers.values())) == 2


async def test_thinking_and_a_tool_call_handed_back_with_the_signature_work(
    client: httpx.AsyncClient, stack: Stack
) -> None:
    prompt = unique("Plan a trip, check the weather [[sim:tool=weather]]")
    body = {"prompt": prompt, "tools": [WEATHER], "thinking": THINK, "max_tokens": 4096}
    first = await start(client, body)
    assert first.events[-1].data["stop_reason"] == "tool_use"
    [tool_use] = of(first.events, "tool_use")
    assistant = [
        {
            "type": "thinking",
            "thinking": "".join(of(first.events, "thinking")),
            "signature": of(first.events, "thinking_signature")[0],
        },
        {"type": "text", "text": first.text},
        {"type": "tool_use", **tool_use},
    ]
    messages = [
        {"role": "user", "content": prompt},
        {"role": "assistant", "content": assistant},
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": tool_use["id"], "content": "fine"}],
        },
    ]
    second = await start(
        client, {"messages": messages, "tools": [WEATHER], "thinking": THINK, "max_tokens": 4096}
    )
    message = await direct_message(
        stack.simulator, messages, tools=[WEATHER], thinking=THINK, max_tokens=4096
    )
    [thinking, text] = message.content
    assert [kind(e) for e in second.events] == [
        "start", *["thinking"] * 8, "thinking_signature", *["token"] * 50, "done",
    ]  # fmt: skip
    assert "".join(of(second.events, "thinking")) == thinking.thinking  # type: ignore[union-attr]
    assert second.text == text.text  # type: ignore[union-attr]


async def test_tool_choice_reaches_claude_a_forced_tool_comes_at_once_none_calls_none(
    client: httpx.AsyncClient, stack: Stack
) -> None:
    maps = {**WEATHER, "name": "maps"}
    words = unique("Where is Oslo?")
    choice = {"type": "tool", "name": "maps"}
    read = await start(client, {"prompt": words, "tools": [WEATHER, maps], "tool_choice": choice})
    message = await direct_message(
        stack.simulator, [{"role": "user", "content": words}], tools=[WEATHER, maps],
        tool_choice=choice,
    )  # fmt: skip
    [tool] = message.content
    assert tool.type == "tool_use" and tool.name == "maps"
    fragments = of(read.events, "tool_input")
    # Made to call it, Claude calls it straight away, without a word before.
    assert [kind(e) for e in read.events] == [
        "start", "tool_use_start", *["tool_input"] * len(fragments), "tool_use", "done",
    ]  # fmt: skip
    assert of(read.events, "tool_use") == [{"id": tool.id, "name": "maps", "input": tool.input}]
    assert read.events[-1].data["stop_reason"] == "tool_use"

    none = {"type": "none"}
    body = {"prompt": f"{words} [[sim:tool=weather]]", "tools": [WEATHER], "tool_choice": none}
    read = await start(client, body)
    assert [kind(e) for e in read.events] == ["start", *["token"] * 50, "done"]
    assert read.events[-1].data["stop_reason"] == "end_turn"


async def test_resume_inside_a_tool_call_gives_exactly_the_rest_of_it(
    client: httpx.AsyncClient,
) -> None:
    prompt = unique("Look it up [[sim:tool=search]]")
    whole = await start(client, {"prompt": prompt})
    # Hang up after the start, the text, the block's opening and one input fragment.
    head = await start(client, {"prompt": prompt}, stop_after=8)
    assert kind(head.events[-1]) == "tool_input"
    tail = await resume(client, head.last_id)
    events = head.events + tail.events
    assert [e.seq for e in events] == list(range(len(events)))
    assert [e.data for e in events[1:]] == [e.data for e in whole.events[1:]]


def user(*blocks: dict[str, Any]) -> dict[str, Any]:
    return {"role": "user", "content": list(blocks)}


def assistant(*blocks: dict[str, Any]) -> dict[str, Any]:
    return {"role": "assistant", "content": list(blocks)}


TEXT = {"type": "text", "text": "Weather?"}
TOOL_USE = {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {"query": "Oslo"}}
RESULT = {"type": "tool_result", "tool_use_id": "toolu_1", "content": "cold"}

BAD: list[tuple[str, dict[str, Any], str]] = [
    ("empty block list", {"messages": [{"role": "user", "content": []}]},
     "messages.0.content: a list of blocks must not be empty"),
    ("block not an object", {"messages": [{"role": "user", "content": ["hi"]}]},
     "messages.0.content.0: a content block must be an object"),
    ("block without a type", {"messages": [user({"text": "hi"})]},
     "messages.0.content.0.type: a content block needs a string type"),
    ("unknown block type", {"messages": [user({"type": "video"})]},
     "messages.0.content.0.type: unknown block type 'video'; a user turn holds document, "
     "image, search_result, text, tool_result"),
    ("text without text", {"messages": [user({"type": "text"})]},
     "messages.0.content.0.text: a text block needs a string text"),
    ("tool_use in a user turn", {"messages": [user(TOOL_USE)]},
     "messages.0.content.0: a tool_use block belongs in an assistant turn, not user"),
    ("tool_result in an assistant turn", {"messages": [user(TEXT), assistant(RESULT)]},
     "messages.1.content.0: a tool_result block belongs in an user turn, not assistant"),
    ("tool_use without an id",
     {"messages": [user(TEXT), assistant({**TOOL_USE, "id": ""}), user(RESULT)]},
     "messages.1.content.0: a tool_use block needs a string id and name"),
    ("tool_use input not an object",
     {"messages": [user(TEXT), assistant({**TOOL_USE, "input": "Oslo"}), user(RESULT)]},
     "messages.1.content.0.input: a tool_use block's input must be an object"),
    ("tool_use left unanswered",
     {"messages": [user(TEXT), assistant(TOOL_USE), user(TEXT)]},
     "messages.2: tool_use 'toolu_1' of the assistant turn before has no tool_result: "
     "each tool_use needs a tool_result in the next turn"),
    ("tool_result for no tool_use",
     {"messages": [user(TEXT), assistant(TEXT), user(RESULT)]},
     "messages.2.content.0: tool_result for 'toolu_1', which no tool_use of the previous "
     "(assistant) turn has"),
    ("tool_result without an id",
     {"messages": [user(TEXT), assistant(TOOL_USE), user({"type": "tool_result"})]},
     "messages.2.content.0.tool_use_id: a tool_result block needs a tool_use_id"),
    ("tool_result content a number",
     {"messages": [user(TEXT), assistant(TOOL_USE), user({**RESULT, "content": 3})]},
     "messages.2.content.0.content: a tool_result's content is a string or blocks"),
    ("tool_result holding a tool_result",
     {"messages": [user(TEXT), assistant(TOOL_USE), user({**RESULT, "content": [RESULT]})]},
     "messages.2.content.0.content.0: a tool_result holds text, image, document or "
     "search_result blocks"),
    ("thinking without its signature",
     {"messages": [user(TEXT), assistant({"type": "thinking", "thinking": "hmm"})]},
     "messages.1.content.0.signature: a thinking block sent back needs the signature it came "
     "with"),
    ("tool without a schema", {"prompt": "hi", "tools": [{"name": "weather"}]},
     "tools.0.input_schema: a tool needs a JSON schema object"),
    ("tool with a bad name", {"prompt": "hi", "tools": [{**WEATHER, "name": "the weather"}]},
     "tools.0.name: a tool needs a name of 1 to 128 letters, digits, _ or -"),
    ("two tools of one name", {"prompt": "hi", "tools": [WEATHER, WEATHER]},
     "tools.1.name: tool names must be unique ('weather' twice)"),
    ("unknown tool_choice", {"prompt": "hi", "tools": [WEATHER], "tool_choice": {"type": "all"}},
     "tool_choice.type: one of auto, any, tool, none"),
    ("tool_choice naming no tool",
     {"prompt": "hi", "tools": [WEATHER], "tool_choice": {"type": "tool", "name": "maps"}},
     "tool_choice.name: the name of one of the tools"),
    ("tool_choice any without tools", {"prompt": "hi", "tool_choice": {"type": "any"}},
     "tool_choice: any needs tools to choose from"),
    ("unknown thinking type", {"prompt": "hi", "thinking": {"type": "deep"}},
     "thinking.type: one of enabled, disabled, adaptive"),
    ("thinking without a budget", {"prompt": "hi", "thinking": {"type": "enabled"}},
     "thinking.budget_tokens: an integer is required with enabled"),
    ("thinking budget too small",
     {"prompt": "hi", "max_tokens": 4096, "thinking": {"type": "enabled", "budget_tokens": 100}},
     "thinking.budget_tokens: at least 1024"),
    ("thinking budget not below max_tokens", {"prompt": "hi", "thinking": THINK},
     "max_tokens (1024) must be greater than thinking.budget_tokens (2048)"),
    ("temperature with thinking",
     {"prompt": "hi", "max_tokens": 4096, "thinking": THINK, "temperature": 0.5},
     "temperature may only be 1 (or unset) when thinking is enabled"),
    ("thinking with a forced tool",
     {"prompt": "hi", "max_tokens": 4096, "thinking": THINK, "tools": [WEATHER],
      "tool_choice": {"type": "any"}},
     "thinking cannot be on when tool_choice forces a tool (any, tool)"),
    ("thinking not an object", {"prompt": "hi", "thinking": "on"},
     "Invalid thinking: Input should be an object"),
]  # fmt: skip


@pytest.mark.parametrize(("body", "message"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
async def test_a_malformed_block_tool_or_thinking_config_is_a_400_naming_it(
    client: httpx.AsyncClient, body: dict[str, Any], message: str
) -> None:
    response = await client.post("/api/stream-response", json=body)
    assert assert_error(response, 400, "invalid_request_error") == message
