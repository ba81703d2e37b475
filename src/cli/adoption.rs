//! `gc-assist adoption`: adoption figures over an interval from the store at `store.path`,
//! with Genesys Agent Copilot's own figures beside them when Genesys is configured (or
//! `--emulator`). A table for people, `--json`/`--csv` for scripts, `--html FILE` for a
//! self-contained report with charts. Safe while `gc-assist serve` runs (SQLite WAL).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use indicatif::{ProgressBar, ProgressStyle};

use super::{Ctx, Outcome};
use crate::adoption::copilot::{self, CopilotOptions, Progress};
use crate::adoption::{self, parse_instant, parse_tz, AdoptionQuery, GroupBy};
use crate::emulator::{self, EmulatorConfig};
use crate::genesys::{ClientSettings, GenesysClient};
use crate::store::{Store, StoreOptions};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Start (inclusive): a date (2026-03-01, midnight in --tz), a local time
    /// (2026-03-01T08:00) or RFC 3339. Default: 7 days before --to.
    #[arg(long)]
    pub from: Option<String>,
    /// End (exclusive), same forms. Default: now.
    #[arg(long)]
    pub to: Option<String>,
    /// The UTC offset days are cut at and local times are read in: Z, UTC, +02:00, -05:30.
    #[arg(long, default_value = "+00:00", allow_hyphen_values = true)]
    pub tz: String,
    /// Comma-separated groupings: prompt, rule, queue, agent, day.
    #[arg(long, value_name = "LIST", default_value = "prompt")]
    pub group_by: String,
    /// Print the report as JSON.
    #[arg(long, conflicts_with = "csv")]
    pub json: bool,
    /// Print the report as CSV.
    #[arg(long)]
    pub csv: bool,
    /// Also write a self-contained HTML report with charts (adds the prompt and agent groupings).
    #[arg(long, value_name = "FILE")]
    pub html: Option<PathBuf>,
    /// Copilot figures from an embedded Genesys Cloud emulator instead of the configured org.
    #[arg(long, conflicts_with = "no_copilot")]
    pub emulator: bool,
    /// Leave out Copilot's figures even when Genesys is configured.
    #[arg(long)]
    pub no_copilot: bool,
    /// Where a long Copilot job keeps its progress, so a rerun continues it (default: beside the store).
    #[arg(long, value_name = "FILE")]
    pub copilot_state: Option<PathBuf>,
    /// Data points per Copilot job results page.
    #[arg(long, default_value_t = 100)]
    pub copilot_page_size: u32,
    /// Intervals longer than this many days use a Copilot async job instead of the query.
    #[arg(long, default_value_t = 7)]
    pub copilot_sync_days: u32,
    /// Compute through the reference fold over every row instead of the rollup (slower; the
    /// same counts, exact times to click).
    #[arg(long, hide = true)]
    pub reference: bool,
}

pub async fn run(args: Args, ctx: &Ctx) -> anyhow::Result<Outcome> {
    let loaded = ctx.load_config()?;
    let tz = parse_tz(&args.tz)?;
    let to = match &args.to {
        Some(s) => parse_instant(s, tz)?,
        None => chrono::Utc::now().timestamp_millis(),
    };
    let from = match &args.from {
        Some(s) => parse_instant(s, tz)?,
        None => to - 7 * 86_400_000,
    };
    let mut group_by = GroupBy::parse_list(&args.group_by)?;
    if args.html.is_some() {
        for g in [GroupBy::Prompt, GroupBy::Agent] {
            if !group_by.contains(&g) {
                group_by.push(g);
            }
        }
    }
    let q = AdoptionQuery::new(from, to, tz, group_by)?;

    let path = loaded.config.store.path.clone();
    if !path.is_file() {
        anyhow::bail!(
            "no database at {}: set store.path (or GC_ASSIST__STORE__PATH) to the file `gc-assist serve` uses",
            path.display()
        );
    }
    let store = Store::open(&path, StoreOptions::default())
        .await
        .with_context(|| format!("opening the store {}", path.display()))?;
    let report =
        if args.reference { adoption::compute_by_fold(&store, &q).await } else { adoption::compute(&store, &q).await };
    store.close().await?;
    let mut report = report?;

    let genesys_configured = !loaded.config.genesys.client_id.trim().is_empty();
    if args.emulator || (genesys_configured && !args.no_copilot) {
        let state_file = args.copilot_state.clone().unwrap_or_else(|| path.with_extension("copilot-job.json"));
        let opts = CopilotOptions {
            sync_max_ms: i64::from(args.copilot_sync_days) * 86_400_000,
            page_size: args.copilot_page_size,
            poll: Duration::from_millis(250),
            timeout: Duration::from_secs(900),
            state_file: Some(state_file),
        };
        let (client, emu) = if args.emulator {
            let emu = emulator::spawn(EmulatorConfig::default()).await.context("cannot start the embedded emulator")?;
            (GenesysClient::new(emu.client_settings(&loaded.config.genesys)?)?, Some(emu))
        } else {
            (GenesysClient::new(ClientSettings::from_config(&loaded.config.genesys, loaded.hosts.clone()))?, None)
        };
        let bar = ProgressBar::new_spinner();
        bar.set_style(
            ProgressStyle::with_template("{spinner} Copilot analytics: {msg} [{elapsed}]")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        bar.enable_steady_tick(Duration::from_millis(120));
        let r = copilot::fetch(&client, q.from, q.to, &opts, |p| {
            bar.set_message(match p {
                Progress::Query => "aggregates query".to_string(),
                Progress::JobCreated { job_id } => format!("job {job_id} created"),
                Progress::JobResumed { job_id, pages } => format!("resuming job {job_id} after {pages} page(s)"),
                Progress::JobWaiting { job_id } => format!("waiting for job {job_id}"),
                Progress::Page { pages, points } => format!("{pages} page(s), {points} data points"),
            })
        })
        .await;
        bar.finish_and_clear();
        if let Some(emu) = emu {
            emu.shutdown().await;
        }
        report.copilot = Some(r.context(
            "Copilot figures failed (a rerun continues a long job where it stopped; --no-copilot leaves them out)",
        )?);
    }

    if let Some(file) = &args.html {
        std::fs::write(file, adoption::report::html(&report))
            .with_context(|| format!("writing the HTML report {}", file.display()))?;
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else if args.csv {
        print!("{}", adoption::report::csv(&report));
    } else {
        print!("{}", adoption::report::table(&report));
        println!("{}", adoption::report::summary_line(&report));
    }
    if let Some(file) = &args.html {
        eprintln!("HTML report: {}", file.display());
    }
    Ok(Outcome::Ok)
}
