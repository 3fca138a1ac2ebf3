"""Claude's Message Batches API in the simulator, read with the official SDK over a real
socket (`client.messages.batches.create/retrieve/results/cancel/list/delete`): a batch
processed over `--batch-seconds`, its faulted requests errored, its results matched to
their custom ids with the texts `/v1/messages` gives the same params; cancel, delete,
paging, Claude's 400s and 404s. The schedule itself (which request is answered when) is
checked on the core with a clock the test turns."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import anthropic
import httpx
import pytest
from anthropic.types.messages import MessageBatch

from tests.support import eventually, free_port, spawn, unique
from tokenrelay.simulator.batches import CANCEL_GRACE_S, EXPIRES_AFTER_S, Batches
from tokenrelay.simulator.engine import SimError, Simulator

MODEL = "claude-haiku-4-5"
FAULTS = {3: (529, "overloaded_error"), 11: (500, "api_error"), 17: (429, "rate_limit_error")}


def params(prompt: str, **extra: Any) -> Any:
    return {"model": MODEL, "max_tokens": 200,
            "messages": [{"role": "user", "content": prompt}], **extra}  # fmt: skip


@pytest.fixture(scope="module")
def simulate() -> Iterator[Callable[..., str]]:
    """Start a simulator with these flags; every one started stops with the module."""
    with contextlib.ExitStack() as stack:

        def start(*flags: str) -> str:
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            args = ["simulate", "--port", str(port), "--ttft-ms", "0", "--tps", "0", *flags]
            stack.enter_context(spawn(args, f"{url}/healthz"))
            return url

        yield start


@pytest.fixture(scope="module")
def quick(simulate: Callable[..., str]) -> anthropic.Anthropic:
    """A simulator whose batches take 2 s."""
    return anthropic.Anthropic(base_url=simulate("--batch-seconds", "2"), api_key="k",
                               max_retries=0)  # fmt: skip


@pytest.fixture(scope="module")
def slow(simulate: Callable[..., str]) -> anthropic.Anthropic:
    """A simulator whose batches take 10 minutes: nothing is answered before a cancel."""
    return anthropic.Anthropic(base_url=simulate("--batch-seconds", "600"), api_key="k",
                               max_retries=0)  # fmt: skip


def watch(client: anthropic.Anthropic, batch_id: str) -> list[MessageBatch]:
    """Every state of the batch seen until it ended, polled."""
    seen: list[MessageBatch] = []

    def ended() -> bool:
        seen.append(client.messages.batches.retrieve(batch_id))
        return seen[-1].processing_status == "ended"

    eventually(ended, what=f"batch {batch_id} to end", within=30)
    return seen


def error_message(error: anthropic.APIStatusError) -> str:
    body = error.body
    assert isinstance(body, dict)
    return str(body["error"]["message"])


def counts(batch: MessageBatch) -> dict[str, int]:
    return batch.request_counts.model_dump()


def test_a_batch_with_faulted_requests_ends_with_each_result_under_its_custom_id(
    quick: anthropic.Anthropic,
) -> None:
    tag = unique("batch")
    prompts = [f"Batch item {i} of {tag} [[sim:tokens={5 + i}]]" for i in range(20)]
    for i, (status, _) in FAULTS.items():
        prompts[i] += f" [[sim:status={status}]]"
    requests: list[Any] = [
        {"custom_id": f"item-{i:02d}", "params": params(p)} for i, p in enumerate(prompts)
    ]
    created = quick.messages.batches.create(requests=requests)
    assert created.type == "message_batch" and created.id.startswith("msgbatch_")
    assert created.processing_status == "in_progress" and created.results_url is None
    assert counts(created) == {"processing": 20, "succeeded": 0, "errored": 0, "canceled": 0,
                               "expired": 0}  # fmt: skip
    assert created.ended_at is None and created.cancel_initiated_at is None
    assert (created.expires_at - created.created_at).total_seconds() == EXPIRES_AFTER_S
    with pytest.raises(anthropic.AnthropicError, match="results_url"):
        quick.messages.batches.results(created.id)

    seen = watch(quick, created.id)
    # Counts only ever move on, and always add up to the batch.
    done = [20 - b.request_counts.processing for b in seen]
    assert done == sorted(done)
    assert all(sum(counts(b).values()) == 20 for b in seen)
    assert all(b.processing_status == "in_progress" for b in seen[:-1])
    ended = seen[-1]
    assert counts(ended) == {"processing": 0, "succeeded": 17, "errored": 3, "canceled": 0,
                             "expired": 0}  # fmt: skip
    assert ended.ended_at is not None and ended.ended_at > ended.created_at
    base = str(quick.base_url).rstrip("/")
    assert ended.results_url == f"{base}/v1/messages/batches/{created.id}/results"

    results = {r.custom_id: r.result for r in quick.messages.batches.results(created.id)}
    assert sorted(results) == [f"item-{i:02d}" for i in range(20)]
    for i, prompt in enumerate(prompts):
        result = results[f"item-{i:02d}"]
        if i in FAULTS:
            status, error_type = FAULTS[i]
            assert result.type == "errored"
            assert result.error.type == "error" and result.error.error.type == error_type
            with pytest.raises(anthropic.APIStatusError) as direct_error:
                quick.messages.create(**params(prompt))
            assert direct_error.value.status_code == status
            assert result.error.error.message == error_message(direct_error.value)
            continue
        assert result.type == "succeeded"
        direct = quick.messages.create(**params(prompt))
        message = result.message
        assert message.content[0].type == "text" and direct.content[0].type == "text"
        assert message.content[0].text == direct.content[0].text
        assert len(message.content[0].text.split(" ")) == 5 + i
        assert message.usage.input_tokens == direct.usage.input_tokens
        assert message.usage.output_tokens == direct.usage.output_tokens == 5 + i
        assert (message.model, message.stop_reason) == (MODEL, "end_turn")
    # Results stay as they were, however often they are read.
    again = {r.custom_id: r.result for r in quick.messages.batches.results(created.id)}
    assert again == results


def test_cancel_ends_a_batch_with_its_unanswered_requests_canceled(
    slow: anthropic.Anthropic,
) -> None:
    tag = unique("cancel")
    requests: list[Any] = [
        {"custom_id": f"c{i}", "params": params(f"Never answered {i} {tag}")} for i in range(4)
    ]
    created = slow.messages.batches.create(requests=requests)
    canceling = slow.messages.batches.cancel(created.id)
    assert canceling.processing_status == "canceling"
    assert canceling.cancel_initiated_at is not None and canceling.results_url is None
    assert canceling.request_counts.processing == 4
    with pytest.raises(anthropic.BadRequestError):  # a batch still going is not deleted
        slow.messages.batches.delete(created.id)
    ended = watch(slow, created.id)[-1]
    assert counts(ended) == {"processing": 0, "succeeded": 0, "errored": 0, "canceled": 4,
                             "expired": 0}  # fmt: skip
    assert ended.ended_at is not None and ended.cancel_initiated_at == canceling.cancel_initiated_at
    lines = [r.model_dump() for r in slow.messages.batches.results(created.id)]
    assert lines == [{"custom_id": f"c{i}", "result": {"type": "canceled"}} for i in range(4)]
    # Canceling an ended batch changes nothing; it can be deleted, and is then gone.
    assert slow.messages.batches.cancel(created.id) == ended
    deleted = slow.messages.batches.delete(created.id)
    assert (deleted.id, deleted.type) == (created.id, "message_batch_deleted")
    with pytest.raises(anthropic.NotFoundError):
        slow.messages.batches.retrieve(created.id)


def test_batches_are_listed_newest_first_page_by_page(simulate: Callable[..., str]) -> None:
    client = anthropic.Anthropic(base_url=simulate("--batch-seconds", "600"), api_key="k",
                                 max_retries=0)  # fmt: skip
    assert client.messages.batches.list().data == []
    ids = [
        client.messages.batches.create(
            requests=[{"custom_id": "only", "params": params(unique(f"Listed {i}"))}]
        ).id
        for i in range(5)
    ]
    first = client.messages.batches.list(limit=2)
    assert [b.id for b in first.data] == ids[::-1][:2] and first.has_more
    assert (first.first_id, first.last_id) == (ids[4], ids[3])
    assert [b.id for b in client.messages.batches.list(limit=2)] == ids[::-1]  # every page
    older = client.messages.batches.list(limit=10, after_id=ids[3])
    assert [b.id for b in older.data] == [ids[2], ids[1], ids[0]] and not older.has_more
    newer = client.messages.batches.list(limit=1, before_id=ids[1])
    assert [b.id for b in newer.data] == [ids[2]] and newer.has_more


@pytest.mark.parametrize(
    ("requests", "message"),
    [
        ([], "requests"),
        ([{"custom_id": "a", "params": params("x")}, {"custom_id": "a", "params": params("y")}],
         "requests.1.custom_id"),
        ([{"custom_id": "no spaces", "params": params("x")}], "requests.0.custom_id"),
        ([{"custom_id": "a" * 65, "params": params("x")}], "requests.0.custom_id"),
        ([{"custom_id": "a"}], "requests.0.params"),
        ([{"custom_id": "a", "params": params("x", stream=True)}], "requests.0.params.stream"),
    ],
)  # fmt: skip
def test_a_bad_batch_is_claudes_400(
    quick: anthropic.Anthropic, requests: list[Any], message: str
) -> None:
    with pytest.raises(anthropic.BadRequestError) as bad:
        quick.messages.batches.create(requests=requests)
    assert bad.value.type == "invalid_request_error"
    assert error_message(bad.value).startswith(message)


def test_unknown_batches_and_routes_are_claudes_404(quick: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.NotFoundError):
        quick.messages.batches.retrieve("msgbatch_nope")
    with pytest.raises(anthropic.NotFoundError):
        quick.messages.batches.cancel("msgbatch_nope")
    base = str(quick.base_url).rstrip("/")
    for method, path in [("GET", "/v1/messages/batches/msgbatch_nope/results"),
                         ("PUT", "/v1/messages/batches"),
                         ("GET", "/v1/messages/batches/a/b/c")]:  # fmt: skip
        answer = httpx.request(method, base + path)
        assert answer.status_code == 404 and answer.json()["error"]["type"] == "not_found_error"
    bad_json = httpx.post(f"{base}/v1/messages/batches", content=b"{")
    assert bad_json.status_code == 400
    assert httpx.get(f"{base}/v1/messages/batches?limit=0").status_code == 400


# The schedule, on the core with a clock the test turns.


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def requests_of(*prompts: str) -> dict[str, Any]:
    return {
        "requests": [{"custom_id": f"r{i}", "params": params(p)} for i, p in enumerate(prompts)]
    }


def test_requests_finish_spread_over_the_batch_seconds() -> None:
    clock = Clock()
    batches = Batches(Simulator(), seconds=10, clock=clock)
    batch = batches.create(requests_of("one", "two", "three", "four [[sim:status=529]]"))
    start = clock.now
    seen = []
    for at in (0, 2.4, 2.5, 5, 7.4, 7.5, 9.99, 10):
        clock.now = start + at
        shown = batches.describe(batches.get(batch.id), "http://sim")
        tally = shown["request_counts"]
        seen.append((shown["processing_status"], tally["processing"], tally["succeeded"],
                     tally["errored"]))  # fmt: skip
    assert seen == [
        ("in_progress", 4, 0, 0), ("in_progress", 4, 0, 0), ("in_progress", 3, 1, 0),
        ("in_progress", 2, 2, 0), ("in_progress", 2, 2, 0), ("in_progress", 1, 3, 0),
        ("in_progress", 1, 3, 0), ("ended", 0, 3, 1),
    ]  # fmt: skip
    assert batch.ended_at == start + 10
    assert shown["results_url"] == f"http://sim/v1/messages/batches/{batch.id}/results"


def test_a_fault_for_the_first_attempts_errs_in_the_first_batch_only() -> None:
    clock = Clock()
    batches = Batches(Simulator(), seconds=1, clock=clock)
    body = requests_of("Flaky [[sim:status=529]] [[sim:fail_times=1]]", "Steady")
    first, second = batches.create(body), batches.create(body)
    clock.now += 1
    assert batches.get(first.id).counts["errored"] == 1
    assert batches.get(second.id).counts == {"succeeded": 2, "errored": 0, "canceled": 0,
                                             "expired": 0}  # fmt: skip
    texts = [[(item.result or {})["message"]["content"][0]["text"] for item in b.items[1:]]
             for b in (first, second)]  # fmt: skip
    assert texts[0] == texts[1] == [Simulator().plan(params("Steady")).text]


def test_a_cancel_lets_what_is_due_within_its_grace_finish_and_a_day_expires_the_rest() -> None:
    clock = Clock()
    batches = Batches(Simulator(), seconds=4, clock=clock)
    batch = batches.create(requests_of("a", "b", "c", "d"))
    clock.now += 1 - CANCEL_GRACE_S / 2  # the first is due within the grace
    assert batches.cancel(batch.id).status(clock.now) == "canceling"
    clock.now += CANCEL_GRACE_S
    assert batch.status(clock.now) == "ended"
    batches.get(batch.id)
    assert batch.counts == {"succeeded": 1, "errored": 0, "canceled": 3, "expired": 0}

    long = Batches(Simulator(), seconds=2 * EXPIRES_AFTER_S, clock=clock)
    slow = long.create(requests_of("e", "f", "g", "h"))
    clock.now += EXPIRES_AFTER_S
    shown = long.describe(long.get(slow.id), "http://sim")
    assert shown["processing_status"] == "ended"
    assert shown["request_counts"] == {"processing": 0, "succeeded": 2, "errored": 0,
                                       "canceled": 0, "expired": 2}  # fmt: skip
    assert shown["ended_at"] == shown["expires_at"]
    with pytest.raises(SimError) as missing:
        long.get("msgbatch_nope")
    assert missing.value.status == 404
