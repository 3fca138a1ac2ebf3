"""nginx in front of several gateway instances, for `tokenrelay bench --instances N`.

The configuration is the one docs/operations.md recommends: responses unbuffered (SSE),
HTTP/1.1 to the instances with idle connections kept (`keepalive`), so that a request
through the balancer costs no new upstream connection.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

CONF = """
daemon off;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 16384; }}
worker_rlimit_nofile 32768;
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    upstream gateways {{
{servers}
{keepalive}
    }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        keepalive_requests 100000;
        location / {{
            proxy_pass http://gateways;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_read_timeout 1h;
            # An instance that is gone is skipped at once, for the next request.
            proxy_next_upstream error timeout;
            proxy_connect_timeout 1s;
        }}
    }}
}}
"""


@contextlib.contextmanager
def nginx_in_front(
    workdir: Path, port: int, instance_ports: list[int], *, keepalive: int = 256
) -> Iterator[int]:
    """Run nginx on `port` balancing over the instances, keeping up to `keepalive` idle
    connections to them (0: a connection per request); yields its master's pid (its
    worker runs under it)."""
    binary = shutil.which("nginx") or (
        "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None
    )
    if binary is None:
        raise RuntimeError("--instances needs nginx on PATH (apt-get install nginx)")
    servers = "\n".join(
        f"        server 127.0.0.1:{p} max_fails=1 fail_timeout=30s;" for p in instance_ports
    )
    kept = f"        keepalive {keepalive};" if keepalive else ""
    conf = workdir / "nginx.conf"
    conf.write_text(CONF.format(dir=workdir, port=port, servers=servers, keepalive=kept))
    proc = subprocess.Popen(
        [binary, "-c", str(conf), "-p", str(workdir)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                error = (
                    (workdir / "error.log").read_text() if (workdir / "error.log").exists() else ""
                )
                raise RuntimeError(f"nginx did not start: {error.strip()[-300:]}")
            time.sleep(0.05)
        yield proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
