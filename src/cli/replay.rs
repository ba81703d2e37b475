//! `gc-assist replay --rules FILE --calls DIR`: backtest a rules file over recorded calls with
//! the live engine; per rule fires, timing, suppressions and precision/recall against the
//! calls' labels; `--compare OLD.yaml` shows what changes between two rule versions. A table
//! for people, `--json` for scripts. Exit 0 on a report, 2 on a missing folder, no calls or a
//! bad rules file.
//!
//! Parsed calls are kept in a cache of compiled calls (`--cache DIR`, by default the user's
//! cache folder; `--no-cache` to skip it), so a second run over the same files reads no JSON.
//! A cache that cannot be used is a warning on stderr; the run goes on without it.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use comfy_table::{presets::UTF8_FULL_CONDENSED, Table};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::json;

use super::Outcome;
use crate::contract::Catalogue;
use crate::triggers::replay::{self, Calls, Comparison, LoadOptions, Report, DEFAULT_TOLERANCE_MS};
use crate::triggers::replay_cache::CallCache;
use crate::triggers::{CompiledRules, RuleSet};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The rules file (YAML) to backtest.
    #[arg(long, value_name = "FILE")]
    pub rules: PathBuf,
    /// Folder of recorded calls: *.jsonl, and calls.json (queues, labels) when present.
    #[arg(long, value_name = "DIR")]
    pub calls: PathBuf,
    /// Print the report as JSON for scripts.
    #[arg(long)]
    pub json: bool,
    /// An older version of the rules: show, per rule, what changes.
    #[arg(long, value_name = "OLD.yaml")]
    pub compare: Option<PathBuf>,
    /// Prompt catalogue: every promptId must be in it, and a prompt's tags can name the
    /// label a rule is scored against.
    #[arg(long, value_name = "FILE")]
    pub catalogue: Option<PathBuf>,
    /// How long after a labelled moment a fire still counts as hitting it.
    #[arg(long, value_name = "SECONDS", default_value_t = DEFAULT_TOLERANCE_MS / 1000)]
    pub tolerance_seconds: i64,
    /// Where to keep compiled calls between runs (each call file parsed once, re-parsed
    /// when it changes). Default: $XDG_CACHE_HOME/gc-assist/replay, else
    /// ~/.cache/gc-assist/replay.
    #[arg(long, value_name = "DIR", conflicts_with = "no_cache")]
    pub cache: Option<PathBuf>,
    /// Parse every call file from its JSON; read and write no cache.
    #[arg(long)]
    pub no_cache: bool,
}

pub fn run(args: Args) -> anyhow::Result<Outcome> {
    let catalogue = match &args.catalogue {
        Some(p) => Some(Catalogue::load(p)?),
        None => None,
    };
    let new_rules = compile(&args.rules, catalogue.as_ref())?;
    let old_rules = args.compare.as_deref().map(|p| compile(p, catalogue.as_ref())).transpose()?;
    let show_progress = !args.json && std::io::stderr().is_terminal();

    let cache = if args.no_cache { None } else { args.cache.clone().or_else(CallCache::default_dir) };
    if !args.no_cache && cache.is_none() {
        eprintln!("warning: no cache folder is known (set XDG_CACHE_HOME or HOME, or pass --cache DIR); replaying without the cache");
    }
    let options = LoadOptions { cache, threads: 0 };
    let started = Instant::now();
    let bar = progress(show_progress, "loading calls");
    let (calls, loaded) = replay::load_calls_with(&args.calls, &options, |done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    })?;
    bar.finish_and_clear();
    let parse_time = started.elapsed();
    for w in &loaded.warnings {
        eprintln!("warning: {w}");
    }

    let tolerance_ms = args.tolerance_seconds.max(0).saturating_mul(1000);
    let (report, eval_time) = run_one(&new_rules, &calls, catalogue.as_ref(), tolerance_ms, show_progress, "replaying");
    let comparison = old_rules.map(|old| {
        let (old_report, _) =
            run_one(&old, &calls, catalogue.as_ref(), tolerance_ms, show_progress, "replaying old rules");
        replay::compare(&old_report, &report)
    });
    let utterances = calls.utterances();
    let rate = |d: Duration| (utterances as f64 / d.as_secs_f64().max(1e-9)).round();
    let timing = json!({
        "parseMs": ms(parse_time),
        "evaluateMs": ms(eval_time),
        "utterancesPerSecondEvaluate": rate(eval_time),
        "utterancesPerSecondEndToEnd": rate(parse_time + eval_time),
        "callsFromCache": loaded.cached,
        "callsParsed": loaded.parsed,
        "cacheDir": loaded.cache_dir.as_ref().map(|d| d.display().to_string()),
    });

    if args.json {
        let mut out = json!({
            "rulesFile": args.rules.display().to_string(),
            "callsDir": args.calls.display().to_string(),
            "report": report,
            "timing": timing,
        });
        if let (Some(c), Some(obj)) = (&comparison, out.as_object_mut()) {
            obj.insert("comparison".into(), serde_json::to_value(c)?);
        }
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(Outcome::Ok);
    }

    println!(
        "{} calls, {} utterances, {} events; {} rules from {}",
        report.calls,
        report.utterances,
        report.events,
        report.rules.len(),
        args.rules.display()
    );
    println!("{}", rules_table(&report));
    if report.labelled {
        println!(
            "Labels (a fire hits a label of its type from the labelled line to {} s after it):",
            tolerance_ms / 1000
        );
        println!("{}", labels_table(&report));
    } else {
        println!("The calls carry no labels (no calls.json): precision and recall are not available.");
    }
    if let Some(c) = &comparison {
        println!("Compared with {}:", args.compare.as_deref().unwrap_or(Path::new("")).display());
        println!("{}", compare_table(c));
        if c.changed_calls.is_empty() {
            println!("No call fires differently.");
        } else {
            println!("Calls that fire differently ({}): {}", c.changed_calls.len(), c.changed_calls.join(", "));
        }
    }
    let source = match &loaded.cache_dir {
        Some(d) => format!("{} from the cache in {}, {} parsed", loaded.cached, d.display(), loaded.parsed),
        None => format!("{} parsed, no cache", loaded.parsed),
    };
    println!(
        "Loaded {} calls ({source}) in {} ms, evaluated in {} ms: {} utterances/s evaluating, {} utterances/s end to end (loading included).",
        report.calls,
        ms(parse_time),
        ms(eval_time),
        rate(eval_time),
        rate(parse_time + eval_time)
    );
    Ok(Outcome::Ok)
}

fn compile(path: &Path, catalogue: Option<&Catalogue>) -> anyhow::Result<CompiledRules> {
    let set = RuleSet::load_with(path, catalogue)?;
    CompiledRules::compile(&set, None).with_context(|| format!("cannot compile the rules of {}", path.display()))
}

fn run_one(
    rules: &CompiledRules,
    calls: &Calls,
    catalogue: Option<&Catalogue>,
    tolerance_ms: i64,
    show_progress: bool,
    what: &str,
) -> (Report, Duration) {
    let labels = replay::rule_labels(rules, &calls.vocabulary, catalogue);
    let bar = progress(show_progress, what);
    bar.set_length(calls.calls.len() as u64);
    let started = Instant::now();
    let report = replay::replay(rules, calls, &labels, tolerance_ms, |done, _| bar.set_position(done as u64));
    let took = started.elapsed();
    bar.finish_and_clear();
    (report, took)
}

fn progress(show: bool, what: &str) -> Arc<ProgressBar> {
    let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
    if !show {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    bar.set_style(
        ProgressStyle::with_template(&format!("{{bar:40}} {{pos}}/{{len}} calls  {what}"))
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    Arc::new(bar)
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn pct(x: Option<f64>) -> String {
    x.map_or_else(|| "-".into(), |v| format!("{:.0}%", v * 100.0))
}

fn secs(x: Option<i64>) -> String {
    x.map_or_else(|| "-".into(), |v| format!("{:.1}", v as f64 / 1000.0))
}

fn rules_table(report: &Report) -> Table {
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED);
    t.set_header([
        "rule",
        "label",
        "fires",
        "per call",
        "median s",
        "p90 s",
        "cooldown",
        "cap",
        "shadow",
        "precision",
        "recall",
    ]);
    for r in &report.rules {
        t.add_row([
            r.id.clone(),
            r.label.clone().unwrap_or_else(|| "-".into()),
            r.fires.to_string(),
            format!("{:.2}", r.fires_per_call),
            secs(r.median_into_call_ms),
            secs(r.p90_into_call_ms),
            r.suppressed_cooldown.to_string(),
            r.suppressed_cap.to_string(),
            r.shadow_fires.to_string(),
            pct(r.precision),
            pct(r.recall),
        ]);
    }
    t
}

fn labels_table(report: &Report) -> Table {
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED);
    t.set_header(["label", "calls with it", "recalled", "recall", "rules"]);
    for l in &report.labels {
        t.add_row([
            l.label.clone(),
            l.moments.to_string(),
            l.recalled.to_string(),
            pct(Some(l.recall)),
            if l.rules.is_empty() { "(no rule)".into() } else { l.rules.join(", ") },
        ]);
    }
    t
}

fn compare_table(c: &Comparison) -> Table {
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED);
    t.set_header(["rule", "fires old→new", "precision old→new", "recall old→new", "calls changed"]);
    for r in &c.rules {
        let (o, n) = (r.old.as_ref(), r.new.as_ref());
        let fires = |s: Option<&replay::RuleStats>| s.map_or_else(|| "absent".into(), |s| s.fires.to_string());
        t.add_row([
            r.id.clone(),
            format!("{} → {}", fires(o), fires(n)),
            format!("{} → {}", pct(o.and_then(|s| s.precision)), pct(n.and_then(|s| s.precision))),
            format!("{} → {}", pct(o.and_then(|s| s.recall)), pct(n.and_then(|s| s.recall))),
            r.changed_calls.len().to_string(),
        ]);
    }
    t
}
