"""Every dashboard query returns data from a real Prometheus scraping real workers.

Two real workpool-worker processes (one pool, tasks submitted, some of them failing)
are scraped the way the chart's PodMonitor scrapes worker pods (labels namespace, pod,
workpool). The operator's series come from a stand-in exporter that serves the metric
names, types and labels the operator exports (the contract in docs/dashboards.md); when
the operator can run here, it replaces the stand-in. Also `promtool check metrics` on a
real worker's /metrics.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from conftest import REPO, missing, need_tool
from procs import free_port, process, redis_server, wait_port, worker_bin
from promserver import prometheus
from test_dashboards import DASHBOARDS, GAUGES, exprs, load

NS, POOL = "jobs", "thumbs"

OPERATOR_GAUGES = sorted(g for g in GAUGES if not g.startswith("workpool_worker_") and g != "workpool_leader")
# counters with the label values the operator uses
OPERATOR_COUNTERS = {
    "workpool_scale_events_total": ("direction", ["up", "down"]),
    "workpool_pod_replacements_total": ("reason", ["failed", "evicted"]),
    "workpool_reconcile_errors_total": ("reason", ["kube"]),
    "workpool_queue_probe_errors_total": ("reason", ["connection"]),
}


class OperatorStandIn:
    """Serves operator-shaped metrics whose counters grow on every scrape."""

    def __init__(self) -> None:
        self.scrapes = 0
        self.port = free_port()
        outer = self

        class H(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                outer.scrapes += 1
                body = outer.exposition().encode()
                self.send_response(200)
                self.send_header("content-type", "text/plain; version=0.0.4")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), H)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def exposition(self) -> str:
        n = self.scrapes
        lab = f'namespace="{NS}",workpool="{POOL}"'
        out = []
        # a pool that follows a sawtooth backlog
        desired = 2 + (n // 10) % 4
        ready = desired - (1 if n % 7 == 0 else 0)
        backlog = (n * 7) % 40
        busy = min(ready, backlog)
        values = {
            "workpool_desired_replicas": desired, "workpool_replicas": desired, "workpool_ready_replicas": ready,
            "workpool_busy_replicas": busy, "workpool_queue_backlog": backlog,
            "workpool_queue_pending": min(backlog, busy * 2), "workpool_queue_dead_letters": n // 15,
            "workpool_queue_oldest_pending_seconds": (n % 10) * 0.5, "workpool_queue_up": 1,
        }
        assert set(values) == set(OPERATOR_GAUGES)
        for g in OPERATOR_GAUGES:
            out += [f"# TYPE {g} gauge", f"{g}{{{lab}}} {values[g]}"]
        for c, (label, values) in OPERATOR_COUNTERS.items():
            out.append(f"# TYPE {c} counter")
            out += [f'{c}{{{lab},{label}="{v}"}} {n * (i + 1)}' for i, v in enumerate(values)]
        out += ["# TYPE workpool_leader gauge", "workpool_leader 1"]
        h = "workpool_reconcile_duration_seconds"
        out.append(f"# TYPE {h} histogram")
        for le, frac in (("0.005", 0.5), ("0.05", 0.9), ("0.5", 1.0), ("+Inf", 1.0)):
            out.append(f'{h}_bucket{{le="{le}"}} {int(10 * n * frac)}')
        out += [f"{h}_sum {0.01 * n}", f"{h}_count {10 * n}"]
        return "\n".join(out) + "\n"

    def close(self) -> None:
        self.server.shutdown()


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        return r.read().decode()


def submit(url: str, stream: str, payload: str, count: int) -> None:
    r = subprocess.run([worker_bin(), "submit", "--redis-url", url, "--stream", stream, "--payload", payload,
                        "--count", str(count)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr


def test_promtool_check_metrics_on_a_real_worker():
    promtool = need_tool("promtool")
    port = free_port()
    with redis_server() as url, process([worker_bin(), "run", "--redis-url", url, "--stream", "s", "--group", "s",
                                         "--consumer", "w1", "--metrics-addr", f"127.0.0.1:{port}", "--builtin", "noop"]):
        wait_port(port)
        text = scrape(port)
    r = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "workpool_worker_tasks_total" in text


def test_every_panel_query_returns_data():
    ports = [free_port(), free_port()]
    stand_in = OperatorStandIn()
    try:
        with redis_server() as url:
            workers = [
                process([worker_bin(), "run", "--redis-url", url, "--stream", POOL, "--group", POOL,
                         "--consumer", f"w{i}", "--metrics-addr", f"127.0.0.1:{port}", "--builtin", "sleep",
                         "--max-deliveries", "1"])
                for i, port in enumerate(ports)
            ]
            with workers[0], workers[1]:
                for port in ports:
                    wait_port(port)
                targets = [
                    f"      - targets: ['127.0.0.1:{port}']\n"
                    f"        labels: {{namespace: {NS}, workpool: {POOL}, pod: {POOL}-w{i}}}\n"
                    for i, port in enumerate(ports)
                ]
                config = (
                    "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
                    "scrape_configs:\n"
                    "  - job_name: workpool-workers\n"
                    "    static_configs:\n" + "".join(targets) +
                    "  - job_name: workpool-operator\n"
                    "    honor_labels: true\n"
                    "    static_configs:\n"
                    f"      - targets: ['127.0.0.1:{stand_in.port}']\n"
                    "        labels: {namespace: workpool-system}\n"
                )
                with prometheus(config) as prom:
                    # successes (with durations) and failures that are dead-lettered, spread
                    # over a few scrapes so that rates and quantiles have something to show
                    for i in range(8):
                        submit(url, POOL, f'{{"ms": {50 + 40 * i}}}', 5)
                        if i % 3 == 0:
                            submit(url, POOL, '"not an object"', 1)
                        time.sleep(1)
                    deadline = time.monotonic() + 60
                    while time.monotonic() < deadline:
                        done = prom.query(f'sum(workpool_worker_tasks_total{{outcome="succeeded",workpool="{POOL}"}})')
                        up = prom.query("sum(up)")
                        if (done["data"]["result"] and float(done["data"]["result"][0]["value"][1]) >= 40
                                and float(up["data"]["result"][0]["value"][1]) == 3 and stand_in.scrapes >= 5):
                            break
                        time.sleep(0.5)
                    time.sleep(2)  # a few more samples after the last task, for rate()
                    empty = []
                    checked = 0
                    for path in DASHBOARDS:
                        for panel, expr in exprs(load(path)):
                            q = (expr.replace("$__rate_interval", "30s").replace("$namespace", NS)
                                 .replace("$workpool", POOL))
                            answer = prom.query(q)
                            checked += 1
                            if answer["status"] != "success" or not answer["data"]["result"]:
                                empty.append(f"{path.name}: {panel['title']}: {q} -> {json.dumps(answer)[:200]}")
                    drawn = render_pngs(prom.base)
    finally:
        stand_in.close()
    assert checked > 40
    assert not empty, "panels without data:\n" + "\n".join(empty)
    for path in DASHBOARDS:
        png = drawn / f"{path.stem}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 30_000, png


def render_pngs(base: str) -> Path:
    """monitoring/render_dashboards.py draws each dashboard from this Prometheus; every
    panel must have something to draw. WORKPOOL_DASHBOARD_PNG_DIR keeps the pictures."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        missing("the Python package matplotlib is not installed")
    out = Path(os.environ.get("WORKPOOL_DASHBOARD_PNG_DIR") or tempfile.mkdtemp(prefix="workpool-dashboards-"))
    r = subprocess.run([sys.executable, str(REPO / "monitoring" / "render_dashboards.py"), "--prometheus", base,
                        "--out", str(out), "--var", f"namespace={NS}", "--var", f"workpool={POOL}", "--range", "2m"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.strip().splitlines()
    assert len(lines) == len(DASHBOARDS) and all(line.endswith("no data: none") for line in lines), r.stdout
    return out
