//! The one parser for every "wait this long" signal a server sends.
//!
//! [`parse`] reads the headers, and the body prefix when one is given, and returns how
//! long the server asked the client to wait: `retry-after-ms`, `Retry-After`, the
//! `x-ratelimit-reset*` headers, the IETF `RateLimit` headers, Telegram's JSON body and
//! "retry after N" text, in that order. Every ratewise layer and classifier gets its
//! retry hint from here (through [`ResponseView::retry_after`]); unusable values are
//! skipped and it never panics. The sources, their forms and their precedence are in
//! [the guide](crate::guide#retry-hints).
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use http::HeaderMap;
//! use ratewise::retry_after;
//!
//! let mut headers = HeaderMap::new();
//! headers.insert("retry-after", "120".parse().unwrap());
//! assert_eq!(retry_after::parse(&headers, None), Some(Duration::from_secs(120)));
//!
//! // Telegram puts the wait in the body too.
//! let body = br#"{"ok":false,"error_code":429,"description":"Too Many Requests: retry after 4310","parameters":{"retry_after":4310}}"#;
//! assert_eq!(
//!     retry_after::parse(&HeaderMap::new(), Some(body)),
//!     Some(Duration::from_secs(4310))
//! );
//!
//! // Garbage is no hint.
//! headers.insert("retry-after", "soon".parse().unwrap());
//! assert_eq!(retry_after::parse(&headers, None), None);
//! ```
//!
//! [`ResponseView::retry_after`]: crate::classify::ResponseView::retry_after

use std::time::{Duration, SystemTime};

use http::header::{HeaderMap, HeaderName, RETRY_AFTER};
use serde_json::Value;

mod body;
mod number;
mod ratelimit;

pub(crate) use self::body::parse_json;
#[cfg(test)]
pub(crate) use self::body::parses;
use self::number::Invalid;

/// `retry-after-ms`: milliseconds (OpenAI, Azure OpenAI).
const RETRY_AFTER_MS: HeaderName = HeaderName::from_static("retry-after-ms");
/// `x-ratelimit-reset-after`: seconds until the bucket resets.
const X_RATELIMIT_RESET_AFTER: HeaderName = HeaderName::from_static("x-ratelimit-reset-after");
/// `x-ratelimit-reset`: a reset value (delta or Unix time).
const X_RATELIMIT_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");
/// OpenAI: when the request quota resets, as a Go-style duration.
const X_RATELIMIT_RESET_REQUESTS: HeaderName =
    HeaderName::from_static("x-ratelimit-reset-requests");
/// OpenAI: when the token quota resets, as a Go-style duration.
const X_RATELIMIT_RESET_TOKENS: HeaderName = HeaderName::from_static("x-ratelimit-reset-tokens");
/// The IETF draft's combined header.
const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
/// The IETF draft's (up to -06) reset header.
const RATELIMIT_RESET: HeaderName = HeaderName::from_static("ratelimit-reset");

/// The server's retry hint, from headers and an optional body prefix, relative to
/// the current system time.
///
/// See [the guide](crate::guide#retry-hints) for the sources and their precedence.
pub fn parse(headers: &HeaderMap, body: Option<&[u8]>) -> Option<Duration> {
    parse_at(headers, body, SystemTime::now())
}

/// Like [`parse`], with "now" given: HTTP-dates and Unix-time resets are measured
/// against it.
///
/// ```
/// use std::time::{Duration, SystemTime};
/// use http::{HeaderMap, HeaderValue};
/// use ratewise::retry_after::parse_at;
///
/// let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
/// let mut headers = HeaderMap::new();
/// let date = httpdate::fmt_http_date(now + Duration::from_secs(120));
/// headers.insert("retry-after", HeaderValue::from_str(&date).unwrap());
/// assert_eq!(parse_at(&headers, None, now), Some(Duration::from_secs(120)));
/// ```
pub fn parse_at(headers: &HeaderMap, body: Option<&[u8]>, now: SystemTime) -> Option<Duration> {
    from_headers(headers, now)
        .or_else(|| body.and_then(parse_json).as_ref().and_then(body_json))
        .or_else(|| body.and_then(body_text))
}

/// [`parse`] with the body's JSON given by `json`, called only when the headers say
/// nothing: a classifier's view passes its one shared parse, so a classified body is
/// parsed at most once.
pub(crate) fn parse_with<'a>(
    headers: &HeaderMap,
    json: impl FnOnce() -> Option<&'a Value>,
    body: Option<&[u8]>,
) -> Option<Duration> {
    from_headers(headers, SystemTime::now())
        .or_else(|| json().and_then(body_json))
        .or_else(|| body.and_then(body_text))
}

/// Sources 1 to 5: the headers.
fn from_headers(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    first_valid(headers, &RETRY_AFTER_MS, number::millis)
        .or_else(|| first_valid(headers, &RETRY_AFTER, |v| retry_after_value(v, now)))
        .or_else(|| first_valid(headers, &X_RATELIMIT_RESET_AFTER, number::seconds))
        .or_else(|| first_valid(headers, &X_RATELIMIT_RESET, |v| number::reset(v, now)))
        .or_else(|| openai_reset(headers))
        .or_else(|| ietf_ratelimit(headers, now))
        .or_else(|| first_valid(headers, &RATELIMIT_RESET, |v| number::reset(v, now)))
}

/// A `Retry-After` value: seconds, or an HTTP-date (past dates mean zero).
fn retry_after_value(v: &str, now: SystemTime) -> Result<Duration, Invalid> {
    match number::seconds(v) {
        Err(Invalid::Malformed) => httpdate::parse_http_date(v.trim())
            .map(|at| number::until(at, now))
            .map_err(|_| Invalid::Malformed),
        other => other,
    }
}

/// At most this many bytes of a rejected header value are logged.
const LOGGED_VALUE_MAX: usize = 64;

fn warn_header(name: &HeaderName, value: &[u8], why: Invalid) {
    let shown = &value[..value.len().min(LOGGED_VALUE_MAX)];
    tracing::warn!(
        header = %name,
        value = %String::from_utf8_lossy(shown),
        reason = %why,
        "ignoring unusable retry hint"
    );
}

/// The header's values that are visible ASCII; the others are skipped with a warning.
fn str_values<'a>(headers: &'a HeaderMap, name: &'a HeaderName) -> impl Iterator<Item = &'a str> {
    headers
        .get_all(name)
        .iter()
        .filter_map(move |v| match v.to_str() {
            Ok(s) => Some(s),
            Err(_) => {
                tracing::warn!(header = %name, "ignoring retry hint that is not visible ASCII");
                None
            }
        })
}

/// The first value of `name` that `read` accepts; rejected values are logged.
fn first_valid(
    headers: &HeaderMap,
    name: &HeaderName,
    read: impl Fn(&str) -> Result<Duration, Invalid>,
) -> Option<Duration> {
    str_values(headers, name).find_map(|v| match read(v) {
        Ok(d) => Some(d),
        Err(why) => {
            warn_header(name, v.as_bytes(), why);
            None
        }
    })
}

/// OpenAI's `x-ratelimit-reset-requests` / `-tokens`: the larger of the usable ones.
fn openai_reset(headers: &HeaderMap) -> Option<Duration> {
    let requests = first_valid(headers, &X_RATELIMIT_RESET_REQUESTS, number::go_duration);
    let tokens = first_valid(headers, &X_RATELIMIT_RESET_TOKENS, number::go_duration);
    requests.max(tokens)
}

/// The IETF `RateLimit` header, all lines read as one list.
fn ietf_ratelimit(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    if !headers.contains_key(&RATELIMIT) {
        return None;
    }
    match ratelimit::wait(str_values(headers, &RATELIMIT), now) {
        Ok(d) => d,
        Err(why) => {
            tracing::warn!(header = %RATELIMIT, reason = %why, "ignoring unusable retry hint");
            None
        }
    }
}

fn body_json(json: &Value) -> Option<Duration> {
    match body::json_value(json)? {
        Ok(d) => Some(d),
        Err((field, why)) => {
            tracing::warn!(body_field = field, reason = %why, "ignoring unusable retry hint");
            None
        }
    }
}

fn body_text(body: &[u8]) -> Option<Duration> {
    match body::text(body)? {
        Ok(d) => Some(d),
        Err(why) => {
            tracing::warn!(reason = %why, "ignoring unusable \"retry after\" text in the body");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use std::time::UNIX_EPOCH;

    fn now() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_700_000_000)
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn retry_after_forms() {
        let at = |v: &str| retry_after_value(v, now());
        assert_eq!(at("120"), Ok(Duration::from_secs(120)));
        assert_eq!(at("0.25"), Ok(Duration::from_millis(250)));
        assert_eq!(
            at(&httpdate::fmt_http_date(now() + Duration::from_secs(60))),
            Ok(Duration::from_secs(60))
        );
        assert_eq!(
            at(&httpdate::fmt_http_date(now() - Duration::from_secs(60))),
            Ok(Duration::ZERO)
        );
        assert_eq!(at("Sun, 06 Nov 1994 08:49:37 GMT"), Ok(Duration::ZERO));
        assert_eq!(at("Someday"), Err(Invalid::Malformed));
        assert_eq!(at("-1"), Err(Invalid::Negative));
    }

    #[test]
    fn first_valid_value_of_a_repeated_header_wins() {
        let h = headers(&[
            ("retry-after", "nope"),
            ("retry-after", "-4"),
            ("retry-after", "8"),
            ("retry-after", "9"),
        ]);
        assert_eq!(parse_at(&h, None, now()), Some(Duration::from_secs(8)));
    }

    #[test]
    fn openai_reset_takes_the_larger() {
        let h = headers(&[
            ("x-ratelimit-reset-requests", "1s"),
            ("x-ratelimit-reset-tokens", "6m0s"),
        ]);
        assert_eq!(parse_at(&h, None, now()), Some(Duration::from_secs(360)));
        let h = headers(&[
            ("x-ratelimit-reset-requests", "garbage"),
            ("x-ratelimit-reset-tokens", "20ms"),
        ]);
        assert_eq!(parse_at(&h, None, now()), Some(Duration::from_millis(20)));
    }

    #[test]
    fn non_ascii_header_bytes_are_skipped() {
        let mut h = HeaderMap::new();
        h.append("retry-after", HeaderValue::from_bytes(b"\xe9\xe9").unwrap());
        h.append("retry-after", HeaderValue::from_static("3"));
        assert_eq!(parse_at(&h, None, now()), Some(Duration::from_secs(3)));
    }

    #[test]
    fn nothing_means_none() {
        assert_eq!(parse_at(&HeaderMap::new(), None, now()), None);
        assert_eq!(parse_at(&HeaderMap::new(), Some(b""), now()), None);
        assert_eq!(parse_at(&HeaderMap::new(), Some(b"{}"), now()), None);
    }
}
