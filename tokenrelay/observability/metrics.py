"""The gateway's Prometheus metrics: every name, label and bucket, in one place.

Names are the contract of the alert rules (deploy/prometheus/alerts.yml), the Grafana
dashboard (deploy/grafana/) and the operations page; a test checks that what those
name is what `/metrics` exports. Labels are bounded: `model` is a name from the
configured model table, `route` one of ROUTES, `status` "done", "cancelled",
"abandoned" or an error event's code; never free text.

One instance is one process (`tokenrelay serve` runs no worker processes), so the
registry is this process's own and needs no multiprocess mode.

Nothing here is bumped per token: counters move once per stream, attempt or batch.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

from tokenrelay import __version__

REGISTRY = CollectorRegistry(auto_describe=True)

# The streaming routes, as the `route` label names them.
ROUTES = ("api", "messages", "chat_completions")

# Time to first token resolves 50 ms to 10 s; the alert's 500 ms is a bucket edge.
TTFT_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 7.5, 10.0)
DURATION_BUCKETS = (0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 15.0, 20.0, 30.0, 60.0, 120.0, 300.0)
RATE_BUCKETS = (1.0, 5.0, 10.0, 20.0, 30.0, 50.0, 75.0, 100.0, 150.0, 200.0, 500.0, 1000.0)
WAIT_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0)

BUILD = Info("tokenrelay_build", "The running gateway's version.", registry=REGISTRY)
BUILD.info({"version": __version__})

STREAMS_STARTED = Counter(
    "tokenrelay_streams_started",
    "Streams started: one upstream generation each (joins and cache replays are not).",
    ["route", "model"],
    registry=REGISTRY,
)
STREAMS_COMPLETED = Counter(
    "tokenrelay_streams_completed",
    "Streams ended, by how: done, cancelled, abandoned, or the final error's code.",
    ["route", "model", "status"],
    registry=REGISTRY,
)
TTFT = Histogram(
    "tokenrelay_time_to_first_token_seconds",
    "From the request's arrival to its first text written to the client.",
    ["route", "model"],
    buckets=TTFT_BUCKETS,
    registry=REGISTRY,
)
UPSTREAM_TTFT = Histogram(
    "tokenrelay_upstream_time_to_first_token_seconds",
    "From an upstream call's start to its first text delta.",
    ["model"],
    buckets=TTFT_BUCKETS,
    registry=REGISTRY,
)
DURATION = Histogram(
    "tokenrelay_stream_duration_seconds",
    "From a stream's start to its end, whatever the end.",
    ["route", "model"],
    buckets=DURATION_BUCKETS,
    registry=REGISTRY,
)
TOKENS_PER_SECOND = Histogram(
    "tokenrelay_output_tokens_per_second",
    "A finished stream's output tokens over the time from its first token to its end.",
    ["model"],
    buckets=RATE_BUCKETS,
    registry=REGISTRY,
)
ACTIVE_STREAMS = Gauge(
    "tokenrelay_active_streams",
    "Streams generating on this instance now (queued ones included).",
    registry=REGISTRY,
)
CONNECTED_READERS = Gauge(
    "tokenrelay_connected_readers",
    "Client connections reading a stream from this instance now.",
    registry=REGISTRY,
)
QUEUE_DEPTH = Gauge(
    "tokenrelay_queue_depth",
    "Requests waiting at the gate for an upstream slot.",
    registry=REGISTRY,
)
QUEUE_CAPACITY = Gauge(
    "tokenrelay_queue_capacity",
    "Places in the gate's queue (0 = nobody waits).",
    registry=REGISTRY,
)
QUEUE_WAIT = Histogram(
    "tokenrelay_queue_wait_seconds",
    "Time a request waited at the gate before its upstream call, for those that waited.",
    buckets=WAIT_BUCKETS,
    registry=REGISTRY,
)
TOKENS = Counter(
    "tokenrelay_tokens",
    "Tokens billed, by model and kind: input, output, cache_creation, cache_read.",
    ["model", "kind"],
    registry=REGISTRY,
)
COST = Counter(
    "tokenrelay_cost_usd",
    "What the streams cost, in US dollars, by model.",
    ["model"],
    registry=REGISTRY,
)
UPSTREAM_ERRORS = Counter(
    "tokenrelay_upstream_errors",
    "Failed upstream attempts, by Claude's error type (overloaded_error, rate_limit_error, …).",
    ["type"],
    registry=REGISTRY,
)
RETRIES = Counter(
    "tokenrelay_upstream_retries",
    "Upstream calls made again before the first token, by the error type that caused them.",
    ["reason"],
    registry=REGISTRY,
)
CONTINUATIONS = Counter(
    "tokenrelay_continuations",
    "Answers continued by prefill after the upstream stream broke, by the error type.",
    ["reason"],
    registry=REGISTRY,
)
RESETS = Counter(
    "tokenrelay_resets",
    "Answers restarted from nothing (a reset event), when a continuation was not possible.",
    registry=REGISTRY,
)
RESUMES = Counter(
    "tokenrelay_resumes",
    "Reconnects that resumed a stream after an event id.",
    registry=REGISTRY,
)
CLIENT_DISCONNECTS = Counter(
    "tokenrelay_client_disconnects",
    "Client connections that went away before their stream ended.",
    registry=REGISTRY,
)
TAKEOVERS = Counter(
    "tokenrelay_takeovers",
    "Streams of a lost instance adopted and finished by this one.",
    registry=REGISTRY,
)
HANDOVERS = Counter(
    "tokenrelay_handovers",
    "Streams handed to other instances while this one drained.",
    registry=REGISTRY,
)
RATE_LIMITED = Counter(
    "tokenrelay_rate_limited",
    "Requests refused by a rate limit, by scope: requests or tokens (per minute).",
    ["scope"],
    registry=REGISTRY,
)
BUDGET_REFUSALS = Counter(
    "tokenrelay_budget_refusals",
    "Requests refused (when=admission) or streams cut (when=mid_stream) by a daily/monthly budget.",
    ["scope", "when"],
    registry=REGISTRY,
)
QUEUE_REJECTED = Counter(
    "tokenrelay_queue_rejected",
    "Requests the gate turned away, by reason: full (503 before the stream) or timeout.",
    ["reason"],
    registry=REGISTRY,
)
CACHE = Counter(
    "tokenrelay_cache_requests",
    "Response cache lookups, by result: hit or miss.",
    ["result"],
    registry=REGISTRY,
)
COALESCED = Counter(
    "tokenrelay_coalesced",
    "Requests that joined an identical stream already generating.",
    registry=REGISTRY,
)
LEDGER_BACKLOG = Gauge(
    "tokenrelay_ledger_backlog",
    "Usage rows waiting to be written to the ledger's database.",
    registry=REGISTRY,
)
DRAINING = Gauge(
    "tokenrelay_draining",
    "1 while this instance is shutting down and handing its streams over.",
    registry=REGISTRY,
)
UPSTREAM_ATTEMPTS = Counter(
    "tokenrelay_upstream_attempts",
    "Upstream calls by deployment and outcome: ok (the answer started), error (failed "
    "before it did), cut (failed after), cancelled (the stream ended before either).",
    ["deployment", "outcome"],
    registry=REGISTRY,
)
UPSTREAM_COOLDOWNS = Counter(
    "tokenrelay_upstream_cooldowns",
    "Deployments cooled down, by reason: overloaded, rate_limited, server_error, connect, auth.",
    ["deployment", "reason"],
    registry=REGISTRY,
)
UPSTREAM_PROBES = Counter(
    "tokenrelay_upstream_probes",
    "Calls that found out whether a cooled deployment is back, by result: ok or failed.",
    ["deployment", "result"],
    registry=REGISTRY,
)
MODEL_FALLBACKS = Counter(
    "tokenrelay_model_fallbacks",
    "Streams answered by a fallback model, by the model asked for and the one that answered.",
    ["requested", "served"],
    registry=REGISTRY,
)
# Read from the pool when /metrics is scraped (`telemetry.watch_pool`).
UPSTREAM_IN_FLIGHT = "tokenrelay_upstream_in_flight"
UPSTREAM_COOLING = "tokenrelay_upstream_cooling"
UPSTREAM_RATELIMIT_REMAINING = "tokenrelay_upstream_ratelimit_remaining"
