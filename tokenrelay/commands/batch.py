"""`tokenrelay batch`: Message Batches on a running gateway."""

from __future__ import annotations

import typer

from tokenrelay.commands.common import api_key_option, fail, gateway_url_option

app = typer.Typer(
    help="Batches through Claude's Message Batches API, on a running gateway.",
    no_args_is_help=True,
)


@app.command("submit")
def batch_submit(
    file: str = typer.Argument(..., help="JSONL: one request per line, each with a custom_id."),
    model: str = typer.Option(None, help="Model of the lines that name none."),
    url: str = gateway_url_option(),
    api_key: str = api_key_option(),
) -> None:
    """Check the file (errors with their line numbers, exit 2, nothing sent), then send
    it as one batch; prints the batch's id."""
    from pathlib import Path

    from rich.console import Console

    from tokenrelay.batches import client
    from tokenrelay.batches.input import BatchInputInvalid

    err = Console(stderr=True)
    try:
        with client.Gateway(url, api_key) as gateway:
            typer.echo(client.submit(gateway, Path(file), model, err))
    except BatchInputInvalid as exc:
        for error in exc.errors:
            typer.echo(f"{file}: {error}", err=True)
        typer.echo(f"tokenrelay: nothing sent: {len(exc.errors)} errors", err=True)
        raise typer.Exit(client.BAD_INPUT) from None
    except OSError as exc:
        typer.echo(f"tokenrelay: {exc}", err=True)
        raise typer.Exit(client.BAD_INPUT) from None
    except client.Refused as exc:
        raise fail(str(exc)) from None


@app.command("status")
def batch_status(
    batch_id: str = typer.Argument(..., help="The batch's id (batch_…)."),
    watch: bool = typer.Option(False, "--watch", help="Show the counts until it ends."),
    interval: float = typer.Option(1.0, min=0.05, help="Seconds between looks, with --watch."),
    json_out: bool = typer.Option(False, "--json", help="Print the batch as JSON."),
    url: str = gateway_url_option(),
    api_key: str = api_key_option(),
) -> None:
    """The batch's status and request counts (refreshed from its upstream)."""
    from rich.console import Console

    from tokenrelay.batches import client

    out = Console(highlight=False, soft_wrap=True)
    try:
        with client.Gateway(url, api_key) as gateway:
            if watch:
                found = client.watch(gateway, batch_id, interval, out)
            else:
                found = gateway.json("GET", f"/api/batches/{batch_id}")
    except client.Refused as exc:
        raise fail(str(exc)) from None
    if json_out:
        typer.echo(client.dumps(found))
    elif not watch:
        out.print(f"{found['id']} {client.counts_line(found)}")


@app.command("results")
def batch_results(
    batch_id: str = typer.Argument(..., help="The batch's id (batch_…)."),
    output: str = typer.Option(None, "-o", "--output", help="Write the JSONL here."),
    url: str = gateway_url_option(),
    api_key: str = api_key_option(),
) -> None:
    """An ended batch's results, a JSON line per request in the input's order."""
    from pathlib import Path

    from tokenrelay.batches import client

    try:
        with client.Gateway(url, api_key) as gateway:
            body = gateway.call("GET", f"/api/batches/{batch_id}/results").content
    except client.Refused as exc:
        raise fail(str(exc)) from None
    if output is None:
        typer.echo(body.decode(), nl=False)
        return
    Path(output).write_bytes(body)
    typer.echo(f"{len(body.splitlines())} results written to {output}", err=True)


@app.command("list")
def batch_list(
    limit: int = typer.Option(20, min=1, max=100, help="How many, newest first."),
    json_out: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    url: str = gateway_url_option(),
    api_key: str = api_key_option(),
) -> None:
    """Your batches, newest first."""
    from rich.console import Console

    from tokenrelay.batches import client

    try:
        with client.Gateway(url, api_key) as gateway:
            found = gateway.json("GET", "/api/batches", params={"limit": limit})["data"]
    except client.Refused as exc:
        raise fail(str(exc)) from None
    if json_out:
        typer.echo(client.dumps(found))
    else:
        Console().print(client.batches_table(found))


@app.command("cancel")
def batch_cancel(
    batch_id: str = typer.Argument(..., help="The batch's id (batch_…)."),
    url: str = gateway_url_option(),
    api_key: str = api_key_option(),
) -> None:
    """Cancel what the upstream has not answered yet."""
    from rich.console import Console

    from tokenrelay.batches import client

    try:
        with client.Gateway(url, api_key) as gateway:
            found = gateway.json("POST", f"/api/batches/{batch_id}/cancel")
    except client.Refused as exc:
        raise fail(str(exc)) from None
    Console(highlight=False, soft_wrap=True).print(f"{found['id']} {client.counts_line(found)}")
