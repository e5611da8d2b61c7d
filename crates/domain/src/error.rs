//! The error every store returns, local or remote.
//!
//! Variants map one-to-one onto the gRPC status codes of the wire contract,
//! so code written against the `MarginOfferStore` trait behaves the same
//! whichever backend sits behind it.

use crate::change::Revision;
use serde::{Deserialize, Serialize};
use std::fmt;

/// A validation failure, always naming the offending field.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        FieldError {
            field: field.into(),
            message: message.into(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum StoreError {
    #[error("invalid argument: {0}")]
    InvalidArgument(#[from] FieldError),
    #[error("margin offer not found: {id}")]
    NotFound { id: String },
    #[error("margin offer already exists: {id}")]
    AlreadyExists { id: String },
    #[error(
        "revision {requested} is older than the retained change log; oldest retained revision is {oldest}"
    )]
    OutOfRange {
        requested: Revision,
        oldest: Revision,
    },
    #[error("resource exhausted: {0}")]
    ResourceExhausted(String),
    #[error("unauthenticated: {0}")]
    Unauthenticated(String),
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    #[error("deadline exceeded: {0}")]
    DeadlineExceeded(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl StoreError {
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        StoreError::InvalidArgument(FieldError::new(field, message))
    }

    /// Transient errors are worth retrying for calls that are safe to repeat.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            StoreError::Unavailable(_) | StoreError::DeadlineExceeded(_)
        )
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

/// The per-item error codes of a bulk response, spelled as the gRPC codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ErrorCode {
    InvalidArgument,
    AlreadyExists,
    NotFound,
    Internal,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidArgument => "INVALID_ARGUMENT",
            ErrorCode::AlreadyExists => "ALREADY_EXISTS",
            ErrorCode::NotFound => "NOT_FOUND",
            ErrorCode::Internal => "INTERNAL",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "INVALID_ARGUMENT" => ErrorCode::InvalidArgument,
            "ALREADY_EXISTS" => ErrorCode::AlreadyExists,
            "NOT_FOUND" => ErrorCode::NotFound,
            "INTERNAL" => ErrorCode::Internal,
            _ => return None,
        })
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One failing item of a bulk request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BulkError {
    /// Position of the item in the request.
    pub index: usize,
    pub id: String,
    pub message: String,
    pub code: ErrorCode,
}

impl BulkError {
    pub fn invalid(index: usize, id: &str, err: &FieldError) -> Self {
        BulkError {
            index,
            id: id.to_owned(),
            message: err.to_string(),
            code: ErrorCode::InvalidArgument,
        }
    }

    pub fn already_exists(index: usize, id: &str) -> Self {
        BulkError {
            index,
            id: id.to_owned(),
            message: format!("margin offer already exists: {id}"),
            code: ErrorCode::AlreadyExists,
        }
    }

    pub fn not_found(index: usize, id: &str) -> Self {
        BulkError {
            index,
            id: id.to_owned(),
            message: format!("margin offer not found: {id}"),
            code: ErrorCode::NotFound,
        }
    }

    pub fn duplicate(index: usize, id: &str) -> Self {
        BulkError {
            index,
            id: id.to_owned(),
            message: format!("id: duplicate id {id:?} in one request"),
            code: ErrorCode::InvalidArgument,
        }
    }
}
