//! Telegram's 429, with the wait read from the body.
//!
//! Telegram's Bot API answers flood limits with **429** and
//! `{"ok":false,"error_code":429,"description":"Too Many Requests: retry after 4310","parameters":{"retry_after":4310}}`,
//! usually with a `Retry-After: 4310` header too. Waits of over an hour are real, and
//! ignoring them makes Telegram extend the ban.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use http::{HeaderMap, StatusCode};
//! use ratewise::classify::{Classifier, Preset, ResponseView};
//! use ratewise::{Verdict};
//!
//! // This classifier is private; Telegram's preset is it, plus 5xx.
//! let tg = Preset::telegram();
//! let headers = HeaderMap::new();
//! assert!(tg.wants_body(StatusCode::TOO_MANY_REQUESTS, &headers));
//! assert!(!tg.wants_body(StatusCode::OK, &headers));
//!
//! let body = br#"{"ok":false,"error_code":429,"description":"Too Many Requests: retry after 4310","parameters":{"retry_after":4310}}"#;
//! let view = ResponseView::new(StatusCode::TOO_MANY_REQUESTS, &headers).with_body(body);
//! assert_eq!(
//!     tg.classify(&view),
//!     Some(Verdict::rate_limited(Some(Duration::from_secs(4310))))
//! );
//! ```

use http::{HeaderMap, StatusCode};

use super::{Classifier, ResponseView, Verdict};

/// Classifies **429** as rate-limited and asks for its body, so that the crate's one
/// parser finds Telegram's `parameters.retry_after` (or the "retry after N" in the
/// description) when no header carries the wait.
///
/// Headers still take precedence over the body, in the parser's documented order.
/// Other statuses get no opinion and their bodies are never read.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct TelegramRetryAfter {
    _priv: (),
}

impl TelegramRetryAfter {
    /// A new Telegram 429 classifier.
    pub(crate) fn new() -> Self {
        Self::default()
    }
}

impl Classifier for TelegramRetryAfter {
    fn wants_body(&self, status: StatusCode, _headers: &HeaderMap) -> bool {
        status == StatusCode::TOO_MANY_REQUESTS
    }

    fn classify(&self, response: &ResponseView<'_>) -> Option<Verdict> {
        (response.status() == StatusCode::TOO_MANY_REQUESTS)
            .then(|| Verdict::rate_limited(response.retry_after()))
    }
}
