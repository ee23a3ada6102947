//! Validation of built-in objects as kube-apiserver v1.37 does it (k8s.io/apimachinery
//! `validation`, `pkg/apis/core/validation`, coordination and events validation), for the
//! fields the double models: ObjectMeta labels, annotations and finalizers; pod
//! containers (names, ports, env names, volume mounts, resources); Leases; Events.
//! Messages and cause fields follow the apiserver's `field.Error`s; within a map (labels,
//! annotations) causes are ordered by key where the apiserver walks a Go map.

use super::schema::dns1123_subdomain_errors;
use super::status::cause;
use super::types::Cause;
use serde_json::{Map, Value};

const QUALIFIED_NAME_FMT: &str = "([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]";
const QUALIFIED_NAME_MSG: &str = "must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character";
const DNS1123_LABEL_FMT: &str = "[a-z0-9]([-a-z0-9]*[a-z0-9])?";
/// `TotalAnnotationSizeLimitB`.
pub const ANNOTATIONS_LIMIT: usize = 256 * 1024;

fn invalid(field: &str, value: &str, msg: &str) -> Cause {
    cause(
        "FieldValueInvalid",
        field,
        format!("Invalid value: {value:?}: {msg}"),
    )
}

fn invalid_int(field: &str, value: i64, msg: &str) -> Cause {
    cause(
        "FieldValueInvalid",
        field,
        format!("Invalid value: {value}: {msg}"),
    )
}

fn required(field: &str) -> Cause {
    cause("FieldValueRequired", field, "Required value")
}

fn qname_char_ok(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

/// `validation.IsQualifiedName`.
pub fn qualified_name_errors(value: &str) -> Vec<String> {
    let mut errs = Vec::new();
    let regex_msg = format!(
        "{QUALIFIED_NAME_MSG} (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '{QUALIFIED_NAME_FMT}')"
    );
    let parts: Vec<&str> = value.split('/').collect();
    let name = match parts.as_slice() {
        [name] => *name,
        [prefix, name] => {
            if prefix.is_empty() {
                errs.push("prefix part must be non-empty".to_string());
            } else {
                errs.extend(
                    dns1123_subdomain_errors(prefix)
                        .into_iter()
                        .map(|m| format!("prefix part {m}")),
                );
            }
            *name
        }
        _ => {
            return vec![format!(
                "a qualified name {regex_msg} with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')"
            )];
        }
    };
    if name.is_empty() {
        errs.push("name part must be non-empty".into());
    } else if name.len() > 63 {
        errs.push("name part must be no more than 63 characters".into());
    }
    if !qname_char_ok(name) {
        errs.push(format!("name part {regex_msg}"));
    }
    errs
}

/// `validation.IsValidLabelValue`.
pub fn label_value_errors(value: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if value.len() > 63 {
        errs.push("must be no more than 63 characters".to_string());
    }
    if !value.is_empty() && !qname_char_ok(value) {
        errs.push(format!("a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '({QUALIFIED_NAME_FMT})?')"));
    }
    errs
}

/// `validation.IsDNS1123Label`.
pub fn dns1123_label_errors(value: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if value.len() > 63 {
        errs.push("must be no more than 63 characters".to_string());
    }
    let label_ok = |l: &str| {
        let b = l.as_bytes();
        !b.is_empty()
            && b.iter()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
            && b[0] != b'-'
            && b[b.len() - 1] != b'-'
    };
    if !label_ok(value) {
        if value.split('.').all(label_ok) {
            errs.push("must not contain dots".into());
        } else {
            errs.push(format!("a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '{DNS1123_LABEL_FMT}')"));
        }
    }
    errs
}

/// `validation.IsValidPortName` (IANA_SVC_NAME).
pub fn port_name_errors(port: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if port.len() > 15 {
        errs.push("must be no more than 15 characters".to_string());
    }
    if port.is_empty()
        || !port
            .bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
    {
        errs.push("must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)".into());
    }
    if !port.bytes().any(|c| c.is_ascii_lowercase()) {
        errs.push("must contain at least one letter (a-z)".into());
    }
    if port.contains("--") {
        errs.push("must not contain consecutive hyphens".into());
    }
    if port.starts_with('-') || port.ends_with('-') {
        errs.push("must not begin or end with a hyphen".into());
    }
    errs
}

fn str_map<'a>(obj: &'a Value, pointer: &str) -> Option<&'a Map<String, Value>> {
    obj.pointer(pointer).and_then(Value::as_object)
}

/// ObjectMeta labels and annotations (`ValidateLabels`, `ValidateAnnotations`).
pub fn labels_and_annotations(obj: &Value) -> Vec<Cause> {
    let mut out = Vec::new();
    if let Some(labels) = str_map(obj, "/metadata/labels") {
        for (k, v) in labels {
            for m in qualified_name_errors(k) {
                out.push(invalid("metadata.labels", k, &m));
            }
            let v = v.as_str().unwrap_or_default();
            for m in label_value_errors(v) {
                out.push(invalid("metadata.labels", v, &m));
            }
        }
    }
    if let Some(ann) = str_map(obj, "/metadata/annotations") {
        let mut size = 0;
        for (k, v) in ann {
            for m in qualified_name_errors(&k.to_lowercase()) {
                out.push(invalid("metadata.annotations", k, &m));
            }
            size += k.len() + v.as_str().map_or(0, str::len);
        }
        if size > ANNOTATIONS_LIMIT {
            out.push(cause(
                "FieldValueTooLong",
                "metadata.annotations",
                format!("Too long: may not be more than {ANNOTATIONS_LIMIT} bytes"),
            ));
        }
    }
    out
}

/// ObjectMeta finalizers (`ValidateFinalizers`).
pub fn finalizers(obj: &Value) -> Vec<Cause> {
    let mut out = Vec::new();
    let Some(list) = obj
        .pointer("/metadata/finalizers")
        .and_then(Value::as_array)
    else {
        return out;
    };
    let names: Vec<&str> = list.iter().filter_map(Value::as_str).collect();
    for (i, f) in names.iter().enumerate() {
        for m in qualified_name_errors(f) {
            out.push(invalid(&format!("metadata.finalizers[{i}]"), f, &m));
        }
    }
    if names.contains(&"orphan") && names.contains(&"foregroundDeletion") {
        out.push(cause(
            "FieldValueInvalid",
            "metadata.finalizers",
            format!(
                "Invalid value: []string{{{}}}: finalizer orphan and foregroundDeletion cannot be both set",
                names
                    .iter()
                    .map(|n| format!("{n:?}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ));
    }
    out
}

// ───────────────────────────── quantities ─────────────────────────────

const QUANTITY_FORMAT_ERROR: &str =
    "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'";

/// `resource.ParseQuantity`, as a float: Err with the apiserver's message.
pub fn parse_quantity(s: &str) -> Result<f64, String> {
    let s = s.trim();
    let num_end = s
        .char_indices()
        .find(|(i, c)| !(c.is_ascii_digit() || *c == '.' || (*i == 0 && (*c == '+' || *c == '-'))))
        .map_or(s.len(), |(i, _)| i);
    let (num, suffix) = s.split_at(num_end);
    let digits = num.trim_start_matches(['+', '-']);
    if digits.is_empty() || digits == "." || digits.matches('.').count() > 1 {
        return Err(QUANTITY_FORMAT_ERROR.into());
    }
    let valid_suffix_chars = suffix.trim_start_matches(|c: char| "eEinumkKMGTP".contains(c));
    let rest = valid_suffix_chars.trim_start_matches(['+', '-']);
    if !rest.chars().all(|c| c.is_ascii_digit()) || valid_suffix_chars.len() - rest.len() > 1 {
        return Err(QUANTITY_FORMAT_ERROR.into());
    }
    let mult = match suffix {
        "" => 1.0,
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        e if (e.starts_with('e') || e.starts_with('E'))
            && e[1..].trim_start_matches(['+', '-']).parse::<u32>().is_ok() =>
        {
            10f64.powi(
                e[1..]
                    .parse::<i32>()
                    .map_err(|_| "unable to parse quantity's suffix")?,
            )
        }
        _ => return Err("unable to parse quantity's suffix".into()),
    };
    let n: f64 = num.parse().map_err(|_| QUANTITY_FORMAT_ERROR.to_string())?;
    Ok(n * mult)
}

/// The first unparseable quantity of a pod (the apiserver fails decoding on it: 400).
pub fn pod_quantity_error(pod: &Value) -> Option<String> {
    let mut maps: Vec<&Map<String, Value>> = Vec::new();
    for key in ["containers", "initContainers"] {
        for c in pod
            .pointer(&format!("/spec/{key}"))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            for part in ["limits", "requests"] {
                if let Some(m) = c
                    .pointer(&format!("/resources/{part}"))
                    .and_then(Value::as_object)
                {
                    maps.push(m);
                }
            }
        }
    }
    if let Some(m) = str_map(pod, "/spec/overhead") {
        maps.push(m);
    }
    maps.into_iter()
        .flat_map(|m| m.values())
        .find_map(|v| match v {
            Value::String(s) => parse_quantity(s).err(),
            Value::Number(_) => None,
            _ => Some(QUANTITY_FORMAT_ERROR.to_string()),
        })
}

// ───────────────────────────── pods ─────────────────────────────

/// Container checks of `ValidatePodSpec` the double models, for `containers` and
/// `initContainers`.
pub fn pod_containers(pod: &Value) -> Vec<Cause> {
    let mut out = Vec::new();
    let volumes: Vec<&str> = pod
        .pointer("/spec/volumes")
        .and_then(Value::as_array)
        .map(|vs| vs.iter().filter_map(|v| v["name"].as_str()).collect())
        .unwrap_or_default();
    for (i, v) in volumes.iter().enumerate() {
        for m in dns1123_label_errors(v) {
            out.push(invalid(&format!("spec.volumes[{i}].name"), v, &m));
        }
    }
    for key in ["containers", "initContainers"] {
        let Some(cs) = pod
            .pointer(&format!("/spec/{key}"))
            .and_then(Value::as_array)
        else {
            continue;
        };
        for (i, c) in cs.iter().enumerate() {
            let path = format!("spec.{key}[{i}]");
            let name = c["name"].as_str().unwrap_or_default();
            if !name.is_empty() {
                for m in dns1123_label_errors(name) {
                    out.push(invalid(&format!("{path}.name"), name, &m));
                }
            }
            for (j, p) in c["ports"].as_array().into_iter().flatten().enumerate() {
                let pp = format!("{path}.ports[{j}]");
                if let Some(pn) = p["name"].as_str().filter(|n| !n.is_empty()) {
                    for m in port_name_errors(pn) {
                        out.push(invalid(&format!("{pp}.name"), pn, &m));
                    }
                }
                match p["containerPort"].as_i64() {
                    None | Some(0) => out.push(required(&format!("{pp}.containerPort"))),
                    Some(n) if !(1..=65535).contains(&n) => out.push(invalid_int(
                        &format!("{pp}.containerPort"),
                        n,
                        "must be between 1 and 65535, inclusive",
                    )),
                    _ => {}
                }
            }
            for (j, e) in c["env"].as_array().into_iter().flatten().enumerate() {
                let f = format!("{path}.env[{j}].name");
                match e["name"].as_str().unwrap_or_default() {
                    "" => out.push(required(&f)),
                    n if !n.bytes().all(|b| (b' '..=b'~').contains(&b) && b != b'=') => {
                        out.push(invalid(&f, n, "a valid environment variable name must consist only of printable ASCII characters other than '='"));
                    }
                    _ => {}
                }
            }
            for (j, m) in c["volumeMounts"]
                .as_array()
                .into_iter()
                .flatten()
                .enumerate()
            {
                let mp = format!("{path}.volumeMounts[{j}]");
                let mname = m["name"].as_str().unwrap_or_default();
                if mname.is_empty() {
                    out.push(required(&format!("{mp}.name")));
                } else if !volumes.contains(&mname) {
                    out.push(cause(
                        "FieldValueNotFound",
                        &format!("{mp}.name"),
                        format!("Not found: {mname:?}"),
                    ));
                }
                if m["mountPath"].as_str().unwrap_or_default().is_empty() {
                    out.push(required(&format!("{mp}.mountPath")));
                }
            }
            let limits = c.pointer("/resources/limits").and_then(Value::as_object);
            let requests = c.pointer("/resources/requests").and_then(Value::as_object);
            if let (Some(limits), Some(requests)) = (limits, requests) {
                for (res, req) in requests {
                    let (Some(req_s), Some(lim_s)) =
                        (quantity_str(req), limits.get(res).and_then(quantity_str))
                    else {
                        continue;
                    };
                    if let (Ok(r), Ok(l)) = (parse_quantity(&req_s), parse_quantity(&lim_s))
                        && r > l
                    {
                        out.push(invalid(
                            &format!("{path}.resources.requests"),
                            &req_s,
                            &format!("must be less than or equal to {res} limit of {lim_s}"),
                        ));
                    }
                }
            }
        }
    }
    out
}

fn quantity_str(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

// ───────────────────────────── leases ─────────────────────────────

/// `ValidateLeaseSpec`.
pub fn lease(obj: &Value) -> Vec<Cause> {
    let mut out = Vec::new();
    if let Some(d) = obj
        .pointer("/spec/leaseDurationSeconds")
        .and_then(Value::as_i64)
        && d <= 0
    {
        out.push(invalid_int(
            "spec.leaseDurationSeconds",
            d,
            "must be greater than 0",
        ));
    }
    if let Some(t) = obj
        .pointer("/spec/leaseTransitions")
        .and_then(Value::as_i64)
        && t < 0
    {
        out.push(invalid_int(
            "spec.leaseTransitions",
            t,
            "must be greater than or equal to 0",
        ));
    }
    out
}

// ───────────────────────────── events ─────────────────────────────

/// `ValidateEventCreate` on the core form of an Event (`events` holds both views):
/// `legacyValidateEvent` for every request version, the strict checks for
/// events.k8s.io/v1. Field paths are the internal type's (`message` for `note`), the
/// reporting controller is named after the request's version, as upstream.
pub fn event_create(ev: &Value, events_v1: bool) -> Vec<Cause> {
    let mut out = Vec::new();
    let s = |k: &str| ev.get(k).and_then(Value::as_str).unwrap_or_default();
    let ns = ev
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let involved_ns = ev
        .pointer("/involvedObject/namespace")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let has_event_time = !s("eventTime").is_empty();
    let empty_invalid = |field: &str, msg: &str| invalid(field, "", msg);
    if !has_event_time {
        let mismatch = if involved_ns.is_empty() {
            !ns.is_empty() && ns != "default"
        } else {
            ns != involved_ns
        };
        if mismatch {
            out.push(invalid(
                "involvedObject.namespace",
                involved_ns,
                "does not match event.namespace",
            ));
        }
    } else {
        if involved_ns.is_empty() && ns != "default" && ns != "kube-system" {
            out.push(invalid(
                "involvedObject.namespace",
                involved_ns,
                "does not match event.namespace",
            ));
        }
        let rc_field = if events_v1 {
            "reportingController"
        } else {
            "reportingComponent"
        };
        let rc = s("reportingComponent");
        if rc.is_empty() {
            out.push(required(rc_field));
        }
        for m in qualified_name_errors(rc) {
            out.push(invalid(rc_field, rc, &m));
        }
        for (field, limit) in [("reportingInstance", 128), ("action", 128), ("reason", 128)] {
            let v = s(field);
            if v.is_empty() {
                out.push(required(field));
            }
            if v.len() > limit {
                out.push(empty_invalid(
                    field,
                    &format!("can have at most {limit} characters"),
                ));
            }
        }
        if s("message").len() > 1024 {
            out.push(empty_invalid("message", "can have at most 1024 characters"));
        }
    }
    if !events_v1 {
        return out;
    }
    if !has_event_time {
        out.push(required("eventTime"));
    }
    let ty = s("type");
    if ty != "Normal" && ty != "Warning" {
        out.push(empty_invalid("type", &format!("has invalid value: {ty}")));
    }
    for (core, v1) in [
        ("firstTimestamp", "deprecatedFirstTimestamp"),
        ("lastTimestamp", "deprecatedLastTimestamp"),
    ] {
        if !s(core).is_empty() {
            out.push(empty_invalid(v1, "needs to be unset"));
        }
    }
    if ev.get("count").and_then(Value::as_i64).unwrap_or(0) != 0 {
        out.push(empty_invalid("deprecatedCount", "needs to be unset"));
    }
    if ev
        .get("source")
        .and_then(Value::as_object)
        .is_some_and(|m| {
            m.values()
                .any(|v| v.as_str().is_some_and(|x| !x.is_empty()))
        })
    {
        out.push(empty_invalid("deprecatedSource", "needs to be unset"));
    }
    out
}

// ───────────────────────────── RBAC ─────────────────────────────

/// RoleBinding / ClusterRoleBinding checks (`ValidateRoleBinding*`): the roleRef is
/// required on create and immutable on update; subjects need a kind and a name.
pub fn role_binding(obj: &Value, old: Option<&Value>, namespaced: bool) -> Vec<Cause> {
    let mut out = Vec::new();
    let rr = &obj["roleRef"];
    if let Some(old) = old {
        if old["roleRef"] != *rr {
            out.push(cause(
                "FieldValueInvalid",
                "roleRef",
                format!(
                    "Invalid value: rbac.RoleRef{{APIGroup:{:?}, Kind:{:?}, Name:{:?}}}: cannot change roleRef",
                    rr["apiGroup"].as_str().unwrap_or_default(),
                    rr["kind"].as_str().unwrap_or_default(),
                    rr["name"].as_str().unwrap_or_default()
                ),
            ));
        }
        return out;
    }
    if rr["apiGroup"].as_str() != Some("rbac.authorization.k8s.io") {
        out.push(cause(
            "FieldValueNotSupported",
            "roleRef.apiGroup",
            format!(
                "Unsupported value: {:?}: supported values: \"rbac.authorization.k8s.io\"",
                rr["apiGroup"].as_str().unwrap_or_default()
            ),
        ));
    }
    let kinds: &[&str] = if namespaced {
        &["Role", "ClusterRole"]
    } else {
        &["ClusterRole"]
    };
    let kind = rr["kind"].as_str().unwrap_or_default();
    if !kinds.contains(&kind) {
        out.push(cause(
            "FieldValueNotSupported",
            "roleRef.kind",
            format!(
                "Unsupported value: {kind:?}: supported values: {}",
                kinds
                    .iter()
                    .map(|k| format!("{k:?}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ));
    }
    if rr["name"].as_str().unwrap_or_default().is_empty() {
        out.push(required("roleRef.name"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_parse_like_resource_parse_quantity() {
        for (s, want) in [
            ("1", 1.0),
            ("500m", 0.5),
            ("1.5", 1.5),
            ("2Gi", 2.0 * 1024f64.powi(3)),
            ("1e3", 1000.0),
            ("+3k", 3000.0),
        ] {
            assert_eq!(parse_quantity(s), Ok(want), "{s}");
        }
        for s in ["abc", "", "1.2.3", "1Q", "m", "1ee3"] {
            assert!(parse_quantity(s).is_err(), "{s}");
        }
    }

    #[test]
    fn qualified_names_and_port_names() {
        assert!(qualified_name_errors("example.com/my-name").is_empty());
        assert!(qualified_name_errors("orphan").is_empty());
        assert_eq!(
            qualified_name_errors("/x"),
            vec!["prefix part must be non-empty".to_string()]
        );
        assert_eq!(qualified_name_errors("a/b/c").len(), 1);
        assert!(qualified_name_errors("bad key!")[0].starts_with("name part must consist"));
        assert!(port_name_errors("http").is_empty());
        assert_eq!(
            port_name_errors("a-very-long-port-name"),
            vec!["must be no more than 15 characters".to_string()]
        );
        assert_eq!(
            port_name_errors("-a--"),
            vec![
                "must not contain consecutive hyphens".to_string(),
                "must not begin or end with a hyphen".to_string()
            ]
        );
        assert_eq!(
            dns1123_label_errors("a.b"),
            vec!["must not contain dots".to_string()]
        );
    }
}
