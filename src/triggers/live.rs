//! The live trigger runtime: Genesys notifications in, prompts out. It is the only async,
//! I/O-doing part of `triggers`; every decision is the pure [`ConversationEngine`]'s.
//!
//! - Subscribes the configured queues' conversation topics. When a snapshot shows the agent
//!   connected, it subscribes that conversation's transcription and sentiment topics and
//!   starts a [`ConversationEngine`] armed with the rules for the queue and the injections
//!   already armed through the API for that conversation ([`Service::armed_for`]); API
//!   injections armed later arrive through [`Service::armed_changes`].
//! - Feeds each event to its conversation's engine; a timer calls `on_tick` at the engine's
//!   `next_deadline` (duration conditions, cooldown ends).
//! - A rule fire creates an injection through [`Service::accept_rule`] (source `rule`); an
//!   API entry's fire calls [`Service::fire`]. Shadow fires show nothing and are recorded
//!   (table `rule_fires`, and a counter), like suppressions and rules that expired unfired.
//! - The conversation's end calls [`Service::conversation_ended`] (armed prompts expire) and
//!   unsubscribes its topics.
//! - Rules reload through a watch channel without losing conversation state: the new rule
//!   set is compiled over the runtime's own keyword index, because that index also holds
//!   the phrases of API-armed keywords (phrase ids must stay stable for live conversations).
//!
//! One task owns every conversation (no locks on the event path); the side effects of a
//! decision (store writes, admission) run in spawned tasks, so a slow write never holds up
//! the next event.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use thiserror::Error;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use uuid::Uuid;

use super::engine::{CompiledRules, ConversationEngine, Decision, SuppressReason};
use super::evaluator::ArmedId;
use super::events::{parse_envelope, Event, Topic};
use super::rules::{RulePrompt, RuleSet};
use super::TriggerError;
use crate::contract::payload::TriggerCondition;
use crate::contract::{validate_value, ValidPayload};
use crate::genesys::notifications::{Envelope, NotificationSettings, Notifications, NotificationsError};
use crate::genesys::GenesysClient;
use crate::injection::service::{ArmedChange, Service};
use crate::store::{RuleFireRow, WriteOp};

/// What can stop the runtime from starting; each message says what to fix.
#[derive(Debug, Error)]
pub enum LiveError {
    #[error("cannot subscribe the watched queues' conversation topics: {0}")]
    Subscribe(#[from] NotificationsError),
    #[error("triggers.queues is empty: name at least one queue id whose conversations should be watched")]
    NoQueues,
    #[error("queue {0:?} in triggers.queues is not a queue id (letters, digits and dashes)")]
    BadQueue(String),
    #[error("cannot compile the rules: {0}")]
    Rules(#[from] TriggerError),
}

/// What the runtime is built from.
pub struct LiveDeps {
    pub service: Service,
    pub client: GenesysClient,
    /// Queue ids whose conversations are watched.
    pub queues: Vec<String>,
    /// The current rules; a new value is a hot reload.
    pub rules: watch::Receiver<Arc<CompiledRules>>,
    pub notifications: NotificationSettings,
}

/// Counters, for metrics, tests and benchmarks.
#[derive(Debug, Default)]
pub struct LiveStats {
    pub events: AtomicU64,
    pub malformed: AtomicU64,
    pub conversations_started: AtomicU64,
    pub conversations_ended: AtomicU64,
    pub rule_fires: AtomicU64,
    pub shadow_fires: AtomicU64,
    pub suppressed: AtomicU64,
    pub api_fires: AtomicU64,
    pub fire_errors: AtomicU64,
    pub reloads: AtomicU64,
}

/// A snapshot of the live conversations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LiveSnapshot {
    pub conversations: usize,
    /// Approximate heap + inline bytes of every live conversation's runtime state.
    pub approx_bytes: usize,
}

enum Command {
    Snapshot(oneshot::Sender<LiveSnapshot>),
}

/// The running runtime. [`LiveRuntime::stop`] ends it.
pub struct LiveRuntime {
    stop: watch::Sender<bool>,
    commands: mpsc::Sender<Command>,
    task: Option<JoinHandle<()>>,
    stats: Arc<LiveStats>,
    notifications: Notifications,
}

impl std::fmt::Debug for LiveRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveRuntime").finish_non_exhaustive()
    }
}

impl LiveRuntime {
    /// Subscribe the queues and start processing.
    pub async fn start(deps: LiveDeps) -> Result<LiveRuntime, LiveError> {
        if deps.queues.is_empty() {
            return Err(LiveError::NoQueues);
        }
        if let Some(bad) =
            deps.queues.iter().find(|q| q.is_empty() || !q.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'))
        {
            return Err(LiveError::BadQueue(bad.clone()));
        }
        let (notifications, envelopes) = Notifications::start(deps.client, deps.notifications);
        let topics: Vec<String> = deps.queues.iter().map(|q| format!("v2.routing.queues.{q}.conversations")).collect();
        // Listen for armed changes before anything can start, so none is missed.
        let armed = deps.service.armed_changes();
        if let Err(e) = notifications.subscribe(topics).await {
            notifications.shutdown().await;
            return Err(e.into());
        }
        let rules_rx = deps.rules;
        let rules = rules_rx.borrow().clone();
        let (stop, stop_rx) = watch::channel(false);
        let (commands, command_rx) = mpsc::channel(16);
        let stats = Arc::new(LiveStats::default());
        let (topics, topic_ops) = mpsc::unbounded_channel();
        tokio::spawn(apply_topic_ops(notifications.clone(), topic_ops));
        let runtime = Runtime {
            service: deps.service,
            topics,
            rules,
            convs: HashMap::new(),
            timers: BinaryHeap::new(),
            next_armed: 0,
            stats: stats.clone(),
            received: None,
        };
        let task = tokio::spawn(runtime.run(envelopes, armed, rules_rx, stop_rx, command_rx));
        Ok(LiveRuntime { stop, commands, task: Some(task), stats, notifications })
    }

    pub fn stats(&self) -> &LiveStats {
        &self.stats
    }

    pub fn notifications(&self) -> &Notifications {
        &self.notifications
    }

    /// How many conversations are live and what they weigh.
    pub async fn snapshot(&self) -> Option<LiveSnapshot> {
        let (tx, rx) = oneshot::channel();
        self.commands.send(Command::Snapshot(tx)).await.ok()?;
        rx.await.ok()
    }

    /// Stop processing and close the notification channels.
    pub async fn stop(mut self) {
        self.stop.send_replace(true);
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        }
        self.notifications.shutdown().await;
    }
}

impl Drop for LiveRuntime {
    fn drop(&mut self) {
        self.stop.send_replace(true);
    }
}

/// One live conversation.
struct Conv {
    engine: ConversationEngine,
    /// API entries armed here: engine id → injection id.
    api: Vec<(ArmedId, Uuid)>,
    /// The deadline in the timer heap, if any (older heap entries are stale).
    deadline: Option<i64>,
}

/// A conversation's topics to add or drop, applied in order by one task (so a short call's
/// unsubscribe can never overtake its subscribe).
enum TopicOp {
    Subscribe(Uuid),
    Unsubscribe(Uuid),
}

async fn apply_topic_ops(n: Notifications, mut ops: mpsc::UnboundedReceiver<TopicOp>) {
    while let Some(op) = ops.recv().await {
        match op {
            TopicOp::Subscribe(c) => {
                if let Err(e) = n.subscribe(conversation_topics(c).to_vec()).await {
                    tracing::error!(conversation = %c, error = %e, "cannot subscribe a conversation's transcript and sentiment; its triggers will not see them");
                }
            }
            TopicOp::Unsubscribe(c) => {
                if let Err(e) = n.unsubscribe(conversation_topics(c).to_vec()).await {
                    tracing::debug!(conversation = %c, error = %e, "cannot unsubscribe an ended conversation");
                }
            }
        }
    }
}

struct Runtime {
    service: Service,
    topics: mpsc::UnboundedSender<TopicOp>,
    rules: Arc<CompiledRules>,
    /// Boxed: a hash map keeps its values in its bucket array, empty buckets included, and
    /// a `Conv` is a few hundred bytes (memory per live conversation, DESIGN §7).
    convs: HashMap<Uuid, Box<Conv>>,
    timers: BinaryHeap<Reverse<(i64, Uuid)>>,
    next_armed: u64,
    stats: Arc<LiveStats>,
    /// When the notification being handled arrived (trigger latency is measured from it).
    received: Option<Instant>,
}

impl Runtime {
    async fn run(
        mut self,
        mut envelopes: mpsc::Receiver<Envelope>,
        mut armed: broadcast::Receiver<ArmedChange>,
        mut rules_rx: watch::Receiver<Arc<CompiledRules>>,
        mut stop: watch::Receiver<bool>,
        mut commands: mpsc::Receiver<Command>,
    ) {
        let mut rules_open = true;
        loop {
            let next = self.timers.peek().map(|Reverse((at, _))| *at);
            let sleep = async {
                match next {
                    Some(at) => {
                        let wait = at.saturating_sub(self.service.now_ms()).max(0) as u64;
                        tokio::time::sleep(Duration::from_millis(wait)).await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                biased;
                _ = stop.changed() => break,
                env = envelopes.recv() => match env {
                    Some(env) => self.on_envelope(env),
                    None => break,
                },
                change = armed.recv() => match change {
                    Ok(change) => self.on_armed_change(change),
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(missed = n, "armed-injection changes lagged; re-reading the armed set");
                        self.resync_armed();
                    }
                    Err(broadcast::error::RecvError::Closed) => {}
                },
                changed = rules_rx.changed(), if rules_open => match changed {
                    Ok(()) => {
                        let new = rules_rx.borrow_and_update().clone();
                        self.reload(&new);
                    }
                    Err(_) => rules_open = false,
                },
                Some(cmd) = commands.recv() => match cmd {
                    Command::Snapshot(reply) => { let _ = reply.send(self.snapshot()); }
                },
                _ = sleep => self.tick(),
            }
        }
    }

    fn snapshot(&self) -> LiveSnapshot {
        let approx_bytes = self
            .convs
            .values()
            .map(|c| {
                std::mem::size_of::<(Uuid, Box<Conv>)>() + std::mem::size_of::<Conv>() + c.engine.approx_bytes()
                    - std::mem::size_of::<ConversationEngine>()
                    + c.api.capacity() * std::mem::size_of::<(ArmedId, Uuid)>()
            })
            .sum();
        LiveSnapshot { conversations: self.convs.len(), approx_bytes }
    }

    fn on_envelope(&mut self, env: Envelope) {
        self.received = Some(env.received_at);
        self.handle_envelope(env);
        self.received = None;
    }

    fn handle_envelope(&mut self, env: Envelope) {
        self.stats.events.fetch_add(1, Ordering::Relaxed);
        let note = match parse_envelope(&env.value) {
            Ok(n) => n,
            Err(e) => {
                self.stats.malformed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(topic = %env.topic, error = %e, "a notification could not be read; skipped");
                return;
            }
        };
        let Some(conv_id) = note.conversation_id.as_deref().and_then(|c| Uuid::parse_str(c).ok()) else { return };
        let now = self.service.now_ms();
        if !self.convs.contains_key(&conv_id) {
            let connected = note.events.iter().any(|e| matches!(e, Event::AgentConnected { .. }));
            let ended = note.events.iter().any(|e| matches!(e, Event::ConversationEnded));
            if note.topic != Topic::ConversationSnapshot || !connected || ended {
                return;
            }
            self.begin(conv_id, &env, now);
        }
        let rules = self.rules.clone();
        let mut decisions = Vec::new();
        let mut ended = false;
        if let Some(conv) = self.convs.get_mut(&conv_id) {
            for event in &note.events {
                decisions.extend(conv.engine.on_event(&rules, event, now));
            }
            ended = conv.engine.is_ended();
        }
        self.act(conv_id, decisions);
        if ended {
            self.end(conv_id);
        } else {
            self.reschedule(conv_id);
        }
    }

    /// The agent connected: subscribe the conversation's feeds and start its engine.
    fn begin(&mut self, conv_id: Uuid, env: &Envelope, now: i64) {
        self.stats.conversations_started.fetch_add(1, Ordering::Relaxed);
        let _ = self.topics.send(TopicOp::Subscribe(conv_id));
        let queue_id = env.topic.split('.').nth(3).map(str::to_string);
        let queue_name = acd_queue_name(&env.value, queue_id.as_deref());
        let mut engine = ConversationEngine::new();
        let decisions = engine.start(&self.rules, queue_id.as_deref(), queue_name.as_deref(), now);
        self.convs.insert(conv_id, Box::new(Conv { engine, api: Vec::new(), deadline: None }));
        self.service.stats().live_conversations.store(self.convs.len() as u64, Ordering::Relaxed);
        self.act(conv_id, decisions);
        for (id, conditions) in self.service.armed_for(conv_id) {
            self.arm(conv_id, id, &conditions, now);
        }
    }

    fn end(&mut self, conv_id: Uuid) {
        if self.convs.remove(&conv_id).is_none() {
            return;
        }
        self.service.stats().live_conversations.store(self.convs.len() as u64, Ordering::Relaxed);
        self.stats.conversations_ended.fetch_add(1, Ordering::Relaxed);
        let svc = self.service.clone();
        tokio::spawn(async move {
            if let Err(e) = svc.conversation_ended(conv_id).await {
                tracing::warn!(conversation = %conv_id, error = %e, "cannot expire the armed prompts of an ended conversation");
            }
        });
        let _ = self.topics.send(TopicOp::Unsubscribe(conv_id));
    }

    /// Arm an API injection's conditions on a live conversation (once).
    fn arm(&mut self, conv_id: Uuid, injection: Uuid, conditions: &[TriggerCondition], now: i64) {
        if self.convs.get(&conv_id).is_none_or(|c| c.api.iter().any(|(_, i)| *i == injection)) {
            return;
        }
        let compiled = match self.rules.compile_conditions(conditions) {
            Ok(c) => c,
            Err(_) => {
                // A keyword no rule uses: extend the index (ids of existing phrases stay).
                let phrases = conditions.iter().filter_map(|c| match c {
                    TriggerCondition::Keyword { phrase, .. } => Some(phrase.as_str()),
                    _ => None,
                });
                match self.rules.with_phrases(phrases).and_then(|r| {
                    let c = r.compile_conditions(conditions)?;
                    Ok((r, c))
                }) {
                    Ok((rules, c)) => {
                        self.rules = Arc::new(rules);
                        c
                    }
                    Err(e) => {
                        tracing::warn!(injection = %injection, error = %e, "cannot arm an injection's conditions live");
                        return;
                    }
                }
            }
        };
        self.next_armed += 1;
        let armed_id = ArmedId(self.next_armed);
        let Some(conv) = self.convs.get_mut(&conv_id) else { return };
        conv.api.push((armed_id, injection));
        let decision = conv.engine.arm(armed_id, compiled, now);
        self.act(conv_id, decision.into_iter().collect());
        self.reschedule(conv_id);
    }

    fn on_armed_change(&mut self, change: ArmedChange) {
        match change {
            ArmedChange::Armed { id, conversation_id, conditions } => {
                let now = self.service.now_ms();
                self.arm(conversation_id, id, &conditions, now);
            }
            ArmedChange::Disarmed { id, conversation_id } => {
                if let Some(conv) = self.convs.get_mut(&conversation_id) {
                    if let Some(pos) = conv.api.iter().position(|(_, i)| *i == id) {
                        let (armed_id, _) = conv.api.remove(pos);
                        conv.engine.disarm(armed_id);
                    }
                }
            }
        }
    }

    /// After a lagged broadcast: arm whatever is armed in the service and not here.
    fn resync_armed(&mut self) {
        let now = self.service.now_ms();
        let ids: Vec<Uuid> = self.convs.keys().copied().collect();
        for conv_id in ids {
            for (id, conditions) in self.service.armed_for(conv_id) {
                self.arm(conv_id, id, &conditions, now);
            }
        }
    }

    /// Hot reload: compile the new rules over our index, then apply them to every conversation.
    fn reload(&mut self, new: &CompiledRules) {
        let set = RuleSet { origin: "reload".into(), rules: new.rules().iter().map(|r| (*r.rule).clone()).collect() };
        match CompiledRules::compile(&set, Some(self.rules.index())) {
            Ok(compiled) => self.rules = Arc::new(compiled),
            Err(e) => {
                tracing::error!(error = %e, "cannot apply the reloaded rules; the previous rules stay in force");
                return;
            }
        }
        self.stats.reloads.fetch_add(1, Ordering::Relaxed);
        let now = self.service.now_ms();
        let rules = self.rules.clone();
        let ids: Vec<Uuid> = self.convs.keys().copied().collect();
        for conv_id in ids {
            let decisions = match self.convs.get_mut(&conv_id) {
                Some(c) => c.engine.reload(&rules, now),
                None => continue,
            };
            self.act(conv_id, decisions);
            self.reschedule(conv_id);
        }
    }

    /// Run the engines whose deadline has come.
    fn tick(&mut self) {
        let now = self.service.now_ms();
        let rules = self.rules.clone();
        while let Some(Reverse((at, conv_id))) = self.timers.peek().copied() {
            if at > now {
                break;
            }
            self.timers.pop();
            let decisions = match self.convs.get_mut(&conv_id) {
                Some(c) if c.deadline == Some(at) => {
                    c.deadline = None;
                    c.engine.on_tick(&rules, now)
                }
                _ => continue,
            };
            self.act(conv_id, decisions);
            self.reschedule(conv_id);
        }
    }

    fn reschedule(&mut self, conv_id: Uuid) {
        let Some(conv) = self.convs.get_mut(&conv_id) else { return };
        let next = conv.engine.next_deadline(&self.rules);
        if next != conv.deadline {
            conv.deadline = next;
            if let Some(at) = next {
                self.timers.push(Reverse((at, conv_id)));
            }
        }
    }

    /// Carry out decisions: admissions and records, off the event path.
    fn act(&mut self, conv_id: Uuid, decisions: Vec<Decision>) {
        if decisions.is_empty() {
            return;
        }
        let mut records = Vec::new();
        let mut fires = Vec::new();
        let mut api_fires = Vec::new();
        for d in decisions {
            match d {
                Decision::Fire { rule_index, rule_id, shadow, at_ms } => {
                    if shadow {
                        self.stats.shadow_fires.fetch_add(1, Ordering::Relaxed);
                        self.service.stats().count_rule_decision("shadow");
                        records.push(row(conv_id, &rule_id, "shadow", at_ms));
                    } else if let Some(rule) = self.rules.rules().get(rule_index) {
                        self.stats.rule_fires.fetch_add(1, Ordering::Relaxed);
                        self.service.stats().count_rule_decision("fired");
                        fires.push((rule.rule.clone(), at_ms));
                    }
                }
                Decision::Suppressed { rule_id, reason, at_ms, .. } => {
                    self.stats.suppressed.fetch_add(1, Ordering::Relaxed);
                    let outcome = match reason {
                        SuppressReason::Cooldown => "suppressed_cooldown",
                        SuppressReason::Cap => "suppressed_cap",
                    };
                    self.service.stats().count_rule_decision(outcome);
                    records.push(row(conv_id, &rule_id, outcome, at_ms));
                }
                Decision::Expired { rule_id, at_ms, .. } => {
                    self.service.stats().count_rule_decision("expired");
                    records.push(row(conv_id, &rule_id, "expired", at_ms));
                }
                Decision::ApiFired { id, .. } => {
                    if let Some(conv) = self.convs.get_mut(&conv_id) {
                        if let Some(pos) = conv.api.iter().position(|(a, _)| *a == id) {
                            api_fires.push(conv.api.remove(pos).1);
                        }
                    }
                }
                // The service records these when the conversation ends.
                Decision::ApiExpired { .. } => {}
            }
        }
        let svc = self.service.clone();
        let stats = self.stats.clone();
        // From the notification that caused it; a tick or a reload has none: from now.
        let received = self.received.unwrap_or_else(Instant::now);
        tokio::spawn(async move {
            for injection in api_fires {
                match svc.fire(injection, "trigger").await {
                    Ok(_) => {
                        stats.api_fires.fetch_add(1, Ordering::Relaxed);
                        svc.stats().trigger_latency.observe(received.elapsed());
                    }
                    Err(e) => {
                        stats.fire_errors.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(injection = %injection, error = %e, "cannot fire an armed injection");
                    }
                }
            }
            for (rule, at_ms) in fires {
                let outcome = match rule_payload(&rule, conv_id) {
                    Ok(payload) => {
                        svc.accept_rule(payload, &rule.id, rule.priority, received).await.map_err(|e| e.to_string())
                    }
                    Err(e) => Err(e),
                };
                match outcome {
                    Ok(accepted) => {
                        svc.stats().trigger_latency.observe(received.elapsed());
                        let mut r = row(conv_id, &rule.id, "fired", at_ms);
                        r.injection_id = Some(accepted.injection_id);
                        records.push(r);
                    }
                    Err(e) => {
                        stats.fire_errors.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(rule = %rule.id, conversation = %conv_id, error = %e, "a rule fired but its prompt could not be created");
                    }
                }
            }
            if !records.is_empty() {
                if let Err(e) = svc.store().write(WriteOp::RecordRuleFires(records)).await {
                    tracing::warn!(error = %e, "cannot record rule decisions");
                }
            }
        });
    }
}

fn row(conversation_id: Uuid, rule_id: &str, outcome: &str, at: i64) -> RuleFireRow {
    RuleFireRow { conversation_id, rule_id: rule_id.to_string(), outcome: outcome.to_string(), injection_id: None, at }
}

/// A conversation's transcription and sentiment topics (genesys-api.md §6; note the
/// singular `conversation` in the sentiment topic).
pub fn conversation_topics(conversation_id: Uuid) -> [String; 2] {
    [
        format!("v2.conversations.{conversation_id}.transcription"),
        format!("v2.speechandtextanalytics.conversation.{conversation_id}.sentiment"),
    ]
}

/// The queue's name from a snapshot's `acd` participant for that queue, if present.
fn acd_queue_name(envelope: &Value, queue_id: Option<&str>) -> Option<String> {
    let participants = envelope.pointer("/eventBody/participants")?.as_array()?;
    participants
        .iter()
        .filter(|p| p.get("purpose").and_then(Value::as_str) == Some("acd"))
        .find(|p| queue_id.is_none() || p.get("queueId").and_then(Value::as_str) == queue_id)
        .and_then(|p| p.get("name").and_then(Value::as_str))
        .map(str::to_string)
}

/// A stable prompt id for a rule with inline content, so adoption groups its prompts.
fn rule_prompt_id(rule_id: &str) -> Uuid {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(format!("gc-assist rule prompt {rule_id}").as_bytes());
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_random_bytes(bytes).into_uuid()
}

/// The injection a fired rule creates: its prompt and display settings, no conditions
/// (the engine already decided), the rule id in `contextData`.
pub fn rule_payload(rule: &super::rules::Rule, conversation_id: Uuid) -> Result<ValidPayload, String> {
    let (prompt_id, prompt) = match &rule.prompt {
        RulePrompt::Catalogue(id) => (*id, None),
        RulePrompt::Inline(content) => {
            let mut content = content.clone();
            content.priority = rule.priority;
            (rule_prompt_id(&rule.id), Some(content.to_json()))
        }
    };
    let mut body = json!({
        "conversationId": conversation_id.hyphenated().to_string(),
        "promptId": prompt_id.hyphenated().to_string(),
        "triggerConditions": [],
        "displaySettings": rule.display.to_json(),
        "contextData": {"ruleId": rule.id},
    });
    if let (Some(p), Some(obj)) = (prompt, body.as_object_mut()) {
        obj.insert("prompt".into(), p);
    }
    validate_value(&body).map_err(|issues| {
        let list: Vec<String> = issues.0.iter().map(|i| format!("{}: {}", i.path, i.message)).collect();
        format!("rule {:?} makes an invalid prompt: {}", rule.id, list.join("; "))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::payload::PromptContent;
    use crate::triggers::rules::Rule;

    #[test]
    fn rule_payloads_validate_and_keep_a_stable_prompt_id() {
        let content = PromptContent {
            title: "Refund policy".into(),
            body: "Refunds within 30 days.".into(),
            url: None,
            priority: crate::contract::Priority::Normal,
        };
        let mut rule = Rule::new("refund", RulePrompt::Inline(content), Vec::new());
        rule.priority = crate::contract::Priority::High;
        let conv = Uuid::new_v4();
        let p = rule_payload(&rule, conv).expect("valid");
        assert_eq!(p.conversation_id(), conv);
        assert_eq!(p.prompt_id(), rule_prompt_id("refund"));
        assert_eq!(p.inline_prompt().map(|c| c.priority), Some(crate::contract::Priority::High));
        assert!(p.trigger_conditions().is_empty());
        assert_eq!(p.context_data().and_then(|c| c.get("ruleId")), Some(&json!("refund")));
        assert_ne!(rule_prompt_id("refund"), rule_prompt_id("cancel"));
        let cat = Rule::new("c", RulePrompt::Catalogue(conv), Vec::new());
        assert_eq!(rule_payload(&cat, conv).expect("valid").prompt_id(), conv);
    }

    #[test]
    fn queue_names_come_from_the_acd_participant() {
        let env = json!({"eventBody": {"participants": [
            {"purpose": "customer", "name": "Ann"},
            {"purpose": "acd", "name": "Billing", "queueId": "q1"},
        ]}});
        assert_eq!(acd_queue_name(&env, Some("q1")).as_deref(), Some("Billing"));
        assert_eq!(acd_queue_name(&env, Some("q2")), None);
        assert_eq!(acd_queue_name(&json!({}), None), None);
    }
}
