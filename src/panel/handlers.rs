//! The panel's HTTP routes: the page and its assets, the page's settings, the sign-in
//! exchange, the session-scoped prompt stream, and engagement intake.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::stream::{self, Stream, StreamExt};
use serde::Deserialize;
use serde_json::json;
use uuid::Uuid;

use super::{assets, PanelError, Scope};
use crate::injection::panel::Subscription;
use crate::injection::service::{Engagement, ServiceError};
use crate::server::{ApiError, AppState};

/// The panel's routes (listed in [`crate::server::openapi::ROUTES`]).
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/panel", get(page))
        .route("/panel/assets/panel.js", get(|| async { assets::script() }))
        .route("/panel/assets/panel.css", get(|| async { assets::styles() }))
        .route("/panel/config", get(config))
        .route("/panel/session", post(sign_in))
        .route("/panel/conversations/{id}/stream", get(stream))
        .route("/panel/injections/{id}/engagements", post(engagement))
}

impl From<PanelError> for ApiError {
    fn from(e: PanelError) -> ApiError {
        let message = e.to_string();
        match e {
            PanelError::SignInOff => ApiError::new(StatusCode::FORBIDDEN, "sign_in_off", message),
            PanelError::Unauthorized(_) | PanelError::Session(_) => {
                ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
            }
            PanelError::Forbidden(_) => ApiError::new(StatusCode::FORBIDDEN, "forbidden", message),
            PanelError::RegionMismatch(_) => ApiError::bad_request("region_mismatch", message),
            PanelError::Upstream(_) => {
                tracing::warn!(error = %message, "panel sign-in could not reach Genesys Cloud");
                ApiError {
                    retry_after_ms: Some(2000),
                    ..ApiError::new(StatusCode::BAD_GATEWAY, "genesys_unavailable", message)
                }
            }
        }
    }
}

/// The bearer credential of a request, or 401 saying what to send.
fn bearer(headers: &HeaderMap, what: &str) -> Result<String, ApiError> {
    let value = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).unwrap_or("");
    let token = value
        .split_once(' ')
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim())
        .filter(|t| !t.is_empty());
    token.map(str::to_string).ok_or_else(|| {
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", format!("send `Authorization: Bearer <{what}>`"))
    })
}

fn parse_id(raw: &str, what: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(raw).map_err(|_| ApiError::not_found(format!("no {what} {raw:?}: ids are UUIDs")))
}

/// The session presented by this request.
fn session(st: &AppState, headers: &HeaderMap) -> Result<Scope, ApiError> {
    let token = bearer(headers, "panel session")?;
    Ok(st.panel().session(&token, st.service().now_ms())?)
}

fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms).unwrap_or_default().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// `GET /panel`: the page, with a Content-Security-Policy that allows only its own script,
/// styles and API (prompt text is rendered as text, never as HTML).
async fn page(State(st): State<AppState>) -> Response {
    let mut r = assets::page();
    let ancestors = st.panel().frame_ancestors();
    let csp = format!(
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; \
         base-uri 'none'; form-action 'none'; frame-ancestors {ancestors}"
    );
    if let Ok(v) = HeaderValue::from_str(&csp) {
        r.headers_mut().insert(header::CONTENT_SECURITY_POLICY, v);
    }
    r.headers_mut().insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    r
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ConfigQuery {
    gc_host_origin: Option<String>,
}

/// `GET /panel/config?gcHostOrigin=...`: what the page needs to sign the agent in.
async fn config(State(st): State<AppState>, Query(q): Query<ConfigQuery>) -> Response {
    let origin = q.gc_host_origin.as_deref();
    match st.panel().page_config(origin) {
        Ok(v) => Json(v).into_response(),
        Err(e) => ApiError::from(e).into_response(),
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SignInBody {
    conversation_id: String,
}

/// `POST /panel/session` with `Authorization: Bearer <agent's Genesys token>` and
/// `{"conversationId": ...}`: a session for that agent on that conversation.
async fn sign_in(State(st): State<AppState>, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    let r = async {
        let token = bearer(&headers, "the agent's Genesys access token")?;
        let b: SignInBody = serde_json::from_slice(&body).map_err(|e| {
            ApiError::bad_request("invalid_json", format!("send {{\"conversationId\": \"<uuid>\"}} ({e})"))
        })?;
        let conv = Uuid::parse_str(b.conversation_id.trim()).map_err(|_| {
            ApiError::bad_request("invalid_conversation_id", "conversationId must be the conversation's UUID")
        })?;
        let now = st.service().now_ms();
        // The OS generator: session tokens are credentials (and it is Send across the await).
        let signed = st.panel().sign_in(&token, conv, now, &mut rand::rngs::OsRng).await?;
        // From now on the conversation's engagement rows (its next `shown` too) name the agent.
        st.service().note_agent(conv, &signed.scope.user_id);
        let secs = (signed.expires_at_ms - now).max(0) / 1000;
        Ok::<_, ApiError>(
            (
                StatusCode::CREATED,
                [(header::CACHE_CONTROL, "no-store")],
                Json(json!({
                    "session": signed.token,
                    "expiresAt": rfc3339(signed.expires_at_ms),
                    "expiresInSecs": secs,
                    "userId": signed.scope.user_id,
                    "userName": signed.scope.user_name,
                    "conversationId": signed.scope.conversation_id,
                })),
            )
                .into_response(),
        )
    };
    r.await.unwrap_or_else(IntoResponse::into_response)
}

/// `GET /panel/conversations/{id}/stream`: the session's conversation as server-sent events,
/// resuming after `Last-Event-ID`. The stream ends when the session does (the page renews
/// and reconnects) and when the server drains.
async fn stream(State(st): State<AppState>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    let r = async {
        let scope = session(&st, &headers)?;
        let id = parse_id(&id, "conversation")?;
        if id != scope.conversation_id {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "this panel session is for another conversation; sign in on this one",
            ));
        }
        let last =
            headers.get("last-event-id").and_then(|v| v.to_str().ok()).and_then(|s| s.trim().parse::<u64>().ok());
        let sub = st.service().panel().subscribe(id, last);
        let token = bearer(&headers, "panel session")?;
        let left = st.panel().session_left_ms(&token, st.service().now_ms());
        let events = sse_events(sub, st.stop_signal(), Duration::from_millis(left));
        let mut r = Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))).into_response();
        // Proxies must not buffer the stream.
        r.headers_mut().insert("x-accel-buffering", HeaderValue::from_static("no"));
        Ok::<_, ApiError>(r)
    };
    r.await.unwrap_or_else(IntoResponse::into_response)
}

/// The page learns the server's clock from a first `hello` event, to draw countdowns that
/// agree with the service's expiry even when the agent's clock is off; then the shared
/// panel stream, ending with the session.
fn sse_events(
    sub: Subscription,
    stop: tokio::sync::watch::Receiver<bool>,
    session_left: Duration,
) -> impl Stream<Item = Result<Event, Infallible>> {
    let hello = Event::default()
        .event("hello")
        .data(json!({ "serverTime": rfc3339(chrono::Utc::now().timestamp_millis()) }).to_string());
    let end = tokio::time::Instant::now() + session_left;
    stream::once(async move { Ok(hello) }).chain(crate::server::handlers::sse_events(sub, stop, Some(end)))
}

#[derive(Deserialize)]
struct EngagementBody {
    #[serde(rename = "type")]
    kind: String,
    rating: Option<i64>,
}

/// `POST /panel/injections/{id}/engagements` with `{"type": "viewed" | "clicked" |
/// "dismissed" | "feedback", "rating"?: 1 | -1}`.
async fn engagement(
    State(st): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let r = async {
        let scope = session(&st, &headers)?;
        let id = parse_id(&id, "injection")?;
        let b: EngagementBody = serde_json::from_slice(&body).map_err(|e| {
            ApiError::bad_request(
                "invalid_json",
                format!(
                    "send {{\"type\": \"viewed\"|\"clicked\"|\"dismissed\"|\"feedback\", \"rating\"?: 1|-1}} ({e})"
                ),
            )
        })?;
        let svc = st.service();
        let found = svc.store().get_injection(id).await.map_err(ServiceError::from)?;
        let row = found.ok_or_else(|| ApiError::not_found(format!("injection {id} does not exist")))?.row;
        if row.conversation_id != scope.conversation_id {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "this injection belongs to another conversation than the panel session's",
            ));
        }
        let actor = format!("agent:{}", scope.user_id);
        let agent = Some(scope.user_id.as_str());
        let mut answer = json!({ "injectionId": id, "type": b.kind });
        match b.kind.as_str() {
            "clicked" | "dismissed" => {
                let kind = if b.kind == "clicked" { Engagement::Clicked } else { Engagement::Dismissed };
                let status = svc.engage(id, kind, &actor, agent).await?;
                answer["status"] = json!(status.as_str());
            }
            "viewed" => {
                let now = svc.now_ms();
                if st.panel().first_view(id, now) {
                    if let Err(e) = svc.record_viewed(id, &actor, agent).await {
                        st.panel().unview(id);
                        return Err(e.into());
                    }
                } else {
                    answer["duplicate"] = json!(true);
                }
            }
            "feedback" => {
                let rating = match b.rating {
                    Some(1) => 1i8,
                    Some(-1) => -1i8,
                    _ => {
                        return Err(ApiError::bad_request(
                            "invalid_rating",
                            "feedback needs \"rating\": 1 (helpful) or -1 (not helpful)",
                        ))
                    }
                };
                svc.record_feedback(id, rating, &actor, agent).await?;
                answer["rating"] = json!(rating);
            }
            other => {
                return Err(ApiError::bad_request(
                    "invalid_engagement",
                    format!("type {other:?} is not one of viewed, clicked, dismissed, feedback (shown is recorded by the service)"),
                ))
            }
        }
        Ok::<_, ApiError>(Json(answer).into_response())
    };
    r.await.unwrap_or_else(IntoResponse::into_response)
}
