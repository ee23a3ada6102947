"""The synchronous client (redis-py). `workpool.aio` has the same API for asyncio."""

from __future__ import annotations

import heapq
import time
from typing import Any, Iterable, Iterator, List, Optional, Sequence, Union

import redis
from redis.cluster import ClusterNode, RedisCluster
from redis.exceptions import ResponseError

from . import _scripts
from ._base import PoolBase, by_partition, collect, connect_kwargs, failed_part_way, queue_commands, retry_outcomes
from ._protocol import (
    DEFAULT_DEDUP_WINDOW, LIST_PAGE, PIPELINE_CHUNK, RETRY_CHUNK, STATS_COUNT_LIMIT_CHUNKS, WAIT_SLICE,
    ConfigError, DeadLetter, DeadLetterFilter, DeadLetterRef, PartitionKeys, Payload, Planned, RefLike,
    Result, RetryOutcome, Stats, SubmitError, Submitted, Target, Task, TaskLike, TaskStatus,
    WaitTimeout, _text, after, aggregate_stats, chunks, parse_dead_letter, parse_result, parse_stats, parse_url,
    plan, sort_key, to_ref, upper_bound, to_task, to_task_ref, trim_threshold,
)

__all__ = ["Pool", "connect"]


def connect(target: Union[str, Target], *, ssl_ca_certs: Optional[str] = None, ssl_certfile: Optional[str] = None,
            ssl_keyfile: Optional[str] = None, **redis_kwargs: Any) -> Any:
    """A redis-py client for a workpool URL (docs/protocol.md section 2): `redis.Redis`,
    `redis.cluster.RedisCluster`, or the primary of a `redis.sentinel.Sentinel`."""
    t = parse_url(target) if isinstance(target, str) else target
    kw, tls, skw = connect_kwargs(t, ssl_ca_certs, ssl_certfile, ssl_keyfile, redis_kwargs)
    if t.mode == "cluster":
        return RedisCluster(startup_nodes=[ClusterNode(h, p) for h, p in t.hosts], **kw, **tls)
    if t.mode == "sentinel":
        from redis.sentinel import Sentinel

        s = Sentinel(list(t.hosts), sentinel_kwargs=skw, **kw, **tls)
        return s.master_for(t.master, db=t.db)
    if t.path is not None:
        return redis.Redis(unix_socket_path=t.path, db=t.db, **kw)
    (host, port), = t.hosts
    return redis.Redis(host=host, port=port, db=t.db, **kw, **tls)


def _uses_decoded_responses(client: Any) -> bool:
    try:
        return bool(client.get_connection_kwargs().get("decode_responses"))
    except Exception:  # a client type without it (e.g. a Sentinel-managed one): assume bytes
        return False


class Pool(PoolBase):
    """A workpool queue, seen from a producer: submit tasks, read stats, inspect and retry
    dead letters, wait for results.

    `redis` is a redis-py client (`redis.Redis`, `redis.cluster.RedisCluster`, a
    Sentinel's `master_for(...)`) created with `decode_responses=False` (payloads are
    bytes). `group` defaults to `stream`, as a WorkPool's do. The key names follow the
    pool's mode (`"cluster"` for a `RedisCluster`, otherwise `"standalone"`; give
    `mode="sentinel"` for a Sentinel-managed Redis to apply its dead-letter naming rule).
    """

    def __init__(self, redis: Any, stream: str, group: Optional[str] = None, *, partitions: int = 1,
                 dead_letter_stream: Optional[str] = None, mode: Optional[str] = None,
                 round_robin_start: Optional[int] = None):
        self._setup(redis, isinstance(redis, RedisCluster), _uses_decoded_responses(redis), stream, group,
                    partitions, dead_letter_stream, mode, round_robin_start)
        self._scripts = {n: redis.register_script(src) for n, src in _scripts.SOURCES.items()}

    @classmethod
    def from_url(cls, url: str, stream: str, group: Optional[str] = None, *, partitions: int = 1,
                 dead_letter_stream: Optional[str] = None, round_robin_start: Optional[int] = None,
                 ssl_ca_certs: Optional[str] = None, ssl_certfile: Optional[str] = None,
                 ssl_keyfile: Optional[str] = None, **redis_kwargs: Any) -> "Pool":
        """A pool on the Redis a workpool URL names (the same URL the WorkPool uses)."""
        t = parse_url(url)
        client = connect(t, ssl_ca_certs=ssl_ca_certs, ssl_certfile=ssl_certfile, ssl_keyfile=ssl_keyfile,
                         **redis_kwargs)
        try:
            pool = cls(client, stream, group, partitions=partitions, dead_letter_stream=dead_letter_stream,
                       mode=t.mode, round_robin_start=round_robin_start)
        except BaseException:
            client.close()
            raise
        pool._owned = True
        return pool

    def close(self) -> None:
        """Closes the Redis client if this pool created it (`from_url`)."""
        if self._owned:
            self.redis.close()

    def __enter__(self) -> "Pool":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ------------------------------------------------------------------ submit

    def submit(self, payload: Payload, *, id: Optional[str] = None, attempt: Optional[int] = None,
               key: Union[str, bytes, None] = None, partition: Optional[int] = None, dedup: bool = False,
               dedup_window: float = DEFAULT_DEDUP_WINDOW, min_replicas: int = 0,
               wait_timeout: float = 1.0) -> Submitted:
        """Submits one task; see `Task` for the options and `submit_many` for
        `min_replicas` (durable submit)."""
        task = Task(payload, id=id, attempt=attempt, key=key, partition=partition, dedup=dedup,
                    dedup_window=dedup_window)
        return self.submit_many([task], min_replicas=min_replicas, wait_timeout=wait_timeout)[0]

    def submit_many(self, tasks: Iterable[Union[Task, Payload]], *, min_replicas: int = 0,
                    wait_timeout: float = 1.0) -> List[Submitted]:
        """Submits tasks in pipelines (per partition, at most 1,000 commands each), in input
        order; returns one `Submitted` per task. Every task is validated first: bad input
        submits nothing. With `min_replicas` R > 0 each pipeline ends with `WAIT R
        wait_timeout` and its tasks are `confirmed` when R replicas acknowledged them.
        A failure part way raises `SubmitError` with what was submitted."""
        if min_replicas < 0:
            raise ConfigError("min_replicas must be >= 0")
        planned = [plan(self.layout, to_task(t), self._rr) for t in tasks]
        out: List[Optional[Submitted]] = [None] * len(planned)
        for part, idxs in by_partition(planned).items():
            for chunk in chunks(idxs, PIPELINE_CHUNK):
                try:
                    self._submit_chunk(part, [planned[i] for i in chunk], list(chunk), out, min_replicas,
                                       wait_timeout)
                except SubmitError:
                    raise
                except Exception as e:
                    raise failed_part_way(e, out) from e
        return out  # type: ignore[return-value]

    def _pipeline_for(self, part: int, durable: bool) -> Any:
        if durable and isinstance(self.redis, RedisCluster):
            # WAIT counts the writes of its own connection: the XADDs and the WAIT go to
            # the partition's node on one connection.
            node = self.redis.get_node_from_key(self.layout.keys[part].stream)
            return self.redis.get_redis_connection(node).pipeline(transaction=False)
        return self.redis.pipeline(transaction=False)

    def _submit_chunk(self, part: int, planned: Sequence[Planned], positions: List[int],
                      out: List[Optional[Submitted]], min_replicas: int, wait_timeout: float) -> None:
        pipe = self._pipeline_for(part, min_replicas > 0)
        queue_commands(pipe, planned, min_replicas, wait_timeout, _scripts.SOURCES)
        collect(planned, positions, pipe.execute(raise_on_error=False), min_replicas, out)

    # ------------------------------------------------------------------ stats

    def partition_stats(self, partition: int) -> Stats:
        """One partition's stats, read atomically."""
        k = self.layout.partition(partition)
        reply = self._scripts["stats"](keys=[k.stream, k.dead], args=[self.layout.group, STATS_COUNT_LIMIT_CHUNKS])
        return parse_stats(reply, k.stream, self.layout.group)

    def stats(self) -> Stats:
        """The pool's stats, as `workpool-worker stats --json` prints them (`to_dict()`)."""
        parts = [self.partition_stats(i) for i in range(self.layout.partitions)]
        return aggregate_stats(self.layout.stream, self.layout.group, parts)

    # ------------------------------------------------------------------ dead letters

    def _iter_partition(self, k: PartitionKeys, f: DeadLetterFilter, newest_first: bool,
                        last_id: Optional[str] = None) -> Iterator[DeadLetter]:
        lo, hi = f.range()
        if last_id is not None:
            hi = upper_bound(hi, last_id)
        while True:
            if newest_first:
                rows = self.redis.xrevrange(k.dead, max=hi, min=lo, count=LIST_PAGE)
            else:
                rows = self.redis.xrange(k.dead, min=lo, max=hi, count=LIST_PAGE)
            for eid, fields in rows:
                d = parse_dead_letter(k.index, eid, fields)
                if f.matches(d):
                    yield d
            if len(rows) < LIST_PAGE:
                return
            last = _text(rows[-1][0]) or ""
            if newest_first:
                hi = after(last)
            else:
                lo = after(last)

    def iter_dead_letters(self, filter: Optional[DeadLetterFilter] = None, *, newest_first: bool = False,
                          **filters: Any) -> Iterator[DeadLetter]:
        """Dead letters matching the filter (keyword arguments of `DeadLetterFilter`),
        oldest first (or newest first), partitions merged; read page by page."""
        f = self._filter(filter, filters)
        its = [self._iter_partition(k, f, newest_first) for k in self._partitions(f)]
        return heapq.merge(*its, key=sort_key, reverse=newest_first)

    def dead_letters(self, filter: Optional[DeadLetterFilter] = None, *, limit: Optional[int] = 100,
                     newest_first: bool = False, **filters: Any) -> List[DeadLetter]:
        """Like `iter_dead_letters`, as a list of at most `limit` (None: all)."""
        out = []
        for d in self.iter_dead_letters(filter, newest_first=newest_first, **filters):
            if limit is not None and len(out) >= limit:
                break
            out.append(d)
        return out

    def dead_letter(self, ref: RefLike) -> Optional[DeadLetter]:
        """One dead letter by reference, or None."""
        r = to_ref(ref)
        k = self.layout.partition(r.partition)
        rows = self.redis.xrange(k.dead, min=r.id, max=r.id, count=1)
        return parse_dead_letter(r.partition, rows[0][0], rows[0][1]) if rows else None

    def retry_dead_letters(self, refs: Iterable[RefLike]) -> List[RetryOutcome]:
        """Puts dead letters back into their partition's task stream, each atomically
        (docs/protocol.md section 6); returns the new entry ids in input order (None for
        one that was not there)."""
        rs, groups = self._group_refs(refs)
        out: List[Optional[RetryOutcome]] = [None] * len(rs)
        for part, idxs in groups.items():
            k = self.layout.keys[part]
            for chunk in chunks(idxs, RETRY_CHUNK):
                reply = self._scripts["retry"](keys=[k.stream, k.dead], args=[k.stream, *[rs[i].id for i in chunk]])
                retry_outcomes(chunk, rs, reply, out)
        return out  # type: ignore[return-value]

    def _newest_id(self, k: PartitionKeys) -> Optional[str]:
        rows = self.redis.xrevrange(k.dead, count=1)
        return _text(rows[0][0]) if rows else None

    def retry_all_dead_letters(self, filter: Optional[DeadLetterFilter] = None, **filters: Any) -> List[RetryOutcome]:
        """Retries every dead letter matching the filter that exists when the call starts
        (in batches of 100; dead letters written meanwhile stay)."""
        f = self._filter(filter, filters)
        out: List[RetryOutcome] = []
        for k in self._partitions(f):
            last = self._newest_id(k)
            if last is None:
                continue
            batch: List[DeadLetterRef] = []
            for d in self._iter_partition(k, f, False, last_id=last):
                batch.append(d.ref)
                if len(batch) == RETRY_CHUNK:
                    out += self.retry_dead_letters(batch)
                    batch = []
            if batch:
                out += self.retry_dead_letters(batch)
        return out

    def purge_dead_letters(self, refs: Iterable[RefLike]) -> int:
        """Deletes dead letters by reference; returns how many existed."""
        rs, groups = self._group_refs(refs)
        n = 0
        for part, idxs in groups.items():
            k = self.layout.keys[part]
            for chunk in chunks(idxs, PIPELINE_CHUNK):
                n += int(self.redis.xdel(k.dead, *[rs[i].id for i in chunk]))
        return n

    def purge_all_dead_letters(self, filter: Optional[DeadLetterFilter] = None, **filters: Any) -> int:
        """Deletes every dead letter matching the filter that exists when the call starts;
        returns how many."""
        f = self._filter(filter, filters)
        n = 0
        for k in self._partitions(f):
            last = self._newest_id(k)
            if last is None:
                continue
            if f.is_empty():
                n += int(self.redis.execute_command("XTRIM", k.dead, "MINID", trim_threshold(last)))
                continue
            ids = [d.id for d in self._iter_partition(k, f, False, last_id=last)]
            for chunk in chunks(ids, PIPELINE_CHUNK):
                n += int(self.redis.xdel(k.dead, *chunk))
        return n

    # ------------------------------------------------------------------ results

    def result(self, task: TaskLike, *, partition: Optional[int] = None,
               key: Union[str, bytes, None] = None) -> Optional[Result]:
        """The task's result record, or None (not finished, results off, or expired)."""
        ref = to_task_ref(self.layout, task, partition, key)
        k = self.layout.keys[ref.partition]
        return parse_result(self.redis.hgetall(k.result(ref.task_id)))

    def status(self, task: TaskLike, *, partition: Optional[int] = None,
               key: Union[str, bytes, None] = None) -> TaskStatus:
        """Where the task is (docs/protocol.md section 8): done/dead need results on;
        queued/running need the entry id (pass what `submit` returned)."""
        ref = to_task_ref(self.layout, task, partition, key)
        k = self.layout.keys[ref.partition]
        res = parse_result(self.redis.hgetall(k.result(ref.task_id)))
        if res is not None:
            return TaskStatus(res.state, res)
        if ref.entry_id is not None:
            if self.redis.xrange(k.stream, min=ref.entry_id, max=ref.entry_id, count=1):
                try:
                    p = self.redis.xpending_range(k.stream, self.layout.group, min=ref.entry_id, max=ref.entry_id,
                                                  count=1)
                except ResponseError as e:
                    if "NOGROUP" not in str(e):
                        raise
                    p = []
                if p:
                    return TaskStatus("running", consumer=_text(p[0]["consumer"]),
                                      deliveries=int(p[0]["times_delivered"]))
                return TaskStatus("queued")
            # It may have finished between the two reads.
            res = parse_result(self.redis.hgetall(k.result(ref.task_id)))
            if res is not None:
                return TaskStatus(res.state, res)
        return TaskStatus("unknown")

    def wait_for(self, task: TaskLike, timeout: float = 30.0, *, partition: Optional[int] = None,
                 key: Union[str, bytes, None] = None) -> Result:
        """Blocks until the task's result exists (the pool needs results on) and returns
        it; raises `WaitTimeout` after `timeout` seconds. It blocks on the task's
        notification list (BLMOVE), it does not poll."""
        ref = to_task_ref(self.layout, task, partition, key)
        k = self.layout.keys[ref.partition]
        rkey, nkey = k.result(ref.task_id), k.notify(ref.task_id)
        deadline = time.monotonic() + timeout
        while True:
            res = parse_result(self.redis.hgetall(rkey))
            if res is not None:
                return res
            left = deadline - time.monotonic()
            if left <= 0:
                raise WaitTimeout(ref.task_id, timeout)
            # Never 0 (which blocks forever); Redis counts in ms.
            self.redis.blmove(nkey, nkey, max(min(left, WAIT_SLICE), 0.01), "RIGHT", "LEFT")

