"""The chart installed for real: install -> wait -> helm test -> upgrade -> helm test ->
uninstall -> the Redis PVCs kept (redis.persistence.retainOnUninstall, the default: the
task data outlives the release), then deleted by the test -> nothing left but the CRD.
Driven by test_install.py against the cluster
named by WORKPOOL_CHART_KUBECONFIG; usable on its own too:

    python3 tests/chart/install.py --kubeconfig /path/to/kubeconfig [--namespace workpool-e2e]

Everything goes through the real Helm library (helm-python-sdk) and kubectl; the
namespace enforces the `restricted` Pod Security Standard, so a pod the chart renders
that the apiserver would refuse fails the install.
"""

from __future__ import annotations

import argparse
import base64
import json
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))

from conftest import CHART, helm  # noqa: E402

RELEASE_LABEL = "app.kubernetes.io/instance"
# namespaced kinds the chart creates (and helm test creates), checked after uninstall
NAMESPACED = "deployments,statefulsets,pods,services,configmaps,secrets,serviceaccounts,roles,rolebindings," \
             "poddisruptionbudgets,persistentvolumeclaims,workpools.workpool.dev"
CLUSTER = "clusterroles,clusterrolebindings"


@dataclass
class Report:
    steps: list[str] = field(default_factory=list)
    test_logs: list[str] = field(default_factory=list)
    # what while_installed found, by name
    found: dict[str, Any] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)

    def step(self, msg: str) -> None:
        line = f"{time.strftime('%H:%M:%S')} +{time.monotonic() - self.started:.0f}s {msg}"
        self.steps.append(line)
        print(f"install: {line}", file=sys.stderr, flush=True)


class Kubectl:
    def __init__(self, kubeconfig: str) -> None:
        self.kubeconfig = kubeconfig

    def __call__(self, *args: str, input: str | None = None, check: bool = True, timeout: int = 120) -> str:
        r = subprocess.run(["kubectl", f"--kubeconfig={self.kubeconfig}", *args], input=input,
                           capture_output=True, text=True, timeout=timeout)
        if check and r.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)}: {r.stderr.strip()}")
        return r.stdout

    def json(self, *args: str) -> Any:
        return json.loads(self(*args, "-o", "json"))


def restricted_namespace(k: Kubectl, namespace: str) -> None:
    k("apply", "-f", "-", input=json.dumps({
        "apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": namespace, "labels": {
            "pod-security.kubernetes.io/enforce": "restricted",
            "pod-security.kubernetes.io/enforce-version": "latest",
            "pod-security.kubernetes.io/warn": "restricted",
        }},
    }))


def redis_password(k: Kubectl, namespace: str, release: str) -> str | None:
    secrets = k.json("-n", namespace, "get", "secrets", "-l", f"{RELEASE_LABEL}={release},app.kubernetes.io/component=redis")
    for s in secrets["items"]:
        if "redis-password" in (s.get("data") or {}):
            return base64.b64decode(s["data"]["redis-password"]).decode()
    return None


def component_name(k: Kubectl, namespace: str, kind: str, release: str, component: str) -> str:
    sel = f"{RELEASE_LABEL}={release},app.kubernetes.io/component={component}"
    items = k.json("-n", namespace, "get", kind, "-l", sel)["items"]
    assert len(items) == 1, f"expected one {kind} {sel}, found {[i['metadata']['name'] for i in items]}"
    return items[0]["metadata"]["name"]


def rollout(k: Kubectl, namespace: str, kind: str, release: str, component: str, timeout: int) -> None:
    name = component_name(k, namespace, kind, release, component)
    k("-n", namespace, "rollout", "status", f"{kind}/{name}", f"--timeout={timeout}s", timeout=timeout + 30)


def leftovers(k: Kubectl, namespace: str, release: str) -> list[str]:
    sel = f"{RELEASE_LABEL}={release}"
    items = k.json("-n", namespace, "get", NAMESPACED, "-l", sel)["items"]
    items += k.json("get", CLUSTER, "-l", sel)["items"]
    # PVCs of a StatefulSet carry only its selector labels; the release's are named data-<release>-...
    pvcs = k.json("-n", namespace, "get", "persistentvolumeclaims")["items"]
    items += [p for p in pvcs if release in p["metadata"]["name"]]
    return sorted({f"{i['kind']}/{i['metadata']['name']}" for i in items})


def install_cycle(kubeconfig: str, namespace: str = "workpool-chart-e2e", release: str = "workpool",
                  values: dict[str, Any] | None = None, upgrade_values: dict[str, Any] | None = None,
                  timeout: int = 300,
                  while_installed: Callable[[Kubectl, Report], None] | None = None) -> Report:
    """Raises on the first failing step; the report says how far it got. while_installed
    runs once the operator and Redis are rolled out, before `helm test` (the examples and
    the dashboards' data use the installed release)."""
    h = helm()
    k = Kubectl(kubeconfig)
    rep = Report()
    restricted_namespace(k, namespace)
    rep.step(f"namespace {namespace} enforces restricted")
    with h.Config(kubeconfig_path=kubeconfig, namespace=namespace) as cfg:
        cfg.check_reachable()
        with h.Chart.load(str(CHART)) as chart:
            try:
                rel = cfg.install(chart, release, values or {}, namespace=namespace, wait="watcher", timeout=timeout)
                rep.step(f"installed revision {rel.get('version')}: {rel.get('info', {}).get('status')}")
                rollout(k, namespace, "deployment", release, "operator", timeout)
                redis_values = (values or {}).get("redis", {})
                if redis_values.get("enabled", True):
                    rollout(k, namespace, "statefulset", release, "redis", timeout)
                    if redis_values.get("ha", {}).get("enabled", False):
                        rollout(k, namespace, "statefulset", release, "redis-sentinel", timeout)
                rep.step("operator and redis rolled out")
                if while_installed is not None:
                    while_installed(k, rep)
                password = redis_password(k, namespace, release)

                res = cfg.test(release, timeout=timeout, logs=True)
                rep.test_logs.append(res.get("logs", ""))
                rep.step("helm test passed")

                upgraded = {**(values or {}), **(upgrade_values or {"operator": {"logLevel": "debug"}})}
                rel = cfg.upgrade(chart, release, upgraded, namespace=namespace, wait="watcher", timeout=timeout)
                rep.step(f"upgraded to revision {rel.get('version')}")
                rollout(k, namespace, "deployment", release, "operator", timeout)
                if password is not None:
                    assert redis_password(k, namespace, release) == password, "the Redis password changed on upgrade"
                    rep.step("the generated Redis password survived the upgrade")
                res = cfg.test(release, timeout=timeout, logs=True)
                rep.test_logs.append(res.get("logs", ""))
                rep.step("helm test passed after the upgrade")
            finally:
                cfg.uninstall(release, wait="watcher", timeout=timeout, ignore_not_found=True)
                rep.step("uninstalled")
    redis_values = (values or {}).get("redis", {})
    persistence = redis_values.get("persistence", {})
    retained = (redis_values.get("enabled", True) and persistence.get("enabled", True)
                and persistence.get("retainOnUninstall", True))
    left = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        left = leftovers(k, namespace, release)
        if retained:
            left = [x for x in left if not x.startswith("PersistentVolumeClaim/")]
        if not left:
            break
        time.sleep(2)
    assert not left, f"left behind after helm uninstall: {left}"
    if retained:
        pvcs = [p["metadata"]["name"] for p in k.json("-n", namespace, "get", "persistentvolumeclaims")["items"]
                if release in p["metadata"]["name"]]
        assert pvcs, "retainOnUninstall: the Redis PVCs (the queued tasks) outlive the release"
        rep.step(f"the Redis PVCs were kept: {', '.join(sorted(pvcs))}")
        k("-n", namespace, "delete", "persistentvolumeclaims", *pvcs, "--wait=true", timeout=timeout)
        left = leftovers(k, namespace, release)
        assert not left, f"left behind after deleting the kept PVCs: {left}"
    crd = k.json("get", "crd", "workpools.workpool.dev")
    assert crd["metadata"]["annotations"].get("helm.sh/resource-policy") == "keep"
    rep.step("nothing left but the CRD (kept)")
    return rep


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kubeconfig", required=True)
    ap.add_argument("--namespace", default="workpool-chart-e2e")
    ap.add_argument("--release", default="workpool")
    ap.add_argument("--timeout", type=int, default=300)
    a = ap.parse_args()
    rep = install_cycle(a.kubeconfig, a.namespace, a.release, timeout=a.timeout)
    print("\n".join(rep.steps))
    return 0


if __name__ == "__main__":
    sys.exit(main())
