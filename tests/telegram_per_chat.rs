//! Telegram's per-chat limit, not configured: the upstream allows one message per
//! second per chat and penalises the whole bot for a violation (429 `retry_after: 1`,
//! doubled by every call during the penalty). The `Platform::Telegram` preset knows
//! only the global limit; it must still deliver every message, exactly once, without a
//! single call during a penalty, learning the limit from the 429s alone.
//!
//! The same send twice: in-process on tokio's paused clock, and over real sockets on
//! 127.0.0.1 with a hyper-util client.
//!
//! Bug (paused clock): when the half-open probe's 200 opened the key, the requests that
//! had waited out the cooldown were only woken, while the probe's sender ran on and sent
//! its next message, to the same chat, first: 429, one more second of cooldown, and the
//! same sender won the next probe. One message a second; after 63.5 s, 79 of 80
//! delivered, the last sender's first message never sent (the 60 s deadline). The
//! cooldown now lets its waiters go before a request that arrives as the key opens.
#![cfg(feature = "testing")]

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use ratewise::stack::{ClientStackLayer, Platform};
use ratewise::testing::{client, json_request, MockServer, Outcome, TelegramBot};
use ratewise::{outcome, BoxError, Refusal};
use serde_json::json;
use tokio::task::JoinSet;
use tower::{Service, ServiceBuilder, ServiceExt};

/// Concurrent senders.
const SENDERS: usize = 16;
/// Distinct chats; sender `s` writes to chat `s % CHATS`, so two senders share a chat.
const CHATS: usize = 8;
/// Messages each sender sends, one after another.
const MESSAGES_EACH: usize = 5;
/// 80 messages in all, 10 per chat.
const TOTAL: usize = SENDERS * MESSAGES_EACH;

/// The upstream: 30 per second for the bot (generous: the preset keeps under it), and
/// one message per second per chat, which the preset does not know.
fn telegram() -> TelegramBot {
    TelegramBot::new()
        .limit(30)
        .window(Duration::from_secs(1))
        .per_chat(1, Duration::from_secs(1))
}

/// What one message got: its text and the status, or the error.
type Sent = (String, Result<StatusCode, String>);

/// Sends `TOTAL` messages from `SENDERS` concurrent senders through `client`, each
/// sender one message after another; every call is bounded by `per_call`.
async fn send_all<S, ResB>(client: S, url: &str, per_call: Duration) -> Vec<Sent>
where
    S: Service<Request<Full<Bytes>>, Response = Response<ResB>, Error = BoxError>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
    ResB: Send + 'static,
{
    let mut senders = JoinSet::new();
    for s in 0..SENDERS {
        let (client, url) = (client.clone(), url.to_owned());
        senders.spawn(async move {
            let mut sent = Vec::new();
            for m in 0..MESSAGES_EACH {
                let text = format!("s{s}-m{m}");
                let req = json_request(
                    Method::POST,
                    &url,
                    &json!({"chat_id": 1000 + s % CHATS, "text": text}),
                )
                .expect("a valid request");
                let result = match tokio::time::timeout(per_call, client.clone().oneshot(req)).await
                {
                    Err(_) => Err(format!("no answer within {per_call:?}")),
                    Ok(result) => {
                        let verdict = outcome(&result);
                        result.map(|res| res.status()).map_err(|err| {
                            let refusal = Refusal::find(&*err)
                                .map(|r| format!("{:?} by {}", r.kind(), r.layer()));
                            format!("{err} (refusal: {refusal:?}, outcome: {verdict:?})")
                        })
                    }
                };
                sent.push((text, result));
            }
            sent
        });
        tokio::task::yield_now().await;
    }
    let mut all = Vec::new();
    while let Some(done) = senders.join_next().await {
        all.extend(done.expect("a sender panicked"));
    }
    all
}

/// Every message answered 200 to its caller and reached the bot exactly once; no call
/// during a penalty.
fn check(bot: &TelegramBot, sent: &[Sent], total: usize) {
    let failed: Vec<_> = sent
        .iter()
        .filter(|(_, r)| r.as_ref().ok() != Some(&StatusCode::OK))
        .collect();
    let ok = sent.len() - failed.len();
    println!("delivered to the callers: {ok} of {total}");
    assert_eq!(sent.len(), total);
    assert!(failed.is_empty(), "{} lost: {failed:#?}", failed.len());

    let mut delivered: BTreeMap<String, usize> = BTreeMap::new();
    for d in bot.delivered() {
        *delivered.entry(d.text).or_default() += 1;
    }
    assert_eq!(delivered.len(), total, "{delivered:?}");
    assert!(delivered.values().all(|n| *n == 1), "{delivered:?}");
    assert_eq!(bot.calls_during_penalty(), 0, "calls during a penalty");
}

fn report(bot: &TelegramBot, stack: &ClientStackLayer, elapsed: Duration) {
    let hits = bot.hits();
    println!(
        "in {elapsed:?}: {} calls reached the bot, {} served, {} × 429, {} during a penalty",
        hits.count(),
        hits.served(),
        hits.rate_limited(),
        bot.calls_during_penalty()
    );
    println!("429s at {:?}", hits.times_of(Outcome::RateLimited));
    println!("{:#?}", stack.stats());
}

/// Sends every message through `stack` over the in-process mock, on the paused clock;
/// checks that every message was delivered once with no call during a penalty, and
/// returns how long it took.
async fn send_in_process(bot: &TelegramBot, stack: &ClientStackLayer) -> Duration {
    let client = ServiceBuilder::new()
        .layer(stack.clone())
        .service(bot.router());
    let start = tokio::time::Instant::now();
    let sent = tokio::time::timeout(
        Duration::from_secs(600),
        send_all(
            client,
            "http://api.telegram.test/bot123:secret/sendMessage",
            Duration::from_secs(300),
        ),
    )
    .await
    .expect("the senders finish");
    let elapsed = start.elapsed();
    report(bot, stack, elapsed);
    check(bot, &sent, TOTAL);
    elapsed
}

/// Paused clock, in-process: the preset as is, 80 messages to 8 chats from 16 senders.
#[tokio::test(start_paused = true)]
async fn per_chat_limit_not_configured_delivers_every_message() {
    let bot = telegram();
    let stack = ClientStackLayer::preset(Platform::Telegram)
        .build()
        .unwrap();
    let elapsed = send_in_process(&bot, &stack).await;
    // 10 messages per chat at one per second take at least 9 s. Generous: within the
    // preset's 60 s deadline (one message a second, the starved stack, took 64 s).
    assert!(elapsed <= Duration::from_secs(60), "took {elapsed:?}");
}

/// The same over real sockets: the mock on 127.0.0.1, a hyper-util client under the
/// preset stack, the real clock.
#[tokio::test]
async fn per_chat_limit_not_configured_delivers_every_message_over_real_sockets() {
    let bot = telegram();
    let server = MockServer::start(bot.router()).await.unwrap();
    let stack = ClientStackLayer::preset(Platform::Telegram)
        .build()
        .unwrap();
    let client = ServiceBuilder::new().layer(stack.clone()).service(client());
    let url = server.url("/bot123:secret/sendMessage");
    let start = std::time::Instant::now();
    let sent = tokio::time::timeout(
        Duration::from_secs(120),
        send_all(client, &url, Duration::from_secs(90)),
    )
    .await
    .expect("the senders finish");
    let elapsed = start.elapsed();
    report(&bot, &stack, elapsed);
    check(&bot, &sent, TOTAL);
    assert!(elapsed <= Duration::from_secs(120), "took {elapsed:?}");
    server.shutdown().await;
}

/// The per-chat limit configured from the body's `chat_id`: one limit of the preset's
/// layer beside the global one, keyed by `json_field("/chat_id")` (the stack parses each
/// body once per call for it). The same send: every message delivered, not one 429,
/// in at most 10.5 s of paused time (10 messages per chat at one per second take 9 s).
#[tokio::test(start_paused = true)]
async fn per_chat_limit_configured_from_the_body_sends_no_429() {
    use ratewise::key::json_field;
    use ratewise::rate_limit::Limit;

    let bot = telegram();
    let stack = ClientStackLayer::preset(Platform::Telegram)
        .rate_limit(|r| {
            r.limit(
                Limit::per_period(Duration::from_secs(1))
                    .key(json_field("/chat_id"))
                    .margin_percent(1),
            )
        })
        .build()
        .unwrap();
    let elapsed = send_in_process(&bot, &stack).await;
    assert_eq!(
        bot.hits().rate_limited(),
        0,
        "a 429 reached the bot's client"
    );
    assert_eq!(bot.hits().count(), TOTAL, "one call per message");
    assert!(
        elapsed <= Duration::from_millis(10_500),
        "took {elapsed:?} for 10 messages per chat at 1 per second"
    );
}
