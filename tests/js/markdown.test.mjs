// markdown.js under node: what each construct renders to (as Chromium's innerHTML would
// show it), that markup and unsafe links stay text, and that the incremental view always
// shows exactly what a whole render of the text so far would, keeping final blocks' nodes.
import assert from "node:assert/strict";
import { test } from "node:test";

import {
  MarkdownView,
  parseBlocks,
  renderBlocks,
  safeHref,
} from "../../tokenrelay/web/markdown.js";
import { container } from "./support/fake-dom.mjs";

function html(markdown) {
  const root = container();
  root.append(...renderBlocks(parseBlocks(markdown), root.ownerDocument));
  return root.innerHTML;
}

const COPY =
  '<button class="copy" type="button" data-testid="copy" aria-label="Copy the code">Copy</button>';
const LINK = 'target="_blank" rel="noopener noreferrer"';

test("paragraphs, line breaks and inline styles", () => {
  assert.equal(
    html("Hello **bold**, *it*, _also it_ and `a < b`\nnext line\n\nSecond"),
    "<p>Hello <strong>bold</strong>, <em>it</em>, <em>also it</em> and <code>a &lt; b</code>" +
      "<br>next line</p><p>Second</p>",
  );
  assert.equal(html("***both*** and **a *b* c**"),
    "<p><strong><em>both</em></strong> and <strong>a <em>b</em> c</strong></p>");
  assert.equal(html("snake_case_name, 2 * 3 * 4, \\*escaped\\*"),
    "<p>snake_case_name, 2 * 3 * 4, *escaped*</p>");
  assert.equal(html("**open, `open, *open"), "<p>**open, `open, *open</p>");
  assert.equal(html("`` a ` b ``"), "<p><code>a ` b</code></p>");
  assert.equal(html("*`*` x*"), "<p><em><code>*</code> x</em></p>");
});

test("headings", () => {
  assert.equal(html("# One\n## Two ##\n###### Six\n#hashtag"),
    "<h1>One</h1><h2>Two</h2><h6>Six</h6><p>#hashtag</p>");
  assert.equal(html("Intro\n### Part"), "<p>Intro</p><h3>Part</h3>");
});

test("lists: tight, loose, ordered, nested, after a paragraph", () => {
  assert.equal(html("- a\n- b\n  - c\n- d"),
    "<ul><li>a</li><li>b<ul><li>c</li></ul></li><li>d</li></ul>");
  assert.equal(html("3. x\n4. y"), '<ol start="3"><li>x</li><li>y</li></ol>');
  assert.equal(html("- a\n\n- b"), "<ul><li><p>a</p></li><li><p>b</p></li></ul>");
  assert.equal(html("Steps:\n1. one\n2. two **now**\n\nDone."),
    "<p>Steps:</p><ol><li>one</li><li>two <strong>now</strong></li></ol><p>Done.</p>");
  assert.equal(html("* star\n+ plus"), "<ul><li>star</li><li>plus</li></ul>");
  assert.equal(html("- item\nlazy line"), "<ul><li>item<br>lazy line</li></ul>");
  assert.equal(html("1. first\n   more\n- other kind"),
    "<ol><li>first<br>more</li></ol><ul><li>other kind</li></ul>");
});

test("block quotes and thematic breaks", () => {
  assert.equal(html("> quoted\n> more\n\n---\nafter\n* * *"),
    "<blockquote><p>quoted<br>more</p></blockquote><hr><p>after</p><hr>");
});

test("fenced code blocks, with their language and a copy button", () => {
  const head = (lang) => `<div class="code-head"><span class="code-lang">${lang}</span>${COPY}</div>`;
  assert.equal(html("```py\nif a < b:\n    print('<b>')\n```\nafter"),
    `<div class="code-block">${head("py")}<pre><code class="language-py">` +
      "if a &lt; b:\n    print('&lt;b&gt;')</code></pre></div><p>after</p>");
  assert.equal(html("~~~\n**not bold**\n\n# nor a heading\n~~~"),
    `<div class="code-block">${head("")}<pre><code>**not bold**\n\n# nor a heading` +
      "</code></pre></div>");
  // Unclosed (still streaming): the code runs to the end.
  assert.equal(html("```js\nlet x = 1;"),
    `<div class="code-block">${head("js")}<pre><code class="language-js">let x = 1;` +
      "</code></pre></div>");
  assert.equal(html("- item\n\n  ```\n  code\n  ```"),
    `<ul><li><p>item</p><div class="code-block">${head("")}<pre><code>code</code></pre></div>` +
      "</li></ul>");
});

test("the copy button copies the block's code", () => {
  const copied = [];
  const root = container();
  const view = new MarkdownView(root, { copy: (text) => copied.push(text) });
  view.append("Run:\n\n```sh\nmake test\nmake run\n```\n");
  const [button] = root.children[1].children[0].children.filter((e) => e.tagName === "BUTTON");
  button.click();
  assert.deepEqual(copied, ["make test\nmake run"]);
});

test("links: http(s) and mailto only, the rest stays the text it was", () => {
  assert.equal(html("[site](https://example.com/a?b=1&c=2) and [mail](mailto:a@b.c)"),
    `<p><a href="https://example.com/a?b=1&amp;c=2" ${LINK}>site</a> and ` +
      `<a href="mailto:a@b.c" ${LINK}>mail</a></p>`);
  assert.equal(html("[**bold** link](<https://x.y/a b> \"title\")"),
    `<p><a href="https://x.y/a b" ${LINK}><strong>bold</strong> link</a></p>`);
  for (const bad of ["javascript:alert(1)", "JaVaScRiPt:alert(1)", "data:text/html,x",
    "/relative", "#frag", "vbscript:x", "http:/one-slash"]) {
    assert.equal(html(`[x](${bad})`), `<p>[x](${bad})</p>`, bad);
  }
  assert.equal(html("see https://a.example/wiki/Foo_(bar). Or <https://b.example>!"),
    `<p>see <a href="https://a.example/wiki/Foo_(bar)" ${LINK}>https://a.example/wiki/Foo_(bar)` +
      `</a>. Or <a href="https://b.example" ${LINK}>https://b.example</a>!</p>`);
  assert.equal(html("xhttps://not.a.link"), "<p>xhttps://not.a.link</p>");
  assert.equal(html("[no [nested](https://in.side)](https://out.side)"),
    `<p><a href="https://out.side" ${LINK}>no [nested](https://in.side)</a></p>`);
  assert.equal(safeHref(" https://ok.example "), "https://ok.example");
  assert.equal(safeHref("https://exa mple.com"), null);
});

test("markup in the text is text", () => {
  assert.equal(html('<script>alert(1)</script> <img src=x onerror="alert(1)"> &amp;'),
    "<p>&lt;script&gt;alert(1)&lt;/script&gt; &lt;img src=x onerror=\"alert(1)\"&gt; " +
      "&amp;amp;</p>");
  assert.equal(html("[<img src=x onerror=alert(1)>](https://x.example)"),
    `<p><a href="https://x.example" ${LINK}>&lt;img src=x onerror=alert(1)&gt;</a></p>`);
});

const SAMPLE = [
  "# Plan",
  "",
  "First a paragraph with **bold**, *emphasis* and `code`,",
  "over two lines; see [the docs](https://example.com/docs).",
  "",
  "1. one",
  "2. two",
  "   - nested *a*",
  "   - nested b",
  "",
  "3. three",
  "",
  "```python",
  "def f(x):",
  "",
  "    return x * 2  # **not bold**",
  "```",
  "> a quote",
  "> with <b>markup</b>",
  "",
  "---",
  "## End",
  "Last words https://example.org/x.",
].join("\n");

function chunkings(text) {
  const chars = [...text];
  const words = text.split(/(?<= )/);
  let seed = 7;
  const random = () => {
    seed = (seed * 1103515245 + 12345) % 2 ** 31;
    return seed / 2 ** 31;
  };
  const pieces = [];
  for (let i = 0; i < text.length; ) {
    const n = 1 + Math.floor(random() * 12);
    pieces.push(text.slice(i, i + n));
    i += n;
  }
  return { chars, words, pieces };
}

test("incremental: after every chunk the view is a whole render of the text so far", () => {
  for (const [name, chunks] of Object.entries(chunkings(SAMPLE))) {
    const root = container();
    const view = new MarkdownView(root);
    let text = "";
    for (const chunk of chunks) {
      view.append(chunk);
      text += chunk;
      assert.equal(root.innerHTML, html(text), `${name}: after ${JSON.stringify(text)}`);
    }
    assert.equal(view.text, SAMPLE);
  }
});

test("incremental: a final block's nodes are kept, only the open end is rebuilt", () => {
  const root = container();
  const view = new MarkdownView(root);
  const feed = (text) => {
    for (const c of text) view.append(c);
  };
  feed("# Title\n\nA paragraph\n");
  const heading = root.children[0];
  const created = root.ownerDocument.created;
  feed("that grows word by word, for a long while\n");
  assert.equal(root.children[0], heading);
  // The paragraph is open: it is rebuilt per chunk; the heading never again.
  const perChunk = (root.ownerDocument.created - created) / 42;
  assert.equal(perChunk, 2); // its <p> and its <br>
  feed("\n- item\n");
  const paragraph = root.children[1];
  feed("- another item\n\nAnd more.");
  assert.equal(root.children[0], heading);
  assert.equal(root.children[1], paragraph);
  assert.equal(root.innerHTML, html(view.text));
});

test("clear() empties the view for an answer that starts again", () => {
  const root = container();
  const view = new MarkdownView(root);
  view.append("# Old\n\nold text\n\nmore");
  view.clear();
  assert.equal(root.innerHTML, "");
  view.append("New *one*");
  assert.equal(root.innerHTML, "<p>New <em>one</em></p>");
});
