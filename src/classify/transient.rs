//! 5xx and 408 as transient failures.

use super::{Classifier, ResponseView, Verdict};

/// Classifies 5xx and `408 Request Timeout` as [`Verdict::Transient`].
#[derive(Debug, Clone, Copy, Default)]
pub struct ServerErrors {
    _priv: (),
}

impl ServerErrors {
    /// A new 5xx/408 classifier.
    pub fn new() -> Self {
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
