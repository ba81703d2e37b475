//! The writer's group commits on SQLite's C API: one blocking call runs a whole transaction.
//!
//! Through sqlx every statement is a message to its SQLite thread and a wake-up back (up to
//! about 100 µs each on a loaded 2-core VM; BENCHMARKS.md, "Store writer on SQLite's C
//! API", has the before/after figures). Here the writer's own thread takes its connection's raw handle
//! (`SqliteConnection::lock_handle`: sqlx's thread keeps off it meanwhile) and runs BEGIN,
//! every row through a CACHED prepared statement (bind, step, reset), the chain head and
//! COMMIT without leaving the thread. A row costs a few microseconds of SQLite's own work.
//! What needs no database (an injection's checks and its payload and content JSON text) was
//! done on the caller's task before the batch was queued ([`Job`]).
//!
//! Only the operations of the hot paths have a native form ([`supports`]): accepting,
//! updating and recording injections, engagement events, idempotent answers and outbox
//! attempts. A drain holding anything else (purges, checkpoints, the catalogue, ...) takes
//! the sqlx path in `ops.rs`, which these rare operations do not make slower.
//!
//! # Failures
//!
//! The same contract as the sqlx path: a batch failing on its own terms before writing is
//! skipped in place; one failing after writing makes the pass roll back and replay with a
//! savepoint around each batch. A database failure, or any failure after which SQLite has
//! left the transaction (a trigger's `RAISE(ROLLBACK)`), fails every batch of the drain.
//!
//! # Unsafe code
//!
//! Everything unsafe is in [`Stmts`] and [`Exec`]: statements are prepared on the connection
//! the caller has locked, used only on that thread while the lock is held, reset before the
//! guard that bound their parameters is gone (so `SQLITE_STATIC` buffers outlive every step),
//! and finalized before the connection closes.

use std::ffi::{c_int, CStr};
use std::marker::PhantomData;
use std::ptr::NonNull;

use libsqlite3_sys as ffi;
use rand::rngs::StdRng;
use uuid::Uuid;

use super::model::{EngagementRow, IdempotencyRow, InjectionRow, InjectionUpdate, OutboxRow};
use super::ops::{check_drafts, check_outbox, prepare_insert, to_i64, BatchOutcome, WriteBatch, WriteOp};
use super::rollup::{Delta, UPSERT_CELLS, UPSERT_CLICKS};
use super::writer::Job;
use super::{StoreError, IDEMPOTENCY_TTL_MS};
use crate::audit::{AuditDraft, AuditRecord, AuditTime, Chain};

/// Whether every operation of `batch` has a native form.
pub(super) fn supports(batch: &WriteBatch) -> bool {
    batch.ops.iter().all(|op| {
        matches!(
            op,
            WriteOp::InsertInjection { .. }
                | WriteOp::UpdateInjection(_)
                | WriteOp::RecordEvent { .. }
                | WriteOp::Engagement(_)
                | WriteOp::PutIdempotency(_)
                | WriteOp::OutboxDelivered { .. }
                | WriteOp::OutboxRetry { .. }
                | WriteOp::OutboxDead { .. }
        )
    })
}

/// The statements the native path runs; each is prepared once per connection.
#[derive(Debug, Clone, Copy)]
enum Sql {
    Begin,
    Commit,
    Rollback,
    Savepoint,
    Release,
    RollbackTo,
    Head,
    InsertInjection,
    InsertAudit,
    InsertOutbox,
    UpdateInjection,
    InjectionStatus,
    InjectionIds,
    UpsertIdempotency,
    InsertEngagement,
    UpsertCell,
    UpsertClick,
    OutboxDelivered,
    OutboxRetry,
    OutboxDead,
    OutboxState,
}

const SQL_COUNT: usize = 21;

impl Sql {
    fn text(self) -> String {
        let s = match self {
            // IMMEDIATE takes the write lock up front: a lock conflict shows before any work.
            Sql::Begin => "BEGIN IMMEDIATE",
            Sql::Commit => "COMMIT",
            Sql::Rollback => "ROLLBACK",
            Sql::Savepoint => "SAVEPOINT batch",
            Sql::Release => "RELEASE batch",
            Sql::RollbackTo => "ROLLBACK TO batch",
            Sql::Head => "UPDATE audit_head SET last_seq = ?1, last_hash = ?2, last_at = ?3 WHERE id = 1",
            Sql::InsertInjection => {
                "INSERT INTO injections (id, conversation_id, prompt_id, status, payload, content, priority, source, \
                 api_key_id, rule_id, created_at, admitted_at, show_at, expires_at, queue_deadline, updated_at, \
                 last_error, queue_id, agent_id) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19)"
            }
            Sql::InsertAudit => {
                "INSERT INTO audit_records (seq, audit_id, timestamp, day, conversation_id, prompt_id, injection_id, \
                 status, latency_ms, error, actor, reason, compliance_tag, retention_policy, prev_hash, hash) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)"
            }
            // A message for an endpoint disabled by a 410 is filed as `disabled` rather than sent.
            // A one-row VALUES, not INSERT ... SELECT: the latter makes SQLite keep a statement
            // journal (a copy of every page it touches), measured at 3.5 % of the writer's time.
            Sql::InsertOutbox => {
                "INSERT INTO outbox (id, injection_id, endpoint_url, event_type, body, created_at, attempts, \
                 next_attempt_at, state, last_status, last_error, delivered_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, CASE WHEN ?9 = 'pending' AND EXISTS \
                 (SELECT 1 FROM webhook_endpoints w WHERE w.url = ?3) THEN 'disabled' ELSE ?9 END, ?10, ?11, ?12)"
            }
            Sql::UpdateInjection => {
                "UPDATE injections SET status = ?3, updated_at = ?4, admitted_at = COALESCE(?5, admitted_at), \
                 show_at = COALESCE(?6, show_at), expires_at = COALESCE(?7, expires_at), \
                 queue_deadline = COALESCE(?8, queue_deadline), last_error = COALESCE(?9, last_error) \
                 WHERE id = ?1 AND status = ?2 RETURNING conversation_id, prompt_id"
            }
            Sql::InjectionStatus => "SELECT status FROM injections WHERE id = ?1",
            Sql::InjectionIds => "SELECT conversation_id, prompt_id FROM injections WHERE id = ?1",
            // An existing key is taken over only once its answer is older than the 24 h window.
            Sql::UpsertIdempotency => {
                "INSERT INTO idempotency_keys (api_key_id, key, request_hash, status_code, response_body, \
                 injection_id, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) \
                 ON CONFLICT (api_key_id, key) DO UPDATE SET request_hash = excluded.request_hash, \
                 status_code = excluded.status_code, response_body = excluded.response_body, \
                 injection_id = excluded.injection_id, created_at = excluded.created_at \
                 WHERE idempotency_keys.created_at <= ?8"
            }
            Sql::InsertEngagement => {
                "INSERT INTO engagement_events (injection_id, conversation_id, prompt_id, rule_id, queue_id, \
                 agent_id, kind, at, shown_at, rating) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)"
            }
            Sql::UpsertCell => {
                return format!(
                    "{}(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12){}",
                    UPSERT_CELLS.0, UPSERT_CELLS.1
                )
            }
            Sql::UpsertClick => return format!("{}(?1, ?2, ?3, ?4, ?5){}", UPSERT_CLICKS.0, UPSERT_CLICKS.1),
            Sql::OutboxDelivered => {
                "UPDATE outbox SET state = 'delivered', attempts = ?2, last_status = ?3, last_error = NULL, \
                 delivered_at = ?4 WHERE id = ?1 AND state = 'pending'"
            }
            Sql::OutboxRetry => {
                "UPDATE outbox SET attempts = ?2, next_attempt_at = ?3, last_status = ?4, last_error = ?5 \
                 WHERE id = ?1 AND state = 'pending'"
            }
            Sql::OutboxDead => {
                "UPDATE outbox SET state = 'dead', attempts = ?2, last_status = ?3, last_error = ?4 \
                 WHERE id = ?1 AND state = 'pending'"
            }
            Sql::OutboxState => "SELECT state FROM outbox WHERE id = ?1",
        };
        s.to_owned()
    }
}

/// An SQLite failure: `code` is the extended result code.
#[derive(Debug)]
struct Failure {
    code: c_int,
    message: String,
}

impl Failure {
    fn is_constraint(&self) -> bool {
        self.code & 0xff == ffi::SQLITE_CONSTRAINT
    }

    fn is_foreign_key(&self) -> bool {
        self.code == ffi::SQLITE_CONSTRAINT_FOREIGNKEY
    }

    /// A key that exists already (primary key or unique index).
    fn is_duplicate(&self) -> bool {
        self.code == ffi::SQLITE_CONSTRAINT_PRIMARYKEY || self.code == ffi::SQLITE_CONSTRAINT_UNIQUE
    }

    fn into_store(self, context: &'static str) -> StoreError {
        StoreError::Sqlite { context, code: self.code, message: self.message }
    }
}

/// The writer's prepared statements, cached for the life of its connection.
pub(super) struct Stmts {
    list: [*mut ffi::sqlite3_stmt; SQL_COUNT],
}

// SAFETY: the statements are only used on the thread that holds the connection's lock
// (`lock_handle`), one thread at a time; the pointers themselves carry no thread affinity.
unsafe impl Send for Stmts {}

impl Default for Stmts {
    fn default() -> Stmts {
        Stmts { list: [std::ptr::null_mut(); SQL_COUNT] }
    }
}

impl Stmts {
    /// Finalizes every statement. Must run while the connection is still open (the writer
    /// calls it before closing; `Drop` is the fallback on a writer that never closed).
    pub fn finalize(&mut self) {
        for s in &mut self.list {
            if !s.is_null() {
                // SAFETY: prepared by `get` on the connection that is still open; nulled so it
                // is finalized exactly once.
                unsafe { ffi::sqlite3_finalize(*s) };
                *s = std::ptr::null_mut();
            }
        }
    }

    /// The cached statement for `sql`, prepared on first use.
    fn get(&mut self, db: *mut ffi::sqlite3, sql: Sql) -> Result<*mut ffi::sqlite3_stmt, Failure> {
        let slot = &mut self.list[sql as usize];
        if slot.is_null() {
            let text = sql.text();
            let len = c_int::try_from(text.len())
                .map_err(|_| Failure { code: ffi::SQLITE_TOOBIG, message: "a statement is too long".into() })?;
            let mut raw = std::ptr::null_mut();
            // SAFETY: `db` is open and locked by this thread; the text pointer and length are
            // valid for the call (SQLite copies what it keeps). PERSISTENT: kept for long.
            let rc = unsafe {
                ffi::sqlite3_prepare_v3(
                    db,
                    text.as_ptr().cast(),
                    len,
                    ffi::SQLITE_PREPARE_PERSISTENT as _,
                    &mut raw,
                    std::ptr::null_mut(),
                )
            };
            if rc != ffi::SQLITE_OK || raw.is_null() {
                return Err(failure(db, rc));
            }
            *slot = raw;
        }
        Ok(*slot)
    }
}

impl Drop for Stmts {
    fn drop(&mut self) {
        self.finalize();
    }
}

fn failure(db: *mut ffi::sqlite3, rc: c_int) -> Failure {
    // SAFETY: `db` is the open connection this thread holds; the message is copied at once.
    let (code, message) = unsafe {
        let code = ffi::sqlite3_extended_errcode(db);
        (code, CStr::from_ptr(ffi::sqlite3_errmsg(db)).to_string_lossy().into_owned())
    };
    // The extended code is SQLite's last error; `rc` is this call's (they agree on failures).
    Failure { code: if code & 0xff == rc & 0xff { code } else { rc }, message }
}

/// One run of a cached statement: binds borrow data for `'a` (SQLite reads it in place,
/// `SQLITE_STATIC`), and dropping the guard resets the statement and clears its bindings,
/// so no step can see a buffer after `'a` ends.
struct Exec<'a> {
    db: *mut ffi::sqlite3,
    stmt: *mut ffi::sqlite3_stmt,
    /// The first bind failure, reported by `step`.
    bind_rc: c_int,
    _data: PhantomData<&'a [u8]>,
}

impl<'a> Exec<'a> {
    fn check(&mut self, rc: c_int) {
        if rc != ffi::SQLITE_OK && self.bind_rc == ffi::SQLITE_OK {
            self.bind_rc = rc;
        }
    }

    fn int(&mut self, i: c_int, v: i64) -> &mut Self {
        // SAFETY: a live statement; an out-of-range index is reported as an error, not UB.
        let rc = unsafe { ffi::sqlite3_bind_int64(self.stmt, i, v) };
        self.check(rc);
        self
    }

    fn opt_int(&mut self, i: c_int, v: Option<i64>) -> &mut Self {
        match v {
            Some(v) => self.int(i, v),
            // Cleared bindings are NULL already; explicit for clarity and reuse.
            None => {
                // SAFETY: as in `int`.
                let rc = unsafe { ffi::sqlite3_bind_null(self.stmt, i) };
                self.check(rc);
                self
            }
        }
    }

    fn text(&mut self, i: c_int, v: &'a str) -> &mut Self {
        // SAFETY: the pointer and length describe `v`, which outlives this guard ('a), and
        // the guard resets the statement before it ends, so SQLITE_STATIC is sound. An
        // explicit length keeps NULs and every other byte.
        let rc = unsafe {
            ffi::sqlite3_bind_text64(
                self.stmt,
                i,
                v.as_ptr().cast(),
                v.len() as u64,
                ffi::SQLITE_STATIC(),
                ffi::SQLITE_UTF8 as u8,
            )
        };
        self.check(rc);
        self
    }

    fn opt_text(&mut self, i: c_int, v: Option<&'a str>) -> &mut Self {
        match v {
            Some(v) => self.text(i, v),
            None => self.opt_int(i, None),
        }
    }

    fn blob(&mut self, i: c_int, v: &'a [u8]) -> &mut Self {
        // SAFETY: as in `text`. A zero-length blob is bound as an empty blob, not NULL, because
        // the pointer of an empty slice is non-null (dangling but never read).
        let rc =
            unsafe { ffi::sqlite3_bind_blob64(self.stmt, i, v.as_ptr().cast(), v.len() as u64, ffi::SQLITE_STATIC()) };
        self.check(rc);
        self
    }

    /// Steps once: `true` on a row, `false` when done.
    fn step(&mut self) -> Result<bool, Failure> {
        if self.bind_rc != ffi::SQLITE_OK {
            return Err(failure(self.db, self.bind_rc));
        }
        // SAFETY: a live statement on the locked connection, with every buffer bound alive.
        match unsafe { ffi::sqlite3_step(self.stmt) } {
            ffi::SQLITE_ROW => Ok(true),
            ffi::SQLITE_DONE => Ok(false),
            rc => Err(failure(self.db, rc)),
        }
    }

    /// Runs a statement that returns no rows; the number of rows it changed.
    fn run(&mut self) -> Result<u64, Failure> {
        self.step()?;
        // SAFETY: the open connection; reads a counter.
        Ok(u64::try_from(unsafe { ffi::sqlite3_changes64(self.db) }).unwrap_or(0))
    }

    /// Column `i` of the current row as text (a copy).
    fn column_text(&self, i: c_int) -> Result<String, StoreError> {
        // SAFETY: called only after `step` returned a row; the text pointer is read before any
        // other call on the statement and copied at once.
        let bytes = unsafe {
            let p = ffi::sqlite3_column_text(self.stmt, i);
            let n = ffi::sqlite3_column_bytes(self.stmt, i);
            if p.is_null() || n <= 0 {
                &[][..]
            } else {
                std::slice::from_raw_parts(p, n as usize)
            }
        };
        String::from_utf8(bytes.to_vec()).map_err(|_| StoreError::Corrupt("a stored text is not UTF-8".into()))
    }
}

impl Drop for Exec<'_> {
    fn drop(&mut self) {
        // SAFETY: a live statement; after these it holds no pointer into our buffers.
        unsafe {
            ffi::sqlite3_reset(self.stmt);
            ffi::sqlite3_clear_bindings(self.stmt);
        }
    }
}

/// A UUID's hyphenated text on the stack.
struct IdText([u8; 36]);

impl IdText {
    fn of(id: Uuid) -> IdText {
        let mut buf = [0u8; 36];
        id.hyphenated().encode_lower(&mut buf);
        IdText(buf)
    }

    fn as_str(&self) -> &str {
        // The encoder writes ASCII only; the fallback is unreachable but keeps this total.
        std::str::from_utf8(&self.0).unwrap_or("")
    }
}

/// What the writer hands a native transaction: everything it changes or reads.
pub(super) struct Tx<'w> {
    db: *mut ffi::sqlite3,
    stmts: &'w mut Stmts,
    pub chain: &'w mut Chain,
    rng: &'w mut StdRng,
    at: AuditTime,
    day: String,
    records: Vec<AuditRecord>,
    /// Whether the current batch has changed anything yet.
    wrote: bool,
}

/// A whole transaction's answers, and whether it was replayed with savepoints.
pub(super) type Answers = (Vec<Result<BatchOutcome, StoreError>>, bool);

impl<'w> Tx<'w> {
    /// `db` must be the writer's connection, locked by the calling thread for as long as the
    /// returned value lives.
    pub fn new(
        db: NonNull<ffi::sqlite3>,
        stmts: &'w mut Stmts,
        chain: &'w mut Chain,
        rng: &'w mut StdRng,
        at: AuditTime,
    ) -> Tx<'w> {
        Tx {
            db: db.as_ptr(),
            stmts,
            chain,
            rng,
            day: at.as_str()[..10].to_owned(),
            at,
            records: Vec::new(),
            wrote: false,
        }
    }

    fn exec<'a>(&mut self, sql: Sql) -> Result<Exec<'a>, Failure> {
        let stmt = self.stmts.get(self.db, sql)?;
        Ok(Exec { db: self.db, stmt, bind_rc: ffi::SQLITE_OK, _data: PhantomData })
    }

    fn simple(&mut self, sql: Sql, context: &'static str) -> Result<(), StoreError> {
        self.exec(sql).and_then(|mut e| e.run()).map(|_| ()).map_err(|f| f.into_store(context))
    }

    fn in_transaction(&self) -> bool {
        // SAFETY: the open connection; reads a flag.
        unsafe { ffi::sqlite3_get_autocommit(self.db) == 0 }
    }

    /// Runs every batch of a drain in one transaction and commits: the chain head moves with
    /// it (`head_at` is its new `last_at` when records were appended). On `Err` the
    /// transaction was rolled back and the chain must be reloaded.
    pub fn run<'j>(
        &mut self,
        batches: impl Iterator<Item = &'j Job> + Clone,
        head_at: i64,
    ) -> Result<Answers, StoreError> {
        let r = self.transaction(batches, head_at);
        if r.is_err() && self.in_transaction() {
            // Ending a failed transaction; its own failure adds nothing to the first one.
            let _ = self.simple(Sql::Rollback, "rolling back");
        }
        r
    }

    fn transaction<'j>(
        &mut self,
        batches: impl Iterator<Item = &'j Job> + Clone,
        head_at: i64,
    ) -> Result<Answers, StoreError> {
        let start = (self.chain.last_seq(), self.chain.last_hash());
        self.simple(Sql::Begin, "starting a transaction")?;
        let (answers, replayed) = match self.pass(batches.clone(), false)? {
            Some(a) => (a, false),
            None => {
                self.simple(Sql::Rollback, "rolling back")?;
                *self.chain = Chain::resume(start.0, start.1);
                self.records.clear();
                self.simple(Sql::Begin, "starting a transaction")?;
                let a = self
                    .pass(batches, true)?
                    .ok_or_else(|| StoreError::Invalid("internal: a savepoint pass asked for a replay".into()))?;
                (a, true)
            }
        };
        if self.chain.last_seq() > start.0 {
            let seq = to_i64(self.chain.last_seq(), "seq")?;
            let hash = self.chain.last_hash();
            let mut e = self.exec(Sql::Head).map_err(|f| f.into_store("moving the audit head"))?;
            e.int(1, seq).blob(2, &hash.0[..]).int(3, head_at);
            e.run().map_err(|f| f.into_store("moving the audit head"))?;
        }
        self.simple(Sql::Commit, "committing")?;
        Ok((answers, replayed))
    }

    /// One pass over the batches; `None` asks for a replay with savepoints (a batch failed
    /// after writing, outside a savepoint).
    fn pass<'j>(
        &mut self,
        batches: impl Iterator<Item = &'j Job>,
        savepoints: bool,
    ) -> Result<Option<Vec<Result<BatchOutcome, StoreError>>>, StoreError> {
        // Per batch: how many records it sealed and its row counts, or its error; the records
        // themselves are moved out of `self.records` at the end, not copied.
        let mut out: Vec<Result<(usize, Vec<u64>), StoreError>> = Vec::new();
        for job in batches {
            let batch = &job.batch;
            let before = (self.chain.last_seq(), self.chain.last_hash());
            let first = self.records.len();
            self.wrote = false;
            if savepoints {
                self.simple(Sql::Savepoint, "opening a savepoint")?;
            }
            let mut affected = Vec::with_capacity(batch.ops.len());
            let mut failed = None;
            for (op, json) in batch.ops.iter().zip(&job.json) {
                match self.apply(op, json.as_ref()) {
                    Ok(n) => affected.push(n),
                    Err(e) => {
                        failed = Some(e);
                        break;
                    }
                }
            }
            // A trigger's RAISE(ROLLBACK), or SQLite giving up after an I/O error, ends the
            // transaction under us: nothing of the drain can be committed any more.
            if !self.in_transaction() {
                return Err(failed.unwrap_or_else(|| StoreError::Invalid("the transaction ended early".into())));
            }
            match failed {
                None => {
                    if savepoints {
                        self.simple(Sql::Release, "releasing a savepoint")?;
                    }
                    out.push(Ok((self.records.len() - first, affected)));
                }
                Some(e) if !e.is_batch_local() => return Err(e),
                Some(e) => {
                    if savepoints {
                        self.simple(Sql::RollbackTo, "rolling back a savepoint")?;
                        self.simple(Sql::Release, "releasing a savepoint")?;
                    } else if self.wrote {
                        return Ok(None);
                    }
                    self.records.truncate(first);
                    *self.chain = Chain::resume(before.0, before.1);
                    out.push(Err(e));
                }
            }
        }
        let mut records = std::mem::take(&mut self.records).into_iter();
        let answers = out
            .into_iter()
            .map(|o| o.map(|(n, affected)| BatchOutcome { records: records.by_ref().take(n).collect(), affected }))
            .collect();
        Ok(Some(answers))
    }

    /// `json` is the operation's share of [`Job::json`], prepared on the caller's task.
    fn apply(&mut self, op: &WriteOp, json: Option<&Result<(String, String), StoreError>>) -> Result<u64, StoreError> {
        match op {
            WriteOp::InsertInjection { row, audit, outbox, idempotency } => {
                let idempotency = idempotency.as_ref();
                match json {
                    Some(Ok(json)) => self.insert_injection(row, json, audit, outbox, idempotency),
                    Some(Err(e)) => Err(e.clone()),
                    None => {
                        let json = prepare_insert(row, audit, outbox, idempotency)?;
                        self.insert_injection(row, &json, audit, outbox, idempotency)
                    }
                }
            }
            WriteOp::UpdateInjection(u) => self.update_injection(u),
            WriteOp::RecordEvent { audit, outbox } => self.record_event(audit, outbox),
            WriteOp::Engagement(e) => self.engagement(e),
            WriteOp::PutIdempotency(row) => self.put_idempotency(row).map(|()| 1),
            WriteOp::OutboxDelivered { id, attempts, status, at } => {
                let mut e = self.exec(Sql::OutboxDelivered).map_err(|f| f.into_store("updating a webhook message"))?;
                e.text(1, id).int(2, i64::from(*attempts)).int(3, i64::from(*status)).int(4, *at);
                let n = e.run().map_err(|f| f.into_store("updating a webhook message"))?;
                drop(e);
                self.outbox_transition(n, id)
            }
            WriteOp::OutboxRetry { id, attempts, next_at, last_status, last_error } => {
                let mut e = self.exec(Sql::OutboxRetry).map_err(|f| f.into_store("updating a webhook message"))?;
                e.text(1, id)
                    .int(2, i64::from(*attempts))
                    .int(3, *next_at)
                    .opt_int(4, last_status.map(i64::from))
                    .opt_text(5, last_error.as_deref());
                let n = e.run().map_err(|f| f.into_store("updating a webhook message"))?;
                drop(e);
                self.outbox_transition(n, id)
            }
            WriteOp::OutboxDead { id, attempts, last_status, last_error } => {
                let mut e = self.exec(Sql::OutboxDead).map_err(|f| f.into_store("updating a webhook message"))?;
                e.text(1, id)
                    .int(2, i64::from(*attempts))
                    .opt_int(3, last_status.map(i64::from))
                    .opt_text(4, last_error.as_deref());
                let n = e.run().map_err(|f| f.into_store("updating a webhook message"))?;
                drop(e);
                self.outbox_transition(n, id)
            }
            other => Err(StoreError::Invalid(format!("internal: no native form for {}", op_name(other)))),
        }
    }

    /// `json` is `prepare_insert`'s answer for this row: its checks passed, and the payload
    /// and content JSON text.
    fn insert_injection(
        &mut self,
        row: &InjectionRow,
        json: &(String, String),
        audit: &[AuditDraft],
        outbox: &[OutboxRow],
        idempotency: Option<&IdempotencyRow>,
    ) -> Result<u64, StoreError> {
        let (payload, content) = json;
        if let Some(idem) = idempotency {
            self.put_idempotency(idem)?;
        }
        let (id, conv, prompt) = (IdText::of(row.id), IdText::of(row.conversation_id), IdText::of(row.prompt_id));
        let mut e = self.exec(Sql::InsertInjection).map_err(|f| f.into_store("inserting an injection"))?;
        e.text(1, id.as_str())
            .text(2, conv.as_str())
            .text(3, prompt.as_str())
            .text(4, row.status.as_str())
            .text(5, payload)
            .text(6, content)
            .text(7, row.priority.as_str())
            .text(8, row.source.as_str())
            .opt_text(9, row.api_key_id.as_deref())
            .opt_text(10, row.rule_id.as_deref())
            .int(11, row.created_at)
            .opt_int(12, row.admitted_at)
            .opt_int(13, row.show_at)
            .opt_int(14, row.expires_at)
            .opt_int(15, row.queue_deadline)
            .int(16, row.updated_at)
            .opt_text(17, row.last_error.as_deref())
            .opt_text(18, row.queue_id.as_deref())
            .opt_text(19, row.agent_id.as_deref());
        match e.run() {
            Ok(_) => {}
            Err(f) if f.is_duplicate() => {
                return Err(StoreError::Duplicate { what: "injection", id: row.id.to_string() });
            }
            // Any other constraint (a check, a trigger's RAISE) refuses this row alone.
            Err(f) if f.is_constraint() => {
                return Err(StoreError::Invalid(format!("injection {} was refused: {}", row.id, f.message)))
            }
            Err(f) => return Err(f.into_store("inserting an injection")),
        }
        drop(e);
        self.wrote = true;
        for d in audit {
            self.append(d)?;
        }
        self.insert_outbox(outbox)?;
        Ok(1)
    }

    fn update_injection(&mut self, u: &InjectionUpdate) -> Result<u64, StoreError> {
        check_drafts(u.id, None, &u.audit)?;
        check_outbox(u.id, &u.outbox)?;
        let id = IdText::of(u.id);
        let mut e = self.exec(Sql::UpdateInjection).map_err(|f| f.into_store("updating an injection"))?;
        e.text(1, id.as_str())
            .text(2, u.expected_status.as_str())
            .text(3, u.status.as_str())
            .int(4, u.at)
            .opt_int(5, u.admitted_at)
            .opt_int(6, u.show_at)
            .opt_int(7, u.expires_at)
            .opt_int(8, u.queue_deadline)
            .opt_text(9, u.last_error.as_deref());
        let changed = e.step().map_err(|f| f.into_store("updating an injection"))?;
        if !changed {
            drop(e);
            return Err(self.explain_missed_update(u, &id)?);
        }
        // The row changed (RETURNING runs the whole update on the first step).
        self.wrote = true;
        let ids = (parse_uuid(&e.column_text(0)?)?, parse_uuid(&e.column_text(1)?)?);
        drop(e);
        check_drafts(u.id, Some(ids), &u.audit)?;
        for d in &u.audit {
            self.append(d)?;
        }
        self.insert_outbox(&u.outbox)?;
        Ok(1)
    }

    /// Why an optimistic update changed no row: the injection is gone or has moved on.
    fn explain_missed_update(&mut self, u: &InjectionUpdate, id: &IdText) -> Result<StoreError, StoreError> {
        let mut e = self.exec(Sql::InjectionStatus).map_err(|f| f.into_store("reading an injection's status"))?;
        e.text(1, id.as_str());
        if !e.step().map_err(|f| f.into_store("reading an injection's status"))? {
            return Ok(StoreError::NotFound { what: "injection", id: u.id.to_string() });
        }
        let s = e.column_text(0)?;
        Ok(StoreError::Conflict {
            id: u.id,
            expected: u.expected_status,
            actual: s.parse().map_err(|()| StoreError::Corrupt(format!("injection {} has status {s:?}", u.id)))?,
        })
    }

    fn record_event(&mut self, audit: &AuditDraft, outbox: &[OutboxRow]) -> Result<u64, StoreError> {
        let id = audit.injection_id;
        check_outbox(id, outbox)?;
        let text = IdText::of(id);
        let mut e = self.exec(Sql::InjectionIds).map_err(|f| f.into_store("reading an injection"))?;
        e.text(1, text.as_str());
        if !e.step().map_err(|f| f.into_store("reading an injection"))? {
            return Err(StoreError::NotFound { what: "injection", id: id.to_string() });
        }
        let ids = (parse_uuid(&e.column_text(0)?)?, parse_uuid(&e.column_text(1)?)?);
        drop(e);
        check_drafts(id, Some(ids), std::slice::from_ref(audit))?;
        self.append(audit)?;
        self.insert_outbox(outbox)?;
        Ok(1)
    }

    /// Seals `draft` as the next record and inserts it.
    fn append(&mut self, draft: &AuditDraft) -> Result<(), StoreError> {
        let r = self.chain.append(draft.clone(), self.at, self.rng)?;
        let seq = to_i64(r.seq, "seq")?;
        let latency = r.latency_ms.map(|ms| to_i64(ms, "latencyMs")).transpose()?;
        let day = std::mem::take(&mut self.day);
        let result = (|| {
            let mut e = self.exec(Sql::InsertAudit)?;
            e.int(1, seq)
                .blob(2, r.audit_id.as_bytes())
                .text(3, r.timestamp.as_str())
                .text(4, &day)
                .blob(5, r.conversation_id.as_bytes())
                .blob(6, r.prompt_id.as_bytes())
                .blob(7, r.injection_id.as_bytes())
                .text(8, &r.status)
                .opt_int(9, latency)
                .opt_text(10, r.error.as_deref())
                .text(11, &r.actor)
                .opt_text(12, r.reason.as_deref())
                .text(13, &r.compliance_tag)
                .text(14, &r.retention_policy)
                .blob(15, &r.prev_hash.0[..])
                .blob(16, &r.hash.0[..]);
            e.run()
        })();
        self.day = day;
        result.map_err(|f| f.into_store("appending an audit record"))?;
        self.wrote = true;
        self.records.push(r);
        Ok(())
    }

    fn insert_outbox(&mut self, rows: &[OutboxRow]) -> Result<(), StoreError> {
        for o in rows {
            let injection = IdText::of(o.injection_id);
            let mut e = self.exec(Sql::InsertOutbox).map_err(|f| f.into_store("enqueueing a webhook message"))?;
            e.text(1, &o.id)
                .text(2, injection.as_str())
                .text(3, &o.endpoint_url)
                .text(4, &o.event_type)
                .blob(5, &o.body[..])
                .int(6, o.created_at)
                .int(7, i64::from(o.attempts))
                .int(8, o.next_attempt_at)
                .text(9, o.state.as_str())
                .opt_int(10, o.last_status.map(i64::from))
                .opt_text(11, o.last_error.as_deref())
                .opt_int(12, o.delivered_at);
            match e.run() {
                Ok(_) => {}
                Err(f) if f.is_foreign_key() => {
                    return Err(StoreError::NotFound {
                        what: "injection (named by a webhook message)",
                        id: o.injection_id.to_string(),
                    })
                }
                Err(f) if f.is_duplicate() => {
                    return Err(StoreError::Duplicate { what: "webhook message", id: o.id.clone() })
                }
                Err(f) if f.is_constraint() => {
                    return Err(StoreError::Invalid(format!("webhook message {} was refused: {}", o.id, f.message)))
                }
                Err(f) => return Err(f.into_store("enqueueing a webhook message")),
            }
            self.wrote = true;
        }
        Ok(())
    }

    fn put_idempotency(&mut self, row: &IdempotencyRow) -> Result<(), StoreError> {
        let injection = row.injection_id.map(IdText::of);
        let mut e = self.exec(Sql::UpsertIdempotency).map_err(|f| f.into_store("storing an idempotency key"))?;
        e.text(1, &row.api_key_id)
            .text(2, &row.key)
            .text(3, &row.request_hash)
            .int(4, i64::from(row.status_code))
            .blob(5, &row.response_body[..])
            .opt_text(6, injection.as_ref().map(IdText::as_str))
            .int(7, row.created_at)
            .int(8, row.created_at.saturating_sub(IDEMPOTENCY_TTL_MS));
        let n = e.run().map_err(|f| f.into_store("storing an idempotency key"))?;
        if n == 0 {
            return Err(StoreError::IdempotencyKeyInUse { key: row.key.clone() });
        }
        self.wrote = true;
        Ok(())
    }

    /// The event and its share of the rollup, in the same transaction so they always agree.
    fn engagement(&mut self, ev: &EngagementRow) -> Result<u64, StoreError> {
        if ev.rating.is_some_and(|r| r != 1 && r != -1) {
            return Err(StoreError::Invalid(format!("a feedback rating is +1 or -1, not {:?}", ev.rating)));
        }
        let ids = (IdText::of(ev.injection_id), IdText::of(ev.conversation_id), IdText::of(ev.prompt_id));
        let context = "inserting an engagement event";
        let mut e = self.exec(Sql::InsertEngagement).map_err(|f| f.into_store(context))?;
        e.text(1, ids.0.as_str())
            .text(2, ids.1.as_str())
            .text(3, ids.2.as_str())
            .opt_text(4, ev.rule_id.as_deref())
            .opt_text(5, ev.queue_id.as_deref())
            .opt_text(6, ev.agent_id.as_deref())
            .text(7, ev.kind.as_str())
            .int(8, ev.at)
            .opt_int(9, ev.shown_at)
            .opt_int(10, ev.rating.map(i64::from));
        e.run().map_err(|f| f.into_store(context))?;
        drop(e);
        self.wrote = true;
        let delta = Delta::of(std::iter::once(ev));
        let context = "updating the engagement rollup";
        for (dim, bucket, key, c) in delta.cells() {
            let mut e = self.exec(Sql::UpsertCell).map_err(|f| f.into_store(context))?;
            e.int(1, dim as i64).int(2, bucket).text(3, key);
            for (i, n) in c.kinds.iter().enumerate() {
                e.int(4 + i as c_int, to_i64(*n, "a rollup count")?);
            }
            e.int(10, to_i64(c.quick_dismissed, "a rollup count")?)
                .int(11, to_i64(c.feedback_up, "a rollup count")?)
                .int(12, to_i64(c.feedback_down, "a rollup count")?);
            e.run().map_err(|f| f.into_store(context))?;
        }
        for (dim, bucket, key, slot, n) in delta.clicks() {
            let mut e = self.exec(Sql::UpsertClick).map_err(|f| f.into_store(context))?;
            e.int(1, dim as i64).int(2, bucket).text(3, key).int(4, i64::from(slot)).int(5, to_i64(n, "a count")?);
            e.run().map_err(|f| f.into_store(context))?;
        }
        Ok(1)
    }

    /// Explains an outbox update (`WHERE id = ? AND state = 'pending'`) that changed `n` rows.
    fn outbox_transition(&mut self, n: u64, id: &str) -> Result<u64, StoreError> {
        if n == 1 {
            self.wrote = true;
            return Ok(1);
        }
        let mut e = self.exec(Sql::OutboxState).map_err(|f| f.into_store("reading a webhook message"))?;
        e.text(1, id);
        if !e.step().map_err(|f| f.into_store("reading a webhook message"))? {
            return Err(StoreError::NotFound { what: "webhook message", id: id.to_owned() });
        }
        Err(StoreError::OutboxNotPending { id: id.to_owned(), state: e.column_text(0)? })
    }
}

fn parse_uuid(s: &str) -> Result<Uuid, StoreError> {
    Uuid::parse_str(s).map_err(|_| StoreError::Corrupt(format!("stored id {s:?} is not a UUID")))
}

fn op_name(op: &WriteOp) -> &'static str {
    match op {
        WriteOp::PurgeIdempotency => "PurgeIdempotency",
        WriteOp::DisableEndpoint { .. } => "DisableEndpoint",
        WriteOp::EnableEndpoint { .. } => "EnableEndpoint",
        WriteOp::RedriveOutbox(_) => "RedriveOutbox",
        WriteOp::PurgeOutbox { .. } => "PurgeOutbox",
        WriteOp::PutCheckpoint(_) => "PutCheckpoint",
        WriteOp::PurgeDays { .. } => "PurgeDays",
        WriteOp::UpsertPrompts(_) => "UpsertPrompts",
        WriteOp::ReplacePrompts(_) => "ReplacePrompts",
        WriteOp::RecordRuleFires(_) => "RecordRuleFires",
        _ => "this operation",
    }
}
