//! Behaviour of `RetryLayer`: what reaches the upstream, when, and what the caller gets.
//!
//! Every test runs on tokio's paused clock: sleeps end as soon as the runtime is idle,
//! and `Instant`s are exact.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use ratewise::classify::{ClassifyLayer, Preset};
use ratewise::retry::{buffer_request, DeadlineExceeded, GiveUp, RetryBody, RetryLayer};
use ratewise::BoxError;
use tokio::time::Instant;
use tower::{Service, ServiceBuilder, ServiceExt};

type Res = Response<Full<Bytes>>;

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

/// The instants at which the upstream was called, and the request bodies it read.
#[derive(Clone, Default)]
struct Calls {
    at: Arc<Mutex<Vec<Instant>>>,
    bodies: Arc<Mutex<Vec<Bytes>>>,
}

impl Calls {
    fn record(&self) -> usize {
        let mut at = self.at.lock().unwrap();
        at.push(Instant::now());
        at.len()
    }

    fn count(&self) -> usize {
        self.at.lock().unwrap().len()
    }

    /// Call times relative to `t0`.
    fn offsets(&self, t0: Instant) -> Vec<Duration> {
        self.at.lock().unwrap().iter().map(|t| *t - t0).collect()
    }
}

/// An upstream whose `n`-th call (1-based) gets `answer(n)`.
fn upstream<ReqB, E, F>(
    answer: F,
) -> (
    impl Service<Request<ReqB>, Response = Res, Error = E, Future = impl Send> + Clone + Send,
    Calls,
)
where
    ReqB: Send + 'static,
    E: Send + 'static,
    F: Fn(usize) -> Result<Res, E> + Send + Sync + 'static,
{
    let calls = Calls::default();
    let answer = Arc::new(answer);
    let c = calls.clone();
    let svc = tower::service_fn(move |_req: Request<ReqB>| {
        let result = answer(c.record());
        async move { result }
    });
    (svc, calls)
}

fn response(status: u16, body: &'static str) -> Res {
    Response::builder()
        .status(status)
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap()
}

/// The response with a `Retry-After` header, read by the crate's one parser.
fn with_retry_after(mut res: Res, value: &'static str) -> Res {
    res.headers_mut()
        .insert("retry-after", HeaderValue::from_static(value));
    res
}

fn get() -> Request<Full<Bytes>> {
    Request::get("http://127.0.0.1/gateway")
        .body(Full::new(Bytes::new()))
        .unwrap()
}

async fn body_bytes<B>(res: Response<B>) -> Bytes
where
    B: http_body::Body,
    B::Error: std::fmt::Debug,
{
    res.into_body().collect().await.unwrap().to_bytes()
}

const TELEGRAM_429: &str = r#"{"ok":false,"error_code":429,"description":"Too Many Requests: retry after 4310","parameters":{"retry_after":4310}}"#;
const QQ_400: &str = r#"{"message":"接口调用超过频率限制","code":11255}"#;
const GLM_1302: &str =
    r#"{"error":{"code":"1302","message":"您的账户已达到速率限制,请您控制请求频率"}}"#;
const DINGTALK_403: &str =
    r#"{"code":"Forbidden.AccessDenied.QpsLimitForApi","message":"QpsLimit"}"#;

#[tokio::test(start_paused = true)]
async fn telegram_4310_retry_after_is_returned_at_once_without_sleeping() {
    let layer = RetryLayer::builder()
        .max_delay(Duration::from_secs(60))
        .max_attempts(5)
        .build()
        .unwrap();
    let stats = {
        let layer = layer.clone();
        move || layer.stats()
    };
    let (inner, calls) = upstream(|_| {
        let mut res = response(429, TELEGRAM_429);
        res.headers_mut()
            .insert("retry-after", HeaderValue::from_static("4310"));
        Ok::<_, BoxError>(res)
    });
    // The Telegram classifier reads the wait from header and body.
    let svc = ServiceBuilder::new()
        .layer(layer)
        .layer(ClassifyLayer::new(Preset::telegram()))
        .service(inner);

    let before = Instant::now();
    let res = svc.oneshot(get()).await.unwrap();
    let after = Instant::now();

    assert_eq!(before, after, "no time may pass: the caller is not held");
    assert_eq!(calls.count(), 1);
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(res.headers()["retry-after"], "4310");
    assert_eq!(body_bytes(res).await, TELEGRAM_429.as_bytes());
    assert_eq!(stats().give_ups_for(GiveUp::MaxDelay), 1);
    assert_eq!(stats().retries, 0);
}

/// The same with the bare header, judged by `verdict_of` without a ClassifyLayer.
/// Needs the real `retry_after::parse` (the skeleton's stub finds no wait, so the
/// 429 is retried on the schedule instead).
#[tokio::test(start_paused = true)]
async fn bare_retry_after_4310_header_is_returned_at_once() {
    let layer = RetryLayer::builder()
        .max_delay(Duration::from_secs(60))
        .build()
        .unwrap();
    let (inner, calls) = upstream(|_| {
        let mut res = response(429, "Too Many Requests");
        res.headers_mut()
            .insert("retry-after", HeaderValue::from_static("4310"));
        Ok::<_, BoxError>(res)
    });
    let svc = ServiceBuilder::new().layer(layer).service(inner);
    let before = Instant::now();
    let res = svc.oneshot(get()).await.unwrap();
    assert_eq!(Instant::now(), before);
    assert_eq!(calls.count(), 1);
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test(start_paused = true)]
async fn qq_schedule_is_followed_exactly_then_the_last_response_returned() {
    let layer = RetryLayer::builder()
        .schedule([secs(0.5), secs(1.5), secs(3.0)])
        .build()
        .unwrap();
    let stats = {
        let layer = layer.clone();
        move || layer.stats()
    };
    let (inner, calls) = upstream(|n| {
        let mut res = response(400, QQ_400);
        res.headers_mut().insert("x-call", n.into());
        Ok::<_, BoxError>(res)
    });
    let svc = ServiceBuilder::new()
        .layer(layer)
        .layer(ClassifyLayer::new(Preset::qq()))
        .service(inner);

    let t0 = Instant::now();
    let res = svc.oneshot(get()).await.unwrap();

    assert_eq!(
        calls.offsets(t0),
        [secs(0.0), secs(0.5), secs(2.0), secs(5.0)]
    );
    assert_eq!(
        Instant::now() - t0,
        secs(5.0),
        "no wait after the last call"
    );
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    assert_eq!(res.headers()["x-call"], "4", "the last response comes back");
    assert_eq!(body_bytes(res).await, QQ_400.as_bytes());
    assert_eq!(stats().calls, 1);
    assert_eq!(stats().retries, 3);
    assert_eq!(stats().give_ups_for(GiveUp::Attempts), 1);
}

#[tokio::test(start_paused = true)]
async fn glm_1302_and_dingtalk_403_are_retried_with_backoff_plain_400_is_not() {
    // Judged by the presets: GLM's 1302 and DingTalk's QpsLimit are rate limits, a
    // plain 400 is not.
    let cases: [(u16, &'static str, usize); 3] = [
        (429, GLM_1302, 3),
        (403, DINGTALK_403, 3),
        (400, r#"{"error":"bad field"}"#, 1),
    ];
    for (status, body, expected_calls) in cases {
        let layer = RetryLayer::builder()
            .exponential(secs(1.0), secs(8.0))
            .max_attempts(3)
            .build()
            .unwrap();
        let stats = {
            let layer = layer.clone();
            move || layer.stats()
        };
        let (inner, calls) = upstream(move |_| Ok::<_, BoxError>(response(status, body)));
        let svc = ServiceBuilder::new()
            .layer(layer)
            .layer(ClassifyLayer::new(Preset::default()))
            .service(inner);

        let t0 = Instant::now();
        let res = svc.oneshot(get()).await.unwrap();

        assert_eq!(res.status().as_u16(), status);
        assert_eq!(body_bytes(res).await, body.as_bytes());
        assert_eq!(calls.count(), expected_calls, "status {status}");
        if expected_calls == 3 {
            // base 1 s, doubled: waits 1 s then 2 s.
            assert_eq!(calls.offsets(t0), [secs(0.0), secs(1.0), secs(3.0)]);
            assert_eq!(stats().retries, 2);
        } else {
            assert_eq!(Instant::now(), t0, "a plain 400 is returned at once");
            assert_eq!(stats().retries, 0);
            assert_eq!(stats().give_ups, 0, "not retryable is not a give-up");
        }
    }
}

#[tokio::test(start_paused = true)]
async fn plain_429_and_503_are_retried_by_status_alone() {
    for status in [429u16, 503] {
        let layer = RetryLayer::builder()
            .schedule([secs(0.5)])
            .max_attempts(3)
            .build()
            .unwrap();
        let (inner, calls) = upstream(move |n| {
            Ok::<_, BoxError>(if n < 3 {
                response(status, "busy")
            } else {
                response(200, "ok")
            })
        });
        let svc = ServiceBuilder::new().layer(layer).service(inner);
        let t0 = Instant::now();
        let res = svc.oneshot(get()).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(calls.offsets(t0), [secs(0.0), secs(0.5), secs(1.0)]);
    }
}

#[tokio::test(start_paused = true)]
async fn server_retry_after_within_max_delay_is_honoured() {
    let layer = RetryLayer::builder()
        .schedule([secs(0.5)])
        .max_delay(Duration::from_secs(60))
        .max_attempts(5)
        .build()
        .unwrap();
    let stats = {
        let layer = layer.clone();
        move || layer.stats()
    };
    let (inner, calls) = upstream(|n| {
        let res = match n {
            1 => with_retry_after(response(429, "wait"), "2"),
            2 => with_retry_after(response(429, "wait"), "7"),
            _ => response(200, "done"),
        };
        Ok::<_, BoxError>(res)
    });
    let svc = ServiceBuilder::new().layer(layer).service(inner);

    let t0 = Instant::now();
    let res = svc.oneshot(get()).await.unwrap();

    // The server's waits, not the 0.5 s schedule.
    assert_eq!(calls.offsets(t0), [secs(0.0), secs(2.0), secs(9.0)]);
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(body_bytes(res).await, "done");
    assert_eq!(stats().retries, 2);
    assert_eq!(stats().give_ups, 0);
}

#[tokio::test(start_paused = true)]
async fn total_deadline_stops_a_retry_storm() {
    let layer = RetryLayer::builder()
        .schedule([secs(1.0)])
        .max_attempts(10)
        .deadline(secs(3.0))
        .build()
        .unwrap();
    let stats = {
        let layer = layer.clone();
        move || layer.stats()
    };
    let (inner, calls) = upstream(|n| {
        let mut res = response(503, "overloaded");
        res.headers_mut().insert("x-call", n.into());
        Ok::<_, BoxError>(res)
    });
    let svc = ServiceBuilder::new().layer(layer).service(inner);

    let t0 = Instant::now();
    let res = svc.oneshot(get()).await.unwrap();

    // A call at 3 s would start at the deadline: not taken.
    assert_eq!(calls.offsets(t0), [secs(0.0), secs(1.0), secs(2.0)]);
    assert_eq!(
        Instant::now() - t0,
        secs(2.0),
        "the caller is not held past the last call"
    );
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(res.headers()["x-call"], "3");
    assert_eq!(stats().give_ups_for(GiveUp::Deadline), 1);
    assert_eq!(stats().give_ups_for(GiveUp::Attempts), 0);
}

#[tokio::test(start_paused = true)]
async fn deadline_also_refuses_a_server_wait_that_would_pass_it() {
    let layer = RetryLayer::builder().deadline(secs(5.0)).build().unwrap();
    let stats = {
        let layer = layer.clone();
        move || layer.stats()
    };
    let (inner, calls) =
        upstream(|_| Ok::<_, BoxError>(with_retry_after(response(429, "wait"), "30")));
    let svc = ServiceBuilder::new().layer(layer).service(inner);
    let t0 = Instant::now();
    let res = svc.oneshot(get()).await.unwrap();
    assert_eq!(Instant::now(), t0);
    assert_eq!(calls.count(), 1);
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(stats().give_ups_for(GiveUp::Deadline), 1);
}

/// Fires `n` concurrent calls through clones of `svc` and returns their statuses.
async fn storm<S>(svc: S, n: usize) -> Vec<StatusCode>
where
    S: Service<Request<Full<Bytes>>, Response = Res, Error = BoxError> + Clone + Send + 'static,
    S::Future: Send,
{
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..n {
        let svc = svc.clone();
        set.spawn(async move { svc.oneshot(get()).await.unwrap().status() });
    }
    let mut out = Vec::new();
    while let Some(status) = set.join_next().await {
        out.push(status.unwrap());
    }
    out
}

#[tokio::test(start_paused = true)]
async fn retry_budget_stops_a_retry_storm() {
    const CALLS: usize = 100;
    const ATTEMPTS: u32 = 4;
    let failing = |_| Ok::<_, BoxError>(response(503, "down"));

    // Without a budget every call makes all its attempts.
    let unbounded = RetryLayer::builder()
        .schedule([secs(0.1)])
        .max_attempts(ATTEMPTS)
        .build()
        .unwrap();
    let (inner, calls) = upstream(failing);
    let svc = ServiceBuilder::new().layer(unbounded).service(inner);
    let statuses = storm(svc, CALLS).await;
    assert_eq!(statuses.len(), CALLS);
    assert_eq!(calls.count(), CALLS * ATTEMPTS as usize);

    // With a budget of 10 % of calls (no reserve), at most 10 retries in all.
    let budgeted = RetryLayer::builder()
        .schedule([secs(0.1)])
        .max_attempts(ATTEMPTS)
        .tps_budget(Duration::from_secs(10), 0, 0.1)
        .build()
        .unwrap();
    let stats = {
        let budgeted = budgeted.clone();
        move || budgeted.stats()
    };
    let (inner, calls) = upstream(failing);
    let svc = ServiceBuilder::new().layer(budgeted).service(inner);
    let statuses = storm(svc, CALLS).await;

    assert_eq!(statuses.len(), CALLS);
    assert!(statuses
        .iter()
        .all(|s| *s == StatusCode::SERVICE_UNAVAILABLE));
    let retries = calls.count() - CALLS;
    assert!(retries <= CALLS / 10, "{retries} retries for {CALLS} calls");
    assert!(retries > 0, "the budget allows some retries");
    assert_eq!(stats().retries as usize, retries);
    assert_eq!(stats().calls as usize, CALLS);
    assert!(stats().give_ups_for(GiveUp::Budget) as usize >= CALLS - retries);
}

#[tokio::test(start_paused = true)]
async fn budget_handed_in_is_shared_by_layers() {
    let budget = Arc::new(tower::retry::budget::TpsBudget::new(
        Duration::from_secs(10),
        0,
        1.0,
    ));
    let build = || {
        RetryLayer::builder()
            .schedule([secs(0.1)])
            .max_attempts(3)
            .budget(budget.clone())
            .build()
            .unwrap()
    };
    let (a, b) = (build(), build());
    let (inner_ok, _) = upstream(|_| Ok::<_, BoxError>(response(200, "ok")));
    let (inner_fail, fail_calls) = upstream(|_| Ok::<_, BoxError>(response(503, "down")));
    // Two successful calls through layer `a` deposit two retries' worth for layer `b`.
    let ok = ServiceBuilder::new().layer(a).service(inner_ok);
    ok.clone().oneshot(get()).await.unwrap();
    ok.oneshot(get()).await.unwrap();
    let fail = ServiceBuilder::new().layer(b.clone()).service(inner_fail);
    fail.oneshot(get()).await.unwrap();
    // b's own call deposited one more: three in the budget, two retries used.
    assert_eq!(fail_calls.count(), 3);
    assert_eq!(b.stats().give_ups_for(GiveUp::Attempts), 1);
}

#[tokio::test(start_paused = true)]
async fn non_cloneable_request_passes_through_once() {
    let layer = RetryLayer::builder().max_attempts(5).build().unwrap();
    let stats = {
        let layer = layer.clone();
        move || layer.stats()
    };

    // A response: returned as is, one call.
    let (inner, calls) = upstream(|_| {
        let mut res = response(429, "slow down");
        res.headers_mut()
            .insert("x-upstream", HeaderValue::from_static("1"));
        Ok::<_, BoxError>(res)
    });
    let svc = ServiceBuilder::new().layer(layer.clone()).service(inner);
    let req = Request::post("http://127.0.0.1/stream")
        .body(RetryBody::streaming(Full::new(Bytes::from_static(
            b"chunk",
        ))))
        .unwrap();
    let t0 = Instant::now();
    let res = svc.oneshot(req).await.unwrap();
    assert_eq!(Instant::now(), t0);
    assert_eq!(calls.count(), 1);
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(res.headers()["x-upstream"], "1");
    assert_eq!(body_bytes(res).await, "slow down");

    // An error: returned as is, one call.
    let (inner, calls) = upstream(|_| {
        Err::<Res, BoxError>(Box::new(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "reset by peer",
        )))
    });
    let svc = ServiceBuilder::new().layer(layer).service(inner);
    let boxed: BoxBody<Bytes, std::convert::Infallible> =
        BoxBody::new(Full::new(Bytes::from_static(b"x")));
    let req = Request::post("http://127.0.0.1/stream")
        .body(boxed)
        .unwrap();
    let err = svc.oneshot(req).await.unwrap_err();
    let io = err
        .downcast_ref::<std::io::Error>()
        .expect("the inner's own error");
    assert_eq!(io.kind(), std::io::ErrorKind::ConnectionReset);
    assert_eq!(calls.count(), 1);

    assert_eq!(stats().not_cloneable, 2);
    assert_eq!(stats().retries, 0);
    assert_eq!(stats().give_ups, 0, "not cloneable is not a give-up");
}

#[tokio::test(start_paused = true)]
async fn buffered_streaming_body_is_retried_with_every_byte() {
    let layer = RetryLayer::builder()
        .schedule([secs(0.5)])
        .max_attempts(3)
        .build()
        .unwrap();
    let calls = Calls::default();
    let c = calls.clone();
    let inner = tower::service_fn(move |req: Request<RetryBody<BoxBody<Bytes, BoxError>>>| {
        let c = c.clone();
        async move {
            let n = c.record();
            let bytes = req.into_body().collect().await?.to_bytes();
            c.bodies.lock().unwrap().push(bytes);
            Ok::<_, BoxError>(if n < 3 {
                response(503, "again")
            } else {
                response(200, "ok")
            })
        }
    });
    let svc = ServiceBuilder::new().layer(layer).service(inner);

    let body: BoxBody<Bytes, BoxError> = Full::new(Bytes::from_static(b"payload"))
        .map_err(|e| match e {})
        .boxed();
    let req = Request::post("http://127.0.0.1/send").body(body).unwrap();
    let req = buffer_request(req, 1024).await.unwrap();
    assert!(req.body().is_buffered());
    let res = svc.oneshot(req).await.unwrap();

    assert_eq!(res.status(), StatusCode::OK);
    let bodies = calls.bodies.lock().unwrap().clone();
    assert_eq!(bodies, vec![Bytes::from_static(b"payload"); 3]);
}

#[tokio::test(start_paused = true)]
async fn last_response_is_returned_untouched() {
    let layer = RetryLayer::builder()
        .schedule([secs(1.0)])
        .max_attempts(3)
        .build()
        .unwrap();
    let (inner, calls) = upstream(|n| {
        let (status, body): (u16, &'static str) = match n {
            1 => (503, "first"),
            2 => (500, "second"),
            _ => (502, "third and last \u{1F4A5} body"),
        };
        let mut res = response(status, body);
        res.headers_mut().insert("x-call", n.into());
        res.headers_mut()
            .append("set-cookie", HeaderValue::from_static("a=1"));
        res.headers_mut()
            .append("set-cookie", HeaderValue::from_static("b=2"));
        res.headers_mut().insert(
            "content-type",
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        Ok::<_, BoxError>(res)
    });
    let svc = ServiceBuilder::new().layer(layer).service(inner);
    let res = svc.oneshot(get()).await.unwrap();

    assert_eq!(calls.count(), 3);
    assert_eq!(res.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(res.headers().len(), 4);
    assert_eq!(res.headers()["x-call"], "3");
    let cookies: Vec<_> = res.headers().get_all("set-cookie").iter().collect();
    assert_eq!(cookies, ["a=1", "b=2"]);
    assert_eq!(res.headers()["content-type"], "text/plain; charset=utf-8");
    assert_eq!(
        body_bytes(res).await,
        "third and last \u{1F4A5} body".as_bytes()
    );
}

#[tokio::test(start_paused = true)]
async fn connection_errors_are_retried_and_the_last_error_returned() {
    let layer = RetryLayer::builder()
        .schedule([secs(0.5), secs(1.5)])
        .build()
        .unwrap();
    let stats = {
        let layer = layer.clone();
        move || layer.stats()
    };
    let (inner, calls) = upstream(|n| {
        Err::<Res, std::io::Error>(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            format!("connection refused #{n}"),
        ))
    });
    let svc = ServiceBuilder::new().layer(layer).service(inner);

    let t0 = Instant::now();
    let err = svc.oneshot(get()).await.unwrap_err();

    assert_eq!(calls.offsets(t0), [secs(0.0), secs(0.5), secs(2.0)]);
    // The service's error is a BoxError; the client's own error is inside, untouched.
    let io = err
        .downcast_ref::<std::io::Error>()
        .expect("the client's io::Error");
    assert_eq!(io.kind(), std::io::ErrorKind::ConnectionRefused);
    assert_eq!(io.to_string(), "connection refused #3");
    assert_eq!(stats().retries, 2);
    assert_eq!(stats().give_ups_for(GiveUp::Attempts), 1);
}

#[tokio::test(start_paused = true)]
async fn connection_error_then_response_returns_the_response() {
    let layer = RetryLayer::builder()
        .schedule([secs(0.5)])
        .max_attempts(3)
        .build()
        .unwrap();
    let (inner, calls) = upstream(|n| {
        if n == 1 {
            Err::<Res, BoxError>("connection closed before message completed".into())
        } else {
            Ok(response(200, "ok"))
        }
    });
    let svc = ServiceBuilder::new().layer(layer).service(inner);
    let res = svc.oneshot(get()).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(calls.count(), 2);
}

/// tower clones the policy per call: attempts and the deadline start afresh for each
/// call, and concurrent calls do not share them.
#[tokio::test(start_paused = true)]
async fn each_call_has_its_own_attempts_and_deadline() {
    let layer = RetryLayer::builder()
        .schedule([secs(1.0)])
        .max_attempts(3)
        .deadline(secs(10.0))
        .build()
        .unwrap();
    let stats = {
        let layer = layer.clone();
        move || layer.stats()
    };
    let (inner, calls) = upstream(|_| Ok::<_, BoxError>(response(503, "down")));
    let mut svc = ServiceBuilder::new().layer(layer).service(inner);

    // The deadline counts from the call, not from when the service was made.
    tokio::time::advance(Duration::from_secs(100)).await;
    for round in 1..=2 {
        std::future::poll_fn(|cx| svc.poll_ready(cx)).await.unwrap();
        let t0 = Instant::now();
        let res = svc.call(get()).await.unwrap();
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(calls.count(), 3 * round);
        assert_eq!(Instant::now() - t0, secs(2.0));
    }

    // Two concurrent calls on clones: three attempts each.
    let (a, b) = tokio::join!(svc.clone().oneshot(get()), svc.clone().oneshot(get()));
    assert_eq!(a.unwrap().status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(b.unwrap().status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(calls.count(), 12);
    assert_eq!(stats().calls, 4);
    assert_eq!(stats().retries, 8);
    assert_eq!(stats().give_ups_for(GiveUp::Attempts), 4);
}

#[tokio::test(start_paused = true)]
async fn a_dropped_caller_stops_the_retries() {
    let layer = RetryLayer::builder()
        .schedule([secs(5.0)])
        .max_attempts(3)
        .build()
        .unwrap();
    let (inner, calls) = upstream(|_| Ok::<_, BoxError>(response(503, "down")));
    let svc = ServiceBuilder::new().layer(layer).service(inner);
    let timed_out = tokio::time::timeout(secs(1.0), svc.oneshot(get())).await;
    assert!(timed_out.is_err());
    tokio::time::sleep(secs(60.0)).await;
    assert_eq!(calls.count(), 1, "no attempt after the caller went away");
}

#[tokio::test(start_paused = true)]
async fn each_retry_and_each_give_up_is_a_tracing_event() {
    common::capture::start();
    let layer = RetryLayer::builder()
        .schedule([secs(0.5)])
        .max_attempts(3)
        .build()
        .unwrap();
    let (inner, _) = upstream(|_| Ok::<_, BoxError>(response(503, "down")));
    ServiceBuilder::new()
        .layer(layer.clone())
        .service(inner)
        .oneshot(get())
        .await
        .unwrap();
    // The wait is only in Telegram's body, read through the Telegram preset.
    let (inner, _) = upstream(|_| Ok::<_, BoxError>(response(429, TELEGRAM_429)));
    ServiceBuilder::new()
        .layer(layer)
        .layer(ClassifyLayer::new(Preset::telegram()))
        .service(inner)
        .oneshot(get())
        .await
        .unwrap();

    let events: Vec<String> = common::capture::events()
        .into_iter()
        .filter(|e| e.contains("retry:"))
        .collect();
    assert_eq!(events.len(), 4, "{events:#?}");
    for (i, e) in events[..2].iter().enumerate() {
        assert!(e.starts_with("DEBUG"), "{e}");
        assert!(e.contains(&format!("attempt={}", i + 1)), "{e}");
        assert!(e.contains("delay=500ms"), "{e}");
        assert!(e.contains("verdict=Transient"), "{e}");
        assert!(e.contains("status 503"), "{e}");
    }
    assert!(events[2].starts_with("INFO"), "{}", events[2]);
    assert!(events[2].contains(r#"reason="attempts""#), "{}", events[2]);
    assert!(events[3].contains(r#"reason="max_delay""#), "{}", events[3]);
    assert!(
        events[3].contains("server_wait=Some(4310s)"),
        "{}",
        events[3]
    );
    assert!(
        events.iter().all(|e| !e.contains("127.0.0.1")),
        "events never carry the URI"
    );
}

/// `RetryLayer` goes straight over hyper-util's `Client` (whose error type is its own):
/// connection errors to a closed port on 127.0.0.1 are retried on the schedule, and the
/// last one comes back as a `BoxError` holding the client's own error.
#[tokio::test]
async fn retries_connection_errors_of_a_hyper_util_client() {
    use hyper_util::{client::legacy::Client, rt::TokioExecutor};

    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = closed.local_addr().unwrap();
    drop(closed);

    let layer = RetryLayer::builder()
        .schedule([Duration::from_millis(10), Duration::from_millis(10)])
        .build()
        .unwrap();
    let stats = {
        let layer = layer.clone();
        move || layer.stats()
    };
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let svc = ServiceBuilder::new().layer(layer).service(client);

    let req = Request::get(format!("http://{addr}/gateway"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let err = tokio::time::timeout(Duration::from_secs(20), svc.oneshot(req))
        .await
        .expect("bounded")
        .unwrap_err();
    let client_err = err
        .downcast_ref::<hyper_util::client::legacy::Error>()
        .expect("the client's own error");
    assert!(client_err.is_connect(), "{client_err:?}");
    assert_eq!(stats().retries, 2);
    assert_eq!(stats().give_ups_for(GiveUp::Attempts), 1);
}

/// What a [`slow_upstream`] did: when it was called, how many answers it finished, and
/// how many calls were dropped before answering.
#[derive(Clone, Default)]
struct Slow {
    calls: Calls,
    finished: Arc<AtomicUsize>,
    dropped: Arc<AtomicUsize>,
}

impl Slow {
    fn finished(&self) -> usize {
        self.finished.load(Ordering::SeqCst)
    }

    fn dropped(&self) -> usize {
        self.dropped.load(Ordering::SeqCst)
    }
}

/// Counts a call's future dropped before it answered.
struct Unfinished(Option<Arc<AtomicUsize>>);

impl Drop for Unfinished {
    fn drop(&mut self) {
        if let Some(dropped) = self.0.take() {
            dropped.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// An upstream that takes `delay` to answer every call with `status`.
fn slow_upstream(
    delay: Duration,
    status: u16,
) -> (
    impl Service<Request<Full<Bytes>>, Response = Res, Error = BoxError, Future = impl Send>
        + Clone
        + Send,
    Slow,
) {
    let slow = Slow::default();
    let s = slow.clone();
    let svc = tower::service_fn(move |_req: Request<Full<Bytes>>| {
        s.calls.record();
        let s = s.clone();
        async move {
            let mut unfinished = Unfinished(Some(s.dropped.clone()));
            tokio::time::sleep(delay).await;
            unfinished.0 = None;
            s.finished.fetch_add(1, Ordering::SeqCst);
            Ok::<_, BoxError>(response(status, "slow"))
        }
    });
    (svc, slow)
}

/// The deadline bounds attempts, not only the waits between them: a retry sent at 2 s
/// to an upstream that takes 2 s is cut off at 3 s. The 429 received at 2 s was given
/// up for that retry, so the caller gets `DeadlineExceeded`, at 3 s exactly.
#[tokio::test(start_paused = true)]
async fn deadline_cuts_off_a_retry_still_in_flight() {
    let layer = RetryLayer::builder()
        .schedule([Duration::ZERO])
        .max_attempts(5)
        .deadline(secs(3.0))
        .build()
        .unwrap();
    let stats = {
        let layer = layer.clone();
        move || layer.stats()
    };
    let (inner, slow) = slow_upstream(secs(2.0), 429);
    let svc = ServiceBuilder::new().layer(layer).service(inner);

    let t0 = Instant::now();
    let err = svc.oneshot(get()).await.unwrap_err();

    assert_eq!(Instant::now() - t0, secs(3.0));
    let err = err
        .downcast_ref::<DeadlineExceeded>()
        .unwrap_or_else(|| panic!("not a DeadlineExceeded: {err}"));
    assert_eq!(err.deadline(), secs(3.0));
    assert!(err.to_string().contains("3s"), "{err}");
    assert_eq!(slow.calls.offsets(t0), [secs(0.0), secs(2.0)]);
    assert_eq!(slow.finished(), 1, "only the first attempt answered");
    assert_eq!(slow.dropped(), 1, "the second attempt was dropped");
    assert_eq!(stats().calls, 1);
    assert_eq!(stats().retries, 1);
    assert_eq!(stats().give_ups_for(GiveUp::Deadline), 1);
    assert_eq!(stats().give_ups, 1);
}

/// The first attempt is bounded too: an upstream that takes 10 s is dropped at the 3 s
/// deadline, by the call's future itself (before the caller drops it).
#[tokio::test(start_paused = true)]
async fn deadline_cuts_off_a_slow_first_attempt() {
    let layer = RetryLayer::builder().deadline(secs(3.0)).build().unwrap();
    let stats = {
        let layer = layer.clone();
        move || layer.stats()
    };
    let (inner, slow) = slow_upstream(secs(10.0), 200);
    let mut svc = ServiceBuilder::new().layer(layer).service(inner);

    std::future::poll_fn(|cx| svc.poll_ready(cx)).await.unwrap();
    let t0 = Instant::now();
    let call = svc.call(get());
    tokio::pin!(call);
    let err = (&mut call).await.unwrap_err();

    assert_eq!(Instant::now() - t0, secs(3.0));
    assert!(
        err.is::<DeadlineExceeded>(),
        "not a DeadlineExceeded: {err}"
    );
    assert_eq!(slow.calls.offsets(t0), [secs(0.0)]);
    assert_eq!(slow.finished(), 0);
    assert_eq!(
        slow.dropped(),
        1,
        "the attempt is dropped at the deadline, while the call's future still exists"
    );
    assert_eq!(stats().retries, 0);
    assert_eq!(stats().give_ups_for(GiveUp::Deadline), 1);

    // Nothing more happens later: no attempt is sent after the deadline.
    tokio::time::advance(secs(30.0)).await;
    assert_eq!(slow.calls.count(), 1);
    assert_eq!(slow.finished(), 0);
}

/// Without a deadline nothing is cut: a 10 s attempt runs to its answer.
#[tokio::test(start_paused = true)]
async fn without_a_deadline_a_slow_attempt_is_not_cut() {
    let layer = RetryLayer::builder().build().unwrap();
    let stats = {
        let layer = layer.clone();
        move || layer.stats()
    };
    let (inner, slow) = slow_upstream(secs(10.0), 200);
    let svc = ServiceBuilder::new().layer(layer).service(inner);

    let t0 = Instant::now();
    let res = svc.oneshot(get()).await.unwrap();

    assert_eq!(Instant::now() - t0, secs(10.0));
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(body_bytes(res).await, "slow");
    assert_eq!(slow.finished(), 1);
    assert_eq!(slow.dropped(), 0);
    assert_eq!(stats().give_ups, 0);
}

/// A deadline that is not reached changes nothing: a 2 s answer under a 3 s deadline
/// comes back as is.
#[tokio::test(start_paused = true)]
async fn an_answer_before_the_deadline_comes_back_as_is() {
    let layer = RetryLayer::builder().deadline(secs(3.0)).build().unwrap();
    let stats = {
        let layer = layer.clone();
        move || layer.stats()
    };
    let (inner, slow) = slow_upstream(secs(2.0), 200);
    let svc = ServiceBuilder::new().layer(layer).service(inner);

    let t0 = Instant::now();
    let res = svc.oneshot(get()).await.unwrap();

    assert_eq!(Instant::now() - t0, secs(2.0));
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(slow.finished(), 1);
    assert_eq!(slow.dropped(), 0);
    assert_eq!(stats().give_ups, 0);
}
