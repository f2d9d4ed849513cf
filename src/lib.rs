//! Tower middleware that keeps HTTP clients, and the servers that call out on their
//! behalf, inside upstream rate limits.
//!
//! ratewise waits when it should, backs off when told to, never hammers an upstream that
//! is penalising it, and never loses a response. One module per layer ([`rate_limit`],
//! [`cooldown`], [`retry`], [`cache`], [`fresh`], [`classify`], [`pool`]); [`stack`]
//! puts the standard ones together, and [`vocabulary`] holds the words they share.
//! [The guide](guide) explains every layer, one chapter each. The `testing` feature
//! adds mock upstreams; the `serde` feature reads the stack from a config file
//! (`ratewise::config`).
//!
//! # Example
//!
//! The GLM preset of the standard stack. The upstream answers GLM's 429 code 1302 once:
//! the stack cools the key down, retries once the cooldown is over, and gets the answer.
//!
//! ```
//! use std::sync::{atomic::{AtomicUsize, Ordering}, Arc};
//! use http::{Request, Response, StatusCode};
//! use ratewise::{ClientStackLayer, Platform};
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), ratewise::BoxError> {
//! // Any client service: hyper-util's `Client`, reqwest behind a `Service`, a mock...
//! let calls = Arc::new(AtomicUsize::new(0));
//! let client = service_fn({
//!     let calls = calls.clone();
//!     move |_req: Request<String>| {
//!         let first = calls.fetch_add(1, Ordering::SeqCst) == 0;
//!         let (status, body) = if first { (429, r#"{"error":{"code":"1302"}}"#) } else { (200, "{}") };
//!         async move { Response::builder().status(status).body(body.to_owned()) }
//!     }
//! });
//! let glm = ServiceBuilder::new().layer(ClientStackLayer::preset(Platform::Glm).build()?).service(client);
//! let req = Request::post("https://open.bigmodel.cn/api/paas/v4/chat/completions").body(String::new())?;
//! assert_eq!(glm.oneshot(req).await?.status(), StatusCode::OK);
//! assert_eq!(calls.load(Ordering::SeqCst), 2);
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]
#![warn(
    missing_docs,
    missing_debug_implementations,
    rust_2018_idioms,
    unreachable_pub
)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod body;
pub mod cache;
pub mod classify;
#[cfg(feature = "serde")]
pub mod config;
pub mod cooldown;
pub mod fresh;
/// The guide: every layer in depth, one chapter per layer (docs only).
pub mod guide;
pub mod key;
pub mod metrics;
pub mod pool;
#[cfg(feature = "proxy")]
#[cfg_attr(docsrs, doc(cfg(feature = "proxy")))]
pub mod proxy;
pub mod rate_limit;
mod redact;
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub mod redis;
#[cfg(feature = "reqwest")]
#[cfg_attr(docsrs, doc(cfg(feature = "reqwest")))]
pub mod reqwest;
pub mod retry;
pub mod retry_after;
pub mod stack;
#[cfg(feature = "testing")]
pub mod testing;
mod util;
pub mod vocabulary;

pub use cache::CachedEndpointLayer;
pub use classify::{Classifier, ClassifyLayer};
pub use cooldown::CooldownLayer;
pub use fresh::FreshClientLayer;
pub use pool::Pool;
pub use rate_limit::RateLimitLayer;
pub use retry::RetryLayer;
pub use stack::{ClientStackLayer, Platform};
pub use vocabulary::{outcome, verdict_of, verdict_of_error, ConfigError, Refusal, Verdict};

/// The boxed error type the layers return; every error ratewise creates can be
/// downcast from it to its concrete type.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The README's Rust blocks, compiled and run as doctests so the quick start stays true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
