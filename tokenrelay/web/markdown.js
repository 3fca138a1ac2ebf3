// markdown.js: the chat page's Markdown, rendered safely and incrementally.
//
// A subset of CommonMark, the part answers use: paragraphs, ATX headings (# …), lists
// (ordered and not, nested by indentation), block quotes, thematic breaks, fenced code
// blocks (with a copy button), and inline code, **strong**, *emphasis*, links
// ([text](url), <url> and bare http(s) URLs) and line breaks.
//
// Safe: the DOM is built from nodes (createElement, Text nodes), never from HTML, so
// markup in an answer shows as the text it is. A link's href is kept only when it is
// http(s) or mailto; any other link is shown as the text that was written.
//
// Incremental: `MarkdownView.append(text)` re-renders only the open end of the answer.
// A block is final once a complete line after it has started another block (nothing
// that comes later can change it), and its nodes then stay as they are.

const LINK_SCHEMES = new Set(["http:", "https:", "mailto:"]);
const PUNCTUATION = /[!-/:-@[-`{-~]/;
const FENCE = /^( {0,3})(`{3,}|~{3,})[ \t]*(.*?)[ \t]*$/;
const HEADING = /^ {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$/;
const RULE = /^ {0,3}([-*_])(?:[ \t]*\1){2,}[ \t]*$/;
const QUOTE = /^ {0,3}> ?/;
const ITEM = /^( {0,3})([-*+]|(\d{1,9})[.)])(?:( +)(.*))?$/;
const BARE_URL = /^https?:\/\/[^\s<>]+/i;
const AUTOLINK = /^<((?:https?:\/\/|mailto:)[^\s<>]*)>/i;

// ---------------------------------------------------------------------------------
// Blocks

/** The Markdown `text` as blocks: { type: "paragraph" | "heading" | "code" | "list" |
 * "quote" | "rule", ... }, inline content parsed. */
export function parseBlocks(text) {
  return scan(linesOf(text)).map((span) => span.block);
}

function linesOf(text) {
  return text.replace(/\r\n?/g, "\n").replace(/\t/g, "    ").split("\n");
}

const blank = (line) => line.trim() === "";
const indentOf = (line) => line.length - line.trimStart().length;

function itemStart(line) {
  if (RULE.test(line)) return null;
  const m = ITEM.exec(line);
  if (!m) return null;
  const spaces = m[4] ? m[4].length : 0;
  // Five spaces or more after the marker: the content starts one space after it.
  const gap = spaces >= 5 ? 1 : Math.max(spaces, 1);
  const content = m[4] ? line.slice(m[1].length + m[2].length + gap) : "";
  return {
    ordered: m[3] !== undefined,
    start: m[3] !== undefined ? Number(m[3]) : 1,
    indent: m[1].length + m[2].length + gap,
    content,
  };
}

/** Whether `line` starts a block that ends a paragraph before it. */
function interrupts(line) {
  if (FENCE.test(line) || HEADING.test(line) || RULE.test(line) || QUOTE.test(line)) {
    return true;
  }
  const item = itemStart(line);
  return item !== null && item.content.trim() !== "";
}

/** The blocks of `lines`, each with the lines it spans: [{ start, end, block }]. */
function scan(lines) {
  const out = [];
  let i = 0;
  while (i < lines.length) {
    const line = lines[i];
    if (blank(line)) {
      i += 1;
      continue;
    }
    const start = i;
    let m;
    if ((m = FENCE.exec(line)) && !(m[2][0] === "`" && m[3].includes("`"))) {
      i = fenced(lines, i, m, out);
    } else if ((m = HEADING.exec(line))) {
      const block = { type: "heading", level: m[1].length, inlines: parseInlines(m[2] || "") };
      out.push({ start, end: i + 1, block });
      i += 1;
    } else if (RULE.test(line)) {
      out.push({ start, end: i + 1, block: { type: "rule" } });
      i += 1;
    } else if (QUOTE.test(line)) {
      const inner = [];
      while (i < lines.length && QUOTE.test(lines[i])) {
        inner.push(lines[i].replace(QUOTE, ""));
        i += 1;
      }
      out.push({ start, end: i, block: { type: "quote", blocks: parseLines(inner) } });
    } else if (itemStart(line)) {
      i = list(lines, i, out);
    } else {
      const texts = [];
      while (i < lines.length && !blank(lines[i]) && (i === start || !interrupts(lines[i]))) {
        texts.push(lines[i].trim());
        i += 1;
      }
      const block = { type: "paragraph", inlines: parseInlines(texts.join("\n")) };
      out.push({ start, end: i, block });
    }
  }
  return out;
}

const parseLines = (lines) => scan(lines).map((span) => span.block);

function fenced(lines, i, m, out) {
  const [, indent, fence, info] = m;
  const start = i;
  const body = [];
  let closed = false;
  for (i += 1; i < lines.length; i++) {
    const close = /^ {0,3}(`{3,}|~{3,})[ \t]*$/.exec(lines[i]);
    if (close && close[1][0] === fence[0] && close[1].length >= fence.length) {
      closed = true;
      i += 1;
      break;
    }
    // The fence's own indentation is not part of the code.
    body.push(lines[i].replace(new RegExp(`^ {0,${indent.length}}`), ""));
  }
  const lang = info.split(/\s+/)[0] || "";
  out.push({ start, end: i, block: { type: "code", lang, text: body.join("\n"), closed } });
  return i;
}

function list(lines, i, out) {
  const first = itemStart(lines[i]);
  const start = i;
  const items = [];
  let loose = false;
  let end = i;
  for (;;) {
    const item = itemStart(lines[i]);
    const body = [item.content];
    let last = i; // the item's last line that is not blank
    let lazy = !blank(item.content); // a paragraph line just before: a lazy line may follow
    for (let j = i + 1; j < lines.length; j++) {
      const line = lines[j];
      if (blank(line)) {
        body.push("");
        lazy = false;
        continue;
      }
      if (indentOf(line) >= item.indent) {
        body.push(line.slice(item.indent));
      } else if (lazy && !interrupts(line) && !itemStart(line)) {
        body.push(line.trim());
      } else {
        break;
      }
      last = j;
      lazy = !interrupts(line.trimStart());
    }
    const spans = scan(body.slice(0, last - i + 1));
    // A blank line between an item's own blocks makes the list loose too.
    if (spans.some((span, n) => n > 0 && span.start > spans[n - 1].end)) loose = true;
    items.push(spans.map((span) => span.block));
    end = last + 1;
    let next = end;
    while (next < lines.length && blank(lines[next])) next += 1;
    const following = next < lines.length ? itemStart(lines[next]) : null;
    if (!following || following.ordered !== first.ordered) break;
    if (next > end) loose = true;
    i = next;
  }
  const block = { type: "list", ordered: first.ordered, start: first.start, loose, items };
  out.push({ start, end, block });
  return end;
}

// ---------------------------------------------------------------------------------
// Inlines

/** Inline Markdown as nodes: { type: "text" | "code" | "strong" | "em" | "link" |
 * "break", ... }. A link whose href is not http(s) or mailto stays text. */
export function parseInlines(text, { links = true } = {}) {
  const out = [];
  let buffer = "";
  const flush = () => {
    if (buffer) out.push({ type: "text", text: buffer });
    buffer = "";
  };
  const push = (node) => {
    flush();
    out.push(node);
  };
  let i = 0;
  while (i < text.length) {
    const c = text[i];
    if (c === "\\" && i + 1 < text.length && PUNCTUATION.test(text[i + 1])) {
      buffer += text[i + 1];
      i += 2;
      continue;
    }
    if (c === "\n") {
      buffer = buffer.replace(/[ \\]+$/, "");
      push({ type: "break" });
      i += 1;
      continue;
    }
    if (c === "`") {
      const n = runLength(text, i, "`");
      const close = findRun(text, i + n, "`", n);
      if (close === -1) {
        buffer += "`".repeat(n);
      } else {
        push({ type: "code", text: codeText(text.slice(i + n, close)) });
      }
      i = close === -1 ? i + n : close + n;
      continue;
    }
    if (links && c === "[") {
      const link = parseLink(text, i);
      if (link) {
        if (link.href === null) buffer += text.slice(i, link.end);
        else push({ type: "link", href: link.href, children: link.children });
        i = link.end;
        continue;
      }
    }
    if (links && c === "<") {
      const m = AUTOLINK.exec(text.slice(i));
      const href = m && safeHref(m[1]);
      if (href) {
        push({ type: "link", href, children: [{ type: "text", text: m[1] }] });
        i += m[0].length;
        continue;
      }
    }
    if (links && (c === "h" || c === "H") && !/[\p{L}\p{N}/]/u.test(text[i - 1] || "")) {
      const url = bareUrl(text.slice(i));
      if (url) {
        push({ type: "link", href: url, children: [{ type: "text", text: url }] });
        i += url.length;
        continue;
      }
    }
    if (c === "*" || c === "_") {
      const emphasis = parseEmphasis(text, i, c, links);
      if (emphasis) {
        push(emphasis.node);
        i = emphasis.end;
        continue;
      }
      const n = runLength(text, i, c);
      buffer += c.repeat(n);
      i += n;
      continue;
    }
    buffer += c;
    i += 1;
  }
  flush();
  return out;
}

function runLength(text, i, c) {
  let j = i;
  while (text[j] === c) j += 1;
  return j - i;
}

/** The start of the next run of exactly `n` × `c` at or after `from`, or -1. */
function findRun(text, from, c, n) {
  for (let j = from; j < text.length; j++) {
    if (text[j] !== c) continue;
    const length = runLength(text, j, c);
    if (length === n) return j;
    j += length - 1;
  }
  return -1;
}

function codeText(raw) {
  const text = raw.replace(/\n/g, " ");
  // One space each side is padding (so a span can start or end with a backtick).
  if (text.length > 2 && text.startsWith(" ") && text.endsWith(" ") && text.trim()) {
    return text.slice(1, -1);
  }
  return text;
}

const WORD = /[\p{L}\p{N}]/u;
const SPACE = /\s/;

function parseEmphasis(text, i, c, links) {
  const n = runLength(text, i, c);
  if (n > 3) return null;
  const after = text[i + n];
  if (after === undefined || SPACE.test(after)) return null;
  if (c === "_" && WORD.test(text[i - 1] || "")) return null;
  for (let j = i + n; j < text.length; j++) {
    const ch = text[j];
    if (ch === "\\") {
      j += 1;
      continue;
    }
    if (ch === "`") {
      // A code span inside: its content cannot close the emphasis.
      const ticks = runLength(text, j, "`");
      const close = findRun(text, j + ticks, "`", ticks);
      j = (close === -1 ? j : close) + ticks - 1;
      continue;
    }
    if (ch !== c) continue;
    const length = runLength(text, j, c);
    const closes =
      length === n &&
      !SPACE.test(text[j - 1]) &&
      j > i + n &&
      !(c === "_" && WORD.test(text[j + length] || ""));
    if (closes) {
      const children = parseInlines(text.slice(i + n, j), { links });
      let node;
      if (n === 1) node = { type: "em", children };
      else if (n === 2) node = { type: "strong", children };
      else node = { type: "strong", children: [{ type: "em", children }] };
      return { node, end: j + n };
    }
    j += length - 1;
  }
  return null;
}

/** `[text](destination "title")` at `i`: { href (null when not a safe one), children,
 * end }, or null when it is not a link at all. */
function parseLink(text, i) {
  let depth = 0;
  let j = i;
  for (; j < text.length; j++) {
    const ch = text[j];
    if (ch === "\\") j += 1;
    else if (ch === "[") depth += 1;
    else if (ch === "]" && --depth === 0) break;
  }
  if (j >= text.length || text[j + 1] !== "(") return null;
  const label = text.slice(i + 1, j);
  let k = j + 2;
  while (text[k] === " ") k += 1;
  let destination = "";
  if (text[k] === "<") {
    const close = text.indexOf(">", k);
    if (close === -1 || text.slice(k, close).includes("\n")) return null;
    destination = text.slice(k + 1, close);
    k = close + 1;
  } else {
    let parens = 0;
    const from = k;
    for (; k < text.length; k++) {
      const ch = text[k];
      if (ch === "\\" && PUNCTUATION.test(text[k + 1] || "")) k += 1;
      else if (SPACE.test(ch)) break;
      else if (ch === "(") parens += 1;
      else if (ch === ")" && parens-- === 0) break;
    }
    destination = text.slice(from, k).replace(/\\([!-/:-@[-`{-~])/g, "$1");
  }
  while (text[k] === " ") k += 1;
  const quote = text[k];
  if (quote === '"' || quote === "'") {
    const close = text.indexOf(quote, k + 1);
    if (close === -1) return null;
    k = close + 1;
    while (text[k] === " ") k += 1;
  }
  if (text[k] !== ")") return null;
  return {
    href: safeHref(destination),
    children: parseInlines(label, { links: false }),
    end: k + 1,
  };
}

function bareUrl(text) {
  const m = BARE_URL.exec(text);
  if (!m) return null;
  let url = m[0];
  // Trailing punctuation ends the sentence, not the URL; a ")" that closes a "(" in it stays.
  for (;;) {
    const last = url[url.length - 1];
    if (last === ")") {
      const opened = url.split("(").length - 1;
      const closed = url.split(")").length - 1;
      if (closed <= opened) break;
    } else if (!/[.,:;!?'"*_~\]]/.test(last)) {
      break;
    }
    url = url.slice(0, -1);
  }
  return safeHref(url);
}

/** `raw` when it is an http(s) or mailto URL, else null. */
export function safeHref(raw) {
  const href = raw.trim();
  if (!/^(?:https?:\/\/|mailto:)/i.test(href)) return null;
  try {
    return LINK_SCHEMES.has(new URL(href).protocol) ? href : null;
  } catch {
    return null;
  }
}

// ---------------------------------------------------------------------------------
// Rendering: nodes only

/** DOM nodes for `blocks`, made with `doc` (a document). */
export function renderBlocks(blocks, doc, options = {}) {
  return blocks.map((block) => renderBlock(block, doc, options));
}

function element(doc, tag, children = [], className = "") {
  const el = doc.createElement(tag);
  if (className) el.className = className;
  el.append(...children);
  return el;
}

function renderBlock(block, doc, options) {
  switch (block.type) {
    case "paragraph":
      return element(doc, "p", renderInlines(block.inlines, doc));
    case "heading":
      return element(doc, `h${block.level}`, renderInlines(block.inlines, doc));
    case "rule":
      return doc.createElement("hr");
    case "quote":
      return element(doc, "blockquote", renderBlocks(block.blocks, doc, options));
    case "code":
      return renderCode(block, doc, options);
    case "list": {
      const list = doc.createElement(block.ordered ? "ol" : "ul");
      if (block.ordered && block.start !== 1) list.setAttribute("start", String(block.start));
      for (const item of block.items) {
        const children = item.flatMap((inner) =>
          // A tight list's paragraphs are its items' text, without a <p> around it.
          inner.type === "paragraph" && !block.loose
            ? renderInlines(inner.inlines, doc)
            : [renderBlock(inner, doc, options)],
        );
        list.append(element(doc, "li", children));
      }
      return list;
    }
    default:
      throw new Error(`unknown block ${block.type}`);
  }
}

function renderCode(block, doc, options) {
  const code = element(doc, "code", [doc.createTextNode(block.text)]);
  if (block.lang) code.className = `language-${block.lang}`;
  const copy = element(doc, "button", [doc.createTextNode("Copy")], "copy");
  copy.type = "button";
  copy.setAttribute("data-testid", "copy");
  copy.setAttribute("aria-label", "Copy the code");
  copy.addEventListener("click", () => (options.copy || copyText)(block.text, copy));
  const label = element(doc, "span", [doc.createTextNode(block.lang)], "code-lang");
  const head = element(doc, "div", [label, copy], "code-head");
  return element(doc, "div", [head, element(doc, "pre", [code])], "code-block");
}

async function copyText(text, button) {
  try {
    await navigator.clipboard.writeText(text);
    button.textContent = "Copied";
  } catch {
    button.textContent = "Copy failed";
  }
  setTimeout(() => {
    button.textContent = "Copy";
  }, 1500);
}

function renderInlines(inlines, doc) {
  return inlines.map((node) => {
    switch (node.type) {
      case "text":
        return doc.createTextNode(node.text);
      case "break":
        return doc.createElement("br");
      case "code":
        return element(doc, "code", [doc.createTextNode(node.text)]);
      case "strong":
        return element(doc, "strong", renderInlines(node.children, doc));
      case "em":
        return element(doc, "em", renderInlines(node.children, doc));
      case "link": {
        const a = element(doc, "a", renderInlines(node.children, doc));
        a.setAttribute("href", node.href);
        a.setAttribute("target", "_blank");
        a.setAttribute("rel", "noopener noreferrer");
        return a;
      }
      default:
        throw new Error(`unknown inline ${node.type}`);
    }
  });
}

// ---------------------------------------------------------------------------------
// Incremental

/** An answer rendered as it grows: `append(text)` re-renders only the open end. */
export class MarkdownView {
  constructor(element, options = {}) {
    this.element = element;
    this.doc = element.ownerDocument;
    this.options = options;
    this.clear();
  }

  /** Nothing shown: at the start, and on a `reset`. */
  clear() {
    this.source = "";
    this.stable = 0; // where the open end starts: everything before is final
    this.open = [];
    this.element.replaceChildren();
  }

  get text() {
    return this.source;
  }

  append(text) {
    if (!text) return;
    this.source += text;
    const rest = this.source.slice(this.stable);
    const complete = rest.lastIndexOf("\n") + 1;
    if (complete > 0) {
      // Among complete lines, every block but the last has been followed by another.
      const lines = linesOf(rest.slice(0, complete));
      const spans = scan(lines);
      if (spans.length > 1) {
        const cut = offsetOfLine(rest, spans[spans.length - 1].start);
        this.replaceOpen(renderBlocks(parseBlocks(rest.slice(0, cut)), this.doc, this.options));
        this.open = [];
        this.stable += cut;
      }
    }
    const blocks = parseBlocks(this.source.slice(this.stable));
    this.replaceOpen(renderBlocks(blocks, this.doc, this.options));
  }

  replaceOpen(nodes) {
    for (const node of this.open) node.remove();
    this.element.append(...nodes);
    this.open = nodes;
  }
}

function offsetOfLine(text, line) {
  let offset = 0;
  for (let n = 0; n < line; n++) offset = text.indexOf("\n", offset) + 1;
  return offset;
}
