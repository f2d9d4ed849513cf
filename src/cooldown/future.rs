//! The [`ResponseFuture`] of [`Cooldown`](super::Cooldown).

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
    state::{Admission, Shared, Ticket, WaitSlot},
    stats::Counters,
};
use crate::{
    key::Key,
    vocabulary::{verdict_of, verdict_of_error, Hold, Holds, Refusal},
    BoxError,
};

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
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        // Ask the table what to do.
        Check,
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
                            let (mut inner, mut req) = this
                                .call
                                .take()
                                .expect("cooldown ResponseFuture admitted twice");
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
                            *this.ticket = Some(ticket);
                            let future = inner.call(req);
                            this.state.set(State::Call { future });
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
                        // This cooldown's own hold refused the request below: it never
                        // reached the upstream, so its answer is no signal. Dropping
                        // the ticket frees a probe's slot for the next request.
                        if !*this.met {
                            Counters::bump(&stats.met);
                        }
                        Counters::bump(&stats.rejected);
                        tracing::debug!(target: "ratewise::cooldown", refusal = %refusal, "request held back below the cooldown: the key began cooling while it waited");
                        this.ticket.take();
                        return Poll::Ready(result);
                    }
                    if refusal.is_some_and(|r| r.held_by().is_some()) {
                        // Another layer's hold refused it: no signal either.
                        this.ticket.take();
                        return Poll::Ready(result);
                    }
                    if *this.met {
                        Counters::bump(&stats.waited);
                    }
                    if refusal.is_some_and(|r| !r.reached_upstream()) {
                        // A ratewise layer below refused the request (a rate limiter's
                        // max wait, a pool with every backend cooling...): it never
                        // reached the upstream, so it is no signal either way. Dropping
                        // the ticket frees a probe's slot.
                        this.ticket.take();
                        return Poll::Ready(result);
                    }
                    if let Some(ticket) = this.ticket.take() {
                        let verdict = match &result {
                            Ok(response) => verdict_of(response),
                            Err(err) => verdict_of_error(&**err),
                        };
                        this.shared
                            .report(this.key, ticket, verdict, Instant::now());
                    }
                    return Poll::Ready(result);
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
