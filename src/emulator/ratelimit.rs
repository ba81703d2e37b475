//! The per-token request limit (`client.credentials.token.rate.per.minute`), as a pure
//! GCRA cell with an injected clock.
//!
//! GCRA with a burst of the whole minute's allowance behaves like Genesys' "N requests a
//! minute": a fresh token may spend all N at once, then gets one more every 60/N s. The
//! time until the next request would conform becomes the `Retry-After` seconds.

use std::time::{Duration, Instant};

/// One token's limiter state: the theoretical arrival time of the next request.
#[derive(Debug, Clone, Copy)]
pub struct Gcra {
    tat: Option<Instant>,
}

impl Default for Gcra {
    fn default() -> Self {
        Gcra::new()
    }
}

impl Gcra {
    pub fn new() -> Gcra {
        Gcra { tat: None }
    }

    /// Admit one request at `now` under `per_minute`, or say how long to wait.
    pub fn check(&mut self, now: Instant, per_minute: u32) -> Result<(), Duration> {
        let per_minute = per_minute.max(1);
        let interval = Duration::from_secs(60) / per_minute;
        // The burst tolerance lets `per_minute` requests through back to back.
        let tolerance = interval * (per_minute - 1);
        let tat = self.tat.map_or(now, |t| t.max(now));
        let allowed_at = tat.checked_sub(tolerance).unwrap_or(now);
        if allowed_at > now {
            return Err(allowed_at - now);
        }
        self.tat = Some(tat + interval);
        Ok(())
    }
}

/// Whole seconds for `Retry-After`: rounded up, at least 1.
pub fn retry_after_secs(wait: Duration) -> u64 {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    secs.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_steady_rate() {
        let t0 = Instant::now();
        let mut g = Gcra::new();
        // (offset ms, expected outcome) for a limit of 3 a minute: 3 at once, then one per 20 s.
        let table: &[(u64, Result<(), u64>)] = &[
            (0, Ok(())),
            (0, Ok(())),
            (0, Ok(())),
            (0, Err(20_000)),
            (5_000, Err(15_000)),
            (20_000, Ok(())),
            (20_000, Err(20_000)),
            (40_000, Ok(())),
            (100_000, Ok(())),
        ];
        for (i, (at, want)) in table.iter().enumerate() {
            let got = g.check(t0 + Duration::from_millis(*at), 3).map_err(|d| d.as_millis() as u64);
            assert_eq!(got, *want, "row {i}");
        }
    }

    #[test]
    fn a_long_pause_refills_the_whole_burst() {
        let t0 = Instant::now();
        let mut g = Gcra::new();
        for _ in 0..5 {
            assert!(g.check(t0, 5).is_ok());
        }
        assert!(g.check(t0, 5).is_err());
        let later = t0 + Duration::from_secs(61);
        for _ in 0..5 {
            assert!(g.check(later, 5).is_ok());
        }
        assert!(g.check(later, 5).is_err());
    }

    #[test]
    fn retry_after_rounds_up() {
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1000)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1001)), 2);
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
    }
}
