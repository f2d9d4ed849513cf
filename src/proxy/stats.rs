//! Per-backend stats of the proxy (placeholder: counters only, no dashboard).
//!
//! The proxy reports every upstream attempt with [`ProxyStats::record`] and every
//! cooldown start with [`ProxyStats::record_cooldown`]; [`routes`] serves `GET /` and
//! `GET /stats`.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use axum::{routing::get, Json, Router};
use serde_json::{json, Value};

/// A cheap, cloneable handle on the proxy's per-backend counters.
#[derive(Debug, Clone)]
pub struct ProxyStats {
    inner: Arc<HashMap<String, Counters>>,
}

#[derive(Debug, Default)]
struct Counters {
    requests: AtomicU64,
    ok: AtomicU64,
    rate_limited: AtomicU64,
    transient: AtomicU64,
    failed: AtomicU64,
    cooldowns: AtomicU64,
    tokens: AtomicU64,
}

/// How one upstream attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallOutcome {
    /// A success.
    Ok,
    /// A rate-limited answer (429, GLM 1302).
    RateLimited,
    /// A transient failure (5xx, timeout, connection error).
    Transient,
    /// Any other failure.
    Failed,
}

/// Where a backend's cooldown stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendState {
    /// Open.
    Ok,
    /// Cooling down, for `remaining` more.
    Cooling {
        /// Time left.
        remaining: Duration,
    },
    /// Half-open: one probe may go (or is in flight).
    Probing,
}

/// One upstream attempt.
#[derive(Debug, Clone, Copy)]
pub struct Call<'a> {
    /// The backend's name.
    pub backend: &'a str,
    /// How it ended.
    pub outcome: CallOutcome,
    /// From sending the request to the answer's headers.
    pub latency: Duration,
    /// Time spent waiting (rate limiter, concurrency cap) before sending.
    pub wait: Duration,
    /// Tokens the answer's `usage` reported (0 when unknown).
    pub tokens: u64,
}

impl ProxyStats {
    /// Counters for `backends`.
    pub fn new(backends: impl IntoIterator<Item = String>) -> Self {
        let inner = backends
            .into_iter()
            .map(|name| (name, Counters::default()))
            .collect();
        ProxyStats {
            inner: Arc::new(inner),
        }
    }

    /// One upstream attempt to `call.backend`.
    pub fn record(&self, call: Call<'_>) {
        let Some(c) = self.inner.get(call.backend) else {
            return;
        };
        c.requests.fetch_add(1, Ordering::Relaxed);
        let counter = match call.outcome {
            CallOutcome::Ok => &c.ok,
            CallOutcome::RateLimited => &c.rate_limited,
            CallOutcome::Transient => &c.transient,
            CallOutcome::Failed => &c.failed,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        c.tokens.fetch_add(call.tokens, Ordering::Relaxed);
    }

    /// A cooldown started for `backend`.
    pub fn record_cooldown(&self, backend: &str) {
        if let Some(c) = self.inner.get(backend) {
            c.cooldowns.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn snapshot(&self, states: &StateFn) -> Value {
        let mut names: Vec<&String> = self.inner.keys().collect();
        names.sort();
        let backends: Vec<Value> = names
            .into_iter()
            .map(|name| {
                let c = &self.inner[name];
                let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
                let state = match states(name) {
                    BackendState::Ok => json!({"state": "ok"}),
                    BackendState::Cooling { remaining } => {
                        json!({"state": "cooling", "remaining_ms": remaining.as_millis() as u64})
                    }
                    BackendState::Probing => json!({"state": "probing"}),
                };
                json!({
                    "name": name,
                    "requests": get(&c.requests),
                    "ok": get(&c.ok),
                    "rate_limited": get(&c.rate_limited),
                    "transient": get(&c.transient),
                    "failed": get(&c.failed),
                    "cooldowns": get(&c.cooldowns),
                    "tokens": get(&c.tokens),
                    "state": state,
                })
            })
            .collect();
        json!({ "backends": backends })
    }
}

/// Where a backend's cooldown stands, by name.
pub type StateFn = Arc<dyn Fn(&str) -> BackendState + Send + Sync>;

/// `GET /` and `GET /stats`.
pub fn routes(stats: ProxyStats, states: StateFn) -> Router {
    let snapshot = move || {
        let value = stats.snapshot(&states);
        async move { Json(value) }
    };
    Router::new()
        .route("/stats", get(snapshot.clone()))
        .route("/", get(snapshot))
}
