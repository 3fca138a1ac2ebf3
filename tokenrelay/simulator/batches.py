"""Claude's Message Batches API in the simulator: create, retrieve, list, cancel, delete
and results (JSONL), in the shapes the official SDK parses.

A batch takes `seconds` to process, its requests finishing one after another spread
over that time (request i of n at `created + seconds * (i + 1) / n`), so a watcher sees
the counts move. Nothing runs in the background: a batch is brought up to date when
it is looked at, each request due by then answered by the same engine as
`/v1/messages` (a whole message and its usage), in request order. That order fixes
the engine's attempt counts too, so the results are as deterministic as the engine:
a request whose prompt says `[[sim:status=529]]` is `errored` with Claude's
overloaded error, and with `[[sim:fail_times=1]]` only in the first batch that asks.

`route` is the thin HTTP layer (method, path, query, body to status and bytes); the
server only hands it what comes under `/v1/messages/batches`.
"""

from __future__ import annotations

import re
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs

import orjson

from tokenrelay.simulator.engine import SimError, Simulator, whole_message

PREFIX = "/v1/messages/batches"
CUSTOM_ID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
MAX_REQUESTS = 100_000
EXPIRES_AFTER_S = 24 * 3600  # Claude's: a batch not done in a day expires
CANCEL_GRACE_S = 0.2  # how long a batch is `canceling` before it ends
KEPT_BATCHES = 10_000  # the oldest are forgotten past this
RESULTS_TYPE = b"application/binary"


def _rfc3339(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat().replace("+00:00", "Z")


@dataclass(slots=True)
class Item:
    custom_id: str
    params: dict[str, Any]
    due: float  # when it is answered, unless the batch ends first
    result: dict[str, Any] | None = None  # Claude's result object, once it has one


@dataclass(slots=True)
class Batch:
    id: str
    created_at: float
    items: list[Item]
    ended_at: float | None = None
    cancel_initiated_at: float | None = None
    counts: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys(("succeeded", "errored", "canceled", "expired"), 0)
    )
    answered: int = 0  # items[:answered] have their result

    @property
    def expires_at(self) -> float:
        return self.created_at + EXPIRES_AFTER_S

    def status(self, now: float) -> str:
        if self.ended_at is not None and now >= self.ended_at:
            return "ended"
        return "in_progress" if self.cancel_initiated_at is None else "canceling"


class Batches:
    """Every batch this simulator has been given, by id, oldest first."""

    def __init__(
        self, simulator: Simulator, seconds: float = 2.0, clock: Callable[[], float] = time.time
    ) -> None:
        self.simulator = simulator
        self.seconds = seconds
        self.clock = clock
        self.batches: OrderedDict[str, Batch] = OrderedDict()

    def create(self, body: object) -> Batch:
        now = self.clock()
        requests = _requests(body)
        n = len(requests)
        items = [
            Item(custom_id, params, now + self.seconds * (i + 1) / n)
            for i, (custom_id, params) in enumerate(requests)
        ]
        batch = Batch("msgbatch_" + secrets.token_hex(12), now, items)
        self.batches[batch.id] = batch
        if len(self.batches) > KEPT_BATCHES:
            self.batches.popitem(last=False)
        return batch

    def get(self, batch_id: str) -> Batch:
        batch = self.batches.get(batch_id)
        if batch is None:
            raise SimError(404, f"No message batch with id {batch_id!r}")
        self._advance(batch, self.clock())
        return batch

    def cancel(self, batch_id: str) -> Batch:
        """Cancel what is not answered yet; the batch is `canceling` a moment, then ends.
        Requests due within that moment are still answered, as ones in flight would be."""
        batch = self.get(batch_id)
        now = self.clock()
        if batch.ended_at is None:
            batch.cancel_initiated_at = now
            batch.ended_at = now + CANCEL_GRACE_S
            self._advance(batch, now)
        return batch

    def delete(self, batch_id: str) -> None:
        batch = self.get(batch_id)
        if batch.status(self.clock()) != "ended":
            raise SimError(400, f"Batch {batch_id} cannot be deleted before it ends: cancel it")
        del self.batches[batch_id]

    def results(self, batch_id: str) -> bytes:
        """The JSONL of an ended batch's results, one line per request, in their order."""
        batch = self.get(batch_id)
        if batch.status(self.clock()) != "ended":
            raise SimError(404, f"Batch {batch_id} has not finished processing")
        lines = [
            orjson.dumps({"custom_id": item.custom_id, "result": item.result})
            for item in batch.items
        ]
        return b"\n".join(lines) + b"\n"

    def page(
        self, limit: int, before_id: str | None, after_id: str | None
    ) -> tuple[list[Batch], bool]:
        """Newest first, as Claude lists them: the `limit` just after `after_id` (older)
        or just before `before_id` (newer), and whether there are more that way."""
        ids = list(reversed(self.batches))
        if after_id is not None:
            start = _index(ids, after_id) + 1
            chosen, more = ids[start : start + limit], start + limit < len(ids)
        elif before_id is not None:
            end = _index(ids, before_id)
            start = max(0, end - limit)
            chosen, more = ids[start:end], start > 0
        else:
            chosen, more = ids[:limit], limit < len(ids)
        return [self.get(batch_id) for batch_id in chosen], more

    def _advance(self, batch: Batch, now: float) -> None:
        """Answer the requests due by `now`, or by the batch's end if that came first
        (a cancel's, or its expiry); once that end has passed, the rest are canceled,
        or expired."""
        items = batch.items
        end = batch.ended_at if batch.ended_at is not None else batch.expires_at
        until = min(now, end)
        while batch.answered < len(items) and items[batch.answered].due <= until:
            item = items[batch.answered]
            item.result = self._answer(item.params)
            batch.counts[item.result["type"]] += 1
            batch.answered += 1
        if batch.answered == len(items):
            if batch.ended_at is None:
                batch.ended_at = items[-1].due
            return
        if now < end:
            return
        left = "canceled" if batch.cancel_initiated_at is not None else "expired"
        batch.ended_at = end
        for item in items[batch.answered :]:
            item.result = {"type": left}
            batch.counts[left] += 1
        batch.answered = len(items)

    def _answer(self, params: dict[str, Any]) -> dict[str, Any]:
        try:
            message = whole_message(self.simulator.plan(params))
        except SimError as exc:
            error = {"type": exc.error_type, "message": exc.message}
            return {"type": "errored", "error": {"type": "error", "error": error}}
        return {"type": "succeeded", "message": message}

    def describe(self, batch: Batch, base_url: str) -> dict[str, Any]:
        """The batch as Claude's `message_batch` object."""
        now = self.clock()
        status = batch.status(now)
        ended = status == "ended"
        processing = len(batch.items) - batch.answered
        return {
            "id": batch.id,
            "type": "message_batch",
            "processing_status": status,
            "request_counts": {"processing": processing, **batch.counts},
            "created_at": _rfc3339(batch.created_at),
            "ended_at": _rfc3339(batch.ended_at) if ended and batch.ended_at is not None else None,
            "expires_at": _rfc3339(batch.expires_at),
            "archived_at": None,
            "cancel_initiated_at": _rfc3339(batch.cancel_initiated_at)
            if batch.cancel_initiated_at is not None
            else None,
            "results_url": f"{base_url}{PREFIX}/{batch.id}/results" if ended else None,
        }


def _index(batches: list[str], batch_id: str) -> int:
    try:
        return batches.index(batch_id)
    except ValueError:
        raise SimError(400, f"No message batch with id {batch_id!r} to page from") from None


def _requests(body: object) -> list[tuple[str, dict[str, Any]]]:
    """A create body's requests as (custom_id, params); Claude's 400 for a bad one.
    The params themselves are the engine's to judge: a bad one is an errored result."""
    if not isinstance(body, dict):
        raise SimError(400, "Request body must be a JSON object")
    requests = body.get("requests")
    if not isinstance(requests, list) or not requests:
        raise SimError(400, "requests: Field required")
    if len(requests) > MAX_REQUESTS:
        raise SimError(400, f"requests: at most {MAX_REQUESTS} requests in a batch")
    out: list[tuple[str, dict[str, Any]]] = []
    seen: set[str] = set()
    for i, request in enumerate(requests):
        if not isinstance(request, dict):
            raise SimError(400, f"requests.{i}: Input should be an object")
        custom_id, params = request.get("custom_id"), request.get("params")
        if not isinstance(custom_id, str) or not CUSTOM_ID.match(custom_id):
            raise SimError(400, f"requests.{i}.custom_id: must match {CUSTOM_ID.pattern}")
        if custom_id in seen:
            raise SimError(400, f"requests.{i}.custom_id: {custom_id!r} is not unique")
        if not isinstance(params, dict):
            raise SimError(400, f"requests.{i}.params: Field required")
        if params.get("stream"):
            raise SimError(400, f"requests.{i}.params.stream: not supported in a batch")
        seen.add(custom_id)
        out.append((custom_id, params))
    return out


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    body: bytes
    content_type: bytes = b"application/json"


def _error(exc: SimError, request_id: str) -> Reply:
    error = {"type": exc.error_type, "message": exc.message}
    body = {"type": "error", "error": error, "request_id": request_id}
    return Reply(exc.status, orjson.dumps(body))


def _limit(query: dict[str, list[str]]) -> int:
    raw = query.get("limit", ["20"])[-1]
    if not raw.isdigit() or not 1 <= int(raw) <= 1000:
        raise SimError(400, "limit: must be an integer from 1 to 1000")
    return int(raw)


def route(
    batches: Batches, method: str, path: str, query_string: bytes, body: bytes,
    base_url: str, request_id: str,
) -> Reply:  # fmt: skip
    """Answer one request under /v1/messages/batches."""
    parts = path[len(PREFIX) :].strip("/").split("/") if path != PREFIX else []
    try:
        if not parts:
            if method == "POST":
                batch = batches.create(_json(body))
                return Reply(200, orjson.dumps(batches.describe(batch, base_url)))
            if method == "GET":
                return _list(batches, parse_qs(query_string.decode("latin-1")), base_url)
        elif len(parts) == 1:
            if method == "GET":
                return Reply(200, orjson.dumps(batches.describe(batches.get(parts[0]), base_url)))
            if method == "DELETE":
                batches.delete(parts[0])
                return Reply(200, orjson.dumps({"id": parts[0], "type": "message_batch_deleted"}))
        elif len(parts) == 2 and parts[1] == "cancel" and method == "POST":
            batch = batches.cancel(parts[0])
            return Reply(200, orjson.dumps(batches.describe(batch, base_url)))
        elif len(parts) == 2 and parts[1] == "results" and method == "GET":
            return Reply(200, batches.results(parts[0]), RESULTS_TYPE)
        raise SimError(404, "Not found")
    except SimError as exc:
        return _error(exc, request_id)


def _json(body: bytes) -> object:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        raise SimError(400, "Request body is not valid JSON") from None


def _list(batches: Batches, query: dict[str, list[str]], base_url: str) -> Reply:
    limit = _limit(query)
    before = query.get("before_id", [None])[-1]
    after = query.get("after_id", [None])[-1]
    chosen, has_more = batches.page(limit, before, after)
    data = [batches.describe(batch, base_url) for batch in chosen]
    page = {
        "data": data,
        "has_more": has_more,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
    }
    return Reply(200, orjson.dumps(page))
