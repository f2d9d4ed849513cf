//! A server keyed by client IP (`ClientIp`), over real connections on the loopback:
//! an axum app behind one trusted proxy, clients bound to their own loopback addresses
//! (127.0.0.2, 127.0.0.3), and the app on `[::1]` too when IPv6 loopback exists.
//!
//! Every bucket admits one request a minute, so a `200` or a `429` says which bucket a
//! request landed in.
#![cfg(feature = "axum")]

mod common;

use std::{
    convert::Infallible,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
};

use axum::{
    body::Body,
    extract::{ConnectInfo, State},
    routing::get,
    Router,
};
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::TokioExecutor,
};
use ratewise::{
    key::{ClientIp, Key, KeyExtractor},
    RateLimitLayer,
};
use tokio::{net::TcpListener, task::JoinHandle};
use tower::{service_fn, ServiceBuilder, ServiceExt};

/// The app: `GET /` answers `ok`, one request per client per minute, keyed by the
/// client IP behind the trusted proxies 127.0.0.1 and ::1.
fn app() -> Router {
    let client_ip = ClientIp::builder()
        .trusted_proxy("127.0.0.1")
        .trusted_proxy("::1")
        .build()
        .unwrap();
    let limit = RateLimitLayer::builder()
        .per_minute(1)
        .burst(1)
        .key(client_ip)
        .reject()
        .build()
        .unwrap();
    Router::new()
        .route("/", get(|| async { "ok" }))
        .layer(limit)
}

/// Serves `router` on `listener` with the peer address in every request (axum's
/// `ConnectInfo`), until the handle is aborted.
fn serve(listener: TcpListener, router: Router) -> JoinHandle<()> {
    tokio::spawn(async move {
        let make = router.into_make_service_with_connect_info::<SocketAddr>();
        let _ = axum::serve(listener, make).await;
    })
}

/// A proxy in front of `upstream`: it appends the peer's address to
/// `X-Forwarded-For`, as nginx's `$proxy_add_x_forwarded_for` does, and connects to the
/// upstream from 127.0.0.1.
fn proxy(upstream: SocketAddr) -> Router {
    async fn forward(
        State((client, upstream)): State<(Client<HttpConnector, Body>, SocketAddr)>,
        ConnectInfo(peer): ConnectInfo<SocketAddr>,
        mut req: Request<Body>,
    ) -> Response<Body> {
        let forwarded = match req.headers().get("x-forwarded-for") {
            Some(v) => format!("{}, {}", v.to_str().unwrap(), peer.ip()),
            None => peer.ip().to_string(),
        };
        req.headers_mut()
            .insert("x-forwarded-for", forwarded.parse().unwrap());
        *req.uri_mut() = format!("http://{upstream}{}", req.uri().path())
            .parse()
            .unwrap();
        client.request(req).await.unwrap().map(Body::new)
    }
    let client = Client::builder(TokioExecutor::new()).build_http();
    Router::new()
        .route("/", get(forward))
        .with_state((client, upstream))
}

/// A client whose connections leave from `local`.
fn client_from(local: IpAddr) -> Client<HttpConnector, Full<Bytes>> {
    let mut connector = HttpConnector::new();
    connector.set_local_address(Some(local));
    Client::builder(TokioExecutor::new()).build(connector)
}

/// `GET /` on `to` from `client`, with `headers`: the status.
async fn get_status(
    client: &Client<HttpConnector, Full<Bytes>>,
    to: SocketAddr,
    headers: &[(&str, &str)],
) -> StatusCode {
    let mut req = Request::get(format!("http://{to}/"));
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let res = client
        .request(req.body(Full::default()).unwrap())
        .await
        .unwrap();
    let status = res.status();
    res.into_body().collect().await.unwrap();
    status
}

async fn bind(ip: IpAddr) -> std::io::Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind((ip, 0)).await?;
    let addr = listener.local_addr()?;
    Ok((listener, addr))
}

#[tokio::test(flavor = "current_thread")]
async fn a_spoofed_forwarded_for_does_not_change_the_bucket_and_ipv6_clients_share_their_64() {
    const OK: StatusCode = StatusCode::OK;
    const LIMITED: StatusCode = StatusCode::TOO_MANY_REQUESTS;
    let app = app();
    let (listener, app_addr) = bind(Ipv4Addr::LOCALHOST.into()).await.unwrap();
    let app_task = serve(listener, app.clone());
    let (listener, proxy_addr) = bind(Ipv4Addr::LOCALHOST.into()).await.unwrap();
    let proxy_task = serve(listener, proxy(app_addr));

    let a = client_from(Ipv4Addr::new(127, 0, 0, 2).into());
    let b = client_from(Ipv4Addr::new(127, 0, 0, 3).into());

    // A connects directly, an untrusted peer: its headers are ignored, whatever they say.
    assert_eq!(
        get_status(&a, app_addr, &[("x-forwarded-for", "203.0.113.1")]).await,
        OK
    );
    for spoof in [
        ("x-forwarded-for", "203.0.113.2"),
        ("x-forwarded-for", "127.0.0.3"),
        ("forwarded", "for=203.0.113.3"),
    ] {
        assert_eq!(
            get_status(&a, app_addr, &[spoof]).await,
            LIMITED,
            "{spoof:?}"
        );
    }

    // B through the trusted proxy: keyed by its own address, which the proxy appended;
    // what B wrote itself stays on the left and is not read.
    assert_eq!(get_status(&b, proxy_addr, &[]).await, OK);
    let spoof = [("x-forwarded-for", "203.0.113.9")];
    assert_eq!(get_status(&b, proxy_addr, &spoof).await, LIMITED);
    // A through the proxy is A: its bucket is the one it used directly.
    assert_eq!(get_status(&a, proxy_addr, &spoof).await, LIMITED);

    // IPv6: the same app on [::1], reached from ::1, a trusted proxy, which forwards
    // IPv6 clients. Clients in one /64 share a bucket; the next /64 has its own.
    match bind(Ipv6Addr::LOCALHOST.into()).await {
        Ok((listener, app6)) => {
            let app6_task = serve(listener, app.clone());
            let v6 = client_from(Ipv6Addr::LOCALHOST.into());
            let via = |client: &'static str| [("x-forwarded-for", client)];
            assert_eq!(get_status(&v6, app6, &via("2001:db8:1:2::a")).await, OK);
            assert_eq!(
                get_status(&v6, app6, &via("2001:db8:1:2:ffff::b")).await,
                LIMITED
            );
            assert_eq!(get_status(&v6, app6, &via("2001:db8:1:3::a")).await, OK);
            assert_eq!(
                get_status(&v6, app6, &via("6.6.6.6, 2001:db8:1:3::b")).await,
                LIMITED
            );
            // An IPv4-mapped address is the IPv4 client: B's bucket, spent above.
            assert_eq!(
                get_status(&v6, app6, &via("::ffff:127.0.0.3")).await,
                LIMITED
            );
            // ::1 with no header is a client of its own (trusted, so the chain's first).
            assert_eq!(get_status(&v6, app6, &[]).await, OK);
            assert_eq!(get_status(&v6, app6, &[]).await, LIMITED);
            app6_task.abort();
        }
        Err(err) => eprintln!(
            "IPv6 loopback unavailable ({err}): the /64 rule is checked in \
             ipv6_peers_in_one_64_share_a_bucket only"
        ),
    }
    proxy_task.abort();
    app_task.abort();
}

/// The IPv6 peer itself keyed by /64, the peer address injected as axum's
/// `ConnectInfo` (the loopback has only ::1, so no two real IPv6 peers can differ).
#[tokio::test(start_paused = true)]
async fn ipv6_peers_in_one_64_share_a_bucket() {
    let limit = RateLimitLayer::builder()
        .per_minute(1)
        .burst(1)
        .key(ClientIp::peer())
        .reject()
        .build()
        .unwrap();
    let svc =
        ServiceBuilder::new()
            .layer(limit)
            .service(service_fn(|_req: Request<String>| async {
                Ok::<_, Infallible>(Response::new(String::from("ok")))
            }));
    let from = |peer: &str| {
        let mut req = Request::new(String::new());
        let peer: SocketAddr = peer.parse().unwrap();
        req.extensions_mut().insert(ConnectInfo(peer));
        req
    };
    let status = |peer: &'static str| {
        let svc = svc.clone();
        async move { svc.oneshot(from(peer)).await.unwrap().status() }
    };
    assert_eq!(status("[2001:db8:1:2::a]:4000").await, StatusCode::OK);
    assert_eq!(
        status("[2001:db8:1:2:ffff::b]:4001").await,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(status("[2001:db8:1:3::a]:4000").await, StatusCode::OK);
    assert_eq!(
        ClientIp::peer().key_of(&from("[2001:db8:1:2::a]:1")),
        Key::from("2001:db8:1:2::/64")
    );
}

/// An app served without peer addresses: the first request is answered `500` (not put
/// in a bucket every client shares), and the error is logged once, loudly.
#[tokio::test(flavor = "current_thread")]
async fn a_server_without_peer_addresses_answers_500_and_logs_once() {
    common::capture::start();
    let (listener, addr) = bind(Ipv4Addr::LOCALHOST.into()).await.unwrap();
    // `into_make_service`, not `into_make_service_with_connect_info`: the mistake.
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app().into_make_service()).await;
    });
    let client = client_from(Ipv4Addr::LOCALHOST.into());
    for _ in 0..3 {
        let res = client
            .request(
                Request::get(format!("http://{addr}/"))
                    .body(Full::default())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(res.headers()["content-type"], "application/problem+json");
        let body = res.into_body().collect().await.unwrap().to_bytes();
        let problem: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(problem["status"], 500);
        assert!(
            !problem["detail"].as_str().unwrap().contains("extensions"),
            "no internals"
        );
    }
    let errors: Vec<_> = common::capture::events()
        .into_iter()
        .filter(|e| e.starts_with("ERROR"))
        .collect();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].contains("into_make_service_with_connect_info"),
        "{errors:?}"
    );
    task.abort();
}
