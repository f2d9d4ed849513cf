//! Counters shared by every clone of one retry layer.

use std::fmt;
use std::sync::Arc;

use crate::{
    metrics::{self, Counter, Meter},
    vocabulary::LayerKind,
};

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
    /// A layer below refused because the wait would exceed the caller's `max_wait`:
    /// the caller's patience is spent, so the refusal goes back at once.
    MaxWait,
}

impl GiveUp {
    /// A short lowercase name, as used in tracing events.
    pub fn as_str(&self) -> &'static str {
        match self {
            GiveUp::Attempts => "attempts",
            GiveUp::Deadline => "deadline",
            GiveUp::MaxDelay => "max_delay",
            GiveUp::Budget => "budget",
            GiveUp::MaxWait => "max_wait",
        }
    }
}

impl fmt::Display for GiveUp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug)]
struct Atomics {
    meter: Meter,
    calls: Counter,
    retries: Counter,
    not_cloneable: Counter,
    attempts: Counter,
    deadline: Counter,
    max_delay: Counter,
    budget: Counter,
    max_wait: Counter,
    held: Counter,
}

impl Default for Atomics {
    fn default() -> Self {
        let meter = Meter::new(LayerKind::Retry);
        let give_up = |reason: GiveUp| meter.counter_for(metrics::GIVE_UPS, reason.as_str());
        Atomics {
            calls: meter.counter(metrics::CALLS),
            retries: meter.counter(metrics::RETRIES),
            not_cloneable: meter.counter(metrics::NOT_CLONEABLE),
            attempts: give_up(GiveUp::Attempts),
            deadline: give_up(GiveUp::Deadline),
            max_delay: give_up(GiveUp::MaxDelay),
            budget: give_up(GiveUp::Budget),
            max_wait: give_up(GiveUp::MaxWait),
            held: meter.counter(metrics::HELD),
            meter,
        }
    }
}

/// What a [`RetryLayer`](super::RetryLayer) did, counted since it was built: a
/// snapshot, from `stats()` on the layer or its policy.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct RetryStats {
    /// Calls made through the layer (each counted once, however many attempts).
    pub calls: u64,
    /// Retries taken (attempts after the first).
    pub retries: u64,
    /// Calls sent once without retry because their request could not be cloned.
    pub not_cloneable: u64,
    /// Give-ups for every reason.
    pub give_ups: u64,
    /// Give-ups because `max_attempts` was reached.
    pub give_ups_attempts: u64,
    /// Give-ups because the next attempt would start past the deadline.
    pub give_ups_deadline: u64,
    /// Give-ups because the server asked for a wait longer than `max_delay`.
    pub give_ups_max_delay: u64,
    /// Give-ups because the retry budget was overdrawn.
    pub give_ups_budget: u64,
    /// Give-ups because a layer below refused past the caller's `max_wait`.
    pub give_ups_max_wait: u64,
    /// Times a call was held back by a layer below (nothing reached the upstream) and
    /// sent again within its deadline, without counting an attempt.
    pub held: u64,
}

impl RetryStats {
    /// Give-ups for one reason.
    pub fn give_ups_for(&self, reason: GiveUp) -> u64 {
        match reason {
            GiveUp::Attempts => self.give_ups_attempts,
            GiveUp::Deadline => self.give_ups_deadline,
            GiveUp::MaxDelay => self.give_ups_max_delay,
            GiveUp::Budget => self.give_ups_budget,
            GiveUp::MaxWait => self.give_ups_max_wait,
        }
    }
}

/// The live counters behind [`RetryStats`], shared by every clone of a layer, each also
/// reported to its metric (see [`crate::metrics`]).
#[derive(Clone, Default)]
pub(crate) struct Counters {
    inner: Arc<Atomics>,
}

impl Counters {
    /// A snapshot of the counters.
    pub(crate) fn snapshot(&self) -> RetryStats {
        let c = &*self.inner;
        let (attempts, deadline, max_delay, budget, max_wait) = (
            c.attempts.get(),
            c.deadline.get(),
            c.max_delay.get(),
            c.budget.get(),
            c.max_wait.get(),
        );
        RetryStats {
            calls: c.calls.get(),
            retries: c.retries.get(),
            not_cloneable: c.not_cloneable.get(),
            give_ups: attempts + deadline + max_delay + budget + max_wait,
            give_ups_attempts: attempts,
            give_ups_deadline: deadline,
            give_ups_max_delay: max_delay,
            give_ups_budget: budget,
            give_ups_max_wait: max_wait,
            held: c.held.get(),
        }
    }

    /// The labels the counters report with.
    pub(crate) fn meter(&self) -> &Meter {
        &self.inner.meter
    }

    fn counter(&self, reason: GiveUp) -> &Counter {
        match reason {
            GiveUp::Attempts => &self.inner.attempts,
            GiveUp::Deadline => &self.inner.deadline,
            GiveUp::MaxDelay => &self.inner.max_delay,
            GiveUp::Budget => &self.inner.budget,
            GiveUp::MaxWait => &self.inner.max_wait,
        }
    }

    pub(crate) fn record_held(&self) {
        self.inner.held.bump();
    }

    pub(crate) fn record_call(&self) {
        self.inner.calls.bump();
    }

    pub(crate) fn record_retry(&self) {
        self.inner.retries.bump();
    }

    pub(crate) fn record_not_cloneable(&self) {
        self.inner.not_cloneable.bump();
    }

    pub(crate) fn record_give_up(&self, reason: GiveUp) {
        self.counter(reason).bump();
    }
}

impl fmt::Debug for Counters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.snapshot(), f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clones_share_counters() {
        let a = Counters::default();
        let b = a.clone();
        a.record_call();
        b.record_retry();
        b.record_give_up(GiveUp::Budget);
        a.record_give_up(GiveUp::Deadline);
        a.record_not_cloneable();
        let (a, b) = (a.snapshot(), b.snapshot());
        assert_eq!(b.calls, 1);
        assert_eq!(a.retries, 1);
        assert_eq!(a.give_ups_for(GiveUp::Budget), 1);
        assert_eq!(a.give_ups_for(GiveUp::Attempts), 0);
        assert_eq!(b.give_ups, 2);
        assert_eq!(b.not_cloneable, 1);
    }
}
