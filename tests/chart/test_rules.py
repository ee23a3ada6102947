"""The alerting rules: valid for promtool, unit-tested with `promtool test rules`, the
same rules in the chart's PrometheusRule, loaded by a real Prometheus, documented."""

from __future__ import annotations

import re
import subprocess

import yaml

from conftest import CHART, MATRIX, REPO, need_tool, render
from promserver import prometheus
from test_dashboards import SERIES, metric_names

RULES = CHART / "files" / "alerts.yaml"
RULE_TESTS = REPO / "monitoring" / "alerts.test.yaml"


def alerts():
    return [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]


def test_promtool_check_rules():
    promtool = need_tool("promtool")
    r = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"SUCCESS: {len(alerts())} rules found" in r.stdout + r.stderr


def test_promtool_test_rules():
    promtool = need_tool("promtool")
    r = subprocess.run([promtool, "test", "rules", RULE_TESTS.name], cwd=RULE_TESTS.parent,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS" in r.stdout + r.stderr


def test_every_alert_is_unit_tested_and_documented():
    tests = yaml.safe_load(RULE_TESTS.read_text())
    tested = {t["alertname"] for case in tests["tests"] for t in case.get("alert_rule_test", []) if t.get("exp_alerts")}
    names = {a["alert"] for a in alerts()}
    assert names == tested, f"alerts never seen firing in {RULE_TESTS.name}: {sorted(names - tested)}"
    docs = (REPO / "docs" / "dashboards.md").read_text()
    for a in alerts():
        assert a["labels"]["severity"] in ("warning", "critical")
        assert {"summary", "description", "runbook_url"} <= set(a["annotations"]), a["alert"]
        anchor = a["annotations"]["runbook_url"].rsplit("#", 1)[1]
        assert anchor == a["alert"].lower()
        assert re.search(rf"^#+ `?{a['alert']}`?\s*$", docs, re.M), f"docs/dashboards.md has no section {a['alert']}"


def test_alerts_use_only_known_metrics():
    for a in alerts():
        names = metric_names(a["expr"])
        assert names and names <= SERIES, f"{a['alert']}: {sorted(names - SERIES)}"


def test_prometheus_rule_in_the_chart_is_the_rules_file():
    pr = render(MATRIX["monitoring-on"]).one("PrometheusRule").obj
    assert pr["spec"] == yaml.safe_load(RULES.read_text())
    assert pr["apiVersion"] == "monitoring.coreos.com/v1"
    for g in pr["spec"]["groups"]:
        assert g["name"] and g["rules"]


def test_a_real_prometheus_loads_the_rules():
    with prometheus(rule_files=[RULES]) as prom:
        answer = prom.query("ALERTS")
        assert answer["status"] == "success"
        import json
        import urllib.request

        with urllib.request.urlopen(f"{prom.base}/api/v1/rules", timeout=10) as r:
            rules = json.loads(r.read())
    loaded = {r["name"] for g in rules["data"]["groups"] for r in g["rules"]}
    assert loaded == {a["alert"] for a in alerts()}
    assert all(r["health"] != "err" for g in rules["data"]["groups"] for r in g["rules"])
