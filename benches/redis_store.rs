//! The Redis store beside a raw `PING` in the same run: one decision should be one
//! round trip (`cargo bench --bench ratewise --features redis,testing -- redis`).
//! Criterion times sequential checks and 64 concurrent ones (throughput); a final
//! interleaved loop prints p50 and p99 of each, since criterion reports no p99.

use std::{
    hint::black_box,
    num::NonZeroU32,
    time::{Duration, Instant},
};

use criterion::{Criterion, Throughput};
use ratewise::{
    key::Key,
    rate_limit::RateLimitLayer,
    redis::Redis,
    testing::{
        engine::{store_of, Keys, RateLimitStore, Store},
        RedisServer,
    },
};

use super::{configure, runtime};

fn store(redis: &Redis) -> Store {
    let layer = RateLimitLayer::builder()
        .per_second(1_000_000)
        .store(redis.rate_limit("bench"))
        .build()
        .expect("a layer");
    store_of(&layer)
}

pub(crate) fn bench(c: &mut Criterion) {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let rt = runtime();
    let redis = Redis::new(server.url()).expect("a URL").fail_closed();
    let store = store(&redis);
    let keys = Keys::one(Key::from("client-42"));
    let one = NonZeroU32::MIN;
    rt.block_on(async {
        redis.ping().await.expect("redis answers");
        store.acquire(&keys, one).await.expect("the script loads");
    });

    let mut group = c.benchmark_group("redis");
    configure(&mut group);
    group.bench_function("ping", |b| {
        b.to_async(&rt)
            .iter(|| async { redis.ping().await.unwrap() })
    });
    group.bench_function("acquire", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(store.acquire(&keys, one).await.unwrap()) })
    });
    group.throughput(Throughput::Elements(64));
    group.bench_function("ping_x64_concurrent", |b| {
        b.to_async(&rt).iter(|| async {
            let all = (0..64).map(|_| redis.ping());
            for r in futures_join(all).await {
                r.unwrap();
            }
        })
    });
    group.bench_function("acquire_x64_concurrent", |b| {
        b.to_async(&rt).iter(|| async {
            let all = (0..64).map(|_| store.acquire(&keys, one));
            for r in futures_join(all).await {
                black_box(r.unwrap());
            }
        })
    });
    group.finish();

    // p50 / p99, interleaved so both see the same machine.
    let (mut ping, mut check) = (Vec::new(), Vec::new());
    rt.block_on(async {
        for _ in 0..5000 {
            let t = Instant::now();
            redis.ping().await.unwrap();
            ping.push(t.elapsed());
            let t = Instant::now();
            black_box(store.acquire(&keys, one).await.unwrap());
            check.push(t.elapsed());
        }
    });
    let pct = |v: &mut Vec<Duration>, p: f64| {
        v.sort();
        v[((v.len() as f64 * p) as usize).min(v.len() - 1)]
    };
    let (p50, c50) = (pct(&mut ping, 0.50), pct(&mut check, 0.50));
    let (p99, c99) = (pct(&mut ping, 0.99), pct(&mut check, 0.99));
    println!(
        "redis/percentiles (5000 each, interleaved): ping p50 {p50:?} p99 {p99:?}; \
         acquire p50 {c50:?} p99 {c99:?}; acquire/ping p50 {:.2}x p99 {:.2}x",
        c50.as_secs_f64() / p50.as_secs_f64(),
        c99.as_secs_f64() / p99.as_secs_f64()
    );
}

/// Polls every future to completion concurrently on the current task.
async fn futures_join<F: std::future::Future>(futures: impl Iterator<Item = F>) -> Vec<F::Output> {
    let mut set = Vec::new();
    for f in futures {
        set.push(Box::pin(f));
    }
    let mut out: Vec<Option<F::Output>> = (0..set.len()).map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (i, f) in set.iter_mut().enumerate() {
            if out[i].is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => out[i] = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.into_iter().map(|v| v.expect("ready")).collect()
}
