// The operations page: what this gateway instance is doing, live over SSE.
// Whatever the gateway sends reaches the DOM as text (textContent), never as markup.
// The charts are SVG built element by element, styled by class from ops.css: the
// CSP allows no inline style, no inline script and nothing from elsewhere.

const KEY_STORAGE = "tokenrelay.apiKey"; // the chat page's: one key per tab for both
const SVG = "http://www.w3.org/2000/svg";
const RETRY_MS = [1000, 2000, 4000, 8000];
const ID_CHARS = 10;

const $ = (id) => document.getElementById(id);
const ui = {
  status: $("status"),
  instance: $("instance"),
  apiKey: $("api-key"),
  apiKeyField: $("api-key-field"),
  notice: $("notice"),
  updated: $("updated"),
  span: $("span"),
  streams: $("streams"),
  streamsEmpty: $("streams-empty"),
  streamsMore: $("streams-more"),
  ended: $("ended"),
  ledgerState: $("ledger-state"),
  costs: $("costs"),
  costDay: $("cost-day"),
  costTotal: $("cost-total"),
  costStreams: $("cost-streams"),
  byPrincipal: $("cost-by-principal"),
  byModel: $("cost-by-model"),
};

let source = null;
let attempt = 0;
let retryTimer = 0;
let generation = 0; // a connection superseded by a newer one is ignored

function setStatus(state, text) {
  ui.status.dataset.state = state;
  ui.status.textContent = text;
}

function notice(text) {
  ui.notice.textContent = text;
  ui.notice.hidden = !text;
}

async function errorMessage(response) {
  try {
    const body = await response.json();
    return body.error.message;
  } catch {
    return response.statusText;
  }
}

async function connect() {
  const mine = ++generation;
  clearTimeout(retryTimer);
  if (source) source.close();
  source = null;
  setStatus("connecting", "connecting…");
  let response;
  try {
    const headers = {};
    const key = ui.apiKey.value.trim();
    if (key) headers["x-api-key"] = key;
    response = await fetch("/api/ops/tickets", { method: "POST", headers });
  } catch (error) {
    if (mine === generation) retry(`Cannot reach the gateway: ${error.message}`);
    return;
  }
  if (mine !== generation) return;
  if (!response.ok) {
    const message = `HTTP ${response.status}: ${await errorMessage(response)}`;
    if (response.status === 401 || response.status === 403) {
      // Nothing to retry until the key changes.
      setStatus("forbidden", response.status === 401 ? "no access" : "admin only");
      notice(message);
      if (response.status === 401) ui.apiKey.focus();
    } else {
      retry(message);
    }
    return;
  }
  const { ticket } = await response.json();
  if (mine !== generation) return;
  const events = new EventSource(`/api/ops/events?ticket=${encodeURIComponent(ticket)}`);
  source = events;
  events.addEventListener("snapshot", (event) => {
    if (mine !== generation) return;
    attempt = 0;
    const snapshot = JSON.parse(event.data);
    render(snapshot);
    notice("");
    if (snapshot.draining) setStatus("draining", "draining");
    else setStatus("live", "live");
  });
  events.addEventListener("error", () => {
    // EventSource's own reconnect would present the used ticket again: a fresh one.
    events.close();
    if (mine === generation) retry("");
  });
}

function retry(message) {
  setStatus("reconnecting", "reconnecting…");
  if (message) notice(message);
  const delay = RETRY_MS[Math.min(attempt, RETRY_MS.length - 1)];
  attempt += 1;
  retryTimer = setTimeout(connect, delay);
}

// ---------------------------------------------------------------------------------
// Rendering a snapshot

function text(id, value) {
  $(id).textContent = value === null || value === undefined ? "–" : String(value);
}

function cell(content, className) {
  const td = document.createElement("td");
  td.textContent = content;
  if (className) td.className = className;
  return td;
}

function formatAge(seconds) {
  const s = Math.floor(seconds);
  if (s < 60) return `${s} s`;
  const m = Math.floor(s / 60);
  return m < 60 ? `${m} min ${s % 60} s` : `${Math.floor(m / 60)} h ${m % 60} min`;
}

function describeState(row) {
  if (row.state === "queued") return `queued #${row.queue_position}`;
  if (row.state === "retrying") return `retrying (${row.retries})`;
  if (row.continuations) return `${row.state} (continued ×${row.continuations})`;
  return row.state;
}

function renderStreams(inFlight) {
  text("now-streams", inFlight.streams);
  text("now-queued", inFlight.queued);
  text("now-readers", inFlight.readers);
  const rows = inFlight.rows.map((row) => {
    const tr = document.createElement("tr");
    tr.dataset.streamId = row.stream_id;
    tr.dataset.state = row.state;
    const id = cell(row.stream_id.slice(0, ID_CHARS) + "…", "mono");
    id.title = row.stream_id;
    const state = cell(describeState(row), "state-cell");
    state.dataset.col = "state";
    state.dataset.state = row.state;
    const readers = cell(row.readers ? String(row.readers) : "0 · no readers", "num");
    readers.dataset.col = "readers";
    if (!row.readers) readers.classList.add("warn");
    const tokens = cell(String(row.tokens), "num");
    tokens.dataset.col = "tokens";
    const principal = cell(row.principal ?? "?");
    principal.dataset.col = "principal";
    const model = cell(row.model);
    model.dataset.col = "model";
    tr.append(id, principal, model, state, tokens, readers, cell(formatAge(row.age_s), "num"));
    return tr;
  });
  ui.streams.replaceChildren(...rows);
  ui.streamsEmpty.hidden = rows.length > 0;
  const more = inFlight.streams - rows.length;
  ui.streamsMore.hidden = more <= 0;
  ui.streamsMore.textContent = more > 0 ? `and ${more} more, not listed` : "";
}

function renderTotals(metrics) {
  const totals = metrics.totals;
  const ended = totals.ended;
  text("total-started", totals.started);
  text("total-done", ended.done || 0);
  text("total-errors", totals.errors);
  text("total-stopped", (ended.cancelled || 0) + (ended.abandoned || 0));
  text("total-upstream-errors", totals.upstream_errors);
  text("total-retries", totals.retries);
  text("total-continuations", totals.continuations);
  const statuses = Object.entries(ended).map(([status, n]) => `${status} ${n}`);
  ui.ended.textContent = statuses.length ? statuses.join(" · ") : "none";
  text("ttft-p50", totals.ttft_p50_ms === null ? null : `${Math.round(totals.ttft_p50_ms)} ms`);
  text("ttft-p95", totals.ttft_p95_ms === null ? null : `${Math.round(totals.ttft_p95_ms)} ms`);
  text("ttft-count", totals.ttft_count);
  text("tps-mean", totals.tps_mean === null ? null : totals.tps_mean.toFixed(1));
  text("tps-count", totals.tps_count);
  ui.span.textContent = String(Math.round(metrics.span_s / 60));
}

function renderCosts(costs) {
  const off = costs.state === "off";
  const messages = {
    off: "The usage ledger is off (TOKENRELAY_DATABASE_URL=off): this gateway keeps no costs.",
    loading: "Reading the usage ledger…",
    unavailable: `The usage ledger cannot be reached (${costs.error}); figures as last read.`,
  };
  ui.ledgerState.dataset.state = costs.state;
  ui.ledgerState.textContent = messages[costs.state] || "";
  ui.ledgerState.hidden = !messages[costs.state];
  ui.costs.hidden = off;
  ui.costTotal.parentElement.hidden = off || !costs.total;
  if (!costs.total) return;
  ui.costDay.textContent = `(UTC day ${costs.day})`;
  ui.costTotal.textContent = `$${costs.total.cost_usd}`;
  ui.costStreams.textContent = String(costs.total.streams);
  for (const [body, groups] of [[ui.byPrincipal, costs.by_principal], [ui.byModel, costs.by_model]]) {
    body.replaceChildren(
      ...groups.map((group) => {
        const tr = document.createElement("tr");
        tr.dataset.name = group.name;
        const streams = cell(String(group.streams), "num");
        streams.dataset.col = "streams";
        const cost = cell(`$${group.cost_usd}`, "num");
        cost.dataset.col = "cost";
        tr.append(cell(group.name), streams, cost);
        return tr;
      }),
    );
  }
}

// ---------------------------------------------------------------------------------
// Charts: one SVG per figure, redrawn from the series of each snapshot

const W = 320;
const H = 124;
const PAD = { left: 40, right: 8, top: 8, bottom: 20 };

function svg(name, attributes = {}) {
  const element = document.createElementNS(SVG, name);
  for (const [key, value] of Object.entries(attributes)) element.setAttribute(key, String(value));
  return element;
}

/** The smallest 1, 2, 2.5 or 5 × 10^n at or above `value` (1 for nothing). */
function niceCeiling(value) {
  if (!(value > 0)) return 1;
  const power = 10 ** Math.floor(Math.log10(value));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * power >= value * (1 - 1e-9)) return m * power;
  return 10 * power;
}

function formatTick(value) {
  if (value >= 1000) return `${+(value / 1000).toFixed(1)}k`;
  return String(+value.toFixed(2));
}

function drawChart(figure, series, metrics, unit) {
  let plot = figure.querySelector("svg");
  if (!plot) {
    plot = svg("svg", { viewBox: `0 0 ${W} ${H}`, class: "plot", role: "img" });
    figure.append(plot);
  }
  const values = series.flat().filter((v) => v !== null);
  const top = niceCeiling(Math.max(0, ...values));
  const innerW = W - PAD.left - PAD.right;
  const innerH = H - PAD.top - PAD.bottom;
  const n = series[0].length;
  const x = (i) => PAD.left + (n > 1 ? (i / (n - 1)) * innerW : innerW);
  const y = (v) => PAD.top + innerH - (v / top) * innerH;
  const parts = [];
  for (const fraction of [0, 0.5, 1]) {
    const at = y(top * fraction);
    parts.push(svg("line", { x1: PAD.left, x2: W - PAD.right, y1: at, y2: at, class: "rule" }));
    const label = svg("text", { x: PAD.left - 4, y: at + 3, class: "tick y" });
    label.textContent = formatTick(top * fraction) + (fraction === 1 ? unit : "");
    parts.push(label);
  }
  const minutes = Math.round(metrics.span_s / 60);
  for (const [at, words, anchor] of [[PAD.left, `−${minutes} min`, "start"], [W - PAD.right, "now", "end"]]) {
    const label = svg("text", { x: at, y: H - 5, class: `tick x ${anchor}` });
    label.textContent = words;
    parts.push(label);
  }
  series.forEach((points, index) => {
    const group = svg("g", { class: `series s${index}` });
    // What is drawn, for whoever reads the page rather than looks at it.
    group.dataset.values = points.map((v) => (v === null ? "" : v)).join(",");
    let run = [];
    const flush = () => {
      if (run.length === 1) {
        group.append(svg("circle", { cx: run[0][0], cy: run[0][1], r: 2.5, class: "dot" }));
      } else if (run.length > 1) {
        group.append(svg("polyline", { points: run.map((p) => p.join(",")).join(" "), class: "line" }));
      }
      run = [];
    };
    points.forEach((v, i) => (v === null ? flush() : run.push([x(i).toFixed(1), y(v).toFixed(1)])));
    flush();
    parts.push(group);
  });
  plot.replaceChildren(...parts);
}

function renderCharts(metrics) {
  const s = metrics.series;
  drawChart($("chart-ttft"), [s.ttft_p50_ms, s.ttft_p95_ms], metrics, " ms");
  drawChart($("chart-tps"), [s.tps_mean], metrics, "");
  drawChart($("chart-errors"), [s.errors_per_min, s.upstream_errors_per_min, s.retries_per_min], metrics, "/min");
}

function render(snapshot) {
  ui.instance.textContent = snapshot.instance;
  ui.updated.textContent = `(updated ${new Date(snapshot.time * 1000).toLocaleTimeString()})`;
  renderStreams(snapshot.in_flight);
  if (snapshot.metrics) {
    renderTotals(snapshot.metrics);
    renderCharts(snapshot.metrics);
  }
  renderCosts(snapshot.costs);
  document.body.dataset.snapshots = String(Number(document.body.dataset.snapshots || 0) + 1);
}

// ---------------------------------------------------------------------------------

// The key field is a form only for the browser's sake; its Enter is a `change`.
ui.apiKeyField.addEventListener("submit", (event) => event.preventDefault());

ui.apiKey.addEventListener("change", () => {
  sessionStorage.setItem(KEY_STORAGE, ui.apiKey.value.trim());
  attempt = 0;
  connect();
});

async function start() {
  ui.apiKey.value = sessionStorage.getItem(KEY_STORAGE) || "";
  try {
    const response = await fetch("/api/info");
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    const info = await response.json();
    ui.apiKeyField.hidden = info.auth === "none";
  } catch (error) {
    notice(`Cannot reach the gateway's /api/info: ${error.message}`);
  }
  document.body.dataset.ready = "true";
  connect();
}

start();
