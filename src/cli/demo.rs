//! `gc-assist demo` (being built).

use super::Outcome;

#[derive(Debug, clap::Args)]
pub struct Args {}

pub async fn run(_args: Args, _ctx: &super::Ctx) -> anyhow::Result<Outcome> {
    anyhow::bail!("`gc-assist demo` is not built yet")
}
