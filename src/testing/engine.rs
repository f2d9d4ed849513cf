//! The rate limiter's store engines, for the crate's own benchmarks: how fast and how
//! small the in-memory engine is, and what one Redis decision costs. Not a stable API.

pub use crate::rate_limit::{
    shared::Store,
    store::{Decision, GovernorStore, Keys, RateLimitStore},
};
use crate::rate_limit::{RateLimitLayer, RateLimiter};

/// The store a built layer holds (in memory, or the Redis store it was given).
pub fn store_of<M>(layer: &RateLimitLayer<M>) -> Store {
    layer.limiter().store().clone()
}

/// A limiter over any store (a test's own store with a slow round trip, say), for
/// [`RateLimitBuilder::build_with_limiter`](crate::rate_limit::RateLimitBuilder::build_with_limiter).
pub fn limiter(store: impl RateLimitStore) -> RateLimiter {
    RateLimiter::with_keys(Store::shared(store), Vec::new())
}
