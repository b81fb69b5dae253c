//! The one mapping from errors to `tonic::Status`, with `google.rpc` details:
//! `ErrorInfo` (domain `gcdr.v1`, a stable UPPER_SNAKE reason) on every error, and
//! `BadRequest` listing every field violation on INVALID_ARGUMENT.

use std::collections::HashMap;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::domain::Violations;
use crate::storage::StoreError;

/// `ErrorInfo.domain` of every error this service returns.
pub const ERROR_DOMAIN: &str = "gcdr.v1";

/// A status with an `ErrorInfo` detail.
pub fn status(code: Code, reason: &str, message: impl Into<String>) -> Status {
    let details =
        ErrorDetails::with_error_info(reason, ERROR_DOMAIN, HashMap::<String, String>::new());
    Status::with_error_details(code, message, details)
}

/// INVALID_ARGUMENT listing every violation (reason `INVALID_ARGUMENT`).
pub fn invalid(violations: Violations) -> Status {
    let mut details = ErrorDetails::with_error_info(
        "INVALID_ARGUMENT",
        ERROR_DOMAIN,
        HashMap::<String, String>::new(),
    );
    let fields: Vec<&str> = violations.0.iter().map(|v| v.field.as_str()).collect();
    let message = format!("invalid request: {}", fields.join(", "));
    for v in violations.0 {
        details.add_bad_request_violation(v.field, v.description);
    }
    Status::with_error_details(Code::InvalidArgument, message, details)
}

/// INVALID_ARGUMENT for a single field.
pub fn invalid_field(field: &str, description: impl Into<String>) -> Status {
    let mut v = Violations::default();
    v.add(field, description);
    invalid(v)
}

impl From<StoreError> for Status {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound { entity } => {
                let reason = format!("{}_NOT_FOUND", entity.to_uppercase().replace(' ', "_"));
                status(Code::NotFound, &reason, format!("{entity} not found"))
            }
            StoreError::AlreadyExists { reason, field } => status(
                Code::AlreadyExists,
                reason,
                format!("{field} already exists"),
            ),
            StoreError::Conflict { expected, actual } => status(
                Code::Aborted,
                "VERSION_MISMATCH",
                format!(
                    "expected version {expected} but the stored version is {actual}; re-read and retry"
                ),
            ),
            StoreError::FailedPrecondition { reason, message } => {
                status(Code::FailedPrecondition, reason, message)
            }
            StoreError::InvalidArgument { field, message } => invalid_field(field, message),
            StoreError::Unavailable(message) => {
                tracing::warn!(error = %message, "storage unavailable");
                status(
                    Code::Unavailable,
                    "STORAGE_UNAVAILABLE",
                    "storage is temporarily unavailable; retry",
                )
            }
            StoreError::Internal(source) => {
                let mut chain = source.to_string();
                let mut next = source.source();
                while let Some(cause) = next {
                    chain.push_str(": ");
                    chain.push_str(&cause.to_string());
                    next = cause.source();
                }
                tracing::error!(error = %chain, "internal error");
                status(Code::Internal, "INTERNAL", "internal error")
            }
        }
    }
}

/// The value of a validated request: `Ok` when nothing was violated.
pub fn finish<T>(v: Violations, value: Option<T>) -> Result<T, Status> {
    match value {
        Some(value) if v.is_empty() => Ok(value),
        _ => Err(invalid(v)),
    }
}
