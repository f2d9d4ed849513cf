//! ratewise's criterion benchmarks, each group putting ratewise beside its peers so that
//! every figure in BENCHMARKS.md is a ratio taken from one run.
//!
//! ```text
//! cargo bench --bench ratewise                 # everything (about 3 minutes)
//! cargo bench --bench ratewise -- rate_limit   # one group: rate_limit, classify, retry,
//!                                              # retry_decision, stack
//! cargo bench --bench ratewise --features testing -- memory   # the in-memory store
//! cargo bench --bench ratewise --features redis,testing -- redis   # the Redis store
//! cargo bench --bench ratewise --features proxy,testing -- proxy   # ratewise-proxy's overhead
//! ```
//!
//! Layout (governor's): this file holds the shared helpers and `main`; one module per
//! theme. `autobenches = false` in Cargo.toml keeps the modules from being bench
//! targets of their own.

use std::{
    alloc::{GlobalAlloc, Layout, System},
    convert::Infallible,
    fmt::Debug,
    hint::black_box,
    sync::atomic::{AtomicBool, AtomicIsize, Ordering},
    time::{Duration, Instant},
};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Bencher};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tokio::runtime::Runtime;
use tower::{Service, ServiceExt};

mod classify;
#[cfg(feature = "testing")]
mod memory;
#[cfg(all(feature = "proxy", feature = "testing"))]
mod proxy;
mod rate_limit;
#[cfg(all(feature = "redis", feature = "testing"))]
mod redis_store;
mod retry;
mod stack;

/// A heap counter for the memory group: counts live bytes only while [`COUNTING`] is
/// set, so every other group pays one relaxed load per allocation and nothing else.
struct CountingAlloc;

static COUNTING: AtomicBool = AtomicBool::new(false);
static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every call is forwarded unchanged to `System`; the counters are plain atomics.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        }
        System.alloc(layout)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if COUNTING.load(Ordering::Relaxed) {
            LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        }
        System.dealloc(ptr, layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            LIVE.fetch_add(
                new_size as isize - layout.size() as isize,
                Ordering::Relaxed,
            );
        }
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

/// Runs `f` with the heap counter on and returns its result and the bytes it left
/// allocated (allocated minus freed while it ran).
#[cfg(feature = "testing")]
pub(crate) fn heap_delta<T>(f: impl FnOnce() -> T) -> (T, isize) {
    let before = LIVE.load(Ordering::SeqCst);
    COUNTING.store(true, Ordering::SeqCst);
    let out = f();
    COUNTING.store(false, Ordering::SeqCst);
    (out, LIVE.load(Ordering::SeqCst) - before)
}

/// A current-thread runtime with time enabled (tower's `RateLimit` makes a `Sleep` when
/// it is built; ratewise reads `tokio::time::Instant`).
pub(crate) fn runtime() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime")
}

/// The body every inner service answers with.
pub(crate) type Body = Full<Bytes>;

/// A request to `http://127.0.0.1:1/v1/send` with an `x-api-key` header: the same
/// request for every variant of a group (the cooldown keys on the authority, the keyed
/// rate limiter on the header).
pub(crate) fn request() -> Request<Body> {
    Request::post("http://127.0.0.1:1/v1/send")
        .header("x-api-key", "client-42")
        .body(Full::new(Bytes::from_static(b"{\"text\":\"hi\"}")))
        .expect("a valid request")
}

/// A `200 OK` answered at once: the upstream that costs nothing, so what is measured
/// is the layers.
pub(crate) fn ok_upstream(
) -> impl Service<Request<Body>, Response = Response<Body>, Error = Infallible, Future = impl Send>
       + Clone
       + Send
       + 'static {
    tower::service_fn(|_req: Request<Body>| async {
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(
            b"{\"ok\":true}",
        ))))
    })
}

/// Measures `iters` sequential calls (`ready`, `call`, await the response) on one
/// service made by `make` for the batch; only the calls are timed, not `make`.
pub(crate) fn calls<S, B, MS, MR>(b: &mut Bencher<'_>, rt: &Runtime, make: MS, req: MR)
where
    MS: Fn() -> S,
    MR: Fn() -> Request<B>,
    S: Service<Request<B>>,
    S::Error: Debug,
{
    b.to_async(rt).iter_custom(|iters| {
        let mut svc = make();
        let req = &req;
        async move {
            let start = Instant::now();
            for _ in 0..iters {
                let res = svc
                    .ready()
                    .await
                    .expect("ready")
                    .call(req())
                    .await
                    .expect("call");
                black_box(res);
            }
            start.elapsed()
        }
    });
}

/// Like [`calls`], then reads the whole response body (what a caller of a classified
/// response does); the body's length is checked against `len` outside the timing.
pub(crate) fn calls_and_collect<S, B, RB, MS, MR>(
    b: &mut Bencher<'_>,
    rt: &Runtime,
    make: MS,
    req: MR,
    len: usize,
) where
    MS: Fn() -> S,
    MR: Fn() -> Request<B>,
    S: Service<Request<B>, Response = Response<RB>>,
    S::Error: Debug,
    RB: http_body::Body,
    RB::Error: Debug,
{
    b.to_async(rt).iter_custom(|iters| {
        let mut svc = make();
        let req = &req;
        async move {
            let mut total = 0usize;
            let start = Instant::now();
            for _ in 0..iters {
                let res = svc
                    .ready()
                    .await
                    .expect("ready")
                    .call(req())
                    .await
                    .expect("call");
                let body = res.into_body().collect().await.expect("body").to_bytes();
                total += black_box(body).len();
            }
            let elapsed = start.elapsed();
            assert_eq!(total, len * iters as usize, "every byte reached the caller");
            elapsed
        }
    });
}

/// The group settings every time-based group uses: short, because the machine is
/// shared and only ratios within a run are reported.
pub(crate) fn configure(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
) {
    group
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(40);
}

/// A `200` with `body` and `status`.
pub(crate) fn response(status: StatusCode, body: Bytes) -> Response<Body> {
    let mut res = Response::new(Full::new(body));
    *res.status_mut() = status;
    res
}

/// The memory group, with the feature that reaches the store engines (`testing`).
fn memory(c: &mut criterion::Criterion) {
    #[cfg(feature = "testing")]
    memory::bench(c);
    let _ = c;
}

/// The Redis group, with the features that make it (`redis`, `testing`).
fn redis(c: &mut criterion::Criterion) {
    #[cfg(all(feature = "redis", feature = "testing"))]
    redis_store::bench(c);
    let _ = c;
}

/// The proxy group, with the features that make it (`proxy`, `testing`).
fn proxy(c: &mut criterion::Criterion) {
    #[cfg(all(feature = "proxy", feature = "testing"))]
    proxy::bench(c);
    let _ = c;
}

criterion_group!(
    benches,
    rate_limit::bench,
    classify::bench,
    retry::bench,
    retry::bench_decision,
    stack::bench,
    redis,
    proxy,
    // Last: its simulated-time report pauses tokio's clock, which makes every later
    // `tokio::time::Instant::now` in the process take the (slower) paused-clock path.
    memory,
);
criterion_main!(benches);
