//! STUB: to be written.

use super::{Classifier, ResponseView, Verdict};

/// STUB: to be written.
#[derive(Debug, Clone, Default)]
pub struct TelegramRetryAfter {
    _priv: (),
}

impl Classifier for TelegramRetryAfter {
    fn classify(&self, _response: &ResponseView<'_>) -> Option<Verdict> {
        None
    }
}
