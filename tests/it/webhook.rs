//! Integration tests: the webhook delivery worker against real receivers on 127.0.0.1 and
//! real store files: signing, retries, timeouts, Retry-After, dead-letters, 410 disabling,
//! the SSRF guard, redirects, graceful shutdown, and the `outbox` CLI.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use gc_assist::audit::AuditDraft;
use gc_assist::contract::validate_value;
use gc_assist::store::{
    InjectionRow, InjectionStatus, OutboxRow, OutboxState, Source, Store, StoreOptions, SystemClock, WriteOp,
};
use gc_assist::webhook::{
    Cidr, Jitter, Receiver, ReceiverConfig, Reply, RetrySchedule, WebhookSecret, Worker, WorkerHandle, WorkerSettings,
};
use rand::rngs::StdRng;
use rand::SeedableRng;
use serde_json::{json, Value};
use tokio::sync::oneshot;
use uuid::Uuid;

use crate::support;

const WAIT: Duration = Duration::from_secs(5);

fn secret(seed: u64) -> WebhookSecret {
    WebhookSecret::generate(&mut StdRng::seed_from_u64(seed))
}

async fn open(dir: &Path) -> Store {
    Store::open(&dir.join("store.db"), StoreOptions::default()).await.expect("open store")
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Settings for fast tests: immediate retries (`steps` of zero), loopback allowed.
fn settings(secrets: Vec<WebhookSecret>, steps: usize) -> WorkerSettings {
    WorkerSettings {
        secrets,
        schedule: RetrySchedule::new(vec![Duration::ZERO; steps], Duration::from_secs(5), Jitter::None).unwrap(),
        attempt_timeout: Duration::from_secs(2),
        allow: Cidr::parse_list(&["127.0.0.1/32"]).unwrap(),
        concurrency: 16,
        poll_interval: Duration::from_millis(50),
        shutdown_grace: Duration::from_secs(2),
        clock: Arc::new(SystemClock),
        rng_seed: Some(1),
    }
}

struct Running {
    handle: WorkerHandle,
    stop: oneshot::Sender<()>,
}

fn start(store: &Store, settings: WorkerSettings) -> Running {
    let (stop, stopped) = oneshot::channel::<()>();
    let worker = Worker::new(store.clone(), settings).expect("worker");
    let handle = worker.spawn(async move {
        let _ = stopped.await;
    });
    Running { handle, stop }
}

impl Running {
    async fn stop(self) -> gc_assist::webhook::WorkerStats {
        let _ = self.stop.send(());
        self.handle.join().await
    }
}

/// Stores an injection with one message per URL; answers the messages.
async fn enqueue(store: &Store, urls: &[&str]) -> Vec<OutboxRow> {
    let conv = Uuid::new_v4();
    let payload = validate_value(&json!({
        "conversationId": conv.to_string(),
        "promptId": Uuid::from_u128(0xfeed).to_string(),
        "triggerConditions": [],
        "displaySettings": {"delayMs": 1000, "maxConcurrentPrompts": 2, "autoDismissMs": 30000},
        "prompt": {"title": "Refund policy", "body": "Offer the 30-day refund."}
    }))
    .expect("valid payload");
    let content = payload.inline_prompt().cloned().expect("inline prompt");
    let now = now_ms();
    let row = InjectionRow::new(Uuid::now_v7(), InjectionStatus::Scheduled, payload, content, Source::Api, now);
    let msgs: Vec<OutboxRow> = urls
        .iter()
        .map(|u| {
            let body = json!({"eventType": "AGENT_ASSIST_PROMPT_INJECTED", "injectionId": row.id.to_string(),
                "conversationId": conv.to_string(), "alignmentStatus": "SYNCED", "note": "é \""});
            OutboxRow::new(row.id, *u, "AGENT_ASSIST_PROMPT_INJECTED", serde_json::to_vec(&body).unwrap(), now)
        })
        .collect();
    let audit = AuditDraft {
        conversation_id: row.conversation_id,
        prompt_id: row.prompt_id,
        injection_id: row.id,
        status: "accepted".into(),
        latency_ms: Some(1),
        error: None,
        actor: "test".into(),
        reason: None,
    };
    store
        .write(WriteOp::InsertInjection {
            row: Box::new(row),
            audit: vec![audit],
            outbox: msgs.clone(),
            idempotency: None,
        })
        .await
        .expect("enqueue");
    // Read back: a message to a disabled endpoint is filed `disabled`.
    let mut stored = Vec::new();
    for m in &msgs {
        stored.push(store.outbox_get(&m.id).await.unwrap().expect("stored"));
    }
    stored
}

/// Waits until the message reaches `state`; answers it as stored then.
async fn wait_state(store: &Store, id: &str, state: OutboxState) -> OutboxRow {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let row = store.outbox_get(id).await.unwrap().expect("message exists");
        if row.state == state {
            return row;
        }
        assert!(tokio::time::Instant::now() < deadline, "message never became {state}: {row:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivered_signed_with_every_rotated_secret() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    // The worker signs with the old and the new secret; a receiver that knows only the new
    // one accepts.
    let rx = Receiver::spawn(ReceiverConfig::new(vec![secret(2)])).await.unwrap();
    let w = start(&store, settings(vec![secret(1), secret(2)], 3));
    let msg = enqueue(&store, &[&rx.url()]).await.remove(0);
    w.handle.notify();
    let row = wait_state(&store, &msg.id, OutboxState::Delivered).await;
    assert_eq!((row.attempts, row.last_status, row.last_error.as_deref()), (1, Some(200), None));
    let got = rx.deliveries();
    assert_eq!(got.len(), 1);
    let d = &got[0];
    assert_eq!((d.id.as_str(), d.attempts, d.path.as_str()), (msg.id.as_str(), 1, "/hook"));
    assert_eq!(d.body, msg.body, "the exact stored bytes are sent");
    assert_eq!(d.event_type.as_deref(), Some("AGENT_ASSIST_PROMPT_INJECTED"));
    assert_eq!(d.content_type.as_deref(), Some("application/json"));
    assert!(d.user_agent.as_deref().is_some_and(|u| u.starts_with("gc-assist/")), "{:?}", d.user_agent);
    assert!(rx.rejected().is_empty());
    let stats = w.stop().await;
    assert_eq!((stats.delivered, stats.retried, stats.dead, stats.in_flight), (1, 0, 0, 0));

    // By host name: resolved, checked (both loopback forms allowed here) and pinned.
    let mut s = settings(vec![secret(2)], 0);
    s.allow = Cidr::parse_list(&["127.0.0.1/32", "::1/128"]).unwrap();
    let w = start(&store, s);
    let msg = enqueue(&store, &[&rx.url().replace("127.0.0.1", "localhost")]).await.remove(0);
    wait_state(&store, &msg.id, OutboxState::Delivered).await;
    assert_eq!(rx.deliveries().len(), 2);
    w.stop().await;

    // A receiver with a different secret refuses, and the worker keeps retrying.
    let stranger = Receiver::spawn(ReceiverConfig::new(vec![secret(9)])).await.unwrap();
    let w = start(&store, settings(vec![secret(1)], 0));
    let msg = enqueue(&store, &[&stranger.url()]).await.remove(0);
    let row = wait_state(&store, &msg.id, OutboxState::Dead).await;
    assert_eq!(row.last_status, Some(401));
    assert_eq!(stranger.rejected().len(), 1);
    assert!(stranger.deliveries().is_empty());
    w.stop().await;
    store.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_then_success_one_delivery_same_id() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let rx = Receiver::spawn(ReceiverConfig::new(vec![secret(1)]).script(vec![Reply::status(500), Reply::status(503)]))
        .await
        .unwrap();
    let w = start(&store, settings(vec![secret(1)], 3));
    let msg = enqueue(&store, &[&rx.url()]).await.remove(0);
    w.handle.notify();
    let row = wait_state(&store, &msg.id, OutboxState::Delivered).await;
    assert_eq!(row.attempts, 3);
    let got = rx.deliveries();
    assert_eq!(got.len(), 1, "deduplicated by webhook-id");
    assert_eq!(
        (got[0].id.as_str(), got[0].attempts, got[0].answered.as_slice()),
        (msg.id.as_str(), 3, &[500, 503, 200][..])
    );
    let stats = w.stop().await;
    assert_eq!((stats.delivered, stats.retried), (1, 2));
    store.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_receiver_times_out_and_is_retried() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let rx = Receiver::spawn(
        ReceiverConfig::new(vec![secret(1)]).script(vec![Reply::status(200).delayed(Duration::from_secs(1))]),
    )
    .await
    .unwrap();
    let mut s = settings(vec![secret(1)], 2);
    s.attempt_timeout = Duration::from_millis(200);
    let w = start(&store, s);
    let msg = enqueue(&store, &[&rx.url()]).await.remove(0);
    let row = wait_state(&store, &msg.id, OutboxState::Delivered).await;
    assert_eq!(row.attempts, 2);
    let d = rx.deliveries().remove(0);
    assert_eq!(d.attempts, 2);
    let gap = d.arrivals[1] - d.arrivals[0];
    assert!(gap < Duration::from_millis(900), "the worker gave up after 200 ms, not after the 1 s reply: {gap:?}");
    w.stop().await;
    store.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_is_honoured() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let rx = Receiver::spawn(ReceiverConfig::new(vec![secret(1)]).script(vec![Reply::status(429).retry_after("1")]))
        .await
        .unwrap();
    let w = start(&store, settings(vec![secret(1)], 2));
    let msg = enqueue(&store, &[&rx.url()]).await.remove(0);
    let pending = {
        assert!(rx.wait_for(WAIT, |d| d.first().is_some_and(|d| d.attempts == 1)).await);
        // The retry is recorded right after the answer.
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let r = store.outbox_get(&msg.id).await.unwrap().unwrap();
            if r.attempts == 1 || tokio::time::Instant::now() > deadline {
                break r;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    assert_eq!((pending.state, pending.last_status), (OutboxState::Pending, Some(429)));
    assert!(pending.next_attempt_at - now_ms() > 500, "next attempt about 1 s out: {pending:?}");
    wait_state(&store, &msg.id, OutboxState::Delivered).await;
    let d = rx.deliveries().remove(0);
    let gap = d.arrivals[1] - d.arrivals[0];
    assert!(gap >= Duration::from_millis(1000), "Retry-After: 1 means at least 1 s: {gap:?}");
    w.stop().await;
    store.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_refused_retries_then_dead() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let w = start(&store, settings(vec![secret(1)], 2));
    let msg = enqueue(&store, &[&format!("http://127.0.0.1:{port}/hook")]).await.remove(0);
    let row = wait_state(&store, &msg.id, OutboxState::Dead).await;
    assert_eq!((row.attempts, row.last_status), (3, None));
    let err = row.last_error.unwrap_or_default();
    assert!(err.contains("connection"), "{err}");
    let stats = w.stop().await;
    assert_eq!((stats.retried, stats.dead), (2, 1));
    store.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gone_disables_the_endpoint_and_later_rows() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let rx = Receiver::spawn(ReceiverConfig::new(vec![secret(1)]).script(vec![Reply::status(410)])).await.unwrap();
    let w = start(&store, settings(vec![secret(1)], 3));
    let msg = enqueue(&store, &[&rx.url()]).await.remove(0);
    let row = wait_state(&store, &msg.id, OutboxState::Disabled).await;
    assert_eq!((row.attempts, row.last_status), (1, Some(410)));
    let eps = store.disabled_endpoints().await.unwrap();
    assert_eq!(eps.len(), 1);
    assert_eq!(eps[0].url, rx.url());
    let later = enqueue(&store, &[&rx.url()]).await.remove(0);
    assert_eq!(later.state, OutboxState::Disabled, "filed disabled, never sent");
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(rx.requests(), 1);
    let stats = w.stop().await;
    assert_eq!(stats.disabled, 1);
    store.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssrf_guard_refuses_loopback_without_the_allow_list() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let rx = Receiver::spawn(ReceiverConfig::new(vec![secret(1)])).await.unwrap();
    let mut s = settings(vec![secret(1)], 3);
    s.allow.clear();
    let w = start(&store, s);
    let by_name = rx.url().replace("127.0.0.1", "localhost");
    let msgs = enqueue(&store, &[&rx.url(), &by_name, "ftp://kb.example.com/x"]).await;
    for (m, hint) in msgs.iter().zip(["loopback", "loopback", "scheme"]) {
        let row = wait_state(&store, &m.id, OutboxState::Dead).await;
        assert_eq!(row.attempts, 1, "dead at once: retrying cannot help");
        let err = row.last_error.unwrap_or_default();
        assert!(err.contains(hint), "{err}");
    }
    assert_eq!(rx.requests(), 0, "never requested");
    let stats = w.stop().await;
    assert_eq!((stats.dead, stats.retried), (3, 0));
    store.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_are_not_followed() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    // The redirect points back at the same receiver: a followed redirect would be counted.
    let rx =
        Receiver::spawn(ReceiverConfig::new(vec![secret(1)]).script(vec![Reply::status(302).location("/elsewhere")]))
            .await
            .unwrap();
    let w = start(&store, settings(vec![secret(1)], 0));
    let msg = enqueue(&store, &[&rx.url()]).await.remove(0);
    let row = wait_state(&store, &msg.id, OutboxState::Dead).await;
    assert_eq!(row.last_status, Some(302));
    assert_eq!(rx.requests(), 1);
    assert!(rx.deliveries().iter().all(|d| d.path == "/hook"));
    w.stop().await;
    store.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_an_attempt_in_flight_finish() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let rx = Receiver::spawn(
        ReceiverConfig::new(vec![secret(1)]).script(vec![Reply::status(200).delayed(Duration::from_millis(300))]),
    )
    .await
    .unwrap();
    let w = start(&store, settings(vec![secret(1)], 3));
    let msg = enqueue(&store, &[&rx.url()]).await.remove(0);
    assert!(rx.wait_for(WAIT, |d| !d.is_empty()).await);
    assert_eq!(w.handle.stats().in_flight, 1);
    let _ = w.stop.send(());
    w.handle.join().await;
    let row = store.outbox_get(&msg.id).await.unwrap().unwrap();
    assert_eq!(row.state, OutboxState::Delivered, "finished and recorded before the worker stopped");
    store.close().await.unwrap();
}

fn cli(db: &Path, args: &[&str]) -> std::process::Output {
    let db = db.to_string_lossy().into_owned();
    support::run(args, &[("GC_ASSIST__STORE__PATH", db.as_str())])
}

fn json_out(o: &std::process::Output) -> Value {
    assert!(o.status.success(), "{}", support::stderr(o));
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", support::stdout(o)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_and_disabled_endpoints_are_redriven_from_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("store.db");
    let store = open(dir.path()).await;
    let flaky =
        Receiver::spawn(ReceiverConfig::new(vec![secret(1)]).script(vec![Reply::status(500), Reply::status(500)]))
            .await
            .unwrap();
    let gone = Receiver::spawn(ReceiverConfig::new(vec![secret(1)]).script(vec![Reply::status(410)])).await.unwrap();
    let w = start(&store, settings(vec![secret(1)], 1));
    let msgs = enqueue(&store, &[&flaky.url(), &gone.url()]).await;
    wait_state(&store, &msgs[0].id, OutboxState::Dead).await;
    wait_state(&store, &msgs[1].id, OutboxState::Disabled).await;

    let list = json_out(&cli(&db, &["outbox", "list", "--json"]));
    let rows = list.as_array().expect("an array");
    assert_eq!(rows.len(), 2);
    let dead = rows.iter().find(|r| r["id"] == msgs[0].id.as_str()).expect("listed");
    assert_eq!(dead["state"], "dead");
    assert_eq!(dead["attempts"], 2);
    assert_eq!(dead["lastStatus"], 500);
    assert_eq!(dead["endpoint"], flaky.url());
    assert_eq!(dead["eventType"], "AGENT_ASSIST_PROMPT_INJECTED");
    for key in ["injectionId", "createdAtMs", "nextAttemptAtMs", "lastError", "deliveredAtMs"] {
        assert!(dead.get(key).is_some(), "{key} in {dead}");
    }
    let only_dead = json_out(&cli(&db, &["outbox", "list", "--state", "dead", "--json"]));
    assert_eq!(only_dead.as_array().map(Vec::len), Some(1));
    let table = cli(&db, &["outbox", "list", "--state", "disabled"]);
    assert!(table.status.success() && support::stdout(&table).contains(&msgs[1].id), "{}", support::stdout(&table));

    let out = json_out(&cli(&db, &["outbox", "redrive", "--all-dead", "--json"]));
    assert_eq!(out, json!({"redriven": 1, "endpointEnabled": false}));
    let row = wait_state(&store, &msgs[0].id, OutboxState::Delivered).await;
    assert_eq!(row.attempts, 1, "attempts restart after a redrive");
    assert_eq!(flaky.deliveries()[0].attempts, 3, "same webhook-id across the redrive");

    let out = json_out(&cli(&db, &["outbox", "redrive", "--endpoint", &gone.url(), "--json"]));
    assert_eq!(out, json!({"redriven": 1, "endpointEnabled": true}));
    assert!(store.disabled_endpoints().await.unwrap().is_empty());
    wait_state(&store, &msgs[1].id, OutboxState::Delivered).await;
    let later = enqueue(&store, &[&gone.url()]).await.remove(0);
    assert_eq!(later.state, OutboxState::Pending, "the endpoint is enabled again");
    wait_state(&store, &later.id, OutboxState::Delivered).await;

    // Errors exit 2 with a message: no selector, an unknown id, no database.
    let none = cli(&db, &["outbox", "redrive"]);
    assert_eq!(none.status.code(), Some(2));
    let unknown = cli(&db, &["outbox", "redrive", "--id", "msg_nope"]);
    assert_eq!(unknown.status.code(), Some(2));
    assert!(support::stderr(&unknown).contains("msg_nope"), "{}", support::stderr(&unknown));
    let missing = cli(&dir.path().join("absent.db"), &["outbox", "list"]);
    assert_eq!(missing.status.code(), Some(2));
    assert!(support::stderr(&missing).contains("store.path"), "{}", support::stderr(&missing));
    assert!(!dir.path().join("absent.db").exists(), "listing never creates a database");
    w.stop().await;
    store.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_is_sent_concurrently_and_each_message_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    // Slow answers and a fast poll: a message in flight must not be claimed again.
    let mut cfg = ReceiverConfig::new(vec![secret(1)]);
    cfg.then = Reply::status(200).delayed(Duration::from_millis(100));
    let rx = Receiver::spawn(cfg).await.unwrap();
    let mut s = settings(vec![secret(1)], 3);
    s.poll_interval = Duration::from_millis(10);
    let w = start(&store, s);
    let url = rx.url();
    let msgs = enqueue(&store, &vec![url.as_str(); 40]).await;
    let started = std::time::Instant::now();
    w.handle.notify();
    assert!(rx.wait_for(WAIT, |d| d.len() == 40).await);
    for m in &msgs {
        wait_state(&store, &m.id, OutboxState::Delivered).await;
    }
    assert!(started.elapsed() < Duration::from_secs(2), "sent concurrently: {:?}", started.elapsed());
    assert!(rx.deliveries().iter().all(|d| d.attempts == 1), "no message was sent twice");
    let stats = w.stop().await;
    assert_eq!((stats.delivered, stats.retried, stats.in_flight), (40, 0, 0));
    store.close().await.unwrap();
}
