// useStreamingResponse over a fake network, rendered by a stand-in for React's hooks.
import assert from "node:assert/strict";
import { register } from "node:module";
import { test } from "node:test";

register("./support/react-loader.mjs", import.meta.url);
const { render } = await import("./support/fake-react.mjs");
const { useStreamingResponse } = await import("../../tokenrelay/web/react.js");

const ID = "s9";

function frames(tokens, final) {
  const start = { stream_id: ID, request_id: "r", model: "m" };
  const events = [start, ...tokens.map((token) => ({ token })), final];
  return events.map((data, seq) => `id: ${ID}:${seq}\ndata: ${JSON.stringify(data)}\n\n`).join("");
}

/** A fetch answering POSTs with `body` (held open while `hold` is set) and DELETEs. */
function network(body, { hold = false } = {}) {
  const requests = [];
  const fetch = async (url, init) => {
    requests.push({ url, method: init.method || "GET", body: init.body });
    if (init.method === "DELETE") {
      return new Response(JSON.stringify({ stream_id: ID, cancelled: true }), { status: 200 });
    }
    const stream = new ReadableStream({
      start(controller) {
        controller.enqueue(new TextEncoder().encode(body));
        if (!hold) controller.close();
        init.signal.addEventListener("abort", () =>
          controller.error(new DOMException("aborted", "AbortError")),
        );
      },
    });
    return new Response(stream, { status: 200, headers: { "x-stream-id": ID } });
  };
  return { fetch, requests };
}

const DONE = { done: true, stop_reason: "end_turn", usage: { input_tokens: 2, output_tokens: 3 },
  cost_usd: 0.00001, cached: false };

test("start() streams into text, then exposes usage and cost", async () => {
  const net = network(frames(["One", " two", " three"], DONE));
  const root = render(() => useStreamingResponse({ fetch: net.fetch, model: "claude-haiku-4-5" }));
  assert.equal(root.output.state, "idle");
  assert.equal(root.output.isStreaming, false);
  const started = root.output.start([{ role: "user", content: "Count" }]);
  assert.equal(root.output.state, "connecting");
  assert.equal(root.output.isStreaming, true);
  const result = await started;
  assert.equal(result.state, "done");
  const { text, state, usage, cost, streamId, error } = root.output;
  assert.deepEqual({ text, state, usage, cost, streamId, error }, {
    text: "One two three", state: "done", usage: DONE.usage, cost: 0.00001, streamId: ID,
    error: null,
  });
  assert.deepEqual(JSON.parse(net.requests[0].body), {
    messages: [{ role: "user", content: "Count" }], model: "claude-haiku-4-5",
  });
});

test("an error event leaves the text and sets error and failed", async () => {
  const error = { error: "Overloaded", code: "overloaded", retryable: true };
  const net = network(frames(["Half"], error));
  const root = render(() => useStreamingResponse({ fetch: net.fetch }));
  await root.output.start("Try");
  assert.equal(root.output.state, "failed");
  assert.equal(root.output.text, "Half");
  assert.equal(root.output.error.message, "Overloaded");
  assert.equal(root.output.error.retryable, true);
});

test("stop() cancels on the gateway; unmounting cancels too", async () => {
  const net = network(frames(["Never", " ending"], DONE).split("id: s9:3")[0], { hold: true });
  const root = render(() => useStreamingResponse({ fetch: net.fetch }));
  const started = root.output.start("Go");
  while (root.output.text !== "Never ending") await new Promise((r) => setTimeout(r, 5));
  assert.equal(root.output.state, "streaming");
  assert.equal(await root.output.stop(), true);
  await started;
  assert.equal(root.output.state, "stopped");
  assert.deepEqual(net.requests.map((r) => r.method), ["POST", "DELETE"]);

  const net2 = network(frames(["Again"], DONE).split("id: s9:2")[0], { hold: true });
  const root2 = render(() => useStreamingResponse({ fetch: net2.fetch }));
  const second = root2.output.start("Go");
  while (root2.output.text !== "Again") await new Promise((r) => setTimeout(r, 5));
  root2.unmount();
  await second;
  while (net2.requests.length < 2) await new Promise((r) => setTimeout(r, 5));
  assert.deepEqual(net2.requests.map((r) => r.method), ["POST", "DELETE"]);
});

test("thinking and a tool call are exposed as they stream, then the answer's blocks", async () => {
  const tool = { id: "toolu_1", name: "weather" };
  const events = [
    { stream_id: ID, request_id: "r", model: "m" },
    { thinking: "Hmm" }, { thinking_signature: "c2ln" }, { token: "Checking." },
    { tool_use_start: tool }, { tool_input: '{"q": ' }, { tool_input: '"Oslo"}' },
    { tool_use: { ...tool, input: { q: "Oslo" } } },
    { ...DONE, stop_reason: "tool_use" },
  ];
  const body = events.map((d, seq) => `id: ${ID}:${seq}\ndata: ${JSON.stringify(d)}\n\n`).join("");
  const net = network(body);
  const root = render(() => useStreamingResponse({ fetch: net.fetch }));
  assert.deepEqual([root.output.thinking, root.output.toolCalls, root.output.content],
    ["", [], null]);
  await root.output.start("Weather?");
  const { thinking, toolCalls, content, stopReason, text } = root.output;
  assert.deepEqual({ thinking, toolCalls, content, stopReason, text }, {
    thinking: "Hmm",
    toolCalls: [{ ...tool, inputJson: '{"q": "Oslo"}', input: { q: "Oslo" }, done: true }],
    content: [
      { type: "thinking", thinking: "Hmm", signature: "c2ln" },
      { type: "text", text: "Checking." },
      { type: "tool_use", ...tool, input: { q: "Oslo" } },
    ],
    stopReason: "tool_use",
    text: "Checking.",
  });
});
