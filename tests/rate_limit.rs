//! Behaviour of `RateLimitLayer`, on tokio's paused clock: what reached the upstream,
//! when, and what the caller got.

mod common;

use std::{
    convert::Infallible,
    future::{poll_fn, Future},
    num::NonZeroU32,
    pin::Pin,
    sync::{Arc, Mutex},
    task::Poll,
    time::Duration,
};

use http::{Request, Response, StatusCode};
use ratewise::{
    key::{Key, RequestRef},
    rate_limit::{Quota, RateLimit, RateLimitLayer},
    testing::engine::{limiter as engine_limiter, Decision, GovernorStore, Keys, RateLimitStore},
    verdict_of_error,
    vocabulary::{RefusalKind, StoreError},
    BoxError, Refusal, Verdict,
};
use tokio::time::{advance, Instant};
use tower::{service_fn, Service, ServiceBuilder, ServiceExt};

const MS: Duration = Duration::from_millis(1);

/// What reached the upstream: (request id, time since the test's start).
type Hits = Arc<Mutex<Vec<(u32, Duration)>>>;

/// What [`upstream`] is: a cloneable service that never fails.
trait Upstream:
    Service<Request<u32>, Response = Response<String>, Error = Infallible, Future: Send>
    + Clone
    + Send
    + 'static
{
}

impl<S> Upstream for S where
    S: Service<Request<u32>, Response = Response<String>, Error = Infallible, Future: Send>
        + Clone
        + Send
        + 'static
{
}

/// An upstream that records the id (the body) of every request and when it was called.
fn upstream(start: Instant) -> (Hits, impl Upstream) {
    let hits: Hits = Arc::default();
    let log = hits.clone();
    let svc = service_fn(move |req: Request<u32>| {
        log.lock().unwrap().push((*req.body(), start.elapsed()));
        async { Ok::<_, Infallible>(Response::new(String::from("ok"))) }
    });
    (hits, svc)
}

/// The stack under test: `limit` over a recording [`upstream`] whose clock starts now.
fn limited<M>(limit: &RateLimitLayer<M>) -> (Instant, Hits, RateLimit<impl Upstream, M>) {
    let start = Instant::now();
    let (hits, up) = upstream(start);
    let svc = ServiceBuilder::new().layer(limit.clone()).service(up);
    (start, hits, svc)
}

/// A request's id, in its extensions too: key and cost functions see no body.
#[derive(Debug, Clone, Copy)]
struct Id(u32);

/// The id of a request made by [`req`] or [`keyed`].
fn id_of(r: &RequestRef<'_>) -> u32 {
    r.extensions().get::<Id>().expect("a request with an id").0
}

fn req(id: u32) -> Request<u32> {
    let mut r = Request::new(id);
    r.extensions_mut().insert(Id(id));
    r
}

fn keyed(path: &str, id: u32) -> Request<u32> {
    Request::builder()
        .uri(path)
        .extension(Id(id))
        .body(id)
        .unwrap()
}

/// The rate limiter's refusal of kind `MaxWait`, or a panic.
fn max_wait_refusal(err: &BoxError) -> &Refusal {
    err.downcast_ref::<Refusal>()
        .filter(|r| matches!(r.kind(), RefusalKind::MaxWait { .. }))
        .expect("a MaxWaitExceeded")
}

fn times(hits: &Hits) -> Vec<Duration> {
    hits.lock().unwrap().iter().map(|(_, t)| *t).collect()
}

fn ids(hits: &Hits) -> Vec<u32> {
    hits.lock().unwrap().iter().map(|(id, _)| *id).collect()
}

/// Spawns one call per id, in order, letting each reach its first poll (and so its
/// place in line) before the next is spawned.
async fn spawn_in_order<S>(
    svc: &S,
    ids: impl IntoIterator<Item = u32>,
) -> Vec<tokio::task::JoinHandle<Result<Response<String>, BoxError>>>
where
    S: Service<Request<u32>, Response = Response<String>, Error = BoxError>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
{
    let mut handles = Vec::new();
    for id in ids {
        handles.push(tokio::spawn(svc.clone().oneshot(req(id))));
        tokio::task::yield_now().await;
    }
    handles
}

#[tokio::test(start_paused = true)]
async fn admits_the_burst_then_the_rate_over_a_window() {
    let limit = RateLimitLayer::builder()
        .per_second(10)
        .burst(5)
        .build()
        .unwrap();
    let (start, hits, svc) = limited(&limit);

    let handles = spawn_in_order(&svc, 0..30).await;
    for h in handles {
        h.await.unwrap().unwrap();
    }

    let t = times(&hits);
    assert_eq!(t.len(), 30);
    // 5 at once, then one every 100 ms.
    let expected: Vec<Duration> = (0..30u32)
        .map(|i| {
            if i < 5 {
                Duration::ZERO
            } else {
                100 * MS * (i - 4)
            }
        })
        .collect();
    assert_eq!(t, expected);
    // Over the first second (t = 0 ..= 1 s): exactly burst + rate = 5 + 10.
    assert_eq!(
        t.iter().filter(|t| **t <= Duration::from_secs(1)).count(),
        15
    );
    assert_eq!(start.elapsed(), Duration::from_millis(2500));

    let stats = limit.stats();
    assert_eq!(stats.admitted, 30);
    assert_eq!(stats.waited, 25);
    assert_eq!(
        Duration::from_millis(stats.max_wait_ms),
        Duration::from_millis(2500)
    );
}

#[tokio::test(start_paused = true)]
async fn keys_have_independent_buckets() {
    let limit = RateLimitLayer::builder()
        .per_second(1)
        .key(|r: &RequestRef<'_>| r.uri().path().to_owned())
        .max_wait(Duration::ZERO)
        .build()
        .unwrap();
    let (_, hits, svc) = limited(&limit);

    svc.clone().oneshot(keyed("/a", 1)).await.unwrap();
    let err = svc.clone().oneshot(keyed("/a", 2)).await.unwrap_err();
    let err = max_wait_refusal(&err);
    assert_eq!(err.key().unwrap(), &Key::from("/a"));
    // Key "/a" is spent; "/b" is not.
    svc.clone().oneshot(keyed("/b", 3)).await.unwrap();
    assert_eq!(ids(&hits), vec![1, 3]);
    assert_eq!(times(&hits), vec![Duration::ZERO; 2]);
}

#[tokio::test(start_paused = true)]
async fn clones_of_the_layer_in_two_stacks_share_one_bucket() {
    let start = Instant::now();
    let (hits_a, up_a) = upstream(start);
    let (hits_b, up_b) = upstream(start);
    let shared = RateLimitLayer::builder().per_second(2).build().unwrap();
    let stack_a = ServiceBuilder::new().layer(shared.clone()).service(up_a);
    let stack_b = ServiceBuilder::new().layer(shared.clone()).service(up_b);

    stack_a.clone().oneshot(req(1)).await.unwrap();
    stack_b.clone().oneshot(req(2)).await.unwrap();
    // The burst of 2 is spent across both stacks: the next call, on either, waits.
    stack_b.clone().oneshot(req(3)).await.unwrap();
    stack_a.clone().oneshot(req(4)).await.unwrap();

    assert_eq!(times(&hits_a), vec![Duration::ZERO, 1000 * MS]);
    assert_eq!(times(&hits_b), vec![Duration::ZERO, 500 * MS]);
    assert_eq!(shared.stats().admitted, 4);
    assert_eq!(stack_a.stats().waited, 2);
}

#[tokio::test(start_paused = true)]
async fn a_limiter_handle_shares_the_bucket_across_different_layers() {
    let start = Instant::now();
    let (hits, up) = upstream(start);
    // A client stack in wait mode...
    let client = RateLimitLayer::builder().per_second(1).build().unwrap();
    let client_svc = ServiceBuilder::new().layer(client.clone()).service(up);
    // ...and a server stack, another body type and mode, on the same bucket.
    let server = RateLimitLayer::builder()
        .reject()
        .build_with_limiter(client.limiter())
        .unwrap();
    assert!(server.limiter().same_as(&client.limiter()));
    let server_hits = Arc::new(Mutex::new(0u32));
    let counter = server_hits.clone();
    let server_svc = ServiceBuilder::new()
        .layer(server.clone())
        .service(service_fn(move |_req: Request<String>| {
            *counter.lock().unwrap() += 1;
            async { Ok::<_, Infallible>(Response::new(String::new())) }
        }));

    client_svc.clone().oneshot(req(1)).await.unwrap();
    let res = server_svc
        .clone()
        .oneshot(Request::new(String::new()))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);

    // While a client request waits for the next cell, the server does not take it.
    let waiting = tokio::spawn(client_svc.clone().oneshot(req(2)));
    tokio::task::yield_now().await;
    advance(999 * MS).await;
    assert_eq!(client.limiter().waiting(), 1);
    let res = server_svc
        .clone()
        .oneshot(Request::new(String::new()))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(res.headers()["retry-after"], "2");
    waiting.await.unwrap().unwrap();

    assert_eq!(times(&hits), vec![Duration::ZERO, 1000 * MS]);
    assert_eq!(*server_hits.lock().unwrap(), 0);
    assert_eq!(client.stats().rejected, 2);
    assert_eq!(server.stats().admitted, 2);
}

#[tokio::test(start_paused = true)]
async fn max_wait_fails_at_once_without_sleeping() {
    let limit = RateLimitLayer::builder()
        .per_second(1)
        .max_wait(500 * MS)
        .build()
        .unwrap();
    let (start, hits, svc) = limited(&limit);

    svc.clone().oneshot(req(1)).await.unwrap();
    advance(200 * MS).await;
    let before = Instant::now();
    let err = svc.clone().oneshot(req(2)).await.unwrap_err();
    assert_eq!(Instant::now(), before, "the refusal must not sleep");

    let refusal = max_wait_refusal(&err);
    assert_eq!(refusal.key().unwrap(), &Key::from("*"));
    assert_eq!(refusal.retry_after().unwrap(), 800 * MS);
    assert_eq!(refusal.earliest().unwrap(), start + 1000 * MS);
    assert_eq!(refusal.kind(), &RefusalKind::MaxWait { max_wait: 500 * MS });
    let shown = refusal.to_string();
    assert!(
        shown.contains("\"*\"") && shown.contains("800ms"),
        "{shown}"
    );
    assert_eq!(
        verdict_of_error(&*err),
        Verdict::rate_limited(Some(800 * MS))
    );

    assert_eq!(ids(&hits), vec![1]);
    assert_eq!(limit.stats().rejected, 1);
    // At the earliest time it said, the request goes.
    tokio::time::sleep_until(refusal.earliest().unwrap()).await;
    svc.oneshot(req(3)).await.unwrap();
    assert_eq!(times(&hits), vec![Duration::ZERO, 1000 * MS]);
}

#[tokio::test(start_paused = true)]
async fn max_wait_counts_the_cells_queued_ahead() {
    let limit = RateLimitLayer::builder()
        .per_second(10)
        .burst(1)
        .max_wait(250 * MS)
        .build()
        .unwrap();
    let (start, hits, svc) = limited(&limit);

    svc.clone().oneshot(req(1)).await.unwrap();
    // Two waiters: admitted at 100 ms and 200 ms.
    let waiters = spawn_in_order(&svc, [2, 3]).await;
    assert_eq!(limit.limiter().waiting(), 2);
    // A third would go at 300 ms: over max_wait, it fails now, though the bucket alone
    // would say 100 ms.
    let err = svc.clone().oneshot(req(4)).await.unwrap_err();
    assert_eq!(start.elapsed(), Duration::ZERO);
    let refusal = max_wait_refusal(&err);
    assert_eq!(refusal.retry_after().unwrap(), 300 * MS);
    assert_eq!(refusal.earliest().unwrap(), start + 300 * MS);

    for w in waiters {
        w.await.unwrap().unwrap();
    }
    assert_eq!(ids(&hits), vec![1, 2, 3]);
    assert_eq!(times(&hits), vec![Duration::ZERO, 100 * MS, 200 * MS]);
}

#[tokio::test(start_paused = true)]
async fn reject_mode_answers_429_with_rate_limit_headers_and_skips_upstream() {
    let limit = RateLimitLayer::builder()
        .per_period(2500 * MS)
        .burst(2)
        .reject()
        .build()
        .unwrap();
    let (start, hits, mut svc) = limited(&limit);
    // The inner error type is kept: axum can use this service without HandleErrorLayer.
    fn infallible<S: Service<Request<u32>, Error = Infallible>>(_: &S) {}
    infallible(&svc);

    for id in [1, 2] {
        let res = svc.ready().await.unwrap().call(req(id)).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
    }
    let res = svc.ready().await.unwrap().call(req(3)).await.unwrap();
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    let h = res.headers();
    assert_eq!(h["retry-after"], "3"); // 2.5 s, rounded up
    assert_eq!(h["ratelimit-policy"], r#""ratewise";q=2;w=5"#);
    assert_eq!(h["ratelimit"], r#""ratewise";r=0;t=3"#);
    // A client reads the wait back with the crate's one parser.
    assert_eq!(
        ratewise::retry_after::parse(h, None),
        Some(Duration::from_secs(3))
    );
    // The body is the IETF draft's quota-exceeded problem (tests/server_answers.rs).
    assert_eq!(h["content-type"], "application/problem+json");
    assert!(res.body().contains("#quota-exceeded"), "{}", res.body());
    assert_eq!(
        ids(&hits),
        vec![1, 2],
        "a rejected request must not reach upstream"
    );
    assert_eq!(start.elapsed(), Duration::ZERO);

    advance(1000 * MS).await;
    let res = svc.ready().await.unwrap().call(req(4)).await.unwrap();
    assert_eq!(res.headers()["retry-after"], "2"); // 1.5 s left
    advance(1500 * MS).await;
    let res = svc.ready().await.unwrap().call(req(5)).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(ids(&hits), vec![1, 2, 5]);
    assert_eq!(limit.stats().rejected, 2);
    assert_eq!(limit.stats().admitted, 3);
}

#[tokio::test(start_paused = true)]
async fn bypassed_requests_are_never_throttled_and_take_no_cell() {
    let limit = RateLimitLayer::builder()
        .per_second(1)
        // Cost 0 bypasses the limiter.
        .cost(|r: &RequestRef<'_>| {
            if r.headers().contains_key("x-card-final") {
                0
            } else {
                1
            }
        })
        .build()
        .unwrap();
    let (start, hits, svc) = limited(&limit);
    let final_edit = |id| {
        Request::builder()
            .header("x-card-final", "1")
            .body(id)
            .unwrap()
    };

    svc.clone().oneshot(req(1)).await.unwrap(); // spends the only cell
    for id in 10..15 {
        svc.clone().oneshot(final_edit(id)).await.unwrap(); // not throttled
    }
    assert_eq!(start.elapsed(), Duration::ZERO);
    advance(1000 * MS).await;
    // The final edits took no cell: the cell that came back at 1 s is there.
    for id in 20..25 {
        svc.clone().oneshot(final_edit(id)).await.unwrap();
    }
    svc.clone().oneshot(req(2)).await.unwrap();
    assert_eq!(start.elapsed(), 1000 * MS);
    assert_eq!(
        ids(&hits),
        vec![1, 10, 11, 12, 13, 14, 20, 21, 22, 23, 24, 2]
    );
    assert_eq!(limit.stats().bypassed, 10);
    assert_eq!(limit.stats().admitted, 2);
    assert_eq!(limit.stats().waited, 0);
}

#[tokio::test(start_paused = true)]
async fn a_dropped_waiter_takes_no_cell() {
    let limit = RateLimitLayer::builder().per_second(1).build().unwrap();
    let (_, hits, svc) = limited(&limit);

    svc.clone().oneshot(req(1)).await.unwrap();
    // Request 2 waits for the cell of t = 1 s, and is dropped at 500 ms.
    let dropped = tokio::time::timeout(500 * MS, svc.clone().oneshot(req(2))).await;
    assert!(
        dropped.is_err(),
        "request 2 must still be waiting at 500 ms"
    );
    assert_eq!(limit.limiter().waiting(), 0);
    // Request 3 gets that cell at 1 s, as if request 2 had never been.
    svc.clone().oneshot(req(3)).await.unwrap();

    assert_eq!(ids(&hits), vec![1, 3]);
    assert_eq!(times(&hits), vec![Duration::ZERO, 1000 * MS]);
}

#[tokio::test(start_paused = true)]
async fn a_waiter_dropped_in_the_middle_of_the_line_takes_no_cell() {
    let limit = RateLimitLayer::builder().per_second(1).build().unwrap();
    let (_, hits, svc) = limited(&limit);

    svc.clone().oneshot(req(1)).await.unwrap();
    // Request 2 goes at 1 s.
    let head = spawn_in_order(&svc, [2]).await;
    // Request 3 queues behind it (would go at 2 s) and is dropped at 500 ms.
    let dropped = tokio::time::timeout(500 * MS, svc.clone().oneshot(req(3))).await;
    assert!(dropped.is_err());
    assert_eq!(limit.limiter().waiting(), 1);
    // Request 4 takes request 3's place: 2 s, not 3 s.
    svc.clone().oneshot(req(4)).await.unwrap();
    for h in head {
        h.await.unwrap().unwrap();
    }

    assert_eq!(ids(&hits), vec![1, 2, 4]);
    assert_eq!(times(&hits), vec![Duration::ZERO, 1000 * MS, 2000 * MS]);
}

#[tokio::test(start_paused = true)]
async fn a_thousand_waiters_are_admitted_in_arrival_order_at_the_quota() {
    let limit = RateLimitLayer::builder()
        .per_second(100)
        .burst(10)
        .build()
        .unwrap();
    let (start, hits, svc) = limited(&limit);

    let handles = spawn_in_order(&svc, 0..1000).await;
    assert_eq!(limit.limiter().waiting(), 990);
    for h in handles {
        h.await.unwrap().unwrap();
    }

    // Strictly in arrival order...
    assert_eq!(ids(&hits), (0..1000).collect::<Vec<_>>());
    // ...each at the first instant the quota allows: 10 at once, then one per 10 ms.
    let t = times(&hits);
    for (i, t) in t.iter().enumerate() {
        let expected = if i < 10 {
            Duration::ZERO
        } else {
            10 * MS * (i as u32 - 9)
        };
        assert_eq!(*t, expected, "request {i}");
    }
    assert_eq!(start.elapsed(), Duration::from_millis(9900));
    assert_eq!(limit.limiter().waiting(), 0);
    let stats = limit.stats();
    assert_eq!(stats.admitted, 1000);
    assert_eq!(stats.waited, 990);
    assert_eq!(
        Duration::from_millis(stats.max_wait_ms),
        Duration::from_millis(9900)
    );
}

#[tokio::test(start_paused = true)]
async fn cost_takes_that_many_cells_and_more_than_the_burst_fails_at_once() {
    let cost = |r: &RequestRef<'_>| -> u32 {
        r.headers()
            .get("x-cost")
            .and_then(|v| v.to_str().ok()?.parse().ok())
            .unwrap_or(1)
    };
    let with_cost = |id, cost: u32| Request::builder().header("x-cost", cost).body(id).unwrap();
    let limit = RateLimitLayer::builder()
        .per_second(10)
        .burst(5)
        .cost(cost)
        .build()
        .unwrap();
    let (start, hits, svc) = limited(&limit);

    svc.clone().oneshot(with_cost(1, 5)).await.unwrap(); // the whole burst
    svc.clone().oneshot(with_cost(2, 2)).await.unwrap(); // two cells: 200 ms
    svc.clone().oneshot(with_cost(3, 0)).await.unwrap(); // free: at once
    let err = svc.clone().oneshot(with_cost(4, 6)).await.unwrap_err();
    assert_eq!(start.elapsed(), 200 * MS, "cost > burst must not wait");
    let err = err
        .downcast_ref::<Refusal>()
        .filter(|r| matches!(r.kind(), RefusalKind::CostExceedsBurst { .. }))
        .expect("a CostExceedsBurst");
    assert_eq!(
        err.kind(),
        &RefusalKind::CostExceedsBurst { cost: 6, burst: 5 }
    );
    assert!(err.to_string().contains("\"*\""));

    assert_eq!(ids(&hits), vec![1, 2, 3]);
    assert_eq!(times(&hits), vec![Duration::ZERO, 200 * MS, 200 * MS]);

    // Reject mode answers 429 without Retry-After: waiting would not help.
    let rejecting = RateLimitLayer::builder()
        .per_second(10)
        .burst(5)
        .cost(cost)
        .reject()
        .build()
        .unwrap();
    let (_, up) = upstream(start);
    let res = ServiceBuilder::new()
        .layer(rejecting)
        .service(up)
        .oneshot(with_cost(5, 6))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(res.headers().get("retry-after").is_none());
}

#[tokio::test(start_paused = true)]
async fn readiness_is_the_inner_services() {
    let start = Instant::now();
    let (_, up) = upstream(start);
    let limit = RateLimitLayer::builder().per_second(1).build().unwrap();
    // One call at a time underneath; the first one never finishes.
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let g = gate.clone();
    let inner = ServiceBuilder::new()
        .concurrency_limit(1)
        .service(up)
        .map_future(move |f| {
            let g = g.clone();
            async move {
                let _ = g.acquire().await;
                f.await
            }
        });
    let mut svc = ServiceBuilder::new().layer(limit).service(inner);

    poll_fn(|cx| svc.poll_ready(cx)).await.unwrap();
    let first = tokio::spawn(svc.call(req(1)));
    tokio::task::yield_now().await;
    // The ready inner service (and its concurrency permit) went with the call.
    assert!(poll_fn(|cx| Poll::Ready(svc.poll_ready(cx).is_pending())).await);
    gate.add_permits(1);
    first.await.unwrap().unwrap();
    poll_fn(|cx| svc.poll_ready(cx)).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn config_errors_name_the_field() {
    let b = RateLimitLayer::builder;
    let cases = [
        (b().per_second(0).build().unwrap_err(), "per_second"),
        (b().per_minute(0).build().unwrap_err(), "per_minute"),
        (
            b().per_period(Duration::ZERO).build().unwrap_err(),
            "per_period",
        ),
        (b().per_second(5).burst(0).build().unwrap_err(), "burst"),
        (b().build().unwrap_err(), "rate"),
    ];
    for (err, field) in cases {
        assert_eq!(err.field(), field);
        assert!(err.to_string().contains(&format!("`{field}`")), "{err}");
    }
    let shared = b().per_second(5).build().unwrap().limiter();
    let err = b()
        .per_second(5)
        .build_with_limiter(shared.clone())
        .unwrap_err();
    assert_eq!(err.field(), "per_second");
    let err = b().burst(5).build_with_limiter(shared).unwrap_err();
    assert_eq!(err.field(), "burst");
}

/// One million distinct keys through the in-memory store, with time moving on so that
/// old keys rest: the store never holds more than a few thousand. (The store is called
/// directly: through the whole service, a million calls take too long in a debug build.)
#[tokio::test(start_paused = true)]
async fn memory_stays_bounded_with_a_million_distinct_keys() {
    // One cell per 10 ms, burst 1: a key rests 20 ms after its use.
    let store = GovernorStore::new(Quota::per_second(NonZeroU32::new(100).unwrap()));
    let limiter = engine_limiter(store.clone());
    let one = NonZeroU32::MIN;
    let mut most = 0;
    for batch in 0..1000u32 {
        for i in 0..1000u32 {
            let key = Key::from((batch * 1000 + i).to_string());
            let decision = store.acquire(&Keys::one(key), one).await.unwrap();
            assert!(matches!(decision, Decision::Admitted { .. }));
        }
        most = most.max(store.len());
        advance(10 * MS).await;
    }
    // Live keys at any time: the last two or three batches. Without eviction: 1,000,000.
    assert!(most <= 8_000, "the store held {most} keys");
    assert_eq!(limiter.key_count(), Some(store.len()));
    advance(Duration::from_secs(1)).await;
    store.evict_idle();
    assert_eq!(store.len(), 0);
}

#[tokio::test(start_paused = true)]
async fn newcomers_queue_behind_waiters_instead_of_taking_their_cells() {
    let limit = RateLimitLayer::builder()
        .per_second(10)
        .burst(5)
        .cost(|r: &RequestRef<'_>| if id_of(r) >= 100 { 5 } else { 1 })
        .build()
        .unwrap();
    let (_, hits, svc) = limited(&limit);

    // Request 100 takes all 5 cells.
    svc.clone().oneshot(req(100)).await.unwrap();
    // Request 101 needs 5 cells: it waits until 500 ms.
    let big = spawn_in_order(&svc, [101]).await;
    advance(100 * MS).await;
    // At 100 ms one cell is back. Request 1 needs only that one, but request 101 came
    // first: taking it would starve request 101, so request 1 queues behind it.
    let small = spawn_in_order(&svc, [1]).await;
    for h in big.into_iter().chain(small) {
        h.await.unwrap().unwrap();
    }

    assert_eq!(ids(&hits), vec![100, 101, 1]);
    assert_eq!(times(&hits), vec![Duration::ZERO, 500 * MS, 600 * MS]);
}

#[tokio::test(start_paused = true)]
async fn waits_and_refusals_are_traced_with_key_and_wait() {
    common::capture::start();
    let (_, up) = upstream(Instant::now());
    let limit = RateLimitLayer::builder()
        .per_second(1)
        .key(|r: &RequestRef<'_>| format!("bot{}", id_of(r) / 10))
        .max_wait(1500 * MS)
        .build()
        .unwrap();
    let svc = ServiceBuilder::new().layer(limit).service(up.clone());

    svc.clone().oneshot(req(10)).await.unwrap();
    let waiter = spawn_in_order(&svc, [11]).await;
    svc.clone().oneshot(req(12)).await.unwrap_err(); // needs 2 s
    for w in waiter {
        w.await.unwrap().unwrap();
    }
    let rejecting = RateLimitLayer::builder()
        .per_second(1)
        .reject()
        .build()
        .unwrap();
    let server = ServiceBuilder::new().layer(rejecting).service(up);
    server.clone().oneshot(req(20)).await.unwrap();
    server.oneshot(req(21)).await.unwrap();

    let events = common::capture::events();
    let has = |level: &str, parts: &[&str]| {
        events
            .iter()
            .any(|e| e.starts_with(level) && parts.iter().all(|p| e.contains(p)))
    };
    assert!(
        has("DEBUG", &["key=bot1", "wait=1s", "waiting"]),
        "{events:#?}"
    );
    assert!(
        has("DEBUG", &["key=bot1", "waited=1s", "admitted"]),
        "{events:#?}"
    );
    assert!(
        has("INFO", &["key=bot1", "wait=2s", "max_wait=1.5s"]),
        "{events:#?}"
    );
    // Reject mode logs each 429 at DEBUG (a server under attack must not flood its
    // log), plus a rate-limited summary at WARN.
    assert!(
        has("DEBUG", &["key=*", "retry_after=1s", "429"]),
        "{events:#?}"
    );
    assert!(has("WARN", &["refusing requests"]), "{events:#?}");
}

/// The queue hand-offs on a multi-threaded runtime (real time, so no timing asserts):
/// every request is admitted exactly once and the lines are empty afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_waiters_on_threads_are_all_admitted_once() {
    let (hits, up) = upstream(Instant::now());
    let limit = RateLimitLayer::builder()
        .per_second(2000)
        .burst(20)
        .build()
        .unwrap();
    let svc = ServiceBuilder::new().layer(limit.clone()).service(up);
    let handles: Vec<_> = (0..300)
        .map(|id| tokio::spawn(svc.clone().oneshot(req(id))))
        .collect();
    let all = async {
        for h in handles {
            h.await.unwrap().unwrap();
        }
    };
    tokio::time::timeout(Duration::from_secs(30), all)
        .await
        .expect("300 requests at 2000/s finish well within 30 s");
    let mut seen = ids(&hits);
    seen.sort_unstable();
    assert_eq!(seen, (0..300).collect::<Vec<_>>());
    assert_eq!(limit.stats().admitted, 300);
    assert_eq!(limit.limiter().waiting(), 0);
}

/// Reject mode is an axum layer as is: no HandleErrorLayer, 429 straight from the
/// router.
#[tokio::test(start_paused = true)]
async fn reject_mode_layers_an_axum_router_directly() {
    use axum::{body::Body, routing::get, Router};

    let limit = RateLimitLayer::builder()
        .per_second(1)
        .reject()
        .build()
        .unwrap();
    let app: Router = Router::new()
        .route("/", get(|| async { "hello" }))
        .layer(limit.clone());

    let get_root = || Request::get("/").body(Body::empty()).unwrap();
    let ok = app.clone().oneshot(get_root()).await.unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
    let limited = app.clone().oneshot(get_root()).await.unwrap();
    assert_eq!(limited.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(limited.headers()["retry-after"], "1");
    assert_eq!(limit.stats().rejected, 1);
}

/// A store whose every answer takes 5 ms (a remote store's round trip), deciding on the
/// in-memory buckets once the time has passed.
#[derive(Clone)]
struct RoundTripStore(GovernorStore);

impl RateLimitStore for RoundTripStore {
    type Future = Pin<Box<dyn Future<Output = Result<Decision, StoreError>> + Send>>;

    fn acquire(&self, keys: &Keys, cost: NonZeroU32) -> Self::Future {
        let (store, keys) = (self.0.clone(), keys.clone());
        Box::pin(async move {
            tokio::time::sleep(5 * MS).await;
            store.acquire(&keys, cost).await
        })
    }

    fn quota(&self) -> Quota {
        self.0.quota()
    }
}

/// `Stats::waited` used to count every request whose admission took any time at all: on
/// a real clock, a request admitted at its first poll was "waited" for the microseconds
/// between two clock reads, and with a remote store for its round trip. Only a request
/// that was held back (denied a cell, or queued behind waiters) has waited.
#[tokio::test(start_paused = true)]
async fn waited_counts_only_requests_that_were_held_back_not_a_first_attempt_that_took_time() {
    let quota = Quota::per_second(NonZeroU32::new(1).unwrap())
        .with_burst(NonZeroU32::new(2).unwrap())
        .unwrap();
    let limit = RateLimitLayer::builder()
        .build_with_limiter(engine_limiter(RoundTripStore(GovernorStore::new(quota))))
        .unwrap();
    let (_, hits, svc) = limited(&limit);

    for h in spawn_in_order(&svc, 0..3).await {
        h.await.unwrap().unwrap();
    }

    // Two go after one round trip; the third is denied (next cell at 1.005 s), sleeps,
    // and goes after a second round trip.
    assert_eq!(times(&hits), [5 * MS, 5 * MS, 1010 * MS]);
    let stats = limit.stats();
    assert_eq!(stats.admitted, 3);
    assert_eq!(stats.waited, 1, "only the denied request waited");
    assert_eq!(Duration::from_millis(stats.total_wait_ms), 1010 * MS);
    assert_eq!(Duration::from_millis(stats.max_wait_ms), 1010 * MS);
}
