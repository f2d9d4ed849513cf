//! A validated GCRA quota: one cell every `replenish_interval`, at most `burst` at once.

use std::{num::NonZeroU32, time::Duration};

use crate::vocabulary::{ConfigError, LayerKind};

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
/// A zero rate cannot be written: the constructors take [`NonZeroU32`], as governor's
/// do, and are `const`.
///
/// ```
/// use std::{num::NonZeroU32, time::Duration};
/// use ratewise::rate_limit::Quota;
///
/// const TEN: NonZeroU32 = NonZeroU32::new(10).unwrap();
/// const Q: Quota = Quota::per_second(TEN);
/// let q = Q.with_burst(NonZeroU32::new(5).unwrap())?;
/// assert_eq!(q.replenish_interval(), Duration::from_millis(100));
/// assert_eq!(q.burst(), 5);
/// assert_eq!(q.window(), Duration::from_millis(500));
///
/// let err = Quota::per_period(Duration::ZERO).unwrap_err();
/// assert_eq!(err.field(), "per_period");
/// # Ok::<(), ratewise::ConfigError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    replenish_interval: Duration,
    burst: NonZeroU32,
}

impl Quota {
    /// `n` cells per second, with a burst of `n`. (Above 10⁹ per second the interval
    /// stays at one nanosecond.)
    pub const fn per_second(n: NonZeroU32) -> Quota {
        Self::per_n(n, 1_000_000_000)
    }

    /// `n` cells per minute, with a burst of `n`.
    pub const fn per_minute(n: NonZeroU32) -> Quota {
        Self::per_n(n, 60_000_000_000)
    }

    /// One cell every `period`, with a burst of 1. Error (field `per_period`) if
    /// `period` is zero or longer than 100 years.
    pub fn per_period(period: Duration) -> Result<Quota, ConfigError> {
        if period.is_zero() {
            return Err(config_error("per_period", "must be longer than zero"));
        }
        Self::checked(period, NonZeroU32::MIN, "per_period")
    }

    /// The same rate with a burst of `burst` cells. Error (field `burst`) if the window
    /// (`replenish_interval × burst`) would exceed 100 years.
    pub fn with_burst(self, burst: NonZeroU32) -> Result<Quota, ConfigError> {
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

    const fn per_n(n: NonZeroU32, unit_nanos: u64) -> Quota {
        let nanos = unit_nanos / n.get() as u64;
        Quota {
            replenish_interval: Duration::from_nanos(if nanos == 0 { 1 } else { nanos }),
            burst: n,
        }
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
            _ => Err(config_error(
                field,
                "gives a window (replenish interval × burst) longer than 100 years",
            )),
        }
    }
}

/// A rate limit [`ConfigError`] on `field`.
pub(crate) fn config_error(field: &'static str, reason: &'static str) -> ConfigError {
    ConfigError::new(LayerKind::RateLimit, field, reason)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nz(n: u32) -> NonZeroU32 {
        NonZeroU32::new(n).unwrap()
    }

    #[test]
    fn rates_and_bursts() {
        let q = Quota::per_minute(nz(30));
        assert_eq!(q.replenish_interval(), Duration::from_secs(2));
        assert_eq!(q.burst(), 30);
        let q = Quota::per_period(Duration::from_secs(3)).unwrap();
        assert_eq!(q.burst(), 1);
        let g = q.with_burst(nz(4)).unwrap().to_governor();
        assert_eq!(g.replenish_interval(), Duration::from_secs(3));
        assert_eq!(g.burst_size().get(), 4);
        let fastest = Quota::per_second(NonZeroU32::MAX);
        assert_eq!(fastest.replenish_interval(), Duration::from_nanos(1));
    }

    #[test]
    fn invalid_quotas_name_their_field() {
        assert_eq!(
            Quota::per_period(Duration::ZERO).unwrap_err().field(),
            "per_period"
        );
        let slow = Quota::per_period(Duration::from_secs(365 * 24 * 60 * 60)).unwrap();
        assert_eq!(slow.with_burst(nz(1000)).unwrap_err().field(), "burst");
    }
}
