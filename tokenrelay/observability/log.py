"""Structured logs: one JSON object a line in production, readable lines in a terminal.

Everything that logs goes through the standard library's `logging` to one handler on
the root logger, whose structlog `ProcessorFormatter` makes each record an event dict:
`event`, `level`, `timestamp`, `logger`, the event's fields, and the context bound
with structlog's contextvars (`request_id` by the request-id middleware, `stream_id`
by the routes and in each producer's task). The gateway's own events (`log_event`),
the access log (`--access-log`), alembic's: the same pipeline, the same shape. A
structlog logger (`structlog.get_logger()`) ends in the same handler too.

An event name and its fields are the contract (tests, dashboards and log pipelines
match on them). Nothing here runs per token: events mark what happens to a stream or
an upstream attempt, never a delta. Prompt text, answers and credentials are never a
field: lengths only.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import contextvars
import logging
import sys
from collections.abc import MutableMapping
from datetime import UTC, datetime
from time import time
from typing import Any, Literal, NamedTuple, TextIO, cast

import orjson
import structlog
from structlog.contextvars import STRUCTLOG_KEY_PREFIX, merge_contextvars
from structlog.stdlib import ProcessorFormatter, add_log_level, add_logger_name

LogFormat = Literal["json", "console"]

# A `log_event`'s record carries the event's name and fields as attributes too (`event`,
# `fields`), for whoever reads records rather than lines (a test's caplog).
FIELDS = "fields"

# How long a line may wait to be written: a write is a `write(2)` that lets go of the
# GIL, and a line made at once is made amid a request's work, where it costs five
# times what it does among other lines (docs/benchmarks.md). Lines held longer than
# this, or this many, are written; so are they all when the process exits.
FLUSH_AFTER_S = 0.05
MAX_HELD = 1000


def log_event(
    logger: logging.Logger,
    event: str,
    *,
    level: int = logging.INFO,
    exc_info: bool = False,
    **fields: Any,
) -> None:
    """Log `event` with its fields as keys of the line (a None field is left out)."""
    if logger.isEnabledFor(level):
        handler = None if exc_info else _only_line_handler(logger, level)
        if handler is not None:
            handler.hold_event(event, fields, logging.getLevelName(level), logger.name)
            return
        # Made here rather than by `logger.log`, which walks the stack for the caller's
        # file and line: no line shows them.
        record = logger.makeRecord(
            logger.name, level, "", 0, event, (), sys.exc_info() if exc_info else None,
            extra={"event": event, FIELDS: fields},
        )  # fmt: skip
        logger.handle(record)


def _only_line_handler(logger: logging.Logger, level: int) -> LineHandler | None:
    """The `LineHandler` making JSON lines, when it is the one place a record of
    `logger` at `level` would go, with no filter on the way: then the line can be
    written without a `LogRecord` and the handler chain around it (a third of a
    line's cost). Anything else (a test's caplog, another handler) gets records."""
    if logger.filters or logger.disabled:
        return None
    node: logging.Logger | None = logger
    while node is not None and node.parent is not None:
        if node.handlers or not node.propagate:
            return None
        node = node.parent
    if node is None or len(node.handlers) != 1:
        return None
    handler = node.handlers[0]
    if (
        type(handler) is LineHandler
        and type(handler.formatter) is JsonLines
        and not handler.filters
        and level >= handler.level
    ):
        return handler
    return None


def default_format(stream: TextIO) -> LogFormat:
    """Readable lines for a person at a terminal; JSON for everything else."""
    return "console" if stream.isatty() else "json"


def configure_logging(
    fmt: LogFormat,
    level: str = "info",
    stream: TextIO | None = None,
    *,
    flush_after: float = FLUSH_AFTER_S,
) -> None:
    """Send every log record of the process, at `level` and above, to `stream`
    (stdout) as `fmt`: one JSON object a line, or structlog's console lines, each
    written at most `flush_after` seconds after it was logged (`LineHandler`)."""
    out = stream or sys.stdout
    handler = LineHandler(out, flush_after=flush_after)
    handler.setFormatter(line_formatter(fmt, colors=out.isatty()))
    # No line shows a record's thread or process: not looked up for each one (the
    # logging HOWTO's "Optimization").
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(level.upper())
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            merge_contextvars,
            add_log_level,
            add_logger_name,
            TIMESTAMPER,
            ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )


TIMESTAMPER = structlog.processors.TimeStamper(fmt="iso", utc=True)


@atexit.register
def _write_held_lines() -> None:
    # Not left to `logging.shutdown`: a `dictConfig` (granian's, at its start) takes
    # every handler made before it off the list that flushes at exit.
    for handler in logging.getLogger().handlers:
        if isinstance(handler, LineHandler):
            handler.flush()


class _Event(NamedTuple):
    """A `log_event`'s line, not made yet: what it is made of, as it was when logged."""

    event: str
    fields: dict[str, Any]
    level_name: str
    logger_name: str
    context: contextvars.Context
    at: float

    def line(self) -> str:
        return json_line(
            self.event, self.fields, self.level_name, self.logger_name, self.context, self.at
        )


class LineHandler(logging.StreamHandler[TextIO]):
    """A `StreamHandler` that writes the lines of a twentieth of a second at once.

    Why: a stream logs three lines, and writing each as it comes was a tenth of what a
    request cost the event loop at one stream (docs/benchmarks.md): the write lets go
    of the GIL, for the server's own threads to take, and the line is made in the
    middle of the request's work. A `log_event`'s line (`hold_event`) is made when it
    is written, from what it was at the time: its fields, the context's variables, the
    clock. The lines are kept here rather than in the stream's buffer, which
    `PYTHONUNBUFFERED=1` (set in many container images) turns into a write per line;
    they go out together, in order, `flush_after` seconds after the first of them (0:
    at the end of the loop's turn), in one write. Outside a running loop (starting,
    stopping, another thread) a line is written and flushed at once, after those held."""

    def __init__(self, stream: TextIO, *, flush_after: float = FLUSH_AFTER_S) -> None:
        super().__init__(stream)
        self.flush_after = flush_after
        self._held: list[str | _Event] = []
        self._loop: asyncio.AbstractEventLoop | None = None  # the one asked to flush them

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception:  # as `StreamHandler.emit` does: a line must not fail its caller
            self.handleError(record)
            return
        self._hold(line)

    def hold_event(self, event: str, fields: dict[str, Any], level_name: str, name: str) -> None:
        """A `log_event`'s line, to be made when it is written."""
        self._hold(_Event(event, fields, level_name, name, contextvars.copy_context(), time()))

    def _hold(self, item: str | _Event) -> None:
        with self.lock or contextlib.nullcontext():
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                self._held.append(item)
                self._write_held()
                return
            if self._held and loop is not self._loop:
                self._write_held()  # their flush was asked of a loop that may never run it
            if not self._held:
                self._loop = loop
                if self.flush_after:
                    loop.call_later(self.flush_after, self.flush)
                else:
                    loop.call_soon(self.flush)
            self._held.append(item)
            if len(self._held) >= MAX_HELD:
                self._write_held()

    def flush(self) -> None:
        with self.lock or contextlib.nullcontext():
            if self._held:
                self._write_held()
            else:
                super().flush()

    def _write_held(self) -> None:
        held, self._held = self._held, []
        lines: list[str] = []
        for item in held:
            if type(item) is str:
                lines.append(item)
                continue
            try:
                lines.append(cast(_Event, item).line())
            except Exception:  # as `emit` does: one line's failure is not the others'
                self.handleError(logging.makeLogRecord({"msg": cast(_Event, item).event}))
        lines.append("")  # for the last line's terminator
        text = self.terminator.join(lines)
        try:
            self.stream.write(text)
            super().flush()
        except Exception:  # as `emit` does: a log line must not fail the caller
            self.handleError(logging.makeLogRecord({"msg": text}))


def line_formatter(fmt: LogFormat, *, colors: bool = False) -> logging.Formatter:
    """What makes a record its line: structlog's chain (for a `log_event`'s JSON line,
    `JsonLines`, which makes the same line directly)."""
    shared: list[Any] = [_event_fields, merge_contextvars, add_log_level, add_logger_name]
    shared.append(TIMESTAMPER)
    final: list[Any] = (
        [structlog.processors.format_exc_info, structlog.processors.JSONRenderer(_dumps)]
        if fmt == "json"
        else [structlog.dev.ConsoleRenderer(colors=colors)]
    )
    chain = ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[ProcessorFormatter.remove_processors_meta, *final],
    )
    return JsonLines(chain) if fmt == "json" else chain


class JsonLines(logging.Formatter):
    """The JSON line of a `log_event` record, made directly: the same keys in the same
    order as `ProcessorFormatter`'s chain makes them, at a third of its cost (it copies
    the record and runs eight processors; a stream logs three events). A record with
    an exception or a stack to render, or not from `log_event`, goes through the chain."""

    def __init__(self, chain: logging.Formatter) -> None:
        super().__init__()
        self.chain = chain

    def format(self, record: logging.LogRecord) -> str:
        fields = getattr(record, FIELDS, None)
        if fields is None or record.exc_info or record.stack_info:
            return self.chain.format(record)
        return json_line(record.getMessage(), fields, record.levelname, record.name)


def json_line(
    event: str,
    fields: dict[str, Any],
    level_name: str,
    logger_name: str,
    context: contextvars.Context | None = None,
    at: float | None = None,
) -> str:
    """A `log_event`'s JSON line, the keys in the order structlog's chain puts them: with
    the variables of `context` (else the current one's) and the time `at` (else now)."""
    line: dict[str, Any] = {"event": event}
    for key, value in fields.items():
        if value is not None:
            line[key] = value
    # As structlog's `get_contextvars`, in the same order.
    context = contextvars.copy_context() if context is None else context
    for var, value in context.items():
        name = var.name
        if value is not Ellipsis and name.startswith(STRUCTLOG_KEY_PREFIX):
            line.setdefault(name[_PREFIX_LEN:], value)
    line["level"] = level_name.lower()
    line["logger"] = logger_name
    # orjson writes a datetime as TimeStamper(fmt="iso", utc=True) does, in C.
    line["timestamp"] = datetime.now(tz=UTC) if at is None else datetime.fromtimestamp(at, UTC)
    return orjson.dumps(line, default=str, option=LINE_OPTIONS).decode()


_PREFIX_LEN = len(STRUCTLOG_KEY_PREFIX)


def _event_fields(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> Any:
    """A `log_event`'s fields become keys of the line, before the context is merged
    (which only fills keys the event did not set)."""
    fields = getattr(event_dict.get("_record"), FIELDS, None)
    if fields:
        for key, value in fields.items():
            if value is not None:
                event_dict[key] = value
    return event_dict


LINE_OPTIONS = orjson.OPT_NON_STR_KEYS | orjson.OPT_UTC_Z


def _dumps(value: Any, **_: Any) -> str:
    # default=str: an exception or a path given as a field is logged as its text.
    return orjson.dumps(value, default=str, option=orjson.OPT_NON_STR_KEYS).decode()
