"""The chat page's conversations, in real Chromium against real gateway and simulator
processes: the side list, a new one, reopening one with its history (failed and
cancelled answers marked), renaming, deleting, a reload mid-answer that reattaches to
the stream still being generated, and the page on a gateway without a database."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
from playwright.async_api import Browser

from tests.support import Stack, direct_text, eventually_async, run_stack, unique
from tests.support.answers import direct_message
from tests.support.browser import WAIT_MS, ChatPage, chat_page


async def api(stack: Stack, method: str, path: str, **kwargs: Any) -> httpx.Response:
    async with httpx.AsyncClient(base_url=stack.gateway, timeout=60) as client:
        return await client.request(method, path, **kwargs)


async def stored(stack: Stack, conversation_id: str) -> Any:
    response = await api(stack, "GET", f"/api/conversations/{conversation_id}")
    assert response.status_code == 200
    return response.json()


def open_id(chat: ChatPage) -> str:
    """The open conversation, from the page's URL (#c=…)."""
    fragment = urlsplit(chat.page.url).fragment
    assert fragment.startswith("c=conv_"), chat.page.url
    return fragment[2:]


async def list_titles(chat: ChatPage) -> list[str]:
    return await chat.page.get_by_test_id("conversation-open").all_text_contents()


async def wait_for_titles(chat: ChatPage, titles: list[str]) -> None:
    await chat.page.wait_for_function(
        """(titles) => {
            const links = document.querySelectorAll("[data-testid=conversation-open]");
            return JSON.stringify([...links].map((a) => a.textContent)) === JSON.stringify(titles);
        }""",
        arg=titles,
        timeout=WAIT_MS,
    )


async def turns_shown(chat: ChatPage) -> list[tuple[str, str, str | None]]:
    """Each turn on the page: the user's text, the answer's text, its stored status."""
    shown = await chat.page.evaluate(
        """() => [...document.querySelectorAll(".turn")].map((turn) => [
            turn.querySelector("[data-testid=user-message]").textContent,
            turn.querySelector("[data-testid=answer]").textContent,
            turn.dataset.status ?? null,
        ])"""
    )
    return [(user, answer, status) for user, answer, status in shown]


async def test_conversations_are_listed_reopened_renamed_and_deleted(
    chat: ChatPage, stack: Stack
) -> None:
    first, second = unique("Rivers? [[sim:tokens=7]]"), unique("Mountains? [[sim:tokens=5]]")
    follow_up = "And lakes? [[sim:tokens=6]]"
    first_answer = await direct_text(stack.simulator, first)
    history = [{"role": "user", "content": first}, {"role": "assistant", "content": first_answer}]
    message = await direct_message(
        stack.simulator, [*history, {"role": "user", "content": follow_up}]
    )
    follow_up_answer = "".join(b.text for b in message.content if b.type == "text")

    await chat.send(first)
    await chat.wait_for_state("done")
    await chat.send(follow_up)
    await chat.wait_for_state("done")
    first_id = open_id(chat)
    await chat.page.click("#new-chat")
    assert urlsplit(chat.page.url).fragment == ""
    assert await chat.page.locator(".turn").count() == 0
    await chat.send(second)
    await chat.wait_for_state("done")
    second_id = open_id(chat)
    assert second_id != first_id
    # Newest first, and the open one marked.
    await wait_for_titles(chat, [second, first])
    current = chat.page.locator("[data-testid=conversation-open][aria-current=page]")
    assert await current.text_content() == second
    await chat.screenshot("conversations")

    # Reopened: its history, exactly as the gateway keeps it.
    await chat.page.get_by_test_id("conversation-open").nth(1).click()
    await chat.page.wait_for_function(
        "() => document.querySelectorAll('.turn').length === 2", timeout=WAIT_MS
    )
    assert open_id(chat) == first_id
    assert await turns_shown(chat) == [
        (first, first_answer, "complete"),
        (follow_up, follow_up_answer, "complete"),
    ]
    assert await current.text_content() == first
    assert await chat.page.get_by_test_id("model").is_disabled()

    # Renamed in place: Enter saves it on the gateway.
    item = chat.page.get_by_test_id("conversation-item").nth(1)
    await item.get_by_test_id("rename").click()
    title_input = item.get_by_test_id("title-input")
    assert await title_input.input_value() == first
    await title_input.fill("Water, mostly")
    await title_input.press("Enter")
    await wait_for_titles(chat, [second, "Water, mostly"])
    assert (await stored(stack, first_id))["title"] == "Water, mostly"
    patches = [r for r in chat.requests if r.method == "PATCH"]
    assert [(urlsplit(r.url).path, r.post_data_json) for r in patches] == [
        (f"/api/conversations/{first_id}", {"title": "Water, mostly"})
    ]

    # Deleted, after a second click: gone from the gateway, the list and the view.
    delete = item.get_by_test_id("delete")
    await delete.click()
    assert await delete.text_content() == "Delete?"
    assert (await api(stack, "GET", f"/api/conversations/{first_id}")).status_code == 200
    await delete.click()
    await wait_for_titles(chat, [second])
    assert (await api(stack, "GET", f"/api/conversations/{first_id}")).status_code == 404
    assert await chat.page.locator(".turn").count() == 0
    assert urlsplit(chat.page.url).fragment == ""
    assert await chat.page.get_by_test_id("model").is_enabled()
    deletes = [r for r in chat.requests if r.method == "DELETE"]
    assert [urlsplit(r.url).path for r in deletes] == [f"/api/conversations/{first_id}"]

    # A reload keeps the list, and opens nothing when nothing was open.
    await chat.page.reload()
    await chat.page.wait_for_selector("body[data-ready=true]", timeout=WAIT_MS)
    assert await list_titles(chat) == [second]
    assert await chat.page.locator(".turn").count() == 0


async def test_failed_and_cancelled_answers_are_shown_marked_when_reopened(
    browser: Browser, own_stack: Stack
) -> None:
    refused = unique("Refused [[sim:status=400]]")
    stopped = unique("Goes on [[sim:tps=10]] [[sim:tokens=400]]")
    fine = unique("Fine [[sim:tokens=4]]")
    async with chat_page(browser, own_stack.gateway) as chat:
        await chat.send(refused)
        await chat.wait_for_state("failed")
        live_error = await chat.turn().get_by_test_id("error").text_content()
        await chat.send(stopped)
        await chat.wait_for_text("(text) => text.split(' ').length >= 3")
        await chat.page.click("#stop")
        await chat.wait_for_state("stopped")
        await chat.send(fine)
        await chat.wait_for_state("done")
        conversation_id = open_id(chat)

        kept = await stored(own_stack, conversation_id)
        answers = [m for m in kept["messages"] if m["role"] == "assistant"]
        assert [m["status"] for m in answers] == ["failed", "cancelled", "complete"]
        # The failed and cancelled answers were not sent back: the last answer is the
        # simulator's to the last question alone.
        assert answers[2]["content"] == await direct_text(own_stack.simulator, fine)

        await chat.page.reload()
        await chat.page.wait_for_selector("body[data-ready=true]", timeout=WAIT_MS)
        await chat.screenshot("failed-and-cancelled-reopened")
        assert await turns_shown(chat) == [
            (refused, "", "failed"),
            (stopped, answers[1]["content"], "cancelled"),
            (fine, answers[2]["content"], "complete"),
        ]
        turns = chat.page.locator(".turn")
        states = [await turns.nth(i).get_attribute("data-state") for i in range(3)]
        assert states == ["failed", "stopped", "done"]
        errors = [turns.nth(i).get_by_test_id("error") for i in range(3)]
        assert await errors[0].text_content() == f"{answers[0]['error']} (failed)"
        assert await errors[0].is_visible() and live_error
        assert await errors[1].text_content() == (
            f"{answers[1]['error']} (cancelled)" if answers[1]["error"] else "cancelled"
        )
        assert await errors[2].is_hidden()


async def test_a_reload_mid_answer_reattaches_and_shows_the_whole_answer_once(
    browser: Browser, own_stack: Stack
) -> None:
    words = unique("A slow story [[sim:tokens=40]]")
    expected = await direct_text(own_stack.simulator, words)
    prompt = f"{words} [[sim:tps=5]]"
    asked = own_stack.sim_stats()  # the direct question above
    async with chat_page(browser, own_stack.gateway) as chat:
        await chat.send(prompt)
        await chat.wait_for_text("(text) => text.split(' ').length >= 4")
        conversation_id = open_id(chat)
        before = await chat.answer_text()
        pending = (await stored(own_stack, conversation_id))["pending_stream_id"]
        assert pending and expected.startswith(before) and before != expected

        await chat.page.reload()
        await chat.page.wait_for_selector("body[data-ready=true]", timeout=WAIT_MS)
        assert open_id(chat) == conversation_id
        # Still being generated: the page follows it rather than waiting for its end.
        assert await chat.page.get_by_test_id("state").text_content() != "done"
        await chat.screenshot("reattached-mid-answer")
        await chat.wait_for_state("done")
        await chat.screenshot("reattached-done")

        assert await turns_shown(chat) == [(prompt, expected, None)]
        resumes = [r for r in chat.requests if urlsplit(r.url).path == f"/api/streams/{pending}"]
        assert len(resumes) == 1
        # From the stream's start: the page shows none of it yet, so all of it, once.
        assert await resumes[0].header_value("last-event-id") is None
        assert len(chat.stream_posts()) == 1
        # One generation upstream, followed by both pages.
        stats = own_stack.sim_stats()
        assert stats["requests"] - asked["requests"] == 1
        assert stats["completed"] - asked["completed"] == 1

        url = f"{own_stack.gateway}/api/conversations/{conversation_id}"
        await eventually_async(
            lambda: httpx.get(url).json()["pending_stream_id"] is None,
            what="the answer stored",
            within=WAIT_MS / 1000,
        )
        kept = await stored(own_stack, conversation_id)
        assert [(m["role"], m["content"], m["status"]) for m in kept["messages"]] == [
            ("user", prompt, "complete"),
            ("assistant", expected, "complete"),
        ]


async def test_without_a_database_the_page_keeps_the_conversation_itself(
    browser: Browser, tmp_path: Path
) -> None:
    with run_stack(tmp_path, TOKENRELAY_DATABASE_URL="off") as stack:
        first = unique("Name a river [[sim:tokens=12]]")
        second = "And a mountain? [[sim:tokens=9]]"
        first_answer = await direct_text(stack.simulator, first)
        async with chat_page(browser, stack.gateway) as chat:
            note = chat.page.get_by_test_id("conversations-note")
            assert await note.text_content() == (
                "This gateway keeps no conversations: the page keeps this one until it is closed."
            )
            await chat.send(first)
            await chat.wait_for_state("done")
            await chat.send(second)
            await chat.wait_for_state("done")
            bodies = chat.posted_bodies()
            model = bodies[0]["model"]
            assert bodies == [
                {"messages": [{"role": "user", "content": first}], "model": model},
                {
                    "messages": [
                        {"role": "user", "content": first},
                        {"role": "assistant", "content": first_answer},
                        {"role": "user", "content": second},
                    ],
                    "model": model,
                },
            ]
            assert await chat.answer_text(0) == first_answer
            assert urlsplit(chat.page.url).fragment == ""
            assert await list_titles(chat) == []


async def test_on_a_phone_the_list_opens_over_the_chat(browser: Browser, stack: Stack) -> None:
    phone = {"viewport": {"width": 375, "height": 740}, "device_scale_factor": 2}
    prompt = unique("Small screen [[sim:tokens=5]]")
    async with chat_page(browser, stack.gateway, **phone) as chat:
        page = chat.page
        await chat.send(prompt)
        await chat.wait_for_state("done")
        conversation_id = open_id(chat)
        assert await page.get_by_test_id("sidebar").is_hidden()
        await page.get_by_test_id("sidebar-toggle").click()
        assert await page.get_by_test_id("sidebar").is_visible()
        await chat.screenshot("phone-conversations")
        box = await page.get_by_test_id("sidebar").bounding_box()
        assert box is not None and box["x"] == 0 and box["width"] <= 375
        await page.click("#new-chat")
        assert await page.get_by_test_id("sidebar").is_hidden()
        assert await page.locator(".turn").count() == 0
        await page.get_by_test_id("sidebar-toggle").click()
        await page.get_by_test_id("conversation-open").first.click()
        await page.wait_for_function(
            "() => document.querySelectorAll('.turn').length === 1", timeout=WAIT_MS
        )
        assert open_id(chat) == conversation_id
        assert await page.get_by_test_id("sidebar").is_hidden()
        assert await page.evaluate("() => document.documentElement.scrollWidth") == 375
