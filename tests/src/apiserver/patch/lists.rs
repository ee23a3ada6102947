//! List semantics of the built-in kinds (patch strategies, merge keys, SSA list types).

use super::*;

// ---------------------------------------------------------------------------------------
// List semantics of the built-in kinds
// ---------------------------------------------------------------------------------------

/// Lists in core types that the apiserver merges by key (containers by name, ...).
///
/// The table follows the `patchStrategy`/`patchMergeKey`/`listType`/`listMapKey` tags of
/// `k8s.io/api` (core/v1, apps/v1, batch/v1) and `k8s.io/apimachinery` (ObjectMeta).
/// `Map(keys)` carries the server-side-apply map keys; strategic merge patch merges by the
/// first key, which is the `patchMergeKey` in every case listed here (e.g. container
/// ports: SSA keys `containerPort,protocol`, SMP key `containerPort`).
pub struct CoreListSemantics {
    pub api_version: String,
    pub kind: String,
}

pub(super) fn map_keys(keys: &[&str]) -> ListType {
    ListType::Map(keys.iter().map(|k| (*k).to_string()).collect())
}

/// Lists of `ObjectMeta` (object or template metadata), relative to the metadata.
pub(super) fn meta_list(rel: &[&str]) -> Option<ListType> {
    match rel {
        ["finalizers"] => Some(ListType::Set),
        ["ownerReferences"] => Some(map_keys(&["uid"])),
        ["managedFields"] => Some(ListType::Atomic),
        _ => None,
    }
}

/// Lists of a `PodSpec`, relative to the pod spec.
pub(super) fn pod_spec_list(rel: &[&str]) -> Option<ListType> {
    let t = match rel {
        ["containers" | "initContainers" | "ephemeralContainers"] => map_keys(&["name"]),
        [
            "containers" | "initContainers" | "ephemeralContainers",
            rest @ ..,
        ] => match rest {
            ["ports"] => map_keys(&["containerPort", "protocol"]),
            ["env"] => map_keys(&["name"]),
            ["volumeMounts"] => map_keys(&["mountPath"]),
            ["volumeDevices"] => map_keys(&["devicePath"]),
            ["resources", "claims"] => map_keys(&["name"]),
            _ => ListType::Atomic,
        },
        ["volumes"] => map_keys(&["name"]),
        ["imagePullSecrets"] => map_keys(&["name"]),
        ["hostAliases"] => map_keys(&["ip"]),
        ["topologySpreadConstraints"] => map_keys(&["topologyKey", "whenUnsatisfiable"]),
        ["schedulingGates"] => map_keys(&["name"]),
        ["resourceClaims"] => map_keys(&["name"]),
        _ => return None,
    };
    Some(t)
}

/// Lists of a `PodStatus`, relative to the pod status.
pub(super) fn pod_status_list(rel: &[&str]) -> Option<ListType> {
    let t = match rel {
        ["conditions"] => map_keys(&["type"]),
        ["podIPs"] => map_keys(&["ip"]),
        ["resourceClaimStatuses"] => map_keys(&["name"]),
        _ => return None,
    };
    Some(t)
}

/// Where the pod template's metadata/spec live for kinds that embed one.
pub(super) fn pod_template_prefix(kind: &str) -> Option<&'static [&'static str]> {
    match kind {
        "Deployment"
        | "StatefulSet"
        | "DaemonSet"
        | "ReplicaSet"
        | "ReplicationController"
        | "Job" => Some(&["spec", "template"]),
        "CronJob" => Some(&["spec", "jobTemplate", "spec", "template"]),
        "PodTemplate" => Some(&["template"]),
        _ => None,
    }
}

impl CoreListSemantics {
    pub(super) fn lookup(&self, p: &[&str]) -> Option<ListType> {
        if let ["metadata", rel @ ..] = p {
            return meta_list(rel);
        }
        if let Some(prefix) = pod_template_prefix(&self.kind)
            && p.len() > prefix.len()
            && p[..prefix.len()] == *prefix
        {
            match &p[prefix.len()..] {
                ["metadata", rel @ ..] => return meta_list(rel),
                ["spec", rel @ ..] => return pod_spec_list(rel),
                _ => {}
            }
        }
        match (self.kind.as_str(), p) {
            ("Pod", ["spec", rel @ ..]) => pod_spec_list(rel),
            ("Pod", ["status", rel @ ..]) => pod_status_list(rel),
            ("Service", ["spec", "ports"]) => Some(map_keys(&["port", "protocol"])),
            ("Service", ["status", "conditions"]) => Some(map_keys(&["type"])),
            ("Node", ["spec", "podCIDRs"]) => Some(ListType::Set),
            ("Node", ["status", "conditions" | "addresses"]) => Some(map_keys(&["type"])),
            ("Namespace", ["status", "conditions"]) => Some(map_keys(&["type"])),
            (
                "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "ReplicationController",
                ["status", "conditions"],
            ) => Some(map_keys(&["type"])),
            _ => None,
        }
    }
}

impl ListSemantics for CoreListSemantics {
    fn list_type(&self, path: &[String]) -> ListType {
        let p: Vec<&str> = path.iter().map(String::as_str).collect();
        self.lookup(&p).unwrap_or(ListType::Atomic)
    }
}
