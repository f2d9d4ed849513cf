//! Tower middleware that keeps HTTP clients, and the servers that call out on their
//! behalf, inside upstream rate limits.
//!
//! ratewise waits when it should, backs off when told to, never hammers an upstream that
//! is penalising it, and never loses a response.
//!
//! | module | what it does |
//! |---|---|
//! | [`classify`] | one [`Verdict`] per response (success, rate-limited, transient, failure), read from status, headers and, only when asked, a bounded body prefix |
//! | [`retry_after`] | the one parser for every "wait this long" signal a server sends |
//! | [`body`] | body peeking that hands the caller back every byte, in order |
//! | [`cooldown`] | [`CooldownLayer`]: per-key backoff after a rate-limited answer, honouring Retry-After, with a single half-open probe |
//! | [`fresh`] | [`FreshClientLayer`]: rebuilds the inner client through a `MakeService` after N consecutive connection-level errors |
//! | [`rate_limit`] | [`RateLimitLayer`]: keyed GCRA (governor) shared across clones, wait or reject |
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use ratewise::{ClassifyLayer, RateLimitLayer, classify::presets};
//! use tower::ServiceBuilder;
//!
//! # fn main() -> Result<(), ratewise::rate_limit::ConfigError> {
//! let stack = ServiceBuilder::new()
//!     .layer(RateLimitLayer::builder().per_second(20).burst(20).max_wait(Duration::from_secs(2)).build()?)
//!     .layer(ClassifyLayer::new(presets::default()));
//! # let _ = stack;
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
pub mod rate_limit;
pub mod retry;
pub mod retry_after;
pub mod stack;
#[cfg(feature = "testing")]
pub mod testing;

pub use cache::CachedEndpointLayer;
pub use classify::{Classifier, ClassifyLayer, Verdict};
pub use cooldown::CooldownLayer;
pub use fresh::FreshClientLayer;
pub use rate_limit::RateLimitLayer;
pub use retry::RetryLayer;

/// The boxed error type the layers return; every error ratewise creates can be
/// downcast from it to its concrete type.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The README's Rust blocks, compiled and run as doctests so the quick start stays true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
