// Tool calls and thinking in streamResponse, against a fake network that serves a
// scripted `tokens` stream (and can drop it), as the gateway's log would.
import assert from "node:assert/strict";
import { test } from "node:test";

import { streamResponse, toStreamEvent } from "../../tokenrelay/web/tokenrelay.js";

const ID = "s-tools";
const START = { stream_id: ID, request_id: "req_1", model: "claude-haiku-4-5" };
const TOOL = { id: "toolu_1", name: "weather" };
const INPUT = { query: "Paris, FR", days: 2 };
// The input JSON cut inside a key, a string and a number, as Claude streams it.
const FRAGMENTS = ['{"qu', 'ery": "Pa', 'ris, FR", "d', 'ays": 2}'];
const SIGNATURE = "EqQBCkYIBRgCKkBsig==";
const usage = (output) => ({ input_tokens: 9, output_tokens: output });
const done = (stopReason, output) => ({
  done: true, stop_reason: stopReason, usage: usage(output), cost_usd: 0.0001, cached: false,
});

const TOOL_LOG = [
  START,
  { token: "Let me" },
  { token: " check." },
  { tool_use_start: TOOL },
  ...FRAGMENTS.map((tool_input) => ({ tool_input })),
  { tool_use: { ...TOOL, input: INPUT } },
  done("tool_use", 6),
];
const THINKING_LOG = [
  START,
  { thinking: "The user asks" },
  { thinking: " about the sea." },
  { thinking_signature: SIGNATURE },
  { token: "Salt" },
  { token: " washes in." },
  done("end_turn", 4),
];

/** A fetch serving `log`; `drops[i]` cuts request i's response after that seq. */
function network(log, drops = []) {
  const requests = [];
  const fetch = async (url, init = {}) => {
    const headers = init.headers || {};
    requests.push({ url, method: init.method || "GET", headers, body: init.body });
    const lastId = headers["last-event-id"];
    const after = lastId ? Number(lastId.split(":").pop()) : -1;
    const upTo = drops[requests.length - 1] ?? log.length - 1;
    const text = log
      .map((data, seq) => [seq, data])
      .filter(([seq]) => seq > after && seq <= upTo)
      .map(([seq, data]) => `id: ${ID}:${seq}\ndata: ${JSON.stringify(data)}\n\n`)
      .join("");
    const bytes = new TextEncoder().encode(text);
    let offset = 0;
    const dropped = upTo < log.length - 1;
    const body = new ReadableStream({
      pull(controller) {
        if (offset < bytes.length) {
          controller.enqueue(bytes.slice(offset, offset + 11));
          offset += 11;
        } else if (dropped) controller.error(new TypeError("network error"));
        else controller.close();
      },
    });
    return new Response(body, { status: 200, headers: { "x-stream-id": ID } });
  };
  return { fetch, requests };
}

function follow(log, extra = {}, drops = []) {
  const net = network(log, drops);
  const calls = [];
  const thinking = [];
  const stream = streamResponse({
    prompt: "Weather?",
    fetch: net.fetch,
    sleep: async () => {},
    // A copy of the call each time: what a renderer would have shown then.
    onToolCall: (call, all) => calls.push([{ ...call }, all.length]),
    onThinking: (delta, whole) => thinking.push([delta, whole]),
    ...extra,
  });
  return { stream, net, calls, thinking };
}

test("a tool call is shown opening, its input JSON growing, then parsed and done", async () => {
  const { stream, calls } = follow(TOOL_LOG);
  const result = await stream.result;
  assert.deepEqual(calls, [
    [{ ...TOOL, inputJson: "", input: null, done: false }, 1],
    [{ ...TOOL, inputJson: FRAGMENTS.slice(0, 1).join(""), input: null, done: false }, 1],
    [{ ...TOOL, inputJson: FRAGMENTS.slice(0, 2).join(""), input: null, done: false }, 1],
    [{ ...TOOL, inputJson: FRAGMENTS.slice(0, 3).join(""), input: null, done: false }, 1],
    [{ ...TOOL, inputJson: FRAGMENTS.join(""), input: null, done: false }, 1],
    [{ ...TOOL, inputJson: FRAGMENTS.join(""), input: INPUT, done: true }, 1],
  ]);
  assert.equal(result.state, "done");
  assert.equal(result.stopReason, "tool_use");
  assert.equal(result.text, "Let me check.");
  assert.deepEqual(result.toolCalls, [
    { ...TOOL, inputJson: FRAGMENTS.join(""), input: INPUT, done: true },
  ]);
  // The assistant's turn, ready to send back with a tool_result after it.
  assert.deepEqual(result.content, [
    { type: "text", text: "Let me check." },
    { type: "tool_use", ...TOOL, input: INPUT },
  ]);
  assert.deepEqual(stream.toolCalls, result.toolCalls);
});

test("thinking streams before the text, and its block keeps the signature", async () => {
  const { stream, thinking } = follow(THINKING_LOG);
  const result = await stream.result;
  assert.deepEqual(thinking, [
    ["The user asks", "The user asks"],
    [" about the sea.", "The user asks about the sea."],
  ]);
  assert.equal(result.thinking, "The user asks about the sea.");
  assert.equal(result.text, "Salt washes in.");
  assert.deepEqual(result.toolCalls, []);
  assert.deepEqual(result.content, [
    { type: "thinking", thinking: "The user asks about the sea.", signature: SIGNATURE },
    { type: "text", text: "Salt washes in." },
  ]);
});

test("a drop inside a tool call resumes it without a repeated fragment", async () => {
  // Cut after the second fragment (seq 5), then after the block's end (seq 8).
  const { stream, net, calls } = follow(TOOL_LOG, {}, [5, 8]);
  const result = await stream.result;
  assert.deepEqual(
    net.requests.map((r) => r.headers["last-event-id"]),
    [undefined, `${ID}:5`, `${ID}:8`],
  );
  assert.equal(result.toolCalls[0].inputJson, FRAGMENTS.join(""));
  assert.deepEqual(result.toolCalls[0].input, INPUT);
  assert.equal(calls.length, 6);
});

test("a reset forgets the thinking, the text and the tool calls so far", async () => {
  const log = [
    START,
    { thinking: "First try" },
    { thinking_signature: SIGNATURE },
    { token: "Half" },
    { tool_use_start: TOOL },
    { tool_input: '{"q' },
    { reset: true, reason: "upstream_error" },
    ...THINKING_LOG.slice(1),
  ];
  const resets = [];
  const { stream } = follow(log, { onReset: (reason) => resets.push(reason) });
  const result = await stream.result;
  assert.deepEqual(resets, ["upstream_error"]);
  assert.equal(result.thinking, "The user asks about the sea.");
  assert.equal(result.text, "Salt washes in.");
  assert.deepEqual(result.toolCalls, []);
  assert.equal(result.content.length, 2);
});

test("tools, tool_choice and thinking are sent in the body", async () => {
  const tools = [{ name: "weather", input_schema: { type: "object" } }];
  const thinking = { type: "enabled", budget_tokens: 2048 };
  const { stream, net } = follow(TOOL_LOG, {
    tools, tool_choice: { type: "auto" }, thinking, max_tokens: 4096,
  });
  await stream.result;
  assert.deepEqual(JSON.parse(net.requests[0].body), {
    prompt: "Weather?", max_tokens: 4096, tools, tool_choice: { type: "auto" }, thinking,
  });
});

test("toStreamEvent types every tool and thinking event", () => {
  const typed = (data) => {
    const { id, streamId, seq, data: _, ...rest } = toStreamEvent(`${ID}:7`, data);
    assert.deepEqual([id, streamId, seq], [`${ID}:7`, ID, 7]);
    return rest;
  };
  assert.deepEqual(typed({ tool_use_start: TOOL }), { type: "tool_use_start", toolUseStart: TOOL });
  assert.deepEqual(typed({ tool_input: "" }), { type: "tool_input", partialJson: "" });
  assert.deepEqual(typed({ tool_use: { ...TOOL, input: INPUT } }), {
    type: "tool_use", toolUse: { ...TOOL, input: INPUT },
  });
  assert.deepEqual(typed({ thinking: "hm" }), { type: "thinking", thinking: "hm" });
  assert.deepEqual(typed({ thinking_signature: SIGNATURE }), {
    type: "thinking_signature", signature: SIGNATURE,
  });
});

test("a callback that throws fails the stream, never taken for a dropped connection", async () => {
  const errors = [];
  const { stream, net } = follow(TOOL_LOG, {
    onToolCall: (call) => call.missing.field, // a TypeError, like fetch's network errors
    onError: (error) => errors.push(error),
  });
  const result = await stream.result;
  assert.equal(result.state, "failed");
  assert.equal(net.requests.length, 1); // no reconnect
  assert.equal(errors.length, 1);
  assert.equal(errors[0].name, "CallbackError");
  assert.ok(errors[0].cause instanceof TypeError);
  assert.equal(result.error, errors[0]);
});
