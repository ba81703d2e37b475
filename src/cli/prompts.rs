//! `gc-assist prompts` (being built).

use super::{Ctx, Outcome};

#[derive(Debug, clap::Subcommand)]
pub enum PromptsCommand {
    /// Import a catalogue file.
    Import,
}

pub fn run(_cmd: PromptsCommand, _ctx: &Ctx) -> anyhow::Result<Outcome> {
    anyhow::bail!("`gc-assist prompts` is not built yet")
}
