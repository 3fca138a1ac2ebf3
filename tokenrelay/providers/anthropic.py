"""The `anthropic` provider: one streaming attempt through the official SDK.

The SDK builds and sends the request (auth, headers, error mapping); the response's
bytes are decoded here (`sse_decode`), which costs a fraction of the SDK's typed events.
The SDK's own retries are off (`max_retries=0`): the producer retries, so retries
never stack. This is the only module that imports SDK exceptions; they are mapped
to `UpstreamError` in `map_sdk_errors()`.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, Callable, Iterator, Mapping
from typing import Any, cast

import anthropic
import httpx2
import orjson

from tokenrelay.config import Settings
from tokenrelay.errors import UpstreamError, UpstreamIncomplete, retryable_status
from tokenrelay.events import Thinking, ThinkingSignature, ToolInput, ToolUseStart
from tokenrelay.observability.tracing import upstream_headers
from tokenrelay.providers.base import (
    Delta,
    GenerationRequest,
    MessageEnd,
    MessageStart,
    ToolUse,
    Usage,
)
from tokenrelay.providers.sse_decode import sse_events

# The SDK's API version rejects temperature and top_p; this one keeps them
# (ANTHROPIC-PROTOCOL.md §1).
SAMPLING_API_VERSION = "2023-06-01"


def _retry_after(response: httpx2.Response) -> float | None:
    for header in ("retry-after-ms", "retry-after"):
        value = response.headers.get(header)
        if value is None:
            continue
        try:
            seconds = float(value)
        except ValueError:
            continue
        return seconds / 1000 if header == "retry-after-ms" else seconds
    return None


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
            retry_after=_retry_after(exc.response),
        ) from None
    except (anthropic.APITimeoutError, httpx2.TimeoutException):
        # The SDK wraps a timeout only while sending; one while reading the body (the
        # per-chunk read timeout: a silent upstream) reaches us as httpx2's own.
        raise UpstreamIncomplete("upstream timed out (stalled)") from None
    except (anthropic.APIConnectionError, httpx2.TransportError) as exc:
        raise UpstreamIncomplete(f"upstream connection failed: {type(exc).__name__}") from None


class _BlockState:
    """Turns Claude's stream events into deltas, remembering which block is open."""

    __slots__ = ("open_block", "output_tokens", "stop_reason", "stop_sequence", "tool", "tool_json")

    def __init__(self) -> None:
        self.open_block: str | None = None
        self.tool: tuple[str, str] | None = None
        self.tool_json: list[str] = []
        self.stop_reason: str | None = None
        self.stop_sequence: str | None = None
        self.output_tokens = 0

    def feed(self, event: dict[str, Any]) -> Delta | None:
        kind = event["type"]
        if kind == "content_block_delta":
            delta = event["delta"]
            of = delta["type"]
            if of == "text_delta":
                return cast(str, delta["text"])
            if of == "input_json_delta":
                fragment: str = delta["partial_json"]
                self.tool_json.append(fragment)
                return ToolInput(fragment)
            if of == "thinking_delta":
                return Thinking(delta["thinking"])
            if of == "signature_delta":
                return ThinkingSignature(delta["signature"])
        elif kind == "message_start":
            message = event["message"]
            usage = message.get("usage") or {}
            return MessageStart(
                message.get("model", ""),
                Usage(
                    input_tokens=usage.get("input_tokens") or 0,
                    cache_creation_input_tokens=usage.get("cache_creation_input_tokens") or 0,
                    cache_read_input_tokens=usage.get("cache_read_input_tokens") or 0,
                ),
            )
        elif kind == "content_block_start":
            block = event["content_block"]
            self.open_block = block["type"]
            if block["type"] == "tool_use":
                self.tool, self.tool_json = (block["id"], block["name"]), []
                return ToolUseStart(block["id"], block["name"])
        elif kind == "content_block_stop":
            self.open_block = None
            if self.tool is not None:
                tool_id, name = self.tool
                self.tool = None
                return ToolUse(tool_id, name, orjson.loads("".join(self.tool_json) or "{}"))
        elif kind == "message_delta":
            self.stop_reason = event["delta"].get("stop_reason")
            self.stop_sequence = event["delta"].get("stop_sequence")
            self.output_tokens = (event.get("usage") or {}).get("output_tokens", 0)
        elif kind == "message_stop":
            return MessageEnd(self.stop_reason, self.output_tokens, self.stop_sequence)
        elif kind == "error":
            error = event.get("error") or {}
            raise UpstreamIncomplete(
                error.get("message", "upstream error"), error_type=error.get("type", "api_error")
            )
        return None


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
        params: dict[str, Any] = {
            "model": request.model,
            "messages": request.messages,
            "max_tokens": request.max_tokens,
            "stream": True,
        }
        for name in ("system", "stop_sequences", "tools", "tool_choice", "metadata", "thinking"):
            value = getattr(request, name)
            if value is not None:
                params[name] = value
        # The attempt's trace context, when it is traced (the upstream's spans join it).
        trace = upstream_headers()
        headers = {} if trace is None else dict(trace)
        sampling = {"temperature": request.temperature, "top_p": request.top_p}
        sampling = {name: value for name, value in sampling.items() if value is not None}
        if sampling:
            headers["anthropic-version"] = SAMPLING_API_VERSION
            params["extra_body"] = sampling
        if headers:
            params["extra_headers"] = headers
        return params

    async def stream(self, request: GenerationRequest) -> AsyncGenerator[Delta, None]:
        state = _BlockState()
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
        for name in ("max_tokens", "stream", "stop_sequences", "metadata"):  # not counted
            params.pop(name, None)
        params.pop("extra_body", None)  # sampling: nothing to count
        with map_sdk_errors():
            counted = await self._client.messages.count_tokens(**params)
        return counted.input_tokens

    async def aclose(self) -> None:
        await self._client.close()
