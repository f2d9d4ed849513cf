//! 5xx and 408 as transient failures.
//!
//! # Example
//!
//! ```
//! use http::{HeaderMap, StatusCode};
//! use ratewise::classify::{Classifier, Preset, ResponseView};
//! use ratewise::{Verdict};
//!
//! // This classifier is private; every preset ends with it.
//! let headers = HeaderMap::new();
//! let judge = |status| Preset::qq().classify(&ResponseView::new(status, &headers));
//! assert_eq!(judge(StatusCode::BAD_GATEWAY), Some(Verdict::Transient));
//! assert_eq!(judge(StatusCode::REQUEST_TIMEOUT), Some(Verdict::Transient));
//! assert_eq!(judge(StatusCode::NOT_FOUND), None);
//! ```

use super::{Classifier, ResponseView, Verdict};

/// Classifies 5xx and `408 Request Timeout` as [`Verdict::Transient`]; other
/// statuses get no opinion. Never asks for a body.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct ServerErrors {
    _priv: (),
}

impl ServerErrors {
    /// A new 5xx/408 classifier.
    pub(crate) fn new() -> Self {
        Self::default()
    }
}

impl Classifier for ServerErrors {
    fn classify(&self, response: &ResponseView<'_>) -> Option<Verdict> {
        let s = response.status();
        (s.is_server_error() || s == http::StatusCode::REQUEST_TIMEOUT)
            .then_some(Verdict::Transient)
    }
}
