"""`tokenrelay chat`: one question to a running gateway, the answer printed as it streams."""

from __future__ import annotations

import contextlib
import time
from typing import Any

import httpx
from rich.console import Console

from tokenrelay.client.relay import TokenRelay, TokenRelayError


async def run_chat(
    url: str, prompt: str, params: dict[str, Any], *, api_key: str | None = None
) -> bool:
    out = Console(highlight=False, soft_wrap=True)
    err = Console(stderr=True, highlight=False, soft_wrap=True)
    started = time.perf_counter()
    first: float | None = None
    tokens = 0
    try:
        async with (
            TokenRelay(url, api_key=api_key) as relay,
            contextlib.aclosing(relay.stream(prompt, **params)) as events,
        ):
            async for event in events:
                if event.token is not None:
                    if first is None:
                        first = time.perf_counter()
                    tokens += 1
                    out.print(event.token, end="", markup=False, soft_wrap=True)
                elif event.reset:
                    out.print("\n[yellow]… the answer restarts[/yellow]")
                elif "tool_use" in event.data:
                    tool = event.data["tool_use"]
                    out.print(f"\n[cyan]tool call[/cyan] {tool['name']} {tool['input']}")
                elif event.done:
                    elapsed = time.perf_counter() - (first or started)
                    ttft = ((first or started) - started) * 1000
                    rate = tokens / elapsed if elapsed > 0 else 0.0
                    usage = event.data.get("usage", {})
                    err.print(
                        f"\n[dim]{event.data.get('stop_reason')} · ttft {ttft:.0f} ms · "
                        f"{rate:.0f} tok/s · {usage.get('output_tokens', 0)} tokens · "
                        f"${event.data.get('cost_usd', 0):.6f}[/dim]"
                    )
                    return True
                elif event.error is not None:
                    retry = "retryable" if event.data.get("retryable") else "not retryable"
                    err.print(
                        f"\n[red]error ({event.data.get('code')}, {retry}):[/red] {event.error}"
                    )
                    return False
    except TokenRelayError as exc:
        err.print(f"[red]{exc.status} {exc.error_type}:[/red] {exc.message}")
        return False
    except httpx.TransportError as exc:
        err.print(f"[red]cannot reach {url}:[/red] {exc}")
        return False
    return False
