"""Submit one task per argument to a pool and print each task's result as a JSON line.

    pip install ./clients/python
    WORKPOOL_REDIS_URL=redis://127.0.0.1:6379/0 WORKPOOL_STREAM=thumbnails \
        python3 produce.py '{"image": "a.png"}' '{"image": "b.png"}'

The pool must have results on (spec.delivery.results.ttlSeconds).
"""
import json
import os
import sys

import workpool

pool = workpool.Pool.from_url(os.environ.get("WORKPOOL_REDIS_URL", "redis://127.0.0.1:6379/0"),
                              stream=os.environ.get("WORKPOOL_STREAM", "thumbnails"))
tasks = [pool.submit(payload) for payload in sys.argv[1:] or ['{"image": "a.png"}']]
for task in tasks:
    result = pool.wait_for(task, timeout=120)  # blocks until a worker records the outcome
    print(json.dumps({"task_id": task.task_id, "state": result.state,
                      "output": result.text(), "error": result.error}), flush=True)
