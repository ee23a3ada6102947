"""The handler examples (examples/handlers/): their WorkPools are valid and restricted,
and each handler really works behind a real workpool-worker and redis-server: tasks are
done, a transient failure is retried, a bad payload is dead-lettered with its reason."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time

import pytest

from checks import restricted_pss, validate_workpool
from conftest import KUBE_VERSIONS, REPO, load_yaml_docs, missing
from procs import free_port, process, redis_server, wait_port, worker_bin

EXAMPLES = REPO / "examples" / "handlers"
POOLS = sorted(EXAMPLES.glob("*/workpool.yaml"))


def test_there_are_both_examples():
    assert {p.parent.name for p in POOLS} == {"exec", "http-sidecar"}
    for d in ("exec", "http-sidecar"):
        assert (EXAMPLES / d / "Dockerfile").exists()


@pytest.mark.parametrize("path", POOLS, ids=lambda p: p.parent.name)
def test_example_workpools_are_valid_and_restricted(path):
    (pool,) = load_yaml_docs(path)
    problems = []
    for kube in KUBE_VERSIONS:
        problems += validate_workpool(pool, kube)
    spec = pool["spec"]["template"]["spec"]
    problems += restricted_pss(f"{path.parent.name}", spec)
    names = [c["name"] for c in spec["containers"]]
    assert "worker" in names, "the operator injects WORKPOOL_* into the container named worker"
    worker = next(c for c in spec["containers"] if c["name"] == "worker")
    assert {"name": "metrics", "containerPort": 9090} in worker["ports"], "the PodMonitor scrapes port `metrics`"
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("d", ["exec", "http-sidecar"])
def test_example_images_are_non_root(d):
    text = (EXAMPLES / d / "Dockerfile").read_text()
    users = [line.split()[1] for line in text.splitlines() if line.startswith("USER ")]
    assert users and users[-1] == "65532:65532"


def stats(url: str, stream: str) -> dict:
    r = subprocess.run([worker_bin(), "stats", "--redis-url", url, "--stream", stream, "--group", stream, "--json"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def submit(url: str, stream: str, payloads: list[str]) -> None:
    r = subprocess.run([worker_bin(), "submit", "--redis-url", url, "--stream", stream], input="\n".join(payloads) + "\n",
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr


def dead_letters(url: str, stream: str) -> str:
    cli = shutil.which("redis-cli")
    if not cli:
        missing("redis-cli is not installed", "it comes with redis-server (make deps)")
    port = url.rsplit(":", 1)[1].split("/")[0]
    r = subprocess.run([cli, "-p", port, "XRANGE", f"{stream}:dead", "-", "+"], capture_output=True, text=True, timeout=10)
    return r.stdout


def drain(url: str, stream: str, worker, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        s = stats(url, stream)
        if s["group_exists"] and s["backlog"] == 0 and s["pending"] == 0 and s["dead_letters"] == 1:
            return s
        assert worker.poll() is None, f"the worker exited: {worker.output()}"
        time.sleep(0.2)
    raise AssertionError(f"not drained in {timeout}s: {s}\n{worker.output()}")


TASKS = {
    "exec": ['{"image": "cat.png", "width": 64}', '{"image": "dog.png", "flaky": true}', '{"image": "x.png", "width": 0}'],
    "http-sidecar": ['{"order": 1, "amount_cents": 100}', '{"order": 2, "flaky": true}', '{"order": "three"}'],
}


def run_pool(url: str, stream: str, handler_args: list[str]):
    return process([worker_bin(), "run", "--redis-url", url, "--stream", stream, "--group", stream,
                    "--consumer", "w1", "--metrics-addr", "127.0.0.1:0", "--retry-backoff", "0.05",
                    "--max-deliveries", "5", *handler_args])


def test_exec_handler_behind_a_real_worker():
    handler = EXAMPLES / "exec" / "handler.py"
    with redis_server() as url, run_pool(url, "thumbnails", ["--exec", sys.executable, str(handler)]) as worker:
        submit(url, "thumbnails", TASKS["exec"])
        s = drain(url, "thumbnails", worker)
        out = worker.output()
        dead = dead_letters(url, "thumbnails")
    assert s["dead_letters"] == 1
    assert '"image": "cat.png"' in out and '"image": "dog.png"' in out, out
    assert '"delivery": 2' in out, "the flaky task succeeded on its retry"
    assert "width must be 1..4096" in dead, dead


def test_http_sidecar_behind_a_real_worker():
    port = free_port()
    server = [sys.executable, str(EXAMPLES / "http-sidecar" / "server.py")]
    with redis_server() as url, process(server, env={"PORT": str(port)}) as sidecar:
        wait_port(port)
        with run_pool(url, "orders", ["--http", f"http://127.0.0.1:{port}/task"]) as worker:
            submit(url, "orders", TASKS["http-sidecar"])
            s = drain(url, "orders", worker)
            dead = dead_letters(url, "orders")
        out = sidecar.output()
    assert s["dead_letters"] == 1
    assert '"order": 1' in out and '"order": 2' in out and '"delivery": 2' in out, out
    assert "payload needs an integer order" in dead, dead
