//! Integration tests of the agent panel over HTTP (no browser): sign-in against the emulator
//! (users/me + the conversation's participants), session scoping, the session-scoped SSE
//! stream with Last-Event-ID, and engagement intake (stored, audited, webhooks queued).
//! `PanelStack` is shared with the browser tests.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use gc_assist::config::{ApiKeyConfig, Config};
use gc_assist::emulator::{self, Emulator, EmulatorConfig, NewConversation};
use gc_assist::genesys::GenesysClient;
use gc_assist::injection::service::{Channels, Service, ServiceDeps};
use gc_assist::panel::PanelAuth;
use gc_assist::server::{self, key_hash_hex, AppState};
use gc_assist::store::{EngagementKind, EngagementRow, Store, StoreOptions, SystemClock};
use serde_json::{json, Value};
use tokio::sync::oneshot;

use crate::support::next_event;

pub const INJECTOR: &str = "panel-test-injector";
const HOOK: &str = "https://kb.example/hooks/gc-assist";

/// A service with the panel on, signing agents in against an emulator.
pub struct PanelStack {
    pub base: String,
    pub emu: Emulator,
    pub store: Store,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl PanelStack {
    pub async fn start(dir: &Path) -> PanelStack {
        let emu = emulator::spawn(EmulatorConfig::default()).await.unwrap();
        let defaults = Config::defaults();
        let mut cfg = defaults.server.clone();
        cfg.api_keys =
            vec![ApiKeyConfig { id: "injector".into(), sha256: key_hash_hex(INJECTOR), role: "injector".into() }];
        let store = Store::open(&dir.join("panel.db"), StoreOptions::default()).await.unwrap();
        let client = GenesysClient::new(emu.client_settings(&defaults.genesys).unwrap()).unwrap();
        let service = Service::start(ServiceDeps {
            store: store.clone(),
            catalogue: None,
            channels: Channels { panel: true, participant_data: false },
            genesys: Some(client.clone()),
            clock: Arc::new(SystemClock),
            global_webhooks: vec![HOOK.into()],
            on_commit: None,
            attribute_prefix: "gcAssist".into(),
        })
        .await
        .unwrap();
        let mut pcfg = defaults.panel.clone();
        pcfg.oauth_client_id = "gc-assist-panel-test".into();
        pcfg.login_base = emu.base_url();
        let hosts = gc_assist::genesys::region::resolve(&emu.base_url()).unwrap();
        let state = AppState::new(service, &cfg).unwrap().with_panel(PanelAuth::new(&pcfg, &hosts, Some(client)));
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
        PanelStack { base, emu, store, stop: Some(tx), task: Some(task) }
    }

    /// A live conversation whose agent is `agent` (a user id).
    pub fn conversation(&self, agent: &str) -> String {
        self.emu
            .create_conversation(NewConversation { agent_user_id: Some(agent.into()), ..Default::default() })
            .conversation_id
    }

    /// Posts a high-priority injection; returns its id.
    pub async fn inject(&self, conv: &str, title: &str, max: u8, delay_ms: u64, dismiss_ms: u64) -> String {
        self.inject_as(conv, title, "high", max, delay_ms, dismiss_ms).await
    }

    /// Posts an injection of this priority; returns its id.
    pub async fn inject_as(
        &self,
        conv: &str,
        title: &str,
        priority: &str,
        max: u8,
        delay_ms: u64,
        dismiss_ms: u64,
    ) -> String {
        let body = json!({
            "conversationId": conv,
            "promptId": "d4e5f6a7-b8c9-0123-4567-890abcdef123",
            "triggerConditions": [],
            "displaySettings": {"delayMs": delay_ms, "maxConcurrentPrompts": max, "autoDismissMs": dismiss_ms},
            "prompt": {"title": title, "body": format!("Body of {title}."), "priority": priority,
                       "url": "https://kb.example/articles/refunds"}
        });
        let resp = reqwest::Client::new()
            .post(format!("{}/v1/prompt-injections", self.base))
            .bearer_auth(INJECTOR)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 201);
        let v: Value = resp.json().await.unwrap();
        v["injectionId"].as_str().unwrap().to_string()
    }

    pub async fn status(&self, id: &str) -> String {
        let v: Value = reqwest::Client::new()
            .get(format!("{}/v1/prompt-injections/{id}", self.base))
            .bearer_auth(INJECTOR)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v["status"].as_str().unwrap_or("").to_string()
    }

    pub async fn wait_status(&self, id: &str, want: &str, within: Duration) {
        let until = Instant::now() + within;
        loop {
            let s = self.status(id).await;
            if s == want {
                return;
            }
            assert!(Instant::now() < until, "injection {id} is {s}, expected {want}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Every engagement row stored so far.
    pub async fn engagements(&self) -> Vec<EngagementRow> {
        let mut out = Vec::new();
        self.store.engagement_events(0, i64::MAX, |e| out.push(e)).await.unwrap();
        out
    }

    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
        }
        self.store.close().await.unwrap();
        self.emu.shutdown().await;
    }
}

/// `POST /panel/session` with a Genesys token: (status, body).
async fn sign_in(base: &str, token: Option<&str>, conv: &str) -> (u16, Value) {
    let mut r = reqwest::Client::new().post(format!("{base}/panel/session")).json(&json!({ "conversationId": conv }));
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    let resp = r.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn session_for(stack: &PanelStack, agent: &str, conv: &str) -> String {
    let token = stack.emu.issue_agent_token(agent);
    let (status, body) = sign_in(&stack.base, Some(&token), conv).await;
    assert_eq!(status, 201, "{body}");
    body["session"].as_str().unwrap().to_string()
}

async fn open_stream(base: &str, conv: &str, session: &str, last: Option<u64>) -> reqwest::Response {
    let mut r = reqwest::Client::new().get(format!("{base}/panel/conversations/{conv}/stream")).bearer_auth(session);
    if let Some(l) = last {
        r = r.header("last-event-id", l.to_string());
    }
    r.send().await.unwrap()
}

async fn engage(base: &str, session: &str, id: &str, body: Value) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .post(format!("{base}/panel/injections/{id}/engagements"))
        .bearer_auth(session)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

const AGENT: &str = "a1a1a1a1-0000-4000-8000-000000000001";
const OTHER_AGENT: &str = "b2b2b2b2-0000-4000-8000-000000000002";

#[tokio::test]
async fn sign_in_admits_only_the_conversations_agent() {
    let dir = tempfile::tempdir().unwrap();
    let stack = PanelStack::start(dir.path()).await;
    let conv = stack.conversation(AGENT);
    let other_conv = stack.conversation(OTHER_AGENT);
    let agent = stack.emu.issue_agent_token(AGENT);
    let other = stack.emu.issue_agent_token(OTHER_AGENT);

    let (s, body) = sign_in(&stack.base, Some(&agent), &conv).await;
    assert_eq!(s, 201, "{body}");
    assert_eq!(body["userId"], AGENT);
    assert_eq!(body["conversationId"], conv.as_str());
    assert!(body["expiresInSecs"].as_i64().unwrap() > 800);
    let session = body["session"].as_str().unwrap().to_string();
    assert_eq!(session.len(), 43);

    // The cache: signing in again on the same conversation asks Genesys nothing.
    let calls = stack.emu.stats().api_requests;
    assert_eq!(sign_in(&stack.base, Some(&agent), &conv).await.0, 201);
    assert_eq!(stack.emu.stats().api_requests, calls, "a fresh validation is cached");

    // (token, conversation, expected status)
    let unknown_conv = uuid::Uuid::new_v4().to_string();
    let cases: Vec<(Option<&str>, &str, u16)> = vec![
        (Some(&other), &conv, 403),
        (Some(&agent), &other_conv, 403),
        (Some(&agent), &unknown_conv, 403),
        (Some("not-a-genesys-token"), &conv, 401),
        (None, &conv, 401),
        (Some(&agent), "not-a-uuid", 400),
    ];
    for (token, c, want) in cases {
        let (s, b) = sign_in(&stack.base, token, c).await;
        assert_eq!(s, want, "token {:?} on {c}: {b}", token.map(|t| &t[..4.min(t.len())]));
        assert!(b["session"].is_null());
    }

    // The session sees its own conversation only.
    let resp = open_stream(&stack.base, &conv, &session, None).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers().get("content-type").and_then(|v| v.to_str().ok()), Some("text/event-stream"));
    drop(resp);
    assert_eq!(open_stream(&stack.base, &other_conv, &session, None).await.status(), 403);
    assert_eq!(open_stream(&stack.base, &conv, "forged-session", None).await.status(), 401);
    // An API key is not a panel session.
    assert_eq!(open_stream(&stack.base, &conv, INJECTOR, None).await.status(), 401);
    stack.stop().await;
}

#[tokio::test]
async fn stream_engagements_are_stored_audited_and_sent() {
    let dir = tempfile::tempdir().unwrap();
    let stack = PanelStack::start(dir.path()).await;
    let conv = stack.conversation(AGENT);
    let other_conv = stack.conversation(OTHER_AGENT);
    let session = session_for(&stack, AGENT, &conv).await;
    let mut sse = open_stream(&stack.base, &conv, &session, None).await;
    assert_eq!(sse.status(), 200);
    let mut buf = String::new();
    let (ev, _, hello) = next_event(&mut sse, &mut buf, Duration::from_secs(5)).await.unwrap();
    assert_eq!(ev, "hello");
    assert!(hello["serverTime"].is_string());

    let a = stack.inject(&conv, "First", 3, 500, 10_000).await;
    let b = stack.inject(&conv, "Second", 3, 500, 10_000).await;
    let foreign = stack.inject(&other_conv, "Not yours", 3, 500, 10_000).await;
    let mut ids = Vec::new();
    for _ in 0..2 {
        let (ev, id, data) = next_event(&mut sse, &mut buf, Duration::from_secs(5)).await.unwrap();
        assert_eq!(ev, "prompt");
        assert_eq!(data["maxConcurrentPrompts"], 3);
        assert_eq!(data["autoDismissMs"], 10_000);
        assert_ne!(data["title"], "Not yours");
        ids.push((id, data["injectionId"].as_str().unwrap().to_string()));
    }
    assert!(ids[0].0 < ids[1].0);
    assert_eq!([ids[0].1.as_str(), ids[1].1.as_str()], [a.as_str(), b.as_str()]);

    // viewed: recorded once, however often the page reports it.
    assert_eq!(engage(&stack.base, &session, &a, json!({"type": "viewed"})).await.0, 200);
    let (s, again) = engage(&stack.base, &session, &a, json!({"type": "viewed"})).await;
    assert_eq!((s, again["duplicate"].as_bool()), (200, Some(true)));
    assert_eq!(stack.status(&a).await, "delivered", "viewed changes no status");

    let (s, v) = engage(&stack.base, &session, &a, json!({"type": "clicked"})).await;
    assert_eq!((s, v["status"].as_str()), (200, Some("clicked")));
    let (ev, _, data) = next_event(&mut sse, &mut buf, Duration::from_secs(5)).await.unwrap();
    assert_eq!(
        (ev.as_str(), data["injectionId"].as_str(), data["reason"].as_str()),
        ("remove", Some(a.as_str()), Some("clicked"))
    );
    // Clicking again finds it gone.
    assert_eq!(engage(&stack.base, &session, &a, json!({"type": "clicked"})).await.0, 409);

    assert_eq!(engage(&stack.base, &session, &b, json!({"type": "feedback", "rating": -1})).await.0, 200);
    // (body, expected status)
    let refusals = [
        (json!({"type": "feedback", "rating": 0}), 400),
        (json!({"type": "feedback"}), 400),
        (json!({"type": "shown"}), 400),
        (json!({"kind": "viewed"}), 400),
    ];
    for (body, want) in refusals {
        assert_eq!(engage(&stack.base, &session, &b, body.clone()).await.0, want, "{body}");
    }
    let (s, v) = engage(&stack.base, &session, &b, json!({"type": "dismissed"})).await;
    assert_eq!((s, v["status"].as_str()), (200, Some("dismissed")));
    // Another conversation's prompt, a forged session, an unknown injection.
    stack.wait_status(&foreign, "delivered", Duration::from_secs(5)).await;
    assert_eq!(engage(&stack.base, &session, &foreign, json!({"type": "dismissed"})).await.0, 403);
    assert_eq!(stack.status(&foreign).await, "delivered");
    assert_eq!(engage(&stack.base, "forged", &b, json!({"type": "viewed"})).await.0, 401);
    assert_eq!(
        engage(&stack.base, &session, &uuid::Uuid::new_v4().to_string(), json!({"type": "viewed"})).await.0,
        404
    );

    // Stored: engagement rows with the agent's id and the rating.
    let rows = stack.engagements().await;
    let mine: Vec<(String, EngagementKind, Option<String>, Option<i8>)> = rows
        .iter()
        .filter(|r| r.conversation_id.to_string() == conv)
        .map(|r| (r.injection_id.to_string(), r.kind, r.agent_id.clone(), r.rating))
        .collect();
    let agent = Some(AGENT.to_string());
    for want in [
        (a.clone(), EngagementKind::Viewed, agent.clone(), None),
        (a.clone(), EngagementKind::Clicked, agent.clone(), None),
        (b.clone(), EngagementKind::Feedback, agent.clone(), Some(-1)),
        (b.clone(), EngagementKind::Dismissed, agent.clone(), None),
    ] {
        assert!(mine.contains(&want), "{want:?} not in {mine:?}");
    }
    assert_eq!(mine.iter().filter(|r| r.1 == EngagementKind::Viewed).count(), 1);
    assert_eq!(mine.iter().filter(|r| r.1 == EngagementKind::Shown).count(), 2);

    // Audited, by the agent.
    let audit = stack.store.audit_batch(0, 1000).await.unwrap();
    let by_agent: Vec<(String, String)> = audit
        .iter()
        .filter(|r| r.actor == format!("agent:{AGENT}"))
        .map(|r| (r.injection_id.to_string(), r.status.clone()))
        .collect();
    for want in [(&a, "viewed"), (&a, "clicked"), (&b, "feedback"), (&b, "dismissed")] {
        assert!(by_agent.contains(&(want.0.clone(), want.1.to_string())), "{want:?} not audited: {by_agent:?}");
    }

    // Webhooks queued: viewed, clicked, dismissed (feedback has no event type).
    let outbox = stack.store.outbox_list(None, 1000).await.unwrap();
    let events: Vec<(String, String)> =
        outbox.iter().map(|o| (o.injection_id.to_string(), o.event_type.clone())).collect();
    for want in
        [(&a, "AGENT_ASSIST_PROMPT_VIEWED"), (&a, "AGENT_ASSIST_PROMPT_CLICKED"), (&b, "AGENT_ASSIST_PROMPT_DISMISSED")]
    {
        assert!(events.contains(&(want.0.clone(), want.1.to_string())), "{want:?} not queued: {events:?}");
    }
    let viewed: Value =
        serde_json::from_slice(&outbox.iter().find(|o| o.event_type == "AGENT_ASSIST_PROMPT_VIEWED").unwrap().body)
            .unwrap();
    assert_eq!(
        (viewed["injectionId"].as_str(), viewed["alignmentStatus"].as_str()),
        (Some(a.as_str()), Some("SYNCED"))
    );
    stack.stop().await;
}

#[tokio::test]
async fn a_reconnect_resumes_after_last_event_id() {
    let dir = tempfile::tempdir().unwrap();
    let stack = PanelStack::start(dir.path()).await;
    let conv = stack.conversation(AGENT);
    let session = session_for(&stack, AGENT, &conv).await;
    let a = stack.inject(&conv, "One", 3, 500, 30_000).await;
    stack.wait_status(&a, "delivered", Duration::from_secs(5)).await;
    let mut sse = open_stream(&stack.base, &conv, &session, None).await;
    let mut buf = String::new();
    assert_eq!(next_event(&mut sse, &mut buf, Duration::from_secs(5)).await.unwrap().0, "hello");
    let (ev, first_id, data) = next_event(&mut sse, &mut buf, Duration::from_secs(5)).await.unwrap();
    assert_eq!((ev.as_str(), data["injectionId"].as_str()), ("prompt", Some(a.as_str())));
    drop(sse);

    // While disconnected, another prompt arrives.
    let b = stack.inject(&conv, "Two", 3, 500, 30_000).await;
    stack.wait_status(&b, "delivered", Duration::from_secs(5)).await;
    let mut sse = open_stream(&stack.base, &conv, &session, Some(first_id)).await;
    let mut buf = String::new();
    assert_eq!(next_event(&mut sse, &mut buf, Duration::from_secs(5)).await.unwrap().0, "hello");
    let (ev, id, data) = next_event(&mut sse, &mut buf, Duration::from_secs(5)).await.unwrap();
    assert_eq!((ev.as_str(), data["injectionId"].as_str()), ("prompt", Some(b.as_str())), "only what was missed");
    assert!(id > first_id);
    assert!(next_event(&mut sse, &mut buf, Duration::from_millis(300)).await.is_none(), "nothing replayed twice");
    stack.stop().await;
}

#[tokio::test]
async fn page_config_and_the_emulators_implicit_grant() {
    let dir = tempfile::tempdir().unwrap();
    let stack = PanelStack::start(dir.path()).await;
    let conv = stack.conversation(AGENT);
    let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();

    let page = http.get(format!("{}/panel?conversationId={conv}", stack.base)).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let csp = page.headers().get("content-security-policy").unwrap().to_str().unwrap().to_string();
    assert!(csp.contains("script-src 'self'") && csp.contains("default-src 'none'"), "{csp}");
    assert!(page.text().await.unwrap().contains("/panel/assets/panel.js"));
    for (asset, ct) in [("panel.js", "text/javascript"), ("panel.css", "text/css")] {
        let r = http.get(format!("{}/panel/assets/{asset}", stack.base)).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert!(r.headers()["content-type"].to_str().unwrap().starts_with(ct));
    }
    let doc: Value = http.get(format!("{}/openapi.json", stack.base)).send().await.unwrap().json().await.unwrap();
    assert!(doc["paths"]["/panel/conversations/{id}/stream"]["get"]["security"][0]["panelSession"].is_array());
    assert!(doc["paths"]["/panel/session"]["post"]["security"][0]["genesysUserToken"].is_array());
    let cfg: Value = http.get(format!("{}/panel/config", stack.base)).send().await.unwrap().json().await.unwrap();
    let authorize = format!("{}/oauth/authorize", stack.emu.base_url());
    assert_eq!(cfg["signIn"], true);
    assert_eq!(cfg["authorizeUrl"], authorize.as_str());
    assert_eq!(cfg["oauthClientId"], "gc-assist-panel-test");

    // The emulator's login page lists the agent; its link redirects back with a user token.
    let redirect = format!("{}/panel", stack.base);
    let q = format!("response_type=token&client_id=x&redirect_uri={}&state=s1", urlencode(&redirect));
    let login = http.get(format!("{authorize}?{q}")).send().await.unwrap();
    assert_eq!(login.status(), 200);
    assert!(login.text().await.unwrap().contains(&format!("data-user-id=\"{AGENT}\"")));
    let back = http.get(format!("{authorize}?{q}&login_as={AGENT}")).send().await.unwrap();
    assert_eq!(back.status(), 302);
    let location = back.headers()["location"].to_str().unwrap().to_string();
    let (to, fragment) = location.split_once('#').unwrap();
    assert_eq!(to, redirect);
    let f: std::collections::HashMap<String, String> =
        url::form_urlencoded::parse(fragment.as_bytes()).into_owned().collect();
    assert_eq!((f["token_type"].as_str(), f["state"].as_str()), ("bearer", "s1"));
    let (s, body) = sign_in(&stack.base, Some(&f["access_token"]), &conv).await;
    assert_eq!((s, body["userId"].as_str()), (201, Some(AGENT)));
    // A wrong response_type comes back as an OAuth error in the fragment.
    let bad = http
        .get(format!("{authorize}?{}", q.replace("response_type=token", "response_type=code")))
        .send()
        .await
        .unwrap();
    assert!(bad.headers()["location"].to_str().unwrap().contains("error=unsupported_response_type"));
    stack.stop().await;
}

fn urlencode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

#[tokio::test]
async fn engagements_need_a_prompt_on_screen() {
    let dir = tempfile::tempdir().unwrap();
    let stack = PanelStack::start(dir.path()).await;
    let conv = stack.conversation(AGENT);
    let session = session_for(&stack, AGENT, &conv).await;
    // Scheduled, not yet shown: nothing to view, rate, click or dismiss.
    let a = stack.inject(&conv, "Later", 3, 5000, 10_000).await;
    for body in [
        json!({"type": "viewed"}),
        json!({"type": "feedback", "rating": 1}),
        json!({"type": "clicked"}),
        json!({"type": "dismissed"}),
    ] {
        let (s, v) = engage(&stack.base, &session, &a, body.clone()).await;
        assert_eq!((s, v["error"].as_str()), (409, Some("invalid_state")), "{body}: {v}");
    }
    assert_eq!(stack.status(&a).await, "scheduled");
    let rows = stack.engagements().await;
    assert!(rows.iter().all(|r| r.injection_id.to_string() != a), "nothing recorded: {rows:?}");
    // A refused view is not remembered: once shown, the same report counts.
    stack.wait_status(&a, "delivered", Duration::from_secs(8)).await;
    let (s, v) = engage(&stack.base, &session, &a, json!({"type": "viewed"})).await;
    assert_eq!((s, v["duplicate"].as_bool()), (200, None), "{v}");
    stack.stop().await;
}
