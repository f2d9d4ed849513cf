use std::fmt;
use std::sync::Arc;

use tower::{Layer, Service};

use super::{shared::FreshCounters, FreshClient, FreshStats};
use crate::redact::redact_urls;
use crate::vocabulary::{ConfigError, LayerKind};

/// The number of consecutive connection-level errors that retires a client unless
/// [`FreshClientBuilder::threshold`] says otherwise.
pub(crate) const DEFAULT_THRESHOLD: u32 = 3;

/// Wraps a `MakeService` (a [`Service`] whose responses are clients) in a
/// [`FreshClient`] that serves requests through the client it made, and makes a new
/// client after `threshold` consecutive connection-level errors.
///
/// The layer holds configuration and a [`FreshStats`] handle; cloning it shares the
/// stats. Each [`Layer::layer`] call starts its own client slot, so apply one layer per
/// upstream client: two services made by the same layer report into the same stats.
#[derive(Clone)]
pub struct FreshClientLayer<T = ()> {
    target: T,
    name: Arc<str>,
    threshold: u32,
    stats: FreshCounters,
}

impl FreshClientLayer<()> {
    /// A layer with the default threshold (3) and the target `()`:
    /// the `MakeService` is called as `make.call(())`.
    pub fn new() -> Self {
        FreshClientLayer {
            target: (),
            name: Arc::from("()"),
            threshold: DEFAULT_THRESHOLD,
            stats: FreshCounters::default(),
        }
    }

    /// A builder, to set the threshold, the target and its name.
    pub fn builder() -> FreshClientBuilder<()> {
        FreshClientBuilder {
            target: (),
            name: None,
            threshold: DEFAULT_THRESHOLD,
        }
    }
}

impl Default for FreshClientLayer<()> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> FreshClientLayer<T> {
    /// How many consecutive connection-level errors retire a client.
    pub fn threshold(&self) -> u32 {
        self.threshold
    }

    /// The target handed to the `MakeService` for every client it builds.
    pub fn target(&self) -> &T {
        &self.target
    }

    /// The target's name, as errors and logs show it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The stats of every service this layer (or a clone of it) makes.
    pub fn stats(&self) -> FreshStats {
        self.stats.snapshot()
    }
}

impl<T> fmt::Debug for FreshClientLayer<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The target itself is not printed: it may carry a secret. Its name is what
        // the user chose to show.
        f.debug_struct("FreshClientLayer")
            .field("target", &self.name)
            .field("threshold", &self.threshold)
            .field("stats", &self.stats)
            .finish()
    }
}

impl<M, T> Layer<M> for FreshClientLayer<T>
where
    M: Service<T>,
    T: Clone,
{
    type Service = FreshClient<M, T>;

    fn layer(&self, inner: M) -> Self::Service {
        FreshClient::new(
            inner,
            self.target.clone(),
            self.name.clone(),
            self.threshold,
            self.stats.clone(),
        )
    }
}

/// Builds a [`FreshClientLayer`]. Every setter changes one thing;
/// [`build`](FreshClientBuilder::build) checks the result.
#[derive(Clone)]
pub struct FreshClientBuilder<T = ()> {
    target: T,
    name: Option<Arc<str>>,
    threshold: u32,
}

impl<T> FreshClientBuilder<T> {
    /// How many consecutive connection-level errors from one client retire it
    /// (default 3). Must be at least 1.
    pub fn threshold(mut self, threshold: u32) -> Self {
        self.threshold = threshold;
        self
    }

    /// The target handed to the `MakeService` (cloned) for every client it builds,
    /// e.g. a base URL. Default `()`.
    pub fn target<T2>(self, target: T2) -> FreshClientBuilder<T2> {
        FreshClientBuilder {
            target,
            name: self.name,
            threshold: self.threshold,
        }
    }

    /// The name errors and logs show for the target. Default: the target's `Debug`,
    /// with any URL in it cut to `scheme://host[:port]`. Set it when the target's
    /// `Debug` could show a secret some other way.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(Arc::from(name.into()));
        self
    }

    /// The layer, or the first bad setting.
    pub fn build(self) -> Result<FreshClientLayer<T>, ConfigError>
    where
        T: fmt::Debug,
    {
        if self.threshold == 0 {
            return Err(ConfigError::new(
                LayerKind::Fresh,
                "threshold",
                "must be at least 1 consecutive error, got 0",
            ));
        }
        let name = match self.name {
            Some(name) => name,
            None => Arc::from(redact_urls(&format!("{:?}", self.target))),
        };
        Ok(FreshClientLayer {
            target: self.target,
            name,
            threshold: self.threshold,
            stats: FreshCounters::default(),
        })
    }
}

impl<T> fmt::Debug for FreshClientBuilder<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FreshClientBuilder")
            .field("name", &self.name)
            .field("threshold", &self.threshold)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_threshold_is_a_config_error() {
        let err = FreshClientLayer::builder()
            .threshold(0)
            .build()
            .unwrap_err();
        assert_eq!(err.field(), "threshold");
        assert!(err.to_string().contains("`threshold`"), "{err}");
    }

    #[test]
    fn name_defaults_to_target_debug_and_can_be_overridden() {
        let layer = FreshClientLayer::builder()
            .target("http://127.0.0.1:1")
            .threshold(5)
            .build()
            .unwrap();
        assert_eq!(layer.name(), "\"http://127.0.0.1:1\"");
        assert_eq!(layer.threshold(), 5);
        let layer = FreshClientLayer::builder()
            .target("https://api.telegram.org/bot123:secret/")
            .name("telegram")
            .build()
            .unwrap();
        assert_eq!(layer.name(), "telegram");
        assert!(!format!("{layer:?}").contains("secret"));
        let layer = FreshClientLayer::builder()
            .target("https://api.telegram.org/bot123:secret/")
            .build()
            .unwrap();
        assert_eq!(layer.name(), "\"https://api.telegram.org/[redacted]\"");
    }
}
