//! Ordered backends with fallback: a request goes to the first backend that is not
//! cooling down and has capacity, and moves on to the next in the same call when a
//! backend answers rate-limited.
//!
//! This is the LLM sidecar of seed 003 (primary/fallback pools, per-backend cooldown
//! `base * 2^(n-1)`, precheck, model to backend routing, retry across pools, SSE
//! passed through, stats) as one tower service, [`Pool`], built from the crate's
//! pieces:
//!
//! - **Backends** are any `Service<Request<B>>`, usually a client under its own
//!   [`RateLimitLayer`](crate::RateLimitLayer) (the per-backend RPM bucket) and a
//!   [`ClassifyLayer`](crate::ClassifyLayer) for its platform (GLM's 429 code 1302,
//!   OpenAI's 429). They are boxed, so stacks of different types mix; each has a name
//!   and sits in a priority group: [`primary`](PoolBuilder::primary) (0), then
//!   [`fallback`](PoolBuilder::fallback) (1), then any further
//!   [`backend`](PoolBuilder::backend) group.
//! - **Cooldown**: the pool owns one [`CooldownLayer`](crate::CooldownLayer), keyed by
//!   backend name, in fail-fast mode, around every backend. A rate-limited answer
//!   (read with [`verdict_of`](crate::classify::verdict_of) /
//!   [`verdict_of_error`](crate::classify::verdict_of_error)) puts the backend into
//!   cooldown, `max(retry_after, base * 2^(n-1))` by default; configure it with
//!   [`PoolBuilder::cooldown`] (backoff, `max_cooldown`, seed 003's `precheck`).
//!   After the cooldown, one probe request goes to the backend and decides.
//! - **Routing**: the candidates of a request come from a route table keyed by model
//!   ([`route`](PoolBuilder::route), reading the [`Model`] extension or any
//!   [`route_key`](PoolBuilder::route_key)), or from a closure
//!   ([`route_fn`](PoolBuilder::route_fn)); by default every backend. Candidates are
//!   always tried in priority-group order, then in the order the route names them.
//!
//! # One call
//!
//! 1. The candidates are looked at in order. A candidate that is cooling, or half-open
//!    with its probe in flight, is skipped. The next one's `poll_ready` is polled:
//!    `Pending` means no capacity now (e.g. a `ConcurrencyLimit` that is full): skipped
//!    too. The first candidate that is ready gets the request.
//!
//!    A backend's own [`RateLimitLayer`](crate::RateLimitLayer) is always ready (it
//!    waits in its response future, like every ratewise layer), so an empty bucket does
//!    not show in `poll_ready`. Give it a short [`max_wait`](crate::rate_limit::RateLimitBuilder::max_wait)
//!    (`Duration::ZERO`: "only if a cell is free now"): an empty bucket then answers
//!    `MaxWaitExceeded` at once, which the pool reads as rate-limited with the bucket's
//!    wait: the call moves on, and the backend is skipped until its bucket has a cell.
//!    With an unbounded `max_wait` the call would wait inside that backend instead.
//! 2. If its answer is rate-limited (a response whose verdict says so, or an error
//!    such as a rate limiter's `max_wait` refusal), the backend cools down and the
//!    same call goes on with the remaining candidates, with a copy of the request.
//!    With [`failover_on_transient`](PoolBuilder::failover_on_transient), 5xx and
//!    connection errors move on too. Each backend is tried at most once per call.
//! 3. If no remaining candidate is available, the call waits (with `tokio::time`,
//!    never past its arrival plus [`max_wait`](PoolBuilder::max_wait)) for the first
//!    cooldown to end or for a busy candidate to have capacity, then looks again. When
//!    every remaining candidate is cooling and the first recovers too late, it stops at
//!    once, without sleeping.
//!
//! # What the caller gets
//!
//! - **A backend's answer, as it came** (status, headers, body, streaming included),
//!   with [`ServedBy`] in its extensions, whenever a backend was called during the
//!   call: the answer that was not failed over, or, when the call has to stop after a
//!   failover (no candidate left, or none reachable within `max_wait`), **the last
//!   answer a backend gave**. A real upstream 429 is never replaced by a pool error
//!   (LiteLLM #20867: "No deployments available" hid the real 429).
//! - [`AllBackendsCooling`] only when **no backend was called**: every candidate was
//!   cooling (or unavailable) and the first recovery lies past `max_wait`. Its
//!   [`retry_after`](AllBackendsCooling::retry_after) is the time to that recovery;
//!   [`verdict_of_error`](crate::classify::verdict_of_error) reads it as rate-limited
//!   with that wait, so a retry layer above knows how long to wait.
//! - [`NoBackendReady`] when no backend was called and, for the whole `max_wait`, the
//!   candidates had no capacity (and none was cooling).
//! - [`NoRoute`] when the route chose no backend.
//!
//! # Request bodies
//!
//! Moving on needs a copy of the request: the body must implement
//! [`TryCloneBody`](crate::retry::TryCloneBody), and a copy is made only while another
//! candidate remains. A request whose body cannot be cloned (a streaming body,
//! [`RetryBody::streaming`](crate::retry::RetryBody::streaming)) goes to **one backend
//! only**: the first available candidate, whose answer, rate-limited or not, goes to
//! the caller. Buffer it first with [`buffer_request`](crate::retry::buffer_request)
//! to let it fail over.
//!
//! # Responses
//!
//! The pool never touches a response body: an SSE stream flows from the backend that
//! serves it to the caller chunk by chunk. (A [`ClassifyLayer`](crate::ClassifyLayer)
//! reads a body prefix only for the statuses its classifier asks about, never a 2xx
//! one in the presets.) All backends must answer with the same body type.
//!
//! # Observing it
//!
//! [`Pool::handle`] gives a [`PoolHandle`]: each backend's cooldown state (ok, cooling
//! until, half-open) and counters (requests, successes, rate-limited, failed,
//! failovers, skips), and pool-wide totals. `tracing` events (target
//! `ratewise::pool`): `info` on failover (backend, verdict, retry hint) and on a
//! refusal, `debug` on a skip (backend, reason, wait) and when a call starts waiting.
//! Events carry backend names, never URIs or headers.
//!
//! A waiting call is woken exactly, never by polling: by the earliest cooldown's end,
//! by a busy backend's `poll_ready`, or by the cooldown entry of a backend whose probe
//! is in flight, when that probe is answered.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use http::{Request, Response, StatusCode};
//! use ratewise::{cooldown::{CooldownLayer, KeyState}, pool::{Pool, ServedBy}, BoxError};
//! use tower::{service_fn, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), BoxError> {
//! // A primary that is over its limit, and a fallback that serves.
//! let primary = service_fn(|_req: Request<String>| async {
//!     Ok::<_, BoxError>(Response::builder().status(StatusCode::TOO_MANY_REQUESTS).body(String::new())?)
//! });
//! let fallback = service_fn(|_req: Request<String>| async {
//!     Ok::<_, BoxError>(Response::new("hello from the fallback".to_owned()))
//! });
//!
//! let pool = Pool::builder()
//!     .primary("glm", primary)
//!     .fallback("openai", fallback)
//!     .cooldown(CooldownLayer::builder().exponential(Duration::from_secs(1), Duration::from_secs(60)))
//!     .max_wait(Duration::from_secs(2))
//!     .build()?;
//! let handle = pool.handle();
//!
//! let res = pool.clone().oneshot(Request::new("{}".to_owned())).await?;
//! assert_eq!(res.status(), StatusCode::OK);
//! assert_eq!(res.extensions().get::<ServedBy>().unwrap().name(), "openai");
//!
//! let glm = handle.backend("glm").unwrap();
//! assert!(matches!(glm.state, KeyState::Cooling { n: 1, .. }));
//! assert_eq!((glm.requests, glm.rate_limited, glm.failovers), (1, 1, 1));
//! # Ok(()) }
//! ```

mod builder;
pub mod future;
mod route;
mod service;
mod stats;

pub use self::builder::PoolBuilder;
pub use self::future::ResponseFuture;
pub use self::route::Model;
pub use self::service::{Pool, ServedBy};
pub use self::stats::{BackendStats, PoolHandle, PoolStats};
