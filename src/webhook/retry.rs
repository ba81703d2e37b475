//! The webhook retry schedule: how long to wait after a failed delivery, and when to give up
//! and dead-letter the event.
//!
//! Guarantees:
//! - After the `n`th failed attempt the wait is drawn from step `n` of the schedule
//!   (default 5 s, 5 min, 30 min, 2 h, 5 h, 10 h); after the last step,
//!   [`RetrySchedule::next_attempt`] answers `None`: dead-letter. With the default schedule
//!   an event gets 7 attempts in all.
//! - [`Jitter::Full`] (the default) draws the wait uniformly from `0..=step`, from the RNG
//!   the caller passes in, so receivers recovering from an outage are not hit by every
//!   queued event at once, and tests are reproducible.
//! - A receiver's `Retry-After` is honoured: the wait is at least `Retry-After`, capped at
//!   [`RetrySchedule::max_retry_after`] so a receiver cannot park an event forever.
//!   The attempt still counts against the schedule.
//! - Pure: no clock is read; [`parse_retry_after`] takes `now` for HTTP dates.

use std::time::{Duration, SystemTime};

use rand::Rng;
use thiserror::Error;

/// Longest single step accepted in a schedule: a week.
const MAX_STEP: Duration = Duration::from_secs(7 * 24 * 3600);
/// Most steps accepted in a schedule.
const MAX_STEPS: usize = 32;

/// Why a schedule was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RetryError {
    #[error("a webhook retry schedule has at most {MAX_STEPS} steps; this one has {0}")]
    TooManySteps(usize),
    #[error("webhook retry step {index} is {secs} s; each step must be at most 7 days")]
    StepTooLong { index: usize, secs: u64 },
}

/// How the wait is spread within a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Jitter {
    /// Exactly the step.
    None,
    /// Uniform in `0..=step`.
    #[default]
    Full,
}

/// When to retry a failed webhook delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetrySchedule {
    steps: Vec<Duration>,
    max_retry_after: Duration,
    jitter: Jitter,
}

impl Default for RetrySchedule {
    fn default() -> Self {
        let steps = [5, 5 * 60, 30 * 60, 2 * 3600, 5 * 3600, 10 * 3600].map(Duration::from_secs).to_vec();
        RetrySchedule { steps, max_retry_after: Duration::from_secs(10 * 3600), jitter: Jitter::Full }
    }
}

impl RetrySchedule {
    /// A schedule of `steps` (an empty one dead-letters after the first failure).
    pub fn new(steps: Vec<Duration>, max_retry_after: Duration, jitter: Jitter) -> Result<RetrySchedule, RetryError> {
        if steps.len() > MAX_STEPS {
            return Err(RetryError::TooManySteps(steps.len()));
        }
        if let Some((index, d)) = steps.iter().enumerate().find(|(_, d)| **d > MAX_STEP) {
            return Err(RetryError::StepTooLong { index, secs: d.as_secs() });
        }
        Ok(RetrySchedule { steps, max_retry_after, jitter })
    }

    /// The same, with steps given in seconds (the configuration's form).
    pub fn from_secs(steps: &[u64], max_retry_after_secs: u64, jitter: Jitter) -> Result<RetrySchedule, RetryError> {
        RetrySchedule::new(
            steps.iter().map(|s| Duration::from_secs(*s)).collect(),
            Duration::from_secs(max_retry_after_secs),
            jitter,
        )
    }

    pub fn steps(&self) -> &[Duration] {
        &self.steps
    }

    pub fn max_retry_after(&self) -> Duration {
        self.max_retry_after
    }

    /// Deliveries an event gets before it is dead-lettered.
    pub fn max_attempts(&self) -> u32 {
        u32::try_from(self.steps.len()).unwrap_or(u32::MAX).saturating_add(1)
    }

    /// The wait after `failed_attempts` failed deliveries (0: none yet, send now), or `None`
    /// to dead-letter. `retry_after` is the receiver's `Retry-After`, if it sent one.
    pub fn next_attempt(
        &self,
        failed_attempts: u32,
        retry_after: Option<Duration>,
        rng: &mut impl Rng,
    ) -> Option<Duration> {
        let Some(index) = failed_attempts.checked_sub(1) else { return Some(Duration::ZERO) };
        let step = *self.steps.get(usize::try_from(index).ok()?)?;
        let drawn = match self.jitter {
            Jitter::None => step,
            Jitter::Full => {
                // Millisecond resolution is plenty for waits of seconds to hours.
                let max = u64::try_from(step.as_millis()).unwrap_or(u64::MAX);
                Duration::from_millis(rng.gen_range(0..=max))
            }
        };
        let floor = retry_after.map_or(Duration::ZERO, |r| r.min(self.max_retry_after));
        Some(drawn.max(floor))
    }
}

/// Reads a `Retry-After` value: delay-seconds or an HTTP date (RFC 9110 §10.2.3). A date in
/// the past means "now". Anything else is ignored (`None`), as the RFC asks.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let v = value.trim();
    if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) {
        // Absurdly long digit strings saturate rather than fail: they mean "a long time".
        return Some(Duration::from_secs(v.parse().unwrap_or(u64::MAX)));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn default_schedule_without_jitter() {
        let s = RetrySchedule { jitter: Jitter::None, ..RetrySchedule::default() };
        let mut rng = StdRng::seed_from_u64(0);
        let want = [
            Some(S(0)),
            Some(S(5)),
            Some(S(300)),
            Some(S(1800)),
            Some(S(7200)),
            Some(S(18_000)),
            Some(S(36_000)),
            None,
            None,
        ];
        for (failed, w) in want.iter().enumerate() {
            assert_eq!(s.next_attempt(failed as u32, None, &mut rng), *w, "after {failed} failures");
        }
        assert_eq!(s.max_attempts(), 7);
        assert_eq!(s.next_attempt(u32::MAX, None, &mut rng), None);
    }

    #[test]
    fn full_jitter_stays_within_each_step_and_spreads() {
        let s = RetrySchedule::default();
        let mut rng = StdRng::seed_from_u64(42);
        for (i, step) in s.steps().to_vec().into_iter().enumerate() {
            let draws: Vec<Duration> =
                (0..500).map(|_| s.next_attempt(i as u32 + 1, None, &mut rng).unwrap()).collect();
            assert!(draws.iter().all(|d| *d <= step), "step {i}");
            let below_half = draws.iter().filter(|d| **d < step / 2).count();
            assert!((150..350).contains(&below_half), "step {i}: {below_half} of 500 below half");
        }
        // Same seed, same waits.
        let a: Vec<_> = (1..=6).map(|n| s.next_attempt(n, None, &mut StdRng::seed_from_u64(9))).collect();
        let b: Vec<_> = (1..=6).map(|n| s.next_attempt(n, None, &mut StdRng::seed_from_u64(9))).collect();
        assert_eq!(a, b);
    }

    #[test]
    fn retry_after_is_a_floor_with_a_cap() {
        let s = RetrySchedule::from_secs(&[5, 60], 600, Jitter::None).unwrap();
        let mut rng = StdRng::seed_from_u64(0);
        // (failed attempts, Retry-After, expected wait)
        let table: &[(u32, Option<u64>, Option<u64>)] = &[
            (1, None, Some(5)),
            (1, Some(2), Some(5)),      // schedule is longer
            (1, Some(30), Some(30)),    // receiver asks for longer
            (2, Some(3600), Some(600)), // capped
            (3, Some(30), None),        // schedule exhausted: Retry-After does not extend it
        ];
        for (failed, ra, want) in table {
            assert_eq!(
                s.next_attempt(*failed, ra.map(S), &mut rng),
                want.map(S),
                "failed {failed}, Retry-After {ra:?}"
            );
        }
        let jittered = RetrySchedule::from_secs(&[5], 600, Jitter::Full).unwrap();
        for _ in 0..100 {
            assert!(jittered.next_attempt(1, Some(S(30)), &mut rng).unwrap() >= S(30));
        }
    }

    #[test]
    fn schedules_are_validated() {
        assert_eq!(RetrySchedule::from_secs(&[1; 33], 1, Jitter::Full), Err(RetryError::TooManySteps(33)));
        assert_eq!(
            RetrySchedule::from_secs(&[5, 8 * 86_400], 1, Jitter::Full),
            Err(RetryError::StepTooLong { index: 1, secs: 8 * 86_400 })
        );
        let empty = RetrySchedule::from_secs(&[], 1, Jitter::Full).unwrap();
        assert_eq!(empty.next_attempt(1, None, &mut StdRng::seed_from_u64(0)), None);
        assert_eq!(empty.max_attempts(), 1);
    }

    #[test]
    fn retry_after_header_values() {
        let now = SystemTime::UNIX_EPOCH + S(1_445_412_480); // Wed, 21 Oct 2015 07:28:00 GMT
        let table: &[(&str, Option<u64>)] = &[
            ("120", Some(120)),
            (" 0 ", Some(0)),
            ("Wed, 21 Oct 2015 07:29:00 GMT", Some(60)),
            ("Wed, 21 Oct 2015 07:27:00 GMT", Some(0)),
            ("99999999999999999999999", Some(u64::MAX)),
            ("-5", None),
            ("1.5", None),
            ("soon", None),
            ("", None),
        ];
        for (v, want) in table {
            assert_eq!(parse_retry_after(v, now), want.map(S), "{v:?}");
        }
    }
}
