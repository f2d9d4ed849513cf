//! Errors of the retry module: bad configuration, a call past its total deadline, and
//! body buffering failures.

use std::fmt;
use std::time::Duration;

use crate::BoxError;

/// A [`RetryBuilder`](super::RetryBuilder) setting that cannot work.
///
/// Returned by [`RetryBuilder::build`](super::RetryBuilder::build); each variant names
/// the builder field at fault.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq)]
pub enum ConfigError {
    /// `max_attempts` was 0: a call needs at least one attempt.
    ZeroAttempts,
    /// `schedule` was given an empty list of delays.
    EmptySchedule,
    /// `exponential` was given a zero `base`, so every delay would be zero.
    ZeroBase,
    /// `exponential` was given a `cap` below its `base`.
    CapBelowBase {
        /// The base delay.
        base: Duration,
        /// The cap.
        cap: Duration,
    },
    /// `deadline` was zero: no attempt could ever be retried.
    ZeroDeadline,
    /// A scheduled delay (an entry of `schedule`, or the `exponential` cap) is longer
    /// than `max_delay`, the longest the layer may ever wait between attempts.
    DelayAboveMaxDelay {
        /// The offending delay.
        delay: Duration,
        /// The configured `max_delay`.
        max_delay: Duration,
    },
    /// A `tps_budget` parameter is out of the range tower's
    /// [`TpsBudget`](tower::retry::budget::TpsBudget) accepts.
    InvalidBudget {
        /// The parameter at fault: `ttl`, `min_per_sec` or `retry_percent`.
        field: &'static str,
        /// What the range is.
        reason: &'static str,
    },
}

impl ConfigError {
    /// The builder field at fault, e.g. `"max_attempts"` or `"schedule"`, like every
    /// other ratewise `ConfigError`.
    pub fn field(&self) -> &'static str {
        match self {
            ConfigError::ZeroAttempts => "max_attempts",
            ConfigError::EmptySchedule => "schedule",
            ConfigError::ZeroBase | ConfigError::CapBelowBase { .. } => "exponential",
            ConfigError::ZeroDeadline => "deadline",
            ConfigError::DelayAboveMaxDelay { .. } => "max_delay",
            ConfigError::InvalidBudget { field, .. } => field,
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::ZeroAttempts => {
                f.write_str("retry config: `max_attempts` must be at least 1 (got 0)")
            }
            ConfigError::EmptySchedule => {
                f.write_str("retry config: `schedule` must list at least one delay (got none)")
            }
            ConfigError::ZeroBase => {
                f.write_str("retry config: `exponential` base must be greater than zero")
            }
            ConfigError::CapBelowBase { base, cap } => write!(
                f,
                "retry config: `exponential` cap ({cap:?}) must not be below its base ({base:?})"
            ),
            ConfigError::ZeroDeadline => {
                f.write_str("retry config: `deadline` must be greater than zero")
            }
            ConfigError::DelayAboveMaxDelay { delay, max_delay } => write!(
                f,
                "retry config: scheduled delay {delay:?} exceeds `max_delay` ({max_delay:?})"
            ),
            ConfigError::InvalidBudget { field, reason } => {
                write!(f, "retry config: `tps_budget` {field} {reason}")
            }
        }
    }
}

impl std::error::Error for ConfigError {}

/// A call through a [`RetryLayer`](super::RetryLayer) with a total
/// [`deadline`](super::RetryBuilder::deadline) did not get a result before that
/// deadline passed.
///
/// The attempt or wait in flight at the deadline (an upstream still answering, a wait
/// in a layer below, a readiness wait) was dropped. A response that came back earlier
/// and was retried is not kept: it was given up for the retry. Downcast it from the
/// layer's [`BoxError`].
#[derive(Debug, Clone, PartialEq, Eq)]
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

impl fmt::Display for DeadlineExceeded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "retry: the call's total deadline of {:?} passed before a result came back",
            self.deadline
        )
    }
}

impl std::error::Error for DeadlineExceeded {}

/// Reading a request body into memory (see
/// [`buffer_request`](super::buffer_request)) failed because the body itself failed.
///
/// The request is lost with its body; the body's error is the
/// [`source`](std::error::Error::source).
#[derive(Debug)]
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

impl fmt::Display for BufferError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "retry: reading the request body to buffer it failed after {} bytes: {}",
            self.read, self.source
        )
    }
}

impl std::error::Error for BufferError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.source)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_names_the_builder_field() {
        assert_eq!(ConfigError::ZeroAttempts.field(), "max_attempts");
        assert_eq!(ConfigError::EmptySchedule.field(), "schedule");
        assert_eq!(ConfigError::ZeroBase.field(), "exponential");
        assert_eq!(ConfigError::ZeroDeadline.field(), "deadline");
        let budget = ConfigError::InvalidBudget {
            field: "retry_percent",
            reason: "must be between 0 and 1000",
        };
        assert_eq!(budget.field(), "retry_percent");
    }

    #[test]
    fn display_names_the_field() {
        assert!(ConfigError::ZeroAttempts
            .to_string()
            .contains("max_attempts"));
        assert!(ConfigError::EmptySchedule.to_string().contains("schedule"));
        let e = ConfigError::CapBelowBase {
            base: Duration::from_secs(2),
            cap: Duration::from_secs(1),
        };
        assert!(e.to_string().contains("cap (1s)"), "{e}");
        let e = ConfigError::InvalidBudget {
            field: "ttl",
            reason: "must be between 1 s and 60 s",
        };
        assert!(e.to_string().contains("ttl"), "{e}");
    }

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
