"""Structured logs as an operator reads them: one JSON object a line (the access log's
too), readable lines on `--log-format console`, the request id echoed
on every response and carried by every line of the stream it started, and an access
log that leaves out the query string (where an EventSource request's prompt is)."""

from __future__ import annotations

import asyncio
import io
import logging
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from structlog.contextvars import bind_contextvars, clear_contextvars

from tests.support import (
    Read,
    Stack,
    assert_error,
    log_events,
    log_lines,
    read_stream,
    run_stack,
    start,
    unique,
)
from tokenrelay.observability.log import (
    FLUSH_AFTER_S,
    MAX_HELD,
    JsonLines,
    LineHandler,
    line_formatter,
    log_event,
)
from tokenrelay.usage import migrate

ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")
GENERATED_ID = re.compile(r"^req_[0-9a-f]{24}$")


@dataclass
class Logged:
    log: str
    posted: Read  # with an X-Request-ID of its own
    browser: Read  # an EventSource-style GET with the prompt in its query, no X-Request-ID
    query_prompt: str


@pytest.fixture(scope="module")
async def logged(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Logged]:
    tmp = tmp_path_factory.mktemp("logs")
    query_prompt = unique("Secret question in a query string [[sim:tokens=6]]")
    with run_stack(tmp, "--access-log") as stack:
        async with httpx.AsyncClient(base_url=stack.gateway, timeout=30) as client:
            posted = await start(
                client, {"prompt": unique("Logged [[sim:tokens=7]]")},
                headers={"X-Request-ID": "req-logged-1"},
            )  # fmt: skip
            browser = await read_stream(
                client, "GET", "/api/stream-response", params={"prompt": query_prompt}
            )
    yield Logged(stack.log_text(), posted, browser, query_prompt)


def test_every_line_is_one_json_object_with_event_level_time_and_logger(
    logged: Logged,
) -> None:
    lines = logged.log.splitlines()
    parsed = log_lines(logged.log)
    assert len(parsed) == len(lines) > 10  # nothing but JSON lines
    for line in parsed:
        assert {"event", "level", "timestamp", "logger"} <= set(line), line
        assert line["level"] in {"debug", "info", "warning", "error", "critical"}, line
        assert ISO_UTC.match(line["timestamp"]), line
    loggers = {line["logger"] for line in parsed}
    # The access log goes through the same pipeline as ours; the new ledger is made
    # at its newest schema (no Alembic lines).
    assert {"tokenrelay.access", "tokenrelay.usage"} <= loggers
    assert [e["revision"] for e in log_events(logged.log, "ledger_created")] == [migrate.HEAD]
    assert {"tokenrelay.server", "tokenrelay.streams"} <= loggers
    assert [e["event"] for e in log_events(logged.log, "serving")] == ["serving"]


def test_a_streams_lines_carry_the_request_id_the_client_sent_or_was_given(
    logged: Logged,
) -> None:
    for read, request_id in (
        (logged.posted, "req-logged-1"),
        (logged.browser, logged.browser.headers["x-request-id"]),
    ):
        assert read.headers["x-request-id"] == request_id
        stream_id = read.events[0].stream_id
        # The start event says which request started the stream, too.
        assert read.events[0].data["request_id"] == request_id
        lines = [line for line in log_lines(logged.log) if line.get("stream_id") == stream_id]
        assert sorted(line["event"] for line in lines) == [
            "first_token", "http_request", "stream_complete", "stream_start",
        ]  # fmt: skip
        assert {line["request_id"] for line in lines} == {request_id}
    assert GENERATED_ID.match(logged.browser.headers["x-request-id"])


def test_the_access_log_leaves_out_the_query_string(logged: Logged) -> None:
    requests = [
        (line["method"], line["path"], line["status"])
        for line in log_lines(logged.log)
        if line["event"] == "http_request" and line["path"].startswith("/api/")
    ]
    assert requests == [("POST", "/api/stream-response", 200), ("GET", "/api/stream-response", 200)]
    words = logged.query_prompt.partition(" [[")[0]
    assert words not in logged.log
    assert httpx.URL("/", params={"prompt": words}).query.decode() not in logged.log


def test_console_format_is_readable_lines_not_json(tmp_path: Path) -> None:
    with run_stack(tmp_path, "--log-format", "console") as stack:
        posted = httpx.post(
            f"{stack.gateway}/api/stream-response",
            json={"prompt": unique("Console [[sim:tokens=4]]")},
            headers={"X-Request-ID": "req-console-1"},
            timeout=30,
        )
        assert posted.status_code == 200
        stream_id = posted.headers["x-stream-id"]
    text = stack.log_text()
    assert log_lines(text) == [] and "\x1b[" not in text  # no JSON, no colours off a tty
    [complete] = [line for line in text.splitlines() if " stream_complete " in line]
    # time [level] event [logger] key=value …
    head = r"\[info\s*\] stream_complete\s+\[tokenrelay.streams\] "
    assert re.match(ISO_UTC.pattern.removesuffix("$") + " " + head, complete), complete
    pairs = complete.split("[tokenrelay.streams] ")[1].split()
    fields = dict(pair.split("=", 1) for pair in pairs)
    assert (fields["request_id"], fields["stream_id"], fields["output_tokens"]) == (
        "req-console-1", stream_id, "4",
    )  # fmt: skip


async def test_every_response_echoes_its_request_id(stack: Stack) -> None:
    sent = {"X-Request-ID": "req-echo-1"}
    async with httpx.AsyncClient(base_url=stack.gateway, timeout=30) as client:
        answers = [
            await client.get("/healthz", headers=sent),
            await client.get("/metrics", headers=sent),
            await client.get("/no/such/page", headers=sent),
            await client.post("/api/stream-response", content=b"{", headers=sent),
            await client.post("/api/stream-response", content=b"x" * (2 << 20), headers=sent),
        ]
        assert [a.status_code for a in answers] == [200, 200, 404, 400, 413]
        assert [a.headers.get_list("x-request-id") for a in answers] == [["req-echo-1"]] * 5
        assert_error(answers[4], 413, "request_too_large")
        # Without one, or with one that is not a short printable ASCII string, a new one.
        for headers in ({}, {"X-Request-ID": "x" * 129}, {"X-Request-ID": "tab\there"}):
            given = (await client.get("/healthz", headers=headers)).headers["x-request-id"]
            assert GENERATED_ID.match(given), given
        streamed = await start(client, {"prompt": unique("Echo [[sim:tokens=3]]")}, headers=sent)
        assert streamed.headers.get_list("x-request-id") == ["req-echo-1"]


def test_a_log_events_json_line_is_the_one_structlogs_chain_makes() -> None:
    """`JsonLines` makes a `log_event`'s line itself: the same keys, in the same order,
    with the same values as the chain it stands in for (all but the time it was made)."""
    formatter = line_formatter("json")
    assert isinstance(formatter, JsonLines)
    lines: list[tuple[str, str]] = []

    class Both(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append((formatter.format(record), formatter.chain.format(record)))

    logger = logging.getLogger("tokenrelay.test-lines")
    logger.addHandler(Both())
    logger.propagate, logger.level = False, logging.INFO
    clear_contextvars()
    try:
        log_event(logger, "plain")
        bind_contextvars(request_id="req-1", stream_id="s-bound")
        log_event(logger, "stream_complete", stream_id="s-own", output_tokens=3, cost_usd=2.5e-05,
                  missing=None, level_name="x", path=Path("/tmp/a b"), error=ValueError("bad"),
                  text="naïve ☃ \"quoted\"")  # fmt: skip
        log_event(logger, "upstream_retry", level=logging.WARNING, attempt=2)
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            log_event(logger, "stream_error", level=logging.ERROR, exc_info=True, kind="x")
        logger.warning("a foreign line: %s", 42)
    finally:
        clear_contextvars()
    assert len(lines) == 5
    for direct, chain in lines:
        made, expected = orjson.loads(direct), orjson.loads(chain)
        assert ISO_UTC.match(made.pop("timestamp")) and ISO_UTC.match(expected.pop("timestamp"))
        assert list(made.items()) == list(expected.items())
    # The context's keys come in the order structlog made their variables in this process.
    keys = [list(orjson.loads(line)) for line, _ in lines[:3]]
    assert keys[0] == ["event", "level", "logger", "timestamp"]
    assert keys[1] == [
        "event", "stream_id", "output_tokens", "cost_usd", "level_name", "path", "error",
        "text", "request_id", "level", "logger", "timestamp",
    ]  # fmt: skip
    assert (keys[2][:2], set(keys[2][2:4]), keys[2][4:]) == (
        ["event", "attempt"], {"request_id", "stream_id"}, ["level", "logger", "timestamp"],
    )  # fmt: skip
    second = orjson.loads(lines[1][0])
    assert (second["stream_id"], second["path"], second["error"]) == ("s-own", "/tmp/a b", "bad")
    assert "RuntimeError: boom" in orjson.loads(lines[3][0])["exception"]
    assert orjson.loads(lines[4][0])["event"] == "a foreign line: 42"


class CountingStream(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.flushes = self.writes = 0
        self.written = asyncio.Event()

    def write(self, text: str) -> int:
        self.writes += 1
        self.written.set()
        return super().write(text)

    def flush(self) -> None:
        self.flushes += 1
        super().flush()


def _logger_to(
    stream: io.StringIO, flush_after: float = FLUSH_AFTER_S
) -> tuple[logging.Logger, LineHandler]:
    handler = LineHandler(stream, flush_after=flush_after)
    handler.setFormatter(line_formatter("json"))
    log = logging.getLogger(f"tokenrelay.test.{unique('lines')}")
    log.propagate = False
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    return log, handler


async def _until_written(stream: CountingStream, writes: int) -> None:
    async with asyncio.timeout(10):
        while stream.writes < writes:
            stream.written.clear()
            await stream.written.wait()


async def test_lines_held_are_written_once_in_order_after_a_twentieth_of_a_second() -> None:
    """Held by the handler, not the stream (whose buffer `PYTHONUNBUFFERED=1` removes):
    one write and one flush for the lines of `FLUSH_AFTER_S`, a record's among them in
    its place; none before the loop has run the flush."""
    stream = CountingStream()
    log, handler = _logger_to(stream)
    try:
        for n in range(5):
            log_event(log, "line", n=n)
            if n == 2:
                log.info("a record's line")  # formatted by the chain, not the fast path
        for _ in range(3):
            await asyncio.sleep(0)  # turns of the loop end: the lines wait
        assert (stream.writes, stream.flushes, stream.getvalue()) == (0, 0, "")
        await _until_written(stream, 1)
        assert (stream.writes, stream.flushes) == (1, 1)
        lines = [orjson.loads(line) for line in stream.getvalue().splitlines()]
        assert [line.get("n", line["event"]) for line in lines] == [
            0, 1, 2, "a record's line", 3, 4,
        ]  # fmt: skip
        log_event(log, "line", n=5)
        await _until_written(stream, 2)
        assert (stream.writes, stream.flushes) == (2, 2)
        assert orjson.loads(stream.getvalue().splitlines()[-1])["n"] == 5
        await asyncio.sleep(FLUSH_AFTER_S * 2)
        assert (stream.writes, stream.flushes) == (2, 2)  # nothing more: no write
    finally:
        log.removeHandler(handler)


async def test_a_held_line_is_made_as_it_was_when_logged() -> None:
    """Its fields, the context's variables and the time are those of the `log_event`,
    though the line is made when it is written."""
    stream = CountingStream()
    log, handler = _logger_to(stream, flush_after=3600)
    clear_contextvars()
    try:
        bind_contextvars(request_id="req-then", stream_id="s-then")
        log_event(log, "line", n=1, stream_id="s-own")
        logged_by = datetime.now(UTC)
        bind_contextvars(request_id="req-now")
        clear_contextvars()
        await asyncio.sleep(0.01)
        handler.flush()
    finally:
        clear_contextvars()
        log.removeHandler(handler)
    line = orjson.loads(stream.getvalue())
    at = datetime.fromisoformat(line.pop("timestamp"))
    assert at <= logged_by
    assert list(line.items()) == [
        ("event", "line"), ("n", 1), ("stream_id", "s-own"), ("request_id", "req-then"),
        ("level", "info"), ("logger", log.name),
    ]  # fmt: skip


async def test_a_thousand_held_lines_are_written_at_once() -> None:
    stream = CountingStream()
    log, handler = _logger_to(stream, flush_after=3600)
    try:
        for n in range(MAX_HELD - 1):
            log_event(log, "line", n=n)
        assert stream.writes == 0
        log_event(log, "line", n=MAX_HELD - 1)
        assert (stream.writes, stream.flushes) == (1, 1)
        assert [orjson.loads(line)["n"] for line in stream.getvalue().splitlines()] == list(
            range(MAX_HELD)
        )
    finally:
        log.removeHandler(handler)


def test_lines_held_for_a_loop_that_ended_go_out_with_the_next_line() -> None:
    """Their flush was asked of a loop that will not run it: the next line, from
    another loop, writes them first."""
    stream = CountingStream()
    log, handler = _logger_to(stream, flush_after=3600)

    async def line(n: int) -> None:
        log_event(log, "line", n=n)

    try:
        asyncio.run(line(0))
        assert stream.writes == 0
        asyncio.run(line(1))
        assert stream.writes == 1
        handler.flush()
        assert [orjson.loads(line)["n"] for line in stream.getvalue().splitlines()] == [0, 1]
    finally:
        log.removeHandler(handler)


def test_lines_held_when_the_process_exits_are_written() -> None:
    """Even after a `dictConfig` (granian makes one as it starts), which takes every
    handler made before it off the list `logging` flushes at exit."""
    program = """
import asyncio, logging, logging.config, sys
from tokenrelay.observability.log import configure_logging, log_event
configure_logging("json", "info", sys.stdout)
logging.config.dictConfig({"version": 1, "disable_existing_loggers": False})
async def main():
    for n in range(3):
        log_event(logging.getLogger("tokenrelay.exit"), "held", n=n)
asyncio.run(main())
"""
    done = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=60, check=True
    )
    assert [(line["event"], line["n"]) for line in log_lines(done.stdout)] == [
        ("held", 0), ("held", 1), ("held", 2),
    ]  # fmt: skip


def test_outside_a_running_loop_each_line_is_flushed_at_once() -> None:
    stream = CountingStream()
    log, handler = _logger_to(stream)
    try:
        log_event(log, "line", n=0)
        log_event(log, "line", n=1)
        assert (stream.writes, stream.flushes) == (2, 2)
        assert [orjson.loads(line)["n"] for line in stream.getvalue().splitlines()] == [0, 1]
    finally:
        log.removeHandler(handler)


def test_with_the_line_handler_alone_a_log_event_makes_its_line_without_a_record(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The one handler of a serving gateway gets a `log_event`'s line directly; a second
    handler anywhere (a test's caplog, a library's) gets records again, and the line
    is the same either way."""
    stream = CountingStream()
    only = LineHandler(stream)
    only.setFormatter(line_formatter("json"))
    monkeypatch.setattr(logging.getLogger(), "handlers", [only])
    made: list[str] = []
    real = logging.Logger.makeRecord

    def counting(self: logging.Logger, *args: Any, **kwargs: Any) -> logging.LogRecord:
        made.append(args[0])
        return real(self, *args, **kwargs)

    monkeypatch.setattr(logging.Logger, "makeRecord", counting)
    logger = logging.getLogger(f"tokenrelay.test.{unique('direct')}")
    logger.setLevel(logging.INFO)
    clear_contextvars()
    bind_contextvars(request_id="req-direct")
    try:
        log_event(logger, "direct_line", n=1, missing=None)
        assert made == []
        other = logging.NullHandler()
        monkeypatch.setattr(logging.getLogger(), "handlers", [only, other])
        log_event(logger, "direct_line", n=1, missing=None)
        assert made == [logger.name]
    finally:
        clear_contextvars()
    first, second = (orjson.loads(line) for line in stream.getvalue().splitlines())
    assert ISO_UTC.match(first.pop("timestamp")) and ISO_UTC.match(second.pop("timestamp"))
    assert list(first.items()) == list(second.items()) == [
        ("event", "direct_line"), ("n", 1), ("request_id", "req-direct"), ("level", "info"),
        ("logger", logger.name),
    ]  # fmt: skip
