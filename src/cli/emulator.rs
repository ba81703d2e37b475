//! `gc-assist emulator` (being built).

use super::Outcome;

#[derive(Debug, clap::Args)]
pub struct Args {}

pub async fn run(_args: Args, _ctx: &super::Ctx) -> anyhow::Result<Outcome> {
    anyhow::bail!("`gc-assist emulator` is not built yet")
}
