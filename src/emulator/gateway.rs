//! The gateway every request passes through: correlation ids, faults, bearer auth, the
//! per-token rate limit, the request-size limit, and the final rendering of errors as
//! `ErrorBody` (genesys-api.md §3). Handlers behind it only deal with their resource.
//!
//! Order on `/api/v2`: injected failures (a gateway-level outage comes first), the size
//! limit, authentication, injected and real rate limits (per token, so after auth),
//! permission denials, then the handler. Every answer gets `ININ-Correlation-ID`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, FromRequest, Request, State as AxState};
use axum::http::{header, HeaderValue, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;

use super::auth::{self, Caller};
use super::error::{ApiError, PendingError};
use super::faults;
use super::ratelimit::retry_after_secs;
use super::state::{lock, State};

/// `request.bytes.max`: the largest request body Genesys accepts.
pub const MAX_BODY_BYTES: usize = 512_000;

/// The correlation header Genesys puts on every API answer.
pub const CORRELATION_HEADER: &str = "ININ-Correlation-ID";

/// Which part of the emulator a path belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Area {
    Token,
    Api,
    Admin,
    Other,
}

fn area(path: &str) -> Area {
    if path == "/oauth/token" {
        Area::Token
    } else if path == "/api/v2" || path.starts_with("/api/v2/") {
        Area::Api
    } else if path.starts_with("/__emulator") {
        Area::Admin
    } else {
        Area::Other
    }
}

/// The middleware wrapped around the whole router.
pub async fn gateway(AxState(state): AxState<Arc<State>>, req: Request, next: Next) -> Response {
    let correlation = uuid::Uuid::new_v4().to_string();
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    let resp = match area(&path) {
        Area::Token => {
            state.count(|s| s.token_requests += 1);
            delay(&state).await;
            next.run(req).await
        }
        Area::Api => {
            state.count(|s| s.api_requests += 1);
            delay(&state).await;
            let resp = match admit(&state, req, &path).await {
                Ok(req) => next.run(req).await,
                Err(e) => e.into_response(),
            };
            let resp = finish_api(&state, resp).await;
            let status = resp.status().as_u16();
            state.count(|s| {
                *s.responses_by_status.entry(status).or_default() += 1;
                if status == 429 {
                    s.responses_429 += 1;
                }
            });
            resp
        }
        Area::Admin => {
            let peer = req.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0);
            if peer.is_some_and(|p| !p.ip().is_loopback()) {
                ApiError::new(403, "not.authorized", "The emulator's admin endpoints answer loopback clients only.")
                    .into_response()
            } else {
                next.run(req).await
            }
        }
        Area::Other => next.run(req).await,
    };
    // Paths and statuses only: tokens and bodies never reach the log.
    tracing::debug!(%method, %path, status = resp.status().as_u16(), correlation = %correlation, "emulator request");
    render(resp, &correlation)
}

async fn delay(state: &State) {
    let d = faults::latency(state);
    if !d.is_zero() {
        tokio::time::sleep(d).await;
    }
}

/// Everything that can refuse an `/api/v2` request before its handler runs.
async fn admit(state: &State, req: Request, path: &str) -> Result<Request, ApiError> {
    if let Some(e) = faults::take_failure(state) {
        return Err(e);
    }
    let too_large = || {
        ApiError::new(
            413,
            "request.entity.too.large",
            format!("The request is over the size limit of {MAX_BODY_BYTES} bytes."),
        )
    };
    let declared =
        req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        return Err(too_large());
    }
    let token = auth::bearer(req.headers())?;
    let now = Instant::now();
    let principal = lock(&state.tokens).check(&token, now)?;
    if let Some(e) = faults::take_rate_limit(state) {
        return Err(e);
    }
    {
        let mut limiter = lock(&state.limiter);
        let cell = limiter.entry(token.clone()).or_default();
        if let Err(wait) = cell.check(now, state.requests_per_minute) {
            return Err(ApiError::rate_limited(retry_after_secs(wait), u64::from(state.requests_per_minute)));
        }
    }
    if let Some(e) = faults::denied(state, path) {
        return Err(e);
    }
    let (mut parts, body) = req.into_parts();
    let bytes = axum::body::to_bytes(body, MAX_BODY_BYTES).await.map_err(|_| too_large())?;
    parts.extensions.insert(Caller { token, principal });
    Ok(Request::from_parts(parts, Body::from(bytes)))
}

/// Turn any error that is not yet an `ErrorBody` (an extractor's plain-text rejection)
/// into one, and apply the malformed-body fault to a successful answer that has a body.
async fn finish_api(state: &State, resp: Response) -> Response {
    if resp.extensions().get::<PendingError>().is_some() {
        return resp;
    }
    if !resp.status().is_success() {
        let status = resp.status().as_u16();
        let text = axum::body::to_bytes(resp.into_body(), 64 * 1024).await.unwrap_or_default();
        let mut e = ApiError::for_status(status);
        let text = String::from_utf8_lossy(&text).trim().to_string();
        if !text.is_empty() {
            e.message = text;
        }
        return e.into_response();
    }
    let (mut parts, body) = resp.into_parts();
    let bytes = match axum::body::to_bytes(body, usize::MAX).await {
        Ok(b) => b,
        Err(_) => return ApiError::for_status(500).into_response(),
    };
    if bytes.len() < 2 || !faults::take_malformed(state) {
        return Response::from_parts(parts, Body::from(bytes));
    }
    // Cut the JSON in the middle of a value: clients must report a decode error, not panic.
    let cut = bytes.slice(..bytes.len() / 2);
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(cut))
}

/// Render a pending `ErrorBody` with the correlation id and set the header.
fn render(resp: Response, correlation: &str) -> Response {
    let mut resp = match resp.extensions().get::<PendingError>() {
        Some(PendingError(e)) => e.render(correlation),
        None => resp,
    };
    if let Ok(v) = HeaderValue::from_str(correlation) {
        resp.headers_mut().insert(CORRELATION_HEADER, v);
    }
    resp
}

/// Fallback for unknown paths.
pub async fn not_found(method: Method, uri: axum::http::Uri) -> ApiError {
    ApiError::not_found(format!("The requested resource ({method} {}) was not found.", uri.path()))
}

/// Fallback for a known path with the wrong method.
pub async fn method_not_allowed(method: Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(405, "method.not.allowed", format!("HTTP method {method} is not supported on {}.", uri.path()))
}

/// A JSON request body: 415 for another content type, 400 for bad JSON or wrong types.
#[derive(Debug)]
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let is_json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(';').next().unwrap_or("").trim().to_ascii_lowercase())
            .is_some_and(|m| m == "application/json" || (m.starts_with("application/") && m.ends_with("+json")));
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|_| ApiError::new(413, "request.entity.too.large", "The request body could not be read."))?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Err(ApiError::bad_request("A JSON request body is required."));
        }
        if !is_json {
            return Err(ApiError::new(
                415,
                "unsupported.media.type",
                "Unsupported Media Type. Send the body as Content-Type: application/json.",
            ));
        }
        serde_json::from_slice(&bytes)
            .map(JsonBody)
            .map_err(|e| ApiError::bad_request(format!("The request body could not be parsed: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn areas() {
        assert_eq!(area("/oauth/token"), Area::Token);
        assert_eq!(area("/api/v2/users/me"), Area::Api);
        assert_eq!(area("/api/v2"), Area::Api);
        assert_eq!(area("/api/v2x"), Area::Other);
        assert_eq!(area("/__emulator/stats"), Area::Admin);
        assert_eq!(area("/channels/streaming-0-x"), Area::Other);
    }
}
