use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderName;
use tower::Layer;

use super::store::{Config, Shared};
use super::{CacheHandle, CachedEndpoint};
use crate::key::{KeyExtractor, MethodUri, SharedKey};
use crate::vocabulary::{ConfigError, LayerKind};

/// The default cap on a cached body: 64 KiB.
const DEFAULT_BODY_CAP: usize = crate::body::DEFAULT_CAP;

/// The default cooldown after a rate-limited answer that carries no retry hint: 10 s
/// (the length of QQ's `/gateway` window).
pub(crate) const DEFAULT_BACKOFF: Duration = Duration::from_secs(10);

/// Keeps the last good answer of an endpoint per key and serves it while the endpoint
/// is rate-limited or failing; see [the guide](crate::guide#cache) for the rules.
///
/// Made by [`new`](Self::new) (defaults) or [`builder`](Self::builder). The layer
/// creates the shared state: every clone of the layer, every service it makes and
/// every [`CacheHandle`] share one cache.
pub struct CachedEndpointLayer {
    shared: Arc<Shared>,
    key: SharedKey,
}

impl CachedEndpointLayer {
    /// A layer with the defaults: key [`MethodUri`], no TTL (an entry stays fresh until
    /// invalidated), a 64 KiB body cap, a 10 s default backoff, no status header.
    pub fn new() -> Self {
        CachedEndpointLayer::from_parts(Arc::new(MethodUri), defaults())
    }

    /// A builder starting from the defaults of [`new`](Self::new).
    pub fn builder() -> CacheBuilder {
        CacheBuilder {
            key: Arc::new(MethodUri),
            config: defaults(),
            name: None,
        }
    }
}

impl Default for CachedEndpointLayer {
    fn default() -> Self {
        Self::new()
    }
}

fn defaults() -> Config {
    Config {
        ttl: None,
        body_cap: DEFAULT_BODY_CAP,
        default_backoff: DEFAULT_BACKOFF,
        status_header: None,
    }
}

impl CachedEndpointLayer {
    fn from_parts(key: SharedKey, config: Config) -> Self {
        CachedEndpointLayer {
            shared: Shared::new(config),
            key,
        }
    }

    /// A handle on this layer's cache: invalidate entries, read the counters.
    pub fn handle(&self) -> CacheHandle {
        CacheHandle::new(Arc::clone(&self.shared))
    }
}

impl Clone for CachedEndpointLayer {
    fn clone(&self) -> Self {
        CachedEndpointLayer {
            shared: Arc::clone(&self.shared),
            key: Arc::clone(&self.key),
        }
    }
}

impl fmt::Debug for CachedEndpointLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CachedEndpointLayer")
            .field("config", &self.shared.config)
            .finish()
    }
}

impl<S> Layer<S> for CachedEndpointLayer {
    type Service = CachedEndpoint<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CachedEndpoint::new(inner, Arc::clone(&self.key), Arc::clone(&self.shared))
    }
}

/// Configures a [`CachedEndpointLayer`]; [`build`](Self::build) checks the settings.
///
/// ```
/// use std::time::Duration;
/// use http::HeaderName;
/// use ratewise::cache::CachedEndpointLayer;
///
/// let layer = CachedEndpointLayer::builder()
///     .key(|req: &ratewise::key::RequestRef<'_>| req.uri().path().to_owned())
///     .ttl(Duration::from_secs(3600))
///     .body_cap(8 * 1024)
///     .default_backoff(Duration::from_secs(10))
///     .status_header(HeaderName::from_static("x-cache"))
///     .build()
///     .unwrap();
/// # let _ = layer;
///
/// let err = CachedEndpointLayer::builder().ttl(Duration::ZERO).build().unwrap_err();
/// /// assert_eq!(err.field(), "ttl");
/// ```
pub struct CacheBuilder {
    key: SharedKey,
    config: Config,
    name: Option<Arc<str>>,
}

impl CacheBuilder {
    /// How requests map to entries (default [`MethodUri`]): any
    /// [`KeyExtractor`](crate::key::KeyExtractor), closures included.
    pub fn key(mut self, key: impl KeyExtractor) -> Self {
        self.key = Arc::new(key);
        self
    }

    /// How long an entry stays fresh (served without calling the upstream). Without a
    /// TTL (the default) an entry stays fresh until it is
    /// [invalidated](CacheHandle::invalidate). Must not be zero.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.config.ttl = Some(ttl);
        self
    }

    /// The largest body kept (default 64 KiB). A good answer with a
    /// larger body is passed through whole and not cached. Must not be zero.
    pub fn body_cap(mut self, cap: usize) -> Self {
        self.config.body_cap = cap;
        self
    }

    /// The cooldown after a rate-limited answer that gave no retry hint (default
    /// 10 s, the length of QQ's `/gateway` window). A hint from the server is used as given. Must not be zero.
    pub fn default_backoff(mut self, backoff: Duration) -> Self {
        self.config.default_backoff = backoff;
        self
    }

    /// Also mark each response in this header (`hit`, `miss` or `stale`), e.g.
    /// `x-cache`. Off by default: the mark is always in the response's extensions
    /// ([`CacheStatus`](super::CacheStatus)), and without this setting the upstream's
    /// headers are left exactly as sent.
    pub fn status_header(mut self, name: HeaderName) -> Self {
        self.config.status_header = Some(name);
        self
    }

    /// The `name` label of the cache's [metrics](crate::metrics) (default `"default"`).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into().into());
        self
    }

    /// The layer, or the first setting that is wrong.
    pub fn build(self) -> Result<CachedEndpointLayer, ConfigError> {
        if self.config.body_cap == 0 {
            return Err(config_error(
                "body_cap",
                "must be greater than zero: no body could ever be cached",
            ));
        }
        if self.config.ttl == Some(Duration::ZERO) {
            return Err(config_error(
                "ttl",
                "must be greater than zero: no entry would ever be fresh",
            ));
        }
        if self.config.default_backoff.is_zero() {
            return Err(config_error("default_backoff", "must be greater than zero: an answer without a retry hint would not stop the next caller"));
        }
        let layer = CachedEndpointLayer::from_parts(self.key, self.config);
        layer.shared.set_name(self.name);
        Ok(layer)
    }
}

impl fmt::Debug for CacheBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CacheBuilder")
            .field("config", &self.config)
            .finish()
    }
}

fn config_error(field: &'static str, reason: &'static str) -> ConfigError {
    ConfigError::new(LayerKind::Cache, field, reason)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_zero_setting_is_an_error_naming_its_field() {
        let cap = CachedEndpointLayer::builder().body_cap(0).build();
        assert_eq!(cap.unwrap_err().field(), "body_cap");
        let ttl = CachedEndpointLayer::builder().ttl(Duration::ZERO).build();
        assert_eq!(ttl.unwrap_err().field(), "ttl");
        let backoff = CachedEndpointLayer::builder()
            .default_backoff(Duration::ZERO)
            .build();
        assert_eq!(backoff.unwrap_err().field(), "default_backoff");
        assert!(CachedEndpointLayer::builder()
            .ttl(Duration::from_nanos(1))
            .body_cap(1)
            .build()
            .is_ok());
    }

    #[test]
    fn clones_and_handles_share_one_state() {
        let layer = CachedEndpointLayer::new();
        let clone = layer.clone();
        assert!(Arc::ptr_eq(&layer.shared, &clone.shared));
        let svc = clone.layer(());
        assert!(Arc::ptr_eq(&layer.shared, &svc.shared));
    }
}
