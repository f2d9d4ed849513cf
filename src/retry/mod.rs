//! Retries rate-limited and transient results as the server asks, and never hangs a
//! caller on a wait it cannot afford.
//!
//! [`RetryLayer`] wraps a service in tower's own [`tower::retry::Retry`], driven by a
//! [`RetryPolicy`] that reads every result's [`Verdict`](crate::Verdict) through
//! [`verdict_of`](crate::classify::verdict_of) (responses) and
//! [`verdict_of_error`](crate::classify::verdict_of_error) (errors):
//!
//! - **What is retried**: rate-limited and transient verdicts, which includes
//!   connection-level errors. Anything else (a success, a plain 400) goes back at once.
//!   Rate limits hidden in other statuses (QQ's 400, DingTalk's 403, GLM's 429 code
//!   1302) are retried once a [`ClassifyLayer`](crate::ClassifyLayer) below this layer
//!   has marked them.
//! - **How long to wait**: the server's wait (`Retry-After`, Telegram's `retry_after`)
//!   when it gave one; a wait longer than [`max_delay`](RetryBuilder::max_delay) is not
//!   waited at all, the response goes straight back (Telegram's 4310 s never hangs a
//!   caller). Otherwise the [schedule](RetryBuilder::schedule) (QQ's 0.5, 1.5, 3.0 s)
//!   or [exponential](RetryBuilder::exponential) delays with a cap and optional
//!   [`Jitter`].
//! - **When to stop**: after [`max_attempts`](RetryBuilder::max_attempts); before a wait
//!   that would end at or past the call's total [`deadline`](RetryBuilder::deadline);
//!   when the shared retry [budget](RetryBuilder::tps_budget) (tower's `TpsBudget`)
//!   is overdrawn, which stops retry storms. Each reason is counted in [`RetryStats`].
//! - **How long a call lasts**: never past its total
//!   [`deadline`](RetryBuilder::deadline), attempts and the waits inside them included
//!   (a slow upstream, a cooldown or rate limiter waiting below): what is in flight at
//!   the deadline is dropped and the caller gets [`DeadlineExceeded`].
//! - **What the caller gets**: the last upstream response untouched (status, headers,
//!   body), or the last error if the last attempt errored, or [`DeadlineExceeded`].
//!
//! Waits use `tokio::time::sleep`, so they are cancelled with the caller's future and
//! follow tokio's paused clock in tests. Each retry is a `debug` tracing event (attempt,
//! delay, verdict) and each give-up an `info` event naming the reason. Events never
//! carry the URI, which for some APIs (Telegram) holds a token.
//!
//! # Request bodies
//!
//! A request is sent again only if it can be copied: its body must implement
//! [`TryCloneBody`]. Bodies in memory (`Full<Bytes>`, `String`, `Bytes`, `()`...)
//! clone. Streaming bodies do not: a request carrying one is sent once, without retry,
//! and whatever comes back is returned as is. To retry a streaming body, read it into
//! memory first with [`buffer_request`] (up to a limit), which gives a [`RetryBody`];
//! any other body type can ride the same layer as [`RetryBody::streaming`].
//!
//! tower's `Retry` stores a clone of the inner service per call, so the inner service
//! must be `Clone`.
//!
//! # Example
//!
//! ```
//! use std::sync::atomic::{AtomicUsize, Ordering};
//! use std::sync::Arc;
//! use std::time::Duration;
//!
//! use bytes::Bytes;
//! use http::{Request, Response, StatusCode};
//! use http_body_util::Full;
//! use ratewise::RetryLayer;
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! let retry = RetryLayer::builder()
//!     .schedule([0.5, 1.5, 3.0].map(Duration::from_secs_f64))
//!     .max_delay(Duration::from_secs(60))
//!     .deadline(Duration::from_secs(10))
//!     .build()?;
//! assert_eq!(retry.stats().calls, 0);
//!
//! // An upstream that is over its limit twice, then answers.
//! let calls = Arc::new(AtomicUsize::new(0));
//! let upstream = tower::service_fn({
//!     let calls = calls.clone();
//!     move |_req: Request<Full<Bytes>>| {
//!         let n = calls.fetch_add(1, Ordering::SeqCst);
//!         async move {
//!             let status = if n < 2 { StatusCode::TOO_MANY_REQUESTS } else { StatusCode::OK };
//!             let res = Response::builder().status(status).body(Full::new(Bytes::from("hi")))?;
//!             Ok::<_, ratewise::BoxError>(res)
//!         }
//!     }
//! });
//!
//! let svc = ServiceBuilder::new().layer(retry.clone()).service(upstream);
//! let req = Request::get("http://127.0.0.1/gateway").body(Full::new(Bytes::new()))?;
//! let res = svc.oneshot(req).await?;
//! assert_eq!(res.status(), StatusCode::OK);
//! assert_eq!(calls.load(Ordering::SeqCst), 3);
//! assert_eq!(retry.stats().retries, 2);
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
pub use self::future::ResponseFuture;
pub use self::layer::{RetryBuilder, RetryLayer};
pub use self::policy::RetryPolicy;
pub use self::schedule::Jitter;
pub use self::service::Retry;
pub use self::stats::{GiveUp, RetryStats};
