//! Integration tests: the durable store on real SQLite files in temporary directories:
//! group commit, the audit chain across restarts and failures, optimistic updates, the
//! webhook outbox, idempotency, recovery, checkpoints and retention purges.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use chrono::NaiveDate;
use futures::TryStreamExt;
use gc_assist::audit::{self, AuditDraft, AuditKey, AuditRecord, Checkpoint, Verdict};
use gc_assist::contract::{validate_value, CatalogueEntry, Priority, PromptContent, ValidPayload};
use gc_assist::store::{
    IdempotencyRow, InjectionRow, InjectionStatus, InjectionUpdate, ManualClock, OutboxRow, OutboxState, Redrive,
    Source, Store, StoreError, StoreOptions, WriteBatch, WriteOp, IDEMPOTENCY_TTL_MS,
};
use rand::rngs::StdRng;
use rand::SeedableRng;
use serde_json::json;
use sqlx::ConnectOptions;
use uuid::Uuid;

/// 2024-05-01T00:00:00Z.
const T0: i64 = 1_714_521_600_000;
const DAY_MS: i64 = 86_400_000;
const HOOK: &str = "https://kb.example.com/hooks/assist";

fn opts(clock: &ManualClock) -> StoreOptions {
    StoreOptions { clock: Arc::new(clock.clone()), rng_seed: Some(7), ..StoreOptions::default() }
}

async fn open(dir: &Path, clock: &ManualClock) -> Store {
    Store::open(&dir.join("store.db"), opts(clock)).await.expect("open store")
}

fn payload(conv: Uuid, prompt: Uuid) -> ValidPayload {
    validate_value(&json!({
        "conversationId": conv.to_string(),
        "promptId": prompt.to_string(),
        "triggerConditions": [{"type": "keyword", "value": "refund"}],
        "displaySettings": {"delayMs": 1000, "maxConcurrentPrompts": 2, "autoDismissMs": 30000},
        "webhookUrl": HOOK,
        "contextData": {"crmCase": "C-1", "note": "quote \" and é"},
        "prompt": {"title": "Refund policy", "body": "Offer the 30-day refund.", "url": "https://kb.example.com/r", "priority": "high"}
    }))
    .expect("valid payload")
}

fn row(conv: Uuid, status: InjectionStatus, at: i64) -> InjectionRow {
    let prompt = Uuid::from_u128(0xfeed);
    let p = payload(conv, prompt);
    let content = p.inline_prompt().cloned().expect("inline prompt");
    let mut r = InjectionRow::new(Uuid::now_v7(), status, p, content, Source::Api, at);
    r.api_key_id = Some("crm".into());
    r
}

fn draft(r: &InjectionRow, status: &str) -> AuditDraft {
    AuditDraft {
        conversation_id: r.conversation_id,
        prompt_id: r.prompt_id,
        injection_id: r.id,
        status: status.into(),
        latency_ms: Some(3),
        error: None,
        actor: "api-key:crm".into(),
        reason: None,
    }
}

fn insert(r: &InjectionRow, outbox: Vec<OutboxRow>) -> WriteOp {
    WriteOp::InsertInjection { row: Box::new(r.clone()), audit: vec![draft(r, "accepted")], outbox, idempotency: None }
}

fn update(r: &InjectionRow, from: InjectionStatus, to: InjectionStatus, at: i64) -> InjectionUpdate {
    InjectionUpdate::new(r.id, from, to, at, draft(r, to.as_str()))
}

async fn all_records(store: &Store) -> Vec<AuditRecord> {
    let batches: Vec<Vec<AuditRecord>> = store.audit_stream(0, 97).try_collect().await.expect("stream");
    batches.into_iter().flatten().collect()
}

fn assert_valid(
    records: &[AuditRecord],
    anchor: Option<&Checkpoint>,
    cps: &[Checkpoint],
    keys: &[audit::AuditPublicKey],
) {
    let v = audit::verify(records, anchor, cps, keys);
    assert!(v.is_valid(), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn insert_then_read_back_with_timeline() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let store = open(dir.path(), &clock).await;
    let conv = Uuid::new_v4();
    let r = row(conv, InjectionStatus::Scheduled, T0);
    let hook = OutboxRow::new(r.id, HOOK, "AGENT_ASSIST_PROMPT_INJECTED", &b"{\"x\":1}"[..], T0);
    let recs = store.write(insert(&r, vec![hook.clone()])).await.unwrap();
    assert_eq!(recs.len(), 1);
    assert_eq!((recs[0].seq, recs[0].status.as_str()), (1, "accepted"));
    assert_eq!(recs[0].timestamp.unix_millis(), T0);

    let mut u = update(&r, InjectionStatus::Scheduled, InjectionStatus::Delivered, T0 + 1000);
    u.show_at = Some(T0 + 1000);
    u.expires_at = Some(T0 + 31_000);
    clock.advance(1000);
    let recs = store.write(WriteOp::UpdateInjection(Box::new(u))).await.unwrap();
    assert_eq!(recs[0].seq, 2);

    let got = store.get_injection(r.id).await.unwrap().expect("stored");
    let mut want = r.clone();
    want.status = InjectionStatus::Delivered;
    want.show_at = Some(T0 + 1000);
    want.expires_at = Some(T0 + 31_000);
    want.updated_at = T0 + 1000;
    assert_eq!(got.row, want, "the row reads back field for field, payload re-validated");
    assert_eq!(got.row.priority, Priority::High);
    let statuses: Vec<_> = got.timeline.iter().map(|t| (t.seq, t.status.as_str())).collect();
    assert_eq!(statuses, [(1, "accepted"), (2, "delivered")]);
    assert_eq!(store.outbox_get(&hook.id).await.unwrap(), Some(hook));
    assert!(store.get_injection(Uuid::now_v7()).await.unwrap().is_none());

    // Live while on screen, gone once auto-dismissed.
    assert_eq!(store.conversation_prompts(conv, T0 + 30_999).await.unwrap().len(), 1);
    assert!(store.conversation_prompts(conv, T0 + 31_000).await.unwrap().is_empty());
    assert!(store.conversation_prompts(Uuid::new_v4(), T0).await.unwrap().is_empty());

    let head = store.audit_head().await.unwrap();
    assert_eq!((head.last_seq, head.last_hash, head.last_at), (2, got.timeline[1].hash, T0 + 1000));
    store.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_commit_batches_a_thousand_concurrent_writes() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("gc.db"), StoreOptions::default()).await.unwrap();
    let conv = Uuid::new_v4();
    let mut tasks = Vec::new();
    for _ in 0..1000 {
        let store = store.clone();
        let r = row(conv, InjectionStatus::Scheduled, T0);
        let hook = OutboxRow::new(r.id, HOOK, "AGENT_ASSIST_PROMPT_INJECTED", &b"{}"[..], T0);
        tasks.push(tokio::spawn(async move { store.write(insert(&r, vec![hook])).await }));
    }
    let mut seqs = Vec::new();
    for t in tasks {
        let recs = t.await.unwrap().expect("every write commits");
        assert_eq!(recs.len(), 1);
        seqs.push(recs[0].seq);
    }
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=1000).collect::<Vec<u64>>(), "each caller got its own seq, without gaps");

    let records = all_records(&store).await;
    assert_eq!(records.len(), 1000);
    assert_valid(&records, None, &[], &[]);
    let stats = store.stats();
    assert_eq!((stats.batches, stats.records, stats.failed_batches), (1000, 1000, 0));
    assert!(stats.transactions <= 100, "group commit must share transactions: {stats:?}");
    assert_eq!(store.outbox_stats(T0).await.unwrap().pending, 1000);
    store.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn optimistic_update_conflicts_and_failed_batches_undo_only_themselves() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let store = open(dir.path(), &clock).await;
    let a = row(Uuid::new_v4(), InjectionStatus::Queued, T0);
    let b = row(Uuid::new_v4(), InjectionStatus::Queued, T0);
    store.write(vec![insert(&a, vec![]), insert(&b, vec![])]).await.unwrap();

    // Wrong expectation: Conflict naming the actual status; nothing written, no audit record.
    let stale = update(&a, InjectionStatus::Scheduled, InjectionStatus::Delivered, T0);
    match store.write(WriteOp::UpdateInjection(Box::new(stale))).await {
        Err(StoreError::Conflict { id, expected, actual }) => {
            assert_eq!((id, expected, actual), (a.id, InjectionStatus::Scheduled, InjectionStatus::Queued))
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    let ghost = Uuid::now_v7();
    let mut missing =
        InjectionUpdate::new(ghost, InjectionStatus::Queued, InjectionStatus::Cancelled, T0, draft(&a, "x"));
    missing.audit[0].injection_id = ghost;
    assert!(matches!(
        store.write(WriteOp::UpdateInjection(Box::new(missing))).await,
        Err(StoreError::NotFound { what: "injection", .. })
    ));
    assert_eq!(store.audit_head().await.unwrap().last_seq, 2);

    // Two racing changes from the same state: exactly one wins.
    let cancel = update(&a, InjectionStatus::Queued, InjectionStatus::Cancelled, T0);
    let admit = update(&a, InjectionStatus::Queued, InjectionStatus::Scheduled, T0);
    let (x, y) = tokio::join!(
        store.write(WriteOp::UpdateInjection(Box::new(cancel))),
        store.write(WriteOp::UpdateInjection(Box::new(admit)))
    );
    assert_eq!([x.is_ok(), y.is_ok()].iter().filter(|ok| **ok).count(), 1, "{x:?} {y:?}");
    assert!(matches!(x.as_ref().err().or(y.as_ref().err()), Some(StoreError::Conflict { .. })));

    // A batch whose second op conflicts after its first wrote is undone as a whole, while a
    // batch sharing its transaction commits. Submitted together so they share a drain.
    let ok_b = update(&b, InjectionStatus::Queued, InjectionStatus::Scheduled, T0);
    let now_a = store.get_injection(a.id).await.unwrap().unwrap().row.status;
    let c = row(Uuid::new_v4(), InjectionStatus::Armed, T0);
    let doomed = WriteBatch::new().with(insert(&c, vec![])).with(WriteOp::UpdateInjection(Box::new(update(
        &a,
        InjectionStatus::Armed,
        InjectionStatus::Failed,
        T0,
    ))));
    let (bad, good) = tokio::join!(store.write(doomed), store.write(WriteOp::UpdateInjection(Box::new(ok_b))));
    assert!(matches!(bad, Err(StoreError::Conflict { .. })), "{bad:?}");
    let good = good.expect("the other batch commits");
    assert!(store.get_injection(c.id).await.unwrap().is_none(), "the failed batch's insert was undone");
    assert_eq!(store.get_injection(a.id).await.unwrap().unwrap().row.status, now_a);
    assert_eq!(store.get_injection(b.id).await.unwrap().unwrap().row.status, InjectionStatus::Scheduled);
    let records = all_records(&store).await;
    assert_eq!(records.last().unwrap(), good.last().unwrap());
    assert_eq!(records.len() as u64, store.audit_head().await.unwrap().last_seq);
    assert_valid(&records, None, &[], &[]);
    let stats = store.stats();
    assert!(stats.failed_batches >= 4 && stats.replays >= 1, "{stats:?}");

    // Bad input is refused with a message, not stored.
    assert!(matches!(store.write(insert(&b, vec![])).await, Err(StoreError::Duplicate { what: "injection", .. })));
    let mut wrong = update(&b, InjectionStatus::Scheduled, InjectionStatus::Delivered, T0);
    wrong.audit[0].conversation_id = Uuid::new_v4();
    let err = store.write(WriteOp::UpdateInjection(Box::new(wrong))).await.unwrap_err();
    assert!(matches!(err, StoreError::Invalid(_)) && err.to_string().contains("must name its conversation"), "{err}");
    assert_eq!(store.get_injection(b.id).await.unwrap().unwrap().row.status, InjectionStatus::Scheduled);
    let stray = OutboxRow::new(Uuid::now_v7(), HOOK, "X", &b""[..], T0);
    let err = store.write(WriteOp::RecordEvent { audit: draft(&b, "viewed"), outbox: vec![stray] }).await.unwrap_err();
    assert!(matches!(err, StoreError::Invalid(_)), "{err}");
    store.write(WriteOp::RecordEvent { audit: draft(&b, "viewed"), outbox: vec![] }).await.unwrap();
    let tl = store.get_injection(b.id).await.unwrap().unwrap().timeline;
    assert_eq!(tl.last().unwrap().status, "viewed");
    assert_valid(&all_records(&store).await, None, &[], &[]);
    store.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbox_lifecycle() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let store = open(dir.path(), &clock).await;
    let r = row(Uuid::new_v4(), InjectionStatus::Scheduled, T0);
    let gone = "https://gone.example.com/hook";
    let m1 = OutboxRow::new(r.id, HOOK, "AGENT_ASSIST_PROMPT_INJECTED", &b"one"[..], T0);
    let m2 = OutboxRow::new(r.id, gone, "AGENT_ASSIST_PROMPT_INJECTED", &b"two"[..], T0 + 1);
    assert!(m1.id.starts_with("msg_") && m1.id.len() == 36, "{}", m1.id);
    store.write(insert(&r, vec![m1.clone(), m2.clone()])).await.unwrap();

    let due = store.outbox_due(T0 + 5, 10).await.unwrap();
    assert_eq!(due.iter().map(|m| m.id.as_str()).collect::<Vec<_>>(), [m1.id.as_str(), m2.id.as_str()]);
    assert_eq!(due[1].body.as_ref(), b"two");
    assert_eq!(store.outbox_due(T0 + 5, 1).await.unwrap().len(), 1);
    let stats = store.outbox_stats(T0 + 100).await.unwrap();
    assert_eq!((stats.pending, stats.due, stats.oldest_pending_age_ms), (2, 2, Some(100)));

    // m1: fails once (retry later), then delivered.
    let retry = WriteOp::OutboxRetry {
        id: m1.id.clone(),
        attempts: 1,
        next_at: T0 + 60_000,
        last_status: Some(503),
        last_error: Some("service unavailable".into()),
    };
    store.write(retry).await.unwrap();
    assert_eq!(store.outbox_due(T0 + 59_999, 10).await.unwrap().len(), 1, "m1 is not due before next_at");
    let m1_now = store.outbox_get(&m1.id).await.unwrap().unwrap();
    assert_eq!((m1_now.attempts, m1_now.last_status, m1_now.state), (1, Some(503), OutboxState::Pending));
    store
        .write(WriteOp::OutboxDelivered { id: m1.id.clone(), attempts: 2, status: 204, at: T0 + 60_001 })
        .await
        .unwrap();
    let m1_now = store.outbox_get(&m1.id).await.unwrap().unwrap();
    assert_eq!(
        (m1_now.state, m1_now.delivered_at, m1_now.last_error),
        (OutboxState::Delivered, Some(T0 + 60_001), None)
    );
    let again = store.write(WriteOp::OutboxDelivered { id: m1.id.clone(), attempts: 3, status: 200, at: T0 }).await;
    assert!(matches!(again, Err(StoreError::OutboxNotPending { ref state, .. }) if state == "delivered"), "{again:?}");
    let unknown = store
        .write(WriteOp::OutboxRetry {
            id: "msg_x".into(),
            attempts: 1,
            next_at: 0,
            last_status: None,
            last_error: None,
        })
        .await;
    assert!(matches!(unknown, Err(StoreError::NotFound { .. })));

    // m2: dead-lettered, redriven, then its endpoint answers 410 and is disabled.
    store
        .write(WriteOp::OutboxDead {
            id: m2.id.clone(),
            attempts: 8,
            last_status: Some(500),
            last_error: Some("boom".into()),
        })
        .await
        .unwrap();
    let stats = store.outbox_stats(T0).await.unwrap();
    assert_eq!((stats.pending, stats.dead, stats.oldest_pending_age_ms), (0, 1, None));
    assert_eq!(store.outbox_list(Some(OutboxState::Dead), 10).await.unwrap()[0].id, m2.id);
    clock.set(T0 + 120_000);
    let out = store.write_outcome(WriteOp::RedriveOutbox(Redrive::AllDead)).await.unwrap();
    assert_eq!(out.affected, [1]);
    let m2_now = store.outbox_get(&m2.id).await.unwrap().unwrap();
    assert_eq!((m2_now.state, m2_now.attempts, m2_now.next_attempt_at), (OutboxState::Pending, 0, T0 + 120_000));
    let out =
        store.write_outcome(WriteOp::DisableEndpoint { url: gone.into(), reason: "410 Gone".into() }).await.unwrap();
    assert_eq!(out.affected, [1], "its pending message is disabled");
    assert_eq!(store.outbox_get(&m2.id).await.unwrap().unwrap().state, OutboxState::Disabled);
    let eps = store.disabled_endpoints().await.unwrap();
    assert_eq!((eps.len(), eps[0].url.as_str(), eps[0].disabled_at), (1, gone, T0 + 120_000));
    // A new event for a disabled endpoint is filed, not sent.
    let m3 = OutboxRow::new(r.id, gone, "AGENT_ASSIST_PROMPT_VIEWED", &b"three"[..], T0 + 2);
    store.write(WriteOp::RecordEvent { audit: draft(&r, "viewed"), outbox: vec![m3.clone()] }).await.unwrap();
    assert_eq!(store.outbox_get(&m3.id).await.unwrap().unwrap().state, OutboxState::Disabled);
    assert!(store.outbox_due(i64::MAX, 10).await.unwrap().is_empty());
    assert_eq!(store.outbox_stats(T0).await.unwrap().disabled, 2);

    // Re-enabled and redriven by id; an unknown id fails the batch.
    let bad = store.write(WriteOp::RedriveOutbox(Redrive::Ids(vec![m3.id.clone(), "msg_nope".into()]))).await;
    assert!(matches!(bad, Err(StoreError::NotFound { .. })));
    assert_eq!(store.outbox_get(&m3.id).await.unwrap().unwrap().state, OutboxState::Disabled, "undone");
    let out = store
        .write_outcome(vec![
            WriteOp::EnableEndpoint { url: gone.into() },
            WriteOp::RedriveOutbox(Redrive::Endpoint(gone.into())),
        ])
        .await
        .unwrap();
    assert_eq!(out.affected, [1, 2]);
    assert!(store.disabled_endpoints().await.unwrap().is_empty());
    assert_eq!(store.outbox_due(T0 + 120_000, 10).await.unwrap().len(), 2);
    assert_eq!(store.outbox_list(None, 10).await.unwrap().len(), 3);

    let out = store.write_outcome(WriteOp::PurgeOutbox { delivered_before: T0 + 60_002 }).await.unwrap();
    assert_eq!(out.affected, [1]);
    assert!(store.outbox_get(&m1.id).await.unwrap().is_none());
    store.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_keys_hold_for_24_hours() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let store = open(dir.path(), &clock).await;
    let answer = |id: Uuid, at: i64| IdempotencyRow {
        api_key_id: "crm".into(),
        key: "order-42".into(),
        request_hash: "abc123".into(),
        status_code: 201,
        response_body: format!("{{\"injectionId\":\"{id}\"}}").into_bytes().into(),
        injection_id: Some(id),
        created_at: at,
    };
    let with_key = |r: &InjectionRow, at: i64| WriteOp::InsertInjection {
        row: Box::new(r.clone()),
        audit: vec![draft(r, "accepted")],
        outbox: vec![],
        idempotency: Some(answer(r.id, at)),
    };
    let first = row(Uuid::new_v4(), InjectionStatus::Scheduled, T0);
    store.write(with_key(&first, T0)).await.unwrap();
    let got = store.idempotency_get("crm", "order-42", T0 + 1000).await.unwrap().expect("stored");
    assert_eq!(got, answer(first.id, T0));
    assert!(store.idempotency_get("other-key", "order-42", T0).await.unwrap().is_none(), "keys are per API key");

    // Within 24 h the key creates nothing new.
    let second = row(Uuid::new_v4(), InjectionStatus::Scheduled, T0 + 1000);
    let err = store.write(with_key(&second, T0 + IDEMPOTENCY_TTL_MS - 1)).await.unwrap_err();
    assert!(matches!(err, StoreError::IdempotencyKeyInUse { .. }), "{err}");
    assert!(store.get_injection(second.id).await.unwrap().is_none());
    assert_eq!(store.audit_head().await.unwrap().last_seq, 1);

    // After 24 h the old answer is ignored and the key may be used again.
    let later = T0 + IDEMPOTENCY_TTL_MS;
    assert!(store.idempotency_get("crm", "order-42", later).await.unwrap().is_none());
    store.write(with_key(&second, later)).await.unwrap();
    assert_eq!(store.idempotency_get("crm", "order-42", later).await.unwrap().unwrap().injection_id, Some(second.id));

    // A stored answer without an injection (a 409 to replay), then purging the old ones.
    let mut reject = answer(Uuid::nil(), T0);
    reject.key = "order-43".into();
    reject.injection_id = None;
    reject.status_code = 409;
    store.write(WriteOp::PutIdempotency(reject.clone())).await.unwrap();
    assert!(matches!(store.write(WriteOp::PutIdempotency(reject)).await, Err(StoreError::IdempotencyKeyInUse { .. })));
    clock.set(later + 1);
    let out = store.write_outcome(WriteOp::PurgeIdempotency).await.unwrap();
    assert_eq!(out.affected, [1], "only the answer older than 24 h goes");
    assert!(store.idempotency_get("crm", "order-42", later + 1).await.unwrap().is_some());
    store.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_set_sorts_live_injections() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let store = open(dir.path(), &clock).await;
    let conv = Uuid::new_v4();
    let mut ops = Vec::new();
    let mut ids = std::collections::HashMap::new();
    for (i, (status, expires)) in [
        (InjectionStatus::Armed, None),
        (InjectionStatus::Scheduled, None),
        (InjectionStatus::Queued, None),
        (InjectionStatus::Delivered, Some(T0 + 50_000)),
        (InjectionStatus::Delivered, Some(T0 + 5_000)),
        (InjectionStatus::Clicked, None),
        (InjectionStatus::Cancelled, None),
    ]
    .into_iter()
    .enumerate()
    {
        let mut r = row(conv, status, T0 + i as i64);
        r.expires_at = expires;
        ids.insert(r.id, (status, expires));
        ops.push(insert(&r, vec![]));
    }
    store.write(ops).await.unwrap();
    let set = store.recovery_set(T0 + 10_000).await.unwrap();
    let statuses = |rows: &[InjectionRow]| rows.iter().map(|r| r.status).collect::<Vec<_>>();
    assert_eq!(
        statuses(&set.pending),
        [InjectionStatus::Armed, InjectionStatus::Scheduled, InjectionStatus::Queued],
        "oldest first"
    );
    assert_eq!(set.shown.len(), 1);
    assert_eq!(set.shown[0].expires_at, Some(T0 + 50_000));
    assert_eq!(set.expired.len(), 1);
    assert_eq!(set.expired[0].expires_at, Some(T0 + 5_000));
    assert_eq!(store.conversation_prompts(conv, T0 + 10_000).await.unwrap().len(), 4);
    store.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_resumes_the_chain_and_keeps_acknowledged_writes() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let store = open(dir.path(), &clock).await;
    let first: Vec<InjectionRow> = (0..5).map(|_| row(Uuid::new_v4(), InjectionStatus::Scheduled, T0)).collect();
    for r in &first {
        store.write(insert(r, vec![])).await.unwrap();
    }
    let head = store.audit_head().await.unwrap();
    store.close().await.unwrap();
    assert!(matches!(store.write(insert(&first[0], vec![])).await, Err(StoreError::Closed)));

    // Reopen, even with a clock that went backwards: record times never do.
    clock.set(T0 - DAY_MS);
    let store = open(dir.path(), &clock).await;
    assert_eq!(store.audit_head().await.unwrap(), head);
    for r in &first {
        assert!(store.get_injection(r.id).await.unwrap().is_some());
    }
    let r = row(Uuid::new_v4(), InjectionStatus::Scheduled, T0);
    let recs = store.write(insert(&r, vec![])).await.unwrap();
    assert_eq!((recs[0].seq, recs[0].prev_hash), (6, head.last_hash));
    assert_eq!(recs[0].timestamp.unix_millis(), T0, "clamped to the last record's time");
    assert_valid(&all_records(&store).await, None, &[], &[]);

    // Dropped without close: everything acknowledged is in the files. Snapshot the database
    // and its WAL while the store is still open, as a crash would leave them, and open that.
    let r2 = row(Uuid::new_v4(), InjectionStatus::Queued, T0);
    store.write(insert(&r2, vec![])).await.unwrap();
    let snap = tempfile::tempdir().unwrap();
    for suffix in ["", "-wal"] {
        let from = dir.path().join(format!("store.db{suffix}"));
        if from.exists() {
            std::fs::copy(&from, snap.path().join(format!("store.db{suffix}"))).unwrap();
        }
    }
    drop(store);
    let crashed = open(snap.path(), &clock).await;
    assert_eq!(crashed.audit_head().await.unwrap().last_seq, 7);
    assert_eq!(crashed.get_injection(r2.id).await.unwrap().unwrap().row.status, InjectionStatus::Queued);
    let records = all_records(&crashed).await;
    assert_eq!(records.len(), 7);
    assert_valid(&records, None, &[], &[]);
    crashed.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_transaction_answers_everyone_and_the_chain_stays_whole() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.db");
    let clock = ManualClock::new(T0);
    let opts = StoreOptions { busy_timeout: Duration::from_millis(100), ..opts(&clock) };
    let store = Store::open(&path, opts).await.unwrap();
    let r = row(Uuid::new_v4(), InjectionStatus::Scheduled, T0);
    store.write(insert(&r, vec![])).await.unwrap();

    // Another process takes the write lock: the writer's transaction cannot start.
    let mut other = sqlx::sqlite::SqliteConnectOptions::new().filename(&path).connect().await.unwrap();
    sqlx::query("BEGIN IMMEDIATE").execute(&mut other).await.unwrap();
    let rows: Vec<InjectionRow> = (0..20).map(|_| row(Uuid::new_v4(), InjectionStatus::Scheduled, T0)).collect();
    let results = futures::future::join_all(rows.iter().map(|r| store.write(insert(r, vec![])))).await;
    for res in &results {
        let err = res.as_ref().expect_err("nothing can commit while the lock is held");
        assert!(matches!(err, StoreError::Database { .. } | StoreError::Sqlite { .. }) && err.is_retryable(), "{err}");
    }
    assert!(store.stats().failed_transactions >= 1);
    sqlx::query("ROLLBACK").execute(&mut other).await.unwrap();
    drop(other);

    // Nothing of the failed transaction exists; the chain continues from seq 2.
    for r in &rows {
        assert!(store.get_injection(r.id).await.unwrap().is_none());
    }
    let recs = store.write(insert(&rows[0], vec![])).await.unwrap();
    assert_eq!(recs[0].seq, 2);
    let records = all_records(&store).await;
    assert_eq!(records.len(), 2);
    assert_valid(&records, None, &[], &[]);

    // The triggers keep audit records append-only even for direct SQL.
    let mut other = sqlx::sqlite::SqliteConnectOptions::new().filename(&path).connect().await.unwrap();
    let upd = sqlx::query("UPDATE audit_records SET actor = 'mallory' WHERE seq = 1").execute(&mut other).await;
    assert!(upd.unwrap_err().to_string().contains("append-only"));
    let del = sqlx::query("DELETE FROM audit_records WHERE seq = 1").execute(&mut other).await;
    assert!(del.unwrap_err().to_string().contains("retention purge"));
    store.close().await.unwrap();
}

/// Twenty scheduled rows; row `marked` carries `tag` as its last error, which a test trigger
/// named `tag` acts on.
fn marked_rows(marked: usize, tag: &str) -> Vec<InjectionRow> {
    (0..20)
        .map(|i| {
            let mut r = row(Uuid::new_v4(), InjectionStatus::Scheduled, T0);
            r.last_error = (i == marked).then(|| tag.to_owned());
            r
        })
        .collect()
}

/// Queues `rows` as one drain behind a transaction that waits for another connection's lock,
/// so they share ONE transaction; returns each write's answer.
async fn one_drain(
    store: &Store,
    path: &Path,
    rows: &[InjectionRow],
    extra: impl Fn(&InjectionRow) -> WriteOp,
) -> Vec<Result<Vec<AuditRecord>, StoreError>> {
    let mut other = sqlx::sqlite::SqliteConnectOptions::new().filename(path).connect().await.unwrap();
    sqlx::query("BEGIN IMMEDIATE").execute(&mut other).await.unwrap();
    // The writer takes this one alone and waits in BEGIN for the lock...
    let blocker = row(Uuid::new_v4(), InjectionStatus::Scheduled, T0);
    let first = tokio::spawn({
        let store = store.clone();
        let op = insert(&blocker, vec![]);
        async move { store.write(op).await }
    });
    tokio::time::sleep(Duration::from_millis(150)).await;
    // ...while these queue up behind it.
    let writes: Vec<_> = rows
        .iter()
        .map(|r| {
            let store = store.clone();
            let op = extra(r);
            tokio::spawn(async move { store.write(op).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(150)).await;
    sqlx::query("ROLLBACK").execute(&mut other).await.unwrap();
    first.await.unwrap().unwrap();
    let mut out = Vec::new();
    for w in writes {
        out.push(w.await.unwrap());
    }
    out
}

/// Failures in the middle of a native group commit: a statement refused by a constraint fails
/// its batch alone (replayed with savepoints when the batch had written already, so its
/// earlier rows are undone too); a failure that ends SQLite's transaction (a trigger's
/// `RAISE(ROLLBACK)`) fails every batch of the drain, commits nothing, and the chain carries
/// on gap-free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_failures_mid_transaction_roll_back_and_are_reported_to_every_waiter() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.db");
    let clock = ManualClock::new(T0);
    let store = Store::open(&path, opts(&clock)).await.unwrap();
    let mut other = sqlx::sqlite::SqliteConnectOptions::new().filename(&path).connect().await.unwrap();
    for (name, action) in [("refuse", "ABORT"), ("end", "ROLLBACK")] {
        sqlx::query(&format!(
            "CREATE TRIGGER test_{name} BEFORE INSERT ON injections WHEN NEW.last_error = '{name}' \
             BEGIN SELECT RAISE({action}, 'test trigger: {name}'); END"
        ))
        .execute(&mut other)
        .await
        .unwrap();
    }
    drop(other);

    // 1. One refused batch among 20, after it stored its idempotency answer: it alone fails.
    let rows = marked_rows(7, "refuse");
    let replays = store.stats().replays;
    let with_key = |r: &InjectionRow| WriteOp::InsertInjection {
        row: Box::new(r.clone()),
        audit: vec![draft(r, "accepted")],
        outbox: vec![],
        idempotency: Some(IdempotencyRow {
            api_key_id: "crm".into(),
            key: format!("k-{}", r.id),
            request_hash: "h".into(),
            status_code: 201,
            response_body: b"{}".to_vec().into(),
            injection_id: Some(r.id),
            created_at: T0,
        }),
    };
    let answers = one_drain(&store, &path, &rows, with_key).await;
    for (i, (r, a)) in rows.iter().zip(&answers).enumerate() {
        let stored = store.get_injection(r.id).await.unwrap();
        let key = store.idempotency_get("crm", &format!("k-{}", r.id), T0).await.unwrap();
        if i == 7 {
            let err = a.as_ref().expect_err("the refused batch fails");
            assert!(matches!(err, StoreError::Invalid(m) if m.contains("test trigger: refuse")), "{err}");
            assert!(stored.is_none() && key.is_none(), "the refused batch's rows are undone");
        } else {
            assert_eq!(a.as_ref().unwrap().len(), 1, "batch {i}");
            assert!(stored.is_some() && key.is_some(), "batch {i} is stored");
        }
    }
    assert!(store.stats().replays > replays, "the drain was replayed with savepoints");

    // 2. A batch whose failure ends the transaction: every waiter of the drain gets the error.
    let rows = marked_rows(11, "end");
    let failed = store.stats().failed_transactions;
    let answers = one_drain(&store, &path, &rows, |r| insert(r, vec![])).await;
    for (r, a) in rows.iter().zip(&answers) {
        let err = a.as_ref().expect_err("nothing of the drain commits");
        assert!(err.to_string().contains("test trigger: end"), "{err}");
        assert!(store.get_injection(r.id).await.unwrap().is_none());
    }
    assert_eq!(store.stats().failed_transactions, failed + 1);

    // The chain carries on from the last committed record, gap-free, and verifies.
    let before = store.audit_head().await.unwrap().last_seq;
    let r = row(Uuid::new_v4(), InjectionStatus::Scheduled, T0);
    let recs = store.write(insert(&r, vec![])).await.unwrap();
    assert_eq!(recs[0].seq, before + 1);
    let records = all_records(&store).await;
    assert_eq!(records.len() as u64, before + 1);
    assert_valid(&records, None, &[], &[]);
    store.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoints_and_retention_purges() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0 + 3_600_000);
    let store = open(dir.path(), &clock).await;
    let key = AuditKey::generate(&mut StdRng::seed_from_u64(1));
    let keys = [key.public()];
    // Three records on each of May 1, 2 and 3.
    for d in 0..3 {
        clock.set(T0 + d * DAY_MS + 3_600_000);
        for _ in 0..3 {
            let r = row(Uuid::new_v4(), InjectionStatus::Scheduled, clock_now(&clock));
            store.write(insert(&r, vec![])).await.unwrap();
        }
    }
    let days = store.audit_days().await.unwrap();
    let may = |d| NaiveDate::from_ymd_opt(2024, 5, d).unwrap();
    assert_eq!(
        days.iter().map(|d| (d.day, d.first_seq, d.last_seq, d.count)).collect::<Vec<_>>(),
        [(may(1), 1, 3, 3), (may(2), 4, 6, 3), (may(3), 7, 9, 3)]
    );

    // Sign May 1 and 2 as a checkpointer would, from the stored last record of each day.
    let created = audit::AuditTime::from_unix_millis(T0 + 3 * DAY_MS).unwrap();
    let mut cps = Vec::new();
    for d in &days[..2] {
        let last = store.audit_record(d.last_seq).await.unwrap().unwrap();
        let cp = Checkpoint::sign(d.day, d.last_seq, last.hash, d.count, created, &key);
        assert_eq!(store.write_outcome(WriteOp::PutCheckpoint(cp.clone())).await.unwrap().affected, [1]);
        cps.push(cp);
    }
    assert_eq!(store.write_outcome(WriteOp::PutCheckpoint(cps[0].clone())).await.unwrap().affected, [0], "idempotent");
    let forged = Checkpoint::sign(may(1), 3, audit::Digest([1; 32]), 3, created, &key);
    assert!(matches!(store.write(WriteOp::PutCheckpoint(forged)).await, Err(StoreError::Invalid(_))));
    let other_day = Checkpoint::sign(may(1), 2, store.audit_record(2).await.unwrap().unwrap().hash, 2, created, &key);
    assert!(matches!(store.write(WriteOp::PutCheckpoint(other_day)).await, Err(StoreError::CheckpointConflict { .. })));
    assert_eq!(store.checkpoints().await.unwrap(), cps);

    // Refused: a day without a checkpoint, and a purge that skips the oldest day.
    let no_cp = store.write(WriteOp::PurgeDays { days: vec![may(1), may(2), may(3)], through_seq: 9 }).await;
    assert!(matches!(no_cp, Err(StoreError::InvalidPurge(ref m)) if m.contains("no stored checkpoint")), "{no_cp:?}");
    let skip = store.write(WriteOp::PurgeDays { days: vec![may(2)], through_seq: 6 }).await;
    assert!(matches!(skip, Err(StoreError::InvalidPurge(ref m)) if m.contains("whole days")), "{skip:?}");

    // Planned with a 1-day retention on May 4: May 1 and 2 go.
    let plan = audit::purge_plan(&days, &cps, &keys, 1, may(4));
    assert_eq!((plan.days.clone(), plan.through_seq, plan.records), (vec![may(1), may(2)], Some(6), 6));
    let out = store
        .write_outcome(WriteOp::PurgeDays { days: plan.days.clone(), through_seq: plan.through_seq.unwrap() })
        .await
        .unwrap();
    assert_eq!(out.affected, [6]);
    let left = store.audit_days().await.unwrap();
    assert_eq!((left.len(), left[0].day), (1, may(3)));
    let purges = store.purges().await.unwrap();
    assert_eq!(
        purges.iter().map(|p| (p.day, p.first_seq, p.last_seq, p.record_count)).collect::<Vec<_>>(),
        [(may(1), 1, 3, 3), (may(2), 4, 6, 3)]
    );
    let again = store.write(WriteOp::PurgeDays { days: vec![may(2)], through_seq: 6 }).await;
    assert!(matches!(again, Err(StoreError::InvalidPurge(_))));

    // What is left verifies from the anchor, reporting the purged records.
    let records = all_records(&store).await;
    assert_eq!(records.first().map(|r| r.seq), Some(7));
    let verdict = audit::verify(&records, plan.anchor.as_ref(), &cps, &keys);
    assert_eq!(verdict, Verdict::Valid { records: 3, first_seq: 7, last_seq: 9, purged: 6 });

    // The chain resumes after a restart even with old days purged.
    store.close().await.unwrap();
    let store = open(dir.path(), &clock).await;
    let r = row(Uuid::new_v4(), InjectionStatus::Scheduled, T0);
    assert_eq!(store.write(insert(&r, vec![])).await.unwrap()[0].seq, 10);
    let verdict = audit::verify(&all_records(&store).await, plan.anchor.as_ref(), &cps, &keys);
    assert!(verdict.is_valid(), "{verdict}");
    store.close().await.unwrap();
}

fn clock_now(c: &ManualClock) -> i64 {
    use gc_assist::store::Clock;
    c.now_ms()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prompts_catalogue_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let store = open(dir.path(), &clock).await;
    let entry = |n: u128, title: &str, tags: &[&str]| CatalogueEntry {
        id: Uuid::from_u128(n),
        name: (n % 2 == 0).then(|| format!("prompt {n}")),
        content: PromptContent {
            title: title.into(),
            body: "Say the thing.".into(),
            url: (n == 1).then(|| "https://kb.example.com/a".parse().unwrap()),
            priority: if n == 2 { Priority::Critical } else { Priority::Normal },
        },
        tags: tags.iter().map(|t| t.to_string()).collect(),
    };
    let first = vec![entry(1, "One", &["billing"]), entry(2, "Two", &[])];
    store.write(WriteOp::UpsertPrompts(first.clone())).await.unwrap();
    assert_eq!(store.prompts_all().await.unwrap(), first);
    let changed = entry(1, "One, revised", &["billing", "refund"]);
    store.write(WriteOp::UpsertPrompts(vec![changed.clone(), entry(3, "Three", &[])])).await.unwrap();
    assert_eq!(store.prompts_all().await.unwrap(), vec![changed, entry(2, "Two", &[]), entry(3, "Three", &[])]);
    store.write(WriteOp::ReplacePrompts(vec![entry(4, "Four", &[])])).await.unwrap();
    assert_eq!(store.prompts_all().await.unwrap(), vec![entry(4, "Four", &[])]);
    store.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_stream_pages_through_the_chain() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let store = open(dir.path(), &clock).await;
    let r = row(Uuid::new_v4(), InjectionStatus::Armed, T0);
    let mut ops = vec![insert(&r, vec![])];
    ops.extend((0..9).map(|_| WriteOp::RecordEvent { audit: draft(&r, "viewed"), outbox: vec![] }));
    assert_eq!(store.write(ops).await.unwrap().len(), 10);
    for (from, batch, sizes) in [(0, 4, vec![4, 4, 2]), (1, 5, vec![5, 5]), (7, 100, vec![4]), (11, 3, vec![])] {
        let got: Vec<Vec<AuditRecord>> = store.audit_stream(from, batch).try_collect().await.unwrap();
        assert_eq!(got.iter().map(Vec::len).collect::<Vec<_>>(), sizes, "from {from} by {batch}");
        let seqs: Vec<u64> = got.into_iter().flatten().map(|r| r.seq).collect();
        assert_eq!(seqs, (from.max(1)..=10).collect::<Vec<_>>());
    }
    assert_eq!(store.audit_batch(3, 2).await.unwrap().iter().map(|r| r.seq).collect::<Vec<_>>(), [3, 4]);
    store.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_batch_among_many_fails_alone() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let store = open(dir.path(), &clock).await;
    let first = row(Uuid::new_v4(), InjectionStatus::Scheduled, T0);
    store.write(insert(&first, vec![])).await.unwrap();
    // Fifty good inserts with webhooks and status changes, submitted together with a
    // duplicate injection id and a batch repeating a webhook id: the multi-row statements of the
    // shared transaction fail, the drain is replayed batch by batch, and only the two bad
    // batches fail.
    let rows: Vec<InjectionRow> = (0..50).map(|_| row(Uuid::new_v4(), InjectionStatus::Queued, T0)).collect();
    let mut batches: Vec<WriteBatch> = rows
        .iter()
        .map(|r| {
            let hook = OutboxRow::new(r.id, HOOK, "AGENT_ASSIST_PROMPT_INJECTED", &b"{}"[..], T0);
            let admit = update(r, InjectionStatus::Queued, InjectionStatus::Scheduled, T0);
            WriteBatch::new().with(insert(r, vec![hook])).with(WriteOp::UpdateInjection(Box::new(admit)))
        })
        .collect();
    batches.insert(20, insert(&first, vec![]).into());
    let second = row(Uuid::new_v4(), InjectionStatus::Queued, T0);
    let once = OutboxRow::new(second.id, HOOK, "X", &b"{}"[..], T0);
    let twice = once.clone();
    batches.insert(35, WriteBatch::new().with(insert(&second, vec![once, twice])));
    let results = futures::future::join_all(batches.into_iter().map(|b| store.write(b))).await;
    for (i, res) in results.iter().enumerate() {
        match i {
            20 => assert!(matches!(res, Err(StoreError::Duplicate { what: "injection", .. })), "{res:?}"),
            35 => assert!(matches!(res, Err(StoreError::Duplicate { what: "webhook message", .. })), "{res:?}"),
            _ => assert_eq!(res.as_ref().map(Vec::len).ok(), Some(2), "batch {i}: {res:?}"),
        }
    }
    assert!(store.get_injection(second.id).await.unwrap().is_none());
    for r in &rows {
        assert_eq!(store.get_injection(r.id).await.unwrap().unwrap().row.status, InjectionStatus::Scheduled);
    }
    assert_eq!(store.outbox_stats(T0).await.unwrap().pending, 50);
    let records = all_records(&store).await;
    assert_eq!(records.len(), 101);
    assert_valid(&records, None, &[], &[]);
    assert!(store.stats().replays >= 1, "the buffered statements failed and were replayed: {:?}", store.stats());
    store.close().await.unwrap();
}

/// A rough throughput figure for the writer (not a benchmark: those live in benches/).
/// Run with `cargo test --test it store::throughput -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "prints a throughput figure; run by hand"]
async fn throughput() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("t.db"), StoreOptions::default()).await.unwrap();
    let n = 20_000;
    let conv = Uuid::new_v4();
    let rows: Vec<InjectionRow> = (0..n).map(|_| row(conv, InjectionStatus::Scheduled, T0)).collect();
    let started = std::time::Instant::now();
    let sem = Arc::new(tokio::sync::Semaphore::new(2048));
    let mut tasks = Vec::with_capacity(n);
    for r in rows {
        let store = store.clone();
        let permit = sem.clone().acquire_owned().await.unwrap();
        let hook = OutboxRow::new(r.id, HOOK, "AGENT_ASSIST_PROMPT_INJECTED", &b"{}"[..], T0);
        tasks.push(tokio::spawn(async move {
            let res = store.write(insert(&r, vec![hook])).await;
            drop(permit);
            res
        }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let secs = started.elapsed().as_secs_f64();
    let stats = store.stats();
    println!("{n} injections (row + audit + outbox) in {secs:.2}s = {:.0}/s; {stats:?}", n as f64 / secs);
    let started = std::time::Instant::now();
    let records = all_records(&store).await;
    let read = started.elapsed().as_secs_f64();
    let started = std::time::Instant::now();
    assert_valid(&records, None, &[], &[]);
    println!(
        "read {} records in {read:.2}s = {:.0}/s; verified in {:.3}s",
        records.len(),
        records.len() as f64 / read,
        started.elapsed().as_secs_f64()
    );
    store.close().await.unwrap();
}

/// Texts with quotes, controls, non-ASCII and NUL, and blobs with NUL, must read back byte
/// for byte, and the chain sealed over them must verify: through the writer's native path
/// (SQLite's C API, parameters bound in place)...
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn awkward_texts_read_back_exactly_from_native_writes() {
    awkward_texts(false).await;
}

/// ...and through the sqlx path, which a drain takes when a batch holds an operation without
/// a native form (here `PurgeIdempotency`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn awkward_texts_read_back_exactly_from_sqlx_writes() {
    awkward_texts(true).await;
}

async fn awkward_texts(via_sqlx: bool) {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let store = Store::open(&dir.path().join("store.db"), opts(&clock)).await.unwrap();
    let texts = ["plain", "quote \" back\\slash", "tab\tline\nfeed\u{1}", "é 😀 \u{7f}", "nul\0inside"];
    let mut rows = Vec::new();
    // First groups without a NUL, then groups with one.
    for phase in [&texts[..4], &texts[..]] {
        let mut tasks = Vec::new();
        for _ in 0..50 {
            let i = rows.len();
            let mut r = row(Uuid::new_v4(), InjectionStatus::Scheduled, T0);
            let text = phase[i % phase.len()];
            r.last_error = Some(format!("{i}: {text}"));
            let mut d = draft(&r, "accepted");
            d.error = Some(text.to_owned());
            d.reason = Some(format!("{text}{i}"));
            let body = format!("{{\"t\":{:?}}}\0{i}", text).into_bytes();
            let hook = OutboxRow::new(r.id, HOOK, "AGENT_ASSIST_PROMPT_INJECTED", body, T0);
            let op = WriteOp::InsertInjection {
                row: Box::new(r.clone()),
                audit: vec![d],
                outbox: vec![hook.clone()],
                idempotency: None,
            };
            rows.push((r, text, hook));
            let mut batch = WriteBatch::from(op);
            if via_sqlx {
                batch.push(WriteOp::PurgeIdempotency);
            }
            let store = store.clone();
            tasks.push(tokio::spawn(async move { store.write(batch).await }));
        }
        for t in tasks {
            t.await.unwrap().unwrap();
        }
    }
    for (i, (r, text, hook)) in rows.iter().enumerate() {
        let got = store.get_injection(r.id).await.unwrap().expect("stored");
        assert_eq!(got.row, *r, "row {i}");
        assert_eq!(got.timeline[0].error.as_deref(), Some(*text), "audit error {i}");
        assert_eq!(got.timeline[0].reason, Some(format!("{text}{i}")), "audit reason {i}");
        assert_eq!(store.outbox_get(&hook.id).await.unwrap().as_ref(), Some(hook), "webhook {i}");
    }
    let records = all_records(&store).await;
    assert_eq!(records.len(), 100);
    assert_valid(&records, None, &[], &[]);
    store.close().await.unwrap();
}

/// Migration 0005 (fewer write-path indexes) upgrades a file made by the schema before it,
/// with data in it, and every read the dropped indexes served answers the same rows.
#[tokio::test]
async fn migration_0005_upgrades_an_older_file_and_reads_the_same_rows() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let (conv_a, conv_b) = (Uuid::new_v4(), Uuid::new_v4());

    // The same data, written by today's store into `fresh.db`.
    let fresh_path = dir.path().join("fresh.db");
    let fresh = Store::open(&fresh_path, opts(&clock)).await.unwrap();
    let rows: Vec<InjectionRow> = [
        (conv_a, InjectionStatus::Scheduled, T0),
        (conv_a, InjectionStatus::Armed, T0 + 1),
        (conv_b, InjectionStatus::Scheduled, T0 + 2),
        (conv_b, InjectionStatus::Scheduled, T0 + 3),
    ]
    .into_iter()
    .map(|(c, s, at)| row(c, s, at))
    .collect();
    let mut messages = Vec::new();
    for (i, r) in rows.iter().enumerate() {
        let m = OutboxRow::new(r.id, HOOK, "AGENT_ASSIST_PROMPT_INJECTED", format!("m{i}").into_bytes(), T0 + i as i64);
        messages.push(m.clone());
        fresh.write(insert(r, vec![m])).await.unwrap();
    }
    // Some leave the live set or the pending state.
    let shown = update(&rows[2], InjectionStatus::Scheduled, InjectionStatus::Delivered, T0 + 10);
    fresh.write(WriteOp::UpdateInjection(Box::new(shown))).await.unwrap();
    let cancelled = update(&rows[3], InjectionStatus::Scheduled, InjectionStatus::Cancelled, T0 + 11);
    fresh.write(WriteOp::UpdateInjection(Box::new(cancelled))).await.unwrap();
    let delivered = WriteOp::OutboxDelivered { id: messages[0].id.clone(), attempts: 1, status: 204, at: T0 + 20 };
    fresh.write(delivered).await.unwrap();
    let dead =
        WriteOp::OutboxDead { id: messages[1].id.clone(), attempts: 8, last_status: Some(500), last_error: None };
    fresh.write(dead).await.unwrap();
    fresh.close().await.unwrap();

    // `old.db`: migrations 0001-0004 only, then the same rows copied in.
    let old_path = dir.path().join("old.db");
    let old_migrations = dir.path().join("migrations");
    std::fs::create_dir(&old_migrations).unwrap();
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations/sqlite");
    for entry in std::fs::read_dir(&source).unwrap() {
        let name = entry.unwrap().file_name();
        if name.to_string_lossy().as_ref() < "0005" {
            std::fs::copy(source.join(&name), old_migrations.join(&name)).unwrap();
        }
    }
    let mut conn = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(&old_path)
        .create_if_missing(true)
        .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
        .connect()
        .await
        .unwrap();
    sqlx::migrate::Migrator::new(old_migrations.as_path()).await.unwrap().run(&mut conn).await.unwrap();
    let before = index_names(&mut conn).await;
    for gone in ["outbox_by_state", "outbox_by_injection", "injections_live_by_status"] {
        assert!(before.iter().any(|n| n == gone), "the old schema has {gone}: {before:?}");
    }
    sqlx::query("ATTACH DATABASE ? AS f").bind(fresh_path.to_str().unwrap()).execute(&mut conn).await.unwrap();
    for sql in [
        "INSERT INTO injections SELECT * FROM f.injections",
        "INSERT INTO audit_records SELECT * FROM f.audit_records",
        "INSERT INTO outbox SELECT * FROM f.outbox",
        "UPDATE audit_head SET (last_seq, last_hash, last_at) = (SELECT last_seq, last_hash, last_at FROM f.audit_head)",
        "DETACH DATABASE f",
    ] {
        sqlx::query(sql).execute(&mut conn).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
    sqlx::Connection::close(conn).await.unwrap();

    // Opening upgrades it; both stores now answer every read alike.
    let upgraded = Store::open(&old_path, opts(&clock)).await.unwrap();
    let fresh = Store::open(&fresh_path, opts(&clock)).await.unwrap();
    let mut conn = sqlx::sqlite::SqliteConnectOptions::new().filename(&old_path).connect().await.unwrap();
    let after = index_names(&mut conn).await;
    sqlx::Connection::close(conn).await.unwrap();
    for gone in ["outbox_by_state", "outbox_by_injection", "injections_live_by_status"] {
        assert!(!after.iter().any(|n| n == gone), "0005 drops {gone}: {after:?}");
    }
    assert!(after.iter().any(|n| n == "outbox_due"), "{after:?}");

    let now = T0 + 100;
    for store in [&fresh, &upgraded] {
        let live = store.recovery_set(now).await.unwrap();
        let pending: Vec<Uuid> = live.pending.iter().map(|r| r.id).collect();
        assert_eq!(pending, [rows[0].id, rows[1].id], "recovery set in creation order");
        assert_eq!(live.shown.iter().map(|r| r.id).collect::<Vec<_>>(), [rows[2].id]);
        let stats = store.outbox_stats(now).await.unwrap();
        assert_eq!((stats.pending, stats.due, stats.dead, stats.oldest_pending_age_ms), (2, 2, 1, Some(98)));
    }
    assert_eq!(fresh.recovery_set(now).await.unwrap(), upgraded.recovery_set(now).await.unwrap());
    assert_eq!(fresh.outbox_stats(now).await.unwrap(), upgraded.outbox_stats(now).await.unwrap());
    for conv in [conv_a, conv_b, Uuid::new_v4()] {
        assert_eq!(
            fresh.conversation_prompts(conv, now).await.unwrap(),
            upgraded.conversation_prompts(conv, now).await.unwrap()
        );
    }
    assert_eq!(fresh.outbox_due(now, 10).await.unwrap(), upgraded.outbox_due(now, 10).await.unwrap());
    for state in [None, Some(OutboxState::Pending), Some(OutboxState::Delivered), Some(OutboxState::Dead)] {
        let (a, b) = (fresh.outbox_list(state, 10).await.unwrap(), upgraded.outbox_list(state, 10).await.unwrap());
        assert_eq!(a, b, "{state:?}");
    }
    assert_eq!(fresh.outbox_list(Some(OutboxState::Pending), 10).await.unwrap().len(), 2);
    for (r, m) in rows.iter().zip(&messages) {
        assert_eq!(fresh.get_injection(r.id).await.unwrap(), upgraded.get_injection(r.id).await.unwrap());
        assert_eq!(fresh.outbox_get(&m.id).await.unwrap(), upgraded.outbox_get(&m.id).await.unwrap());
    }
    // The upgraded file takes new writes, and its chain is whole.
    let r = row(conv_a, InjectionStatus::Scheduled, now);
    let m = OutboxRow::new(r.id, HOOK, "AGENT_ASSIST_PROMPT_INJECTED", &b"late"[..], now);
    upgraded.write(insert(&r, vec![m.clone()])).await.unwrap();
    assert_eq!(upgraded.outbox_get(&m.id).await.unwrap().map(|m| m.state), Some(OutboxState::Pending));
    assert_eq!(upgraded.conversation_prompts(conv_a, now).await.unwrap().len(), 3);
    let report = audit::ops::verify(&upgraded, None, &[]).await.unwrap();
    assert!(report.is_valid(), "{report:?}");
    fresh.close().await.unwrap();
    upgraded.close().await.unwrap();
}

async fn index_names(conn: &mut sqlx::SqliteConnection) -> Vec<String> {
    sqlx::query_scalar("SELECT name FROM sqlite_master WHERE type = 'index' AND name NOT LIKE 'sqlite_%'")
        .fetch_all(conn)
        .await
        .expect("index names")
}
