//! Structural defaulting (`default`) and dropping nulls of non-nullable fields.

use super::*;

// ───────────────────────────── defaulting ─────────────────────────────

pub(super) fn is_nonnullable_null(x: &Value, s: Option<&Value>) -> bool {
    x.is_null() && s.is_some_and(|s| !flag(s, "nullable"))
}

pub(super) fn default_node(x: &mut Value, s: &Value, depth: usize) {
    if depth > MAX_DEPTH {
        return;
    }
    match x {
        Value::Object(m) => {
            if let Some(p) = props(s) {
                for (k, prop) in p {
                    let Some(def) = prop.get("default") else {
                        continue;
                    };
                    if def.is_null() {
                        continue;
                    }
                    let missing = match m.get(k) {
                        None => true,
                        Some(v) => is_nonnullable_null(v, Some(prop)),
                    };
                    if missing {
                        m.insert(k.clone(), def.clone());
                    }
                }
            }
            let keys: Vec<String> = m.keys().cloned().collect();
            for k in keys {
                let Some(v) = m.get_mut(&k) else { continue };
                if let Some(prop) = props(s).and_then(|p| p.get(&k)) {
                    default_node(v, prop, depth + 1);
                } else if let Some(a) = addl(s) {
                    if is_nonnullable_null(v, Some(a))
                        && let Some(def) = a.get("default").filter(|d| !d.is_null())
                    {
                        *v = def.clone();
                    }
                    default_node(v, a, depth + 1);
                }
            }
        }
        Value::Array(arr) => {
            let Some(it) = items(s) else { return };
            for v in arr.iter_mut() {
                if is_nonnullable_null(v, Some(it))
                    && let Some(def) = it.get("default").filter(|d| !d.is_null())
                {
                    *v = def.clone();
                }
                default_node(v, it, depth + 1);
            }
        }
        _ => {}
    }
}

/// `PruneNonNullableNullsWithoutDefaults`: nulls of non-nullable fields without a default
/// are dropped from objects (the apiserver does this on decode, before defaulting).
pub(super) fn prune_nulls(x: &mut Value, s: Option<&Value>, depth: usize) {
    if depth > MAX_DEPTH {
        return;
    }
    match x {
        Value::Object(m) => {
            let keys: Vec<String> = m.keys().cloned().collect();
            for k in keys {
                let fs = s.and_then(|s| field_schema(s, &k));
                let drop = match (m.get(&k), fs) {
                    (Some(v), Some(fs)) => {
                        v.is_null()
                            && !flag(fs, "nullable")
                            && fs.get("default").is_none_or(Value::is_null)
                    }
                    _ => false,
                };
                if drop {
                    m.remove(&k);
                } else if let Some(v) = m.get_mut(&k) {
                    prune_nulls(v, fs, depth + 1);
                }
            }
        }
        Value::Array(arr) => {
            let it = s.and_then(items);
            for v in arr.iter_mut() {
                prune_nulls(v, it, depth + 1);
            }
        }
        _ => {}
    }
}
