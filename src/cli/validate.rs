//! `gc-assist validate` (being built).

use super::Outcome;

#[derive(Debug, clap::Args)]
pub struct Args {}

pub fn run(_args: Args, _ctx: &super::Ctx) -> anyhow::Result<Outcome> {
    anyhow::bail!("`gc-assist validate` is not built yet")
}
