use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use http_body::Body;
use tower::Service;

use super::store::Shared;
use super::{CacheHandle, ResponseFuture};
use crate::body::PeekBody;
use crate::key::{key_of, SharedKey};
use crate::BoxError;

/// The service made by [`CachedEndpointLayer`](super::CachedEndpointLayer).
///
/// `poll_ready` is always ready: a request answered from the cache needs nothing from
/// `inner`. When a request does call the upstream, its future drives a clone of
/// `inner` to readiness and calls it (like [`ServiceExt::oneshot`](tower::ServiceExt::oneshot)),
/// so `inner` must be `Clone`; an error from `inner`'s `poll_ready` counts as an
/// upstream error (a stale entry is served if there is one).
pub struct CachedEndpoint<S> {
    inner: S,
    key: SharedKey,
    pub(super) shared: Arc<Shared>,
}

impl<S> CachedEndpoint<S> {
    pub(crate) fn new(inner: S, key: SharedKey, shared: Arc<Shared>) -> Self {
        CachedEndpoint { inner, key, shared }
    }

    /// A handle on the cache this service shares with its layer.
    pub fn handle(&self) -> CacheHandle {
        CacheHandle::new(Arc::clone(&self.shared))
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

impl<S: Clone> Clone for CachedEndpoint<S> {
    fn clone(&self) -> Self {
        CachedEndpoint {
            inner: self.inner.clone(),
            key: Arc::clone(&self.key),
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<S: fmt::Debug> fmt::Debug for CachedEndpoint<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CachedEndpoint")
            .field("inner", &self.inner)
            .field("config", &self.shared.config)
            .finish()
    }
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for CachedEndpoint<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>> + Clone,
    S::Error: Into<BoxError>,
    ResB: Body,
{
    type Response = Response<PeekBody<ResB>>;
    type Error = BoxError;
    type Future = ResponseFuture<S, ReqB, ResB>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        let key = key_of(&*self.key, &req);
        ResponseFuture::start(Arc::clone(&self.shared), key, || self.inner.clone(), req)
    }
}
