//! A small real webhook receiver (axum on a local port) for tests and the demo: it verifies
//! Standard Webhooks signatures, deduplicates deliveries by `webhook-id`, and answers each
//! verified request from a script (status, delay, `Retry-After`, `Location`).
//!
//! Requests whose signature does not verify are answered 401 and kept apart in
//! [`Receiver::rejected`]; they do not consume the script. Every request, verified or not,
//! is counted in [`Receiver::requests`], so a test can prove a destination was never hit.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use thiserror::Error;
use tokio::sync::{oneshot, Notify};
use tokio::time::Instant;

use super::signing::{verify, SignatureHeaders, WebhookSecret, DEFAULT_TOLERANCE};

/// Why the receiver could not start.
#[derive(Debug, Error)]
pub enum ReceiverError {
    #[error("the webhook receiver cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("the webhook receiver needs at least one whsec_ secret to verify with")]
    NoSecrets,
}

/// How to answer one verified request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    /// Wait this long before answering (to provoke the sender's timeout).
    pub delay: Duration,
    pub retry_after: Option<String>,
    pub location: Option<String>,
}

impl Reply {
    pub fn status(status: u16) -> Reply {
        Reply { status, delay: Duration::ZERO, retry_after: None, location: None }
    }

    pub fn delayed(mut self, delay: Duration) -> Reply {
        self.delay = delay;
        self
    }

    pub fn retry_after(mut self, value: impl Into<String>) -> Reply {
        self.retry_after = Some(value.into());
        self
    }

    pub fn location(mut self, value: impl Into<String>) -> Reply {
        self.location = Some(value.into());
        self
    }
}

/// What the receiver does.
#[derive(Debug, Clone)]
pub struct ReceiverConfig {
    pub secrets: Vec<WebhookSecret>,
    /// Answers to verified requests, in order; once used up, `then` answers.
    pub script: Vec<Reply>,
    pub then: Reply,
    /// Where to listen; port 0 picks a free one.
    pub bind: SocketAddr,
}

impl ReceiverConfig {
    /// Answers 200 to everything, on a free local port.
    pub fn new(secrets: Vec<WebhookSecret>) -> ReceiverConfig {
        ReceiverConfig {
            secrets,
            script: Vec::new(),
            then: Reply::status(200),
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
        }
    }

    pub fn script(mut self, script: Vec<Reply>) -> ReceiverConfig {
        self.script = script;
        self
    }
}

/// One message as received, deduplicated by `webhook-id`. Attempts are recorded on arrival,
/// before any scripted delay, so an attempt the sender gave up on still counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub id: String,
    pub path: String,
    pub body: Bytes,
    /// `eventType` of the JSON body, when it has one.
    pub event_type: Option<String>,
    /// `content-type` and `user-agent` of the first attempt.
    pub content_type: Option<String>,
    pub user_agent: Option<String>,
    /// Verified requests carrying this id.
    pub attempts: u32,
    /// When each attempt arrived.
    pub arrivals: Vec<Instant>,
    /// The status answered to each attempt.
    pub answered: Vec<u16>,
}

/// A request refused for its signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    pub id: Option<String>,
    pub path: String,
    pub reason: String,
}

#[derive(Debug, Default)]
struct Log {
    requests: u64,
    /// Ids in order of first arrival.
    order: Vec<String>,
    deliveries: HashMap<String, Delivery>,
    rejected: Vec<Rejected>,
    script: VecDeque<Reply>,
}

struct Shared {
    secrets: Vec<WebhookSecret>,
    then: Reply,
    log: Mutex<Log>,
    changed: Notify,
}

impl Shared {
    fn log(&self) -> std::sync::MutexGuard<'_, Log> {
        self.log.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A running receiver; stops when dropped.
pub struct Receiver {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    pub async fn spawn(config: ReceiverConfig) -> Result<Receiver, ReceiverError> {
        if config.secrets.is_empty() {
            return Err(ReceiverError::NoSecrets);
        }
        let listener = tokio::net::TcpListener::bind(config.bind)
            .await
            .map_err(|source| ReceiverError::Bind { addr: config.bind, source })?;
        let addr = listener.local_addr().map_err(|source| ReceiverError::Bind { addr: config.bind, source })?;
        let shared = Arc::new(Shared {
            secrets: config.secrets,
            then: config.then,
            log: Mutex::new(Log { script: config.script.into(), ..Log::default() }),
            changed: Notify::new(),
        });
        let app = Router::new().fallback(handle).with_state(shared.clone());
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let served = axum::serve(listener, app).with_graceful_shutdown(async {
                let _ = stopped.await;
            });
            if let Err(e) = served.await {
                tracing::warn!(error = %e, "webhook receiver stopped with an error");
            }
        });
        Ok(Receiver { addr, shared, stop: Some(stop), task })
    }

    /// `http://127.0.0.1:<port>/hook`: the URL to deliver to.
    pub fn url(&self) -> String {
        self.url_for("/hook")
    }

    /// The URL of another path on this receiver.
    pub fn url_for(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Verified messages, one per `webhook-id`, in order of first arrival.
    pub fn deliveries(&self) -> Vec<Delivery> {
        let log = self.shared.log();
        log.order.iter().filter_map(|id| log.deliveries.get(id).cloned()).collect()
    }

    /// Requests refused for their signature.
    pub fn rejected(&self) -> Vec<Rejected> {
        self.shared.log().rejected.clone()
    }

    /// Every request received, on any path, verified or not.
    pub fn requests(&self) -> u64 {
        self.shared.log().requests
    }

    /// Waits until `done` holds for the deliveries, up to `timeout`; answers whether it did.
    pub async fn wait_for(&self, timeout: Duration, done: impl Fn(&[Delivery]) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let changed = self.shared.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if done(&self.deliveries()) {
                return true;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return done(&self.deliveries());
            }
        }
    }

    /// Stops listening and waits for the server to finish.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.task).await;
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_owned();
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("");
    let id = header("webhook-id").trim().to_owned();
    let now = chrono::Utc::now().timestamp();
    let checked = if method == Method::POST {
        let sig = SignatureHeaders {
            id: &id,
            timestamp: header("webhook-timestamp"),
            signature: header("webhook-signature"),
        };
        verify(&shared.secrets, &sig, &body, now, DEFAULT_TOLERANCE).map_err(|e| e.to_string())
    } else {
        Err(format!("{method} is not a webhook delivery; use POST"))
    };
    let reply = {
        let mut log = shared.log();
        log.requests += 1;
        match checked {
            Err(reason) => {
                log.rejected.push(Rejected { id: Some(id).filter(|i| !i.is_empty()), path, reason: reason.clone() });
                drop(log);
                shared.changed.notify_waiters();
                return (StatusCode::UNAUTHORIZED, reason).into_response();
            }
            Ok(()) => {
                let reply = log.script.pop_front().unwrap_or_else(|| shared.then.clone());
                let event_type = serde_json::from_slice::<serde_json::Value>(&body)
                    .ok()
                    .and_then(|v| v.get("eventType").and_then(|e| e.as_str()).map(str::to_owned));
                if !log.deliveries.contains_key(&id) {
                    log.order.push(id.clone());
                }
                let d = log.deliveries.entry(id.clone()).or_insert_with(|| Delivery {
                    id: id.clone(),
                    path,
                    body: body.clone(),
                    event_type,
                    content_type: headers.get("content-type").and_then(|v| v.to_str().ok()).map(str::to_owned),
                    user_agent: headers.get("user-agent").and_then(|v| v.to_str().ok()).map(str::to_owned),
                    attempts: 0,
                    arrivals: Vec::new(),
                    answered: Vec::new(),
                });
                d.attempts += 1;
                d.arrivals.push(Instant::now());
                d.answered.push(reply.status);
                reply
            }
        }
    };
    shared.changed.notify_waiters();
    if !reply.delay.is_zero() {
        tokio::time::sleep(reply.delay).await;
    }
    let status = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut resp = status.into_response();
    for (name, value) in [("retry-after", &reply.retry_after), ("location", &reply.location)] {
        if let Some(v) = value.as_deref().and_then(|v| HeaderValue::from_str(v).ok()) {
            resp.headers_mut().insert(name, v);
        }
    }
    resp
}
