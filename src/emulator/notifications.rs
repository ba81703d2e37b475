//! The Notifications API (genesys-api.md §5): channels, subscriptions, and the websocket
//! at each channel's `connectUri`, plus [`publish`], which delivers a topic event to every
//! channel subscribed to it.
//!
//! Each channel owns at most one socket, reached through an unbounded sender, and a
//! topic → channels index makes delivery a lookup: that is all a replay of recorded calls
//! needs ([`publish_raw`] sends a recorded line as is).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State as AxState};
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use chrono::{DateTime, Utc};
use rand::Rng;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use super::auth::{Caller, Principal};
use super::error::ApiError;
use super::gateway::JsonBody;
use super::state::iso;
use super::state::{lock, State};

/// Channels one user or OAuth client may hold; creating another evicts one.
pub const MAX_CHANNELS: usize = 20;
/// Topics one channel may subscribe to.
pub const MAX_TOPICS: usize = 1000;
/// A channel lives this long after creation or its last (re)subscription.
pub const CHANNEL_LIFETIME_HOURS: i64 = 24;
/// How long a channel whose socket dropped keeps its events for a reconnect (an emulator
/// choice, not a Genesys fact: see [`publish_raw`]).
pub const RECONNECT_GRACE: Duration = Duration::from_secs(10);
/// Events one disconnected channel holds during [`RECONNECT_GRACE`]; older ones are dropped first.
pub const RECONNECT_BUFFER: usize = 10_000;

/// What a socket task is told to do.
#[derive(Debug)]
pub enum Outbound {
    /// Send this text frame.
    Text(String),
    /// Send a close frame and stop.
    Close(u16, &'static str),
    /// Stop without a closing handshake (a dropped connection).
    Drop,
    /// Keep the connection open but send nothing more, not even heartbeats or pongs (a
    /// half-open connection): the client must notice the silence.
    Mute,
}

#[derive(Debug)]
struct Socket {
    id: u64,
    tx: mpsc::UnboundedSender<Outbound>,
}

#[derive(Debug)]
struct Channel {
    id: String,
    owner: Principal,
    /// SHA-256 of the creating token (for `includechannels=token`; never the token itself).
    token_hash: String,
    expires: DateTime<Utc>,
    last_used: Instant,
    topics: Vec<String>,
    socket: Option<Socket>,
    /// When the last socket went away; while within [`RECONNECT_GRACE`], events queue in `pending`.
    dropped_at: Option<Instant>,
    pending: std::collections::VecDeque<String>,
}

/// Every channel and the topic index.
#[derive(Debug, Default)]
pub struct Notifications {
    channels: HashMap<String, Channel>,
    by_topic: HashMap<String, HashSet<String>>,
    next_socket: u64,
}

impl Notifications {
    fn remove_channel(&mut self, id: &str) -> Option<Channel> {
        let ch = self.channels.remove(id)?;
        for t in &ch.topics {
            self.unindex(t, id);
        }
        Some(ch)
    }

    fn unindex(&mut self, topic: &str, channel: &str) {
        if let Some(set) = self.by_topic.get_mut(topic) {
            set.remove(channel);
            if set.is_empty() {
                self.by_topic.remove(topic);
            }
        }
    }

    /// Drop expired channels (closing their sockets).
    fn sweep(&mut self, now: DateTime<Utc>) {
        let expired: Vec<String> = self.channels.values().filter(|c| c.expires <= now).map(|c| c.id.clone()).collect();
        for id in expired {
            if let Some(Channel { socket: Some(s), .. }) = self.remove_channel(&id) {
                let _ = s.tx.send(Outbound::Close(1000, "channel expired"));
            }
        }
    }

    /// A live channel owned by `owner`.
    fn owned_mut(&mut self, id: &str, owner: &Principal) -> Result<&mut Channel, ApiError> {
        self.sweep(Utc::now());
        match self.channels.get_mut(id) {
            Some(c) if &c.owner == owner => Ok(c),
            _ => Err(ApiError::not_found(format!("Channel {id} was not found."))),
        }
    }

    fn set_topics(&mut self, id: &str, topics: Vec<String>) {
        let Some(ch) = self.channels.get_mut(id) else { return };
        let old = std::mem::replace(&mut ch.topics, topics.clone());
        for t in old {
            self.unindex(&t, id);
        }
        for t in topics {
            self.by_topic.entry(t).or_default().insert(id.to_string());
        }
    }
}

fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

fn new_channel_id() -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::thread_rng();
    let tail: String = (0..26).map(|_| char::from(ALPHABET[rng.gen_range(0..ALPHABET.len())])).collect();
    format!("streaming-0-{tail}")
}

/// `ws://{host}/channels/{id}`, with the host the client used to reach us.
fn connect_uri(headers: &HeaderMap, uri: &Uri, id: &str) -> String {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| !h.is_empty() && h.chars().all(|c| c.is_ascii_alphanumeric() || ".:-[]".contains(c)))
        .map(str::to_string)
        .or_else(|| uri.authority().map(|a| a.to_string()))
        .unwrap_or_else(|| "127.0.0.1".to_string());
    format!("ws://{host}/channels/{id}")
}

fn channel_json(ch: &Channel, headers: &HeaderMap, uri: &Uri) -> Value {
    json!({"connectUri": connect_uri(headers, uri, &ch.id), "id": ch.id, "expires": iso(ch.expires)})
}

/// `POST /api/v2/notifications/channels`.
pub async fn create_channel(
    AxState(state): AxState<Arc<State>>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    uri: Uri,
) -> Json<Value> {
    let now = Utc::now();
    let mut n = lock(&state.notifications);
    n.sweep(now);
    let owned: Vec<&Channel> = n.channels.values().filter(|c| c.owner == caller.principal).collect();
    if owned.len() >= MAX_CHANNELS {
        // Evict the least recently used, preferring channels nobody is connected to.
        let victim = owned.iter().min_by_key(|c| (c.socket.is_some(), c.last_used)).map(|c| c.id.clone());
        if let Some(Channel { socket: Some(s), .. }) = victim.and_then(|v| n.remove_channel(&v)) {
            let _ = s.tx.send(Outbound::Close(1000, "channel removed: too many channels"));
        }
    }
    let ch = Channel {
        id: new_channel_id(),
        owner: caller.principal.clone(),
        token_hash: token_hash(&caller.token),
        expires: now + chrono::Duration::hours(CHANNEL_LIFETIME_HOURS),
        last_used: Instant::now(),
        topics: Vec::new(),
        socket: None,
        dropped_at: None,
        pending: std::collections::VecDeque::new(),
    };
    let body = channel_json(&ch, &headers, &uri);
    n.channels.insert(ch.id.clone(), ch);
    Json(body)
}

/// `GET /api/v2/notifications/channels?includechannels=token|oauthclient`.
pub async fn list_channels(
    AxState(state): AxState<Arc<State>>,
    Extension(caller): Extension<Caller>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    uri: Uri,
) -> Result<Json<Value>, ApiError> {
    let by_token = match q.get("includechannels").map(|s| s.to_ascii_lowercase()).as_deref() {
        None | Some("token") => true,
        Some("oauthclient") => false,
        Some(other) => {
            return Err(ApiError::new(
                400,
                "invalid.value",
                format!("includechannels must be `token` or `oauthclient`, not `{other}`."),
            ))
        }
    };
    let hash = token_hash(&caller.token);
    let mut n = lock(&state.notifications);
    n.sweep(Utc::now());
    let mut list: Vec<&Channel> =
        n.channels.values().filter(|c| c.owner == caller.principal && (!by_token || c.token_hash == hash)).collect();
    list.sort_by(|a, b| a.expires.cmp(&b.expires).then_with(|| a.id.cmp(&b.id)));
    let entities: Vec<Value> = list.iter().map(|c| channel_json(c, &headers, &uri)).collect();
    Ok(Json(json!({"entities": entities})))
}

/// `HEAD /api/v2/notifications/channels/{channelId}`.
pub async fn head_channel(
    AxState(state): AxState<Arc<State>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    lock(&state.notifications).owned_mut(&id, &caller.principal)?;
    Ok(StatusCode::OK)
}

fn listing(topics: &[String], rejected: Vec<(String, String)>) -> Value {
    let mut entities: Vec<Value> = topics.iter().map(|t| json!({"id": t, "state": "Permitted"})).collect();
    entities.extend(rejected.into_iter().map(|(t, why)| json!({"id": t, "state": "Rejected", "rejectionReason": why})));
    json!({"entities": entities})
}

/// `GET /api/v2/notifications/channels/{channelId}/subscriptions`.
pub async fn get_subscriptions(
    AxState(state): AxState<Arc<State>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let mut n = lock(&state.notifications);
    let ch = n.owned_mut(&id, &caller.principal)?;
    Ok(Json(listing(&ch.topics, Vec::new())))
}

/// `POST .../subscriptions`: add topics.
pub async fn add_subscriptions(
    state: AxState<Arc<State>>,
    caller: Extension<Caller>,
    id: Path<String>,
    q: Query<HashMap<String, String>>,
    body: JsonBody<Value>,
) -> Result<Json<Value>, ApiError> {
    subscribe(state, caller, id, q, body, false).await
}

/// `PUT .../subscriptions`: replace the topics.
pub async fn replace_subscriptions(
    state: AxState<Arc<State>>,
    caller: Extension<Caller>,
    id: Path<String>,
    q: Query<HashMap<String, String>>,
    body: JsonBody<Value>,
) -> Result<Json<Value>, ApiError> {
    subscribe(state, caller, id, q, body, true).await
}

async fn subscribe(
    AxState(state): AxState<Arc<State>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    JsonBody(body): JsonBody<Value>,
    replace: bool,
) -> Result<Json<Value>, ApiError> {
    let ignore_errors = q.get("ignoreErrors").is_some_and(|v| v.eq_ignore_ascii_case("true"));
    let requested = parse_topic_list(&body)?;
    let mut rejected = Vec::new();
    let mut accepted = Vec::new();
    for t in requested {
        match check_topic(&t) {
            Ok(()) => accepted.push(t),
            Err(why) if ignore_errors => rejected.push((t, why)),
            Err(why) => return Err(ApiError::bad_request(format!("Invalid topic `{t}`: {why}"))),
        }
    }
    let mut n = lock(&state.notifications);
    let ch = n.owned_mut(&id, &caller.principal)?;
    let mut topics = if replace { Vec::new() } else { ch.topics.clone() };
    let mut seen: HashSet<String> = topics.iter().cloned().collect();
    for t in accepted {
        if seen.insert(t.clone()) {
            topics.push(t);
        }
    }
    if topics.len() > MAX_TOPICS {
        return Err(ApiError::bad_request(format!(
            "A channel may subscribe to at most {MAX_TOPICS} topics; this request would make {}. Use another channel.",
            topics.len()
        )));
    }
    // Resubscribing keeps a channel alive past its first 24 hours.
    ch.expires = Utc::now() + chrono::Duration::hours(CHANNEL_LIFETIME_HOURS);
    ch.last_used = Instant::now();
    n.set_topics(&id, topics.clone());
    Ok(Json(listing(&topics, rejected)))
}

/// `DELETE .../subscriptions`: remove every topic.
pub async fn delete_subscriptions(
    AxState(state): AxState<Arc<State>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let mut n = lock(&state.notifications);
    let ch = n.owned_mut(&id, &caller.principal)?;
    ch.last_used = Instant::now();
    n.set_topics(&id, Vec::new());
    Ok(StatusCode::NO_CONTENT)
}

/// `[{"id": topic}, ...]` → topic names.
fn parse_topic_list(body: &Value) -> Result<Vec<String>, ApiError> {
    let Some(items) = body.as_array() else {
        return Err(ApiError::bad_request("The body must be a JSON array of topics: [{\"id\": \"v2....\"}]."));
    };
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            item.get("id")
                .and_then(Value::as_str)
                .map(str::to_string)
                .ok_or_else(|| ApiError::bad_request(format!("Topic [{i}] must be an object with a string `id`.")))
        })
        .collect()
}

/// A topic name is `v2.` then dot-separated segments of letters, digits, `-` and `_`.
pub fn check_topic(topic: &str) -> Result<(), String> {
    if topic.len() > 512 {
        return Err("topic names are at most 512 characters".into());
    }
    let Some(rest) = topic.strip_prefix("v2.") else {
        return Err("topic names start with `v2.`".into());
    };
    let segments: Vec<&str> = rest.split('.').collect();
    if segments.len() < 2 {
        return Err("a topic has at least two segments after `v2.`".into());
    }
    for s in segments {
        if s.is_empty() {
            return Err("empty segment (two dots in a row, or a trailing dot)".into());
        }
        if let Some(c) = s.chars().find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_')) {
            return Err(format!("character {c:?} is not allowed in a topic name"));
        }
    }
    Ok(())
}

/// Deliver an event to every channel subscribed to `topic`; returns how many sockets got it.
pub fn publish(state: &State, topic: &str, event_body: &Value) -> usize {
    let envelope = json!({
        "topicName": topic,
        "version": "2",
        "eventBody": event_body,
        "metadata": {"CorrelationId": uuid::Uuid::new_v4().to_string()},
    });
    publish_raw(state, topic, &envelope.to_string())
}

/// Deliver an already-encoded notification (e.g. a recorded line) on `topic`.
///
/// Real Genesys does not buffer for a channel without a socket. The emulator keeps a
/// channel's events for [`RECONNECT_GRACE`] after its socket *dropped* (never for a channel
/// that was never connected) and writes them first on the next connection to the same
/// channel: that models the short gap a fast reconnect has in practice, so a client that
/// reconnects within the grace period loses nothing. A channel that expired or was
/// evicted keeps nothing. Returns how many sockets (or grace queues) took the event.
pub fn publish_raw(state: &State, topic: &str, message: &str) -> usize {
    let delivered = {
        let mut guard = lock(&state.notifications);
        let n = &mut *guard;
        let Some(ids) = n.by_topic.get(topic) else { return 0 };
        let mut count = 0usize;
        for id in ids {
            let Some(c) = n.channels.get_mut(id) else { continue };
            if let Some(s) = &c.socket {
                if s.tx.send(Outbound::Text(message.to_string())).is_ok() {
                    count += 1;
                }
            } else if c.dropped_at.is_some_and(|t| t.elapsed() < RECONNECT_GRACE) {
                if c.pending.len() >= RECONNECT_BUFFER {
                    c.pending.pop_front();
                }
                c.pending.push_back(message.to_string());
                count += 1;
            }
        }
        count
    };
    if delivered > 0 {
        state.count(|s| s.notifications_delivered += delivered as u64);
    }
    delivered
}

/// Remove every channel now, as if each reached the end of its lifetime: sockets get a
/// close frame, `HEAD`/subscriptions/connect answer 404. Returns how many went.
pub fn expire_all_channels(state: &State) -> usize {
    let mut n = lock(&state.notifications);
    let ids: Vec<String> = n.channels.keys().cloned().collect();
    for id in &ids {
        if let Some(Channel { socket: Some(s), .. }) = n.remove_channel(id) {
            let _ = s.tx.send(Outbound::Close(1000, "channel expired"));
        }
    }
    ids.len()
}

/// Close every socket abruptly.
pub fn drop_all_sockets(state: &State) {
    let mut n = lock(&state.notifications);
    for ch in n.channels.values_mut() {
        if let Some(s) = ch.socket.take() {
            let _ = s.tx.send(Outbound::Drop);
            ch.dropped_at = Some(Instant::now());
        }
    }
}

/// Make every socket silent while its TCP connection stays open (see [`Outbound::Mute`]).
/// The channel counts as disconnected from now on, so its events go to the reconnect
/// grace queue like after a drop.
pub fn mute_all_sockets(state: &State) -> usize {
    let mut n = lock(&state.notifications);
    let mut muted = 0;
    for ch in n.channels.values_mut() {
        if let Some(s) = ch.socket.take() {
            let _ = s.tx.send(Outbound::Mute);
            ch.dropped_at = Some(Instant::now());
            muted += 1;
        }
    }
    muted
}

/// Warn every socket with `v2.system.socket_closing`, then close it `after` later.
pub fn close_all_sockets(state: &State, after: Duration) {
    let mut senders = Vec::new();
    {
        let n = lock(&state.notifications);
        for ch in n.channels.values() {
            if let Some(s) = &ch.socket {
                let msg = json!({
                    "topicName": "v2.system.socket_closing",
                    "version": "2",
                    "eventBody": {"channelId": ch.id, "organizationId": state.catalog.organization_id,
                                  "message": "The socket will close shortly; connect again to the same connectUri.",
                                  "data": {}},
                    "metadata": {"CorrelationId": uuid::Uuid::new_v4().to_string()},
                });
                let _ = s.tx.send(Outbound::Text(msg.to_string()));
                senders.push(s.tx.clone());
            }
        }
    }
    let close = move || {
        for tx in senders {
            let _ = tx.send(Outbound::Close(1001, "socket closing"));
        }
    };
    match tokio::runtime::Handle::try_current() {
        Ok(rt) => {
            rt.spawn(async move {
                tokio::time::sleep(after).await;
                close();
            });
        }
        Err(_) => close(),
    }
}

const HEARTBEAT: &str = r#"{"topicName":"channel.metadata","eventBody":{"message":"WebSocket Heartbeat"}}"#;
const PONG: &str = r#"{"topicName":"channel.metadata","eventBody":{"message":"pong"}}"#;

/// `GET /channels/{channelId}`: the notification websocket (no Authorization, like Genesys).
pub async fn websocket(
    AxState(state): AxState<Arc<State>>,
    Path(id): Path<String>,
    ws: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Response {
    let exists = {
        let mut n = lock(&state.notifications);
        n.sweep(Utc::now());
        n.channels.contains_key(&id)
    };
    if !exists {
        return ApiError::not_found(format!("Channel {id} was not found.")).into_response();
    }
    match ws {
        Ok(ws) => ws.on_upgrade(move |socket| run_socket(state, id, socket)).into_response(),
        Err(e) => ApiError::bad_request(format!("This URL is a websocket: {e}")).into_response(),
    }
}

async fn run_socket(state: Arc<State>, channel_id: String, mut socket: WebSocket) {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let registered = {
        let mut n = lock(&state.notifications);
        n.next_socket += 1;
        let sid = n.next_socket;
        n.channels.get_mut(&channel_id).map(|ch| {
            ch.last_used = Instant::now();
            // Events kept since the last socket dropped go first, in order (see publish_raw).
            if ch.dropped_at.take().is_some_and(|t| t.elapsed() < RECONNECT_GRACE) {
                for text in ch.pending.drain(..) {
                    let _ = tx.send(Outbound::Text(text));
                }
            }
            ch.pending.clear();
            // A new connection replaces the previous one on the same channel.
            if let Some(old) = ch.socket.replace(Socket { id: sid, tx }) {
                let _ = old.tx.send(Outbound::Close(1000, "another connection opened on this channel"));
            }
            sid
        })
    };
    let Some(socket_id) = registered else {
        // The channel went away between the upgrade request and now.
        let _ = socket.send(Message::Close(Some(CloseFrame { code: 1000, reason: "channel not found".into() }))).await;
        return;
    };
    state.count(|s| s.sockets_open += 1);
    let mut shutdown = state.shutdown.subscribe();
    let every = state.heartbeat.clamp(Duration::from_millis(10), Duration::from_secs(86_400));
    let mut heartbeat = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            out = rx.recv() => match out {
                Some(Outbound::Text(text)) => {
                    if socket.send(Message::Text(text.into())).await.is_err() { break; }
                }
                Some(Outbound::Close(code, reason)) => {
                    let _ = socket.send(Message::Close(Some(CloseFrame { code, reason: reason.into() }))).await;
                    break;
                }
                Some(Outbound::Drop) | None => break,
                Some(Outbound::Mute) => {
                    // Read and discard until the client gives up on us (or we stop).
                    loop {
                        tokio::select! {
                            incoming = socket.recv() => match incoming {
                                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                                Some(Ok(_)) => {}
                            },
                            _ = shutdown.changed() => break,
                        }
                    }
                    break;
                }
            },
            _ = heartbeat.tick() => {
                if socket.send(Message::Text(HEARTBEAT.into())).await.is_err() { break; }
            }
            incoming = socket.recv() => match incoming {
                Some(Ok(Message::Text(text))) => {
                    if let Some(reply) = answer(&state, &channel_id, text.as_str()) {
                        if socket.send(Message::Text(reply.into())).await.is_err() { break; }
                    }
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => {}
            },
            _ = shutdown.changed() => {
                let _ = socket.send(Message::Close(Some(CloseFrame { code: 1001, reason: "emulator stopping".into() }))).await;
                break;
            }
        }
    }
    {
        let mut n = lock(&state.notifications);
        if let Some(ch) = n.channels.get_mut(&channel_id) {
            if ch.socket.as_ref().is_some_and(|s| s.id == socket_id) {
                ch.socket = None;
                ch.dropped_at = Some(Instant::now());
            }
        }
    }
    state.count(|s| s.sockets_open = s.sockets_open.saturating_sub(1));
}

/// Answer a client frame: the JSON ping, or a subscribe over the socket.
fn answer(state: &State, channel_id: &str, text: &str) -> Option<String> {
    let msg: Value = serde_json::from_str(text).ok()?;
    match msg.get("message").and_then(Value::as_str)? {
        "ping" => Some(PONG.to_string()),
        "subscribe" => {
            let topics: Vec<String> = msg
                .get("topics")
                .and_then(Value::as_array)
                .map(|ts| ts.iter().filter_map(Value::as_str).map(str::to_string).collect())
                .unwrap_or_default();
            let correlation = msg.get("correlationId").cloned().unwrap_or(Value::Null);
            if let Some(bad) = topics.iter().find(|t| check_topic(t).is_err()) {
                return Some(json!({"result": "400", "status": "rejected", "message": format!("invalid topic {bad}"), "correlationId": correlation}).to_string());
            }
            let mut n = lock(&state.notifications);
            let current = n.channels.get(channel_id).map(|c| c.topics.clone())?;
            let mut all = current;
            for t in topics {
                if !all.contains(&t) {
                    all.push(t);
                }
            }
            if all.len() > MAX_TOPICS {
                return Some(json!({"result": "400", "status": "rejected", "message": "topic limit exceeded", "correlationId": correlation}).to_string());
            }
            n.set_topics(channel_id, all);
            Some(json!({"result": "200", "status": "subscribed", "correlationId": correlation}).to_string())
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names() {
        for ok in [
            "v2.routing.queues.20a2bd46-64e1-4827-8e9e-f900e3ed7f32.conversations",
            "v2.conversations.6a0f2c7e-1d3b-4e59-8a70-9c4b2d1e0f33.transcription",
            "v2.users.x.conversations",
            "v2.detail.events.conversation.x.attributes",
        ] {
            assert_eq!(check_topic(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "channel.metadata",
            "v2.",
            "v2.users",
            "v2.users..conversations",
            "v2.users.x y.conversations",
            "v2.users.x.",
        ] {
            assert!(check_topic(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn channel_ids_look_like_genesys() {
        let id = new_channel_id();
        assert!(id.starts_with("streaming-0-"));
        assert_eq!(id.len(), "streaming-0-".len() + 26);
    }
}
