//! Keyed GCRA rate limiting. STUB.

pub mod error;

/// STUB.
#[derive(Debug, Clone)]
pub struct RateLimitLayer {}
