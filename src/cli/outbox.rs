//! `gc-assist outbox` (being built).

use super::{Ctx, Outcome};

#[derive(Debug, clap::Subcommand)]
pub enum OutboxCommand {
    /// Not built yet.
    Pending,
}

pub async fn run(_cmd: OutboxCommand, _ctx: &Ctx) -> anyhow::Result<Outcome> {
    anyhow::bail!("`gc-assist outbox` is not built yet")
}
