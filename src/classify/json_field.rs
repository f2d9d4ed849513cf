//! A JSON field in an error body, as rate-limited (or another verdict).
//!
//! LLM APIs put the reason in a JSON field: GLM (Zhipu) answers 429 with
//! `{"error":{"code":"1302","message":"您的账户已达到速率限制,请您控制请求频率"}}`.
//!
//! # Example
//!
//! ```
//! use http::{HeaderMap, StatusCode};
//! use ratewise::classify::{Classifier, JsonFieldIn, ResponseView};
//! use ratewise::{Verdict};
//!
//! let glm = JsonFieldIn::new("/error/code", ["1302", "1303", "1305"]);
//! let headers = HeaderMap::new();
//! let body = br#"{"error":{"code":"1302","message":"rate limited"}}"#;
//!
//! // By default the body of every 4xx and 5xx response is read, never a 2xx one.
//! assert!(glm.wants_body(StatusCode::TOO_MANY_REQUESTS, &headers));
//! assert!(!glm.wants_body(StatusCode::OK, &headers));
//!
//! let view = ResponseView::new(StatusCode::TOO_MANY_REQUESTS, &headers).with_body(body);
//! assert_eq!(glm.classify(&view), Some(Verdict::rate_limited(None)));
//!
//! // Numbers match too, and the verdict on a match can be changed.
//! let quota = JsonFieldIn::new("/error/code", ["1113"]).on_match(Verdict::Failure);
//! let body = br#"{"error":{"code":1113}}"#;
//! let view = ResponseView::new(StatusCode::TOO_MANY_REQUESTS, &headers).with_body(body);
//! assert_eq!(quota.classify(&view), Some(Verdict::Failure));
//! ```

use std::sync::Arc;

use http::{HeaderMap, StatusCode};
use serde_json::Value;

use super::{Classifier, ResponseView, Verdict};

/// Which statuses a body is asked for.
#[derive(Debug, Clone)]
enum Statuses {
    /// Every 4xx and 5xx status.
    Errors,
    /// Exactly these.
    Only(Arc<[StatusCode]>),
}

impl Statuses {
    fn contains(&self, status: StatusCode) -> bool {
        match self {
            Statuses::Errors => status.is_client_error() || status.is_server_error(),
            Statuses::Only(list) => list.contains(&status),
        }
    }
}

/// Classifies a response by the value of one JSON field in its body.
///
/// The field is named by a JSON pointer (RFC 6901, e.g. `/error/code`; a missing
/// leading `/` is added). It matches when it equals one of `values`: a JSON string
/// equal to a value, or a JSON number or boolean whose text is (`1302` matches
/// `"1302"`). On a match the verdict is [`on_match`](Self::on_match)'s, by default
/// rate-limited with the hint from the crate's one parser.
///
/// The body is asked for on the configured statuses only
/// ([`statuses`](Self::statuses)), by default every 4xx and 5xx status: a 200 whose
/// body mentions the code is never read, so never rate-limited, 200 streams are never
/// buffered, and neither are 1xx and 3xx answers.
///
/// No opinion (`None`) when the status is not one of those, there is no body, the
/// body is not complete JSON (a body cut off by the layer's cap is not parsed), or
/// the field is absent or different.
#[derive(Debug, Clone)]
pub struct JsonFieldIn {
    pointer: Arc<str>,
    values: Arc<[String]>,
    statuses: Statuses,
    on_match: Verdict,
}

impl JsonFieldIn {
    /// Matches when the field at `pointer` equals one of `values`.
    pub fn new<I, V>(pointer: impl Into<String>, values: I) -> Self
    where
        I: IntoIterator<Item = V>,
        V: Into<String>,
    {
        let mut pointer = pointer.into();
        if !pointer.is_empty() && !pointer.starts_with('/') {
            pointer.insert(0, '/');
        }
        JsonFieldIn {
            pointer: pointer.into(),
            values: values.into_iter().map(Into::into).collect(),
            statuses: Statuses::Errors,
            on_match: Verdict::rate_limited(None),
        }
    }

    /// Read the body for these statuses only (instead of every 4xx and 5xx status). An
    /// empty list turns the classifier off.
    pub fn statuses(mut self, statuses: impl IntoIterator<Item = StatusCode>) -> Self {
        self.statuses = Statuses::Only(statuses.into_iter().collect());
        self
    }

    /// The verdict on a match (default: rate-limited).
    ///
    /// A rate-limited verdict takes its hint from the crate's one parser; the
    /// `retry_after` given here is used only when the response carries none.
    /// Use [`Verdict::Failure`] for codes that waiting does not cure (an exhausted
    /// account balance).
    pub fn on_match(mut self, verdict: Verdict) -> Self {
        self.on_match = verdict;
        self
    }

    /// The JSON pointer read.
    pub fn pointer(&self) -> &str {
        &self.pointer
    }

    fn matches(&self, field: &Value) -> bool {
        let text = match field {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            _ => return false,
        };
        self.values.contains(&text)
    }
}

impl Classifier for JsonFieldIn {
    fn wants_body(&self, status: StatusCode, _headers: &HeaderMap) -> bool {
        self.statuses.contains(status)
    }

    fn classify(&self, response: &ResponseView<'_>) -> Option<Verdict> {
        if !self.statuses.contains(response.status()) {
            return None;
        }
        let field = response.json()?.pointer(&self.pointer)?;
        if !self.matches(field) {
            return None;
        }
        Some(match self.on_match {
            Verdict::RateLimited { retry_after } => {
                Verdict::rate_limited(response.retry_after().or(retry_after))
            }
            other => other,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn judge(c: &JsonFieldIn, status: StatusCode, body: &[u8]) -> Option<Verdict> {
        let h = HeaderMap::new();
        c.classify(&ResponseView::new(status, &h).with_body(body))
    }

    #[test]
    fn string_number_and_bool_fields_match() {
        let c = JsonFieldIn::new("/e", ["1302", "true"]);
        let s = StatusCode::TOO_MANY_REQUESTS;
        assert!(judge(&c, s, br#"{"e":"1302"}"#).is_some());
        assert!(judge(&c, s, br#"{"e":1302}"#).is_some());
        assert!(judge(&c, s, br#"{"e":true}"#).is_some());
        assert_eq!(judge(&c, s, br#"{"e":1302.5}"#), None);
        assert_eq!(judge(&c, s, br#"{"e":["1302"]}"#), None);
        assert_eq!(judge(&c, s, br#"{"e":null}"#), None);
        assert_eq!(judge(&c, s, br#"{"x":"1302"}"#), None);
    }

    #[test]
    fn missing_leading_slash_is_added() {
        let c = JsonFieldIn::new("error/code", ["1302"]);
        assert_eq!(c.pointer(), "/error/code");
        assert!(judge(
            &c,
            StatusCode::TOO_MANY_REQUESTS,
            br#"{"error":{"code":"1302"}}"#
        )
        .is_some());
    }

    #[test]
    fn invalid_or_truncated_json_has_no_opinion() {
        let c = JsonFieldIn::new("/error/code", ["1302"]);
        let s = StatusCode::TOO_MANY_REQUESTS;
        assert_eq!(judge(&c, s, br#"{"error":{"code":"1302""#), None);
        assert_eq!(judge(&c, s, b"\xff\xfe"), None);
        assert_eq!(judge(&c, s, b""), None);
    }

    #[test]
    fn empty_status_list_turns_it_off() {
        let c = JsonFieldIn::new("/e", ["1"]).statuses([]);
        let h = HeaderMap::new();
        assert!(!c.wants_body(StatusCode::TOO_MANY_REQUESTS, &h));
        assert_eq!(
            judge(&c, StatusCode::TOO_MANY_REQUESTS, br#"{"e":1}"#),
            None
        );
    }

    #[test]
    fn configured_hint_is_only_a_fallback() {
        let c = JsonFieldIn::new("/e", ["1"])
            .on_match(Verdict::rate_limited(Some(Duration::from_secs(9))));
        let mut h = HeaderMap::new();
        let s = StatusCode::TOO_MANY_REQUESTS;
        let v = c.classify(&ResponseView::new(s, &h).with_body(br#"{"e":1}"#));
        assert_eq!(v, Some(Verdict::rate_limited(Some(Duration::from_secs(9)))));
        h.insert("retry-after", http::HeaderValue::from_static("2"));
        let v = c.classify(&ResponseView::new(s, &h).with_body(br#"{"e":1}"#));
        assert_eq!(v, Some(Verdict::rate_limited(Some(Duration::from_secs(2)))));
    }
}
