"""Every Redis key name and lifetime the gateway uses, in one place.

tr:s:{id}:log      Redis Stream of the stream's normalized events (`tokenrelay.events`);
                   entry id 0-{seq+1}, so XADD itself refuses a second writer of a seq.
                   Fields of an entry:
                     k  the event's kind: start, queued, text, tool_use_start,
                        tool_input, tool_use, thinking, thinking_signature,
                        reset, done, error
                     t  (text only) the delta's text, UTF-8: no JSON on the hot path
                     d  (every other kind) the event's fields as a JSON object, e.g.
                        done: {"stop_reason", "usage", "cost_usd", "cached"}
tr:s:{id}:meta     hash: owner, request_id, model, fingerprint, created_at,
                   idempotency_key, principal, route, restartable and fallback
                   ("1"/"0"), request
                   (the GenerationRequest as JSON, for takeover), opening (set before
                   the first content: {"model", "usage"}, how the upstream's message
                   began)
tr:s:{id}:lease    the instance producing the stream; expires unless renewed
tr:s:{id}:seen     epoch seconds a reader of the stream was last seen, on any instance
tr:idem:{owner}:{key}  "stream_id fingerprint" of an Idempotency-Key
tr:ticket:{t}      owner of an unredeemed EventSource ticket; :stream once redeemed
tr:running         set of stream ids whose producer has not finished
tr:rate:{who}:{requests|tokens}:{minute}  a principal's use of a rate-limit window
tr:spend:{who}:{day|month}:{period}     micro-dollars granted to a principal's streams
tr:cache:{hash}    a cached answer (its events as JSON), for the cache's TTL
tr:cancel          pub/sub channel: stream ids to cancel, wherever they run
tr:gate:*          the gate's places (admission/redis_gate.py): seq (ticket ids),
                   run and queue (sorted sets: running tickets by lease expiry, waiting
                   ones by round), alive (waiting tickets by lease expiry), who (ticket
                   → principal), running_by / waiting_by (principal → count),
                   last_round (principal → its last ticket's round), round (the round
                   being served); changed: pub/sub, sent when a step admitted someone
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


def rate_key(principal: str, counter: str, window: int) -> str:
    # Two windows' lifetime: a reservation may be given back just after its minute.
    return f"{PREFIX}:rate:{principal}:{counter}:{window}"


def spend_key(principal: str, period: str, when: str) -> str:
    return f"{PREFIX}:spend:{principal}:{period}:{when}"


def cache_key(key: bytes) -> str:
    import hashlib

    return f"{PREFIX}:cache:{hashlib.sha256(key).hexdigest()}"
