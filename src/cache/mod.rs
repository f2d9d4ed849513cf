//! The last good answer of a discovery endpoint, served while that endpoint is
//! rate-limited.
//!
//! Some endpoints are asked the same question again and again, and punish the asking:
//! every QQ bot reconnect calls `GET /gateway`, which allows about two calls per
//! window and then answers HTTP 400 "接口调用超过频率限制", so a reconnect storm ends
//! with no gateway URL at all. [`CachedEndpointLayer`] keeps the last good answer per
//! key and hands it out while the endpoint refuses, with zero calls.
//!
//! # The rules
//!
//! - **Per key.** Requests map to entries through a [`KeyExtractor`](crate::key::KeyExtractor),
//!   by default [`MethodUri`](crate::key::MethodUri) (`GET api.sgroup.qq.com/gateway #<fingerprint>`:
//!   method, host, path with token-looking segments masked, and a hash of the full URI).
//! - **What is kept**: the last good answer, that is a 2xx response whose
//!   [`verdict_of`](crate::classify::verdict_of) is [`Verdict::Success`](crate::Verdict::Success):
//!   status, headers, extensions, body and trailers, buffered with the crate's one
//!   body peeker up to [`body_cap`](CacheBuilder::body_cap). A good answer with a
//!   larger body reaches its caller whole (the peeker replays what it read) and is not
//!   kept. Put a [`ClassifyLayer`](crate::ClassifyLayer) under this layer so that a
//!   rate limit hidden in a 400 body (QQ) or a 200 body is judged as one.
//! - **Fresh** for the [`ttl`](CacheBuilder::ttl), or, without one, until
//!   [invalidated](CacheHandle::invalidate). A fresh entry is served without calling
//!   the upstream ([`CacheStatus::Hit`]).
//! - **Single flight.** At most one upstream call per key is in flight. Requests that
//!   find no fresh entry while it runs wait for it (on a `tokio::sync::watch` channel,
//!   no polling) and get: the new entry, or the stale entry when the call was
//!   refused, or, with nothing cached, an identical copy of the upstream's answer,
//!   buffered up to the cap. An answer that cannot be copied (an error, or a body over
//!   the cap) goes to its own caller only; the waiters then decide again, so the next
//!   of them makes the next call, alone, and the others wait for that one. Never more
//!   than one call per key is in flight, and every caller gets a real answer of the
//!   upstream or a copy of one. A cancelled caller hands the lead on the same way.
//! - **Serving stale.** When the upstream answers rate-limited, or fails (a
//!   [`Transient`](crate::Verdict::Transient) or [`Failure`](crate::Verdict::Failure)
//!   verdict, or an error, judged by [`verdict_of_error`](crate::classify::verdict_of_error)),
//!   and the key has an entry, fresh or not, the entry is served, marked
//!   [`CacheStatus::Stale`] with the [`StaleReason`].
//! - **Cooldown.** A rate-limited answer (or error) starts a cooldown for its key: the
//!   server's retry hint, else [`default_backoff`](CacheBuilder::default_backoff)
//!   (10 s, QQ's window). During it no request for the key reaches the upstream: the
//!   stale entry is served ([`StaleReason::CoolingDown`]), or, with nothing cached,
//!   the request fails with [`EndpointLimited`] (key and remaining wait). So in a storm
//!   on an empty cache, the callers whose call was in flight when the 400 came get
//!   that 400, byte for byte, and the ones after it get `EndpointLimited` instead of a
//!   call that would only prolong the limit. Nothing is invented: no response is ever
//!   made up.
//! - **No entry**: the upstream's answer or error reaches the caller unchanged; an
//!   error is the inner service's own, boxed (downcast it to its type).
//! - **Invalidation** ([`CacheHandle::invalidate`], [`invalidate_all`](CacheHandle::invalidate_all))
//!   marks an entry stale rather than deleting it: the next request refreshes, and if
//!   that refresh is refused the invalidated entry is still served. It does not lift a
//!   running cooldown. [`CacheHandle::remove`] deletes an entry for real.
//! - **Marks.** Every response the layer returns carries a [`CacheStatus`] in its
//!   extensions; [`status_header`](CacheBuilder::status_header) also writes it to a
//!   header (`hit`, `miss`, `stale`); that is off by default, leaving the upstream's
//!   headers untouched.
//! - **Counters**: [`CacheHandle::stats`].
//!
//! Use it for idempotent requests (GET, HEAD, or a POST that only fetches, such as a
//! token endpoint): a cached answer stands in for a call that was not made. The key
//! includes the method by default. The layer's `poll_ready` is always ready; a request
//! that calls the upstream waits for a clone of the inner service to be ready, so the
//! inner service must be `Clone`. Entries live until removed: key by a few endpoints,
//! not by something unbounded. Not for streams: a 2xx answer is buffered (up to the
//! cap) before its caller sees it, so an SSE endpoint would be held back.
//!
//! # Example
//!
//! ```
//! use bytes::Bytes;
//! use http::{Request, Response};
//! use http_body_util::{BodyExt, Empty, Full};
//! use ratewise::cache::{CacheStatus, CachedEndpointLayer, StaleReason};
//! use ratewise::key::{KeyExtractor, MethodUri};
//! use std::sync::atomic::{AtomicUsize, Ordering};
//! use std::sync::Arc;
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), ratewise::BoxError> {
//! // An endpoint that answers once, then says 429.
//! let calls = Arc::new(AtomicUsize::new(0));
//! let upstream = service_fn({
//!     let calls = calls.clone();
//!     move |_req: Request<Empty<Bytes>>| {
//!         let n = calls.fetch_add(1, Ordering::SeqCst);
//!         async move {
//!             let res = match n {
//!                 0 => Response::new(Full::new(Bytes::from(r#"{"url":"wss://gw/1"}"#))),
//!                 _ => Response::builder().status(429).body(Full::new(Bytes::new()))?,
//!             };
//!             Ok::<_, http::Error>(res)
//!         }
//!     }
//! });
//! let layer = CachedEndpointLayer::new();
//! let handle = layer.handle();
//! let svc = ServiceBuilder::new().layer(layer).service(upstream);
//! let get = || Request::get("https://api.example/gateway").body(Empty::new()).unwrap();
//!
//! let res = svc.clone().oneshot(get()).await?;
//! assert_eq!(res.extensions().get::<CacheStatus>(), Some(&CacheStatus::Miss));
//!
//! // Fresh: no call.
//! let res = svc.clone().oneshot(get()).await?;
//! assert_eq!(res.extensions().get::<CacheStatus>(), Some(&CacheStatus::Hit));
//! assert_eq!(calls.load(Ordering::SeqCst), 1);
//!
//! // The URL turned out dead: refresh. The endpoint says 429; the old URL is served.
//! handle.invalidate(MethodUri.key_of(&get()));
//! let res = svc.clone().oneshot(get()).await?;
//! assert_eq!(
//!     res.extensions().get::<CacheStatus>(),
//!     Some(&CacheStatus::Stale { reason: StaleReason::RateLimited })
//! );
//! let body = res.into_body().collect().await?.to_bytes();
//! assert_eq!(body, Bytes::from(r#"{"url":"wss://gw/1"}"#));
//! assert_eq!(calls.load(Ordering::SeqCst), 2);
//! # Ok(()) }
//! ```

use std::time::Duration;

use http::{Response, StatusCode};

mod future;
mod layer;
mod service;
mod store;

pub use self::future::ResponseFuture;
pub use self::layer::{CacheBuilder, CachedEndpointLayer, DEFAULT_BACKOFF, DEFAULT_BODY_CAP};
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
