//! Patch engines: JSON merge patch (RFC 7386), JSON patch (RFC 6902), strategic merge
//! patch, and server-side apply with managed fields.
//!
//! STUB: the interface is fixed; the implementation is being written.

use super::types::{ListSemantics, ListType};
use serde_json::Value;

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

/// Lists in core types that the apiserver merges by key (containers by name, ...).
pub struct CoreListSemantics {
    pub api_version: String,
    pub kind: String,
}

impl ListSemantics for CoreListSemantics {
    fn list_type(&self, _path: &[String]) -> ListType {
        ListType::Atomic
    }
}

pub fn merge_patch(target: &Value, patch: &Value) -> Value {
    let mut out = target.clone();
    json_patch::merge(&mut out, patch);
    out
}

pub fn json_patch(target: &Value, patch: &Value) -> Result<Value, PatchError> {
    let ops: json_patch::Patch = serde_json::from_value(patch.clone())
        .map_err(|e| PatchError::BadRequest(e.to_string()))?;
    let mut out = target.clone();
    json_patch::patch(&mut out, &ops).map_err(|e| PatchError::Invalid(e.to_string()))?;
    Ok(out)
}

pub fn strategic_merge_patch(
    target: &Value,
    patch: &Value,
    _lists: &dyn ListSemantics,
) -> Result<Value, PatchError> {
    Ok(merge_patch(target, patch))
}

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

/// Server-side apply of `applied` onto `live` (None = create). Returns the new object,
/// with `metadata.managedFields` updated (operation `Apply`).
pub fn apply(
    live: Option<&Value>,
    applied: &Value,
    _ctx: &ApplyContext<'_>,
) -> Result<Value, PatchError> {
    Ok(match live {
        Some(live) => merge_patch(live, applied),
        None => applied.clone(),
    })
}

/// Records a non-apply write (create, update, any non-apply patch) in
/// `new.metadata.managedFields` as operation `Update` for `manager`, so that later
/// applies see conflicts with it.
pub fn record_update(
    _old: Option<&Value>,
    _new: &mut Value,
    _manager: &str,
    _subresource: Option<&str>,
    _now: &str,
) {
}
