"""Real redis-servers for the tests, started on free loopback ports: one standalone server
(flushed before each test), a 3-node Redis Cluster, a primary with a replica (WAIT) and a
Sentinel, each started once per session when a test asks for it. Without redis-server the
tests skip, except under CI=true, where they fail."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Iterator, List

import pytest
import redis

HERE = Path(__file__).resolve().parent
VECTORS = HERE.parent.parent / "vectors"
REPO = HERE.parent.parent.parent


def vectors(name: str) -> dict:
    return json.loads((VECTORS / name).read_text(encoding="utf-8"))


def _need(binary: str) -> str:
    path = shutil.which(binary)
    if path is None:
        msg = f"{binary} is not installed (make deps installs it)"
        if os.environ.get("CI") == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """One redis-server process on 127.0.0.1:<port>."""

    def __init__(self, workdir: Path, *extra: str):
        binary = _need("redis-server")
        last = ""
        for _ in range(5):  # a port taken between the probe and the bind: try another
            self.port = _free_port()
            self.dir = Path(tempfile.mkdtemp(prefix=f"redis-{self.port}-", dir=workdir))
            self.log = self.dir / "redis.log"
            args = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                    "--dir", str(self.dir), "--logfile", str(self.log), *extra]
            self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            if self._wait_ready():
                return
            self.stop()
            last = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
        raise RuntimeError(f"redis-server did not start: {last}")

    def _wait_ready(self) -> bool:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                with redis.Redis(port=self.port, socket_timeout=1) as c:
                    c.ping()
                return True
            except redis.ConnectionError:
                time.sleep(0.02)
        return False

    def client(self, **kw) -> redis.Redis:
        return redis.Redis(port=self.port, **kw)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope="session")
def workdir() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="workpool-py-tests-"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="session")
def server(workdir: Path) -> Iterator[Server]:
    s = Server(workdir)
    yield s
    s.stop()


@pytest.fixture
def r(server: Server) -> Iterator[redis.Redis]:
    """A client of the standalone server, flushed."""
    c = server.client()
    c.flushall()
    yield c
    c.close()


class Cluster:
    def __init__(self, workdir: Path, n: int = 3):
        _need("redis-cli")
        self.nodes: List[Server] = [Server(workdir, "--cluster-enabled", "yes", "--cluster-node-timeout", "5000")
                                    for _ in range(n)]
        addrs = [f"127.0.0.1:{s.port}" for s in self.nodes]
        out = subprocess.run(["redis-cli", "--cluster", "create", *addrs, "--cluster-yes"], capture_output=True,
                             text=True, timeout=60)
        if out.returncode != 0:
            self.stop()
            raise RuntimeError(f"redis-cli --cluster create failed: {out.stdout}{out.stderr}")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            states = [s.client().cluster("info") for s in self.nodes]
            if all(st.get("cluster_state") == "ok" for st in states):
                break
            time.sleep(0.05)
        else:
            self.stop()
            raise RuntimeError("the cluster did not reach cluster_state:ok")

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{s.port}" for s in self.nodes)

    def client(self) -> "redis.cluster.RedisCluster":
        from redis.cluster import ClusterNode, RedisCluster

        return RedisCluster(startup_nodes=[ClusterNode("127.0.0.1", s.port) for s in self.nodes])

    def flush(self) -> None:
        for s in self.nodes:
            with s.client() as c:
                c.flushall()

    def stop(self) -> None:
        for s in self.nodes:
            s.stop()


@pytest.fixture(scope="session")
def cluster(workdir: Path) -> Iterator[Cluster]:
    c = Cluster(workdir)
    yield c
    c.stop()


@pytest.fixture
def rc(cluster: Cluster):
    """A RedisCluster client of the flushed 3-node cluster."""
    cluster.flush()
    c = cluster.client()
    yield c
    c.close()


class Replicated:
    """A primary with one replica (for WAIT), and a Sentinel watching the primary."""

    def __init__(self, workdir: Path):
        self.primary = Server(workdir)
        self.replica = Server(workdir, "--replicaof", "127.0.0.1", str(self.primary.port))
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            info = self.primary.client().info("replication")
            if info.get("connected_slaves", 0) >= 1 and info.get("slave0", {}).get("state") == "online":
                break
            time.sleep(0.05)
        else:
            raise RuntimeError("the replica did not come online")
        conf = Path(tempfile.mkdtemp(prefix="sentinel-", dir=workdir)) / "sentinel.conf"
        conf.write_text(f"sentinel monitor wpmaster 127.0.0.1 {self.primary.port} 1\n")
        self.sentinel = _SentinelServer(workdir, conf)

    def stop(self) -> None:
        for s in (self.sentinel, self.replica, self.primary):
            s.stop()


class _SentinelServer(Server):
    def __init__(self, workdir: Path, conf: Path):
        binary = _need("redis-server")
        self.port = _free_port()
        self.dir = conf.parent
        self.log = self.dir / "sentinel.log"
        self.proc = subprocess.Popen([binary, str(conf), "--sentinel", "--port", str(self.port), "--bind", "127.0.0.1",
                                      "--logfile", str(self.log)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if not self._wait_ready():
            raise RuntimeError("redis-server --sentinel did not start: " + self.log.read_text(errors="replace")[-2000:])


@pytest.fixture(scope="session")
def replicated(workdir: Path) -> Iterator[Replicated]:
    rp = Replicated(workdir)
    yield rp
    rp.stop()


def worker_binary() -> str:
    """The real workpool-worker, for the tests that run it: $WORKPOOL_WORKER_BIN or the
    repository's target/debug build (make test builds it before the client tests)."""
    b = os.environ.get("WORKPOOL_WORKER_BIN") or str(REPO / "target" / "debug" / "workpool-worker")
    if not os.access(b, os.X_OK):
        msg = f"{b} is missing: build it with `cargo build -p workpool-worker` (make test does)"
        if os.environ.get("CI") == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    return b
