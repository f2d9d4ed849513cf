//! One backend of the proxy's pool: a shared HTTP client under the backend's classifier,
//! its rate limit, its token limit and its concurrency cap, sending to its base URL with
//! its API key, and reporting every upstream attempt to the stats.

use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex, OnceLock},
    task::{Context, Poll},
    time::Duration,
};

use axum::body::Body;
use bytes::Bytes;
use http::{header, uri::PathAndQuery, HeaderValue, Request, Response, Uri};
use http_body::Frame;
use http_body_util::Full;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use pin_project_lite::pin_project;
use tokio::{
    sync::{OwnedSemaphorePermit, Semaphore},
    time::Instant,
};
use tower::{Service, ServiceBuilder};

use super::{
    config::{Backend, BackendKind},
    stats::{Call, CallOutcome, ProxyStats},
};
use crate::{
    classify::{ClassifyLayer, Preset},
    tokens::{TokenBody, TokenLimitLayer, UsageScanner},
    vocabulary::{verdict_of, verdict_of_error, ConfigError, LayerKind, Verdict},
    BoxError, RateLimitLayer,
};

/// The request body the pool carries: buffered, so a copy can go to the next backend.
pub(crate) type ReqBody = Full<Bytes>;
/// The HTTP client every backend shares (one connection pool): `http://` and, with the
/// `proxy-tls` feature, `https://` (rustls, webpki roots).
pub(crate) type HttpClient = Client<Connector, ReqBody>;
#[cfg(feature = "proxy-tls")]
type Connector = hyper_rustls::HttpsConnector<HttpConnector>;
#[cfg(not(feature = "proxy-tls"))]
type Connector = HttpConnector;

/// The shared client, connecting within `connect`.
pub(crate) fn client(connect: Duration) -> HttpClient {
    let mut http = HttpConnector::new();
    http.set_connect_timeout(Some(connect));
    http.set_nodelay(true);
    #[cfg(feature = "proxy-tls")]
    let connector = {
        http.enforce_http(false);
        hyper_rustls::HttpsConnectorBuilder::new()
            .with_webpki_roots()
            .https_or_http()
            .enable_http1()
            .wrap_connector(http)
    };
    #[cfg(not(feature = "proxy-tls"))]
    let connector = http;
    Client::builder(hyper_util::rt::TokioExecutor::new()).build(connector)
}
type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// Which API a request is for: the path the backend's base URL is followed by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Endpoint {
    Chat,
    Embeddings,
}

impl Endpoint {
    fn path(self) -> &'static str {
        match self {
            Endpoint::Chat => "/chat/completions",
            Endpoint::Embeddings => "/embeddings",
        }
    }
}

/// When the request left for the backend (set just below the rate limiter).
#[derive(Debug, Clone, Default)]
struct SentAt(Arc<OnceLock<Instant>>);

/// When the proxy took the call (its body read): a backend's `wait` is counted from
/// here, so the pool's waits (for a cooling backend, for room, after a failover) count.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Arrived(pub(crate) Instant);

/// A backend the proxy failed to reach within its `upstream` timeout.
#[derive(Debug, thiserror::Error)]
#[error("backend `{backend}` sent no response headers within {after:?}")]
pub(crate) struct UpstreamTimeout {
    backend: Arc<str>,
    after: Duration,
}

/// What [`build`] needs besides the backend's own settings.
pub(crate) struct BuildContext<'a> {
    pub(crate) client: &'a HttpClient,
    pub(crate) stats: &'a ProxyStats,
    pub(crate) upstream_timeout: Duration,
    pub(crate) redis: Option<&'a crate::redis::Redis>,
}

/// The backend `name`'s service, or the first setting that is wrong (the reason ends
/// with the setting's place in the file).
pub(crate) fn build(
    name: &str,
    backend: &Backend,
    cx: &BuildContext<'_>,
) -> Result<Upstream, ConfigError> {
    let at = |field: &'static str, reason: String| {
        ConfigError::new(
            LayerKind::Proxy,
            field,
            format!("{reason} (at `backends.{name}.{field}`)"),
        )
    };
    let base = parse_base(&backend.base_url).map_err(|why| at("base_url", why))?;
    let auth = match &backend.api_key_env {
        None => None,
        Some(var) => {
            let key = std::env::var(var).map_err(|_| {
                at(
                    "api_key_env",
                    format!("names the environment variable {var}, which is not set"),
                )
            })?;
            let mut value =
                HeaderValue::try_from(format!("Bearer {}", key.trim())).map_err(|_| {
                    at(
                        "api_key_env",
                        format!("names {var}, whose value cannot be sent in a header"),
                    )
                })?;
            value.set_sensitive(true);
            Some(value)
        }
    };
    let limit = rate_limit(name, backend, cx).map_err(|e| {
        let field = match e.field() {
            "burst" => "burst",
            "sliding_window" => "window",
            _ => "rpm",
        };
        at(field, e.reason().to_owned())
    })?;
    let tokens =
        token_limit(name, backend, cx).map_err(|e| at(e.field(), e.reason().to_owned()))?;
    let semaphore = match backend.max_concurrency {
        Some(0) => return Err(at("max_concurrency", "must be at least 1".to_owned())),
        Some(n) => Some(Arc::new(Semaphore::new(n))),
        None => None,
    };
    let preset = match backend.kind {
        BackendKind::Glm => Preset::glm(),
        BackendKind::OpenAi => Preset::openai(),
    };
    let inner = ServiceBuilder::new()
        .option_layer(limit)
        .map_request(|req: Request<ReqBody>| {
            if let Some(sent) = req.extensions().get::<SentAt>() {
                let _ = sent.0.set(Instant::now());
            }
            req
        })
        .map_err(Into::<BoxError>::into)
        .map_response(|res: Response<_>| res.map(Body::new))
        .layer(ClassifyLayer::new(preset))
        .service(cx.client.clone());
    // The tokens above the request limit: a call takes its request slot once its
    // tokens are there (and gives them back when the request limit holds it back).
    let inner = match tokens {
        Some(tokens) => Inner::new(
            ServiceBuilder::new()
                .map_response(|res: Response<TokenBody<Body>>| res.map(Body::new))
                .layer(tokens)
                .service(inner),
        ),
        None => Inner::new(inner),
    };
    Ok(Upstream {
        inner,
        shared: Arc::new(Shared {
            name: Arc::from(name),
            base,
            auth,
            stats: cx.stats.clone(),
            timeout: cx.upstream_timeout,
            semaphore,
        }),
        acquiring: Mutex::new(None),
        permit: None,
    })
}

/// The backend's limiter: `rpm` (with `burst`) and/or `window`, refusing at once when
/// the backend has no room (the pool then cools it for the wait and moves on).
fn rate_limit(
    name: &str,
    backend: &Backend,
    cx: &BuildContext<'_>,
) -> Result<Option<RateLimitLayer>, ConfigError> {
    let mut builder = RateLimitLayer::builder()
        .max_wait(Duration::ZERO)
        .name(name);
    match (backend.rpm, backend.window) {
        (None, None) => {
            if backend.burst.is_some() {
                return Err(ConfigError::new(
                    LayerKind::RateLimit,
                    "burst",
                    "is set without `rpm`",
                ));
            }
            return Ok(None);
        }
        (Some(rpm), window) => {
            builder = builder.per_minute(rpm);
            if let Some(burst) = backend.burst {
                builder = builder.burst(burst);
            }
            if let Some(w) = window {
                if w.n == 0 || w.per.is_zero() {
                    return Err(ConfigError::new(
                        LayerKind::RateLimit,
                        "sliding_window",
                        "needs `n` and `per` above zero",
                    ));
                }
                builder = builder.limit(crate::rate_limit::Limit::sliding_window(w.n, w.per));
            }
        }
        (None, Some(w)) => {
            if backend.burst.is_some() {
                return Err(ConfigError::new(
                    LayerKind::RateLimit,
                    "burst",
                    "is set without `rpm` (a window has no burst)",
                ));
            }
            builder = builder.sliding_window(w.n, w.per);
        }
    }
    if let Some(redis) = cx.redis {
        builder = builder.store(redis.rate_limit(name));
    }
    builder.build().map(Some)
}

/// The backend's token budget: `tpm` in any `tpm_window` (default 60 s), refusing at
/// once when the backend has no room for a call's estimate (the pool then cools it for
/// the wait and moves on, or waits for it). OpenAI-kind streams are asked for their
/// usage. With Redis, every replica shares the budget (store `tpm-<backend>`). Errors
/// name the backend's field: `tpm` or `tpm_window`.
fn token_limit(
    name: &str,
    backend: &Backend,
    cx: &BuildContext<'_>,
) -> Result<Option<TokenLimitLayer>, ConfigError> {
    let error = |field: &'static str, reason: &'static str| {
        ConfigError::new(LayerKind::Tokens, field, reason)
    };
    let tpm = match (backend.tpm, backend.tpm_window) {
        (None, None) => return Ok(None),
        (None, Some(_)) => return Err(error("tpm_window", "is set without `tpm`")),
        (Some(0), _) => return Err(error("tpm", "must be at least 1 (got 0)")),
        (Some(tpm), _) => tpm,
    };
    let window = backend.tpm_window.unwrap_or(Duration::from_secs(60));
    if window.is_zero() {
        return Err(error("tpm_window", "must be above zero"));
    }
    let store = format!("tpm-{name}");
    let mut builder = TokenLimitLayer::builder()
        .per_period(tpm, window)
        .max_wait(Duration::ZERO)
        .include_usage(backend.kind == BackendKind::OpenAi)
        .name(store.clone());
    if let Some(redis) = cx.redis {
        builder = builder.store(redis.rate_limit(&store));
    }
    builder.build().map(Some)
}

/// `http://host:port/path` without a trailing `/`, or why not.
fn parse_base(text: &str) -> Result<(Uri, String), String> {
    let uri: Uri = text
        .parse()
        .map_err(|e| format!("is not a URL ({e}): {text:?}"))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") if cfg!(feature = "proxy-tls") => {}
        Some("https") => {
            return Err(format!(
                "is https ({text:?}): build with the `proxy-tls` feature to reach https backends"
            ))
        }
        _ => {
            return Err(format!(
                "must start with http:// or https:// (got {text:?})"
            ))
        }
    }
    if uri.authority().is_none() {
        return Err(format!("has no host: {text:?}"));
    }
    if uri.query().is_some() {
        return Err(format!("must not have a query: {text:?}"));
    }
    let path = uri.path().trim_end_matches('/').to_owned();
    Ok((uri, path))
}

struct Shared {
    name: Arc<str>,
    /// The base URL, and its path without a trailing `/`.
    base: (Uri, String),
    /// `Bearer <key>`, marked sensitive; never logged, never in `Debug`.
    auth: Option<HeaderValue>,
    stats: ProxyStats,
    timeout: Duration,
    semaphore: Option<Arc<Semaphore>>,
}

type Inner = tower::util::BoxCloneSyncService<Request<ReqBody>, Response<Body>, BoxError>;

/// The outermost layer of a backend: its concurrency cap (a permit taken in
/// `poll_ready`, held until the answer's body ends), its URL and key, the upstream
/// timeout, and the report of every attempt to the stats.
pub(crate) struct Upstream {
    inner: Inner,
    shared: Arc<Shared>,
    /// A permit being waited for (a `Mutex` only to make the service `Sync`; it is
    /// only touched through `&mut self`).
    acquiring: Mutex<Option<BoxFuture<Option<OwnedSemaphorePermit>>>>,
    permit: Option<OwnedSemaphorePermit>,
}

impl Clone for Upstream {
    fn clone(&self) -> Self {
        // A clone starts with no permit of its own.
        Upstream {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
            acquiring: Mutex::new(None),
            permit: None,
        }
    }
}

impl fmt::Debug for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Upstream")
            .field("name", &self.shared.name)
            .field("base_url", &self.shared.base.0)
            .field("api_key", &self.shared.auth.as_ref().map(|_| "<redacted>"))
            .finish_non_exhaustive()
    }
}

impl Service<Request<ReqBody>> for Upstream {
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = BoxFuture<Result<Response<Body>, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        if let (Some(semaphore), None) = (&self.shared.semaphore, &self.permit) {
            let acquiring = self
                .acquiring
                .get_mut()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if acquiring.is_none() {
                if let Ok(permit) = semaphore.clone().try_acquire_owned() {
                    self.permit = Some(permit);
                } else {
                    let semaphore = semaphore.clone();
                    *acquiring = Some(Box::pin(
                        async move { semaphore.acquire_owned().await.ok() },
                    ));
                }
            }
            if let Some(fut) = acquiring.as_mut() {
                match fut.as_mut().poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(permit) => {
                        *acquiring = None;
                        match permit {
                            Some(permit) => self.permit = Some(permit),
                            None => {
                                return Poll::Ready(Err("the concurrency cap was closed".into()))
                            }
                        }
                    }
                }
            }
        }
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        let start = req
            .extensions()
            .get::<Arrived>()
            .map_or_else(Instant::now, |arrived| arrived.0);
        let permit = self.permit.take();
        let shared = self.shared.clone();
        let endpoint = req
            .extensions()
            .get::<Endpoint>()
            .copied()
            .unwrap_or(Endpoint::Chat);
        let (base, path) = &shared.base;
        let mut parts = base.clone().into_parts();
        parts.path_and_query = PathAndQuery::try_from(format!("{path}{}", endpoint.path())).ok();
        match Uri::from_parts(parts) {
            Ok(uri) => *req.uri_mut() = uri,
            Err(e) => return Box::pin(async move { Err(e.into()) }),
        }
        if let Some(auth) = &shared.auth {
            req.headers_mut()
                .insert(header::AUTHORIZATION, auth.clone());
        }
        let sent = SentAt::default();
        req.extensions_mut().insert(sent.clone());
        let fut = self.inner.call(req);
        Box::pin(async move {
            let result = match tokio::time::timeout(shared.timeout, fut).await {
                Ok(result) => result,
                Err(_) => Err(Box::new(UpstreamTimeout {
                    backend: shared.name.clone(),
                    after: shared.timeout,
                }) as BoxError),
            };
            let now = Instant::now();
            // Not sent: refused by the limiter; no upstream attempt to report.
            let Some(&sent_at) = sent.0.get() else {
                return result;
            };
            let wait = sent_at.saturating_duration_since(start);
            let latency = now.saturating_duration_since(sent_at);
            let report = Report {
                shared: shared.clone(),
                wait,
                latency,
            };
            match result {
                Ok(res) => {
                    let outcome = outcome(verdict_of(&res));
                    let tap = if outcome == CallOutcome::Ok {
                        Some(Tap::new(report))
                    } else {
                        report.record(outcome, 0);
                        None
                    };
                    Ok(res.map(|body| {
                        Body::new(Tapped {
                            inner: body,
                            permit,
                            tap,
                        })
                    }))
                }
                Err(err) => {
                    report.record(outcome(verdict_of_error(&*err)), 0);
                    Err(err)
                }
            }
        })
    }
}

fn outcome(verdict: Verdict) -> CallOutcome {
    match verdict {
        Verdict::Success => CallOutcome::Ok,
        Verdict::RateLimited { .. } => CallOutcome::RateLimited,
        Verdict::Transient => CallOutcome::Transient,
        _ => CallOutcome::Failed,
    }
}

/// One upstream attempt, reported once.
struct Report {
    shared: Arc<Shared>,
    wait: Duration,
    latency: Duration,
}

impl Report {
    fn record(&self, outcome: CallOutcome, tokens: u64) {
        self.shared.stats.record(Call {
            backend: &self.shared.name,
            outcome,
            latency: self.latency,
            wait: self.wait,
            tokens,
        });
        ::metrics::counter!(
            super::UPSTREAM_REQUESTS,
            "backend" => self.shared.name.to_string(),
            "outcome" => match outcome {
                CallOutcome::Ok => "ok",
                CallOutcome::RateLimited => "rate_limited",
                CallOutcome::Transient => "transient",
                CallOutcome::Failed => "failed",
            }
        )
        .increment(1);
    }
}

/// A successful answer's report, sent when its body ends or is dropped, with the
/// tokens its last `usage` reported (the JSON body's, or the last SSE chunk's), read as
/// it passes by the token limiter's own scanner: `/stats` counts what it reconciles.
struct Tap {
    report: Report,
    usage: UsageScanner,
    /// `Ok` until the body fails: an answer cut off mid-stream is a transient failure.
    outcome: CallOutcome,
}

impl Tap {
    fn new(report: Report) -> Self {
        Tap {
            report,
            usage: UsageScanner::default(),
            outcome: CallOutcome::Ok,
        }
    }

    fn see(&mut self, data: &[u8]) {
        self.usage.feed(data);
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        self.report
            .record(self.outcome, self.usage.found().unwrap_or(0));
    }
}

pin_project! {
    /// A backend's answer body: holds the concurrency permit until it ends, and reads
    /// its tail for `usage`.
    struct Tapped {
        #[pin]
        inner: Body,
        permit: Option<OwnedSemaphorePermit>,
        tap: Option<Tap>,
    }
}

impl http_body::Body for Tapped {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.project();
        let frame = std::task::ready!(this.inner.poll_frame(cx));
        match &frame {
            Some(Ok(frame)) => {
                if let (Some(tap), Some(data)) = (this.tap.as_mut(), frame.data_ref()) {
                    tap.see(data);
                }
            }
            // The end, or an error: report now and let the permit go.
            end => {
                if let (Some(Err(_)), Some(tap)) = (end, this.tap.as_mut()) {
                    tap.outcome = CallOutcome::Transient;
                }
                this.tap.take();
                this.permit.take();
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The tokens a tap reports for an answer fed in `chunks`.
    fn tapped(chunks: &[&[u8]]) -> u64 {
        let stats = ProxyStats::new(["x".to_owned()]);
        let mut tap = Tap::new(Report {
            shared: Arc::new(Shared {
                name: Arc::from("x"),
                base: ("http://127.0.0.1:1".parse().unwrap(), String::new()),
                auth: None,
                stats: stats.clone(),
                timeout: Duration::from_secs(1),
                semaphore: None,
            }),
            wait: Duration::ZERO,
            latency: Duration::ZERO,
        });
        for chunk in chunks {
            tap.see(chunk);
        }
        drop(tap);
        let snap = stats.snapshot(super::super::stats::Window::OneMinute);
        assert_eq!(snap[0].ok, 1, "one answer reported");
        snap[0].tokens
    }

    #[tokio::test(start_paused = true)]
    async fn usage_is_read_from_a_json_body_and_from_the_last_sse_chunk() {
        let json = br#"{"id":"x","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7}}"#;
        assert_eq!(tapped(&[json]), 7);
        // Split anywhere, and after a long answer.
        let (a, b) = json.split_at(40);
        assert_eq!(tapped(&[&vec![b' '; 64 * 1024], a, b]), 7);
        let sse: &[&[u8]] = &[
            b"data: {\"choices\":[{\"delta\":{}}],\"usage\":null}\n\n",
            b"data: {\"choices\":[],\"usage\": {\"total_tokens\"",
            b": 12}}\n\ndata: [DONE]\n\n",
        ];
        assert_eq!(tapped(sse), 12);
        // GLM's last chunk without a total.
        let glm = b"data: {\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":4}}\n\n";
        assert_eq!(tapped(&[glm]), 7);
        assert_eq!(tapped(&[b"data: [DONE]\n\n"]), 0);
        assert_eq!(tapped(&[b"{\"usage\":{\"total_tokens\":"]), 0);
    }

    #[test]
    fn base_urls_are_checked() {
        assert_eq!(
            parse_base("http://127.0.0.1:8/api/paas/v4/").unwrap().1,
            "/api/paas/v4"
        );
        assert_eq!(
            parse_base("https://api.openai.com/v1").is_ok(),
            cfg!(feature = "proxy-tls")
        );
        assert!(parse_base("ftp://x/v1").is_err());
        assert!(parse_base("not a url").is_err());
    }
}
