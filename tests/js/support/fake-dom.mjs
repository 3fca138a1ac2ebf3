// Just enough of the DOM for markdown.js under node: elements, text nodes, attributes,
// listeners, and innerHTML's serialisation (to compare with what Chromium shows).
const VOID = new Set(["br", "hr"]);

class FakeNode {
  constructor(doc) {
    this.ownerDocument = doc;
    this.parentNode = null;
  }

  remove() {
    if (!this.parentNode) return;
    const siblings = this.parentNode.childNodes;
    siblings.splice(siblings.indexOf(this), 1);
    this.parentNode = null;
  }
}

class FakeText extends FakeNode {
  constructor(doc, data) {
    super(doc);
    this.data = data;
  }

  get textContent() {
    return this.data;
  }

  serialize() {
    return escape(this.data, false);
  }
}

class FakeElement extends FakeNode {
  constructor(doc, tag) {
    super(doc);
    this.tagName = tag.toUpperCase();
    this.childNodes = [];
    this.attributes = new Map();
    this.listeners = {};
  }

  get className() {
    return this.attributes.get("class") || "";
  }

  set className(value) {
    this.attributes.set("class", value);
  }

  set type(value) {
    this.attributes.set("type", value);
  }

  setAttribute(name, value) {
    this.attributes.set(name, String(value));
  }

  getAttribute(name) {
    return this.attributes.has(name) ? this.attributes.get(name) : null;
  }

  append(...nodes) {
    for (const node of nodes) {
      const child = typeof node === "string" ? new FakeText(this.ownerDocument, node) : node;
      child.remove();
      child.parentNode = this;
      this.childNodes.push(child);
    }
  }

  replaceChildren(...nodes) {
    for (const child of [...this.childNodes]) child.remove();
    this.append(...nodes);
  }

  addEventListener(type, listener) {
    (this.listeners[type] ||= []).push(listener);
  }

  click() {
    for (const listener of this.listeners.click || []) listener({ type: "click" });
  }

  get children() {
    return this.childNodes.filter((node) => node instanceof FakeElement);
  }

  get textContent() {
    return this.childNodes.map((node) => node.textContent).join("");
  }

  set textContent(value) {
    this.replaceChildren(new FakeText(this.ownerDocument, value));
  }

  get innerHTML() {
    return this.childNodes.map((node) => node.serialize()).join("");
  }

  serialize() {
    const tag = this.tagName.toLowerCase();
    const attributes = [...this.attributes].map(([k, v]) => ` ${k}="${escape(v, true)}"`);
    const open = `<${tag}${attributes.join("")}>`;
    return VOID.has(tag) ? open : `${open}${this.innerHTML}</${tag}>`;
  }
}

function escape(text, attribute) {
  const out = text.replace(/&/g, "&amp;").replace(/\u00a0/g, "&nbsp;");
  if (attribute) return out.replace(/"/g, "&quot;");
  return out.replace(/</g, "&lt;").replace(/>/g, "&gt;");
}

export class FakeDocument {
  constructor() {
    this.created = 0;
  }

  createElement(tag) {
    this.created += 1;
    return new FakeElement(this, tag);
  }

  createTextNode(data) {
    return new FakeText(this, data);
  }
}

export function container() {
  return new FakeDocument().createElement("div");
}
