//! `metadata.managedFields`: decoding, encoding, and recording non-apply writes (`Update` entries).

use super::*;

// ---------------------------------------------------------------------------------------
// Managed fields
// ---------------------------------------------------------------------------------------

#[derive(Clone, Debug, PartialEq)]
pub(super) struct ManagedEntry {
    pub(super) manager: String,
    pub(super) operation: String,
    pub(super) api_version: String,
    pub(super) time: Option<String>,
    pub(super) subresource: String,
    pub(super) set: FieldSet,
}

impl ManagedEntry {
    pub(super) fn same_key(&self, manager: &str, operation: &str, subresource: &str) -> bool {
        self.manager == manager && self.operation == operation && self.subresource == subresource
    }
}

pub(super) fn str_field(m: &Map<String, Value>, k: &str) -> Result<String, String> {
    match m.get(k) {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(other) => Err(format!("managedFields.{k} must be a string, got {other}")),
    }
}

/// Decodes `metadata.managedFields`. Entries that are entirely empty (`{}`, the documented
/// way to reset managed fields) are dropped.
pub(super) fn decode_managed(v: Option<&Value>) -> Result<Vec<ManagedEntry>, String> {
    let items = match v {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(a)) => a,
        Some(other) => return Err(format!("managedFields must be a list, got {other}")),
    };
    let mut out: Vec<ManagedEntry> = Vec::new();
    for it in items {
        let Value::Object(m) = it else {
            return Err(format!("managedFields entry must be an object, got {it}"));
        };
        if m.is_empty() {
            continue;
        }
        let fields_type = str_field(m, "fieldsType")?;
        if !fields_type.is_empty() && fields_type != "FieldsV1" {
            return Err(format!("unsupported fieldsType {fields_type:?}"));
        }
        let set = match m.get("fieldsV1") {
            None | Some(Value::Null) => FieldSet::default(),
            Some(f) => FieldSet::from_fields_v1(f, 0)?,
        };
        let operation = str_field(m, "operation")?;
        if operation != "Apply" && operation != "Update" {
            return Err(format!("invalid managedFields operation {operation:?}"));
        }
        let entry = ManagedEntry {
            manager: str_field(m, "manager")?,
            operation,
            api_version: str_field(m, "apiVersion")?,
            time: Some(str_field(m, "time")?).filter(|t| !t.is_empty()),
            subresource: str_field(m, "subresource")?,
            set,
        };
        if let Some(prev) = out
            .iter_mut()
            .find(|e| e.same_key(&entry.manager, &entry.operation, &entry.subresource))
        {
            prev.set.union_with(&entry.set);
        } else {
            out.push(entry);
        }
    }
    Ok(out)
}

/// Encodes entries sorted like the apiserver (`sortEncodedManagedFields`): by operation
/// (`Apply` before `Update`), then time, manager, apiVersion, subresource. Empty entries
/// are dropped.
pub(super) fn encode_managed(mut entries: Vec<ManagedEntry>) -> Vec<Value> {
    entries.retain(|e| !e.set.is_empty());
    entries.sort_by(|a, b| {
        a.operation
            .cmp(&b.operation)
            .then_with(|| {
                a.time
                    .clone()
                    .unwrap_or_default()
                    .cmp(&b.time.clone().unwrap_or_default())
            })
            .then_with(|| a.manager.cmp(&b.manager))
            .then_with(|| a.api_version.cmp(&b.api_version))
            .then_with(|| a.subresource.cmp(&b.subresource))
    });
    entries
        .into_iter()
        .map(|e| {
            let mut m = Map::new();
            m.insert("manager".into(), Value::String(e.manager));
            m.insert("operation".into(), Value::String(e.operation));
            m.insert("apiVersion".into(), Value::String(e.api_version));
            if let Some(t) = e.time {
                m.insert("time".into(), Value::String(t));
            }
            m.insert("fieldsType".into(), Value::String("FieldsV1".into()));
            m.insert("fieldsV1".into(), e.set.to_fields_v1());
            if !e.subresource.is_empty() {
                m.insert("subresource".into(), Value::String(e.subresource));
            }
            Value::Object(m)
        })
        .collect()
}

pub(super) fn write_managed(obj: &mut Value, entries: Vec<ManagedEntry>) {
    let encoded = encode_managed(entries);
    let Value::Object(o) = obj else {
        return;
    };
    if encoded.is_empty() {
        if let Some(Value::Object(meta)) = o.get_mut("metadata") {
            meta.remove("managedFields");
        }
        return;
    }
    let meta = o
        .entry("metadata")
        .or_insert_with(|| Value::Object(Map::new()));
    if !meta.is_object() {
        *meta = Value::Object(Map::new());
    }
    if let Value::Object(meta) = meta {
        meta.insert("managedFields".into(), Value::Array(encoded));
    }
}

/// Fields nobody owns (the apiserver's `stripMetaManager`).
pub(super) fn strip_meta(set: &FieldSet) -> FieldSet {
    set.difference(&unowned_fields())
}

/// The paths of `stripMetaManager`: identity and server-set metadata.
pub(super) fn unowned_fields() -> FieldSet {
    let mut strip = FieldSet::default();
    for p in [
        &["f:apiVersion"][..],
        &["f:kind"],
        &["f:metadata"],
        &["f:metadata", "f:name"],
        &["f:metadata", "f:namespace"],
        &["f:metadata", "f:creationTimestamp"],
        &["f:metadata", "f:selfLink"],
        &["f:metadata", "f:uid"],
        &["f:metadata", "f:clusterName"],
        &["f:metadata", "f:generation"],
        &["f:metadata", "f:managedFields"],
        &["f:metadata", "f:resourceVersion"],
    ] {
        let p: Vec<String> = p.iter().map(|s| (*s).to_string()).collect();
        strip.insert(&p);
    }
    strip
}

pub(super) fn without_managed_fields(v: &Value) -> Value {
    let mut v = v.clone();
    if let Some(Value::Object(meta)) = v.get_mut("metadata") {
        meta.remove("managedFields");
    }
    v
}

/// What an empty typed built-in object serialises to (non-pointer structs as `{}`,
/// required lists as `null`), so that, as in the apiserver, a write never "adds" them:
/// `f:spec` and `f:spec.f:containers` of a created Pod carry no `.`.
pub(super) fn typed_skeleton(api_version: &str, kind: &str) -> Option<Value> {
    if !is_builtin_group(api_version) {
        return None;
    }
    use serde_json::json;
    let template = json!({ "metadata": {}, "spec": { "containers": null } });
    let mut sk = match kind {
        "Pod" => json!({ "spec": { "containers": null }, "status": {} }),
        "Service" => json!({ "spec": {}, "status": { "loadBalancer": {} } }),
        "Node" => json!({
            "spec": {},
            "status": { "daemonEndpoints": { "kubeletEndpoint": {} }, "nodeInfo": {} }
        }),
        "Namespace"
        | "PersistentVolume"
        | "PersistentVolumeClaim"
        | "PodDisruptionBudget"
        | "HorizontalPodAutoscaler" => json!({ "spec": {}, "status": {} }),
        "Lease" => json!({ "spec": {} }),
        "Event" if api_version == "v1" => json!({ "involvedObject": {}, "source": {} }),
        "Event" => json!({ "regarding": {}, "deprecatedSource": {} }),
        "Deployment" => json!({
            "spec": { "selector": null, "template": template, "strategy": {} }, "status": {}
        }),
        "StatefulSet" | "DaemonSet" => json!({
            "spec": { "selector": null, "template": template, "updateStrategy": {} },
            "status": {}
        }),
        "ReplicaSet" => json!({ "spec": { "selector": null, "template": template }, "status": {} }),
        "ReplicationController" | "Job" => {
            json!({ "spec": { "template": template }, "status": {} })
        }
        "CronJob" => json!({
            "spec": { "jobTemplate": { "metadata": {}, "spec": { "template": template } } },
            "status": {}
        }),
        "PodTemplate" => json!({ "template": template }),
        _ => json!({}),
    };
    sk["metadata"] = json!({});
    Some(sk)
}

/// Adds the skeleton's empty structs where `v` lacks them.
pub(super) fn fill_skeleton(v: &mut Value, skeleton: &Value) {
    if let (Value::Object(m), Value::Object(sk)) = (v, skeleton) {
        for (k, s) in sk {
            match m.get_mut(k) {
                Some(c) => fill_skeleton(c, s),
                None => {
                    m.insert(k.clone(), s.clone());
                }
            }
        }
    }
}

pub(super) fn obj_str<'a>(v: &'a Value, k: &str) -> &'a str {
    v.get(k).and_then(Value::as_str).unwrap_or("")
}

/// `capManagersManager`: at most 10 `Update` entries; the oldest are merged into
/// `ancient-changes`.
pub(super) fn cap_update_managers(entries: &mut Vec<ManagedEntry>) {
    const MAX_UPDATE_MANAGERS: usize = 10;
    const BUCKET: &str = "ancient-changes";
    let mut updaters: Vec<usize> = (0..entries.len())
        .filter(|&i| entries[i].operation == "Update")
        .collect();
    if updaters.len() <= MAX_UPDATE_MANAGERS {
        return;
    }
    updaters.sort_by(|&a, &b| entries[a].time.cmp(&entries[b].time));
    let mut length = updaters.len();
    let mut first: BTreeMap<String, usize> = BTreeMap::new();
    let mut remove = BTreeSet::new();
    for &i in &updaters {
        if length <= MAX_UPDATE_MANAGERS {
            break;
        }
        let version = entries[i].api_version.clone();
        match first.get(&version).copied() {
            Some(f) => {
                let set = entries[i].set.clone();
                let time = entries[i].time.clone();
                let bucket = &mut entries[f];
                bucket.manager = BUCKET.into();
                bucket.subresource = String::new();
                bucket.set.union_with(&set);
                bucket.time = time;
                remove.insert(i);
                length -= 1;
            }
            None => {
                first.insert(version, i);
            }
        }
    }
    let mut idx = 0;
    entries.retain(|_| {
        let keep = !remove.contains(&idx);
        idx += 1;
        keep
    });
    // Merge a bucket that now duplicates an existing one.
    let mut merged: Vec<ManagedEntry> = Vec::new();
    for e in entries.drain(..) {
        if let Some(m) = merged.iter_mut().find(|m| {
            m.same_key(&e.manager, &e.operation, &e.subresource) && m.api_version == e.api_version
        }) {
            m.set.union_with(&e.set);
            if e.time > m.time {
                m.time = e.time;
            }
        } else {
            merged.push(e);
        }
    }
    *entries = merged;
}

/// Records a non-apply write (create, update, any non-apply patch) in
/// `new.metadata.managedFields` as operation `Update` for `manager`, so that later
/// applies see conflicts with it.
///
/// Uses [`CoreListSemantics`] for the object's kind; see [`record_update_with`].
pub fn record_update(
    old: Option<&Value>,
    new: &mut Value,
    manager: &str,
    subresource: Option<&str>,
    now: &str,
) {
    let lists = CoreListSemantics {
        api_version: obj_str(new, "apiVersion").to_string(),
        kind: obj_str(new, "kind").to_string(),
    };
    record_update_with(old, new, manager, subresource, now, &lists);
}

/// [`record_update`] with explicit list semantics (e.g. a custom resource's schema).
///
/// As the apiserver's `Updater.Update`: the fields this write added or changed are given
/// to (`manager`, `Update`, `subresource`) and taken from every other entry (Apply entries
/// included — an update never conflicts); fields it removed are dropped from every entry;
/// the writer's entry gets `time = now` when it took any field. Managed fields sent by the
/// client in `new` (main resource only, non-empty list) replace the live ones first, so
/// clients can edit or reset them (`[{}]` clears them); otherwise the old object's are
/// kept. At most 10 Update entries are kept; older ones merge into `ancient-changes`.
pub fn record_update_with(
    old: Option<&Value>,
    new: &mut Value,
    manager: &str,
    subresource: Option<&str>,
    now: &str,
    lists: &dyn ListSemantics,
) {
    if !new.is_object() {
        return;
    }
    let lists = Schema::new(lists, new);
    let old_entries = || {
        old.and_then(|o| {
            decode_managed(o.get("metadata").and_then(|m| m.get("managedFields"))).ok()
        })
        .unwrap_or_default()
    };
    let client = new.get("metadata").and_then(|m| m.get("managedFields"));
    let client_sent = client
        .and_then(Value::as_array)
        .is_some_and(|a| !a.is_empty());
    let mut entries = if subresource.is_none() && client_sent {
        decode_managed(client).unwrap_or_else(|_| old_entries())
    } else {
        old_entries()
    };

    let av = obj_str(new, "apiVersion").to_string();
    let kind = obj_str(new, "kind").to_string();
    let mut before = old
        .map(without_managed_fields)
        .unwrap_or_else(|| Value::Object(Map::new()));
    let mut after = without_managed_fields(new);
    if let Some(sk) = typed_skeleton(&av, &kind) {
        fill_skeleton(&mut before, &sk);
        fill_skeleton(&mut after, &sk);
    }
    let cmp = compare(Some(&before), Some(&after), &lists);
    let mut changed = cmp.added;
    changed.union_with(&cmp.modified);
    let changed = strip_meta(&changed);
    let subresource = subresource.unwrap_or("");

    for e in entries.iter_mut() {
        e.set = e.set.difference(&changed).difference(&cmp.removed);
    }
    if !changed.is_empty() {
        match entries
            .iter_mut()
            .find(|e| e.same_key(manager, "Update", subresource))
        {
            Some(e) => {
                e.set.union_with(&changed);
                e.time = Some(now.to_string());
                e.api_version = av.clone();
            }
            None => entries.push(ManagedEntry {
                manager: manager.to_string(),
                operation: "Update".into(),
                api_version: av.clone(),
                time: Some(now.to_string()),
                subresource: subresource.to_string(),
                set: changed,
            }),
        }
    }
    entries.retain(|e| !e.set.is_empty());
    cap_update_managers(&mut entries);
    if let Some(Value::Object(meta)) = new.get_mut("metadata") {
        meta.remove("managedFields");
    }
    write_managed(new, entries);
}
