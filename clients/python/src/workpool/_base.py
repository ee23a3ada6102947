"""What the sync (`client.py`) and asyncio (`aio.py`) pools share besides I/O."""

from __future__ import annotations

from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

from ._protocol import (
    ConfigError, DeadLetterFilter, DeadLetterRef, Layout, PartitionKeys, Planned, RefLike, RetryOutcome, RoundRobin,
    SubmitError, Submitted, Target, _text, to_ref,
)


def connect_kwargs(t: Target, ssl_ca_certs: Optional[str], ssl_certfile: Optional[str], ssl_keyfile: Optional[str],
                   redis_kwargs: Dict[str, Any]) -> Tuple[Dict[str, Any], Dict[str, Any], Dict[str, Any]]:
    """redis-py keyword arguments for a target: (common, TLS, the sentinels' own)."""
    kw: Dict[str, Any] = dict(redis_kwargs)
    kw.setdefault("decode_responses", False)
    if t.username is not None:
        kw["username"] = t.username
    if t.password is not None:
        kw["password"] = t.password
    tls: Dict[str, Any] = {}
    if t.tls:
        tls = {"ssl": True, "ssl_ca_certs": ssl_ca_certs, "ssl_certfile": ssl_certfile, "ssl_keyfile": ssl_keyfile}
    skw: Dict[str, Any] = dict(tls)
    if t.sentinel_username is not None:
        skw["username"] = t.sentinel_username
    if t.sentinel_password is not None:
        skw["password"] = t.sentinel_password
    return kw, tls, skw


class PoolBase:
    """The pool's names, round robin and argument checks."""

    layout: Layout

    def _setup(self, redis: Any, is_cluster: bool, decoded: bool, stream: str, group: Optional[str], partitions: int,
               dead_letter_stream: Optional[str], mode: Optional[str], round_robin_start: Optional[int]) -> None:
        if mode is None:
            mode = "cluster" if is_cluster else "standalone"
        self.layout = Layout(stream, stream if group is None else group, partitions, mode, dead_letter_stream)
        if decoded:
            raise ConfigError("the redis client must be created with decode_responses=False (payloads are bytes)")
        self.redis = redis
        self._rr = RoundRobin(partitions, round_robin_start)
        self._owned = False

    def _filter(self, flt: Optional[DeadLetterFilter], kw: Dict[str, Any]) -> DeadLetterFilter:
        if flt is not None and kw:
            raise ConfigError("give a DeadLetterFilter or keyword filters, not both")
        f = flt or DeadLetterFilter(**kw)
        if f.partition is not None:
            self.layout.partition(f.partition)
        return f

    def _partitions(self, f: DeadLetterFilter) -> List[PartitionKeys]:
        return [self.layout.keys[f.partition]] if f.partition is not None else list(self.layout.keys)

    def _group_refs(self, refs: Iterable[RefLike]) -> Tuple[List[DeadLetterRef], Dict[int, List[int]]]:
        rs = [to_ref(r) for r in refs]
        groups: Dict[int, List[int]] = {}
        for i, r in enumerate(rs):
            self.layout.partition(r.partition)
            groups.setdefault(r.partition, []).append(i)
        return rs, groups


def by_partition(planned: Sequence[Planned]) -> Dict[int, List[int]]:
    groups: Dict[int, List[int]] = {}
    for i, p in enumerate(planned):
        groups.setdefault(p.partition, []).append(i)
    return groups


def queue_commands(pipe: Any, planned: Sequence[Planned], min_replicas: int, wait_timeout: float,
                   sources: Dict[str, str]) -> None:
    """One partition's commands into a pipeline (scripts by EVAL: they work in any pipeline)."""
    for p in planned:
        if p.script:
            pipe.execute_command("EVAL", sources[p.script], len(p.keys), *p.keys, *p.args)
        else:
            pipe.execute_command("XADD", p.keys[0], "*", *p.args)
    if min_replicas > 0:
        pipe.execute_command("WAIT", min_replicas, int(wait_timeout * 1000))


def collect(planned: Sequence[Planned], positions: List[int], replies: List[Any], min_replicas: int,
            out: List[Optional[Submitted]]) -> None:
    """The pipeline's replies into `out`; raises SubmitError when a command failed."""
    confirmed: Optional[bool] = None
    if min_replicas > 0:
        w = replies[-1]
        confirmed = not isinstance(w, Exception) and int(w) >= min_replicas
    first_error: Optional[Exception] = None
    for p, pos, r in zip(planned, positions, replies):
        if isinstance(r, Exception):
            first_error = first_error or r
            continue
        if p.script:
            added, eid = int(r[0]), _text(r[1]) or ""
            out[pos] = Submitted(p.partition, eid, p.task_id or eid, duplicate=added == 0, confirmed=confirmed)
        else:
            eid = _text(r) or ""
            out[pos] = Submitted(p.partition, eid, p.task_id or eid, confirmed=confirmed)
    if first_error is not None:
        raise SubmitError(f"submit failed for some tasks: {first_error}", out) from first_error


def failed_part_way(e: Exception, out: List[Optional[Submitted]]) -> SubmitError:
    done = sum(s is not None for s in out)
    err = SubmitError(f"submit failed after {done} of {len(out)} tasks: {e}", out)
    err.__cause__ = e
    return err


def retry_outcomes(chunk: Sequence[int], rs: List[DeadLetterRef], reply: List[Any],
                   out: List[Optional[RetryOutcome]]) -> None:
    for i, row in zip(chunk, reply):
        out[i] = RetryOutcome(rs[i], _text(row[1]) if len(row) > 1 and row[1] is not None else None)
