//! The retry policy of Genesys API calls as one pure decision: given what happened to an
//! attempt, wait how long, or give up and why.
//!
//! Pure (clock and RNG are parameters) so every rule is pinned by a table test without a
//! network. The rules follow what the official SDKs do (genesys-api.md §3.2–§3.3) and
//! fix their gaps:
//! - 429 waits exactly what `Retry-After` asks (seconds or an HTTP-date), a default when
//!   it is missing, and gives up when the wait exceeds `max_retry_after` (daily quotas
//!   answer with hours). A 429 is retried even for non-idempotent calls: Genesys rejected
//!   the request before doing anything.
//! - 5xx except 501, timeouts and connection errors are retried only when repeating the
//!   call cannot do harm twice (`idempotent`), with exponential backoff and full jitter.
//! - 4xx and 501 never: the same request will fail the same way.
//! - Every retry must fit both the attempt budget and the elapsed-time budget.

use std::time::{Duration, SystemTime};

use rand::Rng;

use crate::config::RetryConfig;

/// Retry budget and backoff shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts per call, including the first (1 = never retry).
    pub max_attempts: u32,
    /// Backoff before retry n (1-based) is a random wait in `[0, min(max_delay, base_delay × 2^(n-1))]`.
    pub base_delay: Duration,
    pub max_delay: Duration,
    /// No retry may start later than this after the first attempt.
    pub max_elapsed: Duration,
    /// A 429 asking to wait longer than this fails at once.
    pub max_retry_after: Duration,
    /// The wait on a 429 without a usable `Retry-After`.
    pub default_retry_after: Duration,
}

impl Default for RetryPolicy {
    /// The values of `config.default.toml`.
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 5,
            base_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(20),
            max_elapsed: Duration::from_secs(60),
            max_retry_after: Duration::from_secs(180),
            default_retry_after: Duration::from_secs(3),
        }
    }
}

impl From<&RetryConfig> for RetryPolicy {
    fn from(c: &RetryConfig) -> Self {
        RetryPolicy {
            max_attempts: c.max_attempts.max(1),
            base_delay: Duration::from_millis(c.base_delay_ms),
            max_delay: Duration::from_millis(c.max_delay_ms),
            max_elapsed: Duration::from_millis(c.max_elapsed_ms),
            max_retry_after: Duration::from_millis(c.max_retry_after_ms),
            default_retry_after: Duration::from_millis(c.default_retry_after_ms),
        }
    }
}

/// What happened to one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// An HTTP answer with an error status, and its raw `Retry-After` header, if any.
    Status { status: u16, retry_after: Option<String> },
    /// The token endpoint's `400 invalid_request` "rate limit exceeded": the server asks
    /// us to slow down without a 429. Honour `Retry-After` if sent, else back off.
    Throttled { retry_after: Option<String> },
    /// The connection failed or broke; the request may or may not have been processed.
    Connection,
    /// No answer within the per-attempt timeout; the request may have been processed.
    Timeout,
}

/// Why the loop stops.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GiveUpReason {
    /// The outcome is permanent (4xx, 501, …).
    NotRetryable,
    /// Retrying could repeat a side effect (5xx/timeout/connection on a non-idempotent call).
    NotIdempotent,
    /// `max_attempts` reached.
    Attempts,
    /// The next wait would end past `max_elapsed`.
    Elapsed,
    /// The server asked for a longer wait than `max_retry_after`.
    RetryAfterTooLong(Duration),
}

/// The verdict for one failed attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Retry { after: Duration },
    GiveUp { reason: GiveUpReason },
}

/// Decide what to do after attempt number `attempt` (1 for the first) failed with
/// `outcome`, `elapsed` after the first attempt started. `now` resolves HTTP-date
/// `Retry-After` values; `rng` draws the jitter.
pub fn decide(
    policy: &RetryPolicy,
    attempt: u32,
    elapsed: Duration,
    outcome: &Outcome,
    idempotent: bool,
    now: SystemTime,
    rng: &mut impl Rng,
) -> Decision {
    let give_up = |reason| Decision::GiveUp { reason };
    let wait = match outcome {
        Outcome::Status { status: 429, retry_after } => {
            match retry_after.as_deref().and_then(|v| parse_retry_after(v, now)) {
                Some(d) if d > policy.max_retry_after => return give_up(GiveUpReason::RetryAfterTooLong(d)),
                Some(d) => d,
                None => policy.default_retry_after,
            }
        }
        Outcome::Throttled { retry_after } => match retry_after.as_deref().and_then(|v| parse_retry_after(v, now)) {
            Some(d) if d > policy.max_retry_after => return give_up(GiveUpReason::RetryAfterTooLong(d)),
            Some(d) => d,
            None => backoff(policy, attempt, rng),
        },
        Outcome::Status { status, retry_after } if *status >= 500 && *status != 501 => {
            if !idempotent {
                return give_up(GiveUpReason::NotIdempotent);
            }
            // A 503 may say when the service is back; believe it within the same cap.
            match retry_after.as_deref().and_then(|v| parse_retry_after(v, now)) {
                Some(d) if d <= policy.max_retry_after => d,
                _ => backoff(policy, attempt, rng),
            }
        }
        Outcome::Status { .. } => return give_up(GiveUpReason::NotRetryable),
        Outcome::Connection | Outcome::Timeout => {
            if !idempotent {
                return give_up(GiveUpReason::NotIdempotent);
            }
            backoff(policy, attempt, rng)
        }
    };
    if attempt >= policy.max_attempts {
        return give_up(GiveUpReason::Attempts);
    }
    if elapsed.saturating_add(wait) > policy.max_elapsed {
        return give_up(GiveUpReason::Elapsed);
    }
    Decision::Retry { after: wait }
}

/// Full-jitter backoff before retry number `attempt`: uniform in
/// `[0, min(max_delay, base_delay × 2^(attempt-1))]` (AWS "full jitter": spreads a crowd of
/// clients that failed together better than any fixed schedule).
pub fn backoff(policy: &RetryPolicy, attempt: u32, rng: &mut impl Rng) -> Duration {
    let cap = backoff_ceiling(policy, attempt);
    let ms = u64::try_from(cap.as_millis()).unwrap_or(u64::MAX);
    Duration::from_millis(rng.gen_range(0..=ms))
}

/// The upper bound of [`backoff`] for `attempt`.
pub fn backoff_ceiling(policy: &RetryPolicy, attempt: u32) -> Duration {
    let exp = attempt.saturating_sub(1).min(31);
    policy.base_delay.saturating_mul(1u32 << exp).min(policy.max_delay)
}

/// Parse a `Retry-After` value: delay-seconds (`7`) or an HTTP-date
/// (`Wed, 21 Oct 2015 07:28:00 GMT`). A date in the past means "now". `None` for
/// anything else, so the caller falls back to its default.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let v = value.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    // Some servers send fractions; tolerate them rather than fall back to the default.
    if let Ok(secs) = v.parse::<f64>() {
        if secs.is_finite() && secs >= 0.0 {
            return Duration::try_from_secs_f64(secs).ok();
        }
        return None;
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 5,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(2),
            max_elapsed: Duration::from_secs(60),
            max_retry_after: Duration::from_secs(180),
            default_retry_after: Duration::from_secs(3),
        }
    }

    fn status(s: u16) -> Outcome {
        Outcome::Status { status: s, retry_after: None }
    }

    fn status_ra(s: u16, ra: &str) -> Outcome {
        Outcome::Status { status: s, retry_after: Some(ra.to_string()) }
    }

    /// A retry whose exact wait is random: only its bounds are checked.
    const JITTER: Option<Duration> = Some(Duration::MAX);

    #[test]
    fn decision_table() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let in_12s = httpdate::fmt_http_date(now + Duration::from_secs(12));
        let past = httpdate::fmt_http_date(now - Duration::from_secs(30));
        let in_2h = httpdate::fmt_http_date(now + Duration::from_secs(7200));
        let secs = Duration::from_secs;
        use GiveUpReason::*;
        // (name, attempt, elapsed, outcome, idempotent, expected wait or give-up reason)
        type Case = (&'static str, u32, Duration, Outcome, bool, Result<Option<Duration>, GiveUpReason>);
        let cases: Vec<Case> = vec![
            ("429 Retry-After seconds", 1, secs(0), status_ra(429, "7"), true, Ok(Some(secs(7)))),
            ("429 honoured for POST too", 1, secs(0), status_ra(429, "7"), false, Ok(Some(secs(7)))),
            ("429 Retry-After HTTP-date", 1, secs(0), status_ra(429, &in_12s), true, Ok(Some(secs(12)))),
            ("429 HTTP-date in the past", 1, secs(0), status_ra(429, &past), true, Ok(Some(secs(0)))),
            ("429 without Retry-After", 1, secs(0), status(429), true, Ok(Some(secs(3)))),
            ("429 garbage Retry-After", 1, secs(0), status_ra(429, "soon"), true, Ok(Some(secs(3)))),
            ("429 fractional", 1, secs(0), status_ra(429, "1.5"), true, Ok(Some(Duration::from_millis(1500)))),
            ("429 above cap", 1, secs(0), status_ra(429, "3600"), true, Err(RetryAfterTooLong(secs(3600)))),
            ("429 date above cap", 1, secs(0), status_ra(429, &in_2h), true, Err(RetryAfterTooLong(secs(7200)))),
            ("429 at the cap, past the elapsed budget", 1, secs(0), status_ra(429, "180"), false, Err(Elapsed)),
            ("500 idempotent", 1, secs(0), status(500), true, Ok(JITTER)),
            ("502 idempotent", 2, secs(0), status(502), true, Ok(JITTER)),
            ("503 idempotent", 3, secs(0), status(503), true, Ok(JITTER)),
            ("504 idempotent", 4, secs(0), status(504), true, Ok(JITTER)),
            ("503 honours Retry-After", 1, secs(0), status_ra(503, "4"), true, Ok(Some(secs(4)))),
            ("500 not idempotent", 1, secs(0), status(500), false, Err(NotIdempotent)),
            ("502 not idempotent", 1, secs(0), status(502), false, Err(NotIdempotent)),
            ("503 not idempotent", 1, secs(0), status(503), false, Err(NotIdempotent)),
            ("504 not idempotent", 1, secs(0), status(504), false, Err(NotIdempotent)),
            ("501 never", 1, secs(0), status(501), true, Err(NotRetryable)),
            ("400 never", 1, secs(0), status(400), true, Err(NotRetryable)),
            ("401 never here", 1, secs(0), status(401), true, Err(NotRetryable)),
            ("403 never", 1, secs(0), status(403), true, Err(NotRetryable)),
            ("404 never", 1, secs(0), status(404), true, Err(NotRetryable)),
            ("409 never", 1, secs(0), status(409), true, Err(NotRetryable)),
            ("connection idempotent", 1, secs(0), Outcome::Connection, true, Ok(JITTER)),
            ("connection not idempotent", 1, secs(0), Outcome::Connection, false, Err(NotIdempotent)),
            ("timeout idempotent", 1, secs(0), Outcome::Timeout, true, Ok(JITTER)),
            ("timeout not idempotent", 1, secs(0), Outcome::Timeout, false, Err(NotIdempotent)),
            (
                "token throttle with Retry-After",
                1,
                secs(0),
                Outcome::Throttled { retry_after: Some("2".into()) },
                false,
                Ok(Some(secs(2))),
            ),
            ("token throttle backs off", 2, secs(0), Outcome::Throttled { retry_after: None }, true, Ok(JITTER)),
            ("attempt budget, 5xx", 5, secs(0), status(503), true, Err(Attempts)),
            ("attempt budget, 429", 5, secs(0), status_ra(429, "1"), true, Err(Attempts)),
            ("attempt budget, connection", 9, secs(0), Outcome::Connection, true, Err(Attempts)),
            ("elapsed budget", 1, secs(55), status_ra(429, "7"), true, Err(Elapsed)),
            ("elapsed budget exactly met", 1, secs(53), status_ra(429, "7"), true, Ok(Some(secs(7)))),
            ("elapsed budget already spent", 2, secs(61), status(503), true, Err(Elapsed)),
        ];
        let mut rng = StdRng::seed_from_u64(7);
        for (name, attempt, elapsed, outcome, idempotent, want) in cases {
            let got = decide(&policy(), attempt, elapsed, &outcome, idempotent, now, &mut rng);
            match (want, got) {
                (Ok(Some(w)), Decision::Retry { after }) if w == Duration::MAX => {
                    assert!(after <= backoff_ceiling(&policy(), attempt), "{name}: {after:?}");
                }
                (Ok(Some(w)), Decision::Retry { after }) => assert_eq!(after, w, "{name}"),
                (Err(r), Decision::GiveUp { reason }) => assert_eq!(reason, r, "{name}"),
                (want, got) => panic!("{name}: wanted {want:?}, got {got:?}"),
            }
        }
    }

    #[test]
    fn full_jitter_stays_within_bounds_and_spreads() {
        let p = policy();
        let mut rng = StdRng::seed_from_u64(42);
        // Ceiling doubles from the base and stops at the cap.
        let ceilings: Vec<u128> = (1..=7).map(|a| backoff_ceiling(&p, a).as_millis()).collect();
        assert_eq!(ceilings, vec![100, 200, 400, 800, 1600, 2000, 2000]);
        assert_eq!(backoff_ceiling(&p, u32::MAX), Duration::from_secs(2), "no overflow at huge attempts");
        for attempt in 1..=6 {
            let cap = backoff_ceiling(&p, attempt);
            let draws: Vec<Duration> = (0..2000).map(|_| backoff(&p, attempt, &mut rng)).collect();
            assert!(draws.iter().all(|d| *d <= cap), "attempt {attempt}");
            let mean = draws.iter().map(|d| d.as_secs_f64()).sum::<f64>() / draws.len() as f64;
            let half = cap.as_secs_f64() / 2.0;
            assert!((mean - half).abs() < half * 0.1, "attempt {attempt}: mean {mean} vs {half}");
            // Full jitter reaches both ends of the range.
            assert!(draws.iter().any(|d| *d < cap / 10) && draws.iter().any(|d| *d > cap * 9 / 10));
        }
        // The same seed draws the same waits: decisions are reproducible.
        let a: Vec<Duration> = (0..5).map(|_| backoff(&p, 3, &mut StdRng::seed_from_u64(1))).collect();
        assert!(a.windows(2).all(|w| w[0] == w[1]));
    }

    #[test]
    fn retry_after_forms() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(parse_retry_after(" 7 ", now), Some(Duration::from_secs(7)));
        assert_eq!(parse_retry_after("0", now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("-3", now), None);
        assert_eq!(parse_retry_after("NaN", now), None);
        assert_eq!(parse_retry_after("", now), None);
        let date = httpdate::fmt_http_date(now + Duration::from_secs(90));
        assert_eq!(parse_retry_after(&date, now), Some(Duration::from_secs(90)));
        assert_eq!(parse_retry_after("Tue, 14 Nov 2023 22:13:20 GMT", now), Some(Duration::ZERO));
    }

    #[test]
    fn policy_from_config() {
        let c = crate::config::Config::defaults();
        let p = RetryPolicy::from(&c.genesys.retry);
        assert_eq!(p, RetryPolicy::default(), "Default mirrors config.default.toml");
    }
}
