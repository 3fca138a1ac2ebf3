"""tokenrelay: a production streaming gateway for Claude."""

from __future__ import annotations

from typing import Any

import typer

from tokenrelay.commands import batch, keys, upstreams

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)


@app.command()
def serve(
    host: str = typer.Option(None, help="Address to bind [env TOKENRELAY_HOST; 127.0.0.1]."),
    port: int = typer.Option(None, help="Port to bind [env TOKENRELAY_PORT; 8080]."),
    provider: str = typer.Option(
        None, help="auto | simulator | anthropic [env TOKENRELAY_PROVIDER; auto]."
    ),
    store: str = typer.Option(None, help="Stream log store: memory [env TOKENRELAY_STORE]."),
    model: str = typer.Option(None, help="Default model [env TOKENRELAY_MODEL]."),
    anthropic_base_url: str = typer.Option(
        None, help="Upstream Messages API base URL [env TOKENRELAY_ANTHROPIC_BASE_URL]."
    ),
    upstreams_file: str = typer.Option(
        None,
        help="Several upstream deployments, weights and model fallbacks (TOML or YAML) "
        "[env TOKENRELAY_UPSTREAMS_FILE].",
    ),
    auth: str = typer.Option(None, help="none | api_key | jwt [env TOKENRELAY_AUTH; none]."),
    api_keys_file: str = typer.Option(
        None,
        help="Hashed API keys, followed while running (tokenrelay keys create) "
        "[TOKENRELAY_API_KEYS_FILE; tokenrelay-keys.txt].",
    ),
    insecure_no_auth: bool = typer.Option(
        None, "--insecure-no-auth", help="Allow --auth none on a non-loopback address."
    ),
    ssl_certfile: str = typer.Option(None, help="TLS certificate (PEM) [TOKENRELAY_SSL_CERTFILE]."),
    ssl_keyfile: str = typer.Option(None, help="TLS private key (PEM) [TOKENRELAY_SSL_KEYFILE]."),
    cors_origin: list[str] = typer.Option(
        None, help="An allowed browser origin; repeat for several [TOKENRELAY_CORS_ORIGINS]."
    ),
    rate_limit_rpm: int = typer.Option(
        None, help="Requests per minute per principal, 0 = unlimited [TOKENRELAY_RATE_LIMIT_RPM]."
    ),
    rate_limit_tpm: int = typer.Option(
        None, help="Tokens per minute per principal, 0 = unlimited [TOKENRELAY_RATE_LIMIT_TPM]."
    ),
    max_concurrent: int = typer.Option(
        None, help="Concurrent upstream calls, 0 = no cap [TOKENRELAY_MAX_CONCURRENT]."
    ),
    queue_size: int = typer.Option(
        None, help="Requests that may wait beyond the caps [TOKENRELAY_QUEUE_SIZE]."
    ),
    log_level: str = typer.Option(
        None, help="debug | info | warning | error [env TOKENRELAY_LOG_LEVEL; info]."
    ),
    log_format: str = typer.Option(
        None,
        help="json | console [env TOKENRELAY_LOG_FORMAT; console on a terminal, else json].",
    ),
    access_log: bool = typer.Option(
        None, "--access-log", help="Log every HTTP request [env TOKENRELAY_ACCESS_LOG]."
    ),
    metrics_port: int = typer.Option(
        None,
        help="Serve /metrics on this port only, not on the main one; 0 = on the main port "
        "[env TOKENRELAY_METRICS_PORT; 0].",
    ),
    tracing: str = typer.Option(
        None,
        help="off | otlp: OpenTelemetry spans over OTLP/HTTP to OTEL_EXPORTER_OTLP_ENDPOINT "
        "[env TOKENRELAY_TRACING; off].",
    ),
) -> None:
    """Run the gateway. Settings come from flags, then TOKENRELAY_* variables."""
    from pydantic import ValidationError

    from tokenrelay.auth.factory import UnsafeConfiguration, check_exposure
    from tokenrelay.config import Settings
    from tokenrelay.gateway import prepare
    from tokenrelay.server import serve as run_server

    overrides: dict[str, Any] = {
        k: v
        for k, v in {
            "host": host,
            "port": port,
            "provider": provider,
            "store": store,
            "model": model,
            "anthropic_base_url": anthropic_base_url,
            "upstreams_file": upstreams_file,
            "auth": auth,
            "api_keys_file": api_keys_file,
            "insecure_no_auth": insecure_no_auth,
            "ssl_certfile": ssl_certfile,
            "ssl_keyfile": ssl_keyfile,
            "cors_origins": cors_origin or None,
            "rate_limit_rpm": rate_limit_rpm,
            "rate_limit_tpm": rate_limit_tpm,
            "max_concurrent": max_concurrent,
            "queue_size": queue_size,
            "log_level": log_level.lower() if log_level else None,
            "log_format": log_format,
            "access_log": access_log,
            "metrics_port": metrics_port,
            "tracing": tracing,
        }.items()
        if v is not None
    }
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        typer.echo(f"tokenrelay: {exc}", err=True)
        raise typer.Exit(2) from None
    try:
        warning = check_exposure(settings)
        # A missing keys file or JWT key, or an upstreams file that cannot work, fails
        # here, clearly.
        prepare(settings)
    except (UnsafeConfiguration, ValueError, OSError) as exc:
        typer.echo(f"tokenrelay: {exc}", err=True)
        raise typer.Exit(2) from None
    if warning:
        typer.secho(warning, err=True, fg="red", bold=True)
    run_server(settings)


@app.command()
def simulate(
    host: str = typer.Option("127.0.0.1", help="Address to bind."),
    port: int = typer.Option(8090, help="Port to bind."),
    ttft_ms: int = typer.Option(300, help="Default delay before the first token."),
    tps: float = typer.Option(60.0, help="Default tokens per second (0: no delay at all)."),
    replay_dir: str = typer.Option(
        None, help="Where [[sim:replay=NAME]] finds NAME.sse, a Claude stream sent verbatim."
    ),
    rpm: int = typer.Option(0, min=0, help="Requests a window (0: unlimited), as Claude limits."),
    tpm: int = typer.Option(
        0, min=0, help="Tokens a window, input plus max_tokens (0: unlimited)."
    ),
    rate_window: float = typer.Option(60.0, min=0.001, help="Seconds a rate-limit window lasts."),
    models: str = typer.Option(
        None, help="The only models served, comma-separated (default: all); others get 404."
    ),
    batch_seconds: float = typer.Option(
        2.0, min=0.0, help="Seconds a message batch takes, its requests finishing spread over it."
    ),
) -> None:
    """Run the built-in Claude simulator as a standalone Messages API server."""
    from pathlib import Path

    from tokenrelay.pricing import ModelTable
    from tokenrelay.simulator.control import RateLimits
    from tokenrelay.simulator.server import run

    served = None
    if models is not None:
        served = frozenset(m.strip() for m in models.split(",") if m.strip())
        unknown = sorted(served - set(ModelTable().models))
        if unknown or not served:
            problem = f"unknown model {', '.join(unknown)}" if unknown else "no model named"
            raise typer.BadParameter(problem, param_hint="--models")
    run(
        host, port, ttft_ms=ttft_ms, tps=tps,
        replay_dir=Path(replay_dir) if replay_dir else None,
        limits=RateLimits(rpm, tpm, rate_window), models=served, batch_seconds=batch_seconds,
    )  # fmt: skip


@app.command()
def chat(
    prompt: str = typer.Argument(..., help="What to ask."),
    url: str = typer.Option("http://127.0.0.1:8080", envvar="TOKENRELAY_URL", help="Gateway URL."),
    model: str = typer.Option(None, help="Model (default: the gateway's)."),
    max_tokens: int = typer.Option(None, help="Longest answer, in tokens."),
    system: str = typer.Option(None, help="System prompt."),
    api_key: str = typer.Option(
        None, envvar="TOKENRELAY_API_KEY", help="Key for a gateway with --auth api_key."
    ),
) -> None:
    """Ask a running gateway and print the answer as it streams."""
    import asyncio

    from tokenrelay.client.chat import run_chat

    params = {"model": model, "max_tokens": max_tokens, "system": system}
    params = {k: v for k, v in params.items() if v is not None}
    ok = asyncio.run(run_chat(url, prompt, params, api_key=api_key))
    raise typer.Exit(0 if ok else 1)


@app.command()
def bench(
    suite: bool = typer.Option(
        False, "--suite", help="Run every scenario (docs/benchmarks.md), in rounds."
    ),
    rounds: int = typer.Option(3, min=1, help="--suite: rounds of each scenario."),
    quick: bool = typer.Option(False, "--quick", help="--suite: small versions of each."),
    compare_with: str = typer.Option(
        None, "--compare", help="--suite: a previous run's JSON; exit 1 if a figure is worse."
    ),
    svg: str = typer.Option(None, "--svg", help="--suite: draw the plot to this SVG file."),
    json_file: str = typer.Option(None, "--json-file", help="Write the JSON to this file."),
    gateway: str = typer.Option(None, help="Gateway URL; default: start one here."),
    upstream: str = typer.Option(None, help="Upstream URL; default: start a simulator here."),
    gateway_pid: list[int] = typer.Option(
        None, help="PID of the gateway, for its CPU and memory; repeat for several instances."
    ),
    instances: int = typer.Option(
        1, min=1, help="Gateways to start on --store (Redis for more than one), behind nginx."
    ),
    concurrency: int = typer.Option(100, "-c", "--concurrency", help="Streams open at once."),
    total: int = typer.Option(200, "-n", "--total", help="Streams in all, per phase."),
    tokens: int = typer.Option(50, help="Tokens per stream."),
    tps: float = typer.Option(50.0, help="Tokens per second per stream (0: unpaced)."),
    ttft_ms: int = typer.Option(0, help="Upstream delay before the first token."),
    model: str = typer.Option("claude-haiku-4-5", help="Model to ask for."),
    store: str = typer.Option(
        "memory", help="Store of the gateway it starts: memory or a redis:// URL."
    ),
    json_out: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
    max_concurrent: int = typer.Option(
        0, help="The started gateway's cap on concurrent upstream calls (0: none)."
    ),
    queue_size: int = typer.Option(0, help="The started gateway's queue beyond the cap."),
) -> None:
    """Compare the gateway with a direct connection to the upstream, in one run
    (--suite: every scenario, in rounds, each stream's text checked)."""
    from tokenrelay.client.bench import BenchConfig
    from tokenrelay.client.bench_run import run_bench, run_suite_command
    from tokenrelay.client.bench_suite import SuiteConfig

    if suite and (gateway or upstream or gateway_pid or instances > 1):
        raise typer.BadParameter("--suite starts its own gateways and simulator")
    if instances > 1 and (gateway or not store.startswith(("redis://", "rediss://"))):
        raise typer.BadParameter(
            "--instances starts the gateways itself, on a shared Redis: give --store redis://…"
        )
    if suite:
        code = run_suite_command(
            SuiteConfig(rounds=rounds, quick=quick, store=store),
            json_file=json_file, json_out=json_out, previous=compare_with, svg=svg,
        )  # fmt: skip
        raise typer.Exit(code)
    config = BenchConfig(
        concurrency=concurrency, total=total, tokens=tokens, tps=tps, ttft_ms=ttft_ms,
        model=model, max_concurrent=max_concurrent, queue_size=queue_size,
    )  # fmt: skip
    ok = run_bench(
        config,
        gateway=gateway,
        upstream=upstream,
        gateway_pids=tuple(gateway_pid or ()),
        json_out=json_out,
        store=store,
        json_file=json_file,
        instances=instances,
    )
    raise typer.Exit(0 if ok else 1)


app.add_typer(keys.app, name="keys")


def _database_url(flag: str | None) -> str:
    from tokenrelay.config import Settings

    url = flag or Settings().database_url
    if url == "off":
        typer.echo("tokenrelay: the usage ledger is off (TOKENRELAY_DATABASE_URL=off)", err=True)
        raise typer.Exit(2)
    return url


_DATABASE_URL_HELP = "The ledger's database [env TOKENRELAY_DATABASE_URL; sqlite:tokenrelay.db]."

db = typer.Typer(help="The usage ledger's database.", no_args_is_help=True)
app.add_typer(db, name="db")


@db.command("upgrade")
def db_upgrade(
    database_url: str = typer.Option(None, help=_DATABASE_URL_HELP),
) -> None:
    """Bring the database to the newest ledger schema (a no-op when it is there)."""
    import asyncio

    from tokenrelay.usage.console import upgrade_database
    from tokenrelay.usage.migrate import HEAD

    url = _database_url(database_url)
    try:
        applied = asyncio.run(upgrade_database(url))
    except (ValueError, OSError) as exc:
        typer.echo(f"tokenrelay: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"upgraded to {HEAD}" if applied else f"already at {HEAD}")


@app.command()
def usage(
    database_url: str = typer.Option(None, help=_DATABASE_URL_HELP),
    since: str = typer.Option(None, "--from", help="From this time (ISO 8601, UTC if no zone)."),
    until: str = typer.Option(None, "--to", help="Up to this time, exclusive (ISO 8601)."),
    user: str = typer.Option(None, help="Only this user."),
    model: str = typer.Option(None, help="Only this model."),
    json_out: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Usage by user, day and model, with totals, read from the ledger's database."""
    import asyncio

    import orjson
    from rich.console import Console

    from tokenrelay.errors import InvalidRequest
    from tokenrelay.routes.usage import parse_time
    from tokenrelay.usage.console import NoLedger, read_groups, usage_json, usage_table
    from tokenrelay.usage.report import UsageFilter

    url = _database_url(database_url)
    try:
        query = UsageFilter(parse_time("from", since), parse_time("to", until), model, user)
        groups = asyncio.run(read_groups(url, query))
    except InvalidRequest as exc:
        typer.echo(f"tokenrelay: {exc.message}", err=True)
        raise typer.Exit(2) from None
    except (NoLedger, ValueError, OSError) as exc:
        typer.echo(f"tokenrelay: {exc}", err=True)
        raise typer.Exit(1) from None
    if json_out:
        typer.echo(orjson.dumps(usage_json(groups), option=orjson.OPT_INDENT_2).decode())
    else:
        Console().print(usage_table(groups))


app.command()(upstreams.upstreams)
app.add_typer(batch.app, name="batch")


def main() -> None:
    app()
