//! The injection service: accepts valid payloads, admits them through per-conversation
//! capacity ledgers, persists every state change (row + audit + webhook outbox) in one store
//! write, and runs the timer that shows, expires, promotes and times out prompts.
//!
//! # Concurrency
//!
//! Every state change of a conversation's injections happens while holding that
//! conversation's ledger lock (an async mutex, held across the store write). So the ledger
//! and the stored rows move together: a ledger change whose store write fails is rolled
//! back by restoring the ledger as it was before the change, and effects of one injection
//! are persisted in the order the ledger produced them. Conversations never wait for each
//! other. Channel deliveries (panel events, participant-data writes) are made after the
//! change is durable, never before.
//!
//! # Capacity refusals
//!
//! `onCapacity: reject` with no free slot answers [`ServiceError::Capacity`] and stores
//! nothing: no row, no audit record. The caller got a 409 and may retry; recording every
//! refused attempt would let a misbehaving caller fill the audit chain.
//!
//! # Latency
//!
//! `latencyMs` in the answer is measured from [`AcceptMeta::received_at`] until the change is
//! ready to be written (it is part of the idempotent answer, which is stored in the same
//! write, so it cannot include that write's own commit).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::{json, Value};
use thiserror::Error;
use tokio::sync::{mpsc, Notify};
use uuid::Uuid;

use super::admission::{Admit, Candidate, Effect, Ledger, RejectReason, Release, Was};
use super::live_set::LiveSet;
use super::panel::PanelHub;
use super::participant_data::{self, PromptAttribute};
use super::trace::{DeliveryTrace, DeliveryTraces};
use crate::audit::AuditDraft;
use crate::contract::payload::TriggerCondition;
use crate::contract::{resolve_prompt, Catalogue, Issue, OnCapacity, Priority, ValidPayload};
use crate::genesys::GenesysClient;
use crate::store::{
    Clock, EngagementKind, EngagementRow, IdempotencyRow, InjectionRow, InjectionStatus, InjectionUpdate, OutboxRow,
    Source, Store, StoreError, WriteOp,
};

/// Due conversations delivered by one store write; a backlog after a stall is cut into
/// writes of this many, so no single transaction grows without bound.
const DUE_BATCH: usize = 256;

/// Webhook event types (CONTRACT §5).
pub const EVENT_INJECTED: &str = "AGENT_ASSIST_PROMPT_INJECTED";
pub const EVENT_VIEWED: &str = "AGENT_ASSIST_PROMPT_VIEWED";
pub const EVENT_CLICKED: &str = "AGENT_ASSIST_PROMPT_CLICKED";
pub const EVENT_DISMISSED: &str = "AGENT_ASSIST_PROMPT_DISMISSED";
pub const EVENT_EXPIRED: &str = "AGENT_ASSIST_PROMPT_EXPIRED";
pub const EVENT_FAILED: &str = "AGENT_ASSIST_INJECTION_FAILED";

/// How often a participant-data write is tried before the failure is recorded.
const PD_ATTEMPTS: u32 = 3;
const PD_FIRST_BACKOFF: Duration = Duration::from_millis(200);
/// How long shutdown keeps writing participant-data jobs that were already queued.
const PD_DRAIN: Duration = Duration::from_secs(5);

/// Why the service refused or could not complete a request.
#[derive(Debug, Error)]
pub enum ServiceError {
    #[error("{}", .0.message)]
    UnknownPrompt(Issue),
    #[error(
        "no free prompt slot on conversation {conversation_id} and onCapacity is \"reject\" ({reason}); \
         retry after {retry_after_ms} ms or send onCapacity \"queue\""
    )]
    Capacity { conversation_id: Uuid, retry_after_ms: u64, reason: &'static str },
    #[error("injection {0} does not exist")]
    NotFound(Uuid),
    #[error("injection {id} is {status}; {action} needs it to be {needs}")]
    WrongState { id: Uuid, status: InjectionStatus, action: &'static str, needs: &'static str },
    #[error("idempotency key {0:?} was used by a request committed meanwhile; read its stored answer")]
    IdempotencyRace(String),
    #[error("unknown channel {0:?} in server.channels; use \"panel\" and/or \"participant-data\"")]
    UnknownChannel(String),
    #[error("the participant-data channel needs Genesys credentials (or --emulator); configure [genesys] or disable it in server.channels")]
    NoGenesys,
    #[error("the service is shutting down")]
    ShuttingDown,
    #[error("storage failed: {0}")]
    Store(#[from] StoreError),
}

/// Which delivery channels are enabled (config `server.channels`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Channels {
    pub panel: bool,
    pub participant_data: bool,
}

impl Channels {
    pub fn from_names(names: &[String]) -> Result<Channels, ServiceError> {
        let mut c = Channels::default();
        for n in names {
            match n.as_str() {
                "panel" => c.panel = true,
                "participant-data" | "participant_data" => c.participant_data = true,
                other => return Err(ServiceError::UnknownChannel(other.to_string())),
            }
        }
        Ok(c)
    }
}

/// Called after every commit that added webhook messages (wakes the webhook worker).
pub type OnCommit = Arc<dyn Fn() + Send + Sync>;

/// What the service is built from.
pub struct ServiceDeps {
    pub store: Store,
    pub catalogue: Option<Catalogue>,
    pub channels: Channels,
    pub genesys: Option<GenesysClient>,
    /// Wall clock, epoch ms; also the ledgers' clock.
    pub clock: Arc<dyn Clock>,
    /// Webhook endpoints that get every event, besides a payload's own `webhookUrl`.
    pub global_webhooks: Vec<String>,
    pub on_commit: Option<OnCommit>,
    /// Participant attribute key prefix (config `inject.attribute_prefix`).
    pub attribute_prefix: String,
}

/// A change to the armed injections, for the live trigger runtime (`triggers::live`), which
/// evaluates armed conditions against the conversation's events.
#[derive(Debug, Clone, PartialEq)]
pub enum ArmedChange {
    /// An injection with trigger conditions was accepted and waits for them.
    Armed { id: Uuid, conversation_id: Uuid, conditions: Vec<TriggerCondition> },
    /// An armed injection left that state (fired, cancelled, expired).
    Disarmed { id: Uuid, conversation_id: Uuid },
}

/// Buffered armed changes per subscriber; a slower one sees `Lagged` and re-reads
/// [`Service::armed_for`].
const ARMED_CHANGES_BUFFER: usize = 4096;

/// Who is asking, for audit and idempotency.
#[derive(Debug, Clone)]
pub struct AcceptMeta {
    pub source: Source,
    pub api_key_id: Option<String>,
    pub idempotency_key: Option<String>,
    /// Digest of the request body, stored with the idempotency key.
    pub request_hash: String,
    /// When the request arrived (for `latencyMs`).
    pub received_at: Instant,
}

/// The 201 answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Accepted {
    pub injection_id: Uuid,
    pub status: InjectionStatus,
    pub conversation_id: Uuid,
    pub prompt_id: Uuid,
    pub accepted_at: String,
    pub latency_ms: u64,
}

/// The 201 answer's body, written straight from the fields (the order of [`Accepted::to_json`]).
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct AcceptedBody<'a> {
    injection_id: Uuid,
    status: &'a str,
    conversation_id: Uuid,
    prompt_id: Uuid,
    accepted_at: &'a str,
    latency_ms: u64,
}

impl Accepted {
    pub fn to_json(&self) -> Value {
        json!({
            "injectionId": self.injection_id,
            "status": self.status.as_str(),
            "conversationId": self.conversation_id,
            "promptId": self.prompt_id,
            "acceptedAt": self.accepted_at,
            "latencyMs": self.latency_ms,
        })
    }

    /// The same JSON as [`Accepted::to_json`], serialised without building a `Value` first:
    /// the request path writes one per accepted injection (BENCHMARKS.md, "HTTP path").
    pub fn to_body(&self) -> Bytes {
        let body = AcceptedBody {
            injection_id: self.injection_id,
            status: self.status.as_str(),
            conversation_id: self.conversation_id,
            prompt_id: self.prompt_id,
            accepted_at: &self.accepted_at,
            latency_ms: self.latency_ms,
        };
        // Serialising plain strings and numbers into a Vec cannot fail.
        Bytes::from(serde_json::to_vec(&body).unwrap_or_default())
    }
}

/// A webhook message's body, written straight from the row (no intermediate `Value`, no
/// copy of the context data).
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct WebhookBody<'a> {
    event_type: &'a str,
    injection_id: Uuid,
    conversation_id: Uuid,
    prompt_id: Uuid,
    latency_ms: u64,
    timestamp: &'a str,
    /// `null` when the payload had none.
    context: Option<&'a serde_json::Map<String, Value>>,
    alignment_status: &'a str,
}

/// How the agent engaged with a shown prompt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engagement {
    Dismissed,
    Clicked,
}

/// Fixed-bucket latency histogram (milliseconds), lock-free.
#[derive(Debug)]
pub struct Histogram {
    counts: Vec<AtomicU64>,
    sum_us: AtomicU64,
    count: AtomicU64,
}

/// Bucket upper bounds in ms.
pub const BUCKETS_MS: [f64; 12] = [0.5, 1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 5000.0];

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: BUCKETS_MS.iter().map(|_| AtomicU64::new(0)).collect(),
            sum_us: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let ms = d.as_secs_f64() * 1000.0;
        for (b, c) in BUCKETS_MS.iter().zip(&self.counts) {
            if ms <= *b {
                c.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.sum_us.fetch_add(d.as_micros().min(u128::from(u64::MAX)) as u64, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// Cumulative bucket counts (Prometheus `le` semantics), sum in seconds, count.
    pub fn snapshot(&self) -> (Vec<(f64, u64)>, f64, u64) {
        let buckets =
            BUCKETS_MS.iter().zip(&self.counts).map(|(b, c)| (*b / 1000.0, c.load(Ordering::Relaxed))).collect();
        (buckets, self.sum_us.load(Ordering::Relaxed) as f64 / 1e6, self.count.load(Ordering::Relaxed))
    }
}

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct ServiceStats {
    pub admit_latency: Histogram,
    pub delivery_latency: Histogram,
    /// State changes committed, by new status.
    pub transitions: Mutex<HashMap<&'static str, u64>>,
    pub channel_failures: AtomicU64,
    /// Live triggers: the triggering notification received → the fired prompt admitted.
    pub trigger_latency: Histogram,
    /// Rule decisions of the live trigger runtime, by outcome (`fired`, `shadow`, ...).
    pub rule_decisions: Mutex<HashMap<&'static str, u64>>,
    /// Conversations the live trigger runtime follows now (agent connected, not ended).
    pub live_conversations: AtomicU64,
    /// Per-delivery stage timings, off unless a benchmark turns them on.
    pub delivery_trace: DeliveryTraces,
}

impl ServiceStats {
    /// Counts one rule decision of the live trigger runtime.
    pub fn count_rule_decision(&self, outcome: &'static str) {
        let mut t = self.rule_decisions.lock().unwrap_or_else(|p| p.into_inner());
        *t.entry(outcome).or_insert(0) += 1;
    }

    fn count(&self, status: InjectionStatus) {
        let mut t = self.transitions.lock().unwrap_or_else(|p| p.into_inner());
        *t.entry(status.as_str()).or_insert(0) += 1;
    }
}

/// Which delivery an effect calls for, once committed.
enum Kind {
    Show,
    Remove(&'static str),
}

/// A participant-data write, made in order by one worker.
enum PdJob {
    Show { row: Box<InjectionRow> },
    Mark { row: Box<InjectionRow>, status: &'static str },
}

/// Something to send to the channels after a commit.
enum Delivery {
    Show(Box<InjectionRow>),
    Remove { row: Box<InjectionRow>, status: &'static str },
}

/// The injection service. Cheap to clone.
#[derive(Clone)]
pub struct Service {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service").finish_non_exhaustive()
    }
}

type ConvLedger = Arc<tokio::sync::Mutex<Ledger>>;

struct Inner {
    store: Store,
    catalogue: Option<Catalogue>,
    channels: Channels,
    genesys: Option<GenesysClient>,
    clock: Arc<dyn Clock>,
    global_webhooks: Vec<String>,
    on_commit: Option<OnCommit>,
    prefix: String,
    panel: PanelHub,
    ledgers: Mutex<HashMap<Uuid, ConvLedger>>,
    /// Live injections (armed, scheduled, queued, delivered), with their current status
    /// (held compactly: memory per live injection matters, see `live_set`).
    live: Mutex<LiveSet>,
    /// Each conversation's agent (Genesys user id) once known, with when it was last heard
    /// of: stamped on the engagement rows written from then on (see [`Service::note_agent`]).
    /// The second field is when the map was last pruned.
    agents: Mutex<(KnownAgents, i64)>,
    timers: Mutex<BinaryHeap<Reverse<(u64, Uuid)>>>,
    wake: Notify,
    closed: AtomicBool,
    /// Tells the channel worker to stop.
    stop: tokio::sync::watch::Sender<bool>,
    seq: AtomicU64,
    pd_tx: Option<mpsc::UnboundedSender<PdJob>>,
    stats: ServiceStats,
    /// Store writes in flight from this service (for load shedding).
    in_flight: AtomicU64,
    /// The timer and channel worker, awaited by [`Service::drained`].
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    armed_changes: tokio::sync::broadcast::Sender<ArmedChange>,
}

/// Conversation → (its agent's user id, when last heard of, epoch ms).
type KnownAgents = HashMap<Uuid, (String, i64)>;

/// Conversations' agents are pruned when this many are remembered ...
const AGENTS_PRUNE_AT: usize = 10_000;
/// ... of those not heard of for this long (a day: longer than any conversation).
const AGENT_MEMORY_MS: i64 = 86_400_000;

fn rfc3339(ms: i64) -> String {
    participant_data::timestamp(chrono::DateTime::from_timestamp_millis(ms).unwrap_or_default())
}

/// The engagement event a status change is, for adoption: a prompt reaching the screen is
/// `shown`; leaving it by click, dismissal or its own timer is `clicked`, `dismissed`,
/// `expired`. An armed prompt expiring unfired never reached the agent, and an operator's
/// withdrawal is not the agent's doing: neither counts.
fn engagement_for(from: InjectionStatus, to: InjectionStatus) -> Option<EngagementKind> {
    use InjectionStatus as S;
    match (from, to) {
        (S::Delivered, S::Delivered) => None,
        (_, S::Delivered) => Some(EngagementKind::Shown),
        (S::Delivered, S::Clicked) => Some(EngagementKind::Clicked),
        (S::Delivered, S::Dismissed) => Some(EngagementKind::Dismissed),
        (S::Delivered, S::Expired) => Some(EngagementKind::Expired),
        _ => None,
    }
}

fn priority_rank(p: Priority) -> u8 {
    match p {
        Priority::Low => 0,
        Priority::Normal => 1,
        Priority::High => 2,
        Priority::Critical => 3,
    }
}

fn ms_u64(ms: i64) -> u64 {
    u64::try_from(ms).unwrap_or(0)
}

fn ms_i64(ms: u64) -> i64 {
    i64::try_from(ms).unwrap_or(i64::MAX)
}

fn draft(row: &InjectionRow, status: &str, actor: &str, reason: Option<&str>) -> AuditDraft {
    AuditDraft {
        conversation_id: row.conversation_id,
        prompt_id: row.prompt_id,
        injection_id: row.id,
        status: status.to_string(),
        latency_ms: None,
        error: None,
        actor: actor.to_string(),
        reason: reason.map(str::to_string),
    }
}

impl Service {
    /// Builds the service, recovers what a previous run left live in the store, and starts
    /// the timer (and the participant-data worker when that channel is on).
    pub async fn start(deps: ServiceDeps) -> Result<Service, ServiceError> {
        if deps.channels.participant_data && deps.genesys.is_none() {
            return Err(ServiceError::NoGenesys);
        }
        let (pd_tx, pd_rx) = if deps.channels.participant_data {
            let (tx, rx) = mpsc::unbounded_channel();
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        let svc = Service {
            inner: Arc::new(Inner {
                store: deps.store,
                catalogue: deps.catalogue,
                channels: deps.channels,
                genesys: deps.genesys,
                clock: deps.clock,
                global_webhooks: deps.global_webhooks,
                on_commit: deps.on_commit,
                prefix: deps.attribute_prefix,
                panel: PanelHub::new(),
                ledgers: Mutex::new(HashMap::new()),
                live: Mutex::new(LiveSet::new()),
                agents: Mutex::new((HashMap::new(), 0)),
                timers: Mutex::new(BinaryHeap::new()),
                wake: Notify::new(),
                closed: AtomicBool::new(false),
                stop: tokio::sync::watch::channel(false).0,
                seq: AtomicU64::new(0),
                pd_tx,
                stats: ServiceStats::default(),
                in_flight: AtomicU64::new(0),
                tasks: Mutex::new(Vec::new()),
                armed_changes: tokio::sync::broadcast::channel(ARMED_CHANGES_BUFFER).0,
            }),
        };
        svc.recover().await?;
        let timer = svc.clone();
        let mut tasks = vec![tokio::spawn(async move { timer.run_timer().await })];
        if let Some(rx) = pd_rx {
            let worker = svc.clone();
            tasks.push(tokio::spawn(async move { worker.run_participant_data(rx).await }));
        }
        *svc.inner.tasks.lock().unwrap_or_else(|e| e.into_inner()) = tasks;
        Ok(svc)
    }

    /// Waits, after [`Service::shutdown`], for the timer and the channel worker to finish
    /// (the worker first writes the participant-data jobs already queued, for up to
    /// `PD_DRAIN`), so the caller can close the store knowing nothing is still writing.
    pub async fn drained(&self) {
        let tasks = std::mem::take(&mut *self.inner.tasks.lock().unwrap_or_else(|e| e.into_inner()));
        for t in tasks {
            let _ = t.await;
        }
    }

    /// Stops the timer and the channel worker; later calls answer `ShuttingDown`.
    pub fn shutdown(&self) {
        self.inner.closed.store(true, Ordering::SeqCst);
        self.inner.wake.notify_one();
        self.inner.stop.send_replace(true);
    }

    pub fn is_shutting_down(&self) -> bool {
        self.inner.closed.load(Ordering::SeqCst)
    }

    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    pub fn panel(&self) -> &PanelHub {
        &self.inner.panel
    }

    pub fn stats(&self) -> &ServiceStats {
        &self.inner.stats
    }

    pub fn genesys(&self) -> Option<&GenesysClient> {
        self.inner.genesys.as_ref()
    }

    pub fn now_ms(&self) -> i64 {
        self.inner.clock.now_ms()
    }

    /// Changes to the armed injections from now on (see [`ArmedChange`]).
    pub fn armed_changes(&self) -> tokio::sync::broadcast::Receiver<ArmedChange> {
        self.inner.armed_changes.subscribe()
    }

    /// The injections armed on a conversation now, with their conditions.
    pub fn armed_for(&self, conversation_id: Uuid) -> Vec<(Uuid, Vec<TriggerCondition>)> {
        // v7 ids: arming order.
        self.live().armed_on(conversation_id)
    }

    /// Store writes this service is waiting on.
    pub fn writes_in_flight(&self) -> u64 {
        self.inner.in_flight.load(Ordering::Relaxed)
    }

    /// Candidates waiting for a slot, over all conversations (ledgers busy right now are
    /// skipped rather than waited for: this is a gauge).
    /// Live injections by status (armed, scheduled, queued, delivered).
    pub fn live_counts(&self) -> HashMap<InjectionStatus, usize> {
        self.live().status_counts()
    }

    pub fn queue_depth(&self) -> usize {
        let ledgers: Vec<ConvLedger> = self.ledgers().values().cloned().collect();
        ledgers.iter().filter_map(|l| l.try_lock().ok().map(|l| l.queued().count())).sum()
    }

    fn ledgers(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, ConvLedger>> {
        self.inner.ledgers.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn live(&self) -> std::sync::MutexGuard<'_, LiveSet> {
        self.inner.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Remembers `agent_id` (the agent's Genesys user id) as the agent of a conversation:
    /// engagement rows written from now on carry it, including the `shown` of prompts that
    /// reach the screen later, so adoption counts them for that agent. Rows written before
    /// the agent is known (typically a `shown` before the panel signed in) keep none and
    /// count under the unknown agent. Called at panel sign-in and on every engagement the
    /// panel reports; conversations not heard of for a day are forgotten.
    pub fn note_agent(&self, conversation_id: Uuid, agent_id: &str) {
        if agent_id.is_empty() {
            return;
        }
        let now = self.now_ms();
        let mut guard = self.inner.agents.lock().unwrap_or_else(|p| p.into_inner());
        let (agents, pruned_at) = &mut *guard;
        // At most once a minute, so a busy day with many conversations is no quadratic cost.
        if agents.len() >= AGENTS_PRUNE_AT && now - *pruned_at >= 60_000 {
            agents.retain(|_, (_, seen)| now - *seen < AGENT_MEMORY_MS);
            *pruned_at = now;
        }
        agents.insert(conversation_id, (agent_id.to_string(), now));
    }

    /// Puts the agent on an engagement row: the one named for this action (remembered for
    /// the conversation), else the row's own, else the conversation's known agent.
    fn stamp_agent(&self, e: &mut EngagementRow, agent_id: Option<&str>) {
        if let Some(a) = agent_id.filter(|a| !a.is_empty()) {
            self.note_agent(e.conversation_id, a);
            e.agent_id = Some(a.to_string());
        } else if e.agent_id.as_deref().is_none_or(str::is_empty) {
            let agents = self.inner.agents.lock().unwrap_or_else(|p| p.into_inner());
            e.agent_id = agents.0.get(&e.conversation_id).map(|(a, _)| a.clone());
        }
    }

    fn ledger_for(&self, conversation_id: Uuid) -> ConvLedger {
        self.ledgers().entry(conversation_id).or_default().clone()
    }

    fn schedule(&self, conversation_id: Uuid, deadline: Option<u64>) {
        if let Some(d) = deadline {
            self.inner.timers.lock().unwrap_or_else(|p| p.into_inner()).push(Reverse((d, conversation_id)));
            self.inner.wake.notify_one();
        }
    }

    /// Drops a conversation's ledger once nothing is held or waiting and nobody else holds it.
    fn maybe_drop_ledger(&self, conversation_id: Uuid, ledger: &ConvLedger, empty: bool) {
        if !empty {
            return;
        }
        let mut map = self.ledgers();
        // Ours plus the map's: nobody else can reach it, since cloning needs the map lock.
        if Arc::strong_count(ledger) == 2 {
            map.remove(&conversation_id);
        }
    }

    async fn write(&self, ops: Vec<WriteOp>) -> Result<(), StoreError> {
        let has_outbox = ops.iter().any(|op| match op {
            WriteOp::InsertInjection { outbox, .. } | WriteOp::RecordEvent { outbox, .. } => !outbox.is_empty(),
            WriteOp::UpdateInjection(u) => !u.outbox.is_empty(),
            _ => false,
        });
        self.inner.in_flight.fetch_add(1, Ordering::Relaxed);
        let r = self.inner.store.write(ops).await;
        self.inner.in_flight.fetch_sub(1, Ordering::Relaxed);
        r?;
        if has_outbox {
            if let Some(cb) = &self.inner.on_commit {
                cb();
            }
        }
        Ok(())
    }

    /// One webhook message per destination (the payload's `webhookUrl`, then the global
    /// endpoints; each URL once).
    fn outbox(&self, row: &InjectionRow, event: &str, latency_ms: u64, now: i64) -> Vec<OutboxRow> {
        let mut urls: Vec<String> = row.payload.webhook_url().map(|u| u.to_string()).into_iter().collect();
        for g in &self.inner.global_webhooks {
            if !urls.contains(g) {
                urls.push(g.clone());
            }
        }
        if urls.is_empty() {
            return Vec::new();
        }
        let timestamp = rfc3339(now);
        let body = WebhookBody {
            event_type: event,
            injection_id: row.id,
            conversation_id: row.conversation_id,
            prompt_id: row.prompt_id,
            latency_ms,
            timestamp: &timestamp,
            context: row.payload.context_data(),
            alignment_status: "SYNCED",
        };
        // Strings, numbers and an already valid JSON map: serialising into a Vec cannot fail.
        let body = Bytes::from(serde_json::to_vec(&body).unwrap_or_default());
        urls.into_iter().map(|u| OutboxRow::new(row.id, u, event, body.clone(), now)).collect()
    }

    fn candidate(&self, row: &InjectionRow, queue_timeout_ms: u64) -> Candidate {
        let d = row.payload.display();
        Candidate {
            id: row.id,
            priority_rank: priority_rank(row.priority),
            max_concurrent: d.max_concurrent_prompts,
            delay_ms: d.delay_ms,
            auto_dismiss_ms: d.auto_dismiss_ms,
            reject_when_full: matches!(row.payload.on_capacity(), OnCapacity::Reject),
            queue_timeout_ms,
            seq: self.inner.seq.fetch_add(1, Ordering::Relaxed),
        }
    }

    /// Accepts one valid payload: resolves its content, admits or arms it, and answers only
    /// after the injection, its audit records, its webhook messages and its idempotent
    /// answer are durable.
    pub async fn accept(&self, payload: ValidPayload, meta: AcceptMeta) -> Result<Accepted, ServiceError> {
        self.accept_as(payload, meta, None).await
    }

    /// Accepts the prompt of a rule that fired (source `rule`, its `rule_id` recorded, the
    /// rule's priority ordering the capacity queue). The payload carries no conditions: the
    /// rule engine already decided.
    pub async fn accept_rule(
        &self,
        payload: ValidPayload,
        rule_id: &str,
        priority: Priority,
        received_at: Instant,
    ) -> Result<Accepted, ServiceError> {
        let meta = AcceptMeta {
            source: Source::Rule,
            api_key_id: None,
            idempotency_key: None,
            request_hash: String::new(),
            received_at,
        };
        self.accept_as(payload, meta, Some((rule_id.to_string(), priority))).await
    }

    async fn accept_as(
        &self,
        payload: ValidPayload,
        meta: AcceptMeta,
        rule: Option<(String, Priority)>,
    ) -> Result<Accepted, ServiceError> {
        if self.is_shutting_down() {
            return Err(ServiceError::ShuttingDown);
        }
        let content =
            resolve_prompt(&payload, self.inner.catalogue.as_ref()).map_err(ServiceError::UnknownPrompt)?.clone();
        let now = self.now_ms();
        let id = Uuid::now_v7();
        let armed = !payload.trigger_conditions().is_empty();
        let queue_timeout = payload.queue_timeout_ms();
        let mut row = InjectionRow::new(id, InjectionStatus::Armed, payload, content, meta.source, now);
        row.api_key_id = meta.api_key_id.clone();
        let actor = match &rule {
            Some((rule_id, _)) => format!("rule:{rule_id}"),
            None => meta.api_key_id.clone().unwrap_or_else(|| meta.source.as_str().to_string()),
        };
        if let Some((rule_id, priority)) = rule {
            row.rule_id = Some(rule_id);
            row.priority = priority;
        }
        let conv = row.conversation_id;

        let ledger = self.ledger_for(conv);
        let mut guard = ledger.lock().await;
        let snapshot = guard.clone();
        let mut effects = Vec::new();
        if !armed {
            let c = self.candidate(&row, queue_timeout);
            // A fresh v7 id cannot already be in the ledger; treat it as a refusal if it were.
            let admitted = guard.admit(c, ms_u64(now)).map_err(|_| ServiceError::Capacity {
                conversation_id: conv,
                retry_after_ms: 0,
                reason: "duplicate",
            })?;
            effects = admitted.effects;
            match admitted.decision {
                Admit::Scheduled { show_at_ms, expires_at_ms } => {
                    row.status = InjectionStatus::Scheduled;
                    row.admitted_at = Some(now);
                    row.show_at = Some(ms_i64(show_at_ms));
                    row.expires_at = Some(ms_i64(expires_at_ms));
                }
                Admit::Queued { deadline_ms, .. } => {
                    row.status = InjectionStatus::Queued;
                    row.queue_deadline = Some(ms_i64(deadline_ms));
                }
                Admit::Rejected { retry_after_ms, reason } => {
                    // Nothing of this candidate is in the ledger; what became due meanwhile
                    // still has to be recorded.
                    self.apply(&mut guard, effects, "system").await;
                    self.schedule(conv, guard.next_deadline());
                    let reason = match reason {
                        RejectReason::Full => "full",
                        RejectReason::QueueFull => "queue full",
                    };
                    return Err(ServiceError::Capacity { conversation_id: conv, retry_after_ms, reason });
                }
            }
        }

        let latency_ms = meta.received_at.elapsed().as_millis() as u64;
        let accepted = Accepted {
            injection_id: id,
            status: row.status,
            conversation_id: conv,
            prompt_id: row.prompt_id,
            accepted_at: rfc3339(now),
            latency_ms,
        };
        let idempotency = match (&meta.idempotency_key, &meta.api_key_id) {
            (Some(key), Some(key_id)) => Some(IdempotencyRow {
                api_key_id: key_id.clone(),
                key: key.clone(),
                request_hash: meta.request_hash.clone(),
                status_code: 201,
                response_body: accepted.to_body(),
                injection_id: Some(id),
                created_at: now,
            }),
            _ => None,
        };
        let mut first = draft(&row, "accepted", &actor, None);
        first.latency_ms = Some(latency_ms);
        let audit = vec![first, draft(&row, row.status.as_str(), &actor, None)];
        let outbox = self.outbox(&row, EVENT_INJECTED, latency_ms, now);
        let op = WriteOp::InsertInjection { row: Box::new(row.clone()), audit, outbox, idempotency };
        if let Err(e) = self.write(vec![op]).await {
            *guard = snapshot;
            self.maybe_drop_ledger(conv, &ledger, guard.is_empty());
            return Err(match e {
                StoreError::IdempotencyKeyInUse { key } => ServiceError::IdempotencyRace(key),
                e => ServiceError::Store(e),
            });
        }
        self.inner.stats.admit_latency.observe(meta.received_at.elapsed());
        self.inner.stats.delivery_trace.note_admitted(id, meta.received_at, Instant::now());
        self.inner.stats.count(row.status);
        if row.status == InjectionStatus::Armed {
            let _ = self.inner.armed_changes.send(ArmedChange::Armed {
                id,
                conversation_id: conv,
                conditions: row.payload.trigger_conditions().to_vec(),
            });
        }
        self.live().insert(row);
        self.apply(&mut guard, effects, "system").await;
        self.schedule(conv, guard.next_deadline());
        let empty = guard.is_empty();
        drop(guard);
        self.maybe_drop_ledger(conv, &ledger, empty);
        Ok(accepted)
    }

    /// Records the ledger's effects (each its own store write, in order) and sends the
    /// channel deliveries for those that committed. Failures are logged and counted: the
    /// ledger already moved, and the row is reconciled at the next restart's recovery.
    async fn apply(&self, _ledger: &mut Ledger, effects: Vec<Effect>, actor: &str) {
        let mut deliveries = Vec::new();
        for e in effects {
            let now = self.now_ms();
            let Some(row) = self.effect_row(&e, None) else { continue };
            let Some(step) = self.effect_update(e, &row, actor, now) else { continue };
            if let Ok(row) = self.commit_update(row, step.update).await {
                deliveries.extend(delivery(step.kind, row));
            }
        }
        for d in deliveries {
            self.deliver(d);
        }
    }

    /// The live row an effect is about: the one `pending` holds (changed earlier in the
    /// same write), else the live map's.
    fn effect_row(&self, e: &Effect, pending: Option<&HashMap<Uuid, InjectionRow>>) -> Option<InjectionRow> {
        let id = match e {
            Effect::Shown { id, .. }
            | Effect::Expired { id, .. }
            | Effect::QueueTimedOut { id, .. }
            | Effect::Promoted { id, .. } => *id,
        };
        let row = pending.and_then(|p| p.get(&id).cloned()).or_else(|| self.live().get(&id));
        if row.is_none() {
            tracing::warn!(injection = %id, "ledger effect for an injection that is not live; ignored");
        }
        row
    }

    /// The change one ledger effect makes to `row` at `now`, and what to deliver once it is
    /// durable; `None` when there is nothing to record (a recovered prompt already shown).
    fn effect_update(&self, e: Effect, row: &InjectionRow, actor: &str, now: i64) -> Option<Step> {
        let id = row.id;
        Some(match e {
            Effect::Shown { at_ms, expires_at_ms, .. } => {
                if row.status == InjectionStatus::Delivered {
                    // Recovered on-screen prompts are re-admitted as already shown.
                    return None;
                }
                let late = now.saturating_sub(ms_i64(at_ms)).max(0);
                self.inner.stats.delivery_latency.observe(Duration::from_millis(ms_u64(late)));
                let mut d = draft(row, "delivered", actor, None);
                d.latency_ms = Some(ms_u64(late));
                let mut u = InjectionUpdate::new(id, row.status, InjectionStatus::Delivered, now, d);
                u.show_at = Some(ms_i64(at_ms));
                u.expires_at = Some(ms_i64(expires_at_ms));
                Step { update: u, kind: Some(Kind::Show), show_at_ms: Some(at_ms) }
            }
            Effect::Expired { at_ms, .. } => {
                let d = draft(row, "expired", actor, Some("auto_dismissed"));
                let mut u = InjectionUpdate::new(id, row.status, InjectionStatus::Expired, now, d);
                u.outbox = self.outbox(row, EVENT_EXPIRED, ms_u64(now.saturating_sub(ms_i64(at_ms))), now);
                Step { update: u, kind: Some(Kind::Remove("expired")), show_at_ms: None }
            }
            Effect::QueueTimedOut { .. } => {
                let msg =
                    format!("no display slot freed within queueTimeoutMs ({} ms)", row.payload.queue_timeout_ms());
                let mut d = draft(row, "failed", actor, Some("queue_timeout"));
                d.error = Some(msg.clone());
                let mut u = InjectionUpdate::new(id, row.status, InjectionStatus::Failed, now, d);
                u.last_error = Some(msg);
                u.outbox = self.outbox(row, EVENT_FAILED, 0, now);
                Step { update: u, kind: None, show_at_ms: None }
            }
            Effect::Promoted { at_ms, show_at_ms, expires_at_ms, .. } => {
                let d = draft(row, "scheduled", actor, Some("promoted"));
                let mut u = InjectionUpdate::new(id, row.status, InjectionStatus::Scheduled, now, d);
                u.admitted_at = Some(ms_i64(at_ms));
                u.show_at = Some(ms_i64(show_at_ms));
                u.expires_at = Some(ms_i64(expires_at_ms));
                Step { update: u, kind: None, show_at_ms: None }
            }
        })
    }
}

/// What one ledger effect changes, before it is written.
struct Step {
    update: InjectionUpdate,
    kind: Option<Kind>,
    /// The show instant (epoch ms) of a prompt going on screen.
    show_at_ms: Option<u64>,
}

/// A status change ready to write: its store operations, and the row as it stands once they
/// are durable.
struct Change {
    ops: Vec<WriteOp>,
    before: InjectionStatus,
    after: InjectionRow,
}

/// One change of a due batch, with what to deliver after the commit.
struct DueChange {
    /// Index of its conversation in the batch.
    conv: usize,
    change: Change,
    kind: Option<Kind>,
    /// For the trace: when the prompt fell due.
    due: Option<Instant>,
}

/// The channel delivery a committed change calls for.
fn delivery(kind: Option<Kind>, row: InjectionRow) -> Option<Delivery> {
    match kind {
        Some(Kind::Show) => Some(Delivery::Show(Box::new(row))),
        Some(Kind::Remove(status)) => Some(Delivery::Remove { row: Box::new(row), status }),
        None => None,
    }
}

impl Service {
    /// Writes one status change; on success updates the live map and returns the row as it
    /// now stands.
    async fn commit_update(&self, row: InjectionRow, u: InjectionUpdate) -> Result<InjectionRow, StoreError> {
        self.commit_update_by(row, u, None).await
    }

    /// [`Self::commit_update`], naming the agent whose action it is in the engagement row
    /// (the row's own agent id, from the rule that created it, otherwise).
    async fn commit_update_by(
        &self,
        row: InjectionRow,
        u: InjectionUpdate,
        agent_id: Option<&str>,
    ) -> Result<InjectionRow, StoreError> {
        let (id, status) = (row.id, u.status);
        let Change { ops, before, after } = self.prepare_change(row, u, agent_id);
        if let Err(e) = self.write(ops).await {
            tracing::warn!(injection = %id, to = %status, error = %e, "could not record a state change");
            return Err(e);
        }
        self.change_committed(before, &after);
        Ok(after)
    }

    /// The store operations of a status change (the row's update, and the engagement event
    /// it is, if any) and the row as it will stand once they are durable.
    fn prepare_change(&self, row: InjectionRow, u: InjectionUpdate, agent_id: Option<&str>) -> Change {
        let (from, status, at) = (row.status, u.status, u.at);
        let mut ops = Vec::with_capacity(2);
        let engagement = engagement_for(from, status).map(|kind| {
            let mut e = EngagementRow::of(&row, kind, at);
            e.shown_at = u.show_at.or(row.show_at);
            self.stamp_agent(&mut e, agent_id);
            e
        });
        let mut after = row;
        after.status = status;
        after.updated_at = at;
        after.admitted_at = u.admitted_at.or(after.admitted_at);
        after.show_at = u.show_at.or(after.show_at);
        after.expires_at = u.expires_at.or(after.expires_at);
        after.queue_deadline = u.queue_deadline.or(after.queue_deadline);
        after.last_error = u.last_error.clone().or(after.last_error);
        ops.push(WriteOp::UpdateInjection(Box::new(u)));
        ops.extend(engagement.map(WriteOp::Engagement));
        Change { ops, before: from, after }
    }

    /// Bookkeeping once a change is durable: armed-set listeners, counters, the live map.
    fn change_committed(&self, before: InjectionStatus, row: &InjectionRow) {
        if before == InjectionStatus::Armed && row.status != InjectionStatus::Armed {
            let _ = self
                .inner
                .armed_changes
                .send(ArmedChange::Disarmed { id: row.id, conversation_id: row.conversation_id });
        }
        self.inner.stats.count(row.status);
        let mut live = self.live();
        if row.status.is_live() {
            live.insert(row.clone());
        } else {
            live.remove(&row.id);
        }
    }

    /// Sends a committed change to the enabled channels.
    fn deliver(&self, d: Delivery) {
        let ch = self.inner.channels;
        match d {
            Delivery::Show(row) => {
                if ch.panel {
                    let shown = rfc3339(row.show_at.unwrap_or(row.updated_at));
                    let expires = rfc3339(row.expires_at.unwrap_or(row.updated_at));
                    let data = PanelHub::prompt_data(row.id, &row.content, row.payload.display(), &shown, &expires);
                    self.inner.panel.publish(row.conversation_id, "prompt", data);
                }
                if let Some(tx) = &self.inner.pd_tx {
                    let _ = tx.send(PdJob::Show { row });
                }
            }
            Delivery::Remove { row, status } => {
                if ch.panel {
                    let data = json!({ "injectionId": row.id, "reason": status });
                    self.inner.panel.publish(row.conversation_id, "remove", data);
                }
                if let Some(tx) = &self.inner.pd_tx {
                    let _ = tx.send(PdJob::Mark { row, status });
                }
            }
        }
    }

    /// Sleeps until the earliest deadline and hands everything due then to a delivery task.
    ///
    /// The timer itself never waits for a store write: a prompt falling due while earlier
    /// ones are committing is picked up on time and written in the next transaction, instead
    /// of waiting for the earlier writes before the timer even looks at it (which was the
    /// tail of trigger → panel: see BENCHMARKS.md, "Trigger to panel").
    async fn run_timer(&self) {
        let mut batches = tokio::task::JoinSet::new();
        loop {
            while batches.try_join_next().is_some() {}
            if self.is_shutting_down() {
                break;
            }
            let next = self.inner.timers.lock().unwrap_or_else(|p| p.into_inner()).peek().map(|r| r.0 .0);
            let Some(deadline) = next else {
                self.inner.wake.notified().await;
                continue;
            };
            // In microseconds: whole milliseconds from a millisecond clock would wake up to a
            // millisecond after the deadline, on top of the runtime's own timer tick.
            let now_us = self.inner.clock.now_us();
            let due_us = ms_i64(deadline).saturating_mul(1000);
            if due_us > now_us {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_micros(ms_u64(due_us - now_us))) => {}
                    _ = self.inner.wake.notified() => {}
                }
                continue;
            }
            let now = ms_u64(now_us.div_euclid(1000)).max(deadline);
            let woke = Instant::now();
            let mut due = Vec::new();
            {
                let mut seen = std::collections::HashSet::new();
                let mut heap = self.inner.timers.lock().unwrap_or_else(|p| p.into_inner());
                while let Some(Reverse((t, conv))) = heap.peek().copied() {
                    if t > now {
                        break;
                    }
                    heap.pop();
                    if seen.insert(conv) {
                        due.push(conv);
                    }
                }
            }
            // A backlog after a stall is cut into bounded writes.
            for chunk in due.chunks(DUE_BATCH) {
                let (svc, chunk) = (self.clone(), chunk.to_vec());
                batches.spawn(async move { svc.deliver_due(chunk, woke).await });
            }
        }
        // What is already being delivered finishes, so `drained` means nothing still writes.
        while batches.join_next().await.is_some() {}
    }

    /// Applies what fell due on these conversations with ONE store write, then publishes
    /// every prompt it put on screen. A conversation whose ledger is busy (an accept or an
    /// agent's action mid-write) is ticked on its own meanwhile, so it holds up no other.
    async fn deliver_due(&self, due: Vec<Uuid>, woke: Instant) {
        let mut held = Vec::with_capacity(due.len());
        let mut busy = Vec::new();
        for conv in due {
            let Some(ledger) = self.ledgers().get(&conv).cloned() else { continue };
            match ledger.clone().try_lock_owned() {
                Ok(guard) => held.push((conv, ledger, guard)),
                Err(_) => busy.push(conv),
            }
        }
        let alone = futures::future::join_all(busy.into_iter().map(|conv| self.tick(conv)));
        // The batch lets go of its ledgers as soon as its write is done, never after the busy
        // ones: those wait for locks, and a batch holding its own while waiting could close a
        // cycle with another batch doing the same.
        let together = async move {
            let mut held = held;
            let mut guards: Vec<&mut Ledger> = held.iter_mut().map(|(_, _, g)| &mut **g).collect();
            self.apply_due(&mut guards, woke).await;
            for (conv, ledger, guard) in held {
                self.schedule(conv, guard.next_deadline());
                let empty = guard.is_empty();
                drop(guard);
                self.maybe_drop_ledger(conv, &ledger, empty);
            }
        };
        tokio::join!(alone, together);
    }

    /// Ticks these (locked) ledgers and records all their effects in one store write; when
    /// that write fails, each change is tried alone, so one conversation's conflict costs no
    /// other conversation its delivery.
    async fn apply_due(&self, ledgers: &mut [&mut Ledger], woke: Instant) {
        let now = self.now_ms();
        let tracing_on = self.inner.stats.delivery_trace.is_on();
        let mut changes: Vec<DueChange> = Vec::new();
        for (i, ledger) in ledgers.iter_mut().enumerate() {
            // Rows changed earlier in this write: a later effect on the same injection
            // (promoted, then shown) starts from where the earlier one left it.
            let mut pending: HashMap<Uuid, InjectionRow> = HashMap::new();
            for e in ledger.tick(ms_u64(now)) {
                let Some(row) = self.effect_row(&e, Some(&pending)) else { continue };
                let Some(step) = self.effect_update(e, &row, "system", now) else { continue };
                let due = match step.show_at_ms {
                    Some(at_ms) if tracing_on => {
                        let t = Instant::now();
                        let late_us = self.inner.clock.now_us().saturating_sub(ms_i64(at_ms).saturating_mul(1000));
                        Some(t.checked_sub(Duration::from_micros(ms_u64(late_us))).unwrap_or(t))
                    }
                    _ => None,
                };
                let change = self.prepare_change(row, step.update, None);
                pending.insert(change.after.id, change.after.clone());
                changes.push(DueChange { conv: i, change, kind: step.kind, due });
            }
        }
        if changes.is_empty() {
            return;
        }
        let many = ledgers.len() > 1;
        let ops: Vec<WriteOp> = if many {
            changes.iter().flat_map(|c| c.change.ops.iter().cloned()).collect()
        } else {
            changes.iter_mut().flat_map(|c| std::mem::take(&mut c.change.ops)).collect()
        };
        let submitted = Instant::now();
        let committed: Vec<(DueChange, Instant)> = match self.write(ops).await {
            Ok(()) => {
                let at = Instant::now();
                changes.into_iter().map(|c| (c, at)).collect()
            }
            Err(e) if many => {
                tracing::warn!(error = %e, changes = changes.len(), "could not record a due batch; recording each change alone");
                self.write_each(changes).await
            }
            Err(e) => {
                tracing::warn!(error = %e, changes = changes.len(), "could not record what fell due");
                Vec::new()
            }
        };
        let shows = committed.iter().filter(|(c, _)| matches!(c.kind, Some(Kind::Show))).count();
        let mut traces = Vec::new();
        for (c, at) in committed {
            self.change_committed(c.change.before, &c.change.after);
            if let Some(due) = c.due {
                traces.push(DeliveryTrace {
                    injection_id: c.change.after.id,
                    conversation_id: c.change.after.conversation_id,
                    received: None,
                    admitted: None,
                    due,
                    woke,
                    submitted,
                    committed: at,
                    published: at,
                    batch: shows,
                });
            }
            if let Some(d) = delivery(c.kind, c.change.after) {
                self.deliver(d);
            }
        }
        let published = Instant::now();
        for mut t in traces {
            t.published = published;
            self.inner.stats.delivery_trace.push(t);
        }
    }

    /// The fallback of a failed due batch: each conversation's changes written one by one,
    /// in order (conversations side by side), as separate writes would have been.
    async fn write_each(&self, changes: Vec<DueChange>) -> Vec<(DueChange, Instant)> {
        let mut by_conv: Vec<Vec<DueChange>> = Vec::new();
        for c in changes {
            match by_conv.last_mut() {
                Some(group) if group.first().is_some_and(|g| g.conv == c.conv) => group.push(c),
                _ => by_conv.push(vec![c]),
            }
        }
        let per_conv = by_conv.into_iter().map(|group| async move {
            let mut done = Vec::new();
            for mut c in group {
                let ops = std::mem::take(&mut c.change.ops);
                match self.write(ops).await {
                    Ok(()) => done.push((c, Instant::now())),
                    Err(e) => {
                        let (id, to) = (c.change.after.id, c.change.after.status);
                        tracing::warn!(injection = %id, to = %to, error = %e, "could not record a state change");
                    }
                }
            }
            done
        });
        futures::future::join_all(per_conv).await.into_iter().flatten().collect()
    }

    /// Applies everything due on one conversation.
    async fn tick(&self, conv: Uuid) {
        let Some(ledger) = self.ledgers().get(&conv).cloned() else { return };
        let mut guard = ledger.lock().await;
        let effects = guard.tick(ms_u64(self.now_ms()));
        self.apply(&mut guard, effects, "system").await;
        self.schedule(conv, guard.next_deadline());
        let empty = guard.is_empty();
        drop(guard);
        self.maybe_drop_ledger(conv, &ledger, empty);
    }

    /// The live row of `id`, or why there is none.
    async fn live_row(&self, id: Uuid) -> Result<InjectionRow, ServiceError> {
        if let Some(r) = self.live().get(&id) {
            return Ok(r);
        }
        match self.inner.store.get_injection(id).await? {
            Some(r) => Ok(r.row),
            None => Err(ServiceError::NotFound(id)),
        }
    }

    /// The conversation ledger an injection belongs to, and its row as last seen.
    async fn with_ledger(&self, id: Uuid) -> Result<(ConvLedger, InjectionRow), ServiceError> {
        let row = self.live_row(id).await?;
        Ok((self.ledger_for(row.conversation_id), row))
    }

    /// Reschedules the conversation's timer and drops its ledger if nothing is left in it.
    fn release_ledger(&self, conv: Uuid, ledger: &ConvLedger, guard: tokio::sync::MutexGuard<'_, Ledger>) {
        self.schedule(conv, guard.next_deadline());
        let empty = guard.is_empty();
        drop(guard);
        self.maybe_drop_ledger(conv, ledger, empty);
    }

    /// Trigger conditions held: moves an armed injection into admission.
    pub async fn fire(&self, id: Uuid, actor: &str) -> Result<InjectionStatus, ServiceError> {
        if self.is_shutting_down() {
            return Err(ServiceError::ShuttingDown);
        }
        let (ledger, row) = self.with_ledger(id).await?;
        let conv = row.conversation_id;
        let mut guard = ledger.lock().await;
        let r = self.fire_locked(id, actor, &mut guard).await;
        self.release_ledger(conv, &ledger, guard);
        r
    }

    async fn fire_locked(&self, id: Uuid, actor: &str, ledger: &mut Ledger) -> Result<InjectionStatus, ServiceError> {
        // Read again under the lock: it may have changed while we waited.
        let row = self.live_row(id).await?;
        if row.status != InjectionStatus::Armed {
            return Err(ServiceError::WrongState { id, status: row.status, action: "fire", needs: "armed" });
        }
        let now = self.now_ms();
        let snapshot = ledger.clone();
        let c = self.candidate(&row, row.payload.queue_timeout_ms());
        let admitted = ledger.admit(c, ms_u64(now)).map_err(|_| ServiceError::WrongState {
            id,
            status: row.status,
            action: "fire",
            needs: "not yet admitted",
        })?;
        let fired = draft(&row, "fired", actor, None);
        let mut u = match admitted.decision {
            Admit::Scheduled { show_at_ms, expires_at_ms } => {
                let mut u = InjectionUpdate::new(id, row.status, InjectionStatus::Scheduled, now, fired);
                u.audit.push(draft(&row, "scheduled", actor, None));
                u.admitted_at = Some(now);
                u.show_at = Some(ms_i64(show_at_ms));
                u.expires_at = Some(ms_i64(expires_at_ms));
                u
            }
            Admit::Queued { deadline_ms, .. } => {
                let mut u = InjectionUpdate::new(id, row.status, InjectionStatus::Queued, now, fired);
                u.audit.push(draft(&row, "queued", actor, None));
                u.queue_deadline = Some(ms_i64(deadline_ms));
                u
            }
            Admit::Rejected { retry_after_ms, .. } => {
                let msg = format!(
                    "no free prompt slot when the trigger fired (onCapacity reject; frees in {retry_after_ms} ms)"
                );
                let mut u = InjectionUpdate::new(id, row.status, InjectionStatus::Failed, now, fired);
                let mut d = draft(&row, "failed", actor, Some("capacity"));
                d.error = Some(msg.clone());
                u.audit.push(d);
                u.last_error = Some(msg);
                u.outbox = self.outbox(&row, EVENT_FAILED, 0, now);
                u
            }
        };
        u.at = now;
        let status = u.status;
        if let Err(e) = self.commit_update(row, u).await {
            *ledger = snapshot;
            return Err(e.into());
        }
        self.apply(ledger, admitted.effects, "system").await;
        Ok(status)
    }

    /// Cancels (armed, queued) or withdraws (scheduled, on screen) an injection.
    pub async fn cancel(&self, id: Uuid, actor: &str) -> Result<InjectionStatus, ServiceError> {
        let (ledger, row) = self.with_ledger(id).await?;
        let conv = row.conversation_id;
        let mut guard = ledger.lock().await;
        let r = self.cancel_locked(id, actor, &mut guard).await;
        self.release_ledger(conv, &ledger, guard);
        r
    }

    async fn cancel_locked(&self, id: Uuid, actor: &str, ledger: &mut Ledger) -> Result<InjectionStatus, ServiceError> {
        let row = self.live_row(id).await?;
        if !row.status.is_live() {
            return Err(ServiceError::WrongState {
                id,
                status: row.status,
                action: "cancel",
                needs: "armed, queued, scheduled or delivered",
            });
        }
        let now = self.now_ms();
        let snapshot = ledger.clone();
        let (status, effects, shown) = if row.status == InjectionStatus::Armed {
            (InjectionStatus::Cancelled, Vec::new(), false)
        } else {
            match ledger.cancel(id, ms_u64(now)) {
                Ok(c) => match c.was {
                    Was::Queued => (InjectionStatus::Cancelled, c.effects, false),
                    Was::Scheduled => (InjectionStatus::Withdrawn, c.effects, false),
                    Was::Shown => (InjectionStatus::Withdrawn, c.effects, true),
                },
                // Not in the ledger although live: it finished meanwhile; report what it is.
                Err(_) => {
                    return Err(ServiceError::WrongState { id, status: row.status, action: "cancel", needs: "live" });
                }
            }
        };
        // The cancel call may have replayed this injection's own show first.
        let (pre, rest): (Vec<Effect>, Vec<Effect>) =
            effects.into_iter().partition(|e| matches!(e, Effect::Shown { id: i, .. } if *i == id));
        let mut shown_now = shown;
        let mut row = row;
        if !pre.is_empty() {
            self.apply(ledger, pre, "system").await;
            row = self.live_row(id).await?;
            shown_now = true;
        }
        let reason = if status == InjectionStatus::Cancelled { "cancelled" } else { "withdrawn" };
        let d = draft(&row, status.as_str(), actor, Some(reason));
        let u = InjectionUpdate::new(id, row.status, status, now, d);
        let row = match self.commit_update(row, u).await {
            Ok(row) => row,
            Err(e) => {
                *ledger = snapshot;
                return Err(e.into());
            }
        };
        if shown_now {
            self.deliver(Delivery::Remove { row: Box::new(row), status: "withdrawn" });
        }
        self.apply(ledger, rest, "system").await;
        Ok(status)
    }

    /// The agent dismissed or clicked a shown prompt: frees its slot. `agent_id` (the
    /// signed-in agent's Genesys user id) goes into the engagement row.
    pub async fn engage(
        &self,
        id: Uuid,
        kind: Engagement,
        actor: &str,
        agent_id: Option<&str>,
    ) -> Result<InjectionStatus, ServiceError> {
        let (ledger, row) = self.with_ledger(id).await?;
        let conv = row.conversation_id;
        let mut guard = ledger.lock().await;
        let r = self.engage_locked(id, kind, actor, agent_id, &mut guard).await;
        self.release_ledger(conv, &ledger, guard);
        r
    }

    async fn engage_locked(
        &self,
        id: Uuid,
        kind: Engagement,
        actor: &str,
        agent_id: Option<&str>,
        ledger: &mut Ledger,
    ) -> Result<InjectionStatus, ServiceError> {
        let now = self.now_ms();
        // Bring the ledger up to date first so a prompt due to show counts as shown.
        let due = ledger.tick(ms_u64(now));
        self.apply(ledger, due, "system").await;
        let row = self.live_row(id).await?;
        if row.status != InjectionStatus::Delivered {
            return Err(ServiceError::WrongState { id, status: row.status, action: "engage", needs: "delivered" });
        }
        let snapshot = ledger.clone();
        let why = match kind {
            Engagement::Dismissed => Release::Dismissed,
            Engagement::Clicked => Release::Clicked,
        };
        let effects = ledger.release(id, why, ms_u64(now)).map_err(|_| ServiceError::WrongState {
            id,
            status: row.status,
            action: "engage",
            needs: "on screen",
        })?;
        let (status, event, word) = match kind {
            Engagement::Dismissed => (InjectionStatus::Dismissed, EVENT_DISMISSED, "dismissed"),
            Engagement::Clicked => (InjectionStatus::Clicked, EVENT_CLICKED, "clicked"),
        };
        let mut u = InjectionUpdate::new(id, row.status, status, now, draft(&row, word, actor, None));
        let since = now.saturating_sub(row.show_at.unwrap_or(now)).max(0);
        u.outbox = self.outbox(&row, event, ms_u64(since), now);
        let row = match self.commit_update_by(row, u, agent_id).await {
            Ok(row) => row,
            Err(e) => {
                *ledger = snapshot;
                return Err(e.into());
            }
        };
        self.deliver(Delivery::Remove { row: Box::new(row), status: word });
        self.apply(ledger, effects, "system").await;
        Ok(status)
    }

    /// The agent's panel had the prompt visible on screen for at least a second: an audit
    /// record, an engagement row and the `..._VIEWED` webhook, in one write. No status
    /// changes and no slot is freed. Only a prompt that reached the screen can be viewed.
    pub async fn record_viewed(&self, id: Uuid, actor: &str, agent_id: Option<&str>) -> Result<(), ServiceError> {
        let row = self.shown_row(id, "record a view").await?;
        let now = self.now_ms();
        let since = now.saturating_sub(row.show_at.unwrap_or(now)).max(0);
        let audit = draft(&row, "viewed", actor, None);
        let outbox = self.outbox(&row, EVENT_VIEWED, ms_u64(since), now);
        let mut e = EngagementRow::of(&row, EngagementKind::Viewed, now);
        self.stamp_agent(&mut e, agent_id);
        self.write(vec![WriteOp::RecordEvent { audit, outbox }, WriteOp::Engagement(e)]).await?;
        Ok(())
    }

    /// The agent rated a prompt (thumbs up `+1`, down `-1`): an audit record and an
    /// engagement row carrying the rating. No status change and no webhook (CONTRACT §5
    /// names no feedback event).
    pub async fn record_feedback(
        &self,
        id: Uuid,
        rating: i8,
        actor: &str,
        agent_id: Option<&str>,
    ) -> Result<(), ServiceError> {
        let rating = rating.signum();
        let row = self.shown_row(id, "rate").await?;
        if rating == 0 {
            return Err(ServiceError::WrongState {
                id,
                status: row.status,
                action: "rate",
                needs: "a rating of +1 or -1",
            });
        }
        let now = self.now_ms();
        let audit = draft(&row, "feedback", actor, Some(if rating > 0 { "helpful" } else { "not_helpful" }));
        let mut e = EngagementRow::of(&row, EngagementKind::Feedback, now);
        self.stamp_agent(&mut e, agent_id);
        e.rating = Some(rating);
        self.write(vec![WriteOp::RecordEvent { audit, outbox: Vec::new() }, WriteOp::Engagement(e)]).await?;
        Ok(())
    }

    /// The row of an injection that has been on screen (shown now, or shown and since
    /// clicked, dismissed, expired or withdrawn).
    async fn shown_row(&self, id: Uuid, action: &'static str) -> Result<InjectionRow, ServiceError> {
        let row = self.live_row(id).await?;
        use InjectionStatus as S;
        let was_shown = matches!(row.status, S::Delivered | S::Clicked | S::Dismissed | S::Expired | S::Withdrawn)
            && row.show_at.is_some();
        if !was_shown {
            return Err(ServiceError::WrongState { id, status: row.status, action, needs: "shown on the panel" });
        }
        Ok(row)
    }

    /// The conversation ended: its armed prompts will never fire and are recorded expired.
    pub async fn conversation_ended(&self, conversation_id: Uuid) -> Result<usize, ServiceError> {
        let ledger = self.ledger_for(conversation_id);
        let guard = ledger.lock().await;
        let armed: Vec<InjectionRow> = self.live().rows_on(conversation_id, InjectionStatus::Armed);
        let now = self.now_ms();
        let mut n = 0;
        for row in armed {
            let d = draft(&row, "expired", "system", Some("conversation_ended"));
            let mut u = InjectionUpdate::new(row.id, row.status, InjectionStatus::Expired, now, d);
            u.outbox = self.outbox(&row, EVENT_EXPIRED, 0, now);
            if self.commit_update(row, u).await.is_ok() {
                n += 1;
            }
        }
        // Nothing left to show on this conversation: its panel stream can go (a connected
        // panel sees its stream end).
        if !self.live().any_on(conversation_id) {
            self.inner.panel.forget(conversation_id);
        }
        self.release_ledger(conversation_id, &ledger, guard);
        Ok(n)
    }

    /// Rebuilds the ledgers from what a previous run left live: prompts on screen keep their
    /// slots until their recorded expiry, scheduled ones keep their show time, queued ones
    /// their deadline; armed ones wait again; those whose expiry passed while down are
    /// recorded expired.
    async fn recover(&self) -> Result<(), ServiceError> {
        let now = self.now_ms();
        let set = self.inner.store.recovery_set(now).await?;
        for row in set.expired {
            let d = draft(&row, "expired", "system", Some("auto_dismissed"));
            let mut u = InjectionUpdate::new(row.id, row.status, InjectionStatus::Expired, now, d);
            u.outbox = self.outbox(&row, EVENT_EXPIRED, 0, now);
            self.live().insert(row.clone());
            if let Ok(row) = self.commit_update(row, u).await {
                // Participant data still says "shown": mark it.
                self.deliver(Delivery::Remove { row: Box::new(row), status: "expired" });
            }
        }
        let mut order: Vec<InjectionRow> = set.shown;
        order.extend(set.pending.iter().filter(|r| r.status == InjectionStatus::Scheduled).cloned());
        order.extend(set.pending.iter().filter(|r| r.status == InjectionStatus::Queued).cloned());
        for row in set.pending.iter().filter(|r| r.status == InjectionStatus::Armed) {
            self.live().insert(row.clone());
        }
        let mut convs = Vec::new();
        for row in order {
            let conv = row.conversation_id;
            let ledger = self.ledger_for(conv);
            let mut guard = ledger.lock().await;
            let mut c = self.candidate(&row, 0);
            match row.status {
                InjectionStatus::Delivered => {
                    c.delay_ms = 0;
                    c.auto_dismiss_ms = ms_u64(row.expires_at.unwrap_or(now).saturating_sub(now));
                    // Show it again on every channel: a panel reconnecting after the restart
                    // finds it on its stream, and a participant-data write that was still
                    // pending when the process stopped is made (the PATCH carries the
                    // original times, so repeating it changes nothing).
                    self.deliver(Delivery::Show(Box::new(row.clone())));
                }
                InjectionStatus::Scheduled => {
                    c.delay_ms = ms_u64(row.show_at.unwrap_or(now).saturating_sub(now));
                }
                _ => c.queue_timeout_ms = ms_u64(row.queue_deadline.unwrap_or(now).saturating_sub(now)),
            }
            // Recovered prompts must keep their place even if the limits would now queue them.
            c.reject_when_full = false;
            if row.status != InjectionStatus::Queued {
                c.queue_timeout_ms = ms_u64(row.payload.queue_timeout_ms() as i64);
            }
            self.live().insert(row.clone());
            let admitted = match guard.admit(c, ms_u64(now)) {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(injection = %row.id, error = %e, "could not recover an injection");
                    continue;
                }
            };
            // A recovered row whose place changed (a queued one that now fits, or the
            // reverse) is recorded as such.
            let moved = match (&admitted.decision, row.status) {
                (Admit::Scheduled { show_at_ms, expires_at_ms }, InjectionStatus::Queued) => {
                    let d = draft(&row, "scheduled", "system", Some("recovered"));
                    let mut u = InjectionUpdate::new(row.id, row.status, InjectionStatus::Scheduled, now, d);
                    u.admitted_at = Some(now);
                    u.show_at = Some(ms_i64(*show_at_ms));
                    u.expires_at = Some(ms_i64(*expires_at_ms));
                    Some(u)
                }
                (Admit::Queued { deadline_ms, .. }, InjectionStatus::Scheduled) => {
                    let d = draft(&row, "queued", "system", Some("recovered"));
                    let mut u = InjectionUpdate::new(row.id, row.status, InjectionStatus::Queued, now, d);
                    u.queue_deadline = Some(ms_i64(*deadline_ms));
                    Some(u)
                }
                _ => None,
            };
            if let Some(u) = moved {
                let _ = self.commit_update(row, u).await;
            }
            self.apply(&mut guard, admitted.effects, "system").await;
            if !convs.contains(&conv) {
                convs.push(conv);
            }
        }
        for conv in convs {
            let ledger = self.ledgers().get(&conv).cloned();
            let deadline = match ledger {
                Some(l) => l.lock().await.next_deadline(),
                None => None,
            };
            self.schedule(conv, deadline);
        }
        Ok(())
    }

    /// Writes participant data in order: each write is tried a few times with backoff, then
    /// the failure is recorded in the audit trail (the panel still shows the prompt).
    async fn run_participant_data(&self, mut rx: mpsc::UnboundedReceiver<PdJob>) {
        let mut agents: HashMap<Uuid, String> = HashMap::new();
        let mut stop = self.inner.stop.subscribe();
        loop {
            let job = tokio::select! {
                j = rx.recv() => match j {
                    Some(j) => j,
                    None => return,
                },
                _ = stop.wait_for(|s| *s) => break,
            };
            self.pd_job(&mut agents, &job).await;
        }
        // Shutting down: jobs already queued are still written (a prompt dismissed just
        // before shutdown must not stay "active" in participant data), within a bound; any
        // left over are recorded as abandoned rather than silently dropped.
        let deadline = tokio::time::Instant::now() + PD_DRAIN;
        while let Ok(job) = rx.try_recv() {
            if tokio::time::timeout_at(deadline, self.pd_job(&mut agents, &job)).await.is_err() {
                self.pd_failed(&job, "shutdown came before the participant-data write finished".into()).await;
                while let Ok(rest) = rx.try_recv() {
                    self.pd_failed(&rest, "shutdown came before the participant-data write started".into()).await;
                }
                return;
            }
        }
    }

    /// One participant-data write with its retries; a final failure is recorded.
    async fn pd_job(&self, agents: &mut HashMap<Uuid, String>, job: &PdJob) {
        let (row, attrs) = match job {
            PdJob::Show { row } => {
                let p = self.attribute(row);
                (row, participant_data::show_attributes(&self.inner.prefix, row.id, &p))
            }
            PdJob::Mark { row, status } => {
                let p = self.attribute(row);
                (row, participant_data::mark_attributes(&self.inner.prefix, row.id, &p, status))
            }
        };
        let mut backoff = PD_FIRST_BACKOFF;
        let mut last_err = String::new();
        for attempt in 1..=PD_ATTEMPTS {
            match self.pd_write(agents, row.conversation_id, &attrs).await {
                Ok(()) => return,
                Err(e) => {
                    last_err = e;
                    if attempt < PD_ATTEMPTS {
                        tokio::time::sleep(backoff).await;
                        backoff *= 2;
                    }
                }
            }
        }
        self.pd_failed(job, last_err).await;
    }

    /// Records a participant-data write that did not happen, in the injection's audit trail.
    async fn pd_failed(&self, job: &PdJob, error: String) {
        let (row, what) = match job {
            PdJob::Show { row } => (row, "show"),
            PdJob::Mark { row, .. } => (row, "mark"),
        };
        self.inner.stats.channel_failures.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(injection = %row.id, error = %error, "participant-data write failed");
        let mut d = draft(row, row.status.as_str(), "system", Some(&format!("participant_data_{what}_failed")));
        d.error = Some(error);
        if let Err(e) = self.write(vec![WriteOp::RecordEvent { audit: d, outbox: Vec::new() }]).await {
            tracing::warn!(injection = %row.id, error = %e, "could not record a participant-data failure");
        }
    }

    fn attribute(&self, row: &InjectionRow) -> PromptAttribute {
        let shown = chrono::DateTime::from_timestamp_millis(row.show_at.unwrap_or(row.updated_at)).unwrap_or_default();
        PromptAttribute::shown(row.prompt_id, &row.content, shown, row.payload.display().auto_dismiss_ms)
    }

    async fn pd_write(
        &self,
        agents: &mut HashMap<Uuid, String>,
        conv: Uuid,
        attrs: &std::collections::BTreeMap<String, String>,
    ) -> Result<(), String> {
        let Some(client) = &self.inner.genesys else { return Err("no Genesys client".into()) };
        let cid = conv.to_string();
        let pid = match agents.get(&conv) {
            Some(p) => p.clone(),
            None => {
                let c = client.get_conversation(&cid).await.map_err(|e| e.to_string())?;
                let p = c
                    .connected_agent()
                    .map(|a| a.id.clone())
                    .ok_or_else(|| format!("conversation {cid} has no connected agent participant"))?;
                agents.insert(conv, p.clone());
                p
            }
        };
        let r = client.patch_participant_attributes(&cid, &pid, attrs).await;
        if r.is_err() {
            // The agent may have changed (transfer): look it up again next time.
            agents.remove(&conv);
        }
        r.map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::validate_value;
    use crate::store::{ManualClock, StoreOptions};

    const T0: i64 = 1_760_000_000_000;

    fn payload(conv: Uuid, max: u8, extra: Value) -> ValidPayload {
        let mut v = json!({
            "conversationId": conv,
            "promptId": "d4e5f6a7-b8c9-0123-4567-890abcdef123",
            "triggerConditions": [],
            "displaySettings": {"delayMs": 500, "maxConcurrentPrompts": max, "autoDismissMs": 10000},
            "prompt": {"title": "Refund policy", "body": "Offer a refund."}
        });
        if let (Some(o), Value::Object(more)) = (v.as_object_mut(), extra) {
            o.extend(more);
        }
        validate_value(&v).unwrap()
    }

    fn meta() -> AcceptMeta {
        AcceptMeta {
            source: Source::Api,
            api_key_id: Some("test".into()),
            idempotency_key: None,
            request_hash: String::new(),
            received_at: Instant::now(),
        }
    }

    async fn service(dir: &std::path::Path, clock: &ManualClock, webhooks: Vec<String>) -> (Service, Store) {
        let (svc, store, _) = service_counting(dir, clock, webhooks).await;
        (svc, store)
    }

    /// Also counts the `on_commit` calls (commits that added webhook messages).
    async fn service_counting(
        dir: &std::path::Path,
        clock: &ManualClock,
        webhooks: Vec<String>,
    ) -> (Service, Store, Arc<AtomicU64>) {
        let opts = StoreOptions { clock: Arc::new(clock.clone()), ..StoreOptions::default() };
        let store = Store::open(&dir.join("t.db"), opts).await.unwrap();
        let commits = Arc::new(AtomicU64::new(0));
        let counter = commits.clone();
        let svc = Service::start(ServiceDeps {
            store: store.clone(),
            catalogue: None,
            channels: Channels { panel: true, participant_data: false },
            genesys: None,
            clock: Arc::new(clock.clone()),
            global_webhooks: webhooks,
            on_commit: Some(Arc::new(move || {
                counter.fetch_add(1, Ordering::Relaxed);
            })),
            attribute_prefix: "gcAssist".into(),
        })
        .await
        .unwrap();
        (svc, store, commits)
    }

    async fn status(store: &Store, id: Uuid) -> InjectionStatus {
        store.get_injection(id).await.unwrap().unwrap().row.status
    }

    #[tokio::test]
    async fn dismiss_frees_the_slot_for_the_queue_and_sends_webhooks() {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(T0);
        let hook = "https://kb.example.com/hook".to_string();
        let (svc, store, commits) = service_counting(dir.path(), &clock, vec![hook.clone()]).await;
        let conv = Uuid::now_v7();
        let a = svc.accept(payload(conv, 1, json!({})), meta()).await.unwrap();
        let b = svc.accept(payload(conv, 1, json!({})), meta()).await.unwrap();
        assert_eq!((a.status, b.status), (InjectionStatus::Scheduled, InjectionStatus::Queued));
        // Not shown yet: engaging is refused and changes nothing.
        assert!(matches!(
            svc.engage(a.injection_id, Engagement::Dismissed, "agent", None).await,
            Err(ServiceError::WrongState { .. })
        ));
        clock.advance(600);
        // engage brings the ledger up to date first: the prompt is shown, then dismissed.
        assert_eq!(
            svc.engage(a.injection_id, Engagement::Clicked, "agent", None).await.unwrap(),
            InjectionStatus::Clicked
        );
        assert_eq!(status(&store, b.injection_id).await, InjectionStatus::Scheduled);
        let tl: Vec<String> = store
            .get_injection(a.injection_id)
            .await
            .unwrap()
            .unwrap()
            .timeline
            .into_iter()
            .map(|r| r.status)
            .collect();
        assert_eq!(tl, ["accepted", "scheduled", "delivered", "clicked"]);
        let events: Vec<String> = store
            .outbox_list(None, 100)
            .await
            .unwrap()
            .into_iter()
            .filter(|o| o.injection_id == a.injection_id)
            .map(|o| o.event_type)
            .collect();
        assert_eq!(events, [EVENT_INJECTED, EVENT_CLICKED]);
        // Two accepts and one click added webhook messages: the worker was woken for each.
        assert_eq!(commits.load(Ordering::Relaxed), 3);
        let body: Value = serde_json::from_slice(&store.outbox_list(None, 1).await.unwrap()[0].body).unwrap();
        assert_eq!(body["alignmentStatus"], "SYNCED");
        assert_eq!(body["injectionId"], json!(a.injection_id));
        // The panel saw the show and the removal, in order.
        let kinds: Vec<&str> = svc.panel().subscribe(conv, None).backlog.iter().map(|e| e.kind).collect();
        assert_eq!(kinds, ["prompt", "remove"]);
        // Adoption sees the prompt shown at its show time, then clicked 0 ms after.
        let mut seen = Vec::new();
        store.engagement_events(0, i64::MAX, |e| seen.push((e.injection_id, e.kind, e.at, e.shown_at))).await.unwrap();
        let shown_at = Some(T0 + 500);
        assert_eq!(
            seen,
            [
                (a.injection_id, EngagementKind::Shown, T0 + 600, shown_at),
                (a.injection_id, EngagementKind::Clicked, T0 + 600, shown_at)
            ]
        );
        svc.shutdown();
        store.close().await.unwrap();
    }

    #[tokio::test]
    async fn the_agent_once_known_is_stamped_on_later_engagement_rows() {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(T0);
        let (svc, store) = service(dir.path(), &clock, vec![]).await;
        let conv = Uuid::now_v7();
        let other = Uuid::now_v7();
        // Shown before anyone signed in: no agent.
        let a = svc.accept(payload(conv, 1, json!({})), meta()).await.unwrap();
        clock.advance(600);
        svc.engage(a.injection_id, Engagement::Dismissed, "agent", Some("agent-1")).await.unwrap();
        // Known from the engagement (as from a panel sign-in): the next prompt's shown and its
        // click carry the agent though the click names none.
        let b = svc.accept(payload(conv, 1, json!({})), meta()).await.unwrap();
        clock.advance(600);
        svc.engage(b.injection_id, Engagement::Clicked, "agent", None).await.unwrap();
        // Another conversation's agent is its own; an empty id is no agent.
        svc.note_agent(other, "");
        let c = svc.accept(payload(other, 1, json!({})), meta()).await.unwrap();
        clock.advance(600);
        svc.engage(c.injection_id, Engagement::Clicked, "agent", None).await.unwrap();
        svc.note_agent(other, "agent-2");
        let d = svc.accept(payload(other, 1, json!({})), meta()).await.unwrap();
        clock.advance(600);
        svc.engage(d.injection_id, Engagement::Clicked, "agent", None).await.unwrap();
        let mut seen = Vec::new();
        store.engagement_events(0, i64::MAX, |e| seen.push((e.injection_id, e.kind, e.agent_id))).await.unwrap();
        let agent = |s: &str| Some(s.to_string());
        assert_eq!(
            seen,
            [
                (a.injection_id, EngagementKind::Shown, None),
                (a.injection_id, EngagementKind::Dismissed, agent("agent-1")),
                (b.injection_id, EngagementKind::Shown, agent("agent-1")),
                (b.injection_id, EngagementKind::Clicked, agent("agent-1")),
                (c.injection_id, EngagementKind::Shown, None),
                (c.injection_id, EngagementKind::Clicked, None),
                (d.injection_id, EngagementKind::Shown, agent("agent-2")),
                (d.injection_id, EngagementKind::Clicked, agent("agent-2")),
            ]
        );
        svc.shutdown();
        store.close().await.unwrap();
    }

    #[tokio::test]
    async fn conversation_end_expires_armed_prompts_only() {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(T0);
        let (svc, store) = service(dir.path(), &clock, vec![]).await;
        let conv = Uuid::now_v7();
        let trig = json!({"triggerConditions": [{"type": "duration", "value": 30}]});
        let armed = svc.accept(payload(conv, 3, trig), meta()).await.unwrap();
        let plain = svc.accept(payload(conv, 3, json!({})), meta()).await.unwrap();
        assert_eq!(armed.status, InjectionStatus::Armed);
        assert_eq!(svc.conversation_ended(conv).await.unwrap(), 1);
        assert_eq!(status(&store, armed.injection_id).await, InjectionStatus::Expired);
        assert_eq!(status(&store, plain.injection_id).await, InjectionStatus::Scheduled);
        let last = store.get_injection(armed.injection_id).await.unwrap().unwrap().timeline.pop().unwrap();
        assert_eq!(last.reason.as_deref(), Some("conversation_ended"));
        assert!(matches!(svc.fire(armed.injection_id, "t").await, Err(ServiceError::WrongState { .. })));
        // The panel stream goes once nothing is left on the conversation.
        let _sub = svc.panel().subscribe(conv, None);
        svc.conversation_ended(conv).await.unwrap();
        assert_eq!(svc.panel().len(), 1, "a scheduled prompt is still live");
        assert_eq!(svc.cancel(plain.injection_id, "t").await.unwrap(), InjectionStatus::Withdrawn);
        assert_eq!(svc.conversation_ended(conv).await.unwrap(), 0);
        assert!(svc.panel().is_empty());
        assert!(svc.ledgers().is_empty(), "no ledger is kept for a finished conversation");
        svc.shutdown();
        store.close().await.unwrap();
    }

    #[tokio::test]
    async fn a_failed_store_write_rolls_the_ledger_back() {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(T0);
        let (svc, store) = service(dir.path(), &clock, vec![]).await;
        let conv = Uuid::now_v7();
        svc.accept(payload(conv, 2, json!({})), meta()).await.unwrap();
        let occupancy = |svc: &Service| {
            let l = svc.ledgers().get(&conv).cloned().unwrap();
            let g = l.try_lock().unwrap();
            (g.occupancy(), g.queued().count())
        };
        assert_eq!(occupancy(&svc), (1, 0));
        store.close().await.unwrap();
        let e = svc.accept(payload(conv, 2, json!({})), meta()).await.unwrap_err();
        assert!(matches!(e, ServiceError::Store(StoreError::Closed)), "{e:?}");
        assert_eq!(occupancy(&svc), (1, 0), "the refused injection holds no slot");
        svc.shutdown();
    }

    #[tokio::test]
    async fn unknown_prompt_without_catalogue_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(T0);
        let (svc, store) = service(dir.path(), &clock, vec![]).await;
        let v = json!({
            "conversationId": Uuid::now_v7(),
            "promptId": "d4e5f6a7-b8c9-0123-4567-890abcdef123",
            "triggerConditions": [],
            "displaySettings": {"delayMs": 500, "maxConcurrentPrompts": 1, "autoDismissMs": 10000}
        });
        let e = svc.accept(validate_value(&v).unwrap(), meta()).await.unwrap_err();
        assert!(matches!(e, ServiceError::UnknownPrompt(_)), "{e:?}");
        svc.shutdown();
        store.close().await.unwrap();
    }

    #[tokio::test]
    async fn timer_effects_time_out_the_queue_expire_and_promote() {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(T0);
        let (svc, store) = service(dir.path(), &clock, vec!["https://kb.example.com/h".into()]).await;
        let conv = Uuid::now_v7();
        let a = svc.accept(payload(conv, 1, json!({})), meta()).await.unwrap();
        let short = svc.accept(payload(conv, 1, json!({"queueTimeoutMs": 1000})), meta()).await.unwrap();
        let long = svc.accept(payload(conv, 1, json!({})), meta()).await.unwrap();
        // The manual clock drives the ledger; the test ticks the conversation as the timer would.
        clock.advance(1_000);
        svc.tick(conv).await;
        let row = store.get_injection(short.injection_id).await.unwrap().unwrap().row;
        assert_eq!(row.status, InjectionStatus::Failed);
        assert!(row.last_error.unwrap().contains("queueTimeoutMs"));
        assert_eq!(status(&store, a.injection_id).await, InjectionStatus::Delivered);
        // a expires at 500 + 10 000; the long waiter is promoted then, and shown 500 ms later.
        clock.set(T0 + 10_500);
        svc.tick(conv).await;
        assert_eq!(status(&store, a.injection_id).await, InjectionStatus::Expired);
        assert_eq!(status(&store, long.injection_id).await, InjectionStatus::Scheduled);
        clock.set(T0 + 11_000);
        svc.tick(conv).await;
        let row = store.get_injection(long.injection_id).await.unwrap().unwrap().row;
        assert_eq!((row.status, row.show_at), (InjectionStatus::Delivered, Some(T0 + 11_000)));
        let events: Vec<String> =
            store.outbox_list(None, 100).await.unwrap().into_iter().map(|o| o.event_type).collect();
        for e in [EVENT_FAILED, EVENT_EXPIRED] {
            assert_eq!(events.iter().filter(|x| *x == e).count(), 1, "{e} in {events:?}");
        }
        let kinds: Vec<&str> = svc.panel().subscribe(conv, None).backlog.iter().map(|e| e.kind).collect();
        assert_eq!(kinds, ["prompt", "remove", "prompt"]);
        svc.shutdown();
        store.close().await.unwrap();
    }

    /// Waits (at most 5 s) for the next `prompt` event of a subscription; its injection id.
    async fn next_prompt(sub: &mut super::super::panel::Subscription) -> Option<String> {
        tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                match sub.live.recv().await {
                    Ok(ev) if ev.kind == "prompt" => {
                        let data: serde_json::Value = serde_json::from_str(&ev.data).ok()?;
                        return data["injectionId"].as_str().map(str::to_string);
                    }
                    Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(_) => return None,
                }
            }
        })
        .await
        .ok()
        .flatten()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn prompts_falling_due_together_are_delivered_by_one_store_write() {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(T0);
        let (svc, store) = service(dir.path(), &clock, vec![]).await;
        let mut subs = Vec::new();
        for _ in 0..40 {
            let conv = Uuid::now_v7();
            let a = svc.accept(payload(conv, 3, json!({})), meta()).await.unwrap();
            subs.push((a.injection_id, svc.panel().subscribe(conv, None)));
        }
        let before = store.stats();
        clock.advance(500);
        svc.inner.wake.notify_one();
        for (id, sub) in &mut subs {
            assert_eq!(next_prompt(sub).await, Some(id.to_string()), "prompt {id} on its panel");
            // Published only once durable.
            assert_eq!(status(&store, *id).await, InjectionStatus::Delivered);
        }
        let after = store.stats();
        // Forty "delivered" changes (row, audit record, engagement each): one batch, one commit.
        assert_eq!(after.batches - before.batches, 1, "{before:?} → {after:?}");
        assert_eq!(after.transactions - before.transactions, 1, "{before:?} → {after:?}");
        assert_eq!(after.records - before.records, 40);
        svc.shutdown();
        svc.drained().await;
        store.close().await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_busy_conversation_holds_up_no_later_deadline() {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(T0);
        let (svc, store) = service(dir.path(), &clock, vec![]).await;
        let (a, b, c) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        let pa = svc.accept(payload(a, 3, json!({})), meta()).await.unwrap();
        let pb = svc.accept(payload(b, 3, json!({})), meta()).await.unwrap();
        clock.advance(100);
        let pc = svc.accept(payload(c, 3, json!({})), meta()).await.unwrap();
        let (mut sa, mut sb, mut sc) =
            (svc.panel().subscribe(a, None), svc.panel().subscribe(b, None), svc.panel().subscribe(c, None));
        // Conversation a's ledger is busy (as during an agent's action) when its prompt falls due.
        let ledger = svc.ledger_for(a);
        let held = ledger.lock().await;
        clock.set(T0 + 500);
        svc.inner.wake.notify_one();
        assert_eq!(next_prompt(&mut sb).await, Some(pb.injection_id.to_string()));
        // c falls due later, while a still waits for its ledger: the timer is not stuck on a.
        clock.set(T0 + 600);
        svc.inner.wake.notify_one();
        assert_eq!(next_prompt(&mut sc).await, Some(pc.injection_id.to_string()));
        assert_eq!(status(&store, pa.injection_id).await, InjectionStatus::Scheduled);
        drop(held);
        assert_eq!(next_prompt(&mut sa).await, Some(pa.injection_id.to_string()));
        assert_eq!(status(&store, pa.injection_id).await, InjectionStatus::Delivered);
        svc.shutdown();
        svc.drained().await;
        store.close().await.unwrap();
    }

    #[tokio::test]
    async fn a_failed_due_batch_records_each_conversation_alone() {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(T0);
        let (svc, store) = service(dir.path(), &clock, vec![]).await;
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let pa = svc.accept(payload(a, 3, json!({})), meta()).await.unwrap();
        let pb = svc.accept(payload(b, 3, json!({})), meta()).await.unwrap();
        // a's row moves behind the service's back: its "delivered" change conflicts, which
        // fails the batch; b must still be delivered, and a must not be published.
        let d = draft(&svc.live_row(pa.injection_id).await.unwrap(), "failed", "test", None);
        let u = InjectionUpdate::new(pa.injection_id, InjectionStatus::Scheduled, InjectionStatus::Failed, T0, d);
        store.write(WriteOp::UpdateInjection(Box::new(u))).await.unwrap();
        let (mut sa, mut sb) = (svc.panel().subscribe(a, None), svc.panel().subscribe(b, None));
        // Held before the clock moves, so the service's own timer cannot take them first.
        let mut ledgers = [svc.ledger_for(a).lock_owned().await, svc.ledger_for(b).lock_owned().await];
        clock.advance(500);
        let mut refs: Vec<&mut Ledger> = ledgers.iter_mut().map(|g| &mut **g).collect();
        svc.apply_due(&mut refs, Instant::now()).await;
        assert_eq!(status(&store, pb.injection_id).await, InjectionStatus::Delivered);
        assert_eq!(sb.live.try_recv().map(|e| e.kind).ok(), Some("prompt"));
        assert_eq!(status(&store, pa.injection_id).await, InjectionStatus::Failed);
        assert!(sa.live.try_recv().is_err(), "a conflicting change is never published");
        drop(refs);
        drop(ledgers);
        svc.shutdown();
        store.close().await.unwrap();
    }

    #[test]
    fn engagement_events_follow_status_changes() {
        use InjectionStatus as S;
        let table = [
            (S::Scheduled, S::Delivered, Some(EngagementKind::Shown)),
            (S::Queued, S::Delivered, Some(EngagementKind::Shown)),
            (S::Delivered, S::Delivered, None),
            (S::Delivered, S::Clicked, Some(EngagementKind::Clicked)),
            (S::Delivered, S::Dismissed, Some(EngagementKind::Dismissed)),
            (S::Delivered, S::Expired, Some(EngagementKind::Expired)),
            (S::Armed, S::Expired, None),
            (S::Delivered, S::Withdrawn, None),
            (S::Scheduled, S::Withdrawn, None),
            (S::Queued, S::Failed, None),
            (S::Armed, S::Scheduled, None),
        ];
        for (from, to, want) in table {
            assert_eq!(engagement_for(from, to), want, "{from} -> {to}");
        }
    }

    #[test]
    fn direct_bodies_match_the_value_forms() {
        let a = Accepted {
            injection_id: Uuid::from_u128(7),
            status: InjectionStatus::Scheduled,
            conversation_id: Uuid::from_u128(8),
            prompt_id: Uuid::from_u128(9),
            accepted_at: "2026-11-24T07:00:00.000Z".into(),
            latency_ms: 3,
        };
        assert_eq!(a.to_body(), a.to_json().to_string().into_bytes());
        // The webhook body, with and without context data (and text that needs escaping).
        let context = json!({"agentId": "agent \"01\"", "queue": "billing\nsupport", "n": [1, {"b": null}]});
        for ctx in [context.as_object(), None] {
            let body = WebhookBody {
                event_type: EVENT_INJECTED,
                injection_id: a.injection_id,
                conversation_id: a.conversation_id,
                prompt_id: a.prompt_id,
                latency_ms: 12,
                timestamp: "2026-11-24T07:00:00.000Z",
                context: ctx,
                alignment_status: "SYNCED",
            };
            let value = json!({
                "eventType": EVENT_INJECTED,
                "injectionId": a.injection_id,
                "conversationId": a.conversation_id,
                "promptId": a.prompt_id,
                "latencyMs": 12,
                "timestamp": "2026-11-24T07:00:00.000Z",
                "context": ctx.cloned().map(Value::Object).unwrap_or(Value::Null),
                "alignmentStatus": "SYNCED",
            });
            assert_eq!(serde_json::to_vec(&body).unwrap(), value.to_string().into_bytes());
        }
    }

    #[test]
    fn channel_names() {
        let c = Channels::from_names(&["panel".into(), "participant-data".into()]).unwrap();
        assert_eq!(c, Channels { panel: true, participant_data: true });
        assert!(matches!(Channels::from_names(&["sms".into()]), Err(ServiceError::UnknownChannel(_))));
    }
}
