"""The command line, as a user runs it: `tokenrelay chat` against a running gateway."""

from __future__ import annotations

import subprocess
import sys

from tests.support import ROOT, Stack, direct_text, unique


def chat(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tokenrelay", "chat", *args, "--url", stack.gateway],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


async def test_chat_prints_the_answer_as_it_streams(stack: Stack) -> None:
    prompt = unique("Say something [[sim:tokens=18]]")
    done = chat(stack, prompt)
    assert done.returncode == 0, done.stderr
    assert done.stdout == await direct_text(stack.simulator, prompt)
    assert "end_turn" in done.stderr and "18 tokens" in done.stderr


def test_chat_reports_a_refused_request(stack: Stack) -> None:
    done = chat(stack, "x" * 10_001)
    assert done.returncode == 1
    assert "400 invalid_request_error" in done.stderr
    assert "Prompt is too long: 10001 characters, the limit is 10000" in done.stderr
    assert done.stdout == ""


def test_chat_reports_a_failed_stream(stack: Stack) -> None:
    done = chat(stack, unique("Fails [[sim:status=500]]"))
    assert done.returncode == 1
    assert "error (api, retryable)" in done.stderr
