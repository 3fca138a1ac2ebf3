"""The `anthropic` provider through the official SDK (`TOKENRELAY_UPSTREAM_CLIENT=sdk`):
one streaming attempt. The default path is `anthropic_http`, which speaks the same API
without the SDK; the contract suite runs both.

The SDK builds and sends the request (auth, headers, error mapping); the response's
bytes are decoded here (`sse_decode`), which costs a fraction of the SDK's typed events.
The SDK's own retries are off (`max_retries=0`): the producer retries, so retries
never stack. This is the only module that imports SDK exceptions; they are mapped
to `UpstreamError` in `map_sdk_errors()`.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, Callable, Iterator, Mapping
from typing import Any

import anthropic
import httpx2
import orjson

from tokenrelay.config import Settings
from tokenrelay.errors import UpstreamError, UpstreamIncomplete, retryable_status
from tokenrelay.providers.base import Delta, GenerationRequest, MessageEnd
from tokenrelay.providers.claude_stream import (
    NOT_COUNTED,
    SAMPLING_API_VERSION,
    BlockState,
    request_parts,
    retry_after,
)
from tokenrelay.providers.sse_decode import sse_events

# SAMPLING_API_VERSION too: a caller of the SDK's other APIs (batches) sends it as well.
__all__ = ["SAMPLING_API_VERSION", "AnthropicProvider", "map_sdk_errors"]


@contextlib.contextmanager
def map_sdk_errors() -> Iterator[None]:
    try:
        yield
    except anthropic.APIStatusError as exc:
        error_type = exc.type or "api_error"
        message = exc.api_message or exc.message
        if exc.status_code == 200:  # an `event: error` inside a started stream
            raise UpstreamIncomplete(message, error_type=error_type) from None
        status = exc.status_code
        raise UpstreamError(
            message,
            status=status,
            error_type=error_type,
            retryable=retryable_status(status),
            retry_after=retry_after(exc.response.headers),
        ) from None
    except (anthropic.APITimeoutError, httpx2.TimeoutException):
        # The SDK wraps a timeout only while sending; one while reading the body (the
        # per-chunk read timeout: a silent upstream) reaches us as httpx2's own.
        raise UpstreamIncomplete("upstream timed out (stalled)") from None
    except (anthropic.APIConnectionError, httpx2.TransportError) as exc:
        raise UpstreamIncomplete(f"upstream connection failed: {type(exc).__name__}") from None


class AnthropicProvider:
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
        # Shown every answer's headers, an error's too (the pool reads their
        # anthropic-ratelimit-* figures); once per call, never per event.
        self._observe = observe
        # The read timeout is per chunk and pings reset it: a silent upstream is a stall.
        timeout = httpx2.Timeout(stall_timeout, connect=connect_timeout)
        self._client = anthropic.AsyncAnthropic(
            api_key=api_key,
            base_url=base_url,
            max_retries=0,
            timeout=timeout,
            # aiohttp's C parser reads a streamed body for a fraction of httpcore's cost.
            http_client=anthropic.DefaultAioHttpClient(
                timeout=timeout,
                limits=httpx2.Limits(
                    max_connections=max_connections, max_keepalive_connections=1000
                ),
            ),
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> AnthropicProvider:
        key = settings.anthropic_api_key
        if key is None:
            raise ValueError("The anthropic provider needs ANTHROPIC_API_KEY")
        return cls(
            api_key=key.get_secret_value(),
            base_url=settings.anthropic_base_url,
            connect_timeout=settings.connect_timeout,
            stall_timeout=settings.stall_timeout,
        )

    def _params(self, request: GenerationRequest) -> dict[str, Any]:
        body, sampling, headers = request_parts(request)
        params: dict[str, Any] = {**body, "stream": True}
        if sampling:
            headers["anthropic-version"] = SAMPLING_API_VERSION
            params["extra_body"] = sampling
        if headers:
            params["extra_headers"] = headers
        return params

    async def stream(self, request: GenerationRequest) -> AsyncGenerator[Delta, None]:
        state = BlockState()
        loads = orjson.loads
        try:
            with map_sdk_errors(), self._observed():
                create = self._client.messages.with_streaming_response.create
                async with create(**self._params(request)) as response:
                    if self._observe is not None:
                        self._observe(response.headers)
                    async for _, data in sse_events(response.iter_bytes()):
                        delta = state.feed(loads(data))
                        if delta is not None:
                            yield delta
                            if type(delta) is MessageEnd:
                                return
        except UpstreamIncomplete as exc:
            exc.cut_block = state.open_block if state.open_block != "text" else None
            raise
        raise UpstreamIncomplete("upstream stream ended without message_stop")

    @contextlib.contextmanager
    def _observed(self) -> Iterator[None]:
        """An error answer's headers, shown before the error is mapped."""
        try:
            yield
        except anthropic.APIStatusError as exc:
            if self._observe is not None and exc.status_code != 200:
                self._observe(exc.response.headers)
            raise

    async def count_tokens(self, request: GenerationRequest) -> int:
        params = self._params(request)
        for name in (*NOT_COUNTED, "stream"):
            params.pop(name, None)
        params.pop("extra_body", None)  # sampling: nothing to count
        with map_sdk_errors():
            counted = await self._client.messages.count_tokens(**params)
        return counted.input_tokens

    async def aclose(self) -> None:
        await self._client.close()
