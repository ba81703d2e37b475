//! Errors of the emulator: [`EmulatorError`] for starting it, and [`ApiError`], the
//! Genesys `ErrorBody` (genesys-api.md §3.1) every `/api/v2` failure answers with.
//!
//! Handlers return an [`ApiError`] without knowing the request's correlation id; the
//! gateway middleware renders it (filling `contextId`), so every error body and the
//! `ININ-Correlation-ID` header always agree.

use std::path::PathBuf;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{json, Map, Value};
use thiserror::Error;

/// Why the emulator could not start or keep serving.
#[derive(Debug, Error)]
pub enum EmulatorError {
    #[error("cannot bind the emulator to {addr}: {source}")]
    Bind { addr: String, source: std::io::Error },
    #[error("the emulator server failed: {0}")]
    Serve(std::io::Error),
    #[error("cannot read recorded calls file {path}: {source}")]
    CallsRead { path: PathBuf, source: std::io::Error },
    #[error("recorded calls file {path}, line {line}: {message}")]
    CallsParse { path: PathBuf, line: usize, message: String },
    #[error("recorded calls file {path}: {message}")]
    CallsInvalid { path: PathBuf, message: String },
    #[error("cannot replay: {message}")]
    Replay { message: String },
}

/// A Genesys REST error, rendered as `ErrorBody` by the gateway.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: u16,
    pub code: String,
    pub message: String,
    /// The rarely used parts, boxed to keep `Result<_, ApiError>` small.
    pub extra: Option<Box<ErrorExtra>>,
    /// Seconds for the `Retry-After` header (429).
    pub retry_after: Option<u64>,
}

/// Optional parts of an `ErrorBody`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ErrorExtra {
    /// `messageWithParams` and `messageParams`, when the error has a template.
    pub template: Option<(String, Vec<(String, String)>)>,
    /// `limit{key, namespace, value}` on rate-limit errors.
    pub limit: Option<(String, String, u64)>,
}

impl ApiError {
    pub fn new(status: u16, code: &str, message: impl Into<String>) -> ApiError {
        ApiError { status, code: code.to_string(), message: message.into(), extra: None, retry_after: None }
    }

    /// Add `messageWithParams` / `messageParams`.
    pub fn with_template(mut self, template: &str, params: Vec<(String, String)>) -> ApiError {
        self.extra.get_or_insert_with(Box::default).template = Some((template.to_string(), params));
        self
    }

    /// Add the rate-limit `limit` object.
    pub fn with_limit(mut self, key: &str, namespace: &str, value: u64) -> ApiError {
        self.extra.get_or_insert_with(Box::default).limit = Some((key.to_string(), namespace.to_string(), value));
        self
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(400, "bad.request", message)
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(404, "not.found", message)
    }

    /// The per-token rate limit answer: 429, `Retry-After`, and the `limit` object.
    pub fn rate_limited(retry_after_secs: u64, limit_value: u64) -> ApiError {
        let secs = retry_after_secs.to_string();
        let mut e = ApiError::new(
            429,
            "too.many.requests.retry.after",
            format!("Rate limit exceeded the maximum. Retry the request in [{secs}] seconds"),
        )
        .with_template(
            "Rate limit exceeded the maximum. Retry the request in [{retryAfterSeconds}] seconds",
            vec![("retryAfterSeconds".into(), secs)],
        )
        .with_limit("client.credentials.token.rate.per.minute", "platform.api", limit_value);
        e.retry_after = Some(retry_after_secs);
        e
    }

    /// The error Genesys answers for `status` when nothing more specific applies; used by
    /// the `fail_next` fault.
    pub fn for_status(status: u16) -> ApiError {
        let (code, message) = match status {
            400 => ("bad.request", "The request could not be understood by the server due to malformed syntax."),
            401 => ("bad.credentials", "Invalid login credentials."),
            403 => ("not.authorized", "You are not authorized to perform the requested action."),
            404 => ("not.found", "The requested resource was not found."),
            405 => ("method.not.allowed", "The requested method is not allowed on this resource."),
            408 => ("client.timeout", "The client did not produce a request within the time allowed."),
            409 => ("conflict", "The request conflicts with the current state of the resource."),
            410 => ("gone", "The requested resource is no longer available."),
            413 => ("request.entity.too.large", "The request is over the size limit."),
            415 => ("unsupported.media.type", "Unsupported Media Type."),
            422 => ("payload.or.params.invalid", "The payload or parameters are invalid."),
            429 => ("too.many.requests", "Rate limit exceeded the maximum."),
            500 => ("internal.server.error", "The server encountered an unexpected condition."),
            501 => ("not.implemented", "The requested feature is not implemented."),
            502 => ("bad.gateway", "The server received an invalid response from an upstream server."),
            503 => ("service.unavailable", "Service Unavailable - The server is currently unavailable."),
            504 => ("request.timeout", "The request timed out."),
            _ => ("error", "The request failed."),
        };
        let mut e = ApiError::new(status, code, message);
        if status == 429 {
            e.retry_after = Some(1);
        }
        e
    }

    /// The `ErrorBody` JSON with `contextId` set to the request's correlation id.
    pub fn body(&self, context_id: &str) -> Value {
        let mut m = Map::new();
        m.insert("message".into(), json!(self.message));
        m.insert("code".into(), json!(self.code));
        m.insert("status".into(), json!(self.status));
        let extra = self.extra.as_deref();
        if let Some((template, params)) = extra.and_then(|x| x.template.as_ref()) {
            m.insert("messageWithParams".into(), json!(template));
            let params: Map<String, Value> = params.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
            m.insert("messageParams".into(), Value::Object(params));
        }
        m.insert("contextId".into(), json!(context_id));
        m.insert("details".into(), json!([]));
        m.insert("errors".into(), json!([]));
        if let Some((key, namespace, value)) = extra.and_then(|x| x.limit.as_ref()) {
            m.insert("limit".into(), json!({"key": key, "namespace": namespace, "value": value}));
        }
        Value::Object(m)
    }

    /// A finished response carrying the body and the headers that go with it.
    pub fn render(&self, context_id: &str) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut resp = (status, axum::Json(self.body(context_id))).into_response();
        if let Some(secs) = self.retry_after {
            if let Ok(v) = secs.to_string().parse() {
                resp.headers_mut().insert(axum::http::header::RETRY_AFTER, v);
            }
        }
        resp
    }
}

/// Marker left on a handler's error response; the gateway replaces the body with the
/// rendered `ErrorBody` once it knows the correlation id.
#[derive(Debug, Clone)]
pub(crate) struct PendingError(pub ApiError);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        // Rendered with an empty context id in case no gateway runs (it always does in
        // the emulator's router); the gateway re-renders with the real one.
        let mut resp = self.render("");
        resp.extensions_mut().insert(PendingError(self));
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limit_body_has_the_documented_shape() {
        let b = ApiError::rate_limited(7, 300).body("ctx-1");
        assert_eq!(b["code"], "too.many.requests.retry.after");
        assert_eq!(b["status"], 429);
        assert_eq!(b["messageParams"]["retryAfterSeconds"], "7");
        assert_eq!(b["contextId"], "ctx-1");
        assert_eq!(
            b["limit"],
            json!({"key":"client.credentials.token.rate.per.minute","namespace":"platform.api","value":300})
        );
        assert_eq!(b["details"], json!([]));
        assert_eq!(b["errors"], json!([]));
    }

    #[test]
    fn status_codes_map_to_genesys_codes() {
        for (status, code) in [
            (500, "internal.server.error"),
            (503, "service.unavailable"),
            (501, "not.implemented"),
            (504, "request.timeout"),
        ] {
            let e = ApiError::for_status(status);
            assert_eq!(e.code, code);
            assert!(e.body("x").get("limit").is_none());
        }
    }
}
