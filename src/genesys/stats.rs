//! Counters of one Genesys client (requests, retries, 429s, token fetches, waits), kept
//! as atomics so every clone of the client updates them without locking.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// A snapshot of a client's counters, for `/metrics`, the CLI and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientStats {
    /// API attempts sent (every retry and re-authentication counts).
    pub requests: u64,
    /// Retries scheduled by the retry policy.
    pub retries: u64,
    /// 429 answers received from the API.
    pub responses_429: u64,
    /// HTTP calls to the token endpoint (including retried ones).
    pub token_requests: u64,
    /// Tokens obtained.
    pub token_refreshes: u64,
    /// Re-authentications after a 401.
    pub reauthentications: u64,
    /// Attempts that got no answer in time.
    pub timeouts: u64,
    /// Attempts that failed to connect or broke off.
    pub transport_errors: u64,
    /// Total time spent waiting on the pacer.
    pub paced_wait: Duration,
    /// Total time spent sleeping before retries (429 `Retry-After` included).
    pub retry_wait: Duration,
    /// API answers by HTTP status.
    pub by_status: BTreeMap<u16, u64>,
}

/// The live counters behind [`ClientStats`].
#[derive(Debug)]
pub(crate) struct Counters {
    pub requests: AtomicU64,
    pub retries: AtomicU64,
    pub responses_429: AtomicU64,
    pub token_requests: AtomicU64,
    pub token_refreshes: AtomicU64,
    pub reauthentications: AtomicU64,
    pub timeouts: AtomicU64,
    pub transport_errors: AtomicU64,
    paced_wait_us: AtomicU64,
    retry_wait_us: AtomicU64,
    /// Indexed by status 100..=599; anything else lands in slot 0.
    by_status: Box<[AtomicU64; 600]>,
}

impl Default for Counters {
    fn default() -> Self {
        Counters {
            requests: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            responses_429: AtomicU64::new(0),
            token_requests: AtomicU64::new(0),
            token_refreshes: AtomicU64::new(0),
            reauthentications: AtomicU64::new(0),
            timeouts: AtomicU64::new(0),
            transport_errors: AtomicU64::new(0),
            paced_wait_us: AtomicU64::new(0),
            retry_wait_us: AtomicU64::new(0),
            by_status: Box::new(std::array::from_fn(|_| AtomicU64::new(0))),
        }
    }
}

/// Add one; relaxed ordering is enough for counters read only as a snapshot.
pub(crate) fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

impl Counters {
    pub fn status(&self, status: u16) {
        let slot = if (100..600).contains(&status) { status as usize } else { 0 };
        bump(&self.by_status[slot]);
        if status == 429 {
            bump(&self.responses_429);
        }
    }

    pub fn paced(&self, d: Duration) {
        self.paced_wait_us.fetch_add(u64::try_from(d.as_micros()).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    pub fn retry_wait(&self, d: Duration) {
        self.retry_wait_us.fetch_add(u64::try_from(d.as_micros()).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> ClientStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let by_status = self
            .by_status
            .iter()
            .enumerate()
            .filter_map(|(status, c)| {
                let n = get(c);
                (n > 0).then_some((status as u16, n))
            })
            .collect();
        ClientStats {
            requests: get(&self.requests),
            retries: get(&self.retries),
            responses_429: get(&self.responses_429),
            token_requests: get(&self.token_requests),
            token_refreshes: get(&self.token_refreshes),
            reauthentications: get(&self.reauthentications),
            timeouts: get(&self.timeouts),
            transport_errors: get(&self.transport_errors),
            paced_wait: Duration::from_micros(get(&self.paced_wait_us)),
            retry_wait: Duration::from_micros(get(&self.retry_wait_us)),
            by_status,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_counts() {
        let c = Counters::default();
        c.status(200);
        c.status(200);
        c.status(429);
        c.status(9999);
        c.retry_wait(Duration::from_millis(1500));
        bump(&c.requests);
        let s = c.snapshot();
        assert_eq!(s.by_status, BTreeMap::from([(0, 1), (200, 2), (429, 1)]));
        assert_eq!(s.responses_429, 1);
        assert_eq!(s.requests, 1);
        assert_eq!(s.retry_wait, Duration::from_millis(1500));
    }
}
