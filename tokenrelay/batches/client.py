"""`tokenrelay batch …`: a client of a running gateway's /api/batches routes.

`submit` checks the file here first, as the gateway would (every error with its line
number; nothing is sent if any line is wrong), against the default limits and price
table; the gateway checks it again with its own. `status --watch` shows the request
counts until the batch ends: a Rich progress bar on a terminal, else a line each time
the counts change (for logs and scripts).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import orjson
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from tokenrelay.batches.input import parse_jsonl
from tokenrelay.config import Settings
from tokenrelay.pricing import ModelTable
from tokenrelay.validation import Limits, RequestValidator

JSONL = "application/x-ndjson"
COUNTS = ("processing", "succeeded", "errored", "canceled", "expired")
# Exit codes: 0 done, 1 the gateway refused or cannot be reached, 2 bad input.
FAILED, BAD_INPUT = 1, 2


class Refused(Exception):
    """The gateway answered with an error (or could not be reached)."""


def counts_line(batch: dict[str, Any]) -> str:
    counts = batch["request_counts"]
    parts = ", ".join(f"{name} {counts[name]}" for name in COUNTS)
    cost = batch.get("cost_usd")
    return f"{batch['processing_status']}: {parts}" + (f", ${cost:.8f}" if cost is not None else "")


class Gateway:
    def __init__(self, url: str, api_key: str | None) -> None:
        headers = {"x-api-key": api_key} if api_key else {}
        self._http = httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=60)
        self.url = url

    def __enter__(self) -> Gateway:
        return self

    def __exit__(self, *_: object) -> None:
        self._http.close()

    def call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise Refused(f"cannot reach {self.url}: {exc}") from None
        if response.status_code >= 400:
            raise Refused(f"{response.status_code} {_error_of(response)}")
        return response

    def json(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        body: dict[str, Any] = self.call(method, path, **kwargs).json()
        return body


def _error_of(response: httpx.Response) -> str:
    try:
        error = response.json()["error"]
        return f"{error['type']}: {error['message']}"
    except (ValueError, KeyError, TypeError):
        return response.text[:500]


def local_validator() -> RequestValidator:
    default_model = Settings.model_fields["model"].default
    return RequestValidator(Limits(), ModelTable(), default_model)


def submit(gateway: Gateway, path: Path, model: str | None, err: Console) -> str:
    """The new batch's id; BatchInputInvalid (nothing sent) for a bad file."""
    raw = path.read_bytes()
    items = parse_jsonl(raw, local_validator(), model)
    params = {"model": model} if model else None
    batch = gateway.json(
        "POST", "/api/batches", content=raw, params=params, headers={"content-type": JSONL}
    )
    err.print(
        f"{len(items)} requests sent as {batch['id']} to deployment {batch['deployment']}",
        highlight=False,
    )
    return str(batch["id"])


def watch(gateway: Gateway, batch_id: str, interval: float, out: Console) -> dict[str, Any]:
    """Poll until the batch has ended; its last state."""
    batch = gateway.json("GET", f"/api/batches/{batch_id}")
    if not out.is_terminal:
        last = counts_line(batch)
        out.print(last, highlight=False)
        while batch["processing_status"] != "ended":
            time.sleep(interval)
            batch = gateway.json("GET", f"/api/batches/{batch_id}")
            line = counts_line(batch)
            if line != last:
                out.print(line, highlight=False)
                last = line
        return batch
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())  # fmt: skip
    with Progress(*columns, console=out) as progress:
        task = progress.add_task(counts_line(batch), total=batch["requests"])
        while True:
            done = batch["requests"] - batch["request_counts"]["processing"]
            progress.update(task, completed=done, description=counts_line(batch))
            if batch["processing_status"] == "ended":
                return batch
            time.sleep(interval)
            batch = gateway.json("GET", f"/api/batches/{batch_id}")


def batches_table(batches: list[dict[str, Any]]) -> Table:
    table = Table(title="Batches, newest first")
    for column in ("id", "status", "requests", *COUNTS[1:], "cost (USD)", "created"):
        table.add_column(column)
    for b in batches:
        c = b["request_counts"]
        cost = "" if b["cost_usd"] is None else f"{b['cost_usd']:.8f}"
        table.add_row(b["id"], b["processing_status"], str(b["requests"]),
                      *(str(c[n]) for n in COUNTS[1:]), cost, b["created_at"])  # fmt: skip
    return table


def dumps(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_INDENT_2).decode()
