//! The in-memory object store: objects, resource versions, the bounded event history
//! that watches replay from, and the write pipelines (create / update / delete) with
//! the apiserver's semantics.

use super::builtins;
use super::patch;
use super::resources::{self, ResourceInfo};
use super::schema;
use super::status::{ApiError, cause};
use super::types::Cause;
use super::validation;
use rand::Rng;
use serde_json::{Value, json};
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use tokio::sync::broadcast;

/// (storage group, resource, namespace or "", name)
pub type Key = (String, String, String, String);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// One change, as kept in the history and sent to watchers.
#[derive(Debug, Clone)]
pub struct StoredEvent {
    pub rv: u64,
    pub etype: EventType,
    pub group: String,
    pub resource: String,
    pub namespace: String,
    pub object: Value,
    /// The state before a MODIFIED (for selector transitions).
    pub prev: Option<Value>,
}

/// Options common to writes.
#[derive(Debug, Clone, Default)]
pub struct WriteOpts {
    pub manager: String,
    pub dry_run: bool,
    /// `fieldValidation`: Strict / Warn / Ignore (empty = Warn for kubectl-less clients).
    pub field_validation: String,
}

#[derive(Debug, Clone, Default)]
pub struct DeleteOpts {
    pub grace_period: Option<i64>,
    pub propagation: Option<String>,
    pub precondition_uid: Option<String>,
    pub precondition_rv: Option<String>,
    pub dry_run: bool,
}

/// What a delete did.
pub enum Deleted {
    /// Removed from the store; the last state.
    Gone(Value),
    /// Kept (finalizers or graceful deletion); its new state.
    Pending(Value),
}

/// Live change events.
pub type EventReceiver = broadcast::Receiver<Arc<StoredEvent>>;

pub struct State {
    pub objects: BTreeMap<Key, Value>,
    pub rv: u64,
    history: VecDeque<Arc<StoredEvent>>,
    /// Events at or below this version are no longer in the history.
    pub compacted_rv: u64,
    pub history_limit: usize,
    pub builtins: Vec<ResourceInfo>,
    pub crds: BTreeMap<String, ResourceInfo>,
    pub tx: broadcast::Sender<Arc<StoredEvent>>,
    next_service_ip: u32,
    /// Warnings produced by the current request (Warning headers).
    pub warnings: Vec<String>,
}

pub fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn meta_str<'a>(obj: &'a Value, field: &str) -> &'a str {
    obj.get("metadata")
        .and_then(|m| m.get(field))
        .and_then(Value::as_str)
        .unwrap_or_default()
}

pub fn name_of(obj: &Value) -> &str {
    meta_str(obj, "name")
}

pub fn namespace_of(obj: &Value) -> &str {
    meta_str(obj, "namespace")
}

pub fn uid_of(obj: &Value) -> &str {
    meta_str(obj, "uid")
}

fn finalizers(obj: &Value) -> Vec<String> {
    obj.pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn ensure_metadata(obj: &mut Value) -> Result<(), ApiError> {
    if !obj.is_object() {
        return Err(ApiError::bad_request(
            "the body of the request is not a JSON object",
        ));
    }
    if !obj.get("metadata").is_some_and(Value::is_object) {
        obj["metadata"] = json!({});
    }
    Ok(())
}

/// Everything but metadata and status: what bumps `metadata.generation` when it changes.
fn spec_part(obj: &Value) -> Value {
    let mut o = obj.as_object().cloned().unwrap_or_default();
    o.remove("metadata");
    o.remove("status");
    o.remove("apiVersion");
    o.remove("kind");
    Value::Object(o)
}

/// The object without the fields a no-op write does not change. Like the apiserver, a
/// write whose only change is a managedFields timestamp is a no-op, but one that changes
/// ownership (e.g. kubectl's client-side to server-side apply migration) is kept.
fn comparable(obj: &Value) -> Value {
    let mut o = obj.clone();
    if let Some(m) = o.get_mut("metadata").and_then(Value::as_object_mut) {
        m.remove("resourceVersion");
        if let Some(entries) = m.get_mut("managedFields").and_then(Value::as_array_mut) {
            for entry in entries.iter_mut().filter_map(Value::as_object_mut) {
                entry.remove("time");
            }
        }
    }
    o
}

fn generate_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut rng = rand::rng();
    (0..5)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

/// Paths present in `before` but not in `after` (what pruning dropped).
fn removed_paths(before: &Value, after: &Value, prefix: &str, out: &mut Vec<String>) {
    match (before, after) {
        (Value::Object(b), Value::Object(a)) => {
            for (k, v) in b {
                let p = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                match a.get(k) {
                    None if v.is_null() => {}
                    None => out.push(p),
                    Some(av) => removed_paths(v, av, &p, out),
                }
            }
        }
        (Value::Array(b), Value::Array(a)) => {
            for (i, (bv, av)) in b.iter().zip(a.iter()).enumerate() {
                removed_paths(bv, av, &format!("{prefix}[{i}]"), out);
            }
        }
        _ => {}
    }
}

impl State {
    pub fn new(history_limit: usize) -> Self {
        let (tx, _) = broadcast::channel(16384);
        let mut s = State {
            objects: BTreeMap::new(),
            rv: 1,
            history: VecDeque::new(),
            compacted_rv: 0,
            history_limit: history_limit.max(1),
            builtins: resources::builtins(),
            crds: BTreeMap::new(),
            tx,
            next_service_ip: 1,
            warnings: Vec::new(),
        };
        let opts = WriteOpts {
            manager: "kube-apiserver".into(),
            ..Default::default()
        };
        for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
            if let Some(ri) = s.resource("", "v1", "namespaces") {
                let _ = s.create(
                    &ri,
                    "",
                    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
                    &opts,
                );
            }
        }
        s
    }

    pub fn resources(&self) -> Vec<ResourceInfo> {
        let mut v = self.builtins.clone();
        v.extend(self.crds.values().cloned());
        v
    }

    pub fn resource(&self, group: &str, version: &str, resource: &str) -> Option<ResourceInfo> {
        self.builtins
            .iter()
            .chain(self.crds.values())
            .find(|r| r.group == group && r.version == version && r.resource == resource)
            .cloned()
    }

    /// The resource serving a kind (any version), e.g. for owner references.
    pub fn resource_for_kind(&self, api_version: &str, kind: &str) -> Option<ResourceInfo> {
        let group = api_version.rsplit_once('/').map(|(g, _)| g).unwrap_or("");
        self.builtins
            .iter()
            .chain(self.crds.values())
            .find(|r| r.group == group && r.kind == kind)
            .cloned()
    }

    pub fn key(ri: &ResourceInfo, ns: &str, name: &str) -> Key {
        (
            ri.storage_group.clone(),
            ri.resource.clone(),
            if ri.namespaced {
                ns.to_string()
            } else {
                String::new()
            },
            name.to_string(),
        )
    }

    pub fn get(&self, ri: &ResourceInfo, ns: &str, name: &str) -> Option<Value> {
        self.objects
            .get(&Self::key(ri, ns, name))
            .map(|o| self.view(ri, o))
    }

    /// The stored object as served through `ri` (event views, defaults on read).
    pub fn view(&self, ri: &ResourceInfo, stored: &Value) -> Value {
        if ri.group == "events.k8s.io" {
            builtins::event_to_v1(stored)
        } else if let Some(crd) = &ri.crd {
            // The apiserver defaults custom resources when reading them from storage too.
            let mut o = stored.clone();
            crd.schema.apply_defaults(&mut o);
            o
        } else {
            stored.clone()
        }
    }

    /// Objects of `ri` in `ns` (None = all namespaces), sorted by namespace/name.
    pub fn list(&self, ri: &ResourceInfo, ns: Option<&str>) -> Vec<Value> {
        self.objects
            .iter()
            .filter(|((g, r, n, _), _)| {
                *g == ri.storage_group && *r == ri.resource && ns.is_none_or(|ns| ns == n)
            })
            .map(|(_, o)| self.view(ri, o))
            .collect()
    }

    /// Oldest version a watch can resume from.
    pub fn history_since(
        &self,
        rv: u64,
    ) -> Result<(Vec<Arc<StoredEvent>>, EventReceiver), ApiError> {
        if rv < self.compacted_rv {
            return Err(ApiError::expired(format!(
                "too old resource version: {rv} ({})",
                self.compacted_rv + 1
            )));
        }
        let evs = self.history.iter().filter(|e| e.rv > rv).cloned().collect();
        Ok((evs, self.tx.subscribe()))
    }

    /// Drops the whole event history: every watch from an older version gets 410.
    pub fn compact(&mut self) {
        self.history.clear();
        self.compacted_rv = self.rv;
    }

    fn commit(
        &mut self,
        key: &Key,
        obj: Option<Value>,
        etype: EventType,
        mut last: Value,
    ) -> Value {
        self.rv += 1;
        let rv = self.rv;
        last["metadata"]["resourceVersion"] = json!(rv.to_string());
        let prev = self.objects.get(key).cloned();
        match obj {
            Some(_) => {
                self.objects.insert(key.clone(), last.clone());
            }
            None => {
                self.objects.remove(key);
            }
        }
        let ev = Arc::new(StoredEvent {
            rv,
            etype,
            group: key.0.clone(),
            resource: key.1.clone(),
            namespace: key.2.clone(),
            object: last.clone(),
            prev,
        });
        self.history.push_back(ev.clone());
        while self.history.len() > self.history_limit {
            if let Some(old) = self.history.pop_front() {
                self.compacted_rv = old.rv;
            }
        }
        let _ = self.tx.send(ev);
        last
    }

    fn namespace_check(&self, ri: &ResourceInfo, ns: &str, creating: bool) -> Result<(), ApiError> {
        if !ri.namespaced {
            return Ok(());
        }
        let Some(nsobj) =
            self.objects
                .get(&(String::new(), "namespaces".into(), String::new(), ns.into()))
        else {
            return Err(ApiError::not_found("", "namespaces", ns));
        };
        if creating && nsobj.pointer("/metadata/deletionTimestamp").is_some() {
            return Err(ApiError::forbidden(
                &ri.group,
                &ri.resource,
                "",
                &format!(
                    "unable to create new content in namespace {ns} because it is being terminated"
                ),
            ));
        }
        Ok(())
    }

    /// Unknown (dropped) fields per `fieldValidation`: Strict → 400, Warn (default) →
    /// Warning headers, Ignore → nothing.
    fn unknown_fields(
        &mut self,
        ri: &ResourceInfo,
        dropped: &[String],
        opts: &WriteOpts,
    ) -> Result<(), ApiError> {
        if dropped.is_empty() {
            return Ok(());
        }
        match opts.field_validation.as_str() {
            "Strict" => {
                let msgs: Vec<String> = dropped
                    .iter()
                    .map(|p| format!("unknown field \"{p}\""))
                    .collect();
                Err(ApiError::bad_request(format!(
                    "{kind} in version \"{v}\" cannot be handled as a {kind}: strict decoding error: {}",
                    msgs.join(", "),
                    kind = ri.kind,
                    v = ri.version,
                )))
            }
            "Ignore" => Ok(()),
            _ => {
                for p in dropped {
                    self.warnings.push(format!("unknown field \"{p}\""));
                }
                Ok(())
            }
        }
    }

    /// Prune → default → validate for custom resources; unknown fields per fieldValidation.
    fn admit_custom(
        &mut self,
        ri: &ResourceInfo,
        obj: &mut Value,
        old: Option<&Value>,
        opts: &WriteOpts,
    ) -> Result<(), ApiError> {
        let Some(crd) = &ri.crd else { return Ok(()) };
        // As the apiserver's decoder: default, then prune (reporting unknown fields).
        crd.schema.apply_defaults(obj);
        let dropped = crd.schema.prune_unknown_fields(obj);
        self.unknown_fields(ri, &dropped, opts)?;
        let mut causes = crd.schema.validate(obj, old);
        causes.extend(metadata_causes(obj));
        if !causes.is_empty() {
            return Err(ApiError::invalid(
                &ri.group,
                &ri.kind,
                name_of(obj),
                &causes,
            ));
        }
        Ok(())
    }

    fn check_kind(ri: &ResourceInfo, obj: &Value) -> Result<(), ApiError> {
        if ri.is_custom() {
            let has = |k: &str| {
                obj.get(k)
                    .and_then(Value::as_str)
                    .is_some_and(|s| !s.is_empty())
            };
            if has("kind") || has("apiVersion") {
                let causes = schema::validate_type_meta(obj, &ri.api_version(), &ri.kind);
                if !causes.is_empty() {
                    return Err(ApiError::invalid(
                        &ri.group,
                        &ri.kind,
                        name_of(obj),
                        &causes,
                    ));
                }
            }
            return Ok(());
        }
        let kind = obj.get("kind").and_then(Value::as_str).unwrap_or_default();
        let av = obj
            .get("apiVersion")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if (!kind.is_empty() && kind != ri.kind) || (!av.is_empty() && av != ri.api_version()) {
            return Err(ApiError::bad_request(format!(
                "the API version in the data ({av}) does not match the expected API version ({})",
                ri.api_version()
            ))
            .with_kind_message(kind, &ri.kind));
        }
        Ok(())
    }

    /// POST: creates `obj` in `ns`.
    pub fn create(
        &mut self,
        ri: &ResourceInfo,
        ns: &str,
        obj: Value,
        opts: &WriteOpts,
    ) -> Result<Value, ApiError> {
        self.create_inner(ri, ns, obj, opts, true)
    }

    /// Create by server-side apply: `obj` already carries its managedFields.
    pub fn create_applied(
        &mut self,
        ri: &ResourceInfo,
        ns: &str,
        obj: Value,
        opts: &WriteOpts,
    ) -> Result<Value, ApiError> {
        self.create_inner(ri, ns, obj, opts, false)
    }

    fn create_inner(
        &mut self,
        ri: &ResourceInfo,
        ns: &str,
        mut obj: Value,
        opts: &WriteOpts,
        record: bool,
    ) -> Result<Value, ApiError> {
        ensure_metadata(&mut obj)?;
        Self::check_kind(ri, &obj)?;
        if ri.group == "events.k8s.io" {
            obj = builtins::event_from_v1(&obj);
        }
        let body_ns = namespace_of(&obj).to_string();
        if ri.namespaced {
            if !body_ns.is_empty() && body_ns != ns {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ));
            }
            obj["metadata"]["namespace"] = json!(ns);
        } else if let Some(m) = obj["metadata"].as_object_mut() {
            m.remove("namespace");
        }
        if name_of(&obj).is_empty() {
            let gn = meta_str(&obj, "generateName").to_string();
            if gn.is_empty() {
                return Err(ApiError::invalid(
                    &ri.group,
                    &ri.kind,
                    "",
                    &[cause(
                        "FieldValueRequired",
                        "metadata.name",
                        "Required value: name or generateName is required",
                    )],
                ));
            }
            let mut name = format!("{gn}{}", generate_suffix());
            while self.objects.contains_key(&Self::key(ri, ns, &name)) {
                name = format!("{gn}{}", generate_suffix());
            }
            obj["metadata"]["name"] = json!(name);
        }
        let name = name_of(&obj).to_string();
        let name_errs = builtins::name_causes(&ri.resource, &name);
        if !name_errs.is_empty() {
            return Err(ApiError::invalid(&ri.group, &ri.kind, &name, &name_errs));
        }
        self.namespace_check(ri, ns, true)?;
        if ri.is_custom() {
            let crd_key: Key = (
                "apiextensions.k8s.io".into(),
                "customresourcedefinitions".into(),
                String::new(),
                format!("{}.{}", ri.resource, ri.group),
            );
            if self
                .objects
                .get(&crd_key)
                .is_some_and(|crd| crd.pointer("/metadata/deletionTimestamp").is_some())
            {
                return Err(ApiError::forbidden(
                    &ri.group,
                    &ri.resource,
                    &name,
                    "create not allowed while custom resource definition is terminating",
                ));
            }
        }
        let key = Self::key(ri, ns, &name);
        if self.objects.contains_key(&key) {
            return Err(ApiError::already_exists(&ri.group, &ri.resource, &name));
        }
        let now = now_rfc3339();
        // The storage layer refuses a create that carries a (parseable, non-zero)
        // resourceVersion (`storage.ErrResourceVersionSetOnCreate`, a plain error, so 500
        // without a reason); a dry run never reaches storage.
        let rv_set = meta_str(&obj, "resourceVersion")
            .parse::<u64>()
            .is_ok_and(|rv| rv != 0);
        {
            let m = obj["metadata"]
                .as_object_mut()
                .ok_or_else(|| ApiError::bad_request("metadata must be an object"))?;
            m.insert("uid".into(), json!(uuid::Uuid::new_v4().to_string()));
            m.insert("creationTimestamp".into(), json!(now));
            for k in [
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "resourceVersion",
                "selfLink",
            ] {
                m.remove(k);
            }
            if ri.has_generation {
                m.insert("generation".into(), json!(1));
            } else {
                m.remove("generation");
            }
        }
        if ri.status_subresource
            && ri.is_custom()
            && let Some(m) = obj.as_object_mut()
        {
            m.remove("status");
        }
        obj["apiVersion"] = json!(if ri.group == "events.k8s.io" {
            "v1".to_string()
        } else {
            ri.api_version()
        });
        obj["kind"] = json!(ri.kind);
        self.admit_builtin(ri, &mut obj, None, opts)?;
        self.admit_custom(ri, &mut obj, None, opts)?;
        if record {
            record_write(ri, None, &mut obj, &opts.manager, None, &now);
        }
        if opts.dry_run {
            return Ok(self.view(ri, &obj));
        }
        if rv_set {
            return Err(ApiError::unknown(
                500,
                "resourceVersion should not be set on objects to be created",
            ));
        }
        let out = self.commit(&key, Some(obj.clone()), EventType::Added, obj);
        self.after_write(ri, &out, false);
        if ri.group.is_empty() && ri.resource == "namespaces" {
            self.ensure_default_sa(&name);
        }
        Ok(self.view(ri, &out))
    }

    fn ensure_default_sa(&mut self, ns: &str) {
        if let Some(sa) = self.resource("", "v1", "serviceaccounts")
            && self.get(&sa, ns, "default").is_none()
        {
            {
                let opts = WriteOpts {
                    manager: "kube-controller-manager".into(),
                    ..Default::default()
                };
                let _ = self.create(&sa, ns, json!({"metadata": {"name": "default"}}), &opts);
            }
        }
    }

    /// Kind-specific admission of built-ins: defaults and validation.
    fn admit_builtin(
        &mut self,
        ri: &ResourceInfo,
        obj: &mut Value,
        old: Option<&Value>,
        opts: &WriteOpts,
    ) -> Result<(), ApiError> {
        let name = name_of(obj).to_string();
        if let Some(decoded) = builtins::decode_typed(&ri.group, &ri.resource, obj) {
            let typed = decoded.map_err(|e| {
                ApiError::bad_request(format!(
                    "{kind} in version \"{v}\" cannot be handled as a {kind}: {e}",
                    kind = ri.kind,
                    v = ri.version
                ))
            })?;
            let mut dropped = Vec::new();
            removed_paths(obj, &typed, "", &mut dropped);
            *obj = typed;
            self.unknown_fields(ri, &dropped, opts)?;
        }
        let mut causes: Vec<Cause> = metadata_causes(obj);
        match (ri.group.as_str(), ri.resource.as_str()) {
            ("", "pods") => {
                if let Some(e) = validation::pod_quantity_error(obj) {
                    return Err(ApiError::bad_request(format!(
                        "Pod in version \"v1\" cannot be handled as a Pod: {e}"
                    )));
                }
                builtins::default_pod(obj);
                causes.extend(builtins::validate_pod(obj));
                match old {
                    None => {
                        obj["status"] = builtins::initial_pod_status(obj);
                        builtins::default_tolerations(obj);
                        // ServiceAccount admission: the pod's service account must exist.
                        let ns = namespace_of(obj).to_string();
                        let sa = obj
                            .pointer("/spec/serviceAccountName")
                            .and_then(Value::as_str)
                            .unwrap_or("default")
                            .to_string();
                        let key: Key = (
                            String::new(),
                            "serviceaccounts".into(),
                            ns.clone(),
                            sa.clone(),
                        );
                        if !self.objects.contains_key(&key) {
                            return Err(ApiError::forbidden(
                                "",
                                "pods",
                                &name,
                                &format!(
                                    "error looking up service account {ns}/{sa}: serviceaccount \"{sa}\" not found"
                                ),
                            ));
                        }
                    }
                    Some(old) => causes.extend(builtins::validate_pod_update(obj, old)),
                }
            }
            ("", "secrets") => builtins::normalize_secret(obj),
            ("coordination.k8s.io", "leases") => causes.extend(validation::lease(obj)),
            ("rbac.authorization.k8s.io", "rolebindings" | "clusterrolebindings") => {
                causes.extend(validation::role_binding(obj, old, ri.namespaced));
            }
            ("", "events") | ("events.k8s.io", "events") if old.is_none() => {
                causes.extend(validation::event_create(obj, ri.group == "events.k8s.io"));
            }
            ("", "services") if old.is_none() => {
                obj["status"] = json!({"loadBalancer": {}});
                builtins::default_service(obj, self.next_service_ip);
                self.next_service_ip += 1;
            }
            ("", "namespaces") if old.is_none() => {
                obj["spec"] = json!({"finalizers": ["kubernetes"]});
                obj["status"] = json!({"phase": "Active"});
                let labels = obj["metadata"]
                    .as_object_mut()
                    .map(|m| m.entry("labels").or_insert_with(|| json!({})));
                if let Some(l) = labels.and_then(Value::as_object_mut) {
                    l.insert("kubernetes.io/metadata.name".into(), json!(name));
                }
            }
            ("apiextensions.k8s.io", "customresourcedefinitions") => {
                causes.extend(schema::validate_crd(obj));
                if causes.is_empty() {
                    self.admit_crd(obj, old, &mut causes);
                }
            }
            _ => {}
        }
        if causes.is_empty() {
            Ok(())
        } else {
            Err(ApiError::invalid(&ri.group, &ri.kind, &name, &causes))
        }
    }

    fn admit_crd(&mut self, crd: &mut Value, old: Option<&Value>, causes: &mut Vec<Cause>) {
        let group = crd
            .pointer("/spec/group")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let plural = crd
            .pointer("/spec/names/plural")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let expected = format!("{plural}.{group}");
        if name_of(crd) != expected {
            causes.push(cause(
                "FieldValueInvalid",
                "metadata.name",
                format!(
                    "Invalid value: \"{}\": must be spec.names.plural+\".\"+spec.group",
                    name_of(crd)
                ),
            ));
            return;
        }
        if let Some(old) = old {
            for f in ["/spec/group", "/spec/scope", "/spec/names/plural"] {
                if old.pointer(f) != crd.pointer(f) && f != "/spec/names/plural" {
                    causes.push(cause(
                        "FieldValueInvalid",
                        &f[1..].replace('/', "."),
                        "Invalid value: field is immutable",
                    ));
                }
            }
        }
        if let Err(e) = resources::from_crd(crd) {
            causes.push(cause(
                "FieldValueInvalid",
                "spec",
                format!("Invalid value: {e}"),
            ));
            return;
        }
        let storage: Vec<Value> = crd
            .pointer("/spec/versions")
            .and_then(Value::as_array)
            .map(|vs| {
                vs.iter()
                    .filter(|v| v["storage"].as_bool() == Some(true))
                    .map(|v| v["name"].clone())
                    .collect()
            })
            .unwrap_or_default();
        if crd
            .pointer("/spec/versions")
            .and_then(Value::as_array)
            .is_some_and(|v| !v.is_empty())
            && storage.len() != 1
        {
            causes.push(cause(
                "FieldValueInvalid",
                "spec.versions",
                "Invalid value: must have exactly one version marked as storage version",
            ));
            return;
        }
        let now = now_rfc3339();
        let mut names = crd.pointer("/spec/names").cloned().unwrap_or(json!({}));
        let kind = names
            .get("kind")
            .and_then(Value::as_str)
            .map(str::to_string);
        if let Some(k) = &kind {
            if names.get("singular").is_none() {
                names["singular"] = json!(k.to_lowercase());
            }
            if names.get("listKind").is_none() {
                names["listKind"] = json!(format!("{k}List"));
            }
        }
        crd["spec"]["names"] = names.clone();
        crd["status"] = json!({
            "acceptedNames": names,
            "storedVersions": storage,
            "conditions": [
                {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts",
                 "message": "no conflicts found", "lastTransitionTime": now},
                {"type": "Established", "status": "True", "reason": "InitialNamesAccepted",
                 "message": "the initial names have been accepted", "lastTransitionTime": now},
            ],
        });
    }

    /// Side effects after a write is committed (CRD registration).
    fn after_write(&mut self, ri: &ResourceInfo, obj: &Value, deleted: bool) {
        if ri.resource == "customresourcedefinitions" && ri.group == "apiextensions.k8s.io" {
            let name = name_of(obj).to_string();
            if deleted {
                if let Some(cr) = self.crds.remove(&name) {
                    let keys: Vec<Key> = self
                        .objects
                        .keys()
                        .filter(|(g, r, _, _)| *g == cr.storage_group && *r == cr.resource)
                        .cloned()
                        .collect();
                    for k in keys {
                        if let Some(o) = self.objects.get(&k).cloned() {
                            self.commit(&k, None, EventType::Deleted, o);
                        }
                    }
                }
            } else if let Ok(info) = resources::from_crd(obj) {
                self.crds.insert(name, info);
            }
        }
    }

    /// PUT (and the end of every non-apply patch): replaces the object.
    /// `sub` is `Some("status")` for the status subresource.
    #[allow(clippy::too_many_arguments)]
    pub fn update(
        &mut self,
        ri: &ResourceInfo,
        ns: &str,
        name: &str,
        mut new: Value,
        sub: Option<&str>,
        opts: &WriteOpts,
        record: bool,
    ) -> Result<Value, ApiError> {
        ensure_metadata(&mut new)?;
        Self::check_kind(ri, &new)?;
        if ri.group == "events.k8s.io" {
            new = builtins::event_from_v1(&new);
        }
        let key = Self::key(ri, ns, name);
        let Some(old) = self.objects.get(&key).cloned() else {
            return Err(ApiError::not_found(&ri.group, &ri.resource, name));
        };
        let body_name = name_of(&new).to_string();
        if !body_name.is_empty() && body_name != name {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({body_name}) does not match the name on the URL ({name})"
            )));
        }
        if ri.namespaced {
            let body_ns = namespace_of(&new).to_string();
            if !body_ns.is_empty() && body_ns != ns {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ));
            }
        }
        let req_rv = meta_str(&new, "resourceVersion").to_string();
        // Custom resources, CRDs and Leases do not allow unconditional updates
        // (`AllowUnconditionalUpdate() == false` in their strategies).
        let conditional_only =
            ri.has_generation || (ri.group == "coordination.k8s.io" && ri.resource == "leases");
        if req_rv.is_empty() && conditional_only {
            return Err(ApiError::invalid(
                &ri.group,
                &ri.resource, // the apiserver names the resource here (GroupKind{Kind: resource})
                name,
                &[cause(
                    "FieldValueInvalid",
                    "metadata.resourceVersion",
                    "Invalid value: 0: must be specified for an update",
                )],
            ));
        }
        if !req_rv.is_empty() && req_rv != meta_str(&old, "resourceVersion") {
            return Err(ApiError::stale(&ri.group, &ri.resource, name));
        }
        let req_uid = meta_str(&new, "uid").to_string();
        if !req_uid.is_empty() && req_uid != uid_of(&old) {
            return Err(ApiError::invalid(
                &ri.group,
                &ri.kind,
                name,
                &[cause(
                    "FieldValueInvalid",
                    "metadata.uid",
                    format!("Invalid value: \"{req_uid}\": field is immutable"),
                )],
            ));
        }
        // System fields come from the stored object.
        {
            let nm = new["metadata"]
                .as_object_mut()
                .ok_or_else(|| ApiError::bad_request("metadata must be an object"))?;
            nm.insert("name".into(), json!(name));
            if ri.namespaced {
                nm.insert("namespace".into(), json!(ns));
            } else {
                nm.remove("namespace");
            }
            for k in [
                "uid",
                "creationTimestamp",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "generation",
            ] {
                match old["metadata"].get(k) {
                    Some(v) => nm.insert(k.into(), v.clone()),
                    None => nm.remove(k),
                };
            }
            if !nm.contains_key("managedFields")
                && let Some(mf) = old["metadata"].get("managedFields")
            {
                nm.insert("managedFields".into(), mf.clone());
            }
        }
        new["apiVersion"] = old["apiVersion"].clone();
        new["kind"] = old["kind"].clone();
        match sub {
            Some("status") => {
                let status = new.get("status").cloned();
                let mf = new["metadata"].get("managedFields").cloned();
                new = old.clone();
                match status {
                    Some(s) => new["status"] = s,
                    None => {
                        if let Some(m) = new.as_object_mut() {
                            m.remove("status");
                        }
                    }
                }
                if let Some(mf) = mf {
                    new["metadata"]["managedFields"] = mf;
                }
            }
            _ => {
                if ri.status_subresource {
                    match old.get("status") {
                        Some(s) => new["status"] = s.clone(),
                        None => {
                            if let Some(m) = new.as_object_mut() {
                                m.remove("status");
                            }
                        }
                    }
                }
            }
        }
        if old.pointer("/metadata/deletionTimestamp").is_some() {
            let old_f = finalizers(&old);
            let added: Vec<String> = finalizers(&new)
                .into_iter()
                .filter(|f| !old_f.contains(f))
                .collect();
            if !added.is_empty() {
                return Err(ApiError::invalid(
                    &ri.group,
                    &ri.kind,
                    name,
                    &[cause(
                        "FieldValueForbidden",
                        "metadata.finalizers",
                        format!(
                            "Forbidden: no new finalizers can be added if the object is being deleted, found new finalizers []string{{{}}}",
                            added
                                .iter()
                                .map(|f| format!("{f:?}"))
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    )],
                ));
            }
        }
        self.admit_builtin(ri, &mut new, Some(&old), opts)?;
        self.admit_custom(ri, &mut new, Some(&old), opts)?;
        if ri.status_subresource && sub != Some("status") {
            // Defaulting may not touch status either.
            match old.get("status") {
                Some(s) => new["status"] = s.clone(),
                None => {
                    if let Some(m) = new.as_object_mut() {
                        m.remove("status");
                    }
                }
            }
        }
        // Compared after defaulting (the apiserver defaults on decode): a write that
        // omits a defaulted field changes nothing.
        if ri.has_generation && spec_part(&new) != spec_part(&old) {
            let g = old
                .pointer("/metadata/generation")
                .and_then(Value::as_i64)
                .unwrap_or(0);
            new["metadata"]["generation"] = json!(g + 1);
        }
        let now = now_rfc3339();
        if record {
            record_write(ri, Some(&old), &mut new, &opts.manager, sub, &now);
        }
        if comparable(&new) == comparable(&old) {
            return Ok(self.view(ri, &old));
        }
        if opts.dry_run {
            return Ok(self.view(ri, &new));
        }
        let deleting = new.pointer("/metadata/deletionTimestamp").is_some();
        let grace = new
            .pointer("/metadata/deletionGracePeriodSeconds")
            .and_then(Value::as_i64)
            .unwrap_or(0);
        if deleting && finalizers(&new).is_empty() && grace == 0 {
            let out = self.commit(&key, None, EventType::Deleted, new);
            self.after_write(ri, &out, true);
            return Ok(self.view(ri, &out));
        }
        let out = self.commit(&key, Some(new.clone()), EventType::Modified, new);
        self.after_write(ri, &out, false);
        Ok(self.view(ri, &out))
    }

    /// DELETE of one object.
    pub fn delete(
        &mut self,
        ri: &ResourceInfo,
        ns: &str,
        name: &str,
        opts: &DeleteOpts,
    ) -> Result<Deleted, ApiError> {
        let key = Self::key(ri, ns, name);
        let Some(old) = self.objects.get(&key).cloned() else {
            return Err(ApiError::not_found(&ri.group, &ri.resource, name));
        };
        if let Some(uid) = &opts.precondition_uid
            && uid != uid_of(&old)
        {
            {
                return Err(ApiError::conflict(
                    &ri.group,
                    &ri.resource,
                    name,
                    &format!(
                        "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                        uid_of(&old)
                    ),
                ));
            }
        }
        if let Some(rv) = &opts.precondition_rv
            && rv != meta_str(&old, "resourceVersion")
        {
            {
                return Err(ApiError::conflict(
                    &ri.group,
                    &ri.resource,
                    name,
                    &format!(
                        "Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {}",
                        meta_str(&old, "resourceVersion")
                    ),
                ));
            }
        }
        let is_pod = ri.group.is_empty() && ri.resource == "pods";
        let is_ns = ri.group.is_empty() && ri.resource == "namespaces";
        // NamespaceLifecycle admission: the immortal namespaces.
        if is_ns && ["default", "kube-system", "kube-public"].contains(&name) {
            return Err(ApiError::forbidden(
                &ri.group,
                &ri.resource,
                name,
                "this namespace may not be deleted",
            ));
        }
        // Graceful deletion applies to pods on a node that have not finished.
        let grace: i64 = if is_pod {
            let bound = old
                .pointer("/spec/nodeName")
                .and_then(Value::as_str)
                .is_some_and(|n| !n.is_empty());
            let phase = old
                .pointer("/status/phase")
                .and_then(Value::as_str)
                .unwrap_or("");
            if !bound || phase == "Succeeded" || phase == "Failed" {
                0
            } else {
                opts.grace_period
                    .unwrap_or_else(|| {
                        old.pointer("/spec/terminationGracePeriodSeconds")
                            .and_then(Value::as_i64)
                            .unwrap_or(30)
                    })
                    .max(0)
            }
        } else {
            0
        };
        let mut new = old.clone();
        let mut fins = finalizers(&old);
        // A CRD is deleted through the apiextensions finalizer: it stays Terminating
        // until the CRD controller (gc.rs) has deleted every instance.
        if ri.group == "apiextensions.k8s.io"
            && ri.resource == "customresourcedefinitions"
            && old.pointer("/metadata/deletionTimestamp").is_none()
        {
            if !fins.iter().any(|f| f == CRD_CLEANUP_FINALIZER) {
                fins.push(CRD_CLEANUP_FINALIZER.into());
            }
            set_condition(
                &mut new,
                json!({"type": "Terminating", "status": "True",
                       "reason": "InstanceDeletionPending",
                       "message": "CustomResourceDefinition marked for deletion; CustomResource deletion will begin soon"}),
            );
        }
        match opts.propagation.as_deref() {
            Some("Foreground") if !fins.iter().any(|f| f == "foregroundDeletion") => {
                fins.retain(|f| f != "orphan");
                fins.push("foregroundDeletion".into());
            }
            Some("Orphan") if !fins.iter().any(|f| f == "orphan") => {
                fins.retain(|f| f != "foregroundDeletion");
                fins.push("orphan".into());
            }
            Some("Background") | None | Some(_) => {}
        }
        if fins != finalizers(&old) {
            new["metadata"]["finalizers"] = json!(fins);
        }
        if is_ns {
            if old.pointer("/metadata/deletionTimestamp").is_none() {
                new["metadata"]["deletionTimestamp"] = json!(now_rfc3339());
                new["metadata"]["deletionGracePeriodSeconds"] = json!(0);
                new["status"]["phase"] = json!("Terminating");
            }
            if opts.dry_run {
                return Ok(Deleted::Pending(new));
            }
            if new == old {
                return Ok(Deleted::Pending(old));
            }
            let out = self.commit(&key, Some(new.clone()), EventType::Modified, new);
            return Ok(Deleted::Pending(out));
        }
        let already = old.pointer("/metadata/deletionTimestamp").is_some();
        if already {
            let cur = old
                .pointer("/metadata/deletionGracePeriodSeconds")
                .and_then(Value::as_i64)
                .unwrap_or(0);
            if grace < cur {
                let ts = chrono::Utc::now() + chrono::Duration::seconds(grace);
                new["metadata"]["deletionTimestamp"] =
                    json!(ts.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
                new["metadata"]["deletionGracePeriodSeconds"] = json!(grace);
            }
        } else if grace > 0 || !fins.is_empty() {
            let ts = chrono::Utc::now() + chrono::Duration::seconds(grace);
            new["metadata"]["deletionTimestamp"] =
                json!(ts.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
            new["metadata"]["deletionGracePeriodSeconds"] = json!(grace);
            if ri.has_generation {
                let g = old
                    .pointer("/metadata/generation")
                    .and_then(Value::as_i64)
                    .unwrap_or(0);
                new["metadata"]["generation"] = json!(g + 1);
            }
        }
        let remaining_grace = new
            .pointer("/metadata/deletionGracePeriodSeconds")
            .and_then(Value::as_i64)
            .unwrap_or(0);
        if fins.is_empty() && remaining_grace == 0 {
            if opts.dry_run {
                return Ok(Deleted::Gone(old));
            }
            let out = self.commit(&key, None, EventType::Deleted, new);
            self.after_write(ri, &out, true);
            return Ok(Deleted::Gone(self.view(ri, &out)));
        }
        if opts.dry_run || new == old {
            return Ok(Deleted::Pending(self.view(ri, &new)));
        }
        let out = self.commit(&key, Some(new.clone()), EventType::Modified, new);
        Ok(Deleted::Pending(self.view(ri, &out)))
    }

    /// Removes a finalizer from a stored object (controllers: GC, namespaces).
    pub fn remove_finalizer(&mut self, key: &Key, fin: &str) {
        let Some(old) = self.objects.get(key).cloned() else {
            return;
        };
        let mut fins = finalizers(&old);
        if !fins.iter().any(|f| f == fin) {
            return;
        }
        fins.retain(|f| f != fin);
        let mut new = old.clone();
        new["metadata"]["finalizers"] = json!(fins);
        if fins.is_empty()
            && let Some(m) = new["metadata"].as_object_mut()
        {
            m.remove("finalizers");
        }
        let deleting = new.pointer("/metadata/deletionTimestamp").is_some();
        let grace = new
            .pointer("/metadata/deletionGracePeriodSeconds")
            .and_then(Value::as_i64)
            .unwrap_or(0);
        if deleting && fins.is_empty() && grace == 0 {
            let out = self.commit(key, None, EventType::Deleted, new);
            if let Some(ri) = self.resource_by_storage(&key.0, &key.1) {
                self.after_write(&ri, &out, true);
            }
        } else {
            self.commit(key, Some(new.clone()), EventType::Modified, new);
        }
    }

    /// Replaces a stored object as a controller would (GC removing owner references).
    pub fn controller_write(&mut self, key: &Key, new: Value) {
        if self.objects.get(key) != Some(&new) {
            self.commit(key, Some(new.clone()), EventType::Modified, new);
        }
    }

    pub fn remove_namespace(&mut self, name: &str) {
        let key: Key = (
            String::new(),
            "namespaces".into(),
            String::new(),
            name.into(),
        );
        if let Some(mut o) = self.objects.get(&key).cloned() {
            o["spec"]["finalizers"] = json!([]);
            self.commit(&key, None, EventType::Deleted, o);
        }
    }

    pub fn resource_by_storage(&self, group: &str, resource: &str) -> Option<ResourceInfo> {
        self.builtins
            .iter()
            .chain(self.crds.values())
            .find(|r| r.storage_group == group && r.resource == resource && r.group == group)
            .cloned()
    }
}

impl ApiError {
    fn with_kind_message(self, got: &str, want: &str) -> Self {
        if !got.is_empty() && got != want {
            ApiError::bad_request(format!(
                "the kind in the data ({got}) does not match the expected kind ({want})"
            ))
        } else {
            self
        }
    }
}

/// The finalizer through which the apiextensions-apiserver deletes a CRD's instances.
pub const CRD_CLEANUP_FINALIZER: &str = "customresourcecleanup.apiextensions.k8s.io";

/// Sets (or replaces by type) one `status.conditions` entry, with a transition time.
pub fn set_condition(obj: &mut Value, mut cond: Value) {
    if !obj.get("status").is_some_and(Value::is_object) {
        obj["status"] = json!({});
    }
    let conds = obj["status"]
        .as_object_mut()
        .map(|m| m.entry("conditions").or_insert_with(|| json!([])));
    let Some(list) = conds.and_then(Value::as_array_mut) else {
        return;
    };
    let same = list.iter().position(|c| c["type"] == cond["type"]);
    let now = now_rfc3339();
    cond["lastTransitionTime"] = match same {
        Some(i) if list[i]["status"] == cond["status"] => list[i]["lastTransitionTime"].clone(),
        _ => json!(now),
    };
    match same {
        Some(i) => list[i] = cond,
        None => list.push(cond),
    }
}

/// Records a non-apply write in managedFields, with the kind's list semantics.
fn record_write(
    ri: &ResourceInfo,
    old: Option<&Value>,
    new: &mut Value,
    manager: &str,
    sub: Option<&str>,
    now: &str,
) {
    match &ri.crd {
        Some(crd) => patch::record_update_with(old, new, manager, sub, now, &*crd.schema),
        None => patch::record_update(old, new, manager, sub, now),
    }
}

/// ObjectMeta validation common to all kinds: labels, annotations, owner references,
/// finalizers (in `ValidateObjectMeta`'s order).
fn metadata_causes(obj: &Value) -> Vec<Cause> {
    let mut out = validation::labels_and_annotations(obj);
    if let Some(refs) = obj
        .pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
    {
        let mut controllers = Vec::new();
        for r in refs {
            for (f, what) in [
                ("apiVersion", "version"),
                ("kind", "kind"),
                ("name", "name"),
            ] {
                if r[f].as_str().is_none_or(str::is_empty) {
                    out.push(cause(
                        "FieldValueInvalid",
                        &format!("metadata.ownerReferences.{f}"),
                        format!("Invalid value: \"\": {what} must not be empty"),
                    ));
                }
            }
            if r["uid"].as_str().is_none_or(str::is_empty) {
                out.push(cause(
                    "FieldValueInvalid",
                    "metadata.ownerReferences.uid",
                    "Invalid value: \"\": uid must not be empty",
                ));
            }
            if r["controller"].as_bool() == Some(true) {
                controllers.push(format!(
                    "{}/{}, Kind={}, Name={}, UID={}",
                    r["apiVersion"]
                        .as_str()
                        .unwrap_or_default()
                        .split('/')
                        .next()
                        .unwrap_or_default(),
                    r["apiVersion"]
                        .as_str()
                        .unwrap_or_default()
                        .rsplit('/')
                        .next()
                        .unwrap_or_default(),
                    r["kind"].as_str().unwrap_or_default(),
                    r["name"].as_str().unwrap_or_default(),
                    r["uid"].as_str().unwrap_or_default()
                ));
            }
        }
        if controllers.len() > 1 {
            out.push(cause(
                "FieldValueInvalid",
                "metadata.ownerReferences",
                format!(
                    "Invalid value: []v1.OwnerReference{{...}}: Only one reference can have Controller set to true. Found \"true\" in references for {}",
                    controllers.join(" and ")
                ),
            ));
        }
    }
    out.extend(validation::finalizers(obj));
    out
}
