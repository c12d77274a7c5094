"""Regenerate the "## Parameters" section of helm/homefeed/README.md from the `## @param` lines of values.yaml.

Usage: .venv/bin/python helm/readme_params.py   (tests/test_helm.py fails when the table is out of date)
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import yaml

CHART = Path(__file__).resolve().parent / "homefeed"
HEADING = "## Parameters\n"


def _value(values: dict[str, Any], path: str) -> Any:
    node: Any = values
    for key in path.split("."):
        if not isinstance(node, dict) or key not in node:
            raise SystemExit(f"values.yaml: `## @param {path}` names no value")
        node = node[key]
    return node


def parameters_section(values_text: str) -> str:
    """The Markdown section: one table per `## @section`, one row per `## @param path description`."""
    values = yaml.safe_load(values_text)
    out = [HEADING, "Every value, from the `## @param` lines of `values.yaml`:"]
    for line in values_text.splitlines():
        if m := re.match(r"\s*## @section (.*)", line):
            out.append(f"\n### {m.group(1)}\n\n| name | description | default |\n|---|---|---|")
        elif m := re.match(r"\s*## @param (\S+) (.*)", line):
            path, desc = m.groups()
            default = yaml.safe_dump(_value(values, path), default_flow_style=True, width=10**6).strip()
            default = default.removesuffix("...").strip()
            bar = "\\|"
            out.append(f"| `{path}` | {desc.replace('|', bar)} | `{default.replace('|', bar)}` |")
    return "\n".join(out) + "\n"


def main() -> int:
    readme = CHART / "README.md"
    text = readme.read_text()
    if HEADING not in text:
        raise SystemExit(f"{readme}: no '{HEADING.strip()}' heading to replace")
    head = text.split(HEADING, 1)[0]
    new = head + parameters_section((CHART / "values.yaml").read_text())
    tmp = readme.with_suffix(".md.tmp")
    tmp.write_text(new)
    tmp.replace(readme)
    print(f"{readme}: parameters table regenerated")
    return 0


if __name__ == "__main__":
    sys.exit(main())
