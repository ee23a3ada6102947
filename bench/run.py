#!/usr/bin/env python3
"""Benchmark: one workpool-worker process vs. BullMQ on one local Redis, in one run.

Measures, for N no-op tasks:
  * enqueue rate: `workpool-worker submit` (pipelined XADD) vs. BullMQ `Queue.addBulk`;
  * drain rate: one `workpool-worker run --builtin noop` process vs. one BullMQ `Worker`
    (concurrency 50, jobs removed on completion) in one Node process.

Both use the same freshly started redis-server on a free loopback port, one after the
other, so they see the same machine. Writes the results to BENCHMARKS.md (or --out).
Usage: python3 bench/run.py [--tasks N] [--rounds R] [--out PATH]
"""
import argparse
import datetime
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PEER_DIR = os.path.join(ROOT, "bench", "peers", "bullmq")
WORKER = os.path.join(ROOT, "target", "release", "workpool-worker")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Redis:
    """The smallest RESP client that can poll a counter: enough for XLEN and FLUSHALL."""

    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.buf = b""

    def command(self, *args):
        out = b"*%d\r\n" % len(args)
        for a in args:
            a = str(a).encode()
            out += b"$%d\r\n%s\r\n" % (len(a), a)
        self.sock.sendall(out)
        return self._read()

    def _line(self):
        while b"\r\n" not in self.buf:
            self.buf += self.sock.recv(65536)
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def _read(self):
        line = self._line()
        kind, rest = line[:1], line[1:]
        if kind in (b"+", b":"):
            return int(rest) if kind == b":" else rest.decode()
        if kind == b"-":
            raise RuntimeError(rest.decode())
        if kind == b"$":
            n = int(rest)
            if n < 0:
                return None
            while len(self.buf) < n + 2:
                self.buf += self.sock.recv(65536)
            data, self.buf = self.buf[:n], self.buf[n + 2 :]
            return data.decode()
        if kind == b"*":
            return [self._read() for _ in range(int(rest))]
        raise RuntimeError("unexpected reply %r" % line)


def start_redis(tmp):
    port = free_port()
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", tmp],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    for _ in range(100):
        try:
            Redis(port).command("PING")
            return proc, port
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("redis-server did not start")


def workpool_round(port, tasks):
    r = Redis(port)
    r.command("FLUSHALL")
    url = "redis://127.0.0.1:%d/0" % port
    t0 = time.perf_counter()
    subprocess.run([WORKER, "submit", "--redis-url", url, "--stream", "bench",
                    "--payload", "{}", "--count", str(tasks)],
                   check=True, stdout=subprocess.DEVNULL)
    enqueue = tasks / (time.perf_counter() - t0)
    assert r.command("XLEN", "bench") == tasks, "submit did not enqueue every task"

    worker = subprocess.Popen(
        [WORKER, "run", "--redis-url", url, "--stream", "bench", "--group", "bench",
         "--consumer", "bench-1", "--builtin", "noop", "--metrics-addr", "127.0.0.1:0"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t0 = time.perf_counter()
    try:
        # Acked entries are deleted, so the stream is empty exactly when all are done.
        while r.command("XLEN", "bench") > 0:
            if worker.poll() is not None:
                raise RuntimeError("workpool-worker exited early: %s" % worker.returncode)
            time.sleep(0.005)
        drain_seconds = time.perf_counter() - t0
    finally:
        worker.terminate()
        worker.wait(30)
    return {"enqueue_per_s": enqueue, "drain_per_s": tasks / drain_seconds,
            "drain_seconds": drain_seconds}


def bullmq_round(port, tasks, concurrency):
    Redis(port).command("FLUSHALL")
    out = subprocess.run(["node", "bench.mjs", str(port), str(tasks), str(concurrency)],
                         cwd=PEER_DIR, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", type=int, default=200_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--concurrency", type=int, default=50, help="BullMQ worker concurrency")
    ap.add_argument("--out", default=os.path.join(ROOT, "BENCHMARKS.md"))
    args = ap.parse_args()

    for tool in ("redis-server", "node", "npm", "cargo"):
        if not shutil.which(tool):
            sys.exit("bench: %s is required (see README: make bench-deps)" % tool)
    print("building workpool-worker (release)...", flush=True)
    subprocess.run(["cargo", "build", "--release", "-p", "workpool-worker"], cwd=ROOT, check=True)
    if not os.path.isdir(os.path.join(PEER_DIR, "node_modules")):
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=PEER_DIR, check=True)

    results = {"workpool": [], "bullmq": []}
    with tempfile.TemporaryDirectory() as tmp:
        redis, port = start_redis(tmp)
        try:
            for i in range(args.rounds):
                # Alternate the order so neither always runs on a warmer machine.
                order = ["workpool", "bullmq"] if i % 2 == 0 else ["bullmq", "workpool"]
                for name in order:
                    if name == "workpool":
                        res = workpool_round(port, args.tasks)
                    else:
                        res = bullmq_round(port, args.tasks, args.concurrency)
                    results[name].append(res)
                    print("round %d %-8s enqueue %8.0f/s  drain %8.0f/s" %
                          (i + 1, name, res["enqueue_per_s"], res["drain_per_s"]), flush=True)
        finally:
            redis.terminate()
            redis.wait(10)

    def med(name, key):
        return statistics.median(r[key] for r in results[name])

    wp_drain, bq_drain = med("workpool", "drain_per_s"), med("bullmq", "drain_per_s")
    wp_enq, bq_enq = med("workpool", "enqueue_per_s"), med("bullmq", "enqueue_per_s")
    redis_version = subprocess.run(["redis-server", "--version"], capture_output=True,
                                   text=True).stdout.split()[2]
    node_version = subprocess.run(["node", "--version"], capture_output=True, text=True).stdout.strip()
    with open(os.path.join(PEER_DIR, "package.json")) as f:
        bullmq_version = json.load(f)["dependencies"]["bullmq"]
    rows = "\n".join(
        "| %d | %s | %.0f | %.0f |" % (i + 1, name, r["enqueue_per_s"], r["drain_per_s"])
        for name in ("workpool", "bullmq") for i, r in enumerate(results[name]))
    report = f"""# Benchmarks

Reproduce: `make bench` (= `python3 bench/run.py --tasks {args.tasks} --rounds {args.rounds}`).

Measured {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC on {platform.node() and 'this machine'}
({os.cpu_count()} cores, {platform.machine()}), one local `redis-server` {redis_version} on loopback,
{args.tasks} no-op tasks a round, {args.rounds} rounds, alternating which goes first.
Peer: BullMQ {bullmq_version} on Node {node_version}, one `Worker` with concurrency {args.concurrency},
jobs removed on completion (workpool acknowledges and deletes its entries too).

## Result (median of rounds)

| | workpool | BullMQ | ratio |
|---|---:|---:|---:|
| drain, tasks/s (one worker process) | {wp_drain:.0f} | {bq_drain:.0f} | **{wp_drain / bq_drain:.2f}x** |
| enqueue, tasks/s (one producer) | {wp_enq:.0f} | {bq_enq:.0f} | **{wp_enq / bq_enq:.2f}x** |

## Rounds

| round | system | enqueue/s | drain/s |
|---:|---|---:|---:|
{rows}

## How it is measured

- workpool enqueue: wall time of `workpool-worker submit --count N` (process start to
  exit, pipelined `XADD`). BullMQ enqueue: `Queue.addBulk` in chunks of 1000, timed inside
  Node (process start not included: this favours the peer).
- workpool drain: wall time from spawning `workpool-worker run --builtin noop` until the
  stream is empty (entries are deleted on ack; polled every 5 ms), startup included.
  BullMQ drain: from creating the `Worker` until its N-th `completed` event.
- Both share the machine with the one `redis-server`; on a 2-core VM rounds vary by up
  to about 30%, hence alternating order and the median. The ratio, not the absolute
  numbers, is the result.
- The benchmark is its own command and never part of the test suite.
"""
    # BENCHMARKS.md holds other benchmarks' sections after this one (worker chaos,
    # autoscaling simulator, ...): rewrite only this command's part, keep the rest.
    kept = ""
    if os.path.exists(args.out):
        with open(args.out) as f:
            old = f.read()
        marker = "\n## How it is measured\n"
        rest = old.split(marker, 1)[1] if marker in old else ""
        later = rest.find("\n## ")
        kept = rest[later:] if later >= 0 else ""
    with open(args.out, "w") as f:
        f.write(report + kept)
    print(report)


if __name__ == "__main__":
    main()
