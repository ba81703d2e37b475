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

use super::model::{IdempotencyRow, InjectionRow, InjectionUpdate, OutboxRow, Redrive};
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

/// The state one transaction threads through the operations.
pub(super) struct TxCtx<'a> {
    pub conn: &'a mut SqliteConnection,
    pub chain: &'a mut Chain,
    pub rng: &'a mut StdRng,
    /// The timestamp of every record of this transaction.
    pub at: AuditTime,
    /// `at` in ms: the time of redrives, purges and disablements.
    pub now: i64,
    pub day: String,
    /// Whether the current batch has changed anything yet.
    pub wrote: bool,
    pub records: Vec<AuditRecord>,
}

const INSERT_INJECTION: &str = "INSERT INTO injections (id, conversation_id, prompt_id, status, payload, content, \
     priority, source, api_key_id, rule_id, created_at, admitted_at, show_at, expires_at, queue_deadline, updated_at, \
     last_error) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)";

const UPDATE_INJECTION: &str = "UPDATE injections SET status = ?1, updated_at = ?2, \
     admitted_at = COALESCE(?3, admitted_at), show_at = COALESCE(?4, show_at), \
     expires_at = COALESCE(?5, expires_at), queue_deadline = COALESCE(?6, queue_deadline), \
     last_error = COALESCE(?7, last_error) \
     WHERE id = ?8 AND status = ?9 RETURNING conversation_id, prompt_id";

const INSERT_AUDIT: &str = "INSERT INTO audit_records (seq, audit_id, timestamp, day, conversation_id, prompt_id, \
     injection_id, status, latency_ms, error, actor, reason, compliance_tag, retention_policy, prev_hash, hash) \
     VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)";

// A message for an endpoint disabled by a 410 is filed as `disabled` rather than sent.
const INSERT_OUTBOX: &str = "INSERT INTO outbox (id, injection_id, endpoint_url, event_type, body, created_at, \
     attempts, next_attempt_at, state, last_status, last_error, delivered_at) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, \
     CASE WHEN ?9 = 'pending' AND EXISTS (SELECT 1 FROM webhook_endpoints WHERE url = ?3) THEN 'disabled' ELSE ?9 END, \
     ?10, ?11, ?12)";

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

impl TxCtx<'_> {
    /// Applies one operation; the row count is the operation's `affected` figure.
    pub async fn apply(&mut self, op: &WriteOp) -> Result<u64, StoreError> {
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
        row: &InjectionRow,
        audit: &[AuditDraft],
        outbox: &[OutboxRow],
        idempotency: Option<&IdempotencyRow>,
    ) -> Result<u64, StoreError> {
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
            self.put_idempotency(idem).await?;
        }
        let payload = serde_json::to_string(&row.payload.to_json())
            .map_err(|e| StoreError::Invalid(format!("payload of injection {} does not serialize: {e}", row.id)))?;
        let content = row.content.to_json().to_string();
        let result = sqlx::query(INSERT_INJECTION)
            .bind(row.id.hyphenated())
            .bind(row.conversation_id.hyphenated())
            .bind(row.prompt_id.hyphenated())
            .bind(row.status.as_str())
            .bind(payload)
            .bind(content)
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
            .execute(&mut *self.conn)
            .await;
        match result {
            Ok(_) => {}
            Err(e) if is_kind(&e, ErrorKind::UniqueViolation) => {
                return Err(StoreError::Duplicate { what: "injection", id: row.id.to_string() })
            }
            Err(e) => return Err(db_err("inserting an injection")(e)),
        }
        self.wrote = true;
        for d in audit {
            self.append(d).await?;
        }
        for o in outbox {
            self.insert_outbox(o).await?;
        }
        Ok(1)
    }

    async fn update_injection(&mut self, u: &InjectionUpdate) -> Result<u64, StoreError> {
        check_drafts(u.id, None, &u.audit)?;
        check_outbox(u.id, &u.outbox)?;
        let ids = sqlx::query(UPDATE_INJECTION)
            .bind(u.status.as_str())
            .bind(u.at)
            .bind(u.admitted_at)
            .bind(u.show_at)
            .bind(u.expires_at)
            .bind(u.queue_deadline)
            .bind(u.last_error.as_deref())
            .bind(u.id.hyphenated())
            .bind(u.expected_status.as_str())
            .fetch_optional(&mut *self.conn)
            .await
            .map_err(db_err("updating an injection"))?;
        let Some(ids) = ids else {
            let actual: Option<String> = sqlx::query_scalar("SELECT status FROM injections WHERE id = ?")
                .bind(u.id.hyphenated())
                .fetch_optional(&mut *self.conn)
                .await
                .map_err(db_err("reading an injection's status"))?;
            return Err(match actual {
                None => StoreError::NotFound { what: "injection", id: u.id.to_string() },
                Some(s) => StoreError::Conflict {
                    id: u.id,
                    expected: u.expected_status,
                    actual: s.parse().map_err(|()| StoreError::Corrupt(format!("injection {} has status {s:?}", u.id)))?,
                },
            });
        };
        self.wrote = true;
        let conv = parse_text_uuid(&ids, 0)?;
        let prompt = parse_text_uuid(&ids, 1)?;
        check_drafts(u.id, Some((conv, prompt)), &u.audit)?;
        for d in &u.audit {
            self.append(d).await?;
        }
        for o in &u.outbox {
            self.insert_outbox(o).await?;
        }
        Ok(1)
    }

    async fn record_event(&mut self, audit: &AuditDraft, outbox: &[OutboxRow]) -> Result<u64, StoreError> {
        let id = audit.injection_id;
        check_outbox(id, outbox)?;
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
        for o in outbox {
            self.insert_outbox(o).await?;
        }
        Ok(1)
    }

    /// Seals `draft` as the next record and stores it.
    async fn append(&mut self, draft: &AuditDraft) -> Result<(), StoreError> {
        let latency = draft.latency_ms.map(|ms| to_i64(ms, "latencyMs")).transpose()?;
        let r = self.chain.append(draft.clone(), self.at, self.rng)?;
        self.wrote = true;
        sqlx::query(INSERT_AUDIT)
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
            .bind(&r.hash.0[..])
            .execute(&mut *self.conn)
            .await
            .map_err(db_err("appending an audit record"))?;
        self.records.push(r);
        Ok(())
    }

    async fn insert_outbox(&mut self, o: &OutboxRow) -> Result<(), StoreError> {
        let result = sqlx::query(INSERT_OUTBOX)
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
            .bind(o.delivered_at)
            .execute(&mut *self.conn)
            .await;
        match result {
            Ok(_) => {
                self.wrote = true;
                Ok(())
            }
            Err(e) if is_kind(&e, ErrorKind::UniqueViolation) => {
                Err(StoreError::Duplicate { what: "webhook message", id: o.id.clone() })
            }
            Err(e) if is_kind(&e, ErrorKind::ForeignKeyViolation) => Err(StoreError::NotFound {
                what: "injection (named by a webhook message)",
                id: o.injection_id.to_string(),
            }),
            Err(e) => Err(db_err("enqueueing a webhook message")(e)),
        }
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
            Redrive::AllDead => {
                sqlx::query(&format!("{SET} WHERE state = 'dead'"))
                    .bind(self.now)
                    .execute(&mut *self.conn)
                    .await
                    .map_err(db_err("redriving dead webhook messages"))?
                    .rows_affected()
            }
            Redrive::Endpoint(url) => sqlx::query(&format!(
                "{SET} WHERE state IN ('dead', 'disabled') AND endpoint_url = ?"
            ))
            .bind(self.now)
            .bind(url.as_str())
            .execute(&mut *self.conn)
            .await
            .map_err(db_err("redriving an endpoint's webhook messages"))?
            .rows_affected(),
        };
        self.wrote |= affected > 0;
        Ok(affected)
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

/// Audit drafts must describe the injection they are stored with.
fn check_drafts(id: Uuid, ids: Option<(Uuid, Uuid)>, drafts: &[AuditDraft]) -> Result<(), StoreError> {
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

fn check_outbox(id: Uuid, rows: &[OutboxRow]) -> Result<(), StoreError> {
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
