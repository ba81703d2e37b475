//! Integration tests: the Genesys client against the emulator (`gc_assist::emulator`), a
//! real HTTP server on 127.0.0.1 speaking the Genesys wire format, with its faults.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use gc_assist::emulator::{self, Emulator, EmulatorConfig, NewConversation};
use gc_assist::genesys::models::{QueryFilter, QueryPredicate};
use gc_assist::genesys::{
    region, ClientSettings, CopilotAggregationQuery, CopilotAsyncAggregationQuery, GenesysClient, GenesysError,
    RetryPolicy,
};
use secrecy::SecretString;

/// An emulator with a generous rate limit unless the test sets one.
async fn emu_with(f: impl FnOnce(&mut EmulatorConfig)) -> Emulator {
    let mut cfg = EmulatorConfig { requests_per_minute: 100_000, ..EmulatorConfig::default() };
    f(&mut cfg);
    emulator::spawn(cfg).await.expect("emulator starts")
}

async fn emu() -> Emulator {
    emu_with(|_| {}).await
}

/// Client settings pointing at `emu`, with short retry waits so faults resolve quickly.
fn settings(emu: &Emulator) -> ClientSettings {
    ClientSettings {
        hosts: region::resolve(&emu.base_url()).expect("emulator URL resolves"),
        client_id: emu.client_id().to_string(),
        client_secret: SecretString::from(emu.client_secret()),
        requests_per_minute: 100_000,
        burst: 1_000,
        request_timeout: Duration::from_secs(5),
        token_refresh_margin: Duration::from_secs(60),
        retry: RetryPolicy {
            max_attempts: 4,
            base_delay: Duration::from_millis(20),
            max_delay: Duration::from_millis(200),
            max_elapsed: Duration::from_secs(30),
            max_retry_after: Duration::from_secs(10),
            default_retry_after: Duration::from_secs(1),
        },
    }
}

fn client(emu: &Emulator) -> GenesysClient {
    GenesysClient::new(settings(emu)).expect("client builds")
}

fn week_query() -> CopilotAggregationQuery {
    CopilotAggregationQuery {
        // A Monday to Thursday: three daily buckets per group.
        interval: "2025-03-03T00:00:00.000Z/2025-03-06T00:00:00.000Z".into(),
        granularity: Some("P1D".into()),
        group_by: vec!["engagementType".into()],
        metrics: vec!["nDistinctSuggestions".into(), "nKnowledgeArticleSuggestions".into()],
        ..Default::default()
    }
}

#[tokio::test]
async fn token_is_cached_and_shared_by_concurrent_calls() {
    let emu = emu().await;
    let c = client(&emu);
    let calls: Vec<_> = (0..50)
        .map(|_| {
            let c = c.clone();
            tokio::spawn(async move { c.token_info().await })
        })
        .collect();
    for call in calls {
        let info = call.await.expect("task").expect("tokens/me");
        let oauth = info.oauth_client.expect("OAuthClient is present");
        assert_eq!(oauth.authorized_grant_type.as_deref(), Some("CLIENT-CREDENTIALS"));
    }
    assert_eq!(emu.stats().token_requests, 1, "50 concurrent calls share one token fetch");
    c.token_info().await.expect("cached token still works");
    assert_eq!(emu.stats().token_requests, 1);
    let st = c.stats();
    assert_eq!((st.requests, st.token_refreshes), (51, 1));
    assert_eq!(st.by_status.get(&200), Some(&51));
}

#[tokio::test]
async fn token_is_refreshed_after_expiry() {
    // 2 s tokens: with a 60 s margin the client refreshes at half-life.
    let emu = emu_with(|c| c.token_ttl = Duration::from_secs(2)).await;
    let c = client(&emu);
    c.token_info().await.expect("first call");
    c.token_info().await.expect("cached");
    assert_eq!(emu.stats().token_requests, 1);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    c.token_info().await.expect("after expiry");
    assert_eq!(emu.stats().token_requests, 2);
    assert_eq!(c.stats().reauthentications, 0, "refreshed ahead, never sent an expired token");

    // Tokens expired early by the server: one 401, one re-authentication, success.
    emu.faults().expire_tokens();
    c.token_info().await.expect("re-authenticated after credentials.expired");
    assert_eq!(emu.stats().token_requests, 3);
    assert_eq!(c.stats().reauthentications, 1);
}

#[tokio::test]
async fn revoked_token_reauthenticates_once() {
    let emu = emu().await;
    let c = client(&emu);
    let conv = emu.calls().into_iter().next().expect("the emulator has recorded calls");
    c.get_conversation(&conv.conversation_id).await.expect("before revoke");
    emu.faults().revoke_tokens();
    // Many calls racing on the revoked token still re-authenticate once.
    let calls: Vec<_> = (0..10)
        .map(|_| {
            let (c, id) = (c.clone(), conv.conversation_id.clone());
            tokio::spawn(async move { c.get_conversation(&id).await })
        })
        .collect();
    for call in calls {
        call.await.expect("task").expect("after revoke");
    }
    assert_eq!(emu.stats().token_requests, 2);
    assert!(c.stats().reauthentications >= 1);
}

#[tokio::test]
async fn token_endpoint_rate_limit_is_retried() {
    let emu = emu().await;
    emu.faults().token_rate_limit(2);
    let c = client(&emu);
    c.token_info().await.expect("succeeds after the endpoint stops throttling");
    assert_eq!(emu.stats().token_requests, 3);
    let st = c.stats();
    assert_eq!((st.token_requests, st.token_refreshes), (3, 1));
}

#[tokio::test]
async fn bad_credentials_say_what_to_check() {
    let emu = emu().await;
    let mut s = settings(&emu);
    s.client_secret = SecretString::from("wrong-secret-value");
    let e = GenesysClient::new(s).expect("builds").token_info().await.expect_err("refused");
    assert!(matches!(e, GenesysError::Auth { .. }), "{e:?}");
    let text = e.to_string();
    for needle in
        ["invalid_client", "GENESYSCLOUD_OAUTHCLIENT_ID", "GENESYSCLOUD_OAUTHCLIENT_SECRET", "GC_CLIENT_ID", "region"]
    {
        assert!(text.contains(needle), "{needle} missing from: {text}");
    }
    assert!(!text.contains("wrong-secret-value") && !format!("{e:?}").contains("wrong-secret-value"));
    assert_eq!(emu.stats().token_requests, 1, "bad credentials are not retried");
    assert_eq!(emu.stats().api_requests, 0);

    let mut s = settings(&emu);
    s.client_id = String::new();
    let e = GenesysClient::new(s).expect_err("no id").to_string();
    assert!(e.contains("GENESYSCLOUD_OAUTHCLIENT_ID"), "{e}");
}

#[tokio::test]
async fn forbidden_names_the_missing_permission() {
    let emu = emu().await;
    emu.faults().deny("/analytics/agentcopilots", "analytics:agentCopilotAggregate:view");
    let c = client(&emu);
    let e = c.copilot_aggregates(&week_query()).await.expect_err("denied");
    match &e {
        GenesysError::Forbidden { permission, correlation_id, .. } => {
            assert_eq!(permission.as_deref(), Some("analytics:agentCopilotAggregate:view"));
            assert!(correlation_id.is_some());
        }
        other => panic!("expected Forbidden, got {other:?}"),
    }
    assert!(e.to_string().contains("Grant the permission analytics:agentCopilotAggregate:view"), "{e}");
    assert!(!e.is_retryable());
    // Other paths are unaffected.
    c.token_info().await.expect("not denied");
}

#[tokio::test]
async fn server_errors_are_retried_for_get_but_not_for_non_idempotent_post() {
    let emu = emu().await;
    let c = client(&emu);
    let id = emu.calls()[0].conversation_id.clone();
    c.get_conversation(&id).await.expect("warm up");
    let before = emu.stats().api_requests;

    emu.faults().fail_next(2, 503);
    c.get_conversation(&id).await.expect("GET survives two 503s");
    assert_eq!(emu.stats().api_requests - before, 3);

    emu.faults().fail_next(1, 502);
    let e = c.create_channel().await.expect_err("POST channel is not repeated");
    assert_eq!(e.status(), Some(502));
    assert!(e.correlation_id().is_some(), "{e:?}");
    assert_eq!(emu.stats().api_requests - before, 4);

    emu.faults().fail_next(1, 501);
    let e = c.get_conversation(&id).await.expect_err("501 is final");
    assert_eq!(e.status(), Some(501));
    assert!(!e.is_retryable());
    assert_eq!(emu.stats().api_requests - before, 5);

    // Marked idempotent: the attribute PATCH is retried.
    let call = emu.calls()[0].clone();
    emu.faults().fail_next(1, 500);
    let attrs = BTreeMap::from([("gcAssist.test".to_string(), "1".to_string())]);
    c.patch_participant_attributes(&call.conversation_id, &call.agent_participant_id, &attrs).await.expect("PATCH");
    assert_eq!(emu.stats().api_requests - before, 7);
}

#[tokio::test]
async fn rate_limit_waits_for_retry_after() {
    let emu = emu().await;
    let c = client(&emu);
    c.token_info().await.expect("warm up");
    emu.faults().rate_limit_next(1, 1);
    let started = Instant::now();
    c.create_channel().await.expect("429 then success, even for POST");
    assert!(started.elapsed() >= Duration::from_millis(950), "{:?}", started.elapsed());
    let st = c.stats();
    assert_eq!(st.responses_429, 1);
    assert_eq!(st.retry_wait, Duration::from_secs(1), "the wait the server asked for");
    assert_eq!(emu.stats().responses_429, 1);

    // Beyond max_retry_after: give up at once.
    emu.faults().rate_limit_next(1, 3600);
    let e = c.token_info().await.expect_err("too long a wait");
    assert!(
        matches!(e, GenesysError::RateLimited { retry_after: Some(d), .. } if d == Duration::from_secs(3600)),
        "{e:?}"
    );
}

#[tokio::test]
async fn malformed_body_is_a_decode_error_with_correlation_id() {
    let emu = emu().await;
    let c = client(&emu);
    let id = emu.calls()[0].conversation_id.clone();
    c.token_info().await.expect("warm up");
    emu.faults().malformed_next(1);
    let e = c.get_conversation(&id).await.expect_err("truncated JSON");
    assert!(matches!(e, GenesysError::Decode { .. }), "{e:?}");
    assert!(e.correlation_id().is_some_and(|s| !s.is_empty()), "{e:?}");
    assert!(e.to_string().contains("correlation id"), "{e}");
    c.get_conversation(&id).await.expect("next answer is fine");
}

#[tokio::test]
async fn slow_answers_time_out() {
    let emu = emu().await;
    let mut s = settings(&emu);
    s.request_timeout = Duration::from_millis(300);
    s.retry.max_attempts = 2;
    let c = GenesysClient::new(s).expect("builds");
    c.token_info().await.expect("warm up");
    emu.faults().latency(Duration::from_millis(600));
    let e = c.token_info().await.expect_err("too slow");
    assert!(matches!(e, GenesysError::Timeout { .. }), "{e:?}");
    assert_eq!(c.stats().timeouts, 2);
    emu.faults().clear();
    c.token_info().await.expect("fast again");
}

#[tokio::test]
async fn pacing_keeps_a_burst_under_the_limit_without_429s() {
    // The emulator allows 60 calls a minute per token (all 60 at once, then one a second).
    // 64 calls at once exceed that; unpaced, some get 429.
    const LIMIT: u32 = 60;
    const CALLS: usize = 64;

    let emu = emu_with(|c| c.requests_per_minute = LIMIT).await;
    let mut s = settings(&emu);
    s.requests_per_minute = LIMIT;
    s.burst = 5;
    let c = GenesysClient::new(s).expect("builds");
    let started = Instant::now();
    let calls: Vec<_> = (0..CALLS)
        .map(|_| {
            let c = c.clone();
            tokio::spawn(async move { c.token_info().await })
        })
        .collect();
    for call in calls {
        call.await.expect("task").expect("paced call succeeds");
    }
    let took = started.elapsed();
    assert_eq!(emu.stats().responses_429, 0, "pacing provoked no 429");
    assert_eq!(c.stats().responses_429, 0);
    assert!(c.stats().paced_wait > Duration::ZERO);
    // 5 at once, then 55 a minute: (64 - 5) / 55 minutes ≈ 64 s. Used ≥ 90 % of that rate.
    assert!(took >= Duration::from_secs(60), "{took:?}");
    assert!(took <= Duration::from_secs(72), "{took:?}");

    // The control: the same burst without pacing is rate limited by the emulator.
    let emu = emu_with(|c| c.requests_per_minute = LIMIT).await;
    let mut s = settings(&emu);
    s.retry.max_attempts = 1;
    let unpaced = GenesysClient::new(s).expect("builds");
    let calls: Vec<_> = (0..CALLS)
        .map(|_| {
            let c = unpaced.clone();
            tokio::spawn(async move { c.token_info().await })
        })
        .collect();
    for call in calls {
        let _ = call.await.expect("task");
    }
    assert!(emu.stats().responses_429 >= (CALLS as u64 - u64::from(LIMIT)), "{:?}", emu.stats());
}

#[tokio::test]
async fn conversations_users_and_attributes() {
    let emu = emu().await;
    let c = client(&emu);
    let call = emu.create_conversation(NewConversation::default());
    let conv = c.get_conversation(&call.conversation_id).await.expect("conversation");
    assert_eq!(conv.id, call.conversation_id);
    let agent = conv.connected_agent().expect("a connected agent");
    assert_eq!(agent.id, call.agent_participant_id);
    assert_eq!(agent.user_id.as_deref(), Some(call.agent_user_id.as_str()));

    let attrs = BTreeMap::from([
        ("gcAssist.prompt".to_string(), "refund-policy".to_string()),
        ("gcAssist.injectionId".to_string(), "01956c1e-8f3a-7b2c-9d4e-5f6a7b8c9d0e".to_string()),
    ]);
    c.patch_participant_attributes(&call.conversation_id, &call.agent_participant_id, &attrs).await.expect("PATCH");
    let stored = emu.participant_attributes(&call.conversation_id, &call.agent_participant_id).expect("participant");
    for (k, v) in &attrs {
        assert_eq!(stored.get(k), Some(v), "{k}");
    }
    let conv = c.get_conversation(&call.conversation_id).await.expect("conversation");
    assert_eq!(
        conv.connected_agent().expect("agent").attributes.get("gcAssist.prompt").map(String::as_str),
        Some("refund-policy")
    );

    let missing = c.get_conversation("00000000-0000-4000-8000-000000000000").await.expect_err("unknown");
    assert!(missing.is_not_found(), "{missing:?}");
    assert!(c.get_conversation("../tokens/me").await.is_err(), "ids cannot escape their path segment");

    // users/me works with the agent's token and not with ours.
    let agent_token = SecretString::from(emu.issue_agent_token(&call.agent_user_id));
    let me = c.user_me(&agent_token).await.expect("users/me");
    assert_eq!(me.id, call.agent_user_id);
    let bad = c.user_me(&SecretString::from("not-a-token")).await.expect_err("bad user token");
    assert_eq!(bad.status(), Some(401));
}

#[tokio::test]
async fn channels_and_subscriptions() {
    let emu = emu().await;
    let c = client(&emu);
    let ch = c.create_channel().await.expect("channel");
    assert!(!ch.id.is_empty());
    assert!(ch.connect_uri.as_deref().is_some_and(|u| u.starts_with("ws://") && u.contains(&ch.id)), "{ch:?}");
    assert!(c.list_channels().await.expect("list").iter().any(|x| x.id == ch.id));
    assert!(c.channel_exists(&ch.id).await.expect("HEAD"));
    assert!(!c.channel_exists("streaming-0-doesnotexist").await.expect("HEAD 404"));

    let call = &emu.calls()[0];
    let t1 = format!("v2.conversations.{}.transcription", call.conversation_id);
    let t2 = format!("v2.routing.queues.{}.conversations", call.queue_id);
    let added = c.add_subscriptions(&ch.id, std::slice::from_ref(&t1)).await.expect("POST subscriptions");
    assert!(added.iter().any(|t| t.id == t1));
    let added = c.add_subscriptions(&ch.id, std::slice::from_ref(&t2)).await.expect("POST adds");
    let ids: Vec<&str> = added.iter().map(|t| t.id.as_str()).collect();
    assert!(ids.contains(&t1.as_str()) && ids.contains(&t2.as_str()), "{ids:?}");
    let listed = c.list_subscriptions(&ch.id).await.expect("GET subscriptions");
    assert_eq!(listed.len(), 2);
    let replaced = c.replace_subscriptions(&ch.id, std::slice::from_ref(&t2)).await.expect("PUT");
    assert_eq!(replaced.iter().map(|t| t.id.as_str()).collect::<Vec<_>>(), vec![t2.as_str()]);
    c.delete_subscriptions(&ch.id).await.expect("DELETE");
    assert!(c.list_subscriptions(&ch.id).await.expect("GET").is_empty());
}

#[tokio::test]
async fn copilot_aggregates_and_jobs_with_cursor_paging() {
    let emu = emu().await;
    let c = client(&emu);
    let q = week_query();
    let direct = c.copilot_aggregates(&q).await.expect("aggregates query");
    assert!(!direct.results.is_empty());
    for r in &direct.results {
        assert!(r.group.contains_key("engagementType"), "{r:?}");
        assert!(r.data.iter().all(|d| !d.metrics.is_empty()));
    }

    let filtered = CopilotAggregationQuery {
        filter: Some(QueryFilter {
            kind: "and".into(),
            clauses: vec![],
            predicates: vec![QueryPredicate {
                kind: Some("dimension".into()),
                dimension: Some("engagementType".into()),
                operator: Some("matches".into()),
                value: Some("Copied".into()),
                range: None,
            }],
        }),
        ..week_query()
    };
    let only = c.copilot_aggregates(&filtered).await.expect("filtered");
    assert!(only.results.iter().all(|r| r.group.get("engagementType").map(String::as_str) == Some("Copied")));

    let bad = CopilotAggregationQuery { metrics: vec!["nBogus".into()], ..week_query() };
    let e = c.copilot_aggregates(&bad).await.expect_err("bad metric");
    assert_eq!(e.status(), Some(400));

    // The same query as an async job, read back two points a page.
    let job = c
        .copilot_job_create(&CopilotAsyncAggregationQuery { query: q.clone(), page_size: Some(2) })
        .await
        .expect("job");
    let status = c.copilot_job_wait(&job, Duration::from_millis(50), Duration::from_secs(10)).await.expect("fulfilled");
    assert!(status.is_fulfilled());
    let first = c.copilot_job_results(&job, None).await.expect("page 1");
    assert!(first.cursor.is_some(), "more than one page");
    let all = c.copilot_job_all_results(&job).await.expect("all pages");
    let flatten = |rs: &[gc_assist::genesys::CopilotAggregateDataContainer]| {
        let mut v: Vec<(BTreeMap<String, String>, String, String)> = rs
            .iter()
            .flat_map(|r| {
                r.data.iter().map(|d| {
                    (
                        r.group.clone(),
                        d.interval.clone().unwrap_or_default(),
                        serde_json::to_string(&d.metrics).unwrap_or_default(),
                    )
                })
            })
            .collect();
        v.sort();
        v
    };
    assert_eq!(flatten(&all), flatten(&direct.results), "paging returns exactly the query's data");

    c.copilot_job_delete(&job).await.expect("delete");
    let after = c.copilot_job_status(&job).await.expect("status after delete");
    assert!(after.is_failed(), "{after:?}");
    let unknown = c.copilot_job_status("00000000-0000-4000-8000-000000000000").await.expect_err("unknown job");
    assert!(unknown.is_not_found());
}

#[tokio::test]
async fn client_stats_and_debug_hold_no_secret() {
    let emu = emu().await;
    let c = client(&emu);
    c.token_info().await.expect("call");
    let shown = format!("{c:?} {:?}", settings(&emu));
    assert!(!shown.contains(emu.client_secret()), "{shown}");
}
