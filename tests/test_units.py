"""Pure pieces, golden-tested: the tokens dialect, Last-Event-ID, retry delays, the log."""

from __future__ import annotations

import asyncio
import time
import tracemalloc

import pytest

from tokenrelay.dialects.tokens import TokensDialect, encode_event, parse_last_event_id
from tokenrelay.errors import Overloaded
from tokenrelay.events import (
    Done,
    Event,
    Failed,
    Queued,
    Reset,
    Start,
    Text,
    Thinking,
    ThinkingSignature,
    ToolInput,
    ToolUse,
    ToolUseStart,
)
from tokenrelay.pricing import ModelTable
from tokenrelay.providers.base import Usage
from tokenrelay.providers.sse_decode import SseDecoder
from tokenrelay.streams.fanout import Tail
from tokenrelay.streams.log import Entry
from tokenrelay.streams.producer import RetryPolicy


def test_tokens_dialect_renders_a_batch_as_one_golden_chunk() -> None:
    dialect = TokensDialect("s1", 3000)
    entries = [Entry(0, Start("s1", "req_1", "claude-haiku-4-5")), Entry(1, Text("Hi"))]
    assert dialect.render(entries) == (
        b'retry: 3000\nid: s1:0\ndata: {"stream_id":"s1","request_id":"req_1",'
        b'"model":"claude-haiku-4-5"}\n\nid: s1:1\ndata: {"token":"Hi"}\n\n'
    )
    # Only the first chunk of a response carries `retry:`.
    assert dialect.render([Entry(2, Text(" there"))]) == b'id: s1:2\ndata: {"token":" there"}\n\n'
    assert dialect.heartbeat == b": ping\n\n" and dialect.final == b""
    assert dialect.error(Overloaded("Server shutting down")) == (
        b'data: {"error":"Server shutting down","code":"overloaded","retryable":true}\n\n'
    )


def test_tokens_dialect_renders_thinking_and_a_tool_call_forming_as_golden_frames() -> None:
    dialect = TokensDialect("s1", 3000)
    dialect.render([Entry(0, Start("s1", "req_1", "m"))])  # the first chunk, with `retry:`
    entries = [
        Entry(1, Thinking("Rain?")),
        Entry(2, ThinkingSignature("c2ln")),
        Entry(3, Text("Checking.")),
        Entry(4, ToolUseStart("toolu_1", "weather")),
        Entry(5, ToolInput('{"ci')),
        Entry(6, ToolInput('ty": "Oslo"}')),
        Entry(7, ToolUse("toolu_1", "weather", {"city": "Oslo"})),
    ]
    assert dialect.render(entries) == (
        b'id: s1:1\ndata: {"thinking":"Rain?"}\n\n'
        b'id: s1:2\ndata: {"thinking_signature":"c2ln"}\n\n'
        b'id: s1:3\ndata: {"token":"Checking."}\n\n'
        b'id: s1:4\ndata: {"tool_use_start":{"id":"toolu_1","name":"weather"}}\n\n'
        b'id: s1:5\ndata: {"tool_input":"{\\"ci"}\n\n'
        b'id: s1:6\ndata: {"tool_input":"ty\\": \\"Oslo\\"}"}\n\n'
        b'id: s1:7\ndata: {"tool_use":{"id":"toolu_1","name":"weather",'
        b'"input":{"city":"Oslo"}}}\n\n'
    )


USAGE = {"input_tokens": 12, "output_tokens": 230}


@pytest.mark.parametrize(
    ("event", "wire"),
    [
        (Start("s1", "req_1", "m"), b'{"stream_id":"s1","request_id":"req_1","model":"m"}'),
        (Queued(3), b'{"queued":true,"position":3}'),
        (Text('say "hi"\n'), b'{"token":"say \\"hi\\"\\n"}'),
        (
            ToolUseStart("toolu_1", "weather"),
            b'{"tool_use_start":{"id":"toolu_1","name":"weather"}}',
        ),
        (ToolInput('{"city":"Pa'), b'{"tool_input":"{\\"city\\":\\"Pa"}'),
        (
            ToolUse("toolu_1", "weather", {"city": "Paris"}),
            b'{"tool_use":{"id":"toolu_1","name":"weather","input":{"city":"Paris"}}}',
        ),
        (Thinking("hmm"), b'{"thinking":"hmm"}'),
        (Thinking('a "quote"\n'), b'{"thinking":"a \\"quote\\"\\n"}'),
        (ThinkingSignature("EqQBCkYIBRgC"), b'{"thinking_signature":"EqQBCkYIBRgC"}'),
        (ToolInput(""), b'{"tool_input":""}'),
        (Reset(), b'{"reset":true,"reason":"upstream_error"}'),
        (
            Done("end_turn", USAGE, 0.0035),
            b'{"done":true,"stop_reason":"end_turn","usage":{"input_tokens":12,'
            b'"output_tokens":230},"cost_usd":0.0035,"cached":false}',
        ),
        (
            Failed("Overloaded", "overloaded", True, USAGE, 0.0035),
            b'{"error":"Overloaded","code":"overloaded","retryable":true,"usage":'
            b'{"input_tokens":12,"output_tokens":230},"cost_usd":0.0035}',
        ),
    ],
)
def test_tokens_dialect_encodes_every_event_as_design_3_1_says(event: Event, wire: bytes) -> None:
    assert encode_event(event) == wire


def test_an_entry_is_encoded_once_per_dialect_however_many_readers() -> None:
    calls: list[str] = []

    def counting(name: str) -> object:
        def encode(event: Event) -> bytes:
            calls.append(name)
            return name.encode()

        return encode

    entry = Entry(0, Text("a"))
    tokens, other, third = counting("tokens"), counting("other"), counting("third")
    for _ in range(100):
        assert entry.encoded("tokens", tokens) == b"tokens"  # type: ignore[arg-type]
        assert entry.encoded("other", other) == b"other"  # type: ignore[arg-type]
        assert entry.encoded("third", third) == b"third"  # type: ignore[arg-type]
    assert calls == ["tokens", "other", "third"]


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
    entry = Entry(0, Text("a"))
    loop.call_later(0.011, tail.push, entry)
    # Block the loop so both timers fall due in the same iteration, timeout first.
    time.sleep(0.05)  # noqa: ASYNC251
    assert await reader == [entry]


def test_encoded_entries_take_their_own_size_not_a_serializer_buffer() -> None:
    """Entries live for the stream's TTL: each must cost its bytes, not a 4 KiB buffer."""
    events: list[Event] = [Text(f"word {i}") for i in range(500)]
    events += [Done("end_turn", {"input_tokens": i, "output_tokens": 1}, 0.1) for i in range(500)]
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        payloads = [encode_event(event) for event in events]
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert payloads[7] == b'{"token":"word 7"}'
    assert held < 250 * 1000  # 50 to 120 bytes each, plus the list


# -- the upstream's event stream, decoded ------------------------------------------------

SSE_WIRE = (
    b'event: message_start\ndata: {"a":1}\n\n'
    b": a comment\n\n"
    b"event: ping\ndata: {}\n\n"
    b"data: first line\ndata:second line\n\n"
)
SSE_EVENTS = [
    (b"message_start", b'{"a":1}'),
    (b"ping", b"{}"),
    (b"", b"first line\nsecond line"),
]


@pytest.mark.parametrize("newline", [b"\n", b"\r\n", b"\r"])
def test_sse_decoder_gives_the_same_events_however_the_bytes_are_cut(newline: bytes) -> None:
    wire = SSE_WIRE.replace(b"\n", newline)
    for first in range(len(wire) + 1):
        for second in range(first, len(wire) + 1, 7):
            decoder = SseDecoder()
            parts = (wire[:first], wire[first:second], wire[second:])
            events = [event for part in parts for event in decoder.feed(part)]
            assert events == SSE_EVENTS, (newline, first, second)
