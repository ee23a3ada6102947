//! Patch engines: JSON merge patch (RFC 7386), JSON patch (RFC 6902), strategic merge
//! patch, and server-side apply with managed fields.
//!
//! The behaviour follows the apiserver's libraries (`k8s.io/apimachinery` strategicpatch,
//! `sigs.k8s.io/structured-merge-diff` and the apiserver's field manager) where they are
//! documented or well known; the few places where we approximate are called out in the doc
//! comments of [`strategic_merge_patch`], [`apply`] and [`record_update`].

use super::types::{ListSemantics, ListType};
use serde_json::{Map, Value};
use std::collections::{BTreeMap, BTreeSet};

#[derive(Debug, thiserror::Error)]
pub enum PatchError {
    /// The patch itself is malformed (400 BadRequest in the real apiserver).
    #[error("{0}")]
    BadRequest(String),
    /// The patch is well-formed but cannot be applied (422 Invalid), e.g. a JSON patch
    /// `test` op that fails or a path that does not exist.
    #[error("{0}")]
    Invalid(String),
    /// Server-side apply found fields owned by other managers (409 Conflict).
    #[error("Apply failed with {} conflict(s)", .0.len())]
    Conflict(Vec<ApplyConflict>),
}

/// One server-side apply conflict: `manager` owns `field` (e.g. `.spec.replicas`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApplyConflict {
    pub manager: String,
    pub field: String,
}

/// The message the apiserver puts in the 409 `Status` of a failed apply, e.g.
/// `Apply failed with 1 conflict: conflict with "kubectl": .spec.replicas`.
///
/// (The real server appends ` using apps/v1` for `Update` managers; [`ApplyConflict`]
/// does not carry the operation, so that suffix is not produced.)
pub fn conflict_message(conflicts: &[ApplyConflict]) -> String {
    match conflicts {
        [one] => format!(
            "Apply failed with 1 conflict: conflict with {:?}: {}",
            one.manager, one.field
        ),
        many => {
            let lines: Vec<String> = many
                .iter()
                .map(|c| format!("conflict with {:?}: {}", c.manager, c.field))
                .collect();
            format!(
                "Apply failed with {} conflicts: {}",
                many.len(),
                lines.join("\n")
            )
        }
    }
}

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

fn map_keys(keys: &[&str]) -> ListType {
    ListType::Map(keys.iter().map(|k| (*k).to_string()).collect())
}

/// Lists of `ObjectMeta` (object or template metadata), relative to the metadata.
fn meta_list(rel: &[&str]) -> Option<ListType> {
    match rel {
        ["finalizers"] => Some(ListType::Set),
        ["ownerReferences"] => Some(map_keys(&["uid"])),
        ["managedFields"] => Some(ListType::Atomic),
        _ => None,
    }
}

/// Lists of a `PodSpec`, relative to the pod spec.
fn pod_spec_list(rel: &[&str]) -> Option<ListType> {
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
fn pod_status_list(rel: &[&str]) -> Option<ListType> {
    let t = match rel {
        ["conditions"] => map_keys(&["type"]),
        ["podIPs"] => map_keys(&["ip"]),
        ["resourceClaimStatuses"] => map_keys(&["name"]),
        _ => return None,
    };
    Some(t)
}

/// Where the pod template's metadata/spec live for kinds that embed one.
fn pod_template_prefix(kind: &str) -> Option<&'static [&'static str]> {
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
    fn lookup(&self, p: &[&str]) -> Option<ListType> {
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

// ---------------------------------------------------------------------------------------
// JSON merge patch and JSON patch
// ---------------------------------------------------------------------------------------

/// RFC 7386 JSON merge patch: objects merge recursively, `null` deletes, anything else
/// (arrays included) replaces.
pub fn merge_patch(target: &Value, patch: &Value) -> Value {
    let mut out = target.clone();
    merge_into(&mut out, patch);
    out
}

fn merge_into(target: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    if let Value::Object(t) = target {
        for (k, v) in p {
            if v.is_null() {
                t.remove(k);
            } else {
                merge_into(t.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
    }
}

/// RFC 6902 JSON patch. A malformed patch document is a `BadRequest`; an operation that
/// cannot be applied (missing path, failed `test`, ...) is `Invalid` (422), with a message
/// worded like the apiserver's (evanphx/json-patch).
pub fn json_patch(target: &Value, patch: &Value) -> Result<Value, PatchError> {
    if !patch.is_array() {
        return Err(PatchError::BadRequest(
            "json: cannot unmarshal object into Go value of type jsonpatch.Patch".into(),
        ));
    }
    let ops: json_patch::Patch = serde_json::from_value(patch.clone())
        .map_err(|e| PatchError::BadRequest(format!("invalid JSON patch: {e}")))?;
    let mut out = target.clone();
    json_patch::patch(&mut out, &ops)
        .map_err(|e| PatchError::Invalid(describe_json_patch_error(&ops, &e)))?;
    Ok(out)
}

fn describe_json_patch_error(ops: &json_patch::Patch, e: &json_patch::PatchError) -> String {
    use json_patch::{PatchErrorKind as K, PatchOperation as O};
    let path = e.path.to_string();
    let op = ops.0.get(e.operation);
    match (&e.kind, op) {
        (K::TestFailed, _) => format!("testing value {path} failed: test failed"),
        (K::CannotMoveInsideItself, _) => {
            format!("move operation does not apply: cannot move {path} inside itself")
        }
        (K::InvalidFromPointer, Some(O::Move(m))) => format!(
            "move operation does not apply: doc is missing from path: {}: missing value",
            m.from
        ),
        (K::InvalidFromPointer, Some(O::Copy(c))) => format!(
            "copy operation does not apply: doc is missing from path: {}: missing value",
            c.from
        ),
        (_, Some(O::Add(_))) => {
            format!("add operation does not apply: doc is missing path: \"{path}\": missing value")
        }
        (_, Some(O::Remove(_))) => {
            format!(
                "remove operation does not apply: doc is missing path: \"{path}\": missing value"
            )
        }
        (_, Some(O::Replace(_))) => {
            format!("replace operation does not apply: doc is missing key: {path}: missing value")
        }
        (_, Some(O::Move(_))) => {
            format!("move operation does not apply: doc is missing path: \"{path}\": missing value")
        }
        (_, Some(O::Copy(_))) => {
            format!("copy operation does not apply: doc is missing path: \"{path}\": missing value")
        }
        (_, Some(O::Test(_))) => format!("testing value {path} failed: missing value"),
        (_, None) => format!("json patch failed at {path}: {}", e.kind),
    }
}

// ---------------------------------------------------------------------------------------
// Strategic merge patch
// ---------------------------------------------------------------------------------------

const DIRECTIVE: &str = "$patch";
const RETAIN_KEYS: &str = "$retainKeys";
const DELETE_FROM_PRIMITIVE: &str = "$deleteFromPrimitiveList";
const SET_ELEMENT_ORDER: &str = "$setElementOrder";

fn bad(msg: impl Into<String>) -> PatchError {
    PatchError::BadRequest(msg.into())
}

/// Kubernetes strategic merge patch (the apiserver's `application/strategic-merge-patch+json`).
///
/// Implemented as in `k8s.io/apimachinery/pkg/util/strategicpatch` (`mergeMap`,
/// `mergeSlice`, `normalizeElementOrder`): maps merge recursively and `null` deletes a key;
/// lists merge per `lists.list_type(path)` (`Map(keys)` merges items by the first key —
/// the `patchMergeKey` — and appends new ones, `Set` is an ordered union, `Atomic`
/// replaces); `$patch: replace|delete` on maps and on list items (`$patch: merge` on a map
/// is rejected, as upstream); `$retainKeys` (patch keys must be listed, unlisted live keys
/// are cleared); `$deleteFromPrimitiveList/<field>`; `$setElementOrder/<field>` (validated
/// against the patch list and used to order the result, server-only items interleaved as
/// upstream does). Errors are `BadRequest` with upstream's messages.
///
/// Approximations: `$patch: replace` on a map returns the patch map with directives and
/// nulls removed (upstream keeps them and lets decoding drop them); elements of atomic
/// lists are copied from the patch verbatim.
pub fn strategic_merge_patch(
    target: &Value,
    patch: &Value,
    lists: &dyn ListSemantics,
) -> Result<Value, PatchError> {
    let Value::Object(patch) = patch else {
        return Err(bad("invalid JSON document"));
    };
    let original = match target {
        Value::Object(m) => m.clone(),
        Value::Null => Map::new(),
        _ => return Err(bad("invalid JSON document")),
    };
    let mut names = Vec::new();
    let merged = smp_map(original, patch.clone(), &mut names, lists, 0)?;
    Ok(Value::Object(merged))
}

const MAX_DEPTH: usize = 200;

fn smp_map(
    mut original: Map<String, Value>,
    mut patch: Map<String, Value>,
    names: &mut Vec<String>,
    lists: &dyn ListSemantics,
    depth: usize,
) -> Result<Map<String, Value>, PatchError> {
    if depth > MAX_DEPTH {
        return Err(bad("patch is nested too deeply"));
    }
    if let Some(d) = patch.get(DIRECTIVE) {
        return match d.as_str() {
            Some("replace") => {
                patch.remove(DIRECTIVE);
                match remove_directives(Value::Object(patch)) {
                    Some(Value::Object(m)) => Ok(m),
                    _ => Ok(Map::new()),
                }
            }
            Some("delete") => Ok(Map::new()),
            _ => Err(bad(format!(
                "unknown patch type: {} in map: {}",
                display_scalar(d),
                Value::Object(patch.clone())
            ))),
        };
    }

    // $retainKeys
    if let Some(retain) = patch.remove(RETAIN_KEYS) {
        let Value::Array(retain) = retain else {
            return Err(bad("invalid patch format of retainKeys"));
        };
        let keep: BTreeSet<String> = retain
            .iter()
            .map(|v| v.as_str().map(str::to_string))
            .collect::<Option<_>>()
            .ok_or_else(|| bad("invalid patch format of retainKeys"))?;
        for (k, v) in &patch {
            if v.is_null()
                || k.starts_with(DELETE_FROM_PRIMITIVE)
                || k.starts_with(SET_ELEMENT_ORDER)
            {
                continue;
            }
            if !keep.contains(k) {
                return Err(bad("invalid patch format of retainKeys"));
            }
        }
        original.retain(|k, _| keep.contains(k));
    }

    // $setElementOrder/<field>, together with the list it orders.
    let order_keys: Vec<String> = patch
        .keys()
        .filter(|k| k.starts_with(SET_ELEMENT_ORDER))
        .cloned()
        .collect();
    for key in order_keys {
        let order = patch.remove(&key).unwrap_or(Value::Null);
        let Value::Array(order) = order else {
            return Err(bad(format!(
                "expected a []interface {{}}, but received a {}",
                go_type(&order)
            )));
        };
        let field = extract_key(&key, SET_ELEMENT_ORDER)
            .ok_or_else(|| bad("invalid patch format of setElementOrder list"))?;
        let orig_list = match original.get(&field) {
            None => None,
            Some(Value::Array(a)) => Some(a.clone()),
            Some(other) => {
                return Err(bad(format!(
                    "expected a []interface {{}}, but received a {}",
                    go_type(other)
                )));
            }
        };
        let patch_list = match patch.remove(&field) {
            None => None,
            Some(Value::Array(a)) => Some(a),
            Some(other) => {
                return Err(bad(format!(
                    "expected a []interface {{}}, but received a {}",
                    go_type(&other)
                )));
            }
        };
        names.push(field.clone());
        let lt = lists.list_type(names);
        let merge_key = smp_merge_key(&lt);
        validate_set_order(patch_list.as_deref().unwrap_or(&[]), &order, merge_key)?;
        let merged = match (&orig_list, patch_list.clone()) {
            (Some(o), None) => o.clone(),
            (None, Some(p)) => match remove_directives(Value::Array(p)) {
                Some(Value::Array(a)) => a,
                _ => Vec::new(),
            },
            (Some(o), Some(p)) => smp_list(o.clone(), p, &lt, names, lists, depth + 1)?,
            (None, None) => {
                names.pop();
                continue;
            }
        };
        let merged = if matches!(lt, ListType::Atomic) {
            merged
        } else {
            let (in_order, server_only) = partition(&merged, &order, merge_key)?;
            let orig_ref = orig_list.unwrap_or_default();
            let server_order = match (merge_key, &patch_list) {
                (Some(k), Some(p)) => aliased_server_order(&orig_ref, p, k),
                _ => orig_ref,
            };
            normalize_element_order(in_order, server_only, &order, &server_order, merge_key)?
        };
        names.pop();
        original.insert(field, Value::Array(merged));
    }

    // Plain keys first, then the parallel deletion lists.
    let mut keys: Vec<String> = patch
        .keys()
        .filter(|k| !k.starts_with(DELETE_FROM_PRIMITIVE))
        .cloned()
        .collect();
    keys.extend(
        patch
            .keys()
            .filter(|k| k.starts_with(DELETE_FROM_PRIMITIVE))
            .cloned(),
    );
    for k in keys {
        let Some(patch_v) = patch.remove(&k) else {
            continue;
        };
        if k.starts_with(DELETE_FROM_PRIMITIVE) {
            let field = extract_key(&k, DELETE_FROM_PRIMITIVE)
                .ok_or_else(|| bad("invalid patch format of primitive list"))?;
            let Value::Array(to_delete) = patch_v else {
                continue;
            };
            if let Some(Value::Array(cur)) = original.get_mut(&field) {
                cur.retain(|v| !to_delete.contains(v));
            }
            continue;
        }
        if patch_v.is_null() {
            original.remove(&k);
            continue;
        }
        let same_type = original
            .get(&k)
            .is_some_and(|o| json_kind(o) == json_kind(&patch_v));
        if !same_type {
            let mut v = patch_v;
            discard_nulls(&mut v);
            match remove_directives(v) {
                Some(v) => {
                    original.insert(k, v);
                }
                None => {
                    original.remove(&k);
                }
            }
            continue;
        }
        let orig_v = original.remove(&k).unwrap_or(Value::Null);
        names.push(k.clone());
        let merged = match (orig_v, patch_v) {
            (Value::Object(o), Value::Object(p)) => {
                Value::Object(smp_map(o, p, names, lists, depth + 1)?)
            }
            (Value::Array(o), Value::Array(p)) => {
                let lt = lists.list_type(names);
                Value::Array(smp_list(o, p, &lt, names, lists, depth + 1)?)
            }
            (_, p) => p,
        };
        names.pop();
        original.insert(k, merged);
    }
    Ok(original)
}

fn smp_merge_key(lt: &ListType) -> Option<&str> {
    match lt {
        ListType::Map(keys) => keys.first().map(String::as_str),
        _ => None,
    }
}

/// The live order upstream uses when a `$setElementOrder` list is merged together with
/// its patch list. Upstream reads it from the original slice *after* the merge mutated
/// that slice's backing array in place (Go slice aliasing: `$patch: delete` items shift
/// the array left, then appended items land in the freed tail). The apiserver decodes
/// objects with `len == cap`, so appends alias only into slots freed by deletions.
fn aliased_server_order(orig: &[Value], patch: &[Value], key: &str) -> Vec<Value> {
    let n = orig.len();
    let mut backing = orig.to_vec();
    let mut cur: Vec<Value> = orig.to_vec();
    let mut replace = false;
    for item in patch {
        match item.get(DIRECTIVE).and_then(Value::as_str) {
            Some("delete") => {
                let Some(kv) = item.get(key) else {
                    continue;
                };
                while let Some(i) = cur.iter().position(|o| o.get(key) == Some(kv)) {
                    cur.remove(i);
                    for (j, slot) in backing.iter_mut().enumerate().take(cur.len()).skip(i) {
                        *slot = cur[j].clone();
                    }
                }
            }
            Some("replace") => replace = true,
            _ => {}
        }
    }
    if replace {
        return backing;
    }
    let mut aliased = true;
    for item in patch {
        if item.get(DIRECTIVE).is_some() {
            continue;
        }
        let Some(kv) = item.get(key) else {
            continue;
        };
        if cur.iter().any(|o| o.get(key) == Some(kv)) {
            continue;
        }
        if cur.len() >= n {
            aliased = false;
        }
        if aliased && let Some(slot) = backing.get_mut(cur.len()) {
            *slot = item.clone();
        }
        cur.push(item.clone());
    }
    backing
}

/// `mergeSliceHandler` + `mergeSlice`.
fn smp_list(
    original: Vec<Value>,
    patch: Vec<Value>,
    lt: &ListType,
    names: &mut Vec<String>,
    lists: &dyn ListSemantics,
    depth: usize,
) -> Result<Vec<Value>, PatchError> {
    if matches!(lt, ListType::Atomic) {
        return Ok(patch);
    }
    if original.is_empty() && patch.is_empty() {
        return Ok(original);
    }
    let is_map = slice_element_is_map(&original, &patch)?;
    let merge_key = smp_merge_key(lt);
    let (orig_after, patch_after, merged) = if !is_map {
        let mut both = original.clone();
        both.extend(patch.iter().cloned());
        let mut seen: Vec<Value> = Vec::new();
        for v in both {
            if !seen.contains(&v) {
                seen.push(v);
            }
        }
        (original, patch, seen)
    } else {
        let Some(key) = merge_key else {
            return Err(bad(format!(
                "cannot merge lists without merge key for {}",
                names.join(".")
            )));
        };
        let (orig2, patch2) = smp_special_elements(original, patch, key)?;
        let merged = smp_merge_items(orig2.clone(), &patch2, key, names, lists, depth)?;
        (orig2, patch2, merged)
    };
    let key = if is_map { merge_key } else { None };
    let (in_patch, server_only) = partition(&merged, &patch_after, key)?;
    normalize_element_order(in_patch, server_only, &patch_after, &orig_after, key)
}

fn slice_element_is_map(a: &[Value], b: &[Value]) -> Result<bool, PatchError> {
    let mut kind: Option<u8> = None;
    for v in a.iter().chain(b.iter()) {
        if v.is_array() {
            return Err(bad("lists of lists are not supported"));
        }
        let k = json_kind(v);
        if let Some(prev) = kind
            && prev != k
        {
            return Err(bad(format!(
                "mismatched types in list: {} and {}",
                kind_name(prev),
                kind_name(k)
            )));
        }
        kind = Some(k);
    }
    Ok(kind == Some(KIND_OBJECT))
}

/// `mergeSliceWithSpecialElements`: `$patch: delete` items remove the matching original
/// items, `$patch: replace` makes the list the patch's non-directive items.
fn smp_special_elements(
    mut original: Vec<Value>,
    patch: Vec<Value>,
    key: &str,
) -> Result<(Vec<Value>, Vec<Value>), PatchError> {
    let mut plain = Vec::new();
    let mut replace = false;
    for v in patch {
        let Value::Object(m) = &v else {
            return Err(bad("expected a map in a merged list"));
        };
        match m.get(DIRECTIVE) {
            None => plain.push(v),
            Some(Value::String(d)) if d == "delete" => {
                let Some(kv) = m.get(key) else {
                    return Err(no_merge_key(m, key));
                };
                original.retain(|o| o.get(key) != Some(kv));
            }
            Some(Value::String(d)) if d == "replace" => replace = true,
            Some(Value::String(d)) if d == "merge" => {
                return Err(bad("merging lists cannot yet be specified in the patch"));
            }
            Some(d) => {
                return Err(bad(format!(
                    "unknown patch type: {} in map: {}",
                    display_scalar(d),
                    v
                )));
            }
        }
    }
    if replace {
        let cleaned = plain
            .into_iter()
            .filter_map(|mut v| {
                discard_nulls(&mut v);
                remove_directives(v)
            })
            .collect();
        return Ok((cleaned, Vec::new()));
    }
    Ok((original, plain))
}

fn no_merge_key(m: &Map<String, Value>, key: &str) -> PatchError {
    bad(format!(
        "map: {} does not contain declared merge key: {key}",
        Value::Object(m.clone())
    ))
}

/// `mergeSliceWithoutSpecialElements`.
fn smp_merge_items(
    mut original: Vec<Value>,
    patch: &[Value],
    key: &str,
    names: &mut Vec<String>,
    lists: &dyn ListSemantics,
    depth: usize,
) -> Result<Vec<Value>, PatchError> {
    for v in patch {
        let Value::Object(pm) = v else {
            return Err(bad("expected a map in a merged list"));
        };
        let Some(kv) = pm.get(key) else {
            return Err(no_merge_key(pm, key));
        };
        let mut found = None;
        for (i, o) in original.iter().enumerate() {
            let Value::Object(om) = o else {
                return Err(bad(format!("value for key {i} is not a map")));
            };
            if om.get(key) == Some(kv) {
                found = Some(i);
                break;
            }
        }
        match found {
            Some(i) => {
                let om = match std::mem::take(&mut original[i]) {
                    Value::Object(m) => m,
                    _ => Map::new(),
                };
                original[i] = Value::Object(smp_map(om, pm.clone(), names, lists, depth + 1)?);
            }
            None => {
                let mut nv = v.clone();
                discard_nulls(&mut nv);
                if let Some(nv) = remove_directives(nv) {
                    original.push(nv);
                }
            }
        }
    }
    Ok(original)
}

fn item_key<'a>(v: &'a Value, key: Option<&str>) -> Option<&'a Value> {
    match key {
        Some(k) => v.get(k),
        None => Some(v),
    }
}

fn index_of(list: &[Value], v: &Value, key: Option<&str>) -> Option<usize> {
    let needle = item_key(v, key)?;
    list.iter().position(|x| item_key(x, key) == Some(needle))
}

/// Splits `items` into those present in `by` and the others (both keep `items` order).
fn partition(
    items: &[Value],
    by: &[Value],
    key: Option<&str>,
) -> Result<(Vec<Value>, Vec<Value>), PatchError> {
    let mut inside = Vec::new();
    let mut outside = Vec::new();
    for v in items {
        if let Some(k) = key {
            match v {
                Value::Object(m) if m.contains_key(k) => {}
                Value::Object(m) => return Err(no_merge_key(m, k)),
                _ => return Err(bad("expected a map in a merged list")),
            }
        }
        if index_of(by, v, key).is_some() {
            inside.push(v.clone());
        } else {
            outside.push(v.clone());
        }
    }
    Ok((inside, outside))
}

fn normalize_slice_order(
    mut items: Vec<Value>,
    order: &[Value],
    key: Option<&str>,
) -> Result<Vec<Value>, PatchError> {
    let mut to_delete = Vec::new();
    if let Some(k) = key {
        for v in items.iter().chain(order.iter()) {
            if let Value::Object(m) = v
                && !m.contains_key(k)
            {
                return Err(no_merge_key(m, k));
            }
        }
        let (keep, del): (Vec<Value>, Vec<Value>) = items
            .into_iter()
            .partition(|v| v.get(DIRECTIVE).and_then(Value::as_str) != Some("delete"));
        items = keep;
        to_delete = del;
    }
    // Every item is in `order` here, so the comparator is consistent.
    items.sort_by_key(|v| index_of(order, v, key).unwrap_or(usize::MAX));
    items.extend(to_delete);
    Ok(items)
}

/// `normalizeElementOrder`: the patch items in patch order, the server-only items in live
/// order, interleaved by live order where both are known.
fn normalize_element_order(
    patch: Vec<Value>,
    server_only: Vec<Value>,
    patch_order: &[Value],
    server_order: &[Value],
    key: Option<&str>,
) -> Result<Vec<Value>, PatchError> {
    let right = normalize_slice_order(patch, patch_order, key)?;
    let left = normalize_slice_order(server_only, server_order, key)?;
    let mut out = Vec::with_capacity(left.len() + right.len());
    let (mut i, mut j) = (0, 0);
    while i < left.len() || j < right.len() {
        if i >= left.len() {
            out.push(right[j].clone());
            j += 1;
        } else if j >= right.len() {
            out.push(left[i].clone());
            i += 1;
        } else {
            let li = index_of(server_order, &left[i], key);
            let ri = index_of(server_order, &right[j], key);
            match (li, ri) {
                (Some(a), Some(b)) if a < b => {
                    out.push(left[i].clone());
                    i += 1;
                }
                _ => {
                    out.push(right[j].clone());
                    j += 1;
                }
            }
        }
    }
    Ok(out)
}

/// `validatePatchWithSetOrderList`: the patch list must follow the order list.
fn validate_set_order(
    patch: &[Value],
    order: &[Value],
    key: Option<&str>,
) -> Result<(), PatchError> {
    if order.is_empty() || patch.is_empty() {
        return Ok(());
    }
    let non_delete: Vec<&Value> = match key {
        Some(_) => {
            let mut out = Vec::new();
            for v in patch {
                if !v.is_object() {
                    return Err(bad("expected a map in a merged list"));
                }
                if v.get(DIRECTIVE).and_then(Value::as_str) != Some("delete") {
                    out.push(v);
                }
            }
            out
        }
        None => patch.iter().collect(),
    };
    let (mut pi, mut oi) = (0, 0);
    while pi < non_delete.len() && oi < order.len() {
        if non_delete[pi].get(DIRECTIVE).is_some() {
            pi += 1;
            continue;
        }
        let equal = match key {
            None => non_delete[pi] == &order[oi],
            Some(k) => {
                let l = non_delete[pi]
                    .get(k)
                    .ok_or_else(|| bad(format!("map does not contain declared merge key: {k}")))?;
                let r = order[oi]
                    .get(k)
                    .ok_or_else(|| bad(format!("map does not contain declared merge key: {k}")))?;
                l == r
            }
        };
        if equal {
            pi += 1;
        }
        oi += 1;
    }
    if pi < non_delete.len() && oi >= order.len() {
        return Err(bad(format!(
            "The order in patch list:\n{}\n doesn't match $setElementOrder list:\n{}\n",
            Value::Array(patch.to_vec()),
            Value::Array(order.to_vec())
        )));
    }
    Ok(())
}

fn extract_key(s: &str, prefix: &str) -> Option<String> {
    let (p, rest) = s.split_once('/')?;
    (p == prefix).then(|| rest.to_string())
}

/// `removeDirectives`: drops maps carrying `$patch` (returns None for such a map itself).
fn remove_directives(v: Value) -> Option<Value> {
    match v {
        Value::Object(m) => {
            if m.contains_key(DIRECTIVE) {
                return None;
            }
            let mut out = Map::new();
            for (k, v) in m {
                if let Some(v) = remove_directives(v) {
                    out.insert(k, v);
                }
            }
            Some(Value::Object(out))
        }
        Value::Array(a) => Some(Value::Array(
            a.into_iter().filter_map(remove_directives).collect(),
        )),
        other => Some(other),
    }
}

fn discard_nulls(v: &mut Value) {
    match v {
        Value::Object(m) => {
            m.retain(|_, v| !v.is_null());
            for v in m.values_mut() {
                discard_nulls(v);
            }
        }
        Value::Array(a) => a.iter_mut().for_each(discard_nulls),
        _ => {}
    }
}

const KIND_NULL: u8 = 0;
const KIND_BOOL: u8 = 1;
const KIND_NUMBER: u8 = 2;
const KIND_STRING: u8 = 3;
const KIND_ARRAY: u8 = 4;
const KIND_OBJECT: u8 = 5;

fn json_kind(v: &Value) -> u8 {
    match v {
        Value::Null => KIND_NULL,
        Value::Bool(_) => KIND_BOOL,
        Value::Number(_) => KIND_NUMBER,
        Value::String(_) => KIND_STRING,
        Value::Array(_) => KIND_ARRAY,
        Value::Object(_) => KIND_OBJECT,
    }
}

fn kind_name(k: u8) -> &'static str {
    match k {
        KIND_NULL => "null",
        KIND_BOOL => "bool",
        KIND_NUMBER => "float64",
        KIND_STRING => "string",
        KIND_ARRAY => "[]interface {}",
        _ => "map[string]interface {}",
    }
}

fn go_type(v: &Value) -> &'static str {
    kind_name(json_kind(v))
}

fn display_scalar(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

// ---------------------------------------------------------------------------------------
// Field sets (structured-merge-diff `fieldpath.Set`) and the FieldsV1 encoding
// ---------------------------------------------------------------------------------------

/// A set of field paths. Path elements are kept in their FieldsV1 spelling:
/// `f:<name>`, `k:<json object of the key fields>`, `v:<json value>`, `i:<index>`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct FieldSet {
    member: bool,
    children: BTreeMap<String, FieldSet>,
}

impl FieldSet {
    fn insert(&mut self, path: &[String]) {
        match path.split_first() {
            None => self.member = true,
            Some((first, rest)) => self.children.entry(first.clone()).or_default().insert(rest),
        }
    }

    fn has(&self, path: &[String]) -> bool {
        match path.split_first() {
            None => self.member,
            Some((first, rest)) => self.children.get(first).is_some_and(|c| c.has(rest)),
        }
    }

    fn is_empty(&self) -> bool {
        !self.member && self.children.values().all(FieldSet::is_empty)
    }

    fn union_with(&mut self, other: &FieldSet) {
        self.member |= other.member;
        for (k, c) in &other.children {
            self.children.entry(k.clone()).or_default().union_with(c);
        }
    }

    /// Members of `self` that are not members of `other` (not recursive: a member of
    /// `other` does not remove its descendants, as in `Set.Difference`).
    fn difference(&self, other: &FieldSet) -> FieldSet {
        let mut out = FieldSet {
            member: self.member && !other.member,
            children: BTreeMap::new(),
        };
        for (k, c) in &self.children {
            let d = match other.children.get(k) {
                Some(o) => c.difference(o),
                None => c.clone(),
            };
            if !d.is_empty() {
                out.children.insert(k.clone(), d);
            }
        }
        out
    }

    fn intersection(&self, other: &FieldSet) -> FieldSet {
        let mut out = FieldSet {
            member: self.member && other.member,
            children: BTreeMap::new(),
        };
        for (k, c) in &self.children {
            if let Some(o) = other.children.get(k) {
                let i = c.intersection(o);
                if !i.is_empty() {
                    out.children.insert(k.clone(), i);
                }
            }
        }
        out
    }

    /// `EnsureNamedFieldsAreMembers`, taking every field name as a named field (we have
    /// no schema to tell struct fields from map keys).
    fn ensure_named(&self) -> FieldSet {
        let mut out = FieldSet {
            member: self.member,
            children: BTreeMap::new(),
        };
        for (k, c) in &self.children {
            let mut e = c.ensure_named();
            if k.starts_with("f:") && !e.is_empty() {
                e.member = true;
            }
            out.children.insert(k.clone(), e);
        }
        out
    }

    fn members(&self) -> Vec<Vec<String>> {
        let mut out = Vec::new();
        let mut prefix = Vec::new();
        self.collect_members(&mut prefix, &mut out);
        out
    }

    fn collect_members(&self, prefix: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
        if self.member && !prefix.is_empty() {
            out.push(prefix.clone());
        }
        for (k, c) in &self.children {
            prefix.push(k.clone());
            c.collect_members(prefix, out);
            prefix.pop();
        }
    }

    fn to_fields_v1(&self) -> Value {
        let mut m = Map::new();
        if self.member && !self.children.is_empty() {
            m.insert(".".into(), Value::Object(Map::new()));
        }
        for (k, c) in &self.children {
            if !c.is_empty() {
                m.insert(k.clone(), c.to_fields_v1());
            }
        }
        Value::Object(m)
    }

    fn from_fields_v1(v: &Value, depth: usize) -> Result<FieldSet, String> {
        if depth > MAX_DEPTH {
            return Err("fieldsV1 nested too deeply".into());
        }
        let Value::Object(m) = v else {
            return Err(format!("expected an object in fieldsV1, got {v}"));
        };
        let mut out = FieldSet::default();
        for (k, c) in m {
            if k == "." {
                out.member = true;
                continue;
            }
            let valid = ["f:", "k:", "v:", "i:"].iter().any(|p| k.starts_with(p));
            if !valid {
                return Err(format!("unknown path element {k:?} in fieldsV1"));
            }
            let mut child = FieldSet::from_fields_v1(c, depth + 1)?;
            if c.as_object().is_some_and(Map::is_empty) {
                child.member = true;
            }
            out.children.insert(k.clone(), child);
        }
        Ok(out)
    }
}

/// `fieldpath.Path.String()`: `.spec.containers[name="c"].image`, `.metadata.finalizers[="x"]`.
fn path_string(path: &[String]) -> String {
    let mut s = String::new();
    for pe in path {
        if let Some(name) = pe.strip_prefix("f:") {
            s.push('.');
            s.push_str(name);
        } else if let Some(key) = pe.strip_prefix("k:") {
            match serde_json::from_str::<Map<String, Value>>(key) {
                Ok(m) => {
                    let parts: Vec<String> = m.iter().map(|(k, v)| format!("{k}={v}")).collect();
                    s.push('[');
                    s.push_str(&parts.join(","));
                    s.push(']');
                }
                Err(_) => s.push_str(&format!("[{key}]")),
            }
        } else if let Some(v) = pe.strip_prefix("v:") {
            s.push_str(&format!("[={v}]"));
        } else if let Some(i) = pe.strip_prefix("i:") {
            s.push_str(&format!("[{i}]"));
        }
    }
    s
}

/// Defaults of list-map key fields that clients commonly omit (SMD fills them from the
/// schema): the `protocol` of container and service ports.
fn key_default(key: &str) -> Option<Value> {
    (key == "protocol").then(|| Value::String("TCP".into()))
}

/// The path element of one list item, or None when the item does not fit the list type.
fn item_pe(item: &Value, lt: &ListType) -> Option<String> {
    match lt {
        ListType::Atomic => None,
        ListType::Set => match item {
            Value::Array(_) | Value::Object(_) | Value::Null => None,
            v => Some(format!("v:{v}")),
        },
        ListType::Map(keys) => {
            let Value::Object(m) = item else {
                return None;
            };
            // Missing key fields take their default, or are left out of the key (as
            // structured-merge-diff does); an item with no key field at all is invalid.
            let mut k = Map::new();
            for key in keys {
                let v = match m.get(key) {
                    Some(Value::Null) | None => key_default(key),
                    Some(v) => Some(v.clone()),
                };
                if let Some(v) = v {
                    k.insert(key.clone(), v);
                }
            }
            if k.is_empty() {
                return None;
            }
            Some(format!("k:{}", Value::Object(k)))
        }
    }
}

/// Path elements of all items, or None (treat the list as atomic) if any item does not
/// fit or two items share a key.
fn list_pes(items: &[Value], lt: &ListType) -> Option<Vec<String>> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::with_capacity(items.len());
    for it in items {
        let pe = item_pe(it, lt)?;
        if !seen.insert(pe.clone()) {
            return None;
        }
        out.push(pe);
    }
    Some(out)
}

/// What the SSA walkers know of a kind: its lists (metadata lists answered for every
/// kind, custom resources included) and, for built-in kinds, which maps and list items
/// are atomic (`+structType=atomic` / `+mapType=atomic`).
struct Schema<'a> {
    lists: &'a dyn ListSemantics,
    kind: String,
    builtin: bool,
}

impl<'a> Schema<'a> {
    fn new(lists: &'a dyn ListSemantics, obj: &Value) -> Self {
        let av = obj_str(obj, "apiVersion");
        Schema {
            lists,
            kind: obj_str(obj, "kind").to_string(),
            builtin: is_builtin_group(av),
        }
    }

    /// Is the map at `names` (or, with `item`, each item of the list at `names`) atomic?
    fn atomic(&self, names: &[String], item: bool) -> bool {
        let p: Vec<&str> = names.iter().map(String::as_str).collect();
        if item && p == ["metadata", "ownerReferences"] {
            return true;
        }
        if !self.builtin {
            return false;
        }
        let pod_rel = |rel: &[&str]| -> bool {
            match rel {
                ["nodeSelector"] => !item,
                ["imagePullSecrets"] => item,
                [
                    "containers" | "initContainers" | "ephemeralContainers",
                    "env",
                    "valueFrom",
                    "configMapKeyRef" | "secretKeyRef" | "fieldRef" | "resourceFieldRef",
                ] => !item,
                _ => false,
            }
        };
        if let Some(prefix) = pod_template_prefix(&self.kind)
            && p.len() > prefix.len() + 1
            && p[..prefix.len()] == *prefix
            && p[prefix.len()] == "spec"
        {
            return pod_rel(&p[prefix.len() + 1..]);
        }
        match (self.kind.as_str(), p.as_slice()) {
            ("Pod", ["spec", rel @ ..]) => pod_rel(rel),
            (
                "Deployment"
                | "StatefulSet"
                | "DaemonSet"
                | "ReplicaSet"
                | "Job"
                | "PodDisruptionBudget",
                ["spec", "selector"],
            ) => !item,
            ("Service" | "ReplicationController", ["spec", "selector"]) => !item,
            _ => false,
        }
    }
}

impl ListSemantics for Schema<'_> {
    fn list_type(&self, path: &[String]) -> ListType {
        if let [first, rest @ ..] = path
            && first == "metadata"
        {
            let rel: Vec<&str> = rest.iter().map(String::as_str).collect();
            if let Some(t) = meta_list(&rel) {
                return t;
            }
        }
        self.lists.list_type(path)
    }
}

fn is_builtin_group(api_version: &str) -> bool {
    let group = api_version.rsplit_once('/').map_or("", |(g, _)| g);
    group.is_empty() || !group.contains('.') || group.ends_with(".k8s.io")
}

/// `TypedValue.ToFieldSet` of an applied configuration.
fn to_field_set(v: &Value, lists: &Schema<'_>) -> Result<FieldSet, PatchError> {
    let mut set = FieldSet::default();
    let mut names = Vec::new();
    let mut path = Vec::new();
    fs_walk(v, &mut names, &mut path, lists, &mut set, 0)?;
    Ok(set)
}

fn fs_walk(
    v: &Value,
    names: &mut Vec<String>,
    path: &mut Vec<String>,
    lists: &Schema<'_>,
    set: &mut FieldSet,
    depth: usize,
) -> Result<(), PatchError> {
    if depth > MAX_DEPTH {
        return Err(bad("object is nested too deeply"));
    }
    match v {
        Value::Object(m) => {
            for (k, c) in m {
                names.push(k.clone());
                path.push(format!("f:{k}"));
                let empty_map = c.as_object().is_some_and(Map::is_empty);
                if c.is_null() || empty_map || (c.is_object() && lists.atomic(names, false)) {
                    set.insert(path);
                } else {
                    fs_walk(c, names, path, lists, set, depth + 1)?;
                }
                path.pop();
                names.pop();
            }
        }
        Value::Array(items) => {
            let lt = lists.list_type(names);
            if matches!(lt, ListType::Atomic) {
                set.insert(path);
                return Ok(());
            }
            let mut seen = BTreeSet::new();
            for it in items {
                let pe = item_pe(it, &lt).ok_or_else(|| {
                    bad(format!(
                        "{}: element {} does not fit the list type ({})",
                        path_string(path),
                        it,
                        describe_list_type(&lt)
                    ))
                })?;
                if !seen.insert(pe.clone()) {
                    return Err(bad(format!(
                        "{}: duplicate entries for key {}",
                        path_string(path),
                        path_string(std::slice::from_ref(&pe))
                    )));
                }
                path.push(pe);
                set.insert(path);
                if it.is_object() && !lists.atomic(names, true) {
                    fs_walk(it, names, path, lists, set, depth + 1)?;
                }
                path.pop();
            }
        }
        _ => set.insert(path),
    }
    Ok(())
}

fn describe_list_type(lt: &ListType) -> String {
    match lt {
        ListType::Atomic => "atomic".into(),
        ListType::Set => "set of scalars".into(),
        ListType::Map(keys) => format!("map with keys {}", keys.join(",")),
    }
}

/// `typed.Comparison`.
#[derive(Default, Debug)]
struct Comparison {
    added: FieldSet,
    modified: FieldSet,
    removed: FieldSet,
}

fn compare(l: Option<&Value>, r: Option<&Value>, lists: &Schema<'_>) -> Comparison {
    let mut cmp = Comparison::default();
    let mut names = Vec::new();
    let mut path = Vec::new();
    cmp_walk(l, r, &mut names, &mut path, lists, &mut cmp, 0);
    cmp
}

fn cmp_leaf(l: Option<&Value>, r: Option<&Value>, path: &[String], cmp: &mut Comparison) {
    if path.is_empty() {
        return;
    }
    match (l, r) {
        (None, Some(_)) => cmp.added.insert(path),
        (Some(_), None) => cmp.removed.insert(path),
        (Some(a), Some(b)) if a != b => cmp.modified.insert(path),
        _ => {}
    }
}

fn cmp_walk(
    l: Option<&Value>,
    r: Option<&Value>,
    names: &mut Vec<String>,
    path: &mut Vec<String>,
    lists: &Schema<'_>,
    cmp: &mut Comparison,
    depth: usize,
) {
    if l.is_none() && r.is_none() {
        return;
    }
    if depth > MAX_DEPTH {
        cmp_leaf(l, r, path, cmp);
        return;
    }
    // A null on one side is a wildcard taking the other side's shape (present, empty),
    // as in structured-merge-diff: typed objects serialise `containers: null`.
    let all = |f: fn(&Value) -> bool| {
        let ok = |v: Option<&Value>| v.is_none_or(|v| v.is_null() || f(v));
        ok(l) && ok(r) && (l.is_some_and(f) || r.is_some_and(f))
    };
    if all(Value::is_object) {
        let lm = l.and_then(Value::as_object);
        let rm = r.and_then(Value::as_object);
        let both_empty = lm.is_none_or(Map::is_empty) && rm.is_none_or(Map::is_empty);
        let atomic_item = path.last().is_some_and(|p| !p.starts_with("f:"));
        if both_empty || lists.atomic(names, atomic_item) {
            cmp_leaf(l, r, path, cmp);
            return;
        }
        let keys: BTreeSet<&String> = lm
            .into_iter()
            .flat_map(Map::keys)
            .chain(rm.into_iter().flat_map(Map::keys))
            .collect();
        for k in keys {
            names.push(k.clone());
            path.push(format!("f:{k}"));
            cmp_walk(
                lm.and_then(|m| m.get(k)),
                rm.and_then(|m| m.get(k)),
                names,
                path,
                lists,
                cmp,
                depth + 1,
            );
            path.pop();
            names.pop();
        }
    } else if all(Value::is_array) {
        let la: &[Value] = l.and_then(Value::as_array).map_or(&[], Vec::as_slice);
        let ra: &[Value] = r.and_then(Value::as_array).map_or(&[], Vec::as_slice);
        let lt = lists.list_type(names);
        let mergeable = !matches!(lt, ListType::Atomic) && (!la.is_empty() || !ra.is_empty());
        let pes = mergeable
            .then(|| Some((list_pes(la, &lt)?, list_pes(ra, &lt)?)))
            .flatten();
        let Some((lp, rp)) = pes else {
            cmp_leaf(l, r, path, cmp);
            return;
        };
        for (i, pe) in lp.iter().enumerate() {
            let rv = rp.iter().position(|x| x == pe).map(|j| &ra[j]);
            path.push(pe.clone());
            cmp_walk(Some(&la[i]), rv, names, path, lists, cmp, depth + 1);
            path.pop();
        }
        for (j, pe) in rp.iter().enumerate() {
            if !lp.contains(pe) {
                path.push(pe.clone());
                cmp_walk(None, Some(&ra[j]), names, path, lists, cmp, depth + 1);
                path.pop();
            }
        }
    } else {
        cmp_leaf(l, r, path, cmp);
        return;
    }
    if !path.is_empty() {
        if l.is_none() {
            cmp.added.insert(path);
        } else if r.is_none() {
            cmp.removed.insert(path);
        }
    }
}

/// `TypedValue.Merge` (live ⊕ applied config): maps merge, atomic lists are replaced,
/// sets and map lists merge per item keeping live-only items in place and applied items
/// in applied order. A `null` in the config removes a scalar or atomic field and leaves
/// a map or granular list as it is.
fn ssa_merge(
    l: Option<&Value>,
    r: &Value,
    names: &mut Vec<String>,
    lists: &Schema<'_>,
    depth: usize,
    item: bool,
) -> Value {
    match (l, r) {
        (Some(Value::Object(lm)), Value::Object(rm))
            if depth <= MAX_DEPTH && !lists.atomic(names, item) =>
        {
            let mut out = lm.clone();
            for (k, rv) in rm {
                if rv.is_null() {
                    // As structured-merge-diff: a null map or granular list in the config
                    // claims the field but keeps its live content; a null scalar or
                    // atomic value clears it.
                    names.push(k.clone());
                    let keep = match lm.get(k) {
                        Some(Value::Object(_)) => !lists.atomic(names, false),
                        Some(Value::Array(_)) => {
                            !matches!(lists.list_type(names), ListType::Atomic)
                        }
                        _ => false,
                    };
                    names.pop();
                    if !keep {
                        out.remove(k);
                    }
                    continue;
                }
                names.push(k.clone());
                let merged = ssa_merge(lm.get(k), rv, names, lists, depth + 1, false);
                names.pop();
                out.insert(k.clone(), merged);
            }
            Value::Object(out)
        }
        (Some(Value::Array(la)), Value::Array(ra)) if depth <= MAX_DEPTH => {
            let lt = lists.list_type(names);
            match (list_pes(la, &lt), list_pes(ra, &lt)) {
                (Some(lp), Some(rp)) if !matches!(lt, ListType::Atomic) => {
                    Value::Array(merge_list_items(la, &lp, ra, &rp, names, lists, depth))
                }
                _ => without_nulls(r),
            }
        }
        _ => without_nulls(r),
    }
}

fn without_nulls(v: &Value) -> Value {
    let mut v = v.clone();
    discard_nulls(&mut v);
    v
}

/// The list merge of structured-merge-diff (`mergingWalker.visitListItems`).
fn merge_list_items(
    la: &[Value],
    lp: &[String],
    ra: &[Value],
    rp: &[String],
    names: &mut Vec<String>,
    lists: &Schema<'_>,
    depth: usize,
) -> Vec<Value> {
    let lidx: BTreeMap<&String, usize> = lp.iter().enumerate().map(|(i, p)| (p, i)).collect();
    let ridx: BTreeMap<&String, usize> = rp.iter().enumerate().map(|(i, p)| (p, i)).collect();
    let shared: Vec<&String> = rp.iter().filter(|p| lidx.contains_key(p)).collect();
    let mut next_shared = 0usize;
    let mut merged_rhs: BTreeSet<&String> = BTreeSet::new();
    let mut out = Vec::with_capacity(la.len() + ra.len());
    let (mut li, mut ri) = (0usize, 0usize);
    while li < la.len() || ri < ra.len() {
        if li < la.len() && ri < ra.len() {
            if lp[li] == rp[ri] {
                merged_rhs.insert(&rp[ri]);
                out.push(ssa_merge(
                    Some(&la[li]),
                    &ra[ri],
                    names,
                    lists,
                    depth + 1,
                    true,
                ));
                if shared.get(next_shared) == Some(&&rp[ri]) {
                    next_shared += 1;
                }
                li += 1;
                ri += 1;
                continue;
            }
            if ridx.contains_key(&lp[li]) && shared.get(next_shared).is_some_and(|s| **s != lp[li])
            {
                li += 1;
                continue;
            }
        }
        if li < la.len() {
            if !ridx.contains_key(&lp[li]) {
                out.push(la[li].clone());
                li += 1;
                continue;
            }
            if merged_rhs.contains(&lp[li]) {
                li += 1;
                continue;
            }
        }
        if ri < ra.len() {
            merged_rhs.insert(&rp[ri]);
            let lchild = lidx.get(&rp[ri]).map(|&i| &la[i]);
            out.push(ssa_merge(lchild, &ra[ri], names, lists, depth + 1, true));
            if shared.get(next_shared) == Some(&&rp[ri]) {
                next_shared += 1;
            }
            ri += 1;
        } else {
            li += 1;
        }
    }
    out
}

/// Removes the value at `path` (FieldsV1 path elements) from `v`, if present.
fn remove_path(v: &mut Value, path: &[String], names: &mut Vec<String>, lists: &Schema<'_>) {
    let Some((first, rest)) = path.split_first() else {
        return;
    };
    if let Some(name) = first.strip_prefix("f:") {
        let Value::Object(m) = v else {
            return;
        };
        if rest.is_empty() {
            m.remove(name);
        } else if let Some(c) = m.get_mut(name) {
            names.push(name.to_string());
            remove_path(c, rest, names, lists);
            names.pop();
        }
        return;
    }
    let Value::Array(items) = v else {
        return;
    };
    let idx = if let Some(i) = first.strip_prefix("i:") {
        i.parse::<usize>().ok().filter(|i| *i < items.len())
    } else {
        let lt = lists.list_type(names);
        items
            .iter()
            .position(|it| item_pe(it, &lt).as_deref() == Some(first.as_str()))
    };
    if let Some(i) = idx {
        if rest.is_empty() {
            items.remove(i);
        } else {
            remove_path(&mut items[i], rest, names, lists);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Managed fields
// ---------------------------------------------------------------------------------------

#[derive(Clone, Debug, PartialEq)]
struct ManagedEntry {
    manager: String,
    operation: String,
    api_version: String,
    time: Option<String>,
    subresource: String,
    set: FieldSet,
}

impl ManagedEntry {
    fn same_key(&self, manager: &str, operation: &str, subresource: &str) -> bool {
        self.manager == manager && self.operation == operation && self.subresource == subresource
    }
}

fn str_field(m: &Map<String, Value>, k: &str) -> Result<String, String> {
    match m.get(k) {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(other) => Err(format!("managedFields.{k} must be a string, got {other}")),
    }
}

/// Decodes `metadata.managedFields`. Entries that are entirely empty (`{}`, the documented
/// way to reset managed fields) are dropped.
fn decode_managed(v: Option<&Value>) -> Result<Vec<ManagedEntry>, String> {
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
fn encode_managed(mut entries: Vec<ManagedEntry>) -> Vec<Value> {
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

fn write_managed(obj: &mut Value, entries: Vec<ManagedEntry>) {
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
fn strip_meta(set: &FieldSet) -> FieldSet {
    set.difference(&unowned_fields())
}

/// The paths of `stripMetaManager`: identity and server-set metadata.
fn unowned_fields() -> FieldSet {
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

fn without_managed_fields(v: &Value) -> Value {
    let mut v = v.clone();
    if let Some(Value::Object(meta)) = v.get_mut("metadata") {
        meta.remove("managedFields");
    }
    v
}

/// What an empty typed built-in object serialises to (non-pointer structs as `{}`,
/// required lists as `null`), so that, as in the apiserver, a write never "adds" them:
/// `f:spec` and `f:spec.f:containers` of a created Pod carry no `.`.
fn typed_skeleton(api_version: &str, kind: &str) -> Option<Value> {
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
fn fill_skeleton(v: &mut Value, skeleton: &Value) {
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

fn obj_str<'a>(v: &'a Value, k: &str) -> &'a str {
    v.get(k).and_then(Value::as_str).unwrap_or("")
}

/// `capManagersManager`: at most 10 `Update` entries; the oldest are merged into
/// `ancient-changes`.
fn cap_update_managers(entries: &mut Vec<ManagedEntry>) {
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

// ---------------------------------------------------------------------------------------
// Server-side apply
// ---------------------------------------------------------------------------------------

/// Inputs of one server-side apply request.
pub struct ApplyContext<'a> {
    /// `fieldManager` query parameter (required for apply).
    pub manager: &'a str,
    /// `force=true`: take ownership of conflicting fields instead of failing.
    pub force: bool,
    /// `Some("status")` when applying to the status subresource: only `.status` of the
    /// applied config counts. `None` on the main resource: when `status_subresource` is
    /// true, `.status` in the applied config is ignored.
    pub subresource: Option<&'a str>,
    pub status_subresource: bool,
    /// RFC 3339 time stamped into `managedFields[].time`.
    pub now: &'a str,
    pub lists: &'a dyn ListSemantics,
}

/// Metadata the applier cannot set through apply (preconditions and server-set fields).
const APPLY_IGNORED_META: &[&str] = &[
    "resourceVersion",
    "uid",
    "creationTimestamp",
    "generation",
    "selfLink",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
];

/// Server-side apply of `applied` onto `live` (None = create). Returns the new object,
/// with `metadata.managedFields` updated (operation `Apply`).
///
/// Follows structured-merge-diff's `Updater.Apply` and the apiserver's field manager:
/// - the applier's set is exactly the fields its config specifies (`ToFieldSet`: scalars,
///   atomic lists whole, set items `v:`, map-list items `k:` and their fields, empty maps),
///   minus `apiVersion`, `kind`, `metadata.{name,namespace,uid,resourceVersion,generation,
///   creationTimestamp,managedFields,selfLink}`;
/// - the config is merged into the live object (maps recursive, lists per `ctx.lists`,
///   metadata finalizers/ownerReferences by their built-in types for every kind);
/// - fields the applier owned before and no longer specifies are removed when no manager
///   (Apply or Update) owns them (prune with named-field membership as upstream);
/// - a field whose value changes (or is added) and is owned by another manager is a
///   conflict (`force` moves ownership instead); unchanged values are shared;
/// - fields removed by the apply are dropped from every manager; empty entries vanish;
/// - an object without managed fields first gets a `before-first-apply` Update entry
///   owning all its fields (as upstream does for objects created before tracking);
/// - `ctx.subresource == Some("status")`: only `apiVersion`, `kind`, `metadata.name/
///   namespace` and `status` of the config are used, entry has `subresource: status`;
///   main resource with `status_subresource`: `status` of the config is ignored;
/// - the applier's `time` is set to `ctx.now` when the object changed or the entry is new.
///
/// Approximations: without a schema every object field counts as a "named field" when
/// pruning, so a map emptied by pruning disappears instead of staying as `{}`; a `null`
/// in the config clears scalars and atomic values only (maps and granular lists keep their
/// content, as upstream); list-map key defaults are known only for `protocol`
/// (`TCP`); the last-applied-configuration annotation is not maintained.
pub fn apply(
    live: Option<&Value>,
    applied: &Value,
    ctx: &ApplyContext<'_>,
) -> Result<Value, PatchError> {
    let lists = Schema::new(ctx.lists, applied);
    let Value::Object(applied_map) = applied else {
        return Err(bad("the applied configuration must be a JSON object"));
    };
    if ctx.manager.is_empty() {
        return Err(bad(
            "PATCH requests with apply content type must include a fieldManager query parameter",
        ));
    }
    let api_version = match applied_map.get("apiVersion") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        _ => {
            return Err(bad(
                "Object 'apiVersion' is missing in the applied configuration",
            ));
        }
    };
    match applied_map.get("kind") {
        Some(Value::String(s)) if !s.is_empty() => {}
        _ => return Err(bad("Object 'Kind' is missing in the applied configuration")),
    }
    let mut config = applied_map.clone();
    match config.get_mut("metadata") {
        None => {}
        Some(Value::Object(meta)) => {
            if meta.get("managedFields").is_some_and(|v| !v.is_null()) {
                return Err(bad("metadata.managedFields must be nil"));
            }
            meta.remove("managedFields");
            for k in APPLY_IGNORED_META {
                meta.remove(*k);
            }
        }
        Some(other) => {
            return Err(bad(format!("metadata must be an object, got {other}")));
        }
    }
    if ctx.subresource == Some("status") {
        config.retain(|k, _| matches!(k.as_str(), "apiVersion" | "kind" | "metadata" | "status"));
        if let Some(Value::Object(meta)) = config.get_mut("metadata") {
            meta.retain(|k, _| k == "name" || k == "namespace");
        }
    } else if ctx.status_subresource {
        config.remove("status");
    }
    let config = Value::Object(config);
    if let Some(l) = live
        && !l.is_object()
    {
        return Err(PatchError::Invalid(
            "the live object is not a JSON object".into(),
        ));
    }

    let config_set = to_field_set(&config, &lists)?;
    let subresource = ctx.subresource.unwrap_or("");
    let live_body = live.map(without_managed_fields);
    let mut entries = match live {
        Some(l) => decode_managed(l.get("metadata").and_then(|m| m.get("managedFields")))
            .unwrap_or_default(),
        None => Vec::new(),
    };
    if let (Some(body), true) = (&live_body, entries.is_empty()) {
        let kind = obj_str(body, "kind");
        let av = obj_str(body, "apiVersion");
        let mut empty = typed_skeleton(av, kind).unwrap_or_else(|| Value::Object(Map::new()));
        let mut full = body.clone();
        if let Some(sk) = typed_skeleton(av, kind) {
            fill_skeleton(&mut full, &sk);
            fill_skeleton(&mut empty, &sk);
        }
        let cmp = compare(Some(&empty), Some(&full), &lists);
        let mut set = cmp.added;
        set.union_with(&cmp.modified);
        let set = strip_meta(&set);
        if !set.is_empty() {
            entries.push(ManagedEntry {
                manager: "before-first-apply".into(),
                operation: "Update".into(),
                api_version: av.to_string(),
                time: None,
                subresource: String::new(),
                set,
            });
        }
    }

    let mut names = Vec::new();
    let mut merged = ssa_merge(live_body.as_ref(), &config, &mut names, &lists, 0, false);

    let own_idx = entries
        .iter()
        .position(|e| e.same_key(ctx.manager, "Apply", subresource));
    // Prune what the applier owned before, does not apply now, and nobody else owns.
    if let Some(i) = own_idx {
        // Identity fields are never pruned, even if the config omits them.
        let mut owned = unowned_fields();
        owned.union_with(&config_set);
        for (j, e) in entries.iter().enumerate() {
            if j != i {
                owned.union_with(&e.set);
            }
        }
        let to_remove = entries[i]
            .set
            .ensure_named()
            .difference(&owned.ensure_named());
        for p in to_remove.members() {
            let mut names = Vec::new();
            remove_path(&mut merged, &p, &mut names, &lists);
        }
    }

    // Conflicts and ownership changes, from what the apply changes in the live object.
    let before = live_body
        .clone()
        .unwrap_or_else(|| Value::Object(Map::new()));
    let cmp = compare(Some(&before), Some(&merged), &lists);
    let mut changed = cmp.added.clone();
    changed.union_with(&cmp.modified);
    let mut conflicts: Vec<(ApplyConflict, Vec<String>)> = Vec::new();
    for (j, e) in entries.iter().enumerate() {
        if Some(j) == own_idx {
            continue;
        }
        for p in e.set.intersection(&changed).members() {
            let c = ApplyConflict {
                manager: e.manager.clone(),
                field: path_string(&p),
            };
            conflicts.push((c, p));
        }
    }
    if !ctx.force && !conflicts.is_empty() {
        // kubectl's upgrade from client-side apply (`lastAppliedManager`): conflicts on
        // fields whose live value is still the last-applied one are forced.
        if ctx.manager == LAST_APPLIED_MANAGER
            && let Some(allowed) = live_body
                .as_ref()
                .and_then(|l| allowed_from_last_applied(l, &lists))
        {
            conflicts.retain(|(_, p)| !allowed.has(p));
        }
        if !conflicts.is_empty() {
            let mut out: Vec<ApplyConflict> = conflicts.into_iter().map(|(c, _)| c).collect();
            out.sort_by(|a, b| {
                a.manager
                    .cmp(&b.manager)
                    .then_with(|| a.field.cmp(&b.field))
            });
            out.dedup();
            return Err(PatchError::Conflict(out));
        }
    }
    for (j, e) in entries.iter_mut().enumerate() {
        if Some(j) == own_idx {
            continue;
        }
        e.set = e.set.difference(&changed).difference(&cmp.removed);
    }
    let object_changed = live_body.as_ref() != Some(&merged);
    let new_set = strip_meta(&config_set);
    match own_idx {
        Some(i) => {
            let e = &mut entries[i];
            e.set = new_set;
            e.api_version = api_version;
            if object_changed || e.time.is_none() {
                e.time = Some(ctx.now.to_string());
            }
        }
        None => entries.push(ManagedEntry {
            manager: ctx.manager.to_string(),
            operation: "Apply".into(),
            api_version,
            time: Some(ctx.now.to_string()),
            subresource: subresource.to_string(),
            set: new_set,
        }),
    }
    // `lastAppliedUpdater`: kubectl's server-side apply keeps an existing client-side
    // last-applied annotation in step with what it applied.
    if ctx.manager == LAST_APPLIED_MANAGER {
        sync_last_applied(&mut merged, applied);
    }
    write_managed(&mut merged, entries);
    Ok(merged)
}

const LAST_APPLIED_ANNOTATION: &str = "kubectl.kubernetes.io/last-applied-configuration";
const LAST_APPLIED_MANAGER: &str = "kubectl";

fn last_applied(obj: &Value) -> Option<&str> {
    obj.get("metadata")?
        .get("annotations")?
        .get(LAST_APPLIED_ANNOTATION)?
        .as_str()
        .filter(|s| !s.is_empty())
}

/// Fields of the last-applied configuration whose live value is still the applied one.
fn allowed_from_last_applied(live: &Value, lists: &Schema<'_>) -> Option<FieldSet> {
    let last: Value = serde_json::from_str(last_applied(live)?).ok()?;
    if !last.is_object() {
        return None;
    }
    let set = to_field_set(&last, lists).ok()?;
    let cmp = compare(Some(&last), Some(live), lists);
    Some(set.difference(&cmp.modified).difference(&cmp.removed))
}

fn sync_last_applied(merged: &mut Value, applied: &Value) {
    if last_applied(merged).is_none() {
        return;
    }
    let mut cfg = applied.clone();
    if let Some(Value::Object(ann)) = cfg
        .get_mut("metadata")
        .and_then(|m| m.get_mut("annotations"))
    {
        ann.remove(LAST_APPLIED_ANNOTATION);
        if ann.is_empty()
            && let Some(Value::Object(meta)) = cfg.get_mut("metadata")
        {
            meta.remove("annotations");
        }
    }
    let encoded = format!("{cfg}\n");
    if let Some(Value::Object(ann)) = merged
        .get_mut("metadata")
        .and_then(|m| m.get_mut("annotations"))
    {
        ann.insert(LAST_APPLIED_ANNOTATION.into(), Value::String(encoded));
    }
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

#[cfg(test)]
mod tests {
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

    // ---------------- RFC 7386 ----------------

    #[test]
    fn merge_patch_rfc7386_appendix_a() {
        let cases = [
            (json!({"a":"b"}), json!({"a":"c"}), json!({"a":"c"})),
            (json!({"a":"b"}), json!({"b":"c"}), json!({"a":"b","b":"c"})),
            (json!({"a":"b"}), json!({"a":null}), json!({})),
            (
                json!({"a":"b","b":"c"}),
                json!({"a":null}),
                json!({"b":"c"}),
            ),
            (json!({"a":["b"]}), json!({"a":"c"}), json!({"a":"c"})),
            (json!({"a":"c"}), json!({"a":["b"]}), json!({"a":["b"]})),
            (
                json!({"a":{"b":"c"}}),
                json!({"a":{"b":"d","c":null}}),
                json!({"a":{"b":"d"}}),
            ),
            (json!({"a":[{"b":"c"}]}), json!({"a":[1]}), json!({"a":[1]})),
            (json!(["a", "b"]), json!(["c", "d"]), json!(["c", "d"])),
            (json!({"a":"b"}), json!(["c"]), json!(["c"])),
            (json!({"a":"foo"}), json!(null), json!(null)),
            (json!({"a":"foo"}), json!("bar"), json!("bar")),
            (json!({"e":null}), json!({"a":1}), json!({"e":null,"a":1})),
            (json!([1, 2]), json!({"a":"b","c":null}), json!({"a":"b"})),
            (
                json!({}),
                json!({"a":{"bb":{"ccc":null}}}),
                json!({"a":{"bb":{}}}),
            ),
        ];
        for (i, (target, patch, want)) in cases.into_iter().enumerate() {
            assert_eq!(merge_patch(&target, &patch), want, "case {i}");
        }
    }

    // ---------------- RFC 6902 ----------------

    #[test]
    fn json_patch_rfc6902_appendix_a() {
        let ok = [
            // A.1 .. A.8, A.10, A.11, A.14, A.16
            (
                json!({"foo":"bar"}),
                json!([{"op":"add","path":"/baz","value":"qux"}]),
                json!({"baz":"qux","foo":"bar"}),
            ),
            (
                json!({"foo":["bar","baz"]}),
                json!([{"op":"add","path":"/foo/1","value":"qux"}]),
                json!({"foo":["bar","qux","baz"]}),
            ),
            (
                json!({"baz":"qux","foo":"bar"}),
                json!([{"op":"remove","path":"/baz"}]),
                json!({"foo":"bar"}),
            ),
            (
                json!({"foo":["bar","qux","baz"]}),
                json!([{"op":"remove","path":"/foo/1"}]),
                json!({"foo":["bar","baz"]}),
            ),
            (
                json!({"baz":"qux","foo":"bar"}),
                json!([{"op":"replace","path":"/baz","value":"boo"}]),
                json!({"baz":"boo","foo":"bar"}),
            ),
            (
                json!({"foo":{"bar":"baz","waldo":"fred"},"qux":{"corge":"grault"}}),
                json!([{"op":"move","from":"/foo/waldo","path":"/qux/thud"}]),
                json!({"foo":{"bar":"baz"},"qux":{"corge":"grault","thud":"fred"}}),
            ),
            (
                json!({"foo":["all","grass","cows","eat"]}),
                json!([{"op":"move","from":"/foo/1","path":"/foo/3"}]),
                json!({"foo":["all","cows","eat","grass"]}),
            ),
            (
                json!({"baz":"qux","foo":["a",2,"c"]}),
                json!([{"op":"test","path":"/baz","value":"qux"},{"op":"test","path":"/foo/1","value":2}]),
                json!({"baz":"qux","foo":["a",2,"c"]}),
            ),
            (
                json!({"foo":"bar"}),
                json!([{"op":"add","path":"/child","value":{"grandchild":{}}}]),
                json!({"foo":"bar","child":{"grandchild":{}}}),
            ),
            (
                json!({"foo":"bar"}),
                json!([{"op":"add","path":"/baz","value":"qux","xyz":123}]),
                json!({"foo":"bar","baz":"qux"}),
            ),
            (
                json!({"/":9,"~1":10}),
                json!([{"op":"test","path":"/~01","value":10}]),
                json!({"/":9,"~1":10}),
            ),
            (
                json!({"foo":["bar"]}),
                json!([{"op":"add","path":"/foo/-","value":["abc","def"]}]),
                json!({"foo":["bar",["abc","def"]]}),
            ),
            (
                json!({"a":{"b":1}}),
                json!([{"op":"copy","from":"/a","path":"/c"}]),
                json!({"a":{"b":1},"c":{"b":1}}),
            ),
        ];
        for (i, (target, patch, want)) in ok.into_iter().enumerate() {
            assert_eq!(
                json_patch(&target, &patch).expect("patch applies"),
                want,
                "case {i}"
            );
        }
        let invalid = [
            // A.9 test failure, A.12 add to a nonexistent target, A.15 string vs number
            (
                json!({"baz":"qux"}),
                json!([{"op":"test","path":"/baz","value":"bar"}]),
            ),
            (
                json!({"foo":"bar"}),
                json!([{"op":"add","path":"/baz/bat","value":"qux"}]),
            ),
            (
                json!({"/":9,"~1":10}),
                json!([{"op":"test","path":"/~01","value":"10"}]),
            ),
            (json!({"a":1}), json!([{"op":"remove","path":"/b"}])),
            (
                json!({"a":1}),
                json!([{"op":"replace","path":"/b","value":2}]),
            ),
            (
                json!({"a":1}),
                json!([{"op":"move","from":"/x","path":"/b"}]),
            ),
            (
                json!({"a":[1]}),
                json!([{"op":"add","path":"/a/5","value":2}]),
            ),
        ];
        for (i, (target, patch)) in invalid.into_iter().enumerate() {
            assert!(
                matches!(json_patch(&target, &patch), Err(PatchError::Invalid(_))),
                "case {i} must be Invalid"
            );
        }
    }

    #[test]
    fn json_patch_errors_read_like_the_apiserver() {
        let err = json_patch(
            &json!({"a":1}),
            &json!([{"op":"test","path":"/a","value":2}]),
        )
        .expect_err("test fails");
        assert_eq!(err.to_string(), "testing value /a failed: test failed");
        let err = json_patch(
            &json!({"a":1}),
            &json!([{"op":"replace","path":"/b","value":2}]),
        )
        .expect_err("missing");
        assert_eq!(
            err.to_string(),
            "replace operation does not apply: doc is missing key: /b: missing value"
        );
    }

    #[test]
    fn json_patch_malformed_is_bad_request() {
        for p in [
            json!({"op":"add"}),
            json!([{"op":"frobnicate","path":"/a"}]),
            json!([{"op":"add","value":1}]),
            json!([{"path":"/a"}]),
            json!([1]),
            json!("x"),
            json!([{"op":"add","path":"a","value":1}]),
        ] {
            assert!(
                matches!(json_patch(&json!({}), &p), Err(PatchError::BadRequest(_))),
                "{p} must be BadRequest"
            );
        }
    }

    // ---------------- list semantics ----------------

    #[test]
    fn core_list_semantics_table() {
        let p = |s: &str| -> Vec<String> { s.split('.').map(str::to_string).collect() };
        let m = |k: &[&str]| ListType::Map(k.iter().map(|s| s.to_string()).collect());
        let cases = [
            ("v1", "Pod", "spec.containers", m(&["name"])),
            ("v1", "Pod", "spec.initContainers", m(&["name"])),
            ("v1", "Pod", "spec.ephemeralContainers", m(&["name"])),
            ("v1", "Pod", "spec.containers.env", m(&["name"])),
            (
                "v1",
                "Pod",
                "spec.containers.ports",
                m(&["containerPort", "protocol"]),
            ),
            (
                "v1",
                "Pod",
                "spec.containers.volumeMounts",
                m(&["mountPath"]),
            ),
            ("v1", "Pod", "spec.containers.envFrom", ListType::Atomic),
            ("v1", "Pod", "spec.containers.command", ListType::Atomic),
            ("v1", "Pod", "spec.containers.args", ListType::Atomic),
            ("v1", "Pod", "spec.volumes", m(&["name"])),
            ("v1", "Pod", "spec.imagePullSecrets", m(&["name"])),
            ("v1", "Pod", "spec.tolerations", ListType::Atomic),
            ("v1", "Pod", "status.conditions", m(&["type"])),
            ("v1", "Pod", "status.containerStatuses", ListType::Atomic),
            ("v1", "Pod", "status.podIPs", m(&["ip"])),
            ("v1", "Pod", "metadata.ownerReferences", m(&["uid"])),
            ("v1", "Pod", "metadata.finalizers", ListType::Set),
            ("v1", "Pod", "metadata.managedFields", ListType::Atomic),
            ("v1", "Service", "spec.ports", m(&["port", "protocol"])),
            ("v1", "Service", "spec.externalIPs", ListType::Atomic),
            ("v1", "Node", "status.conditions", m(&["type"])),
            ("v1", "Node", "status.addresses", m(&["type"])),
            ("v1", "Node", "spec.podCIDRs", ListType::Set),
            ("v1", "Node", "spec.taints", ListType::Atomic),
            ("v1", "Namespace", "spec.finalizers", ListType::Atomic),
            ("v1", "ConfigMap", "metadata.finalizers", ListType::Set),
            ("v1", "Event", "metadata.ownerReferences", m(&["uid"])),
            (
                "coordination.k8s.io/v1",
                "Lease",
                "metadata.finalizers",
                ListType::Set,
            ),
            (
                "apps/v1",
                "Deployment",
                "spec.template.spec.containers",
                m(&["name"]),
            ),
            (
                "apps/v1",
                "Deployment",
                "spec.template.spec.containers.env",
                m(&["name"]),
            ),
            (
                "apps/v1",
                "Deployment",
                "spec.template.metadata.finalizers",
                ListType::Set,
            ),
            ("apps/v1", "Deployment", "status.conditions", m(&["type"])),
            (
                "batch/v1",
                "CronJob",
                "spec.jobTemplate.spec.template.spec.volumes",
                m(&["name"]),
            ),
            ("v1", "Secret", "data", ListType::Atomic),
        ];
        for (av, kind, path, want) in cases {
            assert_eq!(core(av, kind).list_type(&p(path)), want, "{kind} {path}");
        }
    }

    // ---------------- strategic merge patch ----------------

    fn pod() -> Value {
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "p", "labels": {"app": "a", "tier": "t"}, "finalizers": ["x"]},
            "spec": {
                "containers": [
                    {"name": "a", "image": "a:1",
                     "env": [{"name": "E1", "value": "1"}, {"name": "E2", "value": "2"}],
                     "ports": [{"containerPort": 80, "protocol": "TCP"}],
                     "volumeMounts": [{"name": "v", "mountPath": "/v"}]},
                    {"name": "b", "image": "b:1"}
                ],
                "volumes": [{"name": "v", "emptyDir": {}}],
                "tolerations": [{"key": "k1", "operator": "Exists"}]
            }
        })
    }

    #[test]
    fn smp_merges_containers_env_ports_by_key() {
        let out = smp(
            pod(),
            json!({"spec": {"containers": [
                {"name": "a", "image": "a:2",
                 "env": [{"name": "E2", "value": "two"}, {"name": "E3", "value": "3"}],
                 "ports": [{"containerPort": 8080, "name": "http"}]},
                {"name": "c", "image": "c:1"}
            ]}}),
        );
        let cs = out["spec"]["containers"].as_array().expect("containers");
        let names: Vec<&str> = cs.iter().filter_map(|c| c["name"].as_str()).collect();
        // Upstream's normalizeElementOrder puts patch items before server-only items when
        // the live order cannot place them: [a, c, b], as a real apiserver answers.
        assert_eq!(names, ["a", "c", "b"]);
        assert_eq!(cs[0]["image"], "a:2");
        assert_eq!(
            cs[0]["env"],
            json!([{"name":"E1","value":"1"},{"name":"E2","value":"two"},{"name":"E3","value":"3"}])
        );
        assert_eq!(
            cs[0]["ports"],
            json!([{"containerPort":8080,"name":"http"},{"containerPort":80,"protocol":"TCP"}])
        );
        assert_eq!(
            cs[0]["volumeMounts"],
            json!([{"name":"v","mountPath":"/v"}])
        );
        assert_eq!(cs[2], json!({"name":"b","image":"b:1"}));
    }

    #[test]
    fn smp_null_deletes_and_atomic_lists_replace() {
        let out = smp(
            pod(),
            json!({"metadata": {"labels": {"tier": null, "new": "n"}},
                   "spec": {"tolerations": [{"key": "k2", "operator": "Exists"}],
                            "containers": [{"name": "b", "image": null}]}}),
        );
        assert_eq!(out["metadata"]["labels"], json!({"app":"a","new":"n"}));
        assert_eq!(
            out["spec"]["tolerations"],
            json!([{"key":"k2","operator":"Exists"}])
        );
        assert_eq!(out["spec"]["containers"][1], json!({"name":"b"}));
    }

    #[test]
    fn smp_patch_delete_and_replace_directives() {
        // delete one list item by key
        let out = smp(
            pod(),
            json!({"spec": {"containers": [{"name": "b", "$patch": "delete"}]}}),
        );
        assert_eq!(out["spec"]["containers"].as_array().map(Vec::len), Some(1));
        assert_eq!(out["spec"]["containers"][0]["name"], "a");
        // replace the whole list
        let out = smp(
            pod(),
            json!({"spec": {"containers": [{"name": "z", "image": "z:1"}, {"$patch": "replace"}]}}),
        );
        assert_eq!(
            out["spec"]["containers"],
            json!([{"name":"z","image":"z:1"}])
        );
        // replace a map
        let out = smp(
            pod(),
            json!({"metadata": {"labels": {"only": "this", "$patch": "replace"}}}),
        );
        assert_eq!(out["metadata"]["labels"], json!({"only":"this"}));
        // delete a map: it becomes empty, as upstream
        let out = smp(pod(), json!({"metadata": {"labels": {"$patch": "delete"}}}));
        assert_eq!(out["metadata"]["labels"], json!({}));
        // a directive-only map for a missing key adds nothing
        let out = smp(
            pod(),
            json!({"spec": {"securityContext": {"$patch": "delete"}}}),
        );
        assert!(out["spec"].get("securityContext").is_none());
    }

    #[test]
    fn smp_retain_keys_switches_volume_source() {
        // What kubectl sends when a volume changes from emptyDir to configMap.
        let out = smp(
            pod(),
            json!({"spec": {"volumes": [
                {"$retainKeys": ["configMap", "name"], "name": "v", "configMap": {"name": "cm"}}
            ]}}),
        );
        assert_eq!(
            out["spec"]["volumes"],
            json!([{"name":"v","configMap":{"name":"cm"}}])
        );
        // A patch key missing from $retainKeys is rejected.
        let err = strategic_merge_patch(
            &pod(),
            &json!({"spec": {"volumes": [{"$retainKeys": ["name"], "name": "v", "secret": {}}]}}),
            &pod_lists(),
        )
        .expect_err("invalid retainKeys");
        assert!(matches!(err, PatchError::BadRequest(ref m) if m.contains("retainKeys")));
    }

    #[test]
    fn smp_set_element_order_as_kubectl_sends_it() {
        // kubectl apply (client side) reorders containers and changes one image.
        let out = smp(
            pod(),
            json!({"spec": {
                "$setElementOrder/containers": [{"name": "b"}, {"name": "a"}],
                "containers": [{"name": "a", "image": "a:3"}]
            }}),
        );
        let cs = out["spec"]["containers"].as_array().expect("containers");
        let names: Vec<&str> = cs.iter().filter_map(|c| c["name"].as_str()).collect();
        assert_eq!(names, ["b", "a"]);
        assert_eq!(cs[1]["image"], "a:3");
        assert_eq!(cs[1]["env"][0]["name"], "E1", "merged, not replaced");
        assert!(out["spec"].get("$setElementOrder/containers").is_none());

        // Nested in a container: env order with one new var; server-only items kept.
        let out = smp(
            pod(),
            json!({"spec": {"containers": [{
                "name": "a",
                "$setElementOrder/env": [{"name": "E0"}, {"name": "E2"}],
                "env": [{"name": "E0", "value": "0"}]
            }]}}),
        );
        let env: Vec<&str> = out["spec"]["containers"][0]["env"]
            .as_array()
            .expect("env")
            .iter()
            .filter_map(|e| e["name"].as_str())
            .collect();
        // E0 precedes E2 per the order list; E1 (server-only) is placed by live order.
        assert_eq!(env, ["E0", "E1", "E2"]);
        assert_eq!(
            out["spec"]["containers"][0]["env"][1],
            json!({"name":"E1","value":"1"})
        );
    }

    #[test]
    fn smp_delete_and_add_with_set_element_order_orders_like_the_apiserver() {
        // kubectl's three-way patch when a container is removed and another added while
        // the live object has a server-only container: upstream orders the result by the
        // live list as mutated in place during the merge.
        let live = json!({"spec": {"containers": [
            {"name": "a", "image": "a"}, {"name": "b", "image": "b"}, {"name": "d", "image": "d"}
        ]}});
        let out = smp(
            live,
            json!({"spec": {
                "$setElementOrder/containers": [{"name": "b"}, {"name": "c"}],
                "containers": [{"name": "c", "image": "c"}, {"$patch": "delete", "name": "a"}]
            }}),
        );
        let names: Vec<&str> = out["spec"]["containers"]
            .as_array()
            .expect("list")
            .iter()
            .filter_map(|c| c["name"].as_str())
            .collect();
        assert_eq!(names, ["b", "d", "c"]);
    }

    #[test]
    fn smp_set_element_order_mismatch_is_rejected() {
        let err = strategic_merge_patch(
            &pod(),
            &json!({"spec": {
                "$setElementOrder/containers": [{"name": "a"}],
                "containers": [{"name": "b", "image": "b:2"}]
            }}),
            &pod_lists(),
        )
        .expect_err("order mismatch");
        assert!(matches!(err, PatchError::BadRequest(ref m) if m.contains("$setElementOrder")));
    }

    #[test]
    fn smp_primitive_sets_union_delete_and_order() {
        let out = smp(pod(), json!({"metadata": {"finalizers": ["y", "x"]}}));
        assert_eq!(out["metadata"]["finalizers"], json!(["y", "x"]));
        // New items come first when the live order cannot place them (upstream behaviour).
        let out = smp(pod(), json!({"metadata": {"finalizers": ["z"]}}));
        assert_eq!(out["metadata"]["finalizers"], json!(["z", "x"]));
        let out = smp(
            pod(),
            json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["x"], "finalizers": ["z"]}}),
        );
        assert_eq!(out["metadata"]["finalizers"], json!(["z"]));
        let out = smp(
            pod(),
            json!({"metadata": {"$setElementOrder/finalizers": ["w", "x"], "finalizers": ["w"]}}),
        );
        assert_eq!(out["metadata"]["finalizers"], json!(["w", "x"]));
        let err = strategic_merge_patch(
            &pod(),
            &json!({"metadata": {"$deleteFromPrimitiveList": ["x"]}}),
            &pod_lists(),
        )
        .expect_err("malformed directive");
        assert!(
            matches!(err, PatchError::BadRequest(ref m) if m == "invalid patch format of primitive list")
        );
    }

    #[test]
    fn smp_errors_are_bad_requests() {
        let cases = [
            json!({"spec": {"containers": [{"image": "no-name"}]}}),
            json!({"metadata": {"labels": {"$patch": "merge"}}}),
            json!({"metadata": {"labels": {"$patch": "explode"}}}),
            json!({"spec": {"containers": [{"name": "a", "$patch": "merge"}]}}),
            json!({"spec": {"volumes": [{"name": "v", "$retainKeys": "name"}]}}),
            json!({"spec": {"containers": [["nested"]]}}),
            json!({"spec": {"containers": [{"name": "a"}, "scalar"]}}),
            json!({"spec": {"$setElementOrder/containers": "notalist"}}),
            json!(["not", "an", "object"]),
        ];
        for p in cases {
            assert!(
                matches!(
                    strategic_merge_patch(&pod(), &p, &pod_lists()),
                    Err(PatchError::BadRequest(_))
                ),
                "{p} must be rejected"
            );
        }
    }

    #[test]
    fn smp_on_deployment_template_and_service_ports() {
        let dep = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"},
            "spec": {"replicas": 1, "template": {"spec": {"containers": [{"name": "w", "image": "w:1"}]}}}});
        let out = strategic_merge_patch(
            &dep,
            &json!({"spec": {"replicas": 3, "template": {"spec": {"containers": [{"name": "side", "image": "s"}]}}}}),
            &core("apps/v1", "Deployment"),
        )
        .expect("smp");
        assert_eq!(out["spec"]["replicas"], 3);
        assert_eq!(
            out["spec"]["template"]["spec"]["containers"]
                .as_array()
                .map(Vec::len),
            Some(2)
        );

        let svc = json!({"spec": {"ports": [{"port": 80, "targetPort": 8080}]}});
        let out = strategic_merge_patch(
            &svc,
            &json!({"spec": {"ports": [{"port": 80, "targetPort": 9090}, {"port": 443}]}}),
            &core("v1", "Service"),
        )
        .expect("smp");
        assert_eq!(
            out["spec"]["ports"],
            json!([{"port":80,"targetPort":9090},{"port":443}])
        );
    }

    // ---------------- FieldsV1 / field sets ----------------

    #[test]
    fn fields_v1_round_trip_and_path_strings() {
        let v = json!({
            "f:metadata": {"f:labels": {".": {}, "f:app": {}}},
            "f:spec": {"f:containers": {"k:{\"name\":\"c\"}": {".": {}, "f:image": {}, "f:name": {}}}},
            "f:finalizers": {"v:\"x\"": {}}
        });
        let set = FieldSet::from_fields_v1(&v, 0).expect("decode");
        assert_eq!(set.to_fields_v1(), v);
        let paths: Vec<String> = set.members().iter().map(|p| path_string(p)).collect();
        assert_eq!(
            paths,
            [
                ".finalizers[=\"x\"]",
                ".metadata.labels",
                ".metadata.labels.app",
                ".spec.containers[name=\"c\"]",
                ".spec.containers[name=\"c\"].image",
                ".spec.containers[name=\"c\"].name",
            ]
        );
        assert!(FieldSet::from_fields_v1(&json!({"x:bad": {}}), 0).is_err());
        assert!(FieldSet::from_fields_v1(&json!([]), 0).is_err());
    }

    // ---------------- server-side apply ----------------

    fn cm_config() -> Value {
        json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "test-cm", "namespace": "default", "labels": {"test-label": "test"}},
            "data": {"key": "some value"}
        })
    }

    #[test]
    fn apply_create_matches_the_documented_managed_fields() {
        // https://kubernetes.io/docs/reference/using-api/server-side-apply/#ssa-example-configmap
        let lists = core("v1", "ConfigMap");
        let out = apply(None, &cm_config(), &ctx("kubectl", &lists)).expect("apply");
        assert_eq!(
            out,
            json!({
                "apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {
                    "name": "test-cm", "namespace": "default",
                    "labels": {"test-label": "test"},
                    "managedFields": [{
                        "manager": "kubectl", "operation": "Apply", "apiVersion": "v1",
                        "time": "2024-01-01T00:00:00Z", "fieldsType": "FieldsV1",
                        "fieldsV1": {"f:metadata": {"f:labels": {"f:test-label": {}}}, "f:data": {"f:key": {}}}
                    }]
                },
                "data": {"key": "some value"}
            })
        );
    }

    #[test]
    fn update_takes_ownership_as_in_the_documented_multi_manager_example() {
        // The second example of the docs: kube-controller-manager updates data.key.
        let lists = core("v1", "ConfigMap");
        let live = apply(None, &cm_config(), &ctx("kubectl", &lists)).expect("apply");
        let mut new = live.clone();
        new["data"]["key"] = json!("new value");
        record_update(
            Some(&live),
            &mut new,
            "kube-controller-manager",
            None,
            "2024-01-01T01:00:00Z",
        );
        assert_eq!(
            new["metadata"]["managedFields"],
            json!([
                {"manager": "kubectl", "operation": "Apply", "apiVersion": "v1",
                 "time": "2024-01-01T00:00:00Z", "fieldsType": "FieldsV1",
                 "fieldsV1": {"f:metadata": {"f:labels": {"f:test-label": {}}}}},
                {"manager": "kube-controller-manager", "operation": "Update", "apiVersion": "v1",
                 "time": "2024-01-01T01:00:00Z", "fieldsType": "FieldsV1",
                 "fieldsV1": {"f:data": {"f:key": {}}}}
            ])
        );
        // "If this update has instead been attempted using Server-Side Apply, the request
        // would have failed due to conflicting ownership."
        let mut other = cm_config();
        other["data"]["key"] = json!("mine");
        other["metadata"]
            .as_object_mut()
            .map(|m| m.remove("labels"));
        let c = conflicts(apply(Some(&live), &other, &ctx("someone", &lists)));
        assert_eq!(
            c,
            [ApplyConflict {
                manager: "kubectl".into(),
                field: ".data.key".into()
            }]
        );
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

    #[test]
    fn apply_fields_v1_for_a_deployment_is_exact() {
        let lists = core("apps/v1", "Deployment");
        let out = apply(
            None,
            &deployment(3, "nginx:1.14.2"),
            &ctx("kubectl", &lists),
        )
        .expect("apply");
        let e = entry(&out, "kubectl", "Apply").expect("entry");
        assert_eq!(
            e["fieldsV1"],
            json!({
                "f:metadata": {"f:labels": {"f:app": {}}},
                "f:spec": {
                    "f:replicas": {},
                    "f:selector": {},
                    "f:template": {
                        "f:metadata": {"f:labels": {"f:app": {}}},
                        "f:spec": {"f:containers": {"k:{\"name\":\"nginx\"}": {
                            ".": {}, "f:image": {}, "f:name": {},
                            "f:ports": {"k:{\"containerPort\":80,\"protocol\":\"TCP\"}": {
                                ".": {}, "f:containerPort": {}
                            }}
                        }}}
                    }
                }
            })
        );
        assert_eq!(e["apiVersion"], "apps/v1");
    }

    #[test]
    fn kubectl_scale_then_apply_conflicts_and_force_takes_over() {
        let lists = core("apps/v1", "Deployment");
        let live = apply(None, &deployment(3, "nginx:1"), &ctx("kubectl", &lists)).expect("create");
        // kubectl scale (an Update through the scale subresource is recorded the same way)
        let mut scaled = live.clone();
        scaled["spec"]["replicas"] = json!(5);
        record_update(
            Some(&live),
            &mut scaled,
            "kubectl-scale",
            None,
            "2024-01-01T00:05:00Z",
        );
        assert_eq!(
            entry(&scaled, "kubectl-scale", "Update").map(|e| e["fieldsV1"].clone()),
            Some(json!({"f:spec": {"f:replicas": {}}}))
        );
        assert!(
            entry(&scaled, "kubectl", "Apply").expect("apply entry")["fieldsV1"]["f:spec"]
                .get("f:replicas")
                .is_none(),
            "the update took replicas from the applier"
        );
        // Re-apply with another replicas value: conflict with kubectl-scale.
        let c = conflicts(apply(
            Some(&scaled),
            &deployment(2, "nginx:1"),
            &ctx("kubectl", &lists),
        ));
        assert_eq!(
            c,
            [ApplyConflict {
                manager: "kubectl-scale".into(),
                field: ".spec.replicas".into()
            }]
        );
        assert_eq!(
            conflict_message(&c),
            "Apply failed with 1 conflict: conflict with \"kubectl-scale\": .spec.replicas"
        );
        // Same value as live: shared ownership, no conflict.
        let shared = apply(
            Some(&scaled),
            &deployment(5, "nginx:1"),
            &ctx("kubectl", &lists),
        )
        .expect("shared");
        assert!(
            entry(&shared, "kubectl", "Apply").expect("e")["fieldsV1"]["f:spec"]
                .get("f:replicas")
                .is_some()
        );
        assert!(entry(&shared, "kubectl-scale", "Update").is_some());
        // Force: value set, ownership moved, the emptied Update entry disappears.
        let mut force = ctx("kubectl", &lists);
        force.force = true;
        let forced = apply(Some(&scaled), &deployment(2, "nginx:1"), &force).expect("forced");
        assert_eq!(forced["spec"]["replicas"], 2);
        assert!(entry(&forced, "kubectl-scale", "Update").is_none());
    }

    #[test]
    fn reapply_removes_fields_no_one_else_owns() {
        let lists = core("v1", "ConfigMap");
        let first = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"},
            "data": {"a": "1", "b": "2"}});
        let live = apply(None, &first, &ctx("m1", &lists)).expect("create");
        let second = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"},
            "data": {"a": "1"}});
        let out = apply(Some(&live), &second, &ctx("m1", &lists)).expect("reapply");
        assert_eq!(out["data"], json!({"a": "1"}));
        assert_eq!(out["metadata"]["name"], "c");
        assert_eq!(out["apiVersion"], "v1");
        assert_eq!(out["kind"], "ConfigMap");
        // Drop everything: data disappears entirely, the entry goes away.
        let empty = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}});
        let out = apply(Some(&out), &empty, &ctx("m1", &lists)).expect("reapply");
        assert!(out.get("data").is_none());
        assert!(managed(&out).is_empty());
        assert_eq!(out["metadata"]["name"], "c");
    }

    #[test]
    fn shared_field_survives_when_one_applier_drops_it() {
        let lists = core("v1", "ConfigMap");
        let cfg = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"a": "1"}});
        let live = apply(None, &cfg, &ctx("m1", &lists)).expect("m1");
        let live = apply(Some(&live), &cfg, &ctx("m2", &lists)).expect("m2 shares");
        assert_eq!(managed(&live).len(), 2);
        let none = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}});
        let out = apply(Some(&live), &none, &ctx("m1", &lists)).expect("m1 gives up");
        assert_eq!(out["data"], json!({"a": "1"}), "m2 still owns it");
        assert!(entry(&out, "m1", "Apply").is_none());
        assert_eq!(
            entry(&out, "m2", "Apply").map(|e| e["fieldsV1"].clone()),
            Some(json!({"f:data": {"f:a": {}}}))
        );
        // Now m2 changes it alone: no conflict.
        let cfg2 = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"a": "2"}});
        let out = apply(Some(&out), &cfg2, &ctx("m2", &lists)).expect("m2 changes");
        assert_eq!(out["data"]["a"], "2");
    }

    #[test]
    fn update_owned_field_is_not_pruned() {
        let lists = core("v1", "ConfigMap");
        let cfg = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"a": "1"}});
        let live = apply(None, &cfg, &ctx("m1", &lists)).expect("create");
        let mut upd = live.clone();
        upd["data"]["a"] = json!("9");
        record_update(
            Some(&live),
            &mut upd,
            "editor",
            None,
            "2024-01-02T00:00:00Z",
        );
        let none = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}});
        let out = apply(Some(&upd), &none, &ctx("m1", &lists)).expect("reapply");
        assert_eq!(out["data"]["a"], "9");
    }

    #[test]
    fn map_lists_are_owned_per_key() {
        let lists = core("v1", "Pod");
        let base = |containers: Value| {
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
                   "spec": {"containers": containers}})
        };
        let live = apply(
            None,
            &base(json!([{"name": "a", "image": "a:1"}])),
            &ctx("ma", &lists),
        )
        .expect("a");
        let live = apply(
            Some(&live),
            &base(json!([{"name": "b", "image": "b:1"}])),
            &ctx("mb", &lists),
        )
        .expect("b adds its own item without conflict");
        let names: Vec<&str> = live["spec"]["containers"]
            .as_array()
            .expect("list")
            .iter()
            .filter_map(|c| c["name"].as_str())
            .collect();
        assert_eq!(names, ["a", "b"]);
        // mb changing a's image conflicts with ma on that exact field.
        let c = conflicts(apply(
            Some(&live),
            &base(json!([{"name": "a", "image": "a:2"}, {"name": "b", "image": "b:1"}])),
            &ctx("mb", &lists),
        ));
        assert_eq!(
            c,
            [ApplyConflict {
                manager: "ma".into(),
                field: ".spec.containers[name=\"a\"].image".into()
            }]
        );
        // ma dropping its container removes only that item.
        let out = apply(Some(&live), &base(json!([])), &ctx("ma", &lists)).expect("ma drops a");
        assert_eq!(
            out["spec"]["containers"],
            json!([{"name": "b", "image": "b:1"}])
        );
        assert!(entry(&out, "ma", "Apply").is_none());
    }

    #[test]
    fn sets_are_owned_per_value() {
        let lists = core("v1", "ConfigMap");
        let cfg = |f: Value| json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "finalizers": f}});
        let live = apply(None, &cfg(json!(["a/x"])), &ctx("m1", &lists)).expect("m1");
        let live = apply(Some(&live), &cfg(json!(["b/y"])), &ctx("m2", &lists)).expect("m2");
        assert_eq!(live["metadata"]["finalizers"], json!(["a/x", "b/y"]));
        assert_eq!(
            entry(&live, "m2", "Apply").map(|e| e["fieldsV1"].clone()),
            Some(json!({"f:metadata": {"f:finalizers": {"v:\"b/y\"": {}}}}))
        );
        let out = apply(Some(&live), &cfg(json!([])), &ctx("m1", &lists)).expect("m1 drops");
        assert_eq!(out["metadata"]["finalizers"], json!(["b/y"]));
    }

    #[test]
    fn custom_resource_lists_follow_the_given_semantics() {
        let lists = Lists(vec![
            ("spec.items", ListType::Map(vec!["id".into()])),
            ("spec.tags", ListType::Set),
        ]);
        let cfg = |items: Value, tags: Value| {
            json!({"apiVersion": "example.com/v1", "kind": "Foo", "metadata": {"name": "f"},
                   "spec": {"items": items, "tags": tags, "plain": [1, 2]}})
        };
        let out = apply(
            None,
            &cfg(json!([{"id": 1, "v": "x"}]), json!(["t"])),
            &ctx("m", &lists),
        )
        .expect("apply");
        assert_eq!(
            entry(&out, "m", "Apply").map(|e| e["fieldsV1"].clone()),
            Some(json!({"f:spec": {
                "f:items": {"k:{\"id\":1}": {".": {}, "f:id": {}, "f:v": {}}},
                "f:plain": {},
                "f:tags": {"v:\"t\"": {}}
            }}))
        );
        // Custom resources: no typed skeleton, a created spec map shows "." in Update sets.
        let mut created = json!({"apiVersion": "example.com/v1", "kind": "Foo", "metadata": {"name": "g"}, "spec": {"a": 1}});
        record_update(None, &mut created, "creator", None, "2024-01-01T00:00:00Z");
        assert_eq!(
            entry(&created, "creator", "Update").map(|e| e["fieldsV1"].clone()),
            Some(json!({"f:spec": {".": {}, "f:a": {}}}))
        );
        // Duplicate keys in an applied map list are rejected.
        let err = apply(
            None,
            &cfg(json!([{"id": 1}, {"id": 1}]), json!([])),
            &ctx("m", &lists),
        )
        .expect_err("dup");
        assert!(matches!(err, PatchError::BadRequest(ref m) if m.contains("duplicate")));
    }

    #[test]
    fn status_subresource_apply() {
        let lists = core("v1", "Pod");
        let live = apply(
            None,
            &json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
                    "spec": {"containers": [{"name": "c", "image": "i"}]},
                    "status": {"phase": "Ignored"}}),
            &ctx("creator", &lists),
        )
        .expect("create");
        assert!(
            live.get("status").is_none(),
            "status ignored on the main resource"
        );
        let mut sctx = ctx("kubelet", &lists);
        sctx.subresource = Some("status");
        let out = apply(
            Some(&live),
            &json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "labels": {"no": "pe"}},
                    "spec": {"containers": [{"name": "c", "image": "CHANGED"}]},
                    "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}}),
            &sctx,
        )
        .expect("status apply");
        assert_eq!(out["spec"]["containers"][0]["image"], "i");
        assert!(out["metadata"].get("labels").is_none());
        assert_eq!(out["status"]["phase"], "Running");
        let e = entry(&out, "kubelet", "Apply").expect("status entry");
        assert_eq!(e["subresource"], "status");
        assert_eq!(
            e["fieldsV1"],
            json!({"f:status": {"f:conditions": {"k:{\"type\":\"Ready\"}": {".": {}, "f:status": {}, "f:type": {}}}, "f:phase": {}}})
        );
        // The same manager on the main resource is a different entry.
        let main = apply(
            Some(&out),
            &json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "labels": {"a": "b"}}}),
            &ctx("kubelet", &lists),
        )
        .expect("main");
        assert_eq!(
            managed(&main)
                .iter()
                .filter(|e| e["manager"] == "kubelet")
                .count(),
            2
        );
        assert_eq!(
            main["status"]["phase"], "Running",
            "status untouched by the main apply"
        );
    }

    #[test]
    fn apply_noop_keeps_time_and_entries_are_sorted() {
        let lists = core("v1", "ConfigMap");
        let live = apply(None, &cm_config(), &ctx("kubectl", &lists)).expect("create");
        let mut later = ctx("kubectl", &lists);
        later.now = "2025-01-01T00:00:00Z";
        let again = apply(Some(&live), &cm_config(), &later).expect("noop");
        assert_eq!(again, live, "a no-op apply changes nothing, time included");
        let mut upd = live.clone();
        upd["data"]["other"] = json!("x");
        record_update(
            Some(&live),
            &mut upd,
            "aaa-first-by-name",
            None,
            "2023-01-01T00:00:00Z",
        );
        let ops: Vec<(String, String)> = managed(&upd)
            .iter()
            .map(|e| {
                (
                    e["operation"].as_str().unwrap_or("").into(),
                    e["manager"].as_str().unwrap_or("").into(),
                )
            })
            .collect();
        assert_eq!(
            ops,
            [
                ("Apply".to_string(), "kubectl".to_string()),
                ("Update".into(), "aaa-first-by-name".into())
            ]
        );
    }

    #[test]
    fn apply_rejects_bad_configs() {
        let lists = core("v1", "ConfigMap");
        let bad_cfgs = [
            json!("string"),
            json!([1]),
            json!({"kind": "ConfigMap", "metadata": {"name": "c"}}),
            json!({"apiVersion": "v1", "metadata": {"name": "c"}}),
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "managedFields": []}}),
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": "nope"}),
        ];
        for c in bad_cfgs {
            assert!(
                matches!(
                    apply(None, &c, &ctx("m", &lists)),
                    Err(PatchError::BadRequest(_))
                ),
                "{c}"
            );
        }
        assert!(matches!(
            apply(None, &cm_config(), &ctx("", &lists)),
            Err(PatchError::BadRequest(_))
        ));
    }

    #[test]
    fn owner_references_items_are_atomic() {
        let lists = core("v1", "Pod");
        let cfg = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "ownerReferences": [
            {"apiVersion": "example.com/v1", "kind": "Pool", "name": "o", "uid": "u-1", "controller": true}
        ]}});
        let out = apply(None, &cfg, &ctx("op", &lists)).expect("apply");
        assert_eq!(
            entry(&out, "op", "Apply").map(|e| e["fieldsV1"].clone()),
            Some(json!({"f:metadata": {"f:ownerReferences": {"k:{\"uid\":\"u-1\"}": {}}}}))
        );
    }

    #[test]
    fn before_first_apply_owns_untracked_fields() {
        let lists = core("v1", "ConfigMap");
        let live = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"k": "v"}});
        let c = conflicts(apply(
            Some(&live),
            &json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"k": "w"}}),
            &ctx("m", &lists),
        ));
        assert_eq!(
            c,
            [ApplyConflict {
                manager: "before-first-apply".into(),
                field: ".data.k".into()
            }]
        );
    }

    #[test]
    fn kubectl_upgrades_from_client_side_apply_without_conflicts() {
        let lists = core("v1", "ConfigMap");
        let last =
            r#"{"apiVersion":"v1","data":{"key":"v"},"kind":"ConfigMap","metadata":{"name":"c"}}"#;
        let mut live = json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "c", "annotations": {LAST_APPLIED_ANNOTATION: format!("{last}\n")}},
            "data": {"key": "v", "other": "o"}});
        record_update(
            None,
            &mut live,
            "kubectl-client-side-apply",
            None,
            "2024-01-01T00:00:00Z",
        );
        // Someone else changed `other` since: not covered by last-applied.
        let old = live.clone();
        live["data"]["other"] = json!("changed");
        record_update(
            Some(&old),
            &mut live,
            "kubectl-edit",
            None,
            "2024-01-01T00:01:00Z",
        );
        let cfg = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"key": "w"}});
        let out =
            apply(Some(&live), &cfg, &ctx("kubectl", &lists)).expect("upgrade is conflict-free");
        assert_eq!(out["data"]["key"], "w");
        let csa =
            entry(&out, "kubectl-client-side-apply", "Update").expect("csa entry keeps the rest");
        assert!(csa["fieldsV1"]["f:data"].get("f:key").is_none());
        let ann = out["metadata"]["annotations"][LAST_APPLIED_ANNOTATION]
            .as_str()
            .unwrap_or("");
        assert_eq!(
            ann,
            "{\"apiVersion\":\"v1\",\"data\":{\"key\":\"w\"},\"kind\":\"ConfigMap\",\"metadata\":{\"name\":\"c\"}}\n"
        );
        // A field changed by another manager since the client-side apply still conflicts.
        let cfg = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"key": "v", "other": "mine"}});
        let c = conflicts(apply(Some(&live), &cfg, &ctx("kubectl", &lists)));
        assert_eq!(
            c,
            [ApplyConflict {
                manager: "kubectl-edit".into(),
                field: ".data.other".into()
            }]
        );
        // Other managers get no such leniency.
        let cfg = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"key": "w"}});
        let c = conflicts(apply(Some(&live), &cfg, &ctx("my-manager", &lists)));
        assert_eq!(
            c,
            [ApplyConflict {
                manager: "kubectl-client-side-apply".into(),
                field: ".data.key".into()
            }]
        );
    }

    #[test]
    fn apply_without_metadata_keeps_identity() {
        let lists = core("v1", "ConfigMap");
        let live = apply(None, &cm_config(), &ctx("kubectl", &lists)).expect("create");
        let bare = json!({"apiVersion": "v1", "kind": "ConfigMap"});
        let out = apply(Some(&live), &bare, &ctx("kubectl", &lists)).expect("bare apply");
        assert_eq!(out["metadata"]["name"], "test-cm");
        assert_eq!(out["metadata"]["namespace"], "default");
        assert!(
            out["metadata"].get("labels").is_none(),
            "labels were only owned by kubectl"
        );
        assert!(out.get("data").is_none());
        assert!(out["metadata"].get("managedFields").is_none());
    }

    #[test]
    fn apply_list_merge_order_follows_structured_merge_diff() {
        let lists = core("v1", "Pod");
        let cfg = |names: &[&str]| {
            let cs: Vec<Value> = names
                .iter()
                .map(|n| json!({"name": n, "image": "i"}))
                .collect();
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {"containers": cs}})
        };
        let live = apply(None, &cfg(&["a", "b", "c"]), &ctx("m1", &lists)).expect("m1");
        let out = apply(Some(&live), &cfg(&["d", "b"]), &ctx("m2", &lists)).expect("m2");
        let names: Vec<&str> = out["spec"]["containers"]
            .as_array()
            .expect("list")
            .iter()
            .filter_map(|c| c["name"].as_str())
            .collect();
        assert_eq!(names, ["a", "d", "b", "c"]);
    }

    #[test]
    fn update_adding_a_list_item_owns_the_item() {
        let lists = core("v1", "Pod");
        let live = apply(
            None,
            &json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
                    "spec": {"containers": [{"name": "a", "image": "a"}]}}),
            &ctx("m1", &lists),
        )
        .expect("create");
        let mut new = live.clone();
        new["spec"]["containers"]
            .as_array_mut()
            .expect("list")
            .push(json!({"name": "x", "image": "x:1"}));
        record_update(Some(&live), &mut new, "adder", None, "2024-01-02T00:00:00Z");
        assert_eq!(
            entry(&new, "adder", "Update").map(|e| e["fieldsV1"].clone()),
            Some(
                json!({"f:spec": {"f:containers": {"k:{\"name\":\"x\"}": {".": {}, "f:image": {}, "f:name": {}}}}})
            )
        );
        // The applier dropping its container does not touch the updater's one.
        let out = apply(
            Some(&new),
            &json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {"containers": []}}),
            &ctx("m1", &lists),
        )
        .expect("drop");
        assert_eq!(
            out["spec"]["containers"],
            json!([{"name": "x", "image": "x:1"}])
        );
    }

    #[test]
    fn dropping_one_label_keeps_labels_owned_by_others() {
        let lists = core("v1", "ConfigMap");
        let cfg = |labels: Value| json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "labels": labels}});
        let live =
            apply(None, &cfg(json!({"a": "1", "b": "2"})), &ctx("m1", &lists)).expect("create");
        let mut new = live.clone();
        new["metadata"]["labels"]["c"] = json!("3");
        record_update(
            Some(&live),
            &mut new,
            "labeler",
            None,
            "2024-01-02T00:00:00Z",
        );
        let out = apply(Some(&new), &cfg(json!({"a": "1"})), &ctx("m1", &lists)).expect("drop b");
        assert_eq!(out["metadata"]["labels"], json!({"a": "1", "c": "3"}));
        // Forcing a value owned by the labeler moves ownership to the applier.
        let mut force = ctx("m1", &lists);
        force.force = true;
        let out = apply(Some(&out), &cfg(json!({"a": "1", "c": "mine"})), &force).expect("force");
        assert_eq!(out["metadata"]["labels"]["c"], "mine");
        assert!(entry(&out, "labeler", "Update").is_none());
        assert_eq!(
            entry(&out, "m1", "Apply").map(|e| e["fieldsV1"].clone()),
            Some(json!({"f:metadata": {"f:labels": {"f:a": {}, "f:c": {}}}}))
        );
    }

    #[test]
    fn multiple_conflicts_are_all_reported() {
        let lists = core("apps/v1", "Deployment");
        let live = apply(None, &deployment(3, "nginx:1"), &ctx("owner", &lists)).expect("create");
        let c = conflicts(apply(
            Some(&live),
            &deployment(4, "nginx:2"),
            &ctx("other", &lists),
        ));
        assert_eq!(
            c,
            [
                ApplyConflict {
                    manager: "owner".into(),
                    field: ".spec.replicas".into()
                },
                ApplyConflict {
                    manager: "owner".into(),
                    field: ".spec.template.spec.containers[name=\"nginx\"].image".into()
                },
            ]
        );
        assert!(conflict_message(&c).starts_with("Apply failed with 2 conflicts: "));
    }

    #[test]
    fn apply_null_and_partial_keys_follow_structured_merge_diff() {
        let lists = Lists(vec![(
            "spec.ports",
            ListType::Map(vec!["port".into(), "protocol".into()]),
        )]);
        let base = |spec: Value| json!({"apiVersion": "example.com/v1", "kind": "Foo", "metadata": {"name": "f"}, "spec": spec});
        let live = apply(
            None,
            &base(json!({"s": {"name": "a"}, "n": 1})),
            &ctx("m", &lists),
        )
        .expect("create");
        let mut upd = live.clone();
        upd["spec"]["s"]["value"] = json!(1);
        record_update(
            Some(&live),
            &mut upd,
            "controller",
            None,
            "2024-01-02T00:00:00Z",
        );
        // A null map claims the field without clearing it; a null scalar clears it.
        let out = apply(
            Some(&upd),
            &base(json!({"s": null, "n": null})),
            &ctx("m", &lists),
        )
        .expect("null");
        assert_eq!(out["spec"], json!({"s": {"value": 1}}));
        assert_eq!(
            entry(&out, "m", "Apply").map(|e| e["fieldsV1"].clone()),
            Some(json!({"f:spec": {"f:n": {}, "f:s": {}}}))
        );
        // A list-map item missing a key field without default is keyed by the others.
        let out = apply(
            None,
            &base(json!({"ports": [{"protocol": "UDP", "name": "x"}]})),
            &ctx("m", &lists),
        )
        .expect("partial key");
        assert_eq!(
            entry(&out, "m", "Apply").map(|e| e["fieldsV1"]["f:spec"]["f:ports"].clone()),
            Some(json!({"k:{\"protocol\":\"UDP\"}": {".": {}, "f:name": {}, "f:protocol": {}}}))
        );
        // Missing `protocol` takes its default in the key.
        let out = apply(
            None,
            &base(json!({"ports": [{"port": 53}]})),
            &ctx("m", &lists),
        )
        .expect("default");
        assert!(entry(&out, "m", "Apply").is_some_and(|e| {
            e["fieldsV1"]["f:spec"]["f:ports"]
                .get("k:{\"port\":53,\"protocol\":\"TCP\"}")
                .is_some()
        }));
        // Two items with the same (defaulted) key are rejected.
        let err = apply(
            None,
            &base(json!({"ports": [{"port": 80}, {"port": 80, "protocol": "TCP"}]})),
            &ctx("m", &lists),
        )
        .expect_err("ambiguous");
        assert!(matches!(err, PatchError::BadRequest(_)));
    }

    // ---------------- record_update ----------------

    #[test]
    fn record_update_on_create_matches_kubectl_create() {
        let mut cm = json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "c", "namespace": "default", "uid": "u", "resourceVersion": "1",
                         "creationTimestamp": "2024-01-01T00:00:00Z", "labels": {"a": "b"}},
            "data": {"foo": "bar"}});
        record_update(
            None,
            &mut cm,
            "kubectl-create",
            None,
            "2024-01-01T00:00:00Z",
        );
        assert_eq!(
            managed(&cm),
            [
                json!({"manager": "kubectl-create", "operation": "Update", "apiVersion": "v1",
                    "time": "2024-01-01T00:00:00Z", "fieldsType": "FieldsV1",
                    "fieldsV1": {"f:data": {".": {}, "f:foo": {}},
                                 "f:metadata": {"f:labels": {".": {}, "f:a": {}}}}})
            ]
        );
        // Typed kinds: spec exists in the empty object, so it carries no ".".
        let mut dep = deployment(1, "nginx");
        record_update(
            None,
            &mut dep,
            "kubectl-create",
            None,
            "2024-01-01T00:00:00Z",
        );
        let f = &managed(&dep)[0]["fieldsV1"];
        assert!(f["f:spec"].get(".").is_none());
        assert!(f["f:spec"]["f:template"].get(".").is_none());
        assert_eq!(
            f["f:spec"]["f:template"]["f:spec"]["f:containers"]["k:{\"name\":\"nginx\"}"]["."],
            json!({})
        );
        assert_eq!(f["f:spec"]["f:selector"], json!({}));

        // A created Pod, defaulted as the apiserver does before tracking: the required
        // `containers` list exists (as null) in the empty typed Pod, so it has no ".".
        let mut pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
            "spec": {"containers": [{"name": "nginx", "image": "nginx", "resources": {},
                                     "imagePullPolicy": "Always"}],
                     "restartPolicy": "Always", "securityContext": {}}});
        record_update(None, &mut pod, "kubectl-run", None, "2024-01-01T00:00:00Z");
        assert_eq!(
            managed(&pod)[0]["fieldsV1"],
            json!({"f:spec": {
                "f:containers": {"k:{\"name\":\"nginx\"}": {
                    ".": {}, "f:image": {}, "f:imagePullPolicy": {}, "f:name": {}, "f:resources": {}
                }},
                "f:restartPolicy": {},
                "f:securityContext": {}
            }})
        );
    }

    #[test]
    fn record_update_removal_drops_ownership_everywhere() {
        let lists = core("v1", "ConfigMap");
        let live = apply(None, &cm_config(), &ctx("kubectl", &lists)).expect("apply");
        let mut new = live.clone();
        new["data"].as_object_mut().map(|m| m.remove("key"));
        record_update(
            Some(&live),
            &mut new,
            "editor",
            None,
            "2024-01-02T00:00:00Z",
        );
        let e = entry(&new, "kubectl", "Apply").expect("still owns labels");
        assert!(e["fieldsV1"].get("f:data").is_none());
        assert!(
            entry(&new, "editor", "Update").is_none(),
            "a pure removal owns nothing"
        );
        // An unchanged write records nothing and keeps the entries.
        let mut same = live.clone();
        record_update(Some(&live), &mut same, "noop", None, "2024-01-03T00:00:00Z");
        assert_eq!(same, live);
    }

    #[test]
    fn record_update_honours_client_managed_fields_and_reset() {
        let lists = core("v1", "ConfigMap");
        let live = apply(None, &cm_config(), &ctx("kubectl", &lists)).expect("apply");
        // Reset with [{}] while changing a field: the writer owns only what it changed.
        let mut new = live.clone();
        new["metadata"]["managedFields"] = json!([{}]);
        new["data"]["key"] = json!("changed");
        record_update(
            Some(&live),
            &mut new,
            "resetter",
            None,
            "2024-01-02T00:00:00Z",
        );
        assert_eq!(managed(&new).len(), 1);
        assert_eq!(managed(&new)[0]["manager"], "resetter");
        // Reset alone strips managedFields entirely.
        let mut new = live.clone();
        new["metadata"]["managedFields"] = json!([{}]);
        record_update(
            Some(&live),
            &mut new,
            "resetter",
            None,
            "2024-01-02T00:00:00Z",
        );
        assert!(new["metadata"].get("managedFields").is_none());
        // An empty list is ignored (clients unaware of managedFields).
        let mut new = live.clone();
        new["metadata"]["managedFields"] = json!([]);
        record_update(Some(&live), &mut new, "x", None, "2024-01-02T00:00:00Z");
        assert_eq!(new, live);
        // A status write keeps the live entries even if the body carries others.
        let mut new = live.clone();
        new["metadata"]["managedFields"] =
            json!([{"manager": "fake", "operation": "Update", "fieldsV1": {"f:x": {}}}]);
        record_update(
            Some(&live),
            &mut new,
            "x",
            Some("status"),
            "2024-01-02T00:00:00Z",
        );
        assert_eq!(new, live);
    }

    #[test]
    fn record_update_caps_update_managers() {
        let mut obj =
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {}});
        for i in 0..12 {
            let old = obj.clone();
            obj["data"][format!("k{i}")] = json!("v");
            record_update(
                Some(&old),
                &mut obj,
                &format!("m{i:02}"),
                None,
                &format!("2024-01-01T00:00:{i:02}Z"),
            );
        }
        let entries = managed(&obj);
        assert_eq!(entries.len(), 10);
        let ancient = entries
            .iter()
            .find(|e| e["manager"] == "ancient-changes")
            .expect("bucket");
        assert_eq!(
            ancient["fieldsV1"]["f:data"].as_object().map(Map::len),
            Some(3)
        );
    }

    #[test]
    fn kubectl_subresource_update_is_its_own_entry() {
        let mut pod =
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {}});
        record_update(None, &mut pod, "kubectl", None, "2024-01-01T00:00:00Z");
        let old = pod.clone();
        pod["status"] = json!({"phase": "Running"});
        record_update(
            Some(&old),
            &mut pod,
            "kubelet",
            Some("status"),
            "2024-01-01T00:00:01Z",
        );
        let e = entry(&pod, "kubelet", "Update").expect("kubelet entry");
        assert_eq!(e["subresource"], "status");
        assert_eq!(e["fieldsV1"], json!({"f:status": {"f:phase": {}}}));
    }

    // ---------------- robustness ----------------

    fn odd_values() -> Vec<Value> {
        let mut deep = json!(1);
        for _ in 0..400 {
            deep = json!({"a": [deep]});
        }
        vec![
            Value::Null,
            json!(true),
            json!(1.5),
            json!("s"),
            json!([]),
            json!({}),
            json!([null, 1, "x", {}, []]),
            json!({"$patch": "replace"}),
            json!({"$patch": 5}),
            json!({"$retainKeys": [1, 2]}),
            json!({"$setElementOrder/x": [{"a": 1}], "x": 5}),
            json!({"$deleteFromPrimitiveList/x": 3, "x": [1]}),
            json!({"metadata": {"managedFields": [{"fieldsV1": "bad", "operation": 3}]}}),
            json!({"metadata": {"managedFields": "bad"}}),
            json!({"metadata": {"managedFields": [{"manager": "m", "operation": "Apply", "fieldsV1": {"f:a": {"k:{bad": {}}}}]}}),
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
                   "spec": {"containers": [{"name": 1}, {"noname": true}, "str", [1]],
                            "volumes": {"not": "a list"}}}),
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "finalizers": [{"a": 1}, [2]]},
                   "spec": {"containers": [{"name": "c", "ports": [{"containerPort": 80}, {"containerPort": 80}]}]}}),
            json!([{"op": "add", "path": "/a/-/b", "value": 1}]),
            json!([{"op": "move", "from": "/a", "path": "/a/b"}]),
            deep,
        ]
    }

    #[test]
    fn odd_inputs_never_panic() {
        let vals = odd_values();
        let lists = pod_lists();
        let lists2 = Lists(vec![
            ("a", ListType::Set),
            ("spec.containers", ListType::Map(vec![])),
        ]);
        for a in &vals {
            for b in &vals {
                let _ = merge_patch(a, b);
                let _ = json_patch(a, b);
                let _ = strategic_merge_patch(a, b, &lists);
                let _ = strategic_merge_patch(a, b, &lists2);
                for force in [false, true] {
                    for sub in [None, Some("status")] {
                        let mut c = ctx("m", &lists);
                        c.force = force;
                        c.subresource = sub;
                        if let Ok(out) = apply(Some(a), b, &c) {
                            let _ = apply(Some(&out), b, &ctx("other", &lists2));
                        }
                        let _ = apply(None, b, &c);
                    }
                }
                let mut n = b.clone();
                record_update(Some(a), &mut n, "m", None, "t");
                let mut n = b.clone();
                record_update(None, &mut n, "m", Some("status"), "t");
                let mut n = b.clone();
                record_update_with(Some(a), &mut n, "m", None, "t", &lists2);
            }
        }
    }
}
