//! The error object OpenAI clients expect, with its HTTP status.

use crate::serve::protocol::SubmitError;
use serde_json::{json, Value};

/// An error as an OpenAI client expects it: an HTTP status and
/// `{"error": {"message", "type", "param", "code"}}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: u16,
    /// OpenAI's `type`: `invalid_request_error`, `authentication_error`, `server_error`, ...
    pub kind: &'static str,
    pub message: String,
    /// The request field at fault, when there is one.
    pub param: Option<String>,
    pub code: Option<&'static str>,
}

impl ApiError {
    fn new(status: u16, kind: &'static str, code: &'static str, message: String) -> Self {
        ApiError {
            status,
            kind,
            message,
            param: None,
            code: Some(code),
        }
    }

    /// A 400 `invalid_request_error`.
    pub fn invalid(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(400, "invalid_request_error", code, message.into())
    }

    /// A 400 about one request field.
    pub fn field(param: &str, code: &'static str, message: impl Into<String>) -> Self {
        Self::invalid(code, message).with_param(param)
    }

    pub fn with_param(mut self, param: &str) -> Self {
        self.param = Some(param.to_string());
        self
    }

    pub fn not_found(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(404, "invalid_request_error", code, message.into())
    }

    pub fn method_not_allowed(method: &str, path: &str, allowed: &str) -> Self {
        Self::new(
            405,
            "invalid_request_error",
            "method_not_allowed",
            format!("method {method} is not allowed on {path}; use {allowed}"),
        )
    }

    pub fn payload_too_large(limit: usize) -> Self {
        Self::new(
            413,
            "invalid_request_error",
            "request_too_large",
            format!(
                "the request body is larger than {limit} bytes; send a smaller request \
                 (the limit is [server] max_body_bytes)"
            ),
        )
    }

    pub fn unsupported_media_type(got: Option<&str>) -> Self {
        let got = match got {
            Some(t) => format!("got Content-Type {t:?}"),
            None => "the request has no Content-Type".to_string(),
        };
        Self::new(
            415,
            "invalid_request_error",
            "unsupported_media_type",
            format!("{got}; send the body as JSON with Content-Type: application/json"),
        )
    }

    pub fn unauthorized(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(401, "authentication_error", code, message.into())
    }

    /// The queue is full: the client should retry later.
    pub fn overloaded(limit: usize) -> Self {
        Self::new(
            429,
            "rate_limit_error",
            "queue_full",
            format!(
                "the server is busy: {limit} requests are already running or queued; retry later \
                 (the limit is [server] parallel + max_queue)"
            ),
        )
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(503, "server_error", "unavailable", message.into())
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(500, "server_error", "internal_error", message.into())
    }

    /// Whatever else answered `status` (the safety net for responses not built here).
    pub fn from_status(status: u16, detail: &str) -> Self {
        let (kind, code) = match status {
            401 => ("authentication_error", "unauthorized"),
            404 => ("invalid_request_error", "not_found"),
            405 => ("invalid_request_error", "method_not_allowed"),
            413 => ("invalid_request_error", "request_too_large"),
            415 => ("invalid_request_error", "unsupported_media_type"),
            429 => ("rate_limit_error", "rate_limited"),
            400..=499 => ("invalid_request_error", "invalid_request"),
            _ => ("server_error", "internal_error"),
        };
        let detail = detail.split_whitespace().collect::<Vec<_>>().join(" ");
        let message = if detail.is_empty() {
            format!("the request failed with HTTP status {status}")
        } else {
            detail
        };
        Self::new(status, kind, code, message)
    }

    pub fn body(&self) -> Value {
        json!({
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": self.param,
                "code": self.code,
            }
        })
    }
}

impl From<SubmitError> for ApiError {
    fn from(e: SubmitError) -> Self {
        match e {
            SubmitError::ShuttingDown => Self::new(
                503,
                "server_error",
                "shutting_down",
                format!("{e}; retry later"),
            ),
            SubmitError::QueueFull(_) => Self::new(
                429,
                "rate_limit_error",
                "queue_full",
                format!("the server is busy: {e}"),
            ),
        }
    }
}
