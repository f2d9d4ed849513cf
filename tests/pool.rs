//! Behaviour of `Pool`: failover within the call, skipping cooling and busy backends,
//! waiting within `max_wait`, `AllBackendsCooling`, the last real 429, routing by
//! model, non-cloneable requests, and SSE passed through from a real server.
//!
//! The timing tests drive the mocks' axum routers in-process on tokio's paused clock;
//! the SSE test serves them on 127.0.0.1 and talks to them with `testing::client()`.

#![cfg(feature = "testing")]

mod common;

use std::{
    collections::VecDeque,
    convert::Infallible,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body::Body as _;
use http_body_util::{BodyExt, Full};
use ratewise::{
    body::PeekBody,
    classify::{Classify, ClassifyLayer, Preset},
    cooldown::{CooldownLayer, KeyState},
    key::RequestRef,
    pool::{Model, Pool, ServedBy},
    retry::RetryBody,
    testing::{self, body_json, json_request, GlmApi, MockServer, OpenAiApi},
    verdict_of_error,
    vocabulary::{RefusalKind, Unavailable},
    BoxError, ConfigError, Refusal, Verdict,
};
use serde_json::json;
use tokio::time::{advance, sleep, timeout, Instant};
use tower::{service_fn, util::MapRequest, ServiceBuilder, ServiceExt};

type Req = Full<Bytes>;
type Res = PeekBody<axum::body::Body>;
type OpenAiBackend = MapRequest<Classify<axum::Router, Preset>, fn(Request<Req>) -> Request<Req>>;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// A GLM backend in-process: the mock's router under `ClassifyLayer(Preset::glm())`,
/// so its 429 code 1302 is judged rate-limited.
fn glm_backend(glm: &GlmApi) -> Classify<axum::Router, Preset> {
    ServiceBuilder::new()
        .layer(ClassifyLayer::new(Preset::glm()))
        .service(glm.router())
}

/// An OpenAI-compatible backend in-process. The pool's requests carry GLM's path; like
/// a real client with its own base URL, this backend sends them to its own path.
fn openai_backend(api: &OpenAiApi) -> OpenAiBackend {
    fn to_openai(mut req: Request<Req>) -> Request<Req> {
        *req.uri_mut() = http::Uri::from_static(testing::openai::PATH);
        req
    }
    ServiceBuilder::new()
        .map_request(to_openai as fn(Request<Req>) -> Request<Req>)
        .layer(ClassifyLayer::new(Preset::openai()))
        .service(api.router())
}

fn chat() -> Request<Req> {
    json_request(
        Method::POST,
        testing::glm::PATH,
        &json!({"model": "glm-4", "messages": [{"role": "user", "content": "hi"}]}),
    )
    .expect("request")
}

fn chat_for(model: &str) -> Request<Req> {
    let mut req = chat();
    req.extensions_mut().insert(Model::new(model));
    req
}

fn served_by<B>(res: &Response<B>) -> &str {
    res.extensions()
        .get::<ServedBy>()
        .expect("the pool sets ServedBy")
        .name()
}

/// Primary GLM that always answers 1302, fallback OpenAI mock that serves.
fn glm_then_openai(max_wait: Duration) -> (Pool<Req, Res>, GlmApi, OpenAiApi) {
    let glm = GlmApi::new().always_rate_limited(true);
    let openai = OpenAiApi::new().name("openai");
    let pool = Pool::builder()
        .primary("glm", glm_backend(&glm))
        .fallback("openai", openai_backend(&openai))
        .max_wait(max_wait)
        .build()
        .expect("valid pool");
    (pool, glm, openai)
}

// ---------------------------------------------------------------------------------
// Failover and skipping

#[tokio::test(start_paused = true)]
async fn primary_1302_fails_over_to_the_fallback_within_the_same_call() -> Result<(), BoxError> {
    let (pool, glm, openai) = glm_then_openai(secs(10));
    let handle = pool.handle();
    let t0 = Instant::now();

    let res = pool.clone().oneshot(chat()).await?;

    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(served_by(&res), "openai");
    assert_eq!(res.headers()["x-mock-backend"], "openai");
    let body = body_json(res.into_body()).await?;
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "mock reply from openai"
    );
    assert_eq!(Instant::now(), t0, "no waiting: the failover is immediate");
    assert_eq!((glm.hits().count(), glm.hits().rate_limited()), (1, 1));
    assert_eq!((openai.hits().count(), openai.hits().served()), (1, 1));

    let p = handle.backend("glm").expect("glm");
    assert!(
        matches!(p.state, KeyState::Cooling { n: 1, until } if until == t0 + secs(1)),
        "{:?}",
        p.state
    );
    assert_eq!(
        (p.requests, p.rate_limited, p.failovers, p.successes),
        (1, 1, 1, 0)
    );
    let f = handle.backend("openai").expect("openai");
    assert_eq!((f.requests, f.successes, f.failovers), (1, 1, 0));
    assert_eq!(f.state, KeyState::Ok);
    assert_eq!(handle.totals().failovers, 1);
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn cooling_primary_is_skipped_and_probed_once_its_cooldown_ends() -> Result<(), BoxError> {
    let (pool, glm, openai) = glm_then_openai(ms(0));
    let handle = pool.handle();
    let t0 = Instant::now();

    assert_eq!(served_by(&pool.clone().oneshot(chat()).await?), "openai");
    // Within the 1 s cooldown (base * 2^0): the primary is not called.
    for _ in 0..3 {
        advance(ms(300)).await;
        let res = pool.clone().oneshot(chat()).await?;
        assert_eq!(served_by(&res), "openai");
    }
    assert_eq!(glm.hits().count(), 1, "the cooling primary was skipped");
    assert_eq!(openai.hits().served(), 4);
    assert_eq!(handle.backend("glm").unwrap().skipped_cooling, 3);

    // At 1 s the cooldown is over: one probe goes to the primary, which answers 1302
    // again; it cools for 2 s (base * 2^1) and the call still ends on the fallback.
    advance(ms(100)).await;
    assert_eq!(Instant::now(), t0 + secs(1));
    let res = pool.clone().oneshot(chat()).await?;
    assert_eq!(served_by(&res), "openai");
    assert_eq!(glm.hits().times(), [Duration::ZERO, secs(1)]);
    assert!(matches!(
        handle.backend("glm").unwrap().state,
        KeyState::Cooling { n: 2, until } if until == t0 + secs(3)
    ));

    advance(ms(1999)).await;
    pool.clone().oneshot(chat()).await?;
    assert_eq!(glm.hits().count(), 2, "still cooling at 2.999 s");

    // The primary recovers: once its cooldown ends it serves again, and is open.
    glm.set_always_rate_limited(false);
    advance(ms(1)).await;
    let res = pool.clone().oneshot(chat()).await?;
    assert_eq!(served_by(&res), "glm");
    assert_eq!(glm.hits().served(), 1);
    assert_eq!(handle.backend("glm").unwrap().state, KeyState::Ok);
    let res = pool.clone().oneshot(chat()).await?;
    assert_eq!(served_by(&res), "glm");
    Ok(())
}

// ---------------------------------------------------------------------------------
// All backends cooling

/// The pool's `AllBackendsCooling` refusal, or a panic.
fn all_cooling(err: &BoxError) -> &Refusal {
    err.downcast_ref::<Refusal>()
        .filter(|r| matches!(r.kind(), RefusalKind::AllBackendsCooling { .. }))
        .expect("typed error")
}

/// Two GLM backends that always answer 1302; `fallback` cools from t0 + 0 (until 1.0 s),
/// `primary` from t0 + 0.3 s (until 1.3 s). Set up through single-backend routes.
async fn both_cooling(max_wait: Duration) -> Result<(Pool<Req, Res>, GlmApi, GlmApi), BoxError> {
    let primary = GlmApi::new().always_rate_limited(true);
    let fallback = GlmApi::new().always_rate_limited(true);
    let pool = Pool::builder()
        .primary("primary", glm_backend(&primary))
        .fallback("fallback", glm_backend(&fallback))
        .route("only-primary", ["primary"])
        .route("only-fallback", ["fallback"])
        .max_wait(max_wait)
        .build()?;

    let res = pool.clone().oneshot(chat_for("only-fallback")).await?;
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    advance(ms(300)).await;
    let res = pool.clone().oneshot(chat_for("only-primary")).await?;
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!((primary.hits().count(), fallback.hits().count()), (1, 1));
    Ok((pool, primary, fallback))
}

#[tokio::test(start_paused = true)]
async fn all_cooling_waits_for_the_earliest_recovery_within_max_wait() -> Result<(), BoxError> {
    let t0 = Instant::now();
    let (pool, primary, fallback) = both_cooling(secs(2)).await?;
    fallback.set_always_rate_limited(false);
    let handle = pool.handle();

    let start = Instant::now();
    assert_eq!(start, t0 + ms(300));
    // No model: the default route, primary then fallback. Both cool; the fallback
    // recovers first (1.0 s), within max_wait (2 s from 0.3 s).
    let res = pool.clone().oneshot(chat()).await?;
    assert_eq!(
        Instant::now(),
        t0 + secs(1),
        "completes right at the earliest recovery"
    );
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(served_by(&res), "fallback");
    assert_eq!(fallback.hits().times(), [Duration::ZERO, secs(1)]);
    assert_eq!(primary.hits().count(), 1, "the primary cools until 1.3 s");
    assert_eq!(handle.totals().waited, 1);
    assert!(matches!(
        handle.backend("primary").unwrap().state,
        KeyState::Cooling { until, .. } if until == t0 + ms(1300)
    ));
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn all_cooling_past_max_wait_fails_at_once_with_all_backends_cooling() -> Result<(), BoxError>
{
    let t0 = Instant::now();
    let (pool, primary, fallback) = both_cooling(ms(500)).await?;
    let handle = pool.handle();

    let before = Instant::now();
    let err = pool
        .clone()
        .oneshot(chat())
        .await
        .expect_err("every backend cools past max_wait");
    assert_eq!(Instant::now(), before, "refused without sleeping");

    let cooling = all_cooling(&err);
    // The fallback recovers first, at 1.0 s: 0.7 s from 0.3 s, past max_wait 0.5 s.
    assert_eq!(cooling.retry_after(), Some(ms(700)));
    assert!(
        matches!(cooling.kind(), RefusalKind::AllBackendsCooling { max_wait } if *max_wait == ms(500)),
        "{cooling:?}"
    );
    let listed: Vec<_> = cooling
        .candidates()
        .iter()
        .map(|c| (c.name().as_str().to_owned(), c.why()))
        .collect();
    assert_eq!(
        listed,
        [
            (
                "primary".to_owned(),
                Unavailable::Cooling { remaining: secs(1) }
            ),
            (
                "fallback".to_owned(),
                Unavailable::Cooling { remaining: ms(700) }
            ),
        ]
    );
    let text = err.to_string();
    assert!(
        text.contains("0.700 s") && text.contains("`primary`") && text.contains("`fallback`"),
        "{text}"
    );
    assert_eq!(
        verdict_of_error(&*err),
        Verdict::rate_limited(Some(ms(700)))
    );
    assert_eq!(
        (primary.hits().count(), fallback.hits().count()),
        (1, 1),
        "nothing sent"
    );
    assert_eq!(handle.totals().all_cooling, 1);
    assert_eq!(Instant::now(), t0 + ms(300));
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn the_last_candidates_real_429_reaches_the_caller_unchanged() -> Result<(), BoxError> {
    // Both over their limit: GLM 1302, OpenAI 429 with its rate-limit headers.
    let glm = GlmApi::new().always_rate_limited(true);
    let openai = OpenAiApi::new().name("openai").limit(0);
    let pool = Pool::builder()
        .primary("glm", glm_backend(&glm))
        .fallback("openai", openai_backend(&openai))
        .max_wait(Duration::ZERO)
        .build()?;
    let handle = pool.handle();

    // Both backends are called; the last one's 429 is returned as the upstream sent it.
    let res = pool.clone().oneshot(chat()).await?;
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(served_by(&res), "openai");
    assert_eq!(res.headers()["x-mock-backend"], "openai");
    assert_eq!(res.headers()["retry-after-ms"], "60000");
    assert_eq!(res.headers()["x-ratelimit-remaining-requests"], "0");
    let body = body_json(res.into_body()).await?;
    assert_eq!(body["error"]["code"], "rate_limit_exceeded");
    assert_eq!(
        (glm.hits().rate_limited(), openai.hits().rate_limited()),
        (1, 1)
    );
    // One failover (glm → openai); openai's 429 went to the caller, no failover from it.
    assert_eq!(handle.backend("glm").unwrap().failovers, 1);
    assert_eq!(handle.backend("openai").unwrap().failovers, 0);
    assert_eq!(handle.totals().failovers, 1);
    // Both now cool (GLM 1 s by backoff, OpenAI 60 s by its retry-after-ms).
    assert!(matches!(handle.backend("openai").unwrap().state,
        KeyState::Cooling { until, .. } if until == Instant::now() + secs(60)));

    // The next call reaches no backend: that, and only that, is the pool's own error.
    let err = pool.clone().oneshot(chat()).await.expect_err("all cooling");
    let cooling = all_cooling(&err);
    assert_eq!(cooling.retry_after(), Some(secs(1)));
    assert_eq!((glm.hits().count(), openai.hits().count()), (1, 1));
    Ok(())
}

/// A bug: the primary answered a real 429, the fallback's own bucket (max wait zero)
/// refused the call without reaching its upstream, and the caller got that local
/// refusal (a 503 from a gateway) instead of the 429 a backend had sent.
#[tokio::test(start_paused = true)]
async fn a_real_429_outranks_the_next_backends_own_refusal() -> Result<(), BoxError> {
    let glm = GlmApi::new().always_rate_limited(true);
    let fallback_api = GlmApi::new();
    let fallback = ServiceBuilder::new()
        .layer(
            ratewise::RateLimitLayer::builder()
                .per_minute(1)
                .burst(1)
                .max_wait(Duration::ZERO)
                .build()?,
        )
        .service(glm_backend(&fallback_api));
    // The fallback's bucket is spent by a call of its own model.
    let pool = Pool::builder()
        .primary("glm", glm_backend(&glm))
        .fallback("fallback", fallback)
        .route("glm-4", ["glm", "fallback"])
        .route("small", ["fallback"])
        .max_wait(Duration::ZERO)
        .build()?;
    let res = pool.clone().oneshot(chat_for("small")).await?;
    assert_eq!(res.status(), StatusCode::OK);

    let res = pool.clone().oneshot(chat_for("glm-4")).await?;
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(served_by(&res), "glm");
    assert_eq!(body_json(res.into_body()).await?["error"]["code"], "1302");
    assert_eq!(glm.hits().rate_limited(), 1);
    assert_eq!(
        fallback_api.hits().count(),
        1,
        "the refusal reached no upstream"
    );
    let f = pool.handle().backend("fallback").unwrap();
    assert_eq!((f.requests, f.rate_limited), (2, 1));
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn a_429_is_returned_when_the_remaining_candidate_recovers_too_late() -> Result<(), BoxError>
{
    // The fallback cools (set up through its own route); then the primary answers
    // 1302 and the fallback would recover after max_wait: the primary's 429 is the
    // answer, not AllBackendsCooling.
    let primary = GlmApi::new();
    let fallback = GlmApi::new().always_rate_limited(true);
    let pool = Pool::builder()
        .primary("primary", glm_backend(&primary))
        .fallback("fallback", glm_backend(&fallback))
        .route("only-fallback", ["fallback"])
        .max_wait(ms(500))
        .build()?;
    pool.clone().oneshot(chat_for("only-fallback")).await?;
    primary.set_always_rate_limited(true);

    let before = Instant::now();
    let res = pool.clone().oneshot(chat()).await?;
    assert_eq!(Instant::now(), before);
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(served_by(&res), "primary");
    assert_eq!(body_json(res.into_body()).await?["error"]["code"], "1302");
    assert_eq!((primary.hits().count(), fallback.hits().count()), (1, 1));
    // No other backend was called, so this was no failover (a regression: it used to be
    // counted when the primary's answer was set aside, before the fallback was found
    // cooling).
    assert_eq!(pool.handle().backend("primary").unwrap().failovers, 0);
    assert_eq!(pool.handle().totals().failovers, 0);
    Ok(())
}

// ---------------------------------------------------------------------------------
// Routing

#[tokio::test(start_paused = true)]
async fn route_by_model_picks_the_right_pool() -> Result<(), BoxError> {
    let glm = GlmApi::new();
    let glm_backup = GlmApi::new();
    let openai = OpenAiApi::new().name("openai");
    let pool = Pool::builder()
        .primary("glm", glm_backend(&glm))
        .primary("openai", openai_backend(&openai))
        .fallback("glm-backup", glm_backend(&glm_backup))
        // Named backup first: candidates are still tried primary group first.
        .route("glm-4", ["glm-backup", "glm"])
        .route("gpt-4o", ["openai"])
        .build()?;

    let res = pool.clone().oneshot(chat_for("gpt-4o")).await?;
    assert_eq!(served_by(&res), "openai");
    let res = pool.clone().oneshot(chat_for("glm-4")).await?;
    assert_eq!(served_by(&res), "glm");
    // Not in the table: the default route, every backend in priority order.
    let res = pool.clone().oneshot(chat_for("qwen")).await?;
    assert_eq!(served_by(&res), "glm");
    assert_eq!(
        (
            glm.hits().count(),
            openai.hits().count(),
            glm_backup.hits().count()
        ),
        (2, 1, 0)
    );

    // glm-4's primary is limited: the call fails over inside its route, to the GLM
    // backup, never to the OpenAI backend.
    glm.set_always_rate_limited(true);
    let res = pool.clone().oneshot(chat_for("glm-4")).await?;
    assert_eq!(served_by(&res), "glm-backup");
    assert_eq!(
        (
            glm.hits().rate_limited(),
            openai.hits().count(),
            glm_backup.hits().served()
        ),
        (1, 1, 1)
    );
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn route_fn_and_empty_default_route() -> Result<(), BoxError> {
    let a = GlmApi::new();
    let b = GlmApi::new();
    // The closure form: the backend named by a header.
    let pool = Pool::builder()
        .primary("a", glm_backend(&a))
        .primary("b", glm_backend(&b))
        .route_fn(|req: &Request<Req>| {
            req.headers()
                .get("x-tenant")
                .and_then(|v| v.to_str().ok())
                .map(|t| vec![t.to_owned()])
                .unwrap_or_default()
        })
        .build()?;
    let mut req = chat();
    req.headers_mut().insert("x-tenant", "b".parse()?);
    assert_eq!(served_by(&pool.clone().oneshot(req).await?), "b");
    let err = pool.clone().oneshot(chat()).await.expect_err("no route");
    assert!(
        matches!(
            err.downcast_ref::<Refusal>().map(|r| r.kind()),
            Some(RefusalKind::NoRoute { .. })
        ),
        "{err}"
    );
    assert_eq!((a.hits().count(), b.hits().count()), (0, 1));

    // A table whose default route is empty refuses unknown models.
    let strict = Pool::builder()
        .primary("a", glm_backend(&a))
        .route("glm-4", ["a"])
        .default_route(Vec::<String>::new())
        .build()?;
    let err = strict
        .clone()
        .oneshot(chat_for("gpt-4o"))
        .await
        .expect_err("no route");
    let no_route = err.downcast_ref::<Refusal>().expect("typed");
    let RefusalKind::NoRoute { model } = no_route.kind() else {
        panic!("not NoRoute: {no_route:?}")
    };
    assert_eq!(model.as_ref().map(|m| m.as_str()), Some("gpt-4o"));
    assert_eq!(verdict_of_error(&*err), Verdict::Failure);
    assert_eq!(
        served_by(&strict.clone().oneshot(chat_for("glm-4")).await?),
        "a"
    );
    assert_eq!(strict.handle().totals().no_route, 1);
    Ok(())
}

// ---------------------------------------------------------------------------------
// Request bodies

#[tokio::test(start_paused = true)]
async fn a_request_that_cannot_be_cloned_goes_to_one_backend_only() -> Result<(), BoxError> {
    type SReq = RetryBody<Full<Bytes>>;
    let primary = GlmApi::new().always_rate_limited(true);
    let fallback = GlmApi::new();
    let pool: Pool<SReq, Res> = Pool::builder()
        .primary(
            "primary",
            ServiceBuilder::new()
                .layer(ClassifyLayer::new(Preset::glm()))
                .service(primary.router()),
        )
        .fallback(
            "fallback",
            ServiceBuilder::new()
                .layer(ClassifyLayer::new(Preset::glm()))
                .service(fallback.router()),
        )
        .build()?;
    let body = || Bytes::from(json!({"messages": []}).to_string());
    let request = |b: SReq| {
        Request::post(testing::glm::PATH)
            .header("content-type", "application/json")
            .body(b)
    };

    // A streaming body: sent to the first available backend only; its 1302 comes back.
    let res = pool
        .clone()
        .oneshot(request(RetryBody::streaming(Full::new(body())))?)
        .await?;
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(served_by(&res), "primary");
    assert_eq!(body_json(res.into_body()).await?["error"]["code"], "1302");
    assert_eq!((primary.hits().count(), fallback.hits().count()), (1, 0));
    assert_eq!(pool.handle().backend("primary").unwrap().failovers, 0);

    // Skipping needs no copy: with the primary cooling it goes to the fallback.
    let res = pool
        .clone()
        .oneshot(request(RetryBody::streaming(Full::new(body())))?)
        .await?;
    assert_eq!(served_by(&res), "fallback");

    // After the cooldown, a buffered body (it clones) fails over within the call.
    advance(secs(1)).await;
    let res = pool
        .clone()
        .oneshot(request(RetryBody::buffered(body()))?)
        .await?;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(served_by(&res), "fallback");
    assert_eq!((primary.hits().count(), fallback.hits().served()), (2, 2));
    Ok(())
}

// ---------------------------------------------------------------------------------
// Errors, transient answers, capacity, probes

/// A service answering from a script (then 200), counting calls and their times.
#[derive(Clone)]
struct Scripted {
    start: Instant,
    calls: Arc<Mutex<Vec<Duration>>>,
    script: Arc<Mutex<VecDeque<(u16, Duration)>>>,
}

impl Scripted {
    fn new(script: impl IntoIterator<Item = (u16, Duration)>) -> Self {
        Scripted {
            start: Instant::now(),
            calls: Arc::default(),
            script: Arc::new(Mutex::new(script.into_iter().collect())),
        }
    }

    fn times(&self) -> Vec<Duration> {
        self.calls.lock().unwrap().clone()
    }

    fn service(
        &self,
    ) -> impl tower::Service<
        Request<Req>,
        Response = Response<String>,
        Error = BoxError,
        Future = impl std::future::Future<Output = Result<Response<String>, BoxError>> + Send,
    > + Clone
           + Send
           + Sync
           + 'static {
        let me = self.clone();
        service_fn(move |_req: Request<Req>| {
            let me = me.clone();
            async move {
                me.calls.lock().unwrap().push(me.start.elapsed());
                let (status, delay) = me
                    .script
                    .lock()
                    .unwrap()
                    .pop_front()
                    .unwrap_or((200, Duration::ZERO));
                sleep(delay).await;
                Ok(Response::builder()
                    .status(status)
                    .body(String::from("scripted"))?)
            }
        })
    }
}

#[tokio::test(start_paused = true)]
async fn transient_answers_fail_over_only_when_asked() -> Result<(), BoxError> {
    for failover in [false, true] {
        let primary = Scripted::new([(503, Duration::ZERO)]);
        let fallback = Scripted::new([]);
        let pool = Pool::builder()
            .primary("primary", primary.service())
            .fallback("fallback", fallback.service())
            .failover_on_transient(failover)
            .build()?;
        let res = pool.clone().oneshot(chat()).await?;
        if failover {
            assert_eq!(
                (res.status(), served_by(&res)),
                (StatusCode::OK, "fallback")
            );
            assert_eq!(fallback.times().len(), 1);
        } else {
            assert_eq!(
                (res.status(), served_by(&res)),
                (StatusCode::SERVICE_UNAVAILABLE, "primary")
            );
            assert!(fallback.times().is_empty());
        }
        // A 503 is no rate limit: the primary does not cool.
        assert_eq!(
            pool.handle().backend("primary").unwrap().state,
            KeyState::Ok
        );
        assert_eq!(pool.handle().backend("primary").unwrap().failed, 1);
    }
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn a_rate_limited_error_from_a_backend_moves_the_call_on() -> Result<(), BoxError> {
    // The primary's own stack has a fail-fast cooldown; a 429 with Retry-After 30 puts
    // it into cooldown (set up by calling the stack directly). Then the pool's call gets
    // its `CoolingDown` error, which `verdict_of_error` reads as rate-limited.
    let upstream = Scripted::new([(429, Duration::ZERO)]);
    let retry_after_30 = service_fn({
        let inner = upstream.service();
        move |req: Request<Req>| {
            let inner = inner.clone();
            async move {
                let mut res = inner.oneshot(req).await?;
                res.headers_mut().insert("retry-after", "30".parse()?);
                Ok::<_, BoxError>(res)
            }
        }
    });
    let primary = ServiceBuilder::new()
        .layer(CooldownLayer::builder().fail_fast().build()?)
        .service(retry_after_30);
    let res = primary.clone().oneshot(chat()).await?;
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);

    let fallback = Scripted::new([]);
    let pool = Pool::builder()
        .primary("primary", primary)
        .fallback("fallback", fallback.service())
        .build()?;
    let t0 = Instant::now();
    let res = pool.clone().oneshot(chat()).await?;
    assert_eq!(served_by(&res), "fallback");
    assert_eq!(
        upstream.times().len(),
        1,
        "the primary's own cooldown refused it"
    );
    let p = pool.handle().backend("primary").unwrap();
    assert_eq!((p.requests, p.rate_limited, p.failovers), (1, 1, 1));
    // The pool's cooldown took the error's wait as the retry hint.
    assert!(matches!(p.state, KeyState::Cooling { until, .. } if until == t0 + secs(30)));
    Ok(())
}

/// A backend with room for one request at a time: `poll_ready` is `Pending` while one is
/// in flight. Each request takes 1 s.
fn one_at_a_time(
    s: &Scripted,
) -> tower::limit::ConcurrencyLimit<
    impl tower::Service<
            Request<Req>,
            Response = Response<String>,
            Error = BoxError,
            Future = impl std::future::Future<Output = Result<Response<String>, BoxError>> + Send,
        > + Clone
        + Send
        + Sync
        + 'static,
> {
    tower::limit::ConcurrencyLimit::new(s.service(), 1)
}

/// A bug: a call that found a backend busy kept its clone (queued for the backend's
/// concurrency permit) while it was served elsewhere, so the permit freed meanwhile went
/// to that idle clone and the next request found the backend still busy.
#[tokio::test(start_paused = true)]
async fn a_call_served_elsewhere_does_not_keep_a_busy_backends_freed_capacity(
) -> Result<(), BoxError> {
    let primary = Scripted::new([(200, secs(1)), (200, secs(1))]);
    let fallback = Scripted::new([(200, secs(5)), (200, secs(5))]);
    let pool = Pool::builder()
        .primary("primary", one_at_a_time(&primary))
        .fallback("fallback", fallback.service())
        .build()?;
    // t = 0: one request holds the primary until t = 1 s; the next goes to the fallback
    // (5 s) after finding the primary busy.
    let first = tokio::spawn(pool.clone().oneshot(chat()));
    tokio::task::yield_now().await;
    let second = tokio::spawn(pool.clone().oneshot(chat()));
    tokio::task::yield_now().await;
    assert_eq!((primary.times().len(), fallback.times().len()), (1, 1));
    // t = 1 s: the first request is answered and frees the primary; the second is still
    // at the fallback. t = 2 s: the primary takes the third request.
    assert_eq!(served_by(&first.await??), "primary");
    advance(secs(1)).await;
    let third = pool.clone().oneshot(chat()).await?;
    assert_eq!(served_by(&third), "primary");
    assert_eq!(served_by(&second.await??), "fallback");
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn a_busy_backend_is_skipped_then_waited_for_within_max_wait() -> Result<(), BoxError> {
    let slow = Scripted::new([(200, secs(1)), (200, secs(1)), (200, secs(1))]);
    let spare = Scripted::new([]);
    let pool = Pool::builder()
        .primary("slow", one_at_a_time(&slow))
        .fallback("spare", spare.service())
        .build()?;
    let first = tokio::spawn(pool.clone().oneshot(chat()));
    tokio::task::yield_now().await;
    assert_eq!(slow.times(), [Duration::ZERO]);
    // The primary has no capacity: the next call goes to the fallback at once.
    let res = pool.clone().oneshot(chat()).await?;
    assert_eq!(served_by(&res), "spare");
    assert_eq!(pool.handle().backend("slow").unwrap().skipped_busy, 1);
    assert_eq!(served_by(&first.await??), "slow");

    // Alone, a busy backend is waited for: the call goes when the first one is done.
    let only = Pool::builder()
        .primary("slow", one_at_a_time(&slow))
        .max_wait(secs(2))
        .build()?;
    let t0 = Instant::now();
    let first = tokio::spawn(only.clone().oneshot(chat()));
    tokio::task::yield_now().await;
    let res = only.clone().oneshot(chat()).await?;
    assert_eq!(served_by(&res), "slow");
    let base = t0 - slow.start;
    assert_eq!(
        slow.times()[1..],
        [base, base + secs(1)],
        "sent when capacity freed"
    );
    assert_eq!(Instant::now(), t0 + secs(2));
    first.await??;
    assert_eq!(only.handle().totals().waited, 1);

    // ...but not past max_wait: NoBackendReady, after exactly max_wait.
    let short = Pool::builder()
        .primary("slow", one_at_a_time(&Scripted::new([(200, secs(5))])))
        .max_wait(ms(500))
        .build()?;
    let t1 = Instant::now();
    let _first = tokio::spawn(short.clone().oneshot(chat()));
    tokio::task::yield_now().await;
    let err = short
        .clone()
        .oneshot(chat())
        .await
        .expect_err("busy past max_wait");
    assert_eq!(Instant::now(), t1 + ms(500));
    let e = err.downcast_ref::<Refusal>().expect("typed");
    assert!(
        matches!(e.kind(), RefusalKind::NoBackendReady { waited } if *waited == ms(500)),
        "{e:?}"
    );
    assert_eq!(e.candidates()[0].why(), Unavailable::Busy);
    assert_eq!(verdict_of_error(&*err), Verdict::rate_limited(None));
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn a_backend_whose_probe_is_in_flight_is_skipped() -> Result<(), BoxError> {
    // 429, then a probe that takes 1 s to succeed.
    let primary = Scripted::new([(429, Duration::ZERO), (200, secs(1))]);
    let fallback = Scripted::new([]);
    let pool = Pool::builder()
        .primary("primary", primary.service())
        .fallback("fallback", fallback.service())
        .build()?;
    assert_eq!(served_by(&pool.clone().oneshot(chat()).await?), "fallback");
    advance(secs(1)).await;
    let probe = tokio::spawn(pool.clone().oneshot(chat()));
    tokio::task::yield_now().await;
    assert_eq!(primary.times().len(), 2, "the probe is in flight");
    assert!(matches!(
        pool.handle().backend("primary").unwrap().state,
        KeyState::HalfOpen { probing: true, .. }
    ));
    let res = pool.clone().oneshot(chat()).await?;
    assert_eq!(served_by(&res), "fallback");
    assert_eq!(primary.times().len(), 2);
    assert_eq!(served_by(&probe.await??), "primary");
    assert_eq!(
        pool.handle().backend("primary").unwrap().state,
        KeyState::Ok
    );
    Ok(())
}

/// A backend's own rate limiter with `max_wait(ZERO)` is how the pool sees an empty
/// bucket: the limiter answers `MaxWaitExceeded` at once, the call moves on to the
/// fallback, and the primary is skipped until its bucket has a cell again, without
/// another request reaching it.
#[tokio::test(start_paused = true)]
async fn an_empty_backend_bucket_with_zero_max_wait_moves_the_call_on() -> Result<(), BoxError> {
    let primary_api = GlmApi::new();
    let fallback_api = GlmApi::new();
    let primary = ServiceBuilder::new()
        .layer(
            ratewise::RateLimitLayer::builder()
                .per_second(1)
                .burst(1)
                .max_wait(Duration::ZERO)
                .build()?,
        )
        .service(glm_backend(&primary_api));
    let pool = Pool::builder()
        .primary("primary", primary)
        .fallback("fallback", glm_backend(&fallback_api))
        .build()?;
    let t0 = Instant::now();

    assert_eq!(served_by(&pool.clone().oneshot(chat()).await?), "primary");
    // The bucket is empty: the next calls go to the fallback at once.
    for _ in 0..3 {
        assert_eq!(served_by(&pool.clone().oneshot(chat()).await?), "fallback");
    }
    assert_eq!(Instant::now(), t0, "no call waited");
    assert_eq!(
        primary_api.hits().count(),
        1,
        "nothing else reached the primary"
    );
    let p = pool.handle().backend("primary").unwrap();
    assert!(
        matches!(p.state, KeyState::Cooling { until, .. } if until == t0 + secs(1)),
        "skipped until its bucket has a cell: {:?}",
        p.state
    );
    assert_eq!(p.requests, 2, "one served, one refused by its own bucket");

    // Once the bucket has a cell, the primary serves again (its probe).
    advance(secs(1)).await;
    assert_eq!(served_by(&pool.clone().oneshot(chat()).await?), "primary");
    assert_eq!(primary_api.hits().count(), 2);
    Ok(())
}

/// A call that can only wait for a backend whose probe is in flight is woken by the
/// probe's answer, at that instant (it used to look again every 50 ms).
#[tokio::test(start_paused = true)]
async fn a_call_waiting_on_a_probe_goes_as_soon_as_the_probe_is_answered() -> Result<(), BoxError> {
    // 429, then a probe that takes 1.025 s to succeed, then 200 at once.
    let primary = Scripted::new([(429, Duration::ZERO), (200, ms(1025))]);
    let pool = Pool::builder()
        .primary("primary", primary.service())
        .max_wait(secs(5))
        .build()?;
    let res = pool.clone().oneshot(chat()).await?;
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    advance(secs(1)).await;
    let probe = tokio::spawn(pool.clone().oneshot(chat()));
    tokio::task::yield_now().await;
    let waiter = tokio::spawn(pool.clone().oneshot(chat()));
    tokio::task::yield_now().await;
    assert_eq!(
        primary.times().len(),
        2,
        "only the probe went; the other waits"
    );

    assert_eq!(probe.await??.status(), StatusCode::OK);
    assert_eq!(waiter.await??.status(), StatusCode::OK);
    assert_eq!(
        primary.times(),
        [Duration::ZERO, secs(1), secs(1) + ms(1025)],
        "the waiting call went the instant the probe was answered"
    );
    assert_eq!(pool.handle().totals().waited, 1);
    Ok(())
}

// ---------------------------------------------------------------------------------
// Streaming over real sockets

#[tokio::test]
async fn an_sse_stream_from_the_fallback_arrives_chunk_by_chunk() -> Result<(), BoxError> {
    let glm = GlmApi::new().always_rate_limited(true);
    let openai = OpenAiApi::new()
        .name("openai")
        .reply("one two three four")
        .stream_gap(ms(50));
    let glm_server = MockServer::start(glm.router()).await?;
    let openai_server = MockServer::start(openai.router()).await?;
    let glm_url: http::Uri = glm_server.url(testing::glm::PATH).parse()?;
    let openai_url: http::Uri = openai_server.url(testing::openai::PATH).parse()?;

    let pool = Pool::builder()
        .primary(
            "glm",
            ServiceBuilder::new()
                .map_request(move |mut req: Request<Req>| {
                    *req.uri_mut() = glm_url.clone();
                    req
                })
                .layer(ClassifyLayer::new(Preset::glm()))
                .service(testing::client()),
        )
        .fallback(
            "openai",
            ServiceBuilder::new()
                .map_request(move |mut req: Request<Req>| {
                    *req.uri_mut() = openai_url.clone();
                    req
                })
                .layer(ClassifyLayer::new(Preset::openai()))
                .service(testing::client()),
        )
        .build()?;

    let req = json_request(
        Method::POST,
        "/v1/chat/completions",
        &json!({"model": "gpt-4o", "stream": true, "messages": []}),
    )?;
    let res = timeout(secs(5), pool.clone().oneshot(req)).await??;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(served_by(&res), "openai");
    assert_eq!(res.headers()["content-type"], "text/event-stream");
    assert_eq!((glm.hits().rate_limited(), openai.hits().served()), (1, 1));

    // Not buffered: the classifier under the fallback did not peek the 200 (a replay
    // body would also yield several frames, so this is the check that can fail).
    assert!(res.body().is_pass_through(), "the 200 stream is not peeked");

    let mut body = res.into_body();
    let mut frames: Vec<String> = Vec::new();
    let mut arrivals = Vec::new();
    while let Some(frame) = timeout(secs(5), body.frame()).await? {
        if let Ok(data) = frame?.into_data() {
            arrivals.push(std::time::Instant::now());
            frames.push(String::from_utf8(data.to_vec())?);
            if frames.len() == 1 {
                assert!(
                    !body.is_end_stream(),
                    "the first chunk arrives before the stream ends"
                );
            }
        }
        assert!(frames.len() < 100, "bounded");
    }
    // 4 words, the stop event, [DONE]: each event sent 50 ms after the previous one
    // arrives as its own chunk.
    assert!(frames.len() >= 3, "several distinct chunks: {frames:?}");
    assert!(!frames[0].contains("[DONE]"), "{frames:?}");
    let all = frames.concat();
    assert_eq!(all.matches("data: ").count(), 6, "{all}");
    assert!(all.ends_with("data: [DONE]\n\n"), "{all}");
    // The mock sends the six events 50 ms apart (250 ms from first to last): arriving as
    // sent, the first and the last are at least that far apart; a buffered stream would
    // arrive at once. (A lower bound only: load can stretch it, never shrink it.)
    let span = arrivals[arrivals.len() - 1] - arrivals[0];
    assert!(span >= ms(150), "chunks arrived as sent, over {span:?}");
    Ok(())
}

// ---------------------------------------------------------------------------------
// Configuration

#[test]
fn the_builder_names_the_field_at_fault() {
    fn ok_service() -> impl tower::Service<
        Request<()>,
        Response = Response<()>,
        Error = Infallible,
        Future = std::future::Ready<Result<Response<()>, Infallible>>,
    > + Clone
           + Send
           + Sync
           + 'static {
        service_fn(|_req: Request<()>| std::future::ready(Ok(Response::new(()))))
    }
    let field = |r: Result<Pool<(), ()>, ConfigError>| r.expect_err("refused").field();

    assert_eq!(field(Pool::builder().build()), "backends");
    assert_eq!(
        field(Pool::builder().primary("", ok_service()).build()),
        "name"
    );
    let dup = Pool::builder()
        .primary("a", ok_service())
        .fallback("a", ok_service())
        .build()
        .expect_err("duplicate");
    assert_eq!(dup.field(), "name");
    assert!(dup.to_string().contains("`a`"), "{dup}");
    let unknown = Pool::builder()
        .primary("a", ok_service())
        .route("glm-4", ["a", "b"])
        .build()
        .expect_err("unknown");
    assert_eq!(unknown.field(), "route");
    assert!(
        unknown.to_string().contains("`b`") && unknown.to_string().contains("glm-4"),
        "{unknown}"
    );
    assert_eq!(
        field(
            Pool::builder()
                .primary("a", ok_service())
                .route("m", Vec::<String>::new())
                .build()
        ),
        "route"
    );
    assert_eq!(
        field(
            Pool::builder()
                .primary("a", ok_service())
                .route("m", ["a"])
                .route_fn(|_: &Request<()>| ["a"])
                .build()
        ),
        "route_fn"
    );
    assert_eq!(
        field(
            Pool::builder()
                .primary("a", ok_service())
                .default_route(["z"])
                .build()
        ),
        "default_route"
    );
    assert_eq!(
        field(
            Pool::builder()
                .primary("a", ok_service())
                .route_key(|_: &RequestRef<'_>| "m")
                .build()
        ),
        "route_key"
    );
    assert_eq!(
        field(
            Pool::builder()
                .primary("a", ok_service())
                .cooldown(CooldownLayer::builder().exponential(Duration::ZERO, secs(1)))
                .build()
        ),
        "cooldown"
    );
    assert!(Pool::builder()
        .primary("a", ok_service())
        .fallback("b", ok_service())
        .route("m", ["b", "a"])
        .build()
        .is_ok());
}

#[tokio::test(start_paused = true)]
async fn pool_clones_share_state_and_count_calls() -> Result<(), BoxError> {
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = service_fn({
        let calls = calls.clone();
        move |_req: Request<Req>| {
            calls.fetch_add(1, Ordering::SeqCst);
            std::future::ready(Ok::<_, Infallible>(Response::new(String::new())))
        }
    });
    let pool = Pool::builder().primary("only", counted).build()?;
    let a = pool.clone();
    let b = pool.clone();
    a.oneshot(chat()).await?;
    b.oneshot(chat()).await?;
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    let h = pool.handle();
    assert_eq!(h.totals().calls, 2);
    assert_eq!(h.backend("only").unwrap().successes, 2);
    assert_eq!(h.backends().len(), 1);
    Ok(())
}

/// A request body that counts how often it was copied.
#[derive(Debug)]
struct CountingBody(Arc<AtomicUsize>);

impl ratewise::retry::TryCloneBody for CountingBody {
    fn try_clone_body(&self) -> Option<Self> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Some(CountingBody(self.0.clone()))
    }
}

/// The pool keeps the request and sends a copy, so that the call can go on: to another
/// candidate, or to the same one again once its own limiter has room. One copy per
/// backend called, none more.
#[tokio::test(start_paused = true)]
async fn a_request_is_copied_once_per_backend_called() -> Result<(), BoxError> {
    let ok = || {
        service_fn(|_req: Request<CountingBody>| {
            std::future::ready(Ok::<_, Infallible>(Response::new(())))
        })
    };
    let copies = Arc::new(AtomicUsize::new(0));
    let single = Pool::builder().primary("a", ok()).build()?;
    single
        .oneshot(Request::new(CountingBody(copies.clone())))
        .await?;
    assert_eq!(
        copies.load(Ordering::SeqCst),
        1,
        "one backend called: one copy"
    );

    let double = Pool::builder()
        .primary("a", ok())
        .fallback("b", ok())
        .build()?;
    let res = double
        .oneshot(Request::new(CountingBody(copies.clone())))
        .await?;
    assert_eq!(served_by(&res), "a");
    assert_eq!(
        copies.load(Ordering::SeqCst),
        2,
        "the fallback was not called"
    );
    Ok(())
}

/// Bug: a call that the last candidate's own limiter held back (nothing sent, the wait
/// well within the pool's `max_wait`) reached the caller as a refusal, because the
/// request had gone with that candidate. The proxy's replicas refused half their
/// requests so. Now the call waits for the backend's room and is sent again.
#[tokio::test(start_paused = true)]
async fn a_call_its_last_backends_limiter_held_back_waited_and_was_sent_again(
) -> Result<(), BoxError> {
    let hits = Arc::new(Mutex::new(Vec::new()));
    let h = hits.clone();
    let start = Instant::now();
    let upstream = service_fn(move |_req: Request<Full<Bytes>>| {
        h.lock().unwrap().push(start.elapsed());
        std::future::ready(Ok::<_, Infallible>(Response::new(Full::<Bytes>::default())))
    });
    let limited = ServiceBuilder::new()
        .layer(
            ratewise::RateLimitLayer::builder()
                .per_second(1)
                .burst(1)
                .max_wait(Duration::ZERO)
                .build()?,
        )
        .service(upstream);
    let pool = Pool::builder()
        .primary("only", limited)
        .max_wait(secs(5))
        .build()?;
    let first = pool.clone().oneshot(Request::new(Full::from("a")));
    let second = pool.clone().oneshot(Request::new(Full::from("b")));
    let (first, second) = tokio::join!(first, second);
    assert_eq!(served_by(&first?), "only");
    assert_eq!(served_by(&second?), "only", "the held-back call was served");
    let hits = hits.lock().unwrap().clone();
    assert_eq!(hits.len(), 2, "{hits:?}");
    assert_eq!(hits[0], Duration::ZERO);
    assert!(
        hits[1] >= secs(1) && hits[1] <= secs(1) + ms(100),
        "sent again when the limiter had room: {hits:?}"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------
// Tracing and auto traits

#[tokio::test(start_paused = true)]
async fn failover_and_skip_are_traced_with_backend_reason_and_wait_but_no_uri(
) -> Result<(), BoxError> {
    common::capture::start();
    let with_token = || {
        let mut req = chat();
        *req.uri_mut() = format!("{}?api_key=sk-SECRET-TOKEN", testing::glm::PATH)
            .parse()
            .unwrap();
        req
    };
    let (pool, _glm, _openai) = glm_then_openai(Duration::ZERO);
    pool.clone().oneshot(with_token()).await?;
    advance(ms(400)).await;
    pool.clone().oneshot(with_token()).await?;

    let events = common::capture::fields_of("ratewise::pool");
    let everything = format!("{:?}", common::capture::captured());
    let failover = events
        .iter()
        .find(|e| e.get("message").is_some_and(|m| m.contains("failing over")))
        .unwrap_or_else(|| panic!("a failover event: {everything}"));
    assert_eq!(failover["backend"], "glm");
    assert!(failover["verdict"].contains("RateLimited"), "{failover:?}");
    let skip = events
        .iter()
        .find(|e| e.get("message").is_some_and(|m| m == "backend skipped"))
        .unwrap_or_else(|| panic!("a skip event: {everything}"));
    assert_eq!(skip["backend"], "glm");
    assert_eq!(skip["reason"], "cooling");
    assert_eq!(skip["wait_ms"], "600");
    assert!(
        !everything.contains("SECRET"),
        "no URI in any event: {everything}"
    );
    Ok(())
}

#[test]
fn pools_are_clone_send_sync_and_their_futures_send() {
    fn clone_send_sync<T: Clone + Send + Sync + 'static>() {}
    fn send<T: Send + 'static>() {}
    clone_send_sync::<Pool<Req, Res>>();
    send::<<Pool<Req, Res> as tower::Service<Request<Req>>>::Future>();
    clone_send_sync::<ratewise::pool::PoolHandle>();
}
