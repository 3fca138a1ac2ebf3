"""The `anthropic` provider's default path: Claude's Messages API over `http1.Client`.

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

import contextlib
from collections.abc import AsyncGenerator, Callable, Mapping
from typing import Any

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
from tokenrelay.providers.http1 import Client, Response
from tokenrelay.providers.sse_decode import SseDecoder

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
        observe: Callable[[Mapping[str, str]], None] | None = None,
    ) -> None:
        self._client = Client(
            base_url or DEFAULT_BASE_URL,
            connect_timeout=connect_timeout,
            stall_timeout=stall_timeout,
        )
        common = [("x-api-key", api_key), ("content-type", "application/json"),
                  ("user-agent", f"tokenrelay/{__version__}")]  # fmt: skip
        streamed = [*common, ("accept", "text/event-stream")]
        self._head = self._client.head(
            "/v1/messages", [*streamed, ("anthropic-version", API_VERSION)]
        )
        self._sampling_head = self._client.head(
            "/v1/messages", [*streamed, ("anthropic-version", SAMPLING_API_VERSION)]
        )
        self._count_head = self._client.head(
            "/v1/messages/count_tokens", [*common, ("anthropic-version", API_VERSION)]
        )
        # Shown every answer's headers, an error's too (the pool reads their
        # anthropic-ratelimit-* figures); once per call.
        self._observe = observe

    async def stream(self, request: GenerationRequest) -> AsyncGenerator[Delta, None]:
        body, sampling, trace = request_parts(request)
        body["stream"] = True
        head = self._sampling_head if sampling else self._head
        if sampling:
            body.update(sampling)
        state = BlockState()
        loads = orjson.loads
        try:
            response = await self._client.post(head.encode(orjson.dumps(body), trace.items()))
        except (TimeoutError, OSError) as exc:
            raise _incomplete(exc, state) from None
        try:
            if self._observe is not None:
                self._observe(response.headers)
            if response.status != 200:
                raise await _status_error(response)
            decode = SseDecoder().feed
            async for chunk in response.chunks():
                for _, data in decode(chunk):
                    delta = state.feed(loads(data))
                    if delta is None:
                        continue
                    if type(delta) is MessageEnd:
                        # Before the end is told: the next request (the client's, on
                        # hearing it) finds this connection back in the pool.
                        await response.finish(DRAIN_S)
                        yield delta
                        return
                    yield delta
        except UpstreamIncomplete as exc:
            exc.cut_block = _cut(state)
            raise
        except (TimeoutError, OSError) as exc:
            raise _incomplete(exc, state) from None
        finally:
            response.close()
        raise UpstreamIncomplete(
            "upstream stream ended without message_stop", cut_block=_cut(state)
        )

    async def count_tokens(self, request: GenerationRequest) -> int:
        body, _sampling, _trace = request_parts(request)  # sampling: nothing to count
        for name in NOT_COUNTED:
            body.pop(name, None)
        try:
            response = await self._client.post(self._count_head.encode(orjson.dumps(body)))
            try:
                if response.status != 200:
                    raise await _status_error(response)
                counted: dict[str, Any] = orjson.loads(await response.read())
            finally:
                response.close()
        except TimeoutError:
            raise UpstreamError("upstream timed out", status=504, error_type="timeout_error",
                                retryable=True) from None  # fmt: skip
        except (OSError, orjson.JSONDecodeError) as exc:
            raise UpstreamError(f"upstream connection failed: {str(exc) or type(exc).__name__}",
                                status=502, retryable=True) from None  # fmt: skip
        return int(counted["input_tokens"])

    async def aclose(self) -> None:
        await self._client.aclose()


def _cut(state: BlockState) -> str | None:
    return state.open_block if state.open_block != "text" else None


def _incomplete(exc: BaseException, state: BlockState) -> UpstreamIncomplete:
    if isinstance(exc, TimeoutError):  # no byte for stall_timeout, or no connection in time
        return UpstreamIncomplete("upstream timed out (stalled)", cut_block=_cut(state))
    reason = str(exc) or type(exc).__name__
    return UpstreamIncomplete(f"upstream connection failed: {reason}", cut_block=_cut(state))


async def _status_error(response: Response) -> UpstreamError:
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
