// The chat page: a multi-turn conversation over tokenrelay.js.
// Model output only ever reaches the DOM as text (Text nodes, textContent): an answer
// containing markup shows that markup, it is never parsed.
import { streamResponse } from "/tokenrelay.js";

const KEY_STORAGE = "tokenrelay.apiKey";
const MODEL_STORAGE = "tokenrelay.model";
const THINK_STORAGE = "tokenrelay.think";
// With "Think" on: a thinking budget, and room for the answer after it.
const THINKING = { type: "enabled", budget_tokens: 2048 };
const THINKING_MAX_TOKENS = 8192;
const STATE_LABELS = {
  idle: "idle",
  connecting: "connecting…",
  queued: "queued",
  streaming: "streaming",
  reconnecting: "reconnecting…",
  done: "done",
  failed: "failed",
  stopped: "stopped",
};

const $ = (id) => document.getElementById(id);
const ui = {
  conversation: $("conversation"),
  empty: $("empty"),
  composer: $("composer"),
  prompt: $("prompt"),
  send: $("send"),
  stop: $("stop"),
  state: $("state"),
  model: $("model"),
  think: $("think"),
  apiKey: $("api-key"),
  apiKeyField: $("api-key-field"),
  newChat: $("new-chat"),
  template: $("turn-template"),
  toolTemplate: $("tool-template"),
};

/** The conversation so far, as the Messages API wants it: completed exchanges only. */
let history = [];
let current = null;

/** An answer's text, appended at most once per animation frame however fast tokens come. */
class AnswerView {
  constructor(element) {
    this.element = element;
    this.node = document.createTextNode("");
    element.replaceChildren(this.node);
    this.pending = "";
    this.frame = 0;
  }

  append(text) {
    this.pending += text;
    if (!this.frame) this.frame = requestAnimationFrame(() => this.flush());
  }

  clear() {
    this.pending = "";
    this.node.data = "";
  }

  flush() {
    if (this.frame) cancelAnimationFrame(this.frame);
    this.frame = 0;
    if (!this.pending) return;
    const follow = nearBottom();
    this.node.appendData(this.pending);
    this.pending = "";
    if (follow) scrollToBottom();
  }
}

/** A tool call as it forms: its name, then its input JSON as generated, then the
 * parsed input, pretty-printed. Redrawn at most once per animation frame. */
class ToolCallView {
  constructor(container, call) {
    this.root = ui.toolTemplate.content.firstElementChild.cloneNode(true);
    this.root.querySelector(".tool-name").textContent = call.name;
    this.state = this.root.querySelector(".tool-state");
    this.input = this.root.querySelector(".tool-input");
    this.call = null;
    this.frame = 0;
    container.append(this.root);
  }

  update(call) {
    this.call = call;
    if (!this.frame) this.frame = requestAnimationFrame(() => this.flush());
  }

  flush() {
    if (this.frame) cancelAnimationFrame(this.frame);
    this.frame = 0;
    const call = this.call;
    if (!call) return;
    const follow = nearBottom();
    if (call.done) {
      this.root.dataset.state = "done";
      this.state.textContent = "called";
      this.input.textContent = JSON.stringify(call.input, null, 2);
    } else {
      this.input.textContent = call.inputJson;
    }
    if (follow) scrollToBottom();
  }
}

/** A turn's thinking: shown collapsed, in a <details> the user can open. */
class ThinkingView {
  constructor(details) {
    this.details = details;
    this.text = new AnswerView(details.querySelector(".thinking-text"));
  }

  append(delta) {
    this.details.hidden = false;
    this.details.dataset.state = "streaming";
    this.text.append(delta);
  }

  end() {
    if (!this.details.hidden) this.details.dataset.state = "done";
  }

  clear() {
    this.text.clear();
    this.details.hidden = true;
    this.details.open = false;
    delete this.details.dataset.state;
  }

  flush() {
    this.text.flush();
  }
}

function nearBottom() {
  const doc = document.scrollingElement || document.documentElement;
  return doc.scrollHeight - doc.scrollTop - doc.clientHeight < 120;
}

function scrollToBottom() {
  const doc = document.scrollingElement || document.documentElement;
  doc.scrollTop = doc.scrollHeight;
}

function showState(turn, state, detail = "") {
  const label = STATE_LABELS[state] + detail;
  for (const element of [ui.state, turn.state]) {
    element.dataset.state = state;
    element.textContent = label;
  }
  turn.root.dataset.state = state;
}

function addTurn(prompt) {
  ui.empty.hidden = true;
  const root = ui.template.content.firstElementChild.cloneNode(true);
  const turn = {
    root,
    thinking: root.querySelector(".thinking"),
    tools: root.querySelector(".tools"),
    answer: root.querySelector(".answer"),
    error: root.querySelector(".error"),
    state: root.querySelector(".turn-state"),
    stats: root.querySelector(".stats"),
    retry: root.querySelector(".retry"),
  };
  root.querySelector(".user").textContent = prompt;
  ui.conversation.append(root);
  scrollToBottom();
  return turn;
}

function describeError(error) {
  if (error.type === "error") {
    // An error event: the stream ended; `retryable` means trying again may work.
    const hint = error.retryable ? "you can retry" : "not retryable";
    return `${error.message} (${error.code}; ${hint})`;
  }
  if (error.status) return `HTTP ${error.status} ${error.type}: ${error.detail}`;
  return error.message;
}

function formatStats(sentAt, firstAt, doneAt, done) {
  const parts = [];
  if (firstAt !== null) parts.push(`TTFT ${Math.round(firstAt - sentAt)} ms`);
  const output = done.usage ? done.usage.output_tokens : 0;
  const seconds = firstAt !== null ? (doneAt - firstAt) / 1000 : 0;
  if (output > 1 && seconds > 0) parts.push(`${Math.round((output - 1) / seconds)} tok/s`);
  parts.push(`${output} tokens`);
  if (typeof done.costUsd === "number") parts.push(`$${done.costUsd.toFixed(6)}`);
  if (done.cached) parts.push("cached");
  return parts.join(" · ");
}

async function runTurn(turn, messages) {
  const view = new AnswerView(turn.answer);
  const thinking = new ThinkingView(turn.thinking);
  thinking.clear();
  let tools = new Map(); // tool call id → its view
  turn.tools.replaceChildren();
  turn.error.hidden = true;
  turn.error.textContent = "";
  turn.retry.hidden = true;
  turn.stats.textContent = "";
  const sentAt = performance.now();
  let firstAt = null;
  showState(turn, "connecting");
  setBusy(true);

  const stream = streamResponse({
    messages,
    model: ui.model.value || undefined,
    ...(ui.think.checked ? { thinking: THINKING, max_tokens: THINKING_MAX_TOKENS } : {}),
    apiKey: ui.apiKey.value.trim() || undefined,
    onState: (state) => showState(turn, state),
    onEvent: (event) => {
      if (event.type === "queued") showState(turn, "queued", ` (#${event.position})`);
      if (event.type === "thinking_signature") thinking.end();
    },
    onThinking: (delta) => {
      if (firstAt === null) firstAt = performance.now();
      thinking.append(delta);
    },
    onToolCall: (call) => {
      if (firstAt === null) firstAt = performance.now();
      if (!tools.has(call.id)) {
        view.flush(); // the text before the call is on screen before the call is
        tools.set(call.id, new ToolCallView(turn.tools, call));
      }
      tools.get(call.id).update(call);
    },
    onToken: (token) => {
      if (firstAt === null) firstAt = performance.now();
      view.append(token);
    },
    onReset: () => {
      view.clear();
      thinking.clear();
      tools = new Map();
      turn.tools.replaceChildren();
    },
    onDone: (done) => {
      turn.stats.textContent = formatStats(sentAt, firstAt, performance.now(), done);
    },
    onError: (error) => {
      turn.error.textContent = describeError(error);
      turn.error.hidden = false;
      const mayRetry = error.type === "error" ? error.retryable : error.status !== 400;
      turn.retry.hidden = !mayRetry;
      if (error.status === 401) ui.apiKey.focus();
    },
  });
  current = stream;
  const result = await stream.result;
  view.flush();
  thinking.flush();
  for (const tool of tools.values()) tool.flush();
  current = null;
  setBusy(false);
  if (result.state === "done") {
    history = [...messages, { role: "assistant", content: result.text }];
  }
  return result;
}

function setBusy(busy) {
  ui.send.disabled = busy;
  ui.stop.disabled = !busy;
  ui.newChat.disabled = busy;
}

function ask(prompt) {
  const messages = [...history, { role: "user", content: prompt }];
  const turn = addTurn(prompt);
  turn.retry.addEventListener("click", () => {
    if (!current) runTurn(turn, messages);
  });
  return runTurn(turn, messages);
}

ui.composer.addEventListener("submit", (event) => {
  event.preventDefault();
  const prompt = ui.prompt.value.trim();
  if (!prompt || current) return;
  ui.prompt.value = "";
  ask(prompt);
});

ui.prompt.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    ui.composer.requestSubmit();
  }
});

ui.stop.addEventListener("click", () => {
  // cancel() stops the generation on the gateway (DELETE), not only this connection.
  if (current) current.cancel().catch(() => {});
});

ui.newChat.addEventListener("click", () => {
  history = [];
  for (const turn of ui.conversation.querySelectorAll(".turn")) turn.remove();
  ui.empty.hidden = false;
  ui.state.dataset.state = "idle";
  ui.state.textContent = STATE_LABELS.idle;
  ui.prompt.focus();
});

ui.apiKey.addEventListener("input", () => {
  sessionStorage.setItem(KEY_STORAGE, ui.apiKey.value.trim());
});

ui.model.addEventListener("change", () => sessionStorage.setItem(MODEL_STORAGE, ui.model.value));

ui.think.addEventListener("change", () => {
  sessionStorage.setItem(THINK_STORAGE, ui.think.checked ? "on" : "");
});

async function loadInfo() {
  ui.apiKey.value = sessionStorage.getItem(KEY_STORAGE) || "";
  ui.think.checked = sessionStorage.getItem(THINK_STORAGE) === "on";
  try {
    const response = await fetch("/api/info");
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    const info = await response.json();
    const chosen = sessionStorage.getItem(MODEL_STORAGE) || info.model;
    for (const model of info.models) {
      const option = document.createElement("option");
      option.value = model;
      option.textContent = model;
      option.selected = model === chosen;
      ui.model.append(option);
    }
    ui.apiKeyField.hidden = info.auth === "none";
  } catch (error) {
    ui.empty.textContent = `Cannot reach the gateway's /api/info: ${error.message}`;
  }
  document.body.dataset.ready = "true";
}

loadInfo();
ui.prompt.focus();
