"""What runs against the installed release (install.py's `while_installed`), on the real
test cluster:

* `examples`: `kubectl apply -f examples/` in a namespace enforcing the `restricted` Pod
  Security Standard creates the example pools; tasks submitted to the bundled Redis are
  drained by their worker pods (the `--exec` example's output is in its pod's log).
* `dashboards`: a real Prometheus (Debian's) discovers the operator pod and the worker
  pods with `kubernetes_sd_configs` (role pod) against the test control plane (the admin
  client certificate of the kubeconfig) and scrapes them by pod IP (the host routes the
  node's pod CIDR through the node); the labels are the ones the chart's ServiceMonitor
  and PodMonitor give (namespace, pod, workpool; honor_labels for the operator). A pool
  works through tasks, scales up into a ResourceQuota (the operator's pod creations are
  refused: reconcile errors), loses a pod (a replacement) and its Redis for a moment
  (queue probe errors); then every panel query of every dashboard must return data,
  `promtool check metrics` must accept the operator's and a worker's /metrics, and
  monitoring/render_dashboards.py draws the dashboards from that Prometheus.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from conftest import REPO, need_tool
from procs import worker_bin

EXAMPLES_NS = "workpool-examples"
JOBS_NS, POOL = "jobs", "thumbs"
RELEASE_LABEL = "app.kubernetes.io/instance"


def _restricted(k, namespace: str) -> None:
    from install import restricted_namespace

    restricted_namespace(k, namespace)


def redis_urls(k, namespace: str, release: str) -> tuple[str, str]:
    """(the URL pods use: the Service's DNS name, from the chart's Secret; the URL this
    host uses: the Redis pod's IP, routed through the node)."""
    sel = f"{RELEASE_LABEL}={release},app.kubernetes.io/component=redis"
    secret = next(s for s in k.json("-n", namespace, "get", "secrets", "-l", sel)["items"]
                  if "redis-url" in (s.get("data") or {}))
    url = base64.b64decode(secret["data"]["redis-url"]).decode()
    password = base64.b64decode(secret["data"]["redis-password"]).decode()
    deadline = time.monotonic() + 120
    while True:
        pods = [p for p in k.json("-n", namespace, "get", "pods", "-l", sel)["items"]
                if p["status"].get("podIP") and any(c.get("ready") for c in p["status"].get("containerStatuses", []))]
        if pods:
            return url, f"redis://:{password}@{pods[0]['status']['podIP']}:6379/0"
        if time.monotonic() > deadline:
            raise TimeoutError("the bundled Redis pod is not ready")
        time.sleep(1)


def pool_secret(k, namespace: str, url: str) -> None:
    """The Secret the examples name (`workpool-redis`, key `url`)."""
    k("-n", namespace, "create", "secret", "generic", "workpool-redis", f"--from-literal=url={url}")


def submit(host_url: str, stream: str, payload: str, count: int) -> None:
    r = subprocess.run([worker_bin(), "submit", "--redis-url", host_url, "--stream", stream, "--payload", payload,
                        "--count", str(count)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, f"submit to {stream}: {r.stderr}"


def group_info(host_url: str, stream: str) -> list[dict[str, str]]:
    """XINFO GROUPS of a stream, through redis-cli (raw output: one value a line)."""
    # redis-cli sends no AUTH for a URL with an empty user name: name the default user
    r = subprocess.run([need_tool("redis-cli"), "-u", host_url.replace("redis://:", "redis://default:", 1), "--no-auth-warning", "XINFO", "GROUPS", stream],
                       capture_output=True, text=True, timeout=10)
    lines = r.stdout.splitlines()
    groups, cur = [], {}
    for key, value in zip(lines[::2], lines[1::2]):
        if key == "name" and cur:
            groups.append(cur)
            cur = {}
        cur[key] = value
    if cur:
        groups.append(cur)
    return groups


def wait_pool_pods(k, namespace: str, want: dict[str, int], timeout: float = 180) -> None:
    """Waits until each pool has `want[pool]` Running and Ready pods."""
    deadline = time.monotonic() + timeout
    while True:
        pods = k.json("-n", namespace, "get", "pods", "-l", "workpool.dev/pool")["items"]
        ready: dict[str, int] = {}
        for p in pods:
            if p["metadata"].get("deletionTimestamp") or p["status"].get("phase") != "Running":
                continue
            if all(c.get("ready") for c in p["status"].get("containerStatuses", [])):
                pool = p["metadata"]["labels"]["workpool.dev/pool"]
                ready[pool] = ready.get(pool, 0) + 1
        if all(ready.get(pool, 0) >= n for pool, n in want.items()):
            return
        if time.monotonic() > deadline:
            events = k("-n", namespace, "get", "events", "--sort-by=.lastTimestamp", check=False)
            raise TimeoutError(f"pods of {want} not ready in {namespace}: ready {ready}\n{events[-3000:]}")
        time.sleep(1)


def wait_drained(host_url: str, stream: str, group: str, at_least: int, timeout: float = 180) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    info: dict[str, str] = {}
    while time.monotonic() < deadline:
        info = next((g for g in group_info(host_url, stream) if g.get("name") == group), {})
        if (int(info.get("entries-read") or 0) >= at_least and info.get("lag") == "0"
                and info.get("pending") == "0"):
            return info
        time.sleep(1)
    raise TimeoutError(f"{stream}/{group} not drained after {timeout}s: {info}")


def delete_namespace(k, namespace: str) -> None:
    """Deletes a namespace of pools while the operator still runs (their finalizers need it)."""
    k("delete", "namespace", namespace, "--ignore-not-found", "--wait=true", "--timeout=180s", timeout=200)


# --- the examples ---------------------------------------------------------------------

def examples(k, rep, namespace: str, release: str) -> None:
    url, host_url = redis_urls(k, namespace, release)
    _restricted(k, EXAMPLES_NS)
    try:
        pool_secret(k, EXAMPLES_NS, url)
        out = k("-n", EXAMPLES_NS, "apply", "-f", str(REPO / "examples"))
        pools = {p["metadata"]["name"]: p for p in k.json("-n", EXAMPLES_NS, "get", "workpools")["items"]}
        assert {"sleepy", "shout"} <= set(pools), f"kubectl apply -f examples/ created {sorted(pools)}: {out}"
        wait_pool_pods(k, EXAMPLES_NS, {name: p["spec"].get("replicas") or 1 for name, p in pools.items()})
        rep.step(f"kubectl apply -f examples/: pools {sorted(pools)} have their worker pods ready")
        drained = {}
        for name, p in sorted(pools.items()):
            redis = p["spec"]["queue"]["redis"]
            stream, group = redis.get("stream") or name, redis.get("group") or name
            payload = '{"ms": 100}' if name == "sleepy" else '"hello from the chart test"'
            submit(host_url, stream, payload, 30)
            info = wait_drained(host_url, stream, group, 30)
            # drained by handlers that succeeded (the script's exit 0), as the workers count them
            succeeded = sum(worker_count(ip, "succeeded") for ip in pod_ips(k, EXAMPLES_NS, f"workpool.dev/pool={name}"))
            assert succeeded >= 30, f"{name}: {info}, succeeded {succeeded}"
            drained[name] = succeeded
        rep.found["examples"] = drained
        rep.step(f"the examples' workers drained the tasks submitted: {drained}")
    finally:
        delete_namespace(k, EXAMPLES_NS)
        rep.step(f"namespace {EXAMPLES_NS} deleted (pools finalized by the operator)")


# --- the dashboards with data ----------------------------------------------------------

def _tls_files(kubeconfig: str, workdir: Path) -> tuple[str, dict[str, str]]:
    """(API server URL, tls_config) for Prometheus from a kubeconfig's current context."""
    cfg = yaml.safe_load(Path(kubeconfig).read_text())
    ctx = next(c["context"] for c in cfg["contexts"] if c["name"] == cfg["current-context"])
    cluster = next(c["cluster"] for c in cfg["clusters"] if c["name"] == ctx["cluster"])
    user = next(u["user"] for u in cfg["users"] if u["name"] == ctx["user"])
    tls: dict[str, str] = {}
    for src, data_key, dst in ((cluster, "certificate-authority", "ca_file"), (user, "client-certificate", "cert_file"),
                               (user, "client-key", "key_file")):
        if src.get(data_key):
            tls[dst] = src[data_key]
        elif src.get(f"{data_key}-data"):
            path = workdir / dst
            path.write_bytes(base64.b64decode(src[f"{data_key}-data"]))
            tls[dst] = str(path)
    if user.get("token"):
        tls["bearer_token"] = user["token"]
    return cluster["server"], tls


def prometheus_config(kubeconfig: str, workdir: Path, operator_ns: str, release: str) -> str:
    server, tls = _tls_files(kubeconfig, workdir)
    token = tls.pop("bearer_token", None)
    sd = {"role": "pod", "api_server": server, "tls_config": tls}
    if token:
        sd["authorization"] = {"credentials": token}
    operator_sd = {**sd, "namespaces": {"names": [operator_ns]}}
    config = {
        "global": {"scrape_interval": "2s", "scrape_timeout": "2s", "evaluation_interval": "2s"},
        "scrape_configs": [
            {   # as the chart's ServiceMonitor: the operator's port `http`, its own labels kept
                "job_name": "workpool-operator",
                "honor_labels": True,
                "kubernetes_sd_configs": [operator_sd],
                "relabel_configs": [
                    {"source_labels": ["__meta_kubernetes_pod_label_app_kubernetes_io_instance",
                                       "__meta_kubernetes_pod_label_app_kubernetes_io_component",
                                       "__meta_kubernetes_pod_container_port_name"],
                     "regex": f"{release};operator;http", "action": "keep"},
                    {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
                    {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
                ],
            },
            {   # as the chart's PodMonitor: every pod labelled workpool.dev/pool, port `metrics`
                "job_name": "workpool-workers",
                "kubernetes_sd_configs": [sd],
                "relabel_configs": [
                    {"source_labels": ["__meta_kubernetes_pod_label_workpool_dev_pool"], "regex": ".+",
                     "action": "keep"},
                    {"source_labels": ["__meta_kubernetes_pod_container_port_name"], "regex": "metrics",
                     "action": "keep"},
                    {"source_labels": ["__meta_kubernetes_pod_phase"], "regex": "Running", "action": "keep"},
                    {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
                    {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
                    {"source_labels": ["__meta_kubernetes_pod_label_workpool_dev_pool"], "target_label": "workpool"},
                ],
            },
        ],
    }
    return yaml.safe_dump(config, sort_keys=False)


POOL_MANIFEST = {
    "apiVersion": "workpool.dev/v1alpha1", "kind": "WorkPool",
    "metadata": {"name": POOL},
    "spec": {
        "queue": {"redis": {"urlSecretRef": {"name": "workpool-redis", "key": "url"}}},
        "delivery": {"visibilityTimeoutSeconds": 30, "maxDeliveries": 1},
        "autoscaling": {"minReplicas": 1, "maxReplicas": 5, "targetBacklogPerReplica": 10},
        "template": {"spec": {
            "terminationGracePeriodSeconds": 5,
            "containers": [{
                "name": "worker",
                "image": "ghcr.io/workpool-dev/workpool-worker:0.1.0",
                "args": ["run", "--builtin", "sleep"],
                "env": [{"name": "WORKPOOL_CONCURRENCY", "value": "4"},
                        {"name": "WORKPOOL_METRICS_ADDR", "value": "0.0.0.0:9090"}],
                "ports": [{"name": "metrics", "containerPort": 9090}],
                "readinessProbe": {"httpGet": {"path": "/readyz", "port": "metrics"}, "periodSeconds": 2},
                "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}, "limits": {"memory": "128Mi"}},
            }],
        }},
    },
}


def _present(prom, expr: str) -> bool:
    a = prom.query(expr)
    return a.get("status") == "success" and bool(a["data"]["result"])


def _wait_for(prom, expr: str, timeout: float, what: str, nudge=None) -> None:
    deadline = time.monotonic() + timeout
    while not _present(prom, expr):
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {what} after {timeout}s ({expr})")
        if nudge:
            nudge()
        time.sleep(1)


def panel_queries(namespace: str, pool: str, rate_interval: str = "30s") -> list[tuple[str, str, str]]:
    from test_dashboards import DASHBOARDS, exprs, load

    out = []
    for path in DASHBOARDS:
        for panel, expr in exprs(load(path)):
            q = (expr.replace("$__rate_interval", rate_interval).replace("$namespace", namespace)
                 .replace("$workpool", pool))
            out.append((path.name, panel["title"], q))
    return out


def fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as r:
        return r.read().decode()


def promtool_check(text: str) -> str:
    r = subprocess.run([need_tool("promtool"), "check", "metrics"], input=text, capture_output=True, text=True)
    assert r.returncode == 0, f"promtool check metrics: {r.stdout}{r.stderr}"
    return r.stdout + r.stderr


def dashboards(k, rep, kubeconfig: str, namespace: str, release: str) -> None:
    from promserver import kubernetes_sd_prometheus, prometheus

    exe = kubernetes_sd_prometheus()
    url, host_url = redis_urls(k, namespace, release)
    _restricted(k, JOBS_NS)
    workdir = Path(tempfile.mkdtemp(prefix="workpool-prom-"))
    try:
        pool_secret(k, JOBS_NS, url)
        # Three pods at most: the autoscaler's fourth and fifth are refused by the API
        # server (403 exceeded quota), which the operator counts as reconcile errors.
        k("-n", JOBS_NS, "apply", "-f", "-", input=json.dumps({
            "apiVersion": "v1", "kind": "ResourceQuota", "metadata": {"name": "pods"},
            "spec": {"hard": {"pods": "3"}}}))
        k("-n", JOBS_NS, "apply", "-f", "-", input=json.dumps(POOL_MANIFEST))
        wait_pool_pods(k, JOBS_NS, {POOL: 1})
        with prometheus(prometheus_config(kubeconfig, workdir, namespace, release), exe=exe) as prom:
            _wait_for(prom, 'up{job="workpool-operator"} == 1', 60, "operator target up")
            _wait_for(prom, f'up{{job="workpool-workers",workpool="{POOL}"}} == 1', 60, "worker target up")
            rep.step("prometheus discovers and scrapes the operator and the worker pods by pod IP")
            # work: long enough tasks that the backlog asks for five pods; bad payloads
            # that fail and, with maxDeliveries 1, go to the dead-letter stream
            submit(host_url, POOL, '{"ms": 700}', 240)
            submit(host_url, POOL, '"not an object"', 6)
            _wait_for(prom, f'workpool_scale_events_total{{namespace="{JOBS_NS}",workpool="{POOL}",direction="up"}}',
                      90, "scale-up event")
            _wait_for(prom, f'workpool_reconcile_errors_total{{namespace="{JOBS_NS}",workpool="{POOL}"}}', 90,
                      "reconcile error (pods over the quota)")
            _wait_for(prom, f'workpool_busy_replicas{{namespace="{JOBS_NS}",workpool="{POOL}"}} > 0', 60,
                      "busy replicas")
            # a worker pod deleted by someone else: the operator replaces it
            pods = k.json("-n", JOBS_NS, "get", "pods", "-l", f"workpool.dev/pool={POOL}")["items"]
            k("-n", JOBS_NS, "delete", "pod", pods[0]["metadata"]["name"], "--wait=false")
            _wait_for(prom, f'workpool_pod_replacements_total{{namespace="{JOBS_NS}",workpool="{POOL}"}}', 60,
                      "pod replacement")
            # Redis restarts (its pod deleted; the StatefulSet brings it back on its volume):
            # the operator's queue probes fail meanwhile
            redis_pod = component_pod(k, namespace, release, "redis")
            k("-n", namespace, "delete", "pod", redis_pod, "--wait=false")
            _wait_for(prom, f'workpool_queue_probe_errors_total{{namespace="{JOBS_NS}",workpool="{POOL}"}}', 60,
                      "queue probe error while Redis restarts")
            k("-n", namespace, "rollout", "status", f"statefulset/{redis_pod.rsplit('-', 1)[0]}", "--timeout=120s",
              timeout=150)
            _wait_for(prom, f'workpool_queue_up{{namespace="{JOBS_NS}",workpool="{POOL}"}} == 1', 60,
                      "queue up again")
            rep.step("the pool scaled up into the quota, lost a pod and its Redis for a moment")
            # a steady trickle after the incidents, so that rates have recent samples
            _, host_url = redis_urls(k, namespace, release)
            for _ in range(6):
                submit(host_url, POOL, '{"ms": 200}', 20)
                submit(host_url, POOL, '"not an object"', 1)
                time.sleep(2)
            empty, checked = [], 0
            for dash, title, q in panel_queries(JOBS_NS, POOL):
                checked += 1
                answer = prom.query(q)
                if answer.get("status") != "success" or not answer["data"]["result"]:
                    empty.append(f"{dash}: {title}: {q} -> {json.dumps(answer)[:200]}")
            rep.found["panels_checked"] = checked
            rep.found["panels_empty"] = empty
            rep.step(f"{checked} panel queries evaluated, {len(empty)} without data")
            # promtool on the real /metrics of the operator pod and a worker pod
            op_ip = pod_ip(k, namespace, f"{RELEASE_LABEL}={release},app.kubernetes.io/component=operator")
            worker_ip = pod_ip(k, JOBS_NS, f"workpool.dev/pool={POOL}")
            op_text, worker_text = fetch(f"http://{op_ip}:8080/metrics"), fetch(f"http://{worker_ip}:9090/metrics")
            rep.found["promtool"] = {"operator": promtool_check(op_text), "worker": promtool_check(worker_text)}
            rep.found["metrics_text"] = {"operator": op_text, "worker": worker_text}
            rep.step("promtool check metrics accepts the operator's and a worker's /metrics")
            rep.found["pngs"] = render_pngs(prom.base)
            rep.step(f"dashboards drawn to {rep.found['pngs']['dir']}")
    finally:
        delete_namespace(k, JOBS_NS)
        rep.step(f"namespace {JOBS_NS} deleted")


def component_pod(k, namespace: str, release: str, component: str) -> str:
    sel = f"{RELEASE_LABEL}={release},app.kubernetes.io/component={component}"
    return k.json("-n", namespace, "get", "pods", "-l", sel)["items"][0]["metadata"]["name"]


def pod_ips(k, namespace: str, selector: str) -> list[str]:
    return [p["status"]["podIP"] for p in k.json("-n", namespace, "get", "pods", "-l", selector)["items"]
            if p["status"].get("phase") == "Running" and p["status"].get("podIP")]


def worker_count(ip: str, outcome: str) -> int:
    """workpool_worker_tasks_total{outcome} of the worker pod at ip (by its pod IP)."""
    for line in fetch(f"http://{ip}:9090/metrics").splitlines():
        if line.startswith(f'workpool_worker_tasks_total{{outcome="{outcome}"}}'):
            return int(float(line.split()[-1]))
    return 0


def pod_ip(k, namespace: str, selector: str) -> str:
    for p in k.json("-n", namespace, "get", "pods", "-l", selector)["items"]:
        if p["status"].get("phase") == "Running" and p["status"].get("podIP") and not p["metadata"].get(
                "deletionTimestamp"):
            return p["status"]["podIP"]
    raise AssertionError(f"no running pod {selector} in {namespace}")


def render_pngs(base: str) -> dict[str, Any]:
    """monitoring/render_dashboards.py draws each dashboard from this Prometheus.
    WORKPOOL_DASHBOARD_PNG_DIR keeps the pictures (docs/img/ for the docs)."""
    out = Path(os.environ.get("WORKPOOL_DASHBOARD_PNG_DIR") or tempfile.mkdtemp(prefix="workpool-dashboards-"))
    out.mkdir(parents=True, exist_ok=True)
    r = subprocess.run([sys.executable, str(REPO / "monitoring" / "render_dashboards.py"), "--prometheus", base,
                        "--out", str(out), "--var", f"namespace={JOBS_NS}", "--var", f"workpool={POOL}",
                        "--range", "3m"], capture_output=True, text=True, timeout=300)
    return {"dir": str(out), "rc": r.returncode, "stdout": r.stdout, "stderr": r.stderr}
