//! The `metrics` feature: every layer's counters reach the installed recorder, with the
//! right values and bounded labels.
//!
//! Each test installs `metrics-util`'s `DebuggingRecorder` for its own thread only
//! (`set_default_local_recorder`), so tests do not share a recorder. The runtimes are
//! current-thread on tokio's paused clock: every layer runs on the test's thread.
#![cfg(all(feature = "metrics", feature = "testing"))]

use std::{collections::BTreeMap, time::Duration};

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::Full;
use metrics_util::{
    debugging::{DebugValue, DebuggingRecorder, Snapshotter},
    MetricKind,
};
use ratewise::{
    cache::CachedEndpointLayer,
    classify::{ClassifyLayer, Preset},
    key::{Key, MethodUri, RequestRef},
    pool::Pool,
    stack::{ClientStackLayer, Platform},
    testing::{glm, json_request, GlmApi, QqGateway},
    vocabulary::{Budget, RefusalKind},
    BoxError, Refusal,
};
use serde_json::json;
use tokio::time::{advance, Instant};
use tower::{ServiceBuilder, ServiceExt};

/// An API key: the stack's rate limit and cooldown key on it. No label may show it.
const API_KEY: &str = "sk-SECRET-4f9c2e71";

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// One metric as the recorder saw it: its labels, sorted, and its value.
#[derive(Debug)]
struct Seen {
    kind: MetricKind,
    name: String,
    labels: BTreeMap<String, String>,
    value: DebugValue,
}

fn seen(snapshotter: &Snapshotter) -> Vec<Seen> {
    snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .map(|(key, _, _, value)| {
            let (kind, key) = key.into_parts();
            Seen {
                kind,
                name: key.name().to_owned(),
                labels: key
                    .labels()
                    .map(|l| (l.key().to_owned(), l.value().to_owned()))
                    .collect(),
                value,
            }
        })
        .collect()
}

/// The value of the counter `name` whose labels are exactly `labels`; 0 if never moved.
fn counter(all: &[Seen], name: &str, labels: &[(&str, &str)]) -> u64 {
    let want: BTreeMap<String, String> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    all.iter()
        .filter(|s| s.kind == MetricKind::Counter && s.name == name && s.labels == want)
        .map(|s| match s.value {
            DebugValue::Counter(n) => n,
            _ => unreachable!("a counter holds a count"),
        })
        .sum()
}

/// The samples of the histogram `name` whose labels are exactly `labels`.
fn histogram(all: &[Seen], name: &str, labels: &[(&str, &str)]) -> Vec<f64> {
    let want: BTreeMap<String, String> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    all.iter()
        .filter(|s| s.kind == MetricKind::Histogram && s.name == name && s.labels == want)
        .flat_map(|s| match &s.value {
            DebugValue::Histogram(v) => v.iter().map(|x| x.into_inner()).collect::<Vec<_>>(),
            _ => unreachable!("a histogram holds samples"),
        })
        .collect()
}

/// Every label is `layer`, `name` or `reason`, from a fixed set of words except the
/// name given, and none carries the key, the URL or the host.
fn assert_bounded_labels(all: &[Seen], name: &str) {
    const LAYERS: [&str; 5] = ["rate_limit", "cooldown", "retry", "cache", "pool"];
    const REASONS: [&str; 12] = [
        "max_wait",
        "cost_exceeds_burst",
        "over_limit",
        "cooling_down",
        "endpoint_limited",
        "all_backends_cooling",
        "no_backend_ready",
        "no_route",
        "attempts",
        "deadline",
        "max_delay",
        "budget",
    ];
    assert!(!all.is_empty());
    for s in all {
        assert!(s.name.starts_with("ratewise_"), "{s:?}");
        for (k, v) in &s.labels {
            match k.as_str() {
                "layer" => assert!(LAYERS.contains(&v.as_str()), "{s:?}"),
                "name" => assert_eq!(v, name, "{s:?}"),
                "reason" => assert!(REASONS.contains(&v.as_str()), "{s:?}"),
                other => panic!("unexpected label {other} in {s:?}"),
            }
            for leak in ["SECRET", "sk-", "/", ".test", "127.0.0.1"] {
                assert!(!v.contains(leak), "label {k}={v} leaks {leak:?}");
            }
        }
    }
}

/// A GLM chat call carrying the API key.
fn chat() -> Request<Full<Bytes>> {
    let mut req = json_request(
        Method::POST,
        &format!("http://glm.test{}", glm::PATH),
        &json!({"messages": [{"role": "user", "content": "hi"}]}),
    )
    .unwrap();
    req.headers_mut()
        .insert("x-api-key", API_KEY.parse().unwrap());
    req
}

fn api_key(req: &RequestRef<'_>) -> Key {
    let key = req.headers().get("x-api-key").and_then(|v| v.to_str().ok());
    Key::from(key.unwrap_or("none").to_owned())
}

/// A 429 storm through the GLM preset of the full stack, keyed by API key: every
/// counter of the rate limit, the cooldown and the retry moves, each metric equals the
/// layer's own stats counter, and the values are the ones the scenario implies.
#[tokio::test(start_paused = true)]
async fn a_429_storm_through_the_stack_moves_every_counter_and_no_label_carries_the_key(
) -> Result<(), BoxError> {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _local = metrics::set_default_local_recorder(&recorder);

    let glm = GlmApi::new();
    let stack = ClientStackLayer::preset(Platform::Glm)
        // One request per 100 ms per key, a wait of at most 150 ms.
        .rate_limit(|rl| {
            rl.per_second(10)
                .burst(1)
                .margin_percent(0)
                .max_wait(ms(150))
                .key(api_key)
        })
        // Cooldowns of 1 s, 2 s, 4 s... (GLM sends no hint), waited for up to 10 s.
        .cooldown(|c| c.key(api_key))
        // Three attempts, 100 ms apart.
        .retry(|r| {
            r.schedule([ms(100), ms(100)])
                .max_attempts(3)
                .deadline(Duration::from_secs(60))
        })
        .build()?;
    let svc = ServiceBuilder::new()
        .layer(stack.clone())
        .service(glm.router());
    let call = |req| svc.clone().oneshot(req);

    // 1. Two calls at once: the second waits its 100 ms in the rate limiter.
    let (a, b) = tokio::join!(call(chat()), call(chat()));
    assert_eq!((a?.status(), b?.status()), (StatusCode::OK, StatusCode::OK));

    // 2. Three at once: the third would wait 200 ms, past max_wait: refused, and the
    //    retry gives it back at once (reason max_wait).
    advance(Duration::from_secs(1)).await;
    let (c, d, e) = tokio::join!(call(chat()), call(chat()), call(chat()));
    assert_eq!((c?.status(), d?.status()), (StatusCode::OK, StatusCode::OK));
    let refused = e.unwrap_err();
    assert!(matches!(
        Refusal::find(&*refused).map(|r| r.kind().clone()),
        Some(RefusalKind::MaxWait { .. })
    ));

    // 3. The storm: every answer is a 429 1302. One call: attempt 1 at t (cooldown of
    //    1 s starts); attempt 2 at t+100 ms meets the cooldown, waits, probes at t+1 s
    //    (cooldown of 2 s); attempt 3 at t+1.1 s meets it, probes at t+3 s (4 s). Out
    //    of attempts: the caller gets the 429.
    advance(Duration::from_secs(1)).await;
    glm.set_always_rate_limited(true);
    let t = Instant::now();
    let res = call(chat()).await?;
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(t.elapsed(), Duration::from_secs(3));

    // 4. A caller with 2 s of patience meets the 4 s cooldown: the cooldown refuses
    //    it, and the retry gives up (reason deadline) rather than wait past its budget.
    let mut req = chat();
    req.extensions_mut().insert(Budget(Duration::from_secs(2)));
    let refused = call(req).await.unwrap_err();
    assert!(matches!(
        Refusal::find(&*refused).map(|r| r.kind().clone()),
        Some(RefusalKind::CoolingDown)
    ));
    assert_eq!(glm.hits().count(), 2 + 2 + 3);

    let all = seen(&snapshotter);
    assert_bounded_labels(&all, "glm");
    let stats = stack.stats();
    let (rl, cd, rt) = (stats.rate_limit, stats.cooldown, stats.retry);
    let rate_limit = [("layer", "rate_limit"), ("name", "glm")];
    let cooldown = [("layer", "cooldown"), ("name", "glm")];
    let retry = [("layer", "retry"), ("name", "glm")];
    let with = |base: [(&'static str, &'static str); 2], reason: &'static str| {
        [base[0], base[1], ("reason", reason)]
    };

    // The rate limiter: 7 calls reached the upstream, 2 waited 100 ms each, 1 refused.
    assert_eq!(counter(&all, "ratewise_admitted_total", &rate_limit), 7);
    assert_eq!(counter(&all, "ratewise_waited_total", &rate_limit), 2);
    assert_eq!(
        histogram(&all, "ratewise_wait_seconds", &rate_limit),
        [0.1, 0.1]
    );
    let max_wait = with(rate_limit, "max_wait");
    assert_eq!(counter(&all, "ratewise_rejected_total", &max_wait), 1);
    assert_eq!(
        (rl.admitted, rl.waited, rl.total_wait_ms, rl.rejected),
        (7, 2, 200, 1)
    );

    // The cooldown: 3 started, 3 requests met one (2 waited, 1 refused), 2 probes.
    assert_eq!(
        counter(&all, "ratewise_cooldowns_started_total", &cooldown),
        3
    );
    assert_eq!(counter(&all, "ratewise_met_cooldown_total", &cooldown), 3);
    assert_eq!(counter(&all, "ratewise_waited_total", &cooldown), 2);
    assert_eq!(counter(&all, "ratewise_probes_total", &cooldown), 2);
    let cooling = with(cooldown, "cooling_down");
    assert_eq!(counter(&all, "ratewise_rejected_total", &cooling), 1);
    assert_eq!(
        (
            cd.cooldowns_started,
            cd.met_cooldown,
            cd.waited,
            cd.probes,
            cd.rejected
        ),
        (3, 3, 2, 2, 1)
    );

    // The retry: 7 calls, 2 retries, one give-up for each of three reasons.
    assert_eq!(counter(&all, "ratewise_calls_total", &retry), 7);
    assert_eq!(counter(&all, "ratewise_retries_total", &retry), 2);
    for reason in ["max_wait", "attempts", "deadline"] {
        assert_eq!(
            counter(&all, "ratewise_give_ups_total", &with(retry, reason)),
            1,
            "{reason}"
        );
    }
    assert_eq!(
        counter(&all, "ratewise_give_ups_total", &with(retry, "budget")),
        0
    );
    assert_eq!((rt.calls, rt.retries, rt.give_ups), (7, 2, 3));
    Ok(())
}

/// The QQ `/gateway` behind the cache: a hit, then stale serves while the gateway is
/// rate-limited. The URL (the cache key) carries a token; no label shows it.
#[tokio::test(start_paused = true)]
async fn cache_hits_and_stale_serves_are_counted_under_the_cache_name() -> Result<(), BoxError> {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _local = metrics::set_default_local_recorder(&recorder);

    let qq = QqGateway::new().limit(1);
    let cache = CachedEndpointLayer::builder().name("gateway").build()?;
    let handle = cache.handle();
    let svc = ServiceBuilder::new()
        .layer(cache)
        .layer(ClassifyLayer::new(Preset::qq()))
        .service(qq.router());
    let url = "http://qq.test/gateway?access_token=SECRET-77";
    let get = || Request::get(url).body(Full::<Bytes>::default()).unwrap();

    // A miss that fills the entry, then a hit.
    assert_eq!(svc.clone().oneshot(get()).await?.status(), StatusCode::OK);
    assert_eq!(svc.clone().oneshot(get()).await?.status(), StatusCode::OK);
    // Invalidated: the refresh is answered "over the limit", and the stale entry is
    // served, then served again while the endpoint cools down.
    advance(ms(10)).await;
    assert!(handle.invalidate(MethodUri::key_for(&Method::GET, &url.parse()?)));
    assert_eq!(svc.clone().oneshot(get()).await?.status(), StatusCode::OK);
    assert_eq!(svc.clone().oneshot(get()).await?.status(), StatusCode::OK);
    assert_eq!((qq.hits().served(), qq.hits().count()), (1, 2));

    let all = seen(&snapshotter);
    assert_bounded_labels(&all, "gateway");
    let labels = [("layer", "cache"), ("name", "gateway")];
    let stats = handle.stats();
    assert_eq!(counter(&all, "ratewise_cache_hits_total", &labels), 1);
    assert_eq!(counter(&all, "ratewise_stale_serves_total", &labels), 2);
    assert_eq!(counter(&all, "ratewise_cache_misses_total", &labels), 3);
    assert_eq!(counter(&all, "ratewise_upstream_calls_total", &labels), 2);
    assert_eq!(
        (
            stats.hits,
            stats.stale_serves,
            stats.misses,
            stats.upstream_calls
        ),
        (1, 2, 3, 2)
    );
    Ok(())
}

/// A pool of two GLM backends: the primary's 429 fails the call over to the fallback;
/// once both cool, the next call is refused (all backends cooling).
#[tokio::test(start_paused = true)]
async fn pool_failovers_and_refusals_are_counted_under_the_pool_name() -> Result<(), BoxError> {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _local = metrics::set_default_local_recorder(&recorder);

    let (primary, fallback) = (GlmApi::new().always_rate_limited(true), GlmApi::new());
    let backend = |glm: &GlmApi| {
        ServiceBuilder::new()
            .layer(ClassifyLayer::new(Preset::glm()))
            .service(glm.router())
    };
    let pool = Pool::builder()
        .name("llm")
        .primary("primary", backend(&primary))
        .fallback("fallback", backend(&fallback))
        .max_wait(Duration::ZERO)
        .build()?;

    // Primary 429 → fallback 200, in one call.
    assert_eq!(pool.clone().oneshot(chat()).await?.status(), StatusCode::OK);
    // Primary cooling: straight to the fallback, no failover.
    assert_eq!(pool.clone().oneshot(chat()).await?.status(), StatusCode::OK);
    // The fallback is limited too: its 429 comes back, then nobody is left.
    fallback.set_always_rate_limited(true);
    let res = pool.clone().oneshot(chat()).await?;
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    let refused = pool.clone().oneshot(chat()).await.unwrap_err();
    assert!(matches!(
        Refusal::find(&*refused).map(|r| r.kind().clone()),
        Some(RefusalKind::AllBackendsCooling { .. })
    ));

    let all = seen(&snapshotter);
    assert_bounded_labels(&all, "llm");
    let labels = [("layer", "pool"), ("name", "llm")];
    let totals = pool.handle().totals();
    assert_eq!(counter(&all, "ratewise_calls_total", &labels), 4);
    assert_eq!(counter(&all, "ratewise_failovers_total", &labels), 1);
    let cooling = [labels[0], labels[1], ("reason", "all_backends_cooling")];
    assert_eq!(counter(&all, "ratewise_rejected_total", &cooling), 1);
    assert_eq!(
        (totals.calls, totals.failovers, totals.all_cooling),
        (4, 1, 1)
    );
    // The pool's cooldown table reports under the pool's name: both backends cooled.
    let cooldown = [("layer", "cooldown"), ("name", "llm")];
    assert_eq!(
        counter(&all, "ratewise_cooldowns_started_total", &cooldown),
        2
    );
    Ok(())
}

/// The recorder only sees what moves on its thread while it is installed: a layer
/// built before it (here, outside it) still reports, because the metrics are looked
/// up as they move.
#[tokio::test(start_paused = true)]
async fn a_layer_built_before_the_recorder_reports_to_it() -> Result<(), BoxError> {
    let stack = ClientStackLayer::builder().name("early").build()?;
    let glm = GlmApi::new();
    let svc = ServiceBuilder::new().layer(stack).service(glm.router());

    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _local = metrics::set_default_local_recorder(&recorder);
    assert_eq!(svc.oneshot(chat()).await?.status(), StatusCode::OK);

    let all = seen(&snapshotter);
    assert_bounded_labels(&all, "early");
    let labels = [("layer", "rate_limit"), ("name", "early")];
    assert_eq!(counter(&all, "ratewise_admitted_total", &labels), 1);
    Ok(())
}
