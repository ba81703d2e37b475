//! The Notifications API client (genesys-api.md §5): channels, subscriptions and the
//! websockets that deliver topic events, kept alive through drops, expiry and rotation.
//!
//! One [`Notifications`] handle runs a manager task that owns every channel ("slot"); the
//! handle's [`subscribe`](Notifications::subscribe)/[`unsubscribe`](Notifications::unsubscribe)
//! are commands to it, and every topic event arrives, parsed, on the [`Envelope`] receiver
//! returned by [`Notifications::start`].
//!
//! # Why it is shaped this way
//!
//! - **Connect before subscribing.** Genesys delivers only to a connected socket, so a new
//!   channel's socket is open before its first subscription; no event falls in between.
//! - **Several channels.** A channel holds at most 1,000 topics and a client 20 channels;
//!   topics fill the open channels first, then new ones. One channel of the 20 is kept free
//!   for rotation, because a 21st channel would make Genesys evict one of ours.
//! - **Dead sockets.** The server sends a heartbeat about every 30 s and answers our JSON
//!   ping (sent every heartbeat interval); nothing received for two intervals means the
//!   socket is dead. A dropped socket reconnects to the same `connectUri` with backoff (the
//!   first attempt at once) and the channel's full topic list is PUT again, which also
//!   keeps the channel alive. A connect answered 404 means the channel is gone (expired or
//!   evicted): a new channel is created, connected and given the same topics.
//! - **Rotation.** A channel lives 24 h; before that ends (`rotate_after`) a replacement is
//!   created, connected and subscribed, and only then is the old one dropped: no gap. The
//!   short overlap may deliver an event twice, so envelopes are de-duplicated by their
//!   `metadata.CorrelationId` over a bounded window.
//! - **`v2.system.socket_closing`** (maintenance) is only logged: the socket closes about a
//!   minute later, and the normal reconnect handles it.
//! - **Recording.** With `record_dir`, every topic event is appended, with `recordedAt`
//!   first, to `DIR/<conversationId>.jsonl`, and `DIR/calls.json` lists each conversation's
//!   ids (from its agent-connected snapshot): the recorded-calls format, so the emulator can
//!   load and replay a recording (`gc-assist emulator --calls DIR`).

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use serde_json::{Map, Value};
use thiserror::Error;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::{GenesysClient, GenesysError};

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Topics one channel may hold (genesys-api.md §5.2).
pub const TOPICS_PER_CHANNEL: usize = 1000;
/// Channels one user + app may hold (genesys-api.md §5.2).
pub const CHANNELS_PER_CLIENT: usize = 20;
/// Correlation ids remembered for de-duplication.
const DEDUP_WINDOW: usize = 8192;
/// Attempts to replace a lost channel before leaving it to the rotation tick.
const REPLACE_ATTEMPTS: u32 = 5;
/// How long [`Notifications::shutdown`] waits for the manager.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(5);
/// Open recording files kept at once; beyond, all are flushed and closed.
const MAX_OPEN_RECORDINGS: usize = 512;

/// What can go wrong; each message says what to fix.
#[derive(Debug, Error)]
pub enum NotificationsError {
    #[error(transparent)]
    Genesys(#[from] GenesysError),
    #[error("Genesys returned channel {channel} without a connectUri; cannot open its websocket")]
    NoConnectUri { channel: String },
    #[error("cannot open the notifications websocket of channel {channel}: {message}")]
    Connect { channel: String, message: String },
    #[error(
        "{wanted} topics do not fit in {channels} channels of {per_channel} topics (one more channel is kept \
         free for rotation); watch fewer queues or spread conversations over several OAuth clients or replicas"
    )]
    TopicLimit { wanted: usize, channels: usize, per_channel: usize },
    #[error(
        "Genesys refused the subscription to {topic}: {reason}; check the OAuth client's permissions for this topic"
    )]
    Rejected { topic: String, reason: String },
    #[error("topic name {topic:?} is not valid: {reason}")]
    BadTopic { topic: String, reason: &'static str },
    #[error("the notifications client has stopped")]
    Stopped,
    #[error("cannot write the recording {path}: {source}; check notifications.record_dir")]
    Record { path: PathBuf, source: std::io::Error },
}

/// How the client behaves; the defaults fit real Genesys.
#[derive(Debug, Clone)]
pub struct NotificationSettings {
    /// Topics per channel (≤ 1,000).
    pub topics_per_channel: usize,
    /// Channels this client may hold (≤ 20), one of them kept free for rotation.
    pub max_channels: usize,
    /// The server's heartbeat interval; also our ping interval. Two intervals without
    /// any frame mean a dead socket.
    pub heartbeat: Duration,
    /// Replace a channel this long after it was created (Genesys channels last 24 h).
    pub rotate_after: Duration,
    /// First and largest wait between reconnect attempts (the very first is immediate).
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
    /// Append every event to `DIR/<conversationId>.jsonl`.
    pub record_dir: Option<PathBuf>,
    /// Envelopes buffered for the consumer before the sockets wait.
    pub buffer: usize,
}

impl Default for NotificationSettings {
    fn default() -> Self {
        NotificationSettings {
            topics_per_channel: TOPICS_PER_CHANNEL,
            max_channels: CHANNELS_PER_CLIENT,
            heartbeat: Duration::from_secs(30),
            rotate_after: Duration::from_secs(23 * 3600),
            reconnect_min: Duration::from_millis(100),
            reconnect_max: Duration::from_secs(10),
            record_dir: None,
            buffer: 4096,
        }
    }
}

/// One topic event, as received.
#[derive(Debug, Clone)]
pub struct Envelope {
    pub topic: String,
    /// The whole envelope (`topicName`, `version`, `eventBody`, `metadata`).
    pub value: Value,
    pub received_at: Instant,
}

/// Counters, for metrics and tests.
#[derive(Debug, Default)]
pub struct NotificationStats {
    pub events: AtomicU64,
    pub duplicates: AtomicU64,
    pub heartbeats: AtomicU64,
    pub channels_created: AtomicU64,
    pub reconnects: AtomicU64,
    pub dead_sockets: AtomicU64,
    pub channels_gone: AtomicU64,
    pub rotations: AtomicU64,
    pub subscribe_calls: AtomicU64,
    pub record_errors: AtomicU64,
}

/// A snapshot of [`NotificationStats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    pub events: u64,
    pub duplicates: u64,
    pub heartbeats: u64,
    pub channels_created: u64,
    pub reconnects: u64,
    pub dead_sockets: u64,
    pub channels_gone: u64,
    pub rotations: u64,
    pub subscribe_calls: u64,
    pub record_errors: u64,
}

impl NotificationStats {
    pub fn snapshot(&self) -> StatsSnapshot {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        StatsSnapshot {
            events: l(&self.events),
            duplicates: l(&self.duplicates),
            heartbeats: l(&self.heartbeats),
            channels_created: l(&self.channels_created),
            reconnects: l(&self.reconnects),
            dead_sockets: l(&self.dead_sockets),
            channels_gone: l(&self.channels_gone),
            rotations: l(&self.rotations),
            subscribe_calls: l(&self.subscribe_calls),
            record_errors: l(&self.record_errors),
        }
    }
}

enum Command {
    Subscribe(Vec<String>, oneshot::Sender<Result<(), NotificationsError>>),
    Unsubscribe(Vec<String>, oneshot::Sender<Result<(), NotificationsError>>),
    Channels(oneshot::Sender<Vec<(String, usize)>>),
    Shutdown(oneshot::Sender<()>),
}

/// What a socket task tells the manager.
#[derive(Debug)]
enum SocketEvent {
    /// Reconnected after a drop: resubscribe the channel's topics.
    Reconnected { slot: u64, generation: u64 },
    /// The channel no longer exists (connect answered 404): replace it.
    Gone { slot: u64, generation: u64 },
}

/// The handle. Dropping it (or [`Notifications::shutdown`]) stops every socket.
#[derive(Clone)]
pub struct Notifications {
    commands: mpsc::Sender<Command>,
    stats: Arc<NotificationStats>,
}

impl std::fmt::Debug for Notifications {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notifications").field("stats", &self.stats.snapshot()).finish_non_exhaustive()
    }
}

impl Notifications {
    /// Start the manager. Nothing is created until the first subscription.
    pub fn start(client: GenesysClient, settings: NotificationSettings) -> (Notifications, mpsc::Receiver<Envelope>) {
        let (commands, command_rx) = mpsc::channel(256);
        let (out, out_rx) = mpsc::channel(settings.buffer.max(1));
        let (events, event_rx) = mpsc::unbounded_channel();
        let stats = Arc::new(NotificationStats::default());
        let recorder = settings.record_dir.clone().map(|dir| Recorder::spawn(dir, stats.clone()));
        let shared = Arc::new(Shared {
            out,
            events,
            stats: stats.clone(),
            dedup: Mutex::new(Dedup::default()),
            recorder,
            // Bounded both ways, so timer arithmetic can never overflow.
            heartbeat: settings.heartbeat.clamp(Duration::from_millis(10), Duration::from_secs(3600)),
            reconnect_min: settings.reconnect_min,
            reconnect_max: settings.reconnect_max.max(settings.reconnect_min),
        });
        let manager = Manager { client, settings, shared, slots: Vec::new(), by_topic: HashMap::new(), next_slot: 0 };
        tokio::spawn(manager.run(command_rx, event_rx));
        (Notifications { commands, stats }, out_rx)
    }

    /// Subscribe to topics (already subscribed ones are skipped).
    pub async fn subscribe(&self, topics: Vec<String>) -> Result<(), NotificationsError> {
        self.ask(|tx| Command::Subscribe(topics, tx)).await?
    }

    /// Drop topics (unknown ones are ignored).
    pub async fn unsubscribe(&self, topics: Vec<String>) -> Result<(), NotificationsError> {
        self.ask(|tx| Command::Unsubscribe(topics, tx)).await?
    }

    /// Each current channel's id and topic count.
    pub async fn channels(&self) -> Result<Vec<(String, usize)>, NotificationsError> {
        self.ask(Command::Channels).await
    }

    pub fn stats(&self) -> StatsSnapshot {
        self.stats.snapshot()
    }

    /// Stop the sockets and clear the channels' subscriptions.
    pub async fn shutdown(&self) {
        // Bounded: a manager busy retrying an unreachable Genesys must not hold up a stop.
        let _ = tokio::time::timeout(SHUTDOWN_WAIT, self.ask(Command::Shutdown)).await;
    }

    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Result<T, NotificationsError> {
        let (tx, rx) = oneshot::channel();
        self.commands.send(make(tx)).await.map_err(|_| NotificationsError::Stopped)?;
        rx.await.map_err(|_| NotificationsError::Stopped)
    }
}

/// What the socket tasks share with the manager.
struct Shared {
    out: mpsc::Sender<Envelope>,
    events: mpsc::UnboundedSender<SocketEvent>,
    stats: Arc<NotificationStats>,
    dedup: Mutex<Dedup>,
    recorder: Option<Recorder>,
    heartbeat: Duration,
    reconnect_min: Duration,
    reconnect_max: Duration,
}

/// Recently seen correlation ids, oldest first.
#[derive(Default)]
struct Dedup {
    seen: HashSet<String>,
    order: VecDeque<String>,
}

impl Dedup {
    /// True the first time `id` is seen within the window.
    fn first(&mut self, id: &str) -> bool {
        if self.seen.contains(id) {
            return false;
        }
        if self.order.len() >= DEDUP_WINDOW {
            if let Some(old) = self.order.pop_front() {
                self.seen.remove(&old);
            }
        }
        self.seen.insert(id.to_string());
        self.order.push_back(id.to_string());
        true
    }
}

/// One channel and its socket task.
struct Slot {
    key: u64,
    /// Bumped each time the channel is replaced, so late events of the old one are ignored.
    generation: u64,
    channel_id: String,
    created: Instant,
    topics: Vec<String>,
    task: JoinHandle<()>,
}

struct Manager {
    client: GenesysClient,
    settings: NotificationSettings,
    shared: Arc<Shared>,
    slots: Vec<Slot>,
    /// topic → slot key.
    by_topic: HashMap<String, u64>,
    next_slot: u64,
}

impl Manager {
    async fn run(mut self, mut commands: mpsc::Receiver<Command>, mut events: mpsc::UnboundedReceiver<SocketEvent>) {
        let every = (self.settings.rotate_after / 8).clamp(Duration::from_millis(20), Duration::from_secs(60));
        let mut rotate = tokio::time::interval(every);
        rotate.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                cmd = commands.recv() => match cmd {
                    None => break,
                    Some(Command::Subscribe(topics, reply)) => { let _ = reply.send(self.subscribe(topics).await); }
                    Some(Command::Unsubscribe(topics, reply)) => { let _ = reply.send(self.unsubscribe(topics).await); }
                    Some(Command::Channels(reply)) => {
                        let _ = reply.send(self.slots.iter().map(|s| (s.channel_id.clone(), s.topics.len())).collect());
                    }
                    Some(Command::Shutdown(reply)) => {
                        self.close().await;
                        let _ = reply.send(());
                        return;
                    }
                },
                Some(ev) = events.recv() => self.on_socket_event(ev).await,
                _ = rotate.tick() => self.rotate_due().await,
            }
        }
        for s in &self.slots {
            s.task.abort();
        }
    }

    fn usable_channels(&self) -> usize {
        self.settings.max_channels.clamp(2, CHANNELS_PER_CLIENT) - 1
    }

    fn per_channel(&self) -> usize {
        self.settings.topics_per_channel.clamp(1, TOPICS_PER_CHANNEL)
    }

    async fn subscribe(&mut self, topics: Vec<String>) -> Result<(), NotificationsError> {
        let mut fresh = Vec::new();
        let mut seen = HashSet::new();
        for t in topics {
            check_topic(&t)?;
            if !self.by_topic.contains_key(&t) && seen.insert(t.clone()) {
                fresh.push(t);
            }
        }
        if fresh.is_empty() {
            return Ok(());
        }
        let per = self.per_channel();
        let room: usize = self.slots.iter().map(|s| per.saturating_sub(s.topics.len())).sum::<usize>()
            + (self.usable_channels().saturating_sub(self.slots.len())) * per;
        if fresh.len() > room {
            return Err(NotificationsError::TopicLimit {
                wanted: self.by_topic.len() + fresh.len(),
                channels: self.usable_channels(),
                per_channel: per,
            });
        }
        let mut rest = fresh.as_slice();
        let mut i = 0;
        while !rest.is_empty() {
            if i == self.slots.len() {
                let slot = self.open_slot(Vec::new()).await?;
                self.slots.push(slot);
            }
            let free = per.saturating_sub(self.slots[i].topics.len());
            if free > 0 {
                let take = free.min(rest.len());
                let (chunk, tail) = rest.split_at(take);
                self.shared.stats.subscribe_calls.fetch_add(1, Ordering::Relaxed);
                let listing = match self.client.add_subscriptions(&self.slots[i].channel_id, chunk).await {
                    // The channel went away (expired, evicted) before its socket told us:
                    // replace it now, then add to the new one.
                    Err(e) if e.is_not_found() => {
                        let key = self.slots[i].key;
                        self.replace(key).await;
                        self.shared.stats.subscribe_calls.fetch_add(1, Ordering::Relaxed);
                        self.client.add_subscriptions(&self.slots[i].channel_id, chunk).await?
                    }
                    other => other?,
                };
                if let Some(bad) = listing.iter().find(|t| t.is_rejected()) {
                    return Err(NotificationsError::Rejected {
                        topic: bad.id.clone(),
                        reason: bad.rejection_reason.clone().unwrap_or_else(|| "no reason given".into()),
                    });
                }
                let key = self.slots[i].key;
                for t in chunk {
                    self.by_topic.insert(t.clone(), key);
                }
                self.slots[i].topics.extend_from_slice(chunk);
                rest = tail;
            }
            i += 1;
        }
        Ok(())
    }

    async fn unsubscribe(&mut self, topics: Vec<String>) -> Result<(), NotificationsError> {
        let mut touched = HashSet::new();
        for t in &topics {
            if let Some(key) = self.by_topic.remove(t) {
                touched.insert(key);
            }
        }
        let gone: HashSet<&String> = topics.iter().collect();
        for slot in self.slots.iter_mut().filter(|s| touched.contains(&s.key)) {
            slot.topics.retain(|t| !gone.contains(t));
            self.shared.stats.subscribe_calls.fetch_add(1, Ordering::Relaxed);
            // There is no per-topic delete: PUT the channel's remaining set. A channel that
            // is gone is replaced (with the remaining topics) when its socket reports it.
            match self.client.replace_subscriptions(&slot.channel_id, &slot.topics).await {
                Err(e) if !e.is_not_found() => return Err(e.into()),
                _ => {}
            }
        }
        Ok(())
    }

    /// Create a channel, connect its socket, then (for a replacement) PUT `topics` on it.
    async fn open_slot(&mut self, topics: Vec<String>) -> Result<Slot, NotificationsError> {
        self.next_slot += 1;
        let key = self.next_slot;
        let (channel_id, task) = self.open_channel(key, 0, &topics).await?;
        Ok(Slot { key, generation: 0, channel_id, created: Instant::now(), topics, task })
    }

    async fn open_channel(
        &self,
        key: u64,
        generation: u64,
        topics: &[String],
    ) -> Result<(String, JoinHandle<()>), NotificationsError> {
        let ch = self.client.create_channel().await?;
        self.shared.stats.channels_created.fetch_add(1, Ordering::Relaxed);
        let uri = ch.connect_uri.clone().ok_or_else(|| NotificationsError::NoConnectUri { channel: ch.id.clone() })?;
        let socket = connect(&uri).await.map_err(|e| NotificationsError::Connect {
            channel: ch.id.clone(),
            message: match e {
                ConnectError::Gone => "the channel was not found".into(),
                ConnectError::Other(m) => m,
            },
        })?;
        let task = tokio::spawn(run_socket(self.shared.clone(), key, generation, uri, socket));
        if !topics.is_empty() {
            self.shared.stats.subscribe_calls.fetch_add(1, Ordering::Relaxed);
            if let Err(e) = self.client.replace_subscriptions(&ch.id, topics).await {
                task.abort();
                return Err(e.into());
            }
        }
        Ok((ch.id, task))
    }

    async fn on_socket_event(&mut self, ev: SocketEvent) {
        match ev {
            SocketEvent::Reconnected { slot, generation } => {
                let Some(s) = self.slots.iter().find(|s| s.key == slot && s.generation == generation) else { return };
                self.shared.stats.subscribe_calls.fetch_add(1, Ordering::Relaxed);
                match self.client.replace_subscriptions(&s.channel_id, &s.topics).await {
                    Ok(_) => {}
                    Err(e) if e.is_not_found() => self.replace(slot).await,
                    Err(e) => {
                        tracing::warn!(channel = %s.channel_id, error = %e, "cannot resubscribe after a reconnect")
                    }
                }
            }
            SocketEvent::Gone { slot, generation } => {
                if self.slots.iter().any(|s| s.key == slot && s.generation == generation) {
                    self.shared.stats.channels_gone.fetch_add(1, Ordering::Relaxed);
                    self.replace(slot).await;
                }
            }
        }
    }

    /// Give a slot a new channel with the same topics, retried with backoff a few times;
    /// if Genesys stays unreachable the slot is marked due for rotation, so the rotation
    /// tick keeps trying without blocking other commands.
    async fn replace(&mut self, key: u64) {
        let mut wait = self.settings.reconnect_min;
        for attempt in 1.. {
            let Some(idx) = self.slots.iter().position(|s| s.key == key) else { return };
            let generation = self.slots[idx].generation + 1;
            let topics = self.slots[idx].topics.clone();
            match self.open_channel(key, generation, &topics).await {
                Ok((channel_id, task)) => {
                    let s = &mut self.slots[idx];
                    let old = std::mem::replace(&mut s.task, task);
                    old.abort();
                    tracing::info!(old = %s.channel_id, new = %channel_id, topics = topics.len(), "notification channel replaced");
                    s.channel_id = channel_id;
                    s.generation = generation;
                    s.created = Instant::now();
                    return;
                }
                Err(e) if attempt >= REPLACE_ATTEMPTS => {
                    tracing::error!(error = %e, "cannot replace a notification channel; retrying at the next rotation check");
                    let due = Instant::now().checked_sub(self.settings.rotate_after).unwrap_or_else(Instant::now);
                    if let Some(s) = self.slots.iter_mut().find(|s| s.key == key) {
                        s.created = due;
                    }
                    return;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot replace a notification channel; retrying");
                    tokio::time::sleep(wait).await;
                    wait = wait.saturating_mul(2).min(self.settings.reconnect_max);
                }
            }
        }
    }

    /// Rotate channels older than `rotate_after`: the new one is subscribed before the old
    /// one is dropped.
    async fn rotate_due(&mut self) {
        let due: Vec<u64> =
            self.slots.iter().filter(|s| s.created.elapsed() >= self.settings.rotate_after).map(|s| s.key).collect();
        for key in due {
            let Some(idx) = self.slots.iter().position(|s| s.key == key) else { continue };
            let generation = self.slots[idx].generation + 1;
            let topics = self.slots[idx].topics.clone();
            match self.open_channel(key, generation, &topics).await {
                Ok((channel_id, task)) => {
                    let s = &mut self.slots[idx];
                    let old_id = std::mem::replace(&mut s.channel_id, channel_id);
                    let old_task = std::mem::replace(&mut s.task, task);
                    s.generation = generation;
                    s.created = Instant::now();
                    self.shared.stats.rotations.fetch_add(1, Ordering::Relaxed);
                    // The old socket keeps reading for a moment so events already on their
                    // way arrive; duplicates from the overlap are dropped by correlation id.
                    let drain = self.settings.heartbeat.min(Duration::from_secs(2));
                    let client = self.client.clone();
                    let old = old_id.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(drain).await;
                        old_task.abort();
                        if let Err(e) = client.delete_subscriptions(&old).await {
                            tracing::debug!(channel = %old, error = %e, "cannot clear a rotated-out channel");
                        }
                    });
                    tracing::info!(old = %old_id, new = %self.slots[idx].channel_id, "notification channel rotated");
                }
                Err(e) => tracing::warn!(error = %e, "cannot rotate a notification channel; will retry"),
            }
        }
    }

    async fn close(&mut self) {
        for s in self.slots.drain(..) {
            s.task.abort();
            if let Err(e) = self.client.delete_subscriptions(&s.channel_id).await {
                tracing::debug!(channel = %s.channel_id, error = %e, "cannot clear a channel at shutdown");
            }
        }
        self.by_topic.clear();
    }
}

/// A topic name is `v2.` then non-empty dot-separated segments (genesys-api.md §6).
fn check_topic(topic: &str) -> Result<(), NotificationsError> {
    let bad = |reason| Err(NotificationsError::BadTopic { topic: topic.to_string(), reason });
    let Some(rest) = topic.strip_prefix("v2.") else { return bad("topic names start with `v2.`") };
    if rest.split('.').any(str::is_empty) || !rest.contains('.') {
        return bad("a topic has at least two non-empty segments after `v2.`");
    }
    Ok(())
}

enum ConnectError {
    /// 404: the channel no longer exists.
    Gone,
    Other(String),
}

async fn connect(uri: &str) -> Result<Socket, ConnectError> {
    use tokio_tungstenite::tungstenite::Error as WsError;
    // disable_nagle: pings and acknowledgements are small frames (see the emulator's note).
    match tokio_tungstenite::connect_async_with_config(uri, None, true).await {
        Ok((socket, _)) => Ok(socket),
        Err(WsError::Http(resp)) if resp.status().as_u16() == 404 => Err(ConnectError::Gone),
        Err(WsError::Http(resp)) => Err(ConnectError::Other(format!("HTTP {}", resp.status()))),
        Err(e) => Err(ConnectError::Other(e.to_string())),
    }
}

const PING: &str = r#"{"message":"ping"}"#;

/// Read one channel's socket for as long as the channel lives, reconnecting after drops.
async fn run_socket(shared: Arc<Shared>, slot: u64, generation: u64, uri: String, mut socket: Socket) {
    loop {
        read_until_dead(&shared, &mut socket).await;
        let _ = socket.close(None).await;
        shared.stats.dead_sockets.fetch_add(1, Ordering::Relaxed);
        // Reconnect: the first attempt at once (the server keeps nothing for long), then backoff.
        let mut wait = Duration::ZERO;
        socket = loop {
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
            match connect(&uri).await {
                Ok(s) => break s,
                Err(ConnectError::Gone) => {
                    let _ = shared.events.send(SocketEvent::Gone { slot, generation });
                    return;
                }
                Err(ConnectError::Other(e)) => {
                    tracing::debug!(error = %e, "notifications websocket reconnect failed");
                    wait = if wait.is_zero() {
                        shared.reconnect_min
                    } else {
                        wait.saturating_mul(2).min(shared.reconnect_max)
                    };
                }
            }
        };
        shared.stats.reconnects.fetch_add(1, Ordering::Relaxed);
        if shared.events.send(SocketEvent::Reconnected { slot, generation }).is_err() {
            return;
        }
    }
}

/// Forward events until the socket closes, errs, or is silent for two heartbeat intervals.
async fn read_until_dead(shared: &Shared, socket: &mut Socket) {
    let silent_limit = shared.heartbeat.saturating_mul(2);
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + shared.heartbeat, shared.heartbeat);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_frame = tokio::time::Instant::now();
    loop {
        tokio::select! {
            frame = socket.next() => {
                last_frame = tokio::time::Instant::now();
                match frame {
                    Some(Ok(Message::Text(text))) => {
                        if !on_text(shared, text.as_str()).await {
                            return;
                        }
                    }
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                    Some(Ok(_)) => {}
                }
            }
            _ = ping.tick() => {
                if last_frame.elapsed() > silent_limit {
                    tracing::warn!("no heartbeat for two intervals: the notifications socket is dead; reconnecting");
                    return;
                }
                if socket.send(Message::Text(PING.into())).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Handle one text frame; false if the consumer is gone.
async fn on_text(shared: &Shared, text: &str) -> bool {
    let Ok(value) = serde_json::from_str::<Value>(text) else {
        tracing::warn!(bytes = text.len(), "a notification that is not JSON was skipped");
        return true;
    };
    let topic = value.get("topicName").and_then(Value::as_str).unwrap_or("").to_string();
    if topic == "channel.metadata" {
        shared.stats.heartbeats.fetch_add(1, Ordering::Relaxed);
        return true;
    }
    if topic.starts_with("v2.system.") {
        let message = value.pointer("/eventBody/message").and_then(Value::as_str).unwrap_or("");
        tracing::info!(topic = %topic, message, "notifications system message");
        return true;
    }
    if let Some(id) = value.pointer("/metadata/CorrelationId").and_then(Value::as_str) {
        if !shared.dedup.lock().unwrap_or_else(|p| p.into_inner()).first(id) {
            shared.stats.duplicates.fetch_add(1, Ordering::Relaxed);
            return true;
        }
    }
    shared.stats.events.fetch_add(1, Ordering::Relaxed);
    if let Some(rec) = &shared.recorder {
        rec.record(&topic, &value);
    }
    shared.out.send(Envelope { topic, value, received_at: Instant::now() }).await.is_ok()
}

/// One line to record, and for an agent-connected snapshot the call's ids for `calls.json`.
type RecordItem = (String, String, Option<Value>);

/// Appends events to `DIR/<conversationId>.jsonl` on a blocking task, and keeps
/// `DIR/calls.json` listing each recorded conversation's ids (the recorded-calls index), so
/// `gc-assist emulator --calls DIR` can replay a recording.
struct Recorder {
    tx: mpsc::UnboundedSender<RecordItem>,
}

impl Recorder {
    fn spawn(dir: PathBuf, stats: Arc<NotificationStats>) -> Recorder {
        let (tx, mut rx) = mpsc::unbounded_channel::<RecordItem>();
        tokio::task::spawn_blocking(move || {
            let mut files: HashMap<String, std::io::BufWriter<std::fs::File>> = HashMap::new();
            let mut index: Vec<Value> = Vec::new();
            let fail = |path: &Path, e: std::io::Error| {
                stats.record_errors.fetch_add(1, Ordering::Relaxed);
                log_record_error(path, e);
            };
            if let Err(e) = std::fs::create_dir_all(&dir) {
                tracing::error!(dir = %dir.display(), error = %e, "cannot create the recording folder; nothing is recorded");
                return;
            }
            while let Some(first) = rx.blocking_recv() {
                let mut batch = vec![first];
                while let Ok(more) = rx.try_recv() {
                    batch.push(more);
                }
                let mut index_changed = false;
                for (conversation, line, call) in batch {
                    if let Some(call) = call {
                        if !index.iter().any(|c| c["conversationId"] == call["conversationId"]) {
                            index.push(call);
                            index_changed = true;
                        }
                    }
                    if files.len() >= MAX_OPEN_RECORDINGS && !files.contains_key(&conversation) {
                        for (_, mut f) in files.drain() {
                            let _ = f.flush();
                        }
                    }
                    let path = dir.join(format!("{conversation}.jsonl"));
                    let file = match files.entry(conversation) {
                        std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
                        std::collections::hash_map::Entry::Vacant(v) => {
                            match std::fs::OpenOptions::new().create(true).append(true).open(&path) {
                                Ok(f) => v.insert(std::io::BufWriter::new(f)),
                                Err(e) => {
                                    fail(&path, e);
                                    continue;
                                }
                            }
                        }
                    };
                    if let Err(e) = writeln!(file, "{line}") {
                        fail(&path, e);
                    }
                }
                for f in files.values_mut() {
                    let _ = f.flush();
                }
                if index_changed {
                    // Written whole, then renamed: a reader never sees half a file.
                    let path = dir.join("calls.json");
                    let tmp = dir.join("calls.json.tmp");
                    let text = serde_json::json!({"calls": index}).to_string();
                    if let Err(e) = std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, &path)) {
                        fail(&path, e);
                    }
                }
            }
        });
        Recorder { tx }
    }

    fn record(&self, topic: &str, envelope: &Value) {
        let Some(conversation) = conversation_of(topic, envelope) else { return };
        let call = call_entry(topic, &conversation, envelope);
        let _ = self.tx.send((conversation, recorded_line(envelope, chrono::Utc::now()), call));
    }
}

fn log_record_error(path: &Path, e: std::io::Error) {
    let err = NotificationsError::Record { path: path.to_path_buf(), source: e };
    tracing::warn!(error = %err, "recording failed");
}

/// The conversation an event belongs to: from the topic, or a snapshot's `eventBody.id`.
/// Only safe file names (UUID-like) are used.
fn conversation_of(topic: &str, envelope: &Value) -> Option<String> {
    let parts: Vec<&str> = topic.split('.').collect();
    let id = match parts.as_slice() {
        ["v2", "conversations", id, ..] => (*id).to_string(),
        ["v2", "speechandtextanalytics", "conversation", id, ..] => (*id).to_string(),
        _ => envelope.pointer("/eventBody/id").and_then(Value::as_str)?.to_string(),
    };
    (!id.is_empty() && id.len() <= 64 && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')).then_some(id)
}

/// The `calls.json` entry of a conversation, from a queue snapshot whose agent is connected
/// (the ids the emulator needs to load the recording), else `None`.
fn call_entry(topic: &str, conversation: &str, envelope: &Value) -> Option<Value> {
    let queue_id = match topic.split('.').collect::<Vec<_>>().as_slice() {
        ["v2", "routing", "queues", q, "conversations"] => (*q).to_string(),
        _ => return None,
    };
    let participants = envelope.pointer("/eventBody/participants")?.as_array()?;
    let agent = participants.iter().find(|p| {
        p.get("purpose").and_then(Value::as_str) == Some("agent")
            && p.get("connectedTime").is_some_and(Value::is_string)
            && p.pointer("/calls/0/state").and_then(Value::as_str) == Some("connected")
    })?;
    let customer = participants.iter().find(|p| p.get("purpose").and_then(Value::as_str) == Some("customer"))?;
    let s = |v: &Value, ptr: &str| v.pointer(ptr).and_then(Value::as_str).map(str::to_string);
    Some(serde_json::json!({
        "conversationId": conversation,
        "file": format!("{conversation}.jsonl"),
        "queueId": queue_id,
        "agentUserId": s(agent, "/userId")?,
        "agentParticipantId": s(agent, "/id")?,
        "agentCommunicationId": s(agent, "/calls/0/id")?,
        "customerParticipantId": s(customer, "/id")?,
        "scenario": "recorded",
    }))
}

/// `{"recordedAt": ..., <the envelope's fields>}`: the recorded-calls line format.
fn recorded_line(envelope: &Value, at: chrono::DateTime<chrono::Utc>) -> String {
    let mut line = Map::new();
    line.insert("recordedAt".into(), Value::String(at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)));
    if let Some(obj) = envelope.as_object() {
        for (k, v) in obj {
            if k != "recordedAt" {
                line.insert(k.clone(), v.clone());
            }
        }
    }
    Value::Object(line).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dedup_forgets_beyond_its_window() {
        let mut d = Dedup::default();
        assert!(d.first("a"));
        assert!(!d.first("a"));
        for i in 0..DEDUP_WINDOW {
            d.first(&i.to_string());
        }
        assert!(d.first("a"), "evicted after the window");
    }

    #[test]
    fn recording_lines_put_recorded_at_first() {
        let env: Value =
            serde_json::from_str(r#"{"topicName":"v2.conversations.abc-1.transcription","version":"2","eventBody":{"x":1},"metadata":{"CorrelationId":"c"}}"#)
                .expect("json");
        let at = chrono::DateTime::parse_from_rfc3339("2025-03-10T12:00:00.250Z").expect("time").to_utc();
        let line = recorded_line(&env, at);
        assert!(
            line.starts_with(
                r#"{"recordedAt":"2025-03-10T12:00:00.250Z","topicName":"v2.conversations.abc-1.transcription""#
            ),
            "{line}"
        );
        assert_eq!(conversation_of("v2.conversations.abc-1.transcription", &env).as_deref(), Some("abc-1"));
        assert_eq!(
            conversation_of("v2.speechandtextanalytics.conversation.abc-2.sentiment", &env).as_deref(),
            Some("abc-2")
        );
        let snap: Value = serde_json::json!({"eventBody": {"id": "conv-3"}});
        assert_eq!(conversation_of("v2.routing.queues.q.conversations", &snap).as_deref(), Some("conv-3"));
        let evil: Value = serde_json::json!({"eventBody": {"id": "../../etc"}});
        assert_eq!(conversation_of("v2.routing.queues.q.conversations", &evil), None);
    }

    #[test]
    fn topics_are_checked() {
        assert!(check_topic("v2.conversations.x.transcription").is_ok());
        for bad in ["", "x.y", "v2.", "v2.a", "v2.a..b"] {
            assert!(check_topic(bad).is_err(), "{bad}");
        }
    }
}
