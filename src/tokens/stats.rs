//! What a token limit did: [`TokenStats`].

use std::sync::atomic::{AtomicU64, Ordering};

/// What a [`TokenLimitLayer`](super::TokenLimitLayer) did, counted since it was built:
/// a snapshot, from [`stats`](super::TokenLimitLayer::stats). Counters only grow; every
/// clone of the layer and every service it made share them. (How long calls waited for
/// their tokens is the rate limiter's: [`rate_limit`](super::TokenLimitLayer::rate_limit).)
#[non_exhaustive]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct TokenStats {
    /// Tokens reserved by the calls sent: the sum of their estimates.
    pub reserved: u64,
    /// Tokens the answers reported in their `usage`: the reconciled count.
    pub used: u64,
    /// Answers whose reservation was settled with their `usage`.
    pub reconciled: u64,
    /// Calls settled without a `usage`: a success keeps its reservation, an error
    /// answer (or a call a layer below held back) gives it back.
    pub unreported: u64,
    /// Tokens given back: reserved but not used.
    pub refunded: u64,
    /// Tokens charged beyond the reservations: used but not reserved.
    pub charged: u64,
    /// Settlements the store could not make (its state keeps the reservation).
    pub settle_errors: u64,
}

/// The live counters behind [`TokenStats`].
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) reserved: AtomicU64,
    pub(crate) used: AtomicU64,
    pub(crate) reconciled: AtomicU64,
    pub(crate) unreported: AtomicU64,
    pub(crate) refunded: AtomicU64,
    pub(crate) charged: AtomicU64,
    pub(crate) settle_errors: AtomicU64,
}

impl Counters {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> TokenStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        TokenStats {
            reserved: get(&self.reserved),
            used: get(&self.used),
            reconciled: get(&self.reconciled),
            unreported: get(&self.unreported),
            refunded: get(&self.refunded),
            charged: get(&self.charged),
            settle_errors: get(&self.settle_errors),
        }
    }
}
