//! The response future: admission (queue, sleep, take cells), then the inner call.

use std::{
    cell::OnceCell,
    fmt,
    future::Future,
    marker::PhantomData,
    num::NonZeroU32,
    pin::Pin,
    sync::Arc,
    task::{ready, Context, Poll},
    time::Duration,
};

use http::{Request, Response};
use pin_project_lite::pin_project;
use tokio::{
    sync::{AcquireError, OwnedSemaphorePermit, Semaphore},
    time::{sleep_until, Instant, Sleep},
};
use tower::Service;

use super::{
    headers::{self, AnswerFn},
    limiter::{Join, RateLimiter, Ticket},
    policy::{Reject, Wait},
    quota::Quota,
    shared::StoreFuture,
    stats::Rejection,
    store::{Decision, Keys, RateLimitStore, StoreError},
};
use crate::{
    key::{Key, KeyError},
    redact::Redacted,
    vocabulary::{CallContext, Holds, LayerKind, Refusal, RefusalKind},
    BoxError,
};

type Turn = Pin<Box<dyn Future<Output = Result<OwnedSemaphorePermit, AcquireError>> + Send>>;

pin_project! {
    /// Response future of [`RateLimit`](super::RateLimit).
    ///
    /// It waits for admission (wait mode) or decides at once (reject mode), takes the
    /// cells at the moment of admission and calls the inner service in that same poll.
    /// Dropping it before admission takes no cell and leaves its key's queue.
    pub struct ResponseFuture<S, B, M>
    where
        S: Service<Request<B>>,
    {
        #[pin]
        state: State<StoreFuture, S::Future>,
        admission: Option<Admission<S, B>>,
        // Reject mode: the `RateLimit` fields to add to the admitted response.
        stamp: Option<(Quota, u32)>,
        mode: PhantomData<fn() -> M>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<SF, F> {
        // Not polled yet.
        Start,
        // Asking the store for cells.
        Acquire { #[pin] fut: SF },
        // Queued behind other waiters for the key (waiting for the line's permit).
        Queued,
        // Head of the line, sleeping until the cells replenish.
        Sleeping,
        // Admitted (or bypassed): the inner service's future.
        Called { #[pin] fut: F },
        // The request has no key: refused without asking the store.
        Unkeyed { err: Option<KeyError> },
        // Refused.
        Done,
    }
}

/// Everything a limited request needs until it is admitted. Field order matters: the
/// ticket must leave the line before the permit wakes the next waiter.
struct Admission<S, B> {
    limiter: RateLimiter,
    /// The line the request waits in (its keys joined), also its key in logs: made
    /// only when needed, so an admission at the first poll never builds it.
    line: OnceCell<Key>,
    keys: Keys,
    cost: NonZeroU32,
    max_wait: Option<Duration>,
    arrived: Option<Instant>,
    deadline: Option<Instant>,
    known_earliest: Option<Instant>,
    /// Held back: denied cells or queued behind other waiters at least once. Only such
    /// a request counts as having waited, and only it re-checks cooldown gates.
    held: bool,
    /// Reject mode: the user's answer to a refusal.
    answer: Option<AnswerFn>,
    /// Reject mode: whether the admitted response gets `RateLimit` fields.
    stamp: bool,
    /// The cells the store said were left when it admitted the request.
    remaining: u32,
    ticket: Option<Ticket>,
    permit: Option<OwnedSemaphorePermit>,
    turn: Option<Turn>,
    timer: Option<Pin<Box<Sleep>>>,
    pending: Option<(S, Request<B>)>,
}

impl<S, B> Admission<S, B> {
    /// The request's line (and log) key.
    fn line(&self) -> &Key {
        self.line.get_or_init(|| self.keys.line())
    }
}

/// Why a request was not admitted.
enum Denial {
    /// No cell within the wait allowed.
    Denied {
        key: Key,
        wait: Duration,
    },
    /// The request costs more cells than the burst.
    TooCostly {
        key: Key,
        cost: u32,
        burst: u32,
    },
    Store(StoreError),
    /// A layer above that holds the request (a cooldown) refused it while it waited.
    Held(Refusal),
}

impl<S, B, M> ResponseFuture<S, B, M>
where
    S: Service<Request<B>>,
{
    pub(super) fn called(fut: S::Future) -> Self {
        ResponseFuture {
            state: State::Called { fut },
            admission: None,
            stamp: None,
            mode: PhantomData,
        }
    }

    /// A request whose key could not be made: refused at its first poll.
    pub(super) fn unkeyed(err: KeyError) -> Self {
        ResponseFuture {
            state: State::Unkeyed { err: Some(err) },
            admission: None,
            stamp: None,
            mode: PhantomData,
        }
    }

    /// Reject mode: answer a refusal with `answer` (else the default problem), and
    /// add `RateLimit` fields to the admitted response when `stamp`.
    pub(super) fn answering(mut self, answer: Option<AnswerFn>, stamp: bool) -> Self {
        if let Some(adm) = self.admission.as_mut() {
            adm.answer = answer;
            adm.stamp = stamp;
        }
        self
    }

    pub(super) fn limited(
        limiter: RateLimiter,
        keys: Keys,
        cost: NonZeroU32,
        max_wait: Option<Duration>,
        inner: S,
        request: Request<B>,
    ) -> Self {
        ResponseFuture {
            state: State::Start,
            admission: Some(Admission {
                limiter,
                line: OnceCell::new(),
                keys,
                cost,
                max_wait,
                arrived: None,
                deadline: None,
                known_earliest: None,
                held: false,
                answer: None,
                stamp: false,
                remaining: 0,
                ticket: None,
                permit: None,
                turn: None,
                timer: None,
                pending: Some((inner, request)),
            }),
            stamp: None,
            mode: PhantomData,
        }
    }

    /// Drives admission until the inner service has been called (`Ok`, state
    /// `Called`) or the request is refused.
    fn poll_admit(
        mut state: Pin<&mut State<StoreFuture, S::Future>>,
        adm: &mut Admission<S, B>,
        waits: bool,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), Denial>> {
        let interval = adm.limiter.store().cell_interval();
        loop {
            match state.as_mut().project() {
                StateProj::Start => {
                    let cost = adm.cost.get();
                    let most = adm.limiter.store().max_cost();
                    if cost > most {
                        return Poll::Ready(Err(Denial::TooCostly {
                            key: adm.line().clone(),
                            cost,
                            burst: most,
                        }));
                    }
                    // The fast path: a first poll while nobody waits for any key asks the
                    // store at once, and reads the clock only if it must wait.
                    let quiet = adm.arrived.is_none() && adm.limiter.queues().is_quiet();
                    if !quiet {
                        let now = Instant::now();
                        adm.start_clock(now, waits);
                        if waits {
                            // Waiters for this key go first: queue behind them.
                            if adm.join_line(now, interval, Duration::ZERO, true)? {
                                state.set(State::Queued);
                                continue;
                            }
                        } else if let Some(wait) =
                            adm.limiter
                                .queues()
                                .estimate(adm.line(), cost, now, interval)
                        {
                            // Cells that replenish are promised to the waiters.
                            return Poll::Ready(Err(adm.denied(wait)));
                        }
                    }
                    let fut = adm.acquire()?;
                    state.set(State::Acquire { fut });
                }
                StateProj::Acquire { fut } => {
                    let decision = match fut.poll(cx) {
                        Poll::Ready(decision) => decision,
                        Poll::Pending => {
                            // A store that answers later (a round trip): the clock
                            // starts now, in the first poll, as if it had at once.
                            adm.start_clock(Instant::now(), waits);
                            return Poll::Pending;
                        }
                    };
                    match decision {
                        Ok(Decision::Admitted { remaining }) => {
                            adm.remaining = remaining;
                            let fut = adm.admit();
                            state.set(State::Called { fut });
                            return Poll::Ready(Ok(()));
                        }
                        Ok(Decision::Denied { wait }) => {
                            let now = Instant::now();
                            adm.start_clock(now, waits);
                            if !waits {
                                return Poll::Ready(Err(adm.denied(wait)));
                            }
                            let earliest = match (now.checked_add(wait), adm.deadline) {
                                (Some(earliest), Some(deadline)) if earliest <= deadline => {
                                    earliest
                                }
                                (Some(earliest), None) => earliest,
                                _ => return Poll::Ready(Err(adm.denied(wait))),
                            };
                            if let Some(ticket) = &adm.ticket {
                                // Head of the line: sleep until the cells are back.
                                ticket.set_earliest(earliest);
                                adm.sleep_until(earliest);
                                state.set(State::Sleeping);
                                continue;
                            }
                            // A newcomer that found no line: start one, or join the one
                            // that formed meanwhile.
                            adm.known_earliest = Some(earliest);
                            if adm.join_line(now, interval, wait, false)? {
                                state.set(State::Queued);
                            } else {
                                state.set(State::Start);
                            }
                        }
                        Err(err) => {
                            return Poll::Ready(Err(Denial::Store(
                                err.with_key(adm.line().clone()),
                            )))
                        }
                    }
                }
                StateProj::Queued => {
                    let turn = match adm.turn.as_mut() {
                        Some(turn) => turn.as_mut().poll(cx).map(Result::ok),
                        None => Poll::Ready(None),
                    };
                    match turn {
                        Poll::Ready(result) => {
                            adm.turn = None;
                            // The line's semaphore is never closed; should it be, go
                            // ahead as head anyway.
                            adm.permit = result;
                            let now = Instant::now();
                            let sleep_to = adm.known_earliest.filter(|e| *e > now);
                            if let Some(ticket) = adm.ticket.as_mut() {
                                ticket.become_head(sleep_to);
                            }
                            match sleep_to {
                                Some(earliest) => {
                                    adm.sleep_until(earliest);
                                    state.set(State::Sleeping);
                                }
                                None => {
                                    let fut = adm.acquire()?;
                                    state.set(State::Acquire { fut });
                                }
                            }
                        }
                        Poll::Pending => {
                            // Still queued: give up at the deadline.
                            if let Some(timer) = adm.timer.as_mut() {
                                if timer.as_mut().poll(cx).is_ready() {
                                    let now = Instant::now();
                                    let wait = adm
                                        .limiter
                                        .queues()
                                        .estimate(adm.line(), 0, now, interval)
                                        .unwrap_or(interval);
                                    return Poll::Ready(Err(adm.denied(wait)));
                                }
                            }
                            return Poll::Pending;
                        }
                    }
                }
                StateProj::Sleeping => {
                    if let Some(timer) = adm.timer.as_mut() {
                        ready!(timer.as_mut().poll(cx));
                    }
                    let fut = adm.acquire()?;
                    state.set(State::Acquire { fut });
                }
                StateProj::Called { .. } => return Poll::Ready(Ok(())),
                StateProj::Unkeyed { .. } | StateProj::Done => {
                    panic!("rate limit ResponseFuture polled after completion")
                }
            }
        }
    }
}

impl<S, B> Admission<S, B>
where
    S: Service<Request<B>>,
{
    /// Starts the request's clock at its first poll (on the fast path, when the store's
    /// answer is not in hand in that same poll, or is a denial): waiting and `max_wait`
    /// count from there, and the budget is the limiter's `max_wait` or what is left of the
    /// call's deadline, whichever ends sooner.
    fn start_clock(&mut self, now: Instant, waits: bool) {
        if self.arrived.is_some() {
            return;
        }
        self.arrived = Some(now);
        if waits {
            let own = self.max_wait.and_then(|max| now.checked_add(max));
            let call = self
                .pending
                .as_ref()
                .and_then(|(_, req)| CallContext::get(req.extensions()))
                .map(CallContext::deadline);
            self.deadline = match (own, call) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
    }

    /// Asks the store for the request's cells. A request that was held back first
    /// re-checks the [`Holds`] of the layers above that let it through: if one of them
    /// refuses now (its key began cooling meanwhile), it takes no cell and is not sent.
    fn acquire(&self) -> Result<StoreFuture, Denial> {
        if self.held {
            if let Some((_, request)) = &self.pending {
                Holds::check(request.extensions(), Instant::now()).map_err(Denial::Held)?;
            }
        }
        Ok(self.limiter.store().acquire(&self.keys, self.cost))
    }

    /// Joins the key's line with an estimated wait of at least `at_least` (when
    /// `only_if_queued`, only if someone already waits there). `Ok(true)`: queued, wait
    /// for the turn; `Ok(false)`: not queued; `Err`: the wait would pass the deadline.
    fn join_line(
        &mut self,
        now: Instant,
        interval: Duration,
        at_least: Duration,
        only_if_queued: bool,
    ) -> Result<bool, Denial> {
        let join = self.limiter.queues().join(
            self.line(),
            self.cost.get(),
            now,
            interval,
            at_least,
            self.deadline,
            only_if_queued,
        );
        match join {
            Join::Joined {
                ticket,
                turn,
                estimate,
            } => {
                self.enqueue(ticket, turn, estimate);
                Ok(true)
            }
            Join::TooLong { estimate } => Err(self.denied(estimate)),
            Join::NotQueued => Ok(false),
        }
    }
}

impl<S, B> Admission<S, B>
where
    S: Service<Request<B>>,
{
    fn enqueue(&mut self, ticket: Ticket, turn: Arc<Semaphore>, estimate: Duration) {
        tracing::debug!(key = %self.line(), wait = ?estimate, "rate limit: waiting for a cell");
        self.held = true;
        self.ticket = Some(ticket);
        self.turn = Some(Box::pin(turn.acquire_owned()));
        if let Some(deadline) = self.deadline {
            self.sleep_until(deadline);
        }
    }

    fn sleep_until(&mut self, when: Instant) {
        match self.timer.as_mut() {
            Some(timer) => timer.as_mut().reset(when),
            None => self.timer = Some(Box::pin(sleep_until(when))),
        }
    }

    /// Admission: leave the line (ticket first, then the permit, which wakes the next
    /// waiter), count it, and call the inner service.
    fn admit(&mut self) -> S::Future {
        self.ticket = None;
        self.permit = None;
        self.turn = None;
        self.timer = None;
        // Only a request that was held back waited; the time a first-poll admission
        // takes (a store's round trip, or microseconds on a real clock) is no wait, so
        // the clock is read only for a request that waited.
        let waited = self
            .arrived
            .filter(|_| self.held)
            .map(|arrived| Instant::now().saturating_duration_since(arrived));
        self.limiter.counters().record_admitted(waited);
        if let Some(waited) = waited {
            tracing::debug!(key = %self.line(), waited = ?waited, "rate limit: admitted after waiting");
        }
        let (mut inner, request) = self
            .pending
            .take()
            .expect("rate limit ResponseFuture admitted twice");
        inner.call(request)
    }

    fn denied(&self, wait: Duration) -> Denial {
        Denial::Denied {
            key: self.line().clone(),
            wait,
        }
    }
}

impl<S, B> Future for ResponseFuture<S, B, Wait>
where
    S: Service<Request<B>>,
    S::Error: Into<BoxError>,
{
    type Output = Result<S::Response, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        match this.state.as_mut().project() {
            StateProj::Called { fut } => return fut.poll(cx).map_err(Into::into),
            StateProj::Unkeyed { err } => {
                let err = err
                    .take()
                    .expect("rate limit ResponseFuture polled after completion");
                this.state.set(State::Done);
                return Poll::Ready(Err(Box::new(err)));
            }
            _ => {}
        }
        let Some(adm) = this.admission.as_mut() else {
            panic!("rate limit ResponseFuture polled after completion");
        };
        match ready!(Self::poll_admit(this.state.as_mut(), adm, true, cx)) {
            Ok(()) => {
                *this.admission = None;
                match this.state.project() {
                    StateProj::Called { fut } => fut.poll(cx).map_err(Into::into),
                    _ => panic!("rate limit ResponseFuture admitted without a call"),
                }
            }
            Err(denial) => {
                // The budget the wait exceeded: max_wait, or the call's deadline.
                let max_wait = match (adm.deadline, adm.arrived) {
                    (Some(deadline), Some(arrived)) => deadline.saturating_duration_since(arrived),
                    _ => adm.max_wait.unwrap_or(Duration::MAX),
                };
                let limiter = adm.limiter.clone();
                // Leave the line before reporting.
                *this.admission = None;
                this.state.set(State::Done);
                Poll::Ready(Err(match denial {
                    Denial::Denied { key, wait } => {
                        limiter.counters().record_rejected(Rejection::MaxWait);
                        tracing::info!(key = %key, wait = ?wait, max_wait = ?max_wait, "rate limit: wait exceeds max_wait, refusing");
                        Box::new(
                            Refusal::new(LayerKind::RateLimit, RefusalKind::MaxWait { max_wait })
                                .with_key(key)
                                .with_retry_after(wait),
                        )
                    }
                    Denial::TooCostly { key, cost, burst } => {
                        limiter.counters().record_rejected(Rejection::Cost);
                        tracing::info!(key = %key, cost, burst, "rate limit: cost exceeds burst, refusing");
                        Box::new(
                            Refusal::new(
                                LayerKind::RateLimit,
                                RefusalKind::CostExceedsBurst { cost, burst },
                            )
                            .with_key(key),
                        )
                    }
                    Denial::Store(err) => {
                        // The store logs its outage once; each request only at debug.
                        limiter.counters().record_store_error();
                        tracing::debug!(error = %Redacted(&err), "rate limit: store failed, refusing");
                        let refusal =
                            Refusal::new(LayerKind::RateLimit, RefusalKind::StoreUnavailable);
                        Box::new(match err.key() {
                            Some(key) => refusal.with_key(key.clone()),
                            None => refusal,
                        })
                    }
                    Denial::Held(refusal) => {
                        // The layer that holds counts it; the limiter took no cell.
                        tracing::debug!(refusal = %refusal, "rate limit: a layer above refused the request while it waited; not sending it");
                        Box::new(refusal)
                    }
                }))
            }
        }
    }
}

impl<S, B, ResBody> Future for ResponseFuture<S, B, Reject>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
    ResBody: From<String>,
{
    type Output = Result<Response<ResBody>, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        match this.state.as_mut().project() {
            StateProj::Called { fut } => return stamped(fut.poll(cx), *this.stamp),
            StateProj::Unkeyed { .. } => {
                // Logged by the service, where the key was asked for.
                this.state.set(State::Done);
                return Poll::Ready(Ok(headers::unkeyed()));
            }
            _ => {}
        }
        let Some(adm) = this.admission.as_mut() else {
            panic!("rate limit ResponseFuture polled after completion");
        };
        match ready!(Self::poll_admit(this.state.as_mut(), adm, false, cx)) {
            Ok(()) => {
                if adm.stamp {
                    *this.stamp = Some((adm.limiter.quota(), adm.remaining));
                }
                *this.admission = None;
                match this.state.project() {
                    StateProj::Called { fut } => stamped(fut.poll(cx), *this.stamp),
                    _ => panic!("rate limit ResponseFuture admitted without a call"),
                }
            }
            Err(denial) => {
                let limiter = adm.limiter.clone();
                let answer = adm.answer.take();
                let quota = limiter.quota();
                *this.admission = None;
                this.state.set(State::Done);
                let refusal = match denial {
                    Denial::Denied { key, wait } => {
                        limiter.counters().record_rejected(Rejection::OverLimit);
                        tracing::debug!(key = %key, retry_after = ?wait, "rate limit: rejected with 429");
                        limiter.summarize_rejection(Instant::now());
                        // Reject mode is wait mode with no wait allowed.
                        let kind = RefusalKind::MaxWait {
                            max_wait: Duration::ZERO,
                        };
                        Refusal::new(LayerKind::RateLimit, kind)
                            .with_key(key)
                            .with_retry_after(wait)
                    }
                    Denial::TooCostly { key, cost, burst } => {
                        limiter.counters().record_rejected(Rejection::Cost);
                        tracing::debug!(key = %key, cost, burst, "rate limit: cost exceeds burst, rejected with 429");
                        limiter.summarize_rejection(Instant::now());
                        let kind = RefusalKind::CostExceedsBurst { cost, burst };
                        Refusal::new(LayerKind::RateLimit, kind).with_key(key)
                    }
                    Denial::Store(err) => {
                        limiter.counters().record_store_error();
                        tracing::debug!(error = %Redacted(&err), "rate limit: store failed, answering 503");
                        return Poll::Ready(Ok(headers::unavailable()));
                    }
                    // Reject mode never holds a request back, so it never checks a
                    // hold; answer like any refusal should it happen.
                    Denial::Held(refusal) => refusal,
                };
                Poll::Ready(Ok(headers::refused(answer.as_ref(), &refusal, quota)))
            }
        }
    }
}

/// The inner service's answer, with the `RateLimit` fields of an admitted request when
/// the layer adds them.
fn stamped<T, E>(
    poll: Poll<Result<Response<T>, E>>,
    stamp: Option<(Quota, u32)>,
) -> Poll<Result<Response<T>, E>> {
    poll.map_ok(|mut res| {
        if let Some((quota, remaining)) = stamp {
            headers::stamp_admitted(res.headers_mut(), quota, remaining);
        }
        res
    })
}

impl<S, B, M> fmt::Debug for ResponseFuture<S, B, M>
where
    S: Service<Request<B>>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("ResponseFuture");
        if let Some(adm) = &self.admission {
            d.field("key", adm.line()).field("cost", &adm.cost);
        }
        d.finish_non_exhaustive()
    }
}
