"""Tracing: the spans a stream leaves, over a real gateway on a real port.

Most tests run the gateway in this process (uvicorn on a free port) with an SDK
tracer provider and an in-memory exporter handed to `create_app`, in front of a
`tokenrelay simulate` process that keeps the `traceparent` of every request it gets.
The last ones spawn `tokenrelay serve` with TOKENRELAY_TRACING=otlp and receive its
spans over OTLP/HTTP here, decoded with opentelemetry-proto; and with tracing off,
nothing at all.
"""

from __future__ import annotations

import contextlib
import secrets
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from httpx_sse import aconnect_sse
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from tests.support import (
    ROOT,
    eventually,
    eventually_async,
    free_port,
    read_stream,
    resume,
    run_stack,
    spawn,
    start,
    text_of,
    unique,
)
from tests.support.inprocess import served
from tokenrelay.app import create_app, gateway_of
from tokenrelay.config import Settings
from tokenrelay.providers.simulator import SimulatorProvider

UPSTREAM_KEY = "sk-test-upstream-key"


@pytest.fixture(scope="module")
def simulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    args = ["simulate", "--port", str(port), "--ttft-ms", "0", "--tps", "0"]
    log_path = tmp_path_factory.mktemp("simulator") / "simulate.log"
    with spawn(args, f"{url}/healthz", log_path=log_path):
        yield url


@dataclass
class Traced:
    """A gateway in this process, and the spans it has ended so far."""

    url: str
    exporter: InMemorySpanExporter
    app: FastAPI

    def spans(self, trace_id: int) -> list[ReadableSpan]:
        return [s for s in self.exporter.get_finished_spans() if _trace_id(s) == trace_id]

    async def tree(self, trace_id: int, count: int) -> list[ReadableSpan]:
        """The trace's spans once `count` have ended (the last end after the response)."""
        await eventually_async(
            lambda: len(self.spans(trace_id)) >= count, what=f"{count} spans of the trace"
        )
        return self.spans(trace_id)


@contextlib.asynccontextmanager
async def traced_gateway(simulator: str, **settings: Any) -> AsyncIterator[Traced]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    port = free_port()
    upstream = {"provider": "anthropic", "ANTHROPIC_API_KEY": UPSTREAM_KEY}
    upstream |= {"anthropic_base_url": simulator}
    config = Settings(
        port=port, database_url="off", retry_base_delay=0.05, upstream_retries=2,
        heartbeat_interval=0.5, drain_timeout=2, **(upstream | settings),
    )  # fmt: skip
    app = create_app(config, tracer_provider=provider)
    try:
        async with served(app, config):
            yield Traced(f"http://127.0.0.1:{port}", exporter, app)
    finally:
        provider.shutdown()


def _trace_id(span: ReadableSpan) -> int:
    assert span.context is not None
    return span.context.trace_id


def _span_id(span: ReadableSpan) -> int:
    assert span.context is not None
    return span.context.span_id


def _parent(span: ReadableSpan) -> int | None:
    return None if span.parent is None else span.parent.span_id


def _named(spans: list[ReadableSpan], name: str) -> list[ReadableSpan]:
    """The spans of that name, in the order they started."""
    return sorted((s for s in spans if s.name == name), key=lambda s: s.start_time or 0)


def _one(spans: list[ReadableSpan], name: str) -> ReadableSpan:
    (span,) = _named(spans, name)
    return span


def _attrs(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


@dataclass(frozen=True)
class ClientTrace:
    """A client's span, as a W3C `traceparent` says it."""

    trace_id: int
    span_id: int

    @classmethod
    def new(cls) -> ClientTrace:
        return cls(int(secrets.token_hex(16), 16), int(secrets.token_hex(8), 16))

    @property
    def headers(self) -> dict[str, str]:
        traceparent = f"00-{self.trace_id:032x}-{self.span_id:016x}-01"
        return {"traceparent": traceparent, "tracestate": "client=tests"}


async def _traceparents(simulator: str) -> list[str]:
    """The `traceparent` of every request that reached the simulator, oldest first."""
    async with httpx.AsyncClient() as client:
        traceparents: list[str] = (await client.get(f"{simulator}/_sim/traceparents")).json()
    return traceparents


async def _received(simulator: str, trace_id: int) -> list[tuple[int, int]]:
    """(trace id, parent span id) of each request of the trace that reached the simulator."""
    received = []
    for traceparent in await _traceparents(simulator):
        _, trace, parent, _ = traceparent.split("-")
        if int(trace, 16) == trace_id:
            received.append((int(trace, 16), int(parent, 16)))
    return received


def _assert_no_text(spans: list[ReadableSpan], *texts: str) -> None:
    """No attribute of any span carries the prompt, the answer or a key."""
    values = [str(v) for s in spans for v in _attrs(s).values()]
    names = [s.name for s in spans]
    for text in texts:
        assert text and not any(text in v for v in values + names), text


async def test_a_stream_is_one_tree_of_spans_under_the_clients_trace(simulator: str) -> None:
    client_trace = ClientTrace.new()
    prompt = unique("Traced answer [[sim:tokens=12]]")
    async with traced_gateway(simulator) as gw:
        async with httpx.AsyncClient(base_url=gw.url, timeout=30) as client:
            read = await start(client, {"prompt": prompt}, headers=client_trace.headers)
        spans = await gw.tree(client_trace.trace_id, 4)
    stream_id = read.events[0].stream_id
    assert sorted(s.name for s in spans) == [
        "tokenrelay.admission",
        "tokenrelay.delivery",
        "tokenrelay.stream",
        "tokenrelay.upstream",
    ]
    admission, stream = _one(spans, "tokenrelay.admission"), _one(spans, "tokenrelay.stream")
    upstream, delivery = _one(spans, "tokenrelay.upstream"), _one(spans, "tokenrelay.delivery")
    # The client's span is the parent of the request's span, which is the parent of the rest.
    assert admission.parent is not None and admission.parent.is_remote
    assert _parent(admission) == client_trace.span_id
    assert _parent(stream) == _parent(delivery) == _span_id(admission)
    assert _parent(upstream) == _span_id(stream)
    assert {s.context.trace_state.to_header() for s in spans if s.context} == {"client=tests"}
    assert [admission.kind, stream.kind, upstream.kind, delivery.kind] == [
        SpanKind.SERVER, SpanKind.INTERNAL, SpanKind.CLIENT, SpanKind.INTERNAL,
    ]  # fmt: skip
    assert _attrs(admission) == {
        "tokenrelay.request_id": read.headers["x-request-id"],
        "tokenrelay.stream_id": stream_id,
    }
    usage = read.events[-1].data["usage"]
    assert usage["output_tokens"] == 12
    assert _attrs(stream) == {
        "tokenrelay.stream_id": stream_id,
        "gen_ai.request.model": "claude-haiku-4-5",
        "gen_ai.response.model": "claude-haiku-4-5",
        "gen_ai.usage.input_tokens": usage["input_tokens"],
        "gen_ai.usage.output_tokens": 12,
        "tokenrelay.stream.status": "done",
        "tokenrelay.stream.attempts": 1,
        "tokenrelay.stream.retries": 0,
        "tokenrelay.stream.continuations": 0,
        "tokenrelay.stream.estimated": False,
        "tokenrelay.stream.cost_usd": read.events[-1].data["cost_usd"],
        "tokenrelay.stream.ttft_ms": _attrs(stream)["tokenrelay.stream.ttft_ms"],
    }
    assert _attrs(upstream) == {
        "tokenrelay.attempt": 1,
        "tokenrelay.attempt.kind": "first",
        "tokenrelay.attempt.outcome": "done",
        "tokenrelay.attempt.deltas": 12,
        "gen_ai.usage.input_tokens": usage["input_tokens"],
        "gen_ai.usage.output_tokens": 12,
    }
    # start, 12 tokens, done: all written, the last of them the final event.
    assert len(read.events) == 14
    delivery_attrs = _attrs(delivery)
    assert 1 <= delivery_attrs.pop("tokenrelay.delivery.writes") <= 14
    assert delivery_attrs == {
        "tokenrelay.stream_id": stream_id,
        "tokenrelay.delivery.after": -1,
        "tokenrelay.delivery.events": 14,
        "tokenrelay.delivery.outcome": "completed",
    }
    assert all(s.status.status_code is StatusCode.UNSET for s in spans)
    # The upstream request carried the attempt span's context, in the client's trace.
    assert await _received(simulator, client_trace.trace_id) == [
        (client_trace.trace_id, _span_id(upstream))
    ]
    _assert_no_text(spans, prompt, read.text, UPSTREAM_KEY)


async def test_the_in_process_simulator_gets_the_attempts_traceparent(simulator: str) -> None:
    client_trace = ClientTrace.new()
    async with traced_gateway(simulator, provider="simulator", simulator_ttft_ms=0) as gw:
        async with httpx.AsyncClient(base_url=gw.url, timeout=30) as client:
            prompt = unique("In process [[sim:tokens=3]] [[sim:tps=0]]")
            await start(client, {"prompt": prompt}, headers=client_trace.headers)
        spans = await gw.tree(client_trace.trace_id, 4)
        app_gateway = gateway_of(gw.app)
        assert app_gateway is not None
        provider = app_gateway.manager.upstreams.deployments[0].provider
        assert isinstance(provider, SimulatorProvider)
        upstream = _one(spans, "tokenrelay.upstream")
        expected = f"00-{client_trace.trace_id:032x}-{_span_id(upstream):016x}-01"
        assert list(provider.traceparents) == [expected]


async def test_a_retry_is_a_second_attempt_span_of_kind_retry(simulator: str) -> None:
    client_trace = ClientTrace.new()
    words = unique("Overloaded once [[sim:tokens=5]]")
    async with traced_gateway(simulator) as gw:
        async with httpx.AsyncClient(base_url=gw.url, timeout=30) as client:
            body = {"prompt": f"{words} [[sim:status=529]] [[sim:fail_times=1]]"}
            read = await start(client, body, headers=client_trace.headers)
        spans = await gw.tree(client_trace.trace_id, 5)
    assert read.events[-1].data["stop_reason"] == "end_turn"
    stream = _one(spans, "tokenrelay.stream")
    first, retry = _named(spans, "tokenrelay.upstream")
    assert _parent(first) == _parent(retry) == _span_id(stream)
    assert _attrs(first) == {
        "tokenrelay.attempt": 1,
        "tokenrelay.attempt.kind": "first",
        "tokenrelay.attempt.outcome": "failed",
        "tokenrelay.attempt.deltas": 0,
        "error.type": "overloaded_error",
        "http.response.status_code": 529,
        "gen_ai.usage.input_tokens": 0,
        "gen_ai.usage.output_tokens": 0,
    }
    assert first.status.status_code is StatusCode.ERROR
    assert {k: v for k, v in _attrs(retry).items() if not k.startswith("gen_ai")} == {
        "tokenrelay.attempt": 2,
        "tokenrelay.attempt.kind": "retry",
        "tokenrelay.attempt.outcome": "done",
        "tokenrelay.attempt.deltas": 5,
    }
    assert retry.status.status_code is StatusCode.UNSET
    assert _attrs(stream)["tokenrelay.stream.attempts"] == 2
    assert _attrs(stream)["tokenrelay.stream.retries"] == 1
    assert stream.status.status_code is StatusCode.UNSET
    assert await _received(simulator, client_trace.trace_id) == [
        (client_trace.trace_id, _span_id(first)),
        (client_trace.trace_id, _span_id(retry)),
    ]


async def test_a_cut_answer_is_continued_in_a_continuation_attempt_span(simulator: str) -> None:
    client_trace = ClientTrace.new()
    words = unique("Dropped midway [[sim:tokens=20]]")
    async with traced_gateway(simulator) as gw:
        async with httpx.AsyncClient(base_url=gw.url, timeout=30) as client:
            body = {"prompt": f"{words} [[sim:drop_after=6]] [[sim:fail_times=1]]"}
            read = await start(client, body, headers=client_trace.headers)
        spans = await gw.tree(client_trace.trace_id, 5)
    before_cut = text_of(read.events[:7])  # the start event, then the 6 deltas
    stream = _one(spans, "tokenrelay.stream")
    cut, continuation = _named(spans, "tokenrelay.upstream")
    assert {k: v for k, v in _attrs(cut).items() if not k.startswith("gen_ai")} == {
        "tokenrelay.attempt": 1,
        "tokenrelay.attempt.kind": "first",
        "tokenrelay.attempt.outcome": "cut",
        "tokenrelay.attempt.deltas": 6,
        "error.type": "api_error",
    }
    assert cut.status.status_code is StatusCode.ERROR
    assert {k: v for k, v in _attrs(continuation).items() if not k.startswith("gen_ai")} == {
        "tokenrelay.attempt": 2,
        "tokenrelay.attempt.kind": "continuation",
        "tokenrelay.continuation.mode": "prefill",
        "tokenrelay.continuation.prefill_chars": len(before_cut),
        "tokenrelay.attempt.outcome": "done",
        "tokenrelay.attempt.deltas": 14,
    }
    assert [_parent(cut), _parent(continuation)] == [_span_id(stream)] * 2
    stream_attrs = _attrs(stream)
    assert stream_attrs["tokenrelay.stream.continuations"] == 1
    assert stream_attrs["tokenrelay.stream.attempts"] == 2
    assert stream_attrs["gen_ai.usage.output_tokens"] == 20
    assert [p for _, p in await _received(simulator, client_trace.trace_id)] == [
        _span_id(cut),
        _span_id(continuation),
    ]
    _assert_no_text(spans, words, before_cut, read.text)


async def test_a_resume_is_a_second_delivery_span_in_the_resuming_clients_trace(
    simulator: str,
) -> None:
    first_client, second_client = ClientTrace.new(), ClientTrace.new()
    prompt = unique("A long answer to resume [[sim:tokens=400]] [[sim:tps=40]]")
    async with traced_gateway(simulator) as gw:
        async with httpx.AsyncClient(base_url=gw.url, timeout=30) as client:
            first = await start(
                client, {"prompt": prompt}, stop_after=4, headers=first_client.headers
            )
            stream_id = first.events[0].stream_id
            events = []
            url = f"/api/streams/{stream_id}"
            headers = {"Last-Event-ID": first.last_id, **second_client.headers}
            async with aconnect_sse(client, "GET", url, headers=headers) as source:
                async for sse in source.aiter_sse():
                    if not sse.data:
                        continue
                    events.append(sse)
                    if len(events) == 3:  # still generating: stop it, read to its end
                        assert (await client.delete(url)).json()["cancelled"] is True
                    if '"error"' in sse.data:
                        break
        first_spans = await gw.tree(first_client.trace_id, 4)
        (resumed,) = await gw.tree(second_client.trace_id, 1)
    stream = _one(first_spans, "tokenrelay.stream")
    delivery = _one(first_spans, "tokenrelay.delivery")
    assert _attrs(delivery)["tokenrelay.delivery.outcome"] == "disconnected"
    assert _attrs(delivery)["tokenrelay.delivery.after"] == -1
    assert _attrs(stream)["tokenrelay.stream.status"] == "cancelled"
    # The resume's reader is its own client's child, linked to the stream it reads.
    assert resumed.name == "tokenrelay.delivery"
    assert _parent(resumed) == second_client.span_id
    assert [link.context.span_id for link in resumed.links] == [_span_id(stream)]
    resumed_attrs = _attrs(resumed)
    assert 1 <= resumed_attrs.pop("tokenrelay.delivery.writes") <= len(events)
    assert resumed_attrs == {
        "tokenrelay.stream_id": stream_id,
        "tokenrelay.delivery.after": first.events[-1].seq,
        "tokenrelay.delivery.events": len(events),
        "tokenrelay.delivery.outcome": "completed",
    }


async def test_a_queued_stream_has_a_queue_wait_span(simulator: str) -> None:
    holder, waiter = ClientTrace.new(), ClientTrace.new()
    async with traced_gateway(simulator, max_concurrent=1, queue_size=4) as gw:
        async with httpx.AsyncClient(base_url=gw.url, timeout=30) as client:
            # Holds the only slot until it ends (its reader leaving does not end it).
            long = unique("Holds the slot [[sim:tokens=40]] [[sim:tps=40]]")
            await start(client, {"prompt": long}, stop_after=2, headers=holder.headers)
            read = await start(
                client, {"prompt": unique("Waits [[sim:tokens=3]]")}, headers=waiter.headers
            )
        spans = await gw.tree(waiter.trace_id, 5)
    assert read.events[1].data == {"queued": True, "position": 1}
    stream, queue_wait = _one(spans, "tokenrelay.stream"), _one(spans, "tokenrelay.queue_wait")
    assert _parent(queue_wait) == _span_id(stream)
    assert _attrs(queue_wait) == {
        "tokenrelay.queue.position": 1,
        "tokenrelay.queue.outcome": "admitted",
    }
    upstream = _one(spans, "tokenrelay.upstream")
    assert queue_wait.end_time is not None and upstream.start_time is not None
    assert queue_wait.end_time <= upstream.start_time


async def test_a_refused_request_is_an_admission_span_with_its_error(simulator: str) -> None:
    client_trace = ClientTrace.new()
    async with traced_gateway(simulator, rate_limit_rpm=1) as gw:
        async with httpx.AsyncClient(base_url=gw.url, timeout=30) as client:
            await start(client, {"prompt": unique("Allowed [[sim:tokens=2]]")})
            refused = await client.post(
                "/api/stream-response",
                json={"prompt": unique("Refused")},
                headers=client_trace.headers,
            )
        assert refused.status_code == 429
        (admission,) = await gw.tree(client_trace.trace_id, 1)
    assert admission.name == "tokenrelay.admission"
    assert _attrs(admission) == {
        "tokenrelay.request_id": refused.headers["x-request-id"],
        "error.type": "rate_limit_error",
        "http.response.status_code": 429,
    }
    # A refusal is the gateway doing its job, not a failed span.
    assert admission.status.status_code is StatusCode.UNSET


async def test_a_request_without_traceparent_is_a_trace_of_its_own(simulator: str) -> None:
    async with traced_gateway(simulator) as gw:
        async with httpx.AsyncClient(base_url=gw.url, timeout=30) as client:
            read = await start(client, {"prompt": unique("No parent [[sim:tokens=2]]")})
        stream_id = read.events[0].stream_id

        def spans_of_stream() -> list[ReadableSpan]:
            return [
                s
                for s in gw.exporter.get_finished_spans()
                if _attrs(s).get("tokenrelay.stream_id") == stream_id
            ]

        await eventually_async(lambda: len(spans_of_stream()) == 3, what="the stream's spans")
        admission = _one(spans_of_stream(), "tokenrelay.admission")
        spans = gw.spans(_trace_id(admission))
    assert admission.parent is None
    assert sorted(s.name for s in spans) == [
        "tokenrelay.admission",
        "tokenrelay.delivery",
        "tokenrelay.stream",
        "tokenrelay.upstream",
    ]


# -- over OTLP/HTTP, from a spawned gateway ---------------------------------------------


class Receiver:
    """An OTLP/HTTP trace endpoint: every export request it gets, decoded."""

    def __init__(self) -> None:
        self.requests: list[ExportTraceServiceRequest] = []
        received = self.requests

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                request = ExportTraceServiceRequest()
                request.ParseFromString(body)
                received.append(request)
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                return None

        self.port = free_port()
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def spans(self) -> list[tuple[str, Any]]:
        """(service.name, span) of every span received."""
        out = []
        for request in self.requests:
            for resource_spans in request.resource_spans:
                attrs = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
                for scope_spans in resource_spans.scope_spans:
                    out += [(attrs.get("service.name"), s) for s in scope_spans.spans]
        return out

    def __enter__(self) -> Receiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as r:
        yield r


async def test_otlp_exports_the_streams_spans_to_the_configured_endpoint(
    tmp_path: Path, receiver: Receiver
) -> None:
    client_trace = ClientTrace.new()
    otlp = {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url, "OTEL_BSP_SCHEDULE_DELAY": "100"}
    otlp["OTEL_SERVICE_NAME"] = "tokenrelay-under-test"
    with run_stack(tmp_path, "--tracing", "otlp", **otlp) as stack:
        async with httpx.AsyncClient(base_url=stack.gateway, timeout=30) as client:
            prompt = unique("Exported [[sim:tokens=4]]")
            read = await start(client, {"prompt": prompt}, headers=client_trace.headers)
        eventually(lambda: len(receiver.spans()) >= 4, what="four spans over OTLP")
        received = await _traceparents(stack.simulator)
    spans = receiver.spans()
    names = sorted(s.name for _, s in spans)
    assert names == [
        "tokenrelay.admission",
        "tokenrelay.delivery",
        "tokenrelay.stream",
        "tokenrelay.upstream",
    ]
    assert {service for service, _ in spans} == {"tokenrelay-under-test"}
    assert {s.trace_id for _, s in spans} == {client_trace.trace_id.to_bytes(16, "big")}
    by_name = {s.name: s for _, s in spans}
    assert by_name["tokenrelay.admission"].parent_span_id == client_trace.span_id.to_bytes(8, "big")
    stream_attrs = {a.key: a.value for a in by_name["tokenrelay.stream"].attributes}
    assert stream_attrs["tokenrelay.stream_id"].string_value == read.events[0].stream_id
    assert stream_attrs["tokenrelay.stream.status"].string_value == "done"
    upstream_id = by_name["tokenrelay.upstream"].span_id.hex()
    assert received == [f"00-{client_trace.trace_id:032x}-{upstream_id}-01"]


async def test_with_tracing_off_nothing_is_exported_nor_propagated(
    tmp_path: Path, receiver: Receiver
) -> None:
    client_trace = ClientTrace.new()
    # The exporter's variables are set, but tracing is not turned on.
    with run_stack(tmp_path, OTEL_EXPORTER_OTLP_ENDPOINT=receiver.url) as stack:
        async with httpx.AsyncClient(base_url=stack.gateway, timeout=30) as client:
            read = await start(
                client,
                {"prompt": unique("Untraced [[sim:tokens=4]]")},
                headers=client_trace.headers,
            )
            resumed = await resume(client, read.events[1].id, headers=client_trace.headers)
        received = await _traceparents(stack.simulator)
    assert read.events[-1].data["stop_reason"] == "end_turn"
    assert resumed.events[-1].data == read.events[-1].data
    # The gateway has exited (and would have flushed every span it had): none came.
    assert receiver.requests == []
    assert received == []


async def test_an_eventsource_streams_spans_carry_no_prompt(simulator: str) -> None:
    client_trace = ClientTrace.new()
    words = unique("Asked over GET, in the query string")
    async with traced_gateway(simulator) as gw:
        async with httpx.AsyncClient(base_url=gw.url, timeout=30) as client:
            read = await read_stream(
                client,
                "GET",
                "/api/stream-response",
                params={"prompt": f"{words} [[sim:tokens=6]]"},
                headers=client_trace.headers,
            )
        spans = await gw.tree(client_trace.trace_id, 4)
    assert read.events[-1].data["stop_reason"] == "end_turn"
    assert sorted(s.name for s in spans) == [
        "tokenrelay.admission",
        "tokenrelay.delivery",
        "tokenrelay.stream",
        "tokenrelay.upstream",
    ]
    _assert_no_text(spans, words, "Asked", read.text)


@pytest.mark.parametrize(("tracing", "loaded"), [("off", []), ("otlp", ["exporter", "sdk"])])
def test_the_sdk_is_loaded_only_when_tracing_is_on(tracing: str, loaded: list[str]) -> None:
    # A gateway opened as `serve` opens it, in a process of its own (this one has the SDK).
    probe = (
        "import asyncio, sys\n"
        "from tokenrelay.config import Settings\n"
        "from tokenrelay.gateway import open_gateway, prepare\n"
        f"settings = Settings(provider='simulator', database_url='off', tracing='{tracing}')\n"
        "async def main():\n"
        "    async with open_gateway(settings, prepare(settings)) as gw:\n"
        "        print(type(gw.tracing).__name__)\n"
        "        parts = {m.split('.')[1] for m in sys.modules if m.startswith('opentelemetry.')}\n"
        "        print(sorted(parts & {'sdk', 'exporter'}))\n"
        "asyncio.run(main())\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.splitlines()
    assert out == ["Tracing" if tracing == "off" else "OtelTracing", str(loaded)]
