//! A local Genesys Cloud that speaks the real wire format (genesys-api.md), with
//! scriptable faults: what the demo, the tests and the benchmarks run against.
//!
//! One port serves both hosts' paths, like an SDK "gateway" host: `/oauth/token` and
//! `/oauth/authorize` (login host; the latter is the agent panel's implicit grant, see
//! `auth::authorize` for how a test or the demo picks the agent) and `/api/v2/...` (API host), plus the notification websockets at
//! `/channels/{id}` and admin endpoints at `/__emulator/...`.
//!
//! # Layout
//!
//! - `gateway`: correlation ids, auth, rate limit, size limit, faults, `ErrorBody` rendering.
//! - `auth`: token endpoint, token store, `tokens/me`, `users/me`.
//! - `conversations`: conversation state, REST `Conversation`, attribute PATCH.
//! - `notifications`: channels, subscriptions, websocket, topic delivery.
//! - `analytics`: Agent Copilot aggregates query and async jobs.
//! - `replay`: recorded calls streamed over the websockets, paced or as fast as possible.
//!   A channel whose socket dropped keeps its events for `RECONNECT_GRACE` (10 s) and
//!   delivers them on the next connection: an emulator decision (Genesys documents no
//!   buffering) that models a fast reconnect; see `notifications::publish_raw`.
//! - `faults`, `ratelimit`, `calls` (recorded-call loader), `admin`, `error`, `state`.

mod admin;
mod analytics;
mod auth;
mod calls;
mod conversations;
mod error;
mod faults;
mod gateway;
mod notifications;
mod ratelimit;
mod replay;
mod state;

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::routing::{get, head, patch, post};
use axum::serve::ListenerExt;
use axum::Router;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use error::EmulatorError;
pub use faults::{FaultSpec, Faults};
pub use gateway::{CORRELATION_HEADER, MAX_BODY_BYTES};
pub use notifications::{MAX_CHANNELS, MAX_TOPICS, RECONNECT_GRACE};
pub use replay::{ReplayRequest, ReplaySpec, ReplayStarted, ReplayStatus, Speed};
pub use state::Stats;

use auth::Principal;
use state::{lock, State};

/// How to run an emulator.
#[derive(Debug, Clone)]
pub struct EmulatorConfig {
    /// The OAuth client id `/oauth/token` accepts.
    pub client_id: String,
    /// Its secret (a test credential of the emulator itself, so a plain string).
    pub client_secret: String,
    /// Per-token API limit (`client.credentials.token.rate.per.minute`).
    pub requests_per_minute: u32,
    /// Lifetime of issued tokens (`expires_in`).
    pub token_ttl: Duration,
    /// Which recorded calls to load.
    pub calls: CallSource,
    /// Websocket heartbeat interval.
    pub heartbeat: Duration,
}

impl Default for EmulatorConfig {
    fn default() -> Self {
        EmulatorConfig {
            client_id: "gc-assist-emulator".into(),
            client_secret: "emulator-secret".into(),
            requests_per_minute: 300,
            token_ttl: Duration::from_secs(24 * 3600),
            calls: CallSource::Embedded,
            heartbeat: Duration::from_secs(30),
        }
    }
}

/// Where recorded calls come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallSource {
    /// No calls: conversations exist only once created.
    None,
    /// The small set shipped inside the binary (examples/calls/).
    Embedded,
    /// A folder with `calls.json` and the JSONL files it names.
    Dir(PathBuf),
}

/// A conversation the emulator knows, with the ids a client needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CallInfo {
    pub conversation_id: String,
    pub queue_id: String,
    pub queue_name: String,
    pub agent_user_id: String,
    pub agent_name: String,
    pub agent_participant_id: String,
    pub agent_communication_id: String,
    pub customer_participant_id: String,
    /// The recorded scenario, or `live` for created conversations.
    pub scenario: String,
}

/// What to create; every field defaults (random ids, the "Billing" queue).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct NewConversation {
    pub conversation_id: Option<String>,
    pub queue_id: Option<String>,
    pub agent_user_id: Option<String>,
    pub agent_name: Option<String>,
}

/// A running emulator. Dropping it (or [`Emulator::shutdown`]) stops the server.
pub struct Emulator {
    state: Arc<State>,
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), EmulatorError>>>,
}

impl std::fmt::Debug for Emulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Emulator").field("addr", &self.addr).finish_non_exhaustive()
    }
}

/// Load the calls and build the shared state.
fn build(cfg: &EmulatorConfig) -> Result<Arc<State>, EmulatorError> {
    let loaded = match &cfg.calls {
        CallSource::None => calls::Loaded::default(),
        CallSource::Embedded => calls::load_embedded()?,
        CallSource::Dir(dir) => calls::load_dir(dir)?,
    };
    let convs = conversations::Conversations::from_recorded(loaded.calls);
    Ok(Arc::new(State::new(cfg, loaded.catalog, convs)))
}

/// The whole router, wrapped in the gateway.
fn router(state: Arc<State>) -> Router {
    use analytics as an;
    use notifications as nt;
    Router::new()
        .route("/oauth/token", post(auth::token))
        .route("/oauth/authorize", get(auth::authorize))
        .route("/api/v2/tokens/me", get(auth::tokens_me).delete(auth::delete_token))
        .route("/api/v2/users/me", get(auth::users_me))
        .route("/api/v2/conversations/{conversationId}", get(conversations::get_conversation))
        .route(
            "/api/v2/conversations/{conversationId}/participants/{participantId}/attributes",
            patch(conversations::patch_attributes),
        )
        .route("/api/v2/notifications/channels", post(nt::create_channel).get(nt::list_channels))
        .route("/api/v2/notifications/channels/{channelId}", head(nt::head_channel))
        .route(
            "/api/v2/notifications/channels/{channelId}/subscriptions",
            get(nt::get_subscriptions)
                .post(nt::add_subscriptions)
                .put(nt::replace_subscriptions)
                .delete(nt::delete_subscriptions),
        )
        .route("/api/v2/analytics/agentcopilots/aggregates/query", post(an::query))
        .route("/api/v2/analytics/agentcopilots/aggregates/jobs", post(an::create_job))
        .route("/api/v2/analytics/agentcopilots/aggregates/jobs/{jobId}", get(an::job_status).delete(an::cancel_job))
        .route("/api/v2/analytics/agentcopilots/aggregates/jobs/{jobId}/results", get(an::job_results))
        .route("/channels/{channelId}", get(nt::websocket))
        .merge(admin::routes())
        .method_not_allowed_fallback(gateway::method_not_allowed)
        .fallback(gateway::not_found)
        .layer(axum::middleware::from_fn_with_state(state.clone(), gateway::gateway))
        .with_state(state)
}

async fn run(
    state: Arc<State>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), EmulatorError> {
    let app = router(state.clone());
    let stopping = state.clone();
    // Notifications are small websocket frames: without TCP_NODELAY, Nagle's algorithm holds
    // one back until the client's delayed ACK (about 40 ms on Linux), which is how the
    // trigger-to-panel tail was found (see BENCHMARKS.md).
    let listener = listener.tap_io(crate::server::no_delay);
    axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
        .with_graceful_shutdown(async move {
            shutdown.await;
            // Websockets live outside the HTTP connections: tell them to close too.
            stopping.shutdown.send_replace(true);
        })
        .await
        .map_err(EmulatorError::Serve)
}

/// Start an emulator on `127.0.0.1` with a free port.
pub async fn spawn(cfg: EmulatorConfig) -> Result<Emulator, EmulatorError> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|source| EmulatorError::Bind { addr: "127.0.0.1:0".into(), source })?;
    spawn_on(cfg, listener).await
}

/// Start an emulator on a listener the caller bound (e.g. a fixed port).
pub async fn spawn_on(cfg: EmulatorConfig, listener: TcpListener) -> Result<Emulator, EmulatorError> {
    let state = build(&cfg)?;
    let addr = listener.local_addr().map_err(|source| EmulatorError::Bind { addr: "listener".into(), source })?;
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(run(state.clone(), listener, async move {
        // A dropped sender (the handle dropped) stops the server as well.
        let _ = stopped.await;
    }));
    Ok(Emulator { state, addr, stop: Some(stop), task: Some(task) })
}

/// Serve on `listener` until `shutdown` completes.
pub async fn serve(
    cfg: EmulatorConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), EmulatorError> {
    let state = build(&cfg)?;
    run(state, listener, shutdown).await
}

impl Emulator {
    /// `http://127.0.0.1:PORT`, without a trailing slash: both the API and the login base.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn client_id(&self) -> &str {
        &self.state.client_id
    }

    pub fn client_secret(&self) -> &str {
        &self.state.client_secret
    }

    /// Client settings that point a `[genesys]` configuration at this emulator and its
    /// credentials: how the demo, `--emulator` commands, tests and benchmarks connect.
    pub fn client_settings(
        &self,
        genesys: &crate::config::GenesysConfig,
    ) -> Result<crate::genesys::ClientSettings, crate::genesys::region::RegionError> {
        let hosts = crate::genesys::region::resolve(&self.base_url())?;
        let mut settings = crate::genesys::ClientSettings::from_config(genesys, hosts);
        settings.client_id = self.client_id().to_string();
        settings.client_secret = secrecy::SecretString::from(self.client_secret().to_string());
        Ok(settings)
    }

    /// Every conversation, loaded ones first, in order.
    pub fn calls(&self) -> Vec<CallInfo> {
        lock(&self.state.conversations).infos()
    }

    /// Create a live conversation (a customer and a connected agent) and announce it on
    /// its queue and user conversation topics.
    pub fn create_conversation(&self, spec: NewConversation) -> CallInfo {
        conversations::create(&self.state, &spec)
    }

    /// End a live conversation; false if it is unknown or already ended.
    pub fn end_conversation(&self, conversation_id: &str) -> bool {
        conversations::end(&self.state, conversation_id)
    }

    /// A user token for `user_id` (what the agent's widget would hold): `users/me` works with it.
    pub fn issue_agent_token(&self, user_id: &str) -> String {
        lock(&self.state.tokens).issue(Principal::User(user_id.to_string()), self.state.token_ttl, Instant::now())
    }

    /// A participant's current attributes, or None if the conversation or participant is unknown.
    pub fn participant_attributes(
        &self,
        conversation_id: &str,
        participant_id: &str,
    ) -> Option<BTreeMap<String, String>> {
        lock(&self.state.conversations).get(conversation_id)?.attributes(participant_id)
    }

    /// Deliver a topic event to every subscribed websocket; returns how many got it.
    pub fn publish(&self, topic: &str, event_body: &serde_json::Value) -> usize {
        notifications::publish(&self.state, topic, event_body)
    }

    /// Start replaying recorded calls over the websockets (see the `replay` module docs).
    pub fn replay(&self, spec: ReplaySpec) -> Result<ReplayStarted, EmulatorError> {
        replay::start(&self.state, spec)
    }

    /// Progress of the replays started so far.
    pub fn replays(&self) -> Vec<ReplayStatus> {
        replay::status(&self.state)
    }

    /// Stop every running replay; returns how many were running.
    pub fn stop_replays(&self) -> usize {
        replay::stop_all(&self.state)
    }

    pub fn faults(&self) -> Faults {
        Faults { state: self.state.clone() }
    }

    pub fn stats(&self) -> Stats {
        self.state.stats()
    }

    /// Stop the server and wait for it (at most a few seconds).
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        }
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.state.shutdown.send_replace(true);
    }
}
