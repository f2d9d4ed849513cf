//! The mode markers: [`Wait`] (clients) and [`Reject`] (servers).

/// Wait mode (the default, for clients): a request over the limit waits until it is
/// admitted, or fails at once with a [`Refusal`](crate::Refusal) of kind
/// [`MaxWait`](crate::vocabulary::RefusalKind::MaxWait) when that would take longer than
/// `max_wait`. The service's error type is [`BoxError`](crate::BoxError).
#[derive(Debug, Clone, Copy, Default)]
pub struct Wait;

/// Reject mode (for servers): a request over the limit is answered at once with
/// `429 Too Many Requests`, an `application/problem+json` body of the IETF draft's
/// `quota-exceeded` type (or the answer given to
/// [`respond_with`](super::RateLimitBuilder::respond_with)), and `Retry-After`,
/// `RateLimit-Policy` and `RateLimit` headers. The inner service's error type is kept;
/// its response body must be `From<String>` (axum's `Body`, `Full<Bytes>`, `String`).
#[derive(Debug, Clone, Copy, Default)]
pub struct Reject;

mod sealed {
    pub(crate) trait Sealed {}
    impl Sealed for super::Wait {}
    impl Sealed for super::Reject {}
}

/// The two modes of [`RateLimitLayer`](super::RateLimitLayer): [`Wait`] and [`Reject`].
pub(crate) trait Mode: sealed::Sealed + Send + Sync + 'static {
    const WAITS: bool;
}

impl Mode for Wait {
    const WAITS: bool = true;
}

impl Mode for Reject {
    const WAITS: bool = false;
}
