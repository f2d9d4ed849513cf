//! The shared state of a [`CachedEndpointLayer`](super::CachedEndpointLayer): one slot
//! per key (entry, cooldown, call in flight), the counters, and the handle.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use http::header::HeaderValue;
use http::response::Parts;
use http::{Extensions, HeaderMap, HeaderName, Response, StatusCode, Version};
use http_body::Body;
use tokio::sync::watch;
use tokio::time::Instant;

use super::{CacheStatus, StaleReason};
use crate::body::PeekBody;
use crate::key::Key;
use crate::metrics::{self, Counter, Meter};
use crate::vocabulary::{LayerKind, Refusal, RefusalKind};

/// The settings a [`CacheBuilder`](super::CacheBuilder) checked.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) ttl: Option<Duration>,
    pub(crate) body_cap: usize,
    pub(crate) default_backoff: Duration,
    pub(crate) status_header: Option<HeaderName>,
}

/// A buffered answer: everything needed to hand out identical copies.
pub(crate) struct Snapshot {
    status: StatusCode,
    version: Version,
    headers: HeaderMap,
    extensions: Extensions,
    body: Bytes,
    trailers: Option<HeaderMap>,
}

impl Snapshot {
    pub(crate) fn new(parts: Parts, body: Bytes, trailers: Option<HeaderMap>) -> Self {
        Snapshot {
            status: parts.status,
            version: parts.version,
            headers: parts.headers,
            extensions: parts.extensions,
            body,
            trailers,
        }
    }

    /// A copy of the answer, marked with `status`.
    fn to_response<B: Body>(
        &self,
        status: CacheStatus,
        header: Option<&HeaderName>,
    ) -> Response<PeekBody<B>> {
        let mut res = Response::new(PeekBody::full(self.body.clone(), self.trailers.clone()));
        *res.status_mut() = self.status;
        *res.version_mut() = self.version;
        *res.headers_mut() = self.headers.clone();
        *res.extensions_mut() = self.extensions.clone();
        mark(&mut res, status, header);
        res
    }
}

impl fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Snapshot")
            .field("status", &self.status)
            .field("body_len", &self.body.len())
            .finish_non_exhaustive()
    }
}

/// Puts `status` in the response's extensions, and in `header` when configured.
pub(crate) fn mark<B>(res: &mut Response<B>, status: CacheStatus, header: Option<&HeaderName>) {
    if let Some(name) = header {
        res.headers_mut()
            .insert(name.clone(), HeaderValue::from_static(status.as_str()));
    }
    res.extensions_mut().insert(status);
}

/// What the leader of a call tells the requests that waited for it.
#[derive(Debug, Clone)]
pub(crate) enum Outcome {
    /// A new entry was stored: serve it (a hit).
    Fresh(Arc<Snapshot>),
    /// The upstream failed or is rate-limited: serve the (stale) entry.
    Stale(Arc<Snapshot>, StaleReason),
    /// Nothing cached, and the upstream's answer was buffered: serve a copy (a miss).
    Copy(Arc<Snapshot>),
    /// The answer could not be shared (an error, or a body over the cap): decide again.
    Retry,
}

/// What a request does next.
pub(crate) enum Decision {
    /// Answer from the cache now.
    Serve(Arc<Snapshot>, CacheStatus),
    /// Cooling down with nothing cached.
    Refuse(Refusal),
    /// Another request's call is in flight: wait for its outcome.
    Wait(watch::Receiver<Option<Outcome>>),
    /// Make the call; the guard ends the flight.
    Lead(FlightGuard),
}

#[derive(Default)]
struct Slot {
    entry: Option<Entry>,
    limited_until: Option<Instant>,
    flight: Option<Flight>,
}

impl Slot {
    fn is_empty(&self) -> bool {
        self.entry.is_none() && self.limited_until.is_none() && self.flight.is_none()
    }

    /// The cooldown left at `now`, forgetting one that has ended.
    fn cooldown(&mut self, now: Instant) -> Option<Duration> {
        match self.limited_until {
            Some(until) if until > now => Some(until - now),
            Some(_) => {
                self.limited_until = None;
                None
            }
            None => None,
        }
    }
}

struct Entry {
    snapshot: Arc<Snapshot>,
    stored_at: Instant,
    invalidated: bool,
}

impl Entry {
    fn is_fresh(&self, now: Instant, ttl: Option<Duration>) -> bool {
        if self.invalidated {
            return false;
        }
        match ttl {
            None => true,
            Some(ttl) => now.saturating_duration_since(self.stored_at) < ttl,
        }
    }
}

struct Flight {
    id: u64,
    /// Cloned by each request that waits for this flight.
    rx: watch::Receiver<Option<Outcome>>,
}

/// The live counters behind [`CacheStats`], each also reported to its metric (see
/// [`crate::metrics`]).
#[derive(Debug)]
struct Counters {
    meter: Meter,
    hits: Counter,
    stale: Counter,
    misses: Counter,
    upstream_calls: Counter,
    coalesced: Counter,
    refused: Counter,
}

impl Default for Counters {
    fn default() -> Self {
        let meter = Meter::new(LayerKind::Cache);
        Counters {
            hits: meter.counter(metrics::CACHE_HITS),
            stale: meter.counter(metrics::STALE_SERVES),
            misses: meter.counter(metrics::CACHE_MISSES),
            upstream_calls: meter.counter(metrics::UPSTREAM_CALLS),
            coalesced: meter.counter(metrics::COALESCED),
            refused: meter.counter_for(metrics::REJECTED, "endpoint_limited"),
            meter,
        }
    }
}

fn bump(counter: &Counter) {
    counter.bump();
}

/// Everything the layer's clones, services and futures share.
pub(crate) struct Shared {
    pub(crate) config: Config,
    slots: Mutex<HashMap<Key, Slot>>,
    counters: Counters,
    next_flight: AtomicU64,
}

impl Shared {
    pub(crate) fn new(config: Config) -> Arc<Self> {
        Arc::new(Shared {
            config,
            slots: Mutex::new(HashMap::new()),
            counters: Counters::default(),
            next_flight: AtomicU64::new(0),
        })
    }

    /// Names the counters' meter (the `name` label of the cache's metrics).
    pub(crate) fn set_name(&self, name: Option<Arc<str>>) {
        self.counters.meter.set_name(name);
    }

    /// The slots. A panic while the lock was held cannot leave a slot half-written
    /// (every update is a single assignment), so a poisoned lock is used as is.
    fn slots(&self) -> MutexGuard<'_, HashMap<Key, Slot>> {
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// What the request for `key` does now. `first` is true on the request's first
    /// decision (a waiter whose leader could not share its answer decides again).
    pub(crate) fn decide(self: &Arc<Self>, key: &Key, first: bool) -> Decision {
        let now = Instant::now();
        let mut slots = self.slots();
        if let Some(slot) = slots.get_mut(key) {
            if let Some(entry) = &slot.entry {
                if entry.is_fresh(now, self.config.ttl) {
                    bump(&self.counters.hits);
                    return Decision::Serve(entry.snapshot.clone(), CacheStatus::Hit);
                }
            }
            if first {
                bump(&self.counters.misses);
            }
            if let Some(remaining) = slot.cooldown(now) {
                return match &slot.entry {
                    Some(entry) => {
                        bump(&self.counters.stale);
                        let reason = StaleReason::CoolingDown { remaining };
                        Decision::Serve(entry.snapshot.clone(), CacheStatus::Stale { reason })
                    }
                    None => {
                        bump(&self.counters.refused);
                        Decision::Refuse(
                            Refusal::new(LayerKind::Cache, RefusalKind::EndpointLimited)
                                .with_key(key.clone())
                                .with_retry_after(remaining),
                        )
                    }
                };
            }
            if let Some(flight) = &slot.flight {
                if first {
                    bump(&self.counters.coalesced);
                }
                return Decision::Wait(flight.rx.clone());
            }
        } else if first {
            bump(&self.counters.misses);
        }
        let (tx, rx) = watch::channel(None);
        let id = self.next_flight.fetch_add(1, Ordering::Relaxed);
        slots.entry(key.clone()).or_default().flight = Some(Flight { id, rx });
        bump(&self.counters.upstream_calls);
        Decision::Lead(FlightGuard {
            shared: Arc::clone(self),
            key: key.clone(),
            id,
            tx: Some(tx),
        })
    }

    /// A copy of `snapshot` marked with `status`.
    pub(crate) fn respond<B: Body>(
        &self,
        snapshot: &Snapshot,
        status: CacheStatus,
    ) -> Response<PeekBody<B>> {
        snapshot.to_response(status, self.config.status_header.as_ref())
    }

    /// Counts a waiter served from its leader's outcome.
    pub(crate) fn count_outcome(&self, outcome: &Outcome) {
        match outcome {
            Outcome::Fresh(_) => bump(&self.counters.hits),
            Outcome::Stale(..) => bump(&self.counters.stale),
            Outcome::Copy(_) | Outcome::Retry => {}
        }
    }
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared")
            .field("config", &self.config)
            .field("keys", &self.slots().len())
            .finish_non_exhaustive()
    }
}

/// The leader's hold on its key's flight. Ending it ([`store`](Self::store),
/// [`share`](Self::share), [`retry`](Self::retry), [`serve_stale`](Self::serve_stale))
/// tells the waiters what to do; dropping it unfinished (the leader was cancelled)
/// wakes them to decide again, so one of them takes the lead.
pub(crate) struct FlightGuard {
    shared: Arc<Shared>,
    key: Key,
    id: u64,
    tx: Option<watch::Sender<Option<Outcome>>>,
}

impl FlightGuard {
    /// Starts the key's cooldown: `retry_after` when the server gave one, else the
    /// configured default backoff.
    pub(crate) fn cool_down(&self, retry_after: Option<Duration>) {
        let wait = retry_after.unwrap_or(self.shared.config.default_backoff);
        let now = Instant::now();
        // A wait too long to represent: the longest one that is.
        let until = now
            .checked_add(wait)
            .or_else(|| now.checked_add(Duration::from_secs(100 * 365 * 24 * 3600)))
            .unwrap_or(now);
        tracing::debug!(key = %self.key, ?wait, "endpoint rate-limited; cooling down");
        if let Some(slot) = self.shared.slots().get_mut(&self.key) {
            slot.limited_until = Some(until);
        }
    }

    /// The upstream failed: with an entry (fresh or stale), ends the flight serving it
    /// to everyone; without one, gives the guard back.
    pub(crate) fn serve_stale(mut self, reason: StaleReason) -> Result<Arc<Snapshot>, Self> {
        let shared = Arc::clone(&self.shared);
        let snapshot = {
            let mut slots = shared.slots();
            let Some(entry) = slots.get_mut(&self.key).and_then(|s| s.entry.as_ref()) else {
                return Err(self);
            };
            let snapshot = entry.snapshot.clone();
            self.end(&mut slots, Outcome::Stale(snapshot.clone(), reason), None);
            snapshot
        };
        bump(&self.shared.counters.stale);
        tracing::debug!(key = %self.key, ?reason, "serving the stale entry");
        Ok(snapshot)
    }

    /// A good answer: stores it as the key's entry and serves it to the waiters.
    pub(crate) fn store(mut self, snapshot: Arc<Snapshot>) {
        let shared = Arc::clone(&self.shared);
        let mut slots = shared.slots();
        self.end(&mut slots, Outcome::Fresh(snapshot.clone()), Some(snapshot));
    }

    /// An answer not to cache, buffered whole: the waiters get copies.
    pub(crate) fn share(mut self, snapshot: Arc<Snapshot>) {
        let shared = Arc::clone(&self.shared);
        let mut slots = shared.slots();
        self.end(&mut slots, Outcome::Copy(snapshot), None);
    }

    /// An answer that cannot be shared: the waiters decide again.
    pub(crate) fn retry(mut self) {
        let shared = Arc::clone(&self.shared);
        let mut slots = shared.slots();
        self.end(&mut slots, Outcome::Retry, None);
    }

    fn end(
        &mut self,
        slots: &mut HashMap<Key, Slot>,
        outcome: Outcome,
        store: Option<Arc<Snapshot>>,
    ) {
        if let Some(slot) = slots.get_mut(&self.key) {
            if let Some(snapshot) = store {
                slot.entry = Some(Entry {
                    snapshot,
                    stored_at: Instant::now(),
                    invalidated: false,
                });
            }
            if slot.flight.as_ref().is_some_and(|f| f.id == self.id) {
                slot.flight = None;
            }
            if slot.is_empty() {
                slots.remove(&self.key);
            }
        }
        if let Some(tx) = self.tx.take() {
            tx.send_replace(Some(outcome));
        }
    }
}

impl Drop for FlightGuard {
    fn drop(&mut self) {
        if self.tx.is_some() {
            // Cancelled before an outcome: free the key, then (dropping `tx`) wake the
            // waiters, who decide again.
            let mut slots = self.shared.slots();
            if let Some(slot) = slots.get_mut(&self.key) {
                if slot.flight.as_ref().is_some_and(|f| f.id == self.id) {
                    slot.flight = None;
                }
                if slot.is_empty() {
                    slots.remove(&self.key);
                }
            }
        }
    }
}

impl fmt::Debug for FlightGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FlightGuard")
            .field("key", &self.key)
            .field("id", &self.id)
            .field("finished", &self.tx.is_none())
            .finish()
    }
}

/// A cheap, cloneable handle on a [`CachedEndpointLayer`](super::CachedEndpointLayer)'s
/// state: invalidate or remove entries, read the cooldown and the counters.
///
/// Made by [`CachedEndpointLayer::handle`](super::CachedEndpointLayer::handle) (or the
/// service's [`handle`](super::CachedEndpoint::handle)); every handle, layer clone and
/// service made from one layer share the same state.
///
/// Keys are the strings the layer's [`KeyExtractor`](crate::key::KeyExtractor) makes;
/// with the default [`MethodUri`](crate::key::MethodUri) build one with
/// [`MethodUri::key_for`](crate::key::MethodUri::key_for) (or `MethodUri.key(&request)`):
/// it is `GET api.sgroup.qq.com/gateway #` and a fingerprint of the full URI.
#[derive(Clone)]
pub struct CacheHandle {
    shared: Arc<Shared>,
}

impl CacheHandle {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        CacheHandle { shared }
    }

    /// Marks the entry of `key` stale (for when the cached answer turned out to be
    /// wrong, e.g. a gateway URL that no longer connects). Returns whether there was
    /// an entry.
    ///
    /// The entry is kept: the next request for `key` refreshes it from the upstream,
    /// and if that refresh is rate-limited or fails, the invalidated entry is still
    /// served (marked [`Stale`](CacheStatus::Stale)). A running cooldown is not
    /// lifted: until it ends the stale entry is served without calling the upstream.
    /// Use [`remove`](Self::remove) to forget an entry for real.
    pub fn invalidate(&self, key: impl Into<Key>) -> bool {
        let key = key.into();
        match self
            .shared
            .slots()
            .get_mut(&key)
            .and_then(|s| s.entry.as_mut())
        {
            Some(entry) => {
                entry.invalidated = true;
                true
            }
            None => false,
        }
    }

    /// [`invalidate`](Self::invalidate)s every entry; returns how many there were.
    pub fn invalidate_all(&self) -> usize {
        let mut slots = self.shared.slots();
        let mut n = 0;
        for entry in slots.values_mut().filter_map(|s| s.entry.as_mut()) {
            entry.invalidated = true;
            n += 1;
        }
        n
    }

    /// Deletes the entry of `key`: nothing stale is left to serve. Returns whether
    /// there was one. A running cooldown is kept (the upstream still limits).
    pub fn remove(&self, key: impl Into<Key>) -> bool {
        let key = key.into();
        let mut slots = self.shared.slots();
        let Some(slot) = slots.get_mut(&key) else {
            return false;
        };
        let had = slot.entry.take().is_some();
        if slot.is_empty() {
            slots.remove(&key);
        }
        had
    }

    /// How long `key` still cools down after a rate-limited answer, if it does.
    pub fn cooldown(&self, key: impl Into<Key>) -> Option<Duration> {
        let key = key.into();
        let now = Instant::now();
        self.shared.slots().get_mut(&key)?.cooldown(now)
    }

    /// Whether `key` has an entry (fresh or stale).
    pub fn contains(&self, key: impl Into<Key>) -> bool {
        let key = key.into();
        self.shared
            .slots()
            .get(&key)
            .is_some_and(|s| s.entry.is_some())
    }

    /// The counters so far.
    pub fn stats(&self) -> CacheStats {
        let c = &self.shared.counters;
        CacheStats {
            hits: c.hits.get(),
            stale_serves: c.stale.get(),
            misses: c.misses.get(),
            upstream_calls: c.upstream_calls.get(),
            coalesced: c.coalesced.get(),
            refused: c.refused.get(),
        }
    }
}

impl fmt::Debug for CacheHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CacheHandle")
            .field("stats", &self.stats())
            .finish()
    }
}

/// What a cache has done so far, from [`CacheHandle::stats`]. Every count is of
/// requests, except `upstream_calls`.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct CacheStats {
    /// Requests answered from a fresh entry, including waiters answered with the
    /// entry their leader just stored.
    pub hits: u64,
    /// Requests answered from a stale entry (rate-limited, cooling down, or the
    /// upstream failed).
    pub stale_serves: u64,
    /// Requests that found no fresh entry when they arrived (whether they then called
    /// the upstream, waited for another request's call, or were refused).
    pub misses: u64,
    /// Calls made to the inner service.
    pub upstream_calls: u64,
    /// Requests that waited for another request's upstream call instead of making
    /// their own.
    pub coalesced: u64,
    /// Requests refused with a [`Refusal`]: cooling down, nothing cached.
    pub refused: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared(ttl: Option<Duration>) -> Arc<Shared> {
        Shared::new(Config {
            ttl,
            body_cap: 1024,
            default_backoff: Duration::from_secs(10),
            status_header: None,
        })
    }

    fn snapshot(body: &'static str) -> Arc<Snapshot> {
        let (parts, ()) = Response::new(()).into_parts();
        Arc::new(Snapshot::new(
            parts,
            Bytes::from_static(body.as_bytes()),
            None,
        ))
    }

    fn lead(shared: &Arc<Shared>, key: &Key) -> FlightGuard {
        match shared.decide(key, true) {
            Decision::Lead(guard) => guard,
            _ => panic!("expected to lead"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancelled_leader_frees_the_key_and_wakes_its_waiters() {
        let shared = shared(None);
        let key = Key::from("k");
        let guard = lead(&shared, &key);
        let Decision::Wait(mut rx) = shared.decide(&key, true) else {
            panic!("expected to wait");
        };
        drop(guard);
        assert!(rx.changed().await.is_err(), "the sender is gone");
        assert!(rx.borrow().is_none(), "no outcome was sent");
        // The key is free: the next request leads.
        let _next = lead(&shared, &key);
        assert_eq!(shared.counters.upstream_calls.get(), 2);
        assert_eq!(shared.counters.coalesced.get(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_finished_flight_leaves_no_empty_slot_behind() {
        let shared = shared(None);
        let key = Key::from("k");
        lead(&shared, &key).retry();
        assert!(shared.slots().is_empty());
        let guard = lead(&shared, &key);
        drop(guard);
        assert!(shared.slots().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn invalidate_keeps_the_entry_to_serve_stale_and_remove_deletes_it() {
        let shared = shared(None);
        let handle = CacheHandle::new(shared.clone());
        let key = Key::from("k");
        assert!(!handle.invalidate("k"));
        lead(&shared, &key).store(snapshot("v1"));
        assert!(matches!(
            shared.decide(&key, true),
            Decision::Serve(_, CacheStatus::Hit)
        ));

        assert!(handle.invalidate("k"));
        let guard = lead(&shared, &key);
        guard.cool_down(None);
        let stale = guard
            .serve_stale(StaleReason::RateLimited)
            .expect("an entry");
        assert_eq!(&stale.body[..], b"v1");
        assert_eq!(handle.cooldown("k"), Some(Duration::from_secs(10)));

        assert!(handle.remove("k"));
        assert!(!handle.contains("k"));
        assert!(
            matches!(shared.decide(&key, true), Decision::Refuse(ref e) if e.retry_after() == Some(Duration::from_secs(10))),
            "cooling down and nothing cached"
        );
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(handle.cooldown("k"), None);
        assert!(matches!(shared.decide(&key, true), Decision::Lead(_)));
    }

    #[tokio::test(start_paused = true)]
    async fn ttl_bounds_freshness() {
        let shared = shared(Some(Duration::from_secs(5)));
        let key = Key::from("k");
        lead(&shared, &key).store(snapshot("v1"));
        tokio::time::advance(Duration::from_millis(4999)).await;
        assert!(matches!(
            shared.decide(&key, true),
            Decision::Serve(_, CacheStatus::Hit)
        ));
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(matches!(shared.decide(&key, true), Decision::Lead(_)));
    }

    #[tokio::test(start_paused = true)]
    async fn an_endless_retry_hint_does_not_overflow() {
        let shared = shared(None);
        let key = Key::from("k");
        let guard = lead(&shared, &key);
        guard.cool_down(Some(Duration::MAX));
        assert!(guard.serve_stale(StaleReason::RateLimited).is_err());
        assert!(CacheHandle::new(shared).cooldown("k").is_some());
    }
}
