//! The last good answer of a discovery endpoint, served while that endpoint is
//! rate-limited.
//!
//! Every QQ bot reconnect calls `GET /gateway`, which allows about two calls per window
//! and then answers HTTP 400 "接口调用超过频率限制", so a reconnect storm ends with no
//! gateway URL at all. [`CachedEndpointLayer`] keeps the last good answer per key
//! (default [`MethodUri`](crate::key::MethodUri)), fresh for a [`ttl`](CacheBuilder::ttl)
//! or until [invalidated](CacheHandle::invalidate), makes at most one upstream call per
//! key at a time, and serves the stale entry, marked with a [`CacheStatus`], while the
//! endpoint refuses or fails. The rules, and what to cache, are in
//! [the guide](crate::guide#cache).
//!
//! # Example
//!
//! ```
//! use bytes::Bytes;
//! use http::{Request, Response};
//! use http_body_util::{Empty, Full};
//! use ratewise::cache::{CacheStatus, CachedEndpointLayer};
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), ratewise::BoxError> {
//! let gateway = service_fn(|_req: Request<Empty<Bytes>>| async {
//!     Ok::<_, http::Error>(Response::new(Full::new(Bytes::from(r#"{"url":"wss://gw/1"}"#))))
//! });
//! let svc = ServiceBuilder::new().layer(CachedEndpointLayer::new()).service(gateway);
//! let get = || Request::get("https://api.example/gateway").body(Empty::new()).unwrap();
//!
//! let first = svc.clone().oneshot(get()).await?;
//! assert_eq!(CacheStatus::of(&first), Some(CacheStatus::Miss));
//! // Fresh: served without calling the endpoint.
//! let second = svc.oneshot(get()).await?;
//! assert_eq!(CacheStatus::of(&second), Some(CacheStatus::Hit));
//! # Ok(()) }
//! ```

use std::time::Duration;

use http::{Response, StatusCode};

mod future;
mod layer;
mod service;
mod store;

use self::future::ResponseFuture;
pub use self::layer::{CacheBuilder, CachedEndpointLayer};
pub use self::service::CachedEndpoint;
pub use self::store::{CacheHandle, CacheStats};

/// Where a response of [`CachedEndpointLayer`] came from. Stored in every response's
/// extensions.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheStatus {
    /// A fresh entry; the upstream was not called (or, for a request that waited, the
    /// entry the call it waited for just stored).
    Hit,
    /// The upstream's answer (or, for a request that waited, an identical copy of
    /// it): nothing fresh was cached.
    Miss,
    /// A stale entry, served because the upstream could not give a good answer.
    Stale {
        /// Why the entry was served instead.
        reason: StaleReason,
    },
}

impl CacheStatus {
    /// The status of a response that went through the layer.
    pub fn of<B>(response: &Response<B>) -> Option<CacheStatus> {
        response.extensions().get::<CacheStatus>().copied()
    }

    /// `hit`, `miss` or `stale`: the value written to the
    /// [status header](CacheBuilder::status_header).
    pub fn as_str(&self) -> &'static str {
        match self {
            CacheStatus::Hit => "hit",
            CacheStatus::Miss => "miss",
            CacheStatus::Stale { .. } => "stale",
        }
    }

    /// Whether the response is a stale entry.
    pub fn is_stale(&self) -> bool {
        matches!(self, CacheStatus::Stale { .. })
    }
}

/// Why a stale entry was served.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StaleReason {
    /// The refresh was answered rate-limited (this request's call, or the call it
    /// waited for); a cooldown started.
    RateLimited,
    /// The key is cooling down after a rate-limited answer; the upstream was not
    /// called.
    CoolingDown {
        /// How long the cooldown still lasts.
        remaining: Duration,
    },
    /// The refresh was answered with a failure (transient or not).
    Failed {
        /// The upstream's status.
        status: StatusCode,
    },
    /// The refresh failed with an error (connection, timeout, the inner service's
    /// readiness).
    Error,
}
