//! DingTalk's QPS limits: 403 or 429 with a `...QpsLimit...` code.
//!
//! DingTalk answers over-limit calls (about 20 QPS per tenant on the AI card API,
//! 50 QPS per robot) with **403** or **429** and a body such as
//! `{"code":"Forbidden.AccessDenied.QpsLimitForApi","requestid":"...","message":"..."}`
//! (or `QpsLimitForAppkeyAndApi`, ...).
//!
//! # Example
//!
//! ```
//! use http::{HeaderMap, StatusCode};
//! use ratewise::classify::{Classifier, Preset, ResponseView};
//! use ratewise::{Verdict};
//!
//! // This classifier is private; DingTalk's preset is it, plus any 429 and 5xx.
//! let dt = Preset::dingtalk();
//! let headers = HeaderMap::new();
//! assert!(dt.wants_body(StatusCode::FORBIDDEN, &headers));
//! assert!(!dt.wants_body(StatusCode::OK, &headers));
//!
//! let body = br#"{"code":"Forbidden.AccessDenied.QpsLimitForApi","requestid":"x","message":"qps limit"}"#;
//! let view = ResponseView::new(StatusCode::FORBIDDEN, &headers).with_body(body);
//! assert_eq!(dt.classify(&view), Some(Verdict::rate_limited(None)));
//!
//! // A 403 for another reason: no opinion (a failure, unless a later classifier says otherwise).
//! let body = br#"{"code":"Forbidden.AccessDenied.AccessTokenPermissionDenied","message":"no"}"#;
//! let view = ResponseView::new(StatusCode::FORBIDDEN, &headers).with_body(body);
//! assert_eq!(dt.classify(&view), None);
//! ```

use http::{HeaderMap, StatusCode};
use serde_json::Value;

use super::body_contains::contains;
use super::{Classifier, ResponseView, Verdict};

/// The marker DingTalk's QPS-limit codes contain.
const MARKER: &str = "QpsLimit";

/// Classifies DingTalk's QPS-limit answers as rate-limited: a **403** or **429** whose
/// JSON `code` contains `QpsLimit`.
///
/// It asks for the body on 403 and 429 only. When the body is not complete JSON
/// (cut off by the layer's cap), the raw bytes are searched for `QpsLimit` instead.
/// A 403 or 429 without the marker gets no opinion (`None`): in an
/// [`or`](Classifier::or) chain the next classifier decides (the
/// [`dingtalk`](super::Preset::dingtalk) preset makes any 429 rate-limited), and
/// alone the layer falls back to [`Verdict::from_status`], so a plain 403 is a
/// failure. The retry hint comes from the crate's one parser.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct DingTalkQpsLimit {
    _priv: (),
}

impl DingTalkQpsLimit {
    /// A new DingTalk QPS-limit classifier.
    pub(crate) fn new() -> Self {
        Self::default()
    }

    fn applies(status: StatusCode) -> bool {
        status == StatusCode::FORBIDDEN || status == StatusCode::TOO_MANY_REQUESTS
    }

    /// Whether the view's body carries the marker: in its JSON `code` when the body
    /// is JSON (the view's shared parse), else anywhere in its raw bytes.
    fn is_qps_limit(response: &ResponseView<'_>) -> bool {
        match (response.json(), response.body()) {
            (Some(json), _) => json
                .get("code")
                .and_then(Value::as_str)
                .is_some_and(|code| code.contains(MARKER)),
            (None, Some(body)) => contains(body, MARKER.as_bytes()),
            (None, None) => false,
        }
    }
}

impl Classifier for DingTalkQpsLimit {
    fn wants_body(&self, status: StatusCode, _headers: &HeaderMap) -> bool {
        Self::applies(status)
    }

    fn classify(&self, response: &ResponseView<'_>) -> Option<Verdict> {
        if !Self::applies(response.status()) {
            return None;
        }
        Self::is_qps_limit(response).then(|| Verdict::rate_limited(response.retry_after()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_qps_limit(body: &[u8]) -> bool {
        let h = HeaderMap::new();
        DingTalkQpsLimit::is_qps_limit(
            &ResponseView::new(StatusCode::FORBIDDEN, &h).with_body(body),
        )
    }

    #[test]
    fn codes() {
        assert!(is_qps_limit(
            br#"{"code":"Forbidden.AccessDenied.QpsLimitForAppkeyAndApi"}"#
        ));
        assert!(!is_qps_limit(
            br#"{"code":"Forbidden","message":"QpsLimit mentioned in passing"}"#
        ));
        assert!(!is_qps_limit(br#"{"code":42}"#));
        // Truncated JSON: the raw bytes are searched.
        assert!(is_qps_limit(
            br#"{"requestid":"1","code":"Forbidden.AccessDenied.QpsLimitFor"#
        ));
        assert!(!is_qps_limit(b"<html>Forbidden"));
    }
}
