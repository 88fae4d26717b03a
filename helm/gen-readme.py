#!/usr/bin/env python3
"""Writes helm/regcache/README.md from values.yaml: every value with its
default and the `# --` comment above it. helm/tests/test_chart.py checks
the README is up to date: run this after changing values.yaml.

    python3 helm/gen-readme.py
"""

import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
CHART = os.path.join(HERE, "regcache")

INTRO = """# regcache Helm chart

regcache as a StatefulSet of `replicaCount` members behind one Service: each
member serves the registry pull API on port 5000, and together they form one
Raft group (tags, the content index, garbage collection) that fetches each
blob once from the upstream for all of them. docs/operations.md ("Install on
Kubernetes") walks through an install; docs/configuration.md has every
setting the rendered `regcache.toml` uses.

```
helm install regcache helm/regcache --namespace registry-cache --create-namespace
```

A wrong value fails the install with its path (`values.schema.json`).

## Values

This table is generated from values.yaml by `helm/gen-readme.py`.

| key | default | description |
|---|---|---|
"""

KEY = re.compile(r"^(\s*)([A-Za-z][A-Za-z0-9_]*):\s*(.*)$")


def rows(lines):
    stack = []  # (indent, key)
    described = []
    in_doc = False
    for line in lines:
        stripped = line.strip()
        if stripped.startswith("# --"):
            described = [stripped[4:].strip()]
            in_doc = True
            continue
        if stripped.startswith("#"):
            if in_doc:
                described.append(stripped[1:].strip())
            continue
        in_doc = False
        match = KEY.match(line)
        if not match:
            continue
        indent, key, rest = len(match.group(1)), match.group(2), match.group(3)
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, key))
        path = ".".join(k for _, k in stack)
        text = " ".join(described)
        described = []
        if rest or text:
            yield path, rest or "", text


def code(default):
    """A default as inline code, its pipes escaped for the table."""
    return "`" + default.replace("|", "\\|") + "`" if default else ""


def render():
    with open(os.path.join(CHART, "values.yaml")) as f:
        lines = f.read().splitlines()
    table = "".join(f"| `{path}` | {code(default)} | {text} |\n" for path, default, text in rows(lines))
    return INTRO + table


if __name__ == "__main__":
    out = os.path.join(CHART, "README.md")
    if sys.argv[1:] == ["--check"]:
        with open(out) as f:
            sys.exit(0 if f.read() == render() else 1)
    with open(out, "w") as f:
        f.write(render())
