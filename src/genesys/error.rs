//! The one error type of the Genesys client: typed from Genesys `ErrorBody`s, each message
//! saying what to fix, with the correlation id Genesys support asks for.
//!
//! Nothing here ever holds a secret: errors are built from status codes, Genesys error
//! bodies and our own text, never from request headers or token responses.

use std::fmt;
use std::time::Duration;

use thiserror::Error;

use super::models::ErrorBody;

/// What went wrong talking to Genesys Cloud.
#[derive(Debug, Error)]
pub enum GenesysError {
    /// Genesys answered with an error status (other than 403 and 429, which have their
    /// own variants).
    #[error("Genesys Cloud answered {request} with {status}{code}: {message}{hint}{cid}",
        code = opt_paren(code.as_deref()), hint = hint_for(*status), cid = CidSuffix(correlation_id.as_deref()))]
    Api {
        status: u16,
        code: Option<String>,
        message: String,
        correlation_id: Option<String>,
        /// The call, e.g. `GET /api/v2/conversations/{id}`.
        request: String,
        /// The parsed error body, when Genesys sent one (for `messageParams`, `details`, …).
        body: Option<Box<ErrorBody>>,
    },

    /// The token endpoint refused us. `fix` says what to check.
    #[error("cannot get an OAuth token from {token_url}: {status_text}{error}{description}. {fix}",
        status_text = status.map(|s| format!("HTTP {s}")).unwrap_or_else(|| "no answer".to_string()),
        error = opt_prefixed(" ", error.as_deref()),
        description = opt_paren(description.as_deref()))]
    Auth { token_url: String, status: Option<u16>, error: Option<String>, description: Option<String>, fix: String },

    /// 403: the OAuth client's roles lack a permission.
    #[error("Genesys Cloud refused {request} (403{code}): {message}. {fix}{cid}",
        code = opt_prefixed(" ", code.as_deref()),
        fix = match permission {
            Some(p) => format!("Grant the permission {p} to a role of the OAuth client (Admin > Roles / Permissions)."),
            None => "Check the roles and divisions granted to the OAuth client.".to_string(),
        },
        cid = CidSuffix(correlation_id.as_deref()))]
    Forbidden {
        /// The missing permission(s), comma-separated, when the error body names them.
        permission: Option<String>,
        code: Option<String>,
        message: String,
        correlation_id: Option<String>,
        /// The call, e.g. `GET /api/v2/conversations/{id}`.
        request: String,
    },

    /// 429 (or the token endpoint's rate-limit answer) and the retry budget did not allow
    /// waiting any longer.
    #[error("rate limited by Genesys Cloud on {request}{after}: {message}. Lower genesys.requests_per_minute or ask Genesys support to raise the limit{cid}",
        after = retry_after.map(|d| format!(" (asked to wait {} s)", d.as_secs_f64())).unwrap_or_default(),
        cid = CidSuffix(correlation_id.as_deref()))]
    RateLimited {
        retry_after: Option<Duration>,
        /// The `limit.key` of the error body, e.g. `client.credentials.token.rate.per.minute`.
        limit_key: Option<String>,
        message: String,
        correlation_id: Option<String>,
        /// The call, e.g. `GET /api/v2/conversations/{id}`.
        request: String,
    },

    /// The request did not complete: connection refused, reset, TLS, DNS.
    #[error("cannot reach Genesys Cloud for {request}: {message}. Check the region setting and network access")]
    Transport { request: String, message: String },

    /// One attempt took longer than `genesys.request_timeout_ms`.
    #[error("Genesys Cloud did not answer {request} within {} ms (genesys.request_timeout_ms)", after.as_millis())]
    Timeout { request: String, after: Duration },

    /// A 2xx body that is not what the API documents.
    #[error("cannot decode the answer to {request} (HTTP {status}): {message}{cid}", cid = CidSuffix(correlation_id.as_deref()))]
    Decode { request: String, status: u16, message: String, correlation_id: Option<String> },

    /// The client settings are unusable.
    #[error("invalid Genesys client settings: {0}")]
    Config(String),
}

impl GenesysError {
    /// Whether trying the same call again later can succeed: rate limits, 5xx other than
    /// 501, timeouts and connection failures. Callers with their own retry loops (the
    /// webhook worker, the notifications reconnector) read this instead of matching text.
    pub fn is_retryable(&self) -> bool {
        match self {
            GenesysError::Api { status, .. } => *status >= 500 && *status != 501,
            GenesysError::RateLimited { .. } | GenesysError::Transport { .. } | GenesysError::Timeout { .. } => true,
            GenesysError::Auth { status, .. } => status.is_none_or(|s| s >= 500),
            GenesysError::Forbidden { .. } | GenesysError::Decode { .. } | GenesysError::Config(_) => false,
        }
    }

    /// The HTTP status behind the error, if there was an answer.
    pub fn status(&self) -> Option<u16> {
        match self {
            GenesysError::Api { status, .. } | GenesysError::Decode { status, .. } => Some(*status),
            GenesysError::Forbidden { .. } => Some(403),
            GenesysError::RateLimited { .. } => Some(429),
            GenesysError::Auth { status, .. } => *status,
            GenesysError::Transport { .. } | GenesysError::Timeout { .. } | GenesysError::Config(_) => None,
        }
    }

    /// The `ININ-Correlation-ID` (or `contextId`) of the failing answer: quote it to
    /// Genesys support.
    pub fn correlation_id(&self) -> Option<&str> {
        match self {
            GenesysError::Api { correlation_id, .. }
            | GenesysError::Forbidden { correlation_id, .. }
            | GenesysError::RateLimited { correlation_id, .. }
            | GenesysError::Decode { correlation_id, .. } => correlation_id.as_deref(),
            _ => None,
        }
    }

    /// The Genesys error `code` (`not.found`, `bad.request`, …), if any.
    pub fn code(&self) -> Option<&str> {
        match self {
            GenesysError::Api { code, .. } | GenesysError::Forbidden { code, .. } => code.as_deref(),
            GenesysError::Auth { error, .. } => error.as_deref(),
            _ => None,
        }
    }

    /// True for a 404 answer.
    pub fn is_not_found(&self) -> bool {
        self.status() == Some(404)
    }
}

fn opt_paren(s: Option<&str>) -> String {
    s.filter(|s| !s.is_empty()).map(|s| format!(" ({s})")).unwrap_or_default()
}

fn opt_prefixed(prefix: &str, s: Option<&str>) -> String {
    s.filter(|s| !s.is_empty()).map(|s| format!("{prefix}{s}")).unwrap_or_default()
}

/// Short advice for statuses whose fix is always the same.
fn hint_for(status: u16) -> &'static str {
    match status {
        401 => ". The access token was refused (expired, revoked, or issued in another region); for gc-assist's own client this persists after one re-authentication, so check that the OAuth client is still active",
        404 => ". Check the id, and that the OAuth client's divisions can see the object",
        501 => ". The feature is not enabled for this org",
        _ => "",
    }
}

/// ` (correlation id X)` when known.
struct CidSuffix<'a>(Option<&'a str>);

impl fmt::Display for CidSuffix<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(id) if !id.is_empty() => write!(f, " (correlation id {id})"),
            _ => Ok(()),
        }
    }
}

/// Whether `s` looks like a Genesys permission: `domain:entity:action`, e.g.
/// `conversation:communication:view` or `analytics:agentCopilotAggregate:*`.
pub(crate) fn looks_like_permission(s: &str) -> bool {
    let parts: Vec<&str> = s.split(':').collect();
    parts.len() == 3
        && parts.iter().all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '*'))
        && parts[0].chars().next().is_some_and(|c| c.is_ascii_alphabetic())
}

/// The permissions a 403 body names, from (in order of trust) `messageParams`, the
/// `message` text, then `details`. Comma-joined, without duplicates.
pub(crate) fn missing_permission(body: &ErrorBody) -> Option<String> {
    let mut found: Vec<String> = Vec::new();
    let push_from = |text: &str, found: &mut Vec<String>| {
        for token in
            text.split(|c: char| c.is_whitespace() || matches!(c, ',' | '[' | ']' | '(' | ')' | '"' | '\'' | ';'))
        {
            let token = token.trim_end_matches('.');
            if looks_like_permission(token) && !found.iter().any(|f| f == token) {
                found.push(token.to_string());
            }
        }
    };
    for value in body.message_params.values() {
        push_from(value, &mut found);
    }
    if found.is_empty() {
        if let Some(m) = &body.message {
            push_from(m, &mut found);
        }
    }
    if found.is_empty() {
        for d in &body.details {
            for text in [&d.field_name, &d.error_code, &d.entity_name].into_iter().flatten() {
                push_from(text, &mut found);
            }
        }
    }
    (!found.is_empty()).then(|| found.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::genesys::models::ErrorDetail;

    #[test]
    fn permission_extraction_table() {
        let from_params = ErrorBody {
            message: Some("You are missing the following permission(s): {permissions}".into()),
            message_params: [("permissions".to_string(), "analytics:agentCopilotAggregate:view".to_string())].into(),
            ..Default::default()
        };
        let from_message = ErrorBody {
            message: Some(
                "Unable to perform the requested action. You are missing the following permission(s): [conversation:communication:view, conversation:participant:wrapup]".into(),
            ),
            ..Default::default()
        };
        let from_details = ErrorBody {
            message: Some("Missing permissions".into()),
            details: vec![ErrorDetail { field_name: Some("routing:queue:view".into()), ..Default::default() }],
            ..Default::default()
        };
        let none = ErrorBody { message: Some("Not authorized: see http://x:y:z".into()), ..Default::default() };
        let cases = [
            (from_params, Some("analytics:agentCopilotAggregate:view")),
            (from_message, Some("conversation:communication:view, conversation:participant:wrapup")),
            (from_details, Some("routing:queue:view")),
            (none, None),
            (ErrorBody::default(), None),
        ];
        for (body, want) in cases {
            assert_eq!(missing_permission(&body).as_deref(), want, "{body:?}");
        }
    }

    #[test]
    fn retryable_and_accessors() {
        let api = |status| GenesysError::Api {
            status,
            code: None,
            message: "m".into(),
            correlation_id: Some("cid-1".into()),
            request: "GET /api/v2/x".into(),
            body: None,
        };
        for (status, want) in [(500, true), (502, true), (503, true), (504, true), (501, false), (404, false)] {
            assert_eq!(api(status).is_retryable(), want, "{status}");
        }
        let e = api(404);
        assert_eq!(e.status(), Some(404));
        assert_eq!(e.correlation_id(), Some("cid-1"));
        assert!(e.is_not_found());
        let text = e.to_string();
        assert!(text.contains("correlation id cid-1") && text.contains("Check the id"), "{text}");
        let f = GenesysError::Forbidden {
            permission: Some("a:b:c".into()),
            code: Some("missing.permissions".into()),
            message: "no".into(),
            correlation_id: None,
            request: "GET /p".into(),
        };
        assert!(!f.is_retryable());
        assert!(f.to_string().contains("Grant the permission a:b:c"), "{f}");
        let t = GenesysError::Timeout { request: "GET /p".into(), after: Duration::from_millis(10) };
        assert!(t.is_retryable() && t.status().is_none());
    }
}
