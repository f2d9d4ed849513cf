//! What the layers report to the [`metrics`](https://docs.rs/metrics) facade, with the
//! `metrics` feature: every counter of their stats, as it moves.
//!
//! Each layer's stats counters (`stats()` on the layers and handles) also report to
//! whatever recorder is installed (Prometheus, OpenTelemetry, StatsD...), at the same
//! moment and with the same meaning. Every metric carries the labels
//!
//! - `layer`: `rate_limit`, `cooldown`, `retry`, `cache` or `pool`;
//! - `name`: the name given to the layer's builder with `.name("telegram")` (the
//!   platform's for a [`ClientStackLayer::preset`](crate::ClientStackLayer::preset),
//!   else [`DEFAULT_NAME`]);
//! - `reason`, on [`REJECTED`] and [`GIVE_UPS`] only: one of a fixed set of words.
//!
//! No label ever holds a key, a URL or anything else read from a request, so the number
//! of series stays bounded whatever the traffic.
//!
//! | metric | layers | what |
//! |---|---|---|
//! | [`ADMITTED`] | rate_limit | requests admitted |
//! | [`BYPASSED`] | rate_limit | requests that cost 0 |
//! | [`WAITED`] | rate_limit, cooldown, pool | requests that waited, then went on |
//! | [`WAIT_SECONDS`] (histogram) | rate_limit | each admitted request's wait |
//! | [`REJECTED`] | rate_limit, cooldown, cache, pool | requests refused, by `reason` |
//! | [`STORE_ERRORS`] | rate_limit | requests failed because the store could not decide |
//! | [`COOLDOWNS_STARTED`] | cooldown | cooldowns started |
//! | [`COOLDOWNS_EXTENDED`] | cooldown | cooldowns extended by a late answer |
//! | [`MET_COOLDOWN`] | cooldown | requests that met a cooling or half-open key |
//! | [`PROBES`] | cooldown | probe requests sent after a cooldown |
//! | [`CALLS`] | retry, pool | calls made through the layer |
//! | [`RETRIES`] | retry | attempts after the first |
//! | [`HELD`] | retry | resends of a request a layer below held back |
//! | [`NOT_CLONEABLE`] | retry | calls sent once because their body could not be cloned |
//! | [`GIVE_UPS`] | retry | calls given up, by `reason` |
//! | [`CACHE_HITS`] | cache | requests answered from a fresh entry |
//! | [`STALE_SERVES`] | cache | requests answered from a stale entry |
//! | [`CACHE_MISSES`] | cache | requests that found no fresh entry |
//! | [`UPSTREAM_CALLS`] | cache | calls the cache made upstream |
//! | [`COALESCED`] | cache | requests that waited for another's upstream call |
//! | [`FAILOVERS`] | pool | times a call went on to another backend |
//!
//! The `reason` of [`REJECTED`] is `max_wait`, `cost_exceeds_burst` or `over_limit`
//! (a `429` in reject mode) for the rate limiter, `cooling_down` for the cooldown,
//! `endpoint_limited` for the cache, and `all_backends_cooling`, `no_backend_ready` or
//! `no_route` for the pool. The `reason` of [`GIVE_UPS`] is a
//! [`GiveUp`](crate::retry::GiveUp) as its `as_str` spells it.
//!
//! The metrics are looked up in the recorder each time they move, so layers built before
//! the recorder was installed report too.
//!
//! # Example
//!
//! ```
//! # #[cfg(feature = "metrics")] {
//! use ratewise::{metrics, ClientStackLayer, Platform};
//!
//! // Install a recorder first (metrics-exporter-prometheus, ...), then:
//! metrics::describe();
//! let stack = ClientStackLayer::preset(Platform::Telegram).name("alerts-bot").build()?;
//! # let _ = stack;
//! # }
//! # Ok::<(), ratewise::ConfigError>(())
//! ```

use std::{
    fmt,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, OnceLock,
    },
    time::Duration,
};

use crate::vocabulary::LayerKind;

/// The label naming the layer: `rate_limit`, `cooldown`, `retry`, `cache`, `pool`.
pub const LAYER_LABEL: &str = "layer";
/// The label holding the name given to the layer's builder.
pub const NAME_LABEL: &str = "name";
/// The label saying why, on [`REJECTED`] and [`GIVE_UPS`].
pub const REASON_LABEL: &str = "reason";
/// The `name` of a layer whose builder was given none.
pub const DEFAULT_NAME: &str = "default";

/// Counter: requests the rate limiter admitted (after waiting or not).
pub const ADMITTED: &str = "ratewise_admitted_total";
/// Counter: requests that skipped the rate limiter (they cost 0).
pub const BYPASSED: &str = "ratewise_bypassed_total";
/// Counter: requests held back first that then went on (rate limiter, cooldown, pool).
pub const WAITED: &str = "ratewise_waited_total";
/// Histogram, in seconds: how long each request the rate limiter held back waited.
pub const WAIT_SECONDS: &str = "ratewise_wait_seconds";
/// Counter: requests refused, by `reason`.
pub const REJECTED: &str = "ratewise_rejected_total";
/// Counter: requests failed because the rate limiter's store could not decide.
pub const STORE_ERRORS: &str = "ratewise_store_errors_total";
/// Counter: cooldowns started (first entry, and re-entry after a limited probe).
pub const COOLDOWNS_STARTED: &str = "ratewise_cooldowns_started_total";
/// Counter: cooldowns extended by the hint of an answer to an earlier request.
pub const COOLDOWNS_EXTENDED: &str = "ratewise_cooldowns_extended_total";
/// Counter: requests that met a cooling or half-open key (each counted once).
pub const MET_COOLDOWN: &str = "ratewise_met_cooldown_total";
/// Counter: probe requests sent after a cooldown ended.
pub const PROBES: &str = "ratewise_probes_total";
/// Counter: calls made through a retry layer or a pool (each once, however many tries).
pub const CALLS: &str = "ratewise_calls_total";
/// Counter: retries taken (attempts after the first).
pub const RETRIES: &str = "ratewise_retries_total";
/// Counter: times a call held back by a layer below was sent again.
pub const HELD: &str = "ratewise_held_total";
/// Counter: calls sent once without retry because their body could not be cloned.
pub const NOT_CLONEABLE: &str = "ratewise_not_cloneable_total";
/// Counter: calls the retry layer gave up on, by `reason`.
pub const GIVE_UPS: &str = "ratewise_give_ups_total";
/// Counter: requests answered from a fresh cache entry.
pub const CACHE_HITS: &str = "ratewise_cache_hits_total";
/// Counter: requests answered from a stale cache entry.
pub const STALE_SERVES: &str = "ratewise_stale_serves_total";
/// Counter: requests that found no fresh cache entry.
pub const CACHE_MISSES: &str = "ratewise_cache_misses_total";
/// Counter: calls the cache made to the upstream.
pub const UPSTREAM_CALLS: &str = "ratewise_upstream_calls_total";
/// Counter: requests that waited for another request's upstream call.
pub const COALESCED: &str = "ratewise_coalesced_total";
/// Counter: times a pool's call went on from one backend to another.
pub const FAILOVERS: &str = "ratewise_failovers_total";

/// Gives every metric its unit and description, for recorders that show them (the
/// Prometheus exporter's `# HELP` lines). Call it once, after installing the recorder.
#[cfg(feature = "metrics")]
#[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
pub fn describe() {
    use ::metrics::{describe_counter, describe_histogram, Unit};
    let counters = [
        (ADMITTED, "Requests the rate limiter admitted."),
        (BYPASSED, "Requests that skipped the rate limiter."),
        (WAITED, "Requests held back first that then went on."),
        (REJECTED, "Requests refused, by reason."),
        (
            STORE_ERRORS,
            "Requests failed because the store could not decide.",
        ),
        (COOLDOWNS_STARTED, "Cooldowns started."),
        (COOLDOWNS_EXTENDED, "Cooldowns extended by a late answer."),
        (
            MET_COOLDOWN,
            "Requests that met a cooling or half-open key.",
        ),
        (PROBES, "Probe requests sent after a cooldown."),
        (CALLS, "Calls made through the layer."),
        (RETRIES, "Retries taken."),
        (HELD, "Resends of a request a layer below held back."),
        (
            NOT_CLONEABLE,
            "Calls sent once because their body could not be cloned.",
        ),
        (GIVE_UPS, "Calls given up, by reason."),
        (CACHE_HITS, "Requests answered from a fresh cache entry."),
        (STALE_SERVES, "Requests answered from a stale cache entry."),
        (CACHE_MISSES, "Requests that found no fresh cache entry."),
        (UPSTREAM_CALLS, "Calls the cache made upstream."),
        (
            COALESCED,
            "Requests that waited for another's upstream call.",
        ),
        (FAILOVERS, "Times a pool's call went on to another backend."),
    ];
    for (name, help) in counters {
        describe_counter!(name, Unit::Count, help);
    }
    describe_histogram!(
        WAIT_SECONDS,
        Unit::Seconds,
        "How long each request the rate limiter held back waited."
    );
}

/// The labels of one layer value and its clones: its kind, and the name its builder
/// gave it (set once; a rate limiter shared by several layers keeps the first).
#[derive(Clone)]
pub(crate) struct Meter {
    inner: Arc<Labels>,
}

struct Labels {
    layer: LayerKind,
    name: OnceLock<Arc<str>>,
}

impl Meter {
    /// A meter for `layer`, named [`DEFAULT_NAME`] until [`set_name`](Self::set_name).
    pub(crate) fn new(layer: LayerKind) -> Self {
        Meter {
            inner: Arc::new(Labels {
                layer,
                name: OnceLock::new(),
            }),
        }
    }

    /// Names the meter, unless it was named before.
    pub(crate) fn set_name(&self, name: Option<Arc<str>>) {
        if let Some(name) = name {
            let _ = self.inner.name.set(name);
        }
    }

    /// The name given, or [`DEFAULT_NAME`].
    pub(crate) fn name(&self) -> &str {
        self.inner.name.get().map_or(DEFAULT_NAME, |n| n)
    }

    /// A counter reporting to `metric`.
    pub(crate) fn counter(&self, metric: &'static str) -> Counter {
        self.counter_with(metric, None)
    }

    /// A counter reporting to `metric` with a `reason` label.
    pub(crate) fn counter_for(&self, metric: &'static str, reason: &'static str) -> Counter {
        self.counter_with(metric, Some(reason))
    }

    #[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
    fn counter_with(&self, metric: &'static str, reason: Option<&'static str>) -> Counter {
        Counter {
            value: AtomicU64::new(0),
            #[cfg(feature = "metrics")]
            report: Some(Report {
                meter: self.clone(),
                metric,
                reason,
            }),
        }
    }

    /// Records `duration` in the histogram `metric`, in seconds.
    #[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
    pub(crate) fn record_seconds(&self, metric: &'static str, duration: Duration) {
        #[cfg(feature = "metrics")]
        ::metrics::histogram!(metric, self.labels(None)).record(duration.as_secs_f64());
    }

    #[cfg(feature = "metrics")]
    fn labels(&self, reason: Option<&'static str>) -> Vec<::metrics::Label> {
        use ::metrics::{Label, SharedString};
        let name = match self.inner.name.get() {
            Some(name) => SharedString::from(Arc::clone(name)),
            None => SharedString::const_str(DEFAULT_NAME),
        };
        let mut labels = Vec::with_capacity(3);
        labels.push(Label::from_static_parts(
            LAYER_LABEL,
            self.inner.layer.as_str(),
        ));
        labels.push(Label::new(NAME_LABEL, name));
        if let Some(reason) = reason {
            labels.push(Label::from_static_parts(REASON_LABEL, reason));
        }
        labels
    }
}

impl fmt::Debug for Meter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Meter")
            .field("layer", &self.inner.layer)
            .field("name", &self.name())
            .finish()
    }
}

/// One stats counter: an atomic the layer's `stats()` reads, which also reports each
/// step to its metric when it was made by a [`Meter`] and the `metrics` feature is on.
/// `Counter::default()` counts without reporting.
#[derive(Default)]
pub(crate) struct Counter {
    value: AtomicU64,
    #[cfg(feature = "metrics")]
    report: Option<Report>,
}

#[cfg(feature = "metrics")]
struct Report {
    meter: Meter,
    metric: &'static str,
    reason: Option<&'static str>,
}

impl Counter {
    /// Adds one.
    pub(crate) fn bump(&self) {
        self.value.fetch_add(1, Ordering::Relaxed);
        #[cfg(feature = "metrics")]
        if let Some(r) = &self.report {
            ::metrics::counter!(r.metric, r.meter.labels(r.reason)).increment(1);
        }
    }

    /// The count so far.
    pub(crate) fn get(&self) -> u64 {
        self.value.load(Ordering::Relaxed)
    }
}

impl fmt::Debug for Counter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.get(), f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_name_stays_and_none_keeps_the_default() {
        let meter = Meter::new(LayerKind::RateLimit);
        meter.set_name(None);
        assert_eq!(meter.name(), DEFAULT_NAME);
        meter.set_name(Some("cards".into()));
        meter.clone().set_name(Some("other".into()));
        assert_eq!(meter.name(), "cards");
    }

    #[test]
    fn counters_count_with_or_without_a_meter() {
        let meter = Meter::new(LayerKind::Retry);
        let (a, b) = (meter.counter(RETRIES), Counter::default());
        a.bump();
        a.bump();
        b.bump();
        assert_eq!((a.get(), b.get()), (2, 1));
    }
}
