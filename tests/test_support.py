"""The test helpers that decide what a test sees: the log event parser and the wait."""

from __future__ import annotations

import time

import pytest

from tests.support import eventually, log_events

LOG = """\
2026-12-01 10:00:00,001 INFO tokenrelay.producer event=upstream_retry stream_id=abc retry=1 \
delay_s=0.05 status=529 error_type=overloaded_error
2026-12-01 10:00:00,002 INFO tokenrelay.producer event=upstream_retry_given_up stream_id=abc
event=upstream_retry stream_id=def retry=2 delay_s=0.1 status=429 error_type=rate_limit_error
WARNING tokenrelay.producer event=store_lost stream_id=abc error="Connection refused by peer"
INFO uvicorn.access 127.0.0.1 "GET /readyz?event=upstream_retry HTTP/1.1" 200
INFO tokenrelay.manager prevent=upstream_retry stream_id=xyz
INFO tokenrelay.manager event=handover count=1
"""


def test_log_events_parses_each_line_of_one_event_from_event_on() -> None:
    assert log_events(LOG, "upstream_retry") == [
        {
            "event": "upstream_retry",
            "stream_id": "abc",
            "retry": "1",
            "delay_s": "0.05",
            "status": "529",
            "error_type": "overloaded_error",
        },
        {
            "event": "upstream_retry",
            "stream_id": "def",
            "retry": "2",
            "delay_s": "0.1",
            "status": "429",
            "error_type": "rate_limit_error",
        },
    ]


def test_log_events_unquotes_values_with_spaces() -> None:
    assert log_events(LOG, "store_lost") == [
        {"event": "store_lost", "stream_id": "abc", "error": "Connection refused by peer"}
    ]


def test_log_events_matches_the_name_as_a_whole_token_only() -> None:
    assert log_events(LOG, "upstream") == []
    assert log_events(LOG, "retry") == []
    assert [e["stream_id"] for e in log_events(LOG, "upstream_retry_given_up")] == ["abc"]
    assert log_events(LOG, "handover") == [{"event": "handover", "count": "1"}]


def test_log_events_refuses_a_line_that_is_not_logfmt() -> None:
    line = "INFO x event=handover handed 1 streams"
    with pytest.raises(ValueError) as raised:
        log_events(line, "handover")
    assert str(raised.value) == f"not a key=value pair: 'handed' in {line!r}"


def test_eventually_returns_the_first_truthy_value() -> None:
    calls: list[int] = []

    def third_time() -> list[int]:
        calls.append(1)
        return calls if len(calls) == 3 else []

    assert eventually(third_time, what="a third call") == [1, 1, 1]


def test_eventually_names_what_it_waited_for_when_it_gives_up() -> None:
    started = time.monotonic()
    with pytest.raises(TimeoutError, match=r"^timed out after 0.2 s waiting for the moon$"):
        eventually(lambda: False, what="the moon", within=0.2)
    assert time.monotonic() - started >= 0.2
