//! The Genesys Cloud API client: one request path shared by every typed call.
//!
//! Each attempt goes pace → token → send (with a timeout) → classify → decide → sleep →
//! repeat. A 401 drops the token and re-authenticates once; 403 becomes `Forbidden`
//! naming the permission; other error bodies become typed errors with the correlation id;
//! the retry decision is the pure `retry::decide`. Failures are logged at warn with the
//! correlation id, never with a token or the secret.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use reqwest::Method;
use secrecy::{ExposeSecret, SecretString};
use serde::de::DeserializeOwned;
use serde::Serialize;
use url::Url;

use super::auth::{error_chain, AccessToken, TokenProvider, TokenSettings};
use super::error::{missing_permission, GenesysError};
use super::models::*;
use super::pacing::Pacer;
use super::region::Hosts;
use super::retry::{decide, parse_retry_after, Decision, GiveUpReason, Outcome, RetryPolicy};
use super::stats::{bump, ClientStats, Counters};

/// Answers larger than this are refused: no Genesys endpoint we call comes near it, and
/// it keeps a misbehaving server from exhausting memory.
const MAX_BODY_BYTES: usize = 32 * 1024 * 1024;

/// The longest error-body excerpt quoted in an error when the body is not an `ErrorBody`.
const MAX_ERROR_EXCERPT: usize = 300;

/// Pages of async job results followed before giving up (a cursor loop guard).
const MAX_RESULT_PAGES: usize = 10_000;

/// Everything the client needs. `Debug` redacts the secret.
#[derive(Debug, Clone)]
pub struct ClientSettings {
    pub hosts: Hosts,
    pub client_id: String,
    pub client_secret: SecretString,
    /// The OAuth client's per-minute limit; calls are paced to stay under it.
    pub requests_per_minute: u32,
    pub burst: u32,
    /// Timeout of one HTTP attempt.
    pub request_timeout: Duration,
    /// Refresh the token this long before it expires.
    pub token_refresh_margin: Duration,
    pub retry: RetryPolicy,
}

impl ClientSettings {
    /// Settings from the `[genesys]` configuration section and its resolved hosts.
    pub fn from_config(c: &crate::config::GenesysConfig, hosts: Hosts) -> Self {
        ClientSettings {
            hosts,
            client_id: c.client_id.trim().to_string(),
            client_secret: c.client_secret.clone(),
            requests_per_minute: c.requests_per_minute,
            burst: c.burst,
            request_timeout: Duration::from_millis(c.request_timeout_ms),
            token_refresh_margin: Duration::from_secs(c.token_refresh_margin_secs),
            retry: RetryPolicy::from(&c.retry),
        }
    }
}

/// A Genesys Cloud API client for one OAuth client. Cheap to clone; clones share the
/// token cache, the pacer and the counters, so build one per OAuth client and clone it.
#[derive(Clone)]
pub struct GenesysClient {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    api_base: Url,
    client_id: String,
    request_timeout: Duration,
    retry: RetryPolicy,
    auth: TokenProvider,
    pacer: Pacer,
    counters: Arc<Counters>,
}

impl std::fmt::Debug for GenesysClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let i = &self.inner;
        f.debug_struct("GenesysClient")
            .field("api", &i.api_base.as_str())
            .field("client_id", &i.client_id)
            .field("pacer", &i.pacer)
            .field("auth", &i.auth)
            .finish()
    }
}

/// Whose token a request carries.
enum Auth<'a> {
    /// Our client-credentials token: paced, re-authenticated once on 401.
    Client,
    /// An agent's user token (the panel's): not ours to refresh, and not paced by our
    /// client's limiter because Genesys counts it against that user's token, not ours.
    User(&'a SecretString),
}

struct Request<'a> {
    method: Method,
    url: Url,
    body: Option<Bytes>,
    /// Safe to repeat after an unknown outcome (see `retry`).
    idempotent: bool,
    auth: Auth<'a>,
    /// A 404 is an expected answer (existence checks): don't warn about it.
    not_found_is_normal: bool,
}

impl Request<'_> {
    /// `METHOD path?query`, for errors.
    fn describe(&self) -> String {
        format!("{} {}", self.method, self.path())
    }

    /// Path and query, for messages and logs.
    fn path(&self) -> String {
        match self.url.query() {
            Some(q) => format!("{}?{q}", self.url.path()),
            None => self.url.path().to_string(),
        }
    }
}

/// A received answer.
struct Answer {
    status: u16,
    correlation_id: Option<String>,
    retry_after: Option<String>,
    body: Bytes,
}

enum AttemptError {
    Timeout,
    Transport(String),
}

impl GenesysClient {
    /// Build a client. Fails when the credentials are missing, naming the variables to set.
    pub fn new(settings: ClientSettings) -> Result<Self, GenesysError> {
        let missing: Vec<&str> = [
            (settings.client_id.trim().is_empty(), "GENESYSCLOUD_OAUTHCLIENT_ID (or GC_CLIENT_ID)"),
            (
                settings.client_secret.expose_secret().trim().is_empty(),
                "GENESYSCLOUD_OAUTHCLIENT_SECRET (or GC_CLIENT_SECRET)",
            ),
        ]
        .into_iter()
        .filter_map(|(empty, var)| empty.then_some(var))
        .collect();
        if !missing.is_empty() {
            return Err(GenesysError::Config(format!(
                "no OAuth client credentials: set {} (or genesys.client_id / genesys.client_secret in gc-assist.toml)",
                missing.join(" and ")
            )));
        }
        if settings.request_timeout.is_zero() {
            return Err(GenesysError::Config("genesys.request_timeout_ms must be above 0".into()));
        }
        let pacer = Pacer::new(settings.requests_per_minute, settings.burst)?;
        let http = reqwest::Client::builder()
            .connect_timeout(settings.request_timeout)
            .user_agent(concat!("gc-assist/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| GenesysError::Config(format!("cannot build the HTTP client: {}", error_chain(&e))))?;
        let token_url = settings
            .hosts
            .login
            .join("oauth/token")
            .map_err(|e| GenesysError::Config(format!("bad login host {}: {e}", settings.hosts.login)))?;
        let counters = Arc::new(Counters::default());
        let auth = TokenProvider::new(
            http.clone(),
            TokenSettings {
                token_url,
                client_id: settings.client_id.trim().to_string(),
                client_secret: settings.client_secret.clone(),
                margin: settings.token_refresh_margin,
                request_timeout: settings.request_timeout,
                retry: settings.retry.clone(),
            },
            counters.clone(),
        );
        Ok(GenesysClient {
            inner: Arc::new(Inner {
                http,
                api_base: settings.hosts.api.clone(),
                client_id: settings.client_id.trim().to_string(),
                request_timeout: settings.request_timeout,
                retry: settings.retry,
                auth,
                pacer,
                counters,
            }),
        })
    }

    /// A snapshot of the client's counters.
    pub fn stats(&self) -> ClientStats {
        self.inner.counters.snapshot()
    }

    /// The token provider (for callers that need the bearer token itself, e.g. tools).
    pub fn token_provider(&self) -> &TokenProvider {
        &self.inner.auth
    }

    // -----------------------------------------------------------------------------------
    // Typed calls

    /// `GET /api/v2/tokens/me`: who our token is (org, OAuth client). A cheap credentials
    /// check for `gc-assist doctor`-style commands.
    pub async fn token_info(&self) -> Result<TokenInfo, GenesysError> {
        let url = self.url(&["tokens", "me"], &[])?;
        self.call_json(Request::get(url)).await
    }

    /// `GET /api/v2/users/me` with an agent's user token (client-credentials tokens are
    /// refused by this endpoint).
    pub async fn user_me(&self, user_token: &SecretString) -> Result<UserMe, GenesysError> {
        let url = self.url(&["users", "me"], &[])?;
        self.call_json(Request { auth: Auth::User(user_token), ..Request::get(url) }).await
    }

    /// `GET /api/v2/conversations/{id}`.
    pub async fn get_conversation(&self, conversation_id: &str) -> Result<Conversation, GenesysError> {
        let id = checked_id("conversation id", conversation_id)?;
        let url = self.url(&["conversations", id], &[])?;
        self.call_json(Request::get(url)).await
    }

    /// `PATCH /api/v2/conversations/{id}/participants/{pid}/attributes`: merge participant
    /// data. Marked idempotent: the PATCH merges the given keys, so applying it twice
    /// leaves the same attributes as applying it once.
    pub async fn patch_participant_attributes(
        &self,
        conversation_id: &str,
        participant_id: &str,
        attributes: &BTreeMap<String, String>,
    ) -> Result<(), GenesysError> {
        let cid = checked_id("conversation id", conversation_id)?;
        let pid = checked_id("participant id", participant_id)?;
        let url = self.url(&["conversations", cid, "participants", pid, "attributes"], &[])?;
        let body = json_body(&serde_json::json!({ "attributes": attributes }))?;
        self.call_empty(Request::with_body(Method::PATCH, url, body, true)).await
    }

    /// `POST /api/v2/notifications/channels`. Not idempotent: a repeated POST makes a second
    /// channel, and the 21st evicts the oldest one, possibly one in use.
    pub async fn create_channel(&self) -> Result<Channel, GenesysError> {
        let url = self.url(&["notifications", "channels"], &[])?;
        self.call_json(Request { method: Method::POST, idempotent: false, ..Request::get(url) }).await
    }

    /// `GET /api/v2/notifications/channels?includechannels=oauthclient`: every channel of
    /// the OAuth client. `oauthclient` rather than the default `token`, because our token
    /// rotates and channels made with the previous token still count against the 20.
    pub async fn list_channels(&self) -> Result<Vec<Channel>, GenesysError> {
        let url = self.url(&["notifications", "channels"], &[("includechannels", "oauthclient")])?;
        let listing: ChannelEntityListing = self.call_json(Request::get(url)).await?;
        Ok(listing.entities)
    }

    /// `HEAD /api/v2/notifications/channels/{id}`: 200 → true, 404 → false.
    pub async fn channel_exists(&self, channel_id: &str) -> Result<bool, GenesysError> {
        let id = checked_id("channel id", channel_id)?;
        let url = self.url(&["notifications", "channels", id], &[])?;
        let request = Request { method: Method::HEAD, not_found_is_normal: true, ..Request::get(url) };
        match self.execute(&request).await {
            Ok(_) => Ok(true),
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// `GET /api/v2/notifications/channels/{id}/subscriptions`.
    pub async fn list_subscriptions(&self, channel_id: &str) -> Result<Vec<ChannelTopic>, GenesysError> {
        let id = checked_id("channel id", channel_id)?;
        let url = self.url(&["notifications", "channels", id, "subscriptions"], &[])?;
        let listing: ChannelTopicEntityListing = self.call_json(Request::get(url)).await?;
        Ok(listing.entities)
    }

    /// `POST …/subscriptions?ignoreErrors=false`: add topics to the channel's set. Marked
    /// idempotent: adding topics that are already subscribed leaves the set unchanged.
    pub async fn add_subscriptions(
        &self,
        channel_id: &str,
        topics: &[String],
    ) -> Result<Vec<ChannelTopic>, GenesysError> {
        self.subscriptions(Method::POST, channel_id, topics).await
    }

    /// `PUT …/subscriptions?ignoreErrors=false`: replace the channel's set (`[]` clears it).
    pub async fn replace_subscriptions(
        &self,
        channel_id: &str,
        topics: &[String],
    ) -> Result<Vec<ChannelTopic>, GenesysError> {
        self.subscriptions(Method::PUT, channel_id, topics).await
    }

    async fn subscriptions(
        &self,
        method: Method,
        channel_id: &str,
        topics: &[String],
    ) -> Result<Vec<ChannelTopic>, GenesysError> {
        let id = checked_id("channel id", channel_id)?;
        let url = self.url(&["notifications", "channels", id, "subscriptions"], &[("ignoreErrors", "false")])?;
        let items: Vec<ChannelTopic> =
            topics.iter().map(|t| ChannelTopic { id: t.clone(), ..Default::default() }).collect();
        let body = json_body(&items)?;
        let listing: ChannelTopicEntityListing = self.call_json(Request::with_body(method, url, body, true)).await?;
        Ok(listing.entities)
    }

    /// `DELETE …/subscriptions`: remove every subscription of the channel.
    pub async fn delete_subscriptions(&self, channel_id: &str) -> Result<(), GenesysError> {
        let id = checked_id("channel id", channel_id)?;
        let url = self.url(&["notifications", "channels", id, "subscriptions"], &[])?;
        self.call_empty(Request { method: Method::DELETE, ..Request::get(url) }).await
    }

    /// `POST /api/v2/analytics/agentcopilots/aggregates/query`. Read-only, hence idempotent.
    pub async fn copilot_aggregates(
        &self,
        q: &CopilotAggregationQuery,
    ) -> Result<CopilotAggregateResponse, GenesysError> {
        let url = self.url(&["analytics", "agentcopilots", "aggregates", "query"], &[])?;
        let body = json_body(q)?;
        self.call_json_or_default(Request::with_body(Method::POST, url, body, true)).await
    }

    /// `POST /api/v2/analytics/agentcopilots/aggregates/jobs` → the job id. Marked
    /// idempotent: the job only reads data, and a duplicate left by a retry expires on its own.
    pub async fn copilot_job_create(&self, q: &CopilotAsyncAggregationQuery) -> Result<String, GenesysError> {
        let url = self.url(&["analytics", "agentcopilots", "aggregates", "jobs"], &[])?;
        let body = json_body(q)?;
        let r: AsyncQueryResponse = self.call_json(Request::with_body(Method::POST, url, body, true)).await?;
        if r.job_id.trim().is_empty() {
            return Err(GenesysError::Decode {
                request: "POST /api/v2/analytics/agentcopilots/aggregates/jobs".into(),
                status: 202,
                message: "the answer has no jobId".into(),
                correlation_id: None,
            });
        }
        Ok(r.job_id)
    }

    /// `GET …/aggregates/jobs/{jobId}`.
    pub async fn copilot_job_status(&self, job_id: &str) -> Result<AsyncQueryStatus, GenesysError> {
        let id = checked_id("job id", job_id)?;
        let url = self.url(&["analytics", "agentcopilots", "aggregates", "jobs", id], &[])?;
        self.call_json(Request::get(url)).await
    }

    /// `GET …/aggregates/jobs/{jobId}/results[?cursor=]`: one page; follow `cursor` until absent.
    pub async fn copilot_job_results(
        &self,
        job_id: &str,
        cursor: Option<&str>,
    ) -> Result<CopilotAsyncResponse, GenesysError> {
        let id = checked_id("job id", job_id)?;
        let query: Vec<(&str, &str)> = cursor.map(|c| vec![("cursor", c)]).unwrap_or_default();
        let url = self.url(&["analytics", "agentcopilots", "aggregates", "jobs", id, "results"], &query)?;
        self.call_json_or_default(Request::get(url)).await
    }

    /// Every result of a fulfilled job, following cursors page by page.
    pub async fn copilot_job_all_results(
        &self,
        job_id: &str,
    ) -> Result<Vec<CopilotAggregateDataContainer>, GenesysError> {
        let mut all = Vec::new();
        let mut cursor: Option<String> = None;
        for _ in 0..MAX_RESULT_PAGES {
            let page = self.copilot_job_results(job_id, cursor.as_deref()).await?;
            all.extend(page.results);
            match page.cursor.filter(|c| !c.is_empty()) {
                Some(next) if Some(&next) == cursor.as_ref() => {
                    return Err(GenesysError::Decode {
                        request: format!("GET /api/v2/analytics/agentcopilots/aggregates/jobs/{job_id}/results"),
                        status: 200,
                        message: "the results cursor did not advance".into(),
                        correlation_id: None,
                    });
                }
                Some(next) => cursor = Some(next),
                None => return Ok(all),
            }
        }
        Err(GenesysError::Decode {
            request: format!("GET /api/v2/analytics/agentcopilots/aggregates/jobs/{job_id}/results"),
            status: 200,
            message: format!("more than {MAX_RESULT_PAGES} result pages"),
            correlation_id: None,
        })
    }

    /// Poll a job every `poll` until it is fulfilled (Ok), fails (an `Api` error carrying
    /// its `errorMessage`), or `timeout` passes (a `Timeout` error).
    pub async fn copilot_job_wait(
        &self,
        job_id: &str,
        poll: Duration,
        timeout: Duration,
    ) -> Result<AsyncQueryStatus, GenesysError> {
        let started = Instant::now();
        loop {
            let status = self.copilot_job_status(job_id).await?;
            if status.is_fulfilled() {
                return Ok(status);
            }
            let path = format!("/api/v2/analytics/agentcopilots/aggregates/jobs/{job_id}");
            if status.is_failed() {
                return Err(GenesysError::Api {
                    status: 200,
                    code: Some(format!("job.{}", status.state.to_ascii_lowercase())),
                    message: format!(
                        "the analytics job ended in state {}{}",
                        status.state,
                        status.error_message.as_deref().map(|m| format!(": {m}")).unwrap_or_default()
                    ),
                    correlation_id: None,
                    request: format!("GET {path}"),
                    body: None,
                });
            }
            if started.elapsed() + poll > timeout {
                return Err(GenesysError::Timeout { request: format!("GET {path}"), after: timeout });
            }
            tokio::time::sleep(poll).await;
        }
    }

    /// `DELETE …/aggregates/jobs/{jobId}`: cancel or discard a job.
    pub async fn copilot_job_delete(&self, job_id: &str) -> Result<(), GenesysError> {
        let id = checked_id("job id", job_id)?;
        let url = self.url(&["analytics", "agentcopilots", "aggregates", "jobs", id], &[])?;
        self.call_empty(Request { method: Method::DELETE, ..Request::get(url) }).await
    }

    // -----------------------------------------------------------------------------------
    // The request path

    /// `{api}/api/v2/{segments…}?{query}`; segments are percent-encoded one by one.
    fn url(&self, segments: &[&str], query: &[(&str, &str)]) -> Result<Url, GenesysError> {
        let mut url = self.inner.api_base.clone();
        {
            let mut path = url.path_segments_mut().map_err(|_| {
                GenesysError::Config(format!("the API base {} cannot take a path", self.inner.api_base))
            })?;
            path.pop_if_empty().extend(["api", "v2"]).extend(segments);
        }
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        Ok(url)
    }

    async fn call_json<T: DeserializeOwned>(&self, request: Request<'_>) -> Result<T, GenesysError> {
        let answer = self.execute(&request).await?;
        decode(&request, &answer)
    }

    /// Like `call_json`, but an empty body means "no data" (`T::default()`).
    async fn call_json_or_default<T: DeserializeOwned + Default>(
        &self,
        request: Request<'_>,
    ) -> Result<T, GenesysError> {
        let answer = self.execute(&request).await?;
        if answer.body.iter().all(u8::is_ascii_whitespace) {
            return Ok(T::default());
        }
        decode(&request, &answer)
    }

    async fn call_empty(&self, request: Request<'_>) -> Result<(), GenesysError> {
        self.execute(&request).await.map(|_| ())
    }

    /// The one request path. Returns the 2xx answer or the final typed error.
    async fn execute(&self, request: &Request<'_>) -> Result<Answer, GenesysError> {
        let inner = &*self.inner;
        let started = Instant::now();
        let mut attempt = 0u32;
        let mut reauthenticated = false;
        loop {
            attempt += 1;
            let token = match request.auth {
                Auth::Client => {
                    let waited = inner.pacer.acquire().await;
                    inner.counters.paced(waited);
                    inner.auth.token().await?
                }
                Auth::User(t) => AccessToken::external(t.clone()),
            };
            bump(&inner.counters.requests);
            let (outcome, error) = match self.attempt(request, &token).await {
                Ok(answer) if (200..300).contains(&answer.status) => return Ok(answer),
                Ok(answer) if answer.status == 401 && matches!(request.auth, Auth::Client) && !reauthenticated => {
                    // Tokens can be revoked or expire early: fetch a new one and try again,
                    // once. This is not a retry of a failure, so it spends no attempt.
                    reauthenticated = true;
                    attempt -= 1;
                    inner.auth.invalidate(&token);
                    bump(&inner.counters.reauthentications);
                    tracing::warn!(
                        method = %request.method,
                        path = %request.path(),
                        correlation_id = answer.correlation_id.as_deref().unwrap_or("-"),
                        "Genesys refused our token (401); re-authenticating once"
                    );
                    continue;
                }
                Ok(answer) => {
                    let outcome = Outcome::Status { status: answer.status, retry_after: answer.retry_after.clone() };
                    (outcome, error_from_answer(request, &answer))
                }
                Err(AttemptError::Timeout) => {
                    bump(&inner.counters.timeouts);
                    let e = GenesysError::Timeout { request: request.describe(), after: inner.request_timeout };
                    (Outcome::Timeout, e)
                }
                Err(AttemptError::Transport(message)) => {
                    bump(&inner.counters.transport_errors);
                    let e = GenesysError::Transport { request: request.describe(), message };
                    (Outcome::Connection, e)
                }
            };
            let decision = {
                let mut rng = rand::thread_rng();
                decide(
                    &inner.retry,
                    attempt,
                    started.elapsed(),
                    &outcome,
                    request.idempotent,
                    SystemTime::now(),
                    &mut rng,
                )
            };
            match decision {
                Decision::Retry { after } => {
                    bump(&inner.counters.retries);
                    inner.counters.retry_wait(after);
                    tracing::warn!(
                        method = %request.method,
                        path = %request.path(),
                        status = error.status().unwrap_or(0),
                        correlation_id = error.correlation_id().unwrap_or("-"),
                        attempt,
                        wait_ms = u64::try_from(after.as_millis()).unwrap_or(u64::MAX),
                        error = %error,
                        "Genesys call failed; retrying"
                    );
                    tokio::time::sleep(after).await;
                }
                Decision::GiveUp { reason } => {
                    let expected = request.not_found_is_normal && error.is_not_found();
                    if !expected {
                        tracing::warn!(
                            method = %request.method,
                            path = %request.path(),
                            status = error.status().unwrap_or(0),
                            correlation_id = error.correlation_id().unwrap_or("-"),
                            attempt,
                            reason = give_up_text(&reason),
                            error = %error,
                            "Genesys call failed"
                        );
                    }
                    return Err(error);
                }
            }
        }
    }

    /// One HTTP exchange under the per-attempt timeout, body included.
    async fn attempt(&self, request: &Request<'_>, token: &AccessToken) -> Result<Answer, AttemptError> {
        let inner = &*self.inner;
        let mut builder = inner
            .http
            .request(request.method.clone(), request.url.clone())
            .bearer_auth(token.expose())
            .header(reqwest::header::ACCEPT, "application/json");
        if let Some(body) = &request.body {
            builder = builder.header(reqwest::header::CONTENT_TYPE, "application/json").body(body.clone());
        }
        let exchange = async {
            let mut response = builder.send().await.map_err(|e| AttemptError::Transport(error_chain(&e)))?;
            let status = response.status().as_u16();
            inner.counters.status(status);
            let header = |name: &str| response.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
            let correlation_id = header("inin-correlation-id");
            let retry_after = header("retry-after");
            let mut body = Vec::new();
            while let Some(chunk) = response.chunk().await.map_err(|e| AttemptError::Transport(error_chain(&e)))? {
                if body.len() + chunk.len() > MAX_BODY_BYTES {
                    return Err(AttemptError::Transport(format!("the answer is larger than {MAX_BODY_BYTES} bytes")));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(Answer { status, correlation_id, retry_after, body: Bytes::from(body) })
        };
        match tokio::time::timeout(inner.request_timeout, exchange).await {
            Ok(result) => result,
            Err(_) => Err(AttemptError::Timeout),
        }
    }
}

impl<'a> Request<'a> {
    /// A GET with our token: idempotent, no body.
    fn get(url: Url) -> Request<'a> {
        Request {
            method: Method::GET,
            url,
            body: None,
            idempotent: true,
            auth: Auth::Client,
            not_found_is_normal: false,
        }
    }

    fn with_body(method: Method, url: Url, body: Bytes, idempotent: bool) -> Request<'a> {
        Request { method, body: Some(body), idempotent, ..Request::get(url) }
    }
}

fn json_body<T: Serialize + ?Sized>(value: &T) -> Result<Bytes, GenesysError> {
    serde_json::to_vec(value)
        .map(Bytes::from)
        .map_err(|e| GenesysError::Config(format!("cannot encode the request body: {e}")))
}

/// Ids become path segments: refuse anything that could change the path or is not an id.
fn checked_id<'s>(what: &str, id: &'s str) -> Result<&'s str, GenesysError> {
    let ok = !id.is_empty()
        && id.len() <= 256
        && id != "."
        && id != ".."
        && id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(id)
    } else {
        let shown: String = id.chars().take(80).collect();
        Err(GenesysError::Config(format!(
            "{what} `{shown}` is not a valid Genesys id (expected letters, digits, `-`, `_` or `.`)"
        )))
    }
}

fn decode<T: DeserializeOwned>(request: &Request<'_>, answer: &Answer) -> Result<T, GenesysError> {
    serde_json::from_slice(&answer.body).map_err(|e| GenesysError::Decode {
        request: request.describe(),
        status: answer.status,
        message: e.to_string(),
        correlation_id: answer.correlation_id.clone(),
    })
}

/// Turn a non-2xx answer into the matching typed error.
fn error_from_answer(request: &Request<'_>, answer: &Answer) -> GenesysError {
    let body: Option<ErrorBody> = serde_json::from_slice(&answer.body).ok();
    let correlation_id = answer
        .correlation_id
        .clone()
        .or_else(|| body.as_ref().and_then(|b| b.context_id.clone()))
        .filter(|s| !s.is_empty());
    let message = body
        .as_ref()
        .and_then(|b| b.message.clone())
        .filter(|m| !m.trim().is_empty())
        .unwrap_or_else(|| excerpt(&answer.body, answer.status));
    let code = body.as_ref().and_then(|b| b.code.clone());
    let request = request.describe();
    match answer.status {
        403 => GenesysError::Forbidden {
            permission: body.as_ref().and_then(missing_permission),
            code,
            message,
            correlation_id,
            request,
        },
        429 => GenesysError::RateLimited {
            retry_after: answer.retry_after.as_deref().and_then(|v| parse_retry_after(v, SystemTime::now())),
            limit_key: body.as_ref().and_then(|b| b.limit.as_ref()).and_then(|l| l.key.clone()),
            message,
            correlation_id,
            request,
        },
        status => GenesysError::Api { status, code, message, correlation_id, request, body: body.map(Box::new) },
    }
}

/// A printable excerpt of a non-JSON error body, or the status' reason phrase.
fn excerpt(body: &[u8], status: u16) -> String {
    let text = String::from_utf8_lossy(body);
    let clean: String =
        text.chars().map(|c| if c.is_control() { ' ' } else { c }).take(MAX_ERROR_EXCERPT).collect::<String>();
    let clean = clean.trim();
    if clean.is_empty() {
        reqwest::StatusCode::from_u16(status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("no error details")
            .to_string()
    } else {
        clean.to_string()
    }
}

fn give_up_text(reason: &GiveUpReason) -> String {
    match reason {
        GiveUpReason::NotRetryable => "not retryable".into(),
        GiveUpReason::NotIdempotent => "not safe to repeat".into(),
        GiveUpReason::Attempts => "attempt budget spent".into(),
        GiveUpReason::Elapsed => "time budget spent".into(),
        GiveUpReason::RetryAfterTooLong(d) => format!("asked to wait {} s, above the cap", d.as_secs()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::genesys::region;

    fn settings(base: &str) -> ClientSettings {
        ClientSettings {
            hosts: region::resolve(base).unwrap(),
            client_id: "cid".into(),
            client_secret: SecretString::from("top-secret"),
            requests_per_minute: 300,
            burst: 10,
            request_timeout: Duration::from_secs(2),
            token_refresh_margin: Duration::from_secs(60),
            retry: RetryPolicy::default(),
        }
    }

    #[test]
    fn new_names_missing_variables() {
        let mut s = settings("http://127.0.0.1:9");
        s.client_id = " ".into();
        s.client_secret = SecretString::from("");
        let e = GenesysClient::new(s).unwrap_err().to_string();
        assert!(e.contains("GENESYSCLOUD_OAUTHCLIENT_ID") && e.contains("GC_CLIENT_SECRET"), "{e}");
        let mut s = settings("http://127.0.0.1:9");
        s.client_secret = SecretString::from("");
        let e = GenesysClient::new(s).unwrap_err().to_string();
        assert!(!e.contains("GENESYSCLOUD_OAUTHCLIENT_ID ") && e.contains("GENESYSCLOUD_OAUTHCLIENT_SECRET"), "{e}");
    }

    #[test]
    fn settings_from_config_defaults() {
        let c = crate::config::Config::defaults();
        let s = ClientSettings::from_config(&c.genesys, region::resolve(&c.genesys.region).unwrap());
        assert_eq!((s.requests_per_minute, s.burst), (300, 10));
        assert_eq!(s.request_timeout, Duration::from_secs(10));
        assert_eq!(s.token_refresh_margin, Duration::from_secs(60));
        assert_eq!(s.retry, RetryPolicy::default());
        assert_eq!(s.hosts.login.as_str(), "https://login.mypurecloud.com/");
    }

    #[test]
    fn debug_hides_the_secret() {
        let s = settings("http://127.0.0.1:9");
        assert!(!format!("{s:?}").contains("top-secret"));
        let c = GenesysClient::new(s).unwrap();
        let shown = format!("{c:?}");
        assert!(!shown.contains("top-secret") && shown.contains("cid"), "{shown}");
    }

    #[test]
    fn urls_are_built_segment_by_segment() {
        let c = GenesysClient::new(settings("https://api.example.test/prefix")).unwrap();
        let u = c.url(&["conversations", "abc-1", "participants", "p_2", "attributes"], &[]).unwrap();
        assert_eq!(
            u.as_str(),
            "https://api.example.test/prefix/api/v2/conversations/abc-1/participants/p_2/attributes"
        );
        let u = c.url(&["notifications", "channels"], &[("includechannels", "oauthclient")]).unwrap();
        assert_eq!(
            u.as_str(),
            "https://api.example.test/prefix/api/v2/notifications/channels?includechannels=oauthclient"
        );
        let u = c.url(&["x"], &[("cursor", "a b&c=d")]).unwrap();
        assert_eq!(u.query(), Some("cursor=a+b%26c%3Dd"));
    }

    #[test]
    fn ids_are_checked() {
        for bad in ["", ".", "..", "a/b", "a?b", "a b", "%2e%2e", &"x".repeat(300)] {
            assert!(checked_id("conversation id", bad).is_err(), "{bad}");
        }
        for good in ["6a0f2c7e-1d3b-4e59-8a70-9c4b2d1e0f33", "streaming-0-2k8f", "job_1.x"] {
            assert_eq!(checked_id("id", good).unwrap(), good);
        }
    }

    #[test]
    fn error_bodies_become_typed_errors() {
        let request = Request::get(Url::parse("http://127.0.0.1:9/api/v2/conversations/x").unwrap());
        let answer = |status, cid: Option<&str>, body: &str| Answer {
            status,
            correlation_id: cid.map(str::to_string),
            retry_after: Some("7".into()),
            body: Bytes::from(body.to_string()),
        };
        let e = error_from_answer(
            &request,
            &answer(
                404,
                Some("hdr-cid"),
                r#"{"message":"Not found","code":"not.found","status":404,"contextId":"body-cid"}"#,
            ),
        );
        assert!(matches!(&e, GenesysError::Api { status: 404, code: Some(c), .. } if c == "not.found"), "{e:?}");
        assert_eq!(e.correlation_id(), Some("hdr-cid"), "the header wins");
        let e = error_from_answer(&request, &answer(500, None, r#"{"message":"boom","contextId":"body-cid"}"#));
        assert_eq!(e.correlation_id(), Some("body-cid"), "contextId when the header is missing");
        let e = error_from_answer(
            &request,
            &answer(
                429,
                None,
                r#"{"message":"Rate limit","code":"too.many.requests.retry.after","limit":{"key":"client.credentials.token.rate.per.minute","namespace":"platform.api","value":300}}"#,
            ),
        );
        assert!(
            matches!(&e, GenesysError::RateLimited { retry_after: Some(d), limit_key: Some(k), .. }
                if *d == Duration::from_secs(7) && k == "client.credentials.token.rate.per.minute"),
            "{e:?}"
        );
        let e = error_from_answer(
            &request,
            &answer(
                403,
                None,
                r#"{"message":"Missing","code":"missing.permissions","messageParams":{"permissions":"conversation:communication:view"}}"#,
            ),
        );
        assert!(
            matches!(&e, GenesysError::Forbidden { permission: Some(p), .. } if p == "conversation:communication:view"),
            "{e:?}"
        );
        let e = error_from_answer(&request, &answer(502, None, "<html>\n<body>Bad gateway</body></html>"));
        assert!(e.to_string().contains("<html> <body>Bad gateway"), "{e}");
        let e = error_from_answer(&request, &answer(503, None, ""));
        assert!(e.to_string().contains("Service Unavailable"), "{e}");
    }

    // ---- The request path against a scripted local server ----------------------------

    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;

    use axum::extract::State;
    use axum::http::{HeaderMap, StatusCode};
    use axum::response::IntoResponse;
    use axum::Router;

    /// One scripted API answer: status, extra headers, body.
    type Scripted = (u16, Vec<(&'static str, &'static str)>, &'static str);

    #[derive(Clone, Default)]
    struct Server {
        answers: Arc<Mutex<Vec<Scripted>>>,
        api_hits: Arc<AtomicUsize>,
        token_hits: Arc<AtomicUsize>,
        seen: Arc<Mutex<Vec<(String, String, String)>>>,
        delay: Arc<Mutex<Duration>>,
    }

    async fn handle(State(s): State<Server>, req: axum::extract::Request) -> axum::response::Response {
        let method = req.method().to_string();
        let uri = req.uri().to_string();
        let auth = req.headers().get("authorization").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
        if uri == "/oauth/token" {
            let n = s.token_hits.fetch_add(1, Ordering::SeqCst) + 1;
            let body = format!(r#"{{"access_token":"tok-{n}","token_type":"bearer","expires_in":86400}}"#);
            return (StatusCode::OK, body).into_response();
        }
        s.api_hits.fetch_add(1, Ordering::SeqCst);
        let body = axum::body::to_bytes(req.into_body(), 1 << 20).await.unwrap_or_default();
        s.seen.lock().unwrap().push((format!("{method} {uri}"), auth, String::from_utf8_lossy(&body).into_owned()));
        let delay = *s.delay.lock().unwrap();
        tokio::time::sleep(delay).await;
        let next = {
            let mut a = s.answers.lock().unwrap();
            if a.len() > 1 {
                a.remove(0)
            } else {
                a.first().cloned().unwrap_or((200, vec![], "{}"))
            }
        };
        let (status, headers, body) = next;
        let mut h = HeaderMap::new();
        h.insert("inin-correlation-id", "cid-test".parse().unwrap());
        for (k, v) in headers {
            h.insert(k, v.parse().unwrap());
        }
        (StatusCode::from_u16(status).unwrap(), h, body).into_response()
    }

    async fn scripted(answers: Vec<Scripted>) -> (GenesysClient, Server) {
        let server = Server { answers: Arc::new(Mutex::new(answers)), ..Server::default() };
        let app = Router::new().fallback(handle).with_state(server.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.ok() });
        let mut s = settings(&format!("http://{addr}"));
        s.retry = RetryPolicy {
            max_attempts: 4,
            base_delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(50),
            max_elapsed: Duration::from_secs(20),
            max_retry_after: Duration::from_secs(5),
            default_retry_after: Duration::from_millis(100),
        };
        s.request_timeout = Duration::from_millis(500);
        (GenesysClient::new(s).unwrap(), server)
    }

    const CONVERSATION: &str = r#"{"id":"c1","startTime":"2025-03-04T10:14:02.114Z","participants":[]}"#;

    #[tokio::test]
    async fn reauthenticates_once_on_401() {
        let unauthorized: Scripted =
            (401, vec![], r#"{"message":"Invalid login credentials","code":"bad.credentials","status":401}"#);
        let (c, s) = scripted(vec![unauthorized.clone(), (200, vec![], CONVERSATION)]).await;
        c.get_conversation("c1").await.unwrap();
        assert_eq!(s.token_hits.load(Ordering::SeqCst), 2);
        let seen = s.seen.lock().unwrap().clone();
        assert_eq!(seen[0].1, "Bearer tok-1");
        assert_eq!(seen[1].1, "Bearer tok-2", "the second attempt carries the new token");
        assert_eq!(c.stats().reauthentications, 1);

        // A token refused twice is an error, not a loop.
        let (c, s) = scripted(vec![unauthorized]).await;
        let e = c.get_conversation("c1").await.unwrap_err();
        assert_eq!(e.status(), Some(401));
        assert_eq!(e.code(), Some("bad.credentials"));
        assert_eq!(s.token_hits.load(Ordering::SeqCst), 2);
        assert_eq!(s.api_hits.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn server_errors_retry_only_idempotent_calls() {
        let unavailable: Scripted = (503, vec![], r#"{"message":"down","code":"service.unavailable","status":503}"#);
        let (c, s) = scripted(vec![unavailable.clone(), unavailable.clone(), (200, vec![], CONVERSATION)]).await;
        c.get_conversation("c1").await.unwrap();
        assert_eq!(s.api_hits.load(Ordering::SeqCst), 3);
        assert_eq!(c.stats().retries, 2);

        let (c, s) = scripted(vec![unavailable.clone(), (200, vec![], r#"{"id":"ch"}"#)]).await;
        let e = c.create_channel().await.unwrap_err();
        assert_eq!(e.status(), Some(503));
        assert_eq!(e.correlation_id(), Some("cid-test"));
        assert_eq!(s.api_hits.load(Ordering::SeqCst), 1, "a non-idempotent POST is not repeated");

        let (c, s) = scripted(vec![(501, vec![], r#"{"message":"off","code":"not.implemented"}"#)]).await;
        assert_eq!(c.get_conversation("c1").await.unwrap_err().status(), Some(501));
        assert_eq!(s.api_hits.load(Ordering::SeqCst), 1, "501 is never retried");

        // The attempt budget bounds an endless outage.
        let (c, s) = scripted(vec![unavailable]).await;
        assert!(c.get_conversation("c1").await.unwrap_err().is_retryable());
        assert_eq!(s.api_hits.load(Ordering::SeqCst), 4);
    }

    #[tokio::test]
    async fn rate_limit_waits_for_retry_after() {
        let limited: Scripted = (
            429,
            vec![("retry-after", "1")],
            r#"{"message":"Rate limit exceeded","code":"too.many.requests.retry.after","status":429}"#,
        );
        let (c, s) = scripted(vec![limited, (200, vec![], r#"{"entities":[]}"#)]).await;
        let started = Instant::now();
        c.create_channel().await.ok();
        assert!(started.elapsed() >= Duration::from_millis(950), "{:?}", started.elapsed());
        assert_eq!(s.api_hits.load(Ordering::SeqCst), 2, "429 is retried even for POST");
        let st = c.stats();
        assert_eq!((st.responses_429, st.retries), (1, 1));
        assert_eq!(st.retry_wait, Duration::from_secs(1));

        // Asked to wait beyond the cap: fail at once with RateLimited.
        let (c, s) = scripted(vec![(429, vec![("retry-after", "3600")], "{}")]).await;
        let e = c.get_conversation("c1").await.unwrap_err();
        assert!(matches!(e, GenesysError::RateLimited { retry_after: Some(d), .. } if d == Duration::from_secs(3600)));
        assert_eq!(s.api_hits.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn forbidden_names_the_permission_and_malformed_bodies_carry_the_correlation_id() {
        let (c, _) = scripted(vec![(
            403,
            vec![],
            r#"{"message":"You are missing the following permission(s): analytics:agentCopilotAggregate:view","code":"missing.permissions","status":403}"#,
        )])
        .await;
        let q = CopilotAggregationQuery {
            interval: "a/b".into(),
            metrics: vec!["nDistinctSuggestions".into()],
            ..Default::default()
        };
        let e = c.copilot_aggregates(&q).await.unwrap_err();
        assert!(
            matches!(&e, GenesysError::Forbidden { permission: Some(p), .. } if p == "analytics:agentCopilotAggregate:view"),
            "{e:?}"
        );
        assert!(e.to_string().contains("Grant the permission analytics:agentCopilotAggregate:view"), "{e}");

        let (c, s) = scripted(vec![(200, vec![], r#"{"id":"c1","startTime":"#)]).await;
        let e = c.get_conversation("c1").await.unwrap_err();
        assert!(matches!(&e, GenesysError::Decode { .. }), "{e:?}");
        assert_eq!(e.correlation_id(), Some("cid-test"));
        assert_eq!(s.api_hits.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn slow_answers_time_out_and_are_retried_when_idempotent() {
        let (c, s) = scripted(vec![(200, vec![], CONVERSATION)]).await;
        *s.delay.lock().unwrap() = Duration::from_millis(800);
        let e = c.get_conversation("c1").await.unwrap_err();
        assert!(matches!(e, GenesysError::Timeout { .. }), "{e:?}");
        assert_eq!(s.api_hits.load(Ordering::SeqCst), 4);
        assert_eq!(c.stats().timeouts, 4);
    }

    #[tokio::test]
    async fn typed_calls_send_the_documented_requests() {
        let (c, s) = scripted(vec![(200, vec![], r#"{"entities":[{"id":"v2.a","state":"Permitted"}]}"#)]).await;
        let attrs = BTreeMap::from([("gcAssist.prompt".to_string(), "refund".to_string())]);
        c.patch_participant_attributes("c1", "p1", &attrs).await.unwrap();
        c.add_subscriptions("ch1", &["v2.a".to_string()]).await.unwrap();
        c.replace_subscriptions("ch1", &[]).await.unwrap();
        c.delete_subscriptions("ch1").await.unwrap();
        c.list_channels().await.unwrap();
        let user_token = SecretString::from("agent-token");
        c.user_me(&user_token).await.ok();
        c.copilot_job_results("j1", Some("next page")).await.unwrap();
        let seen = s.seen.lock().unwrap().clone();
        let calls: Vec<(&str, &str)> = seen.iter().map(|(r, _, b)| (r.as_str(), b.as_str())).collect();
        assert_eq!(
            calls,
            vec![
                (
                    "PATCH /api/v2/conversations/c1/participants/p1/attributes",
                    r#"{"attributes":{"gcAssist.prompt":"refund"}}"#
                ),
                ("POST /api/v2/notifications/channels/ch1/subscriptions?ignoreErrors=false", r#"[{"id":"v2.a"}]"#),
                ("PUT /api/v2/notifications/channels/ch1/subscriptions?ignoreErrors=false", "[]"),
                ("DELETE /api/v2/notifications/channels/ch1/subscriptions", ""),
                ("GET /api/v2/notifications/channels?includechannels=oauthclient", ""),
                ("GET /api/v2/users/me", ""),
                ("GET /api/v2/analytics/agentcopilots/aggregates/jobs/j1/results?cursor=next+page", ""),
            ]
        );
        assert_eq!(seen[5].1, "Bearer agent-token", "users/me carries the agent's token, not ours");
        assert!(seen[..5].iter().all(|(_, auth, _)| auth == "Bearer tok-1"));
    }
}
