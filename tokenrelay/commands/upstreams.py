"""`tokenrelay upstreams`: an upstreams file checked, or a running gateway's pool shown."""

from __future__ import annotations

from typing import Any

import typer

from tokenrelay.commands.common import fail


def upstreams(
    url: str = typer.Option("http://127.0.0.1:8080", envvar="TOKENRELAY_URL", help="Gateway URL."),
    api_key: str = typer.Option(
        None, envvar="TOKENRELAY_API_KEY", help="An admin's key, for a gateway with auth."
    ),
    check: str = typer.Option(
        None, "--check", metavar="FILE", help="Validate an upstreams file here, offline."
    ),
    json_out: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """The upstream deployments a running gateway balances over, each one's state, or
    (--check FILE) what an upstreams file describes, or why it cannot work."""
    import orjson
    from rich.console import Console

    if check is not None:
        shown = _upstreams_file(check)
        if json_out:
            typer.echo(orjson.dumps(shown, option=orjson.OPT_INDENT_2).decode())
            return
        typer.echo(f"{check}: ok, {len(shown['deployments'])} deployment(s)")
        for d in shown["deployments"]:
            models = ", ".join(d["models"]) or "every model"
            limits = "".join(f", {k} {d[k]}" for k in ("rpm", "tpm") if d[k])
            where = f" at {d['base_url']}" if d["base_url"] else ""
            key = f", key {d['key']}" if d["key"] else ""
            typer.echo(
                f"  {d['name']} ({d['kind']}){where}{key}, weight {d['weight']:g}, "
                f"models: {models}{limits}"
            )
        for model, chain in shown["fallbacks"].items():
            typer.echo(f"  fallbacks: {' -> '.join([model, *chain])}")
        return
    pool = _gateway_upstreams(url, api_key)
    if json_out:
        typer.echo(orjson.dumps(pool, option=orjson.OPT_INDENT_2).decode())
        return
    Console().print(_upstreams_table(url, pool))


def _upstreams_file(path: str) -> dict[str, Any]:
    """The pool an upstreams file describes (keys as their source), checked as
    `tokenrelay serve` checks it at start; exit 2 with the error otherwise."""
    from pathlib import Path

    from pydantic import ValidationError

    from tokenrelay.config import Settings
    from tokenrelay.pricing import ModelTable
    from tokenrelay.upstreams.config import check_models, load

    try:
        pool = load(Path(path))
        check_models(pool, ModelTable.from_file(Settings().prices_file))
    except (ValidationError, ValueError, OSError) as exc:
        typer.echo(f"tokenrelay: {exc}", err=True)
        raise typer.Exit(2) from None
    deployments = [
        {"name": d.name, "kind": d.kind, "base_url": d.base_url, "key": d.key_source,
         "weight": d.weight, "models": sorted(d.models), "rpm": d.rpm, "tpm": d.tpm}
        for d in pool.deployments
    ]  # fmt: skip
    fallbacks = {model: list(chain) for model, chain in pool.fallbacks.items()}
    return {"deployments": deployments, "fallbacks": fallbacks}


def _gateway_upstreams(url: str, api_key: str | None) -> dict[str, Any]:
    import httpx

    headers = {"x-api-key": api_key} if api_key else {}
    try:
        response = httpx.get(f"{url.rstrip('/')}/api/upstreams", headers=headers, timeout=10)
    except httpx.HTTPError as exc:
        raise fail(f"cannot reach {url}: {exc}") from None
    if response.status_code != 200:
        try:
            message = response.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = response.text[:200]
        raise fail(f"{url}: {response.status_code}: {message}")
    pool: dict[str, Any] = response.json()
    return pool


def _upstreams_table(url: str, pool: dict[str, Any]) -> Any:
    import time

    from rich.table import Table

    table = Table(title=f"Upstream deployments of {url}")
    for column in ("name", "state", "until", "in flight", "calls 1m", "errors 1m",
                   "rate limit left", "weight", "models"):  # fmt: skip
        justify = "right" if column in ("in flight", "calls 1m", "errors 1m", "weight") else "left"
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for d in pool["deployments"]:
        state = f"{d['state']} ({d['reason']})" if d["reason"] else d["state"]
        until = d["cooling_until"]
        left = [
            f"{kind} {d[f'{kind}_remaining']}/{d[f'{kind}_limit']}"
            for kind in ("requests", "tokens")
            if d[f"{kind}_remaining"] is not None
        ]
        table.add_row(
            d["name"],
            state,
            time.strftime("%H:%M:%SZ", time.gmtime(until)) if until is not None else "",
            str(d["in_flight"]),
            str(d["calls_1m"]),
            str(d["errors_1m"]),
            ", ".join(left),
            f"{d['weight']:g}",
            ", ".join(d["models"]) or "every model",
        )
    for model, chain in pool["fallbacks"].items():
        table.caption = (table.caption + "\n" if table.caption else "") + (
            f"fallbacks: {' -> '.join([model, *chain])}"
        )
    return table
