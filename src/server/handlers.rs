//! The route handlers: request parsing and checks (auth, content type, size, idempotency,
//! shedding), the calls into the service, and the JSON answers.

use std::convert::Infallible;
use std::time::{Duration, Instant};

use axum::body::{to_bytes, Body};
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::stream::{self, Stream, StreamExt};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::auth::{authorize, Role};
use super::error::ApiError;
use super::AppState;
use crate::contract::{validate_json, IssueCode};
use crate::injection::service::{AcceptMeta, ServiceError};
use crate::store::{InjectionRow, Source, WriteBatch};

const IDEMPOTENCY_KEY_MAX: usize = 255;

fn parse_id(raw: &str, what: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(raw).map_err(|_| ApiError::not_found(format!("no {what} {raw:?}: ids are UUIDs")))
}

fn opt_time(ms: Option<i64>) -> Value {
    ms.and_then(chrono::DateTime::from_timestamp_millis)
        .map(|t| Value::String(t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)))
        .unwrap_or(Value::Null)
}

fn row_json(r: &InjectionRow) -> Value {
    json!({
        "injectionId": r.id,
        "status": r.status.as_str(),
        "conversationId": r.conversation_id,
        "promptId": r.prompt_id,
        "priority": r.priority.as_str(),
        "source": r.source.as_str(),
        "ruleId": r.rule_id,
        "prompt": r.content.to_json(),
        "createdAt": opt_time(Some(r.created_at)),
        "admittedAt": opt_time(r.admitted_at),
        "showAt": opt_time(r.show_at),
        "expiresAt": opt_time(r.expires_at),
        "queueDeadline": opt_time(r.queue_deadline),
        "updatedAt": opt_time(Some(r.updated_at)),
        "lastError": r.last_error,
        "payload": r.payload.to_json(),
    })
}

/// `POST /v1/prompt-injections` (and the tutorial's path).
pub async fn create(State(st): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    match create_inner(st, headers, body).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn create_inner(st: AppState, headers: HeaderMap, body: Body) -> Result<Response, ApiError> {
    let received_at = Instant::now();
    let key = authorize(&st.inner.keys, &headers, Role::Injector)?.clone();
    if st.is_shutting_down() {
        return Err(ServiceError::ShuttingDown.into());
    }
    let ct = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let mime = ct.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    if mime != "application/json" && !(mime.starts_with("application/") && mime.ends_with("+json")) {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!("send the payload as JSON with `Content-Type: application/json` (got {:?})", ct),
        ));
    }
    let idem = match headers.get("idempotency-key") {
        None => None,
        Some(v) => {
            let k = v.to_str().ok().map(str::trim).filter(|k| !k.is_empty() && k.len() <= IDEMPOTENCY_KEY_MAX);
            let k = k.ok_or_else(|| {
                ApiError::bad_request(
                    "invalid_idempotency_key",
                    "Idempotency-Key must be 1-255 visible ASCII characters",
                )
            })?;
            Some(k.to_string())
        }
    };
    if st.inner.service.writes_in_flight() >= st.inner.shed_queue_depth {
        return Err(ApiError {
            retry_after_ms: Some(1000),
            ..ApiError::new(StatusCode::TOO_MANY_REQUESTS, "overloaded", "the service is shedding load; retry shortly")
        });
    }
    let limit = st.inner.max_body_bytes;
    let bytes = to_bytes(body, limit).await.map_err(|_| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("the body is over {limit} bytes (or could not be read); send a smaller payload"),
        )
    })?;
    if std::str::from_utf8(&bytes).is_err() {
        return Err(ApiError::bad_request("invalid_encoding", "the body is not UTF-8 text; send UTF-8 JSON"));
    }
    // Only an idempotent request stores or compares its hash: skip the work otherwise.
    let request_hash = if idem.is_some() { hex::encode(Sha256::digest(&bytes)) } else { String::new() };
    if let Some(k) = &idem {
        if let Some(replay) = replay(&st, &key.id, k, &request_hash).await? {
            return Ok(replay);
        }
    }
    let payload = validate_json(&bytes).map_err(|issues| {
        if issues.len() == 1 && issues.iter().any(|i| i.code == IssueCode::InvalidJson) {
            let msg = issues.iter().next().map(|i| i.message.clone()).unwrap_or_default();
            ApiError::bad_request("invalid_json", msg)
        } else {
            ApiError::issues(issues)
        }
    })?;
    let meta = AcceptMeta {
        source: Source::Api,
        api_key_id: Some(key.id.clone()),
        idempotency_key: idem.clone(),
        request_hash: request_hash.clone(),
        received_at,
    };
    match st.inner.service.accept(payload, meta).await {
        Ok(a) => Ok((
            StatusCode::CREATED,
            [(header::CONTENT_TYPE, header::HeaderValue::from_static("application/json"))],
            a.to_body(),
        )
            .into_response()),
        Err(ServiceError::IdempotencyRace(k)) => match replay(&st, &key.id, &k, &request_hash).await? {
            Some(r) => Ok(r),
            None => Err(ServiceError::IdempotencyRace(k).into()),
        },
        Err(e) => Err(e.into()),
    }
}

/// The stored answer for this key, if any; a different body under the same key is refused.
async fn replay(st: &AppState, key_id: &str, key: &str, hash: &str) -> Result<Option<Response>, ApiError> {
    let svc = &st.inner.service;
    let found = svc.store().idempotency_get(key_id, key, svc.now_ms()).await.map_err(ServiceError::from)?;
    let Some(row) = found else { return Ok(None) };
    if row.request_hash != hash {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "idempotency_key_reused",
            "this Idempotency-Key was used within 24 h for a different body; use a new key for a new request",
        ));
    }
    let status = StatusCode::from_u16(row.status_code).unwrap_or(StatusCode::OK);
    let mut r = (status, row.response_body).into_response();
    r.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static("application/json"));
    r.headers_mut().insert("idempotent-replayed", header::HeaderValue::from_static("true"));
    Ok(Some(r))
}

/// `GET /v1/prompt-injections/{id}`: the row and its timeline.
pub async fn get_injection(State(st): State<AppState>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    let r = async {
        authorize(&st.inner.keys, &headers, Role::Injector)?;
        let id = parse_id(&id, "injection")?;
        let found = st.inner.service.store().get_injection(id).await.map_err(ServiceError::from)?;
        let it = found.ok_or_else(|| ApiError::not_found(format!("injection {id} does not exist")))?;
        let mut v = row_json(&it.row);
        v["timeline"] = serde_json::to_value(&it.timeline).unwrap_or(Value::Null);
        Ok::<_, ApiError>(Json(v).into_response())
    };
    r.await.unwrap_or_else(IntoResponse::into_response)
}

/// `DELETE /v1/prompt-injections/{id}`: cancel or withdraw.
pub async fn cancel(State(st): State<AppState>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    let r = async {
        let key = authorize(&st.inner.keys, &headers, Role::Injector)?;
        let id = parse_id(&id, "injection")?;
        let status = st.inner.service.cancel(id, &key.id).await?;
        Ok::<_, ApiError>(Json(json!({ "injectionId": id, "status": status.as_str() })).into_response())
    };
    r.await.unwrap_or_else(IntoResponse::into_response)
}

/// `POST /v1/prompt-injections/{id}/fire` (admin): an armed prompt's conditions held.
pub async fn fire(State(st): State<AppState>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    let r = async {
        let key = authorize(&st.inner.keys, &headers, Role::Admin)?;
        let id = parse_id(&id, "injection")?;
        let status = st.inner.service.fire(id, &key.id).await?;
        Ok::<_, ApiError>(Json(json!({ "injectionId": id, "status": status.as_str() })).into_response())
    };
    r.await.unwrap_or_else(IntoResponse::into_response)
}

/// `GET /v1/conversations/{id}/prompts`: active, queued and armed prompts.
pub async fn conversation_prompts(State(st): State<AppState>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    let r = async {
        authorize(&st.inner.keys, &headers, Role::Injector)?;
        let id = parse_id(&id, "conversation")?;
        let svc = &st.inner.service;
        let rows = svc.store().conversation_prompts(id, svc.now_ms()).await.map_err(ServiceError::from)?;
        let prompts: Vec<Value> = rows.iter().map(row_json).collect();
        Ok::<_, ApiError>(Json(json!({ "conversationId": id, "prompts": prompts })).into_response())
    };
    r.await.unwrap_or_else(IntoResponse::into_response)
}

/// `GET /v1/conversations/{id}/stream`: the panel channel as server-sent events, resuming
/// after `Last-Event-ID`.
pub async fn stream(State(st): State<AppState>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    let r = async {
        authorize(&st.inner.keys, &headers, Role::Injector)?;
        let id = parse_id(&id, "conversation")?;
        let last =
            headers.get("last-event-id").and_then(|v| v.to_str().ok()).and_then(|s| s.trim().parse::<u64>().ok());
        let sub = st.inner.service.panel().subscribe(id, last);
        let stop = st.inner.stop.subscribe();
        let events = sse_events(sub, stop, None);
        Ok::<_, ApiError>(
            Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))).into_response(),
        )
    };
    r.await.unwrap_or_else(IntoResponse::into_response)
}

fn to_event(e: crate::injection::panel::PanelEvent) -> Event {
    Event::default().id(e.id.to_string()).event(e.kind).data(&*e.data)
}

/// A panel subscription as SSE events: its backlog, then live events until the server
/// drains, the subscriber falls behind the ring (the client reconnects with `Last-Event-ID`
/// and catches up from the ring), or `until` passes (a panel session's end).
pub(crate) fn sse_events(
    sub: crate::injection::panel::Subscription,
    stop: tokio::sync::watch::Receiver<bool>,
    until: Option<tokio::time::Instant>,
) -> impl Stream<Item = Result<Event, Infallible>> {
    let backlog = stream::iter(sub.backlog.into_iter().map(|e| Ok(to_event(e))));
    let live = stream::unfold((sub.live, stop), move |(mut rx, mut stop)| async move {
        if *stop.borrow() {
            return None;
        }
        let end = async {
            match until {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(end);
        loop {
            tokio::select! {
                r = rx.recv() => match r {
                    Ok(e) => return Some((Ok(to_event(e)), (rx, stop))),
                    Err(_) => return None,
                },
                changed = stop.changed() => {
                    if changed.is_err() || *stop.borrow() {
                        return None;
                    }
                }
                _ = &mut end => return None,
            }
        }
    });
    backlog.chain(live)
}

/// `GET /healthz`: the process is up.
pub async fn healthz() -> Response {
    Json(json!({ "status": "ok" })).into_response()
}

/// `GET /readyz`: the store takes writes and the server is not shutting down.
pub async fn readyz(State(st): State<AppState>) -> Response {
    if st.is_shutting_down() {
        return ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "shutting_down", "the server is shutting down")
            .into_response();
    }
    match st.inner.service.store().write(WriteBatch::new()).await {
        Ok(_) => Json(json!({ "status": "ready" })).into_response(),
        Err(e) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_unavailable",
            format!("the store is not writable: {e}"),
        )
        .into_response(),
    }
}

/// `GET /openapi.json`.
pub async fn openapi() -> Response {
    Json(super::openapi::document()).into_response()
}

pub async fn not_found() -> Response {
    ApiError::not_found("no such route; see /openapi.json for the API").into_response()
}

pub async fn method_not_allowed() -> Response {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this route does not take that method; see /openapi.json",
    )
    .into_response()
}
