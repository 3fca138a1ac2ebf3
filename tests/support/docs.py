"""The runnable examples of docs/sdk.md, as a reader would run them: a section's code
block, run with the gateway's address in the text swapped for the test's."""

from __future__ import annotations

import re
import subprocess

from tests.support.processes import ROOT
from tests.support.stack import Stack

# The address the examples are written for: `make run`'s.
DOCS_URL = "http://127.0.0.1:8080"


def section(title: str) -> str:
    """The `## title` section of docs/sdk.md."""
    text = (ROOT / "docs" / "sdk.md").read_text()
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


def code_block(text: str, language: str) -> str:
    """The first fenced block of `language` in `text`."""
    match = re.search(rf"^```{language}\n(.*?)^```$", text, re.DOTALL | re.MULTILINE)
    assert match is not None, f"no {language} block"
    return match.group(1)


def run(args: list[str], code: str, stack: Stack) -> str:
    """What `args + [code]` prints, pointed at `stack`'s gateway; it must succeed."""
    assert DOCS_URL in code
    done = subprocess.run(
        [*args, code.replace(DOCS_URL, stack.gateway)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout
