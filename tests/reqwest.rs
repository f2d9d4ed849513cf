//! `ratewise::reqwest::Middleware` in a reqwest-middleware client, over real sockets on
//! 127.0.0.1 against the crate's mocks: the Telegram preset with a per-chat key read
//! from the body, a GLM answer streamed as SSE, streaming request bodies, typed errors
//! out of `reqwest_middleware::Error`, and reqwest-retry beside it.
#![cfg(all(feature = "reqwest", feature = "testing"))]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use axum::{routing::post, Router};
use bytes::Bytes;
use ratewise::key::json_field;
use ratewise::rate_limit::Limit;
use ratewise::retry::DeadlineExceeded;
use ratewise::testing::{GlmApi, MockServer, TelegramBot};
use ratewise::vocabulary::{Budget, LayerKind, RefusalKind};
use ratewise::{Platform, Refusal, Verdict};
use reqwest_middleware::{ClientBuilder, ClientWithMiddleware};
use serde_json::{json, Value};
use tokio::task::JoinSet;

/// A reqwest-middleware client with `stack` as its only middleware.
fn client(stack: &ratewise::reqwest::Middleware) -> ClientWithMiddleware {
    ClientBuilder::new(reqwest::Client::new())
        .with(stack.clone())
        .build()
}

/// Concurrent senders.
const SENDERS: usize = 12;
/// Distinct chats; sender `s` writes to chat `s % CHATS`, so two senders share a chat.
const CHATS: usize = 6;
/// Messages each sender sends, one after another: 36 in all, 6 per chat.
const MESSAGES_EACH: usize = 3;

/// Done when: the Telegram preset with a per-chat key read from the body's `chat_id`,
/// over real sockets, through reqwest-middleware. Every message reaches the bot exactly
/// once and answers 200 to its caller; no call lands during a penalty. 6 messages per
/// chat at one per second take about 5 s.
#[tokio::test]
async fn telegram_preset_with_a_per_chat_key_delivers_every_message_once() {
    let bot = TelegramBot::new()
        .limit(30)
        .window(Duration::from_secs(1))
        .per_chat(1, Duration::from_secs(1));
    let server = MockServer::start(bot.router()).await.unwrap();
    let telegram = ratewise::reqwest::Middleware::preset(Platform::Telegram)
        .rate_limit(|r| {
            r.limit(
                Limit::per_period(Duration::from_secs(1))
                    .key(json_field("/chat_id"))
                    .margin_percent(1),
            )
        })
        .build()
        .unwrap();
    let client = client(&telegram);
    let url = server.url("/bot123:secret/sendMessage");

    let start = Instant::now();
    let mut senders = JoinSet::new();
    for s in 0..SENDERS {
        let (client, url) = (client.clone(), url.clone());
        senders.spawn(async move {
            let mut answers = Vec::new();
            for m in 0..MESSAGES_EACH {
                let text = format!("s{s}-m{m}");
                let body = json!({"chat_id": 1000 + s % CHATS, "text": text});
                let send = client.post(&url).json(&body).send();
                let answer = match tokio::time::timeout(Duration::from_secs(30), send).await {
                    Ok(Ok(res)) => Ok(res.status()),
                    Ok(Err(err)) => Err(format!("{err:?}")),
                    Err(_) => Err("no answer within 30 s".to_owned()),
                };
                answers.push((text, answer));
            }
            answers
        });
    }
    let answers = senders.join_all().await.concat();
    let elapsed = start.elapsed();

    let hits = bot.hits();
    println!(
        "in {elapsed:?}: {} calls, {} × 429, {} during a penalty; {:?}",
        hits.count(),
        hits.rate_limited(),
        bot.calls_during_penalty(),
        telegram.stats()
    );
    let total = SENDERS * MESSAGES_EACH;
    assert_eq!(answers.len(), total);
    let failed: Vec<_> = answers
        .iter()
        .filter(|(_, a)| a.as_ref().ok() != Some(&reqwest::StatusCode::OK))
        .collect();
    assert!(failed.is_empty(), "{failed:#?}");
    let mut delivered: BTreeMap<String, usize> = BTreeMap::new();
    for d in bot.delivered() {
        *delivered.entry(d.text).or_default() += 1;
    }
    assert_eq!(delivered.len(), total, "{delivered:?}");
    assert!(delivered.values().all(|n| *n == 1), "{delivered:?}");
    assert_eq!(bot.calls_during_penalty(), 0, "calls during a penalty");
    assert!(elapsed < Duration::from_secs(20), "took {elapsed:?}");
    server.shutdown().await;
}

/// Done when: a streaming GLM answer (SSE) reaches a reqwest caller chunk by chunk.
/// The mock sends its 6 events 250 ms apart, so it cannot send the last before 1.25 s
/// after the request left the caller; the caller has the first event, alone, before
/// that.
#[tokio::test]
async fn glm_sse_reaches_the_caller_chunk_by_chunk() {
    let gap = Duration::from_millis(250);
    let glm = GlmApi::new().stream_gap(gap);
    let server = MockServer::start(glm.router()).await.unwrap();
    let stack = ratewise::reqwest::Middleware::preset(Platform::Glm)
        .build()
        .unwrap();
    let url = server.url(ratewise::testing::glm::PATH);

    let sent = Instant::now();
    let mut res = client(&stack)
        .post(&url)
        .json(&json!({"model": "glm-4", "stream": true, "messages": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "text/event-stream");
    let mut chunks: Vec<(Duration, Bytes)> = Vec::new();
    while let Some(chunk) = res.chunk().await.unwrap() {
        chunks.push((sent.elapsed(), chunk));
    }
    println!(
        "chunks at {:?}",
        chunks.iter().map(|(at, _)| *at).collect::<Vec<_>>()
    );

    let stream: String = chunks
        .iter()
        .map(|(_, c)| String::from_utf8(c.to_vec()).unwrap())
        .collect();
    let events: Vec<&str> = stream.split_inclusive("\n\n").collect();
    assert_eq!(events.len(), 6, "{stream}");
    assert_eq!(events[5], "data: [DONE]\n\n");
    let content: String = events[..4]
        .iter()
        .map(|e| {
            let chunk: Value = serde_json::from_str(e.trim().strip_prefix("data: ").unwrap())
                .expect("an SSE data event");
            chunk["choices"][0]["delta"]["content"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(content, "glm mock reply #1");

    let (first_at, first) = &chunks[0];
    assert_eq!(
        first,
        events[0].as_bytes(),
        "the first chunk is the first event"
    );
    assert!(
        *first_at < gap * 5,
        "the first event arrived at {first_at:?}, not before the mock could send the last"
    );
    assert!(chunks.len() > 1, "one chunk: buffered on the way");
    assert_eq!(glm.hits().served(), 1);
    server.shutdown().await;
}

/// Done when: a refusal comes back out of `reqwest_middleware::Error`. A limit of one
/// call a minute that may wait 100 ms: the second call is refused at once, without
/// reaching the upstream, and the caller finds the typed `Refusal`.
#[tokio::test]
async fn a_refusal_comes_back_out_of_the_reqwest_middleware_error() {
    let glm = GlmApi::new();
    let server = MockServer::start(glm.router()).await.unwrap();
    let stack = ratewise::reqwest::Middleware::preset(Platform::Glm)
        .rate_limit(|r| {
            r.per_minute(1)
                .burst(1)
                .max_wait(Duration::from_millis(100))
        })
        .build()
        .unwrap();
    let client = client(&stack);
    let url = server.url(ratewise::testing::glm::PATH);
    let call = || client.post(&url).json(&json!({"messages": []})).send();

    assert_eq!(call().await.unwrap().status(), 200);
    let start = Instant::now();
    let result = call().await;
    assert!(start.elapsed() < Duration::from_secs(1), "refused at once");

    let err = result.as_ref().unwrap_err();
    assert!(err.is_middleware(), "{err:?}");
    // One call, whichever layer refused: the crate's own finder...
    let refusal = Refusal::find(err).expect("a Refusal in the error's chain");
    assert_eq!(refusal.layer(), LayerKind::RateLimit);
    assert!(matches!(refusal.kind(), RefusalKind::MaxWait { .. }));
    let wait = refusal
        .retry_after()
        .expect("the wait it would have needed");
    assert!(wait > Duration::from_secs(58), "{wait:?}");
    // ...or anyhow's, on the `Middleware` variant.
    let reqwest_middleware::Error::Middleware(inner) = err else {
        panic!("{err:?}")
    };
    let root = inner.root_cause().downcast_ref::<Refusal>();
    assert!(root.is_some_and(|r| std::ptr::eq(r, refusal)), "{inner:?}");
    assert!(
        err.to_string().starts_with("ratewise: rate limited"),
        "{err}"
    );
    // The one-outcome call says the same.
    assert_eq!(ratewise::reqwest::outcome(&result), refusal.verdict());
    assert!(ratewise::reqwest::outcome(&result).is_rate_limited());

    assert_eq!(
        glm.hits().count(),
        1,
        "the refused call never reached the upstream"
    );
    server.shutdown().await;
}

/// Telegram's 4310 s ban: the 429 comes back at once as a response (`outcome` reads
/// its wait), then the next call is refused by the cooldown without reaching the bot.
#[tokio::test]
async fn a_ban_comes_back_at_once_then_the_cooldown_refuses() {
    let bot = TelegramBot::new()
        .limit(1)
        .penalty(Duration::from_secs(4310));
    let server = MockServer::start(bot.router()).await.unwrap();
    let stack = ratewise::reqwest::Middleware::preset(Platform::Telegram)
        .build()
        .unwrap();
    let client = client(&stack);
    let url = server.url("/bot123:secret/sendMessage");
    let send = |text: &str| {
        client
            .post(&url)
            .json(&json!({"chat_id": 1, "text": text}))
            .send()
    };

    assert_eq!(send("first").await.unwrap().status(), 200);
    let start = Instant::now();
    let banned = send("second").await;
    assert_eq!(banned.as_ref().unwrap().status(), 429);
    assert_eq!(
        ratewise::reqwest::outcome(&banned),
        Verdict::rate_limited(Some(Duration::from_secs(4310)))
    );
    let banned = banned.unwrap();
    assert_eq!(banned.url().as_str(), url, "the response keeps its URL");
    let body: Value = banned.json().await.unwrap();
    assert_eq!(body["parameters"]["retry_after"], 4310, "the body, whole");

    let refused = send("third").await;
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "no wait for a ban"
    );
    let refusal = Refusal::find(refused.as_ref().unwrap_err()).expect("a Refusal");
    assert_eq!(refusal.layer(), LayerKind::Cooldown);
    assert!(refusal.retry_after().unwrap() > Duration::from_secs(4300));
    assert!(ratewise::reqwest::outcome(&refused).is_rate_limited());

    assert_eq!(bot.hits().count(), 2);
    assert_eq!(bot.calls_during_penalty(), 0);
    server.shutdown().await;
}

/// A request body in memory is sent again by the retry; a streaming one is sent once,
/// and its 429 comes back to the caller as it is.
#[tokio::test]
async fn a_streaming_request_body_is_sent_once() {
    let stack = ratewise::reqwest::Middleware::preset(Platform::Telegram)
        .build()
        .unwrap();
    let message = |text: &str| json!({"chat_id": 1, "text": text}).to_string();

    // A bot that allows one message, then penalises for 1 s.
    let bot = || TelegramBot::new().limit(1).penalty(Duration::from_secs(1));

    let buffered = bot();
    let server = MockServer::start(buffered.router()).await.unwrap();
    let url = server.url("/bot123:secret/sendMessage");
    let client = client(&stack);
    for text in ["a", "b"] {
        let res = client
            .post(&url)
            .header("content-type", "application/json")
            .body(message(text))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200, "{text}");
    }
    // "b": a 429, then sent again after the penalty.
    assert_eq!(buffered.hits().count(), 3);
    assert_eq!(buffered.delivered().len(), 2);
    server.shutdown().await;

    let streamed = bot();
    let server = MockServer::start(streamed.router()).await.unwrap();
    let url = server.url("/bot123:secret/sendMessage");
    assert_eq!(
        client
            .post(&url)
            .json(&json!({"chat_id": 1, "text": "a"}))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let body = reqwest::Body::wrap(http_body_util::Full::new(Bytes::from(message("b"))));
    let res = client
        .post(&url)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 429, "not sent again");
    assert_eq!(streamed.hits().count(), 2);
    assert_eq!(streamed.delivered().len(), 1);
    server.shutdown().await;
}

/// A call's own budget, given through reqwest-middleware's extensions, bounds the whole
/// call: an upstream that takes 5 s is cut off at 300 ms with a typed
/// `DeadlineExceeded`.
#[tokio::test]
async fn a_budget_from_the_extensions_ends_the_call_with_deadline_exceeded() {
    let slow = Router::new().route(
        "/slow",
        post(|| async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            "late"
        }),
    );
    let server = MockServer::start(slow).await.unwrap();
    let stack = ratewise::reqwest::Middleware::builder().build().unwrap();
    let start = Instant::now();
    let result = client(&stack)
        .post(server.url("/slow"))
        .with_extension(Budget(Duration::from_millis(300)))
        .send()
        .await;
    let elapsed = start.elapsed();
    let err = result.unwrap_err();
    let deadline = std::error::Error::source(&err)
        .and_then(|e| e.downcast_ref::<DeadlineExceeded>())
        .unwrap_or_else(|| panic!("not a DeadlineExceeded: {err:?}"));
    assert_eq!(deadline.deadline(), Duration::from_millis(300));
    assert!(
        elapsed >= Duration::from_millis(300) && elapsed < Duration::from_secs(2),
        "{elapsed:?}"
    );
    server.shutdown().await;
}

/// reqwest-retry added first (outermost), ratewise after: reqwest-retry re-sends the
/// 429 that ratewise gave back, ratewise's cooldown refuses it without reaching the
/// bot, and reqwest-retry returns that refusal, still found by `Refusal::find`.
#[tokio::test]
async fn beside_reqwest_retry_nothing_reaches_a_penalised_upstream() {
    use reqwest_retry::{policies::ExponentialBackoff, RetryTransientMiddleware};

    let bot = TelegramBot::new()
        .limit(1)
        .penalty(Duration::from_secs(4310));
    let server = MockServer::start(bot.router()).await.unwrap();
    let stack = ratewise::reqwest::Middleware::preset(Platform::Telegram)
        .build()
        .unwrap();
    let policy = ExponentialBackoff::builder()
        .retry_bounds(Duration::from_millis(10), Duration::from_millis(20))
        .build_with_max_retries(3);
    let client = ClientBuilder::new(reqwest::Client::new())
        .with(RetryTransientMiddleware::new_with_policy(policy))
        .with(stack.clone())
        .build();
    let url = server.url("/bot123:secret/sendMessage");
    let send = |text: &str| {
        client
            .post(&url)
            .json(&json!({"chat_id": 1, "text": text}))
            .send()
    };

    assert_eq!(send("first").await.unwrap().status(), 200);
    for text in ["second", "third"] {
        let err = send(text).await.unwrap_err();
        let refusal = Refusal::find(&err).unwrap_or_else(|| panic!("{err:?}"));
        assert_eq!(refusal.layer(), LayerKind::Cooldown, "{text}");
    }
    // The first call and the 429; every retry of reqwest-retry's was refused here.
    assert_eq!(bot.hits().count(), 2);
    assert_eq!(bot.calls_during_penalty(), 0);
    assert_eq!(
        stack.stats().cooldown.cooldowns_started,
        1,
        "{:?}",
        stack.stats()
    );
    server.shutdown().await;
}

/// What reqwest returned comes back unchanged: reqwest's own per-request timeout holds
/// for each attempt (it rides the conversion), a timeout is transient so the stack
/// tries again, and the caller gets `reqwest_middleware::Error::Reqwest` with
/// `is_timeout()`.
#[tokio::test]
async fn reqwest_errors_come_back_unchanged_and_its_timeout_bounds_each_attempt() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    let calls = Arc::new(AtomicUsize::new(0));
    let slow = Router::new().route(
        "/slow",
        post({
            let calls = calls.clone();
            move || async move {
                calls.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_secs(5)).await;
                "late"
            }
        }),
    );
    let server = MockServer::start(slow).await.unwrap();
    let stack = ratewise::reqwest::Middleware::builder()
        .retry(|r| {
            r.exponential(Duration::from_millis(10), Duration::from_millis(10))
                .max_attempts(2)
        })
        .build()
        .unwrap();
    let start = Instant::now();
    let err = client(&stack)
        .post(server.url("/slow"))
        .timeout(Duration::from_millis(200))
        .send()
        .await
        .unwrap_err();
    let elapsed = start.elapsed();
    assert!(
        matches!(err, reqwest_middleware::Error::Reqwest(_)),
        "{err:?}"
    );
    assert!(err.is_timeout(), "{err:?}");
    assert!(Refusal::find(&err).is_none());
    assert_eq!(calls.load(Ordering::SeqCst), 2, "two attempts");
    assert!(
        elapsed >= Duration::from_millis(400) && elapsed < Duration::from_secs(3),
        "{elapsed:?}"
    );
    server.shutdown().await;
}
