"""Real processes on free ports for the tests: start, wait until ready, always stop."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx

from tests.support.polling import eventually

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, timeout: float = 10.0) -> None:
    def listening() -> bool:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return True
        return False

    eventually(listening, what=f"a listener on port {port}", within=timeout)


def wait_until_ok(
    url: str,
    timeout: float = 15.0,
    proc: subprocess.Popen[bytes] | None = None,
    verify: ssl.SSLContext | bool = True,
) -> None:
    def ready() -> bool:
        if proc is not None and proc.poll() is not None:
            # No point waiting out the timeout for a process that is gone.
            raise RuntimeError(f"process exited with {proc.returncode} before {url} was ready")
        with contextlib.suppress(httpx.HTTPError):
            return httpx.get(url, timeout=1.0, verify=verify).status_code == 200
        return False

    eventually(ready, what=f"{url} to answer 200", within=timeout)


@contextlib.contextmanager
def spawn(
    args: list[str],
    ready_url: str,
    *,
    env: dict[str, str] | None = None,
    log_path: Path | None = None,
    verify: ssl.SSLContext | bool = True,
    cwd: Path = ROOT,
) -> Iterator[subprocess.Popen[bytes]]:
    """Run `python -m tokenrelay ARGS` in `cwd` until the block ends; output goes to
    `log_path`.

    The usage ledger goes to a fresh SQLite file of its own unless `env` names one:
    the cwd is the repository by default, and its `tokenrelay.db` must not land there.
    Log lines are written at the end of each turn of the loop unless `env` says."""
    with tempfile.TemporaryDirectory(prefix="tokenrelay-ledger-") as ledger_dir:
        ledger = {"TOKENRELAY_DATABASE_URL": f"sqlite+aiosqlite:///{ledger_dir}/usage.db"}
        # The tests read a gateway's log right after what it logs: its lines at the end
        # of each turn of its loop, unless `env` says otherwise (the default, 50 ms, is
        # tested on its own: tests/test_structured_logs.py).
        default = {**ledger, "TOKENRELAY_LOG_FLUSH_MS": "0"}
        with _spawn(args, ready_url, {**default, **(env or {})}, log_path, verify, cwd) as proc:
            yield proc


@contextlib.contextmanager
def _spawn(
    args: list[str],
    ready_url: str,
    env: dict[str, str],
    log_path: Path | None,
    verify: ssl.SSLContext | bool,
    cwd: Path,
) -> Iterator[subprocess.Popen[bytes]]:
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **env}
    out = open(log_path, "wb") if log_path else subprocess.DEVNULL  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "tokenrelay", *args],
        cwd=cwd,
        env=full_env,
        stdout=out,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_until_ok(ready_url, proc=proc, verify=verify)
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if log_path:
            out.close()  # type: ignore[union-attr]
