//! Notification envelopes → the few typed events the trigger evaluator needs.
//!
//! Three topics matter (genesys-api.md §6.1–§6.3): queue conversation snapshots, transcription
//! and overall sentiment. Everything else in a body is ignored; missing fields take defaults
//! (serde `default`, `null` included), so new or absent Genesys fields never break parsing.
//! A body whose fields have the wrong JSON type, or a timestamp that is not RFC 3339, is an
//! [`TriggerError::Malformed`] / [`TriggerError::BadTime`] value, never a panic.

use serde::{Deserialize, Deserializer};
use serde_json::Value;

use super::TriggerError;

/// Who spoke an utterance. `INTERNAL` is the agent, `EXTERNAL` the customer (genesys-api.md §6.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    Customer,
    Agent,
    Other,
}

/// One transcript result, reduced to what triggers read.
#[derive(Debug, Clone, PartialEq)]
pub struct Utterance {
    pub is_final: bool,
    pub channel: Channel,
    /// `alternatives[0].transcript`: the best hypothesis.
    pub text: String,
    /// `alternatives[0].confidence`, when present.
    pub confidence: Option<f64>,
    pub utterance_id: Option<String>,
}

/// A conversation event the evaluator consumes.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// The agent participant is connected; `at_ms` is its `connectedTime` (epoch ms). Sent
    /// again with every snapshot while the agent stays connected; the evaluator keeps the first.
    AgentConnected {
        at_ms: i64,
    },
    /// Every participant has ended, or every communication is disconnected/terminated.
    ConversationEnded,
    Utterance(Utterance),
    /// Overall customer sentiment, already normalized to −1…1 ([`normalize_sentiment`]).
    Sentiment {
        score: f64,
    },
}

/// Which of the three topics a notification came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Topic {
    ConversationSnapshot,
    Transcription,
    Sentiment,
    /// Any other topic (heartbeats, `channel.metadata`, …): no events.
    Other,
}

impl Topic {
    /// Classifies a `topicName`.
    pub fn of(topic_name: &str) -> Topic {
        classify(topic_name).0
    }
}

/// The topic and, for the per-conversation topics, the conversation id it names.
/// Allocation-free: it runs on every websocket message.
fn classify(topic_name: &str) -> (Topic, Option<&str>) {
    let mut parts = topic_name.split('.');
    let mut next = || parts.next().unwrap_or("");
    match [next(), next(), next(), next(), next(), next()] {
        ["v2", "routing", "queues", q, "conversations", ""] if !q.is_empty() => (Topic::ConversationSnapshot, None),
        ["v2", "conversations", c, "transcription", "", ""] if !c.is_empty() => (Topic::Transcription, Some(c)),
        ["v2", "speechandtextanalytics", "conversation", c, "sentiment", ""] if !c.is_empty() => {
            (Topic::Sentiment, Some(c))
        }
        _ => (Topic::Other, None),
    }
}

/// A parsed notification: its conversation (when it names one) and its events.
#[derive(Debug, Clone, PartialEq)]
pub struct Notification {
    pub topic: Topic,
    pub conversation_id: Option<String>,
    pub events: Vec<Event>,
}

/// The client rule for the sentiment scale (genesys-api.md §6.3): |x| ≤ 1 as is, |x| > 1 is
/// on the −100…100 scale and divided by 100; then clamped to −1…1. Non-finite → `None`.
pub fn normalize_sentiment(x: f64) -> Option<f64> {
    if !x.is_finite() {
        return None;
    }
    let x = if x.abs() > 1.0 { x / 100.0 } else { x };
    Some(x.clamp(-1.0, 1.0))
}

/// Parses one websocket message (a JSON envelope `{topicName, eventBody, …}`).
pub fn parse_notification(json: &str) -> Result<Notification, TriggerError> {
    let value: Value = serde_json::from_str(json)
        .map_err(|e| TriggerError::Malformed { what: "notification envelope".into(), reason: e.to_string() })?;
    parse_envelope(&value)
}

/// Parses an already-decoded envelope. Extra top-level fields (such as a recording's
/// `recordedAt`) are ignored.
pub fn parse_envelope(envelope: &Value) -> Result<Notification, TriggerError> {
    let topic_name = envelope.get("topicName").and_then(Value::as_str).unwrap_or("");
    let (topic, topic_conversation) = classify(topic_name);
    let null = Value::Null;
    let body = envelope.get("eventBody").unwrap_or(&null);
    let (conversation_id, events) = match topic {
        Topic::ConversationSnapshot => snapshot_events(decode::<SnapshotBody>(body, topic_name)?)?,
        Topic::Transcription => transcription_events(decode::<TranscriptionBody>(body, topic_name)?),
        Topic::Sentiment => sentiment_events(decode::<SentimentBody>(body, topic_name)?),
        Topic::Other => (None, Vec::new()),
    };
    let conversation_id = conversation_id.or_else(|| topic_conversation.map(str::to_owned));
    Ok(Notification { topic, conversation_id, events })
}

fn decode<'v, T: Deserialize<'v>>(body: &'v Value, topic_name: &str) -> Result<T, TriggerError> {
    if !body.is_object() {
        return Err(TriggerError::Malformed {
            what: format!("eventBody of {topic_name}"),
            reason: "expected a JSON object".into(),
        });
    }
    T::deserialize(body)
        .map_err(|e| TriggerError::Malformed { what: format!("eventBody of {topic_name}"), reason: e.to_string() })
}

/// `null` or absent → the type's default (Genesys omits or nulls empty arrays alike).
fn null_default<'de, D: Deserializer<'de>, T: Default + Deserialize<'de>>(d: D) -> Result<T, D::Error> {
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct SnapshotBody {
    id: Option<String>,
    #[serde(deserialize_with = "null_default")]
    participants: Vec<Participant>,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct Participant {
    purpose: Option<String>,
    connected_time: Option<String>,
    end_time: Option<String>,
    #[serde(deserialize_with = "null_default")]
    calls: Vec<Communication>,
    // The other media kinds count for "every communication ended".
    #[serde(deserialize_with = "null_default")]
    callbacks: Vec<Communication>,
    #[serde(deserialize_with = "null_default")]
    chats: Vec<Communication>,
    #[serde(deserialize_with = "null_default")]
    emails: Vec<Communication>,
    #[serde(deserialize_with = "null_default")]
    messages: Vec<Communication>,
    #[serde(deserialize_with = "null_default")]
    videos: Vec<Communication>,
}

impl Participant {
    fn communications(&self) -> impl Iterator<Item = &Communication> {
        self.calls
            .iter()
            .chain(&self.callbacks)
            .chain(&self.chats)
            .chain(&self.emails)
            .chain(&self.messages)
            .chain(&self.videos)
    }

    fn is_agent(&self) -> bool {
        self.purpose.as_deref().is_some_and(|p| p.eq_ignore_ascii_case("agent"))
    }
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Communication {
    state: Option<String>,
}

impl Communication {
    fn state_is(&self, s: &str) -> bool {
        self.state.as_deref().is_some_and(|x| x.eq_ignore_ascii_case(s))
    }
}

fn epoch_ms(field: &str, value: &str) -> Result<i64, TriggerError> {
    chrono::DateTime::parse_from_rfc3339(value)
        .map(|t| t.timestamp_millis())
        .map_err(|_| TriggerError::BadTime { field: field.to_owned(), value: value.to_owned() })
}

/// genesys-api.md §6.1: the agent is connected when the `agent` participant has a
/// `connectedTime` and a connected call; the conversation has ended when every participant
/// has an `endTime` or every communication is disconnected/terminated. An ended snapshot
/// yields only `ConversationEnded`. With several agents (a transfer), the earliest
/// connected one counts.
fn snapshot_events(body: SnapshotBody) -> Result<(Option<String>, Vec<Event>), TriggerError> {
    let parts = &body.participants;
    let all_ended = !parts.is_empty() && parts.iter().all(|p| p.end_time.is_some());
    let mut comms = parts.iter().flat_map(Participant::communications).peekable();
    let all_disconnected =
        comms.peek().is_some() && comms.all(|c| c.state_is("disconnected") || c.state_is("terminated"));
    if all_ended || all_disconnected {
        return Ok((body.id, vec![Event::ConversationEnded]));
    }
    let mut connected_at: Option<i64> = None;
    for p in parts.iter().filter(|p| p.is_agent() && p.calls.iter().any(|c| c.state_is("connected"))) {
        if let Some(t) = &p.connected_time {
            let ms = epoch_ms("participants[].connectedTime", t)?;
            connected_at = Some(connected_at.map_or(ms, |c| c.min(ms)));
        }
    }
    let events = connected_at.map(|at_ms| Event::AgentConnected { at_ms }).into_iter().collect();
    Ok((body.id, events))
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct TranscriptionBody {
    conversation_id: Option<String>,
    #[serde(deserialize_with = "null_default")]
    transcripts: Vec<Transcript>,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct Transcript {
    utterance_id: Option<String>,
    is_final: Option<bool>,
    channel: Option<String>,
    #[serde(deserialize_with = "null_default")]
    alternatives: Vec<Alternative>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Alternative {
    confidence: Option<f64>,
    transcript: Option<String>,
}

/// One `Utterance` per transcript that has at least one alternative.
fn transcription_events(body: TranscriptionBody) -> (Option<String>, Vec<Event>) {
    let events = body
        .transcripts
        .into_iter()
        .filter_map(|mut t| {
            if t.alternatives.is_empty() {
                return None;
            }
            let best = t.alternatives.swap_remove(0);
            let channel = match t.channel.as_deref() {
                Some("EXTERNAL") => Channel::Customer,
                Some("INTERNAL") => Channel::Agent,
                _ => Channel::Other,
            };
            Some(Event::Utterance(Utterance {
                is_final: t.is_final.unwrap_or(false),
                channel,
                text: best.transcript.unwrap_or_default(),
                confidence: best.confidence.filter(|c| c.is_finite()),
                utterance_id: t.utterance_id,
            }))
        })
        .collect();
    (body.conversation_id, events)
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct SentimentBody {
    conversation_id: Option<String>,
    sentiment_overall_score: Option<f64>,
}

fn sentiment_events(body: SentimentBody) -> (Option<String>, Vec<Event>) {
    let events = body
        .sentiment_overall_score
        .and_then(normalize_sentiment)
        .map(|score| Event::Sentiment { score })
        .into_iter()
        .collect();
    (body.conversation_id, events)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: Value) -> Result<Notification, TriggerError> {
        parse_notification(&v.to_string())
    }

    const Q: &str = "v2.routing.queues.1f5d3c2b-9e8a-4b7c-8d6e-5a4b3c2d1e0f.conversations";

    #[test]
    fn topics() {
        assert_eq!(Topic::of(Q), Topic::ConversationSnapshot);
        assert_eq!(Topic::of("v2.conversations.c1.transcription"), Topic::Transcription);
        assert_eq!(Topic::of("v2.speechandtextanalytics.conversation.c1.sentiment"), Topic::Sentiment);
        assert_eq!(Topic::of("channel.metadata"), Topic::Other);
        assert_eq!(Topic::of("v2.conversations.c1.suggestions.x"), Topic::Other);
        assert_eq!(Topic::of("v2.conversations.c1.transcription.extra"), Topic::Other);
        assert_eq!(Topic::of("v2.conversations..transcription"), Topic::Other);
        assert_eq!(Topic::of(""), Topic::Other);
    }

    #[test]
    fn snapshot_agent_connected() {
        let n = parse(json!({"topicName": Q, "eventBody": {"id": "c1", "participants": [
            {"purpose": "customer", "connectedTime": "2025-03-04T10:14:02.300Z", "calls": [{"state": "connected"}]},
            {"purpose": "acd", "connectedTime": "2025-03-04T10:14:21.880Z", "endTime": "2025-03-04T10:14:47.902Z",
             "calls": [{"state": "disconnected"}]},
            {"purpose": "agent", "connectedTime": "2025-03-04T10:14:47.902Z", "calls": [{"state": "connected"}]}
        ]}}))
        .expect("parse");
        assert_eq!(n.topic, Topic::ConversationSnapshot);
        assert_eq!(n.conversation_id.as_deref(), Some("c1"));
        assert_eq!(n.events, vec![Event::AgentConnected { at_ms: 1_741_083_287_902 }]);
    }

    #[test]
    fn snapshot_before_agent_and_alerting_agent_give_nothing() {
        let n = parse(json!({"topicName": Q, "eventBody": {"id": "c1", "participants": [
            {"purpose": "customer", "connectedTime": "2025-03-04T10:14:02.300Z", "calls": [{"state": "connected"}]},
            {"purpose": "agent", "calls": [{"state": "alerting"}]}
        ]}}))
        .expect("parse");
        assert!(n.events.is_empty());
    }

    #[test]
    fn snapshot_end_by_end_times_or_disconnects() {
        let by_end = parse(json!({"topicName": Q, "eventBody": {"id": "c1", "participants": [
            {"purpose": "customer", "endTime": "2025-03-04T10:20:00Z", "calls": [{"state": "connected"}]},
            {"purpose": "agent", "connectedTime": "2025-03-04T10:14:47.902Z", "endTime": "2025-03-04T10:20:00Z",
             "calls": [{"state": "connected"}]}
        ]}}))
        .expect("parse");
        assert_eq!(by_end.events, vec![Event::ConversationEnded]);
        let by_state = parse(json!({"topicName": Q, "eventBody": {"id": "c1", "participants": [
            {"purpose": "customer", "calls": [{"state": "disconnected"}]},
            {"purpose": "agent", "connectedTime": "2025-03-04T10:14:47.902Z", "calls": [{"state": "terminated"}]}
        ]}}))
        .expect("parse");
        assert_eq!(by_state.events, vec![Event::ConversationEnded]);
        // An empty snapshot is not an end.
        let empty = parse(json!({"topicName": Q, "eventBody": {"id": "c1"}})).expect("parse");
        assert!(empty.events.is_empty());
    }

    #[test]
    fn transcription() {
        let n = parse(json!({"topicName": "v2.conversations.c9.transcription", "eventBody": {
            "transcripts": [
                {"utteranceId": "u1", "isFinal": true, "channel": "EXTERNAL",
                 "alternatives": [{"confidence": 0.91, "transcript": "i would like a refund please"},
                                  {"confidence": 0.5, "transcript": "i would like a ref and please"}]},
                {"utteranceId": "u2", "isFinal": false, "channel": "INTERNAL",
                 "alternatives": [{"transcript": "sure"}]},
                {"utteranceId": "u3", "channel": "BOTH", "alternatives": null},
                {"utteranceId": "u4", "channel": "UNKNOWN", "alternatives": [{"confidence": 0.7}]}
            ], "status": {"status": "SESSION_ONGOING"}, "somethingNew": 1}}))
        .expect("parse");
        // No conversationId in the body: it comes from the topic.
        assert_eq!(n.conversation_id.as_deref(), Some("c9"));
        assert_eq!(
            n.events,
            vec![
                Event::Utterance(Utterance {
                    is_final: true,
                    channel: Channel::Customer,
                    text: "i would like a refund please".into(),
                    confidence: Some(0.91),
                    utterance_id: Some("u1".into()),
                }),
                Event::Utterance(Utterance {
                    is_final: false,
                    channel: Channel::Agent,
                    text: "sure".into(),
                    confidence: None,
                    utterance_id: Some("u2".into()),
                }),
                Event::Utterance(Utterance {
                    is_final: false,
                    channel: Channel::Other,
                    text: String::new(),
                    confidence: Some(0.7),
                    utterance_id: Some("u4".into()),
                }),
            ]
        );
        let ended = parse(json!({"topicName": "v2.conversations.c9.transcription", "eventBody": {
            "conversationId": "c9", "transcripts": [], "status": {"status": "SESSION_ENDED"}}}))
        .expect("parse");
        assert!(ended.events.is_empty());
    }

    #[test]
    fn sentiment_scale_rule() {
        let cases: &[(f64, f64)] = &[
            (-0.47, -0.47),
            (1.0, 1.0),
            (-1.0, -1.0),
            (0.0, 0.0),
            (-47.0, -0.47),
            (100.0, 1.0),
            (-100.0, -1.0),
            (250.0, 1.0),
            (-1.5, -0.015),
        ];
        for (raw, want) in cases {
            let n = parse(json!({"topicName": "v2.speechandtextanalytics.conversation.c1.sentiment",
                "eventBody": {"conversationId": "c1", "sentimentOverallScore": raw, "sentimentTrendScore": 0.1}}))
            .expect("parse");
            match n.events.as_slice() {
                [Event::Sentiment { score }] => assert!((score - want).abs() < 1e-12, "raw {raw}: got {score}"),
                other => panic!("raw {raw}: {other:?}"),
            }
        }
        assert_eq!(normalize_sentiment(f64::NAN), None);
        let missing = parse(json!({"topicName": "v2.speechandtextanalytics.conversation.c1.sentiment",
            "eventBody": {"conversationId": "c1"}}))
        .expect("parse");
        assert!(missing.events.is_empty());
    }

    #[test]
    fn malformed_bodies_are_errors() {
        let cases = [
            "not json".to_string(),
            json!({"topicName": Q, "eventBody": "text"}).to_string(),
            json!({"topicName": Q, "eventBody": {"participants": {"a": 1}}}).to_string(),
            json!({"topicName": "v2.conversations.c.transcription", "eventBody": {"transcripts": [{"isFinal": "yes"}]}})
                .to_string(),
            json!({"topicName": "v2.speechandtextanalytics.conversation.c.sentiment",
                   "eventBody": {"sentimentOverallScore": "bad"}})
            .to_string(),
        ];
        for c in &cases {
            assert!(matches!(parse_notification(c), Err(TriggerError::Malformed { .. })), "case {c}");
        }
        let bad_time = json!({"topicName": Q, "eventBody": {"participants": [
            {"purpose": "agent", "connectedTime": "yesterday", "calls": [{"state": "connected"}]}]}});
        assert!(matches!(parse(bad_time), Err(TriggerError::BadTime { .. })));
        // Unknown topics parse to nothing.
        let other = parse(json!({"topicName": "channel.metadata", "eventBody": {"message": "WebSocket Heartbeat"}}))
            .expect("parse");
        assert_eq!(other.topic, Topic::Other);
        assert!(other.events.is_empty());
    }

    /// Every recorded call parses, and the events agree with the call index: conversation id,
    /// agent connection time, utterance counts, and exactly one end, on the last snapshot.
    #[test]
    fn every_recorded_call_parses_and_agrees_with_the_index() {
        let dir = super::super::calls_dir();
        let index: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("calls.json")).expect("calls.json"))
            .expect("calls.json is JSON");
        let calls = index["calls"].as_array().expect("calls list");
        assert!(!calls.is_empty());
        for call in calls {
            let file = call["file"].as_str().expect("file");
            let text = std::fs::read_to_string(dir.join(file)).expect("read a recorded call");
            let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
            let (mut connected, mut ends, mut customer, mut agent, mut partials) = (None, Vec::new(), 0, 0, 0);
            for (i, line) in lines.iter().enumerate() {
                let n = parse_notification(line).unwrap_or_else(|e| panic!("{file} line {}: {e}", i + 1));
                assert_ne!(n.topic, Topic::Other, "{file} line {}", i + 1);
                assert_eq!(n.conversation_id.as_deref(), call["conversationId"].as_str(), "{file} line {}", i + 1);
                for e in n.events {
                    match e {
                        Event::AgentConnected { at_ms } => {
                            connected.get_or_insert(at_ms);
                        }
                        Event::ConversationEnded => ends.push(i),
                        Event::Utterance(u) if !u.is_final => partials += 1,
                        Event::Utterance(u) => match u.channel {
                            Channel::Customer => customer += 1,
                            Channel::Agent => agent += 1,
                            Channel::Other => panic!("{file}: utterance on an unknown channel"),
                        },
                        Event::Sentiment { score } => assert!((-1.0..=1.0).contains(&score), "{file}: {score}"),
                    }
                }
            }
            let want_connected =
                chrono::DateTime::parse_from_rfc3339(call["agentConnectedTime"].as_str().expect("time"))
                    .expect("agentConnectedTime")
                    .timestamp_millis();
            assert_eq!(connected, Some(want_connected), "{file}");
            // The end is the last snapshot (the transcription feed may close just after it).
            let last_snapshot = lines.iter().rposition(|l| l.contains(".conversations\""));
            assert_eq!(ends.last().copied(), last_snapshot, "{file}");
            assert_eq!(ends.len(), 1, "{file}");
            let counts = &call["utterances"];
            assert_eq!(customer, counts["customer"].as_u64().expect("count"), "{file}");
            assert_eq!(agent, counts["agent"].as_u64().expect("count"), "{file}");
            assert_eq!(partials, counts["partials"].as_u64().expect("count"), "{file}");
        }
    }
}
