//! The pool's [`PoolHandle`]: each backend's state and counters.

use std::{
    fmt,
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Arc,
    },
};

use crate::{
    cooldown::{CooldownHandle, KeyState},
    key::Key,
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

#[derive(Debug, Default)]
pub(crate) struct BackendCounters {
    pub(crate) requests: AtomicU64,
    pub(crate) successes: AtomicU64,
    pub(crate) rate_limited: AtomicU64,
    pub(crate) failed: AtomicU64,
    pub(crate) failovers: AtomicU64,
    pub(crate) skipped_cooling: AtomicU64,
    pub(crate) skipped_busy: AtomicU64,
}

#[derive(Debug, Default)]
pub(crate) struct PoolCounters {
    pub(crate) calls: AtomicU64,
    pub(crate) failovers: AtomicU64,
    pub(crate) waited: AtomicU64,
    pub(crate) all_cooling: AtomicU64,
    pub(crate) no_backend_ready: AtomicU64,
    pub(crate) no_route: AtomicU64,
}

pub(crate) fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Relaxed);
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
            calls: t.calls.load(Relaxed),
            failovers: t.failovers.load(Relaxed),
            waited: t.waited.load(Relaxed),
            all_cooling: t.all_cooling.load(Relaxed),
            no_backend_ready: t.no_backend_ready.load(Relaxed),
            no_route: t.no_route.load(Relaxed),
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
            requests: c.requests.load(Relaxed),
            successes: c.successes.load(Relaxed),
            rate_limited: c.rate_limited.load(Relaxed),
            failed: c.failed.load(Relaxed),
            failovers: c.failovers.load(Relaxed),
            skipped_cooling: c.skipped_cooling.load(Relaxed),
            skipped_busy: c.skipped_busy.load(Relaxed),
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
