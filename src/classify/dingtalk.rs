//! STUB: to be written.

use super::{Classifier, ResponseView, Verdict};

/// STUB: to be written.
#[derive(Debug, Clone, Default)]
pub struct DingTalkQpsLimit {
    _priv: (),
}

impl Classifier for DingTalkQpsLimit {
    fn classify(&self, _response: &ResponseView<'_>) -> Option<Verdict> {
        None
    }
}
