//! The responses reject mode answers with, and their rate limit headers.

use std::time::Duration;

use http::{header, HeaderName, HeaderValue, Response, StatusCode};

use super::quota::Quota;

/// `RateLimit-Policy` (IETF draft-ietf-httpapi-ratelimit-headers-08 and later).
pub(crate) const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
/// `RateLimit` (same draft).
pub(crate) const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

/// The policy name in both headers.
const POLICY: &str = "ratewise";

use crate::util::ceil_secs;

/// `"ratewise";q=<burst>;w=<window>`: `burst` cells per window, the window being the
/// time an empty bucket takes to fill up (`replenish interval × burst`), in whole
/// seconds rounded up (at least 1).
pub(crate) fn policy_value(quota: Quota) -> String {
    format!(
        "\"{POLICY}\";q={};w={}",
        quota.burst(),
        ceil_secs(quota.window()).max(1)
    )
}

/// `"ratewise";r=<remaining>;t=<reset>`.
pub(crate) fn limit_value(remaining: u32, reset: Duration) -> String {
    format!("\"{POLICY}\";r={remaining};t={}", ceil_secs(reset))
}

/// `429 Too Many Requests` with `RateLimit-Policy`, and, when waiting helps (`wait` is
/// `Some`), `Retry-After` and `RateLimit` with no cell remaining.
pub(crate) fn too_many_requests<B: Default>(quota: Quota, wait: Option<Duration>) -> Response<B> {
    let mut res = Response::new(B::default());
    *res.status_mut() = StatusCode::TOO_MANY_REQUESTS;
    let headers = res.headers_mut();
    if let Some(wait) = wait {
        headers.insert(header::RETRY_AFTER, HeaderValue::from(ceil_secs(wait)));
    }
    if let Ok(v) = HeaderValue::try_from(policy_value(quota)) {
        headers.insert(RATELIMIT_POLICY, v);
    }
    if let Some(wait) = wait {
        if let Ok(v) = HeaderValue::try_from(limit_value(0, wait)) {
            headers.insert(RATELIMIT, v);
        }
    }
    res
}

/// `503 Service Unavailable`: the store could not decide.
pub(crate) fn unavailable<B: Default>() -> Response<B> {
    let mut res = Response::new(B::default());
    *res.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    res
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::num::NonZeroU32;

    #[test]
    fn header_forms() {
        let q = Quota::per_second(NonZeroU32::new(10).unwrap())
            .with_burst(NonZeroU32::new(5).unwrap())
            .unwrap();
        assert_eq!(policy_value(q), "\"ratewise\";q=5;w=1");
        let q = Quota::per_minute(NonZeroU32::new(50).unwrap());
        assert_eq!(policy_value(q), "\"ratewise\";q=50;w=60");
        assert_eq!(
            limit_value(0, Duration::from_millis(1001)),
            "\"ratewise\";r=0;t=2"
        );
        assert_eq!(ceil_secs(Duration::from_secs(3)), 3);
        assert_eq!(ceil_secs(Duration::from_nanos(1)), 1);
    }

    #[test]
    fn too_costly_has_no_retry_after() {
        let q = Quota::per_second(NonZeroU32::new(1).unwrap());
        let res: Response<()> = too_many_requests(q, None);
        assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
        assert!(res.headers().get(header::RETRY_AFTER).is_none());
        assert!(res.headers().get(RATELIMIT).is_none());
        assert_eq!(res.headers()[RATELIMIT_POLICY], "\"ratewise\";q=1;w=1");
    }
}
