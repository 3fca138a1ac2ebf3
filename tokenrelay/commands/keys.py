"""`tokenrelay keys`: API keys, kept as hashes in a keys file."""

from __future__ import annotations

from typing import Any

import typer

from tokenrelay.commands.common import fail

app = typer.Typer(help="Manage API keys (stored only as hashes).", no_args_is_help=True)


_KEYS_FILE_HELP = "The keys file [env TOKENRELAY_API_KEYS_FILE; tokenrelay-keys.txt]."


def _keys_file_option(help_text: str = _KEYS_FILE_HELP) -> Any:
    return typer.Option("tokenrelay-keys.txt", envvar="TOKENRELAY_API_KEYS_FILE", help=help_text)


@app.command("create")
def keys_create(
    user: str = typer.Option(..., help="The user the key authenticates as."),
    file: str = _keys_file_option("Keys file to append the key's hash to."),
    admin: bool = typer.Option(False, "--admin", help="Give the key the admin role."),
    rpm: int = typer.Option(None, min=0, help="The user's own requests per minute (0 = none)."),
    tpm: int = typer.Option(None, min=0, help="The user's own tokens per minute (0 = none)."),
    daily_usd: float = typer.Option(None, min=0, help="The user's own daily budget in USD."),
    monthly_usd: float = typer.Option(None, min=0, help="The user's own monthly budget in USD."),
) -> None:
    """Create a key: the key is printed once; only its hash is stored."""
    from pathlib import Path

    from tokenrelay.auth.api_keys import append_key, new_key

    limits = {name: n for name, n in (("rpm", rpm), ("tpm", tpm)) if n is not None}
    for name, usd in (("daily_usd", daily_usd), ("monthly_usd", monthly_usd)):
        if usd is not None:
            limits[name] = round(usd * 1e6)  # a key line's budgets are in micro-dollars
    try:
        key, line = new_key(user, admin=admin, limits=limits or None)
    except ValueError as exc:
        typer.echo(f"tokenrelay: {exc}", err=True)
        raise typer.Exit(2) from None
    path = Path(file)
    append_key(path, line)
    typer.echo(key)
    typer.echo(f"(stored as a hash in {path}; this key is not shown again)", err=True)


@app.command("list")
def keys_list(
    file: str = _keys_file_option(),
    json_out: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """The keys in the file: id, user, roles and limits (never a hash)."""
    from pathlib import Path

    import orjson
    from rich.console import Console
    from rich.table import Table

    from tokenrelay.auth.api_keys import USD_LIMITS, create_command, format_limits, read_keys

    path = Path(file)
    try:
        stored = read_keys(path)
    except FileNotFoundError:
        message = f"no keys file at {path.absolute()}: create a key with '{create_command(path)}'"
        raise fail(message) from None
    except (OSError, ValueError) as exc:
        raise fail(f"{path}: {exc}") from None
    if json_out:
        rows = [
            {
                "id": k.key_id,
                "user": k.user,
                "roles": sorted(k.roles),
                "limits": {
                    name: value / 1e6 if name in USD_LIMITS else value
                    for name, value in k.limits.items()
                }
                if k.limits
                else None,
            }
            for k in stored
        ]
        typer.echo(orjson.dumps({"keys": rows}, option=orjson.OPT_INDENT_2).decode())
        return
    table = Table(title=f"API keys in {path}")
    for column in ("key id", "user", "roles", "limits"):
        table.add_column(column)
    for k in stored:
        limits = format_limits(k.limits or {})
        table.add_row(k.key_id, k.user, ",".join(sorted(k.roles)), limits)
    Console().print(table)


@app.command("revoke")
def keys_revoke(
    user: str = typer.Option(None, help="Revoke every key of this user."),
    key_id: str = typer.Option(None, "--id", help="Revoke the key with this id."),
    file: str = _keys_file_option(),
) -> None:
    """Remove keys from the file (rewritten atomically); running gateways that read it
    refuse them within about a second."""
    from pathlib import Path

    from tokenrelay.auth.api_keys import revoke_keys

    if (user is None) == (key_id is None):
        typer.echo("tokenrelay: give either --user NAME or --id KEY_ID", err=True)
        raise typer.Exit(2)
    path = Path(file)
    try:
        revoked = revoke_keys(path, user=user, key_id=key_id)
    except FileNotFoundError:
        raise fail(f"no keys file at {path.absolute()}") from None
    except (OSError, ValueError) as exc:
        raise fail(f"{path}: {exc}") from None
    if not revoked:
        which = f"of user {user!r}" if user is not None else f"with id {key_id!r}"
        raise fail(f"no key {which} in {path}")
    for k in revoked:
        typer.echo(f"revoked {k.key_id} (user {k.user})")
