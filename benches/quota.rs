//! The Genesys quota benchmark (issue 7 item 3): a burst of participant-data deliveries of
//! 10x the per-minute limit, all wanted at once, against the emulator's per-token limit. Our
//! client (`GenesysClient`: GCRA pacing, the configured retry policy) beside a baseline with
//! the tutorial's strategy (no pacing; 3 attempts; on a 429 wait
//! `min(Retry-After x 2^n, 10 s)`), each against its own fresh emulator in the same run.
//! Prints, for each: deliveries made and lost, 429s provoked, time taken, and the rate used
//! against the allowed rate. Run: `cargo bench --bench quota`.
//!
//! Time is not scaled. The emulator's limit is a GCRA with the whole minute as burst, like
//! Genesys: a fresh token may spend `L` at once, then one more every `60/L` s. Delivering
//! `10 L` therefore takes at least 9 minutes at ANY limit `L`, so the full scenario runs
//! about ten minutes; `QUOTA_FACTOR` (default 10) sets the burst as a multiple of the limit
//! for a shorter run (2 takes about two minutes), `QUOTA_RPM` (default 300, Genesys'
//! default) the limit, and `QUOTA_BURST` (default 10, the configuration's) our pacer's burst.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use gc_assist::config::Config;
use gc_assist::emulator::{self, CallSource, EmulatorConfig, NewConversation};
use gc_assist::genesys::GenesysClient;
use serde_json::Value;
use tokio::sync::Semaphore;

/// The binary's allocator (src/main.rs), so the bench measures what production runs.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Deliveries in flight at once (each client): the burst is wanted at once, but a client
/// holds a bounded number of open requests, as any HTTP client pool does.
const IN_FLIGHT: usize = 256;
/// The tutorial's strategy: attempts per delivery and the cap of one wait.
const BASELINE_ATTEMPTS: u32 = 3;
const BASELINE_MAX_WAIT: Duration = Duration::from_secs(10);

fn env_u32(name: &str, default: u32) -> u32 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).filter(|v| *v > 0).unwrap_or(default)
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    rt.block_on(run());
}

/// What one client did with the burst.
struct Outcome {
    delivered: u64,
    lost: u64,
    /// 429 answers the emulator gave this client.
    responses_429: u64,
    api_requests: u64,
    /// From the burst to the last delivery's answer (made or lost).
    secs: f64,
    /// When each delivery succeeded, seconds from the start, sorted.
    done_at: Vec<f64>,
}

impl Outcome {
    /// Deliveries against what the quota offered while the client ran: its free minute at
    /// once, then `rpm` a minute.
    fn quota_share(&self, rpm: u32) -> f64 {
        let allowed = f64::from(rpm) * (1.0 + self.secs / 60.0);
        self.delivered as f64 / allowed.max(1.0)
    }

    /// Deliveries per minute after the first `skip` of them (the pacer's or the quota's
    /// initial burst), over the time they took: the sustained rate.
    fn sustained_per_min(&self, skip: usize) -> f64 {
        match (self.done_at.get(skip), self.done_at.last()) {
            (Some(first), Some(last)) if last > first => (self.done_at.len() - skip - 1) as f64 * 60.0 / (last - first),
            _ => 0.0,
        }
    }
}

async fn run() {
    let rpm = env_u32("QUOTA_RPM", 300);
    let factor = env_u32("QUOTA_FACTOR", 10);
    let burst = env_u32("QUOTA_BURST", 10);
    let n = u64::from(rpm) * u64::from(factor);
    println!(
        "gc-assist quota benchmark: {n} participant-data deliveries at once ({factor}x the limit of {rpm}/min), \
         {IN_FLIGHT} in flight per client; our pacer's burst {burst}"
    );
    // Fastest possible: the quota's free burst of `rpm`, then `rpm` a minute.
    let ideal = (n.saturating_sub(u64::from(rpm))) as f64 * 60.0 / f64::from(rpm);
    println!("fastest the quota allows: {ideal:.1} s");

    // The sustained rate counts from the end of each client's opening burst: the quota's
    // whole minute for the unpaced baseline, the pacer's burst for ours.
    let base = baseline(rpm, n).await;
    report("baseline (tutorial: no pacing, 3 attempts, min(Retry-After x 2^n, 10 s))", &base, rpm, n, rpm, ideal);
    let ours = ours(rpm, burst, n).await;
    report("gc-assist GenesysClient (GCRA pacing, default retry policy)", &ours, rpm, n, burst, ideal);

    println!();
    println!(
        "| client | delivered | lost | 429s provoked | time | sustained rate after the opening burst (share of \
         {rpm}/min) | share of the quota over the run |"
    );
    println!("|---|---|---|---|---|---|---|");
    for (name, o, skip) in [("tutorial baseline", &base, rpm), ("gc-assist", &ours, burst)] {
        let sustained = o.sustained_per_min(skip as usize);
        println!(
            "| {name} | {} of {n} | {} | {} (of {} requests) | {:.1} s | {:.0}/min ({:.1} %) | {:.1} % |",
            o.delivered,
            o.lost,
            o.responses_429,
            o.api_requests,
            o.secs,
            sustained,
            sustained * 100.0 / f64::from(rpm),
            o.quota_share(rpm) * 100.0
        );
    }
}

fn report(name: &str, o: &Outcome, rpm: u32, n: u64, skip: u32, ideal: f64) {
    let sustained = o.sustained_per_min(skip as usize);
    println!(
        "{name}: {} delivered, {} lost of {n}; {} 429s in {} API requests; {:.1} s ({:.2}x the fastest); \
         sustained {:.1}/min = {:.1} % of {rpm}/min; {:.1} % of what the quota allowed over the run",
        o.delivered,
        o.lost,
        o.responses_429,
        o.api_requests,
        o.secs,
        o.secs / ideal.max(1e-9),
        sustained,
        sustained * 100.0 / f64::from(rpm),
        o.quota_share(rpm) * 100.0
    );
}

/// A fresh emulator with one live conversation: (emulator, conversation id, participant id).
async fn start_emulator(rpm: u32) -> (emulator::Emulator, String, String) {
    let cfg = EmulatorConfig { requests_per_minute: rpm, calls: CallSource::None, ..EmulatorConfig::default() };
    let emu = emulator::spawn(cfg).await.expect("emulator");
    let call = emu.create_conversation(NewConversation::default());
    (emu, call.conversation_id, call.agent_participant_id)
}

fn attributes(i: u64) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("gcAssistPromptId".to_string(), format!("d4e5f6a7-b8c9-0123-4567-{i:012x}")),
        ("gcAssistTitle".to_string(), "Refund policy".to_string()),
    ])
}

/// Our client: every delivery handed to one `GenesysClient` at once.
async fn ours(rpm: u32, burst: u32, n: u64) -> Outcome {
    let (emu, conv, participant) = start_emulator(rpm).await;
    let mut cfg = Config::defaults().genesys;
    cfg.requests_per_minute = rpm;
    cfg.burst = burst;
    let client = GenesysClient::new(emu.client_settings(&cfg).expect("settings")).expect("client");
    let gate = Arc::new(Semaphore::new(IN_FLIGHT));
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(n as usize);
    for i in 0..n {
        let (client, conv, participant, gate) = (client.clone(), conv.clone(), participant.clone(), gate.clone());
        tasks.push(tokio::spawn(async move {
            let _permit = gate.acquire_owned().await.ok()?;
            let ok = client.patch_participant_attributes(&conv, &participant, &attributes(i)).await.is_ok();
            Some((ok, start.elapsed().as_secs_f64()))
        }));
    }
    let outcome = collect(tasks, start).await;
    let stats = emu.stats();
    emu.shutdown().await;
    Outcome { responses_429: stats.responses_429, api_requests: stats.api_requests, ..outcome }
}

/// The tutorial's client: a bearer token, then every delivery at once, no pacing.
async fn baseline(rpm: u32, n: u64) -> Outcome {
    let (emu, conv, participant) = start_emulator(rpm).await;
    let http = reqwest::Client::new();
    let base = emu.base_url();
    let token: Value = http
        .post(format!("{base}/oauth/token"))
        .basic_auth(emu.client_id(), Some(emu.client_secret()))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .expect("token request")
        .json()
        .await
        .expect("token answer");
    let token = token["access_token"].as_str().expect("access_token").to_string();
    let url = format!("{base}/api/v2/conversations/{conv}/participants/{participant}/attributes");
    let gate = Arc::new(Semaphore::new(IN_FLIGHT));
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(n as usize);
    for i in 0..n {
        let (http, url, token, gate) = (http.clone(), url.clone(), token.clone(), gate.clone());
        tasks.push(tokio::spawn(async move {
            let _permit = gate.acquire_owned().await.ok()?;
            let body = serde_json::json!({ "attributes": attributes(i) });
            let mut ok = false;
            for attempt in 0..BASELINE_ATTEMPTS {
                let Ok(r) = http.patch(&url).bearer_auth(&token).json(&body).send().await else { break };
                if r.status().is_success() {
                    ok = true;
                    break;
                }
                if r.status().as_u16() != 429 || attempt + 1 == BASELINE_ATTEMPTS {
                    break;
                }
                let retry_after = r
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .unwrap_or(1);
                let wait = (Duration::from_secs(retry_after) * 2u32.pow(attempt)).min(BASELINE_MAX_WAIT);
                tokio::time::sleep(wait).await;
            }
            Some((ok, start.elapsed().as_secs_f64()))
        }));
    }
    let outcome = collect(tasks, start).await;
    let stats = emu.stats();
    emu.shutdown().await;
    Outcome { responses_429: stats.responses_429, api_requests: stats.api_requests, ..outcome }
}

async fn collect(tasks: Vec<tokio::task::JoinHandle<Option<(bool, f64)>>>, start: Instant) -> Outcome {
    let (mut delivered, mut lost, mut done_at, mut last) = (0u64, 0u64, Vec::new(), 0f64);
    for t in tasks {
        match t.await.ok().flatten() {
            Some((true, at)) => {
                delivered += 1;
                done_at.push(at);
                last = last.max(at);
            }
            Some((false, at)) => {
                lost += 1;
                last = last.max(at);
            }
            None => lost += 1,
        }
    }
    done_at.sort_by(f64::total_cmp);
    let secs = if last > 0.0 { last } else { start.elapsed().as_secs_f64() };
    Outcome { delivered, lost, responses_429: 0, api_requests: 0, secs, done_at }
}
