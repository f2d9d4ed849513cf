//! [`RateLimit`], the service made by [`RateLimitLayer`](super::RateLimitLayer).

use std::{
    fmt,
    marker::PhantomData,
    mem,
    num::NonZeroU32,
    sync::{atomic::Ordering, Arc},
    task::{Context, Poll},
};

use http::{Request, Response};
use tower::Service;

use super::{
    future::ResponseFuture,
    layer::Policy,
    limiter::RateLimiter,
    policy::{Mode, Reject, Wait},
    stats::RateLimitStats,
    store::Keys,
};
use crate::{
    key::{try_key_of, Key, KeyError, RequestRef},
    BoxError,
};

/// Keyed GCRA rate limiting around `inner`. Made by
/// [`RateLimitLayer`](super::RateLimitLayer); clones share its limiter.
///
/// `poll_ready` is the inner service's. In `call`, a limited request takes the ready
/// inner service into its response future (leaving a clone here), because the inner
/// call happens only once the request is admitted. Bypassed requests call the inner
/// service at once.
pub struct RateLimit<S, M = Wait> {
    inner: S,
    policy: Arc<Policy>,
    limiter: RateLimiter,
    mode: PhantomData<fn() -> M>,
}

impl<S, M> RateLimit<S, M> {
    pub(crate) fn new(inner: S, policy: Arc<Policy>, limiter: RateLimiter) -> Self {
        RateLimit {
            inner,
            policy,
            limiter,
            mode: PhantomData,
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

    /// The shared limiter handle.
    pub fn limiter(&self) -> RateLimiter {
        self.limiter.clone()
    }

    /// The limiter's counters.
    pub fn stats(&self) -> RateLimitStats {
        self.limiter.stats()
    }

    fn start<B>(&mut self, request: Request<B>) -> ResponseFuture<S, B, M>
    where
        S: Service<Request<B>> + Clone,
        M: Mode,
    {
        let cost = match &self.policy.cost {
            None => NonZeroU32::MIN,
            Some(cost) => match NonZeroU32::new(cost(&RequestRef::from(&request))) {
                Some(cost) => cost,
                None => {
                    // A cost of zero: bypassed.
                    self.limiter.counters().record_bypassed();
                    return ResponseFuture::called(self.inner.call(request));
                }
            },
        };
        let keys = match self.keys(&request) {
            Ok(keys) => keys,
            Err(err) => return self.unkeyed(err),
        };
        let clone = self.inner.clone();
        let inner = mem::replace(&mut self.inner, clone);
        let max_wait = if M::WAITS { self.policy.max_wait } else { None };
        let fut =
            ResponseFuture::limited(self.limiter.clone(), keys, cost, max_wait, inner, request);
        if M::WAITS {
            fut
        } else {
            fut.answering(self.policy.answer.clone(), self.policy.stamp)
        }
    }

    /// The request's key for each limit, or why one of them cannot be made.
    fn keys<B>(&self, request: &Request<B>) -> Result<Keys, KeyError> {
        let first = try_key_of(&*self.policy.key, request)?;
        let extra = self.limiter.extra_keys();
        if extra.is_empty() {
            return Ok(Keys::one(first));
        }
        let rest = extra
            .iter()
            .map(|k| try_key_of(&**k, request))
            .collect::<Result<Vec<Key>, _>>()?;
        Ok(Keys::new(first, rest))
    }

    /// A request that cannot be keyed is refused, never put in a shared bucket: loudly
    /// the first time (a server set up without peer addresses fails every request).
    fn unkeyed<B>(&self, err: KeyError) -> ResponseFuture<S, B, M>
    where
        S: Service<Request<B>>,
    {
        if !self.policy.unkeyed_logged.swap(true, Ordering::Relaxed) {
            tracing::error!(error = %err, "rate limit: refusing requests that cannot be keyed");
        } else {
            tracing::debug!(error = %err, "rate limit: refusing a request that cannot be keyed");
        }
        ResponseFuture::unkeyed(err)
    }
}

impl<S, B> Service<Request<B>> for RateLimit<S, Wait>
where
    S: Service<Request<B>> + Clone,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S, B, Wait>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        self.start(request)
    }
}

impl<S, B, ResBody> Service<Request<B>> for RateLimit<S, Reject>
where
    S: Service<Request<B>, Response = Response<ResBody>> + Clone,
    ResBody: From<String>,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S, B, Reject>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        self.start(request)
    }
}

impl<S: Clone, M> Clone for RateLimit<S, M> {
    fn clone(&self) -> Self {
        RateLimit {
            inner: self.inner.clone(),
            policy: self.policy.clone(),
            limiter: self.limiter.clone(),
            mode: PhantomData,
        }
    }
}

impl<S: fmt::Debug, M> fmt::Debug for RateLimit<S, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimit")
            .field("inner", &self.inner)
            .field("max_wait", &self.policy.max_wait)
            .field("limiter", &self.limiter)
            .finish()
    }
}
