"""A deployment's Message Batches API, through the official SDK.

The SDK sends and parses (`client.messages.batches`); its errors are mapped as an SDK
stream's are (`providers.anthropic.map_sdk_errors`), to `UpstreamError`. The client is
the batches' own, one per deployment, made from its settings (base URL, key): streams
may go by the gateway's lean HTTP path, which has no Batch API. Its retries are off:
a create retried after a lost answer would make a second batch. Imported only when a
batch is sent or looked at: a gateway that never sees one never loads the SDK here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import anthropic

from tokenrelay.batches.store import Counts, Progress
from tokenrelay.providers.anthropic import SAMPLING_API_VERSION, map_sdk_errors
from tokenrelay.providers.base import GenerationRequest
from tokenrelay.upstreams.config import DeploymentConfig

_OPTIONAL = ("system", "stop_sequences", "tools", "tool_choice", "metadata", "thinking",
             "temperature", "top_p")  # fmt: skip


@dataclass(frozen=True, slots=True)
class Result:
    """One request's outcome, as Claude's results give it."""

    custom_id: str
    type: str  # succeeded | errored | canceled | expired
    message: dict[str, Any] | None  # Claude's Message, when succeeded
    error: dict[str, Any] | None  # Claude's error object ({"type", "message"}), when errored


def params_of(request: GenerationRequest) -> dict[str, Any]:
    """A request's Messages API parameters, as a batch carries them (never streamed)."""
    params: dict[str, Any] = {
        "model": request.model,
        "messages": request.messages,
        "max_tokens": request.max_tokens,
    }
    for name in _OPTIONAL:
        value = getattr(request, name)
        if value is not None:
            params[name] = value
    return params


def _progress(batch: Any) -> Progress:
    c = batch.request_counts
    counts = Counts(c.processing, c.succeeded, c.errored, c.canceled, c.expired)
    return Progress(batch.processing_status, counts, batch.ended_at)


class BatchUpstream:
    def __init__(self, deployment: DeploymentConfig) -> None:
        self._client = anthropic.AsyncAnthropic(
            api_key=deployment.api_key or "", base_url=deployment.base_url, max_retries=0
        )
        self._batches = self._client.messages.batches

    async def aclose(self) -> None:
        await self._client.close()

    async def create(
        self, requests: Sequence[tuple[str, GenerationRequest]]
    ) -> tuple[str, Progress]:
        """Submit (custom_id, request) pairs; the upstream's batch id and first state."""
        body = [{"custom_id": cid, "params": params_of(r)} for cid, r in requests]
        # The API version that takes sampling parameters, as a stream's call uses.
        sampling = any(r.temperature is not None or r.top_p is not None for _, r in requests)
        headers = {"anthropic-version": SAMPLING_API_VERSION} if sampling else None
        with map_sdk_errors():
            batch = await self._batches.create(requests=cast(Any, body), extra_headers=headers)
        return batch.id, _progress(batch)

    async def retrieve(self, upstream_id: str) -> Progress:
        with map_sdk_errors():
            return _progress(await self._batches.retrieve(upstream_id))

    async def cancel(self, upstream_id: str) -> Progress:
        with map_sdk_errors():
            return _progress(await self._batches.cancel(upstream_id))

    async def results(self, upstream_id: str) -> list[Result]:
        """An ended batch's results (in whatever order the upstream gives them)."""
        out: list[Result] = []
        with map_sdk_errors():
            decoder = await self._batches.results(upstream_id)
            async for item in decoder:
                result = item.result
                message = error = None
                if result.type == "succeeded":
                    message = result.message.model_dump(mode="json", exclude_unset=True)
                elif result.type == "errored":
                    error = result.error.error.model_dump(mode="json", exclude_unset=True)
                out.append(Result(item.custom_id, result.type, message, error))
        return out
