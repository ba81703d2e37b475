//! The engagement rollup (migration 0004): adoption counts per 15-minute UTC bucket and
//! dimension, kept by the writer in the same transaction as the events, so an adoption report
//! reads (buckets × groups) rows instead of every event.
//!
//! - Buckets are 15 minutes (floor of `at`): every fixed UTC offset is a multiple of 15 min,
//!   so any offset's day boundaries fall on bucket edges.
//! - One row per (dimension, bucket, key): total, prompt, rule, queue, agent. A report groups
//!   by each dimension on its own; the (prompt, rule, queue, agent) combinations would hold
//!   nearly as many rows as the events. An unknown or empty rule, queue or agent is key `""`.
//! - Time to click is a log-scale histogram ([`click_slot`]): exact below 32 ms, then 16
//!   slots per doubling, so a slot's [`slot_value`] is within 3.2 % of every time in it.

use std::collections::HashMap;
use std::path::Path;

use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};
use sqlx::{ConnectOptions, Connection, Row};

use super::model::{EngagementKind, EngagementRow};
use super::{db_err, StoreError};

/// The bucket width: 15 minutes.
pub const BUCKET_MS: i64 = 900_000;
/// "Dismissed to clear the screen": within this long of being shown.
pub const QUICK_DISMISS_MS: i64 = 2_000;
/// Slots below this are one millisecond each.
const EXACT_SLOTS: i64 = 32;
/// Slots per doubling above the exact ones (4 bits of mantissa).
const SUB_SLOTS: i64 = 16;
/// Slots in all: enough for any non-negative i64.
pub const CLICK_SLOTS: u16 = 960;
/// The relative error bound of [`slot_value`] (documented in README and the API).
pub const CLICK_RELATIVE_ERROR: f64 = 1.0 / 32.0;

/// The start (epoch ms) of the bucket holding `at`.
pub fn bucket_of(at: i64) -> i64 {
    at - at.rem_euclid(BUCKET_MS)
}

/// The histogram slot of a time to click (ms, negative counted as 0): `ms` itself below 32;
/// above, 16 slots per power of two by the four bits after the leading one.
pub fn click_slot(ms: i64) -> u16 {
    let v = ms.max(0);
    if v < EXACT_SLOTS {
        return v as u16;
    }
    let e = 63 - i64::from(v.leading_zeros()); // floor(log2 v), >= 5
    let sub = (v >> (e - 4)) & (SUB_SLOTS - 1);
    (EXACT_SLOTS + SUB_SLOTS * (e - 5) + sub) as u16
}

/// The smallest time (ms) in `slot` (the `engagement_click_slots.lo` column).
pub fn slot_lo(slot: u16) -> i64 {
    let s = i64::from(slot.min(CLICK_SLOTS - 1));
    if s < EXACT_SLOTS {
        return s;
    }
    (SUB_SLOTS + (s - EXACT_SLOTS) % SUB_SLOTS) << (1 + (s - EXACT_SLOTS) / SUB_SLOTS)
}

/// The time a slot stands for: the middle of its range (exact below 32 ms). Every time in
/// the slot is within [`CLICK_RELATIVE_ERROR`] of it.
pub fn slot_value(slot: u16) -> i64 {
    let lo = slot_lo(slot);
    if lo < EXACT_SLOTS {
        return lo;
    }
    let width = 1i64 << (1 + (i64::from(slot) - EXACT_SLOTS) / SUB_SLOTS);
    lo + width / 2
}

/// A rollup dimension (the `dim` column).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RollupDim {
    Total = 0,
    Prompt = 1,
    Rule = 2,
    Queue = 3,
    Agent = 4,
}

impl RollupDim {
    pub const ALL: [RollupDim; 5] =
        [RollupDim::Total, RollupDim::Prompt, RollupDim::Rule, RollupDim::Queue, RollupDim::Agent];

    /// The row's key in this dimension (`""` for the total and for an unknown id).
    fn key(self, e: &EngagementRow) -> String {
        let known = |v: &Option<String>| v.as_deref().unwrap_or("").to_string();
        match self {
            RollupDim::Total => String::new(),
            RollupDim::Prompt => e.prompt_id.hyphenated().to_string(),
            RollupDim::Rule => known(&e.rule_id),
            RollupDim::Queue => known(&e.queue_id),
            RollupDim::Agent => known(&e.agent_id),
        }
    }
}

/// The counts of one rollup row (one dimension's key in one bucket).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RollupCounts {
    /// Indexed like [`EngagementKind::ALL`].
    pub kinds: [u64; 6],
    pub quick_dismissed: u64,
    pub feedback_up: u64,
    pub feedback_down: u64,
}

impl RollupCounts {
    fn add(&mut self, e: &EngagementRow) {
        let i = EngagementKind::ALL.iter().position(|k| *k == e.kind).unwrap_or(0);
        self.kinds[i] += 1;
        let since_shown = e.shown_at.map(|s| e.at - s).filter(|d| *d >= 0);
        match e.kind {
            EngagementKind::Dismissed if since_shown.is_some_and(|d| d <= QUICK_DISMISS_MS) => {
                self.quick_dismissed += 1
            }
            EngagementKind::Feedback => match e.rating {
                Some(r) if r > 0 => self.feedback_up += 1,
                Some(r) if r < 0 => self.feedback_down += 1,
                _ => {}
            },
            _ => {}
        }
    }
}

/// Rollup rows summed over an interval's buckets for one key (or one day), with the
/// click-time histogram (slot, count).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RollupCell {
    pub key: String,
    pub counts: RollupCounts,
    pub clicks: Vec<(u16, u64)>,
}

type CellKey = (RollupDim, i64, String);

/// A batch's events summed per rollup row: what the writer adds in one upsert per row.
#[derive(Debug, Default)]
pub(super) struct Delta {
    cells: HashMap<CellKey, RollupCounts>,
    clicks: HashMap<(CellKey, u16), u64>,
}

impl Delta {
    pub fn of<'a>(rows: impl IntoIterator<Item = &'a EngagementRow>) -> Delta {
        let mut d = Delta::default();
        for e in rows {
            let bucket = bucket_of(e.at);
            let slot = match (e.kind, e.shown_at) {
                (EngagementKind::Clicked, Some(s)) if e.at >= s => Some(click_slot(e.at - s)),
                _ => None,
            };
            for dim in RollupDim::ALL {
                let key = (dim, bucket, dim.key(e));
                if let Some(slot) = slot {
                    *d.clicks.entry((key.clone(), slot)).or_default() += 1;
                }
                d.cells.entry(key).or_default().add(e);
            }
        }
        d
    }

    /// Each cell's increments: (dimension, bucket, key, counts).
    pub fn cells(&self) -> impl Iterator<Item = (RollupDim, i64, &str, &RollupCounts)> {
        self.cells.iter().map(|((dim, bucket, key), c)| (*dim, *bucket, key.as_str(), c))
    }

    /// Each click-time slot's increment: (dimension, bucket, key, slot, n).
    pub fn clicks(&self) -> impl Iterator<Item = (RollupDim, i64, &str, u16, u64)> {
        self.clicks.iter().map(|(((dim, bucket, key), slot), n)| (*dim, *bucket, key.as_str(), *slot, *n))
    }
}

/// Rows per upsert statement (12 binds each, well under SQLite's bound-parameter limit).
const CHUNK: usize = 64;

pub(super) const UPSERT_CELLS: (&str, &str) = (
    "INSERT INTO engagement_rollup (dim, bucket, key, shown, viewed, clicked, dismissed, expired, feedback, \
     quick_dismissed, feedback_up, feedback_down) VALUES ",
    " ON CONFLICT (dim, key, bucket) DO UPDATE SET shown = shown + excluded.shown, \
     viewed = viewed + excluded.viewed, clicked = clicked + excluded.clicked, \
     dismissed = dismissed + excluded.dismissed, expired = expired + excluded.expired, \
     feedback = feedback + excluded.feedback, quick_dismissed = quick_dismissed + excluded.quick_dismissed, \
     feedback_up = feedback_up + excluded.feedback_up, feedback_down = feedback_down + excluded.feedback_down",
);

pub(super) const UPSERT_CLICKS: (&str, &str) = (
    "INSERT INTO engagement_rollup_clicks (dim, bucket, key, slot, n) VALUES ",
    " ON CONFLICT (dim, key, slot, bucket) DO UPDATE SET n = n + excluded.n",
);

fn values(cols: usize, rows: usize) -> String {
    let one = format!("({})", vec!["?"; cols].join(", "));
    vec![one; rows].join(", ")
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Adds `rows` to the rollup on `conn`, inside the caller's transaction (the writer's, with
/// the events themselves): one upsert per touched rollup row, in multi-row statements.
pub async fn add_events(conn: &mut SqliteConnection, rows: &[&EngagementRow]) -> Result<(), StoreError> {
    if rows.is_empty() {
        return Ok(());
    }
    let d = Delta::of(rows.iter().copied());
    let cells: Vec<(&CellKey, &RollupCounts)> = d.cells.iter().collect();
    for chunk in cells.chunks(CHUNK) {
        let sql = format!("{}{}{}", UPSERT_CELLS.0, values(12, chunk.len()), UPSERT_CELLS.1);
        let mut q = sqlx::query(&sql);
        for ((dim, bucket, key), c) in chunk {
            q = q.bind(*dim as i64).bind(*bucket).bind(key.as_str());
            for n in c.kinds {
                q = q.bind(to_i64(n));
            }
            q = q.bind(to_i64(c.quick_dismissed)).bind(to_i64(c.feedback_up)).bind(to_i64(c.feedback_down));
        }
        q.execute(&mut *conn).await.map_err(db_err("updating the engagement rollup"))?;
    }
    let clicks: Vec<(&(CellKey, u16), &u64)> = d.clicks.iter().collect();
    for chunk in clicks.chunks(CHUNK) {
        let sql = format!("{}{}{}", UPSERT_CLICKS.0, values(5, chunk.len()), UPSERT_CLICKS.1);
        let mut q = sqlx::query(&sql);
        for (((dim, bucket, key), slot), n) in chunk {
            q = q.bind(*dim as i64).bind(*bucket).bind(key.as_str()).bind(i64::from(*slot)).bind(to_i64(**n));
        }
        q.execute(&mut *conn).await.map_err(db_err("updating the engagement rollup's click times"))?;
    }
    Ok(())
}

/// The migration's backfill statements: everything after its `-- backfill` line.
fn backfill_sql() -> &'static str {
    const MIGRATION: &str = include_str!("../../migrations/sqlite/0004_engagement_rollup.sql");
    MIGRATION.split_once("-- backfill").map(|(_, rest)| rest).unwrap_or("")
}

/// A plain connection to the database at `path` for maintenance and benchmark seeding, which
/// run beside no service or wait for its writer (a generous busy timeout).
pub(super) async fn maintenance_connection(path: &Path, what: &'static str) -> Result<SqliteConnection, StoreError> {
    SqliteConnectOptions::new()
        .filename(path)
        .busy_timeout(std::time::Duration::from_secs(30))
        .connect()
        .await
        .map_err(db_err(what))
}

/// Rebuilds the rollup of the database at `path` from its engagement events, in one
/// transaction (what migration 0004 does on upgrade). For maintenance and benchmarks: run it
/// while no service has the database open, or it waits for the writer. Returns the rollup rows.
pub async fn rebuild(path: &Path) -> Result<u64, StoreError> {
    let mut conn = maintenance_connection(path, "opening the database to rebuild the rollup").await?;
    let mut tx = conn.begin().await.map_err(db_err("starting the rollup rebuild"))?;
    // The text after the marker starts with the rest of the marker's comment line.
    let sql = backfill_sql().split_once('\n').map(|(_, s)| s).unwrap_or("");
    sqlx::raw_sql(sql).execute(&mut *tx).await.map_err(db_err("rebuilding the engagement rollup"))?;
    let row = sqlx::query("SELECT count(*) FROM engagement_rollup")
        .fetch_one(&mut *tx)
        .await
        .map_err(db_err("counting the rollup"))?;
    let n: i64 = row.try_get(0).map_err(db_err("counting the rollup"))?;
    tx.commit().await.map_err(db_err("committing the rollup rebuild"))?;
    conn.close().await.map_err(db_err("closing the database"))?;
    Ok(u64::try_from(n).unwrap_or(0))
}

// Per key: the primary key's order (dim, key, ...), so SQLite sums each key in one pass
// without a sort (a test checks the plans).
const SUMS: &str = "sum(shown), sum(viewed), sum(clicked), sum(dismissed), sum(expired), sum(feedback), \
     sum(quick_dismissed), sum(feedback_up), sum(feedback_down)";
const BY_KEY: (&str, &str) = (
    "SELECT key, ",
    " FROM engagement_rollup WHERE dim = ?1 AND bucket >= ?2 AND bucket < ?3 GROUP BY key ORDER BY key",
);
const CLICKS_BY_KEY: &str = "SELECT key, slot, sum(n) FROM engagement_rollup_clicks \
     WHERE dim = ?1 AND bucket >= ?2 AND bucket < ?3 GROUP BY key, slot ORDER BY key, slot";
// Per day at offset ?3 (floor division): the total's buckets, a few thousand a month.
const DAY: &str = "((bucket + ?3) - (((bucket + ?3) % 86400000) + 86400000) % 86400000) / 86400000";

fn sums(row: &sqlx::sqlite::SqliteRow, first: usize) -> Result<RollupCounts, StoreError> {
    let count = |i: usize| -> Result<u64, StoreError> {
        let v: i64 = row.try_get(i).map_err(db_err("decoding a rollup row"))?;
        u64::try_from(v).map_err(|_| StoreError::Corrupt(format!("a rollup count is negative ({v})")))
    };
    let mut c = RollupCounts::default();
    for (i, k) in c.kinds.iter_mut().enumerate() {
        *k = count(first + i)?;
    }
    c.quick_dismissed = count(first + 6)?;
    c.feedback_up = count(first + 7)?;
    c.feedback_down = count(first + 8)?;
    Ok(c)
}

/// Puts each (group, slot, n) row on its cell; both lists are in group order.
fn attach_clicks<G: PartialOrd + Copy>(
    cells: &mut [(G, RollupCell)],
    clicks: impl IntoIterator<Item = (G, u16, u64)>,
) -> Result<(), StoreError> {
    let mut i = 0;
    for (g, slot, n) in clicks {
        while i < cells.len() && cells[i].0 < g {
            i += 1;
        }
        match cells.get_mut(i) {
            Some((cg, c)) if *cg == g => c.clicks.push((slot, n)),
            _ => return Err(StoreError::Corrupt("the rollup has click times for a cell it has no counts for".into())),
        }
    }
    Ok(())
}

fn slot_of(v: i64) -> Result<u16, StoreError> {
    u16::try_from(v)
        .ok()
        .filter(|s| *s < CLICK_SLOTS)
        .ok_or_else(|| StoreError::Corrupt(format!("a click-time slot {v} is out of range")))
}

fn count_of(v: i64) -> Result<u64, StoreError> {
    u64::try_from(v).map_err(|_| StoreError::Corrupt(format!("a rollup count is negative ({v})")))
}

/// The read side.
impl super::Store {
    /// One dimension's rollup summed per key over buckets `from_bucket <= bucket < to_bucket`
    /// (epoch ms, multiples of [`BUCKET_MS`]), in key order, each with its click histogram.
    pub async fn rollup_by_key(
        &self,
        dim: RollupDim,
        from_bucket: i64,
        to_bucket: i64,
    ) -> Result<Vec<RollupCell>, StoreError> {
        // One read transaction: the counts and the histograms are the same snapshot.
        let mut tx = self.inner.read.begin().await.map_err(db_err("starting a read"))?;
        let rows = sqlx::query(&format!("{}{SUMS}{}", BY_KEY.0, BY_KEY.1))
            .bind(dim as i64)
            .bind(from_bucket)
            .bind(to_bucket)
            .fetch_all(&mut *tx)
            .await
            .map_err(db_err("reading the engagement rollup"))?;
        let mut cells = Vec::with_capacity(rows.len());
        for row in &rows {
            let key: String = row.try_get(0).map_err(db_err("decoding a rollup row"))?;
            cells.push((cells.len(), RollupCell { key, counts: sums(row, 1)?, clicks: Vec::new() }));
        }
        let clicks = sqlx::query(CLICKS_BY_KEY)
            .bind(dim as i64)
            .bind(from_bucket)
            .bind(to_bucket)
            .fetch_all(&mut *tx)
            .await
            .map_err(db_err("reading the engagement rollup's click times"))?;
        // Keys compare as SQLite's binary collation does (byte order, as Rust's str).
        let mut i = 0;
        let mut by_index = Vec::with_capacity(clicks.len());
        for row in &clicks {
            let key: &str = row.try_get(0).map_err(db_err("decoding a rollup row"))?;
            while i < cells.len() && cells[i].1.key.as_str() < key {
                i += 1;
            }
            let slot = slot_of(row.try_get(1).map_err(db_err("decoding a rollup row"))?)?;
            let n = count_of(row.try_get(2).map_err(db_err("decoding a rollup row"))?)?;
            let at = if cells.get(i).is_some_and(|c| c.1.key == key) { i } else { usize::MAX };
            by_index.push((at, slot, n));
        }
        attach_clicks(&mut cells, by_index)?;
        Ok(cells.into_iter().map(|(_, c)| c).collect())
    }

    /// The total summed per day (day numbers at UTC offset `offset_ms`, a multiple of
    /// [`BUCKET_MS`]) over buckets `from_bucket <= bucket < to_bucket`, in day order.
    pub async fn rollup_by_day(
        &self,
        from_bucket: i64,
        to_bucket: i64,
        offset_ms: i64,
    ) -> Result<Vec<(i64, RollupCell)>, StoreError> {
        let mut tx = self.inner.read.begin().await.map_err(db_err("starting a read"))?;
        let rows = sqlx::query(&format!(
            "SELECT {DAY} AS d, {SUMS} FROM engagement_rollup WHERE dim = 0 AND key = '' AND bucket >= ?1 \
             AND bucket < ?2 GROUP BY d ORDER BY d"
        ))
        .bind(from_bucket)
        .bind(to_bucket)
        .bind(offset_ms)
        .fetch_all(&mut *tx)
        .await
        .map_err(db_err("reading the engagement rollup"))?;
        let mut cells = Vec::with_capacity(rows.len());
        for row in &rows {
            let day: i64 = row.try_get(0).map_err(db_err("decoding a rollup row"))?;
            cells.push((day, RollupCell { key: String::new(), counts: sums(row, 1)?, clicks: Vec::new() }));
        }
        let clicks = sqlx::query(&format!(
            "SELECT {DAY} AS d, slot, sum(n) FROM engagement_rollup_clicks WHERE dim = 0 AND key = '' \
             AND bucket >= ?1 AND bucket < ?2 GROUP BY d, slot ORDER BY d, slot"
        ))
        .bind(from_bucket)
        .bind(to_bucket)
        .bind(offset_ms)
        .fetch_all(&mut *tx)
        .await
        .map_err(db_err("reading the engagement rollup's click times"))?;
        let mut by_day = Vec::with_capacity(clicks.len());
        for row in &clicks {
            let day: i64 = row.try_get(0).map_err(db_err("decoding a rollup row"))?;
            let slot = slot_of(row.try_get(1).map_err(db_err("decoding a rollup row"))?)?;
            by_day.push((day, slot, count_of(row.try_get(2).map_err(db_err("decoding a rollup row"))?)?));
        }
        attach_clicks(&mut cells, by_day)?;
        Ok(cells)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_monotone_and_within_the_error_bound() {
        let mut last = 0;
        let check = |v: i64, last: &mut u16| {
            let s = click_slot(v);
            assert!(s >= *last && s < CLICK_SLOTS, "{v}");
            assert!(slot_lo(s) <= v && (s + 1 == CLICK_SLOTS || v < slot_lo(s + 1)), "{v} in slot {s}");
            let err = (slot_value(s) - v).abs() as f64 / (v.max(1) as f64);
            assert!(err <= CLICK_RELATIVE_ERROR, "{v}: value {} off by {err}", slot_value(s));
            *last = s;
        };
        for v in 0..200_000 {
            check(v, &mut last);
        }
        let mut v = 200_000i64;
        while v < i64::MAX / 3 {
            check(v, &mut last);
            check(v + 1, &mut last);
            v = v * 3 / 2;
        }
        assert_eq!(click_slot(i64::MAX), CLICK_SLOTS - 1);
        assert_eq!(click_slot(-5), 0);
        // The bounds the migration's table holds.
        assert_eq!((slot_lo(31), slot_lo(32), slot_lo(47), slot_lo(48)), (31, 32, 62, 64));
        assert_eq!(click_slot(10_000), 163);
    }

    #[tokio::test]
    async fn per_key_reads_sum_in_primary_key_order_without_a_sort() {
        let dir = tempfile::tempdir().unwrap();
        let store = super::super::Store::open(&dir.path().join("plan.db"), Default::default()).await.unwrap();
        for sql in [format!("{}{SUMS}{}", BY_KEY.0, BY_KEY.1), CLICKS_BY_KEY.to_string()] {
            let plan: Vec<(i64, i64, i64, String)> =
                sqlx::query_as(&format!("EXPLAIN QUERY PLAN {sql}")).fetch_all(&store.inner.read).await.unwrap();
            let text: Vec<&str> = plan.iter().map(|p| p.3.as_str()).collect();
            assert!(text.iter().any(|t| t.contains("PRIMARY KEY (dim=?)")), "{text:?}");
            assert!(!text.iter().any(|t| t.contains("TEMP B-TREE")), "{sql}: {text:?}");
        }
        // The migration's slot table is the one Rust computes.
        let slots: Vec<(i64, i64)> = sqlx::query_as("SELECT lo, slot FROM engagement_click_slots ORDER BY slot")
            .fetch_all(&store.inner.read)
            .await
            .unwrap();
        let want: Vec<(i64, i64)> = (0..CLICK_SLOTS).map(|s| (slot_lo(s), i64::from(s))).collect();
        assert_eq!(slots, want);
        store.close().await.unwrap();
    }

    fn ev(kind: EngagementKind, at: i64, shown_at: Option<i64>, agent: Option<&str>) -> EngagementRow {
        EngagementRow {
            injection_id: uuid::Uuid::from_u128(1),
            conversation_id: uuid::Uuid::from_u128(2),
            prompt_id: uuid::Uuid::from_u128(3),
            rule_id: None,
            queue_id: Some("q".into()),
            agent_id: agent.map(str::to_string),
            kind,
            at,
            shown_at,
            rating: None,
        }
    }

    #[test]
    fn a_delta_sums_per_dimension_and_merges_histograms() {
        use EngagementKind::*;
        let t = 10 * BUCKET_MS;
        let rows = [
            ev(Shown, t, Some(t), None),
            ev(Clicked, t + 1500, Some(t), Some("a")),
            ev(Clicked, t + 1510, Some(t), Some("a")),
            ev(Clicked, t + 40, Some(t + 50), Some("a")),
            ev(Dismissed, t + BUCKET_MS + 2000, Some(t + BUCKET_MS), Some("")),
        ];
        let d = Delta::of(rows.iter());
        let total = &d.cells[&(RollupDim::Total, t, String::new())];
        assert_eq!(total.kinds, [1, 0, 3, 0, 0, 0]);
        let next = &d.cells[&(RollupDim::Total, t + BUCKET_MS, String::new())];
        assert_eq!((next.kinds[3], next.quick_dismissed), (1, 1));
        // The unknown agent and the empty one share key "".
        assert_eq!(d.cells[&(RollupDim::Agent, t, String::new())].kinds[0], 1);
        assert_eq!(d.cells[&(RollupDim::Agent, t + BUCKET_MS, String::new())].kinds[3], 1);
        assert_eq!(d.cells[&(RollupDim::Agent, t, "a".into())].kinds[2], 3);
        // 1500 and 1510 ms share a slot (merged counts); the negative click time has none.
        let slot = click_slot(1500);
        assert_eq!(click_slot(1510), slot);
        assert_eq!(d.clicks[&((RollupDim::Agent, t, "a".into()), slot)], 2);
        assert_eq!(d.clicks.len(), 5);
        assert_eq!(bucket_of(-1), -BUCKET_MS);
    }
}
