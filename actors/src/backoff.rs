//! Capped exponential back-off with jitter.
//!
//! The delay before attempt `n` (counting from 0) is drawn uniformly from `[d/2, d]`, where
//! `d = min(max, base * 2^n)`. The random half keeps a fleet that failed together from retrying
//! together; the fixed half keeps the delay from collapsing to zero.

use std::time::Duration;

/// Why a back-off configuration is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BackoffError {
    /// The base delay is zero.
    #[error("back-off base delay must be above zero")]
    ZeroBase,
    /// The cap is below the base.
    #[error("back-off maximum {max:?} is below the base delay {base:?}; raise the maximum")]
    MaxBelowBase {
        /// The base delay.
        base: Duration,
        /// The cap.
        max: Duration,
    },
}

/// Validated base delay and cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackoffConfig {
    base: Duration,
    max: Duration,
}

impl BackoffConfig {
    /// Validates a base delay and a cap.
    pub fn new(base: Duration, max: Duration) -> Result<Self, BackoffError> {
        if base.is_zero() {
            return Err(BackoffError::ZeroBase);
        }
        if max < base {
            return Err(BackoffError::MaxBelowBase { base, max });
        }
        Ok(Self { base, max })
    }

    /// The base delay.
    pub fn base(&self) -> Duration {
        self.base
    }

    /// The cap.
    pub fn max(&self) -> Duration {
        self.max
    }
}

/// Back-off state for one retried operation.
#[derive(Debug, Clone)]
pub struct Backoff {
    config: BackoffConfig,
    attempt: u32,
}

impl Backoff {
    /// Starts at attempt 0.
    pub fn new(config: BackoffConfig) -> Self {
        Self { config, attempt: 0 }
    }

    /// Number of delays handed out since the last reset.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// Returns the next delay; `unit` is a random number in `[0, 1)`.
    pub fn next_delay(&mut self, unit: f64) -> Duration {
        debug_assert!((0.0..1.0).contains(&unit), "unit {unit} outside [0, 1)");
        let unit = unit.clamp(0.0, 1.0);
        let exponent = self.attempt.min(32);
        let ceiling = self
            .config
            .base
            .checked_mul(1u32 << exponent.min(31))
            .unwrap_or(self.config.max)
            .min(self.config.max);
        self.attempt = self.attempt.saturating_add(1);
        let half = ceiling / 2;
        let delay = half + half.mul_f64(unit);
        debug_assert!(delay <= self.config.max);
        delay
    }

    /// Starts over from the base delay, after the operation has been healthy for a while.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn config() -> BackoffConfig {
        BackoffConfig::new(Duration::from_millis(100), Duration::from_secs(10)).unwrap()
    }

    #[test]
    fn grows_then_caps() {
        let mut backoff = Backoff::new(config());
        let ceilings: Vec<Duration> = (0..12).map(|_| backoff.next_delay(0.999_999)).collect();
        assert!(ceilings[0] <= Duration::from_millis(100));
        assert!(ceilings[3] > Duration::from_millis(700));
        assert!(ceilings[11] <= Duration::from_secs(10));
        assert!(ceilings[11] > Duration::from_millis(9_900));
    }

    #[test]
    fn reset_starts_over() {
        let mut backoff = Backoff::new(config());
        for _ in 0..5 {
            backoff.next_delay(0.5);
        }
        backoff.reset();
        assert!(backoff.next_delay(0.999) <= Duration::from_millis(100));
    }

    #[test]
    fn rejects_bad_config() {
        assert_eq!(
            BackoffConfig::new(Duration::ZERO, Duration::from_secs(1)),
            Err(BackoffError::ZeroBase)
        );
        let error = BackoffConfig::new(Duration::from_secs(2), Duration::from_secs(1)).unwrap_err();
        assert!(error.to_string().contains("raise the maximum"), "{error}");
    }

    proptest! {
        #[test]
        fn delay_within_half_and_cap(base_ms in 1u64..10_000, extra_ms in 0u64..100_000, attempts in 0usize..100, unit in 0.0f64..1.0) {
            let config = BackoffConfig::new(Duration::from_millis(base_ms), Duration::from_millis(base_ms + extra_ms)).unwrap();
            let mut backoff = Backoff::new(config);
            for _ in 0..attempts {
                backoff.next_delay(unit);
            }
            let delay = backoff.next_delay(unit);
            prop_assert!(delay <= config.max());
            prop_assert!(delay >= config.base().min(config.max()) / 2 - Duration::from_nanos(1));
        }
    }
}
