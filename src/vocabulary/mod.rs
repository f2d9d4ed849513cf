//! The words every ratewise layer speaks: [`Verdict`], [`Refusal`], [`ConfigError`],
//! and, inside the crate, the `Hold` protocol and the per-call `CallContext`.
//!
//! This module sits at the bottom of the crate and imports no middleware. A layer that
//! needs to tell another something says it with one of these types: a [`Verdict`] in a
//! response's extensions, a [`Refusal`] as the error, a `Hold` or a `CallContext`
//! in a request's extensions. No layer imports another.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use ratewise::{verdict_of_error, BoxError, Refusal, Verdict};
//!
//! fn degrade(err: &BoxError) -> Option<Duration> {
//!     // One downcast, whichever layer refused.
//!     let refusal = Refusal::find(&**err)?;
//!     println!("{} refused: {refusal}", refusal.layer());
//!     refusal.retry_after()
//! }
//!
//! let err: BoxError = "connection reset".into();
//! assert_eq!(degrade(&err), None);
//! assert_eq!(verdict_of_error(&*err), Verdict::Transient);
//! ```

mod config;
mod context;
mod hold;
mod refusal;
mod store;
mod verdict;

pub use self::config::ConfigError;
pub use self::context::Budget;
pub(crate) use self::context::CallContext;
pub(crate) use self::hold::{Hold, Holds};
pub use self::refusal::{Candidate, Refusal, RefusalKind, Unavailable};
pub use self::store::StoreError;
pub use self::verdict::{outcome, verdict_of, verdict_of_error, Verdict};

use std::sync::atomic::{AtomicU64, Ordering};

/// Which layer of the crate refused a request or rejected a configuration.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LayerKind {
    /// [`RateLimitLayer`](crate::RateLimitLayer).
    RateLimit,
    /// [`CooldownLayer`](crate::CooldownLayer).
    Cooldown,
    /// [`RetryLayer`](crate::RetryLayer).
    Retry,
    /// [`CachedEndpointLayer`](crate::CachedEndpointLayer).
    Cache,
    /// [`FreshClientLayer`](crate::FreshClientLayer).
    Fresh,
    /// [`ClassifyLayer`](crate::ClassifyLayer).
    Classify,
    /// [`Pool`](crate::Pool).
    Pool,
    /// [`ClientStackLayer`](crate::ClientStackLayer).
    Stack,
    /// [`TokenLimitLayer`](crate::tokens::TokenLimitLayer).
    Tokens,
    /// The LLM gateway of the `proxy` feature (`ratewise::proxy`).
    Proxy,
}

impl LayerKind {
    /// The layer's name, as logs and messages spell it: `rate_limit`, `cooldown`...
    pub fn as_str(self) -> &'static str {
        match self {
            LayerKind::RateLimit => "rate_limit",
            LayerKind::Cooldown => "cooldown",
            LayerKind::Retry => "retry",
            LayerKind::Cache => "cache",
            LayerKind::Fresh => "fresh",
            LayerKind::Classify => "classify",
            LayerKind::Pool => "pool",
            LayerKind::Stack => "stack",
            LayerKind::Tokens => "tokens",
            LayerKind::Proxy => "proxy",
        }
    }
}

impl std::fmt::Display for LayerKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The identity of one layer value and its clones: what a layer stamps on the values
/// it leaves in extensions, so that it recognises its own (a retry layer its call's
/// deadline, a cooldown a refusal by its own hold).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct LayerId(u64);

impl LayerId {
    /// A new identity, never handed out before in this process.
    pub(crate) fn new() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        LayerId(NEXT.fetch_add(1, Ordering::Relaxed))
    }
}

impl Default for LayerId {
    fn default() -> Self {
        Self::new()
    }
}
