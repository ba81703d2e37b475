//! One audit record, its wire form, and the canonical bytes that are hashed into the chain.
//!
//! # Wire form
//!
//! JSON, camelCase, keys in this order, absent optionals omitted:
//! `seq, auditId, timestamp, conversationId, promptId, injectionId, status, latencyMs?,
//! error?, actor, reason?, complianceTag, retentionPolicy, prevHash, hash`.
//! Ids are UUIDs, written lowercase and hyphenated; `timestamp` is RFC 3339 UTC with exactly
//! three fractional digits and a `Z` (`2024-05-01T13:45:07.123Z`); hashes are 64 lowercase
//! hex characters. Unknown keys are rejected when reading.
//!
//! # Canonical form (what is hashed)
//!
//! The record's wire form **without the `hash` key**: a single JSON object with the keys
//! above in that order, absent optionals omitted, no whitespace anywhere, UTF-8. Numbers are
//! plain decimal integers. UUIDs are lowercase hyphenated; `timestamp` and hashes as above.
//! Strings are escaped exactly as follows and in no other way: `"` → `\"`, `\` → `\\`,
//! U+0008 → `\b`, U+000C → `\f`, U+000A → `\n`, U+000D → `\r`, U+0009 → `\t`, any other
//! character below U+0020 → `\u00XX` with lowercase hex; every other character (including
//! `/`, DEL and all non-ASCII) is written as its raw UTF-8 bytes. This is byte-for-byte what
//! `serde_json` writes for the record without `hash`, so any JSON library that can emit
//! compact JSON with ordered keys can reproduce it.
//!
//! Then `hash = SHA-256(prevHash ‖ SHA-256(canonical))`, where `prevHash` is the previous
//! record's `hash` as 32 raw bytes (not hex), and the first record's `prevHash` is 32 zero
//! bytes.
//!
//! The canonical writer below is hand-rolled rather than going through serde because
//! verification runs it once per record and must not allocate (target: ≥ 1 M records/s).

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Datelike, NaiveDate, NaiveTime, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest as _, Sha256};
use uuid::Uuid;

use super::AuditError;

/// The `complianceTag` of every record.
pub const COMPLIANCE_TAG: &str = "AGENT_ASSIST_INJECTION";
/// The `retentionPolicy` of every record.
pub const RETENTION_POLICY: &str = "90_DAYS";

/// A SHA-256 digest; hex on the wire, raw bytes in memory so comparing costs nothing.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct Digest(pub [u8; 32]);

impl Digest {
    /// The `prevHash` of the first record.
    pub const ZERO: Digest = Digest([0; 32]);

    /// Lowercase hex into a stack buffer.
    pub fn hex(&self) -> [u8; 64] {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut out = [0u8; 64];
        for (i, b) in self.0.iter().enumerate() {
            out[2 * i] = HEX[usize::from(b >> 4)];
            out[2 * i + 1] = HEX[usize::from(b & 0x0f)];
        }
        out
    }

    pub fn to_hex(&self) -> String {
        // The buffer is ASCII hex by construction.
        self.hex().iter().map(|&b| char::from(b)).collect()
    }

    /// Parses 64 lowercase hex characters (uppercase is refused so one digest has one spelling).
    pub fn from_hex(s: &str) -> Result<Digest, AuditError> {
        let bad = || AuditError::Hash { value: s.chars().take(80).collect() };
        let bytes = s.as_bytes();
        if bytes.len() != 64 {
            return Err(bad());
        }
        let nibble = |c: u8| match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        };
        let mut out = [0u8; 32];
        for (i, pair) in bytes.chunks_exact(2).enumerate() {
            let (Some(hi), Some(lo)) = (nibble(pair[0]), nibble(pair[1])) else { return Err(bad()) };
            out[i] = hi << 4 | lo;
        }
        Ok(Digest(out))
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({self})")
    }
}

impl FromStr for Digest {
    type Err = AuditError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Digest::from_hex(s)
    }
}

impl Serialize for Digest {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Digest::from_hex(&s).map_err(serde::de::Error::custom)
    }
}

/// A record timestamp: RFC 3339 UTC with milliseconds, kept as its 24 ASCII bytes so the
/// canonical form is a copy and the text on disk is exactly what was hashed. The fixed
/// width makes byte order chronological order.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AuditTime([u8; 24]);

impl AuditTime {
    /// Truncates to the millisecond.
    pub fn from_datetime(t: DateTime<Utc>) -> Result<AuditTime, AuditError> {
        if !(0..=9999).contains(&t.year()) {
            return Err(AuditError::TimestampRange);
        }
        let text = t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string();
        AuditTime::parse(&text)
    }

    /// Milliseconds since the Unix epoch (for a truncating constructor and for UUID v7).
    pub fn from_unix_millis(ms: i64) -> Result<AuditTime, AuditError> {
        let t = DateTime::<Utc>::from_timestamp_millis(ms).ok_or(AuditError::TimestampRange)?;
        AuditTime::from_datetime(t)
    }

    /// Strictly `YYYY-MM-DDTHH:MM:SS.mmmZ` naming a real instant.
    pub fn parse(s: &str) -> Result<AuditTime, AuditError> {
        let bad = || AuditError::Timestamp { value: s.chars().take(40).collect() };
        let b: [u8; 24] = s.as_bytes().try_into().map_err(|_| bad())?;
        let shape_ok = b.iter().enumerate().all(|(i, &c)| match i {
            4 | 7 => c == b'-',
            10 => c == b'T',
            13 | 16 => c == b':',
            19 => c == b'.',
            23 => c == b'Z',
            _ => c.is_ascii_digit(),
        });
        if !shape_ok {
            return Err(bad());
        }
        let num = |r: std::ops::Range<usize>| b[r].iter().fold(0u32, |n, &c| n * 10 + u32::from(c - b'0'));
        let date = NaiveDate::from_ymd_opt(num(0..4) as i32, num(5..7), num(8..10));
        // A leap second (:60) is refused: chrono would read it as 59.999+, which does not round-trip.
        let time = (num(17..19) < 60)
            .then(|| NaiveTime::from_hms_milli_opt(num(11..13), num(14..16), num(17..19), num(20..23)))
            .flatten();
        match (date, time) {
            (Some(_), Some(_)) => Ok(AuditTime(b)),
            _ => Err(bad()),
        }
    }

    pub fn as_str(&self) -> &str {
        // Only ever built from validated ASCII.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }

    pub fn as_bytes(&self) -> &[u8; 24] {
        &self.0
    }

    /// The UTC day, which is what retention and checkpoints are counted in.
    pub fn day(&self) -> NaiveDate {
        self.to_datetime().date_naive()
    }

    pub fn to_datetime(&self) -> DateTime<Utc> {
        // Validated at construction, so the parse cannot fail; the epoch is a harmless fallback.
        DateTime::parse_from_rfc3339(self.as_str()).map(|t| t.with_timezone(&Utc)).unwrap_or_default()
    }

    pub fn unix_millis(&self) -> i64 {
        self.to_datetime().timestamp_millis()
    }
}

impl fmt::Display for AuditTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for AuditTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AuditTime({})", self.as_str())
    }
}

impl FromStr for AuditTime {
    type Err = AuditError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        AuditTime::parse(s)
    }
}

impl Serialize for AuditTime {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for AuditTime {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        AuditTime::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// What a caller supplies for one state change; the chain adds the rest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditDraft {
    pub conversation_id: Uuid,
    pub prompt_id: Uuid,
    pub injection_id: Uuid,
    /// The injection's new status (`accepted`, `queued`, `delivered`, `failed`, ...).
    pub status: String,
    pub latency_ms: Option<u64>,
    pub error: Option<String>,
    /// Who caused the change: an API key's name, `trigger:<rule>`, `panel:<agent>`, `system`.
    pub actor: String,
    pub reason: Option<String>,
}

/// One link of the audit chain. Field order is the wire and canonical key order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuditRecord {
    pub seq: u64,
    pub audit_id: Uuid,
    pub timestamp: AuditTime,
    pub conversation_id: Uuid,
    pub prompt_id: Uuid,
    pub injection_id: Uuid,
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub actor: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub compliance_tag: String,
    pub retention_policy: String,
    pub prev_hash: Digest,
    pub hash: Digest,
}

/// An [`AuditRecord`] whose text fields are borrowed: what a reader decodes in place (from
/// SQLite's row buffers, say) to verify records without allocating their strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordView<'a> {
    pub seq: u64,
    pub audit_id: Uuid,
    pub timestamp: AuditTime,
    pub conversation_id: Uuid,
    pub prompt_id: Uuid,
    pub injection_id: Uuid,
    pub status: &'a str,
    pub latency_ms: Option<u64>,
    pub error: Option<&'a str>,
    pub actor: &'a str,
    pub reason: Option<&'a str>,
    pub compliance_tag: &'a str,
    pub retention_policy: &'a str,
    pub prev_hash: Digest,
    pub hash: Digest,
}

impl RecordView<'_> {
    /// Appends the canonical form (module docs) to `buf`, keeping what it held.
    pub fn append_canonical(&self, buf: &mut Vec<u8>) {
        buf.extend_from_slice(b"{\"seq\":");
        write_u64(buf, self.seq);
        buf.extend_from_slice(b",\"auditId\":");
        write_uuid(buf, &self.audit_id);
        buf.extend_from_slice(b",\"timestamp\":\"");
        buf.extend_from_slice(self.timestamp.as_bytes());
        buf.extend_from_slice(b"\",\"conversationId\":");
        write_uuid(buf, &self.conversation_id);
        buf.extend_from_slice(b",\"promptId\":");
        write_uuid(buf, &self.prompt_id);
        buf.extend_from_slice(b",\"injectionId\":");
        write_uuid(buf, &self.injection_id);
        buf.extend_from_slice(b",\"status\":");
        write_str(buf, self.status);
        if let Some(ms) = self.latency_ms {
            buf.extend_from_slice(b",\"latencyMs\":");
            write_u64(buf, ms);
        }
        if let Some(e) = self.error {
            buf.extend_from_slice(b",\"error\":");
            write_str(buf, e);
        }
        buf.extend_from_slice(b",\"actor\":");
        write_str(buf, self.actor);
        if let Some(r) = self.reason {
            buf.extend_from_slice(b",\"reason\":");
            write_str(buf, r);
        }
        buf.extend_from_slice(b",\"complianceTag\":");
        write_str(buf, self.compliance_tag);
        buf.extend_from_slice(b",\"retentionPolicy\":");
        write_str(buf, self.retention_policy);
        buf.extend_from_slice(b",\"prevHash\":\"");
        buf.extend_from_slice(&self.prev_hash.hex());
        buf.extend_from_slice(b"\"}");
    }

    /// The owned record.
    pub fn to_record(&self) -> AuditRecord {
        AuditRecord {
            seq: self.seq,
            audit_id: self.audit_id,
            timestamp: self.timestamp,
            conversation_id: self.conversation_id,
            prompt_id: self.prompt_id,
            injection_id: self.injection_id,
            status: self.status.to_owned(),
            latency_ms: self.latency_ms,
            error: self.error.map(str::to_owned),
            actor: self.actor.to_owned(),
            reason: self.reason.map(str::to_owned),
            compliance_tag: self.compliance_tag.to_owned(),
            retention_policy: self.retention_policy.to_owned(),
            prev_hash: self.prev_hash,
            hash: self.hash,
        }
    }
}

impl AuditRecord {
    /// The record with its text borrowed.
    pub fn view(&self) -> RecordView<'_> {
        RecordView {
            seq: self.seq,
            audit_id: self.audit_id,
            timestamp: self.timestamp,
            conversation_id: self.conversation_id,
            prompt_id: self.prompt_id,
            injection_id: self.injection_id,
            status: &self.status,
            latency_ms: self.latency_ms,
            error: self.error.as_deref(),
            actor: &self.actor,
            reason: self.reason.as_deref(),
            compliance_tag: &self.compliance_tag,
            retention_policy: &self.retention_policy,
            prev_hash: self.prev_hash,
            hash: self.hash,
        }
    }

    /// Writes the canonical form (module docs) into `buf`, replacing its contents.
    pub fn write_canonical(&self, buf: &mut Vec<u8>) {
        buf.clear();
        self.view().append_canonical(buf);
    }

    /// The hash this record should carry, given its own `prev_hash`; `buf` is scratch space.
    pub fn compute_hash(&self, buf: &mut Vec<u8>) -> Digest {
        self.write_canonical(buf);
        link(&self.prev_hash, buf)
    }
}

/// `SHA-256(prev ‖ SHA-256(canonical))`.
pub fn link(prev: &Digest, canonical: &[u8]) -> Digest {
    let inner = Sha256::digest(canonical);
    let mut outer = Sha256::new();
    outer.update(prev.0);
    outer.update(inner);
    Digest(outer.finalize().into())
}

fn write_u64(buf: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    buf.extend_from_slice(&digits[i..]);
}

fn write_uuid(buf: &mut Vec<u8>, id: &Uuid) {
    let mut text = [0u8; uuid::fmt::Hyphenated::LENGTH];
    buf.push(b'"');
    buf.extend_from_slice(id.hyphenated().encode_lower(&mut text).as_bytes());
    buf.push(b'"');
}

/// JSON string escaping exactly as the module docs state (and as serde_json does).
fn write_str(buf: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    buf.push(b'"');
    let bytes = s.as_bytes();
    // Copy runs of plain bytes in one go; only quote, backslash and controls break a run.
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if b >= 0x20 && b != b'"' && b != b'\\' {
            continue;
        }
        buf.extend_from_slice(&bytes[start..i]);
        match b {
            b'"' => buf.extend_from_slice(b"\\\""),
            b'\\' => buf.extend_from_slice(b"\\\\"),
            0x08 => buf.extend_from_slice(b"\\b"),
            0x0c => buf.extend_from_slice(b"\\f"),
            b'\n' => buf.extend_from_slice(b"\\n"),
            b'\r' => buf.extend_from_slice(b"\\r"),
            b'\t' => buf.extend_from_slice(b"\\t"),
            _ => {
                buf.extend_from_slice(&[b'\\', b'u', b'0', b'0', HEX[usize::from(b >> 4)], HEX[usize::from(b & 0x0f)]])
            }
        }
        start = i + 1;
    }
    buf.extend_from_slice(&bytes[start..]);
    buf.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> AuditRecord {
        AuditRecord {
            seq: 42,
            audit_id: Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0001),
            timestamp: AuditTime::parse("2024-05-01T13:45:07.123Z").unwrap(),
            conversation_id: Uuid::from_u128(0xAB),
            prompt_id: Uuid::from_u128(0xCD),
            injection_id: Uuid::from_u128(0xEF),
            status: "delivered".into(),
            latency_ms: Some(187),
            error: None,
            actor: "api-key:crm".into(),
            reason: Some("quote \" back\\slash \n\t\r\u{8}\u{c}\u{1}\u{1f} / é 😀 \u{7f}".into()),
            compliance_tag: COMPLIANCE_TAG.into(),
            retention_policy: RETENTION_POLICY.into(),
            prev_hash: Digest([7; 32]),
            hash: Digest([9; 32]),
        }
    }

    /// The record as serde_json writes it, minus `hash`: the documented canonical form.
    fn serde_canonical(r: &AuditRecord) -> Vec<u8> {
        let mut v = serde_json::to_value(r).unwrap();
        v.as_object_mut().unwrap().remove("hash");
        serde_json::to_vec(&v).unwrap()
    }

    #[test]
    fn canonical_matches_serde_json_byte_for_byte() {
        let mut variants = vec![sample()];
        variants.push(AuditRecord { latency_ms: None, reason: None, error: Some("boom".into()), ..sample() });
        variants.push(AuditRecord { seq: 0, latency_ms: Some(u64::MAX), status: String::new(), ..sample() });
        let all_controls: String = (0u8..0x20).map(char::from).collect();
        variants.push(AuditRecord { actor: all_controls, ..sample() });
        let mut buf = Vec::new();
        for (i, r) in variants.iter().enumerate() {
            r.write_canonical(&mut buf);
            assert_eq!(String::from_utf8_lossy(&buf), String::from_utf8_lossy(&serde_canonical(r)), "variant {i}");
        }
    }

    #[test]
    fn canonical_form_is_pinned() {
        // A fixed expectation, so a change of the canonical form can never pass unnoticed.
        let r = AuditRecord { reason: None, ..sample() };
        let mut buf = Vec::new();
        r.write_canonical(&mut buf);
        let want = concat!(
            r#"{"seq":42,"auditId":"01900000-0000-7000-8000-000000000001","timestamp":"2024-05-01T13:45:07.123Z","#,
            r#""conversationId":"00000000-0000-0000-0000-0000000000ab","promptId":"00000000-0000-0000-0000-0000000000cd","#,
            r#""injectionId":"00000000-0000-0000-0000-0000000000ef","status":"delivered","latencyMs":187,"#,
            r#""actor":"api-key:crm","complianceTag":"AGENT_ASSIST_INJECTION","retentionPolicy":"90_DAYS","#,
            r#""prevHash":"0707070707070707070707070707070707070707070707070707070707070707"}"#
        );
        assert_eq!(String::from_utf8(buf.clone()).unwrap(), want);
        // hash = SHA-256(prev ‖ SHA-256(canonical)), spelled out with the sha2 API directly.
        let inner = Sha256::digest(want.as_bytes());
        let outer = Sha256::new().chain_update([7u8; 32]).chain_update(inner).finalize();
        assert_eq!(r.compute_hash(&mut buf).0, <[u8; 32]>::from(outer));
    }

    #[test]
    fn wire_round_trip_and_unknown_fields() {
        let r = sample();
        let text = serde_json::to_string(&r).unwrap();
        assert!(text.ends_with(&format!(r#","hash":"{}"}}"#, Digest([9; 32]))));
        assert!(!text.contains("\"error\""), "absent optionals are omitted: {text}");
        assert_eq!(serde_json::from_str::<AuditRecord>(&text).unwrap(), r);
        let extra = text.replacen('{', r#"{"extra":1,"#, 1);
        assert!(serde_json::from_str::<AuditRecord>(&extra).is_err());
    }

    #[test]
    fn timestamps() {
        let ok = ["2024-05-01T13:45:07.123Z", "0000-01-01T00:00:00.000Z", "2024-02-29T23:59:59.999Z"];
        for s in ok {
            assert_eq!(AuditTime::parse(s).unwrap().as_str(), s);
        }
        let bad = [
            "2024-05-01T13:45:07Z",
            "2024-05-01T13:45:07.1234Z",
            "2024-05-01T13:45:07.123+00:00",
            "2024-05-01 13:45:07.123Z",
            "2023-02-29T00:00:00.000Z",
            "2024-05-01T24:00:00.000Z",
            "2024-05-01T23:59:60.000Z",
            "2024-13-01T00:00:00.000Z",
            "2024-05-01T13:45:07.12aZ",
            "",
        ];
        for s in bad {
            let err = AuditTime::parse(s).unwrap_err();
            assert!(err.to_string().contains("2024-05-01T13:45:07.123Z"), "{s}: {err}");
        }
        let t = AuditTime::from_unix_millis(1_714_571_107_123).unwrap();
        assert_eq!(t.as_str(), "2024-05-01T13:45:07.123Z");
        assert_eq!(t.unix_millis(), 1_714_571_107_123);
        assert_eq!(t.day(), NaiveDate::from_ymd_opt(2024, 5, 1).unwrap());
        let sub_ms = DateTime::<Utc>::from_timestamp(1_714_571_107, 123_999_999).unwrap();
        assert_eq!(AuditTime::from_datetime(sub_ms).unwrap(), t);
        assert!(
            AuditTime::parse("2024-05-01T13:45:07.123Z").unwrap()
                < AuditTime::parse("2024-05-01T13:45:07.124Z").unwrap()
        );
    }

    #[test]
    fn digests() {
        let d = Digest([0xab; 32]);
        assert_eq!(Digest::from_hex(&d.to_hex()).unwrap(), d);
        for bad in ["", "ab", &"AB".repeat(32), &"g0".repeat(32), &"ab".repeat(33)] {
            assert!(Digest::from_hex(bad).is_err(), "{bad}");
        }
    }
}
