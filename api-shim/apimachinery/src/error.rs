//! API errors and their rendering as Kubernetes `Status` objects.
//!
//! Pure: the validators in this crate return these; api-shim converts its storage errors into
//! them (`From<StoreError>` lives there, next to the store).
//!
//! Every failure a client can see is one of these variants; `to_status` maps it to the reason,
//! HTTP code and field causes that kubectl, client-go, kube-rs and the Python client understand.

use serde_json::{Value, json};

/// One field-level cause of an `Invalid` (or strict-decoding) error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cause {
    /// e.g. `FieldValueRequired`, `FieldValueInvalid`, `FieldValueDuplicate`, `FieldValueNotSupported`.
    pub reason: &'static str,
    pub field: String,
    pub message: String,
}

impl Cause {
    pub fn required(field: impl Into<String>) -> Self {
        Cause { reason: "FieldValueRequired", field: field.into(), message: "Required value".into() }
    }
    pub fn invalid(field: impl Into<String>, value: impl std::fmt::Display, msg: impl std::fmt::Display) -> Self {
        Cause {
            reason: "FieldValueInvalid",
            field: field.into(),
            message: format!("Invalid value: \"{value}\": {msg}"),
        }
    }
    pub fn forbidden(field: impl Into<String>, msg: impl Into<String>) -> Self {
        Cause { reason: "FieldValueForbidden", field: field.into(), message: format!("Forbidden: {}", msg.into()) }
    }
    pub fn unsupported(field: impl Into<String>, value: &str, allowed: &[&str]) -> Self {
        let list: Vec<String> = allowed.iter().map(|a| format!("\"{a}\"")).collect();
        Cause {
            reason: "FieldValueNotSupported",
            field: field.into(),
            message: format!("Unsupported value: \"{value}\": supported values: {}", list.join(", ")),
        }
    }
    pub fn duplicate(field: impl Into<String>, value: impl std::fmt::Display) -> Self {
        Cause { reason: "FieldValueDuplicate", field: field.into(), message: format!("Duplicate value: \"{value}\"") }
    }
    pub fn immutable(field: impl Into<String>) -> Self {
        Cause { reason: "FieldValueInvalid", field: field.into(), message: "field is immutable".into() }
    }
}

/// An error answered to an API client.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{message}")]
    BadRequest { message: String },
    #[error("Unauthorized")]
    Unauthorized,
    #[error("{message}")]
    Forbidden { message: String, details: Option<Value> },
    #[error("{kind} \"{name}\" not found")]
    NotFound { group: String, kind: String, name: String },
    #[error("the server could not find the requested resource")]
    NoRoute,
    #[error("{kind} \"{name}\" already exists")]
    AlreadyExists { group: String, kind: String, name: String },
    #[error("Operation cannot be fulfilled on {kind} \"{name}\": {message}")]
    Conflict { group: String, kind: String, name: String, message: String },
    #[error("{message}")]
    ApplyConflict { message: String, causes: Vec<Cause> },
    #[error("{kind} \"{name}\" is invalid: {}", summarize(.causes))]
    Invalid { group: String, kind: String, name: String, causes: Vec<Cause> },
    #[error("{message}")]
    Gone { message: String },
    #[error("the server does not allow this method on the requested resource")]
    MethodNotAllowed,
    #[error("the body of the request was in an unknown format - accepted media types include: {accepted}")]
    UnsupportedMediaType { accepted: String },
    #[error("only the following media types are accepted: {accepted}")]
    NotAcceptable { accepted: String },
    #[error("the request body is too large (limit {limit} bytes)")]
    TooLarge { limit: usize },
    #[error("{message}")]
    ServiceUnavailable { message: String },
    #[error("{message}")]
    Internal { message: String },
}

fn summarize(causes: &[Cause]) -> String {
    let parts: Vec<String> = causes
        .iter()
        .map(|c| if c.field.is_empty() { c.message.clone() } else { format!("{}: {}", c.field, c.message) })
        .collect();
    if parts.len() == 1 { parts.join("") } else { format!("[{}]", parts.join(", ")) }
}

impl ApiError {
    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError::BadRequest { message: message.into() }
    }
    pub fn internal(message: impl std::fmt::Display) -> Self {
        ApiError::Internal { message: message.to_string() }
    }

    pub fn code(&self) -> u16 {
        match self {
            ApiError::BadRequest { .. } => 400,
            ApiError::Unauthorized => 401,
            ApiError::Forbidden { .. } => 403,
            ApiError::NotFound { .. } | ApiError::NoRoute => 404,
            ApiError::MethodNotAllowed => 405,
            ApiError::NotAcceptable { .. } => 406,
            ApiError::AlreadyExists { .. } | ApiError::Conflict { .. } | ApiError::ApplyConflict { .. } => 409,
            ApiError::Gone { .. } => 410,
            ApiError::TooLarge { .. } => 413,
            ApiError::UnsupportedMediaType { .. } => 415,
            ApiError::Invalid { .. } => 422,
            ApiError::Internal { .. } => 500,
            ApiError::ServiceUnavailable { .. } => 503,
        }
    }

    fn reason(&self) -> &'static str {
        match self {
            ApiError::BadRequest { .. } => "BadRequest",
            ApiError::Unauthorized => "Unauthorized",
            ApiError::Forbidden { .. } => "Forbidden",
            ApiError::NotFound { .. } | ApiError::NoRoute => "NotFound",
            ApiError::MethodNotAllowed => "MethodNotAllowed",
            ApiError::NotAcceptable { .. } => "NotAcceptable",
            ApiError::AlreadyExists { .. } => "AlreadyExists",
            ApiError::Conflict { .. } | ApiError::ApplyConflict { .. } => "Conflict",
            ApiError::Gone { .. } => "Expired",
            ApiError::TooLarge { .. } => "RequestEntityTooLarge",
            ApiError::UnsupportedMediaType { .. } => "UnsupportedMediaType",
            ApiError::Invalid { .. } => "Invalid",
            ApiError::Internal { .. } => "InternalError",
            ApiError::ServiceUnavailable { .. } => "ServiceUnavailable",
        }
    }

    /// The `Status` object for this error.
    pub fn to_status(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.to_string(),
            "reason": self.reason(),
            "code": self.code(),
        });
        let details = match self {
            ApiError::NotFound { group, kind, name }
            | ApiError::AlreadyExists { group, kind, name }
            | ApiError::Conflict { group, kind, name, .. } => Some(json!({"name": name, "group": group, "kind": kind})),
            ApiError::Invalid { group, kind, name, causes } => Some(json!({
                "name": name, "group": group, "kind": kind, "causes": causes_json(causes),
            })),
            ApiError::ApplyConflict { causes, .. } => Some(json!({"causes": causes_json(causes)})),
            ApiError::Forbidden { details, .. } => details.clone(),
            _ => None,
        };
        if let Some(d) = details {
            status["details"] = d;
        }
        status
    }
}

fn causes_json(causes: &[Cause]) -> Value {
    Value::Array(causes.iter().map(|c| json!({"reason": c.reason, "message": c.message, "field": c.field})).collect())
}

/// The success `Status` returned by some deletes.
pub fn success_status(details: Value) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "details": details})
}
