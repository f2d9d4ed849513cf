//! What reject mode answers with: the `429` problem (or the user's own answer), the
//! IETF `RateLimit` and `RateLimit-Policy` fields, and the `500` / `503` of a request
//! the layer could not decide on.
//!
//! The fields follow draft-ietf-httpapi-ratelimit-headers (drafts 09 to 11): structured
//! field lists of one item, the policy named `"ratewise"`, e.g.
//! `RateLimit-Policy: "ratewise";q=100;w=60` and `RateLimit: "ratewise";r=50;t=30`.

use std::{sync::Arc, time::Duration};

use http::{header, HeaderMap, HeaderName, HeaderValue, Response, StatusCode};

use super::quota::Quota;
use crate::{util::ceil_secs, vocabulary::RefusalKind, Refusal};

/// `RateLimit-Policy`.
pub(crate) const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
/// `RateLimit`.
pub(crate) const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

/// The policy name in both fields and in the problem's `violated-policies`.
const POLICY: &str = "ratewise";

/// The draft's problem type for a request over its quota.
pub(crate) const QUOTA_EXCEEDED: &str =
    "https://iana.org/assignments/http-problem-types#quota-exceeded";

/// `application/problem+json` (RFC 9457).
const PROBLEM_JSON: HeaderValue = HeaderValue::from_static("application/problem+json");

/// A user's answer to a refused request, in reject mode.
pub(crate) type AnswerFn = Arc<dyn Fn(&Refusal) -> Response<String> + Send + Sync>;

/// `"ratewise";q=<burst>;w=<window>`: `burst` cells per window, the window being the
/// time an empty bucket takes to fill up (`replenish interval × burst`), in whole
/// seconds rounded up (at least 1: the draft's `w` is a positive integer).
pub(crate) fn policy_value(quota: Quota) -> String {
    format!(
        "\"{POLICY}\";q={};w={}",
        quota.burst(),
        ceil_secs(quota.window()).max(1)
    )
}

/// `"ratewise";r=<remaining>;t=<reset>`, `reset` in whole seconds rounded up.
pub(crate) fn limit_value(remaining: u32, reset: Duration) -> String {
    format!("\"{POLICY}\";r={remaining};t={}", ceil_secs(reset))
}

/// Inserts `value` under `name` unless the response already has that field.
fn insert_absent(headers: &mut HeaderMap, name: HeaderName, value: String) {
    if !headers.contains_key(&name) {
        if let Ok(v) = HeaderValue::try_from(value) {
            headers.insert(name, v);
        }
    }
}

/// The fields of an admitted response: `RateLimit-Policy`, and `RateLimit` with the
/// cells the key has left and the time until its bucket is full again, estimated from
/// the quota (`(burst - remaining) × interval`). They are added to the fields the inner
/// service wrote, if any (both are lists).
pub(crate) fn stamp_admitted(headers: &mut HeaderMap, quota: Quota, remaining: u32) {
    let missing = quota.burst().saturating_sub(remaining);
    let refill = quota
        .replenish_interval()
        .checked_mul(missing)
        .unwrap_or_else(|| quota.window());
    for (name, value) in [
        (RATELIMIT_POLICY, policy_value(quota)),
        (RATELIMIT, limit_value(remaining, refill)),
    ] {
        if let Ok(v) = HeaderValue::try_from(value) {
            headers.append(name, v);
        }
    }
}

/// The answer to a refused request: the user's, or the default problem; then, unless
/// the answer has them, `Retry-After` and `RateLimit` (when waiting helps) and
/// `RateLimit-Policy`.
pub(crate) fn refused<B: From<String>>(
    answer: Option<&AnswerFn>,
    refusal: &Refusal,
    quota: Quota,
) -> Response<B> {
    let mut res = match answer {
        Some(answer) => answer(refusal),
        None => quota_exceeded(refusal),
    };
    let headers = res.headers_mut();
    if let Some(wait) = refusal.retry_after() {
        insert_absent(headers, header::RETRY_AFTER, ceil_secs(wait).to_string());
        insert_absent(headers, RATELIMIT, limit_value(0, wait));
    }
    insert_absent(headers, RATELIMIT_POLICY, policy_value(quota));
    res.map(B::from)
}

/// The default `429`: an `application/problem+json` body of the draft's
/// `quota-exceeded` type.
fn quota_exceeded(refusal: &Refusal) -> Response<String> {
    let detail = match (refusal.kind(), refusal.retry_after()) {
        (RefusalKind::CostExceedsBurst { cost, burst }, _) => format!(
            "This request costs {cost} units and the quota never allows more than {burst} at once."
        ),
        (_, Some(wait)) => format!("Too many requests: retry in {} s.", ceil_secs(wait).max(1)),
        (_, None) => "Too many requests.".to_owned(),
    };
    problem(
        StatusCode::TOO_MANY_REQUESTS,
        serde_json::json!({
            "type": QUOTA_EXCEEDED,
            "title": "Request cannot be satisfied as assigned quota has been exceeded",
            "status": 429,
            "detail": detail,
            "violated-policies": [POLICY],
        }),
    )
}

/// `503 Service Unavailable`: the store could not decide.
pub(crate) fn unavailable<B: From<String>>() -> Response<B> {
    let body = serde_json::json!({
        "type": "about:blank",
        "title": "Service Unavailable",
        "status": 503,
        "detail": "The rate limiter could not decide on this request; try again later.",
    });
    problem(StatusCode::SERVICE_UNAVAILABLE, body).map(B::from)
}

/// `500 Internal Server Error`: the request could not be keyed (a server set up
/// without peer addresses). The reason is logged, not shown to the client.
pub(crate) fn unkeyed<B: From<String>>() -> Response<B> {
    let body = serde_json::json!({
        "type": "about:blank",
        "title": "Internal Server Error",
        "status": 500,
        "detail": "The rate limiter could not tell which client sent this request.",
    });
    problem(StatusCode::INTERNAL_SERVER_ERROR, body).map(B::from)
}

fn problem(status: StatusCode, body: serde_json::Value) -> Response<String> {
    let mut res = Response::new(body.to_string());
    *res.status_mut() = status;
    res.headers_mut().insert(header::CONTENT_TYPE, PROBLEM_JSON);
    res
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vocabulary::LayerKind;
    use std::num::NonZeroU32;

    fn quota(per_second: u32, burst: u32) -> Quota {
        Quota::per_second(NonZeroU32::new(per_second).unwrap())
            .with_burst(NonZeroU32::new(burst).unwrap())
            .unwrap()
    }

    #[test]
    fn header_forms() {
        assert_eq!(policy_value(quota(10, 5)), "\"ratewise\";q=5;w=1");
        let q = Quota::per_minute(NonZeroU32::new(50).unwrap());
        assert_eq!(policy_value(q), "\"ratewise\";q=50;w=60");
        assert_eq!(
            limit_value(0, Duration::from_millis(1001)),
            "\"ratewise\";r=0;t=2"
        );
    }

    #[test]
    fn admitted_fields_count_the_refill_of_the_missing_cells() {
        let mut h = HeaderMap::new();
        // 10 per second, burst 20: 5 left, 15 missing, 1.5 s to refill.
        stamp_admitted(&mut h, quota(10, 20), 5);
        assert_eq!(h[RATELIMIT_POLICY], "\"ratewise\";q=20;w=2");
        assert_eq!(h[RATELIMIT], "\"ratewise\";r=5;t=2");
    }

    #[test]
    fn too_costly_has_no_retry_after() {
        let refusal = Refusal::new(
            LayerKind::RateLimit,
            RefusalKind::CostExceedsBurst { cost: 6, burst: 1 },
        );
        let res: Response<String> = refused(None, &refusal, quota(1, 1));
        assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
        assert!(res.headers().get(header::RETRY_AFTER).is_none());
        assert!(res.headers().get(RATELIMIT).is_none());
        assert_eq!(res.headers()[RATELIMIT_POLICY], "\"ratewise\";q=1;w=1");
        let body: serde_json::Value = serde_json::from_str(res.body()).unwrap();
        assert!(body["detail"].as_str().unwrap().contains("costs 6 units"));
    }
}
