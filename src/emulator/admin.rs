//! Admin endpoints for people and scripts (not part of Genesys): `/__emulator/...`,
//! without auth and answered to loopback clients only (the gateway enforces that).
//!
//! They mirror the Rust handle, so a shell script or another language's test suite can
//! create conversations, mint agent tokens, arm faults and read counters.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{Path, State as AxState};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use super::auth::Principal;
use super::error::ApiError;
use super::faults::{self, FaultSpec, Faults};
use super::replay::{self, ReplayRequest};
use super::state::{lock, State};
use super::{conversations, NewConversation};

pub fn routes() -> Router<Arc<State>> {
    Router::new()
        .route("/__emulator/conversations", post(create_conversation))
        .route("/__emulator/conversations/{id}/end", post(end_conversation))
        .route("/__emulator/agent-tokens", post(agent_token))
        .route("/__emulator/faults", post(set_faults).get(get_faults))
        .route("/__emulator/stats", get(stats))
        .route("/__emulator/calls", get(calls))
        .route("/__emulator/replay", post(start_replay).get(replay_status).delete(stop_replays))
}

/// Parse an optional JSON body (an empty body means "all defaults").
fn optional_json<T: for<'de> Deserialize<'de> + Default>(body: &Bytes) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("The request body could not be parsed: {e}")))
}

async fn create_conversation(AxState(state): AxState<Arc<State>>, body: Bytes) -> Result<Json<Value>, ApiError> {
    let spec: NewConversation = optional_json(&body)?;
    let info = conversations::create(&state, &spec);
    Ok(Json(serde_json::to_value(info).unwrap_or(Value::Null)))
}

async fn end_conversation(
    AxState(state): AxState<Arc<State>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    if lock(&state.conversations).get(&id).is_none() {
        return Err(ApiError::not_found(format!("Conversation {id} was not found.")));
    }
    let ended = conversations::end(&state, &id);
    Ok(Json(json!({"conversationId": id, "ended": ended})))
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct AgentTokenRequest {
    user_id: String,
}

async fn agent_token(AxState(state): AxState<Arc<State>>, body: Bytes) -> Result<Json<Value>, ApiError> {
    let req: AgentTokenRequest = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("The body must be {{\"userId\": \"...\"}}: {e}")))?;
    if req.user_id.trim().is_empty() {
        return Err(ApiError::bad_request("userId must not be empty"));
    }
    let ttl = state.token_ttl;
    let token = lock(&state.tokens).issue(Principal::User(req.user_id), ttl, Instant::now());
    Ok(Json(json!({"access_token": token, "token_type": "bearer", "expires_in": ttl.as_secs()})))
}

async fn set_faults(AxState(state): AxState<Arc<State>>, body: Bytes) -> Result<Json<Value>, ApiError> {
    let spec: FaultSpec = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request(format!(
            "The body must describe faults, e.g. {{\"failNext\":{{\"count\":2,\"status\":503}}}} or {{\"clear\":true}}: {e}"
        ))
    })?;
    spec.validate().map_err(ApiError::bad_request)?;
    spec.apply(&Faults { state: state.clone() });
    Ok(Json(faults::describe(&state)))
}

async fn get_faults(AxState(state): AxState<Arc<State>>) -> Json<Value> {
    Json(faults::describe(&state))
}

async fn stats(AxState(state): AxState<Arc<State>>) -> Json<Value> {
    Json(serde_json::to_value(state.stats()).unwrap_or(Value::Null))
}

async fn calls(AxState(state): AxState<Arc<State>>) -> Json<Value> {
    let infos = lock(&state.conversations).infos();
    Json(serde_json::to_value(infos).unwrap_or(Value::Null))
}

/// `POST /__emulator/replay {callsDir?, conversationIds?, speed?, loop?, copies?}`.
async fn start_replay(AxState(state): AxState<Arc<State>>, body: Bytes) -> Result<Json<Value>, ApiError> {
    let req: ReplayRequest = optional_json(&body).map_err(|e| {
        ApiError::bad_request(format!(
            "{} Example: {{\"speed\": 20, \"conversationIds\": [\"...\"], \"loop\": false, \"copies\": 1}}",
            e.message
        ))
    })?;
    let spec = req.into_spec().map_err(ApiError::bad_request)?;
    let started = replay::start(&state, spec).map_err(|e| ApiError::bad_request(e.to_string()))?;
    Ok(Json(serde_json::to_value(started).unwrap_or(Value::Null)))
}

async fn replay_status(AxState(state): AxState<Arc<State>>) -> Json<Value> {
    Json(json!({"replays": replay::status(&state)}))
}

async fn stop_replays(AxState(state): AxState<Arc<State>>) -> Json<Value> {
    Json(json!({"stopped": replay::stop_all(&state)}))
}
