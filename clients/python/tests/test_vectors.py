"""The shared protocol vectors (clients/vectors/), run against real redis-servers."""

from __future__ import annotations

import base64
import re
from typing import Any, List

import pytest

import workpool
from workpool import _protocol as proto
from workpool import _scripts

from conftest import REPO, VECTORS, vectors


def as_bytes(v: Any) -> bytes:
    if isinstance(v, dict):
        if "base64" in v:
            return base64.b64decode(v["base64"])
        if "text" in v:
            return v["text"].encode()
    if isinstance(v, bytes):
        return v
    return str(v).encode()


def payload_of(p: dict) -> Any:
    if "json" in p:
        return p["json"]
    return as_bytes(p) if "base64" in p else p["text"]


def raw(client: Any, *args: Any) -> Any:
    """A command's raw RESP reply (redis-py's parsing would turn stream entries into
    dicts, losing order and repeated fields)."""
    if hasattr(client, "get_node_from_key"):
        client = client.get_redis_connection(client.get_node_from_key(args[1]))
    conn = client.connection_pool.get_connection()
    try:
        conn.send_command(*args)
        return conn.read_response()
    finally:
        client.connection_pool.release(conn)


def entry_fields(client: Any, stream: str, entry_id: str) -> List[List[bytes]]:
    rows = raw(client, "XRANGE", stream, entry_id, entry_id)
    assert len(rows) == 1, f"entry {entry_id} not in {stream}"
    f = rows[0][1]
    return [[f[i], f[i + 1]] for i in range(0, len(f), 2)]


def layout_of(pool: dict) -> proto.Layout:
    return proto.Layout(pool["stream"], pool.get("group", pool["stream"]), pool.get("partitions", 1),
                        pool.get("mode", "standalone"), pool.get("dead_letter_stream"))


def pool_on(client: Any, pool: dict, **kw: Any) -> workpool.Pool:
    return workpool.Pool(client, pool["stream"], pool.get("group"), partitions=pool.get("partitions", 1),
                         dead_letter_stream=pool.get("dead_letter_stream"), mode=pool.get("mode"), **kw)


# ----------------------------------------------------------------------------- scripts


@pytest.mark.parametrize("name", _scripts.NAMES)
def test_packaged_scripts_are_the_canonical_ones(name: str) -> None:
    assert _scripts.SOURCES[name] == (VECTORS / "scripts" / f"{name}.lua").read_text(encoding="utf-8")


def test_stats_script_is_the_workers() -> None:
    src = (REPO / "worker" / "src" / "queue.rs").read_text(encoding="utf-8")
    m = re.search(r'static STATS: LazyLock<Script> = LazyLock::new\(\|\| \{\s*Script::new\(\s*r#"\n(.*?)"#', src, re.S)
    assert m, "the STATS script is no longer where this test looks for it in worker/src/queue.rs"
    assert m.group(1) == _scripts.SOURCES["stats"]


# ----------------------------------------------------------------------------- keys


@pytest.mark.parametrize("case", vectors("keys.json")["cases"], ids=lambda c: c["name"])
def test_keys(case: dict) -> None:
    if case.get("error"):
        with pytest.raises(workpool.ConfigError):
            layout_of(case["pool"])
        return
    lay = layout_of(case["pool"])
    assert lay.draining == case["expect"]["draining"]
    got = [{"stream": k.stream, "dead": k.dead, "result": k.result(case["task_id"]), "notify": k.notify(case["task_id"]),
            "dedup": k.dedup(case["task_id"])} for k in lay.keys]
    assert got == case["expect"]["partitions"]


# ----------------------------------------------------------------------------- partitions

PART = vectors("partition.json")


@pytest.mark.parametrize("case", PART["crc16"], ids=lambda c: repr(c["key"]))
def test_crc16(case: dict) -> None:
    assert workpool.crc16(case["key"]) == case["crc16"]
    assert workpool.crc16(case["key"].encode()) == case["crc16"]


def test_partition_by_key() -> None:
    for c in PART["by_key"]:
        assert workpool.partition_for_key(c["key"], c["partitions"]) == c["expect"], c


@pytest.mark.parametrize("case", PART["round_robin"], ids=lambda c: f"{c['partitions']}-{c['start']}")
def test_round_robin(r: Any, case: dict) -> None:
    pool = workpool.Pool(r, "rr", partitions=case["partitions"], round_robin_start=case["start"])
    subs = pool.submit_many([f"t{i}" for i in range(case["tasks"])])
    assert [s.partition for s in subs] == case["expect"]
    one = workpool.Pool(r, "rr1", partitions=case["partitions"], round_robin_start=case["start"])
    assert [one.submit("x").partition for _ in range(case["tasks"])] == case["expect"]


# ----------------------------------------------------------------------------- URLs

URLS = vectors("urls.json")


@pytest.mark.parametrize("case", URLS["cases"], ids=lambda c: c["url"])
def test_urls(case: dict) -> None:
    t = workpool.parse_url(case["url"])
    e = case["expect"]
    assert t.mode == e["mode"] and t.tls == e["tls"] and t.db == e["db"]
    assert t.username == e["username"] and t.password == e["password"]
    if "path" in e:
        assert t.path == e["path"]
    else:
        assert [list(h) for h in t.hosts] == e["hosts"]
    for k in ("master", "sentinel_username", "sentinel_password"):
        if k in e:
            assert getattr(t, k) == e[k]


@pytest.mark.parametrize("url", URLS["bad"])
def test_bad_urls(url: str) -> None:
    with pytest.raises(workpool.ConfigError) as e:
        workpool.parse_url(url)
    assert "pw@" not in str(e.value)


# ----------------------------------------------------------------------------- submit

SUBMIT = vectors("submit.json")


def task_of(t: dict) -> workpool.Task:
    kw = {k: t[k] for k in ("id", "attempt", "key", "partition", "dedup") if k in t}
    if "dedup_window_ms" in t:
        kw["dedup_window"] = t["dedup_window_ms"] / 1000
    return workpool.Task(payload_of(t["payload"]), **kw)


def expected_command(cmd: List[Any]) -> List[bytes]:
    return [as_bytes(a) for a in cmd]


@pytest.mark.parametrize("case", SUBMIT["cases"], ids=lambda c: c["name"])
def test_submit_commands(case: dict) -> None:
    lay = layout_of(case["pool"])
    rr = proto.RoundRobin(lay.partitions, case.get("round_robin_start", 0))
    for t, e in zip(case["tasks"], case["expect"]):
        p = proto.plan(lay, task_of(t), rr)
        assert p.partition == e["partition"]
        assert [as_bytes(a) for a in p.logical_command()] == expected_command(e["command"])


@pytest.mark.parametrize("case", SUBMIT["cases"], ids=lambda c: c["name"])
def test_submit_entries(request: Any, case: dict) -> None:
    client = request.getfixturevalue("rc" if case["pool"].get("mode") == "cluster" else "r")
    pool = pool_on(client, case["pool"], round_robin_start=case.get("round_robin_start", 0))
    subs = [pool.submit_many([task_of(t)])[0] for t in case["tasks"]]
    for s, e in zip(subs, case["expect"]):
        assert s.partition == e["partition"]
        if "duplicate" in e:
            assert s.duplicate == e["duplicate"]
        if "same_entry_as" in e:
            assert s.entry_id == subs[e["same_entry_as"]].entry_id
        else:
            stream = pool.layout.keys[s.partition].stream
            assert entry_fields(client, stream, s.entry_id) == [[as_bytes(k), as_bytes(v)] for k, v in e["entry"]]
        want_tid = e.get("task_id", "@entry_id")
        assert s.task_id == (s.entry_id if want_tid == "@entry_id" else want_tid)
    if "stream_lengths" in case:
        assert [client.xlen(k.stream) for k in pool.layout.keys] == case["stream_lengths"]
    # The same tasks as one batch: the same partitions.
    if not any(t.get("dedup") for t in case["tasks"]):
        client.flushall() if case["pool"].get("mode") != "cluster" else None
        batch = pool_on(client, case["pool"], round_robin_start=case.get("round_robin_start", 0))
        assert [s.partition for s in batch.submit_many([task_of(t) for t in case["tasks"]])] == \
            [e["partition"] for e in case["expect"]]


@pytest.mark.parametrize("case", SUBMIT["errors"], ids=lambda c: c["name"])
def test_submit_errors_write_nothing(r: Any, case: dict) -> None:
    pool = pool_on(r, case["pool"])
    good = workpool.Task("fine")
    with pytest.raises(workpool.ConfigError):
        pool.submit_many([good, task_of(case["task"])])
    assert r.dbsize() == 0


@pytest.mark.parametrize("task_id", SUBMIT["accepted_ids"])
def test_accepted_ids(r: Any, task_id: str) -> None:
    pool = workpool.Pool(r, "q")
    s = pool.submit("x", id=task_id)
    assert s.task_id == task_id
    assert entry_fields(r, "q", s.entry_id) == [[b"payload", b"x"], [b"id", task_id.encode()]]


# ----------------------------------------------------------------------------- stats

STATS = vectors("stats.json")


def expand(arg: str, lay: proto.Layout) -> str:
    def sub(m: "re.Match[str]") -> str:
        kind, i = m.group(1), m.group(2)
        if kind == "G":
            return lay.group
        k = lay.keys[int(i)]
        return k.stream if kind == "P" else k.dead
    return re.sub(r"\$\{(P|D|G)(\d*)\}", sub, arg)


def check_stats(got: dict, want: dict) -> None:
    for k, v in want.items():
        if k == "partitions":
            assert len(got["partitions"]) == len(v)
            for g, w in zip(got["partitions"], v):
                check_stats(g, w)
        elif k == "consumers":
            assert [{"name": c["name"], "pending": c["pending"]} for c in got["consumers"]] == v
        elif v == "present":
            assert isinstance(got[k], int) and got[k] >= 0, (k, got[k])
        else:
            assert got[k] == v, (k, got[k], v)


@pytest.mark.parametrize("case", STATS["cases"], ids=lambda c: c["name"])
def test_stats(request: Any, case: dict) -> None:
    r = request.getfixturevalue("rc" if case["pool"].get("mode") == "cluster" else "r")
    pool = pool_on(r, case["pool"])
    for cmd in case["setup"]:
        r.execute_command(*[expand(a, pool.layout) for a in cmd])
    check_stats(pool.stats().to_dict(), case["expect"])


# ----------------------------------------------------------------------------- dead letters

DL = vectors("dead_letters.json")


def dl_dict(d: workpool.DeadLetter) -> dict:
    return {"ref": str(d.ref), "task_id": d.task_id, "payload": None if d.payload is None else {"text": d.payload.decode()},
            "original_id": d.original_id, "error": d.error, "deliveries": d.deliveries, "stream": d.stream,
            "group": d.group, "consumer": d.consumer, "dead_lettered_ms": d.dead_lettered_ms,
            "fields": [[k, v.decode()] for k, v in d.fields]}


@pytest.mark.parametrize("case", DL["parse"], ids=lambda c: c["name"])
def test_dead_letter_parse(r: Any, case: dict) -> None:
    pool = workpool.Pool(r, "q", partitions=case["partition"] + 1)
    dead = pool.layout.keys[case["partition"]].dead
    r.execute_command("XADD", dead, case["id"], *[as_bytes(x) for kv in case["fields"] for x in kv])
    ref = workpool.DeadLetterRef(case["partition"], case["id"])
    assert dl_dict(pool.dead_letter(ref)) == case["expect"]
    assert dl_dict(pool.dead_letters()[0]) == case["expect"]


@pytest.mark.parametrize("case", DL["retry"], ids=lambda c: c["name"])
def test_dead_letter_retry(request: Any, case: dict) -> None:
    client = request.getfixturevalue("rc" if case["pool"].get("mode") == "cluster" else "r")
    pool = pool_on(client, case["pool"])
    k = pool.layout.keys[case["partition"]]
    dl_id = client.xadd(k.dead, {"placeholder": "x"})  # replaced below, keeps field order exact
    client.xdel(k.dead, dl_id)
    dl_id = raw(client, "XADD", k.dead, "*", *[as_bytes(x) for kv in case["fields"] for x in kv]).decode()
    tid = case["expect_task_id"]
    if case.get("with_result"):
        client.register_script(_scripts.SOURCES["result"])(keys=[k.result(tid), k.notify(tid)],
                                                           args=[60000, "dead", "task_id", tid])
        assert client.exists(k.result(tid), k.notify(tid)) == 2
    ref = workpool.DeadLetterRef(case["partition"], dl_id)
    [out] = pool.retry_dead_letters([str(ref)])
    assert out.ref == ref and out.entry_id is not None
    assert entry_fields(client, k.stream, out.entry_id) == [[as_bytes(a), as_bytes(b)] for a, b in case["expect_entry"]]
    assert client.xlen(k.stream) == 1
    assert client.xlen(k.dead) == 0
    assert client.exists(k.result(tid), k.notify(tid)) == 0
    assert pool.retry_dead_letters([ref]) == [workpool.RetryOutcome(ref, None)]
    assert client.xlen(k.stream) == 1


def test_dead_letter_filters(r: Any) -> None:
    spec = DL["filters"]
    pool = pool_on(r, spec["pool"])
    for e in spec["entries"]:
        r.execute_command("XADD", pool.layout.keys[e["partition"]].dead, e["id"],
                          *[as_bytes(x) for kv in e["fields"] for x in kv])
    for c in spec["cases"]:
        f = dict(c["filter"])
        limit = f.pop("limit", None)
        newest = f.pop("newest_first", False)
        since, until = f.pop("since_ms", None), f.pop("until_ms", None)
        got = pool.dead_letters(limit=limit, newest_first=newest, since=since, until=until, **f)
        assert [str(d.ref) for d in got] == c["expect"], c
        assert [str(d.ref) for d in pool.iter_dead_letters(newest_first=newest, since=since, until=until, **f)][
            :limit] == c["expect"], c


def test_dead_letter_refs() -> None:
    for c in DL["refs"]:
        ref = workpool.DeadLetterRef.parse(c["text"])
        assert (ref.partition, ref.id) == (c["partition"], c["id"])
        assert str(ref) == c.get("canonical", c["text"])
    for bad in DL["bad_refs"]:
        with pytest.raises(workpool.ConfigError):
            workpool.DeadLetterRef.parse(bad)


# ----------------------------------------------------------------------------- results

RESULTS = vectors("results.json")


def result_dict(res: workpool.Result) -> dict:
    out = None
    if res.output is not None:
        try:
            out = {"text": res.output.decode()}
        except UnicodeDecodeError:
            out = {"base64": base64.b64encode(res.output).decode()}
    return {"state": res.state, "version": res.version, "task_id": res.task_id, "entry_id": res.entry_id,
            "deliveries": res.deliveries, "consumer": res.consumer, "started_ms": res.started_ms,
            "finished_ms": res.finished_ms, "output": out, "output_truncated": res.output_truncated, "error": res.error,
            "dead_letter_id": res.dead_letter_id, "extra": [[k, v.decode()] for k, v in res.extra]}


@pytest.mark.parametrize("case", RESULTS["cases"], ids=lambda c: c["name"])
def test_results(r: Any, case: dict) -> None:
    pool = workpool.Pool(r, "q")
    tid = dict((k, v) for k, v in case["fields"])["task_id"]
    k = pool.layout.keys[0]
    args = [60000, case["state"]] + [as_bytes(x) for kv in case["fields"] for x in kv]
    r.register_script(_scripts.SOURCES["result"])(keys=[k.result(tid), k.notify(tid)], args=args)
    assert 0 < r.pttl(k.result(tid)) <= 60000 and 0 < r.pttl(k.notify(tid)) <= 60000
    assert r.lrange(k.notify(tid), 0, -1) == [case["state"].encode()]
    assert result_dict(pool.result(tid)) == case["expect"]
    assert result_dict(pool.wait_for(tid, timeout=1)) == case["expect"]
    st = pool.status(workpool.TaskRef(tid, 0, "1-0"))
    assert st.state == case["state"] and result_dict(st.result) == case["expect"]
    # Written again (a task that ran twice): one record, one notification.
    r.register_script(_scripts.SOURCES["result"])(keys=[k.result(tid), k.notify(tid)], args=args)
    assert r.lrange(k.notify(tid), 0, -1) == [case["state"].encode()]
