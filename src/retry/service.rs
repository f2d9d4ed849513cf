//! [`Retry`], the service [`RetryLayer`](super::RetryLayer) makes, and `BoxErrors`,
//! the adapter it puts under tower's `Retry`.

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{ready, Context, Poll},
};

use http::{Request, Response};
use pin_project_lite::pin_project;
use tokio::time::Instant;
use tower::Service;

use super::body::TryCloneBody;
use super::future::ResponseFuture;
use super::policy::{Attempt, RetryPolicy, Shared};
use crate::{
    key::JsonBody,
    vocabulary::{Budget, CallContext},
    BoxError,
};

/// The service [`RetryLayer`](super::RetryLayer) makes: tower's own
/// [`Retry`](tower::retry::Retry) driven by the layer's policy, over the client with its
/// errors boxed, and the whole call held to the layer's total
/// [`deadline`](super::RetryBuilder::deadline).
///
/// Any client whose error converts into a [`BoxError`] works, and the service's error
/// is a `BoxError` (downcast it to the client's own error type, or to
/// [`DeadlineExceeded`](super::DeadlineExceeded)). Like tower's, it needs a `Clone`
/// inner service (add `tower::buffer::Buffer` otherwise).
#[derive(Debug, Clone)]
pub struct Retry<S> {
    inner: tower::retry::Retry<RetryPolicy, BoxErrors<S>>,
    shared: Arc<Shared>,
}

impl<S> Retry<S> {
    pub(crate) fn new(shared: Arc<Shared>, inner: S) -> Self {
        Retry {
            inner: tower::retry::Retry::new(
                RetryPolicy::new(shared.clone()),
                BoxErrors::new(inner),
            ),
            shared,
        }
    }

    /// The wrapped client.
    pub fn get_ref(&self) -> &S {
        &self.inner.get_ref().inner
    }

    /// The wrapped client, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner.get_mut().inner
    }

    /// The wrapped client, consuming this service.
    pub fn into_inner(self) -> S {
        self.inner.into_inner().inner
    }
}

impl<S, B, ResB> Service<Request<B>> for Retry<S>
where
    S: Service<Request<B>, Response = Response<ResB>> + Clone,
    S::Error: Into<BoxError>,
    B: TryCloneBody,
{
    type Response = Response<ResB>;
    type Error = BoxError;
    type Future =
        ResponseFuture<tower::retry::future::ResponseFuture<RetryPolicy, BoxErrors<S>, Request<B>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        // Keys read from the body: parse it once for the whole call (every retry's copy
        // carries the extension).
        if self.shared.config.parse_json_body && req.extensions().get::<JsonBody>().is_none() {
            if let Some(body) = req.body().try_bytes().and_then(|b| JsonBody::parse(&b)) {
                req.extensions_mut().insert(body);
            }
        }
        // One instant for the whole call: the policy reads it from the request (and its
        // copies) to refuse waits that would end past it, and the future's timer cuts
        // off whatever is in flight when it comes. A deadline too far off to represent
        // is no deadline.
        // The call's budget: the request's own `Budget`, else the layer's deadline.
        let deadline = req
            .extensions()
            .get::<Budget>()
            .map(|b| b.0)
            .or(self.shared.config.deadline);
        // A retry inside another's call keeps to the outer call's budget too.
        let outer = CallContext::get(req.extensions()).map(CallContext::deadline);
        let end = deadline
            .and_then(|d| Instant::now().checked_add(d))
            .map(|end| outer.map_or(end, |outer| end.min(outer)));
        if let Some(end) = end {
            req.extensions_mut()
                .insert(CallContext::new(self.shared.id, end));
        }
        // One span for the whole call; each attempt gets a child span (`BoxErrors`).
        let span = tracing::info_span!("call", name = self.shared.stats.meter().name());
        let inner = span.in_scope(|| self.inner.call(req));
        ResponseFuture::new(
            inner,
            end,
            deadline.unwrap_or_default(),
            self.shared.stats.clone(),
            span,
        )
    }
}

/// Turns the wrapped service's error into a [`BoxError`] under tower's `Retry`, so that
/// the policy judges every error through
/// [`verdict_of_error`](crate::verdict_of_error) with its source chain.
///
/// tower's `MapErr` would need the inner error type named in [`Retry`]'s field, which
/// `Retry<S>` cannot do without a request type; this adapter is generic in the error
/// instead. It is public only because it appears in [`Retry`]'s future type, in a
/// private module: users never name it.
#[allow(unreachable_pub)]
#[derive(Debug, Clone)]
pub struct BoxErrors<S> {
    inner: S,
}

impl<S> BoxErrors<S> {
    pub(crate) fn new(inner: S) -> Self {
        BoxErrors { inner }
    }
}

impl<S, B> Service<Request<B>> for BoxErrors<S>
where
    S: Service<Request<B>>,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = BoxErrorsFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        // The attempt's number, from the policy; it goes no further down.
        let n = req.extensions_mut().remove::<Attempt>().map_or(1, |a| a.0);
        let span = tracing::info_span!("attempt", n);
        BoxErrorsFuture {
            inner: span.in_scope(|| self.inner.call(req)),
            span,
        }
    }
}

pin_project! {
    /// The future of `BoxErrors`: one attempt, inside its `attempt` span.
    #[allow(unreachable_pub)]
    #[derive(Debug)]
    pub struct BoxErrorsFuture<F> {
        #[pin]
        inner: F,
        span: tracing::Span,
    }
}

impl<F, T, E> Future for BoxErrorsFuture<F>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let _entered = this.span.enter();
        Poll::Ready(ready!(this.inner.poll(cx)).map_err(Into::into))
    }
}
