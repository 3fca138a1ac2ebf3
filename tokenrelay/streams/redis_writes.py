"""The Redis store's writes: every writer in the process, one pipeline per batch.

A batch is whatever was written while the previous one was in flight. In it, the
entries a stream appended since its last batch are one `Run`, sent as one call of
`APPEND_SCRIPT`: one command and one reply for the stream's whole burst, where an
XADD each would cost a command's packing and a reply's read per token.

The script adds the run only if the log's last entry is the one just before it, or
nothing: a run can never land after a gap (an earlier batch of the stream that
failed) or after another instance's entries (it took the stream over), so a producer
may go on appending while its previous run is still out. Everything else (a stream's
meta, leases, `submit`'s commands) goes in the same pipeline, in the order written.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.exceptions import NoScriptError, ResponseError

from tokenrelay.cancellation import cancel_and_wait
from tokenrelay.events import TEXT_KIND, Event, Text, event_fields, kind_of
from tokenrelay.streams import keys

# KEYS: the stream's log, meta and lease; the set of running streams.
# ARGV: the stream's id, the first entry's seq + 1 (its id is 0-that), the log's TTL
# once the run ends the stream (0: it does not), the stream's opening to keep in its
# meta first ("": none), then kind, field, value per entry.
APPEND_SCRIPT = f"""
local log = KEYS[1]
local first = tonumber(ARGV[2])
if first > 1 then
  local top = redis.call('XREVRANGE', log, '+', '-', 'COUNT', 1)
  if #top == 0 or top[1][1] ~= '0-' .. (first - 1) then
    return redis.error_reply('NOTNEXT the log does not end just before this run')
  end
end
if ARGV[4] ~= '' then
  redis.call('HSET', KEYS[2], 'opening', ARGV[4])
end
local n = (#ARGV - 4) / 3
for i = 0, n - 1 do
  local at = 5 + 3 * i
  redis.call('XADD', log, '0-' .. (first + i), 'k', ARGV[at], ARGV[at + 1], ARGV[at + 2])
end
local ttl = tonumber(ARGV[3])
if ttl > 0 then
  redis.call('EXPIRE', log, ttl)
  redis.call('EXPIRE', KEYS[2], ttl)
  redis.call('SREM', KEYS[4], ARGV[1])
  redis.call('DEL', KEYS[3])
elseif first == 1 then
  redis.call('EXPIRE', log, {keys.RUNNING_TTL_S})
end
return n
"""


def refused(error: BaseException) -> bool:
    """Whether a run's error means the log has moved on without it (another writer,
    or a gap left by an earlier failed batch), rather than a store failure."""
    return isinstance(error, ResponseError) and str(error).startswith("NOTNEXT")


@dataclasses.dataclass(slots=True, eq=False)
class Run:
    """Consecutive entries of one stream, written by one call of the script."""

    stream_id: str
    first: int  # the seq of the first entry
    events: list[Event]
    terminal: bool = False
    opening: bytes = b""  # kept in the stream's meta before the entries
    dropped: bool = False  # its writer let go of the stream before it was sent

    def call(self, sha: str, ttl: int) -> tuple[Any, ...]:
        sid = self.stream_id
        args: list[Any] = [
            "EVALSHA", sha, 4,
            keys.log_key(sid), keys.meta_key(sid), keys.lease_key(sid), keys.RUNNING,
            sid, self.first + 1, ttl if self.terminal else 0, self.opening,
        ]  # fmt: skip
        for event in self.events:
            if type(event) is Text:
                args += (TEXT_KIND, "t", event)
            else:
                args += (kind_of(event), "d", orjson.dumps(event_fields(event)))
        return tuple(args)


Batch = list[tuple[Any, ...] | Run]
# Called once per run sent, with the script's reply or the error (a refusal, or the
# batch's failure), before anyone waiting on the batch resumes.
RunWritten = Callable[[Run, Any], None]


class WriteBatcher:
    def __init__(self, client: aioredis.Redis, ttl: int, on_run: RunWritten) -> None:
        self._client = client
        self._ttl = ttl
        self._on_run = on_run
        self._sha = client.register_script(APPEND_SCRIPT).sha
        self._pending: Batch = []
        self._runs: dict[str, Run] = {}  # each stream's open run in the pending batch
        self._done: asyncio.Future[list[Any]] | None = None
        self._sending: asyncio.Future[list[Any]] | None = None  # the batch out now
        self._task: asyncio.Task[None] | None = None

    def _batch(self) -> asyncio.Future[list[Any]]:
        if self._done is None:
            self._done = asyncio.get_running_loop().create_future()
        if self._task is None:
            self._task = asyncio.create_task(self._flush())
        return self._done

    def enqueue(
        self, commands: list[tuple[Any, ...]], *, after_runs_of: str | None = None
    ) -> tuple[asyncio.Future[list[Any]], int]:
        """Put commands in the next batch; returns the batch's future (every result
        of the batch, in order) and the index of the first of these commands' results.
        `after_runs_of`: the stream's entries appended from now on go after these."""
        done = self._batch()
        start = len(self._pending)
        self._pending.extend(commands)
        if after_runs_of is not None:
            self._runs.pop(after_runs_of, None)
        return done, start

    async def submit(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        done, start = self.enqueue(commands)
        # Shielded: one writer's cancellation must not fail the batch for the others.
        results = await asyncio.shield(done)
        return results[start : start + len(commands)]

    def append(self, stream_id: str, seq: int, event: Event, terminal: bool) -> Run:
        """Add an entry to the stream's run in the next batch."""
        self._batch()
        run = self._runs.get(stream_id)
        if run is None or run.first + len(run.events) != seq:
            run = self._runs[stream_id] = Run(stream_id, seq, [event])
            self._pending.append(run)
        else:
            run.events.append(event)
        run.terminal = terminal
        return run

    def open_run(self, stream_id: str, seq: int, opening: bytes) -> None:
        """Start the stream's next run (`seq` is its first entry's) with the stream's
        opening: kept in its meta in the same script call, before those entries."""
        self._batch()
        run = self._runs[stream_id] = Run(stream_id, seq, [], opening=opening)
        self._pending.append(run)

    def drop_runs(self, stream_id: str) -> None:
        """The stream's entries not sent yet are not to be sent (its writer let go)."""
        run = self._runs.pop(stream_id, None)
        if run is not None:
            run.dropped = True

    def last_batch(self) -> asyncio.Future[list[Any]] | None:
        """The future of the last batch written to, which ends after every other."""
        return self._done or self._sending

    async def _flush(self) -> None:
        try:
            while self._pending:
                batch, done = self._pending, self._done
                self._pending, self._done, self._runs = [], None, {}
                assert done is not None
                self._sending = done
                try:
                    results = await self._execute(batch)
                except BaseException as exc:
                    for item in batch:
                        if type(item) is Run and not item.dropped:
                            self._on_run(item, exc)
                    done.set_exception(exc)
                    done.exception()  # seen here: a writer that did not wait is told later
                    if isinstance(exc, asyncio.CancelledError):
                        raise
                else:
                    for item, result in zip(batch, results, strict=True):
                        if type(item) is Run and not item.dropped:
                            self._on_run(item, result)
                    done.set_result(results)
        finally:
            self._task = self._sending = None

    async def _execute(self, batch: Batch) -> list[Any]:
        calls = [self._call(item) for item in batch]
        results = await self._send(calls)
        # After a restart or SCRIPT FLUSH, Redis no longer has the script (nor a fresh
        # one): load it and send again what it refused, in order, before anything later.
        again = [
            i for i, result in enumerate(results)
            if isinstance(result, NoScriptError)
        ]  # fmt: skip
        if again:
            await self._client.script_load(APPEND_SCRIPT)
            resent = await self._send([calls[i] for i in again])
            for i, result in zip(again, resent, strict=True):
                results[i] = result
        return results

    def _call(self, item: tuple[Any, ...] | Run) -> tuple[Any, ...] | None:
        if isinstance(item, Run):
            return None if item.dropped else item.call(self._sha, self._ttl)
        return item

    async def _send(self, calls: list[Any]) -> list[Any]:
        pipe = self._client.pipeline(transaction=False)
        sent = [call for call in calls if call is not None]
        for call in sent:
            pipe.execute_command(*call)
        replies = iter(await pipe.execute(raise_on_error=False) if sent else [])
        return [None if call is None else next(replies) for call in calls]

    async def aclose(self) -> None:
        await cancel_and_wait(self._task)
