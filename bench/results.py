#!/usr/bin/env python3
"""Benchmark: what task results (`--results-ttl`, docs/protocol.md 8) cost a worker.

One `workpool-worker run` process drains N tasks from one local redis-server, with
results off (the default) and on (`--results-ttl 600`), in alternating order, R rounds:

  * `--builtin noop` (the cheapest handler, so the largest relative cost);
  * `--exec-shell cat` (one process per task; its stdout, the payload, is the output
    that the worker tees to its own stdout and records).

Drain time: from spawning the worker until the stream is empty (the ack script deletes
each entry, with results on in the same script that writes its record). After a
results-on drain it checks that every task has its record and notification list, and
reports Redis memory per record. Prints the table for BENCHMARKS.md.
Usage: python3 bench/results.py [--tasks N] [--exec-tasks N] [--rounds R]
"""
import argparse
import datetime
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from run import ROOT, WORKER, Redis, start_redis  # noqa: E402


def used_memory(r):
    info = r.command("INFO", "memory")
    for line in info.splitlines():
        if line.startswith("used_memory:"):
            return int(line.split(":", 1)[1])
    raise RuntimeError("no used_memory in INFO")


def drain(port, tasks, handler, results):
    r = Redis(port)
    r.command("FLUSHALL")
    url = "redis://127.0.0.1:%d/0" % port
    subprocess.run([WORKER, "submit", "--redis-url", url, "--stream", "bench",
                    "--payload", '{"n":1}', "--count", str(tasks)],
                   check=True, stdout=subprocess.DEVNULL)
    assert r.command("XLEN", "bench") == tasks, "submit did not enqueue every task"
    before = used_memory(r)
    args = [WORKER, "run", "--redis-url", url, "--stream", "bench", "--group", "bench",
            "--consumer", "bench-1", "--metrics-addr", "127.0.0.1:0"]
    if results:
        args += ["--results-ttl", "600"]
    args += handler
    worker = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t0 = time.perf_counter()
    try:
        while r.command("XLEN", "bench") > 0:
            if worker.poll() is not None:
                raise RuntimeError("workpool-worker exited early: %s" % worker.returncode)
            time.sleep(0.005)
        seconds = time.perf_counter() - t0
    finally:
        worker.terminate()
        worker.wait(30)
    keys = r.command("DBSIZE")
    # The stream, and with results a record and a notification list per task.
    want = 1 + (2 * tasks if results else 0)
    assert keys == want, "expected %d keys after the drain, found %d" % (want, keys)
    per_record = (used_memory(r) - before) / tasks if results else 0
    return tasks / seconds, per_record


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", type=int, default=200_000, help="noop tasks per drain")
    ap.add_argument("--exec-tasks", type=int, default=5_000, help="exec tasks per drain")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    print("building workpool-worker (release)...", flush=True)
    subprocess.run(["cargo", "build", "--release", "-p", "workpool-worker"], cwd=ROOT,
                   check=True)
    version = subprocess.run(["redis-server", "--version"], capture_output=True,
                             text=True).stdout.split()[2]
    handlers = [
        ("noop", ["--builtin", "noop"], args.tasks),
        ("exec (`sh -c cat`, concurrency 8)",
         ["--concurrency", "8", "--exec-shell", "cat"], args.exec_tasks),
    ]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        proc, port = start_redis(tmp)
        try:
            for name, handler, n in handlers:
                rates = {False: [], True: []}
                memory = []
                for rnd in range(args.rounds):
                    order = [False, True] if rnd % 2 == 0 else [True, False]
                    for results in order:
                        rate, per_record = drain(port, n, handler, results)
                        rates[results].append(rate)
                        if results:
                            memory.append(per_record)
                        print("%s round %d results %s: %.0f tasks/s" %
                              (name, rnd + 1, "on" if results else "off", rate), flush=True)
                off, on = statistics.median(rates[False]), statistics.median(rates[True])
                rows.append((name, n, off, on, statistics.median(memory),
                             rates[False], rates[True]))
        finally:
            proc.terminate()
            proc.wait(10)
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    print()
    print("Measured %s on this machine (%d cores, %s), one local `redis-server` v=%s,"
          % (now, os.cpu_count(), platform.machine(), version))
    print("%d rounds, alternating which goes first; median of rounds." % args.rounds)
    print()
    print("| handler | tasks | drain/s results off | drain/s results on | on vs off |"
          " Redis memory per record | rounds off | rounds on |")
    print("|---|---:|---:|---:|---:|---:|---|---|")
    for name, n, off, on, mem, r_off, r_on in rows:
        print("| %s | %d | %.0f | %.0f | %.2fx | %.0f B | %s | %s |" % (
            name, n, off, on, on / off, mem,
            ", ".join("%.0f" % x for x in r_off), ", ".join("%.0f" % x for x in r_on)))


if __name__ == "__main__":
    main()
