//! The emulator's shared state: one [`State`] behind an `Arc`, split into independently
//! locked parts so a slow websocket never blocks the token endpoint.
//!
//! Locks are plain `std::sync::Mutex`es held for a few map operations and never across an
//! `.await`; [`lock`] ignores poisoning because every critical section leaves its map in
//! a valid state even if a panic were to interrupt it.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, MutexGuard};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::analytics::Jobs;
use super::auth::TokenStore;
use super::calls::Catalog;
use super::conversations::Conversations;
use super::faults::FaultState;
use super::notifications::Notifications;
use super::ratelimit::Gcra;
use super::replay::{Burst, Replays};
use super::EmulatorConfig;

/// Lock a mutex, recovering the data if another thread panicked while holding it.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Counters for tests and `GET /__emulator/stats`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Stats {
    /// Requests to `/oauth/token`, whatever their outcome.
    pub token_requests: u64,
    /// Requests to `/api/v2/...`, whatever their outcome.
    pub api_requests: u64,
    /// `/api/v2` answers with status 429 (rate limit or fault).
    pub responses_429: u64,
    /// `/api/v2` answers by HTTP status.
    pub responses_by_status: BTreeMap<u16, u64>,
    /// Successful participant-attribute PATCHes.
    pub attribute_patches: u64,
    /// Notification messages written to websockets (events, not heartbeats).
    pub notifications_delivered: u64,
    /// Websockets currently connected.
    pub sockets_open: u64,
}

/// Everything the handlers share.
pub(crate) struct State {
    pub client_id: String,
    pub client_secret: String,
    pub requests_per_minute: u32,
    pub token_ttl: std::time::Duration,
    pub heartbeat: std::time::Duration,
    /// Organization, queues and agents known from the loaded calls.
    pub catalog: Catalog,
    pub tokens: Mutex<TokenStore>,
    pub limiter: Mutex<HashMap<String, Gcra>>,
    pub conversations: Mutex<Conversations>,
    pub notifications: Mutex<Notifications>,
    pub jobs: Mutex<Jobs>,
    pub faults: Mutex<FaultState>,
    pub stats: Mutex<Stats>,
    /// Replays of recorded calls, and the armed burst fault.
    pub replays: Mutex<Replays>,
    pub burst: Burst,
    /// Flips to `true` when the server stops, so websocket tasks end with it.
    pub shutdown: watch::Sender<bool>,
}

impl State {
    pub fn new(cfg: &EmulatorConfig, catalog: Catalog, conversations: Conversations) -> State {
        let (shutdown, _) = watch::channel(false);
        State {
            client_id: cfg.client_id.clone(),
            client_secret: cfg.client_secret.clone(),
            requests_per_minute: cfg.requests_per_minute.max(1),
            token_ttl: cfg.token_ttl,
            heartbeat: cfg.heartbeat,
            catalog,
            tokens: Mutex::new(TokenStore::default()),
            limiter: Mutex::new(HashMap::new()),
            conversations: Mutex::new(conversations),
            notifications: Mutex::new(Notifications::default()),
            jobs: Mutex::new(Jobs::default()),
            faults: Mutex::new(FaultState::default()),
            stats: Mutex::new(Stats::default()),
            replays: Mutex::new(Replays::default()),
            burst: Burst::default(),
            shutdown,
        }
    }

    pub fn stats(&self) -> Stats {
        lock(&self.stats).clone()
    }

    pub fn count(&self, f: impl FnOnce(&mut Stats)) {
        f(&mut lock(&self.stats));
    }
}

/// Genesys timestamp text: ISO-8601 UTC with milliseconds (`2025-03-04T10:15:30.250Z`).
pub(crate) fn iso(t: chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}
