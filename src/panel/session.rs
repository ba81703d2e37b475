//! Panel sessions: the short-lived bearer tokens the page holds after sign-in, each scoped
//! to one (agent, conversation), and the cache of agent tokens Genesys already vouched for.
//!
//! A session token is 256 random bits, given to the page once; only its SHA-256 is kept,
//! in memory. Sessions therefore do not survive a restart: the page's next call gets 401
//! and it silently exchanges the agent's Genesys token again. Both tables are pure (time is
//! passed in, randomness too), bounded, and pruned as they are used.

use std::collections::HashMap;
use std::sync::Mutex;

use base64::Engine;
use rand::RngCore;
use sha2::{Digest, Sha256};
use uuid::Uuid;

/// Most sessions (and cached validations) kept at once; the oldest go first beyond this.
pub const MAX_ENTRIES: usize = 100_000;

/// Who a session acts for, and the one conversation it may see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    /// The agent's Genesys user id.
    pub user_id: String,
    /// The agent's display name, for the page's header.
    pub user_name: Option<String>,
    pub conversation_id: Uuid,
}

/// Why a session token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    #[error("unknown panel session (the service may have restarted); sign in again")]
    Unknown,
    #[error("the panel session expired; sign in again")]
    Expired,
}

/// SHA-256 of a bearer token: what the tables are keyed by, so a memory dump holds no token.
pub fn token_hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

struct Entry {
    scope: Scope,
    expires_at_ms: i64,
}

/// The live sessions, by token hash.
pub struct Sessions {
    ttl_ms: i64,
    table: Mutex<HashMap<[u8; 32], Entry>>,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions").field("ttl_ms", &self.ttl_ms).finish_non_exhaustive()
    }
}

impl Sessions {
    pub fn new(ttl_ms: i64) -> Sessions {
        Sessions { ttl_ms: ttl_ms.max(1), table: Mutex::new(HashMap::new()) }
    }

    pub fn ttl_ms(&self) -> i64 {
        self.ttl_ms
    }

    /// A new session for `scope`: the token (shown once) and when it expires (epoch ms).
    pub fn issue(&self, scope: Scope, now_ms: i64, rng: &mut dyn RngCore) -> (String, i64) {
        let mut bytes = [0u8; 32];
        rng.fill_bytes(&mut bytes);
        let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        let expires_at_ms = now_ms.saturating_add(self.ttl_ms);
        let mut table = self.table.lock().unwrap_or_else(|p| p.into_inner());
        if table.len() >= MAX_ENTRIES {
            table.retain(|_, e| e.expires_at_ms > now_ms);
            if table.len() >= MAX_ENTRIES {
                // Still full of live sessions: drop the ones closest to their end.
                let mut ends: Vec<i64> = table.values().map(|e| e.expires_at_ms).collect();
                ends.sort_unstable();
                let cut = ends[ends.len() / 10];
                table.retain(|_, e| e.expires_at_ms > cut);
            }
        }
        table.insert(token_hash(&token), Entry { scope, expires_at_ms });
        (token, expires_at_ms)
    }

    /// The scope of a live session.
    pub fn check(&self, token: &str, now_ms: i64) -> Result<Scope, SessionError> {
        let key = token_hash(token);
        let mut table = self.table.lock().unwrap_or_else(|p| p.into_inner());
        let Some(e) = table.get(&key) else { return Err(SessionError::Unknown) };
        if e.expires_at_ms <= now_ms {
            table.remove(&key);
            return Err(SessionError::Expired);
        }
        Ok(e.scope.clone())
    }

    /// When the session `token` ends (epoch ms), if it is known.
    pub fn expires_at(&self, token: &str) -> Option<i64> {
        self.table.lock().unwrap_or_else(|p| p.into_inner()).get(&token_hash(token)).map(|e| e.expires_at_ms)
    }

    pub fn len(&self) -> usize {
        self.table.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// (hash of the agent's token, conversation) → (scope, when checked, epoch ms).
type Validations = HashMap<([u8; 32], Uuid), (Scope, i64)>;

/// Positive validations of (agent token, conversation), kept `ttl_ms`: within that time a
/// renewal or a second tab is not another pair of Genesys calls. Refusals are not cached,
/// so an agent who just joined the conversation is let in on the next try.
pub struct ValidationCache {
    ttl_ms: i64,
    table: Mutex<Validations>,
}

impl std::fmt::Debug for ValidationCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ValidationCache").field("ttl_ms", &self.ttl_ms).finish_non_exhaustive()
    }
}

impl ValidationCache {
    pub fn new(ttl_ms: i64) -> ValidationCache {
        ValidationCache { ttl_ms: ttl_ms.max(0), table: Mutex::new(HashMap::new()) }
    }

    /// The cached scope for this agent token and conversation, if still fresh.
    pub fn get(&self, agent_token: &str, conversation_id: Uuid, now_ms: i64) -> Option<Scope> {
        let key = (token_hash(agent_token), conversation_id);
        let mut table = self.table.lock().unwrap_or_else(|p| p.into_inner());
        match table.get(&key) {
            Some((scope, at)) if now_ms.saturating_sub(*at) < self.ttl_ms => Some(scope.clone()),
            Some(_) => {
                table.remove(&key);
                None
            }
            None => None,
        }
    }

    /// Remembers a successful validation made at `now_ms`.
    pub fn put(&self, agent_token: &str, scope: Scope, now_ms: i64) {
        if self.ttl_ms == 0 {
            return;
        }
        let mut table = self.table.lock().unwrap_or_else(|p| p.into_inner());
        if table.len() >= MAX_ENTRIES {
            let ttl = self.ttl_ms;
            table.retain(|_, (_, at)| now_ms.saturating_sub(*at) < ttl);
            if table.len() >= MAX_ENTRIES {
                table.clear();
            }
        }
        table.insert((token_hash(agent_token), scope.conversation_id), (scope, now_ms));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn scope(user: &str, conv: u128) -> Scope {
        Scope { user_id: user.into(), user_name: None, conversation_id: Uuid::from_u128(conv) }
    }

    #[test]
    fn sessions_table() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let s = Sessions::new(1000);
        let (a, a_end) = s.issue(scope("u1", 1), 10_000, &mut rng);
        let (b, _) = s.issue(scope("u2", 2), 10_500, &mut rng);
        assert_eq!(a_end, 11_000);
        assert_ne!(a, b);
        assert_eq!(a.len(), 43, "256 bits, base64url without padding");
        // (token, now, expected)
        let cases: Vec<(&str, i64, Result<Scope, SessionError>)> = vec![
            (&a, 10_999, Ok(scope("u1", 1))),
            (&b, 11_000, Ok(scope("u2", 2))),
            ("not-a-session", 10_000, Err(SessionError::Unknown)),
            (&a, 11_000, Err(SessionError::Expired)),
            // An expired session is forgotten.
            (&a, 11_001, Err(SessionError::Unknown)),
        ];
        for (token, now, want) in cases {
            assert_eq!(s.check(token, now), want, "token at {now}");
        }
    }

    #[test]
    fn only_hashes_are_kept() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let s = Sessions::new(1000);
        let (t, _) = s.issue(scope("u1", 1), 0, &mut rng);
        let table = s.table.lock().unwrap();
        assert!(table.contains_key(&token_hash(&t)));
        assert_eq!(table.len(), 1);
    }

    #[test]
    fn validation_cache_is_per_token_and_conversation_and_expires() {
        let c = ValidationCache::new(60_000);
        c.put("tok", scope("u1", 1), 0);
        assert_eq!(c.get("tok", Uuid::from_u128(1), 59_999), Some(scope("u1", 1)));
        assert_eq!(c.get("tok", Uuid::from_u128(2), 10), None, "another conversation is checked again");
        assert_eq!(c.get("other", Uuid::from_u128(1), 10), None);
        assert_eq!(c.get("tok", Uuid::from_u128(1), 60_000), None);
        let off = ValidationCache::new(0);
        off.put("tok", scope("u1", 1), 0);
        assert_eq!(off.get("tok", Uuid::from_u128(1), 0), None);
    }
}
