//! Reconnection policy: jittered exponential backoff under a deadline. Pure: the caller
//! supplies the time and the randomness.

use std::time::{Duration, Instant};

/// Delays between reconnection attempts.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    base: Duration,
    max: Duration,
    attempt: u32,
    /// When the current run of failures started; the deadline counts from here.
    failing_since: Option<Instant>,
    give_up_after: Duration,
}

impl Backoff {
    /// Starts at `base`, doubles up to `max`, and gives up `give_up_after` past the first
    /// failure of a run.
    pub(crate) fn new(base: Duration, max: Duration, give_up_after: Duration) -> Self {
        Backoff {
            base,
            max,
            attempt: 0,
            failing_since: None,
            give_up_after,
        }
    }

    /// A success: the next failure starts a new run.
    pub(crate) fn reset(&mut self) {
        self.attempt = 0;
        self.failing_since = None;
    }

    /// A failure at `now`. Returns how long to wait before trying again, or `None` when the
    /// deadline has passed (or would pass during the wait). `unit` in `[0, 1)` picks the
    /// jitter: the wait is uniform in `[d/2, d)` for the exponential step `d`.
    pub(crate) fn fail(&mut self, now: Instant, unit: f64) -> Option<Duration> {
        let since = *self.failing_since.get_or_insert(now);
        let step = self
            .base
            .saturating_mul(1u32 << self.attempt.min(16))
            .min(self.max);
        self.attempt += 1;
        let wait = step.mul_f64(0.5 + 0.5 * unit.clamp(0.0, 0.999));
        let elapsed = now.saturating_duration_since(since);
        if elapsed >= self.give_up_after {
            return None;
        }
        // Never sleep past the deadline: the last attempt happens right at it.
        Some(wait.min(self.give_up_after - elapsed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_jitters_caps_and_gives_up() {
        let t0 = Instant::now();
        let mut b = Backoff::new(
            Duration::from_millis(100),
            Duration::from_secs(2),
            Duration::from_secs(10),
        );
        assert_eq!(b.fail(t0, 0.0), Some(Duration::from_millis(50)));
        assert_eq!(b.fail(t0, 0.0), Some(Duration::from_millis(100)));
        let third = b.fail(t0, 0.999).unwrap();
        assert!(third > Duration::from_millis(390) && third < Duration::from_millis(400));
        for _ in 0..10 {
            assert!(b.fail(t0, 0.999).unwrap() <= Duration::from_secs(2));
        }
        assert_eq!(
            b.fail(t0 + Duration::from_millis(9_900), 0.999),
            Some(Duration::from_millis(100))
        );
        assert_eq!(b.fail(t0 + Duration::from_secs(10), 0.5), None);
        b.reset();
        assert_eq!(
            b.fail(t0 + Duration::from_secs(60), 0.0),
            Some(Duration::from_millis(50))
        );
    }
}
