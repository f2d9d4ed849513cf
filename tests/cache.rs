//! `CachedEndpointLayer` behaviour: the QQ `/gateway` reconnect storm against the
//! crate's QQ mock on 127.0.0.1 (with the `testing` feature), and paused-clock tests of freshness, single flight,
//! cooldowns, the body cap, errors and cancellation with a `service_fn` upstream.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::fmt;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Empty};
use ratewise::cache::{CacheStatus, CachedEndpointLayer, StaleReason};

/// The layer's default backoff after a rate-limited answer without a hint (10 s).
const DEFAULT_BACKOFF: Duration = Duration::from_secs(10);
use ratewise::key::{Key, KeyExtractor, MethodUri, RequestRef};
use ratewise::vocabulary::RefusalKind;
use ratewise::Refusal;
use tokio::task::JoinSet;
use tokio::time::{advance, sleep, Instant};
use tower::{service_fn, Service, ServiceBuilder, ServiceExt};

/// The QQ `GET /gateway` reconnect storm over real HTTP on 127.0.0.1, against the
/// crate's QQ mock (2 calls per 10 s window, then 400 "接口调用超过频率限制") and
/// classified by the crate's QQ preset.
#[cfg(feature = "testing")]
mod qq_gateway {
    use super::*;

    use http::Method;
    use http_body_util::Full;
    use ratewise::classify::{ClassifyLayer, Preset};
    use ratewise::testing::{body_bytes, client, empty_request, qq, MockServer, QqGateway};
    use ratewise::BoxError;

    /// The running mock, with the URL and cache key of its `GET /gateway`.
    struct Gateway {
        qq: QqGateway,
        server: MockServer,
    }

    impl Gateway {
        async fn start() -> Gateway {
            // The mock's defaults are QQ's: 2 calls per 10 s window.
            let qq = QqGateway::new();
            assert_eq!((qq::DEFAULT_LIMIT, qq::DEFAULT_WINDOW.as_secs()), (2, 10));
            let server = MockServer::start(qq.router()).await.unwrap();
            Gateway { qq, server }
        }

        fn url(&self) -> String {
            self.server.url("/gateway")
        }

        /// The cache key of `GET /gateway` (the default key, `MethodUri`).
        fn key(&self) -> String {
            MethodUri::key_for(&Method::GET, &self.url().parse().unwrap())
                .as_str()
                .to_owned()
        }

        fn req(&self) -> Request<Full<Bytes>> {
            empty_request(Method::GET, &self.url()).unwrap()
        }

        /// Requests that reached the mock.
        fn hits(&self) -> usize {
            self.qq.hits().count()
        }

        /// Hands out `wss://gateway.test/websocket/<n>` from now on, and returns the
        /// body the mock will answer with.
        fn set_url(&self, n: usize) -> Bytes {
            let url = format!("wss://gateway.test/websocket/{n}");
            self.qq.set_url(url.clone());
            Bytes::from(serde_json::json!({ "url": url }).to_string())
        }
    }

    /// Creates `n` calls at once (every one decides before any runs), runs them
    /// concurrently and returns each result with its status and body.
    async fn storm<S, Req, B>(
        svc: &S,
        n: usize,
        req: impl Fn() -> Req,
    ) -> Vec<Result<(StatusCode, Option<CacheStatus>, Bytes), BoxError>>
    where
        S: Service<Req, Response = Response<B>, Error = BoxError> + Clone + Send + 'static,
        S::Future: Send + 'static,
        B: Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        let mut calls = Vec::with_capacity(n);
        for _ in 0..n {
            let mut svc = svc.clone();
            calls.push(svc.ready().await.unwrap().call(req()));
        }
        let mut set = JoinSet::new();
        for (i, fut) in calls.into_iter().enumerate() {
            set.spawn(async move {
                let res = fut.await?;
                let status = res.status();
                let cache = CacheStatus::of(&res);
                let body = body_bytes(res.into_body()).await?;
                Ok::<_, BoxError>((i, status, cache, body))
            });
        }
        let mut out: Vec<_> = (0..n).map(|_| None).collect();
        let mut errors = Vec::new();
        while let Some(joined) = set.join_next().await {
            match joined.unwrap() {
                Ok((i, status, cache, body)) => out[i] = Some(Ok((status, cache, body))),
                Err(e) => errors.push(e),
            }
        }
        let mut out: Vec<_> = out.into_iter().flatten().collect();
        out.extend(errors.into_iter().map(Err));
        out
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn qq_reconnect_storm_is_served_from_the_cache() {
        let gw = Gateway::start().await;
        let cache = CachedEndpointLayer::new();
        let handle = cache.handle();
        let svc = ServiceBuilder::new()
            .layer(cache)
            .layer(ClassifyLayer::new(Preset::qq()))
            .service(client());
        let req = || gw.req();

        // Warm the cache with one call.
        let url1 = gw.set_url(1);
        let res = svc.clone().oneshot(req()).await.unwrap();
        assert_eq!(CacheStatus::of(&res), Some(CacheStatus::Miss));
        assert_eq!(body_bytes(res.into_body()).await.unwrap(), url1);
        assert_eq!(gw.hits(), 1);

        // The gateway would now hand out another URL, but a storm of 50 reconnects
        // makes no call at all, and everyone gets the cached URL.
        let url2 = gw.set_url(2);
        let got = storm(&svc, 50, req).await;
        assert_eq!(gw.hits(), 1, "a fresh entry costs no call");
        for r in &got {
            let (status, cache, body) = r.as_ref().unwrap();
            assert_eq!(*status, StatusCode::OK);
            assert_eq!(*cache, Some(CacheStatus::Hit));
            assert_eq!(*body, url1);
        }

        // The URL turned out dead. The next storm refreshes with ONE call (the server
        // still has quota) and every caller gets the new URL.
        assert!(handle.invalidate(gw.key()));
        let got = storm(&svc, 50, req).await;
        assert_eq!(gw.hits(), 2, "one refresh for 50 callers");
        assert_eq!(gw.qq.hits().served(), 2);
        let mut statuses = Vec::new();
        for r in &got {
            let (status, cache, body) = r.as_ref().unwrap();
            assert_eq!(*status, StatusCode::OK);
            assert_eq!(*body, url2);
            statuses.push(cache.unwrap());
        }
        assert_eq!(
            statuses.iter().filter(|s| **s == CacheStatus::Miss).count(),
            1
        );
        assert_eq!(
            statuses.iter().filter(|s| **s == CacheStatus::Hit).count(),
            49
        );

        // Dead again, and now the server's window is spent: the refresh is answered
        // 400 "接口调用超过频率限制", and all 50 get the stale URL, marked stale (not the
        // URL the gateway would hand out next).
        gw.set_url(3);
        assert!(handle.invalidate(gw.key()));
        let got = storm(&svc, 50, req).await;
        assert_eq!(gw.hits(), 3, "one refused refresh for 50 callers");
        assert_eq!(gw.qq.hits().rate_limited(), 1);
        for r in &got {
            let (status, cache, body) = r.as_ref().unwrap();
            assert_eq!(*status, StatusCode::OK);
            assert_eq!(*body, url2);
            assert_eq!(
                *cache,
                Some(CacheStatus::Stale {
                    reason: StaleReason::RateLimited
                })
            );
        }

        // Cooling down (no hint from QQ: the default 10 s): more reconnects cost
        // nothing.
        let left = handle.cooldown(gw.key()).expect("cooling down");
        assert!(left <= DEFAULT_BACKOFF);
        for _ in 0..5 {
            let res = svc.clone().oneshot(req()).await.unwrap();
            assert!(matches!(
                CacheStatus::of(&res),
                Some(CacheStatus::Stale {
                    reason: StaleReason::CoolingDown { .. }
                })
            ));
            assert_eq!(body_bytes(res.into_body()).await.unwrap(), url2);
        }
        assert_eq!(gw.hits(), 3, "no call during the cooldown");

        let stats = handle.stats();
        assert_eq!(stats.upstream_calls, 3);
        assert_eq!(
            stats.hits,
            50 + 49,
            "the first storm, then the refresh's waiters"
        );
        assert_eq!(stats.misses, 1 + 50 + 50 + 5);
        assert_eq!(stats.stale_serves, 55);
        assert_eq!(stats.coalesced, 98);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn qq_storm_with_an_empty_cache_returns_the_upstreams_400_unchanged() {
        let gw = Gateway::start().await;
        let client = client();
        let req = || gw.req();

        // Someone else (a previous process) spent the window...
        for _ in 0..2 {
            let res = client.clone().oneshot(req()).await.unwrap();
            assert_eq!(res.status(), StatusCode::OK);
        }
        // ...and got the 400 whose bytes the storm's callers must get unchanged.
        let res = client.clone().oneshot(req()).await.unwrap();
        assert_eq!(res.status(), StatusCode::BAD_REQUEST);
        let limited_body = body_bytes(res.into_body()).await.unwrap();
        let text = std::str::from_utf8(&limited_body).unwrap();
        assert!(text.contains(qq::RATE_LIMIT_MESSAGE), "{text}");
        assert_eq!(gw.hits(), 3);

        let cache = CachedEndpointLayer::new();
        let handle = cache.handle();
        let svc = ServiceBuilder::new()
            .layer(cache)
            .layer(ClassifyLayer::new(Preset::qq()))
            .service(client);

        let got = storm(&svc, 50, req).await;
        assert_eq!(gw.hits(), 4, "one call for the whole storm");
        assert_eq!(gw.qq.hits().rate_limited(), 2);
        for r in &got {
            let (status, cache, body) = r.as_ref().unwrap();
            assert_eq!(*status, StatusCode::BAD_REQUEST);
            assert_eq!(*cache, Some(CacheStatus::Miss));
            assert_eq!(*body, limited_body, "the upstream's bytes");
        }
        assert!(!handle.contains(gw.key()), "a 400 is not cached");

        // The callers after it, within the cooldown, get a typed error, not a call.
        let res = svc.clone().oneshot(req()).await;
        let err = res.expect_err("cooling down with nothing cached");
        let limited = endpoint_limited(&*err);
        assert_eq!(limited.key().unwrap().as_str(), gw.key());
        let remaining = limited.retry_after().unwrap();
        assert!(remaining > Duration::ZERO && remaining <= DEFAULT_BACKOFF);
        assert_eq!(gw.hits(), 4);
        assert_eq!(handle.stats().refused, 1);
    }
}

/// The cache's refusal of a rate-limited endpoint with nothing cached, or a panic.
fn endpoint_limited<'a>(err: &'a (dyn std::error::Error + 'static)) -> &'a Refusal {
    Refusal::find(err)
        .filter(|r| matches!(r.kind(), RefusalKind::EndpointLimited))
        .expect("EndpointLimited")
}

// ---------------------------------------------------------------------------------
// Paused-clock tests with a `service_fn` upstream.

/// The default key (`MethodUri`) of `GET http://upstream.test/gateway`.
fn key() -> Key {
    MethodUri.key_of(&get())
}

fn get() -> Request<Empty<Bytes>> {
    Request::get("http://upstream.test/gateway")
        .body(Empty::new())
        .unwrap()
}

/// A body yielding the given chunks, one frame each.
#[derive(Debug)]
struct Chunks(VecDeque<Bytes>);

impl Chunks {
    fn new(chunks: &[&'static str]) -> Self {
        Chunks(
            chunks
                .iter()
                .map(|c| Bytes::from_static(c.as_bytes()))
                .collect(),
        )
    }
}

impl Body for Chunks {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.0.pop_front().map(|c| Ok(Frame::data(c))))
    }

    /// Like a body with a `content-length`: knows when it has ended.
    fn is_end_stream(&self) -> bool {
        self.0.is_empty()
    }
}

fn answer(status: u16, body: &'static str) -> Result<Response<Chunks>, Boom> {
    Ok(Response::builder()
        .status(status)
        .body(Chunks::new(&[body]))
        .unwrap())
}

/// The upstream's own error type.
#[derive(Debug, PartialEq)]
struct Boom(&'static str);

impl fmt::Display for Boom {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "upstream failed: {}", self.0)
    }
}

impl std::error::Error for Boom {}

/// What reached the upstream.
#[derive(Debug, Clone, Default)]
struct Seen {
    calls: Arc<AtomicUsize>,
    in_flight: Arc<AtomicUsize>,
    max_in_flight: Arc<AtomicUsize>,
    /// When each call arrived.
    at: Arc<Mutex<Vec<Instant>>>,
}

impl Seen {
    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
    fn max_in_flight(&self) -> usize {
        self.max_in_flight.load(Ordering::SeqCst)
    }
}

/// An upstream that takes `delay` per call and answers call `n` (from 0) with
/// `script(n)`.
fn upstream<F>(
    delay: Duration,
    script: F,
) -> (
    impl Service<
            Request<Empty<Bytes>>,
            Response = Response<Chunks>,
            Error = Boom,
            Future = impl Send,
        > + Clone
        + Send,
    Seen,
)
where
    F: Fn(usize) -> Result<Response<Chunks>, Boom> + Clone + Send + Sync + 'static,
{
    let seen = Seen::default();
    let svc = service_fn({
        let seen = seen.clone();
        move |_req: Request<Empty<Bytes>>| {
            let n = seen.calls.fetch_add(1, Ordering::SeqCst);
            seen.at.lock().unwrap().push(Instant::now());
            let now = seen.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            seen.max_in_flight.fetch_max(now, Ordering::SeqCst);
            let (seen, script) = (seen.clone(), script.clone());
            async move {
                sleep(delay).await;
                seen.in_flight.fetch_sub(1, Ordering::SeqCst);
                script(n)
            }
        }
    });
    (svc, seen)
}

async fn body_of<B>(res: Response<B>) -> Bytes
where
    B: Body,
    B::Error: fmt::Debug,
{
    res.into_body().collect().await.unwrap().to_bytes()
}

fn stale(reason: StaleReason) -> Option<CacheStatus> {
    Some(CacheStatus::Stale { reason })
}

#[tokio::test(start_paused = true)]
async fn fresh_for_the_ttl_without_calls_then_one_refresh() {
    let (inner, seen) = upstream(Duration::from_millis(10), |n| match n {
        0 => answer(200, "v1"),
        _ => answer(200, "v2"),
    });
    let layer = CachedEndpointLayer::builder()
        .ttl(Duration::from_secs(60))
        .build()
        .unwrap();
    let handle = layer.handle();
    let svc = ServiceBuilder::new().layer(layer).service(inner);

    let res = svc.clone().oneshot(get()).await.unwrap();
    assert_eq!(CacheStatus::of(&res), Some(CacheStatus::Miss));
    assert_eq!(body_of(res).await, "v1");
    let stored = Instant::now();

    advance(Duration::from_secs(59)).await;
    for _ in 0..10 {
        let res = svc.clone().oneshot(get()).await.unwrap();
        assert_eq!(CacheStatus::of(&res), Some(CacheStatus::Hit));
        assert_eq!(body_of(res).await, "v1");
    }
    assert_eq!(seen.calls(), 1, "no call while fresh");

    advance(Duration::from_secs(1)).await;
    let res = svc.clone().oneshot(get()).await.unwrap();
    assert_eq!(CacheStatus::of(&res), Some(CacheStatus::Miss));
    assert_eq!(body_of(res).await, "v2");
    assert_eq!(seen.calls(), 2, "one refresh once the TTL passed");
    assert_eq!(seen.at.lock().unwrap()[1] - stored, Duration::from_secs(60));

    let res = svc.clone().oneshot(get()).await.unwrap();
    assert_eq!(CacheStatus::of(&res), Some(CacheStatus::Hit));
    assert_eq!(body_of(res).await, "v2");
    assert_eq!(seen.calls(), 2);
    let stats = handle.stats();
    assert_eq!((stats.hits, stats.misses, stats.upstream_calls), (11, 2, 2));
    assert_eq!(
        (stats.stale_serves, stats.coalesced, stats.refused),
        (0, 0, 0)
    );
}

#[tokio::test(start_paused = true)]
async fn a_cold_miss_of_50_callers_makes_one_call() {
    let (inner, seen) = upstream(Duration::from_secs(1), |_| answer(200, "v1"));
    let layer = CachedEndpointLayer::new();
    let handle = layer.handle();
    let svc = ServiceBuilder::new().layer(layer).service(inner);

    let start = Instant::now();
    let mut set = JoinSet::new();
    for _ in 0..50 {
        set.spawn(svc.clone().oneshot(get()));
    }
    let mut statuses = Vec::new();
    while let Some(res) = set.join_next().await {
        let res = res.unwrap().unwrap();
        statuses.push(CacheStatus::of(&res).unwrap());
        assert_eq!(body_of(res).await, "v1");
    }
    assert_eq!(seen.calls(), 1);
    assert_eq!(
        start.elapsed(),
        Duration::from_secs(1),
        "waiters did not queue"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == CacheStatus::Miss).count(),
        1
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == CacheStatus::Hit).count(),
        49
    );
    let stats = handle.stats();
    assert_eq!(stats.upstream_calls, 1);
    assert_eq!(stats.misses, 50);
    assert_eq!(stats.coalesced, 49);
    assert_eq!(stats.hits, 49);
}

#[tokio::test(start_paused = true)]
async fn no_refresh_attempt_until_the_servers_retry_hint_has_passed() {
    let (inner, seen) = upstream(Duration::from_millis(10), |n| match n {
        0 => answer(200, "v1"),
        1 => {
            // "Rate-limited, retry in 30 s", read by the crate's one parser.
            let mut res = answer(429, "slow down")?;
            res.headers_mut()
                .insert("retry-after", http::HeaderValue::from_static("30"));
            Ok(res)
        }
        _ => answer(200, "v2"),
    });
    let layer = CachedEndpointLayer::new();
    let handle = layer.handle();
    let svc = ServiceBuilder::new().layer(layer).service(inner);

    assert_eq!(
        body_of(svc.clone().oneshot(get()).await.unwrap()).await,
        "v1"
    );
    handle.invalidate(key());
    let res = svc.clone().oneshot(get()).await.unwrap();
    assert_eq!(CacheStatus::of(&res), stale(StaleReason::RateLimited));
    assert_eq!(body_of(res).await, "v1");
    assert_eq!(seen.calls(), 2);
    let limited_at = Instant::now();

    for step in 1..=29 {
        advance(Duration::from_secs(1)).await;
        let res = svc.clone().oneshot(get()).await.unwrap();
        assert_eq!(
            CacheStatus::of(&res),
            stale(StaleReason::CoolingDown {
                remaining: Duration::from_secs(30 - step)
            })
        );
        assert_eq!(body_of(res).await, "v1");
    }
    assert_eq!(
        seen.calls(),
        2,
        "no call during the 30 s the server asked for"
    );

    advance(Duration::from_secs(1)).await;
    let res = svc.clone().oneshot(get()).await.unwrap();
    assert_eq!(CacheStatus::of(&res), Some(CacheStatus::Miss));
    assert_eq!(body_of(res).await, "v2");
    assert_eq!(seen.calls(), 3);
    assert_eq!(
        seen.at.lock().unwrap()[2] - limited_at,
        Duration::from_secs(30)
    );
}

#[tokio::test(start_paused = true)]
async fn without_a_hint_the_default_backoff_holds_refreshes_back() {
    // 429 and no Retry-After: the configured default backoff (4 s) applies.
    let (inner, seen) = upstream(Duration::from_millis(10), |n| match n {
        0 => answer(200, "v1"),
        1 => answer(429, ""),
        _ => answer(200, "v2"),
    });
    let layer = CachedEndpointLayer::builder()
        .default_backoff(Duration::from_secs(4))
        .build()
        .unwrap();
    let handle = layer.handle();
    let svc = ServiceBuilder::new().layer(layer).service(inner);

    svc.clone().oneshot(get()).await.unwrap();
    assert_eq!(handle.invalidate_all(), 1);
    let res = svc.clone().oneshot(get()).await.unwrap();
    assert_eq!(CacheStatus::of(&res), stale(StaleReason::RateLimited));
    assert_eq!(handle.cooldown(key()), Some(Duration::from_secs(4)));

    advance(Duration::from_millis(3999)).await;
    let res = svc.clone().oneshot(get()).await.unwrap();
    assert!(CacheStatus::of(&res).unwrap().is_stale());
    assert_eq!(seen.calls(), 2);

    advance(Duration::from_millis(1)).await;
    let res = svc.clone().oneshot(get()).await.unwrap();
    assert_eq!(body_of(res).await, "v2");
    assert_eq!(seen.calls(), 3);
}

#[tokio::test(start_paused = true)]
async fn rate_limited_with_nothing_cached_copies_the_answer_then_refuses() {
    let (inner, seen) = upstream(Duration::from_secs(1), |n| match n {
        0 => {
            let mut res = answer(429, "{\"error\":\"slow down\"}")?;
            res.headers_mut()
                .insert("x-upstream", "yes".parse().unwrap());
            Ok(res)
        }
        _ => answer(200, "v1"),
    });
    let layer = CachedEndpointLayer::new();
    let svc = ServiceBuilder::new().layer(layer).service(inner);

    let mut set = JoinSet::new();
    for _ in 0..10 {
        set.spawn(svc.clone().oneshot(get()));
    }
    while let Some(res) = set.join_next().await {
        let res = res.unwrap().unwrap();
        assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(res.headers()["x-upstream"], "yes");
        assert_eq!(body_of(res).await, "{\"error\":\"slow down\"}");
    }
    assert_eq!(seen.calls(), 1);

    advance(DEFAULT_BACKOFF - Duration::from_secs(1)).await;
    let err = svc.clone().oneshot(get()).await.unwrap_err();
    let limited = endpoint_limited(&*err);
    assert_eq!(limited.key().unwrap(), &key());
    // The cooldown started when the 429 arrived, 1 s after the call.
    assert_eq!(limited.retry_after().unwrap(), Duration::from_secs(1));
    assert_eq!(seen.calls(), 1);

    advance(Duration::from_secs(1)).await;
    let res = svc.clone().oneshot(get()).await.unwrap();
    assert_eq!(body_of(res).await, "v1");
    assert_eq!(seen.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_body_over_the_cap_passes_through_whole_and_is_not_cached() {
    let (inner, seen) = upstream(Duration::from_millis(10), |_| {
        Ok(Response::new(Chunks::new(&[
            "0123456789",
            "abcdefghij",
            "ABCDEFGHIJ",
        ])))
    });
    let layer = CachedEndpointLayer::builder().body_cap(16).build().unwrap();
    let handle = layer.handle();
    let svc = ServiceBuilder::new().layer(layer).service(inner);

    for call in 1..=2 {
        let res = svc.clone().oneshot(get()).await.unwrap();
        assert_eq!(CacheStatus::of(&res), Some(CacheStatus::Miss));
        assert_eq!(body_of(res).await, "0123456789abcdefghijABCDEFGHIJ");
        assert_eq!(seen.calls(), call, "not cached: every request calls");
    }
    assert!(!handle.contains(key()));

    // Exactly the cap fits.
    let (inner, seen) = upstream(Duration::from_millis(10), |_| {
        Ok(Response::new(Chunks::new(&["0123456789", "abcdef"])))
    });
    let svc = ServiceBuilder::new()
        .layer(CachedEndpointLayer::builder().body_cap(16).build().unwrap())
        .service(inner);
    svc.clone().oneshot(get()).await.unwrap();
    let res = svc.clone().oneshot(get()).await.unwrap();
    assert_eq!(CacheStatus::of(&res), Some(CacheStatus::Hit));
    assert_eq!(body_of(res).await, "0123456789abcdef");
    assert_eq!(seen.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn answers_that_cannot_be_shared_are_fetched_one_call_at_a_time() {
    // Over the cap: each waiter needs its own answer; never two calls at once.
    let (inner, seen) = upstream(Duration::from_secs(1), |_| {
        Ok(Response::new(Chunks::new(&["0123456789abcdefghij"])))
    });
    let svc = ServiceBuilder::new()
        .layer(CachedEndpointLayer::builder().body_cap(8).build().unwrap())
        .service(inner);
    let mut set = JoinSet::new();
    for _ in 0..3 {
        set.spawn(svc.clone().oneshot(get()));
    }
    while let Some(res) = set.join_next().await {
        assert_eq!(body_of(res.unwrap().unwrap()).await, "0123456789abcdefghij");
    }
    assert_eq!(seen.calls(), 3);
    assert_eq!(seen.max_in_flight(), 1);

    // An error: the next waiter calls, and its good answer serves the rest.
    let (inner, seen) = upstream(Duration::from_secs(1), |n| match n {
        0 => Err(Boom("connection reset")),
        _ => answer(200, "v1"),
    });
    let layer = CachedEndpointLayer::new();
    let handle = layer.handle();
    let svc = ServiceBuilder::new().layer(layer).service(inner);
    let mut set = JoinSet::new();
    for _ in 0..5 {
        set.spawn(svc.clone().oneshot(get()));
    }
    let (mut errors, mut bodies) = (0, Vec::new());
    while let Some(res) = set.join_next().await {
        match res.unwrap() {
            Ok(res) => bodies.push(body_of(res).await),
            Err(err) => {
                assert_eq!(err.downcast_ref::<Boom>(), Some(&Boom("connection reset")));
                errors += 1;
            }
        }
    }
    assert_eq!((errors, bodies.len()), (1, 4));
    assert!(bodies.iter().all(|b| b == "v1"));
    assert_eq!(seen.calls(), 2);
    assert_eq!(seen.max_in_flight(), 1);
    assert_eq!(handle.stats().hits, 3);
}

#[tokio::test(start_paused = true)]
async fn failures_and_errors_with_an_entry_serve_it_stale() {
    let (inner, seen) = upstream(Duration::from_millis(10), |n| match n {
        0 => answer(200, "v1"),
        1 => answer(503, "maintenance"),
        2 => Err(Boom("connection refused")),
        _ => answer(404, "gone"),
    });
    let layer = CachedEndpointLayer::builder()
        .ttl(Duration::from_secs(1))
        .status_header(HeaderName::from_static("x-cache"))
        .build()
        .unwrap();
    let handle = layer.handle();
    let svc = ServiceBuilder::new().layer(layer).service(inner);

    let res = svc.clone().oneshot(get()).await.unwrap();
    assert_eq!(res.headers()["x-cache"], "miss");
    let expected = [
        StaleReason::Failed {
            status: StatusCode::SERVICE_UNAVAILABLE,
        },
        StaleReason::Error,
        StaleReason::Failed {
            status: StatusCode::NOT_FOUND,
        },
    ];
    for (i, reason) in expected.into_iter().enumerate() {
        advance(Duration::from_secs(1)).await;
        let res = svc.clone().oneshot(get()).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(CacheStatus::of(&res), stale(reason));
        assert_eq!(res.headers()["x-cache"], "stale");
        assert_eq!(body_of(res).await, "v1");
        assert_eq!(seen.calls(), i + 2, "each stale entry is refreshed");
    }
    // Failures do not start a cooldown (only rate limits do).
    assert_eq!(handle.cooldown(key()), None);
    assert_eq!(handle.stats().stale_serves, 3);
}

#[tokio::test(start_paused = true)]
async fn errors_and_failures_without_an_entry_pass_through_unchanged() {
    let (inner, seen) = upstream(Duration::from_millis(10), |n| match n {
        0 => Err(Boom("connection refused")),
        _ => answer(500, "internal"),
    });
    let layer = CachedEndpointLayer::new();
    let handle = layer.handle();
    let svc = ServiceBuilder::new().layer(layer).service(inner);

    let err = svc.clone().oneshot(get()).await.unwrap_err();
    assert_eq!(
        err.downcast_ref::<Boom>(),
        Some(&Boom("connection refused"))
    );
    assert_eq!(err.to_string(), "upstream failed: connection refused");

    let res = svc.clone().oneshot(get()).await.unwrap();
    assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(CacheStatus::of(&res), Some(CacheStatus::Miss));
    assert!(res.headers().is_empty(), "no header added by default");
    assert_eq!(body_of(res).await, "internal");
    assert_eq!(seen.calls(), 2);
    assert!(!handle.contains(key()));
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_leader_hands_the_call_to_a_waiter() {
    let (inner, seen) = upstream(Duration::from_secs(10), |n| match n {
        0 => answer(200, "never delivered"),
        _ => answer(200, "v1"),
    });
    let layer = CachedEndpointLayer::new();
    let handle = layer.handle();
    let svc = ServiceBuilder::new().layer(layer).service(inner);

    let leader = tokio::spawn(svc.clone().oneshot(get()));
    tokio::task::yield_now().await;
    let waiter = tokio::spawn(svc.clone().oneshot(get()));
    tokio::task::yield_now().await;
    assert_eq!(seen.calls(), 1);
    assert_eq!(handle.stats().coalesced, 1);

    advance(Duration::from_secs(5)).await;
    leader.abort();
    let start = Instant::now();
    let res = waiter.await.unwrap().unwrap();
    assert_eq!(CacheStatus::of(&res), Some(CacheStatus::Miss));
    assert_eq!(body_of(res).await, "v1");
    assert_eq!(seen.calls(), 2);
    assert_eq!(
        start.elapsed(),
        Duration::from_secs(10),
        "its own full call"
    );
}

#[tokio::test(start_paused = true)]
async fn keys_come_from_the_extractor() {
    let (inner, seen) = upstream(Duration::from_millis(10), |n| match n {
        0 => answer(200, "a"),
        _ => answer(200, "b"),
    });
    // By path: the query does not matter.
    let layer = CachedEndpointLayer::builder()
        .key(|req: &RequestRef<'_>| req.uri().path().to_owned())
        .build()
        .unwrap();
    let handle = layer.handle();
    let svc = ServiceBuilder::new().layer(layer).service(inner);
    let at = |uri: &str| Request::get(uri).body(Empty::<Bytes>::new()).unwrap();

    let res = svc.clone().oneshot(at("http://h/a?x=1")).await.unwrap();
    assert_eq!(body_of(res).await, "a");
    let res = svc.clone().oneshot(at("http://h/a?x=2")).await.unwrap();
    assert_eq!(CacheStatus::of(&res), Some(CacheStatus::Hit));
    assert_eq!(body_of(res).await, "a");
    let res = svc.clone().oneshot(at("http://h/b")).await.unwrap();
    assert_eq!(CacheStatus::of(&res), Some(CacheStatus::Miss));
    assert_eq!(body_of(res).await, "b");
    assert_eq!(seen.calls(), 2);
    assert!(handle.contains("/a") && handle.contains("/b"));

    assert!(handle.remove("/a"));
    assert!(!handle.contains("/a"));
    svc.clone().oneshot(at("http://h/a")).await.unwrap();
    assert_eq!(seen.calls(), 3);
}

/// A service whose readiness fails after its first call.
#[derive(Clone)]
struct FailsReadiness {
    called: Arc<AtomicBool>,
}

impl Service<Request<Empty<Bytes>>> for FailsReadiness {
    type Response = Response<Chunks>;
    type Error = Boom;
    type Future = std::future::Ready<Result<Response<Chunks>, Boom>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Boom>> {
        if self.called.load(Ordering::SeqCst) {
            Poll::Ready(Err(Boom("not ready")))
        } else {
            Poll::Ready(Ok(()))
        }
    }

    fn call(&mut self, _req: Request<Empty<Bytes>>) -> Self::Future {
        self.called.store(true, Ordering::SeqCst);
        std::future::ready(answer(200, "v1"))
    }
}

#[tokio::test(start_paused = true)]
async fn readiness_is_the_upstreams_business_only_when_it_is_called() {
    let inner = FailsReadiness {
        called: Arc::new(AtomicBool::new(false)),
    };
    let layer = CachedEndpointLayer::new();
    let handle = layer.handle();
    let mut svc = ServiceBuilder::new().layer(layer).service(inner);

    std::future::poll_fn(|cx| svc.poll_ready(cx)).await.unwrap();
    let res = svc.call(get()).await.unwrap();
    assert_eq!(body_of(res).await, "v1");

    // The inner service now fails readiness; ours stays ready, and a fresh entry
    // needs nothing from it.
    std::future::poll_fn(|cx| svc.poll_ready(cx)).await.unwrap();
    let res = svc.call(get()).await.unwrap();
    assert_eq!(CacheStatus::of(&res), Some(CacheStatus::Hit));

    // A refresh meets the readiness error: served stale.
    handle.invalidate(key());
    std::future::poll_fn(|cx| svc.poll_ready(cx)).await.unwrap();
    let res = svc.call(get()).await.unwrap();
    assert_eq!(CacheStatus::of(&res), stale(StaleReason::Error));
    assert_eq!(body_of(res).await, "v1");
}
