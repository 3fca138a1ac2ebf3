"""Throwaway Debian services for the tests: redis-server, nginx and PostgreSQL on free
ports."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.support.processes import free_port, wait_for_port
from tokenrelay.client.bench_nginx import nginx_in_front


@dataclass
class Redis:
    port: int
    workdir: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        # Append-only file, fsync on every write: a restart keeps the stream logs, as a
        # production Redis with persistence would.
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
             "--dir", str(self.workdir), "--appendonly", "yes", "--appendfsync", "always",
             "--save", "", "--protected-mode", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        wait_for_port(self.port)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        self.proc = None

    def cli(self, *args: str) -> str:
        out = subprocess.run(
            ["redis-cli", "-p", str(self.port), *args], capture_output=True, text=True, check=True
        )
        return out.stdout.strip()


@contextlib.contextmanager
def redis_server(workdir: Path) -> Iterator[Redis]:
    workdir.mkdir(parents=True, exist_ok=True)
    server = Redis(free_port(), workdir)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@contextlib.contextmanager
def nginx(workdir: Path, upstream_ports: list[int]) -> Iterator[str]:
    """Debian's nginx as the load balancer in front of the gateways (SSE unbuffered), as
    `tokenrelay bench --instances` runs it, with a new connection to an instance for
    every request."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    with nginx_in_front(workdir, port, upstream_ports, keepalive=0):
        yield f"http://127.0.0.1:{port}"


PG_BIN = Path("/usr/lib/postgresql")


def _pg(tool: str, *args: str) -> subprocess.CompletedProcess[str]:
    """A PostgreSQL tool as the `postgres` user (the server refuses to run as root)."""
    [version] = sorted(PG_BIN.iterdir())[-1:]
    return subprocess.run(
        ["runuser", "-u", "postgres", "--", str(version / "bin" / tool), *args],
        capture_output=True, text=True, check=True,
    )  # fmt: skip


@dataclass
class Postgres:
    """A throwaway cluster: trust auth on 127.0.0.1, no fsync (nothing here must
    survive a power cut; a stop and start keeps everything)."""

    port: int
    workdir: Path

    @property
    def data(self) -> Path:
        return self.workdir / "data"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        options = (f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.workdir} "
                   "-c fsync=off -c synchronous_commit=off -c full_page_writes=off")  # fmt: skip
        _pg("pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.workdir / "log"),
            "-w", "start")  # fmt: skip
        wait_for_port(self.port)

    def stop(self) -> None:
        _pg("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def create_database(self, name: str) -> str:
        """A new empty database; its asyncpg URL."""
        _pg("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", name)
        return self.url(name)


@contextlib.contextmanager
def postgres_server() -> Iterator[Postgres]:
    """Debian's PostgreSQL in a fresh directory outside the test's tmp_path (pytest's
    is root-only, and the server runs as `postgres`); removed at the end."""
    workdir = Path(tempfile.mkdtemp(prefix="tokenrelay-pg-"))
    shutil.chown(workdir, "postgres", "postgres")
    server = Postgres(free_port(), workdir)
    try:
        _pg("initdb", "-D", str(server.data), "-A", "trust", "-U", "postgres", "--no-sync")
        server.start()
        yield server
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):
            server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
