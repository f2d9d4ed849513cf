use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use http_body::Body;
use tower::Service;

use super::{Classifier, ResponseFuture};
use crate::body::PeekBody;

/// The service made by [`ClassifyLayer`](super::ClassifyLayer): classifies each
/// response of `inner` once and stores the [`Verdict`](super::Verdict) in its
/// extensions.
pub struct Classify<S, C> {
    inner: S,
    classifier: Arc<C>,
    body_cap: usize,
}

impl<S, C> Classify<S, C> {
    pub(crate) fn new(inner: S, classifier: Arc<C>, body_cap: usize) -> Self {
        Classify {
            inner,
            classifier,
            body_cap,
        }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service, consuming this one.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: Clone, C> Clone for Classify<S, C> {
    fn clone(&self) -> Self {
        Classify {
            inner: self.inner.clone(),
            classifier: Arc::clone(&self.classifier),
            body_cap: self.body_cap,
        }
    }
}

impl<S: fmt::Debug, C> fmt::Debug for Classify<S, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Classify")
            .field("inner", &self.inner)
            .field("classifier", &std::any::type_name::<C>())
            .field("body_cap", &self.body_cap)
            .finish()
    }
}

impl<S, C, ReqB, ResB> Service<Request<ReqB>> for Classify<S, C>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
    ResB: Body,
    C: Classifier,
{
    type Response = Response<PeekBody<ResB>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, C, ResB>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        ResponseFuture::new(
            self.inner.call(req),
            Arc::clone(&self.classifier),
            self.body_cap,
        )
    }
}
