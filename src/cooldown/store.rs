//! Where a cooldown's state is shared between processes: the [`CooldownStore`] trait.
//!
//! The layer keeps its table in memory (waiters, fairness, the local probe) and, with
//! a store, also asks the store on each admission where the key stands across
//! processes, and tells it each answer that matters (a rate limit, a probe's answer, a
//! success that resets a count). The store is the authority for the deadline, the
//! consecutive count and the probe; the local table mirrors what it learns.

use std::{future::Future, pin::Pin, time::Duration};

use crate::{key::Key, vocabulary::StoreError};

/// The future of a [`CooldownStore`] call.
pub(crate) type StoreFuture = Pin<Box<dyn Future<Output = Result<Remote, StoreError>> + Send>>;

/// Where a key stands across processes, as a [`CooldownStore`] answers.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Remote {
    /// How long the key still cools (`None`: not cooling).
    pub cooling: Option<Duration>,
    /// Consecutive rate-limited answers.
    pub n: u32,
    /// The cooldown ended and no probe has been answered without a rate limit since.
    pub half_open: bool,
    /// Who holds the half-open probe.
    pub probe: Probe,
    /// Moves on every counted signal: an answer to a request admitted at this signal
    /// counts (see the cooldown's guide on "consecutive").
    pub signal: u64,
}

impl Remote {
    /// The answer for a key nobody has seen limited: open.
    pub fn open() -> Self {
        Remote::default()
    }
}

/// Who holds a key's half-open probe.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Probe {
    /// Nobody.
    #[default]
    None,
    /// The request that asked: it is the probe.
    Mine,
    /// Another request, maybe in another process, for at most this long.
    Elsewhere(Duration),
}

/// One answer, as the layer reports it to the store.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// Rate-limited, with the server's hint.
    RateLimited(Option<Duration>),
    /// A success: resets the count.
    Success,
    /// Any other answer the upstream served (a failure is not a rate limit): a probe's
    /// opens the key, but the count stays.
    Served,
    /// A connection error or a 5xx: a probe frees its slot, nothing else changes.
    Transient,
}

/// What the store needs of the layer's configuration to start a cooldown itself
/// (atomically, on its own count).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rules {
    /// The backoff after the 1st, 2nd, ... consecutive rate-limited answer without a
    /// hint (the last repeats).
    pub backoff: Vec<Duration>,
    /// The longest cooldown (`None`: no cap).
    pub max_cooldown: Option<Duration>,
    /// Added to every cooldown.
    pub precheck: Duration,
}

/// A cooldown table shared between processes.
///
/// # Contract
///
/// - [`admit`](Self::admit) answers where `key` stands now; a request that finds the
///   key half-open with no live probe becomes the probe ([`Probe::Mine`]) for at most
///   `probe_for`, identified by `token`.
/// - [`record`](Self::record) records an answer to a request admitted at `signal` (the
///   `Remote::signal` its admission saw) with `token`: a counted rate limit raises the
///   count and starts a cooldown from the hint or `rules.backoff`; any rate limit only
///   ever extends the deadline, never shortens it, in the same atomic step.
/// - An `Err` refuses the request ([`StoreUnavailable`](crate::vocabulary::RefusalKind::StoreUnavailable)):
///   a store that fails open answers [`Remote::open`] instead, and the layer decides
///   alone.
pub trait CooldownStore: Send + Sync + 'static {
    /// Where `key` stands; claims the probe for `token` when it is free.
    fn admit(&self, key: &Key, token: u64, probe_for: Duration) -> StoreFuture;

    /// Records `answer` to a request admitted at `signal` with `token`.
    fn record(
        &self,
        key: &Key,
        token: u64,
        signal: u64,
        answer: Answer,
        rules: &Rules,
    ) -> StoreFuture;
}
