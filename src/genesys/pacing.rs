//! Proactive pacing: a GCRA limiter (the `governor` crate) per OAuth client, so gc-assist
//! stays under Genesys' per-minute limit instead of provoking 429s and then backing off.
//!
//! Genesys counts requests per minute per client-credentials token (300 by default). A
//! plain GCRA at `rpm` with a burst of `b` admits up to `rpm + b` calls in a sliding
//! minute, which would overshoot the quota by the burst. So the sustained rate is
//! `rpm - b`: any 60-second window then holds at most `b + (rpm - b) = rpm` calls, and
//! with the defaults (300, burst 10) we still use 290/300 ≈ 97 % of the quota.
//!
//! The token endpoint is not paced here: it has its own, undocumented limit, answered
//! with a 400 that `auth` backs off from.

use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};

use super::error::GenesysError;

/// A GCRA pacer for one OAuth client. Generic over the clock so tests can drive it with
/// governor's fake clock.
pub struct Pacer<C: Clock = DefaultClock> {
    limiter: RateLimiter<NotKeyed, InMemoryState, C, NoOpMiddleware<C::Instant>>,
    clock: C,
    requests_per_minute: u32,
    burst: u32,
}

impl<C: Clock> std::fmt::Debug for Pacer<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pacer")
            .field("requests_per_minute", &self.requests_per_minute)
            .field("burst", &self.burst)
            .finish()
    }
}

impl Pacer<DefaultClock> {
    /// A pacer on the real clock.
    pub fn new(requests_per_minute: u32, burst: u32) -> Result<Self, GenesysError> {
        Self::with_clock(requests_per_minute, burst, DefaultClock::default())
    }
}

impl<C: Clock + Clone> Pacer<C> {
    /// A pacer on a given clock. `burst` is clamped below `requests_per_minute` so the
    /// sustained rate stays positive.
    pub fn with_clock(requests_per_minute: u32, burst: u32, clock: C) -> Result<Self, GenesysError> {
        if requests_per_minute == 0 {
            return Err(GenesysError::Config("genesys.requests_per_minute must be at least 1".into()));
        }
        if burst == 0 {
            return Err(GenesysError::Config("genesys.burst must be at least 1".into()));
        }
        let burst = burst.min(requests_per_minute.saturating_sub(1)).max(1);
        let sustained = requests_per_minute.saturating_sub(burst).max(1);
        let period = Duration::from_secs(60) / sustained;
        let quota = Quota::with_period(period)
            .ok_or_else(|| GenesysError::Config("genesys.requests_per_minute is too high to pace".into()))?
            .allow_burst(NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN));
        Ok(Pacer { limiter: RateLimiter::direct_with_clock(quota, clock.clone()), clock, requests_per_minute, burst })
    }

    /// Take one slot now, or say how long until one frees up.
    pub fn try_acquire(&self) -> Result<(), Duration> {
        match self.limiter.check() {
            Ok(()) => Ok(()),
            Err(not_until) => Err(not_until.wait_time_from(self.clock.now())),
        }
    }

    /// Wait until a slot is free and take it. Returns how long it waited.
    pub async fn acquire(&self) -> Duration {
        let mut waited = Duration::ZERO;
        loop {
            match self.try_acquire() {
                Ok(()) => return waited,
                Err(wait) => {
                    // Several tasks may wake for the same slot; the loser just waits again.
                    tokio::time::sleep(wait).await;
                    waited += wait;
                }
            }
        }
    }

    /// The configured limit.
    pub fn requests_per_minute(&self) -> u32 {
        self.requests_per_minute
    }

    /// The effective burst after clamping.
    pub fn burst(&self) -> u32 {
        self.burst
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;

    #[test]
    fn burst_then_evenly_spaced() {
        let clock = FakeRelativeClock::default();
        // 70 a minute with a burst of 10: sustained 60/min, one slot a second.
        let p = Pacer::with_clock(70, 10, clock.clone()).unwrap();
        for i in 0..10 {
            assert!(p.try_acquire().is_ok(), "burst slot {i}");
        }
        let wait = p.try_acquire().unwrap_err();
        assert!(wait <= Duration::from_secs(1) && wait > Duration::from_millis(900), "{wait:?}");
        clock.advance(Duration::from_millis(999));
        assert!(p.try_acquire().is_err());
        clock.advance(Duration::from_millis(1));
        assert!(p.try_acquire().is_ok());
        assert!(p.try_acquire().is_err());
    }

    #[test]
    fn no_sliding_minute_exceeds_the_limit() {
        // Hammer the pacer every 10 ms of fake time for three minutes and count admitted
        // calls in every 60-second window: never more than the limit, and close to it.
        for (rpm, burst) in [(300, 10), (30, 5), (12, 1), (5, 20), (1, 1)] {
            let clock = FakeRelativeClock::default();
            let p = Pacer::with_clock(rpm, burst, clock.clone()).unwrap();
            let mut admitted: Vec<u64> = Vec::new();
            for step in 0..18_000u64 {
                if p.try_acquire().is_ok() {
                    admitted.push(step * 10);
                }
                clock.advance(Duration::from_millis(10));
            }
            let worst = admitted
                .iter()
                .enumerate()
                .map(|(i, start)| admitted[i..].iter().take_while(|t| **t < start + 60_000).count())
                .max()
                .unwrap_or(0);
            assert!(worst as u32 <= rpm, "rpm {rpm} burst {burst}: {worst} in one minute");
            let per_minute = admitted.len() as f64 / 3.0;
            let sustained = f64::from(rpm - p.burst());
            assert!(per_minute >= sustained * 0.95, "rpm {rpm} burst {burst}: only {per_minute}/min");
        }
    }

    #[test]
    fn rejects_zero() {
        assert!(Pacer::new(0, 1).is_err());
        assert!(Pacer::new(10, 0).is_err());
    }

    #[tokio::test]
    async fn real_clock_spacing() {
        // 620/min with burst 20 → sustained 600/min: one slot per 100 ms after the burst.
        let p = Pacer::new(620, 20).unwrap();
        let start = std::time::Instant::now();
        for _ in 0..25 {
            p.acquire().await;
        }
        let took = start.elapsed();
        // 20 immediately, then 5 more at 100 ms spacing ≈ 500 ms.
        assert!(took >= Duration::from_millis(450) && took < Duration::from_millis(1500), "{took:?}");
    }
}
