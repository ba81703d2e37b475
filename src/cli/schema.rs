//! `gc-assist schema`: print (or write) the JSON Schema of the injection payload, so other
//! tools can check payloads against the same contract.

use std::path::PathBuf;

use anyhow::Context;

use super::Outcome;
use crate::contract;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Write the schema to this file instead of standard output.
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
}

pub fn run(args: Args) -> anyhow::Result<Outcome> {
    let text = serde_json::to_string_pretty(&contract::json_schema())? + "\n";
    match &args.output {
        Some(path) => {
            std::fs::write(path, text).with_context(|| format!("cannot write the schema to {}", path.display()))?;
            eprintln!("wrote the injection payload's JSON Schema to {}", path.display());
        }
        None => print!("{text}"),
    }
    Ok(Outcome::Ok)
}
