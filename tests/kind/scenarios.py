#!/usr/bin/env python3
"""End-to-end scenarios on the two-node kind cluster of `make kind` (tests/kind/run.sh runs
them): the chart's operator, running in the cluster, keeps real worker pods (containers
on both nodes) working through faults, and no task is lost.

Each scenario works in a namespace of its own (wp-kind-<scenario>-<random>) with its own
Redis (the workpool-redis image, pinned to the control-plane node so that draining the
worker node never takes the queue away) and a toolbox pod (the worker image) that submits
tasks and reads queue stats. What every scenario checks at the end: the stream is empty
(every task was acknowledged, which a worker does only after it ran), nothing is pending,
and the dead-letter stream is empty. Where a scenario sets maxDeliveries 1, a task that is
delivered a second time (interrupted, reclaimed) goes to the dead-letter stream instead of
running again, so "no dead letters" also says "no task was interrupted".

  worker-pod-deleted   two busy pods deleted, one gracefully, one forced (--grace-period=0):
                       replaced; the forced one's tasks are reclaimed after the visibility
                       timeout
  worker-killed        a busy worker process SIGKILLed on its node (the container dies,
                       the kubelet restarts it): its tasks are reclaimed
  autoscaling-burst    a burst on a pool at zero: up to maxReplicas across the nodes,
                       drained, back to zero
  node-drain           `kubectl drain` of the worker node while the pool drains its tasks:
                       the pool's pods are evicted (each finishes its tasks within the grace
                       period: maxDeliveries 1 and no dead letters), replaced on the control
                       plane; the node is uncordoned after

  tests/kind/scenarios.py --kubeconfig .kind/kubeconfig [SCENARIO...] [--repeat N]
Exit status 0 only when every run of every scenario passed."""

from __future__ import annotations

import argparse
import json
import os
import random
import string
import subprocess
import sys
import time
import traceback

WORKER_IMAGE = "ghcr.io/workpool-dev/workpool-worker:0.1.0"
REDIS_IMAGE = "ghcr.io/workpool-dev/workpool-redis:0.1.0"
CONTROL_PLANE = {"node-role.kubernetes.io/control-plane": ""}
PRIVATE_DOCKER = "/run/workpool-kind/docker.sock"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class Kube:
    def __init__(self, kubeconfig: str, namespace: str | None = None):
        self.kubeconfig, self.namespace = kubeconfig, namespace

    def __call__(self, *args: str, input: str | None = None, check: bool = True, timeout: float = 300) -> str:
        cmd = ["kubectl", "--kubeconfig", self.kubeconfig]
        if self.namespace:
            cmd += ["-n", self.namespace]
        r = subprocess.run(cmd + list(args), input=input, capture_output=True, text=True, timeout=timeout)
        if check and r.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)}: {r.stderr.strip() or r.stdout.strip()}")
        return r.stdout

    def json(self, *args: str):
        return json.loads(self(*args, "-o", "json"))

    def apply(self, obj: dict) -> None:
        self("apply", "-f", "-", input=json.dumps(obj))


def wait(what: str, timeout: float, probe, interval: float = 2.0):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"{what}: not within {timeout:.0f}s (last: {str(last)[:400]})")


def docker(*args: str) -> str:
    """docker, at the private engine of scripts/kind-docker.sh when DOCKER_HOST names none."""
    env = dict(os.environ)
    if "DOCKER_HOST" not in env and os.path.exists(PRIVATE_DOCKER):
        env["DOCKER_HOST"] = f"unix://{PRIVATE_DOCKER}"
    r = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=120, env=env)
    if r.returncode != 0:
        raise RuntimeError(f"docker {' '.join(args)}: {r.stderr.strip()}")
    return r.stdout


class Env:
    """A scenario's namespace, Redis, toolbox pod and Secret `redis` (key url)."""

    def __init__(self, kubeconfig: str, scenario: str):
        suffix = "".join(random.choices(string.ascii_lowercase + string.digits, k=5))
        self.ns = f"wp-kind-{scenario}-{suffix}"
        self.k = Kube(kubeconfig, self.ns)
        self.url = f"redis://redis.{self.ns}:6379/0"

    def __enter__(self):
        Kube(self.k.kubeconfig)("create", "namespace", self.ns)
        labels = {"app": "redis"}
        self.k.apply({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "redis"},
                      "spec": {"replicas": 1, "selector": {"matchLabels": labels}, "template": {
                          "metadata": {"labels": labels},
                          "spec": {"nodeSelector": CONTROL_PLANE, "containers": [{
                              "name": "redis", "image": REDIS_IMAGE, "ports": [{"containerPort": 6379}],
                              "readinessProbe": {"tcpSocket": {"port": 6379}, "periodSeconds": 1}}]}}}})
        self.k.apply({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "redis"},
                      "spec": {"selector": labels, "ports": [{"port": 6379}]}})
        self.k("create", "secret", "generic", "redis", f"--from-literal=url={self.url}")
        # the worker image's busybox keeps the toolbox alive; the tools are workpool-worker's
        self.k.apply({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "toolbox"},
                      "spec": {"nodeSelector": CONTROL_PLANE, "terminationGracePeriodSeconds": 0,
                               "containers": [{"name": "toolbox", "image": WORKER_IMAGE,
                                               "command": ["sleep", "100000"]}]}})
        self.k("rollout", "status", "deployment/redis", "--timeout=120s")
        self.k("wait", "--for=condition=Ready", "pod/toolbox", "--timeout=120s")
        # Ready is not reachable yet: the Service's endpoints reach kube-proxy's rules on
        # the toolbox's node a moment later, and until then a connection is refused (a
        # submit failed so once, with the cluster busy).
        wait("Redis reachable through its Service from the toolbox", 120, self.redis_answers, 1)
        return self

    def redis_answers(self) -> bool:
        try:
            self.worker("stats", "--stream", "reachable", "--group", "reachable", "--json")
            return True
        except RuntimeError as e:
            if "cannot connect" in str(e):
                return False
            raise

    def __exit__(self, *exc):
        # The pools first, while their Redis still runs: their finalizer removes their
        # consumers there (with Redis deleted alongside, the namespace could hang on it).
        self.k("delete", "wp", "--all", "--timeout=90s", check=False, timeout=120)
        Kube(self.k.kubeconfig)("delete", "namespace", self.ns, "--wait=false", check=False)

    def worker(self, *args: str) -> str:
        return self.k("exec", "toolbox", "--", "workpool-worker", *args, "--redis-url", self.url)

    def submit(self, stream: str, payload: str, count: int) -> None:
        out = self.worker("submit", "--stream", stream, "--payload", payload, "--count", str(count))
        assert f"enqueued {count}" in out, out

    def stats(self, stream: str, group: str) -> dict:
        return json.loads(self.worker("stats", "--stream", stream, "--group", group, "--json"))

    def pool(self, name: str, spec: dict, pod_spec: dict | None = None) -> None:
        template = {"spec": {
            **(pod_spec or {}),
            "terminationGracePeriodSeconds": 30,
            "containers": [{
                "name": "worker", "image": WORKER_IMAGE, "args": ["run", "--builtin", "sleep"],
                "env": [{"name": "WORKPOOL_CONCURRENCY", "value": "2"},
                        {"name": "WORKPOOL_METRICS_ADDR", "value": "0.0.0.0:9090"}],
                "ports": [{"name": "metrics", "containerPort": 9090}],
                "readinessProbe": {"httpGet": {"path": "/readyz", "port": "metrics"}, "periodSeconds": 2},
                "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}, "limits": {"memory": "128Mi"}},
            }],
        }}
        self.k.apply({"apiVersion": "workpool.dev/v1alpha1", "kind": "WorkPool", "metadata": {"name": name},
                      "spec": {"queue": {"redis": {"urlSecretRef": {"name": "redis", "key": "url"}}},
                               "template": template, **spec}})

    def wp(self, name: str) -> dict:
        return self.k.json("get", "wp", name)

    def pods(self, pool: str) -> list[dict]:
        return self.k.json("get", "pods", "-l", f"workpool.dev/pool={pool}")["items"]

    def ready_pods(self, pool: str) -> list[dict]:
        return [p for p in self.pods(pool) if not p["metadata"].get("deletionTimestamp")
                and any(c["type"] == "Ready" and c["status"] == "True" for c in p["status"].get("conditions", []))]

    def busy_pods(self, pool: str) -> list[dict]:
        """Pods running at least one task (the worker's in-flight gauge, from its /metrics)."""
        busy = []
        for p in self.ready_pods(pool):
            text = self.k("get", "--raw", f"/api/v1/namespaces/{self.ns}/pods/{p['metadata']['name']}:9090/proxy/metrics",
                          check=False)
            for line in text.splitlines():
                if line.startswith("workpool_worker_in_flight_tasks") and float(line.split()[-1]) > 0:
                    busy.append(p)
        return busy

    def drained(self, stream: str, group: str, timeout: float = 300) -> dict:
        """Waits until nothing is waiting or pending; then the stream must be empty (every
        task acknowledged) and there must be no dead letters."""
        st = wait(f"queue {stream} drained", timeout,
                  lambda: (s := self.stats(stream, group)) and s["backlog"] == 0 and s["pending"] == 0 and s, 3)
        assert st["stream_length"] == 0, f"entries left in the stream (not acknowledged): {st}"
        assert st["dead_letters"] == 0, f"dead letters: {st}"
        return st


def nodes(kubeconfig: str) -> dict[str, str]:
    """Node name -> role (control-plane or worker)."""
    out = {}
    for n in Kube(kubeconfig).json("get", "nodes")["items"]:
        labels = n["metadata"]["labels"]
        out[n["metadata"]["name"]] = "control-plane" if "node-role.kubernetes.io/control-plane" in labels else "worker"
    return out


# ----------------------------------------------------------------------- scenarios

def worker_pod_deleted(kubeconfig: str) -> None:
    with Env(kubeconfig, "deleted") as env:
        env.pool("p", {"replicas": 3, "delivery": {"visibilityTimeoutSeconds": 10}})
        wait("3 ready pods", 120, lambda: len(env.ready_pods("p")) == 3)
        env.submit("p", '{"ms": 2000}', 60)
        busy = wait("two busy pods", 60, lambda: (b := env.busy_pods("p")) and len(b) >= 2 and b)
        graceful, forced = busy[0]["metadata"]["name"], busy[1]["metadata"]["name"]
        env.k("delete", "pod", graceful, "--wait=false")
        env.k("delete", "pod", forced, "--grace-period=0", "--force", "--wait=false")
        log(f"deleted busy pods {graceful} (gracefully) and {forced} (forced)")
        wait("both replaced: 3 ready pods, neither of the deleted ones", 120,
             lambda: {p["metadata"]["name"] for p in env.ready_pods("p")}.isdisjoint({graceful, forced})
             and len(env.ready_pods("p")) == 3)
        st = env.drained("p", "p")
        log(f"all 60 tasks done, none lost: {st['stream_length']} left, {st['dead_letters']} dead letters")


def worker_killed(kubeconfig: str) -> None:
    roles = nodes(kubeconfig)
    with Env(kubeconfig, "killed") as env:
        env.pool("p", {"replicas": 2, "delivery": {"visibilityTimeoutSeconds": 10}})
        wait("2 ready pods", 120, lambda: len(env.ready_pods("p")) == 2)
        env.submit("p", '{"ms": 1500}', 40)
        victim = wait("a busy pod", 60, lambda: env.busy_pods("p"))[0]
        name, node = victim["metadata"]["name"], victim["spec"]["nodeName"]
        assert node in roles, f"{node} is not a node of this cluster"
        cid = victim["status"]["containerStatuses"][0]["containerID"].split("://", 1)[1]
        restarts = victim["status"]["containerStatuses"][0]["restartCount"]
        # the kind node is a container: find the worker's process there and SIGKILL it
        pid = json.loads(docker("exec", node, "crictl", "inspect", cid))["info"]["pid"]
        docker("exec", node, "kill", "-KILL", str(pid))
        log(f"SIGKILLed the worker of busy pod {name} (pid {pid} on {node})")
        wait(f"{name} restarted by the kubelet", 120,
             lambda: any(p["metadata"]["name"] == name and p["status"]["containerStatuses"][0]["restartCount"] > restarts
                         for p in env.pods("p")))
        st = env.drained("p", "p")
        log(f"all 40 tasks done, none lost: {st['stream_length']} left, {st['dead_letters']} dead letters")


def autoscaling_burst(kubeconfig: str) -> None:
    with Env(kubeconfig, "burst") as env:
        env.pool("p", {"autoscaling": {
            "minReplicas": 0, "maxReplicas": 6, "targetBacklogPerReplica": 10, "pollIntervalSeconds": 2,
            "scaleToZeroDelaySeconds": 10,
            "behavior": {"scaleDown": {"stabilizationWindowSeconds": 0}}}})
        wait("the pool at zero", 60, lambda: env.wp("p").get("status", {}).get("desiredReplicas") == 0)
        env.submit("p", '{"ms": 1000}', 150)
        def scaled_up():
            desired = env.wp("p").get("status", {}).get("desiredReplicas", 0)
            ready = env.ready_pods("p")
            return (desired >= 4 and len(ready) >= 4 and ready) or f"desired {desired}, ready {len(ready)}"

        peak = wait("scaled up to 4 ready pods or more (maxReplicas 6)", 180,
                    lambda: isinstance(r := scaled_up(), list) and r or print(r, file=sys.stderr), 2)
        used = sorted({p["spec"]["nodeName"] for p in peak})
        log(f"{len(peak)} ready pods on {used}")
        env.drained("p", "p")
        wait("back to zero pods", 180, lambda: env.wp("p")["status"].get("desiredReplicas") == 0 and not env.pods("p"))
        log("150 tasks done, none lost; the pool went back to zero")


def node_drain(kubeconfig: str) -> None:
    roles = nodes(kubeconfig)
    worker = next(n for n, r in roles.items() if r == "worker")
    cp = next(n for n, r in roles.items() if r == "control-plane")
    cluster = Kube(kubeconfig)
    with Env(kubeconfig, "drain") as env:
        try:
            # maxDeliveries 1: a task delivered twice goes to the dead-letter stream instead
            # of running again, so no dead letters = no task was interrupted
            env.pool("p", {"replicas": 4, "delivery": {"visibilityTimeoutSeconds": 30, "maxDeliveries": 1}},
                     {"topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "kubernetes.io/hostname",
                                                     "whenUnsatisfiable": "ScheduleAnyway",
                                                     "labelSelector": {"matchLabels": {"workpool.dev/pool": "p"}}}]})
            def spread():
                r = env.ready_pods("p")
                ok = len(r) == 4 and {p["spec"]["nodeName"] for p in r} == {worker, cp}
                if not ok:
                    log(f"pods: {[(p['metadata']['name'], p['spec'].get('nodeName')) for p in env.pods('p')]}")
                return ok

            wait("4 ready pods on both nodes", 180, spread, 5)
            env.submit("p", '{"ms": 3000}', 120)
            on_worker = wait("busy pods on the worker node", 90,
                             lambda: [p for p in env.busy_pods("p") if p["spec"]["nodeName"] == worker])
            evicted = {p["metadata"]["name"] for p in env.pods("p") if p["spec"]["nodeName"] == worker}
            log(f"draining {worker} while {len(on_worker)} of its pool pods are busy ({sorted(evicted)})")
            cluster("drain", worker, "--ignore-daemonsets", "--delete-emptydir-data", "--timeout=180s", timeout=240)
            left = [p["metadata"]["name"] for p in env.pods("p") if p["spec"]["nodeName"] == worker]
            assert not left, f"pool pods still on the drained node: {left}"
            after = wait("4 ready pods again, all on the control plane", 180,
                         lambda: len(r := env.ready_pods("p")) == 4 and r)
            assert {p["spec"]["nodeName"] for p in after} == {cp}, [p["spec"]["nodeName"] for p in after]
            assert evicted.isdisjoint(p["metadata"]["name"] for p in after)
            st = env.drained("p", "p")
            log(f"120 tasks done, none lost, none interrupted ({st['dead_letters']} dead letters with maxDeliveries 1)")
        finally:
            cluster("uncordon", worker, check=False)


SCENARIOS = {
    "worker-pod-deleted": worker_pod_deleted,
    "worker-killed": worker_killed,
    "autoscaling-burst": autoscaling_burst,
    "node-drain": node_drain,
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kubeconfig", required=True)
    ap.add_argument("--repeat", type=int, default=1, help="run each scenario N times")
    ap.add_argument("scenarios", nargs="*", help=f"default: all of {', '.join(SCENARIOS)}")
    a = ap.parse_args()
    names = a.scenarios or list(SCENARIOS)
    unknown = set(names) - set(SCENARIOS)
    if unknown:
        ap.error(f"unknown scenario(s) {sorted(unknown)}; known: {', '.join(SCENARIOS)}")
    roles = nodes(a.kubeconfig)
    if sorted(roles.values()) != ["control-plane", "worker"]:
        print(f"scenarios: need the two-node cluster of make kind (control plane + worker), found {roles}",
              file=sys.stderr)
        return 2
    results = []
    for name in names:
        for i in range(a.repeat):
            start = time.monotonic()
            log(f"── {name} (run {i + 1}/{a.repeat})")
            try:
                SCENARIOS[name](a.kubeconfig)
                results.append((name, i + 1, "passed", time.monotonic() - start))
            except Exception as e:  # one failed run is reported, the others still run
                traceback.print_exc()
                results.append((name, i + 1, f"FAILED: {e}", time.monotonic() - start))
    print("\nkind scenarios:", file=sys.stderr)
    for name, run, outcome, secs in results:
        print(f"  {name:<20} run {run:>2}  {secs:5.0f}s  {outcome}", file=sys.stderr)
    return 0 if all(r[2] == "passed" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
