"""Renders the chart with Helm's engine and prints every object as one JSON
list, for tests that run what the chart describes (crates/regcache/tests/
chart_boot.rs):

    render.py VALUES_JSON RELEASE NAMESPACE
"""

import json
import os
import sys

import helm_python
import yaml

CHART = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "regcache")

values, release, namespace = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3]
rendered = helm_python.Chart.load(CHART).render(values, name=release, namespace=namespace)
objects = [
    doc
    for path, text in sorted(rendered.items())
    if path.endswith(".yaml")
    for doc in yaml.safe_load_all(text)
    if doc
]
json.dump(objects, sys.stdout)
