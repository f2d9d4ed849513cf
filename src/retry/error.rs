//! Errors of the retry module: a call past its total deadline, and body buffering
//! failures.

use std::time::Duration;

use crate::BoxError;

/// A call through a [`RetryLayer`](super::RetryLayer) with a total
/// [`deadline`](super::RetryBuilder::deadline) did not get a result before that
/// deadline passed.
///
/// The attempt or wait in flight at the deadline (an upstream still answering, a wait
/// in a layer below, a readiness wait) was dropped. A response that came back earlier
/// and was retried is not kept: it was given up for the retry. Downcast it from the
/// layer's [`BoxError`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("retry: the call's total deadline of {deadline:?} passed before a result came back")]
pub struct DeadlineExceeded {
    deadline: Duration,
}

impl DeadlineExceeded {
    pub(crate) fn new(deadline: Duration) -> Self {
        DeadlineExceeded { deadline }
    }

    /// The configured total deadline, counted from when the call was made.
    pub fn deadline(&self) -> Duration {
        self.deadline
    }
}

/// Reading a request body into memory (see
/// [`buffer_request`](super::buffer_request)) failed because the body itself failed.
///
/// The request is lost with its body; the body's error is the
/// [`source`](std::error::Error::source).
#[derive(Debug, thiserror::Error)]
#[error("retry: reading the request body to buffer it failed after {read} bytes: {source}")]
pub struct BufferError {
    read: usize,
    source: BoxError,
}

impl BufferError {
    pub(crate) fn new(read: usize, source: BoxError) -> Self {
        BufferError { read, source }
    }

    /// How many body bytes had been read when the body failed.
    pub fn bytes_read(&self) -> usize {
        self.read
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadline_exceeded_names_the_deadline() {
        let e = DeadlineExceeded::new(Duration::from_secs(3));
        assert_eq!(e.deadline(), Duration::from_secs(3));
        assert!(e.to_string().contains("deadline of 3s"), "{e}");
    }

    #[test]
    fn buffer_error_keeps_its_source() {
        let e = BufferError::new(7, "socket closed".into());
        assert_eq!(e.bytes_read(), 7);
        assert!(e.to_string().contains("socket closed"));
        assert!(std::error::Error::source(&e).is_some());
    }
}
