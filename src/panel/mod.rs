//! The agent's prompt panel: the page Genesys Cloud opens as an Interaction Widget beside
//! every interaction, the agent's sign-in, the live prompt stream, and engagement intake.
//!
//! # How it fits together
//!
//! 1. Genesys loads `/panel?conversationId={{gcConversationId}}&gcHostOrigin={{gcHostOrigin}}&gcTargetEnv={{gcTargetEnv}}&lang={{gcLangTag}}`
//!    in an iframe. The page (plain HTML, CSS and JavaScript, compiled into the binary by
//!    [`assets`]) asks `GET /panel/config` for the OAuth client id and the login host.
//! 2. Sign-in: the page sends the agent through the **implicit grant** on
//!    `{login}/oauth/authorize` and gets the agent's Genesys token back in the URL fragment.
//!    It exchanges that token at `POST /panel/session` for a gc-assist session
//!    ([`PanelAuth::sign_in`]): `GET /api/v2/users/me` with the agent's token says who it is;
//!    `GET /api/v2/conversations/{id}` with the service's own client credentials says
//!    whether that user is a participant with purpose `agent`. Only then is a session issued,
//!    scoped to that one (user, conversation). Bad or expired tokens get 401, anyone not the
//!    conversation's agent 403. Positive checks are cached briefly per token hash.
//! 3. Prompts: `GET /panel/conversations/{id}/stream` is server-sent events read with
//!    `fetch()` (so the session travels in `Authorization: Bearer`, which `EventSource`
//!    cannot send, and no third-party cookie is needed inside the Genesys iframe). The page
//!    reconnects itself with `Last-Event-ID`; ids are unique across restarts
//!    ([`crate::injection::panel`]), and the page drops a prompt it already shows, so
//!    reconnects neither lose nor duplicate prompts.
//! 4. Engagements: `POST /panel/injections/{id}/engagements` with `viewed` (visible ≥ 1 s
//!    while the tab is visible), `clicked`, `dismissed` or `feedback` (`rating` ±1). Clicked
//!    and dismissed free the slot in the service (the authority on slots, CONTRACT §4);
//!    every one is stored, audited, and the first three are sent as webhooks. `shown` is
//!    recorded by the service itself when it puts a prompt on the stream.
//!
//! Sessions live in memory (only token hashes are kept) and do not survive a restart: the
//! page's next call gets 401 and it signs in again without the agent noticing (the Genesys
//! token is still in its tab). The page keeps the agent's Genesys token in the tab's
//! `sessionStorage` (gone when the tab closes) to renew its session a minute before the end;
//! the page's Content-Security-Policy admits only its own script, and prompt text is never
//! parsed as HTML, so no injected content can read it. Sign-in goes through a redirect
//! inside the widget's frame; the popup variant (`{{gcUsePopupAuth}}`) is not implemented.
//!
//! # Error answers (besides the API's common ones)
//!
//! | status | `error` | when |
//! |---|---|---|
//! | 401 | `unauthorized` | no, unknown or expired session; a Genesys token that `users/me` refuses |
//! | 403 | `forbidden` | the user is not an agent participant of the conversation; a session for another conversation |
//! | 403 | `sign_in_off` | `panel.oauth_client_id` is not configured, or no Genesys client |
//! | 400 | `region_mismatch` | the widget runs in another Genesys region than `genesys.region` |
//! | 502 | `genesys_unavailable` | Genesys could not be asked (the page retries) |

pub mod assets;
mod handlers;
pub mod session;

use std::collections::HashMap;
use std::sync::Mutex;

use secrecy::SecretString;
use thiserror::Error;
use uuid::Uuid;

pub use handlers::routes;
pub use session::{Scope, SessionError, Sessions, ValidationCache};

use crate::config::PanelConfig;
use crate::genesys::region::Hosts;
use crate::genesys::GenesysClient;

/// How many injections' `viewed` events are remembered to drop repeats.
const VIEWED_MEMORY: usize = 50_000;

/// Why a panel request was refused.
#[derive(Debug, Error)]
pub enum PanelError {
    #[error(
        "panel sign-in is off: set panel.oauth_client_id (and Genesys credentials) in the service's configuration"
    )]
    SignInOff,
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    RegionMismatch(String),
    #[error("Genesys Cloud could not be asked ({0}); try again shortly")]
    Upstream(String),
    #[error(transparent)]
    Session(#[from] SessionError),
}

/// A new session, as answered to the page.
#[derive(Debug, Clone)]
pub struct SignedIn {
    /// The session token (shown once; only its hash is kept).
    pub token: String,
    pub expires_at_ms: i64,
    pub scope: Scope,
}

/// Panel sign-in state: configuration, the Genesys client that checks agents, sessions,
/// the validation cache, and the `viewed` de-duplication memory.
pub struct PanelAuth {
    oauth_client_id: String,
    /// `{login}/oauth/authorize`, when sign-in is on.
    authorize_url: Option<String>,
    /// The origin of the Genesys UI of the configured region, when known (the check against
    /// the widget's `gcHostOrigin`); None with an explicit `login_base`.
    apps_origin: Option<String>,
    genesys: Option<GenesysClient>,
    sessions: Sessions,
    cache: ValidationCache,
    viewed: Mutex<HashMap<Uuid, i64>>,
}

impl std::fmt::Debug for PanelAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PanelAuth")
            .field("oauth_client_id", &self.oauth_client_id)
            .field("authorize_url", &self.authorize_url)
            .finish_non_exhaustive()
    }
}

impl Default for PanelAuth {
    fn default() -> PanelAuth {
        PanelAuth::disabled()
    }
}

fn origin_of(url: &str) -> Option<String> {
    let u = url::Url::parse(url).ok()?;
    Some(u.origin().ascii_serialization()).filter(|o| o != "null")
}

impl PanelAuth {
    /// Sign-in off: the page loads and says so; every session call answers 403.
    pub fn disabled() -> PanelAuth {
        PanelAuth {
            oauth_client_id: String::new(),
            authorize_url: None,
            apps_origin: None,
            genesys: None,
            sessions: Sessions::new(900_000),
            cache: ValidationCache::new(60_000),
            viewed: Mutex::new(HashMap::new()),
        }
    }

    /// From `[panel]`, the hosts of `genesys.region`, and the client that checks
    /// conversations (sign-in is off without one).
    pub fn new(cfg: &PanelConfig, hosts: &Hosts, genesys: Option<GenesysClient>) -> PanelAuth {
        let override_base = cfg.login_base.trim().trim_end_matches('/');
        let (login, apps_origin) = if override_base.is_empty() {
            (hosts.login.as_str().trim_end_matches('/').to_string(), origin_of(hosts.apps.as_str()))
        } else {
            (override_base.to_string(), None)
        };
        let client_id = cfg.oauth_client_id.trim().to_string();
        let on = !client_id.is_empty() && genesys.is_some();
        PanelAuth {
            authorize_url: on.then(|| format!("{login}/oauth/authorize")),
            oauth_client_id: client_id,
            apps_origin,
            genesys,
            sessions: Sessions::new(i64::try_from(cfg.session_ttl_secs.saturating_mul(1000)).unwrap_or(i64::MAX)),
            cache: ValidationCache::new(
                i64::try_from(cfg.validation_cache_secs.saturating_mul(1000)).unwrap_or(i64::MAX),
            ),
            viewed: Mutex::new(HashMap::new()),
        }
    }

    /// Whether agents can sign in.
    pub fn is_on(&self) -> bool {
        self.authorize_url.is_some()
    }

    /// What the page needs to start the implicit grant, after checking that the widget runs
    /// in the region this service is configured for (`gcHostOrigin`, when given).
    pub fn page_config(&self, gc_host_origin: Option<&str>) -> Result<serde_json::Value, PanelError> {
        if let (Some(expected), Some(given)) = (&self.apps_origin, gc_host_origin.filter(|s| !s.trim().is_empty())) {
            let given_origin = origin_of(given.trim()).unwrap_or_else(|| given.trim().to_string());
            if &given_origin != expected {
                return Err(PanelError::RegionMismatch(format!(
                    "this gc-assist is set up for the Genesys Cloud UI at {expected}, but the widget runs in {given_origin}; set genesys.region to that region"
                )));
            }
        }
        Ok(serde_json::json!({
            "signIn": self.is_on(),
            "oauthClientId": self.is_on().then_some(self.oauth_client_id.as_str()),
            "authorizeUrl": self.authorize_url,
            "sessionTtlSecs": self.sessions.ttl_ms() / 1000,
        }))
    }

    /// Exchanges an agent's Genesys token for a session on `conversation_id` (see the
    /// module docs for the checks).
    pub async fn sign_in(
        &self,
        agent_token: &str,
        conversation_id: Uuid,
        now_ms: i64,
        rng: &mut (dyn rand::RngCore + Send),
    ) -> Result<SignedIn, PanelError> {
        let Some(client) = self.genesys.as_ref().filter(|_| self.is_on()) else {
            return Err(PanelError::SignInOff);
        };
        let scope = match self.cache.get(agent_token, conversation_id, now_ms) {
            Some(s) => s,
            None => {
                let s = validate(client, agent_token, conversation_id).await?;
                self.cache.put(agent_token, s.clone(), now_ms);
                s
            }
        };
        let (token, expires_at_ms) = self.sessions.issue(scope.clone(), now_ms, rng);
        Ok(SignedIn { token, expires_at_ms, scope })
    }

    /// The scope of a session token.
    pub fn session(&self, token: &str, now_ms: i64) -> Result<Scope, PanelError> {
        Ok(self.sessions.check(token, now_ms)?)
    }

    /// Milliseconds until the session `token` ends (0 if it is not live).
    pub fn session_left_ms(&self, token: &str, now_ms: i64) -> u64 {
        self.sessions.expires_at(token).map(|e| u64::try_from(e.saturating_sub(now_ms)).unwrap_or(0)).unwrap_or(0)
    }

    /// Who may frame the page (CSP `frame-ancestors`): the Genesys Cloud UI of the
    /// configured region; any origin when the login host is overridden (emulator, tests),
    /// since the UI's origin is then unknown.
    pub fn frame_ancestors(&self) -> String {
        match &self.apps_origin {
            Some(o) => format!("'self' {o}"),
            None => "*".to_string(),
        }
    }

    /// True the first time `injection_id` is reported viewed (a reloaded page reports again;
    /// one view per injection is what adoption counts).
    pub fn first_view(&self, injection_id: Uuid, now_ms: i64) -> bool {
        let mut seen = self.viewed.lock().unwrap_or_else(|p| p.into_inner());
        if seen.len() >= VIEWED_MEMORY {
            // Forget the older half; a prompt lives at most a minute on screen.
            let mut ats: Vec<i64> = seen.values().copied().collect();
            ats.sort_unstable();
            let cut = ats[ats.len() / 2];
            seen.retain(|_, at| *at > cut);
        }
        seen.insert(injection_id, now_ms).is_none()
    }

    /// Forgets a `viewed` report whose recording failed, so the page's retry counts.
    pub fn unview(&self, injection_id: Uuid) {
        self.viewed.lock().unwrap_or_else(|p| p.into_inner()).remove(&injection_id);
    }
}

/// `users/me` with the agent's token, then the conversation's participants with the
/// service's own credentials.
async fn validate(client: &GenesysClient, agent_token: &str, conversation_id: Uuid) -> Result<Scope, PanelError> {
    let secret = SecretString::from(agent_token.to_string());
    let me = match client.user_me(&secret).await {
        Ok(me) => me,
        Err(e) => {
            return Err(match e.status() {
                Some(400 | 401 | 403) => PanelError::Unauthorized(
                    "Genesys Cloud does not accept this agent token (expired, revoked, or not a user's token); sign in again"
                        .into(),
                ),
                _ => PanelError::Upstream(e.to_string()),
            })
        }
    };
    if me.id.trim().is_empty() {
        return Err(PanelError::Unauthorized("Genesys Cloud returned no user id for this token".into()));
    }
    let not_agent = || {
        PanelError::Forbidden(format!(
            "you are not the agent on conversation {conversation_id}; the panel shows prompts only to that conversation's agent"
        ))
    };
    let conv = match client.get_conversation(&conversation_id.to_string()).await {
        Ok(c) => c,
        Err(e) if e.is_not_found() => return Err(not_agent()),
        Err(e) => return Err(PanelError::Upstream(e.to_string())),
    };
    let is_agent = conv.participants.iter().any(|p| {
        p.purpose.as_deref().is_some_and(|x| x.eq_ignore_ascii_case("agent")) && p.user_id.as_deref() == Some(&me.id)
    });
    if !is_agent {
        return Err(not_agent());
    }
    Ok(Scope { user_id: me.id, user_name: me.name, conversation_id })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn viewed_is_reported_once() {
        let p = PanelAuth::disabled();
        let id = Uuid::from_u128(9);
        assert!(p.first_view(id, 0));
        assert!(!p.first_view(id, 10));
        p.unview(id);
        assert!(p.first_view(id, 20));
    }

    #[test]
    fn region_check_uses_the_apps_origin() {
        let hosts = crate::genesys::region::resolve("mypurecloud.ie").unwrap();
        let cfg = crate::config::Config::defaults().panel;
        let p = PanelAuth::new(&cfg, &hosts, None);
        assert!(!p.is_on(), "no client id and no Genesys client: sign-in is off");
        assert!(p.page_config(Some("https://apps.mypurecloud.ie")).is_ok());
        assert!(p.page_config(None).is_ok());
        assert!(matches!(p.page_config(Some("https://apps.mypurecloud.com")), Err(PanelError::RegionMismatch(_))));
        let mut own = cfg.clone();
        own.login_base = "http://127.0.0.1:9".into();
        assert!(PanelAuth::new(&own, &hosts, None).page_config(Some("https://elsewhere.example")).is_ok());
    }
}
