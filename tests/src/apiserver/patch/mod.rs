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

mod apply;
mod fieldset;
mod json;
mod lists;
mod managed_fields;
mod merge;
mod strategic;
#[cfg(test)]
mod tests;

pub use apply::{ApplyContext, apply};
use fieldset::*;
pub use json::json_patch;
pub use lists::CoreListSemantics;
use lists::*;
use managed_fields::*;
pub use managed_fields::{record_update, record_update_with};
pub use merge::merge_patch;
pub use strategic::strategic_merge_patch;
use strategic::*;
