"""Python client for tokenrelay: iterate an answer's events, resuming after any drop.

    async with TokenRelay("http://127.0.0.1:8080") as relay:
        async for event in relay.stream("Tell me a story"):
            if event.token:
                print(event.token, end="", flush=True)

A dropped connection (or one silent past `stall_timeout`, heartbeats included) is
resumed with `Last-Event-ID`, with exponential backoff and jitter: the caller sees
every event once, in order. A `reset` event means: discard the text so far.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncGenerator, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
from httpx_sse import aconnect_sse


@dataclass(frozen=True, slots=True)
class StreamEvent:
    id: str
    seq: int
    data: dict[str, Any]

    @property
    def token(self) -> str | None:
        return self.data.get("token")

    @property
    def done(self) -> bool:
        return bool(self.data.get("done"))

    @property
    def error(self) -> str | None:
        return self.data.get("error")

    @property
    def reset(self) -> bool:
        return bool(self.data.get("reset"))

    @property
    def final(self) -> bool:
        return self.done or self.error is not None


class TokenRelayError(Exception):
    """The gateway refused the request (4xx/5xx before a stream started)."""

    def __init__(self, status: int, error_type: str, message: str) -> None:
        super().__init__(f"{status} {error_type}: {message}")
        self.status = status
        self.error_type = error_type
        self.message = message


class TokenRelay:
    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        max_reconnects: int = 8,
        stall_timeout: float = 30.0,
    ) -> None:
        headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        timeout = httpx.Timeout(10.0, read=stall_timeout)
        self._http = httpx.AsyncClient(base_url=base_url, headers=headers, timeout=timeout)
        self.max_reconnects = max_reconnects

    async def __aenter__(self) -> TokenRelay:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def stream(
        self, prompt: str | None = None, **params: Any
    ) -> AsyncGenerator[StreamEvent, None]:
        """Every event of a new stream, resuming across drops until `done` or `error`.
        Leaving the loop early? Close it: `async with contextlib.aclosing(...)`."""
        body = {"prompt": prompt, **params} if prompt is not None else params
        last: StreamEvent | None = None
        failures = 0
        while True:
            try:
                if last is None:
                    events = self._events("POST", "/api/stream-response", json=body)
                else:
                    stream_id = last.id.rpartition(":")[0]
                    events = self._events(
                        "GET", f"/api/streams/{stream_id}", headers={"last-event-id": last.id}
                    )
                async with contextlib.aclosing(events):
                    async for event in events:
                        last, failures = event, 0
                        yield event
                        if event.final:
                            return
                raise httpx.RemoteProtocolError("stream closed before its final event")
            except (httpx.TransportError, httpx.RemoteProtocolError):
                failures += 1
                if failures > self.max_reconnects:
                    raise
                await asyncio.sleep(min(0.25 * 2**failures, 8.0) * (0.5 + random.random() / 2))

    async def cancel(self, stream_id: str) -> bool:
        response = await self._http.delete(f"/api/streams/{stream_id}")
        _raise_for_error(response)
        return bool(response.json()["cancelled"])

    async def _events(
        self, method: str, url: str, **kwargs: Any
    ) -> AsyncGenerator[StreamEvent, None]:
        async with aconnect_sse(self._http, method, url, **kwargs) as source:
            if source.response.status_code != 200:
                await source.response.aread()
                _raise_for_error(source.response)
            async for sse in source.aiter_sse():
                if not sse.data:  # a heartbeat: per the SSE spec, not an event
                    continue
                seq = int(sse.id.rpartition(":")[2])
                yield StreamEvent(sse.id, seq, orjson.loads(sse.data))


def _raise_for_error(response: httpx.Response) -> None:
    if response.status_code < 400:
        return
    try:
        err = response.json()["error"]
        raise TokenRelayError(response.status_code, err["type"], err["message"])
    except (ValueError, KeyError, TypeError):
        raise TokenRelayError(response.status_code, "api_error", response.text[:200]) from None


def stream_sync(
    base_url: str, prompt: str, *, api_key: str | None = None, **params: Any
) -> Iterator[StreamEvent]:
    """The same, for code without an event loop: yields events as they arrive."""
    queue: asyncio.Queue[StreamEvent | BaseException | None]
    loop = asyncio.new_event_loop()
    try:
        queue = asyncio.Queue()

        async def pump() -> None:
            try:
                async with TokenRelay(base_url, api_key=api_key) as relay:
                    async for event in relay.stream(prompt, **params):
                        await queue.put(event)
                await queue.put(None)
            except BaseException as exc:  # handed to the caller's thread of control
                await queue.put(exc)

        task = loop.create_task(pump())
        while True:
            item = loop.run_until_complete(queue.get())
            if item is None:
                break
            if isinstance(item, BaseException):
                raise item
            yield item
        loop.run_until_complete(task)
    finally:
        loop.close()
