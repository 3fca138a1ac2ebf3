"""The chat page's tool calls and thinking, in real Chromium, against real gateway and
simulator processes: a tool call shown forming (its name, its input JSON growing, then
the parsed input), and thinking collapsed by default, under the page's strict CSP."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

from playwright.async_api import Browser

from tests.support import Stack, unique
from tests.support.answers import direct_message
from tests.support.browser import ChatPage

# Every CSP violation the page reports, from before its first script runs.
WATCH_CSP = """
window.violations = [];
document.addEventListener("securitypolicyviolation",
  (e) => window.violations.push(`${e.violatedDirective} ${e.blockedURI}`));
"""

# Each tool call's name, state and input text, and the thinking box, as they change.
RECORD = """() => {
    window.snapshots = [];
    new MutationObserver(() => {
        const turn = document.querySelector(".turn:last-child");
        if (!turn) return;
        const calls = [...turn.querySelectorAll("[data-testid=tool-call]")].map((el) => ({
            name: el.querySelector(".tool-name").textContent,
            state: el.dataset.state,
            input: el.querySelector(".tool-input").textContent,
        }));
        const thinking = turn.querySelector("[data-testid=thinking]");
        window.snapshots.push({
            calls,
            thinking: thinking.querySelector(".thinking-text").textContent,
            thinkingShown: !thinking.hidden,
            open: thinking.open,
            answer: turn.querySelector("[data-testid=answer]").textContent,
        });
    }).observe(document.getElementById("conversation"),
               { subtree: true, childList: true, characterData: true, attributes: true });
}"""


@contextlib.asynccontextmanager
async def watched_chat(browser: Browser, base: str) -> AsyncIterator[ChatPage]:
    context = await browser.new_context(viewport={"width": 1000, "height": 900})
    try:
        await context.add_init_script(WATCH_CSP)
        chat = ChatPage(await context.new_page(), base)
        await chat.open()
        await chat.page.evaluate(RECORD)
        yield chat
        assert chat.errors == []
        assert await chat.page.evaluate("() => window.violations") == []
    finally:
        await context.close()


async def snapshots(chat: ChatPage) -> list[dict[str, Any]]:
    return await chat.page.evaluate("() => window.snapshots")  # type: ignore[no-any-return]


async def test_a_tool_call_is_shown_forming_then_with_its_parsed_input(
    browser: Browser, stack: Stack
) -> None:
    words = unique("Weather in Kyoto? [[sim:tool=weather]]")
    message = await direct_message(stack.simulator, [{"role": "user", "content": words}])
    [text, tool] = message.content
    assert text.type == "text" and tool.type == "tool_use"
    raw = json.dumps(tool.input)
    async with watched_chat(browser, stack.gateway) as chat:
        await chat.send(f"{words} [[sim:tps=15]]")
        await chat.wait_for_state("done")
        await chat.screenshot("tool-call")

        seen = await snapshots(chat)
        forming = [
            s["calls"][0] for s in seen if s["calls"] and s["calls"][0]["state"] == "forming"
        ]
        # The name came first, then the input grew fragment by fragment, each a prefix.
        assert forming and all(c["name"] == "weather" for c in forming)
        inputs = sorted({c["input"] for c in forming}, key=len)
        assert len(inputs) >= 3, inputs
        assert all(raw.startswith(i) for i in inputs) and raw not in inputs
        # The answer's text was all there before the call began (Claude's order).
        assert all(s["answer"] == text.text for s in seen if s["calls"])

        call = chat.turn().get_by_test_id("tool-call")
        assert await call.count() == 1
        assert await call.get_attribute("data-state") == "done"
        assert await call.get_by_test_id("tool-name").text_content() == "weather"
        assert await call.get_by_test_id("tool-state").text_content() == "called"
        shown = await call.get_by_test_id("tool-input").text_content()
        assert shown == json.dumps(tool.input, indent=2)
        assert await call.get_by_test_id("tool-input").is_visible()
        assert await chat.answer_text() == text.text
        assert await chat.turn().get_by_test_id("thinking").is_hidden()


async def test_thinking_is_shown_collapsed_and_opens_on_a_click(
    browser: Browser, stack: Stack
) -> None:
    words = unique("How do tides work? [[sim:tokens=20]]")
    think = {"type": "enabled", "budget_tokens": 2048}
    message = await direct_message(
        stack.simulator, [{"role": "user", "content": words}], thinking=think, max_tokens=8192
    )
    [thinking, text] = message.content
    assert thinking.type == "thinking" and text.type == "text"
    async with watched_chat(browser, stack.gateway) as chat:
        await chat.page.check("#think")
        await chat.send(f"{words} [[sim:tps=20]]")
        await chat.wait_for_state("done")
        assert chat.posted_bodies()[-1]["thinking"] == think
        assert chat.posted_bodies()[-1]["max_tokens"] == 8192

        box = chat.turn().get_by_test_id("thinking")
        summary = box.locator("summary")
        inside = box.get_by_test_id("thinking-text")
        # Collapsed: the summary shows, the thinking itself does not, until it is opened.
        assert await box.is_visible() and await summary.is_visible()
        assert await box.evaluate("el => el.open") is False
        assert await inside.is_hidden()
        assert await summary.text_content() == "Thinking"
        assert await box.get_attribute("data-state") == "done"
        assert await inside.text_content() == thinking.thinking
        assert await chat.answer_text() == text.text
        await chat.screenshot("thinking-collapsed")

        seen = await snapshots(chat)
        # It streamed in before the answer, and stayed collapsed all along.
        grown = sorted({s["thinking"] for s in seen if s["thinking"] and not s["answer"]}, key=len)
        assert len(grown) >= 3 and all(thinking.thinking.startswith(t) for t in grown)
        assert all(s["thinking"] == thinking.thinking for s in seen if s["answer"])
        assert not any(s["open"] for s in seen)

        await summary.click()
        assert await box.evaluate("el => el.open") is True
        assert await inside.is_visible()
        await chat.screenshot("thinking-open")

        await chat.page.uncheck("#think")
        thanks = unique("Thanks [[sim:tokens=3]]")
        await chat.send(thanks)
        await chat.wait_for_state("done")
        # The next question is only the new message, without thinking: the box is the
        # page's own, and the gateway keeps the conversation.
        assert chat.posted_bodies()[-1] == {"content": thanks}
        assert await chat.turn().get_by_test_id("thinking").is_hidden()
