//! [`CooldownLayer`], its builder and its configuration types.

use std::{fmt, sync::Arc, time::Duration};

use tower::Layer;

use super::{
    events::{no_callback, CooldownEvent, OnCooldownEvent},
    service::Cooldown,
    state::{CooldownHandle, Shared},
    stats::CooldownStats,
    store::CooldownStore,
};
use crate::{
    key::{Authority, KeyExtractor, SharedKey},
    util,
    vocabulary::{ConfigError, LayerKind},
};

/// How long the layer's own backoff is after the `n`-th consecutive rate-limited answer.
///
/// The server's retry hint wins when it is longer (see [`CooldownLayer`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Backoff {
    /// `base * 2^(n-1)`, at most `cap`: 1 s, 2 s, 4 s, 8 s, ... for a 1 s base.
    Exponential {
        /// The first cooldown.
        base: Duration,
        /// The longest backoff.
        cap: Duration,
    },
    /// `base * n`, at most `cap`: 1 s, 2 s, 3 s, ... for a 1 s base.
    Linear {
        /// The first cooldown.
        base: Duration,
        /// The longest backoff.
        cap: Duration,
    },
}

impl Backoff {
    /// Exponential backoff: `base * 2^(n-1)`, at most `cap`.
    pub(crate) fn exponential(base: Duration, cap: Duration) -> Self {
        Backoff::Exponential { base, cap }
    }

    /// Linear backoff: `base * n`, at most `cap`.
    pub(crate) fn linear(base: Duration, cap: Duration) -> Self {
        Backoff::Linear { base, cap }
    }

    /// The backoff after the `n`-th consecutive rate-limited answer (`n` from 1; 0 is
    /// treated as 1). Saturates at `cap`, never overflows.
    pub(crate) fn delay(&self, n: u32) -> Duration {
        match *self {
            Backoff::Exponential { base, cap } => util::exponential(base, cap, n),
            Backoff::Linear { base, cap } => util::linear(base, cap, n),
        }
    }

    fn base(&self) -> Duration {
        match *self {
            Backoff::Exponential { base, .. } | Backoff::Linear { base, .. } => base,
        }
    }

    fn cap(&self) -> Duration {
        match *self {
            Backoff::Exponential { cap, .. } | Backoff::Linear { cap, .. } => cap,
        }
    }
}

impl Default for Backoff {
    /// Exponential from 1 s, capped at 60 s.
    fn default() -> Self {
        Backoff::exponential(Duration::from_secs(1), Duration::from_secs(60))
    }
}

/// What a request does when its key is cooling down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Wait (in the response future, with `tokio::time`) when the cooldown ends within
    /// `max_wait` of the request's arrival; otherwise fail at once, without sleeping,
    /// with a [`Refusal`](crate::Refusal) of kind
    /// [`CoolingDown`](crate::vocabulary::RefusalKind::CoolingDown). A request that
    /// meets a half-open key waits for the probe's answer until the same deadline.
    Wait {
        /// The longest a request may wait in total.
        max_wait: Duration,
    },
    /// Fail at once with a [`Refusal`](crate::Refusal) while the key cools
    /// ([`CoolingDown`](crate::vocabulary::RefusalKind::CoolingDown)), and while a probe
    /// is in flight on a half-open key ([`Probing`](crate::vocabulary::RefusalKind::Probing)).
    FailFast,
}

impl Default for Mode {
    /// Wait up to 10 s.
    fn default() -> Self {
        Mode::Wait {
            max_wait: Duration::from_secs(10),
        }
    }
}

/// The validated configuration shared by every clone.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Config {
    pub(crate) backoff: Backoff,
    pub(crate) max_cooldown: Option<Duration>,
    pub(crate) precheck: Duration,
    pub(crate) mode: Mode,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            backoff: Backoff::default(),
            max_cooldown: None,
            precheck: Duration::ZERO,
            mode: Mode::default(),
        }
    }
}

/// Per-key backoff after a rate-limited answer, honouring the server's retry hint.
///
/// Built with [`CooldownLayer::builder`]; see [the guide](crate::guide#cooldown) for the
/// whole behaviour. Cloning the layer (or the services it makes) shares one cooldown table:
/// apply clones of one layer to several stacks to make them cool together, and use
/// [`handle`](CooldownLayer::handle) to query keys and counters from outside.
pub struct CooldownLayer {
    shared: Arc<Shared>,
    key: SharedKey,
}

impl CooldownLayer {
    /// A layer with the defaults: keyed by authority, exponential backoff from 1 s
    /// capped at 60 s, no `max_cooldown`, no precheck, waiting up to 10 s.
    pub fn new() -> Self {
        CooldownLayer {
            shared: Shared::new(Config::default(), no_callback(), None),
            key: Arc::new(Authority),
        }
    }

    /// A builder starting from the defaults of [`new`](CooldownLayer::new).
    pub fn builder() -> CooldownBuilder {
        CooldownBuilder {
            key: Arc::new(Authority),
            config: Config::default(),
            on_event: no_callback(),
            store: None,
            name: None,
        }
    }
}

impl Default for CooldownLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl CooldownLayer {
    /// A handle on the shared state: per-key state queries and counters.
    pub fn handle(&self) -> CooldownHandle {
        CooldownHandle::new(self.shared.clone())
    }

    /// The counters, as a snapshot (the same as `handle().stats()`).
    pub fn stats(&self) -> CooldownStats {
        self.shared.stats.snapshot()
    }
}

impl Clone for CooldownLayer {
    fn clone(&self) -> Self {
        CooldownLayer {
            shared: self.shared.clone(),
            key: self.key.clone(),
        }
    }
}

impl fmt::Debug for CooldownLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CooldownLayer")
            .field("config", &self.shared.config)
            .finish()
    }
}

impl<S> Layer<S> for CooldownLayer {
    type Service = Cooldown<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Cooldown::new(inner, self.shared.clone(), self.key.clone())
    }
}

/// Builds a [`CooldownLayer`]; every method changes one setting.
pub struct CooldownBuilder {
    key: SharedKey,
    config: Config,
    on_event: OnCooldownEvent,
    store: Option<Arc<dyn CooldownStore>>,
    name: Option<Arc<str>>,
}

impl CooldownBuilder {
    /// The key extractor (default [`Authority`]): any
    /// [`KeyExtractor`](crate::key::KeyExtractor), including closures.
    pub fn key(mut self, key: impl KeyExtractor) -> Self {
        self.key = Arc::new(key);
        self
    }

    /// Whether the key reads the request body.
    pub(crate) fn needs_body(&self) -> bool {
        self.key.needs_body()
    }

    /// Exponential backoff, `base * 2^(n-1)` capped at `cap` (the default, with 1 s and
    /// 60 s).
    pub fn exponential(mut self, base: Duration, cap: Duration) -> Self {
        self.config.backoff = Backoff::exponential(base, cap);
        self
    }

    /// Linear backoff, `base * n` capped at `cap`.
    pub fn linear(mut self, base: Duration, cap: Duration) -> Self {
        self.config.backoff = Backoff::linear(base, cap);
        self
    }

    /// The longest any cooldown may last, the server's retry hint included (default:
    /// none, the server's hint always wins).
    ///
    /// A Telegram ban of `retry_after: 4310` with `max_cooldown(600 s)` cools 600 s;
    /// the [`Started`](super::CooldownEvent::Started) event then says `capped: true`
    /// and `requested: 4310 s`. The probe sent after 600 s is answered with the
    /// remaining ban and the key cools again: one request per `max_cooldown` reaches a
    /// server that keeps banning.
    pub fn max_cooldown(mut self, max_cooldown: Duration) -> Self {
        self.config.max_cooldown = Some(max_cooldown);
        self
    }

    /// The precheck margin (an LLM sidecar's `precheck_cooldown`; default zero): a key
    /// whose cooldown ends within `threshold` of now still counts as cooling, on both
    /// sides of the nominal end, so the key opens `threshold` after the cooldown the
    /// server asked for. This keeps the probe from hitting the server right as its own
    /// window expires (its clock, rounding and the request's transit all run late). The
    /// margin is part of a cooling refusal's [`retry_after`](crate::Refusal::retry_after)
    /// and of [`KeyState::Cooling`](super::KeyState::Cooling)'s `until`.
    pub fn precheck(mut self, threshold: Duration) -> Self {
        self.config.precheck = threshold;
        self
    }

    /// Wait mode (the default, with 10 s): a request whose key cools waits (in the
    /// response future, with `tokio::time`) when the cooldown ends within `max_wait`
    /// of its arrival; otherwise it fails at once, without sleeping, with a
    /// [`Refusal`](crate::Refusal) of kind
    /// [`CoolingDown`](crate::vocabulary::RefusalKind::CoolingDown). A request that
    /// meets a half-open key waits for the probe's answer until the same deadline.
    pub fn wait(mut self, max_wait: Duration) -> Self {
        self.config.mode = Mode::Wait { max_wait };
        self
    }

    /// Fail-fast mode: a request fails at once with a [`Refusal`](crate::Refusal) while
    /// its key cools ([`CoolingDown`](crate::vocabulary::RefusalKind::CoolingDown)),
    /// and while a probe is in flight on a half-open key
    /// ([`Probing`](crate::vocabulary::RefusalKind::Probing)).
    pub fn fail_fast(mut self) -> Self {
        self.config.mode = Mode::FailFast;
        self
    }

    /// A callback for every [`CooldownEvent`](super::CooldownEvent). It runs on the
    /// task that saw the answer, outside the layer's lock; keep it short. Replaces the
    /// previous one; the default does nothing. `tracing` events are emitted regardless.
    pub fn on_event(mut self, on_event: impl Fn(&CooldownEvent) + Send + Sync + 'static) -> Self {
        self.on_event = Arc::new(on_event);
        self
    }

    /// Shares the cooldowns with every process that uses the same store (for example
    /// [`Redis::cooldown`](crate::redis::Redis::cooldown)): each admission asks the
    /// store where the key stands, so a cooldown started by another process holds
    /// here before this process sends again, and one probe goes at its end, across
    /// all processes.
    pub fn store(mut self, store: impl CooldownStore) -> Self {
        self.store = Some(Arc::new(store));
        self
    }

    /// The `name` label of the layer's [metrics](crate::metrics) (default `"default"`).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into().into());
        self
    }

    /// The layer, or the first setting that makes no sense.
    ///
    /// Refused: a zero `base`; a `cap` below `base`; a `max_cooldown` of zero or below
    /// `base`.
    pub fn build(self) -> Result<CooldownLayer, ConfigError> {
        let backoff = self.config.backoff;
        if backoff.base().is_zero() {
            return Err(config_error("base", "must be greater than zero"));
        }
        if backoff.cap() < backoff.base() {
            return Err(config_error("cap", "must be at least `base`"));
        }
        if let Some(max) = self.config.max_cooldown {
            if max.is_zero() {
                return Err(config_error("max_cooldown", "must be greater than zero"));
            }
            if max < backoff.base() {
                return Err(config_error("max_cooldown", "must be at least `base`"));
            }
        }
        let shared = Shared::new(self.config, self.on_event, self.store);
        shared.stats.meter.set_name(self.name);
        Ok(CooldownLayer {
            shared,
            key: self.key,
        })
    }
}

fn config_error(field: &'static str, reason: &'static str) -> ConfigError {
    ConfigError::new(LayerKind::Cooldown, field, reason)
}

impl fmt::Debug for CooldownBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CooldownBuilder")
            .field("config", &self.config)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn exponential_doubles_and_caps() {
        let b = Backoff::exponential(S, 5 * S);
        let got: Vec<_> = (1..=5).map(|n| b.delay(n)).collect();
        assert_eq!(got, [S, 2 * S, 4 * S, 5 * S, 5 * S]);
        assert_eq!(b.delay(0), S);
        assert_eq!(b.delay(40), 5 * S, "shift overflow saturates at cap");
        assert_eq!(b.delay(u32::MAX), 5 * S);
    }

    #[test]
    fn linear_grows_by_base_and_caps() {
        let b = Backoff::linear(2 * S, 5 * S);
        let got: Vec<_> = (1..=4).map(|n| b.delay(n)).collect();
        assert_eq!(got, [2 * S, 4 * S, 5 * S, 5 * S]);
        let huge = Backoff::linear(Duration::MAX / 2, Duration::MAX);
        assert_eq!(
            huge.delay(u32::MAX),
            Duration::MAX,
            "mul overflow saturates"
        );
    }

    #[test]
    fn builder_names_bad_fields() {
        let err = |b: CooldownBuilder| b.build().unwrap_err().field();
        assert_eq!(
            err(CooldownLayer::builder().exponential(Duration::ZERO, S)),
            "base"
        );
        assert_eq!(err(CooldownLayer::builder().linear(2 * S, S)), "cap");
        assert_eq!(
            err(CooldownLayer::builder().max_cooldown(Duration::ZERO)),
            "max_cooldown"
        );
        assert_eq!(
            err(CooldownLayer::builder()
                .exponential(10 * S, 60 * S)
                .max_cooldown(S)),
            "max_cooldown"
        );
        assert!(CooldownLayer::builder()
            .max_cooldown(S)
            .wait(Duration::ZERO)
            .build()
            .is_ok());
    }
}
