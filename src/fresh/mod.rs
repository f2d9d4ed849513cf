//! A fresh client after a run of connection-level errors: [`FreshClientLayer`] rebuilds
//! the inner client through a `MakeService` after N consecutive connection errors.
//!
//! A pooled HTTP client can go stale: every request on it fails at the connection
//! level until the client is rebuilt, and the errors may not even say why (the QQ Bot
//! gateway incident: a stale pool raised exceptions whose message was empty, so the
//! logs said nothing). This layer fixes both halves:
//!
//! - It wraps a `MakeService` (any [`Service`](tower::Service) that takes a target
//!   and returns a client, e.g. `tower::service_fn(|()| async { Ok(build_client()) })`)
//!   in a [`FreshClient`]. The client is built lazily, on the first `poll_ready`, and
//!   requests go through it. After `threshold` consecutive connection-level errors
//!   from that client, it is dropped and the `MakeService` builds a new one before the
//!   next request.
//! - Every error the client returns comes back as a [`ClientError`] whose `Display`
//!   names the client's generation and its run of errors and is never empty (it falls
//!   back to the original's `Debug`, then its type name); `source()` is the original.
//!
//! # What counts
//!
//! Results are judged with [`verdict_of_error`](crate::classify::verdict_of_error):
//!
//! - an `Err` that is [`Verdict::Transient`](crate::Verdict::Transient) (every error
//!   except ratewise's own "wait" errors) counts: it is a connection-level error;
//! - a response of **any** status (a 500 or a 429 too) ends the run: the connection
//!   worked;
//! - ratewise's own errors that carry a wait (rate-limited, not connection-level) are
//!   passed through unwrapped and neither count nor end the run.
//!
//! # Sharing and concurrency
//!
//! Clones share the current client, its generation and the run of errors. The client
//! type must be `Clone`; each clone of the service holds its own copy of the current
//! client, so requests in flight on a retired client finish on it. Results from a
//! retired generation change nothing: N errors from the old client, arriving after a
//! rebuild started, do not retire the new one. Only one build runs at a time: the
//! `MakeService` future lives in the shared state, and every clone waiting for it helps
//! drive it, so a caller that gives up cannot strand the others.
//!
//! A failed build is returned as a [`MakeClientError`] (naming the target) from the
//! `call` of the request that was waiting for it; the next request tries again.
//!
//! [`FreshStats`] counts rebuilds and shows the current generation and run of errors.
//! A rebuild is logged with `tracing` at `warn` (target `ratewise::fresh`) with the
//! generation, the run length and the last error's text, URL paths and queries cut out
//! so no token reaches the log.
//!
//! # Example
//!
//! ```
//! use std::convert::Infallible;
//! use ratewise::fresh::{ClientError, FreshClientLayer};
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), ratewise::BoxError> {
//! // A `MakeService`: builds a client for a target (here a base URL).
//! let make_client = service_fn(|base: &'static str| async move {
//!     // Build a real HTTP client here (hyper-util, reqwest...); it must be `Clone`.
//!     Ok::<_, Infallible>(service_fn(move |path: &'static str| async move {
//!         Ok::<_, std::io::Error>(format!("{base}{path}"))
//!     }))
//! });
//!
//! let layer = FreshClientLayer::builder()
//!     .target("http://127.0.0.1:8080")
//!     .threshold(3)
//!     .build()?;
//! let client = ServiceBuilder::new().layer(layer.clone()).service(make_client);
//!
//! let body = client.clone().oneshot("/gateway").await?;
//! assert_eq!(body, "http://127.0.0.1:8080/gateway");
//! let stats = layer.stats();
//! assert_eq!((stats.generation, stats.rebuilds), (1, 0));
//!
//! // Errors are `ClientError`s with a message that is never empty.
//! # let _ = |err: ratewise::BoxError| err.downcast_ref::<ClientError>().map(|e| e.generation());
//! # Ok(()) }
//! ```

mod error;
mod future;
mod layer;
mod service;
mod shared;

pub(crate) use self::error::NotReady;
pub use self::error::{ClientError, MakeClientError};
pub use self::future::ResponseFuture;
pub use self::layer::{FreshClientBuilder, FreshClientLayer};
pub use self::service::FreshClient;
pub use self::shared::FreshStats;
