//! The shared limiter handle ([`RateLimiter`]) and the per-key FIFO queues of waiters.

use std::{
    collections::HashMap,
    fmt,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex, MutexGuard,
    },
    time::Duration,
};

use tokio::{sync::Semaphore, time::Instant};

use super::{
    quota::Quota,
    shared::Store,
    stats::{RateLimitStats, Stats},
    store::RateLimitStore,
};
use crate::{
    key::{Key, SharedKey},
    util::lock,
};

/// One rate limiter: a store of buckets, the queues of requests waiting on them, and
/// their counters ([`RateLimitStats`]).
///
/// A cheap [`Clone`] handle: clones are the same limiter. Every
/// [`RateLimitLayer`](super::RateLimitLayer) built from it (with
/// [`build_with_limiter`](super::RateLimitBuilder::build_with_limiter)), every clone of
/// such a layer and every service they make take cells from the same buckets and queue
/// in the same lines. That is how several stacks in one process share one bucket
/// (DingTalk's process-wide card bucket), even when they differ in body type, key,
/// bypass rule or mode.
///
/// # Example
///
/// ```
/// use ratewise::rate_limit::RateLimitLayer;
///
/// # fn main() -> Result<(), ratewise::ConfigError> {
/// let cards = RateLimitLayer::builder().per_second(20).burst(20).build()?.limiter();
/// let updates = RateLimitLayer::builder().build_with_limiter(cards.clone())?;
/// let creates = RateLimitLayer::builder().build_with_limiter(cards.clone())?;
/// assert_eq!(cards.quota().burst(), 20);
/// assert!(updates.limiter().same_as(&creates.limiter()));
/// # let _ = (updates, creates);
/// # Ok(()) }
/// ```
pub struct RateLimiter {
    inner: Arc<Shared>,
}

struct Shared {
    store: Store,
    /// The keys of the store's limits after the first (each layer has its own main key).
    extra_keys: Box<[SharedKey]>,
    quota: Quota,
    queues: Arc<Queues>,
    stats: Stats,
    summary: Mutex<Summary>,
}

/// Refusals counted since the current log window began.
#[derive(Default)]
struct Summary {
    since: Option<Instant>,
    refused: u64,
}

/// How often, at most, the limiter logs a summary of its refusals at INFO or louder.
const SUMMARY_WINDOW: Duration = Duration::from_secs(10);

impl RateLimiter {
    /// A limiter whose store has limits after the first, keyed by `extra_keys`: every
    /// layer on this limiter keys those limits the same way.
    pub(crate) fn with_keys(store: Store, extra_keys: Vec<SharedKey>) -> Self {
        let quota = store.quota();
        RateLimiter {
            inner: Arc::new(Shared {
                store,
                extra_keys: extra_keys.into_boxed_slice(),
                quota,
                queues: Arc::new(Queues::default()),
                stats: Stats::default(),
                summary: Mutex::new(Summary::default()),
            }),
        }
    }

    /// The key count of the store, when it can tell (the in-memory store can).
    pub fn key_count(&self) -> Option<usize> {
        self.inner.store.key_count()
    }

    /// The store holding the buckets.
    pub(crate) fn store(&self) -> &Store {
        &self.inner.store
    }

    /// The quota every bucket follows.
    pub fn quota(&self) -> Quota {
        self.inner.quota
    }

    /// The limiter's counters (shared by every clone), as a snapshot.
    pub fn stats(&self) -> RateLimitStats {
        self.inner.stats.snapshot()
    }

    /// The live counters.
    pub(crate) fn counters(&self) -> &Stats {
        &self.inner.stats
    }

    /// How many requests are queued, waiting to be admitted, right now.
    pub fn waiting(&self) -> usize {
        self.inner.queues.waiting.load(Ordering::Acquire)
    }

    /// Whether `self` and `other` are the same limiter (clones of one handle).
    pub fn same_as(&self, other: &RateLimiter) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    /// The keys of the limits after the first.
    pub(crate) fn extra_keys(&self) -> &[SharedKey] {
        &self.inner.extra_keys
    }

    pub(crate) fn queues(&self) -> &Arc<Queues> {
        &self.inner.queues
    }

    /// Counts a refusal for the log: each refusal is logged at DEBUG by its caller, and
    /// this logs at most two lines per [`SUMMARY_WINDOW`] at WARN/INFO, however many
    /// requests are refused (an attack must not flood the log), and never a key.
    pub(crate) fn summarize_rejection(&self, now: Instant) {
        let mut summary = lock(&self.inner.summary);
        summary.refused += 1;
        match summary.since {
            None => {
                summary.since = Some(now);
                tracing::warn!(
                    target: "ratewise::rate_limit",
                    "rate limit: refusing requests over the limit (one summary per {} s follows while it lasts)",
                    SUMMARY_WINDOW.as_secs()
                );
            }
            Some(since) if now.saturating_duration_since(since) >= SUMMARY_WINDOW => {
                tracing::info!(
                    target: "ratewise::rate_limit",
                    refused = summary.refused,
                    window_ms = now.saturating_duration_since(since).as_millis() as u64,
                    "rate limit: requests refused since the last summary"
                );
                summary.since = Some(now);
                summary.refused = 0;
            }
            Some(_) => {}
        }
    }
}

impl Clone for RateLimiter {
    fn clone(&self) -> Self {
        RateLimiter {
            inner: self.inner.clone(),
        }
    }
}

impl fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimiter")
            .field("store", &self.inner.store)
            .field("waiting", &self.waiting())
            .field("stats", &self.inner.stats)
            .finish()
    }
}

/// The per-key queues of requests waiting for cells.
///
/// Only waiting requests are here: a key has an entry while at least one request waits
/// on it, and the entry goes with the last one. Each entry has a fair (FIFO)
/// `Semaphore(1)`; the holder of its permit is the head of the line, the only waiter
/// that asks the store for cells. A newcomer that finds waiters for its key does not ask
/// the store at all: it queues behind them.
#[derive(Default)]
pub(crate) struct Queues {
    /// Requests queued over all keys (lets the common no-waiter case skip the lock).
    waiting: AtomicUsize,
    map: Mutex<HashMap<Key, Line>>,
}

struct Line {
    turn: Arc<Semaphore>,
    waiters: usize,
    cells: u64,
    head: Option<Head>,
}

struct Head {
    cost: u32,
    earliest: Option<Instant>,
}

/// The outcome of [`Queues::join`].
pub(crate) enum Join {
    /// `only_if_queued` was asked and nobody waits on the key.
    NotQueued,
    /// Queued: wait for a permit of `turn`, then ask the store.
    Joined {
        ticket: Ticket,
        turn: Arc<Semaphore>,
        estimate: Duration,
    },
    /// Queuing would take longer than the deadline allows; nothing was queued.
    TooLong { estimate: Duration },
}

impl Queues {
    fn lock(&self) -> MutexGuard<'_, HashMap<Key, Line>> {
        lock(&self.map)
    }

    /// Whether no request waits for any key (the limiter's fast path).
    pub(crate) fn is_quiet(&self) -> bool {
        self.waiting.load(Ordering::Acquire) == 0
    }

    /// The estimated wait of `cost` more cells behind the requests waiting on `key`, or
    /// `None` when none waits.
    pub(crate) fn estimate(
        &self,
        key: &Key,
        cost: u32,
        now: Instant,
        interval: Duration,
    ) -> Option<Duration> {
        if self.waiting.load(Ordering::Acquire) == 0 {
            return None;
        }
        let map = self.lock();
        map.get(key)
            .filter(|line| line.waiters > 0)
            .map(|line| line.estimate(cost, now, interval))
    }

    /// Queues a request of `cost` cells for `key`, unless its estimated wait (the larger
    /// of `at_least` and the wait behind those already queued) would pass `deadline`,
    /// or `only_if_queued` is set and nobody waits on `key`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn join(
        self: &Arc<Self>,
        key: &Key,
        cost: u32,
        now: Instant,
        interval: Duration,
        at_least: Duration,
        deadline: Option<Instant>,
        only_if_queued: bool,
    ) -> Join {
        if only_if_queued && self.waiting.load(Ordering::Acquire) == 0 {
            return Join::NotQueued;
        }
        let mut map = self.lock();
        let ahead = map
            .get(key)
            .filter(|line| line.waiters > 0)
            .map(|line| line.estimate(cost, now, interval));
        if only_if_queued && ahead.is_none() {
            return Join::NotQueued;
        }
        let estimate = ahead.unwrap_or(Duration::ZERO).max(at_least);
        if let Some(deadline) = deadline {
            match now.checked_add(estimate) {
                Some(earliest) if earliest <= deadline => {}
                _ => return Join::TooLong { estimate },
            }
        }
        let line = map.entry(key.clone()).or_insert_with(|| Line {
            turn: Arc::new(Semaphore::new(1)),
            waiters: 0,
            cells: 0,
            head: None,
        });
        line.waiters += 1;
        line.cells += u64::from(cost);
        let turn = line.turn.clone();
        self.waiting.fetch_add(1, Ordering::AcqRel);
        drop(map);
        Join::Joined {
            ticket: Ticket {
                queues: self.clone(),
                key: key.clone(),
                cost,
                head: false,
            },
            turn,
            estimate,
        }
    }
}

impl Line {
    /// When `cost` more cells could go behind everyone queued: the head's earliest
    /// admission (now, if unknown), then one replenish interval per cell queued behind
    /// the head and per cell of the newcomer. The bucket is empty while anyone waits,
    /// since waiters take cells as soon as they replenish.
    fn estimate(&self, cost: u32, now: Instant, interval: Duration) -> Duration {
        let (from_head, cells_ahead) = match &self.head {
            Some(head) => (
                head.earliest
                    .map_or(Duration::ZERO, |e| e.saturating_duration_since(now)),
                self.cells.saturating_sub(u64::from(head.cost)),
            ),
            // The permit is being handed over: the next head goes about now.
            None => (Duration::ZERO, self.cells.saturating_sub(1)),
        };
        let cells = cells_ahead.saturating_add(u64::from(cost));
        from_head.saturating_add(interval.saturating_mul(u32::try_from(cells).unwrap_or(u32::MAX)))
    }
}

/// A request's place in its key's line. Dropping it leaves the line (and removes the
/// line when it was the last one in it).
pub(crate) struct Ticket {
    queues: Arc<Queues>,
    key: Key,
    cost: u32,
    head: bool,
}

impl Ticket {
    /// Marks this request as the head of its line (it holds the line's permit).
    pub(crate) fn become_head(&mut self, earliest: Option<Instant>) {
        let mut map = self.queues.lock();
        if let Some(line) = map.get_mut(&self.key) {
            line.head = Some(Head {
                cost: self.cost,
                earliest,
            });
            self.head = true;
        }
    }

    /// Records when the head expects to be admitted, for newcomers' estimates.
    pub(crate) fn set_earliest(&self, earliest: Instant) {
        if !self.head {
            return;
        }
        let mut map = self.queues.lock();
        if let Some(head) = map.get_mut(&self.key).and_then(|line| line.head.as_mut()) {
            head.earliest = Some(earliest);
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut map = self.queues.lock();
        if let Some(line) = map.get_mut(&self.key) {
            line.waiters = line.waiters.saturating_sub(1);
            line.cells = line.cells.saturating_sub(u64::from(self.cost));
            if self.head {
                line.head = None;
            }
            if line.waiters == 0 {
                map.remove(&self.key);
            }
        }
        self.queues.waiting.fetch_sub(1, Ordering::AcqRel);
    }
}

impl fmt::Debug for Ticket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ticket")
            .field("key", &self.key)
            .field("cost", &self.cost)
            .field("head", &self.head)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Duration = Duration::from_millis(100);

    fn joined(j: Join) -> (Ticket, Arc<Semaphore>, Duration) {
        match j {
            Join::Joined {
                ticket,
                turn,
                estimate,
            } => (ticket, turn, estimate),
            _ => panic!("expected to join"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn estimates_count_the_head_and_the_cells_queued_behind_it() {
        let q = Arc::new(Queues::default());
        let k = Key::from("k");
        let now = Instant::now();
        assert!(matches!(
            q.join(&k, 1, now, T, Duration::ZERO, None, true),
            Join::NotQueued
        ));
        let (mut head, turn, est) = joined(q.join(&k, 1, now, T, T, None, false));
        assert_eq!(est, T);
        let _permit = turn.try_acquire_owned().unwrap();
        head.become_head(Some(now + T));
        // Behind the head (at +100 ms): +200 ms for one cell.
        let (second, _, est) = joined(q.join(&k, 1, now, T, Duration::ZERO, None, true));
        assert_eq!(est, 2 * T);
        // Behind head and second, 3 cells: +100 + (1 + 3) × 100 ms.
        assert_eq!(q.estimate(&k, 3, now, T), Some(5 * T));
        // A deadline closer than the estimate refuses without queuing.
        assert!(matches!(
            q.join(&k, 1, now, T, Duration::ZERO, Some(now + 2 * T), true),
            Join::TooLong { estimate } if estimate == 3 * T
        ));
        assert_eq!(q.waiting.load(Ordering::Acquire), 2);
        drop(second);
        drop(head);
        assert_eq!(q.waiting.load(Ordering::Acquire), 0);
        assert!(q.lock().is_empty());
        assert_eq!(q.estimate(&k, 1, now, T), None);
    }
}
