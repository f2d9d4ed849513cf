//! The state every clone of one `FreshClient` shares: the current client, its
//! generation and its run of consecutive connection-level errors.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::util::lock;
use std::task::{ready, Context, Poll, Wake, Waker};

use tower::Service;

use crate::vocabulary::{verdict_of_error, Verdict};
use crate::BoxError;

use super::error::{describe, truncate, ClientError, MakeClientError, Standing, LOG_TEXT_CAP};

/// What a [`FreshClientLayer`](super::FreshClientLayer) did: a snapshot, from
/// `stats()` on the layer or its services.
///
/// ```
/// # use ratewise::fresh::FreshClientLayer;
/// let stats = FreshClientLayer::new().stats();
/// assert_eq!((stats.generation, stats.rebuilds, stats.consecutive_errors), (0, 0, 0));
/// ```
#[non_exhaustive]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct FreshStats {
    /// The generation of the current client: 0 before the first one is built, 1 for
    /// the first, 2 after the first rebuild, and so on.
    pub generation: u64,
    /// How many times a retired client was replaced by a new one.
    pub rebuilds: u64,
    /// The current client's run of consecutive connection-level errors.
    pub consecutive_errors: u64,
    /// How many times the `MakeService` failed to build a client.
    pub make_failures: u64,
}

/// The live counters behind [`FreshStats`], shared by the layer, its clones and every
/// service it made.
#[derive(Clone, Default)]
pub(crate) struct FreshCounters {
    inner: Arc<Counters>,
}

#[derive(Default)]
struct Counters {
    generation: AtomicU64,
    rebuilds: AtomicU64,
    consecutive: AtomicU32,
    make_failures: AtomicU64,
}

impl FreshCounters {
    /// A snapshot of the counters.
    pub(crate) fn snapshot(&self) -> FreshStats {
        FreshStats {
            generation: self.generation(),
            rebuilds: self.rebuilds(),
            consecutive_errors: u64::from(self.consecutive_errors()),
            make_failures: self.make_failures(),
        }
    }

    /// The generation of the current client: 0 before the first one is built, 1 for
    /// the first, 2 after the first rebuild, and so on.
    pub(crate) fn generation(&self) -> u64 {
        self.inner.generation.load(Ordering::Relaxed)
    }

    /// How many times a retired client was replaced by a new one (the first build is
    /// not a rebuild).
    pub(crate) fn rebuilds(&self) -> u64 {
        self.inner.rebuilds.load(Ordering::Relaxed)
    }

    /// The current client's run of consecutive connection-level errors.
    pub(crate) fn consecutive_errors(&self) -> u32 {
        self.inner.consecutive.load(Ordering::Relaxed)
    }

    /// How many times the `MakeService` failed to build a client.
    pub(crate) fn make_failures(&self) -> u64 {
        self.inner.make_failures.load(Ordering::Relaxed)
    }
}

impl fmt::Debug for FreshCounters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FreshCounters")
            .field("generation", &self.generation())
            .field("rebuilds", &self.rebuilds())
            .field("consecutive_errors", &self.consecutive_errors())
            .field("make_failures", &self.make_failures())
            .finish()
    }
}

/// The client slot every clone of one `FreshClient` shares, and the build in
/// progress, if any.
pub(super) struct Shared<S, F> {
    slot: Mutex<Slot<S, F>>,
    tally: Arc<Tally>,
    /// Wakes every clone waiting on the build, whichever clone last polled it.
    waiters: Arc<FanOut>,
}

struct Slot<S, F> {
    /// The current client and its generation; `None` before the first build.
    client: Option<(u64, S)>,
    /// The `MakeService` future of the build in progress. It lives here, not in the
    /// clone that started it, so any waiting clone drives it and a caller that gives
    /// up cannot strand the others.
    building: Option<Pin<Box<F>>>,
}

impl<S, F> Shared<S, F> {
    pub(super) fn new(tally: Tally) -> Self {
        Shared {
            slot: Mutex::new(Slot {
                client: None,
                building: None,
            }),
            tally: Arc::new(tally),
            waiters: Arc::new(FanOut::default()),
        }
    }

    pub(super) fn tally(&self) -> &Arc<Tally> {
        &self.tally
    }

    /// Makes `local` a copy of the current client, building one first when there is
    /// none or the current one is retired. `Err` is a failed build.
    ///
    /// Only one build runs at a time: the clone that finds no client and no build
    /// calls the `MakeService`, under the slot's lock; every other clone polls that
    /// same future.
    pub(super) fn poll_checkout<M, T, E>(
        &self,
        make: &mut M,
        target: &T,
        local: &mut Option<(u64, S)>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), MakeClientError>>
    where
        M: Service<T, Response = S, Error = E, Future = F>,
        F: Future<Output = Result<S, E>>,
        E: Into<BoxError>,
        S: Clone,
        T: Clone,
    {
        let mut slot = lock(&self.slot);
        loop {
            if let Some((generation, client)) = &slot.client {
                if self.tally.is_current(*generation) {
                    if local.as_ref().map(|(g, _)| g) != Some(generation) {
                        *local = Some((*generation, client.clone()));
                    }
                    return Poll::Ready(Ok(()));
                }
                // Retired: drop the shared copy. Requests in flight keep theirs.
                slot.client = None;
            }
            *local = None;

            if let Some(fut) = slot.building.as_mut() {
                self.waiters.register(cx.waker());
                let waker = Waker::from(Arc::clone(&self.waiters));
                let result = ready!(fut.as_mut().poll(&mut Context::from_waker(&waker)));
                slot.building = None;
                self.waiters.wake_all();
                match result {
                    Ok(client) => {
                        let generation = self.tally.install();
                        slot.client = Some((generation, client));
                        continue;
                    }
                    Err(err) => return Poll::Ready(Err(self.build_failed::<E>(err.into()))),
                }
            }

            // No client and no build: start one.
            if let Err(err) = ready!(make.poll_ready(cx)) {
                return Poll::Ready(Err(self.build_failed::<E>(err.into())));
            }
            slot.building = Some(Box::pin(make.call(target.clone())));
        }
    }

    fn build_failed<E>(&self, err: BoxError) -> MakeClientError {
        let source_type = std::any::type_name::<E>();
        let generation = self.tally.generation() + 1;
        self.tally
            .stats
            .inner
            .make_failures
            .fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            target: "ratewise::fresh",
            upstream = %self.tally.name,
            generation,
            error = %truncate(&describe(&*err, source_type), LOG_TEXT_CAP),
            "could not build client",
        );
        MakeClientError::new(Arc::clone(&self.tally.name), generation, err, source_type)
    }
}

/// A waker that wakes every task registered with it.
#[derive(Default)]
struct FanOut {
    wakers: Mutex<Vec<Waker>>,
}

impl FanOut {
    fn register(&self, waker: &Waker) {
        let mut wakers = lock(&self.wakers);
        if !wakers.iter().any(|w| w.will_wake(waker)) {
            wakers.push(waker.clone());
        }
    }

    fn wake_all(&self) {
        let wakers = std::mem::take(&mut *lock(&self.wakers));
        wakers.into_iter().for_each(Waker::wake);
    }
}

impl Wake for FanOut {
    fn wake(self: Arc<Self>) {
        self.wake_all();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.wake_all();
    }
}

/// The run of consecutive connection-level errors of the current client, and its
/// generation. Response futures hold only this, so they do not depend on the client
/// type.
pub(super) struct Tally {
    state: Mutex<TallyState>,
    threshold: u32,
    name: Arc<str>,
    stats: FreshCounters,
}

impl fmt::Debug for Tally {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = lock(&self.state);
        f.debug_struct("Tally")
            .field("upstream", &self.name)
            .field("generation", &state.generation)
            .field("consecutive", &state.consecutive)
            .field("retired", &state.retired)
            .field("threshold", &self.threshold)
            .finish()
    }
}

struct TallyState {
    /// The generation of the current (or just retired) client; 0 before the first.
    generation: u64,
    /// Its run of consecutive connection-level errors.
    consecutive: u32,
    /// It reached the threshold; the next checkout replaces it.
    retired: bool,
}

impl Tally {
    pub(super) fn new(threshold: u32, name: Arc<str>, stats: FreshCounters) -> Self {
        Tally {
            state: Mutex::new(TallyState {
                generation: 0,
                consecutive: 0,
                retired: false,
            }),
            threshold,
            name,
            stats,
        }
    }

    pub(super) fn generation(&self) -> u64 {
        lock(&self.state).generation
    }

    pub(super) fn stats(&self) -> &FreshCounters {
        &self.stats
    }

    fn is_current(&self, generation: u64) -> bool {
        let state = lock(&self.state);
        state.generation == generation && !state.retired
    }

    /// Starts the next generation: its run is empty. Returns its number.
    fn install(&self) -> u64 {
        let generation = {
            let mut state = lock(&self.state);
            state.generation += 1;
            state.consecutive = 0;
            state.retired = false;
            state.generation
        };
        let counters = &self.stats.inner;
        counters.generation.store(generation, Ordering::Relaxed);
        counters.consecutive.store(0, Ordering::Relaxed);
        if generation > 1 {
            counters.rebuilds.fetch_add(1, Ordering::Relaxed);
        }
        tracing::debug!(target: "ratewise::fresh", upstream = %self.name, generation, "built client");
        generation
    }

    /// A response (of any status) from `generation`'s client: its run is over.
    pub(super) fn on_response(&self, generation: u64) {
        let mut state = lock(&self.state);
        if state.generation == generation && !state.retired && state.consecutive != 0 {
            state.consecutive = 0;
            self.stats.inner.consecutive.store(0, Ordering::Relaxed);
        }
    }

    /// An error from `generation`'s client, wrapped for the caller.
    ///
    /// ratewise's own errors that carry a wait (rate-limited, see
    /// [`verdict_of_error`]) are returned as they are: they are not connection-level,
    /// and they are already typed and never empty. Everything else comes back as a
    /// [`ClientError`]. Connection-level (transient) errors of the current client
    /// extend its run; the one that brings the run to the threshold retires it.
    /// Errors from an already retired client change nothing, so one burst of failures
    /// causes one rebuild.
    pub(super) fn on_error(
        &self,
        generation: u64,
        err: BoxError,
        source_type: &'static str,
    ) -> BoxError {
        let verdict = verdict_of_error(&*err);
        let (standing, consecutive) = {
            let mut state = lock(&self.state);
            let current = state.generation == generation && !state.retired;
            match verdict {
                Verdict::RateLimited { .. } => return err,
                Verdict::Transient if current => {
                    state.consecutive = state.consecutive.saturating_add(1);
                    self.stats
                        .inner
                        .consecutive
                        .store(state.consecutive, Ordering::Relaxed);
                    if state.consecutive >= self.threshold {
                        state.retired = true;
                        (Standing::Retired, state.consecutive)
                    } else {
                        (Standing::Counted, state.consecutive)
                    }
                }
                // A generation is only ever retired on reaching the threshold.
                Verdict::Transient => (Standing::AlreadyRetired, self.threshold),
                _ if current => (Standing::NotCounted, state.consecutive),
                _ => (Standing::NotCounted, 0),
            }
        };
        let last_error = (standing == Standing::Retired)
            .then(|| truncate(&describe(&*err, source_type), LOG_TEXT_CAP));
        if let Some(last_error) = last_error {
            tracing::warn!(
                target: "ratewise::fresh",
                upstream = %self.name,
                generation,
                consecutive,
                last_error = %last_error,
                "client retired after consecutive connection-level errors; a new one is built before the next request",
            );
        }
        Box::new(ClientError::new(
            generation,
            consecutive,
            self.threshold,
            standing,
            err,
            source_type,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Refused;
    impl fmt::Display for Refused {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("connection refused")
        }
    }
    impl std::error::Error for Refused {}

    fn tally(threshold: u32) -> Tally {
        let tally = Tally::new(threshold, Arc::from("t"), FreshCounters::default());
        assert_eq!(tally.install(), 1);
        tally
    }

    fn standing(err: &BoxError) -> (bool, bool, u32) {
        let e = err.downcast_ref::<ClientError>().expect("a ClientError");
        (e.is_counted(), e.triggered_rebuild(), e.consecutive())
    }

    #[test]
    fn threshold_retires_once_and_old_generation_results_do_not_count() {
        let t = tally(2);
        assert_eq!(
            standing(&t.on_error(1, Box::new(Refused), "R")),
            (true, false, 1)
        );
        assert_eq!(
            standing(&t.on_error(1, Box::new(Refused), "R")),
            (true, true, 2)
        );
        assert!(!t.is_current(1));
        // More errors from generation 1 while the rebuild is pending change nothing.
        assert_eq!(
            standing(&t.on_error(1, Box::new(Refused), "R")),
            (false, false, 2)
        );
        assert_eq!(t.install(), 2);
        // Errors and responses from generation 1 leave generation 2 alone.
        t.on_error(1, Box::new(Refused), "R");
        t.on_error(2, Box::new(Refused), "R");
        t.on_response(1);
        assert_eq!(t.stats.consecutive_errors(), 1);
        assert_eq!(t.stats.rebuilds(), 1);
        assert_eq!(t.stats.generation(), 2);
        assert!(t.is_current(2));
    }

    #[test]
    fn response_resets_the_run() {
        let t = tally(3);
        t.on_error(1, Box::new(Refused), "R");
        t.on_error(1, Box::new(Refused), "R");
        t.on_response(1);
        assert_eq!(t.stats.consecutive_errors(), 0);
        assert_eq!(
            standing(&t.on_error(1, Box::new(Refused), "R")),
            (true, false, 1)
        );
    }
}
