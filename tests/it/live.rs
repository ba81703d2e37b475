//! Live notifications end to end: the emulator replays recorded calls over its websockets
//! and the notifications client (`genesys::notifications`) receives them through drops,
//! channel expiry, rotation and channel spreading.

use std::collections::HashMap;
use std::time::Duration;

use gc_assist::config::Config;
use gc_assist::emulator::{self, CallSource, Emulator, EmulatorConfig, ReplaySpec, Speed};
use gc_assist::genesys::notifications::NotificationsError;
use gc_assist::genesys::{Envelope, GenesysClient, NotificationSettings, Notifications};
use serde_json::Value;
use tokio::sync::mpsc;

use crate::support;

pub(crate) async fn emu() -> Emulator {
    emulator::spawn(EmulatorConfig {
        calls: CallSource::Dir(support::shared_calls()),
        requests_per_minute: 100_000,
        heartbeat: Duration::from_millis(200),
        ..EmulatorConfig::default()
    })
    .await
    .expect("emulator starts")
}

pub(crate) fn client(emu: &Emulator) -> GenesysClient {
    GenesysClient::new(emu.client_settings(&Config::defaults().genesys).expect("settings")).expect("client")
}

fn settings() -> NotificationSettings {
    NotificationSettings {
        heartbeat: Duration::from_millis(200),
        reconnect_min: Duration::from_millis(20),
        reconnect_max: Duration::from_millis(200),
        ..NotificationSettings::default()
    }
}

/// A recorded call's lines, in order, as (topic, CorrelationId), read from the calls folder.
pub(crate) fn recorded_lines(conversation_id: &str) -> Vec<(String, String)> {
    let dir = support::shared_calls();
    let index: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("calls.json")).expect("calls.json")).expect("json");
    let file = index["calls"]
        .as_array()
        .expect("calls")
        .iter()
        .find(|c| c["conversationId"] == conversation_id)
        .and_then(|c| c["file"].as_str())
        .expect("call listed")
        .to_string();
    std::fs::read_to_string(dir.join(file))
        .expect("call file")
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: Value = serde_json::from_str(l).expect("line");
            (
                v["topicName"].as_str().expect("topic").to_string(),
                v["metadata"]["CorrelationId"].as_str().expect("correlation").to_string(),
            )
        })
        .collect()
}

/// The loaded call with the fewest recorded lines (quick to replay whatever the folder).
pub(crate) fn short_call(e: &Emulator) -> emulator::CallInfo {
    e.calls().into_iter().min_by_key(|c| recorded_lines(&c.conversation_id).len()).expect("a call")
}

pub(crate) fn call_topics(conversation_id: &str, queue_id: &str) -> [String; 3] {
    [
        format!("v2.routing.queues.{queue_id}.conversations"),
        format!("v2.conversations.{conversation_id}.transcription"),
        format!("v2.speechandtextanalytics.conversation.{conversation_id}.sentiment"),
    ]
}

/// The prologue of the notifications tests: an emulator, its shortest recorded call, a
/// notifications client with `settings` subscribed to the call's three topics, and the
/// call's recorded lines (what a replay must deliver).
struct Followed {
    e: Emulator,
    call: emulator::CallInfo,
    n: Notifications,
    rx: mpsc::Receiver<Envelope>,
    lines: Vec<(String, String)>,
}

async fn follow_short_call(settings: NotificationSettings) -> Followed {
    let e = emu().await;
    let call = short_call(&e);
    let (n, rx) = Notifications::start(client(&e), settings);
    n.subscribe(call_topics(&call.conversation_id, &call.queue_id).to_vec()).await.expect("subscribe");
    let lines = recorded_lines(&call.conversation_id);
    Followed { e, call, n, rx, lines }
}

impl Followed {
    /// Replays the call at `speed`.
    fn replay(&self, speed: Speed) {
        self.e
            .replay(ReplaySpec {
                conversation_ids: vec![self.call.conversation_id.clone()],
                speed,
                ..ReplaySpec::default()
            })
            .expect("replay");
    }

    /// Every recorded line's CorrelationId, in order.
    fn want(&self) -> Vec<String> {
        self.lines.iter().map(|(_, c)| c.clone()).collect()
    }
}

/// Collect envelopes until `n` arrived or `within` passed.
async fn collect(rx: &mut mpsc::Receiver<Envelope>, n: usize, within: Duration) -> Vec<Envelope> {
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + within;
    while got.len() < n {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(e)) => got.push(e),
            _ => break,
        }
    }
    got
}

fn correlation(e: &Envelope) -> String {
    e.value["metadata"]["CorrelationId"].as_str().unwrap_or_default().to_string()
}

#[tokio::test]
async fn replay_reaches_subscribed_topics_only() {
    let e = emu().await;
    let call = short_call(&e);
    let (n, mut rx) = Notifications::start(client(&e), settings());
    let [queue, transcription, _sentiment] = call_topics(&call.conversation_id, &call.queue_id);
    n.subscribe(vec![queue.clone(), transcription.clone()]).await.expect("subscribe");
    e.replay(ReplaySpec {
        conversation_ids: vec![call.conversation_id.clone()],
        speed: Speed::Max,
        ..ReplaySpec::default()
    })
    .expect("replay");
    let lines = recorded_lines(&call.conversation_id);
    let want: Vec<String> =
        lines.iter().filter(|(t, _)| *t == queue || *t == transcription).map(|(_, c)| c.clone()).collect();
    let got = collect(&mut rx, want.len(), Duration::from_secs(10)).await;
    let got_ids: Vec<String> = got.iter().map(correlation).collect();
    assert_eq!(got_ids, want, "every subscribed line, in order, nothing else");
    assert!(got.iter().all(|g| g.value.get("recordedAt").is_none()));
    assert!(collect(&mut rx, 1, Duration::from_millis(300)).await.is_empty(), "no sentiment: not subscribed");
    // The REST view followed the replay to its end.
    let conv = client(&e).get_conversation(&call.conversation_id).await.expect("conversation");
    assert!(conv.participants.iter().all(|p| p.end_time.is_some()), "ended after the replay");
    n.shutdown().await;
}

#[tokio::test]
async fn dropped_sockets_and_expired_channels_lose_no_event() {
    let mut f = follow_short_call(settings()).await;
    let (n, lines) = (&f.n, f.lines.len());
    let before = n.channels().await.expect("channels");
    // Slow enough that a fault lands mid-call.
    f.replay(Speed::Times(40.0));
    let mut got = collect(&mut f.rx, lines / 4, Duration::from_secs(20)).await;
    f.e.faults().drop_sockets();
    got.extend(collect(&mut f.rx, lines / 4, Duration::from_secs(20)).await);
    assert!(f.e.faults().expire_channels() >= 1);
    got.extend(collect(&mut f.rx, lines - got.len(), Duration::from_secs(30)).await);
    let got_ids: Vec<String> = got.iter().map(correlation).collect();
    assert_eq!(got_ids, f.want(), "every line exactly once, in order");
    let s = n.stats();
    assert!(s.reconnects >= 1 && s.channels_gone >= 1, "{s:?}");
    let after = n.channels().await.expect("channels");
    assert_eq!(after.len(), 1);
    assert_ne!(after[0].0, before[0].0, "the expired channel was replaced");
    assert_eq!(after[0].1, 3, "with the same topics");
    n.shutdown().await;
}

#[tokio::test]
async fn rotation_replaces_channels_without_a_gap() {
    let mut f =
        follow_short_call(NotificationSettings { rotate_after: Duration::from_millis(300), ..settings() }).await;
    f.replay(Speed::Times(40.0));
    let got = collect(&mut f.rx, f.lines.len(), Duration::from_secs(30)).await;
    let got_ids: Vec<String> = got.iter().map(correlation).collect();
    assert_eq!(got_ids, f.want(), "every line exactly once");
    assert!(f.n.stats().rotations >= 2, "{:?}", f.n.stats());
    f.n.shutdown().await;
}

#[tokio::test]
async fn topics_spread_over_channels_up_to_the_limit() {
    let e = emu().await;
    let (n, _rx) =
        Notifications::start(client(&e), NotificationSettings { topics_per_channel: 3, max_channels: 3, ..settings() });
    let topics: Vec<String> = (0..6).map(|i| format!("v2.conversations.c{i}.transcription")).collect();
    n.subscribe(topics[..4].to_vec()).await.expect("4 topics");
    n.subscribe(topics.clone()).await.expect("6 topics, 2 already there");
    let mut counts: Vec<usize> = n.channels().await.expect("channels").iter().map(|c| c.1).collect();
    counts.sort();
    assert_eq!(counts, vec![3, 3]);
    // Two channels usable (one kept for rotation): a 7th topic does not fit.
    let err = n.subscribe(vec!["v2.conversations.c9.transcription".into()]).await.expect_err("limit");
    assert!(matches!(err, NotificationsError::TopicLimit { wanted: 7, channels: 2, per_channel: 3 }), "{err}");
    assert!(err.to_string().contains("watch fewer queues"), "{err}");
    n.unsubscribe(topics[..3].to_vec()).await.expect("unsubscribe");
    let mut counts: Vec<usize> = n.channels().await.expect("channels").iter().map(|c| c.1).collect();
    counts.sort();
    assert_eq!(counts, vec![0, 3]);
    n.subscribe(vec!["v2.conversations.c9.transcription".into()]).await.expect("room again");
    let bad = n.subscribe(vec!["not-a-topic".into()]).await.expect_err("bad topic");
    assert!(bad.to_string().contains("v2."), "{bad}");
    n.shutdown().await;
}

#[tokio::test]
async fn record_dir_writes_replayable_jsonl() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut f =
        follow_short_call(NotificationSettings { record_dir: Some(dir.path().to_path_buf()), ..settings() }).await;
    f.replay(Speed::Max);
    let (call, lines, n) = (&f.call, &f.lines, &f.n);
    assert_eq!(collect(&mut f.rx, lines.len(), Duration::from_secs(10)).await.len(), lines.len());
    let path = dir.path().join(format!("{}.jsonl", call.conversation_id));
    let mut text = String::new();
    for _ in 0..100 {
        text = std::fs::read_to_string(&path).unwrap_or_default();
        if text.lines().count() == lines.len() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let recorded: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).expect("json line")).collect();
    assert_eq!(recorded.len(), lines.len());
    let mut by_topic: HashMap<String, usize> = HashMap::new();
    for r in &recorded {
        assert!(r.as_object().and_then(|o| o.keys().next()).is_some_and(|k| k == "recordedAt"), "{r}");
        *by_topic.entry(r["topicName"].as_str().unwrap_or_default().to_string()).or_default() += 1;
    }
    assert_eq!(by_topic.len(), 3);
    n.shutdown().await;
    // The recording is a calls folder: another emulator loads and replays it.
    let again =
        emulator::spawn(EmulatorConfig { calls: CallSource::Dir(dir.path().to_path_buf()), ..Default::default() })
            .await
            .expect("the recording loads as a calls folder");
    let loaded = again.calls();
    assert_eq!(loaded.len(), 1);
    assert_eq!(loaded[0].conversation_id, call.conversation_id);
    assert_eq!(loaded[0].agent_participant_id, call.agent_participant_id);
}

#[tokio::test]
async fn replay_admin_endpoint_and_bursts() {
    let mut f = follow_short_call(settings()).await;
    let (e, call, lines, n) = (&f.e, &f.call, &f.lines, &f.n);
    let http = reqwest::Client::new();
    let url = format!("{}/__emulator/replay", e.base_url());
    let bad = http.post(&url).body(r#"{"speed":-1}"#).send().await.expect("post");
    assert_eq!(bad.status(), 400);
    let body: Value = bad.json().await.expect("json");
    assert!(body["message"].as_str().unwrap_or_default().contains("speed"), "{body}");
    let unknown = http.post(&url).body(r#"{"conversationIds":["nope"]}"#).send().await.expect("post");
    assert_eq!(unknown.status(), 400);
    // Real time would take minutes; a burst of every line delivers them at once.
    e.faults().burst(2 * lines.len() as u32);
    let started: Value = http
        .post(&url)
        .body(format!(r#"{{"speed":1,"conversationIds":["{}"],"copies":2}}"#, call.conversation_id))
        .send()
        .await
        .expect("post")
        .json()
        .await
        .expect("json");
    let ids = started["conversationIds"].as_array().expect("ids");
    assert_eq!(ids.len(), 2, "{started}");
    assert_ne!(ids[0], ids[1]);
    let got = collect(&mut f.rx, lines.len(), Duration::from_secs(10)).await;
    assert_eq!(got.len(), lines.len(), "the burst delivered every line of the subscribed copy");
    let mut status = Value::Null;
    for _ in 0..100 {
        status = http.get(&url).send().await.expect("get").json().await.expect("json");
        if status["replays"][0]["done"] == true {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(status["replays"][0]["calls"], 2, "{status}");
    assert_eq!(status["replays"][0]["linesSent"], 2 * lines.len(), "{status}");
    let stopped: Value = http.delete(&url).send().await.expect("delete").json().await.expect("json");
    assert_eq!(stopped["stopped"], 0, "{stopped}");
    // The copy has its own conversation, answering GET.
    let copy = ids[1].as_str().expect("id");
    assert!(client(e).get_conversation(copy).await.is_ok());
    n.shutdown().await;
}

// ---------------------------------------------------------------------------------------
// The live trigger runtime, end to end: emulator replay → notifications → rule engine →
// injection service → panel stream.

mod e2e {
    use std::sync::Arc;
    use std::time::{Duration, Instant, SystemTime};

    use gc_assist::config::{ApiKeyConfig, Config};
    use gc_assist::contract::payload::{PromptContent, TriggerCondition};
    use gc_assist::contract::Priority;
    use gc_assist::emulator::{CallInfo, Emulator, ReplaySpec, Speed};
    use gc_assist::injection::service::{Channels, Service, ServiceDeps};
    use gc_assist::server::{self, key_hash_hex, AppState};
    use gc_assist::store::{Store, StoreOptions, SystemClock};
    use gc_assist::triggers::live::{LiveDeps, LiveRuntime};
    use gc_assist::triggers::{CompiledRules, Rule, RulePrompt, RuleSet};
    use serde_json::{json, Value};
    use tokio::sync::{oneshot, watch};

    use super::{client, emu, settings};
    use crate::support;

    pub(crate) const KEY: &str = "live-test-key";

    pub(crate) struct Stack {
        pub base: String,
        pub store: Store,
        pub runtime: Option<LiveRuntime>,
        pub rules: watch::Sender<Arc<CompiledRules>>,
        stop: Option<oneshot::Sender<()>>,
        task: Option<tokio::task::JoinHandle<()>>,
    }

    impl Stack {
        pub async fn stop(mut self) {
            if let Some(rt) = self.runtime.take() {
                rt.stop().await;
            }
            if let Some(s) = self.stop.take() {
                let _ = s.send(());
            }
            if let Some(t) = self.task.take() {
                let _ = t.await;
            }
            let _ = self.store.close().await;
        }
    }

    pub(crate) async fn start(dir: &std::path::Path, e: &Emulator, rules: Vec<Rule>) -> Stack {
        let mut cfg = Config::defaults().server;
        cfg.api_keys = vec![ApiKeyConfig { id: "k".into(), sha256: key_hash_hex(KEY), role: "admin".into() }];
        cfg.channels = vec!["panel".into()];
        let store = Store::open(&dir.join("live.db"), StoreOptions::default()).await.expect("store");
        let service = Service::start(ServiceDeps {
            store: store.clone(),
            catalogue: None,
            channels: Channels::from_names(&cfg.channels).expect("channels"),
            genesys: Some(client(e)),
            clock: Arc::new(SystemClock),
            global_webhooks: vec![],
            on_commit: None,
            attribute_prefix: "gcAssist".into(),
        })
        .await
        .expect("service");
        let compiled = CompiledRules::compile(&RuleSet { origin: "test".into(), rules }, None).expect("rules");
        let (rules_tx, rules_rx) = watch::channel(Arc::new(compiled));
        let mut queues: Vec<String> = e.calls().into_iter().map(|c| c.queue_id).collect();
        queues.sort();
        queues.dedup();
        let runtime = LiveRuntime::start(LiveDeps {
            service: service.clone(),
            client: client(e),
            queues,
            rules: rules_rx,
            notifications: settings(),
        })
        .await
        .expect("live runtime");
        let state = AppState::new(service, &cfg).expect("app state");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let _ = server::serve(state, listener, async move {
                let _ = rx.await;
            })
            .await;
        });
        Stack { base, store, runtime: Some(runtime), rules: rules_tx, stop: Some(tx), task: Some(task) }
    }

    /// The prologue of the end-to-end tests: a folder for the store, an emulator, the target
    /// call and its keyword, and the whole stack with the rules `rules` makes of that keyword.
    pub(crate) struct Live {
        _dir: tempfile::TempDir,
        pub e: Emulator,
        pub t: Target,
        pub conv: String,
        pub stack: Stack,
    }

    pub(crate) async fn live(rules: impl FnOnce(&str) -> Vec<Rule>) -> Live {
        let dir = tempfile::tempdir().expect("tempdir");
        let e = emu().await;
        let t = target(&e);
        let conv = t.call.conversation_id.clone();
        let stack = start(dir.path(), &e, rules(&t.keyword)).await;
        Live { _dir: dir, e, t, conv, stack }
    }

    impl Live {
        /// Replays the target call at `speed` times real time.
        pub fn replay(&self, speed: f64) {
            self.e
                .replay(ReplaySpec {
                    conversation_ids: vec![self.conv.clone()],
                    speed: Speed::Times(speed),
                    ..Default::default()
                })
                .expect("replay");
        }

        /// The live runtime.
        pub fn runtime(&self) -> &LiveRuntime {
            self.stack.runtime.as_ref().expect("runtime")
        }

        /// Waits until the runtime follows the conversation (its transcript subscribed).
        pub async fn started(&self) {
            let rt = self.runtime();
            let until = Instant::now() + Duration::from_secs(20);
            while rt.stats().conversations_started.load(std::sync::atomic::Ordering::Relaxed) == 0 {
                assert!(Instant::now() < until, "the conversation never started");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }

    /// A call to replay and a keyword its customer first says late in the call: the
    /// labelled call with the fewest lines, and a word of a labelled final customer
    /// utterance that no earlier final customer utterance contains.
    pub(crate) struct Target {
        pub call: CallInfo,
        pub keyword: String,
        /// recordedAt offset of the line that says it, from the call's first line (ms).
        pub offset_ms: i64,
    }

    fn words(text: &str) -> Vec<String> {
        text.split(|c: char| !c.is_alphanumeric() && c != '\'')
            .map(|w| w.to_lowercase())
            .filter(|w| !w.is_empty())
            .collect()
    }

    pub(crate) fn target(e: &Emulator) -> Target {
        let dir = support::shared_calls();
        let index: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("calls.json")).expect("calls.json")).expect("json");
        let mut best: Option<(usize, Target)> = None;
        for entry in index["calls"].as_array().expect("calls") {
            let labels: Vec<&str> = entry["labels"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|l| l["customerUtteranceId"].as_str())
                .collect();
            if labels.is_empty() {
                continue;
            }
            let text = std::fs::read_to_string(dir.join(entry["file"].as_str().expect("file"))).expect("call file");
            let lines: Vec<Value> = text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
            if best.as_ref().is_some_and(|(n, _)| *n <= lines.len()) {
                continue;
            }
            let t0 = chrono::DateTime::parse_from_rfc3339(lines[0]["recordedAt"].as_str().expect("at")).expect("time");
            let mut heard: std::collections::HashSet<String> = Default::default();
            let mut found = None;
            'lines: for l in &lines {
                for t in l["eventBody"]["transcripts"].as_array().into_iter().flatten() {
                    if t["isFinal"] != true || t["channel"] != "EXTERNAL" {
                        continue;
                    }
                    let said = words(t["alternatives"][0]["transcript"].as_str().unwrap_or(""));
                    let labelled = t["utteranceId"].as_str().is_some_and(|u| labels.contains(&u));
                    if labelled {
                        if let Some(w) = said
                            .iter()
                            .find(|w| w.len() >= 5 && w.chars().all(|c| c.is_ascii_lowercase()) && !heard.contains(*w))
                        {
                            let at =
                                chrono::DateTime::parse_from_rfc3339(l["recordedAt"].as_str().expect("at")).expect("t");
                            found = Some((w.clone(), (at - t0).num_milliseconds()));
                            break 'lines;
                        }
                    }
                    heard.extend(said);
                }
            }
            if let Some((keyword, offset_ms)) = found {
                let id = entry["conversationId"].as_str().expect("id");
                let call = e.calls().into_iter().find(|c| c.conversation_id == id).expect("loaded");
                best = Some((lines.len(), Target { call, keyword, offset_ms }));
            }
        }
        best.expect("a labelled call with a keyword").1
    }

    pub(crate) fn rule(id: &str, keyword: &str, shadow: bool) -> Rule {
        let content = PromptContent {
            title: format!("Rule {id}"),
            body: format!("The customer said {keyword}."),
            url: None,
            priority: Priority::Normal,
        };
        let mut r = Rule::new(
            id,
            RulePrompt::Inline(content),
            vec![TriggerCondition::Keyword { phrase: keyword.to_string(), threshold: None }],
        );
        r.display.delay_ms = 1000;
        r.shadow = shadow;
        r
    }

    /// Reads SSE frames until a named event arrives; returns (event, data).
    pub(crate) async fn next_event(
        resp: &mut reqwest::Response,
        buf: &mut String,
        within: Duration,
    ) -> Option<(String, Value)> {
        crate::support::next_event(resp, buf, within).await.map(|(ev, _, data)| (ev, data))
    }

    pub(crate) async fn open_stream(base: &str, conv: &str) -> reqwest::Response {
        let resp = reqwest::Client::new()
            .get(format!("{base}/v1/conversations/{conv}/stream"))
            .bearer_auth(KEY)
            .send()
            .await
            .expect("stream");
        assert_eq!(resp.status(), 200);
        resp
    }

    async fn get(base: &str, path: &str) -> Value {
        reqwest::Client::new()
            .get(format!("{base}{path}"))
            .bearer_auth(KEY)
            .send()
            .await
            .expect("get")
            .json()
            .await
            .unwrap_or(Value::Null)
    }

    async fn wait_status(base: &str, id: &str, want: &str, within: Duration) {
        let until = Instant::now() + within;
        loop {
            let s = get(base, &format!("/v1/prompt-injections/{id}")).await;
            if s["status"] == want {
                return;
            }
            assert!(Instant::now() < until, "injection {id}: expected {want}, got {s}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn wall_ms() -> i64 {
        SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
    }

    fn ms_of(rfc3339: &Value) -> i64 {
        rfc3339
            .as_str()
            .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
            .map(|t| t.timestamp_millis())
            .unwrap_or(i64::MAX)
    }

    /// A rule fires from the replayed transcript, its prompt reaches the panel stream
    /// `delayMs` after the fire and not before; an API-armed keyword fires too; a shadow
    /// rule shows nothing but is recorded; the end expires what stayed armed.
    #[tokio::test]
    async fn replayed_call_fires_rules_and_armed_injections() {
        let l = live(|k| vec![rule("live-rule", k, false), rule("shadow-rule", k, true)]).await;
        let (t, conv, stack) = (&l.t, l.conv.clone(), &l.stack);
        let http = reqwest::Client::new();
        let armed = |phrase: &str| {
            json!({
                "conversationId": conv,
                "promptId": "d4e5f6a7-b8c9-4123-8567-890abcdef123",
                "triggerConditions": [{"type": "keyword", "value": phrase}],
                "displaySettings": {"delayMs": 500, "maxConcurrentPrompts": 3, "autoDismissMs": 60000},
                "prompt": {"title": "Armed", "body": "Armed through the API."}
            })
        };
        let mut ids = Vec::new();
        for phrase in [t.keyword.as_str(), "zebra xylophone"] {
            let r: Value = http
                .post(format!("{}/v1/prompt-injections", stack.base))
                .bearer_auth(KEY)
                .json(&armed(phrase))
                .send()
                .await
                .expect("post")
                .json()
                .await
                .expect("json");
            assert_eq!(r["status"], "armed", "{r}");
            ids.push(r["injectionId"].as_str().expect("id").to_string());
        }
        let mut sse = open_stream(&stack.base, &conv).await;
        let mut buf = String::new();
        let speed = 20.0;
        let started = Instant::now();
        l.replay(speed);
        let said_at = Duration::from_millis((t.offset_ms as f64 / speed) as u64);
        let mut shown = Vec::new();
        while shown.len() < 2 {
            let (ev, data) = next_event(&mut sse, &mut buf, Duration::from_secs(60)).await.expect("prompts shown");
            if ev == "prompt" {
                assert!(
                    started.elapsed() >= said_at,
                    "shown at {:?}, before the keyword ({said_at:?})",
                    started.elapsed()
                );
                shown.push((data, wall_ms()));
            }
        }
        for (data, seen_ms) in &shown {
            let id = data["injectionId"].as_str().expect("id");
            let full = get(&stack.base, &format!("/v1/prompt-injections/{id}")).await;
            let delay = full["payload"]["displaySettings"]["delayMs"].as_i64().expect("delay");
            let accepted = full["timeline"][0]["timestamp"].clone();
            let fired = full["timeline"].as_array().expect("timeline").iter().find(|r| r["status"] == "scheduled");
            let admitted = ms_of(&fired.map(|r| r["timestamp"].clone()).unwrap_or(accepted));
            assert!(
                seen_ms - admitted >= delay - 5,
                "shown {} ms after admission, delayMs {delay}: {full}",
                seen_ms - admitted
            );
            if full["source"] == "rule" {
                assert_eq!(full["ruleId"], "live-rule");
                assert_eq!(full["prompt"]["title"], "Rule live-rule");
            } else {
                assert_eq!(id, ids[0], "the API-armed keyword fired: {full}");
            }
        }
        assert!(shown.iter().any(|(d, _)| d["title"] == "Rule live-rule"), "{shown:?}");
        // The end of the call expires the injection whose keyword never came.
        wait_status(&stack.base, &ids[1], "expired", Duration::from_secs(60)).await;
        // Nothing else was shown: the shadow rule only left a record.
        assert!(next_event(&mut sse, &mut buf, Duration::from_millis(300)).await.is_none_or(|(ev, _)| ev != "prompt"));
        let conv_id = uuid::Uuid::parse_str(&conv).expect("uuid");
        let mut records = Vec::new();
        for _ in 0..100 {
            records = stack.store.rule_fires(Some(conv_id), 100).await.expect("rule fires");
            if records.len() >= 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let outcomes: Vec<(String, String)> = records.iter().map(|r| (r.rule_id.clone(), r.outcome.clone())).collect();
        assert!(outcomes.contains(&("shadow-rule".into(), "shadow".into())), "{outcomes:?}");
        assert!(outcomes.contains(&("live-rule".into(), "fired".into())), "{outcomes:?}");
        assert!(records.iter().any(|r| r.outcome == "fired" && r.injection_id.is_some()));
        let rt = l.runtime();
        assert_eq!(rt.stats().shadow_fires.load(std::sync::atomic::Ordering::Relaxed), 1);
        let metrics = reqwest::Client::new()
            .get(format!("{}/metrics", stack.base))
            .bearer_auth(KEY)
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text");
        assert!(metrics.contains("gc_assist_rule_decisions_total{outcome=\"shadow\"} 1"), "{metrics}");
        // The live rule and the API-armed injection: two trigger latencies observed.
        assert!(metrics.contains("gc_assist_trigger_latency_seconds_count 2"), "{metrics}");
        drop(sse);
        l.stack.stop().await;
    }

    /// A dropped websocket and an expired channel in the middle of the call lose no trigger.
    #[tokio::test]
    async fn socket_drop_and_channel_expiry_mid_call_lose_no_trigger() {
        let l = live(|k| vec![rule("live-rule", k, false)]).await;
        let (e, t) = (&l.e, &l.t);
        let mut sse = open_stream(&l.stack.base, &l.conv).await;
        let mut buf = String::new();
        let speed = 10.0;
        l.replay(speed);
        // Once the conversation is live (its transcript subscribed), break things.
        l.started().await;
        let rt = l.runtime();
        let keyword_at = Duration::from_millis((t.offset_ms as f64 / speed) as u64);
        tokio::time::sleep(keyword_at.min(Duration::from_millis(600)) / 3).await;
        e.faults().drop_sockets();
        tokio::time::sleep(keyword_at.min(Duration::from_millis(600)) / 3).await;
        assert!(e.faults().expire_channels() >= 1);
        let (ev, data) = loop {
            let got = next_event(&mut sse, &mut buf, Duration::from_secs(30))
                .await
                .unwrap_or_else(|| panic!("the rule never fired: {:?} {:?}", rt.stats(), rt.notifications().stats()));
            if got.0 == "prompt" {
                break got;
            }
        };
        assert_eq!((ev.as_str(), data["title"].as_str()), ("prompt", Some("Rule live-rule")));
        let s = rt.notifications().stats();
        assert!(s.reconnects >= 1 && s.channels_gone >= 1, "{s:?}");
        drop(sse);
        l.stack.stop().await;
    }
}

/// Rules reloaded while a call is live apply to it (its state is kept).
#[tokio::test]
async fn hot_reloaded_rules_apply_to_live_conversations() {
    use gc_assist::triggers::{CompiledRules, RuleSet};
    use std::sync::atomic::Ordering;
    use std::sync::Arc;

    let l = e2e::live(|_| Vec::new()).await;
    let mut sse = e2e::open_stream(&l.stack.base, &l.conv).await;
    let mut buf = String::new();
    l.replay(10.0);
    l.started().await;
    let rt = l.runtime();
    let set = RuleSet { origin: "reloaded".into(), rules: vec![e2e::rule("reloaded-rule", &l.t.keyword, false)] };
    l.stack.rules.send_replace(Arc::new(CompiledRules::compile(&set, None).expect("compile")));
    let (ev, data) = loop {
        let got = e2e::next_event(&mut sse, &mut buf, Duration::from_secs(30)).await.expect("the reloaded rule fired");
        if got.0 == "prompt" {
            break got;
        }
    };
    assert_eq!((ev.as_str(), data["title"].as_str()), ("prompt", Some("Rule reloaded-rule")));
    assert!(rt.stats().reloads.load(Ordering::Relaxed) >= 1);
    drop(sse);
    l.stack.stop().await;
}

/// `gc-assist serve --emulator --record DIR` with a rules file: a replay through the embedded
/// emulator fires rules from live transcripts, durably recorded, and the notifications are
/// written as JSONL.
#[test]
fn serve_binary_fires_rules_from_a_replay_and_records() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};

    use gc_assist::store::{Store, StoreOptions};

    let dir = tempfile::tempdir().expect("tempdir");
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let cfg = dir.path().join("gc-assist.toml");
    std::fs::write(
        &cfg,
        format!(
            "[store]\npath = {:?}\n[audit]\nkey_file = {:?}\nanchor_file = {:?}\n[server]\nchannels = [\"panel\"]\n\
             [catalogue]\npath = {:?}\n[triggers]\nrules_file = {:?}\nheartbeat_secs = 1\n",
            dir.path().join("serve.db"),
            dir.path().join("audit.key"),
            dir.path().join("anchors.jsonl"),
            root.join("examples/prompts.yaml"),
            root.join("examples/rules.yaml"),
        ),
    )
    .expect("config");
    let record = dir.path().join("recorded");
    let mut child = Command::new(support::bin())
        .args(["serve", "--emulator", "--bind", "127.0.0.1:0", "--config"])
        .arg(&cfg)
        .arg("--record")
        .arg(&record)
        .current_dir(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("serve starts");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut emulator = String::new();
    loop {
        let line = lines.next().expect("serve printed its addresses").expect("line");
        if let Some(rest) = line.strip_prefix("emulator at ") {
            emulator = rest.trim().to_string();
        }
        if line.starts_with("live triggers watching") {
            break;
        }
    }
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let started: Value = rt.block_on(async {
        reqwest::Client::new()
            .post(format!("{emulator}/__emulator/replay"))
            .body(r#"{"speed": 50}"#)
            .send()
            .await
            .expect("replay")
            .json()
            .await
            .expect("json")
    });
    let conversations = started["conversationIds"].as_array().expect("ids").len();
    assert!(conversations >= 1, "{started}");
    // Wait for the replay to finish (every call's last line recorded).
    rt.block_on(async {
        let until = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let status: Value = reqwest::Client::new()
                .get(format!("{emulator}/__emulator/replay"))
                .send()
                .await
                .expect("status")
                .json()
                .await
                .expect("json");
            if status["replays"][0]["done"] == true {
                break;
            }
            assert!(std::time::Instant::now() < until, "the replay did not finish: {status}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Let the last events and fires land.
        tokio::time::sleep(Duration::from_millis(800)).await;
    });
    let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().expect("kill");
    assert!(status.success());
    let out = child.wait_with_output().expect("exit");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let files: Vec<_> = std::fs::read_dir(&record)
        .expect("record dir")
        .filter_map(Result::ok)
        .filter(|f| f.path().extension().is_some_and(|x| x == "jsonl"))
        .collect();
    assert!(record.join("calls.json").is_file(), "the recording has its calls.json index");
    assert_eq!(files.len(), conversations, "one recording per conversation");
    for f in &files {
        let text = std::fs::read_to_string(f.path()).expect("recording");
        assert!(text.contains(".transcription\""), "{}", f.path().display());
        assert!(text.lines().all(|l| l.starts_with("{\"recordedAt\":")));
    }
    let store = rt.block_on(Store::open(&dir.path().join("serve.db"), StoreOptions::default())).expect("store");
    let fires = rt.block_on(store.rule_fires(None, 1000)).expect("rule fires");
    rt.block_on(store.close()).expect("close");
    assert!(fires.iter().any(|f| f.outcome == "fired" && f.injection_id.is_some()), "{fires:?}");
}

/// A socket that goes silent (half-open: no events, heartbeats or pongs) is declared dead
/// after two heartbeat intervals and reconnected; nothing published meanwhile is lost.
#[tokio::test]
async fn a_silent_socket_is_detected_by_missing_heartbeats() {
    let mut f = follow_short_call(settings()).await;
    assert_eq!(f.e.faults().mute_sockets(), 1);
    f.replay(Speed::Max);
    let got = collect(&mut f.rx, f.lines.len(), Duration::from_secs(10)).await;
    let got_ids: Vec<String> = got.iter().map(correlation).collect();
    assert_eq!(got_ids, f.want(), "delivered after the reconnect, in order");
    let s = f.n.stats();
    assert!(s.dead_sockets >= 1 && s.reconnects >= 1, "{s:?}");
    f.n.shutdown().await;
}

/// Injections armed through the API while the call is already live reach its engine, and a
/// cancelled one is disarmed: of two armed on the same keyword, only the kept one fires.
#[tokio::test]
async fn injections_armed_and_cancelled_mid_call() {
    use std::sync::atomic::Ordering;

    let l = e2e::live(|_| Vec::new()).await;
    let (t, conv, stack) = (&l.t, l.conv.clone(), &l.stack);
    l.replay(10.0);
    l.started().await;
    let rt = l.runtime();
    // What one live conversation costs the runtime (goal: at most 4 KiB).
    let snap = rt.snapshot().await.expect("snapshot");
    assert_eq!(snap.conversations, 1);
    assert!(snap.approx_bytes > 0 && snap.approx_bytes <= 4096, "{snap:?}");
    let http = reqwest::Client::new();
    let mut ids = Vec::new();
    for title in ["Kept", "Cancelled"] {
        let body = serde_json::json!({
            "conversationId": conv,
            "promptId": "d4e5f6a7-b8c9-4123-8567-890abcdef123",
            "triggerConditions": [{"type": "keyword", "value": t.keyword}],
            "displaySettings": {"delayMs": 500, "maxConcurrentPrompts": 3, "autoDismissMs": 60000},
            "prompt": {"title": title, "body": "Armed mid-call."}
        });
        let r: Value = http
            .post(format!("{}/v1/prompt-injections", stack.base))
            .bearer_auth(e2e::KEY)
            .json(&body)
            .send()
            .await
            .expect("post")
            .json()
            .await
            .expect("json");
        assert_eq!(r["status"], "armed", "{r}");
        ids.push(r["injectionId"].as_str().expect("id").to_string());
    }
    let del = http
        .delete(format!("{}/v1/prompt-injections/{}", stack.base, ids[1]))
        .bearer_auth(e2e::KEY)
        .send()
        .await
        .expect("delete");
    assert_eq!(del.status(), 200);
    let mut sse = e2e::open_stream(&stack.base, &conv).await;
    let mut buf = String::new();
    let (ev, data) = loop {
        let got = e2e::next_event(&mut sse, &mut buf, Duration::from_secs(30)).await.expect("the kept one fired");
        if got.0 == "prompt" {
            break got;
        }
    };
    assert_eq!((ev.as_str(), data["title"].as_str()), ("prompt", Some("Kept")));
    assert!(
        e2e::next_event(&mut sse, &mut buf, Duration::from_millis(500)).await.is_none_or(|(ev, _)| ev != "prompt"),
        "the cancelled injection must not show"
    );
    assert_eq!(rt.stats().api_fires.load(Ordering::Relaxed), 1);
    assert_eq!(rt.stats().fire_errors.load(Ordering::Relaxed), 0);
    drop(sse);
    l.stack.stop().await;
}

/// `gc-assist emulator --speed N` replays the loaded calls; a bad speed is a clear error.
#[test]
fn emulator_cli_replays_at_a_speed() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};

    let out = support::run(&["emulator", "--bind", "127.0.0.1:0", "--speed", "fast"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(support::stderr(&out).contains("--speed"), "{}", support::stderr(&out));

    let mut child = Command::new(support::bin())
        .args(["emulator", "--bind", "127.0.0.1:0", "--speed", "max"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_remove("GC_ASSIST_CONFIG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start gc-assist emulator");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut printed = Vec::new();
    let mut base = String::new();
    while let Some(Ok(line)) = lines.next() {
        if let Some(rest) = line.strip_prefix("Genesys Cloud emulator listening on ") {
            base = rest.trim().to_string();
        }
        let done = line.starts_with("Press Ctrl-C");
        printed.push(line);
        if done {
            break;
        }
    }
    let text = printed.join("\n");
    assert!(text.contains("Replaying 5 calls at full speed"), "{text}");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let status: Value = rt.block_on(async {
        reqwest::Client::new()
            .get(format!("{base}/__emulator/replay"))
            .send()
            .await
            .expect("status")
            .json()
            .await
            .expect("json")
    });
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(status["replays"][0]["calls"], 5, "{status}");
}

/// Maintenance: `v2.system.socket_closing`, then the close; the client reconnects to the
/// same channel and nothing is lost or repeated.
#[tokio::test]
async fn socket_closing_maintenance_loses_nothing() {
    let mut f = follow_short_call(settings()).await;
    let before = f.n.channels().await.expect("channels");
    let lines = f.lines.len();
    f.replay(Speed::Times(40.0));
    let mut got = collect(&mut f.rx, lines / 3, Duration::from_secs(20)).await;
    f.e.faults().close_sockets(Duration::from_millis(100));
    got.extend(collect(&mut f.rx, lines - got.len(), Duration::from_secs(30)).await);
    let got_ids: Vec<String> = got.iter().map(correlation).collect();
    assert_eq!(got_ids, f.want());
    assert!(f.n.stats().reconnects >= 1, "{:?}", f.n.stats());
    assert_eq!(f.n.channels().await.expect("channels")[0].0, before[0].0, "the same channel, reconnected");
    f.n.shutdown().await;
}
