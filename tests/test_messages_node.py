"""Claude's TypeScript SDK (`@anthropic-ai/sdk` from npm) under node against a real
gateway: tests/node/messages.test.mjs, run with node's own test runner, every test
passing and none skipped."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

from tests.support import ROOT, run_stack

SUITE = ROOT / "tests" / "node" / "messages.test.mjs"


def test_the_typescript_sdk_works_against_the_gateway_unchanged(tmp_path: Path) -> None:
    with run_stack(tmp_path) as stack:
        env = {
            **os.environ,
            "TOKENRELAY_GATEWAY": stack.gateway,
            "TOKENRELAY_SIMULATOR": stack.simulator,
        }
        run = subprocess.run(
            ["node", "--test", "--test-reporter=tap", str(SUITE)],
            cwd=SUITE.parent,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
    report = run.stdout + run.stderr
    assert run.returncode == 0, report
    counts = dict(re.findall(r"^# (tests|pass|fail|skipped|todo|cancelled) (\d+)$", report, re.M))
    assert counts == {
        "tests": "6", "pass": "6", "fail": "0", "skipped": "0", "todo": "0", "cancelled": "0",
    }, report  # fmt: skip
