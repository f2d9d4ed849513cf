//! The pool's [`PoolHandle`]: each backend's state and counters.

use std::{fmt, sync::Arc};

use crate::{
    cooldown::{CooldownHandle, KeyState},
    key::Key,
    metrics::{self, Counter, Meter},
    vocabulary::LayerKind,
};

/// A snapshot of one backend: its cooldown state and its counters.
///
/// Counters only grow; they cover every clone of the pool.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct BackendStats {
    /// The backend's name.
    pub name: Key,
    /// Its priority group: 0 for primary, 1 for fallback, and so on.
    pub group: u32,
    /// Where its cooldown stands now: ok, cooling until an instant, or half-open.
    pub state: KeyState,
    /// Requests the pool sent to it.
    pub requests: u64,
    /// Of those, answers judged a success.
    pub successes: u64,
    /// Of those, answers (or errors) judged rate-limited.
    pub rate_limited: u64,
    /// Of those, every other answer or error (transient, failure).
    pub failed: u64,
    /// Calls that went on to another backend after this one's answer was set aside
    /// (counted when the next backend is called, not when no other could be reached).
    pub failovers: u64,
    /// Calls that passed this backend over because it was cooling or half-open with a
    /// probe in flight (each call counted once).
    pub skipped_cooling: u64,
    /// Calls that passed this backend over because it had no capacity (`poll_ready`
    /// was `Pending`; each call counted once).
    pub skipped_busy: u64,
}

/// Pool-wide counters, from [`PoolHandle::totals`].
#[non_exhaustive]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct PoolStats {
    /// Calls made to the pool.
    pub calls: u64,
    /// Times a call went on from one backend to another (a call can count several;
    /// counted when the next backend is called).
    pub failovers: u64,
    /// Calls that waited because no candidate was available.
    pub waited: u64,
    /// Calls refused with `RefusalKind::AllBackendsCooling`.
    pub all_cooling: u64,
    /// Calls refused with `RefusalKind::NoBackendReady`.
    pub no_backend_ready: u64,
    /// Calls refused with `RefusalKind::NoRoute`.
    pub no_route: u64,
}

/// Per-backend counters: in the stats only, not reported as metrics (a backend's name
/// would be one more label).
#[derive(Debug, Default)]
pub(crate) struct BackendCounters {
    pub(crate) requests: Counter,
    pub(crate) successes: Counter,
    pub(crate) rate_limited: Counter,
    pub(crate) failed: Counter,
    pub(crate) failovers: Counter,
    pub(crate) skipped_cooling: Counter,
    pub(crate) skipped_busy: Counter,
}

/// Pool-wide counters, each also reported to its metric (see [`crate::metrics`]).
#[derive(Debug)]
pub(crate) struct PoolCounters {
    pub(crate) meter: Meter,
    pub(crate) calls: Counter,
    pub(crate) failovers: Counter,
    pub(crate) waited: Counter,
    pub(crate) all_cooling: Counter,
    pub(crate) no_backend_ready: Counter,
    pub(crate) no_route: Counter,
}

impl Default for PoolCounters {
    fn default() -> Self {
        let meter = Meter::new(LayerKind::Pool);
        PoolCounters {
            calls: meter.counter(metrics::CALLS),
            failovers: meter.counter(metrics::FAILOVERS),
            waited: meter.counter(metrics::WAITED),
            all_cooling: meter.counter_for(metrics::REJECTED, "all_backends_cooling"),
            no_backend_ready: meter.counter_for(metrics::REJECTED, "no_backend_ready"),
            no_route: meter.counter_for(metrics::REJECTED, "no_route"),
            meter,
        }
    }
}

pub(crate) fn bump(counter: &Counter) {
    counter.bump();
}

#[derive(Debug)]
pub(crate) struct BackendInfo {
    pub(crate) name: Key,
    pub(crate) group: u32,
    pub(crate) counters: BackendCounters,
}

/// What the handle and every future share.
#[derive(Debug)]
pub(crate) struct StatsShared {
    pub(crate) backends: Vec<BackendInfo>,
    pub(crate) totals: PoolCounters,
    pub(crate) cooldown: CooldownHandle,
}

/// A cheap, cloneable handle on a pool's state: each backend's cooldown state and
/// counters, and pool-wide counters.
///
/// From [`Pool::handle`](super::Pool::handle); every clone of the pool reports into the
/// same counters. Instants are [`tokio::time::Instant`]s.
#[derive(Clone)]
pub struct PoolHandle {
    shared: Arc<StatsShared>,
}

impl PoolHandle {
    pub(crate) fn new(shared: Arc<StatsShared>) -> Self {
        PoolHandle { shared }
    }

    /// Every backend, in the order they were added.
    pub fn backends(&self) -> Vec<BackendStats> {
        self.shared
            .backends
            .iter()
            .map(|b| self.snapshot(b))
            .collect()
    }

    /// One backend by name.
    pub fn backend(&self, name: &str) -> Option<BackendStats> {
        self.shared
            .backends
            .iter()
            .find(|b| b.name.as_str() == name)
            .map(|b| self.snapshot(b))
    }

    /// Pool-wide counters.
    pub fn totals(&self) -> PoolStats {
        let t = &self.shared.totals;
        PoolStats {
            calls: t.calls.get(),
            failovers: t.failovers.get(),
            waited: t.waited.get(),
            all_cooling: t.all_cooling.get(),
            no_backend_ready: t.no_backend_ready.get(),
            no_route: t.no_route.get(),
        }
    }

    /// The pool's cooldown table, keyed by backend name.
    pub fn cooldown(&self) -> &CooldownHandle {
        &self.shared.cooldown
    }

    fn snapshot(&self, b: &BackendInfo) -> BackendStats {
        let c = &b.counters;
        BackendStats {
            name: b.name.clone(),
            group: b.group,
            state: self.shared.cooldown.state(&b.name),
            requests: c.requests.get(),
            successes: c.successes.get(),
            rate_limited: c.rate_limited.get(),
            failed: c.failed.get(),
            failovers: c.failovers.get(),
            skipped_cooling: c.skipped_cooling.get(),
            skipped_busy: c.skipped_busy.get(),
        }
    }
}

impl fmt::Debug for PoolHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PoolHandle")
            .field("backends", &self.backends())
            .field("totals", &self.totals())
            .finish()
    }
}
