"""The bundled Redis' configuration, as rendered, run by a real redis-server: password
required (from the Secret's include file), append-only, never evicting, and the Secret's
URL works for workpool-worker."""

from __future__ import annotations

import base64
import shutil
import subprocess
import tempfile
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
