//! Small types shared by the patch engine, the CRD schema engine and the server.

/// How a list field merges, in strategic merge patch and server-side apply.
///
/// Mirrors `x-kubernetes-list-type` / `x-kubernetes-list-map-keys` for custom resources
/// and `patchStrategy` / `patchMergeKey` (plus `listType` markers) for the core types.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListType {
    /// The list is replaced as a whole (the default for custom resources).
    Atomic,
    /// A set of scalars, merged by value.
    Set,
    /// A list of objects merged by these key fields (e.g. `["name"]` for containers).
    Map(Vec<String>),
}

/// One field error, shaped like `metav1.StatusCause` in a 422 Invalid response.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Cause {
    /// e.g. `FieldValueInvalid`, `FieldValueRequired`, `FieldValueNotSupported`,
    /// `FieldValueTypeInvalid`, `FieldValueForbidden`, `FieldValueTooLong`.
    pub reason: String,
    /// e.g. `Invalid value: -1: spec.replicas in body should be greater than or equal to 0`.
    pub message: String,
    /// Dotted path, e.g. `spec.replicas` or `spec.containers[0].name`.
    pub field: String,
}

/// Answers "how does the list at this path merge?" for one kind.
///
/// `path` is the chain of field names from the object root, list indices omitted
/// (e.g. `["spec", "containers", "env"]`).
pub trait ListSemantics {
    fn list_type(&self, path: &[String]) -> ListType;
}
