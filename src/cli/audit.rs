//! `gc-assist audit`: verify, export, purge and checkpoint the audit trail, and print the
//! audit public key. Exit codes: 0 all good, 1 a defect was found, 2 could not run.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use chrono::Utc;
use serde_json::{json, Value};

use super::{Ctx, Outcome};
use crate::audit::ops::{self, CheckpointRun, PurgeReport, VerifyReport};
use crate::audit::{AuditPublicKey, Checkpoint, HeldBack, Verdict};
use crate::config::Config;
use crate::store::{Store, StoreOptions};

#[derive(Debug, clap::Subcommand)]
pub enum AuditCommand {
    /// Verify the whole audit chain against the signed checkpoints (database and anchor file).
    Verify {
        /// Anchor file to check against. Default: audit.anchor_file, if it exists.
        #[arg(long, value_name = "FILE")]
        anchor: Option<PathBuf>,
        /// Public key (`ed25519-pub:<hex>`) or a file of them, one per line; repeatable.
        /// Default: the public half of audit.key_file.
        #[arg(long = "public-key", value_name = "HEX|FILE")]
        public_key: Vec<String>,
        /// Verify this export (JSONL from `audit export`) against the anchor file instead of
        /// the database.
        #[arg(long, value_name = "FILE")]
        input: Option<PathBuf>,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Write audit records as JSONL, one record per line (stdout by default).
    Export {
        /// Start at this sequence number.
        #[arg(long, value_name = "N", default_value_t = 0)]
        from_seq: u64,
        /// Write to this file instead of stdout.
        #[arg(long, short, value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// Delete whole days of records older than the retention (checkpointing them first).
    Purge {
        /// Keep this many days. Default: audit.retention_days.
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
        retention_days: Option<u32>,
        /// Show what would be purged; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Sign checkpoints for completed days now, and repair the anchor file.
    Checkpoint,
    /// Print the audit public key (creating the key if there is none yet).
    PublicKey,
}

pub async fn run(cmd: AuditCommand, ctx: &Ctx) -> anyhow::Result<Outcome> {
    let config = ctx.load_config()?.config;
    match cmd {
        AuditCommand::Verify { anchor, public_key, input: Some(input), json } => {
            verify_export(&config, anchor, &public_key, &input, json)
        }
        AuditCommand::Verify { anchor, public_key, input: None, json } => {
            verify(&config, anchor, &public_key, json).await
        }
        AuditCommand::Export { from_seq, output } => export(&config, from_seq, output.as_deref()).await,
        AuditCommand::Purge { retention_days, dry_run, json } => {
            purge(&config, retention_days.unwrap_or(config.audit.retention_days), dry_run, json).await
        }
        AuditCommand::Checkpoint => checkpoint(&config).await,
        AuditCommand::PublicKey => {
            let key = ops::load_or_create_key(&config.audit.key_file)?;
            println!("{}", key.public().to_line());
            eprintln!("key id {} (from {})", key.key_id(), config.audit.key_file.display());
            Ok(Outcome::Ok)
        }
    }
}

/// Opens the configured database, refusing to create one: auditing a store that does not
/// exist is a mistake in the path, not an empty trail.
async fn open_existing(config: &Config) -> anyhow::Result<Store> {
    let path = &config.store.path;
    if !path.exists() {
        anyhow::bail!(
            "no database at {}: set store.path (or GC_ASSIST__STORE__PATH) to the service's database",
            path.display()
        );
    }
    Ok(Store::open(path, StoreOptions::default()).await?)
}

/// The public keys given, or else the public half of the configured key file (if any).
fn public_keys(config: &Config, values: &[String]) -> anyhow::Result<Vec<AuditPublicKey>> {
    let mut keys: Vec<AuditPublicKey> = Vec::new();
    for value in values {
        keys.extend(ops::parse_public_keys(value)?);
    }
    if keys.is_empty() && config.audit.key_file.exists() {
        keys.push(ops::load_key(&config.audit.key_file)?.public());
    }
    Ok(keys)
}

/// An anchor file named on the command line must exist; the configured one may not yet.
fn anchor_path(config: &Config, anchor: Option<PathBuf>) -> anyhow::Result<Option<PathBuf>> {
    Ok(match anchor {
        Some(p) if !p.exists() => anyhow::bail!("anchor file {} does not exist", p.display()),
        Some(p) => Some(p),
        None => Some(config.audit.anchor_file.clone()).filter(|p| p.exists()),
    })
}

fn verify_export(
    config: &Config,
    anchor: Option<PathBuf>,
    public_keys: &[String],
    input: &Path,
    json: bool,
) -> anyhow::Result<Outcome> {
    let keys = self::public_keys(config, public_keys)?;
    let anchor = anchor_path(config, anchor)?;
    let checkpoints = match &anchor {
        Some(p) => ops::read_anchor_file(p)?,
        None => Vec::new(),
    };
    let file = std::fs::File::open(input).with_context(|| format!("cannot open the export {}", input.display()))?;
    let verdict = ops::verify_jsonl(std::io::BufReader::new(file), &checkpoints, &keys)?;
    let report = VerifyReport {
        verdict,
        purges: Vec::new(),
        checkpoints: checkpoints.len(),
        anchor_checkpoints: anchor.as_ref().map(|_| checkpoints.len()),
        not_in_anchor: Vec::new(),
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&verify_json(&report, keys.len()))?);
    } else {
        print_verify(&report, anchor.as_deref(), keys.len());
    }
    Ok(if report.is_valid() { Outcome::Ok } else { Outcome::CheckFailed })
}

async fn verify(
    config: &Config,
    anchor: Option<PathBuf>,
    public_keys: &[String],
    json: bool,
) -> anyhow::Result<Outcome> {
    let keys = self::public_keys(config, public_keys)?;
    let anchor = anchor_path(config, anchor)?;
    let store = open_existing(config).await?;
    let report = ops::verify(&store, anchor.as_deref(), &keys).await;
    store.close().await?;
    let report = report?;
    if json {
        println!("{}", serde_json::to_string_pretty(&verify_json(&report, keys.len()))?);
    } else {
        print_verify(&report, anchor.as_deref(), keys.len());
    }
    Ok(if report.is_valid() { Outcome::Ok } else { Outcome::CheckFailed })
}

fn print_verify(report: &VerifyReport, anchor: Option<&Path>, keys: usize) {
    println!("{}", report.verdict);
    let anchor_text = match (anchor, report.anchor_checkpoints) {
        (Some(p), Some(n)) => format!("; anchor file {} ({n} checkpoints)", p.display()),
        _ => "; no anchor file".to_owned(),
    };
    println!("checkpoints: {} checked under {keys} public key(s){anchor_text}", report.checkpoints);
    if !report.purges.is_empty() {
        let total: u64 = report.purges.iter().map(|p| p.record_count).sum();
        println!("purged by policy: {} day(s), {total} record(s)", report.purges.len());
        for p in &report.purges {
            println!("  {}: seq {}..={} ({} records)", p.day, p.first_seq, p.last_seq, p.record_count);
        }
    }
    if !report.not_in_anchor.is_empty() {
        let days: Vec<String> = report.not_in_anchor.iter().map(ToString::to_string).collect();
        println!(
            "warning: stored checkpoints missing from the anchor file: {}; run `gc-assist audit checkpoint`",
            days.join(", ")
        );
    }
}

fn verify_json(report: &VerifyReport, keys: usize) -> Value {
    let mut out = match &report.verdict {
        Verdict::Valid { records, first_seq, last_seq, purged } => json!({
            "result": "valid", "records": records, "firstSeq": first_seq, "lastSeq": last_seq, "purged": purged,
        }),
        Verdict::Invalid { first_bad_seq, why } => {
            json!({"result": "invalid", "firstBadSeq": first_bad_seq, "why": why.to_string()})
        }
        Verdict::Gap { after_seq, next_seq } => json!({"result": "gap", "afterSeq": after_seq, "nextSeq": next_seq}),
        Verdict::MissingTail { last_seq_present, checkpoint_seq } => json!({
            "result": "missing_tail", "lastSeqPresent": last_seq_present, "checkpointSeq": checkpoint_seq,
        }),
        Verdict::Unanchored { first_seq } => json!({"result": "unanchored", "firstSeq": first_seq}),
        Verdict::BadCheckpoint { day, last_seq, why } => {
            json!({"result": "bad_checkpoint", "day": day.to_string(), "lastSeq": last_seq, "why": why})
        }
    };
    out["valid"] = json!(report.is_valid());
    out["message"] = json!(report.verdict.to_string());
    out["checkpoints"] = json!(report.checkpoints);
    out["publicKeys"] = json!(keys);
    out["anchorCheckpoints"] = json!(report.anchor_checkpoints);
    out["purgedDays"] = report
        .purges
        .iter()
        .map(|p| {
            json!({"day": p.day.to_string(), "firstSeq": p.first_seq, "lastSeq": p.last_seq, "records": p.record_count})
        })
        .collect();
    out["notInAnchor"] = report.not_in_anchor.iter().map(|d| json!(d.to_string())).collect();
    out
}

async fn export(config: &Config, from_seq: u64, output: Option<&Path>) -> anyhow::Result<Outcome> {
    let store = open_existing(config).await?;
    let written = match output {
        Some(path) => {
            let file = std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
            let n = ops::export_jsonl(&store, from_seq, &file).await;
            let synced = file.sync_all().with_context(|| format!("cannot write {}", path.display()));
            n.map(|n| synced.map(|_| n))
        }
        None => ops::export_jsonl(&store, from_seq, std::io::stdout().lock()).await.map(Ok),
    };
    store.close().await?;
    let n = written??;
    eprintln!("exported {n} audit record(s)");
    Ok(Outcome::Ok)
}

async fn purge(config: &Config, retention_days: u32, dry_run: bool, json: bool) -> anyhow::Result<Outcome> {
    let key = ops::load_or_create_key(&config.audit.key_file)?;
    let store = open_existing(config).await?;
    let today = Utc::now().date_naive();
    let report = ops::purge(&store, &key, &config.audit.anchor_file, retention_days, today, dry_run).await;
    store.close().await?;
    let report = report?;
    if json {
        println!("{}", serde_json::to_string_pretty(&purge_json(&report, retention_days))?);
    } else {
        print_purge(&report, retention_days);
    }
    // Held back means an old day stays that policy says should go: someone must look.
    Ok(if report.plan.held_back.is_some() { Outcome::CheckFailed } else { Outcome::Ok })
}

fn held_back_text(h: &HeldBack) -> String {
    match h {
        HeldBack::NoCheckpoint { day } => {
            format!("{day} has no checkpoint signed by the current audit key (its records may be broken: run `gc-assist audit verify`)")
        }
        HeldBack::CheckpointMismatch { day } => {
            format!("{day}'s checkpoint does not match its stored records (run `gc-assist audit verify`)")
        }
        HeldBack::Discontinuous { day } => {
            format!("{day} does not continue the day before it: records are missing (run `gc-assist audit verify`)")
        }
    }
}

fn print_purge(report: &PurgeReport, retention_days: u32) {
    for cp in &report.signed {
        let verb = if report.dry_run { "would checkpoint" } else { "checkpointed" };
        println!("{verb} {} (through seq {}, {} records)", cp.day, cp.last_seq, cp.record_count);
    }
    let verb = if report.dry_run { "would purge" } else { "purged" };
    if report.days.is_empty() {
        println!("nothing to purge (retention {retention_days} days)");
    }
    for d in &report.days {
        println!("{verb} {}: seq {}..={} ({} records)", d.day, d.first_seq, d.last_seq, d.count);
    }
    if !report.days.is_empty() {
        println!("{verb} {} record(s) in {} day(s)", report.plan.records, report.days.len());
    }
    if let Some(h) = &report.plan.held_back {
        println!("held back: {}", held_back_text(h));
    }
    if let Some(b) = &report.broken {
        println!("not checkpointed: {} is broken at seq {}: {}", b.day, b.seq, b.why);
    }
}

fn purge_json(report: &PurgeReport, retention_days: u32) -> Value {
    let held = report.plan.held_back.as_ref().map(|h| {
        let (kind, day) = match h {
            HeldBack::NoCheckpoint { day } => ("no_checkpoint", day),
            HeldBack::CheckpointMismatch { day } => ("checkpoint_mismatch", day),
            HeldBack::Discontinuous { day } => ("discontinuous", day),
        };
        json!({"reason": kind, "day": day.to_string(), "message": held_back_text(h)})
    });
    json!({
        "dryRun": report.dry_run,
        "retentionDays": retention_days,
        "checkpointed": report.signed.iter().map(|c| json!(c.day.to_string())).collect::<Vec<_>>(),
        "days": report.days.iter().map(|d| json!({
            "day": d.day.to_string(), "firstSeq": d.first_seq, "lastSeq": d.last_seq, "records": d.count,
        })).collect::<Vec<_>>(),
        "records": report.plan.records,
        "throughSeq": report.plan.through_seq,
        "heldBack": held,
        "broken": report.broken.as_ref().map(|b| json!({"day": b.day.to_string(), "seq": b.seq, "why": b.why})),
    })
}

async fn checkpoint(config: &Config) -> anyhow::Result<Outcome> {
    let key = ops::load_or_create_key(&config.audit.key_file)?;
    let store = open_existing(config).await?;
    let today = Utc::now().date_naive();
    let now = crate::audit::AuditTime::from_datetime(Utc::now())?;
    let run = ops::checkpoint_completed_days_at(&store, &key, &config.audit.anchor_file, today, now).await;
    store.close().await?;
    let run = run?;
    print_checkpoint(&run);
    let ok = run.broken.is_none() && run.conflicts.is_empty();
    Ok(if ok { Outcome::Ok } else { Outcome::CheckFailed })
}

fn print_checkpoint(run: &CheckpointRun) {
    let line = |cp: &Checkpoint| format!("{} (through seq {}, {} records)", cp.day, cp.last_seq, cp.record_count);
    for cp in &run.signed {
        println!("checkpointed {}", line(cp));
    }
    for cp in &run.repaired {
        println!("appended to the anchor file: {}", line(cp));
    }
    for day in &run.conflicts {
        println!("conflict: the anchor file's checkpoint for {day} differs from the database's (run `gc-assist audit verify`)");
    }
    if let Some(b) = &run.broken {
        println!("not checkpointed: {} is broken at seq {}: {} (run `gc-assist audit verify`)", b.day, b.seq, b.why);
    }
    if run.signed.is_empty() && run.repaired.is_empty() && run.conflicts.is_empty() && run.broken.is_none() {
        println!("nothing to do: every completed day is checkpointed and anchored");
    }
    let _ = std::io::stdout().flush();
}
