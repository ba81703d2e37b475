//! Integration tests: the injection service over HTTP on 127.0.0.1, with the emulator as the
//! Genesys side (participant data) and a real SQLite store in a temporary directory.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use gc_assist::config::{ApiKeyConfig, Config};
use gc_assist::emulator::{self, Emulator, EmulatorConfig, NewConversation};
use gc_assist::genesys::GenesysClient;
use gc_assist::injection::service::{Channels, Service, ServiceDeps};
use gc_assist::server::{self, key_hash_hex, AppState};
use gc_assist::store::{Store, StoreOptions, SystemClock};
use serde_json::{json, Value};
use tokio::sync::oneshot;

use crate::support::{self, next_event};

const INJECTOR: &str = "test-injector-key";
const ADMIN: &str = "test-admin-key";
const SCRAPER: &str = "test-metrics-key";

struct Running {
    base: String,
    store: Store,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Running {
    /// Stops accepting, drains, and flushes the store (what `serve` does on SIGTERM).
    async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            t.await.unwrap();
        }
        self.store.close().await.unwrap();
    }
}

fn client_for(emu: &Emulator) -> GenesysClient {
    GenesysClient::new(emu.client_settings(&Config::defaults().genesys).unwrap()).unwrap()
}

async fn start(dir: &Path, emu: &Emulator, max_body: usize) -> Running {
    start_with(dir, emu, |c| c.max_body_bytes = max_body).await
}

async fn start_with(dir: &Path, emu: &Emulator, tune: impl FnOnce(&mut gc_assist::config::ServerConfig)) -> Running {
    let mut cfg = Config::defaults().server;
    cfg.api_keys = vec![
        ApiKeyConfig { id: "injector".into(), sha256: key_hash_hex(INJECTOR), role: "injector".into() },
        ApiKeyConfig { id: "admin".into(), sha256: key_hash_hex(ADMIN), role: "admin".into() },
        ApiKeyConfig { id: "prometheus".into(), sha256: key_hash_hex(SCRAPER), role: "metrics".into() },
    ];
    tune(&mut cfg);
    let store = Store::open(&dir.join("svc.db"), StoreOptions::default()).await.unwrap();
    let service = Service::start(ServiceDeps {
        store: store.clone(),
        catalogue: None,
        channels: Channels::from_names(&cfg.channels).unwrap(),
        genesys: Some(client_for(emu)),
        clock: Arc::new(SystemClock),
        global_webhooks: vec![],
        on_commit: None,
        attribute_prefix: "gcAssist".into(),
    })
    .await
    .unwrap();
    let state = AppState::new(service, &cfg).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        server::serve(state, listener, async move {
            let _ = rx.await;
        })
        .await
        .unwrap();
    });
    Running { base, store, stop: Some(tx), task: Some(task) }
}

fn payload(conv: &str, max: u8, delay: u64, dismiss: u64, extra: Value) -> Value {
    let mut v = json!({
        "conversationId": conv,
        "promptId": "d4e5f6a7-b8c9-0123-4567-890abcdef123",
        "triggerConditions": [],
        "displaySettings": {"delayMs": delay, "maxConcurrentPrompts": max, "autoDismissMs": dismiss},
        "prompt": {"title": "Refund policy", "body": "Offer a refund within 30 days.", "priority": "high"}
    });
    if let (Some(o), Value::Object(more)) = (v.as_object_mut(), extra) {
        o.extend(more);
    }
    v
}

async fn post(base: &str, body: &Value, key: Option<&str>) -> (u16, Value) {
    let mut r = reqwest::Client::new().post(format!("{base}/v1/prompt-injections")).json(body);
    if let Some(k) = key {
        r = r.header("idempotency-key", k);
    }
    let resp = r.bearer_auth(INJECTOR).send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn get(base: &str, path: &str) -> (u16, Value) {
    let resp = reqwest::Client::new().get(format!("{base}{path}")).bearer_auth(INJECTOR).send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn status_of(base: &str, id: &str) -> String {
    get(base, &format!("/v1/prompt-injections/{id}")).await.1["status"].as_str().unwrap_or("").to_string()
}

async fn wait_status(base: &str, id: &str, want: &str, within: Duration) {
    let until = Instant::now() + within;
    loop {
        let s = status_of(base, id).await;
        if s == want {
            return;
        }
        assert!(Instant::now() < until, "injection {id} is {s}, expected {want}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn open_stream(base: &str, conv: &str, last: Option<u64>) -> reqwest::Response {
    let mut r = reqwest::Client::new().get(format!("{base}/v1/conversations/{conv}/stream")).bearer_auth(INJECTOR);
    if let Some(l) = last {
        r = r.header("last-event-id", l.to_string());
    }
    let resp = r.send().await.unwrap();
    assert_eq!(resp.status(), 200);
    resp
}

#[tokio::test]
async fn delivers_after_delay_to_panel_and_participant_data_then_expires() {
    let dir = tempfile::tempdir().unwrap();
    let emu = emulator::spawn(EmulatorConfig::default()).await.unwrap();
    let call = emu.create_conversation(NewConversation::default());
    let svc = start(dir.path(), &emu, 65536).await;
    let mut sse = open_stream(&svc.base, &call.conversation_id, None).await;
    let mut buf = String::new();

    let posted = Instant::now();
    let (st, body) = post(&svc.base, &payload(&call.conversation_id, 2, 700, 10_000, json!({})), None).await;
    assert_eq!(st, 201, "{body}");
    assert_eq!(body["status"], "scheduled");
    for k in ["injectionId", "conversationId", "promptId", "acceptedAt", "latencyMs"] {
        assert!(!body[k].is_null(), "answer lacks {k}: {body}");
    }
    let id = body["injectionId"].as_str().unwrap().to_string();

    let (ev, ev_id, data) = next_event(&mut sse, &mut buf, Duration::from_secs(5)).await.expect("prompt event");
    assert!(posted.elapsed() >= Duration::from_millis(700), "shown after {:?}, before delayMs", posted.elapsed());
    // Event ids are seeded from the clock (unique across restarts), not counted from 1.
    assert_eq!(ev.as_str(), "prompt");
    assert!(ev_id > 1);
    assert_eq!(data["injectionId"], id.as_str());
    assert_eq!(data["title"], "Refund policy");
    assert_eq!(data["priority"], "high");
    wait_status(&svc.base, &id, "delivered", Duration::from_secs(2)).await;

    // Participant data carries the prompt, written through the emulator's real API.
    let key = format!("gcAssist.prompt.{id}");
    let until = Instant::now() + Duration::from_secs(5);
    loop {
        let attrs = emu.participant_attributes(&call.conversation_id, &call.agent_participant_id).unwrap();
        if let Some(v) = attrs.get(&key) {
            assert!(v.contains("\"status\":\"shown\""), "{v}");
            break;
        }
        assert!(Instant::now() < until, "participant data never written: {attrs:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A reconnecting client resumes after the last id it saw.
    let mut again = open_stream(&svc.base, &call.conversation_id, Some(ev_id)).await;
    let mut buf2 = String::new();
    assert!(next_event(&mut again, &mut buf2, Duration::from_millis(300)).await.is_none());

    // Auto-dismiss after autoDismissMs.
    let first_id = ev_id;
    let (ev, ev_id, data) = next_event(&mut sse, &mut buf, Duration::from_secs(13)).await.expect("remove event");
    assert_eq!((ev.as_str(), ev_id), ("remove", first_id + 1));
    assert_eq!(data["reason"], "expired");
    assert!(posted.elapsed() >= Duration::from_millis(10_700));
    wait_status(&svc.base, &id, "expired", Duration::from_secs(2)).await;
    let (_, full) = get(&svc.base, &format!("/v1/prompt-injections/{id}")).await;
    let timeline: Vec<&str> =
        full["timeline"].as_array().unwrap().iter().map(|r| r["status"].as_str().unwrap()).collect();
    assert_eq!(timeline, ["accepted", "scheduled", "delivered", "expired"]);
    let until = Instant::now() + Duration::from_secs(5);
    loop {
        let attrs = emu.participant_attributes(&call.conversation_id, &call.agent_participant_id).unwrap();
        if attrs.get(&key).is_some_and(|v| v.contains("\"status\":\"expired\"")) {
            break;
        }
        assert!(Instant::now() < until, "participant data never marked expired: {attrs:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(sse);
    drop(again);
    svc.stop().await;
}

#[tokio::test]
async fn fourth_prompt_queues_and_is_promoted_when_a_slot_frees() {
    let dir = tempfile::tempdir().unwrap();
    let emu = emulator::spawn(EmulatorConfig::default()).await.unwrap();
    let conv = emu.create_conversation(NewConversation::default()).conversation_id;
    let svc = start(dir.path(), &emu, 65536).await;
    let mut ids = Vec::new();
    for want in ["scheduled", "scheduled", "scheduled", "queued"] {
        let (st, b) = post(&svc.base, &payload(&conv, 3, 500, 60_000, json!({})), None).await;
        assert_eq!((st, b["status"].as_str().unwrap()), (201, want), "{b}");
        ids.push(b["injectionId"].as_str().unwrap().to_string());
    }
    let (_, list) = get(&svc.base, &format!("/v1/conversations/{conv}/prompts")).await;
    assert_eq!(list["prompts"].as_array().unwrap().len(), 4);

    // Withdraw the first: the fourth takes its slot.
    let http = reqwest::Client::new();
    let r = http
        .delete(format!("{}/v1/prompt-injections/{}", svc.base, ids[0]))
        .bearer_auth(INJECTOR)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let b: Value = r.json().await.unwrap();
    assert_eq!(b["status"], "withdrawn");
    wait_status(&svc.base, &ids[3], "scheduled", Duration::from_secs(2)).await;
    wait_status(&svc.base, &ids[3], "delivered", Duration::from_secs(3)).await;

    // Cancelling twice is refused: it is no longer live.
    let r = http
        .delete(format!("{}/v1/prompt-injections/{}", svc.base, ids[0]))
        .bearer_auth(INJECTOR)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
    svc.stop().await;
}

#[tokio::test]
async fn reject_on_capacity_is_409_and_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let emu = emulator::spawn(EmulatorConfig::default()).await.unwrap();
    let conv = emu.create_conversation(NewConversation::default()).conversation_id;
    let svc = start(dir.path(), &emu, 65536).await;
    let (st, _) = post(&svc.base, &payload(&conv, 1, 500, 10_000, json!({})), None).await;
    assert_eq!(st, 201);
    let resp = reqwest::Client::new()
        .post(format!("{}/v1/prompt-injections", svc.base))
        .bearer_auth(INJECTOR)
        .json(&payload(&conv, 1, 500, 10_000, json!({"onCapacity": "reject"})))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 409);
    assert!(resp.headers().get("retry-after").is_some());
    let b: Value = resp.json().await.unwrap();
    assert_eq!(b["error"], "capacity");
    assert!(b["retryAfterMs"].as_u64().unwrap() > 0, "{b}");
    let (_, list) = get(&svc.base, &format!("/v1/conversations/{conv}/prompts")).await;
    assert_eq!(list["prompts"].as_array().unwrap().len(), 1);
    svc.stop().await;
}

#[tokio::test]
async fn idempotency_key_replays_the_first_answer() {
    let dir = tempfile::tempdir().unwrap();
    let emu = emulator::spawn(EmulatorConfig::default()).await.unwrap();
    let conv = emu.create_conversation(NewConversation::default()).conversation_id;
    let svc = start(dir.path(), &emu, 65536).await;
    let p = payload(&conv, 3, 500, 10_000, json!({}));
    let (s1, b1) = post(&svc.base, &p, Some("order-42")).await;
    let (s2, b2) = post(&svc.base, &p, Some("order-42")).await;
    assert_eq!((s1, s2), (201, 201));
    assert_eq!(b1, b2);
    let (_, list) = get(&svc.base, &format!("/v1/conversations/{conv}/prompts")).await;
    assert_eq!(list["prompts"].as_array().unwrap().len(), 1, "a replay creates nothing");
    let other = payload(&conv, 2, 500, 10_000, json!({}));
    let (s3, b3) = post(&svc.base, &other, Some("order-42")).await;
    assert_eq!((s3, b3["error"].as_str()), (422, Some("idempotency_key_reused")));
    // A new key is a new injection.
    let (s4, b4) = post(&svc.base, &p, Some("order-43")).await;
    assert_eq!(s4, 201);
    assert_ne!(b4["injectionId"], b1["injectionId"]);
    svc.stop().await;
}

#[tokio::test]
async fn armed_prompt_waits_for_fire_and_only_admins_fire() {
    let dir = tempfile::tempdir().unwrap();
    let emu = emulator::spawn(EmulatorConfig::default()).await.unwrap();
    let conv = emu.create_conversation(NewConversation::default()).conversation_id;
    let svc = start(dir.path(), &emu, 65536).await;
    let trig = json!({"triggerConditions": [{"type": "keyword", "value": "refund"}]});
    let (st, b) = post(&svc.base, &payload(&conv, 3, 500, 10_000, trig), None).await;
    assert_eq!((st, b["status"].as_str()), (201, Some("armed")), "{b}");
    let id = b["injectionId"].as_str().unwrap();
    let http = reqwest::Client::new();
    let url = format!("{}/v1/prompt-injections/{id}/fire", svc.base);
    assert_eq!(http.post(&url).bearer_auth(INJECTOR).send().await.unwrap().status(), 403);
    let r = http.post(&url).bearer_auth(ADMIN).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["status"], "scheduled");
    assert_eq!(http.post(&url).bearer_auth(ADMIN).send().await.unwrap().status(), 409, "fires once");
    wait_status(&svc.base, id, "delivered", Duration::from_secs(3)).await;
    let (_, full) = get(&svc.base, &format!("/v1/prompt-injections/{id}")).await;
    let timeline: Vec<&str> =
        full["timeline"].as_array().unwrap().iter().map(|r| r["status"].as_str().unwrap()).collect();
    assert_eq!(timeline, ["accepted", "armed", "fired", "scheduled", "delivered"]);
    svc.stop().await;
}

#[tokio::test]
async fn bad_input_gets_the_documented_4xx() {
    let dir = tempfile::tempdir().unwrap();
    let emu = emulator::spawn(EmulatorConfig::default()).await.unwrap();
    let conv = emu.create_conversation(NewConversation::default()).conversation_id;
    let svc = start(dir.path(), &emu, 4096).await;
    let http = reqwest::Client::new();
    let url = format!("{}/v1/prompt-injections", svc.base);
    let good = serde_json::to_vec(&payload(&conv, 3, 500, 10_000, json!({}))).unwrap();
    let mut unknown = payload(&conv, 3, 500, 10_000, json!({"promtId": "x"}));
    unknown["displaySettings"]["delayMs"] = json!(100);
    // (body, content type, key, expected status, expected error code)
    type Row<'a> = (Vec<u8>, &'a str, Option<&'a str>, u16, &'a str);
    let table: Vec<Row> = vec![
        (b"\x00\xff garbage".to_vec(), "application/json", Some(INJECTOR), 400, "invalid_encoding"),
        (b"{not json".to_vec(), "application/json", Some(INJECTOR), 400, "invalid_json"),
        (good.clone(), "text/plain", Some(INJECTOR), 415, "unsupported_media_type"),
        (vec![b' '; 5000], "application/json", Some(INJECTOR), 413, "payload_too_large"),
        (serde_json::to_vec(&unknown).unwrap(), "application/json", Some(INJECTOR), 422, "validation_failed"),
        (good.clone(), "application/json", None, 401, "unauthorized"),
        (good.clone(), "application/json", Some("wrong-key"), 401, "unauthorized"),
    ];
    for (i, (body, ct, key, want, code)) in table.into_iter().enumerate() {
        let mut r = http.post(&url).header("content-type", ct).body(body);
        if let Some(k) = key {
            r = r.bearer_auth(k);
        }
        let resp = r.send().await.unwrap();
        assert_eq!(resp.status().as_u16(), want, "row {i}");
        let b: Value = resp.json().await.unwrap();
        assert_eq!(b["error"], code, "row {i}: {b}");
        assert!(b["message"].as_str().is_some_and(|m| !m.is_empty()), "row {i}");
        if want == 422 {
            let paths: Vec<&str> =
                b["issues"].as_array().unwrap().iter().map(|i| i["path"].as_str().unwrap()).collect();
            assert!(paths.contains(&"promtId") && paths.contains(&"displaySettings.delayMs"), "{paths:?}");
        }
    }
    // Unknown and malformed ids are 404; unknown routes 404; wrong methods 405.
    let missing = "0190a000-0000-7000-8000-000000000000";
    for path in [format!("/v1/prompt-injections/{missing}"), "/v1/prompt-injections/not-a-uuid".into(), "/nope".into()]
    {
        assert_eq!(get(&svc.base, &path).await.0, 404, "{path}");
    }
    let r = http.put(&url).bearer_auth(INJECTOR).send().await.unwrap();
    assert_eq!(r.status(), 405);
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "method_not_allowed");

    // Garbage at every route never gets a 5xx.
    let bodies: [&[u8]; 3] = [b"", b"\xde\xad\xbe\xef", b"{\"conversationId\": [[[[[[[[[[]]]]]]]]]]}"];
    for (method, path, _, _) in server::openapi::ROUTES {
        for id in ["x", missing, "%00", "0190a000-0000-7000-8000-000000000000/../.."] {
            let p = path.replace("{id}", id);
            for body in bodies {
                for key in [INJECTOR, ADMIN, ""] {
                    let m = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
                    let resp = http
                        .request(m, format!("{}{p}", svc.base))
                        .header("content-type", "application/json")
                        .header("last-event-id", "garbage")
                        .bearer_auth(key)
                        .body(body.to_vec())
                        .timeout(Duration::from_secs(5))
                        .send()
                        .await;
                    if let Ok(resp) = resp {
                        assert!(resp.status().as_u16() < 500, "{method} {p}: {}", resp.status());
                    }
                }
            }
        }
    }
    svc.stop().await;
}

#[tokio::test]
async fn ops_routes_and_openapi_match_the_router() {
    let dir = tempfile::tempdir().unwrap();
    let emu = emulator::spawn(EmulatorConfig::default()).await.unwrap();
    let conv = emu.create_conversation(NewConversation::default()).conversation_id;
    let svc = start(dir.path(), &emu, 65536).await;
    let http = reqwest::Client::new();
    assert_eq!(http.get(format!("{}/healthz", svc.base)).send().await.unwrap().status(), 200);
    assert_eq!(http.get(format!("{}/readyz", svc.base)).send().await.unwrap().status(), 200);
    post(&svc.base, &payload(&conv, 3, 500, 10_000, json!({})), None).await;
    // /metrics needs a key; a `metrics` key scrapes but may not touch prompts.
    assert_eq!(http.get(format!("{}/metrics", svc.base)).send().await.unwrap().status(), 401);
    let denied =
        http.get(format!("{}/v1/conversations/{conv}/prompts", svc.base)).bearer_auth(SCRAPER).send().await.unwrap();
    assert_eq!(denied.status(), 403);
    let m = http.get(format!("{}/metrics", svc.base)).bearer_auth(SCRAPER).send().await.unwrap();
    assert_eq!(m.status(), 200);
    let m = m.text().await.unwrap();
    for needle in [
        "gc_assist_injection_transitions_total{status=\"scheduled\"} 1",
        "gc_assist_admit_latency_seconds_count 1",
        "gc_assist_queue_depth 0",
        "gc_assist_injections{status=\"scheduled\"} 1",
        "gc_assist_outbox_pending",
        "gc_assist_genesys_429_total",
    ] {
        assert!(m.contains(needle), "metrics lack {needle}:\n{m}");
    }
    let doc: Value = http.get(format!("{}/openapi.json", svc.base)).send().await.unwrap().json().await.unwrap();
    let paths = doc["paths"].as_object().unwrap();
    let mut listed = 0;
    for (path, ops) in paths {
        for method in ops.as_object().unwrap().keys() {
            listed += 1;
            // Every documented route exists: it answers something other than the router's 404/405.
            let p = path.replace("{id}", "0190a000-0000-7000-8000-000000000000");
            let m = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let resp = http.request(m, format!("{}{p}", svc.base)).send().await.unwrap();
            let status = resp.status().as_u16();
            if status == 404 || status == 405 {
                let b: Value = resp.json().await.unwrap_or(Value::Null);
                assert_ne!(b["error"], "method_not_allowed", "{method} {path}");
                assert!(!b["message"].as_str().unwrap_or("").contains("no such route"), "{method} {path}");
            }
        }
    }
    assert_eq!(listed, server::openapi::ROUTES.len());
    svc.stop().await;
}

#[tokio::test]
async fn restart_resumes_scheduled_and_queued_prompts() {
    let dir = tempfile::tempdir().unwrap();
    let emu = emulator::spawn(EmulatorConfig::default()).await.unwrap();
    let conv = emu.create_conversation(NewConversation::default()).conversation_id;
    let svc = start(dir.path(), &emu, 65536).await;
    let (_, a) = post(&svc.base, &payload(&conv, 1, 3000, 60_000, json!({})), None).await;
    let (_, b) = post(&svc.base, &payload(&conv, 1, 500, 10_000, json!({})), None).await;
    assert_eq!((a["status"].as_str(), b["status"].as_str()), (Some("scheduled"), Some("queued")));
    let (a, b) = (a["injectionId"].as_str().unwrap().to_string(), b["injectionId"].as_str().unwrap().to_string());
    svc.stop().await;

    let svc = start(dir.path(), &emu, 65536).await;
    assert_eq!(status_of(&svc.base, &a).await, "scheduled");
    assert_eq!(status_of(&svc.base, &b).await, "queued");
    // The first keeps its show time (3 s after it was accepted), the second still waits.
    wait_status(&svc.base, &a, "delivered", Duration::from_secs(4)).await;
    assert_eq!(status_of(&svc.base, &b).await, "queued");
    svc.stop().await;

    // Restarted again while the first is on screen: it keeps its slot, and the panel
    // stream offers it again to a panel that reconnects.
    let svc = start(dir.path(), &emu, 65536).await;
    let mut sse = open_stream(&svc.base, &conv, None).await;
    let mut buf = String::new();
    let (ev, _, data) = next_event(&mut sse, &mut buf, Duration::from_secs(2)).await.expect("republished prompt");
    assert_eq!((ev.as_str(), data["injectionId"].as_str()), ("prompt", Some(a.as_str())));
    assert_eq!(status_of(&svc.base, &a).await, "delivered");
    assert_eq!(status_of(&svc.base, &b).await, "queued");
    // The recovered ledger still holds the slot: freeing it promotes the queued one.
    let r = reqwest::Client::new()
        .delete(format!("{}/v1/prompt-injections/{a}", svc.base))
        .bearer_auth(INJECTOR)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    wait_status(&svc.base, &b, "delivered", Duration::from_secs(3)).await;
    drop(sse);
    svc.stop().await;
}

#[test]
fn keys_new_prints_a_key_and_its_hash() {
    let out = support::run(&["keys", "new", "--id", "crm", "--role", "admin", "--json"], &[]);
    assert!(out.status.success(), "{}", support::stderr(&out));
    let v: Value = serde_json::from_str(support::stdout(&out).trim()).unwrap();
    let key = v["key"].as_str().unwrap();
    assert!(key.len() > 40);
    assert_eq!(v["sha256"], key_hash_hex(key).as_str());
    assert_eq!(v["role"], "admin");
    let bad = support::run(&["keys", "new", "--id", "crm", "--role", "root"], &[]);
    assert_eq!(bad.status.code(), Some(2), "{}", support::stderr(&bad));
    let toml = support::run(&["keys", "new", "--id", "crm"], &[]);
    assert!(support::stdout(&toml).contains("[[server.api_keys]]"));
}

#[tokio::test]
async fn failed_participant_data_write_is_recorded_and_the_panel_still_shows() {
    let dir = tempfile::tempdir().unwrap();
    let emu = emulator::spawn(EmulatorConfig::default()).await.unwrap();
    let conv = emu.create_conversation(NewConversation::default()).conversation_id;
    // The agent left: there is no connected agent participant to write to.
    assert!(emu.end_conversation(&conv));
    let svc = start(dir.path(), &emu, 65536).await;
    let mut sse = open_stream(&svc.base, &conv, None).await;
    let (st, b) = post(&svc.base, &payload(&conv, 3, 500, 10_000, json!({})), None).await;
    assert_eq!(st, 201);
    let id = b["injectionId"].as_str().unwrap().to_string();
    let mut buf = String::new();
    let (ev, _, _) = next_event(&mut sse, &mut buf, Duration::from_secs(3)).await.expect("panel event");
    assert_eq!(ev, "prompt");
    let until = Instant::now() + Duration::from_secs(8);
    loop {
        let (_, full) = get(&svc.base, &format!("/v1/prompt-injections/{id}")).await;
        let failure = full["timeline"].as_array().unwrap().iter().find(|r| !r["error"].is_null()).cloned();
        if let Some(r) = failure {
            assert_eq!(r["reason"], "participant_data_show_failed");
            assert!(r["error"].as_str().unwrap().contains("no connected agent"), "{r}");
            assert_eq!(full["status"], "delivered", "the panel still shows it");
            break;
        }
        assert!(Instant::now() < until, "failure never recorded: {full}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(sse);
    svc.stop().await;
}

#[test]
fn serve_binary_delivers_webhooks_and_stops_cleanly_on_sigterm() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};

    use gc_assist::webhook::{Receiver, ReceiverConfig, WebhookSecret};
    use rand::SeedableRng;
    use secrecy::ExposeSecret;

    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let secret = WebhookSecret::generate(&mut rand::rngs::StdRng::seed_from_u64(7));
    let receiver = rt.block_on(Receiver::spawn(ReceiverConfig::new(vec![secret.clone()]))).unwrap();
    let cfg = dir.path().join("gc-assist.toml");
    std::fs::write(
        &cfg,
        format!(
            "[store]\npath = {:?}\n[audit]\nkey_file = {:?}\nanchor_file = {:?}\n[webhook]\nallow_private = [\"127.0.0.1/32\"]\nschedule_secs = [1]\n\
             [server]\nchannels = [\"panel\"]\n[[server.api_keys]]\nid = \"t\"\nsha256 = \"{}\"\nrole = \"injector\"\n",
            dir.path().join("serve.db"),
            dir.path().join("audit.key"),
            dir.path().join("anchors.jsonl"),
            key_hash_hex(INJECTOR)
        ),
    )
    .unwrap();
    let mut child = Command::new(support::bin())
        .args(["serve", "--bind", "127.0.0.1:0", "--config"])
        .arg(&cfg)
        .env("GC_ASSIST__WEBHOOK__SECRET", secret.to_whsec().expose_secret())
        .current_dir(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let base = loop {
        let line = lines.next().expect("serve printed its address").unwrap();
        if let Some(rest) = line.strip_prefix("gc-assist serving on ") {
            break rest.trim().to_string();
        }
    };
    let conv = "8a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d";
    let body = payload(conv, 3, 500, 10_000, json!({"webhookUrl": receiver.url(), "contextData": {"ticket": 7}}));
    let (st, b) = rt.block_on(post(&base, &body, None));
    assert_eq!(st, 201, "{b}");
    // The worker, woken by the commit, delivers the signed INJECTED event.
    let delivery = rt.block_on(async {
        let until = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(d) = receiver.deliveries().into_iter().next() {
                return d;
            }
            assert!(Instant::now() < until, "no webhook delivered");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let event: Value = serde_json::from_slice(&delivery.body).unwrap();
    assert_eq!(event["eventType"], "AGENT_ASSIST_PROMPT_INJECTED");
    assert_eq!(event["injectionId"], b["injectionId"]);
    assert_eq!(event["context"], json!({"ticket": 7}));
    assert_eq!(event["alignmentStatus"], "SYNCED");

    let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // The injection survived the shutdown on disk.
    let store = rt.block_on(Store::open(&dir.path().join("serve.db"), StoreOptions::default())).unwrap();
    let id = uuid::Uuid::parse_str(b["injectionId"].as_str().unwrap()).unwrap();
    assert!(rt.block_on(store.get_injection(id)).unwrap().is_some());
    rt.block_on(store.close()).unwrap();
}

#[tokio::test]
async fn sheds_load_with_429_and_retry_after() {
    let dir = tempfile::tempdir().unwrap();
    let emu = emulator::spawn(EmulatorConfig::default()).await.unwrap();
    let svc = start_with(dir.path(), &emu, |c| c.shed_queue_depth = 1).await;
    let mut shed = None;
    for _ in 0..20 {
        let posts = (0..20).map(|_| {
            let conv = uuid::Uuid::now_v7().to_string();
            let base = svc.base.clone();
            async move {
                reqwest::Client::new()
                    .post(format!("{base}/v1/prompt-injections"))
                    .bearer_auth(INJECTOR)
                    .json(&payload(&conv, 3, 500, 10_000, json!({})))
                    .send()
                    .await
                    .unwrap()
            }
        });
        for r in futures::future::join_all(posts).await {
            match r.status().as_u16() {
                201 => {}
                429 => shed = Some(r),
                other => panic!("unexpected {other}"),
            }
        }
        if shed.is_some() {
            break;
        }
    }
    let r = shed.expect("with one write allowed in flight, concurrent requests are shed");
    assert_eq!(r.headers().get("retry-after").unwrap(), "1");
    let b: Value = r.json().await.unwrap();
    assert_eq!((b["error"].as_str(), b["retryAfterMs"].as_u64()), (Some("overloaded"), Some(1000)));
    svc.stop().await;
}

/// Runs the real binary off the async runtime (it blocks until the command ends).
async fn run_cli(args: Vec<String>) -> std::process::Output {
    tokio::task::spawn_blocking(move || {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        support::run(&refs, &[])
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inject_through_the_service_one_payload() {
    let dir = tempfile::tempdir().unwrap();
    let emu = emulator::spawn(EmulatorConfig::default()).await.unwrap();
    let call = emu.create_conversation(NewConversation::default());
    let svc = start(dir.path(), &emu, 65536).await;
    let file = dir.path().join("p.json");
    std::fs::write(&file, payload(&call.conversation_id, 2, 500, 10000, json!({})).to_string()).unwrap();
    let f = file.to_string_lossy().to_string();
    let args = |key: &str| -> Vec<String> {
        ["inject", &f, "--server", &svc.base, "--api-key", key, "--idempotency-key", "one"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    };

    let out = run_cli(args(INJECTOR)).await;
    assert_eq!(out.status.code(), Some(0), "{}", support::stderr(&out));
    let body: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(body["status"], "scheduled");
    let id = body["injectionId"].as_str().unwrap().to_string();
    // The same Idempotency-Key through the CLI answers the first injection again.
    let again: Value = serde_json::from_slice(&run_cli(args(INJECTOR)).await.stdout).unwrap();
    assert_eq!(again["injectionId"], id.as_str());

    let out = run_cli(args("wrong-key")).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(support::stderr(&out).contains("401"), "{}", support::stderr(&out));

    std::fs::write(&file, payload(&call.conversation_id, 5, 100, 10000, json!({})).to_string()).unwrap();
    let mut a = args(INJECTOR);
    a[7] = "two".into();
    let out = run_cli(a).await;
    assert_eq!(out.status.code(), Some(1), "a 422 is a failed check");
    let body: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(body["issues"].as_array().map(Vec::len), Some(2), "{body}");
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inject_batch_reports_a_summary_and_reruns_create_nothing_new() {
    let dir = tempfile::tempdir().unwrap();
    let emu = emulator::spawn(EmulatorConfig::default()).await.unwrap();
    let svc = start_with(dir.path(), &emu, |c| c.channels = vec!["panel".into()]).await;
    let conversations: Vec<String> = (0..10).map(|_| uuid::Uuid::new_v4().to_string()).collect();
    let mut lines: Vec<String> = conversations
        .iter()
        .flat_map(|c| {
            [payload(c, 3, 500, 10000, json!({})).to_string(), payload(c, 3, 500, 10000, json!({})).to_string()]
        })
        .collect();
    lines.insert(5, "{\"conversationId\": 42}".into());
    lines.insert(9, String::new());
    let file = dir.path().join("batch.jsonl");
    std::fs::write(&file, lines.join("\n")).unwrap();
    let args: Vec<String> = [
        "inject",
        &file.to_string_lossy(),
        "--server",
        &svc.base,
        "--api-key",
        INJECTOR,
        "--batch",
        "--json",
        "--concurrency",
        "4",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();

    let out = run_cli(args.clone()).await;
    assert_eq!(out.status.code(), Some(1), "one line is invalid: {}", support::stderr(&out));
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["lines"], 21, "{summary}");
    assert_eq!(summary["accepted"], 20, "{summary}");
    assert_eq!(summary["refused"]["422"], 1, "{summary}");
    assert_eq!(summary["failures"][0]["line"], 6, "{summary}");
    assert!(summary["clientLatencyMs"]["p99"].as_f64().unwrap() > 0.0);

    // Rerunning the same file (an operator retrying a half-sent batch) creates nothing twice.
    let out = run_cli(args).await;
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["accepted"], 20, "{summary}");
    for c in &conversations {
        let (_, prompts) = get(&svc.base, &format!("/v1/conversations/{c}/prompts")).await;
        let n = prompts.as_array().map(Vec::len).or_else(|| prompts["prompts"].as_array().map(Vec::len));
        assert_eq!(n, Some(2), "conversation {c}: {prompts}");
    }
    svc.stop().await;
}

/// Many conversations falling due at the same moment are delivered together: their
/// updates share group commits instead of paying one transaction each, so delivery keeps
/// up with acceptance under load.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prompts_due_together_share_commits() {
    const N: usize = 200;
    let dir = tempfile::tempdir().unwrap();
    let emu = emulator::spawn(EmulatorConfig::default()).await.unwrap();
    let svc = start_with(dir.path(), &emu, |c| c.channels = vec!["panel".into()]).await;
    let bodies: Vec<Value> =
        (0..N).map(|_| payload(&uuid::Uuid::new_v4().to_string(), 1, 2000, 10000, json!({}))).collect();
    let started = Instant::now();
    let answers = futures::future::join_all(bodies.iter().map(|b| post(&svc.base, b, None))).await;
    assert!(started.elapsed() < Duration::from_millis(1500), "accepting {N} took too long to test the timer");
    let ids: Vec<String> = answers
        .iter()
        .map(|(code, body)| {
            assert_eq!(*code, 201, "{body}");
            body["injectionId"].as_str().unwrap().to_string()
        })
        .collect();
    let before = svc.store.stats().transactions;
    // Every prompt falls due within the same moment, about 2 s after it was accepted.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut delivered = 0;
        for id in &ids {
            let row = svc.store.get_injection(id.parse().unwrap()).await.unwrap().unwrap().row;
            delivered += usize::from(row.status.as_str() == "delivered");
        }
        if delivered == N {
            break;
        }
        assert!(Instant::now() < deadline, "only {delivered} of {N} delivered");
    }
    let used = svc.store.stats().transactions - before;
    assert!(used < N as u64 * 3 / 4, "{N} deliveries took {used} transactions: the timer is not batching");
    svc.stop().await;
}

/// A participant-data write that never happened before the process stopped (here: the
/// channel was off) is made when the service recovers the prompt that is still on screen.
#[tokio::test]
async fn recovery_writes_participant_data_for_prompts_still_on_screen() {
    let dir = tempfile::tempdir().unwrap();
    let emu = emulator::spawn(EmulatorConfig::default()).await.unwrap();
    let call = emu.create_conversation(NewConversation::default());
    let svc = start_with(dir.path(), &emu, |c| c.channels = vec!["panel".into()]).await;
    let (_, a) = post(&svc.base, &payload(&call.conversation_id, 1, 500, 60_000, json!({})), None).await;
    let id = a["injectionId"].as_str().unwrap().to_string();
    wait_status(&svc.base, &id, "delivered", Duration::from_secs(3)).await;
    svc.stop().await;
    let attrs = emu.participant_attributes(&call.conversation_id, &call.agent_participant_id).unwrap_or_default();
    assert!(!attrs.keys().any(|k| k.contains(&id)), "panel-only: nothing written yet");

    let svc = start(dir.path(), &emu, 65536).await;
    let key = format!("gcAssist.prompt.{id}");
    let deadline = Instant::now() + Duration::from_secs(5);
    let value = loop {
        let attrs = emu.participant_attributes(&call.conversation_id, &call.agent_participant_id).unwrap_or_default();
        if let Some(v) = attrs.get(&key) {
            break v.clone();
        }
        assert!(Instant::now() < deadline, "recovery did not write {key}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let shown: Value = serde_json::from_str(&value).unwrap();
    assert_eq!(shown["status"], "shown");
    svc.stop().await;
}

#[tokio::test]
async fn shutdown_still_writes_participant_data_marks_already_queued() {
    let dir = tempfile::tempdir().unwrap();
    let emu = emulator::spawn(EmulatorConfig::default()).await.unwrap();
    let call = emu.create_conversation(NewConversation::default());
    let svc = start(dir.path(), &emu, 65536).await;
    let (st, body) = post(&svc.base, &payload(&call.conversation_id, 2, 500, 60_000, json!({})), None).await;
    assert_eq!(st, 201, "{body}");
    let id = body["injectionId"].as_str().unwrap().to_string();
    let key = format!("gcAssist.prompt.{id}");
    let shown = |v: &str| v.contains("\"status\":\"shown\"");
    let until = Instant::now() + Duration::from_secs(5);
    while !emu
        .participant_attributes(&call.conversation_id, &call.agent_participant_id)
        .unwrap()
        .get(&key)
        .is_some_and(|v| shown(v))
    {
        assert!(Instant::now() < until, "participant data never written");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Genesys answers slowly: the withdrawal's mark is still queued when shutdown begins.
    emu.faults().latency(Duration::from_millis(400));
    let r = reqwest::Client::new()
        .delete(format!("{}/v1/prompt-injections/{id}", svc.base))
        .bearer_auth(INJECTOR)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    svc.stop().await;
    let attrs = emu.participant_attributes(&call.conversation_id, &call.agent_participant_id).unwrap();
    assert!(
        attrs.get(&key).is_some_and(|v| v.contains("\"status\":\"withdrawn\"")),
        "mark lost at shutdown: {attrs:?}"
    );
}
