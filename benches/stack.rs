//! Group `stack`: the full client stack (`ClientStackLayer::builder()`: Retry →
//! Cooldown → RateLimit → Classify) on a success, against each of its parts alone and
//! the same four layers stacked by hand.
//!
//! The builder's defaults are kept except the rate (10 per second, burst 10), raised
//! to 10^9 per second so that no call waits: the hot path is what is measured. The
//! parts are the stack's own layers (`retry_layer()`, `cooldown_layer()`,
//! `rate_limit_layer()`) and `ClassifyLayer::new(Preset::default())`, the stack's
//! classifier, so their configuration is the stack's.

use criterion::Criterion;
use ratewise::{
    classify::Preset,
    stack::{ClientStackLayer, Platform},
    ClassifyLayer,
};
use tower::ServiceBuilder;

use crate::{calls, configure, ok_upstream, request, runtime};

const HUGE: u32 = 1_000_000_000;

pub(crate) fn bench(c: &mut Criterion) {
    let rt = runtime();
    let stack = ClientStackLayer::builder()
        .rate_limit(|rl| rl.per_second(HUGE).burst(HUGE))
        .build()
        .expect("valid stack");
    let classify = ClassifyLayer::new(Preset::default());
    let retry = stack.retry_layer().clone();
    let cooldown = stack.cooldown_layer().clone();
    let rate_limit = stack.rate_limit_layer().clone();

    let mut group = c.benchmark_group("stack");
    configure(&mut group);

    group.bench_function("baseline_no_layer", |b| calls(b, &rt, ok_upstream, request));
    group.bench_function("client_stack", |b| {
        calls(
            b,
            &rt,
            || {
                ServiceBuilder::new()
                    .layer(stack.clone())
                    .service(ok_upstream())
            },
            request,
        )
    });
    group.bench_function("four_layers_by_hand", |b| {
        calls(
            b,
            &rt,
            || {
                ServiceBuilder::new()
                    .layer(retry.clone())
                    .layer(cooldown.clone())
                    .layer(rate_limit.clone())
                    .layer(classify.clone())
                    .service(ok_upstream())
            },
            request,
        )
    });
    group.bench_function("part_classify", |b| {
        calls(
            b,
            &rt,
            || {
                ServiceBuilder::new()
                    .layer(classify.clone())
                    .service(ok_upstream())
            },
            request,
        )
    });
    group.bench_function("part_rate_limit", |b| {
        calls(
            b,
            &rt,
            || {
                ServiceBuilder::new()
                    .layer(rate_limit.clone())
                    .service(ok_upstream())
            },
            request,
        )
    });
    group.bench_function("part_cooldown", |b| {
        calls(
            b,
            &rt,
            || {
                ServiceBuilder::new()
                    .layer(cooldown.clone())
                    .service(ok_upstream())
            },
            request,
        )
    });
    group.bench_function("part_retry", |b| {
        calls(
            b,
            &rt,
            || {
                ServiceBuilder::new()
                    .layer(retry.clone())
                    .service(ok_upstream())
            },
            request,
        )
    });

    // A platform preset costs the same as the defaults (only numbers and classifier
    // differ); one of them, for the record.
    let glm = ClientStackLayer::preset(Platform::Glm)
        .rate_limit(|rl| rl.per_second(HUGE).burst(HUGE))
        .build()
        .expect("valid stack");
    group.bench_function("client_stack_glm_preset", |b| {
        calls(
            b,
            &rt,
            || {
                ServiceBuilder::new()
                    .layer(glm.clone())
                    .service(ok_upstream())
            },
            request,
        )
    });

    group.finish();
}
