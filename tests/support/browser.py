"""The chat page as a user sees it, in Debian's Chromium driven by Playwright.

Screenshots go to tests/browser/artifacts/ (not committed), one or more per test.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
from playwright.async_api import Browser, Dialog, Page, Request

from tests.support.streams import Read, read_stream, start

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[1] / "browser" / "artifacts"
WAIT_MS = 30_000  # generous: a condition, never a measured duration
STREAM_POST = re.compile(r"^/api/(stream-response|conversations/[^/]+/messages)$")


class ChatPage:
    """The chat page as a user sees it, plus what it sent over the network."""

    def __init__(self, page: Page, base: str) -> None:
        self.page = page
        self.base = base
        self.dialogs: list[str] = []
        self.errors: list[str] = []
        self.requests: list[Request] = []
        page.on("dialog", self._on_dialog)
        page.on("pageerror", lambda exc: self.errors.append(str(exc)))
        page.on("request", lambda request: self.requests.append(request))

    async def _on_dialog(self, dialog: Dialog) -> None:
        self.dialogs.append(dialog.message)
        await dialog.dismiss()

    async def open(self) -> None:
        await self.page.goto(f"{self.base}/")
        await self.page.wait_for_selector("body[data-ready=true]", timeout=WAIT_MS)

    async def send(self, prompt: str) -> None:
        await self.page.fill("#prompt", prompt)
        await self.page.click("#send")

    def answer(self, index: int = -1) -> Any:
        return self.page.get_by_test_id("answer").nth(index)

    def turn(self, index: int = -1) -> Any:
        return self.page.locator(".turn").nth(index)

    async def answer_text(self, index: int = -1) -> str:
        return await self.answer(index).evaluate("el => el.textContent")  # type: ignore[no-any-return]

    async def wait_for_state(self, state: str) -> None:
        await self.page.wait_for_selector(
            f".turn:last-child .turn-state[data-state={state}]", timeout=WAIT_MS
        )

    async def wait_for_text(self, condition: str, arg: Any = None) -> None:
        """Wait until `condition` (a JS function of the last answer's text) holds."""
        await self.page.wait_for_function(
            f"""([arg]) => {{
                const answers = document.querySelectorAll("[data-testid=answer]");
                const text = answers.length ? answers[answers.length - 1].textContent : "";
                return ({condition})(text, arg);
            }}""",
            arg=[arg],
            timeout=WAIT_MS,
        )

    async def record_states(self) -> None:
        """Keep every state the page shows, in order, in `window.states`."""
        await self.page.evaluate(
            """() => {
                const el = document.getElementById("state");
                window.states = [el.dataset.state];
                new MutationObserver(() => {
                    const state = el.dataset.state;
                    if (window.states.at(-1) !== state) window.states.push(state);
                }).observe(el, { attributes: true, attributeFilter: ["data-state"] });
            }"""
        )

    async def states(self) -> list[str]:
        return await self.page.evaluate("() => window.states")  # type: ignore[no-any-return]

    async def screenshot(self, name: str, **kwargs: Any) -> Path:
        ARTIFACTS.mkdir(exist_ok=True)
        path = ARTIFACTS / f"{name}.png"
        await self.page.screenshot(path=str(path), **kwargs)
        return path

    def stream_posts(self) -> list[Request]:
        """The requests that started a stream: a conversation's new turn, or (without a
        database) the whole conversation to /api/stream-response."""
        return [
            r
            for r in self.requests
            if r.method == "POST" and STREAM_POST.search(urlsplit(r.url).path)
        ]

    def posted_bodies(self) -> list[Any]:
        return [r.post_data_json for r in self.stream_posts()]


@contextlib.asynccontextmanager
async def chat_page(browser: Browser, base: str, **context_options: Any) -> AsyncIterator[ChatPage]:
    context = await browser.new_context(
        viewport=context_options.pop("viewport", {"width": 1000, "height": 760}), **context_options
    )
    try:
        chat = ChatPage(await context.new_page(), base)
        await chat.open()
        yield chat
        assert chat.errors == []  # no uncaught exception in the page, ever
    finally:
        await context.close()


async def direct(gateway: str, prompt: str) -> Read:
    """The same request straight to the gateway, read with httpx-sse: the expected result."""
    async with httpx.AsyncClient(base_url=gateway, timeout=60) as client:
        return await start(client, {"prompt": prompt})


async def stream_log(gateway: str, stream_id: str) -> Read:
    """Everything a stream's log holds after its start event, read back from the gateway."""
    async with httpx.AsyncClient(base_url=gateway, timeout=60) as client:
        return await read_stream(
            client, "GET", f"/api/streams/{stream_id}", headers={"Last-Event-ID": f"{stream_id}:0"}
        )
