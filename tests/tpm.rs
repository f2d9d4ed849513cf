//! Tokens per minute through the whole stack: `TokenLimitLayer` above the OpenAI preset
//! of `ClientStackLayer`, against the OpenAI simulator enforcing a token budget. Paced
//! runs with no upstream 429, reconciliation from JSON bodies and from the last SSE
//! chunk as it passes, bodies handed on byte for byte, and (with `redis`) one budget
//! shared by two processes.
#![cfg(feature = "testing")]

use std::{
    convert::Infallible,
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use ratewise::{
    stack::{ClientStack, ClientStackLayer, Platform},
    testing::{self, json_request, openai, GlmApi, OpenAiApi, Outcome},
    tokens::{TokenLimit, TokenLimitLayer},
    vocabulary::RefusalKind,
    BoxError, Refusal,
};
use serde_json::{json, Value};
use tokio::{task::JoinSet, time::Instant};
use tower::{service_fn, Service, ServiceBuilder, ServiceExt};

const SEC: Duration = Duration::from_secs(1);

/// The client under test: the token budget above the OpenAI preset of the standard
/// stack, over the simulator's router.
type Client = TokenLimit<ClientStack<axum::Router>>;

/// The OpenAI preset of the standard stack over the simulator's router, with the token
/// budget above it (so a call takes its request slot once its tokens are there).
fn client(tpm: &TokenLimitLayer, api: &OpenAiApi) -> Client {
    let stack = ClientStackLayer::preset(Platform::OpenAi)
        .build()
        .expect("the preset builds");
    ServiceBuilder::new()
        .layer(tpm.clone())
        .layer(stack)
        .service(api.router())
}

/// A chat call of 400 characters of prompt (100 tokens) allowing 100 more: the default
/// estimate is 200. The simulator's reply of 200 characters is 50 tokens: 150 used.
fn chat(stream: bool) -> Request<Full<Bytes>> {
    json_request(
        Method::POST,
        openai::PATH,
        &json!({
            "model": "gpt-mock",
            "messages": [{"role": "user", "content": "x".repeat(400)}],
            "max_tokens": 100,
            "stream": stream,
        }),
    )
    .expect("request")
}

/// A simulator with a budget of 1,000 tokens per minute, a 200-character reply in 20
/// words, and room for any number of requests.
fn simulator() -> OpenAiApi {
    let reply = vec!["abcdefghi"; 20].join(" ") + " ";
    assert_eq!(reply.chars().count(), 200);
    OpenAiApi::new()
        .limit(10_000)
        .tpm(1_000)
        .reply(reply)
        .stream_gap(Duration::from_millis(100))
}

/// Sends `n` calls at once and reads every answer to its end: (status, the body).
async fn run(client: Client, n: usize, stream: bool) -> Vec<(StatusCode, Bytes)> {
    let mut calls = JoinSet::new();
    for i in 0..n {
        let client = client.clone();
        calls.spawn(async move {
            let answer = client.oneshot(chat(stream)).await?;
            let status = answer.status();
            let body = answer.into_body().collect().await?.to_bytes();
            Ok::<_, BoxError>((i, status, body))
        });
    }
    let mut out = vec![None; n];
    while let Some(done) = calls.join_next().await {
        let (i, status, body) = done.expect("no panic").expect("every call answered");
        out[i] = Some((status, body));
    }
    out.into_iter().map(Option::unwrap).collect()
}

/// The Done-when of TPM: calls whose usage sums to three times the budget are paced,
/// no upstream 429, and the count reconciled from the answers is the simulator's.
#[tokio::test(start_paused = true)]
async fn a_run_of_three_times_the_budget_is_paced_without_a_429() {
    let api = simulator();
    let tpm = TokenLimitLayer::builder()
        .per_minute(1_000)
        .build()
        .expect("valid");
    let answers = run(client(&tpm, &api), 20, false).await;

    assert!(answers.iter().all(|(s, _)| *s == StatusCode::OK));
    assert_eq!(
        api.hits().count_of(Outcome::RateLimited),
        0,
        "no upstream 429"
    );
    assert_eq!(api.hits().served(), 20);
    assert_eq!(api.tokens_served(), 3_000, "three times the budget");
    let stats = tpm.stats();
    assert_eq!(stats.used, api.tokens_served(), "the reconciled count");
    assert_eq!((stats.reconciled, stats.unreported), (20, 0));
    // Each call reserved 200 and used 150: 50 went back.
    assert_eq!(
        (stats.reserved, stats.refunded, stats.charged),
        (4_000, 1_000, 0)
    );

    // Paced by the window. Each answer gives its 50 back as soon as it is read, so six
    // calls fit in a minute (900 used; a seventh's 200 would pass 1,000) and the next
    // six go when the first leave the window. The simulator, counting the last 60 s,
    // refused nothing.
    let times = api.hits().times();
    for (i, at) in times.iter().enumerate() {
        assert_eq!(*at, 60 * SEC * (i as u32 / 6), "call {i}");
    }
    assert_eq!(tpm.rate_limit().stats().waited, 14);
}

/// A streamed answer is reconciled from its last SSE chunk as it passes: the caller gets
/// the first chunk before the simulator sends the last, and the layer asked the stream
/// for its usage (`include_usage`).
#[tokio::test(start_paused = true)]
async fn a_stream_is_reconciled_from_its_last_chunk_as_it_passes() {
    let api = simulator();
    let tpm = TokenLimitLayer::builder()
        .per_minute(1_000)
        .include_usage(true)
        .build()
        .expect("valid");
    let start = Instant::now();
    let answer = client(&tpm, &api)
        .oneshot(chat(true))
        .await
        .expect("answered");
    assert_eq!(answer.status(), StatusCode::OK);
    let mut body = answer.into_body();
    let mut events = Vec::new();
    while let Some(frame) = body.frame().await {
        let data = frame.expect("no body error").into_data().expect("data");
        // Nothing is settled before the stream ends.
        if events.is_empty() {
            assert_eq!(tpm.stats().reconciled, 0);
        }
        events.push((start.elapsed(), String::from_utf8(data.to_vec()).unwrap()));
    }
    // 20 words, stop, the usage chunk, [DONE]: each its own frame, 100 ms apart.
    assert_eq!(events.len(), 23);
    assert_eq!(events[0].0, Duration::ZERO, "the first chunk came at once");
    assert_eq!(
        events[22].0,
        Duration::from_millis(2_200),
        "the last 2.2 s later"
    );
    let usage: Value = serde_json::from_str(
        events[21]
            .1
            .strip_prefix("data: ")
            .expect("an event")
            .trim_end(),
    )
    .expect("JSON");
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"]["total_tokens"], 150);
    assert_eq!(events[22].1, "data: [DONE]\n\n");

    let stats = tpm.stats();
    assert_eq!((stats.reconciled, stats.used), (1, 150));
    assert_eq!(stats.used, api.tokens_served());
    assert_eq!(stats.refunded, 50);
}

/// Streamed calls summing to three times the budget: paced, no 429, reconciled from
/// their last chunks.
#[tokio::test(start_paused = true)]
async fn a_streamed_run_of_three_times_the_budget_is_paced_without_a_429() {
    let api = simulator();
    let tpm = TokenLimitLayer::builder()
        .per_minute(1_000)
        .include_usage(true)
        .build()
        .expect("valid");
    let answers = run(client(&tpm, &api), 20, true).await;
    assert!(answers.iter().all(|(s, _)| *s == StatusCode::OK));
    assert!(answers
        .iter()
        .all(|(_, body)| body.ends_with(b"data: [DONE]\n\n")));
    assert_eq!(
        api.hits().count_of(Outcome::RateLimited),
        0,
        "no upstream 429"
    );
    assert_eq!(api.tokens_served(), 3_000);
    let stats = tpm.stats();
    assert_eq!(stats.used, api.tokens_served(), "the reconciled count");
    assert_eq!((stats.reconciled, stats.unreported), (20, 0));
    let last = api.hits().times().last().copied().unwrap();
    assert_eq!(last, 180 * SEC, "four minutes' worth of five calls");
}

/// Without `include_usage`, an OpenAI stream reports no usage: the call keeps its
/// reservation (the estimate stands for the tokens it used).
#[tokio::test(start_paused = true)]
async fn a_stream_without_usage_keeps_its_reservation() {
    let api = simulator();
    let tpm = TokenLimitLayer::builder()
        .per_minute(1_000)
        .build()
        .expect("valid");
    let answers = run(client(&tpm, &api), 1, true).await;
    assert!(!answers[0].1.windows(7).any(|w| w == b"\"usage\""));
    let stats = tpm.stats();
    assert_eq!((stats.reconciled, stats.unreported), (0, 1));
    assert_eq!((stats.reserved, stats.refunded, stats.used), (200, 0, 0));
}

/// GLM reports usage in its last chunk unasked: a GLM stream is reconciled without
/// `include_usage`, through the GLM preset, and the body reaches GLM as it was sent.
#[tokio::test(start_paused = true)]
async fn a_glm_stream_is_reconciled_unasked() {
    let glm = GlmApi::new().tpm(1_000);
    let tpm = TokenLimitLayer::builder()
        .per_minute(1_000)
        .build()
        .expect("valid");
    let stack = ClientStackLayer::preset(Platform::Glm).build().unwrap();
    let client = ServiceBuilder::new()
        .layer(tpm.clone())
        .layer(stack)
        .service(glm.router());
    for _ in 0..3 {
        let call = json_request(
            Method::POST,
            testing::glm::PATH,
            &json!({"model": "glm-4", "messages": [{"role": "user", "content": "y".repeat(40)}], "stream": true}),
        )
        .unwrap();
        let answer = client.clone().oneshot(call).await.expect("answered");
        let body = answer.into_body().collect().await.expect("read").to_bytes();
        assert!(body.ends_with(b"data: [DONE]\n\n"));
    }
    let stats = tpm.stats();
    assert_eq!((stats.reconciled, stats.unreported), (3, 0));
    assert_eq!(stats.used, glm.tokens_served());
    // 10 prompt tokens and 5 for "glm mock reply #n": 15 each, reserved 10 (no
    // `max_tokens`), so 5 more are charged each time.
    assert_eq!((stats.reserved, stats.used, stats.charged), (30, 45, 15));
}

/// What reached the client below the stack: every request body, as bytes.
type Seen = Arc<Mutex<Vec<Bytes>>>;

/// A client that records each request body and answers 200 with `answer`.
fn recording(
    seen: &Seen,
    answer: &'static str,
) -> impl Service<
    Request<Full<Bytes>>,
    Response = Response<Full<Bytes>>,
    Error = Infallible,
    Future = impl Send,
> + Clone
       + Send
       + 'static {
    let seen = seen.clone();
    service_fn(move |req: Request<Full<Bytes>>| {
        let seen = seen.clone();
        async move {
            let body = req.into_body().collect().await?.to_bytes();
            seen.lock().unwrap().push(body);
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(
                answer.as_bytes(),
            ))))
        }
    })
}

/// A body that is not JSON goes through untouched, estimated at the layer's fallback;
/// JSON bodies are handed on byte for byte unless the layer asks a stream for usage.
#[tokio::test(start_paused = true)]
async fn bodies_are_handed_on_byte_for_byte() {
    let seen: Seen = Arc::default();
    let tpm = TokenLimitLayer::builder()
        .per_minute(1_000)
        .fallback_estimate(7)
        .build()
        .expect("valid");
    let stack = ClientStackLayer::preset(Platform::OpenAi).build().unwrap();
    let client = ServiceBuilder::new()
        .layer(tpm.clone())
        .layer(stack)
        .service(recording(&seen, r#"{"usage":{"total_tokens":3}}"#));
    let odd: &[&[u8]] = &[
        b"\x00\xff not JSON {",
        b"",
        // JSON with its own spacing and key order, and a stream the layer leaves alone
        // (it was not told to ask for usage).
        b" { \"stream\" : true ,\"messages\":[ ],\"max_tokens\":5 }\n",
    ];
    for body in odd {
        let call = Request::post("http://llm.test/v1/chat/completions")
            .body(Full::new(Bytes::from_static(body)))
            .unwrap();
        let answer = client.clone().oneshot(call).await.expect("answered");
        answer.into_body().collect().await.expect("read");
    }
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 3);
    for (sent, got) in odd.iter().zip(&seen) {
        assert_eq!(&got[..], *sent, "handed on byte for byte");
    }
    let stats = tpm.stats();
    // Two fallbacks of 7, and 1 + 5 for the JSON body; every answer said 3.
    assert_eq!(stats.reserved, 7 + 7 + 6);
    assert_eq!((stats.used, stats.reconciled), (9, 3));
}

/// With `include_usage`, a streaming JSON body gains the option and a correct
/// `content-length`; the rest of its bytes stay as they were.
#[tokio::test(start_paused = true)]
async fn include_usage_rewrites_only_streaming_bodies() {
    let seen: Seen = Arc::default();
    let lengths = Arc::new(Mutex::new(Vec::new()));
    let tpm = TokenLimitLayer::builder()
        .per_minute(1_000)
        .include_usage(true)
        .build()
        .expect("valid");
    let recorder = recording(&seen, "{}");
    let client = ServiceBuilder::new()
        .layer(tpm.clone())
        .layer(ClientStackLayer::preset(Platform::OpenAi).build().unwrap())
        .map_request({
            let lengths = lengths.clone();
            move |req: Request<Full<Bytes>>| {
                lengths
                    .lock()
                    .unwrap()
                    .push(req.headers().get("content-length").cloned());
                req
            }
        })
        .service(recorder);
    let streaming = r#"{"stream": true, "messages": [{"role": "user", "content": "hi"}]}"#;
    let plain = r#"{"stream": false, "messages": []}"#;
    for body in [streaming, plain] {
        let call = Request::post("http://llm.test/v1/chat/completions")
            .header("content-length", body.len())
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        let answer = client.clone().oneshot(call).await.expect("answered");
        answer.into_body().collect().await.expect("read");
    }
    let seen = seen.lock().unwrap().clone();
    let asked = format!(
        "{{\"stream_options\":{{\"include_usage\":true}},{}",
        &streaming[1..]
    );
    assert_eq!(&seen[0][..], asked.as_bytes());
    assert_eq!(&seen[1][..], plain.as_bytes());
    let lengths = lengths.lock().unwrap().clone();
    assert_eq!(lengths[0], Some(asked.len().into()));
    assert_eq!(lengths[1], Some(plain.len().into()));
}

/// An upstream 429 costs nothing it counts, and a call a layer below holds back was
/// never sent: either way the reservation goes back, and the budget is whole again.
#[tokio::test(start_paused = true)]
async fn a_refused_call_gives_its_reservation_back() {
    let api = simulator().limit(0); // every call answered OpenAI's 429 (requests)
    let tpm = TokenLimitLayer::builder()
        .per_minute(1_000)
        .max_wait(Duration::ZERO)
        .build()
        .expect("valid");
    // One attempt: the 429 reaches the caller; then the cooldown (60 s, the 429's
    // `retry-after-ms`, longer than the calls' 5 s budget) refuses the next calls
    // without sending them.
    let stack = ClientStackLayer::preset(Platform::OpenAi)
        .retry(|r| r.max_attempts(1).deadline(5 * SEC))
        .build()
        .unwrap();
    let client = ServiceBuilder::new()
        .layer(tpm.clone())
        .layer(stack)
        .service(api.router());
    let answer = client.clone().oneshot(chat(false)).await.expect("answered");
    assert_eq!(answer.status(), StatusCode::TOO_MANY_REQUESTS);
    answer.into_body().collect().await.expect("read");
    // 5 more × 200 reserved would not fit in 1,000 beside the first without refunds.
    for _ in 0..5 {
        let err = client
            .clone()
            .oneshot(chat(false))
            .await
            .expect_err("cooling");
        let refusal = Refusal::find(&*err).expect("a refusal");
        assert_eq!(refusal.kind(), &RefusalKind::CoolingDown, "{refusal}");
    }
    let stats = tpm.stats();
    assert_eq!(
        (stats.reserved, stats.refunded, stats.unreported),
        (1_200, 1_200, 6)
    );
    assert_eq!(api.hits().count(), 1);
}

/// A call whose estimate can never fit the budget fails at once, and says why.
#[tokio::test(start_paused = true)]
async fn a_call_larger_than_the_budget_is_refused_at_once() {
    let api = simulator();
    let tpm = TokenLimitLayer::builder().per_minute(150).build().unwrap();
    let err = client(&tpm, &api)
        .oneshot(chat(false))
        .await
        .expect_err("200 can never fit in 150");
    let refusal = Refusal::find(&*err).expect("a refusal");
    assert_eq!(
        refusal.kind(),
        &RefusalKind::CostExceedsBurst {
            cost: 200,
            burst: 150
        },
        "{refusal}"
    );
    assert_eq!(api.hits().count(), 0);
    assert_eq!(tpm.stats().reserved, 0);
}

/// Two processes (two layers, one Redis name) share one budget, reservations and
/// settlements included.
#[cfg(feature = "redis")]
#[tokio::test]
async fn two_processes_share_one_budget_through_redis() {
    use ratewise::{redis::Redis, testing::RedisServer};

    let Some(server) = RedisServer::start() else {
        return;
    };
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let name = format!("tpm-{}-{nanos}", std::process::id());
    let redis = Redis::new(server.url()).unwrap().fail_closed();
    let layer = || {
        TokenLimitLayer::builder()
            .per_minute(1_000)
            .max_wait(Duration::ZERO)
            .store(redis.rate_limit(&name))
            .build()
            .unwrap()
    };
    let (a, b) = (layer(), layer());
    let seen: Seen = Arc::default();
    // Every answer used 100 tokens.
    let via = |layer: &TokenLimitLayer| {
        ServiceBuilder::new()
            .layer(layer.clone())
            .service(recording(&seen, r#"{"usage":{"total_tokens":100}}"#))
    };
    // 4 characters of prompt (1 token) and `max_tokens`.
    let call = |max_tokens: u32| {
        let body = json!({"messages": [{"content": "abcd"}], "max_tokens": max_tokens});
        json_request(Method::POST, "/v1/chat/completions", &body).unwrap()
    };
    let refused = |result: Result<_, BoxError>| match result {
        Err(err) => matches!(
            Refusal::find(&*err).map(Refusal::kind),
            Some(RefusalKind::MaxWait { .. })
        ),
        Ok(_) => false,
    };
    // The settlement's round trip runs in a task of its own: try again (200 times at
    // most, 5 ms apart) until the budget shows it.
    let until_admitted = |layer: &TokenLimitLayer, max_tokens: u32| {
        let client = via(layer);
        async move {
            for _ in 0..200 {
                if let Ok(res) = client.clone().oneshot(call(max_tokens)).await {
                    return res;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            panic!("never admitted");
        }
    };

    // A reserves 800 in Redis: B cannot take 300 until A's answer settles.
    let res = via(&a).oneshot(call(799)).await.unwrap();
    assert!(refused(via(&b).oneshot(call(299)).await));
    res.into_body().collect().await.unwrap(); // A used 100: 700 go back
                                              // B reserves 900 beside A's 100: the budget is full for A.
    let held = until_admitted(&b, 899).await;
    assert!(refused(via(&a).oneshot(call(0)).await));
    // B used 100: 800 go back, so A takes 800 (A 100 + B 100 + 800).
    held.into_body().collect().await.unwrap();
    let last = until_admitted(&a, 799).await;
    assert!(refused(via(&b).oneshot(call(0)).await));
    last.into_body().collect().await.unwrap();
    assert_eq!((a.stats().used, b.stats().used), (200, 100));
}
