// useStreamingResponse: a React hook over tokenrelay.js. Served at /static/react.js;
// copy it beside tokenrelay.js into a React app (it imports "react" and "./tokenrelay.js").
//
//   const { text, state, error, usage, cost, start, stop } = useStreamingResponse({ apiKey });
//   <button onClick={() => start("Tell me a story")}>Ask</button>
//   <button onClick={stop} disabled={!isStreaming}>Stop</button>
//   <p>{text}</p>                                  // text, so React escapes it
//
// It resumes after drops like the client it wraps; a `reset` empties `text`. Text updates
// are batched to one render per animation frame. Unmounting cancels the generation.
import { useCallback, useEffect, useRef, useState } from "react";

import { streamResponse } from "./tokenrelay.js";

const IDLE = {
  text: "",
  state: "idle",
  error: null,
  usage: null,
  cost: null,
  streamId: null,
};
const ACTIVE = new Set(["connecting", "queued", "streaming", "reconnecting"]);

const nextFrame =
  typeof requestAnimationFrame === "function"
    ? [requestAnimationFrame, cancelAnimationFrame]
    : [(fn) => setTimeout(fn, 16), clearTimeout];

/**
 * `options` are streamResponse() options shared by every start(): baseUrl, apiKey, model,
 * max_tokens, system, stallTimeout, ... Returns
 *   { text, state, error, usage, cost, streamId, isStreaming, start, stop }
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
    let frame = null;
    let stream = null;
    const mine = (update) => {
      if (current.current === stream) setSnapshot(update);
    };
    const flush = () => {
      frame = null;
      mine((s) => ({ ...s, text }));
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
      onReset: () => {
        text = "";
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
