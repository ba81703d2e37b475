//! Conversations: the live state of each call, the REST `Conversation` built from it
//! (genesys-api.md §4.1), the participant-attribute PATCH (§4.2), and conversations
//! created or ended on demand.
//!
//! The state of a conversation is the latest queue-conversation *topic* snapshot (§6.1),
//! exactly what recorded calls contain and what subscribers receive; the REST shape is
//! derived from it on each GET. Patched attributes live in an overlay so a later
//! snapshot (replay) never loses them.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use axum::extract::{Path, State as AxState};
use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, Utc};
use serde_json::{json, Map, Value};

use super::calls::{Catalog, RecordedCall, DEFAULT_QUEUE_ID, DEFAULT_QUEUE_NAME};
use super::error::ApiError;
use super::gateway::JsonBody;
use super::notifications;
use super::state::iso;
use super::state::{lock, State};
use super::{CallInfo, NewConversation};

/// One conversation the emulator knows.
#[derive(Debug, Clone)]
pub struct ConversationState {
    pub info: CallInfo,
    /// The current queue-conversation topic snapshot (`eventBody`).
    pub snapshot: Value,
    /// Participant id → attributes patched through the API.
    pub patched: HashMap<String, BTreeMap<String, String>>,
    pub ended: bool,
    /// The recording this conversation came from, for replay.
    pub recorded: Option<Arc<RecordedCall>>,
}

/// Every conversation, in load/creation order.
#[derive(Debug, Default)]
pub struct Conversations {
    order: Vec<String>,
    by_id: HashMap<String, ConversationState>,
}

impl Conversations {
    pub fn from_recorded(calls: Vec<RecordedCall>) -> Conversations {
        let mut c = Conversations::default();
        for call in calls {
            let call = Arc::new(call);
            c.insert(ConversationState {
                info: call.info.clone(),
                snapshot: call.connected_snapshot.clone(),
                patched: HashMap::new(),
                ended: false,
                recorded: Some(call),
            });
        }
        c
    }

    pub fn insert(&mut self, conv: ConversationState) {
        let id = conv.info.conversation_id.clone();
        if self.by_id.insert(id.clone(), conv).is_none() {
            self.order.push(id);
        }
    }

    pub fn get(&self, id: &str) -> Option<&ConversationState> {
        self.by_id.get(id)
    }

    pub fn get_mut(&mut self, id: &str) -> Option<&mut ConversationState> {
        self.by_id.get_mut(id)
    }

    pub fn infos(&self) -> Vec<CallInfo> {
        self.order.iter().filter_map(|id| self.by_id.get(id)).map(|c| c.info.clone()).collect()
    }

    pub fn ids(&self) -> Vec<String> {
        self.order.clone()
    }
}

fn now_iso() -> String {
    iso(Utc::now())
}

fn parse_time(v: Option<&Value>) -> Option<DateTime<Utc>> {
    v.and_then(Value::as_str).and_then(|s| DateTime::parse_from_rfc3339(s).ok()).map(|t| t.with_timezone(&Utc))
}

impl ConversationState {
    /// A participant's attributes: the snapshot's, then the patched ones on top.
    pub fn attributes(&self, participant_id: &str) -> Option<BTreeMap<String, String>> {
        let p = participants(&self.snapshot)
            .iter()
            .find(|p| p.get("id").and_then(Value::as_str) == Some(participant_id))?;
        let mut attrs: BTreeMap<String, String> = p
            .get("attributes")
            .and_then(Value::as_object)
            .map(|m| m.iter().filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_string()))).collect())
            .unwrap_or_default();
        if let Some(patch) = self.patched.get(participant_id) {
            attrs.extend(patch.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        Some(attrs)
    }

    /// The topic snapshot with patched attributes applied (what subscribers would see).
    pub fn topic_body(&self) -> Value {
        let mut body = self.snapshot.clone();
        if let Some(ps) = body.get_mut("participants").and_then(Value::as_array_mut) {
            for p in ps {
                let Some(id) = p.get("id").and_then(Value::as_str).map(str::to_string) else { continue };
                if let (Some(attrs), Some(obj)) = (self.attributes(&id), p.as_object_mut()) {
                    obj.insert("attributes".into(), json!(attrs));
                }
            }
        }
        body
    }

    /// The REST `Conversation` (§4.1) derived from the topic snapshot.
    pub fn rest(&self, catalog: &Catalog) -> Value {
        let body = &self.snapshot;
        let id = body.get("id").and_then(Value::as_str).unwrap_or(&self.info.conversation_id).to_string();
        let ps = participants(body);
        let mut out = Map::new();
        out.insert("id".into(), json!(id));
        let start = ps.iter().filter_map(|p| parse_time(p.get("connectedTime"))).min();
        if let Some(t) = start {
            out.insert("startTime".into(), json!(iso(t)));
        }
        let all_ended = !ps.is_empty() && ps.iter().all(|p| p.get("endTime").is_some());
        if all_ended {
            if let Some(t) = ps.iter().filter_map(|p| parse_time(p.get("endTime"))).max() {
                out.insert("endTime".into(), json!(iso(t)));
            }
        }
        let address = body.get("address").cloned().or_else(|| {
            ps.iter()
                .find(|p| p.get("purpose").and_then(Value::as_str) == Some("agent"))
                .and_then(|p| p.get("address").cloned())
        });
        if let Some(a) = address {
            out.insert("address".into(), a);
        }
        let rest_participants: Vec<Value> = ps.iter().map(|p| self.rest_participant(p, catalog)).collect();
        out.insert("participants".into(), Value::Array(rest_participants));
        for key in [
            "name",
            "externalTag",
            "conversationIds",
            "maxParticipants",
            "recentTransfers",
            "securePause",
            "utilizationLabelId",
            "inactivityTimeout",
        ] {
            if let Some(v) = body.get(key) {
                out.insert(key.into(), v.clone());
            }
        }
        if let Some(rs) = body.get("recordingState").and_then(Value::as_str) {
            out.insert("recordingState".into(), json!(rs.to_ascii_uppercase()));
        }
        if let Some(divs) = body.get("divisions").and_then(Value::as_array) {
            let divs: Vec<Value> = divs
                .iter()
                .map(|d| {
                    let mut d = d.clone();
                    if let Some(div) = d.get_mut("division").and_then(Value::as_object_mut) {
                        if let Some(did) = div.get("id").and_then(Value::as_str).map(str::to_string) {
                            div.insert("selfUri".into(), json!(format!("/api/v2/authorization/divisions/{did}")));
                        }
                    }
                    d
                })
                .collect();
            out.insert("divisions".into(), Value::Array(divs));
        }
        out.insert("selfUri".into(), json!(format!("/api/v2/conversations/{id}")));
        Value::Object(out)
    }

    fn rest_participant(&self, p: &Value, catalog: &Catalog) -> Value {
        let Some(src) = p.as_object() else { return p.clone() };
        let pid = src.get("id").and_then(Value::as_str).unwrap_or_default().to_string();
        let mut out = Map::new();
        if let Some(id) = src.get("id") {
            out.insert("id".into(), id.clone());
        }
        // REST participants have a startTime; the topic has only connectedTime.
        if let Some(t) = src.get("connectedTime") {
            out.insert("startTime".into(), t.clone());
        }
        for (k, v) in src {
            match k.as_str() {
                "id" | "wrapupExpected" | "screenMonitoredParticipantId" => {}
                "attributes" => {}
                "calls" => {
                    let calls = v.as_array().map(|cs| cs.iter().map(rest_call).collect::<Vec<_>>()).unwrap_or_default();
                    out.insert("calls".into(), Value::Array(calls));
                }
                "queueId" => {
                    out.insert(k.clone(), v.clone());
                    if let Some(name) = v.as_str().and_then(|q| catalog.queue_name(q)) {
                        out.insert("queueName".into(), json!(name));
                    }
                }
                _ => {
                    out.insert(k.clone(), v.clone());
                }
            }
        }
        out.insert("attributes".into(), json!(self.attributes(&pid).unwrap_or_default()));
        Value::Object(out)
    }
}

/// A topic call → a REST call: drop topic-only fields, use the REST enum spellings.
fn rest_call(c: &Value) -> Value {
    let Some(src) = c.as_object() else { return c.clone() };
    let mut out = Map::new();
    for (k, v) in src {
        match k.as_str() {
            "recordersState" | "errorInfo" | "faxStatus" | "bargedTime" | "queueMediaSettings" | "disposition" => {}
            "disconnectType" => {
                let mapped = match v.as_str() {
                    Some("endpoint.dnd") => json!("endpoint.donotdisturb"),
                    Some("transfer.dnd") => json!("transfer.donotdisturb"),
                    _ => v.clone(),
                };
                out.insert(k.clone(), mapped);
            }
            _ => {
                out.insert(k.clone(), v.clone());
            }
        }
    }
    Value::Object(out)
}

fn participants(body: &Value) -> &[Value] {
    body.get("participants").and_then(Value::as_array).map(Vec::as_slice).unwrap_or(&[])
}

fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// Build a live conversation: a customer, the ACD leg that routed it, and a connected agent.
pub fn build_live(spec: &NewConversation, catalog: &Catalog) -> ConversationState {
    let conversation_id = spec.conversation_id.clone().unwrap_or_else(new_id);
    let queue_id = spec.queue_id.clone().unwrap_or_else(|| {
        catalog
            .queues
            .iter()
            .find(|q| q.name == DEFAULT_QUEUE_NAME)
            .map_or(DEFAULT_QUEUE_ID.to_string(), |q| q.id.clone())
    });
    let queue_name = catalog
        .queue_name(&queue_id)
        .unwrap_or(if spec.queue_id.is_none() { DEFAULT_QUEUE_NAME } else { "Queue" })
        .to_string();
    let agent_user_id = spec.agent_user_id.clone().unwrap_or_else(new_id);
    let agent_name = spec
        .agent_name
        .clone()
        .or_else(|| catalog.agent_name(&agent_user_id).map(str::to_string))
        .unwrap_or_else(|| "Emulated Agent".to_string());
    let (customer_pid, acd_pid, agent_pid) = (new_id(), new_id(), new_id());
    let agent_comm = new_id();
    let now = Utc::now();
    let customer_at = iso(now - chrono::Duration::seconds(45));
    let queued_at = iso(now - chrono::Duration::seconds(20));
    let agent_at = iso(now);
    let ani = format!("tel:+1555{:07}", rand::random::<u32>() % 10_000_000);
    let dnis = "tel:+18005550100";
    let snapshot = json!({
        "id": conversation_id,
        "participants": [
            {"id": customer_pid, "purpose": "customer", "name": "Customer", "address": ani, "connectedTime": customer_at,
             "attributes": {},
             "calls": [{"id": new_id(), "state": "connected", "initialState": "offering", "direction": "inbound",
                        "recording": true, "recordingState": "active", "muted": false, "confined": false, "held": false,
                        "connectedTime": customer_at, "provider": "Edge"}]},
            {"id": acd_pid, "purpose": "acd", "name": queue_name, "queueId": queue_id, "address": dnis,
             "connectedTime": queued_at, "endTime": agent_at, "attributes": {},
             "conversationRoutingData": {"queue": {"id": queue_id, "name": queue_name}, "priority": 0},
             "calls": [{"id": new_id(), "state": "disconnected", "initialState": "offering", "direction": "inbound",
                        "disconnectType": "transfer", "connectedTime": queued_at, "disconnectedTime": agent_at, "provider": "Edge"}]},
            {"id": agent_pid, "purpose": "agent", "userId": agent_user_id, "name": agent_name, "queueId": queue_id,
             "address": dnis, "connectedTime": agent_at, "wrapupRequired": true, "wrapupPrompt": "mandatory", "attributes": {},
             "calls": [{"id": agent_comm, "state": "connected", "initialState": "alerting", "direction": "inbound",
                        "recording": true, "recordingState": "active", "muted": false, "confined": false, "held": false,
                        "connectedTime": agent_at, "provider": "Edge", "agentAssistantId": catalog.assistant_id}]}
        ],
        "recordingState": "active",
        "divisions": [{"division": {"id": catalog.division_id}, "entities": [{"id": queue_id}]}]
    });
    ConversationState {
        info: CallInfo {
            conversation_id,
            queue_id,
            queue_name,
            agent_user_id,
            agent_name,
            agent_participant_id: agent_pid,
            agent_communication_id: agent_comm,
            customer_participant_id: customer_pid,
            scenario: "live".into(),
        },
        snapshot,
        patched: HashMap::new(),
        ended: false,
        recorded: None,
    }
}

/// The snapshot of a conversation that just ended now: every participant gets an
/// `endTime` and every call is disconnected.
fn ended_snapshot(snapshot: &Value) -> Value {
    let now = now_iso();
    let mut body = snapshot.clone();
    if let Some(ps) = body.get_mut("participants").and_then(Value::as_array_mut) {
        for p in ps {
            let purpose = p.get("purpose").and_then(Value::as_str).unwrap_or_default().to_string();
            let Some(obj) = p.as_object_mut() else { continue };
            obj.entry("endTime").or_insert_with(|| json!(now));
            if let Some(calls) = obj.get_mut("calls").and_then(Value::as_array_mut) {
                for c in calls {
                    let Some(call) = c.as_object_mut() else { continue };
                    if call.get("state").and_then(Value::as_str) != Some("disconnected") {
                        call.insert("state".into(), json!("disconnected"));
                        call.insert("disconnectedTime".into(), json!(now));
                        let how = if purpose == "customer" { "endpoint" } else { "peer" };
                        call.insert("disconnectType".into(), json!(how));
                    }
                }
            }
        }
    }
    body
}

/// Topics a conversation snapshot is published on.
fn snapshot_topics(info: &CallInfo) -> [String; 2] {
    [
        format!("v2.routing.queues.{}.conversations", info.queue_id),
        format!("v2.users.{}.conversations", info.agent_user_id),
    ]
}

/// Create (or replace) a live conversation and announce it to subscribers.
pub fn create(state: &State, spec: &NewConversation) -> CallInfo {
    let conv = build_live(spec, &state.catalog);
    let info = conv.info.clone();
    let body = conv.topic_body();
    lock(&state.conversations).insert(conv);
    for topic in snapshot_topics(&info) {
        notifications::publish(state, &topic, &body);
    }
    info
}

/// End a live conversation: recorded calls take their recorded final snapshot.
pub fn end(state: &State, conversation_id: &str) -> bool {
    let (info, body) = {
        let mut convs = lock(&state.conversations);
        let Some(conv) = convs.get_mut(conversation_id) else { return false };
        if conv.ended {
            return false;
        }
        conv.snapshot = match &conv.recorded {
            Some(rec) => rec.final_snapshot.clone(),
            None => ended_snapshot(&conv.snapshot),
        };
        conv.ended = true;
        (conv.info.clone(), conv.topic_body())
    };
    for topic in snapshot_topics(&info) {
        notifications::publish(state, &topic, &body);
    }
    true
}

/// `GET /api/v2/conversations/{conversationId}`.
pub async fn get_conversation(
    AxState(state): AxState<Arc<State>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let convs = lock(&state.conversations);
    let conv = convs.get(&id).ok_or_else(|| ApiError::not_found(format!("Conversation {id} was not found.")))?;
    Ok(Json(conv.rest(&state.catalog)))
}

/// `PATCH /api/v2/conversations/{conversationId}/participants/{participantId}/attributes`.
pub async fn patch_attributes(
    AxState(state): AxState<Arc<State>>,
    Path((id, pid)): Path<(String, String)>,
    JsonBody(body): JsonBody<Value>,
) -> Result<StatusCode, ApiError> {
    let attrs = parse_attributes(&body)?;
    let merged = {
        let mut convs = lock(&state.conversations);
        let conv =
            convs.get_mut(&id).ok_or_else(|| ApiError::not_found(format!("Conversation {id} was not found.")))?;
        if conv.attributes(&pid).is_none() {
            return Err(ApiError::not_found(format!("Participant {pid} was not found in conversation {id}.")));
        }
        conv.patched.entry(pid.clone()).or_default().extend(attrs);
        conv.attributes(&pid).unwrap_or_default()
    };
    state.count(|s| s.attribute_patches += 1);
    let event = json!({
        "eventTime": Utc::now().timestamp_millis(),
        "conversationId": id,
        "participantId": pid,
        "attributes": merged,
        "conversationExternalContactIds": [],
        "conversationExternalOrganizationIds": [],
        "communications": [],
    });
    notifications::publish(&state, &format!("v2.detail.events.conversation.{id}.attributes"), &event);
    Ok(StatusCode::ACCEPTED)
}

/// `{"attributes": {string: string}}`, or a 400 naming what is wrong.
fn parse_attributes(body: &Value) -> Result<BTreeMap<String, String>, ApiError> {
    let Some(map) = body.get("attributes") else {
        return Err(ApiError::bad_request(
            "The body must be {\"attributes\": {\"key\": \"value\"}}; `attributes` is missing.",
        ));
    };
    let Some(map) = map.as_object() else {
        return Err(ApiError::bad_request("`attributes` must be an object of string values."));
    };
    let mut out = BTreeMap::new();
    for (k, v) in map {
        match v {
            Value::String(s) => {
                out.insert(k.clone(), s.clone());
            }
            other => {
                let kind = match other {
                    Value::Null => "null",
                    Value::Bool(_) => "a boolean",
                    Value::Number(_) => "a number",
                    Value::Array(_) => "an array",
                    _ => "an object",
                };
                return Err(ApiError::bad_request(format!(
                    "Attribute values must be strings; `attributes.{k}` is {kind}."
                )));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_must_be_strings() {
        assert!(parse_attributes(&json!({"attributes": {"a": "1"}})).is_ok());
        for bad in
            [json!({}), json!({"attributes": []}), json!({"attributes": {"a": 1}}), json!({"attributes": {"a": null}})]
        {
            let e = parse_attributes(&bad).unwrap_err();
            assert_eq!((e.status, e.code.as_str()), (400, "bad.request"), "{bad}");
        }
    }

    #[test]
    fn live_conversation_has_a_connected_agent_and_a_rest_shape() {
        let catalog = Catalog::default();
        let conv = build_live(&NewConversation::default(), &catalog);
        assert!(super::super::calls::agent_connected(&conv.snapshot));
        assert_eq!(conv.info.queue_name, "Billing");
        let rest = conv.rest(&catalog);
        assert!(rest.get("startTime").is_some());
        assert!(rest.get("endTime").is_none());
        assert_eq!(rest["recordingState"], "ACTIVE");
        let agent = rest["participants"].as_array().unwrap().iter().find(|p| p["purpose"] == "agent").unwrap();
        assert_eq!(agent["userId"], json!(conv.info.agent_user_id));
        assert_eq!(agent["queueName"], "Billing");
        assert_eq!(agent["calls"][0]["state"], "connected");
        assert!(agent.get("startTime").is_some());
    }

    #[test]
    fn ending_disconnects_every_call() {
        let catalog = Catalog::default();
        let mut conv = build_live(&NewConversation::default(), &catalog);
        conv.snapshot = ended_snapshot(&conv.snapshot);
        let rest = conv.rest(&catalog);
        assert!(rest.get("endTime").is_some());
        for p in rest["participants"].as_array().unwrap() {
            assert_eq!(p["calls"][0]["state"], "disconnected");
        }
    }
}
