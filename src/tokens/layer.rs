//! [`TokenLimitLayer`] and its builder.

use std::{fmt, sync::Arc, time::Duration};

use serde_json::Value;
use tower::Layer;

use super::{
    service::{Settle, TokenLimit},
    stats::{Counters, TokenStats},
};
use crate::{
    key::{Global, Key, KeyError, KeyExtractor, RequestRef, SharedKey},
    rate_limit::{MakeStore, RateLimitBuilder, RateLimitLayer, Store},
    vocabulary::{ConfigError, LayerKind},
};

/// The length of the token budget's window: one minute.
const MINUTE: Duration = Duration::from_secs(60);

/// How many tokens a call is estimated to cost, from its JSON body.
type EstimateFn = Arc<dyn Fn(&Value) -> u32 + Send + Sync>;

/// A tokens-per-minute budget for LLM calls: reserves each call's estimated tokens
/// before it is sent (waiting for them when the budget is spent), then settles the
/// reservation with the `usage` the answer reports. See [the module](super).
///
/// Cloning the layer, and every service it makes, shares one budget.
#[derive(Clone)]
pub struct TokenLimitLayer {
    shared: Arc<Shared>,
    rate_limit: RateLimitLayer,
}

/// What the layer's services share.
pub(crate) struct Shared {
    pub(crate) estimator: Option<EstimateFn>,
    /// The estimate of a body that is not JSON.
    pub(crate) fallback: u32,
    pub(crate) include_usage: bool,
    pub(crate) key: SharedKey,
    /// The rate limiter's store: where reservations are settled.
    pub(crate) store: Store,
    pub(crate) counters: Counters,
}

impl Shared {
    /// The estimate of a request body.
    pub(crate) fn estimate(&self, body: Option<&Value>) -> u32 {
        match (body, &self.estimator) {
            (Some(body), Some(estimate)) => estimate(body),
            (Some(body), None) => super::estimate(body),
            (None, _) => self.fallback,
        }
    }
}

impl TokenLimitLayer {
    /// A builder: set [`per_minute`](TokenLimitBuilder::per_minute) (or
    /// [`per_period`](TokenLimitBuilder::per_period)), then optionally the key,
    /// `max_wait`, the estimator, `include_usage` and a shared store.
    pub fn builder() -> TokenLimitBuilder {
        TokenLimitBuilder {
            budget: None,
            key: Arc::new(Global),
            estimator: None,
            fallback: 0,
            include_usage: false,
            rate_limit: RateLimitLayer::builder(),
        }
    }

    /// The counters: tokens reserved, used (the reconciled count), refunded, charged...
    pub fn stats(&self) -> TokenStats {
        self.shared.counters.snapshot()
    }

    /// The rate limiter that holds the budget: its [`stats`](RateLimitLayer::stats) say
    /// how many calls waited for their tokens, and for how long.
    pub fn rate_limit(&self) -> &RateLimitLayer {
        &self.rate_limit
    }
}

impl<S> Layer<S> for TokenLimitLayer {
    type Service = TokenLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        let settle = Settle::new(inner, self.shared.clone());
        TokenLimit::new(self.rate_limit.layer(settle), self.shared.clone())
    }
}

impl fmt::Debug for TokenLimitLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenLimitLayer")
            .field("include_usage", &self.shared.include_usage)
            .field("fallback_estimate", &self.shared.fallback)
            .field("rate_limit", &self.rate_limit)
            .finish_non_exhaustive()
    }
}

/// Builds a [`TokenLimitLayer`]. Each call changes one thing.
///
/// ```
/// use std::time::Duration;
/// use ratewise::tokens::TokenLimitLayer;
///
/// let tpm = TokenLimitLayer::builder()
///     .per_minute(30_000)
///     .max_wait(Duration::from_secs(30))
///     .include_usage(true)
///     .build()?;
/// # let _ = tpm;
/// let err = TokenLimitLayer::builder().per_minute(0).build().unwrap_err();
/// assert_eq!(err.field(), "per_minute");
/// # Ok::<(), ratewise::ConfigError>(())
/// ```
pub struct TokenLimitBuilder {
    /// Tokens per window.
    budget: Option<(u32, Duration)>,
    key: SharedKey,
    estimator: Option<EstimateFn>,
    fallback: u32,
    include_usage: bool,
    rate_limit: RateLimitBuilder,
}

impl TokenLimitBuilder {
    /// The budget: `tokens` in any 60 s (a sliding window, so that no minute, however it
    /// is cut, holds more). Required.
    pub fn per_minute(self, tokens: u32) -> Self {
        self.per_period(tokens, MINUTE)
    }

    /// The budget over another window: `tokens` in any `window` (sliding). For an API
    /// that counts tokens over another period, and for tests that pace several windows
    /// in seconds. `per_minute(n)` is `per_period(n, 60 s)`; the last one set wins.
    ///
    /// ```
    /// use std::time::Duration;
    /// use ratewise::tokens::TokenLimitLayer;
    ///
    /// let tpm = TokenLimitLayer::builder()
    ///     .per_period(300, Duration::from_secs(2))
    ///     .build()?;
    /// # let _ = tpm;
    /// let err = TokenLimitLayer::builder()
    ///     .per_period(300, Duration::ZERO)
    ///     .build()
    ///     .unwrap_err();
    /// assert_eq!(err.field(), "per_period");
    /// # Ok::<(), ratewise::ConfigError>(())
    /// ```
    pub fn per_period(mut self, tokens: u32, window: Duration) -> Self {
        self.budget = Some((tokens, window));
        self
    }

    /// Which budget a call counts against (default: one for all), e.g. a
    /// backend's name or an API key's [`Key::from_secret`](crate::key::Key::from_secret).
    pub fn key(mut self, key: impl KeyExtractor) -> Self {
        self.key = Arc::new(key);
        self
    }

    /// The longest a call waits for its tokens; past it the call fails at once with a
    /// [`Refusal`](crate::Refusal) of kind
    /// [`MaxWait`](crate::vocabulary::RefusalKind::MaxWait) (the call's own budget, a
    /// [`RetryLayer`](crate::RetryLayer)'s deadline above, bounds it too). Unbounded by
    /// default.
    pub fn max_wait(mut self, max_wait: Duration) -> Self {
        self.rate_limit = self.rate_limit.max_wait(max_wait);
        self
    }

    /// How many tokens a call will cost, from its JSON body (default [`estimate`]:
    /// the prompt's characters / 4 plus `max_tokens`). Over-estimating makes calls wait
    /// longer than needed until their answers give the difference back;
    /// under-estimating lets more through than the budget until the answers charge it.
    ///
    /// [`estimate`]: super::estimate
    pub fn estimator(mut self, estimate: impl Fn(&Value) -> u32 + Send + Sync + 'static) -> Self {
        self.estimator = Some(Arc::new(estimate));
        self
    }

    /// The tokens reserved for a body that is not JSON (default 0: such a call is not
    /// held back, and its answer's `usage`, if any, is still charged).
    pub fn fallback_estimate(mut self, tokens: u32) -> Self {
        self.fallback = tokens;
        self
    }

    /// Asks streaming calls for their usage: a JSON body with `"stream": true` that does
    /// not already ask gets `"stream_options": {"include_usage": true}`, so the last SSE
    /// chunk reports it (OpenAI and compatible APIs; the client then receives that
    /// extra chunk, whose `choices` is empty). Off by default: turn it on for backends
    /// that accept the option. Every other body is sent as it came, byte for byte.
    pub fn include_usage(mut self, on: bool) -> Self {
        self.include_usage = on;
        self
    }

    /// Keeps the budget in a store built by `make`, e.g.
    /// [`Redis::rate_limit`](crate::redis::Redis::rate_limit), so that every process
    /// using the same name shares one budget (the Redis store settles each call's
    /// reservation to its real cost, as the in-memory one does).
    pub fn store(mut self, make: impl MakeStore) -> Self {
        self.rate_limit = self.rate_limit.store(make);
        self
    }

    /// The `name` label of the budget's rate limiter [metrics](crate::metrics).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.rate_limit = self.rate_limit.name(name);
        self
    }

    /// The layer. Errors name the field: `per_minute` when no budget is set or its
    /// tokens are zero, `per_period` when its window is zero.
    pub fn build(self) -> Result<TokenLimitLayer, ConfigError> {
        let (tokens, window) = match self.budget {
            None => return Err(config_error("per_minute", "is not set")),
            Some((0, _)) => return Err(config_error("per_minute", "must be at least 1 (got 0)")),
            Some((_, window)) if window.is_zero() => {
                return Err(config_error("per_period", "needs a window above zero"))
            }
            Some(budget) => budget,
        };
        let rate_limit = self
            .rate_limit
            .sliding_window(tokens, window)
            .key(SameKey(self.key.clone()))
            .cost(|req: &RequestRef<'_>| {
                req.extensions()
                    .get::<Reserve>()
                    .map_or(0, |reserve| reserve.0)
            })
            .build()?;
        let store = rate_limit.limiter().store().clone();
        Ok(TokenLimitLayer {
            shared: Arc::new(Shared {
                estimator: self.estimator,
                fallback: self.fallback,
                include_usage: self.include_usage,
                key: self.key,
                store,
                counters: Counters::default(),
            }),
            rate_limit,
        })
    }
}

impl fmt::Debug for TokenLimitBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenLimitBuilder")
            .field("budget", &self.budget)
            .field("fallback_estimate", &self.fallback)
            .field("include_usage", &self.include_usage)
            .finish_non_exhaustive()
    }
}

fn config_error(field: &'static str, reason: &'static str) -> ConfigError {
    ConfigError::new(LayerKind::Tokens, field, reason)
}

/// The tokens a call reserves, put on the request for the rate limiter's cost.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Reserve(pub(crate) u32);

/// The layer's key, shared with its rate limiter.
struct SameKey(SharedKey);

impl KeyExtractor for SameKey {
    fn key(&self, request: &RequestRef<'_>) -> Key {
        self.0.key(request)
    }

    fn try_key(&self, request: &RequestRef<'_>) -> Result<Key, KeyError> {
        self.0.try_key(request)
    }

    fn needs_body(&self) -> bool {
        self.0.needs_body()
    }
}
