//! The typed rows the store reads and writes: injections, outbox messages, idempotency
//! answers, and the small summaries behind metrics and recovery.
//!
//! Times are Unix epoch milliseconds (`i64`), the unit of every timestamp column.

use std::fmt;
use std::str::FromStr;

use bytes::Bytes;
use chrono::NaiveDate;
use uuid::Uuid;

use crate::audit::{AuditDraft, AuditRecord};
use crate::contract::{Priority, PromptContent, ValidPayload};

/// How long an `Idempotency-Key` answer is honoured (CONTRACT §2): 24 hours.
pub const IDEMPOTENCY_TTL_MS: i64 = 24 * 60 * 60 * 1000;

/// The lifecycle of one injection. `Armed`, `Scheduled`, `Queued` and `Delivered` are live;
/// the rest are final.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum InjectionStatus {
    /// Waiting for its trigger conditions.
    Armed,
    /// Admitted; shown after `delayMs`.
    Scheduled,
    /// Waiting for a free display slot.
    Queued,
    /// Shown to the agent (occupies a slot until it leaves the screen).
    Delivered,
    Failed,
    Cancelled,
    /// Armed and never fired, queued past its deadline, or auto-dismissed.
    Expired,
    Dismissed,
    Clicked,
    /// Taken off the screen by the caller.
    Withdrawn,
}

impl InjectionStatus {
    pub const ALL: [InjectionStatus; 10] = [
        InjectionStatus::Armed,
        InjectionStatus::Scheduled,
        InjectionStatus::Queued,
        InjectionStatus::Delivered,
        InjectionStatus::Failed,
        InjectionStatus::Cancelled,
        InjectionStatus::Expired,
        InjectionStatus::Dismissed,
        InjectionStatus::Clicked,
        InjectionStatus::Withdrawn,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            InjectionStatus::Armed => "armed",
            InjectionStatus::Scheduled => "scheduled",
            InjectionStatus::Queued => "queued",
            InjectionStatus::Delivered => "delivered",
            InjectionStatus::Failed => "failed",
            InjectionStatus::Cancelled => "cancelled",
            InjectionStatus::Expired => "expired",
            InjectionStatus::Dismissed => "dismissed",
            InjectionStatus::Clicked => "clicked",
            InjectionStatus::Withdrawn => "withdrawn",
        }
    }

    /// Still waiting, scheduled or on screen: it can change again.
    pub fn is_live(self) -> bool {
        matches!(
            self,
            InjectionStatus::Armed | InjectionStatus::Scheduled | InjectionStatus::Queued | InjectionStatus::Delivered
        )
    }
}

impl fmt::Display for InjectionStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for InjectionStatus {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        InjectionStatus::ALL.into_iter().find(|st| st.as_str() == s).ok_or(())
    }
}

/// Where an injection came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    Api,
    Rule,
    Cli,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Api => "api",
            Source::Rule => "rule",
            Source::Cli => "cli",
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Source {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        match s {
            "api" => Ok(Source::Api),
            "rule" => Ok(Source::Rule),
            "cli" => Ok(Source::Cli),
            _ => Err(()),
        }
    }
}

/// What happened to a prompt on screen (CONTRACT.md §6), one `engagement_events` row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EngagementKind {
    Shown,
    /// Rendered and visible on screen for at least a second while the tab was visible.
    Viewed,
    Clicked,
    Dismissed,
    /// Left the screen on its own (`autoDismissMs`).
    Expired,
    /// A thumbs up or down (`rating`).
    Feedback,
}

impl EngagementKind {
    pub const ALL: [EngagementKind; 6] = [
        EngagementKind::Shown,
        EngagementKind::Viewed,
        EngagementKind::Clicked,
        EngagementKind::Dismissed,
        EngagementKind::Expired,
        EngagementKind::Feedback,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EngagementKind::Shown => "shown",
            EngagementKind::Viewed => "viewed",
            EngagementKind::Clicked => "clicked",
            EngagementKind::Dismissed => "dismissed",
            EngagementKind::Expired => "expired",
            EngagementKind::Feedback => "feedback",
        }
    }
}

impl fmt::Display for EngagementKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for EngagementKind {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        EngagementKind::ALL.into_iter().find(|k| k.as_str() == s).ok_or(())
    }
}

/// One engagement event, denormalized so adoption folds over one table in one pass.
#[derive(Debug, Clone, PartialEq)]
pub struct EngagementRow {
    pub injection_id: Uuid,
    pub conversation_id: Uuid,
    pub prompt_id: Uuid,
    pub rule_id: Option<String>,
    pub queue_id: Option<String>,
    pub agent_id: Option<String>,
    pub kind: EngagementKind,
    /// Epoch ms.
    pub at: i64,
    /// When the prompt was shown (epoch ms), for time-to-click without a join.
    pub shown_at: Option<i64>,
    /// +1 or −1 for `Feedback`.
    pub rating: Option<i8>,
}

impl EngagementRow {
    /// An event for `row` taking its ids, rule, queue, agent and show time.
    pub fn of(row: &InjectionRow, kind: EngagementKind, at: i64) -> EngagementRow {
        EngagementRow {
            injection_id: row.id,
            conversation_id: row.conversation_id,
            prompt_id: row.prompt_id,
            rule_id: row.rule_id.clone(),
            queue_id: row.queue_id.clone(),
            agent_id: row.agent_id.clone(),
            kind,
            at,
            shown_at: row.show_at,
            rating: None,
        }
    }
}

/// One injection as stored. `conversation_id` and `prompt_id` repeat the payload's so they
/// can be indexed; the store checks they agree.
#[derive(Debug, Clone, PartialEq)]
pub struct InjectionRow {
    /// A UUID v7 (time-ordered keeps the primary key append-only).
    pub id: Uuid,
    pub conversation_id: Uuid,
    pub prompt_id: Uuid,
    pub status: InjectionStatus,
    pub payload: ValidPayload,
    /// The resolved content: the inline prompt or the catalogue entry at acceptance.
    pub content: PromptContent,
    pub priority: Priority,
    pub source: Source,
    pub api_key_id: Option<String>,
    pub rule_id: Option<String>,
    /// The queue the conversation came through, when known (rules know it).
    pub queue_id: Option<String>,
    /// The agent the prompt is for, when known (a panel session learns it).
    pub agent_id: Option<String>,
    pub created_at: i64,
    pub admitted_at: Option<i64>,
    pub show_at: Option<i64>,
    /// When a shown prompt leaves the screen on its own (`show_at + autoDismissMs`).
    pub expires_at: Option<i64>,
    /// When a queued prompt gives up waiting.
    pub queue_deadline: Option<i64>,
    pub updated_at: i64,
    pub last_error: Option<String>,
}

impl InjectionRow {
    /// A new row taking ids and priority from the payload and content; the optional
    /// timestamps start empty and `updated_at` is `created_at`.
    pub fn new(
        id: Uuid,
        status: InjectionStatus,
        payload: ValidPayload,
        content: PromptContent,
        source: Source,
        created_at: i64,
    ) -> InjectionRow {
        InjectionRow {
            id,
            conversation_id: payload.conversation_id(),
            prompt_id: payload.prompt_id(),
            status,
            priority: content.priority,
            payload,
            content,
            source,
            api_key_id: None,
            rule_id: None,
            queue_id: None,
            agent_id: None,
            created_at,
            admitted_at: None,
            show_at: None,
            expires_at: None,
            queue_deadline: None,
            updated_at: created_at,
            last_error: None,
        }
    }
}

/// An injection with its timeline: its audit records in chain order.
#[derive(Debug, Clone, PartialEq)]
pub struct InjectionWithTimeline {
    pub row: InjectionRow,
    pub timeline: Vec<AuditRecord>,
}

/// A status change of one injection, applied only if the row is still `expected_status`
/// (optimistic concurrency: otherwise the batch fails with `StoreError::Conflict`).
/// `None` in an optional time or `last_error` leaves the stored value as it is.
#[derive(Debug, Clone, PartialEq)]
pub struct InjectionUpdate {
    pub id: Uuid,
    pub expected_status: InjectionStatus,
    pub status: InjectionStatus,
    /// Becomes `updated_at`.
    pub at: i64,
    pub admitted_at: Option<i64>,
    pub show_at: Option<i64>,
    pub expires_at: Option<i64>,
    pub queue_deadline: Option<i64>,
    pub last_error: Option<String>,
    /// Audit records for this change, appended in order; their ids must name this injection.
    pub audit: Vec<AuditDraft>,
    /// Webhook messages to enqueue with the change.
    pub outbox: Vec<OutboxRow>,
}

impl InjectionUpdate {
    /// A bare status change with one audit record; set the other fields as needed.
    pub fn new(
        id: Uuid,
        expected_status: InjectionStatus,
        status: InjectionStatus,
        at: i64,
        audit: AuditDraft,
    ) -> InjectionUpdate {
        InjectionUpdate {
            id,
            expected_status,
            status,
            at,
            admitted_at: None,
            show_at: None,
            expires_at: None,
            queue_deadline: None,
            last_error: None,
            audit: vec![audit],
            outbox: Vec::new(),
        }
    }
}

/// Where a webhook message is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OutboxState {
    /// Waiting for (another) attempt at `next_attempt_at`.
    Pending,
    Delivered,
    /// The retry schedule ran out: dead-lettered until redriven.
    Dead,
    /// Its endpoint answered 410 Gone and was disabled.
    Disabled,
}

impl OutboxState {
    pub const ALL: [OutboxState; 4] =
        [OutboxState::Pending, OutboxState::Delivered, OutboxState::Dead, OutboxState::Disabled];

    pub fn as_str(self) -> &'static str {
        match self {
            OutboxState::Pending => "pending",
            OutboxState::Delivered => "delivered",
            OutboxState::Dead => "dead",
            OutboxState::Disabled => "disabled",
        }
    }
}

impl fmt::Display for OutboxState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for OutboxState {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        OutboxState::ALL.into_iter().find(|st| st.as_str() == s).ok_or(())
    }
}

/// One webhook message to one endpoint. `id` is the Standard Webhooks `webhook-id`, stable
/// across retries; `body` is exactly what is signed and sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxRow {
    pub id: String,
    pub injection_id: Uuid,
    pub endpoint_url: String,
    pub event_type: String,
    pub body: Bytes,
    pub created_at: i64,
    pub attempts: u32,
    pub next_attempt_at: i64,
    pub state: OutboxState,
    pub last_status: Option<u16>,
    pub last_error: Option<String>,
    pub delivered_at: Option<i64>,
}

impl OutboxRow {
    /// A pending message, due at once, with a fresh `msg_<uuid v7>` id. If the endpoint is
    /// disabled when it is stored, the store files it as `disabled` instead.
    pub fn new(
        injection_id: Uuid,
        endpoint_url: impl Into<String>,
        event_type: impl Into<String>,
        body: impl Into<Bytes>,
        now_ms: i64,
    ) -> OutboxRow {
        OutboxRow {
            id: new_message_id(),
            injection_id,
            endpoint_url: endpoint_url.into(),
            event_type: event_type.into(),
            body: body.into(),
            created_at: now_ms,
            attempts: 0,
            next_attempt_at: now_ms,
            state: OutboxState::Pending,
            last_status: None,
            last_error: None,
            delivered_at: None,
        }
    }
}

/// `msg_` + a UUID v7 in its 32-hex-digit simple form.
pub fn new_message_id() -> String {
    format!("msg_{}", Uuid::now_v7().simple())
}

/// Which dead-lettered (or disabled) messages to send again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Redrive {
    /// These messages, if they are `dead` or `disabled`; an unknown id fails the batch.
    Ids(Vec<String>),
    /// Every `dead` message.
    AllDead,
    /// Every `dead` or `disabled` message to this endpoint.
    Endpoint(String),
}

/// The first answer given to an `Idempotency-Key`, replayed for 24 h.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyRow {
    /// The caller's API key (its configured id, never the key itself).
    pub api_key_id: String,
    pub key: String,
    /// A digest of the request, so a reused key with a different body can be refused.
    pub request_hash: String,
    pub status_code: u16,
    pub response_body: Bytes,
    pub injection_id: Option<Uuid>,
    pub created_at: i64,
}

/// What must be resumed after a restart, read in one consistent snapshot.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RecoverySet {
    /// Armed, scheduled and queued injections, oldest first.
    pub pending: Vec<InjectionRow>,
    /// Delivered and still on screen (`expires_at` after now, or unknown): they hold slots.
    pub shown: Vec<InjectionRow>,
    /// Delivered, but `expires_at` passed while the service was down: to be recorded expired.
    pub expired: Vec<InjectionRow>,
}

/// Outbox figures for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OutboxStats {
    /// Pending messages (the backlog).
    pub pending: u64,
    /// Age of the oldest pending message at `now`, in ms.
    pub oldest_pending_age_ms: Option<i64>,
    /// Pending messages already due at `now`.
    pub due: u64,
    pub dead: u64,
    pub disabled: u64,
}

/// Where the audit chain stands (as committed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuditHead {
    pub last_seq: u64,
    pub last_hash: crate::audit::Digest,
    /// Epoch ms of the last record's timestamp (0 before the first).
    pub last_at: i64,
}

/// A day removed by the retention policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PurgeRecord {
    pub day: NaiveDate,
    pub first_seq: u64,
    pub last_seq: u64,
    pub record_count: u64,
    pub purged_at: i64,
}

/// An endpoint that was disabled (410 Gone).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DisabledEndpoint {
    pub url: String,
    pub disabled_at: i64,
    pub reason: String,
}

/// One rule decision of the live trigger runtime (table `rule_fires`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleFireRow {
    pub conversation_id: Uuid,
    pub rule_id: String,
    /// `fired`, `shadow`, `suppressed_cooldown`, `suppressed_cap` or `expired`.
    pub outcome: String,
    /// The injection a live fire created.
    pub injection_id: Option<Uuid>,
    /// Epoch ms.
    pub at: i64,
}
