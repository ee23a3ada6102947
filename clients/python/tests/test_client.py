"""Behaviour of the sync and asyncio clients against real redis-servers: batches, dedup,
durable submit, results and waiting, status, dead letters under concurrency, Cluster,
Sentinel."""

from __future__ import annotations

import asyncio
import inspect
import threading
import time
from typing import Any, Iterator, List

import pytest
import redis
import redis.asyncio as aredis

import workpool
import workpool.aio
from workpool import _scripts

from conftest import Cluster, Replicated, Server


class AsyncAsSync:
    """Drives a workpool.aio.Pool through the sync API, so one test covers both."""

    def __init__(self, pool: workpool.aio.Pool, loop: asyncio.AbstractEventLoop):
        self._p, self._loop = pool, loop

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._p, name)
        if name == "iter_dead_letters":
            async def collect(*a: Any, **k: Any) -> List[Any]:
                return [d async for d in attr(*a, **k)]
            return lambda *a, **k: iter(self._loop.run_until_complete(collect(*a, **k)))
        if not callable(attr):
            return attr

        def call(*a: Any, **k: Any) -> Any:
            res = attr(*a, **k)
            return self._loop.run_until_complete(res) if inspect.isawaitable(res) else res
        return call


@pytest.fixture(params=["sync", "async"])
def make_pool(request: Any, server: Server) -> Iterator[Any]:
    """make_pool(stream, **kw): a sync Pool, or an asyncio Pool behind the sync API."""
    loop = asyncio.new_event_loop() if request.param == "async" else None
    made: List[Any] = []

    def make(stream: str = "q", group: Any = None, **kw: Any) -> Any:
        if loop is None:
            return workpool.Pool(redis.Redis(port=server.port), stream, group, **kw)
        p = workpool.aio.Pool(aredis.Redis(port=server.port), stream, group, **kw)
        made.append(p)
        return AsyncAsSync(p, loop)

    yield make
    if loop is not None:
        for p in made:
            loop.run_until_complete(p.redis.aclose())
        loop.close()


def write_result(r: Any, pool: Any, tid: str, state: str = "done", partition: int = 0, **fields: Any) -> None:
    """What a worker with results on does when a task ends (result.lua)."""
    k = pool.layout.keys[partition]
    args: List[Any] = [60000, state, "v", 1, "task_id", tid]
    for name, v in fields.items():
        args += [name, v]
    r.register_script(_scripts.SOURCES["result"])(keys=[k.result(tid), k.notify(tid)], args=args)


def cmd_calls(r: Any, name: str) -> int:
    return int(r.info("commandstats").get(f"cmdstat_{name}", {}).get("calls", 0))


# ----------------------------------------------------------------------------- submit


def test_batches_spread_over_partitions_in_order(r: Any, make_pool: Any) -> None:
    pool = make_pool("q", partitions=3, round_robin_start=0)
    subs = pool.submit_many([{"n": i} for i in range(2500)])
    assert [s.partition for s in subs] == [i % 3 for i in range(2500)]
    for p, stream in enumerate(["q", "q:1", "q:2"]):
        rows = r.xrange(stream)
        mine = [s for s in subs if s.partition == p]
        assert [eid.decode() for eid, _ in rows] == [s.entry_id for s in mine]
        assert [f[b"payload"] for _, f in rows] == [f'{{"n":{i}}}'.encode() for i in range(p, 2500, 3)]
    assert pool.stats().backlog == 2500


def test_bad_input_in_a_batch_submits_nothing(r: Any, make_pool: Any) -> None:
    pool = make_pool("q")
    with pytest.raises(workpool.ConfigError):
        pool.submit_many(["ok"] * 10 + [workpool.Task("x", id="17-0")])
    with pytest.raises(workpool.ConfigError):
        pool.submit_many(["ok", object()])
    assert r.dbsize() == 0


def test_a_failing_partition_reports_what_was_submitted(r: Any, make_pool: Any) -> None:
    pool = make_pool("q", partitions=2, round_robin_start=0)
    r.set("q:1", "not a stream")
    with pytest.raises(workpool.SubmitError) as e:
        pool.submit_many([f"t{i}" for i in range(6)])
    got = e.value.submitted
    assert [s is not None for s in got] == [True, False, True, False, True, False]
    assert [eid.decode() for eid, _ in r.xrange("q")] == [s.entry_id for s in got if s is not None]


def test_dedup(r: Any, make_pool: Any) -> None:
    pool = make_pool("q")
    a = pool.submit("first", id="order-1", dedup=True)
    b, c = pool.submit_many([workpool.Task("again", id="order-1", dedup=True),
                             workpool.Task("other", id="order-2", dedup=True)])
    assert not a.duplicate and b.duplicate and not c.duplicate
    assert b.entry_id == a.entry_id and r.xlen("q") == 2
    assert r.get("q:dedup:order-1").decode() == a.entry_id
    short = pool.submit("w", id="order-3", dedup=True, dedup_window=0.05)
    time.sleep(0.15)
    later = pool.submit("w", id="order-3", dedup=True, dedup_window=0.05)
    assert not later.duplicate and later.entry_id != short.entry_id


def test_dedup_under_concurrent_producers(server: Server) -> None:
    """Invariant: 8 producers submit the same 200 ids concurrently; each id is in the
    stream once, and every producer got that entry's id back."""
    r = server.client()
    r.flushall()
    results: List[List[workpool.Submitted]] = []

    def produce() -> None:
        pool = workpool.Pool(redis.Redis(port=server.port), "q", partitions=3)
        results.append(pool.submit_many([workpool.Task(f"p{i}", id=f"id-{i}", dedup=True) for i in range(200)]))

    threads = [threading.Thread(target=produce) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    total = sum(r.xlen(s) for s in ("q", "q:1", "q:2"))
    assert total == 200
    for i in range(200):
        assert len({res[i].entry_id for res in results}) == 1
        assert sum(not res[i].duplicate for res in results) == 1


# ----------------------------------------------------------------------------- durable


def test_durable_submit_confirmed_by_a_replica(replicated: Replicated) -> None:
    pool = workpool.Pool(replicated.primary.client(), "durable")
    subs = pool.submit_many([f"t{i}" for i in range(50)], min_replicas=1, wait_timeout=5)
    assert all(s.confirmed for s in subs)
    one = pool.submit("x", min_replicas=1, wait_timeout=5)
    assert one.confirmed is True
    assert pool.submit("y").confirmed is None
    deadline = time.monotonic() + 5
    while replicated.replica.client().xlen("durable") != 52 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert replicated.replica.client().xlen("durable") == 52


def test_durable_submit_without_replicas_is_unconfirmed_not_lost(r: Any, make_pool: Any) -> None:
    pool = make_pool("q")
    subs = pool.submit_many(["a", "b"], min_replicas=1, wait_timeout=0.05)
    assert [s.confirmed for s in subs] == [False, False]
    assert r.xlen("q") == 2


def test_sentinel_url(replicated: Replicated) -> None:
    url = f"redis+sentinel://127.0.0.1:{replicated.sentinel.port}/wpmaster"
    with workpool.Pool.from_url(url, "via-sentinel") as pool:
        s = pool.submit({"x": 1}, min_replicas=1, wait_timeout=5)
        assert s.confirmed
    assert replicated.primary.client().xrange("via-sentinel")[0][1] == {b"payload": b'{"x":1}'}

    async def run() -> None:
        p = workpool.aio.Pool.from_url(url, "via-sentinel")
        await p.submit("a")
        assert (await p.stats()).stream_length == 2
        await p.aclose()
    asyncio.run(run())


# ----------------------------------------------------------------------------- results


def test_wait_for_blocks_until_the_result(r: Any, make_pool: Any) -> None:
    pool = make_pool("q")
    s = pool.submit("x", id="job-1")
    hgetall_before, blmove_before = cmd_calls(r, "hgetall"), cmd_calls(r, "blmove")
    t = threading.Timer(0.5, write_result, args=(redis.Redis(port=r.connection_pool.connection_kwargs["port"]), pool,
                                                  "job-1"), kwargs={"output": "thumb.png", "entry_id": s.entry_id})
    t.start()
    res = pool.wait_for(s, timeout=10)
    t.join()
    assert res.ok and res.text() == "thumb.png" and res.entry_id == s.entry_id
    # It blocked on the notification instead of polling: one read before, one after.
    assert cmd_calls(r, "hgetall") - hgetall_before == 2
    assert cmd_calls(r, "blmove") - blmove_before == 1


def test_every_waiter_wakes(r: Any, make_pool: Any) -> None:
    pool = make_pool("q", partitions=2)
    s = pool.submit("x", id="shared", key="k")
    got: List[workpool.Result] = []
    port = r.connection_pool.connection_kwargs["port"]

    def waiter() -> None:
        got.append(workpool.Pool(redis.Redis(port=port), "q", partitions=2).wait_for("shared", 10, key="k"))

    threads = [threading.Thread(target=waiter) for _ in range(5)]
    for t in threads:
        t.start()
    time.sleep(0.3)
    write_result(r, pool, "shared", partition=s.partition)
    for t in threads:
        t.join(15)
    assert len(got) == 5 and all(g.state == "done" for g in got)
    assert pool.wait_for(s, timeout=1).state == "done"  # the notification is still there


def test_wait_for_times_out(r: Any, make_pool: Any) -> None:
    pool = make_pool("q")
    with pytest.raises(workpool.WaitTimeout) as e:
        pool.wait_for("never", timeout=0.2)
    assert isinstance(e.value, TimeoutError) and e.value.task_id == "never"


def test_a_partitioned_pool_needs_the_partition_of_a_bare_id(make_pool: Any) -> None:
    pool = make_pool("q", partitions=3)
    with pytest.raises(workpool.ConfigError, match="partition"):
        pool.wait_for("some-id", timeout=0.01)
    with pytest.raises(workpool.WaitTimeout):
        pool.wait_for("some-id", timeout=0.01, partition=2)
    with pytest.raises(workpool.ConfigError):
        pool.status("some-id", partition=3)


def test_status_through_a_task_s_life(r: Any, make_pool: Any) -> None:
    pool = make_pool("q", "g")
    s = pool.submit("x", id="life")
    assert pool.status(s).state == "queued"
    r.xgroup_create("q", "g", "0")
    assert pool.status(s).state == "queued"
    r.xreadgroup("g", "w1", {"q": ">"}, count=1)
    st = pool.status(s)
    assert (st.state, st.consumer, st.deliveries) == ("running", "w1", 1)
    r.xack("q", "g", s.entry_id)
    r.xdel("q", s.entry_id)
    assert pool.status(s).state == "unknown"  # finished, results off
    write_result(r, pool, "life", "dead", error="boom")
    st = pool.status(s)
    assert st.state == "dead" and st.result is not None and st.result.error == "boom"
    assert pool.status(workpool.TaskRef("nothing", 0, "1-0")).state == "unknown"


def test_async_waiters_gather(server: Server) -> None:
    r = server.client()
    r.flushall()

    async def run() -> None:
        pool = workpool.aio.Pool(aredis.Redis(port=server.port), "q")
        subs = await pool.submit_many([workpool.Task(i, id=f"a{i}") for i in range(5)])
        waits = [asyncio.ensure_future(workpool.aio.Pool(aredis.Redis(port=server.port), "q").wait_for(s, 10))
                 for s in subs]
        await asyncio.sleep(0.2)
        for s in reversed(subs):
            write_result(r, pool, s.task_id, output=str(s.task_id))
        res = await asyncio.gather(*waits)
        assert [x.text() for x in res] == [f"a{i}" for i in range(5)]
        await pool.aclose()
    asyncio.run(run())


# ----------------------------------------------------------------------------- dead letters


def add_dead_letters(r: Any, dead: str, n: int, prefix: str = "d", error: str = "failed 5 times") -> List[str]:
    pipe = r.pipeline(transaction=False)
    for i in range(n):
        pipe.xadd(dead, {"payload": f"{prefix}{i}", "original_id": f"{i + 1}-0", "error": error, "deliveries": 5,
                         "stream": "q", "group": "q", "consumer": "w1"})
    return [x.decode() for x in pipe.execute()]


def test_retry_all_leaves_dead_letters_written_meanwhile(r: Any, make_pool: Any, server: Server) -> None:
    """Invariant, whatever the interleaving: every dead letter present at the start is
    back in the task stream exactly once; every one written during the call is either
    retried (it came before the call's snapshot) or still a dead letter, never both."""
    pool = make_pool("q")
    add_dead_letters(r, "q:dead", 250)
    stop = threading.Event()
    late: List[str] = []

    def writer() -> None:
        c = server.client()
        while not stop.is_set() and len(late) < 300:
            add_dead_letters(c, "q:dead", 1, prefix=f"late{len(late)}-")
            late.append(f"late{len(late)}-0")

    t = threading.Thread(target=writer)
    t.start()
    time.sleep(0.01)
    outcomes = pool.retry_all_dead_letters()
    stop.set()
    t.join()
    queued = [f[b"payload"].decode() for _, f in r.xrange("q")]
    remaining = [f[b"payload"].decode() for _, f in r.xrange("q:dead")]
    assert sorted(p for p in queued if p.startswith("d")) == sorted(f"d{i}" for i in range(250))
    assert all(p.startswith("late") for p in remaining)
    assert sorted(queued + remaining) == sorted([f"d{i}" for i in range(250)] + late)
    assert len(outcomes) == len(queued) and all(o.entry_id for o in outcomes)


def test_concurrent_retries_move_each_dead_letter_once(server: Server) -> None:
    r = server.client()
    r.flushall()
    ids = add_dead_letters(r, "q:dead", 300)
    outcomes: List[List[workpool.RetryOutcome]] = []

    def retry() -> None:
        outcomes.append(workpool.Pool(redis.Redis(port=server.port), "q").retry_dead_letters(ids))

    threads = [threading.Thread(target=retry) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert r.xlen("q") == 300 and r.xlen("q:dead") == 0
    for i in range(300):
        assert sum(o[i].entry_id is not None for o in outcomes) == 1
    assert sorted(f[b"payload"] for _, f in r.xrange("q")) == sorted(f"d{i}".encode() for i in range(300))


def test_purge(r: Any, make_pool: Any) -> None:
    pool = make_pool("q", partitions=2)
    add_dead_letters(r, "q:dead", 3, error="permanent failure: 404")
    add_dead_letters(r, "q:1:dead", 4)
    assert pool.stats().dead_letters == 7
    assert pool.purge_all_dead_letters(error_contains="404") == 3
    assert r.xlen("q:dead") == 0 and r.xlen("q:1:dead") == 4
    one = pool.dead_letters(limit=1)[0]
    assert pool.purge_dead_letters([one, "1/1-0"]) == 1
    assert pool.purge_all_dead_letters() == 3
    assert pool.stats().dead_letters == 0
    assert pool.purge_all_dead_letters() == 0


def test_purge_all_spares_dead_letters_written_meanwhile(r: Any, server: Server) -> None:
    pool = workpool.Pool(r, "q")
    add_dead_letters(r, "q:dead", 500)
    stop = threading.Event()
    late = [0]

    def writer() -> None:
        c = server.client()
        while not stop.is_set() and late[0] < 200:
            add_dead_letters(c, "q:dead", 1, prefix="late")
            late[0] += 1

    t = threading.Thread(target=writer)
    t.start()
    n = pool.purge_all_dead_letters()
    stop.set()
    t.join()
    assert n + r.xlen("q:dead") == 500 + late[0]
    assert all(f[b"payload"].startswith(b"late") for _, f in r.xrange("q:dead"))
    assert n >= 500


def test_dead_letter_listing_pages(r: Any, make_pool: Any) -> None:
    pool = make_pool("q", partitions=2)
    add_dead_letters(r, "q:dead", 1200)
    add_dead_letters(r, "q:1:dead", 700, prefix="e")
    got = list(pool.iter_dead_letters())
    assert len(got) == 1900
    keys = [(int(d.id.split("-")[0]), int(d.id.split("-")[1]), d.partition) for d in got]
    assert keys == sorted(keys)
    newest = pool.dead_letters(limit=None, newest_first=True)
    assert [d.ref for d in newest] == [d.ref for d in reversed(got)]
    assert len(pool.dead_letters()) == 100


def test_decoded_clients_are_refused(server: Server) -> None:
    with pytest.raises(workpool.ConfigError, match="decode_responses"):
        workpool.Pool(redis.Redis(port=server.port, decode_responses=True), "q")


def test_from_url(server: Server) -> None:
    server.client().flushall()
    with workpool.Pool.from_url(server.url, "q", partitions=2) as pool:
        pool.submit_many(["a", "b"])
        assert pool.stats().stream_length == 2
    with pytest.raises(workpool.ConfigError):
        workpool.Pool.from_url("http://x", "q")


# ----------------------------------------------------------------------------- cluster


def test_cluster_partitions_on_several_nodes(cluster: Cluster, rc: Any) -> None:
    pool = workpool.Pool(rc, "jobs", partitions=6, round_robin_start=0)
    slots = {rc.keyslot(k.stream) for k in pool.layout.keys}
    nodes = {rc.get_node_from_key(k.stream).name for k in pool.layout.keys}
    assert len(slots) == 6 and len(nodes) >= 2
    subs = pool.submit_many([{"i": i} for i in range(600)])
    subs += pool.submit_many([workpool.Task(i, id=f"d{i}", dedup=True) for i in range(60)])
    st = pool.stats()
    assert st.stream == "jobs" and st.backlog == 660
    assert [p.stream_length for p in st.partitions][:6] and sum(p.stream_length for p in st.partitions) == 660
    assert all(p.stream == f"{{jobs{'' if i == 0 else ':' + str(i)}}}" for i, p in enumerate(st.partitions))
    # Durable submit goes to each partition's node (no replicas here: unconfirmed).
    assert all(s.confirmed is False for s in pool.submit_many(["x"] * 12, min_replicas=1, wait_timeout=0.05))
    # Dead letters on several nodes: listed, retried, results awaited.
    for k in pool.layout.keys:
        add_dead_letters(rc, k.dead, 2, prefix=f"p{k.index}-")
    assert pool.stats().dead_letters == 12
    assert len(pool.dead_letters(limit=None)) == 12
    assert len(pool.retry_all_dead_letters()) == 12 and pool.stats().dead_letters == 0
    s = subs[-1]
    write_result(rc, pool, s.task_id, partition=s.partition, output="ok")
    assert pool.wait_for(s, timeout=2).text() == "ok"


def test_cluster_async(cluster: Cluster, rc: Any) -> None:
    async def run() -> None:
        pool = workpool.aio.Pool.from_url(cluster.url, "ajobs", partitions=4)
        subs = await pool.submit_many([workpool.Task(i, id=f"t{i}") for i in range(40)], min_replicas=1,
                                      wait_timeout=0.05)
        assert len({s.partition for s in subs}) == 4 and all(s.confirmed is False for s in subs)
        assert (await pool.stats()).backlog == 40
        waiter = asyncio.ensure_future(pool.wait_for(subs[7], 10))
        await asyncio.sleep(0.1)
        write_result(rc, pool, subs[7].task_id, partition=subs[7].partition)
        assert (await waiter).state == "done"
        await pool.aclose()
    asyncio.run(run())
