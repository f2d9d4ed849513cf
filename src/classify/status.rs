//! HTTP 429 Too Many Requests.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use http::{HeaderMap, HeaderValue, StatusCode};
//! use ratewise::classify::{Classifier, Preset, ResponseView};
//! use ratewise::{Verdict};
//!
//! let mut headers = HeaderMap::new();
//! headers.insert("retry-after", HeaderValue::from_static("30"));
//! let view = ResponseView::new(StatusCode::TOO_MANY_REQUESTS, &headers);
//! assert_eq!(
//!     Preset::qq().classify(&view),
//!     Some(Verdict::rate_limited(Some(Duration::from_secs(30))))
//! );
//! // This classifier is private; QQ's preset holds it. It never asks for a body.
//! assert!(!Preset::qq().wants_body(StatusCode::TOO_MANY_REQUESTS, &headers));
//! ```

use super::{Classifier, ResponseView, Verdict};

/// Classifies `429 Too Many Requests` as rate-limited, with the retry hint the
/// crate's one parser finds.
///
/// It judges by status and headers only and never asks for a body, so it costs
/// nothing. When another classifier in the chain asked for the body (as
/// [`TelegramRetryAfter`](super::TelegramRetryAfter) does on 429), the parser also
/// reads the hint in the body. Use `TelegramRetryAfter` instead of this when the
/// upstream puts its hint only in the body. Other statuses get no opinion.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct TooManyRequests {
    _priv: (),
}

impl TooManyRequests {
    /// A new 429 classifier.
    pub(crate) fn new() -> Self {
        Self::default()
    }
}

impl Classifier for TooManyRequests {
    fn classify(&self, response: &ResponseView<'_>) -> Option<Verdict> {
        (response.status() == http::StatusCode::TOO_MANY_REQUESTS)
            .then(|| Verdict::rate_limited(response.retry_after()))
    }
}
