//! Per-key backoff after a rate-limited answer, honouring the server's retry hint.
//!
//! When an answer is rate-limited (judged by its verdict: put a
//! [`ClassifyLayer`](crate::ClassifyLayer) underneath for bodies such as QQ's 400), its
//! key cools for the server's hint (else an escalating `backoff(n)`), and no request for the key reaches the
//! upstream until a single probe after the cooldown has been answered: the others wait
//! ([`wait`](CooldownBuilder::wait)) or get a [`Refusal`](crate::Refusal) ([`fail_fast`](CooldownBuilder::fail_fast)). See
//! [the guide](crate::guide#cooldown), requests held back in a rate limiter included.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use http::{Request, Response, StatusCode};
//! use ratewise::{cooldown::KeyState, BoxError, CooldownLayer, Refusal};
//! use tower::{service_fn, Service, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), BoxError> {
//! // Backoff: exponential from 1 s, capped at 60 s (the default); the server's hint wins.
//! let layer = CooldownLayer::builder().max_cooldown(Duration::from_secs(600)).fail_fast().build()?;
//! let handle = layer.handle();
//! let mut svc = ServiceBuilder::new().layer(layer).service(service_fn(|_req: Request<()>| async {
//!     // Telegram's answer: 429, retry after 4310 s.
//!     Ok::<_, BoxError>(Response::builder().status(StatusCode::TOO_MANY_REQUESTS)
//!         .header("retry-after", "4310").body(())?)
//! }));
//!
//! let req = || Request::get("https://api.telegram.org/bot1/getMe").body(()).unwrap();
//! assert_eq!(svc.ready().await?.call(req()).await?.status(), StatusCode::TOO_MANY_REQUESTS);
//! // The key cools for min(4310 s, max_cooldown) = 600 s.
//! assert!(matches!(handle.state("api.telegram.org"), KeyState::Cooling { n: 1, .. }));
//! // The next request is refused at once, without reaching Telegram.
//! let err = svc.ready().await?.call(req()).await.unwrap_err();
//! let cooling = Refusal::find(&*err).expect("typed error");
//! assert_eq!(cooling.key().map(|k| k.as_str()), Some("api.telegram.org"));
//! assert!(cooling.retry_after() <= Some(Duration::from_secs(600)));
//! # Ok(()) }
//! ```

mod events;
mod future;
pub(crate) mod layer;
mod service;
mod state;
mod stats;
mod store;

pub use self::events::{CooldownEvent, CooldownReason};
pub use self::layer::{CooldownBuilder, CooldownLayer};
pub use self::service::Cooldown;
pub use self::state::{CooldownHandle, KeyState};
pub use self::stats::CooldownStats;
#[cfg(feature = "redis")]
pub(crate) use self::store::{Answer, CooldownStore, Probe, Remote, Rules, StoreFuture};
