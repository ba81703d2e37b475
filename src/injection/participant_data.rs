//! The participant-data channel's key layout: how a prompt is written into the agent
//! participant's attributes, read back, and counted against the agent's attention limits.
//!
//! Genesys participant attributes are a flat `string → string` map that Scripts, Architect
//! flows and analytics can read, merged key by key on PATCH. Whether an empty value
//! deletes a key is unconfirmed, so gc-assist never deletes: a dismissed or expired
//! prompt is *marked* by rewriting its status. Layout, with the default prefix `gcAssist`:
//!
//! | key | value |
//! |---|---|
//! | `gcAssist.prompt.{injectionId}` | compact JSON: `{"v":1,"promptId","title","url"?,"priority","status","shownAt","expiresAt"}` |
//! | `gcAssist.lastInjectionId` | the injection shown most recently |
//! | `gcAssist.lastPromptId` | its prompt id (easy to branch on in Architect) |
//!
//! `status` is `shown`, `dismissed`, `clicked`, `withdrawn` or `expired`. The body is not
//! copied (values should stay well under 1 KB); readers follow `url` or ask gc-assist.

use std::collections::BTreeMap;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::contract::{Priority, PromptContent};

/// Longest URL copied into an attribute; longer ones are left out rather than truncated,
/// because a truncated link is worse than none.
const MAX_URL_LEN: usize = 512;

/// One prompt as stored in a participant attribute.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PromptAttribute {
    pub v: u8,
    pub prompt_id: Uuid,
    pub title: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    pub priority: Priority,
    pub status: String,
    #[serde(with = "millis")]
    pub shown_at: DateTime<Utc>,
    #[serde(with = "millis")]
    pub expires_at: DateTime<Utc>,
}

/// Timestamps in the Genesys style, RFC 3339 UTC with milliseconds; readers in Architect
/// and Scripts compare them as text, so the width must not vary.
mod millis {
    use chrono::{DateTime, Utc};
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::timestamp(*t))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        let text = String::deserialize(d)?;
        DateTime::parse_from_rfc3339(&text).map(|t| t.with_timezone(&Utc)).map_err(serde::de::Error::custom)
    }
}

impl PromptAttribute {
    /// A prompt that is on screen from `shown_at` for `auto_dismiss_ms`.
    pub fn shown(prompt_id: Uuid, content: &PromptContent, shown_at: DateTime<Utc>, auto_dismiss_ms: u64) -> Self {
        // Whole milliseconds, so what is written reads back equal.
        let shown_at = DateTime::from_timestamp_millis(shown_at.timestamp_millis()).unwrap_or(shown_at);
        let url = content.url.as_ref().map(|u| u.to_string()).filter(|u| u.len() <= MAX_URL_LEN);
        PromptAttribute {
            v: 1,
            prompt_id,
            title: content.title.clone(),
            url,
            priority: content.priority,
            status: "shown".into(),
            shown_at,
            expires_at: shown_at + chrono::Duration::milliseconds(auto_dismiss_ms.min(i64::MAX as u64) as i64),
        }
    }

    /// Whether this prompt still occupies one of the agent's slots at `now`.
    pub fn occupies_slot(&self, now: DateTime<Utc>) -> bool {
        self.status == "shown" && self.expires_at > now
    }

    fn encode(&self) -> String {
        // Serialising a struct of strings, a uuid and timestamps cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// The attribute key of one injection.
pub fn prompt_key(prefix: &str, injection_id: Uuid) -> String {
    format!("{prefix}.prompt.{injection_id}")
}

/// The attributes to PATCH to show a prompt.
pub fn show_attributes(prefix: &str, injection_id: Uuid, prompt: &PromptAttribute) -> BTreeMap<String, String> {
    BTreeMap::from([
        (prompt_key(prefix, injection_id), prompt.encode()),
        (format!("{prefix}.lastInjectionId"), injection_id.to_string()),
        (format!("{prefix}.lastPromptId"), prompt.prompt_id.to_string()),
    ])
}

/// The attributes to PATCH to mark a prompt with a final status (dismissed, expired…).
pub fn mark_attributes(
    prefix: &str,
    injection_id: Uuid,
    prompt: &PromptAttribute,
    status: &str,
) -> BTreeMap<String, String> {
    let mut marked = prompt.clone();
    marked.status = status.to_string();
    BTreeMap::from([(prompt_key(prefix, injection_id), marked.encode())])
}

/// Prompts found in a participant's attributes, by injection id. Values that are not
/// ours or not parseable (another integration wrote them) are skipped, not errors.
pub fn read_prompts(prefix: &str, attributes: &BTreeMap<String, String>) -> Vec<(Uuid, PromptAttribute)> {
    let head = format!("{prefix}.prompt.");
    attributes
        .iter()
        .filter_map(|(k, v)| {
            let id = Uuid::parse_str(k.strip_prefix(&head)?).ok()?;
            let p: PromptAttribute = serde_json::from_str(v).ok()?;
            Some((id, p))
        })
        .collect()
}

/// How many prompts occupy a slot at `now`, and when the earliest of them frees it.
pub fn occupancy(prompts: &[(Uuid, PromptAttribute)], now: DateTime<Utc>) -> (usize, Option<DateTime<Utc>>) {
    let live: Vec<_> = prompts.iter().filter(|(_, p)| p.occupies_slot(now)).collect();
    (live.len(), live.iter().map(|(_, p)| p.expires_at).min())
}

/// RFC 3339 with milliseconds, the Genesys timestamp style.
pub fn timestamp(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn content() -> PromptContent {
        PromptContent {
            title: "Refund policy".into(),
            body: "Offer a refund within 30 days.".into(),
            url: Some(url::Url::parse("https://kb.example.com/refunds").unwrap()),
            priority: Priority::High,
        }
    }

    #[test]
    fn show_then_read_back() {
        let t0 = DateTime::parse_from_rfc3339("2025-03-04T10:15:30.250Z").unwrap().with_timezone(&Utc);
        let id = Uuid::now_v7();
        let pid = Uuid::new_v4();
        let p = PromptAttribute::shown(pid, &content(), t0, 30_000);
        let attrs = show_attributes("gcAssist", id, &p);
        assert!(attrs[&format!("gcAssist.prompt.{id}")].len() < 1024);
        assert_eq!(attrs["gcAssist.lastPromptId"], pid.to_string());
        let mut all = attrs.clone();
        all.insert("other.key".into(), "x".into());
        all.insert("gcAssist.prompt.not-a-uuid".into(), "{}".into());
        let read = read_prompts("gcAssist", &all);
        assert_eq!(read, vec![(id, p.clone())]);
        assert_eq!(occupancy(&read, t0), (1, Some(p.expires_at)));
        assert_eq!(occupancy(&read, t0 + chrono::Duration::seconds(30)).0, 0, "expired at autoDismiss");
        let marked = mark_attributes("gcAssist", id, &p, "dismissed");
        let read = read_prompts("gcAssist", &marked);
        assert_eq!(read[0].1.status, "dismissed");
        assert_eq!(occupancy(&read, t0).0, 0, "a dismissed prompt frees its slot");
    }

    #[test]
    fn long_urls_are_left_out() {
        let mut c = content();
        c.url = Some(url::Url::parse(&format!("https://kb.example.com/{}", "a".repeat(600))).unwrap());
        let p = PromptAttribute::shown(Uuid::new_v4(), &c, Utc::now(), 10_000);
        assert_eq!(p.url, None);
    }
}
