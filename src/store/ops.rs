//! The typed write operations and the SQL each one runs inside the writer's transaction.
//!
//! Every operation does its fallible checks (optimistic status check, duplicate keys,
//! idempotency) *before* it appends audit records, and reports whether it wrote anything, so
//! the writer can skip a failed batch without undoing the others in the same transaction.

use chrono::NaiveDate;
use rand::rngs::StdRng;
use sqlx::error::ErrorKind;
use sqlx::sqlite::SqliteConnection;
use sqlx::Row;
use uuid::Uuid;

use super::model::{EngagementRow, IdempotencyRow, InjectionRow, InjectionUpdate, OutboxRow, Redrive, RuleFireRow};
use super::{db_err, StoreError, IDEMPOTENCY_TTL_MS};
use crate::audit::{AuditDraft, AuditRecord, AuditTime, Chain, Checkpoint, Digest};
use crate::contract::CatalogueEntry;

/// One typed change. Each maps to SQL here and nowhere else.
#[derive(Debug, Clone)]
pub enum WriteOp {
    /// A new injection with its first audit record(s), webhook messages and, for an API call
    /// carrying `Idempotency-Key`, the answer to replay. Fails with `Duplicate` if the id
    /// exists, `IdempotencyKeyInUse` if the key was used within 24 h.
    InsertInjection {
        row: Box<InjectionRow>,
        audit: Vec<AuditDraft>,
        outbox: Vec<OutboxRow>,
        idempotency: Option<IdempotencyRow>,
    },
    /// A status change, applied only if the row still has `expected_status` (else `Conflict`).
    UpdateInjection(Box<InjectionUpdate>),
    /// An audit record (and webhooks) for an event that changes no row, such as `viewed`.
    /// The injection must exist and the draft's ids must match it.
    RecordEvent { audit: AuditDraft, outbox: Vec<OutboxRow> },
    /// An engagement event for adoption (shown, viewed, clicked, ...), usually in the same
    /// batch as the status change that caused it.
    Engagement(EngagementRow),
    /// Stores an idempotent answer without an injection (a 409 or 422 to replay).
    PutIdempotency(IdempotencyRow),
    /// Deletes idempotency answers older than 24 h.
    PurgeIdempotency,
    /// A pending message was accepted by its endpoint.
    OutboxDelivered { id: String, attempts: u32, status: u16, at: i64 },
    /// A pending message failed an attempt; try again at `next_at`.
    OutboxRetry { id: String, attempts: u32, next_at: i64, last_status: Option<u16>, last_error: Option<String> },
    /// A pending message ran out of retries: dead-lettered.
    OutboxDead { id: String, attempts: u32, last_status: Option<u16>, last_error: Option<String> },
    /// The endpoint answered 410 Gone: its pending messages (and later ones) become `disabled`.
    DisableEndpoint { url: String, reason: String },
    /// Sends to the endpoint again from now on (does not redrive; see `RedriveOutbox`).
    EnableEndpoint { url: String },
    /// Puts dead (or disabled) messages back to pending, due now, attempts reset.
    RedriveOutbox(Redrive),
    /// Deletes delivered messages delivered before this time.
    PurgeOutbox { delivered_before: i64 },
    /// Stores a signed daily checkpoint (kept forever). Storing the same one again is a no-op;
    /// a different one for the same day is `CheckpointConflict`.
    PutCheckpoint(Checkpoint),
    /// Deletes whole days of audit records, `seq <= through_seq`, as planned by
    /// [`crate::audit::purge_plan`]. Refused unless each day has a stored checkpoint that
    /// matches it exactly and no other day's records lie below `through_seq`.
    PurgeDays { days: Vec<NaiveDate>, through_seq: u64 },
    /// Inserts or replaces these catalogue entries.
    UpsertPrompts(Vec<CatalogueEntry>),
    /// Makes the catalogue exactly these entries.
    ReplacePrompts(Vec<CatalogueEntry>),
    /// Records rule decisions of the live trigger runtime (shadow would-fires and others).
    RecordRuleFires(Vec<RuleFireRow>),
}

/// The operations of one caller, applied atomically: all of them or none.
#[derive(Debug, Clone, Default)]
pub struct WriteBatch {
    pub ops: Vec<WriteOp>,
}

impl WriteBatch {
    pub fn new() -> WriteBatch {
        WriteBatch::default()
    }

    pub fn push(&mut self, op: WriteOp) -> &mut WriteBatch {
        self.ops.push(op);
        self
    }

    pub fn with(mut self, op: WriteOp) -> WriteBatch {
        self.ops.push(op);
        self
    }
}

impl From<WriteOp> for WriteBatch {
    fn from(op: WriteOp) -> WriteBatch {
        WriteBatch { ops: vec![op] }
    }
}

impl From<Vec<WriteOp>> for WriteBatch {
    fn from(ops: Vec<WriteOp>) -> WriteBatch {
        WriteBatch { ops }
    }
}

/// What a committed batch did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BatchOutcome {
    /// The audit records created, in chain order.
    pub records: Vec<AuditRecord>,
    /// Rows each operation changed, in operation order (for redrive and purge counts).
    pub affected: Vec<u64>,
}

/// The state one pass over a drain threads through the operations.
///
/// In the fast pass (`bulk`), inserted injections, status updates, audit records and
/// outbox rows are buffered and written as multi-row statements: one statement costs about
/// as much as fifty single-row ones, so this is where the writer's throughput comes from.
/// Buffers are flushed before any operation that reads what they hold. A constraint failure
/// in a buffered statement cannot be pinned on one batch, so it sets `flush_failed` and the
/// writer replays the drain without buffering, one savepoint per batch.
pub(super) struct TxCtx<'c, 'j> {
    conn: &'c mut SqliteConnection,
    pub chain: &'c mut Chain,
    rng: &'c mut StdRng,
    /// The timestamp of every record of this transaction.
    at: AuditTime,
    /// `at` in ms: the time of redrives, purges and disablements.
    now: i64,
    day: String,
    bulk: bool,
    /// Whether the current batch has changed anything yet (buffered counts).
    pub wrote: bool,
    /// A buffered statement failed on a constraint: replay the drain.
    pub flush_failed: bool,
    /// Every record sealed in this pass, in chain order.
    pub records: Vec<AuditRecord>,
    /// `records[..audit_flushed]` are in the database.
    audit_flushed: usize,
    injections: Vec<(&'j InjectionRow, String, String)>,
    updates: Vec<&'j InjectionUpdate>,
    outbox: Vec<&'j OutboxRow>,
    engagements: Vec<&'j EngagementRow>,
}

const INJECTION_COLS: usize = 19;
const INSERT_INJECTIONS: &str = "INSERT INTO injections (id, conversation_id, prompt_id, status, payload, content, \
     priority, source, api_key_id, rule_id, created_at, admitted_at, show_at, expires_at, queue_deadline, updated_at, \
     last_error, queue_id, agent_id) VALUES ";

const ENGAGEMENT_COLS: usize = 10;
const INSERT_ENGAGEMENTS: &str = "INSERT INTO engagement_events (injection_id, conversation_id, prompt_id, rule_id, \
     queue_id, agent_id, kind, at, shown_at, rating) VALUES ";

const UPDATE_COLS: usize = 9;
const UPDATE_INJECTIONS: (&str, &str) = (
    "WITH v (id, expected, status, at, admitted_at, show_at, expires_at, queue_deadline, last_error) AS (VALUES ",
    ") UPDATE injections SET status = v.status, updated_at = v.at, \
     admitted_at = COALESCE(v.admitted_at, injections.admitted_at), \
     show_at = COALESCE(v.show_at, injections.show_at), \
     expires_at = COALESCE(v.expires_at, injections.expires_at), \
     queue_deadline = COALESCE(v.queue_deadline, injections.queue_deadline), \
     last_error = COALESCE(v.last_error, injections.last_error) \
     FROM v WHERE injections.id = v.id AND injections.status = v.expected \
     RETURNING id, conversation_id, prompt_id",
);

const AUDIT_COLS: usize = 16;
const INSERT_AUDIT: &str = "INSERT INTO audit_records (seq, audit_id, timestamp, day, conversation_id, prompt_id, \
     injection_id, status, latency_ms, error, actor, reason, compliance_tag, retention_policy, prev_hash, hash) VALUES ";

// A message for an endpoint disabled by a 410 is filed as `disabled` rather than sent.
const OUTBOX_COLS: usize = 12;
const INSERT_OUTBOX: (&str, &str) = (
    "WITH v (id, injection_id, endpoint_url, event_type, body, created_at, attempts, next_attempt_at, state, \
     last_status, last_error, delivered_at) AS (VALUES ",
    ") INSERT INTO outbox (id, injection_id, endpoint_url, event_type, body, created_at, attempts, next_attempt_at, \
     state, last_status, last_error, delivered_at) \
     SELECT id, injection_id, endpoint_url, event_type, body, created_at, attempts, next_attempt_at, \
     CASE WHEN state = 'pending' AND EXISTS (SELECT 1 FROM webhook_endpoints w WHERE w.url = v.endpoint_url) \
     THEN 'disabled' ELSE state END, last_status, last_error, delivered_at FROM v",
);

/// The chain head (only when the last parameter is true: records were appended) and COMMIT,
/// in one statement: one hand-off to sqlx's SQLite thread.
const FINISH_HEAD: &str = "UPDATE audit_head SET last_seq = ?, last_hash = ?, last_at = ? WHERE id = 1 AND ?; COMMIT";

/// Rows per multi-row statement, kept well under SQLite's 32766 bound parameters.
const CHUNK_ROWS: usize = 128;

/// The next chunk: full ones, then powers of two, so few distinct statements exist and
/// sqlx's prepared-statement cache keeps them all.
fn chunk_len(n: usize) -> usize {
    if n >= CHUNK_ROWS {
        CHUNK_ROWS
    } else {
        // The largest power of two <= n (n >= 1 whenever called; 1 for 0 all the same).
        1 << (usize::BITS - 1 - n.max(1).leading_zeros())
    }
}

/// `(?, ?, ...), (?, ?, ...)`: `rows` groups of `cols` placeholders.
fn placeholders(cols: usize, rows: usize) -> String {
    let one = format!("({})", vec!["?"; cols].join(", "));
    vec![one; rows].join(", ")
}

/// Inserts engagement events with multi-row statements, chunked under SQLite's parameter
/// limit (the writer's path, and [`super::synthetic`]'s for benchmarks).
pub(super) async fn insert_engagements(conn: &mut SqliteConnection, rows: &[&EngagementRow]) -> Result<(), StoreError> {
    let mut rest = rows;
    while !rest.is_empty() {
        let (chunk, tail) = rest.split_at(chunk_len(rest.len()));
        rest = tail;
        let sql = format!("{INSERT_ENGAGEMENTS}{}", placeholders(ENGAGEMENT_COLS, chunk.len()));
        let mut q = sqlx::query(&sql);
        for e in chunk {
            q = q
                .bind(e.injection_id.hyphenated())
                .bind(e.conversation_id.hyphenated())
                .bind(e.prompt_id.hyphenated())
                .bind(e.rule_id.as_deref())
                .bind(e.queue_id.as_deref())
                .bind(e.agent_id.as_deref())
                .bind(e.kind.as_str())
                .bind(e.at)
                .bind(e.shown_at)
                .bind(e.rating.map(i64::from));
        }
        q.execute(&mut *conn).await.map_err(db_err("inserting engagement events"))?;
    }
    Ok(())
}

// An existing key is taken over only once its answer is older than the 24 h window.
const UPSERT_IDEMPOTENCY: &str = "INSERT INTO idempotency_keys (api_key_id, key, request_hash, status_code, \
     response_body, injection_id, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) \
     ON CONFLICT (api_key_id, key) DO UPDATE SET request_hash = excluded.request_hash, \
     status_code = excluded.status_code, response_body = excluded.response_body, \
     injection_id = excluded.injection_id, created_at = excluded.created_at \
     WHERE idempotency_keys.created_at <= ?8";

const UPSERT_PROMPT: &str = "INSERT INTO prompts (id, name, content, tags, updated_at) VALUES (?, ?, ?, ?, ?) \
     ON CONFLICT (id) DO UPDATE SET name = excluded.name, content = excluded.content, tags = excluded.tags, \
     updated_at = excluded.updated_at";

pub(super) fn to_i64(v: u64, what: &str) -> Result<i64, StoreError> {
    i64::try_from(v).map_err(|_| StoreError::Invalid(format!("{what} {v} is too large to store (max {})", i64::MAX)))
}

fn is_kind(e: &sqlx::Error, kind: ErrorKind) -> bool {
    e.as_database_error().is_some_and(|d| d.kind() == kind)
}

impl<'c, 'j> TxCtx<'c, 'j> {
    pub fn new(
        conn: &'c mut SqliteConnection,
        chain: &'c mut Chain,
        rng: &'c mut StdRng,
        at: AuditTime,
        now: i64,
        bulk: bool,
    ) -> Self {
        TxCtx {
            conn,
            chain,
            rng,
            day: at.as_str()[..10].to_owned(),
            at,
            now,
            bulk,
            wrote: false,
            flush_failed: false,
            records: Vec::new(),
            audit_flushed: 0,
            injections: Vec::new(),
            updates: Vec::new(),
            outbox: Vec::new(),
            engagements: Vec::new(),
        }
    }

    /// Starts a batch; returns where its records will begin in `records`.
    pub fn begin_batch(&mut self) -> usize {
        self.wrote = false;
        self.records.len()
    }

    /// Forgets the records from `from` on (their batch was rolled back to its savepoint).
    pub fn discard_records(&mut self, from: usize) {
        self.records.truncate(from);
        self.audit_flushed = self.audit_flushed.min(from);
    }

    /// Runs a statement without binds (savepoints, ...).
    pub async fn exec(&mut self, sql: &'static str, context: &'static str) -> Result<(), StoreError> {
        sqlx::query(sql).execute(&mut *self.conn).await.map_err(db_err(context)).map(|_| ())
    }

    /// Applies one operation; the row count is the operation's `affected` figure.
    pub async fn apply(&mut self, op: &'j WriteOp) -> Result<u64, StoreError> {
        match op {
            WriteOp::InsertInjection { row, audit, outbox, idempotency } => {
                self.insert_injection(row, audit, outbox, idempotency.as_ref()).await
            }
            WriteOp::UpdateInjection(u) => self.update_injection(u).await,
            WriteOp::RecordEvent { audit, outbox } => self.record_event(audit, outbox).await,
            WriteOp::PutIdempotency(row) => {
                self.put_idempotency(row).await?;
                Ok(1)
            }
            WriteOp::Engagement(e) => {
                if e.rating.is_some_and(|r| r != 1 && r != -1) {
                    return Err(StoreError::Invalid(format!("a feedback rating is +1 or -1, not {:?}", e.rating)));
                }
                self.engagements.push(e);
                self.wrote = true;
                if !self.bulk {
                    self.flush_rollup().await?;
                    self.flush_engagements().await?;
                }
                Ok(1)
            }
            // Everything below reads or changes what the buffers hold: write them out first.
            other => {
                self.flush().await?;
                self.apply_direct(other).await
            }
        }
    }

    async fn apply_direct(&mut self, op: &WriteOp) -> Result<u64, StoreError> {
        match op {
            WriteOp::InsertInjection { .. }
            | WriteOp::UpdateInjection(_)
            | WriteOp::RecordEvent { .. }
            | WriteOp::Engagement(_)
            | WriteOp::PutIdempotency(_) => {
                Err(StoreError::Invalid("internal: a buffered operation took the direct path".into()))
            }
            WriteOp::PurgeIdempotency => {
                let cutoff = self.now.saturating_sub(IDEMPOTENCY_TTL_MS);
                let r = sqlx::query("DELETE FROM idempotency_keys WHERE created_at <= ?")
                    .bind(cutoff)
                    .execute(&mut *self.conn)
                    .await
                    .map_err(db_err("purging idempotency keys"))?;
                self.wrote |= r.rows_affected() > 0;
                Ok(r.rows_affected())
            }
            WriteOp::OutboxDelivered { id, attempts, status, at } => {
                let q = sqlx::query(
                    "UPDATE outbox SET state = 'delivered', attempts = ?, last_status = ?, last_error = NULL, \
                     delivered_at = ? WHERE id = ? AND state = 'pending'",
                )
                .bind(i64::from(*attempts))
                .bind(i64::from(*status))
                .bind(*at)
                .bind(id.as_str());
                self.outbox_transition(q, id).await
            }
            WriteOp::OutboxRetry { id, attempts, next_at, last_status, last_error } => {
                let q = sqlx::query(
                    "UPDATE outbox SET attempts = ?, next_attempt_at = ?, last_status = ?, last_error = ? \
                     WHERE id = ? AND state = 'pending'",
                )
                .bind(i64::from(*attempts))
                .bind(*next_at)
                .bind(last_status.map(i64::from))
                .bind(last_error.as_deref())
                .bind(id.as_str());
                self.outbox_transition(q, id).await
            }
            WriteOp::OutboxDead { id, attempts, last_status, last_error } => {
                let q = sqlx::query(
                    "UPDATE outbox SET state = 'dead', attempts = ?, last_status = ?, last_error = ? \
                     WHERE id = ? AND state = 'pending'",
                )
                .bind(i64::from(*attempts))
                .bind(last_status.map(i64::from))
                .bind(last_error.as_deref())
                .bind(id.as_str());
                self.outbox_transition(q, id).await
            }
            WriteOp::DisableEndpoint { url, reason } => self.disable_endpoint(url, reason).await,
            WriteOp::EnableEndpoint { url } => {
                let r = sqlx::query("DELETE FROM webhook_endpoints WHERE url = ?")
                    .bind(url.as_str())
                    .execute(&mut *self.conn)
                    .await
                    .map_err(db_err("enabling a webhook endpoint"))?;
                self.wrote |= r.rows_affected() > 0;
                Ok(r.rows_affected())
            }
            WriteOp::RedriveOutbox(r) => self.redrive(r).await,
            WriteOp::PurgeOutbox { delivered_before } => {
                let r = sqlx::query("DELETE FROM outbox WHERE state = 'delivered' AND delivered_at < ?")
                    .bind(*delivered_before)
                    .execute(&mut *self.conn)
                    .await
                    .map_err(db_err("purging delivered webhook messages"))?;
                self.wrote |= r.rows_affected() > 0;
                Ok(r.rows_affected())
            }
            WriteOp::PutCheckpoint(cp) => self.put_checkpoint(cp).await,
            WriteOp::PurgeDays { days, through_seq } => self.purge_days(days, *through_seq).await,
            WriteOp::UpsertPrompts(entries) => self.upsert_prompts(entries).await,
            WriteOp::RecordRuleFires(rows) => self.record_rule_fires(rows).await,
            WriteOp::ReplacePrompts(entries) => {
                sqlx::query("DELETE FROM prompts")
                    .execute(&mut *self.conn)
                    .await
                    .map_err(db_err("replacing the prompt catalogue"))?;
                self.wrote = true;
                self.upsert_prompts(entries).await
            }
        }
    }

    async fn insert_injection(
        &mut self,
        row: &'j InjectionRow,
        audit: &[AuditDraft],
        outbox: &'j [OutboxRow],
        idempotency: Option<&IdempotencyRow>,
    ) -> Result<u64, StoreError> {
        let (payload, content) = prepare_insert(row, audit, outbox, idempotency)?;
        if let Some(idem) = idempotency {
            self.put_idempotency(idem).await?;
        }
        self.injections.push((row, payload, content));
        self.wrote = true;
        if !self.bulk {
            self.flush_injections().await?;
        }
        for d in audit {
            self.append(d).await?;
        }
        self.queue_outbox(outbox).await?;
        Ok(1)
    }

    async fn update_injection(&mut self, u: &'j InjectionUpdate) -> Result<u64, StoreError> {
        check_drafts(u.id, None, &u.audit)?;
        check_outbox(u.id, &u.outbox)?;
        // Two changes of one injection in one statement would race; the second waits for
        // the first and then runs on its own, so a conflict is pinned on its batch alone.
        let immediate = !self.bulk || self.updates.iter().any(|b| b.id == u.id);
        if immediate {
            self.flush().await?;
            self.updates.push(u);
            self.flush_updates(true).await?;
        } else {
            self.updates.push(u);
        }
        self.wrote = true;
        for d in &u.audit {
            self.append(d).await?;
        }
        self.queue_outbox(&u.outbox).await?;
        Ok(1)
    }

    async fn record_event(&mut self, audit: &AuditDraft, outbox: &'j [OutboxRow]) -> Result<u64, StoreError> {
        let id = audit.injection_id;
        check_outbox(id, outbox)?;
        if self.injections.iter().any(|(r, _, _)| r.id == id) {
            self.flush().await?;
        }
        let ids = sqlx::query("SELECT conversation_id, prompt_id FROM injections WHERE id = ?")
            .bind(id.hyphenated())
            .fetch_optional(&mut *self.conn)
            .await
            .map_err(db_err("reading an injection"))?
            .ok_or_else(|| StoreError::NotFound { what: "injection", id: id.to_string() })?;
        let conv = parse_text_uuid(&ids, 0)?;
        let prompt = parse_text_uuid(&ids, 1)?;
        check_drafts(id, Some((conv, prompt)), std::slice::from_ref(audit))?;
        self.append(audit).await?;
        self.queue_outbox(outbox).await?;
        Ok(1)
    }

    /// Seals `draft` as the next record (its insert may be buffered).
    async fn append(&mut self, draft: &AuditDraft) -> Result<(), StoreError> {
        let r = self.chain.append(draft.clone(), self.at, self.rng)?;
        self.records.push(r);
        self.wrote = true;
        if !self.bulk {
            self.flush_audit().await?;
        }
        Ok(())
    }

    async fn queue_outbox(&mut self, rows: &'j [OutboxRow]) -> Result<(), StoreError> {
        if rows.is_empty() {
            return Ok(());
        }
        self.outbox.extend(rows);
        self.wrote = true;
        if !self.bulk {
            self.flush_outbox().await?;
        }
        Ok(())
    }

    /// Writes every buffer, in foreign-key order.
    pub async fn flush(&mut self) -> Result<(), StoreError> {
        self.flush_injections().await?;
        self.flush_updates(!self.bulk).await?;
        self.flush_audit().await?;
        self.flush_outbox().await?;
        self.flush_rollup().await?;
        self.flush_engagements().await
    }

    /// Adds the buffered engagement events to the rollup (before they are inserted, in the
    /// same transaction, so the rollup always matches the events).
    async fn flush_rollup(&mut self) -> Result<(), StoreError> {
        super::rollup::add_events(self.conn, &self.engagements).await
    }

    async fn flush_engagements(&mut self) -> Result<(), StoreError> {
        let buf = std::mem::take(&mut self.engagements);
        insert_engagements(self.conn, &buf).await
    }

    /// Ends the transaction: writes what is still buffered, then moves the chain head (when
    /// `head.3`, records were appended) and commits in one statement (one hand-off).
    pub async fn finish(&mut self, head: (i64, &[u8], i64, bool)) -> Result<(), StoreError> {
        self.flush().await?;
        let (seq, hash, at, appended) = head;
        let q = sqlx::query(FINISH_HEAD).bind(seq).bind(hash).bind(at);
        let r = q.bind(appended).execute(&mut *self.conn).await;
        if let Err(e) = r {
            let single = StoreError::Invalid(format!("committing: {e}"));
            return Err(self.buffered_err(e, "committing", single));
        }
        self.injections.clear();
        self.outbox.clear();
        self.engagements.clear();
        self.audit_flushed = self.records.len();
        Ok(())
    }

    /// Maps a failed buffered statement: constraint failures are the batches' own (and in the
    /// fast pass cannot be pinned on one, hence a replay); anything else fails the transaction.
    fn buffered_err(&mut self, e: sqlx::Error, context: &'static str, single: StoreError) -> StoreError {
        let constraint = [ErrorKind::UniqueViolation, ErrorKind::ForeignKeyViolation, ErrorKind::CheckViolation]
            .into_iter()
            .any(|k| is_kind(&e, k));
        if !constraint {
            return db_err(context)(e);
        }
        if self.bulk {
            self.flush_failed = true;
            StoreError::Invalid(format!("{context}: {e}"))
        } else {
            single
        }
    }

    async fn flush_injections(&mut self) -> Result<(), StoreError> {
        let buf = std::mem::take(&mut self.injections);
        if buf.is_empty() {
            return Ok(());
        }
        let mut rest = &buf[..];
        while !rest.is_empty() {
            let (chunk, tail) = rest.split_at(chunk_len(rest.len()));
            rest = tail;
            let sql = format!("{INSERT_INJECTIONS}{}", placeholders(INJECTION_COLS, chunk.len()));
            let mut q = sqlx::query(&sql);
            for (row, payload, content) in chunk {
                q = q
                    .bind(row.id.hyphenated())
                    .bind(row.conversation_id.hyphenated())
                    .bind(row.prompt_id.hyphenated())
                    .bind(row.status.as_str())
                    .bind(payload.as_str())
                    .bind(content.as_str())
                    .bind(row.priority.as_str())
                    .bind(row.source.as_str())
                    .bind(row.api_key_id.as_deref())
                    .bind(row.rule_id.as_deref())
                    .bind(row.created_at)
                    .bind(row.admitted_at)
                    .bind(row.show_at)
                    .bind(row.expires_at)
                    .bind(row.queue_deadline)
                    .bind(row.updated_at)
                    .bind(row.last_error.as_deref())
                    .bind(row.queue_id.as_deref())
                    .bind(row.agent_id.as_deref());
            }
            if let Err(e) = q.execute(&mut *self.conn).await {
                let single = StoreError::Duplicate { what: "injection", id: chunk[0].0.id.to_string() };
                return Err(self.buffered_err(e, "inserting injections", single));
            }
        }
        Ok(())
    }

    /// `attributable`: the buffer holds one batch's update only, so a miss is that batch's.
    async fn flush_updates(&mut self, attributable: bool) -> Result<(), StoreError> {
        let buf = std::mem::take(&mut self.updates);
        let mut rest = &buf[..];
        while !rest.is_empty() {
            let (chunk, tail) = rest.split_at(chunk_len(rest.len()));
            rest = tail;
            let sql =
                format!("{}{}{}", UPDATE_INJECTIONS.0, placeholders(UPDATE_COLS, chunk.len()), UPDATE_INJECTIONS.1);
            let mut q = sqlx::query(&sql);
            for u in chunk {
                q = q
                    .bind(u.id.hyphenated())
                    .bind(u.expected_status.as_str())
                    .bind(u.status.as_str())
                    .bind(u.at)
                    .bind(u.admitted_at)
                    .bind(u.show_at)
                    .bind(u.expires_at)
                    .bind(u.queue_deadline)
                    .bind(u.last_error.as_deref());
            }
            let changed = match q.fetch_all(&mut *self.conn).await {
                Ok(rows) => rows,
                Err(e) => {
                    let single = StoreError::Invalid(format!("injection {}: {e}", chunk[0].id));
                    let e = self.buffered_err(e, "updating injections", single);
                    self.flush_failed &= !attributable;
                    return Err(e);
                }
            };
            let mut found = std::collections::HashMap::with_capacity(changed.len());
            for r in &changed {
                found.insert(parse_text_uuid(r, 0)?, (parse_text_uuid(r, 1)?, parse_text_uuid(r, 2)?));
            }
            for u in chunk {
                let outcome = match found.get(&u.id) {
                    Some(&ids) => {
                        let checked = check_drafts(u.id, Some(ids), &u.audit);
                        // The row did change: the batch must be undone, not just skipped.
                        self.wrote |= checked.is_err();
                        checked
                    }
                    None => Err(self.explain_missed_update(u).await?),
                };
                if let Err(e) = outcome {
                    if !attributable {
                        // Other batches' changes went out in the same statement.
                        self.flush_failed = true;
                    }
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// Why an optimistic update changed no row: the injection is gone or has moved on.
    async fn explain_missed_update(&mut self, u: &InjectionUpdate) -> Result<StoreError, StoreError> {
        let actual: Option<String> = sqlx::query_scalar("SELECT status FROM injections WHERE id = ?")
            .bind(u.id.hyphenated())
            .fetch_optional(&mut *self.conn)
            .await
            .map_err(db_err("reading an injection's status"))?;
        Ok(match actual {
            None => StoreError::NotFound { what: "injection", id: u.id.to_string() },
            Some(s) => StoreError::Conflict {
                id: u.id,
                expected: u.expected_status,
                actual: s.parse().map_err(|()| StoreError::Corrupt(format!("injection {} has status {s:?}", u.id)))?,
            },
        })
    }

    async fn flush_audit(&mut self) -> Result<(), StoreError> {
        let mut from = self.audit_flushed;
        while from < self.records.len() {
            let n = chunk_len(self.records.len() - from);
            let chunk = &self.records[from..from + n];
            let sql = format!("{INSERT_AUDIT}{}", placeholders(AUDIT_COLS, n));
            let mut q = sqlx::query(&sql);
            for r in chunk {
                let latency = r.latency_ms.map(|ms| to_i64(ms, "latencyMs")).transpose()?;
                q = q
                    .bind(to_i64(r.seq, "seq")?)
                    .bind(r.audit_id)
                    .bind(r.timestamp.as_str())
                    .bind(self.day.as_str())
                    .bind(r.conversation_id)
                    .bind(r.prompt_id)
                    .bind(r.injection_id)
                    .bind(r.status.as_str())
                    .bind(latency)
                    .bind(r.error.as_deref())
                    .bind(r.actor.as_str())
                    .bind(r.reason.as_deref())
                    .bind(r.compliance_tag.as_str())
                    .bind(r.retention_policy.as_str())
                    .bind(&r.prev_hash.0[..])
                    .bind(&r.hash.0[..]);
            }
            q.execute(&mut *self.conn).await.map_err(db_err("appending audit records"))?;
            from += n;
            self.audit_flushed = from;
        }
        Ok(())
    }

    async fn flush_outbox(&mut self) -> Result<(), StoreError> {
        let buf = std::mem::take(&mut self.outbox);
        if buf.is_empty() {
            return Ok(());
        }
        let mut rest = &buf[..];
        while !rest.is_empty() {
            let (chunk, tail) = rest.split_at(chunk_len(rest.len()));
            rest = tail;
            let sql = format!("{}{}{}", INSERT_OUTBOX.0, placeholders(OUTBOX_COLS, chunk.len()), INSERT_OUTBOX.1);
            let mut q = sqlx::query(&sql);
            for o in chunk {
                q = q
                    .bind(o.id.as_str())
                    .bind(o.injection_id.hyphenated())
                    .bind(o.endpoint_url.as_str())
                    .bind(o.event_type.as_str())
                    .bind(&o.body[..])
                    .bind(o.created_at)
                    .bind(i64::from(o.attempts))
                    .bind(o.next_attempt_at)
                    .bind(o.state.as_str())
                    .bind(o.last_status.map(i64::from))
                    .bind(o.last_error.as_deref())
                    .bind(o.delivered_at);
            }
            if let Err(e) = q.execute(&mut *self.conn).await {
                let single = outbox_error(&e, chunk[0]);
                return Err(self.buffered_err(e, "enqueueing webhook messages", single));
            }
        }
        Ok(())
    }

    async fn put_idempotency(&mut self, row: &IdempotencyRow) -> Result<(), StoreError> {
        let r = sqlx::query(UPSERT_IDEMPOTENCY)
            .bind(row.api_key_id.as_str())
            .bind(row.key.as_str())
            .bind(row.request_hash.as_str())
            .bind(i64::from(row.status_code))
            .bind(&row.response_body[..])
            .bind(row.injection_id.map(|i| i.hyphenated()))
            .bind(row.created_at)
            .bind(row.created_at.saturating_sub(IDEMPOTENCY_TTL_MS))
            .execute(&mut *self.conn)
            .await
            .map_err(db_err("storing an idempotency key"))?;
        if r.rows_affected() == 0 {
            return Err(StoreError::IdempotencyKeyInUse { key: row.key.clone() });
        }
        self.wrote = true;
        Ok(())
    }

    /// Runs a `... WHERE id = ? AND state = 'pending'` update and explains a miss.
    async fn outbox_transition<'q>(
        &mut self,
        q: sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments<'q>>,
        id: &str,
    ) -> Result<u64, StoreError> {
        let r = q.execute(&mut *self.conn).await.map_err(db_err("updating a webhook message"))?;
        if r.rows_affected() == 1 {
            self.wrote = true;
            return Ok(1);
        }
        let state: Option<String> = sqlx::query_scalar("SELECT state FROM outbox WHERE id = ?")
            .bind(id)
            .fetch_optional(&mut *self.conn)
            .await
            .map_err(db_err("reading a webhook message"))?;
        Err(match state {
            None => StoreError::NotFound { what: "webhook message", id: id.to_owned() },
            Some(state) => StoreError::OutboxNotPending { id: id.to_owned(), state },
        })
    }

    async fn disable_endpoint(&mut self, url: &str, reason: &str) -> Result<u64, StoreError> {
        // The first disablement's time is kept; a repeat only refreshes the reason.
        sqlx::query(
            "INSERT INTO webhook_endpoints (url, disabled_at, reason) VALUES (?, ?, ?) \
             ON CONFLICT (url) DO UPDATE SET reason = excluded.reason",
        )
        .bind(url)
        .bind(self.now)
        .bind(reason)
        .execute(&mut *self.conn)
        .await
        .map_err(db_err("disabling a webhook endpoint"))?;
        self.wrote = true;
        let r = sqlx::query("UPDATE outbox SET state = 'disabled' WHERE state = 'pending' AND endpoint_url = ?")
            .bind(url)
            .execute(&mut *self.conn)
            .await
            .map_err(db_err("disabling a webhook endpoint's messages"))?;
        Ok(r.rows_affected())
    }

    async fn redrive(&mut self, r: &Redrive) -> Result<u64, StoreError> {
        const SET: &str = "UPDATE outbox SET state = 'pending', attempts = 0, next_attempt_at = ?";
        let affected = match r {
            Redrive::Ids(ids) => {
                let mut n = 0;
                for id in ids {
                    let r = sqlx::query(&format!("{SET} WHERE id = ? AND state IN ('dead', 'disabled')"))
                        .bind(self.now)
                        .bind(id.as_str())
                        .execute(&mut *self.conn)
                        .await
                        .map_err(db_err("redriving a webhook message"))?;
                    if r.rows_affected() == 0 {
                        let exists: Option<i64> = sqlx::query_scalar("SELECT 1 FROM outbox WHERE id = ?")
                            .bind(id.as_str())
                            .fetch_optional(&mut *self.conn)
                            .await
                            .map_err(db_err("reading a webhook message"))?;
                        if exists.is_none() {
                            return Err(StoreError::NotFound { what: "webhook message", id: id.clone() });
                        }
                    }
                    n += r.rows_affected();
                    self.wrote |= r.rows_affected() > 0;
                }
                n
            }
            Redrive::AllDead => sqlx::query(&format!("{SET} WHERE state = 'dead'"))
                .bind(self.now)
                .execute(&mut *self.conn)
                .await
                .map_err(db_err("redriving dead webhook messages"))?
                .rows_affected(),
            Redrive::Endpoint(url) => {
                sqlx::query(&format!("{SET} WHERE state IN ('dead', 'disabled') AND endpoint_url = ?"))
                    .bind(self.now)
                    .bind(url.as_str())
                    .execute(&mut *self.conn)
                    .await
                    .map_err(db_err("redriving an endpoint's webhook messages"))?
                    .rows_affected()
            }
        };
        self.wrote |= affected > 0;
        Ok(affected)
    }

    async fn record_rule_fires(&mut self, rows: &[RuleFireRow]) -> Result<u64, StoreError> {
        let mut n = 0;
        for r in rows {
            let q = sqlx::query(
                "INSERT INTO rule_fires (conversation_id, rule_id, outcome, injection_id, at) VALUES (?, ?, ?, ?, ?)",
            )
            .bind(r.conversation_id.hyphenated().to_string())
            .bind(r.rule_id.as_str())
            .bind(r.outcome.as_str())
            .bind(r.injection_id.map(|u| u.hyphenated().to_string()))
            .bind(r.at)
            .execute(&mut *self.conn)
            .await
            .map_err(db_err("recording rule decisions"))?;
            n += q.rows_affected();
        }
        self.wrote |= n > 0;
        Ok(n)
    }

    async fn put_checkpoint(&mut self, cp: &Checkpoint) -> Result<u64, StoreError> {
        let seq = to_i64(cp.last_seq, "checkpoint lastSeq")?;
        let stored: Option<Vec<u8>> = sqlx::query_scalar("SELECT hash FROM audit_records WHERE seq = ?")
            .bind(seq)
            .fetch_optional(&mut *self.conn)
            .await
            .map_err(db_err("reading an audit record"))?;
        if let Some(h) = stored {
            let h = digest(&h)?;
            if h != cp.last_hash {
                return Err(StoreError::Invalid(format!(
                    "the checkpoint for {} names hash {} for seq {}, but the stored record has {h}",
                    cp.day, cp.last_hash, cp.last_seq
                )));
            }
        }
        let r = sqlx::query(
            "INSERT INTO audit_checkpoints (day, last_seq, last_hash, record_count, created_at, key_id, signature) \
             VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (day) DO NOTHING",
        )
        .bind(cp.day.to_string())
        .bind(seq)
        .bind(&cp.last_hash.0[..])
        .bind(to_i64(cp.record_count, "checkpoint recordCount")?)
        .bind(cp.created_at.as_str())
        .bind(cp.key_id.as_str())
        .bind(cp.signature.as_str())
        .execute(&mut *self.conn)
        .await
        .map_err(db_err("storing a checkpoint"))?;
        if r.rows_affected() == 1 {
            self.wrote = true;
            return Ok(1);
        }
        let existing = sqlx::query(super::read::CHECKPOINT_SELECT_BY_DAY)
            .bind(cp.day.to_string())
            .fetch_one(&mut *self.conn)
            .await
            .map_err(db_err("reading a checkpoint"))?;
        if super::read::decode_checkpoint(&existing)? == *cp {
            Ok(0)
        } else {
            Err(StoreError::CheckpointConflict { day: cp.day })
        }
    }

    async fn purge_days(&mut self, days: &[NaiveDate], through_seq: u64) -> Result<u64, StoreError> {
        let through = to_i64(through_seq, "through_seq")?;
        let mut days = days.to_vec();
        days.sort();
        days.dedup();
        let refuse = |why: String| Err(StoreError::InvalidPurge(why));
        if days.is_empty() {
            return refuse("no days given".into());
        }
        let mut total = 0i64;
        let mut spans = Vec::with_capacity(days.len());
        for day in &days {
            let day_s = day.to_string();
            let row = sqlx::query("SELECT min(seq), max(seq), count(*) FROM audit_records WHERE day = ?")
                .bind(&day_s)
                .fetch_one(&mut *self.conn)
                .await
                .map_err(db_err("summarising an audit day"))?;
            let (first, last, count): (Option<i64>, Option<i64>, i64) =
                (row.try_get(0).ok().flatten(), row.try_get(1).ok().flatten(), row.try_get(2).unwrap_or(0));
            let (Some(first), Some(last)) = (first, last) else {
                return refuse(format!("{day} has no audit records to purge"));
            };
            if last > through {
                return refuse(format!("{day} has records up to seq {last}, beyond through_seq {through_seq}"));
            }
            let cp: Option<(i64, i64)> =
                sqlx::query_as("SELECT last_seq, record_count FROM audit_checkpoints WHERE day = ?")
                    .bind(&day_s)
                    .fetch_optional(&mut *self.conn)
                    .await
                    .map_err(db_err("reading a checkpoint"))?;
            match cp {
                None => return refuse(format!("{day} has no stored checkpoint; store its checkpoint first")),
                Some((cp_last, cp_count)) if cp_last != last || cp_count != count => {
                    return refuse(format!(
                        "{day}'s checkpoint (last seq {cp_last}, {cp_count} records) does not match the stored \
                         records (last seq {last}, {count} records)"
                    ))
                }
                Some(_) => {}
            }
            total += count;
            spans.push((day_s, first, last, count));
        }
        let below: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_records WHERE seq <= ?")
            .bind(through)
            .fetch_one(&mut *self.conn)
            .await
            .map_err(db_err("counting audit records"))?;
        if below != total {
            return refuse(format!(
                "{below} records lie at or below seq {through_seq} but the days given hold {total}: purge whole days \
                 from the oldest, as the purge plan does"
            ));
        }
        for (day, first, last, count) in &spans {
            sqlx::query(
                "INSERT INTO audit_purges (day, first_seq, last_seq, record_count, purged_at) VALUES (?, ?, ?, ?, ?)",
            )
            .bind(day.as_str())
            .bind(first)
            .bind(last)
            .bind(count)
            .bind(self.now)
            .execute(&mut *self.conn)
            .await
            .map_err(|e| {
                if is_kind(&e, ErrorKind::UniqueViolation) {
                    StoreError::InvalidPurge(format!("{day} was already purged"))
                } else {
                    db_err("recording a purge")(e)
                }
            })?;
            self.wrote = true;
        }
        let r = sqlx::query("DELETE FROM audit_records WHERE seq <= ?")
            .bind(through)
            .execute(&mut *self.conn)
            .await
            .map_err(db_err("purging audit records"))?;
        Ok(r.rows_affected())
    }

    async fn upsert_prompts(&mut self, entries: &[CatalogueEntry]) -> Result<u64, StoreError> {
        for e in entries {
            let tags = serde_json::to_string(&e.tags)
                .map_err(|err| StoreError::Invalid(format!("tags of prompt {}: {err}", e.id)))?;
            sqlx::query(UPSERT_PROMPT)
                .bind(e.id.hyphenated())
                .bind(e.name.as_deref())
                .bind(e.content.to_json().to_string())
                .bind(tags)
                .bind(self.now)
                .execute(&mut *self.conn)
                .await
                .map_err(db_err("storing a prompt"))?;
            self.wrote = true;
        }
        Ok(entries.len() as u64)
    }
}

/// What a failed webhook insert means for the (single) message it was about.
fn outbox_error(e: &sqlx::Error, o: &OutboxRow) -> StoreError {
    if is_kind(e, ErrorKind::ForeignKeyViolation) {
        StoreError::NotFound { what: "injection (named by a webhook message)", id: o.injection_id.to_string() }
    } else {
        StoreError::Duplicate { what: "webhook message", id: o.id.clone() }
    }
}

/// Checks an injection insert (ids agree with the payload, its audit drafts, outbox rows and
/// idempotency answer name it) and serializes its payload and content: shared by both write
/// paths so they refuse exactly the same things.
pub(super) fn prepare_insert(
    row: &InjectionRow,
    audit: &[AuditDraft],
    outbox: &[OutboxRow],
    idempotency: Option<&IdempotencyRow>,
) -> Result<(String, String), StoreError> {
    if row.conversation_id != row.payload.conversation_id() || row.prompt_id != row.payload.prompt_id() {
        return Err(StoreError::Invalid(format!(
            "injection {}: conversation_id and prompt_id must be the payload's",
            row.id
        )));
    }
    check_drafts(row.id, Some((row.conversation_id, row.prompt_id)), audit)?;
    check_outbox(row.id, outbox)?;
    if let Some(idem) = idempotency {
        if idem.injection_id.is_some_and(|i| i != row.id) {
            return Err(StoreError::Invalid(format!(
                "the idempotency answer names injection {:?}, not {}",
                idem.injection_id, row.id
            )));
        }
    }
    let payload = serde_json::to_string(&row.payload.to_json())
        .map_err(|e| StoreError::Invalid(format!("payload of injection {} does not serialize: {e}", row.id)))?;
    let content = row.content.to_json().to_string();
    Ok((payload, content))
}

/// Audit drafts must describe the injection they are stored with.
pub(super) fn check_drafts(id: Uuid, ids: Option<(Uuid, Uuid)>, drafts: &[AuditDraft]) -> Result<(), StoreError> {
    for d in drafts {
        if d.injection_id != id {
            return Err(StoreError::Invalid(format!(
                "an audit record for injection {id} names injection {}",
                d.injection_id
            )));
        }
        if let Some((conv, prompt)) = ids {
            if d.conversation_id != conv || d.prompt_id != prompt {
                return Err(StoreError::Invalid(format!(
                    "an audit record for injection {id} must name its conversation {conv} and prompt {prompt}"
                )));
            }
        }
        if let Some(ms) = d.latency_ms {
            to_i64(ms, "latencyMs")?;
        }
    }
    Ok(())
}

pub(super) fn check_outbox(id: Uuid, rows: &[OutboxRow]) -> Result<(), StoreError> {
    match rows.iter().find(|o| o.injection_id != id) {
        Some(o) => Err(StoreError::Invalid(format!(
            "webhook message {} names injection {}, but it is stored with injection {id}",
            o.id, o.injection_id
        ))),
        None => Ok(()),
    }
}

fn parse_text_uuid(row: &sqlx::sqlite::SqliteRow, i: usize) -> Result<Uuid, StoreError> {
    let s: &str = row.try_get(i).map_err(db_err("decoding an id"))?;
    Uuid::parse_str(s).map_err(|_| StoreError::Corrupt(format!("stored id {s:?} is not a UUID")))
}

pub(super) fn digest(bytes: &[u8]) -> Result<Digest, StoreError> {
    <[u8; 32]>::try_from(bytes)
        .map(Digest)
        .map_err(|_| StoreError::Corrupt(format!("a stored hash has {} bytes, not 32", bytes.len())))
}
