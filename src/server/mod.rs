//! The HTTP service (`gc-assist serve`): axum router, handlers, API errors, metrics,
//! OpenAPI document, and graceful shutdown.
//!
//! [`serve`] takes its listener and its shutdown signal, so tests bind `127.0.0.1:0` and
//! drive it. On shutdown it stops accepting, ends the panel streams, lets in-flight requests
//! finish, and stops the service's timer; the caller then closes the store.
//!
//! Documented choices: malformed ids in paths answer 404 (no such resource), like unknown
//! ones. `/healthz`, `/readyz`, `/metrics` and `/openapi.json` need no key (operators and
//! scrapers call them on a private port). Load is shed (429 + `Retry-After`) when the
//! service's store writes in flight reach `server.shed_queue_depth`.
//!
//! # Error answers
//!
//! | status | `error` | when |
//! |---|---|---|
//! | 400 | `invalid_json`, `invalid_encoding`, `invalid_idempotency_key` | not JSON, not UTF-8, a bad `Idempotency-Key` |
//! | 401 | `unauthorized` | no, malformed or unknown `Authorization: Bearer` key |
//! | 400 | `invalid_query` | a bad `from`, `to`, `tz` or `groupBy` on `/v1/adoption` |
//! | 403 | `forbidden` | an injector key on an admin route (`.../fire`, `/v1/adoption`) |
//! | 502 | `genesys_failed` | `/v1/adoption?copilot=true` and Genesys failed |
//! | 404 | `not_found` | unknown or malformed id, unknown route |
//! | 405 | `method_not_allowed` | a known route with another method |
//! | 409 | `capacity` (+ `retryAfterMs`), `invalid_state`, `idempotency_conflict` | no slot and `onCapacity: reject`; cancelling/firing an injection in the wrong state |
//! | 413 | `payload_too_large` | body over `server.max_body_bytes` |
//! | 415 | `unsupported_media_type` | not `application/json` |
//! | 422 | `validation_failed` (+ `issues`), `unknown_prompt`, `idempotency_key_reused` | contract violations (every one), no content for `promptId`, a key reused with another body |
//! | 429 | `overloaded` (+ `Retry-After`) | shedding load |
//! | 503 | `shutting_down`, `unavailable`, `store_unavailable` | draining, or the store failed |
//!
//! Idempotency: only 201 answers are stored and replayed (24 h, per API key); a refused
//! request (409, 422) can simply be sent again.

mod adoption;
pub mod auth;
pub mod error;
pub(crate) mod handlers;
pub mod metrics;
pub mod openapi;

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::routing::{get, post};
use axum::serve::ListenerExt;
use axum::Router;
use thiserror::Error;
use tokio::net::TcpListener;
use tokio::sync::watch;

pub use auth::{key_hash_hex, keys_from_config, ApiKey, Role};
pub use error::ApiError;

use crate::config::ServerConfig;
use crate::injection::service::Service;

/// Why the server could not start or stopped.
#[derive(Debug, Error)]
pub enum ServerError {
    #[error("invalid server configuration: {0}")]
    Config(String),
    #[error("the HTTP server failed: {0}")]
    Io(#[from] std::io::Error),
}

/// Everything the handlers share. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<StateInner>,
    /// The agent panel's sign-in and sessions (off unless [`AppState::with_panel`]).
    panel: Arc<crate::panel::PanelAuth>,
}

struct StateInner {
    service: Service,
    keys: Vec<ApiKey>,
    max_body_bytes: usize,
    shed_queue_depth: u64,
    shutting_down: AtomicBool,
    stop: watch::Sender<bool>,
}

impl AppState {
    pub fn new(service: Service, cfg: &ServerConfig) -> Result<AppState, ServerError> {
        let keys = keys_from_config(&cfg.api_keys)?;
        Ok(AppState {
            inner: Arc::new(StateInner {
                service,
                keys,
                max_body_bytes: cfg.max_body_bytes.max(1),
                shed_queue_depth: cfg.shed_queue_depth.max(1) as u64,
                shutting_down: AtomicBool::new(false),
                stop: watch::channel(false).0,
            }),
            panel: Arc::new(crate::panel::PanelAuth::disabled()),
        })
    }

    /// Turns on the agent panel's sign-in with these settings.
    pub fn with_panel(self, panel: crate::panel::PanelAuth) -> AppState {
        AppState { panel: Arc::new(panel), ..self }
    }

    pub fn panel(&self) -> &crate::panel::PanelAuth {
        &self.panel
    }

    /// Fires when the server starts draining: long-lived streams end on it.
    pub(crate) fn stop_signal(&self) -> watch::Receiver<bool> {
        self.inner.stop.subscribe()
    }

    pub fn service(&self) -> &Service {
        &self.inner.service
    }

    pub(crate) fn is_shutting_down(&self) -> bool {
        self.inner.shutting_down.load(Ordering::SeqCst)
    }
}

/// The router with every route (see [`openapi::ROUTES`]).
pub fn router(state: AppState) -> Router {
    use handlers as h;
    Router::new()
        .route("/v1/prompt-injections", post(h::create))
        .route("/api/v2/agent-assist/prompt-injections", post(h::create))
        .route("/v1/prompt-injections/{id}", get(h::get_injection).delete(h::cancel))
        .route("/v1/prompt-injections/{id}/fire", post(h::fire))
        .route("/v1/conversations/{id}/prompts", get(h::conversation_prompts))
        .route("/v1/conversations/{id}/stream", get(h::stream))
        .route("/v1/adoption", get(adoption::report_json))
        .route("/v1/adoption/report", get(adoption::report_html))
        .route("/adoption", get(adoption::dashboard))
        .route("/healthz", get(h::healthz))
        .route("/readyz", get(h::readyz))
        .route("/metrics", get(metrics::render))
        .route("/openapi.json", get(h::openapi))
        .merge(crate::panel::routes())
        .fallback(h::not_found)
        .method_not_allowed_fallback(h::method_not_allowed)
        .with_state(state)
}

/// Sets TCP_NODELAY on an accepted connection (for `ListenerExt::tap_io`): every server of
/// ours writes small latency-sensitive messages. A failure only costs latency, so it is traced.
pub fn no_delay(tcp: &mut tokio::net::TcpStream) {
    if let Err(e) = tcp.set_nodelay(true) {
        tracing::debug!(error = %e, "could not set TCP_NODELAY on a connection");
    }
}

/// Serves until `shutdown` completes, then drains: panel streams end, in-flight requests
/// finish, the service's timer stops.
pub async fn serve(
    state: AppState,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let app = router(state.clone());
    let st = state.clone();
    let signal = async move {
        shutdown.await;
        st.inner.shutting_down.store(true, Ordering::SeqCst);
        // Long-lived SSE responses would hold the drain open; tell them to end.
        let _ = st.inner.stop.send(true);
    };
    // Panel and admin streams write small SSE events; Nagle's algorithm would hold one back
    // until the reader's delayed ACK (about 40 ms on Linux).
    axum::serve(listener.tap_io(no_delay), app).with_graceful_shutdown(signal).await?;
    state.inner.service.shutdown();
    state.inner.service.drained().await;
    Ok(())
}
