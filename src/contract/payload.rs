//! The typed injection payload: what a valid payload *is*, once validation has proved it.
//!
//! `ValidPayload` has private fields and no public constructor, so holding one is proof
//! that every rule of CONTRACT.md §1 held ("parse, don't validate"). Defaults the wire
//! form leaves out (sentiment threshold, `onCapacity`, `queueTimeoutMs`, priority) are
//! filled in here, so consumers never re-derive them.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use uuid::Uuid;

use super::issue::Issues;
use super::limits;

/// Which way the customer's sentiment must lean for a sentiment condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Polarity {
    Positive,
    Negative,
    Neutral,
}

impl Polarity {
    pub const ALL: [&'static str; 3] = ["positive", "negative", "neutral"];

    pub fn as_str(self) -> &'static str {
        match self {
            Polarity::Positive => "positive",
            Polarity::Negative => "negative",
            Polarity::Neutral => "neutral",
        }
    }
}

impl FromStr for Polarity {
    type Err = ();
    fn from_str(s: &str) -> Result<Polarity, ()> {
        match s {
            "positive" => Ok(Polarity::Positive),
            "negative" => Ok(Polarity::Negative),
            "neutral" => Ok(Polarity::Neutral),
            _ => Err(()),
        }
    }
}

/// The four condition types of CONTRACT.md §3.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConditionKind {
    Keyword,
    Sentiment,
    Duration,
    Confidence,
}

impl ConditionKind {
    pub const ALL: [&'static str; 4] = ["keyword", "sentiment", "duration", "confidence"];

    pub fn as_str(self) -> &'static str {
        match self {
            ConditionKind::Keyword => "keyword",
            ConditionKind::Sentiment => "sentiment",
            ConditionKind::Duration => "duration",
            ConditionKind::Confidence => "confidence",
        }
    }
}

impl FromStr for ConditionKind {
    type Err = ();
    fn from_str(s: &str) -> Result<ConditionKind, ()> {
        match s {
            "keyword" => Ok(ConditionKind::Keyword),
            "sentiment" => Ok(ConditionKind::Sentiment),
            "duration" => Ok(ConditionKind::Duration),
            "confidence" => Ok(ConditionKind::Confidence),
            _ => Err(()),
        }
    }
}

/// One trigger condition, with the meaning of `value` already decoded per type.
#[derive(Debug, Clone, PartialEq)]
pub enum TriggerCondition {
    /// The customer said `phrase` (whole words); if `threshold` is set, with at least that
    /// ASR confidence.
    Keyword { phrase: String, threshold: Option<f64> },
    /// Overall sentiment leans `polarity` by at least `threshold` (default 0.5).
    Sentiment { polarity: Polarity, threshold: f64 },
    /// The agent has been connected at least `seconds`.
    Duration { seconds: u32 },
    /// The latest final customer utterance has ASR confidence ≥ `threshold`.
    Confidence { threshold: f64 },
}

impl TriggerCondition {
    pub fn kind(&self) -> ConditionKind {
        match self {
            TriggerCondition::Keyword { .. } => ConditionKind::Keyword,
            TriggerCondition::Sentiment { .. } => ConditionKind::Sentiment,
            TriggerCondition::Duration { .. } => ConditionKind::Duration,
            TriggerCondition::Confidence { .. } => ConditionKind::Confidence,
        }
    }

    /// The wire form `{type, value, threshold?}`, defaults written out.
    pub fn to_json(&self) -> Value {
        match self {
            TriggerCondition::Keyword { phrase, threshold: None } => json!({"type": "keyword", "value": phrase}),
            TriggerCondition::Keyword { phrase, threshold: Some(t) } => {
                json!({"type": "keyword", "value": phrase, "threshold": t})
            }
            TriggerCondition::Sentiment { polarity, threshold } => {
                json!({"type": "sentiment", "value": polarity.as_str(), "threshold": threshold})
            }
            TriggerCondition::Duration { seconds } => json!({"type": "duration", "value": seconds}),
            TriggerCondition::Confidence { threshold } => {
                json!({"type": "confidence", "value": limits::CONFIDENCE_VALUE, "threshold": threshold})
            }
        }
    }
}

/// The agent-attention limits of one prompt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DisplaySettings {
    /// Wait this long after admission before showing (500–5000).
    pub delay_ms: u64,
    /// At most this many prompts shown at once in the conversation (1–3).
    pub max_concurrent_prompts: u8,
    /// Hide the prompt after this long (10000–60000).
    pub auto_dismiss_ms: u64,
}

impl DisplaySettings {
    pub fn to_json(&self) -> Value {
        json!({
            "delayMs": self.delay_ms,
            "maxConcurrentPrompts": self.max_concurrent_prompts,
            "autoDismissMs": self.auto_dismiss_ms,
        })
    }
}

/// How urgent a prompt is; orders the capacity queue. `Critical` is the highest.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    Low,
    #[default]
    Normal,
    High,
    Critical,
}

impl Priority {
    pub const ALL: [&'static str; 4] = ["low", "normal", "high", "critical"];

    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Low => "low",
            Priority::Normal => "normal",
            Priority::High => "high",
            Priority::Critical => "critical",
        }
    }
}

impl FromStr for Priority {
    type Err = ();
    fn from_str(s: &str) -> Result<Priority, ()> {
        match s {
            "low" => Ok(Priority::Low),
            "normal" => Ok(Priority::Normal),
            "high" => Ok(Priority::High),
            "critical" => Ok(Priority::Critical),
            _ => Err(()),
        }
    }
}

impl fmt::Display for Priority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the agent sees: inline in a payload or from the catalogue.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PromptContent {
    pub title: String,
    pub body: String,
    pub url: Option<url::Url>,
    pub priority: Priority,
}

impl PromptContent {
    /// The wire form `{title, body, url?, priority}`.
    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("title".into(), Value::String(self.title.clone()));
        m.insert("body".into(), Value::String(self.body.clone()));
        if let Some(u) = &self.url {
            m.insert("url".into(), Value::String(u.to_string()));
        }
        m.insert("priority".into(), Value::String(self.priority.as_str().into()));
        Value::Object(m)
    }
}

/// What to do when the conversation has no free display slot.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnCapacity {
    /// Wait for a free slot, up to `queueTimeoutMs`.
    #[default]
    Queue,
    /// Answer 409 at once, like the tutorial.
    Reject,
}

impl OnCapacity {
    pub const ALL: [&'static str; 2] = ["queue", "reject"];

    pub fn as_str(self) -> &'static str {
        match self {
            OnCapacity::Queue => "queue",
            OnCapacity::Reject => "reject",
        }
    }
}

impl FromStr for OnCapacity {
    type Err = ();
    fn from_str(s: &str) -> Result<OnCapacity, ()> {
        match s {
            "queue" => Ok(OnCapacity::Queue),
            "reject" => Ok(OnCapacity::Reject),
            _ => Err(()),
        }
    }
}

/// An injection payload that passed every rule. Build one with
/// [`validate_json`](super::validate_json) or [`validate_value`](super::validate_value);
/// it also deserializes through validation, so a stored payload is re-checked on load.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidPayload {
    pub(super) conversation_id: Uuid,
    pub(super) prompt_id: Uuid,
    pub(super) trigger_conditions: Vec<TriggerCondition>,
    pub(super) display: DisplaySettings,
    pub(super) webhook_url: Option<url::Url>,
    pub(super) context_data: Option<Map<String, Value>>,
    pub(super) prompt: Option<PromptContent>,
    pub(super) on_capacity: OnCapacity,
    pub(super) queue_timeout_ms: u64,
}

impl ValidPayload {
    pub fn conversation_id(&self) -> Uuid {
        self.conversation_id
    }

    pub fn prompt_id(&self) -> Uuid {
        self.prompt_id
    }

    pub fn trigger_conditions(&self) -> &[TriggerCondition] {
        &self.trigger_conditions
    }

    pub fn display(&self) -> DisplaySettings {
        self.display
    }

    pub fn webhook_url(&self) -> Option<&url::Url> {
        self.webhook_url.as_ref()
    }

    pub fn context_data(&self) -> Option<&Map<String, Value>> {
        self.context_data.as_ref()
    }

    pub fn inline_prompt(&self) -> Option<&PromptContent> {
        self.prompt.as_ref()
    }

    pub fn on_capacity(&self) -> OnCapacity {
        self.on_capacity
    }

    pub fn queue_timeout_ms(&self) -> u64 {
        self.queue_timeout_ms
    }

    /// The canonical camelCase form for storage: lower-case UUIDs, defaults written out,
    /// fields in contract order. Validating it again yields an equal payload.
    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("conversationId".into(), Value::String(self.conversation_id.hyphenated().to_string()));
        m.insert("promptId".into(), Value::String(self.prompt_id.hyphenated().to_string()));
        m.insert(
            "triggerConditions".into(),
            Value::Array(self.trigger_conditions.iter().map(TriggerCondition::to_json).collect()),
        );
        m.insert("displaySettings".into(), self.display.to_json());
        if let Some(u) = &self.webhook_url {
            m.insert("webhookUrl".into(), Value::String(u.to_string()));
        }
        if let Some(c) = &self.context_data {
            m.insert("contextData".into(), Value::Object(c.clone()));
        }
        if let Some(p) = &self.prompt {
            m.insert("prompt".into(), p.to_json());
        }
        m.insert("onCapacity".into(), Value::String(self.on_capacity.as_str().into()));
        m.insert("queueTimeoutMs".into(), Value::from(self.queue_timeout_ms));
        Value::Object(m)
    }
}

/// A [`ValidPayload`] taken apart, so the service can keep live injections compactly (shared
/// prompt content, no empty optional fields inline) and put the payload back together when
/// it is needed. Only a payload that passed validation is ever taken apart, so putting its
/// parts back together needs no validation again.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct PayloadParts {
    pub conversation_id: Uuid,
    pub prompt_id: Uuid,
    pub trigger_conditions: Vec<TriggerCondition>,
    pub display: DisplaySettings,
    pub webhook_url: Option<url::Url>,
    pub context_data: Option<Map<String, Value>>,
    pub prompt: Option<PromptContent>,
    pub on_capacity: OnCapacity,
    pub queue_timeout_ms: u64,
}

impl ValidPayload {
    pub(crate) fn into_parts(self) -> PayloadParts {
        PayloadParts {
            conversation_id: self.conversation_id,
            prompt_id: self.prompt_id,
            trigger_conditions: self.trigger_conditions,
            display: self.display,
            webhook_url: self.webhook_url,
            context_data: self.context_data,
            prompt: self.prompt,
            on_capacity: self.on_capacity,
            queue_timeout_ms: self.queue_timeout_ms,
        }
    }

    /// The payload whose [`ValidPayload::into_parts`] gave `p`.
    pub(crate) fn from_parts(p: PayloadParts) -> ValidPayload {
        ValidPayload {
            conversation_id: p.conversation_id,
            prompt_id: p.prompt_id,
            trigger_conditions: p.trigger_conditions,
            display: p.display,
            webhook_url: p.webhook_url,
            context_data: p.context_data,
            prompt: p.prompt,
            on_capacity: p.on_capacity,
            queue_timeout_ms: p.queue_timeout_ms,
        }
    }
}

impl Serialize for ValidPayload {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.to_json().serialize(s)
    }
}

impl<'de> Deserialize<'de> for ValidPayload {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<ValidPayload, D::Error> {
        let v = Value::deserialize(d)?;
        super::validate_value(&v).map_err(serde::de::Error::custom)
    }
}

impl TryFrom<&Value> for ValidPayload {
    type Error = Issues;
    fn try_from(v: &Value) -> Result<ValidPayload, Issues> {
        super::validate_value(v)
    }
}

impl TryFrom<Value> for ValidPayload {
    type Error = Issues;
    fn try_from(v: Value) -> Result<ValidPayload, Issues> {
        super::validate_value(&v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn priority_orders_critical_highest_and_defaults_to_normal() {
        let mut ps = vec![Priority::Critical, Priority::Low, Priority::High, Priority::Normal];
        ps.sort();
        assert_eq!(ps, [Priority::Low, Priority::Normal, Priority::High, Priority::Critical]);
        assert_eq!(Priority::default(), Priority::Normal);
        assert_eq!(serde_json::to_value(Priority::High).unwrap(), json!("high"));
        assert_eq!(serde_json::from_value::<Priority>(json!("critical")).unwrap(), Priority::Critical);
        for name in Priority::ALL {
            assert_eq!(name.parse::<Priority>().unwrap().as_str(), name);
        }
    }

    #[test]
    fn conditions_serialize_to_the_wire_form() {
        let cases = [
            (
                TriggerCondition::Keyword { phrase: "refund".into(), threshold: None },
                json!({"type":"keyword","value":"refund"}),
            ),
            (
                TriggerCondition::Keyword { phrase: "refund".into(), threshold: Some(0.8) },
                json!({"type":"keyword","value":"refund","threshold":0.8}),
            ),
            (
                TriggerCondition::Sentiment { polarity: Polarity::Negative, threshold: 0.7 },
                json!({"type":"sentiment","value":"negative","threshold":0.7}),
            ),
            (TriggerCondition::Duration { seconds: 90 }, json!({"type":"duration","value":90})),
            (
                TriggerCondition::Confidence { threshold: 0.9 },
                json!({"type":"confidence","value":"transcript","threshold":0.9}),
            ),
        ];
        for (c, want) in cases {
            assert_eq!(c.to_json(), want);
            assert_eq!(c.kind().as_str(), want["type"]);
        }
    }
}
