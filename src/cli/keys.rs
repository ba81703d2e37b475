//! `gc-assist keys new`: a fresh random API key, printed once, and the configuration to
//! paste (only the key's SHA-256 is ever stored).

use base64::Engine;
use rand::RngCore;

use super::{Ctx, Outcome};
use crate::server::{key_hash_hex, Role};

#[derive(Debug, clap::Subcommand)]
pub enum KeysCommand {
    /// Create a key: prints it once, and the `[[server.api_keys]]` entry with its hash.
    New(NewArgs),
}

#[derive(Debug, clap::Args)]
pub struct NewArgs {
    /// A name for the key (who uses it); appears in audit records as the actor.
    #[arg(long, value_name = "NAME")]
    pub id: String,
    /// `metrics` (scrape /metrics only), `injector` (prompt injections) or `admin` (everything).
    #[arg(long, default_value = "injector")]
    pub role: String,
    /// Print JSON `{id, role, key, sha256}` instead.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(cmd: KeysCommand, _ctx: &Ctx) -> anyhow::Result<Outcome> {
    let KeysCommand::New(a) = cmd;
    if Role::parse(&a.role).is_none() {
        anyhow::bail!("--role must be \"metrics\", \"injector\" or \"admin\" (got {:?})", a.role);
    }
    let id = a.id.trim();
    if id.is_empty() || id.len() > 64 || !id.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
        anyhow::bail!("--id must be 1-64 characters of letters, digits, '-', '_' or '.' (got {:?})", a.id);
    }
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    let key = format!("gca_{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes));
    let hash = key_hash_hex(&key);
    if a.json {
        println!("{}", serde_json::json!({ "id": id, "role": a.role, "key": key, "sha256": hash }));
    } else {
        println!("API key (shown once; give it to the caller, it is not stored anywhere):\n\n  {key}\n");
        println!(
            "Add to gc-assist.toml:\n\n[[server.api_keys]]\nid = \"{id}\"\nsha256 = \"{hash}\"\nrole = \"{}\"",
            a.role
        );
    }
    Ok(Outcome::Ok)
}
