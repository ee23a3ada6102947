"""Checks shared by the chart, example and install tests. Each returns a list of
problems (empty = fine), so a test can report all of them at once."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from conftest import REPO, missing

# --- Kubernetes OpenAPI schemas (kubernetes-validate) --------------------------------


def kube_validate(obj: dict[str, Any], version: str) -> list[str]:
    """Strict validation against the Kubernetes OpenAPI schema of `version`. Returns
    ["no schema"] for kinds kubernetes-validate does not know (CRD kinds)."""
    try:
        import kubernetes_validate as kv
    except ImportError:
        missing("the Python package kubernetes-validate is not installed")
    try:
        kv.validate(obj, version, strict=True)
    except kv.SchemaNotFoundError:
        return ["no schema"]
    except kv.ValidationError as e:
        where = "/".join(str(p) for p in e.path)
        return [f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}: at {where or '.'}: {e.message}"]
    return []


def pod_template_object(spec: dict[str, Any], metadata: dict[str, Any] | None = None) -> dict[str, Any]:
    """A pod spec wrapped as a v1 PodTemplate, so kubernetes-validate checks it."""
    return {
        "apiVersion": "v1",
        "kind": "PodTemplate",
        "metadata": {"name": "check"},
        "template": {"metadata": metadata or {}, "spec": spec},
    }


# --- The WorkPool CRD's schema ---------------------------------------------------------


def crd_source_path() -> Path:
    """crds/workpool.yaml when generated, else the chart's copy (a stand-in until then)."""
    generated = REPO / "crds" / "workpool.yaml"
    return generated if generated.exists() else REPO / "charts" / "workpool" / "files" / "crds" / "workpool.yaml"


def _to_jsonschema(s: Any) -> Any:
    """OpenAPI v3 (structural, as in a CRD) to JSON Schema, with unknown fields refused
    where the apiserver's strict field validation would refuse them."""
    if isinstance(s, list):
        return [_to_jsonschema(x) for x in s]
    if not isinstance(s, dict):
        return s
    s = {k: _to_jsonschema(v) for k, v in s.items() if not k.startswith("x-kubernetes-validations")}
    if s.pop("x-kubernetes-int-or-string", False):
        s.pop("type", None)
        s.setdefault("anyOf", [{"type": "integer"}, {"type": "string"}])
    if s.pop("nullable", False) and "type" in s:
        s["type"] = [s["type"], "null"]
    preserve = s.pop("x-kubernetes-preserve-unknown-fields", False)
    if s.get("type") == "object" and "properties" in s and "additionalProperties" not in s and not preserve:
        s["additionalProperties"] = False
    return s


def workpool_validator():
    import jsonschema

    crd = yaml.safe_load(crd_source_path().read_text())
    version = next(v for v in crd["spec"]["versions"] if v.get("storage"))
    schema = _to_jsonschema(copy.deepcopy(version["schema"]["openAPIV3Schema"]))
    # apiVersion, kind and metadata are the apiserver's, whatever the CRD schema lists
    props = schema.setdefault("properties", {})
    props["metadata"] = {"type": "object"}
    props["apiVersion"] = {"type": "string"}
    props["kind"] = {"type": "string"}
    return jsonschema.Draft7Validator(schema), f"{crd['spec']['group']}/{version['name']}"


def validate_workpool(obj: dict[str, Any], version: str) -> list[str]:
    """A WorkPool against the CRD's schema, and its pod template against the
    Kubernetes PodTemplate schema (the CRD may keep it as preserve-unknown-fields)."""
    validator, api_version = workpool_validator()
    problems = []
    name = obj.get("metadata", {}).get("name")
    if obj.get("apiVersion") != api_version:
        problems.append(f"WorkPool/{name}: apiVersion {obj.get('apiVersion')} is not the CRD's {api_version}")
    for e in validator.iter_errors(obj):
        where = "/".join(str(p) for p in e.path)
        problems.append(f"WorkPool/{name}: at {where or '.'}: {e.message}")
    template = obj.get("spec", {}).get("template", {})
    problems += kube_validate(pod_template_object(template.get("spec", {}), template.get("metadata")), version)
    return problems


# --- Pod Security Standards: restricted ------------------------------------------------

RESTRICTED_VOLUME_TYPES = {
    "configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "image",
    "persistentVolumeClaim", "projected", "secret",
}
SAFE_SYSCTLS = {
    "kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies", "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
}


def restricted_pss(where: str, spec: dict[str, Any]) -> list[str]:
    """The checks of the `restricted` Pod Security Standard (latest), field by field,
    plus this project's own rules: read-only root filesystem and resource requests and a
    memory limit on every container."""
    p: list[str] = []
    psc = spec.get("securityContext") or {}
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(field):
            p.append(f"{where}: {field} is set")
    for v in spec.get("volumes") or []:
        kinds = set(v) - {"name"}
        if not kinds <= RESTRICTED_VOLUME_TYPES:
            p.append(f"{where}: volume {v.get('name')} has a type restricted forbids: {sorted(kinds)}")
    for s in psc.get("sysctls") or []:
        if s.get("name") not in SAFE_SYSCTLS:
            p.append(f"{where}: unsafe sysctl {s.get('name')}")
    if psc.get("runAsUser") == 0:
        p.append(f"{where}: pod runAsUser is 0")
    pod_seccomp = (psc.get("seccompProfile") or {}).get("type")
    if pod_seccomp not in (None, "RuntimeDefault", "Localhost"):
        p.append(f"{where}: pod seccompProfile {pod_seccomp}")
    pod_apparmor = (psc.get("appArmorProfile") or {}).get("type")
    if pod_apparmor not in (None, "RuntimeDefault", "Localhost"):
        p.append(f"{where}: pod appArmorProfile {pod_apparmor}")
    containers = [("container", c) for c in spec.get("containers") or []]
    containers += [("initContainer", c) for c in spec.get("initContainers") or []]
    containers += [("ephemeralContainer", c) for c in spec.get("ephemeralContainers") or []]
    if not spec.get("containers"):
        p.append(f"{where}: no containers")
    for kind, c in containers:
        at = f"{where} {kind} {c.get('name')}"
        sc = c.get("securityContext") or {}
        if sc.get("privileged"):
            p.append(f"{at}: privileged")
        if sc.get("allowPrivilegeEscalation") is not False:
            p.append(f"{at}: allowPrivilegeEscalation must be false")
        run_as_non_root = sc.get("runAsNonRoot", psc.get("runAsNonRoot"))
        if run_as_non_root is not True:
            p.append(f"{at}: runAsNonRoot must be true (pod or container)")
        if sc.get("runAsUser") == 0:
            p.append(f"{at}: runAsUser is 0")
        seccomp = (sc.get("seccompProfile") or {}).get("type", pod_seccomp)
        if seccomp not in ("RuntimeDefault", "Localhost"):
            p.append(f"{at}: seccompProfile must be RuntimeDefault or Localhost (pod or container), is {seccomp}")
        apparmor = (sc.get("appArmorProfile") or {}).get("type")
        if apparmor not in (None, "RuntimeDefault", "Localhost"):
            p.append(f"{at}: appArmorProfile {apparmor}")
        caps = sc.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            p.append(f"{at}: capabilities.drop must contain ALL")
        if set(caps.get("add") or []) - {"NET_BIND_SERVICE"}:
            p.append(f"{at}: capabilities.add beyond NET_BIND_SERVICE: {caps.get('add')}")
        if sc.get("procMount") not in (None, "Default"):
            p.append(f"{at}: procMount {sc.get('procMount')}")
        se = sc.get("seLinuxOptions") or {}
        if se.get("user") or se.get("role"):
            p.append(f"{at}: seLinuxOptions user/role set")
        for port in c.get("ports") or []:
            if port.get("hostPort"):
                p.append(f"{at}: hostPort {port['hostPort']}")
        # this project's rules on top of restricted
        if kind != "ephemeralContainer":
            if sc.get("readOnlyRootFilesystem") is not True:
                p.append(f"{at}: readOnlyRootFilesystem must be true")
            res = c.get("resources") or {}
            if not (res.get("requests") or {}).get("memory") or not (res.get("limits") or {}).get("memory"):
                p.append(f"{at}: needs a memory request and a memory limit")
    return p


# --- RBAC ------------------------------------------------------------------------------


def rbac_wildcards(obj: dict[str, Any]) -> list[str]:
    p = []
    if obj.get("kind") not in ("ClusterRole", "Role"):
        return p
    if obj.get("aggregationRule"):
        p.append(f"{obj['kind']}/{obj['metadata']['name']}: aggregationRule (grants whatever is aggregated)")
    for i, rule in enumerate(obj.get("rules") or []):
        for field in ("apiGroups", "resources", "verbs", "resourceNames", "nonResourceURLs"):
            for v in rule.get(field) or []:
                if "*" in v:
                    p.append(f"{obj['kind']}/{obj['metadata']['name']} rule {i}: wildcard in {field}: {v!r}")
    return p
