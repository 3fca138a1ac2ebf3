"""`Batches`: what the routes call, and the refresher that keeps batches up to date.

A submit picks the deployment (the pool's first healthy one of kind anthropic that
serves every model the batch names: a batch goes to one deployment, and stays there),
stores the batch, then sends it. A batch is refreshed from its upstream when someone
looks at it before its end, and by the refresher every `refresh_every` seconds; once
it has ended its results are collected and recorded, with one ledger row per request
at the batch price (`store.record`: once, whoever gets there first).

Log events: `batch_submitted`, `batch_recorded`, `batch_refresh_failed`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import orjson

from tokenrelay.batches.errors import BatchesUnavailable, BatchNotEnded, BatchNotFound
from tokenrelay.batches.input import BatchItem
from tokenrelay.batches.store import ENDED, Batch, BatchStore, Progress, Request, now
from tokenrelay.errors import GatewayError, InvalidRequest
from tokenrelay.observability.log import log_event
from tokenrelay.pricing import ModelTable
from tokenrelay.providers.base import Usage
from tokenrelay.upstreams.pool import Deployment, Pool
from tokenrelay.usage.ledger import row_of
from tokenrelay.usage.record import StreamRecord

if TYPE_CHECKING:
    from tokenrelay.batches.upstream import BatchUpstream, Result

log = logging.getLogger("tokenrelay.batches")

NO_BATCH_API = "Batches need an upstream with Claude's Batch API"
REFRESH_S = 3.0
REFRESH_BATCHES = 100  # at most, per round of the refresher
# The ledger's status of a request that was not answered: a stream's error codes.
STATUS_OF = {"canceled": "cancelled", "expired": "expired"}


class Batches:
    def __init__(
        self, store: BatchStore, pool: Pool, models: ModelTable, refresh_every: float = REFRESH_S
    ) -> None:
        self.store = store
        self._pool = pool
        self._models = models
        self._refresh_every = refresh_every
        self._refresher: asyncio.Task[None] | None = None
        self._upstreams: dict[str, BatchUpstream] = {}  # by deployment, made when first used

    def start(self) -> None:
        self._refresher = asyncio.create_task(self._refresh_loop(), name="batch-refresher")

    async def aclose(self) -> None:
        if self._refresher is not None:
            self._refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresher
        for upstream in self._upstreams.values():
            await upstream.aclose()

    # -- what the routes call ---------------------------------------------------------

    async def submit(self, owner: str, items: Sequence[BatchItem]) -> Batch:
        deployment = self._deployment_for({item.request.model for item in items})
        upstream = self._upstream(deployment)
        requests = [Request(i, item.custom_id, item.request.model) for i, item in enumerate(items)]
        batch = await self.store.create(owner, deployment.name, requests)
        try:
            upstream_id, progress = await upstream.create(
                [(item.custom_id, item.request) for item in items]
            )
        except BaseException:
            await self.store.discard(batch.id)
            raise
        await self.store.submitted(batch.id, upstream_id, progress)
        log_event(
            log, "batch_submitted", batch_id=batch.id, upstream_id=upstream_id,
            deployment=deployment.name, requests=len(items), principal=owner,
        )  # fmt: skip
        return await self.owned(owner, batch.id)

    async def owned(self, owner: str, batch_id: str) -> Batch:
        batch = await self.store.get(owner, batch_id)
        if batch is None:
            raise BatchNotFound(f"No batch {batch_id[:64]!r}: unknown, or not yours")
        return batch

    async def status(self, owner: str, batch_id: str) -> Batch:
        """The batch, brought up to date from its upstream if it has not ended."""
        return await self.refresh(await self.owned(owner, batch_id))

    async def results(self, owner: str, batch_id: str) -> list[str]:
        """Its results' JSON lines (BatchNotEnded before its end)."""
        batch = await self.status(owner, batch_id)
        if not batch.results_recorded:
            raise BatchNotEnded(
                f"Batch {batch.id} has not ended ({batch.processing_status}): its results "
                "come once it has"
            )
        return await self.store.results(batch.id)

    async def cancel(self, owner: str, batch_id: str) -> Batch:
        batch = await self.owned(owner, batch_id)
        if batch.processing_status == ENDED or batch.upstream_id is None:
            return batch
        progress = await self._upstream_of(batch).cancel(batch.upstream_id)
        await self.store.progressed(batch.id, progress)
        log_event(log, "batch_cancel", batch_id=batch.id, principal=owner)
        return await self.refresh(await self.owned(owner, batch_id))

    async def page(self, owner: str, limit: int) -> list[Batch]:
        return await self.store.page(owner, limit)

    # -- keeping up with the upstream ------------------------------------------------

    async def refresh(self, batch: Batch) -> Batch:
        """Ask the upstream how the batch is doing; record its results once it has ended."""
        if batch.results_recorded or batch.upstream_id is None:
            return batch
        upstream = self._upstream_of(batch)
        progress = await upstream.retrieve(batch.upstream_id)
        if progress.processing_status != ENDED:
            await self.store.progressed(batch.id, progress)
        else:
            results = await upstream.results(batch.upstream_id)
            await self._record(batch, progress, results)
        return await self.owned(batch.owner, batch.id)

    async def _record(self, batch: Batch, progress: Progress, results: list[Result]) -> None:
        by_id = {r.custom_id: r for r in results}
        lines: list[tuple[int, str]] = []
        rows: list[dict[str, Any]] = []
        total = Decimal(0)
        ended = progress.ended_at or now()
        for request in await self.store.requests(batch.id):
            line, record = self._outcome(batch, request, by_id.get(request.custom_id), ended)
            lines.append((request.position, orjson.dumps(line).decode()))
            rows.append({**row_of(record), "route": "batch"})
            total += Decimal(repr(record.cost_usd))
        if await self.store.record(batch.id, progress, lines, rows, total):
            log_event(
                log, "batch_recorded", batch_id=batch.id, requests=len(rows),
                cost_usd=float(total), principal=batch.owner,
            )  # fmt: skip

    def _outcome(
        self, batch: Batch, request: Request, result: Result | None, ended: datetime
    ) -> tuple[dict[str, Any], StreamRecord]:
        """A request's results line and its ledger record."""
        line: dict[str, Any] = {"custom_id": request.custom_id}
        usage = Usage()
        served, stop_reason, cost = request.model, None, 0.0
        if result is None:  # the upstream lost it: as Claude would say of an errored one
            line["status"] = "errored"
            line["error"] = {"type": "api_error", "message": "The upstream gave no result"}
            status = "api"
        elif result.type == "succeeded" and result.message is not None:
            message = result.message
            u = message.get("usage") or {}
            usage = Usage(
                input_tokens=u.get("input_tokens") or 0,
                output_tokens=u.get("output_tokens") or 0,
                cache_creation_input_tokens=u.get("cache_creation_input_tokens") or 0,
                cache_read_input_tokens=u.get("cache_read_input_tokens") or 0,
            )
            served = message.get("model") or request.model
            stop_reason = message.get("stop_reason")
            cost = self._models.cost_usd(request.model, usage, batch=True)
            text = "".join(
                b.get("text", "") for b in message.get("content") or () if b.get("type") == "text"
            )
            line.update(status="succeeded", text=text, message=message, usage=u, cost_usd=cost)
            status = "done"
        elif result.type == "errored":
            error = result.error or {"type": "api_error", "message": "errored"}
            line.update(status="errored", error=error)
            status = str(error.get("type", "api_error")).removesuffix("_error")
        else:
            line["status"] = result.type
            status = STATUS_OF.get(result.type, result.type)
        started, finished = batch.created_at.timestamp(), ended.timestamp()
        record = StreamRecord(
            stream_id=f"{batch.id}.{request.position}",
            request_id=f"{batch.id}/{request.custom_id}",
            principal=batch.owner, model=request.model, served_model=served, status=status,
            stop_reason=stop_reason, input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
            cache_creation_input_tokens=usage.cache_creation_input_tokens,
            cache_read_input_tokens=usage.cache_read_input_tokens, cost_usd=cost,
            estimated=False, cached=False, coalesced=0, retries=0, continuations=0,
            ttft_ms=None, duration_ms=max(0.0, (finished - started) * 1000),
            started_at=started, finished_at=finished,
        )  # fmt: skip
        return line, record

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(self._refresh_every)
            try:
                waiting = await self.store.unrecorded(REFRESH_BATCHES)
            except GatewayError as exc:
                log_event(log, "batch_refresh_failed", level=logging.WARNING, error=exc.message)
                continue
            for batch in waiting:
                # Anything but cancellation: one batch's trouble must not stop the others'.
                try:
                    await self.refresh(batch)
                except Exception as exc:
                    log_event(
                        log, "batch_refresh_failed", level=logging.WARNING, batch_id=batch.id,
                        error=exc.message if isinstance(exc, GatewayError) else repr(exc),
                    )  # fmt: skip

    # -- which deployment -------------------------------------------------------------

    def _deployment_for(self, models: set[str]) -> Deployment:
        with_api = [d for d in self._pool.deployments if d.config.kind == "anthropic"]
        if not with_api:
            raise BatchesUnavailable(NO_BATCH_API)
        serving = [d for d in with_api if all(d.config.serves(m) for m in models)]
        if not serving:
            raise InvalidRequest(
                f"No upstream deployment with Claude's Batch API serves {', '.join(sorted(models))}"
            )
        healthy = {s.name for s in self._pool.snapshot() if s.state == "healthy"}
        for d in serving:
            if d.name in healthy:
                return d
        waits = [self._pool.retry_in(m, fallback=False) for m in models]
        raise BatchesUnavailable(
            "No upstream deployment with Claude's Batch API can take a batch now",
            retry_after=max((w for w in waits if w is not None), default=1.0),
        )

    def _upstream_of(self, batch: Batch) -> BatchUpstream:
        for d in self._pool.deployments:
            if d.name == batch.deployment and d.config.kind == "anthropic":
                return self._upstream(d)
        raise BatchesUnavailable(
            f"Batch {batch.id} was sent to deployment {batch.deployment!r}, which is not "
            "configured any more"
        )

    def _upstream(self, deployment: Deployment) -> BatchUpstream:
        upstream = self._upstreams.get(deployment.name)
        if upstream is None:
            # The SDK is loaded only now: a gateway that never sees a batch never imports it.
            from tokenrelay.batches.upstream import BatchUpstream

            upstream = self._upstreams[deployment.name] = BatchUpstream(deployment.config)
        return upstream
