//! The live injections (armed, scheduled, queued, delivered) the service keeps in memory,
//! stored compactly.
//!
//! # Why not a map of [`InjectionRow`]s
//!
//! An `InjectionRow` is 800 bytes inline (the payload alone is 400: two optional URLs, the
//! optional context map and the optional inline prompt are all held inline, empty or not),
//! and a hash map holds its values in its bucket array, empty buckets included. With 20,000
//! live injections that array alone was 27 MB (BENCHMARKS.md, RSS). Here each live
//! injection is a ~200-byte [`Entry`]: the times as plain `i64`s, the prompt content and the
//! short ids that repeat across injections (API key, rule, queue, agent) shared through an
//! interner, and the fields most injections leave empty (webhook URL, context data, last
//! error) behind one optional box. [`LiveSet::get`] puts the full row back together; that
//! costs what cloning a stored row did, so the hot path pays nothing extra.
//!
//! Interned values are dropped when no live injection uses them any more (see
//! [`Interner::prune`]), so the interner never outgrows the live set.

use std::collections::{HashMap, HashSet};
use std::hash::Hash;
use std::sync::Arc;

use serde_json::{Map, Value};
use uuid::Uuid;

use crate::contract::payload::{PayloadParts, TriggerCondition};
use crate::contract::{DisplaySettings, OnCapacity, Priority, PromptContent, ValidPayload};
use crate::store::{InjectionRow, InjectionStatus, Source};

/// Stands for `None` in the optional times (epoch ms; no real time is this far back).
const NO_TIME: i64 = i64::MIN;

fn pack(t: Option<i64>) -> i64 {
    t.unwrap_or(NO_TIME)
}

fn unpack(t: i64) -> Option<i64> {
    (t != NO_TIME).then_some(t)
}

/// Shares equal values: the first one stored is handed out to every later equal one.
#[derive(Debug)]
struct Interner<T: ?Sized + Eq + Hash> {
    set: HashSet<Arc<T>>,
    /// Prune when the set reaches this size (twice its size after the last prune).
    prune_at: usize,
}

impl<T: ?Sized + Eq + Hash> Default for Interner<T> {
    fn default() -> Self {
        Interner { set: HashSet::new(), prune_at: 64 }
    }
}

impl<T: ?Sized + Eq + Hash> Interner<T> {
    fn intern(&mut self, v: Arc<T>) -> Arc<T> {
        if let Some(shared) = self.set.get(&v) {
            return shared.clone();
        }
        if self.set.len() >= self.prune_at {
            self.prune();
        }
        self.set.insert(v.clone());
        v
    }

    /// Forgets values only the interner still holds. Amortised: runs when the set has
    /// doubled since the last prune, so each intern pays O(1) on average.
    fn prune(&mut self) {
        self.set.retain(|v| Arc::strong_count(v) > 1);
        self.prune_at = (self.set.len() * 2).max(64);
    }
}

/// The fields most live injections leave empty.
#[derive(Debug, Clone)]
struct Rare {
    webhook_url: Option<url::Url>,
    context_data: Option<Map<String, Value>>,
    last_error: Option<String>,
    /// The payload's conversation and prompt ids when they are not the row's (never, for
    /// rows made by `InjectionRow::new`; kept so a row always comes back as it went in).
    payload_ids: Option<(Uuid, Uuid)>,
}

/// One live injection, compactly (the id is the map key).
#[derive(Debug, Clone)]
struct Entry {
    conversation_id: Uuid,
    prompt_id: Uuid,
    status: InjectionStatus,
    priority: Priority,
    source: Source,
    on_capacity: OnCapacity,
    display: DisplaySettings,
    queue_timeout_ms: u64,
    created_at: i64,
    updated_at: i64,
    admitted_at: i64,
    show_at: i64,
    expires_at: i64,
    queue_deadline: i64,
    /// The resolved content (shared with every live injection showing the same prompt).
    content: Arc<PromptContent>,
    /// The payload's inline prompt, if any (usually the same shared value as `content`).
    inline_prompt: Option<Arc<PromptContent>>,
    conditions: Box<[TriggerCondition]>,
    api_key_id: Option<Arc<str>>,
    rule_id: Option<Arc<str>>,
    queue_id: Option<Arc<str>>,
    agent_id: Option<Arc<str>>,
    rare: Option<Box<Rare>>,
}

/// The live injections by id, compactly (see the module docs).
#[derive(Debug, Default)]
pub struct LiveSet {
    map: HashMap<Uuid, Entry>,
    contents: Interner<PromptContent>,
    words: Interner<str>,
}

impl LiveSet {
    pub fn new() -> LiveSet {
        LiveSet::default()
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn contains(&self, id: &Uuid) -> bool {
        self.map.contains_key(id)
    }

    /// Stores `row` (replacing the row of the same id).
    pub fn insert(&mut self, row: InjectionRow) {
        let p = row.payload.into_parts();
        let content = self.contents.intern(Arc::new(row.content));
        let inline_prompt =
            p.prompt.map(|c| if c == *content { content.clone() } else { self.contents.intern(Arc::new(c)) });
        let mut word = |s: Option<String>| s.map(|s| self.words.intern(Arc::from(s)));
        let (api_key_id, rule_id, queue_id, agent_id) =
            (word(row.api_key_id), word(row.rule_id), word(row.queue_id), word(row.agent_id));
        let payload_ids = ((p.conversation_id, p.prompt_id) != (row.conversation_id, row.prompt_id))
            .then_some((p.conversation_id, p.prompt_id));
        let rare =
            (p.webhook_url.is_some() || p.context_data.is_some() || row.last_error.is_some() || payload_ids.is_some())
                .then(|| {
                    Box::new(Rare {
                        webhook_url: p.webhook_url,
                        context_data: p.context_data,
                        last_error: row.last_error,
                        payload_ids,
                    })
                });
        let entry = Entry {
            conversation_id: row.conversation_id,
            prompt_id: row.prompt_id,
            status: row.status,
            priority: row.priority,
            source: row.source,
            on_capacity: p.on_capacity,
            display: p.display,
            queue_timeout_ms: p.queue_timeout_ms,
            created_at: row.created_at,
            updated_at: row.updated_at,
            admitted_at: pack(row.admitted_at),
            show_at: pack(row.show_at),
            expires_at: pack(row.expires_at),
            queue_deadline: pack(row.queue_deadline),
            content,
            inline_prompt,
            conditions: p.trigger_conditions.into_boxed_slice(),
            api_key_id,
            rule_id,
            queue_id,
            agent_id,
            rare,
        };
        self.map.insert(row.id, entry);
    }

    /// The full row of a live injection.
    pub fn get(&self, id: &Uuid) -> Option<InjectionRow> {
        self.map.get(id).map(|e| row_of(*id, e))
    }

    pub fn remove(&mut self, id: &Uuid) -> bool {
        self.map.remove(id).is_some()
    }

    /// Live injections by status.
    pub fn status_counts(&self) -> HashMap<InjectionStatus, usize> {
        let mut out = HashMap::new();
        for e in self.map.values() {
            *out.entry(e.status).or_insert(0) += 1;
        }
        out
    }

    /// The injections armed on a conversation, with their conditions, in arming order (v7 ids).
    pub fn armed_on(&self, conversation_id: Uuid) -> Vec<(Uuid, Vec<TriggerCondition>)> {
        let mut out: Vec<(Uuid, Vec<TriggerCondition>)> = self
            .map
            .iter()
            .filter(|(_, e)| e.conversation_id == conversation_id && e.status == InjectionStatus::Armed)
            .map(|(id, e)| (*id, e.conditions.to_vec()))
            .collect();
        out.sort_by_key(|(id, _)| *id);
        out
    }

    /// The full rows of a conversation's live injections in `status`.
    pub fn rows_on(&self, conversation_id: Uuid, status: InjectionStatus) -> Vec<InjectionRow> {
        self.map
            .iter()
            .filter(|(_, e)| e.conversation_id == conversation_id && e.status == status)
            .map(|(id, e)| row_of(*id, e))
            .collect()
    }

    /// Whether any injection of the conversation is live.
    pub fn any_on(&self, conversation_id: Uuid) -> bool {
        self.map.values().any(|e| e.conversation_id == conversation_id)
    }
}

fn row_of(id: Uuid, e: &Entry) -> InjectionRow {
    let rare = e.rare.as_deref();
    let (conversation_id, prompt_id) = rare.and_then(|r| r.payload_ids).unwrap_or((e.conversation_id, e.prompt_id));
    let payload = ValidPayload::from_parts(PayloadParts {
        conversation_id,
        prompt_id,
        trigger_conditions: e.conditions.to_vec(),
        display: e.display,
        webhook_url: rare.and_then(|r| r.webhook_url.clone()),
        context_data: rare.and_then(|r| r.context_data.clone()),
        prompt: e.inline_prompt.as_deref().cloned(),
        on_capacity: e.on_capacity,
        queue_timeout_ms: e.queue_timeout_ms,
    });
    let word = |s: &Option<Arc<str>>| s.as_deref().map(str::to_string);
    InjectionRow {
        id,
        conversation_id: e.conversation_id,
        prompt_id: e.prompt_id,
        status: e.status,
        payload,
        content: (*e.content).clone(),
        priority: e.priority,
        source: e.source,
        api_key_id: word(&e.api_key_id),
        rule_id: word(&e.rule_id),
        queue_id: word(&e.queue_id),
        agent_id: word(&e.agent_id),
        created_at: e.created_at,
        admitted_at: unpack(e.admitted_at),
        show_at: unpack(e.show_at),
        expires_at: unpack(e.expires_at),
        queue_deadline: unpack(e.queue_deadline),
        updated_at: e.updated_at,
        last_error: rare.and_then(|r| r.last_error.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::validate_json;

    fn payload(conv: Uuid, extra: &str) -> ValidPayload {
        let body = format!(
            r#"{{"conversationId":"{conv}","promptId":"d4e5f6a7-b8c9-0123-4567-890abcdef123",
               "triggerConditions":[{{"type":"keyword","value":"cancel my contract"}}],
               "displaySettings":{{"delayMs":500,"maxConcurrentPrompts":3,"autoDismissMs":60000}},
               "prompt":{{"title":"Retention offer","body":"Offer the loyalty discount.","priority":"high"}}{extra}}}"#
        );
        match validate_json(body.as_bytes()) {
            Ok(p) => p,
            Err(e) => panic!("test payload is invalid: {e:?}"),
        }
    }

    fn row(n: u128, extra: &str) -> InjectionRow {
        let p = payload(Uuid::from_u128(1000 + n), extra);
        let content = p.inline_prompt().cloned().unwrap_or_else(|| panic!("inline prompt"));
        InjectionRow::new(Uuid::from_u128(n), InjectionStatus::Armed, p, content, Source::Api, 1_700_000_000_000)
    }

    #[test]
    fn a_row_comes_back_as_it_went_in() {
        let plain = row(1, "");
        let mut full = row(
            2,
            r#","webhookUrl":"https://hooks.example.com/x","contextData":{"crm":{"tier":"gold"}},
                "onCapacity":"reject","queueTimeoutMs":45000"#,
        );
        full.status = InjectionStatus::Delivered;
        full.api_key_id = Some("bench".into());
        full.rule_id = Some("retention".into());
        full.queue_id = Some("q-1".into());
        full.agent_id = Some("agent-7".into());
        full.admitted_at = Some(1);
        full.show_at = Some(2);
        full.expires_at = Some(3);
        full.queue_deadline = Some(0);
        full.updated_at = 4;
        full.last_error = Some("late".into());
        // Content resolved from elsewhere (not the inline prompt) is kept apart from it.
        let mut other = row(3, "");
        other.content.title = "From the catalogue".into();
        // A row whose own ids differ from its payload's comes back unchanged too.
        let mut odd = row(4, "");
        odd.conversation_id = Uuid::from_u128(7);
        let mut set = LiveSet::new();
        for r in [&plain, &full, &other, &odd] {
            set.insert(r.clone());
        }
        assert_eq!(set.len(), 4);
        assert_eq!(set.get(&odd.id).as_ref(), Some(&odd));
        assert_eq!(set.get(&plain.id).as_ref(), Some(&plain));
        assert_eq!(set.get(&full.id).as_ref(), Some(&full));
        assert_eq!(set.get(&other.id).as_ref(), Some(&other));
        assert!(set.get(&Uuid::from_u128(99)).is_none());
    }

    #[test]
    fn equal_content_and_ids_are_stored_once() {
        let mut set = LiveSet::new();
        for n in 0..10 {
            let mut r = row(n, "");
            r.api_key_id = Some("bench".into());
            set.insert(r);
        }
        let entries: Vec<&Entry> = set.map.values().collect();
        assert!(entries.windows(2).all(|w| Arc::ptr_eq(&w[0].content, &w[1].content)));
        assert!(entries.iter().all(|e| e.inline_prompt.as_ref().is_some_and(|p| Arc::ptr_eq(p, &e.content))));
        let keys: Vec<&Arc<str>> = entries.iter().filter_map(|e| e.api_key_id.as_ref()).collect();
        assert_eq!(keys.len(), 10);
        assert!(keys.windows(2).all(|w| Arc::ptr_eq(w[0], w[1])));
        assert!(entries.iter().all(|e| e.rare.is_none()));
    }

    #[test]
    fn interned_values_go_with_the_last_injection_using_them() {
        let mut set = LiveSet::new();
        for n in 0..200u128 {
            let mut r = row(n, "");
            r.content.body = format!("body {n}");
            r.agent_id = Some(format!("agent-{n}"));
            set.insert(r);
            set.remove(&Uuid::from_u128(n));
        }
        assert!(set.is_empty());
        // Pruned as it doubles: never more than twice what is in use plus the floor.
        assert!(set.contents.set.len() <= 64, "{}", set.contents.set.len());
        assert!(set.words.set.len() <= 64, "{}", set.words.set.len());
    }

    #[test]
    fn lookups_by_conversation() {
        let mut set = LiveSet::new();
        let a = row(1, "");
        let conv = a.conversation_id;
        let mut b = row(2, "");
        b.conversation_id = conv;
        b.payload = payload(conv, "");
        b.status = InjectionStatus::Delivered;
        let c = row(3, "");
        for r in [&a, &b, &c] {
            set.insert(r.clone());
        }
        let armed = set.armed_on(conv);
        assert_eq!(armed.len(), 1);
        assert_eq!(armed[0].0, a.id);
        assert_eq!(armed[0].1, a.payload.trigger_conditions().to_vec());
        assert_eq!(set.rows_on(conv, InjectionStatus::Delivered), vec![b.clone()]);
        assert!(set.any_on(conv));
        assert!(!set.any_on(Uuid::from_u128(5)));
        let counts = set.status_counts();
        assert_eq!((counts[&InjectionStatus::Armed], counts[&InjectionStatus::Delivered]), (2, 1));
        assert!(set.remove(&b.id));
        assert!(!set.remove(&b.id));
        assert!(set.rows_on(conv, InjectionStatus::Delivered).is_empty());
    }
}
