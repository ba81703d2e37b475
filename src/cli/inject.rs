//! `gc-assist inject FILE`: validate a payload, find the conversation's connected agent,
//! write the prompt into that participant's attributes, and print the result with its
//! audit record (JSON on stdout, progress on stderr).

use std::io::Read;
use std::path::PathBuf;

use anyhow::Context;
use clap::ValueEnum;
use secrecy::SecretString;
use serde_json::json;
use uuid::Uuid;

use super::{Ctx, Outcome};
use crate::audit::Chain;
use crate::contract::{self, Catalogue, PromptContent, ValidPayload};
use crate::emulator::{self, Emulator, EmulatorConfig, NewConversation};
use crate::genesys::{ClientSettings, GenesysClient};
use crate::injection::direct::{audit_draft, Delivered, DirectError, DirectInjector, DirectOptions};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The injection payload (JSON, the tutorial's shape); `-` reads stdin.
    pub file: PathBuf,
    /// Run against an embedded Genesys Cloud emulator instead of a real org. The payload's
    /// conversation is created there if it does not exist.
    #[arg(long)]
    pub emulator: bool,
    /// With --emulator, reproduce one of the tutorial's common errors.
    #[arg(long, value_enum, requires = "emulator")]
    pub emulator_fault: Option<Fault>,
    /// Prompt catalogue to resolve promptId from (default: config `catalogue.path`).
    #[arg(long, value_name = "FILE")]
    pub catalogue: Option<PathBuf>,
    /// Write at once instead of waiting `delayMs` first.
    #[arg(long)]
    pub no_delay: bool,
    /// Stay until `autoDismissMs` has passed and mark the prompt expired.
    #[arg(long)]
    pub follow: bool,
    /// Send through a running gc-assist service (`gc-assist serve`) at this URL instead of
    /// writing participant data directly.
    #[arg(long, value_name = "URL", conflicts_with_all = ["emulator", "follow", "on_capacity"])]
    pub server: Option<url::Url>,
    /// API key for --server.
    #[arg(long, env = "GC_ASSIST_API_KEY", hide_env_values = true, value_name = "KEY")]
    pub api_key: Option<String>,
    /// With --server: FILE is JSONL, one payload per line; prints a summary.
    #[arg(long, requires = "server")]
    pub batch: bool,
    /// With --batch: requests in flight at once.
    #[arg(long, default_value_t = 8, value_name = "N")]
    pub concurrency: usize,
    /// With --server: the Idempotency-Key header (default: a fresh one).
    #[arg(long, value_name = "KEY")]
    pub idempotency_key: Option<String>,
    /// With --batch: print the summary as JSON.
    #[arg(long)]
    pub json: bool,
    /// Override the payload's `onCapacity`: `queue` waits for a free slot, `reject` fails
    /// with 409 at once.
    #[arg(long, value_enum)]
    pub on_capacity: Option<CapacityChoice>,
}

/// `onCapacity` values, for the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CapacityChoice {
    Queue,
    Reject,
}

/// The tutorial's "common errors", reproducible against the emulator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Fault {
    /// 401: the OAuth client secret is wrong.
    BadCredentials,
    /// 403: the OAuth client's role lacks conversation:communication:view.
    MissingPermission,
    /// 409: the agent already shows maxConcurrentPrompts prompts.
    BusyAgent,
    /// 429: Genesys asks us to wait longer than we are willing to.
    RateLimit,
    /// 503: the API keeps failing past the retry budget.
    ServerError,
}

/// Who the audit trail names for injections made by this command.
const ACTOR: &str = "cli:inject";

pub async fn run(args: Args, ctx: &Ctx) -> anyhow::Result<Outcome> {
    let bytes = read_input(&args.file)?;
    if let Some(server) = &args.server {
        let remote = super::inject_remote::Remote::new(server, args.api_key.as_deref().unwrap_or(""))?;
        return if args.batch {
            super::inject_remote::batch(&remote, &args.file, &bytes, args.concurrency, args.json).await
        } else {
            super::inject_remote::single(&remote, bytes, args.idempotency_key.clone()).await
        };
    }
    let loaded = ctx.load_config()?;
    let payload = match contract::validate_json(&bytes) {
        Ok(p) => p,
        Err(issues) => {
            eprintln!("✘ the payload is invalid ({} issue(s)); nothing was sent:", issues.0.len());
            for i in &issues.0 {
                eprintln!("  {}: {} [{}]", display_path(&i.path), i.message, i.code);
            }
            println!("{}", serde_json::to_string_pretty(&json!({"success": false, "issues": issues}))?);
            return Ok(Outcome::CheckFailed);
        }
    };
    let payload = match args.on_capacity {
        None => payload,
        Some(choice) => {
            let mut v = payload.to_json();
            v["onCapacity"] = json!(if choice == CapacityChoice::Reject { "reject" } else { "queue" });
            contract::validate_value(&v).map_err(|issues| anyhow::anyhow!("--on-capacity: {issues}"))?
        }
    };
    eprintln!("✔ payload valid: conversation {} prompt {}", payload.conversation_id(), payload.prompt_id());

    let catalogue_path = args.catalogue.clone().unwrap_or_else(|| loaded.config.catalogue.path.clone());
    let mut catalogue = load_catalogue(&catalogue_path, payload.inline_prompt().is_none() && !args.emulator)?;
    if catalogue.is_none() && args.emulator {
        // Against the emulator, the bundled example catalogue stands in for the user's, so
        // the tutorial's example works on a fresh checkout.
        eprintln!("note: no catalogue at {}; using the bundled example catalogue", catalogue_path.display());
        catalogue = Some(Catalogue::parse(super::demo::EXAMPLE_CATALOGUE, None)?);
    }
    let content = match contract::resolve_prompt(&payload, catalogue.as_ref()) {
        Ok(c) => c.clone(),
        Err(issue) => {
            eprintln!("✘ {}: {} [{}]", issue.path, issue.message, issue.code);
            println!("{}", serde_json::to_string_pretty(&json!({"success": false, "issues": [issue]}))?);
            return Ok(Outcome::CheckFailed);
        }
    };
    if !payload.trigger_conditions().is_empty() {
        eprintln!(
            "note: {} trigger condition(s) are recorded but not evaluated by a direct injection; \
             `gc-assist serve` arms them until they hold",
            payload.trigger_conditions().len()
        );
    }

    let (client, _emu) = if args.emulator {
        let (client, emu) = emulator_client(&loaded, &payload, args.emulator_fault).await?;
        (client, Some(emu))
    } else {
        let settings = ClientSettings::from_config(&loaded.config.genesys, loaded.hosts.clone());
        (GenesysClient::new(settings)?, None)
    };
    let injector = DirectInjector::new(
        client,
        DirectOptions { honour_delay: !args.no_delay, attribute_prefix: loaded.config.inject.attribute_prefix.clone() },
    );
    if args.emulator_fault == Some(Fault::BusyAgent) {
        fill_agent_slots(&injector, &payload, &content).await?;
    }

    let injection_id = Uuid::now_v7();
    eprintln!("… delivering (waits delayMs = {} ms first)", if args.no_delay { 0 } else { payload.display().delay_ms });
    let result = injector.inject(injection_id, &payload, &content).await;
    let mut chain = Chain::genesis();
    match result {
        Ok(delivered) => {
            let audit = chain.append_now(audit_draft(
                &payload,
                injection_id,
                "delivered",
                Some(delivered.latency_ms),
                None,
                ACTOR,
            ))?;
            eprintln!("✔ delivered to agent participant {} in {} ms", delivered.participant_id, delivered.latency_ms);
            println!("{}", serde_json::to_string_pretty(&success_json(&delivered, &audit))?);
            if args.follow {
                let wait = (delivered.prompt.expires_at - chrono::Utc::now()).to_std().unwrap_or_default();
                eprintln!("… following: the prompt auto-dismisses in {} ms", wait.as_millis());
                tokio::time::sleep(wait).await;
                injector.mark(&delivered, "expired").await?;
                let expired = chain.append_now(audit_draft(&payload, injection_id, "expired", None, None, ACTOR))?;
                println!("{}", serde_json::to_string_pretty(&json!({"auditLog": expired}))?);
            }
            Ok(Outcome::Ok)
        }
        Err(e) => {
            let audit =
                chain.append_now(audit_draft(&payload, injection_id, "failed", None, Some(e.to_string()), ACTOR))?;
            println!(
                "{}",
                serde_json::to_string_pretty(&json!({
                    "success": false, "injectionId": injection_id, "status": e.status(),
                    "error": e.to_string(), "auditLog": audit,
                }))?
            );
            Err(anyhow::Error::new(e).context("the prompt was not delivered"))
        }
    }
}

fn read_input(file: &PathBuf) -> anyhow::Result<Vec<u8>> {
    if file.as_os_str() == "-" {
        let mut buf = Vec::new();
        std::io::stdin().read_to_end(&mut buf).context("cannot read the payload from stdin")?;
        Ok(buf)
    } else {
        std::fs::read(file).with_context(|| format!("cannot read the payload file {}", file.display()))
    }
}

fn load_catalogue(path: &std::path::Path, needed: bool) -> anyhow::Result<Option<Catalogue>> {
    if !path.exists() {
        if needed {
            eprintln!(
                "note: no prompt catalogue at {} (set catalogue.path or --catalogue, or import one with \
                 `gc-assist prompts import FILE`)",
                path.display()
            );
        }
        return Ok(None);
    }
    Ok(Some(Catalogue::load(path).with_context(|| format!("cannot load the prompt catalogue {}", path.display()))?))
}

fn display_path(path: &str) -> &str {
    if path.is_empty() {
        "(payload)"
    } else {
        path
    }
}

/// Start an embedded emulator holding the payload's conversation, and a client for it.
async fn emulator_client(
    loaded: &crate::config::Loaded,
    payload: &ValidPayload,
    fault: Option<Fault>,
) -> anyhow::Result<(GenesysClient, Emulator)> {
    let emu = emulator::spawn(EmulatorConfig::default()).await.context("cannot start the embedded emulator")?;
    let conversation_id = payload.conversation_id().to_string();
    if !emu.calls().iter().any(|c| c.conversation_id == conversation_id) {
        emu.create_conversation(NewConversation { conversation_id: Some(conversation_id), ..Default::default() });
    }
    eprintln!("✔ emulator at {}", emu.base_url());
    let mut settings = emu.client_settings(&loaded.config.genesys)?;
    let faults = emu.faults();
    match fault {
        Some(Fault::BadCredentials) => settings.client_secret = SecretString::from("not-the-secret".to_string()),
        Some(Fault::MissingPermission) => faults.deny("/api/v2/conversations/", "conversation:communication:view"),
        Some(Fault::RateLimit) => faults.rate_limit_next(100, 600),
        Some(Fault::ServerError) => faults.fail_next(100, 503),
        Some(Fault::BusyAgent) | None => {}
    }
    Ok((GenesysClient::new(settings)?, emu))
}

/// Occupy every slot the payload allows with other prompts, as a busy agent would have.
async fn fill_agent_slots(
    injector: &DirectInjector,
    payload: &ValidPayload,
    content: &PromptContent,
) -> anyhow::Result<()> {
    for _ in 0..payload.display().max_concurrent_prompts {
        match injector.inject(Uuid::now_v7(), payload, content).await {
            Ok(_) => {}
            Err(DirectError::Capacity { .. }) => break,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

fn success_json(d: &Delivered, audit: &impl serde::Serialize) -> serde_json::Value {
    json!({
        "success": true,
        "injectionId": d.injection_id,
        "status": "delivered",
        "conversationId": d.conversation_id,
        "participantId": d.participant_id,
        "agentUserId": d.agent_user_id,
        "promptId": d.prompt.prompt_id,
        "acceptedAt": crate::injection::participant_data::timestamp(d.accepted_at),
        "shownAt": crate::injection::participant_data::timestamp(d.prompt.shown_at),
        "expiresAt": crate::injection::participant_data::timestamp(d.prompt.expires_at),
        "latencyMs": d.latency_ms,
        "queuedMs": d.queued_ms,
        "attributes": d.attributes,
        "auditLog": audit,
    })
}
