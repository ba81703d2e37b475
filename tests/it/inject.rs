//! Integration tests: direct injection (library and `gc-assist inject`) against the
//! emulator, including the tutorial's common errors, and the demo.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::Utc;
use gc_assist::contract::{self, Catalogue, PromptContent, ValidPayload};
use gc_assist::emulator::{self, Emulator, EmulatorConfig, NewConversation};
use gc_assist::genesys::GenesysClient;
use gc_assist::injection::direct::{DirectError, DirectInjector, DirectOptions};
use gc_assist::injection::participant_data::{self, PromptAttribute};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::support;

const EXAMPLE: &str = "examples/injection.json";

fn payload_for(conversation_id: &str, max: u8, extra: Value) -> ValidPayload {
    let mut v = json!({
        "conversationId": conversation_id,
        "promptId": "d4e5f6a7-b8c9-0123-4567-890abcdef123",
        "triggerConditions": [],
        "displaySettings": {"delayMs": 500, "maxConcurrentPrompts": max, "autoDismissMs": 10000},
        "prompt": {"title": "Refund policy", "body": "Offer a refund within 30 days.", "url": "https://kb.example.com/r", "priority": "high"}
    });
    if let (Some(obj), Value::Object(more)) = (v.as_object_mut(), extra) {
        obj.extend(more);
    }
    contract::validate_value(&v).unwrap_or_else(|i| panic!("test payload invalid: {i}"))
}

async fn setup() -> (Emulator, DirectInjector, String, String) {
    let emu = emulator::spawn(EmulatorConfig::default()).await.unwrap();
    let call = emu.create_conversation(NewConversation::default());
    let client =
        GenesysClient::new(emu.client_settings(&gc_assist::config::Config::defaults().genesys).unwrap()).unwrap();
    let injector =
        DirectInjector::new(client, DirectOptions { honour_delay: false, attribute_prefix: "gcAssist".into() });
    (emu, injector, call.conversation_id, call.agent_participant_id)
}

fn content(p: &ValidPayload) -> PromptContent {
    p.inline_prompt().cloned().unwrap()
}

#[tokio::test]
async fn delivers_into_the_connected_agents_attributes() {
    let (emu, injector, conv, agent_pid) = setup().await;
    let p = payload_for(&conv, 2, json!({}));
    let id = Uuid::now_v7();
    let d = injector.inject(id, &p, &content(&p)).await.unwrap();
    assert_eq!(d.participant_id, agent_pid);
    let attrs = emu.participant_attributes(&conv, &agent_pid).unwrap();
    let prompts = participant_data::read_prompts("gcAssist", &attrs);
    assert_eq!(prompts.len(), 1);
    assert_eq!(prompts[0].0, id);
    assert_eq!(prompts[0].1.title, "Refund policy");
    assert_eq!(prompts[0].1.status, "shown");
    assert_eq!((prompts[0].1.expires_at - prompts[0].1.shown_at).num_milliseconds(), 10_000);
    assert_eq!(attrs["gcAssist.lastInjectionId"], id.to_string());

    injector.mark(&d, "expired").await.unwrap();
    let attrs = emu.participant_attributes(&conv, &agent_pid).unwrap();
    assert_eq!(participant_data::read_prompts("gcAssist", &attrs)[0].1.status, "expired");
}

#[tokio::test]
async fn honours_the_delay_before_writing() {
    let (emu, injector, conv, _) = setup().await;
    let injector = DirectInjector::new(injector.client().clone(), DirectOptions::default());
    let p = payload_for(&conv, 1, json!({}));
    let started = std::time::Instant::now();
    let d = injector.inject(Uuid::now_v7(), &p, &content(&p)).await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(500), "written before delayMs");
    assert!(d.prompt.shown_at >= d.accepted_at + chrono::Duration::milliseconds(500));
    drop(emu);
}

#[tokio::test]
async fn capacity_rejects_with_409_and_queues_until_a_slot_frees() {
    let (emu, injector, conv, agent_pid) = setup().await;
    let reject = payload_for(&conv, 1, json!({"onCapacity": "reject"}));
    injector.inject(Uuid::now_v7(), &reject, &content(&reject)).await.unwrap();
    let err = injector.inject(Uuid::now_v7(), &reject, &content(&reject)).await.unwrap_err();
    assert!(matches!(err, DirectError::Capacity { shown: 1, max: 1, .. }), "{err}");
    assert_eq!(err.status(), Some(409));
    assert!(err.to_string().contains("409 Conflict"), "{err}");

    // A queue timeout shorter than the wait for a slot is also a 409, at once.
    let short = payload_for(&conv, 1, json!({"queueTimeoutMs": 100}));
    assert!(matches!(
        injector.inject(Uuid::now_v7(), &short, &content(&short)).await,
        Err(DirectError::Capacity { .. })
    ));

    // Queue: a slot held by a prompt that expires in 300 ms is waited for.
    let conv2 = emu.create_conversation(NewConversation::default());
    let soon = PromptAttribute::shown(Uuid::new_v4(), &content(&reject), Utc::now(), 300);
    let attrs = participant_data::show_attributes("gcAssist", Uuid::now_v7(), &soon);
    injector
        .client()
        .patch_participant_attributes(&conv2.conversation_id, &conv2.agent_participant_id, &attrs)
        .await
        .unwrap();
    let queued = payload_for(&conv2.conversation_id, 1, json!({}));
    let d = injector.inject(Uuid::now_v7(), &queued, &content(&queued)).await.unwrap();
    assert!(d.queued_ms >= 200, "should have waited for the slot, waited {} ms", d.queued_ms);
    let shown = participant_data::read_prompts(
        "gcAssist",
        &emu.participant_attributes(&conv2.conversation_id, &conv2.agent_participant_id).unwrap(),
    );
    assert_eq!(shown.len(), 2);
    let _ = agent_pid;
}

#[tokio::test]
async fn unknown_and_agentless_conversations_are_explained() {
    let (emu, injector, _, _) = setup().await;
    let p = payload_for(&Uuid::new_v4().to_string(), 1, json!({}));
    let err = injector.inject(Uuid::now_v7(), &p, &content(&p)).await.unwrap_err();
    assert!(matches!(err, DirectError::ConversationNotFound { .. }), "{err}");
    assert_eq!(err.status(), Some(404));

    let call = emu.create_conversation(NewConversation::default());
    assert!(emu.end_conversation(&call.conversation_id));
    let p = payload_for(&call.conversation_id, 1, json!({}));
    let err = injector.inject(Uuid::now_v7(), &p, &content(&p)).await.unwrap_err();
    assert!(matches!(err, DirectError::NoConnectedAgent { .. }), "{err}");
}

fn run_inject(extra: &[&str]) -> (i32, Value, String) {
    let mut args = vec!["inject", EXAMPLE, "--emulator", "--no-delay"];
    args.extend_from_slice(extra);
    let out = support::run(&args, &[]);
    let json: Value = serde_json::from_str(&support::stdout(&out)).unwrap_or(Value::Null);
    (out.status.code().unwrap_or(-1), json, support::stderr(&out))
}

#[test]
fn cli_inject_prints_the_result_with_its_audit_record() {
    let (code, out, err) = run_inject(&[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out["success"], true);
    assert_eq!(out["status"], "delivered");
    assert_eq!(out["conversationId"], "a1b2c3d4-e5f6-7890-abcd-ef1234567890");
    assert!(out["latencyMs"].as_u64().is_some());
    let audit = &out["auditLog"];
    assert_eq!(audit["complianceTag"], "AGENT_ASSIST_INJECTION");
    assert_eq!(audit["retentionPolicy"], "90_DAYS");
    assert_eq!(audit["status"], "delivered");
    assert_eq!(audit["injectionId"], out["injectionId"]);
    assert_eq!(audit["hash"].as_str().map(str::len), Some(64));
    // The audit record verifies as a one-record chain.
    let record: gc_assist::audit::AuditRecord = serde_json::from_value(audit.clone()).unwrap();
    assert!(gc_assist::audit::verify([&record], None, &[], &[]).is_valid());
    let attrs: BTreeMap<String, String> = serde_json::from_value(out["attributes"].clone()).unwrap();
    assert!(attrs.keys().any(|k| k.starts_with("gcAssist.prompt.")));
}

#[test]
fn cli_inject_reproduces_the_tutorials_common_errors() {
    let cases: &[(&[&str], &str, u64)] = &[
        (&["--emulator-fault", "bad-credentials"], "GENESYSCLOUD_OAUTHCLIENT_SECRET", 401),
        (&["--emulator-fault", "missing-permission"], "conversation:communication:view", 403),
        (&["--emulator-fault", "busy-agent", "--on-capacity", "reject"], "409 Conflict", 409),
        (&["--emulator-fault", "rate-limit"], "rate limited", 429),
    ];
    for (extra, needle, status) in cases {
        let (code, out, err) = run_inject(extra);
        assert_eq!(code, 2, "{extra:?}: {err}");
        assert!(err.contains(needle), "{extra:?}: stderr lacks {needle:?}: {err}");
        assert_eq!(out["success"], false, "{extra:?}");
        assert_eq!(out["status"], *status, "{extra:?}");
        assert_eq!(out["auditLog"]["status"], "failed", "{extra:?}");
        assert!(!err.contains("emulator-secret"), "secret leaked: {err}");
    }
}

#[test]
fn cli_inject_validation_and_unreadable_input() {
    let out = support::run(&["inject", "examples/invalid/ui-limits.json", "--emulator"], &[]);
    assert_eq!(out.status.code(), Some(1), "{}", support::stderr(&out));
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["success"], false);
    let paths: Vec<&str> = json["issues"].as_array().unwrap().iter().filter_map(|i| i["path"].as_str()).collect();
    assert!(paths.contains(&"displaySettings.maxConcurrentPrompts"), "{paths:?}");
    assert!(support::stderr(&out).contains("at most 3 prompts may be shown at once"));

    let out = support::run(&["inject", "no/such/file.json", "--emulator"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(support::stderr(&out).contains("cannot read the payload file"));

    let out = support::run(&["inject", EXAMPLE, "--emulator-fault", "rate-limit"], &[]);
    assert_eq!(out.status.code(), Some(2), "--emulator-fault needs --emulator");
}

#[test]
fn cli_inject_against_a_real_org_needs_credentials() {
    let out = support::run(&["inject", EXAMPLE, "--catalogue", "examples/prompts.yaml"], &[]);
    assert_eq!(out.status.code(), Some(2));
    let err = support::stderr(&out);
    assert!(err.contains("GENESYSCLOUD_OAUTHCLIENT_ID") || err.contains("GC_CLIENT_ID"), "{err}");
}

#[test]
fn demo_runs_the_tutorial_end_to_end() {
    let out = support::run(&["demo", "--headless"], &[]);
    let text = support::stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}\n{}", support::stderr(&out));
    for needle in [
        "Validate the tutorial's payload",
        "every issue at once",
        "delivered in",
        "third prompt refused",
        "409 Conflict",
        "\"complianceTag\": \"AGENT_ASSIST_INJECTION\"",
        "0 answered 429",
        "rules fire from live transcripts",
        "cancel_threat fired",
    ] {
        assert!(text.contains(needle), "demo output lacks {needle:?}:\n{text}");
    }
    // The printed command really verifies the demo's audit trail.
    let line = text.lines().find(|l| l.contains("check it yourself: gc-assist --config ")).expect("verify hint");
    let config = line.split("--config ").nth(1).and_then(|r| r.split_whitespace().next()).unwrap();
    let out = support::run(&["--config", config, "audit", "verify"], &[]);
    assert_eq!(out.status.code(), Some(0), "{}{}", support::stdout(&out), support::stderr(&out));
}

#[test]
fn bundled_catalogue_resolves_the_tutorial_prompt() {
    let c = Catalogue::parse(gc_assist::cli::demo::EXAMPLE_CATALOGUE, None).unwrap();
    let p = contract::validate_json(gc_assist::cli::demo::TUTORIAL_PAYLOAD.as_bytes()).unwrap();
    assert!(contract::resolve_prompt(&p, Some(&c)).is_ok());
}
