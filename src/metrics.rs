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
//!   else `default`);
//! - `reason`, on `ratewise_rejected_total` and `ratewise_give_ups_total` only: one of a
//!   fixed set of words.
//!
//! No label ever holds a key, a URL or anything else read from a request, so the number
//! of series stays bounded whatever the traffic.
//!
//! Every metric the layers report (the histogram is in seconds):
//!
//! | metric | type | labels | layers | what |
//! |---|---|---|---|---|
//! | `ratewise_admitted_total` | counter | `layer`, `name` | rate_limit | requests admitted (after waiting or not) |
//! | `ratewise_bypassed_total` | counter | `layer`, `name` | rate_limit | requests that cost 0 and skipped the limit |
//! | `ratewise_waited_total` | counter | `layer`, `name` | rate_limit, cooldown, pool | requests held back first that then went on |
//! | `ratewise_wait_seconds` | histogram | `layer`, `name` | rate_limit | how long each request the rate limiter held back waited |
//! | `ratewise_rejected_total` | counter | `layer`, `name`, `reason` | rate_limit, cooldown, cache, pool | requests refused, by `reason` |
//! | `ratewise_store_errors_total` | counter | `layer`, `name` | rate_limit | requests failed because the store could not decide |
//! | `ratewise_cooldowns_started_total` | counter | `layer`, `name` | cooldown | cooldowns started (first entry, and re-entry after a limited probe) |
//! | `ratewise_cooldowns_extended_total` | counter | `layer`, `name` | cooldown | cooldowns extended by the hint of a late answer |
//! | `ratewise_met_cooldown_total` | counter | `layer`, `name` | cooldown | requests that met a cooling or half-open key (each counted once) |
//! | `ratewise_probes_total` | counter | `layer`, `name` | cooldown | probe requests sent after a cooldown ended |
//! | `ratewise_calls_total` | counter | `layer`, `name` | retry, pool | calls made through the layer (each once, however many tries) |
//! | `ratewise_retries_total` | counter | `layer`, `name` | retry | attempts after the first |
//! | `ratewise_held_total` | counter | `layer`, `name` | retry | resends of a request a layer below held back |
//! | `ratewise_not_cloneable_total` | counter | `layer`, `name` | retry | calls sent once because their body could not be cloned |
//! | `ratewise_give_ups_total` | counter | `layer`, `name`, `reason` | retry | calls given up, by `reason` |
//! | `ratewise_cache_hits_total` | counter | `layer`, `name` | cache | requests answered from a fresh entry |
//! | `ratewise_stale_serves_total` | counter | `layer`, `name` | cache | requests answered from a stale entry |
//! | `ratewise_cache_misses_total` | counter | `layer`, `name` | cache | requests that found no fresh entry |
//! | `ratewise_upstream_calls_total` | counter | `layer`, `name` | cache | calls the cache made upstream |
//! | `ratewise_coalesced_total` | counter | `layer`, `name` | cache | requests that waited for another's upstream call |
//! | `ratewise_failovers_total` | counter | `layer`, `name` | pool | times a pool's call went on from one backend to another |
//!
//! The `reason` of `ratewise_rejected_total` is `max_wait`, `cost_exceeds_burst` or
//! `over_limit` (a `429` in reject mode) for the rate limiter, `cooling_down` for the
//! cooldown, `endpoint_limited` for the cache, and `all_backends_cooling`,
//! `no_backend_ready` or `no_route` for the pool. The `reason` of
//! `ratewise_give_ups_total` is a [`GiveUp`](crate::retry::GiveUp) as its `as_str`
//! spells it.
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
#[cfg_attr(not(feature = "metrics"), allow(dead_code))]
pub(crate) const LAYER_LABEL: &str = "layer";
/// The label holding the name given to the layer's builder.
#[cfg_attr(not(feature = "metrics"), allow(dead_code))]
pub(crate) const NAME_LABEL: &str = "name";
/// The label saying why, on [`REJECTED`] and [`GIVE_UPS`].
#[cfg_attr(not(feature = "metrics"), allow(dead_code))]
pub(crate) const REASON_LABEL: &str = "reason";
/// The `name` of a layer whose builder was given none.
pub(crate) const DEFAULT_NAME: &str = "default";

/// Counter: requests the rate limiter admitted (after waiting or not).
pub(crate) const ADMITTED: &str = "ratewise_admitted_total";
/// Counter: requests that skipped the rate limiter (they cost 0).
pub(crate) const BYPASSED: &str = "ratewise_bypassed_total";
/// Counter: requests held back first that then went on (rate limiter, cooldown, pool).
pub(crate) const WAITED: &str = "ratewise_waited_total";
/// Histogram, in seconds: how long each request the rate limiter held back waited.
pub(crate) const WAIT_SECONDS: &str = "ratewise_wait_seconds";
/// Counter: requests refused, by `reason`.
pub(crate) const REJECTED: &str = "ratewise_rejected_total";
/// Counter: requests failed because the rate limiter's store could not decide.
pub(crate) const STORE_ERRORS: &str = "ratewise_store_errors_total";
/// Counter: cooldowns started (first entry, and re-entry after a limited probe).
pub(crate) const COOLDOWNS_STARTED: &str = "ratewise_cooldowns_started_total";
/// Counter: cooldowns extended by the hint of an answer to an earlier request.
pub(crate) const COOLDOWNS_EXTENDED: &str = "ratewise_cooldowns_extended_total";
/// Counter: requests that met a cooling or half-open key (each counted once).
pub(crate) const MET_COOLDOWN: &str = "ratewise_met_cooldown_total";
/// Counter: probe requests sent after a cooldown ended.
pub(crate) const PROBES: &str = "ratewise_probes_total";
/// Counter: calls made through a retry layer or a pool (each once, however many tries).
pub(crate) const CALLS: &str = "ratewise_calls_total";
/// Counter: retries taken (attempts after the first).
pub(crate) const RETRIES: &str = "ratewise_retries_total";
/// Counter: times a call held back by a layer below was sent again.
pub(crate) const HELD: &str = "ratewise_held_total";
/// Counter: calls sent once without retry because their body could not be cloned.
pub(crate) const NOT_CLONEABLE: &str = "ratewise_not_cloneable_total";
/// Counter: calls the retry layer gave up on, by `reason`.
pub(crate) const GIVE_UPS: &str = "ratewise_give_ups_total";
/// Counter: requests answered from a fresh cache entry.
pub(crate) const CACHE_HITS: &str = "ratewise_cache_hits_total";
/// Counter: requests answered from a stale cache entry.
pub(crate) const STALE_SERVES: &str = "ratewise_stale_serves_total";
/// Counter: requests that found no fresh cache entry.
pub(crate) const CACHE_MISSES: &str = "ratewise_cache_misses_total";
/// Counter: calls the cache made to the upstream.
pub(crate) const UPSTREAM_CALLS: &str = "ratewise_upstream_calls_total";
/// Counter: requests that waited for another request's upstream call.
pub(crate) const COALESCED: &str = "ratewise_coalesced_total";
/// Counter: times a pool's call went on from one backend to another.
pub(crate) const FAILOVERS: &str = "ratewise_failovers_total";

/// Every metric, as the module doc's table lists it: its name, its type, and the
/// description [`describe`] gives it.
#[cfg_attr(not(any(test, feature = "metrics")), allow(dead_code))]
pub(crate) const ALL: [(&str, Kind, &str); 21] = [
    (
        ADMITTED,
        Kind::Counter,
        "Requests the rate limiter admitted.",
    ),
    (
        BYPASSED,
        Kind::Counter,
        "Requests that skipped the rate limiter.",
    ),
    (
        WAITED,
        Kind::Counter,
        "Requests held back first that then went on.",
    ),
    (
        WAIT_SECONDS,
        Kind::Histogram,
        "How long each request the rate limiter held back waited.",
    ),
    (REJECTED, Kind::Counter, "Requests refused, by reason."),
    (
        STORE_ERRORS,
        Kind::Counter,
        "Requests failed because the store could not decide.",
    ),
    (COOLDOWNS_STARTED, Kind::Counter, "Cooldowns started."),
    (
        COOLDOWNS_EXTENDED,
        Kind::Counter,
        "Cooldowns extended by a late answer.",
    ),
    (
        MET_COOLDOWN,
        Kind::Counter,
        "Requests that met a cooling or half-open key.",
    ),
    (
        PROBES,
        Kind::Counter,
        "Probe requests sent after a cooldown.",
    ),
    (CALLS, Kind::Counter, "Calls made through the layer."),
    (RETRIES, Kind::Counter, "Retries taken."),
    (
        HELD,
        Kind::Counter,
        "Resends of a request a layer below held back.",
    ),
    (
        NOT_CLONEABLE,
        Kind::Counter,
        "Calls sent once because their body could not be cloned.",
    ),
    (GIVE_UPS, Kind::Counter, "Calls given up, by reason."),
    (
        CACHE_HITS,
        Kind::Counter,
        "Requests answered from a fresh cache entry.",
    ),
    (
        STALE_SERVES,
        Kind::Counter,
        "Requests answered from a stale cache entry.",
    ),
    (
        CACHE_MISSES,
        Kind::Counter,
        "Requests that found no fresh cache entry.",
    ),
    (
        UPSTREAM_CALLS,
        Kind::Counter,
        "Calls the cache made upstream.",
    ),
    (
        COALESCED,
        Kind::Counter,
        "Requests that waited for another's upstream call.",
    ),
    (
        FAILOVERS,
        Kind::Counter,
        "Times a pool's call went on to another backend.",
    ),
];

/// A metric's type.
#[cfg_attr(not(any(test, feature = "metrics")), allow(dead_code))]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A count (unit: count).
    Counter,
    /// Samples in seconds.
    Histogram,
}

/// Gives every metric its unit and description, for recorders that show them (the
/// Prometheus exporter's `# HELP` lines). Call it once, after installing the recorder.
#[cfg(feature = "metrics")]
#[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
pub fn describe() {
    use ::metrics::{describe_counter, describe_histogram, Unit};
    for (name, kind, help) in ALL {
        match kind {
            Kind::Counter => describe_counter!(name, Unit::Count, help),
            Kind::Histogram => describe_histogram!(name, Unit::Seconds, help),
        }
    }
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

    /// The module doc's table is [`ALL`] (names and types), and [`ALL`] holds every
    /// metric-name constant of this file, once.
    #[test]
    fn the_doc_table_lists_exactly_the_metric_constants() {
        let source = include_str!("metrics.rs");
        let mut constants: Vec<&str> = source
            .lines()
            .filter_map(|l| {
                l.strip_prefix("pub(crate) const ")?
                    .split_once(": &str = \"")
            })
            .filter_map(|(_, value)| value.strip_suffix("\";"))
            .filter(|value| value.starts_with("ratewise_"))
            .collect();
        let mut table: Vec<(&str, &str)> = source
            .lines()
            .filter(|l| l.starts_with("//! | `"))
            .map(|row| {
                let cells: Vec<&str> = row.split('|').map(str::trim).collect();
                (cells[1].trim_matches('`'), cells[2])
            })
            .collect();
        let mut all: Vec<(&str, &str)> = ALL
            .iter()
            .map(|&(name, kind, _)| match kind {
                Kind::Counter => (name, "counter"),
                Kind::Histogram => (name, "histogram"),
            })
            .collect();
        constants.sort_unstable();
        table.sort_unstable();
        all.sort_unstable();
        assert_eq!(table, all, "the doc table is ALL");
        let names: Vec<&str> = all.iter().map(|&(name, _)| name).collect();
        assert_eq!(names, constants, "ALL holds every constant, once");
    }
}
