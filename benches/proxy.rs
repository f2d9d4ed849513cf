//! What `ratewise-proxy` adds over calling its backend directly
//! (`cargo bench --bench ratewise --features proxy,testing -- --noplot '^proxy/'`).
//!
//! One OpenAI-like simulator and one proxy in front of it, both served on 127.0.0.1 by
//! this process, on one multi-thread runtime (2 workers). The same non-streaming
//! `POST /v1/chat/completions` goes either straight to the simulator (`direct`) or
//! through the proxy (`via_proxy`), from a hyper-util client with keep-alive and
//! `TCP_NODELAY`. The proxy has no limit configured, so what is measured is its
//! forwarding: one more loopback hop, the body read and parsed for `model`, the pool's
//! routing, the classifier, the stats.
//!
//! A third path, `bare_forwarder`, is the floor any HTTP proxy pays here: an axum
//! handler that passes the request to the simulator through a hyper-util client and
//! streams the answer back, with no parsing, routing or stats. `via_proxy` minus
//! `bare_forwarder` is ratewise's own share of the overhead.
//!
//! Criterion times 1 client (sequential calls) and 64 concurrent calls (throughput);
//! then an interleaved loop prints p50, p99 and max of each path and what the proxy
//! adds at each percentile, since criterion reports no p99.

use std::{
    net::Ipv4Addr,
    sync::Arc,
    time::{Duration, Instant},
};

use axum::{body::Body, extract::Request as AxumRequest, response::Response, Router};
use bytes::Bytes;
use criterion::{Criterion, Throughput};
use http::{header, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::TokioExecutor,
};
use ratewise::{
    proxy::{Proxy, ProxyConfig},
    testing::{MockServer, OpenAiApi},
};
use tokio::{net::TcpListener, runtime::Runtime, sync::oneshot, task::JoinSet};

use super::configure;

type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// Concurrent clients in the `x64` rows.
const CLIENTS: usize = 64;
/// Sequential calls of each kind in the interleaved 1-client loop.
const SEQUENTIAL: usize = 3_000;
/// Rounds of 64 concurrent calls of each kind in the interleaved 64-client loop.
const ROUNDS: usize = 100;

const BODY: &str = r#"{"model":"gpt-bench","messages":[{"role":"user","content":"Say hello in one word."}],"max_tokens":16}"#;

/// The three URLs a call can go to, and the client that calls them.
#[derive(Clone)]
struct Target {
    client: HttpClient,
    direct: Arc<str>,
    bare: Arc<str>,
    via_proxy: Arc<str>,
}

/// The bare forwarder: every request goes on to `upstream` (same path), its answer
/// comes back as it is.
fn bare_forwarder(upstream: std::net::SocketAddr) -> Router {
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    let client: Client<HttpConnector, Body> = Client::builder(TokioExecutor::new()).build(http);
    Router::new().fallback(move |req: AxumRequest| {
        let client = client.clone();
        async move {
            let (mut parts, body) = req.into_parts();
            let path = parts.uri.path().to_owned();
            parts.uri = format!("http://{upstream}{path}")
                .parse()
                .expect("a valid URI");
            parts.headers.remove(header::HOST);
            let res = client
                .request(Request::from_parts(parts, body))
                .await
                .expect("the simulator answers");
            let res: Response = res.map(Body::new);
            res
        }
    })
}

impl Target {
    /// One call to `url`: sends the body, reads the whole answer, checks it is a 200.
    async fn call(&self, url: &str) {
        let req = Request::post(url)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from_static(BODY.as_bytes())))
            .expect("a valid request");
        let res = self.client.request(req).await.expect("an answer");
        assert_eq!(res.status(), StatusCode::OK, "the call was served");
        let body = res.into_body().collect().await.expect("a body").to_bytes();
        std::hint::black_box(body);
    }

    /// `n` calls to `url` at once, each from its own task; returns each call's time.
    async fn concurrent(&self, url: &Arc<str>, n: usize) -> Vec<Duration> {
        let mut set = JoinSet::new();
        for _ in 0..n {
            let (me, url) = (self.clone(), url.clone());
            set.spawn(async move {
                let t = Instant::now();
                me.call(&url).await;
                t.elapsed()
            });
        }
        set.join_all().await
    }
}

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a multi-thread runtime")
}

pub(crate) fn bench(c: &mut Criterion) {
    let rt = runtime();
    // The simulator, with a quota no run reaches, and the proxy in front of it.
    let (simulator, bare, proxy_addr, stop, served) = rt.block_on(async {
        let api = OpenAiApi::new().limit(u32::MAX).reply("hello");
        let simulator = MockServer::start(api.router())
            .await
            .expect("the simulator starts");
        let config = ProxyConfig::from_toml(&format!(
            r#"
            [backends.openai]
            kind = "openai"
            base_url = "http://{}/v1"

            [models.gpt-bench]
            primary = ["openai"]

            [timeouts]
            shutdown = "1s"
            "#,
            simulator.addr()
        ))
        .expect("a valid config");
        let proxy = Proxy::from_config(config).expect("the proxy builds");
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .expect("a port for the proxy");
        let addr = listener.local_addr().expect("its address");
        let (stop, stopped) = oneshot::channel::<()>();
        let served = tokio::spawn(proxy.serve(listener, async {
            let _ = stopped.await;
        }));
        let bare = MockServer::start(bare_forwarder(simulator.addr()))
            .await
            .expect("the bare forwarder starts");
        (simulator, bare, addr, stop, served)
    });

    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    let target = Target {
        client: Client::builder(TokioExecutor::new()).build(http),
        direct: Arc::from(simulator.url("/v1/chat/completions")),
        bare: Arc::from(bare.url("/v1/chat/completions")),
        via_proxy: Arc::from(format!("http://{proxy_addr}/v1/chat/completions")),
    };
    // Both paths answer before anything is timed.
    rt.block_on(async {
        target.call(&target.direct).await;
        target.call(&target.bare).await;
        target.call(&target.via_proxy).await;
    });

    let mut group = c.benchmark_group("proxy");
    configure(&mut group);
    for (name, url) in [
        ("direct", &target.direct),
        ("bare_forwarder", &target.bare),
        ("via_proxy", &target.via_proxy),
    ] {
        group.bench_function(name, |b| {
            b.to_async(&rt).iter(|| target.call(url));
        });
    }
    group.throughput(Throughput::Elements(CLIENTS as u64));
    for (name, url) in [
        ("direct_x64_concurrent", &target.direct),
        ("bare_forwarder_x64_concurrent", &target.bare),
        ("via_proxy_x64_concurrent", &target.via_proxy),
    ] {
        group.bench_function(name, |b| {
            b.to_async(&rt)
                .iter(|| async { target.concurrent(url, CLIENTS).await });
        });
    }
    group.finish();

    // p50 / p99, interleaved so both paths see the same machine.
    let urls = [&target.direct, &target.bare, &target.via_proxy];
    let mut times: [Vec<Duration>; 3] = Default::default();
    rt.block_on(async {
        for _ in 0..SEQUENTIAL {
            for (url, times) in urls.iter().zip(&mut times) {
                let t = Instant::now();
                target.call(url).await;
                times.push(t.elapsed());
            }
        }
    });
    report("1 client", SEQUENTIAL, &mut times);

    let mut times: [Vec<Duration>; 3] = Default::default();
    rt.block_on(async {
        for _ in 0..ROUNDS {
            for (url, times) in urls.iter().zip(&mut times) {
                times.extend(target.concurrent(url, CLIENTS).await);
            }
        }
    });
    report("64 concurrent clients", ROUNDS * CLIENTS, &mut times);

    rt.block_on(async move {
        drop(target);
        let _ = stop.send(());
        let _ = tokio::time::timeout(Duration::from_secs(5), served).await;
        bare.shutdown().await;
        simulator.shutdown().await;
    });
}

/// Prints p50, p99 and max of the three paths (direct, bare forwarder, proxy) and what
/// the proxy adds at each percentile, over the direct call and over the bare forwarder.
fn report(what: &str, n: usize, times: &mut [Vec<Duration>; 3]) {
    let pct = |v: &[Duration], p: f64| v[((v.len() as f64 * p) as usize).min(v.len() - 1)];
    let mut row = [[Duration::ZERO; 3]; 3];
    for (v, row) in times.iter_mut().zip(&mut row) {
        v.sort();
        *row = [pct(v, 0.50), pct(v, 0.99), v[v.len() - 1]];
    }
    let [d, b, p] = row;
    let us = |x: Duration| x.as_secs_f64() * 1e6;
    let added = |i: usize, base: [Duration; 3]| format!("{:+.1}µs", us(p[i]) - us(base[i]));
    println!(
        "proxy/percentiles, {what} ({n} calls each, interleaved): \
         direct p50 {:.1}µs p99 {:.1}µs max {:.1}µs; \
         bare_forwarder p50 {:.1}µs p99 {:.1}µs max {:.1}µs; \
         via_proxy p50 {:.1}µs p99 {:.1}µs max {:.1}µs; \
         added over direct p50 {} p99 {}; over bare_forwarder p50 {} p99 {}",
        us(d[0]),
        us(d[1]),
        us(d[2]),
        us(b[0]),
        us(b[1]),
        us(b[2]),
        us(p[0]),
        us(p[1]),
        us(p[2]),
        added(0, d),
        added(1, d),
        added(0, b),
        added(1, b),
    );
}
