//! [`RetryLayer`] and its builder.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tower::retry::budget::{Budget, TpsBudget};
use tower::Layer;

use super::policy::{Config, RetryPolicy, Shared};
use super::schedule::{Jitter, Schedule};
use super::service::Retry;
use super::stats::{Counters, RetryStats};
use crate::vocabulary::{ConfigError, LayerId, LayerKind};

/// Retries rate-limited and transient results as the server asks, or on a schedule,
/// and never waits longer than configured.
///
/// Configuration only: build it with [`RetryLayer::builder`]. Clones, and every service
/// they make, share one [`RetryStats`] and one retry budget.
#[derive(Clone, Debug)]
pub struct RetryLayer {
    shared: Arc<Shared>,
}

impl RetryLayer {
    /// A builder with the defaults: 3 attempts, exponential delays from 100 ms capped at
    /// 10 s without jitter, `max_delay` 60 s, no total deadline, no budget.
    pub fn builder() -> RetryBuilder {
        RetryBuilder::default()
    }

    /// The counters shared by every clone of this layer and the services it made.
    pub fn stats(&self) -> RetryStats {
        self.shared.stats.snapshot()
    }

    /// The policy this layer gives its services, for use with
    /// `tower::retry::Retry::new` or `tower::retry::RetryLayer::new`.
    ///
    /// Used that way, a [`deadline`](RetryBuilder::deadline) only refuses waits that
    /// would end past it: cutting off an attempt in flight is done by this layer's own
    /// service, [`Retry`].
    pub fn policy(&self) -> RetryPolicy {
        RetryPolicy::new(self.shared.clone())
    }
}

impl<S> Layer<S> for RetryLayer {
    type Service = Retry<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Retry::new(self.shared.clone(), inner)
    }
}

#[derive(Debug, Clone)]
enum ScheduleSpec {
    List(Vec<Duration>),
    Exponential { base: Duration, cap: Duration },
}

#[derive(Clone, Default)]
enum BudgetSpec {
    #[default]
    None,
    Shared(Arc<dyn Budget + Send + Sync>),
    Tps {
        ttl: Duration,
        min_per_sec: u32,
        retry_percent: f32,
    },
}

impl fmt::Debug for BudgetSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BudgetSpec::None => f.write_str("None"),
            BudgetSpec::Shared(_) => f.write_str("Shared(Budget)"),
            BudgetSpec::Tps {
                ttl,
                min_per_sec,
                retry_percent,
            } => f
                .debug_struct("Tps")
                .field("ttl", ttl)
                .field("min_per_sec", min_per_sec)
                .field("retry_percent", retry_percent)
                .finish(),
        }
    }
}

/// Builds a [`RetryLayer`]; each method sets one thing, [`build`](Self::build) checks
/// them all.
#[derive(Debug, Clone)]
pub struct RetryBuilder {
    parse_json_body: bool,
    max_attempts: Option<u32>,
    max_delay: Duration,
    deadline: Option<Duration>,
    schedule: ScheduleSpec,
    jitter: Jitter,
    budget: BudgetSpec,
    name: Option<Arc<str>>,
}

impl Default for RetryBuilder {
    fn default() -> Self {
        RetryBuilder {
            parse_json_body: false,
            max_attempts: None,
            max_delay: Duration::from_secs(60),
            deadline: None,
            schedule: ScheduleSpec::Exponential {
                base: Duration::from_millis(100),
                cap: Duration::from_secs(10),
            },
            jitter: Jitter::None,
            budget: BudgetSpec::None,
            name: None,
        }
    }
}

impl RetryBuilder {
    /// The most attempts one call makes, the first included (at least 1; 1 means no
    /// retry). Defaults to one more than the [`schedule`](Self::schedule) list, or 3.
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = Some(attempts);
        self
    }

    /// The longest wait between two attempts (default 60 s). When the server asks for
    /// longer (Telegram's `retry_after` 4310), the layer does not retry: the response
    /// goes back to the caller at once. Scheduled delays must fit under it too.
    pub fn max_delay(mut self, max_delay: Duration) -> Self {
        self.max_delay = max_delay;
        self
    }

    /// One deadline for the whole call, counted from when the call was made
    /// (`Service::call` on this layer's service). No deadline by default.
    ///
    /// Everything the call does is bounded by it: every attempt (the first included)
    /// with whatever the layers below wait inside it (a cooldown's or a rate limiter's
    /// wait, a slow upstream), the waits between attempts, and the readiness waits
    /// before a retry. Two things happen:
    ///
    /// - A retry whose wait would end at or past the deadline is not taken: the last
    ///   result goes back at once (a [`GiveUp::Deadline`](super::GiveUp::Deadline)).
    /// - If the deadline passes while an attempt or wait is still in flight, that is
    ///   dropped and the caller gets a [`DeadlineExceeded`](super::DeadlineExceeded)
    ///   error at the deadline (also a `GiveUp::Deadline`). A response received before
    ///   and retried is not kept.
    ///
    /// The readiness of this layer's service itself (`poll_ready`, before the call is
    /// made) is not part of the call.
    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.deadline = Some(deadline);
        self
    }

    /// Parse each call's body as JSON once, when it is in memory, and put it in the
    /// request's extensions ([`JsonBody`](crate::key::JsonBody)) for the layers below:
    /// keys read from the body ([`json_field`](crate::key::json_field)) use it. A
    /// [`ClientStackLayer`](crate::ClientStackLayer) turns this on when a key needs it.
    pub fn parse_json_body(mut self, parse: bool) -> Self {
        self.parse_json_body = parse;
        self
    }

    /// Explicit delays: retry `n` waits the `n`-th entry, the last entry once the list
    /// runs out (QQ's gateway: 0.5, 1.5, 3.0 s). Replaces [`exponential`](Self::exponential).
    pub fn schedule<I: IntoIterator<Item = Duration>>(mut self, delays: I) -> Self {
        self.schedule = ScheduleSpec::List(delays.into_iter().collect());
        self
    }

    /// Exponential delays: retry `n` waits `base * 2^(n-1)`, at most `cap`. Replaces
    /// [`schedule`](Self::schedule).
    pub fn exponential(mut self, base: Duration, cap: Duration) -> Self {
        self.schedule = ScheduleSpec::Exponential { base, cap };
        self
    }

    /// Randomises scheduled delays (never a wait the server asked for). Default
    /// [`Jitter::None`].
    pub fn jitter(mut self, jitter: Jitter) -> Self {
        self.jitter = jitter;
        self
    }

    /// A retry budget shared with whoever else holds it (for example several layers
    /// sharing one `Arc<TpsBudget>`): every call deposits, every retry withdraws, and a
    /// retry the budget refuses is not taken.
    pub fn budget(mut self, budget: Arc<dyn Budget + Send + Sync>) -> Self {
        self.budget = BudgetSpec::Shared(budget);
        self
    }

    /// A new tower [`TpsBudget`] for this layer and its clones: retries may be
    /// `retry_percent` of calls (0.2 = 20 %) over the last `ttl` (1 to 60 s), plus
    /// `min_per_sec` retries a second regardless. Its parameters are checked by
    /// [`build`](Self::build) instead of panicking like `TpsBudget::new`.
    pub fn tps_budget(mut self, ttl: Duration, min_per_sec: u32, retry_percent: f32) -> Self {
        self.budget = BudgetSpec::Tps {
            ttl,
            min_per_sec,
            retry_percent,
        };
        self
    }

    /// The `name` label of the layer's [metrics](crate::metrics) and of its `call`
    /// span (default `"default"`).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into().into());
        self
    }

    /// Checks the configuration and makes the layer.
    pub fn build(self) -> Result<RetryLayer, ConfigError> {
        let schedule = match self.schedule {
            ScheduleSpec::List(delays) => {
                if delays.is_empty() {
                    return Err(config_error(
                        "schedule",
                        "must list at least one delay (got none)".into(),
                    ));
                }
                Schedule::List(delays.into_boxed_slice())
            }
            ScheduleSpec::Exponential { base, cap } => {
                if base.is_zero() {
                    return Err(config_error(
                        "exponential",
                        "base must be greater than zero".into(),
                    ));
                }
                if cap < base {
                    return Err(config_error(
                        "exponential",
                        format!("cap ({cap:?}) must not be below its base ({base:?})").into(),
                    ));
                }
                Schedule::Exponential { base, cap }
            }
        };
        let max_attempts = match (self.max_attempts, &schedule) {
            (Some(0), _) => {
                return Err(config_error(
                    "max_attempts",
                    "must be at least 1 (got 0)".into(),
                ))
            }
            (Some(n), _) => n,
            (None, Schedule::List(delays)) => {
                u32::try_from(delays.len()).map_or(u32::MAX, |n| n.saturating_add(1))
            }
            (None, Schedule::Exponential { .. }) => 3,
        };
        if schedule.longest() > self.max_delay {
            return Err(config_error(
                "max_delay",
                format!(
                    "({:?}) is shorter than the scheduled delay {:?}",
                    self.max_delay,
                    schedule.longest()
                )
                .into(),
            ));
        }
        if self.deadline.is_some_and(|d| d.is_zero()) {
            return Err(config_error("deadline", "must be greater than zero".into()));
        }
        let budget: Option<Arc<dyn Budget + Send + Sync>> = match self.budget {
            BudgetSpec::None => None,
            BudgetSpec::Shared(b) => Some(b),
            BudgetSpec::Tps {
                ttl,
                min_per_sec,
                retry_percent,
            } => {
                check_tps(ttl, min_per_sec, retry_percent)?;
                Some(Arc::new(TpsBudget::new(ttl, min_per_sec, retry_percent)))
            }
        };
        let stats = Counters::default();
        stats.meter().set_name(self.name);
        Ok(RetryLayer {
            shared: Arc::new(Shared {
                id: LayerId::new(),
                config: Config {
                    parse_json_body: self.parse_json_body,
                    max_attempts,
                    max_delay: self.max_delay,
                    deadline: self.deadline,
                    schedule,
                    jitter: self.jitter,
                },
                stats,
                budget,
            }),
        })
    }
}

fn config_error(field: &'static str, reason: std::borrow::Cow<'static, str>) -> ConfigError {
    ConfigError::new(LayerKind::Retry, field, reason)
}

/// The ranges `TpsBudget::new` asserts, checked without panicking.
fn check_tps(ttl: Duration, min_per_sec: u32, retry_percent: f32) -> Result<(), ConfigError> {
    if ttl < Duration::from_secs(1) || ttl > Duration::from_secs(60) {
        return Err(config_error(
            "ttl",
            "(of `tps_budget`) must be between 1 s and 60 s".into(),
        ));
    }
    if min_per_sec >= i32::MAX as u32 {
        return Err(config_error(
            "min_per_sec",
            "(of `tps_budget`) must be below i32::MAX".into(),
        ));
    }
    if !(0.0..=1000.0).contains(&retry_percent) {
        return Err(config_error(
            "retry_percent",
            "(of `tps_budget`) must be between 0.0 and 1000.0".into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    #[test]
    fn bad_settings_name_their_field() {
        let e = RetryLayer::builder().max_attempts(0).build().unwrap_err();
        assert_eq!(e.field(), "max_attempts");
        let e = RetryLayer::builder().schedule([]).build().unwrap_err();
        assert_eq!(e.field(), "schedule");
        let e = RetryLayer::builder()
            .exponential(secs(2.0), secs(1.0))
            .build()
            .unwrap_err();
        assert_eq!(e.field(), "exponential");
        assert!(e.to_string().contains("cap (1s)"), "{e}");
        let e = RetryLayer::builder()
            .exponential(Duration::ZERO, secs(1.0))
            .build()
            .unwrap_err();
        assert_eq!(e.field(), "exponential");
        let e = RetryLayer::builder()
            .deadline(Duration::ZERO)
            .build()
            .unwrap_err();
        assert_eq!(e.field(), "deadline");
        let e = RetryLayer::builder()
            .max_delay(secs(1.0))
            .schedule([secs(0.5), secs(3.0)])
            .build()
            .unwrap_err();
        assert_eq!(e.field(), "max_delay", "{e}");
        for (ttl, min, pct, field) in [
            (secs(0.5), 1, 0.2, "ttl"),
            (secs(61.0), 1, 0.2, "ttl"),
            (secs(10.0), u32::MAX, 0.2, "min_per_sec"),
            (secs(10.0), 1, -1.0, "retry_percent"),
            (secs(10.0), 1, f32::NAN, "retry_percent"),
            (secs(10.0), 1, 1000.5, "retry_percent"),
        ] {
            let e = RetryLayer::builder()
                .tps_budget(ttl, min, pct)
                .build()
                .unwrap_err();
            assert_eq!(e.field(), field, "{e}");
        }
    }

    #[test]
    fn attempts_default_to_the_schedule_length_plus_one() {
        let layer = RetryLayer::builder()
            .schedule([secs(0.5), secs(1.5), secs(3.0)])
            .build()
            .unwrap();
        assert_eq!(layer.shared.config.max_attempts, 4);
        let layer = RetryLayer::builder().build().unwrap();
        assert_eq!(layer.shared.config.max_attempts, 3);
        let layer = RetryLayer::builder()
            .max_attempts(1)
            .tps_budget(secs(10.0), 1, 0.2)
            .build()
            .unwrap();
        assert_eq!(layer.shared.config.max_attempts, 1);
        assert!(layer.shared.budget.is_some());
    }

    #[test]
    fn clones_share_stats() {
        let layer = RetryLayer::builder().build().unwrap();
        layer.clone().shared.stats.record_call();
        assert_eq!(layer.stats().calls, 1);
        assert_eq!(layer.policy().stats().calls, 1);
    }
}
