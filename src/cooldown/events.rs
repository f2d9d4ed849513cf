//! What the cooldown layer reports: [`CooldownEvent`]s, as `tracing` events and through
//! a user callback.

use std::time::Duration;

use tokio::time::Instant;

use crate::key::Key;

/// Something that happened to a key's cooldown.
///
/// Every event is also emitted as a `tracing` event (target `ratewise::cooldown`):
/// `Started` and `Extended` at `WARN`, `Ended` at `INFO`.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CooldownEvent {
    /// A rate-limited answer put the key into cooldown (or back into it, after a probe
    /// that was rate-limited again).
    #[non_exhaustive]
    Started {
        /// The key.
        key: Key,
        /// Consecutive rate-limited answers, this one included (1 for the first).
        n: u32,
        /// How long the key cools: the server's hint, else the backoff, shortened to `max_cooldown`
        /// when that is set and smaller (then `capped` is true). The precheck margin is not
        /// included.
        duration: Duration,
        /// What the layer would have chosen without `max_cooldown`.
        requested: Duration,
        /// Whether `max_cooldown` shortened `requested` to `duration`.
        capped: bool,
        /// Whether the server's hint or the backoff set the duration.
        reason: CooldownReason,
        /// The server's retry hint, when it sent one.
        retry_after: Option<Duration>,
        /// The layer's own backoff for this `n`.
        backoff: Duration,
        /// When the key opens for its probe (`duration` plus the precheck margin from now,
        /// or later when an earlier cooldown already ran longer).
        until: Instant,
    },
    /// A rate-limited answer to a request sent before the current cooldown began carried
    /// a `Retry-After` reaching past the cooldown's end; the end moved later. `n` is
    /// unchanged: such answers are not counted as consecutive signals.
    #[non_exhaustive]
    Extended {
        /// The key.
        key: Key,
        /// The unchanged consecutive count.
        n: u32,
        /// The server's hint that extended the cooldown.
        retry_after: Duration,
        /// The new end of the cooldown.
        until: Instant,
    },
    /// The key is open again: the probe sent after the cooldown was answered without a
    /// rate limit.
    #[non_exhaustive]
    Ended {
        /// The key.
        key: Key,
        /// Consecutive rate-limited answers in the episode that ended (before a success
        /// reset it to zero).
        n: u32,
        /// From the first `Started` of the episode to now (cooldowns, re-entries and the
        /// final probe's round trip).
        cooled_for: Duration,
    },
}

impl CooldownEvent {
    /// The key the event is about.
    pub fn key(&self) -> &Key {
        match self {
            CooldownEvent::Started { key, .. }
            | CooldownEvent::Extended { key, .. }
            | CooldownEvent::Ended { key, .. } => key,
        }
    }
}

/// Why a cooldown lasts as long as it does.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CooldownReason {
    /// The server gave a retry hint: the hint is the cooldown.
    RetryAfter,
    /// The server gave no hint: the layer's backoff (`base * 2^(n-1)` or `base * n`,
    /// capped).
    Backoff,
}

/// A callback for [`CooldownEvent`]s, set with
/// [`CooldownBuilder::on_event`](super::CooldownBuilder::on_event).
pub(crate) type OnCooldownEvent = std::sync::Arc<dyn Fn(&CooldownEvent) + Send + Sync>;

/// The default callback: does nothing (the `tracing` events are emitted regardless).
pub(crate) fn no_callback() -> OnCooldownEvent {
    std::sync::Arc::new(|_: &CooldownEvent| {})
}

/// Emits `event` as a `tracing` event.
pub(crate) fn trace(event: &CooldownEvent) {
    match event {
        CooldownEvent::Started {
            key,
            n,
            duration,
            requested,
            capped,
            reason,
            retry_after,
            ..
        } => tracing::warn!(
            target: "ratewise::cooldown",
            key = %key,
            n = *n,
            duration_ms = duration.as_millis() as u64,
            requested_ms = requested.as_millis() as u64,
            capped = *capped,
            reason = ?reason,
            retry_after_ms = retry_after.map(|d| d.as_millis() as u64),
            "cooldown started"
        ),
        CooldownEvent::Extended {
            key,
            n,
            retry_after,
            ..
        } => tracing::warn!(
            target: "ratewise::cooldown",
            key = %key,
            n = *n,
            retry_after_ms = retry_after.as_millis() as u64,
            "cooldown extended"
        ),
        CooldownEvent::Ended { key, n, cooled_for } => tracing::info!(
            target: "ratewise::cooldown",
            key = %key,
            n = *n,
            cooled_for_ms = cooled_for.as_millis() as u64,
            "cooldown ended"
        ),
    }
}
