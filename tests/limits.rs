//! Several limits in one layer, and window quotas, through the full client stack, on
//! tokio's paused clock: DingTalk at its real cap (tenant and card together), and a
//! sliding window matched against an upstream that counts the same way.

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use ratewise::key::RequestRef;
use ratewise::rate_limit::Limit;
use ratewise::testing::{json_request, DingTalkCards};
use ratewise::{ClientStackLayer, Platform};
use serde_json::json;
use tokio::time::Instant;
use tower::{service_fn, Layer, ServiceExt};

fn card_of(req: &RequestRef<'_>) -> String {
    req.headers()
        .get("x-card")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned()
}

/// DingTalk at its real cap: one layer holds the tenant's 20 per second and each
/// card's one edit per 800 ms. 400 edits to 16 cards (each card streamed by its own
/// task) against the mock's 20 QPS cap: no 403, no two edits of a card closer than
/// 800 ms on the mock's clock, and the whole run within 10 % of the ideal 20 s.
#[tokio::test(start_paused = true)]
async fn dingtalk_tenant_and_card_limits_in_one_layer_run_at_the_real_cap() {
    const CARDS: usize = 16;
    const EDITS: usize = 25;
    let mock = DingTalkCards::new();
    let stack = ClientStackLayer::preset(Platform::DingTalk)
        .rate_limit(|r| {
            r.per_second(20)
                .burst(1)
                .max_wait(Duration::from_secs(30))
                .limit(Limit::per_period(Duration::from_millis(800)).key(card_of))
        })
        .build()
        .unwrap();
    let client = stack.layer(mock.router());
    let start = Instant::now();

    let mut tasks = Vec::new();
    for c in 0..CARDS {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let card = format!("card-{c}");
            let mut statuses = Vec::new();
            for e in 0..EDITS {
                let mut req = json_request(
                    Method::PUT,
                    "/v1.0/card/streaming",
                    &json!({"outTrackId": card, "content": format!("{e}"), "isFinalize": e + 1 == EDITS}),
                )
                .unwrap();
                req.headers_mut()
                    .insert("x-card", card.parse().unwrap());
                let res = client.clone().oneshot(req).await.expect("edited");
                statuses.push(res.status());
            }
            statuses
        }));
    }
    for task in tasks {
        let statuses = tokio::time::timeout(Duration::from_secs(600), task)
            .await
            .expect("bounded")
            .unwrap();
        assert!(
            statuses.iter().all(|s| *s == StatusCode::OK),
            "{statuses:?}"
        );
    }
    let elapsed = start.elapsed();

    let edits = mock.edits();
    let refused: Vec<_> = edits
        .iter()
        .filter(|e| e.status != StatusCode::OK)
        .collect();
    assert!(refused.is_empty(), "refused by the mock: {refused:?}");
    assert_eq!(edits.len(), CARDS * EDITS, "every edit sent once");
    assert!(
        edits.iter().all(|e| e.status == StatusCode::OK),
        "a 403 reached a card"
    );
    let mut per_card: BTreeMap<String, Vec<Duration>> = BTreeMap::new();
    for e in &edits {
        per_card
            .entry(e.card_id.clone().unwrap())
            .or_default()
            .push(e.at);
    }
    let violations = per_card
        .values()
        .flat_map(|times| times.windows(2).map(|w| w[1] - w[0]))
        .filter(|gap| *gap < Duration::from_millis(800))
        .count();
    assert_eq!(
        violations, 0,
        "per-card gaps under 800 ms on the mock's clock"
    );
    // Ideal: 400 edits at the tenant's 20 per second (16 cards at 1 per 800 ms is the
    // same 20 per second): the last edit at 19.95 s.
    assert!(
        elapsed <= Duration::from_millis(21_945),
        "the tenant bucket idled: {elapsed:?} for 400 edits (ideal 19.95 s)"
    );
}

/// A sliding window quota against an upstream with the same semantics: 400 calls at
/// 100 per any 5 s finish in about 15 s, with no rejection.
#[tokio::test(start_paused = true)]
async fn a_sliding_window_quota_matches_the_upstream_400_calls_in_15_s() {
    const WINDOW: Duration = Duration::from_secs(5);
    let seen: Arc<Mutex<VecDeque<Instant>>> = Arc::default();
    let rejected = Arc::new(Mutex::new(0usize));
    let upstream = service_fn({
        let (seen, rejected) = (seen.clone(), rejected.clone());
        move |_req: Request<Full<Bytes>>| {
            // At most 100 calls in any window of 5 s: a call at `t` counts in [t, t + 5 s).
            let now = Instant::now();
            let mut seen = seen.lock().unwrap();
            while seen.front().is_some_and(|t| *t + WINDOW <= now) {
                seen.pop_front();
            }
            let status = if seen.len() < 100 {
                seen.push_back(now);
                StatusCode::OK
            } else {
                *rejected.lock().unwrap() += 1;
                StatusCode::TOO_MANY_REQUESTS
            };
            let res = Response::builder()
                .status(status)
                .body(Full::new(Bytes::new()))
                .unwrap();
            async move { Ok::<_, Infallible>(res) }
        }
    });
    let stack = ClientStackLayer::builder()
        .rate_limit(|r| {
            r.sliding_window(100, WINDOW)
                .max_wait(Duration::from_secs(60))
        })
        .retry(|r| r.max_attempts(1))
        .build()
        .unwrap();
    let client = stack.layer(upstream);
    let start = Instant::now();
    let calls = (0..400).map(|_| {
        let client = client.clone();
        async move {
            let req = Request::get("http://127.0.0.1:1/v1")
                .body(Full::new(Bytes::new()))
                .unwrap();
            client.oneshot(req).await.map(|r| r.status())
        }
    });
    let statuses = tokio::time::timeout(Duration::from_secs(600), futures_join_all(calls))
        .await
        .expect("bounded");
    assert!(statuses.iter().all(|s| matches!(s, Ok(StatusCode::OK))));
    assert_eq!(*rejected.lock().unwrap(), 0);
    let elapsed = start.elapsed();
    assert!(
        elapsed <= Duration::from_millis(15_500),
        "400 calls at 100 per 5 s took {elapsed:?}"
    );
    assert!(
        elapsed >= Duration::from_secs(15),
        "faster than the quota: {elapsed:?}"
    );
}

/// Bug: a request costing more than an extra limit's burst was checked only against
/// the main limit, so it waited out `max_wait` for room that could never come. It
/// fails at once with the cost refusal.
#[tokio::test(start_paused = true)]
async fn a_cost_above_an_extra_limits_burst_waited_for_room_that_never_comes() {
    use ratewise::vocabulary::RefusalKind;
    use ratewise::Refusal;

    let calls = Arc::new(Mutex::new(0usize));
    let upstream = service_fn({
        let calls = calls.clone();
        move |_req: Request<Full<Bytes>>| {
            *calls.lock().unwrap() += 1;
            async { Ok::<_, Infallible>(Response::new(Full::new(Bytes::new()))) }
        }
    });
    let limited = ratewise::RateLimitLayer::builder()
        .per_second(10)
        .max_wait(Duration::from_secs(5))
        .cost(|_: &RequestRef<'_>| 2)
        .limit(Limit::per_period(Duration::from_millis(800)))
        .build()
        .unwrap()
        .layer(upstream);
    let start = Instant::now();
    let req = Request::get("http://127.0.0.1:1/")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let err = limited.oneshot(req).await.unwrap_err();
    assert_eq!(Instant::now(), start, "refused at once");
    let refusal = Refusal::find(&*err).unwrap();
    assert_eq!(
        refusal.kind(),
        &RefusalKind::CostExceedsBurst { cost: 2, burst: 1 }
    );
    assert_eq!(*calls.lock().unwrap(), 0);
}

/// Bug: a layer built on a shared limiter (`build_with_limiter`) keyed the limiter's
/// other limits by its own main key, so two cards shared one card bucket there.
#[tokio::test(start_paused = true)]
async fn a_layer_on_a_shared_limiter_lost_the_other_limits_keys() {
    let ok = service_fn(|_req: Request<Full<Bytes>>| async {
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::new())))
    });
    let first = ratewise::RateLimitLayer::builder()
        .per_second(20)
        .burst(2)
        .limit(Limit::per_period(Duration::from_millis(800)).key(card_of))
        .build()
        .unwrap();
    let second = ratewise::RateLimitLayer::builder()
        .max_wait(Duration::ZERO)
        .build_with_limiter(first.limiter())
        .unwrap()
        .layer(ok);
    let edit = |card: &str| {
        let mut req = Request::put("http://127.0.0.1:1/v1.0/card/streaming")
            .body(Full::new(Bytes::new()))
            .unwrap();
        req.headers_mut().insert("x-card", card.parse().unwrap());
        req
    };
    // Two cards at the same instant: each has its own card bucket, and the tenant has
    // room for both.
    assert!(second.clone().oneshot(edit("a")).await.is_ok());
    assert!(second.clone().oneshot(edit("b")).await.is_ok());
    // The same card again: its bucket is empty for 800 ms.
    assert!(second.clone().oneshot(edit("a")).await.is_err());
}

/// `join_all` without a dependency: spawn each future on the (current-thread, paused)
/// runtime and await them in order.
async fn futures_join_all<F, T>(futures: impl Iterator<Item = F>) -> Vec<T>
where
    F: std::future::Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}
