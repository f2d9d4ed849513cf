//! What a server's `RateLimitLayer` (reject mode) answers, on an axum app over a real
//! connection: the `429` problem of draft-ietf-httpapi-ratelimit-headers, the
//! `RateLimit` / `RateLimit-Policy` fields on admitted responses, parsed here by the
//! draft's structured-field rules, and a user's own answer.
#![cfg(feature = "axum")]

use std::{
    collections::BTreeMap,
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{routing::get, Router};
use bytes::Bytes;
use http::{header, HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use ratewise::{
    key::{ClientIp, Key, KeyError, RequestRef},
    vocabulary::RefusalKind,
    RateLimitLayer, Refusal,
};
use tokio::net::TcpListener;
use tower::{service_fn, ServiceBuilder, ServiceExt};

/// One item of a structured-field list (RFC 8941) as the draft defines them: a string
/// (the policy name) and integer or string parameters.
#[derive(Debug, PartialEq)]
struct Item {
    name: String,
    params: BTreeMap<String, String>,
}

/// Parses a `RateLimit` or `RateLimit-Policy` field value strictly: a list of
/// `sf-string *( ";" key "=" ( sf-integer / sf-string ) )`, comma-separated with
/// optional spaces. `None` for anything else.
fn parse_list(value: &str) -> Option<Vec<Item>> {
    fn string(s: &str) -> Option<(String, &str)> {
        let mut out = String::new();
        let mut chars = s.strip_prefix('"')?.char_indices();
        while let Some((i, c)) = chars.next() {
            match c {
                '"' => return Some((out, &s[i + 2..])),
                '\\' => match chars.next()? {
                    (_, c @ ('"' | '\\')) => out.push(c),
                    _ => return None,
                },
                ' '..='~' => out.push(c),
                _ => return None,
            }
        }
        None
    }
    let mut items = Vec::new();
    let mut rest = value.trim_start_matches(' ');
    loop {
        let (name, after) = string(rest)?;
        rest = after;
        let mut params = BTreeMap::new();
        while let Some(after) = rest.strip_prefix(';') {
            let key_len = after
                .find(|c: char| {
                    !(c.is_ascii_lowercase() || c.is_ascii_digit() || "_-.*".contains(c))
                })
                .unwrap_or(after.len());
            let key = &after[..key_len];
            if key.is_empty() || !key.starts_with(|c: char| c.is_ascii_lowercase() || c == '*') {
                return None;
            }
            let after = after[key_len..].strip_prefix('=')?;
            let (value, after) = if after.starts_with('"') {
                string(after)?
            } else {
                let len = after
                    .find(|c: char| !c.is_ascii_digit())
                    .unwrap_or(after.len());
                if len == 0 || len > 15 {
                    return None;
                }
                (after[..len].to_owned(), &after[len..])
            };
            params.insert(key.to_owned(), value);
            rest = after;
        }
        items.push(Item { name, params });
        rest = rest.trim_start_matches(' ');
        if rest.is_empty() {
            return Some(items);
        }
        rest = rest.strip_prefix(',')?.trim_start_matches(' ');
    }
}

/// The one item of `name` in `headers`, with its integer parameters.
fn field(headers: &HeaderMap, name: &str) -> (String, BTreeMap<String, u64>) {
    let values: Vec<_> = headers.get_all(name).iter().collect();
    assert_eq!(values.len(), 1, "one {name} field");
    let text = values[0].to_str().unwrap();
    let mut items = parse_list(text).unwrap_or_else(|| panic!("{name}: {text:?} is not a list"));
    assert_eq!(items.len(), 1, "{name}: {text:?}");
    let item = items.remove(0);
    let ints = item
        .params
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                v.parse::<u64>()
                    .unwrap_or_else(|_| panic!("{name}: {k}={v}")),
            )
        })
        .collect();
    (item.name, ints)
}

#[test]
fn the_test_parser_follows_the_drafts_examples() {
    let items = parse_list(r#""burst";q=100;w=60,"daily";q=1000;w=86400"#).unwrap();
    assert_eq!(items.len(), 2);
    assert_eq!(items[1].name, "daily");
    assert_eq!(items[1].params["w"], "86400");
    assert!(parse_list(r#""peruser";q=65535;qu="content-bytes";w=10"#).is_some());
    for bad in [
        "default;r=50;t=30",
        r#""default";r=-1"#,
        r#""default";R=1"#,
        r#""a" "b""#,
        r#""a";r="#,
        "",
    ] {
        assert!(parse_list(bad).is_none(), "{bad:?}");
    }
}

/// Serves `app` on 127.0.0.1 with peer addresses; the handle aborts it.
async fn serve(app: Router) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let make = app.into_make_service_with_connect_info::<SocketAddr>();
        let _ = axum::serve(listener, make).await;
    });
    (addr, task)
}

/// `GET /` on `addr`: the status, the headers and the body.
async fn fetch(addr: SocketAddr) -> (StatusCode, HeaderMap, Bytes) {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let req = Request::get(format!("http://{addr}/"))
        .body(Full::default())
        .unwrap();
    let res = client.request(req).await.unwrap();
    let (parts, body) = res.into_parts();
    (
        parts.status,
        parts.headers,
        body.collect().await.unwrap().to_bytes(),
    )
}

/// 6 per minute (one cell every 10 s), burst 3: the bucket refills in 30 s. Real time
/// passes between the requests, far less than the 10 s a cell takes.
fn layer() -> ratewise::rate_limit::RateLimitBuilder<ratewise::rate_limit::Reject> {
    RateLimitLayer::builder()
        .per_minute(6)
        .burst(3)
        .key(ClientIp::peer())
        .reject()
}

#[tokio::test(flavor = "current_thread")]
async fn admitted_responses_carry_the_drafts_ratelimit_fields_and_the_429_is_a_problem() {
    let layer = layer().ratelimit_headers(true).build().unwrap();
    let app = Router::new()
        .route("/", get(|| async { "ok" }))
        .layer(layer.clone());
    let (addr, task) = serve(app).await;

    for (remaining, refill) in [(2, 10), (1, 20), (0, 30)] {
        let (status, headers, body) = fetch(addr).await;
        assert_eq!((status, &body[..]), (StatusCode::OK, &b"ok"[..]));
        let (name, policy) = field(&headers, "ratelimit-policy");
        assert_eq!(name, "ratewise");
        assert_eq!(policy, BTreeMap::from([("q".into(), 3), ("w".into(), 30)]));
        let (name, limit) = field(&headers, "ratelimit");
        assert_eq!(
            name, "ratewise",
            "RateLimit names the policy of RateLimit-Policy"
        );
        assert_eq!(
            limit,
            BTreeMap::from([("r".into(), remaining), ("t".into(), refill)])
        );
    }

    let (status, headers, body) = fetch(addr).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(headers[header::CONTENT_TYPE], "application/problem+json");
    assert_eq!(headers[header::RETRY_AFTER], "10");
    let (_, limit) = field(&headers, "ratelimit");
    assert_eq!(limit, BTreeMap::from([("r".into(), 0), ("t".into(), 10)]));
    // Retry-After is not earlier than the end of the effective window (draft §6).
    let retry_after: u64 = headers[header::RETRY_AFTER]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry_after >= limit["t"]);
    let (name, _) = field(&headers, "ratelimit-policy");
    let problem: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        problem["type"],
        "https://iana.org/assignments/http-problem-types#quota-exceeded"
    );
    assert_eq!(
        problem["title"],
        "Request cannot be satisfied as assigned quota has been exceeded"
    );
    assert_eq!(problem["status"], 429);
    assert_eq!(problem["detail"], "Too many requests: retry in 10 s.");
    assert_eq!(problem["violated-policies"], serde_json::json!([name]));
    assert_eq!((layer.stats().admitted, layer.stats().rejected), (3, 1));
    task.abort();
}

#[tokio::test(flavor = "current_thread")]
async fn the_fields_are_opt_in_on_admitted_responses() {
    let app = Router::new()
        .route("/", get(|| async { "ok" }))
        .layer(layer().build().unwrap());
    let (addr, task) = serve(app).await;
    let (status, headers, _) = fetch(addr).await;
    assert_eq!(status, StatusCode::OK);
    assert!(headers.get("ratelimit").is_none() && headers.get("ratelimit-policy").is_none());
    task.abort();
}

#[tokio::test(flavor = "current_thread")]
async fn a_users_answer_replaces_the_problem_and_keeps_retry_after() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let limit = layer()
        .respond_with(move |refusal: &Refusal| {
            log.lock()
                .unwrap()
                .push((refusal.kind().clone(), refusal.key().cloned()));
            let secs = refusal
                .retry_after()
                .map_or(0, |d| d.as_millis().div_ceil(1000));
            let mut res = Response::new(format!("slow down: {secs} s\n"));
            *res.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            res.headers_mut()
                .insert(header::CONTENT_TYPE, "text/plain".parse().unwrap());
            res
        })
        .build()
        .unwrap();
    let app = Router::new()
        .route("/", get(|| async { "ok" }))
        .layer(limit);
    let (addr, task) = serve(app).await;
    for _ in 0..3 {
        assert_eq!(fetch(addr).await.0, StatusCode::OK);
    }
    let (status, headers, body) = fetch(addr).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(&body[..], b"slow down: 10 s\n");
    assert_eq!(headers[header::CONTENT_TYPE], "text/plain");
    assert_eq!(headers[header::RETRY_AFTER], "10");
    assert_eq!(field(&headers, "ratelimit").1["r"], 0);
    assert_eq!(field(&headers, "ratelimit-policy").1["q"], 3);
    // Reject mode refuses as wait mode would with no wait allowed, for the client's key.
    let kind = RefusalKind::MaxWait {
        max_wait: Duration::ZERO,
    };
    assert_eq!(
        *seen.lock().unwrap(),
        vec![(kind, Some(Key::from("127.0.0.1")))]
    );
    task.abort();
}

/// A request that costs more than the burst: a problem without `Retry-After`, since
/// waiting cannot help; the answer sees the refusal's kind.
#[tokio::test(start_paused = true)]
async fn a_request_over_the_burst_gets_a_problem_without_retry_after() {
    let limit = RateLimitLayer::builder()
        .per_second(1)
        .burst(2)
        .cost(|_: &RequestRef<'_>| 5)
        .reject()
        .build()
        .unwrap();
    let svc =
        ServiceBuilder::new()
            .layer(limit)
            .service(service_fn(|_req: Request<String>| async {
                Ok::<_, Infallible>(Response::new(String::from("ok")))
            }));
    let res = svc.oneshot(Request::new(String::new())).await.unwrap();
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(res.headers().get(header::RETRY_AFTER).is_none());
    assert!(res.headers().get("ratelimit").is_none());
    let problem: serde_json::Value = serde_json::from_str(res.body()).unwrap();
    assert_eq!(
        problem["detail"],
        "This request costs 5 units and the quota never allows more than 2 at once."
    );
}

/// In wait mode, a request without a peer address fails with the `KeyError` (and the
/// upstream is not called).
#[tokio::test(start_paused = true)]
async fn wait_mode_fails_an_unkeyed_request_with_its_key_error() {
    let limit = RateLimitLayer::builder()
        .per_second(1)
        .key(ClientIp::peer())
        .max_wait(Duration::from_secs(1))
        .build()
        .unwrap();
    let svc = ServiceBuilder::new()
        .layer(limit.clone())
        .service(service_fn(|_req: Request<String>| async {
            Err::<Response<String>, _>("an unkeyed request reached the upstream")
        }));
    let err = svc.oneshot(Request::new(String::new())).await.unwrap_err();
    let key_err = err.downcast_ref::<KeyError>().expect("a KeyError");
    assert!(key_err.reason().contains("no peer address"), "{key_err}");
    assert!(Refusal::find(&*err).is_none());
    assert_eq!(limit.stats().admitted, 0);
}
