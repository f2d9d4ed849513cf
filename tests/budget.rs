//! One call, one budget, through the preset stacks: a refusal past `max_wait` comes
//! back at once, requests a cooldown held back are sent again without spending
//! attempts, a slow error body is cut off at the call's deadline, and `outcome` reports
//! a rate limit whichever way the call ended.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use ratewise::vocabulary::RefusalKind;
use ratewise::{outcome, BoxError, ClientStackLayer, Platform, Refusal, Verdict};
use tokio::time::Instant;
use tower::{service_fn, Layer, ServiceExt};

type Body = Full<Bytes>;

fn get() -> Request<Body> {
    Request::post("http://127.0.0.1:1/api/paas/v4/chat/completions")
        .body(Body::from("{}"))
        .unwrap()
}

/// An upstream that records when it was called (paused clock) and answers with
/// `answer(n)` for its `n`-th call (from 0), 100 ms after the call.
fn upstream(
    calls: Arc<Mutex<Vec<Duration>>>,
    answer: fn(usize) -> Response<Body>,
) -> impl tower::Service<
    Request<Body>,
    Response = Response<Body>,
    Error = Infallible,
    Future = impl Send,
> + Clone {
    let start = Instant::now();
    service_fn(move |_req: Request<Body>| {
        let n = {
            let mut calls = calls.lock().unwrap();
            calls.push(start.elapsed());
            calls.len() - 1
        };
        async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            Ok::<_, Infallible>(answer(n))
        }
    })
}

/// Runs `call`, checks that it fails without the paused clock moving (refused at once,
/// no sleep, not at a deadline), and returns its typed refusal.
async fn refused_at_once<T: std::fmt::Debug>(
    call: impl std::future::Future<Output = Result<T, BoxError>>,
) -> Refusal {
    let start = Instant::now();
    let err = call.await.unwrap_err();
    assert_eq!(
        Instant::now(),
        start,
        "refused at once: the paused clock did not move"
    );
    Refusal::find(&*err).expect("a typed refusal").clone()
}

fn ok(_: usize) -> Response<Body> {
    Response::new(Body::from(r#"{"choices":[]}"#))
}

/// Bug: with `max_wait(100 ms)` on the preset's limiter, the retry waited out the
/// limiter's refusal (60 s, within its `max_delay`) and answered 200 a minute later.
#[tokio::test(start_paused = true)]
async fn max_wait_was_not_the_callers_budget() {
    let calls = Arc::new(Mutex::new(Vec::new()));
    let glm = ClientStackLayer::preset(Platform::Glm)
        .rate_limit(|r| r.per_minute(1).max_wait(Duration::from_millis(100)))
        .build()
        .unwrap()
        .layer(upstream(calls.clone(), ok));

    assert_eq!(glm.clone().oneshot(get()).await.unwrap().status(), 200);
    let refusal = refused_at_once(glm.clone().oneshot(get())).await;
    assert!(matches!(refusal.kind(), RefusalKind::MaxWait { .. }));
    // The bucket refills 60 s (plus the preset's 1 % margin) after the first call took
    // it, 100 ms ago.
    let wait = refusal.retry_after().unwrap();
    assert!(
        wait >= Duration::from_millis(59_900) && wait <= Duration::from_millis(60_500),
        "{wait:?}"
    );
    assert_eq!(calls.lock().unwrap().len(), 1, "the second call never left");
}

/// Bug: requests already queued in the limiter when a 429 started a cooldown were
/// refused locally, and the retry counted each refusal as an attempt, so callers who
/// were willing to wait lost their messages.
#[tokio::test(start_paused = true)]
async fn local_refusals_were_counted_as_attempts() {
    let calls = Arc::new(Mutex::new(Vec::new()));
    let stack = ClientStackLayer::preset(Platform::Telegram)
        .rate_limit(|r| r.per_second(1).burst(1))
        // One attempt: only a call that reaches the upstream counts.
        .retry(|r| r.max_attempts(1))
        .build()
        .unwrap();
    let bot = stack.layer(upstream(calls.clone(), |n| {
        if n == 0 {
            Response::builder()
                .status(StatusCode::TOO_MANY_REQUESTS)
                .header("retry-after", "5")
                .body(Body::from(
                    r#"{"ok":false,"error_code":429,"parameters":{"retry_after":5}}"#,
                ))
                .unwrap()
        } else {
            ok(n)
        }
    }));

    // Three messages at once: the first goes at 0 s and is answered at 0.1 s, limited
    // for 5 s; the other two passed the open cooldown and were queued in the limiter (1
    // per second) when the cooldown began.
    let (a, b, c) = tokio::join!(
        bot.clone().oneshot(get()),
        bot.clone().oneshot(get()),
        bot.clone().oneshot(get()),
    );
    assert_eq!(a.unwrap().status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        b.unwrap().status(),
        StatusCode::OK,
        "delivered after the cooldown"
    );
    assert_eq!(
        c.unwrap().status(),
        StatusCode::OK,
        "delivered after the cooldown"
    );

    let calls = calls.lock().unwrap().clone();
    assert_eq!(calls.len(), 3, "{calls:?}");
    assert_eq!(calls[0], Duration::ZERO);
    assert!(
        calls[1..].iter().all(|t| *t >= Duration::from_millis(5100)),
        "no call during the cooldown: {calls:?}"
    );
    let stats = stack.stats();
    assert!(stats.retry.held >= 2, "{stats:?}");
    assert_eq!(
        stats.retry.retries, 0,
        "no attempt was spent on a local refusal"
    );
}

/// `outcome` reports a rate limit the same way whether the upstream's 429 came back
/// (a wait longer than `max_delay`) or a layer refused locally.
#[tokio::test(start_paused = true)]
async fn one_outcome_reports_an_upstream_429_and_a_local_refusal_alike() {
    let calls = Arc::new(Mutex::new(Vec::new()));
    let banned = ClientStackLayer::preset(Platform::Telegram)
        .build()
        .unwrap()
        .layer(upstream(calls.clone(), |_| {
            Response::builder()
                .status(StatusCode::TOO_MANY_REQUESTS)
                .body(Body::from(
                    r#"{"ok":false,"error_code":429,"parameters":{"retry_after":4310}}"#,
                ))
                .unwrap()
        }));
    let first = banned.clone().oneshot(get()).await;
    assert!(first.is_ok(), "the upstream's own 429, past max_delay");
    assert_eq!(
        outcome(&first),
        Verdict::rate_limited(Some(Duration::from_secs(4310)))
    );
    let second = banned.clone().oneshot(get()).await;
    assert!(second.is_err(), "refused locally: the key is cooling");
    let Verdict::RateLimited {
        retry_after: Some(wait),
    } = outcome(&second)
    else {
        panic!("not rate-limited: {:?}", outcome(&second));
    };
    assert!(wait > Duration::from_secs(4300) && wait <= Duration::from_secs(4310));
    assert_eq!(calls.lock().unwrap().len(), 1);

    let ok_result: Result<Response<Body>, BoxError> = Ok(ok(0));
    assert_eq!(outcome(&ok_result), Verdict::Success);
}

/// Bug: the presets set no total deadline, so a 429 whose body trickled in held a
/// caller for as long as the body took, attempt after attempt. Over a real socket:
/// the server sends one byte of the error body every 200 ms (it would take 60 s); the
/// call ends at its 2 s deadline.
#[tokio::test]
async fn slow_error_bodies_held_the_caller_past_its_deadline() {
    use hyper_util::{client::legacy::Client, rt::TokioExecutor};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        // Bounded: at most 4 connections, each at most 300 bytes over 60 s.
        for _ in 0..4 {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = socket.read(&mut buf).await;
                let head = "HTTP/1.1 429 Too Many Requests\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n";
                if socket.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                for _ in 0..300 {
                    if socket.write_all(b"1\r\n \r\n").await.is_err() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            });
        }
    });

    let client = Client::builder(TokioExecutor::new()).build_http::<Body>();
    let glm = ClientStackLayer::preset(Platform::Glm)
        .retry(|r| r.deadline(Duration::from_secs(2)))
        .build()
        .unwrap()
        .layer(client);
    let req = Request::post(format!("http://{addr}/api/paas/v4/chat/completions"))
        .body(Body::from("{}"))
        .unwrap();
    let start = std::time::Instant::now();
    let result = tokio::time::timeout(Duration::from_secs(30), glm.oneshot(req))
        .await
        .expect("the call ended by itself");
    let elapsed = start.elapsed();
    let err = result.expect_err("cut off at the deadline");
    assert!(
        err.is::<ratewise::retry::DeadlineExceeded>(),
        "not a DeadlineExceeded: {err}"
    );
    assert!(
        elapsed < Duration::from_secs(10),
        "held for {elapsed:?}, the body alone would take 60 s"
    );
    server.abort();
}

/// The call's deadline is every layer's budget: the limiter does not queue a request
/// past it (its `max_wait` is longer), it refuses at once with the typed refusal and
/// the wait.
#[tokio::test(start_paused = true)]
async fn the_limiter_reads_what_is_left_of_the_calls_deadline() {
    let calls = Arc::new(Mutex::new(Vec::new()));
    let glm = ClientStackLayer::preset(Platform::Glm)
        .rate_limit(|r| r.per_minute(6).burst(1).max_wait(Duration::from_secs(60)))
        .retry(|r| r.deadline(Duration::from_secs(2)))
        .build()
        .unwrap()
        .layer(upstream(calls.clone(), ok));

    assert_eq!(glm.clone().oneshot(get()).await.unwrap().status(), 200);
    // The bucket refills in 10 s: more than the call's 2 s, less than max_wait. The
    // typed refusal at once, not `DeadlineExceeded` at 2 s.
    let refusal = refused_at_once(glm.clone().oneshot(get())).await;
    assert!(
        matches!(refusal.kind(), RefusalKind::MaxWait { max_wait } if *max_wait == Duration::from_secs(2)),
        "{refusal}"
    );
    let wait = refusal.retry_after().unwrap();
    assert!(
        wait > Duration::from_secs(9) && wait <= Duration::from_secs(11),
        "{wait:?}"
    );
    assert_eq!(calls.lock().unwrap().len(), 1);
}

/// The pool reads the call's deadline too: with every backend cooling for longer than
/// the call has left, it refuses at once instead of waiting until its own `max_wait`.
#[tokio::test(start_paused = true)]
async fn the_pool_reads_what_is_left_of_the_calls_deadline() {
    use ratewise::{Pool, RetryLayer};

    let calls = Arc::new(Mutex::new(Vec::new()));
    let backend = upstream(calls.clone(), |_| {
        Response::builder()
            .status(StatusCode::TOO_MANY_REQUESTS)
            .header("retry-after", "10")
            .body(Body::from("{}"))
            .unwrap()
    });
    let pool: Pool<Body, Body> = Pool::builder()
        .primary("glm", backend)
        .max_wait(Duration::from_secs(30))
        .build()
        .unwrap();
    let client = RetryLayer::builder()
        .deadline(Duration::from_secs(1))
        .build()
        .unwrap()
        .layer(pool);

    // The backend's own 429: its 10 s wait does not fit the call's 1 s.
    let first = client.clone().oneshot(get()).await.unwrap();
    assert_eq!(first.status(), StatusCode::TOO_MANY_REQUESTS);
    // Now it cools for 10 s: refused at once, not at the deadline.
    let refusal = refused_at_once(client.clone().oneshot(get())).await;
    assert_eq!(
        refusal.kind(),
        &RefusalKind::AllBackendsCooling {
            max_wait: Duration::from_secs(1)
        }
    );
    assert_eq!(calls.lock().unwrap().len(), 1);
}

/// A per-request budget: one call's own patience, through an extension, instead of the
/// stack's deadline. The limiter reads it like the stack's.
#[tokio::test(start_paused = true)]
async fn a_request_carries_its_own_budget() {
    use ratewise::vocabulary::Budget;

    let calls = Arc::new(Mutex::new(Vec::new()));
    let glm = ClientStackLayer::preset(Platform::Glm)
        .rate_limit(|r| r.per_minute(6).burst(1).max_wait(Duration::from_secs(60)))
        .build()
        .unwrap()
        .layer(upstream(calls.clone(), ok));
    assert_eq!(glm.clone().oneshot(get()).await.unwrap().status(), 200);

    // The bucket refills in 10 s. With a 2 s budget of its own, the call is refused at
    // once; with the preset's 120 s deadline, the next one waits and goes.
    let mut impatient = get();
    impatient
        .extensions_mut()
        .insert(Budget(Duration::from_secs(2)));
    let refusal = refused_at_once(glm.clone().oneshot(impatient)).await;
    assert_eq!(
        refusal.kind(),
        &RefusalKind::MaxWait {
            max_wait: Duration::from_secs(2)
        }
    );
    let start = Instant::now();
    assert_eq!(glm.clone().oneshot(get()).await.unwrap().status(), 200);
    assert!(
        start.elapsed() >= Duration::from_secs(9),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(calls.lock().unwrap().len(), 2);
}
