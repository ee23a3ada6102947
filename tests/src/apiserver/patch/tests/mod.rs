//! Unit tests, one file per concern; shared fixtures and helpers here.

use super::*;
use serde_json::json;

struct Lists(Vec<(&'static str, ListType)>);
impl ListSemantics for Lists {
    fn list_type(&self, path: &[String]) -> ListType {
        let p = path.join(".");
        self.0
            .iter()
            .find(|(k, _)| *k == p)
            .map(|(_, t)| t.clone())
            .unwrap_or(ListType::Atomic)
    }
}

fn core(api_version: &str, kind: &str) -> CoreListSemantics {
    CoreListSemantics {
        api_version: api_version.into(),
        kind: kind.into(),
    }
}

fn pod_lists() -> CoreListSemantics {
    core("v1", "Pod")
}

fn smp(target: Value, patch: Value) -> Value {
    strategic_merge_patch(&target, &patch, &pod_lists()).expect("smp")
}

fn ctx<'a>(manager: &'a str, lists: &'a dyn ListSemantics) -> ApplyContext<'a> {
    ApplyContext {
        manager,
        force: false,
        subresource: None,
        status_subresource: true,
        now: "2024-01-01T00:00:00Z",
        lists,
    }
}

fn managed(obj: &Value) -> Vec<Value> {
    obj["metadata"]["managedFields"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn entry<'a>(obj: &'a Value, manager: &str, op: &str) -> Option<&'a Value> {
    obj["metadata"]["managedFields"]
        .as_array()?
        .iter()
        .find(|e| e["manager"] == manager && e["operation"] == op)
}

fn conflicts(r: Result<Value, PatchError>) -> Vec<ApplyConflict> {
    match r {
        Err(PatchError::Conflict(c)) => c,
        other => panic!("expected a conflict, got {other:?}"),
    }
}

fn cm_config() -> Value {
    json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "test-cm", "namespace": "default", "labels": {"test-label": "test"}},
        "data": {"key": "some value"}
    })
}

fn deployment(replicas: i64, image: &str) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "nginx-deployment", "labels": {"app": "nginx"}},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": "nginx"}},
            "template": {
                "metadata": {"labels": {"app": "nginx"}},
                "spec": {"containers": [
                    {"name": "nginx", "image": image, "ports": [{"containerPort": 80}]}
                ]}
            }
        }
    })
}

mod apply;
mod fieldset;
mod json;
mod lists;
mod managed_fields;
mod merge;
mod robustness;
mod strategic;
