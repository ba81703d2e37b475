//! Loading recorded calls (`calls.json` + one JSONL file per call, format in
//! shared/data/calls/README.md) from a folder or from the small set embedded in the
//! binary (examples/calls/), so `gc-assist emulator` works from any directory.
//!
//! Each line is kept as the exact notification to deliver (the envelope without
//! `recordedAt`) together with its time and topic, ready to be replayed; the conversation
//! starts out in the snapshot where the agent is connected.

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use super::error::EmulatorError;
use super::CallInfo;

/// The calls shipped with gc-assist: a calls.json filtered to five small calls of
/// different scenarios, and those calls' JSONL files copied unchanged.
const EMBEDDED: &[(&str, &str)] = &[
    ("calls.json", include_str!("../../examples/calls/calls.json")),
    (
        "call_008_agent_only_keyword_bf0bd9c9.jsonl",
        include_str!("../../examples/calls/call_008_agent_only_keyword_bf0bd9c9.jsonl"),
    ),
    (
        "call_022_cancel_threat_2ab4f78d.jsonl",
        include_str!("../../examples/calls/call_022_cancel_threat_2ab4f78d.jsonl"),
    ),
    (
        "call_025_low_asr_confidence_116e35f5.jsonl",
        include_str!("../../examples/calls/call_025_low_asr_confidence_116e35f5.jsonl"),
    ),
    (
        "call_028_billing_refund_e9fe9598.jsonl",
        include_str!("../../examples/calls/call_028_billing_refund_e9fe9598.jsonl"),
    ),
    ("call_031_upsell_happy_15d4952e.jsonl", include_str!("../../examples/calls/call_031_upsell_happy_15d4952e.jsonl")),
];

/// Where the embedded files claim to come from, for error messages.
const EMBEDDED_DIR: &str = "<embedded examples/calls>";

/// Organization id used when no calls.json names one.
pub const DEFAULT_ORG_ID: &str = "78cb2772-0551-4d98-b959-a64e6e573d55";
/// Home division id used when no calls.json names one.
pub const DEFAULT_DIVISION_ID: &str = "da304f9c-b2cf-4edf-a3c8-45d5b2b5cfe1";
/// Copilot assistant id used when no calls.json names one.
pub const DEFAULT_ASSISTANT_ID: &str = "0dedcaf2-2e58-4bd2-aff4-4c4072838eea";
/// The "Billing" queue new conversations land in by default (the id the recorded calls use).
pub const DEFAULT_QUEUE_ID: &str = "20a2bd46-64e1-4827-8e9e-f900e3ed7f32";
pub const DEFAULT_QUEUE_NAME: &str = "Billing";

/// A queue known to the emulator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Queue {
    pub id: String,
    pub name: String,
}

/// An agent (user) known to the emulator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Agent {
    pub user_id: String,
    pub name: String,
}

/// The organization the emulated calls belong to.
#[derive(Debug, Clone)]
pub struct Catalog {
    pub organization_id: String,
    pub organization_name: String,
    pub division_id: String,
    pub assistant_id: String,
    pub queues: Vec<Queue>,
    pub agents: Vec<Agent>,
}

impl Default for Catalog {
    fn default() -> Self {
        Catalog {
            organization_id: DEFAULT_ORG_ID.into(),
            organization_name: "gc-assist Emulated Org".into(),
            division_id: DEFAULT_DIVISION_ID.into(),
            assistant_id: DEFAULT_ASSISTANT_ID.into(),
            queues: vec![Queue { id: DEFAULT_QUEUE_ID.into(), name: DEFAULT_QUEUE_NAME.into() }],
            agents: Vec::new(),
        }
    }
}

impl Catalog {
    pub fn queue_name(&self, id: &str) -> Option<&str> {
        self.queues.iter().find(|q| q.id == id).map(|q| q.name.as_str())
    }

    pub fn agent_name(&self, user_id: &str) -> Option<&str> {
        self.agents.iter().find(|a| a.user_id == user_id).map(|a| a.name.as_str())
    }
}

/// One line of a recorded call, ready to deliver.
#[derive(Debug, Clone)]
pub struct RecordedLine {
    pub at: DateTime<Utc>,
    pub topic: String,
    /// The notification envelope as sent on the websocket (`recordedAt` removed).
    pub message: String,
}

/// One recorded call.
#[derive(Debug, Clone)]
pub struct RecordedCall {
    pub info: CallInfo,
    pub lines: Vec<RecordedLine>,
    /// Index in `lines` of the snapshot where the agent is connected.
    pub connected_line: usize,
    /// That snapshot's `eventBody`: the state the conversation starts in.
    pub connected_snapshot: Value,
    /// The last queue-conversation snapshot's `eventBody` (the call ended).
    pub final_snapshot: Value,
}

/// What was loaded.
#[derive(Debug, Clone, Default)]
pub struct Loaded {
    pub catalog: Catalog,
    pub calls: Vec<RecordedCall>,
}

/// Load the calls embedded in the binary.
pub fn load_embedded() -> Result<Loaded, EmulatorError> {
    let base = PathBuf::from(EMBEDDED_DIR);
    load_with(&base, |name| {
        EMBEDDED.iter().find(|(n, _)| *n == name).map(|(_, text)| (*text).to_string()).ok_or_else(|| {
            EmulatorError::CallsRead {
                path: base.join(name),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "not among the embedded files"),
            }
        })
    })
}

/// Load `calls.json` and the files it names from `dir`.
pub fn load_dir(dir: &Path) -> Result<Loaded, EmulatorError> {
    load_with(dir, |name| {
        let path = dir.join(name);
        std::fs::read_to_string(&path).map_err(|source| EmulatorError::CallsRead { path, source })
    })
}

fn load_with(base: &Path, read: impl Fn(&str) -> Result<String, EmulatorError>) -> Result<Loaded, EmulatorError> {
    let index_path = base.join("calls.json");
    let text = read("calls.json")?;
    let index: Value = serde_json::from_str(&text).map_err(|e| EmulatorError::CallsParse {
        path: index_path.clone(),
        line: e.line(),
        message: format!("not valid JSON: {e}"),
    })?;
    let invalid = |message: String| EmulatorError::CallsInvalid { path: index_path.clone(), message };
    let Some(index) = index.as_object() else {
        return Err(invalid("the top level must be a JSON object with a `calls` array".into()));
    };
    let mut catalog = Catalog::default();
    if let Some(s) = index.get("organizationId").and_then(Value::as_str) {
        catalog.organization_id = s.to_string();
    }
    if let Some(s) = index.get("divisionId").and_then(Value::as_str) {
        catalog.division_id = s.to_string();
    }
    if let Some(s) = index.get("assistantId").and_then(Value::as_str) {
        catalog.assistant_id = s.to_string();
    }
    if let Some(queues) = index.get("queues").and_then(Value::as_array) {
        let mut list = Vec::new();
        for (i, q) in queues.iter().enumerate() {
            let id = str_field(q, "id").ok_or_else(|| invalid(format!("queues[{i}] needs string `id` and `name`")))?;
            let name =
                str_field(q, "name").ok_or_else(|| invalid(format!("queues[{i}] needs string `id` and `name`")))?;
            list.push(Queue { id, name });
        }
        if !list.is_empty() {
            catalog.queues = list;
        }
    }
    if let Some(agents) = index.get("agents").and_then(Value::as_array) {
        for (i, a) in agents.iter().enumerate() {
            let (Some(user_id), Some(name)) = (str_field(a, "userId"), str_field(a, "name")) else {
                return Err(invalid(format!("agents[{i}] needs string `userId` and `name`")));
            };
            catalog.agents.push(Agent { user_id, name });
        }
    }
    let Some(entries) = index.get("calls").and_then(Value::as_array) else {
        return Err(invalid("missing the `calls` array".into()));
    };
    let mut calls = Vec::with_capacity(entries.len());
    for (i, entry) in entries.iter().enumerate() {
        let field = |name: &str| {
            str_field(entry, name).ok_or_else(|| invalid(format!("calls[{i}] is missing the string field `{name}`")))
        };
        let file = field("file")?;
        if file.contains(['/', '\\']) || file.starts_with('.') {
            return Err(invalid(format!("calls[{i}].file `{file}` must be a plain file name in the same folder")));
        }
        let queue_id = field("queueId")?;
        let agent_user_id = field("agentUserId")?;
        let queue_name = match str_field(entry, "queueName") {
            Some(n) => n,
            None => catalog.queue_name(&queue_id).unwrap_or(&queue_id).to_string(),
        };
        let agent_name = match str_field(entry, "agentName") {
            Some(n) => n,
            None => catalog.agent_name(&agent_user_id).unwrap_or("Agent").to_string(),
        };
        let info = CallInfo {
            conversation_id: field("conversationId")?,
            queue_id,
            queue_name,
            agent_user_id,
            agent_name,
            agent_participant_id: field("agentParticipantId")?,
            agent_communication_id: field("agentCommunicationId")?,
            customer_participant_id: field("customerParticipantId")?,
            scenario: str_field(entry, "scenario").unwrap_or_else(|| "recorded".into()),
        };
        if !catalog.agents.iter().any(|a| a.user_id == info.agent_user_id) {
            catalog.agents.push(Agent { user_id: info.agent_user_id.clone(), name: info.agent_name.clone() });
        }
        if !catalog.queues.iter().any(|q| q.id == info.queue_id) {
            catalog.queues.push(Queue { id: info.queue_id.clone(), name: info.queue_name.clone() });
        }
        let text = read(&file)?;
        calls.push(parse_call(&base.join(&file), &text, info)?);
    }
    Ok(Loaded { catalog, calls })
}

fn str_field(v: &Value, name: &str) -> Option<String> {
    v.get(name).and_then(Value::as_str).map(str::to_string)
}

/// Parse one JSONL call file.
pub fn parse_call(path: &Path, text: &str, info: CallInfo) -> Result<RecordedCall, EmulatorError> {
    let mut lines = Vec::new();
    let mut connected: Option<(usize, Value)> = None;
    let mut last_snapshot: Option<Value> = None;
    let mut previous: Option<DateTime<Utc>> = None;
    for (n, raw) in text.lines().enumerate() {
        let line_no = n + 1;
        if raw.trim().is_empty() {
            continue;
        }
        let err = |message: String| EmulatorError::CallsParse { path: path.to_path_buf(), line: line_no, message };
        let mut obj: Map<String, Value> =
            serde_json::from_str(raw).map_err(|e| err(format!("not a JSON object: {e}")))?;
        let at = match obj.shift_remove("recordedAt") {
            Some(Value::String(s)) => DateTime::parse_from_rfc3339(&s)
                .map_err(|e| err(format!("`recordedAt` {s:?} is not an ISO-8601 timestamp: {e}")))?
                .with_timezone(&Utc),
            _ => return Err(err("missing the string field `recordedAt`".into())),
        };
        if previous.is_some_and(|p| at < p) {
            return Err(err("`recordedAt` goes back in time; lines must be in recording order".into()));
        }
        previous = Some(at);
        let Some(topic) = obj.get("topicName").and_then(Value::as_str).map(str::to_string) else {
            return Err(err("missing the string field `topicName`".into()));
        };
        let Some(body) = obj.get("eventBody").filter(|b| b.is_object()) else {
            return Err(err("missing the object field `eventBody`".into()));
        };
        if topic.starts_with("v2.routing.queues.") && topic.ends_with(".conversations") {
            if connected.is_none() && agent_connected(body) {
                connected = Some((lines.len(), body.clone()));
            }
            last_snapshot = Some(body.clone());
        }
        let message = serde_json::to_string(&obj).map_err(|e| err(format!("cannot re-encode the line: {e}")))?;
        lines.push(RecordedLine { at, topic, message });
    }
    let Some((connected_line, connected_snapshot)) = connected else {
        return Err(EmulatorError::CallsInvalid {
            path: path.to_path_buf(),
            message: "no queue-conversation snapshot where the agent participant has `connectedTime` and \
                      calls[0].state `connected`"
                .into(),
        });
    };
    let final_snapshot = last_snapshot.unwrap_or_else(|| connected_snapshot.clone());
    Ok(RecordedCall { info, lines, connected_line, connected_snapshot, final_snapshot })
}

/// The agent is connected: its participant has `connectedTime` and `calls[0].state` is
/// `connected` (genesys-api.md §6.1).
pub fn agent_connected(body: &Value) -> bool {
    body.get("participants").and_then(Value::as_array).is_some_and(|ps| {
        ps.iter().any(|p| {
            p.get("purpose").and_then(Value::as_str) == Some("agent")
                && p.get("connectedTime").is_some_and(Value::is_string)
                && p.pointer("/calls/0/state").and_then(Value::as_str) == Some("connected")
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> CallInfo {
        CallInfo {
            conversation_id: "c".into(),
            queue_id: "q".into(),
            queue_name: "Q".into(),
            agent_user_id: "u".into(),
            agent_name: "A".into(),
            agent_participant_id: "p".into(),
            agent_communication_id: "k".into(),
            customer_participant_id: "cu".into(),
            scenario: "s".into(),
        }
    }

    const SNAP: &str = r#"{"recordedAt":"2025-03-10T12:00:00.000Z","topicName":"v2.routing.queues.q.conversations","version":"2","eventBody":{"id":"c","participants":[{"id":"p","purpose":"agent","connectedTime":"2025-03-10T12:00:00.000Z","calls":[{"state":"connected"}]}]},"metadata":{"CorrelationId":"x"}}"#;

    #[test]
    fn embedded_calls_load() {
        let loaded = load_embedded().expect("embedded calls load");
        assert_eq!(loaded.calls.len(), 5);
        for c in &loaded.calls {
            assert!(agent_connected(&c.connected_snapshot), "{}", c.info.conversation_id);
            assert!(!c.lines[0].message.contains("recordedAt"));
        }
    }

    #[test]
    fn line_errors_name_the_line() {
        let text = format!("{SNAP}\n{{\"topicName\":\"t\"}}\n");
        let e = parse_call(Path::new("f.jsonl"), &text, info()).unwrap_err();
        assert!(matches!(e, EmulatorError::CallsParse { line: 2, .. }), "{e}");
        let e = parse_call(Path::new("f.jsonl"), "{\n", info()).unwrap_err();
        assert!(e.to_string().contains("f.jsonl, line 1"), "{e}");
    }

    #[test]
    fn a_call_without_a_connected_agent_is_rejected() {
        let text = SNAP.replace("\"connected\"}", "\"alerting\"}");
        let e = parse_call(Path::new("f.jsonl"), &text, info()).unwrap_err();
        assert!(matches!(e, EmulatorError::CallsInvalid { .. }), "{e}");
    }

    #[test]
    fn recorded_at_is_removed_and_order_kept() {
        let c = parse_call(Path::new("f.jsonl"), SNAP, info()).expect("parses");
        assert_eq!(c.lines.len(), 1);
        assert!(c.lines[0].message.starts_with(r#"{"topicName":"v2.routing.queues.q.conversations","version":"2""#));
    }
}
