"""The gateway's structured log events, read back from its log.

Each event is one line, `event=<name>` then space-separated `key=value` pairs in
logfmt (a value with spaces is double-quoted), after whatever prefix the log format
puts first (time, level, logger). Tests assert on these events and their fields,
never on the wording of a message.
"""

from __future__ import annotations

import re
import shlex


def log_events(text: str, name: str) -> list[dict[str, str]]:
    """The fields of every `event=<name>` line in `text`, in order, `event` included."""
    marker = re.compile(rf"(?:^|\s)(event={re.escape(name)})(?=\s|$)")
    events = []
    for line in text.splitlines():
        match = marker.search(line)
        if match is None:
            continue
        fields: dict[str, str] = {}
        for pair in shlex.split(line[match.start(1) :]):
            key, sep, value = pair.partition("=")
            # A word that is not key=value means the line is not logfmt: say so, rather
            # than let a test pass or fail on half-parsed fields.
            if not sep or not key:
                raise ValueError(f"not a key=value pair: {pair!r} in {line!r}")
            fields[key] = value
        events.append(fields)
    return events
