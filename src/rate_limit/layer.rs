//! [`RateLimitLayer`] and its builder.

use std::{fmt, marker::PhantomData, num::NonZeroU32, sync::Arc, time::Duration};

use tower::Layer;

use super::{
    limiter::RateLimiter,
    policy::{NoBypass, Reject, UnitCost, Wait},
    quota::{config_error, Quota},
    service::RateLimit,
    stats::Stats,
    store::{GovernorStore, RateLimitStore},
};
use crate::{key::Global, vocabulary::ConfigError};

/// Keyed GCRA rate limiting for a tower stack: waits (clients) or answers `429`
/// (servers). See the [module docs](super) for the whole story.
///
/// Built with [`RateLimitLayer::builder`]. It holds configuration and a handle to its
/// [`RateLimiter`]: every clone of the layer, and every service it makes, shares that
/// one limiter, so one layer value cloned into several stacks is one process-wide
/// bucket per key.
///
/// Type parameters: `K` the [`KeyExtractor`](crate::key::KeyExtractor), `M` the mode
/// ([`Wait`] or [`Reject`]), `St` the [`RateLimitStore`], `Byp` the
/// [`Bypass`](super::Bypass) predicate, `C` the [`Cost`](super::Cost) function.
pub struct RateLimitLayer<K = Global, M = Wait, St = GovernorStore, Byp = NoBypass, C = UnitCost> {
    policy: Arc<Policy<K, Byp, C>>,
    limiter: RateLimiter<St>,
    mode: PhantomData<fn() -> M>,
}

/// The per-request rules of a layer, shared by its clones and services.
pub(crate) struct Policy<K, Byp, C> {
    pub(crate) key: K,
    pub(crate) bypass: Byp,
    pub(crate) cost: C,
    pub(crate) max_wait: Option<Duration>,
}

impl RateLimitLayer {
    /// A builder: set a rate (`per_second`, `per_minute` or `per_period`), optionally a
    /// burst, `max_wait`, key, mode, bypass and cost, then
    /// [`build`](RateLimitBuilder::build).
    pub fn builder() -> RateLimitBuilder {
        RateLimitBuilder {
            rate: None,
            burst: None,
            max_wait: None,
            key: Global,
            bypass: NoBypass,
            cost: UnitCost,
            mode: PhantomData,
        }
    }
}

impl<K, M, St, Byp, C> RateLimitLayer<K, M, St, Byp, C> {
    /// The shared limiter handle: pass it to
    /// [`build_with_limiter`](RateLimitBuilder::build_with_limiter) to make another
    /// layer (another key, body type, mode or bypass rule) on the same buckets.
    pub fn limiter(&self) -> RateLimiter<St> {
        self.limiter.clone()
    }

    /// The limiter's counters.
    pub fn stats(&self) -> Stats {
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

impl<K, M, St, Byp, C> Clone for RateLimitLayer<K, M, St, Byp, C> {
    fn clone(&self) -> Self {
        RateLimitLayer {
            policy: self.policy.clone(),
            limiter: self.limiter.clone(),
            mode: PhantomData,
        }
    }
}

impl<K, M, St: fmt::Debug, Byp, C> fmt::Debug for RateLimitLayer<K, M, St, Byp, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimitLayer")
            .field("mode", &mode_name::<M>())
            .field("key", &std::any::type_name::<K>())
            .field("max_wait", &self.policy.max_wait)
            .field("limiter", &self.limiter)
            .finish()
    }
}

impl<S, K, M, St, Byp, C> Layer<S> for RateLimitLayer<K, M, St, Byp, C> {
    type Service = RateLimit<S, K, M, St, Byp, C>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimit::new(inner, self.policy.clone(), self.limiter.clone())
    }
}

fn mode_name<M>() -> &'static str {
    let name = std::any::type_name::<M>();
    name.rsplit("::").next().unwrap_or(name)
}

#[derive(Debug, Clone, Copy)]
enum Rate {
    Second(u32),
    Minute(u32),
    Period(Duration),
}

impl Rate {
    fn field(self) -> &'static str {
        match self {
            Rate::Second(_) => "per_second",
            Rate::Minute(_) => "per_minute",
            Rate::Period(_) => "per_period",
        }
    }
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
pub struct RateLimitBuilder<K = Global, M = Wait, Byp = NoBypass, C = UnitCost> {
    rate: Option<Rate>,
    burst: Option<u32>,
    max_wait: Option<Duration>,
    key: K,
    bypass: Byp,
    cost: C,
    mode: PhantomData<fn() -> M>,
}

impl<K, M, Byp, C> RateLimitBuilder<K, M, Byp, C> {
    /// `n` cells per second (one every `1 s / n`); the burst defaults to `n`.
    pub fn per_second(mut self, n: u32) -> Self {
        self.rate = Some(Rate::Second(n));
        self
    }

    /// `n` cells per minute (one every `60 s / n`); the burst defaults to `n`.
    pub fn per_minute(mut self, n: u32) -> Self {
        self.rate = Some(Rate::Minute(n));
        self
    }

    /// One cell every `period`; the burst defaults to 1.
    pub fn per_period(mut self, period: Duration) -> Self {
        self.rate = Some(Rate::Period(period));
        self
    }

    /// The most cells available at once (and the most one request can cost).
    pub fn burst(mut self, burst: u32) -> Self {
        self.burst = Some(burst);
        self
    }

    /// Wait mode: the longest a request may wait. A request that would need longer
    /// fails at once with [`MaxWaitExceeded`](super::MaxWaitExceeded). Unbounded by
    /// default; `Duration::ZERO` refuses every request that cannot go now. Ignored in
    /// reject mode.
    pub fn max_wait(mut self, max_wait: Duration) -> Self {
        self.max_wait = Some(max_wait);
        self
    }

    /// How requests are keyed (default [`Global`]: one bucket for all): any
    /// [`KeyExtractor`](crate::key::KeyExtractor), e.g. a closure.
    pub fn key<K2>(self, key: K2) -> RateLimitBuilder<K2, M, Byp, C> {
        self.map(|_, bypass, cost| (key, bypass, cost))
    }

    /// Requests for which `bypass` returns true are never throttled and take no cell.
    pub fn bypass<Byp2>(self, bypass: Byp2) -> RateLimitBuilder<K, M, Byp2, C> {
        self.map(|key, _, cost| (key, bypass, cost))
    }

    /// How many cells each request takes (default 1).
    pub fn cost<C2>(self, cost: C2) -> RateLimitBuilder<K, M, Byp, C2> {
        self.map(|key, bypass, _| (key, bypass, cost))
    }

    /// Reject mode (servers): over the limit, answer `429` at once.
    pub fn reject(self) -> RateLimitBuilder<K, Reject, Byp, C> {
        self.map(|key, bypass, cost| (key, bypass, cost))
    }

    /// Wait mode (clients, the default): over the limit, wait to be admitted.
    pub fn wait(self) -> RateLimitBuilder<K, Wait, Byp, C> {
        self.map(|key, bypass, cost| (key, bypass, cost))
    }

    /// The builder with its key, bypass and cost passed through `f` and its mode set to
    /// `M2` (inferred): every call that changes a type parameter is one of these.
    fn map<K2, M2, Byp2, C2>(
        self,
        f: impl FnOnce(K, Byp, C) -> (K2, Byp2, C2),
    ) -> RateLimitBuilder<K2, M2, Byp2, C2> {
        let (key, bypass, cost) = f(self.key, self.bypass, self.cost);
        RateLimitBuilder {
            rate: self.rate,
            burst: self.burst,
            max_wait: self.max_wait,
            key,
            bypass,
            cost,
            mode: PhantomData,
        }
    }

    /// The layer, with a new in-memory [`GovernorStore`].
    ///
    /// Errors name the field: `rate` when no rate was set, `per_second` /
    /// `per_minute` / `per_period` for a zero rate or period, `burst` for a zero burst
    /// (or a window over 100 years).
    pub fn build(self) -> Result<RateLimitLayer<K, M, GovernorStore, Byp, C>, ConfigError> {
        let Some(rate) = self.rate else {
            return Err(config_error(
                "rate",
                "is not set: call per_second, per_minute or per_period",
            ));
        };
        let nonzero = |n: u32| NonZeroU32::new(n).ok_or(config_error(rate.field(), "must be at least 1 (got 0)"));
        let quota = match rate {
            Rate::Second(n) => Quota::per_second(nonzero(n)?),
            Rate::Minute(n) => Quota::per_minute(nonzero(n)?),
            Rate::Period(period) => Quota::per_period(period)?,
        };
        let quota = match self.burst {
            Some(burst) => {
                let burst = NonZeroU32::new(burst)
                    .ok_or(config_error("burst", "must be at least 1 (got 0)"))?;
                quota.with_burst(burst)?
            }
            None => quota,
        };
        let limiter = RateLimiter::new(GovernorStore::new(quota));
        Ok(self.finish(limiter))
    }

    /// The layer, on an existing limiter: it shares that limiter's buckets, queues and
    /// stats (a process-wide bucket), or uses another [`RateLimitStore`].
    ///
    /// The quota comes from the limiter's store, so setting a rate or a burst on this
    /// builder is an error naming that field.
    pub fn build_with_limiter<St: RateLimitStore>(
        self,
        limiter: RateLimiter<St>,
    ) -> Result<RateLimitLayer<K, M, St, Byp, C>, ConfigError> {
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
        Ok(self.finish(limiter))
    }

    fn finish<St>(self, limiter: RateLimiter<St>) -> RateLimitLayer<K, M, St, Byp, C> {
        RateLimitLayer {
            policy: Arc::new(Policy {
                key: self.key,
                bypass: self.bypass,
                cost: self.cost,
                max_wait: self.max_wait,
            }),
            limiter,
            mode: PhantomData,
        }
    }
}

impl<K, M, Byp, C> fmt::Debug for RateLimitBuilder<K, M, Byp, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimitBuilder")
            .field("rate", &self.rate)
            .field("burst", &self.burst)
            .field("max_wait", &self.max_wait)
            .field("mode", &mode_name::<M>())
            .field("key", &std::any::type_name::<K>())
            .finish_non_exhaustive()
    }
}
