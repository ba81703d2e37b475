//! Memory of a real `gc-assist serve` process with many live conversations (goal: ≤ 64 MiB
//! RSS with 10,000).
//!
//! Two child processes, as in production: `gc-assist emulator` (the Genesys side) and
//! `gc-assist serve` watching one queue with the example rules. The bench announces N
//! conversations on that queue (agent connected), so the live trigger runtime follows each one
//! (its rule engine, its notification topics), and posts two injections to each through the
//! API: one armed on a keyword (stays live until the call ends) and one shown on the panel.
//! It reads the serve process's resident set (`VmRSS` of /proc/PID/status) before (the
//! baseline, same run: the process idle with its store open) and after.
//!
//! The figure printed says how many conversations the live runtime follows
//! (`gc_assist_live_conversations`). Note that Genesys allows 20 notification channels of
//! 1,000 topics per OAuth client and each conversation takes two topics (transcription,
//! sentiment), so one OAuth client cannot subscribe much beyond 9,500 conversations: past
//! that the runtime still tracks the conversation but its topics are refused (logged).
//!
//! Run: `cargo bench --bench rss` (or `-- --conversations N`; `--no-injections` or
//! `--no-announce` measure the live runtime's and the service's shares apart).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::json;

const BIN: &str = env!("CARGO_BIN_EXE_gc-assist");
const QUEUE: &str = "7f3c5a10-4b8e-4e61-9d1a-2a6b8c9e0f11";
const KEY: &str = "rss-bench-key-0123456789abcdef";

fn main() {
    let mut n = 10_000usize;
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--conversations") {
        n = args.get(i + 1).and_then(|v| v.parse().ok()).unwrap_or(n);
    }
    // Apportioning: `--no-injections` announces the conversations only (the live runtime's
    // share); `--no-announce` posts the injections only (the service's share).
    let injections = !args.iter().any(|a| a == "--no-injections");
    let announce = !args.iter().any(|a| a == "--no-announce");
    if !std::path::Path::new("/proc/self/status").exists() {
        println!("rss: needs /proc (Linux); skipped");
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let (mut emulator, emu_url) = spawn_and_read(
        Command::new(BIN).args(["emulator", "--bind", "127.0.0.1:0", "--rpm", "1000000"]),
        "listening on ",
    );
    let cfg = dir.path().join("gc-assist.toml");
    std::fs::write(&cfg, config(dir.path(), &gc_assist::server::key_hash_hex(KEY))).expect("config");
    let (mut serve, api) = spawn_and_read(
        Command::new(BIN)
            .args(["serve", "--bind", "127.0.0.1:0", "--config"])
            .arg(&cfg)
            .env("GENESYSCLOUD_API_REGION", &emu_url)
            .env("GENESYSCLOUD_OAUTHCLIENT_ID", "gc-assist-emulator")
            .env("GENESYSCLOUD_OAUTHCLIENT_SECRET", "emulator-secret")
            .env("RUST_LOG", "error"),
        "serving on ",
    );
    let pid = serve.id();
    std::thread::sleep(Duration::from_secs(2));
    let idle = rss_kib(pid);

    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let started = Instant::now();
    let followed = rt.block_on(load(&emu_url, &api, n, announce, injections));
    // Let allocations settle (subscriptions, timers) before reading.
    std::thread::sleep(Duration::from_secs(2));
    let loaded = rss_kib(pid);
    let live = rt.block_on(metric(&api, "gc_assist_live_conversations"));
    let armed = rt.block_on(metric(&api, "gc_assist_injections{status=\"armed\"}"));

    let per = (loaded.saturating_sub(idle) * 1024) / n.max(1) as u64;
    println!(
        "rss: gc-assist serve, {n} conversations announced and loaded in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    println!("  baseline, idle with its store open: {:.1} MiB", idle as f64 / 1024.0);
    println!(
        "  with the conversations: {:.1} MiB ({:.2}x the baseline; {per} B per conversation); goal <= 64 MiB",
        loaded as f64 / 1024.0,
        loaded as f64 / idle.max(1) as f64
    );
    println!("  live trigger runtime follows {live} conversations ({followed} when loading ended); {armed} armed injections live");
    let _ = serve.kill();
    let _ = emulator.kill();
    let _ = serve.wait();
    let _ = emulator.wait();
}

fn config(dir: &std::path::Path, key_hash: &str) -> String {
    format!(
        "[store]\npath = {:?}\n[audit]\nkey_file = {:?}\nanchor_file = {:?}\n\
         [server]\nchannels = [\"panel\"]\nshed_queue_depth = 1000000\n\
         [[server.api_keys]]\nid = \"bench\"\nsha256 = \"{key_hash}\"\nrole = \"injector\"\n\
         [triggers]\nqueues = [\"{QUEUE}\"]\nrules_file = {:?}\n",
        dir.join("rss.db"),
        dir.join("audit.key"),
        dir.join("anchors.jsonl"),
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/rules.yaml"),
    )
}

/// Starts a child and returns it with the first word after `marker` on its stdout (a URL).
fn spawn_and_read(cmd: &mut Command, marker: &str) -> (Child, String) {
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::null()).spawn().expect("spawn gc-assist");
    let out = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(out).lines();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let Some(Ok(line)) = lines.next() else { break };
        if let Some(rest) = line.split(marker).nth(1) {
            let url = rest.split_whitespace().next().unwrap_or_default().to_string();
            // Keep draining so the child never blocks on a full pipe.
            std::thread::spawn(move || for _ in lines.by_ref() {});
            let url = if url.starts_with("http") { url } else { format!("http://{url}") };
            return (child, url);
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("gc-assist did not print {marker:?}");
}

/// Announces `n` conversations and posts two injections to each; returns how many the live
/// runtime follows once that number stops growing.
async fn load(emu: &str, api: &str, n: usize, announce: bool, injections: bool) -> u64 {
    let http = reqwest::Client::new();
    let queue = if announce { QUEUE } else { "00000000-0000-4000-8000-000000000000" };
    let convs: Vec<String> = futures::stream::iter(0..n)
        .map(|_| {
            let http = http.clone();
            async move {
                let v: serde_json::Value = http
                    .post(format!("{emu}/__emulator/conversations"))
                    .json(&json!({ "queueId": queue }))
                    .send()
                    .await
                    .expect("create conversation")
                    .json()
                    .await
                    .expect("conversation json");
                v["conversationId"].as_str().expect("conversationId").to_string()
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    let posted = if injections { &convs[..] } else { &convs[..0] };
    futures::stream::iter(posted.iter())
        .map(|c| {
            let http = http.clone();
            async move {
                for conditions in [json!([{"type": "keyword", "value": "cancel my contract"}]), json!([])] {
                    let body = json!({
                        "conversationId": c,
                        "promptId": "d4e5f6a7-b8c9-0123-4567-890abcdef123",
                        "triggerConditions": conditions,
                        "displaySettings": {"delayMs": 500, "maxConcurrentPrompts": 3, "autoDismissMs": 60000},
                        "prompt": {"title": "Retention offer", "body": "Offer the loyalty discount."}
                    });
                    let r = http
                        .post(format!("{api}/v1/prompt-injections"))
                        .bearer_auth(KEY)
                        .json(&body)
                        .send()
                        .await
                        .expect("post injection");
                    assert!(r.status().is_success(), "injection refused: {}", r.status());
                }
            }
        })
        .buffer_unordered(32)
        .collect::<Vec<()>>()
        .await;
    // Wait until the runtime has taken the announced conversations in (or stops growing).
    let mut last = 0;
    let mut still = Instant::now();
    loop {
        let live = metric(api, "gc_assist_live_conversations").await;
        if !announce || live as usize >= n || still.elapsed() > Duration::from_secs(10) {
            return live;
        }
        if live != last {
            last = live;
            still = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// One sample from the service's /metrics.
async fn metric(api: &str, name: &str) -> u64 {
    let Ok(r) = reqwest::Client::new().get(format!("{api}/metrics")).bearer_auth(KEY).send().await else { return 0 };
    let text = r.text().await.unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse::<f64>().ok()))
        .map(|v| v as u64)
        .unwrap_or(0)
}

/// Resident set of `pid` in KiB.
fn rss_kib(pid: u32) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}
