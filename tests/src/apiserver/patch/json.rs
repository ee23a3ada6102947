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
    json_patch::patch(&mut out, &ops)
        .map_err(|e| PatchError::Invalid(describe_json_patch_error(&ops, &e)))?;
    Ok(out)
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
