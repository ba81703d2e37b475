//! The webhook delivery worker: takes due messages from the store's outbox, sends each one
//! signed (Standard Webhooks), and records the outcome: delivered, retry later, dead-letter,
//! or endpoint disabled (410 Gone).
//!
//! Guarantees:
//! - At-least-once: a message is marked delivered only after a 2xx; if the process stops
//!   mid-attempt it stays pending and is sent again, with the same `webhook-id`, so
//!   receivers deduplicate.
//! - One attempt at a time per message: the store's poll does not lease rows, so the worker
//!   remembers which ids are in flight and skips them (one worker per store file).
//! - Each attempt is bounded by `attempt_timeout` (name resolution included); redirects are
//!   never followed; proxies from the environment are ignored (they would defeat the guard).
//! - SSRF guard: the worker resolves the host itself, refuses the destination if ANY
//!   resolved address fails [`check_destination`], and pins the connection to the addresses
//!   it checked (`ClientBuilder::resolve_to_addrs`), so a second DNS answer cannot swap in
//!   a private address. A refused destination is dead-lettered at once: retrying cannot help.
//! - The outcome → store-operation decision is the pure [`plan`], table-tested.
//! - Secrets and signatures are never logged; endpoint URLs are logged as origin only, so
//!   credentials in a URL do not reach the logs.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use secrecy::ExposeSecret;
use thiserror::Error;
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio::time::Instant;
use url::{Host, Url};

use super::retry::{parse_retry_after, Jitter, RetryError, RetrySchedule};
use super::signing::{sign_all, SecretError, WebhookSecret};
use super::ssrf::{check_destination, Cidr, SsrfError};
use crate::config::WebhookConfig;
use crate::store::{Clock, OutboxRow, Store, SystemClock, WriteBatch, WriteOp};

/// The longest `Retry-After` honoured, as in the default schedule: a receiver cannot park an
/// event for longer.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(10 * 3600);
/// Hosts whose pinned client is kept; beyond this the cache starts afresh.
const MAX_CACHED_HOSTS: usize = 256;
/// Longest error text stored with a message.
const MAX_ERROR_CHARS: usize = 300;

/// Why the worker could not be set up.
#[derive(Debug, Error)]
pub enum WorkerError {
    #[error(
        "webhook.secret is empty: set it (or GC_ASSIST__WEBHOOK__SECRET) to a whsec_ secret so receivers can verify events"
    )]
    NoSecret,
    #[error("webhook.secret entry {index}: {source}")]
    Secret { index: usize, source: SecretError },
    #[error("webhook.schedule_secs: {0}")]
    Schedule(#[from] RetryError),
    #[error("webhook.allow_private: {0}")]
    AllowList(#[from] SsrfError),
    #[error("webhook.attempt_timeout_ms must be above 0")]
    Timeout,
    #[error("the webhook worker needs a concurrency of at least 1")]
    Concurrency,
    #[error("cannot build the webhook HTTP client: {0}")]
    Client(String),
}

/// How the worker delivers.
#[derive(Clone, Debug)]
pub struct WorkerSettings {
    /// Signing secrets; every one signs during a rotation (`sign_all`).
    pub secrets: Vec<WebhookSecret>,
    pub schedule: RetrySchedule,
    /// One attempt, name resolution included.
    pub attempt_timeout: Duration,
    /// Networks allowed despite the SSRF guard.
    pub allow: Vec<Cidr>,
    /// Attempts in flight at once.
    pub concurrency: usize,
    /// How often the outbox is polled when nothing wakes the worker (rows redriven from
    /// another process, retries scheduled before a restart).
    pub poll_interval: Duration,
    /// How long shutdown waits for attempts in flight before abandoning them (they stay
    /// pending and are sent again after a restart).
    pub shutdown_grace: Duration,
    /// Stamps `webhook-timestamp` and outcome times.
    pub clock: Arc<dyn Clock>,
    /// Seeds the retry jitter (tests); `None` seeds from the OS.
    pub rng_seed: Option<u64>,
}

impl WorkerSettings {
    /// Settings from the `[webhook]` configuration: parses the secrets (space-separated
    /// `whsec_` list), the schedule (full jitter) and the allow-list.
    pub fn from_config(c: &WebhookConfig) -> Result<WorkerSettings, WorkerError> {
        let secrets = parse_secrets(c.secret.expose_secret())?;
        if c.attempt_timeout_ms == 0 {
            return Err(WorkerError::Timeout);
        }
        let attempt_timeout = Duration::from_millis(c.attempt_timeout_ms);
        Ok(WorkerSettings {
            secrets,
            schedule: RetrySchedule::new(
                c.schedule_secs.iter().map(|s| Duration::from_secs(*s)).collect(),
                MAX_RETRY_AFTER,
                Jitter::Full,
            )?,
            attempt_timeout,
            allow: Cidr::parse_list(&c.allow_private)?,
            concurrency: 16,
            poll_interval: Duration::from_secs(1),
            shutdown_grace: attempt_timeout + Duration::from_secs(1),
            clock: Arc::new(SystemClock),
            rng_seed: None,
        })
    }
}

/// Parses a space-separated list of `whsec_` secrets; at least one is required.
pub fn parse_secrets(text: &str) -> Result<Vec<WebhookSecret>, WorkerError> {
    let secrets = text
        .split_ascii_whitespace()
        .enumerate()
        .map(|(index, s)| WebhookSecret::parse(s).map_err(|source| WorkerError::Secret { index, source }))
        .collect::<Result<Vec<_>, _>>()?;
    if secrets.is_empty() {
        return Err(WorkerError::NoSecret);
    }
    Ok(secrets)
}

/// What one attempt came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    /// The endpoint answered.
    Answered { status: u16, retry_after: Option<Duration> },
    /// No answer: timeout, connection or name-resolution failure. Worth retrying.
    Failed(String),
    /// The destination may never be sent to (SSRF guard, unusable URL): dead at once.
    Refused(String),
}

/// What became of a message after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Delivered,
    /// Pending again, due at this epoch ms.
    Retry {
        next_at: i64,
    },
    Dead,
    /// 410 Gone: the endpoint is disabled with its pending messages.
    Disabled,
}

/// The store operations for `attempt` on `row` (pure: clock and RNG passed in). `row` is
/// the message as claimed; its `attempts` does not yet count this attempt.
pub fn plan(
    row: &OutboxRow,
    attempt: &Attempt,
    schedule: &RetrySchedule,
    now_ms: i64,
    rng: &mut impl Rng,
) -> (Verdict, WriteBatch) {
    let id = row.id.clone();
    let attempts = row.attempts.saturating_add(1);
    let (status, error, retry_after) = match attempt {
        Attempt::Answered { status, .. } if (200..300).contains(status) => {
            let op = WriteOp::OutboxDelivered { id, attempts, status: *status, at: now_ms };
            return (Verdict::Delivered, WriteBatch::new().with(op));
        }
        Attempt::Answered { status: 410, .. } => {
            let reason = format!("410 Gone from {} at attempt {attempts}", origin(&row.endpoint_url));
            // Record the attempt on the row first; disabling then files it (and every other
            // pending message to the endpoint) as `disabled`.
            let batch = WriteBatch::new()
                .with(WriteOp::OutboxRetry {
                    id,
                    attempts,
                    next_at: now_ms,
                    last_status: Some(410),
                    last_error: Some("410 Gone: endpoint disabled".into()),
                })
                .with(WriteOp::DisableEndpoint { url: row.endpoint_url.clone(), reason });
            return (Verdict::Disabled, batch);
        }
        Attempt::Answered { status, retry_after } => (Some(*status), status_text(*status), *retry_after),
        Attempt::Failed(e) => (None, e.clone(), None),
        Attempt::Refused(e) => {
            let op = WriteOp::OutboxDead { id, attempts, last_status: None, last_error: Some(clip(e)) };
            return (Verdict::Dead, WriteBatch::new().with(op));
        }
    };
    let last_error = Some(clip(&error));
    match schedule.next_attempt(attempts, retry_after, rng) {
        Some(wait) => {
            let next_at = now_ms.saturating_add(i64::try_from(wait.as_millis()).unwrap_or(i64::MAX));
            let op = WriteOp::OutboxRetry { id, attempts, next_at, last_status: status, last_error };
            (Verdict::Retry { next_at }, WriteBatch::new().with(op))
        }
        None => {
            let op = WriteOp::OutboxDead { id, attempts, last_status: status, last_error };
            (Verdict::Dead, WriteBatch::new().with(op))
        }
    }
}

fn status_text(status: u16) -> String {
    match reqwest::StatusCode::from_u16(status).ok().and_then(|s| s.canonical_reason()) {
        Some(reason) => format!("HTTP {status} {reason}"),
        None => format!("HTTP {status}"),
    }
}

fn clip(s: &str) -> String {
    s.chars().take(MAX_ERROR_CHARS).collect()
}

/// `scheme://host:port` of a URL, for logs and reasons: no path, query or credentials.
fn origin(url: &str) -> String {
    match Url::parse(url) {
        Ok(u) => u.origin().ascii_serialization(),
        Err(_) => "(invalid URL)".into(),
    }
}

/// Delivery counters since the worker started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WorkerStats {
    pub delivered: u64,
    pub retried: u64,
    pub dead: u64,
    pub disabled: u64,
    pub in_flight: u64,
}

#[derive(Debug, Default)]
struct Counters {
    delivered: AtomicU64,
    retried: AtomicU64,
    dead: AtomicU64,
    disabled: AtomicU64,
    in_flight: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> WorkerStats {
        WorkerStats {
            delivered: self.delivered.load(Ordering::Relaxed),
            retried: self.retried.load(Ordering::Relaxed),
            dead: self.dead.load(Ordering::Relaxed),
            disabled: self.disabled.load(Ordering::Relaxed),
            in_flight: self.in_flight.load(Ordering::Relaxed),
        }
    }
}

/// Wakes the worker; cheap to clone and hand to whoever writes outbox rows.
#[derive(Debug, Clone)]
pub struct Notifier(Arc<Notify>);

impl Notifier {
    /// New rows were committed: look now instead of at the next poll.
    pub fn notify(&self) {
        // A stored permit means a wake-up between two waits is not lost.
        self.0.notify_one();
    }
}

/// The delivery worker, before it runs.
pub struct Worker {
    store: Store,
    settings: WorkerSettings,
    shared: Arc<Shared>,
    notify: Arc<Notify>,
}

/// What every attempt needs.
struct Shared {
    secrets: Vec<WebhookSecret>,
    allow: Vec<Cidr>,
    timeout: Duration,
    clock: Arc<dyn Clock>,
    /// For IP-literal URLs: nothing to resolve, nothing to pin.
    direct: reqwest::Client,
    /// Per host: the addresses it was checked and pinned to, and the client pinned to them.
    pinned: Mutex<HashMap<String, (Vec<SocketAddr>, reqwest::Client)>>,
}

impl Worker {
    pub fn new(store: Store, settings: WorkerSettings) -> Result<Worker, WorkerError> {
        if settings.secrets.is_empty() {
            return Err(WorkerError::NoSecret);
        }
        if settings.concurrency == 0 {
            return Err(WorkerError::Concurrency);
        }
        if settings.attempt_timeout.is_zero() {
            return Err(WorkerError::Timeout);
        }
        let direct = client_builder().build().map_err(|e| WorkerError::Client(e.to_string()))?;
        let shared = Arc::new(Shared {
            secrets: settings.secrets.clone(),
            allow: settings.allow.clone(),
            timeout: settings.attempt_timeout,
            clock: settings.clock.clone(),
            direct,
            pinned: Mutex::new(HashMap::new()),
        });
        Ok(Worker { store, settings, shared, notify: Arc::new(Notify::new()) })
    }

    /// Starts delivering until `shutdown` completes; then stops claiming and lets attempts
    /// in flight finish (up to `shutdown_grace`).
    pub fn spawn(self, shutdown: impl Future<Output = ()> + Send + 'static) -> WorkerHandle {
        let counters = Arc::new(Counters::default());
        let notifier = Notifier(self.notify.clone());
        let task = tokio::spawn(self.run(shutdown, counters.clone()));
        WorkerHandle { notifier, counters, task }
    }

    async fn run(self, shutdown: impl Future<Output = ()> + Send + 'static, counters: Arc<Counters>) {
        tokio::pin!(shutdown);
        let mut rng = match self.settings.rng_seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::from_entropy(),
        };
        let mut tasks: JoinSet<(OutboxRow, Attempt)> = JoinSet::new();
        let mut in_flight: HashSet<String> = HashSet::new();
        // The soonest retry this worker scheduled itself, so it wakes for it on time.
        let mut soonest: Option<i64> = None;
        loop {
            let now = self.settings.clock.now_ms();
            if soonest.is_some_and(|t| t <= now) {
                soonest = None;
            }
            let free = self.settings.concurrency.saturating_sub(tasks.len());
            if free > 0 {
                // Ask for enough rows to fill the free slots even when some are in flight.
                let limit = u32::try_from(free + in_flight.len()).unwrap_or(u32::MAX);
                match self.store.outbox_due(now, limit).await {
                    Ok(rows) => {
                        let fresh: Vec<OutboxRow> =
                            rows.into_iter().filter(|r| !in_flight.contains(&r.id)).take(free).collect();
                        for row in fresh {
                            in_flight.insert(row.id.clone());
                            counters.in_flight.fetch_add(1, Ordering::Relaxed);
                            let shared = self.shared.clone();
                            tasks.spawn(async move {
                                let attempt = shared.attempt(&row).await;
                                (row, attempt)
                            });
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "webhook worker cannot read the outbox; will try again"),
                }
            }
            let mut wait = self.settings.poll_interval;
            if let Some(t) = soonest {
                wait = wait.min(Duration::from_millis(u64::try_from(t.saturating_sub(now)).unwrap_or(0)));
            }
            tokio::select! {
                biased;
                _ = &mut shutdown => break,
                Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                    counters.in_flight.fetch_sub(1, Ordering::Relaxed);
                    match done {
                        Ok((row, attempt)) => {
                            in_flight.remove(&row.id);
                            if let Some(Verdict::Retry { next_at }) = self.record(&row, &attempt, &counters, &mut rng).await {
                                soonest = Some(soonest.map_or(next_at, |s| s.min(next_at)));
                            }
                        }
                        Err(e) => {
                            // Attempts do not panic; if one ever did, its row stays pending
                            // and in the set, so it is not re-sent in a loop by this worker.
                            tracing::warn!(error = %e, "a webhook attempt task ended abnormally");
                        }
                    }
                }
                _ = self.notify.notified() => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
        self.drain(tasks, &counters, &mut rng).await;
    }

    /// Lets attempts in flight finish and records them, up to the grace period.
    async fn drain(&self, mut tasks: JoinSet<(OutboxRow, Attempt)>, counters: &Counters, rng: &mut StdRng) {
        let deadline = Instant::now() + self.settings.shutdown_grace;
        while !tasks.is_empty() {
            match tokio::time::timeout_at(deadline, tasks.join_next()).await {
                Ok(Some(Ok((row, attempt)))) => {
                    counters.in_flight.fetch_sub(1, Ordering::Relaxed);
                    self.record(&row, &attempt, counters, rng).await;
                }
                Ok(Some(Err(_))) => {
                    counters.in_flight.fetch_sub(1, Ordering::Relaxed);
                }
                Ok(None) => break,
                Err(_) => {
                    tracing::warn!(
                        abandoned = tasks.len(),
                        "webhook attempts still running at shutdown; they stay pending and are sent again on restart"
                    );
                    tasks.abort_all();
                    counters.in_flight.store(0, Ordering::Relaxed);
                    break;
                }
            }
        }
    }

    /// Writes the outcome of one attempt and counts it.
    async fn record(
        &self,
        row: &OutboxRow,
        attempt: &Attempt,
        counters: &Counters,
        rng: &mut StdRng,
    ) -> Option<Verdict> {
        let now = self.settings.clock.now_ms();
        let (verdict, batch) = plan(row, attempt, &self.settings.schedule, now, rng);
        if verdict != Verdict::Delivered {
            let error = match attempt {
                Attempt::Answered { status, .. } => status_text(*status),
                Attempt::Failed(e) | Attempt::Refused(e) => e.clone(),
            };
            tracing::warn!(
                id = %row.id,
                endpoint = %origin(&row.endpoint_url),
                event = %row.event_type,
                attempt = row.attempts.saturating_add(1),
                outcome = ?verdict,
                %error,
                "webhook delivery failed"
            );
        }
        match self.store.write(batch).await {
            Ok(_) => {
                let c = match verdict {
                    Verdict::Delivered => &counters.delivered,
                    Verdict::Retry { .. } => &counters.retried,
                    Verdict::Dead => &counters.dead,
                    Verdict::Disabled => &counters.disabled,
                };
                c.fetch_add(1, Ordering::Relaxed);
                Some(verdict)
            }
            Err(e) if e.is_batch_local() => {
                // Redriven, disabled or purged meanwhile: the newer state stands.
                tracing::debug!(id = %row.id, error = %e, "webhook outcome not recorded: the message changed meanwhile");
                None
            }
            Err(e) => {
                // It stays pending and is attempted again: at-least-once.
                tracing::warn!(id = %row.id, error = %e, "cannot record a webhook outcome; it will be sent again");
                None
            }
        }
    }
}

/// A running worker.
pub struct WorkerHandle {
    notifier: Notifier,
    counters: Arc<Counters>,
    task: tokio::task::JoinHandle<()>,
}

impl WorkerHandle {
    /// New rows were committed: look now.
    pub fn notify(&self) {
        self.notifier.notify();
    }

    /// A cloneable waker for the writers of outbox rows.
    pub fn notifier(&self) -> Notifier {
        self.notifier.clone()
    }

    pub fn stats(&self) -> WorkerStats {
        self.counters.snapshot()
    }

    /// Waits until the worker has stopped (after its shutdown future completed); answers
    /// the final counters.
    pub async fn join(self) -> WorkerStats {
        if let Err(e) = self.task.await {
            tracing::warn!(error = %e, "the webhook worker ended abnormally");
        }
        self.counters.snapshot()
    }
}

fn client_builder() -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .user_agent(concat!("gc-assist/", env!("CARGO_PKG_VERSION")))
}

impl Shared {
    /// One attempt, bounded as a whole by the attempt timeout.
    async fn attempt(&self, row: &OutboxRow) -> Attempt {
        match tokio::time::timeout(self.timeout, self.send(row)).await {
            Ok(a) => a,
            Err(_) => Attempt::Failed(format!("no answer within {} ms (timed out)", self.timeout.as_millis())),
        }
    }

    async fn send(&self, row: &OutboxRow) -> Attempt {
        let url = match Url::parse(&row.endpoint_url) {
            Ok(u) => u,
            Err(e) => return Attempt::Refused(format!("the endpoint URL is not valid: {e}")),
        };
        if !matches!(url.scheme(), "http" | "https") {
            return Attempt::Refused(format!("the endpoint URL scheme {:?} is not http or https", url.scheme()));
        }
        let Some(port) = url.port_or_known_default() else {
            return Attempt::Refused("the endpoint URL has no port".into());
        };
        let client = match url.host() {
            Some(Host::Ipv4(ip)) => match self.guard(&[IpAddr::V4(ip)]) {
                Ok(()) => self.direct.clone(),
                Err(e) => return Attempt::Refused(e.to_string()),
            },
            Some(Host::Ipv6(ip)) => match self.guard(&[IpAddr::V6(ip)]) {
                Ok(()) => self.direct.clone(),
                Err(e) => return Attempt::Refused(e.to_string()),
            },
            Some(Host::Domain(name)) => {
                let addrs: Vec<SocketAddr> = match tokio::net::lookup_host((name, port)).await {
                    Ok(a) => a.collect(),
                    Err(e) => return Attempt::Failed(format!("cannot resolve {name}: {e}")),
                };
                if addrs.is_empty() {
                    return Attempt::Failed(format!("{name} resolved to no address"));
                }
                let ips: Vec<IpAddr> = addrs.iter().map(|a| a.ip()).collect();
                if let Err(e) = self.guard(&ips) {
                    return Attempt::Refused(format!("{name} resolves to a refused address: {e}"));
                }
                match self.pinned_client(name, addrs) {
                    Ok(c) => c,
                    Err(e) => return Attempt::Failed(e),
                }
            }
            None => return Attempt::Refused("the endpoint URL has no host".into()),
        };
        let ts = self.clock.now_ms().div_euclid(1000);
        let signature = sign_all(&self.secrets, &row.id, ts, &row.body);
        let sent = client
            .post(url)
            .header("webhook-id", row.id.as_str())
            .header("webhook-timestamp", ts.to_string())
            .header("webhook-signature", signature)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(row.body.clone())
            .send()
            .await;
        match sent {
            Ok(resp) => {
                let now =
                    SystemTime::UNIX_EPOCH + Duration::from_millis(u64::try_from(self.clock.now_ms()).unwrap_or(0));
                let retry_after = resp
                    .headers()
                    .get(reqwest::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| parse_retry_after(v, now));
                Attempt::Answered { status: resp.status().as_u16(), retry_after }
            }
            Err(e) => Attempt::Failed(describe(&e)),
        }
    }

    /// Every address must pass; one refused address refuses the destination.
    fn guard(&self, ips: &[IpAddr]) -> Result<(), SsrfError> {
        ips.iter().try_for_each(|ip| check_destination(*ip, &self.allow))
    }

    /// A client that connects `host` only to `addrs` (the checked ones).
    fn pinned_client(&self, host: &str, addrs: Vec<SocketAddr>) -> Result<reqwest::Client, String> {
        let mut cache = self.pinned.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((pinned, client)) = cache.get(host) {
            if *pinned == addrs {
                return Ok(client.clone());
            }
        }
        let client = client_builder()
            .resolve_to_addrs(host, &addrs)
            .build()
            .map_err(|e| format!("cannot build an HTTP client: {e}"))?;
        if cache.len() >= MAX_CACHED_HOSTS {
            cache.clear();
        }
        cache.insert(host.to_owned(), (addrs, client.clone()));
        Ok(client)
    }
}

/// A transport failure in words, with its causes, without the URL.
fn describe(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else {
        "request failed"
    };
    let mut text = kind.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::OutboxState;
    use uuid::Uuid;

    const NOW: i64 = 1_714_521_600_000;
    const URL: &str = "https://kb.example.com/hooks?token=x";

    fn row(attempts: u32) -> OutboxRow {
        let mut r = OutboxRow::new(Uuid::nil(), URL, "AGENT_ASSIST_PROMPT_INJECTED", &b"{}"[..], NOW);
        r.attempts = attempts;
        r
    }

    fn schedule() -> RetrySchedule {
        RetrySchedule::from_secs(&[5, 60], 600, Jitter::None).unwrap()
    }

    fn ans(status: u16, ra: Option<u64>) -> Attempt {
        Attempt::Answered { status, retry_after: ra.map(Duration::from_secs) }
    }

    #[test]
    fn outcomes_map_to_store_operations() {
        // (attempts before, attempt, verdict)
        let table: Vec<(u32, Attempt, Verdict)> = vec![
            (0, ans(200, None), Verdict::Delivered),
            (2, ans(204, None), Verdict::Delivered),
            (0, ans(500, None), Verdict::Retry { next_at: NOW + 5_000 }),
            (1, ans(503, None), Verdict::Retry { next_at: NOW + 60_000 }),
            (2, ans(500, None), Verdict::Dead),
            (0, ans(429, Some(30)), Verdict::Retry { next_at: NOW + 30_000 }),
            (0, ans(429, Some(99_999)), Verdict::Retry { next_at: NOW + 600_000 }),
            (0, ans(302, None), Verdict::Retry { next_at: NOW + 5_000 }),
            (0, ans(410, None), Verdict::Disabled),
            (0, Attempt::Failed("timed out".into()), Verdict::Retry { next_at: NOW + 5_000 }),
            (2, Attempt::Failed("connection failed".into()), Verdict::Dead),
            (0, Attempt::Refused("loopback".into()), Verdict::Dead),
        ];
        let mut rng = StdRng::seed_from_u64(1);
        for (before, attempt, want) in table {
            let (verdict, batch) = plan(&row(before), &attempt, &schedule(), NOW, &mut rng);
            assert_eq!(verdict, want, "{before} {attempt:?}");
            let attempts = before + 1;
            match (&verdict, batch.ops.as_slice()) {
                (Verdict::Delivered, [WriteOp::OutboxDelivered { attempts: a, at, .. }]) => {
                    assert_eq!((*a, *at), (attempts, NOW));
                }
                (Verdict::Retry { next_at }, [WriteOp::OutboxRetry { attempts: a, next_at: n, last_error, .. }]) => {
                    assert_eq!((*a, *n), (attempts, *next_at));
                    assert!(last_error.is_some());
                }
                (Verdict::Dead, [WriteOp::OutboxDead { attempts: a, last_error, .. }]) => {
                    assert_eq!(*a, attempts);
                    assert!(last_error.is_some());
                }
                (
                    Verdict::Disabled,
                    [WriteOp::OutboxRetry { last_status, .. }, WriteOp::DisableEndpoint { url, reason }],
                ) => {
                    assert_eq!((*last_status, url.as_str()), (Some(410), URL));
                    assert!(!reason.contains("token"), "the reason names the origin only: {reason}");
                }
                other => panic!("unexpected plan {other:?}"),
            }
        }
        assert_eq!(row(0).state, OutboxState::Pending);
    }

    #[test]
    fn status_and_error_texts() {
        let (_, batch) = plan(&row(0), &ans(503, None), &schedule(), NOW, &mut StdRng::seed_from_u64(0));
        match &batch.ops[0] {
            WriteOp::OutboxRetry { last_status, last_error, .. } => {
                assert_eq!(*last_status, Some(503));
                assert_eq!(last_error.as_deref(), Some("HTTP 503 Service Unavailable"));
            }
            other => panic!("{other:?}"),
        }
        let long = "x".repeat(1000);
        let (_, batch) = plan(&row(0), &Attempt::Refused(long), &schedule(), NOW, &mut StdRng::seed_from_u64(0));
        match &batch.ops[0] {
            WriteOp::OutboxDead { last_error: Some(e), .. } => assert_eq!(e.len(), MAX_ERROR_CHARS),
            other => panic!("{other:?}"),
        }
        assert_eq!(origin("https://user:pw@kb.example.com:8443/h?q=1"), "https://kb.example.com:8443");
        assert_eq!(origin("nope"), "(invalid URL)");
    }

    #[test]
    fn settings_from_config() {
        let mut c = crate::config::Config::defaults().webhook;
        assert!(matches!(WorkerSettings::from_config(&c), Err(WorkerError::NoSecret)), "the default has no secret");
        let a = WebhookSecret::generate(&mut StdRng::seed_from_u64(4)).to_whsec().expose_secret().to_owned();
        c.secret = secrecy::SecretString::from(a.clone());
        c.schedule_secs = vec![1, 2];
        c.allow_private = vec!["127.0.0.1/32".into()];
        c.attempt_timeout_ms = 250;
        let s = WorkerSettings::from_config(&c).unwrap();
        assert_eq!((s.secrets.len(), s.schedule.max_attempts(), s.allow.len()), (1, 3, 1));
        assert_eq!(s.attempt_timeout, Duration::from_millis(250));
        assert!(!format!("{s:?}").contains(&a[6..]), "Debug shows no secret");
        c.allow_private = vec!["10.0.0.1/8".into()];
        let e = WorkerSettings::from_config(&c).unwrap_err().to_string();
        assert!(e.contains("allow_private") && e.contains("10.0.0.0/8"), "{e}");
        c.allow_private.clear();
        c.schedule_secs = vec![1; 40];
        assert!(matches!(WorkerSettings::from_config(&c), Err(WorkerError::Schedule(_))));
    }

    #[test]
    fn secrets_parse_with_rotation_and_clear_errors() {
        let a = WebhookSecret::generate(&mut StdRng::seed_from_u64(3)).to_whsec().expose_secret().to_owned();
        assert_eq!(parse_secrets(&format!(" {a}  {a} ")).unwrap().len(), 2);
        assert!(matches!(parse_secrets("  "), Err(WorkerError::NoSecret)));
        let e = parse_secrets(&format!("{a} nope")).unwrap_err();
        assert!(matches!(e, WorkerError::Secret { index: 1, .. }), "{e}");
        assert!(!e.to_string().contains(&a[6..]), "{e}");
    }
}
