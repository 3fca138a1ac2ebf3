"""The anthropic provider's own HTTP/1.1 client (providers/http1.py) against upstreams
on real sockets that do what the simulator never does: speak TLS, close connections,
say nothing, answer garbage, send faster than a reader reads.

The contract suite (tests/contracts) checks the same provider's answers, errors,
stalls and cuts against `tokenrelay simulate`, beside the official SDK's."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime
import ipaddress
import ssl
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.support import eventually_async, free_port
from tests.support.upstreams import CLAUDE_STREAM, ScriptedUpstream, answer, read_request
from tokenrelay import __version__
from tokenrelay.errors import UpstreamIncomplete
from tokenrelay.providers import http1
from tokenrelay.providers.anthropic_http import AnthropicHttpProvider
from tokenrelay.providers.base import GenerationRequest, MessageEnd
from tokenrelay.providers.claude_stream import API_VERSION

REQUEST = GenerationRequest(
    model="claude-haiku-4-5", messages=[{"role": "user", "content": "Hi"}], max_tokens=50
)


async def text_of(provider: AnthropicHttpProvider) -> str:
    deltas = [delta async for delta in provider.stream(REQUEST)]
    assert type(deltas[-1]) is MessageEnd
    return "".join(d for d in deltas if type(d) is str)


async def answers_each(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while await read_request(reader) is not None:
        writer.write(answer())


def provider(port: int, *, scheme: str = "http", host: str = "127.0.0.1",
             stall_timeout: float = 5.0) -> AnthropicHttpProvider:  # fmt: skip
    return AnthropicHttpProvider(
        api_key="sk-test", base_url=f"{scheme}://{host}:{port}", stall_timeout=stall_timeout
    )


# -- the request on the wire ------------------------------------------------------------


@pytest.mark.parametrize("prefix", ["", "/relay"])
async def test_a_request_goes_out_as_one_exact_http_1_1_message(prefix: str) -> None:
    received: list[bytes] = []

    async def keeps(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while (request := await read_request(reader)) is not None:
            received.append(request)
            writer.write(answer())

    async with ScriptedUpstream(keeps) as upstream:
        port = upstream.port
        client = AnthropicHttpProvider(
            api_key="sk-test", base_url=f"http://127.0.0.1:{port}{prefix}/"
        )
        assert await text_of(client) == "Hello there"
        await client.aclose()
    body = (
        b'{"model":"claude-haiku-4-5","messages":[{"role":"user","content":"Hi"}],'
        b'"max_tokens":50,"stream":true}'
    )
    assert received == [
        b"POST %b/v1/messages HTTP/1.1\r\n" % prefix.encode()
        + b"host: 127.0.0.1:%d\r\n" % port
        + b"x-api-key: sk-test\r\ncontent-type: application/json\r\n"
        + b"user-agent: tokenrelay/%b\r\naccept: text/event-stream\r\n" % __version__.encode()
        + b"anthropic-version: %b\r\n" % API_VERSION.encode()
        + b"content-length: %d\r\n\r\n%b" % (len(body), body)
    ]


# -- TLS ---------------------------------------------------------------------------------


def self_signed(tmp: Path) -> tuple[Path, ssl.SSLContext]:
    """A certificate for `localhost`, written to a file, and a server context with it."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp / "cert.pem", tmp / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert_path, key_path)
    return cert_path, server


async def test_a_tls_upstream_trusted_by_the_system_store_is_spoken_to_on_one_connection(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cert, server_tls = self_signed(tmp_path)
    # OpenSSL's default trust store honours SSL_CERT_FILE: as a deployment with its own
    # CA would configure it.
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    async with ScriptedUpstream(answers_each, tls=server_tls) as upstream:
        client = provider(upstream.port, scheme="https", host="localhost")
        try:
            assert [await text_of(client) for _ in range(3)] == ["Hello there"] * 3
        finally:
            await client.aclose()
    assert upstream.connections == 1


async def test_an_upstream_whose_certificate_is_not_trusted_is_never_sent_the_request(
    tmp_path: Path,
) -> None:
    _, server_tls = self_signed(tmp_path)
    requests = 0

    async def counts(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal requests
        if await read_request(reader) is not None:
            requests += 1

    async with ScriptedUpstream(counts, tls=server_tls) as upstream:
        client = provider(upstream.port, scheme="https", host="localhost")
        with pytest.raises(UpstreamIncomplete) as failed:
            await text_of(client)
        await client.aclose()
    assert str(failed.value).startswith(
        "upstream connection failed: no connection (SSLCertVerificationError"
    )
    assert requests == 0


# -- connections kept, and not ------------------------------------------------------------


async def test_an_answer_marked_connection_close_is_not_kept() -> None:
    closed_by_gateway = 0

    async def says_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal closed_by_gateway
        await read_request(reader)
        writer.write(answer(CLAUDE_STREAM, b"connection: close"))
        # Left open: the header alone must keep the gateway from sending on it again.
        assert await reader.read() == b""
        closed_by_gateway += 1

    async with ScriptedUpstream(says_close) as upstream:
        client = provider(upstream.port)
        assert [await text_of(client) for _ in range(3)] == ["Hello there"] * 3
        await client.aclose()
        await eventually_async(lambda: closed_by_gateway == 3, what="all three closed")
    assert upstream.connections == 3


async def test_a_connection_idle_past_the_keepalive_time_is_closed_by_the_gateway(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(http1, "KEEPALIVE_S", 0.2)
    closed_at: list[float] = []

    async def notes_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await answers_each(reader, writer)
        closed_at.append(time.monotonic())

    async with ScriptedUpstream(notes_close) as upstream:
        client = provider(upstream.port)
        assert await text_of(client) == "Hello there"
        answered_at = time.monotonic()
        # The sweep runs on its own, with no request to prompt it.
        await eventually_async(lambda: closed_at, what="the idle connection closed")
        assert len(closed_at) == 1
        assert closed_at[0] - answered_at >= 0.2
        assert await text_of(client) == "Hello there"
        await client.aclose()
    assert upstream.connections == 2


async def test_bytes_after_a_whole_answer_are_not_read_as_the_next_one() -> None:
    async def answers_twice(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await read_request(reader) is not None:
            writer.write(answer() + answer())

    async with ScriptedUpstream(answers_twice) as upstream:
        client = provider(upstream.port)
        assert [await text_of(client) for _ in range(2)] == ["Hello there"] * 2
        await client.aclose()
    assert upstream.connections == 2


# -- failures ------------------------------------------------------------------------------


async def test_nothing_listening_is_a_connection_failure() -> None:
    client = provider(free_port())
    with pytest.raises(UpstreamIncomplete) as failed:
        await text_of(client)
    await client.aclose()
    assert str(failed.value).startswith(
        "upstream connection failed: no connection (ConnectionRefusedError"
    )


async def test_an_upstream_silent_after_the_request_is_a_stall_after_stall_timeout() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await reader.read()  # until the gateway gives up and closes

    async with ScriptedUpstream(silent) as upstream:
        client = provider(upstream.port, stall_timeout=0.3)
        began = time.monotonic()
        with pytest.raises(UpstreamIncomplete) as failed:
            await text_of(client)
        waited = time.monotonic() - began
        await client.aclose()
    assert str(failed.value) == "upstream timed out (stalled)"
    assert waited >= 0.3


async def test_an_answer_that_is_not_http_is_a_connection_failure() -> None:
    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")
        await reader.read()

    async with ScriptedUpstream(garbage) as upstream:
        client = provider(upstream.port)
        with pytest.raises(UpstreamIncomplete) as failed:
            await text_of(client)
        await client.aclose()
    assert str(failed.value).startswith("upstream connection failed: not an HTTP answer")


async def test_an_answer_cut_mid_body_is_incomplete_and_its_connection_not_kept() -> None:
    async def cuts(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        whole = answer()
        writer.write(whole[: len(whole) - 40])
        await writer.drain()
        writer.transport.abort()

    async with ScriptedUpstream(cuts) as upstream:
        client = provider(upstream.port)
        for _ in range(2):
            with pytest.raises(UpstreamIncomplete) as failed:
                await text_of(client)
            assert str(failed.value) == "upstream connection failed: closed mid-answer"
        await client.aclose()
    assert upstream.connections == 2


# -- a reader behind --------------------------------------------------------------------


async def test_a_reader_that_falls_behind_pauses_the_socket_and_loses_nothing() -> None:
    body = b"x" * (32 * 1024 * 1024)  # far above what the sockets' buffers hold
    server_done = asyncio.Event()

    async def floods(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(answer(body))
        await writer.drain()
        server_done.set()
        await reader.read()

    async with ScriptedUpstream(floods) as upstream:
        client = http1.Client(
            f"http://127.0.0.1:{upstream.port}", connect_timeout=5, stall_timeout=5
        )
        head = client.head("/v1/messages", [("content-type", "application/json")])
        response = await client.post(head.encode(b"{}"))
        await asyncio.sleep(0.5)
        # Unread, the body waits in the upstream's buffers, not in the gateway's memory.
        assert not server_done.is_set()
        received = await response.read()
        response.close()
        await client.aclose()
    assert received == body
    assert server_done.is_set()


# -- a caller gone ------------------------------------------------------------------------


@pytest.mark.parametrize("when", ["before the headers", "mid-body"])
async def test_a_stream_given_up_closes_its_upstream_connection_at_once(when: str) -> None:
    # Else the upstream would go on generating, and billing, for no one.
    closed, asked = asyncio.Event(), asyncio.Event()

    async def hangs(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        assert await read_request(reader) is not None
        asked.set()
        if when == "mid-body":
            whole = answer()
            writer.write(whole[: whole.index(b"event: content_block_stop")])
        assert await reader.read() == b""
        closed.set()

    async with ScriptedUpstream(hangs) as upstream:
        client = provider(upstream.port, stall_timeout=30)
        first = asyncio.Event()

        async def consume() -> None:
            async for _ in client.stream(REQUEST):
                first.set()

        task = asyncio.create_task(consume())
        if when == "mid-body":
            await first.wait()
        else:
            await asked.wait()  # the request is out; no answer's byte has come
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.wait_for(closed.wait(), 5)
        await client.aclose()
    assert upstream.connections == 1


# -- through an egress proxy ------------------------------------------------------------


class ConnectProxy:
    """An HTTP proxy on a free port that opens CONNECT tunnels (or refuses them with
    `refuse`), counting them and keeping each request's head."""

    def __init__(self, refuse: bytes | None = None) -> None:
        self.heads: list[bytes] = []
        self._refuse = refuse
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []

    async def __aenter__(self) -> str:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return f"127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.transport.abort()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.append(writer)
        head = await reader.readuntil(b"\r\n\r\n")
        self.heads.append(head)
        if self._refuse is not None:
            writer.write(self._refuse)
            writer.close()
            return
        host, port = head.split(b" ")[1].decode().rsplit(":", 1)
        up_reader, up_writer = await asyncio.open_connection(host, int(port))
        self._writers.append(up_writer)
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError):
                while chunk := await source.read(65536):
                    sink.write(chunk)
            sink.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


async def test_an_https_upstream_is_reached_through_the_environments_proxy_tunnel(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cert, server_tls = self_signed(tmp_path)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    proxy = ConnectProxy()
    async with ScriptedUpstream(answers_each, tls=server_tls) as upstream, proxy as address:
        monkeypatch.setenv("HTTPS_PROXY", f"http://gateway:p%40ss@{address}")
        port = upstream.port
        client = provider(port, scheme="https", host="localhost")
        try:
            assert [await text_of(client) for _ in range(3)] == ["Hello there"] * 3
        finally:
            await client.aclose()
    # One tunnel, kept alive inside for all three; the credentials as the URL gave them.
    assert proxy.heads == [
        b"CONNECT localhost:%d HTTP/1.1\r\nhost: localhost:%d\r\n" % (port, port)
        + b"proxy-authorization: Basic %b\r\n\r\n" % base64.b64encode(b"gateway:p@ss")
    ]
    assert upstream.connections == 1


async def test_a_host_no_proxy_names_is_reached_directly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cert, server_tls = self_signed(tmp_path)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    monkeypatch.setenv("NO_PROXY", "localhost")
    proxy = ConnectProxy()
    async with ScriptedUpstream(answers_each, tls=server_tls) as upstream, proxy as address:
        monkeypatch.setenv("HTTPS_PROXY", f"http://{address}")
        client = provider(upstream.port, scheme="https", host="localhost")
        assert await text_of(client) == "Hello there"
        await client.aclose()
    assert proxy.heads == []
    assert upstream.connections == 1


async def test_a_tunnel_the_proxy_refuses_is_a_connection_failure_naming_its_answer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, server_tls = self_signed(tmp_path)
    proxy = ConnectProxy(refuse=b"HTTP/1.1 407 Proxy Authentication Required\r\n\r\n")
    async with ScriptedUpstream(answers_each, tls=server_tls) as upstream, proxy as address:
        monkeypatch.setenv("HTTPS_PROXY", f"http://{address}")
        client = provider(upstream.port, scheme="https", host="localhost")
        with pytest.raises(UpstreamIncomplete) as failed:
            await text_of(client)
        await client.aclose()
    assert str(failed.value) == (
        "upstream connection failed: no connection (ConnectionRefusedError: the proxy "
        "refused the tunnel: HTTP/1.1 407 Proxy Authentication Required)"
    )
    assert upstream.connections == 0
