//! Wire models of the Genesys Cloud endpoints gc-assist calls (genesys-api.md §2–§8).
//!
//! Every struct is camelCase on the wire and tolerant by construction: unknown fields are
//! ignored, fields are optional or defaulted unless the API marks them required, and values
//! Genesys extends over time (states, purposes, grant types) stay `String` rather than Rust
//! enums, because Genesys adds enum values at any time and an unknown value must not turn a
//! good response into a decode error.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// `{id, name, selfUri}`: the reference shape used for organizations, divisions and users.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct EntityRef {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub self_uri: Option<String>,
}

// ---------------------------------------------------------------------------------------
// Errors (§3.1)

/// `ErrorBody`: the error shape of every REST endpoint except `/oauth/token`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ErrorBody {
    pub message: Option<String>,
    pub code: Option<String>,
    pub status: Option<u16>,
    pub entity_id: Option<String>,
    pub entity_name: Option<String>,
    pub message_with_params: Option<String>,
    pub message_params: BTreeMap<String, String>,
    /// The correlation id (the Go SDK copies `ININ-Correlation-ID` here when it is empty).
    pub context_id: Option<String>,
    pub details: Vec<ErrorDetail>,
    pub errors: Vec<ErrorBody>,
    pub limit: Option<ErrorLimit>,
}

/// One `Detail` of an [`ErrorBody`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ErrorDetail {
    pub error_code: Option<String>,
    pub field_name: Option<String>,
    pub entity_id: Option<String>,
    pub entity_name: Option<String>,
}

/// The `limit` of a rate-limit [`ErrorBody`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ErrorLimit {
    pub key: Option<String>,
    /// `platform.api`, `notifications`, `analytics`, … (kept as text: Genesys adds values).
    pub namespace: Option<String>,
    pub value: Option<i64>,
}

/// The token endpoint's error shape (`AuthErrorResponse`, §2.1).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct AuthErrorBody {
    pub error: Option<String>,
    pub description: Option<String>,
    pub error_description: Option<String>,
}

/// The token endpoint's success shape (`AuthResponse`, §2.1). Deliberately not `Debug`:
/// it holds the access token.
#[derive(Deserialize)]
pub(crate) struct AuthResponse {
    pub access_token: String,
    #[serde(default)]
    pub token_type: Option<String>,
    #[serde(default)]
    pub expires_in: Option<u64>,
}

// ---------------------------------------------------------------------------------------
// Tokens and users (§2.2, §2.3)

/// `GET /api/v2/tokens/me`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct TokenInfo {
    pub organization: Option<EntityRef>,
    pub home_organization: Option<EntityRef>,
    pub authorized_scope: Vec<String>,
    pub cloned_user: Option<serde_json::Value>,
    pub date_token_idles: Option<DateTime<Utc>>,
    /// Genesys spells this key with a capital "OAuth".
    #[serde(rename = "OAuthClient")]
    pub oauth_client: Option<OrgOAuthClient>,
}

/// The OAuth client a token belongs to.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct OrgOAuthClient {
    pub id: Option<String>,
    pub name: Option<String>,
    pub date_created: Option<DateTime<Utc>>,
    pub date_modified: Option<DateTime<Utc>>,
    pub created_by: Option<EntityRef>,
    pub modified_by: Option<EntityRef>,
    /// `CODE`, `TOKEN`, `SAML2-BEARER`, `PASSWORD`, `CLIENT-CREDENTIALS`, …
    pub authorized_grant_type: Option<String>,
    pub scope: Vec<String>,
    pub role_divisions: Vec<RoleDivision>,
    /// `active`, `disabled`, `inactive`, …
    pub state: Option<String>,
    pub date_to_delete: Option<DateTime<Utc>>,
    pub organization: Option<EntityRef>,
}

/// A role granted to an OAuth client in a division.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct RoleDivision {
    pub role_id: Option<String>,
    pub division_id: Option<String>,
}

/// `GET /api/v2/users/me` (with a user token).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct UserMe {
    /// The user id. Empty only if Genesys ever omitted it; callers should treat that as
    /// "unknown user".
    pub id: String,
    pub name: Option<String>,
    pub email: Option<String>,
    pub username: Option<String>,
    /// `active`, `inactive`, `deleted`, …
    pub state: Option<String>,
    pub division: Option<EntityRef>,
    pub title: Option<String>,
    pub department: Option<String>,
    pub version: Option<i64>,
    pub chat: Option<UserChat>,
    pub primary_contact_info: Vec<Contact>,
    pub addresses: Vec<Contact>,
    pub language_preference: Option<String>,
    pub self_uri: Option<String>,
}

/// `User.chat`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct UserChat {
    pub jabber_id: Option<String>,
}

/// A user's address, phone number or e-mail.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Contact {
    pub address: Option<String>,
    pub display: Option<String>,
    /// `PHONE`, `EMAIL`, `SMS`, …
    pub media_type: Option<String>,
    /// `PRIMARY`, `WORK`, …, `OTHER`.
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub extension: Option<String>,
    pub country_code: Option<String>,
}

// ---------------------------------------------------------------------------------------
// Conversations (§4)

/// `GET /api/v2/conversations/{id}`. `startTime` and `participants` are required by the
/// API, so a body without them is a decode error rather than a silently empty conversation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Conversation {
    #[serde(default)]
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_tag: Option<String>,
    pub start_time: DateTime<Utc>,
    /// Absent (or null) while the conversation is live.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_time: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    pub participants: Vec<Participant>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conversation_ids: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_participants: Option<i64>,
    /// `ACTIVE`, `PAUSED`, `NONE`, …
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recording_state: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub divisions: Vec<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub self_uri: Option<String>,
}

impl Conversation {
    /// The agent currently on the call: purpose `agent`, no `endTime`, and a voice
    /// communication in state `connected`. After a transfer several agent participants
    /// exist; the last connected one in the list is the newest, so it wins.
    pub fn connected_agent(&self) -> Option<&Participant> {
        self.participants.iter().rev().find(|p| p.is_connected_agent())
    }

    /// The customer participant, if any.
    pub fn customer(&self) -> Option<&Participant> {
        self.participants.iter().find(|p| p.purpose.as_deref().is_some_and(|s| s.eq_ignore_ascii_case("customer")))
    }
}

/// A participant of a [`Conversation`] (REST model; connection state lives in each
/// communication, there is no participant-level `state`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Participant {
    pub id: String,
    /// `customer`, `agent`, `acd`, `ivr`, … (text: not an enum in this model).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub purpose: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ani: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dnis: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub participant_type: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub external_contact_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start_time: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connected_time: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub end_time: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wrapup_required: Option<bool>,
    /// Participant data (string values only).
    pub attributes: BTreeMap<String, String>,
    pub calls: Vec<Call>,
    /// Other media kept as raw JSON: gc-assist reads only voice calls today.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub callbacks: Vec<serde_json::Value>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub chats: Vec<serde_json::Value>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub emails: Vec<serde_json::Value>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub messages: Vec<serde_json::Value>,
}

impl Participant {
    /// Purpose `agent`, still in the conversation, with a connected voice call.
    pub fn is_connected_agent(&self) -> bool {
        self.purpose.as_deref().is_some_and(|p| p.eq_ignore_ascii_case("agent"))
            && self.end_time.is_none()
            && self.calls.iter().any(|c| c.state.as_deref().is_some_and(|s| s.eq_ignore_ascii_case("connected")))
    }
}

/// A voice communication of a [`Participant`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Call {
    pub id: String,
    /// `alerting`, `connected`, `disconnected`, `terminated`, … (text: Genesys adds values).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub initial_state: Option<String>,
    /// `inbound`, `outbound`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub direction: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recording: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recording_state: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub muted: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub confined: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub held: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connected_time: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disconnected_time: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disconnect_type: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent_assistant_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
}

/// Body of the participant-attributes PATCH.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ParticipantAttributes {
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
}

// ---------------------------------------------------------------------------------------
// Notifications (§5)

/// A notification channel.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Channel {
    pub id: String,
    /// The websocket address. Always use it as given; never build it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connect_uri: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires: Option<DateTime<Utc>>,
}

/// `ChannelEntityListing`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ChannelEntityListing {
    pub entities: Vec<Channel>,
}

/// A subscribed topic. Requests carry only `id`; responses fill the rest.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ChannelTopic {
    pub id: String,
    /// `Permitted`, `Rejected`, …
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rejection_reason: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub missing_permissions: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub self_uri: Option<String>,
}

impl ChannelTopic {
    /// Whether Genesys refused this topic (only reported with `ignoreErrors=true`).
    pub fn is_rejected(&self) -> bool {
        self.state.as_deref().is_some_and(|s| s.eq_ignore_ascii_case("rejected"))
    }
}

/// `ChannelTopicEntityListing`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ChannelTopicEntityListing {
    pub entities: Vec<ChannelTopic>,
}

// ---------------------------------------------------------------------------------------
// Agent Copilot analytics (§8)

/// `AgentCopilotAggregationQuery`. `interval` and `metrics` are required by the API.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CopilotAggregationQuery {
    /// `start/end` in ISO-8601.
    pub interval: String,
    /// ISO-8601 duration (`PT15M`, `P1D`, …); absent means the whole interval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub granularity: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_zone: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub group_by: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<QueryFilter>,
    pub metrics: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flatten_multivalued_dimensions: Option<bool>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub views: Vec<QueryView>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alternate_time_dimension: Option<String>,
    /// `groupBy` (default), `topN`, `bottomN`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sort_metric: Option<SortMetric>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
}

/// `AgentCopilotAsyncAggregationQuery`: the same fields plus `pageSize`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CopilotAsyncAggregationQuery {
    #[serde(flatten)]
    pub query: CopilotAggregationQuery,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub page_size: Option<u32>,
}

/// A query filter: `type` is `and` or `or`; nesting up to two levels.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct QueryFilter {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub clauses: Vec<QueryClause>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub predicates: Vec<QueryPredicate>,
}

/// A clause of a [`QueryFilter`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct QueryClause {
    #[serde(rename = "type")]
    pub kind: String,
    pub predicates: Vec<QueryPredicate>,
}

/// A predicate: `{type?, dimension, operator?, value?, range?}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct QueryPredicate {
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dimension: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operator: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub range: Option<NumericRange>,
}

/// `{gt, gte, lt, lte}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct NumericRange {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gt: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gte: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lt: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lte: Option<f64>,
}

/// A derived metric view.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct QueryView {
    pub target: String,
    pub name: String,
    pub function: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub range: Option<NumericRange>,
}

/// `sortMetric` of a topN/bottomN query.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SortMetric {
    pub name: String,
    pub function: String,
}

/// `AgentCopilotAggregateQueryResponse` (not paginated). An empty `{}` means no data.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct CopilotAggregateResponse {
    pub results: Vec<CopilotAggregateDataContainer>,
}

/// One group of results.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct CopilotAggregateDataContainer {
    /// Dimension → value; empty when the query had no `groupBy`.
    pub group: BTreeMap<String, String>,
    pub data: Vec<StatisticalResponse>,
}

/// One interval bucket.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct StatisticalResponse {
    pub interval: Option<String>,
    pub metrics: Vec<AggregateMetricData>,
    pub views: Vec<AggregateViewData>,
}

/// One metric in a bucket.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AggregateMetricData {
    pub metric: String,
    pub qualifier: Option<String>,
    pub stats: StatisticalSummary,
}

/// One derived view in a bucket.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AggregateViewData {
    pub name: String,
    pub stats: StatisticalSummary,
}

/// `StatisticalSummary`. For the `n…` metrics Genesys fills `count`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct StatisticalSummary {
    pub max: Option<f64>,
    pub min: Option<f64>,
    pub count: Option<i64>,
    pub count_negative: Option<f64>,
    pub count_positive: Option<f64>,
    pub sum: Option<f64>,
    pub current: Option<f64>,
    pub ratio: Option<f64>,
    pub numerator: Option<f64>,
    pub denominator: Option<f64>,
    pub target: Option<f64>,
    pub p95: Option<i64>,
    pub p99: Option<i64>,
    pub calculated_metric_value: Option<i64>,
}

/// `AsyncQueryResponse`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AsyncQueryResponse {
    pub job_id: String,
}

/// `AsyncQueryStatus`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct AsyncQueryStatus {
    /// `QUEUED`, `PENDING`, `FAILED`, `CANCELLED`, `FULFILLED`, `EXPIRED`, …
    pub state: String,
    pub error_message: Option<String>,
    pub expiration_date: Option<DateTime<Utc>>,
    pub submission_date: Option<DateTime<Utc>>,
    pub completion_date: Option<DateTime<Utc>>,
}

impl AsyncQueryStatus {
    /// Results can be fetched.
    pub fn is_fulfilled(&self) -> bool {
        self.state.eq_ignore_ascii_case("FULFILLED")
    }

    /// The job will never be fulfilled any more (failed, cancelled, expired).
    pub fn is_failed(&self) -> bool {
        ["FAILED", "CANCELLED", "EXPIRED"].iter().any(|s| self.state.eq_ignore_ascii_case(s))
    }
}

/// `AgentCopilotAsyncAggregateQueryResponse`: one page; `cursor` is absent on the last.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct CopilotAsyncResponse {
    pub results: Vec<CopilotAggregateDataContainer>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONVERSATION: &str = r#"{"id":"6a0f2c7e-1d3b-4e59-8a70-9c4b2d1e0f33","startTime":"2025-03-04T10:14:02.114Z",
 "participants":[
  {"id":"e41b9d20-7c5a-4f18-b3e2-0a9d8c7b6f51","purpose":"customer","startTime":"2025-03-04T10:14:02.114Z",
   "connectedTime":"2025-03-04T10:14:02.300Z","address":"tel:+15550104477","ani":"tel:+15550104477","attributes":{},
   "calls":[{"id":"0d7c3e11-52aa-4b6f-9e08-3f2a1b0c9d84","state":"connected","direction":"inbound","recording":true,
     "recordingState":"active","held":false,"muted":false,"confined":false,"connectedTime":"2025-03-04T10:14:02.300Z"}]},
  {"id":"9c2e5f70-3a1b-4d8c-a6e4-7b0f1d2c3e95","purpose":"agent","userId":"b3e1d7a2-5f40-4c8e-9d21-7a6c0f4e8b19",
   "queueId":"1f5d3c2b-9e8a-4b7c-8d6e-5a4b3c2d1e0f","queueName":"Billing","startTime":"2025-03-04T10:14:41.020Z",
   "connectedTime":"2025-03-04T10:14:47.902Z","wrapupRequired":true,"attributes":{"gcAssist.lastPrompt":"refund-policy"},
   "calls":[{"id":"55e8a1c2-0b9d-4f3e-8c7a-6d5e4f3a2b1c","state":"connected","direction":"inbound",
     "connectedTime":"2025-03-04T10:14:47.902Z"}]}],
 "recordingState":"ACTIVE","selfUri":"/api/v2/conversations/6a0f2c7e-1d3b-4e59-8a70-9c4b2d1e0f33",
 "someFutureField":{"x":1}}"#;

    #[test]
    fn conversation_example_parses_and_finds_the_agent() {
        let c: Conversation = serde_json::from_str(CONVERSATION).unwrap();
        assert_eq!(c.participants.len(), 2);
        let agent = c.connected_agent().unwrap();
        assert_eq!(agent.id, "9c2e5f70-3a1b-4d8c-a6e4-7b0f1d2c3e95");
        assert_eq!(agent.user_id.as_deref(), Some("b3e1d7a2-5f40-4c8e-9d21-7a6c0f4e8b19"));
        assert_eq!(agent.attributes["gcAssist.lastPrompt"], "refund-policy");
        assert_eq!(c.customer().unwrap().id, "e41b9d20-7c5a-4f18-b3e2-0a9d8c7b6f51");
    }

    #[test]
    fn connected_agent_rules() {
        let agent = |state: &str, ended: bool| Participant {
            id: format!("{state}-{ended}"),
            purpose: Some("agent".into()),
            end_time: ended.then(Utc::now),
            calls: vec![Call { id: "c".into(), state: Some(state.into()), ..Call::default() }],
            ..Participant::default()
        };
        let conv = |ps: Vec<Participant>| Conversation {
            id: "x".into(),
            name: None,
            external_tag: None,
            start_time: Utc::now(),
            end_time: None,
            address: None,
            participants: ps,
            conversation_ids: vec![],
            max_participants: None,
            recording_state: None,
            divisions: vec![],
            self_uri: None,
        };
        // (participants, expected id)
        let cases: Vec<(Vec<Participant>, Option<&str>)> = vec![
            (vec![agent("alerting", false)], None),
            (vec![agent("connected", true)], None),
            (vec![agent("disconnected", false)], None),
            (vec![agent("CONNECTED", false)], Some("CONNECTED-false")),
            (vec![agent("connected", false), agent("terminated", false)], Some("connected-false")),
            (vec![Participant { purpose: Some("customer".into()), ..agent("connected", false) }], None),
        ];
        for (ps, want) in cases {
            let c = conv(ps);
            assert_eq!(c.connected_agent().map(|p| p.id.as_str()), want);
        }
    }

    #[test]
    fn conversation_requires_start_time_and_participants() {
        assert!(serde_json::from_str::<Conversation>(r#"{"id":"x","participants":[]}"#).is_err());
        assert!(serde_json::from_str::<Conversation>(r#"{"id":"x","startTime":"2025-03-04T10:14:02.114Z"}"#).is_err());
    }

    #[test]
    fn token_info_uses_capital_oauth_key() {
        let t: TokenInfo = serde_json::from_str(
            r#"{"organization":{"id":"o","name":"Acme Care"},"authorizedScope":[],
               "OAuthClient":{"id":"c","name":"gc-assist","authorizedGrantType":"CLIENT-CREDENTIALS","state":"active"}}"#,
        )
        .unwrap();
        let client = t.oauth_client.as_ref().unwrap();
        assert_eq!(client.authorized_grant_type.as_deref(), Some("CLIENT-CREDENTIALS"));
        let back = serde_json::to_value(&t).unwrap();
        assert!(back.get("OAuthClient").is_some(), "{back}");
    }

    #[test]
    fn unknown_enum_values_and_empty_bodies_are_tolerated() {
        let s: AsyncQueryStatus = serde_json::from_str(r#"{"state":"SOMETHING_NEW"}"#).unwrap();
        assert!(!s.is_fulfilled() && !s.is_failed());
        let r: CopilotAggregateResponse = serde_json::from_str("{}").unwrap();
        assert!(r.results.is_empty());
        let t: ChannelTopic =
            serde_json::from_str(r#"{"id":"v2.x","state":"Rejected","rejectionReason":"no"}"#).unwrap();
        assert!(t.is_rejected());
    }

    #[test]
    fn aggregation_query_serializes_camel_case_and_skips_empties() {
        let q = CopilotAsyncAggregationQuery {
            query: CopilotAggregationQuery {
                interval: "2025-03-01T00:00:00.000Z/2025-03-08T00:00:00.000Z".into(),
                granularity: Some("P1D".into()),
                group_by: vec!["queueId".into()],
                filter: Some(QueryFilter {
                    kind: "and".into(),
                    clauses: vec![],
                    predicates: vec![QueryPredicate {
                        kind: Some("dimension".into()),
                        dimension: Some("queueId".into()),
                        operator: Some("matches".into()),
                        value: Some("q1".into()),
                        range: None,
                    }],
                }),
                metrics: vec!["nDistinctSuggestions".into()],
                ..Default::default()
            },
            page_size: Some(2),
        };
        let v = serde_json::to_value(&q).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"interval":"2025-03-01T00:00:00.000Z/2025-03-08T00:00:00.000Z","granularity":"P1D",
                "groupBy":["queueId"],"filter":{"type":"and","predicates":[{"type":"dimension","dimension":"queueId",
                "operator":"matches","value":"q1"}]},"metrics":["nDistinctSuggestions"],"pageSize":2})
        );
        let r: CopilotAggregateResponse = serde_json::from_str(
            r#"{"results":[{"group":{"queueId":"q1"},"data":[{"interval":"a/b",
               "metrics":[{"metric":"nDistinctSuggestions","stats":{"count":14}}]}]}]}"#,
        )
        .unwrap();
        assert_eq!(r.results[0].data[0].metrics[0].stats.count, Some(14));
    }
}
