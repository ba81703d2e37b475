//! Durable storage for the injection service: the one home of the project's SQL.
//!
//! A SQLite file in WAL mode with `synchronous=FULL`: a transaction is on disk when its
//! commit returns, so nothing is acknowledged to a caller before it would survive a crash
//! (kill -9 or power loss). Migrations in `migrations/sqlite` are embedded and applied at
//! [`Store::open`].
//!
//! # Shape
//!
//! - **One writer.** A thread of its own owns the only writing connection and the audit chain head
//!   ([`writer`]). Callers hand it a [`WriteBatch`] of typed [`WriteOp`]s through
//!   [`Store::write`] and wait for the answer. The writer drains every queued batch (up to
//!   [`StoreOptions::max_drain`]) into ONE transaction and one fsync (group commit), seals the
//!   batches' audit records into the hash chain inside that transaction, commits, and only
//!   then answers. A batch is atomic; batches fail independently (a `Conflict` in one does
//!   not undo another), except that a database failure fails the whole transaction.
//! - **A read pool.** Read-only connections; in WAL mode readers see the last commit and
//!   never wait for the writer ([`read`]).
//! - **Typed rows** ([`model`]): [`InjectionRow`], [`OutboxRow`], [`IdempotencyRow`], ...
//!
//! # Audit timestamps
//!
//! Records are stamped by the writer with its [`Clock`], once per transaction, and never
//! earlier than the previous record: each UTC day is then one contiguous run of sequence
//! numbers, which daily checkpoints and whole-day purges depend on.
//!
//! # Schema notes
//!
//! Injection and outbox ids are text (readable in the `sqlite3` shell and in joins); audit
//! ids and hashes are raw bytes, compact and decoded without parsing for fast verification.
//! Audit records are append-only, enforced by triggers: no update, and a delete only for a
//! seq covered by a recorded purge. `audit_head` holds the chain's end, so the chain resumes
//! correctly even when retention has purged every record.
//!
//! Migrations are checksummed by sqlx when applied: never edit one that has shipped; add
//! `migrations/sqlite/NNNN_what.sql` instead (`build.rs` rebuilds when the folder changes).

pub mod clock;
pub mod model;
mod native;
mod ops;
mod raw_audit;
mod read;
pub mod rollup;
pub mod synthetic;
mod writer;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chrono::NaiveDate;
use rand::rngs::StdRng;
use rand::SeedableRng;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{ConnectOptions, SqlitePool};
use thiserror::Error;
use tokio::sync::{mpsc, oneshot, Mutex};
use uuid::Uuid;

use crate::audit::{AuditError, AuditRecord, Chain};

pub use clock::{Clock, ManualClock, SystemClock};
pub use model::{
    new_message_id, AuditHead, DisabledEndpoint, EngagementKind, EngagementRow, IdempotencyRow, InjectionRow,
    InjectionStatus, InjectionUpdate, InjectionWithTimeline, OutboxRow, OutboxState, OutboxStats, PurgeRecord,
    RecoverySet, Redrive, RuleFireRow, Source, IDEMPOTENCY_TTL_MS,
};
pub use ops::{BatchOutcome, WriteBatch, WriteOp};
pub use read::{AdoptionCell, AdoptionDimension};
pub use writer::WriterStats;

/// The migrations under `migrations/sqlite`, compiled in.
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("migrations/sqlite");

/// The file name [`Store::open_in`] uses.
pub const DEFAULT_FILE_NAME: &str = "gc-assist.db";

/// Why a store operation failed. Cloneable, because one database failure is the answer to
/// every caller whose batch was in the failed transaction.
#[derive(Debug, Clone, Error)]
pub enum StoreError {
    #[error("cannot open the database {path}: {source}; check that the directory exists and is writable")]
    Open { path: PathBuf, source: Arc<sqlx::Error> },
    #[error(
        "cannot migrate the database {path}: {source}; it may belong to a newer gc-assist, or be damaged (restore a backup)"
    )]
    Migrate { path: PathBuf, source: Arc<sqlx::migrate::MigrateError> },
    #[error("database error while {context}: {source}")]
    Database { context: &'static str, source: Arc<sqlx::Error> },
    #[error("injection {id} is {actual}, not {expected}: it changed meanwhile; read it again and decide anew")]
    Conflict { id: Uuid, expected: InjectionStatus, actual: InjectionStatus },
    #[error("database error while {context}: SQLite error {code}: {message}")]
    Sqlite { context: &'static str, code: i32, message: String },
    #[error("{what} {id} does not exist")]
    NotFound { what: &'static str, id: String },
    #[error("{what} {id} already exists")]
    Duplicate { what: &'static str, id: String },
    #[error("idempotency key {key:?} was already used within 24 hours; replay its stored answer")]
    IdempotencyKeyInUse { key: String },
    #[error("webhook message {id} is {state}, not pending; only pending messages are attempted")]
    OutboxNotPending { id: String, state: String },
    #[error("a different checkpoint for {day} is already stored; checkpoints are kept as first written")]
    CheckpointConflict { day: NaiveDate },
    #[error("refusing to purge audit records: {0}")]
    InvalidPurge(String),
    #[error("invalid write: {0}")]
    Invalid(String),
    #[error("the database holds data the store cannot read: {0}; restore a backup or run `gc-assist audit verify`")]
    Corrupt(String),
    #[error(transparent)]
    Audit(#[from] AuditError),
    #[error("the store is closed")]
    Closed,
}

impl StoreError {
    /// A failure of one batch on its own terms: the other batches of the same transaction go
    /// ahead. Anything else fails the whole transaction.
    pub fn is_batch_local(&self) -> bool {
        matches!(
            self,
            StoreError::Conflict { .. }
                | StoreError::NotFound { .. }
                | StoreError::Duplicate { .. }
                | StoreError::IdempotencyKeyInUse { .. }
                | StoreError::OutboxNotPending { .. }
                | StoreError::CheckpointConflict { .. }
                | StoreError::InvalidPurge(_)
                | StoreError::Invalid(_)
        )
    }

    /// Worth retrying as is (the database was busy or briefly failing), as opposed to a
    /// refusal that will repeat.
    pub fn is_retryable(&self) -> bool {
        match self {
            StoreError::Database { source, .. } => match source.as_ref() {
                sqlx::Error::Database(d) => {
                    let code = d.code();
                    // SQLITE_BUSY (5) and SQLITE_LOCKED (6), with their extended codes.
                    code.as_deref().and_then(|c| c.parse::<i32>().ok()).is_some_and(|c| matches!(c & 0xff, 5 | 6))
                }
                sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::WorkerCrashed => true,
                _ => false,
            },
            // SQLITE_BUSY (5), SQLITE_LOCKED (6) and SQLITE_IOERR (10), with their extended codes.
            StoreError::Sqlite { code, .. } => matches!(code & 0xff, 5 | 6 | 10),
            _ => false,
        }
    }
}

/// Wraps a database error with what the store was doing.
pub(crate) fn db_err(context: &'static str) -> impl Fn(sqlx::Error) -> StoreError {
    move |e| StoreError::Database { context, source: Arc::new(e) }
}

/// How to open a store.
#[derive(Clone)]
pub struct StoreOptions {
    /// Read-only connections in the read pool.
    pub read_connections: u32,
    /// How long a statement waits for a lock held by another process before failing.
    pub busy_timeout: Duration,
    /// At most this many batches share one transaction.
    pub max_drain: usize,
    /// Batches that may wait for the writer before `write` itself waits (back-pressure).
    pub queue_capacity: usize,
    /// Stamps audit records and operation times.
    pub clock: Arc<dyn Clock>,
    /// Seeds the random part of audit ids (tests); `None` seeds from the OS.
    pub rng_seed: Option<u64>,
}

impl Default for StoreOptions {
    fn default() -> StoreOptions {
        StoreOptions {
            read_connections: 4,
            busy_timeout: Duration::from_secs(5),
            max_drain: 512,
            queue_capacity: 8192,
            clock: Arc::new(SystemClock),
            rng_seed: None,
        }
    }
}

impl fmt::Debug for StoreOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreOptions")
            .field("read_connections", &self.read_connections)
            .field("busy_timeout", &self.busy_timeout)
            .field("max_drain", &self.max_drain)
            .field("queue_capacity", &self.queue_capacity)
            .field("clock", &self.clock)
            .field("rng_seed", &self.rng_seed.map(|_| "set"))
            .finish()
    }
}

/// A handle to the store; clones share the writer and the read pool.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    tx: mpsc::Sender<writer::Msg>,
    read: SqlitePool,
    counters: Arc<writer::Counters>,
    /// Answered (or dropped) when the writer's thread has closed its connection.
    stopped: Mutex<Option<oneshot::Receiver<()>>>,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store").field("path", &self.inner.path).finish_non_exhaustive()
    }
}

/// How much of the database file each read connection may map (SQLite's `mmap_size`).
const READ_MMAP_BYTES: u64 = 1 << 30;

impl Store {
    /// Opens (creating if missing) the database at `path`, applies migrations, loads the
    /// audit chain head and starts the writer. Must be called within a tokio runtime.
    pub async fn open(path: &Path, opts: StoreOptions) -> Result<Store, StoreError> {
        let open_err = |e: sqlx::Error| StoreError::Open { path: path.to_path_buf(), source: Arc::new(e) };
        let base = SqliteConnectOptions::new()
            .filename(path)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(opts.busy_timeout);
        let mut conn = base.clone().create_if_missing(true).connect().await.map_err(open_err)?;
        MIGRATOR
            .run(&mut conn)
            .await
            .map_err(|e| StoreError::Migrate { path: path.to_path_buf(), source: Arc::new(e) })?;
        let (last_seq, last_hash, last_at) = writer::check_head(&mut conn).await?;
        let read = SqlitePoolOptions::new()
            .max_connections(opts.read_connections.max(1))
            // Reads map the database file instead of copying each page out of the kernel
            // with a read(): verify and export walk the whole chain, and the copies were a
            // fifth of their CPU. Pages still in the WAL are read as before.
            .connect_with(base.read_only(true).pragma("mmap_size", READ_MMAP_BYTES.to_string()))
            .await
            .map_err(open_err)?;
        let counters = Arc::new(writer::Counters::default());
        let rng = match opts.rng_seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::from_entropy(),
        };
        let w = writer::Writer {
            conn,
            chain: Chain::resume(last_seq, last_hash),
            last_at,
            head_stale: false,
            clock: opts.clock.clone(),
            rng,
            counters: counters.clone(),
            max_drain: opts.max_drain.max(1),
            stmts: Default::default(),
        };
        let (tx, rx) = mpsc::channel(opts.queue_capacity.max(1));
        // The writer runs on a thread of its own: a group commit is one blocking call into
        // SQLite (`native`), and the thread ends when every handle is gone or on `close`.
        let (stopped_tx, stopped) = oneshot::channel();
        std::thread::Builder::new()
            .name("gc-assist-store-writer".into())
            .spawn(move || {
                w.run(rx);
                let _ = stopped_tx.send(());
            })
            .map_err(|e| StoreError::Open { path: path.to_path_buf(), source: Arc::new(sqlx::Error::Io(e)) })?;
        Ok(Store {
            inner: Arc::new(Inner { path: path.to_path_buf(), tx, read, counters, stopped: Mutex::new(Some(stopped)) }),
        })
    }

    /// Opens `dir/gc-assist.db` with default options.
    pub async fn open_in(dir: &Path) -> Result<Store, StoreError> {
        Store::open(&dir.join(DEFAULT_FILE_NAME), StoreOptions::default()).await
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Applies `batch` atomically and durably; returns the audit records it created.
    pub async fn write(&self, batch: impl Into<WriteBatch>) -> Result<Vec<AuditRecord>, StoreError> {
        self.write_outcome(batch).await.map(|o| o.records)
    }

    /// Like [`Store::write`], also returning each operation's row count.
    pub async fn write_outcome(&self, batch: impl Into<WriteBatch>) -> Result<BatchOutcome, StoreError> {
        let (reply, answer) = oneshot::channel();
        let job = Arc::new(writer::Job::new(batch.into()));
        self.inner.tx.send(writer::Msg::Write(job.clone(), reply)).await.map_err(|_| StoreError::Closed)?;
        // The writer answers every batch it takes; a dropped reply means it stopped.
        let answered = answer.await.map_err(|_| StoreError::Closed)?;
        // The writer let go of its reference before answering: the batch is freed here.
        drop(job);
        answered
    }

    /// The writer's counters (transactions, batches, records) since open.
    pub fn stats(&self) -> WriterStats {
        self.inner.counters.snapshot()
    }

    /// Finishes the queued writes, closes the writer's connection and the read pool. Writes
    /// from any handle after this fail with `Closed`.
    pub async fn close(&self) -> Result<(), StoreError> {
        let (done, closed) = oneshot::channel();
        if self.inner.tx.send(writer::Msg::Close(done)).await.is_ok() {
            let _ = closed.await;
        }
        if let Some(stopped) = self.inner.stopped.lock().await.take() {
            let _ = stopped.await;
        }
        self.inner.read.close().await;
        Ok(())
    }
}
