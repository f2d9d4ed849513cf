//! Group `memory`: 1,000,000 distinct keys pushed through ratewise's `GovernorStore`
//! (which evicts rested keys as it goes) and through governor's keyed limiter as it
//! comes (no `retain_recent` call, the state nobody sweeps).
//!
//! Each benchmark times one pass of the 1M keys (one admission each) on a fresh store.
//! Before its first timed pass it makes one extra pass with the heap counter on and
//! prints, to stdout, `keys held` (`len()` at the end) and `heap retained` (bytes the
//! pass left allocated: the store, its map and the key strings it still holds; the
//! list of keys is built and dropped inside the counted pass). Two scenarios:
//!
//! - `1M_keys_realtime`: the keys arrive as fast as the loop runs, on the real clock,
//!   with a quota of 1000 per second and a burst of 1, so a key has rested 1 ms after
//!   its admission.
//! - `1M_keys_simulated`: a per-client quota (10 per second, burst 10) with the keys
//!   arriving at 10,000 new keys per simulated second (the clock moves 100 ms after
//!   every 1,000 keys): tokio's paused clock for ratewise, governor's
//!   `FakeRelativeClock` for governor. Its ratewise timing includes tokio's
//!   paused-clock `Instant::now` (a mutex), which a real program does not pay; its
//!   governor timing does not. It runs last in the whole bench: once tokio's clock has
//!   been paused, every later `tokio::time::Instant::now` in the process is slower.

use std::{
    num::NonZeroU32,
    time::{Duration, Instant},
};

use criterion::{Criterion, SamplingMode};
use governor::{clock::FakeRelativeClock, state::keyed::DashMapStateStore};
use ratewise::{
    key::Key,
    rate_limit::Quota,
    testing::engine::{GovernorStore, Keys, RateLimitStore},
};

use crate::{heap_delta, runtime};

const KEYS: usize = 1_000_000;
/// Simulated arrivals: the clock moves this much after every `BATCH` keys.
const BATCH: usize = 1_000;
const STEP: Duration = Duration::from_millis(100);

fn keys() -> Vec<Key> {
    (0..KEYS)
        .map(|i| Key::from(format!("client-{i}")))
        .collect()
}

fn one() -> NonZeroU32 {
    NonZeroU32::MIN
}

/// One pass on the real clock through a fresh `GovernorStore` (its future is
/// `std::future::Ready`: the runtime only drives the loop).
fn ratewise_realtime(rt: &tokio::runtime::Runtime, keys: &[Key]) -> GovernorStore {
    rt.block_on(async {
        let quota = Quota::per_second(NonZeroU32::new(1000).expect("non-zero"))
            .with_burst(NonZeroU32::MIN)
            .expect("valid quota");
        let store = GovernorStore::new(quota);
        for key in keys {
            let decision = store
                .acquire(&Keys::one(key.clone()), one())
                .await
                .expect("decided");
            std::hint::black_box(decision);
        }
        store
    })
}

type GovernorKeyed<C> = governor::RateLimiter<
    Key,
    DashMapStateStore<Key>,
    C,
    governor::middleware::NoOpMiddleware<<C as governor::clock::Clock>::Instant>,
>;

/// One pass on the real clock through governor's keyed limiter, never swept.
fn governor_realtime(keys: &[Key]) -> GovernorKeyed<governor::clock::DefaultClock> {
    let quota = governor::Quota::per_second(NonZeroU32::new(1000).expect("non-zero"))
        .allow_burst(NonZeroU32::MIN);
    let limiter = governor::DefaultKeyedRateLimiter::<Key>::keyed(quota);
    for key in keys {
        std::hint::black_box(limiter.check_key(key).is_ok());
    }
    limiter
}

/// One pass in simulated time through a fresh `GovernorStore`, on a paused runtime.
fn ratewise_simulated(rt: &tokio::runtime::Runtime, keys: &[Key]) -> GovernorStore {
    rt.block_on(async {
        let quota = Quota::per_second(NonZeroU32::new(10).expect("non-zero"));
        let store = GovernorStore::new(quota);
        for batch in keys.chunks(BATCH) {
            for key in batch {
                let decision = store
                    .acquire(&Keys::one(key.clone()), one())
                    .await
                    .expect("decided");
                std::hint::black_box(decision);
            }
            tokio::time::advance(STEP).await;
        }
        store
    })
}

/// One pass in simulated time through governor's keyed limiter, never swept.
fn governor_simulated(keys: &[Key]) -> GovernorKeyed<FakeRelativeClock> {
    let quota = governor::Quota::per_second(NonZeroU32::new(10).expect("non-zero"));
    let clock = FakeRelativeClock::default();
    let limiter = governor::RateLimiter::new(quota, DashMapStateStore::default(), clock.clone());
    for batch in keys.chunks(BATCH) {
        for key in batch {
            std::hint::black_box(limiter.check_key(key).is_ok());
        }
        clock.advance(STEP);
    }
    limiter
}

/// The counted pass: builds the keys, runs `pass`, drops the keys, and prints what
/// the store still holds.
fn report<T>(name: &str, pass: impl FnOnce(&[Key]) -> T, len: impl Fn(&T) -> usize) {
    let (store, bytes) = heap_delta(|| {
        let keys = keys();
        pass(&keys)
    });
    let held = len(&store);
    println!(
        "memory report: {name}: keys held {held} of {KEYS}, heap retained {bytes} bytes ({:.1} MiB)",
        bytes as f64 / (1024.0 * 1024.0)
    );
    drop(store);
}

/// Times `iters` passes of `pass` over `keys`, each on a fresh store; the store is
/// dropped outside the timing.
fn timed<T>(iters: u64, keys: &[Key], mut pass: impl FnMut(&[Key]) -> T) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        let start = Instant::now();
        let store = pass(keys);
        total += start.elapsed();
        drop(store);
    }
    total
}

pub(crate) fn bench(c: &mut Criterion) {
    let keys = keys();
    let rt = runtime();
    let mut group = c.benchmark_group("memory");
    group
        .sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));

    let mut reported = false;
    group.bench_function("1M_keys_realtime/ratewise_governor_store", |b| {
        if !std::mem::replace(&mut reported, true) {
            report(
                "1M_keys_realtime/ratewise_governor_store",
                |keys| ratewise_realtime(&rt, keys),
                GovernorStore::len,
            );
        }
        b.iter_custom(|iters| timed(iters, &keys, |keys| ratewise_realtime(&rt, keys)))
    });

    let mut reported = false;
    group.bench_function("1M_keys_realtime/governor_keyed_no_retain", |b| {
        if !std::mem::replace(&mut reported, true) {
            report(
                "1M_keys_realtime/governor_keyed_no_retain",
                governor_realtime,
                |l| l.len(),
            );
        }
        b.iter_custom(|iters| timed(iters, &keys, governor_realtime))
    });

    let mut reported = false;
    group.bench_function("1M_keys_simulated/governor_keyed_no_retain", |b| {
        if !std::mem::replace(&mut reported, true) {
            report(
                "1M_keys_simulated/governor_keyed_no_retain",
                governor_simulated,
                |l| l.len(),
            );
        }
        b.iter_custom(|iters| timed(iters, &keys, governor_simulated))
    });

    // Last: pausing tokio's clock slows every later tokio `Instant::now` in the process.
    let paused = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a paused runtime");
    let mut reported = false;
    group.bench_function("1M_keys_simulated/ratewise_governor_store", |b| {
        if !std::mem::replace(&mut reported, true) {
            report(
                "1M_keys_simulated/ratewise_governor_store",
                |keys| ratewise_simulated(&paused, keys),
                GovernorStore::len,
            );
        }
        b.iter_custom(|iters| timed(iters, &keys, |keys| ratewise_simulated(&paused, keys)))
    });

    group.finish();
}
