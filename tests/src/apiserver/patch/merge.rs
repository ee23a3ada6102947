//! JSON merge patch (RFC 7386).

use super::*;

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

pub(super) fn merge_into(target: &mut Value, patch: &Value) {
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
