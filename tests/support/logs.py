"""The gateway's structured log, read back: one JSON object a line.

`log_lines` gives every line as the object it is. `log_events` gives the lines of
one event as the event's own fields, spelled as text (`"count": "1"`), without what
every line carries besides (timestamp, level, logger) nor the request's id, which
`log_lines` keeps: tests assert on an event's fields, never on a message's wording.
Lines that are not JSON objects (a warning printed before logging starts) are
skipped; a line that starts like one but is not is an error, not a skipped line.
"""

from __future__ import annotations

import json
from typing import Any

# What a line carries beside the event's fields.
ENVELOPE = frozenset({"timestamp", "level", "logger", "request_id"})


def log_lines(text: str) -> list[dict[str, Any]]:
    """Every JSON line of `text`, in order."""
    lines = []
    for line in text.splitlines():
        if not line.startswith("{"):
            continue
        try:
            parsed = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"not a JSON line: {line!r}") from exc
        if not isinstance(parsed, dict) or "event" not in parsed:
            raise ValueError(f"not a log event: {line!r}")
        lines.append(parsed)
    return lines


def log_events(text: str, name: str) -> list[dict[str, str]]:
    """The fields of every `name` event in `text`, in order, `event` included."""
    return [
        {key: _text(value) for key, value in line.items() if key not in ENVELOPE}
        for line in log_lines(text)
        if line["event"] == name
    ]


def _text(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}".rstrip("0").rstrip(".")
    return value if isinstance(value, str) else json.dumps(value)
