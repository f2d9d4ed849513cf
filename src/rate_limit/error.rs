//! The rate limiter's errors.
//!
//! Every error the layer returns in wait mode is one of these, boxed into a
//! [`BoxError`](crate::BoxError) and downcastable back:
//!
//! - [`MaxWaitExceeded`]: admission would take longer than `max_wait`; returned at
//!   once, without sleeping, with the earliest time the call could go;
//! - [`CostExceedsBurst`]: the request costs more cells than the bucket holds, so it
//!   can never be admitted;
//! - [`StoreError`](super::StoreError): the limiter's store failed.
//!
//! [`ConfigError`] is returned by the builder for a bad quota.

use std::{error::Error, fmt, time::Duration};

use tokio::time::Instant;

use crate::{classify::Verdict, key::Key};

/// The verdict of this module's errors, for [`crate::classify::verdict_of_error`]: a
/// [`MaxWaitExceeded`] is rate-limited with the wait it would have needed, a
/// [`CostExceedsBurst`] is a failure (waiting never cures it); other errors are not ours.
pub(crate) fn verdict(err: &(dyn Error + 'static)) -> Option<Verdict> {
    if let Some(e) = err.downcast_ref::<MaxWaitExceeded>() {
        return Some(Verdict::rate_limited(Some(e.wait())));
    }
    err.is::<CostExceedsBurst>().then_some(Verdict::Failure)
}

/// A bad rate limiter configuration, returned by the builder (never a panic).
///
/// [`field`](ConfigError::field) names the builder call at fault, e.g. `per_second`,
/// `per_minute`, `per_period`, `burst` or `rate`; the message names it too.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    field: &'static str,
    reason: String,
}

impl ConfigError {
    pub(crate) fn new(field: &'static str, reason: impl Into<String>) -> Self {
        ConfigError {
            field,
            reason: reason.into(),
        }
    }

    /// The configuration field (builder method) at fault.
    pub fn field(&self) -> &'static str {
        self.field
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid rate limit configuration: `{}` {}",
            self.field, self.reason
        )
    }
}

impl Error for ConfigError {}

/// Admission would take longer than the layer's `max_wait`.
///
/// Returned at once, without sleeping, as soon as the wait is known to be too long:
/// for a new request, the wait is the limiter's answer plus the cells already queued
/// ahead of it for the same key.
/// [`classify::verdict_of_error`](crate::classify::verdict_of_error) reads it as
/// rate-limited with [`wait`](MaxWaitExceeded::wait) as the retry hint.
#[derive(Debug, Clone)]
pub struct MaxWaitExceeded {
    key: Key,
    wait: Duration,
    earliest: Instant,
    max_wait: Duration,
}

impl MaxWaitExceeded {
    pub(crate) fn new(key: Key, wait: Duration, earliest: Instant, max_wait: Duration) -> Self {
        MaxWaitExceeded {
            key,
            wait,
            earliest,
            max_wait,
        }
    }

    /// The key whose bucket is exhausted.
    pub fn key(&self) -> &Key {
        &self.key
    }

    /// How long the request would have had to wait, from the moment it was refused.
    pub fn wait(&self) -> Duration {
        self.wait
    }

    /// The earliest time the request could have been admitted (`tokio` time).
    pub fn earliest(&self) -> Instant {
        self.earliest
    }

    /// The layer's `max_wait`, which [`wait`](MaxWaitExceeded::wait) exceeds.
    pub fn max_wait(&self) -> Duration {
        self.max_wait
    }
}

impl fmt::Display for MaxWaitExceeded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "rate limited: key \"{}\" needs a wait of {:?}, more than max_wait {:?}",
            self.key, self.wait, self.max_wait
        )
    }
}

impl Error for MaxWaitExceeded {}

/// A request costs more cells than the bucket's burst, so it can never be admitted.
///
/// Returned at once; it is a configuration or input problem, not something to wait out.
#[derive(Debug, Clone)]
pub struct CostExceedsBurst {
    key: Key,
    cost: u32,
    burst: u32,
}

impl CostExceedsBurst {
    pub(crate) fn new(key: Key, cost: u32, burst: u32) -> Self {
        CostExceedsBurst { key, cost, burst }
    }

    /// The request's key.
    pub fn key(&self) -> &Key {
        &self.key
    }

    /// The request's cost in cells.
    pub fn cost(&self) -> u32 {
        self.cost
    }

    /// The bucket's burst: the most cells one request can ever take.
    pub fn burst(&self) -> u32 {
        self.burst
    }
}

impl fmt::Display for CostExceedsBurst {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "rate limit: a request for key \"{}\" costs {} cells but the burst is {}, so it can never be admitted",
            self.key, self.cost, self.burst
        )
    }
}

impl Error for CostExceedsBurst {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::{verdict_of_error, Verdict};
    use crate::BoxError;

    #[tokio::test(start_paused = true)]
    async fn max_wait_exceeded_is_a_rate_limited_verdict_with_its_wait() {
        let now = Instant::now();
        let err: BoxError = Box::new(MaxWaitExceeded::new(
            Key::from("bot1"),
            Duration::from_millis(1500),
            now + Duration::from_millis(1500),
            Duration::from_secs(1),
        ));
        assert_eq!(
            verdict(&*err),
            Some(Verdict::rate_limited(Some(Duration::from_millis(1500))))
        );
        assert_eq!(
            verdict_of_error(&*err),
            Verdict::rate_limited(Some(Duration::from_millis(1500)))
        );
        let shown = err.to_string();
        assert!(shown.contains("bot1"), "{shown}");
        assert!(shown.contains("1.5s"), "{shown}");
    }

    #[test]
    fn cost_exceeds_burst_is_a_failure_not_worth_a_retry() {
        let err: crate::BoxError = Box::new(CostExceedsBurst::new(Key::from("*"), 9, 5));
        assert_eq!(
            crate::classify::verdict_of_error(&*err),
            crate::Verdict::Failure
        );
    }

    #[test]
    fn config_errors_are_not_judged_and_cost_errors_carry_no_hint() {
        let err = CostExceedsBurst::new(Key::from("k"), 9, 5);
        assert_eq!(verdict(&err), Some(Verdict::Failure));
        let shown = err.to_string();
        assert!(shown.contains("\"k\"") && shown.contains('9') && shown.contains('5'));
        let cfg = ConfigError::new("burst", "must be at least 1");
        assert_eq!(verdict(&cfg), None);
        assert!(cfg.to_string().contains("`burst`"));
    }
}
