//! Keyed GCRA rate limiting ([`RateLimitLayer`]): wait to be admitted (clients) or
//! answer `429` (servers), one bucket per key, shared across clones.
//!
//! # Quota
//!
//! A rate (`per_second(n)`, `per_minute(n)` or `per_period(d)`: one cell every
//! `1 s / n`, `60 s / n` or `d`) plus a burst (the most cells available at once;
//! defaults to `n`, or 1 for `per_period`). The algorithm is GCRA, through governor:
//! a rested key takes `burst` cells at once, then one per interval. With
//! `per_second(10).burst(5)`, requests at `t = 0` get 5 through at once, then one every
//! 100 ms: 15 by `t = 1 s`. A zero rate, period or burst is a [`ConfigError`] from
//! `build()` that names the field.
//!
//! # Keys, bypass, cost
//!
//! - [`key`](RateLimitBuilder::key): any [`KeyExtractor`](crate::key::KeyExtractor)
//!   (a closure, [`Authority`](crate::key::Authority), ...); the default
//!   [`Global`](crate::key::Global) is one bucket for everything. Each key has its own
//!   bucket.
//! - [`bypass`](RateLimitBuilder::bypass): a predicate `Fn(&Request<B>) -> bool`; the
//!   requests it matches are never throttled and take no cell (DingTalk's final card
//!   edits, which must never be dropped).
//! - [`cost`](RateLimitBuilder::cost): `Fn(&Request<B>) -> u32`, how many cells a request
//!   takes (default 1). Cost 0 takes none. A cost above the burst can never be admitted:
//!   it fails at once with [`CostExceedsBurst`] (reject mode: `429` without
//!   `Retry-After`), it does not hang.
//!
//! # Wait mode (clients, the default)
//!
//! A request over the limit waits, in `tokio::time`, until its cells are available, then
//! calls the inner service in the same poll in which it takes them. A request dropped
//! while waiting takes no cell. If the wait would be longer than
//! [`max_wait`](RateLimitBuilder::max_wait), the call fails **at once**, without
//! sleeping, with [`MaxWaitExceeded`] (its key, the wait and the earliest admission
//! time). The service's error type is [`BoxError`](crate::BoxError); every error is a
//! typed one (from this module, or the cooldown's below), downcastable from it.
//!
//! Under a [`CooldownLayer`](crate::CooldownLayer): a request that was held back (denied
//! cells, or queued behind other waiters) re-checks the cooldowns it passed right before
//! it asks for its cells. If its key began cooling while it waited, it takes no cell, is
//! not sent, and fails with the cooldown's
//! [`CoolingDown`](crate::cooldown::CoolingDown) (see
//! [the cooldown's docs](crate::cooldown#requests-held-back-below-the-cooldown)). A
//! request admitted at its first attempt is not re-checked: nothing held it back since
//! the cooldown let it through.
//!
//! Waiters are admitted in arrival order, without starvation: each key with waiters has
//! a FIFO line (a fair `Semaphore(1)`, held only by waiting requests, dropped with the
//! last waiter). Only the head of the line asks the store for cells; a newcomer that
//! finds a line queues behind it instead of grabbing the next cell. A newcomer's wait is
//! estimated as the head's expected admission plus one replenish interval per cell
//! queued behind the head and per cell of its own, so `max_wait` still fails fast under
//! contention. Should that estimate prove short, the request still fails as soon as its
//! admission is known to fall past `max_wait`, never later than `max_wait`.
//!
//! # Reject mode (servers)
//!
//! [`reject`](RateLimitBuilder::reject): a request over the limit (or arriving while
//! waiters from a wait-mode layer on the same limiter are queued) is answered at once,
//! without calling the inner service, with:
//!
//! ```text
//! HTTP/1.1 429 Too Many Requests
//! retry-after: <wait in whole seconds, rounded up>
//! ratelimit-policy: "ratewise";q=<burst>;w=<window>
//! ratelimit: "ratewise";r=0;t=<wait in whole seconds, rounded up>
//! ```
//!
//! `RateLimit-Policy` and `RateLimit` follow the structured-field form of the IETF
//! draft-ietf-httpapi-ratelimit-headers (draft 08 and later): the policy is named
//! `"ratewise"`, `q` is the burst, `w` the time an empty bucket takes to refill
//! (`burst × interval`) in whole seconds rounded up (at least 1), `r` the cells left
//! (0) and `t` the seconds until the request could be admitted. The body is the body
//! type's `Default` (empty). If the store fails, the answer is `503 Service Unavailable`.
//! The inner service's error type is kept, so axum can use the layer directly, without
//! `HandleErrorLayer`.
//!
//! # Sharing
//!
//! The layer's state (buckets, queues, [`Stats`]) lives in one [`RateLimiter`] behind an
//! `Arc`, created by `build()`. Every clone of the layer and every service it makes
//! share it: build the layer once and `.clone()` it into every stack that must share
//! the bucket (DingTalk's process-wide card bucket). To share the bucket between layers
//! that differ (another body type, key, mode or bypass rule), take the handle with
//! [`RateLimitLayer::limiter`] and pass it to
//! [`build_with_limiter`](RateLimitBuilder::build_with_limiter).
//!
//! # Stores
//!
//! The buckets sit behind [`RateLimitStore`], one async "take n cells for this key"
//! call whose contract is admitted / denied-with-wait / error (see the trait).
//! [`GovernorStore`], the default, keeps them in memory with governor, on tokio's clock
//! (so paused-clock tests drive it), with a ready future (no allocation), and evicts
//! idle keys so memory stays bounded with millions of distinct keys (see its docs).
//! Another store (Redis) plugs in through `build_with_limiter(RateLimiter::new(store))`
//! without changing the layer.
//!
//! # Observability
//!
//! `tracing` events: every wait (`debug`, key and expected wait; again on admission with
//! the actual wait), every refusal (`info`, key and retry-after or wait), store failures
//! (`warn`). Counters: [`RateLimitLayer::stats`] / [`RateLimit::stats`].
//!
//! # Example
//!
//! A client stack in wait mode:
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
//!     .per_second(20)
//!     .burst(20)
//!     .max_wait(Duration::from_secs(2))
//!     // A cost of zero bypasses the limiter: final card edits are never throttled.
//!     .cost(|req: &RequestRef<'_>| u32::from(!req.headers().contains_key("x-card-final")))
//!     .build()?;
//!
//! let upstream = service_fn(|_req: Request<String>| async {
//!     Ok::<_, Infallible>(Response::new(String::from("ok")))
//! });
//! // Every clone of `cards` shares one bucket.
//! let client = ServiceBuilder::new().layer(cards.clone()).service(upstream);
//!
//! let res = client.clone().oneshot(Request::new(String::from("update"))).await?;
//! assert_eq!(res.body(), "ok");
//! assert_eq!(cards.stats().admitted, 1);
//!
//! // Too long a wait fails at once, with the earliest time to try again.
//! let strict = RateLimitLayer::builder().per_minute(1).max_wait(Duration::ZERO).build()?;
//! let client = ServiceBuilder::new().layer(strict).service(upstream);
//! client.clone().oneshot(Request::new(String::new())).await?;
//! let err = client.oneshot(Request::new(String::new())).await.unwrap_err();
//! let refusal = Refusal::find(&*err).unwrap();
//! assert_eq!(refusal.retry_after(), Some(Duration::from_secs(60)));
//! # Ok(()) }
//! ```
//!
//! A server in reject mode (usable as an axum layer as is; the error type stays
//! `Infallible`):
//!
//! ```
//! use std::convert::Infallible;
//! use http::{Request, Response, StatusCode};
//! use ratewise::{key::{Key, RequestRef}, rate_limit::RateLimitLayer};
//! use tower::{service_fn, Service, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let per_client = RateLimitLayer::builder()
//!     .per_second(1)
//!     // Never key by a raw credential: derive the key with a keyed hash.
//!     .key(|req: &RequestRef<'_>| {
//!         Key::from_secret(req.headers().get("x-api-key").and_then(|v| v.to_str().ok()).unwrap_or(""))
//!     })
//!     .reject()
//!     .build()?;
//! let mut app = ServiceBuilder::new().layer(per_client).service(service_fn(
//!     |_req: Request<String>| async { Ok::<_, Infallible>(Response::new(String::new())) },
//! ));
//!
//! let req = || Request::builder().header("x-api-key", "alice").body(String::new()).unwrap();
//! let first = app.ready().await?.call(req()).await?;
//! assert_eq!(first.status(), StatusCode::OK);
//! let second = app.ready().await?.call(req()).await?;
//! assert_eq!(second.status(), StatusCode::TOO_MANY_REQUESTS);
//! assert_eq!(second.headers()["retry-after"], "1");
//! assert_eq!(second.headers()["ratelimit-policy"], r#""ratewise";q=1;w=1"#);
//! assert_eq!(second.headers()["ratelimit"], r#""ratewise";r=0;t=1"#);
//! # Ok(()) }
//! ```

mod clock;
mod future;
mod headers;
mod layer;
mod limiter;
mod policy;
mod quota;
mod service;
mod stats;

mod store;

pub use self::future::ResponseFuture;
pub use self::layer::{RateLimitBuilder, RateLimitLayer};
pub use self::limiter::RateLimiter;
pub use self::policy::{Mode, Reject, Wait};
pub use self::quota::Quota;
pub use self::service::RateLimit;
pub use self::stats::RateLimitStats;
pub use self::store::{Decision, GovernorStore, RateLimitStore, StoreError};
