//! OAuth client credentials: a token provider that caches the token, refreshes it before
//! it expires, shares one fetch among concurrent callers, and drops a token the API refused
//! so the next caller re-authenticates.
//!
//! Why the shape:
//! - **Single flight.** A burst of calls arriving with no token (start-up, after a revoke)
//!   must cause one token request, not one each: the token endpoint has its own, small
//!   limit (§2.1) and Genesys disables clients that rotate tokens aggressively. Fetches are
//!   serialised by an async mutex and every waiter re-reads the cache once it gets the lock.
//! - **Refresh ahead.** A token is refreshed `margin` before it expires (the Go SDK uses
//!   60 s). While one caller refreshes inside that window, the others keep using the
//!   still-valid token instead of queueing behind the refresh.
//! - **Generations.** Each fetched token gets a generation number; `invalidate` only drops
//!   the token if it is still the current one, so fifty calls failing with 401 on the same
//!   revoked token cause one re-authentication, not fifty.
//! - **Secrets.** The client secret and tokens live in `SecretString`s; nothing here
//!   formats them, and `Debug` implementations are written by hand to redact them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use secrecy::{ExposeSecret, SecretString};
use url::Url;

use super::error::GenesysError;
use super::models::{AuthErrorBody, AuthResponse};
use super::retry::{decide, Decision, Outcome, RetryPolicy};
use super::stats::{bump, Counters};

/// Used when the token response omits `expires_in`: the shortest lifetime Genesys allows
/// for a client, so we refresh too early rather than too late.
const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(300);

/// What to check when the credentials are refused.
pub const CREDENTIALS_FIX: &str = "Check GENESYSCLOUD_OAUTHCLIENT_ID / GENESYSCLOUD_OAUTHCLIENT_SECRET (or GC_CLIENT_ID / GC_CLIENT_SECRET): the OAuth client must exist, be active and use the Client Credentials grant. Also check the region (GENESYSCLOUD_REGION or GENESYSCLOUD_API_REGION): a client only exists in the region where it was created";

/// A bearer token handed to the request path. `Debug` never shows the token.
#[derive(Clone)]
pub struct AccessToken {
    secret: SecretString,
    generation: u64,
}

impl AccessToken {
    /// A token obtained elsewhere (an agent's user token); generation 0 is never cached.
    pub fn external(secret: SecretString) -> Self {
        AccessToken { secret, generation: 0 }
    }

    pub(crate) fn expose(&self) -> &str {
        self.secret.expose_secret()
    }

    /// Which fetch produced this token (1 for the first).
    pub fn generation(&self) -> u64 {
        self.generation
    }
}

impl std::fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AccessToken([redacted], generation {})", self.generation)
    }
}

/// How usable a cached token is at a given instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Freshness {
    /// Use it.
    Fresh,
    /// Still valid, but inside the refresh margin: refresh if nobody else is.
    RefreshDue,
    /// Expired: must refresh before use.
    Expired,
}

/// Pure: where `now` falls relative to a token's refresh and expiry instants.
pub(crate) fn freshness(now: Instant, refresh_at: Instant, expires_at: Instant) -> Freshness {
    if now >= expires_at {
        Freshness::Expired
    } else if now >= refresh_at {
        Freshness::RefreshDue
    } else {
        Freshness::Fresh
    }
}

/// Pure: how long after receipt to refresh a token that lives `ttl`. Normally
/// `ttl - margin`; when the margin is not shorter than the lifetime (short-lived tokens in
/// tests and emulators), at half the lifetime so each token still gets used.
pub(crate) fn refresh_after(ttl: Duration, margin: Duration) -> Duration {
    if ttl > margin {
        ttl - margin
    } else {
        ttl / 2
    }
}

struct Cached {
    token: AccessToken,
    refresh_at: Instant,
    expires_at: Instant,
}

/// Where and how to get tokens.
#[derive(Clone)]
pub struct TokenSettings {
    pub token_url: Url,
    pub client_id: String,
    pub client_secret: SecretString,
    /// Refresh this long before expiry.
    pub margin: Duration,
    /// Timeout of one token request.
    pub request_timeout: Duration,
    /// Budget for retrying the token endpoint's rate-limit answer, 5xx and network errors.
    pub retry: RetryPolicy,
}

/// Caches and refreshes the OAuth client-credentials token of one client.
pub struct TokenProvider {
    http: reqwest::Client,
    settings: TokenSettings,
    cache: Mutex<Option<Cached>>,
    /// Held while fetching: the single-flight gate.
    refresh: tokio::sync::Mutex<()>,
    generation: AtomicU64,
    counters: Arc<Counters>,
}

impl std::fmt::Debug for TokenProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenProvider")
            .field("token_url", &self.settings.token_url.as_str())
            .field("client_id", &self.settings.client_id)
            .field("client_secret", &"[redacted]")
            .field("generation", &self.generation.load(Ordering::Relaxed))
            .finish()
    }
}

impl TokenProvider {
    pub(crate) fn new(http: reqwest::Client, settings: TokenSettings, counters: Arc<Counters>) -> Self {
        TokenProvider {
            http,
            settings,
            cache: Mutex::new(None),
            refresh: tokio::sync::Mutex::new(()),
            generation: AtomicU64::new(0),
            counters,
        }
    }

    /// A valid token, from the cache or freshly fetched (one fetch for all concurrent callers).
    pub async fn token(&self) -> Result<AccessToken, GenesysError> {
        match self.cached() {
            Some((t, Freshness::Fresh)) => return Ok(t),
            Some((t, Freshness::RefreshDue)) => {
                // Refresh ahead if nobody else is; otherwise keep using the valid token.
                let Ok(_gate) = self.refresh.try_lock() else { return Ok(t) };
                return match self.fetch_and_store().await {
                    Ok(new) => Ok(new),
                    Err(e) => {
                        tracing::warn!(error = %e, "refreshing the Genesys token ahead of expiry failed; using the current one");
                        Ok(t)
                    }
                };
            }
            Some((_, Freshness::Expired)) | None => {}
        }
        let _gate = self.refresh.lock().await;
        // Whoever held the gate before us may have fetched already.
        if let Some((t, Freshness::Fresh | Freshness::RefreshDue)) = self.cached() {
            return Ok(t);
        }
        self.fetch_and_store().await
    }

    /// Forget `token` if it is still the cached one (the API answered 401 with it), so the
    /// next [`token`](Self::token) call re-authenticates. Returns whether it was dropped.
    pub fn invalidate(&self, token: &AccessToken) -> bool {
        let mut cache = self.lock_cache();
        if cache.as_ref().is_some_and(|c| c.token.generation == token.generation) {
            *cache = None;
            true
        } else {
            false
        }
    }

    fn lock_cache(&self) -> std::sync::MutexGuard<'_, Option<Cached>> {
        // A poisoned lock only means a panic elsewhere mid-update of a plain Option.
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn cached(&self) -> Option<(AccessToken, Freshness)> {
        let now = Instant::now();
        self.lock_cache().as_ref().map(|c| (c.token.clone(), freshness(now, c.refresh_at, c.expires_at)))
    }

    async fn fetch_and_store(&self) -> Result<AccessToken, GenesysError> {
        let received = Instant::now();
        let (secret, ttl) = self.fetch().await?;
        let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
        let token = AccessToken { secret, generation };
        *self.lock_cache() = Some(Cached {
            token: token.clone(),
            refresh_at: received + refresh_after(ttl, self.settings.margin),
            expires_at: received + ttl,
        });
        bump(&self.counters.token_refreshes);
        tracing::debug!(generation, ttl_secs = ttl.as_secs(), "obtained a Genesys OAuth token");
        Ok(token)
    }

    /// One token request, retried on the endpoint's rate-limit answer, 5xx and network
    /// errors within the retry budget.
    async fn fetch(&self) -> Result<(SecretString, Duration), GenesysError> {
        let s = &self.settings;
        let url = s.token_url.as_str();
        let started = Instant::now();
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            bump(&self.counters.token_requests);
            let request = self
                .http
                .post(s.token_url.clone())
                .basic_auth(&s.client_id, Some(s.client_secret.expose_secret()))
                .header(reqwest::header::ACCEPT, "application/json")
                .form(&[("grant_type", "client_credentials")]);
            let answer = tokio::time::timeout(s.request_timeout, async {
                let r = request.send().await?;
                let status = r.status().as_u16();
                let retry_after =
                    r.headers().get(reqwest::header::RETRY_AFTER).and_then(|v| v.to_str().ok()).map(str::to_string);
                let body = r.bytes().await?;
                Ok::<_, reqwest::Error>((status, retry_after, body))
            })
            .await;

            let (outcome, error) = match answer {
                Err(_) => (
                    Outcome::Timeout,
                    GenesysError::Timeout { request: format!("POST {url}"), after: s.request_timeout },
                ),
                Ok(Err(e)) => (
                    Outcome::Connection,
                    GenesysError::Transport { request: format!("POST {url}"), message: error_chain(&e) },
                ),
                Ok(Ok((status, _, body))) if (200..300).contains(&status) => {
                    return parse_token(&body, url, status);
                }
                Ok(Ok((status, retry_after, body))) => {
                    let err: AuthErrorBody = serde_json::from_slice(&body).unwrap_or_default();
                    let description = err.error_description.clone().or(err.description.clone());
                    let code = err.error.clone();
                    let is_code = |c: &str| code.as_deref().is_some_and(|e| e.eq_ignore_ascii_case(c));
                    let rate_limited = status == 429
                        || (status == 400
                            && is_code("invalid_request")
                            && description.as_deref().is_some_and(|d| d.to_ascii_lowercase().contains("rate limit")));
                    let auth = |fix: &str| GenesysError::Auth {
                        token_url: url.into(),
                        status: Some(status),
                        error: code.clone(),
                        description: description.clone(),
                        fix: fix.to_string(),
                    };
                    if rate_limited {
                        let error = GenesysError::RateLimited {
                            retry_after: retry_after
                                .as_deref()
                                .and_then(|v| super::retry::parse_retry_after(v, SystemTime::now())),
                            limit_key: Some("oauth token endpoint".into()),
                            message: description.clone().unwrap_or_else(|| "rate limit exceeded".into()),
                            correlation_id: None,
                            request: format!("POST {url}"),
                        };
                        (Outcome::Throttled { retry_after }, error)
                    } else if is_code("invalid_client") || is_code("unauthorized_client") || status == 401 {
                        return Err(auth(CREDENTIALS_FIX));
                    } else if status >= 500 {
                        (
                            Outcome::Status { status, retry_after },
                            auth("The Genesys Cloud login service failed; try again later"),
                        )
                    } else {
                        return Err(auth(
                            "Check that the OAuth client uses the Client Credentials grant and that the region setting points at your org",
                        ));
                    }
                }
            };
            let decision = {
                let mut rng = rand::thread_rng();
                decide(&s.retry, attempt, started.elapsed(), &outcome, true, SystemTime::now(), &mut rng)
            };
            match decision {
                Decision::Retry { after } => {
                    bump(&self.counters.retries);
                    self.counters.retry_wait(after);
                    tracing::warn!(error = %error, attempt, wait_ms = after.as_millis() as u64, "Genesys token request failed; retrying");
                    tokio::time::sleep(after).await;
                }
                Decision::GiveUp { reason } => {
                    tracing::warn!(error = %error, attempt, ?reason, "Genesys token request failed");
                    return Err(error);
                }
            }
        }
    }
}

/// Parse a 2xx token answer without ever echoing its content: serde's messages can quote
/// values, and this body holds the token.
fn parse_token(body: &[u8], url: &str, status: u16) -> Result<(SecretString, Duration), GenesysError> {
    let decode = |message: String| GenesysError::Decode {
        request: format!("POST {url}"),
        status,
        message,
        correlation_id: None,
    };
    let parsed: AuthResponse = serde_json::from_slice(body).map_err(|e| {
        decode(format!(
            "the token response is not the documented AuthResponse (access_token, token_type, expires_in); error at line {} column {}",
            e.line(),
            e.column()
        ))
    })?;
    if parsed.access_token.trim().is_empty() {
        return Err(decode("the token response has an empty access_token".into()));
    }
    if let Some(kind) = parsed.token_type.as_deref() {
        if !kind.eq_ignore_ascii_case("bearer") {
            return Err(decode(format!("unexpected token_type `{kind}` (expected bearer)")));
        }
    }
    let ttl = parsed.expires_in.filter(|s| *s > 0).map(Duration::from_secs).unwrap_or(DEFAULT_TOKEN_TTL);
    Ok((SecretString::from(parsed.access_token), ttl))
}

/// A reqwest error with its sources, for messages. reqwest errors name the URL, which for
/// us never carries credentials (they travel in headers and bodies).
pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let next = s.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    use axum::extract::State;
    use axum::http::{HeaderMap, StatusCode};
    use axum::response::IntoResponse;
    use axum::routing::post;
    use axum::Router;

    #[test]
    fn freshness_table() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let refresh = t0 + s(240);
        let expiry = t0 + s(300);
        let cases = [
            (t0, Freshness::Fresh),
            (t0 + s(239), Freshness::Fresh),
            (t0 + s(240), Freshness::RefreshDue),
            (t0 + s(299), Freshness::RefreshDue),
            (t0 + s(300), Freshness::Expired),
            (t0 + s(9999), Freshness::Expired),
        ];
        for (now, want) in cases {
            assert_eq!(freshness(now, refresh, expiry), want, "{:?}", now - t0);
        }
        assert_eq!(refresh_after(s(86400), s(60)), s(86340));
        assert_eq!(refresh_after(s(300), s(60)), s(240));
        assert_eq!(refresh_after(s(2), s(60)), s(1));
        assert_eq!(refresh_after(s(60), s(60)), s(30));
    }

    /// What the test token endpoint answers, in order; the last one repeats.
    #[derive(Clone)]
    struct Script {
        answers: Arc<Vec<(u16, &'static str, Option<&'static str>)>>,
        hits: Arc<AtomicUsize>,
        delay: Duration,
    }

    async fn token_endpoint(State(s): State<Script>, headers: HeaderMap, body: String) -> impl IntoResponse {
        let n = s.hits.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(s.delay).await;
        // The credentials travel only in the Basic header: id `cid`, secret `top-secret`.
        let basic = headers.get("authorization").and_then(|v| v.to_str().ok()).unwrap_or("");
        assert_eq!(basic, "Basic Y2lkOnRvcC1zZWNyZXQ=");
        assert_eq!(body, "grant_type=client_credentials");
        let (status, json, retry_after) = s.answers[n.min(s.answers.len() - 1)];
        let mut h = HeaderMap::new();
        if let Some(ra) = retry_after {
            h.insert("retry-after", ra.parse().unwrap());
        }
        (StatusCode::from_u16(status).unwrap(), h, json.to_string())
    }

    async fn serve(script: Script) -> Url {
        let app = Router::new().route("/oauth/token", post(token_endpoint)).with_state(script);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.ok() });
        Url::parse(&format!("http://{addr}/oauth/token")).unwrap()
    }

    fn provider(url: Url) -> (TokenProvider, Arc<Counters>) {
        let counters = Arc::new(Counters::default());
        let settings = TokenSettings {
            token_url: url,
            client_id: "cid".into(),
            client_secret: SecretString::from("top-secret"),
            margin: Duration::from_secs(60),
            request_timeout: Duration::from_secs(5),
            retry: RetryPolicy {
                max_attempts: 4,
                base_delay: Duration::from_millis(20),
                max_delay: Duration::from_millis(100),
                max_elapsed: Duration::from_secs(10),
                max_retry_after: Duration::from_secs(5),
                default_retry_after: Duration::from_millis(50),
            },
        };
        (TokenProvider::new(reqwest::Client::new(), settings, counters.clone()), counters)
    }

    fn script(answers: Vec<(u16, &'static str, Option<&'static str>)>, delay_ms: u64) -> Script {
        Script {
            answers: Arc::new(answers),
            hits: Arc::new(AtomicUsize::new(0)),
            delay: Duration::from_millis(delay_ms),
        }
    }

    const OK: (u16, &str, Option<&str>) =
        (200, r#"{"access_token":"tok-AAAA","token_type":"bearer","expires_in":86400}"#, None);

    #[tokio::test]
    async fn fifty_concurrent_callers_share_one_fetch() {
        let s = script(vec![OK], 100);
        let (p, counters) = provider(serve(s.clone()).await);
        let p = Arc::new(p);
        let tasks: Vec<_> = (0..50)
            .map(|_| {
                tokio::spawn({
                    let p = p.clone();
                    async move { p.token().await }
                })
            })
            .collect();
        for t in tasks {
            let tok = t.await.unwrap().unwrap();
            assert_eq!(tok.expose(), "tok-AAAA");
            assert_eq!(tok.generation(), 1);
        }
        assert_eq!(s.hits.load(Ordering::SeqCst), 1);
        assert_eq!(counters.snapshot().token_refreshes, 1);
        // Cached afterwards.
        p.token().await.unwrap();
        assert_eq!(s.hits.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn invalidate_forces_one_refetch_per_generation() {
        let s = script(vec![OK], 0);
        let (p, _) = provider(serve(s.clone()).await);
        let first = p.token().await.unwrap();
        assert!(p.invalidate(&first));
        assert!(!p.invalidate(&first), "a second 401 on the same token drops nothing");
        let second = p.token().await.unwrap();
        assert_eq!(second.generation(), 2);
        assert!(!p.invalidate(&first), "a stale token never drops the new one");
        p.token().await.unwrap();
        assert_eq!(s.hits.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn short_lived_tokens_are_refreshed() {
        let s = script(vec![(200, r#"{"access_token":"t","token_type":"Bearer","expires_in":1}"#, None)], 0);
        let (p, _) = provider(serve(s.clone()).await);
        assert_eq!(p.token().await.unwrap().generation(), 1);
        assert_eq!(p.token().await.unwrap().generation(), 1);
        // Refresh is due at half the 1 s lifetime (the margin of 60 s exceeds it).
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert_eq!(p.token().await.unwrap().generation(), 2);
        assert_eq!(s.hits.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn rate_limit_answer_is_retried_with_backoff() {
        const LIMITED: (u16, &str, Option<&str>) = (
            400,
            r#"{"error":"invalid_request","description":"rate limit exceeded; retry later","error_description":"rate limit exceeded; retry later"}"#,
            None,
        );
        let s = script(vec![LIMITED, LIMITED, OK], 0);
        let (p, counters) = provider(serve(s.clone()).await);
        assert_eq!(p.token().await.unwrap().expose(), "tok-AAAA");
        assert_eq!(s.hits.load(Ordering::SeqCst), 3);
        let st = counters.snapshot();
        assert_eq!((st.token_requests, st.retries, st.token_refreshes), (3, 2, 1));

        // Bounded: endless throttling ends in a RateLimited error after max_attempts.
        let s = script(vec![LIMITED], 0);
        let (p, _) = provider(serve(s.clone()).await);
        let e = p.token().await.unwrap_err();
        assert!(matches!(e, GenesysError::RateLimited { .. }), "{e:?}");
        assert_eq!(s.hits.load(Ordering::SeqCst), 4);
    }

    #[tokio::test]
    async fn retry_after_on_the_token_endpoint_is_honoured() {
        let s = script(
            vec![(400, r#"{"error":"invalid_request","error_description":"rate limit exceeded; x"}"#, Some("1")), OK],
            0,
        );
        let (p, _) = provider(serve(s.clone()).await);
        let started = Instant::now();
        p.token().await.unwrap();
        assert!(started.elapsed() >= Duration::from_millis(950), "{:?}", started.elapsed());
    }

    #[tokio::test]
    async fn bad_credentials_name_the_variables_and_hide_the_secret() {
        for status in [400, 401] {
            let s = script(
                vec![(
                    status,
                    r#"{"error":"invalid_client","description":"authentication failed","error_description":"authentication failed"}"#,
                    None,
                )],
                0,
            );
            let (p, _) = provider(serve(s.clone()).await);
            let e = p.token().await.unwrap_err();
            let text = e.to_string();
            for needle in [
                "GENESYSCLOUD_OAUTHCLIENT_ID",
                "GENESYSCLOUD_OAUTHCLIENT_SECRET",
                "GC_CLIENT_ID",
                "GC_CLIENT_SECRET",
                "region",
                "invalid_client",
                "authentication failed",
            ] {
                assert!(text.contains(needle), "{needle} missing in: {text}");
            }
            assert!(!text.contains("top-secret") && !format!("{e:?}").contains("top-secret"));
            assert!(!e.is_retryable());
            assert_eq!(s.hits.load(Ordering::SeqCst), 1, "bad credentials are not retried");
            assert!(!format!("{p:?}").contains("top-secret"));
        }
    }

    #[tokio::test]
    async fn server_errors_retry_then_succeed_and_malformed_tokens_hide_content() {
        let s = script(vec![(503, "", None), OK], 0);
        let (p, _) = provider(serve(s.clone()).await);
        p.token().await.unwrap();
        assert_eq!(s.hits.load(Ordering::SeqCst), 2);

        let s = script(vec![(200, r#"{"access_token":12345678,"expires_in":"tok-SECRET"}"#, None)], 0);
        let (p, _) = provider(serve(s.clone()).await);
        let e = p.token().await.unwrap_err();
        assert!(matches!(e, GenesysError::Decode { .. }), "{e:?}");
        assert!(!e.to_string().contains("12345678") && !e.to_string().contains("tok-SECRET"), "{e}");
    }

    #[tokio::test]
    async fn unreachable_token_endpoint_is_a_transport_error() {
        // Bind and drop to get a port nobody listens on.
        let addr = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
        let (p, _) = provider(Url::parse(&format!("http://{addr}/oauth/token")).unwrap());
        let e = p.token().await.unwrap_err();
        assert!(matches!(e, GenesysError::Transport { .. }), "{e:?}");
        assert!(e.is_retryable());
    }

    #[test]
    fn token_debug_is_redacted() {
        let t = AccessToken::external(SecretString::from("user-token-xyz"));
        assert!(!format!("{t:?}").contains("user-token-xyz"));
    }
}
