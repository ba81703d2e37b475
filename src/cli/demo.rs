//! `gc-assist demo`: the tutorial's complete example, run for real against an embedded
//! Genesys Cloud emulator, printing each step. Needs no Genesys org and no files.

use std::time::Instant;

use anyhow::Context;
use secrecy::SecretString;
use uuid::Uuid;

use super::{Ctx, Outcome};
use crate::audit::Chain;
use crate::contract::{self, Catalogue};
use crate::emulator::{self, EmulatorConfig, NewConversation};
use crate::genesys::{region, ClientSettings, GenesysClient};
use crate::injection::direct::{audit_draft, DirectError, DirectInjector, DirectOptions};
use crate::injection::participant_data;

/// The tutorial's example payload, unchanged.
pub const TUTORIAL_PAYLOAD: &str = include_str!("../../examples/injection.json");
/// The example prompt catalogue.
pub const EXAMPLE_CATALOGUE: &str = include_str!("../../examples/prompts.yaml");

/// Who the audit trail names for the demo's injections.
const ACTOR: &str = "demo";

#[derive(Debug, clap::Args)]
pub struct Args {
    /// For scripts and CI: plain output, no pauses.
    #[arg(long)]
    pub headless: bool,
}

struct Steps {
    n: usize,
    started: Instant,
}

impl Steps {
    fn step(&mut self, title: &str) {
        self.n += 1;
        println!("\n[{}] {title}  (+{} ms)", self.n, self.started.elapsed().as_millis());
    }
}

fn say(line: impl AsRef<str>) {
    println!("    {}", line.as_ref());
}

pub async fn run(_args: Args, ctx: &Ctx) -> anyhow::Result<Outcome> {
    let loaded = ctx.load_config()?;
    let mut s = Steps { n: 0, started: Instant::now() };
    println!("gc-assist demo: the tutorial's prompt injection, end to end, against a local Genesys Cloud emulator.");

    s.step("Start the Genesys Cloud emulator");
    let emu = emulator::spawn(EmulatorConfig::default()).await.context("cannot start the embedded emulator")?;
    say(format!("listening at {} (login and API paths on one host)", emu.base_url()));
    say(format!("{} recorded conversations loaded", emu.calls().len()));

    s.step("Validate the tutorial's payload (CONTRACT §1)");
    let payload = contract::validate_json(TUTORIAL_PAYLOAD.as_bytes())
        .map_err(|issues| anyhow::anyhow!("the bundled tutorial payload is invalid: {issues}"))?;
    say(format!(
        "valid: conversation {}, prompt {}, delay {} ms, at most {} at once, auto-dismiss {} ms",
        payload.conversation_id(),
        payload.prompt_id(),
        payload.display().delay_ms,
        payload.display().max_concurrent_prompts,
        payload.display().auto_dismiss_ms
    ));
    let bad = br#"{"conversationId":"not-a-uuid","promptId":"d4e5f6a7-b8c9-0123-4567-890abcdef123","displaySettings":{"delayMs":100,"maxConcurrentPrompts":5,"autoDismisMs":30000}}"#;
    if let Err(issues) = contract::validate_json(bad) {
        say(format!("a broken payload gets every issue at once ({}):", issues.0.len()));
        for i in &issues.0 {
            say(format!("  {}: {} [{}]", i.path, i.message, i.code));
        }
    }

    s.step("Resolve the prompt from the catalogue");
    let catalogue = Catalogue::parse(EXAMPLE_CATALOGUE, None).context("the bundled example catalogue is invalid")?;
    let content = contract::resolve_prompt(&payload, Some(&catalogue))
        .map_err(|i| anyhow::anyhow!("{}: {}", i.path, i.message))?
        .clone();
    say(format!(
        "{} prompts in the catalogue; {} → \"{}\" ({:?})",
        catalogue.len(),
        payload.prompt_id(),
        content.title,
        content.priority
    ));

    s.step("Authenticate with OAuth client credentials");
    let conversation_id = payload.conversation_id().to_string();
    emu.create_conversation(NewConversation { conversation_id: Some(conversation_id.clone()), ..Default::default() });
    let mut settings = ClientSettings::from_config(&loaded.config.genesys, region::resolve(&emu.base_url())?);
    settings.client_id = emu.client_id().to_string();
    settings.client_secret = SecretString::from(emu.client_secret().to_string());
    let client = GenesysClient::new(settings)?;
    let info = client.token_info().await.context("token check failed")?;
    say(format!(
        "token for OAuth client {:?} in org {:?}",
        info.oauth_client.as_ref().and_then(|c| c.name.clone()).unwrap_or_default(),
        info.organization.as_ref().and_then(|o| o.name.clone()).unwrap_or_default()
    ));

    s.step("Find the conversation's connected agent");
    let conversation = client.get_conversation(&conversation_id).await?;
    let agent = conversation.connected_agent().context("the demo conversation has no connected agent")?;
    say(format!(
        "agent participant {} (user {}), {} participants in all",
        agent.id,
        agent.user_id.clone().unwrap_or_default(),
        conversation.participants.len()
    ));

    s.step("Inject: wait delayMs, then write the prompt into participant data");
    let prefix = loaded.config.inject.attribute_prefix.clone();
    let injector =
        DirectInjector::new(client.clone(), DirectOptions { honour_delay: true, attribute_prefix: prefix.clone() });
    let mut chain = Chain::genesis();
    let injection_id = Uuid::now_v7();
    let delivered = injector.inject(injection_id, &payload, &content).await?;
    say(format!(
        "delivered in {} ms (request to 2xx, after the {} ms display delay)",
        delivered.latency_ms,
        payload.display().delay_ms
    ));
    for (k, v) in &delivered.attributes {
        say(format!("  {k} = {v}"));
    }
    let audit =
        chain.append_now(audit_draft(&payload, injection_id, "delivered", Some(delivered.latency_ms), None, ACTOR))?;

    s.step("Read the participant data back from Genesys");
    let again = client.get_conversation(&conversation_id).await?;
    let attrs = again.connected_agent().map(|a| a.attributes.clone()).unwrap_or_default();
    let shown = participant_data::read_prompts(&prefix, &attrs);
    say(format!(
        "{} gc-assist prompt(s) on the agent participant; status {:?}",
        shown.len(),
        shown.first().map(|(_, p)| p.status.clone())
    ));

    s.step("Protect the agent's attention: maxConcurrentPrompts = 2");
    let second = injector.inject(Uuid::now_v7(), &payload, &content).await?;
    chain.append_now(audit_draft(&payload, second.injection_id, "delivered", Some(second.latency_ms), None, ACTOR))?;
    say(format!("second prompt delivered in {} ms; two are now on screen", second.latency_ms));
    let mut reject = payload.to_json();
    reject["onCapacity"] = serde_json::json!("reject");
    let reject = contract::validate_value(&reject).map_err(|i| anyhow::anyhow!("{i}"))?;
    let third_id = Uuid::now_v7();
    match injector.inject(third_id, &reject, &content).await {
        Err(e @ DirectError::Capacity { .. }) => {
            say(format!("third prompt refused: {e}"));
            chain.append_now(audit_draft(&payload, third_id, "failed", None, Some(e.to_string()), ACTOR))?;
        }
        Ok(_) => anyhow::bail!("the third prompt should have been refused"),
        Err(e) => return Err(e.into()),
    }

    s.step("Audit record (CONTRACT §7) of the first injection");
    for line in serde_json::to_string_pretty(&audit)?.lines() {
        say(line);
    }

    let stats = emu.stats();
    println!(
        "\nDone in {} ms: {} token request(s), {} API calls, {} answered 429. Next: `gc-assist inject examples/injection.json --emulator`.",
        s.started.elapsed().as_millis(),
        stats.token_requests,
        stats.api_requests,
        stats.responses_429
    );
    emu.shutdown().await;
    Ok(Outcome::Ok)
}
