//! The file's three sections, `[rate_limit]`, `[cooldown]` and `[retry]`, each applied
//! to its layer's builder through the builder's own calls.

use std::time::Duration;

use serde::{de, Deserialize, Deserializer};

use super::{at, duration, key::KeyConfig};
use crate::{
    rate_limit::{Limit, RateLimitBuilder, RateLimitLayer},
    retry::Jitter,
    stack::ClientStackBuilder,
    vocabulary::{ConfigError, LayerKind},
};

/// `[rate_limit]`: the main rate and its settings, and other limits.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RateLimitConfig {
    per_second: Option<u32>,
    per_minute: Option<u32>,
    #[serde(default, deserialize_with = "duration::optional")]
    per_period: Option<Duration>,
    sliding_window: Option<WindowConfig>,
    fixed_window: Option<WindowConfig>,
    burst: Option<u32>,
    #[serde(default, deserialize_with = "duration::optional")]
    margin: Option<Duration>,
    margin_percent: Option<u32>,
    #[serde(default, deserialize_with = "duration::optional")]
    max_wait: Option<Duration>,
    key: Option<KeyConfig>,
    #[serde(default)]
    limits: Vec<LimitConfig>,
}

/// `[[rate_limit.limits]]`: one more limit, with its own key.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitConfig {
    per_second: Option<u32>,
    per_minute: Option<u32>,
    #[serde(default, deserialize_with = "duration::optional")]
    per_period: Option<Duration>,
    sliding_window: Option<WindowConfig>,
    fixed_window: Option<WindowConfig>,
    burst: Option<u32>,
    #[serde(default, deserialize_with = "duration::optional")]
    margin: Option<Duration>,
    margin_percent: Option<u32>,
    key: Option<KeyConfig>,
}

/// `{ n = 100, window = "5s" }`: at most `n` requests per window.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
struct WindowConfig {
    n: u32,
    #[serde(deserialize_with = "duration::required")]
    window: Duration,
}

/// The one rate a rate section or a limit sets.
#[derive(Debug, Clone, Copy)]
enum Rate {
    Second(u32),
    Minute(u32),
    Period(Duration),
    Sliding(WindowConfig),
    Fixed(WindowConfig),
}

impl Rate {
    /// The one rate among a section's rate keys; two of them are an error at `path`.
    fn one_of(
        per_second: Option<u32>,
        per_minute: Option<u32>,
        per_period: Option<Duration>,
        sliding_window: Option<WindowConfig>,
        fixed_window: Option<WindowConfig>,
        path: &str,
    ) -> Result<Option<Rate>, ConfigError> {
        let set = [
            ("per_second", per_second.map(Rate::Second)),
            ("per_minute", per_minute.map(Rate::Minute)),
            ("per_period", per_period.map(Rate::Period)),
            ("sliding_window", sliding_window.map(Rate::Sliding)),
            ("fixed_window", fixed_window.map(Rate::Fixed)),
        ];
        let mut found: Option<(&'static str, Rate)> = None;
        for (name, rate) in set {
            let Some(rate) = rate else { continue };
            if let Some((first, _)) = found {
                let err = ConfigError::new(
                    LayerKind::RateLimit,
                    name,
                    format!("conflicts with `{first}`: set one rate"),
                );
                return Err(at(err, &join(path, name)));
            }
            found = Some((name, rate));
        }
        Ok(found.map(|(_, rate)| rate))
    }

    fn set(self, b: RateLimitBuilder) -> RateLimitBuilder {
        match self {
            Rate::Second(n) => b.per_second(n),
            Rate::Minute(n) => b.per_minute(n),
            Rate::Period(p) => b.per_period(p),
            Rate::Sliding(w) => b.sliding_window(w.n, w.window),
            Rate::Fixed(w) => b.fixed_window(w.n, w.window),
        }
    }

    fn limit(self) -> Limit {
        match self {
            Rate::Second(n) => Limit::per_second(n),
            Rate::Minute(n) => Limit::per_minute(n),
            Rate::Period(p) => Limit::per_period(p),
            Rate::Sliding(w) => Limit::sliding_window(w.n, w.window),
            Rate::Fixed(w) => Limit::fixed_window(w.n, w.window),
        }
    }
}

/// `section.key`, or `key` at the top.
fn join(section: &str, key: &str) -> String {
    if section.is_empty() {
        key.to_owned()
    } else {
        format!("{section}.{key}")
    }
}

/// The extractor of an optional key, or a [`ConfigError`] at `section.key.<variant>`.
fn extractor(
    key: Option<&KeyConfig>,
    layer: LayerKind,
    section: &str,
) -> Result<Option<super::key::FileKey>, ConfigError> {
    let Some(key) = key else { return Ok(None) };
    key.extractor().map(Some).map_err(|(variant, reason)| {
        let err = ConfigError::new(layer, "key", reason);
        at(err, &format!("{section}.key.{variant}"))
    })
}

impl LimitConfig {
    /// The limit; checked alone (a throwaway layer with it as its only other limit), so
    /// that its errors name the limit's index.
    fn limit(self, path: &str) -> Result<Limit, ConfigError> {
        let rate = Rate::one_of(
            self.per_second,
            self.per_minute,
            self.per_period,
            self.sliding_window,
            self.fixed_window,
            path,
        )?;
        let Some(rate) = rate else {
            let err = ConfigError::new(
                LayerKind::RateLimit,
                "rate",
                "is not set: give per_second, per_minute, per_period, sliding_window or fixed_window",
            );
            return Err(at(err, path));
        };
        let mut limit = rate.limit();
        if let Some(burst) = self.burst {
            limit = limit.burst(burst);
        }
        if let Some(margin) = self.margin {
            limit = limit.margin(margin);
        }
        if let Some(percent) = self.margin_percent {
            limit = limit.margin_percent(percent);
        }
        RateLimitLayer::builder()
            .per_second(1)
            .limit(limit.clone())
            .build()
            .map_err(|err| {
                let path = join(path, err.field());
                at(err, &path)
            })?;
        Ok(
            match extractor(self.key.as_ref(), LayerKind::RateLimit, path)? {
                Some(key) => limit.key(key),
                None => limit,
            },
        )
    }
}

impl RateLimitConfig {
    pub(super) fn apply(self, b: ClientStackBuilder) -> Result<ClientStackBuilder, ConfigError> {
        let rate = Rate::one_of(
            self.per_second,
            self.per_minute,
            self.per_period,
            self.sliding_window,
            self.fixed_window,
            "rate_limit",
        )?;
        let key = extractor(self.key.as_ref(), LayerKind::RateLimit, "rate_limit")?;
        let limits = self
            .limits
            .into_iter()
            .enumerate()
            .map(|(i, limit)| limit.limit(&format!("rate_limit.limits[{i}]")))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(b.rate_limit(|mut rl| {
            // The rate first: setting one resets the burst.
            if let Some(rate) = rate {
                rl = rate.set(rl);
            }
            if let Some(burst) = self.burst {
                rl = rl.burst(burst);
            }
            if let Some(margin) = self.margin {
                rl = rl.margin(margin);
            }
            if let Some(percent) = self.margin_percent {
                rl = rl.margin_percent(percent);
            }
            if let Some(max_wait) = self.max_wait {
                rl = rl.max_wait(max_wait);
            }
            if let Some(key) = key {
                rl = rl.key(key);
            }
            limits.into_iter().fold(rl, RateLimitBuilder::limit)
        }))
    }
}

/// `{ base = "1s", cap = "60s" }`: an exponential or linear backoff.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
struct BackoffConfig {
    #[serde(deserialize_with = "duration::required")]
    base: Duration,
    #[serde(deserialize_with = "duration::required")]
    cap: Duration,
}

/// `[cooldown]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CooldownConfig {
    exponential: Option<BackoffConfig>,
    linear: Option<BackoffConfig>,
    #[serde(default, deserialize_with = "duration::optional")]
    max_cooldown: Option<Duration>,
    #[serde(default, deserialize_with = "duration::optional")]
    precheck: Option<Duration>,
    #[serde(default, deserialize_with = "duration::optional")]
    max_wait: Option<Duration>,
    fail_fast: Option<bool>,
    key: Option<KeyConfig>,
}

impl CooldownConfig {
    /// The key that holds the backoff's `base` and `cap`.
    pub(super) fn backoff_key(&self) -> &'static str {
        if self.linear.is_some() {
            "linear"
        } else {
            "exponential"
        }
    }

    pub(super) fn apply(self, b: ClientStackBuilder) -> Result<ClientStackBuilder, ConfigError> {
        let conflict = |field: &'static str, other: &str, what: &str| {
            let err = ConfigError::new(
                LayerKind::Cooldown,
                field,
                format!("conflicts with `{other}`: {what}"),
            );
            Err(at(err, &format!("cooldown.{field}")))
        };
        if self.exponential.is_some() && self.linear.is_some() {
            return conflict("linear", "exponential", "set one backoff");
        }
        let fail_fast = self.fail_fast == Some(true);
        if fail_fast && self.max_wait.is_some() {
            return conflict("fail_fast", "max_wait", "a request waits or fails fast");
        }
        let key = extractor(self.key.as_ref(), LayerKind::Cooldown, "cooldown")?;
        Ok(b.cooldown(|mut c| {
            if let Some(e) = self.exponential {
                c = c.exponential(e.base, e.cap);
            }
            if let Some(l) = self.linear {
                c = c.linear(l.base, l.cap);
            }
            if let Some(max) = self.max_cooldown {
                c = c.max_cooldown(max);
            }
            if let Some(precheck) = self.precheck {
                c = c.precheck(precheck);
            }
            if let Some(max_wait) = self.max_wait {
                c = c.wait(max_wait);
            }
            if fail_fast {
                c = c.fail_fast();
            }
            match key {
                Some(key) => c.key(key),
                None => c,
            }
        }))
    }
}

/// `{ ttl = "10s", min_per_sec = 1, retry_percent = 0.2 }`: a tower `TpsBudget`.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
struct TpsBudgetConfig {
    #[serde(deserialize_with = "duration::required")]
    ttl: Duration,
    min_per_sec: u32,
    retry_percent: f32,
}

/// `[retry]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RetryConfig {
    max_attempts: Option<u32>,
    #[serde(default, deserialize_with = "duration::optional")]
    max_delay: Option<Duration>,
    #[serde(default, deserialize_with = "duration::optional")]
    deadline: Option<Duration>,
    exponential: Option<BackoffConfig>,
    #[serde(default, deserialize_with = "duration::list")]
    schedule: Option<Vec<Duration>>,
    #[serde(default, deserialize_with = "jitter")]
    jitter: Option<Jitter>,
    tps_budget: Option<TpsBudgetConfig>,
}

/// `"none"`, `"full"` or `"equal"`.
fn jitter<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Jitter>, D::Error> {
    const NAMES: &[&str] = &["none", "full", "equal"];
    let Some(name) = Option::<String>::deserialize(d)? else {
        return Ok(None);
    };
    match name.as_str() {
        "none" => Ok(Some(Jitter::None)),
        "full" => Ok(Some(Jitter::Full)),
        "equal" => Ok(Some(Jitter::Equal)),
        other => Err(de::Error::unknown_variant(other, NAMES)),
    }
}

impl RetryConfig {
    pub(super) fn apply(self, b: ClientStackBuilder) -> Result<ClientStackBuilder, ConfigError> {
        if self.exponential.is_some() && self.schedule.is_some() {
            let err = ConfigError::new(
                LayerKind::Retry,
                "schedule",
                "conflicts with `exponential`: set one way to space the retries",
            );
            return Err(at(err, "retry.schedule"));
        }
        Ok(b.retry(|mut r| {
            if let Some(n) = self.max_attempts {
                r = r.max_attempts(n);
            }
            if let Some(max) = self.max_delay {
                r = r.max_delay(max);
            }
            if let Some(deadline) = self.deadline {
                r = r.deadline(deadline);
            }
            if let Some(e) = self.exponential {
                r = r.exponential(e.base, e.cap);
            }
            if let Some(delays) = self.schedule {
                r = r.schedule(delays);
            }
            if let Some(jitter) = self.jitter {
                r = r.jitter(jitter);
            }
            if let Some(t) = self.tps_budget {
                r = r.tps_budget(t.ttl, t.min_per_sec, t.retry_percent);
            }
            r
        }))
    }
}
