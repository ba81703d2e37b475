//! Audit records of every injection state change: one SHA-256 hash chain, daily signed
//! checkpoints, retention purge by whole days, and verification (CONTRACT §7).
//!
//! The core is pure: no clock, no files, no database. Callers pass timestamps and
//! random sources in, and hand records and checkpoints over as values, so the same code
//! checks a live store, an exported JSONL file and the table tests. [`ops`] alone is impure:
//! it joins that core to the store, the key file and the anchor file.
//!
//! - [`record`]: [`AuditRecord`], [`AuditDraft`], the canonical byte form that is hashed.
//! - [`chain`]: [`Chain`] (the appender) and [`verify`] / [`Verifier`] with its [`Verdict`].
//! - [`checkpoint`]: [`Checkpoint`]s signed with an Ed25519 [`AuditKey`], the anchor-file
//!   line format, key files, and [`purge_plan`] for retention.
//! - [`ops`]: the checkpointer the service runs daily, store verification, export, purge.
//!
//! What a `Valid` verdict proves: every present record hashes to its stored `hash`, each
//! `prevHash` is the previous record's `hash`, sequence numbers run without a hole, every
//! checkpoint's signature is good under the auditor's public key(s), every checkpoint that
//! falls within the present records names exactly that record's hash, no checkpoint lies
//! beyond the last present record, and records purged by retention are covered by a signed
//! checkpoint from which verification starts. A chain rewritten wholesale after its last
//! checkpoint cannot be told from a genuine one by the chain alone; that is what the
//! checkpoints (and their copies in an external anchor file) are for.

pub mod chain;
pub mod checkpoint;
pub mod ops;
pub mod record;

pub use chain::{verify, CanonicalRecord, Chain, Defect, Verdict, Verifier};
pub use checkpoint::{
    parse_anchor_lines, purge_plan, AuditKey, AuditPublicKey, Checkpoint, DaySummary, HeldBack, PurgePlan,
};
pub use record::{AuditDraft, AuditRecord, AuditTime, Digest, RecordView, COMPLIANCE_TAG, RETENTION_POLICY};

use thiserror::Error;

/// Why an audit value could not be built, parsed or trusted.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum AuditError {
    #[error(
        "invalid audit timestamp {value:?}: expected RFC 3339 UTC with milliseconds, like 2024-05-01T13:45:07.123Z"
    )]
    Timestamp { value: String },
    #[error("audit timestamp out of range: years 0000-9999 only")]
    TimestampRange,
    #[error("invalid hash {value:?}: expected 64 lowercase hex characters (a SHA-256 digest)")]
    Hash { value: String },
    #[error("the audit chain is at its last sequence number; it cannot grow further")]
    SeqExhausted,
    #[error("invalid audit key: {0}")]
    Key(String),
    #[error("checkpoint for {day} is signed by key {key_id}, which is not among the public keys given")]
    UnknownKey { day: String, key_id: String },
    #[error("checkpoint for {day} has a bad signature: it was not signed by audit key {key_id} or was altered")]
    BadSignature { day: String, key_id: String },
    #[error("anchor file line {line}: {message}")]
    AnchorLine { line: usize, message: String },
}
