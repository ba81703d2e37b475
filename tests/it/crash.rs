//! Crash test: the real `gc-assist serve` binary is killed with SIGKILL while 16 clients post
//! injections, restarted on the same files, and must have kept every acknowledged injection
//! (row, audit records, webhook message, idempotent answer), a valid audit chain, no half
//! written injections, an engagement rollup that matches the engagement events, and deliver
//! each acknowledged injection's webhook under one id.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gc_assist::server::key_hash_hex;
use gc_assist::store::{OutboxState, Store, StoreOptions};
use gc_assist::webhook::{Receiver, ReceiverConfig, WebhookSecret};
use rand::SeedableRng;
use secrecy::ExposeSecret;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::support;

const KEY: &str = "crash-test-injector-key";
const EVENT: &str = "AGENT_ASSIST_PROMPT_INJECTED";
const CLIENTS: usize = 16;
/// How many times the service is killed under load.
const KILLS: usize = 2;

/// One POST as the client saw it. `body` is kept so an unanswered request can be replayed
/// byte for byte under its Idempotency-Key.
#[derive(Debug, Clone)]
struct Attempt {
    key: String,
    conv: Uuid,
    body: Value,
    outcome: Outcome,
}

#[derive(Debug, Clone, PartialEq)]
enum Outcome {
    /// 201: the service promised the injection is durable.
    Acked(Uuid),
    /// Any other status: refused (e.g. 429 while shedding), nothing promised.
    Refused(u16),
    /// No answer (the connection died with the process): it may or may not exist.
    Unknown,
}

struct Files {
    cfg: PathBuf,
    db: PathBuf,
    dir: PathBuf,
}

fn write_config(dir: &Path, secret: &WebhookSecret) -> Files {
    let cfg = dir.join("gc-assist.toml");
    let db = dir.join("crash.db");
    let text = format!(
        "[store]\npath = {:?}\n[audit]\nkey_file = {:?}\nanchor_file = {:?}\n\
         [webhook]\nsecret = {:?}\nallow_private = [\"127.0.0.1/32\"]\nschedule_secs = [1, 1, 1, 1, 1]\n\
         [server]\nchannels = [\"panel\"]\n[[server.api_keys]]\nid = \"crash\"\nsha256 = \"{}\"\nrole = \"injector\"\n",
        db,
        dir.join("audit.key"),
        dir.join("anchors.jsonl"),
        secret.to_whsec().expose_secret(),
        key_hash_hex(KEY)
    );
    std::fs::write(&cfg, text).unwrap();
    Files { cfg, db, dir: dir.to_path_buf() }
}

/// Starts `serve` on a free port with its output in files (a full pipe would block the
/// service), waits for its address and for /readyz.
async fn start(files: &Files, run: usize) -> (Child, String) {
    let out_path = files.dir.join(format!("serve-{run}.out"));
    let out = std::fs::File::create(&out_path).unwrap();
    let err = std::fs::File::create(files.dir.join(format!("serve-{run}.err"))).unwrap();
    let mut cmd = Command::new(support::bin());
    cmd.args(["serve", "--bind", "127.0.0.1:0", "--config"])
        .arg(&files.cfg)
        .current_dir(&files.dir)
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err));
    for var in ["GC_ASSIST_CONFIG", "GC_ASSIST__WEBHOOK__SECRET", "RUST_LOG"] {
        cmd.env_remove(var);
    }
    let mut child = cmd.spawn().unwrap();
    let until = Instant::now() + Duration::from_secs(15);
    let base = loop {
        let text = std::fs::read_to_string(&out_path).unwrap_or_default();
        if let Some(rest) = text.lines().find_map(|l| l.strip_prefix("gc-assist serving on ")) {
            break rest.trim().to_string();
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("serve exited with {status}: {}", stderr_of(files, run));
        }
        assert!(Instant::now() < until, "serve printed no address: {}", stderr_of(files, run));
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let http = reqwest::Client::new();
    loop {
        let ready = http.get(format!("{base}/readyz")).send().await.map(|r| r.status().as_u16());
        if ready.ok() == Some(200) {
            break;
        }
        assert!(Instant::now() < until, "serve never became ready: {}", stderr_of(files, run));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (child, base)
}

fn stderr_of(files: &Files, run: usize) -> String {
    std::fs::read_to_string(files.dir.join(format!("serve-{run}.err"))).unwrap_or_default()
}

fn payload(conv: Uuid, hook: &str, n: usize) -> Value {
    json!({
        "conversationId": conv.to_string(),
        "promptId": "d4e5f6a7-b8c9-0123-4567-890abcdef123",
        "triggerConditions": [],
        // Long enough on screen that nothing expires during the test: every injection stays
        // live, so a conversation's prompt list shows whether it exists.
        "displaySettings": {"delayMs": 500, "maxConcurrentPrompts": 3, "autoDismissMs": 60_000},
        "prompt": {"title": "Crash test", "body": "Offer a refund within 30 days.", "priority": "high"},
        "webhookUrl": hook,
        "contextData": {"n": n}
    })
}

async fn post(http: &reqwest::Client, base: &str, key: &str, body: &Value) -> Result<(u16, Value), reqwest::Error> {
    let resp = http
        .post(format!("{base}/v1/prompt-injections"))
        .bearer_auth(KEY)
        .header("idempotency-key", key)
        .json(body)
        .timeout(Duration::from_secs(5))
        .send()
        .await?;
    let status = resp.status().as_u16();
    Ok((status, resp.json().await.unwrap_or(Value::Null)))
}

fn acked_id(status: u16, body: &Value) -> Option<Uuid> {
    if status != 201 {
        return None;
    }
    body["injectionId"].as_str().and_then(|s| Uuid::parse_str(s).ok())
}

/// Fires injections from `CLIENTS` concurrent clients until `stop`; each request has a new
/// conversation (so capacity never refuses) and a unique Idempotency-Key.
fn load(base: String, hook: String, round: usize, stop: Arc<AtomicBool>) -> Vec<tokio::task::JoinHandle<Vec<Attempt>>> {
    (0..CLIENTS)
        .map(|c| {
            let (base, hook, stop) = (base.clone(), hook.clone(), stop.clone());
            tokio::spawn(async move {
                let http = reqwest::Client::new();
                let mut seen = Vec::new();
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    let conv = Uuid::new_v4();
                    let key = format!("crash-{round}-{c}-{n}");
                    let body = payload(conv, &hook, n);
                    n += 1;
                    let outcome = match post(&http, &base, &key, &body).await {
                        Ok((st, b)) => match acked_id(st, &b) {
                            Some(id) => Outcome::Acked(id),
                            None => Outcome::Refused(st),
                        },
                        Err(_) => Outcome::Unknown,
                    };
                    let dead = outcome == Outcome::Unknown;
                    seen.push(Attempt { key, conv, body, outcome });
                    if dead {
                        // The process is gone: every later request would fail the same way.
                        break;
                    }
                }
                seen
            })
        })
        .collect()
}

async fn live_ids(http: &reqwest::Client, base: &str, conv: Uuid) -> Vec<Uuid> {
    let resp = http.get(format!("{base}/v1/conversations/{conv}/prompts")).bearer_auth(KEY).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    v["prompts"]
        .as_array()
        .map(|a| a.iter().filter_map(|p| p["injectionId"].as_str().and_then(|s| Uuid::parse_str(s).ok())).collect())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_load_loses_no_acknowledged_injection() {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let secret = WebhookSecret::generate(&mut rand::rngs::StdRng::seed_from_u64(11));
    let receiver = Receiver::spawn(ReceiverConfig::new(vec![secret.clone()])).await.unwrap();
    let files = write_config(dir.path(), &secret);
    let http = reqwest::Client::new();

    // Every acknowledged injection, with the conversation it belongs to.
    let mut acked: HashMap<Uuid, Uuid> = HashMap::new();
    // Every conversation a request was made for: where an injection could exist.
    let mut convs: HashSet<Uuid> = HashSet::new();
    let mut unknown_total = 0;
    // Unanswered requests that had committed before the kill.
    let mut unknown_committed = 0;
    let mut first_acks = 0;
    let mut refused_total = 0;
    let mut run = 0;
    let (mut child, mut base) = start(&files, run).await;

    for round in 0..KILLS {
        let stop = Arc::new(AtomicBool::new(false));
        let clients = load(base.clone(), receiver.url(), round, stop.clone());
        tokio::time::sleep(Duration::from_millis(900)).await;
        child.kill().unwrap(); // SIGKILL: no shutdown, no flush
        let killed = child.wait().unwrap();
        assert!(!killed.success(), "the process was killed, not stopped: {killed}");
        stop.store(true, Ordering::Relaxed);
        let mut attempts = Vec::new();
        for c in clients {
            attempts.extend(c.await.unwrap());
        }

        run += 1;
        (child, base) = start(&files, run).await;
        for a in &attempts {
            convs.insert(a.conv);
            let existing = live_ids(&http, &base, a.conv).await;
            match &a.outcome {
                Outcome::Acked(id) => {
                    // (1) durable: the acknowledged injection survived the kill...
                    assert_eq!(existing, vec![*id], "acknowledged {id} ({}) lost or duplicated", a.key);
                    // ...and so did its idempotent answer.
                    let (st, b) = post(&http, &base, &a.key, &a.body).await.unwrap();
                    assert_eq!(acked_id(st, &b), Some(*id), "replay of {} answered {st} {b}", a.key);
                    acked.insert(*id, a.conv);
                    first_acks += 1;
                }
                Outcome::Refused(st) => {
                    refused_total += 1;
                    assert_eq!(*st, 429, "only load shedding may refuse a valid request ({})", a.key);
                    assert!(existing.is_empty(), "refused ({st}) request {} created {existing:?}", a.key);
                }
                Outcome::Unknown => {
                    // (4) all or nothing: if the injection committed, so did its idempotency
                    // row, and a replay answers it; if not, the replay creates it now.
                    unknown_total += 1;
                    assert!(existing.len() <= 1, "{} created {existing:?}", a.key);
                    let (st, b) = post(&http, &base, &a.key, &a.body).await.unwrap();
                    let id = acked_id(st, &b).unwrap_or_else(|| panic!("replay of {} answered {st} {b}", a.key));
                    if let Some(first) = existing.first() {
                        unknown_committed += 1;
                        assert_eq!(id, *first, "in-flight {} committed without its idempotent answer", a.key);
                    }
                    acked.insert(id, a.conv);
                }
            }
        }
        let acked_now = attempts.iter().filter(|a| matches!(a.outcome, Outcome::Acked(_))).count();
        assert!(acked_now > CLIENTS, "round {round}: only {acked_now} acknowledged: the load never ran");
        eprintln!(
            "round {round}: {} attempts, {} acknowledged so far, killed after {:?}",
            attempts.len(),
            acked.len(),
            started.elapsed()
        );
    }

    // (3) every acknowledged injection's INJECTED webhook arrives, under exactly one webhook-id.
    let want: HashSet<Uuid> = acked.keys().copied().collect();
    let injected_of = |ds: &[gc_assist::webhook::receiver::Delivery]| -> HashMap<Uuid, Vec<String>> {
        let mut by: HashMap<Uuid, Vec<String>> = HashMap::new();
        for d in ds.iter().filter(|d| d.event_type.as_deref() == Some(EVENT)) {
            let v: Value = serde_json::from_slice(&d.body).unwrap_or(Value::Null);
            if let Some(id) = v["injectionId"].as_str().and_then(|s| Uuid::parse_str(s).ok()) {
                by.entry(id).or_default().push(d.id.clone());
            }
        }
        by
    };
    let all_in = receiver
        .wait_for(Duration::from_secs(20), |ds| {
            let by = injected_of(ds);
            want.iter().all(|id| by.contains_key(id))
        })
        .await;
    let deliveries = receiver.deliveries();
    let by = injected_of(&deliveries);
    let missing: Vec<_> = want.iter().filter(|id| !by.contains_key(id)).collect();
    assert!(all_in, "{} of {} webhooks never arrived: {missing:?}", missing.len(), want.len());
    for (id, ids) in &by {
        assert!(want.contains(id), "a webhook for {id}, which was never acknowledged or replayed");
        assert_eq!(ids.len(), 1, "{id}'s INJECTED event came under several webhook-ids: {ids:?}");
    }
    assert!(receiver.rejected().is_empty(), "bad signatures: {:?}", receiver.rejected());
    let redelivered: u32 = deliveries.iter().map(|d| d.attempts.saturating_sub(1)).sum();

    // A clean stop: SIGTERM, exit 0.
    let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let exited = child.wait().unwrap();
    assert!(exited.success(), "SIGTERM exit {exited}: {}", stderr_of(&files, run));

    // (2) the audit chain verifies, through the CLI as an operator would.
    let verify = support::run(&["audit", "verify", "--config", files.cfg.to_str().unwrap()], &[]);
    assert!(verify.status.success(), "{}\n{}", support::stdout(&verify), support::stderr(&verify));

    // (1, 4) on disk, with the service stopped: every injection row has its accepted and
    // admission audit records and its webhook message, and no audit record lacks its row.
    let store = Store::open(&files.db, StoreOptions::default()).await.unwrap();
    let outbox = store.outbox_list(None, 1_000_000).await.unwrap();
    let mut messages: HashMap<Uuid, Vec<_>> = HashMap::new();
    for m in outbox.iter().filter(|m| m.event_type == EVENT) {
        messages.entry(m.injection_id).or_default().push(m);
    }
    let mut rows = HashSet::new();
    let now = chrono::Utc::now().timestamp_millis();
    for conv in &convs {
        for row in store.conversation_prompts(*conv, now).await.unwrap() {
            rows.insert(row.id);
        }
    }
    for id in &want {
        assert!(rows.contains(id), "acknowledged {id} is not in the store");
    }
    for id in &rows {
        assert!(want.contains(id), "{id} exists but was never acknowledged");
        let full = store.get_injection(*id).await.unwrap().unwrap();
        let statuses: Vec<&str> = full.timeline.iter().map(|r| r.status.as_str()).collect();
        assert!(statuses.len() >= 2 && statuses[0] == "accepted", "{id}: timeline {statuses:?}");
        assert!(["scheduled", "queued"].contains(&statuses[1]), "{id}: no admission record: {statuses:?}");
        let msgs = messages.get(id).map(Vec::as_slice).unwrap_or_default();
        assert_eq!(msgs.len(), 1, "{id}: INJECTED messages {msgs:?}");
        assert_eq!(msgs[0].state, OutboxState::Delivered, "{id}: message {:?}", msgs[0]);
        assert_eq!(by.get(id).map(|v| v[0].as_str()), Some(msgs[0].id.as_str()), "{id}: webhook-id differs");
    }
    let mut audited = HashSet::new();
    let mut stream = Box::pin(store.audit_stream(0, 1000));
    while let Some(batch) = futures::StreamExt::next(&mut stream).await {
        for r in batch.unwrap() {
            audited.insert(r.injection_id);
        }
    }
    for id in &audited {
        assert!(rows.contains(id), "audit records for {id}, which has no injection row");
    }
    for m in &outbox {
        assert!(rows.contains(&m.injection_id), "webhook message {} for a missing injection", m.id);
    }
    // (4) the engagement rollup, written in the same transactions as the events, matches them.
    let utc = gc_assist::adoption::parse_tz("Z").unwrap();
    let all = gc_assist::adoption::AdoptionQuery::new(0, now + 86_400_000, utc, vec![]).unwrap();
    let rolled = gc_assist::adoption::fold_from_rollup(&store, &all).await.unwrap();
    let reference = gc_assist::adoption::fold_streamed(&store, &all).await.unwrap();
    crate::adoption::assert_matches_fold(&rolled, &reference, "after the kills");
    assert!(reference.total.counts[0] > 0, "prompts were shown: {:?}", reference.total);
    store.close().await.unwrap();
    receiver.shutdown().await;
    eprintln!(
        "crash test: {KILLS} kills, {first_acks} acknowledged under load, {unknown_total} unanswered at the kills \
         ({unknown_committed} had committed), {} injections in all after replays, {refused_total} refused, \
         {} webhooks delivered ({redelivered} extra attempts), {:?}",
        want.len(),
        by.len(),
        started.elapsed()
    );
}
