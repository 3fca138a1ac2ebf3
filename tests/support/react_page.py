"""The real `react` and `react-dom` from tests/node/node_modules, as ES modules a page
can import, with no bundler.

React 19 ships CommonJS only. The development builds of react, react-dom, react-dom's
client and scheduler are wrapped, unchanged, as the functions of a small module table
(`require` looks them up; `process.env.NODE_ENV` is "development"), and each package is
re-exported as an ES module with the named exports node itself sees in it. A page maps
the bare specifiers `react` and `react-dom/client` to those with an import map, so
`tokenrelay/web/react.js`, which does `import … from "react"`, runs unchanged.
"""

from __future__ import annotations

import functools
import json
import subprocess

from tests.support.processes import ROOT

NODE_MODULES = ROOT / "tests" / "node" / "node_modules"
# Module name → its development build (what each package's index.js picks off-production).
SOURCES = {
    "react": "react/cjs/react.development.js",
    "react-dom": "react-dom/cjs/react-dom.development.js",
    "react-dom/client": "react-dom/cjs/react-dom-client.development.js",
    "scheduler": "scheduler/cjs/scheduler.development.js",
}
# The ES modules a page imports, by the path they are served at under a prefix.
ENTRY_POINTS = {"react": "react.js", "react-dom/client": "react-dom-client.js"}


def _named_exports(package: str) -> list[str]:
    keys = subprocess.run(
        ["node", "-e", f"console.log(JSON.stringify(Object.keys(require({package!r}))))"],
        cwd=ROOT / "tests" / "node", capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return [k for k in json.loads(keys) if k.isidentifier()]


def _commonjs() -> str:
    table = ",\n".join(
        f"{json.dumps(name)}: function (module, exports, require) {{\n"
        f"{(NODE_MODULES / path).read_text()}\n}}"
        for name, path in SOURCES.items()
    )
    return (
        'const process = { env: { NODE_ENV: "development" } };\n'
        f"const modules = {{\n{table}\n}};\n"
        "const loaded = {};\n"
        "export function require(name) {\n"
        "  if (!(name in loaded)) {\n"
        "    const module = { exports: {} };\n"
        "    loaded[name] = module;\n"
        "    modules[name].call(module.exports, module, module.exports, require);\n"
        "  }\n"
        "  return loaded[name].exports;\n"
        "}\n"
    )


def _entry(package: str) -> str:
    names = _named_exports(package)
    return (
        'import { require } from "./commonjs.js";\n'
        f"const exported = require({json.dumps(package)});\n"
        "export default exported;\n"
        f"export const {{ {', '.join(names)} }} = exported;\n"
    )


@functools.cache
def react_modules() -> dict[str, str]:
    """File name → ES module source: commonjs.js and one entry point per package."""
    files = {"commonjs.js": _commonjs()}
    for package, name in ENTRY_POINTS.items():
        files[name] = _entry(package)
    return files


def import_map(prefix: str) -> str:
    """The `<script type="importmap">` JSON that maps the packages to `prefix`."""
    return json.dumps({"imports": {pkg: prefix + name for pkg, name in ENTRY_POINTS.items()}})
