//! The standard client stack (`ClientStackLayer`) against in-process platform mocks, on
//! tokio's paused clock.
#![cfg(feature = "testing")]

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use http::{Method, Request, Response, StatusCode};
use ratewise::{
    classify::Preset,
    cooldown::KeyState,
    stack::{ClientStackLayer, Platform},
    testing::{json_request, TelegramBot},
    vocabulary::{LayerKind, RefusalKind},
    BoxError, ClassifyLayer, CooldownLayer, RateLimitLayer, Refusal, RetryLayer,
};
use serde_json::json;
use tokio::time::Instant;
use tower::{service_fn, Service, ServiceBuilder, ServiceExt};

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
        // A patient caller: the preset's 60 s deadline would give up on the messages
        // queued behind a dozen penalties.
        .retry(|r| {
            r.max_attempts(20)
                .max_delay(Duration::from_secs(60))
                .deadline(Duration::from_secs(600))
        })
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
    assert!(stats.retry.retries >= 1);
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
        .layer(ClassifyLayer::new(Preset::telegram()))
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
    assert_eq!(err.layer(), LayerKind::RateLimit);
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

/// What reached the upstream: (authority, time since the test's start), in call order.
type Calls = Arc<Mutex<Vec<(String, Duration)>>>;

/// An upstream whose first call is answered `delay` later with `429 Retry-After:
/// retry_after`, and every other call at once with 200. It records every call.
fn penalising_upstream(
    start: Instant,
    delay: Duration,
    retry_after: u64,
) -> (
    Calls,
    impl Service<Request<String>, Response = Response<String>, Error = BoxError, Future: Send>
        + Clone
        + Send
        + 'static,
) {
    let calls: Calls = Arc::default();
    let log = calls.clone();
    let svc = service_fn(move |req: Request<String>| {
        let host = req.uri().host().unwrap_or_default().to_owned();
        let first = {
            let mut log = log.lock().unwrap();
            log.push((host, start.elapsed()));
            log.len() == 1
        };
        async move {
            let res = if first {
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                Response::builder()
                    .status(StatusCode::TOO_MANY_REQUESTS)
                    .header("retry-after", retry_after)
                    .body(String::new())?
            } else {
                Response::new(String::from("ok"))
            };
            Ok::<_, BoxError>(res)
        }
    });
    (calls, svc)
}

fn to(host: &str) -> Request<String> {
    Request::post(format!("http://{host}/send"))
        .body(String::from("hi"))
        .unwrap()
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

/// The bug: a request that passed the cooldown while its key was open and then waited in
/// the rate limiter's queue was sent once its cell came, even though another request's
/// 429 had started a cooldown meanwhile, so it landed inside the server's penalty
/// (Telegram doubles the penalty on every such call). In-process upstreams that answer
/// in the same poll hid it; an upstream that takes 100 ms to send its 429 shows it.
///
/// The standard stack, rate limit 1/s burst 1: four requests at t = 0. The first goes
/// and gets `429 Retry-After: 10` at 0.1 s; the other three passed the cooldown before
/// that and queue in the limiter. At 1 s, when the first of them would get its cell,
/// all three are stopped by the cooldown's gate without taking a cell, and the retry
/// waits out the cooldown. At 10.1 s exactly one probe goes, then the rest at the
/// limiter's pace.
#[tokio::test(start_paused = true)]
async fn requests_queued_in_the_rate_limiter_do_not_go_out_during_a_cooldown() {
    let start = Instant::now();
    let (calls, upstream) = penalising_upstream(start, Duration::from_millis(100), 10);
    let stack = ClientStackLayer::builder()
        .rate_limit(|rl| rl.per_second(1).burst(1).max_wait(secs(30.0)))
        .cooldown(|c| c.wait(secs(30.0)))
        .build()
        .unwrap();
    let client = ServiceBuilder::new().layer(stack.clone()).service(upstream);

    let mut tasks = Vec::new();
    for _ in 0..4 {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let res = client.oneshot(to("api.test")).await;
            (res.map(|r| r.status()).ok(), start.elapsed())
        }));
        tokio::task::yield_now().await;
    }
    let mut outcomes = Vec::new();
    for t in tasks {
        outcomes.push(t.await.unwrap());
    }

    let times: Vec<Duration> = calls.lock().unwrap().iter().map(|(_, t)| *t).collect();
    // Zero upstream calls during the cooldown [0.1 s, 10.1 s): the three queued requests
    // did not go out at 1, 2 and 3 s.
    assert!(
        times.iter().all(|t| *t < secs(0.1) || *t >= secs(10.1)),
        "calls during the cooldown: {times:?}"
    );
    // The 429, one probe at expiry, then one per second.
    assert_eq!(times, [0.0, 10.1, 11.1, 12.1, 13.1].map(secs));
    // Every caller got its answer, through the retry.
    outcomes.sort_by_key(|(_, at)| *at);
    assert_eq!(
        outcomes,
        [10.1, 11.1, 12.1, 13.1].map(|t| (Some(StatusCode::OK), secs(t)))
    );

    let stats = stack.stats();
    // The held-back requests took no cell: every cell taken went upstream.
    assert_eq!(stats.rate_limit.admitted, 5);
    assert_eq!(stats.rate_limit.rejected, 0);
    // The cooldown refused them as its own, without counting a new signal.
    assert_eq!(stats.cooldown.cooldowns_started, 1);
    assert_eq!(stats.cooldown.cooldowns_extended, 0);
    assert_eq!(stats.cooldown.rejected, 3);
    assert_eq!(stats.cooldown.probes, 1);
    // One retry after the 429; the three held-back requests were sent again without
    // counting an attempt (nothing of theirs had reached the upstream).
    assert_eq!(stats.retry.retries, 1);
    assert_eq!(stats.retry.held, 3);
}

/// The same race without a retry layer: what the caller of a held-back request gets, and
/// proof that it took no cell. Behind the three requests for the cooling key, a request
/// for another key waits in the same (global) line: it gets the cell at 1 s that the
/// first held-back request would have taken.
#[tokio::test(start_paused = true)]
async fn a_request_held_back_in_the_rate_limiter_fails_with_cooling_down_and_takes_no_cell() {
    let start = Instant::now();
    let (calls, upstream) = penalising_upstream(start, Duration::from_millis(100), 10);
    let cooldown = CooldownLayer::builder().wait(secs(30.0)).build().unwrap();
    let handle = cooldown.handle();
    let limit = RateLimitLayer::builder()
        .per_second(1)
        .burst(1)
        .max_wait(secs(30.0))
        .build()
        .unwrap();
    let client = ServiceBuilder::new()
        .layer(cooldown)
        .layer(limit.clone())
        .service(upstream);

    let mut tasks = Vec::new();
    for host in ["a.test", "a.test", "a.test", "a.test", "b.test"] {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let res = client.oneshot(to(host)).await;
            (res, start.elapsed())
        }));
        tokio::task::yield_now().await;
    }
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.unwrap());
    }

    // The first gets the 429 itself.
    let (first, at) = &results[0];
    assert_eq!(
        first.as_ref().unwrap().status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(*at, secs(0.1));
    // The three queued for the cooling key fail together at 1 s, when the first of them
    // reached the head of the line: the cooldown's typed error, naming the key and the
    // time left.
    for (res, at) in &results[1..4] {
        let err = res.as_ref().unwrap_err();
        let cooling = err
            .downcast_ref::<Refusal>()
            .filter(|r| matches!(r.kind(), RefusalKind::CoolingDown | RefusalKind::Probing))
            .expect("a CoolingDown error");
        assert_eq!(cooling.key().unwrap().as_str(), "a.test");
        assert_eq!(cooling.retry_after().unwrap(), secs(9.1));
        assert!(err.to_string().contains("not sent"), "{err}");
        assert_eq!(*at, secs(1.0));
    }
    // The other key's request got the 1 s cell: the held-back requests took none.
    let (other, at) = &results[4];
    assert_eq!(other.as_ref().unwrap().status(), StatusCode::OK);
    assert_eq!(*at, secs(1.0));
    assert_eq!(
        *calls.lock().unwrap(),
        [
            ("a.test".to_owned(), secs(0.0)),
            ("b.test".to_owned(), secs(1.0))
        ]
    );
    assert_eq!(limit.stats().admitted, 2);
    assert_eq!(limit.stats().rejected, 0);
    assert_eq!(limit.limiter().waiting(), 0);

    // Not a new signal: the cooldown is the first 429's, neither counted again nor
    // extended.
    assert_eq!(
        handle.state("a.test"),
        KeyState::Cooling {
            until: start + secs(10.1),
            n: 1
        }
    );
    let stats = handle.stats();
    assert_eq!(stats.cooldowns_started, 1);
    assert_eq!(stats.cooldowns_extended, 0);
    assert_eq!(
        (stats.met_cooldown, stats.rejected, stats.waited),
        (3, 3, 0)
    );

    // At expiry, the next request is the probe and goes at once.
    tokio::time::sleep_until(start + secs(10.1)).await;
    let res = client.clone().oneshot(to("a.test")).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(calls.lock().unwrap().last().unwrap().1, secs(10.1));
    assert_eq!(handle.stats().probes, 1);
    assert_eq!(handle.state("a.test"), KeyState::Ok);
}

/// The half-open probe carries its own gate through the rate limiter: when it has to
/// queue there (another key took the cell), it still goes when its cell comes, and the
/// request waiting for its answer follows.
#[tokio::test(start_paused = true)]
async fn the_half_open_probe_queued_in_the_rate_limiter_passes_its_own_gate() {
    let start = Instant::now();
    // The first call gets `429 Retry-After: 5` at once, every other one 200.
    let (calls, upstream) = penalising_upstream(start, Duration::ZERO, 5);
    let cooldown = CooldownLayer::builder().wait(secs(30.0)).build().unwrap();
    let handle = cooldown.handle();
    let client = ServiceBuilder::new()
        .layer(cooldown)
        .layer(
            RateLimitLayer::builder()
                .per_second(1)
                .burst(1)
                .max_wait(secs(30.0))
                .build()
                .unwrap(),
        )
        .service(upstream);

    let res = client.clone().oneshot(to("a.test")).await.unwrap();
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    // Two requests wait out the cooldown (until 5 s).
    tokio::time::sleep_until(start + secs(1.0)).await;
    let waiters: Vec<_> = (0..2)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move {
                let res = client.oneshot(to("a.test")).await;
                (res.map(|r| r.status()).ok(), start.elapsed())
            })
        })
        .collect();
    // Another key takes the cell at 4.5 s: the next one is at 5.5 s.
    tokio::time::sleep_until(start + secs(4.5)).await;
    client.clone().oneshot(to("b.test")).await.unwrap();

    let mut outcomes = Vec::new();
    for w in waiters {
        outcomes.push(w.await.unwrap());
    }
    outcomes.sort_by_key(|(_, at)| *at);
    assert_eq!(
        outcomes,
        [5.5, 6.5].map(|t| (Some(StatusCode::OK), secs(t)))
    );
    let calls = calls.lock().unwrap().clone();
    assert_eq!(
        calls,
        [
            ("a.test", 0.0),
            ("b.test", 4.5),
            ("a.test", 5.5),
            ("a.test", 6.5)
        ]
        .map(|(h, t)| (h.to_owned(), secs(t)))
    );
    let stats = handle.stats();
    assert_eq!(stats.probes, 1, "exactly one probe");
    assert_eq!(stats.rejected, 0, "the probe passed its own gate");
    assert_eq!(handle.state("a.test"), KeyState::Ok);
}
