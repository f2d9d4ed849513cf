//! Limits and cooldowns shared through a real `redis-server` (started by the test on a
//! free 127.0.0.1 port, or `REDIS_URL`): several processes, one limit; a cooldown seen
//! by one process holds in another; Redis killed and restarted mid-run.
//!
//! Without a `redis-server` each test prints one "skipped: no redis-server" line;
//! `RATEWISE_REQUIRE_REDIS=1` (set by `.ci/run`) makes that a failure instead.
#![cfg(all(feature = "redis", feature = "testing"))]

use std::{
    collections::BTreeMap,
    convert::Infallible,
    process::Command,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{extract::State, routing::post, Router};
use bytes::Bytes;
use http::{Method, Request, Response};
use http_body_util::Full;
use ratewise::{
    redis::Redis,
    stack::{ClientStackLayer, Platform},
    testing::{client, json_request, GlmApi, MockServer, RedisServer, TelegramBot},
    vocabulary::RefusalKind,
    Refusal,
};
use serde_json::json;
use tokio::task::JoinSet;
use tower::{service_fn, ServiceBuilder, ServiceExt};

const MS: Duration = Duration::from_millis(1);

/// A name no other test run shares.
fn unique(label: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    format!("{label}-{}-{nanos}", std::process::id())
}

// ---------------------------------------------------------------------------------
// Several OS processes: this test binary, run again as a child.

/// The child's entry point, run by the multi-process tests below with
/// `RATEWISE_CHILD` set; ignored in a normal run.
#[test]
#[ignore = "a child process of the multi-process tests, which run it"]
fn child_process() {
    let mode = std::env::var("RATEWISE_CHILD").expect("RATEWISE_CHILD");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let line = rt.block_on(async move {
        match mode.as_str() {
            "limit" => child_limit().await,
            "telegram" => child_telegram().await,
            "cooldown" => child_cooldown().await,
            other => panic!("unknown child mode {other}"),
        }
    });
    // The parent reads this one line.
    println!("CHILD-RESULT {line}");
}

/// The children's Redis handle: fail closed (a lost decision is a failure the test
/// sees), with a 2 s timeout so that a loaded CI machine is not mistaken for an outage.
fn child_redis() -> Redis {
    Redis::new(&env("REDIS_URL"))
        .unwrap()
        .timeout(Duration::from_secs(2))
        .fail_closed()
}

/// The multi-process tests run one at a time: each starts several processes, and on a
/// 2-core machine two such runs side by side would measure the machine, not the crate.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is set by the parent"))
}

/// 100 per 2 s, shared: send `COUNT` calls, 10 at a time, each waiting its turn.
async fn child_limit() -> String {
    let redis = child_redis();
    let stack = ClientStackLayer::preset(Platform::Glm)
        .rate_limit(|r| {
            r.sliding_window(100, Duration::from_secs(2))
                .margin_percent(2)
                .max_wait(Duration::from_secs(30))
                .store(redis.rate_limit(&env("NAME")))
        })
        .build()
        .unwrap();
    let svc = ServiceBuilder::new().layer(stack).service(client());
    let url = env("UPSTREAM");
    let count: usize = env("COUNT").parse().unwrap();
    let mut set = JoinSet::new();
    let sem = Arc::new(tokio::sync::Semaphore::new(10));
    for i in 0..count {
        let (svc, url, sem) = (svc.clone(), url.clone(), sem.clone());
        set.spawn(async move {
            let _permit = sem.acquire_owned().await.unwrap();
            let req = json_request(Method::POST, &url, &json!({"messages": [], "n": i})).unwrap();
            usize::from(delivered(svc, req, Duration::from_secs(60)).await)
        });
    }
    format!("ok={}", total(set).await)
}

/// The Telegram preset with the Redis stores: `COUNT` messages, 6 senders.
async fn child_telegram() -> String {
    let redis = child_redis();
    let name = env("NAME");
    let stack = ClientStackLayer::preset(Platform::Telegram)
        .rate_limit(|r| r.store(redis.rate_limit(&name)))
        .cooldown(|c| c.store(redis.cooldown(&name)))
        .build()
        .unwrap();
    let svc = ServiceBuilder::new().layer(stack).service(client());
    let url = env("UPSTREAM");
    let count: usize = env("COUNT").parse().unwrap();
    let me = env("CHILD");
    let mut set = JoinSet::new();
    for s in 0..6 {
        let (svc, url, me) = (svc.clone(), url.clone(), me.clone());
        set.spawn(async move {
            let mut ok = 0;
            for m in (s..count).step_by(6) {
                let text = format!("p{me}-m{m}");
                let req = json_request(
                    Method::POST,
                    &url,
                    &json!({"chat_id": 1000 + m % 20, "text": text}),
                )
                .unwrap();
                ok += usize::from(delivered(svc.clone(), req, Duration::from_secs(90)).await);
            }
            ok
        });
    }
    format!("ok={}", total(set).await)
}

/// The Telegram preset with the Redis stores and no retry: `COUNT` messages at once,
/// named `p<CHILD>-<i>`; reports how many were answered 200.
async fn child_cooldown() -> String {
    let redis = child_redis();
    let name = env("NAME");
    let stack = ClientStackLayer::preset(Platform::Telegram)
        .rate_limit(|r| r.store(redis.rate_limit(&name)))
        .cooldown(|c| c.store(redis.cooldown(&name)))
        .retry(|r| r.max_attempts(1))
        .build()
        .unwrap();
    let svc = ServiceBuilder::new().layer(stack).service(client());
    let url = env("UPSTREAM");
    let count: usize = env("COUNT").parse().unwrap();
    let me = env("ROLE");
    let mut set = JoinSet::new();
    for i in 0..count {
        let (svc, url) = (svc.clone(), url.clone());
        let who = format!("{me}{i}");
        set.spawn(async move {
            let req = Request::post(&url)
                .header("content-type", "application/json")
                .body(Full::from(who))
                .unwrap();
            usize::from(delivered(svc, req, Duration::from_secs(20)).await)
        });
    }
    format!("ok={}", total(set).await)
}

/// Sends `req` through `svc` within `limit`: whether it was answered 200. Anything else
/// is printed as a `failed:` line, which the parent shows.
async fn delivered<S, B>(svc: S, req: Request<Full<Bytes>>, limit: Duration) -> bool
where
    S: tower::Service<Request<Full<Bytes>>, Response = Response<B>, Error = ratewise::BoxError>,
{
    match tokio::time::timeout(limit, svc.oneshot(req)).await {
        Ok(Ok(res)) if res.status() == 200 => true,
        Ok(Ok(res)) => {
            eprintln!("failed: status {}", res.status());
            false
        }
        Ok(Err(err)) => {
            eprintln!("failed: {err}");
            false
        }
        Err(_) => {
            eprintln!("failed: no answer within {limit:?}");
            false
        }
    }
}

/// The sum of the tasks' counts.
async fn total(mut set: JoinSet<usize>) -> usize {
    let mut ok = 0;
    while let Some(n) = set.join_next().await {
        ok += n.expect("a sender panicked");
    }
    ok
}

/// Runs `n` children in `mode` and returns the number each one reports.
fn run_children(n: usize, mode: &str, vars: &[(&str, &str)]) -> Vec<usize> {
    let exe = std::env::current_exe().unwrap();
    let children: Vec<_> = (0..n)
        .map(|i| {
            let mut cmd = Command::new(&exe);
            cmd.args(["child_process", "--exact", "--ignored", "--nocapture"])
                .args(["--test-threads", "1"])
                .env("RATEWISE_CHILD", mode)
                .env("CHILD", i.to_string());
            for (k, v) in vars {
                cmd.env(k, v);
            }
            cmd.stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    children
        .into_iter()
        .map(|child| {
            let out = child.wait_with_output().unwrap();
            let text = String::from_utf8_lossy(&out.stdout);
            let errors = String::from_utf8_lossy(&out.stderr);
            let failures: Vec<_> = errors
                .lines()
                .filter(|l| l.starts_with("failed: "))
                .collect();
            if !failures.is_empty() {
                println!(
                    "a child's failures ({}): {:?}",
                    failures.len(),
                    &failures[..failures.len().min(5)]
                );
            }
            assert!(out.status.success(), "a child failed:\n{text}\n{errors}");
            let line = text
                .split("CHILD-RESULT ok=")
                .nth(1)
                .and_then(|rest| rest.split_whitespace().next())
                .unwrap_or_else(|| panic!("no result line in:\n{text}"));
            line.parse().unwrap()
        })
        .collect()
}

/// Four OS processes share a limit of 100 per 2 s through Redis; the upstream on
/// 127.0.0.1 enforces exactly that (a 2 s sliding window of 100). Every call is
/// admitted within the quota, and the upstream rejects nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_processes_one_limit() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let glm = GlmApi::new().limit(100).window(Duration::from_secs(2));
    let server = MockServer::start(glm.router()).await.unwrap();
    let url = server.url("/api/paas/v4/chat/completions");
    let name = unique("four-limit");
    let start = Instant::now();
    let (redis_url, name2, url2) = (redis.url().to_owned(), name.clone(), url.clone());
    let oks = tokio::task::spawn_blocking(move || {
        run_children(
            4,
            "limit",
            &[
                ("REDIS_URL", &redis_url),
                ("NAME", &name2),
                ("UPSTREAM", &url2),
                ("COUNT", "60"),
            ],
        )
    })
    .await
    .unwrap();
    let elapsed = start.elapsed();
    let hits = glm.hits();
    println!(
        "4 processes: {oks:?} ok, {} calls reached the upstream, {} × 429, in {elapsed:?}",
        hits.count(),
        hits.rate_limited()
    );
    assert_eq!(
        oks,
        [60, 60, 60, 60],
        "every call of every process succeeded"
    );
    assert_eq!(hits.rate_limited(), 0, "the upstream rejected nothing");
    assert_eq!(hits.count(), 240, "one call per request");
    // Within quota: 240 calls at 100 per 2 s need more than 2 × 2 s. In one process
    // each, four in-memory limiters would have sent them at once.
    let times = hits.times();
    let first = times[0];
    for (i, t) in times.iter().enumerate() {
        let window = *t - first;
        let allowed = 100 * (1 + (window.as_millis() / 2000) as usize);
        assert!(i < allowed, "call {i} at {window:?} is over 100 per 2 s");
    }
    server.shutdown().await;
}

/// Four bot processes run the Telegram preset with the Redis stores against one
/// Telegram mock (30 per second; a call during a penalty doubles it), 60 messages each.
/// All 240 are delivered, exactly once, and no call lands during a penalty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_bot_processes_one_telegram() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let bot = TelegramBot::new().limit(30).window(Duration::from_secs(1));
    let server = MockServer::start(bot.router()).await.unwrap();
    let url = server.url("/bot123:secret/sendMessage");
    let name = unique("four-telegram");
    let start = Instant::now();
    let (redis_url, name2, url2) = (redis.url().to_owned(), name.clone(), url.clone());
    let oks = tokio::task::spawn_blocking(move || {
        run_children(
            4,
            "telegram",
            &[
                ("REDIS_URL", &redis_url),
                ("NAME", &name2),
                ("UPSTREAM", &url2),
                ("COUNT", "60"),
            ],
        )
    })
    .await
    .unwrap();
    let hits = bot.hits();
    println!(
        "4 bots: {oks:?} delivered, {} calls, {} × 429, {} during a penalty, in {:?}",
        hits.count(),
        hits.rate_limited(),
        bot.calls_during_penalty(),
        start.elapsed()
    );
    let mut delivered: BTreeMap<String, usize> = BTreeMap::new();
    for d in bot.delivered() {
        *delivered.entry(d.text).or_default() += 1;
    }
    assert_eq!(oks, [60, 60, 60, 60]);
    assert_eq!(delivered.len(), 240, "240 distinct messages delivered");
    assert!(delivered.values().all(|n| *n == 1), "each exactly once");
    assert_eq!(bot.calls_during_penalty(), 0, "no call during a penalty");
    server.shutdown().await;
}

// ---------------------------------------------------------------------------------
// One cooldown, two processes (two stacks with nothing in common but Redis).

/// The upstream of the cooldown test: the first call is answered 429 `retry_after: 1`;
/// the next one (the probe) takes 300 ms; every call is recorded with its arrival.
#[derive(Clone, Default)]
struct Upstream {
    calls: Arc<Mutex<Vec<(Instant, String)>>>,
}

async fn upstream(State(up): State<Upstream>, body: Bytes) -> Response<Full<Bytes>> {
    let who = String::from_utf8_lossy(&body).into_owned();
    let n = {
        let mut calls = up.calls.lock().unwrap();
        calls.push((Instant::now(), who));
        calls.len()
    };
    if n == 1 {
        let body = json!({"ok": false, "error_code": 429,
            "description": "Too Many Requests: retry after 1",
            "parameters": {"retry_after": 1}});
        return Response::builder()
            .status(429)
            .header("content-type", "application/json")
            .header("retry-after", "1")
            .body(Full::from(body.to_string()))
            .unwrap();
    }
    if n == 2 {
        tokio::time::sleep(300 * MS).await;
    }
    Response::builder()
        .header("content-type", "application/json")
        .body(Full::from(json!({"ok": true, "result": {}}).to_string()))
        .unwrap()
}

/// Process A (an OS process) gets a 429 `retry_after: 1`; process B, another OS process
/// that shares only Redis with it, then sends five messages. None reaches the upstream
/// until the cooldown ends; then B's probe is the only call until it is answered (it
/// takes 300 ms), and the other four follow it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cooldown_started_in_one_process_holds_in_another() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let up = Upstream::default();
    let router = Router::new()
        .route("/bot1:x/sendMessage", post(upstream))
        .with_state(up.clone());
    let server = MockServer::start(router).await.unwrap();
    let url = server.url("/bot1:x/sendMessage");
    let name = unique("cooldown");
    let run = |role: &'static str, count: &'static str| {
        let (redis_url, name, url) = (redis.url().to_owned(), name.clone(), url.clone());
        tokio::task::spawn_blocking(move || {
            run_children(
                1,
                "cooldown",
                &[
                    ("REDIS_URL", &redis_url),
                    ("NAME", &name),
                    ("UPSTREAM", &url),
                    ("COUNT", count),
                    ("ROLE", role),
                ],
            )
        })
    };
    // A: one message, answered 429 (its caller sees the 429: no retry).
    assert_eq!(run("a", "1").await.unwrap(), [0]);
    // B: five messages, every one delivered once the cooldown is over.
    assert_eq!(run("b", "5").await.unwrap(), [5]);

    let calls = up.calls.lock().unwrap().clone();
    let start = calls[0].0;
    let at: Vec<_> = calls.iter().map(|(t, w)| (*t - start, w.clone())).collect();
    println!("calls: {at:?}");
    assert_eq!(calls.len(), 6, "A's call, then B's five");
    assert_eq!(calls[0].1, "a0");
    assert!(calls[1..].iter().all(|(_, who)| who.starts_with('b')));
    // B's first call is its probe, at the cooldown's end (1 s after A's 429).
    let probe = calls[1].0 - calls[0].0;
    assert!(
        probe >= Duration::from_secs(1),
        "B called {probe:?} after A's 429"
    );
    assert!(probe < Duration::from_secs(3), "B's probe waited {probe:?}");
    // The probe is the only call until it is answered.
    for (t, who) in &calls[2..] {
        assert!(
            *t >= calls[1].0 + 300 * MS,
            "{who} went {:?} after the probe, before its answer",
            *t - calls[1].0
        );
    }
    server.shutdown().await;
}

// ---------------------------------------------------------------------------------
// Redis killed mid-run, then restarted.

type CountingUpstream =
    tower::util::BoxCloneSyncService<Request<Full<Bytes>>, Response<Full<Bytes>>, Infallible>;

/// The upstream of the fault test: counts calls.
fn counting() -> (Arc<Mutex<usize>>, CountingUpstream) {
    let calls = Arc::new(Mutex::new(0));
    let c = calls.clone();
    let svc = service_fn(move |_req: Request<Full<Bytes>>| {
        *c.lock().unwrap() += 1;
        async { Ok::<_, Infallible>(Response::new(Full::from("ok"))) }
    });
    (calls, tower::util::BoxCloneSyncService::new(svc))
}

/// What `n` calls through `svc` got: admitted, refused for the limit, refused because
/// the store is unreachable; each call must end within 2 s.
async fn batch<S, B>(svc: &S, n: usize) -> (usize, usize, usize)
where
    S: tower::Service<Request<Full<Bytes>>, Response = Response<B>, Error = ratewise::BoxError>
        + Clone,
{
    let (mut ok, mut limited, mut unavailable) = (0, 0, 0);
    for _ in 0..n {
        let req = Request::new(Full::from("x"));
        let result = tokio::time::timeout(Duration::from_secs(2), svc.clone().oneshot(req))
            .await
            .expect("a call hung");
        match result {
            Ok(_) => ok += 1,
            Err(err) => match Refusal::find(&*err).map(|r| r.kind().clone()) {
                Some(RefusalKind::StoreUnavailable) => unavailable += 1,
                Some(RefusalKind::MaxWait { .. }) => limited += 1,
                other => panic!("unexpected error {err} ({other:?})"),
            },
        }
    }
    (ok, limited, unavailable)
}

/// Counts the Redis handle's outage warnings ("unreachable") and recoveries, across
/// every thread of this test binary (no other test here has an outage in-process).
mod outages {
    use std::sync::{
        atomic::{AtomicUsize, Ordering},
        OnceLock,
    };
    use tracing_subscriber::{layer::SubscriberExt, Layer};

    pub static DOWN: AtomicUsize = AtomicUsize::new(0);
    pub static BACK: AtomicUsize = AtomicUsize::new(0);

    struct Count;

    struct Message(String);

    impl tracing::field::Visit for Message {
        fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
            if field.name() == "message" {
                self.0 = format!("{value:?}");
            }
        }
    }

    impl<S: tracing::Subscriber> Layer<S> for Count {
        fn on_event(
            &self,
            event: &tracing::Event<'_>,
            _: tracing_subscriber::layer::Context<'_, S>,
        ) {
            if *event.metadata().level() != tracing::Level::WARN
                || !event.metadata().target().starts_with("ratewise::redis")
            {
                return;
            }
            let mut message = Message(String::new());
            event.record(&mut message);
            if message.0.contains("unreachable") {
                DOWN.fetch_add(1, Ordering::SeqCst);
            } else if message.0.contains("reachable again") {
                BACK.fetch_add(1, Ordering::SeqCst);
            }
        }
    }

    pub fn install() {
        static ONCE: OnceLock<()> = OnceLock::new();
        ONCE.get_or_init(|| {
            let subscriber = tracing_subscriber::registry().with(Count);
            tracing::subscriber::set_global_default(subscriber).expect("one subscriber");
        });
    }
}

/// A DBSIZE on the restarted server, by a connection of the test's own.
async fn dbsize(url: &str) -> usize {
    let client = redis::Client::open(url).unwrap();
    match client.get_multiplexed_async_connection().await {
        Ok(mut c) => redis::cmd("DBSIZE").query_async(&mut c).await.unwrap_or(0),
        Err(_) => 0,
    }
}

/// Redis is killed mid-run and restarted. Fail-open keeps serving at its local share
/// (20 per 2 s over 4 instances: 5); fail-closed refuses with `StoreUnavailable` at
/// once; both are back on Redis within 1 s of the restart; no call hangs; each handle
/// logs one warning for the outage, not one per request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_redis_killed_mid_run_then_restarted() {
    let Some(mut server) = RedisServer::start() else {
        return;
    };
    if !server.is_own() {
        println!("skipped: REDIS_URL is set, and this test must kill its own redis-server");
        return;
    }
    // Fail-open on database 1, fail-closed on database 0: each one's keys are seen apart.
    let open_url = format!("{}1", server.url());
    let closed_url = format!("{}0", server.url());
    let make = |redis: Redis| {
        ClientStackLayer::builder()
            .rate_limit(|r| {
                r.sliding_window(20, Duration::from_secs(2))
                    .max_wait(Duration::ZERO)
                    .store(redis.rate_limit(&unique("fault")))
            })
            .build()
            .unwrap()
    };
    outages::install();
    let (open_calls, up) = counting();
    let open = ServiceBuilder::new()
        .layer(make(Redis::new(&open_url).unwrap().fail_open(4)))
        .service(up);
    let (_, up) = counting();
    let closed = ServiceBuilder::new()
        .layer(make(Redis::new(&closed_url).unwrap().fail_closed()))
        .service(up);

    // Redis up: the shared quota.
    assert_eq!(batch(&open, 30).await, (20, 10, 0));
    assert_eq!(batch(&closed, 30).await, (20, 10, 0));
    assert_eq!(*open_calls.lock().unwrap(), 20);

    assert_eq!(outages::DOWN.load(std::sync::atomic::Ordering::SeqCst), 0);
    server.kill();
    let down = Instant::now();
    // Fail-open: the local share, 5 of the next 30.
    assert_eq!(batch(&open, 30).await, (5, 25, 0));
    // Fail-closed: every call refused, at once.
    let t = Instant::now();
    assert_eq!(batch(&closed, 30).await, (0, 0, 30));
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "refusals took {:?}",
        t.elapsed()
    );
    println!("down for {:?}", down.elapsed());

    server.restart().unwrap();
    let up_at = Instant::now();
    let mut open_back = None;
    let mut closed_back = None;
    while up_at.elapsed() < Duration::from_secs(3) && (open_back.is_none() || closed_back.is_none())
    {
        if closed_back.is_none() && batch(&closed, 1).await.0 == 1 {
            closed_back = Some(up_at.elapsed());
        }
        if open_back.is_none() {
            batch(&open, 1).await;
            if dbsize(&open_url).await > 0 {
                open_back = Some(up_at.elapsed());
            }
        }
        tokio::time::sleep(20 * MS).await;
    }
    println!("back on redis: fail-open after {open_back:?}, fail-closed after {closed_back:?}");
    assert!(
        open_back.is_some_and(|d| d <= Duration::from_secs(1)),
        "fail-open: {open_back:?}"
    );
    assert!(
        closed_back.is_some_and(|d| d <= Duration::from_secs(1)),
        "fail-closed: {closed_back:?}"
    );
}
