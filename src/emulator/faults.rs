//! Scriptable faults: what a test or a person can make the emulator do wrong, from the
//! Rust handle ([`Faults`]) or `POST /__emulator/faults` ([`FaultSpec`]).
//!
//! Counted faults ("the next n calls") are consumed by the gateway in request order, so
//! a test that arms `fail_next(2, 503)` knows exactly which two calls fail.

use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::error::ApiError;
use super::notifications;
use super::state::{lock, State};

/// Armed faults.
#[derive(Debug, Default)]
pub(crate) struct FaultState {
    token_rate_limit: u32,
    /// Queue of (remaining calls, status) for `fail_next`.
    fail_next: VecDeque<(u32, u16)>,
    rate_limit_next: u32,
    rate_limit_secs: u64,
    latency: Duration,
    malformed_next: u32,
    /// (path fragment, permission) pairs answered with 403.
    deny: Vec<(String, String)>,
}

/// A cheap handle on the emulator's faults; clones share state.
#[derive(Clone)]
pub struct Faults {
    pub(crate) state: Arc<State>,
}

impl fmt::Debug for Faults {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Faults").field(&*lock(&self.state.faults)).finish()
    }
}

impl Faults {
    /// Every token issued so far answers 401 `bad.credentials` (new tokens work).
    pub fn revoke_tokens(&self) {
        lock(&self.state.tokens).revoke_all();
    }

    /// Every token issued so far is expired: 401 `credentials.expired` (new tokens work).
    pub fn expire_tokens(&self) {
        lock(&self.state.tokens).expire_all();
    }

    /// The next `n` calls to `/oauth/token` get 400 `invalid_request` "rate limit exceeded; retry later".
    pub fn token_rate_limit(&self, n: u32) {
        lock(&self.state.faults).token_rate_limit = n;
    }

    /// The next `n` `/api/v2` calls get `status` with its Genesys `ErrorBody`.
    pub fn fail_next(&self, n: u32, status: u16) {
        if n > 0 {
            lock(&self.state.faults).fail_next.push_back((n, status));
        }
    }

    /// The next `n` `/api/v2` calls get 429 with `Retry-After: retry_after_secs`.
    pub fn rate_limit_next(&self, n: u32, retry_after_secs: u64) {
        let mut f = lock(&self.state.faults);
        f.rate_limit_next = n;
        f.rate_limit_secs = retry_after_secs;
    }

    /// Delay every `/oauth/token` and `/api/v2` answer by `d`.
    pub fn latency(&self, d: Duration) {
        lock(&self.state.faults).latency = d;
    }

    /// The next `n` successful `/api/v2` answers that have a body carry truncated JSON.
    pub fn malformed_next(&self, n: u32) {
        lock(&self.state.faults).malformed_next = n;
    }

    /// `/api/v2` calls whose path contains `path_contains` get 403 `missing.permissions`
    /// naming `permission`.
    pub fn deny(&self, path_contains: &str, permission: &str) {
        lock(&self.state.faults).deny.push((path_contains.to_string(), permission.to_string()));
    }

    /// Close every notification websocket now, without a closing handshake.
    pub fn drop_sockets(&self) {
        notifications::drop_all_sockets(&self.state);
    }

    /// Send `v2.system.socket_closing` on every websocket and close them `after` later,
    /// like Genesys maintenance.
    pub fn close_sockets(&self, after: Duration) {
        notifications::close_all_sockets(&self.state, after);
    }

    /// Silence every notification websocket (no events, heartbeats or pongs) while keeping
    /// the connection open, like a half-open TCP connection. Returns how many.
    pub fn mute_sockets(&self) -> usize {
        notifications::mute_all_sockets(&self.state)
    }

    /// Expire every notification channel now (as at the end of its lifetime): sockets are
    /// closed, and the channel answers 404 from then on. Returns how many channels went.
    pub fn expire_channels(&self) -> usize {
        notifications::expire_all_channels(&self.state)
    }

    /// The next `lines` replayed lines (across running replays) are sent at once instead of
    /// at their recorded times.
    pub fn burst(&self, lines: u32) {
        super::replay::burst(&self.state, lines);
    }

    /// Disarm every fault (revoked tokens stay revoked: they are state, not a mode).
    pub fn clear(&self) {
        *lock(&self.state.faults) = FaultState::default();
    }
}

/// Consume one token-endpoint rate-limit fault.
pub(crate) fn take_token_rate_limit(state: &State) -> bool {
    let mut f = lock(&state.faults);
    if f.token_rate_limit > 0 {
        f.token_rate_limit -= 1;
        true
    } else {
        false
    }
}

/// Consume one `fail_next` fault.
pub(crate) fn take_failure(state: &State) -> Option<ApiError> {
    let mut f = lock(&state.faults);
    let (remaining, status) = f.fail_next.front_mut()?;
    let err = ApiError::for_status(*status);
    *remaining -= 1;
    if *remaining == 0 {
        f.fail_next.pop_front();
    }
    Some(err)
}

/// Consume one `rate_limit_next` fault.
pub(crate) fn take_rate_limit(state: &State) -> Option<ApiError> {
    let mut f = lock(&state.faults);
    if f.rate_limit_next == 0 {
        return None;
    }
    f.rate_limit_next -= 1;
    Some(ApiError::rate_limited(f.rate_limit_secs, u64::from(state.requests_per_minute)))
}

/// Consume one `malformed_next` fault.
pub(crate) fn take_malformed(state: &State) -> bool {
    let mut f = lock(&state.faults);
    if f.malformed_next > 0 {
        f.malformed_next -= 1;
        true
    } else {
        false
    }
}

pub(crate) fn latency(state: &State) -> Duration {
    lock(&state.faults).latency
}

/// The 403 for a denied path, if any rule matches.
pub(crate) fn denied(state: &State, path: &str) -> Option<ApiError> {
    let f = lock(&state.faults);
    let (_, permission) = f.deny.iter().find(|(fragment, _)| path.contains(fragment.as_str()))?;
    let e = ApiError::new(
        403,
        "missing.permissions",
        format!("Unable to perform the requested action. You are missing the following permission(s): [{permission}]"),
    )
    .with_template(
        "Unable to perform the requested action. You are missing the following permission(s): {permissions}",
        vec![("permissions".into(), format!("[{permission}]"))],
    );
    Some(e)
}

/// `POST /__emulator/faults` body: any combination of these, applied with `clear` first.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FaultSpec {
    #[serde(default)]
    pub clear: bool,
    #[serde(default)]
    pub revoke_tokens: bool,
    #[serde(default)]
    pub expire_tokens: bool,
    pub token_rate_limit: Option<Count>,
    pub fail_next: Option<FailNext>,
    pub rate_limit_next: Option<RateLimitNext>,
    pub latency: Option<Latency>,
    pub malformed_next: Option<Count>,
    pub deny: Option<Deny>,
    #[serde(default)]
    pub drop_sockets: bool,
    pub close_sockets: Option<CloseSockets>,
    #[serde(default)]
    pub expire_channels: bool,
    #[serde(default)]
    pub mute_sockets: bool,
    pub burst: Option<Burst>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Count {
    pub count: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FailNext {
    pub count: u32,
    pub status: u16,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RateLimitNext {
    pub count: u32,
    pub retry_after_secs: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Latency {
    pub ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Deny {
    pub path_contains: String,
    pub permission: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Burst {
    pub lines: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CloseSockets {
    pub after_ms: u64,
}

impl FaultSpec {
    /// Check values a person could get wrong, with a message saying what to fix.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(f) = &self.fail_next {
            if !(400..=599).contains(&f.status) {
                return Err(format!("failNext.status must be an HTTP error status 400-599, not {}", f.status));
            }
        }
        Ok(())
    }

    pub fn apply(&self, faults: &Faults) {
        if self.clear {
            faults.clear();
        }
        if self.revoke_tokens {
            faults.revoke_tokens();
        }
        if self.expire_tokens {
            faults.expire_tokens();
        }
        if let Some(c) = &self.token_rate_limit {
            faults.token_rate_limit(c.count);
        }
        if let Some(f) = &self.fail_next {
            faults.fail_next(f.count, f.status);
        }
        if let Some(r) = &self.rate_limit_next {
            faults.rate_limit_next(r.count, r.retry_after_secs);
        }
        if let Some(l) = &self.latency {
            faults.latency(Duration::from_millis(l.ms));
        }
        if let Some(c) = &self.malformed_next {
            faults.malformed_next(c.count);
        }
        if let Some(d) = &self.deny {
            faults.deny(&d.path_contains, &d.permission);
        }
        if self.drop_sockets {
            faults.drop_sockets();
        }
        if let Some(c) = &self.close_sockets {
            faults.close_sockets(Duration::from_millis(c.after_ms));
        }
        if self.expire_channels {
            faults.expire_channels();
        }
        if self.mute_sockets {
            faults.mute_sockets();
        }
        if let Some(b) = &self.burst {
            faults.burst(b.lines);
        }
    }
}

/// What is armed, for `GET /__emulator/faults`.
pub(crate) fn describe(state: &State) -> serde_json::Value {
    let f = lock(&state.faults);
    serde_json::json!({
        "tokenRateLimit": f.token_rate_limit,
        "failNext": f.fail_next.iter().map(|(n, s)| serde_json::json!({"count": n, "status": s})).collect::<Vec<_>>(),
        "rateLimitNext": {"count": f.rate_limit_next, "retryAfterSecs": f.rate_limit_secs},
        "latencyMs": u64::try_from(f.latency.as_millis()).unwrap_or(u64::MAX),
        "malformedNext": f.malformed_next,
        "deny": f.deny.iter().map(|(p, perm)| serde_json::json!({"pathContains": p, "permission": perm})).collect::<Vec<_>>(),
    })
}
