//! The shared vocabulary through whole stacks: keys as values (a per-chat key on a
//! preset, a stack with a closure key named in a struct field), stats in one shape,
//! and keys that never reach a log in plain text.
//!
//! Every test runs on tokio's paused clock, on the current thread.

mod common;

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::capture;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use ratewise::cooldown::{Cooldown, KeyState};
use ratewise::key::{Key, RequestRef};
use ratewise::rate_limit::RateLimit;
use ratewise::stack::ClientStack;
use ratewise::{
    BoxError, ClientStackLayer, CooldownLayer, Platform, RateLimitLayer, Refusal, RetryLayer,
};
use tokio::time::Instant;
use tower::{service_fn, util::BoxCloneSyncService, Layer, Service, ServiceExt};

type Body = Full<Bytes>;
type Client = BoxCloneSyncService<Request<Body>, Response<Body>, Infallible>;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// A Telegram-like upstream that records, per chat, when each message arrived (paused
/// clock), and answers a 429 `retry_after` for the chats in `limited`.
fn upstream(seen: Arc<Mutex<Vec<(String, Duration)>>>, limited: &'static [&'static str]) -> Client {
    let start = Instant::now();
    BoxCloneSyncService::new(service_fn(move |req: Request<Body>| {
        let chat = chat_of(&RequestRef::from(&req));
        seen.lock().unwrap().push((chat.clone(), start.elapsed()));
        let res = if limited.contains(&chat.as_str()) {
            Response::builder()
                .status(StatusCode::TOO_MANY_REQUESTS)
                .header("retry-after", "30")
                .body(Body::from(
                    r#"{"ok":false,"error_code":429,"parameters":{"retry_after":30}}"#,
                ))
        } else {
            Response::builder().body(Body::from(r#"{"ok":true}"#))
        };
        async move { Ok::<_, Infallible>(res.unwrap()) }
    }))
}

fn chat_of(req: &RequestRef<'_>) -> String {
    req.headers()
        .get("x-chat-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned()
}

fn send(chat: &str) -> Request<Body> {
    Request::post("http://127.0.0.1:8081/bot1:SECRET/sendMessage")
        .header("x-chat-id", chat)
        .body(Body::from(r#"{"text":"hi"}"#))
        .unwrap()
}

/// The Telegram preset takes a per-chat key for its limiter and its cooldown: each
/// chat has its own 1/s bucket, and a 429 for one chat cools that chat only.
#[tokio::test(start_paused = true)]
async fn telegram_preset_with_a_per_chat_key_limits_and_cools_each_chat_alone() {
    let layer = ClientStackLayer::preset(Platform::Telegram)
        .rate_limit(|rl| rl.per_second(1).burst(1).key(chat_of))
        .cooldown(|c| c.key(chat_of).fail_fast())
        // A 5 s budget: the banned chat's 30 s cooldown cannot fit, so its caller gets
        // the typed refusal at once.
        .retry(|r| r.max_attempts(1).deadline(Duration::from_secs(5)))
        .build()
        .unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let bot = layer.layer(upstream(seen.clone(), &["banned"]));

    // Two messages to chat "a" and one to chat "b", sent together.
    let (a1, a2, b1) = tokio::join!(
        bot.clone().oneshot(send("a")),
        bot.clone().oneshot(send("a")),
        bot.clone().oneshot(send("b")),
    );
    for res in [a1, a2, b1] {
        assert_eq!(res.unwrap().status(), StatusCode::OK);
    }
    let mut got = seen.lock().unwrap().clone();
    got.sort();
    assert_eq!(
        got,
        [
            ("a".to_owned(), ms(0)),
            // One per second, plus the preset's 1 % margin.
            ("a".to_owned(), ms(1010)),
            ("b".to_owned(), ms(0))
        ],
        "chat a waits for its own bucket; chat b does not wait behind it"
    );

    // A 429 for chat "banned" cools that chat, not the others.
    let res = bot.clone().oneshot(send("banned")).await.unwrap();
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    let cooldown = layer.cooldown_layer().handle();
    assert!(matches!(cooldown.state("banned"), KeyState::Cooling { .. }));
    assert_eq!(cooldown.state("b"), KeyState::Ok);
    let before = Instant::now();
    let err = bot.clone().oneshot(send("banned")).await.unwrap_err();
    assert_eq!(Instant::now(), before, "refused at once");
    let refusal = Refusal::find(&*err).expect("a typed refusal");
    assert_eq!(refusal.key().map(Key::as_str), Some("banned"));
    assert_eq!(refusal.retry_after(), Some(Duration::from_secs(30)));
    assert_eq!(
        bot.clone().oneshot(send("b")).await.unwrap().status(),
        StatusCode::OK
    );
    assert_eq!(seen.lock().unwrap().len(), 5, "the refused call never left");
}

/// A stack whose layers are keyed by closures is an ordinary, nameable type.
struct Bot {
    /// The hand-made stack, spelled out.
    by_hand: ratewise::retry::Retry<Cooldown<RateLimit<Client>>>,
    /// The preset stack, through its alias.
    preset: ClientStack<Client>,
}

#[tokio::test(start_paused = true)]
async fn a_stack_with_closure_keys_is_stored_in_a_named_struct_field() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let client = upstream(seen.clone(), &[]);
    let by_hand = RetryLayer::builder().build().unwrap().layer(
        CooldownLayer::builder()
            .key(chat_of)
            .build()
            .unwrap()
            .layer(
                RateLimitLayer::builder()
                    .per_second(1)
                    .key(|req: &RequestRef<'_>| chat_of(req))
                    .build()
                    .unwrap()
                    .layer(client.clone()),
            ),
    );
    let preset = ClientStackLayer::preset(Platform::Telegram)
        .rate_limit(|rl| rl.key(chat_of))
        .build()
        .unwrap()
        .layer(client);
    let bot = Bot { by_hand, preset };
    let res = bot.by_hand.oneshot(send("a")).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let res = bot.preset.oneshot(send("a")).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(seen.lock().unwrap().len(), 2);
}

/// Reject mode keyed by a raw API-key header (the worst case): 1,000 rejections leave
/// no raw key in the log, and only a handful of lines at INFO or louder.
#[tokio::test(start_paused = true)]
async fn reject_mode_logs_1000_rejections_without_the_api_key_and_only_a_few_loud_lines() {
    const API_KEY: &str = "sk-live-4f9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c";
    capture::start();
    let ok = service_fn(|_req: Request<Body>| async {
        Ok::<_, Infallible>(Response::new(Body::from("ok")))
    });
    let mut server = RateLimitLayer::builder()
        .per_second(1)
        .burst(1)
        .key(|req: &RequestRef<'_>| {
            req.headers()
                .get("x-api-key")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned()
        })
        .reject()
        .build()
        .unwrap()
        .layer(ok);
    let mut statuses = Vec::new();
    for _ in 0..1001 {
        let req = Request::get("http://127.0.0.1/v1/chat")
            .header("x-api-key", API_KEY)
            .body(Body::default())
            .unwrap();
        let res = server.ready().await.unwrap().call(req).await.unwrap();
        statuses.push(res.status());
    }
    assert_eq!(statuses[0], StatusCode::OK);
    assert_eq!(
        statuses
            .iter()
            .filter(|s| **s == StatusCode::TOO_MANY_REQUESTS)
            .count(),
        1000
    );

    let events = capture::captured();
    for e in &events {
        assert!(
            !e.line.contains("4f9a8b7c6d5e"),
            "a raw key reached the log: {}",
            e.line
        );
    }
    let loud = events
        .iter()
        .filter(|e| {
            ["INFO", "WARN", "ERROR"]
                .iter()
                .any(|l| e.line.starts_with(l))
        })
        .count();
    assert!(loud >= 1, "the refusals are summarised at least once");
    assert!(
        loud <= 3,
        "{loud} lines at INFO or louder for 1,000 rejections"
    );
    assert!(
        events
            .iter()
            .filter(|e| e.line.starts_with("DEBUG"))
            .count()
            >= 1000,
        "each rejection is logged at DEBUG"
    );
}

/// Every layer reports with the same method, `stats()`, a snapshot that serializes to
/// JSON with durations in milliseconds and instants as "in N ms".
#[cfg(feature = "serde")]
#[tokio::test(start_paused = true)]
async fn every_layers_stats_serialize_to_json_through_one_method_name() {
    use ratewise::{CachedEndpointLayer, FreshClientLayer, Pool};
    let seen = Arc::new(Mutex::new(Vec::new()));
    let layer = ClientStackLayer::preset(Platform::Telegram)
        .cooldown(|c| c.fail_fast())
        .retry(|r| r.max_attempts(1))
        .build()
        .unwrap();
    let bot = layer.layer(upstream(seen.clone(), &["banned"]));
    bot.clone().oneshot(send("a")).await.unwrap();
    bot.clone().oneshot(send("banned")).await.unwrap();

    let json = |v: serde_json::Value| v;
    let stack = json(serde_json::to_value(layer.stats()).unwrap());
    assert_eq!(stack["rate_limit"]["admitted"], 2);
    assert_eq!(stack["rate_limit"]["max_wait_ms"], 0);
    assert_eq!(stack["cooldown"]["cooldowns_started"], 1);
    assert_eq!(stack["retry"]["calls"], 2);
    for v in [
        serde_json::to_value(layer.rate_limit_layer().stats()).unwrap(),
        serde_json::to_value(layer.cooldown_layer().stats()).unwrap(),
        serde_json::to_value(layer.retry_layer().stats()).unwrap(),
        serde_json::to_value(CachedEndpointLayer::new().handle().stats()).unwrap(),
        serde_json::to_value(FreshClientLayer::new().stats()).unwrap(),
    ] {
        assert!(v.is_object(), "{v}");
    }

    let pool: Pool<Body, Body> = Pool::builder()
        .primary("glm", upstream(seen.clone(), &["banned"]))
        .build()
        .unwrap();
    pool.clone().oneshot(send("banned")).await.unwrap();
    let backends = serde_json::to_value(pool.handle().backends()).unwrap();
    assert_eq!(backends[0]["name"], "glm");
    assert_eq!(backends[0]["state"]["state"], "cooling");
    assert_eq!(backends[0]["state"]["until_in_ms"], 30_000);
    let totals = serde_json::to_value(pool.handle().totals()).unwrap();
    assert_eq!(totals["calls"], 1);
}

/// The one downcast: whichever layer refused, `Refusal::find` gets it, and
/// `verdict_of_error` reads it.
#[tokio::test(start_paused = true)]
async fn a_refusal_from_any_layer_is_found_by_one_downcast() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let limiter = RateLimitLayer::builder()
        .per_minute(1)
        .max_wait(ms(100))
        .build()
        .unwrap()
        .layer(upstream(seen, &[]));
    limiter.clone().oneshot(send("a")).await.unwrap();
    let start = Instant::now();
    let err: BoxError = limiter.oneshot(send("a")).await.unwrap_err();
    assert_eq!(Instant::now(), start, "refused at once, without sleeping");
    let refusal = Refusal::find(&*err).unwrap();
    assert_eq!(refusal.layer(), ratewise::vocabulary::LayerKind::RateLimit);
    assert_eq!(refusal.retry_after(), Some(Duration::from_secs(60)));
    assert!(!refusal.reached_upstream());
    assert_eq!(
        ratewise::verdict_of_error(&*err),
        ratewise::Verdict::rate_limited(Some(Duration::from_secs(60)))
    );
}
