//! Retries rate-limited and transient results as the server asks, and never hangs a
//! caller on a wait it cannot afford.
//!
//! [`RetryLayer`] wraps a service in tower's [`tower::retry::Retry`]. It retries
//! rate-limited and transient verdicts, waiting the server's hint when it gave one
//! (unless it is longer than [`max_delay`](RetryBuilder::max_delay)), else a
//! [schedule](RetryBuilder::schedule) or capped [exponential](RetryBuilder::exponential)
//! delays, within attempts, a total [`deadline`](RetryBuilder::deadline) and a budget.
//! Only bodies that can be copied ([`TryCloneBody`]) are sent again. See [the guide](crate::guide#retry).
//!
//! # Example
//!
//! ```
//! use std::sync::{atomic::{AtomicUsize, Ordering}, Arc};
//! use std::time::Duration;
//! use http::{Request, Response, StatusCode};
//! use ratewise::RetryLayer;
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), ratewise::BoxError> {
//! let retry = RetryLayer::builder()
//!     .schedule([0.5, 1.5, 3.0].map(Duration::from_secs_f64))
//!     .deadline(Duration::from_secs(10))
//!     .build()?;
//! // An upstream that is over its limit twice, then answers.
//! let calls = Arc::new(AtomicUsize::new(0));
//! let upstream = service_fn({
//!     let calls = calls.clone();
//!     move |_req: Request<String>| {
//!         let status = if calls.fetch_add(1, Ordering::SeqCst) < 2 { 429 } else { 200 };
//!         async move { Response::builder().status(status).body(String::new()) }
//!     }
//! });
//! let svc = ServiceBuilder::new().layer(retry.clone()).service(upstream);
//! let res = svc.oneshot(Request::get("http://127.0.0.1/gateway").body(String::new())?).await?;
//! assert_eq!(res.status(), StatusCode::OK);
//! assert_eq!((calls.load(Ordering::SeqCst), retry.stats().retries), (3, 2));
//! # Ok(()) }
//! ```

mod body;
mod error;
mod future;
mod layer;
mod policy;
mod schedule;
mod service;
mod stats;

pub(crate) use self::body::try_clone_request;
pub use self::body::{buffer_request, RetryBody, TryCloneBody};
pub use self::error::{BufferError, DeadlineExceeded};
pub use self::layer::{RetryBuilder, RetryLayer};
pub use self::schedule::Jitter;
pub use self::service::Retry;
pub use self::stats::{GiveUp, RetryStats};
