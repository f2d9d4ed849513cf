//! The [`Pool`] service and the [`ServedBy`] response extension.

use std::{
    fmt,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use http::{Request, Response};
use tokio::time::Instant;
use tower::{util::BoxCloneSyncService, Service};

use super::{
    builder::PoolBuilder,
    future::ResponseFuture,
    route::Routing,
    stats::{bump, PoolHandle, StatsShared},
};
use crate::{key::Key, redact::Redacted, retry::TryCloneBody, BoxError};

/// A backend as the pool holds it: the user's service under the pool's cooldown, boxed.
pub(crate) type BoxBackend<ReqB, ResB> =
    BoxCloneSyncService<Request<ReqB>, Response<ResB>, BoxError>;

/// Which backend answered: set in the extensions of every response the pool returns.
///
/// ```
/// use ratewise::pool::ServedBy;
///
/// # fn check(res: &http::Response<()>) {
/// if let Some(by) = res.extensions().get::<ServedBy>() {
///     println!("served by {}", by.name());
/// }
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ServedBy(Key);

impl ServedBy {
    pub(crate) fn new(name: Key) -> Self {
        ServedBy(name)
    }

    /// The backend's name.
    pub fn name(&self) -> &str {
        self.0.as_str()
    }

    /// The backend's name as a [`Key`].
    pub fn key(&self) -> &Key {
        &self.0
    }
}

/// One backend of a built pool.
pub(crate) struct Backend<ReqB, ResB> {
    pub(crate) name: Key,
    pub(crate) service: BoxBackend<ReqB, ResB>,
}

/// What every clone of a pool and every call shares.
pub(crate) struct Shared<ReqB, ResB> {
    pub(crate) backends: Vec<Backend<ReqB, ResB>>,
    pub(crate) routing: Routing<ReqB>,
    pub(crate) max_wait: Duration,
    pub(crate) failover_on_transient: bool,
    pub(crate) stats: Arc<StatsShared>,
}

/// Ordered backends with fallback: each request goes to the first candidate backend
/// that is not cooling down and has capacity, and moves on to the next within the same
/// call when a backend answers rate-limited.
///
/// Built with [`Pool::builder`]; see [the guide](crate::guide#pool) for the whole behaviour.
/// Cloning a pool shares its backends, cooldown table and counters.
///
/// Unlike the crate's middlewares, a pool wraps no single inner service (there is no
/// `get_ref`/`into_inner`): like tower's `Steer`, it owns a set of services. Its
/// `poll_ready` is always ready; the readiness of the backends is checked per call, in
/// the response future, since which backends a request may use depends on the request.
pub struct Pool<ReqB, ResB> {
    shared: Arc<Shared<ReqB, ResB>>,
}

impl<ReqB, ResB> Pool<ReqB, ResB> {
    /// A builder with the defaults: no backends, every backend a candidate for every
    /// request, `max_wait` 10 s, exponential backoff from 1 s capped at 60 s.
    pub fn builder() -> PoolBuilder<ReqB, ResB> {
        PoolBuilder::new()
    }

    pub(crate) fn from_shared(shared: Arc<Shared<ReqB, ResB>>) -> Self {
        Pool { shared }
    }

    /// A handle on the pool's state: each backend's cooldown state and counters.
    pub fn handle(&self) -> PoolHandle {
        PoolHandle::new(self.shared.stats.clone())
    }

    /// The backends' names, in the order they were added.
    pub fn backend_names(&self) -> impl Iterator<Item = &str> + '_ {
        self.shared.backends.iter().map(|b| b.name.as_str())
    }
}

impl<ReqB, ResB> Clone for Pool<ReqB, ResB> {
    fn clone(&self) -> Self {
        Pool {
            shared: self.shared.clone(),
        }
    }
}

impl<ReqB, ResB> fmt::Debug for Pool<ReqB, ResB> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<_> = self.backend_names().collect();
        f.debug_struct("Pool")
            .field("backends", &names)
            .field("routing", &self.shared.routing)
            .field("max_wait", &self.shared.max_wait)
            .field("failover_on_transient", &self.shared.failover_on_transient)
            .finish()
    }
}

impl<ReqB, ResB> Service<Request<ReqB>> for Pool<ReqB, ResB>
where
    ReqB: TryCloneBody + Send + 'static,
    ResB: Send + 'static,
{
    type Response = Response<ResB>;
    type Error = BoxError;
    type Future = ResponseFuture<ReqB, ResB>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        let stats = &self.shared.stats;
        bump(&stats.totals.calls);
        match self.shared.routing.candidates(&req) {
            Ok(candidates) => {
                ResponseFuture::new(self.shared.clone(), candidates, req, Instant::now())
            }
            Err(no_route) => {
                bump(&stats.totals.no_route);
                tracing::debug!(target: "ratewise::pool", error = %Redacted(&no_route), "request refused: no route");
                ResponseFuture::failed(self.shared.clone(), no_route.into())
            }
        }
    }
}
