//! The audit hash chain: appending records ([`Chain`]) and verifying a sequence of them
//! against signed checkpoints ([`Verifier`], [`verify`]).
//!
//! Sequence numbers start at 1; record 1's `prevHash` is [`Digest::ZERO`]. Verification
//! streams: it holds one scratch buffer and the sorted checkpoint list, never the records,
//! so it checks an export of any size in constant memory and allocates nothing per record.
//!
//! # Verdicts
//!
//! - `Valid`: see the guarantees in the [module docs](super). `purged` counts records before
//!   the first present one, covered by the checkpoint verification started from.
//! - `Invalid`: the first record (by position) whose contents, link or sequence number are
//!   wrong, or whose hash disagrees with a signed checkpoint.
//! - `Gap`: records are missing between two present ones (the later one's `prevHash` does
//!   not follow the earlier one, so this is a hole, not a rewritten `seq`).
//! - `MissingTail`: a signed checkpoint names a record later than the last one present:
//!   the end of the chain was cut off.
//! - `Unanchored`: the first present record is not record 1 and no checkpoint ends exactly
//!   before it, so nothing vouches for where the chain starts.
//! - `BadCheckpoint`: a checkpoint's signature fails, its key is unknown, or two checkpoints
//!   disagree about the same record.

use std::fmt;

use chrono::NaiveDate;
use rand::RngCore;

use super::checkpoint::{AuditPublicKey, Checkpoint};
use super::record::{link, AuditDraft, AuditRecord, AuditTime, Digest, RecordView, COMPLIANCE_TAG, RETENTION_POLICY};
use super::AuditError;

/// The in-memory appender: knows the last sequence number and hash, nothing else.
#[derive(Debug, Clone)]
pub struct Chain {
    last_seq: u64,
    last_hash: Digest,
    buf: Vec<u8>,
}

impl Chain {
    /// An empty chain: the next record is seq 1 with a zero `prevHash`.
    pub fn genesis() -> Chain {
        Chain::resume(0, Digest::ZERO)
    }

    /// Continues after a stored record (or a checkpoint, if every record was purged).
    pub fn resume(last_seq: u64, last_hash: Digest) -> Chain {
        Chain { last_seq, last_hash, buf: Vec::with_capacity(512) }
    }

    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    pub fn last_hash(&self) -> Digest {
        self.last_hash
    }

    /// Seals `draft` as the next record at `at`. The `auditId` is a UUID v7 carrying `at`'s
    /// milliseconds and 74 random bits from `rng` (injected so tests are reproducible).
    /// Seals `draft` now, with the system clock and RNG: for one-shot callers (the CLI)
    /// that have no clock of their own to inject.
    pub fn append_now(&mut self, draft: AuditDraft) -> Result<AuditRecord, AuditError> {
        let at = AuditTime::from_datetime(chrono::Utc::now())?;
        self.append(draft, at, &mut rand::thread_rng())
    }

    pub fn append(
        &mut self,
        draft: AuditDraft,
        at: AuditTime,
        rng: &mut impl RngCore,
    ) -> Result<AuditRecord, AuditError> {
        let seq = self.last_seq.checked_add(1).ok_or(AuditError::SeqExhausted)?;
        let mut random = [0u8; 10];
        rng.fill_bytes(&mut random);
        let millis = u64::try_from(at.unix_millis()).unwrap_or(0);
        let audit_id = uuid::Builder::from_unix_timestamp_millis(millis, &random).into_uuid();
        let AuditDraft { conversation_id, prompt_id, injection_id, status, latency_ms, error, actor, reason } = draft;
        let mut record = AuditRecord {
            seq,
            audit_id,
            timestamp: at,
            conversation_id,
            prompt_id,
            injection_id,
            status,
            latency_ms,
            error,
            actor,
            reason,
            compliance_tag: COMPLIANCE_TAG.to_owned(),
            retention_policy: RETENTION_POLICY.to_owned(),
            prev_hash: self.last_hash,
            hash: Digest::ZERO,
        };
        record.hash = record.compute_hash(&mut self.buf);
        self.last_seq = seq;
        self.last_hash = record.hash;
        Ok(record)
    }
}

/// What is wrong with the first bad record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Defect {
    /// The record's contents do not hash to its `hash`.
    HashMismatch,
    /// Its `prevHash` is not the previous record's `hash` (nor the checkpoint's it starts from).
    PrevHashMismatch,
    /// It sits where `expected` belongs but claims another `seq` while linking correctly:
    /// the sequence number was altered (or the record duplicated).
    SeqMismatch {
        expected: u64,
        found: u64,
    },
    WrongComplianceTag,
    WrongRetentionPolicy,
    /// The record's hash differs from the one a signed checkpoint recorded for it.
    CheckpointMismatch {
        day: NaiveDate,
    },
}

impl fmt::Display for Defect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Defect::HashMismatch => f.write_str("contents do not match the record's hash (the record was altered)"),
            Defect::PrevHashMismatch => f.write_str("prevHash does not match the previous record's hash"),
            Defect::SeqMismatch { expected, found } => {
                write!(f, "record in position of seq {expected} claims seq {found}")
            }
            Defect::WrongComplianceTag => write!(f, "complianceTag is not {COMPLIANCE_TAG}"),
            Defect::WrongRetentionPolicy => write!(f, "retentionPolicy is not {RETENTION_POLICY}"),
            Defect::CheckpointMismatch { day } => {
                write!(f, "hash differs from the signed checkpoint of {day} (the chain was rewritten)")
            }
        }
    }
}

/// The outcome of verification; see the module docs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// `first_seq..=last_seq` verified; with `records == 0`, `first_seq == last_seq + 1`.
    Valid {
        records: u64,
        first_seq: u64,
        last_seq: u64,
        purged: u64,
    },
    Invalid {
        first_bad_seq: u64,
        why: Defect,
    },
    Gap {
        after_seq: u64,
        next_seq: u64,
    },
    MissingTail {
        last_seq_present: u64,
        checkpoint_seq: u64,
    },
    Unanchored {
        first_seq: u64,
    },
    BadCheckpoint {
        day: NaiveDate,
        last_seq: u64,
        why: String,
    },
}

impl Verdict {
    pub fn is_valid(&self) -> bool {
        matches!(self, Verdict::Valid { .. })
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Valid { records, first_seq, last_seq, purged: 0 } => {
                write!(f, "valid: {records} records, seq {first_seq}..={last_seq}")
            }
            Verdict::Valid { records, first_seq, last_seq, purged } => write!(
                f,
                "valid: {records} records, seq {first_seq}..={last_seq}; {purged} earlier records purged by policy, covered by a signed checkpoint"
            ),
            Verdict::Invalid { first_bad_seq, why } => write!(f, "invalid at seq {first_bad_seq}: {why}"),
            Verdict::Gap { after_seq, next_seq } => {
                write!(f, "gap: records after seq {after_seq} are missing up to seq {next_seq}")
            }
            Verdict::MissingTail { last_seq_present, checkpoint_seq } => write!(
                f,
                "missing tail: the last record present is seq {last_seq_present} but a signed checkpoint covers up to seq {checkpoint_seq}"
            ),
            Verdict::Unanchored { first_seq } => write!(
                f,
                "unanchored: records before seq {first_seq} are gone and no signed checkpoint ends at seq {}",
                first_seq.saturating_sub(1)
            ),
            Verdict::BadCheckpoint { day, last_seq, why } => {
                write!(f, "bad checkpoint for {day} (up to seq {last_seq}): {why}")
            }
        }
    }
}

/// A checkpoint reduced to what the record loop compares.
#[derive(Debug, Clone, Copy)]
struct Mark {
    seq: u64,
    hash: Digest,
    day: NaiveDate,
}

/// A record reduced to what [`Verifier::push_canonical`] checks: its links, its canonical
/// bytes (module docs of [`super::record`]) and whether its fixed fields hold their values.
#[derive(Debug, Clone, Copy)]
pub struct CanonicalRecord<'a> {
    pub seq: u64,
    pub prev_hash: Digest,
    pub hash: Digest,
    pub canonical: &'a [u8],
    pub compliance_tag_ok: bool,
    pub retention_policy_ok: bool,
}

impl<'a> CanonicalRecord<'a> {
    /// `r` with `canonical`, which must be `r`'s canonical bytes.
    pub fn of(r: &RecordView<'_>, canonical: &'a [u8]) -> CanonicalRecord<'a> {
        CanonicalRecord {
            seq: r.seq,
            prev_hash: r.prev_hash,
            hash: r.hash,
            canonical,
            compliance_tag_ok: r.compliance_tag == COMPLIANCE_TAG,
            retention_policy_ok: r.retention_policy == RETENTION_POLICY,
        }
    }
}

/// Streaming verification: [`Verifier::new`], [`Verifier::push`] each record in order,
/// then [`Verifier::finish`].
#[derive(Debug)]
pub struct Verifier {
    /// Signature-checked checkpoints (anchor included), by `seq`.
    marks: Vec<Mark>,
    /// The first mark not yet passed by the records.
    next_mark: usize,
    anchor: Option<Mark>,
    /// `(seq, hash)` of the last verified record, or of the starting point.
    at: Option<(u64, Digest)>,
    first_seq: u64,
    records: u64,
    failed: Option<Verdict>,
    buf: Vec<u8>,
}

impl Verifier {
    /// Checks every checkpoint's signature under `keys` (selected by `keyId`). `anchor`, if
    /// given, is the checkpoint to start from when the first records were purged; without it
    /// one is looked for among `checkpoints`.
    pub fn new(
        anchor: Option<&Checkpoint>,
        checkpoints: &[Checkpoint],
        keys: &[AuditPublicKey],
    ) -> Result<Verifier, Verdict> {
        let mut marks = Vec::with_capacity(checkpoints.len() + 1);
        for cp in anchor.into_iter().chain(checkpoints) {
            if let Err(e) = cp.verify_with(keys) {
                return Err(Verdict::BadCheckpoint { day: cp.day, last_seq: cp.last_seq, why: e.to_string() });
            }
            marks.push(Mark { seq: cp.last_seq, hash: cp.last_hash, day: cp.day });
        }
        marks.sort_by_key(|m| m.seq);
        for pair in marks.windows(2) {
            if pair[0].seq == pair[1].seq && pair[0].hash != pair[1].hash {
                return Err(Verdict::BadCheckpoint {
                    day: pair[1].day,
                    last_seq: pair[1].seq,
                    why: format!(
                        "it names a different hash for seq {} than the checkpoint of {}",
                        pair[1].seq, pair[0].day
                    ),
                });
            }
        }
        let anchor = anchor.map(|cp| Mark { seq: cp.last_seq, hash: cp.last_hash, day: cp.day });
        Ok(Verifier {
            marks,
            next_mark: 0,
            anchor,
            at: None,
            first_seq: 0,
            records: 0,
            failed: None,
            buf: Vec::with_capacity(512),
        })
    }

    /// Checks the next record. `Err` carries the final verdict; later pushes repeat it.
    pub fn push(&mut self, r: &AuditRecord) -> Result<(), Verdict> {
        let mut buf = std::mem::take(&mut self.buf);
        r.write_canonical(&mut buf);
        let result = self.push_canonical(&CanonicalRecord::of(&r.view(), &buf));
        self.buf = buf;
        result
    }

    /// [`Verifier::push`] for a record whose canonical bytes were written elsewhere (a reader
    /// thread, say), so hashing and the chain checks are all that is left here.
    pub fn push_canonical(&mut self, r: &CanonicalRecord<'_>) -> Result<(), Verdict> {
        if let Some(v) = &self.failed {
            return Err(v.clone());
        }
        let result = self.check(r);
        if let Err(v) = &result {
            self.failed = Some(v.clone());
        }
        result
    }

    fn check(&mut self, r: &CanonicalRecord<'_>) -> Result<(), Verdict> {
        let (prev_seq, prev_hash) = match self.at {
            Some(at) => at,
            None => self.start_for(r.seq)?,
        };
        let expected = prev_seq.saturating_add(1);
        if r.seq != expected {
            // A record that links correctly to its predecessor but carries the wrong number
            // had its `seq` altered; one that does not link follows a hole.
            if r.seq > expected && r.prev_hash != prev_hash {
                return Err(Verdict::Gap { after_seq: prev_seq, next_seq: r.seq });
            }
            return Err(Verdict::Invalid {
                first_bad_seq: expected,
                why: Defect::SeqMismatch { expected, found: r.seq },
            });
        }
        let invalid = |why| Err(Verdict::Invalid { first_bad_seq: r.seq, why });
        if r.prev_hash != prev_hash {
            return invalid(Defect::PrevHashMismatch);
        }
        if link(&r.prev_hash, r.canonical) != r.hash {
            return invalid(Defect::HashMismatch);
        }
        if !r.compliance_tag_ok {
            return invalid(Defect::WrongComplianceTag);
        }
        if !r.retention_policy_ok {
            return invalid(Defect::WrongRetentionPolicy);
        }
        while let Some(m) = self.marks.get(self.next_mark).filter(|m| m.seq <= r.seq) {
            if m.seq == r.seq && m.hash != r.hash {
                return invalid(Defect::CheckpointMismatch { day: m.day });
            }
            self.next_mark += 1;
        }
        if self.records == 0 {
            self.first_seq = r.seq;
        }
        self.records += 1;
        self.at = Some((r.seq, r.hash));
        Ok(())
    }

    /// Where verification starts, given the first present record's seq.
    fn start_for(&mut self, first_seq: u64) -> Result<(u64, Digest), Verdict> {
        let start = if first_seq <= 1 {
            (0, Digest::ZERO)
        } else {
            let before = first_seq - 1;
            let m = self
                .anchor
                .filter(|a| a.seq == before)
                .or_else(|| self.marks.iter().copied().find(|m| m.seq == before))
                .ok_or(Verdict::Unanchored { first_seq })?;
            (m.seq, m.hash)
        };
        self.begin_at(start)?;
        Ok(start)
    }

    /// Passes every checkpoint at or before the starting point; those *at* it must agree.
    fn begin_at(&mut self, (seq, hash): (u64, Digest)) -> Result<(), Verdict> {
        while let Some(m) = self.marks.get(self.next_mark).filter(|m| m.seq <= seq) {
            if m.seq == seq && m.hash != hash {
                let why = format!("it names a different hash for seq {seq} than the chain's starting point");
                return Err(Verdict::BadCheckpoint { day: m.day, last_seq: m.seq, why });
            }
            self.next_mark += 1;
        }
        self.at = Some((seq, hash));
        Ok(())
    }

    /// The verdict once all records were pushed.
    pub fn finish(mut self) -> Verdict {
        if let Some(v) = self.failed.take() {
            return v;
        }
        if self.at.is_none() {
            // No records at all: start from the anchor if one was given, else from genesis.
            let start = self.anchor.map_or((0, Digest::ZERO), |a| (a.seq, a.hash));
            if let Err(v) = self.begin_at(start) {
                return v;
            }
        }
        let (last_seq, _) = self.at.unwrap_or((0, Digest::ZERO));
        if let Some(m) = self.marks.last().filter(|m| m.seq > last_seq) {
            return Verdict::MissingTail { last_seq_present: last_seq, checkpoint_seq: m.seq };
        }
        let first_seq = if self.records == 0 { last_seq.saturating_add(1) } else { self.first_seq };
        Verdict::Valid { records: self.records, first_seq, last_seq, purged: first_seq.saturating_sub(1) }
    }
}

/// Verifies `records` (in chain order) in one go; see [`Verifier`].
pub fn verify<'r>(
    records: impl IntoIterator<Item = &'r AuditRecord>,
    anchor: Option<&Checkpoint>,
    checkpoints: &[Checkpoint],
    keys: &[AuditPublicKey],
) -> Verdict {
    let mut v = match Verifier::new(anchor, checkpoints, keys) {
        Ok(v) => v,
        Err(verdict) => return verdict,
    };
    for r in records {
        if let Err(verdict) = v.push(r) {
            return verdict;
        }
    }
    v.finish()
}

/// A random conversation/prompt/injection triple is irrelevant to the chain; this keeps the
/// test helpers short.
#[cfg(test)]
pub(crate) fn test_draft(n: u64) -> AuditDraft {
    AuditDraft {
        conversation_id: uuid::Uuid::from_u128(u128::from(n % 7)),
        prompt_id: uuid::Uuid::from_u128(0xfeed),
        injection_id: uuid::Uuid::from_u128(u128::from(n)),
        status: ["accepted", "scheduled", "delivered", "clicked"][(n % 4) as usize].to_owned(),
        latency_ms: (n % 3 == 0).then_some(n),
        error: (n % 11 == 0).then(|| format!("upstream said \"no\" #{n}")),
        actor: "api-key:crm".to_owned(),
        reason: (n % 5 == 0).then(|| "operator request".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::checkpoint::AuditKey;
    use rand::rngs::StdRng;
    use rand::SeedableRng;
    use uuid::Uuid;

    const DAY_MS: i64 = 86_400_000;
    /// 2024-05-01T00:00:00Z
    const START_MS: i64 = 1_714_521_600_000;

    /// `per_day` records on each of `days` consecutive days from 2024-05-01.
    fn build(days: i64, per_day: i64) -> Vec<AuditRecord> {
        let mut rng = StdRng::seed_from_u64(7);
        let mut chain = Chain::genesis();
        let mut out = Vec::new();
        for d in 0..days {
            for i in 0..per_day {
                let at = AuditTime::from_unix_millis(START_MS + d * DAY_MS + i * 60_000).unwrap();
                out.push(chain.append(test_draft(out.len() as u64 + 1), at, &mut rng).unwrap());
            }
        }
        out
    }

    fn key() -> AuditKey {
        AuditKey::generate(&mut StdRng::seed_from_u64(99))
    }

    /// A signed checkpoint at the end of each day.
    fn checkpoints(records: &[AuditRecord], key: &AuditKey) -> Vec<Checkpoint> {
        let mut out: Vec<Checkpoint> = Vec::new();
        for (i, r) in records.iter().enumerate() {
            let last_of_day = records.get(i + 1).is_none_or(|n| n.timestamp.day() != r.timestamp.day());
            if last_of_day {
                let count = r.seq - out.last().map_or(0, |c| c.last_seq);
                let created = AuditTime::from_unix_millis(r.timestamp.unix_millis() + DAY_MS).unwrap();
                out.push(Checkpoint::sign(r.timestamp.day(), r.seq, r.hash, count, created, key));
            }
        }
        out
    }

    #[test]
    fn append_then_verify_round_trip() {
        let records = build(3, 10);
        assert_eq!(records[0].prev_hash, Digest::ZERO);
        assert_eq!(records[0].seq, 1);
        assert_eq!(records[0].audit_id.get_version_num(), 7);
        let k = key();
        let cps = checkpoints(&records, &k);
        assert_eq!(cps.len(), 3);
        let want = Verdict::Valid { records: 30, first_seq: 1, last_seq: 30, purged: 0 };
        assert_eq!(verify(&records, None, &cps, &[k.public()]), want);
        assert_eq!(verify(&records, None, &[], &[]), want);
        // Through the wire form too.
        let jsonl: Vec<String> = records.iter().map(|r| serde_json::to_string(r).unwrap()).collect();
        let parsed: Vec<AuditRecord> = jsonl.iter().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(verify(&parsed, None, &cps, &[k.public()]), want);
    }

    #[test]
    fn resume_continues_the_same_chain() {
        let records = build(1, 5);
        let mut rng = StdRng::seed_from_u64(1);
        let mut chain = Chain::resume(records[4].seq, records[4].hash);
        let at = AuditTime::from_unix_millis(START_MS + 3_600_000).unwrap();
        let mut all = records.clone();
        all.push(chain.append(test_draft(6), at, &mut rng).unwrap());
        assert_eq!(verify(&all, None, &[], &[]), Verdict::Valid { records: 6, first_seq: 1, last_seq: 6, purged: 0 });
        let mut full = Chain::resume(u64::MAX, Digest::ZERO);
        assert_eq!(full.append(test_draft(1), at, &mut rng), Err(AuditError::SeqExhausted));
    }

    #[test]
    fn altering_any_field_is_invalid_at_that_seq() {
        let records = build(1, 10);
        type Tamper = fn(&mut AuditRecord);
        let tampers: &[(&str, Tamper)] = &[
            ("seq", |r| r.seq += 1),
            ("seq down", |r| r.seq -= 1),
            ("auditId", |r| r.audit_id = Uuid::from_u128(r.audit_id.as_u128() ^ 1)),
            ("timestamp", |r| r.timestamp = AuditTime::from_unix_millis(r.timestamp.unix_millis() + 1).unwrap()),
            ("conversationId", |r| r.conversation_id = Uuid::from_u128(99)),
            ("promptId", |r| r.prompt_id = Uuid::from_u128(99)),
            ("injectionId", |r| r.injection_id = Uuid::from_u128(99)),
            ("status", |r| r.status = "failed".into()),
            ("latencyMs", |r| r.latency_ms = Some(r.latency_ms.unwrap_or(0) + 1)),
            ("latencyMs removed", |r| r.latency_ms = None),
            ("error", |r| r.error = Some("x".into())),
            ("actor", |r| r.actor.push('x')),
            ("reason", |r| r.reason = Some("covering tracks".into())),
            ("complianceTag", |r| r.compliance_tag = "OTHER".into()),
            ("retentionPolicy", |r| r.retention_policy = "FOREVER".into()),
            ("prevHash", |r| r.prev_hash.0[31] ^= 1),
            ("hash", |r| r.hash.0[0] ^= 0x80),
        ];
        for (field, tamper) in tampers {
            let mut copy = records.clone();
            tamper(&mut copy[5]); // seq 6 (record 6 has latency 6 and no reason, so every tamper changes it)
            match verify(&copy, None, &[], &[]) {
                Verdict::Invalid { first_bad_seq: 6, .. } => {}
                other => panic!("{field}: {other:?}"),
            }
        }
    }

    #[test]
    fn flipping_any_byte_of_the_wire_form_is_caught() {
        // Every letter or digit of record 6's JSON line, replaced by another of its kind:
        // either the line no longer parses, or verification names seq 6.
        let records = build(1, 10);
        let line = serde_json::to_string(&records[5]).unwrap();
        let mut caught_by_verify = 0;
        for i in 0..line.len() {
            let c = line.as_bytes()[i];
            let swapped = match c {
                b'0'..=b'8' | b'a'..=b'y' | b'A'..=b'Y' => c + 1,
                b'9' | b'z' | b'Z' => c - 1,
                _ => continue,
            };
            let mut bytes = line.clone().into_bytes();
            bytes[i] = swapped;
            let Ok(text) = String::from_utf8(bytes) else { continue };
            let Ok(r) = serde_json::from_str::<AuditRecord>(&text) else { continue };
            let mut copy = records.clone();
            copy[5] = r;
            match verify(&copy, None, &[], &[]) {
                Verdict::Invalid { first_bad_seq: 6, .. } => caught_by_verify += 1,
                other => panic!("byte {i} ({:?}→{:?}): {other:?}", c as char, swapped as char),
            }
        }
        assert!(caught_by_verify > 200, "only {caught_by_verify} flips reached verification");
    }

    #[test]
    fn deleting_a_middle_record_is_a_gap() {
        let mut records = build(1, 10);
        records.remove(4); // seq 5
        assert_eq!(verify(&records, None, &[], &[]), Verdict::Gap { after_seq: 4, next_seq: 6 });
    }

    #[test]
    fn reordering_is_caught() {
        let mut records = build(1, 10);
        records.swap(2, 3); // ... 2, 4, 3, 5 ...
        assert_eq!(verify(&records, None, &[], &[]), Verdict::Gap { after_seq: 2, next_seq: 4 });
        let mut records = build(1, 10);
        records.swap(0, 9);
        assert!(matches!(verify(&records, None, &[], &[]), Verdict::Unanchored { first_seq: 10 }));
        let mut records = build(1, 10);
        let dup = records[3].clone();
        records.insert(4, dup);
        assert!(matches!(
            verify(&records, None, &[], &[]),
            Verdict::Invalid { first_bad_seq: 5, why: Defect::SeqMismatch { expected: 5, found: 4 } }
        ));
    }

    #[test]
    fn truncated_tail_against_the_last_checkpoint() {
        let records = build(3, 10);
        let k = key();
        let cps = checkpoints(&records, &k);
        let cut = &records[..27];
        assert_eq!(
            verify(cut, None, &cps, &[k.public()]),
            Verdict::MissingTail { last_seq_present: 27, checkpoint_seq: 30 }
        );
        // Without checkpoints the truncation is invisible: that is what checkpoints are for.
        assert!(verify(cut, None, &[], &[]).is_valid());
        // Everything gone.
        let none: [AuditRecord; 0] = [];
        assert_eq!(
            verify(&none, None, &cps, &[k.public()]),
            Verdict::MissingTail { last_seq_present: 0, checkpoint_seq: 30 }
        );
    }

    #[test]
    fn purged_days_verify_from_their_checkpoint() {
        let records = build(4, 10);
        let k = key();
        let cps = checkpoints(&records, &k);
        let kept = &records[20..]; // days 1 and 2 purged
        let want = Verdict::Valid { records: 20, first_seq: 21, last_seq: 40, purged: 20 };
        assert_eq!(verify(kept, None, &cps, &[k.public()]), want);
        // An explicit anchor (from the external anchor file) works alone.
        assert_eq!(verify(kept, Some(&cps[1]), &[], &[k.public()]), want);
        // Every record purged, the last checkpoint as anchor.
        let none: [AuditRecord; 0] = [];
        assert_eq!(
            verify(&none, Some(&cps[3]), &cps, &[k.public()]),
            Verdict::Valid { records: 0, first_seq: 41, last_seq: 40, purged: 40 }
        );
        assert!(verify(&none, None, &[], &[]).is_valid());
    }

    #[test]
    fn purge_without_a_checkpoint_is_unanchored() {
        let records = build(4, 10);
        let k = key();
        let cps = checkpoints(&records, &k);
        let kept = &records[20..];
        assert_eq!(verify(kept, None, &[], &[k.public()]), Verdict::Unanchored { first_seq: 21 });
        // A checkpoint that does not end right before the first record does not anchor it.
        assert_eq!(verify(kept, Some(&cps[0]), &[], &[k.public()]), Verdict::Unanchored { first_seq: 21 });
        // Records purged mid-day, not by whole days.
        assert_eq!(verify(&records[15..], None, &cps, &[k.public()]), Verdict::Unanchored { first_seq: 16 });
    }

    #[test]
    fn forged_checkpoints_are_refused() {
        let records = build(2, 10);
        let k = key();
        let mut cps = checkpoints(&records, &k);
        // Altered after signing.
        cps[0].record_count += 1;
        assert!(matches!(verify(&records, None, &cps, &[k.public()]), Verdict::BadCheckpoint { last_seq: 10, .. }));
        // Re-signed by someone else's key under our key id.
        let mut cps = checkpoints(&records, &k);
        let intruder = AuditKey::generate(&mut StdRng::seed_from_u64(5));
        let forged = Checkpoint::sign(cps[1].day, 20, cps[1].last_hash, 10, cps[1].created_at, &intruder);
        cps[1].signature = forged.signature;
        let v = verify(&records, None, &cps, &[k.public()]);
        assert!(
            matches!(&v, Verdict::BadCheckpoint { last_seq: 20, why, .. } if why.contains("bad signature")),
            "{v:?}"
        );
        // Signed by a key the auditor does not know.
        let stranger = checkpoints(&records, &intruder);
        let v = verify(&records, None, &stranger, &[k.public()]);
        assert!(matches!(&v, Verdict::BadCheckpoint { why, .. } if why.contains("not among")), "{v:?}");
        // Two genuine-looking checkpoints disagreeing about one record.
        let mut cps = checkpoints(&records, &k);
        cps.push(Checkpoint::sign(cps[1].day, 20, Digest([1; 32]), 10, cps[1].created_at, &k));
        assert!(matches!(verify(&records, None, &cps, &[k.public()]), Verdict::BadCheckpoint { last_seq: 20, .. }));
    }

    #[test]
    fn a_rewritten_chain_disagrees_with_its_checkpoint() {
        // An attacker alters record 5 and recomputes every later hash: the chain alone looks
        // fine, but the signed checkpoint at seq 10 no longer matches.
        let records = build(2, 10);
        let k = key();
        let cps = checkpoints(&records, &k);
        let mut forged = records[..4].to_vec();
        let mut chain = Chain::resume(4, records[3].hash);
        let mut rng = StdRng::seed_from_u64(3);
        for r in &records[4..] {
            let mut d = test_draft(r.seq);
            if r.seq == 5 {
                d.status = "cancelled".into();
            }
            forged.push(chain.append(d, r.timestamp, &mut rng).unwrap());
        }
        assert!(verify(&forged, None, &[], &[]).is_valid());
        assert_eq!(
            verify(&forged, None, &cps, &[k.public()]),
            Verdict::Invalid { first_bad_seq: 10, why: Defect::CheckpointMismatch { day: cps[0].day } }
        );
    }

    #[test]
    fn streaming_repeats_the_first_failure() {
        let mut records = build(1, 5);
        records[1].actor.push('!');
        let mut v = Verifier::new(None, &[], &[]).unwrap();
        assert!(v.push(&records[0]).is_ok());
        let first = v.push(&records[1]).unwrap_err();
        assert_eq!(v.push(&records[2]).unwrap_err(), first);
        assert_eq!(v.finish(), first);
        assert!(first.to_string().contains("seq 2"), "{first}");
    }

    #[test]
    fn two_hundred_thousand_records_verify() {
        let mut rng = StdRng::seed_from_u64(11);
        let mut chain = Chain::genesis();
        let at = AuditTime::from_unix_millis(START_MS).unwrap();
        let records: Vec<AuditRecord> =
            (1..=200_000u64).map(|n| chain.append(test_draft(n), at, &mut rng).unwrap()).collect();
        assert_eq!(
            verify(&records, None, &[], &[]),
            Verdict::Valid { records: 200_000, first_seq: 1, last_seq: 200_000, purged: 0 }
        );
    }
}
