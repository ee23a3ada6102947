//! The resource registry (built-in kinds + kinds from CRDs) and the discovery documents.

use super::schema::CrdVersionSchema;
use serde_json::{Value, json};
use std::sync::Arc;

/// How `/scale` maps onto a custom resource (`spec.versions[].subresources.scale`).
#[derive(Debug, Clone)]
pub struct ScaleSpec {
    pub spec_replicas_path: String,
    pub status_replicas_path: String,
    pub label_selector_path: Option<String>,
}

/// What a CRD contributes to a custom resource.
#[derive(Debug, Clone)]
pub struct CrdInfo {
    pub crd_name: String,
    pub schema: Arc<CrdVersionSchema>,
    /// The raw `openAPIV3Schema` (for the OpenAPI documents).
    pub schema_value: Option<Value>,
    /// `additionalPrinterColumns` of the storage version.
    pub printer_columns: Vec<Value>,
}

#[derive(Debug, Clone)]
pub struct ResourceInfo {
    pub group: String,
    pub version: String,
    pub resource: String,
    pub singular: String,
    pub kind: String,
    pub namespaced: bool,
    pub short_names: Vec<String>,
    pub categories: Vec<String>,
    pub status_subresource: bool,
    pub scale: Option<ScaleSpec>,
    pub crd: Option<CrdInfo>,
    /// Whether writes bump `metadata.generation` (CRs and CRDs; the pod generation of v1.33+ is not modelled).
    pub has_generation: bool,
    /// Another view of the same storage (events.k8s.io/v1 events are core events).
    pub storage_group: String,
}

impl ResourceInfo {
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    pub fn verbs(&self) -> Vec<&'static str> {
        vec![
            "create",
            "delete",
            "deletecollection",
            "get",
            "list",
            "patch",
            "update",
            "watch",
        ]
    }

    pub fn is_custom(&self) -> bool {
        self.crd.is_some()
    }

    fn discovery_entries(&self) -> Vec<Value> {
        let mut out = vec![json!({
            "name": self.resource,
            "singularName": self.singular,
            "namespaced": self.namespaced,
            "kind": self.kind,
            "verbs": self.verbs(),
            "shortNames": self.short_names,
            "categories": self.categories,
        })];
        if out[0]["shortNames"]
            .as_array()
            .is_some_and(|a| a.is_empty())
            && let Some(o) = out[0].as_object_mut()
        {
            o.remove("shortNames");
        }
        if out[0]["categories"]
            .as_array()
            .is_some_and(|a| a.is_empty())
            && let Some(o) = out[0].as_object_mut()
        {
            o.remove("categories");
        }
        if self.status_subresource {
            out.push(json!({
                "name": format!("{}/status", self.resource),
                "singularName": "",
                "namespaced": self.namespaced,
                "kind": self.kind,
                "verbs": ["get", "patch", "update"],
            }));
        }
        if self.scale.is_some() {
            out.push(json!({
                "name": format!("{}/scale", self.resource),
                "singularName": "",
                "namespaced": self.namespaced,
                "group": "autoscaling",
                "version": "v1",
                "kind": "Scale",
                "verbs": ["get", "patch", "update"],
            }));
        }
        if self.group.is_empty() && self.resource == "pods" {
            out.push(json!({
                "name": "pods/binding",
                "singularName": "",
                "namespaced": true,
                "kind": "Binding",
                "verbs": ["create"],
            }));
        }
        out
    }
}

#[allow(clippy::too_many_arguments)]
fn builtin(
    group: &str,
    version: &str,
    resource: &str,
    singular: &str,
    kind: &str,
    namespaced: bool,
    short: &[&str],
    status: bool,
) -> ResourceInfo {
    ResourceInfo {
        group: group.into(),
        version: version.into(),
        resource: resource.into(),
        singular: singular.into(),
        kind: kind.into(),
        namespaced,
        short_names: short.iter().map(|s| s.to_string()).collect(),
        categories: Vec::new(),
        status_subresource: status,
        scale: None,
        crd: None,
        has_generation: false,
        storage_group: group.into(),
    }
}

/// The built-in resources this double serves.
pub fn builtins() -> Vec<ResourceInfo> {
    let mut pods = builtin("", "v1", "pods", "pod", "Pod", true, &["po"], true);
    pods.categories = vec!["all".into()];
    let mut services = builtin(
        "",
        "v1",
        "services",
        "service",
        "Service",
        true,
        &["svc"],
        true,
    );
    services.categories = vec!["all".into()];
    let mut crds = builtin(
        "apiextensions.k8s.io",
        "v1",
        "customresourcedefinitions",
        "customresourcedefinition",
        "CustomResourceDefinition",
        false,
        &["crd", "crds"],
        true,
    );
    crds.categories = vec!["api-extensions".into()];
    crds.has_generation = true;
    let mut new_events = builtin(
        "events.k8s.io",
        "v1",
        "events",
        "event",
        "Event",
        true,
        &["ev"],
        false,
    );
    new_events.storage_group = String::new();
    vec![
        builtin(
            "",
            "v1",
            "namespaces",
            "namespace",
            "Namespace",
            false,
            &["ns"],
            true,
        ),
        pods,
        builtin("", "v1", "secrets", "secret", "Secret", true, &[], false),
        builtin(
            "",
            "v1",
            "configmaps",
            "configmap",
            "ConfigMap",
            true,
            &["cm"],
            false,
        ),
        services,
        builtin(
            "",
            "v1",
            "serviceaccounts",
            "serviceaccount",
            "ServiceAccount",
            true,
            &["sa"],
            false,
        ),
        builtin("", "v1", "events", "event", "Event", true, &["ev"], false),
        builtin("", "v1", "nodes", "node", "Node", false, &["no"], true),
        new_events,
        builtin(
            "coordination.k8s.io",
            "v1",
            "leases",
            "lease",
            "Lease",
            true,
            &[],
            false,
        ),
        crds,
        // Stored and served so RBAC manifests and charts apply; not enforced (no
        // authorization at all, see tests/README.md).
        builtin(
            "rbac.authorization.k8s.io",
            "v1",
            "roles",
            "role",
            "Role",
            true,
            &[],
            false,
        ),
        builtin(
            "rbac.authorization.k8s.io",
            "v1",
            "rolebindings",
            "rolebinding",
            "RoleBinding",
            true,
            &[],
            false,
        ),
        builtin(
            "rbac.authorization.k8s.io",
            "v1",
            "clusterroles",
            "clusterrole",
            "ClusterRole",
            false,
            &[],
            false,
        ),
        builtin(
            "rbac.authorization.k8s.io",
            "v1",
            "clusterrolebindings",
            "clusterrolebinding",
            "ClusterRoleBinding",
            false,
            &[],
            false,
        ),
    ]
}

/// The served custom resource of a CRD object (its storage version), or why not.
pub fn from_crd(crd: &Value) -> Result<ResourceInfo, String> {
    let spec = crd.get("spec").ok_or("missing spec")?;
    let group = spec["group"].as_str().ok_or("missing spec.group")?;
    let names = &spec["names"];
    let plural = names["plural"]
        .as_str()
        .ok_or("missing spec.names.plural")?;
    let kind = names["kind"].as_str().ok_or("missing spec.names.kind")?;
    let singular = names["singular"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| kind.to_lowercase());
    let namespaced = spec["scope"].as_str() != Some("Cluster");
    let versions = spec["versions"].as_array().ok_or("missing spec.versions")?;
    let storage = versions
        .iter()
        .find(|v| v["storage"].as_bool() == Some(true))
        .or_else(|| versions.first())
        .ok_or("no versions")?;
    let version = storage["name"].as_str().ok_or("version without name")?;
    let schema = CrdVersionSchema::from_crd_version(storage)?;
    let scale = storage.pointer("/subresources/scale").map(|s| ScaleSpec {
        spec_replicas_path: s["specReplicasPath"]
            .as_str()
            .unwrap_or(".spec.replicas")
            .to_string(),
        status_replicas_path: s["statusReplicasPath"]
            .as_str()
            .unwrap_or(".status.replicas")
            .to_string(),
        label_selector_path: s["labelSelectorPath"].as_str().map(str::to_string),
    });
    let strs = |v: &Value| -> Vec<String> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    Ok(ResourceInfo {
        group: group.into(),
        version: version.into(),
        resource: plural.into(),
        singular,
        kind: kind.into(),
        namespaced,
        short_names: strs(&names["shortNames"]),
        categories: strs(&names["categories"]),
        status_subresource: storage.pointer("/subresources/status").is_some(),
        scale,
        crd: Some(CrdInfo {
            crd_name: crd
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            schema: Arc::new(schema),
            schema_value: storage.pointer("/schema/openAPIV3Schema").cloned(),
            printer_columns: storage["additionalPrinterColumns"]
                .as_array()
                .cloned()
                .unwrap_or_default(),
        }),
        has_generation: true,
        storage_group: group.into(),
    })
}

/// `/api`.
pub fn api_versions(addr: &str) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": addr}],
    })
}

/// `/api/v1` or `/apis/GROUP/VERSION`.
pub fn resource_list(resources: &[ResourceInfo], group: &str, version: &str) -> Option<Value> {
    let rs: Vec<&ResourceInfo> = resources
        .iter()
        .filter(|r| r.group == group && r.version == version)
        .collect();
    if rs.is_empty() {
        return None;
    }
    let gv = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    let entries: Vec<Value> = rs.iter().flat_map(|r| r.discovery_entries()).collect();
    Some(json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": gv,
        "resources": entries,
    }))
}

fn groups(resources: &[ResourceInfo]) -> Vec<(String, Vec<String>)> {
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    for r in resources.iter().filter(|r| !r.group.is_empty()) {
        match out.iter_mut().find(|(g, _)| *g == r.group) {
            Some((_, vs)) => {
                if !vs.contains(&r.version) {
                    vs.push(r.version.clone());
                }
            }
            None => out.push((r.group.clone(), vec![r.version.clone()])),
        }
    }
    out
}

fn group_doc(group: &str, versions: &[String]) -> Value {
    let vs: Vec<Value> = versions
        .iter()
        .map(|v| json!({"groupVersion": format!("{group}/{v}"), "version": v}))
        .collect();
    json!({
        "name": group,
        "versions": vs,
        "preferredVersion": vs.first().cloned().unwrap_or(Value::Null),
    })
}

/// `/apis`.
pub fn group_list(resources: &[ResourceInfo]) -> Value {
    let gs: Vec<Value> = groups(resources)
        .iter()
        .map(|(g, vs)| group_doc(g, vs))
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": gs})
}

/// `/apis/GROUP`.
pub fn group(resources: &[ResourceInfo], group: &str) -> Option<Value> {
    groups(resources)
        .into_iter()
        .find(|(g, _)| g == group)
        .map(|(g, vs)| {
            let mut d = group_doc(&g, &vs);
            d["kind"] = json!("APIGroup");
            d["apiVersion"] = json!("v1");
            d
        })
}
