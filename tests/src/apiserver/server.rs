//! HTTP front: routing, verbs, content negotiation (JSON / Table), patches, scale.

use super::builtins;
use super::faults::{FaultConfig, FaultInjector};
use super::openapi;
use super::patch::{self, ApplyContext, CoreListSemantics, PatchError};
use super::protobuf;
use super::resources::{self, ResourceInfo};
use super::selectors::{FieldSelector, LabelSelector};
use super::status::{self, ApiError};
use super::store::{
    DeleteOpts, Deleted, State, WriteOpts, name_of, namespace_of, now_rfc3339, uid_of,
};
use super::table;
use super::types::ListSemantics;
use super::watch;
use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// Tunables of the double.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// How many change events are kept for watches to resume from; older versions
    /// answer 410 Gone (Expired).
    pub history_limit: usize,
    /// How often a watch with `allowWatchBookmarks=true` gets a BOOKMARK.
    pub bookmark_interval: Duration,
    /// Watch length when the client gives no `timeoutSeconds`.
    pub default_watch_timeout: Duration,
    /// How often the garbage collector / namespace controller runs.
    pub gc_interval: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            history_limit: 10_000,
            bookmark_interval: Duration::from_secs(5),
            default_watch_timeout: Duration::from_secs(1800),
            gc_interval: Duration::from_millis(100),
        }
    }
}

pub struct Shared {
    state: Mutex<State>,
    pub faults: FaultInjector,
    pub config: ServerConfig,
    pub addr: SocketAddr,
    /// Work directories of process kubelets whose container logs `pods/log` serves.
    pub log_dirs: Mutex<Vec<std::path::PathBuf>>,
}

impl Shared {
    pub fn new(config: ServerConfig, addr: SocketAddr, faults: FaultInjector) -> Self {
        Shared {
            state: Mutex::new(State::new(config.history_limit)),
            faults,
            config,
            addr,
            log_dirs: Mutex::new(Vec::new()),
        }
    }

    pub fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One parsed resource URL.
#[derive(Debug, Clone)]
pub struct Target {
    pub ri: ResourceInfo,
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub sub: Option<String>,
}

pub type Query = Vec<(String, String)>;

pub fn q<'a>(query: &'a Query, key: &str) -> Option<&'a str> {
    query
        .iter()
        .rev()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

fn q_bool(query: &Query, key: &str) -> bool {
    matches!(q(query, key), Some("true") | Some("1"))
}

pub fn json_response(code: StatusCode, body: &Value, warnings: &[String]) -> Response {
    let mut resp = (code, body.to_string()).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    for w in warnings {
        let v = format!("299 - \"{}\"", w.replace('"', "\\\""));
        if let Ok(h) = HeaderValue::from_str(&v) {
            resp.headers_mut().append(header::WARNING, h);
        }
    }
    resp
}

pub fn error_response(e: &ApiError) -> Response {
    let mut resp = json_response(e.status_code(), &e.body, &[]);
    if let Some(s) = e.retry_after
        && let Ok(h) = HeaderValue::from_str(&s.to_string())
    {
        resp.headers_mut().insert(header::RETRY_AFTER, h);
    }
    resp
}

fn wants_table(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("as=Table"))
}

/// The default field manager: the user agent up to the first '/'.
fn manager_of(query: &Query, headers: &HeaderMap) -> String {
    if let Some(m) = q(query, "fieldManager") {
        return m.to_string();
    }
    let ua = headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("unknown");
    ua.split('/').next().unwrap_or("unknown").to_string()
}

/// The entry point for every request.
pub async fn handle(
    shared: Arc<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let query: Query = uri.query().map(url_decode_pairs).unwrap_or_default();
    let path = uri.path().trim_end_matches('/').to_string();
    if path.starts_with("/_test/faults") {
        return faults_endpoint(&shared.faults, &method, &body);
    }
    if path == "/_test/compact" && method == Method::POST {
        let rv = {
            let mut st = shared.lock();
            st.compact();
            st.rv
        };
        return json_response(
            StatusCode::OK,
            &json!({"compactedResourceVersion": rv.to_string()}),
            &[],
        );
    }
    let delay = shared.faults.delay_ms();
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    match route(&shared, &method, &path, &query, &headers, body).await {
        Ok(r) => r,
        Err(e) => error_response(&e),
    }
}

fn url_decode_pairs(qs: &str) -> Query {
    qs.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (pct_decode(k), pct_decode(v))
        })
        .collect()
}

fn pct_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => match u8::from_str_radix(&s[i + 1..i + 3], 16) {
                Ok(v) => {
                    out.push(v);
                    i += 2;
                }
                Err(_) => out.push(b'%'),
            },
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn faults_endpoint(faults: &FaultInjector, method: &Method, body: &Bytes) -> Response {
    match *method {
        Method::GET => json_response(StatusCode::OK, &json!(faults.config()), &[]),
        Method::DELETE => {
            faults.clear();
            json_response(StatusCode::OK, &json!(faults.config()), &[])
        }
        Method::POST | Method::PUT => match serde_json::from_slice::<FaultConfig>(body) {
            Ok(cfg) => {
                faults.set(cfg);
                json_response(StatusCode::OK, &json!(faults.config()), &[])
            }
            Err(e) => error_response(&ApiError::bad_request(format!(
                "invalid fault configuration: {e}"
            ))),
        },
        _ => error_response(&ApiError::method_not_allowed()),
    }
}

async fn route(
    shared: &Arc<Shared>,
    method: &Method,
    path: &str,
    query: &Query,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let ok = |v: Value| Ok(json_response(StatusCode::OK, &v, &[]));
    match segs.as_slice() {
        [] => ok(
            json!({"paths": ["/api", "/api/v1", "/apis", "/healthz", "/livez", "/openapi/v2", "/openapi/v3", "/readyz", "/version"]}),
        ),
        ["healthz"] | ["livez"] | ["readyz"] => Ok((StatusCode::OK, "ok").into_response()),
        ["version"] => ok(json!({
            "major": "1", "minor": "37", "gitVersion": "v1.37.2-workpool-testcluster",
            "gitCommit": "0000000000000000000000000000000000000000", "gitTreeState": "clean",
            "buildDate": "2026-01-01T00:00:00Z", "goVersion": "go1.25.0", "compiler": "gc",
            "platform": "linux/amd64",
        })),
        ["api"] => ok(resources::api_versions(&shared.addr.to_string())),
        ["apis"] => ok(resources::group_list(&shared.lock().resources())),
        ["openapi", rest @ ..] => {
            let st = shared.lock();
            openapi::serve(&st.resources(), rest, headers)
        }
        ["api", "v1"] => ok(
            resources::resource_list(&shared.lock().resources(), "", "v1")
                .ok_or_else(ApiError::no_route)?,
        ),
        ["apis", g] => {
            ok(resources::group(&shared.lock().resources(), g).ok_or_else(ApiError::no_route)?)
        }
        ["apis", g, v] => ok(resources::resource_list(&shared.lock().resources(), g, v)
            .ok_or_else(ApiError::no_route)?),
        ["api", "v1", rest @ ..] => {
            let t = parse_target(shared, "", "v1", rest)?;
            serve_resource(shared, method, t, query, headers, body).await
        }
        ["apis", g, v, rest @ ..] => {
            let t = parse_target(shared, g, v, rest)?;
            serve_resource(shared, method, t, query, headers, body).await
        }
        _ => Err(ApiError::no_route()),
    }
}

fn parse_target(
    shared: &Shared,
    group: &str,
    version: &str,
    rest: &[&str],
) -> Result<Target, ApiError> {
    let st = shared.lock();
    let find = |r: &str| {
        st.resource(group, version, r)
            .ok_or_else(ApiError::no_route)
    };
    let owned = |s: &str| Some(s.to_string());
    let t = match rest {
        ["namespaces", ns, r] if !(["status", "finalize"].contains(r)) => Target {
            ri: find(r)?,
            namespace: owned(ns),
            name: None,
            sub: None,
        },
        ["namespaces", ns, r, name] => Target {
            ri: find(r)?,
            namespace: owned(ns),
            name: owned(name),
            sub: None,
        },
        ["namespaces", ns, r, name, sub] => Target {
            ri: find(r)?,
            namespace: owned(ns),
            name: owned(name),
            sub: owned(sub),
        },
        [r] => Target {
            ri: find(r)?,
            namespace: None,
            name: None,
            sub: None,
        },
        [r, name] => Target {
            ri: find(r)?,
            namespace: None,
            name: owned(name),
            sub: None,
        },
        [r, name, sub] => Target {
            ri: find(r)?,
            namespace: None,
            name: owned(name),
            sub: owned(sub),
        },
        _ => return Err(ApiError::no_route()),
    };
    if t.ri.namespaced && t.name.is_some() && t.namespace.is_none() {
        return Err(ApiError::no_route());
    }
    if !t.ri.namespaced && t.namespace.is_some() {
        return Err(ApiError::no_route());
    }
    if let Some(sub) = &t.sub {
        let ok = match sub.as_str() {
            "status" => t.ri.status_subresource,
            "scale" => t.ri.scale.is_some(),
            "binding" => t.ri.group.is_empty() && t.ri.resource == "pods",
            "finalize" => t.ri.resource == "namespaces",
            "log" => t.ri.group.is_empty() && t.ri.resource == "pods",
            _ => false,
        };
        if !ok {
            return Err(ApiError::no_route());
        }
    }
    Ok(t)
}

fn verb_of(method: &Method, t: &Target, query: &Query) -> &'static str {
    match (method.as_str(), t.name.is_some()) {
        ("GET", false) if q_bool(query, "watch") => "watch",
        ("GET", false) => "list",
        ("GET", true) => "get",
        ("POST", _) => "create",
        ("PUT", _) => "update",
        ("PATCH", _) => "patch",
        ("DELETE", false) => "deletecollection",
        ("DELETE", true) => "delete",
        _ => "unknown",
    }
}

fn injected(status: u16, retry: Option<u64>, t: &Target) -> ApiError {
    let name = t.name.clone().unwrap_or_default();
    match status {
        429 => {
            let secs = retry.unwrap_or(1);
            let mut e = ApiError::new(
                429,
                "TooManyRequests",
                "the server has received too many requests and has asked us to try again later",
                Some(
                    json!({"causes": [{"reason": "UnexpectedServerResponse", "message": "injected fault"}], "retryAfterSeconds": secs}),
                ),
            );
            e.retry_after = Some(secs);
            e
        }
        409 => ApiError::stale(&t.ri.group, &t.ri.resource, &name),
        500 => ApiError::internal("injected fault"),
        503 => ApiError::new(
            503,
            "ServiceUnavailable",
            "the server is currently unable to handle the request (injected fault)",
            None,
        ),
        other => ApiError::new(
            other,
            "InternalError",
            format!("injected fault ({other})"),
            None,
        ),
    }
}

fn parse_body(body: &Bytes) -> Result<Value, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(format!("couldn't get version/kind; json parse error: {e}"))
    })
}

async fn serve_resource(
    shared: &Arc<Shared>,
    method: &Method,
    t: Target,
    query: &Query,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let verb = verb_of(method, &t, query);
    if let Some(f) = shared.faults.check(verb, &t.ri.resource, t.sub.as_deref()) {
        return Err(injected(f.status, f.retry_after_seconds, &t));
    }
    let opts = WriteOpts {
        manager: manager_of(query, headers),
        dry_run: q(query, "dryRun") == Some("All"),
        field_validation: q(query, "fieldValidation").unwrap_or("").to_string(),
    };
    let ns = t.namespace.clone().unwrap_or_default();
    let table = wants_table(headers);
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let body = if (verb == "create" || verb == "update")
        && ct.starts_with("application/vnd.kubernetes.protobuf")
    {
        let obj = protobuf::decode(&body).map_err(|why| {
            ApiError::new(
                415,
                "UnsupportedMediaType",
                format!("the body of the request was in an unknown format - accepted media types include: application/json, application/yaml ({why})"),
                None,
            )
        })?;
        Bytes::from(obj.to_string())
    } else if (verb == "create" || verb == "update")
        && !body.is_empty()
        && !ct.is_empty()
        && !ct.starts_with("application/json")
        && !ct.starts_with("*/*")
    {
        return Err(ApiError::new(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format - accepted media types include: application/json, application/yaml, application/vnd.kubernetes.protobuf (got {ct})"
            ),
            None,
        ));
    } else {
        body
    };
    match verb {
        "watch" => Ok(watch::serve(shared.clone(), t, query, table)),
        "list" => list(shared, &t, query, headers),
        "get" => {
            let name = t.name.clone().unwrap_or_default();
            let st = shared.lock();
            let obj = st
                .get(&t.ri, &ns, &name)
                .ok_or_else(|| ApiError::not_found(&t.ri.group, &t.ri.resource, &name))?;
            drop(st);
            if t.sub.as_deref() == Some("log") {
                let dirs = shared
                    .log_dirs
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone();
                return pod_log(&obj, query, &dirs);
            }
            let out = match t.sub.as_deref() {
                Some("scale") => to_scale(&t.ri, &obj)?,
                _ if table => {
                    let rv = obj
                        .pointer("/metadata/resourceVersion")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_string();
                    table::table(
                        &t.ri,
                        &[obj],
                        q(query, "includeObject").unwrap_or("Metadata"),
                        &rv,
                        None,
                        true,
                    )
                }
                _ => obj,
            };
            Ok(json_response(StatusCode::OK, &out, &[]))
        }
        "create" => {
            let mut obj = parse_body(&body)?;
            if t.sub.as_deref() == Some("binding") {
                return bind(shared, &t, &ns, obj);
            }
            if t.name.is_some() {
                return Err(ApiError::method_not_allowed());
            }
            if t.ri.resource == "namespaces" && t.ri.group.is_empty() {
                obj["metadata"]["namespace"] = Value::Null;
                if let Some(m) = obj["metadata"].as_object_mut() {
                    m.remove("namespace");
                }
            }
            let mut st = shared.lock();
            st.warnings.clear();
            let res = st.create(&t.ri, &ns, obj, &opts);
            let warnings = std::mem::take(&mut st.warnings);
            drop(st);
            Ok(json_response(StatusCode::CREATED, &res?, &warnings))
        }
        "update" => {
            let name = t.name.clone().unwrap_or_default();
            let obj = parse_body(&body)?;
            if t.sub.as_deref() == Some("scale") {
                return write_scale(shared, &t, &ns, &name, |_| Ok(obj.clone()), &opts);
            }
            let sub = t
                .sub
                .as_deref()
                .filter(|s| *s == "status" || *s == "finalize");
            let sub = if sub == Some("finalize") { None } else { sub };
            let mut st = shared.lock();
            // A PUT's uid is a precondition (`defaultUpdatedObjectInfo.Preconditions`).
            if let Some(uid) = obj
                .pointer("/metadata/uid")
                .and_then(Value::as_str)
                .filter(|u| !u.is_empty())
                && let Some(live) = st.get(&t.ri, &ns, &name)
                && uid != uid_of(&live)
            {
                return Err(ApiError::conflict(
                    &t.ri.group,
                    &t.ri.resource,
                    &name,
                    &format!(
                        "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                        uid_of(&live)
                    ),
                ));
            }
            st.warnings.clear();
            let res = st.update(&t.ri, &ns, &name, obj, sub, &opts, true);
            let warnings = std::mem::take(&mut st.warnings);
            drop(st);
            Ok(json_response(StatusCode::OK, &res?, &warnings))
        }
        "patch" => patch_resource(shared, &t, &ns, query, headers, &body, &opts),
        "delete" => {
            let name = t.name.clone().unwrap_or_default();
            let dopts = delete_opts(query, &body)?;
            let mut st = shared.lock();
            let res = st.delete(&t.ri, &ns, &name, &dopts)?;
            drop(st);
            Ok(json_response(
                StatusCode::OK,
                &delete_answer(&t.ri, res),
                &[],
            ))
        }
        "deletecollection" => {
            let dopts = delete_opts(query, &body)?;
            let (ls, fs) = selectors(&t.ri, query)?;
            let mut st = shared.lock();
            let targets: Vec<Value> = st
                .list(&t.ri, t.namespace.as_deref())
                .into_iter()
                .filter(|o| matches(&t.ri, o, &ls, &fs))
                .collect();
            let mut items = Vec::new();
            for o in targets {
                let name = name_of(&o).to_string();
                let ons = namespace_of(&o).to_string();
                match st.delete(&t.ri, &ons, &name, &dopts) {
                    Ok(Deleted::Gone(o)) | Ok(Deleted::Pending(o)) => items.push(o),
                    Err(e) if e.code == 404 => {}
                    Err(e) => return Err(e),
                }
            }
            let rv = st.rv.to_string();
            drop(st);
            Ok(json_response(
                StatusCode::OK,
                &json!({"kind": format!("{}List", t.ri.kind), "apiVersion": t.ri.api_version(),
                        "metadata": {"resourceVersion": rv}, "items": items}),
                &[],
            ))
        }
        _ => Err(ApiError::method_not_allowed()),
    }
}

/// `GET pods/{name}/log`. As the apiserver: the container must be named when the pod
/// has several (`validateContainer`), and a pod not yet bound to a node has an empty log.
/// A bound pod's log is read from the process kubelet's file
/// `<work_dir>/<ns>_<pod>_<uid>/<container>.log` when its work directory was registered
/// ([`super::ApiServer::add_kubelet_log_dir`]); `tailLines` and `limitBytes` apply,
/// `follow` answers what is there. Otherwise it is refused (400 naming the file).
fn pod_log(pod: &Value, query: &Query, dirs: &[std::path::PathBuf]) -> Result<Response, ApiError> {
    let name = name_of(pod);
    let names = |key: &str| -> Vec<String> {
        pod.pointer(&format!("/spec/{key}"))
            .and_then(Value::as_array)
            .map(|cs| {
                cs.iter()
                    .filter_map(|c| c["name"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    let containers = names("containers");
    let init = names("initContainers");
    let container = match q(query, "container").filter(|c| !c.is_empty()) {
        Some(c) if containers.iter().chain(&init).any(|n| n == c) => c.to_string(),
        Some(c) => {
            return Err(ApiError::bad_request(format!(
                "container {c} is not valid for pod {name}"
            )));
        }
        None if containers.len() == 1 => containers[0].clone(),
        None if containers.is_empty() => {
            return Err(ApiError::bad_request(format!(
                "a container name must be specified for pod {name}"
            )));
        }
        None => {
            let mut msg = format!(
                "a container name must be specified for pod {name}, choose one of: [{}]",
                containers.join(" ")
            );
            if !init.is_empty() {
                msg.push_str(&format!(
                    " or one of the init containers: [{}]",
                    init.join(" ")
                ));
            }
            return Err(ApiError::bad_request(msg));
        }
    };
    let bound = pod
        .pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .is_some_and(|n| !n.is_empty());
    if !bound {
        return Ok((
            StatusCode::OK,
            [(header::CONTENT_TYPE, "text/plain")],
            String::new(),
        )
            .into_response());
    }
    let rel = format!(
        "{}_{name}_{}/{container}.log",
        namespace_of(pod),
        uid_of(pod)
    );
    if let Some(bytes) = dirs.iter().find_map(|d| std::fs::read(d.join(&rel)).ok()) {
        let mut text = String::from_utf8_lossy(&bytes).into_owned();
        if let Some(n) = q(query, "tailLines").and_then(|n| n.parse::<usize>().ok()) {
            let lines: Vec<&str> = text.split_inclusive('\n').collect();
            text = lines[lines.len().saturating_sub(n)..].concat();
        }
        if let Some(n) = q(query, "limitBytes").and_then(|n| n.parse::<usize>().ok()) {
            let mut cut = n.min(text.len());
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            text.truncate(cut);
        }
        return Ok((StatusCode::OK, [(header::CONTENT_TYPE, "text/plain")], text).into_response());
    }
    Err(ApiError::bad_request(format!(
        "the API double has no log for container {container} in pod {name}: it serves the process kubelet's <work_dir>/{rel} only for work directories registered with ApiServer::add_kubelet_log_dir"
    )))
}

fn returns_deleted_object(ri: &ResourceInfo) -> bool {
    ri.group.is_empty()
        && matches!(
            ri.resource.as_str(),
            "pods" | "serviceaccounts" | "namespaces"
        )
}

fn delete_answer(ri: &ResourceInfo, res: Deleted) -> Value {
    match res {
        Deleted::Pending(o) => o,
        Deleted::Gone(o) if returns_deleted_object(ri) => o,
        Deleted::Gone(o) => status::success(200, name_of(&o), &ri.group, &ri.resource, uid_of(&o)),
    }
}

fn delete_opts(query: &Query, body: &Bytes) -> Result<DeleteOpts, ApiError> {
    // Clients send no body, `{}`, `{"kind":"DeleteOptions","apiVersion":"v1",...}`, or
    // (client-go with a protobuf content type, e.g. Helm) the protobuf encoding.
    let b: Value = if body.iter().all(u8::is_ascii_whitespace) {
        json!({})
    } else if body.starts_with(b"k8s\0") {
        protobuf::decode_delete_options(body)
            .map_err(|e| ApiError::bad_request(format!("invalid DeleteOptions: {e}")))?
    } else {
        serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("invalid DeleteOptions: {e}")))?
    };
    if !b.is_object() && !b.is_null() {
        return Err(ApiError::bad_request(
            "invalid DeleteOptions: expected an object",
        ));
    }
    let grace = match q(query, "gracePeriodSeconds") {
        Some(s) => Some(
            s.parse::<i64>()
                .map_err(|_| ApiError::bad_request(format!("invalid gracePeriodSeconds {s:?}")))?,
        ),
        None => b["gracePeriodSeconds"].as_i64(),
    };
    let mut propagation = q(query, "propagationPolicy")
        .map(str::to_string)
        .or_else(|| b["propagationPolicy"].as_str().map(str::to_string));
    if propagation.is_none() {
        match b["orphanDependents"]
            .as_bool()
            .or(q(query, "orphanDependents").map(|s| s == "true"))
        {
            Some(true) => propagation = Some("Orphan".into()),
            Some(false) => propagation = Some("Background".into()),
            None => {}
        }
    }
    if let Some(p) = &propagation
        && !["Orphan", "Background", "Foreground"].contains(&p.as_str())
    {
        {
            return Err(ApiError::invalid(
                "meta.k8s.io",
                "DeleteOptions",
                "",
                &[status::cause(
                    "FieldValueNotSupported",
                    "propagationPolicy",
                    format!(
                        "Unsupported value: \"{p}\": supported values: \"Foreground\", \"Background\", \"Orphan\", \"nil\""
                    ),
                )],
            ));
        }
    }
    let dry = q(query, "dryRun") == Some("All")
        || b["dryRun"]
            .as_array()
            .is_some_and(|a| a.iter().any(|x| x == "All"));
    Ok(DeleteOpts {
        grace_period: grace,
        propagation,
        precondition_uid: b
            .pointer("/preconditions/uid")
            .and_then(Value::as_str)
            .map(str::to_string),
        precondition_rv: b
            .pointer("/preconditions/resourceVersion")
            .and_then(Value::as_str)
            .map(str::to_string),
        dry_run: dry,
    })
}

pub fn selectors(
    ri: &ResourceInfo,
    query: &Query,
) -> Result<(LabelSelector, FieldSelector), ApiError> {
    let ls = LabelSelector::parse(q(query, "labelSelector").unwrap_or(""))
        .map_err(ApiError::bad_request)?;
    let res = ri.resource.clone();
    let fs = FieldSelector::parse(q(query, "fieldSelector").unwrap_or(""), &|f| {
        builtins::field_supported(&res, f) || (ri.is_custom() && (f == "metadata.name" || f == "metadata.namespace"))
    })
    .map_err(|e| ApiError::bad_request(format!("Unable to find \"{}/{}, Resource={}\" that match label selector \"\", field selector \"{}\": {e}", ri.group, ri.version, ri.resource, q(query, "fieldSelector").unwrap_or(""))))?;
    Ok((ls, fs))
}

/// Whether an object (in the resource's served view) matches the selectors.
pub fn matches(ri: &ResourceInfo, o: &Value, ls: &LabelSelector, fs: &FieldSelector) -> bool {
    let labels = o.pointer("/metadata/labels").cloned().unwrap_or(json!({}));
    if !ls.matches(&labels) {
        return false;
    }
    if fs.is_empty() {
        return true;
    }
    let core = if ri.group == "events.k8s.io" {
        builtins::event_from_v1(o)
    } else {
        o.clone()
    };
    fs.matches(&|f| builtins::field_value(&core, f))
}

#[derive(serde::Serialize, serde::Deserialize)]
struct ContinueToken {
    rv: u64,
    start: String,
}

fn list(
    shared: &Arc<Shared>,
    t: &Target,
    query: &Query,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let (ls, fs) = selectors(&t.ri, query)?;
    let st = shared.lock();
    let limit = q(query, "limit")
        .and_then(|l| l.parse::<usize>().ok())
        .filter(|l| *l > 0);
    let mut list_rv = st.rv;
    let mut start_after: Option<String> = None;
    if let Some(c) = q(query, "continue").filter(|c| !c.is_empty()) {
        let tok: ContinueToken = base64::engine::general_purpose::STANDARD
            .decode(c)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or_else(|| {
                ApiError::bad_request("continue key is not valid: invalid continue token")
            })?;
        if tok.rv < st.compacted_rv {
            return Err(ApiError::expired(
                "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter, or use the continue token in this response to retrieve the remainder of the results. Continuing with the provided token results in an inconsistent list - objects that were created, modified, or deleted between the time the first chunk was returned and now may show up in the list.",
            ));
        }
        list_rv = tok.rv;
        start_after = Some(tok.start);
    } else if q(query, "resourceVersionMatch") == Some("Exact") {
        let rv: u64 = q(query, "resourceVersion")
            .and_then(|r| r.parse().ok())
            .unwrap_or(0);
        if rv != st.rv {
            if rv < st.compacted_rv {
                return Err(ApiError::expired(format!(
                    "too old resource version: {rv} ({})",
                    st.compacted_rv + 1
                )));
            }
            return Err(ApiError::new(
                500,
                "InternalError",
                "Internal error occurred: listing at an exact older resourceVersion is not modelled by this test double",
                None,
            ));
        }
    }
    let all: Vec<Value> = st
        .list(&t.ri, t.namespace.as_deref())
        .into_iter()
        .filter(|o| matches(&t.ri, o, &ls, &fs))
        .filter(|o| match &start_after {
            Some(s) => format!("{}/{}", namespace_of(o), name_of(o)).as_str() > s.as_str(),
            None => true,
        })
        .collect();
    drop(st);
    let (items, cont, remaining) = match limit {
        Some(l) if all.len() > l => {
            let items: Vec<Value> = all[..l].to_vec();
            let last = &items[l - 1];
            let tok = ContinueToken {
                rv: list_rv,
                start: format!("{}/{}", namespace_of(last), name_of(last)),
            };
            let enc = base64::engine::general_purpose::STANDARD
                .encode(serde_json::to_vec(&tok).unwrap_or_default());
            let rem = all.len() - l;
            (items, Some(enc), Some(rem))
        }
        _ => (all, None, None),
    };
    if wants_table(headers) {
        let tbl = table::table(
            &t.ri,
            &items,
            q(query, "includeObject").unwrap_or("Metadata"),
            &list_rv.to_string(),
            cont.as_deref(),
            true,
        );
        return Ok(json_response(StatusCode::OK, &tbl, &[]));
    }
    let mut meta = json!({"resourceVersion": list_rv.to_string()});
    if let Some(c) = cont {
        meta["continue"] = json!(c);
        // Like the apiserver's etcd store: with a selector the count would include
        // objects that do not match, so it is left out rather than given wrong.
        if ls.is_empty() && fs.is_empty() {
            meta["remainingItemCount"] = json!(remaining);
        }
    }
    Ok(json_response(
        StatusCode::OK,
        &json!({"kind": format!("{}List", t.ri.kind), "apiVersion": t.ri.api_version(), "metadata": meta, "items": items}),
        &[],
    ))
}

fn bind(shared: &Arc<Shared>, t: &Target, ns: &str, binding: Value) -> Result<Response, ApiError> {
    let name = t.name.clone().unwrap_or_default();
    let node = binding
        .pointer("/target/name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    if node.is_empty() {
        return Err(ApiError::invalid(
            "",
            "Binding",
            &name,
            &[status::cause(
                "FieldValueRequired",
                "target.name",
                "Required value",
            )],
        ));
    }
    let mut st = shared.lock();
    let key = State::key(&t.ri, ns, &name);
    let pod = st
        .objects
        .get(&key)
        .cloned()
        .ok_or_else(|| ApiError::not_found("", "pods", &name))?;
    if pod.pointer("/metadata/deletionTimestamp").is_some() {
        return Err(ApiError::conflict(
            "",
            "pods",
            &name,
            "pod is being deleted, cannot be assigned to a host",
        ));
    }
    let cur = pod
        .pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if !cur.is_empty() {
        return Err(ApiError::conflict(
            "",
            "pods",
            &name,
            &format!("pod {name} is already assigned to node \"{cur}\""),
        ));
    }
    let mut new = pod.clone();
    new["spec"]["nodeName"] = json!(node);
    let cond = json!({"type": "PodScheduled", "status": "True", "lastProbeTime": null, "lastTransitionTime": now_rfc3339()});
    match new
        .pointer_mut("/status/conditions")
        .and_then(Value::as_array_mut)
    {
        Some(cs) => {
            cs.retain(|c| c["type"] != "PodScheduled");
            cs.push(cond);
        }
        None => new["status"]["conditions"] = json!([cond]),
    }
    for f in ["labels", "annotations"] {
        if let Some(m) = binding
            .pointer(&format!("/metadata/{f}"))
            .and_then(Value::as_object)
        {
            for (k, v) in m {
                new["metadata"][f][k] = v.clone();
            }
        }
    }
    st.controller_write(&key, new);
    drop(st);
    Ok(json_response(
        StatusCode::CREATED,
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
        &[],
    ))
}

fn path_get<'a>(obj: &'a Value, path: &str) -> Option<&'a Value> {
    let ptr = format!("/{}", path.trim_start_matches('.').replace('.', "/"));
    obj.pointer(&ptr)
}

fn path_set(obj: &mut Value, path: &str, v: Value) {
    let parts: Vec<&str> = path.trim_start_matches('.').split('.').collect();
    let mut cur = obj;
    for (i, p) in parts.iter().enumerate() {
        if i == parts.len() - 1 {
            cur[*p] = v;
            return;
        }
        if !cur.get(*p).is_some_and(Value::is_object) {
            cur[*p] = json!({});
        }
        cur = &mut cur[*p];
    }
}

fn to_scale(ri: &ResourceInfo, obj: &Value) -> Result<Value, ApiError> {
    let sc = ri.scale.as_ref().ok_or_else(ApiError::no_route)?;
    let spec = path_get(obj, &sc.spec_replicas_path)
        .and_then(Value::as_i64)
        .unwrap_or(0);
    let stat = path_get(obj, &sc.status_replicas_path)
        .and_then(Value::as_i64)
        .unwrap_or(0);
    let mut status = json!({"replicas": stat});
    if let Some(sel) = sc
        .label_selector_path
        .as_ref()
        .and_then(|p| path_get(obj, p))
        .and_then(Value::as_str)
    {
        status["selector"] = json!(sel);
    }
    let m = &obj["metadata"];
    let mut meta = json!({"name": m["name"], "uid": m["uid"], "resourceVersion": m["resourceVersion"], "creationTimestamp": m["creationTimestamp"]});
    if ri.namespaced {
        meta["namespace"] = m["namespace"].clone();
    }
    Ok(
        json!({"kind": "Scale", "apiVersion": "autoscaling/v1", "metadata": meta, "spec": {"replicas": spec}, "status": status}),
    )
}

fn write_scale(
    shared: &Arc<Shared>,
    t: &Target,
    ns: &str,
    name: &str,
    make: impl FnOnce(&Value) -> Result<Value, ApiError>,
    opts: &WriteOpts,
) -> Result<Response, ApiError> {
    let sc = t.ri.scale.clone().ok_or_else(ApiError::no_route)?;
    let mut st = shared.lock();
    let cur = st
        .get(&t.ri, ns, name)
        .ok_or_else(|| ApiError::not_found(&t.ri.group, &t.ri.resource, name))?;
    let scale = to_scale(&t.ri, &cur)?;
    let new_scale = make(&scale)?;
    let replicas = new_scale
        .pointer("/spec/replicas")
        .cloned()
        .unwrap_or(json!(0));
    if !replicas.is_i64() || replicas.as_i64().is_some_and(|r| r < 0) {
        return Err(ApiError::invalid(
            "autoscaling",
            "Scale",
            name,
            &[status::cause(
                "FieldValueInvalid",
                "spec.replicas",
                format!("Invalid value: {replicas}: must be greater than or equal to 0"),
            )],
        ));
    }
    let mut obj = cur.clone();
    let rv = new_scale
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .unwrap_or("");
    if !rv.is_empty()
        && Some(rv)
            != cur
                .pointer("/metadata/resourceVersion")
                .and_then(Value::as_str)
    {
        return Err(ApiError::stale(&t.ri.group, &t.ri.resource, name));
    }
    path_set(&mut obj, &sc.spec_replicas_path, replicas);
    let mut o = opts.clone();
    if o.field_validation.is_empty() {
        o.field_validation = "Ignore".into();
    }
    let updated = st.update(&t.ri, ns, name, obj, Some("scale"), &o, true)?;
    drop(st);
    Ok(json_response(
        StatusCode::OK,
        &to_scale(&t.ri, &updated)?,
        &[],
    ))
}

/// How the apiserver names a conflicting manager: `"m"`, plus ` using v1` when the
/// manager's fields come from an Update (not an Apply).
fn print_manager(manager: &str, live: Option<&Value>) -> String {
    let entries = live
        .and_then(|l| l.pointer("/metadata/managedFields"))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mine: Vec<&Value> = entries.iter().filter(|e| e["manager"] == manager).collect();
    let applies = mine.iter().any(|e| e["operation"] == "Apply");
    match mine.iter().find(|e| e["operation"] == "Update") {
        Some(e) if !applies => format!(
            "{manager:?} using {}",
            e["apiVersion"].as_str().unwrap_or_default()
        ),
        _ => format!("{manager:?}"),
    }
}

fn patch_error(e: PatchError, t: &Target, name: &str, live: Option<&Value>) -> ApiError {
    match e {
        PatchError::BadRequest(m) => ApiError::bad_request(m),
        PatchError::Invalid(m) => ApiError::new(
            422,
            "Invalid",
            m,
            Some(json!({"name": name, "group": t.ri.group, "kind": t.ri.kind})),
        ),
        PatchError::Conflict(cs) => {
            let causes: Vec<Value> = cs
                .iter()
                .map(|c| json!({"reason": "FieldManagerConflict", "message": format!("conflict with {}", print_manager(&c.manager, live)), "field": c.field}))
                .collect();
            // conflict.go getConflictMessage: one → inline; several → grouped by manager.
            let message = if cs.len() == 1 {
                format!(
                    "Apply failed with 1 conflict: conflict with {}: {}",
                    print_manager(&cs[0].manager, live),
                    cs[0].field
                )
            } else {
                let mut managers: Vec<&str> = cs.iter().map(|c| c.manager.as_str()).collect();
                managers.sort();
                managers.dedup();
                let mut parts = Vec::new();
                for m in managers {
                    parts.push(format!("conflicts with {}:", print_manager(m, live)));
                    for c in cs.iter().filter(|c| c.manager == m) {
                        parts.push(format!("- {}", c.field));
                    }
                }
                format!(
                    "Apply failed with {} conflicts: {}",
                    cs.len(),
                    parts.join("\n")
                )
            };
            ApiError::new(409, "Conflict", message, Some(json!({"causes": causes})))
        }
    }
}

struct SharedSchema(Arc<super::schema::CrdVersionSchema>);

impl ListSemantics for SharedSchema {
    fn list_type(&self, path: &[String]) -> super::types::ListType {
        self.0.list_type(path)
    }
}

fn list_semantics(ri: &ResourceInfo) -> Box<dyn ListSemantics> {
    match &ri.crd {
        Some(c) => Box::new(SharedSchema(c.schema.clone())),
        None => Box::new(CoreListSemantics {
            api_version: ri.api_version(),
            kind: ri.kind.clone(),
        }),
    }
}

fn patch_resource(
    shared: &Arc<Shared>,
    t: &Target,
    ns: &str,
    query: &Query,
    headers: &HeaderMap,
    body: &Bytes,
    opts: &WriteOpts,
) -> Result<Response, ApiError> {
    let name = t.name.clone().unwrap_or_default();
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_string();
    let is_apply = ct == "application/apply-patch+yaml" || ct == "application/apply-patch+cbor";
    let accepted = if t.ri.is_custom() {
        "application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml"
    } else {
        "application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json, application/apply-patch+yaml"
    };
    if !matches!(
        ct.as_str(),
        "application/merge-patch+json"
            | "application/json-patch+json"
            | "application/strategic-merge-patch+json"
    ) && !is_apply
    {
        return Err(ApiError::unsupported_media_type(accepted));
    }
    if ct == "application/strategic-merge-patch+json" && t.ri.is_custom() {
        return Err(ApiError::unsupported_media_type(accepted));
    }
    let patch_doc: Value = if is_apply {
        serde_yaml::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))?
    } else {
        serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))?
    };
    let lists = list_semantics(&t.ri);
    let sub = t.sub.as_deref();
    if sub == Some("scale") {
        let doc = patch_doc.clone();
        let ct2 = ct.clone();
        let name2 = name.clone();
        return write_scale(
            shared,
            t,
            ns,
            &name,
            move |scale| match ct2.as_str() {
                "application/json-patch+json" => {
                    patch::json_patch(scale, &doc).map_err(|e| patch_error(e, t, &name2, None))
                }
                _ => Ok(patch::merge_patch(scale, &doc)),
            },
            opts,
        );
    }
    let sub = sub.filter(|s| *s == "status");
    let mut st = shared.lock();
    st.warnings.clear();
    let live = st.get(&t.ri, ns, &name);
    let live_copy = live.clone();
    let live_ref = live_copy.as_ref();
    let now = now_rfc3339();
    let result = if is_apply {
        let Some(manager) = q(query, "fieldManager").filter(|m| !m.is_empty()) else {
            return Err(ApiError::invalid(
                "meta.k8s.io",
                "PatchOptions",
                "",
                &[status::cause(
                    "FieldValueRequired",
                    "fieldManager",
                    "Required value: is required for apply patch",
                )],
            ));
        };
        if !patch_doc.is_object() {
            return Err(ApiError::bad_request("the apply patch must be an object"));
        }
        let av = patch_doc["apiVersion"].as_str().unwrap_or_default();
        let kind = patch_doc["kind"].as_str().unwrap_or_default();
        if av.is_empty() || kind.is_empty() {
            return Err(ApiError::bad_request("invalid object type: /, Kind="));
        }
        let body_name = patch_doc
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if body_name != name {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({body_name}) does not match the name on the URL ({name})"
            )));
        }
        let ctx = ApplyContext {
            manager,
            force: q_bool(query, "force"),
            subresource: sub,
            status_subresource: t.ri.status_subresource,
            now: &now,
            lists: lists.as_ref(),
        };
        let mut o = opts.clone();
        o.manager = manager.to_string();
        // The applied configuration's resourceVersion and uid are not owned by anyone but
        // land in the merged object, where the apiserver checks them as on any write:
        // a stale resourceVersion is a 409, a different uid an immutable-field 422.
        let precondition = |new: &mut Value| {
            for k in ["resourceVersion", "uid"] {
                if let Some(v) = patch_doc
                    .pointer(&format!("/metadata/{k}"))
                    .and_then(Value::as_str)
                    .filter(|v| !v.is_empty())
                {
                    new["metadata"][k] = json!(v);
                }
            }
        };
        match live {
            None => {
                if sub.is_some() {
                    return Err(ApiError::not_found(&t.ri.group, &t.ri.resource, &name));
                }
                let mut new = patch::apply(None, &patch_doc, &ctx)
                    .map_err(|e| patch_error(e, t, &name, live_ref))?;
                precondition(&mut new);
                let res = st.create_applied(&t.ri, ns, new, &o);
                res.map(|v| (StatusCode::CREATED, v))
            }
            Some(live) => {
                let mut new = patch::apply(Some(&live), &patch_doc, &ctx)
                    .map_err(|e| patch_error(e, t, &name, live_ref))?;
                precondition(&mut new);
                st.update(&t.ri, ns, &name, new, sub, &o, false)
                    .map(|v| (StatusCode::OK, v))
            }
        }
    } else {
        let live = live.ok_or_else(|| ApiError::not_found(&t.ri.group, &t.ri.resource, &name))?;
        let new = match ct.as_str() {
            "application/json-patch+json" => patch::json_patch(&live, &patch_doc)
                .map_err(|e| patch_error(e, t, &name, live_ref))?,
            "application/strategic-merge-patch+json" => {
                patch::strategic_merge_patch(&live, &patch_doc, lists.as_ref())
                    .map_err(|e| patch_error(e, t, &name, live_ref))?
            }
            _ => {
                if !patch_doc.is_object() {
                    return Err(ApiError::bad_request(
                        "json: cannot unmarshal into Go value of type map[string]interface {}",
                    ));
                }
                patch::merge_patch(&live, &patch_doc)
            }
        };
        st.update(&t.ri, ns, &name, new, sub, opts, true)
            .map(|v| (StatusCode::OK, v))
    };
    let warnings = std::mem::take(&mut st.warnings);
    drop(st);
    let (code, v) = result?;
    Ok(json_response(code, &v, &warnings))
}

/// Wraps an axum response body from a stream of byte chunks.
pub fn stream_response(body: Body) -> Response {
    let mut resp = Response::new(body);
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache, private"),
    );
    resp
}
