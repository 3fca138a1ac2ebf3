"""Fixtures for the browser tests: one Chromium per session, and a chat page on the
shared stack."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from playwright.async_api import Browser, async_playwright

from tests.support import Stack
from tests.support.browser import CHROMIUM, ChatPage, chat_page


@pytest.fixture(scope="session")
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM)
        yield browser
        await browser.close()


@pytest.fixture
async def chat(browser: Browser, stack: Stack) -> AsyncIterator[ChatPage]:
    async with chat_page(browser, stack.gateway) as page:
        yield page
