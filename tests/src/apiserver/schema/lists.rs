//! `x-kubernetes-list-type` set / map uniqueness.

use super::*;

// ───────────────────────────── list types ─────────────────────────────

pub(super) fn list_errors(s: &Value, x: &Value, path: &str, depth: usize, out: &mut Vec<Cause>) {
    if depth > MAX_DEPTH {
        return;
    }
    match x {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            for k in keys {
                if let Some(p) = props(s).and_then(|p| p.get(k)) {
                    list_errors(p, &m[k], &child(path, k), depth + 1, out);
                } else if let Some(a) = addl(s) {
                    list_errors(a, &m[k], &subscript(path, k), depth + 1, out);
                }
            }
        }
        Value::Array(arr) => {
            match s.get("x-kubernetes-list-type").and_then(Value::as_str) {
                Some("set") => {
                    for i in non_unique(arr) {
                        out.push(cause(
                            R_DUPLICATE,
                            &subscript(path, &i.to_string()),
                            Bad::Json(arr[i].clone()),
                            "",
                        ));
                    }
                }
                Some("map") => list_map_errors(s, arr, path, out),
                _ => {}
            }
            if let Some(it) = items(s) {
                for (i, v) in arr.iter().enumerate() {
                    list_errors(it, v, &subscript(path, &i.to_string()), depth + 1, out);
                }
            }
        }
        _ => {}
    }
}

/// Indices of second occurrences (Go `validateListSet`).
pub(super) fn non_unique(arr: &[Value]) -> Vec<usize> {
    let mut seen: Vec<(String, usize)> = Vec::new();
    let mut out = Vec::new();
    for (i, x) in arr.iter().enumerate() {
        let key = match x {
            Value::Number(n) => match go_num(n) {
                GoNum::Int(v) => format!("i:{v}"),
                GoNum::Float(f) => format!("f:{}", go_float(f)),
            },
            other => format!("j:{}", go_json(other)),
        };
        match seen.iter_mut().find(|(k, _)| *k == key) {
            Some((_, times)) => {
                *times += 1;
                if *times == 2 {
                    out.push(i);
                }
            }
            None => seen.push((key, 1)),
        }
    }
    out
}

pub(super) fn list_map_errors(s: &Value, arr: &[Value], path: &str, out: &mut Vec<Cause>) {
    for (i, x) in arr.iter().enumerate() {
        if !x.is_null() && !x.is_object() {
            out.push(cause(
                R_INVALID,
                &subscript(path, &i.to_string()),
                Bad::Json(x.clone()),
                "must be an object for an array of list-type map",
            ));
            return;
        }
    }
    if arr.len() <= 1 {
        return;
    }
    let key_fields = list_map_keys(s);
    let keys: Vec<Value> = arr
        .iter()
        .map(|x| {
            let mut key = Map::new();
            if let Some(m) = x.as_object() {
                for f in &key_fields {
                    if let Some(v) = m.get(f) {
                        key.insert(f.clone(), v.clone());
                    }
                }
            }
            Value::Object(key)
        })
        .collect();
    for i in non_unique(&keys) {
        out.push(cause(
            R_DUPLICATE,
            &subscript(path, &i.to_string()),
            Bad::Json(keys[i].clone()),
            "",
        ));
    }
}

/// For list-type map items: the old item with the same key values.
pub(super) fn correlate_map_item<'a>(
    s: &Value,
    new_item: &Value,
    old_list: Option<&'a Value>,
) -> Option<&'a Value> {
    if s.get("x-kubernetes-list-type").and_then(Value::as_str) != Some("map") {
        return None;
    }
    let keys = list_map_keys(s);
    let new_m = new_item.as_object()?;
    old_list?.as_array()?.iter().find(|o| {
        o.as_object().is_some_and(|om| {
            keys.iter().all(|k| match (new_m.get(k), om.get(k)) {
                (Some(a), Some(b)) => a == b,
                (None, None) => true,
                _ => false,
            })
        })
    })
}
