//! The audit chain read straight off SQLite's C API, for verification and export speed.
//!
//! Through sqlx every row is a message from its SQLite thread and every column a duplicated
//! value (an allocation each): about ten microseconds a record, ten times the cost of
//! verifying it. Here a blocking thread takes the pooled read connection's handle
//! (`lock_handle`: sqlx's own thread keeps off it meanwhile), steps one prepared statement
//! and decodes each column in place from SQLite's buffers. The only allocations are the
//! record's own strings, and verification's scan (`audit_scan`) makes none: it hands the
//! row's borrowed view to its visitor.
//!
//! Everything unsafe is in this file: pointers and lengths come from SQLite for the current
//! row and are copied before the next step; the statement is finalized on every path.

use std::ffi::{c_int, CStr};
use std::ptr::NonNull;

use libsqlite3_sys as ffi;
use sqlx::sqlite::SqlitePool;
use tokio::sync::mpsc;
use uuid::Uuid;

use super::{db_err, StoreError};
use crate::audit::{AuditRecord, AuditTime, Digest, RecordView};

const SELECT: &CStr = c"SELECT seq, audit_id, timestamp, conversation_id, prompt_id, injection_id, status, \
    latency_ms, error, actor, reason, compliance_tag, retention_policy, prev_hash, hash FROM audit_records \
    WHERE seq >= ?1 ORDER BY seq LIMIT ?2";

/// Batches read ahead of the consumer (besides the one being filled and the one it holds).
const READ_AHEAD: usize = 1;

fn corrupt(what: impl Into<String>) -> StoreError {
    StoreError::Corrupt(what.into())
}

/// Runs `read` on a blocking thread holding a pooled read connection's raw handle.
async fn on_reader<T: Send + 'static>(
    pool: &SqlitePool,
    read: impl FnOnce(NonNull<ffi::sqlite3>) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    let mut conn = pool.acquire().await.map_err(db_err("reading audit records"))?;
    tokio::task::spawn_blocking(move || {
        // The lock is a message to sqlx's thread and a mutex: fine to wait for here.
        let mut handle = futures::executor::block_on(conn.lock_handle()).map_err(db_err("reading audit records"))?;
        read(handle.as_raw_handle())
    })
    .await
    .map_err(|e| StoreError::Invalid(format!("internal: the audit reader stopped: {e}")))?
}

/// Up to `limit` records with `seq >= from`, in order, read on a blocking thread.
pub(super) async fn audit_batch(pool: &SqlitePool, from: i64, limit: u32) -> Result<Vec<AuditRecord>, StoreError> {
    on_reader(pool, move |db| {
        let mut out = Vec::with_capacity(limit.min(65_536) as usize);
        scan(db, from, i64::from(limit), &mut |r| {
            out.push(r.to_record());
            true
        })?;
        Ok(out)
    })
    .await
}

/// Every record with `seq >= from`, in batches of `batch`, read by ONE blocking thread that
/// holds a pooled connection and steps ONE statement for the whole stream (one snapshot),
/// handing each full batch over a channel: reading the next batch overlaps the consumer's
/// work on this one, with no per-batch connection, lock, prepare or thread hand-off. The
/// thread stops at the end, on an error (sent as the last item), or when the receiver is
/// dropped.
pub(super) fn audit_stream(
    pool: &SqlitePool,
    from: i64,
    batch: u32,
) -> mpsc::Receiver<Result<Vec<AuditRecord>, StoreError>> {
    let (tx, rx) = mpsc::channel(READ_AHEAD);
    let pool = pool.clone();
    tokio::spawn(async move {
        let sender = tx.clone();
        let streamed = on_reader(&pool, move |db| {
            let emit = |records| sender.blocking_send(Ok(records)).is_ok();
            let size = batch.max(1) as usize;
            let mut out = Vec::with_capacity(size.min(65_536));
            let ran_out = scan(db, from, i64::MAX, &mut |r| {
                out.push(r.to_record());
                out.len() < size || emit(std::mem::replace(&mut out, Vec::with_capacity(size.min(65_536))))
            })?;
            if ran_out && !out.is_empty() {
                emit(out);
            }
            Ok(())
        })
        .await;
        // A panic on the reader thread comes back as an error too: the stream ends with it.
        if let Err(e) = streamed {
            let _ = tx.send(Err(e)).await;
        }
    });
    rx
}

/// Every record with `seq >= from` through `visit` on ONE blocking thread holding a pooled
/// connection and stepping ONE statement (one snapshot); see `Store::audit_scan`.
pub(super) async fn audit_scan<F>(pool: &SqlitePool, from: i64, mut visit: F) -> Result<(), StoreError>
where
    F: for<'r> FnMut(Option<RecordView<'r>>) -> bool + Send + 'static,
{
    on_reader(pool, move |db| {
        if scan(db, from, i64::MAX, &mut |r| visit(Some(r)))? {
            visit(None);
        }
        Ok(())
    })
    .await
}

/// Steps the SELECT over `seq >= from` (at most `limit` rows), handing each row's view to
/// `visit` (it borrows the row's buffers and cannot outlive the call) until `visit` returns
/// false. `Ok(true)` when the rows ran out, `Ok(false)` when `visit` stopped the scan.
fn scan(
    db: NonNull<ffi::sqlite3>,
    from: i64,
    limit: i64,
    visit: &mut dyn FnMut(RecordView<'_>) -> bool,
) -> Result<bool, StoreError> {
    let db = db.as_ptr();
    let stmt = prepare(db, from, limit)?;
    loop {
        // SAFETY: a live statement, stepped on the thread holding the connection.
        match unsafe { ffi::sqlite3_step(stmt.0) } {
            ffi::SQLITE_ROW => {
                if !visit(decode_view(&Row(stmt.0))?) {
                    return Ok(false);
                }
            }
            ffi::SQLITE_DONE => return Ok(true),
            rc => return Err(sqlite_error(db, rc)),
        }
    }
}

/// The statement, finalized when dropped.
struct Stmt(*mut ffi::sqlite3_stmt);

impl Drop for Stmt {
    fn drop(&mut self) {
        // SAFETY: a statement prepared by `prepare`, finalized exactly once, here.
        unsafe { ffi::sqlite3_finalize(self.0) };
    }
}

fn sqlite_error(db: *mut ffi::sqlite3, code: c_int) -> StoreError {
    // SAFETY: `db` is the open connection this thread holds; the message is copied at once.
    let msg = unsafe { CStr::from_ptr(ffi::sqlite3_errmsg(db)) }.to_string_lossy().into_owned();
    StoreError::Invalid(format!("reading audit records: SQLite error {code}: {msg}"))
}

/// The SELECT with its two parameters bound.
fn prepare(db: *mut ffi::sqlite3, from: i64, limit: i64) -> Result<Stmt, StoreError> {
    let mut raw = std::ptr::null_mut();
    // SAFETY: `db` is open and ours while the lock is held; SELECT is NUL-terminated.
    let rc = unsafe { ffi::sqlite3_prepare_v2(db, SELECT.as_ptr(), -1, &mut raw, std::ptr::null_mut()) };
    if rc != ffi::SQLITE_OK || raw.is_null() {
        return Err(sqlite_error(db, rc));
    }
    let stmt = Stmt(raw);
    // SAFETY: a live statement with two parameters.
    unsafe {
        ffi::sqlite3_bind_int64(stmt.0, 1, from);
        ffi::sqlite3_bind_int64(stmt.0, 2, limit);
    }
    Ok(stmt)
}

/// The current row of a stepped statement.
struct Row(*mut ffi::sqlite3_stmt);

impl Row {
    fn is_null(&self, i: c_int) -> bool {
        // SAFETY: the statement is on a row and `i` is one of its 15 columns.
        unsafe { ffi::sqlite3_column_type(self.0, i) == ffi::SQLITE_NULL }
    }

    fn int(&self, i: c_int, what: &str) -> Result<u64, StoreError> {
        if self.is_null(i) {
            return Err(corrupt(format!("a stored {what} is NULL")));
        }
        // SAFETY: as in `is_null`.
        let v = unsafe { ffi::sqlite3_column_int64(self.0, i) };
        u64::try_from(v).map_err(|_| corrupt(format!("stored {what} {v} is negative")))
    }

    /// The column's bytes, valid until the next step (copied by every caller).
    fn bytes(&self, i: c_int) -> &[u8] {
        // SAFETY: blob first, then its length (the order SQLite documents); the pointer is
        // valid for that many bytes until the statement moves, which `&self` outlives.
        unsafe {
            let p = ffi::sqlite3_column_blob(self.0, i);
            let n = ffi::sqlite3_column_bytes(self.0, i);
            if p.is_null() || n <= 0 {
                &[]
            } else {
                std::slice::from_raw_parts(p.cast::<u8>(), n as usize)
            }
        }
    }

    /// A text column the schema declares NOT NULL: no NULL check (one C call fewer per
    /// column, on the verify path's hot loop). Were it NULL anyway, it reads as "" and the
    /// record's hash no longer matches, so verification still fails.
    fn text(&self, i: c_int, what: &str) -> Result<&str, StoreError> {
        std::str::from_utf8(self.bytes(i)).map_err(|_| corrupt(format!("a stored audit {what} is not UTF-8")))
    }

    fn opt_text(&self, i: c_int, what: &str) -> Result<Option<&str>, StoreError> {
        if self.is_null(i) {
            return Ok(None);
        }
        self.text(i, what).map(Some)
    }

    fn uuid(&self, i: c_int) -> Result<Uuid, StoreError> {
        let b = self.bytes(i);
        Uuid::from_slice(b).map_err(|_| corrupt(format!("a stored audit id has {} bytes, not 16", b.len())))
    }

    fn digest(&self, i: c_int) -> Result<Digest, StoreError> {
        let b = self.bytes(i);
        <[u8; 32]>::try_from(b).map(Digest).map_err(|_| corrupt(format!("a stored hash has {} bytes, not 32", b.len())))
    }
}

/// The current row, its text borrowed from SQLite's buffers (valid until the next step).
/// Column order: `SELECT` above (the same as the sqlx reader's).
fn decode_view(r: &Row) -> Result<RecordView<'_>, StoreError> {
    Ok(RecordView {
        seq: r.int(0, "audit seq")?,
        audit_id: r.uuid(1)?,
        timestamp: AuditTime::parse(r.text(2, "timestamp")?).map_err(|e| corrupt(e.to_string()))?,
        conversation_id: r.uuid(3)?,
        prompt_id: r.uuid(4)?,
        injection_id: r.uuid(5)?,
        status: r.text(6, "status")?,
        latency_ms: if r.is_null(7) { None } else { Some(r.int(7, "latencyMs")?) },
        error: r.opt_text(8, "error")?,
        actor: r.text(9, "actor")?,
        reason: r.opt_text(10, "reason")?,
        compliance_tag: r.text(11, "complianceTag")?,
        retention_policy: r.text(12, "retentionPolicy")?,
        prev_hash: r.digest(13)?,
        hash: r.digest(14)?,
    })
}
