//! Strategic merge patch (k8s.io/apimachinery strategicpatch).

use super::*;

// ---------------------------------------------------------------------------------------
// Strategic merge patch
// ---------------------------------------------------------------------------------------

pub(super) const DIRECTIVE: &str = "$patch";
pub(super) const RETAIN_KEYS: &str = "$retainKeys";
pub(super) const DELETE_FROM_PRIMITIVE: &str = "$deleteFromPrimitiveList";
pub(super) const SET_ELEMENT_ORDER: &str = "$setElementOrder";

pub(super) fn bad(msg: impl Into<String>) -> PatchError {
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

pub(super) const MAX_DEPTH: usize = 200;

pub(super) fn smp_map(
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

pub(super) fn smp_merge_key(lt: &ListType) -> Option<&str> {
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
pub(super) fn aliased_server_order(orig: &[Value], patch: &[Value], key: &str) -> Vec<Value> {
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
pub(super) fn smp_list(
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

pub(super) fn slice_element_is_map(a: &[Value], b: &[Value]) -> Result<bool, PatchError> {
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
pub(super) fn smp_special_elements(
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

pub(super) fn no_merge_key(m: &Map<String, Value>, key: &str) -> PatchError {
    bad(format!(
        "map: {} does not contain declared merge key: {key}",
        Value::Object(m.clone())
    ))
}

/// `mergeSliceWithoutSpecialElements`.
pub(super) fn smp_merge_items(
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

pub(super) fn item_key<'a>(v: &'a Value, key: Option<&str>) -> Option<&'a Value> {
    match key {
        Some(k) => v.get(k),
        None => Some(v),
    }
}

pub(super) fn index_of(list: &[Value], v: &Value, key: Option<&str>) -> Option<usize> {
    let needle = item_key(v, key)?;
    list.iter().position(|x| item_key(x, key) == Some(needle))
}

/// Splits `items` into those present in `by` and the others (both keep `items` order).
pub(super) fn partition(
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

pub(super) fn normalize_slice_order(
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
pub(super) fn normalize_element_order(
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
pub(super) fn validate_set_order(
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

pub(super) fn extract_key(s: &str, prefix: &str) -> Option<String> {
    let (p, rest) = s.split_once('/')?;
    (p == prefix).then(|| rest.to_string())
}

/// `removeDirectives`: drops maps carrying `$patch` (returns None for such a map itself).
pub(super) fn remove_directives(v: Value) -> Option<Value> {
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

pub(super) fn discard_nulls(v: &mut Value) {
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

pub(super) const KIND_NULL: u8 = 0;
pub(super) const KIND_BOOL: u8 = 1;
pub(super) const KIND_NUMBER: u8 = 2;
pub(super) const KIND_STRING: u8 = 3;
pub(super) const KIND_ARRAY: u8 = 4;
pub(super) const KIND_OBJECT: u8 = 5;

pub(super) fn json_kind(v: &Value) -> u8 {
    match v {
        Value::Null => KIND_NULL,
        Value::Bool(_) => KIND_BOOL,
        Value::Number(_) => KIND_NUMBER,
        Value::String(_) => KIND_STRING,
        Value::Array(_) => KIND_ARRAY,
        Value::Object(_) => KIND_OBJECT,
    }
}

pub(super) fn kind_name(k: u8) -> &'static str {
    match k {
        KIND_NULL => "null",
        KIND_BOOL => "bool",
        KIND_NUMBER => "float64",
        KIND_STRING => "string",
        KIND_ARRAY => "[]interface {}",
        _ => "map[string]interface {}",
    }
}

pub(super) fn go_type(v: &Value) -> &'static str {
    kind_name(json_kind(v))
}

pub(super) fn display_scalar(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}
