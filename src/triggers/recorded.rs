//! The fast parse of one recorded line (a notification envelope plus `recordedAt`) for
//! replay: straight from the text into borrowed, typed structs that hold only the fields
//! the evaluator reads, dispatching the body on the topic name.
//!
//! # Why a second parser
//!
//! [`super::events::parse_envelope`] first builds a whole `serde_json::Value` tree of the
//! envelope (~1.5 KB, dozens of allocations for a conversation snapshot), then reads a few
//! fields from it. Replay parses every line of every call, and that tree-building is the
//! whole cost of a cold run; here the ignored fields are skipped without allocating and the
//! strings that are only compared are borrowed from the line.
//!
//! # Same answers as the reference parse
//!
//! [`parse_line`] succeeds only on lines whose result is certain to equal the reference
//! (`parse_envelope` over a `Value`): every field the reference reads is read here with the
//! same type, in the same struct shape (so type errors are caught alike). On anything
//! unusual (a duplicate or escaped key, `eventBody` before `topicName`, a wrong type, a bad
//! timestamp) it returns `None`, and the caller parses the line with the reference, which
//! gives the same result or the same error message. The tests compare both on every
//! recorded line and on a table of odd lines.

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

use super::events::{normalize_sentiment, Channel, Event, Topic, Utterance};

/// What the fast parse of a line gives besides its events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LineHead<'a> {
    /// `recordedAt`, unparsed.
    pub recorded_at: &'a str,
    /// `topicName`.
    pub topic_name: &'a str,
}

/// Parses one line, pushing its events onto `events` (cleared first). `None`: parse this
/// line with the reference parser instead (see the module docs); `events` is then garbage.
pub fn parse_line<'a>(line: &'a str, events: &mut Vec<Event>) -> Option<LineHead<'a>> {
    events.clear();
    let mut de = serde_json::Deserializer::from_str(line);
    let head = EnvelopeSeed { events }.deserialize(&mut de).ok()?;
    de.end().ok()?;
    Some(head)
}

/// Any error here only means "take the reference path"; its text is never shown.
fn fallback<E: de::Error>(why: &str) -> E {
    E::custom(why)
}

struct EnvelopeSeed<'s> {
    events: &'s mut Vec<Event>,
}

impl<'de> DeserializeSeed<'de> for EnvelopeSeed<'_> {
    type Value = LineHead<'de>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for EnvelopeSeed<'_> {
    type Value = LineHead<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a notification envelope")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let (mut at, mut topic, mut body_seen) = (None::<&'de str>, None::<&'de str>, false);
        // A key with escapes cannot be borrowed: the error sends the line to the reference.
        while let Some(key) = map.next_key::<&'de str>()? {
            match key {
                "recordedAt" if at.is_none() => at = Some(map.next_value::<&'de str>()?),
                "topicName" if topic.is_none() => topic = Some(map.next_value::<&'de str>()?),
                "eventBody" if !body_seen => {
                    body_seen = true;
                    // The recordings put the topic first; the other order is left to the reference.
                    let t = topic.ok_or_else(|| fallback("eventBody before topicName"))?;
                    match Topic::of(t) {
                        Topic::ConversationSnapshot => {
                            let body = map.next_value_seed(ObjectSeed::<SnapshotBody>(PhantomData))?;
                            snapshot_events(&body, self.events).ok_or_else(|| fallback("bad connectedTime"))?;
                        }
                        Topic::Transcription => {
                            let body = map.next_value_seed(ObjectSeed::<TranscriptionBody>(PhantomData))?;
                            transcription_events(body, self.events);
                        }
                        Topic::Sentiment => {
                            let body = map.next_value_seed(ObjectSeed::<SentimentBody>(PhantomData))?;
                            self.events.extend(
                                body.sentiment_overall_score
                                    .and_then(normalize_sentiment)
                                    .map(|score| Event::Sentiment { score }),
                            );
                        }
                        Topic::Other => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                "recordedAt" | "topicName" | "eventBody" => return Err(fallback("duplicate key")),
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        let topic_name = topic.ok_or_else(|| fallback("no topicName"))?;
        // The reference requires an object body for the three topics it reads.
        if !body_seen && Topic::of(topic_name) != Topic::Other {
            return Err(fallback("no eventBody"));
        }
        Ok(LineHead { recorded_at: at.ok_or_else(|| fallback("no recordedAt"))?, topic_name })
    }
}

/// A body that must be a JSON object (as the reference requires: a derived struct alone
/// would also accept an array).
struct ObjectSeed<T>(PhantomData<T>);

impl<'de, T: Deserialize<'de>> DeserializeSeed<'de> for ObjectSeed<T> {
    type Value = T;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<T, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de, T: Deserialize<'de>> Visitor<'de> for ObjectSeed<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
        T::deserialize(de::value::MapAccessDeserializer::new(map))
    }
}

/// A string read only to compare or type-check: borrowed from the line unless it has escapes.
#[derive(Default)]
struct Text<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Text<'a>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Borrowed(s)))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(s.to_owned())))
            }
        }
        d.deserialize_str(V(PhantomData))
    }
}

impl Text<'_> {
    fn is(&self, s: &str) -> bool {
        self.0.eq_ignore_ascii_case(s)
    }
}

/// `null` or absent → the type's default, as in the reference.
fn null_default<'de, D: Deserializer<'de>, T: Default + Deserialize<'de>>(d: D) -> Result<T, D::Error> {
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

// The body structs below mirror those of `events.rs` field for field (same names, order and
// JSON types), so that a line one rejects the other rejects too.

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct SnapshotBody<'a> {
    // Read only to type-check it, as the reference does.
    #[allow(dead_code)]
    #[serde(borrow)]
    id: Option<Text<'a>>,
    #[serde(borrow, deserialize_with = "null_default")]
    participants: Vec<Participant<'a>>,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct Participant<'a> {
    #[serde(borrow)]
    purpose: Option<Text<'a>>,
    #[serde(borrow)]
    connected_time: Option<Text<'a>>,
    #[serde(borrow)]
    end_time: Option<Text<'a>>,
    #[serde(borrow, deserialize_with = "null_default")]
    calls: Vec<Communication<'a>>,
    #[serde(borrow, deserialize_with = "null_default")]
    callbacks: Vec<Communication<'a>>,
    #[serde(borrow, deserialize_with = "null_default")]
    chats: Vec<Communication<'a>>,
    #[serde(borrow, deserialize_with = "null_default")]
    emails: Vec<Communication<'a>>,
    #[serde(borrow, deserialize_with = "null_default")]
    messages: Vec<Communication<'a>>,
    #[serde(borrow, deserialize_with = "null_default")]
    videos: Vec<Communication<'a>>,
}

impl Participant<'_> {
    fn communications(&self) -> impl Iterator<Item = &Communication<'_>> {
        self.calls
            .iter()
            .chain(&self.callbacks)
            .chain(&self.chats)
            .chain(&self.emails)
            .chain(&self.messages)
            .chain(&self.videos)
    }
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Communication<'a> {
    #[serde(borrow)]
    state: Option<Text<'a>>,
}

impl Communication<'_> {
    fn state_is(&self, s: &str) -> bool {
        self.state.as_ref().is_some_and(|x| x.is(s))
    }
}

/// The rules of `events::snapshot_events` (genesys-api.md §6.1). `None`: a `connectedTime`
/// that is not RFC 3339 (the reference reports it).
fn snapshot_events(body: &SnapshotBody, out: &mut Vec<Event>) -> Option<()> {
    let parts = &body.participants;
    let all_ended = !parts.is_empty() && parts.iter().all(|p| p.end_time.is_some());
    let mut comms = parts.iter().flat_map(Participant::communications).peekable();
    let all_disconnected =
        comms.peek().is_some() && comms.all(|c| c.state_is("disconnected") || c.state_is("terminated"));
    if all_ended || all_disconnected {
        out.push(Event::ConversationEnded);
        return Some(());
    }
    let mut connected_at: Option<i64> = None;
    let agents = parts.iter().filter(|p| {
        p.purpose.as_ref().is_some_and(|x| x.is("agent")) && p.calls.iter().any(|c| c.state_is("connected"))
    });
    for p in agents {
        if let Some(t) = &p.connected_time {
            let ms = chrono::DateTime::parse_from_rfc3339(&t.0).ok()?.timestamp_millis();
            connected_at = Some(connected_at.map_or(ms, |c| c.min(ms)));
        }
    }
    out.extend(connected_at.map(|at_ms| Event::AgentConnected { at_ms }));
    Some(())
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct TranscriptionBody<'a> {
    // Read only to type-check it, as the reference does.
    #[allow(dead_code)]
    #[serde(borrow)]
    conversation_id: Option<Text<'a>>,
    #[serde(borrow, deserialize_with = "null_default")]
    transcripts: Vec<Transcript<'a>>,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct Transcript<'a> {
    utterance_id: Option<String>,
    is_final: Option<bool>,
    #[serde(borrow)]
    channel: Option<Text<'a>>,
    #[serde(borrow)]
    alternatives: FirstAlternative<'a>,
}

/// `alternatives[0]` kept; the others only type-checked, as the reference decodes them all.
#[derive(Default)]
struct FirstAlternative<'a>(Option<Alternative>, PhantomData<&'a ()>);

#[derive(Deserialize, Default)]
#[serde(default)]
struct Alternative {
    confidence: Option<f64>,
    transcript: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct AlternativeCheck<'a> {
    #[serde(rename = "confidence")]
    _confidence: Option<f64>,
    #[serde(borrow, rename = "transcript")]
    _transcript: Option<Text<'a>>,
}

impl<'de: 'a, 'a> Deserialize<'de> for FirstAlternative<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Seq<'a>(PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for Seq<'a> {
            type Value = FirstAlternative<'a>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a list of alternatives or null")
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(FirstAlternative::default())
            }
            fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(FirstAlternative::default())
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
                d.deserialize_seq(self)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let first = seq.next_element::<Alternative>()?;
                while seq.next_element::<AlternativeCheck<'a>>()?.is_some() {}
                Ok(FirstAlternative(first, PhantomData))
            }
        }
        d.deserialize_option(Seq(PhantomData))
    }
}

/// One `Utterance` per transcript that has at least one alternative, as the reference.
fn transcription_events(body: TranscriptionBody, out: &mut Vec<Event>) {
    for t in body.transcripts {
        let Some(best) = t.alternatives.0 else { continue };
        let channel = match t.channel.as_ref().map(|c| &*c.0) {
            Some("EXTERNAL") => Channel::Customer,
            Some("INTERNAL") => Channel::Agent,
            _ => Channel::Other,
        };
        out.push(Event::Utterance(Utterance {
            is_final: t.is_final.unwrap_or(false),
            channel,
            text: best.transcript.unwrap_or_default(),
            confidence: best.confidence.filter(|c| c.is_finite()),
            utterance_id: t.utterance_id,
        }));
    }
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct SentimentBody<'a> {
    // Read only to type-check it, as the reference does.
    #[allow(dead_code)]
    #[serde(borrow)]
    conversation_id: Option<Text<'a>>,
    sentiment_overall_score: Option<f64>,
}

#[cfg(test)]
mod tests {
    use super::super::events::parse_notification;
    use super::*;

    /// Fast and reference agree: same events when the fast path answers, and the fast path
    /// declines every line the reference rejects.
    fn agree(line: &str) -> bool {
        let mut events = Vec::new();
        let fast = parse_line(line, &mut events);
        let reference = parse_notification(line);
        match (fast, reference) {
            (Some(_), Ok(n)) => {
                assert_eq!(events, n.events, "{line}");
                true
            }
            (Some(_), Err(e)) => panic!("fast path accepted a line the reference rejects ({e}): {line}"),
            (None, _) => false,
        }
    }

    #[test]
    fn every_recorded_line_takes_the_fast_path_with_the_same_events() {
        let dir = super::super::calls_dir();
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).expect("calls dir") {
            let path = entry.expect("entry").path();
            if path.extension().is_none_or(|x| x != "jsonl") {
                continue;
            }
            let text = std::fs::read_to_string(&path).expect("read");
            for line in text.lines().filter(|l| !l.trim().is_empty()) {
                assert!(agree(line), "{}: the fast path declined {line}", path.display());
                n += 1;
            }
        }
        assert!(n > 100, "{n} lines");
    }

    #[test]
    fn odd_lines_agree_or_fall_back() {
        const Q: &str = "v2.routing.queues.q1.conversations";
        const T: &str = "v2.conversations.c1.transcription";
        const S: &str = "v2.speechandtextanalytics.conversation.c1.sentiment";
        let at = r#""recordedAt":"2025-01-01T00:00:00Z""#;
        // (line, the fast path answers it)
        let cases: Vec<(String, bool)> = vec![
            (
                format!(
                    r#"{{{at},"topicName":"{T}","eventBody":{{"transcripts":[{{"isFinal":true,"channel":"EXTERNAL","alternatives":[{{"transcript":"caf\u00e9 \"x\"","confidence":1}},{{"transcript":"b"}}]}}]}}}}"#
                ),
                true,
            ),
            (
                format!(
                    r#"{{{at},"topicName":"{T}","eventBody":{{"transcripts":[{{"alternatives":null}},{{"channel":"BOTH","alternatives":[{{}}]}}]}}}}"#
                ),
                true,
            ),
            (
                format!(r#"{{{at},"topicName":"{T}","eventBody":{{"transcripts":null,"extra":[1,{{"a":null}}]}}}}"#),
                true,
            ),
            (
                format!(
                    r#"{{{at},"topicName":"{T}","eventBody":{{"transcripts":[{{"alternatives":[{{"transcript":"a"}},{{"confidence":"high"}}]}}]}}}}"#
                ),
                false,
            ),
            (format!(r#"{{{at},"topicName":"{T}","eventBody":{{"transcripts":[{{"isFinal":"yes"}}]}}}}"#), false),
            (format!(r#"{{{at},"topicName":"{T}","eventBody":[]}}"#), false),
            (format!(r#"{{{at},"topicName":"{T}","eventBody":null}}"#), false),
            (format!(r#"{{{at},"topicName":"{T}"}}"#), false),
            (format!(r#"{{{at},"eventBody":{{"transcripts":[]}},"topicName":"{T}"}}"#), false),
            (format!(r#"{{{at},"topicName":"{T}","topicName":"{T}","eventBody":{{}}}}"#), false),
            (format!(r#"{{{at},"topicName":"channel.metadata","eventBody":"anything"}}"#), true),
            (format!(r#"{{{at},"topicName":"channel.metadata"}}"#), true),
            (format!(r#"{{{at},"topicName":7,"eventBody":{{}}}}"#), false),
            (format!(r#"{{{at},"topicName":"{S}","eventBody":{{"sentimentOverallScore":-47}}}}"#), true),
            (format!(r#"{{{at},"topicName":"{S}","eventBody":{{"sentimentOverallScore":"bad"}}}}"#), false),
            (
                format!(
                    r#"{{{at},"topicName":"{Q}","eventBody":{{"participants":[{{"purpose":"Agent","connectedTime":"2025-01-01T00:00:01Z","calls":[{{"state":"CONNECTED"}}]}}]}}}}"#
                ),
                true,
            ),
            (
                format!(
                    r#"{{{at},"topicName":"{Q}","eventBody":{{"participants":[{{"purpose":"agent","connectedTime":"soon","calls":[{{"state":"connected"}}]}}]}}}}"#
                ),
                false,
            ),
            (
                format!(
                    r#"{{{at},"topicName":"{Q}","eventBody":{{"participants":[{{"endTime":"x","calls":[{{"state":"terminated"}}]}}]}}}}"#
                ),
                true,
            ),
            (format!(r#"{{{at},"topicName":"{Q}","eventBody":{{"participants":{{"a":1}}}}}}"#), false),
            (format!(r#"{{{at},"topicName":"{Q}","eventBody":{{"participants":[]}}}} trailing"#), false),
            (format!(r#"{{"recorded\u0041t":"x","topicName":"{T}","eventBody":{{}}}}"#), false),
            (format!(r#"{{"topicName":"{T}","eventBody":{{}}}}"#), false),
            ("[1,2]".to_string(), false),
            ("not json".to_string(), false),
        ];
        for (line, fast) in &cases {
            assert_eq!(agree(line), *fast, "{line}");
        }
    }
}
