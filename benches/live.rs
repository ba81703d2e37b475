//! The live trigger benchmark: 1,000 live conversations in the emulator, 2,000 customer
//! utterances a second through its notification websocket, the live trigger runtime and
//! the injection service; trigger-to-panel latency (publish of the triggering utterance →
//! the prompt on the conversation's panel stream, minus `delayMs`) and the runtime's memory
//! per live conversation.
//!
//! Baseline, measured in the same run under the same load: the panel path alone, i.e. an
//! injection without conditions accepted by the service directly (no websocket, no rule
//! engine) → the prompt on its panel stream, minus `delayMs`. The difference is what the
//! live path (websocket, parsing, engine, rule injection) adds.
//!
//! Where the time goes: the service's opt-in delivery traces (`injection::trace`) give each
//! prompt's stages (received by the service → admitted; due → timer woke → "delivered" write
//! submitted → committed → published; published → received by the subscriber), printed as a
//! table per stage for the live path and the baseline, with the prompts per delivery write.
//!
//! Run: `cargo bench --bench live` (or `-- --conversations N --rate N --secs N`). Emulator,
//! service and load generator share the process and the machine's cores.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gc_assist::config::Config;
use gc_assist::contract::payload::{PromptContent, TriggerCondition};
use gc_assist::contract::{validate_value, Priority};
use gc_assist::emulator::{self, CallSource, EmulatorConfig, NewConversation};
use gc_assist::genesys::{GenesysClient, NotificationSettings};
use gc_assist::injection::service::{AcceptMeta, Channels, Service, ServiceDeps};
use gc_assist::injection::trace::DeliveryTrace;
use gc_assist::store::{Source, Store, StoreOptions, SystemClock};
use gc_assist::triggers::live::{LiveDeps, LiveRuntime};
use gc_assist::triggers::{CompiledRules, Rule, RulePrompt, RuleSet};
use serde_json::json;
use tokio::sync::watch;
use uuid::Uuid;

/// The binary's allocator (src/main.rs), so the bench measures what production runs.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const QUEUE: &str = "20a2bd46-64e1-4827-8e9e-f900e3ed7f32";
const KEYWORD: &str = "refund policy";
const DELAY_MS: u64 = 500;
/// Utterances of one conversation that are not the trigger.
const FILLER: [&str; 4] = [
    "yes i can confirm the account number for you",
    "the bill this month looks higher than the last one",
    "could you check what happened with my last payment",
    "thanks that makes sense i will wait a moment",
];

struct Params {
    conversations: usize,
    rate: usize,
    secs: u64,
}

fn params() -> Params {
    let mut p = Params { conversations: 1000, rate: 2000, secs: 10 };
    let args: Vec<String> = std::env::args().collect();
    for w in args.windows(2) {
        let n = w[1].parse::<u64>().ok();
        match (w[0].as_str(), n) {
            ("--conversations", Some(n)) => p.conversations = n.max(1) as usize,
            ("--rate", Some(n)) => p.rate = n.max(1) as usize,
            ("--secs", Some(n)) => p.secs = n.max(1),
            _ => {}
        }
    }
    p
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    rt.block_on(run(params()));
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn utterance(conversation: &str, text: &str) -> serde_json::Value {
    json!({
        "eventTime": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "conversationId": conversation,
        "transcripts": [{
            "utteranceId": Uuid::new_v4().to_string(),
            "isFinal": true,
            "channel": "EXTERNAL",
            "alternatives": [{"confidence": 0.91, "transcript": text}]
        }]
    })
}

/// Where the time of each delivery went, stage by stage, for the live path and the baseline.
fn stage_breakdown(traces: &[DeliveryTrace], ends: &HashMap<Uuid, (Instant, Instant)>, live_convs: &HashSet<Uuid>) {
    let ms = |a: Instant, b: Instant| b.saturating_duration_since(a).as_secs_f64() * 1000.0;
    for (label, live) in [("live path", true), ("baseline", false)] {
        let mut stages: Vec<(&str, Vec<f64>)> = vec![
            ("sent → received by the service (websocket, parse; live only)", vec![]),
            ("received → admitted (runtime + durable accept)", vec![]),
            ("admitted → due, minus delayMs (negative: showAt counts from before the accept's write)", vec![]),
            ("due → timer woke", vec![]),
            ("timer woke → delivered write submitted (ledger lock, tick)", vec![]),
            ("write submitted → committed", vec![]),
            ("committed → published on the panel hub", vec![]),
            ("published → received by the subscriber", vec![]),
            ("prompts per delivery write", vec![]),
        ];
        for t in traces.iter().filter(|t| live_convs.contains(&t.conversation_id) == live) {
            let Some(&(sent, got)) = ends.get(&t.conversation_id) else { continue };
            let (Some(received), Some(admitted)) = (t.received, t.admitted) else { continue };
            let signed = |a: Instant, b: Instant| {
                if b >= a {
                    ms(a, b)
                } else {
                    -ms(b, a)
                }
            };
            let v = [
                ms(sent, received),
                ms(received, admitted),
                signed(admitted, t.due) - DELAY_MS as f64,
                signed(t.due, t.woke),
                ms(t.woke, t.submitted),
                ms(t.submitted, t.committed),
                ms(t.committed, t.published),
                ms(t.published, got),
                t.batch as f64,
            ];
            for (s, x) in stages.iter_mut().zip(v) {
                s.1.push(x);
            }
        }
        println!("stages, {label}:");
        println!("| stage | p50 | p99 | max | n |");
        println!("|---|---|---|---|---|");
        for (what, mut v) in stages {
            v.sort_by(f64::total_cmp);
            println!(
                "| {what} | {:.2} | {:.2} | {:.2} | {} |",
                percentile(&v, 0.5),
                percentile(&v, 0.99),
                v.last().copied().unwrap_or(f64::NAN),
                v.len()
            );
        }
        println!();
    }
}

fn statm_rss_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = text.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

async fn run(p: Params) {
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    println!(
        "live trigger benchmark: {} conversations, {} utterances/s for {} s, {cores} cores",
        p.conversations, p.rate, p.secs
    );
    let emu = emulator::spawn(EmulatorConfig {
        calls: CallSource::None,
        requests_per_minute: 100_000_000,
        ..EmulatorConfig::default()
    })
    .await
    .expect("emulator");
    let mut settings = emu.client_settings(&Config::defaults().genesys).expect("settings");
    settings.requests_per_minute = 100_000_000;
    settings.burst = 100_000;
    let client = GenesysClient::new(settings).expect("client");
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(&dir.path().join("live.db"), StoreOptions::default()).await.expect("store");
    let service = Service::start(ServiceDeps {
        store: store.clone(),
        catalogue: None,
        channels: Channels { panel: true, participant_data: false },
        genesys: Some(client.clone()),
        clock: Arc::new(SystemClock),
        global_webhooks: vec![],
        on_commit: None,
        attribute_prefix: "gcAssist".into(),
    })
    .await
    .expect("service");
    service.stats().delivery_trace.enable();
    let content = PromptContent {
        title: "Refund policy".into(),
        body: "Refunds within 30 days of purchase.".into(),
        url: None,
        priority: Priority::Normal,
    };
    let mut rule = Rule::new(
        "refund",
        RulePrompt::Inline(content),
        vec![TriggerCondition::Keyword { phrase: KEYWORD.into(), threshold: None }],
    );
    rule.display.delay_ms = DELAY_MS;
    let compiled = CompiledRules::compile(&RuleSet { origin: "bench".into(), rules: vec![rule] }, None).expect("rules");
    let (_rules_tx, rules_rx) = watch::channel(Arc::new(compiled));
    let runtime = LiveRuntime::start(LiveDeps {
        service: service.clone(),
        client,
        queues: vec![QUEUE.into()],
        rules: rules_rx,
        notifications: NotificationSettings::default(),
    })
    .await
    .expect("live runtime");

    // Conversations: each announced on the queue topic with its agent connected.
    let rss_before = statm_rss_bytes();
    let setup = Instant::now();
    let mut convs = Vec::with_capacity(p.conversations);
    for _ in 0..p.conversations {
        let info = emu.create_conversation(NewConversation { queue_id: Some(QUEUE.into()), ..Default::default() });
        convs.push(info.conversation_id);
    }
    let want_topics = 1 + 2 * p.conversations;
    loop {
        let topics: usize =
            runtime.notifications().channels().await.map(|c| c.iter().map(|(_, n)| *n).sum()).unwrap_or(0);
        if topics >= want_topics {
            break;
        }
        if setup.elapsed() > Duration::from_secs(300) {
            panic!("only {topics} of {want_topics} topics subscribed after 300 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let snap = runtime.snapshot().await.expect("snapshot");
    let rss_after = statm_rss_bytes();
    println!(
        "setup: {} conversations live, {} topics on {} channel(s) in {:.1} s",
        snap.conversations,
        want_topics,
        runtime.notifications().channels().await.map(|c| c.len()).unwrap_or(0),
        setup.elapsed().as_secs_f64()
    );

    // Panel subscriptions, then the load.
    let live_lat: Arc<Mutex<Vec<f64>>> = Arc::default();
    // Conversation → (sent, received on its panel stream), live path and baseline alike.
    let ends: Arc<Mutex<HashMap<Uuid, (Instant, Instant)>>> = Arc::default();
    let published: Arc<Mutex<Vec<Option<Instant>>>> = Arc::new(Mutex::new(vec![None; p.conversations]));
    let mut waiters = Vec::new();
    let wait_for = Duration::from_secs(p.secs + 30);
    for (i, c) in convs.iter().enumerate() {
        let id = Uuid::parse_str(c).expect("uuid");
        let mut sub = service.panel().subscribe(id, None);
        let (lat, published, ends) = (live_lat.clone(), published.clone(), ends.clone());
        waiters.push(tokio::spawn(async move {
            let got = tokio::time::timeout(wait_for, async {
                loop {
                    match sub.live.recv().await {
                        Ok(ev) if ev.kind == "prompt" => return Some(Instant::now()),
                        Ok(_) => {}
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                        Err(_) => return None,
                    }
                }
            })
            .await;
            if let (Ok(Some(at)), Some(sent)) = (got, published.lock().expect("lock")[i]) {
                let ms = at.duration_since(sent).as_secs_f64() * 1000.0 - DELAY_MS as f64;
                lat.lock().expect("lock").push(ms);
                ends.lock().expect("lock").insert(id, (sent, at));
            }
        }));
    }

    // Baseline: direct accepts (no conditions) on other conversations, 100/s, same window.
    let base_lat: Arc<Mutex<Vec<f64>>> = Arc::default();
    let baseline = {
        let (service, lat, ends) = (service.clone(), base_lat.clone(), ends.clone());
        let n = (p.secs * 100) as usize;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            let mut tasks = Vec::new();
            for _ in 0..n {
                tick.tick().await;
                let conv = Uuid::new_v4();
                let payload = validate_value(&json!({
                    "conversationId": conv.to_string(),
                    "promptId": "d4e5f6a7-b8c9-4123-8567-890abcdef123",
                    "triggerConditions": [],
                    "displaySettings": {"delayMs": DELAY_MS, "maxConcurrentPrompts": 3, "autoDismissMs": 30000},
                    "prompt": {"title": "Baseline", "body": "Direct."}
                }))
                .expect("payload");
                let mut sub = service.panel().subscribe(conv, None);
                let (service, lat, ends) = (service.clone(), lat.clone(), ends.clone());
                tasks.push(tokio::spawn(async move {
                    let sent = Instant::now();
                    let meta = AcceptMeta {
                        source: Source::Api,
                        api_key_id: None,
                        idempotency_key: None,
                        request_hash: String::new(),
                        received_at: sent,
                    };
                    if service.accept(payload, meta).await.is_err() {
                        return;
                    }
                    while let Ok(ev) = sub.live.recv().await {
                        if ev.kind == "prompt" {
                            let at = Instant::now();
                            let ms = at.duration_since(sent).as_secs_f64() * 1000.0 - DELAY_MS as f64;
                            lat.lock().expect("lock").push(ms);
                            ends.lock().expect("lock").insert(conv, (sent, at));
                            return;
                        }
                    }
                }));
            }
            for t in tasks {
                let _ = t.await;
            }
        })
    };

    let total = p.rate * p.secs as usize;
    let rounds = (total / p.conversations).max(1);
    let started = Instant::now();
    let mut sent = 0usize;
    let mut triggers = 0usize;
    let per_ms = p.rate as f64 / 1000.0;
    while sent < total {
        // Open loop: catch up to where the clock says we should be.
        let due = ((started.elapsed().as_secs_f64() * 1000.0) * per_ms) as usize;
        while sent < due.min(total) {
            let i = sent % p.conversations;
            let round = sent / p.conversations;
            let conv = &convs[i];
            // Each conversation says the keyword once, in a round spread over the run.
            let is_trigger = round == (i * 7919) % rounds;
            let text = if is_trigger {
                format!("i would like to know your {KEYWORD} please")
            } else {
                FILLER[sent % FILLER.len()].to_string()
            };
            let topic = format!("v2.conversations.{conv}.transcription");
            if is_trigger {
                published.lock().expect("lock")[i] = Some(Instant::now());
                triggers += 1;
            }
            emu.publish(&topic, &utterance(conv, &text));
            sent += 1;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let load_secs = started.elapsed().as_secs_f64();
    let rate = sent as f64 / load_secs;
    for w in waiters {
        let _ = w.await;
    }
    let _ = baseline.await;

    let mut live = live_lat.lock().expect("lock").clone();
    let mut base = base_lat.lock().expect("lock").clone();
    live.sort_by(f64::total_cmp);
    base.sort_by(f64::total_cmp);
    let stats = runtime.stats();
    println!(
        "load: {sent} utterances in {load_secs:.2} s = {rate:.0}/s; {triggers} triggers, {} prompts on panels; \
         events {}, rule fires {}, fire errors {}",
        live.len(),
        stats.events.load(Ordering::Relaxed),
        stats.rule_fires.load(Ordering::Relaxed),
        stats.fire_errors.load(Ordering::Relaxed)
    );
    println!();
    println!("| measure | p50 | p99 | max | n |");
    println!("|---|---|---|---|---|");
    for (what, v) in
        [("trigger → panel, minus delayMs (live path)", &live), ("accept → panel, minus delayMs (baseline)", &base)]
    {
        println!(
            "| {what} | {:.2} ms | {:.2} ms | {:.2} ms | {} |",
            percentile(v, 0.5),
            percentile(v, 0.99),
            v.last().copied().unwrap_or(f64::NAN),
            v.len()
        );
    }
    // The runtime's own share, from the service's histogram (coarse buckets).
    let (buckets, sum, count) = service.stats().trigger_latency.snapshot();
    let within =
        |le_ms: f64| buckets.iter().find(|(le, _)| (*le * 1000.0 - le_ms).abs() < 1e-9).map(|(_, n)| *n).unwrap_or(0);
    println!(
        "| notification received → prompt admitted (runtime + durable accept) | mean {:.2} ms | {:.1} % ≤ 10 ms, {:.1} % ≤ 25 ms | | {count} |",
        if count > 0 { sum * 1000.0 / count as f64 } else { f64::NAN },
        100.0 * within(10.0) as f64 / count.max(1) as f64,
        100.0 * within(25.0) as f64 / count.max(1) as f64,
    );
    println!();
    let live_convs: HashSet<Uuid> = convs.iter().filter_map(|c| Uuid::parse_str(c).ok()).collect();
    stage_breakdown(&service.stats().delivery_trace.take(), &ends.lock().expect("lock"), &live_convs);
    let w = service.store().stats();
    println!(
        "store writer: {} transactions, {} batches ({:.1} batches per transaction)",
        w.transactions,
        w.batches,
        w.batches as f64 / w.transactions.max(1) as f64
    );
    println!();
    println!(
        "memory: runtime state {} B per live conversation ({} conversations, {} B in all); process RSS grew {} while they were set up (emulator, client and service included)",
        snap.approx_bytes / snap.conversations.max(1),
        snap.conversations,
        snap.approx_bytes,
        match (rss_before, rss_after) {
            (Some(a), Some(b)) => format!("{} KiB ({} B per conversation)", b.saturating_sub(a) / 1024, b.saturating_sub(a) / p.conversations as u64),
            _ => "(unknown)".into(),
        }
    );
    runtime.stop().await;
    service.shutdown();
    let _ = store.close().await;
    emu.shutdown().await;
}
