//! The [`ResponseFuture`] of [`Pool`](super::Pool).

use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{ready, Context, Poll},
};

use http::{Request, Response};
use pin_project_lite::pin_project;
use tokio::{
    sync::futures::OwnedNotified,
    time::{sleep_until, Instant, Sleep},
};
use tower::Service;

use super::{
    builder::mark_reached,
    route::BackendName,
    service::{BoxBackend, ServedBy, Shared},
    stats::bump,
};
use crate::{
    cooldown::KeyState,
    redact::Redacted,
    retry::{try_clone_request, TryCloneBody},
    util::far_future,
    vocabulary::{
        verdict_of, verdict_of_error, CallContext, Candidate, LayerKind, Refusal, RefusalKind,
        Unavailable, Verdict,
    },
    BoxError,
};

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;
type Answer<ResB> = Result<Response<ResB>, BoxError>;

pin_project! {
    /// The response future of [`Pool`](super::Pool): picks a candidate backend, calls
    /// it, moves on to the next when the answer is rate-limited, and waits (with
    /// `tokio::time`) when no candidate is available.
    pub struct ResponseFuture<ReqB, ResB> {
        #[pin]
        state: State<ResB>,
        shared: Arc<Shared<ReqB, ResB>>,
        // Backend indices, in the order they are tried.
        candidates: Arc<[usize]>,
        // The request, kept while another candidate may still be tried.
        req: Option<Request<ReqB>>,
        // One per candidate.
        slots: Vec<Slot<ReqB, ResB>>,
        // The latest answer that was failed over, returned if no candidate is left.
        last: Option<(usize, Answer<ResB>)>,
        // Registrations on the cooldown entries of candidates whose probe is in flight:
        // each wakes this task when its probe is answered.
        probe_waiters: Vec<Pin<Box<OwnedNotified>>>,
        // The candidate whose answer was failed over, until another backend is called.
        pending_failover: Option<usize>,
        start: Instant,
        deadline: Instant,
        waited: bool,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<ResB> {
        // Look for a candidate that is available now.
        Scan,
        // None is: wait until one may be.
        Wait {
            #[pin]
            sleep: Sleep,
        },
        // A backend's answer.
        Call {
            future: BoxFuture<Answer<ResB>>,
            pos: usize,
        },
        // Refused before any backend was looked at.
        Failed {
            error: Option<BoxError>,
        },
        Done,
    }
}

/// What the pool knows about one candidate during a call.
struct Slot<ReqB, ResB> {
    /// A clone of the backend's service, kept between scans so a `Pending` readiness
    /// keeps its waker registration.
    service: Option<BoxBackend<ReqB, ResB>>,
    /// Called (or its readiness failed) during this call.
    tried: bool,
    /// Why it was passed over at the latest scan.
    skip: Option<Unavailable>,
    /// Whether the skip was counted and traced (once per call).
    skip_counted: bool,
}

enum Step<ResB> {
    /// Call the candidate at this position: its service is ready.
    Call(usize),
    /// The candidate at this position answered: its call's answer, or its readiness
    /// error when it failed before being called.
    Answer(usize, Answer<ResB>),
    /// Nothing is available; look again at this instant (or when woken).
    Wait(Instant),
    /// Nothing will be available within the deadline.
    GiveUp,
}

impl<ReqB, ResB> ResponseFuture<ReqB, ResB> {
    pub(crate) fn new(
        shared: Arc<Shared<ReqB, ResB>>,
        candidates: Arc<[usize]>,
        req: Request<ReqB>,
        start: Instant,
    ) -> Self {
        // The pool waits at most max_wait, and never past the call's deadline.
        let own = start
            .checked_add(shared.max_wait)
            .unwrap_or_else(|| far_future(start));
        let deadline =
            CallContext::get(req.extensions()).map_or(own, |call| own.min(call.deadline()));
        let slots = candidates
            .iter()
            .map(|_| Slot {
                service: None,
                tried: false,
                skip: None,
                skip_counted: false,
            })
            .collect();
        ResponseFuture {
            state: State::Scan,
            shared,
            candidates,
            req: Some(req),
            slots,
            last: None,
            probe_waiters: Vec::new(),
            pending_failover: None,
            start,
            deadline,
            waited: false,
        }
    }

    pub(crate) fn failed(shared: Arc<Shared<ReqB, ResB>>, error: BoxError) -> Self {
        let start = Instant::now();
        ResponseFuture {
            state: State::Failed { error: Some(error) },
            shared,
            candidates: Arc::from([]),
            req: None,
            slots: Vec::new(),
            last: None,
            probe_waiters: Vec::new(),
            pending_failover: None,
            start,
            deadline: start,
            waited: false,
        }
    }
}

impl<ReqB, ResB> Future for ResponseFuture<ReqB, ResB>
where
    ReqB: TryCloneBody + Send + 'static,
    ResB: Send + 'static,
{
    type Output = Answer<ResB>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            let step = match this.state.as_mut().project() {
                StateProj::Call { future, pos } => {
                    Step::Answer(*pos, ready!(future.as_mut().poll(cx)))
                }
                StateProj::Failed { error } => {
                    let error = error
                        .take()
                        .unwrap_or_else(|| "pool ResponseFuture polled after completion".into());
                    this.state.set(State::Done);
                    return Poll::Ready(Err(error));
                }
                StateProj::Done => panic!("pool ResponseFuture polled after completion"),
                // Scan and Wait both look at every candidate again: a backend without
                // capacity may have woken this task, or time has passed.
                StateProj::Scan | StateProj::Wait { .. } => scan(
                    this.shared,
                    this.candidates,
                    this.slots,
                    this.probe_waiters,
                    this.req.is_some(),
                    cx,
                    *this.deadline,
                ),
            };
            match step {
                Step::Call(pos) => {
                    if let Some(future) =
                        start_call(this.shared, this.candidates, this.slots, this.req, pos)
                    {
                        // A failover is counted when the call really reaches another
                        // backend, not when a backend's answer is set aside.
                        if let Some(prev) = this.pending_failover.take() {
                            count_failover(this.shared, this.candidates, prev);
                        }
                        // Let go of the other candidates' clones: one polled `Pending`
                        // (e.g. queued for a `ConcurrencyLimit` permit) would otherwise
                        // keep the capacity it is handed while this call is elsewhere.
                        for slot in this.slots.iter_mut() {
                            slot.service = None;
                        }
                        this.state.set(State::Call { future, pos });
                        continue;
                    }
                    // The call could not start: give up, below.
                }
                Step::Answer(pos, answer) => {
                    if let Some(out) = on_answer(
                        this.shared,
                        this.candidates,
                        this.slots,
                        this.req,
                        this.last,
                        pos,
                        answer,
                    ) {
                        this.state.set(State::Done);
                        return Poll::Ready(out);
                    }
                    *this.pending_failover = Some(pos);
                    this.state.set(State::Scan);
                    continue;
                }
                Step::Wait(at) => {
                    if !*this.waited {
                        *this.waited = true;
                        bump(&this.shared.stats.totals.waited);
                        tracing::debug!(
                            target: "ratewise::pool",
                            wait_ms = at.saturating_duration_since(Instant::now()).as_millis() as u64,
                            "no candidate backend is available; waiting"
                        );
                    }
                    if !matches!(*this.state, State::Wait { .. }) {
                        this.state.set(State::Wait {
                            sleep: sleep_until(at),
                        });
                    }
                    if let StateProj::Wait { mut sleep } = this.state.as_mut().project() {
                        if sleep.deadline() != at {
                            sleep.as_mut().reset(at);
                        }
                        if sleep.poll(cx).is_pending() {
                            return Poll::Pending;
                        }
                    }
                    continue;
                }
                Step::GiveUp => {}
            }
            // Step::GiveUp, or a call that could not start.
            let out = give_up(
                this.shared,
                this.candidates,
                this.slots,
                this.last,
                *this.start,
                *this.deadline,
            );
            this.state.set(State::Done);
            return Poll::Ready(out);
        }
    }
}

/// Looks at every untried candidate in order and returns the first that can take the
/// request now, or what to do instead.
fn scan<ReqB, ResB>(
    shared: &Shared<ReqB, ResB>,
    candidates: &[usize],
    slots: &mut [Slot<ReqB, ResB>],
    probe_waiters: &mut Vec<Pin<Box<OwnedNotified>>>,
    have_request: bool,
    cx: &mut Context<'_>,
    deadline: Instant,
) -> Step<ResB> {
    probe_waiters.clear();
    if !have_request {
        return Step::GiveUp;
    }
    let now = Instant::now();
    let cooldown = &shared.stats.cooldown;
    let mut earliest: Option<Instant> = None;
    let mut busy = false;
    let mut probing = false;
    let mut probe_answered = false;
    let mut untried = false;
    for (pos, (&idx, slot)) in candidates.iter().zip(slots.iter_mut()).enumerate() {
        if slot.tried {
            continue;
        }
        untried = true;
        let Some(backend) = shared.backends.get(idx) else {
            continue;
        };
        let (state, waiter) = cooldown.state_and_waiter(&backend.name);
        let why = match state {
            KeyState::Cooling { until, .. } => {
                earliest = Some(earliest.map_or(until, |e| e.min(until)));
                Some(Unavailable::Cooling {
                    remaining: until.saturating_duration_since(now),
                })
            }
            KeyState::HalfOpen { probing: true, .. } => {
                probing = true;
                // Wake when the probe is answered (or anything else changes the key).
                if let Some(mut waiter) = waiter {
                    if waiter.as_mut().poll(cx).is_ready() {
                        probe_answered = true;
                    } else {
                        probe_waiters.push(waiter);
                    }
                }
                Some(Unavailable::Probing)
            }
            _ => None,
        };
        if let Some(why) = why {
            note_skip(shared, idx, slot, why);
            continue;
        }
        let service = slot.service.get_or_insert_with(|| backend.service.clone());
        match service.poll_ready(cx) {
            Poll::Ready(Ok(())) => return Step::Call(pos),
            Poll::Ready(Err(e)) => {
                slot.service = None;
                slot.tried = true;
                tracing::debug!(target: "ratewise::pool", backend = %backend.name, error = %Redacted(&e), "backend readiness failed");
                return Step::Answer(pos, Err(e));
            }
            Poll::Pending => {
                busy = true;
                note_skip(shared, idx, slot, Unavailable::Busy);
            }
        }
    }
    if !untried || now >= deadline {
        return Step::GiveUp;
    }
    if !busy && !probing {
        // Every untried candidate is cooling: wait for the first to recover, if it
        // does so in time; otherwise give up now, without sleeping.
        return match earliest {
            Some(e) if e <= deadline => Step::Wait(e),
            _ => Step::GiveUp,
        };
    }
    // Some candidates have no capacity or a probe in flight; either wakes this task
    // when it changes (the service through `poll_ready`, the probe through its cooldown
    // entry): wait, at most until the deadline or the first cooldown's end.
    let mut wake = deadline;
    if let Some(e) = earliest {
        wake = wake.min(e);
    }
    if probe_answered {
        // A probe was answered between the look and the registration: look again now.
        wake = now;
    }
    Step::Wait(wake)
}

/// Counts and traces a skip, once per call and candidate; remembers the latest reason.
fn note_skip<ReqB, ResB>(
    shared: &Shared<ReqB, ResB>,
    idx: usize,
    slot: &mut Slot<ReqB, ResB>,
    why: Unavailable,
) {
    slot.skip = Some(why);
    if slot.skip_counted {
        return;
    }
    slot.skip_counted = true;
    let Some(info) = shared.stats.backends.get(idx) else {
        return;
    };
    let (reason, wait_ms) = match why {
        Unavailable::Cooling { remaining } => {
            bump(&info.counters.skipped_cooling);
            ("cooling", Some(remaining.as_millis() as u64))
        }
        Unavailable::Probing => {
            bump(&info.counters.skipped_cooling);
            ("probe in flight", None)
        }
        Unavailable::Busy => {
            bump(&info.counters.skipped_busy);
            ("no capacity", None)
        }
    };
    tracing::debug!(target: "ratewise::pool", backend = %info.name, reason, wait_ms, "backend skipped");
}

/// Sends the request (or a copy, while other candidates remain) to the candidate at
/// `pos`, whose service was just polled ready.
fn start_call<ReqB, ResB>(
    shared: &Shared<ReqB, ResB>,
    candidates: &[usize],
    slots: &mut [Slot<ReqB, ResB>],
    req: &mut Option<Request<ReqB>>,
    pos: usize,
) -> Option<BoxFuture<Answer<ResB>>>
where
    ReqB: TryCloneBody,
{
    let idx = *candidates.get(pos)?;
    let backend = shared.backends.get(idx)?;
    let others_left = slots.iter().enumerate().any(|(j, s)| j != pos && !s.tried);
    let slot = slots.get_mut(pos)?;
    let mut service = slot.service.take()?;
    slot.tried = true;
    // A copy goes out and the original stays, so that another candidate (or this one
    // again, after its own limiter held the call back) can be tried.
    let mut request = match req.as_ref().and_then(try_clone_request) {
        Some(copy) => copy,
        None => {
            if others_left {
                tracing::debug!(
                    target: "ratewise::pool",
                    backend = %backend.name,
                    "the request body cannot be cloned: it goes to this backend only"
                );
            }
            req.take()?
        }
    };
    request
        .extensions_mut()
        .insert(BackendName(backend.name.clone()));
    if let Some(info) = shared.stats.backends.get(idx) {
        bump(&info.counters.requests);
    }
    Some(service.call(request))
}

/// Records a backend's answer and decides: `Some` is the call's result, `None` means
/// move on to the next candidate (the answer is kept in `last`).
fn on_answer<ReqB, ResB>(
    shared: &Shared<ReqB, ResB>,
    candidates: &[usize],
    slots: &mut [Slot<ReqB, ResB>],
    req: &Option<Request<ReqB>>,
    last: &mut Option<(usize, Answer<ResB>)>,
    pos: usize,
    answer: Answer<ResB>,
) -> Option<Answer<ResB>> {
    let idx = candidates.get(pos).copied().unwrap_or(usize::MAX);
    let verdict = match &answer {
        Ok(response) => verdict_of(response),
        Err(err) => verdict_of_error(&**err),
    };
    let info = shared.stats.backends.get(idx);
    if let Some(info) = info {
        let c = &info.counters;
        match verdict {
            Verdict::Success => bump(&c.successes),
            Verdict::RateLimited { .. } => bump(&c.rate_limited),
            _ => bump(&c.failed),
        }
    }
    let eligible = verdict.is_rate_limited()
        || (shared.failover_on_transient && verdict == Verdict::Transient);
    let can_move_on = req.is_some() && slots.iter().any(|s| !s.tried);
    // A backend's own answer outranks an error from a later candidate (a refusal by its
    // limiter, a connection error): whenever a backend answered, the caller gets a
    // backend's answer.
    let keep_last = answer.is_err() && matches!(last, Some((_, Ok(_))));
    if keep_last {
        if let (Some(info), Err(err)) = (info, &answer) {
            tracing::debug!(
                target: "ratewise::pool",
                backend = %info.name,
                error = %Redacted(err),
                "backend failed without answering; an earlier backend's answer is kept"
            );
        }
        if eligible && can_move_on {
            return None;
        }
        if let Some((prev, kept)) = last.take() {
            return Some(finish(shared, candidates, prev, kept));
        }
    }
    if eligible && can_move_on {
        if let Some(info) = info {
            tracing::info!(
                target: "ratewise::pool",
                backend = %info.name,
                verdict = ?verdict,
                retry_after_ms = verdict.retry_after().map(|d| d.as_millis() as u64),
                "backend answered rate-limited or failed; failing over to the next candidate"
            );
        }
        *last = Some((pos, answer));
        return None;
    }
    // The backend's own layers held the request back (its limiter had no room): nothing
    // was sent, and the pool's cooldown now knows when it will have room. With no other
    // candidate left, the call waits for it (within the pool's `max_wait`, in `scan`)
    // and tries it again, rather than refusing what a wait would serve.
    let unsent = matches!(&answer, Err(err) if Refusal::find(&**err).is_some());
    if eligible && unsent && req.is_some() {
        if let Some(slot) = slots.get_mut(pos) {
            slot.tried = false;
            if !matches!(last, Some((_, Ok(_)))) {
                *last = Some((pos, answer));
            }
            return None;
        }
    }
    if eligible {
        if let Some(info) = info {
            tracing::debug!(
                target: "ratewise::pool",
                backend = %info.name,
                verdict = ?verdict,
                "no other candidate is left: the backend's answer goes to the caller as it is"
            );
        }
    }
    Some(finish(shared, candidates, pos, answer))
}

/// Counts a failover from the candidate at `pos`: its answer was set aside and the call
/// has just gone to another backend.
fn count_failover<ReqB, ResB>(shared: &Shared<ReqB, ResB>, candidates: &[usize], pos: usize) {
    bump(&shared.stats.totals.failovers);
    if let Some(info) = candidates
        .get(pos)
        .and_then(|&i| shared.stats.backends.get(i))
    {
        bump(&info.counters.failovers);
    }
}

/// The call's result from one backend's answer: responses carry [`ServedBy`].
fn finish<ReqB, ResB>(
    shared: &Shared<ReqB, ResB>,
    candidates: &[usize],
    pos: usize,
    answer: Answer<ResB>,
) -> Answer<ResB> {
    let mut response = answer.map_err(|e| mark_reached(e, false))?;
    if let Some(backend) = candidates.get(pos).and_then(|&i| shared.backends.get(i)) {
        response
            .extensions_mut()
            .insert(ServedBy::new(backend.name.clone()));
    }
    Ok(response)
}

/// No candidate can be reached in time: the last answer a backend gave during this
/// call, as it is, or else the pool's own error.
fn give_up<ReqB, ResB>(
    shared: &Shared<ReqB, ResB>,
    candidates: &[usize],
    slots: &[Slot<ReqB, ResB>],
    last: &mut Option<(usize, Answer<ResB>)>,
    start: Instant,
    deadline: Instant,
) -> Answer<ResB> {
    if let Some((pos, answer)) = last.take() {
        if let Some(backend) = candidates.get(pos).and_then(|&i| shared.backends.get(i)) {
            tracing::debug!(
                target: "ratewise::pool",
                backend = %backend.name,
                "no other candidate can be reached in time: the last backend's answer goes to the caller as it is"
            );
        }
        return finish(shared, candidates, pos, answer);
    }
    let listed: Vec<Candidate> = candidates
        .iter()
        .zip(slots)
        .filter(|(_, s)| !s.tried)
        .filter_map(|(&i, s)| {
            Some(Candidate::new(
                shared.backends.get(i)?.name.clone(),
                s.skip?,
            ))
        })
        .collect();
    let earliest = listed
        .iter()
        .filter_map(|c| match c.why() {
            Unavailable::Cooling { remaining } => Some(remaining),
            _ => None,
        })
        .min();
    let totals = &shared.stats.totals;
    match earliest {
        Some(retry_after) => {
            bump(&totals.all_cooling);
            let err = Refusal::new(
                LayerKind::Pool,
                // The budget the wait exceeded: max_wait, or the call's deadline.
                RefusalKind::AllBackendsCooling {
                    max_wait: deadline.saturating_duration_since(start),
                },
            )
            .with_retry_after(retry_after)
            .with_candidates(listed);
            tracing::info!(target: "ratewise::pool", retry_after_ms = retry_after.as_millis() as u64, error = %Redacted(&err), "request refused: all backends cooling");
            Err(Box::new(err))
        }
        None => {
            bump(&totals.no_backend_ready);
            let err = Refusal::new(
                LayerKind::Pool,
                RefusalKind::NoBackendReady {
                    waited: start.elapsed(),
                },
            )
            .with_candidates(listed);
            tracing::info!(target: "ratewise::pool", error = %Redacted(&err), "request refused: no backend ready");
            Err(Box::new(err))
        }
    }
}

impl<ReqB, ResB> fmt::Debug for ResponseFuture<ReqB, ResB> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.state {
            State::Scan => "Scan",
            State::Wait { .. } => "Wait",
            State::Call { .. } => "Call",
            State::Failed { .. } => "Failed",
            State::Done => "Done",
        };
        let names: Vec<&str> = self
            .candidates
            .iter()
            .filter_map(|&i| self.shared.backends.get(i).map(|b| b.name.as_str()))
            .collect();
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .field("candidates", &names)
            .field("deadline", &self.deadline)
            .finish_non_exhaustive()
    }
}
