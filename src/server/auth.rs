//! API-key authentication: `Authorization: Bearer <key>`, checked against the configured
//! SHA-256 hashes in constant time, and the roles that may do what.

use axum::http::{header, HeaderMap, StatusCode};
use sha2::{Digest, Sha256};

use super::error::ApiError;
use super::ServerError;
use crate::config::ApiKeyConfig;

/// What a key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Scrape `/metrics` and nothing else: what a Prometheus server is given, so the
    /// scraper's credential cannot create or read prompts.
    Metrics,
    /// Prompt injections: create, read, cancel, stream; may scrape `/metrics` too.
    Injector,
    /// Everything, including firing armed prompts.
    Admin,
}

impl Role {
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "metrics" => Some(Role::Metrics),
            "injector" => Some(Role::Injector),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Metrics => "metrics",
            Role::Injector => "injector",
            Role::Admin => "admin",
        }
    }

    /// Roles are ordered: each may do what the ones before it may.
    fn may(self, needed: Role) -> bool {
        self.rank() >= needed.rank()
    }

    fn rank(self) -> u8 {
        match self {
            Role::Metrics => 0,
            Role::Injector => 1,
            Role::Admin => 2,
        }
    }
}

/// One configured key (only its hash is kept).
#[derive(Clone)]
pub struct ApiKey {
    pub id: String,
    hash: [u8; 32],
    pub role: Role,
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiKey").field("id", &self.id).field("role", &self.role).finish_non_exhaustive()
    }
}

/// The keys from `server.api_keys`.
pub fn keys_from_config(cfg: &[ApiKeyConfig]) -> Result<Vec<ApiKey>, ServerError> {
    cfg.iter()
        .map(|k| {
            let bytes = hex::decode(k.sha256.trim()).ok().filter(|b| b.len() == 32).ok_or_else(|| {
                ServerError::Config(format!(
                    "server.api_keys {:?}: sha256 must be 64 hex digits (the SHA-256 of the key); `gc-assist keys new` prints one",
                    k.id
                ))
            })?;
            let mut hash = [0u8; 32];
            hash.copy_from_slice(&bytes);
            let role = Role::parse(&k.role).ok_or_else(|| {
                ServerError::Config(format!(
                    "server.api_keys {:?}: role {:?} is not \"metrics\", \"injector\" or \"admin\"",
                    k.id, k.role
                ))
            })?;
            Ok(ApiKey { id: k.id.clone(), hash, role })
        })
        .collect()
}

/// SHA-256 of a key, hex (what goes into the configuration).
pub fn key_hash_hex(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

fn ct_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The key presenting this request, if it may do what `needed` requires.
pub fn authorize<'k>(keys: &'k [ApiKey], headers: &HeaderMap, needed: Role) -> Result<&'k ApiKey, ApiError> {
    let unauthorized = |m: &str| ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", m);
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Err(unauthorized("send the API key as `Authorization: Bearer <key>`"));
    };
    let text = value.to_str().map_err(|_| unauthorized("the Authorization header is not readable text"))?;
    let Some(key) = text.strip_prefix("Bearer ").or_else(|| text.strip_prefix("bearer ")) else {
        return Err(unauthorized("the Authorization header must be `Bearer <key>`"));
    };
    let digest: [u8; 32] = Sha256::digest(key.trim().as_bytes()).into();
    // Compare against every key without stopping early, so timing says nothing about which
    // (if any) matched.
    let mut found = None;
    for k in keys {
        if ct_eq(&k.hash, &digest) && found.is_none() {
            found = Some(k);
        }
    }
    let k =
        found.ok_or_else(|| unauthorized("unknown API key; check the key, or create one with `gc-assist keys new`"))?;
    if !k.role.may(needed) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("API key {:?} has role {}; this needs a key with role {}", k.id, k.role.as_str(), needed.as_str()),
        ));
    }
    Ok(k)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn cfg(id: &str, key: &str, role: &str) -> ApiKeyConfig {
        ApiKeyConfig { id: id.into(), sha256: key_hash_hex(key), role: role.into() }
    }

    #[test]
    fn keys_roles_and_headers() {
        let keys =
            keys_from_config(&[cfg("inj", "k1", "injector"), cfg("adm", "k2", "admin"), cfg("mon", "k4", "metrics")])
                .unwrap();
        // (Authorization header, role needed, expected: Ok(key id) or Err(status))
        let table: &[(Option<&str>, Role, Result<&str, u16>)] = &[
            (Some("Bearer k1"), Role::Injector, Ok("inj")),
            (Some("Bearer k2"), Role::Injector, Ok("adm")),
            (Some("Bearer k2"), Role::Admin, Ok("adm")),
            (Some("Bearer k1"), Role::Admin, Err(403)),
            (Some("Bearer k4"), Role::Metrics, Ok("mon")),
            (Some("Bearer k1"), Role::Metrics, Ok("inj")),
            (Some("Bearer k2"), Role::Metrics, Ok("adm")),
            (Some("Bearer k4"), Role::Injector, Err(403)),
            (Some("Bearer k4"), Role::Admin, Err(403)),
            (None, Role::Metrics, Err(401)),
            (Some("Bearer k3"), Role::Injector, Err(401)),
            (Some("Basic k1"), Role::Injector, Err(401)),
            (Some("k1"), Role::Injector, Err(401)),
            (None, Role::Injector, Err(401)),
        ];
        for (i, (h, role, want)) in table.iter().enumerate() {
            let mut headers = HeaderMap::new();
            if let Some(h) = h {
                headers.insert(header::AUTHORIZATION, HeaderValue::from_str(h).unwrap());
            }
            let got = authorize(&keys, &headers, *role).map(|k| k.id.as_str()).map_err(|e| e.status.as_u16());
            assert_eq!(got, *want, "row {i}");
        }
    }

    #[test]
    fn bad_key_config_says_what_to_fix() {
        let mut bad = cfg("x", "k", "injector");
        bad.sha256 = "abc".into();
        assert!(keys_from_config(&[bad]).unwrap_err().to_string().contains("64 hex"));
        let e = keys_from_config(&[cfg("x", "k", "root")]).unwrap_err().to_string();
        assert!(e.contains("injector") && e.contains("admin"), "{e}");
        // The key itself never appears in Debug output.
        let keys = keys_from_config(&[cfg("x", "secret-key", "admin")]).unwrap();
        assert!(!format!("{keys:?}").contains(&key_hash_hex("secret-key")));
    }
}
