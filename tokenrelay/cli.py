"""tokenrelay: a production streaming gateway for Claude."""

from __future__ import annotations

from typing import Any

import typer

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
    auth: str = typer.Option(None, help="none | api_key | jwt [env TOKENRELAY_AUTH; none]."),
    api_keys_file: str = typer.Option(
        None, help="Hashed API keys (tokenrelay keys create) [TOKENRELAY_API_KEYS_FILE]."
    ),
    insecure_no_auth: bool = typer.Option(
        None, "--insecure-no-auth", help="Allow --auth none on a non-loopback address."
    ),
    ssl_certfile: str = typer.Option(None, help="TLS certificate (PEM) [TOKENRELAY_SSL_CERTFILE]."),
    ssl_keyfile: str = typer.Option(None, help="TLS private key (PEM) [TOKENRELAY_SSL_KEYFILE]."),
    cors_origin: list[str] = typer.Option(
        None, help="An allowed browser origin; repeat for several [TOKENRELAY_CORS_ORIGINS]."
    ),
    log_level: str = typer.Option("info", help="debug | info | warning | error."),
) -> None:
    """Run the gateway. Settings come from flags, then TOKENRELAY_* variables."""
    from tokenrelay.auth.factory import UnsafeConfiguration, build_authenticator, check_exposure
    from tokenrelay.config import Settings
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
            "auth": auth,
            "api_keys_file": api_keys_file,
            "insecure_no_auth": insecure_no_auth,
            "ssl_certfile": ssl_certfile,
            "ssl_keyfile": ssl_keyfile,
            "cors_origins": cors_origin or None,
        }.items()
        if v is not None
    }
    settings = Settings(**overrides)
    try:
        warning = check_exposure(settings)
        build_authenticator(settings)  # a missing keys file or JWT key fails here, clearly
    except (UnsafeConfiguration, ValueError, OSError) as exc:
        typer.echo(f"tokenrelay: {exc}", err=True)
        raise typer.Exit(2) from None
    if warning:
        typer.secho(warning, err=True, fg="red", bold=True)
    scheme = "https" if settings.tls else "http"
    typer.echo(
        f"tokenrelay on {scheme}://{settings.host}:{settings.port}  "
        f"(provider: {settings.resolved_provider()}, store: {settings.store}, "
        f"model: {settings.model}, auth: {settings.auth})"
    )
    run_server(settings, log_level=log_level)


@app.command()
def simulate(
    host: str = typer.Option("127.0.0.1", help="Address to bind."),
    port: int = typer.Option(8090, help="Port to bind."),
    ttft_ms: int = typer.Option(300, help="Default delay before the first token."),
    tps: float = typer.Option(60.0, help="Default tokens per second (0: no delay at all)."),
) -> None:
    """Run the built-in Claude simulator as a standalone Messages API server."""
    from tokenrelay.simulator.server import run

    run(host, port, ttft_ms=ttft_ms, tps=tps)


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
    gateway: str = typer.Option(None, help="Gateway URL; default: start one here."),
    upstream: str = typer.Option(None, help="Upstream URL; default: start a simulator here."),
    gateway_pid: int = typer.Option(None, help="PID of the gateway, for its CPU and memory."),
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
) -> None:
    """Compare the gateway with a direct connection to the upstream, in one run."""
    from tokenrelay.client.bench import BenchConfig
    from tokenrelay.client.bench_run import run_bench

    config = BenchConfig(
        concurrency=concurrency, total=total, tokens=tokens, tps=tps, ttft_ms=ttft_ms, model=model
    )
    ok = run_bench(
        config,
        gateway=gateway,
        upstream=upstream,
        gateway_pid=gateway_pid,
        json_out=json_out,
        store=store,
    )
    raise typer.Exit(0 if ok else 1)


keys = typer.Typer(help="Manage API keys (stored only as hashes).", no_args_is_help=True)
app.add_typer(keys, name="keys")


@keys.command("create")
def keys_create(
    user: str = typer.Option(..., help="The user the key authenticates as."),
    file: str = typer.Option(
        "tokenrelay-keys.txt",
        envvar="TOKENRELAY_API_KEYS_FILE",
        help="Keys file to append the key's hash to.",
    ),
) -> None:
    """Create a key: the key is printed once; only its hash is stored."""
    import os
    from pathlib import Path

    from tokenrelay.auth.api_keys import new_key

    key, line = new_key(user)
    path = Path(file)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(fd, "a") as out:
        out.write(line + "\n")
    typer.echo(key)
    typer.echo(f"(stored as a hash in {path}; this key is not shown again)", err=True)


def main() -> None:
    app()
