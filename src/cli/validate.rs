//! `gc-assist validate FILE|-`: check an injection payload against the contract and print
//! every issue (for people, or `--json` for scripts). Exit 0 valid, 1 invalid, 2 unreadable.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde_json::{json, Value};

use super::Outcome;
use crate::contract::{self, catalogue::unknown_prompt, Catalogue, Issues};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The payload (JSON) to check, or `-` to read standard input.
    #[arg(value_name = "FILE|-")]
    pub file: PathBuf,
    /// Print `{"valid": bool, "issues": [{path, code, message}]}` for scripts.
    #[arg(long)]
    pub json: bool,
    /// Prompt catalogue to look `promptId` up in when the payload has no inline prompt.
    /// Default: `catalogue.path` from the configuration.
    #[arg(long, value_name = "FILE")]
    pub catalogue: Option<PathBuf>,
}

pub fn run(args: Args, ctx: &super::Ctx) -> anyhow::Result<Outcome> {
    let bytes = read_input(&args.file)?;
    // The promptId to look up in the catalogue, when there is no inline prompt. An otherwise
    // invalid payload still gets the lookup (if its promptId is fine), so one run shows
    // every problem.
    let (mut issues, lookup) = match contract::validate_json(&bytes) {
        Ok(p) => (Issues::new(), p.inline_prompt().is_none().then(|| p.prompt_id())),
        Err(issues) => {
            let id = if issues.iter().any(|i| i.path.is_empty() || i.path == "promptId") {
                None
            } else {
                catalogue_prompt_id(&bytes)
            };
            (issues, id)
        }
    };
    if let Some(id) = lookup {
        check_catalogue(&args, ctx, id, &mut issues)?;
    }

    let valid = issues.is_empty();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&json!({"valid": valid, "issues": issues}))?);
    } else if valid {
        println!("✔ valid");
    } else {
        let n = issues.len();
        println!("✘ invalid: {n} issue{}", if n == 1 { "" } else { "s" });
        for issue in &issues {
            println!("{issue}");
        }
    }
    Ok(if valid { Outcome::Ok } else { Outcome::CheckFailed })
}

fn read_input(file: &Path) -> anyhow::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    if file.as_os_str() == "-" {
        std::io::stdin().read_to_end(&mut bytes).context("cannot read the payload from standard input")?;
    } else {
        bytes = std::fs::read(file).with_context(|| {
            format!("cannot read payload file {}; check the path (or pass - for stdin)", file.display())
        })?;
    }
    Ok(bytes)
}

/// The payload's `promptId`, when the raw JSON has one that parses and no inline `prompt`.
fn catalogue_prompt_id(bytes: &[u8]) -> Option<uuid::Uuid> {
    let v: Value = serde_json::from_slice(bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes)).ok()?;
    let obj = v.as_object()?;
    if obj.contains_key("prompt") {
        return None;
    }
    uuid::Uuid::try_parse(obj.get("promptId")?.as_str()?).ok()
}

/// Look `id` up in the catalogue; a missing catalogue file is a note, not an issue.
fn check_catalogue(args: &Args, ctx: &super::Ctx, id: uuid::Uuid, issues: &mut Issues) -> anyhow::Result<()> {
    let path = match &args.catalogue {
        Some(p) => p.clone(),
        None => ctx.load_config()?.config.catalogue.path,
    };
    if !path.exists() {
        eprintln!(
            "note: prompt catalogue {} does not exist, so promptId was not looked up \
             (import one with `gc-assist prompts import FILE`, or send an inline `prompt`)",
            path.display()
        );
        return Ok(());
    }
    let catalogue = Catalogue::load(&path)
        .with_context(|| format!("cannot check promptId: fix the prompt catalogue {} first", path.display()))?;
    if catalogue.get(&id).is_none() {
        issues.push(unknown_prompt(&id, true));
    }
    Ok(())
}
