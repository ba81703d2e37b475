//! `gc-assist serve` (being built).

use super::{Ctx, Outcome};

#[derive(Debug, clap::Args)]
pub struct Args {}

pub async fn run(_args: Args, _ctx: &Ctx) -> anyhow::Result<Outcome> {
    anyhow::bail!("`gc-assist serve` is not built yet")
}
