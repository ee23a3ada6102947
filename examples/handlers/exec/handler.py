#!/usr/bin/env python3
"""An --exec handler: one process per task, the payload on stdin.

Exit 0: done. Exit 100: never retry (the task goes straight to the dead-letter stream
with this process's stderr as the error). Any other failure: retried with backoff up to
the WorkPool's delivery.maxDeliveries.

The example "renders a thumbnail" by hashing the image name; payload:
    {"image": "cat.png", "width": 128}
"""

import hashlib
import json
import os
import sys

PERMANENT = 100

try:
    task = json.load(sys.stdin)
except ValueError as e:
    print(f"payload is not JSON: {e}", file=sys.stderr)
    sys.exit(PERMANENT)  # retrying would not help

image = task.get("image") if isinstance(task, dict) else None
if not isinstance(image, str) or not image:
    print("payload needs an image name", file=sys.stderr)
    sys.exit(PERMANENT)
width = task.get("width", 128)
if not isinstance(width, int) or not 1 <= width <= 4096:
    print(f"width must be 1..4096, got {width!r}", file=sys.stderr)
    sys.exit(PERMANENT)

task_id = os.environ.get("WORKPOOL_TASK_ID", "?")
delivery = int(os.environ.get("WORKPOOL_DELIVERY", "1"))
if task.get("flaky") and delivery < 2:
    # a transient failure: the worker retries it
    print("storage not ready, try again", file=sys.stderr)
    sys.exit(1)

digest = hashlib.sha256(f"{image}:{width}".encode()).hexdigest()[:16]
# stdout is kept in the worker's log
print(json.dumps({"task": task_id, "delivery": delivery, "image": image, "thumbnail": f"{digest}.png"}))
