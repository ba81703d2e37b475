//! The command line: one subcommand per file, a shared context, and the mapping of
//! outcomes to exit codes (0 ok, 1 a check failed, 2 an error).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config;

pub mod adoption;
pub mod audit;
pub mod config_cmd;
pub mod demo;
pub mod emulator;
pub mod inject;
pub mod inject_remote;
pub mod keys;
pub mod outbox;
pub mod prompts;
pub mod regions;
pub mod replay;
pub mod schema;
pub mod serve;
pub mod validate;

/// Real-time agent-assist prompts for Genesys Cloud.
#[derive(Debug, Parser)]
#[command(name = "gc-assist", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    /// Configuration file (TOML). Default: ./gc-assist.toml when present.
    #[arg(long, global = true, env = "GC_ASSIST_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// More log output on stderr (-v info, -vv debug). RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show the effective configuration (secrets redacted).
    #[command(subcommand)]
    Config(config_cmd::ConfigCommand),
    /// List Genesys Cloud regions and their hosts.
    Regions(regions::Args),
    /// Check an injection payload against the contract.
    Validate(validate::Args),
    /// Print the JSON Schema of the injection payload.
    Schema(schema::Args),
    /// Manage the prompt catalogue.
    #[command(subcommand)]
    Prompts(prompts::PromptsCommand),
    /// Run a local Genesys Cloud emulator.
    Emulator(emulator::Args),
    /// Inject a prompt into a live conversation.
    Inject(inject::Args),
    /// Run the whole product end to end against the built-in emulator.
    Demo(demo::Args),
    /// Run the prompt-injection service (REST API, delivery, audit, webhooks).
    Serve(serve::Args),
    /// Verify, export and purge the audit trail.
    #[command(subcommand)]
    Audit(audit::AuditCommand),
    /// Inspect and redrive the webhook outbox.
    #[command(subcommand)]
    Outbox(outbox::OutboxCommand),
    /// Create API keys and their hashes for the configuration.
    #[command(subcommand)]
    Keys(keys::KeysCommand),
    /// Backtest a rules file over recorded calls (fires, timing, precision and recall).
    Replay(replay::Args),
    /// Adoption of the prompts (shown, clicked, dismissed, …) beside Agent Copilot's figures.
    Adoption(adoption::Args),
}

impl Command {
    /// Servers log their progress; one-shot commands report through their result, so
    /// their logs stay quiet unless asked for (-v).
    fn is_long_running(&self) -> bool {
        matches!(self, Command::Emulator(_) | Command::Serve(_))
    }
}

/// What a command reports when it did not fail outright.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Exit 0.
    Ok,
    /// Exit 1: the command ran, and what it checked is not right (invalid payload,
    /// audit mismatch).
    CheckFailed,
}

/// Shared, cheap-to-build state for commands.
#[derive(Debug, Clone)]
pub struct Ctx {
    pub config_path: Option<PathBuf>,
}

impl Ctx {
    /// Load and validate configuration (defaults ← file ← environment).
    pub fn load_config(&self) -> anyhow::Result<config::Loaded> {
        Ok(config::load(self.config_path.as_deref())?)
    }
}

/// Entry point used by `main`: parse, init tracing, run on a tokio runtime.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.verbose, cli.command.is_long_running());
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let ctx = Ctx { config_path: cli.config.clone() };
    match runtime.block_on(run(cli.command, ctx)) {
        Ok(Outcome::Ok) => ExitCode::SUCCESS,
        Ok(Outcome::CheckFailed) => ExitCode::from(1),
        Err(e) => {
            eprintln!("error: {e}");
            for cause in e.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::from(2)
        }
    }
}

/// Run one command.
pub async fn run(command: Command, ctx: Ctx) -> anyhow::Result<Outcome> {
    match command {
        Command::Config(c) => config_cmd::run(c, &ctx),
        Command::Regions(a) => regions::run(a),
        Command::Validate(a) => validate::run(a, &ctx),
        Command::Schema(a) => schema::run(a),
        Command::Prompts(c) => prompts::run(c, &ctx),
        Command::Emulator(a) => emulator::run(a, &ctx).await,
        Command::Inject(a) => inject::run(a, &ctx).await,
        Command::Demo(a) => demo::run(a, &ctx).await,
        Command::Serve(a) => serve::run(a, &ctx).await,
        Command::Audit(c) => audit::run(c, &ctx).await,
        Command::Outbox(c) => outbox::run(c, &ctx).await,
        Command::Keys(c) => keys::run(c, &ctx).await,
        Command::Replay(a) => replay::run(a),
        Command::Adoption(a) => adoption::run(a, &ctx).await,
    }
}

/// Resolves on Ctrl-C or SIGTERM: how long-running commands learn to stop.
pub(crate) async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    {
        let term = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term => {}
        }
    }
    #[cfg(not(unix))]
    ctrl_c.await;
}

fn init_tracing(verbose: u8, long_running: bool) {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    let default = match verbose {
        0 if long_running => "info",
        0 => "error",
        1 => "info,gc_assist=info",
        _ => "debug,hyper=info,reqwest=info",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}
