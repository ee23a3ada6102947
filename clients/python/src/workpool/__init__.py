"""workpool: submit tasks to a workpool queue (Redis Streams), read its stats, inspect
and retry dead letters, wait for results. The protocol: docs/protocol.md.

    import workpool
    pool = workpool.Pool.from_url("redis://localhost:6379/0", stream="thumbnails")
    task = pool.submit({"image": "a.png"}, id="order-42")
    result = pool.wait_for(task, timeout=60)     # needs results on for the pool

`workpool.aio.Pool` is the same for asyncio.
"""

from ._protocol import (
    PROTOCOL_VERSION, ConfigError, ConsumerStats, DeadLetter, DeadLetterFilter, DeadLetterRef, Layout,
    PartitionKeys, Result, RetryOutcome, Stats, SubmitError, Submitted, Target, Task, TaskRef, TaskStatus,
    WaitTimeout, WorkpoolError, crc16, partition_for_key, parse_url,
)
from .client import Pool, connect

__version__ = "0.1.0"

__all__ = [
    "PROTOCOL_VERSION", "ConfigError", "ConsumerStats", "DeadLetter", "DeadLetterFilter", "DeadLetterRef", "Layout",
    "PartitionKeys", "Pool", "Result", "RetryOutcome", "Stats", "SubmitError", "Submitted", "Target", "Task",
    "TaskRef", "TaskStatus", "WaitTimeout", "WorkpoolError", "connect", "crc16", "partition_for_key", "parse_url",
]
