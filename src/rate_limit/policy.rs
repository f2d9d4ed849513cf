//! Per-request policy: the mode markers, the bypass predicate and the cost function.

use http::Request;

/// Wait mode (the default, for clients): a request over the limit waits until it is
/// admitted, or fails at once with
/// [`MaxWaitExceeded`](super::MaxWaitExceeded) when that would take longer than
/// `max_wait`. The service's error type is [`BoxError`](crate::BoxError).
#[derive(Debug, Clone, Copy, Default)]
pub struct Wait;

/// Reject mode (for servers): a request over the limit is answered at once with
/// `429 Too Many Requests` and `Retry-After`, `RateLimit-Policy` and `RateLimit`
/// headers. The inner service's error type is kept.
#[derive(Debug, Clone, Copy, Default)]
pub struct Reject;

mod sealed {
    pub trait Sealed {}
    impl Sealed for super::Wait {}
    impl Sealed for super::Reject {}
}

/// The two modes of [`RateLimitLayer`](super::RateLimitLayer): [`Wait`] and [`Reject`].
/// Sealed.
pub trait Mode: sealed::Sealed + Send + Sync + 'static {
    #[doc(hidden)]
    const WAITS: bool;
}

impl Mode for Wait {
    const WAITS: bool = true;
}

impl Mode for Reject {
    const WAITS: bool = false;
}

/// Which requests skip the limiter: they are never throttled and take no cell
/// (DingTalk's final card edits).
///
/// Implemented by every closure `Fn(&Request<B>) -> bool` (true = bypass) and by
/// [`NoBypass`], the default.
pub trait Bypass<B>: Send + Sync + 'static {
    /// Whether `request` skips the limiter.
    fn bypass(&self, request: &Request<B>) -> bool;
}

impl<B, F> Bypass<B> for F
where
    F: Fn(&Request<B>) -> bool + Send + Sync + 'static,
{
    fn bypass(&self, request: &Request<B>) -> bool {
        self(request)
    }
}

/// No request bypasses the limiter (the default).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoBypass;

impl<B> Bypass<B> for NoBypass {
    fn bypass(&self, _request: &Request<B>) -> bool {
        false
    }
}

/// How many cells a request takes.
///
/// Implemented by every closure `Fn(&Request<B>) -> u32` and by [`UnitCost`], the
/// default (one cell each). A cost of 0 takes no cell, like a bypass; a cost above the
/// burst can never be admitted and fails at once with
/// [`CostExceedsBurst`](super::CostExceedsBurst).
pub trait Cost<B>: Send + Sync + 'static {
    /// The cells `request` takes.
    fn cost(&self, request: &Request<B>) -> u32;
}

impl<B, F> Cost<B> for F
where
    F: Fn(&Request<B>) -> u32 + Send + Sync + 'static,
{
    fn cost(&self, request: &Request<B>) -> u32 {
        self(request)
    }
}

/// Every request takes one cell (the default).
#[derive(Debug, Clone, Copy, Default)]
pub struct UnitCost;

impl<B> Cost<B> for UnitCost {
    fn cost(&self, _request: &Request<B>) -> u32 {
        1
    }
}
