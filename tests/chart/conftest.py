"""Shared helpers of the chart tests: render the chart with the real Helm library
(helm-python-sdk, Helm v4), find tools, and skip or fail when something is missing.

With CI=true a missing component (a Python package, promtool, prometheus, redis-server,
the workpool-worker binary, crds/workpool.yaml) fails the test instead of skipping it.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "workpool"
RELEASE = "wp"
NAMESPACE = "workpool-system"
CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

# Kubernetes versions the manifests must be valid for: the test cluster's (tests/k8s
# pins v1.37.2) and the kind quickstart's (tests/kind: v1.32).
KUBE_VERSIONS = ("1.37.0", "1.32.0")

sys.path.insert(0, str(Path(__file__).resolve().parent))


def missing(what: str, how: str = "scripts/chart-test.sh installs it") -> None:
    """Skip (locally) or fail (CI=true): a component the test needs is not there."""
    msg = f"{what} ({how})"
    if CI:
        pytest.fail(f"CI=true and {msg}")
    pytest.skip(msg)


def need_tool(name: str) -> str:
    path = shutil.which(name)
    if not path:
        missing(f"`{name}` is not installed")
    return path  # type: ignore[return-value]


def helm():
    try:
        import helm_python
    except ImportError:
        missing("the Python package helm-python-sdk is not installed")
    return helm_python


@dataclass
class Doc:
    template: str  # e.g. workpool/templates/redis.yaml
    obj: dict[str, Any]

    @property
    def kind(self) -> str:
        return self.obj.get("kind", "")

    @property
    def name(self) -> str:
        return self.obj.get("metadata", {}).get("name", "")

    @property
    def hook(self) -> str | None:
        return (self.obj.get("metadata", {}).get("annotations") or {}).get("helm.sh/hook")


class Rendered(list):
    """The documents of one render, in template order."""

    notes: str = ""

    def of(self, kind: str) -> list[Doc]:
        return [d for d in self if d.kind == kind]

    def one(self, kind: str, name_suffix: str = "") -> Doc:
        docs = [d for d in self.of(kind) if d.name.endswith(name_suffix)]
        assert len(docs) == 1, f"expected one {kind} named *{name_suffix}, got {[d.name for d in docs]}"
        return docs[0]

    def kinds(self) -> set[str]:
        return {d.kind for d in self}


_CACHE: dict[str, Rendered] = {}


def render(values: dict[str, Any] | None = None, *, name: str = RELEASE, namespace: str = NAMESPACE,
           fresh: bool = False) -> Rendered:
    """Renders the chart offline (lookup returns nothing) with the real Helm engine.
    Schema violations and `fail` calls raise helm_python.HelmError. Renders are cached by
    their inputs (tests must not modify the result); fresh=True renders anew (the
    generated Redis password differs per render)."""
    key = json.dumps([values, name, namespace], sort_keys=True)
    if not fresh and key in _CACHE:
        return copy.deepcopy(_CACHE[key])
    docs = _render(values, name, namespace)
    _CACHE[key] = docs
    return copy.deepcopy(docs)


def _render(values: dict[str, Any] | None, name: str, namespace: str) -> Rendered:
    h = helm()
    with h.Chart.load(str(CHART)) as chart:
        out = chart.render(values or {}, name=name, namespace=namespace, is_install=True)
    docs = Rendered()
    for template, text in sorted(out.items()):
        if template.endswith("NOTES.txt"):
            docs.notes = text
            continue
        for obj in yaml.safe_load_all(text):
            if obj:
                docs.append(Doc(template, obj))
    return docs


# The values matrix every structural test runs over: each entry is something a user
# does. Keys are test ids.
MATRIX: dict[str, dict[str, Any]] = {
    "defaults": {},
    "ha-operator": {"operator": {"replicas": 3}},
    "leader-election-one-replica": {"operator": {"leaderElection": {"enabled": True}}},
    "monitoring-on": {
        "metrics": {
            "serviceMonitor": {"enabled": True, "additionalLabels": {"release": "kube-prometheus-stack"}},
            "podMonitor": {"enabled": True, "additionalLabels": {"release": "kube-prometheus-stack"},
                           "namespaces": ["jobs", "batch"]},
            "prometheusRule": {"enabled": True, "additionalLabels": {"release": "kube-prometheus-stack"},
                               "namespace": "monitoring"},
        },
        "dashboards": {"namespace": "monitoring", "annotations": {"grafana_folder": "workpool"}},
    },
    "external-redis-url": {"redis": {"enabled": False}, "externalRedis": {"url": "redis://redis.data.svc:6379/0"}},
    "external-redis-secret": {
        "redis": {"enabled": False},
        "externalRedis": {"existingSecret": {"name": "queue-redis", "key": "url"}},
    },
    "no-redis-no-tests": {"redis": {"enabled": False}, "tests": {"enabled": False}},
    "redis-ephemeral": {"redis": {"persistence": {"enabled": False}, "maxmemory": "256mb", "appendfsync": "always"}},
    "redis-network-policy": {"redis": {"networkPolicy": {"enabled": True, "extraFrom": [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "shop"}}}]}}},
    "redis-tuned": {
        "redis": {
            "auth": {"password": "s3cret-Pass_word"},
            "persistence": {"storageClass": "fast", "size": "20Gi", "retainOnUninstall": True},
        }
    },
    "redis-ha": {"redis": {"ha": {"enabled": True}}},
    "redis-ha-five-hard": {"redis": {"ha": {"enabled": True, "replicas": 5, "antiAffinity": "hard",
                                            "sentinel": {"replicas": 5, "quorum": 3}},
                                     "networkPolicy": {"enabled": True}}},
    "watch-one-namespace": {"operator": {"watchNamespace": "jobs"}, "tests": {"enabled": False}},
    "crds-off": {"crds": {"install": False}},
    "crds-not-kept": {"crds": {"keep": False}},
    "minimal": {
        "metrics": {"service": {"enabled": False}},
        "dashboards": {"enabled": False},
        "tests": {"enabled": False},
        "redis": {"enabled": False},
    },
    "pinned-digests": {
        "operator": {"image": {"digest": "sha256:" + "a" * 64}},
        "worker": {"image": {"tag": "0.2.0"}},
        "redis": {"image": {"repository": "registry.local/redis", "tag": "7.2"}},
    },
    "existing-service-account": {
        "serviceAccount": {"create": False, "name": "platform-operator"},
        "rbac": {"create": False},
    },
    "scheduling": {
        "fullnameOverride": "pools",
        "commonLabels": {"team": "platform"},
        "operator": {
            "nodeSelector": {"kubernetes.io/os": "linux"},
            "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "ops", "effect": "NoSchedule"}],
            "priorityClassName": "system-cluster-critical",
            "extraEnv": [{"name": "WORKPOOL_EXTRA", "value": "1"}],
            "extraArgs": ["--some-flag"],
            "podAnnotations": {"example.com/a": "b"},
            "logFormat": "text",
            "logLevel": "debug",
        },
    },
}


@pytest.fixture(scope="session")
def rendered_matrix() -> dict[str, Rendered]:
    return {key: render(values) for key, values in MATRIX.items()}


def pod_specs(docs: Rendered) -> list[tuple[str, dict[str, Any]]]:
    """Every pod spec in a render: Deployments, StatefulSets, Pods, and the pod templates
    of WorkPools (which the operator turns into pods)."""
    out = []
    for d in docs:
        if d.kind in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
            out.append((f"{d.kind}/{d.name}", d.obj["spec"]["template"]["spec"]))
        elif d.kind == "Pod":
            out.append((f"Pod/{d.name}", d.obj["spec"]))
        elif d.kind == "WorkPool":
            out.append((f"WorkPool/{d.name}", d.obj["spec"]["template"]["spec"]))
    return out


def load_yaml_docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


# --- the real test cluster ---------------------------------------------------------------
# scripts/chart-test.sh starts it (workpool-testcluster: real control plane and node) and
# exports its kubeconfig as WORKPOOL_CHART_KUBECONFIG; when it could not start, it says why
# in WORKPOOL_CHART_CLUSTER_ERROR.
CLUSTER_KUBECONFIG = os.environ.get("WORKPOOL_CHART_KUBECONFIG")
CHART_NAMESPACE = "workpool-chart-e2e"


def need_cluster() -> str:
    if not CLUSTER_KUBECONFIG:
        why = os.environ.get("WORKPOOL_CHART_CLUSTER_ERROR") or "WORKPOOL_CHART_KUBECONFIG is not set"
        missing(f"no test cluster to install the chart into: {why}",
                "scripts/chart-test.sh starts one: needs root and `make deps`")
    assert os.path.isabs(CLUSTER_KUBECONFIG), "WORKPOOL_CHART_KUBECONFIG must be an absolute path"
    return CLUSTER_KUBECONFIG  # type: ignore[return-value]


@pytest.fixture(scope="session")
def install_report():
    """One install -> examples -> dashboards with data -> helm test -> upgrade -> helm test
    -> uninstall cycle of the chart with default values on the real test cluster. A
    failure of the examples or dashboards part is recorded (the tests of those parts
    fail on it) and the cycle goes on."""
    kubeconfig = need_cluster()
    from install import install_cycle
    import incluster

    def during(k, rep):
        for name, part in (("examples", lambda: incluster.examples(k, rep, CHART_NAMESPACE, "workpool")),
                           ("dashboards",
                            lambda: incluster.dashboards(k, rep, kubeconfig, CHART_NAMESPACE, "workpool"))):
            try:
                part()
            except pytest.skip.Exception as e:  # a missing component: the part's tests skip (or fail in CI)
                rep.found[f"{name}_missing"] = str(e)
                rep.step(f"{name} not run: {e}")
            except (Exception, pytest.fail.Exception) as e:  # noqa: BLE001 - the part's own tests report it
                import traceback

                rep.found[f"{name}_error"] = "".join(traceback.format_exception(e))
                rep.step(f"{name} FAILED: {e}")

    return install_cycle(kubeconfig, namespace=CHART_NAMESPACE, while_installed=during)
