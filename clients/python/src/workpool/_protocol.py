"""The pure part of the workpool protocol (docs/protocol.md): key names, partition choice,
payload encoding, task validation, parsing of Redis replies, URLs. No I/O here; the sync
(`workpool.Pool`) and asyncio (`workpool.aio.Pool`) clients share it."""

from __future__ import annotations

import binascii
import json
import random
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union
from urllib.parse import parse_qs, unquote

PROTOCOL_VERSION = 1
#: The revision of that version (docs/protocol.md section 9).
PROTOCOL_REVISION = 4
MAX_TASK_ID_BYTES = 512
DEFAULT_DEDUP_WINDOW = 86_400.0  # seconds
PIPELINE_CHUNK = 1000
RETRY_CHUNK = 100
LIST_PAGE = 500
STATS_COUNT_LIMIT_CHUNKS = 50
WAIT_SLICE = 5.0  # seconds: the longest single BLMOVE of wait_for (a safety net, not a poll)

MODES = ("standalone", "sentinel", "cluster")
MAX_PARTITIONS = 1024

Payload = Union[bytes, bytearray, memoryview, str, Any]
Fields = List[Tuple[str, bytes]]

_ENTRY_ID = re.compile(r"^(\d{1,20})-(\d{1,20})$")
_U64_MAX = (1 << 64) - 1


class WorkpoolError(Exception):
    """Base class of the errors raised by this package (besides redis-py's own)."""


class ConfigError(WorkpoolError, ValueError):
    """A pool configuration, URL, task or reference that cannot be used."""


class WaitTimeout(WorkpoolError, TimeoutError):
    """`wait_for` found no result within its timeout."""

    def __init__(self, task_id: str, timeout: float):
        super().__init__(f"no result for task {task_id!r} within {timeout:g}s")
        self.task_id = task_id
        self.timeout = timeout


class SubmitError(WorkpoolError):
    """A batch failed part way: `submitted` holds the tasks that did get an entry id (in
    input order, by position), the cause is chained."""

    def __init__(self, message: str, submitted: "List[Optional[Submitted]]"):
        super().__init__(message)
        self.submitted = submitted


# --------------------------------------------------------------------------- entry ids


def parse_entry_id(s: Union[str, bytes]) -> Tuple[int, int]:
    if isinstance(s, bytes):
        s = s.decode("ascii", "replace")
    m = _ENTRY_ID.match(s)
    if not m:
        raise ConfigError(f"invalid stream entry id {s!r} (expected <ms>-<seq>)")
    ms, seq = int(m.group(1)), int(m.group(2))
    if ms > _U64_MAX or seq > _U64_MAX:
        raise ConfigError(f"invalid stream entry id {s!r} (out of range)")
    return ms, seq


def _text(b: Union[bytes, str, None]) -> Optional[str]:
    if b is None:
        return None
    if isinstance(b, bytes):
        return b.decode("utf-8", "replace")
    return str(b)


def _int(b: Union[bytes, str, int, None]) -> Optional[int]:
    if b is None:
        return None
    if isinstance(b, int):
        return b
    try:
        return int(_text(b) or "")
    except ValueError:
        return None


def _ms(t: Union[int, float, datetime, None]) -> Optional[int]:
    if t is None:
        return None
    if isinstance(t, datetime):
        return int(t.timestamp() * 1000)
    return int(t)


# --------------------------------------------------------------------------- keys


@dataclass(frozen=True)
class PartitionKeys:
    """The keys of one partition (docs/protocol.md section 1)."""

    index: int
    stream: str
    dead: str

    def result(self, task_id: str) -> str:
        return f"{self.stream}:result:{task_id}"

    def notify(self, task_id: str) -> str:
        return f"{self.stream}:notify:{task_id}"

    def dedup(self, task_id: str) -> str:
        return f"{self.stream}:dedup:{task_id}"


@dataclass(frozen=True)
class Layout:
    """A pool's names: stream S, group G, N partitions, mode, custom dead-letter stream."""

    stream: str
    group: str
    partitions: int = 1
    mode: str = "standalone"
    dead_letter_stream: Optional[str] = None
    keys: Tuple[PartitionKeys, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"mode must be one of {', '.join(MODES)}, not {self.mode!r}")
        if not isinstance(self.stream, str) or not self.stream:
            raise ConfigError("the stream name must not be empty")
        if not isinstance(self.group, str) or not self.group:
            raise ConfigError("the group name must not be empty")
        if (isinstance(self.partitions, bool) or not isinstance(self.partitions, int)
                or not 1 <= self.partitions <= MAX_PARTITIONS):
            raise ConfigError(f"partitions must be an integer from 1 to {MAX_PARTITIONS}, not {self.partitions!r}")
        cluster = self.mode == "cluster"
        if cluster and ("{" in self.stream or "}" in self.stream):
            raise ConfigError(
                f"on Redis Cluster the stream name must not contain '{{' or '}}' "
                f"(workpool adds the hash tag itself): {self.stream!r}"
            )
        d = self.dead_letter_stream
        if d is not None and d == "":
            raise ConfigError("the dead-letter stream name must not be empty")
        keys = []
        for i in range(self.partitions):
            base = self.stream if i == 0 else f"{self.stream}:{i}"
            p = f"{{{base}}}" if cluster else base
            if d is None:
                dead = f"{p}:dead"
            elif not cluster and self.partitions == 1:
                dead = d
            else:
                dead = f"{p}:{d}"
            if dead == p:
                raise ConfigError("the dead-letter stream must differ from the task stream")
            keys.append(PartitionKeys(i, p, dead))
        object.__setattr__(self, "keys", tuple(keys))

    @property
    def draining(self) -> str:
        """The pool's drain hash (docs/protocol.md 5.1), beside partition 0."""
        return f"{self.keys[0].stream}:draining"

    def stats_drain_key(self, i: int) -> str:
        """The stats script's third key for partition i: the drain hash for partition 0,
        the partition's own stream (not a hash: nothing read) for the others, so that
        every key of one call stays in the partition's hash slot."""
        return self.draining if i == 0 else self.partition(i).stream

    def partition(self, i: int) -> PartitionKeys:
        if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < self.partitions:
            raise ConfigError(f"partition {i!r} does not exist (the pool has {self.partitions})")
        return self.keys[i]


# --------------------------------------------------------------------------- partitions


def crc16(data: Union[bytes, str]) -> int:
    """CRC16-XMODEM (the one Redis Cluster uses for slots)."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    return binascii.crc_hqx(bytes(data), 0)


def partition_for_key(key: Union[bytes, str], partitions: int) -> int:
    return crc16(key) % partitions


class RoundRobin:
    """A producer's round-robin counter, starting at a random partition unless told."""

    def __init__(self, partitions: int, start: Optional[int] = None):
        self.partitions = partitions
        if start is None:
            start = random.randrange(partitions)
        if not 0 <= start < partitions:
            raise ConfigError(f"round_robin_start {start} is not a partition (0..{partitions - 1})")
        self._next = start

    def take(self) -> int:
        p = self._next
        self._next = (p + 1) % self.partitions
        return p


# --------------------------------------------------------------------------- tasks


def encode_payload(payload: Payload) -> bytes:
    """bytes as given, str as UTF-8, anything else as compact JSON (UTF-8, not escaped)."""
    if isinstance(payload, (bytes, bytearray, memoryview)):
        return bytes(payload)
    if isinstance(payload, str):
        return payload.encode("utf-8")
    try:
        return json.dumps(payload, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")
    except (TypeError, ValueError) as e:
        raise ConfigError(f"the payload is not bytes, str or JSON-serializable: {e}") from e


def check_task_id(task_id: Any) -> str:
    if not isinstance(task_id, str):
        raise ConfigError(f"a task id must be a str, not {type(task_id).__name__}")
    n = len(task_id.encode("utf-8"))
    if n == 0:
        raise ConfigError("a task id must not be empty")
    if n > MAX_TASK_ID_BYTES:
        raise ConfigError(f"a task id must be at most {MAX_TASK_ID_BYTES} bytes, not {n}")
    if re.fullmatch(r"\d+-\d+", task_id):
        raise ConfigError(
            f"task id {task_id!r} has the form of a stream entry id (<digits>-<digits>), which is "
            "reserved for tasks without an id"
        )
    return task_id


@dataclass
class Task:
    """One task to submit. `key` picks the partition by hash, `partition` directly; with
    `dedup` a task with the same `id` submitted within `dedup_window` seconds is not added
    again."""

    payload: Payload
    id: Optional[str] = None
    attempt: Optional[int] = None
    key: Optional[Union[str, bytes]] = None
    partition: Optional[int] = None
    dedup: bool = False
    dedup_window: float = DEFAULT_DEDUP_WINDOW


@dataclass(frozen=True)
class Planned:
    """A task turned into its command: `XADD` or the dedup script (`script` names it)."""

    partition: int
    task_id: Optional[str]
    script: Optional[str]
    keys: Tuple[str, ...]
    args: Tuple[bytes, ...]

    def logical_command(self) -> List[Union[str, bytes]]:
        """The command as the vectors write it (`@submit_dedup.lua` for the script)."""
        if self.script:
            return ["EVAL", f"@{self.script}.lua", str(len(self.keys)), *self.keys, *self.args]
        return ["XADD", self.keys[0], "*", *self.args]


def plan(layout: Layout, task: Task, rr: RoundRobin) -> Planned:
    """Validates a task and chooses its partition and command (nothing is sent)."""
    payload = encode_payload(task.payload)
    task_id = check_task_id(task.id) if task.id is not None else None
    if task.attempt is not None:
        if isinstance(task.attempt, bool) or not isinstance(task.attempt, int) or task.attempt < 1:
            raise ConfigError(f"attempt must be an integer >= 1, not {task.attempt!r}")
    window_ms = None
    if task.dedup:
        if task_id is None:
            raise ConfigError("deduplication needs a task id")
        window_ms = int(round(float(task.dedup_window) * 1000))
        if window_ms < 1:
            raise ConfigError(f"dedup_window must be positive, not {task.dedup_window!r}")
    if task.partition is not None:
        p = layout.partition(task.partition).index
    elif task.key is not None:
        p = partition_for_key(task.key, layout.partitions)
    elif task_id is not None and task.dedup:
        p = partition_for_key(task_id, layout.partitions)
    else:
        p = rr.take()
    fields: List[bytes] = [b"payload", payload]
    if task_id is not None:
        fields += [b"id", task_id.encode("utf-8")]
    if task.attempt is not None:
        fields += [b"attempt", str(task.attempt).encode()]
    keys = layout.keys[p]
    if window_ms is not None:
        assert task_id is not None
        return Planned(p, task_id, "submit_dedup", (keys.stream, keys.dedup(task_id)),
                       (str(window_ms).encode(), *fields))
    return Planned(p, task_id, None, (keys.stream,), tuple(fields))


@dataclass(frozen=True)
class TaskRef:
    """What identifies a task for `status` and `wait_for`."""

    task_id: str
    partition: int = 0
    entry_id: Optional[str] = None


@dataclass(frozen=True)
class Submitted:
    """A submitted task. `duplicate`: deduplication found an earlier task with this id
    (`entry_id` is that task's). `confirmed`: with `min_replicas`, whether `WAIT` confirmed
    it (None when not asked)."""

    partition: int
    entry_id: str
    task_id: str
    duplicate: bool = False
    confirmed: Optional[bool] = None

    @property
    def ref(self) -> TaskRef:
        return TaskRef(self.task_id, self.partition, self.entry_id)


def to_task(item: Union[Task, Payload]) -> Task:
    return item if isinstance(item, Task) else Task(payload=item)


# --------------------------------------------------------------------------- stats


@dataclass
class ConsumerStats:
    name: str
    pending: int
    idle_ms: int
    inactive_ms: Optional[int] = None

    def to_dict(self) -> Dict[str, Any]:
        return {"name": self.name, "pending": self.pending, "idle_ms": self.idle_ms, "inactive_ms": self.inactive_ms}


@dataclass
class Stats:
    """The figures of `workpool-worker stats --json` (docs/protocol.md section 7). For the
    pool, `partitions` holds each partition's own Stats (whose `partitions` is empty)."""

    stream: str
    group: str
    stream_exists: bool = False
    group_exists: bool = False
    stream_length: int = 0
    lag: int = 0
    lag_computed: bool = False
    lag_estimated: bool = False
    pending: int = 0
    pending_deleted: int = 0
    backlog: int = 0
    dead_letters: int = 0
    last_delivered_id: Optional[str] = None
    oldest_pending_id: Optional[str] = None
    oldest_pending_age_ms: Optional[int] = None
    consumers: List[ConsumerStats] = field(default_factory=list)
    partitions: List["Stats"] = field(default_factory=list)
    #: The pool's drain hash (docs/protocol.md 5.1): consumer -> "requested" | "stopped".
    #: On the pool's stats; the elements of `partitions` have none.
    draining: Dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> Dict[str, Any]:
        """The JSON object `workpool-worker stats --json` prints."""
        d: Dict[str, Any] = {
            "stream": self.stream, "group": self.group, "stream_exists": self.stream_exists,
            "group_exists": self.group_exists, "stream_length": self.stream_length, "lag": self.lag,
            "lag_computed": self.lag_computed, "lag_estimated": self.lag_estimated, "pending": self.pending,
            "pending_deleted": self.pending_deleted, "backlog": self.backlog, "dead_letters": self.dead_letters,
            "last_delivered_id": self.last_delivered_id, "oldest_pending_id": self.oldest_pending_id,
            "oldest_pending_age_ms": self.oldest_pending_age_ms,
            "consumers": [c.to_dict() for c in self.consumers],
        }
        if self.partitions:
            d["partitions"] = [p.to_dict() for p in self.partitions]
        if self.draining:
            d["draining"] = dict(self.draining)
        return d


def _flat_pairs(row: Any) -> Dict[str, Any]:
    if isinstance(row, dict):
        return {_text(k) or "": v for k, v in row.items()}
    return {_text(row[i]) or "": row[i + 1] for i in range(0, len(row) - 1, 2)}


DRAIN_STATES = ("requested", "stopped")


def parse_stats(reply: Sequence[Any], stream: str, group: str) -> Stats:
    """The stats script's 15 elements (same reading as `Queue::stats` in queue.rs)."""
    if not isinstance(reply, (list, tuple)) or len(reply) != 15:
        raise WorkpoolError(f"unexpected reply from the stats script: {reply!r}")

    def num(i: int) -> int:
        v = _int(reply[i])
        if v is None:
            raise WorkpoolError(f"unexpected element {i} from the stats script: {reply[i]!r}")
        return v

    now_ms = num(0) * 1000 + num(1) // 1000
    st = Stats(stream=stream, group=group)
    st.dead_letters = max(num(2), 0)
    st.stream_exists = num(3) == 1
    st.stream_length = max(num(4), 0)
    st.group_exists = num(5) == 1
    st.pending = max(num(6), 0)
    st.lag = max(num(7), 0)
    st.lag_computed = num(8) == 1
    st.last_delivered_id = _text(reply[9]) or None
    st.oldest_pending_id = _text(reply[10]) or None
    st.lag_estimated = num(12) == 1
    present = min(max(num(13), 0), st.pending)
    st.pending_deleted = st.pending - present
    st.backlog = st.lag + present
    if st.oldest_pending_id:
        st.oldest_pending_age_ms = max(now_ms - parse_entry_id(st.oldest_pending_id)[0], 0)
    if st.group_exists:
        for row in reply[11] or []:
            f = _flat_pairs(row)
            st.consumers.append(ConsumerStats(
                name=_text(f.get("name")) or "", pending=max(_int(f.get("pending")) or 0, 0),
                idle_ms=max(_int(f.get("idle")) or 0, 0), inactive_ms=_int(f.get("inactive"))))
    # Values other than the two states are left out (a hash someone else wrote under
    # that name is no drain).
    for name, state in _flat_pairs(reply[14] or []).items():
        if _text(state) in DRAIN_STATES:
            st.draining[name] = _text(state) or ""
    return st


def aggregate_stats(stream: str, group: str, parts: List[Stats]) -> Stats:
    """The pool's stats from its partitions' (docs/protocol.md section 7)."""
    st = Stats(stream=stream, group=group, partitions=parts)
    st.group_exists = bool(parts) and all(p.group_exists for p in parts)
    merged: Dict[str, ConsumerStats] = {}
    oldest: Optional[Stats] = None
    for p in parts:
        st.stream_exists |= p.stream_exists
        st.lag_computed |= p.lag_computed
        st.lag_estimated |= p.lag_estimated
        st.stream_length += p.stream_length
        st.lag += p.lag
        st.pending += p.pending
        st.pending_deleted += p.pending_deleted
        st.backlog += p.backlog
        st.dead_letters += p.dead_letters
        if p.oldest_pending_age_ms is not None and (
                oldest is None or p.oldest_pending_age_ms > (oldest.oldest_pending_age_ms or 0)):
            oldest = p
        for c in p.consumers:
            m = merged.get(c.name)
            if m is None:
                merged[c.name] = ConsumerStats(c.name, c.pending, c.idle_ms, c.inactive_ms)
            else:
                m.pending += c.pending
                m.idle_ms = min(m.idle_ms, c.idle_ms)
                if c.inactive_ms is not None:
                    m.inactive_ms = c.inactive_ms if m.inactive_ms is None else min(m.inactive_ms, c.inactive_ms)
    if oldest is not None:
        st.oldest_pending_id = oldest.oldest_pending_id
        st.oldest_pending_age_ms = oldest.oldest_pending_age_ms
    if len(parts) == 1:  # as the worker: one partition's own names and id
        st.last_delivered_id = parts[0].last_delivered_id
        st.stream = parts[0].stream
    st.consumers = list(merged.values())
    if parts:  # the pool's drain hash is read with partition 0
        st.draining, parts[0].draining = parts[0].draining, {}
    return st


# --------------------------------------------------------------------------- dead letters

RESERVED_DEAD_LETTER_FIELDS = ("original_id", "error", "deliveries", "stream", "group", "consumer")


@dataclass(frozen=True)
class DeadLetterRef:
    """A dead letter: its partition and its entry id in that partition's dead-letter stream.
    `str(ref)` is the text form `[<partition>/]<ms>-<seq>`."""

    partition: int
    id: str

    def __str__(self) -> str:
        return self.id if self.partition == 0 else f"{self.partition}/{self.id}"

    @classmethod
    def parse(cls, text: str) -> "DeadLetterRef":
        if not isinstance(text, str):
            raise ConfigError(f"a dead-letter reference must be a str, not {type(text).__name__}")
        part, sep, eid = text.rpartition("/")
        if sep:
            if not re.fullmatch(r"\d{1,9}", part):
                raise ConfigError(f"invalid dead-letter reference {text!r} (expected [<partition>/]<ms>-<seq>)")
            p = int(part)
        else:
            p = 0
        try:
            parse_entry_id(eid)
        except ConfigError:
            raise ConfigError(f"invalid dead-letter reference {text!r} (expected [<partition>/]<ms>-<seq>)") from None
        return cls(p, eid)


RefLike = Union[DeadLetterRef, "DeadLetter", str, Tuple[int, str]]


def to_ref(r: RefLike) -> DeadLetterRef:
    if isinstance(r, DeadLetterRef):
        return r
    if isinstance(r, DeadLetter):
        return r.ref
    if isinstance(r, tuple) and len(r) == 2:
        parse_entry_id(r[1])
        return DeadLetterRef(int(r[0]), r[1])
    return DeadLetterRef.parse(r)  # type: ignore[arg-type]


@dataclass(frozen=True)
class DeadLetter:
    """One dead-letter entry (docs/protocol.md section 6)."""

    partition: int
    id: str
    payload: Optional[bytes]
    task_id: Optional[str]
    original_id: Optional[str]
    error: Optional[str]
    deliveries: Optional[int]
    stream: Optional[str]
    group: Optional[str]
    consumer: Optional[str]
    fields: Fields
    dead_lettered_ms: int

    @property
    def ref(self) -> DeadLetterRef:
        return DeadLetterRef(self.partition, self.id)

    def field(self, name: str) -> Optional[bytes]:
        for k, v in self.fields:
            if k == name:
                return v
        return None


def parse_dead_letter(partition: int, entry_id: Union[str, bytes], raw: Any) -> DeadLetter:
    eid = _text(entry_id) or ""
    pairs: List[Tuple[str, bytes]] = []
    if isinstance(raw, dict):
        pairs = [(_text(k) or "", v) for k, v in raw.items()]
    else:
        pairs = [(_text(raw[i]) or "", raw[i + 1]) for i in range(0, len(raw) - 1, 2)]
    payload = None
    own: Dict[str, bytes] = {}
    others: Fields = []
    for k, v in pairs:
        if isinstance(v, str):
            v = v.encode("utf-8")
        if k == "payload" and payload is None:
            payload = v
        elif k in RESERVED_DEAD_LETTER_FIELDS and k not in own:
            own[k] = v
        else:
            others.append((k, v))
    original_id = _text(own.get("original_id"))
    task_id = next((_text(v) for k, v in others if k == "id"), None) or original_id
    return DeadLetter(
        partition=partition, id=eid, payload=payload, task_id=task_id, original_id=original_id,
        error=_text(own.get("error")), deliveries=_int(own.get("deliveries")), stream=_text(own.get("stream")),
        group=_text(own.get("group")), consumer=_text(own.get("consumer")), fields=others,
        dead_lettered_ms=parse_entry_id(eid)[0])


@dataclass
class DeadLetterFilter:
    """Which dead letters `dead_letters`, `retry_all` and `purge_all` consider."""

    partition: Optional[int] = None
    since: Union[int, datetime, None] = None  # ms since the epoch, or a datetime (inclusive)
    until: Union[int, datetime, None] = None  # inclusive
    error_contains: Optional[str] = None
    task_id: Optional[str] = None
    consumer: Optional[str] = None
    min_deliveries: Optional[int] = None

    def range(self) -> Tuple[str, str]:
        since, until = _ms(self.since), _ms(self.until)
        return (f"{since}-0" if since is not None else "-", f"{until}-{_U64_MAX}" if until is not None else "+")

    def matches(self, d: DeadLetter) -> bool:
        if self.error_contains is not None and self.error_contains not in (d.error or ""):
            return False
        if self.task_id is not None and d.task_id != self.task_id:
            return False
        if self.consumer is not None and d.consumer != self.consumer:
            return False
        if self.min_deliveries is not None and (d.deliveries or 0) < self.min_deliveries:
            return False
        return True

    def is_empty(self) -> bool:
        return (self.since, self.until, self.error_contains, self.task_id, self.consumer,
                self.min_deliveries) == (None,) * 6


def sort_key(d: DeadLetter) -> Tuple[int, int, int]:
    ms, seq = parse_entry_id(d.id)
    return (ms, seq, d.partition)


def after(entry_id: str) -> str:
    return "(" + entry_id


def upper_bound(hi: str, last_id: str) -> str:
    """The smaller of an XRANGE upper bound (`+` or an id) and `last_id`."""
    return last_id if hi == "+" or parse_entry_id(last_id) < parse_entry_id(hi) else hi


def trim_threshold(last_id: str) -> str:
    """The MINID that removes everything up to and including `last_id`."""
    ms, seq = parse_entry_id(last_id)
    return f"{ms}-{seq + 1}" if seq < _U64_MAX else f"{ms + 1}-0"


@dataclass(frozen=True)
class RetryOutcome:
    """A retried dead letter: the new entry id in the task stream, or None when the dead
    letter was not there (already retried or purged)."""

    ref: DeadLetterRef
    entry_id: Optional[str]


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class Result:
    """A task's outcome as the worker records it (docs/protocol.md section 8)."""

    state: str  # "done" | "dead"
    version: Optional[int]
    task_id: Optional[str]
    entry_id: Optional[str]
    deliveries: Optional[int]
    consumer: Optional[str]
    started_ms: Optional[int]
    finished_ms: Optional[int]
    output: Optional[bytes]
    output_truncated: bool
    error: Optional[str]
    dead_letter_id: Optional[str]
    extra: Fields

    @property
    def ok(self) -> bool:
        return self.state == "done"

    def text(self) -> Optional[str]:
        return None if self.output is None else self.output.decode("utf-8", "replace")

    def json(self) -> Any:
        return None if self.output is None else json.loads(self.output)


_RESULT_FIELDS = ("v", "state", "task_id", "entry_id", "deliveries", "consumer", "started_ms", "finished_ms",
                  "output", "output_truncated", "error", "dead_letter_id")


def parse_result(h: Dict[Any, Any]) -> Optional[Result]:
    if not h:
        return None
    f = {(_text(k) or ""): (v.encode("utf-8") if isinstance(v, str) else v) for k, v in h.items()}
    return Result(
        state=_text(f.get("state")) or "", version=_int(f.get("v")), task_id=_text(f.get("task_id")),
        entry_id=_text(f.get("entry_id")), deliveries=_int(f.get("deliveries")), consumer=_text(f.get("consumer")),
        started_ms=_int(f.get("started_ms")), finished_ms=_int(f.get("finished_ms")), output=f.get("output"),
        output_truncated=_text(f.get("output_truncated")) == "1", error=_text(f.get("error")),
        dead_letter_id=_text(f.get("dead_letter_id")),
        extra=[(k, v) for k, v in f.items() if k not in _RESULT_FIELDS])


@dataclass(frozen=True)
class TaskStatus:
    """`queued`, `running` (consumer and deliveries set), `done` / `dead` (result set) or
    `unknown` (finished with results off, expired, or never submitted)."""

    state: str
    result: Optional[Result] = None
    consumer: Optional[str] = None
    deliveries: Optional[int] = None


TaskLike = Union[TaskRef, Submitted, str]


def to_task_ref(layout: Layout, task: TaskLike, partition: Optional[int], key: Union[str, bytes, None]) -> TaskRef:
    if isinstance(task, Submitted):
        return task.ref
    if isinstance(task, TaskRef):
        layout.partition(task.partition)
        return task
    if not isinstance(task, str) or not task:
        raise ConfigError(f"a task is a TaskRef, a Submitted or a task id str, not {task!r}")
    if partition is not None:
        p = layout.partition(partition).index
    elif key is not None:
        p = partition_for_key(key, layout.partitions)
    elif layout.partitions == 1:
        p = 0
    else:
        raise ConfigError(
            f"the pool has {layout.partitions} partitions: say which one holds task {task!r} "
            "(partition=..., or the key it was submitted with, key=...), or pass what submit returned")
    return TaskRef(task, p)


# --------------------------------------------------------------------------- URLs


@dataclass(frozen=True)
class Target:
    """What a workpool URL names (docs/protocol.md section 2)."""

    mode: str
    tls: bool
    hosts: Tuple[Tuple[str, int], ...] = ()
    path: Optional[str] = None
    db: int = 0
    username: Optional[str] = None
    password: Optional[str] = None
    master: Optional[str] = None
    sentinel_username: Optional[str] = None
    sentinel_password: Optional[str] = None


_SCHEMES = {
    "redis": ("standalone", False), "rediss": ("standalone", True), "unix": ("standalone", False),
    "redis+unix": ("standalone", False), "redis+sentinel": ("sentinel", False), "rediss+sentinel": ("sentinel", True),
    "redis+cluster": ("cluster", False), "rediss+cluster": ("cluster", True),
}


def _redact(url: str) -> str:
    m = re.match(r"^([^:/]+://)([^@/]*)@", url)
    return f"{m.group(1)}***@{url[m.end():]}" if m else url


def parse_url(url: str) -> Target:
    if not isinstance(url, str):
        raise ConfigError("the Redis URL must be a str")
    bad = lambda why: ConfigError(f"invalid Redis URL {_redact(url)!r}: {why}")  # noqa: E731
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in _SCHEMES:
        raise bad(f"the scheme must be one of {', '.join(sorted(_SCHEMES))}")
    scheme = scheme.lower()
    mode, tls = _SCHEMES[scheme]
    rest, _, query = rest.partition("?")
    q = {k: v[-1] for k, v in parse_qs(query, keep_blank_values=True).items()}

    def db_of(s: Optional[str]) -> int:
        if s is None or s == "":
            return 0
        if not s.isdigit():
            raise bad(f"the database must be a number, not {s!r}")
        return int(s)

    if scheme in ("unix", "redis+unix"):
        userinfo, at, path = rest.rpartition("@") if "@" in rest.split("/", 1)[0] else ("", "", rest)
        if not path.startswith("/"):
            raise bad("a unix socket URL needs an absolute path (unix:///path/to/redis.sock)")
        user, password = _userinfo(userinfo) if at else (None, None)
        return Target(mode, False, path=path, db=db_of(q.get("db")), username=user, password=password)
    slash = rest.find("/")
    netloc, path = (rest, "") if slash < 0 else (rest[:slash], rest[slash:])
    userinfo, at, hostpart = netloc.rpartition("@")
    user, password = _userinfo(userinfo) if at else (None, None)
    default_port = 26379 if mode == "sentinel" else 6379
    hosts = tuple(_host_port(h, default_port, bad) for h in _split_hosts(hostpart, bad))
    if not hosts:
        raise bad("no host")
    segments = [s for s in path.split("/")[1:]] if path else []
    if mode == "standalone":
        if len(hosts) != 1:
            raise bad("a standalone URL names one host (use redis+sentinel:// or redis+cluster:// for several)")
        if len(segments) > 1:
            raise bad(f"unexpected path {path!r}")
        return Target(mode, tls, hosts, db=db_of(segments[0] if segments else q.get("db")), username=user, password=password)
    if mode == "cluster":
        if len(segments) > 1:
            raise bad(f"unexpected path {path!r}")
        db = db_of(segments[0] if segments else None)
        if db != 0:
            raise bad("Redis Cluster has only database 0")
        return Target(mode, tls, hosts, username=user, password=password)
    if not segments or not segments[0]:
        raise bad("a sentinel URL names the primary: redis+sentinel://host:26379/MASTER[/db]")
    if len(segments) > 2:
        raise bad(f"unexpected path {path!r}")
    return Target(mode, tls, hosts, db=db_of(segments[1] if len(segments) > 1 else None), username=user,
                  password=password, master=unquote(segments[0]), sentinel_username=q.get("sentinel_username"),
                  sentinel_password=q.get("sentinel_password"))


def _userinfo(s: str) -> Tuple[Optional[str], Optional[str]]:
    user, colon, password = s.partition(":")
    return (unquote(user) or None, unquote(password) if colon else None)


def _split_hosts(s: str, bad: Any) -> List[str]:
    out, cur, depth = [], "", 0
    for ch in s:
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
        if ch == "," and depth == 0:
            out.append(cur)
            cur = ""
        else:
            cur += ch
    out.append(cur)
    if s == "":
        return []
    if any(h == "" for h in out):
        raise bad("an empty host")
    return out


def _host_port(h: str, default_port: int, bad: Any) -> Tuple[str, int]:
    if h.startswith("["):
        end = h.find("]")
        if end < 0:
            raise bad(f"unclosed '[' in {h!r}")
        host, rest = h[1:end], h[end + 1:]
        if rest and not rest.startswith(":"):
            raise bad(f"invalid host {h!r}")
        port_s = rest[1:] if rest else None
    else:
        host, colon, port_s_ = h.partition(":")
        port_s = port_s_ if colon else None
    if not host:
        raise bad(f"an empty host in {h!r}")
    if port_s is None:
        return host, default_port
    if not port_s.isdigit() or not 0 < int(port_s) < 65536:
        raise bad(f"invalid port {port_s!r}")
    return host, int(port_s)


def chunks(seq: Sequence[Any], n: int) -> Iterable[Sequence[Any]]:
    for i in range(0, len(seq), n):
        yield seq[i:i + n]
