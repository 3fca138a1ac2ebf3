"""Claude's event stream as bytes and as frames, read with httpx (not our code): for
tests that compare what `/v1/messages` sends with what Claude (or the simulator)
sends, byte for byte, and that resume it."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

import httpx

MODEL = "claude-haiku-4-5"
MESSAGE_ID = re.compile(rb'"id":"msg_[A-Za-z0-9_-]+"')


def body(prompt: str, *, stream: bool = True, **params: Any) -> dict[str, Any]:
    return {
        "model": MODEL,
        "max_tokens": 1024,
        "stream": stream,
        "messages": [{"role": "user", "content": prompt}],
        **params,
    }


@dataclass
class Frame:
    event: str
    data: dict[str, Any]
    id: str | None

    @property
    def type(self) -> str:
        return str(self.data["type"])


def frames(raw: bytes) -> list[Frame]:
    """Every event of an SSE body: its name, its JSON, its `id:` when it has one."""
    out = []
    for block in raw.decode().split("\n\n"):
        if not block.strip():
            continue
        fields: dict[str, str] = {}
        for line in block.split("\n"):
            name, _, value = line.partition(": ")
            fields[name] = value
        out.append(Frame(fields["event"], json.loads(fields["data"]), fields.get("id")))
    return out


def without_ids(raw: bytes) -> bytes:
    """The stream with its `id:` lines left out and its message id made `msg_X`: what
    Claude itself would send, ids aside."""
    kept = b"".join(line for line in raw.splitlines(keepends=True) if not line.startswith(b"id: "))
    return MESSAGE_ID.sub(b'"id":"msg_X"', kept)


def post(url: str, payload: dict[str, Any], **headers: str) -> httpx.Response:
    """One `POST /v1/messages` (or the simulator's), read whole."""
    return httpx.post(f"{url}/v1/messages", json=payload, headers=headers, timeout=30)


def text_of(frames_: list[Frame]) -> str:
    return "".join(
        f.data["delta"]["text"]
        for f in frames_
        if f.type == "content_block_delta" and f.data["delta"]["type"] == "text_delta"
    )
