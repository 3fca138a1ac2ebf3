"""Every Redis key name and lifetime the gateway uses, in one place.

tr:s:{id}:log      Redis Stream of the stream's events; entry id 0-{seq+1}, so XADD
                   itself refuses a second writer of the same seq
tr:s:{id}:meta     hash: owner, request, fingerprint, state
tr:s:{id}:lease    the instance producing the stream; expires unless renewed
tr:idem:{owner}:{key}  "stream_id fingerprint" of an Idempotency-Key
tr:running         set of stream ids whose producer has not finished
"""

from __future__ import annotations

PREFIX = "tr"
RUNNING = f"{PREFIX}:running"
CANCEL_CHANNEL = f"{PREFIX}:cancel"  # pub/sub: stream ids to cancel, wherever they run

# While a stream runs its keys live this long past the last write: a stream whose every
# producer died and was never taken over disappears by itself.
RUNNING_TTL_S = 3600
# A producer renews its lease every LEASE_MS / 3; a killed instance's streams are taken
# over within about LEASE_MS plus one takeover scan.
LEASE_MS = 3000
TAKEOVER_SCAN_S = 1.0


def log_key(stream_id: str) -> str:
    return f"{PREFIX}:s:{stream_id}:log"


def meta_key(stream_id: str) -> str:
    return f"{PREFIX}:s:{stream_id}:meta"


def lease_key(stream_id: str) -> str:
    return f"{PREFIX}:s:{stream_id}:lease"


def reader_key(stream_id: str) -> str:
    return f"{PREFIX}:s:{stream_id}:seen"


def ticket_key(ticket: str) -> str:
    return f"{PREFIX}:ticket:{ticket}"


def ticket_stream_key(ticket: str) -> str:
    return f"{PREFIX}:ticket:{ticket}:stream"


def idempotency_key(owner: str, key: str) -> str:
    return f"{PREFIX}:idem:{owner}:{key}"


def entry_id(seq: int) -> bytes:
    return b"0-%d" % (seq + 1)


def seq_of(entry_id: bytes) -> int:
    return int(entry_id.partition(b"-")[2]) - 1
