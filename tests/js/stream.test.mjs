// The reconnect logic of streamResponse, against a fake network: a fetch that serves a
// scripted stream and can drop, stall, reset or fail it. Backoff sleeps are recorded
// instead of slept, so the tests run instantly and can check every delay.
import assert from "node:assert/strict";
import { test } from "node:test";

import { backoffDelay, streamResponse } from "../../tokenrelay/web/tokenrelay.js";

const ID = "stream-abc";
const WORDS = ["Once", " upon", " a", " time", " there", " was", " a", " river", "."];
const DONE = {
  done: true,
  stop_reason: "end_turn",
  usage: { input_tokens: 3, output_tokens: WORDS.length },
  cost_usd: 0.0002,
  cached: false,
};

/** The gateway's log of one stream: seq 0 is start, then tokens, then done. */
function streamLog(words = WORDS, final = DONE) {
  return [
    { stream_id: ID, request_id: "req_1", model: "claude-haiku-4-5" },
    ...words.map((token) => ({ token })),
    final,
  ];
}

function frame(seq, data) {
  return `${seq === 0 ? "retry: 3000\n" : ""}id: ${ID}:${seq}\ndata: ${JSON.stringify(data)}\n\n`;
}

/**
 * A fake fetch over a stream log. `plan` says, per request, what the connection does:
 *   { upTo: n, then: "drop" | "stall" }   serve events through seq n, then fail that way
 *   { status, error }                     answer with an HTTP error and the gateway's JSON
 *   {}                                    serve the rest of the log and end
 * Each response is cut into awkward chunks (mid-line, mid-CRLF) to exercise the parser.
 */
function fakeNetwork(log, plan) {
  const requests = [];
  const fetch = async (url, init = {}) => {
    const headers = init.headers || {};
    requests.push({ url, method: init.method || "GET", headers, body: init.body });
    const step = plan[requests.length - 1] || {};
    if (init.method === "DELETE") {
      return new Response(JSON.stringify({ stream_id: ID, cancelled: true }), { status: 200 });
    }
    if (step.status) {
      const error = { type: "error", error: step.error };
      return new Response(JSON.stringify(error), { status: step.status });
    }
    const lastId = headers["last-event-id"];
    const after = lastId ? Number(lastId.split(":").pop()) : -1;
    const upTo = step.upTo ?? log.length - 1;
    const text = log
      .map((data, seq) => [seq, data])
      .filter(([seq]) => seq > after && seq <= upTo)
      .map(([seq, data]) => frame(seq, data))
      .join(": ping\n\n");
    const bytes = new TextEncoder().encode(text);
    let offset = 0;
    // Pulled chunk by chunk: an error must come after the data, as on a real socket.
    const body = new ReadableStream({
      start(controller) {
        init.signal?.addEventListener("abort", () =>
          controller.error(new DOMException("aborted", "AbortError")),
        );
      },
      pull(controller) {
        if (offset < bytes.length) {
          controller.enqueue(bytes.slice(offset, offset + 7));
          offset += 7;
        } else if (step.then === "drop") controller.error(new TypeError("network error"));
        else if (step.then !== "stall") controller.close();
        else return new Promise(() => {}); // silent until aborted
      },
    });
    return new Response(body, { status: 200, headers: { "x-stream-id": ID } });
  };
  return { fetch, requests };
}

function run(network, extra = {}) {
  const delays = [];
  const states = [];
  const tokens = [];
  const stream = streamResponse({
    prompt: "Tell me a story",
    fetch: network.fetch,
    sleep: async (ms) => void delays.push(ms),
    onState: (s) => states.push(s),
    onToken: (t) => tokens.push(t),
    ...extra,
  });
  return { stream, delays, states, tokens };
}

test("an undisturbed stream yields every token once and ends done", async () => {
  const net = fakeNetwork(streamLog(), []);
  const { stream, states, tokens } = run(net);
  const result = await stream.result;
  assert.equal(result.text, WORDS.join(""));
  assert.deepEqual(tokens, WORDS);
  assert.deepEqual(states, ["streaming", "done"]);
  assert.deepEqual(result.usage, DONE.usage);
  assert.equal(result.costUsd, 0.0002);
  assert.equal(net.requests.length, 1);
  const [post] = net.requests;
  assert.equal(post.method, "POST");
  assert.equal(post.url, "/api/stream-response");
  assert.deepEqual(JSON.parse(post.body), { prompt: "Tell me a story" });
});

test("a drop mid-stream resumes with the last event id, without gap or duplicate", async () => {
  const net = fakeNetwork(streamLog(), [{ upTo: 4, then: "drop" }, { upTo: 6, then: "drop" }]);
  const { stream, states, tokens, delays } = run(net);
  const result = await stream.result;
  assert.deepEqual(tokens, WORDS);
  assert.equal(result.state, "done");
  assert.deepEqual(
    net.requests.map((r) => [r.method, r.url, r.headers["last-event-id"]]),
    [
      ["POST", "/api/stream-response", undefined],
      ["GET", `/api/streams/${ID}`, `${ID}:4`],
      ["GET", `/api/streams/${ID}`, `${ID}:6`],
    ],
  );
  assert.deepEqual(states, [
    "streaming", "reconnecting", "streaming", "reconnecting", "streaming", "done",
  ]);
  // Progress was made before each drop, so each backoff starts again from the first step.
  assert.equal(delays.length, 2);
  for (const d of delays) assert.ok(d >= 0 && d < 250, `delay ${d}`);
});

test("a stall (no byte, no heartbeat, for stallTimeout) reconnects", async () => {
  const net = fakeNetwork(streamLog(), [{ upTo: 3, then: "stall" }]);
  const { stream, tokens } = run(net, { stallTimeout: 50 });
  const result = await stream.result;
  assert.deepEqual(tokens, WORDS);
  assert.equal(result.text, WORDS.join(""));
  assert.equal(net.requests[1].headers["last-event-id"], `${ID}:3`);
  assert.equal(net.requests.length, 2);
});

test("events replayed at or before the last seq are dropped", async () => {
  const net = fakeNetwork(streamLog(), [{ upTo: 5, then: "drop" }]);
  // A resume that ignores Last-Event-ID and replays from the start.
  const replaying = async (url, init) => {
    if (init.headers["last-event-id"]) init.headers = { ...init.headers, "last-event-id": "" };
    return net.fetch(url, init);
  };
  const { stream, tokens } = run({ fetch: replaying });
  await stream.result;
  assert.deepEqual(tokens, WORDS);
});

test("a dropped POST is retried with the same idempotency key", async () => {
  const net = fakeNetwork(streamLog(), [{ upTo: -1, then: "drop" }, { status: 503, error: {
    type: "overloaded_error", message: "draining" } }]);
  const { stream, tokens, delays } = run(net);
  await stream.result;
  assert.deepEqual(tokens, WORDS);
  assert.equal(net.requests.length, 3);
  assert.deepEqual(new Set(net.requests.map((r) => r.method)), new Set(["POST"]));
  const keys = new Set(net.requests.map((r) => r.headers["idempotency-key"]));
  assert.equal(keys.size, 1);
  assert.equal(typeof [...keys][0], "string");
  assert.ok([...keys][0].length >= 16);
  // Without progress in between, the second delay may be twice as long as the first.
  assert.ok(delays[0] >= 0 && delays[0] < 250, `${delays}`);
  assert.ok(delays[1] >= 0 && delays[1] < 500, `${delays}`);
});

test("backoff grows exponentially up to the cap, with full jitter", async () => {
  const plan = Array.from({ length: 9 }, () => ({ upTo: -1, then: "drop" }));
  const net = fakeNetwork(streamLog(), plan);
  const { stream, delays, tokens } = run(net, { random: () => 0.999, maxReconnects: 12 });
  await stream.result;
  assert.deepEqual(tokens, WORDS);
  const caps = [250, 500, 1000, 2000, 4000, 8000, 8000, 8000, 8000];
  assert.equal(delays.length, caps.length);
  delays.forEach((d, i) => assert.ok(d <= caps[i] && d > caps[i] * 0.99, `${i}: ${d}`));
  assert.equal(backoffDelay(3, undefined, () => 0), 0);
  assert.equal(backoffDelay(3, { initial: 100, max: 500 }, () => 0.5), 250);
});

test("gives up after maxReconnects consecutive failures, as failed", async () => {
  const plan = Array.from({ length: 20 }, () => ({ upTo: -1, then: "drop" }));
  const net = fakeNetwork(streamLog(), plan);
  const errors = [];
  const { stream, states } = run(net, { maxReconnects: 3, onError: (e) => errors.push(e) });
  const result = await stream.result;
  assert.equal(result.state, "failed");
  assert.equal(net.requests.length, 4);
  assert.equal(states.at(-1), "failed");
  assert.equal(errors.length, 1);
  assert.match(errors[0].message, /^connection lost/);
});

test("a reset clears the text so far; the answer starts again", async () => {
  const words = ["Half", " an", " answer", ...WORDS];
  const log = streamLog(words);
  log.splice(4, 0, { reset: true, reason: "upstream_error" });
  const net = fakeNetwork(log, [{ upTo: 4, then: "drop" }]);
  const resets = [];
  const { stream } = run(net, { onReset: (reason) => resets.push(reason) });
  const result = await stream.result;
  assert.deepEqual(resets, ["upstream_error"]);
  assert.equal(result.text, WORDS.join(""));
});

test("an error event ends the stream as failed, without reconnecting", async () => {
  const error = { error: "Overloaded", code: "overloaded", retryable: true };
  const net = fakeNetwork(streamLog(WORDS.slice(0, 3), error), []);
  const errors = [];
  const { stream, states } = run(net, { onError: (e) => errors.push(e) });
  const result = await stream.result;
  assert.equal(result.state, "failed");
  assert.equal(result.text, "Once upon a");
  assert.deepEqual(states, ["streaming", "failed"]);
  assert.equal(net.requests.length, 1);
  assert.equal(errors.length, 1);
  assert.equal(errors[0].type, "error");
  assert.equal(errors[0].message, "Overloaded");
  assert.equal(errors[0].code, "overloaded");
  assert.equal(errors[0].retryable, true);
});

test("a 4xx before the stream fails at once with the gateway's message", async () => {
  const message = "prompt: at most 10000 characters";
  const net = fakeNetwork(streamLog(), [
    { status: 400, error: { type: "invalid_request_error", message } },
  ]);
  const { stream, delays } = run(net);
  const result = await stream.result;
  assert.equal(result.state, "failed");
  assert.equal(result.error.status, 400);
  assert.equal(result.error.type, "invalid_request_error");
  assert.equal(result.error.detail, message);
  assert.equal(net.requests.length, 1);
  assert.deepEqual(delays, []);
});

test("a resume answered 404 (the stream expired) fails instead of retrying", async () => {
  const net = fakeNetwork(streamLog(), [
    { upTo: 2, then: "drop" },
    { status: 404, error: { type: "not_found_error", message: "no such stream" } },
  ]);
  const { stream } = run(net);
  const result = await stream.result;
  assert.equal(result.state, "failed");
  assert.equal(result.error.status, 404);
  assert.equal(result.text, "Once upon");
  assert.equal(net.requests.length, 2);
});

test("an AbortSignal stops reading, as stopped; cancel() also DELETEs", async () => {
  const controller = new AbortController();
  const net = fakeNetwork(streamLog(), [{ upTo: 3, then: "stall" }]);
  const { stream } = run(net, {
    signal: controller.signal,
    onToken: (_, text) => text === "Once upon a" && controller.abort(),
  });
  const result = await stream.result;
  assert.equal(result.state, "stopped");
  assert.equal(result.text, "Once upon a");
  assert.equal(net.requests.length, 1);

  const net2 = fakeNetwork(streamLog(), [{ upTo: 3, then: "stall" }]);
  let cancelled;
  const stopping = run(net2, {
    onToken: (_, text) => {
      if (text === "Once upon a") cancelled = stopping.stream.cancel();
    },
  });
  assert.equal((await stopping.stream.result).state, "stopped");
  assert.equal(await cancelled, true);
  assert.deepEqual(net2.requests.map((r) => [r.method, r.url]), [
    ["POST", "/api/stream-response"],
    ["DELETE", `/api/streams/${ID}`],
  ]);
});

test("the API key is sent as a bearer token on every request", async () => {
  const net = fakeNetwork(streamLog(), [{ upTo: 2, then: "drop" }]);
  const { stream } = run(net, { apiKey: "trk_secret", baseUrl: "https://relay.example/" });
  await stream.result;
  assert.deepEqual(net.requests.map((r) => r.headers.authorization), [
    "Bearer trk_secret",
    "Bearer trk_secret",
  ]);
  assert.equal(net.requests[0].url, "https://relay.example/api/stream-response");
});

test("the stream is also an async iterable of typed events", async () => {
  const net = fakeNetwork(streamLog(), [{ upTo: 5, then: "drop" }]);
  const { stream } = run(net);
  const events = [];
  for await (const event of stream) events.push(event);
  assert.deepEqual(events.map((e) => e.seq), [...Array(WORDS.length + 2).keys()]);
  assert.equal(events[0].type, "start");
  assert.equal(events[0].model, "claude-haiku-4-5");
  assert.deepEqual(events.slice(1, -1).map((e) => e.token), WORDS);
  assert.equal(events.at(-1).type, "done");
  assert.equal(events.at(-1).stopReason, "end_turn");
});

test("heartbeats keep a quiet stream alive: no reconnect while pings arrive", async () => {
  const requests = [];
  const fetch = async (url, init) => {
    requests.push(url);
    const encoder = new TextEncoder();
    const log = streamLog();
    let pings = 0;
    const body = new ReadableStream({
      async pull(controller) {
        // Silent for 8 × 20 ms apart from pings: far longer than the 50 ms stall timeout.
        if (pings === 0) controller.enqueue(encoder.encode(frame(0, log[0])));
        if (pings < 8) {
          pings += 1;
          await new Promise((resolve) => setTimeout(resolve, 20));
          controller.enqueue(encoder.encode(": ping\n\n"));
          return;
        }
        controller.enqueue(encoder.encode(log.slice(1).map((d, i) => frame(i + 1, d)).join("")));
        controller.close();
      },
    });
    init.signal.addEventListener("abort", () => body.cancel());
    return new Response(body, { status: 200 });
  };
  const { stream, tokens, delays } = run({ fetch }, { stallTimeout: 50 });
  const result = await stream.result;
  assert.equal(result.state, "done");
  assert.deepEqual(tokens, WORDS);
  assert.deepEqual(requests, ["/api/stream-response"]);
  assert.deepEqual(delays, []);
});
