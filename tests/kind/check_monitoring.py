#!/usr/bin/env python3
"""Step 7 of the kind quickstart (scripts/kind-quickstart.sh): the chart's ServiceMonitor,
PodMonitor and PrometheusRule, picked up by the Prometheus Operator, make a real
Prometheus (scripts/kind-monitoring.sh)
  - scrape the operator (through its Service) and the worker pods of the example pools,
  - load every alert rule of the chart, healthy,
  - and answer every query of the chart's dashboards with data, for a pool that was made
    to do what the panels show: scale up into a pod quota (the refused pods are reconcile
    errors), run busy, lose a pod (a replacement), lose its Redis for a moment (queue
    probe errors), and dead-letter bad tasks. That pool runs in namespace wp-dashboards
    with its own Redis in wp-dashboards-redis; both are deleted at the end.
Prometheus is reached through the API server's service proxy; no port is forwarded.
Exit status 0 only when everything held; what failed is printed."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DASHBOARDS = sorted((REPO / "charts" / "workpool" / "dashboards").glob("*.json"))
WORKER_IMAGE = "ghcr.io/workpool-dev/workpool-worker:0.1.0"
REDIS_IMAGE = "ghcr.io/workpool-dev/workpool-redis:0.1.0"
POOL_NS, REDIS_NS, POOL = "wp-dashboards", "wp-dashboards-redis", "thumbs"
PROM = "/api/v1/namespaces/monitoring/services/prometheus-operated:web/proxy"
# Grafana's $__rate_interval: 4 x the monitors' scrape interval (--scrape-interval).
RATE_INTERVAL = "2m"


class Kube:
    def __init__(self, kubeconfig: str):
        self.base = ["kubectl", "--kubeconfig", kubeconfig]

    def __call__(self, *args: str, input: str | None = None, check: bool = True) -> str:
        r = subprocess.run(self.base + list(args), input=input, capture_output=True, text=True, timeout=300)
        if check and r.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)}: {r.stderr.strip()}")
        return r.stdout

    def json(self, *args: str):
        return json.loads(self(*args, "-o", "json"))

    def apply(self, obj: dict) -> None:
        self("apply", "-f", "-", input=json.dumps(obj))

    def prom(self, path: str, **params: str):
        query = ("?" + urllib.parse.urlencode(params)) if params else ""
        return json.loads(self("get", "--raw", f"{PROM}{path}{query}"))


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] check-monitoring: {msg}", file=sys.stderr, flush=True)


def wait(what: str, timeout: float, probe, interval: float = 2.0):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = probe()
        except RuntimeError as e:  # a pod or Prometheus not there yet
            last = str(e)
        else:
            if last:
                return last
        time.sleep(interval)
    raise AssertionError(f"{what}: not within {timeout:.0f}s (last: {str(last)[:300]})")


def query(k: Kube, expr: str) -> list:
    answer = k.prom("/api/v1/query", query=expr)
    if answer.get("status") != "success":
        raise RuntimeError(f"{expr}: {answer}")
    return answer["data"]["result"]


def check_targets(k: Kube, namespace: str, pools: list[str]) -> None:
    def up():
        active = k.prom("/api/v1/targets", state="active")["data"]["activeTargets"]
        operator = [t for t in active if t["labels"].get("job", "").endswith("-operator-metrics")
                    and t["labels"].get("namespace") == namespace and t["health"] == "up"]
        workers = {t["labels"].get("workpool") for t in active
                   if t["scrapePool"].startswith("podMonitor/") and t["health"] == "up"}
        return operator and set(pools) <= workers and (operator, workers)

    operator, workers = wait("the operator and the pools' workers as healthy targets", 180, up, 5)
    log(f"targets up: operator {[t['scrapeUrl'] for t in operator]}, worker pods of pools {sorted(workers)}")


def check_rules(k: Kube, namespace: str) -> None:
    rules = k.json("-n", namespace, "get", "prometheusrules")["items"]
    assert rules, f"no PrometheusRule in {namespace} (metrics.prometheusRule.enabled)"
    wanted = {r.get("alert") or r.get("record") for pr in rules for g in pr["spec"]["groups"] for r in g["rules"]}

    def loaded():
        groups = k.prom("/api/v1/rules")["data"]["groups"]
        have = {r["name"]: r for g in groups for r in g["rules"]}
        return wanted <= set(have) and have

    have = wait(f"the chart's {len(wanted)} rules loaded", 180, loaded, 5)
    unhealthy = [f"{n}: {have[n].get('lastError')}" for n in wanted if have[n].get("health") not in ("ok", "unknown")]
    assert not unhealthy, f"rules that fail to evaluate: {unhealthy}"
    wait("every rule evaluated once", 60,
         lambda: all(r.get("health") == "ok" for g in k.prom("/api/v1/rules")["data"]["groups"]
                     for r in g["rules"] if r["name"] in wanted), 5)
    log(f"{len(wanted)} rules of the chart loaded and evaluating: {sorted(wanted)}")


def panel_queries() -> list[tuple[str, str, str]]:
    out = []
    for path in DASHBOARDS:
        dash = json.loads(path.read_text())
        panels = [p for top in dash["panels"] for p in [top, *top.get("panels", [])]]
        for p in panels:
            for t in p.get("targets", []):
                q = (t["expr"].replace("$__rate_interval", RATE_INTERVAL).replace("$namespace", POOL_NS)
                     .replace("$workpool", POOL))
                assert "$" not in q, f"{path.name}: {p['title']}: a Grafana variable this check does not know: {q}"
                out.append((path.name, p["title"], q))
    return out


def pool_manifest() -> dict:
    return {
        "apiVersion": "workpool.dev/v1alpha1", "kind": "WorkPool", "metadata": {"name": POOL, "namespace": POOL_NS},
        "spec": {
            "queue": {"redis": {"urlSecretRef": {"name": "redis", "key": "url"}}},
            "delivery": {"visibilityTimeoutSeconds": 30, "maxDeliveries": 1},
            "autoscaling": {"minReplicas": 1, "maxReplicas": 5, "targetBacklogPerReplica": 10},
            "template": {"spec": {
                "terminationGracePeriodSeconds": 5,
                "containers": [{
                    "name": "worker", "image": WORKER_IMAGE, "args": ["run", "--builtin", "sleep"],
                    "env": [{"name": "WORKPOOL_CONCURRENCY", "value": "4"},
                            {"name": "WORKPOOL_METRICS_ADDR", "value": "0.0.0.0:9090"}],
                    "ports": [{"name": "metrics", "containerPort": 9090}],
                    "readinessProbe": {"httpGet": {"path": "/readyz", "port": "metrics"}, "periodSeconds": 2},
                    "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}, "limits": {"memory": "128Mi"}},
                }],
            }},
        },
    }


def redis_objects() -> list[dict]:
    labels = {"app": "wp-dashboards-redis"}
    return [
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "redis", "namespace": REDIS_NS},
         "spec": {"replicas": 1, "selector": {"matchLabels": labels}, "template": {
             "metadata": {"labels": labels},
             "spec": {"containers": [{"name": "redis", "image": REDIS_IMAGE, "ports": [{"containerPort": 6379}],
                                      "readinessProbe": {"tcpSocket": {"port": 6379}, "periodSeconds": 1}}]}}}},
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "redis", "namespace": REDIS_NS},
         "spec": {"selector": labels, "ports": [{"port": 6379}]}},
    ]


def submit(k: Kube, name: str, url: str, payload: str, count: int) -> None:
    k("-n", REDIS_NS, "delete", "pod", name, "--ignore-not-found", "--wait=true")
    k("-n", REDIS_NS, "run", name, "--restart=Never", f"--image={WORKER_IMAGE}", "--env", f"WORKPOOL_REDIS_URL={url}",
      "--", "submit", "--stream", POOL, "--payload", payload, "--count", str(count))
    k("-n", REDIS_NS, "wait", "--for=jsonpath={.status.phase}=Succeeded", f"pod/{name}", "--timeout=120s")


def check_dashboards(k: Kube) -> None:
    url = f"redis://redis.{REDIS_NS}:6379/0"
    for ns in (POOL_NS, REDIS_NS):
        k("create", "namespace", ns)
    try:
        for obj in redis_objects():
            k.apply(obj)
        k("-n", REDIS_NS, "rollout", "status", "deployment/redis", "--timeout=120s")
        k("-n", POOL_NS, "create", "secret", "generic", "redis", f"--from-literal=url={url}")
        # Three pods at most: the autoscaler's fourth and fifth are refused by the API
        # server (exceeded quota), which the operator counts as reconcile errors.
        k.apply({"apiVersion": "v1", "kind": "ResourceQuota", "metadata": {"name": "pods", "namespace": POOL_NS},
                 "spec": {"hard": {"pods": "3"}}})
        k.apply(pool_manifest())
        sel = f'namespace="{POOL_NS}",workpool="{POOL}"'
        wait("a worker pod of the pool scraped", 180, lambda: query(k, f'up{{{sel}}} == 1'), 5)
        submit(k, "submit-work", url, '{"ms": 700}', 240)
        submit(k, "submit-bad", url, '"not an object"', 6)
        for expr, what in ((f'workpool_scale_events_total{{{sel},direction="up"}}', "a scale-up event"),
                           (f"workpool_reconcile_errors_total{{{sel}}}", "reconcile errors (pods over the quota)"),
                           (f"workpool_busy_replicas{{{sel}}} > 0", "busy replicas"),
                           (f"workpool_queue_dead_letters{{{sel}}} > 0", "dead letters")):
            wait(what, 120, lambda: query(k, expr), 5)
            log(f"Prometheus has {what}")
        # a worker pod deleted by someone else: the operator replaces it
        pods = k.json("-n", POOL_NS, "get", "pods", "-l", f"workpool.dev/pool={POOL}")["items"]
        k("-n", POOL_NS, "delete", "pod", pods[0]["metadata"]["name"], "--wait=false")
        wait("a pod replacement", 120, lambda: query(k, f"workpool_pod_replacements_total{{{sel}}}"), 5)
        # the pool's Redis goes away: queue probes fail meanwhile. It stays away until
        # Prometheus has the errors (a deleted pod's replacement can be up before the
        # operator's next read, and then no read ever fails), then comes back.
        k("-n", REDIS_NS, "scale", "deployment/redis", "--replicas=0")
        wait("queue probe errors while Redis is away", 120,
             lambda: query(k, f"workpool_queue_probe_errors_total{{{sel}}}"), 5)
        k("-n", REDIS_NS, "scale", "deployment/redis", "--replicas=1")
        k("-n", REDIS_NS, "rollout", "status", "deployment/redis", "--timeout=120s")
        wait("the queue readable again", 120, lambda: query(k, f"workpool_queue_up{{{sel}}} == 1"), 5)
        log("the pool scaled into its quota, lost a pod and its Redis for a moment")
        # a steady trickle after the incidents, so that rates have recent samples
        for i in range(3):
            submit(k, f"submit-trickle-{i}", url, '{"ms": 200}', 40)
            submit(k, f"submit-trickle-bad-{i}", url, '"not an object"', 1)
            time.sleep(10)
        queries = panel_queries()

        def empty_panels():
            return [f"{d}: {t}: {q}" for d, t, q in queries if not query(k, q)]

        # rates need two scrapes of each series within their window: give them a little time
        deadline = time.monotonic() + 120
        while (empty := empty_panels()) and time.monotonic() < deadline:
            time.sleep(10)
        assert not empty, f"{len(empty)} of {len(queries)} dashboard queries without data:\n" + "\n".join(empty)
        log(f"all {len(queries)} queries of {len(DASHBOARDS)} dashboards return data")
    finally:
        for ns in (POOL_NS, REDIS_NS):
            k("delete", "namespace", ns, "--wait=false", "--ignore-not-found", check=False)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kubeconfig", required=True)
    ap.add_argument("--namespace", default="workpool-system", help="the release's namespace")
    ap.add_argument("--release", default="workpool")
    ap.add_argument("--pools", default="sleepy,shout", help="example pools whose workers must be scraped")
    ap.add_argument("--scrape-interval", type=int, default=30, metavar="SECONDS",
                    help="the interval of the chart's ServiceMonitor and PodMonitor (metrics.*.interval)")
    a = ap.parse_args()
    global RATE_INTERVAL
    RATE_INTERVAL = f"{4 * a.scrape_interval}s"
    k = Kube(a.kubeconfig)
    try:
        check_targets(k, a.namespace, a.pools.split(","))
        check_rules(k, a.namespace)
        check_dashboards(k)
    except (AssertionError, RuntimeError) as e:
        print(f"check-monitoring: FAILED: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
