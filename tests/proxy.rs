//! `ratewise::proxy` over real sockets on 127.0.0.1: failover and streaming, a real
//! 429 passed through, the proxy's own errors, bad input, a client that goes away
//! mid-stream, graceful shutdown, API keys kept out of sight, and `/metrics`.
//!
//! Every backend is one of the crate's simulators or an axum router the test serves;
//! every wait is bounded.

#![cfg(all(feature = "proxy", feature = "testing"))]

use std::{
    future::Future,
    pin::Pin,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    task::{Context, Poll},
    time::Duration,
};

use axum::{body::Body, routing::post, Router};
use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, Full};
use ratewise::{
    proxy::{Proxy, ProxyConfig},
    testing::{self, body_bytes, client, glm, json_request, GlmApi, MockServer, OpenAiApi},
};
use serde_json::{json, Value};
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle, time::Instant};

/// Every network step of a test is bounded by this.
const LIMIT: Duration = Duration::from_secs(10);

async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(LIMIT, fut)
        .await
        .unwrap_or_else(|_| panic!("{what} took over {LIMIT:?}"))
}

/// A proxy served on 127.0.0.1 until `stop`.
struct Running {
    url: String,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<std::io::Result<()>>,
}

impl Running {
    async fn start(toml: &str) -> Running {
        let config = ProxyConfig::from_toml(toml).expect("valid config");
        let proxy = Proxy::from_config(config).expect("valid proxy");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(proxy.serve(listener, async move {
            let _ = stopped.await;
        }));
        Running {
            url,
            stop: Some(stop),
            task,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }

    fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// `base_url` of a simulator served by `server`: its chat path without
/// `/chat/completions`.
fn base(server: &MockServer, chat_path: &str) -> String {
    server.url(chat_path.trim_end_matches("/chat/completions"))
}

fn chat_body(model: &str, stream: bool) -> Value {
    json!({ "model": model, "stream": stream, "messages": [{ "role": "user", "content": "hello" }] })
}

/// What a client got: status, headers and the whole body.
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

async fn send(req: Request<Full<Bytes>>) -> Answer {
    let res = within("a proxy call", client().request(req))
        .await
        .expect("the proxy answers");
    let (parts, body) = res.into_parts();
    let body = within("a proxy answer", body_bytes(body))
        .await
        .expect("a whole body");
    Answer {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

async fn post_json(url: &str, body: &Value) -> Answer {
    send(json_request(Method::POST, url, body).expect("request")).await
}

async fn get(url: &str) -> Answer {
    send(testing::empty_request(Method::GET, url).expect("request")).await
}

/// One SSE event and when it reached the client (since the request was sent).
#[derive(Debug)]
struct Event {
    at: Duration,
    text: String,
}

/// Reads SSE events as they arrive. `stop_after`: drop the stream after that many.
async fn stream_events(url: &str, model: &str, stop_after: Option<usize>) -> (Answer, Vec<Event>) {
    let started = Instant::now();
    let req = json_request(Method::POST, url, &chat_body(model, true)).expect("request");
    let res = within("a streaming call", client().request(req))
        .await
        .expect("the proxy answers");
    let (parts, mut body) = res.into_parts();
    let mut pending: Vec<u8> = Vec::new();
    let mut events = Vec::new();
    within("the stream", async {
        while let Some(frame) = body.frame().await {
            let Ok(frame) = frame else { break };
            let Ok(data) = frame.into_data() else {
                continue;
            };
            pending.extend_from_slice(&data);
            while let Some(end) = pending.windows(2).position(|w| w == b"\n\n") {
                let event: Vec<u8> = pending.drain(..end + 2).collect();
                events.push(Event {
                    at: started.elapsed(),
                    text: String::from_utf8_lossy(&event).trim_end().to_owned(),
                });
            }
            if stop_after.is_some_and(|n| events.len() >= n) {
                return;
            }
        }
    })
    .await;
    let answer = Answer {
        status: parts.status,
        headers: parts.headers,
        body: Bytes::new(),
    };
    (answer, events)
}

/// The text pieces of an SSE stream, in order.
fn content(events: &[Event]) -> String {
    events
        .iter()
        .filter_map(|e| e.text.strip_prefix("data: "))
        .filter_map(|data| serde_json::from_str::<Value>(data).ok())
        .filter_map(|chunk| {
            chunk["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_owned)
        })
        .collect()
}

// ---------------------------------------------------------------------------------
// Failover and streaming

/// The GLM simulator always answers 1302; the OpenAI-like fallback serves. Every call
/// gets an answer, and a stream arrives event by event, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_and_streaming() {
    let gap = Duration::from_millis(100);
    let glm = GlmApi::new().always_rate_limited(true);
    let openai = OpenAiApi::new().name("fallback").stream_gap(gap);
    let glm_server = MockServer::start(glm.router()).await.unwrap();
    let openai_server = MockServer::start(openai.router()).await.unwrap();
    let proxy = Running::start(&format!(
        r#"
        [backends.glm]
        kind = "glm"
        base_url = "{}"
        [backends.fallback]
        kind = "openai"
        base_url = "{}"
        [models.glm-4]
        primary = ["glm"]
        fallback = ["fallback"]
        [cooldown]
        base = "30s"
        cap = "60s"
        "#,
        base(&glm_server, glm::PATH),
        base(&openai_server, testing::openai::PATH)
    ))
    .await;
    let url = proxy.url("/v1/chat/completions");

    // The first call meets 1302 and moves on within the call.
    let first = post_json(&url, &chat_body("glm-4", false)).await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(first.header("x-ratewise-backend"), Some("fallback"));
    assert_eq!(
        first.json()["choices"][0]["message"]["content"],
        "mock reply from fallback"
    );
    assert_eq!(
        first.json()["model"],
        "glm-4",
        "the fallback got the whole body"
    );
    assert_eq!((glm.hits().count(), glm.hits().rate_limited()), (1, 1));

    // Eight more at once: all answered by the fallback; the cooling GLM gets none.
    let calls: Vec<_> = (0..8)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { post_json(&url, &chat_body("glm-4", false)).await })
        })
        .collect();
    for call in calls {
        let answer = call.await.unwrap();
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(answer.header("x-ratewise-backend"), Some("fallback"));
    }
    assert_eq!(glm.hits().count(), 1, "GLM is skipped while it cools");
    assert_eq!(openai.hits().served(), 9);

    // A stream: event by event, in order, the first long before the last.
    let (answer, events) = stream_events(&url, "glm-4", None).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.header("content-type"), Some("text/event-stream"));
    assert_eq!(answer.header("x-ratewise-backend"), Some("fallback"));
    // "mock", " reply", " from", " fallback", stop, [DONE]
    assert_eq!(events.len(), 6, "{events:?}");
    assert_eq!(content(&events), "mock reply from fallback");
    assert_eq!(events[5].text, "data: [DONE]");
    let span = events[5].at - events[0].at;
    assert!(
        span >= gap * 4,
        "the first event reached the client {span:?} before the last: not buffered"
    );
    for pair in events.windows(2) {
        assert!(pair[0].at <= pair[1].at);
    }
    assert_eq!(glm.hits().count(), 1);
}

/// A stream from the GLM simulator itself passes through event by event too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_glm_stream_passes_through_event_by_event() {
    let gap = Duration::from_millis(100);
    let glm = GlmApi::new().stream_gap(gap);
    let glm_server = MockServer::start(glm.router()).await.unwrap();
    let proxy = Running::start(&format!(
        r#"
        [backends.glm]
        kind = "glm"
        base_url = "{}"
        [models.glm-4]
        primary = ["glm"]
        "#,
        base(&glm_server, glm::PATH),
    ))
    .await;
    let (answer, events) = stream_events(&proxy.url("/v1/chat/completions"), "glm-4", None).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.header("x-ratewise-backend"), Some("glm"));
    assert_eq!(events.len(), 6, "{events:?}");
    assert_eq!(content(&events), "glm mock reply #1");
    assert!(events[5].at - events[0].at >= gap * 4, "{events:?}");
}

// ---------------------------------------------------------------------------------
// A real 429 passes through; 503 only when no backend was called

/// An OpenAI-style upstream over its limit: a 429 with its own headers and a body
/// written its own way (spacing, trailing newline), counting its calls.
fn limited_upstream(calls: Arc<AtomicUsize>) -> Router {
    Router::new().route(
        "/v1/chat/completions",
        post(move || {
            let calls = calls.clone();
            async move {
                calls.fetch_add(1, Ordering::SeqCst);
                Response::builder()
                    .status(StatusCode::TOO_MANY_REQUESTS)
                    .header("content-type", "application/json; charset=utf-8")
                    .header("retry-after-ms", "1500")
                    .header("x-ratelimit-limit-requests", "3")
                    .header("x-ratelimit-remaining-requests", "0")
                    .header("x-ratelimit-reset-requests", "1.5s")
                    .header("x-request-id", "req_7c1f")
                    .body(Body::from(LIMITED_BODY))
                    .unwrap()
            }
        }),
    )
}

const LIMITED_BODY: &str = "{ \"error\": { \"message\": \"Rate limit reached for gpt-x on requests per min (RPM): Limit 3, Used 3\", \"type\": \"requests\", \"param\": null, \"code\": \"rate_limit_exceeded\" } }\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_429_passes_through_unchanged() {
    let glm = GlmApi::new().always_rate_limited(true);
    let glm_server = MockServer::start(glm.router()).await.unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let limited = MockServer::start(limited_upstream(calls.clone()))
        .await
        .unwrap();
    let proxy = Running::start(&format!(
        r#"
        [backends.glm]
        kind = "glm"
        base_url = "{}"
        [backends.limited]
        kind = "openai"
        base_url = "{}"
        [models.glm-4]
        primary = ["glm"]
        fallback = ["limited"]
        [models.glm-only]
        primary = ["glm"]
        [cooldown]
        base = "20s"
        cap = "20s"
        [routing]
        max_wait = "200ms"
        "#,
        base(&glm_server, glm::PATH),
        limited.url("/v1"),
    ))
    .await;
    let url = proxy.url("/v1/chat/completions");

    // Every backend limited, both called: the last one's 429, byte for byte.
    let answer = post_json(&url, &chat_body("glm-4", false)).await;
    assert_eq!(answer.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(answer.body, LIMITED_BODY.as_bytes());
    for (name, value) in [
        ("content-type", "application/json; charset=utf-8"),
        ("retry-after-ms", "1500"),
        ("x-ratelimit-limit-requests", "3"),
        ("x-ratelimit-remaining-requests", "0"),
        ("x-ratelimit-reset-requests", "1.5s"),
        ("x-request-id", "req_7c1f"),
        ("x-ratewise-backend", "limited"),
    ] {
        assert_eq!(answer.header(name), Some(value), "{name}");
    }
    assert_eq!(
        (glm.hits().rate_limited(), calls.load(Ordering::SeqCst)),
        (1, 1)
    );

    // Now both cool: no backend is called, and only now the proxy answers by itself.
    let refused = post_json(&url, &chat_body("glm-4", false)).await;
    assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(refused.json()["error"]["code"], "all_backends_cooling");
    assert_eq!(refused.json()["error"]["type"], "rate_limit_error");
    assert!(refused.json()["error"]["message"].is_string());
    let retry_after: u64 = refused.header("retry-after").unwrap().parse().unwrap();
    assert!(
        (1..=2).contains(&retry_after),
        "the fallback recovers first, in 1.5 s: {retry_after}"
    );
    assert!(refused.header("x-ratewise-backend").is_none());
    assert_eq!((glm.hits().count(), calls.load(Ordering::SeqCst)), (1, 1));

    // A model whose only backend cools: 503 too, without calling it.
    let cooling = post_json(&url, &chat_body("glm-only", false)).await;
    assert_eq!(cooling.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(glm.hits().count(), 1);
}

/// GLM's 429 reaches the client as GLM wrote it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn glm_1302_passes_through_unchanged() {
    let glm = GlmApi::new().always_rate_limited(true);
    let glm_server = MockServer::start(glm.router()).await.unwrap();
    let proxy = Running::start(&format!(
        "[backends.glm]\nkind = \"glm\"\nbase_url = \"{}\"\n[models.glm-4]\nprimary = [\"glm\"]\n",
        base(&glm_server, glm::PATH),
    ))
    .await;
    let answer = post_json(
        &proxy.url("/v1/chat/completions"),
        &chat_body("glm-4", false),
    )
    .await;
    assert_eq!(answer.status, StatusCode::TOO_MANY_REQUESTS);
    let expected = serde_json::to_vec(&json!({
        "error": { "code": glm::RATE_LIMIT_CODE, "message": glm::RATE_LIMIT_MESSAGE }
    }))
    .unwrap();
    assert_eq!(answer.body, expected);
    assert_eq!(answer.header("content-type"), Some("application/json"));
    assert_eq!(answer.header("x-ratewise-backend"), Some("glm"));
}

/// The bug the pool had: GLM's real 429, then the fallback's own RPM bucket refusing
/// locally, gave the client a 503 although a backend had answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_429_is_kept_when_the_next_backend_refuses_locally() {
    let glm = GlmApi::new().always_rate_limited(true);
    let fallback = OpenAiApi::new().name("small");
    let glm_server = MockServer::start(glm.router()).await.unwrap();
    let fallback_server = MockServer::start(fallback.router()).await.unwrap();
    let proxy = Running::start(&format!(
        r#"
        [backends.glm]
        kind = "glm"
        base_url = "{}"
        [backends.small]
        kind = "openai"
        base_url = "{}"
        window = {{ n = 1, per = "60s" }}
        [models.glm-4]
        primary = ["glm"]
        fallback = ["small"]
        [models.small]
        primary = ["small"]
        [routing]
        max_wait = "100ms"
        "#,
        base(&glm_server, glm::PATH),
        base(&fallback_server, testing::openai::PATH),
    ))
    .await;
    let url = proxy.url("/v1/chat/completions");
    assert_eq!(
        post_json(&url, &chat_body("small", false)).await.status,
        StatusCode::OK
    );
    let answer = post_json(&url, &chat_body("glm-4", false)).await;
    assert_eq!(answer.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(answer.header("x-ratewise-backend"), Some("glm"));
    assert_eq!(answer.json()["error"]["code"], "1302");
    assert_eq!(
        fallback.hits().count(),
        1,
        "the refusal reached no upstream"
    );
}

// ---------------------------------------------------------------------------------
// Bad input

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_openai_shaped_errors_and_reaches_no_backend() {
    let openai = OpenAiApi::new();
    let server = MockServer::start(openai.router()).await.unwrap();
    let proxy = Running::start(&format!(
        "max_body_bytes = 1024\n[backends.openai]\nkind = \"openai\"\nbase_url = \"{}\"\n[models.gpt-4o]\nprimary = [\"openai\"]\n",
        base(&server, testing::openai::PATH),
    ))
    .await;
    let url = proxy.url("/v1/chat/completions");
    let raw = |body: &'static str| {
        Request::post(&url)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from_static(body.as_bytes())))
            .unwrap()
    };
    let check = |a: &Answer, status: StatusCode, code: &str| {
        assert_eq!(a.status, status, "{:?}", a.body);
        assert_eq!(a.header("content-type"), Some("application/json"));
        let e = &a.json()["error"];
        assert_eq!(e["code"], code, "{e}");
        assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()));
        assert!(e["type"].is_string());
    };

    check(
        &send(raw("{\"model\": \"gpt-4o\",")).await,
        StatusCode::BAD_REQUEST,
        "invalid_json",
    );
    check(
        &send(raw("[1, 2]")).await,
        StatusCode::BAD_REQUEST,
        "missing_model",
    );
    check(
        &send(raw("{\"model\": 4}")).await,
        StatusCode::BAD_REQUEST,
        "missing_model",
    );
    let unknown = post_json(&url, &chat_body("gpt-9", false)).await;
    check(&unknown, StatusCode::NOT_FOUND, "model_not_found");
    assert!(unknown.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("gpt-9"));

    // Over max_body_bytes: with a content-length, and streamed without one.
    let big =
        json!({ "model": "gpt-4o", "messages": [{ "role": "user", "content": "x".repeat(2000) }] });
    check(
        &post_json(&url, &big).await,
        StatusCode::PAYLOAD_TOO_LARGE,
        "request_too_large",
    );
    let chunked = Request::post(&url)
        .header("content-type", "application/json")
        .body(Chunks(
            (0..8).map(|_| Bytes::from(vec![b' '; 256])).collect(),
        ))
        .unwrap();
    let res = within(
        "a chunked call",
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http()
            .request(chunked),
    )
    .await
    .unwrap();
    assert_eq!(res.status(), StatusCode::PAYLOAD_TOO_LARGE);

    // Unknown paths, in the same shape.
    check(
        &get(&proxy.url("/v1/nothing")).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    assert_eq!(
        openai.hits().count(),
        0,
        "no bad request reached the backend"
    );

    // And the good one still works.
    assert_eq!(
        post_json(&url, &chat_body("gpt-4o", false)).await.status,
        StatusCode::OK
    );
    assert_eq!(openai.hits().count(), 1);
}

/// A body sent in chunks, with no length known up front.
struct Chunks(std::collections::VecDeque<Bytes>);

impl http_body::Body for Chunks {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Poll::Ready(self.0.pop_front().map(|b| Ok(Frame::data(b))))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_lists_the_configured_models() {
    let proxy = Running::start(
        "[backends.a]\nkind = \"openai\"\nbase_url = \"http://127.0.0.1:9/v1\"\n[models.gpt-4o]\nprimary = [\"a\"]\n[models.glm-4]\nprimary = [\"a\"]\n",
    )
    .await;
    let answer = get(&proxy.url("/v1/models")).await;
    assert_eq!(answer.status, StatusCode::OK);
    let json = answer.json();
    let ids: Vec<&str> = json["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["glm-4", "gpt-4o"]);
    assert_eq!(answer.json()["object"], "list");
}

// ---------------------------------------------------------------------------------
// A client that goes away mid-stream; graceful shutdown

/// An SSE upstream that sends an event every 50 ms, for ever, and reports when its
/// stream is dropped (its connection closed) and how many events it sent.
#[derive(Clone)]
struct Endless {
    sent: Arc<AtomicUsize>,
    dropped: Arc<Mutex<Option<oneshot::Sender<()>>>>,
}

impl Endless {
    fn new() -> (Endless, oneshot::Receiver<()>) {
        let (tx, rx) = oneshot::channel();
        let endless = Endless {
            sent: Arc::new(AtomicUsize::new(0)),
            dropped: Arc::new(Mutex::new(Some(tx))),
        };
        (endless, rx)
    }

    fn router(&self) -> Router {
        let this = self.clone();
        Router::new().route(
            "/v1/chat/completions",
            post(move || {
                let this = this.clone();
                async move {
                    Response::builder()
                        .header("content-type", "text/event-stream")
                        .body(Body::new(EndlessBody { sleep: None, this }))
                        .unwrap()
                }
            }),
        )
    }
}

struct EndlessBody {
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    this: Endless,
}

impl http_body::Body for EndlessBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let sleep = self
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(Duration::from_millis(50))));
        if sleep.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        self.sleep = None;
        let n = self.this.sent.fetch_add(1, Ordering::SeqCst);
        let event = format!("data: {{\"choices\":[{{\"delta\":{{\"content\":\"{n} \"}}}}]}}\n\n");
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(event)))))
    }
}

impl Drop for EndlessBody {
    fn drop(&mut self) {
        if let Some(tx) = self.this.dropped.lock().unwrap().take() {
            let _ = tx.send(());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_disconnects_mid_stream_cancels_the_upstream_request() {
    let (endless, dropped) = Endless::new();
    let upstream = MockServer::start(endless.router()).await.unwrap();
    let proxy = Running::start(&format!(
        "[backends.endless]\nkind = \"openai\"\nbase_url = \"{}\"\n[models.m]\nprimary = [\"endless\"]\n",
        upstream.url("/v1"),
    ))
    .await;
    // Read three events, then hang up.
    let (answer, events) = stream_events(&proxy.url("/v1/chat/completions"), "m", Some(3)).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(events.len(), 3);
    let hung_up = Instant::now();
    within("the upstream seeing its stream dropped", dropped)
        .await
        .expect("the upstream's stream was dropped");
    assert!(
        hung_up.elapsed() < Duration::from_secs(2),
        "{:?}",
        hung_up.elapsed()
    );
    let sent = endless.sent.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        endless.sent.load(Ordering::SeqCst),
        sent,
        "the upstream sends nothing more"
    );
    assert!(
        sent < 10,
        "it stopped soon after the client left: {sent} events"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_lets_a_stream_finish_and_refuses_new_connections() {
    let gap = Duration::from_millis(100);
    let openai = OpenAiApi::new().name("slow").stream_gap(gap);
    let server = MockServer::start(openai.router()).await.unwrap();
    let mut proxy = Running::start(&format!(
        "[backends.slow]\nkind = \"openai\"\nbase_url = \"{}\"\n[models.m]\nprimary = [\"slow\"]\n[timeouts]\nshutdown = \"5s\"\n",
        base(&server, testing::openai::PATH),
    ))
    .await;
    let url = proxy.url("/v1/chat/completions");
    let req = json_request(Method::POST, &url, &chat_body("m", true)).unwrap();
    let res = within("a streaming call", client().request(req))
        .await
        .unwrap();
    let mut body = res.into_body();
    let first = within("the first event", body.frame())
        .await
        .unwrap()
        .unwrap();
    assert!(first.is_data());

    // Shut down with the stream in flight: it still ends with [DONE].
    proxy.stop();
    let rest = within("the rest of the stream", body.collect())
        .await
        .unwrap()
        .to_bytes();
    let rest = String::from_utf8_lossy(&rest);
    assert!(rest.trim_end().ends_with("data: [DONE]"), "{rest}");
    within("serve() returning", &mut proxy.task)
        .await
        .unwrap()
        .unwrap();
    // No longer listening.
    let refused = client()
        .request(json_request(Method::POST, &url, &chat_body("m", false)).unwrap())
        .await;
    assert!(
        refused.is_err(),
        "a new connection after shutdown is refused"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_closes_streams_left_after_the_grace_period() {
    let (endless, dropped) = Endless::new();
    let upstream = MockServer::start(endless.router()).await.unwrap();
    let mut proxy = Running::start(&format!(
        "[backends.endless]\nkind = \"openai\"\nbase_url = \"{}\"\n[models.m]\nprimary = [\"endless\"]\n[timeouts]\nshutdown = \"300ms\"\n",
        upstream.url("/v1"),
    ))
    .await;
    let req = json_request(
        Method::POST,
        &proxy.url("/v1/chat/completions"),
        &chat_body("m", true),
    )
    .unwrap();
    let res = within("a streaming call", client().request(req))
        .await
        .unwrap();
    let mut body = res.into_body();
    within("the first event", body.frame())
        .await
        .unwrap()
        .unwrap();
    let stopped = Instant::now();
    proxy.stop();
    within("serve() returning", &mut proxy.task)
        .await
        .unwrap()
        .unwrap();
    let took = stopped.elapsed();
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(3),
        "serve returned {took:?} after the signal (grace 300 ms)"
    );
    // The client's stream ends, and the upstream's is dropped.
    within("the client's stream ending", async {
        while let Some(Ok(_)) = body.frame().await {}
    })
    .await;
    within("the upstream seeing its stream dropped", dropped)
        .await
        .unwrap();
}

// ---------------------------------------------------------------------------------
// API keys; start-up errors; /metrics

/// An upstream that records the `Authorization` header it got, then fails (503).
fn recording_upstream(seen: Arc<Mutex<Vec<String>>>, status: StatusCode) -> Router {
    Router::new().route(
        "/v1/chat/completions",
        post(move |headers: HeaderMap| {
            let seen = seen.clone();
            async move {
                let auth = headers
                    .get("authorization")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_owned();
                seen.lock().unwrap().push(auth);
                Response::builder()
                    .status(status)
                    .header("content-type", "application/json")
                    .body(Body::from("{\"ok\":true}"))
                    .unwrap()
            }
        }),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_key_goes_to_its_backend_only_and_nowhere_else() {
    const SECRET: &str = "sk-proxy-test-Zq81x";
    std::env::set_var("RATEWISE_TEST_KEY_FOR_KEYED", SECRET);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let keyed = MockServer::start(recording_upstream(seen.clone(), StatusCode::OK))
        .await
        .unwrap();
    let toml = format!(
        r#"
        [backends.keyed]
        kind = "openai"
        base_url = "{}"
        api_key_env = "RATEWISE_TEST_KEY_FOR_KEYED"
        [backends.down]
        kind = "openai"
        base_url = "http://127.0.0.1:1/v1"
        api_key_env = "RATEWISE_TEST_KEY_FOR_KEYED"
        [models.m]
        primary = ["keyed"]
        [models.down]
        primary = ["down"]
        "#,
        keyed.url("/v1"),
    );
    let proxy = Proxy::from_config(ProxyConfig::from_toml(&toml).unwrap()).unwrap();
    assert!(!format!("{proxy:?}").contains(SECRET));
    let running = Running::start(&toml).await;

    // The client's own credentials stay at the proxy; the backend gets its key.
    let mut req = json_request(
        Method::POST,
        &running.url("/v1/chat/completions"),
        &chat_body("m", false),
    )
    .unwrap();
    req.headers_mut()
        .insert("authorization", "Bearer client-token".parse().unwrap());
    let answer = send(req).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(*seen.lock().unwrap(), [format!("Bearer {SECRET}")]);

    // An error about that backend, the stats and the metrics never show the key.
    let unreachable = post_json(
        &running.url("/v1/chat/completions"),
        &chat_body("down", false),
    )
    .await;
    assert_eq!(unreachable.status, StatusCode::BAD_GATEWAY);
    assert_eq!(unreachable.json()["error"]["code"], "upstream_unreachable");
    for page in [
        unreachable.body.clone(),
        get(&running.url("/stats?window=1m")).await.body,
        get(&running.url("/metrics")).await.body,
        get(&running.url("/")).await.body,
    ] {
        assert!(!String::from_utf8_lossy(&page).contains(SECRET));
    }
}

#[test]
fn a_missing_key_variable_fails_at_start_up_naming_it() {
    let toml = "[backends.glm]\nkind = \"glm\"\nbase_url = \"http://127.0.0.1:9/v4\"\napi_key_env = \"RATEWISE_TEST_NEVER_SET_4417\"\n[models.glm-4]\nprimary = [\"glm\"]\n";
    let err = Proxy::from_config(ProxyConfig::from_toml(toml).unwrap()).unwrap_err();
    assert_eq!(err.field(), "api_key_env");
    let text = err.to_string();
    assert!(text.contains("RATEWISE_TEST_NEVER_SET_4417"), "{text}");
    assert!(text.contains("backends.glm.api_key_env"), "{text}");
}

#[test]
fn bad_values_fail_at_start_up_with_their_place_in_the_file() {
    let backend = "[backends.glm]\nkind = \"glm\"\nbase_url = \"http://127.0.0.1:9/v4\"\n";
    let cases = [
        (format!("{backend}rpm = 0\n[models.m]\nprimary = [\"glm\"]\n"), "backends.glm.rpm"),
        (format!("{backend}max_concurrency = 0\n[models.m]\nprimary = [\"glm\"]\n"), "backends.glm.max_concurrency"),
        (format!("{backend}[models.m]\nprimary = [\"gml\"]\n"), "models.m.primary"),
        (format!("{backend}[models.m]\nprimary = []\n"), "models.m.primary"),
        (format!("{backend}[models.m]\nprimary = [\"glm\"]\nfallback = [\"glm\"]\n"), "models.m.fallback"),
        (format!("{backend}[models.m]\nprimary = [\"glm\"]\n[cooldown]\nbase = \"10s\"\ncap = \"1s\"\n"), "cooldown.cap"),
        (format!("{backend}[models.m]\nprimary = [\"glm\"]\n[redis]\nurl = \"nonsense\"\n"), "redis.url"),
        (
            "[backends.glm]\nkind = \"glm\"\nbase_url = \"ftp://x/v4\"\n[models.m]\nprimary = [\"glm\"]\n".to_owned(),
            "backends.glm.base_url",
        ),
    ];
    for (toml, place) in cases {
        let err = Proxy::from_config(ProxyConfig::from_toml(&toml).unwrap()).unwrap_err();
        assert!(
            err.to_string().contains(&format!("(at `{place}`)")),
            "{place}: {err}"
        );
    }
    // Wrong keys and types are refused while reading, with the key's path.
    let err = ProxyConfig::from_toml(&format!(
        "{backend}rmp = 5\n[models.m]\nprimary = [\"glm\"]\n"
    ))
    .unwrap_err();
    assert_eq!(err.path(), "backends.glm.rmp");
}

/// The value of a Prometheus sample line `name{labels} value`, 0 when absent.
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_after_traffic() {
    let glm = GlmApi::new().limit(2);
    let server = MockServer::start(glm.router()).await.unwrap();
    let proxy = Running::start(&format!(
        "[backends.metered]\nkind = \"glm\"\nbase_url = \"{}\"\nrpm = 600\n[models.m]\nprimary = [\"metered\"]\n[routing]\nmax_wait = \"0s\"\n",
        base(&server, glm::PATH),
    ))
    .await;
    let ok = r#"ratewise_proxy_upstream_requests_total{backend="metered",outcome="ok"}"#;
    let limited =
        r#"ratewise_proxy_upstream_requests_total{backend="metered",outcome="rate_limited"}"#;
    let admitted = r#"ratewise_admitted_total{layer="rate_limit",name="metered"}"#;
    let before = get(&proxy.url("/metrics")).await;
    assert_eq!(before.status, StatusCode::OK);
    assert!(before
        .header("content-type")
        .unwrap()
        .starts_with("text/plain"));
    let before = String::from_utf8_lossy(&before.body).into_owned();

    for _ in 0..3 {
        post_json(&proxy.url("/v1/chat/completions"), &chat_body("m", false)).await;
    }
    assert_eq!((glm.hits().served(), glm.hits().rate_limited()), (2, 1));
    let after = get(&proxy.url("/metrics")).await;
    let after = String::from_utf8_lossy(&after.body).into_owned();
    assert_eq!(sample(&after, ok) - sample(&before, ok), 2.0, "{after}");
    assert_eq!(sample(&after, limited) - sample(&before, limited), 1.0);
    assert_eq!(sample(&after, admitted) - sample(&before, admitted), 3.0);
}

#[test]
fn the_shipped_example_config_is_valid() {
    std::env::set_var("GLM_API_KEY", "example-glm-key");
    std::env::set_var("OPENAI_API_KEY", "example-openai-key");
    let text = include_str!("../examples/proxy.toml");
    let config = ProxyConfig::from_toml(text).expect("examples/proxy.toml parses");
    // Its `backends.glm.tpm` (100 000) is checked by a unit test of src/proxy/config.rs.
    let proxy = Proxy::from_config(config).expect("examples/proxy.toml builds");
    let names: Vec<String> = proxy
        .pool()
        .backends()
        .into_iter()
        .map(|b| b.name.to_string())
        .collect();
    assert_eq!(names, ["glm", "openai"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embeddings_go_to_the_backends_embeddings_path() {
    let seen = Arc::new(Mutex::new(Vec::<(String, Value)>::new()));
    let upstream = Router::new().route(
        "/v1/embeddings",
        post({
            let seen = seen.clone();
            move |uri: http::Uri, body: Bytes| {
                let seen = seen.clone();
                async move {
                    let json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                    seen.lock().unwrap().push((uri.path().to_owned(), json));
                    axum::Json(json!({
                        "object": "list",
                        "data": [{ "object": "embedding", "index": 0, "embedding": [0.1, 0.2] }],
                        "model": "text-embedding-3-small",
                        "usage": { "prompt_tokens": 2, "total_tokens": 2 }
                    }))
                }
            }
        }),
    );
    let server = MockServer::start(upstream).await.unwrap();
    let proxy = Running::start(&format!(
        "[backends.emb]\nkind = \"openai\"\nbase_url = \"{}\"\n[models.text-embedding-3-small]\nprimary = [\"emb\"]\n",
        server.url("/v1"),
    ))
    .await;
    let request = json!({ "model": "text-embedding-3-small", "input": "hello" });
    let answer = post_json(&proxy.url("/v1/embeddings"), &request).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.json()["data"][0]["embedding"], json!([0.1, 0.2]));
    assert_eq!(answer.header("x-ratewise-backend"), Some("emb"));
    assert_eq!(
        *seen.lock().unwrap(),
        [("/v1/embeddings".to_owned(), request)]
    );
    let unknown = post_json(
        &proxy.url("/v1/embeddings"),
        &json!({ "model": "nope", "input": "x" }),
    )
    .await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    assert_eq!(seen.lock().unwrap().len(), 1);
}

/// `max_concurrency = 1`: a stream holds the backend's one slot until it ends, so a
/// second call goes to the fallback at once; with no fallback it waits for the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_holds_its_concurrency_slot_until_it_ends() {
    let gap = Duration::from_millis(100);
    let one = OpenAiApi::new().name("one").stream_gap(gap);
    let other = OpenAiApi::new().name("other");
    let one_server = MockServer::start(one.router()).await.unwrap();
    let other_server = MockServer::start(other.router()).await.unwrap();
    let proxy = Running::start(&format!(
        r#"
        [backends.one]
        kind = "openai"
        base_url = "{}"
        max_concurrency = 1
        [backends.other]
        kind = "openai"
        base_url = "{}"
        [models.pair]
        primary = ["one"]
        fallback = ["other"]
        [models.solo]
        primary = ["one"]
        [routing]
        max_wait = "5s"
        "#,
        base(&one_server, testing::openai::PATH),
        base(&other_server, testing::openai::PATH),
    ))
    .await;
    let url = proxy.url("/v1/chat/completions");
    let req = json_request(Method::POST, &url, &chat_body("solo", true)).unwrap();
    let res = within("a streaming call", client().request(req))
        .await
        .unwrap();
    let mut stream = res.into_body();
    within("the first event", stream.frame())
        .await
        .unwrap()
        .unwrap();

    // While it streams: the pair's call is served by the other backend...
    let answer = post_json(&url, &chat_body("pair", false)).await;
    assert_eq!(answer.header("x-ratewise-backend"), Some("other"));
    // ...and the solo call waits for the slot.
    let waiting = tokio::spawn({
        let url = url.clone();
        async move { post_json(&url, &chat_body("solo", false)).await }
    });
    let rest = within("the rest of the stream", stream.collect())
        .await
        .unwrap();
    assert!(String::from_utf8_lossy(&rest.to_bytes()).contains("[DONE]"));
    let answer = within("the waiting call", waiting).await.unwrap();
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.header("x-ratewise-backend"), Some("one"));
    let hits = one.hits().all();
    assert_eq!(hits.len(), 2);
    assert!(
        hits[1].at >= hits[0].at + gap * 5,
        "the second call reached `one` only once the stream had ended: {:?} after it began",
        hits[1].at - hits[0].at
    );
}

/// With `proxy-tls`, an `https://` backend is reached over TLS: a plain-HTTP server
/// behind an `https://` URL fails the handshake (a transient error, 502), where the
/// same server behind `http://` answers.
#[cfg(feature = "proxy-tls")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_backend_is_reached_over_tls() {
    let openai = OpenAiApi::new();
    let server = MockServer::start(openai.router()).await.unwrap();
    let plain = base(&server, testing::openai::PATH);
    let tls = plain.replacen("http://", "https://", 1);
    let proxy = Running::start(&format!(
        "[backends.tls]\nkind = \"openai\"\nbase_url = \"{tls}\"\n[backends.plain]\nkind = \"openai\"\nbase_url = \"{plain}\"\n[models.tls]\nprimary = [\"tls\"]\n[models.plain]\nprimary = [\"plain\"]\n",
    ))
    .await;
    let url = proxy.url("/v1/chat/completions");
    let answer = post_json(&url, &chat_body("tls", false)).await;
    assert_eq!(answer.status, StatusCode::BAD_GATEWAY);
    assert_eq!(answer.json()["error"]["code"], "upstream_unreachable");
    assert_eq!(
        post_json(&url, &chat_body("plain", false)).await.status,
        StatusCode::OK
    );
    assert_eq!(openai.hits().served(), 1);
}

/// Bug: `/stats` showed a wait of 0 for every call, because a backend measured it from
/// its own start, after the pool had done the waiting (for a cooling backend, or for
/// room after its limiter held the call back). The wait now counts from when the proxy
/// took the call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_wait_was_zero_though_the_pool_waited() {
    let glm = GlmApi::new().limit(100);
    let server = MockServer::start(glm.router()).await.unwrap();
    let proxy = Running::start(&format!(
        "[backends.slow]\nkind = \"glm\"\nbase_url = \"{}\"\nwindow = {{ n = 1, per = \"1s\" }}\n[models.m]\nprimary = [\"slow\"]\n[routing]\nmax_wait = \"5s\"\n",
        base(&server, glm::PATH),
    ))
    .await;
    let url = proxy.url("/v1/chat/completions");
    let body = chat_body("m", false);
    let (a, b) = tokio::join!(post_json(&url, &body), post_json(&url, &body));
    assert_eq!((a.status, b.status), (StatusCode::OK, StatusCode::OK));
    let stats = get(&proxy.url("/stats?window=15m")).await;
    let stats: Value = serde_json::from_slice(&stats.body).unwrap();
    let slow = stats["backends"]
        .as_array()
        .and_then(|all| all.iter().find(|b| b["name"] == "slow"))
        .cloned()
        .unwrap_or_else(|| panic!("no backend `slow` in {stats}"));
    let p95 = slow["p95_wait_ms"].as_f64().unwrap_or(0.0);
    assert!(
        (800.0..3000.0).contains(&p95),
        "the second call waited about 1 s for room: p95 wait {p95} ms in {slow}"
    );
}

/// An answer body that sends one chunk, then fails 100 ms later (after the proxy has
/// relayed the head and the chunk).
struct CutOff(u8, Option<Pin<Box<tokio::time::Sleep>>>);

impl http_body::Body for CutOff {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        if self.0 == 0 {
            self.0 = 1;
            self.1 = Some(Box::pin(tokio::time::sleep(Duration::from_millis(100))));
            let chunk = Bytes::from_static(b"data: {\"id\":1}\n\n");
            return std::task::Poll::Ready(Some(Ok(http_body::Frame::data(chunk))));
        }
        if let Some(sleep) = self.1.as_mut() {
            std::task::ready!(sleep.as_mut().poll(cx));
        }
        std::task::Poll::Ready(Some(Err(std::io::Error::other("the upstream went away"))))
    }
}

/// Bug: an answer whose body failed mid-stream was counted `ok` in `/stats`; it is a
/// transient failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_cut_off_mid_stream_was_counted_ok() {
    let router = Router::new().route(
        "/v1/chat/completions",
        post(|| async {
            Response::builder()
                .header("content-type", "text/event-stream")
                .body(Body::new(CutOff(0, None)))
                .unwrap()
        }),
    );
    let server = MockServer::start(router).await.unwrap();
    let proxy = Running::start(&format!(
        "[backends.cut]\nkind = \"openai\"\nbase_url = \"{}\"\n[models.m]\nprimary = [\"cut\"]\n",
        base(&server, "/v1/chat/completions"),
    ))
    .await;
    let req = json_request(
        Method::POST,
        &proxy.url("/v1/chat/completions"),
        &chat_body("m", true),
    )
    .unwrap();
    // The client sees the stream break (or end early); either way the proxy's count is
    // what this test is about.
    let _ = within("the cut-off answer", async {
        let res = client().request(req).await?;
        ratewise::testing::body_bytes(res.into_body()).await
    })
    .await;
    let mut cut = Value::Null;
    for _ in 0..100 {
        let stats = get(&proxy.url("/stats?window=15m")).await;
        let stats: Value = serde_json::from_slice(&stats.body).unwrap();
        cut = stats["backends"]
            .as_array()
            .and_then(|all| all.iter().find(|b| b["name"] == "cut"))
            .cloned()
            .unwrap_or(Value::Null);
        if cut["requests"] == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(cut["requests"], 1, "{cut}");
    assert_eq!(
        (cut["ok"].clone(), cut["transient"].clone()),
        (json!(0), json!(1)),
        "{cut}"
    );
}
