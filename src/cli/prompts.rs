//! `gc-assist prompts`: check and install a prompt catalogue (`import`), and show the
//! installed one (`list`).

use std::path::PathBuf;

use anyhow::Context;
use comfy_table::{presets::UTF8_FULL_CONDENSED, ContentArrangement, Table};
use serde_json::json;

use super::{Ctx, Outcome};
use crate::contract::{Catalogue, CatalogueError};

#[derive(Debug, clap::Subcommand)]
pub enum PromptsCommand {
    /// Check a catalogue file (YAML or JSON) and install it, as canonical YAML, at the
    /// configured `catalogue.path`.
    Import(ImportArgs),
    /// List the prompts of the installed catalogue.
    List(ListArgs),
}

#[derive(Debug, clap::Args)]
pub struct ImportArgs {
    /// Catalogue file: `{prompts: [{id, name?, title, body, url?, priority?, tags?}]}`.
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    /// Only check the file; write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print JSON for scripts.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct ListArgs {
    /// Print JSON for scripts.
    #[arg(long)]
    pub json: bool,
}

pub fn run(cmd: PromptsCommand, ctx: &Ctx) -> anyhow::Result<Outcome> {
    match cmd {
        PromptsCommand::Import(a) => import(a, ctx),
        PromptsCommand::List(a) => list(a, ctx),
    }
}

fn import(args: ImportArgs, ctx: &Ctx) -> anyhow::Result<Outcome> {
    let target = ctx.load_config()?.config.catalogue.path;
    let catalogue = match Catalogue::load(&args.file) {
        Ok(c) => c,
        Err(CatalogueError::Invalid { issues, .. }) => {
            if args.json {
                println!("{}", serde_json::to_string_pretty(&json!({"valid": false, "issues": issues}))?);
            } else {
                let n = issues.len();
                println!("✘ {} is not a valid prompt catalogue: {n} issue{}", args.file.display(), plural(n));
                for issue in &issues {
                    println!("{issue}");
                }
                println!("nothing was written to {}", target.display());
            }
            return Ok(Outcome::CheckFailed);
        }
        Err(e) => return Err(e.into()),
    };
    if !args.dry_run {
        catalogue.save(&target)?;
    }
    let n = catalogue.len();
    if args.json {
        let report = json!({
            "valid": true, "issues": [], "count": n,
            "path": target.display().to_string(), "written": !args.dry_run,
        });
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else if args.dry_run {
        println!("✔ {n} prompt{} valid; nothing written (--dry-run), would write {}", plural(n), target.display());
    } else {
        println!("✔ imported {n} prompt{} into {}", plural(n), target.display());
    }
    Ok(Outcome::Ok)
}

fn list(args: ListArgs, ctx: &Ctx) -> anyhow::Result<Outcome> {
    let path = ctx.load_config()?.config.catalogue.path;
    if !path.exists() {
        anyhow::bail!(
            "no prompt catalogue at {}; import one with `gc-assist prompts import FILE` \
             (or point catalogue.path at it in gc-assist.toml)",
            path.display()
        );
    }
    let catalogue = Catalogue::load(&path).with_context(|| format!("cannot list prompts from {}", path.display()))?;
    if args.json {
        let mut doc = catalogue.to_json();
        doc["path"] = json!(path.display().to_string());
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(Outcome::Ok);
    }
    let mut table = Table::new();
    table
        .load_preset(UTF8_FULL_CONDENSED)
        .set_content_arrangement(ContentArrangement::Dynamic)
        .set_header(["id", "name", "priority", "title"]);
    for e in &catalogue {
        table.add_row([
            e.id.to_string(),
            e.name.clone().unwrap_or_default(),
            e.content.priority.to_string(),
            e.content.title.clone(),
        ]);
    }
    println!("{table}");
    println!("{} prompt{} in {}", catalogue.len(), plural(catalogue.len()), path.display());
    Ok(Outcome::Ok)
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}
