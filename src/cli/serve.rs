//! `gc-assist serve`: the prompt-injection service on a TCP port, until Ctrl-C or SIGTERM.
//!
//! Start-up: open the store (applying migrations), load the prompt catalogue (the store's
//! table, else the catalogue file), build the Genesys client (or, with `--emulator`, start an
//! embedded emulator and use it as the Genesys side), recover live injections, serve.
//! With `[triggers] queues` (or `--emulator`), the live trigger runtime watches those queues'
//! conversations through the Notifications API and fires rules (`rules_file`, hot reloaded)
//! and API-armed injections from live transcripts; `--record DIR` keeps what it receives.
//! Alongside: the webhook delivery worker (when `webhook.secret` is set; woken after every
//! commit that adds outbox rows) and the daily audit checkpointer.
//! Shutdown: stop accepting, finish in-flight requests, stop the timer, the worker and the
//! checkpointer, close the store.

use std::sync::Arc;
use std::time::Duration;

use std::future::Future;
use std::path::PathBuf;

use anyhow::Context;
use secrecy::ExposeSecret;

use super::{Ctx, Outcome};
use crate::audit::ops::{checkpoint_completed_days, load_or_create_key, until_next_checkpoint};
use crate::config::Config;
use crate::contract::Catalogue;
use crate::emulator::{self, EmulatorConfig};
use crate::genesys::{ClientSettings, GenesysClient, NotificationSettings};
use crate::injection::service::{Channels, OnCommit, Service, ServiceDeps};
use crate::server::{self, AppState};
use crate::store::{Store, StoreOptions, SystemClock};
use crate::triggers::live::{LiveDeps, LiveRuntime};
use crate::triggers::rules::RuleWatcher;
use crate::triggers::{CompiledRules, RuleSet};
use crate::webhook::worker::{Worker, WorkerHandle, WorkerSettings};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Address to listen on [default: server.bind].
    #[arg(long, value_name = "ADDR")]
    pub bind: Option<String>,
    /// Use an embedded Genesys Cloud emulator as the Genesys side (its URL is printed).
    #[arg(long)]
    pub emulator: bool,
    /// Append every notification the live trigger runtime receives to DIR/<conversationId>.jsonl
    /// (the recorded-calls format) [default: triggers.record_dir].
    #[arg(long, value_name = "DIR")]
    pub record: Option<PathBuf>,
}

pub async fn run(args: Args, ctx: &Ctx) -> anyhow::Result<Outcome> {
    let mut loaded = ctx.load_config()?;
    if args.emulator && loaded.config.panel.oauth_client_id.trim().is_empty() {
        // The panel signs agents in against the embedded emulator, which takes any client id.
        loaded.config.panel.oauth_client_id = "gc-assist-panel".into();
    }
    if let Some(dir) = args.record {
        loaded.config.triggers.record_dir = dir;
    }
    let mut cfg = loaded.config.clone();
    let cfg = &mut cfg;
    let channels = Channels::from_names(&cfg.server.channels)?;
    if cfg.server.api_keys.is_empty() {
        eprintln!("warning: no server.api_keys configured; every API call will be refused (401). Create one with `gc-assist keys new --id NAME`");
    }
    let mut emu = None;
    let genesys = if args.emulator {
        let e = emulator::spawn(EmulatorConfig::default()).await.context("cannot start the embedded emulator")?;
        println!("emulator at {}", e.base_url());
        if cfg.panel.login_base.trim().is_empty() {
            cfg.panel.login_base = e.base_url();
        }
        let client = GenesysClient::new(e.client_settings(&cfg.genesys)?)?;
        if cfg.triggers.queues.is_empty() {
            // Watch every queue the emulator's calls use, so replays fire triggers at once.
            let mut queues: Vec<String> = e.calls().into_iter().map(|c| c.queue_id).collect();
            queues.sort();
            queues.dedup();
            cfg.triggers.queues = queues;
        }
        emu = Some(e);
        Some(client)
    } else if channels.participant_data
        || !cfg.triggers.queues.is_empty()
        || !cfg.panel.oauth_client_id.trim().is_empty()
    {
        // The participant-data channel writes with it, live triggers subscribe with it, and
        // panel sign-in checks conversations with it.
        Some(GenesysClient::new(ClientSettings::from_config(&cfg.genesys, loaded.hosts.clone()))?)
    } else {
        None
    };
    let bind = args.bind.unwrap_or_else(|| cfg.server.bind.clone());
    let stack = Stack::start(cfg, genesys, &bind).await?;
    if stack.live.is_some() {
        println!("live triggers watching {} queue(s)", cfg.triggers.queues.len());
    }
    println!("gc-assist serving on http://{}", stack.addr);
    println!("agent panel: http://{}/panel?conversationId=<conversation id>", stack.addr);
    super::shutdown_signal().await;
    eprintln!("stopping: finishing webhook attempts in flight and flushing the store");
    stack.stop().await?;
    if let Some(e) = emu {
        e.shutdown().await;
    }
    Ok(Outcome::Ok)
}

/// Everything `serve` runs: the store, the service and its HTTP API, the webhook worker
/// and the daily audit checkpointer. The demo starts the same stack.
pub struct Stack {
    /// Where the HTTP API listens.
    pub addr: std::net::SocketAddr,
    pub store: Store,
    /// Stops the HTTP server first (in-flight requests finish and commit their outbox
    /// rows), then `stop_tx` stops the worker and the checkpointer.
    stop_server_tx: tokio::sync::watch::Sender<bool>,
    stop_tx: tokio::sync::watch::Sender<bool>,
    server: tokio::task::JoinHandle<anyhow::Result<()>>,
    worker: Option<WorkerHandle>,
    checkpointer: tokio::task::JoinHandle<()>,
    /// The live trigger runtime, when `[triggers] queues` is set and Genesys is configured.
    pub live: Option<LiveRuntime>,
    /// Keeps the rules file polled while the stack runs.
    _rules: Option<RuleWatcher>,
}

impl Stack {
    /// Open the store, recover, and start serving on `bind`. `genesys` is the Genesys side
    /// for the participant-data channel and the live triggers (None when neither is on).
    pub async fn start(cfg: &Config, genesys: Option<GenesysClient>, bind: &str) -> anyhow::Result<Stack> {
        let channels = Channels::from_names(&cfg.server.channels)?;
        let store = Store::open(&cfg.store.path, StoreOptions::default())
            .await
            .with_context(|| format!("cannot open the store {}", cfg.store.path.display()))?;
        let mut catalogue = None;
        let entries = store.prompts_all().await.context("cannot read the prompt catalogue from the store")?;
        if !entries.is_empty() {
            catalogue = Some(Catalogue::from_entries(entries));
        } else if cfg.catalogue.path.exists() {
            catalogue = Some(
                Catalogue::load(&cfg.catalogue.path)
                    .with_context(|| format!("cannot load the prompt catalogue {}", cfg.catalogue.path.display()))?,
            );
        }

        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|s| *s).await;
        };
        let worker = if cfg.webhook.secret.expose_secret().trim().is_empty() {
            eprintln!(
                "warning: webhook.secret is not set; webhook messages are stored but not sent until it is (GC_ASSIST__WEBHOOK__SECRET=whsec_...)"
            );
            None
        } else {
            let settings = WorkerSettings::from_config(&cfg.webhook).context("invalid [webhook] settings")?;
            Some(Worker::new(store.clone(), settings)?.spawn(stopped(stop_rx.clone())))
        };
        let on_commit: Option<OnCommit> = worker.as_ref().map(|w| {
            let n = w.notifier();
            Arc::new(move || n.notify()) as OnCommit
        });
        let checkpointer = tokio::spawn(checkpoint_daily(
            store.clone(),
            cfg.audit.key_file.clone(),
            cfg.audit.anchor_file.clone(),
            stopped(stop_rx.clone()),
        ));

        let rules_catalogue = catalogue.clone().map(Arc::new);
        let live_client = genesys.clone();
        let service = Service::start(ServiceDeps {
            store: store.clone(),
            catalogue,
            channels,
            genesys,
            clock: Arc::new(SystemClock),
            global_webhooks: cfg.webhook.endpoints.clone(),
            on_commit,
            attribute_prefix: cfg.inject.attribute_prefix.clone(),
        })
        .await
        .context("cannot start the injection service")?;
        let (live, rules) = start_live(cfg, &service, live_client, rules_catalogue).await?;
        let hosts = crate::genesys::region::resolve(&cfg.genesys.region)?;
        let panel = crate::panel::PanelAuth::new(&cfg.panel, &hosts, service.genesys().cloned());
        let state = AppState::new(service, &cfg.server)?.with_panel(panel);
        let listener = tokio::net::TcpListener::bind(bind)
            .await
            .with_context(|| format!("cannot listen on {bind}: pick a free address with --bind (e.g. 127.0.0.1:0)"))?;
        let addr = listener.local_addr()?;
        tracing::info!(%addr, "serving");
        let (stop_server_tx, stop_server_rx) = tokio::sync::watch::channel(false);
        let server = tokio::spawn(async move {
            server::serve(state, listener, stopped(stop_server_rx)).await?;
            Ok(())
        });
        Ok(Stack { addr, store, stop_server_tx, stop_tx, server, worker, checkpointer, live, _rules: rules })
    }

    /// Stop accepting, finish in-flight requests and webhook attempts, flush the store.
    pub async fn stop(self) -> anyhow::Result<()> {
        // No new fires while the rest drains.
        if let Some(live) = self.live {
            live.stop().await;
        }
        let _ = self.stop_server_tx.send(true);
        self.server.await.context("the HTTP server task failed")??;
        let _ = self.stop_tx.send(true);
        if let Some(w) = self.worker {
            w.join().await;
        }
        let _ = self.checkpointer.await;
        self.store.close().await.context("cannot close the store cleanly")?;
        Ok(())
    }
}

/// Starts the live trigger runtime when queues are configured: the rules (file, hot
/// reloaded, or none) and the notification channel settings from `[triggers]`.
async fn start_live(
    cfg: &Config,
    service: &Service,
    genesys: Option<GenesysClient>,
    catalogue: Option<Arc<Catalogue>>,
) -> anyhow::Result<(Option<LiveRuntime>, Option<RuleWatcher>)> {
    let t = &cfg.triggers;
    if t.queues.is_empty() {
        return Ok((None, None));
    }
    let Some(client) = genesys else {
        anyhow::bail!(
            "triggers.queues is set but no Genesys client is configured: set the [genesys] credentials (or use --emulator)"
        );
    };
    let (rules_rx, watcher) = if t.rules_file.as_os_str().is_empty() {
        let empty = CompiledRules::compile(&RuleSet::default(), None).context("cannot build an empty rule set")?;
        (tokio::sync::watch::channel(Arc::new(empty)).1, None)
    } else {
        let w = RuleWatcher::start(&t.rules_file, catalogue, Duration::from_millis(t.rules_poll_ms))
            .with_context(|| format!("cannot load the rules file {} (triggers.rules_file)", t.rules_file.display()))?;
        (w.subscribe(), Some(w))
    };
    let notifications = NotificationSettings {
        topics_per_channel: t.topics_per_channel,
        max_channels: t.max_channels,
        heartbeat: Duration::from_secs(t.heartbeat_secs),
        rotate_after: Duration::from_secs(t.rotate_after_secs),
        record_dir: (!t.record_dir.as_os_str().is_empty()).then(|| t.record_dir.clone()),
        ..NotificationSettings::default()
    };
    let live = LiveRuntime::start(LiveDeps {
        service: service.clone(),
        client,
        queues: t.queues.clone(),
        rules: rules_rx,
        notifications,
    })
    .await
    .context("cannot start the live triggers")?;
    Ok((Some(live), watcher))
}

/// Signs checkpoints for completed UTC days at start-up and a few seconds after each
/// midnight, until `stop`. Failures are logged and retried at the next run: the chain
/// itself is unaffected, and `gc-assist audit checkpoint` can catch up by hand.
async fn checkpoint_daily(store: Store, key_file: PathBuf, anchor: PathBuf, stop: impl Future<Output = ()>) {
    tokio::pin!(stop);
    loop {
        match load_or_create_key(&key_file) {
            Ok(key) => {
                let today = chrono::Utc::now().date_naive();
                match checkpoint_completed_days(&store, &key, &anchor, today).await {
                    Ok(signed) if !signed.is_empty() => {
                        tracing::info!(count = signed.len(), "audit checkpoints signed")
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "audit checkpoint run failed"),
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, key_file = %key_file.display(), "cannot load the audit key; no checkpoints")
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(until_next_checkpoint(chrono::Utc::now())) => {}
            _ = &mut stop => return,
        }
    }
}
