"""The stream manager's contract (DESIGN §4), in-process, on every provider and store.

Each test runs four times: the in-process simulator and the `anthropic` provider
reading `tokenrelay simulate`, each on the memory store and on Redis; every one must
see the same log. The expected text comes from a fresh simulator engine planning the
same prompt without its fault directives: directives are stripped before the text is
derived, so a faulty prompt must end up with exactly that text.

Attempts are counted through the simulator's own counter, the same way for both
providers: with `[[sim:fail_times=K]]` the K+1-th attempt answers, so an answer (or
its absence) tells how many attempts the producer made, and a direct call to the
provider afterwards tells how many it had used up.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass

import pytest

from tests.support import unique
from tokenrelay.errors import IdempotencyConflict, StreamNotFound, UpstreamError
from tokenrelay.events import (
    Done,
    Event,
    Failed,
    Reset,
    Start,
    Text,
    Thinking,
    ThinkingSignature,
    ToolInput,
    ToolUse,
    ToolUseStart,
)
from tokenrelay.pricing import DEFAULT_MODELS, ModelTable
from tokenrelay.providers.base import GenerationRequest, MessageEnd, Provider, Usage
from tokenrelay.providers.simulator import request_body
from tokenrelay.simulator.engine import Plan, SimError, Simulator, ToolBlock, signature_of
from tokenrelay.streams.log import Entry
from tokenrelay.streams.manager import StreamManager
from tokenrelay.streams.producer import RetryPolicy

MODEL = "claude-haiku-4-5"  # accepts an assistant prefill
NO_PREFILL_MODEL = "claude-sonnet-4-6"  # rejects one
OWNER = "alice"
REQUEST_ID = "req_1"
READ_TIMEOUT = 30.0
FAIL_TIMES_CAP = 10

# `make_manager` (conftest.py): `await make_manager(models=…, retry=…)`.
MakeManager = Callable[..., Awaitable[StreamManager]]


def ask(prompt: str, model: str = MODEL) -> GenerationRequest:
    return GenerationRequest(
        model=model, messages=[{"role": "user", "content": prompt}], max_tokens=1000
    )


def planned(prompt: str, model: str = MODEL) -> Plan:
    """The simulator's answer to `prompt`, from an engine that has counted no attempt."""
    return Simulator().plan(request_body(ask(prompt, model)))


@dataclass(frozen=True)
class Expected:
    deltas: list[str]  # the answer to the words, without the fault directives
    input_tokens: int  # what one attempt at the prompt as asked (directives too) counts
    tool: ToolBlock | None

    @property
    def text(self) -> str:
        return "".join(self.deltas)


def expect(words: str, faults: str = "", model: str = MODEL) -> tuple[str, Expected]:
    """The prompt `words` plus `faults`, and what the stream of it must show."""
    prompt = f"{words} {faults}" if faults else words
    clean = planned(words, model)
    simulator = Simulator()
    for _ in range(FAIL_TIMES_CAP):
        # An HTTP status directive answers only after its `fail_times` attempts.
        with contextlib.suppress(SimError):
            asked = simulator.plan(request_body(ask(prompt, model)))
            return prompt, Expected(clean.deltas, asked.input_tokens, clean.tool)
    raise AssertionError(f"the simulator never answers {prompt!r}")


def cost(model: str, input_tokens: int, output_tokens: int) -> float:
    return ModelTable().cost_usd(model, Usage(input_tokens, output_tokens))


async def start(
    manager: StreamManager,
    prompt: str,
    model: str = MODEL,
    *,
    owner: str = OWNER,
    idempotency_key: str | None = None,
    fingerprint: str = "fp",
) -> str:
    return await manager.start(
        ask(prompt, model),
        owner=owner,
        request_id=REQUEST_ID,
        body_fingerprint=fingerprint,
        idempotency_key=idempotency_key,
    )


async def read(manager: StreamManager, stream_id: str, after: int = -1) -> list[Entry]:
    """Every entry after `after`, until the terminal one."""
    entries: list[Entry] = []
    async with asyncio.timeout(READ_TIMEOUT):
        async for batch in manager.follow(stream_id, after):
            entries.extend(batch)
    return entries


@dataclass
class Log:
    """A whole stream log, checked for its shape on the way in: seqs 0..n-1, `Start`
    first, exactly one terminal entry and it is the last."""

    entries: list[Entry]

    def __post_init__(self) -> None:
        assert [e.seq for e in self.entries] == list(range(len(self.entries)))
        assert type(self.events[0]) is Start
        terminals = [type(e) in (Done, Failed) for e in self.events]
        assert terminals.count(True) == 1 and terminals[-1], self.events

    @property
    def events(self) -> list[Event]:
        return [e.event for e in self.entries]

    @property
    def start(self) -> Event:
        return self.events[0]

    @property
    def end(self) -> Event:
        return self.events[-1]

    @property
    def texts(self) -> list[str]:
        return [e for e in self.events if type(e) is Text]

    @property
    def text(self) -> str:
        return "".join(self.texts)

    @property
    def resets(self) -> int:
        return sum(type(e) is Reset for e in self.events)

    @property
    def text_after_reset(self) -> str:
        last = max(i for i, e in enumerate(self.events) if type(e) is Reset)
        return "".join(e for e in self.events[last:] if type(e) is Text)


async def run(manager: StreamManager, prompt: str, model: str = MODEL) -> tuple[str, Log]:
    stream_id = await start(manager, prompt, model)
    return stream_id, Log(await read(manager, stream_id))


async def answers_directly(provider: Provider, prompt: str) -> bool:
    """Whether one more attempt at `prompt` now gets a whole answer."""
    ended = False
    try:
        async for delta in provider.stream(ask(prompt)):
            ended = type(delta) is MessageEnd
    except UpstreamError:
        return False
    return ended


# -- a clean answer ---------------------------------------------------------------------


async def test_clean_answer_is_start_then_the_planned_text_then_done_with_usage_and_cost(
    stream_manager: StreamManager,
) -> None:
    prompt, want = expect("Tell me a story")
    stream_id, log = await run(stream_manager, prompt)
    assert log.start == Start(stream_id, REQUEST_ID, MODEL)
    assert log.texts == want.deltas
    assert len(log.entries) == 1 + 50 + 1
    usage = {"input_tokens": want.input_tokens, "output_tokens": 50}
    assert log.end == Done("end_turn", usage, cost(MODEL, want.input_tokens, 50), model=MODEL)


async def test_clean_tool_answer_ends_with_the_tool_use_block_and_stop_reason_tool_use(
    stream_manager: StreamManager,
) -> None:
    prompt, want = expect("Weather in Paris? [[sim:tool=weather]]")
    assert want.tool is not None
    tool = want.tool
    _, log = await run(stream_manager, prompt)
    assert log.texts == want.deltas and len(log.texts) == 5
    fragments = tool.json_fragments()
    usage = {"input_tokens": want.input_tokens, "output_tokens": 5 + len(fragments)}
    # The block as it forms (its opening, its input as generated), then whole.
    assert log.events[1 + 5 :] == [
        ToolUseStart(tool.id, "weather"),
        *(ToolInput(f) for f in fragments),
        ToolUse(tool.id, "weather", tool.input),
        Done("tool_use", usage, cost(MODEL, want.input_tokens, 5 + len(fragments)), model=MODEL),
    ]
    assert len(log.entries) == 1 + 5 + 1 + len(fragments) + 2


# -- failures before the first token --------------------------------------------------


async def test_overload_before_the_first_token_is_retried_into_one_seamless_answer(
    stream_manager: StreamManager,
) -> None:
    prompt, want = expect(unique("Busy twice"), "[[sim:status=529]] [[sim:fail_times=2]]")
    began = time.monotonic()
    _, log = await run(stream_manager, prompt)
    # The simulator's 529 says `retry-after: 1`, and the producer waits that long.
    assert time.monotonic() - began >= 2.0
    assert log.resets == 0
    assert log.texts == want.deltas
    # The refused attempts never started, so they cost nothing.
    usage = {"input_tokens": want.input_tokens, "output_tokens": 50}
    assert log.end == Done("end_turn", usage, cost(MODEL, want.input_tokens, 50), model=MODEL)


async def test_overload_beyond_the_retry_limit_fails_retryable_without_any_text(
    make_manager: MakeManager, provider: Provider
) -> None:
    manager = await make_manager(retry=RetryPolicy(retries=1, base_delay=0.01, max_delay=0.05))
    prompt, _ = expect(unique("Busy for long"), "[[sim:status=529]] [[sim:fail_times=2]]")
    _, log = await run(manager, prompt)
    assert log.texts == []
    assert len(log.entries) == 2
    usage = {"input_tokens": 0, "output_tokens": 0}
    assert log.end == Failed("Simulated overloaded_error", "overloaded", True, usage, 0.0)
    # One attempt and one retry used up both failures: the next attempt answers.
    assert await answers_directly(provider, prompt)


async def test_a_non_retryable_status_fails_at_once_after_one_attempt(
    stream_manager: StreamManager, provider: Provider
) -> None:
    # A second attempt would answer: the failure shows that there was only one.
    prompt, _ = expect(unique("Bad request"), "[[sim:status=400]] [[sim:fail_times=1]]")
    _, log = await run(stream_manager, prompt)
    assert log.texts == []
    usage = {"input_tokens": 0, "output_tokens": 0}
    assert log.end == Failed(
        "Simulated invalid_request_error", "invalid_request", False, usage, 0.0
    )
    assert await answers_directly(provider, prompt)


async def test_an_unknown_model_fails_at_once_not_found_and_not_retryable(
    stream_manager: StreamManager,
) -> None:
    stream_id, log = await run(stream_manager, "Hi", model="claude-nope")
    assert log.start == Start(stream_id, REQUEST_ID, "claude-nope")
    usage = {"input_tokens": 0, "output_tokens": 0}
    assert log.events[1:] == [Failed("model: claude-nope", "not_found", False, usage, 0.0)]


@pytest.mark.parametrize("model", [MODEL, NO_PREFILL_MODEL])
async def test_a_cut_after_the_start_before_any_text_is_retried_without_a_reset(
    stream_manager: StreamManager, model: str
) -> None:
    faults = "[[sim:error_after=0]] [[sim:fail_times=1]]"
    prompt, want = expect(unique("Breaks at once"), faults, model)
    _, log = await run(stream_manager, prompt, model)
    assert log.resets == 0
    assert log.texts == want.deltas
    usage = {"input_tokens": 2 * want.input_tokens, "output_tokens": 50}  # both attempts
    assert log.end == Done("end_turn", usage, cost(model, 2 * want.input_tokens, 50), model=model)


# -- failures mid-answer ----------------------------------------------------------------

FAULTS = ["error_after", "drop_after", "stall_after"]


@pytest.mark.parametrize("fault", FAULTS)
async def test_a_cut_mid_text_is_continued_by_prefill_into_exactly_the_clean_text(
    stream_manager: StreamManager, fault: str
) -> None:
    prompt, want = expect(unique("Continue me"), f"[[sim:{fault}=6]] [[sim:fail_times=1]]")
    _, log = await run(stream_manager, prompt)
    assert log.resets == 0
    assert log.text == want.text
    assert log.texts == want.deltas  # the continuation starts at the very next delta
    assert len(log.entries) == 1 + 50 + 1
    # Both attempts are paid for: 6 deltas, then the other 44.
    usage = {"input_tokens": 2 * want.input_tokens, "output_tokens": 6 + 44}
    assert log.end == Done("end_turn", usage, cost(MODEL, 2 * want.input_tokens, 50), model=MODEL)


@pytest.mark.parametrize("fault", FAULTS)
async def test_a_cut_mid_text_on_a_model_without_prefill_resets_then_restarts_the_answer(
    stream_manager: StreamManager, fault: str
) -> None:
    faults = f"[[sim:{fault}=6]] [[sim:fail_times=1]]"
    prompt, want = expect(unique("Restart me"), faults, NO_PREFILL_MODEL)
    _, log = await run(stream_manager, prompt, NO_PREFILL_MODEL)
    assert log.events[7] == Reset("upstream_error")
    assert log.resets == 1
    assert log.texts[:6] == want.deltas[:6]
    assert log.text_after_reset == want.text
    assert len(log.entries) == 1 + 6 + 1 + 50 + 1
    usage = {"input_tokens": 2 * want.input_tokens, "output_tokens": 6 + 50}
    assert log.end == Done(
        "end_turn", usage, cost(NO_PREFILL_MODEL, 2 * want.input_tokens, 56), model=NO_PREFILL_MODEL
    )


async def test_a_cut_mid_text_after_thinking_restarts_the_answer_even_where_prefill_works(
    stream_manager: StreamManager,
) -> None:
    # A prefill cannot carry the thinking block already sent: the answer starts again.
    words = f"{unique('Think, then break')} [[sim:thinking=3]]"
    prompt, want = expect(words, "[[sim:drop_after=6]] [[sim:fail_times=1]]")
    thinking = planned(words).thinking
    assert thinking is not None and len(thinking) == 3
    signature = ThinkingSignature(signature_of("".join(thinking)))
    _, log = await run(stream_manager, prompt)
    assert log.events[1:-1] == [
        *(Thinking(t) for t in thinking), signature, *want.deltas[:3],
        Reset("upstream_error"),
        *(Thinking(t) for t in thinking), signature, *want.deltas,
    ]  # fmt: skip
    # The cut attempt is estimated from what it sent (three thinking deltas, the
    # signature, three words); the second reports its own.
    usage = {"input_tokens": 2 * want.input_tokens, "output_tokens": 7 + 3 + 50}
    assert log.end == Done("end_turn", usage, cost(MODEL, 2 * want.input_tokens, 60), model=MODEL)


async def test_a_prefill_the_upstream_refuses_resets_and_the_table_learns_it(
    make_manager: MakeManager,
) -> None:
    # The table wrongly says the model takes a prefill; the upstream's 400 corrects it.
    wrong = dataclasses.replace(DEFAULT_MODELS[NO_PREFILL_MODEL], accepts_prefill=True)
    models = ModelTable({**DEFAULT_MODELS, NO_PREFILL_MODEL: wrong})
    manager = await make_manager(models=models)
    faults = "[[sim:error_after=6]] [[sim:fail_times=1]]"
    prompt, want = expect(unique("Refused prefill"), faults, NO_PREFILL_MODEL)
    _, log = await run(manager, prompt, NO_PREFILL_MODEL)
    assert log.events[7] == Reset("upstream_error")
    assert log.resets == 1
    assert log.texts[:6] == want.deltas[:6]
    assert log.text_after_reset == want.text
    assert len(log.entries) == 1 + 6 + 1 + 50 + 1
    # The refused continuation never started, so it cost nothing.
    usage = {"input_tokens": 2 * want.input_tokens, "output_tokens": 6 + 50}
    assert log.end == Done(
        "end_turn", usage, cost(NO_PREFILL_MODEL, 2 * want.input_tokens, 56), model=NO_PREFILL_MODEL
    )
    assert not models.accepts_prefill(NO_PREFILL_MODEL)


async def test_a_cut_inside_a_tool_use_block_ends_with_an_incomplete_block_error(
    stream_manager: StreamManager,
) -> None:
    words = f"{unique('Weather?')} [[sim:tool=weather]]"
    prompt, want = expect(words, "[[sim:drop_after=6]] [[sim:fail_times=1]]")
    _, log = await run(stream_manager, prompt)
    assert want.tool is not None
    assert log.texts == want.deltas and len(log.texts) == 5
    # The block had opened and one fragment of its input had come.
    first = want.tool.json_fragments()[0]
    assert log.events[1 + 5 : -1] == [ToolUseStart(want.tool.id, "weather"), ToolInput(first)]
    # Estimated from what was seen: five text deltas, the block's opening, one fragment.
    usage = {"input_tokens": want.input_tokens, "output_tokens": 7}
    assert log.end == Failed(
        "Upstream stream was cut inside a tool_use block, which cannot be continued",
        "incomplete_block",
        False,
        usage,
        cost(MODEL, want.input_tokens, 7),
    )


async def test_continuations_are_limited_and_the_text_so_far_is_the_clean_text_s_start(
    stream_manager: StreamManager,
) -> None:
    # Every attempt breaks after three deltas: the first and three continuations.
    prompt, want = expect(unique("Breaks every time"), "[[sim:error_after=3]]")
    _, log = await run(stream_manager, prompt)
    assert log.resets == 0
    assert log.texts == want.deltas[: 4 * 3]
    assert len(log.entries) == 1 + 12 + 1
    usage = {"input_tokens": 4 * want.input_tokens, "output_tokens": 12}
    assert log.end == Failed(
        "Overloaded", "overloaded", True, usage, cost(MODEL, 4 * want.input_tokens, 12)
    )


# -- cancel -------------------------------------------------------------------------------


async def test_cancel_mid_stream_ends_it_with_a_cancelled_error_and_stops_the_text(
    stream_manager: StreamManager,
) -> None:
    prompt, want = expect(unique("Long and slow"), "[[sim:tps=20]]")  # 2.5 s in all
    stream_id = await start(stream_manager, prompt)
    entries: list[Entry] = []
    cancelled: bool | None = None
    async with asyncio.timeout(READ_TIMEOUT):
        async for batch in stream_manager.follow(stream_id, -1):
            entries.extend(batch)
            if cancelled is None and sum(type(e.event) is Text for e in entries) >= 3:
                cancelled = await stream_manager.cancel(stream_id, OWNER)
    assert cancelled is True
    log = Log(entries)
    sent = len(log.texts)
    assert 3 <= sent < 50
    assert log.texts == want.deltas[:sent]
    usage = {"input_tokens": want.input_tokens, "output_tokens": sent}
    assert log.end == Failed(
        "Stream cancelled", "cancelled", False, usage, cost(MODEL, want.input_tokens, sent)
    )


async def test_cancel_of_a_finished_stream_returns_false_and_leaves_it_done(
    stream_manager: StreamManager,
) -> None:
    stream_id, log = await run(stream_manager, "Short [[sim:tokens=5]]")
    assert type(log.end) is Done
    assert await stream_manager.cancel(stream_id, OWNER) is False
    assert Log(await read(stream_manager, stream_id)).events == log.events


async def test_cancel_by_another_owner_is_not_found_and_the_stream_goes_on(
    stream_manager: StreamManager,
) -> None:
    stream_id = await start(stream_manager, "Mine [[sim:tokens=5]]")
    with pytest.raises(StreamNotFound):
        await stream_manager.cancel(stream_id, "mallory")
    log = Log(await read(stream_manager, stream_id))
    assert log.texts == planned("Mine [[sim:tokens=5]]").deltas
    assert type(log.end) is Done


# -- resume -------------------------------------------------------------------------------


async def test_following_from_an_offset_yields_exactly_the_entries_after_it(
    stream_manager: StreamManager,
) -> None:
    stream_id, whole = await run(stream_manager, "Resume me [[sim:tokens=20]]")
    last = len(whole.entries) - 1
    for after in (-1, 0, 1, 7, last - 1):
        tail = await read(stream_manager, stream_id, after)
        assert [e.seq for e in tail] == list(range(after + 1, last + 1))
        assert [e.event for e in tail] == whole.events[after + 1 :]


async def test_a_reader_that_leaves_mid_stream_resumes_with_no_gap_and_no_duplicate(
    stream_manager: StreamManager,
) -> None:
    prompt = "Resume me live [[sim:tokens=20]]"
    stream_id = await start(stream_manager, f"{prompt} [[sim:tps=50]]")
    head: list[Entry] = []
    following = stream_manager.follow(stream_id, -1)
    assert isinstance(following, AsyncGenerator)  # so that leaving closes it at once
    async with asyncio.timeout(READ_TIMEOUT):
        async with contextlib.aclosing(following) as batches:
            async for batch in batches:
                head.extend(batch)
                if head[-1].seq >= 5:
                    break  # the client hangs up mid-answer
    assert not head[-1].terminal
    tail = await read(stream_manager, stream_id, head[-1].seq)
    log = Log(head + tail)
    assert log.texts == planned(prompt).deltas
    assert type(log.end) is Done


# -- idempotency ------------------------------------------------------------------------


async def test_the_same_idempotency_key_and_body_attach_to_one_generation(
    stream_manager: StreamManager,
) -> None:
    key = unique("key")
    prompt = "Once only [[sim:tokens=10]] [[sim:tps=50]]"
    first = await start(stream_manager, prompt, idempotency_key=key)
    second = await start(stream_manager, prompt, idempotency_key=key)
    assert second == first
    assert stream_manager.active_streams == 1
    log = Log(await read(stream_manager, first))
    assert log.texts == planned(prompt).deltas
    assert type(log.end) is Done


async def test_the_same_idempotency_key_with_another_body_is_a_conflict(
    stream_manager: StreamManager,
) -> None:
    key = unique("key")
    prompt = "First [[sim:tokens=5]] [[sim:tps=50]]"
    stream_id = await start(stream_manager, prompt, idempotency_key=key)
    with pytest.raises(IdempotencyConflict):
        await start(stream_manager, "Second", idempotency_key=key, fingerprint="other")
    assert stream_manager.active_streams == 1
    log = Log(await read(stream_manager, stream_id))
    assert log.texts == planned(prompt).deltas
    assert type(log.end) is Done


async def test_an_idempotency_key_is_scoped_to_its_owner(stream_manager: StreamManager) -> None:
    key = unique("key")
    mine = await start(stream_manager, "Scoped [[sim:tokens=5]]", idempotency_key=key)
    theirs = await start(
        stream_manager, "Scoped [[sim:tokens=5]]", owner="bob", idempotency_key=key
    )
    assert theirs != mine
    for stream_id in (mine, theirs):
        log = Log(await read(stream_manager, stream_id))
        assert log.texts == planned("Scoped [[sim:tokens=5]]").deltas
