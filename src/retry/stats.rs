//! Counters shared by every clone of one retry layer.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Why the layer stopped retrying a call and handed the last result back.
///
/// A result that is not retryable at all (a success, a plain 400) and a request that
/// cannot be cloned are not give-ups: nothing was given up.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GiveUp {
    /// `max_attempts` were made.
    Attempts,
    /// The next retry would end at or past the call's total `deadline`.
    Deadline,
    /// The server asked for a wait longer than `max_delay`.
    MaxDelay,
    /// The shared retry budget is overdrawn (a retry storm is being stopped).
    Budget,
}

impl GiveUp {
    /// A short lowercase name, as used in tracing events.
    pub fn as_str(&self) -> &'static str {
        match self {
            GiveUp::Attempts => "attempts",
            GiveUp::Deadline => "deadline",
            GiveUp::MaxDelay => "max_delay",
            GiveUp::Budget => "budget",
        }
    }
}

impl fmt::Display for GiveUp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Default)]
struct Counters {
    calls: AtomicU64,
    retries: AtomicU64,
    not_cloneable: AtomicU64,
    attempts: AtomicU64,
    deadline: AtomicU64,
    max_delay: AtomicU64,
    budget: AtomicU64,
}

/// A cheap handle on the counters of one [`RetryLayer`](super::RetryLayer).
///
/// Every clone of the layer, of the services it made and of this handle reads and
/// writes the same counters.
#[derive(Clone, Default)]
pub struct RetryStats {
    inner: Arc<Counters>,
}

impl RetryStats {
    /// Calls made through the layer (each counted once, however many attempts).
    pub fn calls(&self) -> u64 {
        self.inner.calls.load(Ordering::Relaxed)
    }

    /// Retries taken (attempts after the first).
    pub fn retries(&self) -> u64 {
        self.inner.retries.load(Ordering::Relaxed)
    }

    /// Calls sent once without retry because their request could not be cloned.
    pub fn not_cloneable(&self) -> u64 {
        self.inner.not_cloneable.load(Ordering::Relaxed)
    }

    /// Give-ups for every reason.
    pub fn give_ups(&self) -> u64 {
        [
            GiveUp::Attempts,
            GiveUp::Deadline,
            GiveUp::MaxDelay,
            GiveUp::Budget,
        ]
        .iter()
        .map(|r| self.give_ups_for(*r))
        .sum()
    }

    /// Give-ups for one reason.
    pub fn give_ups_for(&self, reason: GiveUp) -> u64 {
        self.counter(reason).load(Ordering::Relaxed)
    }

    fn counter(&self, reason: GiveUp) -> &AtomicU64 {
        match reason {
            GiveUp::Attempts => &self.inner.attempts,
            GiveUp::Deadline => &self.inner.deadline,
            GiveUp::MaxDelay => &self.inner.max_delay,
            GiveUp::Budget => &self.inner.budget,
        }
    }

    pub(crate) fn record_call(&self) {
        self.inner.calls.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn record_retry(&self) {
        self.inner.retries.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn record_not_cloneable(&self) {
        self.inner.not_cloneable.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn record_give_up(&self, reason: GiveUp) {
        self.counter(reason).fetch_add(1, Ordering::Relaxed);
    }
}

impl fmt::Debug for RetryStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryStats")
            .field("calls", &self.calls())
            .field("retries", &self.retries())
            .field("not_cloneable", &self.not_cloneable())
            .field("give_ups_attempts", &self.give_ups_for(GiveUp::Attempts))
            .field("give_ups_deadline", &self.give_ups_for(GiveUp::Deadline))
            .field("give_ups_max_delay", &self.give_ups_for(GiveUp::MaxDelay))
            .field("give_ups_budget", &self.give_ups_for(GiveUp::Budget))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clones_share_counters() {
        let a = RetryStats::default();
        let b = a.clone();
        a.record_call();
        b.record_retry();
        b.record_give_up(GiveUp::Budget);
        a.record_give_up(GiveUp::Deadline);
        a.record_not_cloneable();
        assert_eq!(b.calls(), 1);
        assert_eq!(a.retries(), 1);
        assert_eq!(a.give_ups_for(GiveUp::Budget), 1);
        assert_eq!(a.give_ups_for(GiveUp::Attempts), 0);
        assert_eq!(b.give_ups(), 2);
        assert_eq!(b.not_cloneable(), 1);
    }
}
