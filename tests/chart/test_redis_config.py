"""The bundled Redis' configuration, as rendered, run by a real redis-server: password
required (from the Secret's include file), append-only, never evicting, and the Secret's
URL works for workpool-worker."""

from __future__ import annotations

import base64
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from conftest import MATRIX, missing, render
from procs import free_port, process, wait_port, worker_bin


def rendered_redis(values=None):
    docs = render(values)
    conf = docs.one("ConfigMap", "-redis").obj["data"]["redis.conf"]
    data = {k: base64.b64decode(v).decode() for k, v in docs.one("Secret", "-redis").obj["data"].items()}
    sts = docs.one("StatefulSet").obj
    return conf, data, sts


def cli(port: int, *args: str, password: str | None = None) -> str:
    exe = shutil.which("redis-cli") or missing("redis-cli is not installed", "it comes with redis-server (make deps)")
    env_args = ["-a", password, "--no-auth-warning"] if password else []
    r = subprocess.run([exe, "-p", str(port), *env_args, *args], capture_output=True, text=True, timeout=10)
    return (r.stdout + r.stderr).strip()


@pytest.mark.parametrize("key", ["defaults", "redis-ephemeral"])
def test_rendered_config_runs_in_a_real_redis(key):
    exe = shutil.which("redis-server") or missing("redis-server is not installed", "make deps installs it")
    conf, data, sts = rendered_redis(MATRIX[key])
    (c,) = sts["spec"]["template"]["spec"]["containers"]
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    port = free_port()
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        # lay the files out where the pod's mounts put them, under a temp root
        secret_dir = root / mounts["secret"].lstrip("/")
        secret_dir.mkdir(parents=True)
        (secret_dir / "auth.conf").write_text(data["auth.conf"])
        data_dir = root / mounts["data"].lstrip("/")
        data_dir.mkdir(parents=True)
        local = (conf.replace("port 6379", f"port {port}")
                 .replace("dir /data", f"dir {data_dir}")
                 .replace(f"include {mounts['secret']}/", f"include {secret_dir}/")
                 .replace("bind * -::*", "bind 127.0.0.1"))
        assert local.count(str(root)) == 2, "the config names the mounted paths"
        (root / "redis.conf").write_text(local)
        assert c["command"][0] == "redis-server"
        with process([exe, str(root / "redis.conf")]) as server:
            wait_port(port)
            pw = data["redis-password"]
            assert "NOAUTH" in cli(port, "PING"), "a password is required"
            assert cli(port, "PING", password=pw) == "PONG"
            assert cli(port, "CONFIG", "GET", "maxmemory-policy", password=pw).split() == ["maxmemory-policy", "noeviction"]
            assert cli(port, "CONFIG", "GET", "appendonly", password=pw).split() == ["appendonly", "yes"]
            if key == "redis-ephemeral":
                assert cli(port, "CONFIG", "GET", "maxmemory", password=pw).split() == ["maxmemory", str(256 * 1024 * 1024)]
                assert cli(port, "CONFIG", "GET", "appendfsync", password=pw).split() == ["appendfsync", "always"]
            # the Secret's URL, pointed at this server, works for the worker
            url = data["redis-url"]
            host = url.split("@", 1)[1].split("/", 1)[0]
            local_url = url.replace(host, f"127.0.0.1:{port}")
            r = subprocess.run([worker_bin(), "submit", "--redis-url", local_url, "--stream", "s", "--payload", "{}"],
                               capture_output=True, text=True, timeout=30)
            assert r.returncode == 0, r.stderr + server.output()
            assert cli(port, "XLEN", "s", password=pw) == "1"
            cli(port, "SHUTDOWN", password=pw)
        assert any(data_dir.rglob("*.aof")), "append-only files are written to the data volume"


# --- HA mode's start scripts ---------------------------------------------------------------

STUB_CLI = """#!/bin/sh
# redis-cli -h HOST -p PORT --raw ...: sentinel i answers $Ai (nothing: unreachable);
# a Redis pod answers ROLE with $ROLE; this pod (127.0.0.1) answers INFO replication
# with $ROLE and $MHOST and writes a REPLICAOF to $CALLS. Every call is logged to $LOG.
[ -z "${LOG:-}" ] || echo "$2 $*" >> "$LOG"
case "$2" in
  s-0.*) [ -n "${A0:-}" ] && echo "$A0" || exit 1;;
  s-1.*) [ -n "${A1:-}" ] && echo "$A1" || exit 1;;
  s-2.*) [ -n "${A2:-}" ] && echo "$A2" || exit 1;;
  127.0.0.1) case " $* " in
      *" REPLICAOF "*) echo "$*" >> "$CALLS";;
      *) printf 'role:%s\r\nmaster_host:%s\r\n' "${ROLE:-slave}" "${MHOST:-}";;
    esac;;
  *) echo "${ROLE:-slave}";;
esac
"""


def ha_scripts(shell: str) -> dict:
    """The scripts of redis.ha's ConfigMap, for `shell` (missing busybox: skipped, in CI
    a failure)."""
    if shell.startswith("busybox") and not shutil.which("busybox"):
        missing("busybox is not installed", "make deps installs busybox-static")
    return render(MATRIX["redis-ha"]).one("ConfigMap", "-redis").obj["data"]


def stub_cli(root: Path) -> None:
    """STUB_CLI as `redis-cli` in root/bin."""
    (root / "bin").mkdir()
    (root / "bin" / "redis-cli").write_text(STUB_CLI)
    (root / "bin" / "redis-cli").chmod(0o755)


@pytest.mark.parametrize("shell", ["sh", "busybox sh"])
def test_ha_start_scripts_follow_the_majority_of_the_sentinels(shell):
    """The scripts the Redis pods and sentinels of redis.ha start with, run by a real
    POSIX sh and by busybox's (the test node's image), with redis-cli answering as the
    sentinels would: a Redis pod replicates from the primary most sentinels name (one
    that missed the last failover does not outvote them), is the primary when they name
    it, and on a fresh install pod 0 is the primary; a sentinel monitors what the others
    name, else the pod that says it is the primary, else pod 0."""
    data = ha_scripts(shell)
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        stub_cli(root)
        # redis-server prints the config it was given, instead of serving it
        (root / "bin" / "redis-server").write_text('#!/bin/sh\necho "config $1 $2"; cat "$1"\n')
        (root / "bin" / "redis-server").chmod(0o755)
        (root / "redis.conf").write_text("port 6379\n")
        redis_sh = (data["start-redis.sh"].replace("/etc/redis/redis.conf", str(root / "redis.conf"))
                    .replace("/tmp/redis.conf", str(root / "run.conf")))
        sentinel_sh = data["start-sentinel.sh"].replace("/data/sentinel.conf", str(root / "sentinel.conf"))
        (root / "start-redis.sh").write_text(redis_sh)
        (root / "start-sentinel.sh").write_text(sentinel_sh)
        env = {"PATH": f"{root}/bin:/usr/bin:/bin", "HEADLESS": "h", "REDIS_NAME": "r", "SENTINEL_NAME": "s",
               "SENTINEL_HEADLESS": "sh", "SENTINELS": "3", "REDIS_REPLICAS": "3", "MASTER_NAME": "workpool",
               "QUORUM": "2", "DOWN_AFTER": "5000", "FAILOVER_TIMEOUT": "60000", "REDISCLI_AUTH": "pw"}

        def run(script, **more):
            r = subprocess.run([*shell.split(), str(root / script)], env={**env, **more},
                               capture_output=True, text=True, timeout=30)
            assert r.returncode == 0, r.stderr
            return r.stdout

        out = run("start-redis.sh", POD_NAME="r-0", A0="r-0.h", A1="r-1.h", A2="r-1.h")
        assert "replicaof r-1.h 6379" in out and "replica-announce-ip r-0.h" in out, out
        out = run("start-redis.sh", POD_NAME="r-1", A0="r-1.h", A1="r-1.h")
        assert "replicaof" not in out and "start-redis: primary" in out, out
        out = run("start-sentinel.sh", POD_NAME="s-0", A1="r-2.h", A2="r-2.h")
        assert "sentinel monitor workpool r-2.h 6379 2" in out, out
        assert "sentinel announce-ip s-0.sh" in out and "requirepass pw" in out, out
        assert out.index("resolve-hostnames") < out.index("sentinel monitor"), "hostnames resolve before monitor"
        out = run("start-sentinel.sh", POD_NAME="s-1", ROLE="master")
        assert "sentinel monitor workpool r-0.h 6379 2" in out, out


@pytest.mark.parametrize("shell", ["sh", "busybox sh"])
def test_ha_follower_attaches_its_pod_to_the_primary_the_sentinels_name(shell):
    """The follower container (`start-redis.sh follow`), run by a real sh and by busybox's,
    against redis-cli answering as the sentinels and the pod's Redis would: a pod that is
    a primary, or replicates another host, while most sentinels name another primary is
    made that primary's replica (after two looks in a row); a pod that replicates the named
    primary, a pod the sentinels name, and a pod whose sentinels have no majority (a tie,
    none answering) are left alone."""
    data = ha_scripts(shell)
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        stub_cli(root)
        (root / "start-redis.sh").write_text(data["start-redis.sh"])
        env = {"PATH": f"{root}/bin:/usr/bin:/bin", "HEADLESS": "h", "SENTINEL_NAME": "s",
               "SENTINEL_HEADLESS": "sh", "SENTINELS": "3", "MASTER_NAME": "workpool",
               "REDISCLI_AUTH": "pw", "FOLLOW_PERIOD": "0.05", "POD_NAME": "r-2"}

        def follow(case: str, looks: int, **more) -> list[str]:
            """Runs the follower until it looked `looks` times (or called REPLICAOF);
            the REPLICAOF calls it made."""
            log, calls = root / f"{case}.log", root / f"{case}.calls"
            log.touch()
            calls.touch()
            p = subprocess.Popen([*shell.split(), str(root / "start-redis.sh"), "follow"],
                                 env={**env, **more, "LOG": str(log), "CALLS": str(calls)},
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            try:
                deadline = time.monotonic() + 60
                # a look asks every sentinel: s-2 is asked last
                while (log.read_text().count("s-2.sh ") < looks and not calls.read_text()
                       and p.poll() is None):
                    assert time.monotonic() < deadline, f"{case}: {log.read_text()}"
                    time.sleep(0.05)
            finally:
                p.kill()
                out = p.communicate()[0]
            assert p.returncode is not None and "set: " not in out and "not found" not in out, out
            return calls.read_text().splitlines()

        named_r1 = {"A0": "r-1.h", "A1": "r-1.h", "A2": "r-0.h"}
        want = ["-h 127.0.0.1 -p 6379 REPLICAOF r-1.h 6379"]
        assert follow("chained", 20, **named_r1, ROLE="slave", MHOST="r-0.h") == want
        assert follow("primary", 20, **named_r1, ROLE="master") == want
        assert follow("attached", 5, **named_r1, ROLE="slave", MHOST="r-1.h") == []
        assert follow("named", 5, A0="r-2.h", A1="r-2.h", A2="r-1.h", ROLE="master") == []
        assert follow("no-majority", 5, A0="r-0.h", A1="r-1.h", ROLE="master") == []
        assert follow("unreachable", 5, ROLE="master") == []
