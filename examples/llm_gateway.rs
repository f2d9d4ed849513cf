//! An LLM gateway against GLM's 429 code 1302, on mocks at 127.0.0.1: the GLM preset
//! cools down and retries, and a caller degrades on a typed error ([`run`]); a [`Pool`]
//! fails over from a GLM primary to an OpenAI-compatible fallback ([`run_pool`]).
//!
//! `cargo run --example llm_gateway --features testing`. The scenario checks (with an
//! OpenAI-compatible axum gateway over the pool, and SSE) are in `tests/llm_gateway.rs`.

#[path = "support/mod.rs"]
mod support;

use std::{process::ExitCode, time::Duration};

use http::{Method, Request, Uri};
use ratewise::classify::Preset;
use ratewise::testing::{body_json, client, glm, json_request, openai, GlmApi, MockServer};
use ratewise::testing::{OpenAiApi, TestClient};
use ratewise::{outcome, BoxError, ClassifyLayer, ClientStackLayer, Platform, Pool};
use ratewise::{pool::ServedBy, retry::DeadlineExceeded, stack::ClientStack};
use serde_json::json;
use tower::{Layer, ServiceBuilder, ServiceExt};

use support::{hits_summary, Report};

#[allow(dead_code)] // `demo.rs` includes this file as a module and calls `run` and `run_pool`.
#[tokio::main]
async fn main() -> ExitCode {
    let glm_ok = support::finish(run().await) == ExitCode::SUCCESS;
    let pool_ok = support::finish(run_pool().await) == ExitCode::SUCCESS;
    ExitCode::from(u8::from(!(glm_ok && pool_ok)))
}

/// What a caller gets instead of an answer: the seed's `GLMRateLimitException`, typed.
#[derive(Debug)]
enum GlmError {
    /// Over the limit (GLM's 1302, the cooldown's refusal, the deadline passed): degrade.
    RateLimited,
    /// Anything else.
    Failed(BoxError),
}

/// One question through the stack: the answer, or a typed error.
async fn ask(glm: ClientStack<TestClient>, url: String) -> Result<String, GlmError> {
    let body = json!({"model": "glm-4", "messages": [{"role": "user", "content": "hi"}]});
    let req = json_request(Method::POST, &url, &body).map_err(|e| GlmError::Failed(e.into()))?;
    let result = glm.oneshot(req).await;
    let deadline_passed = result.as_ref().is_err_and(|e| e.is::<DeadlineExceeded>());
    if deadline_passed || outcome(&result).is_rate_limited() {
        return Err(GlmError::RateLimited);
    }
    let res = result.map_err(GlmError::Failed)?;
    let answer = body_json(res.into_body()).await.map_err(GlmError::Failed)?;
    Ok(answer["choices"][0]["message"]["content"].to_string())
}

/// `Platform::Glm`: 1302 is a rate limit; the host cools down, the call is retried. 12
/// questions at once while the account has 5 calls per second left, then always 1302.
pub async fn run() -> Result<Report, BoxError> {
    let glm = GlmApi::new().limit(5).window(Duration::from_secs(1));
    let server = MockServer::start(glm.router()).await?;
    // This process's own limit (10/s) is looser than what the account has left.
    let stack = ClientStackLayer::preset(Platform::Glm)
        .rate_limit(|rl| rl.per_second(10).burst(10))
        .retry(|r| r.deadline(Duration::from_secs(3)))
        .build()?;
    let gateway = ServiceBuilder::new().layer(stack.clone()).service(client());
    let url = server.url(glm::PATH);

    println!("== GLM: 12 questions at once; the account has 5/s left, then 429 code 1302");
    let calls = (0..12).map(|_| tokio::spawn(ask(gateway.clone(), url.clone())));
    let (mut answers, mut degraded) = (0, 0);
    for call in calls.collect::<Vec<_>>() {
        match call.await? {
            Ok(_) => answers += 1,
            Err(GlmError::RateLimited) => degraded += 1,
            Err(GlmError::Failed(err)) => return Err(err),
        }
    }
    let summary = hits_summary(&glm.hits());
    let cooled = stack.stats().cooldown.cooldowns_started;
    println!("   {answers} answers, {degraded} degraded; GLM got {summary}; {cooled} cooldowns");

    println!("== GLM stays limited: the caller degrades by the deadline (3 s)");
    glm.set_always_rate_limited(true);
    let started = tokio::time::Instant::now();
    let reply = ask(gateway, url).await;
    let took = started.elapsed().as_secs_f64();
    println!("   {reply:?} after {took:.1} s: the caller shows \"抱歉,系统繁忙,请稍后重试。\"");

    let mut report = Report::new("GLM gateway");
    report.check(answers == glm.hits().served(), "answers reach callers");
    report.check(matches!(reply, Err(GlmError::RateLimited)), "degraded");
    report.upstream = hits_summary(&glm.hits());
    report.callers = format!("{answers} answers, {} degraded", degraded + 1);
    Ok(report)
}

/// A pool: a GLM primary that always answers 1302, then a fallback allowing 2 calls a
/// minute. The 1302 fails over within the call, the cooling primary is skipped, and once
/// every backend cools the pool refuses at once.
pub async fn run_pool() -> Result<Report, BoxError> {
    let glm = GlmApi::new().always_rate_limited(true);
    let fallback = OpenAiApi::new().name("fallback").limit(2);
    let glm_server = MockServer::start(glm.router()).await?;
    let fallback_server = MockServer::start(fallback.router()).await?;
    // A backend: a hyper-util client sending to its upstream, under its platform's classifier.
    let backend = |url: String, classifier: Preset| -> Result<_, BoxError> {
        let uri: Uri = url.parse()?;
        let classified = ClassifyLayer::new(classifier).layer(client());
        Ok(classified.map_request(move |mut req: Request<_>| {
            *req.uri_mut() = uri.clone();
            req
        }))
    };
    let secondary = backend(fallback_server.url(openai::PATH), Preset::openai())?;
    let pool = Pool::builder() // each backend cools 1 s after a rate limit, then 2 s, 4 s...
        .primary("glm", backend(glm_server.url(glm::PATH), Preset::glm())?)
        .fallback("fallback", secondary)
        .max_wait(Duration::ZERO) // every backend cooling: refuse at once, do not wait
        .build()?;

    println!("== LLM pool: glm (always 1302), then fallback (2 calls a minute)");
    let mut got = Vec::new();
    for i in 1..=4 {
        let req = json_request(Method::POST, "http://pool/", &json!({"model": "glm-4"}))?;
        let label = match pool.clone().oneshot(req).await {
            Ok(res) => {
                let by = res.extensions().get::<ServedBy>().map(ServedBy::name);
                format!("{} from {}", res.status().as_u16(), by.unwrap_or("?"))
            }
            Err(err) => format!("refused: {err}"),
        };
        println!("   call {i}: {label}");
        got.push(label);
    }

    let mut report = Report::new("LLM pool");
    report.check(glm.hits().count() == 1, "glm skipped after its 1302");
    report.check(got[..2] == ["200 from fallback"; 2], "failover");
    report.check(got[2] == "429 from fallback", "the fallback's real 429");
    report.check(got[3].starts_with("refused"), "all cooling: refused");
    let (g, f) = (hits_summary(&glm.hits()), hits_summary(&fallback.hits()));
    report.upstream = format!("glm {g}; fallback {f}");
    report.callers = format!("{}, refused", got[..3].join(", "));
    Ok(report)
}
