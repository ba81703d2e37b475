//! `gc-assist demo`: the tutorial's complete example, run for real against an embedded
//! Genesys Cloud emulator, printing each step. Needs no Genesys org and no files. Ends by
//! replaying recorded calls through the emulator's websocket, so the example rules fire
//! from live transcripts.

use std::time::{Duration, Instant};

use anyhow::Context;
use secrecy::SecretString;
use uuid::Uuid;

use super::{Ctx, Outcome};
use crate::audit::Chain;
use crate::contract::{self, Catalogue};
use crate::emulator::{self, EmulatorConfig, NewConversation};
use crate::genesys::GenesysClient;
use crate::injection::direct::{audit_draft, DirectError, DirectInjector, DirectOptions};
use crate::injection::participant_data;

/// The tutorial's example payload, unchanged.
pub const TUTORIAL_PAYLOAD: &str = include_str!("../../examples/injection.json");
/// The example prompt catalogue.
pub const EXAMPLE_CATALOGUE: &str = include_str!("../../examples/prompts.yaml");
/// The example rules file (its prompts are in the example catalogue).
pub const EXAMPLE_RULES: &str = include_str!("../../examples/rules.yaml");
/// Recorded calls the demo replays through the emulator, by scenario.
const REPLAYED: [&str; 3] = ["cancel_threat", "low_asr_confidence", "agent_only_keyword"];
/// Replay speed: a few minutes of calls in a few seconds.
const REPLAY_SPEED: f64 = 40.0;

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
    let client = GenesysClient::new(emu.client_settings(&loaded.config.genesys)?)?;
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

    run_service_part(&mut s, &loaded.config, &emu, client.clone(), &payload).await?;

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

/// The same tutorial payload through `gc-assist serve`'s stack: REST API, durable store,
/// the agent's panel stream, signed webhooks to a local receiver, and the audit chain.
async fn run_service_part(
    s: &mut Steps,
    base: &crate::config::Config,
    emu: &crate::emulator::Emulator,
    client: GenesysClient,
    tutorial: &contract::ValidPayload,
) -> anyhow::Result<()> {
    use crate::audit::ops;
    use crate::config::ApiKeyConfig;
    use crate::server::key_hash_hex;
    use crate::webhook::receiver::{Receiver, ReceiverConfig};
    use crate::webhook::WebhookSecret;
    use secrecy::ExposeSecret;

    s.step("Start the service: SQLite store, webhook worker, audit checkpointer");
    let dir = std::env::temp_dir().join(format!("gc-assist-demo-{}", Uuid::now_v7()));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    std::fs::write(dir.join("prompts.yaml"), EXAMPLE_CATALOGUE)?;
    std::fs::write(dir.join("rules.yaml"), EXAMPLE_RULES)?;
    let secret = WebhookSecret::generate(&mut rand::rngs::OsRng);
    let receiver = Receiver::spawn(ReceiverConfig::new(vec![secret.clone()])).await?;
    let injector_key = Uuid::new_v4().simple().to_string();
    let admin_key = Uuid::new_v4().simple().to_string();
    let mut cfg = base.clone();
    cfg.store.path = dir.join("gc-assist.db");
    cfg.catalogue.path = dir.join("prompts.yaml");
    cfg.audit.key_file = dir.join("audit.key");
    cfg.audit.anchor_file = dir.join("audit-anchors.jsonl");
    cfg.server.api_keys = vec![
        ApiKeyConfig {
            id: "demo-knowledge-system".into(),
            sha256: key_hash_hex(&injector_key),
            role: "injector".into(),
        },
        ApiKeyConfig { id: "demo-admin".into(), sha256: key_hash_hex(&admin_key), role: "admin".into() },
    ];
    cfg.webhook.secret = SecretString::from(secret.to_whsec().expose_secret().to_string());
    cfg.webhook.allow_private = vec!["127.0.0.1/32".into()];
    cfg.webhook.schedule_secs = vec![1, 2, 5];
    // Live triggers on every queue of the emulator's calls, with the example rules.
    let mut queues: Vec<String> = emu.calls().into_iter().map(|c| c.queue_id).collect();
    queues.sort();
    queues.dedup();
    cfg.triggers.queues = queues;
    cfg.triggers.rules_file = dir.join("rules.yaml");
    let stack = super::serve::Stack::start(&cfg, Some(client), "127.0.0.1:0").await?;
    let api = format!("http://{}", stack.addr);
    say(format!("API at {api}; state in {}", dir.display()));
    say(format!("webhook receiver at {} (verifies Standard Webhooks signatures)", receiver.url()));

    let call = emu.calls().into_iter().find(|c| c.scenario == "billing_refund").context("no billing call loaded")?;
    let http = reqwest::Client::new();
    let post = |body: serde_json::Value| {
        http.post(format!("{api}/v1/prompt-injections")).bearer_auth(&injector_key).json(&body).send()
    };

    s.step("POST the tutorial's payload: it carries trigger conditions, so it is armed");
    let mut body = tutorial.to_json();
    body["conversationId"] = serde_json::json!(call.conversation_id);
    body["webhookUrl"] = serde_json::json!(receiver.url());
    let armed: serde_json::Value = post(body.clone()).await?.error_for_status()?.json().await?;
    let armed_id = armed["injectionId"].as_str().unwrap_or_default().to_string();
    say(format!("201 {} (accepted in {} ms)", armed["status"], armed["latencyMs"]));

    s.step("Watch the agent's panel stream while a prompt without conditions arrives");
    let mut stream = http
        .get(format!("{api}/v1/conversations/{}/stream", call.conversation_id))
        .bearer_auth(&injector_key)
        .send()
        .await?
        .error_for_status()?;
    body["triggerConditions"] = serde_json::json!([]);
    body["promptId"] = serde_json::json!("6f1c2a3b-4d5e-4f60-8a71-92b3c4d5e6f7");
    let sent_at = Instant::now();
    let now: serde_json::Value = post(body).await?.error_for_status()?.json().await?;
    say(format!("201 {}; the panel receives it after delayMs:", now["status"]));
    let mut buf = String::new();
    let shown = next_prompt_event(&mut stream, &mut buf).await?;
    say(format!("  +{} ms  prompt \"{}\"", sent_at.elapsed().as_millis(), shown["title"].as_str().unwrap_or("?")));

    s.step("The conditions hold (the trigger engine fires it): the armed prompt is admitted");
    let fired: serde_json::Value = http
        .post(format!("{api}/v1/prompt-injections/{armed_id}/fire"))
        .bearer_auth(&admin_key)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    say(format!("fire → {}", fired["status"]));
    let shown = next_prompt_event(&mut stream, &mut buf).await?;
    say(format!("  panel: prompt \"{}\"", shown["title"].as_str().unwrap_or("?")));
    let detail: serde_json::Value = http
        .get(format!("{api}/v1/prompt-injections/{armed_id}"))
        .bearer_auth(&injector_key)
        .send()
        .await?
        .json()
        .await?;
    let steps: Vec<String> = detail["timeline"]
        .as_array()
        .map(|t| t.iter().filter_map(|r| r["status"].as_str().map(str::to_string)).collect())
        .unwrap_or_default();
    say(format!("timeline: {}", steps.join(" → ")));

    s.step("Signed webhooks reach the knowledge system");
    receiver.wait_for(Duration::from_secs(10), |d| d.len() >= 2).await;
    let got = receiver.deliveries();
    for d in &got {
        say(format!(
            "{} {} (signature verified, {} attempt(s))",
            d.id,
            d.event_type.clone().unwrap_or_default(),
            d.attempts
        ));
    }
    if got.len() < 2 || !receiver.rejected().is_empty() {
        anyhow::bail!("expected 2 verified webhooks, got {} ({} rejected)", got.len(), receiver.rejected().len());
    }

    replay_part(s, emu, &stack, &api, &injector_key).await?;

    s.step("Stop the service and verify the audit chain");
    stack.stop().await?;
    let store = crate::store::Store::open(&cfg.store.path, crate::store::StoreOptions::default()).await?;
    let key = ops::load_or_create_key(&cfg.audit.key_file)?;
    let report = ops::verify(&store, Some(&cfg.audit.anchor_file), &[key.public()]).await?;
    store.close().await?;
    say(format!("{}", report.verdict));
    if !report.verdict.is_valid() {
        anyhow::bail!("the audit chain did not verify: {}", report.verdict);
    }
    let own = dir.join("gc-assist.toml");
    let text = format!(
        "# The demo's state, for `gc-assist --config {}` (audit verify, audit export, outbox list).\n\
         [store]\npath = {:?}\n\n[audit]\nkey_file = {:?}\nanchor_file = {:?}\n",
        own.display(),
        cfg.store.path,
        cfg.audit.key_file,
        cfg.audit.anchor_file
    );
    std::fs::write(&own, text)?;
    say(format!("check it yourself: gc-assist --config {} audit verify", own.display()));
    receiver.shutdown().await;

    s.step("Adoption of the prompts shown (issue 6)");
    let store = crate::store::Store::open(&cfg.store.path, crate::store::StoreOptions::default()).await?;
    let summary =
        crate::adoption::demo_summary(&store, &dir.join("adoption.html"), chrono::Utc::now().timestamp_millis()).await;
    store.close().await?;
    for line in summary?.lines() {
        say(line);
    }
    say(format!("more: gc-assist --config {} adoption --group-by prompt,agent --html report.html", own.display()));
    Ok(())
}

/// Recorded calls replayed through the emulator's notification websocket: the live trigger
/// runtime fires the example rules from their transcripts.
async fn replay_part(
    s: &mut Steps,
    emu: &crate::emulator::Emulator,
    stack: &super::serve::Stack,
    api: &str,
    key: &str,
) -> anyhow::Result<()> {
    use crate::emulator::{ReplaySpec, Speed};

    s.step(&format!("Replay {} recorded calls at {REPLAY_SPEED}x: rules fire from live transcripts", REPLAYED.len()));
    let calls: Vec<_> =
        REPLAYED.iter().filter_map(|scenario| emu.calls().into_iter().find(|c| c.scenario == *scenario)).collect();
    let first = calls.first().context("the embedded calls lack the demo's scenarios")?;
    let mut stream = reqwest::Client::new()
        .get(format!("{api}/v1/conversations/{}/stream", first.conversation_id))
        .bearer_auth(key)
        .send()
        .await?
        .error_for_status()?;
    let started = Instant::now();
    let spec = ReplaySpec {
        conversation_ids: calls.iter().map(|c| c.conversation_id.clone()).collect(),
        speed: Speed::Times(REPLAY_SPEED),
        ..ReplaySpec::default()
    };
    emu.replay(spec).context("cannot start the replay")?;
    for c in &calls {
        say(format!("{} ({}, queue {})", c.conversation_id, c.scenario, c.queue_name));
    }
    let mut buf = String::new();
    let shown = next_prompt_event(&mut stream, &mut buf).await?;
    say(format!(
        "  +{} ms  panel of the {} call: prompt \"{}\"",
        started.elapsed().as_millis(),
        first.scenario,
        shown["title"].as_str().unwrap_or("?")
    ));
    let deadline = Instant::now() + Duration::from_secs(30);
    while !emu.replays().iter().all(|r| r.done) {
        if Instant::now() > deadline {
            anyhow::bail!("the replay did not finish within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The last events and fires land within a moment of the last line.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let fires = stack.store.rule_fires(None, 1000).await?;
    for c in &calls {
        let Ok(id) = Uuid::parse_str(&c.conversation_id) else { continue };
        // Rules that simply never fired ("expired") are recorded too; show the rest.
        let mine: Vec<String> = fires
            .iter()
            .filter(|f| f.conversation_id == id && f.outcome != "expired")
            .map(|f| format!("{} {}", f.rule_id, f.outcome))
            .collect();
        say(format!("{}: {}", c.scenario, if mine.is_empty() { "no rule fired".to_string() } else { mine.join(", ") }));
    }
    if !fires.iter().any(|f| f.outcome == "fired") {
        anyhow::bail!("no rule fired during the replay");
    }
    Ok(())
}

/// Read the SSE stream until the next `prompt` event; its data as JSON.
async fn next_prompt_event(resp: &mut reqwest::Response, buf: &mut String) -> anyhow::Result<serde_json::Value> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        while let Some(end) = buf.find("\n\n") {
            let block: String = buf.drain(..end + 2).collect();
            if block.lines().any(|l| l == "event: prompt") {
                let data = block.lines().filter_map(|l| l.strip_prefix("data: ")).collect::<Vec<_>>().join("\n");
                return Ok(serde_json::from_str(&data)?);
            }
        }
        let chunk = tokio::time::timeout_at(deadline, resp.chunk())
            .await
            .context("no prompt reached the panel stream within 10 s")??
            .context("the panel stream ended")?;
        buf.push_str(&String::from_utf8_lossy(&chunk));
    }
}
