"""What several commands share: their gateway options, and how they fail."""

from __future__ import annotations

from typing import Any

import typer


def fail(message: str) -> typer.Exit:
    typer.echo(f"tokenrelay: {message}", err=True)
    return typer.Exit(1)


def gateway_url_option() -> Any:
    return typer.Option("http://127.0.0.1:8080", envvar="TOKENRELAY_URL", help="Gateway URL.")


def api_key_option() -> Any:
    return typer.Option(
        None, envvar="TOKENRELAY_API_KEY", help="Key for a gateway with --auth api_key."
    )
