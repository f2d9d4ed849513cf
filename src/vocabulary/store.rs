//! [`StoreError`]: a store that shares a layer's state could not decide.

use std::{error::Error, fmt};

use crate::{key::Key, BoxError};

/// A store that keeps a layer's state (the rate limiter's buckets, a shared cooldown
/// table) failed to decide: Redis unreachable, a script error...
#[derive(Debug)]
pub struct StoreError {
    key: Option<Key>,
    source: BoxError,
}

impl StoreError {
    /// A store error caused by `source`.
    pub fn new(source: impl Into<BoxError>) -> Self {
        StoreError {
            key: None,
            source: source.into(),
        }
    }

    /// The key whose cells were asked for, once the layer has seen the error.
    pub fn key(&self) -> Option<&Key> {
        self.key.as_ref()
    }

    pub(crate) fn with_key(mut self, key: Key) -> Self {
        self.key = Some(key);
        self
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("rate limit store failed")?;
        if let Some(key) = &self.key {
            write!(f, " for key \"{key}\"")?;
        }
        let cause = self.source.to_string();
        if cause.is_empty() {
            f.write_str(" (no details)")
        } else {
            write!(f, ": {cause}")
        }
    }
}

impl Error for StoreError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        Some(&*self.source)
    }
}
