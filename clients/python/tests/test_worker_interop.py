"""The client against the real workpool-worker: the worker runs what the client submits
(payload bytes, task id, attempt), the client reads the worker's real dead letters and
retries them, and `stats` gives the same figures as `workpool-worker stats --json`."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path
from typing import Any, Callable, List

import pytest

import workpool

from conftest import Server, worker_binary


class Worker:
    def __init__(self, server: Server, stream: str, *handler: str, max_deliveries: int = 5):
        self.proc = subprocess.Popen(
            [worker_binary(), "run", "--redis-url", server.url, "--stream", stream, "--group", stream, "--consumer", "w1",
             "--metrics-addr", "127.0.0.1:0", "--max-deliveries", str(max_deliveries), "--retry-backoff", "0",
             "--visibility-timeout", "5", *handler],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        assert self.proc.returncode == 0, self.proc.stderr.read().decode() if self.proc.stderr else ""


def until(cond: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def cli_stats(server: Server, stream: str, group: str) -> dict:
    out = subprocess.run([worker_binary(), "stats", "--redis-url", server.url, "--stream", stream, "--group", group, "--json"],
                         capture_output=True, text=True, timeout=30, check=True)
    return json.loads(out.stdout)


def same_stats(cli: dict, ours: dict) -> None:
    """Every field the command prints, equal; the clocks (ages, idle times) close."""
    for k, v in cli.items():
        if k == "oldest_pending_age_ms":
            assert (v is None) == (ours[k] is None)
            if v is not None:
                assert abs(v - ours[k]) < 5000
        elif k == "consumers":
            assert [(c["name"], c["pending"]) for c in v] == [(c["name"], c["pending"]) for c in ours[k]]
        elif k == "partitions":
            assert len(v) == len(ours[k])
            for theirs, mine in zip(v, ours[k]):
                same_stats(theirs, mine)
        else:
            assert ours[k] == v, (k, ours[k], v)


def test_stats_are_the_workers(r: Any, server: Server) -> None:
    pool = workpool.Pool(r, "interop")
    states: List[str] = []

    def compare(label: str) -> None:
        states.append(label)
        same_stats(cli_stats(server, "interop", "interop"), pool.stats().to_dict())

    compare("nothing")
    pool.submit_many([{"n": i} for i in range(10)])
    compare("no group")
    r.xgroup_create("interop", "interop", "0")
    r.xreadgroup("interop", "w1", {"interop": ">"}, count=3)
    r.xreadgroup("interop", "w2", {"interop": ">"}, count=2)
    compare("pending and lag")
    r.xdel("interop", r.xrange("interop", count=1)[0][0])
    r.xadd("interop:dead", {"payload": "x"})
    compare("a pending entry deleted, a dead letter")
    r.execute_command("XTRIM", "interop", "MAXLEN", "2")
    compare("trimmed")


def test_the_worker_runs_what_the_client_submits(r: Any, server: Server, tmp_path: Path) -> None:
    pool = workpool.Pool(r, "runs", partitions=1)
    payloads = [b"\x00\xffbinary\n", "é<>&".encode(), b'{"n":1}', b""]
    subs = pool.submit_many([workpool.Task(p, id=f"t{i}", attempt=i + 1) for i, p in enumerate(payloads)])
    subs.append(pool.submit({"plain": True}))
    out = tmp_path / "out"
    out.mkdir()
    w = Worker(server, "runs", "--exec-shell",
               f'cat > "{out}/$WORKPOOL_TASK_ID"; printf "%s|%s" "$WORKPOOL_PRODUCER_ID" "$WORKPOOL_ATTEMPT" > "{out}/$WORKPOOL_TASK_ID.env"')
    try:
        until(lambda: pool.stats().backlog == 0 and len(list(out.iterdir())) == 10)
    finally:
        w.stop()
    for i, (s, p) in enumerate(zip(subs, payloads)):
        assert (out / s.entry_id).read_bytes() == p
        assert (out / f"{s.entry_id}.env").read_text() == f"t{i}|{i + 1}"
    assert (out / subs[-1].entry_id).read_bytes() == b'{"plain":true}'
    assert (out / f"{subs[-1].entry_id}.env").read_text() == "|"
    assert r.xlen("runs") == 0


def test_real_dead_letters_listed_and_retried(r: Any, server: Server, tmp_path: Path) -> None:
    pool = workpool.Pool(r, "dl")
    failing = pool.submit_many([workpool.Task({"n": i}, id=f"job-{i}") for i in range(4)] + [{"n": 4}, {"n": 5}])
    w = Worker(server, "dl", "--builtin", "fail", max_deliveries=2)
    try:
        until(lambda: pool.stats().dead_letters == 6)
    finally:
        w.stop()
    dls = pool.dead_letters()
    assert len(dls) == 6
    by_task = {d.task_id: d for d in dls}
    assert set(by_task) == {s.task_id for s in failing}
    for i, s in enumerate(failing):
        d = by_task[s.task_id]
        assert d.original_id == s.entry_id and d.deliveries == 2 and d.consumer == "w1"
        assert d.stream == "dl" and d.group == "dl"
        assert d.error is not None and d.error.startswith("failed 2 times (maxDeliveries 2); last error:")
        assert json.loads(d.payload or b"") == {"n": i}
    assert len(pool.dead_letters(task_id="job-2")) == 1
    assert len(pool.dead_letters(error_contains="maxDeliveries 2")) == 6
    outcomes = pool.retry_all_dead_letters()
    assert len(outcomes) == 6 and all(o.entry_id for o in outcomes)
    assert pool.stats().dead_letters == 0 and pool.stats().backlog == 6
    out = tmp_path / "ids"
    out.mkdir()
    w = Worker(server, "dl", "--exec-shell", f'printf "%s" "$WORKPOOL_PRODUCER_ID" > "{out}/$WORKPOOL_TASK_ID"')
    try:
        until(lambda: pool.stats().backlog == 0 and len(list(out.iterdir())) == 6)
    finally:
        w.stop()
    # A retried task keeps its task id: its own, or its first entry id.
    assert sorted(p.read_text() for p in out.iterdir()) == sorted(s.task_id for s in failing)
    assert pool.stats().dead_letters == 0


def test_a_permanent_failure_is_dead_lettered_with_its_reason(r: Any, server: Server) -> None:
    pool = workpool.Pool(r, "perm")
    s = pool.submit("x", id="bad-input")
    w = Worker(server, "perm", "--exec-shell", "echo no such image >&2; exit 100")
    try:
        until(lambda: pool.stats().dead_letters == 1)
    finally:
        w.stop()
    [d] = pool.dead_letters()
    assert d.task_id == "bad-input" and d.deliveries == 1 and d.payload == b"x"
    assert d.error is not None and d.error.startswith("permanent failure:") and "no such image" in d.error
    assert pool.status(s).state == "unknown"  # this worker version writes no results yet


def partitioned_worker() -> str:
    """The worker binary; it must offer partitions (the queue protocol's `--partitions`)."""
    b = worker_binary()
    help_text = subprocess.run([b, "run", "--help"], capture_output=True, text=True, timeout=30).stdout
    assert "--partitions" in help_text, f"{b} run --help lists no --partitions"
    return b


@pytest.mark.parametrize("mode", ["standalone", "cluster"])
def test_a_partitioned_pool_with_the_real_worker(request: Any, mode: str) -> None:
    """Client and worker agree on every partition's keys (hash-tagged on Cluster): the
    worker drains what the client spreads, the client lists and retries the worker's dead
    letters in every partition, and the stats equal `stats --json --partitions 3`."""
    binary = partitioned_worker()
    if mode == "cluster":
        cluster = request.getfixturevalue("cluster")
        client, url = request.getfixturevalue("rc"), cluster.url
    else:
        server = request.getfixturevalue("server")
        client, url = request.getfixturevalue("r"), server.url
    pool = workpool.Pool(client, "parts", partitions=3, round_robin_start=0)
    subs = pool.submit_many([{"n": i} for i in range(60)] + [workpool.Task({"k": i}, key="user:7") for i in range(9)])
    assert {s.partition for s in subs} == {0, 1, 2}

    def run(*handler: str) -> subprocess.Popen:
        return subprocess.Popen([binary, "run", "--redis-url", url, "--stream", "parts", "--group", "parts", "--partitions",
                                 "3", "--consumer", "w1", "--metrics-addr", "127.0.0.1:0", "--max-deliveries", "1",
                                 "--retry-backoff", "0", *handler], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def stop(p: subprocess.Popen) -> None:
        p.send_signal(signal.SIGTERM)
        p.wait(20)
        assert p.returncode == 0, p.stderr.read().decode() if p.stderr else ""

    w = run("--builtin", "fail")
    try:
        until(lambda: pool.stats().dead_letters == 69)
    finally:
        stop(w)
    st = pool.stats()
    assert [p.dead_letters for p in st.partitions] == [sum(s.partition == i for s in subs) for i in range(3)]
    out = subprocess.run([binary, "stats", "--redis-url", url, "--stream", "parts", "--group", "parts", "--partitions", "3",
                          "--json"], capture_output=True, text=True, timeout=30, check=True)
    same_stats(json.loads(out.stdout), pool.stats().to_dict())
    assert {d.task_id for d in pool.dead_letters(limit=None)} == {s.task_id for s in subs}
    assert len(pool.retry_all_dead_letters()) == 69
    w = run("--builtin", "noop")
    try:
        until(lambda: pool.stats().backlog == 0)
    finally:
        stop(w)
    st = pool.stats()
    assert st.dead_letters == 0 and st.backlog == 0 and all(p.group_exists for p in st.partitions)
