// The SSE parser against the spec's corner cases: every way of cutting a stream into
// chunks must yield the same events.
import assert from "node:assert/strict";
import { test } from "node:test";

import { SSEParser, parseSSE } from "../../tokenrelay/web/tokenrelay.js";

const SAMPLE =
  "\uFEFFretry: 3000\r\nid: s1:0\r\ndata: {\"stream_id\":\"s1\"}\r\n\r\n" +
  ": ping\n\n" +
  "id: s1:1\rdata: {\"token\":\"Hé\"}\r\r" +
  "id: s1:2\ndata: first line\ndata:second line\ndata\n\n" +
  "event: custom\nid: s1:3\ndata: ü 🌊\n\n" +
  ":no space comment\r\n" +
  "id: s1:4\r\nretry: soon\r\ndata: {\"done\":true}\r\n\r\n";

const EXPECTED = [
  { type: "event", event: "message", data: '{"stream_id":"s1"}', id: "s1:0", retry: 3000 },
  { type: "comment", text: "ping" },
  { type: "event", event: "message", data: '{"token":"Hé"}', id: "s1:1" },
  { type: "event", event: "message", data: "first line\nsecond line\n", id: "s1:2" },
  { type: "event", event: "custom", data: "ü 🌊", id: "s1:3" },
  { type: "comment", text: "no space comment" },
  { type: "event", event: "message", data: '{"done":true}', id: "s1:4" },
];

function feed(chunks) {
  const parser = new SSEParser();
  const out = [];
  for (const chunk of chunks) out.push(...parser.push(chunk));
  out.push(...parser.finish());
  return out;
}

test("parses a whole stream: BOM, CR/LF/CRLF, comments, multi-line data, ids, retry", () => {
  assert.deepEqual(parseSSE(SAMPLE), EXPECTED);
});

test("every split of the stream into two chunks yields the same events", () => {
  for (let i = 0; i <= SAMPLE.length; i++) {
    assert.deepEqual(feed([SAMPLE.slice(0, i), SAMPLE.slice(i)]), EXPECTED, `split at ${i}`);
  }
});

test("every split into three chunks yields the same events", () => {
  for (let i = 0; i <= SAMPLE.length; i++) {
    for (let j = i; j <= SAMPLE.length; j++) {
      const chunks = [SAMPLE.slice(0, i), SAMPLE.slice(i, j), SAMPLE.slice(j)];
      assert.deepEqual(feed(chunks), EXPECTED, `split at ${i}, ${j}`);
    }
  }
});

test("one character at a time yields the same events", () => {
  assert.deepEqual(feed([...SAMPLE]), EXPECTED);
});

test("bytes cut anywhere, even inside a UTF-8 character, yield the same events", () => {
  const bytes = new TextEncoder().encode(SAMPLE);
  for (let i = 0; i <= bytes.length; i++) {
    assert.deepEqual(feed([bytes.slice(0, i), bytes.slice(i)]), EXPECTED, `byte split at ${i}`);
  }
});

test("a CRLF cut between chunks ends one line, not two", () => {
  // Were the LF read as a second line end, "data: b" would dispatch alone.
  const events = feed(["data: a\r", "\ndata: b\r", "\n\r", "\n"]);
  assert.deepEqual(events, [{ type: "event", event: "message", data: "a\nb", id: "" }]);
});

test("a lone CR followed by a chunk that starts with text ends the line", () => {
  const events = feed(["data: a\r", "data: b\r", "\r"]);
  assert.deepEqual(events, [{ type: "event", event: "message", data: "a\nb", id: "" }]);
});

test("the last event id carries over to events without an id line", () => {
  const events = parseSSE("id: x:1\ndata: one\n\ndata: two\n\nid\ndata: three\n\n");
  assert.deepEqual(
    events.map((e) => e.id),
    ["x:1", "x:1", ""],
  );
});

test("an id containing NUL is ignored; a block without data dispatches nothing", () => {
  const events = parseSSE("id: good\n\nid: b\0d\ndata: d\n\n");
  assert.deepEqual(events, [{ type: "event", event: "message", data: "d", id: "good" }]);
});

test("a trailing event without its blank line is not dispatched", () => {
  assert.deepEqual(parseSSE("data: complete\n\ndata: cut"), [
    { type: "event", event: "message", data: "complete", id: "" },
  ]);
});

test("a BOM is stripped only at the very start", () => {
  const events = feed(["\uFEFF", "data: \uFEFFkept\n\n"]);
  assert.deepEqual(events, [{ type: "event", event: "message", data: "\uFEFFkept", id: "" }]);
});
