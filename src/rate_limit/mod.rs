//! Keyed GCRA rate limiting ([`RateLimitLayer`]): wait to be admitted (clients) or
//! answer `429` (servers), one bucket per key, shared across clones.
//!
//! A quota is a rate plus a burst. In wait mode (the default) a request over the limit
//! waits its turn, in arrival order, or fails at once with a [`Refusal`](crate::Refusal)
//! past [`max_wait`](RateLimitBuilder::max_wait); in [reject](RateLimitBuilder::reject)
//! mode it is answered `429` with `Retry-After` and a problem+json body (servers: see
//! [`ClientIp`](crate::key::ClientIp) for per-client keys). A cost of zero bypasses the
//! limiter.
//! Keys, sharing, stores and tracing: [the guide](crate::guide#rate-limit).
//!
//! # Example
//!
//! ```
//! use std::{convert::Infallible, time::Duration};
//! use http::{Request, Response};
//! use ratewise::{key::RequestRef, rate_limit::RateLimitLayer, Refusal};
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), ratewise::BoxError> {
//! let cards = RateLimitLayer::builder()
//!     .per_minute(1)
//!     .max_wait(Duration::ZERO) // refuse at once rather than wait
//!     .cost(|req: &RequestRef<'_>| if req.headers().contains_key("x-card-final") { 0 } else { 1 })
//!     .build()?;
//! let upstream = service_fn(|_req: Request<String>| async {
//!     Ok::<_, Infallible>(Response::new(String::from("ok")))
//! });
//! // Every clone of `cards` shares one bucket.
//! let client = ServiceBuilder::new().layer(cards.clone()).service(upstream);
//! let update = || Request::new(String::from("update"));
//! assert_eq!(client.clone().oneshot(update()).await?.body(), "ok");
//! let err = client.clone().oneshot(update()).await.unwrap_err();
//! assert_eq!(Refusal::find(&*err).unwrap().retry_after(), Some(Duration::from_secs(60)));
//!
//! // A final edit costs nothing: it is never throttled.
//! let last = Request::builder().header("x-card-final", "1").body(String::from("done"))?;
//! assert_eq!(client.oneshot(last).await?.body(), "ok");
//! assert_eq!((cards.stats().admitted, cards.stats().bypassed), (1, 1));
//! # Ok(()) }
//! ```

mod clock;
mod future;
mod headers;
mod layer;
mod limiter;
mod limits;
mod policy;
mod quota;
mod service;
pub(crate) mod shared;
mod stats;

pub(crate) mod store;

pub(crate) use self::future::ResponseFuture;
pub use self::layer::{RateLimitBuilder, RateLimitLayer};
pub use self::limiter::RateLimiter;
pub use self::limits::Limit;
#[cfg(feature = "redis")]
pub(crate) use self::limits::{MemoryStore, Rule};
pub use self::policy::{Reject, Wait};
pub use self::quota::Quota;
pub use self::service::RateLimit;
pub(crate) use self::shared::{MakeStore, Store};
pub use self::stats::RateLimitStats;
#[cfg(feature = "redis")]
pub(crate) use self::store::{Decision, SettleFuture};
pub(crate) use self::store::{Keys, RateLimitStore};
