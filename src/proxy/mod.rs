//! An OpenAI-compatible LLM gateway over a [`Pool`] (feature `proxy`): the
//! library behind the `ratewise-proxy` binary.
//!
//! [`ProxyConfig`] reads a TOML file (every key in `examples/proxy.toml`), with
//! environment variables over it; [`Proxy::from_config`] checks it, reads the API keys
//! from the environment and builds one pool: each model's backends tried in order
//! (primary, then fallback), each backend under its own RPM limit, token budget (`tpm`),
//! concurrency cap and cooldown, shared through Redis when configured. [`Proxy::router`] serves
//! `POST /v1/chat/completions` (JSON or SSE, passed through event by event),
//! `POST /v1/embeddings`, `GET /v1/models`, `GET /metrics`, `GET /stats` and `GET /`;
//! [`Proxy::serve`] runs it until a shutdown signal, letting in-flight streams finish.
//!
//! A backend's own answer always reaches the client as it came (a real 429 included,
//! with its headers and body); the proxy answers by itself only when no backend was
//! called: 503 with `Retry-After` when every backend cools, 404 `model_not_found`,
//! 400 for a body that is not JSON, 413 for one over `max_body_bytes`.
//!
//! # `/stats` and the dashboard
//!
//! Each backend's upstream attempts and cooldowns are counted in 60 per-minute buckets,
//! so `GET /stats?window=1m|15m|60m` (default `1m`; another window is a 400
//! `invalid_window`) sums the current minute and the ones before it (`covered_ms` says
//! how much time that is). Latency and wait percentiles come from a small log-spaced
//! histogram (about ±9 %), `null` when the window holds no call; the `series` are the
//! last 120 seconds, one slot a second. Backends appear by their configured names only,
//! in configured order. `GET /` is a self-contained page that reads it every second.
//!
//! ```json
//! { "window": "1m", "window_ms": 60000, "covered_ms": 42000, "uptime_ms": 42000,
//!   "backends": [ { "name": "glm", "state": "cooling", "remaining_ms": 1800,
//!     "requests": 12, "ok": 9, "rate_limited": 3, "transient": 0, "failed": 0,
//!     "cooldowns": 1, "tokens": 5400,
//!     "p50_latency_ms": 212.4, "p95_latency_ms": 480.0, "p50_wait_ms": 0.0, "p95_wait_ms": 35.1,
//!     "series": { "requests": [..], "rate_limited": [..] } } ],
//!   "series": { "t": [-119, .., 0], "requests": [..], "rate_limited": [..] } }
//! ```
//!
//! `state` is `ok`, `cooling` (for `remaining_ms`) or `probing`.
//!
//! # `/metrics`
//!
//! Prometheus text: the layers' metrics (see [`crate::metrics`]) and the proxy's own
//! counter `ratewise_proxy_upstream_requests_total`, the requests sent to each backend,
//! labelled `backend` (its configured name) and `outcome` (`ok`, `rate_limited`,
//! `transient`, `failed`).
//!
//! # Example
//!
//! ```
//! use ratewise::proxy::{Proxy, ProxyConfig};
//!
//! # fn main() -> Result<(), ratewise::BoxError> {
//! let config = ProxyConfig::from_toml(r#"
//!     [backends.glm]
//!     kind = "glm"
//!     base_url = "http://127.0.0.1:9000/api/paas/v4"
//!     rpm = 45
//!
//!     [backends.openai]
//!     kind = "openai"
//!     base_url = "http://127.0.0.1:9001/v1"
//!
//!     [models.glm-4]
//!     primary = ["glm"]
//!     fallback = ["openai"]
//! "#)?;
//! let proxy = Proxy::from_config(config)?;
//! let app: axum::Router = proxy.router(); // or: proxy.serve(listener, ctrl_c).await
//! # let _ = app; Ok(()) }
//! ```

/// The proxy's own counter: requests sent to each backend, by outcome.
const UPSTREAM_REQUESTS: &str = "ratewise_proxy_upstream_requests_total";

mod backend;
mod config;
mod server;
mod stats;

use std::{collections::BTreeSet, fmt, net::SocketAddr, sync::Arc, time::Duration};

use axum::body::Body;

pub use self::config::ProxyConfig;
use self::{
    backend::{BuildContext, ReqBody},
    config::{BackoffKind, CooldownSettings},
    stats::{BackendState, ProxyStats, StateFn},
};
use crate::{
    cooldown::{CooldownEvent, CooldownLayer, KeyState},
    pool::{Pool, PoolHandle},
    vocabulary::{ConfigError, LayerKind},
};

/// The gateway: a pool of backends behind an OpenAI-compatible HTTP API.
///
/// Built by [`from_config`](Self::from_config); cheap to clone (clones share the pool,
/// its limits, cooldowns and stats).
#[derive(Clone)]
pub struct Proxy {
    inner: Arc<Inner>,
}

struct Inner {
    pool: Pool<ReqBody, Body>,
    models: BTreeSet<String>,
    max_body: usize,
    shutdown_grace: Duration,
    listen: Option<SocketAddr>,
    stats: ProxyStats,
    prometheus: Option<metrics_exporter_prometheus::PrometheusHandle>,
}

impl fmt::Debug for Proxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Proxy")
            .field("pool", &self.inner.pool)
            .field("models", &self.inner.models)
            .field("max_body", &self.inner.max_body)
            .finish_non_exhaustive()
    }
}

fn config_error(field: &'static str, reason: impl Into<String>, path: &str) -> ConfigError {
    ConfigError::new(
        LayerKind::Proxy,
        field,
        format!("{} (at `{path}`)", reason.into()),
    )
}

impl Proxy {
    /// The proxy, or the first setting that is wrong: a [`ConfigError`] whose reason
    /// ends with the setting's place in the file (`(at `backends.glm.rpm`)`).
    ///
    /// Refused: no backend or no model; a backend name other than letters, digits,
    /// `-`, `_` and `.`; a model with no primary backend or naming an unknown one (or
    /// one twice); a `base_url` that is not `http://host[:port][/path]` (or `https://` with `proxy-tls`); an
    /// `api_key_env` variable that is not set (named in the error; its value never
    /// is); a zero `rpm`, `burst`, `window`, `tpm`, `tpm_window` or `max_concurrency`
    /// (or `tpm_window` without `tpm`); a cooldown whose
    /// `cap` or `max` is below its `base`; a Redis URL that does not parse; a zero
    /// `max_body_bytes`.
    ///
    /// It installs the process's Prometheus recorder for `/metrics` on first use
    /// (when another recorder is installed already, `/metrics` says so).
    pub fn from_config(config: ProxyConfig) -> Result<Proxy, ConfigError> {
        if config.backends.is_empty() {
            return Err(config_error(
                "backends",
                "must hold at least one backend",
                "backends",
            ));
        }
        if config.models.is_empty() {
            return Err(config_error(
                "models",
                "must hold at least one model",
                "models",
            ));
        }
        if config.max_body_bytes == 0 {
            return Err(config_error(
                "max_body_bytes",
                "must be greater than zero",
                "max_body_bytes",
            ));
        }
        for name in config.backends.keys() {
            let ok = !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
            if !ok {
                return Err(config_error(
                    "backends",
                    format!("name {name:?} must be letters, digits, `-`, `_` or `.`"),
                    &format!("backends.{name}"),
                ));
            }
        }
        let mut routes: Vec<(String, Vec<String>)> = Vec::new();
        for (model, route) in &config.models {
            let path = format!("models.{model}");
            if route.primary.is_empty() {
                return Err(config_error(
                    "primary",
                    "must name at least one backend",
                    &format!("{path}.primary"),
                ));
            }
            let mut names: Vec<String> = Vec::new();
            for (field, list) in [("primary", &route.primary), ("fallback", &route.fallback)] {
                for name in list {
                    let at = format!("{path}.{field}");
                    if !config.backends.contains_key(name) {
                        return Err(config_error(
                            field,
                            format!("names unknown backend `{name}`"),
                            &at,
                        ));
                    }
                    if names.contains(name) {
                        return Err(config_error(
                            field,
                            format!("names backend `{name}` twice"),
                            &at,
                        ));
                    }
                    names.push(name.clone());
                }
            }
            routes.push((model.clone(), names));
        }

        let redis = match &config.redis {
            None => None,
            Some(r) => {
                if r.instances == 0 {
                    return Err(config_error(
                        "instances",
                        "must be at least 1",
                        "redis.instances",
                    ));
                }
                let redis = crate::redis::Redis::new(&r.url)
                    .map_err(|e| config_error("url", e.reason().to_owned(), "redis.url"))?;
                Some(redis.prefix(&r.prefix).fail_open(r.instances))
            }
        };

        let stats = ProxyStats::new(config.backends.keys().cloned());
        let client = backend::client(config.timeouts.connect);
        let cx = BuildContext {
            client: &client,
            stats: &stats,
            upstream_timeout: config.timeouts.upstream,
            redis: redis.as_ref(),
        };

        let mut builder = Pool::builder()
            .name("proxy")
            .max_wait(config.routing.max_wait)
            .failover_on_transient(config.routing.failover_on_transient)
            .default_route(Vec::<String>::new());
        for (name, backend) in &config.backends {
            // One priority group: each model's route gives the order.
            builder = builder.backend(0, name.as_str(), backend::build(name, backend, &cx)?);
        }
        for (model, names) in routes {
            builder = builder.route(model, names);
        }
        builder = builder.cooldown(cooldown(&config.cooldown, &stats, redis.as_ref())?);
        let pool = builder.build().map_err(|e| {
            config_error("pool", format!("`{}` {}", e.field(), e.reason()), "models")
        })?;

        Ok(Proxy {
            inner: Arc::new(Inner {
                pool,
                models: config.models.keys().cloned().collect(),
                max_body: config.max_body_bytes,
                shutdown_grace: config.timeouts.shutdown,
                listen: config.listen,
                stats,
                prometheus: server::prometheus(),
            }),
        })
    }

    /// The HTTP API: `POST /v1/chat/completions`, `POST /v1/embeddings`,
    /// `GET /v1/models`, `GET /metrics`, `GET /stats`, `GET /`.
    pub fn router(&self) -> axum::Router {
        server::router(self.clone())
    }

    /// Serves [`router`](Self::router) on `listener` until `shutdown` completes, then
    /// stops accepting, lets in-flight requests and streams finish for up to
    /// `timeouts.shutdown`, and closes whatever is left.
    pub async fn serve<F>(
        self,
        listener: tokio::net::TcpListener,
        shutdown: F,
    ) -> std::io::Result<()>
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        server::serve(self, listener, shutdown).await
    }

    /// The pool's handle: each backend's cooldown state and counters.
    pub fn pool(&self) -> PoolHandle {
        self.inner.pool.handle()
    }

    /// The `listen` address of the configuration, if it set one.
    pub fn listen(&self) -> Option<SocketAddr> {
        self.inner.listen
    }

    /// Where each backend's cooldown stands, by name, for `/stats`.
    fn states(&self) -> StateFn {
        let handle = self.inner.pool.handle();
        Arc::new(move |name: &str| match handle.cooldown().state(name) {
            KeyState::Cooling { until, .. } => BackendState::Cooling {
                remaining: until.saturating_duration_since(tokio::time::Instant::now()),
            },
            KeyState::HalfOpen { .. } => BackendState::Probing,
            _ => BackendState::Ok,
        })
    }
}

/// The pool's cooldown from `[cooldown]`: reports each start to the stats, and shares
/// the table through Redis when configured.
fn cooldown(
    settings: &CooldownSettings,
    stats: &ProxyStats,
    redis: Option<&crate::redis::Redis>,
) -> Result<crate::cooldown::CooldownBuilder, ConfigError> {
    let mut builder = match settings.backoff {
        BackoffKind::Linear => CooldownLayer::builder().linear(settings.base, settings.cap),
        BackoffKind::Exponential => {
            CooldownLayer::builder().exponential(settings.base, settings.cap)
        }
    };
    if let Some(max) = settings.max {
        builder = builder.max_cooldown(max);
    }
    if let Some(precheck) = settings.precheck {
        builder = builder.precheck(precheck);
    }
    let stats = stats.clone();
    builder = builder.on_event(move |event: &CooldownEvent| {
        if let CooldownEvent::Started { key, .. } = event {
            stats.record_cooldown(key.as_str());
        }
    });
    if let Some(redis) = redis {
        builder = builder.store(redis.cooldown("cooldown"));
    }
    // Checked here, so that its errors name their place in the file.
    let check = match settings.backoff {
        BackoffKind::Linear => CooldownLayer::builder().linear(settings.base, settings.cap),
        BackoffKind::Exponential => {
            CooldownLayer::builder().exponential(settings.base, settings.cap)
        }
    };
    let check = match settings.max {
        Some(max) => check.max_cooldown(max),
        None => check,
    };
    check.build().map_err(|e| {
        let field = match e.field() {
            "max_cooldown" => "max",
            "cap" => "cap",
            _ => "base",
        };
        config_error(field, e.reason().to_owned(), &format!("cooldown.{field}"))
    })?;
    Ok(builder)
}
