//! An LLM gateway calling GLM over its account's limit (seed 004), against the
//! `GlmApi` mock on 127.0.0.1.
//!
//! GLM answers **429** `{"error":{"code":"1302","message":"您的账户已达到速率限制,请您控制请求频率"}}`
//! when the account is over its limit, with no retry hint. The client is
//! [`ClientStackLayer::preset(Platform::Glm)`](ratewise::stack::ClientStackLayer):
//! the 1302 answer is classified as a rate limit, the host cools down (no calls while it
//! does, one probe after), and the call is retried. A caller gets an answer or, when
//! the account stays limited past the retry deadline, a typed [`GlmError::RateLimited`]
//! it can degrade on (the seed's `GLMRateLimitException`), never a hang.
//!
//! Here another process shares the account, so this one's own limit (10/s) is looser
//! than what the account has left (5/s): 12 questions at once meet 1302. Times are
//! scaled down (cooldown and retry delays from 250 ms, a 3 s deadline) so the example
//! ends quickly.
//!
//! Then seed 003's sidecar, the primary/fallback pool ([`run_pool`]): an
//! OpenAI-compatible gateway (`POST /v1/chat/completions` on 127.0.0.1, axum) buffers
//! each request body, reads its `model` and hands it to a [`Pool`] routing `glm-4` to a
//! GLM primary (the `GlmApi` mock, always 1302) and then an OpenAI-compatible fallback
//! (the `OpenAiApi` mock, with a small quota). The primary's 1302 fails over to the
//! fallback within the call; the primary is skipped while it cools; an SSE stream
//! crosses the gateway event by event; and when every backend cools the gateway answers
//! at once, with the fallback's real 429 when it was called, else with its own 503 and
//! `Retry-After`.
//!
//! ```sh
//! cargo run --example llm_gateway --features testing
//! ```

#[path = "support/mod.rs"]
mod support;

use std::collections::BTreeSet;
use std::error::Error;
use std::fmt;
use std::process::ExitCode;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::routing::post;
use axum::Router;
use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use ratewise::body::PeekBody;
use ratewise::classify::{presets, presets::Preset, ClassifyLayer};
use ratewise::cooldown::KeyState;
use ratewise::pool::{BackendStats, Model, Pool, PoolHandle, ServedBy};
use ratewise::retry::{buffer_request, RetryBody};
use ratewise::stack::ClientStackLayer;
use ratewise::testing::{
    body_json, client, glm, json_request, openai, GlmApi, MockServer, OpenAiApi, TestClient,
};
use ratewise::vocabulary::RefusalKind;
use ratewise::{
    verdict_of, verdict_of_error, BoxError, CooldownLayer, Platform, RateLimitLayer, Refusal,
};
use serde_json::{json, Value};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tower::{Service, ServiceBuilder, ServiceExt};

use support::{bounded, hits_summary, print_hits, secs, Report};

/// Questions asked at once.
const CALLERS: usize = 12;
/// What the account has left: calls per second.
const ACCOUNT_LIMIT: u32 = 5;
/// The retry deadline: no retry wait ends past it. A call can overrun it by one attempt,
/// that is by at most `HOLD` (nothing waits in the rate limiter here).
const DEADLINE: Duration = Duration::from_secs(3);
/// The longest one attempt waits for a cooldown to end before failing with a typed
/// `CoolingDown` refusal (which the retry layer then waits out, within the deadline).
const HOLD: Duration = Duration::from_secs(1);
/// The API key: sent in every request, never printed.
const API_KEY: &str = "demo-key.not-a-secret";
/// What a caller shows when GLM stays limited (the seed's degraded answer).
const DEGRADED: &str = "抱歉,系统繁忙,请稍后重试。";

#[allow(dead_code)] // `demo.rs` includes this file as a module and calls `run`.
#[tokio::main]
async fn main() -> ExitCode {
    let glm = support::finish(run().await);
    println!();
    let pool = support::finish(run_pool().await);
    if glm == ExitCode::SUCCESS && pool == ExitCode::SUCCESS {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Runs the GLM scenario and checks what the mock recorded.
pub async fn run() -> Result<Report, BoxError> {
    let mut report = Report::new("GLM gateway");
    println!(
        "== GLM: {CALLERS} questions at once; the account has {ACCOUNT_LIMIT}/s left, then 429 code 1302"
    );
    let glm = GlmApi::new()
        .limit(ACCOUNT_LIMIT)
        .window(Duration::from_secs(1));
    let server = MockServer::start(glm.router()).await?;
    let url = server.url(glm::PATH);
    let ms = Duration::from_millis;
    let stack = ClientStackLayer::preset(Platform::Glm)
        .rate_limit(|rl| rl.per_second(10).burst(10).max_wait(ms(2000)))
        .cooldown(|c| c.exponential(ms(250), ms(2000)).wait(HOLD))
        .retry(|r| {
            r.exponential(ms(250), ms(2000))
                .max_attempts(6)
                .deadline(DEADLINE)
        })
        .build()?;
    let gateway = ServiceBuilder::new().layer(stack.clone()).service(client());

    // --- 1. A burst of questions past the account's limit. ---------------------------
    let got = ask_all(&gateway, &url, CALLERS).await?;
    let answers: Vec<&String> = got.iter().filter_map(|r| r.as_ref().ok()).collect();
    let degraded = got
        .iter()
        .filter(|r| {
            matches!(
                r,
                Err(GlmError::RateLimited { .. } | GlmError::DeadlinePassed(_))
            )
        })
        .count();
    let other: Vec<String> = got
        .iter()
        .filter_map(|r| match r {
            Err(e @ GlmError::Other(_)) => Some(e.to_string()),
            _ => None,
        })
        .collect();
    let hits = glm.hits();
    println!(
        "-- what reached {} (time since the mock started):",
        glm::PATH
    );
    print_hits(&hits);
    let stats = stack.stats();
    println!(
        "-- {}; the stack cooled down {} time(s) ({} requests held back), retried {} time(s)",
        hits_summary(&hits),
        stats.cooldown.cooldowns_started,
        stats.cooldown.met_cooldown,
        stats.retry.retries
    );
    println!(
        "-- the callers got {} answers and {degraded} typed rate-limit errors{}",
        answers.len(),
        if degraded > 0 {
            format!(" (each shown as \"{DEGRADED}\")")
        } else {
            String::new()
        }
    );
    report.check(
        hits.rate_limited() > 0,
        format!("the burst did meet 1302 ({} × 429)", hits.rate_limited()),
    );
    report.check(
        stats.cooldown.cooldowns_started > 0 && stats.retry.retries > 0,
        format!(
            "the 1302 answers were classified as rate limits: {} cooldown(s), {} retries",
            stats.cooldown.cooldowns_started, stats.retry.retries
        ),
    );
    report.check(
        other.is_empty(),
        format!("every caller got an answer or a typed rate-limit error (others: {other:?})"),
    );
    let distinct: BTreeSet<&String> = answers.iter().copied().collect();
    report.check(
        answers.len() == hits.served() && distinct.len() == answers.len(),
        format!(
            "every answer GLM gave reached exactly one caller ({} served, {} answers)",
            hits.served(),
            answers.len()
        ),
    );

    // --- 2. The account stays limited: callers degrade, at once after the deadline. -----
    println!("== GLM: the account stays limited (every call 1302): callers must degrade, not hang");
    glm.set_always_rate_limited(true);
    let before = glm.hits().count();
    let started = Instant::now();
    let got = ask_all(&gateway, &url, 3).await?;
    let took = started.elapsed();
    for r in &got {
        match r {
            Ok(answer) => println!("   answer: {answer}"),
            Err(err) => println!("   {err}  ->  the caller shows \"{DEGRADED}\""),
        }
    }
    let limited_errors = got
        .iter()
        .filter(|r| {
            matches!(
                r,
                Err(GlmError::RateLimited { .. } | GlmError::DeadlinePassed(_))
            )
        })
        .count();
    report.check(
        limited_errors == got.len(),
        format!(
            "all {} callers degraded on a typed error (GlmError::RateLimited or DeadlinePassed: {limited_errors}), after {} (deadline {}), with {} calls to GLM",
            got.len(),
            secs(took),
            secs(DEADLINE),
            glm.hits().count() - before
        ),
    );
    report.check(
        took < DEADLINE + HOLD + Duration::from_millis(500),
        format!(
            "no caller waited past the deadline plus one cooldown hold ({} + {})",
            secs(DEADLINE),
            secs(HOLD)
        ),
    );

    report.upstream = hits_summary(&glm.hits());
    report.callers = format!(
        "{} answers, {degraded} degraded on a typed error; when always limited: {limited_errors} degraded in {}",
        answers.len(),
        secs(took)
    );
    server.shutdown().await;
    Ok(report)
}

// ==================================================================================
// The primary/fallback pool (seed 003): an OpenAI-compatible gateway in front of a
// GLM primary and an OpenAI-compatible fallback.
// ==================================================================================

/// The request body the gateway hands its pool: read into memory by `buffer_request`
/// (axum's `Body` streams and cannot be cloned), so the pool can send a copy to the
/// fallback when the primary answers 429.
type GatewayBody = RetryBody<Body>;
/// What a backend answers with: hyper's streaming body behind the `ClassifyLayer`'s
/// peek (only error statuses are peeked; a 200 SSE stream flows through as it comes).
type UpstreamBody = PeekBody<Incoming>;
/// The gateway's pool.
type GatewayPool = Pool<GatewayBody, UpstreamBody>;

/// The model the gateway routes to the GLM primary, then the fallback.
const POOL_MODEL: &str = "glm-4";
/// How long a backend cools after its first rate-limited answer (GLM sends no retry
/// hint), doubling after each further one. It outlasts the whole scenario (about 1 s),
/// so the primary stays skipped once it has answered 1302.
const POOL_COOLDOWN: Duration = Duration::from_secs(3);
/// The longest a gateway call waits for a backend to recover. Every cooldown here is
/// longer, so when every backend cools the gateway answers at once.
const POOL_MAX_WAIT: Duration = Duration::from_millis(250);
/// Calls sent while the primary cools.
const WHILE_COOLING: usize = 3;
/// The fallback's quota: the failover call, the calls while the primary cools and the
/// stream; the call after them meets the fallback's own 429.
const FALLBACK_LIMIT: u32 = WHILE_COOLING as u32 + 2;
/// The fallback's quota window.
const FALLBACK_WINDOW: Duration = Duration::from_secs(10);
/// The gap between the fallback's SSE events.
const STREAM_GAP: Duration = Duration::from_millis(80);
/// The largest request body the gateway buffers (a larger one is answered 413).
const MAX_REQUEST_BODY: usize = 256 * 1024;
/// Every gateway call (and reading its answer) is bounded by this.
const CALL_LIMIT: Duration = Duration::from_secs(5);
/// The most body frames read from one answer.
const MAX_FRAMES: usize = 256;
/// The backends' API keys: the gateway sends each backend its own (marked sensitive);
/// they are never printed.
const GLM_KEY: &str = "demo-glm-key.not-a-secret";
const FALLBACK_KEY: &str = "demo-fallback-key.not-a-secret";
/// The header the gateway sets from the pool's `ServedBy` extension.
const SERVED_BY: &str = "x-served-by";
/// Hop-by-hop headers (RFC 9110 §7.6.1): a proxy does not forward them.
const HOP_BY_HOP: [&str; 7] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// The primary/fallback pool behind an OpenAI-compatible gateway, over real sockets.
///
/// The gateway (`POST /v1/chat/completions` on 127.0.0.1) buffers each request body,
/// reads its `model` and hands the request to a [`Pool`] that routes `glm-4` to the
/// GLM primary, then the OpenAI-compatible fallback. Each backend is a hyper-util
/// client under its own RPM bucket and its platform's classifier, aimed at its own
/// mock. A hyper-util client calls the gateway. Checked, from the mocks' logs, the
/// pool's counters and `x-served-by` (the pool's `ServedBy`):
///
/// 1. the primary's 429 code 1302 fails over to the fallback within the same call;
/// 2. while the primary cools, calls skip it (it gets no request);
/// 3. an SSE stream crosses the gateway event by event;
/// 4. when every backend cools, the gateway answers at once: with the fallback's own
///    429 when it was called, else with its own 503 and `Retry-After`;
/// 5. a model with no route is a 404 that reaches no backend.
pub async fn run_pool() -> Result<Report, BoxError> {
    let mut report = Report::new("LLM pool");
    println!(
        "== LLM gateway pool: `{POOL_MODEL}` -> [glm: primary, always 429 code 1302; fallback: OpenAI-compatible, {FALLBACK_LIMIT} calls per {}]",
        secs(FALLBACK_WINDOW)
    );
    let glm = GlmApi::new().always_rate_limited(true);
    let fallback = OpenAiApi::new()
        .name("fallback")
        .limit(FALLBACK_LIMIT)
        .window(FALLBACK_WINDOW)
        .stream_gap(STREAM_GAP);
    let glm_server = MockServer::start(glm.router()).await?;
    let fallback_server = MockServer::start(fallback.router()).await?;

    // Each backend's own RPM bucket (seed 003), at its platform preset's numbers.
    let glm_bucket = RateLimitLayer::builder()
        .per_minute(45)
        .burst(5)
        .max_wait(Duration::from_secs(1))
        .build()?;
    let fallback_bucket = RateLimitLayer::builder()
        .per_minute(50)
        .burst(10)
        .max_wait(Duration::from_secs(1))
        .build()?;
    let pool: GatewayPool = Pool::builder()
        .primary(
            "glm",
            backend(
                glm_server.url(glm::PATH).parse()?,
                GLM_KEY,
                presets::glm(),
                glm_bucket.clone(),
            )?,
        )
        .fallback(
            "fallback",
            backend(
                fallback_server.url(openai::PATH).parse()?,
                FALLBACK_KEY,
                presets::openai(),
                fallback_bucket.clone(),
            )?,
        )
        .route(POOL_MODEL, ["glm", "fallback"])
        .default_route(Vec::<&str>::new())
        .cooldown(CooldownLayer::builder().exponential(POOL_COOLDOWN, POOL_COOLDOWN * 8))
        .max_wait(POOL_MAX_WAIT)
        .build()?;
    let handle = pool.handle();
    // `MockServer` serves any router on 127.0.0.1 and stops every connection task when
    // dropped: here it serves the gateway itself.
    let gateway = MockServer::start(gateway_router(pool)).await?;
    let url = gateway.url("/v1/chat/completions");
    let client = client();
    let started = Instant::now();

    // --- 1. Failover within the call. ------------------------------------------------
    println!(
        "-- 1. one call: the primary answers 429 code 1302, the same call goes on to the fallback"
    );
    // What each call got, in a few words, for the summary.
    let mut got: Vec<String> = Vec::new();
    let first = ask(&client, &url, &chat_body(POOL_MODEL, false)).await?;
    println!("   {first}");
    got.push(first.label());
    let g = backend_stats(&handle, "glm")?;
    report.check(
        first.status == StatusCode::OK
            && first.served_by.as_deref() == Some("fallback")
            && glm.hits().rate_limited() == 1
            && glm.hits().count() == 1
            && fallback.hits().served() == 1,
        format!(
            "failover within the call: the caller got {} from `{}`; glm answered {} call(s) with 429 1302, the fallback served {}",
            first.status,
            first.served_by.as_deref().unwrap_or("-"),
            glm.hits().rate_limited(),
            fallback.hits().served()
        ),
    );
    // The fallback echoes the request's `model`: it got the whole buffered body, a
    // copy made before the primary consumed its own.
    report.check(
        first.body["model"] == POOL_MODEL,
        format!(
            "the fallback got the caller's whole request body (its answer echoes model {})",
            first.body["model"]
        ),
    );
    report.check(
        g.requests == 1
            && g.rate_limited == 1
            && g.failovers == 1
            && matches!(g.state, KeyState::Cooling { n: 1, .. }),
        format!(
            "the pool judged the 1302 a rate limit: glm requests {}, rate-limited {}, failovers {}, now {}",
            g.requests,
            g.rate_limited,
            g.failovers,
            state_text(&g.state)
        ),
    );

    // --- 2. The primary is skipped while it cools. -----------------------------------
    println!("-- 2. {WHILE_COOLING} more calls while the primary cools");
    let glm_before = glm.hits().count();
    let mut by_fallback = 0;
    for _ in 0..WHILE_COOLING {
        let answer = ask(&client, &url, &chat_body(POOL_MODEL, false)).await?;
        println!("   {answer}");
        got.push(answer.label());
        if answer.status == StatusCode::OK && answer.served_by.as_deref() == Some("fallback") {
            by_fallback += 1;
        }
    }
    let g = backend_stats(&handle, "glm")?;
    report.check(
        by_fallback == WHILE_COOLING && glm.hits().count() == glm_before,
        format!(
            "the cooling primary was skipped: {by_fallback}/{WHILE_COOLING} answers from the fallback, glm hits stayed at {} (now {})",
            glm_before,
            glm.hits().count()
        ),
    );
    report.check(
        g.skipped_cooling == WHILE_COOLING as u64
            && g.requests == 1
            && glm_bucket.stats().admitted == 1,
        format!(
            "the pool's counters agree: glm skipped while cooling {}, requests {}, its own bucket admitted {}",
            g.skipped_cooling,
            g.requests,
            glm_bucket.stats().admitted
        ),
    );

    // --- 3. Streaming through the gateway. -------------------------------------------
    println!("-- 3. a `\"stream\": true` call: the SSE events as they reached the client (since the request was sent)");
    let stream = ask_stream(&client, &url, &chat_body(POOL_MODEL, true)).await?;
    got.push(format!(
        "{} stream from {}",
        stream.status.as_u16(),
        source(stream.served_by.as_deref())
    ));
    println!(
        "   {} {} from `{}`",
        stream.status,
        stream.content_type.as_deref().unwrap_or("-"),
        stream.served_by.as_deref().unwrap_or("-")
    );
    for event in &stream.events {
        println!("    +{}  {}", secs(event.at), event_text(&event.text));
    }
    let words = "mock reply from fallback".split_whitespace().count();
    let span = match (stream.events.first(), stream.events.last()) {
        (Some(first), Some(last)) => last.at.saturating_sub(first.at),
        _ => Duration::ZERO,
    };
    let done_last = stream
        .events
        .last()
        .is_some_and(|e| e.text == "data: [DONE]");
    report.check(
        stream.status == StatusCode::OK
            && stream.content_type.as_deref() == Some("text/event-stream")
            && stream.served_by.as_deref() == Some("fallback")
            && stream.events.len() == words + 2
            && done_last,
        format!(
            "the stream came from the fallback: {} text/event-stream, {} events ({words} words, stop, [DONE])",
            stream.status,
            stream.events.len()
        ),
    );
    report.check(
        span >= STREAM_GAP * 3,
        format!(
            "event by event, not buffered: the first event reached the client {} before [DONE] (the mock sends them {} apart)",
            secs(span),
            secs(STREAM_GAP)
        ),
    );
    report.check(
        glm.hits().count() == glm_before,
        format!(
            "the stream skipped the cooling primary too (glm hits {})",
            glm.hits().count()
        ),
    );

    // --- 4. Every backend cooling. ---------------------------------------------------
    println!("-- 4. the fallback's quota is spent: every backend ends up cooling");
    let limited = ask(&client, &url, &chat_body(POOL_MODEL, false)).await?;
    println!("   {limited}");
    got.push(limited.label());
    report.check(
        limited.status == StatusCode::TOO_MANY_REQUESTS
            && limited.served_by.as_deref() == Some("fallback")
            && limited.body["error"]["code"] == "rate_limit_exceeded"
            && limited.retry_after_ms.is_some()
            && fallback.hits().rate_limited() == 1
            && handle.totals().all_cooling == 0,
        format!(
            "with a backend called, the caller got its real 429: {} from `{}`, code {}, retry-after-ms {} (not a pool error)",
            limited.status,
            limited.served_by.as_deref().unwrap_or("-"),
            limited.body["error"]["code"],
            limited.retry_after_ms.as_deref().unwrap_or("-")
        ),
    );
    let hits_before = (glm.hits().count(), fallback.hits().count());
    let refused = ask(&client, &url, &chat_body(POOL_MODEL, false)).await?;
    println!("   {refused}");
    got.push(refused.label());
    let glm_left = match handle.cooldown().state("glm") {
        KeyState::Cooling { until, .. } => until.saturating_duration_since(Instant::now()),
        _ => Duration::ZERO,
    };
    let retry_after: Option<u64> = refused.retry_after.as_deref().and_then(|v| v.parse().ok());
    report.check(
        refused.status == StatusCode::SERVICE_UNAVAILABLE
            && refused.served_by.is_none()
            && refused.body["error"]["code"] == "all_backends_cooling"
            && retry_after.is_some_and(|s| s >= 1 && s <= POOL_COOLDOWN.as_secs())
            && (glm.hits().count(), fallback.hits().count()) == hits_before
            && handle.totals().all_cooling == 1,
        format!(
            "with none called, the gateway's own {} with Retry-After {} s (glm recovers first, in {}); no backend got the call",
            refused.status,
            refused.retry_after.as_deref().unwrap_or("-"),
            secs(glm_left)
        ),
    );
    report.check(
        handle.totals().waited == 0 && refused.took < Duration::from_secs(1),
        format!(
            "at once: the pool waited on no call ({} waited), the refusal took {}",
            handle.totals().waited,
            secs(refused.took)
        ),
    );

    // --- 5. A model with no route. ---------------------------------------------------
    let hits_before = (glm.hits().count(), fallback.hits().count());
    let unrouted = ask(&client, &url, &chat_body("no-such-model", false)).await?;
    got.push(unrouted.label());
    println!("-- 5. a model with no route\n   {unrouted}");
    report.check(
        unrouted.status == StatusCode::NOT_FOUND
            && unrouted.body["error"]["code"] == "model_not_found"
            && (glm.hits().count(), fallback.hits().count()) == hits_before
            && handle.totals().no_route == 1,
        format!(
            "an unknown model is the gateway's {} model_not_found, reaching no backend",
            unrouted.status
        ),
    );

    println!(
        "-- what reached each backend (time since its mock started), {} in all:",
        secs(started.elapsed())
    );
    println!("   glm ({}):", glm::PATH);
    print_hits(&glm.hits());
    println!("   fallback ({}):", openai::PATH);
    print_hits(&fallback.hits());
    println!("-- the pool's counters:");
    for b in handle.backends() {
        println!(
            "    {:<9} group {}  requests {}, ok {}, rate-limited {}, failovers {}, skipped while cooling {}; {}",
            b.name.as_str(),
            b.group,
            b.requests,
            b.successes,
            b.rate_limited,
            b.failovers,
            b.skipped_cooling,
            state_text(&b.state)
        );
    }
    let t = handle.totals();
    println!(
        "    calls {}, failovers {}, waited {}, refused all-cooling {}, no route {}",
        t.calls, t.failovers, t.waited, t.all_cooling, t.no_route
    );

    report.upstream = format!(
        "glm {}; fallback {}",
        hits_summary(&glm.hits()),
        hits_summary(&fallback.hits())
    );
    report.callers = tally(&got);
    gateway.shutdown().await;
    glm_server.shutdown().await;
    fallback_server.shutdown().await;
    Ok(report)
}

/// One backend of the pool: a hyper-util client under the backend's own RPM bucket and
/// its platform's classifier, sending every request to `upstream` with the backend's
/// own API key.
fn backend(
    upstream: Uri,
    api_key: &str,
    classifier: Preset,
    bucket: RateLimitLayer,
) -> Result<
    impl Service<
            Request<GatewayBody>,
            Response = Response<UpstreamBody>,
            Error = BoxError,
            Future: Send + 'static,
        > + Clone
        + Send
        + Sync
        + 'static,
    BoxError,
> {
    let mut auth = HeaderValue::try_from(format!("Bearer {api_key}"))?;
    auth.set_sensitive(true);
    // `testing::client()` is this client built for `Full<Bytes>` bodies; built for the
    // gateway's `RetryBody`, it sends the buffered bytes without another copy.
    let client: Client<HttpConnector, GatewayBody> =
        Client::builder(TokioExecutor::new()).build_http();
    Ok(ServiceBuilder::new()
        .map_request(move |mut req: Request<GatewayBody>| {
            *req.uri_mut() = upstream.clone();
            req.headers_mut()
                .insert(header::AUTHORIZATION, auth.clone());
            req
        })
        .layer(bucket)
        .layer(ClassifyLayer::new(classifier))
        .service(client))
}

/// The gateway: `POST /v1/chat/completions`, answered through the pool.
fn gateway_router(pool: GatewayPool) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(completions))
        .with_state(pool)
}

/// Buffers the request, routes it by its `model`, and relays the pool's answer: a
/// backend's response as it came (streams included, `x-served-by` added), or the
/// gateway's own error when no backend was called.
async fn completions(State(pool): State<GatewayPool>, req: Request<Body>) -> Response<Body> {
    let mut req = match buffer_request(req, MAX_REQUEST_BODY).await {
        Ok(req) => req,
        Err(err) => {
            return error_response(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                None,
                format!("could not read the request body: {err}"),
            )
        }
    };
    let Some(bytes) = req.body().buffered_bytes() else {
        return error_response(
            StatusCode::PAYLOAD_TOO_LARGE,
            "request_too_large",
            None,
            format!("the request body is over {MAX_REQUEST_BODY} bytes"),
        );
    };
    let model = serde_json::from_slice::<Value>(bytes)
        .ok()
        .and_then(|body| body.get("model")?.as_str().map(str::to_owned));
    let Some(model) = model else {
        return error_response(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            None,
            "the body must be a JSON object with a string `model`".to_owned(),
        );
    };
    // The caller's credentials and connection headers stay here: each backend gets
    // its own key, and its client its own connection.
    let headers = req.headers_mut();
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
    headers.remove(header::HOST);
    headers.remove(header::AUTHORIZATION);
    req.extensions_mut().insert(Model::new(model));
    match pool.oneshot(req).await {
        Ok(res) => relay(res),
        Err(err) => pool_error(&*err),
    }
}

/// A backend's answer, as it came, with `x-served-by` from the pool's [`ServedBy`].
fn relay(res: Response<UpstreamBody>) -> Response<Body> {
    let served_by = res
        .extensions()
        .get::<ServedBy>()
        .and_then(|by| HeaderValue::from_str(by.name()).ok());
    let mut res = res.map(Body::new);
    let headers = res.headers_mut();
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
    if let Some(name) = served_by {
        headers.insert(SERVED_BY, name);
    }
    res
}

/// The gateway's own answer when the pool called no backend.
fn pool_error(err: &(dyn Error + 'static)) -> Response<Body> {
    let refusal = err.downcast_ref::<Refusal>();
    match refusal.map(Refusal::kind) {
        Some(RefusalKind::AllBackendsCooling { .. }) => {
            return error_response(
                StatusCode::SERVICE_UNAVAILABLE,
                "all_backends_cooling",
                refusal.and_then(Refusal::retry_after),
                err.to_string(),
            );
        }
        Some(RefusalKind::NoBackendReady { .. }) => {
            let wait = verdict_of_error(err).retry_after();
            return error_response(
                StatusCode::SERVICE_UNAVAILABLE,
                "no_backend_ready",
                wait,
                err.to_string(),
            );
        }
        Some(RefusalKind::NoRoute { .. }) => {
            return error_response(
                StatusCode::NOT_FOUND,
                "model_not_found",
                None,
                err.to_string(),
            );
        }
        _ => {}
    }
    error_response(
        StatusCode::BAD_GATEWAY,
        "upstream_error",
        None,
        format!("the backend could not be reached: {err}"),
    )
}

/// An OpenAI-style error answer; with a wait, `Retry-After` (whole seconds, rounded
/// up, at least 1) and `retry-after-ms`.
fn error_response(
    status: StatusCode,
    code: &str,
    retry_after: Option<Duration>,
    message: String,
) -> Response<Body> {
    let body = json!({
        "error": { "message": message, "type": "gateway_error", "param": null, "code": code }
    });
    let mut res = Response::new(Body::from(body.to_string()));
    *res.status_mut() = status;
    let headers = res.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Some(wait) = retry_after {
        let whole = (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1);
        headers.insert(header::RETRY_AFTER, HeaderValue::from(whole));
        let ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX);
        headers.insert("retry-after-ms", HeaderValue::from(ms));
    }
    res
}

/// A chat completion request body.
fn chat_body(model: &str, stream: bool) -> Value {
    json!({
        "model": model,
        "stream": stream,
        "messages": [{ "role": "user", "content": "hello" }],
    })
}

/// What a client got from the gateway.
struct Answer {
    status: StatusCode,
    served_by: Option<String>,
    retry_after: Option<String>,
    retry_after_ms: Option<String>,
    body: Value,
    took: Duration,
}

impl fmt::Display for Answer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.served_by {
            Some(by) => write!(f, "{} from `{by}`", self.status)?,
            None => write!(f, "{} from the gateway itself", self.status)?,
        }
        write!(f, " in {}", secs(self.took))?;
        if let Some(ra) = &self.retry_after {
            write!(f, ", Retry-After {ra}")?;
        }
        if let Some(ms) = &self.retry_after_ms {
            write!(f, ", retry-after-ms {ms}")?;
        }
        if let Some(text) = self.body["choices"][0]["message"]["content"].as_str() {
            write!(f, ": {text:?}")
        } else if let Some(code) = self.body["error"]["code"].as_str() {
            write!(f, ": error {code}")?;
            match self.body["error"]["message"].as_str() {
                Some(message) => write!(f, " ({message})"),
                None => Ok(()),
            }
        } else {
            Ok(())
        }
    }
}

impl Answer {
    /// The answer in a few words: status, source, and the gateway's `Retry-After`.
    fn label(&self) -> String {
        let mut label = format!(
            "{} from {}",
            self.status.as_u16(),
            source(self.served_by.as_deref())
        );
        if let (None, Some(ra)) = (&self.served_by, &self.retry_after) {
            label.push_str(&format!(" (Retry-After {ra} s)"));
        }
        label
    }
}

/// Who answered: the backend named by `x-served-by`, else the gateway itself.
fn source(served_by: Option<&str>) -> String {
    served_by.map_or_else(|| "the gateway".to_owned(), |by| format!("`{by}`"))
}

/// Equal labels counted, in the order they first came: "4 × 200 from \`fallback\`,
/// 1 × 404 from the gateway".
fn tally(labels: &[String]) -> String {
    let mut runs: Vec<(&str, usize)> = Vec::new();
    for label in labels {
        match runs.iter_mut().find(|(l, _)| *l == label.as_str()) {
            Some((_, n)) => *n += 1,
            None => runs.push((label, 1)),
        }
    }
    runs.iter()
        .map(|(label, n)| format!("{n} × {label}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A response header as text.
fn header_text(headers: &http::HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// One call to the gateway, read to the end.
async fn ask(client: &TestClient, url: &str, body: &Value) -> Result<Answer, BoxError> {
    let started = Instant::now();
    let req = json_request(Method::POST, url, body)?;
    let res = bounded("a gateway call", CALL_LIMIT, client.request(req)).await??;
    let headers = res.headers();
    let (served_by, retry_after, retry_after_ms) = (
        header_text(headers, SERVED_BY),
        header_text(headers, "retry-after"),
        header_text(headers, "retry-after-ms"),
    );
    let status = res.status();
    let body = bounded("a gateway answer", CALL_LIMIT, body_json(res.into_body())).await??;
    Ok(Answer {
        status,
        served_by,
        retry_after,
        retry_after_ms,
        body,
        took: started.elapsed(),
    })
}

/// One SSE event and when it reached the client.
struct Event {
    at: Duration,
    text: String,
}

/// What a client got from a streaming call.
struct Streamed {
    status: StatusCode,
    content_type: Option<String>,
    served_by: Option<String>,
    events: Vec<Event>,
}

/// One streaming call to the gateway: each SSE event with the time it arrived.
async fn ask_stream(client: &TestClient, url: &str, body: &Value) -> Result<Streamed, BoxError> {
    let started = Instant::now();
    let req = json_request(Method::POST, url, body)?;
    let res = bounded("a gateway call", CALL_LIMIT, client.request(req)).await??;
    let status = res.status();
    let content_type = header_text(res.headers(), "content-type");
    let served_by = header_text(res.headers(), SERVED_BY);
    let mut body = res.into_body();
    let mut pending: Vec<u8> = Vec::new();
    let mut events = Vec::new();
    bounded("the SSE stream", CALL_LIMIT, async {
        let mut frames = 0;
        while let Some(frame) = body.frame().await {
            frames += 1;
            if frames > MAX_FRAMES {
                return Err(BoxError::from("the stream sent too many frames"));
            }
            let Ok(data) = frame?.into_data() else {
                continue;
            };
            let at = started.elapsed();
            pending.extend_from_slice(&data);
            while let Some(end) = pending.windows(2).position(|w| w == b"\n\n") {
                let event: Vec<u8> = pending.drain(..end + 2).collect();
                let text = String::from_utf8_lossy(&event).trim_end().to_owned();
                events.push(Event { at, text });
            }
        }
        Ok(())
    })
    .await??;
    Ok(Streamed {
        status,
        content_type,
        served_by,
        events,
    })
}

/// An SSE event in a few words: the text piece, the finish reason, or `[DONE]`.
fn event_text(event: &str) -> String {
    let data = event.strip_prefix("data: ").unwrap_or(event);
    let Ok(json) = serde_json::from_str::<Value>(data) else {
        return data.to_owned();
    };
    let choice = &json["choices"][0];
    if let Some(piece) = choice["delta"]["content"].as_str() {
        format!("chunk {piece:?}")
    } else if let Some(reason) = choice["finish_reason"].as_str() {
        format!("finish_reason {reason:?}")
    } else {
        data.to_owned()
    }
}

/// One backend's stats, by name.
fn backend_stats(handle: &PoolHandle, name: &str) -> Result<BackendStats, BoxError> {
    handle
        .backend(name)
        .ok_or_else(|| format!("the pool has no backend `{name}`").into())
}

/// A cooldown state in words.
fn state_text(state: &KeyState) -> String {
    match state {
        KeyState::Ok => "ok".to_owned(),
        KeyState::Cooling { until, n } => format!(
            "cooling {} more (n = {n})",
            secs(until.saturating_duration_since(Instant::now()))
        ),
        KeyState::HalfOpen { n, probing } => format!(
            "half-open (n = {n}){}",
            if *probing { ", probe in flight" } else { "" }
        ),
        other => format!("{other:?}"),
    }
}

/// Asks `n` questions at once; each caller's answer or typed error, in caller order.
async fn ask_all<S, B>(
    gateway: &S,
    url: &str,
    n: usize,
) -> Result<Vec<Result<String, GlmError>>, BoxError>
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
    let mut set = JoinSet::new();
    for i in 0..n {
        let (gateway, url) = (gateway.clone(), url.to_owned());
        set.spawn(async move { (i, chat(gateway, &url, &format!("question {i}")).await) });
    }
    let mut got: Vec<Option<Result<String, GlmError>>> = (0..n).map(|_| None).collect();
    bounded("the callers", DEADLINE + Duration::from_secs(10), async {
        while let Some(done) = set.join_next().await {
            let (i, result) = done?;
            got[i] = Some(result);
        }
        Ok::<_, BoxError>(())
    })
    .await??;
    Ok(got.into_iter().flatten().collect())
}

/// One chat completion: the answer's text, or a typed error.
async fn chat<S, B>(gateway: S, url: &str, prompt: &str) -> Result<String, GlmError>
where
    S: Service<Request<Full<Bytes>>, Response = http::Response<B>, Error = BoxError>,
    B: http_body::Body,
    B::Error: Into<BoxError>,
{
    let mut req = json_request(
        Method::POST,
        url,
        &json!({"model": "glm-4", "messages": [{"role": "user", "content": prompt}]}),
    )
    .map_err(|e| GlmError::Other(e.into()))?;
    let auth = format!("Bearer {API_KEY}")
        .parse()
        .map_err(|e: http::header::InvalidHeaderValue| GlmError::Other(e.into()))?;
    req.headers_mut().insert(header::AUTHORIZATION, auth);

    let res = match gateway.oneshot(req).await {
        Ok(res) => res,
        // The stack's own refusals (cooling down, rate limiter) carry the wait.
        Err(err) => {
            if let Some(deadline) = err.downcast_ref::<ratewise::retry::DeadlineExceeded>() {
                return Err(GlmError::DeadlinePassed(deadline.deadline()));
            }
            let verdict = verdict_of_error(&*err);
            return Err(if verdict.is_rate_limited() {
                GlmError::RateLimited {
                    code: None,
                    retry_after: verdict.retry_after(),
                }
            } else {
                GlmError::Other(err)
            });
        }
    };
    let status = res.status();
    let verdict = verdict_of(&res);
    let body = body_json(res.into_body()).await.map_err(GlmError::Other)?;
    if status.is_success() {
        return body["choices"][0]["message"]["content"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| GlmError::Other("the answer has no choices[0].message.content".into()));
    }
    if verdict.is_rate_limited() {
        return Err(GlmError::RateLimited {
            code: body["error"]["code"].as_str().map(str::to_owned),
            retry_after: verdict.retry_after(),
        });
    }
    Err(GlmError::Other(format!("GLM answered {status}").into()))
}

/// What a caller gets instead of an answer: the seed's `GLMRateLimitException`, typed.
#[derive(Debug)]
enum GlmError {
    /// GLM kept the account rate-limited past the call's deadline (code 1302), or the
    /// client is holding calls back while it cools down. Degrade.
    RateLimited {
        /// GLM's error code, when the last answer came from GLM.
        code: Option<String>,
        /// How long to wait, when known.
        retry_after: Option<Duration>,
    },
    /// The call's total deadline passed while GLM kept the account limited (the retry
    /// layer's `DeadlineExceeded`). Degrade.
    DeadlinePassed(Duration),
    /// Anything else.
    Other(BoxError),
}

impl fmt::Display for GlmError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GlmError::RateLimited { code, retry_after } => {
                write!(f, "GLM rate limit")?;
                match code {
                    Some(code) => write!(f, " (code {code})")?,
                    None => write!(f, " (the client is cooling down)")?,
                }
                if let Some(wait) = retry_after {
                    write!(f, ", retry after {}", secs(*wait))?;
                }
                Ok(())
            }
            GlmError::DeadlinePassed(d) => {
                write!(
                    f,
                    "GLM still limited when the call's {} deadline passed",
                    secs(*d)
                )
            }
            GlmError::Other(err) => write!(f, "GLM call failed: {err}"),
        }
    }
}

impl Error for GlmError {}
