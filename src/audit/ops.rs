//! The impure audit operations: the key file, the anchor file, and the store, joined to the
//! pure core of this module's siblings. The service calls [`checkpoint_completed_days`] at
//! start-up and once a day; `gc-assist audit` calls everything here.
//!
//! # Files
//!
//! - **Key file** (`audit.key_file`): `ed25519-seed:<64 hex>`, created with mode 0600 on
//!   first use. A key file that others can read is refused: anyone who reads it can sign
//!   checkpoints that bless a rewritten chain.
//! - **Anchor file** (`audit.anchor_file`): every checkpoint, one JSON line each, appended
//!   and fsynced after it is stored. It is the copy an attacker with only the database
//!   cannot rewrite (keep it on write-once storage), so verification trusts it over the
//!   database: a checkpoint in the anchor file that the database lacks or contradicts is a
//!   failure.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use std::time::Duration;

use chrono::{DateTime, NaiveDate, NaiveTime, TimeDelta, Utc};
use futures::TryStreamExt;
use thiserror::Error;

use super::chain::{CanonicalRecord, Verifier};
use super::checkpoint::{parse_anchor_lines, purge_plan, AuditKey, AuditPublicKey, Checkpoint, DaySummary, PurgePlan};
use super::record::{AuditTime, Digest, RecordView};
use super::{AuditError, Verdict};
use crate::store::{PurgeRecord, Store, StoreError, WriteOp};

/// Seconds after UTC midnight at which the daily checkpointer runs: late enough that a
/// write stamped just before midnight has committed.
pub const CHECKPOINT_DELAY_SECS: i64 = 5;

/// Records read per round trip when streaming the chain (verify, export, day checks).
const STREAM_BATCH: u32 = 2_000;

/// Why an audit operation could not be carried out (as opposed to finding a defect, which
/// is a [`Verdict`]).
#[derive(Debug, Error)]
pub enum AuditOpsError {
    #[error("cannot read the audit key file {path}: {source}")]
    KeyRead { path: PathBuf, source: io::Error },
    #[error("cannot create the audit key file {path}: {source}; check that its directory is writable")]
    KeyCreate { path: PathBuf, source: io::Error },
    #[error(
        "the audit key file {path} is readable or writable by others (mode {mode:03o}); anyone who can read it can \
         forge checkpoints. Restrict it with `chmod 600 {path}` (and consider the key compromised: rotate it)"
    )]
    KeyPermissions { path: PathBuf, mode: u32 },
    #[error("the audit key file {path} is not a key: {source}")]
    KeyFormat { path: PathBuf, source: AuditError },
    #[error(
        "{what} is the private audit key, not a public key; give auditors the output of `gc-assist audit public-key`"
    )]
    PrivateKeyGiven { what: String },
    #[error("{what} is neither a public key (`ed25519-pub:<64 hex>`) nor a readable file of them: {message}")]
    PublicKey { what: String, message: String },
    #[error("cannot read the anchor file {path}: {source}")]
    AnchorRead { path: PathBuf, source: io::Error },
    #[error("the anchor file {path} is damaged: {source}")]
    AnchorFormat { path: PathBuf, source: AuditError },
    #[error("cannot append to the anchor file {path}: {source}; the checkpoints are stored, run `gc-assist audit checkpoint` to retry")]
    AnchorWrite { path: PathBuf, source: io::Error },
    #[error(
        "refusing to sign a checkpoint for {day}: the stored records do not form an unbroken chain (seq {seq}: \
         {why}); run `gc-assist audit verify`"
    )]
    ChainBroken { day: NaiveDate, seq: u64, why: String },
    #[error("cannot write the export: {0}")]
    Export(io::Error),
    #[error("cannot read the export: {0}")]
    ExportRead(io::Error),
    #[error("export line {line} is not an audit record: {message}")]
    ExportLine { line: usize, message: String },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Audit(#[from] AuditError),
}

// ---------------------------------------------------------------------------------------
// Keys

/// Reads the audit key at `path`, creating a new random one (mode 0600) if the file is
/// missing. Refuses a key file that group or others may access.
pub fn load_or_create_key(path: &Path) -> Result<AuditKey, AuditOpsError> {
    match load_key(path) {
        Err(AuditOpsError::KeyRead { source, .. }) if source.kind() == io::ErrorKind::NotFound => create_key(path),
        other => other,
    }
}

/// Reads an existing audit key (for commands that must not create one).
pub fn load_key(path: &Path) -> Result<AuditKey, AuditOpsError> {
    let read_err = |source| AuditOpsError::KeyRead { path: path.to_path_buf(), source };
    let file = File::open(path).map_err(read_err)?;
    check_private(path, &file)?;
    let text = io::read_to_string(file).map_err(read_err)?;
    AuditKey::from_seed_file(&text).map_err(|source| AuditOpsError::KeyFormat { path: path.to_path_buf(), source })
}

#[cfg(unix)]
fn check_private(path: &Path, file: &File) -> Result<(), AuditOpsError> {
    use std::os::unix::fs::PermissionsExt;
    let mode = file
        .metadata()
        .map_err(|source| AuditOpsError::KeyRead { path: path.to_path_buf(), source })?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        return Err(AuditOpsError::KeyPermissions { path: path.to_path_buf(), mode: mode & 0o777 });
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_private(_path: &Path, _file: &File) -> Result<(), AuditOpsError> {
    Ok(())
}

fn create_key(path: &Path) -> Result<AuditKey, AuditOpsError> {
    use secrecy::ExposeSecret;
    let create_err = |source| AuditOpsError::KeyCreate { path: path.to_path_buf(), source };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).map_err(create_err)?;
    }
    let key = AuditKey::generate(&mut rand::rngs::OsRng);
    let mut opts = OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        // Created private, never widened then narrowed: no window in which others may read it.
        opts.mode(0o600);
    }
    let mut file = match opts.open(path) {
        Ok(f) => f,
        // Another process created it first: use theirs, so both sign with the same key.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return load_key(path),
        Err(e) => return Err(create_err(e)),
    };
    file.write_all(key.to_seed_file().expose_secret().as_bytes()).map_err(create_err)?;
    file.sync_all().map_err(create_err)?;
    sync_parent(path);
    tracing::info!(path = %path.display(), key_id = %key.key_id(), "created a new audit key");
    Ok(key)
}

/// Makes a newly created file's directory entry durable (best effort: not every platform
/// can open a directory).
fn sync_parent(path: &Path) {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Public keys from a command-line value: the key itself (`ed25519-pub:<hex>` or bare hex),
/// or a file holding one key per line.
pub fn parse_public_keys(value: &str) -> Result<Vec<AuditPublicKey>, AuditOpsError> {
    let refuse_private = |s: &str| s.trim_start().starts_with("ed25519-seed:");
    if refuse_private(value) {
        return Err(AuditOpsError::PrivateKeyGiven { what: "the value given".into() });
    }
    if let Ok(k) = AuditPublicKey::from_hex(value) {
        return Ok(vec![k]);
    }
    let what = format!("{value:?}");
    let text = fs::read_to_string(value)
        .map_err(|e| AuditOpsError::PublicKey { what: what.clone(), message: format!("as a file: {e}") })?;
    let mut keys = Vec::new();
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        if refuse_private(line) {
            return Err(AuditOpsError::PrivateKeyGiven { what: format!("file {value}") });
        }
        let k = AuditPublicKey::from_hex(line)
            .map_err(|e| AuditOpsError::PublicKey { what: what.clone(), message: format!("line {}: {e}", i + 1) })?;
        keys.push(k);
    }
    if keys.is_empty() {
        return Err(AuditOpsError::PublicKey { what, message: "the file holds no key".into() });
    }
    Ok(keys)
}

// ---------------------------------------------------------------------------------------
// Anchor file

/// The checkpoints in the anchor file; a missing file has none.
pub fn read_anchor_file(path: &Path) -> Result<Vec<Checkpoint>, AuditOpsError> {
    match fs::read_to_string(path) {
        Ok(text) => {
            parse_anchor_lines(&text).map_err(|source| AuditOpsError::AnchorFormat { path: path.to_path_buf(), source })
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(source) => Err(AuditOpsError::AnchorRead { path: path.to_path_buf(), source }),
    }
}

/// Appends one line per checkpoint and fsyncs before returning.
pub fn append_anchor_lines(path: &Path, checkpoints: &[Checkpoint]) -> Result<(), AuditOpsError> {
    if checkpoints.is_empty() {
        return Ok(());
    }
    let write_err = |source| AuditOpsError::AnchorWrite { path: path.to_path_buf(), source };
    let existed = path.exists();
    let mut file = OpenOptions::new().create(true).append(true).read(true).open(path).map_err(write_err)?;
    let mut text = String::new();
    // A line cut short by a crash must not swallow the next one.
    let len = file.metadata().map_err(write_err)?.len();
    if len > 0 {
        use std::io::{Read, Seek, SeekFrom};
        let mut last = [0u8; 1];
        file.seek(SeekFrom::Start(len - 1)).map_err(write_err)?;
        file.read_exact(&mut last).map_err(write_err)?;
        if last[0] != b'\n' {
            text.push('\n');
        }
    }
    for cp in checkpoints {
        text.push_str(&cp.to_anchor_line());
        text.push('\n');
    }
    file.write_all(text.as_bytes()).map_err(write_err)?;
    file.sync_all().map_err(write_err)?;
    if !existed {
        sync_parent(path);
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Checkpointer

/// What one checkpointer run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckpointRun {
    /// Newly signed and stored, oldest day first.
    pub signed: Vec<Checkpoint>,
    /// Checkpoints that were in the database but missing from the anchor file, now appended
    /// (newly signed ones not included).
    pub repaired: Vec<Checkpoint>,
    /// Days whose anchor-file checkpoint differs from the database's, or that the anchor
    /// file seals but the database has lost: left alone (never re-signed), for
    /// `audit verify` to report.
    pub conflicts: Vec<NaiveDate>,
    /// The day the run stopped at, because its records do not form an unbroken chain.
    pub broken: Option<BrokenDay>,
}

/// A completed day that was not signed because its stored records are not intact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokenDay {
    pub day: NaiveDate,
    pub seq: u64,
    pub why: String,
}

/// Signs a checkpoint for every UTC day strictly before `today` that has records and no
/// checkpoint, stores it, and appends it to the anchor file (fsynced); then appends any
/// stored checkpoint the anchor file lacks. Idempotent. Returns the newly signed ones.
///
/// Before signing a day, its records are checked to link to one another and to the day
/// before: a checkpoint must never bless a chain that was already altered. A broken day
/// stops the run with [`AuditOpsError::ChainBroken`] after the days before it are done.
pub async fn checkpoint_completed_days(
    store: &Store,
    key: &AuditKey,
    anchor_path: &Path,
    today: NaiveDate,
) -> Result<Vec<Checkpoint>, AuditOpsError> {
    let now = AuditTime::from_datetime(Utc::now())?;
    let run = checkpoint_completed_days_at(store, key, anchor_path, today, now).await?;
    for day in &run.conflicts {
        tracing::warn!(%day, anchor = %anchor_path.display(), "the anchor file's checkpoint differs from the database's, or the database lost it");
    }
    if !run.repaired.is_empty() {
        tracing::warn!(count = run.repaired.len(), "appended stored checkpoints missing from the anchor file");
    }
    match run.broken {
        Some(b) => Err(AuditOpsError::ChainBroken { day: b.day, seq: b.seq, why: b.why }),
        None => Ok(run.signed),
    }
}

/// [`checkpoint_completed_days`] with the checkpoints' `createdAt` given, returning the
/// whole account of the run.
pub async fn checkpoint_completed_days_at(
    store: &Store,
    key: &AuditKey,
    anchor_path: &Path,
    today: NaiveDate,
    created_at: AuditTime,
) -> Result<CheckpointRun, AuditOpsError> {
    // The anchor file is read first so a damaged one stops the run before anything changes.
    let anchored = read_anchor_file(anchor_path)?;
    let (pending, broken) = pending_checkpoints(store, key, today, created_at).await?;
    let mut run = CheckpointRun { broken, ..CheckpointRun::default() };
    for cp in pending {
        // The anchor file seals this day but the database lost its checkpoint: never sign
        // the day anew over whatever the database holds now. `audit verify` reports it.
        if anchored.iter().any(|a| a.day == cp.day) {
            run.conflicts.push(cp.day);
            continue;
        }
        match store.write(WriteOp::PutCheckpoint(cp.clone())).await {
            Ok(_) => {}
            // Another process (the service or `audit checkpoint`) stored its own checkpoint
            // for this day first; the repair below anchors that one.
            Err(StoreError::CheckpointConflict { .. }) => continue,
            Err(e) => return Err(e.into()),
        }
        // Appended one by one, right after each is stored, so a crash leaves at most one
        // stored checkpoint for the repair below to catch up on.
        append_anchor_lines(anchor_path, std::slice::from_ref(&cp))?;
        run.signed.push(cp);
    }
    for cp in store.checkpoints().await? {
        if run.signed.contains(&cp) {
            continue;
        }
        match anchored.iter().find(|a| a.day == cp.day) {
            Some(a) if *a == cp => {}
            Some(_) => run.conflicts.push(cp.day),
            None => run.repaired.push(cp),
        }
    }
    append_anchor_lines(anchor_path, &run.repaired)?;
    Ok(run)
}

/// How long the service should wait before its next checkpointer run: until a few seconds
/// after the coming UTC midnight, when the day that just ended is complete.
pub fn until_next_checkpoint(now: DateTime<Utc>) -> Duration {
    let next_day = now.date_naive().succ_opt().unwrap_or(NaiveDate::MAX);
    let at = next_day.and_time(NaiveTime::MIN).and_utc() + TimeDelta::seconds(CHECKPOINT_DELAY_SECS);
    (at - now).to_std().unwrap_or(Duration::ZERO)
}

/// The checkpoints the store is missing for completed days, signed but not stored, and the
/// break that stopped the scan, if any.
async fn pending_checkpoints(
    store: &Store,
    key: &AuditKey,
    today: NaiveDate,
    created_at: AuditTime,
) -> Result<(Vec<Checkpoint>, Option<BrokenDay>), AuditOpsError> {
    let stored = store.checkpoints().await?;
    let days = store.audit_days().await?;
    let mut out = Vec::new();
    for d in days.iter().filter(|d| d.day < today && !stored.iter().any(|c| c.day == d.day)) {
        match check_day(store, d, &stored).await? {
            Ok(last_hash) => out.push(Checkpoint::sign(d.day, d.last_seq, last_hash, d.count, created_at, key)),
            Err(e) => return Ok((out, Some(e))),
        }
    }
    Ok((out, None))
}

/// Re-checks one day's stored records (hashes, links, no holes) and returns the hash of its
/// last record. The day must also link to what precedes it: the previous record, or the
/// stored checkpoint that ends just before it once that record was purged.
async fn check_day(
    store: &Store,
    d: &DaySummary,
    stored: &[Checkpoint],
) -> Result<Result<Digest, BrokenDay>, AuditOpsError> {
    let broken = |seq, why: &str| Ok(Err(BrokenDay { day: d.day, seq, why: why.to_owned() }));
    let mut prev = if d.first_seq <= 1 {
        Some(Digest::ZERO)
    } else {
        match store.audit_record(d.first_seq - 1).await? {
            Some(r) => Some(r.hash),
            None => stored.iter().find(|c| c.last_seq == d.first_seq - 1).map(|c| c.last_hash),
        }
    };
    let mut expected = d.first_seq;
    let mut buf = Vec::with_capacity(512);
    let mut stream = std::pin::pin!(store.audit_stream(d.first_seq, STREAM_BATCH));
    while let Some(batch) = stream.try_next().await? {
        for r in batch.iter().take_while(|r| r.seq <= d.last_seq) {
            if r.seq != expected {
                return broken(expected, "the record is missing");
            }
            match prev {
                Some(p) if p == r.prev_hash => {}
                Some(_) => return broken(r.seq, "prevHash does not match the previous record's hash"),
                None => return broken(r.seq, "the record before it is missing and no checkpoint ends there"),
            }
            if r.compute_hash(&mut buf) != r.hash {
                return broken(r.seq, "contents do not match the record's hash");
            }
            prev = Some(r.hash);
            expected += 1;
        }
        if batch.last().is_some_and(|r| r.seq >= d.last_seq) {
            break;
        }
    }
    match prev {
        Some(h) if expected == d.last_seq + 1 => Ok(Ok(h)),
        _ => broken(expected, "the record is missing"),
    }
}

// ---------------------------------------------------------------------------------------
// Verify

/// The outcome of verifying the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    pub verdict: Verdict,
    /// Days removed by the retention policy, oldest first.
    pub purges: Vec<PurgeRecord>,
    /// Distinct checkpoints checked (database and anchor file together).
    pub checkpoints: usize,
    /// Checkpoints in the anchor file, when one was read.
    pub anchor_checkpoints: Option<usize>,
    /// Stored checkpoints not (yet) in the anchor file. Not a failure (a crash between
    /// storing and appending leaves this), but `gc-assist audit checkpoint` should repair it.
    pub not_in_anchor: Vec<NaiveDate>,
}

impl VerifyReport {
    pub fn is_valid(&self) -> bool {
        self.verdict.is_valid()
    }
}

/// Streams every stored record through the [`Verifier`] with the checkpoints of both the
/// database and the anchor file (if given; a missing file counts as empty). Errors are
/// failures to read; defects are in the report's verdict.
pub async fn verify(
    store: &Store,
    anchor_file: Option<&Path>,
    keys: &[AuditPublicKey],
) -> Result<VerifyReport, AuditOpsError> {
    let db = store.checkpoints().await?;
    let anchored = match anchor_file {
        Some(p) => Some(read_anchor_file(p)?),
        None => None,
    };
    let anchor_list = anchored.as_deref().unwrap_or_default();
    let mut all = db.clone();
    for cp in anchor_list {
        if !all.contains(cp) {
            all.push(cp.clone());
        }
    }
    let purges = store.purges().await?;
    let not_in_anchor = match &anchored {
        Some(a) => db.iter().filter(|c| !a.iter().any(|x| x.day == c.day)).map(|c| c.day).collect(),
        None => Vec::new(),
    };
    let mut report = VerifyReport {
        verdict: Verdict::Valid { records: 0, first_seq: 1, last_seq: 0, purged: 0 },
        purges,
        checkpoints: all.len(),
        anchor_checkpoints: anchored.as_ref().map(Vec::len),
        not_in_anchor,
    };
    // After a purge, verification starts from the checkpoint that ends the last purged
    // day; with every record purged it is the only thing the chain's end is checked against.
    let start = report.purges.iter().map(|p| p.last_seq).max().and_then(|s| all.iter().find(|c| c.last_seq == s));
    report.verdict = stream_verdict(store, start.cloned().as_ref(), &all, keys).await?;
    if let Verdict::Valid { first_seq, purged, .. } = report.verdict {
        // Records before the first present one may only be gone by a recorded purge: whole
        // days, contiguous from seq 1. Deleting old, checkpointed days by hand is a gap.
        if purged > 0 && !purges_cover(&report.purges, purged) {
            report.verdict = Verdict::Gap { after_seq: 0, next_seq: first_seq };
        }
    }
    if report.verdict.is_valid() {
        // The chain agrees with every checkpoint; now the database must still hold every
        // checkpoint the anchor file has, unchanged (else the database was rewritten).
        for a in anchor_list {
            let why = match db.iter().find(|c| c.day == a.day) {
                None => "it is in the anchor file but missing from the database",
                Some(c) if c != a => "the database's checkpoint differs from the anchor file's",
                Some(_) => continue,
            };
            report.verdict = Verdict::BadCheckpoint { day: a.day, last_seq: a.last_seq, why: why.to_owned() };
            break;
        }
    }
    Ok(report)
}

/// Whether the recorded purges account for exactly seq `1..=purged`.
fn purges_cover(purges: &[PurgeRecord], purged: u64) -> bool {
    let mut spans: Vec<(u64, u64)> = purges.iter().map(|p| (p.first_seq, p.last_seq)).collect();
    spans.sort_unstable();
    let mut next = 1u64;
    for (first, last) in spans {
        if first > next {
            return false;
        }
        next = next.max(last.saturating_add(1));
    }
    next > purged
}

/// Runs every stored record through a [`Verifier`] holding `checkpoints` (whose
/// signatures it checks up front against `keys`). Only a read failure is an error.
async fn stream_verdict(
    store: &Store,
    start: Option<&Checkpoint>,
    checkpoints: &[Checkpoint],
    keys: &[AuditPublicKey],
) -> Result<Verdict, AuditOpsError> {
    let mut verifier = match Verifier::new(start, checkpoints, keys) {
        Ok(v) => v,
        Err(verdict) => return Ok(verdict),
    };
    // Two stages on two cores: the store's reader thread decodes each row in place and packs
    // it into a batch (its text appended to one buffer); this task writes each record's
    // canonical bytes, hashes them and walks the chain. That split keeps the two stages
    // about equal in cost, and nothing is allocated per record.
    let (tx, rx) = tokio::sync::mpsc::channel::<ViewBatch>(2);
    let mut filling = ViewBatch::default();
    let scan = store.audit_scan(0, move |view| {
        match view {
            Some(r) => {
                filling.push(&r);
                if filling.items.len() < STREAM_BATCH as usize {
                    return true;
                }
            }
            None if filling.items.is_empty() => return false,
            None => {}
        }
        tx.blocking_send(std::mem::take(&mut filling)).is_ok()
    });
    let check = async {
        // Owned here so that returning early drops it, which stops the reader.
        let mut rx = rx;
        let mut canonical = Vec::with_capacity(1024);
        while let Some(batch) = rx.recv().await {
            for r in batch.views() {
                canonical.clear();
                r.append_canonical(&mut canonical);
                if let Err(verdict) = verifier.push_canonical(&CanonicalRecord::of(&r, &canonical)) {
                    return Some(verdict);
                }
            }
        }
        None
    };
    let (scanned, failed) = tokio::join!(scan, check);
    if let Some(verdict) = failed {
        return Ok(verdict);
    }
    scanned?;
    Ok(verifier.finish())
}

/// Records handed from the store's reader thread to the verifier: each record's fixed
/// fields as a view with empty text, and its six text fields appended to `text`.
#[derive(Default)]
struct ViewBatch {
    text: String,
    /// The view (text fields empty, optional ones `Some("")` when present) and where each of
    /// status, error, actor, reason, complianceTag and retentionPolicy ends in `text`.
    items: Vec<(RecordView<'static>, [usize; 6])>,
}

impl ViewBatch {
    fn push(&mut self, r: &RecordView<'_>) {
        if self.items.is_empty() {
            self.text.reserve(STREAM_BATCH as usize * 64);
            self.items.reserve(STREAM_BATCH as usize);
        }
        let mut ends = [0; 6];
        let fields =
            [Some(r.status), r.error, Some(r.actor), r.reason, Some(r.compliance_tag), Some(r.retention_policy)];
        for (end, field) in ends.iter_mut().zip(fields) {
            self.text.push_str(field.unwrap_or_default());
            *end = self.text.len();
        }
        let fixed = RecordView {
            status: "",
            error: r.error.map(|_| ""),
            actor: "",
            reason: r.reason.map(|_| ""),
            compliance_tag: "",
            retention_policy: "",
            ..*r
        };
        self.items.push((fixed, ends));
    }

    fn views(&self) -> impl Iterator<Item = RecordView<'_>> {
        let mut start = 0;
        self.items.iter().map(move |(r, ends)| {
            let mut next = |end: usize| {
                // Ends were recorded at char boundaries of `text`, in order.
                let s = self.text.get(start..end).unwrap_or_default();
                start = end;
                s
            };
            let status = next(ends[0]);
            let error = next(ends[1]);
            let actor = next(ends[2]);
            let reason = next(ends[3]);
            let compliance_tag = next(ends[4]);
            let retention_policy = next(ends[5]);
            RecordView {
                status,
                error: r.error.map(|_| error),
                actor,
                reason: r.reason.map(|_| reason),
                compliance_tag,
                retention_policy,
                ..*r
            }
        })
    }
}

/// Verifies an export (JSONL, one record per line, as [`export_jsonl`] writes) against
/// `checkpoints` (typically the anchor file's), streaming: what an auditor with only the
/// export, the anchor file and the public key can check. A line that is not a record is an
/// error naming the line.
pub fn verify_jsonl(
    input: impl io::BufRead,
    checkpoints: &[Checkpoint],
    keys: &[AuditPublicKey],
) -> Result<Verdict, AuditOpsError> {
    let mut verifier = match Verifier::new(None, checkpoints, keys) {
        Ok(v) => v,
        Err(verdict) => return Ok(verdict),
    };
    for (i, line) in input.lines().enumerate() {
        let line = line.map_err(AuditOpsError::ExportRead)?;
        if line.trim().is_empty() {
            continue;
        }
        let record = serde_json::from_str(&line)
            .map_err(|e| AuditOpsError::ExportLine { line: i + 1, message: e.to_string() })?;
        if let Err(verdict) = verifier.push(&record) {
            return Ok(verdict);
        }
    }
    Ok(verifier.finish())
}

// ---------------------------------------------------------------------------------------
// Export

/// Writes records with `seq >= from_seq` as JSONL (one [`AuditRecord`] per line, its wire
/// form) to `out`, streaming. Returns how many were written.
///
/// [`AuditRecord`]: super::AuditRecord
pub async fn export_jsonl(store: &Store, from_seq: u64, out: impl Write) -> Result<u64, AuditOpsError> {
    let mut out = BufWriter::new(out);
    let mut n = 0u64;
    let mut stream = std::pin::pin!(store.audit_stream(from_seq, STREAM_BATCH));
    while let Some(batch) = stream.try_next().await? {
        for r in &batch {
            serde_json::to_writer(&mut out, r).map_err(|e| AuditOpsError::Export(e.into()))?;
            out.write_all(b"\n").map_err(AuditOpsError::Export)?;
            n += 1;
        }
    }
    out.flush().map_err(AuditOpsError::Export)?;
    Ok(n)
}

// ---------------------------------------------------------------------------------------
// Purge

/// What a retention purge did (or, dry, would do).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PurgeReport {
    pub plan: PurgePlan,
    /// The purged (or purgeable) days as the store counted them, oldest first.
    pub days: Vec<DaySummary>,
    /// Checkpoints signed first so completed days can be purged (dry run: signed in memory
    /// only, nothing stored).
    pub signed: Vec<Checkpoint>,
    /// A completed day left unsigned because its records are not intact (the plan holds
    /// back there).
    pub broken: Option<BrokenDay>,
    pub dry_run: bool,
}

/// Checkpoints completed days, plans the purge with [`purge_plan`] (only checkpoints signed
/// by `key` count), and deletes the planned whole days. With `dry_run`, nothing is written.
pub async fn purge(
    store: &Store,
    key: &AuditKey,
    anchor_path: &Path,
    retention_days: u32,
    today: NaiveDate,
    dry_run: bool,
) -> Result<PurgeReport, AuditOpsError> {
    let now = AuditTime::from_datetime(Utc::now())?;
    // A broken day is not an error here: the plan holds back at it, and the report says why.
    let (signed, broken, checkpoints) = if dry_run {
        let (pending, broken) = pending_checkpoints(store, key, today, now).await?;
        let mut all = store.checkpoints().await?;
        all.extend(pending.iter().cloned());
        (pending, broken, all)
    } else {
        let run = checkpoint_completed_days_at(store, key, anchor_path, today, now).await?;
        (run.signed, run.broken, store.checkpoints().await?)
    };
    let summaries = store.audit_days().await?;
    let plan = purge_plan(&summaries, &checkpoints, &[key.public()], retention_days, today);
    let days: Vec<DaySummary> = summaries.into_iter().filter(|d| plan.days.contains(&d.day)).collect();
    if let (false, Some(through_seq)) = (dry_run, plan.through_seq) {
        store.write(WriteOp::PurgeDays { days: plan.days.clone(), through_seq }).await?;
    }
    Ok(PurgeReport { plan, days, signed, broken, dry_run })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_view_batch_gives_back_the_records_it_was_given() {
        use rand::SeedableRng;
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let mut chain = super::super::Chain::genesis();
        let at = AuditTime::from_unix_millis(1_714_521_600_000).unwrap();
        let mut records = Vec::new();
        for n in 1..=60u64 {
            let mut draft = super::super::chain::test_draft(n);
            if n % 7 == 0 {
                // Non-ASCII and escaped text must come back byte for byte.
                draft.actor = "panel:agent-Zoë \"ü\"\n".to_owned();
                draft.reason = Some(String::new());
            }
            records.push(chain.append(draft, at, &mut rng).unwrap());
        }
        let mut batch = ViewBatch::default();
        for r in &records {
            batch.push(&r.view());
        }
        let back: Vec<super::super::AuditRecord> = batch.views().map(|v| v.to_record()).collect();
        assert_eq!(back, records);
        // And what the verifier is fed from them holds the chain together.
        let mut verifier = Verifier::new(None, &[], &[]).unwrap();
        let mut canonical = Vec::new();
        for v in batch.views() {
            canonical.clear();
            v.append_canonical(&mut canonical);
            verifier.push_canonical(&CanonicalRecord::of(&v, &canonical)).unwrap();
        }
        assert!(matches!(verifier.finish(), Verdict::Valid { records: 60, .. }));
    }

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn next_checkpoint_is_just_after_utc_midnight() {
        let table = [
            ("2024-05-01T00:00:00Z", 86_405),
            ("2024-05-01T00:00:04Z", 86_401),
            ("2024-05-01T23:59:59Z", 6),
            ("2024-05-01T12:00:00Z", 43_205),
            ("2024-12-31T23:00:00Z", 3_605),
        ];
        for (now, secs) in table {
            assert_eq!(until_next_checkpoint(at(now)), Duration::from_secs(secs), "{now}");
        }
    }

    fn purge(day: u32, first_seq: u64, last_seq: u64) -> PurgeRecord {
        PurgeRecord {
            day: NaiveDate::from_ymd_opt(2024, 5, day).unwrap(),
            first_seq,
            last_seq,
            record_count: last_seq - first_seq + 1,
            purged_at: 0,
        }
    }

    #[test]
    fn recorded_purges_must_cover_every_missing_record() {
        let table: &[(&[PurgeRecord], u64, bool)] = &[
            (&[], 0, true),
            (&[], 3, false),
            (&[purge(1, 1, 3)], 3, true),
            (&[purge(2, 4, 6), purge(1, 1, 3)], 6, true),
            (&[purge(1, 1, 3)], 6, false),
            (&[purge(2, 4, 6)], 6, false),
            (&[purge(1, 1, 3), purge(3, 7, 9)], 9, false),
        ];
        for (i, (purges, purged, want)) in table.iter().enumerate() {
            assert_eq!(purges_cover(purges, *purged), *want, "case {i}");
        }
    }
}
