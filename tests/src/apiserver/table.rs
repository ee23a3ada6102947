//! Server-side printing: `meta.k8s.io/v1` Table answers for `kubectl get`.

use super::resources::ResourceInfo;
use serde_json::{Value, json};

/// `duration.HumanDuration` from apimachinery.
pub fn human_duration(secs: i64) -> String {
    if secs < -1 {
        return "<invalid>".into();
    }
    if secs < 0 {
        return "0s".into();
    }
    if secs < 120 {
        return format!("{secs}s");
    }
    let minutes = secs / 60;
    if minutes < 10 {
        let s = secs % 60;
        return if s == 0 {
            format!("{minutes}m")
        } else {
            format!("{minutes}m{s}s")
        };
    }
    if minutes < 180 {
        return format!("{minutes}m");
    }
    let hours = secs / 3600;
    if hours < 8 {
        let m = minutes % 60;
        return if m == 0 {
            format!("{hours}h")
        } else {
            format!("{hours}h{m}m")
        };
    }
    if hours < 48 {
        return format!("{hours}h");
    }
    if hours < 24 * 8 {
        let h = hours % 24;
        return if h == 0 {
            format!("{}d", hours / 24)
        } else {
            format!("{}d{h}h", hours / 24)
        };
    }
    if hours < 24 * 365 * 2 {
        return format!("{}d", hours / 24);
    }
    format!("{}y", hours / 24 / 365)
}

fn age_of(ts: Option<&str>) -> String {
    let Some(ts) = ts else {
        return "<unknown>".into();
    };
    match chrono::DateTime::parse_from_rfc3339(ts) {
        Ok(t) => human_duration(
            chrono::Utc::now()
                .signed_duration_since(t.with_timezone(&chrono::Utc))
                .num_seconds(),
        ),
        Err(_) => "<unknown>".into(),
    }
}

fn age(obj: &Value) -> Value {
    json!(age_of(
        obj.pointer("/metadata/creationTimestamp")
            .and_then(Value::as_str)
    ))
}

fn col(name: &str, ty: &str, format: &str, priority: i64, description: &str) -> Value {
    json!({"name": name, "type": ty, "format": format, "description": description, "priority": priority})
}

fn name_col() -> Value {
    col(
        "Name",
        "string",
        "name",
        0,
        "Name must be unique within a namespace. Is required when creating resources, although some resources may allow a client to request the generation of an appropriate name automatically. Name is primarily intended for creation idempotence and configuration definition. Cannot be updated. More info: https://kubernetes.io/docs/concepts/overview/working-with-objects/names#names",
    )
}

fn age_col() -> Value {
    col(
        "Age",
        "string",
        "",
        0,
        "CreationTimestamp is a timestamp representing the server time when this object was created. It is not guaranteed to be set in happens-before order across separate operations. Clients may not set this value. It is represented in RFC3339 form and is in UTC.\n\nPopulated by the system. Read-only. Null for lists. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#metadata",
    )
}

fn s<'a>(obj: &'a Value, ptr: &str) -> &'a str {
    obj.pointer(ptr).and_then(Value::as_str).unwrap_or_default()
}

fn or_none(v: &str) -> String {
    if v.is_empty() {
        "<none>".into()
    } else {
        v.to_string()
    }
}

fn pod_cells(p: &Value) -> Vec<Value> {
    let containers = p
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .map(Vec::len)
        .unwrap_or(0);
    let statuses = p
        .pointer("/status/containerStatuses")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let ready = statuses
        .iter()
        .filter(|c| c["ready"].as_bool() == Some(true))
        .count();
    let restarts: i64 = statuses
        .iter()
        .map(|c| c["restartCount"].as_i64().unwrap_or(0))
        .sum();
    let mut reason = s(p, "/status/phase").to_string();
    if !s(p, "/status/reason").is_empty() {
        reason = s(p, "/status/reason").to_string();
    }
    let mut has_running = false;
    for c in statuses.iter().rev() {
        let w = s(c, "/state/waiting/reason");
        let t = s(c, "/state/terminated/reason");
        if !w.is_empty() {
            reason = w.to_string();
        } else if !t.is_empty() {
            reason = t.to_string();
        } else if c.pointer("/state/terminated").is_some() {
            reason = match c
                .pointer("/state/terminated/signal")
                .and_then(Value::as_i64)
            {
                Some(sig) if sig != 0 => format!("Signal:{sig}"),
                _ => format!(
                    "ExitCode:{}",
                    c.pointer("/state/terminated/exitCode")
                        .and_then(Value::as_i64)
                        .unwrap_or(0)
                ),
            };
        } else if c["ready"].as_bool() == Some(true) && c.pointer("/state/running").is_some() {
            has_running = true;
        }
    }
    if reason == "Completed" && has_running {
        reason = "Running".into();
    }
    if p.pointer("/metadata/deletionTimestamp").is_some() {
        reason = if s(p, "/status/reason") == "NodeLost" {
            "Unknown".into()
        } else {
            "Terminating".into()
        };
    }
    vec![
        json!(p.pointer("/metadata/name").cloned().unwrap_or(Value::Null)),
        json!(format!("{ready}/{containers}")),
        json!(reason),
        json!(restarts),
        age(p),
        json!(or_none(s(p, "/status/podIP"))),
        json!(or_none(s(p, "/spec/nodeName"))),
        json!(or_none(s(p, "/status/nominatedNodeName"))),
        json!("<none>"),
    ]
}

fn len_of(v: Option<&Value>) -> usize {
    v.and_then(Value::as_object).map(|m| m.len()).unwrap_or(0)
}

/// Evaluates the simple JSONPath of printer columns: `.a.b`, `.a[0].b`,
/// `.a[?(@.k=="v")].b`. Returns the first match.
pub fn json_path<'a>(obj: &'a Value, path: &str) -> Option<&'a Value> {
    let p = path.trim().trim_start_matches('{').trim_end_matches('}');
    let p = p.strip_prefix('.').unwrap_or(p);
    let mut cur = obj;
    let mut rest = p;
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix('[') {
            let end = r.find(']')?;
            let inner = &r[..end];
            rest = &r[end + 1..];
            let arr = cur.as_array()?;
            if let Some(filter) = inner.strip_prefix("?(").and_then(|x| x.strip_suffix(')')) {
                let f = filter.strip_prefix("@.")?;
                let (k, v) = f.split_once("==")?;
                let v = v.trim().trim_matches('"').trim_matches('\'');
                let k = k.trim();
                cur = arr.iter().find(|e| match e.get(k) {
                    Some(Value::String(x)) => x == v,
                    Some(other) => {
                        let text = other.to_string();
                        text == v
                    }
                    None => false,
                })?;
            } else {
                let i: usize = inner.trim().parse().ok()?;
                cur = arr.get(i)?;
            }
        } else {
            let r = rest.strip_prefix('.').unwrap_or(rest);
            let end = r.find(['.', '[']).unwrap_or(r.len());
            let field = &r[..end];
            rest = &r[end..];
            if field.is_empty() {
                continue;
            }
            cur = cur.get(field)?;
        }
    }
    Some(cur)
}

/// Column definitions and row cells for a resource.
pub fn columns(ri: &ResourceInfo) -> Vec<Value> {
    if let Some(crd) = &ri.crd {
        let mut cols = vec![name_col()];
        if crd.printer_columns.is_empty() {
            cols.push(age_col());
        }
        for c in &crd.printer_columns {
            let ty = c["type"].as_str().unwrap_or("string");
            cols.push(json!({
                "name": c["name"].as_str().unwrap_or_default(),
                "type": ty,
                "format": c["format"].as_str().unwrap_or_default(),
                "description": c["description"].as_str().unwrap_or_default(),
                "priority": c["priority"].as_i64().unwrap_or(0),
            }));
        }
        return cols;
    }
    let c = |n: &str| col(n, "string", "", 0, "");
    match (ri.group.as_str(), ri.resource.as_str()) {
        ("", "pods") => vec![
            name_col(),
            c("Ready"),
            c("Status"),
            col("Restarts", "string", "", 0, ""),
            age_col(),
            col("IP", "string", "", 1, ""),
            col("Node", "string", "", 1, ""),
            col("Nominated Node", "string", "", 1, ""),
            col("Readiness Gates", "string", "", 1, ""),
        ],
        ("", "namespaces") => vec![name_col(), c("Status"), age_col()],
        ("", "configmaps") => vec![name_col(), col("Data", "integer", "", 0, ""), age_col()],
        ("", "secrets") => vec![
            name_col(),
            c("Type"),
            col("Data", "integer", "", 0, ""),
            age_col(),
        ],
        ("", "serviceaccounts") => {
            vec![name_col(), col("Secrets", "integer", "", 0, ""), age_col()]
        }
        ("", "services") => vec![
            name_col(),
            c("Type"),
            c("Cluster-IP"),
            c("External-IP"),
            c("Port(s)"),
            age_col(),
            col("Selector", "string", "", 1, ""),
        ],
        ("", "nodes") => vec![name_col(), c("Status"), c("Roles"), age_col(), c("Version")],
        (_, "events") => vec![
            c("Last Seen"),
            c("Type"),
            c("Reason"),
            c("Object"),
            c("Message"),
        ],
        ("coordination.k8s.io", "leases") => vec![name_col(), c("Holder"), age_col()],
        ("apiextensions.k8s.io", _) => vec![name_col(), col("Created At", "date", "", 0, "")],
        _ => vec![name_col(), age_col()],
    }
}

pub fn cells(ri: &ResourceInfo, o: &Value) -> Vec<Value> {
    let name = o.pointer("/metadata/name").cloned().unwrap_or(Value::Null);
    if let Some(crd) = &ri.crd {
        let mut out = vec![name];
        if crd.printer_columns.is_empty() {
            out.push(age(o));
        }
        for c in &crd.printer_columns {
            let path = c["jsonPath"].as_str().unwrap_or_default();
            let v = json_path(o, path).cloned();
            out.push(match (c["type"].as_str(), v) {
                (_, None) | (_, Some(Value::Null)) => Value::Null,
                (Some("date"), Some(Value::String(ts))) => json!(age_of(Some(&ts))),
                (_, Some(v)) => v,
            });
        }
        return out;
    }
    match (ri.group.as_str(), ri.resource.as_str()) {
        ("", "pods") => pod_cells(o),
        ("", "namespaces") => vec![name, json!(s(o, "/status/phase")), age(o)],
        ("", "configmaps") => vec![
            name,
            json!(len_of(o.get("data")) + len_of(o.get("binaryData"))),
            age(o),
        ],
        ("", "secrets") => vec![
            name,
            json!(s(o, "/type")),
            json!(len_of(o.get("data"))),
            age(o),
        ],
        ("", "serviceaccounts") => vec![
            name,
            json!(
                o.get("secrets")
                    .and_then(Value::as_array)
                    .map(Vec::len)
                    .unwrap_or(0)
            ),
            age(o),
        ],
        ("", "services") => {
            let ports: Vec<String> = o
                .pointer("/spec/ports")
                .and_then(Value::as_array)
                .map(|ps| {
                    ps.iter()
                        .map(|p| {
                            format!("{}/{}", p["port"], p["protocol"].as_str().unwrap_or("TCP"))
                        })
                        .collect()
                })
                .unwrap_or_default();
            let sel: Vec<String> = o
                .pointer("/spec/selector")
                .and_then(Value::as_object)
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                        .collect()
                })
                .unwrap_or_default();
            vec![
                name,
                json!(s(o, "/spec/type")),
                json!(or_none(s(o, "/spec/clusterIP"))),
                json!("<none>"),
                json!(or_none(&ports.join(","))),
                age(o),
                json!(or_none(&sel.join(","))),
            ]
        }
        ("", "nodes") => {
            let ready = o
                .pointer("/status/conditions")
                .and_then(Value::as_array)
                .and_then(|cs| cs.iter().find(|c| c["type"] == "Ready"))
                .map(|c| c["status"] == "True");
            let mut status = match ready {
                Some(true) => "Ready".to_string(),
                Some(false) => "NotReady".to_string(),
                None => "Unknown".to_string(),
            };
            if o.pointer("/spec/unschedulable").and_then(Value::as_bool) == Some(true) {
                status.push_str(",SchedulingDisabled");
            }
            vec![
                name,
                json!(status),
                json!("<none>"),
                age(o),
                json!(s(o, "/status/nodeInfo/kubeletVersion")),
            ]
        }
        (g, "events") => {
            let (io, msg) = if g.is_empty() {
                (o.get("involvedObject"), s(o, "/message"))
            } else {
                (o.get("regarding"), s(o, "/note"))
            };
            let io = io.cloned().unwrap_or(Value::Null);
            let last = [
                "/lastTimestamp",
                "/deprecatedLastTimestamp",
                "/eventTime",
                "/metadata/creationTimestamp",
            ]
            .iter()
            .find_map(|p| o.pointer(p).and_then(Value::as_str))
            .map(|t| age_of(Some(t)))
            .unwrap_or_else(|| "<unknown>".into());
            vec![
                json!(last),
                json!(s(o, "/type")),
                json!(s(o, "/reason")),
                json!(format!(
                    "{}/{}",
                    io["kind"].as_str().unwrap_or_default().to_lowercase(),
                    io["name"].as_str().unwrap_or_default()
                )),
                json!(msg),
            ]
        }
        ("coordination.k8s.io", "leases") => {
            vec![name, json!(s(o, "/spec/holderIdentity")), age(o)]
        }
        ("apiextensions.k8s.io", _) => vec![name, json!(s(o, "/metadata/creationTimestamp"))],
        _ => vec![name, age(o)],
    }
}

/// How rows carry their object (`includeObject`).
pub fn row_object(o: &Value, include: &str) -> Value {
    match include {
        "None" => Value::Null,
        "Object" => o.clone(),
        _ => json!({
            "kind": "PartialObjectMetadata",
            "apiVersion": "meta.k8s.io/v1",
            "metadata": o.get("metadata").cloned().unwrap_or(json!({})),
        }),
    }
}

/// A Table for `objs`.
pub fn table(
    ri: &ResourceInfo,
    objs: &[Value],
    include: &str,
    rv: &str,
    cont: Option<&str>,
    headers: bool,
) -> Value {
    let rows: Vec<Value> = objs
        .iter()
        .map(|o| json!({"cells": cells(ri, o), "object": row_object(o, include)}))
        .collect();
    let mut meta = json!({"resourceVersion": rv});
    if let Some(c) = cont {
        meta["continue"] = json!(c);
    }
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": meta,
        "columnDefinitions": if headers { json!(columns(ri)) } else { json!([]) },
        "rows": rows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_like_apimachinery() {
        assert_eq!(human_duration(5), "5s");
        assert_eq!(human_duration(119), "119s");
        assert_eq!(human_duration(125), "2m5s");
        assert_eq!(human_duration(600), "10m");
        assert_eq!(human_duration(3 * 3600 + 60), "3h1m");
        assert_eq!(human_duration(50 * 3600), "2d2h");
    }

    #[test]
    fn json_paths() {
        let o = json!({"spec": {"replicas": 3}, "status": {"conditions": [
            {"type": "Other", "status": "False"}, {"type": "Ready", "status": "True"}]}});
        assert_eq!(json_path(&o, ".spec.replicas"), Some(&json!(3)));
        assert_eq!(
            json_path(&o, ".status.conditions[?(@.type==\"Ready\")].status"),
            Some(&json!("True"))
        );
        assert_eq!(
            json_path(&o, ".status.conditions[0].type"),
            Some(&json!("Other"))
        );
        assert_eq!(json_path(&o, ".spec.missing"), None);
    }
}
