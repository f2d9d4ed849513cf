//! Rate limiter errors. STUB.
use std::time::Duration;

/// The wait hint carried by one of the crate's errors, if `err` is one that carries one.
pub(crate) fn retry_hint(err: &(dyn std::error::Error + 'static)) -> Option<Duration> {
    let _ = err;
    None
}
