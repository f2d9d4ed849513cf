//! A status whose body prefix contains a marker, as rate-limited.
//!
//! Some platforms hide rate limits in ordinary error statuses: QQ's bot API answers
//! `GET /gateway` with **400** and `{"code":...,"message":"接口调用超过频率限制"}`.
//!
//! # Example
//!
//! ```
//! use http::{HeaderMap, StatusCode};
//! use ratewise::classify::{Classifier, ResponseView, StatusBodyContains};
//! use ratewise::{Verdict};
//!
//! let qq = StatusBodyContains::new(StatusCode::BAD_REQUEST, "频率限制");
//! let headers = HeaderMap::new();
//!
//! // Only 400 bodies are asked for: a 200 stream is never buffered.
//! assert!(qq.wants_body(StatusCode::BAD_REQUEST, &headers));
//! assert!(!qq.wants_body(StatusCode::OK, &headers));
//!
//! let body = r#"{"code":11241,"message":"接口调用超过频率限制"}"#.as_bytes();
//! let view = ResponseView::new(StatusCode::BAD_REQUEST, &headers).with_body(body);
//! assert_eq!(qq.classify(&view), Some(Verdict::rate_limited(None)));
//!
//! // Another 400 is none of its business.
//! let view = ResponseView::new(StatusCode::BAD_REQUEST, &headers).with_body(b"bad field");
//! assert_eq!(qq.classify(&view), None);
//! ```

use std::fmt;
use std::sync::Arc;

use http::{HeaderMap, StatusCode};

use super::{Classifier, ResponseView, Verdict};

/// Whether `haystack` contains `needle`. An empty needle is never found.
pub(crate) fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// Classifies a response as rate-limited when its status is `status` and its body
/// prefix contains `needle` (compared as bytes, so UTF-8 needles such as `"频率限制"`
/// work).
///
/// It asks for the body for that status only. Responses with another status, or
/// whose body lacks the needle, get no opinion (`None`), so the next classifier in
/// an [`or`](Classifier::or) chain decides; with nothing after it, the layer falls
/// back to [`Verdict::from_status`] (a 400 is then a failure). The retry hint comes
/// from the crate's one parser ([`ResponseView::retry_after`]).
///
/// An empty needle never matches: a classifier that would call every response of a
/// status rate-limited is almost always a configuration mistake.
#[derive(Clone)]
pub struct StatusBodyContains {
    status: StatusCode,
    needle: Arc<[u8]>,
}

impl StatusBodyContains {
    /// Rate-limited when the status is `status` and the body contains `needle`.
    pub fn new(status: StatusCode, needle: impl AsRef<[u8]>) -> Self {
        StatusBodyContains {
            status,
            needle: Arc::from(needle.as_ref()),
        }
    }

    /// The status whose body is searched.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The bytes searched for.
    pub fn needle(&self) -> &[u8] {
        &self.needle
    }
}

impl fmt::Debug for StatusBodyContains {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StatusBodyContains")
            .field("status", &self.status)
            .field("needle", &String::from_utf8_lossy(&self.needle))
            .finish()
    }
}

impl Classifier for StatusBodyContains {
    fn wants_body(&self, status: StatusCode, _headers: &HeaderMap) -> bool {
        status == self.status
    }

    fn classify(&self, response: &ResponseView<'_>) -> Option<Verdict> {
        if response.status() != self.status {
            return None;
        }
        let body = response.body()?;
        contains(body, &self.needle).then(|| Verdict::rate_limited(response.retry_after()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contains_bytes() {
        assert!(contains(
            "接口调用超过频率限制".as_bytes(),
            "频率限制".as_bytes()
        ));
        assert!(contains(b"abc", b"abc"));
        assert!(!contains(b"ab", b"abc"));
        assert!(!contains(b"abc", b""));
        assert!(!contains(b"", b"a"));
    }

    #[test]
    fn needle_split_by_truncation_is_not_found() {
        let full = "超过频率限制".as_bytes();
        let cut = &full[..full.len() - 1];
        assert!(!contains(cut, "频率限制".as_bytes()));
    }

    #[test]
    fn debug_shows_the_needle_as_text() {
        let c = StatusBodyContains::new(StatusCode::BAD_REQUEST, "频率限制");
        let s = format!("{c:?}");
        assert!(s.contains("频率限制") && s.contains("400"), "{s}");
    }

    #[test]
    fn without_a_body_there_is_no_opinion() {
        let c = StatusBodyContains::new(StatusCode::BAD_REQUEST, "x");
        let h = HeaderMap::new();
        assert_eq!(
            c.classify(&ResponseView::new(StatusCode::BAD_REQUEST, &h)),
            None
        );
    }
}
