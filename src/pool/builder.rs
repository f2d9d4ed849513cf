//! [`PoolBuilder`]: backends, groups, routes, cooldown and `max_wait`.

use std::{collections::HashMap, fmt, sync::Arc, time::Duration};

use http::{Request, Response};
use tower::{util::BoxCloneSyncService, Layer, Service};

use super::{
    route::{by_priority, ByBackend, ModelKey, RouteFn, Routing},
    service::{Backend, BoxBackend, Pool, Shared},
    stats::{BackendCounters, BackendInfo, PoolCounters, StatsShared},
};
use crate::{
    cooldown::{CooldownBuilder, CooldownLayer},
    key::{Key, KeyExtractor, SharedKey},
    vocabulary::{ConfigError, LayerKind, Refusal},
    BoxError,
};

/// The priority group of [`PoolBuilder::primary`] backends.
const PRIMARY: u32 = 0;
/// The priority group of [`PoolBuilder::fallback`] backends.
const FALLBACK: u32 = 1;

type MakeBackend<ReqB, ResB> = Box<dyn FnOnce(&CooldownLayer) -> BoxBackend<ReqB, ResB> + Send>;

struct PendingBackend<ReqB, ResB> {
    name: Key,
    group: u32,
    make: MakeBackend<ReqB, ResB>,
}

/// Builds a [`Pool`]; every method changes one setting, [`build`](Self::build) checks
/// them all.
pub struct PoolBuilder<ReqB, ResB> {
    backends: Vec<PendingBackend<ReqB, ResB>>,
    cooldown: CooldownBuilder,
    max_wait: Duration,
    failover_on_transient: bool,
    route_key: Option<SharedKey>,
    routes: Vec<(Key, Vec<Key>)>,
    route_fn: Option<RouteFn<ReqB>>,
    default_route: Option<Vec<Key>>,
    name: Option<Arc<str>>,
}

impl<ReqB, ResB> PoolBuilder<ReqB, ResB> {
    pub(crate) fn new() -> Self {
        PoolBuilder {
            backends: Vec::new(),
            cooldown: CooldownLayer::builder().key(ByBackend),
            max_wait: Duration::from_secs(10),
            failover_on_transient: false,
            route_key: None,
            routes: Vec::new(),
            route_fn: None,
            default_route: None,
            name: None,
        }
    }

    /// Adds a backend to the primary group (group 0, tried first).
    ///
    /// `service` is any HTTP service (usually a client under its own rate limiter and a
    /// [`ClassifyLayer`](crate::ClassifyLayer) for its platform) that is `Clone`,
    /// `Send` and `Sync`; it is boxed, so backends of different types mix. Its errors
    /// become [`BoxError`]s. The name identifies it in the cooldown table, in
    /// [`ServedBy`](super::ServedBy), in the stats and in `tracing` events: never put
    /// an API key in it.
    pub fn primary<S>(self, name: impl Into<Key>, service: S) -> Self
    where
        S: Service<Request<ReqB>, Response = Response<ResB>> + Clone + Send + Sync + 'static,
        S::Error: Into<BoxError>,
        S::Future: Send + 'static,
        ReqB: Send + 'static,
        ResB: Send + 'static,
    {
        self.backend(PRIMARY, name, service)
    }

    /// Adds a backend to the fallback group (group 1, tried after every primary
    /// backend). See [`primary`](Self::primary).
    pub fn fallback<S>(self, name: impl Into<Key>, service: S) -> Self
    where
        S: Service<Request<ReqB>, Response = Response<ResB>> + Clone + Send + Sync + 'static,
        S::Error: Into<BoxError>,
        S::Future: Send + 'static,
        ReqB: Send + 'static,
        ResB: Send + 'static,
    {
        self.backend(FALLBACK, name, service)
    }

    /// Adds a backend to priority group `group`: lower groups are tried first, and
    /// within a group backends are tried in the order they were added (or the order a
    /// route names them). See [`primary`](Self::primary).
    pub fn backend<S>(mut self, group: u32, name: impl Into<Key>, service: S) -> Self
    where
        S: Service<Request<ReqB>, Response = Response<ResB>> + Clone + Send + Sync + 'static,
        S::Error: Into<BoxError>,
        S::Future: Send + 'static,
        ReqB: Send + 'static,
        ResB: Send + 'static,
    {
        // For the pool's cooldown the backend stack is the upstream: a refusal by a layer
        // inside it (its own cooldown, its limiter's max wait) is that backend's answer.
        let service =
            tower::ServiceExt::map_err(service, |e: S::Error| mark_reached(e.into(), true));
        let make: MakeBackend<ReqB, ResB> = Box::new(move |cooldown: &CooldownLayer| {
            BoxCloneSyncService::new(cooldown.layer(service))
        });
        self.backends.push(PendingBackend {
            name: name.into(),
            group,
            make,
        });
        self
    }

    /// The pool's cooldown: how long a backend that answered rate-limited is skipped
    /// (default: [`CooldownLayer::builder`]'s, exponential `base * 2^(n-1)` from 1 s
    /// capped at 60 s, the server's retry hint winning when longer).
    ///
    /// Pass a [`CooldownBuilder`] configured as you like (backoff, `max_cooldown`,
    /// `precheck`, `on_event`); the pool replaces its key (the backend's name) and its
    /// mode ([`fail_fast`](CooldownBuilder::fail_fast): the pool does the waiting,
    /// across backends, within its own [`max_wait`](Self::max_wait)).
    pub fn cooldown(mut self, cooldown: CooldownBuilder) -> Self {
        self.cooldown = cooldown.key(ByBackend);
        self
    }

    /// The `name` label of the pool's [metrics](crate::metrics), and of its cooldown
    /// table's (default `"default"`).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into().into());
        self
    }

    /// The longest a call waits, from its arrival, for a candidate to recover or to
    /// have capacity (default 10 s). Zero: never wait.
    pub fn max_wait(mut self, max_wait: Duration) -> Self {
        self.max_wait = max_wait;
        self
    }

    /// Whether a transient answer (5xx, 408, a connection error) also moves the call on
    /// to the next candidate (default `false`: only rate-limited answers do). The
    /// backend does not cool down for it.
    pub fn failover_on_transient(mut self, on: bool) -> Self {
        self.failover_on_transient = on;
        self
    }

    /// Routes requests whose route key (by default their [`Model`](super::Model)
    /// extension) is `model` to the backends `names`, tried in priority-group order,
    /// then in the order given. Requests whose key is not in the table take the
    /// [`default_route`](Self::default_route).
    pub fn route<I>(mut self, model: impl Into<Key>, names: I) -> Self
    where
        I: IntoIterator,
        I::Item: Into<Key>,
    {
        self.routes
            .push((model.into(), names.into_iter().map(Into::into).collect()));
        self
    }

    /// How the route table reads a request's key (default: the
    /// [`Model`](super::Model) extension). Any [`KeyExtractor`], closures included.
    pub fn route_key(mut self, key: impl KeyExtractor) -> Self {
        self.route_key = Some(Arc::new(key));
        self
    }

    /// The backends of requests the route table does not match (default: every
    /// backend). An empty list makes such requests fail with
    /// [`RefusalKind::NoRoute`](crate::vocabulary::RefusalKind::NoRoute).
    pub fn default_route<I>(mut self, names: I) -> Self
    where
        I: IntoIterator,
        I::Item: Into<Key>,
    {
        self.default_route = Some(names.into_iter().map(Into::into).collect());
        self
    }

    /// Routes with a closure instead of a table: it names the candidate backends of each
    /// request; they are tried in priority-group order, then in the order named. Names
    /// the pool does not know are ignored (with a `warn` event); a request left with no
    /// backend fails with [`RefusalKind::NoRoute`](crate::vocabulary::RefusalKind::NoRoute).
    pub fn route_fn<F, I>(mut self, route: F) -> Self
    where
        F: Fn(&Request<ReqB>) -> I + Send + Sync + 'static,
        I: IntoIterator,
        I::Item: Into<Key>,
    {
        self.route_fn = Some(Arc::new(move |req: &Request<ReqB>| {
            route(req).into_iter().map(Into::into).collect()
        }));
        self
    }

    /// The pool, or the first setting that makes no sense.
    ///
    /// Refused, naming the field: no backends (`backends`); an empty or repeated
    /// backend name (`name`); a route naming an unknown backend, no backend, a backend
    /// twice, or a model routed twice (`route`); `route_fn` together with a route table,
    /// a `default_route` or a `route_key` (`route_fn`); a `route_key` without a route
    /// table (`route_key`); a `default_route` naming an unknown backend, or empty with
    /// no route table (`default_route`); a cooldown its own builder refuses
    /// (`cooldown`).
    pub fn build(self) -> Result<Pool<ReqB, ResB>, ConfigError> {
        if self.backends.is_empty() {
            return Err(config_error("backends", "must hold at least one backend"));
        }
        let mut index: HashMap<Key, usize> = HashMap::new();
        for (i, b) in self.backends.iter().enumerate() {
            if b.name.as_str().is_empty() {
                return Err(config_error("name", "must not be empty"));
            }
            if index.insert(b.name.clone(), i).is_some() {
                return Err(config_error(
                    "name",
                    format!("`{}` names two backends", b.name),
                ));
            }
        }
        let groups: Arc<[u32]> = self.backends.iter().map(|b| b.group).collect();
        let resolve = |field: &'static str, what: &str, names: &[Key]| {
            let mut list = Vec::with_capacity(names.len());
            for name in names {
                let Some(&i) = index.get(name) else {
                    return Err(config_error(
                        field,
                        format!("{what} names unknown backend `{name}`"),
                    ));
                };
                if list.contains(&i) {
                    return Err(config_error(
                        field,
                        format!("{what} names backend `{name}` twice"),
                    ));
                }
                list.push(i);
            }
            by_priority(&mut list, &groups);
            Ok::<Arc<[usize]>, ConfigError>(list.into())
        };

        let routing = if let Some(route) = self.route_fn {
            if !self.routes.is_empty() {
                return Err(config_error(
                    "route_fn",
                    "cannot be combined with a route table (`route`)",
                ));
            }
            if self.default_route.is_some() {
                return Err(config_error(
                    "route_fn",
                    "cannot be combined with `default_route`: the closure chooses every route",
                ));
            }
            if self.route_key.is_some() {
                return Err(config_error(
                    "route_fn",
                    "cannot be combined with `route_key`, which only the route table uses",
                ));
            }
            Routing::Fn {
                route,
                names: index.clone(),
                groups: groups.clone(),
            }
        } else {
            let all: Vec<Key> = self.backends.iter().map(|b| b.name.clone()).collect();
            let default = match &self.default_route {
                Some(names) => resolve("default_route", "the default route", names)?,
                None => resolve("default_route", "the default route", &all)?,
            };
            if self.routes.is_empty() {
                if self.route_key.is_some() {
                    return Err(config_error(
                        "route_key",
                        "is only used by a route table: add routes with `route`",
                    ));
                }
                if default.is_empty() {
                    return Err(config_error(
                        "default_route",
                        "is empty and there is no route table: no request could be sent",
                    ));
                }
                Routing::All(default)
            } else {
                let mut table = HashMap::new();
                for (model, names) in &self.routes {
                    let what = format!("the route for model `{model}`");
                    if names.is_empty() {
                        return Err(config_error("route", format!("{what} names no backend")));
                    }
                    let list = resolve("route", &what, names)?;
                    if table.insert(model.clone(), list).is_some() {
                        return Err(config_error(
                            "route",
                            format!("model `{model}` is routed twice"),
                        ));
                    }
                }
                Routing::Table {
                    key: self.route_key.unwrap_or_else(|| Arc::new(ModelKey)),
                    table,
                    default,
                }
            }
        };

        let mut cooldown = self.cooldown.fail_fast();
        if let Some(name) = &self.name {
            cooldown = cooldown.name(name.as_ref());
        }
        let cooldown = cooldown.build().map_err(|e| {
            config_error("cooldown", format!("field `{}` {}", e.field(), e.reason()))
        })?;
        let mut infos = Vec::with_capacity(self.backends.len());
        let mut backends = Vec::with_capacity(self.backends.len());
        for b in self.backends {
            infos.push(BackendInfo {
                name: b.name.clone(),
                group: b.group,
                counters: BackendCounters::default(),
            });
            backends.push(Backend {
                name: b.name,
                service: (b.make)(&cooldown),
            });
        }
        let totals = PoolCounters::default();
        totals.meter.set_name(self.name);
        let stats = Arc::new(StatsShared {
            backends: infos,
            totals,
            cooldown: cooldown.handle(),
        });
        Ok(Pool::from_shared(Arc::new(Shared {
            backends,
            routing,
            max_wait: self.max_wait,
            failover_on_transient: self.failover_on_transient,
            stats,
        })))
    }
}

impl<ReqB, ResB> fmt::Debug for PoolBuilder<ReqB, ResB> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let backends: Vec<(&str, u32)> = self
            .backends
            .iter()
            .map(|b| (b.name.as_str(), b.group))
            .collect();
        f.debug_struct("PoolBuilder")
            .field("backends", &backends)
            .field("cooldown", &self.cooldown)
            .field("max_wait", &self.max_wait)
            .field("failover_on_transient", &self.failover_on_transient)
            .field("routes", &self.routes)
            .field("route_fn", &self.route_fn.is_some())
            .field("default_route", &self.default_route)
            .finish_non_exhaustive()
    }
}

fn config_error(
    field: &'static str,
    reason: impl Into<std::borrow::Cow<'static, str>>,
) -> ConfigError {
    ConfigError::new(LayerKind::Pool, field, reason)
}

/// `err` with a [`Refusal`] on top marked as having reached (or not) the upstream: a
/// backend's refusal is marked on its way into the pool's cooldown, and unmarked on its
/// way out to the caller, for whom nothing reached the upstream.
pub(crate) fn mark_reached(err: BoxError, reached: bool) -> BoxError {
    match err.downcast::<Refusal>() {
        Ok(refusal) => Box::new(refusal.with_reached_upstream(reached)),
        Err(err) => err,
    }
}
