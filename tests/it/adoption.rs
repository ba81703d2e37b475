//! Adoption analytics end to end: the rollup and the SQL scan against the reference fold,
//! the CLI over a real SQLite file seeded through `WriteOp::Engagement`, `GET /v1/adoption` and the
//! dashboard, Copilot job paging through the emulator with a fault mid-way and a resume,
//! and the HTML report rendered by headless Chromium.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use gc_assist::adoption::copilot::{self, CopilotOptions, Progress};
use gc_assist::adoption::metrics::{Acc, Folded};
use gc_assist::adoption::{self, parse_tz, AdoptionQuery, GroupBy};
use gc_assist::config::{ApiKeyConfig, Config};
use gc_assist::emulator::{self, EmulatorConfig};
use gc_assist::genesys::GenesysClient;
use gc_assist::injection::service::{Channels, Service, ServiceDeps};
use gc_assist::server::{self, key_hash_hex, AppState};
use gc_assist::store::{EngagementKind, EngagementRow, Store, StoreOptions, SystemClock, WriteBatch, WriteOp};
use serde_json::Value;
use uuid::Uuid;

use crate::support;

const H: i64 = 3_600_000;
/// 2026-03-02T22:30:00Z: late enough that +02:00 moves the day.
const T: i64 = 1_772_490_600_000;
const P1: &str = "00000000-0000-0000-0000-0000000000a1";
const P2: &str = "00000000-0000-0000-0000-0000000000a2";

fn ev(inj: u128, prompt: &str, agent: Option<&str>, kind: EngagementKind, at: i64, shown_at: i64) -> EngagementRow {
    EngagementRow {
        injection_id: Uuid::from_u128(inj),
        conversation_id: Uuid::from_u128(100 + inj),
        prompt_id: Uuid::parse_str(prompt).unwrap(),
        rule_id: None,
        queue_id: Some("queue-1".into()),
        agent_id: agent.map(str::to_string),
        kind,
        at,
        shown_at: Some(shown_at),
        rating: None,
    }
}

/// Five prompts shown over two days; the expected figures are worked out in the tests.
fn fixed_events() -> Vec<EngagementRow> {
    use EngagementKind::*;
    let d2 = T + 24 * H;
    let mut fb = ev(5, P1, Some("A1"), Feedback, d2 + 3000, d2);
    fb.rating = Some(1);
    vec![
        ev(1, P1, Some("A1"), Shown, T, T),
        ev(1, P1, Some("A1"), Clicked, T + 1500, T),
        ev(2, P1, Some("A1"), Shown, T, T),
        ev(2, P1, Some("A1"), Dismissed, T + 800, T),
        ev(3, P2, Some("A2"), Shown, T, T),
        ev(3, P2, Some("A2"), Expired, T + 30_000, T),
        // The agent is learnt only when the panel reports the prompt viewed.
        ev(4, P2, None, Shown, T + H, T + H),
        ev(4, P2, Some("A2"), Viewed, T + H + 1000, T + H),
        ev(4, P2, None, Clicked, T + H + 4500, T + H),
        ev(5, P1, Some("A1"), Shown, d2, d2),
        ev(5, P1, Some("A1"), Clicked, d2 + 2500, d2),
        fb,
    ]
}

async fn seed(path: &Path, rows: Vec<EngagementRow>) {
    let store = Store::open(path, StoreOptions::default()).await.unwrap();
    for chunk in rows.chunks(5000) {
        let batch = WriteBatch { ops: chunk.iter().cloned().map(WriteOp::Engagement).collect() };
        store.write(batch).await.unwrap();
    }
    store.close().await.unwrap();
}

/// A deterministic pseudo-random event set: several days, prompts, rules, queues and
/// agents, with agents and queues missing on some rows.
fn random_events(n: usize) -> Vec<EngagementRow> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut rows = Vec::new();
    let mut inj = 0u128;
    while rows.len() < n {
        inj += 1;
        let shown = T - 3 * 24 * H + (next() % (6 * 24 * H as u64)) as i64;
        let prompt = format!("00000000-0000-0000-0000-{:012x}", next() % 7);
        let agent = format!("agent-{}", next() % 5);
        let queue = format!("queue-{}", next() % 3);
        let rule = (next() % 3 != 0).then(|| format!("rule-{}", next() % 4));
        let mut base = ev(inj, &prompt, Some(&agent), EngagementKind::Shown, shown, shown);
        base.rule_id = rule;
        base.queue_id = Some(queue);
        let mut push = |kind, dt: i64, keep_agent: bool, keep_queue: bool, rating: Option<i8>| {
            let mut r = base.clone();
            r.kind = kind;
            r.at = shown + dt;
            r.rating = rating;
            if !keep_agent {
                r.agent_id = None;
            }
            if !keep_queue {
                r.queue_id = None;
            }
            rows.push(r);
        };
        let roll = next() % 100;
        push(EngagementKind::Shown, 0, roll % 4 != 0, roll % 5 != 0, None);
        if roll < 70 {
            push(EngagementKind::Viewed, 1000, true, true, None);
        }
        let dt = (next() % 9000) as i64;
        match roll % 4 {
            0 => push(EngagementKind::Clicked, dt, roll % 3 == 0, true, None),
            1 => push(EngagementKind::Dismissed, dt / 2, true, roll % 2 == 0, None),
            2 => push(EngagementKind::Expired, 30_000, true, true, None),
            _ => {}
        }
        if roll % 10 == 0 {
            push(EngagementKind::Feedback, dt + 500, true, true, Some(if roll % 20 == 0 { 1 } else { -1 }));
        }
    }
    rows
}

/// Holds the rollup path's accumulators to the reference fold's: the same groups and days,
/// every count exactly, and median and p90 time to click within the histogram's error.
pub(crate) fn assert_matches_fold(rolled: &Folded, reference: &Folded, what: &str) {
    let same = |a: &Acc, b: &Acc, at: &str| {
        assert_eq!(a.counts, b.counts, "{what}: {at}");
        assert_eq!(
            (a.quick_dismiss, a.feedback_positive, a.feedback_negative),
            (b.quick_dismiss, b.feedback_positive, b.feedback_negative),
            "{what}: {at}"
        );
        let n = |acc: &Acc| acc.click_ms.values().sum::<u64>();
        assert_eq!(n(a), n(b), "{what}: {at}: click times");
        let (fa, fb) = (a.figures(), b.figures());
        for (x, y) in [(fa.median_click_ms, fb.median_click_ms), (fa.p90_click_ms, fb.p90_click_ms)] {
            match (x, y) {
                (Some(x), Some(y)) => {
                    let err = (x - y).abs() as f64 / (y.max(1) as f64);
                    assert!(err <= adoption::CLICK_RELATIVE_ERROR, "{what}: {at}: {x} ms vs exact {y} ms");
                }
                (x, y) => assert_eq!(x, y, "{what}: {at}"),
            }
        }
    };
    same(&rolled.total, &reference.total, "total");
    assert_eq!(rolled.daily.keys().collect::<Vec<_>>(), reference.daily.keys().collect::<Vec<_>>(), "{what}: days");
    for (d, acc) in &reference.daily {
        same(&rolled.daily[d], acc, &format!("day {d}"));
    }
    assert_eq!(rolled.groups.keys().collect::<Vec<_>>(), reference.groups.keys().collect::<Vec<_>>(), "{what}");
    for (g, groups) in &reference.groups {
        let got = &rolled.groups[g];
        assert_eq!(got.keys().collect::<Vec<_>>(), groups.keys().collect::<Vec<_>>(), "{what}: {g:?} keys");
        for (k, acc) in groups {
            same(&got[k], acc, &format!("{g:?} {k}"));
        }
    }
}

#[tokio::test]
async fn rollup_and_sql_scan_equal_the_reference_fold() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.db");
    let rows = random_events(4000);
    seed(&path, rows.clone()).await;
    let store = Store::open(&path, StoreOptions::default()).await.unwrap();
    let groupings = [
        vec![],
        vec![GroupBy::Prompt],
        vec![GroupBy::Agent, GroupBy::Queue],
        vec![GroupBy::Rule, GroupBy::Day],
        GroupBy::ALL.to_vec(),
    ];
    const M: i64 = 60_000;
    let intervals = [
        // Partial buckets at both ends, and whole days.
        (T - 4 * 24 * H + 7 * M, T + 4 * 24 * H - 3 * M),
        (T - 4 * 24 * H, T + 4 * 24 * H),
        (T + 7 * M, T + 7 * H + 1),
        // Within one bucket, and across one edge without a whole bucket: folded exactly.
        (T + M, T + 10 * M),
        (T + 10 * M, T + 20 * M),
        (T - 90 * 24 * H, T - 80 * 24 * H),
    ];
    let mut with_clicks = 0;
    for tz in ["+00:00", "+02:00", "-05:30"] {
        for g in &groupings {
            for (from, to) in intervals {
                let q = AdoptionQuery::new(from, to, parse_tz(tz).unwrap(), g.clone()).unwrap();
                let what = format!("tz {tz}, groups {g:?}, [{from}, {to})");
                let reference = adoption::fold_streamed(&store, &q).await.unwrap();
                let rolled = adoption::fold_from_rollup(&store, &q).await.unwrap();
                assert_matches_fold(&rolled, &reference, &what);
                if to - from < 15 * M {
                    assert_eq!(rolled, reference, "{what}: no whole bucket, so exact");
                }
                with_clicks += usize::from(reference.total.click_ms.len() > 10);
                // The SQL scan is exact.
                let sql = adoption::fold_in_sql(&store, &q).await.unwrap();
                assert_eq!(sql, reference, "{what}");
                // And the stream is the rows in memory.
                let in_memory = adoption::metrics::fold(&q, rows.clone());
                assert_eq!(reference, in_memory, "{what}");
            }
        }
    }
    assert!(with_clicks > 40, "the intervals have clicks to rank: {with_clicks}");
    // The figures are not trivially equal: the sets have content.
    let q = AdoptionQuery::new(T - 4 * 24 * H, T + 4 * 24 * H, parse_tz("Z").unwrap(), vec![GroupBy::Agent]).unwrap();
    let r = adoption::compute(&store, &q).await.unwrap();
    assert!(r.totals.shown > 500 && r.totals.clicked > 100 && r.totals.median_click_ms.is_some(), "{:?}", r.totals);
    assert_eq!(store.engagement_count(T - 4 * 24 * H, T + 4 * 24 * H).await.unwrap() as usize, rows.len());
    let db = store.path().to_path_buf();
    store.close().await.unwrap();

    // Rebuilding the rollup from the events (what the migration does on upgrade) gives the
    // rollup the writer kept.
    let all = AdoptionQuery::new(0, T + 90 * 24 * H, parse_tz("+02:00").unwrap(), GroupBy::ALL.to_vec()).unwrap();
    let store = Store::open(&db, StoreOptions::default()).await.unwrap();
    let kept = adoption::fold_from_rollup(&store, &all).await.unwrap();
    store.close().await.unwrap();
    let rows_in_rollup = gc_assist::store::rollup::rebuild(&db).await.unwrap();
    assert!(rows_in_rollup > 1000, "{rows_in_rollup}");
    let store = Store::open(&db, StoreOptions::default()).await.unwrap();
    assert_eq!(adoption::fold_from_rollup(&store, &all).await.unwrap(), kept);
    store.close().await.unwrap();
}

fn cli(db: &Path, args: &[&str]) -> (i32, String, String) {
    let mut all = vec!["adoption"];
    all.extend_from_slice(args);
    let o = support::run(&all, &[("GC_ASSIST__STORE__PATH", db.to_str().unwrap())]);
    (o.status.code().unwrap_or(-1), support::stdout(&o), support::stderr(&o))
}

fn figure(v: &Value, name: &str) -> Value {
    v[name].clone()
}

#[tokio::test]
async fn cli_reports_hand_computed_figures() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("gc-assist.db");
    seed(&db, fixed_events()).await;
    let range = ["--from", "2026-03-01", "--to", "2026-03-05"];

    let (code, out, err) = cli(&db, &[&range[..], &["--group-by", "prompt,agent", "--json"]].concat());
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    let t = &v["totals"];
    // 5 shown; clicks after 1500, 4500, 2500 ms; one dismissal after 800 ms; one expiry.
    for (k, want) in [("shown", 5), ("viewed", 1), ("clicked", 3), ("dismissed", 1), ("expired", 1), ("feedback", 1)] {
        assert_eq!(figure(t, k), want, "{k}");
    }
    assert_eq!(t["adoptionRate"], 0.6);
    assert_eq!(t["dismissRate"], 0.2);
    assert_eq!(t["ignoreRate"], 0.2);
    // Sorted 1500 2500 4500: median is rank 2, p90 rank ceil(2.7) = 3; from the rollup's
    // histogram, the middles of their slots: 2496 (2432..2559) and 4480 (4352..4607).
    assert_eq!(t["medianClickMs"], 2496);
    assert_eq!(t["p90ClickMs"], 4480);
    assert_eq!(t["dismissedWithin2s"], 1);
    assert_eq!(t["feedbackPositive"], 1);
    // Injection 4's shown and click rows name no agent: they count under the unknown agent.
    let agents = v["groups"]["agent"].as_array().unwrap();
    let by: Vec<(String, u64, u64)> = agents
        .iter()
        .map(|r| (r["key"].as_str().unwrap().to_string(), r["shown"].as_u64().unwrap(), r["clicked"].as_u64().unwrap()))
        .collect();
    assert_eq!(by, vec![("A1".into(), 3, 2), ("(none)".into(), 1, 1), ("A2".into(), 1, 0)]);
    let prompts = v["groups"]["prompt"].as_array().unwrap();
    assert_eq!(prompts[0]["key"], P1);
    assert_eq!((prompts[0]["shown"].as_u64(), prompts[1]["shown"].as_u64()), (Some(3), Some(2)));
    assert_eq!(prompts[1]["adoptionRate"], 0.5);
    let days: Vec<&str> = v["daily"].as_array().unwrap().iter().map(|d| d["key"].as_str().unwrap()).collect();
    assert_eq!(days, ["2026-03-02", "2026-03-03"]);
    assert!(v.get("copilot").is_none(), "no Genesys configured, no --emulator");

    // Day boundaries move with the offset: 22:30Z is 00:30 the next day at +02:00.
    let (code, out, err) = cli(&db, &[&range[..], &["--group-by", "day", "--tz", "+02:00", "--json"]].concat());
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    let days: Vec<(String, u64)> = v["groups"]["day"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| (d["key"].as_str().unwrap().to_string(), d["shown"].as_u64().unwrap()))
        .collect();
    assert_eq!(days, vec![("2026-03-03".into(), 4), ("2026-03-04".into(), 1)]);
    assert_eq!(v["from"], "2026-03-01T00:00:00.000+02:00");

    // An empty interval: zeros and no rates, not an error.
    let (code, out, _) = cli(&db, &["--from", "2025-01-01", "--to", "2025-01-02", "--json"]);
    assert_eq!(code, 0);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["totals"]["shown"], 0);
    assert_eq!(v["totals"]["adoptionRate"], Value::Null);
    assert_eq!(v["daily"], serde_json::json!([]));

    // The hidden --reference flag folds every row instead: the same report, but for the
    // exact times to click.
    let (_, sql, _) = cli(&db, &[&range[..], &["--group-by", "prompt,rule,queue,agent,day", "--json"]].concat());
    let (code, reference, err) =
        cli(&db, &[&range[..], &["--group-by", "prompt,rule,queue,agent,day", "--json", "--reference"]].concat());
    assert_eq!(code, 0, "{err}");
    let reference: Value = serde_json::from_str(&reference).unwrap();
    assert_eq!(reference["totals"]["medianClickMs"], 2500);
    let without_times = |mut v: Value| {
        fn strip(v: &mut Value) {
            match v {
                Value::Object(o) => {
                    o.remove("medianClickMs");
                    o.remove("p90ClickMs");
                    o.values_mut().for_each(strip);
                }
                Value::Array(a) => a.iter_mut().for_each(strip),
                _ => {}
            }
        }
        strip(&mut v);
        v
    };
    assert_eq!(without_times(serde_json::from_str(&sql).unwrap()), without_times(reference));

    // Copilot beside ours: a long range goes through an async job, its state file gone after.
    let state = dir.path().join("copilot-state.json");
    let (code, out, err) = cli(
        &db,
        &[
            &range[..],
            &["--emulator", "--copilot-sync-days", "1", "--copilot-state", state.to_str().unwrap(), "--json"],
        ]
        .concat(),
    );
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["copilot"]["source"], "job");
    assert!(v["copilot"]["pages"].as_u64().unwrap() >= 1);
    assert!(v["copilot"]["byEngagementType"]["Opened"].as_u64().unwrap() > 0, "{out}");
    assert!(!state.exists());

    // CSV: a header, total, two days, two prompts.
    let (code, out, _) = cli(&db, &[&range[..], &["--csv"]].concat());
    assert_eq!(code, 0);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 6, "{out}");
    assert!(lines[1].starts_with("total,,,5,1,3,1,1,1,1,0,0.6,0.2,0.2,2496,4480,1,"), "{out}");

    // The table for people.
    let (code, out, _) = cli(&db, &range);
    assert_eq!(code, 0);
    assert!(out.contains("60.0%") && out.contains("2.5 s") && out.contains(P1), "{out}");

    // Bad input: a clear message, exit 2.
    for (args, needle) in [
        (vec!["--tz", "Mars/Olympus"], "±HH:MM"),
        (vec!["--group-by", "team"], "prompt, rule, queue, agent, day"),
        (vec!["--from", "tomorrow"], "RFC 3339"),
        (vec!["--from", "2026-03-05", "--to", "2026-03-01"], "from <= to"),
    ] {
        let (code, _, err) = cli(&db, &args);
        assert_eq!(code, 2, "{args:?}");
        assert!(err.contains(needle), "{args:?}: {err}");
    }
    let (code, _, err) = cli(&dir.path().join("missing.db"), &[]);
    assert_eq!(code, 2);
    assert!(err.contains("no database at"), "{err}");
}

/// `chromium --headless --dump-dom` of a local file: the DOM after parsing and layout.
fn chromium_dom(file: &Path) -> String {
    let chromium = Path::new("/usr/bin/chromium");
    assert!(chromium.exists(), "the HTML report test needs Chromium at /usr/bin/chromium (apt-get install chromium)");
    let profile = tempfile::tempdir().unwrap();
    let o = Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("--dump-dom")
        .arg(format!("file://{}", file.display()))
        .output()
        .expect("run chromium");
    assert!(o.status.success(), "chromium failed: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[tokio::test]
async fn html_report_renders_in_chromium_with_its_charts() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("gc-assist.db");
    seed(&db, fixed_events()).await;
    let html = dir.path().join("adoption report.html");
    let (code, _, err) =
        cli(&db, &["--from", "2026-03-01", "--to", "2026-03-05", "--emulator", "--html", html.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("HTML report:"), "{err}");
    let dom = chromium_dom(&html);
    for id in ["chart-daily", "chart-prompt", "chart-agent", "chart-copilot"] {
        assert!(dom.contains(&format!("id=\"{id}\"")), "{id} missing from the rendered DOM");
    }
    assert!(dom.matches("<svg").count() >= 4, "{dom}");
    // Bars were drawn: two days of shown/clicked, two prompts, two agents and the unknown one.
    assert!(dom.matches("class=\"bar shown\"").count() == 2, "{dom}");
    assert!(dom.contains("A2: adoption 0.0% of 1 shown"), "{dom}");
    assert!(dom.contains("(none): adoption 100.0% of 1 shown"), "{dom}");
    assert!(!dom.contains("<script"), "the report carries no script");
}

#[tokio::test]
async fn copilot_job_paging_survives_a_429_and_resumes_after_a_fault() {
    let emu = emulator::spawn(EmulatorConfig::default()).await.unwrap();
    let mut cfg = Config::defaults().genesys;
    cfg.retry.max_attempts = 2;
    cfg.retry.base_delay_ms = 1;
    cfg.retry.max_delay_ms = 5;
    // Many result pages: the client's pacing is not what this test is about.
    cfg.requests_per_minute = 60_000;
    cfg.burst = 1000;
    let client = GenesysClient::new(emu.client_settings(&cfg).unwrap()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (from, to) = (T - 20 * 24 * H, T);
    let opts = |state: &str| CopilotOptions {
        sync_max_ms: 7 * 24 * H,
        page_size: 150,
        poll: std::time::Duration::from_millis(20),
        timeout: std::time::Duration::from_secs(20),
        state_file: Some(dir.path().join(state)),
    };

    // Uninterrupted, with one 429 between pages (the client waits Retry-After and goes on).
    let faults = emu.faults();
    let full = copilot::fetch(&client, from, to, &opts("a.json"), |p| {
        if matches!(p, Progress::Page { pages: 1, .. }) {
            faults.rate_limit_next(1, 0);
        }
    })
    .await
    .unwrap();
    assert_eq!(full.source, "job");
    assert!(full.pages >= 3, "paging needs several pages: {}", full.pages);
    assert!(full.total > 0 && full.by_engagement_type.len() == 4, "{full:?}");
    assert!(!full.resumed);
    assert!(!dir.path().join("a.json").exists(), "the state file goes once the job is read");
    assert!(emu.stats().responses_429 >= 1, "the 429 was answered");

    // A fault outlasting the retries after page 2: the run fails, the state file keeps the cursor.
    let faults = emu.faults();
    let mut job = None;
    let e = copilot::fetch(&client, from, to, &opts("b.json"), |p| match p {
        Progress::JobCreated { job_id } => job = Some(job_id),
        Progress::Page { pages: 2, .. } => faults.fail_next(5, 503),
        _ => {}
    })
    .await
    .unwrap_err();
    assert!(e.to_string().contains("503"), "{e}");
    let saved: Value = serde_json::from_slice(&std::fs::read(dir.path().join("b.json")).unwrap()).unwrap();
    assert_eq!(saved["pages"], 2);
    assert!(saved["cursor"].is_string());
    emu.faults().clear();

    // The rerun continues that job from its cursor and ends with the same figures.
    let mut resumed_at = None;
    let again = copilot::fetch(&client, from, to, &opts("b.json"), |p| {
        if let Progress::JobResumed { pages, .. } = p {
            resumed_at = Some(pages)
        }
    })
    .await
    .unwrap();
    assert_eq!(resumed_at, Some(2));
    assert!(again.resumed);
    assert_eq!(again.job_id, job);
    assert_eq!((again.total, &again.rows, again.pages), (full.total, &full.rows, full.pages));

    // A state file for a job Genesys no longer has: a new job, same figures.
    std::fs::write(
        dir.path().join("c.json"),
        serde_json::to_vec(&serde_json::json!({"version": 1, "interval": full.interval, "pageSize": 150,
            "jobId": "5b7d4f0e-0000-4000-8000-000000000000", "cursor": "x", "pages": 1, "results": []}))
        .unwrap(),
    )
    .unwrap();
    let fresh = copilot::fetch(&client, from, to, &opts("c.json"), |_| {}).await.unwrap();
    assert!(!fresh.resumed);
    assert_eq!(fresh.total, full.total);

    // Short ranges use the synchronous query.
    let short = copilot::fetch(&client, T - 24 * H, T, &opts("d.json"), |_| {}).await.unwrap();
    assert_eq!((short.source.as_str(), short.pages), ("query", 0));
    assert!(short.total > 0);
    emu.shutdown().await;
}

const ADMIN: &str = "adoption-admin-key";
const INJECTOR: &str = "adoption-injector-key";

#[tokio::test]
async fn api_and_dashboard_answer_admin_keys() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("svc.db");
    seed(&db, fixed_events()).await;
    let emu = emulator::spawn(EmulatorConfig::default()).await.unwrap();
    let mut cfg = Config::defaults().server;
    cfg.api_keys = vec![
        ApiKeyConfig { id: "injector".into(), sha256: key_hash_hex(INJECTOR), role: "injector".into() },
        ApiKeyConfig { id: "admin".into(), sha256: key_hash_hex(ADMIN), role: "admin".into() },
    ];
    let store = Store::open(&db, StoreOptions::default()).await.unwrap();
    let service = Service::start(ServiceDeps {
        store: store.clone(),
        catalogue: None,
        channels: Channels::from_names(&cfg.channels).unwrap(),
        genesys: Some(GenesysClient::new(emu.client_settings(&Config::defaults().genesys).unwrap()).unwrap()),
        clock: Arc::new(SystemClock),
        global_webhooks: vec![],
        on_commit: None,
        attribute_prefix: "gcAssist".into(),
    })
    .await
    .unwrap();
    let state = AppState::new(service, &cfg).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        server::serve(state, listener, async move {
            let _ = rx.await;
        })
        .await
        .unwrap();
    });
    let http = reqwest::Client::new();
    let url = format!("{base}/v1/adoption?from=2026-03-01&to=2026-03-05&groupBy=agent,day&tz=%2B02:00");

    assert_eq!(http.get(&url).send().await.unwrap().status(), 401);
    let r = http.get(&url).bearer_auth(INJECTOR).send().await.unwrap();
    assert_eq!(r.status(), 403);
    let r = http.get(&url).bearer_auth(ADMIN).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["totals"]["shown"], 5);
    assert_eq!(v["totals"]["adoptionRate"], 0.6);
    assert_eq!(v["groups"]["agent"][1]["key"], "(none)");
    assert_eq!(v["groups"]["agent"][2]["key"], "A2");
    assert_eq!(v["groups"]["day"][0]["key"], "2026-03-03");
    assert_eq!(v["timeZone"], "+02:00");
    assert!(v.get("copilot").is_none());

    let r = http.get(format!("{url}&copilot=true")).bearer_auth(ADMIN).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["copilot"]["metric"], "nDistinctSuggestions");
    assert!(v["copilot"]["total"].as_u64().unwrap() > 0);

    for bad in ["groupBy=team", "tz=Europe/Paris", "from=soon", "from=2026-03-05&to=2026-03-01"] {
        let r = http.get(format!("{base}/v1/adoption?{bad}")).bearer_auth(ADMIN).send().await.unwrap();
        assert_eq!(r.status(), 400, "{bad}");
        let b: Value = r.json().await.unwrap();
        assert_eq!(b["error"], "invalid_query", "{bad}");
    }

    let r = http
        .get(format!("{base}/v1/adoption/report?from=2026-03-01&to=2026-03-05&groupBy=prompt,agent"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"].to_str().unwrap().starts_with("text/html"));
    let body = r.text().await.unwrap();
    assert!(body.contains("id=\"chart-daily\"") && body.contains("id=\"chart-agent\""), "{body}");
    assert_eq!(
        http.get(format!("{base}/v1/adoption/report")).bearer_auth(INJECTOR).send().await.unwrap().status(),
        403
    );

    let page = http.get(format!("{base}/adoption")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let page = page.text().await.unwrap();
    assert!(page.contains("sessionStorage") && page.contains("/v1/adoption/report"), "{page}");
    assert!(!page.contains(ADMIN));

    let _ = tx.send(());
    task.await.unwrap();
    store.close().await.unwrap();
    emu.shutdown().await;
}

#[test]
fn demo_ends_with_the_adoption_summary_and_report() {
    let out = support::run(&["demo", "--headless"], &[]);
    let text = support::stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}\n{}", support::stderr(&out));
    let summary = text.lines().find(|l| l.contains("Adoption ") && l.contains("shown ")).expect("summary line");
    // The demo's service shows its prompts: the figures come from its real store.
    assert!(!summary.contains("shown 0,"), "{summary}");
    let html = text.lines().find_map(|l| l.trim().strip_prefix("HTML report: ")).expect("report path");
    let page = std::fs::read_to_string(html).unwrap();
    assert!(page.contains("id=\"chart-daily\"") && page.contains("id=\"chart-prompt\""));
    // Prompts carry the titles their injections showed, beside their ids.
    assert!(page.contains("Refund policy"), "{page}");
}
