// tokenrelay.js: the browser (and Node 18+) client for a tokenrelay gateway.
// An ES module with no dependencies, served by every gateway at /tokenrelay.js.
//
//   import { streamResponse } from "/tokenrelay.js";
//   const stream = streamResponse({ prompt: "Tell me a story", onToken: (t) => out.append(t) });
//   const result = await stream.result;   // { state: "done", text, usage, costUsd, ... }
//
// Tool calls and thinking stream too: `stream.toolCalls` (each { id, name, inputJson,
// input, done }, its input JSON growing as it is generated, parsed once it is done),
// `stream.thinking`, and `stream.content`, the answer as the Messages API's blocks
// (thinking with its signature, text, tool_use), to send back as the assistant's turn.
//
// It streams with fetch (so it can send Authorization headers and POST bodies), not
// EventSource. A dropped connection, or one silent for `stallTimeout` ms (heartbeats
// count as activity), is resumed from the last event seen with Last-Event-ID, after an
// exponential backoff with full jitter: the caller sees every event exactly once.

export const DEFAULT_STALL_TIMEOUT_MS = 30_000;

// ---------------------------------------------------------------------------------
// SSE parsing (https://html.spec.whatwg.org/multipage/server-sent-events.html)

/**
 * An incremental Server-Sent Events parser. Feed it chunks as they arrive (strings or
 * bytes, cut anywhere: inside a line, a CRLF, or a UTF-8 character); it returns what
 * each chunk completed:
 *   { type: "event", event, data, id, retry? }   a dispatched event
 *   { type: "comment", text }                    a comment line, e.g. a ": ping" heartbeat
 * `id` is the last event id in effect, as the spec defines it; `retry` is set on the
 * event whose block carried a valid `retry:` field.
 */
export class SSEParser {
  constructor() {
    this.decoder = new TextDecoder("utf-8");
    this.buffer = "";
    this.afterCR = false; // the last chunk ended in CR: a leading LF is that CRLF's end
    this.started = false; // a BOM is only stripped at the very start of the stream
    this.lastEventId = "";
    this.retry = undefined;
    this.resetBlock();
  }

  resetBlock() {
    this.data = [];
    this.eventType = "";
    this.blockRetry = undefined;
  }

  /** Parse one more chunk: returns the events and comments it completed. */
  push(chunk) {
    let text = typeof chunk === "string" ? chunk : this.decoder.decode(chunk, { stream: true });
    if (text.length === 0) return [];
    if (!this.started) {
      this.started = true;
      if (text.charCodeAt(0) === 0xfeff) text = text.slice(1);
    }
    if (this.afterCR && text.startsWith("\n")) text = text.slice(1);
    this.afterCR = false;
    const out = [];
    let start = 0;
    const all = this.buffer + text;
    const offset = this.buffer.length;
    this.buffer = "";
    for (let i = offset; i < all.length; i++) {
      const c = all.charCodeAt(i);
      if (c !== 10 && c !== 13) continue;
      this.line(all.slice(start, i), out);
      if (c === 13) {
        if (i + 1 < all.length) {
          if (all.charCodeAt(i + 1) === 10) i++;
        } else {
          this.afterCR = true;
        }
      }
      start = i + 1;
    }
    // The buffer holds at most one partial line, so a long stream never re-scans.
    this.buffer = all.slice(start);
    return out;
  }

  /** The end of the stream: a trailing partial event is discarded, as the spec says. */
  finish() {
    const rest = this.decoder.decode();
    const out = rest ? this.push(rest) : [];
    this.buffer = "";
    this.resetBlock();
    return out;
  }

  line(line, out) {
    if (line === "") {
      this.dispatch(out);
      return;
    }
    if (line.charCodeAt(0) === 58 /* : */) {
      out.push({ type: "comment", text: line.slice(1).replace(/^ /, "") });
      return;
    }
    const colon = line.indexOf(":");
    const field = colon === -1 ? line : line.slice(0, colon);
    let value = colon === -1 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "data") this.data.push(value);
    else if (field === "event") this.eventType = value;
    else if (field === "id") {
      if (!value.includes("\0")) this.lastEventId = value;
    } else if (field === "retry") {
      if (/^[0-9]+$/.test(value)) {
        this.retry = Number(value);
        this.blockRetry = this.retry;
      }
    }
  }

  dispatch(out) {
    if (this.data.length > 0) {
      const event = {
        type: "event",
        event: this.eventType || "message",
        data: this.data.join("\n"),
        id: this.lastEventId,
      };
      if (this.blockRetry !== undefined) event.retry = this.blockRetry;
      out.push(event);
    }
    this.resetBlock();
  }
}

/** Parse a whole SSE text at once. */
export function parseSSE(text) {
  const parser = new SSEParser();
  return [...parser.push(text), ...parser.finish()];
}

// ---------------------------------------------------------------------------------
// Typed events of the `tokens` dialect

/** A `tokens` dialect event, typed: `type` is one of start, queued, token, thinking,
 * thinking_signature, tool_use_start, tool_input, tool_use, reset, done, error (or
 * "unknown" for a shape this client does not know yet). */
export function toStreamEvent(id, data) {
  const colon = id.lastIndexOf(":");
  const base = { id, streamId: id.slice(0, colon), seq: Number(id.slice(colon + 1)), data };
  if (typeof data.token === "string") return { ...base, type: "token", token: data.token };
  if (typeof data.tool_input === "string") {
    return { ...base, type: "tool_input", partialJson: data.tool_input };
  }
  if (typeof data.thinking === "string") {
    return { ...base, type: "thinking", thinking: data.thinking };
  }
  if (typeof data.thinking_signature === "string") {
    return { ...base, type: "thinking_signature", signature: data.thinking_signature };
  }
  if (data.tool_use_start) {
    return { ...base, type: "tool_use_start", toolUseStart: data.tool_use_start };
  }
  if (data.done) {
    return {
      ...base,
      type: "done",
      stopReason: data.stop_reason,
      usage: data.usage,
      costUsd: data.cost_usd,
      cached: Boolean(data.cached),
    };
  }
  if (typeof data.error === "string") {
    return {
      ...base,
      type: "error",
      message: data.error,
      code: data.code,
      retryable: Boolean(data.retryable),
    };
  }
  if (data.reset) return { ...base, type: "reset", reason: data.reason };
  if (data.queued) return { ...base, type: "queued", position: data.position };
  if (data.tool_use) return { ...base, type: "tool_use", toolUse: data.tool_use };
  if (typeof data.stream_id === "string") {
    return { ...base, type: "start", requestId: data.request_id, model: data.model };
  }
  return { ...base, type: "unknown" };
}

/** The gateway refused a request before a stream started (its JSON error, or none). */
export class TokenRelayError extends Error {
  constructor(status, type, message) {
    super(status ? `${status} ${type}: ${message}` : message);
    this.name = "TokenRelayError";
    this.status = status;
    this.type = type;
    this.detail = message;
  }
}

async function errorOf(response) {
  let type = "api_error";
  let message = response.statusText || "request failed";
  try {
    const body = await response.json();
    if (body && body.error) {
      type = body.error.type || type;
      message = body.error.message || message;
    }
  } catch {
    // not the gateway's JSON (a proxy's error page): the status line says enough
  }
  return new TokenRelayError(response.status, type, message);
}

// ---------------------------------------------------------------------------------
// Streaming with resume

/** Full jitter: a delay drawn uniformly from [0, min(max, initial * 2^attempt)). */
export function backoffDelay(attempt, { initial = 250, max = 8_000 } = {}, random = Math.random) {
  return random() * Math.min(max, initial * 2 ** attempt);
}

const defaultSleep = (ms, signal) =>
  new Promise((resolve) => {
    if (signal.aborted) return resolve();
    const timer = setTimeout(done, ms);
    function done() {
      clearTimeout(timer);
      signal.removeEventListener("abort", done);
      resolve();
    }
    signal.addEventListener("abort", done);
  });

class Dropped extends Error {}

/** A callback of the caller's threw: never taken for a network failure (a TypeError
 * from a callback would otherwise look like fetch's, and reconnect forever). */
export class CallbackError extends Error {
  constructor(cause) {
    super(`a callback threw: ${cause && cause.message}`, { cause });
    this.name = "CallbackError";
  }
}

const TERMINAL = new Set(["done", "failed", "stopped"]);
const BODY_FIELDS = ["prompt", "messages", "model", "max_tokens", "system", "temperature",
  "stop_sequences", "tools", "tool_choice", "thinking", "metadata"];

/**
 * Start a stream and follow it to its end. Options:
 *   prompt | messages, model, max_tokens, system, temperature, tools, tool_choice,
 *   thinking, ...                                                     the request body
 *   baseUrl ("" = this page's origin), apiKey (sent as Authorization: Bearer), headers
 *   signal            an AbortSignal: stop reading (the gateway keeps generating until it
 *                     notices nobody reads; use cancel() to stop the generation itself)
 *   stallTimeout      ms without any byte (heartbeats included) before reconnecting
 *   maxReconnects     consecutive failed attempts before giving up (default 8)
 *   backoff           { initial, max } in ms, for the full-jitter exponential backoff
 *   onEvent(event), onToken(token, text), onThinking(delta, thinking),
 *   onToolCall(toolCall, toolCalls), onReset(reason), onState(state),
 *   onDone(event, text), onError(error)                          callbacks
 * onToolCall is called as a call opens, with each fragment of its input, and once done.
 * States: connecting, queued, streaming, reconnecting, then one of done, failed, stopped.
 * Returns a handle: { result (a Promise), cancel(), state, text, thinking, toolCalls,
 * content, streamId }, also an async iterable of the typed events.
 */
export function streamResponse(options) {
  return new ResponseStream(options);
}

export class ResponseStream {
  constructor(options) {
    this.options = { stallTimeout: DEFAULT_STALL_TIMEOUT_MS, maxReconnects: 8, ...options };
    this.fetch = options.fetch || globalThis.fetch.bind(globalThis);
    this.sleep = options.sleep || defaultSleep;
    this.random = options.random || Math.random;
    this.state = "connecting";
    this.clearAnswer();
    this.streamId = null;
    this.headerStreamId = null;
    this.lastSeq = -1;
    this.error = null;
    this.final = null;
    this.stopped = new AbortController();
    this.queue = null; // events kept for an async iterator, once one asks
    this.waiters = [];
    // A retried POST must not start a second generation: the key makes it attach.
    this.idempotencyKey = options.idempotencyKey || randomKey();
    if (options.signal) {
      if (options.signal.aborted) this.stopped.abort();
      else options.signal.addEventListener("abort", () => this.stopped.abort(), { once: true });
    }
    this.result = this.run();
  }

  /** The answer so far is none: at the start, and after a `reset`. */
  clearAnswer() {
    this.text = "";
    this.thinking = "";
    this.toolCalls = [];
    this.content = [];
  }

  /** The last block of the answer if it is an open one of `type`, else a new one. */
  openBlock(type, make) {
    const last = this.content[this.content.length - 1];
    if (last && last.type === type && !last.closed) return last;
    const block = make();
    this.content.push(block);
    return block;
  }

  /** Stop the generation on the gateway (DELETE), and stop reading. */
  async cancel() {
    if (TERMINAL.has(this.state)) return false;
    this.stopped.abort();
    await this.result;
    const streamId = this.streamId || this.headerStreamId;
    if (!streamId) return false;
    const response = await this.fetch(this.url(`/api/streams/${encodeURIComponent(streamId)}`), {
      method: "DELETE",
      headers: this.headers(),
    });
    if (!response.ok) throw await errorOf(response);
    return Boolean((await response.json()).cancelled);
  }

  /** Iterate right away: events are kept for iterators from the first call on. */
  [Symbol.asyncIterator]() {
    if (this.queue === null) this.queue = [];
    return {
      next: () => {
        if (this.queue.length > 0) {
          return Promise.resolve({ value: this.queue.shift(), done: false });
        }
        if (this.ended) return Promise.resolve({ value: undefined, done: true });
        return new Promise((resolve) => this.waiters.push(resolve));
      },
      return: () => {
        this.stopped.abort();
        return Promise.resolve({ value: undefined, done: true });
      },
    };
  }

  url(path) {
    return (this.options.baseUrl || "").replace(/\/$/, "") + path;
  }

  headers(extra = {}) {
    const headers = { ...(this.options.headers || {}), ...extra };
    if (this.options.apiKey) headers.authorization = `Bearer ${this.options.apiKey}`;
    return headers;
  }

  setState(state) {
    if (state === this.state) return;
    this.state = state;
    this.options.onState?.(state);
  }

  async run() {
    let failures = 0;
    try {
      while (!this.final) {
        if (this.stopped.signal.aborted) break;
        try {
          await this.attempt();
          if (this.final || this.stopped.signal.aborted) break;
          throw new Dropped("the stream ended before its final event");
        } catch (err) {
          if (this.stopped.signal.aborted) break;
          if (!(err instanceof Dropped) && !isNetworkError(err)) throw err;
          if (this.progressed) failures = 0;
          this.progressed = false;
          if (failures >= this.options.maxReconnects) {
            throw new TokenRelayError(0, "connection_error", `connection lost: ${err.message}`);
          }
          this.setState("reconnecting");
          const delay = backoffDelay(failures, this.options.backoff, this.random);
          failures += 1;
          await this.sleep(delay, this.stopped.signal);
        }
      }
      if (!this.final) this.setState("stopped");
    } catch (err) {
      this.error = err;
      this.setState("failed");
      this.options.onError?.(err);
    }
    this.ended = true;
    for (const resolve of this.waiters.splice(0)) resolve({ value: undefined, done: true });
    return {
      state: this.state,
      text: this.text,
      thinking: this.thinking,
      toolCalls: this.toolCalls,
      content: this.blocks(),
      streamId: this.streamId,
      error: this.error,
      done: this.final && this.final.type === "done" ? this.final : null,
      stopReason: this.final && this.final.type === "done" ? this.final.stopReason : null,
      usage: this.final ? this.final.usage : undefined,
      costUsd: this.final ? this.final.costUsd : undefined,
    };
  }

  /** The answer as Messages API content blocks (what an assistant turn sends back). */
  blocks() {
    return this.content.map(({ closed, ...block }) => block);
  }

  /** One HTTP request: the first POST, or a resume from the last event seen. */
  async attempt() {
    const attempt = new AbortController();
    const stop = () => attempt.abort();
    this.stopped.signal.addEventListener("abort", stop);
    let stallTimer;
    let stalled = false;
    const armStall = () => {
      clearTimeout(stallTimer);
      stallTimer = setTimeout(() => {
        stalled = true;
        attempt.abort();
      }, this.options.stallTimeout);
    };
    try {
      armStall();
      const response = await this.request(attempt.signal);
      if (response.status !== 200) {
        const error = await errorOf(response);
        // 5xx (a draining or overloaded instance) may pass; 4xx will not.
        if (response.status >= 500) throw new Dropped(error.message);
        throw error;
      }
      // Known before the first event arrives, so a quick Stop can still cancel upstream.
      this.headerStreamId = response.headers.get("x-stream-id") || this.headerStreamId;
      if (this.state === "reconnecting") this.setState("streaming");
      const parser = new SSEParser();
      const reader = response.body.getReader();
      try {
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          armStall();
          for (const item of parser.push(value)) {
            if (item.type === "event") {
              try {
                this.receive(item);
              } catch (err) {
                throw new CallbackError(err);
              }
            }
            if (this.final) return;
          }
        }
      } finally {
        reader.cancel().catch(() => {});
      }
    } catch (err) {
      if (stalled) throw new Dropped(`no data for ${this.options.stallTimeout} ms`);
      throw err;
    } finally {
      clearTimeout(stallTimer);
      this.stopped.signal.removeEventListener("abort", stop);
    }
  }

  request(signal) {
    if (this.streamId === null) {
      const body = {};
      for (const field of BODY_FIELDS) {
        if (this.options[field] !== undefined) body[field] = this.options[field];
      }
      return this.fetch(this.url("/api/stream-response"), {
        method: "POST",
        headers: this.headers({
          "content-type": "application/json",
          accept: "text/event-stream",
          "idempotency-key": this.idempotencyKey,
        }),
        body: JSON.stringify(body),
        signal,
      });
    }
    return this.fetch(this.url(`/api/streams/${encodeURIComponent(this.streamId)}`), {
      headers: this.headers({
        accept: "text/event-stream",
        "last-event-id": `${this.streamId}:${this.lastSeq}`,
      }),
      signal,
    });
  }

  receive(message) {
    let data;
    try {
      data = JSON.parse(message.data);
    } catch {
      return; // not a tokens-dialect event; nothing to show
    }
    const event = toStreamEvent(message.id, data);
    if (this.streamId !== null && event.streamId !== this.streamId) return;
    // Resume replays exactly what follows; anything at or before the last seq is a repeat.
    if (event.seq <= this.lastSeq) return;
    this.lastSeq = event.seq;
    this.streamId = event.streamId;
    this.progressed = true;
    const o = this.options;
    switch (event.type) {
      case "start":
        this.setState("streaming");
        break;
      case "queued":
        this.setState("queued");
        break;
      case "token":
        this.text += event.token;
        this.openBlock("text", () => ({ type: "text", text: "" })).text += event.token;
        this.setState("streaming");
        o.onToken?.(event.token, this.text);
        break;
      case "thinking":
        this.thinking += event.thinking;
        this.openBlock("thinking", () => ({ type: "thinking", thinking: "", signature: "" }))
          .thinking += event.thinking;
        this.setState("streaming");
        o.onThinking?.(event.thinking, this.thinking);
        break;
      case "thinking_signature": {
        // The signature closes its thinking block; Claude wants both back unchanged.
        const block = this.openBlock("thinking", () => ({ type: "thinking", thinking: "" }));
        block.signature = event.signature;
        block.closed = true;
        break;
      }
      case "tool_use_start": {
        const { id, name } = event.toolUseStart;
        const call = { id, name, inputJson: "", input: null, done: false };
        this.toolCalls.push(call);
        this.content.push({ type: "tool_use", id, name, input: {}, closed: true });
        this.setState("streaming");
        o.onToolCall?.(call, this.toolCalls);
        break;
      }
      case "tool_input": {
        const call = this.toolCalls[this.toolCalls.length - 1];
        if (call && !call.done) {
          call.inputJson += event.partialJson;
          o.onToolCall?.(call, this.toolCalls);
        }
        break;
      }
      case "tool_use": {
        const { id, name, input } = event.toolUse;
        let call = this.toolCalls.find((c) => c.id === id);
        if (!call) {
          // A stream that began before this client knew the block's start.
          call = { id, name, inputJson: JSON.stringify(input), input: null, done: false };
          this.toolCalls.push(call);
          this.content.push({ type: "tool_use", id, name, input: {}, closed: true });
        }
        call.input = input;
        call.done = true;
        const block = this.content.find((b) => b.type === "tool_use" && b.id === id);
        block.input = input;
        o.onToolCall?.(call, this.toolCalls);
        break;
      }
      case "reset":
        this.clearAnswer();
        o.onReset?.(event.reason);
        break;
      case "done":
        this.final = event;
        break;
      case "error":
        this.final = event;
        break;
    }
    const waiter = this.waiters.shift();
    if (waiter) waiter({ value: event, done: false });
    else if (this.queue !== null) this.queue.push(event);
    o.onEvent?.(event);
    if (event.type === "done") {
      this.setState("done");
      o.onDone?.(event, this.text);
    } else if (event.type === "error") {
      // An error event ends the stream; `retryable` tells the user a new try may work.
      this.error = event;
      this.setState("failed");
      o.onError?.(event);
    }
  }
}

function isNetworkError(err) {
  // fetch rejects with TypeError on a network failure, and with AbortError on abort.
  return err instanceof TypeError || (err && err.name === "AbortError");
}

function randomKey() {
  if (globalThis.crypto?.randomUUID) return globalThis.crypto.randomUUID();
  return `${Date.now().toString(36)}-${Math.random().toString(36).slice(2)}`;
}

// ---------------------------------------------------------------------------------
// A small client object, for pages that make many requests with the same settings

export class TokenRelay {
  /** `baseUrl` ("" = this page's origin), `apiKey`, and defaults for streamResponse. */
  constructor(options = {}) {
    this.options = options;
  }

  /** streamResponse() with this client's settings: `request` is the body and callbacks. */
  stream(request) {
    return streamResponse({ ...this.options, ...request });
  }

  /** A one-use ticket for EventSource, which cannot send an Authorization header. */
  async ticket() {
    const fetchImpl = this.options.fetch || globalThis.fetch.bind(globalThis);
    const headers = {};
    if (this.options.apiKey) headers.authorization = `Bearer ${this.options.apiKey}`;
    const base = (this.options.baseUrl || "").replace(/\/$/, "");
    const response = await fetchImpl(`${base}/api/tickets`, { method: "POST", headers });
    if (!response.ok) throw await errorOf(response);
    return (await response.json()).ticket;
  }

  /** The URL for `new EventSource(...)`: GET /api/stream-response with query params. */
  eventSourceUrl(params) {
    const base = (this.options.baseUrl || "").replace(/\/$/, "");
    const query = new URLSearchParams();
    for (const [key, value] of Object.entries(params)) {
      if (value !== undefined && value !== null) query.set(key, String(value));
    }
    return `${base}/api/stream-response?${query}`;
  }
}
