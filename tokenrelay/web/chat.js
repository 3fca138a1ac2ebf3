// The chat page: conversations the gateway keeps, over tokenrelay.js.
// Model output reaches the DOM only as nodes built by markdown.js (Text nodes and
// elements, never parsed HTML): an answer containing markup shows that markup.
//
// With a database behind the gateway, every chat is a conversation it stores
// (/api/conversations): listed at the side, reopened with its history, and an answer
// still being generated when the page reloads is resumed by its stream id. Without one
// (503 from /api/conversations), the page keeps the conversation itself, for this tab.
import { ResponseStream, TokenRelayError, streamResponse } from "/tokenrelay.js";
import { MarkdownView } from "./markdown.js";

const KEY_STORAGE = "tokenrelay.apiKey";
const MODEL_STORAGE = "tokenrelay.model";
const THINK_STORAGE = "tokenrelay.think";
const CONVERSATION_STORAGE = "tokenrelay.conversation";
// With "Think" on: a thinking budget, and room for the answer after it.
const THINKING = { type: "enabled", budget_tokens: 2048 };
const THINKING_MAX_TOKENS = 8192;
const TITLE_CHARS = 60;
const PAGE_SIZE = 50;
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
// A stored answer's status, as the page shows it.
const STORED_STATES = {
  complete: "done",
  failed: "failed",
  budget_exceeded: "failed",
  cancelled: "stopped",
  pending: "connecting",
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
  sidebar: $("sidebar"),
  sidebarToggle: $("sidebar-toggle"),
  list: $("conversations"),
  listNote: $("conversations-note"),
  more: $("more"),
  template: $("turn-template"),
  toolTemplate: $("tool-template"),
  itemTemplate: $("conversation-template"),
};

/** "server": conversations are the gateway's; "local": this page keeps the history. */
let mode = "server";
/** The open conversation (server mode), or null for a new one not created yet. */
let open = null;
/** Local mode's conversation so far, as the Messages API wants it: completed exchanges. */
let localHistory = [];
/** The stream being shown, the turn it fills, and how to stop reading it. */
let current = null;
let activeTurn = null;
let detachCurrent = null;
/** Bumped whenever the page shows another conversation: late answers for an older one
 * are dropped. */
let epoch = 0;
let nextCursor = null;
let renaming = false;

// ---------------------------------------------------------------------------------
// Views

/** An answer as Markdown, re-rendered at most once per animation frame however fast
 * tokens come, and then only its open end. */
class AnswerView {
  constructor(element) {
    this.markdown = new MarkdownView(element);
    this.pending = "";
    this.frame = 0;
  }

  append(text) {
    this.pending += text;
    if (!this.frame) this.frame = requestAnimationFrame(() => this.flush());
  }

  clear() {
    this.pending = "";
    this.markdown.clear();
  }

  flush() {
    if (this.frame) cancelAnimationFrame(this.frame);
    this.frame = 0;
    if (!this.pending) return;
    const follow = nearBottom();
    this.markdown.append(this.pending);
    this.pending = "";
    if (follow) scrollToBottom();
  }
}

/** Plain text (thinking), appended at most once per animation frame. */
class TextView {
  constructor(element) {
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
    this.text = new TextView(details.querySelector(".thinking-text"));
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
  const elements = turn === activeTurn ? [ui.state, turn.state] : [turn.state];
  for (const element of elements) {
    element.dataset.state = state;
    element.textContent = label;
  }
  turn.root.dataset.state = state;
}

function showIdle() {
  ui.state.dataset.state = "idle";
  ui.state.textContent = STATE_LABELS.idle;
}

function addTurn(prompt) {
  ui.empty.hidden = true;
  const root = ui.template.content.firstElementChild.cloneNode(true);
  const turn = {
    root,
    prompt,
    thinking: root.querySelector(".thinking"),
    tools: root.querySelector(".tools"),
    answer: root.querySelector(".answer"),
    error: root.querySelector(".error"),
    state: root.querySelector(".turn-state"),
    stats: root.querySelector(".stats"),
    retry: root.querySelector(".retry"),
  };
  root.querySelector(".user").textContent = prompt;
  turn.retry.addEventListener("click", () => {
    if (!current) retry(turn);
  });
  ui.conversation.append(root);
  scrollToBottom();
  return turn;
}

function clearTurns() {
  for (const turn of ui.conversation.querySelectorAll(".turn")) turn.remove();
  ui.empty.hidden = false;
}

function showError(turn, text, mayRetry) {
  turn.error.textContent = text;
  turn.error.hidden = false;
  turn.retry.hidden = !mayRetry;
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

// ---------------------------------------------------------------------------------
// The gateway's JSON API

function authHeaders(extra = {}) {
  const key = ui.apiKey.value.trim();
  return key ? { ...extra, authorization: `Bearer ${key}` } : extra;
}

/** A JSON call to the gateway: its parsed answer, or a TokenRelayError. */
async function api(method, path, body) {
  const init = { method, headers: authHeaders() };
  if (body !== undefined) {
    init.headers["content-type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  if (response.ok) return response.status === 204 ? null : response.json();
  let type = "api_error";
  let message = response.statusText || "request failed";
  try {
    const error = (await response.json()).error;
    type = error.type || type;
    message = error.message || message;
  } catch {
    // not the gateway's JSON (a proxy's error page): the status says enough
  }
  throw new TokenRelayError(response.status, type, message);
}

const conversationPath = (id) => `/api/conversations/${encodeURIComponent(id)}`;

/** A turn in a stored conversation: POSTs the user's message, then reads its answer
 * (resuming at GET /api/streams/{id} like any stream). With `attach`, it reads a stream
 * already going, from its start. */
class ConversationStream extends ResponseStream {
  request(signal) {
    const o = this.options;
    // The POST answered (its X-Stream-ID) but dropped before the first event: the
    // answer is being generated; read it rather than send the message twice.
    const attach = o.attach || this.headerStreamId;
    if (this.streamId === null && attach) {
      return this.fetch(this.url(`/api/streams/${encodeURIComponent(attach)}`), {
        headers: this.headers({ accept: "text/event-stream" }),
        signal,
      });
    }
    if (this.streamId === null) {
      const body = { content: o.content };
      if (o.thinking) Object.assign(body, { thinking: o.thinking, max_tokens: o.max_tokens });
      return this.fetch(this.url(`${conversationPath(o.conversationId)}/messages`), {
        method: "POST",
        headers: this.headers({ "content-type": "application/json", accept: "text/event-stream" }),
        body: JSON.stringify(body),
        signal,
      });
    }
    return super.request(signal);
  }
}

// ---------------------------------------------------------------------------------
// Streaming a turn

/** Show the stream `start(callbacks)` opens in `turn`, to its end. */
async function runTurn(turn, start) {
  const view = new AnswerView(turn.answer);
  const thinking = new ThinkingView(turn.thinking);
  thinking.clear();
  let tools = new Map(); // tool call id → its view
  turn.tools.replaceChildren();
  turn.error.hidden = true;
  turn.error.textContent = "";
  turn.retry.hidden = true;
  turn.stats.textContent = "";
  delete turn.root.dataset.status;
  turn.failedBeforeStream = false;
  const sentAt = performance.now();
  let firstAt = null;
  const reading = new AbortController();
  activeTurn = turn;
  showState(turn, "connecting");
  setBusy(true);

  const stream = start({
    apiKey: ui.apiKey.value.trim() || undefined,
    signal: reading.signal,
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
      // Refused before a stream began: nothing was kept, the same turn may try again.
      turn.failedBeforeStream = error.type !== "error";
      const mayRetry = error.type === "error" ? error.retryable : error.status !== 400;
      showError(turn, describeError(error), mayRetry);
      if (error.status === 401) ui.apiKey.focus();
    },
  });
  current = stream;
  detachCurrent = () => reading.abort();
  const result = await stream.result;
  view.flush();
  thinking.flush();
  for (const tool of tools.values()) tool.flush();
  if (current === stream) {
    current = null;
    activeTurn = null;
    detachCurrent = null;
    setBusy(false);
  }
  return result;
}

/** Stop showing the stream (the gateway goes on with it, and keeps its answer). */
function detach() {
  if (detachCurrent) detachCurrent();
  current = null;
  activeTurn = null;
  detachCurrent = null;
  setBusy(false);
}

function thinkingOptions() {
  return ui.think.checked ? { thinking: THINKING, max_tokens: THINKING_MAX_TOKENS } : {};
}

function setBusy(busy) {
  ui.send.disabled = busy;
  ui.stop.disabled = !busy;
  // Local mode's history lives in this page: a new chat mid-answer would lose it.
  ui.newChat.disabled = busy && mode === "local";
}

function titleOf(prompt) {
  const text = prompt.replace(/\s+/g, " ").trim();
  return text.length > TITLE_CHARS ? `${text.slice(0, TITLE_CHARS)}…` : text;
}

async function ask(prompt) {
  const turn = addTurn(prompt);
  return mode === "local" ? askLocal(turn, localHistory) : askServer(turn);
}

async function askLocal(turn, before) {
  const messages = [...before, { role: "user", content: turn.prompt }];
  const result = await runTurn(turn, (callbacks) =>
    streamResponse({ messages, model: ui.model.value || undefined, ...thinkingOptions(),
      ...callbacks }),
  );
  if (result.state === "done") {
    localHistory = [...messages, { role: "assistant", content: result.text }];
  }
  return result;
}

async function askServer(turn) {
  const mine = epoch;
  if (!open) {
    try {
      const body = { title: titleOf(turn.prompt) };
      if (ui.model.value) body.model = ui.model.value;
      const created = await api("POST", "/api/conversations", body);
      if (mine !== epoch) return null;
      show(created);
    } catch (error) {
      turn.failedBeforeStream = true;
      activeTurn = turn;
      showState(turn, "failed");
      activeTurn = null;
      showError(turn, describeError(error), error.status !== 400);
      if (error.status === 401) ui.apiKey.focus();
      return null;
    }
  }
  const conversationId = open.id;
  const result = await runTurn(turn, (callbacks) =>
    new ConversationStream({ conversationId, content: turn.prompt, ...thinkingOptions(),
      ...callbacks }),
  );
  refreshList();
  return result;
}

/** Try a failed turn again: in place when nothing was kept of it, else as a new turn
 * (the gateway keeps the failed one, marked, and the page shows what it keeps). */
function retry(turn) {
  if (mode === "local") return askLocal(turn, localHistory);
  if (turn.failedBeforeStream) return askServer(turn);
  return ask(turn.prompt);
}

// ---------------------------------------------------------------------------------
// Conversations: the list, opening one, a reload mid-answer

/** Make `conversation` the open one: in the URL (for a reload or a link), this tab's
 * session, the list's highlight, and the model it keeps. */
function show(conversation) {
  open = conversation;
  window.history.replaceState(null, "", `#c=${encodeURIComponent(conversation.id)}`);
  sessionStorage.setItem(CONVERSATION_STORAGE, conversation.id);
  ui.model.value = conversation.model;
  ui.model.disabled = true;
  ui.model.title = "A conversation keeps the model it was started with";
  highlight();
}

function startNew() {
  epoch += 1;
  detach();
  open = null;
  localHistory = [];
  clearTurns();
  showIdle();
  window.history.replaceState(null, "", location.pathname + location.search);
  sessionStorage.removeItem(CONVERSATION_STORAGE);
  ui.model.disabled = false;
  ui.model.title = "";
  const chosen = sessionStorage.getItem(MODEL_STORAGE);
  if (chosen && [...ui.model.options].some((o) => o.value === chosen)) ui.model.value = chosen;
  highlight();
}

function textOf(content) {
  if (typeof content === "string") return content;
  return content
    .map((block) => {
      if (block.type === "text") return block.text;
      if (block.type === "tool_result") {
        const inner = typeof block.content === "string" ? block.content : textOf(block.content || []);
        return `[tool result] ${inner}`;
      }
      return "";
    })
    .join("\n");
}

/** A stored answer, drawn whole: its text as Markdown, its thinking and tool calls,
 * and its status (a failed, cancelled or budget-cut one marked as such). */
function drawStored(turn, message) {
  const blocks = typeof message.content === "string"
    ? [{ type: "text", text: message.content }]
    : message.content;
  const view = new AnswerView(turn.answer);
  const thinking = new ThinkingView(turn.thinking);
  thinking.clear();
  for (const block of blocks) {
    if (block.type === "text") view.append(block.text);
    if (block.type === "thinking") {
      thinking.append(block.thinking);
      thinking.end();
    }
    if (block.type === "tool_use") {
      const call = { id: block.id, name: block.name, input: block.input, done: true };
      new ToolCallView(turn.tools, call).update(call);
    }
  }
  view.flush();
  thinking.flush();
  turn.root.dataset.status = message.status;
  showState(turn, STORED_STATES[message.status] || "failed");
  if (message.status !== "complete" && message.status !== "pending") {
    showError(turn, message.error ? `${message.error} (${message.status})` : message.status, true);
  }
}

/** Open a stored conversation: its history, and the answer still being generated, if
 * any, resumed from its stream's start (the whole answer, shown once). */
async function openConversation(id, { resumeGone = true } = {}) {
  epoch += 1;
  const mine = epoch;
  detach();
  let conversation;
  try {
    conversation = await api("GET", conversationPath(id));
  } catch (error) {
    if (mine !== epoch) return;
    if (error.status === 404) {
      startNew();
      ui.listNote.textContent = "That conversation no longer exists.";
      ui.listNote.hidden = false;
    } else {
      ui.listNote.textContent = `Cannot open the conversation: ${describeError(error)}`;
      ui.listNote.hidden = false;
    }
    return;
  }
  if (mine !== epoch) return;
  localHistory = [];
  clearTurns();
  showIdle();
  show(conversation);
  let turn = null;
  for (const message of conversation.messages) {
    if (message.role === "user") {
      turn = addTurn(textOf(message.content));
      turn.root.dataset.status = "pending";
      continue;
    }
    if (!turn || turn.root.dataset.status !== "pending") turn = addTurn("");
    if (message.status === "pending") continue;
    drawStored(turn, message);
  }
  closeSidebar();
  scrollToBottom();
  const pending = conversation.pending_stream_id;
  if (turn && turn.root.dataset.status === "pending") {
    if (pending) resume(id, turn, pending, resumeGone, mine);
    else showState(turn, "connecting");
  }
}

/** Follow the answer still being generated from its stream's first event: the page
 * shows none of it yet, so all of it is shown, once. */
async function resume(id, turn, streamId, resumeGone, mine) {
  const result = await runTurn(turn, (callbacks) =>
    new ConversationStream({ attach: streamId, ...callbacks }),
  );
  // Its log is gone (expired, or its instance died): the gateway settles the turn
  // when the conversation is read again.
  if (result.error && result.error.status === 404 && resumeGone && mine === epoch) {
    await openConversation(id, { resumeGone: false });
    return;
  }
  refreshList();
}

function highlight() {
  for (const item of ui.list.children) {
    const link = item.querySelector(".conv-open");
    if (open !== null && item.dataset.id === open.id) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
}

function drawItem(conversation) {
  const item = ui.itemTemplate.content.firstElementChild.cloneNode(true);
  item.dataset.id = conversation.id;
  const link = item.querySelector(".conv-open");
  const input = item.querySelector(".conv-title-input");
  const rename = item.querySelector(".conv-rename");
  const remove = item.querySelector(".conv-delete");
  link.href = `#c=${encodeURIComponent(conversation.id)}`;
  const setTitle = (title) => {
    link.textContent = title || "Untitled";
    link.classList.toggle("untitled", !title);
    link.title = title || "";
  };
  setTitle(conversation.title);

  const finish = async (save) => {
    if (input.hidden) return;
    const title = input.value.trim();
    input.hidden = true;
    link.hidden = false;
    renaming = false;
    if (!save || !title || title === conversation.title) return;
    try {
      const renamed = await api("PATCH", conversationPath(conversation.id), { title });
      conversation.title = renamed.title;
      setTitle(renamed.title);
      if (open && open.id === renamed.id) open.title = renamed.title;
    } catch (error) {
      ui.listNote.textContent = `Cannot rename: ${describeError(error)}`;
      ui.listNote.hidden = false;
    }
  };
  rename.addEventListener("click", () => {
    renaming = true;
    input.value = conversation.title || "";
    link.hidden = true;
    input.hidden = false;
    input.focus();
    input.select();
  });
  input.addEventListener("keydown", (event) => {
    if (event.key === "Enter") {
      event.preventDefault();
      finish(true);
    } else if (event.key === "Escape") {
      finish(false);
    }
  });
  input.addEventListener("blur", () => finish(true));

  // Delete asks once more, in place: a second click on the same button deletes.
  remove.addEventListener("click", async () => {
    if (remove.dataset.armed !== "true") {
      remove.dataset.armed = "true";
      remove.textContent = "Delete?";
      return;
    }
    try {
      await api("DELETE", conversationPath(conversation.id));
      item.remove();
      if (open && open.id === conversation.id) startNew();
    } catch (error) {
      ui.listNote.textContent = `Cannot delete: ${describeError(error)}`;
      ui.listNote.hidden = false;
    }
  });
  remove.addEventListener("blur", () => {
    delete remove.dataset.armed;
    remove.textContent = "✕";
  });
  return item;
}

/** The caller's conversations, newest first; decides the mode on the first call. */
async function loadList({ append = false } = {}) {
  const query = new URLSearchParams({ limit: String(PAGE_SIZE) });
  if (append && nextCursor) query.set("before", nextCursor);
  let page;
  try {
    page = await api("GET", `/api/conversations?${query}`);
  } catch (error) {
    if (error.status === 503 || error.status === 404) {
      // No database behind this gateway (or one without conversations).
      mode = "local";
      ui.list.replaceChildren();
      ui.more.hidden = true;
      ui.listNote.textContent = "This gateway keeps no conversations: the page keeps this one " +
        "until it is closed.";
      ui.listNote.hidden = false;
      document.body.dataset.mode = "local";
      return;
    }
    ui.listNote.textContent = error.status === 401
      ? "An API key shows your conversations."
      : `Cannot list conversations: ${describeError(error)}`;
    ui.listNote.hidden = false;
    return;
  }
  mode = "server";
  document.body.dataset.mode = "server";
  ui.listNote.hidden = true;
  const items = page.data.map(drawItem);
  if (append) ui.list.append(...items);
  else ui.list.replaceChildren(...items);
  nextCursor = page.next;
  ui.more.hidden = !page.next;
  highlight();
}

function refreshList() {
  if (mode !== "server" || renaming) return;
  loadList().catch(() => {});
}

function closeSidebar() {
  delete document.body.dataset.sidebar;
  ui.sidebarToggle.setAttribute("aria-expanded", "false");
}

function requestedConversation() {
  const m = /^#c=([^&]+)/.exec(location.hash);
  if (m) return decodeURIComponent(m[1]);
  return sessionStorage.getItem(CONVERSATION_STORAGE);
}

// ---------------------------------------------------------------------------------
// Wiring

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
  startNew();
  closeSidebar();
  ui.prompt.focus();
});

ui.more.addEventListener("click", () => loadList({ append: true }).catch(() => {}));

ui.sidebarToggle.addEventListener("click", () => {
  const opened = document.body.dataset.sidebar === "open";
  if (opened) closeSidebar();
  else {
    document.body.dataset.sidebar = "open";
    ui.sidebarToggle.setAttribute("aria-expanded", "true");
  }
});

window.addEventListener("hashchange", () => {
  const id = requestedConversation();
  if (mode === "server" && id && (!open || open.id !== id)) openConversation(id);
});

ui.apiKey.addEventListener("input", () => {
  sessionStorage.setItem(KEY_STORAGE, ui.apiKey.value.trim());
});

ui.apiKey.addEventListener("change", () => refreshList());

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
}

async function load() {
  await loadInfo();
  await loadList().catch(() => {});
  const id = mode === "server" ? requestedConversation() : null;
  // Ready once the page shows what it was asked to: a resumed answer goes on streaming.
  if (id) await openConversation(id);
  document.body.dataset.ready = "true";
}

load();
ui.prompt.focus();
