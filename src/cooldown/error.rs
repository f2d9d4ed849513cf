//! Errors of the cooldown layer: [`CoolingDown`] at request time, [`ConfigError`] from
//! the builder.

use std::{error::Error, fmt, time::Duration};

use crate::key::Key;

/// A request was refused because its key is cooling down after a rate-limited answer.
///
/// Returned (boxed in [`BoxError`](crate::BoxError)) in fail-fast mode, and in wait mode
/// when the cooldown outlasts `max_wait`. Also returned by a ratewise
/// [`RateLimitLayer`](crate::RateLimitLayer) below the cooldown for a request that
/// passed the cooldown while its key was open, then waited in the limiter's queue and
/// found the key cooling (or half-open, with another request as the probe) when its
/// turn came: that request took no cell and was not sent (see the
/// [module docs](super#requests-held-back-below-the-cooldown)).
///
/// No request that fails with this error has reached the inner service.
/// [`verdict_of_error`](crate::classify::verdict_of_error) reads it as rate-limited with
/// [`remaining`](CoolingDown::remaining) as the hint, so a retry layer above knows how
/// long to wait.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CoolingDown {
    key: Key,
    remaining: Duration,
    probing: bool,
    /// The id of the cooldown whose gate refused the request below the cooldown;
    /// `None` when the cooldown refused it itself.
    gate: Option<u64>,
}

impl CoolingDown {
    pub(crate) fn new(key: Key, remaining: Duration, probing: bool) -> Self {
        CoolingDown {
            key,
            remaining,
            probing,
            gate: None,
        }
    }

    /// The same refusal, made by the gate of the cooldown `id` below that cooldown.
    pub(crate) fn by_gate(mut self, id: u64) -> Self {
        self.gate = Some(id);
        self
    }

    /// The id of the cooldown whose gate refused the request, when a gate did.
    pub(crate) fn gate(&self) -> Option<u64> {
        self.gate
    }

    /// The key that is cooling down.
    pub fn key(&self) -> &Key {
        &self.key
    }

    /// How long the cooldown still runs. Zero when the cooldown itself is over but the
    /// key is half-open: one probe request is in flight and its answer decides.
    pub fn remaining(&self) -> Duration {
        self.remaining
    }

    /// Whether the key is half-open with a probe in flight (rather than cooling).
    pub fn is_probing(&self) -> bool {
        self.probing
    }
}

impl fmt::Display for CoolingDown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.gate.is_some() {
            write!(
                f,
                "key `{}` began cooling down after a rate-limited answer while this request waited to be sent, so it was not sent: {:.3} s remaining",
                self.key,
                self.remaining.as_secs_f64()
            )?;
            return if self.probing {
                f.write_str(", then a probe request in flight decides")
            } else {
                Ok(())
            };
        }
        if self.probing {
            write!(
                f,
                "key `{}` is half-open after a rate-limit cooldown: waiting for the probe request's answer",
                self.key
            )
        } else {
            write!(
                f,
                "key `{}` is cooling down after a rate-limited answer: {:.3} s remaining",
                self.key,
                self.remaining.as_secs_f64()
            )
        }
    }
}

impl Error for CoolingDown {}

/// The verdict of a [`CoolingDown`] for [`crate::classify::verdict_of_error`]:
/// rate-limited with the time the cooldown has left.
pub(crate) fn verdict(err: &(dyn Error + 'static)) -> Option<crate::classify::Verdict> {
    err.downcast_ref::<CoolingDown>()
        .map(|e| crate::classify::Verdict::rate_limited(Some(e.remaining())))
}

/// The [`CoolingDown`] a cooldown's gate returned below it, found in `err` or its
/// `source()` chain: a request that never reached the upstream, so never a new
/// rate-limit signal.
pub(crate) fn held_back<'a>(err: &'a (dyn Error + 'static)) -> Option<&'a CoolingDown> {
    let mut cur: Option<&'a (dyn Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(cooling) = e.downcast_ref::<CoolingDown>() {
            if cooling.gate.is_some() {
                return Some(cooling);
            }
        }
        cur = e.source();
    }
    None
}

/// A cooldown configuration the builder refused, naming the field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    field: &'static str,
    reason: &'static str,
}

impl ConfigError {
    pub(crate) fn new(field: &'static str, reason: &'static str) -> Self {
        ConfigError { field, reason }
    }

    /// The builder field at fault, e.g. `"base"` or `"cap"`.
    pub fn field(&self) -> &'static str {
        self.field
    }

    /// Why the value was refused.
    pub fn reason(&self) -> &'static str {
        self.reason
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid cooldown configuration: `{}` {}",
            self.field, self.reason
        )
    }
}

impl Error for ConfigError {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{classify::verdict_of_error, BoxError, Verdict};

    #[test]
    fn display_names_key_and_remaining() {
        let e = CoolingDown::new(
            Key::from("api.telegram.org"),
            Duration::from_millis(4_310_500),
            false,
        );
        let s = e.to_string();
        assert!(s.contains("api.telegram.org"), "{s}");
        assert!(s.contains("4310.500 s"), "{s}");
        let probing = CoolingDown::new(Key::from("h"), Duration::ZERO, true).to_string();
        assert!(
            probing.contains("`h`") && probing.contains("probe"),
            "{probing}"
        );
    }

    #[test]
    fn verdict_of_error_reads_cooling_down_as_rate_limited() {
        let e: BoxError = Box::new(CoolingDown::new(
            Key::from("k"),
            Duration::from_secs(7),
            false,
        ));
        assert_eq!(
            verdict_of_error(&*e),
            Verdict::rate_limited(Some(Duration::from_secs(7)))
        );
        let other: BoxError = "connection reset".into();
        assert_eq!(verdict_of_error(&*other), Verdict::Transient);
    }

    #[test]
    fn config_error_names_field() {
        let e = ConfigError::new("base", "must be greater than zero");
        assert_eq!(e.field(), "base");
        assert_eq!(
            e.to_string(),
            "invalid cooldown configuration: `base` must be greater than zero"
        );
    }
}
