//! Counters of what the limiter did: a cheap shared handle of atomics.

use std::{
    fmt,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use crate::{
    metrics::{self, Counter, Meter},
    vocabulary::LayerKind,
};

/// What a rate limiter did, counted since it was built: a snapshot, from `stats()` on
/// the layer, its services or its [`RateLimiter`](super::RateLimiter).
///
/// Counters only grow; they cover every layer and service sharing the limiter.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct RateLimitStats {
    /// Requests admitted (after waiting or not); bypassed requests are not counted.
    pub admitted: u64,
    /// Requests that skipped the limiter: they cost 0.
    pub bypassed: u64,
    /// Admitted requests that were held back first: denied cells, or queued behind
    /// other waiters for their key.
    pub waited: u64,
    /// The sum of the waits of the requests counted by `waited`, in milliseconds.
    pub total_wait_ms: u64,
    /// The longest wait of a request counted by `waited`, in milliseconds.
    pub max_wait_ms: u64,
    /// Requests refused: `429` answers in reject mode, `max_wait` and cost refusals in
    /// wait mode.
    pub rejected: u64,
    /// Requests failed because the store could not decide.
    pub store_errors: u64,
}

/// The live counters behind [`RateLimitStats`]: a cheap shared handle of atomics, each
/// also reported to its metric (see [`crate::metrics`]).
#[derive(Clone)]
pub(crate) struct Stats {
    inner: Arc<Counters>,
}

/// Why the limiter refused a request: the `reason` label of its metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Rejection {
    /// Wait mode: the wait exceeds `max_wait` (or the call's deadline).
    MaxWait,
    /// The request costs more than the burst.
    Cost,
    /// Reject mode: over the limit, answered `429`.
    OverLimit,
}

struct Counters {
    meter: Meter,
    admitted: Counter,
    bypassed: Counter,
    waited: Counter,
    wait_total_nanos: AtomicU64,
    wait_max_nanos: AtomicU64,
    rejected_max_wait: Counter,
    rejected_cost: Counter,
    rejected_over_limit: Counter,
    store_errors: Counter,
}

impl Default for Stats {
    fn default() -> Self {
        let meter = Meter::new(LayerKind::RateLimit);
        Stats {
            inner: Arc::new(Counters {
                admitted: meter.counter(metrics::ADMITTED),
                bypassed: meter.counter(metrics::BYPASSED),
                waited: meter.counter(metrics::WAITED),
                wait_total_nanos: AtomicU64::new(0),
                wait_max_nanos: AtomicU64::new(0),
                rejected_max_wait: meter.counter_for(metrics::REJECTED, "max_wait"),
                rejected_cost: meter.counter_for(metrics::REJECTED, "cost_exceeds_burst"),
                rejected_over_limit: meter.counter_for(metrics::REJECTED, "over_limit"),
                store_errors: meter.counter(metrics::STORE_ERRORS),
                meter,
            }),
        }
    }
}

impl Stats {
    /// A snapshot of the counters.
    pub(crate) fn snapshot(&self) -> RateLimitStats {
        let c = &*self.inner;
        let ms = |n: &AtomicU64| n.load(Ordering::Relaxed) / 1_000_000;
        RateLimitStats {
            admitted: c.admitted.get(),
            bypassed: c.bypassed.get(),
            waited: c.waited.get(),
            total_wait_ms: ms(&c.wait_total_nanos),
            max_wait_ms: ms(&c.wait_max_nanos),
            rejected: c.rejected_max_wait.get()
                + c.rejected_cost.get()
                + c.rejected_over_limit.get(),
            store_errors: c.store_errors.get(),
        }
    }

    /// The labels the counters report with.
    pub(crate) fn meter(&self) -> &Meter {
        &self.inner.meter
    }

    #[cfg(test)]
    fn admitted(&self) -> u64 {
        self.inner.admitted.get()
    }

    /// Requests that skipped the limiter: the bypass predicate matched or they cost 0.
    #[cfg(test)]
    fn bypassed(&self) -> u64 {
        self.inner.bypassed.get()
    }

    /// Admitted requests that were held back first: denied cells, or queued behind
    /// other waiters for their key. A request admitted at its first attempt is not
    /// counted, however long its store's answer took.
    #[cfg(test)]
    fn waited(&self) -> u64 {
        self.inner.waited.get()
    }

    /// The sum of the waits of the admitted requests counted by [`waited`](Stats::waited),
    /// each from its first poll to its admission.
    #[cfg(test)]
    fn total_wait(&self) -> Duration {
        Duration::from_nanos(self.inner.wait_total_nanos.load(Ordering::Relaxed))
    }

    /// The longest wait of a request counted by [`waited`](Stats::waited).
    #[cfg(test)]
    fn max_wait(&self) -> Duration {
        Duration::from_nanos(self.inner.wait_max_nanos.load(Ordering::Relaxed))
    }

    /// Requests refused: `429` answers in reject mode, `max_wait` and cost refusals in
    /// wait mode.
    #[cfg(test)]
    fn rejected(&self) -> u64 {
        self.snapshot().rejected
    }

    /// Requests failed because the store could not decide.
    #[cfg(test)]
    fn store_errors(&self) -> u64 {
        self.inner.store_errors.get()
    }

    /// Counts an admission; `waited` is the wait of a request that was held back first,
    /// `None` for one admitted at its first attempt.
    pub(crate) fn record_admitted(&self, waited: Option<Duration>) {
        let c = &*self.inner;
        c.admitted.bump();
        if let Some(waited) = waited {
            let nanos = u64::try_from(waited.as_nanos()).unwrap_or(u64::MAX);
            c.waited.bump();
            c.wait_total_nanos.fetch_add(nanos, Ordering::Relaxed);
            c.wait_max_nanos.fetch_max(nanos, Ordering::Relaxed);
            c.meter.record_seconds(metrics::WAIT_SECONDS, waited);
        }
    }

    pub(crate) fn record_bypassed(&self) {
        self.inner.bypassed.bump();
    }

    pub(crate) fn record_rejected(&self, why: Rejection) {
        let c = &*self.inner;
        match why {
            Rejection::MaxWait => c.rejected_max_wait.bump(),
            Rejection::Cost => c.rejected_cost.bump(),
            Rejection::OverLimit => c.rejected_over_limit.bump(),
        }
    }

    pub(crate) fn record_store_error(&self) {
        self.inner.store_errors.bump();
    }
}

impl fmt::Debug for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.snapshot(), f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clones_share_counters() {
        let a = Stats::default();
        let b = a.clone();
        a.record_admitted(None);
        b.record_admitted(Some(Duration::from_millis(30)));
        a.record_admitted(Some(Duration::from_millis(10)));
        b.record_bypassed();
        a.record_rejected(Rejection::OverLimit);
        assert_eq!(b.admitted(), 3);
        assert_eq!(b.waited(), 2);
        assert_eq!(b.total_wait(), Duration::from_millis(40));
        assert_eq!(b.max_wait(), Duration::from_millis(30));
        assert_eq!(a.bypassed(), 1);
        assert_eq!(a.rejected(), 1);
        assert_eq!(a.store_errors(), 0);
    }
}
