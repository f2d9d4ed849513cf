//! [`ConfigError`]: the one error every builder returns.

use std::borrow::Cow;

use super::LayerKind;

/// A configuration a builder refused. Returned by every `build()`, never a panic.
///
/// [`field`](Self::field) names the builder call at fault (`burst`, `per_second`,
/// `max_wait`...), [`layer`](Self::layer) the builder, and the message names both.
///
/// ```
/// use ratewise::RateLimitLayer;
///
/// let err = RateLimitLayer::builder().per_second(20).burst(0).build().unwrap_err();
/// assert_eq!(err.field(), "burst");
/// assert_eq!(err.to_string(), "invalid rate_limit configuration: `burst` must be at least 1 (got 0)");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {layer} configuration: `{field}` {reason}")]
pub struct ConfigError {
    layer: LayerKind,
    field: &'static str,
    reason: Cow<'static, str>,
}

impl ConfigError {
    /// A refusal of `field` in `layer`'s builder, for `reason` (a phrase that follows
    /// the field's name: "must be greater than zero").
    pub fn new(
        layer: LayerKind,
        field: &'static str,
        reason: impl Into<Cow<'static, str>>,
    ) -> Self {
        ConfigError {
            layer,
            field,
            reason: reason.into(),
        }
    }

    /// The builder whose configuration was refused.
    pub fn layer(&self) -> LayerKind {
        self.layer
    }

    /// The configuration field (builder method) at fault.
    pub fn field(&self) -> &'static str {
        self.field
    }

    /// Why the value was refused.
    pub fn reason(&self) -> &str {
        &self.reason
    }
}
