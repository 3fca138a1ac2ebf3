"""`useStreamingResponse` (tokenrelay/web/react.js, as the gateway serves it) rendered by
the real React 19 and react-dom from npm (tests/node), in Chromium, against real gateway
and simulator processes.

The test page lives on the gateway's origin (Playwright answers for one path of it), so
the hook talks to the gateway as a same-origin app would; React comes from
tests/support/react_page.py, the hook and tokenrelay.js from the gateway's /static/.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

from playwright.async_api import Browser, Page, Route

from tests.support import Stack, unique
from tests.support.answers import direct_message
from tests.support.browser import ARTIFACTS, WAIT_MS, stream_log
from tests.support.react_page import import_map, react_modules

PREFIX = "/_react-test/"
APP = """
import { createElement as h, version } from "react";
import { createRoot } from "react-dom/client";
import { useStreamingResponse } from "/static/react.js";

// Every render's values, in order, as the component saw them.
window.renders = [];
window.reactVersion = version;

function ToolCall({ call }) {
  return h("li", { className: "tool", "data-done": String(call.done) },
    h("b", null, call.name), " ",
    h("code", null, call.done ? JSON.stringify(call.input) : call.inputJson));
}

function App() {
  const answer = useStreamingResponse({});
  const { text, thinking, toolCalls, state, stopReason, content } = answer;
  window.renders.push({ text, thinking, toolCalls, state, stopReason, content });
  window.answer = answer;
  return h("main", null,
    h("p", { id: "state" }, state),
    h("details", { id: "thinking" }, h("summary", null, "Thinking"), h("p", null, thinking)),
    h("p", { id: "text" }, text),
    h("ul", { id: "tools" }, toolCalls.map((call) => h(ToolCall, { key: call.id, call }))));
}

const root = createRoot(document.getElementById("root"));
root.render(h(App));
window.unmount = () => root.unmount();
"""


def page_html() -> str:
    return (
        '<!doctype html><html><head><meta charset="utf-8">'
        f'<script type="importmap">{import_map(PREFIX)}</script>'
        f'<script type="module" src="{PREFIX}app.js"></script>'
        '</head><body><div id="root"></div></body></html>'
    )


async def serve_test_files(route: Route) -> None:
    name = route.request.url.split(PREFIX, 1)[1]
    if name == "index.html":
        await route.fulfill(body=page_html(), content_type="text/html")
    elif name == "app.js":
        await route.fulfill(body=APP, content_type="text/javascript")
    else:
        await route.fulfill(body=react_modules()[name], content_type="text/javascript")


@contextlib.asynccontextmanager
async def react_page(browser: Browser, stack: Stack) -> AsyncIterator[Page]:
    context = await browser.new_context()
    try:
        page = await context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        await page.route(f"{stack.gateway}{PREFIX}**", serve_test_files)
        await page.goto(f"{stack.gateway}{PREFIX}index.html")
        await page.wait_for_function("() => window.answer !== undefined", timeout=WAIT_MS)
        yield page
        assert errors == []
    finally:
        await context.close()


async def ask(page: Page, body: dict[str, Any]) -> dict[str, Any]:
    """start(body) in the page; what its Promise resolved to."""
    result: dict[str, Any] = await page.evaluate(
        "async (body) => { const r = await window.answer.start(body);"
        " return { state: r.state, stopReason: r.stopReason }; }",
        body,
    )
    return result


async def renders(page: Page) -> list[dict[str, Any]]:
    return await page.evaluate("() => window.renders")  # type: ignore[no-any-return]


WEATHER = {"name": "weather", "input_schema": {"type": "object"}}


async def test_the_hook_in_real_react_shows_a_tool_call_forming(
    browser: Browser, stack: Stack
) -> None:
    words = unique("Weather in Rome? [[sim:tool=weather]]")
    messages = [{"role": "user", "content": words}]
    message = await direct_message(stack.simulator, messages, tools=[WEATHER])
    [text, tool] = message.content
    assert text.type == "text" and tool.type == "tool_use"
    async with react_page(browser, stack) as page:
        assert await page.evaluate("() => window.reactVersion") == "19.3.1"
        result = await ask(page, {"prompt": f"{words} [[sim:tps=20]]", "tools": [WEATHER]})
        assert result == {"state": "done", "stopReason": "tool_use"}
        await page.screenshot(path=str(ARTIFACTS / "react-hook-tool-call.png"))
        seen = await renders(page)
        final = seen[-1]

        whole = json.dumps(tool.input)
        forming = [r["toolCalls"][0]["inputJson"] for r in seen
                   if r["toolCalls"] and not r["toolCalls"][0]["done"]]  # fmt: skip
        # Rendered as it formed: its input growing, each a prefix, before it was done.
        assert forming and all(r["toolCalls"][0]["name"] == "weather" for r in seen
                               if r["toolCalls"])  # fmt: skip
        growing = sorted(set(forming), key=len)
        assert len(growing) >= 3, growing
        assert all(whole.startswith(j) for j in growing) and whole not in growing
        call = {"id": tool.id, "name": "weather", "inputJson": whole, "input": tool.input}
        assert final["toolCalls"] == [{**call, "done": True}]
        assert final["text"] == text.text and final["state"] == "done"
        assert final["content"] == [
            {"type": "text", "text": text.text},
            {"type": "tool_use", "id": tool.id, "name": "weather", "input": tool.input},
        ]
        # What react-dom put on the page.
        assert await page.locator("#text").text_content() == text.text
        assert await page.locator(".tool").count() == 1
        assert await page.locator(".tool").get_attribute("data-done") == "true"
        assert await page.locator(".tool code").text_content() == json.dumps(
            tool.input, separators=(",", ":")
        )


async def test_the_hook_in_real_react_streams_thinking_before_the_text(
    browser: Browser, stack: Stack
) -> None:
    words = unique("Why do cats purr?")
    think = {"type": "enabled", "budget_tokens": 1024}
    messages = [{"role": "user", "content": words}]
    message = await direct_message(stack.simulator, messages, thinking=think, max_tokens=2048)
    [thinking, text] = message.content
    assert thinking.type == "thinking" and text.type == "text"
    async with react_page(browser, stack) as page:
        body = {"prompt": f"{words} [[sim:tps=30]]", "thinking": think, "max_tokens": 2048}
        assert await ask(page, body) == {"state": "done", "stopReason": "end_turn"}
        seen = await renders(page)
        thought = [r["thinking"] for r in seen if r["thinking"] and not r["text"]]
        # Thinking grew on screen before any text, and was whole once the text began.
        assert len(set(thought)) >= 3
        assert all(thinking.thinking.startswith(t) for t in thought)
        assert all(r["thinking"] == thinking.thinking for r in seen if r["text"])
        final = seen[-1]
        assert final["thinking"] == thinking.thinking and final["text"] == text.text
        assert final["content"] == [
            {"type": "thinking", "thinking": thinking.thinking, "signature": thinking.signature},
            {"type": "text", "text": text.text},
        ]
        assert await page.locator("#thinking p").text_content() == thinking.thinking


async def test_unmounting_the_component_cancels_the_generation(
    browser: Browser, stack: Stack
) -> None:
    async with react_page(browser, stack) as page:
        words = unique("Go on and on [[sim:tokens=400]] [[sim:tps=10]]")
        await page.evaluate("(prompt) => { window.answer.start(prompt); }", words)
        await page.wait_for_function(
            "() => window.renders.at(-1).text.split(' ').length >= 3", timeout=WAIT_MS
        )
        stream_id = await page.evaluate("() => window.answer.streamId")
        assert stream_id
        await page.evaluate("() => window.unmount()")
        # The log ends as the gateway ended it: cancelled, long before its 400 tokens.
        log = await stream_log(stack.gateway, stream_id)
        assert log.events[-1].data["code"] == "cancelled"
        assert len(log.text.split(" ")) < 400
