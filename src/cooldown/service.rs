//! The [`Cooldown`] service.

use std::{
    fmt,
    sync::Arc,
    task::{Context, Poll},
};

use http::{Request, Response};
use tokio::time::Instant;
use tower::Service;

use super::{
    future::ResponseFuture,
    layer::Mode,
    state::{CooldownHandle, Shared},
};
use crate::{
    key::{key_of, SharedKey},
    util::add,
    vocabulary::CallContext,
    BoxError,
};

/// Per-key cooldown after rate-limited answers; made by
/// [`CooldownLayer`](super::CooldownLayer).
///
/// `poll_ready` delegates to the inner service. `call` hands the ready inner service
/// to the response future, which waits out (or refuses) a cooldown before calling
/// it, so a request for a cooling key never reaches the inner service.
pub struct Cooldown<S> {
    inner: S,
    shared: Arc<Shared>,
    key: SharedKey,
}

impl<S> Cooldown<S> {
    pub(crate) fn new(inner: S, shared: Arc<Shared>, key: SharedKey) -> Self {
        Cooldown { inner, shared, key }
    }

    /// A handle on the shared state: per-key state queries and counters.
    pub fn handle(&self) -> CooldownHandle {
        CooldownHandle::new(self.shared.clone())
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

impl<S: Clone> Clone for Cooldown<S> {
    fn clone(&self) -> Self {
        Cooldown {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
            key: self.key.clone(),
        }
    }
}

impl<S: fmt::Debug> fmt::Debug for Cooldown<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cooldown")
            .field("inner", &self.inner)
            .field("shared", &self.shared)
            .finish()
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Cooldown<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone,
    S::Error: Into<BoxError>,
{
    type Response = Response<ResBody>;
    type Error = BoxError;
    type Future = ResponseFuture<S, Request<ReqBody>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let key = key_of(&*self.key, &req);
        // Wait mode waits at most max_wait, and never past the call's deadline.
        let deadline = match self.shared.config.mode {
            Mode::Wait { max_wait } => {
                let own = add(Instant::now(), max_wait);
                let call = CallContext::get(req.extensions()).map(CallContext::deadline);
                Some(call.map_or(own, |call| own.min(call)))
            }
            Mode::FailFast => None,
        };
        // Keep the clone that was made ready; leave a fresh clone behind.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        ResponseFuture::new(inner, req, self.shared.clone(), key, deadline)
    }
}
