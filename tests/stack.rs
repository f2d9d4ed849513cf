//! The standard client stack (`ClientStackLayer`) against in-process platform mocks, on
//! tokio's paused clock.
#![cfg(feature = "testing")]

use std::{collections::BTreeMap, time::Duration};

use http::{Method, StatusCode};
use ratewise::{
    classify::presets,
    stack::{ClientStackLayer, Platform, StackConfigError},
    testing::{json_request, TelegramBot},
    ClassifyLayer, RetryLayer,
};
use serde_json::json;
use tower::{ServiceBuilder, ServiceExt};

const SENDERS: usize = 16;
const MESSAGES_EACH: usize = 4;

/// The Telegram incident: a bot whose senders each retry on their own while the platform
/// punishes the whole client gets its penalty doubled on every call, up to 4310 s.
///
/// Here the upstream allows 5 calls per second, then answers 429 `retry_after: 5`, and any
/// call during a penalty doubles it. The client's own limit is deliberately looser (20/s),
/// so the stack has to learn the real limit from the 429s. 16 concurrent senders share one
/// stack: none of their calls may land inside a penalty, and every message must arrive,
/// exactly once.
#[tokio::test(start_paused = true)]
async fn telegram_penalty_sixteen_senders_never_call_during_a_penalty_and_all_deliver() {
    let bot = TelegramBot::new()
        .limit(5)
        .window(Duration::from_secs(1))
        .penalty(Duration::from_secs(5));
    let stack = ClientStackLayer::preset(Platform::Telegram)
        .rate_limit(|rl| {
            rl.per_second(20)
                .burst(20)
                .max_wait(Duration::from_secs(60))
        })
        .cooldown(|c| c.wait(Duration::from_secs(60)))
        .retry(|r| r.max_attempts(20).max_delay(Duration::from_secs(60)))
        .build()
        .unwrap();
    let client = ServiceBuilder::new()
        .layer(stack.clone())
        .service(bot.router());
    let start = tokio::time::Instant::now();

    let mut senders = Vec::new();
    for s in 0..SENDERS {
        let client = client.clone();
        senders.push(tokio::spawn(async move {
            let mut statuses = Vec::new();
            for m in 0..MESSAGES_EACH {
                let req = json_request(
                    Method::POST,
                    "http://api.telegram.test/bot123:secret/sendMessage",
                    &json!({"chat_id": s, "text": format!("s{s}-m{m}")}),
                )
                .unwrap();
                let res = client.clone().oneshot(req).await.expect("delivered");
                statuses.push(res.status());
            }
            statuses
        }));
        tokio::task::yield_now().await;
    }
    for sender in senders {
        let statuses = tokio::time::timeout(Duration::from_secs(3600), sender)
            .await
            .expect("senders finish")
            .unwrap();
        assert!(
            statuses.iter().all(|s| *s == StatusCode::OK),
            "{statuses:?}"
        );
    }

    // Zero calls reached the upstream during a penalty.
    assert_eq!(bot.calls_during_penalty(), 0);
    // Every message was delivered, exactly once.
    let mut delivered: BTreeMap<String, usize> = BTreeMap::new();
    for d in bot.delivered() {
        *delivered.entry(d.text).or_default() += 1;
    }
    assert_eq!(delivered.len(), SENDERS * MESSAGES_EACH);
    assert!(delivered.values().all(|n| *n == 1), "{delivered:?}");

    // The stack did hit the real limit (that is what this test is about), and each time
    // it backed off as one: one 429 per penalty, each penalty the server's 5 s, never
    // doubled. 64 messages at 5 per penalty cycle take 12 cycles.
    let hits = bot.hits();
    let limited = hits.times_of(ratewise::testing::Outcome::RateLimited);
    assert!(!limited.is_empty());
    for pair in limited.windows(2) {
        assert!(pair[1] - pair[0] >= Duration::from_secs(5), "{limited:?}");
    }
    let elapsed = start.elapsed();
    assert!(
        elapsed <= Duration::from_secs(5 * 13),
        "penalties were escalated: took {elapsed:?}"
    );
    let stats = stack.stats();
    assert!(stats.cooldown.cooldowns_started >= 1);
    assert!(stats.retry.retries() >= 1);
}

/// The control for the test above: the same storm through a stack without the cooldown
/// (each request retries on its own, as in the incident) does call the upstream during
/// its penalties, so the assertion above is not vacuous.
#[tokio::test(start_paused = true)]
async fn telegram_penalty_without_the_cooldown_senders_call_during_the_penalty() {
    let bot = TelegramBot::new()
        .limit(5)
        .window(Duration::from_secs(1))
        .penalty(Duration::from_secs(5));
    let client = ServiceBuilder::new()
        .layer(
            RetryLayer::builder()
                .max_attempts(4)
                .max_delay(Duration::from_secs(60))
                .build()
                .unwrap(),
        )
        .layer(ClassifyLayer::new(presets::telegram()))
        .service(bot.router());
    let mut senders = Vec::new();
    for s in 0..SENDERS {
        let client = client.clone();
        senders.push(tokio::spawn(async move {
            let req = json_request(
                Method::POST,
                "http://api.telegram.test/bot123:secret/sendMessage",
                &json!({"chat_id": s, "text": format!("s{s}")}),
            )
            .unwrap();
            client.oneshot(req).await.map(|r| r.status()).ok()
        }));
    }
    for sender in senders {
        tokio::time::timeout(Duration::from_secs(3600), sender)
            .await
            .expect("senders finish")
            .unwrap();
    }
    assert!(bot.calls_during_penalty() > 0);
}

#[test]
fn stack_config_errors_name_the_layer_and_the_field() {
    let err = ClientStackLayer::preset(Platform::Glm)
        .rate_limit(|rl| rl.burst(0))
        .build()
        .unwrap_err();
    assert!(matches!(err, StackConfigError::RateLimit(_)));
    let msg = err.to_string();
    assert!(msg.contains("rate_limit") && msg.contains("burst"), "{msg}");

    let err = ClientStackLayer::builder()
        .retry(|r| r.max_attempts(0))
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("retry"), "{err}");
    assert!(err.to_string().contains("attempts"), "{err}");

    let err = ClientStackLayer::builder().body_cap(0).build().unwrap_err();
    assert!(err.to_string().contains("body_cap"), "{err}");

    for p in [
        Platform::Qq,
        Platform::DingTalk,
        Platform::Telegram,
        Platform::Glm,
        Platform::OpenAi,
    ] {
        ClientStackLayer::preset(p)
            .build()
            .expect("every preset builds");
    }
}

/// The presets fit the platforms' fixed windows: GCRA lets `burst + rate × window`
/// through in any window, so a burst equal to the cap would let twice the cap through in
/// the first second. 60 concurrent card edits through the DingTalk preset against a
/// 20-per-second tenant cap, and 90 messages through the Telegram preset against a
/// 30-per-second bot, meet no rate limit at all.
#[tokio::test(start_paused = true)]
async fn windowed_presets_stay_under_the_platform_cap() {
    use ratewise::testing::{DingTalkCards, Outcome};

    let cards = DingTalkCards::new();
    let stack = ClientStackLayer::preset(Platform::DingTalk)
        .rate_limit(|rl| rl.max_wait(Duration::from_secs(10)))
        .build()
        .unwrap();
    let client = ServiceBuilder::new().layer(stack).service(cards.router());
    let mut edits = Vec::new();
    for i in 0..60 {
        let req = json_request(
            Method::PUT,
            "http://api.dingtalk.test/v1.0/card/streaming",
            &json!({"outTrackId": format!("card-{}", i % 8), "content": "…", "isFinalize": false}),
        )
        .unwrap();
        edits.push(tokio::spawn(client.clone().oneshot(req)));
    }
    for e in edits {
        assert_eq!(e.await.unwrap().unwrap().status(), StatusCode::OK);
    }
    assert_eq!(cards.hits().count_of(Outcome::RateLimited), 0);
    assert_eq!(cards.hits().served(), 60);

    let bot = TelegramBot::new();
    let stack = ClientStackLayer::preset(Platform::Telegram)
        .build()
        .unwrap();
    let client = ServiceBuilder::new().layer(stack).service(bot.router());
    let mut sends = Vec::new();
    for i in 0..90 {
        let req = json_request(
            Method::POST,
            "http://api.telegram.test/bot123:secret/sendMessage",
            &json!({"chat_id": i, "text": "hi"}),
        )
        .unwrap();
        sends.push(tokio::spawn(client.clone().oneshot(req)));
    }
    for s in sends {
        assert_eq!(s.await.unwrap().unwrap().status(), StatusCode::OK);
    }
    assert_eq!(bot.hits().rate_limited(), 0);
    assert_eq!(bot.delivered().len(), 90);
}
