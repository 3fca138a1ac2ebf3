"""The chat page at `/`, in real Chromium, against real gateway and simulator processes."""

from __future__ import annotations

import re
from html import escape
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
from playwright.async_api import Browser

from tests.support import Stack, direct_text, eventually_async, run_stack, unique
from tests.support.answers import direct_message
from tests.support.auth import api_key_auth
from tests.support.browser import WAIT_MS, ChatPage, chat_page, direct, stream_log
from tests.support.proxy import CuttingProxy

STATS = re.compile(r"^TTFT \d+ ms · \d+ tok/s · (\d+) tokens · \$(\d+\.\d{6})$")


async def api_get(gateway: str, path: str, key: str) -> Any:
    async with httpx.AsyncClient(base_url=gateway, timeout=60) as client:
        response = await client.get(path, headers={"authorization": f"Bearer {key}"})
    assert response.status_code == 200
    return response.json()


async def last_stream_id(chat: ChatPage) -> str:
    """The page's latest stream, from the gateway's X-Stream-ID response header."""
    response = await chat.stream_posts()[-1].response()
    assert response is not None
    stream_id = await response.header_value("x-stream-id")
    assert stream_id
    return stream_id


async def test_answer_streams_in_growing_text_and_ends_with_the_simulators_text(
    chat: ChatPage, stack: Stack
) -> None:
    words = unique("Tell me about rivers [[sim:tokens=40]]")
    prompt = f"{words} [[sim:tps=20]]"
    expected = await direct_text(stack.simulator, words)
    await chat.page.evaluate(
        """() => {
            // Every text the answer shows, as it changes (the page updates once per frame).
            window.snapshots = [];
            new MutationObserver(() => {
                const answer = document.querySelector(".turn:last-child [data-testid=answer]");
                const state = document.getElementById("state").dataset.state;
                if (answer) window.snapshots.push([answer.textContent, state]);
            }).observe(document.getElementById("conversation"),
                       { subtree: true, childList: true, characterData: true });
        }"""
    )
    await chat.send(prompt)
    await chat.wait_for_state("done")
    await chat.screenshot("streamed-answer")

    assert await chat.answer_text() == expected
    growing = [text for text, state in await chat.page.evaluate("() => window.snapshots")
               if text and state == "streaming"]  # fmt: skip
    # Several partial answers were on screen, each a prefix of the next, before `done`.
    distinct = sorted(set(growing), key=len)
    assert len(distinct) >= 3, distinct
    assert all(expected.startswith(text) for text in distinct)
    assert distinct[0] != expected
    assert await chat.page.get_by_test_id("user-message").last.text_content() == prompt

    stats = await chat.turn().get_by_test_id("stats").text_content()
    match = STATS.match(stats or "")
    assert match, stats
    log = await stream_log(stack.gateway, await last_stream_id(chat))
    done = log.events[-1].data
    assert log.text == expected
    assert int(match[1]) == done["usage"]["output_tokens"] == 40
    assert match[2] == f"{done['cost_usd']:.6f}"


async def test_connection_cut_mid_answer_shows_reconnecting_then_the_whole_text_once(
    browser: Browser, stack: Stack
) -> None:
    words = unique("A long road [[sim:tokens=100]]")
    expected = await direct_text(stack.simulator, words)
    proxy = CuttingProxy(urlsplit(stack.gateway).port or 80)
    base = await proxy.start()
    try:
        async with chat_page(browser, base) as chat:
            await chat.record_states()
            await chat.send(f"{words} [[sim:tps=15]]")
            await chat.wait_for_text("(text) => text.split(' ').length >= 8")
            proxy.refusing = True
            proxy.cut()
            await chat.wait_for_state("reconnecting")
            await chat.screenshot("reconnecting")
            partial = await chat.answer_text()
            assert expected.startswith(partial) and partial != expected
            proxy.refusing = False
            await chat.wait_for_state("done")
            await chat.screenshot("reconnected-and-done")

            assert await chat.answer_text() == expected
            states = await chat.states()
            assert states[states.index("streaming") :] == [
                "streaming", "reconnecting", "streaming", "done",
            ]  # fmt: skip
            stream_id = await last_stream_id(chat)
            resumes = [r for r in chat.requests if r.url.endswith(f"/api/streams/{stream_id}")]
            assert resumes, "the page never tried to resume"
            last_event_ids = [await r.header_value("last-event-id") for r in resumes]
            # Every resume asked for what follows the last event shown: the start event
            # is seq 0, then one event per word.
            shown = len(partial.split(" ")) if partial else 0
            assert last_event_ids == [f"{stream_id}:{shown}"] * len(resumes)
    finally:
        await proxy.close()


async def test_stop_cancels_the_generation_on_the_server(
    browser: Browser, own_stack: Stack
) -> None:
    prompt = unique("Go on and on [[sim:tps=10]] [[sim:tokens=400]]")
    async with chat_page(browser, own_stack.gateway) as chat:
        await chat.send(prompt)
        await chat.wait_for_text("(text) => text.split(' ').length >= 3")
        assert own_stack.sim_stats()["active"] == 1
        await chat.page.click("#stop")
        await chat.wait_for_state("stopped")
        await eventually_async(
            lambda: own_stack.sim_stats()["disconnected"] == 1,
            what="the simulator to see the upstream call cancelled",
            within=WAIT_MS / 1000,
        )
        stats = own_stack.sim_stats()
        assert stats["requests"] == 1 and stats["completed"] == 0 and stats["active"] == 0
        await chat.screenshot("stopped")

        stream_id = await last_stream_id(chat)
        deletes = [r for r in chat.requests if r.method == "DELETE"]
        assert [r.url for r in deletes] == [f"{own_stack.gateway}/api/streams/{stream_id}"]
        response = await deletes[0].response()
        assert response is not None and await response.json() == {
            "stream_id": stream_id,
            "cancelled": True,
        }
        log = await stream_log(own_stack.gateway, stream_id)
        assert log.events[-1].data["code"] == "cancelled"
        shown = await chat.answer_text()
        assert log.text.startswith(shown)
        assert len(log.text.split(" ")) < 400
        assert await chat.page.is_disabled("#stop")
        assert await chat.page.is_enabled("#send")


async def test_rate_limit_after_retries_is_shown_as_a_retryable_failure(
    chat: ChatPage, stack: Stack
) -> None:
    prompt = "Busy now [[sim:status=429]]"
    expected = (await direct(stack.gateway, prompt)).events[-1].data
    assert expected["code"] == "rate_limit" and expected["retryable"] is True
    await chat.send(prompt)
    await chat.wait_for_state("failed")
    await chat.screenshot("rate-limited")
    turn = chat.turn()
    assert await turn.get_by_test_id("error").text_content() == (
        f"{expected['error']} (rate_limit; you can retry)"
    )
    assert await turn.get_by_test_id("error").is_visible()
    assert await turn.get_by_test_id("retry").is_visible()
    assert await chat.answer_text() == ""
    assert await chat.page.get_by_test_id("state").text_content() == "failed"


async def test_gateway_http_error_before_the_stream_is_shown_with_its_message(
    chat: ChatPage, stack: Stack
) -> None:
    prompt = "x" * 10_001
    async with httpx.AsyncClient(base_url=stack.gateway) as client:
        response = await client.post("/api/stream-response", json={"prompt": prompt})
    assert response.status_code == 400
    message = response.json()["error"]["message"]
    await chat.send(prompt)
    await chat.wait_for_state("failed")
    turn = chat.turn()
    assert await turn.get_by_test_id("error").text_content() == (
        f"HTTP 400 invalid_request_error: {message}"
    )
    # A request the gateway rejects as invalid will not pass on a second try.
    assert await turn.get_by_test_id("retry").is_hidden()
    await chat.screenshot("http-400")


async def test_error_mid_answer_keeps_the_text_and_shows_the_error(
    chat: ChatPage, stack: Stack
) -> None:
    prompt = "Breaks midway [[sim:error_after=3]] [[sim:tokens=30]]"
    expected = await direct(stack.gateway, prompt)
    error = expected.events[-1].data
    assert error["code"] == "overloaded" and expected.text
    await chat.send(prompt)
    await chat.wait_for_state("failed")
    await chat.screenshot("error-mid-answer")
    turn = chat.turn()
    assert await chat.answer_text() == expected.text
    hint = "you can retry" if error["retryable"] else "not retryable"
    assert await turn.get_by_test_id("error").text_content() == (
        f"{error['error']} ({error['code']}; {hint})"
    )


async def test_markup_in_an_answer_is_shown_as_text_never_run(chat: ChatPage, stack: Stack) -> None:
    crafted = (
        'Look: <img src=x onerror="window.pwned=1;alert(1)"> '
        "<script>window.pwned=2</script> <b>bold?</b>"
    )
    expected = await direct(stack.gateway, f"{crafted} [[sim:echo=1]]")
    assert expected.text == crafted
    await chat.send(f"{crafted} [[sim:echo=1]] [[sim:tps=30]]")
    await chat.wait_for_state("done")
    await chat.screenshot("markup-as-text")

    assert await chat.answer_text() == crafted
    conversation = chat.page.get_by_test_id("conversation")
    for tag in ("img", "script", "b"):
        assert await conversation.locator(tag).count() == 0
    # One paragraph of text: markdown.js builds nodes, it never parses HTML.
    assert await chat.answer().evaluate("el => el.innerHTML") == f"<p>{escape(crafted, False)}</p>"
    assert await chat.page.evaluate("() => window.pwned") is None
    assert chat.dialogs == []


async def test_second_question_goes_to_the_same_conversation(chat: ChatPage, stack: Stack) -> None:
    first = unique("Name a river [[sim:tokens=12]]")
    second = "And a mountain? [[sim:tokens=9]]"
    first_answer = await direct_text(stack.simulator, first)
    asked = [{"role": "user", "content": first}, {"role": "assistant", "content": first_answer}]
    message = await direct_message(stack.simulator, [*asked, {"role": "user", "content": second}])
    second_answer = "".join(b.text for b in message.content if b.type == "text")
    await chat.send(first)
    await chat.wait_for_state("done")
    await chat.send(second)
    await chat.wait_for_state("done")
    await chat.screenshot("two-turns")

    # The page sends only the new message: the gateway keeps the conversation.
    assert chat.posted_bodies() == [{"content": first}, {"content": second}]
    paths = {urlsplit(r.url).path for r in chat.stream_posts()}
    [path] = paths
    conversation_id = path.split("/")[3]
    async with httpx.AsyncClient(base_url=stack.gateway, timeout=60) as client:
        info = (await client.get("/api/info")).json()
        conversation = (await client.get(f"/api/conversations/{conversation_id}")).json()
    created = [r for r in chat.requests if urlsplit(r.url).path == "/api/conversations"]
    assert [r.post_data_json for r in created if r.method == "POST"] == [
        {"title": first, "model": info["model"]}
    ]
    assert conversation["title"] == first and conversation["model"] == info["model"]
    assert [(m["role"], m["content"], m["status"]) for m in conversation["messages"]] == [
        ("user", first, "complete"),
        ("assistant", first_answer, "complete"),
        ("user", second, "complete"),
        ("assistant", second_answer, "complete"),
    ]
    assert await chat.answer_text(0) == first_answer
    assert await chat.answer_text(1) == second_answer
    assert await chat.page.get_by_test_id("answer").count() == 2


async def test_page_fits_a_phone_screen(browser: Browser, stack: Stack) -> None:
    phone = {"viewport": {"width": 375, "height": 740}, "device_scale_factor": 2}
    async with chat_page(browser, stack.gateway, **phone) as chat:
        await chat.send("Tell me a short story [[sim:tokens=80]]")
        await chat.wait_for_state("done")
        await chat.screenshot("phone")
        page = chat.page
        assert await page.evaluate("() => document.documentElement.scrollWidth") == 375
        for testid in ("prompt", "send", "stop", "model", "state"):
            box = await page.get_by_test_id(testid).bounding_box()
            assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 375, testid
        answer = await chat.answer().bounding_box()
        assert answer is not None and answer["x"] + answer["width"] <= 375


async def test_event_source_path_streams_the_same_text(chat: ChatPage, stack: Stack) -> None:
    prompt = unique("Plain EventSource [[sim:tokens=15]]")
    expected = await direct_text(stack.simulator, prompt)
    text: Any = await chat.page.evaluate(
        """(prompt) => new Promise((resolve, reject) => {
            const query = new URLSearchParams({ prompt });
            const source = new EventSource(`/api/stream-response?${query}`);
            let text = "";
            source.onmessage = (event) => {
                const data = JSON.parse(event.data);
                if (data.token) text += data.token;
                if (data.done || data.error) { source.close(); resolve(text); }
            };
            source.onerror = () => { source.close(); reject(new Error("EventSource failed")); };
        })""",
        prompt,
    )
    assert text == expected


async def test_with_auth_on_the_page_asks_for_a_key_and_sends_it_as_bearer(
    browser: Browser, tmp_path: Path
) -> None:
    args, key = api_key_auth(tmp_path, "alice")
    with run_stack(tmp_path, *args) as stack:
        prompt = unique("Hello there [[sim:tokens=6]]")
        async with httpx.AsyncClient(base_url=stack.gateway) as client:
            refused = await client.post("/api/stream-response", json={"prompt": prompt})
        assert refused.status_code == 401
        async with chat_page(browser, stack.gateway) as chat:
            assert await chat.page.get_by_test_id("api-key").is_visible()
            await chat.send(prompt)
            await chat.wait_for_state("failed")
            error = chat.turn().get_by_test_id("error")
            assert await error.text_content() == (
                f"HTTP 401 authentication_error: {refused.json()['error']['message']}"
            )
            await chat.page.fill("#api-key", key)
            await chat.turn().get_by_test_id("retry").click()
            await chat.wait_for_state("done")
            await chat.screenshot("api-key")
            assert await chat.answer_text() == await direct_text(stack.simulator, prompt)
            posts = [
                (urlsplit(r.url).path, await r.header_value("authorization"))
                for r in chat.requests
                if r.method == "POST" and "/api/conversations" in r.url
            ]
            [conversation] = (await api_get(stack.gateway, "/api/conversations", key))["data"]
            assert posts == [
                ("/api/conversations", None),
                ("/api/conversations", f"Bearer {key}"),
                (f"/api/conversations/{conversation['id']}/messages", f"Bearer {key}"),
            ]
            # EventSource cannot send the key: a ticket from tokenrelay.js stands in for it.
            ticketed = unique("Through a ticket [[sim:tokens=8]]")
            text = await chat.page.evaluate(
                """async ([apiKey, prompt]) => {
                    const { TokenRelay } = await import("/tokenrelay.js");
                    const relay = new TokenRelay({ apiKey });
                    const url = relay.eventSourceUrl({ prompt, ticket: await relay.ticket() });
                    return await new Promise((resolve, reject) => {
                        const source = new EventSource(url);
                        let text = "";
                        source.onmessage = (event) => {
                            const data = JSON.parse(event.data);
                            if (data.token) text += data.token;
                            if (data.done) { source.close(); resolve(text); }
                            if (data.error) { source.close(); reject(new Error(data.error)); }
                        };
                        source.onerror = () => { source.close(); reject(new Error("refused")); };
                    });
                }""",
                [key, ticketed],
            )
            assert text == await direct_text(stack.simulator, ticketed)
            # Kept for this tab's session only, and offered again after a reload.
            await chat.page.reload()
            await chat.page.wait_for_selector("body[data-ready=true]", timeout=WAIT_MS)
            assert await chat.page.input_value("#api-key") == key
