"""Real processes for the behaviour tests: a redis-server on a free loopback port and
workpool-worker (the binary cargo builds; WORKPOOL_WORKER_BIN names another)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

from conftest import REPO, missing


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker_bin() -> str:
    """The workpool-worker binary: $WORKPOOL_WORKER_BIN, else the newest of
    $CARGO_TARGET_DIR/{debug,release} and target/{debug,release}."""
    env = os.environ.get("WORKPOOL_WORKER_BIN")
    if env:
        if not os.access(env, os.X_OK):
            missing(f"WORKPOOL_WORKER_BIN={env} is not executable", "cargo build -p workpool-worker")
        return env
    dirs = [Path(os.environ["CARGO_TARGET_DIR"])] if os.environ.get("CARGO_TARGET_DIR") else []
    dirs.append(REPO / "target")
    found = [d / p / "workpool-worker" for d in dirs for p in ("debug", "release")]
    found = [f for f in found if f.exists()]
    if not found:
        missing("the workpool-worker binary is not built", "cargo build -p workpool-worker, or set WORKPOOL_WORKER_BIN")
    return str(max(found, key=lambda f: f.stat().st_mtime))


def wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


@contextmanager
def redis_server(password: str | None = None):
    """Yields the URL of a fresh redis-server (temp dir, loopback, no persistence)."""
    exe = shutil.which("redis-server")
    if not exe:
        missing("redis-server is not installed", "make deps / scripts/install-test-deps.sh installs it")
    port = free_port()
    with tempfile.TemporaryDirectory() as d:
        args = [exe, "--port", str(port), "--bind", "127.0.0.1", "--dir", d, "--save", "", "--appendonly", "no"]
        if password:
            args += ["--requirepass", password]
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_port(port)
            auth = f":{password}@" if password else ""
            yield f"redis://{auth}127.0.0.1:{port}/0"
        finally:
            proc.terminate()
            proc.wait(timeout=10)


@contextmanager
def process(args: list[str], env: dict[str, str] | None = None, cwd: str | None = None):
    """A background process, stopped with SIGTERM (then SIGKILL) at the end. Yields the
    Popen; its output goes to a temp file readable through .output()."""
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen(args, env={**os.environ, **(env or {})}, cwd=cwd, stdout=log, stderr=subprocess.STDOUT)

    def output() -> str:
        log.seek(0)
        return log.read().decode(errors="replace")

    proc.output = output  # type: ignore[attr-defined]
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()
