//! Tower middleware that keeps HTTP clients, and the servers that call out on their
//! behalf, inside upstream rate limits.
//!
//! ratewise waits when it should, backs off when told to, never hammers an upstream that
//! is penalising it, and never loses a response.
//!
//! | module | what it does |
//! |---|---|
//! | [`classify`] | one [`Verdict`] per response (success, rate-limited, transient, failure), read from status, headers and, only when asked, a bounded body prefix; [`ClassifyLayer`] and per-platform [`presets`](classify::presets) |
//! | [`retry_after`] | the one parser for every "wait this long" signal a server sends |
//! | [`body`] | body peeking that hands the caller back every byte, in order |
//! | [`key`] | which bucket, cooldown or cache entry a request belongs to: [`KeyExtractor`](key::KeyExtractor), [`Global`](key::Global), [`Authority`](key::Authority), [`MethodUri`](key::MethodUri) |
//! | [`rate_limit`] | [`RateLimitLayer`]: keyed GCRA (governor) shared across clones, wait or reject |
//! | [`cooldown`] | [`CooldownLayer`]: per-key backoff after a rate-limited answer, honouring Retry-After, with a single half-open probe |
//! | [`retry`] | [`RetryLayer`]: retries as the server asks (its wait, a schedule or capped exponential), within attempts, a deadline and a budget |
//! | [`cache`] | [`CachedEndpointLayer`]: the last good answer of a discovery endpoint, served while it is rate-limited, with single flight |
//! | [`fresh`] | [`FreshClientLayer`]: rebuilds the inner client through a `MakeService` after N consecutive connection-level errors |
//! | [`stack`] | [`ClientStackLayer`]: the standard client stack (`Retry → Cooldown → RateLimit → Classify`) from one config, with presets per platform |
//! | [`pool`] | [`Pool`]: ordered backends (primary, fallback) with per-backend cooldown, failover within the call, model routing and stats |
//! | `testing` (feature `testing`) | mock upstreams (QQ, DingTalk, Telegram, GLM, OpenAI-style) in-process or on 127.0.0.1, for tests and examples |
//!
//! # Example
//!
//! The standard client stack by hand, outermost first: retry, cooldown, rate limit,
//! and one classification of every response. [`stack::ClientStackLayer`] builds the
//! same from one config. Here the upstream answers GLM's 429 code 1302 once: the
//! cooldown holds the key back, the retry tries again once it is over, and the caller
//! gets the answer to the second call.
//!
//! ```
//! use std::sync::atomic::{AtomicUsize, Ordering};
//! use std::sync::Arc;
//! use std::time::Duration;
//!
//! use http::{Request, Response, StatusCode};
//! use ratewise::{classify::presets, ClassifyLayer, CooldownLayer, RateLimitLayer, RetryLayer};
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
//!         async move {
//!             let (status, body) = if first {
//!                 (StatusCode::TOO_MANY_REQUESTS, r#"{"error":{"code":"1302","message":"rate limited"}}"#)
//!             } else {
//!                 (StatusCode::OK, r#"{"choices":[]}"#)
//!             };
//!             Response::builder().status(status).body(body.to_owned())
//!         }
//!     }
//! });
//!
//! let glm = ServiceBuilder::new()
//!     .layer(RetryLayer::builder().exponential(Duration::from_secs(1), Duration::from_secs(30)).build()?)
//!     .layer(CooldownLayer::new())
//!     .layer(RateLimitLayer::builder().per_minute(50).burst(10).max_wait(Duration::from_secs(30)).build()?)
//!     .layer(ClassifyLayer::new(presets::glm()))
//!     .service(client);
//!
//! let req = Request::post("http://open.bigmodel.cn/api/paas/v4/chat/completions").body(String::new())?;
//! let res = glm.oneshot(req).await?;
//! assert_eq!(res.status(), StatusCode::OK);
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
pub mod cooldown;
pub mod fresh;
pub mod key;
pub mod pool;
pub mod rate_limit;
mod redact;
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
pub use vocabulary::{verdict_of, verdict_of_error, ConfigError, Refusal, Verdict};

/// The boxed error type the layers return; every error ratewise creates can be
/// downcast from it to its concrete type.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The README's Rust blocks, compiled and run as doctests so the quick start stays true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
