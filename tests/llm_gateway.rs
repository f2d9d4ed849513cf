//! The LLM gateway scenarios (seeds 003 and 004), once checked by the `llm_gateway`
//! example:
//!
//! - GLM's 429 code 1302 through `ClientStackLayer::preset(Platform::Glm)`: classified,
//!   cooled and retried; a caller gets an answer or a typed error to degrade on, by the
//!   deadline;
//! - an OpenAI-compatible gateway (axum, `support/gateway.rs`) over a primary/fallback
//!   [`Pool`](ratewise::Pool): failover within the call, the cooling primary skipped,
//!   SSE event by event, the fallback's real 429 passed on, the gateway's own 503 with
//!   `Retry-After` only when no backend was called, and the pool's counters.
//!
//! In-process on tokio's paused clock, so every time is exact; one test runs the whole
//! gateway scenario over real sockets on 127.0.0.1.
#![cfg(feature = "testing")]

#[path = "support/gateway.rs"]
mod gateway;

use std::collections::BTreeSet;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::Router;
use bytes::Bytes;
use http::{header, Method, Request, StatusCode};
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use ratewise::classify::Preset;
use ratewise::cooldown::{CooldownEvent, KeyState};
use ratewise::pool::PoolHandle;
use ratewise::retry::DeadlineExceeded;
use ratewise::stack::{ClientStackLayer, Platform};
use ratewise::testing::{self, body_json, client, json_request, GlmApi, MockServer, OpenAiApi};
use ratewise::{verdict_of, verdict_of_error, BoxError, CooldownLayer, Pool, RateLimitLayer};
use serde_json::{json, Value};
use tokio::time::Instant;
use tower::{Service, ServiceBuilder, ServiceExt};

use gateway::{chat_body, Answer, GatewayPool, Streamed};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

// =====================================================================================
// GLM 1302 through the `Platform::Glm` preset (seed 004).
// =====================================================================================

/// Where the GLM stack sends its calls (in-process: only the path matters).
const GLM_URL: &str = "http://open.bigmodel.test/api/paas/v4/chat/completions";
/// The retry deadline: no retry wait ends past it.
const DEADLINE: Duration = Duration::from_secs(3);
/// The longest one attempt waits for a cooldown to end before failing with a typed
/// `CoolingDown` refusal (which the retry then waits out, within the deadline).
const HOLD: Duration = Duration::from_secs(1);

/// One cooldown of the GLM host: when it started, and when the host opens again.
type Cooldowns = Arc<Mutex<Vec<(Instant, Instant)>>>;

/// The GLM preset, scaled down: its own limit (10/s) looser than what the account has
/// left, cooldown and retry delays from 250 ms, a 3 s deadline. Every cooldown it starts
/// is recorded.
fn glm_stack() -> (ClientStackLayer, Cooldowns) {
    let cooldowns: Cooldowns = Arc::default();
    let log = cooldowns.clone();
    let stack = ClientStackLayer::preset(Platform::Glm)
        .rate_limit(|rl| rl.per_second(10).burst(10).max_wait(ms(2000)))
        .cooldown(|c| {
            c.exponential(ms(250), ms(2000))
                .wait(HOLD)
                .on_event(move |event: &CooldownEvent| {
                    if let CooldownEvent::Started { until, .. } = event {
                        log.lock().unwrap().push((Instant::now(), *until));
                    }
                })
        })
        .retry(|r| {
            r.exponential(ms(250), ms(2000))
                .max_attempts(6)
                .deadline(DEADLINE)
        })
        .build()
        .expect("the scaled-down GLM preset builds");
    (stack, cooldowns)
}

/// What a caller gets instead of an answer: the seed's `GLMRateLimitException`, typed.
#[derive(Debug)]
enum GlmError {
    /// GLM kept the account limited (code 1302), or the client holds calls back while it
    /// cools down. Degrade.
    RateLimited {
        /// GLM's error code, when the last answer came from GLM.
        code: Option<String>,
    },
    /// The call's deadline passed while GLM kept the account limited. Degrade.
    DeadlinePassed(Duration),
    /// Anything else: a bug here.
    Other(BoxError),
}

impl GlmError {
    /// Whether a caller degrades on this error (rather than failing).
    fn is_rate_limit(&self) -> bool {
        matches!(
            self,
            GlmError::RateLimited { .. } | GlmError::DeadlinePassed(_)
        )
    }
}

impl fmt::Display for GlmError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GlmError::RateLimited { code } => write!(f, "GLM rate limit (code {code:?})"),
            GlmError::DeadlinePassed(d) => write!(f, "GLM still limited after {d:?}"),
            GlmError::Other(err) => write!(f, "GLM call failed: {err}"),
        }
    }
}

/// One chat completion through the stack: the answer's text, or a typed error.
async fn chat<S, B>(glm: S, prompt: &str) -> Result<String, GlmError>
where
    S: Service<Request<Full<Bytes>>, Response = http::Response<B>, Error = BoxError>,
    B: http_body::Body,
    B::Error: Into<BoxError>,
{
    let body = json!({"model": "glm-4", "messages": [{"role": "user", "content": prompt}]});
    let mut req =
        json_request(Method::POST, GLM_URL, &body).map_err(|e| GlmError::Other(e.into()))?;
    req.headers_mut().insert(
        header::AUTHORIZATION,
        "Bearer glm-test-key".parse().unwrap(),
    );
    let res = match glm.oneshot(req).await {
        Ok(res) => res,
        Err(err) => {
            if let Some(deadline) = err.downcast_ref::<DeadlineExceeded>() {
                return Err(GlmError::DeadlinePassed(deadline.deadline()));
            }
            return Err(if verdict_of_error(&*err).is_rate_limited() {
                GlmError::RateLimited { code: None }
            } else {
                GlmError::Other(err)
            });
        }
    };
    let (status, verdict) = (res.status(), verdict_of(&res));
    let body = body_json(res.into_body()).await.map_err(GlmError::Other)?;
    if status.is_success() {
        return body["choices"][0]["message"]["content"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| GlmError::Other(format!("no content in {body}").into()));
    }
    if verdict.is_rate_limited() {
        let code = body["error"]["code"].as_str().map(str::to_owned);
        return Err(GlmError::RateLimited { code });
    }
    Err(GlmError::Other(format!("GLM answered {status}").into()))
}

/// `n` callers at once through `glm`: each one's result and how long it took.
async fn ask_all<S, B>(glm: &S, n: usize) -> Vec<(Result<String, GlmError>, Duration)>
where
    S: Service<Request<Full<Bytes>>, Response = http::Response<B>, Error = BoxError>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let callers: Vec<_> = (0..n)
        .map(|i| {
            let glm = glm.clone();
            tokio::spawn(async move {
                let started = Instant::now();
                let result = chat(glm, &format!("question {i}")).await;
                (result, started.elapsed())
            })
        })
        .collect();
    let mut got = Vec::new();
    for caller in callers {
        got.push(caller.await.expect("a caller panicked"));
    }
    got
}

/// No call reached GLM while its host cooled: a call arriving at the instant a
/// cooldown started was sent together with the answer that started it; after that,
/// only at or past the cooldown's end.
fn assert_no_call_while_cooling(glm: &GlmApi, cooldowns: &Cooldowns) {
    let cooldowns = cooldowns.lock().unwrap();
    assert!(!cooldowns.is_empty(), "no cooldown started");
    for hit in glm.hits().all() {
        for (started, until) in cooldowns.iter() {
            assert!(
                hit.instant <= *started || hit.instant >= *until,
                "a call reached GLM at +{:?}, inside the cooldown from +{:?} to +{:?}",
                hit.at,
                started.duration_since(glm.hits().start()),
                until.duration_since(glm.hits().start()),
            );
        }
    }
}

/// 12 callers at once while the account has 5 calls per second left (another process
/// shares it), through a stack whose own limit is 10/s: the burst meets 1302, which the
/// GLM preset classifies as a rate limit, cools down on (no call while it cools) and
/// retries. Every caller gets an answer or a typed rate-limit error, by the deadline;
/// every answer GLM gave reached exactly one caller.
#[tokio::test(start_paused = true)]
async fn glm_1302_burst_is_cooled_and_retried_and_every_answer_reaches_one_caller() {
    let glm = GlmApi::new().limit(5).window(secs(1));
    let (stack, cooldowns) = glm_stack();
    let client = ServiceBuilder::new()
        .layer(stack.clone())
        .service(glm.router());

    let got = ask_all(&client, 12).await;

    let hits = glm.hits();
    assert!(hits.rate_limited() > 0, "the burst met no 1302");
    // The burst goes out at once: GLM serves what the account has left, and its first
    // 1302 stops the rest (they wait for the cooldown to end, not a call of their own).
    let at_once: Vec<u16> = hits
        .all()
        .iter()
        .filter(|h| h.at.is_zero())
        .map(|h| h.status.as_u16())
        .collect();
    assert_eq!(at_once, [200, 200, 200, 200, 200, 429]);
    let stats = stack.stats();
    assert!(
        stats.cooldown.cooldowns_started > 0 && stats.retry.retries > 0,
        "the 1302 answers were not classified as rate limits: {stats:?}"
    );
    assert_no_call_while_cooling(&glm, &cooldowns);
    for (result, took) in &got {
        if let Err(err) = result {
            assert!(err.is_rate_limit(), "a caller got {err}");
        }
        assert!(*took <= DEADLINE + HOLD, "a caller waited {took:?}");
    }
    let answers: Vec<&String> = got.iter().filter_map(|(r, _)| r.as_ref().ok()).collect();
    let distinct: BTreeSet<&String> = answers.iter().copied().collect();
    assert!(!answers.is_empty(), "no caller got an answer");
    assert_eq!(
        answers.len(),
        hits.served(),
        "answers vs GLM's served calls"
    );
    assert_eq!(
        distinct.len(),
        answers.len(),
        "an answer reached two callers"
    );
}

/// The account stays limited (every call 1302): every caller degrades on a typed
/// error, no later than the deadline plus one cooldown hold, and GLM gets only the
/// first call and one probe per cooldown (250 ms, then 500 ms, 1 s, doubling).
#[tokio::test(start_paused = true)]
async fn when_glm_stays_limited_every_caller_degrades_on_a_typed_error_by_the_deadline() {
    let glm = GlmApi::new().always_rate_limited(true);
    let (stack, cooldowns) = glm_stack();
    let client = ServiceBuilder::new().layer(stack).service(glm.router());

    let got = ask_all(&client, 3).await;

    for (result, took) in &got {
        match result {
            Err(err) => assert!(err.is_rate_limit(), "a caller got {err}"),
            Ok(answer) => panic!("GLM is always limited, yet a caller got {answer:?}"),
        }
        assert!(*took <= DEADLINE + HOLD, "a caller waited {took:?}");
    }
    assert_no_call_while_cooling(&glm, &cooldowns);
    // The first call; then one probe per cooldown (the other callers meet the
    // cooldown and send nothing of their own).
    let hits = glm.hits();
    assert_eq!(hits.served(), 0);
    assert_eq!(
        hits.times(),
        [0, 250, 750, 1750].map(ms),
        "what reached GLM, and when"
    );
}

// =====================================================================================
// The primary/fallback gateway (seed 003).
// =====================================================================================

/// The model the gateway routes to the GLM primary, then the fallback.
const MODEL: &str = "glm-4";
/// How long a backend cools after a rate-limited answer without a hint (GLM sends
/// none): longer than the scenario, so the primary stays skipped once it has said 1302.
const POOL_COOLDOWN: Duration = Duration::from_secs(3);
/// The longest a gateway call waits for a backend to recover: every cooldown here is
/// longer, so when every backend cools the gateway answers at once.
const POOL_MAX_WAIT: Duration = Duration::from_millis(250);
/// The fallback's quota window.
const FALLBACK_WINDOW: Duration = Duration::from_secs(10);
/// The gap between the fallback's SSE events.
const STREAM_GAP: Duration = Duration::from_millis(80);
/// The fallback's SSE events: a chunk per word of "mock reply from fallback", the
/// `stop` chunk, `[DONE]`.
const STREAM_EVENTS: usize = 6;

/// The mocks, the gateway and its pool's handle.
struct Gateway {
    glm: GlmApi,
    fallback: OpenAiApi,
    glm_bucket: RateLimitLayer,
    handle: PoolHandle,
    router: Router,
}

/// Each backend's own RPM bucket (seed 003), at its platform preset's numbers.
fn bucket(per_minute: u32, burst: u32) -> RateLimitLayer {
    RateLimitLayer::builder()
        .per_minute(per_minute)
        .burst(burst)
        .max_wait(secs(1))
        .build()
        .expect("the bucket builds")
}

/// The pool: `glm-4` to the GLM primary, then the fallback; no other model routed.
fn pool(
    glm: gateway::Backend,
    fallback: gateway::Backend,
) -> Result<GatewayPool, ratewise::ConfigError> {
    Pool::builder()
        .primary("glm", glm)
        .fallback("fallback", fallback)
        .route(MODEL, ["glm", "fallback"])
        .default_route(Vec::<&str>::new())
        .cooldown(CooldownLayer::builder().exponential(POOL_COOLDOWN, POOL_COOLDOWN * 8))
        .max_wait(POOL_MAX_WAIT)
        .build()
}

/// The gateway in-process, over the mocks' routers: a GLM primary that always answers
/// 1302, and an OpenAI-compatible fallback allowing `fallback_limit` calls per 10 s.
fn gateway_in_process(fallback_limit: u32) -> Gateway {
    let glm = GlmApi::new().always_rate_limited(true);
    let fallback = OpenAiApi::new()
        .name("fallback")
        .limit(fallback_limit)
        .window(FALLBACK_WINDOW)
        .stream_gap(STREAM_GAP);
    let glm_bucket = bucket(45, 5);
    let pool = pool(
        gateway::backend(
            glm.router(),
            "http://glm.test/api/paas/v4/chat/completions",
            "glm-key",
            Preset::glm(),
            glm_bucket.clone(),
        )
        .unwrap(),
        gateway::backend(
            fallback.router(),
            "http://fallback.test/v1/chat/completions",
            "fallback-key",
            Preset::openai(),
            bucket(50, 10),
        )
        .unwrap(),
    )
    .unwrap();
    Gateway {
        glm,
        fallback,
        glm_bucket,
        handle: pool.handle(),
        router: gateway::router(pool),
    }
}

impl Gateway {
    /// The request a client sends the gateway.
    fn request(body: &Value) -> Request<Body> {
        Request::post("/v1/chat/completions")
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::AUTHORIZATION, "Bearer the-callers-own-key")
            .body(Body::from(body.to_string()))
            .unwrap()
    }

    /// One call to the gateway, read to the end.
    async fn ask(&self, model: &str) -> Answer {
        let res = self
            .router
            .clone()
            .oneshot(Self::request(&chat_body(model, false)));
        Answer::read(res.await.unwrap()).await.unwrap()
    }

    /// One streaming call, each event with the time it arrived.
    async fn ask_stream(&self) -> Streamed {
        let res = self
            .router
            .clone()
            .oneshot(Self::request(&chat_body(MODEL, true)));
        Streamed::read(res.await.unwrap()).await.unwrap()
    }

    /// (calls that reached glm, calls that reached the fallback).
    fn hits(&self) -> (usize, usize) {
        (self.glm.hits().count(), self.fallback.hits().count())
    }
}

/// The primary answers 429 code 1302; the same call goes on to the fallback, with the
/// caller's whole body, at the same instant. The pool judged the 1302 a rate limit: the
/// primary cools for the pool's backoff (GLM gives no hint).
#[tokio::test(start_paused = true)]
async fn a_primary_1302_fails_over_to_the_fallback_within_the_same_call() {
    let gw = gateway_in_process(10);
    let start = Instant::now();

    let answer = gw.ask(MODEL).await;

    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.served_by(), Some("fallback"));
    assert_eq!(
        answer.body["choices"][0]["message"]["content"],
        "mock reply from fallback"
    );
    // The fallback echoes the request's `model`: it got the whole buffered body, a copy
    // made before the primary consumed its own.
    assert_eq!(answer.body["model"], MODEL);
    assert_eq!(
        gw.glm.hits().times_of(testing::Outcome::RateLimited),
        [ms(0)]
    );
    assert_eq!(gw.glm.hits().count(), 1);
    assert_eq!(
        gw.fallback.hits().times_of(testing::Outcome::Served),
        [ms(0)]
    );
    assert_eq!(gw.fallback.hits().count(), 1);

    let g = gw.handle.backend("glm").unwrap();
    assert_eq!((g.requests, g.rate_limited, g.failovers), (1, 1, 1));
    assert_eq!(
        g.state,
        KeyState::Cooling {
            until: start + POOL_COOLDOWN,
            n: 1
        }
    );
    assert_eq!(gw.handle.totals().failovers, 1);
}

/// While the primary cools, calls skip it: it gets no request until its cooldown ends,
/// and the fallback serves them all. At the cooldown's end the primary gets one probe.
#[tokio::test(start_paused = true)]
async fn the_cooling_primary_is_skipped_until_its_cooldown_ends() {
    let gw = gateway_in_process(10);
    let start = Instant::now();
    assert_eq!(gw.ask(MODEL).await.served_by(), Some("fallback"));

    for at in [ms(1), secs(1), ms(2999)] {
        tokio::time::sleep_until(start + at).await;
        let answer = gw.ask(MODEL).await;
        assert_eq!(
            (answer.status, answer.served_by()),
            (StatusCode::OK, Some("fallback")),
            "at +{at:?}"
        );
    }
    assert_eq!(gw.glm.hits().count(), 1, "the cooling primary got a call");
    let g = gw.handle.backend("glm").unwrap();
    assert_eq!((g.requests, g.skipped_cooling), (1, 3));
    assert_eq!(gw.glm_bucket.stats().admitted, 1, "glm's own bucket");
    assert_eq!(gw.fallback.hits().served(), 4);

    // Its cooldown over, the primary is tried first again: one probe (1302 again, so
    // the call fails over and the primary cools twice as long).
    tokio::time::sleep_until(start + POOL_COOLDOWN).await;
    assert_eq!(gw.ask(MODEL).await.served_by(), Some("fallback"));
    assert_eq!(gw.glm.hits().times(), [ms(0), POOL_COOLDOWN]);
    assert!(matches!(
        gw.handle.backend("glm").unwrap().state,
        KeyState::Cooling { n: 2, .. }
    ));
}

/// A `"stream": true` call crosses the gateway event by event: each SSE event reaches
/// the client when the fallback sends it, 80 ms apart, not buffered into one answer;
/// the cooling primary is skipped for streams too.
#[tokio::test(start_paused = true)]
async fn an_sse_stream_crosses_the_gateway_event_by_event() {
    let gw = gateway_in_process(10);
    gw.ask(MODEL).await; // the primary says 1302 and cools

    let stream = gw.ask_stream().await;

    assert_eq!(stream.status, StatusCode::OK);
    assert_eq!(stream.headers[header::CONTENT_TYPE], "text/event-stream");
    assert_eq!(stream.headers[gateway::SERVED_BY], "fallback");
    let times: Vec<Duration> = stream.events.iter().map(|(at, _)| *at).collect();
    let expected: Vec<Duration> = (0..STREAM_EVENTS as u32).map(|i| STREAM_GAP * i).collect();
    assert_eq!(times, expected, "{:?}", stream.texts());
    assert_eq!(stream.content(), "mock reply from fallback");
    let texts = stream.texts();
    let stop: Value = serde_json::from_str(&texts[4]["data: ".len()..]).unwrap();
    assert_eq!(stop["choices"][0]["finish_reason"], "stop");
    assert_eq!(texts[5], "data: [DONE]");
    assert_eq!(
        gw.glm.hits().count(),
        1,
        "the stream went to the cooling primary"
    );
}

/// The OpenAI-compatible fallback's 429 body, exactly as the mock sends it.
fn fallback_429_body() -> Value {
    json!({"error": {
        "message": "Rate limit reached for requests",
        "type": "requests",
        "param": null,
        "code": "rate_limit_exceeded",
    }})
}

/// Every backend ends up cooling. The call that meets the fallback's own 429 (its quota
/// spent) gets that 429 unchanged: status, body and retry headers. The next call
/// reaches no backend: the gateway answers at once with its own 503, `Retry-After`
/// telling when the first backend (glm) recovers.
#[tokio::test(start_paused = true)]
async fn with_every_backend_cooling_the_caller_gets_the_real_429_else_the_gateways_503() {
    let gw = gateway_in_process(1);
    let start = Instant::now();
    assert_eq!(gw.ask(MODEL).await.served_by(), Some("fallback"));

    // A backend was called: its real 429 reaches the caller.
    tokio::time::sleep_until(start + secs(1)).await;
    let limited = gw.ask(MODEL).await;
    assert_eq!(limited.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(limited.served_by(), Some("fallback"));
    assert_eq!(limited.body, fallback_429_body());
    assert_eq!(limited.header("retry-after-ms"), Some("9000"));
    assert_eq!(limited.header("x-ratelimit-reset-requests"), Some("9s"));
    assert_eq!(
        limited.header(testing::openai::BACKEND_HEADER),
        Some("fallback")
    );
    assert_eq!(gw.hits(), (1, 2));
    assert_eq!(gw.fallback.hits().rate_limited(), 1);
    assert_eq!(gw.handle.totals().all_cooling, 0);

    // No backend called: the gateway's own 503, at once.
    tokio::time::sleep_until(start + ms(1500)).await;
    let asked = Instant::now();
    let refused = gw.ask(MODEL).await;
    assert_eq!(asked.elapsed(), Duration::ZERO, "the gateway waited");
    assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(refused.served_by(), None);
    assert_eq!(refused.error_code(), Some("all_backends_cooling"));
    // glm recovers first, at +3 s: in 1.5 s, rounded up to whole seconds.
    assert_eq!(refused.header("retry-after"), Some("2"));
    assert_eq!(refused.header("retry-after-ms"), Some("1500"));
    assert_eq!(gw.hits(), (1, 2), "a backend got the refused call");
    let totals = gw.handle.totals();
    assert_eq!((totals.all_cooling, totals.waited), (1, 0));
}

/// A model with no route is the gateway's 404 `model_not_found`; no backend gets it.
#[tokio::test(start_paused = true)]
async fn a_model_with_no_route_is_the_gateways_404_and_reaches_no_backend() {
    let gw = gateway_in_process(10);

    let unrouted = gw.ask("no-such-model").await;

    assert_eq!(unrouted.status, StatusCode::NOT_FOUND);
    assert_eq!(unrouted.served_by(), None);
    assert_eq!(unrouted.error_code(), Some("model_not_found"));
    assert_eq!(gw.hits(), (0, 0));
    assert_eq!(gw.handle.totals().no_route, 1);
}

/// The whole scenario (failover, three calls while the primary cools, a stream, the
/// fallback's 429, the gateway's 503, an unrouted model), then the pool's counters:
/// they account for every call, per backend and in total, and agree with the mocks.
#[tokio::test(start_paused = true)]
async fn the_pool_stats_account_for_every_call_of_the_scenario() {
    // The fallback's quota: the failover, 3 calls while the primary cools, the stream.
    let gw = gateway_in_process(5);
    let mut got = Vec::new();
    for _ in 0..4 {
        got.push(gw.ask(MODEL).await.status);
    }
    got.push(gw.ask_stream().await.status);
    for model in [MODEL, MODEL, "no-such-model"] {
        got.push(gw.ask(model).await.status);
    }
    assert_eq!(got, [200, 200, 200, 200, 200, 429, 503, 404]);

    let g = gw.handle.backend("glm").unwrap();
    assert_eq!(
        (
            g.group,
            g.requests,
            g.successes,
            g.rate_limited,
            g.failovers,
            g.skipped_cooling
        ),
        (0, 1, 0, 1, 1, 6),
        "glm: group, requests, ok, rate-limited, failovers, skipped while cooling"
    );
    assert!(matches!(g.state, KeyState::Cooling { n: 1, .. }));
    let f = gw.handle.backend("fallback").unwrap();
    assert_eq!(
        (
            f.group,
            f.requests,
            f.successes,
            f.rate_limited,
            f.failovers,
            f.skipped_cooling
        ),
        (1, 6, 5, 1, 0, 1),
        "fallback: group, requests, ok, rate-limited, failovers, skipped while cooling"
    );
    assert!(matches!(f.state, KeyState::Cooling { n: 1, .. }));
    let t = gw.handle.totals();
    assert_eq!(
        (t.calls, t.failovers, t.waited, t.all_cooling, t.no_route),
        (8, 1, 0, 1, 1),
        "calls, failovers, waited, all cooling, no route"
    );
    // The mocks agree with the pool.
    assert_eq!(gw.glm.hits().count() as u64, g.requests);
    assert_eq!(gw.glm.hits().rate_limited() as u64, g.rate_limited);
    assert_eq!(gw.fallback.hits().count() as u64, f.requests);
    assert_eq!(gw.fallback.hits().served() as u64, f.successes);
    assert_eq!(gw.fallback.hits().rate_limited() as u64, f.rate_limited);
}

// =====================================================================================
// The same gateway over real sockets.
// =====================================================================================

/// Every real-socket call, and reading its answer, is bounded by this.
const CALL_LIMIT: Duration = Duration::from_secs(5);

async fn bounded<T>(what: &str, fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(CALL_LIMIT, fut)
        .await
        .unwrap_or_else(|_| panic!("{what}: still running after {CALL_LIMIT:?}"))
}

/// The scenario over TCP on 127.0.0.1: the gateway served by hyper, each backend a
/// hyper-util client to its mock's server, a hyper-util client calling the gateway.
/// The primary's 1302 fails over within the call; the cooling primary is skipped; the
/// SSE events cross two real sockets one by one; the fallback's real 429 reaches the
/// caller unchanged; the gateway's own 503 comes at once, with `Retry-After`.
#[tokio::test]
async fn the_gateway_scenario_holds_over_real_sockets() {
    let glm = GlmApi::new().always_rate_limited(true);
    // The failover call, one call while the primary cools, the stream; then 429.
    let fallback = OpenAiApi::new()
        .name("fallback")
        .limit(3)
        .window(FALLBACK_WINDOW)
        .stream_gap(STREAM_GAP);
    let glm_server = MockServer::start(glm.router()).await.unwrap();
    let fallback_server = MockServer::start(fallback.router()).await.unwrap();
    let hyper = || Client::builder(TokioExecutor::new()).build_http();
    let pool = pool(
        gateway::backend(
            hyper(),
            &glm_server.url(testing::glm::PATH),
            "glm-key",
            Preset::glm(),
            bucket(45, 5),
        )
        .unwrap(),
        gateway::backend(
            hyper(),
            &fallback_server.url(testing::openai::PATH),
            "fallback-key",
            Preset::openai(),
            bucket(50, 10),
        )
        .unwrap(),
    )
    .unwrap();
    let handle = pool.handle();
    let gateway = MockServer::start(gateway::router(pool)).await.unwrap();
    let url = gateway.url("/v1/chat/completions");
    let client = client();
    let ask = |body: Value| {
        let req = json_request(Method::POST, &url, &body).unwrap();
        let res = client.request(req);
        let call = async move { Answer::read(res.await?).await };
        async move { bounded("a gateway call", call).await.unwrap() }
    };

    let first = ask(chat_body(MODEL, false)).await;
    assert_eq!(
        (first.status, first.served_by()),
        (StatusCode::OK, Some("fallback"))
    );
    assert_eq!(first.body["model"], MODEL);
    assert_eq!(
        (glm.hits().rate_limited(), fallback.hits().served()),
        (1, 1)
    );

    let second = ask(chat_body(MODEL, false)).await;
    assert_eq!(second.served_by(), Some("fallback"));
    assert_eq!(glm.hits().count(), 1, "the cooling primary got a call");

    let req = json_request(Method::POST, &url, &chat_body(MODEL, true)).unwrap();
    let res = bounded("a stream", client.request(req)).await.unwrap();
    let stream = bounded("a stream", Streamed::read(res)).await.unwrap();
    assert_eq!(stream.status, StatusCode::OK);
    assert_eq!(stream.headers[header::CONTENT_TYPE], "text/event-stream");
    assert_eq!(stream.headers[gateway::SERVED_BY], "fallback");
    assert_eq!(stream.events.len(), STREAM_EVENTS, "{:?}", stream.texts());
    assert_eq!(stream.content(), "mock reply from fallback");
    assert_eq!(stream.texts()[STREAM_EVENTS - 1], "data: [DONE]");
    // The mock sends the last event 5 gaps after the first: the first reached the
    // client long before the last was sent, not with it.
    let span = stream.events[STREAM_EVENTS - 1].0 - stream.events[0].0;
    assert!(
        span >= STREAM_GAP * 4,
        "the events came together: {:?}",
        stream.events
    );

    let limited = ask(chat_body(MODEL, false)).await;
    assert_eq!(limited.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(limited.served_by(), Some("fallback"));
    assert_eq!(limited.body, fallback_429_body());
    let retry_ms: u64 = limited.header("retry-after-ms").unwrap().parse().unwrap();
    assert!(
        retry_ms > 0 && retry_ms <= 10_000,
        "retry-after-ms {retry_ms}"
    );

    let hits = (glm.hits().count(), fallback.hits().count());
    let asked = Instant::now();
    let refused = ask(chat_body(MODEL, false)).await;
    assert!(
        asked.elapsed() < secs(1),
        "the gateway waited {:?}",
        asked.elapsed()
    );
    assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(refused.served_by(), None);
    assert_eq!(refused.error_code(), Some("all_backends_cooling"));
    let retry_after: u64 = refused.header("retry-after").unwrap().parse().unwrap();
    assert!(
        (1..=POOL_COOLDOWN.as_secs()).contains(&retry_after),
        "Retry-After {retry_after}"
    );
    assert_eq!((glm.hits().count(), fallback.hits().count()), hits);
    assert_eq!(
        (handle.totals().all_cooling, handle.totals().waited),
        (1, 0)
    );
}
