//! Several limits taken together: [`Limit`] (a GCRA rate, a sliding window or a fixed
//! window, each with its own key and margin) and [`MemoryStore`], the in-memory store
//! that decides for all of a request's limits in one atomic step.
//!
//! governor keeps one GCRA state per key and takes cells as it checks them: it has no
//! way to check several keys and take from all of them only if all have room, and no
//! window quotas. So the crate has this small core of its own beside governor: one
//! mutex, one map of `(limit, key)` states, integer nanoseconds on tokio's clock.

use std::{
    collections::{HashMap, VecDeque},
    fmt,
    future::{ready, Ready},
    num::NonZeroU32,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::time::Instant;

use super::{
    quota::{config_error, Quota},
    store::{Decision, GovernorStore, Keys, RateLimitStore, SettleFuture, StoreError},
};
use crate::{
    key::{Key, KeyExtractor, SharedKey},
    util::lock,
    vocabulary::ConfigError,
};

/// How one limit of a layer counts, validated and with its margin applied: what a
/// [`MakeStore`](super::MakeStore) is given to build a store that follows the same
/// limits (the in-memory store and a shared one decide alike).
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// GCRA: one cell every `interval`, at most `burst` at once.
    Rate {
        /// One cell per this.
        interval: Duration,
        /// The most cells at once.
        burst: u32,
    },
    /// At most `n` in any window of length `window`.
    Sliding {
        /// Cells per window.
        n: u32,
        /// The window's length.
        window: Duration,
    },
    /// At most `n` per window of length `window`, windows aligned on the store's clock
    /// (its start in memory; the Unix epoch on a server clock).
    Fixed {
        /// Cells per window.
        n: u32,
        /// The window's length.
        window: Duration,
    },
}

/// A safety margin: how much a limit pads its interval (or window).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Margin {
    pub(crate) fixed: Duration,
    /// In thousandths of the interval.
    pub(crate) per_mille: u32,
}

impl Margin {
    fn pad(self, d: Duration) -> Duration {
        let relative = d
            .checked_mul(self.per_mille)
            .map_or(Duration::MAX, |x| x / 1000);
        d.saturating_add(relative).saturating_add(self.fixed)
    }
}

/// One limit of a [`RateLimitLayer`](super::RateLimitLayer) beside its main one: a
/// quota, the key it counts by, and a safety margin.
///
/// ```
/// use std::time::Duration;
/// use ratewise::{key::RequestRef, rate_limit::{Limit, RateLimitLayer}};
///
/// let card = |req: &RequestRef<'_>| req.uri().path().to_owned();
/// // DingTalk: 20 per second per tenant, and one edit per 800 ms per card, taken
/// // together: a request waits until both have room, then takes from both at once.
/// let layer = RateLimitLayer::builder()
///     .per_second(20)
///     .burst(1)
///     .limit(Limit::per_period(Duration::from_millis(800)).key(card))
///     .build()?;
/// # let _ = layer;
/// # Ok::<(), ratewise::ConfigError>(())
/// ```
#[derive(Clone)]
pub struct Limit {
    spec: Spec,
    key: SharedKey,
}

/// A limit's quota and margin, without its key.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Spec {
    rate: Rate,
    burst: Option<u32>,
    pub(crate) margin: Margin,
}

/// What the builder was told, before validation.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Rate {
    Second(u32),
    Minute(u32),
    Period(Duration),
    Sliding(u32, Duration),
    Fixed(u32, Duration),
}

impl Rate {
    pub(crate) fn field(self) -> &'static str {
        match self {
            Rate::Second(_) => "per_second",
            Rate::Minute(_) => "per_minute",
            Rate::Period(_) => "per_period",
            Rate::Sliding(..) => "sliding_window",
            Rate::Fixed(..) => "fixed_window",
        }
    }
}

impl Spec {
    pub(crate) fn new(rate: Rate) -> Self {
        Spec {
            rate,
            burst: None,
            margin: Margin::default(),
        }
    }

    pub(crate) fn with_burst(mut self, burst: u32) -> Self {
        self.burst = Some(burst);
        self
    }

    /// The GCRA quota of a plain rate, validated.
    pub(crate) fn quota(&self) -> Result<Quota, ConfigError> {
        let field = self.rate.field();
        let nonzero =
            |n: u32| NonZeroU32::new(n).ok_or(config_error(field, "must be at least 1 (got 0)"));
        let quota = match self.rate {
            Rate::Second(n) => Quota::per_second(nonzero(n)?),
            Rate::Minute(n) => Quota::per_minute(nonzero(n)?),
            Rate::Period(p) => Quota::per_period(p)?,
            Rate::Sliding(n, w) | Rate::Fixed(n, w) => {
                let n = nonzero(n)?;
                if w.is_zero() {
                    return Err(config_error(field, "window must be longer than zero"));
                }
                return Quota::per_period((w / n.get()).max(Duration::from_nanos(1)))?
                    .with_burst(n);
            }
        };
        match self.burst {
            Some(burst) => {
                let burst = NonZeroU32::new(burst)
                    .ok_or(config_error("burst", "must be at least 1 (got 0)"))?;
                quota.with_burst(burst)
            }
            None => Ok(quota),
        }
    }

    /// The validated counting rule, margin applied.
    pub(crate) fn rule(&self) -> Result<Rule, ConfigError> {
        let quota = self.quota()?;
        Ok(match self.rate {
            Rate::Sliding(n, window) => Rule::Sliding {
                n,
                window: self.margin.pad(window),
            },
            Rate::Fixed(n, window) => Rule::Fixed {
                n,
                window: self.margin.pad(window),
            },
            _ => Rule::Rate {
                interval: self.margin.pad(quota.replenish_interval()),
                burst: quota.burst(),
            },
        })
    }
}

impl Limit {
    fn new(rate: Rate) -> Self {
        Limit {
            spec: Spec::new(rate),
            key: Arc::new(crate::key::Global),
        }
    }

    /// `n` per second (one every `1 s / n`), with a burst of `n`.
    pub fn per_second(n: u32) -> Self {
        Self::new(Rate::Second(n))
    }

    /// `n` per minute, with a burst of `n`.
    pub fn per_minute(n: u32) -> Self {
        Self::new(Rate::Minute(n))
    }

    /// One every `period`, with a burst of 1: DingTalk's one edit per 800 ms per card.
    pub fn per_period(period: Duration) -> Self {
        Self::new(Rate::Period(period))
    }

    /// At most `n` in any window of length `window` (a sliding window, the upstream's
    /// "100 calls in any 5 s"). Keeps at most `n` timestamps per key.
    pub fn sliding_window(n: u32, window: Duration) -> Self {
        Self::new(Rate::Sliding(n, window))
    }

    /// At most `n` per window of length `window`, windows aligned on the limiter's
    /// start (a fixed window). Keeps one counter per key.
    pub fn fixed_window(n: u32, window: Duration) -> Self {
        Self::new(Rate::Fixed(n, window))
    }

    /// The burst of a rate (ignored by windows).
    pub fn burst(mut self, burst: u32) -> Self {
        self.spec.burst = Some(burst);
        self
    }

    /// The key this limit counts by (default: one key for all).
    pub fn key(mut self, key: impl KeyExtractor) -> Self {
        self.key = Arc::new(key);
        self
    }

    /// Pads the interval (or window) by `margin`, so that jitter between the client
    /// and the upstream never brings two requests closer than the upstream allows.
    pub fn margin(mut self, margin: Duration) -> Self {
        self.spec.margin.fixed = margin;
        self
    }

    /// Pads the interval (or window) by `percent` of itself.
    pub fn margin_percent(mut self, percent: u32) -> Self {
        self.spec.margin.per_mille = percent.saturating_mul(10);
        self
    }

    pub(crate) fn needs_body(&self) -> bool {
        self.key.needs_body()
    }

    pub(crate) fn into_parts(self) -> (Spec, SharedKey) {
        (self.spec, self.key)
    }
}

impl fmt::Debug for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Limit")
            .field("spec", &self.spec)
            .finish_non_exhaustive()
    }
}

/// The validated rules of `specs`, margins applied, in order.
pub(crate) fn rules(specs: &[Spec]) -> Result<Vec<Rule>, ConfigError> {
    specs.iter().map(Spec::rule).collect()
}

impl Rule {
    /// The same limit at `1/share` of its quota (at least one cell): what one of
    /// `share` processes may take alone when the store they share is unreachable.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn share(self, share: u32) -> Rule {
        let share = share.max(1);
        match self {
            Rule::Rate { interval, burst } => Rule::Rate {
                interval: interval.saturating_mul(share),
                burst: (burst / share).max(1),
            },
            Rule::Sliding { n, window } => Rule::Sliding {
                n: (n / share).max(1),
                window,
            },
            Rule::Fixed { n, window } => Rule::Fixed {
                n: (n / share).max(1),
                window,
            },
        }
    }
}

/// The state of one `(limit, key)`.
enum State {
    /// GCRA's theoretical arrival time, in ns since the store's origin.
    Rate { tat: u64 },
    /// The admissions within the last window, oldest first: each instant once, with
    /// the cells taken at it (at most `n` entries), and their sum.
    Sliding {
        stamps: VecDeque<(u64, u32)>,
        used: u64,
    },
    /// The current window's index and count.
    Fixed { window: u64, count: u32 },
}

/// What one limit says about a request.
struct Check {
    /// Nanoseconds to wait (0: room now).
    wait: u64,
    /// Cells left after taking these, when there is room.
    remaining: u32,
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl Rule {
    /// The most cells one request can take.
    pub(crate) fn capacity(&self) -> u32 {
        match *self {
            Rule::Rate { burst, .. } => burst,
            Rule::Sliding { n, .. } | Rule::Fixed { n, .. } => n,
        }
    }

    fn fresh(&self) -> State {
        match self {
            Rule::Rate { .. } => State::Rate { tat: 0 },
            Rule::Sliding { .. } => State::Sliding {
                stamps: VecDeque::new(),
                used: 0,
            },
            Rule::Fixed { .. } => State::Fixed {
                window: 0,
                count: 0,
            },
        }
    }

    /// Whether `cost` cells fit at `now`, and if not how long until they would.
    fn check(&self, state: &mut State, now: u64, cost: u32) -> Check {
        match (self, state) {
            (Rule::Rate { interval, burst }, State::Rate { tat }) => {
                let t = nanos(*interval);
                let new_tat = (*tat)
                    .max(now)
                    .saturating_add(t.saturating_mul(u64::from(cost)));
                let limit = now.saturating_add(t.saturating_mul(u64::from(*burst)));
                if new_tat <= limit {
                    let remaining = (limit - new_tat) / t.max(1);
                    Check {
                        wait: 0,
                        remaining: u32::try_from(remaining).unwrap_or(u32::MAX),
                    }
                } else {
                    Check {
                        wait: new_tat - limit,
                        remaining: 0,
                    }
                }
            }
            (Rule::Sliding { n, window }, State::Sliding { stamps, used }) => {
                let w = nanos(*window);
                expire(stamps, used, w, now);
                let total = *used + u64::from(cost);
                if total <= u64::from(*n) {
                    return Check {
                        wait: 0,
                        remaining: u32::try_from(u64::from(*n) - total).unwrap_or(u32::MAX),
                    };
                }
                // The oldest cells must leave the window first.
                let must_leave = total - u64::from(*n);
                let mut left = 0u64;
                let wait = stamps
                    .iter()
                    .find(|(_, count)| {
                        left += u64::from(*count);
                        left >= must_leave
                    })
                    .map_or(w, |(s, _)| s.saturating_add(w).saturating_sub(now));
                Check {
                    wait: wait.max(1),
                    remaining: 0,
                }
            }
            (Rule::Fixed { n, window }, State::Fixed { window: idx, count }) => {
                let w = nanos(*window).max(1);
                let current = now / w;
                if *idx != current {
                    *idx = current;
                    *count = 0;
                }
                match count.checked_add(cost).filter(|total| total <= n) {
                    Some(total) => Check {
                        wait: 0,
                        remaining: n - total,
                    },
                    None => Check {
                        wait: (current + 1).saturating_mul(w).saturating_sub(now).max(1),
                        remaining: 0,
                    },
                }
            }
            _ => Check {
                wait: 0,
                remaining: 0,
            },
        }
    }

    /// Takes `cost` cells at `now` (after a [`check`](Self::check) found room).
    fn take(&self, state: &mut State, now: u64, cost: u32) {
        match (self, state) {
            (Rule::Rate { interval, .. }, State::Rate { tat }) => {
                *tat = (*tat)
                    .max(now)
                    .saturating_add(nanos(*interval).saturating_mul(u64::from(cost)));
            }
            (Rule::Sliding { .. }, State::Sliding { stamps, used }) => {
                match stamps.back_mut() {
                    Some((s, count)) if *s == now => *count = count.saturating_add(cost),
                    _ => stamps.push_back((now, cost)),
                }
                *used += u64::from(cost);
            }
            (Rule::Fixed { .. }, State::Fixed { count, .. }) => *count += cost,
            _ => {}
        }
    }

    /// Whether a state is indistinguishable from a fresh one at `now`.
    fn idle(&self, state: &State, now: u64) -> bool {
        match (self, state) {
            (Rule::Rate { .. }, State::Rate { tat }) => *tat <= now,
            (Rule::Sliding { window, .. }, State::Sliding { stamps, .. }) => stamps
                .back()
                .is_none_or(|(s, _)| s.saturating_add(nanos(*window)) <= now),
            (Rule::Fixed { window, .. }, State::Fixed { window: idx, .. }) => {
                *idx < now / nanos(*window).max(1)
            }
            _ => true,
        }
    }

    /// Corrects a reservation of `reserved` cells taken at `at` (ns, `<= now`) to
    /// `actual` (see [`RateLimitStore::settle`]). Never waits, never refuses.
    fn settle(&self, state: &mut State, now: u64, at: u64, reserved: u32, actual: u32) {
        let (refund, charge) = (
            reserved.saturating_sub(actual),
            actual.saturating_sub(reserved),
        );
        match (self, state) {
            (Rule::Rate { interval, .. }, State::Rate { tat }) => {
                let t = nanos(*interval);
                *tat = tat.saturating_sub(t.saturating_mul(u64::from(refund)));
                if charge > 0 {
                    // Taken at the reservation's instant, as an admission then would be.
                    *tat = (*tat)
                        .max(at)
                        .saturating_add(t.saturating_mul(u64::from(charge)));
                }
            }
            (Rule::Sliding { window, .. }, State::Sliding { stamps, used }) => {
                let w = nanos(*window);
                expire(stamps, used, w, now);
                if at.saturating_add(w) <= now {
                    return; // the reservation has left the window
                }
                // Refund out of the admissions made at or before the reservation, the
                // latest first: never out of a later one, which leaves the window later.
                let mut refund = refund;
                let mut i = stamps.partition_point(|(s, _)| *s <= at);
                while refund > 0 && i > 0 {
                    i -= 1;
                    let (_, count) = &mut stamps[i];
                    let back = refund.min(*count);
                    *count -= back;
                    refund -= back;
                    *used = used.saturating_sub(u64::from(back));
                    if *count == 0 {
                        stamps.remove(i);
                    }
                }
                if charge > 0 {
                    let i = stamps.partition_point(|(s, _)| *s <= at);
                    match i.checked_sub(1).and_then(|j| stamps.get_mut(j)) {
                        Some((s, count)) if *s == at => *count = count.saturating_add(charge),
                        _ => stamps.insert(i, (at, charge)),
                    }
                    *used += u64::from(charge);
                }
            }
            (Rule::Fixed { window, .. }, State::Fixed { window: idx, count }) => {
                let w = nanos(*window).max(1);
                let current = now / w;
                if at / w != current {
                    return; // the reservation's window is over
                }
                if *idx != current {
                    *idx = current;
                    *count = 0;
                }
                *count = count.saturating_sub(refund).saturating_add(charge);
            }
            _ => {}
        }
    }
}

/// Drops the admissions that have left a sliding window of `w` ns at `now`: a stamp at
/// `s` counts within `[s, s + w)`.
fn expire(stamps: &mut VecDeque<(u64, u32)>, used: &mut u64, w: u64, now: u64) {
    while let Some(&(s, count)) = stamps.front() {
        if s.saturating_add(w) > now {
            break;
        }
        stamps.pop_front();
        *used = used.saturating_sub(u64::from(count));
    }
}

/// The in-memory store of a [`RateLimitLayer`](super::RateLimitLayer): one GCRA rate
/// (padded by its margin) goes to governor ([`GovernorStore`]); several limits or a
/// window quota go to the crate's own core, which decides every limit of a request in one
/// atomic step, under one lock.
///
/// A request is admitted only when every one of its limits has room; then it takes
/// from all of them at that same instant. When one has no room, nothing is taken and
/// the wait is the longest of the limits'.
///
/// # Memory
///
/// A GCRA key holds one number, a fixed window one counter, a sliding window at most
/// `n` timestamps. Keys whose state is back to fresh are dropped by an amortised sweep,
/// as [`GovernorStore`](super::GovernorStore) does.
#[derive(Clone)]
pub(crate) struct MemoryStore {
    engine: Engine,
}

#[derive(Clone)]
enum Engine {
    Governor(GovernorStore),
    Own(Arc<Inner>),
}

struct Inner {
    kinds: Box<[Rule]>,
    quota: Quota,
    origin: Instant,
    table: Mutex<Table>,
}

#[derive(Default)]
struct Table {
    states: HashMap<(usize, Key), State>,
    acquisitions: u64,
    next_sweep: u64,
}

/// The fewest acquisitions between two sweeps of idle keys.
const SWEEP_FLOOR: u64 = 1024;

impl MemoryStore {
    /// A store for these limits (in the order the request's keys come in). The first
    /// limit's quota is the one the layer uses for its headers and wait estimates.
    pub(crate) fn new(specs: &[Spec]) -> Result<Self, ConfigError> {
        let Some(first) = specs.first() else {
            return Err(config_error("rate", "is not set"));
        };
        Self::with_rules(rules(specs)?, first.quota()?)
    }

    /// A store following `rules` (validated), whose headers and estimates use `quota`.
    pub(crate) fn with_rules(rules: Vec<Rule>, quota: Quota) -> Result<Self, ConfigError> {
        // One GCRA rate, padded or not: governor's job.
        if let [Rule::Rate { interval, burst }] = rules[..] {
            let burst = NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN);
            let quota = Quota::per_period(interval)?.with_burst(burst)?;
            let engine = Engine::Governor(GovernorStore::new(quota));
            return Ok(MemoryStore { engine });
        }
        let inner = Arc::new(Inner {
            kinds: rules.into_boxed_slice(),
            quota,
            origin: Instant::now(),
            table: Mutex::new(Table {
                next_sweep: SWEEP_FLOOR,
                ..Table::default()
            }),
        });
        Ok(MemoryStore {
            engine: Engine::Own(inner),
        })
    }

    /// How many `(limit, key)` states the store holds.
    pub(crate) fn len(&self) -> usize {
        match &self.engine {
            Engine::Governor(store) => store.len(),
            Engine::Own(inner) => lock(&inner.table).states.len(),
        }
    }

    fn decide(&self, keys: &Keys, cost: NonZeroU32) -> Result<Decision, StoreError> {
        let inner = match &self.engine {
            Engine::Governor(store) => return store.decide(keys.first(), cost),
            Engine::Own(inner) => &**inner,
        };
        let cost = cost.get();
        let mut table = lock(&inner.table);
        let table = &mut *table;
        // Read under the lock, so that decisions are ordered like their instants.
        let now = nanos(Instant::now().saturating_duration_since(inner.origin));
        // Sweep first: a state dropped between a check and its take would lose the take.
        table.acquisitions += 1;
        if table.acquisitions >= table.next_sweep {
            let kinds = &inner.kinds;
            table
                .states
                .retain(|(i, _), state| !kinds[*i].idle(state, now));
            table.next_sweep = table.acquisitions + SWEEP_FLOOR.max(table.states.len() as u64);
        }
        let mut wait = 0u64;
        let mut remaining = u32::MAX;
        for (i, kind) in inner.kinds.iter().enumerate() {
            let key = keys.get(i);
            let state = table
                .states
                .entry((i, key.clone()))
                .or_insert_with(|| kind.fresh());
            let check = kind.check(state, now, cost);
            wait = wait.max(check.wait);
            remaining = remaining.min(check.remaining);
        }
        if wait > 0 {
            return Ok(Decision::Denied {
                wait: Duration::from_nanos(wait),
            });
        }
        for (i, kind) in inner.kinds.iter().enumerate() {
            if let Some(state) = table.states.get_mut(&(i, keys.get(i).clone())) {
                kind.take(state, now, cost);
            }
        }
        Ok(Decision::Admitted { remaining })
    }

    /// [`RateLimitStore::settle`], in one step under the lock.
    fn correct(
        &self,
        keys: &Keys,
        reserved: u32,
        actual: u32,
        age: Duration,
    ) -> Result<(), StoreError> {
        let inner = match &self.engine {
            Engine::Governor(_) => {
                return Err(StoreError::new(
                    "a single GCRA rate in memory is kept by governor, which cannot settle \
                     a reservation (use a window, or several limits)",
                ))
            }
            Engine::Own(inner) => &**inner,
        };
        if reserved == actual {
            return Ok(());
        }
        let mut table = lock(&inner.table);
        let now = nanos(Instant::now().saturating_duration_since(inner.origin));
        let at = now.saturating_sub(nanos(age));
        for (i, kind) in inner.kinds.iter().enumerate() {
            let entry = table.states.entry((i, keys.get(i).clone()));
            let state = match entry {
                std::collections::hash_map::Entry::Occupied(state) => state.into_mut(),
                // Nothing to refund from a fresh key; a charge starts its state.
                std::collections::hash_map::Entry::Vacant(_) if actual < reserved => continue,
                std::collections::hash_map::Entry::Vacant(slot) => slot.insert(kind.fresh()),
            };
            kind.settle(state, now, at, reserved, actual);
        }
        Ok(())
    }
}

impl RateLimitStore for MemoryStore {
    type Future = Ready<Result<Decision, StoreError>>;

    fn acquire(&self, keys: &Keys, cost: NonZeroU32) -> Self::Future {
        ready(self.decide(keys, cost))
    }

    fn quota(&self) -> Quota {
        match &self.engine {
            Engine::Governor(store) => store.quota(),
            Engine::Own(inner) => inner.quota,
        }
    }

    fn key_count(&self) -> Option<usize> {
        Some(self.len())
    }

    fn cell_interval(&self) -> Duration {
        match &self.engine {
            Engine::Governor(store) => store.quota().replenish_interval(),
            Engine::Own(inner) => inner
                .kinds
                .iter()
                .map(|kind| match *kind {
                    Rule::Rate { interval, .. } => interval,
                    Rule::Sliding { n, window } | Rule::Fixed { n, window } => window / n.max(1),
                })
                .max()
                .unwrap_or(inner.quota.replenish_interval()),
        }
    }

    fn max_cost(&self) -> u32 {
        match &self.engine {
            Engine::Governor(store) => store.quota().burst(),
            Engine::Own(inner) => inner.kinds.iter().map(Rule::capacity).min().unwrap_or(1),
        }
    }

    fn settle(&self, keys: &Keys, reserved: u32, actual: u32, age: Duration) -> SettleFuture {
        Box::pin(ready(self.correct(keys, reserved, actual, age)))
    }
}

impl fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.engine {
            Engine::Governor(store) => fmt::Debug::fmt(store, f),
            Engine::Own(inner) => f
                .debug_struct("MemoryStore")
                .field("limits", &inner.kinds)
                .field("keys", &self.len())
                .finish(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one() -> NonZeroU32 {
        NonZeroU32::MIN
    }

    fn keys(a: &str, b: &str) -> Keys {
        Keys::new(Key::from(a), vec![Key::from(b)])
    }

    impl MemoryStore {
        fn decide_ok(&self, keys: &Keys, cost: NonZeroU32) -> Decision {
            self.decide(keys, cost).unwrap()
        }
    }

    fn admitted(d: Decision) -> bool {
        matches!(d, Decision::Admitted { .. })
    }

    #[tokio::test(start_paused = true)]
    async fn two_limits_take_together_or_not_at_all() {
        // Tenant: 2 per second (burst 2); card: 1 per 800 ms.
        let store = MemoryStore::new(&[
            Spec::new(Rate::Second(2)),
            Spec::new(Rate::Period(Duration::from_millis(800))),
        ])
        .unwrap();
        assert!(admitted(store.decide_ok(&keys("t", "a"), one())));
        // Card `a` has no room: nothing is taken from the tenant either.
        assert_eq!(
            store.decide_ok(&keys("t", "a"), one()),
            Decision::Denied {
                wait: Duration::from_millis(800)
            }
        );
        assert!(admitted(store.decide_ok(&keys("t", "b"), one())));
        // The tenant is empty now (2 taken, none by the refused request).
        assert!(!admitted(store.decide_ok(&keys("t", "c"), one())));
        tokio::time::advance(Duration::from_millis(800)).await;
        assert!(admitted(store.decide_ok(&keys("t", "a"), one())));
    }

    #[tokio::test(start_paused = true)]
    async fn a_sliding_window_admits_n_in_any_window() {
        let store =
            MemoryStore::new(&[Spec::new(Rate::Sliding(3, Duration::from_secs(5)))]).unwrap();
        let k = Keys::one(Key::from("k"));
        for _ in 0..3 {
            assert!(admitted(store.decide_ok(&k, one())));
            tokio::time::advance(Duration::from_secs(1)).await;
        }
        // At 3 s: the first stamp (0 s) leaves the window at 5 s.
        assert_eq!(
            store.decide_ok(&k, one()),
            Decision::Denied {
                wait: Duration::from_secs(2)
            }
        );
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(admitted(store.decide_ok(&k, one())));
        assert!(!admitted(store.decide_ok(&k, one())));
    }

    #[tokio::test(start_paused = true)]
    async fn a_fixed_window_resets_on_its_boundary() {
        let store =
            MemoryStore::new(&[Spec::new(Rate::Fixed(2, Duration::from_secs(10)))]).unwrap();
        let k = Keys::one(Key::from("k"));
        tokio::time::advance(Duration::from_secs(7)).await;
        assert!(admitted(store.decide_ok(&k, one())));
        assert!(admitted(store.decide_ok(&k, one())));
        assert_eq!(
            store.decide_ok(&k, one()),
            Decision::Denied {
                wait: Duration::from_secs(3)
            }
        );
        tokio::time::advance(Duration::from_secs(3)).await;
        assert!(admitted(store.decide_ok(&k, one())));
    }

    #[tokio::test(start_paused = true)]
    async fn a_margin_pads_the_interval() {
        let mut spec = Spec::new(Rate::Period(Duration::from_millis(800)));
        spec.margin = Margin {
            fixed: Duration::from_millis(10),
            per_mille: 0,
        };
        let store = MemoryStore::new(&[spec]).unwrap();
        let k = Keys::one(Key::from("card"));
        assert!(admitted(store.decide_ok(&k, one())));
        assert_eq!(
            store.decide_ok(&k, one()),
            Decision::Denied {
                wait: Duration::from_millis(810)
            }
        );
        let relative = Margin {
            fixed: Duration::ZERO,
            per_mille: 25,
        };
        assert_eq!(
            relative.pad(Duration::from_secs(1)),
            Duration::from_millis(1025)
        );
    }

    /// Bug: the idle-key sweep ran between a request's checks and its takes, so the
    /// request that triggered it took nothing and the next one got its slot too.
    #[tokio::test(start_paused = true)]
    async fn a_sweep_between_check_and_take_lost_the_take() {
        let store = MemoryStore::new(&[
            Spec::new(Rate::Second(20)).with_burst(1),
            Spec::new(Rate::Second(20)).with_burst(1),
        ])
        .unwrap();
        let k = Keys::one(Key::from("k"));
        for _ in 0..3000 {
            assert!(admitted(store.decide_ok(&k, one())));
            assert!(
                !admitted(store.decide_ok(&k, one())),
                "two admissions at one instant"
            );
            tokio::time::advance(Duration::from_millis(50)).await;
        }
    }

    fn n(cost: u32) -> NonZeroU32 {
        NonZeroU32::new(cost).unwrap()
    }

    fn settle(store: &MemoryStore, k: &Keys, reserved: u32, actual: u32, age: Duration) {
        store.correct(k, reserved, actual, age).unwrap();
    }

    const SEC: Duration = Duration::from_secs(1);

    #[tokio::test(start_paused = true)]
    async fn a_sliding_window_counts_cells_per_instant_not_per_cell() {
        let store = MemoryStore::new(&[Spec::new(Rate::Sliding(300, 60 * SEC))]).unwrap();
        let k = Keys::one(Key::from("tokens"));
        assert_eq!(
            store.decide_ok(&k, n(200)),
            Decision::Admitted { remaining: 100 }
        );
        tokio::time::advance(10 * SEC).await;
        assert_eq!(
            store.decide_ok(&k, n(100)),
            Decision::Admitted { remaining: 0 }
        );
        // 150 more: the 200 of t = 0 must leave first, at 60 s.
        assert_eq!(
            store.decide_ok(&k, n(150)),
            Decision::Denied { wait: 50 * SEC }
        );
        let Engine::Own(inner) = &store.engine else {
            panic!("a window is the crate's own core")
        };
        let table = lock(&inner.table);
        match table.states.values().next() {
            Some(State::Sliding { stamps, used }) => {
                assert_eq!((stamps.len(), *used), (2, 300));
            }
            _ => panic!("one sliding state"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn settling_a_sliding_window_corrects_the_reservations_own_instant() {
        let store = MemoryStore::new(&[Spec::new(Rate::Sliding(300, 60 * SEC))]).unwrap();
        let k = Keys::one(Key::from("tokens"));
        assert!(admitted(store.decide_ok(&k, n(100)))); // A at 0 s
        tokio::time::advance(10 * SEC).await;
        assert!(admitted(store.decide_ok(&k, n(100)))); // B at 10 s
        tokio::time::advance(10 * SEC).await;
        // A used 30 of its 100: 70 come back, out of A's own instant.
        settle(&store, &k, 100, 30, 20 * SEC);
        assert_eq!(
            store.decide_ok(&k, n(170)),
            Decision::Admitted { remaining: 0 }
        );
        // Full: the first cell to leave is one of A's 30, at 60 s.
        assert_eq!(
            store.decide_ok(&k, n(1)),
            Decision::Denied { wait: 40 * SEC }
        );
        tokio::time::advance(40 * SEC).await;
        assert_eq!(
            store.decide_ok(&k, n(30)),
            Decision::Admitted { remaining: 0 }
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_refund_never_comes_out_of_a_later_admission() {
        let store = MemoryStore::new(&[Spec::new(Rate::Sliding(400, 60 * SEC))]).unwrap();
        let k = Keys::one(Key::from("tokens"));
        assert!(admitted(store.decide_ok(&k, n(50)))); // X at 0 s
        tokio::time::advance(10 * SEC).await;
        assert!(admitted(store.decide_ok(&k, n(150)))); // A at 10 s
        tokio::time::advance(10 * SEC).await;
        assert!(admitted(store.decide_ok(&k, n(100)))); // B at 20 s
                                                        // A reserved 150 and cost 10: its instant gives back 140.
        settle(&store, &k, 150, 10, 10 * SEC);
        // A refund larger than what A's instant holds goes on to earlier admissions
        // (A's last 10, then X's 50), never to B's, which leaves the window later.
        settle(&store, &k, 60, 0, 10 * SEC);
        // Left: B's 100 at 20 s only. 300 more fit.
        assert_eq!(
            store.decide_ok(&k, n(300)),
            Decision::Admitted { remaining: 0 }
        );
        // The next cell to leave is B's, at 80 s (not X's at 60 s: X was refunded).
        assert_eq!(
            store.decide_ok(&k, n(1)),
            Decision::Denied { wait: 60 * SEC }
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_charge_counts_at_the_reservation_and_may_pass_the_limit() {
        let store = MemoryStore::new(&[Spec::new(Rate::Sliding(300, 60 * SEC))]).unwrap();
        let k = Keys::one(Key::from("tokens"));
        assert!(admitted(store.decide_ok(&k, n(100))));
        tokio::time::advance(30 * SEC).await;
        // It cost 350: over the limit, counted from 0 s.
        settle(&store, &k, 100, 350, 30 * SEC);
        assert_eq!(
            store.decide_ok(&k, n(1)),
            Decision::Denied { wait: 30 * SEC }
        );
        tokio::time::advance(30 * SEC).await;
        assert_eq!(
            store.decide_ok(&k, n(300)),
            Decision::Admitted { remaining: 0 }
        );
        // A reservation that already left the window is not corrected.
        tokio::time::advance(61 * SEC).await;
        settle(&store, &k, 300, 1000, 61 * SEC);
        assert_eq!(
            store.decide_ok(&k, n(300)),
            Decision::Admitted { remaining: 0 }
        );
        // A bypass (nothing reserved) is charged its cost.
        tokio::time::advance(60 * SEC).await;
        settle(&store, &k, 0, 250, Duration::ZERO);
        assert_eq!(
            store.decide_ok(&k, n(50)),
            Decision::Admitted { remaining: 0 }
        );
    }

    #[tokio::test(start_paused = true)]
    async fn settling_a_rate_moves_its_arrival_time_and_a_fixed_window_its_count() {
        // Two limits, so the crate's own core keeps the rate.
        let store = MemoryStore::new(&[
            Spec::new(Rate::Second(10)).with_burst(10),
            Spec::new(Rate::Fixed(10, 10 * SEC)),
        ])
        .unwrap();
        let k = keys("t", "t");
        assert!(admitted(store.decide_ok(&k, n(10))));
        assert!(!admitted(store.decide_ok(&k, n(1))));
        settle(&store, &k, 10, 4, Duration::ZERO);
        assert_eq!(
            store.decide_ok(&k, n(6)),
            Decision::Admitted { remaining: 0 }
        );
        // A charge of 2: the rate owes 200 ms, and the window is over by 2.
        settle(&store, &k, 6, 8, Duration::ZERO);
        assert_eq!(
            store.decide_ok(&k, n(1)),
            Decision::Denied { wait: 10 * SEC }
        );
        // A single plain rate is governor's: it cannot settle, and says so.
        let governor = MemoryStore::new(&[Spec::new(Rate::Second(10))]).unwrap();
        let err = governor
            .correct(&Keys::one(Key::from("k")), 2, 1, Duration::ZERO)
            .unwrap_err();
        assert!(err.to_string().contains("cannot settle"), "{err}");
    }

    #[tokio::test(start_paused = true)]
    async fn idle_keys_are_swept() {
        let store =
            MemoryStore::new(&[Spec::new(Rate::Second(1000)), Spec::new(Rate::Second(1000))])
                .unwrap();
        for i in 0..5000 {
            store.decide_ok(&Keys::one(Key::from(format!("k{i}"))), one());
            tokio::time::advance(Duration::from_millis(1)).await;
        }
        assert!(store.len() <= 2 * 1024 + 16, "{} keys kept", store.len());
    }
}
