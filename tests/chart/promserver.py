"""A real Prometheus (Debian's `prometheus`) on a free loopback port, with a temp data
dir, for checking that PromQL expressions parse and evaluate."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from contextlib import contextmanager
from pathlib import Path

from conftest import missing
from procs import free_port, wait_port


class Prometheus:
    def __init__(self, base: str) -> None:
        self.base = base

    def query(self, expr: str, at: float | None = None) -> dict:
        """GET /api/v1/query; returns the decoded answer, success or error."""
        params = {"query": expr}
        if at is not None:
            params["time"] = f"{at:.3f}"
        url = f"{self.base}/api/v1/query?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=10) as r:
                body = r.read()
        except urllib.error.HTTPError as e:  # 400/422 carry a JSON error body
            body = e.read()
        try:
            return json.loads(body)
        except ValueError:  # e.g. 503 text while starting
            return {"status": "unavailable", "error": body.decode(errors="replace")[:200]}


def kubernetes_sd_prometheus() -> str:
    """A Prometheus with `kubernetes_sd_configs`. Debian's package is built without it
    (its Kubernetes client is not packaged), so scripts/chart-test.sh builds upstream's
    from its Go module (the Go module proxy; build tags remove_all_sd,
    enable_kubernetes_sd) and names it in WORKPOOL_PROMETHEUS_K8S_BIN."""
    exe = os.environ.get("WORKPOOL_PROMETHEUS_K8S_BIN")
    if not exe or not os.access(exe, os.X_OK):
        missing("no Prometheus with kubernetes_sd_configs (WORKPOOL_PROMETHEUS_K8S_BIN is not set; Debian's "
                "prometheus lacks it)", "scripts/chart-test.sh builds one with Go")
    return exe  # type: ignore[return-value]


@contextmanager
def prometheus(config: str = "global: {scrape_interval: 1s}\n", rule_files: list[Path] | None = None,
               exe: str | None = None):
    exe = exe or shutil.which("prometheus")
    if not exe:
        missing("prometheus is not installed (Debian package `prometheus`)")
    port = free_port()
    with tempfile.TemporaryDirectory() as d:
        cfg = Path(d) / "prometheus.yml"
        text = config
        if rule_files:
            text += "rule_files:\n" + "".join(f"  - {p}\n" for p in rule_files)
        cfg.write_text(text)
        log = open(Path(d) / "log", "w")
        proc = subprocess.Popen(
            [exe, f"--config.file={cfg}", f"--storage.tsdb.path={d}/data", f"--web.listen-address=127.0.0.1:{port}",
             "--storage.tsdb.retention.time=1h"],
            stdout=log, stderr=subprocess.STDOUT,
        )
        try:
            try:
                wait_port(port, timeout=30)
            except TimeoutError:
                log.flush()
                raise TimeoutError(f"{exe} did not listen: " + (Path(d) / "log").read_text()[-2000:]) from None
            prom = Prometheus(f"http://127.0.0.1:{port}")
            deadline = time.monotonic() + 30
            while prom.query("1").get("status") != "success":
                if time.monotonic() > deadline:
                    raise TimeoutError("prometheus did not become ready: " + (Path(d) / "log").read_text()[-2000:])
                time.sleep(0.2)
            yield prom
        finally:
            proc.terminate()
            proc.wait(timeout=20)
            log.close()
