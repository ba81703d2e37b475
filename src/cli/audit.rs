//! `gc-assist audit` (being built).

use super::{Ctx, Outcome};

#[derive(Debug, clap::Subcommand)]
pub enum AuditCommand {
    /// Not built yet.
    Pending,
}

pub async fn run(_cmd: AuditCommand, _ctx: &Ctx) -> anyhow::Result<Outcome> {
    anyhow::bail!("`gc-assist audit` is not built yet")
}
