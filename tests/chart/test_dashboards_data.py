"""Every dashboard query returns data from a real Prometheus scraping the real operator
and real worker pods on the test cluster (tests/chart/incluster.py: kubernetes_sd_configs
against the test control plane, scrapes by pod IP, while a pool works, scales into a
quota, loses a pod and its Redis for a moment); `promtool check metrics` on the real
/metrics of the operator and of workers; the dashboards drawn to PNG from that
Prometheus. The cluster part needs the test cluster scripts/chart-test.sh starts."""

from __future__ import annotations

import subprocess
import urllib.request
from pathlib import Path

from conftest import missing, need_tool
from procs import free_port, process, redis_server, wait_port, worker_bin
from test_dashboards import DASHBOARDS

# series the operator must export once a pool has worked (docs/metrics.md)
OPERATOR_SERIES = (
    "workpool_desired_replicas", "workpool_replicas", "workpool_ready_replicas", "workpool_busy_replicas",
    "workpool_queue_backlog", "workpool_queue_up", "workpool_scale_events_total", "workpool_pod_replacements_total",
    "workpool_reconcile_errors_total", "workpool_queue_probe_errors_total", "workpool_reconcile_duration_seconds_bucket",
    "workpool_leader",
)


def test_promtool_check_metrics_on_a_local_worker():
    """The same check without a cluster: a worker process against a local redis-server."""
    promtool = need_tool("promtool")
    port = free_port()
    with redis_server() as url, process([worker_bin(), "run", "--redis-url", url, "--stream", "s", "--group", "s",
                                         "--consumer", "w1", "--metrics-addr", f"127.0.0.1:{port}", "--builtin", "noop"]):
        wait_port(port)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            text = r.read().decode()
    r = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "workpool_worker_tasks_total" in text


def _dashboards_part(rep):
    if "dashboards_missing" in rep.found:
        missing(rep.found["dashboards_missing"])
    assert "dashboards_error" not in rep.found, rep.found["dashboards_error"]
    return rep.found


def test_every_panel_query_returns_data_from_the_cluster(install_report):
    found = _dashboards_part(install_report)
    assert found["panels_checked"] > 40, found["panels_checked"]
    assert not found["panels_empty"], "panels without data:\n" + "\n".join(found["panels_empty"])


def test_promtool_check_metrics_on_the_operator_and_worker_pods(install_report):
    found = _dashboards_part(install_report)
    assert set(found["promtool"]) == {"operator", "worker"}
    operator, worker = found["metrics_text"]["operator"], found["metrics_text"]["worker"]
    for name in OPERATOR_SERIES:
        assert f"\n{name}" in operator, f"{name} missing from the operator's /metrics"
    assert 'workpool_worker_tasks_total{outcome="succeeded"}' in worker, worker[:2000]


def test_dashboards_drawn_from_the_cluster(install_report):
    pngs = _dashboards_part(install_report)["pngs"]
    assert pngs["rc"] == 0, pngs["stdout"] + pngs["stderr"]
    lines = pngs["stdout"].strip().splitlines()
    assert len(lines) == len(DASHBOARDS) and all(line.endswith("no data: none") for line in lines), pngs["stdout"]
    for path in DASHBOARDS:
        png = Path(pngs["dir"]) / f"{path.stem}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 30_000, png
