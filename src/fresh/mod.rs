//! A fresh client after a run of connection-level errors: [`FreshClientLayer`] rebuilds
//! the inner client through a `MakeService` after N consecutive connection errors.
//!
//! A pooled HTTP client can go stale, and its errors may not even say why. The layer
//! builds the client lazily, rebuilds it after `threshold` consecutive connection-level
//! errors (a response of any status ends the run), and returns every error as a
//! [`ClientError`] whose message is never empty. See [the guide](crate::guide#fresh-client).
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
use self::future::ResponseFuture;
pub use self::layer::{FreshClientBuilder, FreshClientLayer};
pub use self::service::FreshClient;
pub use self::shared::FreshStats;
