//! JSON patch (RFC 6902) with the apiserver's error wording.

use super::*;

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
    // One operation at a time, so that a `test` of `null` against a missing key passes as
    // in evanphx/json-patch (the apiserver's library): kube-runtime's `finalizer()` sends
    // `{"op":"test","path":"/metadata/finalizers","value":null}` for an object without
    // finalizers.
    for op in ops.0 {
        if let json_patch::PatchOperation::Test(t) = &op
            && t.value.is_null()
            && missing_key_of_existing_parent(&out, &t.path)
        {
            continue;
        }
        let one = json_patch::Patch(vec![op]);
        json_patch::patch(&mut out, &one)
            .map_err(|e| PatchError::Invalid(describe_json_patch_error(&one, &e)))?;
    }
    Ok(out)
}

/// Whether `path` names a key that is absent from an existing object (or an index past
/// the end of an existing array).
fn missing_key_of_existing_parent(doc: &Value, path: &json_patch::jsonptr::Pointer) -> bool {
    let s = path.to_string();
    let Some((parent, key)) = s.rsplit_once('/') else {
        return false;
    };
    let key = key.replace("~1", "/").replace("~0", "~");
    match doc.pointer(parent) {
        Some(Value::Object(m)) => !m.contains_key(&key),
        Some(Value::Array(a)) => key.parse::<usize>().is_ok_and(|i| i >= a.len()),
        _ => false,
    }
}

pub(super) fn describe_json_patch_error(
    ops: &json_patch::Patch,
    e: &json_patch::PatchError,
) -> String {
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
