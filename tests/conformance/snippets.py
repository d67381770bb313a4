"""Keep docs/clients.md in step with what is tested: its Node.js examples are regions of
node/runner.js (between `// docs:begin <name>` and `// docs:end <name>`), and its lists of
read-only functions and error codes come from functions/adcache.contracts.json and lua/errors.yaml.

    python tests/conformance/snippets.py          # rewrite the generated regions of the doc
    python tests/conformance/snippets.py --check  # exit 1 when the doc is stale (a test does this)
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
RUNNER = ROOT / "tests" / "conformance" / "node" / "runner.js"
DOC = ROOT / "docs" / "clients.md"
_REGION = re.compile(
    r"(<!-- generated: (?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- end generated -->)", re.S
)


def js_region(name: str) -> str:
    m = re.search(rf"// docs:begin {name}\n(.*?)// docs:end {name}\n", RUNNER.read_text(), re.S)
    if not m:
        raise KeyError(f"node/runner.js has no region {name!r}")
    return m.group(1)


def generated(name: str) -> str:
    if name.startswith("node-"):
        return "```js\n" + js_region(name[len("node-") :]) + "```\n"
    contracts = json.loads((ROOT / "functions" / "adcache.contracts.json").read_text())
    if name == "readonly":
        ro = [n for n, f in contracts["functions"].items() if f["command"] == "FCALL_RO"]
        return "".join(f"- `{n}`\n" for n in sorted(ro))
    if name == "errors":
        errors = yaml.safe_load((ROOT / "lua" / "errors.yaml").read_text())
        rows = ["| code | meaning |", "|---|---|"]
        rows += [
            f"| `{code}` | {spec['doc']} |"
            for code, spec in errors.items()
            if spec.get("side") != "client"
        ]
        return "\n".join(rows) + "\n"
    raise KeyError(f"unknown generated region {name!r}")


def render(text: str) -> str:
    return _REGION.sub(lambda m: m.group(1) + generated(m.group("name")) + m.group(4), text)


def main(argv: list[str]) -> int:
    text = DOC.read_text()
    fresh = render(text)
    if "--check" in argv:
        if fresh != text:
            print(f"{DOC} is stale: run python {Path(__file__).relative_to(ROOT)}")
            return 1
        return 0
    DOC.write_text(fresh)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
