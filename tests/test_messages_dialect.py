"""The `anthropic` dialect as pure bytes: the frames a log renders to, a restart that
the format cannot say, a resumed reader's state, one encoding shared by readers, the
whole message, and the HTTP error of a stream that failed before its answer."""

from __future__ import annotations

import orjson
import pytest

from tokenrelay.dialects.anthropic import NAME, AnthropicDialect, CannotContinue, error_type_of
from tokenrelay.dialects.anthropic_message import failure_before_answer, whole_message
from tokenrelay.events import (
    Done,
    Event,
    Failed,
    Queued,
    Reset,
    Start,
    Thinking,
    ThinkingSignature,
    ToolInput,
    ToolUse,
    ToolUseStart,
)
from tokenrelay.streams.log import Entry, Opening

SID = "s1"
OPENING = Opening("claude-haiku-4-5", {"input_tokens": 12})
USAGE = {"input_tokens": 12, "output_tokens": 9}


def log(*events: Event) -> list[Entry]:
    return [Entry(seq, event) for seq, event in enumerate(events)]


def render(entries: list[Entry], *, after: int = -1) -> bytes:
    return AnthropicDialect(SID, after=after, opening=OPENING).render(entries)


START = Start(SID, "req_1", "claude-haiku-4-5")
DONE = Done("end_turn", USAGE, 0.0)

MESSAGE_START = (
    b'event: message_start\ndata: {"type":"message_start","message":{"id":"msg_s1",'
    b'"type":"message","role":"assistant","model":"claude-haiku-4-5","content":[],'
    b'"stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":12,"output_tokens":1}}}'
)


def delta(index: int, data: bytes) -> bytes:
    return (
        b'event: content_block_delta\ndata: {"type":"content_block_delta","index":%d,'
        b'"delta":%b}' % (index, data)
    )


def start(index: int, block: bytes) -> bytes:
    return (
        b'event: content_block_start\ndata: {"type":"content_block_start","index":%d,'
        b'"content_block":%b}' % (index, block)
    )


def stop(index: int) -> bytes:
    return b'event: content_block_stop\ndata: {"type":"content_block_stop","index":%d}' % index


PING = b'event: ping\ndata: {"type":"ping"}'
END_TURN = (
    b'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":"end_turn",'
    b'"stop_sequence":null},"usage":{"output_tokens":9}}'
)
STOP = b'event: message_stop\ndata: {"type":"message_stop"}'


def entry(seq: int, *frames: bytes) -> bytes:
    """An entry's frames, the last with its id line."""
    return b"\n\n".join(frames) + b"\nid: s1:%d\n\n" % seq


def test_text_then_a_tool_call_renders_as_claudes_frames() -> None:
    entries = log(
        START, Queued(1), "Hi", " there", ToolUseStart("toolu_1", "weather"),
        ToolInput('{"city":'), ToolInput('"Paris"}'),
        ToolUse("toolu_1", "weather", {"city": "Paris"}), Done("tool_use", USAGE, 0.0),
    )  # fmt: skip
    tool = b'{"type":"tool_use","id":"toolu_1","name":"weather","input":{}}'
    assert render(entries) == b"".join(
        [
            entry(2, MESSAGE_START, start(0, b'{"type":"text","text":""}'), PING,
                  delta(0, b'{"type":"text_delta","text":"Hi"}')),
            entry(3, delta(0, b'{"type":"text_delta","text":" there"}')),
            entry(4, stop(0), start(1, tool)),
            entry(5, delta(1, b'{"type":"input_json_delta","partial_json":"{\\"city\\":"}')),
            entry(6, delta(1, b'{"type":"input_json_delta","partial_json":"\\"Paris\\"}"}')),
            entry(7, stop(1)),
            entry(8,
                  b'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":'
                  b'"tool_use","stop_sequence":null},"usage":{"output_tokens":9}}',
                  b'event: message_stop\ndata: {"type":"message_stop"}'),
        ]
    )  # fmt: skip


def test_thinking_is_a_block_closed_by_its_signature() -> None:
    entries = log(START, Thinking("Hmm"), ThinkingSignature("sig"), Thinking("Again"), "Ok", DONE)
    thinking = b'{"type":"thinking","thinking":"","signature":""}'
    assert render(entries) == b"".join(
        [
            entry(1, MESSAGE_START, start(0, thinking), PING,
                  delta(0, b'{"type":"thinking_delta","thinking":"Hmm"}')),
            entry(2, delta(0, b'{"type":"signature_delta","signature":"sig"}')),
            entry(3, stop(0), start(1, thinking),
                  delta(1, b'{"type":"thinking_delta","thinking":"Again"}')),
            entry(4, stop(1), start(2, b'{"type":"text","text":""}'),
                  delta(2, b'{"type":"text_delta","text":"Ok"}')),
            entry(5, stop(2), END_TURN, STOP),
        ]
    )  # fmt: skip


def test_a_resumed_reader_replays_silently_and_goes_on_with_the_same_indexes() -> None:
    entries = log(
        START, Thinking("Hmm"), ThinkingSignature("sig"), "One", " two",
        ToolUseStart("toolu_1", "t"), ToolInput("{}"), ToolUse("toolu_1", "t", {}), DONE,
    )  # fmt: skip
    whole = render(entries)
    assert render(entries, after=0) == whole  # the start has no frame of its own
    for after in range(1, len(entries)):
        line = b"id: s1:%d\n\n" % after
        assert render(entries, after=after) == whole[whole.index(line) + len(line) :]


def test_a_restart_after_text_ends_with_an_overloaded_error_after_the_batch_so_far() -> None:
    dialect = AnthropicDialect(SID, opening=OPENING)
    with pytest.raises(CannotContinue) as raised:
        dialect.render(log(START, "Half", Reset(), "Whole"))
    frame = dialect.error(raised.value)
    first = entry(1, MESSAGE_START, start(0, b'{"type":"text","text":""}'), PING,
                  delta(0, b'{"type":"text_delta","text":"Half"}'))  # fmt: skip
    assert frame.startswith(first)
    error = orjson.loads(frame[len(first) :].split(b"data: ")[1])
    assert error == {
        "type": "error",
        "error": {"details": None, "type": "overloaded_error", "message": raised.value.message},
        "request_id": "req_1",
    }
    assert frame.endswith(b"}\n\n") and b"id: s1:2" not in frame  # nothing to resume after


def test_a_restart_before_anything_was_shown_is_invisible() -> None:
    out = render(log(START, Queued(1), Reset(), "Hi", DONE))
    assert out == entry(
        3, MESSAGE_START, start(0, b'{"type":"text","text":""}'), PING,
        delta(0, b'{"type":"text_delta","text":"Hi"}'),
    ) + entry(4, stop(0), END_TURN, STOP)  # fmt: skip


def test_a_tool_call_that_arrived_whole_is_a_block_of_its_own() -> None:
    out = render(log(START, "Hi", ToolUse("toolu_1", "t", {"a": 1}), DONE))
    assert start(1, b'{"type":"tool_use","id":"toolu_1","name":"t","input":{}}') in out
    assert delta(1, b'{"type":"input_json_delta","partial_json":"{\\"a\\":1}"}') in out
    assert stop(1) in out


def test_two_readers_share_each_entrys_encoding() -> None:
    entries = log(START, "Hi", Thinking("t"), DONE)
    first = render(entries)
    assert render(entries) == first
    for e in entries[1:3]:
        cached = e.encoded(NAME, lambda _: pytest.fail("encoded twice"))
        assert cached in first
    assert entries[1].encoded(NAME, lambda _: b"") == b'{"type":"text_delta","text":"Hi"}'


def test_the_usage_of_an_answer_that_took_two_calls_is_their_sum() -> None:
    summed = Done("end_turn", {"input_tokens": 24, "output_tokens": 30}, 0.0)
    out = render(log(START, "Hi", summed))
    assert b'"usage":{"input_tokens":24,"output_tokens":30}' in out
    assert b'"usage":{"input_tokens":12,"output_tokens":1}' in out  # message_start's


@pytest.mark.parametrize(
    ("code", "error_type", "status", "retry"),
    [
        ("overloaded", "overloaded_error", 529, "false"),
        ("shutdown", "overloaded_error", 529, "true"),
        ("rate_limit", "rate_limit_error", 429, "false"),
        ("budget_exceeded", "rate_limit_error", 429, "false"),
        ("invalid_request", "invalid_request_error", 400, "false"),
        ("not_found", "not_found_error", 404, "false"),
        ("request_too_large", "request_too_large", 413, "false"),
        ("cancelled", "conflict_error", 409, "false"),
        ("authentication", "api_error", 500, "false"),  # the gateway's own key, refused
        ("incomplete_block", "api_error", 500, "false"),
    ],
)
def test_a_stream_that_failed_first_is_claudes_http_error(
    code: str, error_type: str, status: int, retry: str
) -> None:
    failed = Failed("why", code, code == "shutdown", {}, 0.0)
    error = failure_before_answer(log(START, Queued(1), failed))
    assert error is not None
    assert (error.status, error.error_type, error.message) == (status, error_type, "why")
    assert error.headers == {"x-should-retry": retry}
    if code != "authentication":
        assert error_type_of(code) == error_type
    assert failure_before_answer(log(START, "Hi", failed)) is None  # it had begun


def test_the_whole_message_is_what_followed_the_last_reset() -> None:
    entries = log(
        START, "Lost", Reset(), Thinking("T"), ThinkingSignature("s"), "Kept",
        ToolUseStart("toolu_1", "t"), ToolInput('{"q":1}'), ToolUse("toolu_1", "t", {"q": 1}),
        Done("tool_use", USAGE, 0.0, stop_sequence=None),
    )  # fmt: skip
    message = orjson.loads(whole_message(SID, entries, OPENING))
    assert message == {
        "id": "msg_s1", "type": "message", "role": "assistant", "model": "claude-haiku-4-5",
        "content": [
            {"type": "thinking", "thinking": "T", "signature": "s"},
            {"type": "text", "text": "Kept"},
            {"type": "tool_use", "id": "toolu_1", "name": "t", "input": {"q": 1}},
        ],
        "stop_reason": "tool_use", "stop_sequence": None, "usage": USAGE,
    }  # fmt: skip
