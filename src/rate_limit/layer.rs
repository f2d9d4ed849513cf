//! [`RateLimitLayer`] and its builder.

use std::{
    fmt,
    marker::PhantomData,
    sync::{atomic::AtomicBool, Arc},
    time::Duration,
};

use http::Response;
use tower::Layer;

use super::{
    headers::AnswerFn,
    limiter::RateLimiter,
    limits::{rules, Limit, Margin, MemoryStore, Rate, Rule, Spec},
    policy::{Reject, Wait},
    quota::{config_error, Quota},
    service::RateLimit,
    shared::{MakeStore, Store},
    stats::RateLimitStats,
};
use crate::{
    key::{Global, KeyExtractor, RequestRef, SharedKey},
    vocabulary::ConfigError,
    Refusal,
};

/// Keyed GCRA rate limiting for a tower stack: waits (clients) or answers `429`
/// (servers). See [the guide](crate::guide#rate-limit) for the whole story.
///
/// Built with [`RateLimitLayer::builder`]. It holds configuration and a handle to its
/// [`RateLimiter`]: every clone of the layer, and every service it makes, shares that
/// one limiter, so one layer value cloned into several stacks is one process-wide
/// bucket per key.
///
/// The type parameter `M` is the mode ([`Wait`], the default, or [`Reject`]). The
/// key, the cost and the store are values, so a layer with a closure key or a Redis
/// store is still a `RateLimitLayer`.
pub struct RateLimitLayer<M = Wait> {
    policy: Arc<Policy>,
    limiter: RateLimiter,
    mode: PhantomData<fn() -> M>,
}

/// How many cells a request takes.
pub(crate) type CostFn = Arc<dyn Fn(&RequestRef<'_>) -> u32 + Send + Sync>;

/// The per-request rules of a layer, shared by its clones and services.
pub(crate) struct Policy {
    pub(crate) key: SharedKey,
    /// `None`: one cell each.
    pub(crate) cost: Option<CostFn>,
    pub(crate) max_wait: Option<Duration>,
    /// Reject mode: the user's answer to a refused request (`None`: the problem).
    pub(crate) answer: Option<AnswerFn>,
    /// Reject mode: `RateLimit` fields on admitted responses.
    pub(crate) stamp: bool,
    /// Whether a request that could not be keyed has been logged at `ERROR`.
    pub(crate) unkeyed_logged: AtomicBool,
}

impl RateLimitLayer {
    /// A builder: set a rate (`per_second`, `per_minute`, `per_period`) or a window
    /// (`sliding_window`, `fixed_window`), optionally a burst, a margin, other
    /// [`limit`](RateLimitBuilder::limit)s, `max_wait`, key, mode and cost, then
    /// [`build`](RateLimitBuilder::build).
    pub fn builder() -> RateLimitBuilder {
        RateLimitBuilder {
            rate: None,
            burst: None,
            margin: Margin::default(),
            max_wait: None,
            key: Arc::new(Global),
            limits: Vec::new(),
            cost: None,
            store: None,
            answer: None,
            stamp: false,
            name: None,
            mode: PhantomData,
        }
    }
}

impl<M> RateLimitLayer<M> {
    /// The shared limiter handle: pass it to
    /// [`build_with_limiter`](RateLimitBuilder::build_with_limiter) to make another
    /// layer (another key, body type, mode or bypass rule) on the same buckets.
    pub fn limiter(&self) -> RateLimiter {
        self.limiter.clone()
    }

    /// The limiter's counters.
    pub fn stats(&self) -> RateLimitStats {
        self.limiter.stats()
    }

    /// The quota the buckets follow.
    pub fn quota(&self) -> Quota {
        self.limiter.quota()
    }

    /// The longest a request waits in wait mode (`None`: unbounded).
    pub fn max_wait(&self) -> Option<Duration> {
        self.policy.max_wait
    }
}

impl<M> Clone for RateLimitLayer<M> {
    fn clone(&self) -> Self {
        RateLimitLayer {
            policy: self.policy.clone(),
            limiter: self.limiter.clone(),
            mode: PhantomData,
        }
    }
}

impl<M> fmt::Debug for RateLimitLayer<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimitLayer")
            .field("mode", &mode_name::<M>())
            .field("max_wait", &self.policy.max_wait)
            .field("limiter", &self.limiter)
            .finish()
    }
}

impl<S, M> Layer<S> for RateLimitLayer<M> {
    type Service = RateLimit<S, M>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimit::new(inner, self.policy.clone(), self.limiter.clone())
    }
}

fn mode_name<M>() -> &'static str {
    let name = std::any::type_name::<M>();
    name.rsplit("::").next().unwrap_or(name)
}

/// Builds a [`RateLimitLayer`]. Each call changes one thing; the last rate set wins.
///
/// ```
/// use std::time::Duration;
/// use ratewise::rate_limit::RateLimitLayer;
///
/// let layer = RateLimitLayer::builder()
///     .per_second(20)
///     .burst(20)
///     .max_wait(Duration::from_secs(2))
///     .build()?;
/// assert_eq!(layer.quota().burst(), 20);
///
/// let err = RateLimitLayer::builder().per_second(20).burst(0).build().unwrap_err();
/// assert_eq!(err.field(), "burst");
/// # Ok::<(), ratewise::ConfigError>(())
/// ```
pub struct RateLimitBuilder<M = Wait> {
    rate: Option<Rate>,
    burst: Option<u32>,
    margin: Margin,
    max_wait: Option<Duration>,
    key: SharedKey,
    limits: Vec<Limit>,
    cost: Option<CostFn>,
    store: Option<MakeShared>,
    answer: Option<AnswerFn>,
    stamp: bool,
    name: Option<Arc<str>>,
    mode: PhantomData<fn() -> M>,
}

/// Builds the shared store of a layer from its rules and quota.
type MakeShared = Arc<dyn Fn(&[Rule], Quota) -> Result<Store, ConfigError> + Send + Sync>;

impl<M> RateLimitBuilder<M> {
    /// `n` cells per second (one every `1 s / n`), with a burst of `n` unless
    /// [`burst`](Self::burst) is called after it. Setting a rate resets the burst, so a
    /// preset's burst never outlives the rate it was chosen for.
    pub fn per_second(mut self, n: u32) -> Self {
        self.rate = Some(Rate::Second(n));
        self.burst = None;
        self
    }

    /// `n` cells per minute (one every `60 s / n`), with a burst of `n` unless
    /// [`burst`](Self::burst) is called after it.
    pub fn per_minute(mut self, n: u32) -> Self {
        self.rate = Some(Rate::Minute(n));
        self.burst = None;
        self
    }

    /// One cell every `period`, with a burst of 1 unless [`burst`](Self::burst) is
    /// called after it.
    pub fn per_period(mut self, period: Duration) -> Self {
        self.rate = Some(Rate::Period(period));
        self.burst = None;
        self
    }

    /// At most `n` requests in any window of length `window` (a sliding window: the
    /// upstream's "100 calls in any 5 s"), instead of a GCRA rate. Keeps at most `n`
    /// timestamps per key.
    pub fn sliding_window(mut self, n: u32, window: Duration) -> Self {
        self.rate = Some(Rate::Sliding(n, window));
        self.burst = None;
        self
    }

    /// At most `n` requests per window of length `window`, windows aligned on the
    /// limiter's start (a fixed window), instead of a GCRA rate. One counter per key.
    pub fn fixed_window(mut self, n: u32, window: Duration) -> Self {
        self.rate = Some(Rate::Fixed(n, window));
        self.burst = None;
        self
    }

    /// Pads the interval (or window) by `margin`: the safety margin that keeps jitter
    /// between this client and the upstream from bringing two requests closer than the
    /// upstream allows. Default zero; the presets set one.
    pub fn margin(mut self, margin: Duration) -> Self {
        self.margin.fixed = margin;
        self
    }

    /// Pads the interval (or window) by `percent` of itself (see [`margin`](Self::margin)).
    pub fn margin_percent(mut self, percent: u32) -> Self {
        self.margin.per_mille = percent.saturating_mul(10);
        self
    }

    /// Another limit, taken together with the main one (and any other): a request waits
    /// until every limit has room, then takes from all of them at the same instant, so
    /// no limit's slot is taken before the request leaves. Each limit has its own key.
    pub fn limit(mut self, limit: Limit) -> Self {
        self.limits.push(limit);
        self
    }

    /// Whether one of the builder's keys reads the request body.
    pub(crate) fn needs_body(&self) -> bool {
        self.key.needs_body() || self.limits.iter().any(Limit::needs_body)
    }

    /// The most cells available at once (and the most one request can cost).
    pub fn burst(mut self, burst: u32) -> Self {
        self.burst = Some(burst);
        self
    }

    /// Wait mode: the longest a request may wait. A request that would need longer
    /// fails at once with a [`Refusal`](crate::Refusal) of kind
    /// [`MaxWait`](crate::vocabulary::RefusalKind::MaxWait). Unbounded by
    /// default; `Duration::ZERO` refuses every request that cannot go now. Ignored in
    /// reject mode.
    pub fn max_wait(mut self, max_wait: Duration) -> Self {
        self.max_wait = Some(max_wait);
        self
    }

    /// How requests are keyed (default: one bucket for all): any
    /// [`KeyExtractor`], e.g. a closure `|req: &RequestRef<'_>| ...`.
    pub fn key(mut self, key: impl KeyExtractor) -> Self {
        self.key = Arc::new(key);
        self
    }

    /// How many cells each request takes (default 1). A cost of 0 bypasses the limiter:
    /// the request is never throttled and takes no cell (DingTalk's final card edits).
    pub fn cost(mut self, cost: impl Fn(&RequestRef<'_>) -> u32 + Send + Sync + 'static) -> Self {
        self.cost = Some(Arc::new(cost));
        self
    }

    /// Keeps the buckets in a store built from this layer's limits by `make` (every
    /// limit, key and margin as set here), instead of in this process's memory: with
    /// [`Redis::rate_limit`](crate::redis::Redis::rate_limit), every process using the
    /// same name shares one limit. The layer's type does not change.
    pub fn store(mut self, make: impl MakeStore) -> Self {
        self.store = Some(Arc::new(move |rules: &[Rule], quota: Quota| {
            make.make_store(rules, quota).map(Store::shared)
        }));
        self
    }

    /// The `name` label of the limiter's [metrics](crate::metrics) (default
    /// `"default"`). A limiter shared by several layers keeps the first name given.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into().into());
        self
    }

    /// Reject mode (servers): over the limit, answer `429` at once.
    pub fn reject(self) -> RateLimitBuilder<Reject> {
        self.with_mode()
    }

    /// Wait mode (clients, the default): over the limit, wait to be admitted.
    pub fn wait(self) -> RateLimitBuilder<Wait> {
        self.with_mode()
    }

    fn with_mode<M2>(self) -> RateLimitBuilder<M2> {
        RateLimitBuilder {
            rate: self.rate,
            burst: self.burst,
            margin: self.margin,
            max_wait: self.max_wait,
            key: self.key,
            limits: self.limits,
            cost: self.cost,
            store: self.store,
            answer: self.answer,
            stamp: self.stamp,
            name: self.name,
            mode: PhantomData,
        }
    }

    /// The layer, with a new in-memory store: governor's GCRA for one plain rate, the
    /// crate's own core for several limits, a window or a margin.
    ///
    /// Errors name the field: `rate` when no rate was set, `per_second` /
    /// `per_minute` / `per_period` / `sliding_window` / `fixed_window` for a zero rate,
    /// period or window, `burst` for a zero burst (or a window over 100 years).
    pub fn build(mut self) -> Result<RateLimitLayer<M>, ConfigError> {
        let Some(rate) = self.rate else {
            return Err(config_error(
                "rate",
                "is not set: call per_second, per_minute, per_period or a window",
            ));
        };
        let mut main = Spec::new(rate);
        if let Some(burst) = self.burst {
            main = main.with_burst(burst);
        }
        main.margin = self.margin;
        let mut specs = vec![main];
        let mut keys = Vec::new();
        for limit in std::mem::take(&mut self.limits) {
            let (spec, key) = limit.into_parts();
            specs.push(spec);
            keys.push(key);
        }
        let store = match &self.store {
            None => Store::memory(MemoryStore::new(&specs)?),
            Some(make) => make(&rules(&specs)?, main.quota()?)?,
        };
        let limiter = RateLimiter::with_keys(store, keys);
        Ok(self.finish(limiter))
    }

    /// The layer, on an existing limiter: it shares that limiter's buckets, queues and
    /// stats (a process-wide bucket).
    ///
    /// The quota comes from the limiter's store, so setting a rate or a burst on this
    /// builder is an error naming that field.
    pub fn build_with_limiter(
        self,
        limiter: RateLimiter,
    ) -> Result<RateLimitLayer<M>, ConfigError> {
        if let Some(rate) = self.rate {
            return Err(config_error(
                rate.field(),
                "cannot be set with a shared limiter: the limiter's store has the quota",
            ));
        }
        if self.burst.is_some() {
            return Err(config_error(
                "burst",
                "cannot be set with a shared limiter: the limiter's store has the quota",
            ));
        }
        if !self.limits.is_empty() {
            return Err(config_error(
                "limit",
                "cannot be added with a shared limiter: the limiter's store has the limits",
            ));
        }
        Ok(self.finish(limiter))
    }

    fn finish(self, limiter: RateLimiter) -> RateLimitLayer<M> {
        limiter.counters().meter().set_name(self.name);
        RateLimitLayer {
            policy: Arc::new(Policy {
                key: self.key,
                cost: self.cost,
                max_wait: self.max_wait,
                answer: self.answer,
                stamp: self.stamp,
                unkeyed_logged: AtomicBool::new(false),
            }),
            limiter,
            mode: PhantomData,
        }
    }
}

/// # Reject mode: the server's answers
impl RateLimitBuilder<Reject> {
    /// Adds the IETF `RateLimit-Policy` and `RateLimit` fields to every admitted
    /// response (draft-ietf-httpapi-ratelimit-headers): `"ratewise";q=<burst>;w=<window>`
    /// and `"ratewise";r=<cells left>;t=<seconds until the bucket is full>`: `q` and `w`
    /// of the main limit, `r` the fewest cells any of the request's limits has left.
    /// They are added to any the inner service wrote (both are lists). Off
    /// by default; a bypassed request (cost 0) gets none. A `429` always carries them.
    pub fn ratelimit_headers(mut self, on: bool) -> Self {
        self.stamp = on;
        self
    }

    /// Answers a refused request with `answer(&refusal)` instead of the default
    /// `application/problem+json` body. The [`Refusal`] tells why
    /// ([`kind`](Refusal::kind)), for which key and how long waiting would take
    /// ([`retry_after`](Refusal::retry_after)). The layer adds `Retry-After`,
    /// `RateLimit` and `RateLimit-Policy` unless the answer has them, and turns the
    /// `String` body into the service's body type (`From<String>`: axum's `Body`,
    /// `Full<Bytes>`, `String`...).
    ///
    /// ```
    /// use http::{header, Response, StatusCode};
    /// use ratewise::{RateLimitLayer, Refusal};
    ///
    /// let layer = RateLimitLayer::builder()
    ///     .per_second(10)
    ///     .reject()
    ///     .respond_with(|refusal: &Refusal| {
    ///         let secs = refusal.retry_after().map_or(1, |d| d.as_secs().max(1));
    ///         let mut res = Response::new(format!("slow down, try again in {secs} s\n"));
    ///         *res.status_mut() = StatusCode::TOO_MANY_REQUESTS;
    ///         res.headers_mut().insert(header::CONTENT_TYPE, "text/plain".parse().unwrap());
    ///         res
    ///     })
    ///     .build()?;
    /// # let _ = layer;
    /// # Ok::<(), ratewise::ConfigError>(())
    /// ```
    pub fn respond_with(
        mut self,
        answer: impl Fn(&Refusal) -> Response<String> + Send + Sync + 'static,
    ) -> Self {
        self.answer = Some(Arc::new(answer));
        self
    }
}

impl<M> fmt::Debug for RateLimitBuilder<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimitBuilder")
            .field("rate", &self.rate)
            .field("burst", &self.burst)
            .field("max_wait", &self.max_wait)
            .field("mode", &mode_name::<M>())
            .finish_non_exhaustive()
    }
}
