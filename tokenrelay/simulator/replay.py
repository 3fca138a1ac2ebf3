"""Replays: a hand-written Claude stream sent back verbatim, byte for byte.

`tokenrelay simulate --replay-dir DIR` serves `DIR/NAME.sse` to a streaming request
whose prompt says `[[sim:replay=NAME]]`, one event per write, whatever else it asks:
the way to put in front of the gateway exactly what Claude sends, every event type
included (thinking with its signature, tool input in fragments, pings, usage), and
compare what comes out the other side.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from tokenrelay.simulator.engine import SimError

REPLAY = re.compile(r"\[\[sim:replay=([a-z0-9_-]{1,64})\]\]")


def requested(body: dict[str, Any]) -> str | None:
    """The replay a request's user turns ask for, if any."""
    messages = body.get("messages")
    for message in messages if isinstance(messages, list) else []:
        if not isinstance(message, dict) or message.get("role") != "user":
            continue
        content = message.get("content")
        texts: list[object] = [content] if isinstance(content, str) else []
        if isinstance(content, list):
            texts = [b.get("text") for b in content if isinstance(b, dict)]
        for text in texts:
            found = REPLAY.search(text) if isinstance(text, str) else None
            if found:
                return found.group(1)
    return None


class Replays:
    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def events(self, name: str, body: dict[str, Any]) -> list[bytes]:
        """The stream's events (each with its blank line), in order; SimError when
        there is no such replay or the request does not stream."""
        if not body.get("stream"):
            raise SimError(400, f"replay {name}: a replay is a stream; ask with stream: true")
        path = self.directory / f"{name}.sse"
        if not path.is_file():
            raise SimError(400, f"replay {name}: no {path.name} in the replay directory")
        raw = path.read_bytes()
        return [event + b"\n\n" for event in raw.split(b"\n\n") if event.strip()]
