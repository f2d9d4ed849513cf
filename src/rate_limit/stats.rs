//! Counters of what the limiter did: a cheap shared handle of atomics.

use std::{
    fmt,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

/// What a rate limiter did, counted since it was built.
///
/// A cheap [`Clone`] handle: every clone, and every layer and service sharing the same
/// [`RateLimiter`](super::RateLimiter), reads and bumps the same atomic counters.
#[derive(Clone, Default)]
pub struct Stats {
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
    /// Requests admitted by the limiter (after waiting or not); bypassed requests are
    /// not counted here.
    pub fn admitted(&self) -> u64 {
        self.inner.admitted.load(Ordering::Relaxed)
    }

    /// Requests that skipped the limiter: the bypass predicate matched or they cost 0.
    pub fn bypassed(&self) -> u64 {
        self.inner.bypassed.load(Ordering::Relaxed)
    }

    /// Admitted requests that were held back first: denied cells, or queued behind
    /// other waiters for their key. A request admitted at its first attempt is not
    /// counted, however long its store's answer took.
    pub fn waited(&self) -> u64 {
        self.inner.waited.load(Ordering::Relaxed)
    }

    /// The sum of the waits of the admitted requests counted by [`waited`](Stats::waited),
    /// each from its first poll to its admission.
    pub fn total_wait(&self) -> Duration {
        Duration::from_nanos(self.inner.wait_total_nanos.load(Ordering::Relaxed))
    }

    /// The longest wait of a request counted by [`waited`](Stats::waited).
    pub fn max_wait(&self) -> Duration {
        Duration::from_nanos(self.inner.wait_max_nanos.load(Ordering::Relaxed))
    }

    /// Requests refused: `429` answers in reject mode, `max_wait` and cost refusals in
    /// wait mode.
    pub fn rejected(&self) -> u64 {
        self.inner.rejected.load(Ordering::Relaxed)
    }

    /// Requests failed because the store could not decide.
    pub fn store_errors(&self) -> u64 {
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
        f.debug_struct("Stats")
            .field("admitted", &self.admitted())
            .field("bypassed", &self.bypassed())
            .field("waited", &self.waited())
            .field("total_wait", &self.total_wait())
            .field("max_wait", &self.max_wait())
            .field("rejected", &self.rejected())
            .field("store_errors", &self.store_errors())
            .finish()
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
