//! Per-platform classifier bundles. STUB: to be written.

use super::{Classifier, ServerErrors, TooManyRequests};

/// STUB.
pub fn default() -> impl Classifier + Clone {
    TooManyRequests::new().or(ServerErrors::new())
}

/// STUB.
pub fn glm() -> impl Classifier + Clone {
    default()
}
