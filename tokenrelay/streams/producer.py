"""The producer: runs one stream's generation and appends it to the stream log.

It is decoupled from every HTTP connection: it runs until the answer ends, the
stream is cancelled, or nobody has watched it for `abandon_after`. Retries of a
failed attempt happen here, before the first token, so every provider gets them.
"""

from __future__ import annotations

import asyncio
import logging
import random
from dataclasses import dataclass
from typing import Any

from tokenrelay.errors import UpstreamError
from tokenrelay.pricing import ModelTable
from tokenrelay.providers.base import (
    GenerationRequest,
    MessageEnd,
    MessageStart,
    Provider,
    ToolUse,
    Usage,
)
from tokenrelay.streams.log import StreamLog

log = logging.getLogger("tokenrelay.producer")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    retries: int = 3
    base_delay: float = 0.5
    max_delay: float = 8.0
    retry_after_ceiling: float = 30.0

    def delay(self, retry: int, retry_after: float | None) -> float | None:
        """Seconds to wait before retry number `retry` (0-based), or None to give up."""
        if retry >= self.retries:
            return None
        if retry_after is not None and retry_after > 0:
            return retry_after if retry_after <= self.retry_after_ceiling else None
        backoff: float = min(self.base_delay * 2.0**retry, self.max_delay)
        return backoff * (1 - 0.25 * random.random())


@dataclass(frozen=True, slots=True)
class StopReason:
    """Why a producer was cancelled, as its final `error` event states it."""

    message: str
    code: str
    retryable: bool


CANCELLED = StopReason("Stream cancelled", "cancelled", False)
ABANDONED = StopReason("Stream abandoned: no client for too long", "abandoned", False)
SHUTDOWN = StopReason("Server shutting down", "shutdown", True)


class Producer:
    def __init__(
        self,
        *,
        stream_id: str,
        request: GenerationRequest,
        provider: Provider,
        log: StreamLog,
        models: ModelTable,
        retry: RetryPolicy,
    ) -> None:
        self.stream_id = stream_id
        self.request = request
        self._provider = provider
        self._log = log
        self._models = models
        self._retry = retry
        self.usage = Usage()
        self.stop_reason: StopReason = CANCELLED
        self.retries = 0
        self.finished = False

    async def run(self) -> None:
        try:
            await self._generate()
        except asyncio.CancelledError:
            # Record why the stream ended, with what it had cost so far, then let the
            # cancellation go on.
            reason = self.stop_reason
            await self._finish_error(reason.message, reason.code, reason.retryable)
            raise
        except Exception:
            log.exception("producer failed", extra={"stream_id": self.stream_id})
            await self._finish_error("Internal gateway error", "internal", True)

    async def _generate(self) -> None:
        append = self._log.append
        sid = self.stream_id
        while True:
            attempt_usage = Usage()
            deltas = 0
            try:
                async for delta in self._provider.stream(self.request):
                    if type(delta) is str:
                        deltas += 1
                        await append(sid, "text", {"token": delta})
                    elif isinstance(delta, MessageStart):
                        attempt_usage = delta.usage
                    elif isinstance(delta, ToolUse):
                        deltas += 1
                        tool = {"id": delta.id, "name": delta.name, "input": delta.input}
                        await append(sid, "tool_use", {"tool_use": tool})
                    elif isinstance(delta, MessageEnd):
                        attempt_usage.output_tokens = delta.output_tokens
                        self.usage.add(attempt_usage)
                        await self._finish_done(delta.stop_reason)
                        return
                raise UpstreamError("upstream stream ended without message_stop", retryable=True)
            except UpstreamError as exc:
                # No message_delta arrived: the count of deltas is the best estimate.
                attempt_usage.output_tokens = max(attempt_usage.output_tokens, deltas)
                self.usage.add(attempt_usage)
                wait = (
                    None
                    if deltas or not exc.retryable
                    else self._retry.delay(self.retries, exc.retry_after)
                )
                if wait is None:
                    await self._finish_error(exc.message, exc.code, exc.retryable)
                    return
                self.retries += 1
                log.warning(
                    "upstream attempt failed, retrying: stream=%s retry=%d in=%.2fs error=%s %s",
                    sid,
                    self.retries,
                    wait,
                    exc.status,
                    exc.error_type,
                )
                await asyncio.sleep(wait)

    def _accounting(self) -> dict[str, Any]:
        return {
            "usage": self.usage.as_dict(),
            "cost_usd": self._models.cost_usd(self.request.model, self.usage),
        }

    async def _finish_done(self, stop_reason: str | None) -> None:
        self.finished = True
        data = {"done": True, "stop_reason": stop_reason, **self._accounting(), "cached": False}
        await self._log.append(self.stream_id, "done", data)

    async def _finish_error(self, message: str, code: str, retryable: bool) -> None:
        if self.finished:
            return
        self.finished = True
        data = {"error": message, "code": code, "retryable": retryable, **self._accounting()}
        await self._log.append(self.stream_id, "error", data)
