"""The Grafana dashboards: generated, datasource-agnostic, filtered by namespace and
workpool, every query valid PromQL for a real Prometheus, and only real metrics used."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from conftest import CHART, REPO
from promserver import prometheus

DASHBOARDS = sorted((CHART / "dashboards").glob("*.json"))

# The metrics the operator and the workers export (docs/metrics.md, operator/src/metrics.rs).
GAUGES = {
    "workpool_desired_replicas", "workpool_replicas", "workpool_ready_replicas", "workpool_busy_replicas",
    "workpool_queue_backlog", "workpool_queue_pending", "workpool_queue_dead_letters",
    "workpool_queue_oldest_pending_seconds", "workpool_queue_up", "workpool_leader",
    "workpool_worker_in_flight_tasks", "workpool_worker_ready", "workpool_draining_replicas",
    "workpool_queue_partition_backlog", "workpool_queue_partition_pending",
}
COUNTERS = {
    "workpool_scale_events_total", "workpool_pod_replacements_total", "workpool_reconcile_errors_total",
    "workpool_queue_probe_errors_total", "workpool_worker_tasks_total", "workpool_worker_reclaimed_tasks_total",
    "workpool_worker_redis_errors_total",
}
HISTOGRAMS = {"workpool_reconcile_duration_seconds", "workpool_worker_task_duration_seconds"}
SERIES = GAUGES | COUNTERS | {f"{h}_{s}" for h in HISTOGRAMS for s in ("bucket", "sum", "count")}
# label names that may appear after `by`/`without` (anything else is a typo)
LABELS = {"namespace", "workpool", "pod", "le", "outcome", "direction", "reason", "instance", "job", "partition"}

# Grafana's variables, as Grafana substitutes them
GRAFANA_VARS = {
    "$__rate_interval": "1m", "$__interval": "30s", "$__range": "1h",
    "$namespace": ".*", "$workpool": ".*",
}

PROMQL_WORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless",
    "offset", "inf", "nan", "atan2",
}


def panels(dash):
    for p in dash["panels"]:
        yield p
        yield from p.get("panels", [])


def exprs(dash):
    for p in panels(dash):
        for t in p.get("targets", []):
            yield p, t["expr"]


def substitute(expr: str) -> str:
    for k, v in sorted(GRAFANA_VARS.items(), key=lambda kv: -len(kv[0])):
        expr = expr.replace(k, v)
    assert "$" not in expr, f"unknown Grafana variable in {expr}"
    return expr


def metric_names(expr: str) -> set[str]:
    """The series a PromQL expression selects: identifiers that are not functions,
    keywords, label names (inside {} or by/without/on(...)) or strings."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings
    e = re.sub(r"\{[^}]*\}", " ", e)  # label matchers
    e = re.sub(r"\[[^\]]*\]", " ", e)  # ranges
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", e)
    names = set()
    for m in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", e):
        word = m.group(0)
        rest = e[m.end():].lstrip()
        if rest.startswith("(") or word.lower() in PROMQL_WORDS:
            continue
        if re.fullmatch(r"\d+(\.\d+)?(e\d+)?", word):
            continue
        names.add(word)
    return names


def grouping_labels(expr: str) -> set[str]:
    out = set()
    for m in re.finditer(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)", expr):
        out |= {x.strip() for x in m.group(1).split(",") if x.strip()}
    return out


def load(path):
    return json.loads(path.read_text())


def test_there_are_two_dashboards():
    assert [p.name for p in DASHBOARDS] == ["workpool-overview.json", "workpool-pool.json"]


def test_dashboards_are_generated_and_current():
    r = subprocess.run([sys.executable, str(REPO / "monitoring" / "dashboards.py"), "--check"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_metric_name_extraction():
    """The extractor used below finds metrics and nothing else."""
    assert metric_names('sum by (namespace, workpool) (rate(workpool_worker_tasks_total{outcome="x"}[5m]))') == {
        "workpool_worker_tasks_total"}
    assert metric_names("histogram_quantile(0.9, sum by (le) (rate(a_bucket[1m]))) / b") == {"a_bucket", "b"}
    assert metric_names("count(x == 0) or vector(0)") == {"x"}
    assert metric_names("min by (namespace, workpool) (up_down) and on (namespace) y > 0") == {"up_down", "y"}


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_structure(path):
    dash = load(path)
    assert dash["uid"] and len(dash["uid"]) <= 40
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    for name in ("namespace", "workpool"):
        assert variables[name]["type"] == "query"
        assert variables[name]["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
    text = path.read_text()
    ids = [p["id"] for p in panels(dash)]
    assert len(ids) == len(set(ids)), "duplicate panel ids"
    for p in panels(dash):
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24, f"{p['title']} is off the grid"
        if p["type"] == "row":
            continue
        assert p["title"] and p.get("description"), f"panel {p.get('title')} needs a title and a description"
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, f"{p['title']}: hard-coded datasource"
        assert p["targets"], f"{p['title']} has no query"
        for t in p["targets"]:
            assert t["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
    # no datasource UID anywhere but the variable
    uids = set(re.findall(r'"uid":\s*"([^"]*)"', text))
    assert uids <= {"${datasource}", dash["uid"]}, uids
    # no overlapping panels
    cells = set()
    for p in panels(dash):
        g = p["gridPos"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{p['title']} overlaps another panel"
                cells.add((x, y))


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_queries_use_only_known_metrics_and_the_variables(path):
    dash = load(path)
    problems = []
    for p, expr in exprs(dash):
        names = metric_names(expr)
        if not names:
            problems.append(f"{p['title']}: {expr} selects no metric")
        if names - SERIES:
            problems.append(f"{p['title']}: unknown metric(s) {sorted(names - SERIES)} in {expr}")
        if grouping_labels(expr) - LABELS:
            problems.append(f"{p['title']}: unknown label(s) {sorted(grouping_labels(expr) - LABELS)} in {expr}")
        # every pool metric is filtered by the dashboard's variables
        for sel in re.finditer(r"(workpool_[a-z_]+)(\{[^}]*\})?", expr):
            name, matcher = sel.group(1), sel.group(2) or ""
            if name in ("workpool_leader",) or name.startswith("workpool_reconcile_duration_seconds"):
                continue  # operator-wide series without pool labels
            if 'namespace=~"$namespace"' not in matcher or 'workpool=~"$workpool"' not in matcher:
                problems.append(f"{p['title']}: {name} is not filtered by $namespace and $workpool")
        for m in re.finditer(r"rate\([^\[]*\[([^\]]*)\]\)", expr):
            if m.group(1) != "$__rate_interval":
                problems.append(f"{p['title']}: rate window {m.group(1)} (use $__rate_interval)")
    assert not problems, "\n".join(problems)


def test_every_metric_is_on_a_dashboard():
    used = set()
    for path in DASHBOARDS:
        for _, expr in exprs(load(path)):
            used |= metric_names(expr)
    shown = {re.sub(r"_(bucket|sum|count)$", "", n) if any(n.startswith(h) for h in HISTOGRAMS) else n for n in used}
    assert GAUGES | COUNTERS | HISTOGRAMS <= shown, f"not on any dashboard: {sorted((GAUGES | COUNTERS | HISTOGRAMS) - shown)}"


def test_every_query_is_valid_promql_for_a_real_prometheus():
    queries = []
    for path in DASHBOARDS:
        dash = load(path)
        for p, expr in exprs(dash):
            queries.append((f"{path.name}: {p['title']}", substitute(expr)))
        for v in dash["templating"]["list"]:
            if v["type"] == "query":
                q = v["query"]["query"]
                m = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", q)
                assert m, f"variable {v['name']}: {q}"
                queries.append((f"{path.name}: variable {v['name']}", substitute(m.group(1))))
    with prometheus() as prom:
        # the probe itself can fail: a broken expression is refused
        assert prom.query("sum(rate(x[1m])")["status"] == "error"
        problems = []
        for where, q in queries:
            answer = prom.query(q)
            if answer.get("status") != "success":
                problems.append(f"{where}: {answer.get('error')}: {q}")
    assert queries and not problems, "\n".join(problems)
