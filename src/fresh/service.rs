use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use tower::Service;

use crate::BoxError;

use super::shared::{Shared, Tally};
use super::{shared::FreshCounters, FreshStats, NotReady, ResponseFuture};

/// Serves requests through a client made by a `MakeService`, and makes a new client
/// after `threshold` consecutive connection-level errors.
///
/// Made by [`FreshClientLayer`](super::FreshClientLayer). `inner` is the
/// `MakeService`: a [`Service`] that takes the target and returns a client, which must
/// be `Clone` (HTTP clients are cheap handles to a shared pool; wrap one that is not in
/// `tower::buffer::Buffer`).
///
/// Clones share the current client, its generation and its run of errors. See
/// [the guide](crate::guide#fresh-client) for the rules.
pub struct FreshClient<M, T>
where
    M: Service<T>,
{
    inner: M,
    target: T,
    shared: Arc<Shared<M::Response, M::Future>>,
    /// This clone's copy of the current client and its generation.
    local: Option<(u64, M::Response)>,
    /// A failed build, handed to the next `call`.
    error: Option<BoxError>,
}

impl<M, T> FreshClient<M, T>
where
    M: Service<T>,
{
    pub(super) fn new(
        inner: M,
        target: T,
        name: Arc<str>,
        threshold: u32,
        stats: FreshCounters,
    ) -> Self {
        FreshClient {
            inner,
            target,
            shared: Arc::new(Shared::new(Tally::new(threshold, name, stats))),
            local: None,
            error: None,
        }
    }

    /// The `MakeService`.
    pub fn get_ref(&self) -> &M {
        &self.inner
    }

    /// The `MakeService`, mutably.
    pub fn get_mut(&mut self) -> &mut M {
        &mut self.inner
    }

    /// The `MakeService`, consuming `self`.
    pub fn into_inner(self) -> M {
        self.inner
    }

    /// The target handed to the `MakeService`.
    pub fn target(&self) -> &T {
        &self.target
    }

    /// The stats shared with the layer that made this service.
    pub fn stats(&self) -> FreshStats {
        self.shared.tally().stats().snapshot()
    }
}

impl<M, T> Clone for FreshClient<M, T>
where
    M: Service<T> + Clone,
    T: Clone,
{
    /// A handle on the same client slot; only this clone's readiness is new.
    fn clone(&self) -> Self {
        FreshClient {
            inner: self.inner.clone(),
            target: self.target.clone(),
            shared: Arc::clone(&self.shared),
            local: None,
            error: None,
        }
    }
}

impl<M, T> fmt::Debug for FreshClient<M, T>
where
    M: Service<T> + fmt::Debug,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The target is not printed: it may carry a secret.
        f.debug_struct("FreshClient")
            .field("inner", &self.inner)
            .field("tally", self.shared.tally())
            .field("local_generation", &self.local.as_ref().map(|(g, _)| *g))
            .field("pending_error", &self.error.is_some())
            .finish_non_exhaustive()
    }
}

impl<M, T, S, R> Service<R> for FreshClient<M, T>
where
    M: Service<T, Response = S>,
    M::Error: Into<BoxError>,
    S: Service<R> + Clone,
    S::Error: Into<BoxError>,
    T: Clone,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future>;

    /// Ready when this clone holds the current client and that client is ready.
    ///
    /// Builds the client first when there is none yet (the first call) or the current
    /// one was retired. A failed build is not an error here: it is returned by the next
    /// [`call`](Service::call), and the `poll_ready` after that tries again, as
    /// `tower::reconnect::Reconnect` does. An error from the client's own `poll_ready`
    /// counts like an error from its `call` and is likewise returned by `call`.
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        loop {
            if self.error.is_some() {
                return Poll::Ready(Ok(()));
            }
            match self
                .shared
                .poll_checkout(&mut self.inner, &self.target, &mut self.local, cx)
            {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(err)) => {
                    self.error = Some(Box::new(err));
                    return Poll::Ready(Ok(()));
                }
                Poll::Ready(Ok(())) => {}
            }
            let Some((generation, client)) = self.local.as_mut() else {
                // `poll_checkout` always leaves a client after `Ok`; check again.
                continue;
            };
            return match client.poll_ready(cx) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(Ok(())) => Poll::Ready(Ok(())),
                Poll::Ready(Err(err)) => {
                    let generation = *generation;
                    // A service whose poll_ready failed must not be used again.
                    self.local = None;
                    self.error = Some(self.shared.tally().on_error(
                        generation,
                        err.into(),
                        std::any::type_name::<S::Error>(),
                    ));
                    Poll::Ready(Ok(()))
                }
            };
        }
    }

    fn call(&mut self, request: R) -> Self::Future {
        if let Some(error) = self.error.take() {
            return ResponseFuture::failed(error);
        }
        match self.local.as_mut() {
            Some((generation, client)) => ResponseFuture::called(
                client.call(request),
                Arc::clone(self.shared.tally()),
                *generation,
            ),
            None => ResponseFuture::failed(Box::new(NotReady)),
        }
    }
}
