//! Per-kind behaviour of the built-in resources: defaults, validation, field selectors,
//! and the events.k8s.io/v1 ↔ core/v1 Event views.

use super::status::cause;
use super::types::Cause;
use base64::Engine;
use serde_json::{Map, Value, json};

fn round_trip<T: serde::de::DeserializeOwned + serde::Serialize>(
    v: &Value,
) -> Result<Value, String> {
    let typed: T = serde_json::from_value(v.clone()).map_err(|e| e.to_string())?;
    serde_json::to_value(typed).map_err(|e| e.to_string())
}

/// Decodes a built-in object through its typed form (as the apiserver decodes into Go
/// structs): unknown fields are dropped, wrong types are errors. None = no typed form.
pub fn decode_typed(group: &str, resource: &str, obj: &Value) -> Option<Result<Value, String>> {
    use k8s_openapi::api::{coordination::v1 as coord, core::v1 as core, rbac::v1 as rbac};
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1 as apiext;
    Some(match (group, resource) {
        ("", "pods") => round_trip::<core::Pod>(obj),
        ("", "namespaces") => round_trip::<core::Namespace>(obj),
        ("", "configmaps") => round_trip::<core::ConfigMap>(obj),
        ("", "secrets") => round_trip::<core::Secret>(obj),
        ("", "services") => round_trip::<core::Service>(obj),
        ("", "serviceaccounts") => round_trip::<core::ServiceAccount>(obj),
        ("", "nodes") => round_trip::<core::Node>(obj),
        ("", "events") | ("events.k8s.io", "events") => round_trip::<core::Event>(obj),
        ("coordination.k8s.io", "leases") => round_trip::<coord::Lease>(obj),
        ("rbac.authorization.k8s.io", "roles") => round_trip::<rbac::Role>(obj),
        ("rbac.authorization.k8s.io", "rolebindings") => round_trip::<rbac::RoleBinding>(obj),
        ("rbac.authorization.k8s.io", "clusterroles") => round_trip::<rbac::ClusterRole>(obj),
        ("rbac.authorization.k8s.io", "clusterrolebindings") => {
            round_trip::<rbac::ClusterRoleBinding>(obj)
        }
        ("apiextensions.k8s.io", "customresourcedefinitions") => {
            round_trip::<apiext::CustomResourceDefinition>(obj)
        }
        _ => return None,
    })
}

/// DNS-1123 subdomain (most object names).
pub fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

/// DNS-1123 label (namespaces, services).
pub fn is_dns_label(s: &str) -> bool {
    !s.is_empty() && s.len() <= 63 && is_dns_subdomain(s) && !s.contains('.')
}

pub fn name_causes(resource: &str, name: &str) -> Vec<Cause> {
    let label = matches!(resource, "namespaces" | "services");
    if label && !is_dns_label(name) {
        vec![cause(
            "FieldValueInvalid",
            "metadata.name",
            format!(
                "Invalid value: \"{name}\": a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')"
            ),
        )]
    } else if !label && !is_dns_subdomain(name) {
        vec![cause(
            "FieldValueInvalid",
            "metadata.name",
            format!(
                "Invalid value: \"{name}\": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
            ),
        )]
    } else {
        Vec::new()
    }
}

fn obj_mut<'a>(v: &'a mut Value, key: &str) -> &'a mut Map<String, Value> {
    if !v.get(key).is_some_and(Value::is_object) {
        v[key] = json!({});
    }
    match v.get_mut(key).and_then(Value::as_object_mut) {
        Some(m) => m,
        None => unreachable!("just made an object"),
    }
}

fn default_container(c: &mut Value) {
    if !c.is_object() {
        return;
    }
    let image = c["image"].as_str().unwrap_or_default().to_string();
    let m = match c.as_object_mut() {
        Some(m) => m,
        None => return,
    };
    let tag_latest = {
        let last = image.rsplit('/').next().unwrap_or_default();
        !image.contains('@') && (!last.contains(':') || last.ends_with(":latest"))
    };
    m.entry("imagePullPolicy")
        .or_insert_with(|| json!(if tag_latest { "Always" } else { "IfNotPresent" }));
    m.entry("terminationMessagePath")
        .or_insert_with(|| json!("/dev/termination-log"));
    m.entry("terminationMessagePolicy")
        .or_insert_with(|| json!("File"));
    m.entry("resources").or_insert_with(|| json!({}));
    if let Some(ports) = m.get_mut("ports").and_then(Value::as_array_mut) {
        for p in ports.iter_mut().filter_map(Value::as_object_mut) {
            p.entry("protocol").or_insert_with(|| json!("TCP"));
        }
    }
}

/// Pod defaults (`pkg/apis/core/v1/defaults.go`, the parts a test can see) and the
/// status the registry sets on create.
pub fn default_pod(pod: &mut Value) {
    let spec = obj_mut(pod, "spec");
    spec.entry("restartPolicy")
        .or_insert_with(|| json!("Always"));
    spec.entry("terminationGracePeriodSeconds")
        .or_insert_with(|| json!(30));
    // A negative grace period is raised to 1 (the apiserver mutates it since 1.27).
    if spec
        .get("terminationGracePeriodSeconds")
        .and_then(Value::as_i64)
        .is_some_and(|g| g < 0)
    {
        spec.insert("terminationGracePeriodSeconds".into(), json!(1));
    }
    spec.entry("dnsPolicy")
        .or_insert_with(|| json!("ClusterFirst"));
    spec.entry("schedulerName")
        .or_insert_with(|| json!("default-scheduler"));
    spec.entry("securityContext").or_insert_with(|| json!({}));
    spec.entry("serviceAccountName")
        .or_insert_with(|| json!("default"));
    spec.entry("enableServiceLinks")
        .or_insert_with(|| json!(true));
    spec.entry("priority").or_insert_with(|| json!(0));
    spec.entry("preemptionPolicy")
        .or_insert_with(|| json!("PreemptLowerPriority"));
    if let Some(sa) = spec.get("serviceAccountName").cloned() {
        spec.entry("serviceAccount").or_insert(sa);
    }
    for key in ["containers", "initContainers"] {
        if let Some(cs) = spec.get_mut(key).and_then(Value::as_array_mut) {
            cs.iter_mut().for_each(default_container);
        }
    }
}

/// The DefaultTolerationSeconds admission plugin: pods tolerate not-ready and
/// unreachable nodes for 300 s unless they say otherwise.
pub fn default_tolerations(pod: &mut Value) {
    let spec = obj_mut(pod, "spec");
    let tols = spec.entry("tolerations").or_insert_with(|| json!([]));
    let Some(list) = tols.as_array_mut() else {
        return;
    };
    for key in [
        "node.kubernetes.io/not-ready",
        "node.kubernetes.io/unreachable",
    ] {
        let has = list
            .iter()
            .any(|t| t["key"] == key && (t["effect"] == "NoExecute" || t.get("effect").is_none()));
        if !has {
            list.push(json!({"key": key, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}));
        }
    }
}

pub fn initial_pod_status(pod: &Value) -> Value {
    let has_resources = pod
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .is_some_and(|cs| {
            cs.iter().any(|c| {
                c.pointer("/resources/requests")
                    .or_else(|| c.pointer("/resources/limits"))
                    .and_then(Value::as_object)
                    .is_some_and(|m| !m.is_empty())
            })
        });
    json!({"phase": "Pending", "qosClass": if has_resources { "Burstable" } else { "BestEffort" }})
}

pub fn validate_pod(pod: &Value) -> Vec<Cause> {
    let mut out = Vec::new();
    match pod.pointer("/spec/containers").and_then(Value::as_array) {
        None => out.push(cause(
            "FieldValueRequired",
            "spec.containers",
            "Required value",
        )),
        Some(cs) if cs.is_empty() => out.push(cause(
            "FieldValueRequired",
            "spec.containers",
            "Required value",
        )),
        Some(cs) => {
            let mut names = Vec::new();
            for (i, c) in cs.iter().enumerate() {
                let name = c["name"].as_str().unwrap_or_default();
                if name.is_empty() {
                    out.push(cause(
                        "FieldValueRequired",
                        &format!("spec.containers[{i}].name"),
                        "Required value",
                    ));
                } else if names.contains(&name) {
                    out.push(cause(
                        "FieldValueDuplicate",
                        &format!("spec.containers[{i}].name"),
                        format!("Duplicate value: \"{name}\""),
                    ));
                }
                names.push(name);
                if c["image"].as_str().unwrap_or_default().is_empty() {
                    out.push(cause(
                        "FieldValueRequired",
                        &format!("spec.containers[{i}].image"),
                        "Required value",
                    ));
                }
            }
        }
    }
    out.extend(super::validation::pod_containers(pod));
    if let Some(rp) = pod.pointer("/spec/restartPolicy").and_then(Value::as_str)
        && !["Always", "OnFailure", "Never"].contains(&rp)
    {
        {
            out.push(cause(
                "FieldValueNotSupported",
                "spec.restartPolicy",
                format!("Unsupported value: \"{rp}\": supported values: \"Always\", \"OnFailure\", \"Never\""),
            ));
        }
    }
    out
}

/// Pod spec updates may change only images, activeDeadlineSeconds and tolerations
/// (additions); everything else is immutable (`ValidatePodUpdate`).
pub fn validate_pod_update(new: &Value, old: &Value) -> Vec<Cause> {
    let strip = |p: &Value| {
        let mut s = p.get("spec").cloned().unwrap_or(Value::Null);
        for key in ["containers", "initContainers"] {
            if let Some(cs) = s.get_mut(key).and_then(Value::as_array_mut) {
                for c in cs.iter_mut().filter_map(Value::as_object_mut) {
                    c.remove("image");
                }
            }
        }
        if let Some(m) = s.as_object_mut() {
            m.remove("activeDeadlineSeconds");
            m.remove("tolerations");
        }
        s
    };
    if strip(new) != strip(old) {
        vec![cause(
            "FieldValueForbidden",
            "spec",
            "Forbidden: pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)",
        )]
    } else {
        Vec::new()
    }
}

/// Secrets: `stringData` is merged into `data` (base64) and dropped; `type` defaults.
pub fn normalize_secret(s: &mut Value) {
    if let Some(sd) = s
        .as_object_mut()
        .and_then(|m| m.remove("stringData"))
        .and_then(|v| v.as_object().cloned())
    {
        let data = obj_mut(s, "data");
        for (k, v) in sd {
            let raw = v.as_str().unwrap_or_default();
            data.insert(
                k,
                json!(base64::engine::general_purpose::STANDARD.encode(raw)),
            );
        }
    }
    if let Some(m) = s.as_object_mut()
        && m.get("type")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
    {
        m.insert("type".into(), json!("Opaque"));
    }
}

pub fn default_service(svc: &mut Value, next_ip: u32) {
    let spec = obj_mut(svc, "spec");
    spec.entry("type").or_insert_with(|| json!("ClusterIP"));
    spec.entry("sessionAffinity")
        .or_insert_with(|| json!("None"));
    if spec.get("clusterIP").and_then(Value::as_str).is_none() {
        let ip = format!("10.96.{}.{}", (next_ip >> 8) & 0xff, next_ip & 0xff);
        spec.insert("clusterIP".into(), json!(ip));
        spec.insert("clusterIPs".into(), json!([ip]));
    }
    if let Some(ports) = spec.get_mut("ports").and_then(Value::as_array_mut) {
        for p in ports.iter_mut().filter_map(Value::as_object_mut) {
            p.entry("protocol").or_insert_with(|| json!("TCP"));
            if let Some(port) = p.get("port").cloned() {
                p.entry("targetPort").or_insert(port);
            }
        }
    }
}

/// Which field selectors a resource supports (besides metadata.name/namespace).
pub fn field_supported(resource: &str, field: &str) -> bool {
    if field == "metadata.name" || field == "metadata.namespace" {
        return true;
    }
    match resource {
        "pods" => matches!(
            field,
            "spec.nodeName"
                | "status.phase"
                | "spec.restartPolicy"
                | "spec.schedulerName"
                | "spec.serviceAccountName"
                | "status.podIP"
                | "status.nominatedNodeName"
        ),
        "events" => {
            field.starts_with("involvedObject.")
                || field.starts_with("regarding.")
                || matches!(
                    field,
                    "reason" | "type" | "source" | "reportingComponent" | "reportingController"
                )
        }
        "secrets" => field == "type",
        "namespaces" => field == "status.phase",
        "nodes" => field == "spec.unschedulable",
        _ => false,
    }
}

/// The value of a supported field of a stored object (core form for events).
pub fn field_value(obj: &Value, field: &str) -> String {
    let f = field
        .replace("regarding.", "involvedObject.")
        .replace("reportingController", "reportingComponent");
    let f = if f == "source" {
        "source.component".to_string()
    } else {
        f
    };
    let ptr = format!("/{}", f.replace('.', "/"));
    match obj.pointer(&ptr) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => {
            if f == "spec.unschedulable" {
                "false".into()
            } else {
                String::new()
            }
        }
        Some(v) => v.to_string(),
    }
}

/// Fields of an Event as (events.k8s.io/v1 name, core/v1 name): both views of one
/// stored object, as the apiserver converts between them.
const EVENT_FIELDS: [(&str, &str); 14] = [
    ("metadata", "metadata"),
    ("reason", "reason"),
    ("type", "type"),
    ("action", "action"),
    ("eventTime", "eventTime"),
    ("related", "related"),
    ("reportingInstance", "reportingInstance"),
    ("regarding", "involvedObject"),
    ("note", "message"),
    ("reportingController", "reportingComponent"),
    ("deprecatedSource", "source"),
    ("deprecatedFirstTimestamp", "firstTimestamp"),
    ("deprecatedLastTimestamp", "lastTimestamp"),
    ("deprecatedCount", "count"),
];

/// Renames the Event fields from one view to the other; `to_v1` picks the direction.
fn convert_event(ev: &Value, to_v1: bool, api_version: &str) -> Value {
    let mut src = ev.as_object().cloned().unwrap_or_default();
    let mut out = Map::new();
    for (v1, core) in EVENT_FIELDS {
        let (from, to) = if to_v1 { (core, v1) } else { (v1, core) };
        if let Some(v) = src.remove(from) {
            out.insert(to.into(), v);
        }
    }
    if let Some(series) = src.remove("series") {
        out.insert(
            "series".into(),
            json!({"count": series["count"], "lastObservedTime": series["lastObservedTime"]}),
        );
    }
    out.insert("apiVersion".into(), json!(api_version));
    out.insert("kind".into(), json!("Event"));
    Value::Object(out)
}

/// events.k8s.io/v1 Event → the stored core/v1 Event.
pub fn event_from_v1(ev: &Value) -> Value {
    convert_event(ev, false, "v1")
}

/// The stored core/v1 Event → its events.k8s.io/v1 view.
pub fn event_to_v1(ev: &Value) -> Value {
    convert_event(ev, true, "events.k8s.io/v1")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(is_dns_subdomain("a.b-c"));
        assert!(!is_dns_subdomain("A"));
        assert!(!is_dns_label("a.b"));
        assert_eq!(name_causes("pods", "Bad_Name").len(), 1);
    }

    #[test]
    fn event_views_round_trip() {
        let v1 = json!({"apiVersion": "events.k8s.io/v1", "kind": "Event",
            "metadata": {"name": "e"}, "regarding": {"name": "p"}, "note": "hi",
            "reason": "R", "type": "Normal", "reportingController": "c"});
        let core = event_from_v1(&v1);
        assert_eq!(core["involvedObject"]["name"], "p");
        assert_eq!(core["message"], "hi");
        assert_eq!(event_to_v1(&core), v1);
    }

    #[test]
    fn secret_string_data() {
        let mut s = json!({"stringData": {"a": "hello"}});
        normalize_secret(&mut s);
        assert_eq!(s, json!({"data": {"a": "aGVsbG8="}, "type": "Opaque"}));
    }
}
