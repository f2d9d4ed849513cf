//! The proxy's per-backend statistics: `GET /stats` (JSON) and `GET /` (a live dashboard).
//!
//! [`ProxyStats`] counts every upstream attempt ([`ProxyStats::record`]) and every
//! cooldown ([`ProxyStats::record_cooldown`]) in a ring of 60 per-minute buckets, so a
//! window of 1, 15 or 60 minutes is a sum of buckets. Latency and wait percentiles come
//! from a small log-spaced histogram in each bucket (about ±9 %, clamped to the observed
//! minimum and maximum): memory stays fixed, whatever the traffic. A second ring of 120
//! per-second slots feeds the dashboard's chart of requests and 429s. Time is read from
//! `tokio::time::Instant`, so tests can pause the clock.
//!
//! [`routes`] serves both pages; the `/stats` document is described in the `proxy`
//! module's docs.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};
use tokio::time::Instant;

/// Minute buckets in the ring: the longest window.
const MINUTES: usize = 60;
/// Per-second slots of the chart series.
const SECONDS: usize = 120;
/// Histogram bins: bin 0 holds durations under [`FIRST_BOUND_US`]; bin `i ≥ 1` holds
/// `[FIRST·2^((i−1)/4), FIRST·2^(i/4))`, so the last bin starts near 2.5 hours.
const BINS: usize = 120;
const BINS_PER_OCTAVE: f64 = 4.0;
const FIRST_BOUND_US: f64 = 10.0;

/// The dashboard page, served at `GET /`.
const DASHBOARD: &str = include_str!("dashboard.html");
/// The page loads nothing but itself and `/stats`.
const DASHBOARD_CSP: &str = "default-src 'none'; script-src 'unsafe-inline'; \
     style-src 'unsafe-inline'; connect-src 'self'; img-src 'self' data:";

/// How one upstream attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CallOutcome {
    /// The backend answered (any answer the proxy passes on as a success).
    Ok,
    /// The backend said it was rate limited (a 429, GLM's 1302, ...).
    RateLimited,
    /// A transient failure (5xx, timeout, connection reset): the call moved on.
    Transient,
    /// Any other failure.
    Failed,
}

/// A backend's state, as the proxy's cooldown table sees it now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BackendState {
    /// Calls go through.
    Ok,
    /// Cooling down: no call until `remaining` has passed.
    Cooling {
        /// Time left in the cooldown.
        remaining: Duration,
    },
    /// The cooldown is over and one probe call is deciding whether it ends.
    Probing,
}

/// One upstream attempt, as [`ProxyStats::record`] counts it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Call<'a> {
    /// The backend's configured name.
    pub(crate) backend: &'a str,
    /// How the attempt ended.
    pub(crate) outcome: CallOutcome,
    /// From sending the request to its answer (or failure).
    pub(crate) latency: Duration,
    /// Time the call waited for the backend's limits before it was sent.
    pub(crate) wait: Duration,
    /// Tokens the call used (reconciled `usage`), or 0.
    pub(crate) tokens: u64,
}

/// Reads a backend's state by its configured name; [`routes`] calls it on each `/stats`.
pub(crate) type StateFn = Arc<dyn Fn(&str) -> BackendState + Send + Sync>;

/// A window of `/stats`: `1m`, `15m` or `60m`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum Window {
    /// The current minute (`1m`, the default).
    #[default]
    OneMinute,
    /// The current minute and the 14 before it (`15m`).
    FifteenMinutes,
    /// The current minute and the 59 before it (`60m`).
    SixtyMinutes,
}

impl Window {
    /// The number of minute buckets the window sums.
    pub(crate) fn minutes(self) -> u64 {
        match self {
            Window::OneMinute => 1,
            Window::FifteenMinutes => 15,
            Window::SixtyMinutes => 60,
        }
    }

    /// `1m`, `15m` or `60m`.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Window::OneMinute => "1m",
            Window::FifteenMinutes => "15m",
            Window::SixtyMinutes => "60m",
        }
    }
}

impl fmt::Display for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A window that is not `1m`, `15m` or `60m`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("window must be 1m, 15m or 60m, got {0:?}")]
pub(crate) struct WindowError(String);

impl FromStr for Window {
    type Err = WindowError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "1m" => Ok(Window::OneMinute),
            "15m" => Ok(Window::FifteenMinutes),
            "60m" => Ok(Window::SixtyMinutes),
            other => Err(WindowError(other.chars().take(32).collect())),
        }
    }
}

/// One backend's numbers over a [`Window`], from [`ProxyStats::snapshot`].
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct BackendSnapshot {
    /// The configured name.
    pub(crate) name: String,
    /// Upstream attempts: `ok + rate_limited + transient + failed`.
    pub(crate) requests: u64,
    /// Attempts that succeeded.
    pub(crate) ok: u64,
    /// Attempts the backend rate-limited.
    pub(crate) rate_limited: u64,
    /// Attempts that failed transiently.
    pub(crate) transient: u64,
    /// Attempts that failed otherwise.
    pub(crate) failed: u64,
    /// Cooldowns started.
    pub(crate) cooldowns: u64,
    /// Tokens used.
    pub(crate) tokens: u64,
    /// Median latency (`None` without calls).
    pub(crate) p50_latency: Option<Duration>,
    /// 95th percentile latency.
    pub(crate) p95_latency: Option<Duration>,
    /// Median wait before sending.
    pub(crate) p50_wait: Option<Duration>,
    /// 95th percentile wait.
    pub(crate) p95_wait: Option<Duration>,
}

/// Per-backend statistics of the proxy: a cheap handle, clones share the counters.
#[derive(Clone)]
pub(crate) struct ProxyStats {
    inner: Arc<Inner>,
}

struct Inner {
    start: Instant,
    names: Vec<String>,
    index: HashMap<String, usize>,
    rings: Vec<Mutex<Ring>>,
}

impl fmt::Debug for ProxyStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProxyStats")
            .field("backends", &self.inner.names)
            .finish_non_exhaustive()
    }
}

impl ProxyStats {
    /// Statistics for these backends (configured names; a repeated name counts once).
    pub(crate) fn new(backends: impl IntoIterator<Item = String>) -> Self {
        let mut names = Vec::new();
        let mut index = HashMap::new();
        for name in backends {
            if !index.contains_key(&name) {
                index.insert(name.clone(), names.len());
                names.push(name);
            }
        }
        let rings = names.iter().map(|_| Mutex::new(Ring::new())).collect();
        ProxyStats {
            inner: Arc::new(Inner {
                start: Instant::now(),
                names,
                index,
                rings,
            }),
        }
    }

    /// Counts one upstream attempt to `call.backend`. A name that was not configured is
    /// ignored, so `/stats` only ever shows configured backends.
    pub(crate) fn record(&self, call: Call<'_>) {
        let now = self.elapsed();
        if let Some(mut ring) = self.ring(call.backend) {
            ring.record(now, &call);
        }
    }

    /// Counts a cooldown that started for `backend` (ignored for an unknown name).
    pub(crate) fn record_cooldown(&self, backend: &str) {
        let now = self.elapsed();
        if let Some(mut ring) = self.ring(backend) {
            ring.minute(now).cooldowns += 1;
        }
    }

    /// Every backend's numbers over `window`, in configured order (`/stats` reads the
    /// same sums; the tests read them here).
    #[cfg(test)]
    pub(crate) fn snapshot(&self, window: Window) -> Vec<BackendSnapshot> {
        let now = self.elapsed();
        self.inner
            .names
            .iter()
            .zip(&self.inner.rings)
            .map(|(name, ring)| lock(ring).sum(now, window).snapshot(name.clone()))
            .collect()
    }

    /// The `/stats` document.
    fn to_json(&self, window: Window, states: &StateFn) -> Value {
        let now = self.elapsed();
        let minute_start = Duration::from_secs(minute_of(now) * 60);
        let oldest = minute_start.saturating_sub(Duration::from_secs((window.minutes() - 1) * 60));
        let mut total_requests = vec![0u64; SECONDS];
        let mut total_limited = vec![0u64; SECONDS];
        let backends: Vec<Value> = self
            .inner
            .names
            .iter()
            .zip(&self.inner.rings)
            .map(|(name, ring)| {
                let (sum, requests, limited) = {
                    let ring = lock(ring);
                    let (requests, limited) = ring.series(now);
                    (ring.sum(now, window), requests, limited)
                };
                for i in 0..SECONDS {
                    total_requests[i] += requests[i];
                    total_limited[i] += limited[i];
                }
                let (state, remaining) = match states(name) {
                    BackendState::Ok => ("ok", Duration::ZERO),
                    BackendState::Cooling { remaining } => ("cooling", remaining),
                    BackendState::Probing => ("probing", Duration::ZERO),
                };
                let snap = sum.snapshot(name.clone());
                json!({
                    "name": name,
                    "state": state,
                    "remaining_ms": millis(remaining),
                    "requests": snap.requests,
                    "ok": snap.ok,
                    "rate_limited": snap.rate_limited,
                    "transient": snap.transient,
                    "failed": snap.failed,
                    "cooldowns": snap.cooldowns,
                    "tokens": snap.tokens,
                    "p50_latency_ms": snap.p50_latency.map(ms_f64),
                    "p95_latency_ms": snap.p95_latency.map(ms_f64),
                    "p50_wait_ms": snap.p50_wait.map(ms_f64),
                    "p95_wait_ms": snap.p95_wait.map(ms_f64),
                    "series": { "requests": requests, "rate_limited": limited },
                })
            })
            .collect();
        let t: Vec<i64> = (0..SECONDS as i64)
            .map(|i| i - (SECONDS as i64 - 1))
            .collect();
        json!({
            "window": window.as_str(),
            "window_ms": window.minutes() * 60_000,
            "covered_ms": millis(now - oldest),
            "uptime_ms": millis(now),
            "backends": backends,
            "series": { "t": t, "requests": total_requests, "rate_limited": total_limited },
        })
    }

    fn elapsed(&self) -> Duration {
        Instant::now().saturating_duration_since(self.inner.start)
    }

    fn ring(&self, backend: &str) -> Option<MutexGuard<'_, Ring>> {
        let i = *self.inner.index.get(backend)?;
        Some(lock(&self.inner.rings[i]))
    }
}

/// A panic while a ring was locked leaves plain counters behind: keep counting.
fn lock(ring: &Mutex<Ring>) -> MutexGuard<'_, Ring> {
    ring.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn minute_of(elapsed: Duration) -> u64 {
    elapsed.as_secs() / 60
}

fn millis(d: Duration) -> u64 {
    d.as_millis().try_into().unwrap_or(u64::MAX)
}

/// Milliseconds with microsecond precision, for percentiles.
fn ms_f64(d: Duration) -> f64 {
    d.as_micros() as f64 / 1000.0
}

/// One backend's buckets: 60 minutes of counters, 120 seconds of chart.
struct Ring {
    minutes: Vec<Bucket>,
    seconds: Vec<Second>,
}

#[derive(Clone, Copy, Default)]
struct Second {
    /// Seconds since start this slot counts, `None` while unused.
    second: Option<u64>,
    requests: u64,
    rate_limited: u64,
}

impl Ring {
    fn new() -> Self {
        Ring {
            minutes: vec![Bucket::default(); MINUTES],
            seconds: vec![Second::default(); SECONDS],
        }
    }

    fn record(&mut self, now: Duration, call: &Call<'_>) {
        let bucket = self.minute(now);
        bucket.requests += 1;
        match call.outcome {
            CallOutcome::Ok => bucket.ok += 1,
            CallOutcome::RateLimited => bucket.rate_limited += 1,
            CallOutcome::Transient => bucket.transient += 1,
            CallOutcome::Failed => bucket.failed += 1,
        }
        bucket.tokens = bucket.tokens.saturating_add(call.tokens);
        bucket.latency.add(call.latency);
        bucket.wait.add(call.wait);

        let s = now.as_secs();
        let slot = &mut self.seconds[(s % SECONDS as u64) as usize];
        if slot.second != Some(s) {
            *slot = Second {
                second: Some(s),
                ..Second::default()
            };
        }
        slot.requests += 1;
        if call.outcome == CallOutcome::RateLimited {
            slot.rate_limited += 1;
        }
    }

    /// The bucket of the minute `now` falls in, cleared if it last held an older minute.
    fn minute(&mut self, now: Duration) -> &mut Bucket {
        let m = minute_of(now);
        let bucket = &mut self.minutes[(m % MINUTES as u64) as usize];
        if bucket.minute != Some(m) {
            *bucket = Bucket {
                minute: Some(m),
                ..Bucket::default()
            };
        }
        bucket
    }

    /// The buckets of `window`, summed.
    fn sum(&self, now: Duration, window: Window) -> Bucket {
        let current = minute_of(now);
        let first = current.saturating_sub(window.minutes() - 1);
        let mut sum = Bucket::default();
        for bucket in &self.minutes {
            if bucket
                .minute
                .is_some_and(|m| (first..=current).contains(&m))
            {
                sum.merge(bucket);
            }
        }
        sum
    }

    /// Requests and 429s per second, oldest first, the last entry being the current second.
    fn series(&self, now: Duration) -> (Vec<u64>, Vec<u64>) {
        let mut requests = vec![0; SECONDS];
        let mut limited = vec![0; SECONDS];
        let current = now.as_secs();
        for (i, (req, lim)) in requests.iter_mut().zip(&mut limited).enumerate() {
            let Some(s) = current.checked_sub((SECONDS - 1 - i) as u64) else {
                continue;
            };
            let slot = &self.seconds[(s % SECONDS as u64) as usize];
            if slot.second == Some(s) {
                (*req, *lim) = (slot.requests, slot.rate_limited);
            }
        }
        (requests, limited)
    }
}

/// One minute of one backend.
#[derive(Clone, Default)]
struct Bucket {
    /// Minutes since start this bucket counts, `None` while unused.
    minute: Option<u64>,
    requests: u64,
    ok: u64,
    rate_limited: u64,
    transient: u64,
    failed: u64,
    cooldowns: u64,
    tokens: u64,
    latency: Histogram,
    wait: Histogram,
}

impl Bucket {
    fn merge(&mut self, other: &Bucket) {
        self.requests += other.requests;
        self.ok += other.ok;
        self.rate_limited += other.rate_limited;
        self.transient += other.transient;
        self.failed += other.failed;
        self.cooldowns += other.cooldowns;
        self.tokens = self.tokens.saturating_add(other.tokens);
        self.latency.merge(&other.latency);
        self.wait.merge(&other.wait);
    }

    fn snapshot(&self, name: String) -> BackendSnapshot {
        BackendSnapshot {
            name,
            requests: self.requests,
            ok: self.ok,
            rate_limited: self.rate_limited,
            transient: self.transient,
            failed: self.failed,
            cooldowns: self.cooldowns,
            tokens: self.tokens,
            p50_latency: self.latency.quantile(0.50),
            p95_latency: self.latency.quantile(0.95),
            p50_wait: self.wait.quantile(0.50),
            p95_wait: self.wait.quantile(0.95),
        }
    }
}

/// Durations in log-spaced bins (4 per octave), with the exact minimum and maximum.
#[derive(Clone)]
struct Histogram {
    counts: [u32; BINS],
    n: u64,
    min_us: u64,
    max_us: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: [0; BINS],
            n: 0,
            min_us: u64::MAX,
            max_us: 0,
        }
    }
}

impl Histogram {
    fn add(&mut self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        let bin = &mut self.counts[bin_of(us)];
        *bin = bin.saturating_add(1);
        self.n += 1;
        self.min_us = self.min_us.min(us);
        self.max_us = self.max_us.max(us);
    }

    fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a = a.saturating_add(*b);
        }
        self.n += other.n;
        self.min_us = self.min_us.min(other.min_us);
        self.max_us = self.max_us.max(other.max_us);
    }

    /// The `q` quantile: the middle of the bin holding the sample of rank `⌈q·n⌉`,
    /// clamped to the observed range.
    fn quantile(&self, q: f64) -> Option<Duration> {
        if self.n == 0 {
            return None;
        }
        let rank = ((q * self.n as f64).ceil() as u64).clamp(1, self.n);
        let mut seen = 0u64;
        let bin = self
            .counts
            .iter()
            .position(|&c| {
                seen += u64::from(c);
                seen >= rank
            })
            .unwrap_or(BINS - 1);
        let us = bin_middle_us(bin).clamp(self.min_us as f64, self.max_us as f64);
        Some(Duration::from_micros(us.round() as u64))
    }
}

fn bin_of(us: u64) -> usize {
    let us = us as f64;
    if us < FIRST_BOUND_US {
        return 0;
    }
    let i = 1 + ((us / FIRST_BOUND_US).log2() * BINS_PER_OCTAVE).floor() as usize;
    i.min(BINS - 1)
}

/// The geometric middle of a bin, in microseconds; 0 for the first bin, which the clamp
/// in [`Histogram::quantile`] turns into the observed minimum (exact for zero waits).
fn bin_middle_us(bin: usize) -> f64 {
    if bin == 0 {
        return 0.0;
    }
    FIRST_BOUND_US * ((bin as f64 - 0.5) / BINS_PER_OCTAVE).exp2()
}

/// `GET /` (the dashboard) and `GET /stats?window=1m|15m|60m` (the JSON it reads).
///
/// `states` is asked for each backend's state on every `/stats`. Merge the router into
/// the proxy's own, or serve it alone.
pub(crate) fn routes(stats: ProxyStats, states: StateFn) -> Router {
    Router::new()
        .route("/", get(dashboard))
        .route("/stats", get(stats_json))
        .with_state(Arc::new(App { stats, states }))
}

struct App {
    stats: ProxyStats,
    states: StateFn,
}

async fn dashboard() -> Response {
    let mut resp = DASHBOARD.into_response();
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(DASHBOARD_CSP),
    );
    resp
}

async fn stats_json(State(app): State<Arc<App>>, RawQuery(query): RawQuery) -> Response {
    let window = match window_of(query.as_deref()) {
        Ok(window) => window,
        Err(err) => {
            let body = json!({"error": {
                "message": err.to_string(),
                "type": "invalid_request_error",
                "code": "invalid_window",
            }});
            return (StatusCode::BAD_REQUEST, Json(body)).into_response();
        }
    };
    let mut resp = Json(app.stats.to_json(window, &app.states)).into_response();
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// The `window` parameter of a query string (the last one wins), `1m` without one.
fn window_of(query: Option<&str>) -> Result<Window, WindowError> {
    let value = query
        .unwrap_or("")
        .split('&')
        .filter_map(|pair| pair.strip_prefix("window="))
        .next_back();
    value.map_or(Ok(Window::default()), str::parse)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(backend: &str, outcome: CallOutcome, latency_ms: u64) -> Call<'_> {
        Call {
            backend,
            outcome,
            latency: Duration::from_millis(latency_ms),
            wait: Duration::ZERO,
            tokens: 10,
        }
    }

    fn ok_states() -> StateFn {
        Arc::new(|_: &str| BackendState::Ok)
    }

    /// What the module doc showed when the module was public: record a call and a
    /// cooldown, read them back, and build the routes.
    #[tokio::test]
    async fn the_former_module_example() {
        let stats = ProxyStats::new(["glm".to_owned(), "openai".to_owned()]);
        stats.record(Call {
            backend: "glm",
            outcome: CallOutcome::RateLimited,
            latency: Duration::from_millis(120),
            wait: Duration::ZERO,
            tokens: 0,
        });
        stats.record_cooldown("glm");
        let glm = &stats.snapshot(Window::OneMinute)[0];
        assert_eq!((glm.requests, glm.rate_limited, glm.cooldowns), (1, 1, 1));

        // The proxy asks its cooldown table for each backend's state.
        let states: StateFn = Arc::new(|_name: &str| BackendState::Ok);
        let app: Router = routes(stats, states);
        let _ = app;
    }

    #[tokio::test(start_paused = true)]
    async fn counts_each_outcome_per_backend() {
        let stats = ProxyStats::new(["glm".to_owned(), "openai".to_owned()]);
        for outcome in [
            CallOutcome::Ok,
            CallOutcome::Ok,
            CallOutcome::RateLimited,
            CallOutcome::Transient,
            CallOutcome::Failed,
        ] {
            stats.record(call("glm", outcome, 5));
        }
        stats.record(call("openai", CallOutcome::Ok, 5));
        stats.record_cooldown("glm");
        stats.record(call("unknown", CallOutcome::Ok, 5));
        stats.record_cooldown("unknown");

        let snap = stats.snapshot(Window::OneMinute);
        assert_eq!(snap.len(), 2, "only configured backends");
        let glm = &snap[0];
        assert_eq!(glm.name, "glm");
        assert_eq!(
            (
                glm.requests,
                glm.ok,
                glm.rate_limited,
                glm.transient,
                glm.failed
            ),
            (5, 2, 1, 1, 1)
        );
        assert_eq!((glm.cooldowns, glm.tokens), (1, 50));
        assert_eq!((snap[1].requests, snap[1].ok, snap[1].cooldowns), (1, 1, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn windows_sum_the_minutes_they_cover() {
        let stats = ProxyStats::new(["glm".to_owned()]);
        // One call in each of minutes 0, 10 and 50 (paused clock), then look at minute 50.
        stats.record(call("glm", CallOutcome::Ok, 1));
        tokio::time::advance(Duration::from_secs(10 * 60)).await;
        stats.record(call("glm", CallOutcome::Ok, 1));
        stats.record(call("glm", CallOutcome::Ok, 1));
        tokio::time::advance(Duration::from_secs(40 * 60 + 5)).await;
        stats.record(call("glm", CallOutcome::RateLimited, 1));

        let requests = |w| stats.snapshot(w)[0].requests;
        assert_eq!(requests(Window::OneMinute), 1);
        assert_eq!(requests(Window::FifteenMinutes), 1);
        assert_eq!(requests(Window::SixtyMinutes), 4);

        // Minute 55: 15m covers minutes 41..=55, still only the minute-50 call.
        tokio::time::advance(Duration::from_secs(5 * 60)).await;
        assert_eq!(requests(Window::OneMinute), 0);
        assert_eq!(requests(Window::FifteenMinutes), 1);
        // Minute 60: minute 0 has left the hour.
        tokio::time::advance(Duration::from_secs(5 * 60)).await;
        assert_eq!(requests(Window::SixtyMinutes), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_bucket_reused_by_a_later_minute_starts_from_zero() {
        let stats = ProxyStats::new(["glm".to_owned()]);
        for _ in 0..7 {
            stats.record(call("glm", CallOutcome::RateLimited, 1));
        }
        stats.record_cooldown("glm");
        // Minute 60 lands in minute 0's slot of the ring.
        tokio::time::advance(Duration::from_secs(60 * 60)).await;
        stats.record(call("glm", CallOutcome::Ok, 1));
        let snap = &stats.snapshot(Window::SixtyMinutes)[0];
        assert_eq!((snap.requests, snap.ok, snap.rate_limited), (1, 1, 0));
        assert_eq!(snap.cooldowns, 0);
        // Two hours of silence: nothing left in any window.
        tokio::time::advance(Duration::from_secs(2 * 60 * 60)).await;
        assert_eq!(stats.snapshot(Window::SixtyMinutes)[0].requests, 0);
        assert_eq!(stats.snapshot(Window::SixtyMinutes)[0].p50_latency, None);
    }

    #[tokio::test(start_paused = true)]
    async fn percentiles_come_from_the_histogram_within_its_resolution() {
        let stats = ProxyStats::new(["glm".to_owned()]);
        // Latencies 1..=100 ms; waits 0 for 90 calls and 2 s for the last 10.
        for i in 1..=100u64 {
            stats.record(Call {
                backend: "glm",
                outcome: CallOutcome::Ok,
                latency: Duration::from_millis(i),
                wait: if i > 90 {
                    Duration::from_secs(2)
                } else {
                    Duration::ZERO
                },
                tokens: 0,
            });
        }
        let snap = &stats.snapshot(Window::OneMinute)[0];
        let near = |got: Option<Duration>, want_ms: f64| {
            let got = got.expect("a percentile").as_secs_f64() * 1000.0;
            assert!(
                (got - want_ms).abs() <= want_ms * 0.10,
                "got {got} ms, want {want_ms} ms ± 10 %"
            );
        };
        near(snap.p50_latency, 50.0);
        near(snap.p95_latency, 95.0);
        assert_eq!(snap.p50_wait, Some(Duration::ZERO));
        // Every slow wait is exactly 2 s: the clamp to the maximum makes it exact.
        assert_eq!(snap.p95_wait, Some(Duration::from_secs(2)));
    }

    #[tokio::test(start_paused = true)]
    async fn percentiles_merge_across_the_minutes_of_a_window() {
        let stats = ProxyStats::new(["glm".to_owned()]);
        for _ in 0..10 {
            stats.record(call("glm", CallOutcome::Ok, 10));
        }
        tokio::time::advance(Duration::from_secs(61)).await;
        for _ in 0..90 {
            stats.record(call("glm", CallOutcome::Ok, 400));
        }
        // The last minute holds only the 400 ms calls: the clamp to the range makes it exact.
        let one = &stats.snapshot(Window::OneMinute)[0];
        assert_eq!(one.p50_latency, Some(Duration::from_millis(400)));
        assert_eq!(one.p95_latency, Some(Duration::from_millis(400)));
        // 15m holds both minutes: the median is still 400 ms (within a bin), and the
        // 5th percentile is the 10 ms calls of the first minute.
        let fifteen = &stats.snapshot(Window::FifteenMinutes)[0];
        let p50 = fifteen.p50_latency.unwrap().as_secs_f64();
        assert!((0.36..=0.40).contains(&p50), "p50 {p50} s");
        let sum = lock(&stats.inner.rings[0]).sum(stats.elapsed(), Window::FifteenMinutes);
        assert_eq!(sum.latency.quantile(0.05), Some(Duration::from_millis(10)));
        assert_eq!(sum.requests, 100);
    }

    #[test]
    fn histogram_bins_are_monotonic_and_bounded() {
        let mut last = 0;
        for us in [
            0,
            9,
            10,
            11,
            100,
            1_000,
            65_000,
            1_000_000,
            60_000_000,
            u64::MAX,
        ] {
            let bin = bin_of(us);
            assert!(bin >= last, "{us} µs went to bin {bin} < {last}");
            assert!(bin < BINS);
            last = bin;
        }
        assert_eq!(bin_of(u64::MAX), BINS - 1);
        // Each value lies within its bin: the middle is within a quarter octave.
        for us in [12u64, 150, 4_321, 987_654] {
            let mid = bin_middle_us(bin_of(us));
            let ratio = mid / us as f64;
            assert!((0.84..1.19).contains(&ratio), "{us} µs: middle {mid}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_series_holds_the_last_120_seconds() {
        let stats = ProxyStats::new(["glm".to_owned(), "openai".to_owned()]);
        stats.record(call("glm", CallOutcome::Ok, 1));
        tokio::time::advance(Duration::from_secs(100)).await;
        stats.record(call("glm", CallOutcome::RateLimited, 1));
        stats.record(call("glm", CallOutcome::RateLimited, 1));
        stats.record(call("openai", CallOutcome::Ok, 1));
        tokio::time::advance(Duration::from_secs(10)).await;

        let doc = stats.to_json(Window::OneMinute, &ok_states());
        let series = &doc["series"];
        let t = series["t"].as_array().unwrap();
        assert_eq!(t.len(), SECONDS);
        assert_eq!(
            (t[0].as_i64(), t[SECONDS - 1].as_i64()),
            (Some(-119), Some(0))
        );
        let at = |key: &str, ago: usize| series[key][SECONDS - 1 - ago].as_u64().unwrap();
        assert_eq!((at("requests", 110), at("rate_limited", 110)), (1, 0));
        assert_eq!((at("requests", 10), at("rate_limited", 10)), (3, 2));
        let total: u64 = series_total(&series["requests"]);
        assert_eq!(total, 4);
        assert_eq!(doc["backends"][1]["series"]["requests"][SECONDS - 11], 1);

        // 15 s later the first call (125 s ago) has left the chart; its slot is reused.
        tokio::time::advance(Duration::from_secs(15)).await;
        stats.record(call("glm", CallOutcome::Ok, 1));
        let doc = stats.to_json(Window::OneMinute, &ok_states());
        let total: u64 = series_total(&doc["series"]["requests"]);
        assert_eq!(total, 4);
        assert_eq!(doc["series"]["requests"][SECONDS - 1], 1);
    }

    #[tokio::test(start_paused = true)]
    async fn the_json_names_states_and_windows() {
        let stats = ProxyStats::new(["glm".to_owned(), "openai".to_owned(), "local".to_owned()]);
        tokio::time::advance(Duration::from_secs(125)).await;
        stats.record(Call {
            backend: "glm",
            outcome: CallOutcome::RateLimited,
            latency: Duration::from_micros(1500),
            wait: Duration::from_millis(20),
            tokens: 7,
        });
        let states: StateFn = Arc::new(|name: &str| match name {
            "glm" => BackendState::Cooling {
                remaining: Duration::from_millis(2500),
            },
            "openai" => BackendState::Probing,
            _ => BackendState::Ok,
        });
        let doc = stats.to_json(Window::FifteenMinutes, &states);
        assert_eq!(doc["window"], "15m");
        assert_eq!(doc["window_ms"], 900_000);
        assert_eq!(doc["covered_ms"], 125_000, "minutes 0..=2 so far");
        assert_eq!(doc["uptime_ms"], 125_000);
        let glm = &doc["backends"][0];
        assert_eq!(glm["name"], "glm");
        assert_eq!(
            (glm["state"].as_str(), glm["remaining_ms"].as_u64()),
            (Some("cooling"), Some(2500))
        );
        assert_eq!(
            (
                glm["requests"].as_u64(),
                glm["rate_limited"].as_u64(),
                glm["tokens"].as_u64()
            ),
            (Some(1), Some(1), Some(7))
        );
        assert_eq!(glm["p50_latency_ms"], 1.5);
        assert_eq!(glm["p95_wait_ms"], 20.0);
        assert_eq!(doc["backends"][1]["state"], "probing");
        assert_eq!(doc["backends"][2]["state"], "ok");
        assert_eq!(doc["backends"][2]["remaining_ms"], 0);
        assert!(doc["backends"][2]["p50_latency_ms"].is_null());

        // 1m at 2:05 covers 5 s; 60m covers everything so far.
        let doc = stats.to_json(Window::OneMinute, &states);
        assert_eq!(doc["covered_ms"], 5_000);
        let doc = stats.to_json(Window::SixtyMinutes, &states);
        assert_eq!(doc["covered_ms"], 125_000);
    }

    #[test]
    fn window_parameter_parses_or_errs() {
        assert_eq!(window_of(None), Ok(Window::OneMinute));
        assert_eq!(window_of(Some("")), Ok(Window::OneMinute));
        assert_eq!(window_of(Some("window=15m")), Ok(Window::FifteenMinutes));
        assert_eq!(window_of(Some("x=1&window=60m")), Ok(Window::SixtyMinutes));
        assert_eq!(
            window_of(Some("window=1m&window=15m")),
            Ok(Window::FifteenMinutes)
        );
        let err = window_of(Some("window=5m")).unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"window must be 1m, 15m or 60m, got "5m""#
        );
        assert!(window_of(Some("window=")).is_err());
        assert!(window_of(Some("window=1h")).is_err());
    }

    #[test]
    fn the_dashboard_loads_nothing_from_elsewhere() {
        assert!(DASHBOARD.starts_with("<!doctype html>"));
        // The SVG namespace is a name, not a URL the page loads.
        let page = DASHBOARD.replace("\"http://www.w3.org/2000/svg\"", "");
        for needle in [
            "http://", "https://", "//cdn", "src=", "href=", "<link", "@import", "url(",
        ] {
            assert!(!page.contains(needle), "dashboard.html contains {needle:?}");
        }
        assert!(DASHBOARD.contains("stats?window="));
    }

    // The routes alone on 127.0.0.1, fed recorded calls (moved here from
    // tests/proxy_dashboard.rs when the module became crate-private; unchanged).

    use crate::testing::{body_bytes, body_json, client, MockServer};
    use http::StatusCode;

    const BACKENDS: [&str; 3] = ["glm-primary", "openai-fallback", "local-vllm"];

    /// Every network step is bounded by this.
    const LIMIT: Duration = Duration::from_secs(10);

    async fn within<T>(what: &str, fut: impl std::future::Future<Output = T>) -> T {
        tokio::time::timeout(LIMIT, fut)
            .await
            .unwrap_or_else(|_| panic!("{what} took over {LIMIT:?}"))
    }

    fn names() -> impl Iterator<Item = String> {
        BACKENDS.iter().map(|s| s.to_string())
    }

    async fn get_json(server: &MockServer, path: &str) -> (StatusCode, Value) {
        let resp = within("a GET", client().get(server.url(path).parse().unwrap()))
            .await
            .unwrap();
        let status = resp.status();
        (
            status,
            within("its body", body_json(resp.into_body()))
                .await
                .unwrap(),
        )
    }

    /// The sum of a per-second series.
    fn series_total(series: &Value) -> u64 {
        series
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap())
            .sum()
    }

    fn requests(doc: &Value, backend: usize) -> u64 {
        doc["backends"][backend]["requests"].as_u64().unwrap()
    }

    #[tokio::test]
    async fn stats_windows_move_after_traffic_and_a_bad_window_is_a_400() {
        let stats = ProxyStats::new(names());
        let states: StateFn = Arc::new(|_: &str| BackendState::Ok);
        let server = MockServer::start(routes(stats.clone(), states))
            .await
            .unwrap();

        for window in ["1m", "15m", "60m"] {
            let (status, doc) = get_json(&server, &format!("/stats?window={window}")).await;
            assert_eq!(status, StatusCode::OK);
            assert_eq!(doc["window"], window);
            let names: Vec<_> = doc["backends"]
                .as_array()
                .unwrap()
                .iter()
                .map(|b| b["name"].clone())
                .collect();
            assert_eq!(names, BACKENDS);
            assert_eq!(requests(&doc, 0), 0);
        }

        for i in 0..30u64 {
            stats.record(Call {
                backend: "glm-primary",
                outcome: if i % 3 == 0 {
                    CallOutcome::RateLimited
                } else {
                    CallOutcome::Ok
                },
                latency: Duration::from_millis(100),
                wait: Duration::ZERO,
                tokens: 10,
            });
        }
        stats.record_cooldown("glm-primary");
        stats.record(Call {
            backend: "local-vllm",
            outcome: CallOutcome::Failed,
            latency: Duration::from_millis(3),
            wait: Duration::from_millis(1),
            tokens: 0,
        });

        for window in ["1m", "15m", "60m"] {
            let (_, doc) = get_json(&server, &format!("/stats?window={window}")).await;
            let glm = &doc["backends"][0];
            assert_eq!(glm["requests"], 30, "{window}");
            assert_eq!(
                (glm["ok"].as_u64(), glm["rate_limited"].as_u64()),
                (Some(20), Some(10))
            );
            assert_eq!(
                (glm["cooldowns"].as_u64(), glm["tokens"].as_u64()),
                (Some(1), Some(300))
            );
            assert_eq!(glm["p50_latency_ms"], 100.0);
            assert_eq!(requests(&doc, 1), 0);
            assert_eq!(doc["backends"][2]["failed"], 1);
            let chart: u64 = series_total(&doc["series"]["requests"]);
            assert_eq!(chart, 31);
        }
        // No window: 1m.
        let (_, doc) = get_json(&server, "/stats").await;
        assert_eq!(
            (doc["window"].as_str(), requests(&doc, 0)),
            (Some("1m"), 30)
        );

        let (status, doc) = get_json(&server, "/stats?window=5m").await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(doc["error"]["type"], "invalid_request_error");
        assert_eq!(doc["error"]["code"], "invalid_window");
        assert!(
            doc["error"]["message"]
                .as_str()
                .unwrap()
                .contains("1m, 15m or 60m"),
            "{doc}"
        );

        let resp = client()
            .get(server.url("/").parse().unwrap())
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(
            resp.headers()[header::CONTENT_TYPE],
            "text/html; charset=utf-8"
        );
        assert!(resp.headers()[header::CONTENT_SECURITY_POLICY]
            .to_str()
            .unwrap()
            .contains("default-src 'none'"));
        let page = body_bytes(resp.into_body()).await.unwrap();
        assert!(String::from_utf8_lossy(&page).contains("id=\"total-requests\""));
    }
}
