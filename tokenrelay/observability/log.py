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

import logging
import sys
from collections.abc import MutableMapping
from typing import Any, Literal, TextIO

import orjson
import structlog
from structlog.contextvars import merge_contextvars
from structlog.stdlib import ProcessorFormatter, add_log_level, add_logger_name

LogFormat = Literal["json", "console"]

# A `log_event`'s record carries the event's name and fields as attributes too (`event`,
# `fields`), for whoever reads records rather than lines (a test's caplog).
FIELDS = "fields"


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
        logger.log(level, event, exc_info=exc_info, extra={"event": event, FIELDS: fields})


def default_format(stream: TextIO) -> LogFormat:
    """Readable lines for a person at a terminal; JSON for everything else."""
    return "console" if stream.isatty() else "json"


def configure_logging(fmt: LogFormat, level: str = "info", stream: TextIO | None = None) -> None:
    """Send every log record of the process, at `level` and above, to `stream`
    (stdout) as `fmt`: one JSON object a line, or structlog's console lines."""
    out = stream or sys.stdout
    timestamper = structlog.processors.TimeStamper(fmt="iso", utc=True)
    shared: list[Any] = [_event_fields, merge_contextvars, add_log_level, add_logger_name]
    shared.append(timestamper)
    final: list[Any] = (
        [structlog.processors.format_exc_info, structlog.processors.JSONRenderer(_dumps)]
        if fmt == "json"
        else [structlog.dev.ConsoleRenderer(colors=out.isatty())]
    )
    formatter = ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[ProcessorFormatter.remove_processors_meta, *final],
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(level.upper())
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            merge_contextvars,
            add_log_level,
            add_logger_name,
            timestamper,
            ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )


def _event_fields(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> Any:
    """A `log_event`'s fields become keys of the line, before the context is merged
    (which only fills keys the event did not set)."""
    fields = getattr(event_dict.get("_record"), FIELDS, None)
    if fields:
        for key, value in fields.items():
            if value is not None:
                event_dict[key] = value
    return event_dict


def _dumps(value: Any, **_: Any) -> str:
    # default=str: an exception or a path given as a field is logged as its text.
    return orjson.dumps(value, default=str, option=orjson.OPT_NON_STR_KEYS).decode()
