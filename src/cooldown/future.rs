//! The [`ResponseFuture`] of [`Cooldown`](super::Cooldown).

use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{ready, Context, Poll},
    time::Duration,
};

use http::{Request, Response};
use pin_project_lite::pin_project;
use tokio::{
    sync::futures::OwnedNotified,
    time::{sleep_until, Instant, Sleep},
};
use tower::Service;

use super::{
    state::{Admission, Shared, Ticket, WaitSlot},
    stats::Counters,
    store::{Answer, Probe, Remote, StoreFuture},
};
use crate::{
    key::Key,
    vocabulary::{
        verdict_of, verdict_of_error, Hold, Holds, LayerKind, Refusal, RefusalKind, Verdict,
    },
    BoxError,
};

/// How long a request may hold a key's shared probe (should its process die with it).
const PROBE_FOR: Duration = Duration::from_secs(30);

/// A token unique to one request across processes, for the shared probe.
fn token() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    // Each `RandomState` is seeded differently (per process, and per call).
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.finish()
}

/// What the shared store must hear of an answer: every rate limit, and what a probe or
/// a key with a count learned.
fn answer(verdict: Verdict, probe: bool, remote: &Remote) -> Option<Answer> {
    let probe = probe || remote.probe == Probe::Mine;
    match verdict {
        Verdict::RateLimited { retry_after } => Some(Answer::RateLimited(retry_after)),
        Verdict::Success if probe || remote.n > 0 || remote.half_open => Some(Answer::Success),
        Verdict::Transient if probe => Some(Answer::Transient),
        Verdict::Transient | Verdict::Success => None,
        _ if probe => Some(Answer::Served),
        _ => None,
    }
}

pin_project! {
    /// The response future of [`Cooldown`](super::Cooldown): waits out or refuses a
    /// cooldown, then calls the inner service and records the answer's verdict.
    pub struct ResponseFuture<S, Req>
    where
        S: Service<Req>,
    {
        #[pin]
        state: State<S::Future>,
        call: Option<(S, Req)>,
        ticket: Option<Ticket>,
        slot: Option<WaitSlot>,
        shared: Arc<Shared>,
        key: Key,
        deadline: Option<Instant>,
        met: bool,
        // The answer, held while the shared store records it.
        result: Option<Result<S::Response, BoxError>>,
        // This request's token in the shared store.
        token: u64,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        // Ask the table what to do.
        Check,
        // Ask the shared store where the key stands across processes.
        Remote { future: StoreFuture },
        // Send the request.
        Send,
        // Tell the shared store the answer.
        Record { future: StoreFuture },
        // Wait until the cooldown ends, or the key's state changes.
        Wait {
            #[pin]
            sleep: Sleep,
            notified: Pin<Box<OwnedNotified>>,
        },
        // The inner service's future.
        Call {
            #[pin]
            future: F,
        },
        Done,
    }
}

impl<S, Req> ResponseFuture<S, Req>
where
    S: Service<Req>,
{
    pub(crate) fn new(
        inner: S,
        req: Req,
        shared: Arc<Shared>,
        key: Key,
        deadline: Option<Instant>,
    ) -> Self {
        ResponseFuture {
            state: State::Check,
            call: Some((inner, req)),
            ticket: None,
            slot: None,
            shared,
            key,
            deadline,
            met: false,
            result: None,
            token: 0,
        }
    }
}

impl<S, ReqBody, B> Future for ResponseFuture<S, Request<ReqBody>>
where
    S: Service<Request<ReqBody>, Response = Response<B>>,
    S::Error: Into<BoxError>,
{
    type Output = Result<Response<B>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Check => {
                    let stats = &this.shared.stats;
                    match this.shared.admit(
                        this.key,
                        Instant::now(),
                        *this.deadline,
                        this.slot.take(),
                    ) {
                        Admission::Go(ticket) => {
                            *this.ticket = Some(ticket);
                            match &this.shared.store {
                                Some((store, _)) => {
                                    *this.token = token();
                                    let future = store.admit(this.key, *this.token, PROBE_FOR);
                                    this.state.set(State::Remote { future });
                                }
                                None => this.state.set(State::Send),
                            }
                        }
                        Admission::Wait {
                            wake_at,
                            notified,
                            slot,
                        } => {
                            *this.slot = slot;
                            if !*this.met {
                                *this.met = true;
                                Counters::bump(&stats.met);
                            }
                            this.state.set(State::Wait {
                                sleep: sleep_until(wake_at),
                                notified,
                            });
                        }
                        Admission::Reject(err) => {
                            if !*this.met {
                                *this.met = true;
                                Counters::bump(&stats.met);
                            }
                            Counters::bump(&stats.rejected);
                            tracing::debug!(target: "ratewise::cooldown", refusal = %err, "request refused: cooling down");
                            this.state.set(State::Done);
                            return Poll::Ready(Err(Box::new(err)));
                        }
                    }
                }
                StateProj::Remote { future } => {
                    let remote = ready!(future.as_mut().poll(cx));
                    let Some(mut ticket) = this.ticket.take() else {
                        this.state.set(State::Check);
                        continue;
                    };
                    match remote {
                        Err(err) => {
                            // The store fails closed: nothing is sent.
                            drop(ticket);
                            Counters::bump(&this.shared.stats.rejected);
                            tracing::debug!(target: "ratewise::cooldown", error = %err, "cooldown store unavailable, refusing");
                            this.state.set(State::Done);
                            let refusal =
                                Refusal::new(LayerKind::Cooldown, RefusalKind::StoreUnavailable)
                                    .with_key(this.key.clone());
                            return Poll::Ready(Err(Box::new(refusal)));
                        }
                        Ok(remote)
                            if remote.cooling.is_some()
                                || matches!(remote.probe, Probe::Elsewhere(_)) =>
                        {
                            // Limited by another process: mirror it and ask again (the
                            // table now says wait, or refuse).
                            drop(ticket);
                            this.shared.merge(this.key, &remote, Instant::now());
                            this.state.set(State::Check);
                        }
                        Ok(remote) => {
                            if remote.probe == Probe::Mine {
                                this.shared.adopt_probe(this.key, &mut ticket);
                            }
                            ticket.remote = Some(remote);
                            *this.ticket = Some(ticket);
                            this.state.set(State::Send);
                        }
                    }
                }
                StateProj::Send => {
                    let Some(ticket) = this.ticket.as_ref() else {
                        this.state.set(State::Check);
                        continue;
                    };
                    let (mut inner, mut req) = this
                        .call
                        .take()
                        .expect("cooldown ResponseFuture sent twice");
                    if ticket.is_probe() {
                        tracing::debug!(target: "ratewise::cooldown", key = %this.key, "probe request after cooldown");
                    }
                    // Layers below that hold the request back re-check the key
                    // through this hold before sending it.
                    let hold: Arc<dyn Hold> = this.shared.clone();
                    Holds::attach(
                        req.extensions_mut(),
                        this.shared.id,
                        hold,
                        this.key,
                        ticket.probe_id(),
                    );
                    let future = inner.call(req);
                    this.state.set(State::Call { future });
                }
                StateProj::Record { future } => {
                    if let Ok(remote) = ready!(future.as_mut().poll(cx)) {
                        this.shared.merge(this.key, &remote, Instant::now());
                    }
                    this.state.set(State::Done);
                    return Poll::Ready(this.result.take().expect("cooldown answer held"));
                }
                StateProj::Wait { sleep, notified } => {
                    if notified.as_mut().poll(cx).is_pending() && sleep.poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                    this.state.set(State::Check);
                }
                StateProj::Call { future } => {
                    let result = ready!(future.poll(cx)).map_err(Into::into);
                    this.state.set(State::Done);
                    let stats = &this.shared.stats;
                    let refusal = result.as_ref().err().and_then(|err| Refusal::find(&**err));
                    if let Some(refusal) = refusal.filter(|r| r.held_by() == Some(this.shared.id)) {
                        // This cooldown's own hold refused the request below: the key
                        // began cooling while it waited.
                        if !*this.met {
                            Counters::bump(&stats.met);
                        }
                        Counters::bump(&stats.rejected);
                        tracing::debug!(target: "ratewise::cooldown", refusal = %refusal, "request held back below the cooldown: the key began cooling while it waited");
                    } else if *this.met && refusal.is_none_or(|r| r.held_by().is_none()) {
                        Counters::bump(&stats.waited);
                    }
                    // Held back below (by a hold, a rate limiter's max wait, a pool with
                    // every backend cooling...): it never reached the upstream, so its
                    // answer is no signal either way.
                    let unsent =
                        refusal.is_some_and(|r| r.held_by().is_some() || !r.reached_upstream());
                    let Some(ticket) = this.ticket.take() else {
                        return Poll::Ready(result);
                    };
                    let (remote, probe) = (ticket.remote, ticket.is_probe());
                    let record = if unsent {
                        // Dropping the ticket frees a local probe's slot; a shared probe
                        // is freed in the store.
                        drop(ticket);
                        remote
                            .filter(|r| r.probe == Probe::Mine)
                            .map(|r| (r, Answer::Transient))
                    } else {
                        let verdict = match &result {
                            Ok(response) => verdict_of(response),
                            Err(err) => verdict_of_error(&**err),
                        };
                        this.shared
                            .report(this.key, ticket, verdict, Instant::now());
                        remote.and_then(|r| answer(verdict, probe, &r).map(|a| (r, a)))
                    };
                    match (&this.shared.store, record) {
                        (Some((store, rules)), Some((remote, answer))) => {
                            let future =
                                store.record(this.key, *this.token, remote.signal, answer, rules);
                            *this.result = Some(result);
                            this.state.set(State::Record { future });
                        }
                        _ => return Poll::Ready(result),
                    }
                }
                StateProj::Done => panic!("cooldown ResponseFuture polled after completion"),
            }
        }
    }
}

impl<S, Req> fmt::Debug for ResponseFuture<S, Req>
where
    S: Service<Req>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.state {
            State::Check => "Check",
            State::Remote { .. } => "Remote",
            State::Send => "Send",
            State::Record { .. } => "Record",
            State::Wait { .. } => "Wait",
            State::Call { .. } => "Call",
            State::Done => "Done",
        };
        f.debug_struct("ResponseFuture")
            .field("key", &self.key)
            .field("state", &state)
            .field("deadline", &self.deadline)
            .finish_non_exhaustive()
    }
}
