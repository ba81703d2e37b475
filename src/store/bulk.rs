//! Bulk writes fed by ONE parameter: the rows of a table as a JSON array of arrays, unpacked
//! by SQLite's `json_each` (`StoreOptions::bulk_json`). The statement text never changes with
//! the row count, so each table costs one cached prepared statement and one hand-off to sqlx's
//! SQLite thread per flush, however many batches the group commit drained (the multi-row
//! `VALUES` form needs a statement per power-of-two chunk). Measured side by side on the
//! 2-core machine (BENCHMARKS.md), SQLite's JSON unpacking cost more CPU than those
//! hand-offs, so `VALUES` is the default; this form is kept for machines where thread
//! hand-offs, not CPU, bound the writer. [`FINISH_HEAD`] (head + COMMIT in one hand-off) is
//! used by both forms.
//!
//! Blobs travel as hex and are stored with `unhex`, integers as JSON integers, texts as JSON
//! strings. SQLite's JSON reader ends a string at an escaped NUL (`\u0000`), so a buffer with
//! a NUL in any text is not encoded here (`None`): the caller writes it with bound
//! parameters instead, which keep every byte.

use std::fmt::Write as _;

use super::model::{EngagementRow, InjectionRow, InjectionUpdate, OutboxRow};
use crate::audit::AuditRecord;

/// `value->>0, ..., value->>(n-1)`, with `unhex(...)` around the listed blob columns.
macro_rules! cols {
    ($($e:literal),* $(,)?) => { concat!($($e, ", "),*) };
}

/// Injections: the columns of `INSERT_INJECTIONS`, in order.
pub(super) const INSERT_INJECTIONS_JSON: &str = concat!(
    "INSERT INTO injections (id, conversation_id, prompt_id, status, payload, content, priority, source, api_key_id, \
     rule_id, created_at, admitted_at, show_at, expires_at, queue_deadline, updated_at, last_error, queue_id, \
     agent_id) SELECT ",
    cols!(
        "value->>0",
        "value->>1",
        "value->>2",
        "value->>3",
        "value->>4",
        "value->>5",
        "value->>6",
        "value->>7",
        "value->>8",
        "value->>9",
        "value->>10",
        "value->>11",
        "value->>12",
        "value->>13",
        "value->>14",
        "value->>15",
        "value->>16",
        "value->>17"
    ),
    "value->>18 FROM json_each(?)"
);

pub(super) const INSERT_ENGAGEMENTS_JSON: &str = concat!(
    "INSERT INTO engagement_events (injection_id, conversation_id, prompt_id, rule_id, queue_id, agent_id, kind, at, \
     shown_at, rating) SELECT ",
    cols!(
        "value->>0",
        "value->>1",
        "value->>2",
        "value->>3",
        "value->>4",
        "value->>5",
        "value->>6",
        "value->>7",
        "value->>8"
    ),
    "value->>9 FROM json_each(?)"
);

pub(super) const INSERT_AUDIT_JSON: &str = concat!(
    "INSERT INTO audit_records (seq, audit_id, timestamp, day, conversation_id, prompt_id, injection_id, status, \
     latency_ms, error, actor, reason, compliance_tag, retention_policy, prev_hash, hash) SELECT ",
    cols!(
        "value->>0",
        "unhex(value->>1)",
        "value->>2",
        "value->>3",
        "unhex(value->>4)",
        "unhex(value->>5)",
        "unhex(value->>6)",
        "value->>7",
        "value->>8",
        "value->>9",
        "value->>10",
        "value->>11",
        "value->>12",
        "value->>13",
        "unhex(value->>14)"
    ),
    "unhex(value->>15) FROM json_each(?)"
);

// A message for an endpoint disabled by a 410 is filed as `disabled` rather than sent (as in
// the bound form in `ops`).
pub(super) const INSERT_OUTBOX_JSON: &str = concat!(
    "INSERT INTO outbox (id, injection_id, endpoint_url, event_type, body, created_at, attempts, next_attempt_at, \
     state, last_status, last_error, delivered_at) SELECT ",
    cols!(
        "value->>0",
        "value->>1",
        "value->>2",
        "value->>3",
        "unhex(value->>4)",
        "value->>5",
        "value->>6",
        "value->>7",
        "CASE WHEN value->>8 = 'pending' AND EXISTS (SELECT 1 FROM webhook_endpoints w WHERE w.url = value->>2) \
         THEN 'disabled' ELSE value->>8 END",
        "value->>9",
        "value->>10"
    ),
    "value->>11 FROM json_each(?)"
);

pub(super) const UPDATE_INJECTIONS_JSON: &str = concat!(
    "WITH v (id, expected, status, at, admitted_at, show_at, expires_at, queue_deadline, last_error) AS (SELECT ",
    cols!("value->>0", "value->>1", "value->>2", "value->>3", "value->>4", "value->>5", "value->>6", "value->>7"),
    "value->>8 FROM json_each(?)) UPDATE injections SET status = v.status, updated_at = v.at, \
     admitted_at = COALESCE(v.admitted_at, injections.admitted_at), \
     show_at = COALESCE(v.show_at, injections.show_at), \
     expires_at = COALESCE(v.expires_at, injections.expires_at), \
     queue_deadline = COALESCE(v.queue_deadline, injections.queue_deadline), \
     last_error = COALESCE(v.last_error, injections.last_error) \
     FROM v WHERE injections.id = v.id AND injections.status = v.expected \
     RETURNING injections.id, injections.conversation_id, injections.prompt_id"
);

/// The end of a transaction whose rows are written: the chain head (only when the last
/// parameter is true) and COMMIT, in one hand-off.
pub(super) const FINISH_HEAD: &str =
    "UPDATE audit_head SET last_seq = ?, last_hash = ?, last_at = ? WHERE id = 1 AND ?; COMMIT";

/// The end of every transaction in one hand-off: the buffered rows (foreign-key order), the
/// chain head (only when the last parameter is true: records were appended), then COMMIT.
pub(super) fn finish_sql() -> &'static str {
    static SQL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    SQL.get_or_init(|| {
        format!(
            "{INSERT_INJECTIONS_JSON}; {INSERT_AUDIT_JSON}; {INSERT_OUTBOX_JSON}; {INSERT_ENGAGEMENTS_JSON}; \
             UPDATE audit_head SET last_seq = ?, last_hash = ?, last_at = ? WHERE id = 1 AND ?; COMMIT"
        )
    })
}

/// An array of rows being written; `None` from [`Rows::finish`] if a text held a NUL.
pub(super) struct Rows {
    buf: String,
    first_row: bool,
    first_col: bool,
    nul: bool,
}

impl Rows {
    pub fn new(capacity: usize) -> Rows {
        let mut buf = String::with_capacity(capacity);
        buf.push('[');
        Rows { buf, first_row: true, first_col: true, nul: false }
    }

    fn row(&mut self) {
        if !self.first_row {
            self.buf.push(']');
            self.buf.push(',');
        }
        self.first_row = false;
        self.buf.push('[');
        self.first_col = true;
    }

    fn sep(&mut self) {
        if !self.first_col {
            self.buf.push(',');
        }
        self.first_col = false;
    }

    fn null(&mut self) {
        self.sep();
        self.buf.push_str("null");
    }

    fn int(&mut self, v: i64) {
        self.sep();
        let _ = write!(self.buf, "{v}");
    }

    fn opt_int(&mut self, v: Option<i64>) {
        match v {
            Some(v) => self.int(v),
            None => self.null(),
        }
    }

    fn text(&mut self, s: &str) {
        self.sep();
        self.buf.push('"');
        let mut start = 0;
        for (i, b) in s.bytes().enumerate() {
            let esc = match b {
                b'"' => "\\\"",
                b'\\' => "\\\\",
                b'\n' => "\\n",
                b'\r' => "\\r",
                b'\t' => "\\t",
                0 => {
                    self.nul = true;
                    "\\u0000"
                }
                0x01..=0x1f => "",
                _ => continue,
            };
            self.buf.push_str(&s[start..i]);
            if esc.is_empty() {
                let _ = write!(self.buf, "\\u{b:04x}");
            } else {
                self.buf.push_str(esc);
            }
            start = i + 1;
        }
        self.buf.push_str(&s[start..]);
        self.buf.push('"');
    }

    fn opt_text(&mut self, s: Option<&str>) {
        match s {
            Some(s) => self.text(s),
            None => self.null(),
        }
    }

    fn hex(&mut self, bytes: &[u8]) {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        self.sep();
        self.buf.reserve(bytes.len() * 2 + 2);
        self.buf.push('"');
        for b in bytes {
            self.buf.push(char::from(DIGITS[usize::from(b >> 4)]));
            self.buf.push(char::from(DIGITS[usize::from(b & 0xf)]));
        }
        self.buf.push('"');
    }

    fn uuid_text(&mut self, id: &uuid::Uuid) {
        self.sep();
        self.buf.push('"');
        let mut tmp = [0u8; uuid::fmt::Hyphenated::LENGTH];
        self.buf.push_str(id.hyphenated().encode_lower(&mut tmp));
        self.buf.push('"');
    }

    /// The JSON text, or `None` if a text held a NUL (write those rows with bound parameters).
    pub fn finish(mut self) -> Option<String> {
        if !self.first_row {
            self.buf.push(']');
        }
        self.buf.push(']');
        (!self.nul).then_some(self.buf)
    }
}

/// Rows of `injections`; `payload` and `content` are the row's serialized JSON texts.
pub(super) fn injections<'a>(
    rows: impl ExactSizeIterator<Item = (&'a InjectionRow, &'a str, &'a str)>,
) -> Option<String> {
    let mut j = Rows::new(rows.len() * 768);
    for (row, payload, content) in rows {
        j.row();
        j.uuid_text(&row.id);
        j.uuid_text(&row.conversation_id);
        j.uuid_text(&row.prompt_id);
        j.text(row.status.as_str());
        j.text(payload);
        j.text(content);
        j.text(row.priority.as_str());
        j.text(row.source.as_str());
        j.opt_text(row.api_key_id.as_deref());
        j.opt_text(row.rule_id.as_deref());
        j.int(row.created_at);
        j.opt_int(row.admitted_at);
        j.opt_int(row.show_at);
        j.opt_int(row.expires_at);
        j.opt_int(row.queue_deadline);
        j.int(row.updated_at);
        j.opt_text(row.last_error.as_deref());
        j.opt_text(row.queue_id.as_deref());
        j.opt_text(row.agent_id.as_deref());
    }
    j.finish()
}

pub(super) fn engagements<'a>(rows: impl ExactSizeIterator<Item = &'a EngagementRow>) -> Option<String> {
    let mut j = Rows::new(rows.len() * 256);
    for e in rows {
        j.row();
        j.uuid_text(&e.injection_id);
        j.uuid_text(&e.conversation_id);
        j.uuid_text(&e.prompt_id);
        j.opt_text(e.rule_id.as_deref());
        j.opt_text(e.queue_id.as_deref());
        j.opt_text(e.agent_id.as_deref());
        j.text(e.kind.as_str());
        j.int(e.at);
        j.opt_int(e.shown_at);
        j.opt_int(e.rating.map(i64::from));
    }
    j.finish()
}

/// Rows of `audit_records`; `day` is the transaction's UTC day. `None` also when a number
/// does not fit SQLite's integer (the bound path reports it).
pub(super) fn audit(records: &[AuditRecord], day: &str) -> Option<String> {
    let mut j = Rows::new(records.len() * 400);
    for r in records {
        j.row();
        j.int(i64::try_from(r.seq).ok()?);
        j.hex(r.audit_id.as_bytes());
        j.text(r.timestamp.as_str());
        j.text(day);
        j.hex(r.conversation_id.as_bytes());
        j.hex(r.prompt_id.as_bytes());
        j.hex(r.injection_id.as_bytes());
        j.text(&r.status);
        j.opt_int(r.latency_ms.map(i64::try_from).transpose().ok()?);
        j.opt_text(r.error.as_deref());
        j.text(&r.actor);
        j.opt_text(r.reason.as_deref());
        j.text(&r.compliance_tag);
        j.text(&r.retention_policy);
        j.hex(&r.prev_hash.0);
        j.hex(&r.hash.0);
    }
    j.finish()
}

pub(super) fn outbox<'a>(rows: impl ExactSizeIterator<Item = &'a OutboxRow>) -> Option<String> {
    let mut j = Rows::new(rows.len() * 512);
    for o in rows {
        j.row();
        j.text(&o.id);
        j.uuid_text(&o.injection_id);
        j.text(&o.endpoint_url);
        j.text(&o.event_type);
        j.hex(&o.body);
        j.int(o.created_at);
        j.int(i64::from(o.attempts));
        j.int(o.next_attempt_at);
        j.text(o.state.as_str());
        j.opt_int(o.last_status.map(i64::from));
        j.opt_text(o.last_error.as_deref());
        j.opt_int(o.delivered_at);
    }
    j.finish()
}

pub(super) fn updates<'a>(rows: impl ExactSizeIterator<Item = &'a InjectionUpdate>) -> Option<String> {
    let mut j = Rows::new(rows.len() * 160);
    for u in rows {
        j.row();
        j.uuid_text(&u.id);
        j.text(u.expected_status.as_str());
        j.text(u.status.as_str());
        j.int(u.at);
        j.opt_int(u.admitted_at);
        j.opt_int(u.show_at);
        j.opt_int(u.expires_at);
        j.opt_int(u.queue_deadline);
        j.opt_text(u.last_error.as_deref());
    }
    j.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_like_json() {
        let mut j = Rows::new(0);
        j.row();
        j.text("a\"b\\c\nd\u{1}é\u{1f600}");
        j.opt_int(None);
        j.int(-5);
        j.hex(&[0x00, 0xff, 0x1a]);
        j.row();
        j.opt_text(None);
        let s = j.finish().unwrap();
        assert_eq!(s, r#"[["a\"b\\c\nd\u0001é😀",null,-5,"00ff1a"],[null]]"#);
        let v: serde_json::Value = serde_json::from_str(&s).unwrap();
        assert_eq!(v[0][0], "a\"b\\c\nd\u{1}é\u{1f600}");
    }

    #[test]
    fn empty_and_nul() {
        assert_eq!(Rows::new(0).finish().as_deref(), Some("[]"));
        let mut j = Rows::new(0);
        j.row();
        j.text("a\0b");
        assert_eq!(j.finish(), None);
    }
}
