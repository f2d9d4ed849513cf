//! Groups `retry` and `retry_decision`.
//!
//! `retry`: the hot path, a call that succeeds on the first try, through
//! - no layer (baseline);
//! - `ratewise::RetryLayer` with its defaults (it keeps a copy of the request in case it
//!   must resend it, reads the verdict, counts the call);
//! - `tower::retry::RetryLayer` with a minimal policy that clones the request and
//!   retries errors only: the floor any retrying layer pays (ratewise's `Retry<S>`
//!   wraps tower's `Retry`, driven by ratewise's policy, with its own deadline future);
//! - `tower-resilience`'s retry layer (exponential backoff, 3 attempts; its response
//!   future is boxed).
//!
//! `retry_decision`: the decision taken after a retryable answer, without any service:
//! - ratewise's `RetryPolicy::retry` (tower's `Policy` trait) on a bare 429: reads the
//!   verdict, checks attempts, takes the delay from the schedule, counts the retry and
//!   creates the `tokio::time::Sleep` it returns (a fresh policy clone per decision, as
//!   tower makes per call);
//! - `retry-policies`' `ExponentialBackoff::should_retry`, the policy engine
//!   `reqwest-retry` calls: exponent, jitter from `rand`'s thread RNG, `SystemTime::now`.
//!
//! `reqwest-retry` itself is not measured: it is a `reqwest-middleware` middleware that
//! only runs inside a `reqwest` client sending real requests, so it cannot be put
//! around the same in-process service as the others.

use std::{
    convert::Infallible,
    future::{ready, Ready},
    hint::black_box,
    time::{Duration, SystemTime},
};

use criterion::Criterion;
use http::{Request, Response, StatusCode};
use ratewise::{retry::Jitter, BoxError, RetryLayer};
use retry_policies::{policies::ExponentialBackoff, RetryDecision, RetryPolicy};
use tower::{retry::Policy, ServiceBuilder};

use crate::{calls, configure, ok_upstream, request, response, runtime, Body};

/// The least a retry policy can be: keep a copy of the request, retry errors at once,
/// never a response.
#[derive(Clone, Copy, Debug)]
struct RetryErrors;

impl<B: Clone, Res, E> Policy<Request<B>, Res, E> for RetryErrors {
    type Future = Ready<()>;

    fn retry(&mut self, _req: &mut Request<B>, result: &mut Result<Res, E>) -> Option<Ready<()>> {
        result.is_err().then(|| ready(()))
    }

    fn clone_request(&mut self, req: &Request<B>) -> Option<Request<B>> {
        Some(req.clone())
    }
}

pub(crate) fn bench(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("retry");
    configure(&mut group);

    group.bench_function("baseline_no_layer", |b| calls(b, &rt, ok_upstream, request));

    let ratewise = RetryLayer::builder().build().expect("valid config");
    group.bench_function("ratewise_retry", |b| {
        calls(
            b,
            &rt,
            || {
                ServiceBuilder::new()
                    .layer(ratewise.clone())
                    .service(ok_upstream())
            },
            request,
        )
    });

    let tower_layer = tower::retry::RetryLayer::new(RetryErrors);
    group.bench_function("tower_retry_minimal_policy", |b| {
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

    let resilience =
        tower_resilience_retry::RetryLayer::<Request<Body>, Response<Body>, Infallible>::builder()
            .max_attempts(3)
            .exponential_backoff(Duration::from_millis(100))
            .build();
    group.bench_function("tower_resilience_retry", |b| {
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

    group.finish();
}

pub(crate) fn bench_decision(c: &mut Criterion) {
    let rt = runtime();
    // tower's policy returns a tokio `Sleep`, which needs a runtime with a timer.
    let _enter = rt.enter();
    let mut group = c.benchmark_group("retry_decision");
    configure(&mut group);

    let mut req = request();
    let mut limited: Result<Response<Body>, BoxError> = Ok(response(
        StatusCode::TOO_MANY_REQUESTS,
        bytes::Bytes::from_static(b"{}"),
    ));

    for (name, jitter) in [
        ("ratewise_policy_retry_no_jitter", Jitter::None),
        ("ratewise_policy_retry_full_jitter", Jitter::Full),
    ] {
        let layer = RetryLayer::builder()
            .jitter(jitter)
            .build()
            .expect("valid config");
        let policy = layer.policy();
        // The decision is "retry after the first scheduled delay".
        assert!(policy.clone().retry(&mut req, &mut limited).is_some());
        group.bench_function(name, |b| {
            b.iter(|| {
                let mut call = policy.clone();
                black_box(call.retry(&mut req, &mut limited)).expect("a retry")
            })
        });
    }

    for (name, jitter) in [
        (
            "retry_policies_should_retry_no_jitter",
            retry_policies::Jitter::None,
        ),
        (
            "retry_policies_should_retry_full_jitter",
            retry_policies::Jitter::Full,
        ),
    ] {
        let policy = ExponentialBackoff::builder()
            .jitter(jitter)
            .build_with_max_retries(3);
        let start = SystemTime::now();
        assert!(matches!(
            policy.should_retry(start, 0),
            RetryDecision::Retry { .. }
        ));
        group.bench_function(name, |b| {
            b.iter(
                || match black_box(policy.should_retry(start, black_box(0))) {
                    RetryDecision::Retry { execute_after } => execute_after,
                    RetryDecision::DoNotRetry => unreachable!("0 past retries of 3"),
                },
            )
        });
    }

    group.finish();
}
