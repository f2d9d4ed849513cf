//! [`TokenLimit`], the service made by [`TokenLimitLayer`](super::TokenLimitLayer), and
//! `Settle`, its inner half.

use std::{
    fmt, mem,
    sync::Arc,
    task::{Context, Poll},
};

use bytes::{Buf, Bytes};
use http::{Request, Response};
use http_body::Body;
use tower::Service;

use super::{
    body::{Settlement, TokenBody},
    future::{ResponseFuture, SettleResponse},
    layer::{Reserve, Shared},
};
use crate::{
    key::try_key_of,
    rate_limit::{Keys, RateLimit},
    BoxError,
};

/// A tokens-per-minute budget around `inner`. Made by
/// [`TokenLimitLayer`](super::TokenLimitLayer); clones share its budget.
///
/// `poll_ready` is the inner service's. In `call`, the request's body is read (it is
/// held in memory already for the JSON bodies LLM APIs take), estimated and, when
/// asked, rewritten to request usage; then the call waits for its tokens and goes.
pub struct TokenLimit<S> {
    inner: RateLimit<Settle<S>>,
    shared: Arc<Shared>,
}

impl<S> TokenLimit<S> {
    pub(crate) fn new(inner: RateLimit<Settle<S>>, shared: Arc<Shared>) -> Self {
        TokenLimit { inner, shared }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner.get_ref().inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner.get_mut().inner
    }

    /// The inner service, consuming this one.
    pub fn into_inner(self) -> S {
        self.inner.into_inner().inner
    }
}

impl<S, B, ResB> Service<Request<B>> for TokenLimit<S>
where
    S: Service<Request<B>, Response = Response<ResB>> + Clone,
    S::Error: Into<BoxError>,
    B: Body + From<Bytes>,
    B::Data: Buf,
    B::Error: Into<BoxError>,
{
    type Response = Response<TokenBody<ResB>>;
    type Error = BoxError;
    type Future = ResponseFuture<S, B>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        // The call goes once its body is read: it takes the ready service along.
        let clone = self.inner.clone();
        let inner = mem::replace(&mut self.inner, clone);
        ResponseFuture::new(request, inner, self.shared.clone())
    }
}

impl<S: Clone> Clone for TokenLimit<S> {
    fn clone(&self) -> Self {
        TokenLimit {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<S: fmt::Debug> fmt::Debug for TokenLimit<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenLimit")
            .field("inner", self.get_ref())
            .finish_non_exhaustive()
    }
}

/// The inner half of a [`TokenLimit`], under its rate limiter: called when a call's
/// tokens are reserved, it sends the call and hands back the answer in a
/// [`TokenBody`] that settles the reservation. Public only because it appears in
/// [`ResponseFuture`]'s type, in a private module: users never name it.
#[allow(unreachable_pub)]
pub struct Settle<S> {
    pub(crate) inner: S,
    shared: Arc<Shared>,
}

impl<S> Settle<S> {
    pub(crate) fn new(inner: S, shared: Arc<Shared>) -> Self {
        Settle { inner, shared }
    }
}

impl<S, B, ResB> Service<Request<B>> for Settle<S>
where
    S: Service<Request<B>, Response = Response<ResB>>,
    S::Error: Into<BoxError>,
{
    type Response = Response<TokenBody<ResB>>;
    type Error = BoxError;
    type Future = SettleResponse<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let reserved = request.extensions().get::<Reserve>().map_or(0, |r| r.0);
        // The rate limiter keyed the request the same way (or refused it unkeyed).
        let keys = try_key_of(&*self.shared.key, &request).ok().map(Keys::one);
        let settlement = Settlement::new(self.shared.clone(), keys, reserved);
        SettleResponse::new(self.inner.call(request), settlement)
    }
}

impl<S: Clone> Clone for Settle<S> {
    fn clone(&self) -> Self {
        Settle {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<S: fmt::Debug> fmt::Debug for Settle<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Settle")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}
