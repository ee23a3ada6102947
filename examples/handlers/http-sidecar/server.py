#!/usr/bin/env python3
"""An HTTP handler that runs next to the worker in the same pod (a sidecar).

The worker POSTs each task's payload to /task. 2xx: done. 4xx other than 408 and 429:
never retry (dead-lettered at once with the response body as the error). Anything else
(5xx, 408, 429, a dropped connection): retried with backoff. GET /healthz answers 200.

Payload: {"order": 42, "amount_cents": 1999}
"""

import json
import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    server_version = "orders-handler/0.1"

    def _answer(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):  # noqa: N802
        if self.path == "/healthz":
            self._answer(200, {"ok": True})
        else:
            self._answer(404, {"error": "not found"})

    def do_POST(self):  # noqa: N802
        if self.path != "/task":
            self._answer(404, {"error": "not found"})
            return
        length = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(length)
        task_id = self.headers.get("x-workpool-task-id", "?")
        delivery = int(self.headers.get("x-workpool-delivery", "1"))
        try:
            task = json.loads(raw)
        except ValueError:
            self._answer(422, {"error": "payload is not JSON"})  # permanent
            return
        if not isinstance(task, dict) or not isinstance(task.get("order"), int):
            self._answer(422, {"error": "payload needs an integer order"})  # permanent
            return
        if task.get("flaky") and delivery < 2:
            self._answer(503, {"error": "payment service busy"})  # retried
            return
        print(json.dumps({"task": task_id, "delivery": delivery, "order": task["order"], "charged": task.get("amount_cents", 0)}), flush=True)
        self._answer(200, {"order": task["order"], "status": "charged"})

    def log_message(self, fmt, *args):  # quiet access log
        pass


def main() -> None:
    addr = os.environ.get("LISTEN_ADDR", "127.0.0.1")
    port = int(os.environ.get("PORT", "8080"))
    server = ThreadingHTTPServer((addr, port), Handler)
    print(f"listening on {addr}:{port}", file=sys.stderr, flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
