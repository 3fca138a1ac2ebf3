"""Settings: the one reader of the environment (`TOKENRELAY_*`, plus `ANTHROPIC_API_KEY`).

Built once at start-up and passed down through constructors; nothing else reads
`os.environ`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TOKENRELAY_", extra="ignore")

    # Listener
    host: str = "127.0.0.1"
    port: int = 8080

    # Where answers come from. "auto": anthropic when an API key is set, else simulator.
    provider: Literal["auto", "simulator", "anthropic"] = "auto"
    model: str = "claude-haiku-4-5"
    anthropic_api_key: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("TOKENRELAY_ANTHROPIC_API_KEY", "ANTHROPIC_API_KEY"),
    )
    anthropic_base_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("TOKENRELAY_ANTHROPIC_BASE_URL", "ANTHROPIC_BASE_URL"),
    )
    # How the gateway speaks to Claude: "http", its own lean client (no SDK loaded),
    # or "sdk", the official SDK; they behave the same (tests/contracts runs both).
    upstream_client: Literal["http", "sdk"] = "http"
    connect_timeout: float = 5.0
    # An upstream silent this long (not even a ping) counts as dropped.
    stall_timeout: float = 30.0
    # Attempts before the first token: 1 + retries, exponential backoff with jitter.
    upstream_retries: int = 3
    retry_base_delay: float = 0.5
    retry_max_delay: float = 8.0
    # A retry-after longer than this is not waited for: the stream fails instead.
    retry_after_ceiling: float = 30.0
    simulator_ttft_ms: int = 300
    simulator_tps: float = 60.0
    prices_file: Path | None = None
    # Several deployments (keys, regions, proxies) with weights and model fallbacks, in
    # a TOML or YAML file (docs/operations.md); unset: the one upstream above.
    upstreams_file: Path | None = None
    # While every deployment that could answer is cooling down, a new request waits up
    # to this long for one (no upstream call meanwhile); longer: 503 with retry-after.
    upstream_wait: float = 5.0

    # Where stream logs live: "memory" (one process) or a redis:// URL (shared).
    store: str = "memory"
    redis_max_connections: int = 16

    # Streams
    heartbeat_interval: float = 15.0
    client_retry_ms: int = 3000
    abandon_after: float = 60.0
    stream_ttl: float = 600.0
    # On SIGTERM: how long in-flight streams may take to finish (memory store).
    drain_timeout: float = 25.0
    # Mid-answer failures continued (by prefill, or restarted with `reset`) per stream.
    continuation_attempts: int = 3
    # An identical request while the first still generates joins it: from the same
    # caller ("principal": retries, double submits), from anyone ("global"), or never.
    coalesce: Literal["off", "principal", "global"] = "principal"

    # Rate limits per principal, per minute (0 = unlimited), across every instance that
    # shares the store; tokens are reserved as prompt estimate + max_tokens, then settled.
    rate_limit_rpm: int = 0
    rate_limit_tpm: int = 0
    # Per-principal overrides, e.g. '{"alice": {"rpm": 600, "tpm": 0}}'.
    rate_limits: dict[str, dict[str, int]] = Field(default_factory=dict)
    # Concurrent upstream calls on this instance, in all and per principal (0 = no cap);
    # beyond them up to queue_size requests wait (fairly across principals, each at
    # most queue_per_principal, 0 = half the queue), each for up to queue_timeout.
    max_concurrent: int = 0
    max_concurrent_per_principal: int = 0
    queue_size: int = 0
    queue_timeout: float = 30.0
    queue_per_principal: int = 0
    # Spending per principal in USD, per UTC day and month (0 = none), across every
    # instance that shares the store; a stream that would cross one is cut mid-answer.
    budget_daily_usd: float = 0.0
    budget_monthly_usd: float = 0.0
    # Per-principal overrides, e.g. '{"alice": {"daily": 5, "monthly": 100}}'.
    budgets: dict[str, dict[str, float]] = Field(default_factory=dict)

    # The response cache: an identical request within cache_ttl seconds replays the
    # finished answer (0 = off). Per principal or global; requests with temperature > 0
    # only with cache_sampled; in memory at most cache_max_bytes, or in Redis.
    cache_ttl: float = 0.0
    cache_scope: Literal["principal", "global"] = "principal"
    cache_sampled: bool = False
    cache_max_bytes: int = 64 * 1024 * 1024

    # Who may call: "none" (loopback only unless insecure_no_auth), "api_key", "jwt".
    auth: Literal["none", "api_key", "jwt"] = "none"
    insecure_no_auth: bool = False
    api_keys_file: Path | None = None
    # Inline key lines ("<id> <sha256 hex> <user>", ";"-separated), e.g. from a secret.
    api_keys: SecretStr | None = None
    jwt_secret: SecretStr | None = None
    jwt_public_key_file: Path | None = None
    jwt_jwks_url: str | None = None
    jwt_issuer: str | None = None
    jwt_audience: str | None = None
    jwt_user_claim: str = "sub"
    # The claim with the caller's roles: "admin", or a list containing "admin".
    jwt_admin_claim: str = "role"
    jwt_jwks_refresh_cooldown: float = 30.0
    ticket_ttl: float = 60.0

    # The usage ledger: one row per stream. SQLite by default, or
    # postgresql+asyncpg://user:password@host/db; "off" keeps no ledger.
    database_url: str = "sqlite+aiosqlite:///tokenrelay.db"
    # How often buffered rows are written (sooner when 500 are waiting).
    ledger_flush_interval: float = 0.5
    # Stored conversations (in the same database): a conversation's history is trimmed
    # from its oldest turns to fit this estimate of a request's input tokens.
    conversation_max_input_tokens: int = Field(default=150_000, ge=1)

    # Logs: "json" (one object a line) or "console" (readable); unset, console when
    # stdout is a terminal, else json. uvicorn's access log (one line a request) is off
    # unless asked for.
    log_format: Literal["json", "console"] | None = None
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    access_log: bool = False
    # How long a log line may wait, in ms, for the lines after it to be written with
    # it (one write); 0: at the end of the event loop's turn. A crash loses this much.
    log_flush_ms: float = Field(default=50, ge=0, le=1000)
    # /metrics: on the main port (0), or on a port of its own, e.g. one that is not
    # published; then on `metrics_host` (default: `host`), and not on the main port.
    metrics_port: int = 0
    metrics_host: str | None = None

    # Tracing: "off", or OpenTelemetry spans exported over OTLP/HTTP, where the SDK's
    # standard variables say (OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_SERVICE_NAME, …: the
    # SDK reads those itself).
    tracing: Literal["off", "otlp"] = "off"

    # Browsers and transport
    cors_origins: list[str] = Field(default_factory=list)
    cors_allow_credentials: bool = False
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None

    # An opt-in heuristic screen: prompts matching any of these regexes get a 400.
    prompt_screen: list[str] = Field(default_factory=list)

    # Input limits
    max_body_bytes: int = 1024 * 1024
    max_prompt_chars: int = 10_000
    max_messages: int = 200
    default_max_tokens: int = 1024
    max_tokens_ceiling: int = 64_000

    @property
    def tls(self) -> bool:
        return self.ssl_certfile is not None

    def resolved_provider(self) -> Literal["simulator", "anthropic"]:
        if self.provider != "auto":
            return self.provider
        return "anthropic" if self.anthropic_api_key else "simulator"
