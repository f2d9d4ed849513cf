//! A validated GCRA quota: one cell every `replenish_interval`, at most `burst` at once.

use std::{num::NonZeroU32, time::Duration};

use super::error::ConfigError;

/// The longest window (`replenish_interval × burst`) a quota may have: 100 years.
/// Longer windows would overflow governor's nanosecond arithmetic.
const MAX_WINDOW: Duration = Duration::from_secs(100 * 365 * 24 * 60 * 60);

/// A rate limit quota: one cell replenished every
/// [`replenish_interval`](Quota::replenish_interval), at most [`burst`](Quota::burst)
/// cells available at once.
///
/// A fresh (or fully rested) key can take `burst` cells at once; after that, one cell
/// per interval. So over any window of length `d` starting on a rested key, at most
/// `burst + floor(d / replenish_interval)` cells are admitted.
///
/// ```
/// use std::time::Duration;
/// use ratewise::rate_limit::Quota;
///
/// let q = Quota::per_second(10)?.with_burst(5)?;
/// assert_eq!(q.replenish_interval(), Duration::from_millis(100));
/// assert_eq!(q.burst(), 5);
/// assert_eq!(q.window(), Duration::from_millis(500));
///
/// let err = Quota::per_second(0).unwrap_err();
/// assert_eq!(err.field(), "per_second");
/// # Ok::<(), ratewise::rate_limit::ConfigError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    replenish_interval: Duration,
    burst: NonZeroU32,
}

impl Quota {
    /// `n` cells per second, with a burst of `n`. Error (field `per_second`) if `n` is 0.
    pub fn per_second(n: u32) -> Result<Quota, ConfigError> {
        Self::per_n(n, Duration::from_secs(1), "per_second")
    }

    /// `n` cells per minute, with a burst of `n`. Error (field `per_minute`) if `n` is 0.
    pub fn per_minute(n: u32) -> Result<Quota, ConfigError> {
        Self::per_n(n, Duration::from_secs(60), "per_minute")
    }

    /// One cell every `period`, with a burst of 1. Error (field `per_period`) if
    /// `period` is zero or absurdly long.
    pub fn per_period(period: Duration) -> Result<Quota, ConfigError> {
        if period.is_zero() {
            return Err(ConfigError::new("per_period", "must be longer than zero"));
        }
        Self::checked(period, NonZeroU32::MIN, "per_period")
    }

    /// The same rate with a burst of `burst` cells. Error (field `burst`) if `burst` is
    /// 0 or the window (`replenish_interval × burst`) would exceed 100 years.
    pub fn with_burst(self, burst: u32) -> Result<Quota, ConfigError> {
        let Some(burst) = NonZeroU32::new(burst) else {
            return Err(ConfigError::new("burst", "must be at least 1 (got 0)"));
        };
        Self::checked(self.replenish_interval, burst, "burst")
    }

    /// How long one cell takes to replenish.
    pub fn replenish_interval(&self) -> Duration {
        self.replenish_interval
    }

    /// The most cells available at once (and the most one request can cost).
    pub fn burst(&self) -> u32 {
        self.burst.get()
    }

    /// How long an exhausted bucket takes to fill up completely:
    /// `replenish_interval × burst`.
    pub fn window(&self) -> Duration {
        self.replenish_interval * self.burst.get()
    }

    pub(crate) fn to_governor(self) -> governor::Quota {
        // `checked` guarantees a non-zero interval.
        governor::Quota::with_period(self.replenish_interval)
            .unwrap_or_else(|| governor::Quota::per_second(NonZeroU32::MAX))
            .allow_burst(self.burst)
    }

    fn per_n(n: u32, unit: Duration, field: &'static str) -> Result<Quota, ConfigError> {
        let Some(n) = NonZeroU32::new(n) else {
            return Err(ConfigError::new(field, "must be at least 1 (got 0)"));
        };
        let interval = unit / n.get();
        if interval.is_zero() {
            return Err(ConfigError::new(
                field,
                "is too fast (under one cell per nanosecond)",
            ));
        }
        Self::checked(interval, n, field)
    }

    fn checked(
        replenish_interval: Duration,
        burst: NonZeroU32,
        field: &'static str,
    ) -> Result<Quota, ConfigError> {
        match replenish_interval.checked_mul(burst.get()) {
            Some(window) if window <= MAX_WINDOW => Ok(Quota {
                replenish_interval,
                burst,
            }),
            _ => Err(ConfigError::new(
                field,
                "gives a window (replenish interval × burst) longer than 100 years",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_and_bursts() {
        let q = Quota::per_minute(30).unwrap();
        assert_eq!(q.replenish_interval(), Duration::from_secs(2));
        assert_eq!(q.burst(), 30);
        let q = Quota::per_period(Duration::from_secs(3)).unwrap();
        assert_eq!(q.burst(), 1);
        let g = q.with_burst(4).unwrap().to_governor();
        assert_eq!(g.replenish_interval(), Duration::from_secs(3));
        assert_eq!(g.burst_size().get(), 4);
    }

    #[test]
    fn invalid_quotas_name_their_field() {
        assert_eq!(Quota::per_second(0).unwrap_err().field(), "per_second");
        assert_eq!(Quota::per_minute(0).unwrap_err().field(), "per_minute");
        assert_eq!(
            Quota::per_period(Duration::ZERO).unwrap_err().field(),
            "per_period"
        );
        let q = Quota::per_second(1).unwrap();
        assert_eq!(q.with_burst(0).unwrap_err().field(), "burst");
        let slow = Quota::per_period(Duration::from_secs(365 * 24 * 60 * 60)).unwrap();
        assert_eq!(slow.with_burst(1000).unwrap_err().field(), "burst");
    }
}
