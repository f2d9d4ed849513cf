//! Counters of the cooldown layer.

use crate::{
    metrics::{self, Counter, Meter},
    vocabulary::LayerKind,
};

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

/// The live counters, each also reported to its metric (see [`crate::metrics`]).
#[derive(Debug)]
pub(crate) struct Counters {
    pub(crate) meter: Meter,
    pub(crate) started: Counter,
    pub(crate) extended: Counter,
    pub(crate) met: Counter,
    pub(crate) waited: Counter,
    pub(crate) rejected: Counter,
    pub(crate) probes: Counter,
}

impl Default for Counters {
    fn default() -> Self {
        let meter = Meter::new(LayerKind::Cooldown);
        Counters {
            started: meter.counter(metrics::COOLDOWNS_STARTED),
            extended: meter.counter(metrics::COOLDOWNS_EXTENDED),
            met: meter.counter(metrics::MET_COOLDOWN),
            waited: meter.counter(metrics::WAITED),
            rejected: meter.counter_for(metrics::REJECTED, "cooling_down"),
            probes: meter.counter(metrics::PROBES),
            meter,
        }
    }
}

impl Counters {
    pub(crate) fn bump(counter: &Counter) {
        counter.bump();
    }

    pub(crate) fn snapshot(&self) -> CooldownStats {
        CooldownStats {
            cooldowns_started: self.started.get(),
            cooldowns_extended: self.extended.get(),
            met_cooldown: self.met.get(),
            waited: self.waited.get(),
            rejected: self.rejected.get(),
            probes: self.probes.get(),
        }
    }
}
