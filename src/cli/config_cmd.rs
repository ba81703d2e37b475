//! `gc-assist config show`: the effective configuration, secrets redacted.

use clap::Subcommand;

use super::{Ctx, Outcome};

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print the effective configuration as TOML, with where it came from.
    Show {
        /// Print the built-in defaults with their comments instead.
        #[arg(long)]
        defaults: bool,
    },
}

pub fn run(cmd: ConfigCommand, ctx: &Ctx) -> anyhow::Result<Outcome> {
    match cmd {
        ConfigCommand::Show { defaults: true } => {
            print!("{}", crate::config::DEFAULTS_TOML);
            Ok(Outcome::Ok)
        }
        ConfigCommand::Show { defaults: false } => {
            let loaded = ctx.load_config()?;
            println!("# layers: built-in defaults");
            if let Some(f) = &loaded.provenance.file {
                println!("#   ← file {}", f.display());
            }
            for (var, setting) in &loaded.provenance.env {
                println!("#   ← env {var} → {setting}");
            }
            println!("# resolved hosts: {}", loaded.hosts);
            println!();
            print!("{}", loaded.config.to_redacted_toml());
            Ok(Outcome::Ok)
        }
    }
}
