//! Adoption over many engagement events (issue 6: 10,000,000 events, goal under 2 s),
//! each path beside the baselines measured in the same run on the same database:
//! `SELECT count(*)` over the interval (the floor of any scan), the report from the
//! engagement rollup (what the CLI and API run), the earlier SQL GROUP BY scan and the
//! reference fold streaming rows out of SQLite (both over one day of events: they take
//! tens of seconds over all of them), and the writer's cost of keeping the rollup.
//!
//! Run: `cargo bench --bench adoption`. `GC_ASSIST_BENCH_ADOPTION_ROWS` sets the event count
//! (default 10,000,000); the database is built once per run in a temporary directory
//! (about 2.5 GB at 10 M rows) and removed at the end: the raw events by one SQL statement,
//! then the rollup rebuilt from them (the migration's backfill), each timed on stderr.

use std::path::PathBuf;
use std::sync::OnceLock;

use divan::{black_box, Bencher};
use gc_assist::adoption::{self, metrics, AdoptionQuery, GroupBy};
use gc_assist::store::synthetic::{self, EngagementWriter, SyntheticEngagements};
use gc_assist::store::{EngagementKind, EngagementRow, Store, StoreOptions};
use uuid::Uuid;

/// The binary's allocator (src/main.rs), so the bench measures what production runs.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// 2026-03-01T00:00:00Z; events spread over 30 days from here.
const T0: i64 = 1_772_323_200_000;
const SPAN_MS: i64 = 30 * 86_400_000;

struct Fixture {
    rt: tokio::runtime::Runtime,
    store: Store,
    dir: PathBuf,
    rows: i64,
}

static FIXTURE: OnceLock<Fixture> = OnceLock::new();

fn main() {
    divan::main();
    if let Some(f) = FIXTURE.get() {
        let _ = f.rt.block_on(f.store.close());
        let _ = std::fs::remove_dir_all(&f.dir);
    }
}

fn rows() -> i64 {
    std::env::var("GC_ASSIST_BENCH_ADOPTION_ROWS").ok().and_then(|s| s.parse().ok()).unwrap_or(10_000_000)
}

/// Shown, then (by a hash of the injection) viewed / clicked / dismissed / expired, three
/// rows per injection on average; 50 prompts, 200 agents (missing on a fifth of the rows),
/// 12 queues, 20 rules ([`synthetic::seed_engagements`]: one SQL statement, then the
/// rollup rebuilt from the events); seeding is not what is measured.
fn fixture() -> &'static Fixture {
    FIXTURE.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let dir = tempfile::Builder::new().prefix("gc-assist-adoption-bench").tempdir().unwrap().keep();
        let path = dir.join("adoption.db");
        let n = rows();
        let store = rt.block_on(async {
            let started = std::time::Instant::now();
            let spec = SyntheticEngagements { events: n, start_ms: T0, span_ms: SPAN_MS };
            let cells = synthetic::seed_engagements(&path, spec).await.unwrap();
            eprintln!(
                "seeded {n} engagement events and rebuilt the rollup ({cells} rows) in {:.1} s",
                started.elapsed().as_secs_f64()
            );
            Store::open(&path, StoreOptions::default()).await.unwrap()
        });
        Fixture { rt, store, dir, rows: n }
    })
}

fn query(group_by: Vec<GroupBy>) -> AdoptionQuery {
    let utc = adoption::parse_tz("Z").unwrap();
    AdoptionQuery::new(T0, T0 + SPAN_MS + 86_400_000, utc, group_by).unwrap()
}

#[divan::bench(name = "baseline: SELECT count(*) over the interval", sample_count = 3, sample_size = 1)]
fn baseline_count(b: Bencher) {
    let f = fixture();
    b.bench(|| {
        let n = f.rt.block_on(f.store.engagement_count(T0, T0 + SPAN_MS + 86_400_000)).unwrap();
        assert_eq!(n as i64, f.rows);
        black_box(n)
    });
}

fn event_total(r: &adoption::AdoptionReport) -> i64 {
    let t = &r.totals;
    (t.shown + t.viewed + t.clicked + t.dismissed + t.expired + t.feedback) as i64
}

/// The report from the rollup over all events: whole buckets only, then with partial
/// buckets at both ends (raw rows folded for 2 × 15 min less 10 min).
#[divan::bench(
    name = "rollup (what the CLI and API run): totals + days",
    args = ["none", "prompt", "agent", "day", "prompt,rule,queue,agent,day", "agent, partial edges"],
    sample_count = 5,
    sample_size = 1
)]
fn rollup_path(b: Bencher, by: &str) {
    let f = fixture();
    let edges = by.ends_with("partial edges");
    let by = by.trim_end_matches(", partial edges");
    let g = if by == "none" { Vec::new() } else { GroupBy::parse_list(by).unwrap() };
    let mut q = query(g);
    if edges {
        q.from += 7 * 60_000;
        q.to = T0 + SPAN_MS - 3 * 60_000;
    }
    b.bench(|| {
        let r = f.rt.block_on(adoption::compute(&f.store, &q)).unwrap();
        if !edges {
            assert_eq!(event_total(&r), f.rows);
        }
        black_box(r)
    });
}

/// One day of events (a thirtieth of them).
fn one_day(group_by: Vec<GroupBy>) -> AdoptionQuery {
    let utc = adoption::parse_tz("Z").unwrap();
    AdoptionQuery::new(T0 + 86_400_000, T0 + 2 * 86_400_000, utc, group_by).unwrap()
}

#[divan::bench(name = "baseline: SELECT count(*) over one day", sample_count = 3, sample_size = 1)]
fn baseline_count_day(b: Bencher) {
    let f = fixture();
    b.bench(|| black_box(f.rt.block_on(f.store.engagement_count(T0 + 86_400_000, T0 + 2 * 86_400_000)).unwrap()));
}

#[divan::bench(name = "SQL GROUP BY scan (the earlier path) over one day", args = ["prompt", "agent"], sample_count = 3, sample_size = 1)]
fn scan_path(b: Bencher, by: &str) {
    let f = fixture();
    let q = one_day(GroupBy::parse_list(by).unwrap());
    b.bench(|| black_box(f.rt.block_on(adoption::compute_by_scan(&f.store, &q)).unwrap()));
}

#[divan::bench(name = "rollup over one day", args = ["prompt", "agent"], sample_count = 3, sample_size = 1)]
fn rollup_day(b: Bencher, by: &str) {
    let f = fixture();
    let q = one_day(GroupBy::parse_list(by).unwrap());
    b.bench(|| black_box(f.rt.block_on(adoption::compute(&f.store, &q)).unwrap()));
}

#[divan::bench(name = "reference fold streamed from SQLite over one day, by prompt", sample_count = 1, sample_size = 1)]
fn fold_streamed(b: Bencher) {
    let f = fixture();
    let q = one_day(vec![GroupBy::Prompt]);
    b.bench(|| black_box(f.rt.block_on(adoption::compute_by_fold(&f.store, &q)).unwrap()));
}

/// The fold alone on rows already in memory (1,000,000 of them: 10 M would need ~2 GB),
/// to separate the fold's cost from reading rows out of SQLite.
#[divan::bench(name = "reference fold over 1,000,000 in-memory rows, by prompt", sample_count = 3, sample_size = 1)]
fn fold_in_memory(b: Bencher) {
    let q = query(vec![GroupBy::Prompt]);
    let kinds = EngagementKind::ALL;
    let rows: Vec<EngagementRow> = (0..1_000_000u64)
        .map(|i| {
            let h = (i / 3).wrapping_mul(2_654_435_761) % 1_000_003;
            let shown = T0 + (i / 3) as i64 * 1000;
            EngagementRow {
                injection_id: Uuid::from_u128(u128::from(i / 3)),
                conversation_id: Uuid::from_u128(u128::from(i / 12)),
                prompt_id: Uuid::from_u128(u128::from(h % 50)),
                rule_id: None,
                queue_id: Some(format!("queue-{}", h % 12)),
                agent_id: Some(format!("agent-{}", h % 200)),
                kind: kinds[(i % 3) as usize * 2 % 6],
                at: shown + (i % 3) as i64 * 700,
                shown_at: Some(shown),
                rating: None,
            }
        })
        .collect();
    b.bench(|| black_box(metrics::fold(&q, rows.iter().cloned())));
}

/// Engagement events like the writer's: shown, then clicked 1.5 s later, spread over prompts
/// and agents.
fn writer_rows(n: usize, offset: i64) -> Vec<EngagementRow> {
    (0..n as i64)
        .map(|i| {
            let inj = offset + i / 2;
            let shown = T0 + inj * 1000;
            EngagementRow {
                injection_id: Uuid::from_u128(inj as u128),
                conversation_id: Uuid::from_u128(inj as u128 / 4),
                prompt_id: Uuid::from_u128((inj % 50) as u128),
                rule_id: Some(format!("rule-{}", inj % 20)),
                queue_id: Some(format!("queue-{}", inj % 12)),
                agent_id: Some(format!("agent-{}", inj % 200)),
                kind: if i % 2 == 0 { EngagementKind::Shown } else { EngagementKind::Clicked },
                at: shown + (i % 2) * 1500,
                shown_at: Some(shown),
                rating: None,
            }
        })
        .collect()
}

/// The writer's cost of the rollup: committing batches of engagement events on a database
/// of their own, with only the events' INSERT (as before the rollup) and with the rollup's
/// upserts too (as the writer now runs), each batch one transaction (WAL, synchronous NORMAL
/// as the store opens it).
#[divan::bench(
    name = "writer: commit a batch of engagement events",
    args = ["1 event, events only", "1 event, with rollup", "100 events, events only", "100 events, with rollup"],
    sample_count = 5,
    sample_size = 50
)]
fn writer_cost(b: Bencher, case: &str) {
    let f = fixture();
    let n: usize = if case.starts_with("100") { 100 } else { 1 };
    let with_rollup = case.ends_with("with rollup");
    let path = f.dir.join(format!("writer-{}.db", case.replace([' ', ','], "-")));
    let mut writer = f.rt.block_on(EngagementWriter::open(&path)).unwrap();
    let mut next = 0i64;
    b.bench_local(|| {
        let rows = writer_rows(n, next);
        next += n as i64;
        f.rt.block_on(writer.commit(&rows, with_rollup)).unwrap();
    });
}
