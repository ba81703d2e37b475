//! The JSON Schema (draft 2020-12) of the injection payload, built from the same bounds as
//! validation (`limits`), so other tools can check payloads against the same contract.
//!
//! Written out by hand rather than derived: the per-type rules of trigger conditions
//! (`if`/`then`) and the exact bounds are the point of the schema, and a derive would lose
//! them. Two rules JSON Schema cannot say are carried as annotations: the serialized size
//! and nesting depth of `contextData` (`x-maxSerializedBytes`, `x-maxDepth`).

use serde_json::{json, Value};

use super::limits::*;
use super::payload::{ConditionKind, OnCapacity, Polarity, Priority};

/// The hyphenated UUID form validation accepts, any version, either case.
pub const UUID_PATTERN: &str = "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$";

fn uuid(description: &str) -> Value {
    json!({"type": "string", "format": "uuid", "pattern": UUID_PATTERN, "description": description})
}

fn http_url(description: &str) -> Value {
    json!({
        "type": "string", "format": "uri", "pattern": "^[hH][tT][tT][pP][sS]?://",
        "maxLength": URL_MAX_CHARS, "description": description,
    })
}

/// Inline prompt content (also the shape of a catalogue entry's content).
pub fn prompt_content_schema() -> Value {
    json!({
        "type": "object",
        "description": "Inline prompt content; without it the content comes from the prompt catalogue by promptId.",
        "additionalProperties": false,
        "required": ["title", "body"],
        "properties": {
            "title": {"type": "string", "minLength": 1, "maxLength": TITLE_MAX_CHARS, "pattern": "\\S"},
            "body": {"type": "string", "minLength": 1, "maxLength": BODY_MAX_CHARS, "pattern": "\\S"},
            "url": http_url("A link the agent can open for more."),
            "priority": {"enum": Priority::ALL, "default": "normal"},
        },
    })
}

fn condition_schema() -> Value {
    let kind = |k: ConditionKind| json!({"properties": {"type": {"const": k.as_str()}}, "required": ["type"]});
    json!({
        "type": "object",
        "additionalProperties": false,
        "required": ["type", "value"],
        "properties": {
            "type": {"enum": ConditionKind::ALL},
            "value": {"type": ["string", "number"]},
            "threshold": {"type": "number", "minimum": THRESHOLD_MIN, "maximum": THRESHOLD_MAX},
        },
        "allOf": [
            {
                "if": kind(ConditionKind::Keyword),
                "then": {"properties": {"value": {
                    "type": "string", "minLength": 1, "maxLength": KEYWORD_MAX_CHARS, "pattern": "\\S",
                    "description": "The phrase, matched as whole words in customer speech.",
                }}},
            },
            {
                "if": kind(ConditionKind::Sentiment),
                "then": {"properties": {
                    "value": {"enum": Polarity::ALL},
                    "threshold": {"default": DEFAULT_SENTIMENT_THRESHOLD},
                }},
            },
            {
                "if": kind(ConditionKind::Duration),
                "then": {
                    "properties": {"value": {
                        "type": "integer", "minimum": DURATION_MIN_SECS, "maximum": DURATION_MAX_SECS,
                        "description": "Seconds since the agent was connected.",
                    }},
                    "not": {"required": ["threshold"]},
                },
            },
            {
                "if": kind(ConditionKind::Confidence),
                "then": {"properties": {"value": {"const": CONFIDENCE_VALUE}}, "required": ["threshold"]},
            },
        ],
    })
}

/// The JSON Schema of the injection payload.
pub fn json_schema() -> Value {
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "gc-assist prompt injection",
        "description": "Payload of POST /v1/prompt-injections (CONTRACT.md §1). Unknown fields are rejected.",
        "type": "object",
        "additionalProperties": false,
        "required": ["conversationId", "promptId", "triggerConditions", "displaySettings"],
        "properties": {
            "conversationId": uuid("The Genesys Cloud conversation to prompt in."),
            "promptId": uuid("The prompt to show: a catalogue id, or the id of the inline prompt."),
            "triggerConditions": {
                "type": "array", "minItems": 0, "maxItems": MAX_CONDITIONS, "items": condition_schema(),
                "description": "All must hold before the prompt fires; empty fires at once.",
            },
            "displaySettings": {
                "type": "object",
                "additionalProperties": false,
                "required": ["delayMs", "maxConcurrentPrompts", "autoDismissMs"],
                "properties": {
                    "delayMs": {"type": "number", "minimum": DELAY_MS_MIN, "maximum": DELAY_MS_MAX},
                    "maxConcurrentPrompts": {
                        "type": "integer", "minimum": MAX_CONCURRENT_MIN, "maximum": MAX_CONCURRENT_MAX,
                    },
                    "autoDismissMs": {"type": "number", "minimum": AUTO_DISMISS_MS_MIN, "maximum": AUTO_DISMISS_MS_MAX},
                },
            },
            "webhookUrl": http_url("Where signed webhook events for this injection are sent."),
            "contextData": {
                "type": "object",
                "description": "Opaque context echoed to the webhook.",
                "x-maxSerializedBytes": CONTEXT_MAX_BYTES,
                "x-maxDepth": CONTEXT_MAX_DEPTH,
            },
            "prompt": prompt_content_schema(),
            "onCapacity": {"enum": OnCapacity::ALL, "default": "queue"},
            "queueTimeoutMs": {
                "type": "number", "minimum": QUEUE_TIMEOUT_MS_MIN, "maximum": QUEUE_TIMEOUT_MS_MAX,
                "default": QUEUE_TIMEOUT_MS_DEFAULT,
            },
        },
    })
}
