//! `gc-assist keys` (being built).

use super::{Ctx, Outcome};

#[derive(Debug, clap::Subcommand)]
pub enum KeysCommand {
    /// Not built yet.
    Pending,
}

pub async fn run(_cmd: KeysCommand, _ctx: &Ctx) -> anyhow::Result<Outcome> {
    anyhow::bail!("`gc-assist keys` is not built yet")
}
