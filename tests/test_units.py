"""Pure pieces, golden-tested: the tokens dialect, Last-Event-ID, retry delays, the log."""

from __future__ import annotations

import asyncio
import time
import tracemalloc

import pytest

from tokenrelay.dialects.tokens import (
    event_id_prefix,
    parse_last_event_id,
    render_entries,
    retry_field,
)
from tokenrelay.pricing import ModelTable
from tokenrelay.providers.base import Usage
from tokenrelay.streams.fanout import Tail
from tokenrelay.streams.log import Entry, encode
from tokenrelay.streams.producer import RetryPolicy


def test_tokens_dialect_renders_a_batch_as_one_golden_chunk() -> None:
    entries = [Entry(0, "start", b'{"stream_id":"s1"}'), Entry(1, "text", b'{"token":"Hi"}')]
    assert render_entries(event_id_prefix("s1"), entries) == (
        b'id: s1:0\ndata: {"stream_id":"s1"}\n\nid: s1:1\ndata: {"token":"Hi"}\n\n'
    )
    assert retry_field(3000) == b"retry: 3000\n"


@pytest.mark.parametrize(
    ("value", "parsed"),
    [
        ("abc:0", ("abc", 0)),
        ("a-b_C9:123", ("a-b_C9", 123)),
        ("  abc:7 ", ("abc", 7)),
        ("abc", None),
        ("abc:", None),
        (":3", None),
        ("abc:-1", None),
        ("abc:١٢", None),  # non-ASCII digits
        ("ab c:1", None),
        ("abc:1:2", None),
        ("abc:" + "9" * 13, None),
    ],
)
def test_parse_last_event_id(value: str, parsed: tuple[str, int] | None) -> None:
    assert parse_last_event_id(value) == parsed


def test_retry_policy_backs_off_exponentially_with_jitter_and_honours_retry_after() -> None:
    policy = RetryPolicy(retries=4, base_delay=0.5, max_delay=2.0, retry_after_ceiling=10)
    for retry, ceiling in enumerate([0.5, 1.0, 2.0, 2.0]):
        for _ in range(50):
            delay = policy.delay(retry, None)
            assert delay is not None and ceiling * 0.75 <= delay <= ceiling
    assert policy.delay(0, 3.0) == 3.0
    assert policy.delay(0, 11.0) is None  # longer than we are willing to wait
    assert policy.delay(4, None) is None  # out of retries


def test_cost_uses_the_model_prices() -> None:
    table = ModelTable()
    usage = Usage(input_tokens=1000, output_tokens=200, cache_read_input_tokens=500)
    # sonnet-4-5: $3 in, $15 out, $0.3 cache read, per million tokens
    assert table.cost_usd("claude-sonnet-4-5", usage) == round((3000 + 3000 + 150) / 1e6, 8)
    assert table.accepts_prefill("claude-haiku-4-5") is True
    assert table.accepts_prefill("claude-sonnet-4-6") is False
    assert table.accepts_prefill("claude-unknown") is False


async def test_tail_read_survives_a_push_right_after_its_timeout() -> None:
    """The wait times out and, before the reader runs again, an entry arrives: the
    reader returns that entry instead of failing (a race seen under load)."""
    tail = Tail()
    loop = asyncio.get_running_loop()
    reader = asyncio.create_task(tail.read(-1, 0.01))
    await asyncio.sleep(0)  # the reader now waits, its timer set
    entry = Entry(0, "text", b'{"token":"a"}')
    loop.call_later(0.011, tail.push, entry)
    # Block the loop so both timers fall due in the same iteration, timeout first.
    time.sleep(0.05)  # noqa: ASYNC251
    assert await reader == [entry]


def test_log_payloads_take_their_own_size_not_a_serializer_buffer() -> None:
    """Entries live for the stream's TTL: each must cost its bytes, not a 4 KiB buffer."""
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        payloads = [encode({"token": f"word {i}"}) for i in range(1000)]
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert payloads[7] == b'{"token":"word 7"}'
    assert held < 150 * 1000  # about 60 bytes each, plus the list
