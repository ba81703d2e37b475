//! Daily checkpoints signed with the Ed25519 audit key, the anchor-file line format, the key
//! file formats, and the retention purge plan.
//!
//! # Checkpoints
//!
//! A [`Checkpoint`] says "at the end of `day` (UTC), the chain's last record was `lastSeq`
//! with hash `lastHash`; that day added `recordCount` records". It is signed so an auditor
//! holding only the public key can trust it. The signed message is the ASCII line
//! `gc-assist audit checkpoint v1\n` followed by the checkpoint's JSON without `signature`:
//! compact, keys in the order `day, lastSeq, lastHash, recordCount, createdAt, keyId`.
//! `signature` is the 64-byte Ed25519 signature in lowercase hex; verification is strict
//! (`verify_strict`: no malleable or small-order signatures).
//!
//! # Anchor file
//!
//! Checkpoints are kept forever, in the store and, for independence from it, as lines of an
//! external anchor file: one checkpoint per line, its full JSON (with `signature`), compact,
//! in the key order above. Blank lines are ignored. [`Checkpoint::to_anchor_line`] writes one,
//! [`parse_anchor_lines`] reads a whole file.
//!
//! # Key files
//!
//! The private key file is one line, `ed25519-seed:` then the 32-byte seed in lowercase hex
//! (64 characters); whitespace around it is ignored. The public key is one line,
//! `ed25519-pub:` then the 32-byte public key in hex; the bare 64 hex characters are accepted
//! too. A key's id (`keyId` in checkpoints) is the first 16 hex characters of the SHA-256 of
//! its public key bytes, so rotated keys can coexist.
//!
//! # Retention
//!
//! [`purge_plan`] decides which whole days of records may be deleted: only days older than
//! the retention, only in an unbroken run from the oldest day kept, and only days whose
//! signed checkpoint matches them exactly (last seq and record count). Verification after
//! the purge then starts from the last purged day's checkpoint. It plans; the store deletes.
//! Run verification before purging: a purge removes the evidence it would have examined.

use std::fmt;

use chrono::{Days, NaiveDate};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use rand::CryptoRng;
use rand::RngCore;
use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::record::{AuditTime, Digest};
use super::AuditError;

const SIGNING_CONTEXT: &[u8] = b"gc-assist audit checkpoint v1\n";
const SEED_PREFIX: &str = "ed25519-seed:";
const PUB_PREFIX: &str = "ed25519-pub:";

/// The private audit key. `Debug` never shows it; the seed is zeroized on drop.
pub struct AuditKey {
    signing: SigningKey,
}

impl AuditKey {
    pub fn generate<R: RngCore + CryptoRng>(rng: &mut R) -> AuditKey {
        AuditKey { signing: SigningKey::generate(rng) }
    }

    pub fn from_seed(seed: [u8; 32]) -> AuditKey {
        AuditKey { signing: SigningKey::from_bytes(&seed) }
    }

    /// Reads the key file format (module docs).
    pub fn from_seed_file(text: &str) -> Result<AuditKey, AuditError> {
        let body = text.trim().strip_prefix(SEED_PREFIX).ok_or_else(|| {
            AuditError::Key(format!(
                "an audit key file is one line starting with {SEED_PREFIX:?} followed by 64 hex characters"
            ))
        })?;
        let seed = hex32(body).ok_or_else(|| {
            AuditError::Key(format!(
                "after {SEED_PREFIX:?} the audit key file needs exactly 64 hex characters (a 32-byte seed)"
            ))
        })?;
        Ok(AuditKey::from_seed(seed))
    }

    /// The key file contents; secret, so it comes wrapped.
    pub fn to_seed_file(&self) -> SecretString {
        SecretString::from(format!("{SEED_PREFIX}{}\n", hex::encode(self.signing.to_bytes())))
    }

    pub fn public(&self) -> AuditPublicKey {
        AuditPublicKey::new(self.signing.verifying_key())
    }

    pub fn public_key_hex(&self) -> String {
        hex::encode(self.signing.verifying_key().to_bytes())
    }

    pub fn key_id(&self) -> String {
        self.public().key_id
    }
}

impl fmt::Debug for AuditKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AuditKey {{ key_id: {}, seed: [redacted] }}", self.key_id())
    }
}

/// An audit public key: all an auditor needs.
#[derive(Clone, PartialEq, Eq)]
pub struct AuditPublicKey {
    key: VerifyingKey,
    key_id: String,
}

impl AuditPublicKey {
    fn new(key: VerifyingKey) -> AuditPublicKey {
        let id = Sha256::digest(key.as_bytes());
        AuditPublicKey { key, key_id: hex::encode(&id[..8]) }
    }

    /// `ed25519-pub:<64 hex>` or the bare 64 hex characters.
    pub fn from_hex(text: &str) -> Result<AuditPublicKey, AuditError> {
        let t = text.trim();
        let body = t.strip_prefix(PUB_PREFIX).unwrap_or(t);
        let bytes = hex32(body).ok_or_else(|| {
            AuditError::Key(format!("an audit public key is {PUB_PREFIX:?} followed by 64 hex characters (32 bytes)"))
        })?;
        let key = VerifyingKey::from_bytes(&bytes)
            .map_err(|_| AuditError::Key("those 32 bytes are not a valid Ed25519 public key".to_owned()))?;
        Ok(AuditPublicKey::new(key))
    }

    /// The public key file line.
    pub fn to_line(&self) -> String {
        format!("{PUB_PREFIX}{}", self.to_hex())
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.key.as_bytes())
    }

    pub fn key_id(&self) -> &str {
        &self.key_id
    }
}

impl fmt::Debug for AuditPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AuditPublicKey({})", self.to_line())
    }
}

fn hex32(s: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(s, &mut out).ok()?;
    Some(out)
}

/// One day's seal on the chain. Field order is the signed and anchor-file key order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Checkpoint {
    pub day: NaiveDate,
    pub last_seq: u64,
    pub last_hash: Digest,
    pub record_count: u64,
    pub created_at: AuditTime,
    pub key_id: String,
    /// Ed25519 signature, lowercase hex.
    pub signature: String,
}

/// The signed part of a checkpoint, in its key order.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Unsigned<'a> {
    day: &'a NaiveDate,
    last_seq: u64,
    last_hash: &'a Digest,
    record_count: u64,
    created_at: &'a AuditTime,
    key_id: &'a str,
}

impl Checkpoint {
    pub fn sign(
        day: NaiveDate,
        last_seq: u64,
        last_hash: Digest,
        record_count: u64,
        created_at: AuditTime,
        key: &AuditKey,
    ) -> Checkpoint {
        let mut cp = Checkpoint {
            day,
            last_seq,
            last_hash,
            record_count,
            created_at,
            key_id: key.key_id(),
            signature: String::new(),
        };
        let sig = key.signing.sign(&cp.message());
        cp.signature = hex::encode(sig.to_bytes());
        cp
    }

    /// The bytes the signature covers (module docs).
    fn message(&self) -> Vec<u8> {
        let unsigned = Unsigned {
            day: &self.day,
            last_seq: self.last_seq,
            last_hash: &self.last_hash,
            record_count: self.record_count,
            created_at: &self.created_at,
            key_id: &self.key_id,
        };
        let mut msg = SIGNING_CONTEXT.to_vec();
        // Serializing plain strings and integers into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut msg, &unsigned);
        msg
    }

    /// Checks the signature under `key`, which must be the key named by `keyId`.
    pub fn verify(&self, key: &AuditPublicKey) -> Result<(), AuditError> {
        let bad = || AuditError::BadSignature { day: self.day.to_string(), key_id: self.key_id.clone() };
        if self.key_id != key.key_id {
            return Err(AuditError::UnknownKey { day: self.day.to_string(), key_id: self.key_id.clone() });
        }
        let mut raw = [0u8; 64];
        hex::decode_to_slice(&self.signature, &mut raw).map_err(|_| bad())?;
        key.key.verify_strict(&self.message(), &Signature::from_bytes(&raw)).map_err(|_| bad())
    }

    /// Checks the signature under whichever of `keys` has this checkpoint's `keyId`.
    pub fn verify_with(&self, keys: &[AuditPublicKey]) -> Result<(), AuditError> {
        match keys.iter().find(|k| k.key_id == self.key_id) {
            Some(k) => self.verify(k),
            None => Err(AuditError::UnknownKey { day: self.day.to_string(), key_id: self.key_id.clone() }),
        }
    }

    /// One line of the anchor file, without the newline.
    pub fn to_anchor_line(&self) -> String {
        // A struct of strings and integers always serializes.
        serde_json::to_string(self).unwrap_or_default()
    }

    pub fn from_anchor_line(line: &str) -> Result<Checkpoint, AuditError> {
        serde_json::from_str(line).map_err(|e| AuditError::AnchorLine { line: 1, message: e.to_string() })
    }
}

/// Reads an anchor file: one checkpoint per non-blank line. Signatures are not checked here.
pub fn parse_anchor_lines(text: &str) -> Result<Vec<Checkpoint>, AuditError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let cp = serde_json::from_str(line).map_err(|e| AuditError::AnchorLine {
            line: i + 1,
            message: format!("not a checkpoint ({e}); each line must be one checkpoint's JSON"),
        })?;
        out.push(cp);
    }
    Ok(out)
}

/// The records of one UTC day, as the store counts them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DaySummary {
    pub day: NaiveDate,
    pub first_seq: u64,
    pub last_seq: u64,
    pub count: u64,
}

/// Why purging stopped at a day that is old enough.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeldBack {
    /// No checkpoint under a known key, with a good signature, names this day.
    NoCheckpoint { day: NaiveDate },
    /// The day's checkpoint disagrees with the stored records (last seq or count).
    CheckpointMismatch { day: NaiveDate },
    /// The day does not continue the previous one (a hole in the stored sequence).
    Discontinuous { day: NaiveDate },
}

/// What may be deleted.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PurgePlan {
    /// Whole days to delete, oldest first.
    pub days: Vec<NaiveDate>,
    /// Every record with `seq <= through_seq` goes.
    pub through_seq: Option<u64>,
    pub records: u64,
    /// The checkpoint verification starts from after the purge.
    pub anchor: Option<Checkpoint>,
    /// Set when an old-enough day had to be kept, and why (for the operator to fix).
    pub held_back: Option<HeldBack>,
}

/// Plans a retention purge (module docs). Keeps days on or after `today - retention_days`.
pub fn purge_plan(
    days: &[DaySummary],
    checkpoints: &[Checkpoint],
    keys: &[AuditPublicKey],
    retention_days: u32,
    today: NaiveDate,
) -> PurgePlan {
    let mut plan = PurgePlan::default();
    let Some(cutoff) = today.checked_sub_days(Days::new(u64::from(retention_days))) else { return plan };
    let mut sorted: Vec<&DaySummary> = days.iter().collect();
    sorted.sort_by_key(|d| d.day);
    let mut prev_last: Option<u64> = None;
    for d in sorted {
        if d.day >= cutoff {
            break;
        }
        if prev_last.is_some_and(|p| d.first_seq != p + 1) {
            plan.held_back = Some(HeldBack::Discontinuous { day: d.day });
            break;
        }
        let signed = checkpoints.iter().filter(|c| c.day == d.day && c.verify_with(keys).is_ok());
        let mut matching = None;
        let mut any = false;
        for c in signed {
            any = true;
            if c.last_seq == d.last_seq && c.record_count == d.count {
                matching = Some(c);
                break;
            }
        }
        let Some(cp) = matching else {
            plan.held_back = Some(if any {
                HeldBack::CheckpointMismatch { day: d.day }
            } else {
                HeldBack::NoCheckpoint { day: d.day }
            });
            break;
        };
        plan.days.push(d.day);
        plan.records += d.count;
        plan.through_seq = Some(d.last_seq);
        plan.anchor = Some(cp.clone());
        prev_last = Some(d.last_seq);
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::chain::{test_draft, verify, Chain, Verdict};
    use crate::audit::record::AuditRecord;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn day(n: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(2024, 5, n).unwrap()
    }

    fn at(s: &str) -> AuditTime {
        AuditTime::parse(s).unwrap()
    }

    fn key(seed: u64) -> AuditKey {
        AuditKey::generate(&mut StdRng::seed_from_u64(seed))
    }

    #[test]
    fn sign_and_verify() {
        let k = key(1);
        let cp = Checkpoint::sign(day(1), 10, Digest([3; 32]), 10, at("2024-05-02T00:00:05.000Z"), &k);
        assert_eq!(cp.key_id, k.key_id());
        assert_eq!(cp.key_id.len(), 16);
        assert_eq!(cp.signature.len(), 128);
        cp.verify(&k.public()).unwrap();
        cp.verify_with(&[key(2).public(), k.public()]).unwrap();
        // Every field is covered by the signature.
        type Tamper = fn(&mut Checkpoint);
        let tampers: &[Tamper] = &[
            |c| c.day = day(2),
            |c| c.last_seq += 1,
            |c| c.last_hash.0[0] ^= 1,
            |c| c.record_count -= 1,
            |c| c.created_at = AuditTime::parse("2024-05-02T00:00:05.001Z").unwrap(),
            |c| c.signature.replace_range(0..2, if c.signature.starts_with("00") { "01" } else { "00" }),
            |c| c.signature.truncate(100),
            |c| c.signature = "zz".repeat(64),
        ];
        for (i, t) in tampers.iter().enumerate() {
            let mut bad = cp.clone();
            t(&mut bad);
            assert!(
                matches!(bad.verify(&k.public()), Err(AuditError::BadSignature { .. })),
                "tamper {i}: {:?}",
                bad.verify(&k.public())
            );
        }
        let mut other_id = cp.clone();
        other_id.key_id = "0000000000000000".into();
        assert!(matches!(other_id.verify(&k.public()), Err(AuditError::UnknownKey { .. })));
        assert!(matches!(cp.verify_with(&[key(2).public()]), Err(AuditError::UnknownKey { .. })));
    }

    #[test]
    fn signed_message_is_pinned() {
        let k = AuditKey::from_seed([0; 32]);
        let cp = Checkpoint::sign(day(1), 10, Digest([0; 32]), 4, at("2024-05-02T00:00:05.000Z"), &k);
        let msg = String::from_utf8(cp.message()).unwrap();
        let want = format!(
            "gc-assist audit checkpoint v1\n{{\"day\":\"2024-05-01\",\"lastSeq\":10,\"lastHash\":\"{}\",\"recordCount\":4,\"createdAt\":\"2024-05-02T00:00:05.000Z\",\"keyId\":\"{}\"}}",
            "0".repeat(64),
            k.key_id()
        );
        assert_eq!(msg, want);
    }

    #[test]
    fn key_files_round_trip_and_stay_secret() {
        let k = key(7);
        let file = secrecy::ExposeSecret::expose_secret(&k.to_seed_file()).to_owned();
        assert!(file.starts_with("ed25519-seed:") && file.ends_with('\n') && file.len() == 13 + 64 + 1);
        let back = AuditKey::from_seed_file(&format!("  {file}  ")).unwrap();
        assert_eq!(back.public(), k.public());
        let debug = format!("{k:?}");
        assert!(debug.contains("redacted") && !debug.contains(&file[13..77]), "{debug}");
        for bad in ["", "ed25519-seed:", "ed25519-seed:abcd", &file[13..], &format!("ed25519-seed:{}", "g".repeat(64))]
        {
            let e = AuditKey::from_seed_file(bad).unwrap_err();
            assert!(e.to_string().contains("64 hex"), "{bad:?}: {e}");
        }
        let public = k.public();
        assert_eq!(AuditPublicKey::from_hex(&public.to_line()).unwrap(), public);
        assert_eq!(AuditPublicKey::from_hex(&k.public_key_hex()).unwrap(), public);
        assert!(AuditPublicKey::from_hex("ed25519-pub:1234").is_err());
    }

    #[test]
    fn anchor_lines_round_trip() {
        let k = key(1);
        let a = Checkpoint::sign(day(1), 10, Digest([3; 32]), 10, at("2024-05-02T00:00:05.000Z"), &k);
        let b = Checkpoint::sign(day(2), 12, Digest([4; 32]), 2, at("2024-05-03T00:00:05.000Z"), &k);
        let line = a.to_anchor_line();
        assert!(line.starts_with(r#"{"day":"2024-05-01","lastSeq":10,"#) && !line.contains('\n'), "{line}");
        let file = format!("{}\n\n{}\n", line, b.to_anchor_line());
        let back = parse_anchor_lines(&file).unwrap();
        assert_eq!(back, vec![a.clone(), b]);
        back[0].verify(&k.public()).unwrap();
        assert_eq!(Checkpoint::from_anchor_line(&line).unwrap(), a);
        let err = parse_anchor_lines(&format!("{line}\n{{\"day\":\"2024-05-02\"}}\n")).unwrap_err();
        assert!(matches!(err, AuditError::AnchorLine { line: 2, .. }), "{err}");
    }

    fn summaries(records: &[AuditRecord]) -> Vec<DaySummary> {
        let mut out: Vec<DaySummary> = Vec::new();
        for r in records {
            match out.last_mut() {
                Some(s) if s.day == r.timestamp.day() => {
                    s.last_seq = r.seq;
                    s.count += 1;
                }
                _ => out.push(DaySummary { day: r.timestamp.day(), first_seq: r.seq, last_seq: r.seq, count: 1 }),
            }
        }
        out
    }

    /// Five days of 4 records (May 1–5), with a signed checkpoint for each day.
    fn fixture(k: &AuditKey) -> (Vec<AuditRecord>, Vec<Checkpoint>) {
        let mut rng = StdRng::seed_from_u64(4);
        let mut chain = Chain::genesis();
        let mut records = Vec::new();
        for d in 1..=5 {
            for h in 0..4 {
                let t = at(&format!("2024-05-0{d}T{:02}:00:00.000Z", 8 + h));
                records.push(chain.append(test_draft(records.len() as u64 + 1), t, &mut rng).unwrap());
            }
        }
        let cps = summaries(&records)
            .iter()
            .map(|s| {
                let hash = records[(s.last_seq - 1) as usize].hash;
                let created = at(&format!("{}T00:00:01.000Z", s.day + Days::new(1)));
                Checkpoint::sign(s.day, s.last_seq, hash, s.count, created, k)
            })
            .collect();
        (records, cps)
    }

    #[test]
    fn purge_whole_days_then_verify() {
        let k = key(1);
        let (records, cps) = fixture(&k);
        let days = summaries(&records);
        // Today May 10, retention 7 days: keep May 3 onwards.
        let plan = purge_plan(&days, &cps, &[k.public()], 7, day(10));
        assert_eq!(plan.days, vec![day(1), day(2)]);
        assert_eq!((plan.through_seq, plan.records, plan.held_back.clone()), (Some(8), 8, None));
        let anchor = plan.anchor.clone().unwrap();
        assert_eq!(anchor.day, day(2));
        let kept: Vec<AuditRecord> = records.iter().filter(|r| r.seq > 8).cloned().collect();
        assert_eq!(
            verify(&kept, Some(&anchor), &cps, &[k.public()]),
            Verdict::Valid { records: 12, first_seq: 9, last_seq: 20, purged: 8 }
        );
    }

    #[test]
    fn purge_table() {
        let k = key(1);
        let (records, cps) = fixture(&k);
        let days = summaries(&records);
        let keys = [k.public()];
        // (retention, today, expected days purged)
        let table: &[(u32, u32, usize)] = &[
            (90, 10, 0),
            (9, 10, 0), // cutoff May 1: nothing strictly older
            (8, 10, 1), // cutoff May 2
            (5, 10, 4), // cutoff May 5
            (0, 10, 5), // everything is older than today
            (0, 5, 4),  // today's records stay
        ];
        for (retention, today, n) in table {
            let plan = purge_plan(&days, &cps, &keys, *retention, day(*today));
            assert_eq!(plan.days.len(), *n, "retention {retention}, today {today}");
            assert_eq!(plan.records, 4 * *n as u64);
        }
        // A retention reaching before the calendar's start purges nothing.
        assert_eq!(purge_plan(&days, &cps, &keys, u32::MAX, day(10)), PurgePlan::default());
    }

    #[test]
    fn purge_stops_where_coverage_stops() {
        let k = key(1);
        let (records, cps) = fixture(&k);
        let days = summaries(&records);
        let keys = [k.public()];
        // No checkpoint for May 2: only May 1 goes, though May 3 is covered.
        let without: Vec<Checkpoint> = cps.iter().filter(|c| c.day != day(2)).cloned().collect();
        let plan = purge_plan(&days, &without, &keys, 1, day(10));
        assert_eq!(plan.days, vec![day(1)]);
        assert_eq!(plan.held_back, Some(HeldBack::NoCheckpoint { day: day(2) }));
        // A forged (unsigned by our key) checkpoint does not count.
        let mut forged = cps.clone();
        forged[0] = Checkpoint::sign(day(1), 4, cps[0].last_hash, 4, cps[0].created_at, &key(66));
        let plan = purge_plan(&days, &forged, &keys, 1, day(10));
        assert!(plan.days.is_empty());
        assert_eq!(plan.held_back, Some(HeldBack::NoCheckpoint { day: day(1) }));
        // A checkpoint that counts differently from the store.
        let mut short = days.clone();
        short[0].count = 3;
        short[0].first_seq = 2;
        let plan = purge_plan(&short, &cps, &keys, 1, day(10));
        assert_eq!(plan.held_back, Some(HeldBack::CheckpointMismatch { day: day(1) }));
        // A hole in the stored sequence.
        let mut holed = days.clone();
        holed[2].first_seq += 1;
        holed[2].count -= 1;
        let plan = purge_plan(&holed, &cps, &keys, 1, day(10));
        assert_eq!(plan.days, vec![day(1), day(2)]);
        assert_eq!(plan.held_back, Some(HeldBack::Discontinuous { day: day(3) }));
        // Without any checkpoint nothing is purged, and verification of a hand-purged store fails.
        let plan = purge_plan(&days, &[], &keys, 1, day(10));
        assert!(plan.days.is_empty());
        let kept: Vec<AuditRecord> = records.iter().filter(|r| r.seq > 8).cloned().collect();
        assert_eq!(verify(&kept, None, &[], &keys), Verdict::Unanchored { first_seq: 9 });
    }
}
