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

pub(crate) fn call_topics(conversation_id: &str, queue_id: &str) -> [String; 3] {
    [
        format!("v2.routing.queues.{queue_id}.conversations"),
        format!("v2.conversations.{conversation_id}.transcription"),
        format!("v2.speechandtextanalytics.conversation.{conversation_id}.sentiment"),
    ]
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
    let call = e.calls().into_iter().next().expect("a call");
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
    let e = emu().await;
    let call = e.calls().into_iter().next().expect("a call");
    let (n, mut rx) = Notifications::start(client(&e), settings());
    n.subscribe(call_topics(&call.conversation_id, &call.queue_id).to_vec()).await.expect("subscribe");
    let before = n.channels().await.expect("channels");
    let lines = recorded_lines(&call.conversation_id);
    // Slow enough that a fault lands mid-call.
    e.replay(ReplaySpec {
        conversation_ids: vec![call.conversation_id.clone()],
        speed: Speed::Times(40.0),
        ..ReplaySpec::default()
    })
    .expect("replay");
    let mut got = collect(&mut rx, lines.len() / 4, Duration::from_secs(20)).await;
    e.faults().drop_sockets();
    got.extend(collect(&mut rx, lines.len() / 4, Duration::from_secs(20)).await);
    assert!(e.faults().expire_channels() >= 1);
    got.extend(collect(&mut rx, lines.len() - got.len(), Duration::from_secs(30)).await);
    let got_ids: Vec<String> = got.iter().map(correlation).collect();
    let want: Vec<String> = lines.iter().map(|(_, c)| c.clone()).collect();
    assert_eq!(got_ids, want, "every line exactly once, in order");
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
    let e = emu().await;
    let call = e.calls().into_iter().next().expect("a call");
    let (n, mut rx) = Notifications::start(
        client(&e),
        NotificationSettings { rotate_after: Duration::from_millis(300), ..settings() },
    );
    n.subscribe(call_topics(&call.conversation_id, &call.queue_id).to_vec()).await.expect("subscribe");
    let lines = recorded_lines(&call.conversation_id);
    e.replay(ReplaySpec {
        conversation_ids: vec![call.conversation_id.clone()],
        speed: Speed::Times(40.0),
        ..ReplaySpec::default()
    })
    .expect("replay");
    let got = collect(&mut rx, lines.len(), Duration::from_secs(30)).await;
    let got_ids: Vec<String> = got.iter().map(correlation).collect();
    let want: Vec<String> = lines.iter().map(|(_, c)| c.clone()).collect();
    assert_eq!(got_ids, want, "every line exactly once");
    assert!(n.stats().rotations >= 2, "{:?}", n.stats());
    n.shutdown().await;
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
    let e = emu().await;
    let call = e.calls().into_iter().next().expect("a call");
    let dir = tempfile::tempdir().expect("tempdir");
    let (n, mut rx) = Notifications::start(
        client(&e),
        NotificationSettings { record_dir: Some(dir.path().to_path_buf()), ..settings() },
    );
    n.subscribe(call_topics(&call.conversation_id, &call.queue_id).to_vec()).await.expect("subscribe");
    e.replay(ReplaySpec {
        conversation_ids: vec![call.conversation_id.clone()],
        speed: Speed::Max,
        ..Default::default()
    })
    .expect("replay");
    let lines = recorded_lines(&call.conversation_id);
    assert_eq!(collect(&mut rx, lines.len(), Duration::from_secs(10)).await.len(), lines.len());
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
}

#[tokio::test]
async fn replay_admin_endpoint_and_bursts() {
    let e = emu().await;
    let http = reqwest::Client::new();
    let url = format!("{}/__emulator/replay", e.base_url());
    let bad = http.post(&url).body(r#"{"speed":-1}"#).send().await.expect("post");
    assert_eq!(bad.status(), 400);
    let body: Value = bad.json().await.expect("json");
    assert!(body["message"].as_str().unwrap_or_default().contains("speed"), "{body}");
    let unknown = http.post(&url).body(r#"{"conversationIds":["nope"]}"#).send().await.expect("post");
    assert_eq!(unknown.status(), 400);
    let call = e.calls().into_iter().next().expect("a call");
    let (n, mut rx) = Notifications::start(client(&e), settings());
    n.subscribe(call_topics(&call.conversation_id, &call.queue_id).to_vec()).await.expect("subscribe");
    // Real time would take minutes; a burst of every line delivers them at once.
    let lines = recorded_lines(&call.conversation_id);
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
    let got = collect(&mut rx, lines.len(), Duration::from_secs(10)).await;
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
    assert!(client(&e).get_conversation(copy).await.is_ok());
    n.shutdown().await;
}
