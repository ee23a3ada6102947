"""The chart's HA Redis (redis.ha.enabled) on the real test cluster, while installed:
three Redis pods and three sentinels under the `restricted` Pod Security Standard, one
primary that the sentinels name, two replicas in sync; a WorkPool whose URL is the
chart's redis+sentinel:// Secret drains tasks submitted with `--min-replicas 1`, and
deleting the primary's pod in the middle of the drain (the sentinels promote a replica,
the StatefulSet brings the pod back as a replica) loses none of the confirmed tasks:
each one's handler printed it to its pod's log."""

from __future__ import annotations

import base64
import json
import re
import subprocess
import time

from incluster import RELEASE_LABEL, _restricted, delete_namespace, pool_secret, wait_pool_pods
from procs import worker_bin

HA_NS = "workpool-ha"
POOL = "ha"
TASKS = 300


def _password(k, namespace: str, release: str) -> str:
    sel = f"{RELEASE_LABEL}={release},app.kubernetes.io/component=redis"
    secret = next(s for s in k.json("-n", namespace, "get", "secrets", "-l", sel)["items"]
                  if "redis-password" in (s.get("data") or {}))
    return base64.b64decode(secret["data"]["redis-password"]).decode()


def _pods(k, namespace: str, release: str, component: str) -> dict[str, dict]:
    sel = f"{RELEASE_LABEL}={release},app.kubernetes.io/component={component}"
    return {p["metadata"]["name"]: p for p in k.json("-n", namespace, "get", "pods", "-l", sel)["items"]}


def _ready_ip(p: dict) -> str | None:
    st = p.get("status", {})
    if p["metadata"].get("deletionTimestamp") or not st.get("podIP"):
        return None
    if not all(c.get("ready") for c in st.get("containerStatuses", [])):
        return None
    return st["podIP"]


def _cli(ip: str, port: int, password: str, *args: str) -> str:
    r = subprocess.run(["redis-cli", "-h", ip, "-p", str(port), "--no-auth-warning", "--raw", *args],
                       capture_output=True, text=True, timeout=10, env={"REDISCLI_AUTH": password, "PATH": "/usr/bin:/bin"})
    return (r.stdout + r.stderr).strip()


def primary(k, namespace: str, release: str, password: str, timeout: float = 120) -> tuple[str, str]:
    """(pod name, pod IP) of the primary the majority of the sentinels name, once that pod
    is ready and says it is the primary."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        names: dict[str, int] = {}
        for p in _pods(k, namespace, release, "redis-sentinel").values():
            ip = _ready_ip(p)
            if ip:
                out = _cli(ip, 26379, password, "SENTINEL", "get-master-addr-by-name", "workpool")
                host = out.splitlines()[0] if out else ""
                if host and "ERR" not in host:
                    names[host] = names.get(host, 0) + 1
        last = str(names)
        if names:
            host = max(names, key=names.get)
            pod = host.split(".", 1)[0]
            p = _pods(k, namespace, release, "redis").get(pod)
            ip = _ready_ip(p) if p else None
            if ip and _cli(ip, 6379, password, "ROLE").splitlines()[:1] == ["master"]:
                return pod, ip
        time.sleep(1)
    raise TimeoutError(f"no primary named by the sentinels and ready: {last}")


def _replication_views(k, namespace: str, release: str, password: str) -> str:
    """What each Redis pod says of its replication and what each sentinel says of the
    primary and its replicas: for the message of a failed wait (one pod did not re-attach
    after a failover once, unexplained)."""
    out = []
    for name, p in sorted(_pods(k, namespace, release, "redis").items()):
        ip = _ready_ip(p)
        info = _cli(ip, 6379, password, "INFO", "replication") if ip else "not ready"
        out.append(f"--- {name} ({ip}):\n{info}")
    for name, p in sorted(_pods(k, namespace, release, "redis-sentinel").items()):
        ip = _ready_ip(p)
        view = (_cli(ip, 26379, password, "SENTINEL", "get-master-addr-by-name", "workpool") + "\n"
                + _cli(ip, 26379, password, "SENTINEL", "replicas", "workpool")) if ip else "not ready"
        out.append(f"--- {name} ({ip}):\n{view}")
    return "\n".join(out)


def ha_failover(k, rep, namespace: str, release: str) -> None:
    password = _password(k, namespace, release)
    redis_pods = _pods(k, namespace, release, "redis")
    sentinels = _pods(k, namespace, release, "redis-sentinel")
    assert len(redis_pods) == 3 and len(sentinels) == 3, (sorted(redis_pods), sorted(sentinels))
    pod, ip = primary(k, namespace, release, password)
    deadline = time.monotonic() + 120
    while "connected_slaves:2" not in _cli(ip, 6379, password, "INFO", "replication"):
        assert time.monotonic() < deadline, _cli(ip, 6379, password, "INFO", "replication")
        time.sleep(1)
    rep.step(f"HA Redis: {pod} is the primary with 2 replicas in sync; 3 sentinels")

    sel = f"{RELEASE_LABEL}={release},app.kubernetes.io/component=redis"
    secret = next(s for s in k.json("-n", namespace, "get", "secrets", "-l", sel)["items"]
                  if "redis-url" in (s.get("data") or {}))
    url = base64.b64decode(secret["data"]["redis-url"]).decode()
    assert url.startswith("redis+sentinel://"), "the chart's URL names the sentinels"
    _restricted(k, HA_NS)
    try:
        pool_secret(k, HA_NS, url)
        k("-n", HA_NS, "apply", "-f", "-", input=json.dumps({
            "apiVersion": "workpool.dev/v1alpha1", "kind": "WorkPool",
            "metadata": {"name": POOL},
            "spec": {
                "queue": {"redis": {"urlSecretRef": {"name": "workpool-redis", "key": "url"}}},
                "replicas": 2,
                "delivery": {"visibilityTimeoutSeconds": 10},
                "template": {"spec": {"containers": [{
                    "name": "worker",
                    "image": worker_image(k, namespace, release),
                    "args": ["run"],
                    "env": [
                        # Each task's payload, printed to the pod's log when its run is done.
                        {"name": "WORKPOOL_EXEC", "value": 'payload=$(cat); sleep 0.2; echo "done $payload"'},
                        {"name": "WORKPOOL_CONCURRENCY", "value": "4"},
                    ],
                }]}},
            },
        }))
        wait_pool_pods(k, HA_NS, {POOL: 2})
        # Durable submit to the primary (this host cannot resolve the sentinels' names).
        lines = "".join(json.dumps({"n": i}) + "\n" for i in range(TASKS))
        r = subprocess.run([worker_bin(), "submit", "--redis-url", f"redis://:{password}@{ip}:6379/0",
                            "--stream", POOL, "--stdin", "--min-replicas", "1"],
                           input=lines, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stdout + r.stderr
        assert f"confirmed by at least 1 replica: {TASKS}" in r.stdout, r.stdout
        rep.step(f"{TASKS} tasks submitted, each confirmed by a replica (WAIT)")
        deadline = time.monotonic() + 120
        while True:
            summary = _cli(ip, 6379, password, "XPENDING", POOL, POOL).splitlines()
            if summary and summary[0].isdigit() and int(summary[0]) > 0:
                break
            assert time.monotonic() < deadline, f"the workers never took tasks: {summary}"
            time.sleep(0.2)
        k("-n", namespace, "delete", "pod", pod, "--wait=false")
        rep.step(f"deleted the primary's pod {pod} during the drain")
        new_pod, new_ip = primary(k, namespace, release, password, timeout=180)
        rep.step(f"the sentinels promoted {new_pod}")
        deadline = time.monotonic() + 300
        while True:
            xlen = _cli(new_ip, 6379, password, "XLEN", POOL)
            pending = _cli(new_ip, 6379, password, "XPENDING", POOL, POOL).splitlines()[:1]
            if xlen == "0" and pending == ["0"]:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"not drained after the failover: XLEN {xlen}, pending {pending}")
            time.sleep(1)
            new_pod, new_ip = primary(k, namespace, release, password, timeout=180)
        dead = _cli(new_ip, 6379, password, "XLEN", f"{POOL}:dead")
        assert dead == "0", f"dead letters: {dead}"
        done: set[int] = set()
        runs = 0
        for p in k.json("-n", HA_NS, "get", "pods", "-l", f"workpool.dev/pool={POOL}")["items"]:
            log = k("-n", HA_NS, "logs", p["metadata"]["name"], "-c", "worker", check=False)
            for m in re.finditer(r'^done \{"n":\s*(\d+)\}', log, re.M):
                done.add(int(m.group(1)))
                runs += 1
        missing = sorted(set(range(TASKS)) - done)
        assert not missing, f"confirmed tasks never done: {missing[:20]} ({len(missing)})"
        rep.found["ha"] = {"tasks": TASKS, "runs": runs, "old_primary": pod, "new_primary": new_pod}
        rep.step(f"all {TASKS} confirmed tasks done ({runs - TASKS} extra runs) after the failover "
                 f"from {pod} to {new_pod}")
        # The deleted pod is back, as a replica of the new primary.
        deadline = time.monotonic() + 180
        while "connected_slaves:2" not in _cli(new_ip, 6379, password, "INFO", "replication"):
            assert time.monotonic() < deadline, (
                f"{pod} did not rejoin {new_pod} within 180 s:\n"
                + _replication_views(k, namespace, release, password))
            time.sleep(1)
        rep.step(f"{pod} rejoined as a replica of {new_pod}")
    finally:
        delete_namespace(k, HA_NS)


def worker_image(k, namespace: str, release: str) -> str:
    """The worker image, as the examples name it (the test node has it)."""
    return "ghcr.io/workpool-dev/workpool-worker:0.1.0"
