//! CRD structural schemas: defaulting, pruning, validation (OpenAPI v3 subset and CEL
//! `x-kubernetes-validations` through `kube-cel`).
//!
//! STUB: the interface is fixed; the implementation is being written.

use super::types::{Cause, ListSemantics, ListType};
use serde_json::Value;

/// The schema of one served version of a CustomResourceDefinition.
#[derive(Debug, Clone)]
pub struct CrdVersionSchema {
    schema: Value,
}

impl CrdVersionSchema {
    /// From one entry of `spec.versions` of a CRD (reads `schema.openAPIV3Schema`).
    pub fn from_crd_version(version: &Value) -> Result<Self, String> {
        let schema = version
            .pointer("/schema/openAPIV3Schema")
            .cloned()
            .ok_or_else(|| "missing schema.openAPIV3Schema".to_string())?;
        Ok(Self { schema })
    }

    /// Applies `default` values, as the apiserver does on create/update and on read.
    pub fn apply_defaults(&self, _obj: &mut Value) {
        let _ = &self.schema;
    }

    /// Drops fields the schema does not know (unless preserved), like the apiserver.
    pub fn prune(&self, _obj: &mut Value) {}

    /// Validates `obj` (and transition rules against `old` on update).
    pub fn validate(&self, _obj: &Value, _old: Option<&Value>) -> Vec<Cause> {
        Vec::new()
    }
}

impl ListSemantics for CrdVersionSchema {
    fn list_type(&self, _path: &[String]) -> ListType {
        ListType::Atomic
    }
}

/// Checks a CustomResourceDefinition itself (structural schema, CEL rules compile),
/// as the apiserver does before accepting it.
pub fn validate_crd(_crd: &Value) -> Vec<Cause> {
    Vec::new()
}
