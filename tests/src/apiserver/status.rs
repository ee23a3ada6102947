//! `metav1.Status` error answers, shaped like the real apiserver's.

use super::types::Cause;
use axum::http::StatusCode;
use serde_json::{Value, json};

/// An error answer: HTTP code + `Status` body (+ optional Retry-After header).
#[derive(Debug, Clone)]
pub struct ApiError {
    pub code: u16,
    pub body: Value,
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(
        code: u16,
        reason: &str,
        message: impl Into<String>,
        details: Option<Value>,
    ) -> Self {
        let mut body = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": message.into(),
            "reason": reason,
            "code": code,
        });
        if let Some(d) = details {
            body["details"] = d;
        }
        ApiError {
            code,
            body,
            retry_after: None,
        }
    }

    pub fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message, None)
    }

    pub fn not_found(group: &str, resource: &str, name: &str) -> Self {
        Self::new(
            404,
            "NotFound",
            format!("{} \"{}\" not found", qualified(resource, group), name),
            Some(json!({"name": name, "group": group, "kind": resource})),
        )
    }

    /// 404 for a URL that names no resource at all.
    pub fn no_route() -> Self {
        Self::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
            Some(json!({})),
        )
    }

    pub fn already_exists(group: &str, resource: &str, name: &str) -> Self {
        Self::new(
            409,
            "AlreadyExists",
            format!("{} \"{}\" already exists", qualified(resource, group), name),
            Some(json!({"name": name, "group": group, "kind": resource})),
        )
    }

    pub fn conflict(group: &str, resource: &str, name: &str, why: &str) -> Self {
        Self::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{}\": {}",
                qualified(resource, group),
                name,
                why
            ),
            Some(json!({"name": name, "group": group, "kind": resource})),
        )
    }

    pub fn stale(group: &str, resource: &str, name: &str) -> Self {
        Self::conflict(
            group,
            resource,
            name,
            "the object has been modified; please apply your changes to the latest version and try again",
        )
    }

    pub fn method_not_allowed() -> Self {
        Self::new(
            405,
            "MethodNotAllowed",
            "the server does not allow this method on the requested resource",
            Some(json!({})),
        )
    }

    /// `ct` is the list of accepted media types.
    pub fn unsupported_media_type(ct: &str) -> Self {
        Self::new(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format - accepted media types include: {ct}"
            ),
            None,
        )
    }

    pub fn expired(message: impl Into<String>) -> Self {
        Self::new(410, "Expired", message, None)
    }

    pub fn forbidden(group: &str, resource: &str, name: &str, why: &str) -> Self {
        let what = if name.is_empty() {
            qualified(resource, group)
        } else {
            format!("{} \"{}\"", qualified(resource, group), name)
        };
        Self::new(
            403,
            "Forbidden",
            format!("{what} is forbidden: {why}"),
            Some(json!({"name": name, "group": group, "kind": resource})),
        )
    }

    /// What the apiserver answers for an error that is not an API status
    /// (`ErrorToAPIStatus`: `StatusReasonUnknown`, i.e. no reason, the bare message).
    pub fn unknown(code: u16, message: impl Into<String>) -> Self {
        let mut e = Self::new(code, "", message, None);
        if let Some(m) = e.body.as_object_mut() {
            m.remove("reason");
        }
        e
    }

    pub fn internal(message: impl Into<String>) -> Self {
        let m = message.into();
        Self::new(
            500,
            "InternalError",
            format!("Internal error occurred: {m}"),
            Some(json!({"causes": [{"message": m}]})),
        )
    }

    /// `errors.NewInvalid`: 422 with one cause per field error. `kind` is the Kind
    /// (e.g. `Widget`), `group` its API group.
    pub fn invalid(group: &str, kind: &str, name: &str, causes: &[Cause]) -> Self {
        let qk = if group.is_empty() {
            kind.to_string()
        } else {
            format!("{kind}.{group}")
        };
        // ToAggregate: messages deduplicated, one → bare, several → "[a, b]".
        let mut msgs: Vec<String> = Vec::new();
        for c in causes {
            let m = if c.field.is_empty() {
                c.message.clone()
            } else {
                format!("{}: {}", c.field, c.message)
            };
            if !msgs.contains(&m) {
                msgs.push(m);
            }
        }
        let message = match msgs.len() {
            0 => format!("{qk} \"{name}\" is invalid"),
            1 => format!("{qk} \"{name}\" is invalid: {}", msgs[0]),
            _ => format!("{qk} \"{name}\" is invalid: [{}]", msgs.join(", ")),
        };
        let causes: Vec<Value> = causes
            .iter()
            .map(|c| json!({"reason": c.reason, "message": c.message, "field": c.field}))
            .collect();
        Self::new(
            422,
            "Invalid",
            message,
            Some(json!({"name": name, "group": group, "kind": kind, "causes": causes})),
        )
    }
}

/// `resource.group` as in `schema.GroupResource.String()`.
pub fn qualified(resource: &str, group: &str) -> String {
    if group.is_empty() {
        resource.to_string()
    } else {
        format!("{resource}.{group}")
    }
}

/// A `Status` with `status: Success` (delete answers).
pub fn success(code: u16, name: &str, group: &str, kind: &str, uid: &str) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Success",
        "details": {"name": name, "group": group, "kind": kind, "uid": uid},
        "code": code,
    })
}

pub fn cause(reason: &str, field: &str, message: impl Into<String>) -> Cause {
    Cause {
        reason: reason.to_string(),
        message: message.into(),
        field: field.to_string(),
    }
}
