"""The test helpers that decide what a test sees: the log event parser and the wait."""

from __future__ import annotations

import time

import pytest

from tests.support import eventually, log_events, log_lines

LOG = """\
WARNING: no authentication on 0.0.0.0
{"event":"upstream_retry","stream_id":"abc","retry":1,"delay_s":0.05,"status":529,\
"error_type":"overloaded_error","level":"warning","logger":"tokenrelay.producer",\
"timestamp":"2026-12-01T10:00:00.001Z","request_id":"req_1"}
{"event":"upstream_retry_given_up","stream_id":"abc","level":"info"}
{"event":"upstream_retry","stream_id":"def","retry":2,"delay_s":0.1234,"status":429,\
"error_type":"rate_limit_error"}
{"event":"http_request","path":"/readyz","note":"event=upstream_retry","level":"info"}
{"event":"handover","count":1,"level":"info","logger":"tokenrelay.streams"}
"""


def test_log_events_gives_an_events_own_fields_as_text() -> None:
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
            "delay_s": "0.123",
            "status": "429",
            "error_type": "rate_limit_error",
        },
    ]


def test_log_events_matches_the_whole_event_name_only() -> None:
    assert log_events(LOG, "upstream") == []
    assert log_events(LOG, "retry") == []
    assert [e["stream_id"] for e in log_events(LOG, "upstream_retry_given_up")] == ["abc"]
    assert log_events(LOG, "handover") == [{"event": "handover", "count": "1"}]


def test_log_lines_keep_every_key_with_its_json_type() -> None:
    first = log_lines(LOG)[0]
    assert (first["retry"], first["delay_s"], first["request_id"]) == (1, 0.05, "req_1")
    assert len(log_lines(LOG)) == 5  # the warning before it is not a JSON line


def test_log_lines_refuse_a_line_that_is_not_json() -> None:
    line = '{"event": "handover", count=1}'
    with pytest.raises(ValueError) as raised:
        log_lines(line)
    assert str(raised.value) == f"not a JSON line: {line!r}"


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
