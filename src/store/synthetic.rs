//! Synthetic engagement data for benchmarks and load trials of the adoption report: bulk
//! seeding in one statement, and a bare engagement-event writer to price the rollup. Kept here
//! because the store is the one home of the project's SQL.

use std::path::Path;

use sqlx::sqlite::SqliteConnection;
use sqlx::Connection;

use super::model::EngagementRow;
use super::{db_err, rollup, Store, StoreError, StoreOptions};

/// What [`seed_engagements`] generates: `events` rows spread evenly over `span_ms` from
/// `start_ms`, three per injection on average (shown, then viewed, then by a hash of the
/// injection clicked, dismissed, expired or feedback); 50 prompts, 20 rules (none on a third),
/// 12 queues, 200 agents (missing on a fifth of the rows). Deterministic.
#[derive(Debug, Clone, Copy)]
pub struct SyntheticEngagements {
    pub events: i64,
    pub start_ms: i64,
    pub span_ms: i64,
}

/// Creates the database at `path` (migrations applied) if needed, fills `engagement_events`
/// with `spec` in ONE statement with syncs off (this is test data: speed matters, durability of
/// the seed does not), then rebuilds the rollup from the events. Run it while no service has
/// the database open. Returns the rollup's row count.
pub async fn seed_engagements(path: &Path, spec: SyntheticEngagements) -> Result<u64, StoreError> {
    if spec.events <= 0 || spec.span_ms <= 0 {
        return Err(StoreError::Invalid(format!(
            "synthetic engagements need events > 0 and span_ms > 0 (got {} and {})",
            spec.events, spec.span_ms
        )));
    }
    Store::open(path, StoreOptions::default()).await?.close().await?;
    let mut conn = rollup::maintenance_connection(path, "seeding synthetic engagement events").await?;
    for pragma in ["PRAGMA journal_mode = WAL", "PRAGMA synchronous = OFF"] {
        sqlx::query(pragma).execute(&mut conn).await.map_err(db_err("seeding synthetic engagement events"))?;
    }
    // Numbers only are interpolated (i64 fields), so the statement text cannot be injected.
    let sql = format!(
        "WITH RECURSIVE s(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM s WHERE i < {last}), \
         r AS (SELECT i, i / 3 AS inj, i % 3 AS step, (i / 3) * 2654435761 % 1000003 AS h FROM s) \
         INSERT INTO engagement_events (injection_id, conversation_id, prompt_id, rule_id, queue_id, agent_id, \
           kind, at, shown_at, rating) \
         SELECT printf('00000000-0000-4000-8000-%012d', inj), printf('00000000-0000-4000-9000-%012d', inj / 4), \
           printf('00000000-0000-4000-a000-%012d', h % 50), CASE WHEN h % 3 = 0 THEN NULL ELSE 'rule-' || (h % 20) END, \
           'queue-' || (h % 12), CASE WHEN (h + step) % 5 = 0 THEN NULL ELSE 'agent-' || (h % 200) END, \
           CASE step WHEN 0 THEN 'shown' WHEN 1 THEN 'viewed' \
             ELSE CASE h % 4 WHEN 0 THEN 'clicked' WHEN 1 THEN 'dismissed' WHEN 2 THEN 'expired' ELSE 'feedback' END END, \
           {t0} + inj * 3 * {span} / {n} + CASE step WHEN 0 THEN 0 WHEN 1 THEN 1000 ELSE 500 + (h % 9000) END, \
           {t0} + inj * 3 * {span} / {n}, CASE WHEN step = 2 AND h % 4 = 3 THEN CASE WHEN h % 2 = 0 THEN 1 ELSE -1 END END \
         FROM r",
        last = spec.events - 1,
        t0 = spec.start_ms,
        span = spec.span_ms,
        n = spec.events,
    );
    sqlx::query(&sql).execute(&mut conn).await.map_err(db_err("seeding synthetic engagement events"))?;
    conn.close().await.map_err(db_err("seeding synthetic engagement events"))?;
    rollup::rebuild(path).await
}

/// A connection that writes engagement events the way the writer does, outside the service:
/// with or without the rollup's upserts, so a benchmark can price the rollup per batch.
pub struct EngagementWriter {
    conn: SqliteConnection,
}

impl EngagementWriter {
    /// Creates the database at `path` if needed and opens it as the store does (WAL,
    /// `synchronous=NORMAL` for this measurement connection).
    pub async fn open(path: &Path) -> Result<EngagementWriter, StoreError> {
        Store::open(path, StoreOptions::default()).await?.close().await?;
        let mut conn = rollup::maintenance_connection(path, "opening the engagement writer").await?;
        for pragma in ["PRAGMA journal_mode = WAL", "PRAGMA synchronous = NORMAL"] {
            sqlx::query(pragma).execute(&mut conn).await.map_err(db_err("opening the engagement writer"))?;
        }
        Ok(EngagementWriter { conn })
    }

    /// Commits `rows` in one transaction: the events, and the rollup's upserts when
    /// `with_rollup` (as the service's writer always does).
    pub async fn commit(&mut self, rows: &[EngagementRow], with_rollup: bool) -> Result<(), StoreError> {
        if rows.is_empty() {
            return Ok(());
        }
        let mut tx = self.conn.begin().await.map_err(db_err("committing engagement events"))?;
        let refs: Vec<&EngagementRow> = rows.iter().collect();
        if with_rollup {
            rollup::add_events(&mut tx, &refs).await?;
        }
        super::ops::insert_engagements(&mut tx, &refs).await?;
        tx.commit().await.map_err(db_err("committing engagement events"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{EngagementKind, Store};
    use uuid::Uuid;

    #[tokio::test]
    async fn seeded_events_are_counted_and_rolled_up() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("seed.db");
        let t0 = 1_772_323_200_000;
        let cells = seed_engagements(&path, SyntheticEngagements { events: 3_000, start_ms: t0, span_ms: 86_400_000 })
            .await
            .unwrap();
        assert!(cells > 0);
        let store = Store::open(&path, StoreOptions::default()).await.unwrap();
        assert_eq!(store.engagement_count(t0, t0 + 2 * 86_400_000).await.unwrap(), 3_000);
        store.close().await.unwrap();
        let bad = seed_engagements(&path, SyntheticEngagements { events: 0, start_ms: t0, span_ms: 1 }).await;
        assert!(matches!(bad, Err(StoreError::Invalid(_))), "{bad:?}");
    }

    #[tokio::test]
    async fn the_writer_commits_events_with_and_without_the_rollup() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.db");
        let mut w = EngagementWriter::open(&path).await.unwrap();
        let row = |i: u128, at: i64| EngagementRow {
            injection_id: Uuid::from_u128(i),
            conversation_id: Uuid::from_u128(1),
            prompt_id: Uuid::from_u128(2),
            rule_id: None,
            queue_id: Some("q".into()),
            agent_id: Some("it's \"quoted\"".into()),
            kind: EngagementKind::Shown,
            at,
            shown_at: Some(at),
            rating: None,
        };
        w.commit(&[row(1, 1_000), row(2, 2_000)], true).await.unwrap();
        w.commit(&[row(3, 3_000)], false).await.unwrap();
        w.commit(&[], true).await.unwrap();
        drop(w);
        let store = Store::open(&path, StoreOptions::default()).await.unwrap();
        assert_eq!(store.engagement_count(0, 10_000).await.unwrap(), 3);
        store.close().await.unwrap();
    }
}
