//! `gc-assist outbox`: list webhook messages and redrive dead-lettered (or disabled) ones,
//! on the store file named by `store.path`. Safe while `gc-assist serve` runs: SQLite in WAL
//! mode serves both, and the running worker picks redriven messages up at its next poll.

use anyhow::Context as _;
use chrono::{DateTime, SecondsFormat};
use comfy_table::{presets::UTF8_FULL_CONDENSED, Table};
use serde_json::json;

use super::{Ctx, Outcome};
use crate::store::{OutboxRow, OutboxState, Redrive, Store, StoreOptions, WriteBatch, WriteOp};

#[derive(Debug, clap::Subcommand)]
pub enum OutboxCommand {
    /// List webhook messages, oldest first.
    List(ListArgs),
    /// Send dead-lettered (or 410-disabled) messages again, attempts reset, due now.
    Redrive(RedriveArgs),
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum StateArg {
    Pending,
    Delivered,
    Dead,
    Disabled,
}

impl From<StateArg> for OutboxState {
    fn from(s: StateArg) -> OutboxState {
        match s {
            StateArg::Pending => OutboxState::Pending,
            StateArg::Delivered => OutboxState::Delivered,
            StateArg::Dead => OutboxState::Dead,
            StateArg::Disabled => OutboxState::Disabled,
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct ListArgs {
    /// Only messages in this state.
    #[arg(long, value_enum)]
    pub state: Option<StateArg>,
    /// Print JSON for scripts.
    #[arg(long)]
    pub json: bool,
    /// At most this many messages.
    #[arg(long, default_value_t = 100)]
    pub limit: u32,
}

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("which").required(true).args(["ids", "all_dead", "endpoint"])))]
pub struct RedriveArgs {
    /// These messages (repeatable); each must be dead or disabled. An unknown id fails the whole redrive.
    #[arg(long = "id", value_name = "ID")]
    pub ids: Vec<String>,
    /// Every dead-lettered message.
    #[arg(long)]
    pub all_dead: bool,
    /// Every dead or disabled message to this endpoint; also re-enables the endpoint if it
    /// was disabled after a 410 Gone.
    #[arg(long, value_name = "URL")]
    pub endpoint: Option<String>,
    /// Print JSON for scripts.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(cmd: OutboxCommand, ctx: &Ctx) -> anyhow::Result<Outcome> {
    let loaded = ctx.load_config()?;
    let path = loaded.config.store.path;
    if !path.is_file() {
        anyhow::bail!(
            "no database at {}: set store.path (or GC_ASSIST__STORE__PATH) to the file `gc-assist serve` uses",
            path.display()
        );
    }
    let store = Store::open(&path, StoreOptions::default())
        .await
        .with_context(|| format!("opening the store {}", path.display()))?;
    let result = match cmd {
        OutboxCommand::List(a) => list(&store, a).await,
        OutboxCommand::Redrive(a) => redrive(&store, a).await,
    };
    store.close().await?;
    result
}

async fn list(store: &Store, a: ListArgs) -> anyhow::Result<Outcome> {
    let rows = store.outbox_list(a.state.map(OutboxState::from), a.limit).await?;
    if a.json {
        let list: Vec<_> = rows.iter().map(row_json).collect();
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(Outcome::Ok);
    }
    if rows.is_empty() {
        println!(
            "no webhook messages{}",
            a.state.map(|s| format!(" in state {}", OutboxState::from(s))).unwrap_or_default()
        );
        return Ok(Outcome::Ok);
    }
    let mut table = Table::new();
    table.load_preset(UTF8_FULL_CONDENSED).set_header([
        "id",
        "event",
        "endpoint",
        "state",
        "attempts",
        "next attempt",
        "last status / error",
    ]);
    for r in &rows {
        let next = if r.state == OutboxState::Pending { time(r.next_attempt_at) } else { "-".into() };
        let last = match (r.last_status, &r.last_error) {
            (Some(s), Some(e)) => format!("{s}: {e}"),
            (Some(s), None) => s.to_string(),
            (None, Some(e)) => e.clone(),
            (None, None) => "-".into(),
        };
        table.add_row([
            r.id.clone(),
            r.event_type.clone(),
            r.endpoint_url.clone(),
            r.state.to_string(),
            r.attempts.to_string(),
            next,
            last,
        ]);
    }
    println!("{table}");
    Ok(Outcome::Ok)
}

fn row_json(r: &OutboxRow) -> serde_json::Value {
    json!({
        "id": r.id,
        "injectionId": r.injection_id.to_string(),
        "eventType": r.event_type,
        "endpoint": r.endpoint_url,
        "state": r.state.as_str(),
        "attempts": r.attempts,
        "createdAtMs": r.created_at,
        "nextAttemptAtMs": r.next_attempt_at,
        "lastStatus": r.last_status,
        "lastError": r.last_error,
        "deliveredAtMs": r.delivered_at,
    })
}

fn time(ms: i64) -> String {
    DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(SecondsFormat::Secs, true))
        .unwrap_or_else(|| ms.to_string())
}

async fn redrive(store: &Store, a: RedriveArgs) -> anyhow::Result<Outcome> {
    let mut batch = WriteBatch::new();
    let mut enabled = false;
    if let Some(url) = &a.endpoint {
        enabled = store.disabled_endpoints().await?.iter().any(|d| &d.url == url);
        batch.push(WriteOp::EnableEndpoint { url: url.clone() });
        batch.push(WriteOp::RedriveOutbox(Redrive::Endpoint(url.clone())));
    } else if a.all_dead {
        batch.push(WriteOp::RedriveOutbox(Redrive::AllDead));
    } else {
        batch.push(WriteOp::RedriveOutbox(Redrive::Ids(a.ids.clone())));
    }
    let out = store.write_outcome(batch).await.context("redriving webhook messages (nothing was changed)")?;
    // The redrive is the batch's last operation.
    let redriven = out.affected.last().copied().unwrap_or(0);
    if a.json {
        println!("{}", serde_json::to_string_pretty(&json!({"redriven": redriven, "endpointEnabled": enabled}))?);
    } else {
        if let Some(url) = &a.endpoint {
            if enabled {
                println!("re-enabled endpoint {url}");
            }
        }
        let asked = a.ids.len() as u64;
        if asked > redriven {
            eprintln!(
                "note: {} of the {asked} messages were not dead or disabled and were left as they are",
                asked - redriven
            );
        }
        println!("redriven {redriven} webhook message(s); they are sent at the worker's next poll");
    }
    Ok(Outcome::Ok)
}
