//! No token reaches a log line or a ratewise error message: user info, Telegram's
//! `/bot<token>/` path segment and `?key=` query values are cut from every logged
//! error text and every default key.
//!
//! Every test runs on tokio's paused clock, on the current thread, capturing the
//! `tracing` events it emits.

mod common;

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::capture;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use ratewise::cache::{CacheStatus, CachedEndpointLayer, StaleReason};
use ratewise::vocabulary::RefusalKind;
use ratewise::{BoxError, CooldownLayer, Refusal, RetryLayer};
use tower::{service_fn, ServiceBuilder, ServiceExt};

/// A Telegram URL with the bot token in the path and a key in the query.
const TELEGRAM: &str = "https://api.telegram.org/bot123:SECRET/sendMessage?key=SECRET";

fn get(uri: &str) -> Request<Empty<Bytes>> {
    Request::get(uri).body(Empty::new()).unwrap()
}

fn answer(status: u16, retry_after: Option<&str>, body: &'static str) -> Response<Full<Bytes>> {
    let mut res = Response::builder().status(status);
    if let Some(wait) = retry_after {
        res = res.header(http::header::RETRY_AFTER, wait);
    }
    res.body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap()
}

/// The captured event lines, after checking that none of them contains `SECRET`.
fn events_without_secret() -> Vec<String> {
    let events = capture::events();
    for line in &events {
        assert!(!line.contains("SECRET"), "a secret reached the log: {line}");
    }
    events
}

/// The error a reqwest-style client gives: its Display names the full URL.
fn client_error() -> BoxError {
    Box::new(std::io::Error::other(format!(
        "error sending request for url ({TELEGRAM})"
    )))
}

#[tokio::test(start_paused = true)]
async fn retry_logs_a_failing_call_without_its_url_secrets() {
    capture::start();
    let calls = Arc::new(AtomicUsize::new(0));
    let upstream = service_fn({
        let calls = calls.clone();
        move |_req: Request<Empty<Bytes>>| {
            calls.fetch_add(1, Ordering::SeqCst);
            async { Err::<Response<Full<Bytes>>, BoxError>(client_error()) }
        }
    });
    let svc = ServiceBuilder::new()
        .layer(
            RetryLayer::builder()
                .max_attempts(2)
                .schedule([Duration::from_secs(1)])
                .build()
                .unwrap(),
        )
        .service(upstream);

    let err = svc.oneshot(get(TELEGRAM)).await.unwrap_err();
    assert!(
        err.to_string().contains("bot123:SECRET"),
        "the caller gets its own error"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 2, "one retry, then give-up");

    let events = events_without_secret();
    let retried: Vec<_> = events
        .iter()
        .filter(|l| l.contains("retry: retrying"))
        .collect();
    let gave_up: Vec<_> = events
        .iter()
        .filter(|l| l.contains("retry: giving up"))
        .collect();
    assert_eq!((retried.len(), gave_up.len()), (1, 1), "{events:#?}");
    for line in retried.iter().chain(&gave_up) {
        assert!(
            line.contains("error sending request for url (https://api.telegram.org/[redacted])"),
            "the error is logged, redacted: {line}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn cache_key_and_refusal_carry_no_token() {
    capture::start();
    let calls = Arc::new(AtomicUsize::new(0));
    let upstream = service_fn({
        let calls = calls.clone();
        move |_req: Request<Empty<Bytes>>| {
            calls.fetch_add(1, Ordering::SeqCst);
            async { Ok::<_, Infallible>(answer(429, Some("30"), "slow down")) }
        }
    });
    let svc = ServiceBuilder::new()
        .layer(
            RetryLayer::builder()
                .max_attempts(3)
                .max_delay(Duration::from_secs(20))
                .build()
                .unwrap(),
        )
        .layer(CachedEndpointLayer::new())
        .service(upstream);

    // The upstream's 429 (wait 30 s, over max_delay 20 s): the cache cools the key down,
    // the retry gives up and the caller gets the 429.
    let res = svc.clone().oneshot(get(TELEGRAM)).await.unwrap();
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    // Within the cooldown, nothing cached: the cache refuses with its own error, which
    // names the key; the retry logs it as it gives up.
    let err = svc.clone().oneshot(get(TELEGRAM)).await.unwrap_err();
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    let limited = err
        .downcast_ref::<Refusal>()
        .filter(|r| matches!(r.kind(), RefusalKind::EndpointLimited))
        .expect("EndpointLimited");
    let shown = limited.to_string();
    assert!(
        !shown.contains("SECRET") && !shown.contains("123"),
        "{shown}"
    );
    assert!(
        limited
            .key()
            .unwrap()
            .as_str()
            .starts_with("GET api.telegram.org/***/sendMessage #"),
        "{shown}"
    );

    let events = events_without_secret();
    let keyed: Vec<_> = events
        .iter()
        .filter(|l| l.contains("api.telegram.org/***/sendMessage #"))
        .collect();
    assert!(
        keyed.iter().any(|l| l.contains("cooling down")),
        "the cache logged its cooldown with the key: {events:#?}"
    );
    assert!(
        keyed.iter().any(|l| l.contains("retry: giving up")),
        "the retry logged the refusal naming the key: {events:#?}"
    );
}

#[tokio::test(start_paused = true)]
async fn cache_logs_a_failed_refresh_without_its_url_secrets() {
    capture::start();
    let calls = Arc::new(AtomicUsize::new(0));
    let upstream = service_fn({
        let calls = calls.clone();
        move |_req: Request<Empty<Bytes>>| {
            let n = calls.fetch_add(1, Ordering::SeqCst);
            async move {
                if n == 0 {
                    Ok(answer(200, None, "gateway"))
                } else {
                    Err(client_error())
                }
            }
        }
    });
    let layer = CachedEndpointLayer::new();
    let handle = layer.handle();
    let svc = ServiceBuilder::new().layer(layer).service(upstream);

    let res = svc.clone().oneshot(get(TELEGRAM)).await.unwrap();
    assert_eq!(CacheStatus::of(&res), Some(CacheStatus::Miss));
    assert!(handle.invalidate(ratewise::key::MethodUri::key_for(
        &http::Method::GET,
        &TELEGRAM.parse().unwrap()
    )));
    // The refresh fails with a client error naming the URL: the stale entry is served
    // and the failure logged, redacted.
    let res = svc.clone().oneshot(get(TELEGRAM)).await.unwrap();
    assert_eq!(
        CacheStatus::of(&res),
        Some(CacheStatus::Stale {
            reason: StaleReason::Error
        })
    );
    assert_eq!(
        res.into_body().collect().await.unwrap().to_bytes(),
        "gateway"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 2);

    let events = events_without_secret();
    assert!(
        events.iter().any(
            |l| l.contains("served stale") && l.contains("https://api.telegram.org/[redacted]")
        ),
        "{events:#?}"
    );
}

#[tokio::test(start_paused = true)]
async fn cooldown_key_drops_user_info() {
    capture::start();
    let upstream = service_fn(|_req: Request<Empty<Bytes>>| async {
        Ok::<_, Infallible>(answer(429, Some("10"), "slow down"))
    });
    let svc = ServiceBuilder::new()
        .layer(CooldownLayer::builder().fail_fast().build().unwrap())
        .service(upstream);
    let uri = "https://user:SECRET@api.example.com:8443/v1/chat";

    let res = svc.clone().oneshot(get(uri)).await.unwrap();
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    let err = svc.clone().oneshot(get(uri)).await.unwrap_err();
    let cooling = err
        .downcast_ref::<Refusal>()
        .filter(|r| matches!(r.kind(), RefusalKind::CoolingDown | RefusalKind::Probing))
        .expect("CoolingDown");
    assert_eq!(cooling.key().unwrap().as_str(), "api.example.com:8443");
    assert!(!cooling.to_string().contains("SECRET"), "{cooling}");

    let events = events_without_secret();
    assert!(
        events
            .iter()
            .any(|l| l.contains("cooldown started") && l.contains("api.example.com:8443")),
        "{events:#?}"
    );
}
