use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use http::response::Parts;
use http::{Request, Response};
use http_body::Body;
use pin_project_lite::pin_project;
use tokio::sync::watch;
use tower::util::Oneshot;
use tower::Service;

use super::store::{mark, Decision, FlightGuard, Outcome, Shared, Snapshot};
use super::{CacheStatus, StaleReason};
use crate::body::{peek, Peek, PeekBody};
use crate::key::Key;
use crate::redact::Redacted;
use crate::vocabulary::{verdict_of, verdict_of_error, Verdict};
use crate::BoxError;

/// Waiting for another request's upstream call: its outcome, or `None` when that
/// request was cancelled before it had one.
type Wait = Pin<Box<dyn Future<Output = Option<Outcome>> + Send>>;

pin_project! {
    /// The response future of [`CachedEndpoint`](super::CachedEndpoint).
    ///
    /// Answers at once from the cache, or waits for another request's upstream call,
    /// or calls the upstream itself (then, for an answer worth keeping or sharing,
    /// buffers its body up to the cap).
    pub struct ResponseFuture<S, ReqB, ResB>
    where
        S: Service<Request<ReqB>>,
        ResB: Body,
    {
        #[pin]
        state: State<S, ReqB, ResB>,
        shared: Arc<Shared>,
        key: Key,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, ReqB, ResB>
    where
        S: Service<Request<ReqB>>,
        ResB: Body,
    {
        Done {
            result: Option<Result<Response<PeekBody<ResB>>, BoxError>>,
        },
        Waiting {
            wait: Wait,
            call: Option<(S, Request<ReqB>)>,
        },
        Calling {
            #[pin]
            fut: Oneshot<S, Request<ReqB>>,
            guard: Option<FlightGuard>,
        },
        Peeking {
            #[pin]
            peek: Peek<ResB>,
            parts: Option<Parts>,
            // Keep the answer as the key's entry (else only share it with waiters).
            store: bool,
            guard: Option<FlightGuard>,
        },
    }
}

impl<S, ReqB, ResB> ResponseFuture<S, ReqB, ResB>
where
    S: Service<Request<ReqB>>,
    ResB: Body,
{
    pub(crate) fn start(
        shared: Arc<Shared>,
        key: Key,
        svc: impl FnOnce() -> S,
        req: Request<ReqB>,
    ) -> Self {
        let state = decide(&shared, &key, true, svc, req);
        ResponseFuture { state, shared, key }
    }
}

/// The state a request starts in (or returns to, when the call it waited for could
/// not be shared).
fn decide<S, ReqB, ResB>(
    shared: &Arc<Shared>,
    key: &Key,
    first: bool,
    svc: impl FnOnce() -> S,
    req: Request<ReqB>,
) -> State<S, ReqB, ResB>
where
    S: Service<Request<ReqB>>,
    ResB: Body,
{
    match shared.decide(key, first) {
        Decision::Serve(snapshot, status) => done(Ok(shared.respond(&snapshot, status))),
        Decision::Refuse(err) => done(Err(err.into())),
        Decision::Wait(rx) => State::Waiting {
            wait: wait_for(rx),
            call: Some((svc(), req)),
        },
        Decision::Lead(guard) => State::Calling {
            fut: Oneshot::new(svc(), req),
            guard: Some(guard),
        },
    }
}

fn done<S, ReqB, ResB>(result: Result<Response<PeekBody<ResB>>, BoxError>) -> State<S, ReqB, ResB>
where
    S: Service<Request<ReqB>>,
    ResB: Body,
{
    State::Done {
        result: Some(result),
    }
}

fn wait_for(mut rx: watch::Receiver<Option<Outcome>>) -> Wait {
    Box::pin(async move {
        match rx.changed().await {
            Ok(()) => rx.borrow_and_update().clone(),
            Err(_) => None,
        }
    })
}

const POLLED_AFTER_COMPLETION: &str = "cache ResponseFuture polled after completion";

impl<S, ReqB, ResB> Future for ResponseFuture<S, ReqB, ResB>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
    S::Error: Into<BoxError>,
    ResB: Body,
{
    type Output = Result<Response<PeekBody<ResB>>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let shared = &**this.shared;
        let header = shared.config.status_header.as_ref();
        loop {
            let next = match this.state.as_mut().project() {
                StateProj::Done { result } => {
                    return Poll::Ready(result.take().expect(POLLED_AFTER_COMPLETION));
                }
                StateProj::Waiting { wait, call } => {
                    let outcome = ready!(wait.as_mut().poll(cx));
                    if let Some(outcome) = &outcome {
                        shared.count_outcome(outcome);
                    }
                    match outcome {
                        Some(Outcome::Fresh(snapshot)) => {
                            done(Ok(shared.respond(&snapshot, CacheStatus::Hit)))
                        }
                        Some(Outcome::Stale(snapshot, reason)) => {
                            done(Ok(shared.respond(&snapshot, CacheStatus::Stale { reason })))
                        }
                        Some(Outcome::Copy(snapshot)) => {
                            done(Ok(shared.respond(&snapshot, CacheStatus::Miss)))
                        }
                        Some(Outcome::Retry) | None => {
                            let (svc, req) = call.take().expect(POLLED_AFTER_COMPLETION);
                            decide(this.shared, this.key, false, || svc, req)
                        }
                    }
                }
                StateProj::Calling { fut, guard } => {
                    let result = ready!(fut.poll(cx));
                    let guard = guard.take().expect(POLLED_AFTER_COMPLETION);
                    match result {
                        Ok(res) => on_response(shared, this.key, guard, res),
                        Err(err) => on_error(shared, this.key, guard, err.into()),
                    }
                }
                StateProj::Peeking {
                    peek,
                    parts,
                    store,
                    guard,
                } => {
                    let peeked = ready!(peek.poll(cx));
                    let parts = parts.take().expect(POLLED_AFTER_COMPLETION);
                    let guard = guard.take().expect(POLLED_AFTER_COMPLETION);
                    match peeked.into_complete() {
                        Ok((body, trailers)) => {
                            let snapshot = Arc::new(Snapshot::new(parts, body, trailers));
                            if *store {
                                guard.store(snapshot.clone());
                            } else {
                                guard.share(snapshot.clone());
                            }
                            done(Ok(shared.respond(&snapshot, CacheStatus::Miss)))
                        }
                        Err(peeked) => {
                            if *store {
                                tracing::warn!(
                                    key = %this.key,
                                    cap = shared.config.body_cap,
                                    "good answer not cached: its body is over the cap"
                                );
                            }
                            guard.retry();
                            let mut res = Response::from_parts(parts, peeked.into_body());
                            mark(&mut res, CacheStatus::Miss, header);
                            done(Ok(res))
                        }
                    }
                }
            };
            this.state.set(next);
        }
    }
}

/// The leader got an answer: keep it, share it, or serve the stale entry instead.
fn on_response<S, ReqB, ResB>(
    shared: &Shared,
    key: &Key,
    guard: FlightGuard,
    res: Response<ResB>,
) -> State<S, ReqB, ResB>
where
    S: Service<Request<ReqB>>,
    ResB: Body,
{
    let verdict = verdict_of(&res);
    let status = res.status();
    let (parts, body) = res.into_parts();
    let peeking = |store, guard| State::Peeking {
        peek: peek(body, shared.config.body_cap),
        parts: Some(parts),
        store,
        guard: Some(guard),
    };
    match verdict {
        Verdict::Success if status.is_success() => peeking(true, guard),
        // A 1xx/3xx "success" is not an answer to keep, nor a failure to hide.
        Verdict::Success => peeking(false, guard),
        failed => {
            let reason = if failed.is_rate_limited() {
                guard.cool_down(failed.retry_after());
                StaleReason::RateLimited
            } else {
                StaleReason::Failed { status }
            };
            match guard.serve_stale(reason) {
                Ok(snapshot) => {
                    tracing::debug!(%key, %status, "upstream refused; served stale");
                    done(Ok(shared.respond(&snapshot, CacheStatus::Stale { reason })))
                }
                // Nothing cached: the upstream's answer goes to the caller, and a copy
                // to each waiter.
                Err(guard) => peeking(false, guard),
            }
        }
    }
}

/// The leader's call failed: serve the stale entry, or pass the error through.
fn on_error<S, ReqB, ResB>(
    shared: &Shared,
    key: &Key,
    guard: FlightGuard,
    err: BoxError,
) -> State<S, ReqB, ResB>
where
    S: Service<Request<ReqB>>,
    ResB: Body,
{
    let verdict = verdict_of_error(&*err);
    let reason = if verdict.is_rate_limited() {
        guard.cool_down(verdict.retry_after());
        StaleReason::RateLimited
    } else {
        StaleReason::Error
    };
    match guard.serve_stale(reason) {
        Ok(snapshot) => {
            tracing::debug!(%key, error = %Redacted(&err), "upstream call failed; served stale");
            done(Ok(shared.respond(&snapshot, CacheStatus::Stale { reason })))
        }
        Err(guard) => {
            // An error cannot be copied: the waiters decide again (one of them calls).
            guard.retry();
            done(Err(err))
        }
    }
}

impl<S, ReqB, ResB> fmt::Debug for ResponseFuture<S, ReqB, ResB>
where
    S: Service<Request<ReqB>>,
    ResB: Body,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Done { .. } => "done",
            State::Waiting { .. } => "waiting for another request's call",
            State::Calling { .. } => "calling the upstream",
            State::Peeking { .. } => "buffering the upstream's body",
        };
        f.debug_struct("ResponseFuture")
            .field("key", &self.key)
            .field("state", &state)
            .finish()
    }
}
