"""The asyncio client (redis.asyncio): the same API as `workpool.Pool`, with coroutines
and an async iterator for dead letters."""

from __future__ import annotations

import time
from typing import Any, AsyncIterator, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import redis.asyncio as aredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.exceptions import ResponseError

from . import _scripts
from ._base import PoolBase, by_partition, collect, connect_kwargs, failed_part_way, queue_commands, retry_outcomes
from ._protocol import (
    DEFAULT_DEDUP_WINDOW, LIST_PAGE, PIPELINE_CHUNK, RETRY_CHUNK, STATS_COUNT_LIMIT_CHUNKS, WAIT_SLICE,
    ConfigError, DeadLetter, DeadLetterFilter, DeadLetterRef, PartitionKeys, Payload, Planned, RefLike,
    Result, RetryOutcome, Stats, SubmitError, Submitted, Target, Task, TaskLike, TaskStatus,
    WaitTimeout, _text, after, aggregate_stats, chunks, parse_dead_letter, parse_result, parse_stats, parse_url,
    plan, sort_key, to_ref, to_task, to_task_ref, trim_threshold, upper_bound,
)

__all__ = ["Pool", "connect"]


def connect(target: Union[str, Target], *, ssl_ca_certs: Optional[str] = None, ssl_certfile: Optional[str] = None,
            ssl_keyfile: Optional[str] = None, **redis_kwargs: Any) -> Any:
    """A redis.asyncio client for a workpool URL (see `workpool.connect`)."""
    t = parse_url(target) if isinstance(target, str) else target
    kw, tls, skw = connect_kwargs(t, ssl_ca_certs, ssl_certfile, ssl_keyfile, redis_kwargs)
    if t.mode == "cluster":
        return RedisCluster(startup_nodes=[ClusterNode(h, p) for h, p in t.hosts], **kw, **tls)
    if t.mode == "sentinel":
        from redis.asyncio.sentinel import Sentinel

        s = Sentinel(list(t.hosts), sentinel_kwargs=skw, **kw, **tls)
        return s.master_for(t.master, db=t.db)
    if t.path is not None:
        return aredis.Redis(unix_socket_path=t.path, db=t.db, **kw)
    (host, port), = t.hosts
    return aredis.Redis(host=host, port=port, db=t.db, **kw, **tls)


def _uses_decoded_responses(client: Any) -> bool:
    try:
        if isinstance(client, RedisCluster):
            return bool(client.get_encoder().decode_responses)
        return bool(client.connection_pool.connection_kwargs.get("decode_responses"))
    except Exception:
        return False


async def _merge(its: List[AsyncIterator[DeadLetter]], newest_first: bool) -> AsyncIterator[DeadLetter]:
    """k-way merge of sorted async iterators by dead-letter id (ties by partition)."""
    heads: List[Tuple[Any, int, DeadLetter]] = []
    for i, it in enumerate(its):
        try:
            d = await it.__anext__()
        except StopAsyncIteration:
            continue
        heads.append((sort_key(d), i, d))
    while heads:
        pick = (max if newest_first else min)(heads, key=lambda h: h[0])
        heads.remove(pick)
        yield pick[2]
        try:
            d = await its[pick[1]].__anext__()
        except StopAsyncIteration:
            continue
        heads.append((sort_key(d), pick[1], d))


class Pool(PoolBase):
    """The asyncio twin of `workpool.Pool` (same arguments, same results)."""

    def __init__(self, redis: Any, stream: str, group: Optional[str] = None, *, partitions: int = 1,
                 dead_letter_stream: Optional[str] = None, mode: Optional[str] = None,
                 round_robin_start: Optional[int] = None):
        self._setup(redis, isinstance(redis, RedisCluster), _uses_decoded_responses(redis), stream, group,
                    partitions, dead_letter_stream, mode, round_robin_start)
        self._scripts = {n: redis.register_script(src) for n, src in _scripts.SOURCES.items()}
        self._node_clients: Dict[Tuple[str, int], Any] = {}

    @classmethod
    def from_url(cls, url: str, stream: str, group: Optional[str] = None, *, partitions: int = 1,
                 dead_letter_stream: Optional[str] = None, round_robin_start: Optional[int] = None,
                 ssl_ca_certs: Optional[str] = None, ssl_certfile: Optional[str] = None,
                 ssl_keyfile: Optional[str] = None, **redis_kwargs: Any) -> "Pool":
        t = parse_url(url)
        client = connect(t, ssl_ca_certs=ssl_ca_certs, ssl_certfile=ssl_certfile, ssl_keyfile=ssl_keyfile,
                         **redis_kwargs)
        pool = cls(client, stream, group, partitions=partitions, dead_letter_stream=dead_letter_stream,
                   mode=t.mode, round_robin_start=round_robin_start)
        pool._owned = True
        return pool

    async def aclose(self) -> None:
        """Closes the node connections of durable cluster submits, and the Redis client if
        this pool created it (`from_url`)."""
        for c in self._node_clients.values():
            await c.aclose()
        self._node_clients.clear()
        if self._owned:
            await self.redis.aclose()

    async def __aenter__(self) -> "Pool":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()

    # ------------------------------------------------------------------ submit

    async def submit(self, payload: Payload, *, id: Optional[str] = None, attempt: Optional[int] = None,
                     key: Union[str, bytes, None] = None, partition: Optional[int] = None, dedup: bool = False,
                     dedup_window: float = DEFAULT_DEDUP_WINDOW, min_replicas: int = 0,
                     wait_timeout: float = 1.0) -> Submitted:
        task = Task(payload, id=id, attempt=attempt, key=key, partition=partition, dedup=dedup,
                    dedup_window=dedup_window)
        return (await self.submit_many([task], min_replicas=min_replicas, wait_timeout=wait_timeout))[0]

    async def submit_many(self, tasks: Iterable[Union[Task, Payload]], *, min_replicas: int = 0,
                          wait_timeout: float = 1.0) -> List[Submitted]:
        if min_replicas < 0:
            raise ConfigError("min_replicas must be >= 0")
        planned = [plan(self.layout, to_task(t), self._rr) for t in tasks]
        out: List[Optional[Submitted]] = [None] * len(planned)
        for part, idxs in by_partition(planned).items():
            for chunk in chunks(idxs, PIPELINE_CHUNK):
                try:
                    await self._submit_chunk(part, [planned[i] for i in chunk], list(chunk), out, min_replicas,
                                             wait_timeout)
                except SubmitError:
                    raise
                except Exception as e:
                    raise failed_part_way(e, out) from e
        return out  # type: ignore[return-value]

    async def _pipeline_for(self, part: int, durable: bool) -> Any:
        if durable and isinstance(self.redis, RedisCluster):
            await self.redis.initialize()  # the slot map (idempotent)
            # WAIT counts the writes of its own connection: the XADDs and the WAIT go to
            # the partition's node on one connection (a plain client of that node).
            node = self.redis.get_node_from_key(self.layout.keys[part].stream)
            c = self._node_clients.get((node.host, node.port))
            if c is None:
                kw = {k: v for k, v in node.connection_kwargs.items()
                      if k in ("username", "password", "ssl", "ssl_ca_certs", "ssl_certfile", "ssl_keyfile",
                               "socket_timeout", "socket_connect_timeout")}
                c = aredis.Redis(host=node.host, port=node.port, **kw)
                self._node_clients[(node.host, node.port)] = c
            return c.pipeline(transaction=False)
        return self.redis.pipeline(transaction=False)

    async def _submit_chunk(self, part: int, planned: Sequence[Planned], positions: List[int],
                            out: List[Optional[Submitted]], min_replicas: int, wait_timeout: float) -> None:
        pipe = await self._pipeline_for(part, min_replicas > 0)
        queue_commands(pipe, planned, min_replicas, wait_timeout, _scripts.SOURCES)
        collect(planned, positions, await pipe.execute(raise_on_error=False), min_replicas, out)

    # ------------------------------------------------------------------ stats

    async def partition_stats(self, partition: int) -> Stats:
        k = self.layout.partition(partition)
        reply = await self._scripts["stats"](keys=[k.stream, k.dead],
                                             args=[self.layout.group, STATS_COUNT_LIMIT_CHUNKS])
        return parse_stats(reply, k.stream, self.layout.group)

    async def stats(self) -> Stats:
        parts = [await self.partition_stats(i) for i in range(self.layout.partitions)]
        return aggregate_stats(self.layout.stream, self.layout.group, parts)

    # ------------------------------------------------------------------ dead letters

    async def _iter_partition(self, k: PartitionKeys, f: DeadLetterFilter, newest_first: bool,
                              last_id: Optional[str] = None) -> AsyncIterator[DeadLetter]:
        lo, hi = f.range()
        if last_id is not None:
            hi = upper_bound(hi, last_id)
        while True:
            if newest_first:
                rows = await self.redis.xrevrange(k.dead, max=hi, min=lo, count=LIST_PAGE)
            else:
                rows = await self.redis.xrange(k.dead, min=lo, max=hi, count=LIST_PAGE)
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
                          **filters: Any) -> AsyncIterator[DeadLetter]:
        f = self._filter(filter, filters)
        return _merge([self._iter_partition(k, f, newest_first) for k in self._partitions(f)], newest_first)

    async def dead_letters(self, filter: Optional[DeadLetterFilter] = None, *, limit: Optional[int] = 100,
                           newest_first: bool = False, **filters: Any) -> List[DeadLetter]:
        out: List[DeadLetter] = []
        async for d in self.iter_dead_letters(filter, newest_first=newest_first, **filters):
            if limit is not None and len(out) >= limit:
                break
            out.append(d)
        return out

    async def dead_letter(self, ref: RefLike) -> Optional[DeadLetter]:
        r = to_ref(ref)
        k = self.layout.partition(r.partition)
        rows = await self.redis.xrange(k.dead, min=r.id, max=r.id, count=1)
        return parse_dead_letter(r.partition, rows[0][0], rows[0][1]) if rows else None

    async def retry_dead_letters(self, refs: Iterable[RefLike]) -> List[RetryOutcome]:
        rs, groups = self._group_refs(refs)
        out: List[Optional[RetryOutcome]] = [None] * len(rs)
        for part, idxs in groups.items():
            k = self.layout.keys[part]
            for chunk in chunks(idxs, RETRY_CHUNK):
                reply = await self._scripts["retry"](keys=[k.stream, k.dead],
                                                     args=[k.stream, *[rs[i].id for i in chunk]])
                retry_outcomes(chunk, rs, reply, out)
        return out  # type: ignore[return-value]

    async def _newest_id(self, k: PartitionKeys) -> Optional[str]:
        rows = await self.redis.xrevrange(k.dead, count=1)
        return _text(rows[0][0]) if rows else None

    async def retry_all_dead_letters(self, filter: Optional[DeadLetterFilter] = None,
                                     **filters: Any) -> List[RetryOutcome]:
        f = self._filter(filter, filters)
        out: List[RetryOutcome] = []
        for k in self._partitions(f):
            last = await self._newest_id(k)
            if last is None:
                continue
            batch: List[DeadLetterRef] = []
            async for d in self._iter_partition(k, f, False, last_id=last):
                batch.append(d.ref)
                if len(batch) == RETRY_CHUNK:
                    out += await self.retry_dead_letters(batch)
                    batch = []
            if batch:
                out += await self.retry_dead_letters(batch)
        return out

    async def purge_dead_letters(self, refs: Iterable[RefLike]) -> int:
        rs, groups = self._group_refs(refs)
        n = 0
        for part, idxs in groups.items():
            k = self.layout.keys[part]
            for chunk in chunks(idxs, PIPELINE_CHUNK):
                n += int(await self.redis.xdel(k.dead, *[rs[i].id for i in chunk]))
        return n

    async def purge_all_dead_letters(self, filter: Optional[DeadLetterFilter] = None, **filters: Any) -> int:
        f = self._filter(filter, filters)
        n = 0
        for k in self._partitions(f):
            last = await self._newest_id(k)
            if last is None:
                continue
            if f.is_empty():
                n += int(await self.redis.execute_command("XTRIM", k.dead, "MINID", trim_threshold(last)))
                continue
            ids = [d.id async for d in self._iter_partition(k, f, False, last_id=last)]
            for chunk in chunks(ids, PIPELINE_CHUNK):
                n += int(await self.redis.xdel(k.dead, *chunk))
        return n

    # ------------------------------------------------------------------ results

    async def result(self, task: TaskLike, *, partition: Optional[int] = None,
                     key: Union[str, bytes, None] = None) -> Optional[Result]:
        ref = to_task_ref(self.layout, task, partition, key)
        k = self.layout.keys[ref.partition]
        return parse_result(await self.redis.hgetall(k.result(ref.task_id)))

    async def status(self, task: TaskLike, *, partition: Optional[int] = None,
                     key: Union[str, bytes, None] = None) -> TaskStatus:
        ref = to_task_ref(self.layout, task, partition, key)
        k = self.layout.keys[ref.partition]
        res = parse_result(await self.redis.hgetall(k.result(ref.task_id)))
        if res is not None:
            return TaskStatus(res.state, res)
        if ref.entry_id is not None:
            if await self.redis.xrange(k.stream, min=ref.entry_id, max=ref.entry_id, count=1):
                try:
                    p = await self.redis.xpending_range(k.stream, self.layout.group, min=ref.entry_id,
                                                        max=ref.entry_id, count=1)
                except ResponseError as e:
                    if "NOGROUP" not in str(e):
                        raise
                    p = []
                if p:
                    return TaskStatus("running", consumer=_text(p[0]["consumer"]),
                                      deliveries=int(p[0]["times_delivered"]))
                return TaskStatus("queued")
            res = parse_result(await self.redis.hgetall(k.result(ref.task_id)))
            if res is not None:
                return TaskStatus(res.state, res)
        return TaskStatus("unknown")

    async def wait_for(self, task: TaskLike, timeout: float = 30.0, *, partition: Optional[int] = None,
                       key: Union[str, bytes, None] = None) -> Result:
        ref = to_task_ref(self.layout, task, partition, key)
        k = self.layout.keys[ref.partition]
        rkey, nkey = k.result(ref.task_id), k.notify(ref.task_id)
        deadline = time.monotonic() + timeout
        while True:
            res = parse_result(await self.redis.hgetall(rkey))
            if res is not None:
                return res
            left = deadline - time.monotonic()
            if left <= 0:
                raise WaitTimeout(ref.task_id, timeout)
            await self.redis.blmove(nkey, nkey, max(min(left, WAIT_SLICE), 0.01), "RIGHT", "LEFT")
