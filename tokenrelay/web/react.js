// useStreamingResponse: a React hook over tokenrelay.js. Served at /static/react.js;
// copy it beside tokenrelay.js into a React app (it imports "react" and "./tokenrelay.js").
//
//   const { text, state, error, usage, cost, start, stop } = useStreamingResponse({ apiKey });
//   <button onClick={() => start("Tell me a story")}>Ask</button>
//   <button onClick={stop} disabled={!isStreaming}>Stop</button>
//   <p>{text}</p>                                  // text, so React escapes it
//
// Thinking and tool calls stream too: `thinking` (the text so far) and `toolCalls`
// ([{ id, name, inputJson, input, done }], the input JSON growing, parsed once done);
// at the end `content` holds the answer's blocks, to send back as the assistant's turn.
// It resumes after drops like the client it wraps; a `reset` empties all of them. Updates
// are batched to one render per animation frame. Unmounting cancels the generation.
import { useCallback, useEffect, useRef, useState } from "react";

import { streamResponse } from "./tokenrelay.js";

const IDLE = {
  text: "",
  thinking: "",
  toolCalls: [],
  content: null,
  stopReason: null,
  state: "idle",
  error: null,
  usage: null,
  cost: null,
  streamId: null,
};
const ACTIVE = new Set(["connecting", "queued", "streaming", "reconnecting"]);

// Called as plain functions: a browser's requestAnimationFrame called on anything but
// the window throws "Illegal invocation", hence the wrappers.
const nextFrame =
  typeof requestAnimationFrame === "function"
    ? [(fn) => requestAnimationFrame(fn), (id) => cancelAnimationFrame(id)]
    : [(fn) => setTimeout(fn, 16), (id) => clearTimeout(id)];

/**
 * `options` are streamResponse() options shared by every start(): baseUrl, apiKey, model,
 * max_tokens, system, tools, thinking, stallTimeout, ... Returns
 *   { text, thinking, toolCalls, content, stopReason, state, error, usage, cost, streamId,
 *     isStreaming, start, stop }
 * start(prompt | messages | body, overrides?) begins a new answer (cancelling one still
 * running) and returns a Promise of its result; stop() cancels it on the gateway.
 */
export function useStreamingResponse(options = {}) {
  const [snapshot, setSnapshot] = useState(IDLE);
  const current = useRef(null);
  const latestOptions = useRef(options);
  latestOptions.current = options;

  const stop = useCallback(() => {
    const stream = current.current;
    return stream ? stream.cancel() : Promise.resolve(false);
  }, []);

  const start = useCallback((input, overrides = {}) => {
    if (current.current) current.current.cancel().catch(() => {});
    const request =
      typeof input === "string"
        ? { prompt: input }
        : Array.isArray(input)
          ? { messages: input }
          : input;
    let text = "";
    let thinking = "";
    let toolCalls = [];
    let frame = null;
    let stream = null;
    const mine = (update) => {
      if (current.current === stream) setSnapshot(update);
    };
    // The client changes its tool calls in place: each render gets copies of its own.
    const copies = (calls) => calls.map((call) => ({ ...call }));
    const flush = () => {
      frame = null;
      mine((s) => ({ ...s, text, thinking, toolCalls: copies(toolCalls) }));
    };
    const schedule = () => {
      if (frame === null) frame = nextFrame[0](flush);
    };
    setSnapshot({ ...IDLE, state: "connecting" });
    stream = streamResponse({
      ...latestOptions.current,
      ...request,
      ...overrides,
      onToken: (_, full) => {
        text = full;
        schedule();
      },
      onThinking: (_, full) => {
        thinking = full;
        schedule();
      },
      onToolCall: (_, calls) => {
        toolCalls = calls;
        schedule();
      },
      onReset: () => {
        text = "";
        thinking = "";
        toolCalls = [];
        schedule();
      },
      onEvent: (event) => {
        if (event.type === "start") mine((s) => ({ ...s, streamId: event.streamId }));
      },
      onState: (state) => mine((s) => ({ ...s, state })),
    });
    current.current = stream;
    return stream.result.then((result) => {
      if (frame !== null) nextFrame[1](frame);
      mine({
        text: result.text,
        thinking: result.thinking,
        toolCalls: copies(result.toolCalls),
        content: result.content,
        stopReason: result.stopReason,
        state: result.state,
        error: result.error,
        usage: result.usage ?? null,
        cost: result.costUsd ?? null,
        streamId: result.streamId,
      });
      return result;
    });
  }, []);

  // Nobody is left to read the answer: stop paying for it.
  useEffect(
    () => () => {
      if (current.current) current.current.cancel().catch(() => {});
      current.current = null;
    },
    [],
  );

  return { ...snapshot, isStreaming: ACTIVE.has(snapshot.state), start, stop };
}
