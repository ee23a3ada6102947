"""The Dockerfiles (no image can be built on this machine, so these read them): multi-stage,
static binaries on distroless, non-root 65532, no floating `latest`, and the references
the chart uses."""

from __future__ import annotations

import re

import pytest
import yaml

from conftest import CHART, REPO

IMAGES = REPO / "images"


def stages(text: str) -> list[str]:
    return [line.split()[1] for line in text.splitlines() if line.startswith("FROM ")]


@pytest.mark.parametrize("name", ["operator", "worker"])
def test_binary_images(name):
    text = (IMAGES / f"{name}.Dockerfile").read_text()
    froms = stages(text)
    assert len(froms) >= 2, "multi-stage: build, then a small runtime"
    assert froms[-1] == "gcr.io/distroless/static-debian12:nonroot", "static binary on distroless/static"
    assert "-unknown-linux-musl" in text, "a static (musl) build"
    assert f"-p workpool-{name} --bin workpool-{name}" in text
    assert "--locked" in text, "the Cargo.lock versions"
    last = text.split("\nFROM ")[-1]
    assert re.search(r"^USER 65532:65532$", last, re.M)
    assert f'ENTRYPOINT ["/usr/local/bin/workpool-{name}"]' in last
    assert (IMAGES / f"{name}.Dockerfile.dockerignore").read_text().count("target") >= 1


def test_worker_image_has_what_the_helm_test_runs():
    text = (IMAGES / "worker.Dockerfile").read_text()
    applets = re.search(r"for applet in ([^;]+);", text).group(1).split()
    hook = (CHART / "templates" / "tests" / "test-workpool.yaml").read_text()
    assert "/bin/sh" in hook and "ln -s /usr/local/bin/busybox /rootfs/bin/sh" in text
    for tool in ("sleep", "tr", "sed", "sh"):
        assert tool in applets, f"the helm test script uses {tool}"
        assert re.search(rf"\b{tool}\b", hook)


def test_redis_image():
    text = (IMAGES / "redis.Dockerfile").read_text()
    assert re.search(r"^USER 65532:65532$", text, re.M)
    assert "redis-server" in text and "chown 65532:65532 /data" in text


def test_no_latest_tags():
    for path in list(IMAGES.glob("*.Dockerfile")) + list((REPO / "examples").rglob("Dockerfile")):
        for ref in stages(path.read_text()):
            if "$" in ref:
                continue
            assert ":" in ref.split("/")[-1] and not ref.endswith(":latest"), f"{path.name}: {ref}"


def test_chart_image_repositories_are_the_documented_ones():
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    repos = {values[k]["image"]["repository"] for k in ("operator", "worker", "redis")}
    assert repos == {f"ghcr.io/workpool-dev/workpool-{n}" for n in ("operator", "worker", "redis")}
    for n in ("operator", "worker", "redis"):
        assert f"ghcr.io/workpool-dev/workpool-{n}:0.1.0" in (IMAGES / f"{n}.Dockerfile").read_text()
