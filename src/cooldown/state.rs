//! The shared cooldown table and the [`CooldownHandle`] that queries it.
//!
//! One [`Entry`] per key that is cooling, half-open, or has a non-zero consecutive
//! count; every other key has no entry.
//!
//! Counting "consecutive" answers: the table keeps a sequence number that moves on
//! every counted signal; a request remembers it when admitted. A rate-limited answer
//! counts (`n + 1`) when its request was admitted after the key's last counted signal,
//! or when the key is neither cooling nor half-open. Answers to requests that were
//! already in flight when the cooldown began are "stale": they do not raise `n` (ten
//! concurrent 429s are one signal, not ten), but their retry hint can still extend the
//! cooldown. A success resets `n` on the same rule.

use std::{
    borrow::Borrow,
    collections::HashMap,
    fmt,
    pin::Pin,
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use tokio::{
    sync::{futures::OwnedNotified, Notify},
    time::Instant,
};

use super::{
    events::{trace, CooldownEvent, CooldownReason, OnCooldownEvent},
    layer::Config,
    stats::{CooldownStats, Counters},
    store::{CooldownStore, Probe, Remote, Rules},
};
use crate::{
    key::Key,
    util::{add, lock},
    vocabulary::{Hold, LayerId, LayerKind, Refusal, RefusalKind, Verdict},
};

/// Where a key stands, from [`CooldownHandle::state`].
#[non_exhaustive]
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum KeyState {
    /// Requests go straight through.
    Ok,
    /// No request reaches the upstream until `until`.
    Cooling {
        /// When the cooldown ends (precheck margin included).
        until: Instant,
        /// Consecutive rate-limited answers so far.
        n: u32,
    },
    /// The cooldown is over, but only one probe request may go until it is answered
    /// without a rate limit.
    HalfOpen {
        /// Consecutive rate-limited answers so far.
        n: u32,
        /// Whether the probe is in flight (otherwise the next request becomes it).
        probing: bool,
    },
}

/// Shows the instant as a delay from now: `Cooling { until_in_ms: 1500, n: 2 }`.
impl fmt::Debug for KeyState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            KeyState::Ok => f.write_str("Ok"),
            KeyState::Cooling { until, n } => f
                .debug_struct("Cooling")
                .field(
                    "until_in_ms",
                    &until.saturating_duration_since(Instant::now()).as_millis(),
                )
                .field("n", &n)
                .finish(),
            KeyState::HalfOpen { n, probing } => f
                .debug_struct("HalfOpen")
                .field("n", &n)
                .field("probing", &probing)
                .finish(),
        }
    }
}

/// Serialized with the instant as a delay from now, in milliseconds:
/// `{"state":"cooling","until_in_ms":1500,"n":2}`, `{"state":"half_open","n":2,"probing":true}`,
/// `{"state":"ok"}`.
#[cfg(feature = "serde")]
impl serde::Serialize for KeyState {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(None)?;
        match *self {
            KeyState::Ok => map.serialize_entry("state", "ok")?,
            KeyState::Cooling { until, n } => {
                map.serialize_entry("state", "cooling")?;
                let ms = until.saturating_duration_since(Instant::now()).as_millis();
                map.serialize_entry("until_in_ms", &u64::try_from(ms).unwrap_or(u64::MAX))?;
                map.serialize_entry("n", &n)?;
            }
            KeyState::HalfOpen { n, probing } => {
                map.serialize_entry("state", "half_open")?;
                map.serialize_entry("n", &n)?;
                map.serialize_entry("probing", &probing)?;
            }
        }
        map.end()
    }
}

/// A cheap, cloneable handle on a cooldown table: per-key state and counters.
///
/// From [`CooldownLayer::handle`](super::CooldownLayer::handle) or
/// [`Cooldown::handle`](super::Cooldown::handle); every clone sees the same table. A
/// query takes one short lock and one hash lookup, so a pool can call it per request to
/// skip backends that are cooling. Instants are [`tokio::time::Instant`]s (they follow
/// tokio's paused clock in tests).
#[derive(Clone)]
pub struct CooldownHandle {
    shared: Arc<Shared>,
}

impl CooldownHandle {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        CooldownHandle { shared }
    }

    /// Where `key` stands now.
    pub fn state<Q: Borrow<str> + ?Sized>(&self, key: &Q) -> KeyState {
        let now = Instant::now();
        let table = self.shared.lock();
        match table.map.get(key.borrow()) {
            None => KeyState::Ok,
            Some(e) => e.state(now),
        }
    }

    /// Where `key` stands now and, when the table has an entry for it, a registration
    /// that completes on the key's next change (taken under the same lock, so no change
    /// after this state is missed). The pool waits on it while a backend's probe is in
    /// flight.
    pub(crate) fn state_and_waiter<Q: Borrow<str> + ?Sized>(
        &self,
        key: &Q,
    ) -> (KeyState, Option<Pin<Box<OwnedNotified>>>) {
        let now = Instant::now();
        let table = self.shared.lock();
        match table.map.get(key.borrow()) {
            None => (KeyState::Ok, None),
            Some(e) => (e.state(now), Some(e.waiter())),
        }
    }

    /// When `key`'s cooldown ends, if it is cooling now.
    pub fn cooling_until<Q: Borrow<str> + ?Sized>(&self, key: &Q) -> Option<Instant> {
        match self.state(key) {
            KeyState::Cooling { until, .. } => Some(until),
            _ => None,
        }
    }

    /// Whether a request for `key` would go upstream right now without waiting: the key
    /// is [`KeyState::Ok`] or half-open with no probe in flight (it would be the probe).
    pub fn is_available<Q: Borrow<str> + ?Sized>(&self, key: &Q) -> bool {
        matches!(
            self.state(key),
            KeyState::Ok | KeyState::HalfOpen { probing: false, .. }
        )
    }

    /// The counters.
    pub fn stats(&self) -> CooldownStats {
        self.shared.stats.snapshot()
    }

    /// How many keys the table holds (cooling, half-open, or with a non-zero count).
    pub fn tracked_keys(&self) -> usize {
        self.shared.lock().map.len()
    }
}

impl fmt::Debug for CooldownHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CooldownHandle")
            .field("config", &self.shared.config)
            .field("stats", &self.stats())
            .finish()
    }
}

/// State shared by a layer, its clones and every service and future they make.
pub(crate) struct Shared {
    /// Unique per table: names the cooldown whose hold refused a request.
    pub(crate) id: LayerId,
    pub(crate) config: Config,
    pub(crate) stats: Counters,
    table: Mutex<Table>,
    on_event: OnCooldownEvent,
    /// The table shared between processes, and what it needs to start a cooldown.
    pub(crate) store: Option<(Arc<dyn CooldownStore>, Rules)>,
}

#[derive(Default)]
struct Table {
    map: HashMap<Key, Entry>,
    /// Moves on every counted signal, in any key.
    seq: u64,
    next_probe: u64,
}

struct Entry {
    /// Consecutive counted rate-limited answers.
    n: u32,
    /// End of the latest cooldown (precheck margin included); may be in the past.
    until: Option<Instant>,
    /// A cooldown began and no probe has been answered without a rate limit since.
    half_open: bool,
    /// The id of the probe in flight.
    probe: Option<u64>,
    /// `Table::seq` at this key's last counted signal.
    last_signal: u64,
    /// The first `Started` of the current episode.
    episode_start: Option<Instant>,
    /// Wakes waiters on every change (`notify_waiters` only).
    notify: Arc<Notify>,
    /// Requests waiting for this key's cooldown or probe (each holds a [`WaitSlot`]).
    /// When the key opens they go first: a request arriving while any of them has not
    /// yet re-checked waits behind them.
    waiting: usize,
    /// When the key last opened: newcomers wait behind its waiters at most
    /// [`OPEN_GRACE`] after it, so a waiter that is never polled again cannot hold them.
    opened_at: Option<Instant>,
    /// The shared store says another process holds the probe: ask it again then.
    elsewhere: Option<Instant>,
}

/// How much later than this table's a shared cooldown must end to extend it.
const MERGE_TOLERANCE: Duration = Duration::from_millis(5);

/// How often a request waiting for a probe held in another process asks the store again.
const ELSEWHERE_RECHECK: Duration = Duration::from_millis(50);

/// How long newcomers let the waiters of a key that just opened go first.
const OPEN_GRACE: Duration = Duration::from_millis(100);

impl Entry {
    fn new() -> Self {
        Entry {
            n: 0,
            until: None,
            half_open: false,
            probe: None,
            last_signal: 0,
            episode_start: None,
            notify: Arc::new(Notify::new()),
            waiting: 0,
            opened_at: None,
            elsewhere: None,
        }
    }

    fn cooling(&self, now: Instant) -> Option<Instant> {
        self.until.filter(|u| now < *u)
    }

    fn state(&self, now: Instant) -> KeyState {
        if let Some(until) = self.cooling(now) {
            KeyState::Cooling { until, n: self.n }
        } else if self.half_open {
            KeyState::HalfOpen {
                n: self.n,
                probing: self.probe.is_some(),
            }
        } else {
            KeyState::Ok
        }
    }

    fn removable(&self, now: Instant) -> bool {
        self.n == 0
            && !self.half_open
            && self.probe.is_none()
            && self.waiting == 0
            && self.cooling(now).is_none()
    }

    /// A waiter registration, taken under the lock so no `notify_waiters` is missed.
    fn waiter(&self) -> Pin<Box<OwnedNotified>> {
        Box::pin(self.notify.clone().notified_owned())
    }
}

/// What a request may do now.
pub(crate) enum Admission {
    /// Send it upstream.
    Go(Ticket),
    /// Wait until `wake_at` or until the key's state changes, then ask again.
    /// `slot`: the request counts as waiting for the key (it goes first when the key
    /// opens); `None` for a request waiting behind those.
    Wait {
        wake_at: Instant,
        notified: Pin<Box<OwnedNotified>>,
        slot: Option<WaitSlot>,
    },
    /// Refuse it.
    Reject(Refusal),
}

/// What an admitted request carries until its answer is reported.
pub(crate) struct Ticket {
    seq: u64,
    probe: Option<ProbeSlot>,
    /// What the shared store said at admission, when there is one.
    pub(crate) remote: Option<Remote>,
}

impl Ticket {
    pub(crate) fn is_probe(&self) -> bool {
        self.probe.is_some()
    }

    /// The probe's id, when this request is the half-open probe.
    pub(crate) fn probe_id(&self) -> Option<u64> {
        self.probe.as_ref().map(|p| p.id)
    }
}

/// A request waiting for a key's cooldown or probe: counted in `Entry::waiting` until it
/// asks again or is dropped.
pub(crate) struct WaitSlot {
    shared: Arc<Shared>,
    key: Key,
    active: bool,
}

impl Drop for WaitSlot {
    fn drop(&mut self) {
        if self.active {
            self.shared
                .leave_wait(&mut self.shared.lock(), &self.key, Instant::now());
        }
    }
}

/// The half-open probe slot: released on drop unless the answer was reported, so a
/// cancelled probe never deadlocks its key.
struct ProbeSlot {
    shared: Arc<Shared>,
    key: Key,
    id: u64,
    reported: bool,
}

impl Drop for ProbeSlot {
    fn drop(&mut self) {
        if !self.reported {
            self.shared.release_probe(&self.key, self.id);
        }
    }
}

/// The cooldown's refusal of a request for `key`: cooling for `remaining`, or half-open
/// with a probe in flight.
pub(crate) fn refusal(key: &Key, remaining: Duration, probing: bool) -> Refusal {
    let kind = if probing {
        RefusalKind::Probing
    } else {
        RefusalKind::CoolingDown
    };
    Refusal::new(LayerKind::Cooldown, kind)
        .with_key(key.clone())
        .with_retry_after(remaining)
}

impl Shared {
    pub(crate) fn new(
        config: Config,
        on_event: OnCooldownEvent,
        store: Option<Arc<dyn CooldownStore>>,
    ) -> Arc<Self> {
        let store = store.map(|store| {
            let rules = Rules {
                backoff: (1..=16).map(|n| config.backoff.delay(n)).collect(),
                max_cooldown: config.max_cooldown,
                precheck: config.precheck,
            };
            (store, rules)
        });
        Arc::new(Shared {
            id: LayerId::new(),
            config,
            stats: Counters::default(),
            table: Mutex::new(Table::default()),
            on_event,
            store,
        })
    }

    /// Mirrors what the shared store said about `key` into the table: a cooldown
    /// started elsewhere (only ever extending this table's), or a probe held elsewhere.
    /// The request that asked goes back to [`admit`](Self::admit).
    pub(crate) fn merge(&self, key: &Key, remote: &Remote, now: Instant) {
        let mut events = Vec::new();
        {
            let mut table = self.lock();
            let entry = table.map.entry(key.clone()).or_insert_with(Entry::new);
            entry.n = entry.n.max(remote.n);
            if let Some(remaining) = remote.cooling {
                let until = add(now, remaining);
                if entry.until.is_none_or(|u| until > u) {
                    // Clocks and round trips differ by a little: only a clearly later
                    // end is news (an event).
                    let news = entry.until.is_none_or(|u| until > add(u, MERGE_TOLERANCE));
                    if !entry.half_open || entry.episode_start.is_none() {
                        entry.episode_start = Some(now);
                    }
                    entry.until = Some(until);
                    entry.half_open = true;
                    if news {
                        Counters::bump(&self.stats.extended);
                        events.push(CooldownEvent::Extended {
                            key: key.clone(),
                            n: entry.n,
                            retry_after: remaining,
                            until,
                        });
                    }
                }
            }
            if let Probe::Elsewhere(for_at_most) = remote.probe {
                entry.half_open = true;
                // Ask again soon: the probe's answer opens the key in the store.
                entry.elsewhere = Some(add(now, for_at_most.min(ELSEWHERE_RECHECK)));
            }
            entry.notify.notify_waiters();
        }
        self.emit(events);
    }

    /// The shared store made this request the probe: so is it in this table.
    pub(crate) fn adopt_probe(self: &Arc<Self>, key: &Key, ticket: &mut Ticket) {
        if ticket.probe.is_some() {
            return;
        }
        let mut table = self.lock();
        let id = table.next_probe;
        let entry = table.map.entry(key.clone()).or_insert_with(Entry::new);
        entry.half_open = true;
        entry.elsewhere = None;
        if entry.probe.is_none() {
            entry.probe = Some(id);
            table.next_probe += 1;
            ticket.probe = Some(ProbeSlot {
                shared: self.clone(),
                key: key.clone(),
                id,
                reported: false,
            });
        }
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        lock(&self.table)
    }

    fn emit(&self, events: Vec<CooldownEvent>) {
        for event in &events {
            trace(event);
            (self.on_event)(event);
        }
    }

    /// Decides what a request for `key` does at `now`. `deadline` is the latest it may
    /// wait until (`None`: fail-fast).
    /// `slot`: the request's [`WaitSlot`] when it waited before (it is released here).
    pub(crate) fn admit(
        self: &Arc<Self>,
        key: &Key,
        now: Instant,
        deadline: Option<Instant>,
        slot: Option<WaitSlot>,
    ) -> Admission {
        let mut table = self.lock();
        let returning = match slot {
            Some(mut slot) if slot.active => {
                slot.active = false;
                self.leave_wait(&mut table, key, now);
                true
            }
            _ => false,
        };
        let seq = table.seq;
        let Some(entry) = table.map.get_mut(key) else {
            return Admission::Go(Ticket {
                seq,
                probe: None,
                remote: None,
            });
        };
        if let Some(until) = entry.cooling(now) {
            return match deadline {
                Some(d) if until <= d => Admission::Wait {
                    wake_at: until,
                    notified: entry.waiter(),
                    slot: Some(self.enter_wait(entry, key)),
                },
                _ => Admission::Reject(refusal(key, until - now, false)),
            };
        }
        if entry.half_open {
            let elsewhere = entry.elsewhere.filter(|t| now < *t);
            if entry.probe.is_some() || elsewhere.is_some() {
                return match deadline {
                    Some(d) if now < d => Admission::Wait {
                        wake_at: elsewhere.map_or(d, |t| t.min(d)),
                        notified: entry.waiter(),
                        slot: Some(self.enter_wait(entry, key)),
                    },
                    _ => Admission::Reject(refusal(key, Duration::ZERO, true)),
                };
            }
            let id = table.next_probe;
            table.next_probe += 1;
            if let Some(entry) = table.map.get_mut(key) {
                entry.probe = Some(id);
            }
            Counters::bump(&self.stats.probes);
            let probe = ProbeSlot {
                shared: self.clone(),
                key: key.clone(),
                id,
                reported: false,
            };
            return Admission::Go(Ticket {
                seq,
                probe: Some(probe),
                remote: None,
            });
        }
        // The key is open: the requests that waited for it go first, for a short grace
        // (they run within microseconds once woken; one that is never polled again
        // must not hold the newcomers until their deadline).
        let grace_end = entry.opened_at.and_then(|at| at.checked_add(OPEN_GRACE));
        if !returning && entry.waiting > 0 {
            let until = match (deadline, grace_end) {
                (Some(d), Some(g)) => Some(d.min(g)),
                (d, g) => d.and(g),
            };
            if let Some(until) = until.filter(|u| now < *u) {
                return Admission::Wait {
                    wake_at: until,
                    notified: entry.waiter(),
                    slot: None,
                };
            }
        }
        if entry.removable(now) {
            table.map.remove(key);
        }
        Admission::Go(Ticket {
            seq,
            probe: None,
            remote: None,
        })
    }

    /// Counts a request as waiting for `entry`'s key.
    fn enter_wait(self: &Arc<Self>, entry: &mut Entry, key: &Key) -> WaitSlot {
        entry.waiting += 1;
        WaitSlot {
            shared: self.clone(),
            key: key.clone(),
            active: true,
        }
    }

    /// A waiting request asked again or was dropped: when it was the last, the requests
    /// queued behind the waiters are woken.
    fn leave_wait(&self, table: &mut Table, key: &Key, now: Instant) {
        if let Some(entry) = table.map.get_mut(key) {
            entry.waiting = entry.waiting.saturating_sub(1);
            if entry.waiting == 0 {
                entry.notify.notify_waiters();
                if entry.removable(now) {
                    table.map.remove(key);
                }
            }
        }
    }

    /// Records the verdict of an admitted request's answer.
    pub(crate) fn report(&self, key: &Key, mut ticket: Ticket, verdict: Verdict, now: Instant) {
        let probe_id = ticket.probe.as_mut().map(|p| {
            p.reported = true;
            p.id
        });
        let mut events = Vec::new();
        {
            let mut table = self.lock();
            let table = &mut *table;
            match verdict {
                Verdict::RateLimited { retry_after } => {
                    let entry = table.map.entry(key.clone()).or_insert_with(Entry::new);
                    let active = entry.cooling(now).is_some() || entry.half_open;
                    let counted = probe_id.is_some() || !active || ticket.seq >= entry.last_signal;
                    if counted {
                        table.seq += 1;
                        entry.last_signal = table.seq;
                        entry.n = entry.n.saturating_add(1);
                        events.push(self.start(key, entry, retry_after, now));
                    } else if let Some(ra) = retry_after {
                        let d = self.config.max_cooldown.map_or(ra, |m| ra.min(m));
                        let new_until = add(add(now, d), self.config.precheck);
                        if entry.until.is_none_or(|u| new_until > u) {
                            entry.until = Some(new_until);
                            entry.half_open = true;
                            Counters::bump(&self.stats.extended);
                            events.push(CooldownEvent::Extended {
                                key: key.clone(),
                                n: entry.n,
                                retry_after: ra,
                                until: new_until,
                            });
                        }
                    }
                    if probe_id.is_some() && entry.probe == probe_id {
                        entry.probe = None;
                    }
                    entry.notify.notify_waiters();
                }
                Verdict::Transient => {
                    // Connection errors, 5xx, 408: `n` stays; a probe frees its slot
                    // so the next waiter probes.
                    if let Some(entry) = table.map.get_mut(key) {
                        if probe_id.is_some() && entry.probe == probe_id {
                            entry.probe = None;
                            entry.notify.notify_waiters();
                        }
                    }
                }
                // Success, and any other answer the upstream actually served (a
                // failure is not a rate limit): a probe opens the key.
                verdict => {
                    let success = verdict == Verdict::Success;
                    if let Some(entry) = table.map.get_mut(key) {
                        let n_before = entry.n;
                        let counted = probe_id.is_some() || ticket.seq >= entry.last_signal;
                        if success && counted && entry.n > 0 {
                            table.seq += 1;
                            entry.last_signal = table.seq;
                            entry.n = 0;
                        }
                        if probe_id.is_some() && entry.probe == probe_id {
                            entry.probe = None;
                            if entry.cooling(now).is_none() {
                                entry.half_open = false;
                                entry.opened_at = Some(now);
                                let start = entry.episode_start.take().unwrap_or(now);
                                events.push(CooldownEvent::Ended {
                                    key: key.clone(),
                                    n: n_before,
                                    cooled_for: now - start,
                                });
                            }
                            entry.notify.notify_waiters();
                        }
                        if entry.removable(now) {
                            entry.notify.notify_waiters();
                            table.map.remove(key);
                        }
                    }
                }
            }
        }
        self.emit(events);
    }

    /// Puts `entry` into cooldown after its `n`-th counted signal.
    fn start(
        &self,
        key: &Key,
        entry: &mut Entry,
        retry_after: Option<Duration>,
        now: Instant,
    ) -> CooldownEvent {
        let backoff = self.config.backoff.delay(entry.n);
        // The server's hint is the cooldown (plus the precheck margin): a string of
        // `retry_after: 1` answers cools 1 s each time. The layer's own backoff, which
        // escalates with `n`, applies only to answers without a hint, so an upstream
        // that limits again without saying how long after a hinted cooldown gets the
        // escalated backoff.
        let (requested, reason) = match retry_after {
            Some(ra) => (ra, CooldownReason::RetryAfter),
            None => (backoff, CooldownReason::Backoff),
        };
        let duration = self
            .config
            .max_cooldown
            .map_or(requested, |m| requested.min(m));
        let new_until = add(add(now, duration), self.config.precheck);
        let until = entry.until.map_or(new_until, |u| u.max(new_until));
        entry.until = Some(until);
        if !entry.half_open || entry.episode_start.is_none() {
            entry.episode_start = Some(now);
        }
        entry.half_open = true;
        Counters::bump(&self.stats.started);
        CooldownEvent::Started {
            key: key.clone(),
            n: entry.n,
            duration,
            requested,
            capped: duration < requested,
            reason,
            retry_after,
            backoff,
            until,
        }
    }

    /// Frees the probe slot of a probe whose answer will never be reported.
    fn release_probe(&self, key: &Key, id: u64) {
        let mut table = self.lock();
        if let Some(entry) = table.map.get_mut(key) {
            if entry.probe == Some(id) {
                entry.probe = None;
                entry.notify.notify_waiters();
            }
        }
    }
}

/// The cooldown's hold on a request it let through: a request admitted earlier for
/// `key` (as the probe `ticket`, or not) may still be sent at `now` unless the key is
/// cooling, or half-open and this request is not its probe.
impl Hold for Shared {
    fn check(&self, key: &Key, ticket: Option<u64>, now: Instant) -> Result<(), Refusal> {
        let table = self.lock();
        let Some(entry) = table.map.get(key) else {
            return Ok(());
        };
        if let Some(until) = entry.cooling(now) {
            return Err(refusal(key, until - now, false));
        }
        if entry.half_open && (ticket.is_none() || entry.probe != ticket) {
            return Err(refusal(key, Duration::ZERO, entry.probe.is_some()));
        }
        Ok(())
    }
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}
