//! Behaviour of `FreshClientLayer`: a client that fails N times in a row at the
//! connection level is replaced by a new one made through the `MakeService`.

use std::convert::Infallible;
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response, StatusCode};
use ratewise::fresh::{ClientError, FreshClientLayer, MakeClientError};
use ratewise::vocabulary::RefusalKind;
use ratewise::{verdict_of_error, BoxError, CooldownLayer, RateLimitLayer, Refusal};
use tokio::sync::watch;
use tower::util::{BoxCloneService, MapRequest};
use tower::{service_fn, Layer, Service, ServiceBuilder, ServiceExt};

/// A connection-level error whose `Display` writes nothing, like the stale-pool
/// exceptions of the QQ Bot incident.
#[derive(Debug)]
struct Silent;

impl fmt::Display for Silent {
    fn fmt(&self, _: &mut fmt::Formatter<'_>) -> fmt::Result {
        Ok(())
    }
}

impl std::error::Error for Silent {}

/// What a client does with one request.
#[derive(Clone, Copy, Debug)]
enum Act {
    /// Answer with this status.
    Status(u16),
    /// Fail with [`Silent`].
    Fail,
}

/// A client of the mock upstream.
type MockClient = BoxCloneService<u32, Response<usize>, Silent>;
/// The `MakeService` of mock clients.
type MakeClient = BoxCloneService<(), MockClient, Infallible>;

/// A client of the mock upstream taking `http::Request`s (whose body is the request's
/// number), with ratewise layers inside it.
type HttpClient = BoxCloneService<Request<u32>, Response<usize>, BoxError>;
/// The `MakeService` of such clients.
type MakeHttpClient = BoxCloneService<(), HttpClient, Infallible>;
/// A mock client that takes `http::Request`s.
type MockHttpClient = MapRequest<MockClient, fn(Request<u32>) -> u32>;

/// Records which client (by the order the `MakeService` made it) saw which request.
#[derive(Clone, Default)]
struct Upstream {
    made: Arc<AtomicUsize>,
    seen: Arc<Mutex<Vec<(usize, u32)>>>,
}

impl Upstream {
    fn made(&self) -> usize {
        self.made.load(Ordering::SeqCst)
    }

    fn seen(&self) -> Vec<(usize, u32)> {
        self.seen.lock().unwrap().clone()
    }

    /// A `MakeService` whose client #`n` answers request `r` with `plan(n, r)`, after
    /// waiting for `gate` to be open when `plan` says so.
    fn make_service<P>(&self, plan: P) -> MakeClient
    where
        P: Fn(usize, u32) -> (Act, Option<watch::Receiver<bool>>) + Clone + Send + Sync + 'static,
    {
        let up = self.clone();
        BoxCloneService::new(service_fn(move |()| {
            let id = up.made.fetch_add(1, Ordering::SeqCst) + 1;
            let seen = up.seen.clone();
            let plan = plan.clone();
            async move {
                Ok::<_, Infallible>(BoxCloneService::new(service_fn(move |req: u32| {
                    seen.lock().unwrap().push((id, req));
                    let (act, gate) = plan(id, req);
                    async move {
                        if let Some(mut gate) = gate {
                            let _ = gate.wait_for(|open| *open).await;
                        }
                        match act {
                            Act::Status(code) => {
                                let mut res = Response::new(id);
                                *res.status_mut() = StatusCode::from_u16(code).unwrap();
                                Ok(res)
                            }
                            Act::Fail => Err(Silent),
                        }
                    }
                })))
            }
        }))
    }
}

impl Upstream {
    /// Like [`make_service`](Self::make_service), but every client is `layer` around
    /// the mock client, and takes `http::Request`s (ratewise's own layers key on them).
    fn make_layered<L, P>(&self, layer: L, plan: P) -> MakeHttpClient
    where
        L: Layer<MockHttpClient> + Clone + Send + Sync + 'static,
        L::Service: Service<Request<u32>, Response = Response<usize>> + Clone + Send + 'static,
        <L::Service as Service<Request<u32>>>::Error: Into<BoxError>,
        <L::Service as Service<Request<u32>>>::Future: Send + 'static,
        P: Fn(usize, u32) -> (Act, Option<watch::Receiver<bool>>) + Clone + Send + Sync + 'static,
    {
        let by_number: fn(Request<u32>) -> u32 = Request::into_body;
        BoxCloneService::new(self.make_service(plan).map_response(move |client| {
            let client = layer.layer(client.map_request(by_number));
            BoxCloneService::new(client.map_err(Into::<BoxError>::into))
        }))
    }
}

/// Request number `n` to the mock upstream's host.
fn http_req(n: u32) -> Request<u32> {
    Request::get("http://api.test/gateway").body(n).unwrap()
}

fn fresh_layer(threshold: u32) -> FreshClientLayer {
    FreshClientLayer::builder()
        .threshold(threshold)
        .build()
        .expect("valid config")
}

/// Sends request `req` through `svc` the way tower callers do: ready, then call.
async fn send<S>(svc: &mut S, req: u32) -> Result<Response<usize>, BoxError>
where
    S: Service<u32, Response = Response<usize>, Error = BoxError>,
{
    svc.ready().await?.call(req).await
}

fn client_error(err: &BoxError) -> &ClientError {
    err.downcast_ref::<ClientError>()
        .unwrap_or_else(|| panic!("expected a ClientError, got {err:?}"))
}

/// Waits (bounded) until `cond` holds, letting spawned tasks run.
async fn until(what: &str, cond: impl Fn() -> bool) {
    for _ in 0..1_000 {
        if cond() {
            return;
        }
        tokio::task::yield_now().await;
    }
    panic!("timed out waiting for: {what}");
}

const BOUND: Duration = Duration::from_secs(30);

#[tokio::test(start_paused = true)]
async fn fails_n_times_on_client_one_then_rebuilds_and_client_two_serves() {
    const N: u32 = 3;
    let up = Upstream::default();
    let layer = fresh_layer(N);
    let fresh = layer.clone();
    let make = up.make_service(|client, _| match client {
        1 => (Act::Fail, None),
        _ => (Act::Status(200), None),
    });
    let mut svc = ServiceBuilder::new().layer(layer).service(make);

    tokio::time::timeout(BOUND, async {
        assert_eq!(up.made(), 0, "the client is built lazily");
        for req in 1..=N {
            let err = send(&mut svc, req).await.expect_err("client #1 fails");
            let e = client_error(&err);
            let shown = err.to_string();
            assert!(!shown.is_empty());
            assert!(shown.contains("generation 1"), "{shown}");
            assert!(shown.contains(&format!("{req} of {N} in a row")), "{shown}");
            assert!(shown.contains("Silent"), "falls back to Debug: {shown}");
            assert_eq!((e.generation(), e.consecutive()), (1, req));
            assert_eq!(e.triggered_rebuild(), req == N);
            assert!(
                err.source().is_some_and(|s| s.is::<Silent>()),
                "source is the original"
            );
            assert_eq!(up.made(), 1, "no rebuild before the {N}th error");
        }
        assert_eq!(fresh.stats().consecutive_errors, u64::from(N));

        // The N+1-th request is the first on the rebuilt client.
        let res = send(&mut svc, N + 1).await.expect("client #2 serves");
        assert_eq!(*res.body(), 2);
        assert_eq!(up.made(), 2, "the MakeService was called exactly twice");
        assert_eq!(up.seen(), vec![(1, 1), (1, 2), (1, 3), (2, 4)]);
        assert_eq!(
            (
                fresh.stats().generation,
                fresh.stats().rebuilds,
                fresh.stats().consecutive_errors
            ),
            (2, 1, 0)
        );

        // Client #2 keeps serving; no further builds.
        send(&mut svc, N + 2).await.expect("client #2 serves");
        assert_eq!(up.made(), 2);
    })
    .await
    .expect("bounded");
}

#[tokio::test(start_paused = true)]
async fn a_response_in_between_resets_the_run() {
    let up = Upstream::default();
    let layer = fresh_layer(3);
    let fresh = layer.clone();
    // Client #1: requests 3 and 6 get a 200, every other one fails.
    let make = up.make_service(|client, req| match (client, req) {
        (1, 3) | (1, 6) => (Act::Status(200), None),
        (1, _) => (Act::Fail, None),
        _ => (Act::Status(200), None),
    });
    let mut svc = ServiceBuilder::new().layer(layer).service(make);

    tokio::time::timeout(BOUND, async {
        let mut runs = Vec::new();
        for req in 1..=9 {
            match send(&mut svc, req).await {
                Ok(res) => runs.push((req, *res.body(), 0)),
                Err(err) => runs.push((req, 1, client_error(&err).consecutive())),
            }
        }
        // 1,2 fail (run 1,2); 3 resets; 4,5 fail (run 1,2); 6 resets; 7,8,9 fail
        // (run 1,2,3): only the third error in a row rebuilds.
        assert_eq!(
            runs,
            vec![
                (1, 1, 1),
                (2, 1, 2),
                (3, 1, 0),
                (4, 1, 1),
                (5, 1, 2),
                (6, 1, 0),
                (7, 1, 1),
                (8, 1, 2),
                (9, 1, 3),
            ]
        );
        assert_eq!(up.made(), 1, "no rebuild while the runs stayed below 3");
        let res = send(&mut svc, 10).await.expect("client #2 serves");
        assert_eq!(*res.body(), 2);
        assert_eq!((up.made(), fresh.stats().rebuilds), (2, 1));
    })
    .await
    .expect("bounded");
}

#[tokio::test(start_paused = true)]
async fn http_500_is_not_a_connection_error() {
    let up = Upstream::default();
    let layer = fresh_layer(2);
    let fresh = layer.clone();
    // Client #1: every odd request fails, every even one gets a 500.
    let make = up.make_service(|_, req| {
        if req % 2 == 1 {
            (Act::Fail, None)
        } else {
            (Act::Status(500), None)
        }
    });
    let mut svc = ServiceBuilder::new().layer(layer).service(make);

    tokio::time::timeout(BOUND, async {
        for req in 1..=10 {
            match send(&mut svc, req).await {
                Ok(res) => {
                    assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
                    assert_eq!(*res.body(), 1, "served by client #1");
                }
                Err(err) => assert_eq!(client_error(&err).consecutive(), 1),
            }
        }
        assert_eq!(up.made(), 1, "500s end the run: no rebuild");
        assert_eq!(
            (fresh.stats().rebuilds, fresh.stats().consecutive_errors),
            (0, 0)
        );
    })
    .await
    .expect("bounded");

    // Only 500s: never a rebuild.
    let up = Upstream::default();
    let make = up.make_service(|_, _| (Act::Status(500), None));
    let mut svc = ServiceBuilder::new().layer(fresh_layer(1)).service(make);
    tokio::time::timeout(BOUND, async {
        for req in 1..=5 {
            let res = send(&mut svc, req).await.expect("a 500 is a response");
            assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
        }
        assert_eq!(up.made(), 1);
    })
    .await
    .expect("bounded");
}

/// What one request through the layered client came to.
#[derive(Debug, PartialEq, Eq)]
enum Got {
    /// Served by client #n.
    Served(usize),
    /// A `ClientError` with this run of errors.
    Counted(u32),
    /// The rate limiter's own `MaxWaitExceeded` (with its wait), not wrapped.
    MaxWait(Duration),
    /// The cooldown's own `CoolingDown` (with its remaining wait), not wrapped.
    Cooling(Duration),
}

type FreshHttp = ratewise::fresh::FreshClient<MakeHttpClient, ()>;

async fn send_http(svc: &mut FreshHttp, n: u32) -> Got {
    let result = match svc.ready().await {
        Ok(ready) => ready.call(http_req(n)).await,
        Err(err) => Err(err),
    };
    let err = match result {
        Ok(res) => return Got::Served(*res.body()),
        Err(err) => err,
    };
    if let Some(e) = err.downcast_ref::<ClientError>() {
        return Got::Counted(e.consecutive());
    }
    // Passed through as itself: the layers outside still read it as rate-limited.
    assert!(verdict_of_error(&*err).is_rate_limited(), "{err}");
    match err.downcast_ref::<Refusal>() {
        Some(e) if matches!(e.kind(), RefusalKind::MaxWait { .. }) => {
            Got::MaxWait(e.retry_after().unwrap())
        }
        Some(e) if matches!(e.kind(), RefusalKind::CoolingDown | RefusalKind::Probing) => {
            Got::Cooling(e.retry_after().unwrap())
        }
        _ => panic!("unexpected error: {err:?}"),
    }
}

/// A real `RateLimitLayer` (1/s, `max_wait` 10 ms) inside the client: its
/// `MaxWaitExceeded` comes back as itself, not as a `ClientError`, and it neither
/// counts towards a rebuild nor ends the run of connection errors around it.
#[tokio::test(start_paused = true)]
async fn rate_limiter_refusals_inside_the_client_neither_count_nor_reset_the_run() {
    let up = Upstream::default();
    let limit = RateLimitLayer::builder()
        .per_second(1)
        .burst(1)
        .max_wait(Duration::from_millis(10))
        .build()
        .unwrap();
    let layer = fresh_layer(3);
    let fresh = layer.clone();
    let make = up.make_layered(limit, |client, _| match client {
        1 => (Act::Fail, None),
        _ => (Act::Status(200), None),
    });
    let mut svc: FreshHttp = ServiceBuilder::new().layer(layer).service(make);

    tokio::time::timeout(BOUND, async {
        let mut got = Vec::new();
        for n in 1..=6 {
            // Odd requests wait for the limiter's next cell; even ones come right
            // after and would have to wait 1 s.
            if n % 2 == 1 && n > 1 {
                tokio::time::advance(Duration::from_secs(1)).await;
            }
            got.push(send_http(&mut svc, n).await);
            if n == 2 {
                assert_eq!(fresh.stats().consecutive_errors, 1, "the run is untouched");
            }
        }
        // If a refusal counted, request 3 would have retired client #1; if it ended
        // the run, request 5 would not.
        assert_eq!(
            got,
            [
                Got::Counted(1),
                Got::MaxWait(Duration::from_secs(1)),
                Got::Counted(2),
                Got::MaxWait(Duration::from_secs(1)),
                Got::Counted(3),
                Got::MaxWait(Duration::from_secs(1)),
            ]
        );
        assert_eq!((up.made(), fresh.stats().rebuilds), (2, 1));
        assert_eq!(
            up.seen(),
            [(1, 1), (1, 3), (1, 5)],
            "refused requests never reach the upstream"
        );

        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(send_http(&mut svc, 7).await, Got::Served(2));
        assert_eq!(up.seen().last(), Some(&(2, 7)));
    })
    .await
    .expect("bounded");
}

/// A real `CooldownLayer` (fail fast) inside the client, cooling because a stack that
/// shares it got a 429 `Retry-After: 5`: its `CoolingDown` comes back as itself and
/// changes nothing in the run; the probe after the cooldown continues the run.
#[tokio::test(start_paused = true)]
async fn cooldown_refusals_inside_the_client_neither_count_nor_reset_the_run() {
    let up = Upstream::default();
    let cooldown = CooldownLayer::builder()
        .exponential(Duration::from_secs(1), Duration::from_secs(60))
        .fail_fast()
        .build()
        .unwrap();
    let handle = cooldown.handle();
    let layer = fresh_layer(2);
    let fresh = layer.clone();
    let make = up.make_layered(cooldown.clone(), |client, _| match client {
        1 => (Act::Fail, None),
        _ => (Act::Status(200), None),
    });
    let mut svc: FreshHttp = ServiceBuilder::new().layer(layer).service(make);
    // Another stack on the same cooldown table, whose upstream says 429.
    let other =
        ServiceBuilder::new()
            .layer(cooldown)
            .service(service_fn(|_: Request<u32>| async {
                Response::builder()
                    .status(429)
                    .header("retry-after", "5")
                    .body(())
            }));

    tokio::time::timeout(BOUND, async {
        assert_eq!(send_http(&mut svc, 1).await, Got::Counted(1));

        let res = other.oneshot(http_req(100)).await.unwrap();
        assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
        let until = handle.cooling_until("api.test").expect("cooling");
        assert_eq!(until - tokio::time::Instant::now(), Duration::from_secs(5));

        for n in 2..=3 {
            assert_eq!(
                send_http(&mut svc, n).await,
                Got::Cooling(Duration::from_secs(5))
            );
        }
        assert_eq!(fresh.stats().consecutive_errors, 1, "the run is untouched");
        assert_eq!(up.made(), 1);

        // The probe after the cooldown fails too: the second error in a row, so the
        // client is retired (had the refusals counted, it would have been already;
        // had they ended the run, it would not be now).
        tokio::time::sleep_until(until).await;
        assert_eq!(send_http(&mut svc, 4).await, Got::Counted(2));
        assert_eq!(send_http(&mut svc, 5).await, Got::Served(2));
        assert_eq!((up.made(), fresh.stats().rebuilds), (2, 1));
        assert_eq!(up.seen(), [(1, 1), (1, 4), (2, 5)]);
    })
    .await
    .expect("bounded");
}

#[tokio::test(start_paused = true)]
async fn concurrent_failures_from_one_generation_cause_one_rebuild() {
    const N: u32 = 3;
    const IN_FLIGHT: u32 = 8;
    let up = Upstream::default();
    let layer = fresh_layer(N);
    let fresh = layer.clone();
    let (open, gate) = watch::channel(false);
    // Client #1 holds every request until the gate opens, then fails them all.
    let make = up.make_service(move |client, _| match client {
        1 => (Act::Fail, Some(gate.clone())),
        _ => (Act::Status(200), None),
    });
    let svc = ServiceBuilder::new().layer(layer).service(make);

    tokio::time::timeout(BOUND, async {
        let tasks: Vec<_> = (1..=IN_FLIGHT)
            .map(|req| tokio::spawn(svc.clone().oneshot(req)))
            .collect();
        until("all requests reach client #1", || {
            up.seen().len() == IN_FLIGHT as usize
        })
        .await;
        assert_eq!(up.made(), 1, "clones share one client");
        open.send(true).unwrap();

        let mut errors = Vec::new();
        for task in tasks {
            errors.push(task.await.unwrap().expect_err("client #1 fails"));
        }
        let rebuilds = errors
            .iter()
            .filter(|e| client_error(e).triggered_rebuild())
            .count();
        let counted = errors
            .iter()
            .filter(|e| client_error(e).is_counted())
            .count();
        assert_eq!(rebuilds, 1, "one error retires the client");
        assert_eq!(
            counted, N as usize,
            "errors after retirement are not counted again"
        );
        for err in &errors {
            let shown = err.to_string();
            assert!(shown.contains("generation 1"), "{shown}");
            assert!(err.source().is_some_and(|s| s.is::<Silent>()));
        }

        // The next requests, from several clones at once, share one new client.
        let next: Vec<_> = (IN_FLIGHT + 1..=IN_FLIGHT + 4)
            .map(|req| tokio::spawn(svc.clone().oneshot(req)))
            .collect();
        for task in next {
            let res = task.await.unwrap().expect("client #2 serves");
            assert_eq!(*res.body(), 2);
        }
        assert_eq!(up.made(), 2, "one rebuild for the burst");
        assert_eq!((fresh.stats().generation, fresh.stats().rebuilds), (2, 1));
    })
    .await
    .expect("bounded");
}

#[tokio::test(start_paused = true)]
async fn request_in_flight_on_a_retired_client_finishes_on_it() {
    let up = Upstream::default();
    let layer = fresh_layer(2);
    let fresh = layer.clone();
    let (open, gate) = watch::channel(false);
    // Client #1: request 100 waits for the gate and then succeeds; the rest fail.
    // Client #2: request 3 fails, the rest succeed.
    let make = up.make_service(move |client, req| match (client, req) {
        (1, 100) => (Act::Status(200), Some(gate.clone())),
        (1, _) | (2, 3) => (Act::Fail, None),
        _ => (Act::Status(200), None),
    });
    let mut svc = ServiceBuilder::new().layer(layer).service(make);

    tokio::time::timeout(BOUND, async {
        let slow = tokio::spawn(svc.clone().oneshot(100));
        until("the slow request reaches client #1", || {
            up.seen().len() == 1
        })
        .await;
        send(&mut svc, 1).await.expect_err("client #1 fails");
        send(&mut svc, 2)
            .await
            .expect_err("client #1 fails, and is retired");
        send(&mut svc, 3).await.expect_err("client #2 fails once");
        assert_eq!((up.made(), fresh.stats().consecutive_errors), (2, 1));

        open.send(true).unwrap();
        let res = slow.await.unwrap().expect("the slow request succeeds");
        assert_eq!(*res.body(), 1, "it finished on the retired client #1");
        assert_eq!(
            fresh.stats().consecutive_errors,
            1,
            "a response from client #1 does not reset client #2's run"
        );
        assert_eq!(up.seen(), vec![(1, 100), (1, 1), (1, 2), (2, 3)]);
    })
    .await
    .expect("bounded");
}

#[tokio::test(start_paused = true)]
async fn clones_share_the_client_and_the_run() {
    let up = Upstream::default();
    let make = up.make_service(|client, _| match client {
        1 => (Act::Fail, None),
        _ => (Act::Status(200), None),
    });
    let mut a = ServiceBuilder::new().layer(fresh_layer(4)).service(make);
    let mut b = a.clone();

    tokio::time::timeout(BOUND, async {
        for i in 1..=4 {
            let svc = if i % 2 == 1 { &mut a } else { &mut b };
            let err = send(svc, i).await.expect_err("client #1 fails");
            assert_eq!(client_error(&err).consecutive(), i, "one run across clones");
        }
        assert_eq!(up.made(), 1);
        assert_eq!(*send(&mut b, 10).await.unwrap().body(), 2);
        assert_eq!(*send(&mut a, 11).await.unwrap().body(), 2);
        assert_eq!(up.made(), 2);
    })
    .await
    .expect("bounded");
}

#[tokio::test(start_paused = true)]
async fn callers_waiting_for_a_build_share_it_and_survive_others_giving_up() {
    let made = Arc::new(AtomicUsize::new(0));
    let (open, gate) = watch::channel(false);
    let make = {
        let made = made.clone();
        service_fn(move |()| {
            let id = made.fetch_add(1, Ordering::SeqCst) + 1;
            let mut gate = gate.clone();
            async move {
                // A slow build.
                let _ = gate.wait_for(|open| *open).await;
                Ok::<_, Infallible>(service_fn(move |_: u32| async move {
                    Ok::<_, Silent>(Response::new(id))
                }))
            }
        })
    };
    let svc = ServiceBuilder::new().layer(fresh_layer(1)).service(make);

    tokio::time::timeout(BOUND, async {
        let starter = tokio::spawn(svc.clone().oneshot(1));
        until("the build starts", || made.load(Ordering::SeqCst) == 1).await;
        let mut waiters: Vec<_> = (2..=4)
            .map(|req| tokio::spawn(svc.clone().oneshot(req)))
            .collect();
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        // The caller that started the build gives up, and so does the one that polled
        // the build last (whose waker the build's future holds).
        let last = waiters.pop().unwrap();
        for quitter in [starter, last] {
            quitter.abort();
            assert!(quitter.await.unwrap_err().is_cancelled());
        }

        open.send(true).unwrap();
        for task in waiters {
            let res = task.await.unwrap().expect("served once the build finishes");
            assert_eq!(*res.body(), 1);
        }
        assert_eq!(made.load(Ordering::SeqCst), 1, "one build for every caller");
    })
    .await
    .expect("bounded");
}

#[tokio::test(start_paused = true)]
async fn a_failed_build_names_the_target_and_the_next_request_retries() {
    let attempts = Arc::new(AtomicUsize::new(0));
    let make = {
        let attempts = attempts.clone();
        service_fn(move |base: &'static str| {
            let n = attempts.fetch_add(1, Ordering::SeqCst) + 1;
            async move {
                if n == 1 {
                    return Err(Silent);
                }
                Ok(service_fn(move |_: u32| async move {
                    Ok::<_, Silent>(Response::new(base.len()))
                }))
            }
        })
    };
    let layer = FreshClientLayer::builder()
        .target("http://127.0.0.1:9")
        .name("qq-gateway")
        .build()
        .unwrap();
    let fresh = layer.clone();
    let mut svc = ServiceBuilder::new().layer(layer).service(make);

    tokio::time::timeout(BOUND, async {
        let err = svc
            .ready()
            .await
            .unwrap()
            .call(1)
            .await
            .expect_err("build fails");
        let e = err
            .downcast_ref::<MakeClientError>()
            .unwrap_or_else(|| panic!("expected a MakeClientError, got {err:?}"));
        assert_eq!((e.target(), e.generation()), ("qq-gateway", 1));
        let shown = err.to_string();
        assert!(
            shown.contains("qq-gateway") && shown.contains("Silent"),
            "{shown}"
        );
        assert!(err.source().is_some_and(|s| s.is::<Silent>()));
        assert_eq!(fresh.stats().make_failures, 1);

        let res = svc
            .ready()
            .await
            .unwrap()
            .call(2)
            .await
            .expect("retried build serves");
        assert_eq!(*res.body(), "http://127.0.0.1:9".len());
        assert_eq!(attempts.load(Ordering::SeqCst), 2);
        assert_eq!((fresh.stats().generation, fresh.stats().rebuilds), (1, 0));
    })
    .await
    .expect("bounded");
}

#[test]
fn zero_threshold_is_refused_by_the_builder() {
    let err = FreshClientLayer::builder()
        .threshold(0)
        .build()
        .unwrap_err();
    assert_eq!(err.field(), "threshold");
    assert!(err.to_string().contains("threshold"));
}

/// Against a real server: the crate's QQ gateway mock on 127.0.0.1.
#[cfg(feature = "testing")]
mod real_server {
    use super::*;
    use http::Method;
    use ratewise::testing::{body_json, client, empty_request, qq, MockServer, QqGateway};
    use tokio::net::TcpListener;

    /// A base URL on 127.0.0.1 where nothing listens.
    async fn dead_url() -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        format!("http://{addr}")
    }

    #[tokio::test]
    async fn hyper_client_on_a_dead_port_is_rebuilt_for_the_live_server() {
        const N: u32 = 2;
        let gateway = QqGateway::new();
        let server = MockServer::start(gateway.router()).await.unwrap();
        let live = server.url("");
        let target = Arc::new(Mutex::new(dead_url().await));
        let made = Arc::new(AtomicUsize::new(0));

        // The MakeService builds a hyper-util client for whatever base URL the shared
        // state holds when it is called.
        let make = {
            let (target, made) = (target.clone(), made.clone());
            service_fn(move |()| {
                made.fetch_add(1, Ordering::SeqCst);
                let base = target.lock().unwrap().clone();
                async move {
                    let client = client();
                    Ok::<_, Infallible>(service_fn(move |path: &'static str| {
                        let client = client.clone();
                        let uri = format!("{base}{path}");
                        async move {
                            let req = empty_request(Method::GET, &uri)?;
                            let res = client.request(req).await?;
                            Ok::<_, BoxError>(res)
                        }
                    }))
                }
            })
        };
        let layer = FreshClientLayer::builder().threshold(N).build().unwrap();
        let fresh = layer.clone();
        let mut svc = ServiceBuilder::new().layer(layer).service(make);

        tokio::time::timeout(Duration::from_secs(20), async {
            for i in 1..=N {
                let err = svc
                    .ready()
                    .await
                    .unwrap()
                    .call("/gateway")
                    .await
                    .expect_err("nothing listens on the dead port");
                let e = client_error(&err);
                assert_eq!((e.generation(), e.consecutive()), (1, i));
                let source = err
                    .source()
                    .and_then(|s| s.downcast_ref::<hyper_util::client::legacy::Error>())
                    .expect("source is hyper-util's error");
                assert!(source.is_connect(), "{source:?}");
                let shown = err.to_string();
                assert!(
                    shown.contains("generation 1") && shown.len() > 40,
                    "{shown}"
                );
            }
            assert_eq!(
                (
                    made.load(Ordering::SeqCst),
                    fresh.stats().consecutive_errors
                ),
                (1, u64::from(N))
            );

            // The upstream comes back; the next request runs on a client built for it.
            *target.lock().unwrap() = live;
            let res = svc
                .ready()
                .await
                .unwrap()
                .call("/gateway")
                .await
                .expect("the rebuilt client reaches the live server");
            assert_eq!(res.status(), StatusCode::OK);
            let body = body_json(res.into_body()).await.unwrap();
            assert_eq!(body["url"], qq::DEFAULT_URL);
            assert_eq!(
                gateway.hits().count(),
                1,
                "only the rebuilt client got through"
            );
            assert_eq!(made.load(Ordering::SeqCst), 2);
            assert_eq!((fresh.stats().generation, fresh.stats().rebuilds), (2, 1));
        })
        .await
        .expect("bounded");
        server.shutdown().await;
    }
}
