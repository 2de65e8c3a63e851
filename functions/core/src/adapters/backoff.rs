//! The one retry policy of the adapters: bounded attempts, capped exponential
//! backoff with full jitter, so many Lambdas retrying at once spread out
//! instead of hammering a recovering server in step.

use std::time::Duration;

/// How often and how patiently to retry a transient failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Total tries including the first (at least 1).
    pub max_attempts: u32,
    /// Upper bound of the first delay.
    pub base: Duration,
    /// No delay exceeds this.
    pub cap: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            max_attempts: 5,
            base: Duration::from_millis(200),
            cap: Duration::from_secs(5),
        }
    }
}

impl Backoff {
    /// The ceiling of the delay after failed attempt `attempt` (1-based):
    /// `min(cap, base * 2^(attempt-1))`.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let factor = 1u32
            .checked_shl(attempt.saturating_sub(1))
            .unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.cap)
    }

    /// The delay before the next try after failed attempt `attempt`, or `None`
    /// when the attempts are used up. Full jitter: uniform in `[ceiling/2, ceiling]`
    /// so a retry never comes immediately but stays spread out.
    pub fn delay(&self, attempt: u32) -> Option<Duration> {
        if attempt >= self.max_attempts.max(1) {
            return None;
        }
        let ceiling = self.ceiling(attempt);
        let half = ceiling / 2;
        let span = u64::try_from((ceiling - half).as_micros()).unwrap_or(u64::MAX);
        Some(half + Duration::from_micros(fastrand::u64(0..=span)))
    }

    /// Waits out [`Backoff::delay`]; `false` when no attempt is left.
    pub async fn wait(&self, attempt: u32) -> bool {
        match self.delay(attempt) {
            Some(d) => {
                tokio::time::sleep(d).await;
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_are_capped_and_stop_after_max_attempts() {
        let b = Backoff {
            max_attempts: 4,
            base: Duration::from_millis(100),
            cap: Duration::from_millis(300),
        };
        for _ in 0..100 {
            let d1 = b.delay(1).unwrap();
            assert!(d1 >= Duration::from_millis(50) && d1 <= Duration::from_millis(100));
            let d3 = b.delay(3).unwrap();
            assert!(d3 >= Duration::from_millis(150) && d3 <= Duration::from_millis(300));
        }
        assert!(b.delay(4).is_none());
        assert_eq!(b.ceiling(40), Duration::from_millis(300));
    }
}
