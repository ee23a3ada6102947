#!/usr/bin/env python3
"""How fast a worker stops taking tasks when the operator drains it.

The operator writes the worker's consumer name into the pool's drain hash
(`<stream>:draining`, value `requested`); the worker answers `stopped` once it reads no
more. This measures, against a real redis-server and the real `workpool-worker`, the
time from the request to the answer, for an idle worker (blocked in its read, which
blocks at most 2 s) and for a busy one (every slot running a long task).

The peer, measured in the same run: the same worker told by SIGTERM, which is what a
Deployment's (KEDA + HPA's) scale-in sends. It stops reading at once and leaves once its
tasks are done, but only within the pod's grace period: a task longer than that is cut
and runs again elsewhere. A drained worker keeps its pod until its tasks are done.

    python3 bench/drain.py [--worker target/release/workpool-worker] [--rounds 20]

Prints a Markdown table for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cli(port: int, *args: str) -> str:
    out = subprocess.run(["redis-cli", "-p", str(port), *args], capture_output=True, text=True, check=True)
    return out.stdout.strip()


def wait_for(pred, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.005)
    raise TimeoutError(f"timed out waiting for {what}")


def reaction(port: int, consumer: str) -> float:
    """Seconds from the drain request to the worker's `stopped`."""
    t0 = time.monotonic()
    cli(port, "HSET", "jobs:draining", consumer, "requested")
    wait_for(lambda: cli(port, "HGET", "jobs:draining", consumer) == "stopped", 30, "stopped")
    return time.monotonic() - t0


def undrain(port: int, consumer: str, metrics_port: int) -> None:
    cli(port, "HDEL", "jobs:draining", consumer)
    # The worker takes tasks again (its readiness returns) before the next round.
    import urllib.request

    def ready() -> bool:
        try:
            return urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/readyz", timeout=1).status == 200
        except Exception:
            return False

    wait_for(ready, 30, "ready again")


def start(binary: str, port: int, mport: int, d: str) -> subprocess.Popen:
    return subprocess.Popen(
        [binary, "run", "--redis-url", f"redis://127.0.0.1:{port}/", "--stream", "jobs", "--group", "jobs",
         "--consumer", "w1", "--metrics-addr", f"127.0.0.1:{mport}", "--concurrency", "2", "--builtin", "sleep"],
        stdout=subprocess.DEVNULL, stderr=open(os.path.join(d, "worker.log"), "a"))


def summary(xs: list[float]) -> str:
    xs = sorted(xs)
    p95 = xs[min(len(xs) - 1, int(round(0.95 * (len(xs) - 1))))]
    return f"{statistics.median(xs) * 1000:.0f} ms | {p95 * 1000:.0f} ms | {xs[-1] * 1000:.0f} ms"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--worker", default=str(REPO / "target" / "release" / "workpool-worker"))
    ap.add_argument("--rounds", type=int, default=20)
    args = ap.parse_args()
    if not os.access(args.worker, os.X_OK):
        sys.exit(f"no worker binary at {args.worker}: cargo build --release -p workpool-worker")
    port, mport = free_port(), free_port()
    with tempfile.TemporaryDirectory() as d:
        redis = subprocess.Popen(["redis-server", "--port", str(port), "--save", "", "--dir", d],
                                 stdout=subprocess.DEVNULL)
        worker = None
        try:
            wait_for(lambda: subprocess.run(["redis-cli", "-p", str(port), "PING"], capture_output=True).returncode == 0, 10, "redis")
            worker = start(args.worker, port, mport, d)
            undrain(port, "w1", mport)
            idle = []
            for _ in range(args.rounds):
                time.sleep(0.3)  # somewhere inside its blocking read
                idle.append(reaction(port, "w1"))
                undrain(port, "w1", mport)
            busy = []
            for _ in range(args.rounds):
                for _ in range(2):
                    cli(port, "XADD", "jobs", "*", "payload", '{"ms": 3000}')
                wait_for(lambda: int(cli(port, "XLEN", "jobs") or 0) == 2 and cli(port, "XPENDING", "jobs", "jobs").startswith("2"), 30, "both slots busy")
                busy.append(reaction(port, "w1"))
                wait_for(lambda: int(cli(port, "XLEN", "jobs") or 0) == 0, 30, "tasks finished on the draining worker")
                undrain(port, "w1", mport)
            worker.terminate()
            worker.wait(timeout=30)
            worker = None
            term_idle, term_busy = [], []
            for busy_round in (False, True):
                for _ in range(args.rounds):
                    w = start(args.worker, port, mport, d)
                    try:
                        undrain(port, "w1", mport)
                        if busy_round:
                            for _ in range(2):
                                cli(port, "XADD", "jobs", "*", "payload", '{"ms": 3000}')
                            wait_for(lambda: cli(port, "XPENDING", "jobs", "jobs").startswith("2"), 30, "both slots busy")
                        else:
                            time.sleep(0.3)
                        t0 = time.monotonic()
                        w.terminate()
                        w.wait(timeout=60)
                        (term_busy if busy_round else term_idle).append(time.monotonic() - t0)
                    finally:
                        if w.poll() is None:
                            w.kill()
                            w.wait()
            print("| worker | told by | rounds | p50 | p95 | max |\n|---|---|---:|---:|---:|---:|")
            print(f"| idle (blocked in its read) | drain: until `stopped` | {len(idle)} | {summary(idle)} |")
            print(f"| busy (every slot on a 3 s task) | drain: until `stopped` | {len(busy)} | {summary(busy)} |")
            print(f"| idle | SIGTERM (peer): until exit | {len(term_idle)} | {summary(term_idle)} |")
            print(f"| busy (every slot on a 3 s task) | SIGTERM (peer): until exit | {len(term_busy)} | {summary(term_busy)} |")
        except TimeoutError as e:
            sys.stderr.write(open(os.path.join(d, "worker.log")).read()[-3000:])
            sys.exit(str(e))
        finally:
            if worker:
                worker.terminate()
                worker.wait(timeout=30)
            redis.terminate()
            redis.wait(timeout=10)


if __name__ == "__main__":
    main()
