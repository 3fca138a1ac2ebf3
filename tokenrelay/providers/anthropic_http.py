"""The `anthropic` provider's default path: Claude's Messages API over aiohttp.

The official SDK (`providers/anthropic.py`, `TOKENRELAY_UPSTREAM_CLIENT=sdk`) builds
each request through several layers (its options and headers, httpx's request model,
a transport onto aiohttp) and loads some 50 MiB of modules; a gateway makes one such
request per attempt and needs none of that: the body is the request's JSON, the
headers are fixed per deployment. This path keeps what the SDK does that matters, and
the contract suite (tests/contracts) runs both paths against the same expectations:
  - headers: `x-api-key`, `anthropic-version` (the SDK's, or the one that keeps
    sampling parameters when a request sets them), the attempt's trace context;
  - an HTTP error becomes `UpstreamError` with Claude's error type and message, the
    `retry-after(-ms)` wait, and retryability as the SDK decides it (`x-should-retry`
    first, then the status);
  - a connection that fails or falls silent for `stall_timeout` between reads (pings
    count) is `UpstreamIncomplete`.
And one thing more: after `message_stop` the body is read to its end, so the connection
goes back to the pool instead of being closed (a new TCP, and TLS, handshake per call).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Callable, Mapping
from typing import Any

import aiohttp
import orjson

from tokenrelay import __version__
from tokenrelay.errors import UpstreamError, UpstreamIncomplete, error_type_for, retryable_status
from tokenrelay.providers.base import Delta, GenerationRequest, MessageEnd
from tokenrelay.providers.claude_stream import (
    API_VERSION,
    NOT_COUNTED,
    SAMPLING_API_VERSION,
    BlockState,
    request_parts,
    retry_after,
)
from tokenrelay.providers.sse_decode import sse_events

DEFAULT_BASE_URL = "https://api.anthropic.com"
# How long the rest of a finished answer's body may take to arrive (it is a few bytes,
# already sent): past it the connection is closed rather than waited for.
DRAIN_S = 1.0


class AnthropicHttpProvider:
    name = "anthropic"

    def __init__(
        self,
        *,
        api_key: str,
        base_url: str | None = None,
        connect_timeout: float = 5.0,
        stall_timeout: float = 30.0,
        max_connections: int = 10_000,
        observe: Callable[[Mapping[str, str]], None] | None = None,
    ) -> None:
        base = (base_url or DEFAULT_BASE_URL).rstrip("/")
        self._messages_url = f"{base}/v1/messages"
        self._count_url = f"{base}/v1/messages/count_tokens"
        common = {"x-api-key": api_key, "content-type": "application/json",
                  "user-agent": f"tokenrelay/{__version__}"}  # fmt: skip
        self._headers = {**common, "anthropic-version": API_VERSION, "accept": "text/event-stream"}
        self._sampling_headers = {**self._headers, "anthropic-version": SAMPLING_API_VERSION}
        self._count_headers = {**common, "anthropic-version": API_VERSION}
        self._timeout = aiohttp.ClientTimeout(
            total=None, connect=connect_timeout, sock_read=stall_timeout
        )
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None
        # For a request sent again after a pooled connection turned out closed.
        self._fresh: aiohttp.ClientSession | None = None
        # Shown every answer's headers, an error's too (the pool reads their
        # anthropic-ratelimit-* figures); once per call.
        self._observe = observe

    def _client(self) -> aiohttp.ClientSession:
        # Made on first use: a session belongs to the running loop.
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._max_connections, limit_per_host=0),
                timeout=self._timeout,
                skip_auto_headers=("User-Agent",),
            )
        return self._session

    def _fresh_client(self) -> aiohttp.ClientSession:
        if self._fresh is None:
            self._fresh = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(force_close=True, limit=0),
                timeout=self._timeout,
                skip_auto_headers=("User-Agent",),
            )
        return self._fresh

    async def _post(
        self, url: str, body: bytes, headers: Mapping[str, str]
    ) -> aiohttp.ClientResponse:
        """The response to a POST (its status and headers read). A kept-alive connection
        the upstream closed while it sat in the pool fails as the request is written or
        before any answer (its close was not yet seen): that says nothing of the
        upstream, so the request goes once more, at once, on a new connection; a
        connection that cannot be made at all is the upstream's failure."""
        try:
            return await self._client().post(url, data=body, headers=headers)
        except aiohttp.ClientConnectorError:
            raise
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError):
            return await self._fresh_client().post(url, data=body, headers=headers)

    async def stream(self, request: GenerationRequest) -> AsyncGenerator[Delta, None]:
        body, sampling, trace = request_parts(request)
        body["stream"] = True
        headers = self._sampling_headers if sampling else self._headers
        if sampling:
            body.update(sampling)
        if trace:
            headers = {**headers, **trace}
        state = BlockState()
        loads = orjson.loads
        # aiohttp keeps the body until the answer ends, and orjson's result sits in a
        # 4 KiB buffer while it lives: copied to its own size, that is 4 KiB less per
        # open stream (dialects/tokens.py says the same of log entries).
        payload = b"%b" % orjson.dumps(body)
        try:
            async with await self._post(self._messages_url, payload, headers) as response:
                if self._observe is not None:
                    self._observe(response.headers)
                if response.status != 200:
                    raise await _status_error(response)
                async for _, data in sse_events(response.content.iter_any()):
                    delta = state.feed(loads(data))
                    if delta is None:
                        continue
                    if type(delta) is MessageEnd:
                        # Before the end is told: the next request (the client's, on
                        # hearing it) finds this connection back in the pool.
                        await _drain(response)
                        yield delta
                        return
                    yield delta
        except UpstreamIncomplete as exc:
            exc.cut_block = state.open_block if state.open_block != "text" else None
            raise
        except TimeoutError:  # no byte for stall_timeout (or no connection in time)
            raise UpstreamIncomplete(
                "upstream timed out (stalled)", cut_block=_cut(state)
            ) from None
        except aiohttp.ClientError as exc:
            raise UpstreamIncomplete(
                f"upstream connection failed: {type(exc).__name__}", cut_block=_cut(state)
            ) from None
        raise UpstreamIncomplete(
            "upstream stream ended without message_stop", cut_block=_cut(state)
        )

    async def count_tokens(self, request: GenerationRequest) -> int:
        body, _sampling, _trace = request_parts(request)  # sampling: nothing to count
        for name in NOT_COUNTED:
            body.pop(name, None)
        try:
            async with await self._post(
                self._count_url, orjson.dumps(body), self._count_headers
            ) as response:
                if response.status != 200:
                    raise await _status_error(response)
                counted: dict[str, Any] = orjson.loads(await response.read())
        except TimeoutError:
            raise UpstreamError("upstream timed out", status=504, error_type="timeout_error",
                                retryable=True) from None  # fmt: skip
        except (aiohttp.ClientError, orjson.JSONDecodeError) as exc:
            raise UpstreamError(f"upstream connection failed: {type(exc).__name__}",
                                status=502, retryable=True) from None  # fmt: skip
        return int(counted["input_tokens"])

    async def aclose(self) -> None:
        for session in (self._session, self._fresh):
            if session is not None:
                await session.close()


def _cut(state: BlockState) -> str | None:
    return state.open_block if state.open_block != "text" else None


async def _status_error(response: aiohttp.ClientResponse) -> UpstreamError:
    """Claude's error answer as the SDK maps it: its type and message from the body
    (the status's type when the body is not Claude's JSON), the wait it asks for."""
    status = response.status
    raw = await response.read()
    error_type = message = None
    with contextlib.suppress(orjson.JSONDecodeError, AttributeError, TypeError):
        error = orjson.loads(raw).get("error") or {}
        error_type, message = error.get("type"), error.get("message")
    should_retry = response.headers.get("x-should-retry")
    retryable = should_retry == "true" if should_retry in ("true", "false") else None
    return UpstreamError(
        message if isinstance(message, str) else raw.decode(errors="replace")[:500] or str(status),
        status=status,
        error_type=error_type if isinstance(error_type, str) else error_type_for(status),
        retryable=retryable_status(status) if retryable is None else retryable,
        retry_after=retry_after(response.headers),
    )


async def _drain(response: aiohttp.ClientResponse) -> None:
    """Read what is left of a finished answer, so its connection is kept for the next."""
    with contextlib.suppress(TimeoutError, aiohttp.ClientError):
        async with asyncio.timeout(DRAIN_S):
            while await response.content.readany():
                pass
