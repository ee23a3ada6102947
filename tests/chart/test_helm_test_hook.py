"""The `helm test` hook: its objects are right, and its script really tells a pool that
works from one that does not (run here against a real redis-server and real workers)."""

from __future__ import annotations

import os
import subprocess

import pytest

from checks import validate_workpool
from conftest import KUBE_VERSIONS, MATRIX, NAMESPACE, render
from procs import process, redis_server, worker_bin


def hook_objects(values=None):
    docs = render(values)
    hooks = [d for d in docs if d.hook]
    return docs, hooks


def test_hook_objects():
    docs, hooks = hook_objects()
    assert {d.kind for d in hooks} == {"ServiceAccount", "WorkPool", "Pod"}
    for d in hooks:
        ann = d.obj["metadata"]["annotations"]
        assert ann["helm.sh/hook"] == "test"
        assert ann["helm.sh/hook-delete-policy"] == "before-hook-creation,hook-succeeded", (
            "cleaned up on success, kept for inspection on failure"
        )
    weight = {d.kind: int(d.obj["metadata"]["annotations"]["helm.sh/hook-weight"]) for d in hooks}
    assert weight["ServiceAccount"] < weight["WorkPool"] < weight["Pod"], "the pool exists before the task is submitted"
    pool = next(d for d in hooks if d.kind == "WorkPool").obj
    pod = next(d for d in hooks if d.kind == "Pod").obj
    sa = next(d for d in hooks if d.kind == "ServiceAccount").obj
    for kube in KUBE_VERSIONS:
        assert not validate_workpool(pool, kube)
    # the pod only talks to Redis: its own ServiceAccount, no token, no Role for it
    assert pod["spec"]["serviceAccountName"] == sa["metadata"]["name"]
    assert pod["spec"]["automountServiceAccountToken"] is False and sa["automountServiceAccountToken"] is False
    assert not [d for d in docs.of("RoleBinding") + docs.of("ClusterRoleBinding")
                if any(s["name"] == sa["metadata"]["name"] for s in d.obj["subjects"])]
    assert pod["spec"]["restartPolicy"] == "Never"
    # pool and checker use the same queue, and the bundled Redis' Secret
    env = {e["name"]: e for e in pod["spec"]["containers"][0]["env"]}
    redis = pool["spec"]["queue"]["redis"]
    assert env["WORKPOOL_STREAM"]["value"] == redis["stream"] == env["WORKPOOL_GROUP"]["value"] == redis["group"]
    secret = docs.one("Secret", "-redis")
    assert redis["urlSecretRef"] == {"name": secret.name, "key": "redis-url"}
    assert env["WORKPOOL_REDIS_URL"]["valueFrom"]["secretKeyRef"] == {"name": secret.name, "key": "redis-url"}
    assert pool["metadata"]["namespace"] == pod["metadata"]["namespace"] == NAMESPACE
    assert pool["spec"]["template"]["spec"]["containers"][0]["args"] == ["run", "--builtin", "noop"]


def test_hook_with_external_redis():
    _, hooks = hook_objects(MATRIX["external-redis-secret"])
    pool = next(d for d in hooks if d.kind == "WorkPool").obj
    assert pool["spec"]["queue"]["redis"]["urlSecretRef"] == {"name": "queue-redis", "key": "url"}
    _, hooks = hook_objects(MATRIX["external-redis-url"])
    pool = next(d for d in hooks if d.kind == "WorkPool").obj
    assert pool["spec"]["queue"]["redis"]["url"] == "redis://redis.data.svc:6379/0"
    pod = next(d for d in hooks if d.kind == "Pod").obj
    env = {e["name"]: e for e in pod["spec"]["containers"][0]["env"]}
    assert env["WORKPOOL_REDIS_URL"]["value"] == "redis://redis.data.svc:6379/0"
    _, hooks = hook_objects(MATRIX["no-redis-no-tests"])
    assert not hooks


def run_hook_script(url: str, timeout: int, stream: str = "wp-helm-test") -> subprocess.CompletedProcess:
    """Runs the test Pod's command as the kubelet would, with the Pod's environment and
    the worker binary as `workpool-worker` on PATH."""
    _, hooks = hook_objects()
    pod = next(d for d in hooks if d.kind == "Pod").obj
    (c,) = pod["spec"]["containers"]
    env = {e["name"]: e.get("value", "") for e in c["env"]}
    env.update(WORKPOOL_REDIS_URL=url, TIMEOUT=str(timeout), WORKPOOL_STREAM=stream, WORKPOOL_GROUP=stream)
    bindir = os.path.dirname(worker_bin())
    env["PATH"] = f"{bindir}:{os.environ['PATH']}"
    assert c["command"][0] == "/bin/sh"
    return subprocess.run(c["command"] + c["args"], env=env, capture_output=True, text=True, timeout=timeout + 30)


def pool_worker(url: str, *extra: str, stream: str = "wp-helm-test"):
    return process([worker_bin(), "run", "--redis-url", url, "--stream", stream, "--group", stream,
                    "--consumer", "w1", "--metrics-addr", "127.0.0.1:0", *extra])


def test_hook_script_passes_when_the_pool_works():
    with redis_server(password="pw") as url, pool_worker(url, "--builtin", "noop") as worker:
        r = run_hook_script(url, timeout=30)
        assert r.returncode == 0, r.stdout + r.stderr + worker.output()
        assert "PASS: the WorkPool's worker ran the task" in r.stdout
        # and again: the stream and its dead letters outlive a run
        r = run_hook_script(url, timeout=30)
        assert r.returncode == 0, r.stdout + r.stderr


def test_hook_script_fails_without_a_worker():
    with redis_server() as url:
        r = run_hook_script(url, timeout=3)
    assert r.returncode == 1
    assert "FAIL: the task was not done within 3s" in r.stdout


def test_hook_script_fails_when_the_task_is_dead_lettered():
    with redis_server() as url, pool_worker(url, "--builtin", "fail", "--max-deliveries", "1"):
        r = run_hook_script(url, timeout=30)
    assert r.returncode == 1
    assert "FAIL: the task was dead-lettered" in r.stdout, r.stdout + r.stderr


def test_hook_script_fails_when_redis_is_unreachable():
    from procs import free_port

    r = run_hook_script(f"redis://127.0.0.1:{free_port()}/0", timeout=2)
    assert r.returncode == 1
    assert "FAIL: Redis not reachable" in r.stdout
