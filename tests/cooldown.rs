//! Behaviour of `CooldownLayer`, on tokio's paused clock.
//!
//! The inner service is a scripted upstream that records when each call reached it
//! (time since the test's start) and answers from a script. Rate-limited answers are
//! plain 429s with a `Retry-After` header: the cooldown judges them itself (through
//! `verdict_of`, whose hint comes from the crate's one `Retry-After` parser), with no
//! `ClassifyLayer` and no verdict in their extensions.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
    time::Duration,
};

use http::{Request, Response, StatusCode};
use ratewise::{
    cooldown::{
        Cooldown, CooldownBuilder, CooldownEvent, CooldownHandle, CooldownReason, KeyState,
    },
    key::RequestRef,
    vocabulary::RefusalKind,
    BoxError, CooldownLayer, Refusal, Verdict,
};
use tokio::time::{sleep, sleep_until, timeout, Instant};
use tower::{Service, ServiceBuilder, ServiceExt};

fn s(secs: f64) -> Duration {
    Duration::from_secs_f64(secs)
}

#[derive(Clone, Debug)]
enum Reply {
    Status {
        status: u16,
        retry_after: Option<u64>,
        delay: Duration,
    },
    ConnError {
        delay: Duration,
    },
}

/// 429, with a `Retry-After` of `ra` seconds when given, answered at once.
fn rl(ra: Option<u64>) -> Reply {
    Reply::Status {
        status: 429,
        retry_after: ra,
        delay: Duration::ZERO,
    }
}

fn status(code: u16) -> Reply {
    Reply::Status {
        status: code,
        retry_after: None,
        delay: Duration::ZERO,
    }
}

fn ok() -> Reply {
    status(200)
}

/// The same reply, answered `delay` after the call.
fn after(delay: Duration, reply: Reply) -> Reply {
    match reply {
        Reply::Status {
            status,
            retry_after,
            ..
        } => Reply::Status {
            status,
            retry_after,
            delay,
        },
        Reply::ConnError { .. } => Reply::ConnError { delay },
    }
}

/// What [`Upstream::service`] is: a cloneable service answering from the script.
trait UpstreamService:
    Service<Request<()>, Response = Response<()>, Error = BoxError, Future: Send>
    + Clone
    + Send
    + 'static
{
}

impl<S> UpstreamService for S where
    S: Service<Request<()>, Response = Response<()>, Error = BoxError, Future: Send>
        + Clone
        + Send
        + 'static
{
}

#[derive(Clone)]
struct Upstream {
    start: Instant,
    calls: Arc<Mutex<Vec<(Duration, String)>>>,
    script: Arc<Mutex<VecDeque<Reply>>>,
    fallback: Reply,
}

impl Upstream {
    fn new(script: impl IntoIterator<Item = Reply>, fallback: Reply) -> Self {
        Upstream {
            start: Instant::now(),
            calls: Arc::default(),
            script: Arc::new(Mutex::new(script.into_iter().collect())),
            fallback,
        }
    }

    /// When each call reached the upstream, since the start.
    fn times(&self) -> Vec<Duration> {
        self.calls.lock().unwrap().iter().map(|c| c.0).collect()
    }

    fn count(&self) -> usize {
        self.calls.lock().unwrap().len()
    }

    /// The stack under test: `layer` over this upstream, and the layer's handle.
    fn stack(&self, layer: CooldownLayer) -> (CooldownHandle, Cooldown<impl UpstreamService>) {
        let handle = layer.handle();
        let svc = ServiceBuilder::new().layer(layer).service(self.service());
        (handle, svc)
    }

    fn service(&self) -> impl UpstreamService {
        let up = self.clone();
        tower::service_fn(move |req: Request<()>| {
            let up = up.clone();
            async move { up.answer(req).await }
        })
    }

    async fn answer(self, req: Request<()>) -> Result<Response<()>, BoxError> {
        let host = req.uri().host().unwrap_or_default().to_owned();
        self.calls
            .lock()
            .unwrap()
            .push((self.start.elapsed(), host));
        let reply = self
            .script
            .lock()
            .unwrap()
            .pop_front()
            .unwrap_or_else(|| self.fallback.clone());
        match reply {
            Reply::ConnError { delay } => {
                sleep(delay).await;
                Err("connection reset by peer".into())
            }
            Reply::Status {
                status,
                retry_after,
                delay,
            } => {
                sleep(delay).await;
                let mut res = Response::builder().status(status);
                if let Some(ra) = retry_after {
                    res = res.header("retry-after", ra.to_string());
                }
                Ok(res.body(())?)
            }
        }
    }
}

fn req(host: &str) -> Request<()> {
    Request::get(format!("http://{host}/bot1/sendMessage"))
        .body(())
        .unwrap()
}

/// Whether `err` is the cooldown's refusal: cooling down, or a probe in flight.
fn is_cooling(err: &BoxError) -> bool {
    matches!(
        err.downcast_ref::<Refusal>().map(Refusal::kind),
        Some(RefusalKind::CoolingDown | RefusalKind::Probing)
    )
}

fn cooling(err: &BoxError) -> &Refusal {
    err.downcast_ref::<Refusal>()
        .filter(|_| is_cooling(err))
        .unwrap_or_else(|| panic!("expected CoolingDown, got {err}"))
}

type Events = Arc<Mutex<Vec<CooldownEvent>>>;

/// The cooldown `configure` sets up, recording every event it emits.
fn recorded(configure: impl FnOnce(CooldownBuilder) -> CooldownBuilder) -> (Events, CooldownLayer) {
    let events: Events = Arc::default();
    let sink = events.clone();
    let layer = configure(CooldownLayer::builder())
        .on_event(move |e: &CooldownEvent| sink.lock().unwrap().push(e.clone()))
        .build()
        .unwrap();
    (events, layer)
}

/// `(n, duration)` of every `Started` event.
fn started(events: &Events) -> Vec<(u32, Duration)> {
    events
        .lock()
        .unwrap()
        .iter()
        .filter_map(|e| match e {
            CooldownEvent::Started { n, duration, .. } => Some((*n, *duration)),
            _ => None,
        })
        .collect()
}

#[tokio::test(start_paused = true)]
async fn cooldown_is_extended_never_shortened() {
    // Call 0 is slow and answers "retry after 5" at t=2; call 1 answers "retry after
    // 100" at t=0. The short signal arrives second, from a request already in flight.
    let up = Upstream::new([after(s(2.0), rl(Some(5))), rl(Some(100))], ok());
    let layer = CooldownLayer::builder().fail_fast().build().unwrap();
    let (handle, svc) = up.stack(layer);
    let start = up.start;

    let slow = tokio::spawn(svc.clone().oneshot(req("a.test")));
    tokio::task::yield_now().await;
    assert_eq!(up.count(), 1, "the slow request is in flight");
    let long = svc.clone().oneshot(req("a.test")).await.unwrap();
    assert_eq!(long.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(handle.cooling_until("a.test"), Some(start + s(100.0)));

    let short = slow.await.unwrap().unwrap();
    assert_eq!(short.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(Instant::now(), start + s(2.0));
    assert_eq!(
        handle.state("a.test"),
        KeyState::Cooling {
            until: start + s(100.0),
            n: 1
        },
        "the short signal neither shortened the cooldown nor counted as consecutive"
    );

    for t in [2.0, 7.5, 50.0, 99.5] {
        sleep_until(start + s(t)).await;
        let err = svc.clone().oneshot(req("a.test")).await.unwrap_err();
        assert_eq!(cooling(&err).retry_after().unwrap(), s(100.0 - t));
    }
    assert_eq!(
        up.times(),
        [s(0.0), s(0.0)],
        "nothing reached the upstream before t=100"
    );

    sleep_until(start + s(100.0)).await;
    let res = svc.clone().oneshot(req("a.test")).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(up.times(), [s(0.0), s(0.0), s(100.0)]);
}

#[tokio::test(start_paused = true)]
async fn in_flight_answer_with_longer_retry_after_extends() {
    let up = Upstream::new([after(s(2.0), rl(Some(200))), rl(Some(100))], ok());
    let (events, layer) = recorded(|b| b.fail_fast());
    let (handle, svc) = up.stack(layer);
    let start = up.start;

    let slow = tokio::spawn(svc.clone().oneshot(req("a.test")));
    tokio::task::yield_now().await;
    svc.clone().oneshot(req("a.test")).await.unwrap();
    slow.await.unwrap().unwrap();

    assert_eq!(
        handle.state("a.test"),
        KeyState::Cooling {
            until: start + s(202.0),
            n: 1
        }
    );
    let events = events.lock().unwrap();
    assert_eq!(events.len(), 2);
    match &events[1] {
        CooldownEvent::Extended {
            key,
            n,
            retry_after,
            until,
            ..
        } => {
            assert_eq!(key.as_str(), "a.test");
            assert_eq!(*n, 1);
            assert_eq!(*retry_after, s(200.0));
            assert_eq!(*until, start + s(202.0));
        }
        other => panic!("expected Extended, got {other:?}"),
    }
    assert_eq!(handle.stats().cooldowns_started, 1);
    assert_eq!(handle.stats().cooldowns_extended, 1);
}

#[tokio::test(start_paused = true)]
async fn concurrent_rate_limited_answers_count_once() {
    let up = Upstream::new([], after(s(1.0), rl(None)));
    let layer = CooldownLayer::builder().fail_fast().build().unwrap();
    let (handle, svc) = up.stack(layer);

    let tasks: Vec<_> = (0..5)
        .map(|_| tokio::spawn(svc.clone().oneshot(req("a.test"))))
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap().status(), 429);
    }
    assert_eq!(up.count(), 5);
    assert_eq!(
        handle.state("a.test"),
        KeyState::Cooling {
            until: up.start + s(2.0),
            n: 1
        },
        "five answers to five requests in flight together are one signal"
    );
    assert_eq!(handle.stats().cooldowns_started, 1);
}

/// Sends requests one after another (each waits out the cooldown and probes) until
/// the script is used up.
async fn drive_sequentially<S>(svc: &mut S, calls: usize)
where
    S: Service<Request<()>, Response = Response<()>, Error = BoxError>,
{
    for _ in 0..calls {
        svc.ready()
            .await
            .unwrap()
            .call(req("a.test"))
            .await
            .unwrap();
    }
}

#[tokio::test(start_paused = true)]
async fn exponential_backoff_doubles_caps_and_success_resets_n() {
    let script = [
        rl(None),
        rl(None),
        rl(None),
        rl(None),
        rl(None),
        ok(),
        rl(None),
        ok(),
    ];
    let up = Upstream::new(script, ok());
    let (events, layer) = recorded(|b| b.exponential(s(1.0), s(4.0)).wait(s(60.0)));
    let (handle, mut svc) = up.stack(layer);

    drive_sequentially(&mut svc, 8).await;

    // 1, 2, 4, then capped at 4; the success at 15 resets n, so the next 429 cools 1 s.
    assert_eq!(
        up.times(),
        [0.0, 1.0, 3.0, 7.0, 11.0, 15.0, 15.0, 16.0].map(s)
    );
    assert_eq!(
        started(&events),
        [
            (1, s(1.0)),
            (2, s(2.0)),
            (3, s(4.0)),
            (4, s(4.0)),
            (5, s(4.0)),
            (1, s(1.0))
        ]
    );
    assert_eq!(handle.state("a.test"), KeyState::Ok);
}

#[tokio::test(start_paused = true)]
async fn linear_backoff_grows_by_base_and_caps() {
    let up = Upstream::new([rl(None), rl(None), rl(None), rl(None)], ok());
    let (events, layer) = recorded(|b| b.linear(s(2.0), s(5.0)).wait(s(60.0)));
    let (_, mut svc) = up.stack(layer);

    drive_sequentially(&mut svc, 5).await;

    assert_eq!(up.times(), [0.0, 2.0, 6.0, 11.0, 16.0].map(s));
    assert_eq!(
        started(&events),
        [(1, s(2.0)), (2, s(4.0)), (3, s(5.0)), (4, s(5.0))]
    );
}

/// Bug: the cooldown escalated past the server's hint (`max(Retry-After, base·2ⁿ⁻¹)`
/// turned a string of short hints into 2, 4, 8 s waits). The hint is the cooldown.
#[tokio::test(start_paused = true)]
async fn cooldown_escalated_past_the_servers_hint() {
    let up = Upstream::new([rl(Some(30)), rl(Some(1)), rl(Some(10))], ok());
    let (events, layer) = recorded(|b| b.exponential(s(1.0), s(60.0)).wait(s(60.0)));
    let (_, mut svc) = up.stack(layer);

    drive_sequentially(&mut svc, 4).await;

    // n=1: the hint, 30; n=2: the hint, 1 (the backoff would say 2); n=3: the hint, 10.
    assert_eq!(up.times(), [0.0, 30.0, 31.0, 41.0].map(s));
    let reasons: Vec<_> = events
        .lock()
        .unwrap()
        .iter()
        .filter_map(|e| match e {
            CooldownEvent::Started {
                duration,
                reason,
                retry_after,
                backoff,
                ..
            } => Some((*duration, *reason, *retry_after, *backoff)),
            _ => None,
        })
        .collect();
    assert_eq!(
        reasons,
        [
            (s(30.0), CooldownReason::RetryAfter, Some(s(30.0)), s(1.0)),
            (s(1.0), CooldownReason::RetryAfter, Some(s(1.0)), s(2.0)),
            (s(10.0), CooldownReason::RetryAfter, Some(s(10.0)), s(4.0)),
        ]
    );
}

/// The hint table, row 1: a string of `retry_after: 1` answers (every probe limited
/// again) never cools longer than 1 s plus the margin.
#[tokio::test(start_paused = true)]
async fn a_string_of_one_second_hints_never_cools_longer_than_the_hint_plus_the_margin() {
    let up = Upstream::new(std::array::from_fn::<_, 6, _>(|_| rl(Some(1))), ok());
    let (events, layer) = recorded(|b| {
        b.exponential(s(1.0), s(60.0))
            .precheck(s(0.05))
            .wait(s(60.0))
    });
    let (_, mut svc) = up.stack(layer);

    drive_sequentially(&mut svc, 7).await;

    let durations: Vec<_> = started(&events).into_iter().map(|(_, d)| d).collect();
    assert_eq!(durations, [s(1.0); 6]);
    // Each call goes 1 s plus the 50 ms margin after the previous one.
    assert_eq!(
        up.times(),
        [0.0, 1.05, 2.1, 3.15, 4.2, 5.25, 6.3].map(s),
        "one probe per hint plus margin"
    );
}

/// The hint table, row 2: without a hint the cooldown escalates exponentially.
#[tokio::test(start_paused = true)]
async fn without_a_hint_the_cooldown_escalates_exponentially() {
    let up = Upstream::new(std::array::from_fn::<_, 4, _>(|_| rl(None)), ok());
    let (events, layer) = recorded(|b| b.exponential(s(1.0), s(60.0)).wait(s(60.0)));
    let (_, mut svc) = up.stack(layer);

    drive_sequentially(&mut svc, 5).await;

    assert_eq!(
        started(&events),
        [(1, s(1.0)), (2, s(2.0)), (3, s(4.0)), (4, s(8.0))]
    );
    assert_eq!(up.times(), [0.0, 1.0, 3.0, 7.0, 15.0].map(s));
}

/// The hint table, row 3: limited again right after a hinted cooldown, without a new
/// hint, the cooldown escalates from the consecutive count.
#[tokio::test(start_paused = true)]
async fn limited_again_right_after_a_hinted_cooldown_escalates() {
    let up = Upstream::new([rl(Some(1)), rl(None), rl(None)], ok());
    let (events, layer) = recorded(|b| b.exponential(s(1.0), s(60.0)).wait(s(60.0)));
    let (_, mut svc) = up.stack(layer);

    drive_sequentially(&mut svc, 4).await;

    assert_eq!(started(&events), [(1, s(1.0)), (2, s(2.0)), (3, s(4.0))]);
    assert_eq!(up.times(), [0.0, 1.0, 3.0, 7.0].map(s));
}

#[tokio::test(start_paused = true)]
async fn max_cooldown_caps_telegram_4310_second_ban_and_says_so() {
    let up = Upstream::new([rl(Some(4310)), rl(Some(3710))], ok());
    let (events, layer) = recorded(|b| b.max_cooldown(s(600.0)).fail_fast());
    let (handle, svc) = up.stack(layer);
    let start = up.start;

    svc.clone().oneshot(req("api.telegram.org")).await.unwrap();
    assert_eq!(
        handle.cooling_until("api.telegram.org"),
        Some(start + s(600.0))
    );

    sleep_until(start + s(600.0)).await;
    svc.clone().oneshot(req("api.telegram.org")).await.unwrap();
    assert_eq!(
        handle.cooling_until("api.telegram.org"),
        Some(start + s(1200.0))
    );
    assert_eq!(
        up.times(),
        [s(0.0), s(600.0)],
        "one request per max_cooldown"
    );

    let events = events.lock().unwrap();
    let CooldownEvent::Started {
        key,
        n,
        duration,
        requested,
        capped,
        reason,
        until,
        ..
    } = &events[0]
    else {
        panic!("expected Started, got {:?}", events[0]);
    };
    assert_eq!(key.as_str(), "api.telegram.org");
    assert_eq!(*n, 1);
    assert_eq!(*duration, s(600.0));
    assert_eq!(*requested, s(4310.0));
    assert!(*capped);
    assert_eq!(*reason, CooldownReason::RetryAfter);
    assert_eq!(*until, start + s(600.0));
    let CooldownEvent::Started {
        n,
        duration,
        requested,
        ..
    } = &events[1]
    else {
        panic!("expected Started, got {:?}", events[1]);
    };
    assert_eq!((*n, *duration, *requested), (2, s(600.0), s(3710.0)));
}

#[tokio::test(start_paused = true)]
async fn no_call_reaches_upstream_during_cooldown() {
    let up = Upstream::new([rl(Some(60))], ok());
    let layer = CooldownLayer::builder().fail_fast().build().unwrap();
    let (_, svc) = up.stack(layer);
    let start = up.start;

    svc.clone().oneshot(req("a.test")).await.unwrap();
    for second in 0..60 {
        sleep_until(start + s(second as f64)).await;
        // Several callers per second, concurrently.
        let tasks: Vec<_> = (0..3)
            .map(|_| tokio::spawn(svc.clone().oneshot(req("a.test"))))
            .collect();
        for t in tasks {
            let err = t.await.unwrap().unwrap_err();
            assert_eq!(
                cooling(&err).retry_after().unwrap(),
                s(60.0 - second as f64)
            );
        }
    }
    assert_eq!(up.times(), [s(0.0)]);
    sleep_until(start + s(60.0)).await;
    svc.clone().oneshot(req("a.test")).await.unwrap();
    assert_eq!(up.times(), [s(0.0), s(60.0)]);
}

#[tokio::test(start_paused = true)]
async fn half_open_lets_one_probe_go_then_the_rest() {
    // After the first 429, every answer takes 1 s.
    let up = Upstream::new([rl(Some(10))], after(s(1.0), ok()));
    let layer = CooldownLayer::builder().wait(s(60.0)).build().unwrap();
    let (handle, svc) = up.stack(layer);
    let start = up.start;

    svc.clone().oneshot(req("a.test")).await.unwrap();
    let mut tasks: Vec<_> = (0..100)
        .map(|_| tokio::spawn(svc.clone().oneshot(req("a.test"))))
        .collect();
    // One more caller arrives while the probe is in flight.
    let late_svc = svc.clone();
    tasks.push(tokio::spawn(async move {
        sleep_until(start + s(10.5)).await;
        assert_eq!(
            late_svc.handle().state("a.test"),
            KeyState::HalfOpen {
                n: 1,
                probing: true
            }
        );
        late_svc.oneshot(req("a.test")).await
    }));
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap().status(), StatusCode::OK);
    }

    let mut expected = vec![s(0.0), s(10.0)];
    expected.extend(std::iter::repeat_n(s(11.0), 100));
    assert_eq!(
        up.times(),
        expected,
        "one probe at expiry, the rest after its answer"
    );
    let stats = handle.stats();
    assert_eq!(stats.probes, 1);
    assert_eq!(stats.cooldowns_started, 1);
    assert_eq!(stats.met_cooldown, 101);
    assert_eq!(stats.waited, 101);
    assert_eq!(stats.rejected, 0);
    assert_eq!(
        handle.tracked_keys(),
        0,
        "an open key with n == 0 leaves the table"
    );
}

/// Bug: when the probe's answer opened the key, the requests that had waited out the
/// cooldown were only woken, while the probe's own caller ran on: its next request
/// reached the upstream first. Against an upstream that limits per chat, that caller's
/// next message was limited at once, the key cooled again, and the waiters were
/// overtaken at every opening (a message waiting from the start was never sent). Now
/// the waiters go first; a request arriving while they have not gone waits behind them.
#[tokio::test(start_paused = true)]
async fn waiters_go_before_a_newcomer_when_the_key_opens() {
    let up = Upstream::new([rl(Some(1))], ok());
    let layer = CooldownLayer::builder()
        .key(|_: &RequestRef<'_>| "bot")
        .wait(s(60.0))
        .build()
        .unwrap();
    let (handle, svc) = up.stack(layer);

    svc.clone().oneshot(req("first.test")).await.unwrap();
    // Three callers wait out the cooldown; each sends a second request as soon as its
    // first is answered (the host names the caller and the request).
    let tasks: Vec<_> = (0..3)
        .map(|i| {
            let svc = svc.clone();
            tokio::spawn(async move {
                let a = svc.clone().oneshot(req(&format!("w{i}.test"))).await?;
                let b = svc.oneshot(req(&format!("n{i}.test"))).await?;
                Ok::<_, BoxError>((a.status(), b.status()))
            })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap(), (StatusCode::OK, StatusCode::OK));
    }
    let calls = up.calls.lock().unwrap().clone();
    let hosts: Vec<_> = calls.iter().map(|c| c.1.as_str()).collect();
    assert_eq!(
        calls.iter().filter(|c| c.0 == s(1.0)).count(),
        6,
        "{calls:?}"
    );
    let first_newcomer = hosts.iter().position(|h| h.starts_with('n')).unwrap();
    assert!(
        hosts[..first_newcomer]
            .iter()
            .filter(|h| h.starts_with('w'))
            .count()
            == 3,
        "every waiter before any newcomer: {hosts:?}"
    );
    assert_eq!(handle.stats().probes, 1);
    assert_eq!(handle.tracked_keys(), 0, "the open key leaves the table");
}

#[tokio::test(start_paused = true)]
async fn probe_rate_limited_again_keeps_the_others_out() {
    let up = Upstream::new(
        [rl(Some(10)), after(s(1.0), rl(Some(10)))],
        after(s(1.0), ok()),
    );
    let layer = CooldownLayer::builder().wait(s(60.0)).build().unwrap();
    let (handle, svc) = up.stack(layer);
    let start = up.start;

    svc.clone().oneshot(req("a.test")).await.unwrap();
    let tasks: Vec<_> = (0..10)
        .map(|_| tokio::spawn(svc.clone().oneshot(req("a.test"))))
        .collect();
    sleep_until(start + s(11.0)).await;
    tokio::task::yield_now().await;
    assert_eq!(
        handle.state("a.test"),
        KeyState::Cooling {
            until: start + s(21.0),
            n: 2
        }
    );
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.unwrap().unwrap().status().as_u16());
    }
    statuses.sort();
    assert_eq!(statuses, [200, 200, 200, 200, 200, 200, 200, 200, 200, 429]);

    let mut expected = vec![s(0.0), s(10.0), s(21.0)];
    expected.extend(std::iter::repeat_n(s(22.0), 8));
    assert_eq!(up.times(), expected);
    assert_eq!(handle.stats().probes, 2);
}

#[tokio::test(start_paused = true)]
async fn waiters_fail_at_once_when_probe_recools_past_max_wait() {
    let up = Upstream::new([rl(Some(10)), after(s(1.0), rl(Some(10)))], ok());
    let layer = CooldownLayer::builder().wait(s(15.0)).build().unwrap();
    let (_, svc) = up.stack(layer);
    let start = up.start;

    svc.clone().oneshot(req("a.test")).await.unwrap();
    let tasks: Vec<_> = (0..5)
        .map(|_| {
            let svc = svc.clone();
            tokio::spawn(async move {
                let res = svc.oneshot(req("a.test")).await;
                (res, Instant::now())
            })
        })
        .collect();
    let mut probe_answers = 0;
    for t in tasks {
        let (res, at) = t.await.unwrap();
        match res {
            Ok(res) => {
                assert_eq!(res.status(), 429);
                probe_answers += 1;
            }
            Err(err) => {
                // The new cooldown ends at 21, past these callers' deadline at 15.
                assert_eq!(cooling(&err).retry_after().unwrap(), s(10.0));
                assert_eq!(at, start + s(11.0), "failed as soon as the probe answered");
            }
        }
    }
    assert_eq!(probe_answers, 1);
    assert_eq!(up.times(), [s(0.0), s(10.0)]);
}

#[tokio::test(start_paused = true)]
async fn dropped_probe_frees_the_slot() {
    // The probe hangs for 100 s; its caller gives up at 10.5.
    let up = Upstream::new([rl(Some(10)), after(s(100.0), ok())], ok());
    let layer = CooldownLayer::builder().wait(s(60.0)).build().unwrap();
    let (_, svc) = up.stack(layer);
    let start = up.start;

    svc.clone().oneshot(req("a.test")).await.unwrap();
    let impatient = tokio::spawn(timeout(s(10.5), svc.clone().oneshot(req("a.test"))));
    let svc2 = svc.clone();
    let patient = tokio::spawn(async move {
        sleep_until(start + s(10.2)).await;
        let res = svc2.oneshot(req("a.test")).await;
        (res, Instant::now())
    });

    assert!(
        impatient.await.unwrap().is_err(),
        "the probe's caller timed out"
    );
    let (res, at) = patient.await.unwrap();
    assert_eq!(res.unwrap().status(), 200);
    assert_eq!(at, start + s(10.5));
    assert_eq!(up.times(), [s(0.0), s(10.0), s(10.5)]);
}

#[tokio::test(start_paused = true)]
async fn probe_connection_error_frees_the_slot() {
    let up = Upstream::new([rl(Some(10)), Reply::ConnError { delay: s(1.0) }], ok());
    let layer = CooldownLayer::builder().wait(s(60.0)).build().unwrap();
    let (handle, svc) = up.stack(layer);
    let start = up.start;

    svc.clone().oneshot(req("a.test")).await.unwrap();
    let first = tokio::spawn(svc.clone().oneshot(req("a.test")));
    let svc2 = svc.clone();
    let second = tokio::spawn(async move {
        sleep_until(start + s(10.5)).await;
        svc2.oneshot(req("a.test")).await
    });

    let err = first.await.unwrap().unwrap_err();
    assert!(!is_cooling(&err));
    assert_eq!(err.to_string(), "connection reset by peer");
    assert_eq!(second.await.unwrap().unwrap().status(), 200);
    assert_eq!(up.times(), [s(0.0), s(10.0), s(11.0)]);
    assert_eq!(handle.state("a.test"), KeyState::Ok);
}

#[tokio::test(start_paused = true)]
async fn fail_fast_returns_cooling_down_without_calling_or_waiting() {
    let up = Upstream::new([rl(Some(30)), after(s(1.0), ok())], ok());
    let layer = CooldownLayer::builder().fail_fast().build().unwrap();
    let (_, svc) = up.stack(layer);
    let start = up.start;

    svc.clone().oneshot(req("a.test")).await.unwrap();
    let before = Instant::now();
    let err = svc.clone().oneshot(req("a.test")).await.unwrap_err();
    assert_eq!(Instant::now(), before, "no time passed");
    let e = cooling(&err);
    assert_eq!(e.key().unwrap().as_str(), "a.test");
    assert_eq!(e.retry_after().unwrap(), s(30.0));
    assert!(!e.is_probing());
    assert_eq!(up.count(), 1);

    sleep_until(start + s(10.0)).await;
    let err = svc.clone().oneshot(req("a.test")).await.unwrap_err();
    assert_eq!(cooling(&err).retry_after().unwrap(), s(20.0));
    let msg = err.to_string();
    assert!(msg.contains("a.test") && msg.contains("20.000 s"), "{msg}");
    assert_eq!(
        ratewise::verdict_of_error(&*err),
        Verdict::rate_limited(Some(s(20.0)))
    );

    // While the probe is in flight, fail-fast callers are refused too.
    sleep_until(start + s(30.0)).await;
    let probe = tokio::spawn(svc.clone().oneshot(req("a.test")));
    tokio::task::yield_now().await;
    let err = svc.clone().oneshot(req("a.test")).await.unwrap_err();
    let e = cooling(&err);
    assert!(e.is_probing());
    assert_eq!(e.retry_after().unwrap(), Duration::ZERO);
    assert_eq!(probe.await.unwrap().unwrap().status(), 200);
    assert_eq!(up.times(), [s(0.0), s(30.0)]);
}

#[tokio::test(start_paused = true)]
async fn wait_longer_than_max_wait_fails_at_once_shorter_waits() {
    let up = Upstream::new([rl(Some(30)), rl(Some(3))], ok());
    let layer = CooldownLayer::builder().wait(s(5.0)).build().unwrap();
    let (_, svc) = up.stack(layer);
    let start = up.start;

    svc.clone().oneshot(req("long.test")).await.unwrap();
    svc.clone().oneshot(req("short.test")).await.unwrap();

    let err = svc.clone().oneshot(req("long.test")).await.unwrap_err();
    assert_eq!(Instant::now(), start, "refused without sleeping");
    assert_eq!(cooling(&err).key().unwrap().as_str(), "long.test");
    assert_eq!(cooling(&err).retry_after().unwrap(), s(30.0));

    let res = svc.clone().oneshot(req("short.test")).await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(
        Instant::now(),
        start + s(3.0),
        "waited out the 3 s cooldown"
    );
    assert_eq!(up.times(), [s(0.0), s(0.0), s(3.0)]);
}

#[tokio::test(start_paused = true)]
async fn precheck_threshold_keeps_a_nearly_over_cooldown_cooling() {
    let up = Upstream::new([rl(Some(10)), rl(Some(10))], ok());
    let plain = CooldownLayer::builder().fail_fast().build().unwrap();
    let checked = CooldownLayer::builder()
        .fail_fast()
        .precheck(s(2.0))
        .build()
        .unwrap();
    let handle = checked.handle();
    let plain = ServiceBuilder::new().layer(plain).service(up.service());
    let checked = ServiceBuilder::new().layer(checked).service(up.service());
    let start = up.start;

    plain.clone().oneshot(req("plain.test")).await.unwrap();
    checked.clone().oneshot(req("checked.test")).await.unwrap();
    assert_eq!(handle.cooling_until("checked.test"), Some(start + s(12.0)));

    sleep_until(start + s(10.0)).await;
    plain.clone().oneshot(req("plain.test")).await.unwrap();
    let err = checked
        .clone()
        .oneshot(req("checked.test"))
        .await
        .unwrap_err();
    assert_eq!(cooling(&err).retry_after().unwrap(), s(2.0));
    sleep_until(start + s(11.5)).await;
    let err = checked
        .clone()
        .oneshot(req("checked.test"))
        .await
        .unwrap_err();
    assert_eq!(cooling(&err).retry_after().unwrap(), s(0.5));

    sleep_until(start + s(12.0)).await;
    checked.clone().oneshot(req("checked.test")).await.unwrap();
    assert_eq!(up.times(), [0.0, 0.0, 10.0, 12.0].map(s));
}

#[tokio::test(start_paused = true)]
async fn events_callback_sees_started_and_ended() {
    let up = Upstream::new([rl(Some(20))], after(s(1.0), ok()));
    let (events, layer) = recorded(|b| b.exponential(s(1.0), s(60.0)).wait(s(60.0)));
    let (_, svc) = up.stack(layer);
    let start = up.start;

    svc.clone().oneshot(req("a.test")).await.unwrap();
    svc.clone().oneshot(req("a.test")).await.unwrap();
    assert_eq!(Instant::now(), start + s(21.0));

    let events = events.lock().unwrap();
    assert_eq!(events.len(), 2, "{events:?}");
    let CooldownEvent::Started {
        key,
        n,
        duration,
        requested,
        capped,
        reason,
        retry_after,
        backoff,
        until,
        ..
    } = &events[0]
    else {
        panic!("expected Started, got {:?}", events[0]);
    };
    assert_eq!(key.as_str(), "a.test");
    assert_eq!(*n, 1);
    assert_eq!(*duration, s(20.0));
    assert_eq!(*requested, s(20.0));
    assert!(!*capped);
    assert_eq!(*reason, CooldownReason::RetryAfter);
    assert_eq!(*retry_after, Some(s(20.0)));
    assert_eq!(*backoff, s(1.0));
    assert_eq!(*until, start + s(20.0));
    let CooldownEvent::Ended {
        key, n, cooled_for, ..
    } = &events[1]
    else {
        panic!("expected Ended, got {:?}", events[1]);
    };
    assert_eq!(key.as_str(), "a.test");
    assert_eq!(*n, 1);
    assert_eq!(*cooled_for, s(21.0), "from the 429 to the probe's answer");
    assert_eq!(events[1].key().as_str(), "a.test");
}

#[tokio::test(start_paused = true)]
async fn stats_count_cooldowns_meetings_waits_rejections_and_probes() {
    let up = Upstream::new([rl(Some(10)), rl(Some(100))], ok());
    let layer = CooldownLayer::builder().wait(s(20.0)).build().unwrap();
    let (handle, svc) = up.stack(layer);

    svc.clone().oneshot(req("a.test")).await.unwrap();
    svc.clone().oneshot(req("b.test")).await.unwrap();
    let waiters: Vec<_> = (0..2)
        .map(|_| tokio::spawn(svc.clone().oneshot(req("a.test"))))
        .collect();
    let err = svc.clone().oneshot(req("b.test")).await.unwrap_err();
    assert_eq!(cooling(&err).key().unwrap().as_str(), "b.test");
    for w in waiters {
        w.await.unwrap().unwrap();
    }
    svc.clone().oneshot(req("c.test")).await.unwrap();

    let stats = handle.stats();
    assert_eq!(stats.cooldowns_started, 2);
    assert_eq!(stats.cooldowns_extended, 0);
    assert_eq!(stats.met_cooldown, 3);
    assert_eq!(stats.waited, 2);
    assert_eq!(stats.rejected, 1);
    assert_eq!(stats.probes, 1);
    assert_eq!(up.times(), [0.0, 0.0, 10.0, 10.0, 10.0].map(s));
}

#[tokio::test(start_paused = true)]
async fn transient_and_failure_leave_n_alone() {
    // 429 (n=1), probe gets 503 (slot freed, n stays), next probe 429 (n=2: 2 s),
    // probe gets 400 (key open, n stays 2), next 429 is n=3 (4 s), probe succeeds.
    let script = [rl(None), status(503), rl(None), status(400), rl(None), ok()];
    let up = Upstream::new(script, ok());
    let (events, layer) = recorded(|b| b.exponential(s(1.0), s(60.0)).wait(s(60.0)));
    let (handle, mut svc) = up.stack(layer);

    drive_sequentially(&mut svc, 2).await;
    assert_eq!(
        handle.state("a.test"),
        KeyState::HalfOpen {
            n: 1,
            probing: false
        }
    );
    drive_sequentially(&mut svc, 2).await;
    assert_eq!(handle.state("a.test"), KeyState::Ok);
    assert_eq!(handle.tracked_keys(), 1, "n == 2 is remembered");
    drive_sequentially(&mut svc, 2).await;
    assert_eq!(handle.tracked_keys(), 0);

    assert_eq!(up.times(), [0.0, 1.0, 1.0, 3.0, 3.0, 7.0].map(s));
    assert_eq!(started(&events), [(1, s(1.0)), (2, s(2.0)), (3, s(4.0))]);
}

#[tokio::test(start_paused = true)]
async fn keys_are_independent_with_any_extractor() {
    let up = Upstream::new([rl(Some(60))], ok());
    let layer = CooldownLayer::builder()
        .key(|r: &RequestRef<'_>| r.uri().path().split('/').nth(1).unwrap_or("").to_owned())
        .fail_fast()
        .build()
        .unwrap();
    let (handle, svc) = up.stack(layer);
    let bot = |b: &str| {
        Request::get(format!("http://api.telegram.org/{b}/getMe"))
            .body(())
            .unwrap()
    };

    svc.clone().oneshot(bot("bot1")).await.unwrap();
    let err = svc.clone().oneshot(bot("bot1")).await.unwrap_err();
    assert_eq!(cooling(&err).key().unwrap().as_str(), "bot1");
    assert_eq!(
        svc.clone().oneshot(bot("bot2")).await.unwrap().status(),
        200
    );
    assert!(matches!(
        handle.state("bot1"),
        KeyState::Cooling { n: 1, .. }
    ));
    assert_eq!(handle.state("bot2"), KeyState::Ok);
    assert!(!handle.is_available("bot1"));
    assert!(handle.is_available("bot2"));
    assert_eq!(up.count(), 2);
}

#[tokio::test(start_paused = true)]
async fn clones_of_layer_and_service_share_one_table() {
    let up1 = Upstream::new([rl(Some(60))], ok());
    let up2 = Upstream::new([], ok());
    let layer = CooldownLayer::builder().fail_fast().build().unwrap();
    let stack1 = ServiceBuilder::new()
        .layer(layer.clone())
        .service(up1.service());
    let stack2 = ServiceBuilder::new()
        .layer(layer.clone())
        .service(up2.service());

    stack1.clone().oneshot(req("a.test")).await.unwrap();
    let err = stack2.clone().oneshot(req("a.test")).await.unwrap_err();
    assert_eq!(cooling(&err).retry_after().unwrap(), s(60.0));
    assert_eq!(up2.count(), 0, "the second stack never called its upstream");
    assert!(stack2.handle().cooling_until("a.test").is_some());
    assert_eq!(layer.handle().stats().rejected, 1);
}

#[tokio::test(start_paused = true)]
async fn poll_ready_delegates_to_inner() {
    let up = Upstream::new([], after(s(5.0), ok()));
    let layer = CooldownLayer::new();
    let mut svc = ServiceBuilder::new()
        .layer(layer)
        .concurrency_limit(1)
        .service(up.service());

    std::future::poll_fn(|cx| svc.poll_ready(cx)).await.unwrap();
    let in_flight = tokio::spawn(svc.call(req("a.test")));
    tokio::task::yield_now().await;
    let mut other = svc.clone();
    let ready = futures_poll_once(|cx| other.poll_ready(cx)).await;
    assert!(ready.is_pending(), "inner concurrency limit is full");
    in_flight.await.unwrap().unwrap();
    std::future::poll_fn(|cx| other.poll_ready(cx))
        .await
        .unwrap();
}

/// Polls `f` once and reports what it returned.
async fn futures_poll_once<T>(
    mut f: impl FnMut(&mut std::task::Context<'_>) -> std::task::Poll<T>,
) -> std::task::Poll<()> {
    std::future::poll_fn(|cx| std::task::Poll::Ready(f(cx).map(|_| ()))).await
}

#[tokio::test(start_paused = true)]
async fn probe_answer_never_shortens_a_cooldown_extended_meanwhile() {
    // call 0: sent before the cooldown, answers at 10.5 with "retry after 100";
    // call 1: the first 429 (10 s); call 2: the probe at 10, answered at 12 with a
    // bare 429 (n=2, backoff 2 s, which would end at 14).
    let script = [
        after(s(10.5), rl(Some(100))),
        rl(Some(10)),
        after(s(2.0), rl(None)),
    ];
    let up = Upstream::new(script, ok());
    let layer = CooldownLayer::builder().fail_fast().build().unwrap();
    let (handle, svc) = up.stack(layer);
    let start = up.start;

    let stale = tokio::spawn(svc.clone().oneshot(req("a.test")));
    tokio::task::yield_now().await;
    svc.clone().oneshot(req("a.test")).await.unwrap();
    sleep_until(start + s(10.0)).await;
    let probe = tokio::spawn(svc.clone().oneshot(req("a.test")));
    stale.await.unwrap().unwrap();
    assert_eq!(
        handle.cooling_until("a.test"),
        Some(start + s(110.5)),
        "extended by the in-flight answer while the probe was out"
    );
    assert_eq!(probe.await.unwrap().unwrap().status(), 429);
    assert_eq!(
        handle.state("a.test"),
        KeyState::Cooling {
            until: start + s(110.5),
            n: 2
        },
        "the probe's shorter cooldown did not shorten the running one"
    );
    sleep_until(start + s(50.0)).await;
    let err = svc.clone().oneshot(req("a.test")).await.unwrap_err();
    assert_eq!(cooling(&err).retry_after().unwrap(), s(60.5));
    assert_eq!(up.times(), [0.0, 0.0, 10.0].map(s));
}

#[tokio::test(start_paused = true)]
async fn success_to_a_request_sent_before_the_cooldown_does_not_reset_n() {
    // call 0 answers 200 at t=5 but was sent at t=0, before the 429s that followed.
    let script = [after(s(5.0), ok()), rl(None), rl(None), rl(None)];
    let up = Upstream::new(script, ok());
    let (events, layer) = recorded(|b| b.exponential(s(1.0), s(60.0)).wait(s(60.0)));
    let (handle, mut svc) = up.stack(layer);

    let old = tokio::spawn(svc.clone().oneshot(req("a.test")));
    tokio::task::yield_now().await;
    drive_sequentially(&mut svc, 2).await; // 429 at 0 (n=1), probe 429 at 1 (n=2, until 3)
    old.await.unwrap().unwrap();
    assert_eq!(Instant::now(), up.start + s(5.0));
    assert_eq!(
        handle.state("a.test"),
        KeyState::HalfOpen {
            n: 2,
            probing: false
        }
    );
    drive_sequentially(&mut svc, 2).await; // probe 429 at 5 (n=3, 4 s), then 200 at 9
    assert_eq!(up.times(), [0.0, 0.0, 1.0, 5.0, 9.0].map(s));
    assert_eq!(started(&events), [(1, s(1.0)), (2, s(2.0)), (3, s(4.0))]);
}

/// The cooldown takes its length from the crate's one Retry-After parser, whichever way
/// the server says it: a bare `Retry-After` header on a 429 (judged by the cooldown
/// itself, with no `ClassifyLayer` and no verdict in the extensions), or Telegram's
/// `parameters.retry_after` in the body, read through `ClassifyLayer` with the Telegram
/// preset. The control shows the body's hint reaches the cooldown only through the
/// classifier: without it, the same 429 cools for the backoff alone.
#[tokio::test(start_paused = true)]
async fn cooldown_length_comes_from_the_parser_for_a_header_and_a_telegram_body() {
    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};
    use ratewise::{classify::Preset, ClassifyLayer};

    const TELEGRAM_429: &str = r#"{"ok":false,"error_code":429,"description":"Too Many Requests: retry after 4310","parameters":{"retry_after":4310}}"#;

    /// An upstream answering every call with `status`, `headers` and `body`.
    fn upstream(
        status: u16,
        headers: &'static [(&'static str, &'static str)],
        body: &'static str,
    ) -> impl Service<
        Request<()>,
        Response = Response<Full<Bytes>>,
        Error = http::Error,
        Future = impl Send,
    > + Clone {
        tower::service_fn(move |_req: Request<()>| async move {
            let mut res = Response::builder().status(status);
            for (name, value) in headers {
                res = res.header(*name, *value);
            }
            res.body(Full::new(Bytes::from_static(body.as_bytes())))
        })
    }
    let layer = || recorded(|b| b.exponential(s(1.0), s(60.0)).fail_fast());

    // 1. A bare `Retry-After: 7`: no classifier, no extension.
    let (events, cooldown) = layer();
    let handle = cooldown.handle();
    let svc = ServiceBuilder::new().layer(cooldown).service(upstream(
        429,
        &[("retry-after", "7")],
        "slow down",
    ));
    let start = Instant::now();
    let res = svc.clone().oneshot(req("a.test")).await.unwrap();
    assert!(res.extensions().get::<Verdict>().is_none());
    assert_eq!(handle.cooling_until("a.test"), Some(start + s(7.0)));
    assert_eq!(
        started(&events),
        [(1, s(7.0))],
        "max(Retry-After 7 s, backoff 1 s)"
    );
    let err = svc.clone().oneshot(req("a.test")).await.unwrap_err();
    assert_eq!(cooling(&err).retry_after().unwrap(), s(7.0));

    // 2. Telegram: the wait is only in the body, read by the Telegram preset.
    let (events, cooldown) = layer();
    let handle = cooldown.handle();
    let calls = Arc::new(Mutex::new(0));
    let counted = {
        let calls = calls.clone();
        upstream(429, &[], TELEGRAM_429).map_request(move |req| {
            *calls.lock().unwrap() += 1;
            req
        })
    };
    let svc = ServiceBuilder::new()
        .layer(cooldown)
        .layer(ClassifyLayer::new(Preset::telegram()))
        .service(counted);
    let start = Instant::now();
    let res = svc.clone().oneshot(req("api.telegram.org")).await.unwrap();
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, TELEGRAM_429.as_bytes(), "the caller gets every byte");
    assert_eq!(
        handle.cooling_until("api.telegram.org"),
        Some(start + s(4310.0))
    );
    let events_now = events.lock().unwrap().clone();
    let Some(CooldownEvent::Started {
        reason,
        retry_after,
        ..
    }) = events_now.first()
    else {
        panic!("expected Started, got {events_now:?}");
    };
    assert_eq!(*reason, CooldownReason::RetryAfter);
    assert_eq!(*retry_after, Some(s(4310.0)));
    sleep(s(4309.0)).await;
    let err = svc
        .clone()
        .oneshot(req("api.telegram.org"))
        .await
        .unwrap_err();
    assert_eq!(cooling(&err).retry_after().unwrap(), s(1.0));
    assert_eq!(*calls.lock().unwrap(), 1, "no call during the 4310 s");

    // 3. Control: the same Telegram 429 without the classifier carries no hint the
    //    cooldown can see (no header), so only the 1 s backoff applies.
    let (events, cooldown) = layer();
    let handle = cooldown.handle();
    let svc = ServiceBuilder::new()
        .layer(cooldown)
        .service(upstream(429, &[], TELEGRAM_429));
    let start = Instant::now();
    svc.oneshot(req("api.telegram.org")).await.unwrap();
    assert_eq!(
        handle.cooling_until("api.telegram.org"),
        Some(start + s(1.0))
    );
    assert_eq!(started(&events), [(1, s(1.0))]);
}

/// A bug: a rate limiter's `MaxWaitExceeded` below the cooldown (a local refusal: the
/// request never reached the upstream) was read as a rate-limited answer and started an
/// exponential cooldown, although the upstream had said nothing.
#[tokio::test(start_paused = true)]
async fn a_rate_limiters_max_wait_refusal_below_does_not_start_a_cooldown() {
    let cooldown = CooldownLayer::new();
    let handle = cooldown.handle();
    let calls = Arc::new(Mutex::new(Vec::new()));
    let start = Instant::now();
    let upstream = tower::service_fn({
        let calls = calls.clone();
        move |_req: Request<()>| {
            calls.lock().unwrap().push(start.elapsed());
            async { Ok::<_, ratewise::BoxError>(Response::new(())) }
        }
    });
    let svc = ServiceBuilder::new()
        .layer(cooldown)
        .layer(
            ratewise::RateLimitLayer::builder()
                .per_second(1)
                .burst(1)
                .max_wait(Duration::from_millis(100))
                .build()
                .unwrap(),
        )
        .service(upstream);
    let req = || Request::get("http://api.test/x").body(()).unwrap();

    svc.clone().oneshot(req()).await.unwrap();
    let err = svc.clone().oneshot(req()).await.unwrap_err();
    assert!(
        matches!(
            err.downcast_ref::<Refusal>().map(Refusal::kind),
            Some(RefusalKind::MaxWait { .. })
        ),
        "{err}"
    );

    // No cooldown: the key is open, nothing started, nothing met.
    assert_eq!(handle.state("api.test"), KeyState::Ok);
    assert_eq!(handle.stats().cooldowns_started, 0);
    assert_eq!(handle.tracked_keys(), 0);

    // The next request goes when the limiter has a cell, with no probe or backoff.
    tokio::time::advance(Duration::from_secs(1)).await;
    svc.clone().oneshot(req()).await.unwrap();
    assert_eq!(
        *calls.lock().unwrap(),
        [Duration::ZERO, Duration::from_secs(1)]
    );
    assert_eq!(handle.stats().probes, 0);
}

/// A waiter that is never polled again (its caller parked the future) must not hold
/// the requests that arrive after the key opens until their own deadline: they let the
/// waiters go first for a short grace, then go.
#[tokio::test(start_paused = true)]
async fn a_parked_waiter_does_not_hold_newcomers_after_the_key_opens() {
    use std::future::Future;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::Poll;

    let calls = Arc::new(AtomicUsize::new(0));
    let upstream = tower::service_fn({
        let calls = calls.clone();
        move |_req: Request<()>| {
            let n = calls.fetch_add(1, Ordering::SeqCst);
            async move {
                let res = if n == 0 {
                    Response::builder()
                        .status(429)
                        .header("retry-after", "1")
                        .body(())
                } else {
                    Response::builder().body(())
                };
                Ok::<_, BoxError>(res.unwrap())
            }
        }
    });
    let layer = CooldownLayer::builder().wait(s(30.0)).build().unwrap();
    let svc = tower::ServiceBuilder::new().layer(layer).service(upstream);
    let start = tokio::time::Instant::now();

    // A: the 429 starts a 1 s cooldown.
    let a = svc.clone().oneshot(req("a.test")).await.unwrap();
    assert_eq!(a.status(), 429);
    // B: waits for the cooldown, polled once, then parked forever (kept alive).
    let mut parked = Box::pin(svc.clone().oneshot(req("a.test")));
    std::future::poll_fn(|cx| {
        assert!(parked.as_mut().poll(cx).is_pending());
        Poll::Ready(())
    })
    .await;
    // C at 1 s: the probe, served; the key opens.
    tokio::time::sleep(s(1.0)).await;
    let c = svc.clone().oneshot(req("a.test")).await.unwrap();
    assert_eq!(c.status(), 200);
    // D: a newcomer behind the parked waiter goes after the grace, not at 31 s.
    let d = svc.clone().oneshot(req("a.test")).await.unwrap();
    assert_eq!(d.status(), 200);
    assert!(
        start.elapsed() <= s(1.2),
        "held until {:?}",
        start.elapsed()
    );
    drop(parked);
}
