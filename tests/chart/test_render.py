"""The chart renders, lints and validates over the values matrix (conftest.MATRIX)."""

from __future__ import annotations

import base64
import json
import re

import pytest

from checks import kube_validate, rbac_wildcards, restricted_pss, validate_workpool
from conftest import CHART, KUBE_VERSIONS, MATRIX, NAMESPACE, RELEASE, helm, pod_specs, render

MONITORING_KINDS = {"ServiceMonitor", "PodMonitor", "PrometheusRule"}


def test_lint_strict_defaults():
    h = helm()
    for kube in KUBE_VERSIONS:
        report = h.lint(str(CHART), strict=True, kube_version=f"v{kube}", namespace=NAMESPACE)
        bad = [m for m in report["messages"] if m["severity"] >= 2] + report["errors"]
        assert not bad, f"helm lint --strict (kube {kube}): {bad}"
        assert report["total_charts_linted"] == 1


@pytest.mark.parametrize("key", MATRIX)
def test_lint_strict_matrix(key):
    h = helm()
    report = h.lint(str(CHART), MATRIX[key], strict=True, kube_version=f"v{KUBE_VERSIONS[0]}", namespace=NAMESPACE)
    bad = [m for m in report["messages"] if m["severity"] >= 2] + report["errors"]
    assert not bad, f"helm lint --strict with {key}: {bad}"


@pytest.mark.parametrize("key", MATRIX)
def test_every_manifest_validates(key, rendered_matrix):
    """kubernetes-validate --strict against each Kubernetes version; WorkPools against the
    CRD's schema; prometheus-operator kinds (no schema here) structurally below."""
    docs = rendered_matrix[key]
    assert docs, "nothing rendered"
    problems = []
    for kube in KUBE_VERSIONS:
        for d in docs:
            if d.kind == "WorkPool":
                problems += validate_workpool(d.obj, kube)
            elif d.kind in MONITORING_KINDS:
                continue
            else:
                found = kube_validate(d.obj, kube)
                if found == ["no schema"]:
                    problems.append(f"{d.kind}/{d.name}: kubernetes-validate has no schema for it")
                else:
                    problems += [f"[{kube}] {x}" for x in found]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("key", MATRIX)
def test_names_and_namespaces(key, rendered_matrix):
    docs = rendered_matrix[key]
    seen = set()
    for d in docs:
        name = d.name
        assert name and len(name) <= 63 and re.fullmatch(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?", name), name
        ident = (d.kind, d.obj["metadata"].get("namespace"), name)
        assert ident not in seen, f"two objects {ident}"
        seen.add(ident)
        cluster_scoped = d.kind in ("ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition")
        assert ("namespace" in d.obj["metadata"]) != cluster_scoped, f"{d.kind}/{name}: namespace field"
        labels = d.obj["metadata"].get("labels") or {}
        assert labels.get("app.kubernetes.io/managed-by") == "Helm", f"{d.kind}/{name} lacks the chart labels"


@pytest.mark.parametrize("key", MATRIX)
def test_pods_satisfy_restricted_pod_security(key, rendered_matrix):
    problems = []
    for where, spec in pod_specs(rendered_matrix[key]):
        problems += restricted_pss(where, spec)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("key", MATRIX)
def test_no_rbac_wildcards(key, rendered_matrix):
    problems = [p for d in rendered_matrix[key] for p in rbac_wildcards(d.obj)]
    assert not problems, "\n".join(problems)


def _rules(doc):
    return {(g, r, v) for rule in doc.obj["rules"] for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}


def test_cluster_role_is_exactly_what_the_operator_needs():
    docs = render()
    cr = docs.one("ClusterRole")
    expected = {("workpool.dev", "workpools", v) for v in ("get", "list", "watch", "patch", "update")}
    expected |= {("workpool.dev", "workpools/status", v) for v in ("get", "patch", "update")}
    expected |= {("workpool.dev", "workpools/finalizers", "update")}
    expected |= {("", "pods", v) for v in ("get", "list", "watch", "create", "delete", "patch")}
    expected |= {("", "secrets", "get")}
    expected |= {("events.k8s.io", "events", v) for v in ("create", "patch")}
    expected |= {("apiextensions.k8s.io", "customresourcedefinitions", "get")}
    assert _rules(cr) == expected
    crd_rule = next(r for r in cr.obj["rules"] if r["resources"] == ["customresourcedefinitions"])
    assert crd_rule["resourceNames"] == ["workpools.workpool.dev"]
    binding = docs.one("ClusterRoleBinding")
    sa = docs.one("ServiceAccount", "-operator")
    assert binding.obj["roleRef"]["name"] == cr.name
    assert binding.obj["subjects"] == [{"kind": "ServiceAccount", "name": sa.name, "namespace": NAMESPACE}]


def test_watching_one_namespace_narrows_rbac_to_it():
    docs = render(MATRIX["watch-one-namespace"])
    cr = docs.one("ClusterRole")
    assert _rules(cr) == {("apiextensions.k8s.io", "customresourcedefinitions", "get")}, (
        "only the CRD check stays cluster-wide"
    )
    role = next(d for d in docs.of("Role") if d.obj["metadata"]["namespace"] == "jobs")
    assert _rules(role) == _rules(render().one("ClusterRole")) - _rules(cr)
    rb = next(d for d in docs.of("RoleBinding") if d.obj["metadata"]["namespace"] == "jobs")
    assert rb.obj["roleRef"]["name"] == role.name and rb.obj["roleRef"]["kind"] == "Role"
    assert rb.obj["subjects"][0]["namespace"] == NAMESPACE
    env = {e["name"]: e.get("value") for e in docs.one("Deployment").obj["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["WORKPOOL_WATCH_NAMESPACE"] == "jobs"
    assert "WORKPOOL_WATCH_NAMESPACE" not in {
        e["name"] for e in render().one("Deployment").obj["spec"]["template"]["spec"]["containers"][0]["env"]}


def test_leader_election_follows_replicas():
    single = render()
    dep = single.one("Deployment").obj
    env = {e["name"]: e for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["WORKPOOL_LEADER_ELECT"]["value"] == "false"
    assert dep["spec"]["strategy"]["type"] == "Recreate", "one operator without election must never overlap another"
    assert "WORKPOOL_LEASE_NAMESPACE" not in env
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert not single.of("Role") and not single.of("RoleBinding") and not single.of("PodDisruptionBudget")

    for values in (MATRIX["ha-operator"], MATRIX["leader-election-one-replica"]):
        docs = render(values)
        dep = docs.one("Deployment").obj
        env = {e["name"]: e for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}
        assert env["WORKPOOL_LEADER_ELECT"]["value"] == "true"
        assert env["WORKPOOL_LEASE_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
        assert env["WORKPOOL_LEASE_NAME"]["value"] == dep["metadata"]["name"]
        assert dep["spec"]["strategy"]["type"] == "RollingUpdate"
        role = docs.one("Role")
        assert role.obj["metadata"]["namespace"] == NAMESPACE
        assert _rules(role) == {("coordination.k8s.io", "leases", v) for v in ("get", "create", "update", "patch")}
        rb = docs.one("RoleBinding")
        assert rb.obj["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role.name}
    assert render(MATRIX["ha-operator"]).one("PodDisruptionBudget").obj["spec"]["minAvailable"] == 1
    assert not render(MATRIX["leader-election-one-replica"]).of("PodDisruptionBudget")


def test_operator_deployment():
    docs = render()
    dep = docs.one("Deployment").obj
    pod = dep["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["image"] == "ghcr.io/workpool-dev/workpool-operator:0.1.0"
    assert c["imagePullPolicy"] == "IfNotPresent"
    assert c["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert c["startupProbe"]["httpGet"]["path"] == "/healthz"
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["RUST_LOG"] == "info" and env["WORKPOOL_LOG_FORMAT"] == "json"
    assert env["WORKPOOL_OPERATOR_METRICS_ADDR"] == "0.0.0.0:8080", "the probes and the Service use port 8080"
    assert pod["serviceAccountName"] == docs.one("ServiceAccount", "-operator").name
    assert pod["securityContext"]["runAsUser"] == 65532
    # the selector selects the pod template, and the metrics Service selects the pods
    sel = dep["spec"]["selector"]["matchLabels"]
    labels = dep["spec"]["template"]["metadata"]["labels"]
    assert sel.items() <= labels.items()
    svc = docs.one("Service", "-operator-metrics").obj
    assert svc["spec"]["selector"].items() <= labels.items()
    assert svc["spec"]["ports"][0]["targetPort"] == "http"
    # values reach the container
    docs = render(MATRIX["scheduling"])
    dep = docs.one("Deployment").obj
    c = dep["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["RUST_LOG"] == "debug" and env["WORKPOOL_LOG_FORMAT"] == "text" and env["WORKPOOL_EXTRA"] == "1"
    assert c["args"] == ["--some-flag"]
    assert dep["metadata"]["name"] == "pools-operator"
    assert dep["metadata"]["labels"]["team"] == "platform"


def test_image_references_follow_values():
    docs = render(MATRIX["pinned-digests"])
    assert docs.one("Deployment").obj["spec"]["template"]["spec"]["containers"][0]["image"] == (
        "ghcr.io/workpool-dev/workpool-operator@sha256:" + "a" * 64
    )
    assert docs.one("StatefulSet").obj["spec"]["template"]["spec"]["containers"][0]["image"] == "registry.local/redis:7.2"
    assert docs.one("Pod").obj["spec"]["containers"][0]["image"] == "ghcr.io/workpool-dev/workpool-worker:0.2.0"
    defaults = render()
    images = {c["image"] for _, spec in pod_specs(defaults) for c in spec["containers"]}
    assert images == {
        "ghcr.io/workpool-dev/workpool-operator:0.1.0",
        "ghcr.io/workpool-dev/workpool-worker:0.1.0",
        "ghcr.io/workpool-dev/workpool-redis:0.1.0",
    }
    pulls = {c["imagePullPolicy"] for _, spec in pod_specs(defaults) for c in spec["containers"]}
    assert pulls == {"IfNotPresent"}


def test_existing_service_account_and_no_rbac():
    docs = render(MATRIX["existing-service-account"])
    assert not docs.of("ServiceAccount") or all(d.hook for d in docs.of("ServiceAccount"))
    assert not docs.kinds() & {"ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"}
    assert docs.one("Deployment").obj["spec"]["template"]["spec"]["serviceAccountName"] == "platform-operator"


def test_monitoring_objects():
    assert not render().kinds() & MONITORING_KINDS, "monitoring objects must be off by default"
    docs = render(MATRIX["monitoring-on"])
    sm = docs.one("ServiceMonitor").obj
    assert sm["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    svc = docs.one("Service", "-operator-metrics").obj
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    assert sm["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    assert sm["spec"]["endpoints"][0]["port"] == svc["spec"]["ports"][0]["name"]
    assert sm["spec"]["endpoints"][0]["path"] == "/metrics"
    assert sm["spec"]["endpoints"][0]["honorLabels"] is True, "the operator's namespace/workpool labels must win"

    pm = docs.one("PodMonitor").obj
    assert pm["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert pm["spec"]["selector"] == {"matchExpressions": [{"key": "workpool.dev/pool", "operator": "Exists"}]}
    assert pm["spec"]["namespaceSelector"] == {"matchNames": ["jobs", "batch"]}
    ep = pm["spec"]["podMetricsEndpoints"][0]
    assert ep["port"] == "metrics" and ep["path"] == "/metrics"
    assert {"sourceLabels": ["__meta_kubernetes_pod_label_workpool_dev_pool"], "targetLabel": "workpool",
            "action": "replace"} in ep["relabelings"]

    pr = docs.one("PrometheusRule").obj
    assert pr["metadata"]["namespace"] == "monitoring"
    assert pr["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    # every monitoring object's interval/timeout is a Prometheus duration
    for d in (sm["spec"]["endpoints"][0], ep):
        assert re.fullmatch(r"\d+[smh]", d["interval"]) and re.fullmatch(r"\d+[smh]", d["scrapeTimeout"])


def test_service_monitor_needs_the_service():
    h = helm()
    with pytest.raises(h.HelmError, match="metrics.serviceMonitor.enabled needs metrics.service.enabled"):
        render({"metrics": {"service": {"enabled": False}, "serviceMonitor": {"enabled": True}}})


def _secret_data(doc):
    return {k: base64.b64decode(v).decode() for k, v in doc.obj["data"].items()}


def test_bundled_redis():
    docs = render()
    sts = docs.one("StatefulSet").obj
    secret = docs.one("Secret", "-redis")
    data = _secret_data(secret)
    password = data["redis-password"]
    assert re.fullmatch(r"[A-Za-z0-9]{32}", password), "a generated 32-character password"
    svc = docs.one("Service", "-redis").obj
    assert data["redis-url"] == f"redis://:{password}@{svc['metadata']['name']}.{NAMESPACE}.svc:6379/0"
    assert data["auth.conf"] == f"requirepass {password}\nmasterauth {password}\n"
    # two renders (two installs) get different passwords; lookup keeps it on upgrades
    assert _secret_data(render(fresh=True).one("Secret", "-redis"))["redis-password"] != password
    pod = sts["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["command"] == ["redis-server", "/etc/redis/redis.conf"], "the password is never on the command line"
    assert all(password not in str(e) for e in c.get("env", []))
    conf = docs.one("ConfigMap", "-redis").obj["data"]["redis.conf"]
    assert "maxmemory-policy noeviction" in conf and "appendonly yes" in conf
    assert "include /etc/redis/secret/auth.conf" in conf
    assert "requirepass" not in conf.replace("include", "")
    mounts = {m["mountPath"] for m in c["volumeMounts"]}
    assert {"/data", "/etc/redis/redis.conf", "/etc/redis/secret"} <= mounts
    assert svc["spec"]["selector"].items() <= sts["spec"]["template"]["metadata"]["labels"].items()
    assert sts["spec"]["serviceName"] == docs.one("Service", "-redis-headless").name
    (pvc,) = sts["spec"]["volumeClaimTemplates"]
    assert pvc["spec"]["resources"]["requests"]["storage"] == "1Gi"
    assert "storageClassName" not in pvc["spec"], "the cluster's default StorageClass"
    assert sts["spec"]["persistentVolumeClaimRetentionPolicy"]["whenDeleted"] == "Retain", (
        "helm uninstall keeps the queued tasks by default (retainOnUninstall)"
    )
    assert "helm uninstall keeps the Redis PersistentVolumeClaims" in docs.notes
    deleting = render({"redis": {"persistence": {"retainOnUninstall": False}}}).one("StatefulSet").obj
    assert deleting["spec"]["persistentVolumeClaimRetentionPolicy"]["whenDeleted"] == "Delete"
    assert "data" not in {v["name"] for v in pod["volumes"]}


def test_bundled_redis_values():
    docs = render(MATRIX["redis-tuned"])
    data = _secret_data(docs.one("Secret", "-redis"))
    assert data["redis-password"] == "s3cret-Pass_word" and ":s3cret-Pass_word@" in data["redis-url"]
    sts = docs.one("StatefulSet").obj
    pvc = sts["spec"]["volumeClaimTemplates"][0]["spec"]
    assert pvc["storageClassName"] == "fast" and pvc["resources"]["requests"]["storage"] == "20Gi"
    assert sts["spec"]["persistentVolumeClaimRetentionPolicy"]["whenDeleted"] == "Retain"

    docs = render(MATRIX["redis-ephemeral"])
    sts = docs.one("StatefulSet").obj
    assert "volumeClaimTemplates" not in sts["spec"]
    assert {"name": "data", "emptyDir": {}} in sts["spec"]["template"]["spec"]["volumes"]
    conf = docs.one("ConfigMap", "-redis").obj["data"]["redis.conf"]
    assert "maxmemory 256mb" in conf and "appendfsync always" in conf
    assert "persistence.enabled is false" in docs.notes

    # the password checksum restarts Redis when the password changes
    a = render(MATRIX["redis-tuned"]).one("StatefulSet").obj["spec"]["template"]["metadata"]["annotations"]
    b = render({"redis": {"auth": {"password": "other"}}}).one("StatefulSet").obj["spec"]["template"]["metadata"]["annotations"]
    assert a["checksum/config"] != b["checksum/config"]
    assert "s3cret" not in a["checksum/config"]


def _matches(selector, labels):
    ok = all(labels.get(k) == v for k, v in (selector.get("matchLabels") or {}).items())
    for e in selector.get("matchExpressions") or []:
        if e["operator"] == "In":
            ok &= labels.get(e["key"]) in e["values"]
        else:
            ok &= (e["key"] in labels) == (e["operator"] == "Exists")
    return ok


def test_redis_network_policy():
    assert not render().of("NetworkPolicy"), "off by default: producers must be listed first"
    docs = render(MATRIX["redis-network-policy"])
    np = docs.one("NetworkPolicy").obj
    sts = docs.one("StatefulSet").obj
    assert _matches(np["spec"]["podSelector"], sts["spec"]["template"]["metadata"]["labels"])
    (rule,) = np["spec"]["ingress"]
    assert rule["ports"] == [{"port": 6379, "protocol": "TCP"}]
    peers = rule["from"]
    operator_labels = docs.one("Deployment").obj["spec"]["template"]["metadata"]["labels"]
    test_pod_labels = docs.one("Pod").obj["metadata"]["labels"]
    worker_labels = {"workpool.dev/pool": "thumbs", "app.kubernetes.io/component": "worker"}
    for who, labels in (("operator", operator_labels), ("helm test", test_pod_labels), ("a worker", worker_labels)):
        assert any(_matches(p.get("podSelector", {}), labels) for p in peers), f"{who} cannot reach Redis"
    assert not any(_matches(p.get("podSelector", {}), {"app": "random"}) for p in peers if "podSelector" in p)
    worker_peer = next(p for p in peers if "namespaceSelector" in p and "podSelector" in p)
    assert worker_peer["namespaceSelector"] == {}, "workers of any namespace"
    assert {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "shop"}}} in peers


def test_bundled_redis_ha():
    docs = render(MATRIX["redis-ha"])
    data = _secret_data(docs.one("Secret", "-redis"))
    password = data["redis-password"]
    headless = f"{RELEASE}-workpool-redis-sentinel-headless.{NAMESPACE}.svc"
    sentinels = ",".join(f"{RELEASE}-workpool-redis-sentinel-{i}.{headless}:26379" for i in range(3))
    assert data["redis-url"] == f"redis+sentinel://:{password}@{sentinels}/workpool/0?sentinel_password={password}"
    assert data["auth.conf"] == f"requirepass {password}\nmasterauth {password}\n"
    redis = docs.one("StatefulSet", "-redis").obj
    sentinel = docs.one("StatefulSet", "-redis-sentinel").obj
    assert redis["spec"]["replicas"] == 3 and sentinel["spec"]["replicas"] == 3
    assert redis["spec"]["podManagementPolicy"] == "Parallel"
    (c, follower) = redis["spec"]["template"]["spec"]["containers"]
    assert c["command"] == ["sh", "/etc/redis/start-redis.sh"]
    # beside each Redis pod, the follower keeps it attached to the sentinels' primary
    assert follower["command"] == ["sh", "/etc/redis/start-redis.sh", "follow"]
    assert {e["name"]: e.get("value") for e in follower["env"]}["FOLLOW_PERIOD"] == "10"
    for container in (c, follower):
        env = {e["name"]: e for e in container["env"]}
        assert env["REDISCLI_AUTH"]["valueFrom"]["secretKeyRef"]["key"] == "redis-password", "the password by reference"
        assert all(password not in json.dumps(e) for e in container["env"])
    (sc,) = sentinel["spec"]["template"]["spec"]["containers"]
    assert sc["command"] == ["sh", "/etc/redis/start-sentinel.sh"]
    assert {"SENTINELS", "QUORUM", "MASTER_NAME", "DOWN_AFTER"} <= {e["name"] for e in sc["env"]}
    conf = docs.one("ConfigMap", "-redis").obj["data"]
    assert "appendonly yes" in conf["redis.conf"]
    assert "replicaof $master 6379" in conf["start-redis.sh"]
    assert "sentinel monitor $MASTER_NAME $master 6379 $QUORUM" in conf["start-sentinel.sh"]
    assert "sentinel announce-hostnames yes" in conf["start-sentinel.sh"]
    # spread over nodes, softly by default; hard on request
    aff = redis["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]
    assert "preferredDuringSchedulingIgnoredDuringExecution" in aff
    hard = render({"redis": {"ha": {"enabled": True, "antiAffinity": "hard"}}})
    for sts in hard.of("StatefulSet"):
        assert "requiredDuringSchedulingIgnoredDuringExecution" in sts.obj["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]
    # no ClusterIP Service that would send writes to a replica; PDBs; the sentinels' headless Service
    assert not [d for d in docs.of("Service") if d.name == f"{RELEASE}-workpool-redis"]
    assert {d.name for d in docs.of("PodDisruptionBudget")} == {f"{RELEASE}-workpool-redis", f"{RELEASE}-workpool-redis-sentinel"}
    assert docs.one("Service", "-redis-sentinel-headless").obj["spec"]["clusterIP"] == "None"
    assert "runs in HA mode" in docs.notes and "--min-replicas 1" in docs.notes
    # a quorum no majority can reach is refused at install
    h = helm()
    with pytest.raises(h.HelmError, match="quorum"):
        render({"redis": {"ha": {"enabled": True, "sentinel": {"replicas": 3, "quorum": 4}}}})
    # with the network policy: the Redis pods and the sentinels, each other's ports
    docs = render({"redis": {"ha": {"enabled": True}, "networkPolicy": {"enabled": True}}})
    np = docs.one("NetworkPolicy").obj
    for sts in docs.of("StatefulSet"):
        assert _matches(np["spec"]["podSelector"], sts.obj["spec"]["template"]["metadata"]["labels"]), sts.name


def test_no_bundled_redis():
    for key in ("external-redis-url", "external-redis-secret", "no-redis-no-tests", "minimal"):
        docs = render(MATRIX[key])
        assert not docs.of("StatefulSet") and not [d for d in docs.of("Secret")], key


def test_dashboards_configmaps():
    docs = render()
    cms = [d for d in docs.of("ConfigMap") if d.name.startswith(f"{RELEASE}-workpool-dashboard-")]
    files = sorted(p.name for p in (CHART / "dashboards").glob("*.json"))
    assert sorted(k for d in cms for k in d.obj["data"]) == files and files
    for d in cms:
        assert d.obj["metadata"]["labels"]["grafana_dashboard"] == "1"
        (name, text), = d.obj["data"].items()
        assert text == (CHART / "dashboards" / name).read_text().rstrip("\n")
    docs = render(MATRIX["monitoring-on"])
    for d in [d for d in docs.of("ConfigMap") if "-dashboard-" in d.name]:
        assert d.obj["metadata"]["namespace"] == "monitoring"
        assert d.obj["metadata"]["annotations"] == {"grafana_folder": "workpool"}
    docs = render({"dashboards": {"label": "my_dashboards", "labelValue": "yes"}})
    d = next(d for d in docs.of("ConfigMap") if "-dashboard-" in d.name)
    assert d.obj["metadata"]["labels"]["my_dashboards"] == "yes" and "grafana_dashboard" not in d.obj["metadata"]["labels"]
    assert not [d for d in render(MATRIX["minimal"]).of("ConfigMap") if "-dashboard-" in d.name]


def test_notes_point_at_the_right_redis():
    assert "Secret wp-workpool-redis (key redis-url)" in render().notes
    assert "urlSecretRef: {name: queue-redis, key: url}" in render(MATRIX["external-redis-secret"]).notes
    assert "url: redis://redis.data.svc:6379/0" in render(MATRIX["external-redis-url"]).notes
    assert "crds.install is false" in render(MATRIX["crds-off"]).notes
    assert "kubectl delete crd workpools.workpool.dev" in render().notes
    assert "kubectl delete crd" not in render(MATRIX["crds-not-kept"]).notes
