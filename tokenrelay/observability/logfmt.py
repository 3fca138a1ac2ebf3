"""Structured log events, one logfmt line each: `event=<name> key=value …`.

An event name and its fields are the contract (tests and log pipelines match on
them), the wording around them is not. Values with spaces, quotes or `=` are
double-quoted. Nothing here runs per token: events mark what happens to a stream
or an upstream attempt, never a delta.
"""

from __future__ import annotations

import logging
from typing import Any


def _value(value: Any) -> str:
    text = f"{value:.3f}".rstrip("0").rstrip(".") if isinstance(value, float) else str(value)
    if not text or any(c in text for c in ' "=\\\n'):
        escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        return f'"{escaped}"'
    return text


def logfmt(event: str, fields: dict[str, Any]) -> str:
    parts = [f"event={event}"]
    parts += [f"{key}={_value(value)}" for key, value in fields.items() if value is not None]
    return " ".join(parts)


def log_event(
    logger: logging.Logger, event: str, *, level: int = logging.INFO, **fields: Any
) -> None:
    """Log `event` with its fields; `extra` carries them too, for a structured handler."""
    if logger.isEnabledFor(level):
        logger.log(level, logfmt(event, fields), extra={"event": event, "fields": fields})
