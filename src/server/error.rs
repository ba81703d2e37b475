//! API errors: one JSON shape for every refusal (CONTRACT §2),
//! `{"error": code, "message": text, "issues"?: [...], "retryAfterMs"?: n}`.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use crate::contract::Issues;
use crate::injection::service::ServiceError;

/// An HTTP error answer.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub issues: Option<Issues>,
    pub retry_after_ms: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { status, code, message: message.into(), issues: None, retry_after_ms: None }
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub fn issues(issues: Issues) -> ApiError {
        let n = issues.len();
        ApiError {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            code: "validation_failed",
            message: format!("the payload has {n} problem(s); each is listed in issues with its path"),
            issues: Some(issues),
            retry_after_ms: None,
        }
    }

    pub fn body(&self) -> Value {
        let mut v = json!({ "error": self.code, "message": self.message });
        if let Some(i) = &self.issues {
            v["issues"] = serde_json::to_value(i).unwrap_or(Value::Null);
        }
        if let Some(ms) = self.retry_after_ms {
            v["retryAfterMs"] = json!(ms);
        }
        v
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (self.status, axum::Json(self.body())).into_response();
        if let Some(ms) = self.retry_after_ms {
            // Retry-After is in whole seconds; round up so a client never retries too early.
            let secs = ms.div_ceil(1000).max(1);
            if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
                r.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        r
    }
}

impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> ApiError {
        let message = e.to_string();
        match e {
            ServiceError::UnknownPrompt(issue) => ApiError {
                status: StatusCode::UNPROCESSABLE_ENTITY,
                code: "unknown_prompt",
                message,
                issues: Some(Issues::from(issue)),
                retry_after_ms: None,
            },
            ServiceError::Capacity { retry_after_ms, .. } => ApiError {
                retry_after_ms: Some(retry_after_ms),
                ..ApiError::new(StatusCode::CONFLICT, "capacity", message)
            },
            ServiceError::NotFound(_) => ApiError::not_found(message),
            ServiceError::WrongState { .. } => ApiError::new(StatusCode::CONFLICT, "invalid_state", message),
            ServiceError::IdempotencyRace(_) => ApiError::new(StatusCode::CONFLICT, "idempotency_conflict", message),
            ServiceError::ShuttingDown => ApiError {
                retry_after_ms: Some(1000),
                ..ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "shutting_down", message)
            },
            ServiceError::UnknownChannel(_) | ServiceError::NoGenesys | ServiceError::Store(_) => {
                tracing::error!(error = %message, "service failure");
                ApiError {
                    retry_after_ms: Some(1000),
                    ..ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
                }
            }
        }
    }
}
