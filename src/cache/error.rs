//! Errors of [`CachedEndpointLayer`](super::CachedEndpointLayer): its configuration,
//! and the refusal to call an endpoint that is cooling down with nothing cached.

use std::error::Error;
use std::fmt;
use std::time::Duration;

use crate::key::Key;

/// A bad [`CacheBuilder`](super::CacheBuilder) setting, returned by
/// [`build`](super::CacheBuilder::build). [`field`](Self::field) names the setting.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigError {
    /// `body_cap` is zero: no body could ever be cached.
    ZeroBodyCap,
    /// `ttl` is zero: no entry would ever be fresh.
    ZeroTtl,
    /// `default_backoff` is zero: a rate-limited answer without a retry hint would
    /// not stop the next caller from calling again at once.
    ZeroBackoff,
}

impl ConfigError {
    /// The name of the builder setting that is wrong.
    pub fn field(&self) -> &'static str {
        match self {
            ConfigError::ZeroBodyCap => "body_cap",
            ConfigError::ZeroTtl => "ttl",
            ConfigError::ZeroBackoff => "default_backoff",
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "cached endpoint: `{}` must be greater than zero",
            self.field()
        )
    }
}

impl Error for ConfigError {}

/// The endpoint is cooling down after a rate-limited answer and nothing is cached for
/// it, so the call was not made.
///
/// Returned (boxed in a [`BoxError`](crate::BoxError)) to callers that arrive during
/// the cooldown of a key with no entry. The caller that met the rate-limited answer
/// (and those that waited for it) got the upstream's own answer; the ones after it get
/// this error instead of a call the upstream would refuse and count against the client.
///
/// ```
/// # use ratewise::cache::EndpointLimited;
/// # fn f(err: ratewise::BoxError) {
/// if let Some(limited) = err.downcast_ref::<EndpointLimited>() {
///     println!("{} is limited for another {:?}", limited.key(), limited.remaining());
/// }
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointLimited {
    key: Key,
    remaining: Duration,
}

impl EndpointLimited {
    pub(crate) fn new(key: Key, remaining: Duration) -> Self {
        EndpointLimited { key, remaining }
    }

    /// The key of the endpoint.
    pub fn key(&self) -> &Key {
        &self.key
    }

    /// How long the cooldown still lasts.
    pub fn remaining(&self) -> Duration {
        self.remaining
    }
}

impl fmt::Display for EndpointLimited {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "endpoint `{}` is rate-limited and has no cached answer; retry in {:?}",
            self.key, self.remaining
        )
    }
}

impl Error for EndpointLimited {}

/// The verdict of an [`EndpointLimited`] for [`crate::classify::verdict_of_error`]:
/// rate-limited with the time the endpoint's cooldown has left.
pub(crate) fn verdict(err: &(dyn Error + 'static)) -> Option<crate::classify::Verdict> {
    err.downcast_ref::<EndpointLimited>()
        .map(|e| crate::classify::Verdict::rate_limited(Some(e.remaining())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn displays_name_the_field_the_key_and_the_wait() {
        assert_eq!(ConfigError::ZeroTtl.field(), "ttl");
        assert!(ConfigError::ZeroBodyCap.to_string().contains("`body_cap`"));
        assert!(ConfigError::ZeroBackoff
            .to_string()
            .contains("`default_backoff`"));
        let err = EndpointLimited::new(Key::from("GET /gateway"), Duration::from_secs(7));
        let text = err.to_string();
        assert!(text.contains("GET /gateway"), "{text}");
        assert!(text.contains("7s"), "{text}");
    }

    #[test]
    fn endpoint_limited_is_a_rate_limited_verdict_with_its_remaining_wait() {
        let err: crate::BoxError = Box::new(EndpointLimited::new(
            Key::from("GET /gateway"),
            Duration::from_secs(7),
        ));
        assert_eq!(
            crate::classify::verdict_of_error(&*err),
            crate::Verdict::rate_limited(Some(Duration::from_secs(7)))
        );
    }
}
