//! Integration tests: audit operations on real SQLite files: the checkpointer and the
//! anchor file, verification against tampering done the way an attacker would (raw SQL with
//! the append-only triggers dropped), retention purges, export, and `gc-assist audit`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::NaiveDate;
use gc_assist::audit::ops::{self, AuditOpsError};
use gc_assist::audit::{self, AuditDraft, AuditKey, AuditRecord, AuditTime, Checkpoint, Defect, HeldBack, Verdict};
use gc_assist::contract::{validate_value, ValidPayload};
use gc_assist::store::{InjectionRow, InjectionStatus, ManualClock, Source, Store, StoreError, StoreOptions, WriteOp};
use rand::rngs::StdRng;
use rand::SeedableRng;
use serde_json::{json, Value};
use sqlx::ConnectOptions;
use uuid::Uuid;

use crate::support;

/// 2024-05-01T00:00:00Z.
const T0: i64 = 1_714_521_600_000;
const DAY_MS: i64 = 86_400_000;

fn may(d: u32) -> NaiveDate {
    NaiveDate::from_ymd_opt(2024, 5, d).unwrap()
}

fn payload(conv: Uuid) -> ValidPayload {
    validate_value(&json!({
        "conversationId": conv.to_string(),
        "promptId": Uuid::from_u128(0xfeed).to_string(),
        "triggerConditions": [{"type": "keyword", "value": "refund"}],
        "displaySettings": {"delayMs": 1000, "maxConcurrentPrompts": 1, "autoDismissMs": 30000},
        "prompt": {"title": "Refund policy", "body": "Offer the 30-day refund.", "priority": "high"}
    }))
    .expect("valid payload")
}

fn insert(at: i64) -> WriteOp {
    let p = payload(Uuid::new_v4());
    let content = p.inline_prompt().cloned().expect("inline prompt");
    let row = InjectionRow::new(Uuid::now_v7(), InjectionStatus::Scheduled, p, content, Source::Api, at);
    let audit = vec![AuditDraft {
        conversation_id: row.conversation_id,
        prompt_id: row.prompt_id,
        injection_id: row.id,
        status: "accepted".into(),
        latency_ms: Some(4),
        error: None,
        actor: "api-key:crm".into(),
        reason: None,
    }];
    WriteOp::InsertInjection { row: Box::new(row), audit, outbox: vec![], idempotency: None }
}

/// A store with three records on each of May 1–4 (seq 1–12) and two on May 5 (seq 13–14),
/// its key file and anchor file paths. Nothing is checkpointed yet.
struct History {
    dir: tempfile::TempDir,
    store: Store,
    key: AuditKey,
}

impl History {
    async fn new() -> History {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(T0);
        let opts = StoreOptions { clock: Arc::new(clock.clone()), rng_seed: Some(3), ..StoreOptions::default() };
        let store = Store::open(&dir.path().join("audit.db"), opts).await.unwrap();
        for (d, n) in [(0, 3), (1, 3), (2, 3), (3, 3), (4, 2)] {
            for h in 0..n {
                let at = T0 + d * DAY_MS + (9 + h) * 3_600_000;
                clock.set(at);
                store.write(insert(at)).await.unwrap();
            }
        }
        let key = ops::load_or_create_key(&dir.path().join("keys/audit.key")).unwrap();
        History { dir, store, key }
    }

    fn db(&self) -> PathBuf {
        self.dir.path().join("audit.db")
    }

    fn anchor(&self) -> PathBuf {
        self.dir.path().join("anchors.jsonl")
    }

    fn key_file(&self) -> PathBuf {
        self.dir.path().join("keys/audit.key")
    }

    /// Checkpoints May 1–4 (today is May 5).
    async fn checkpoint(&self) -> Vec<Checkpoint> {
        let at = AuditTime::from_unix_millis(T0 + 4 * DAY_MS).unwrap();
        let run = ops::checkpoint_completed_days_at(&self.store, &self.key, &self.anchor(), may(5), at).await.unwrap();
        assert_eq!(run.broken, None);
        run.signed
    }

    async fn verify(&self, anchor: bool) -> ops::VerifyReport {
        let anchor = anchor.then(|| self.anchor());
        ops::verify(&self.store, anchor.as_deref(), &[self.key.public()]).await.unwrap()
    }

    /// Changes the database behind the store's back, as an attacker with file access would.
    async fn tamper(&self, sql: &str) {
        let mut conn = sqlx::sqlite::SqliteConnectOptions::new().filename(self.db()).connect().await.unwrap();
        for s in [
            "DROP TRIGGER IF EXISTS audit_records_no_update",
            "DROP TRIGGER IF EXISTS audit_records_delete_only_purged",
        ]
        .into_iter()
        .chain(sql.split(';').filter(|s| !s.trim().is_empty()))
        {
            sqlx::query(s).execute(&mut conn).await.unwrap_or_else(|e| panic!("{s}: {e}"));
        }
    }
}

fn valid(records: u64, first_seq: u64, last_seq: u64, purged: u64) -> Verdict {
    Verdict::Valid { records, first_seq, last_seq, purged }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpointer_signs_completed_days_once_and_repairs_the_anchor_file() {
    let h = History::new().await;
    let signed = h.checkpoint().await;
    assert_eq!(
        signed.iter().map(|c| (c.day, c.last_seq, c.record_count)).collect::<Vec<_>>(),
        [(may(1), 3, 3), (may(2), 6, 3), (may(3), 9, 3), (may(4), 12, 3)]
    );
    for cp in &signed {
        cp.verify(&h.key.public()).unwrap();
        assert_eq!(cp.last_hash, h.store.audit_record(cp.last_seq).await.unwrap().unwrap().hash);
    }
    assert_eq!(h.store.checkpoints().await.unwrap(), signed);
    let anchor_text = std::fs::read_to_string(h.anchor()).unwrap();
    assert_eq!(audit::parse_anchor_lines(&anchor_text).unwrap(), signed);

    // Idempotent: nothing new, the file unchanged; the service's entry point agrees.
    assert!(h.checkpoint().await.is_empty());
    let again = ops::checkpoint_completed_days(&h.store, &h.key, &h.anchor(), may(5)).await.unwrap();
    assert!(again.is_empty());
    assert_eq!(std::fs::read_to_string(h.anchor()).unwrap(), anchor_text);

    // A crash after storing but before appending: the next run appends what is missing,
    // after a torn last line.
    let lines: Vec<&str> = anchor_text.lines().collect();
    std::fs::write(h.anchor(), format!("{}\n{}", lines[0], lines[1])).unwrap();
    let report = h.verify(true).await;
    assert_eq!(report.verdict, valid(14, 1, 14, 0));
    assert_eq!(report.not_in_anchor, [may(3), may(4)]);
    let at = AuditTime::from_unix_millis(T0 + 5 * DAY_MS).unwrap();
    let run = ops::checkpoint_completed_days_at(&h.store, &h.key, &h.anchor(), may(5), at).await.unwrap();
    assert_eq!((run.signed.len(), run.repaired.clone(), run.conflicts.len()), (0, signed[2..].to_vec(), 0));
    assert_eq!(audit::parse_anchor_lines(&std::fs::read_to_string(h.anchor()).unwrap()).unwrap(), signed);
    assert!(h.verify(true).await.not_in_anchor.is_empty());

    // The next day, May 5 is complete too.
    let next = ops::checkpoint_completed_days(&h.store, &h.key, &h.anchor(), may(6)).await.unwrap();
    assert_eq!(next.iter().map(|c| (c.day, c.last_seq)).collect::<Vec<_>>(), [(may(5), 14)]);
    assert_eq!(h.verify(true).await.verdict, valid(14, 1, 14, 0));
    h.store.close().await.unwrap();
}

#[tokio::test]
async fn key_files_are_created_private_and_refused_when_others_can_read_them() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sub/audit.key");
    let key = ops::load_or_create_key(&path).unwrap();
    let meta = std::fs::metadata(&path).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.starts_with("ed25519-seed:") && text.trim_end().len() == 13 + 64, "{text}");
    // The same key comes back, by both loaders.
    assert_eq!(ops::load_or_create_key(&path).unwrap().public(), key.public());
    assert_eq!(ops::load_key(&path).unwrap().public(), key.public());

    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = ops::load_or_create_key(&path).unwrap_err();
    assert!(matches!(err, AuditOpsError::KeyPermissions { mode: 0o644, .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("chmod 600") && !msg.contains(&text[13..77]), "{msg}");

    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::write(&path, "not a key").unwrap();
    let err = ops::load_key(&path).unwrap_err();
    assert!(err.to_string().contains("64 hex"), "{err}");
    assert!(matches!(ops::load_key(&dir.path().join("none")), Err(AuditOpsError::KeyRead { .. })));

    // Public keys: inline, bare hex, or a file; never the private key.
    let line = key.public().to_line();
    assert_eq!(ops::parse_public_keys(&line).unwrap(), [key.public()]);
    assert_eq!(ops::parse_public_keys(&key.public().to_hex()).unwrap(), [key.public()]);
    let other = AuditKey::generate(&mut StdRng::seed_from_u64(9)).public();
    let file = dir.path().join("keys.pub");
    std::fs::write(&file, format!("{line}\n\n{}\n", other.to_line())).unwrap();
    assert_eq!(ops::parse_public_keys(file.to_str().unwrap()).unwrap(), [key.public(), other]);
    let seed = "ed25519-seed:".to_owned() + &"ab".repeat(32);
    assert!(matches!(ops::parse_public_keys(&seed), Err(AuditOpsError::PrivateKeyGiven { .. })));
    assert!(matches!(ops::parse_public_keys("nope"), Err(AuditOpsError::PublicKey { .. })));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_byte_is_invalid_at_its_seq() {
    let h = History::new().await;
    h.checkpoint().await;
    assert_eq!(h.verify(true).await.verdict, valid(14, 1, 14, 0));
    h.tamper("UPDATE audit_records SET actor = 'api-key:crn' WHERE seq = 5").await;
    let v = h.verify(true).await.verdict;
    assert_eq!(v, Verdict::Invalid { first_bad_seq: 5, why: Defect::HashMismatch });
    h.store.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_middle_record_is_a_gap() {
    let h = History::new().await;
    h.checkpoint().await;
    h.tamper("DELETE FROM audit_records WHERE seq = 5").await;
    assert_eq!(h.verify(true).await.verdict, Verdict::Gap { after_seq: 4, next_seq: 6 });
    // The checkpointer refuses to bless a broken day that is not yet signed.
    let h = History::new().await;
    h.tamper("DELETE FROM audit_records WHERE seq = 8").await;
    let err = ops::checkpoint_completed_days(&h.store, &h.key, &h.anchor(), may(5)).await.unwrap_err();
    assert!(matches!(err, AuditOpsError::ChainBroken { day, .. } if day == may(3)), "{err}");
    // The days before the break were signed.
    assert_eq!(h.store.checkpoints().await.unwrap().len(), 2);
    // A purge goes up to the break and says why it stopped there.
    let report = ops::purge(&h.store, &h.key, &h.anchor(), 1, may(5), false).await.unwrap();
    assert_eq!(report.plan.days, [may(1), may(2)]);
    assert_eq!(report.plan.held_back, Some(HeldBack::NoCheckpoint { day: may(3) }));
    assert_eq!(report.broken.map(|b| (b.day, b.seq)), Some((may(3), 8)));
    assert_eq!(h.verify(true).await.verdict, Verdict::Gap { after_seq: 7, next_seq: 9 });
    h.store.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_tail_is_caught_by_the_anchor_file() {
    let h = History::new().await;
    h.checkpoint().await;
    // Cut off everything after seq 7, and the checkpoints that mention it.
    h.tamper("DELETE FROM audit_records WHERE seq > 7; DELETE FROM audit_checkpoints WHERE last_seq > 7").await;
    // The database alone now looks whole...
    assert_eq!(h.verify(false).await.verdict, valid(7, 1, 7, 0));
    // ...but the anchor file remembers.
    let v = h.verify(true).await.verdict;
    assert_eq!(v, Verdict::MissingTail { last_seq_present: 7, checkpoint_seq: 12 });
    h.store.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reordered_records_are_invalid() {
    let h = History::new().await;
    h.checkpoint().await;
    h.tamper("UPDATE audit_records SET seq = -2 WHERE seq = 2; UPDATE audit_records SET seq = 2 WHERE seq = 3; UPDATE audit_records SET seq = 3 WHERE seq = -2").await;
    let v = h.verify(true).await.verdict;
    assert!(matches!(v, Verdict::Invalid { first_bad_seq: 2, .. }), "{v}");
    h.store.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_and_missing_checkpoints_are_bad_checkpoints() {
    let h = History::new().await;
    h.checkpoint().await;
    // A checkpoint signed by someone else's key, slipped into the database.
    let mallory = AuditKey::generate(&mut StdRng::seed_from_u64(66));
    let last = h.store.audit_record(14).await.unwrap().unwrap();
    let forged = Checkpoint::sign(may(5), 14, last.hash, 2, last.timestamp, &mallory);
    h.store.write(WriteOp::PutCheckpoint(forged)).await.unwrap();
    let v = h.verify(true).await.verdict;
    assert!(matches!(v, Verdict::BadCheckpoint { day, .. } if day == may(5)), "{v}");

    // A stored checkpoint altered in place (its signature no longer holds).
    let h = History::new().await;
    h.checkpoint().await;
    h.tamper("UPDATE audit_checkpoints SET record_count = 4 WHERE day = '2024-05-02'").await;
    let v = h.verify(false).await.verdict;
    assert!(matches!(v, Verdict::BadCheckpoint { day, .. } if day == may(2)), "{v}");

    // Deleted from the database but still in the anchor file.
    let h = History::new().await;
    h.checkpoint().await;
    h.tamper("DELETE FROM audit_checkpoints WHERE day = '2024-05-03'").await;
    assert!(h.verify(false).await.is_valid());
    let v = h.verify(true).await.verdict;
    assert!(
        matches!(&v, Verdict::BadCheckpoint { day, why, .. } if *day == may(3) && why.contains("missing from the database")),
        "{v}"
    );
    // The checkpointer does not sign that day anew over what the database now holds.
    let at = AuditTime::from_unix_millis(T0 + 5 * DAY_MS).unwrap();
    let run = ops::checkpoint_completed_days_at(&h.store, &h.key, &h.anchor(), may(5), at).await.unwrap();
    assert_eq!((run.signed.len(), run.conflicts.clone()), (0, vec![may(3)]));
    assert_eq!(h.store.checkpoints().await.unwrap().len(), 3);
    h.store.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_whole_days_then_verify() {
    let h = History::new().await;
    // The purge checkpoints first; a dry run changes nothing.
    let dry = ops::purge(&h.store, &h.key, &h.anchor(), 2, may(5), true).await.unwrap();
    assert_eq!((dry.plan.days.clone(), dry.plan.records, dry.signed.len()), (vec![may(1), may(2)], 6, 4));
    assert!(h.store.checkpoints().await.unwrap().is_empty() && !h.anchor().exists());
    assert_eq!(h.store.audit_days().await.unwrap().len(), 5);

    let report = ops::purge(&h.store, &h.key, &h.anchor(), 2, may(5), false).await.unwrap();
    assert_eq!(
        report.days.iter().map(|d| (d.day, d.first_seq, d.last_seq)).collect::<Vec<_>>(),
        [(may(1), 1, 3), (may(2), 4, 6)]
    );
    assert_eq!((report.plan.through_seq, report.plan.held_back.clone(), report.signed.len()), (Some(6), None, 4));
    let v = h.verify(true).await;
    assert_eq!(v.verdict, valid(8, 7, 14, 6));
    assert_eq!(v.purges.iter().map(|p| (p.day, p.record_count)).collect::<Vec<_>>(), [(may(1), 3), (may(2), 3)]);

    // A purge whose checkpoints were signed by another key is held back, and nothing changes.
    let rotated = AuditKey::generate(&mut StdRng::seed_from_u64(5));
    let held = ops::purge(&h.store, &rotated, &h.anchor(), 1, may(5), false).await.unwrap();
    assert!(held.days.is_empty());
    assert_eq!(held.plan.held_back, Some(HeldBack::NoCheckpoint { day: may(3) }));
    // The store itself refuses a day without a checkpoint (today's).
    let refused = h.store.write(WriteOp::PurgeDays { days: vec![may(5)], through_seq: 14 }).await;
    assert!(matches!(refused, Err(StoreError::InvalidPurge(_))), "{refused:?}");
    assert_eq!(h.verify(true).await.verdict, valid(8, 7, 14, 6));
    h.store.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_deleted_by_hand_are_unanchored_or_a_gap() {
    // No checkpoint ends where the records now start.
    let h = History::new().await;
    h.tamper("DELETE FROM audit_records WHERE seq <= 3").await;
    assert_eq!(h.verify(true).await.verdict, Verdict::Unanchored { first_seq: 4 });
    // Whole checkpointed days deleted without a recorded purge are not "purged by policy".
    let h = History::new().await;
    h.checkpoint().await;
    h.tamper("DELETE FROM audit_records WHERE seq <= 6").await;
    assert_eq!(h.verify(true).await.verdict, Verdict::Gap { after_seq: 0, next_seq: 7 });
    h.store.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_round_trips_through_verify() {
    let h = History::new().await;
    let cps = h.checkpoint().await;
    let mut out = Vec::new();
    assert_eq!(ops::export_jsonl(&h.store, 0, &mut out).await.unwrap(), 14);
    let text = String::from_utf8(out).unwrap();
    let records: Vec<AuditRecord> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(records.len(), 14);
    assert_eq!(audit::verify(&records, None, &cps, &[h.key.public()]), valid(14, 1, 14, 0));
    // From a later seq: verifiable from the checkpoint that ends just before it.
    let mut out = Vec::new();
    assert_eq!(ops::export_jsonl(&h.store, 10, &mut out).await.unwrap(), 5);
    let tail: Vec<AuditRecord> =
        String::from_utf8(out).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(audit::verify(&tail, None, &cps, &[h.key.public()]), valid(5, 10, 14, 9));
    h.store.close().await.unwrap();
}

fn env(h: &History) -> Vec<(String, String)> {
    let s = |p: &Path| p.to_str().unwrap().to_owned();
    vec![
        ("GC_ASSIST__STORE__PATH".into(), s(&h.db())),
        ("GC_ASSIST__AUDIT__KEY_FILE".into(), s(&h.key_file())),
        ("GC_ASSIST__AUDIT__ANCHOR_FILE".into(), s(&h.anchor())),
    ]
}

fn gc(h: &History, args: &[&str]) -> std::process::Output {
    let env = env(h);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    support::run(args, &env)
}

fn json_out(o: &std::process::Output) -> Value {
    serde_json::from_str(&support::stdout(o))
        .unwrap_or_else(|e| panic!("{e}: {}\n{}", support::stdout(o), support::stderr(o)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_verify_export_purge_and_exit_codes() {
    let h = History::new().await;
    h.checkpoint().await;
    h.store.close().await.unwrap();

    let o = gc(&h, &["audit", "verify"]);
    assert_eq!(o.status.code(), Some(0), "{}{}", support::stdout(&o), support::stderr(&o));
    assert!(support::stdout(&o).contains("valid: 14 records, seq 1..=14"), "{}", support::stdout(&o));
    let o = gc(&h, &["audit", "verify", "--json"]);
    let v = json_out(&o);
    assert_eq!(
        (v["valid"].as_bool(), v["result"].as_str(), v["records"].as_u64()),
        (Some(true), Some("valid"), Some(14))
    );
    assert_eq!(v["checkpoints"], 4);

    let o = gc(&h, &["audit", "public-key"]);
    assert_eq!(support::stdout(&o).trim(), h.key.public().to_line());

    // Another auditor's key does not vouch for these checkpoints: a failure, exit 1.
    let other = AuditKey::generate(&mut StdRng::seed_from_u64(8)).public().to_line();
    let o = gc(&h, &["audit", "verify", "--json", "--public-key", &other]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(json_out(&o)["result"], "bad_checkpoint");

    // Export to a file, read it back, verify it with the anchor file's checkpoints.
    let file = h.dir.path().join("export.jsonl");
    let o = gc(&h, &["audit", "export", "--output", file.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", support::stderr(&o));
    let records: Vec<AuditRecord> =
        std::fs::read_to_string(&file).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let cps = ops::read_anchor_file(&h.anchor()).unwrap();
    assert_eq!(audit::verify(&records, None, &cps, &[h.key.public()]), valid(14, 1, 14, 0));
    let o = gc(&h, &["audit", "export", "--from-seq", "13"]);
    assert_eq!(support::stdout(&o).lines().count(), 2);
    // An auditor checks the export with the anchor file and the public key alone.
    let public = h.dir.path().join("audit.pub");
    std::fs::write(&public, format!("{}\n", h.key.public().to_line())).unwrap();
    let (file_s, pub_s) = (file.to_str().unwrap(), public.to_str().unwrap());
    let v = json_out(&gc(&h, &["audit", "verify", "--input", file_s, "--public-key", pub_s, "--json"]));
    assert_eq!((v["result"].as_str(), v["records"].as_u64()), (Some("valid"), Some(14)));
    let text = std::fs::read_to_string(&file).unwrap();
    std::fs::write(&file, text.replacen("\"accepted\"", "\"rejected\"", 1)).unwrap();
    let o = gc(&h, &["audit", "verify", "--input", file_s, "--public-key", pub_s]);
    assert_eq!(o.status.code(), Some(1));
    assert!(support::stdout(&o).contains("invalid at seq 1"), "{}", support::stdout(&o));
    let cut: String = text.lines().take(10).map(|l| format!("{l}\n")).collect();
    std::fs::write(&file, cut).unwrap();
    let v = json_out(&gc(&h, &["audit", "verify", "--input", file_s, "--json"]));
    assert_eq!((v["result"].as_str(), v["checkpointSeq"].as_u64()), (Some("missing_tail"), Some(12)));
    std::fs::write(&file, "{\"seq\": 1}\n").unwrap();
    let o = gc(&h, &["audit", "verify", "--input", file_s]);
    assert_eq!(o.status.code(), Some(2));
    assert!(support::stderr(&o).contains("export line 1"), "{}", support::stderr(&o));

    // Purge: today is long after May 2024, so every day goes (May 5 is checkpointed first).
    let o = gc(&h, &["audit", "purge", "--retention-days", "1", "--dry-run", "--json"]);
    let v = json_out(&o);
    assert_eq!(
        (v["dryRun"].as_bool(), v["records"].as_u64(), v["days"].as_array().map(Vec::len)),
        (Some(true), Some(14), Some(5))
    );
    let o = gc(&h, &["audit", "purge", "--retention-days", "1"]);
    assert_eq!(o.status.code(), Some(0), "{}", support::stderr(&o));
    assert!(support::stdout(&o).contains("purged 14 record(s) in 5 day(s)"), "{}", support::stdout(&o));
    let v = json_out(&gc(&h, &["audit", "verify", "--json"]));
    assert_eq!((v["valid"].as_bool(), v["records"].as_u64(), v["purged"].as_u64()), (Some(true), Some(0), Some(14)));
    assert_eq!(v["purgedDays"].as_array().map(Vec::len), Some(5));
    let o = gc(&h, &["audit", "checkpoint"]);
    assert_eq!(o.status.code(), Some(0));
    assert!(support::stdout(&o).contains("nothing to do"), "{}", support::stdout(&o));

    // Cannot read: exit 2, with what to fix.
    let o = gc(&h, &["audit", "verify", "--anchor", "/nonexistent/anchors.jsonl"]);
    assert_eq!(o.status.code(), Some(2));
    let missing = h.dir.path().join("missing.db");
    let mut e = env(&h);
    e[0].1 = missing.to_str().unwrap().into();
    let e: Vec<(&str, &str)> = e.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let o = support::run(&["audit", "verify"], &e);
    assert_eq!(o.status.code(), Some(2));
    assert!(support::stderr(&o).contains("no database at"), "{}", support::stderr(&o));
    assert!(!missing.exists(), "verify must not create a database");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_reports_tampering_with_exit_1() {
    let h = History::new().await;
    h.checkpoint().await;
    h.store.close().await.unwrap();
    let h2 = History { dir: h.dir, store: h.store, key: h.key };
    h2.tamper("UPDATE audit_records SET status = 'rejected' WHERE seq = 9").await;
    let o = gc(&h2, &["audit", "verify"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(support::stdout(&o).contains("invalid at seq 9"), "{}", support::stdout(&o));
    let v = json_out(&gc(&h2, &["audit", "verify", "--json"]));
    assert_eq!((v["result"].as_str(), v["firstBadSeq"].as_u64()), (Some("invalid"), Some(9)));

    // The checkpointer will not sign a day whose records are not intact (exit 1).
    h2.tamper("DELETE FROM audit_records WHERE seq = 13").await;
    let o = gc(&h2, &["audit", "checkpoint"]);
    assert_eq!(o.status.code(), Some(1), "{}", support::stderr(&o));
    assert!(
        support::stdout(&o).contains("not checkpointed: 2024-05-05 is broken at seq 14"),
        "{}",
        support::stdout(&o)
    );

    // A key file others can read is refused (exit 2), naming the fix.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(h2.key_file(), std::fs::Permissions::from_mode(0o644)).unwrap();
    let o = gc(&h2, &["audit", "verify"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(support::stderr(&o).contains("chmod 600"), "{}", support::stderr(&o));
}
