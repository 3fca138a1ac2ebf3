"""The `Provider` contract (providers/base.py), run over every implementation.

Each test runs on the in-process simulator and on the `anthropic` provider reading
`tokenrelay simulate` over a socket, by each of its two paths (its own client and the
official SDK). Expected answers come from a fresh simulator
engine planning the same request: the engine is the specification of the text, and
both providers must stream exactly what it planned, and break exactly where it said.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass

import pytest

from tokenrelay.errors import UpstreamError, UpstreamIncomplete
from tokenrelay.events import Thinking, ThinkingSignature, ToolInput, ToolUseStart
from tokenrelay.providers.base import (
    Delta,
    GenerationRequest,
    MessageEnd,
    MessageStart,
    Provider,
    ToolUse,
    Usage,
)
from tokenrelay.providers.simulator import request_body
from tokenrelay.simulator.engine import PREFILL_REJECTED, Plan, Simulator

MODEL = "claude-haiku-4-5"


def ask(
    prompt: str, *, model: str = MODEL, max_tokens: int = 1024, prefill: str | None = None
) -> GenerationRequest:
    messages = [{"role": "user", "content": prompt}]
    if prefill is not None:
        messages.append({"role": "assistant", "content": prefill})
    return GenerationRequest(model, messages, max_tokens)


def planned(request: GenerationRequest) -> Plan:
    """What the simulator means to answer, from an engine that has counted no attempt."""
    return Simulator().plan(request_body(request))


def unique(prompt: str) -> str:
    """A prompt no other test asks: the simulator process counts attempts per prompt."""
    return f"{prompt} ({uuid.uuid4().hex[:8]})"


@dataclass
class Run:
    deltas: list[Delta]
    error: UpstreamError | None

    @property
    def texts(self) -> list[str]:
        return [d for d in self.deltas if isinstance(d, str)]

    @property
    def failure(self) -> tuple[str, int, str, bool, float | None, str | None]:
        """Everything the producer reads off the error, its message apart (transport
        failures name their cause in words of their own)."""
        assert self.error is not None, "the stream did not fail"
        exc = self.error
        cut = exc.cut_block if isinstance(exc, UpstreamIncomplete) else None
        return (type(exc).__name__, exc.status, exc.error_type, exc.retryable, exc.retry_after, cut)


async def run(provider: Provider, request: GenerationRequest) -> Run:
    deltas: list[Delta] = []
    try:
        async for delta in provider.stream(request):
            deltas.append(delta)
    except UpstreamError as exc:
        return Run(deltas, exc)
    return Run(deltas, None)


def start_of(request: GenerationRequest) -> MessageStart:
    plan = planned(request)
    return MessageStart(plan.model, Usage(input_tokens=plan.input_tokens))


# -- a clean answer ---------------------------------------------------------------------


async def test_plain_request_streams_start_then_the_planned_text_then_end_turn(
    provider: Provider,
) -> None:
    request = ask("Tell me a story")
    result = await run(provider, request)
    plan = planned(request)
    assert result.error is None
    assert len(plan.deltas) == 50  # the default length
    assert result.deltas == [
        MessageStart(MODEL, Usage(input_tokens=plan.input_tokens)),
        *plan.deltas,
        MessageEnd("end_turn", 50),
    ]
    assert plan.input_tokens == 3  # a quarter of the prompt's 15 characters


async def test_same_request_twice_streams_the_same_deltas(provider: Provider) -> None:
    request = ask("Once more, the same [[sim:tokens=20]]")
    first, second = await run(provider, request), await run(provider, request)
    assert first.error is None and second.error is None
    assert first.deltas == second.deltas
    assert len(first.texts) == 20


async def test_tokens_directive_gives_exactly_n_text_deltas(provider: Provider) -> None:
    request = ask("Short [[sim:tokens=7]]")
    result = await run(provider, request)
    assert result.error is None
    assert result.texts == planned(request).deltas
    assert len(result.texts) == 7
    assert result.deltas[-1] == MessageEnd("end_turn", 7)


async def test_directives_do_not_change_the_text(provider: Provider) -> None:
    plain = await run(provider, ask("Same words [[sim:tokens=9]]"))
    paced = await run(provider, ask("Same [[sim:tps=0]] words [[sim:tokens=9]] [[sim:ttft_ms=0]]"))
    assert paced.texts == plain.texts
    assert len(plain.texts) == 9


async def test_max_tokens_below_the_length_stops_at_max_tokens(provider: Provider) -> None:
    request = ask("Long [[sim:tokens=30]]", max_tokens=12)
    result = await run(provider, request)
    assert result.error is None
    assert result.texts == planned(ask("Long [[sim:tokens=30]]")).deltas[:12]
    assert result.deltas[-1] == MessageEnd("max_tokens", 12)


# -- HTTP errors before the stream ------------------------------------------------------


# 408, 409, 429 and every 5xx are retried, as the official SDK retries them.
@pytest.mark.parametrize(
    ("status", "error_type", "retry_after"),
    [
        (429, "rate_limit_error", 1),
        (500, "api_error", None),
        (529, "overloaded_error", 1),
        (408, "api_error", None),
        (409, "conflict_error", None),
        (501, "api_error", None),
        (503, "api_error", None),
        (504, "timeout_error", None),
    ],
)
async def test_status_directive_is_a_retryable_error_before_any_delta(
    provider: Provider, status: int, error_type: str, retry_after: int | None
) -> None:
    result = await run(provider, ask(f"Busy [[sim:status={status}]]"))
    assert result.deltas == []
    assert result.failure == ("UpstreamError", status, error_type, True, retry_after, None)
    assert result.error is not None and result.error.message == f"Simulated {error_type}"


async def test_status_400_is_an_invalid_request_that_is_not_retried(provider: Provider) -> None:
    result = await run(provider, ask("Bad [[sim:status=400]]"))
    assert result.deltas == []
    assert result.failure == ("UpstreamError", 400, "invalid_request_error", False, None, None)
    assert result.error is not None and result.error.message == "Simulated invalid_request_error"


async def test_unknown_model_is_a_404_not_found_that_is_not_retried(provider: Provider) -> None:
    result = await run(provider, ask("Hi", model="claude-nope"))
    assert result.deltas == []
    assert result.failure == ("UpstreamError", 404, "not_found_error", False, None, None)
    assert result.error is not None and result.error.message == "model: claude-nope"


async def test_prefill_with_trailing_whitespace_is_a_400(provider: Provider) -> None:
    result = await run(provider, ask("Hi", prefill="Sure "))
    assert result.deltas == []
    assert result.failure == ("UpstreamError", 400, "invalid_request_error", False, None, None)
    assert result.error is not None and result.error.message == (
        "messages: final assistant content cannot end with trailing whitespace"
    )


# -- failures after the stream started --------------------------------------------------

# (type, status, error_type, retryable, retry_after, cut_block) of a cut in text.
OVERLOADED_IN_TEXT = ("UpstreamIncomplete", 502, "overloaded_error", True, None, None)
CUT_IN_TEXT = ("UpstreamIncomplete", 502, "api_error", True, None, None)


async def test_error_after_sends_exactly_n_deltas_then_overloaded(provider: Provider) -> None:
    request = ask("Breaks [[sim:error_after=4]]")
    result = await run(provider, request)
    assert result.deltas == [start_of(request), *planned(request).deltas[:4]]
    assert result.failure == OVERLOADED_IN_TEXT
    assert result.error is not None and result.error.message == "Overloaded"


async def test_error_after_zero_fails_after_the_start_before_any_text(
    provider: Provider,
) -> None:
    request = ask("Breaks at once [[sim:error_after=0]]")
    result = await run(provider, request)
    assert result.deltas == [start_of(request)]
    assert result.failure == OVERLOADED_IN_TEXT


async def test_drop_after_sends_exactly_n_deltas_then_the_stream_is_incomplete(
    provider: Provider,
) -> None:
    request = ask("Cut [[sim:drop_after=3]]")
    result = await run(provider, request)
    assert result.deltas == [start_of(request), *planned(request).deltas[:3]]
    assert result.failure == CUT_IN_TEXT


async def test_stall_after_sends_exactly_n_deltas_then_the_stream_is_incomplete(
    provider: Provider,
) -> None:
    request = ask("Falls silent [[sim:stall_after=5]]")
    result = await run(provider, request)
    assert result.deltas == [start_of(request), *planned(request).deltas[:5]]
    assert result.failure == CUT_IN_TEXT
    assert result.error is not None and result.error.message == "upstream timed out (stalled)"


@pytest.mark.parametrize("fault", ["error_after", "drop_after", "stall_after"])
async def test_fault_after_the_last_delta_still_ends_without_message_end(
    provider: Provider, fault: str
) -> None:
    # All the text arrived, but message_stop did not: never a success.
    request = ask(f"Nearly [[sim:tokens=6]] [[sim:{fault}=6]]")
    result = await run(provider, request)
    assert result.deltas == [start_of(request), *planned(request).deltas]
    assert len(result.texts) == 6
    assert result.failure == (OVERLOADED_IN_TEXT if fault == "error_after" else CUT_IN_TEXT)


# -- fail_times -------------------------------------------------------------------------


async def test_fail_times_fails_the_first_k_calls_then_answers_the_plain_text(
    provider: Provider,
) -> None:
    words = unique("Flaky twice [[sim:tokens=11]]")
    request = ask(f"{words} [[sim:status=529]] [[sim:fail_times=2]]")
    for _ in range(2):
        refused = await run(provider, request)
        assert refused.deltas == []
        assert refused.failure == ("UpstreamError", 529, "overloaded_error", True, 1, None)
    answered = await run(provider, request)
    assert answered.error is None
    assert answered.texts == planned(ask(words)).deltas
    assert answered.deltas[-1] == MessageEnd("end_turn", 11)


async def test_fail_times_cuts_only_the_first_call_mid_stream(provider: Provider) -> None:
    words = unique("Flaky once [[sim:tokens=10]]")
    request = ask(f"{words} [[sim:error_after=3]] [[sim:fail_times=1]]")
    cut = await run(provider, request)
    assert cut.texts == planned(ask(words)).deltas[:3]
    assert cut.failure == OVERLOADED_IN_TEXT
    whole = await run(provider, request)
    assert whole.error is None
    assert whole.texts == planned(ask(words)).deltas
    assert whole.deltas[-1] == MessageEnd("end_turn", 10)


# -- prefill ----------------------------------------------------------------------------


# The SDK warns that Sonnet 4.5 is deprecated; it is here because it accepts a prefill.
@pytest.mark.filterwarnings("ignore:The model 'claude-sonnet-4-5' is deprecated")
@pytest.mark.parametrize("model", ["claude-haiku-4-5", "claude-sonnet-4-5"])
@pytest.mark.parametrize("cut", ["at_a_delta", "mid_word"])
async def test_prefill_continues_with_exactly_the_rest_of_the_answer(
    provider: Provider, model: str, cut: str
) -> None:
    prompt = "Continue me [[sim:tokens=20]]"
    full = await run(provider, ask(prompt, model=model))
    assert full.error is None
    text = "".join(full.texts)
    # Deltas start with their space, so six of them end in a word; three characters
    # more end two letters into the next word.
    boundary = len("".join(full.texts[:6]))
    prefix = text[: boundary if cut == "at_a_delta" else boundary + 3].rstrip()
    request = ask(prompt, model=model, prefill=prefix)
    rest = await run(provider, request)
    assert rest.error is None
    assert "".join(rest.texts) == text[len(prefix) :]
    assert rest.deltas[0] == start_of(request)
    assert rest.deltas[-1] == MessageEnd("end_turn", len(rest.texts))
    if cut == "at_a_delta":
        assert rest.texts == full.texts[6:]


async def test_prefill_on_a_model_that_rejects_it_is_a_400_naming_prefill(
    provider: Provider,
) -> None:
    result = await run(provider, ask("Hi", model="claude-sonnet-4-6", prefill="Sure"))
    assert result.deltas == []
    assert result.failure == ("UpstreamError", 400, "invalid_request_error", False, None, None)
    assert result.error is not None and result.error.message == PREFILL_REJECTED
    assert "prefill" in result.error.message


# -- tool use ---------------------------------------------------------------------------


def tool_deltas(plan: Plan) -> list[Delta]:
    """The tool_use block as a provider streams it: its start, each input fragment as
    generated, then the whole block with its parsed input."""
    assert plan.tool is not None
    tool = plan.tool
    return [
        ToolUseStart(tool.id, tool.name),
        *(ToolInput(f) for f in tool.json_fragments()),
        ToolUse(tool.id, tool.name, tool.input),
    ]


async def test_tool_directive_streams_text_then_the_tool_block_forming_then_tool_use(
    provider: Provider,
) -> None:
    request = ask("Weather in Paris? [[sim:tool=weather]]")
    result = await run(provider, request)
    plan = planned(request)
    assert plan.tool is not None and plan.tool.id.startswith("toolu_")
    fragments = plan.tool.json_fragments()
    assert len(fragments) >= 3  # cut inside the key and inside the string, as Claude does
    assert json.loads("".join(fragments)) == plan.tool.input
    assert result.error is None
    assert result.deltas == [
        start_of(request),
        *plan.deltas,
        *tool_deltas(plan),
        MessageEnd("tool_use", 5 + len(fragments)),  # five text deltas, then the input's
    ]
    assert len(result.texts) == 5


TOOL_FRAGMENTS = len(planned(ask("Weather? [[sim:tool=weather]]")).tool.json_fragments())  # type: ignore[union-attr]


# A fault after 5 deltas lands just after the tool block opened, after 6 inside its
# input, after 5 + all its fragments past the last one: each time inside the block.
@pytest.mark.parametrize("after", [5, 6, 5 + TOOL_FRAGMENTS])
@pytest.mark.parametrize(
    ("fault", "error_type"),
    [
        ("error_after", "overloaded_error"),
        ("drop_after", "api_error"),
        ("stall_after", "api_error"),
    ],
)
async def test_a_cut_inside_the_tool_block_is_reported_as_a_cut_tool_use(
    provider: Provider, fault: str, error_type: str, after: int
) -> None:
    request = ask(f"Weather? [[sim:tool=weather]] [[sim:{fault}={after}]]")
    result = await run(provider, request)
    plan = planned(request)
    # Everything up to the cut, the block's opening and its fragments so far included.
    assert result.deltas == [start_of(request), *plan.deltas, *tool_deltas(plan)[: after - 4]]
    assert len(result.texts) == 5
    assert result.failure == ("UpstreamIncomplete", 502, error_type, True, None, "tool_use")


async def test_a_cut_in_the_text_before_a_tool_block_is_a_cut_in_text(
    provider: Provider,
) -> None:
    request = ask("Weather? [[sim:tool=weather]] [[sim:drop_after=3]]")
    result = await run(provider, request)
    assert result.deltas == [start_of(request), *planned(request).deltas[:3]]
    assert result.failure == CUT_IN_TEXT


# -- thinking ---------------------------------------------------------------------------


def think(prompt: str, *, budget: int = 2048, max_tokens: int = 4096) -> GenerationRequest:
    request = ask(prompt, max_tokens=max_tokens)
    request.thinking = {"type": "enabled", "budget_tokens": budget}
    return request


async def test_thinking_streams_its_deltas_and_signature_before_the_text(
    provider: Provider,
) -> None:
    request = think("Why is the sky blue?")
    result = await run(provider, request)
    plan = planned(request)
    assert plan.thinking is not None and len(plan.thinking) == 8
    assert plan.deltas == planned(ask("Why is the sky blue?")).deltas  # the same text
    assert result.error is None
    assert result.deltas == [
        start_of(request),
        *(Thinking(t) for t in plan.thinking),
        ThinkingSignature(plan.signature),
        *plan.deltas,
        MessageEnd("end_turn", 8 + 50),  # thinking tokens are output tokens
    ]


async def test_a_cut_inside_the_thinking_block_is_reported_as_a_cut_thinking_block(
    provider: Provider,
) -> None:
    request = think("Think and break [[sim:drop_after=3]]")
    result = await run(provider, request)
    plan = planned(request)
    assert plan.thinking is not None
    assert result.deltas == [start_of(request), *(Thinking(t) for t in plan.thinking[:3])]
    assert result.failure == ("UpstreamIncomplete", 502, "api_error", True, None, "thinking")


# -- both at once -----------------------------------------------------------------------


def forced(prompt: str) -> GenerationRequest:
    """`prompt`, with tool_choice making the model call the one tool at once."""
    request = ask(prompt)
    request.tools = [{"name": "maps", "input_schema": {"type": "object"}}]
    request.tool_choice = {"type": "tool", "name": "maps"}
    return request


SAME_EITHER_WAY = [
    ask("Plain"),
    ask("A system-free question with more words in it [[sim:tokens=17]]"),
    ask("Capped [[sim:tokens=40]]", max_tokens=9),
    ask("Tool [[sim:tool=lookup]] [[sim:tokens=12]]"),
    ask("Error [[sim:error_after=2]]"),
    ask("Drop [[sim:drop_after=7]] [[sim:tool=lookup]]"),
    think("Think it over [[sim:tokens=6]]"),
    think("Think, then a tool [[sim:tool=lookup]] [[sim:error_after=10]]"),
    forced("Where is it?"),
    forced("Where is it, cut? [[sim:drop_after=2]]"),
    ask("Refused [[sim:status=529]]"),
    ask("Hi", model="claude-sonnet-4-6", prefill="Sure"),
]


@pytest.mark.parametrize("request_", SAME_EITHER_WAY, ids=lambda r: r.messages[0]["content"])
async def test_both_implementations_stream_identical_deltas_usage_and_failures(
    both_providers: dict[str, Provider], request_: GenerationRequest
) -> None:
    runs = {name: await run(p, request_) for name, p in both_providers.items()}
    assert runs["simulator"].deltas == runs["anthropic"].deltas == runs["anthropic-sdk"].deltas
    failures = {name: r.failure if r.error else None for name, r in runs.items()}
    assert failures["simulator"] == failures["anthropic"] == failures["anthropic-sdk"]
