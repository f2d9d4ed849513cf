//! Group `rate_limit`: the admission hot path, a request admitted without waiting.
//!
//! Every limiter gets a quota it can never exhaust during the run (10^9 per second),
//! so no variant ever waits: what is measured is the bookkeeping a limiter adds to a
//! call whose inner service answers at once. The governor rows are the raw engine
//! (`check`, `check_key`) without any service around it: a lower bound.

use std::{hint::black_box, num::NonZeroU32, time::Duration};

use criterion::Criterion;
use ratewise::{
    key::{Key, RequestRef},
    RateLimitLayer,
};
use tower::ServiceBuilder;

use crate::{calls, configure, ok_upstream, request, runtime};

/// Cells per second for every limiter: far more than a run can take.
const HUGE: u32 = 1_000_000_000;

pub(crate) fn bench(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("rate_limit");
    configure(&mut group);

    group.bench_function("baseline_no_layer", |b| calls(b, &rt, ok_upstream, request));

    let global = RateLimitLayer::builder()
        .per_second(HUGE)
        .burst(HUGE)
        .build()
        .expect("valid quota");
    group.bench_function("ratewise_global", |b| {
        calls(
            b,
            &rt,
            || {
                ServiceBuilder::new()
                    .layer(global.clone())
                    .service(ok_upstream())
            },
            request,
        )
    });

    let keyed = RateLimitLayer::builder()
        .per_second(HUGE)
        .burst(HUGE)
        .key(|req: &RequestRef<'_>| {
            Key::from(
                req.headers()
                    .get("x-api-key")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or(""),
            )
        })
        .build()
        .expect("valid quota");
    group.bench_function("ratewise_keyed_by_header", |b| {
        calls(
            b,
            &rt,
            || {
                ServiceBuilder::new()
                    .layer(keyed.clone())
                    .service(ok_upstream())
            },
            request,
        )
    });

    // tower's RateLimit is not Clone and sleeps in poll_ready once `num` calls were
    // made within `per`: with u64::MAX per second it never does.
    let tower_layer = tower::limit::RateLimitLayer::new(u64::MAX, Duration::from_secs(1));
    group.bench_function("tower_rate_limit", |b| {
        calls(
            b,
            &rt,
            || {
                ServiceBuilder::new()
                    .layer(tower_layer.clone())
                    .service(ok_upstream())
            },
            request,
        )
    });

    // tower-resilience's limiter (fixed window, the default; permit taken in the
    // response future, which is boxed).
    let resilience = tower_resilience_ratelimiter::RateLimiterLayer::builder()
        .limit_for_period(HUGE as usize)
        .refresh_period(Duration::from_secs(1))
        .timeout_duration(Duration::from_millis(100))
        .build()
        .expect("valid config");
    group.bench_function("tower_resilience_rate_limiter", |b| {
        calls(
            b,
            &rt,
            || {
                ServiceBuilder::new()
                    .layer(resilience.clone())
                    .service(ok_upstream())
            },
            request,
        )
    });

    let quota = governor::Quota::per_second(NonZeroU32::new(HUGE).expect("non-zero"));
    let direct = governor::RateLimiter::direct(quota);
    group.bench_function("governor_direct_check", |b| {
        b.iter(|| black_box(direct.check()).expect("admitted"))
    });

    let keyed_engine = governor::DefaultKeyedRateLimiter::<Key>::keyed(quota);
    let key = Key::from("client-42");
    group.bench_function("governor_keyed_check_key", |b| {
        b.iter(|| black_box(keyed_engine.check_key(&key)).expect("admitted"))
    });

    group.finish();
}
