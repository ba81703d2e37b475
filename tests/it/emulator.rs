//! Integration tests: the Genesys Cloud emulator over real HTTP and websockets on loopback.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use gc_assist::emulator::{self, CallSource, Emulator, EmulatorConfig, EmulatorError, NewConversation};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message as WsMessage;

use crate::support;

fn http() -> reqwest::Client {
    reqwest::Client::new()
}

async fn emu_with(cfg: EmulatorConfig) -> Emulator {
    emulator::spawn(cfg).await.expect("emulator starts")
}

async fn emu() -> Emulator {
    emu_with(EmulatorConfig::default()).await
}

async fn token(e: &Emulator) -> String {
    let resp = http()
        .post(format!("{}/oauth/token", e.base_url()))
        .basic_auth(e.client_id(), Some(e.client_secret()))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .expect("token call");
    assert_eq!(resp.status(), StatusCode::OK);
    let body: Value = resp.json().await.expect("token json");
    body["access_token"].as_str().expect("access_token").to_string()
}

async fn call(e: &Emulator, tok: Option<&str>, method: Method, path: &str, body: Option<Value>) -> reqwest::Response {
    let mut req = http().request(method, format!("{}{path}", e.base_url()));
    if let Some(t) = tok {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    req.send().await.expect("request")
}

async fn get(e: &Emulator, tok: &str, path: &str) -> reqwest::Response {
    call(e, Some(tok), Method::GET, path, None).await
}

/// Check an `ErrorBody` answer and return it.
async fn error_body(resp: reqwest::Response, status: u16, code: &str) -> Value {
    assert_eq!(resp.status().as_u16(), status, "status");
    let correlation = resp
        .headers()
        .get("ININ-Correlation-ID")
        .and_then(|v| v.to_str().ok())
        .expect("correlation header")
        .to_string();
    let body: Value = resp.json().await.expect("error body is JSON");
    assert_eq!(body["code"], code, "{body}");
    assert_eq!(body["status"], status, "{body}");
    assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()), "{body}");
    assert_eq!(body["contextId"], correlation.as_str(), "{body}");
    assert_eq!(body["details"], json!([]));
    assert_eq!(body["errors"], json!([]));
    body
}

fn assert_no_nulls(v: &Value, path: &str) {
    match v {
        Value::Null => panic!("null at {path}"),
        Value::Array(a) => a.iter().enumerate().for_each(|(i, x)| assert_no_nulls(x, &format!("{path}[{i}]"))),
        Value::Object(m) => m.iter().for_each(|(k, x)| assert_no_nulls(x, &format!("{path}.{k}"))),
        _ => {}
    }
}

#[tokio::test]
async fn token_endpoint_happy_paths() {
    let e = emu().await;
    let resp = http()
        .post(format!("{}/oauth/token", e.base_url()))
        .basic_auth("gc-assist-emulator", Some("emulator-secret"))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["token_type"], "bearer");
    assert_eq!(body["expires_in"], 86400);
    assert!(body.get("refresh_token").is_none());
    let t1 = body["access_token"].as_str().unwrap().to_string();
    // Credentials as form fields are accepted too.
    let resp = http()
        .post(format!("{}/oauth/token", e.base_url()))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", e.client_id()),
            ("client_secret", e.client_secret()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let t2: Value = resp.json().await.unwrap();
    assert_ne!(t2["access_token"].as_str().unwrap(), t1, "tokens are random");
    assert_eq!(get(&e, &t1, "/api/v2/tokens/me").await.status(), 200);
    assert_eq!(e.stats().token_requests, 2);
}

#[tokio::test]
async fn token_endpoint_errors() {
    let e = emu().await;
    let url = format!("{}/oauth/token", e.base_url());
    let auth_error = |resp: reqwest::Response, status: u16, error: &'static str| async move {
        assert_eq!(resp.status().as_u16(), status);
        let b: Value = resp.json().await.unwrap();
        assert_eq!(b["error"], error, "{b}");
        assert!(b["description"].is_string() && b["error_description"].is_string(), "{b}");
        assert_eq!(b["description"], b["error_description"]);
        b
    };
    let wrong = http().post(&url).basic_auth(e.client_id(), Some("nope")).form(&[("grant_type", "client_credentials")]);
    auth_error(wrong.send().await.unwrap(), 401, "invalid_client").await;
    let none = http().post(&url).form(&[("grant_type", "client_credentials")]);
    auth_error(none.send().await.unwrap(), 401, "invalid_client").await;
    let no_grant = http().post(&url).basic_auth(e.client_id(), Some(e.client_secret())).form(&[("scope", "x")]);
    auth_error(no_grant.send().await.unwrap(), 400, "unsupported_grant_type").await;
    let password =
        http().post(&url).basic_auth(e.client_id(), Some(e.client_secret())).form(&[("grant_type", "password")]);
    auth_error(password.send().await.unwrap(), 400, "unsupported_grant_type").await;

    e.faults().token_rate_limit(1);
    let ok = || {
        http()
            .post(&url)
            .basic_auth(e.client_id(), Some(e.client_secret()))
            .form(&[("grant_type", "client_credentials")])
    };
    let b = auth_error(ok().send().await.unwrap(), 400, "invalid_request").await;
    assert_eq!(b["error_description"], "rate limit exceeded; retry later");
    assert_eq!(ok().send().await.unwrap().status(), 200, "the fault lasts one call");
}

#[tokio::test]
async fn errors_are_error_bodies_with_the_correlation_id() {
    let e = emu().await;
    let t = token(&e).await;
    let conv = e.calls()[0].clone();
    error_body(call(&e, None, Method::GET, "/api/v2/users/me", None).await, 401, "authentication.required").await;
    error_body(call(&e, Some("not-a-token"), Method::GET, "/api/v2/users/me", None).await, 401, "bad.credentials")
        .await;
    error_body(get(&e, &t, "/api/v2/conversations/00000000-0000-4000-8000-000000000000").await, 404, "not.found").await;
    error_body(get(&e, &t, "/api/v2/no/such/route").await, 404, "not.found").await;
    let attrs =
        format!("/api/v2/conversations/{}/participants/{}/attributes", conv.conversation_id, conv.agent_participant_id);
    let url = format!("{}{attrs}", e.base_url());
    let malformed =
        http().patch(&url).bearer_auth(&t).header("content-type", "application/json").body("{\"attributes\":").send();
    error_body(malformed.await.unwrap(), 400, "bad.request").await;
    let wrong_type =
        http().patch(&url).bearer_auth(&t).header("content-type", "text/plain").body("{\"attributes\":{}}").send();
    error_body(wrong_type.await.unwrap(), 415, "unsupported.media.type").await;
    let big = format!("{{\"attributes\":{{\"a\":\"{}\"}}}}", "x".repeat(600_000));
    let too_large = http().patch(&url).bearer_auth(&t).header("content-type", "application/json").body(big).send();
    error_body(too_large.await.unwrap(), 413, "request.entity.too.large").await;
    let wrong_method = call(&e, Some(&t), Method::DELETE, "/api/v2/users/me", None).await;
    error_body(wrong_method, 405, "method.not.allowed").await;
    // Even a path the router cannot decode answers an ErrorBody.
    error_body(get(&e, &t, "/api/v2/conversations/%FF").await, 400, "bad.request").await;
    let stats = e.stats();
    assert_eq!(stats.responses_by_status.get(&401), Some(&2));
    assert_eq!(stats.responses_by_status.get(&404), Some(&2));
    assert_eq!(stats.responses_by_status.get(&400), Some(&2));
    // Successful answers carry the header too.
    let ok = get(&e, &t, "/api/v2/tokens/me").await;
    assert!(ok.headers().get("inin-correlation-id").is_some());
}

#[tokio::test]
async fn tokens_me_and_users_me() {
    let e = emu().await;
    let t = token(&e).await;
    let me: Value = get(&e, &t, "/api/v2/tokens/me").await.json().await.unwrap();
    assert_eq!(me["OAuthClient"]["authorizedGrantType"], "CLIENT-CREDENTIALS");
    assert_eq!(me["OAuthClient"]["name"], e.client_id());
    assert!(me["organization"]["id"].is_string());
    assert_eq!(call(&e, Some(&t), Method::HEAD, "/api/v2/tokens/me", None).await.status(), 200);

    let body = error_body(get(&e, &t, "/api/v2/users/me").await, 400, "bad.request").await;
    assert_eq!(
        body["message"],
        "This request requires a user context. Client credentials cannot be used for requests to this resource."
    );
    let agent = e.calls()[0].clone();
    let user_token = e.issue_agent_token(&agent.agent_user_id);
    let user: Value = get(&e, &user_token, "/api/v2/users/me").await.json().await.unwrap();
    assert_eq!(user["id"], agent.agent_user_id.as_str());
    assert_eq!(user["name"], agent.agent_name.as_str());
    assert_eq!(user["state"], "active");
    assert_eq!(user["selfUri"], format!("/api/v2/users/{}", agent.agent_user_id));
    assert!(user["email"].as_str().unwrap().is_ascii());

    // DELETE tokens/me revokes the caller's token only.
    assert!(call(&e, Some(&user_token), Method::DELETE, "/api/v2/tokens/me", None).await.status().is_success());
    error_body(get(&e, &user_token, "/api/v2/users/me").await, 401, "bad.credentials").await;
    assert_eq!(get(&e, &t, "/api/v2/tokens/me").await.status(), 200);
}

#[tokio::test]
async fn conversation_shape_for_a_loaded_call() {
    let e = emu().await;
    let t = token(&e).await;
    let calls = e.calls();
    assert_eq!(calls.len(), 5, "the embedded example calls");
    let scenarios: Vec<&str> = calls.iter().map(|c| c.scenario.as_str()).collect();
    for s in ["billing_refund", "cancel_threat", "upsell_happy", "agent_only_keyword", "low_asr_confidence"] {
        assert!(scenarios.contains(&s), "{s} in {scenarios:?}");
    }
    for info in &calls {
        let resp = get(&e, &t, &format!("/api/v2/conversations/{}", info.conversation_id)).await;
        assert_eq!(resp.status(), 200);
        let c: Value = resp.json().await.unwrap();
        assert_no_nulls(&c, "conversation");
        assert_eq!(c["id"], info.conversation_id.as_str());
        assert_eq!(c["selfUri"], format!("/api/v2/conversations/{}", info.conversation_id));
        assert!(c.get("endTime").is_none(), "live at the moment the agent connected");
        let parts = c["participants"].as_array().unwrap();
        let agent = parts.iter().find(|p| p["id"] == info.agent_participant_id.as_str()).expect("agent participant");
        assert_eq!(agent["purpose"], "agent");
        assert_eq!(agent["userId"], info.agent_user_id.as_str());
        assert_eq!(agent["queueId"], info.queue_id.as_str());
        assert_eq!(agent["calls"][0]["state"], "connected");
        assert_eq!(agent["calls"][0]["id"], info.agent_communication_id.as_str());
        assert!(agent["startTime"].is_string());
        let customer = parts.iter().find(|p| p["id"] == info.customer_participant_id.as_str()).expect("customer");
        assert_eq!(customer["purpose"], "customer");
        // The conversation started when its first participant connected.
        let earliest = parts.iter().filter_map(|p| p["connectedTime"].as_str()).min().unwrap();
        assert_eq!(c["startTime"], earliest);
    }
}

#[tokio::test]
async fn participant_attributes_merge_and_errors() {
    let e = emu().await;
    let t = token(&e).await;
    let info = e.calls()[1].clone();
    let path =
        format!("/api/v2/conversations/{}/participants/{}/attributes", info.conversation_id, info.agent_participant_id);
    let r = call(&e, Some(&t), Method::PATCH, &path, Some(json!({"attributes": {"gcAssist.prompt": "refund-policy"}})))
        .await;
    assert_eq!(r.status(), 202);
    assert!(r.bytes().await.unwrap().is_empty());
    let r =
        call(&e, Some(&t), Method::PATCH, &path, Some(json!({"attributes": {"gcAssist.injectionId": "i-1"}}))).await;
    assert_eq!(r.status(), 202);
    let attrs = e.participant_attributes(&info.conversation_id, &info.agent_participant_id).unwrap();
    assert_eq!(attrs.get("gcAssist.prompt").map(String::as_str), Some("refund-policy"));
    assert_eq!(attrs.get("gcAssist.injectionId").map(String::as_str), Some("i-1"));
    let c: Value = get(&e, &t, &format!("/api/v2/conversations/{}", info.conversation_id)).await.json().await.unwrap();
    let agent = c["participants"].as_array().unwrap().iter().find(|p| p["purpose"] == "agent").unwrap().clone();
    assert_eq!(agent["attributes"]["gcAssist.prompt"], "refund-policy");

    let bad = call(&e, Some(&t), Method::PATCH, &path, Some(json!({"attributes": {"n": 5}}))).await;
    let b = error_body(bad, 400, "bad.request").await;
    assert!(b["message"].as_str().unwrap().contains("attributes.n"), "{b}");
    let unknown_conv =
        format!("/api/v2/conversations/{}/participants/{}/attributes", "nope", info.agent_participant_id);
    error_body(
        call(&e, Some(&t), Method::PATCH, &unknown_conv, Some(json!({"attributes": {}}))).await,
        404,
        "not.found",
    )
    .await;
    let unknown_part = format!("/api/v2/conversations/{}/participants/nope/attributes", info.conversation_id);
    error_body(
        call(&e, Some(&t), Method::PATCH, &unknown_part, Some(json!({"attributes": {}}))).await,
        404,
        "not.found",
    )
    .await;
    assert_eq!(e.stats().attribute_patches, 2);
    assert_eq!(e.participant_attributes("nope", "x"), None);
}

#[tokio::test]
async fn per_token_rate_limit_answers_429_with_retry_after() {
    let e = emu_with(EmulatorConfig { requests_per_minute: 5, calls: CallSource::None, ..Default::default() }).await;
    let t = token(&e).await;
    for _ in 0..5 {
        assert_eq!(get(&e, &t, "/api/v2/tokens/me").await.status(), 200);
    }
    let resp = get(&e, &t, "/api/v2/tokens/me").await;
    let retry: u64 = resp.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=12).contains(&retry), "one request every 12 s: {retry}");
    let body = error_body(resp, 429, "too.many.requests.retry.after").await;
    assert_eq!(
        body["limit"],
        json!({"key": "client.credentials.token.rate.per.minute", "namespace": "platform.api", "value": 5})
    );
    assert_eq!(body["messageParams"]["retryAfterSeconds"], retry.to_string());
    // The limit is per token: a fresh token has its own allowance.
    let t2 = token(&e).await;
    assert_eq!(get(&e, &t2, "/api/v2/tokens/me").await.status(), 200);
    assert_eq!(e.stats().responses_429, 1);
}

#[tokio::test]
async fn faults_fail_rate_limit_latency_malformed_deny() {
    let e = emu().await;
    let t = token(&e).await;
    let f = e.faults();

    f.fail_next(2, 503);
    error_body(get(&e, &t, "/api/v2/tokens/me").await, 503, "service.unavailable").await;
    error_body(get(&e, &t, "/api/v2/tokens/me").await, 503, "service.unavailable").await;
    assert_eq!(get(&e, &t, "/api/v2/tokens/me").await.status(), 200);
    for (status, code) in [(500, "internal.server.error"), (501, "not.implemented"), (504, "request.timeout")] {
        f.fail_next(1, status);
        error_body(get(&e, &t, "/api/v2/tokens/me").await, status, code).await;
    }

    f.rate_limit_next(1, 7);
    let resp = get(&e, &t, "/api/v2/tokens/me").await;
    assert_eq!(resp.headers()["retry-after"], "7");
    error_body(resp, 429, "too.many.requests.retry.after").await;

    f.latency(Duration::from_millis(300));
    let started = Instant::now();
    assert_eq!(get(&e, &t, "/api/v2/tokens/me").await.status(), 200);
    assert!(started.elapsed() >= Duration::from_millis(300));
    f.latency(Duration::ZERO);

    f.malformed_next(1);
    let resp = get(&e, &t, "/api/v2/tokens/me").await;
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.unwrap();
    assert!(serde_json::from_str::<Value>(&text).is_err(), "garbled: {text}");
    assert!(get(&e, &t, "/api/v2/tokens/me").await.json::<Value>().await.is_ok());

    f.deny("/api/v2/users/me", "directory:user:view");
    let user_token = e.issue_agent_token("u-1");
    let body = error_body(get(&e, &user_token, "/api/v2/users/me").await, 403, "missing.permissions").await;
    assert!(body["message"].as_str().unwrap().contains("directory:user:view"));
    f.clear();
    assert_eq!(get(&e, &user_token, "/api/v2/users/me").await.status(), 200);
}

#[tokio::test]
async fn faults_revoke_and_expire_tokens() {
    let e = emu().await;
    let t = token(&e).await;
    e.faults().revoke_tokens();
    error_body(get(&e, &t, "/api/v2/tokens/me").await, 401, "bad.credentials").await;
    let t2 = token(&e).await;
    assert_eq!(get(&e, &t2, "/api/v2/tokens/me").await.status(), 200, "new tokens work");
    e.faults().expire_tokens();
    error_body(get(&e, &t2, "/api/v2/tokens/me").await, 401, "credentials.expired").await;

    // Natural expiry after the configured lifetime.
    let short = emu_with(EmulatorConfig { token_ttl: Duration::from_millis(200), ..Default::default() }).await;
    let t3 = token(&short).await;
    assert_eq!(get(&short, &t3, "/api/v2/tokens/me").await.status(), 200);
    tokio::time::sleep(Duration::from_millis(250)).await;
    error_body(get(&short, &t3, "/api/v2/tokens/me").await, 401, "credentials.expired").await;
}

#[tokio::test]
async fn admin_endpoints_drive_the_emulator() {
    let e = emu().await;
    let admin = |p: &str| format!("{}/__emulator{p}", e.base_url());
    let info: Value = http()
        .post(admin("/conversations"))
        .json(&json!({"agentUserId": "3e181504-6e00-46fa-bf71-278fdd25acea"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(info["queueName"], "Billing");
    assert_eq!(info["agentName"], "Léa Durand", "known agents keep their names");
    assert_eq!(info["scenario"], "live");
    let id = info["conversationId"].as_str().unwrap().to_string();
    let calls: Value = http().get(admin("/calls")).send().await.unwrap().json().await.unwrap();
    assert_eq!(calls.as_array().unwrap().len(), 6);

    let tok: Value =
        http().post(admin("/agent-tokens")).json(&json!({"userId": "u-9"})).send().await.unwrap().json().await.unwrap();
    let user: Value = get(&e, tok["access_token"].as_str().unwrap(), "/api/v2/users/me").await.json().await.unwrap();
    assert_eq!(user["id"], "u-9");

    let t = token(&e).await;
    let live: Value = get(&e, &t, &format!("/api/v2/conversations/{id}")).await.json().await.unwrap();
    assert!(live.get("endTime").is_none());
    let ended: Value =
        http().post(admin(&format!("/conversations/{id}/end"))).send().await.unwrap().json().await.unwrap();
    assert_eq!(ended["ended"], true);
    let done: Value = get(&e, &t, &format!("/api/v2/conversations/{id}")).await.json().await.unwrap();
    assert!(done["endTime"].is_string());
    assert!(!e.end_conversation(&id), "already ended");
    assert!(e.end_conversation(&e.calls()[0].conversation_id), "recorded calls end too");

    let armed: Value = http()
        .post(admin("/faults"))
        .json(&json!({"failNext": {"count": 1, "status": 503}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(armed["failNext"][0]["count"], 1);
    error_body(get(&e, &t, "/api/v2/tokens/me").await, 503, "service.unavailable").await;
    let typo = http().post(admin("/faults")).json(&json!({"failnext": {}})).send().await.unwrap();
    error_body(typo, 400, "bad.request").await;
    let cleared = http()
        .post(admin("/faults"))
        .json(&json!({"rateLimitNext": {"count": 3, "retryAfterSecs": 2}, "clear": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(cleared.status(), 200);
    let cleared: Value =
        http().post(admin("/faults")).json(&json!({"clear": true})).send().await.unwrap().json().await.unwrap();
    assert_eq!(cleared["rateLimitNext"]["count"], 0);

    let stats: Value = http().get(admin("/stats")).send().await.unwrap().json().await.unwrap();
    assert_eq!(stats["tokenRequests"], 1);
    assert!(stats["apiRequests"].as_u64().unwrap() >= 4);
    assert_eq!(stats["responsesByStatus"]["503"], 1);
}

async fn create_channel(e: &Emulator, t: &str) -> Value {
    let r = call(e, Some(t), Method::POST, "/api/v2/notifications/channels", None).await;
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

async fn channel_exists(e: &Emulator, t: &str, id: &str) -> bool {
    let s = call(e, Some(t), Method::HEAD, &format!("/api/v2/notifications/channels/{id}"), None).await.status();
    assert!(s == 200 || s == 404, "{s}");
    s == 200
}

#[tokio::test]
async fn channels_limit_evicts_the_least_recently_used() {
    let e = emu_with(EmulatorConfig { calls: CallSource::None, ..Default::default() }).await;
    let t = token(&e).await;
    let mut ids = Vec::new();
    for _ in 0..20 {
        let ch = create_channel(&e, &t).await;
        assert!(ch["id"].as_str().unwrap().starts_with("streaming-0-"));
        let id = ch["id"].as_str().unwrap().to_string();
        assert_eq!(ch["connectUri"], format!("ws://{}/channels/{id}", e.addr()));
        let expires = chrono::DateTime::parse_from_rfc3339(ch["expires"].as_str().unwrap()).unwrap();
        let hours = (expires.with_timezone(&chrono::Utc) - chrono::Utc::now()).num_minutes() as f64 / 60.0;
        assert!((23.9..=24.0).contains(&hours), "{hours}");
        ids.push(id);
    }
    // A socket on the oldest channel protects it: the oldest one without a socket goes.
    let (_ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/channels/{}", e.addr(), ids[0])).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let c21 = create_channel(&e, &t).await;
    assert!(channel_exists(&e, &t, &ids[0]).await, "has a socket");
    assert!(!channel_exists(&e, &t, &ids[1]).await, "oldest without a socket is evicted");
    assert!(channel_exists(&e, &t, c21["id"].as_str().unwrap()).await);
    let list: Value = get(&e, &t, "/api/v2/notifications/channels").await.json().await.unwrap();
    assert_eq!(list["entities"].as_array().unwrap().len(), 20);
    // Another token of the same client sees them with includechannels=oauthclient only.
    let t2 = token(&e).await;
    let mine: Value = get(&e, &t2, "/api/v2/notifications/channels").await.json().await.unwrap();
    assert_eq!(mine["entities"].as_array().unwrap().len(), 0);
    let all: Value =
        get(&e, &t2, "/api/v2/notifications/channels?includechannels=oauthclient").await.json().await.unwrap();
    assert_eq!(all["entities"].as_array().unwrap().len(), 20);
    // A user's channels are separate from the client's.
    let u = e.issue_agent_token("u-1");
    assert!(!channel_exists(&e, &u, &ids[0]).await);
}

#[tokio::test]
async fn subscriptions_add_replace_and_clear() {
    let e = emu_with(EmulatorConfig { calls: CallSource::None, ..Default::default() }).await;
    let t = token(&e).await;
    let id = create_channel(&e, &t).await["id"].as_str().unwrap().to_string();
    let path = format!("/api/v2/notifications/channels/{id}/subscriptions");
    let topics = |v: &Value| -> Vec<String> {
        v["entities"].as_array().unwrap().iter().map(|x| x["id"].as_str().unwrap().to_string()).collect()
    };
    let a = "v2.routing.queues.20a2bd46-64e1-4827-8e9e-f900e3ed7f32.conversations";
    let b = "v2.conversations.e9fe9598-e928-48f4-9e19-0292f2154ec8.transcription";
    let c = "v2.speechandtextanalytics.conversation.e9fe9598-e928-48f4-9e19-0292f2154ec8.sentiment";
    let r: Value = call(&e, Some(&t), Method::POST, &path, Some(json!([{"id": a}]))).await.json().await.unwrap();
    assert_eq!(r["entities"][0], json!({"id": a, "state": "Permitted"}));
    let r: Value =
        call(&e, Some(&t), Method::POST, &path, Some(json!([{"id": b}, {"id": a}]))).await.json().await.unwrap();
    assert_eq!(topics(&r), vec![a, b], "POST adds, without duplicates");
    let r: Value = call(&e, Some(&t), Method::PUT, &path, Some(json!([{"id": c}]))).await.json().await.unwrap();
    assert_eq!(topics(&r), vec![c], "PUT replaces");
    let r: Value = get(&e, &t, &path).await.json().await.unwrap();
    assert_eq!(topics(&r), vec![c]);
    assert!(call(&e, Some(&t), Method::DELETE, &path, None).await.status().is_success());
    let r: Value = get(&e, &t, &path).await.json().await.unwrap();
    assert!(topics(&r).is_empty(), "DELETE clears");
    let r: Value = call(&e, Some(&t), Method::PUT, &path, Some(json!([{"id": a}]))).await.json().await.unwrap();
    assert_eq!(topics(&r), vec![a]);
    let r: Value = call(&e, Some(&t), Method::PUT, &path, Some(json!([]))).await.json().await.unwrap();
    assert!(topics(&r).is_empty(), "PUT [] clears");

    error_body(call(&e, Some(&t), Method::POST, &path, Some(json!([{"id": "v2..bad"}]))).await, 400, "bad.request")
        .await;
    error_body(call(&e, Some(&t), Method::POST, &path, Some(json!({"id": a}))).await, 400, "bad.request").await;
    let lenient: Value = call(
        &e,
        Some(&t),
        Method::POST,
        &format!("{path}?ignoreErrors=true"),
        Some(json!([{"id": "nope"}, {"id": a}])),
    )
    .await
    .json()
    .await
    .unwrap();
    let states: Vec<&str> =
        lenient["entities"].as_array().unwrap().iter().map(|x| x["state"].as_str().unwrap()).collect();
    assert_eq!(states, vec!["Permitted", "Rejected"]);
    let many: Vec<Value> = (0..1001).map(|i| json!({"id": format!("v2.users.user-{i}.conversations")})).collect();
    error_body(
        call(&e, Some(&t), Method::PUT, &path, Some(Value::Array(many[..1001].to_vec()))).await,
        400,
        "bad.request",
    )
    .await;
    let r: Value =
        call(&e, Some(&t), Method::PUT, &path, Some(Value::Array(many[..1000].to_vec()))).await.json().await.unwrap();
    assert_eq!(topics(&r).len(), 1000);
    error_body(get(&e, &t, "/api/v2/notifications/channels/streaming-0-missing/subscriptions").await, 404, "not.found")
        .await;
}

async fn next_text(
    ws: &mut tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
) -> Value {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(3), ws.next()).await.expect("a frame in time");
        match msg.expect("socket open").expect("frame") {
            WsMessage::Text(t) => return serde_json::from_str(t.as_str()).expect("JSON frame"),
            WsMessage::Ping(_) | WsMessage::Pong(_) => continue,
            other => panic!("unexpected frame {other:?}"),
        }
    }
}

#[tokio::test]
async fn websocket_heartbeat_ping_delivery_and_drop() {
    let e = emu_with(EmulatorConfig { heartbeat: Duration::from_millis(150), ..Default::default() }).await;
    let t = token(&e).await;
    let ch = create_channel(&e, &t).await;
    let (mut ws, _) = tokio_tungstenite::connect_async(ch["connectUri"].as_str().unwrap()).await.unwrap();
    let hb = next_text(&mut ws).await;
    assert_eq!(hb, json!({"topicName": "channel.metadata", "eventBody": {"message": "WebSocket Heartbeat"}}));

    ws.send(WsMessage::Text(r#"{"message":"ping"}"#.into())).await.unwrap();
    loop {
        let m = next_text(&mut ws).await;
        if m["eventBody"]["message"] == "pong" {
            assert_eq!(m["topicName"], "channel.metadata");
            break;
        }
    }

    // Topic delivery: a new conversation on a subscribed queue arrives as a snapshot.
    let queue = "20a2bd46-64e1-4827-8e9e-f900e3ed7f32";
    let topic = format!("v2.routing.queues.{queue}.conversations");
    let path = format!("/api/v2/notifications/channels/{}/subscriptions", ch["id"].as_str().unwrap());
    assert_eq!(call(&e, Some(&t), Method::PUT, &path, Some(json!([{"id": topic}]))).await.status(), 200);
    let info = e.create_conversation(NewConversation { queue_id: Some(queue.into()), ..Default::default() });
    let event = loop {
        let m = next_text(&mut ws).await;
        if m["topicName"] == topic.as_str() {
            break m;
        }
    };
    assert_eq!(event["version"], "2");
    assert_eq!(event["eventBody"]["id"], info.conversation_id.as_str());
    assert!(event["metadata"]["CorrelationId"].is_string());
    assert!(e.stats().notifications_delivered >= 1);

    e.faults().drop_sockets();
    let closed = tokio::time::timeout(Duration::from_secs(3), async {
        loop {
            match ws.next().await {
                None | Some(Err(_)) | Some(Ok(WsMessage::Close(_))) => break,
                Some(Ok(_)) => continue,
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the socket was dropped");
    // The channel survives: the client can connect again.
    let (mut again, _) = tokio_tungstenite::connect_async(ch["connectUri"].as_str().unwrap()).await.unwrap();
    assert_eq!(next_text(&mut again).await["topicName"], "channel.metadata");
    // Unknown channels are refused.
    assert!(tokio_tungstenite::connect_async(format!("ws://{}/channels/streaming-0-nope", e.addr())).await.is_err());
}

#[tokio::test]
async fn socket_closing_warning_then_close() {
    let e = emu_with(EmulatorConfig { calls: CallSource::None, ..Default::default() }).await;
    let t = token(&e).await;
    let ch = create_channel(&e, &t).await;
    let (mut ws, _) = tokio_tungstenite::connect_async(ch["connectUri"].as_str().unwrap()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    e.faults().close_sockets(Duration::from_millis(100));
    let warn = next_text(&mut ws).await;
    assert_eq!(warn["topicName"], "v2.system.socket_closing");
    assert_eq!(warn["eventBody"]["channelId"], ch["id"]);
    let frame = tokio::time::timeout(Duration::from_secs(3), ws.next()).await.unwrap();
    assert!(matches!(frame, Some(Ok(WsMessage::Close(_))) | None), "{frame:?}");
}

const QUERY_WEEK: &str = "2025-03-03T00:00:00.000Z/2025-03-10T00:00:00.000Z";

#[tokio::test]
async fn analytics_query_shape_determinism_and_errors() {
    let e = emu().await;
    let t = token(&e).await;
    let path = "/api/v2/analytics/agentcopilots/aggregates/query";
    let q = json!({"interval": QUERY_WEEK, "granularity": "P1D", "timeZone": "UTC",
                   "groupBy": ["queueId", "engagementType"],
                   "filter": {"type": "and", "predicates": [{"type": "dimension", "dimension": "queueId", "operator": "matches", "value": e.calls()[0].queue_id}]},
                   "metrics": ["nDistinctSuggestions", "nKnowledgeArticleSuggestions"]});
    let first: Value = call(&e, Some(&t), Method::POST, path, Some(q.clone())).await.json().await.unwrap();
    let second: Value = call(&e, Some(&t), Method::POST, path, Some(q)).await.json().await.unwrap();
    assert_eq!(first, second, "same query, same numbers");
    let results = first["results"].as_array().unwrap();
    assert!(!results.is_empty());
    for r in results {
        assert_eq!(r["group"]["queueId"], e.calls()[0].queue_id.as_str());
        assert!(r["group"]["engagementType"].is_string());
        for d in r["data"].as_array().unwrap() {
            let (a, b) = d["interval"].as_str().unwrap().split_once('/').unwrap();
            assert!(a.ends_with("T00:00:00.000Z") && b.ends_with("T00:00:00.000Z"));
            for m in d["metrics"].as_array().unwrap() {
                assert!(
                    ["nDistinctSuggestions", "nKnowledgeArticleSuggestions"].contains(&m["metric"].as_str().unwrap())
                );
                assert!(m["stats"]["count"].as_u64().unwrap() > 0, "empty metrics are omitted");
            }
        }
    }
    // No group → no `group` key; an unknown queue → no results.
    let plain: Value = call(
        &e,
        Some(&t),
        Method::POST,
        path,
        Some(json!({"interval": QUERY_WEEK, "metrics": ["nDistinctConversations"]})),
    )
    .await
    .json()
    .await
    .unwrap();
    assert!(plain["results"][0].get("group").is_none());
    assert_eq!(plain["results"][0]["data"][0]["interval"], QUERY_WEEK);
    let none: Value = call(
        &e,
        Some(&t),
        Method::POST,
        path,
        Some(json!({"interval": QUERY_WEEK, "metrics": ["nDistinctConversations"],
        "filter": {"type": "and", "predicates": [{"dimension": "queueId", "value": "no-such-queue"}]}})),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(none, json!({"results": []}));

    let bad =
        call(&e, Some(&t), Method::POST, path, Some(json!({"interval": QUERY_WEEK, "metrics": ["nBogus"]}))).await;
    let body = error_body(bad, 400, "invalid.value").await;
    assert!(body["message"].as_str().unwrap().contains("nBogus"));
    let bad = call(
        &e,
        Some(&t),
        Method::POST,
        path,
        Some(json!({"interval": "last week", "metrics": ["nDistinctConversations"]})),
    )
    .await;
    error_body(bad, 400, "invalid.date").await;
    let bad = call(
        &e,
        Some(&t),
        Method::POST,
        path,
        Some(json!({"interval": QUERY_WEEK, "metrics": "nDistinctConversations"})),
    )
    .await;
    error_body(bad, 400, "bad.request").await;
}

#[tokio::test]
async fn analytics_job_lifecycle_with_paging() {
    let e = emu().await;
    let t = token(&e).await;
    let jobs = "/api/v2/analytics/agentcopilots/aggregates/jobs";
    let month = "2025-03-01T00:00:00.000Z/2025-03-31T00:00:00.000Z";
    let q = json!({"interval": month, "granularity": "P1D", "metrics": ["nDistinctSuggestions"], "pageSize": 7});
    let r = call(&e, Some(&t), Method::POST, jobs, Some(q)).await;
    assert_eq!(r.status(), 202);
    let job_id = r.json::<Value>().await.unwrap()["jobId"].as_str().unwrap().to_string();
    let status_path = format!("{jobs}/{job_id}");
    let results_path = format!("{jobs}/{job_id}/results");
    error_body(get(&e, &t, &results_path).await, 400, "bad.request").await;
    let first: Value = get(&e, &t, &status_path).await.json().await.unwrap();
    assert_eq!(first["state"], "QUEUED");
    assert!(first["submissionDate"].is_string() && first["expirationDate"].is_string());
    let mut state = first["state"].clone();
    for _ in 0..10 {
        if state == "FULFILLED" {
            break;
        }
        state = get(&e, &t, &status_path).await.json::<Value>().await.unwrap()["state"].clone();
    }
    assert_eq!(state, "FULFILLED");

    let mut cursor: Option<String> = None;
    let mut pages = 0;
    let mut intervals = Vec::new();
    loop {
        let p = match &cursor {
            Some(c) => format!("{results_path}?cursor={c}"),
            None => results_path.clone(),
        };
        let page: Value = get(&e, &t, &p).await.json().await.unwrap();
        pages += 1;
        for r in page["results"].as_array().unwrap() {
            for d in r["data"].as_array().unwrap() {
                intervals.push(d["interval"].as_str().unwrap().to_string());
            }
        }
        match page.get("cursor").and_then(Value::as_str) {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
        assert!(pages < 20, "paging ends");
    }
    assert_eq!(intervals.len(), 30, "every day of the month, once");
    assert_eq!(pages, 5, "30 points in pages of 7");
    let mut sorted = intervals.clone();
    sorted.dedup();
    assert_eq!(sorted.len(), 30);
    error_body(get(&e, &t, &format!("{results_path}?cursor=garbage")).await, 400, "bad.request").await;

    assert!(call(&e, Some(&t), Method::DELETE, &status_path, None).await.status().is_success());
    let cancelled: Value = get(&e, &t, &status_path).await.json().await.unwrap();
    assert_eq!(cancelled["state"], "CANCELLED");
    error_body(get(&e, &t, &results_path).await, 400, "bad.request").await;
    error_body(get(&e, &t, &format!("{jobs}/no-such-job")).await, 404, "not.found").await;
    let bad = call(
        &e,
        Some(&t),
        Method::POST,
        jobs,
        Some(json!({"interval": month, "metrics": ["nDistinctSuggestions"], "groupBy": ["colour"]})),
    )
    .await;
    error_body(bad, 400, "invalid.value").await;
}

#[tokio::test]
async fn loads_the_shared_calls_folder() {
    let e = emu_with(EmulatorConfig { calls: CallSource::Dir(support::shared_calls()), ..Default::default() }).await;
    let calls = e.calls();
    let manifest: Value =
        serde_json::from_str(&std::fs::read_to_string(support::shared_calls().join("calls.json")).unwrap()).unwrap();
    assert_eq!(calls.len(), manifest["calls"].as_array().unwrap().len());
    assert_eq!(calls.len(), manifest["count"].as_u64().unwrap() as usize);
    // Every call is live at the moment its agent connected: connected and not yet on hold
    // (long_hold calls hold later in the recording).
    let t = token(&e).await;
    for call in &calls {
        let c: Value =
            get(&e, &t, &format!("/api/v2/conversations/{}", call.conversation_id)).await.json().await.unwrap();
        let agent = c["participants"].as_array().unwrap().iter().find(|p| p["purpose"] == "agent").unwrap().clone();
        assert_eq!(agent["calls"][0]["state"], "connected", "{}", call.scenario);
        assert_eq!(agent["calls"][0]["held"], false, "{}: live before any hold", call.scenario);
    }
}

#[tokio::test]
async fn broken_calls_folders_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let good = std::fs::read_to_string(support::shared_calls().join("call_028_billing_refund_e9fe9598.jsonl")).unwrap();
    let first = good.lines().next().unwrap();
    std::fs::write(dir.path().join("broken.jsonl"), format!("{first}\n{{not json\n")).unwrap();
    let entry = json!({"file": "broken.jsonl", "conversationId": "c", "scenario": "s", "queueId": "q", "agentUserId": "u",
        "agentParticipantId": "p", "agentCommunicationId": "k", "customerParticipantId": "cu"});
    std::fs::write(dir.path().join("calls.json"), json!({"calls": [entry]}).to_string()).unwrap();
    let err =
        emulator::spawn(EmulatorConfig { calls: CallSource::Dir(dir.path().to_path_buf()), ..Default::default() })
            .await
            .expect_err("broken line");
    assert!(matches!(err, EmulatorError::CallsParse { line: 2, .. }), "{err}");
    assert!(err.to_string().contains("broken.jsonl, line 2"), "{err}");

    std::fs::write(dir.path().join("calls.json"), "{\"calls\": [{\"file\": \"missing.jsonl\"}]}").unwrap();
    let err =
        emulator::spawn(EmulatorConfig { calls: CallSource::Dir(dir.path().to_path_buf()), ..Default::default() })
            .await
            .expect_err("missing fields");
    assert!(err.to_string().contains("calls[0] is missing the string field `queueId`"), "{err}");

    let err =
        emulator::spawn(EmulatorConfig { calls: CallSource::Dir(dir.path().join("nowhere")), ..Default::default() })
            .await
            .expect_err("no folder");
    assert!(matches!(err, EmulatorError::CallsRead { .. }), "{err}");
    assert!(err.to_string().contains("calls.json"), "{err}");
}

#[tokio::test]
async fn shutdown_stops_the_server() {
    let e = emu_with(EmulatorConfig { calls: CallSource::None, ..Default::default() }).await;
    let base = e.base_url();
    assert!(base.starts_with("http://127.0.0.1:") && !base.ends_with('/'));
    e.shutdown().await;
    let r = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap()
        .post(format!("{base}/oauth/token"))
        .send()
        .await;
    assert!(r.is_err(), "nothing listens any more");
}

#[test]
fn cli_serves_and_prints_how_to_connect() {
    let mut child = Command::new(support::bin())
        .args(["emulator", "--bind", "127.0.0.1:0", "--rpm", "50"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_remove("GC_ASSIST_CONFIG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start gc-assist emulator");
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let mut printed = Vec::new();
    let mut base = None;
    while let Some(Ok(line)) = lines.next() {
        if let Some(rest) = line.strip_prefix("Genesys Cloud emulator listening on ") {
            base = Some(rest.trim().to_string());
        }
        let done = line.starts_with("Press Ctrl-C");
        printed.push(line);
        if done {
            break;
        }
    }
    let text = printed.join("\n");
    let base = base.unwrap_or_else(|| panic!("no base URL in:\n{text}"));
    assert!(text.contains("gc-assist-emulator") && text.contains("emulator-secret"), "{text}");
    assert!(text.contains("export GENESYSCLOUD_API_REGION=http://127.0.0.1:"), "{text}");
    assert!(text.contains("5 conversations loaded") && text.contains("billing_refund"), "{text}");
    let status = blocking_token(&base);
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(status, 200);
}

#[test]
fn cli_reports_a_bad_calls_folder() {
    let out = support::run(&["emulator", "--bind", "127.0.0.1:0", "--calls", "/nonexistent/calls-dir"], &[]);
    assert_eq!(out.status.code(), Some(2));
    let err = support::stderr(&out);
    assert!(err.contains("/nonexistent/calls-dir/calls.json"), "{err}");
}

/// A token call for the CLI test (a plain #[test] has no async runtime).
fn blocking_token(base: &str) -> u16 {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        http()
            .post(format!("{base}/oauth/token"))
            .basic_auth("gc-assist-emulator", Some("emulator-secret"))
            .form(&[("grant_type", "client_credentials")])
            .send()
            .await
            .map(|r| r.status().as_u16())
            .unwrap_or(0)
    })
}
