//! HTTP 429 Too Many Requests.

use super::{Classifier, ResponseView, Verdict};

/// Classifies `429 Too Many Requests` as rate-limited, with the retry hint the
/// crate's one parser finds in the headers (and the body prefix, when another
/// classifier in the chain asked for it).
#[derive(Debug, Clone, Copy, Default)]
pub struct TooManyRequests {
    _priv: (),
}

impl TooManyRequests {
    /// A new 429 classifier.
    pub fn new() -> Self {
        Self::default()
    }
}

impl Classifier for TooManyRequests {
    fn classify(&self, response: &ResponseView<'_>) -> Option<Verdict> {
        (response.status() == http::StatusCode::TOO_MANY_REQUESTS)
            .then(|| Verdict::rate_limited(response.retry_after()))
    }
}
