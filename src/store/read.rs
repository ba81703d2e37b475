//! Reads, on the read pool (WAL: readers never wait for the writer), and the decoding of
//! stored rows back into typed values. Stored data that does not decode is reported as
//! `StoreError::Corrupt`, naming what is wrong, never a panic.

use std::str::FromStr;

use bytes::Bytes;
use chrono::NaiveDate;
use futures::Stream;
use serde_json::Value;
use sqlx::sqlite::{SqliteConnection, SqliteRow};
use sqlx::{Row, SqlitePool};
use uuid::Uuid;

use super::model::{
    AuditHead, DisabledEndpoint, EngagementKind, EngagementRow, IdempotencyRow, InjectionRow, InjectionStatus,
    InjectionWithTimeline, OutboxRow, OutboxState, OutboxStats, PurgeRecord, RecoverySet, RuleFireRow, Source,
    IDEMPOTENCY_TTL_MS,
};
use super::ops::{digest, to_i64};
use super::{db_err, StoreError};
use crate::audit::{AuditRecord, AuditTime, Checkpoint, DaySummary, RecordView};
use crate::contract::{CatalogueEntry, Priority, PromptContent, ValidPayload};

const INJECTION_COLUMNS: &str = "id, conversation_id, prompt_id, status, payload, content, priority, source, \
     api_key_id, rule_id, created_at, admitted_at, show_at, expires_at, queue_deadline, updated_at, last_error, \
     queue_id, agent_id";

const AUDIT_COLUMNS: &str = "seq, audit_id, timestamp, conversation_id, prompt_id, injection_id, status, latency_ms, \
     error, actor, reason, compliance_tag, retention_policy, prev_hash, hash";

const OUTBOX_COLUMNS: &str = "id, injection_id, endpoint_url, event_type, body, created_at, attempts, \
     next_attempt_at, state, last_status, last_error, delivered_at";

// The WHERE and ORDER BY parts of the indexed reads, named so the query-plan test checks the
// very text the reads run. The live-status term repeats the partial indexes' WHERE exactly,
// which is what lets SQLite use them.
const CONVERSATION_PROMPTS: &str = "FROM injections WHERE conversation_id = ? \
     AND status IN ('armed', 'scheduled', 'queued', 'delivered') \
     AND (status <> 'delivered' OR expires_at IS NULL OR expires_at > ?) ORDER BY created_at, id";
const RECOVERY: &str =
    "FROM injections WHERE status IN ('armed', 'scheduled', 'queued', 'delivered') ORDER BY created_at, id";
const TIMELINE: &str = "FROM audit_records WHERE injection_id = ? ORDER BY seq";
const OUTBOX_DUE: &str =
    "FROM outbox WHERE state = 'pending' AND next_attempt_at <= ? ORDER BY next_attempt_at LIMIT ?";
const OUTBOX_BY_STATE: &str = "FROM outbox WHERE state = ? ORDER BY created_at LIMIT ?";
const AUDIT_DAYS: &str = "SELECT day, min(seq), max(seq), count(*) FROM audit_records GROUP BY day ORDER BY day";
const OUTBOX_STATS: &str = "SELECT (SELECT count(*) FROM outbox WHERE state = 'pending'), \
     (SELECT min(created_at) FROM outbox WHERE state = 'pending'), \
     (SELECT count(*) FROM outbox WHERE state = 'pending' AND next_attempt_at <= ?), \
     (SELECT count(*) FROM outbox WHERE state = 'dead'), \
     (SELECT count(*) FROM outbox WHERE state = 'disabled')";

pub(super) const CHECKPOINT_SELECT_BY_DAY: &str = "SELECT day, last_seq, last_hash, record_count, created_at, key_id, \
     signature FROM audit_checkpoints WHERE day = ?";

fn corrupt(what: impl Into<String>) -> StoreError {
    StoreError::Corrupt(what.into())
}

fn get<'r, T>(row: &'r SqliteRow, i: usize) -> Result<T, StoreError>
where
    T: sqlx::Decode<'r, sqlx::Sqlite> + sqlx::Type<sqlx::Sqlite>,
{
    row.try_get(i).map_err(db_err("decoding a stored row"))
}

fn text_uuid(row: &SqliteRow, i: usize) -> Result<Uuid, StoreError> {
    let s: &str = get(row, i)?;
    Uuid::parse_str(s).map_err(|_| corrupt(format!("stored id {s:?} is not a UUID")))
}

fn u64_col(row: &SqliteRow, i: usize, what: &str) -> Result<u64, StoreError> {
    let v: i64 = get(row, i)?;
    u64::try_from(v).map_err(|_| corrupt(format!("stored {what} {v} is negative")))
}

fn parse_enum<T: FromStr>(s: &str, what: &str) -> Result<T, StoreError> {
    s.parse().map_err(|_| corrupt(format!("stored {what} {s:?} is not one the store knows")))
}

fn decode_injection(row: &SqliteRow) -> Result<InjectionRow, StoreError> {
    let id = text_uuid(row, 0)?;
    let payload_text: &str = get(row, 4)?;
    let payload: ValidPayload = serde_json::from_str(payload_text)
        .map_err(|e| corrupt(format!("the stored payload of injection {id} no longer validates: {e}")))?;
    let content_text: &str = get(row, 5)?;
    let content = decode_content(content_text).map_err(|e| corrupt(format!("content of injection {id}: {e}")))?;
    Ok(InjectionRow {
        id,
        conversation_id: text_uuid(row, 1)?,
        prompt_id: text_uuid(row, 2)?,
        status: parse_enum::<InjectionStatus>(get(row, 3)?, "injection status")?,
        payload,
        content,
        priority: parse_enum::<Priority>(get(row, 6)?, "priority")?,
        source: parse_enum::<Source>(get(row, 7)?, "source")?,
        api_key_id: get(row, 8)?,
        rule_id: get(row, 9)?,
        created_at: get(row, 10)?,
        admitted_at: get(row, 11)?,
        show_at: get(row, 12)?,
        expires_at: get(row, 13)?,
        queue_deadline: get(row, 14)?,
        updated_at: get(row, 15)?,
        last_error: get(row, 16)?,
        queue_id: get(row, 17)?,
        agent_id: get(row, 18)?,
    })
}

/// The stored `{title, body, url?, priority}` written by `PromptContent::to_json`.
fn decode_content(text: &str) -> Result<PromptContent, String> {
    let v: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    let field = |k: &str| v.get(k).and_then(Value::as_str);
    let title = field("title").ok_or("no title")?.to_owned();
    let body = field("body").ok_or("no body")?.to_owned();
    let url = field("url").map(url::Url::parse).transpose().map_err(|e| format!("bad url: {e}"))?;
    let priority = match field("priority") {
        None => Priority::default(),
        Some(p) => p.parse().map_err(|()| format!("unknown priority {p:?}"))?,
    };
    Ok(PromptContent { title, body, url, priority })
}

fn uuid_blob(row: &SqliteRow, i: usize) -> Result<Uuid, StoreError> {
    let b: &[u8] = get(row, i)?;
    Uuid::from_slice(b).map_err(|_| corrupt(format!("a stored audit id has {} bytes, not 16", b.len())))
}

/// Column order: [`AUDIT_COLUMNS`].
fn decode_audit(row: &SqliteRow) -> Result<AuditRecord, StoreError> {
    let ts: &str = get(row, 2)?;
    Ok(AuditRecord {
        seq: u64_col(row, 0, "audit seq")?,
        audit_id: uuid_blob(row, 1)?,
        timestamp: AuditTime::parse(ts).map_err(|e| corrupt(e.to_string()))?,
        conversation_id: uuid_blob(row, 3)?,
        prompt_id: uuid_blob(row, 4)?,
        injection_id: uuid_blob(row, 5)?,
        status: get(row, 6)?,
        latency_ms: get::<Option<i64>>(row, 7)?
            .map(|v| u64::try_from(v).map_err(|_| corrupt(format!("stored latencyMs {v} is negative"))))
            .transpose()?,
        error: get(row, 8)?,
        actor: get(row, 9)?,
        reason: get(row, 10)?,
        compliance_tag: get(row, 11)?,
        retention_policy: get(row, 12)?,
        prev_hash: digest(get(row, 13)?)?,
        hash: digest(get(row, 14)?)?,
    })
}

fn decode_outbox(row: &SqliteRow) -> Result<OutboxRow, StoreError> {
    let status = |i| -> Result<Option<u16>, StoreError> {
        get::<Option<i64>>(row, i)?
            .map(|v| u16::try_from(v).map_err(|_| corrupt(format!("stored HTTP status {v}"))))
            .transpose()
    };
    let attempts: i64 = get(row, 6)?;
    Ok(OutboxRow {
        id: get(row, 0)?,
        injection_id: text_uuid(row, 1)?,
        endpoint_url: get(row, 2)?,
        event_type: get(row, 3)?,
        body: Bytes::from(get::<Vec<u8>>(row, 4)?),
        created_at: get(row, 5)?,
        attempts: u32::try_from(attempts).map_err(|_| corrupt(format!("stored attempt count {attempts}")))?,
        next_attempt_at: get(row, 7)?,
        state: parse_enum::<OutboxState>(get(row, 8)?, "outbox state")?,
        last_status: status(9)?,
        last_error: get(row, 10)?,
        delivered_at: get(row, 11)?,
    })
}

fn decode_day(s: &str) -> Result<NaiveDate, StoreError> {
    NaiveDate::parse_from_str(s, "%Y-%m-%d").map_err(|_| corrupt(format!("stored day {s:?} is not YYYY-MM-DD")))
}

pub(super) fn decode_checkpoint(row: &SqliteRow) -> Result<Checkpoint, StoreError> {
    let created: &str = get(row, 4)?;
    Ok(Checkpoint {
        day: decode_day(get(row, 0)?)?,
        last_seq: u64_col(row, 1, "checkpoint lastSeq")?,
        last_hash: digest(get(row, 2)?)?,
        record_count: u64_col(row, 3, "checkpoint recordCount")?,
        created_at: AuditTime::parse(created).map_err(|e| corrupt(e.to_string()))?,
        key_id: get(row, 5)?,
        signature: get(row, 6)?,
    })
}

pub(super) async fn load_head(conn: &mut SqliteConnection) -> Result<AuditHead, StoreError> {
    let row = sqlx::query("SELECT last_seq, last_hash, last_at FROM audit_head WHERE id = 1")
        .fetch_optional(conn)
        .await
        .map_err(db_err("reading the audit head"))?
        .ok_or_else(|| corrupt("the audit_head row is missing"))?;
    Ok(AuditHead {
        last_seq: u64_col(&row, 0, "audit head seq")?,
        last_hash: digest(get(&row, 1)?)?,
        last_at: get(&row, 2)?,
    })
}

/// The read side of [`Store`](super::Store).
impl super::Store {
    fn pool(&self) -> &SqlitePool {
        &self.inner.read
    }

    /// One injection and its timeline (its audit records in chain order).
    pub async fn get_injection(&self, id: Uuid) -> Result<Option<InjectionWithTimeline>, StoreError> {
        // One read transaction, so the row and its timeline are the same snapshot.
        let mut tx = self.pool().begin().await.map_err(db_err("starting a read"))?;
        let row = sqlx::query(&format!("SELECT {INJECTION_COLUMNS} FROM injections WHERE id = ?"))
            .bind(id.hyphenated())
            .fetch_optional(&mut *tx)
            .await
            .map_err(db_err("reading an injection"))?;
        let Some(row) = row else { return Ok(None) };
        let row = decode_injection(&row)?;
        let timeline = sqlx::query(&format!("SELECT {AUDIT_COLUMNS} {TIMELINE}"))
            .bind(id)
            .fetch_all(&mut *tx)
            .await
            .map_err(db_err("reading an injection's timeline"))?
            .iter()
            .map(decode_audit)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Some(InjectionWithTimeline { row, timeline }))
    }

    /// The live prompts of a conversation: armed, scheduled, queued, and delivered ones still
    /// on screen at `now` (`expires_at` later than now, or not set), oldest first.
    pub async fn conversation_prompts(&self, conversation_id: Uuid, now: i64) -> Result<Vec<InjectionRow>, StoreError> {
        sqlx::query(&format!("SELECT {INJECTION_COLUMNS} {CONVERSATION_PROMPTS}"))
            .bind(conversation_id.hyphenated())
            .bind(now)
            .fetch_all(self.pool())
            .await
            .map_err(db_err("reading a conversation's prompts"))?
            .iter()
            .map(decode_injection)
            .collect()
    }

    /// Engagement events with `from <= at < to` (epoch ms), in time order, handed to `each`
    /// one at a time so adoption can fold millions of them without holding them all.
    pub async fn engagement_events(
        &self,
        from: i64,
        to: i64,
        mut each: impl FnMut(EngagementRow),
    ) -> Result<u64, StoreError> {
        use futures::TryStreamExt;
        let mut rows = sqlx::query(
            "SELECT injection_id, conversation_id, prompt_id, rule_id, queue_id, agent_id, kind, at, shown_at, rating \
             FROM engagement_events WHERE at >= ? AND at < ? ORDER BY at, id",
        )
        .bind(from)
        .bind(to)
        .fetch(self.pool());
        let mut n = 0;
        while let Some(row) = rows.try_next().await.map_err(db_err("reading engagement events"))? {
            let rating: Option<i64> = get(&row, 9)?;
            each(EngagementRow {
                injection_id: text_uuid(&row, 0)?,
                conversation_id: text_uuid(&row, 1)?,
                prompt_id: text_uuid(&row, 2)?,
                rule_id: get(&row, 3)?,
                queue_id: get(&row, 4)?,
                agent_id: get(&row, 5)?,
                kind: parse_enum::<EngagementKind>(get(&row, 6)?, "engagement kind")?,
                at: get(&row, 7)?,
                shown_at: get(&row, 8)?,
                rating: rating.and_then(|r| i8::try_from(r).ok()),
            });
            n += 1;
        }
        Ok(n)
    }

    /// Adoption counted in SQL over the raw events (one indexed range scan, one GROUP BY):
    /// for `from <= at < to`, one cell per (key, day, kind, detail) with its row count.
    /// `day` is the day number at UTC offset `offset_ms` (floor of `(at + offset) / 1 day`). `detail` is what order
    /// statistics need: for `clicked`, the time to click in ms (absent without `shown_at` or
    /// when negative); for `dismissed`, 1 if within `quick_ms` of being shown, else 0; for
    /// `feedback`, the rating. The key is the `dimension` column (`prompt_id`, `rule_id`,
    /// `queue_id`, `agent_id`, an empty one read as none) or none. `adoption::metrics` folds
    /// the same rules and a test holds both paths equal. This scan is the baseline the
    /// engagement rollup (`store::rollup`) replaced for reports.
    pub async fn adoption_cells(
        &self,
        from: i64,
        to: i64,
        offset_ms: i64,
        quick_ms: i64,
        dimension: Option<AdoptionDimension>,
    ) -> Result<Vec<AdoptionCell>, StoreError> {
        use futures::TryStreamExt;
        let key = match dimension {
            None => "NULL",
            Some(AdoptionDimension::Prompt) => "e.prompt_id",
            Some(AdoptionDimension::Rule) => "NULLIF(e.rule_id, '')",
            Some(AdoptionDimension::Queue) => "NULLIF(e.queue_id, '')",
            Some(AdoptionDimension::Agent) => "NULLIF(e.agent_id, '')",
        };
        let sql = format!(
            "SELECT {key} AS k, ((e.at + ?3) - (((e.at + ?3) % 86400000) + 86400000) % 86400000) / 86400000 AS d, \
             e.kind, CASE e.kind \
               WHEN 'clicked' THEN CASE WHEN e.shown_at IS NOT NULL AND e.at >= e.shown_at THEN e.at - e.shown_at END \
               WHEN 'dismissed' THEN (e.shown_at IS NOT NULL AND e.at >= e.shown_at AND e.at - e.shown_at <= ?4) \
               WHEN 'feedback' THEN e.rating END AS x, count(*) \
             FROM engagement_events e WHERE e.at >= ?1 AND e.at < ?2 GROUP BY k, d, e.kind, x"
        );
        let mut rows = sqlx::query(&sql).bind(from).bind(to).bind(offset_ms).bind(quick_ms).fetch(self.pool());
        let mut out = Vec::new();
        while let Some(row) = rows.try_next().await.map_err(db_err("counting engagement events"))? {
            out.push(AdoptionCell {
                key: get(&row, 0)?,
                day: get(&row, 1)?,
                kind: parse_enum::<EngagementKind>(get(&row, 2)?, "engagement kind")?,
                detail: get(&row, 3)?,
                count: u64_col(&row, 4, "engagement count")?,
            });
        }
        Ok(out)
    }

    /// The title people know each prompt by: the resolved content of one injection of it
    /// that has an engagement event in `from <= at < to`. Prompts without one are left out.
    pub async fn prompt_titles(
        &self,
        from: i64,
        to: i64,
        prompt_ids: &[String],
    ) -> Result<Vec<(String, String)>, StoreError> {
        let mut out = Vec::new();
        for id in prompt_ids {
            let row = sqlx::query(
                "SELECT content FROM injections WHERE id = (SELECT injection_id FROM engagement_events \
                 WHERE prompt_id = ? AND at >= ? AND at < ? LIMIT 1)",
            )
            .bind(id)
            .bind(from)
            .bind(to)
            .fetch_optional(self.pool())
            .await
            .map_err(db_err("reading a prompt's title"))?;
            let Some(row) = row else { continue };
            let content: &str = get(&row, 0)?;
            let v: Value = serde_json::from_str(content)
                .map_err(|e| corrupt(format!("stored content of prompt {id} is not JSON ({e})")))?;
            if let Some(t) = v.get("title").and_then(Value::as_str) {
                out.push((id.clone(), t.to_string()));
            }
        }
        Ok(out)
    }

    /// `SELECT count(*)` over the interval: the floor under any adoption query (a baseline).
    pub async fn engagement_count(&self, from: i64, to: i64) -> Result<u64, StoreError> {
        let row = sqlx::query("SELECT count(*) FROM engagement_events WHERE at >= ? AND at < ?")
            .bind(from)
            .bind(to)
            .fetch_one(self.pool())
            .await
            .map_err(db_err("counting engagement events"))?;
        u64_col(&row, 0, "engagement count")
    }

    /// Everything a restarted service must pick up again (see [`RecoverySet`]).
    pub async fn recovery_set(&self, now: i64) -> Result<RecoverySet, StoreError> {
        let rows = sqlx::query(&format!("SELECT {INJECTION_COLUMNS} {RECOVERY}"))
            .fetch_all(self.pool())
            .await
            .map_err(db_err("reading the recovery set"))?;
        let mut set = RecoverySet::default();
        for row in &rows {
            let r = decode_injection(row)?;
            match r.status {
                InjectionStatus::Delivered if r.expires_at.is_some_and(|e| e <= now) => set.expired.push(r),
                InjectionStatus::Delivered => set.shown.push(r),
                _ => set.pending.push(r),
            }
        }
        Ok(set)
    }

    /// Pending webhook messages due at `now`, the longest-due first.
    pub async fn outbox_due(&self, now: i64, limit: u32) -> Result<Vec<OutboxRow>, StoreError> {
        sqlx::query(&format!("SELECT {OUTBOX_COLUMNS} {OUTBOX_DUE}"))
            .bind(now)
            .bind(i64::from(limit))
            .fetch_all(self.pool())
            .await
            .map_err(db_err("reading due webhook messages"))?
            .iter()
            .map(decode_outbox)
            .collect()
    }

    /// Messages in `state` (all states if `None`), oldest first, at most `limit`.
    pub async fn outbox_list(&self, state: Option<OutboxState>, limit: u32) -> Result<Vec<OutboxRow>, StoreError> {
        let q = match state {
            Some(_) => format!("SELECT {OUTBOX_COLUMNS} {OUTBOX_BY_STATE}"),
            None => format!("SELECT {OUTBOX_COLUMNS} FROM outbox ORDER BY created_at LIMIT ?"),
        };
        let mut q = sqlx::query(&q);
        if let Some(s) = state {
            q = q.bind(s.as_str());
        }
        q.bind(i64::from(limit))
            .fetch_all(self.pool())
            .await
            .map_err(db_err("listing webhook messages"))?
            .iter()
            .map(decode_outbox)
            .collect()
    }

    /// One webhook message.
    pub async fn outbox_get(&self, id: &str) -> Result<Option<OutboxRow>, StoreError> {
        sqlx::query(&format!("SELECT {OUTBOX_COLUMNS} FROM outbox WHERE id = ?"))
            .bind(id)
            .fetch_optional(self.pool())
            .await
            .map_err(db_err("reading a webhook message"))?
            .as_ref()
            .map(decode_outbox)
            .transpose()
    }

    /// Backlog figures for metrics.
    pub async fn outbox_stats(&self, now: i64) -> Result<OutboxStats, StoreError> {
        let row = sqlx::query(OUTBOX_STATS)
            .bind(now)
            .fetch_one(self.pool())
            .await
            .map_err(db_err("reading outbox figures"))?;
        Ok(OutboxStats {
            pending: u64_col(&row, 0, "count")?,
            oldest_pending_age_ms: get::<Option<i64>>(&row, 1)?.map(|t| now.saturating_sub(t).max(0)),
            due: u64_col(&row, 2, "count")?,
            dead: u64_col(&row, 3, "count")?,
            disabled: u64_col(&row, 4, "count")?,
        })
    }

    /// Endpoints disabled after a 410.
    pub async fn disabled_endpoints(&self) -> Result<Vec<DisabledEndpoint>, StoreError> {
        let rows: Vec<(String, i64, String)> =
            sqlx::query_as("SELECT url, disabled_at, reason FROM webhook_endpoints ORDER BY url")
                .fetch_all(self.pool())
                .await
                .map_err(db_err("reading disabled endpoints"))?;
        Ok(rows.into_iter().map(|(url, disabled_at, reason)| DisabledEndpoint { url, disabled_at, reason }).collect())
    }

    /// Up to `limit` audit records with `seq >= from_seq`, in order (keyset pagination: pass
    /// the last seq + 1 to continue).
    pub async fn audit_batch(&self, from_seq: u64, limit: u32) -> Result<Vec<AuditRecord>, StoreError> {
        super::raw_audit::audit_batch(self.pool(), to_i64(from_seq, "seq")?, limit).await
    }

    /// The audit chain from `from_seq` on, as batches of `batch` records (the last one
    /// shorter), for verification and export in constant memory. One read transaction: the
    /// chain as it was when the stream started. A blocking thread reads the next batch off
    /// SQLite's C API while the caller works on the current one, so verifying and reading run
    /// on two cores; at most three batches are in memory.
    pub fn audit_stream(
        &self,
        from_seq: u64,
        batch: u32,
    ) -> impl Stream<Item = Result<Vec<AuditRecord>, StoreError>> + Send + 'static {
        let start = to_i64(from_seq, "seq");
        let mut rx = match start {
            Ok(from) => Some(super::raw_audit::audit_stream(self.pool(), from, batch.max(1))),
            Err(_) => None,
        };
        let mut start_err = start.err();
        futures::stream::poll_fn(move |cx| {
            if let Some(e) = start_err.take() {
                return std::task::Poll::Ready(Some(Err(e)));
            }
            match rx.as_mut() {
                Some(rx) => rx.poll_recv(cx),
                None => std::task::Poll::Ready(None),
            }
        })
    }

    /// Calls `visit` on a blocking thread with every audit record from `from_seq` on, in
    /// order and decoded in place (text borrowed from SQLite's row, nothing allocated), then
    /// once with `None` at the end; `visit` returning `false` stops the scan early. One read
    /// transaction, like [`Store::audit_stream`]. This is verification's path: what `visit`
    /// does with a record (write its canonical bytes) runs beside the caller's own work.
    pub async fn audit_scan<F>(&self, from_seq: u64, visit: F) -> Result<(), StoreError>
    where
        F: for<'r> FnMut(Option<RecordView<'r>>) -> bool + Send + 'static,
    {
        super::raw_audit::audit_scan(self.pool(), to_i64(from_seq, "seq")?, visit).await
    }

    /// One audit record by sequence number.
    pub async fn audit_record(&self, seq: u64) -> Result<Option<AuditRecord>, StoreError> {
        sqlx::query(&format!("SELECT {AUDIT_COLUMNS} FROM audit_records WHERE seq = ?"))
            .bind(to_i64(seq, "seq")?)
            .fetch_optional(self.pool())
            .await
            .map_err(db_err("reading an audit record"))?
            .as_ref()
            .map(decode_audit)
            .transpose()
    }

    /// The stored records per UTC day, oldest first: what checkpoints and purge plans need.
    pub async fn audit_days(&self) -> Result<Vec<DaySummary>, StoreError> {
        let rows = sqlx::query(AUDIT_DAYS).fetch_all(self.pool()).await.map_err(db_err("summarising audit days"))?;
        rows.iter()
            .map(|r| {
                Ok(DaySummary {
                    day: decode_day(get(r, 0)?)?,
                    first_seq: u64_col(r, 1, "seq")?,
                    last_seq: u64_col(r, 2, "seq")?,
                    count: u64_col(r, 3, "count")?,
                })
            })
            .collect()
    }

    /// Every stored checkpoint, oldest day first.
    pub async fn checkpoints(&self) -> Result<Vec<Checkpoint>, StoreError> {
        sqlx::query(
            "SELECT day, last_seq, last_hash, record_count, created_at, key_id, signature FROM audit_checkpoints \
             ORDER BY day",
        )
        .fetch_all(self.pool())
        .await
        .map_err(db_err("reading checkpoints"))?
        .iter()
        .map(decode_checkpoint)
        .collect()
    }

    /// Recorded rule decisions, oldest first: of one conversation, or all (at most `limit`).
    pub async fn rule_fires(&self, conversation_id: Option<Uuid>, limit: u32) -> Result<Vec<RuleFireRow>, StoreError> {
        let rows = match conversation_id {
            Some(c) => sqlx::query(
                "SELECT conversation_id, rule_id, outcome, injection_id, at FROM rule_fires \
                 WHERE conversation_id = ? ORDER BY id LIMIT ?",
            )
            .bind(c.hyphenated().to_string())
            .bind(i64::from(limit)),
            None => sqlx::query(
                "SELECT conversation_id, rule_id, outcome, injection_id, at FROM rule_fires ORDER BY id LIMIT ?",
            )
            .bind(i64::from(limit)),
        }
        .fetch_all(self.pool())
        .await
        .map_err(db_err("reading rule decisions"))?;
        let uuid = |s: String| {
            Uuid::parse_str(&s).map_err(|e| StoreError::Corrupt(format!("rule_fires holds a bad uuid {s:?}: {e}")))
        };
        rows.iter()
            .map(|r| {
                Ok(RuleFireRow {
                    conversation_id: uuid(get(r, 0)?)?,
                    rule_id: get(r, 1)?,
                    outcome: get(r, 2)?,
                    injection_id: get::<Option<String>>(r, 3)?.map(uuid).transpose()?,
                    at: get(r, 4)?,
                })
            })
            .collect()
    }

    /// Every day purged by retention, oldest first.
    pub async fn purges(&self) -> Result<Vec<PurgeRecord>, StoreError> {
        let rows =
            sqlx::query("SELECT day, first_seq, last_seq, record_count, purged_at FROM audit_purges ORDER BY day")
                .fetch_all(self.pool())
                .await
                .map_err(db_err("reading purges"))?;
        rows.iter()
            .map(|r| {
                Ok(PurgeRecord {
                    day: decode_day(get(r, 0)?)?,
                    first_seq: u64_col(r, 1, "seq")?,
                    last_seq: u64_col(r, 2, "seq")?,
                    record_count: u64_col(r, 3, "count")?,
                    purged_at: get(r, 4)?,
                })
            })
            .collect()
    }

    /// The answer first given to this key, if it is younger than 24 h at `now`.
    pub async fn idempotency_get(
        &self,
        api_key_id: &str,
        key: &str,
        now: i64,
    ) -> Result<Option<IdempotencyRow>, StoreError> {
        let row = sqlx::query(
            "SELECT api_key_id, key, request_hash, status_code, response_body, injection_id, created_at \
             FROM idempotency_keys WHERE api_key_id = ? AND key = ? AND created_at > ?",
        )
        .bind(api_key_id)
        .bind(key)
        .bind(now.saturating_sub(IDEMPOTENCY_TTL_MS))
        .fetch_optional(self.pool())
        .await
        .map_err(db_err("reading an idempotency key"))?;
        let Some(r) = row else { return Ok(None) };
        let status: i64 = get(&r, 3)?;
        let injection_id = get::<Option<&str>>(&r, 5)?
            .map(|s| Uuid::parse_str(s).map_err(|_| corrupt(format!("stored id {s:?} is not a UUID"))))
            .transpose()?;
        Ok(Some(IdempotencyRow {
            api_key_id: get(&r, 0)?,
            key: get(&r, 1)?,
            request_hash: get(&r, 2)?,
            status_code: u16::try_from(status).map_err(|_| corrupt(format!("stored HTTP status {status}")))?,
            response_body: Bytes::from(get::<Vec<u8>>(&r, 4)?),
            injection_id,
            created_at: get(&r, 6)?,
        }))
    }

    /// The prompt catalogue, in the order entries were first stored.
    pub async fn prompts_all(&self) -> Result<Vec<CatalogueEntry>, StoreError> {
        let rows = sqlx::query("SELECT id, name, content, tags FROM prompts ORDER BY rowid")
            .fetch_all(self.pool())
            .await
            .map_err(db_err("reading the prompt catalogue"))?;
        rows.iter()
            .map(|r| {
                let id = text_uuid(r, 0)?;
                let content = decode_content(get(r, 2)?).map_err(|e| corrupt(format!("prompt {id}: {e}")))?;
                let tags: Vec<String> = serde_json::from_str(get(r, 3)?)
                    .map_err(|e| corrupt(format!("tags of prompt {id} are not a list of strings: {e}")))?;
                Ok(CatalogueEntry { id, name: get(r, 1)?, content, tags })
            })
            .collect()
    }

    /// Where the committed audit chain ends.
    pub async fn audit_head(&self) -> Result<AuditHead, StoreError> {
        let mut conn = self.pool().acquire().await.map_err(db_err("reading the audit head"))?;
        load_head(&mut conn).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Store, StoreOptions};

    /// Every hot read is served by an index (never a full scan of a growing table).
    #[tokio::test]
    async fn hot_reads_use_their_indexes() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("plan.db"), StoreOptions::default()).await.unwrap();
        // (query, index it must use, whether a sort step is acceptable)
        let cases = [
            (format!("SELECT {INJECTION_COLUMNS} {CONVERSATION_PROMPTS}"), "injections_live_by_conversation", true),
            // The live partial index holds exactly the recovery set (migration 0005).
            (format!("SELECT {INJECTION_COLUMNS} {RECOVERY}"), "injections_live_by_conversation", true),
            (format!("SELECT {AUDIT_COLUMNS} {TIMELINE}"), "audit_records_injection", false),
            (format!("SELECT {OUTBOX_COLUMNS} {OUTBOX_DUE}"), "outbox_due (state=? AND next_attempt_at<?)", false),
            (AUDIT_DAYS.to_owned(), "COVERING INDEX audit_records_day", false),
            (OUTBOX_STATS.to_owned(), "COVERING INDEX outbox_due", false),
            (format!("SELECT {OUTBOX_COLUMNS} {OUTBOX_BY_STATE}"), "outbox_due (state=?)", true),
            ("SELECT status FROM injections WHERE id = ?".to_owned(), "sqlite_autoindex_injections_1", false),
        ];
        for (sql, want, sort_ok) in cases {
            let plan: Vec<(i64, i64, i64, String)> =
                sqlx::query_as(&format!("EXPLAIN QUERY PLAN {sql}")).fetch_all(store.pool()).await.unwrap();
            let text: Vec<&str> = plan.iter().map(|p| p.3.as_str()).collect();
            assert!(text.iter().any(|t| t.contains(want)), "{sql}\n=> {text:?}");
            let table_scan = |t: &&str| t.starts_with("SCAN ") && !t.contains("INDEX") && *t != "SCAN CONSTANT ROW";
            assert!(!text.iter().any(table_scan), "full scan: {sql}\n=> {text:?}");
            assert!(sort_ok || !text.iter().any(|t| t.contains("TEMP B-TREE")), "sort: {sql}\n=> {text:?}");
            // The backlog figures read the index alone, never the rows (migration 0005).
            if sql == OUTBOX_STATS {
                let searches = text.iter().filter(|t| t.starts_with("SEARCH "));
                assert!(searches.clone().count() == 5, "{sql}\n=> {text:?}");
                assert!(searches.into_iter().all(|t| t.contains("COVERING INDEX outbox_due")), "{sql}\n=> {text:?}");
            }
        }
        store.close().await.unwrap();
    }
}

/// The column [`Store::adoption_cells`](super::Store::adoption_cells) groups by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdoptionDimension {
    Prompt,
    Rule,
    Queue,
    Agent,
}

/// One GROUP BY row of [`Store::adoption_cells`](super::Store::adoption_cells).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdoptionCell {
    pub key: Option<String>,
    pub day: i64,
    pub kind: EngagementKind,
    pub detail: Option<i64>,
    pub count: u64,
}
