//! OAuth on the emulator: the client-credentials token endpoint (genesys-api.md §2.1),
//! the token store behind bearer checks, `GET/HEAD/DELETE /api/v2/tokens/me` (§2.2) and
//! `GET /api/v2/users/me` (§2.3), and the implicit grant's `GET /oauth/authorize` (§9) for
//! the agent panel's sign-in.
//!
//! Tokens are opaque random strings, as in Genesys. A token is either a client's
//! (client credentials) or a user's (what an agent's widget would get through the implicit
//! grant; issued here by `issue_agent_token`), which is what decides whether `users/me`
//! has a user context.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State as AxState;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use base64::Engine;
use rand::RngCore;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::error::ApiError;
use super::state::{lock, State};

/// Who a token acts for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Principal {
    /// A client-credentials token of this OAuth client id.
    Client(String),
    /// A user token of this user id.
    User(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TokenStatus {
    Active,
    Revoked,
    Expired,
}

struct TokenRecord {
    principal: Principal,
    expires: Instant,
    status: TokenStatus,
}

/// Every token issued, by its value.
#[derive(Default)]
pub struct TokenStore {
    tokens: HashMap<String, TokenRecord>,
}

impl fmt::Debug for TokenStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Token values are bearer credentials: never print them.
        f.debug_struct("TokenStore").field("tokens", &self.tokens.len()).finish()
    }
}

impl TokenStore {
    /// Issue a new opaque token for `principal`, valid for `ttl` from `now`.
    pub fn issue(&mut self, principal: Principal, ttl: Duration, now: Instant) -> String {
        let mut bytes = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut bytes);
        let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        // A lifetime too long to represent simply never ends.
        let expires = now.checked_add(ttl).unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 86_400));
        self.tokens.insert(token.clone(), TokenRecord { principal, expires, status: TokenStatus::Active });
        token
    }

    /// Who `token` acts for, or the 401 Genesys answers.
    pub fn check(&self, token: &str, now: Instant) -> Result<Principal, ApiError> {
        let Some(rec) = self.tokens.get(token) else {
            return Err(bad_credentials());
        };
        match rec.status {
            TokenStatus::Revoked => Err(bad_credentials()),
            TokenStatus::Expired => Err(expired()),
            TokenStatus::Active if now >= rec.expires => Err(expired()),
            TokenStatus::Active => Ok(rec.principal.clone()),
        }
    }

    /// Seconds left on a token (for `tokens/me`).
    pub fn remaining(&self, token: &str, now: Instant) -> Option<Duration> {
        self.tokens.get(token).map(|r| r.expires.saturating_duration_since(now))
    }

    pub fn revoke(&mut self, token: &str) {
        if let Some(r) = self.tokens.get_mut(token) {
            r.status = TokenStatus::Revoked;
        }
    }

    pub fn revoke_all(&mut self) {
        self.tokens.values_mut().for_each(|r| r.status = TokenStatus::Revoked);
    }

    pub fn expire_all(&mut self) {
        self.tokens
            .values_mut()
            .filter(|r| r.status == TokenStatus::Active)
            .for_each(|r| r.status = TokenStatus::Expired);
    }
}

fn bad_credentials() -> ApiError {
    ApiError::new(401, "bad.credentials", "Invalid login credentials.")
}

fn expired() -> ApiError {
    ApiError::new(401, "credentials.expired", "The access token has expired. Request a new token.")
}

/// The authenticated caller of an `/api/v2` request, put in the request by the gateway.
#[derive(Clone)]
pub struct Caller {
    pub token: String,
    pub principal: Principal,
}

impl fmt::Debug for Caller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Caller").field("token", &"[redacted]").field("principal", &self.principal).finish()
    }
}

/// Read the bearer token of a request, or the 401 for a missing one.
pub fn bearer(headers: &HeaderMap) -> Result<String, ApiError> {
    let missing = || {
        ApiError::new(
            401,
            "authentication.required",
            "No authentication bearer token specified in authorization header.",
        )
    };
    let value = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).ok_or_else(missing)?;
    let (scheme, token) = value.trim().split_once(' ').ok_or_else(missing)?;
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
        return Err(missing());
    }
    Ok(token.to_string())
}

/// `AuthErrorResponse`: three string fields with the same description twice.
fn auth_error(status: StatusCode, error: &str, description: &str) -> Response {
    (status, Json(json!({"error": error, "description": description, "error_description": description})))
        .into_response()
}

/// `POST /oauth/token`.
pub async fn token(AxState(state): AxState<Arc<State>>, headers: HeaderMap, body: Bytes) -> Response {
    if super::faults::take_token_rate_limit(&state) {
        return auth_error(StatusCode::BAD_REQUEST, "invalid_request", "rate limit exceeded; retry later");
    }
    let form: HashMap<String, String> = url::form_urlencoded::parse(&body).into_owned().collect();
    let (id, secret) = match basic_credentials(&headers) {
        Some(pair) => pair,
        None => match (form.get("client_id"), form.get("client_secret")) {
            (Some(i), Some(s)) => (i.clone(), s.clone()),
            _ => return auth_error(StatusCode::UNAUTHORIZED, "invalid_client", "client authentication is required"),
        },
    };
    if id != state.client_id || secret != state.client_secret {
        return auth_error(StatusCode::UNAUTHORIZED, "invalid_client", "authentication failed");
    }
    match form.get("grant_type").map(String::as_str) {
        Some("client_credentials") => {}
        Some(other) => {
            return auth_error(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                &format!("grant type {other:?} is not supported for this client; use client_credentials"),
            )
        }
        None => return auth_error(StatusCode::BAD_REQUEST, "unsupported_grant_type", "grant_type is required"),
    }
    let ttl = state.token_ttl;
    let access_token = lock(&state.tokens).issue(Principal::Client(id), ttl, Instant::now());
    let mut resp = Json(json!({"access_token": access_token, "token_type": "bearer", "expires_in": ttl.as_secs()}))
        .into_response();
    resp.headers_mut().insert(header::CACHE_CONTROL, header::HeaderValue::from_static("no-store"));
    resp
}

/// `GET /oauth/authorize?response_type=token&client_id=..&redirect_uri=..&state=..`: the
/// implicit grant, as the agent panel uses it. Without `login_as` it answers a sign-in page
/// listing the emulator's agents (one link each, `data-user-id` set), standing in for the
/// Genesys login page; with `login_as=<user id>` (what those links add) it redirects to
/// `redirect_uri#access_token=..&token_type=bearer&expires_in=..&state=..` with a user token
/// for that user. Any client id is accepted (the emulator has no OAuth client registry);
/// the redirect URI must be an http(s) URL without a fragment.
pub async fn authorize(
    AxState(state): AxState<Arc<State>>,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
) -> Response {
    let raw = query.unwrap_or_default();
    let q: HashMap<String, String> = url::form_urlencoded::parse(raw.as_bytes()).into_owned().collect();
    let bad = |msg: &str| (StatusCode::BAD_REQUEST, format!("{msg}\n")).into_response();
    let Some(redirect) = q.get("redirect_uri").and_then(|r| url::Url::parse(r).ok()) else {
        return bad("redirect_uri is required and must be an absolute URL");
    };
    if !matches!(redirect.scheme(), "http" | "https") || redirect.fragment().is_some() {
        return bad("redirect_uri must be an http(s) URL without a fragment");
    }
    let mut fragment = url::form_urlencoded::Serializer::new(String::new());
    if q.get("response_type").map(String::as_str) != Some("token") {
        fragment.append_pair("error", "unsupported_response_type");
        fragment.append_pair(
            "error_description",
            "this authorize endpoint serves the implicit grant (response_type=token)",
        );
    } else if q.get("client_id").is_none_or(|c| c.trim().is_empty()) {
        fragment.append_pair("error", "invalid_request");
        fragment.append_pair("error_description", "client_id is required");
    } else if let Some(user) = q.get("login_as") {
        if uuid::Uuid::parse_str(user).is_err() {
            return bad("login_as must be a user id (UUID)");
        }
        let ttl = state.token_ttl;
        let token = lock(&state.tokens).issue(Principal::User(user.clone()), ttl, Instant::now());
        fragment.append_pair("access_token", &token);
        fragment.append_pair("token_type", "bearer");
        fragment.append_pair("expires_in", &ttl.as_secs().to_string());
    } else {
        return sign_in_page(&state, &raw);
    }
    if let Some(st) = q.get("state") {
        fragment.append_pair("state", st);
    }
    let mut to = redirect;
    to.set_fragment(Some(&fragment.finish()));
    let mut resp = StatusCode::FOUND.into_response();
    if let Ok(v) = header::HeaderValue::from_str(to.as_str()) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp.headers_mut().insert(header::CACHE_CONTROL, header::HeaderValue::from_static("no-store"));
    resp
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;").replace('\'', "&#39;")
}

/// The emulator's stand-in for the Genesys login page: pick the agent to sign in as.
fn sign_in_page(state: &State, raw_query: &str) -> Response {
    let mut seen = std::collections::HashSet::new();
    let mut items = String::new();
    for info in lock(&state.conversations).infos() {
        if !seen.insert(info.agent_user_id.clone()) {
            continue;
        }
        let mut q = url::form_urlencoded::Serializer::new(raw_query.to_string());
        q.append_pair("login_as", &info.agent_user_id);
        items.push_str(&format!(
            "<li><a data-user-id=\"{id}\" href=\"/oauth/authorize?{q}\">{name}</a> <small>{id}</small></li>\n",
            id = html_escape(&info.agent_user_id),
            q = html_escape(&q.finish()),
            name = html_escape(&info.agent_name),
        ));
    }
    let body = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Sign in (Genesys Cloud emulator)</title></head>\
         <body><h1>Sign in as an agent</h1><p>The Genesys Cloud emulator stands in for the login page: choose the agent.</p>\
         <ul>{items}</ul></body></html>"
    );
    let mut resp = axum::response::Html(body).into_response();
    resp.headers_mut().insert(header::CACHE_CONTROL, header::HeaderValue::from_static("no-store"));
    resp
}

fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD.decode(encoded.trim()).ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (id, secret) = text.split_once(':')?;
    Some((id.to_string(), secret.to_string()))
}

/// A stable UUID derived from a name (for the OAuth client's id).
pub fn stable_uuid(name: &str) -> String {
    let digest = Sha256::digest(name.as_bytes());
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_random_bytes(bytes).into_uuid().to_string()
}

fn org(state: &State) -> Value {
    json!({"id": state.catalog.organization_id, "name": state.catalog.organization_name})
}

/// `GET /api/v2/tokens/me` (HEAD is answered from it without the body).
pub async fn tokens_me(AxState(state): AxState<Arc<State>>, Extension(caller): Extension<Caller>) -> Response {
    let remaining = lock(&state.tokens).remaining(&caller.token, Instant::now()).unwrap_or_default();
    let now = chrono::Utc::now();
    let idles = i64::try_from(remaining.as_secs())
        .ok()
        .and_then(chrono::TimeDelta::try_seconds)
        .and_then(|d| now.checked_add_signed(d))
        .unwrap_or(chrono::DateTime::<chrono::Utc>::MAX_UTC);
    let (client, scope) = match &caller.principal {
        Principal::Client(id) => (
            json!({"id": stable_uuid(id), "name": id, "authorizedGrantType": "CLIENT-CREDENTIALS", "state": "active",
                   "organization": org(&state)}),
            json!([]),
        ),
        Principal::User(_) => (
            json!({"id": stable_uuid("gc-assist-panel"), "name": "gc-assist panel", "authorizedGrantType": "TOKEN",
                   "scope": ["conversations", "users:readonly"], "state": "active", "organization": org(&state)}),
            json!(["conversations", "users:readonly"]),
        ),
    };
    Json(json!({
        "organization": org(&state),
        "homeOrganization": org(&state),
        "authorizedScope": scope,
        "dateTokenIdles": idles.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "OAuthClient": client,
    }))
    .into_response()
}

/// `DELETE /api/v2/tokens/me`: revoke the caller's token.
pub async fn delete_token(AxState(state): AxState<Arc<State>>, Extension(caller): Extension<Caller>) -> StatusCode {
    lock(&state.tokens).revoke(&caller.token);
    StatusCode::NO_CONTENT
}

/// `GET /api/v2/users/me`.
pub async fn users_me(
    AxState(state): AxState<Arc<State>>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<Value>, ApiError> {
    let Principal::User(user_id) = &caller.principal else {
        return Err(ApiError::bad_request(
            "This request requires a user context. Client credentials cannot be used for requests to this resource.",
        ));
    };
    let name = state.catalog.agent_name(user_id).unwrap_or("Emulated Agent").to_string();
    let email = format!("{}@acme.example", ascii_slug(&name));
    let division = &state.catalog.division_id;
    Ok(Json(json!({
        "id": user_id,
        "name": name,
        "division": {"id": division, "name": "Home", "selfUri": format!("/api/v2/authorization/divisions/{division}")},
        "chat": {"jabberId": format!("{user_id}@{}.orgspan.com", state.catalog.organization_id)},
        "email": email,
        "primaryContactInfo": [{"address": email, "mediaType": "EMAIL", "type": "PRIMARY"}],
        "addresses": [],
        "state": "active",
        "title": "Customer Care Agent",
        "department": "Contact Center",
        "username": email,
        "version": 1,
        "languagePreference": "en-us",
        "selfUri": format!("/api/v2/users/{user_id}"),
    })))
}

/// `Léa Durand` → `lea.durand`: a plausible login name from a display name.
pub fn ascii_slug(name: &str) -> String {
    let mut out = String::new();
    for c in name.chars().flat_map(char::to_lowercase) {
        let mapped = match c {
            'à' | 'á' | 'â' | 'ã' | 'ä' | 'å' | 'ā' => "a",
            'ç' | 'ć' | 'č' => "c",
            'è' | 'é' | 'ê' | 'ë' | 'ē' | 'ę' => "e",
            'ì' | 'í' | 'î' | 'ï' => "i",
            'ñ' | 'ń' => "n",
            'ò' | 'ó' | 'ô' | 'õ' | 'ö' | 'ø' => "o",
            'ù' | 'ú' | 'û' | 'ü' => "u",
            'ý' | 'ÿ' => "y",
            'ß' => "ss",
            'æ' => "ae",
            'š' => "s",
            'ž' => "z",
            'ł' => "l",
            c if c.is_ascii_alphanumeric() => {
                out.push(c);
                continue;
            }
            _ => ".",
        };
        if mapped == "." && (out.is_empty() || out.ends_with('.')) {
            continue;
        }
        out.push_str(mapped);
    }
    let out = out.trim_end_matches('.').to_string();
    if out.is_empty() {
        "agent".into()
    } else {
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_lifecycle() {
        let now = Instant::now();
        let mut s = TokenStore::default();
        let t = s.issue(Principal::Client("c".into()), Duration::from_secs(10), now);
        assert_eq!(t.len(), 43);
        assert_eq!(s.check(&t, now), Ok(Principal::Client("c".into())));
        assert_eq!(s.check(&t, now + Duration::from_secs(10)).unwrap_err().code, "credentials.expired");
        assert_eq!(s.check("nope", now).unwrap_err().code, "bad.credentials");
        s.revoke_all();
        assert_eq!(s.check(&t, now).unwrap_err().code, "bad.credentials");
        let u = s.issue(Principal::User("u".into()), Duration::from_secs(10), now);
        s.expire_all();
        assert_eq!(s.check(&u, now).unwrap_err().code, "credentials.expired");
        assert!(!format!("{s:?}").contains(&u));
    }

    #[test]
    fn bearer_parsing() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer(&h).unwrap_err().code, "authentication.required");
        h.insert(header::AUTHORIZATION, "Basic abc".parse().unwrap());
        assert_eq!(bearer(&h).unwrap_err().code, "authentication.required");
        h.insert(header::AUTHORIZATION, "bearer  tok ".parse().unwrap());
        assert_eq!(bearer(&h).unwrap(), "tok");
    }

    #[test]
    fn slugs() {
        for (name, want) in [
            ("Léa Durand", "lea.durand"),
            ("Tomás Ortega", "tomas.ortega"),
            ("  ", "agent"),
            ("Kwame Mensah", "kwame.mensah"),
        ] {
            assert_eq!(ascii_slug(name), want);
        }
    }
}
