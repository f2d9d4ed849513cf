//! Where the limiter's state lives: the [`RateLimitStore`] trait and the in-memory
//! [`GovernorStore`].
//!
//! The layer never touches limiter state directly; it asks a store to take cells for a
//! request's keys (one per limit). [`MemoryStore`](super::MemoryStore) (the default)
//! keeps the state in this process, with governor's GCRA for one plain rate;
//! [`GovernorStore`] is that governor engine alone; a store shared between processes
//! (Redis) plugs into the same layer through the same trait.

// The pub items here are reachable from outside only through `testing::engine`
// (the benchmarks), so they are unreachable without that feature.
#![cfg_attr(not(feature = "testing"), allow(unreachable_pub))]

use std::{
    fmt,
    future::{ready, Future, Ready},
    num::NonZeroU32,
    pin::Pin,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use governor::{
    clock::Clock, middleware::StateInformationMiddleware, state::keyed::DashMapStateStore,
};

use super::{clock::TokioClock, quota::Quota};
use crate::key::Key;
pub(crate) use crate::vocabulary::StoreError;

/// The keys of one request: one per limit of its layer, in the limits' order (the main
/// limit's first).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Keys {
    first: Key,
    rest: Vec<Key>,
}

impl Keys {
    /// The keys of a request under a layer with one limit.
    pub fn one(key: Key) -> Self {
        Keys {
            first: key,
            rest: Vec::new(),
        }
    }

    /// The keys of a request under several limits: the main limit's, then the others'.
    pub fn new(first: Key, rest: Vec<Key>) -> Self {
        Keys { first, rest }
    }

    /// The main limit's key.
    pub fn first(&self) -> &Key {
        &self.first
    }

    /// The key of limit `i` (the last key when there are fewer keys than limits).
    pub fn get(&self, i: usize) -> &Key {
        match i.checked_sub(1) {
            None => &self.first,
            Some(j) => self.rest.get(j).or(self.rest.last()).unwrap_or(&self.first),
        }
    }

    /// How many keys (limits) there are.
    pub fn len(&self) -> usize {
        1 + self.rest.len()
    }

    /// Always false: there is at least the main limit's key.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The key a request waits in line under: the main key alone, or every key joined
    /// (`tenant · card`), so that requests for other cards do not wait behind it.
    pub(crate) fn line(&self) -> Key {
        if self.rest.is_empty() {
            return self.first.clone();
        }
        const SEP: &str = " · ";
        let keys = std::iter::once(&self.first).chain(&self.rest);
        // Unambiguous: when a key holds the separator itself, every key is prefixed by
        // its length, so two different key tuples never share a line.
        let prefixed = keys.clone().any(|k| k.as_str().contains(SEP));
        let mut joined = String::new();
        for (i, k) in keys.enumerate() {
            if i > 0 {
                joined.push_str(SEP);
            }
            if prefixed {
                joined.push_str(&format!("{}:", k.as_str().len()));
            }
            joined.push_str(k.as_str());
        }
        Key::from(joined)
    }
}

/// The answer of a store to "take `cost` cells for this key now".
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// The cells were taken: the request may go now.
    Admitted {
        /// How many more cells the key could take right now (0 when the bucket is
        /// empty), as far as the store knows.
        remaining: u32,
    },
    /// Nothing was taken: the cells will not be available before `wait` has passed
    /// (counted from the decision).
    Denied {
        /// The least time until the cells could be taken, if nobody else takes any.
        wait: Duration,
    },
}

/// The future of one [`settle`](RateLimitStore::settle): boxed, since a store that keeps
/// its state elsewhere needs a round trip.
pub(crate) type SettleFuture = Pin<Box<dyn Future<Output = Result<(), StoreError>> + Send>>;

/// The contract between the rate limit layer and the place its state lives.
///
/// # Contract
///
/// - [`acquire`](RateLimitStore::acquire) is one atomic test-and-take for `cost` cells of
///   `key`'s bucket:
///   - `Ok(Decision::Admitted { .. })`: exactly `cost` cells were taken, now;
///   - `Ok(Decision::Denied { wait })`: **nothing** was taken; `wait` (> 0) is the least
///     time from the decision until `cost` cells could be taken;
///   - `Err(StoreError)`: the store could not decide (connection lost...). The layer
///     fails that request (wait mode: the error; reject mode: `503`), it does not retry.
/// - The layer never asks for more cells than [`max_cost`](RateLimitStore::max_cost)
///   (it refuses such requests itself with
///   [`CostExceedsBurst`](crate::vocabulary::RefusalKind::CostExceedsBurst)), and never
///   for zero cells.
/// - The layer calls the inner service in the same poll in which the future resolves
///   to `Admitted`, so no cell is taken for a request that is not sent. A future that is
///   dropped before it resolves must take nothing, or accept that the cells are lost:
///   [`GovernorStore`]'s future is [`std::future::Ready`], so it never has that window;
///   a remote store should take the cells in one round trip (a Lua script) and document
///   what a dropped call costs.
/// - [`quota`](RateLimitStore::quota) is constant for the store's life. The layer uses it
///   for the `RateLimit-Policy` header and for queue wait estimates.
/// - Clones share one state: cloning the store clones a handle, not the buckets.
/// - Anything time-dependent that is measured in this process must use `tokio::time`,
///   so that paused-clock tests work.
/// - [`settle`](RateLimitStore::settle) corrects a reservation once its real cost is
///   known (tokens per minute: [`TokenLimitLayer`](crate::tokens::TokenLimitLayer)). It
///   never waits and never refuses. Stores that cannot settle keep the default, which
///   fails with a [`StoreError`] and changes nothing.
pub trait RateLimitStore: Clone + Send + Sync + 'static {
    /// The future of one [`acquire`](RateLimitStore::acquire).
    type Future: Future<Output = Result<Decision, StoreError>> + Send + 'static;

    /// Takes `cost` cells from the bucket of every key of `keys` (one per limit) if they
    /// are all available now; otherwise takes nothing and says how long until they
    /// would be.
    fn acquire(&self, keys: &Keys, cost: NonZeroU32) -> Self::Future;

    /// The quota every key's bucket follows.
    fn quota(&self) -> Quota;

    /// How many keys the store holds state for, if it can tell cheaply.
    fn key_count(&self) -> Option<usize> {
        None
    }

    /// The most cells one request can ever take: the smallest burst (or window) of
    /// the store's limits. The layer refuses a costlier request at once. Defaults to
    /// [`quota`](Self::quota)'s burst.
    fn max_cost(&self) -> u32 {
        self.quota().burst()
    }

    /// How much one more cell waiting in a line adds to the wait, for the layer's
    /// estimates of a queued request's wait (which let it refuse at once a wait that
    /// cannot fit `max_wait`): the slowest limit's interval. Defaults to
    /// [`quota`](Self::quota)'s replenish interval.
    fn cell_interval(&self) -> Duration {
        self.quota().replenish_interval()
    }

    /// Corrects a reservation: `reserved` cells were taken for `keys` by an
    /// [`acquire`](Self::acquire) that admitted them `age` ago, and the request turned
    /// out to cost `actual`. Gives back `reserved - actual` cells, or takes
    /// `actual - reserved` more, at once, even past the burst (the cells were spent
    /// upstream whether they fitted or not: the next requests wait for them).
    ///
    /// Each kind of limit counts the correction where the reservation was counted:
    ///
    /// - a GCRA rate moves its theoretical arrival time back or forward;
    /// - a sliding window changes the count of the reservation's own instant (`age`
    ///   ago). A refund comes out of admissions made at or before it, never later ones,
    ///   so the window never frees a cell sooner than the upstream does; nothing is
    ///   corrected once the reservation has left the window;
    /// - a fixed window changes the count of the window the reservation fell in, if it
    ///   is still the current one.
    ///
    /// `reserved` may be 0: a request that took nothing (a bypass) is charged its
    /// `actual` cost. The default fails with a [`StoreError`] and changes nothing.
    fn settle(&self, keys: &Keys, reserved: u32, actual: u32, age: Duration) -> SettleFuture {
        let _ = (keys, reserved, actual, age);
        Box::pin(ready(Err(StoreError::new(
            "this store cannot settle a reservation",
        ))))
    }
}

type Limiter =
    governor::RateLimiter<Key, DashMapStateStore<Key>, TokioClock, StateInformationMiddleware>;

/// The fewest acquisitions between two sweeps of idle keys.
const SWEEP_FLOOR: u64 = 1024;

/// The in-memory store: governor's keyed GCRA in a concurrent map, on tokio time.
///
/// # Memory
///
/// A key's state is only a theoretical arrival time. Once a key has fully replenished
/// (it has been idle for a whole replenish interval past its last admission's window)
/// its state is indistinguishable from a fresh key's, so dropping it never changes a
/// decision. The store drops such keys (governor's `retain_recent`, then
/// `shrink_to_fit` when the sweep halved the map) during an `acquire`, amortised: a
/// sweep runs once the number of acquisitions since the previous sweep reaches the
/// number of keys that sweep kept (at least 1,024). A sweep costs O(keys) and runs at
/// most once per that many acquisitions, so the cost per acquisition is O(1), and the
/// map never holds more than about twice the keys that were active within one window,
/// plus 1,024, however many distinct keys pass through.
/// [`evict_idle`](GovernorStore::evict_idle) runs a sweep on demand.
///
/// Cloning the store shares the buckets.
#[derive(Clone)]
pub struct GovernorStore {
    inner: Arc<Inner>,
}

struct Inner {
    limiter: Limiter,
    clock: TokioClock,
    quota: Quota,
    acquisitions: AtomicU64,
    next_sweep: AtomicU64,
    sweeping: AtomicBool,
}

impl GovernorStore {
    /// An empty store following `quota`.
    pub fn new(quota: Quota) -> Self {
        let clock = TokioClock::new();
        let limiter = Limiter::new(quota.to_governor(), DashMapStateStore::default(), clock);
        GovernorStore {
            inner: Arc::new(Inner {
                limiter,
                clock,
                quota,
                acquisitions: AtomicU64::new(0),
                next_sweep: AtomicU64::new(SWEEP_FLOOR),
                sweeping: AtomicBool::new(false),
            }),
        }
    }

    /// How many keys hold state right now.
    pub fn len(&self) -> usize {
        self.inner.limiter.len()
    }

    /// Whether no key holds state.
    #[cfg(any(test, feature = "testing"))]
    pub fn is_empty(&self) -> bool {
        self.inner.limiter.is_empty()
    }

    /// Drops the state of every key that has fully replenished, now. Never changes a
    /// decision (see [Memory](GovernorStore#memory)).
    #[cfg(any(test, feature = "testing"))]
    pub fn evict_idle(&self) {
        self.inner.sweep();
    }

    pub(crate) fn decide(&self, key: &Key, cost: NonZeroU32) -> Result<Decision, StoreError> {
        let inner = &*self.inner;
        let decision = match inner.limiter.check_key_n(key, cost) {
            Ok(Ok(state)) => Decision::Admitted {
                remaining: state.remaining_burst_capacity(),
            },
            Ok(Err(not_until)) => Decision::Denied {
                wait: not_until.wait_time_from(inner.clock.now()),
            },
            Err(insufficient) => {
                return Err(StoreError::new(format!(
                    "{} cells asked for, but at most {} fit in the bucket",
                    cost, insufficient.0
                )))
            }
        };
        let done = inner.acquisitions.fetch_add(1, Ordering::Relaxed) + 1;
        if done >= inner.next_sweep.load(Ordering::Relaxed) {
            inner.sweep();
        }
        Ok(decision)
    }
}

impl Inner {
    fn sweep(&self) {
        if self.sweeping.swap(true, Ordering::Acquire) {
            return; // another caller is sweeping
        }
        let before = self.limiter.len();
        self.limiter.retain_recent();
        let kept = self.limiter.len();
        if kept <= before / 2 {
            self.limiter.shrink_to_fit();
        }
        let done = self.acquisitions.load(Ordering::Relaxed);
        self.next_sweep
            .store(done + SWEEP_FLOOR.max(kept as u64), Ordering::Relaxed);
        self.sweeping.store(false, Ordering::Release);
    }
}

impl RateLimitStore for GovernorStore {
    type Future = Ready<Result<Decision, StoreError>>;

    fn acquire(&self, keys: &Keys, cost: NonZeroU32) -> Self::Future {
        ready(self.decide(keys.first(), cost))
    }

    fn quota(&self) -> Quota {
        self.inner.quota
    }

    fn key_count(&self) -> Option<usize> {
        Some(self.len())
    }
}

impl fmt::Debug for GovernorStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GovernorStore")
            .field("quota", &self.inner.quota)
            .field("keys", &self.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_of_different_key_tuples_differ() {
        let line = |a: &str, b: &str| Keys::new(Key::from(a), vec![Key::from(b)]).line();
        assert_eq!(line("tenant", "card-1").as_str(), "tenant · card-1");
        assert_ne!(line("a · b", "c"), line("a", "b · c"));
        assert_eq!(Keys::one(Key::from("k")).line(), Key::from("k"));
    }

    fn one() -> NonZeroU32 {
        NonZeroU32::MIN
    }

    #[tokio::test(start_paused = true)]
    async fn admits_the_burst_then_says_how_long_to_wait() {
        let store = GovernorStore::new(
            Quota::per_second(NonZeroU32::new(10).unwrap())
                .with_burst(NonZeroU32::new(3).unwrap())
                .unwrap(),
        );
        let k = Key::from("k");
        for left in [2, 1, 0] {
            assert_eq!(
                store.acquire(&Keys::one(k.clone()), one()).await.unwrap(),
                Decision::Admitted { remaining: left }
            );
        }
        assert_eq!(
            store.acquire(&Keys::one(k.clone()), one()).await.unwrap(),
            Decision::Denied {
                wait: Duration::from_millis(100)
            }
        );
        tokio::time::advance(Duration::from_millis(40)).await;
        assert_eq!(
            store.acquire(&Keys::one(k.clone()), one()).await.unwrap(),
            Decision::Denied {
                wait: Duration::from_millis(60)
            }
        );
        tokio::time::advance(Duration::from_millis(60)).await;
        assert!(matches!(
            store.acquire(&Keys::one(k.clone()), one()).await.unwrap(),
            Decision::Admitted { .. }
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn n_cells_at_once_and_too_many_is_an_error() {
        let store = GovernorStore::new(
            Quota::per_second(NonZeroU32::new(10).unwrap())
                .with_burst(NonZeroU32::new(5).unwrap())
                .unwrap(),
        );
        let k = Key::from("k");
        let three = NonZeroU32::new(3).unwrap();
        assert_eq!(
            store.acquire(&Keys::one(k.clone()), three).await.unwrap(),
            Decision::Admitted { remaining: 2 }
        );
        // 2 left, 3 needed: one more cell, 100 ms.
        assert_eq!(
            store.acquire(&Keys::one(k.clone()), three).await.unwrap(),
            Decision::Denied {
                wait: Duration::from_millis(100)
            }
        );
        let err = store
            .acquire(&Keys::one(k.clone()), NonZeroU32::new(6).unwrap())
            .await
            .unwrap_err();
        assert!(err.to_string().contains("at most 5"), "{err}");
    }

    #[tokio::test(start_paused = true)]
    async fn eviction_keeps_busy_keys_and_drops_rested_ones() {
        let store = GovernorStore::new(
            Quota::per_second(NonZeroU32::new(1).unwrap())
                .with_burst(NonZeroU32::new(2).unwrap())
                .unwrap(),
        );
        let busy = Key::from("busy");
        let idle = Key::from("idle");
        store
            .acquire(&Keys::one(busy.clone()), one())
            .await
            .unwrap();
        store
            .acquire(&Keys::one(idle.clone()), one())
            .await
            .unwrap();
        tokio::time::advance(Duration::from_secs(2)).await;
        store
            .acquire(&Keys::one(busy.clone()), one())
            .await
            .unwrap();
        store
            .acquire(&Keys::one(busy.clone()), one())
            .await
            .unwrap();
        store.evict_idle();
        assert_eq!(store.len(), 1);
        // The busy key kept its state: its bucket is still empty.
        assert!(matches!(
            store
                .acquire(&Keys::one(busy.clone()), one())
                .await
                .unwrap(),
            Decision::Denied { .. }
        ));
        // The idle key's fresh state gives the same answer its old state would have.
        assert_eq!(
            store
                .acquire(&Keys::one(idle.clone()), one())
                .await
                .unwrap(),
            Decision::Admitted { remaining: 1 }
        );
    }
}
