//! Counters of what the limiter did: a cheap shared handle of atomics.

use std::{
    fmt,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
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

/// The live counters behind [`RateLimitStats`]: a cheap shared handle of atomics.
#[derive(Clone, Default)]
pub(crate) struct Stats {
    inner: Arc<Counters>,
}

#[derive(Default)]
struct Counters {
    admitted: AtomicU64,
    bypassed: AtomicU64,
    waited: AtomicU64,
    wait_total_nanos: AtomicU64,
    wait_max_nanos: AtomicU64,
    rejected: AtomicU64,
    store_errors: AtomicU64,
}

impl Stats {
    /// A snapshot of the counters.
    pub(crate) fn snapshot(&self) -> RateLimitStats {
        let c = &*self.inner;
        let ms = |n: &AtomicU64| n.load(Ordering::Relaxed) / 1_000_000;
        RateLimitStats {
            admitted: c.admitted.load(Ordering::Relaxed),
            bypassed: c.bypassed.load(Ordering::Relaxed),
            waited: c.waited.load(Ordering::Relaxed),
            total_wait_ms: ms(&c.wait_total_nanos),
            max_wait_ms: ms(&c.wait_max_nanos),
            rejected: c.rejected.load(Ordering::Relaxed),
            store_errors: c.store_errors.load(Ordering::Relaxed),
        }
    }

    #[cfg(test)]
    fn admitted(&self) -> u64 {
        self.inner.admitted.load(Ordering::Relaxed)
    }

    /// Requests that skipped the limiter: the bypass predicate matched or they cost 0.
    #[cfg(test)]
    fn bypassed(&self) -> u64 {
        self.inner.bypassed.load(Ordering::Relaxed)
    }

    /// Admitted requests that were held back first: denied cells, or queued behind
    /// other waiters for their key. A request admitted at its first attempt is not
    /// counted, however long its store's answer took.
    #[cfg(test)]
    fn waited(&self) -> u64 {
        self.inner.waited.load(Ordering::Relaxed)
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
        self.inner.rejected.load(Ordering::Relaxed)
    }

    /// Requests failed because the store could not decide.
    #[cfg(test)]
    fn store_errors(&self) -> u64 {
        self.inner.store_errors.load(Ordering::Relaxed)
    }

    /// Counts an admission; `waited` is the wait of a request that was held back first,
    /// `None` for one admitted at its first attempt.
    pub(crate) fn record_admitted(&self, waited: Option<Duration>) {
        let c = &*self.inner;
        c.admitted.fetch_add(1, Ordering::Relaxed);
        if let Some(waited) = waited {
            let nanos = u64::try_from(waited.as_nanos()).unwrap_or(u64::MAX);
            c.waited.fetch_add(1, Ordering::Relaxed);
            c.wait_total_nanos.fetch_add(nanos, Ordering::Relaxed);
            c.wait_max_nanos.fetch_max(nanos, Ordering::Relaxed);
        }
    }

    pub(crate) fn record_bypassed(&self) {
        self.inner.bypassed.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn record_rejected(&self) {
        self.inner.rejected.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn record_store_error(&self) {
        self.inner.store_errors.fetch_add(1, Ordering::Relaxed);
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
        a.record_rejected();
        assert_eq!(b.admitted(), 3);
        assert_eq!(b.waited(), 2);
        assert_eq!(b.total_wait(), Duration::from_millis(40));
        assert_eq!(b.max_wait(), Duration::from_millis(30));
        assert_eq!(a.bypassed(), 1);
        assert_eq!(a.rejected(), 1);
        assert_eq!(a.store_errors(), 0);
    }
}
