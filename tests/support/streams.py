"""A test client for the `tokens` dialect, parsing SSE with httpx-sse (not our code)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import httpx
from httpx_sse import aconnect_sse


@dataclass
class Event:
    id: str
    stream_id: str
    seq: int
    data: dict[str, Any]
    retry: int | None = None

    @property
    def token(self) -> str | None:
        return self.data.get("token")


@dataclass
class Read:
    events: list[Event]
    headers: httpx.Headers

    @property
    def text(self) -> str:
        return text_of(self.events)

    @property
    def last_id(self) -> str:
        return self.events[-1].id


def text_of(events: list[Event]) -> str:
    return "".join(e.data["token"] for e in events if "token" in e.data)


async def read_stream(
    client: httpx.AsyncClient,
    method: str,
    url: str,
    *,
    stop_after: int | None = None,
    headers: dict[str, str] | None = None,
    **kwargs: Any,
) -> Read:
    """Read a stream until its final event, or hang up after `stop_after` events."""
    events: list[Event] = []
    async with aconnect_sse(client, method, url, headers=dict(headers or {}), **kwargs) as source:
        response = source.response
        if response.status_code != 200:
            await response.aread()
            raise httpx.HTTPStatusError(response.text, request=response.request, response=response)
        async for sse in source.aiter_sse():
            if not sse.data:  # a heartbeat: per the SSE spec, no event is dispatched
                continue
            stream_id, _, seq = sse.id.rpartition(":")
            event = Event(sse.id, stream_id, int(seq), json.loads(sse.data), sse.retry)
            events.append(event)
            if stop_after is not None and len(events) >= stop_after:
                break
            if "done" in event.data or "error" in event.data:
                break
        return Read(events, response.headers)


async def start(client: httpx.AsyncClient, body: dict[str, Any], **kwargs: Any) -> Read:
    return await read_stream(client, "POST", "/api/stream-response", json=body, **kwargs)


async def resume(client: httpx.AsyncClient, last_event_id: str, **kwargs: Any) -> Read:
    stream_id = last_event_id.rpartition(":")[0]
    headers = {"Last-Event-ID": last_event_id, **kwargs.pop("headers", {})}
    return await read_stream(client, "GET", f"/api/streams/{stream_id}", headers=headers, **kwargs)
