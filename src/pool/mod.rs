//! Ordered backends with fallback: a request goes to the first backend that is not
//! cooling down and has capacity, and moves on to the next in the same call when a
//! backend answers rate-limited.
//!
//! [`Pool`] is an LLM sidecar as one tower service: priority groups
//! ([`primary`](PoolBuilder::primary), [`fallback`](PoolBuilder::fallback)), a cooldown
//! per backend, routes by model, SSE passed through, a [`PoolHandle`] with stats. The
//! caller gets a backend's own answer whenever one was called, a
//! [`Refusal`](crate::Refusal) only when none was. See [the guide](crate::guide#pool).
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
//! let pool = Pool::builder()
//!     .primary("glm", primary)
//!     .fallback("openai", fallback)
//!     .cooldown(CooldownLayer::builder().exponential(Duration::from_secs(1), Duration::from_secs(60)))
//!     .build()?;
//!
//! let res = pool.clone().oneshot(Request::new("{}".to_owned())).await?;
//! assert_eq!(res.extensions().get::<ServedBy>().unwrap().name(), "openai");
//! let glm = pool.handle().backend("glm").unwrap();
//! assert!(matches!(glm.state, KeyState::Cooling { n: 1, .. }));
//! assert_eq!((glm.requests, glm.rate_limited, glm.failovers), (1, 1, 1));
//! # Ok(()) }
//! ```

mod builder;
mod future;
mod route;
mod service;
mod stats;

pub use self::builder::PoolBuilder;
pub use self::route::Model;
pub use self::service::{Pool, ServedBy};
pub use self::stats::{BackendStats, PoolHandle, PoolStats};
