//! `gc-assist regions`: every Genesys Cloud region and the hosts derived from it.

use comfy_table::{presets::UTF8_FULL_CONDENSED, Table};

use super::Outcome;
use crate::genesys::region::{hosts_for, resolve, REGIONS};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Resolve one region name, domain or API base URL instead of listing all.
    pub region: Option<String>,
    /// Print JSON for scripts.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: Args) -> anyhow::Result<Outcome> {
    let rows: Vec<_> = match &args.region {
        Some(input) => {
            let h = resolve(input)?;
            vec![(h.region.map(|r| r.name).unwrap_or("custom").to_string(), h.region.map(|r| r.note).unwrap_or(""), h)]
        }
        None => REGIONS.iter().map(|r| (r.name.to_string(), r.note, hosts_for(*r))).collect(),
    };
    if args.json {
        let list: Vec<_> = rows
            .iter()
            .map(|(name, note, h)| {
                serde_json::json!({
                    "name": name, "domain": h.region.map(|r| r.domain), "note": note,
                    "api": h.api.as_str().trim_end_matches('/'), "login": h.login.as_str().trim_end_matches('/'),
                    "streaming": h.streaming.as_str().trim_end_matches('/'), "apps": h.apps.as_str().trim_end_matches('/'),
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(Outcome::Ok);
    }
    let mut table = Table::new();
    table.load_preset(UTF8_FULL_CONDENSED).set_header(["region", "api", "login", "streaming", "note"]);
    for (name, note, h) in rows {
        table.add_row([
            name,
            h.api.as_str().trim_end_matches('/').to_string(),
            h.login.as_str().trim_end_matches('/').to_string(),
            h.streaming.as_str().trim_end_matches('/').to_string(),
            note.to_string(),
        ]);
    }
    println!("{table}");
    Ok(Outcome::Ok)
}
