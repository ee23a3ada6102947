//! OpenAPI v3 documents, enough for kubectl: `/openapi/v3` lists every group-version;
//! each group-version document has, per resource, the item path with a PATCH operation
//! tagged `x-kubernetes-group-version-kind` that declares the `fieldValidation`,
//! `fieldManager`, `force` and `dryRun` query parameters (kubectl checks this before
//! asking for server-side field validation), and a component schema per kind (the CRD's
//! structural schema for custom resources — so `kubectl explain` works for them — and an
//! open object for built-ins). `/openapi/v2` is not served (404), which kubectl
//! tolerates.

use super::resources::ResourceInfo;
use super::status::ApiError;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde_json::{Map, Value, json};

fn gv_path(ri: &ResourceInfo) -> String {
    if ri.group.is_empty() {
        format!("api/{}", ri.version)
    } else {
        format!("apis/{}/{}", ri.group, ri.version)
    }
}

/// The component name the real apiserver uses (`io.k8s.api.core.v1.Pod`, reversed
/// group for custom resources).
fn schema_name(ri: &ResourceInfo) -> String {
    if ri.is_custom() {
        let rev: Vec<&str> = ri.group.split('.').rev().collect();
        format!("{}.{}.{}", rev.join("."), ri.version, ri.kind)
    } else {
        let g = match ri.group.as_str() {
            "" => "core".to_string(),
            "apiextensions.k8s.io" => {
                return format!(
                    "io.k8s.apiextensions-apiserver.pkg.apis.apiextensions.{}.{}",
                    ri.version, ri.kind
                );
            }
            g => g.split('.').next().unwrap_or(g).to_string(),
        };
        format!("io.k8s.api.{g}.{}.{}", ri.version, ri.kind)
    }
}

fn gvk(ri: &ResourceInfo) -> Value {
    json!({"group": ri.group, "version": ri.version, "kind": ri.kind})
}

fn kind_schema(ri: &ResourceInfo) -> Value {
    let mut s = match &ri.crd {
        Some(_) => ri
            .crd
            .as_ref()
            .and_then(|c| c.schema_value.clone())
            .unwrap_or_else(|| json!({"type": "object"})),
        None => json!({
            "type": "object",
            "description": format!("{} (served by the workpool test double, which has no schema for built-in kinds).", ri.kind),
            "x-kubernetes-preserve-unknown-fields": true,
        }),
    };
    if let Some(props) = s
        .as_object_mut()
        .map(|m| m.entry("properties").or_insert_with(|| json!({})))
        .and_then(Value::as_object_mut)
    {
        props.entry("apiVersion").or_insert_with(|| json!({"type": "string", "description": "APIVersion defines the versioned schema of this representation of an object. Servers should convert recognized schemas to the latest internal value, and may reject unrecognized values. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#resources"}));
        props.entry("kind").or_insert_with(|| json!({"type": "string", "description": "Kind is a string value representing the REST resource this object represents. Servers may infer this from the endpoint the client submits requests to. Cannot be updated. In CamelCase. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#types-kinds"}));
        props.entry("metadata").or_insert_with(|| json!({"type": "object", "description": "Standard object's metadata. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#metadata"}));
    }
    s["x-kubernetes-group-version-kind"] = json!([gvk(ri)]);
    s
}

fn params() -> Value {
    let p = |name: &str, ty: &str| json!({"name": name, "in": "query", "schema": {"type": ty, "uniqueItems": true}});
    json!([
        p("dryRun", "string"),
        p("fieldManager", "string"),
        p("fieldValidation", "string"),
        p("force", "boolean")
    ])
}

fn gv_doc(resources: &[ResourceInfo], path: &str) -> Option<Value> {
    let rs: Vec<&ResourceInfo> = resources.iter().filter(|r| gv_path(r) == path).collect();
    if rs.is_empty() {
        return None;
    }
    let mut paths = Map::new();
    let mut schemas = Map::new();
    for ri in rs {
        let base = format!("/{}", gv_path(ri));
        let item = if ri.namespaced {
            format!("{base}/namespaces/{{namespace}}/{}/{{name}}", ri.resource)
        } else {
            format!("{base}/{}/{{name}}", ri.resource)
        };
        let reference = json!({"$ref": format!("#/components/schemas/{}", schema_name(ri))});
        let ok = json!({"200": {"description": "OK", "content": {"application/json": {"schema": reference}}}});
        paths.insert(item, json!({
            "get": {"x-kubernetes-action": "get", "x-kubernetes-group-version-kind": gvk(ri), "responses": ok},
            "put": {"x-kubernetes-action": "put", "x-kubernetes-group-version-kind": gvk(ri), "parameters": params(), "responses": ok},
            "patch": {"x-kubernetes-action": "patch", "x-kubernetes-group-version-kind": gvk(ri), "parameters": params(), "responses": ok},
        }));
        schemas.insert(schema_name(ri), kind_schema(ri));
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": "v1.37.2"},
        "paths": paths,
        "components": {"schemas": schemas},
    }))
}

pub fn serve(
    resources: &[ResourceInfo],
    rest: &[&str],
    _headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let ok = |v: Value| Ok(super::server::json_response(StatusCode::OK, &v, &[]));
    match rest {
        ["v3"] => {
            let mut paths = Map::new();
            for ri in resources {
                let p = gv_path(ri);
                paths.insert(
                    p.clone(),
                    json!({"serverRelativeURL": format!("/openapi/v3/{p}")}),
                );
            }
            ok(json!({"paths": paths}))
        }
        ["v3", rest @ ..] => {
            let p = rest.join("/");
            gv_doc(resources, &p).map_or_else(|| Err(ApiError::no_route()), ok)
        }
        _ => Err(ApiError::no_route()),
    }
}
