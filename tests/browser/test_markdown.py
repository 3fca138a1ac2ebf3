"""Answers as Markdown on the chat page, in real Chromium against real gateway and
simulator processes: the DOM built exactly, markup and unsafe links left as text, code
copied by its button, the page's CSP untouched, and only the open block re-rendered."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from html import escape
from typing import Any

from playwright.async_api import Browser

from tests.support import ROOT, Stack, unique
from tests.support.browser import WAIT_MS, ChatPage, stream_log

# Every CSP violation the page reports, from before its first script runs.
WATCH_CSP = """
window.violations = [];
document.addEventListener("securitypolicyviolation",
  (e) => window.violations.push(`${e.violatedDirective} ${e.blockedURI}`));
"""
LINK = 'target="_blank" rel="noopener noreferrer"'
COPY = (
    '<button class="copy" type="button" data-testid="copy" aria-label="Copy the code">Copy</button>'
)
CODE = "def flow(river):\n    return river.length * 2  # **not bold**"
# tests/fixtures/replays/markdown.sse's answer, as the page must build it.
RIVERS = (
    "<h1>Rivers of the world</h1>"
    "<p>Some rivers are <strong>long</strong>, some are <em>wide</em>; the <code>Nile</code>"
    " is both.<br>See "
    f'<a href="https://example.com/atlas?q=rivers&amp;lang=en" {LINK}>the atlas</a>'
    " or [this](javascript:alert(1)).</p>"
    "<h2>Three to know</h2>"
    "<ol><li>The Amazon</li><li>The Nile<ul><li>through <em>Egypt</em></li></ul></li>"
    "<li>The Yangtze</li></ol>"
    "<ul><li>unordered &lt;b&gt;markup&lt;/b&gt;</li>"
    '<li>&lt;img src=x onerror="window.pwned=1"&gt;</li></ul>'
    "<blockquote><p>Water is the driving force of all nature.</p></blockquote>"
    f'<div class="code-block"><div class="code-head"><span class="code-lang">python</span>{COPY}'
    f'</div><pre><code class="language-python">{escape(CODE, False)}</code></pre></div>'
    "<p>That is all.</p>"
)


@contextlib.asynccontextmanager
async def watched_chat(browser: Browser, base: str) -> AsyncIterator[ChatPage]:
    context = await browser.new_context(viewport={"width": 1000, "height": 900})
    try:
        await context.grant_permissions(["clipboard-read", "clipboard-write"], origin=base)
        await context.add_init_script(WATCH_CSP)
        chat = ChatPage(await context.new_page(), base)
        await chat.open()
        yield chat
        assert chat.errors == []
        assert await chat.page.evaluate("() => window.violations") == []
    finally:
        await context.close()


def replayed_text() -> str:
    """The answer's text in the replay, from its text deltas."""
    raw = (ROOT / "tests" / "fixtures" / "replays" / "markdown.sse").read_text()
    deltas = [json.loads(line[6:]) for line in raw.splitlines() if line.startswith("data: ")]
    return "".join(d["delta"]["text"] for d in deltas if d.get("delta", {}).get("text"))


async def inner_html(chat: ChatPage, index: int = -1) -> str:
    return await chat.answer(index).evaluate("el => el.innerHTML")  # type: ignore[no-any-return]


async def test_an_answer_of_markdown_is_built_exactly_and_its_code_copied(
    browser: Browser, stack: Stack
) -> None:
    async with watched_chat(browser, stack.gateway) as chat:
        await chat.send(unique("Tell me about rivers [[sim:replay=markdown]]"))
        await chat.wait_for_state("done")
        await chat.screenshot("markdown")

        assert await inner_html(chat) == RIVERS
        text = replayed_text()
        log = await stream_log(stack.gateway, await last_stream_id(chat))
        assert log.text == text
        answer = chat.answer()
        assert await answer.locator("img").count() == 0
        assert await answer.locator("b").count() == 0
        assert await chat.page.evaluate("() => window.pwned") is None
        # Only the safe link is a link, and it opens apart from the page.
        links = answer.locator("a")
        assert await links.count() == 1
        assert await links.first.get_attribute("href") == (
            "https://example.com/atlas?q=rivers&lang=en"
        )

        copy = answer.get_by_test_id("copy")
        await copy.click()
        await chat.page.wait_for_function(
            "() => document.querySelector('[data-testid=copy]').textContent === 'Copied'",
            timeout=WAIT_MS,
        )
        assert await chat.page.evaluate("() => navigator.clipboard.readText()") == CODE

        # Reopened from the gateway, the stored answer is built the same.
        await chat.page.reload()
        await chat.page.wait_for_selector("body[data-ready=true]", timeout=WAIT_MS)
        assert await inner_html(chat) == RIVERS
        assert await chat.answer().get_by_test_id("copy").count() == 1


async def last_stream_id(chat: ChatPage) -> str:
    response = await chat.stream_posts()[-1].response()
    assert response is not None
    stream_id = await response.header_value("x-stream-id")
    assert stream_id
    return stream_id


async def test_inline_markdown_streams_in_and_markup_stays_text(
    browser: Browser, stack: Stack
) -> None:
    crafted = (
        "Some **bold**, *italic*, ***both*** and `a <code> span`; a [safe link](https://example.org/a)"
        " and [unsafe](javascript:window.pwned=3) ones, <script>window.pwned=1</script>"
        ' <img src=x onerror="window.pwned=2"> and snake_case_stays.'
    )
    expected = (
        "<p>Some <strong>bold</strong>, <em>italic</em>, <strong><em>both</em></strong> and "
        "<code>a &lt;code&gt; span</code>; a "
        f'<a href="https://example.org/a" {LINK}>safe link</a> and '
        "[unsafe](javascript:window.pwned=3) ones, &lt;script&gt;window.pwned=1&lt;/script&gt; "
        '&lt;img src=x onerror="window.pwned=2"&gt; and snake_case_stays.</p>'
    )
    async with watched_chat(browser, stack.gateway) as chat:
        await chat.page.evaluate(
            """() => {
                window.shapes = [];
                new MutationObserver(() => {
                    const answer = document.querySelector(".turn:last-child [data-testid=answer]");
                    if (answer && answer.innerHTML) window.shapes.push(answer.innerHTML);
                }).observe(document.getElementById("conversation"),
                           { subtree: true, childList: true, characterData: true });
            }"""
        )
        await chat.send(f"{crafted} [[sim:echo=1]] [[sim:tps=30]]")
        await chat.wait_for_state("done")
        await chat.screenshot("inline-markdown")

        assert await inner_html(chat) == expected
        assert await chat.answer_text() == (
            "Some bold, italic, both and a <code> span; a safe link and"
            " [unsafe](javascript:window.pwned=3) ones, <script>window.pwned=1</script>"
            ' <img src=x onerror="window.pwned=2"> and snake_case_stays.'
        )
        conversation = chat.page.get_by_test_id("conversation")
        for tag in ("img", "script", "b"):
            assert await conversation.locator(tag).count() == 0
        assert await chat.page.evaluate("() => window.pwned") is None
        assert chat.dialogs == []
        # It grew word by word: the code span shown as text until its closing backtick.
        shapes: list[str] = await chat.page.evaluate("() => window.shapes")
        assert len(set(shapes)) >= 5
        assert any("and `a" in shape for shape in shapes)
        assert shapes[-1] == expected


# The document markdown.js renders in the page itself, in chunks cut anywhere.
DOCUMENT = (
    "# Title\n\nA paragraph with **bold** text\nover two lines.\n\n- one\n- two\n  - nested\n\n"
    "```js\nconst x = 1;\n\nconsole.log(x);\n```\n> quoted *words*\n\nThe end."
)


async def test_only_the_open_block_is_rendered_again_as_text_arrives(chat: ChatPage) -> None:
    result: dict[str, Any] = await chat.page.evaluate(
        """async (source) => {
            const { MarkdownView, parseBlocks, renderBlocks } = await import("/static/markdown.js");
            const whole = (text) => {
                const div = document.createElement("div");
                div.append(...renderBlocks(parseBlocks(text), document));
                return div.innerHTML;
            };
            const root = document.createElement("div");
            document.body.append(root);
            const view = new MarkdownView(root);
            const removed = [];
            new MutationObserver((records) => {
                for (const r of records) for (const n of r.removedNodes) removed.push(n);
            }).observe(root, { childList: true });
            let text = "";
            let heading = null;
            const mismatches = [];
            for (let i = 0; i < source.length; i += 3) {
                const chunk = source.slice(i, i + 3);
                view.append(chunk);
                text += chunk;
                if (root.innerHTML !== whole(text)) mismatches.push(text);
                // Final once a complete line after it started the paragraph.
                if (!heading && text.includes("text\\n")) heading = root.children[0];
                await new Promise((resolve) => setTimeout(resolve, 0));
            }
            const finals = [...root.children].slice(0, -1);
            return {
                mismatches,
                html: root.innerHTML,
                expected: whole(source),
                sameHeading: root.children[0] === heading,
                finalsRemoved: finals.filter((n) => removed.includes(n)).length,
                removed: removed.length,
                chunks: Math.ceil(source.length / 3),
            };
        }""",
        DOCUMENT,
    )
    assert result["mismatches"] == []
    assert result["html"] == result["expected"]
    assert result["sameHeading"] is True
    assert result["finalsRemoved"] == 0
    # Each chunk replaced the open block's nodes (one or two of them), never the rest.
    assert result["chunks"] - 1 <= result["removed"] <= 2 * result["chunks"]


def test_the_page_scripts_never_write_html() -> None:
    for name in ("chat.js", "markdown.js"):
        source = (ROOT / "tokenrelay" / "web" / name).read_text()
        for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write"):
            assert sink not in source, (name, sink)
