//! Counters of the cooldown layer.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// A snapshot of the layer's counters, from [`CooldownHandle::stats`](super::CooldownHandle::stats).
///
/// Counters only grow; they cover every clone of the layer and its services.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct CooldownStats {
    /// Cooldowns started: every counted rate-limited answer (first entry and re-entry
    /// after a probe that was rate-limited again).
    pub cooldowns_started: u64,
    /// Cooldowns extended by the `Retry-After` of an answer to a request sent before
    /// the cooldown began.
    pub cooldowns_extended: u64,
    /// Requests that met a cooldown or a half-open key (each request counted once,
    /// whether it then waited or was rejected), here or, while they waited to be sent,
    /// in a rate limiter below.
    pub met_cooldown: u64,
    /// Of those, requests that waited and were then sent upstream (counted when their
    /// answer comes back).
    pub waited: u64,
    /// Of those, requests refused with a [`Refusal`](crate::Refusal): by the
    /// cooldown itself, or by its hold in a rate limiter below (requests that passed
    /// the cooldown while the key was open and were still waiting to be sent when it
    /// began cooling).
    pub rejected: u64,
    /// Probe requests sent after a cooldown ended.
    pub probes: u64,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) started: AtomicU64,
    pub(crate) extended: AtomicU64,
    pub(crate) met: AtomicU64,
    pub(crate) waited: AtomicU64,
    pub(crate) rejected: AtomicU64,
    pub(crate) probes: AtomicU64,
}

impl Counters {
    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Relaxed);
    }

    pub(crate) fn snapshot(&self) -> CooldownStats {
        CooldownStats {
            cooldowns_started: self.started.load(Relaxed),
            cooldowns_extended: self.extended.load(Relaxed),
            met_cooldown: self.met.load(Relaxed),
            waited: self.waited.load(Relaxed),
            rejected: self.rejected.load(Relaxed),
            probes: self.probes.load(Relaxed),
        }
    }
}
