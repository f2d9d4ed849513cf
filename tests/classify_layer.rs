//! `ClassifyLayer` behaviour: streams it was not asked about flow unbuffered (also
//! over a real HTTP server on 127.0.0.1), verdicts are computed once however many
//! layers are stacked and are what the cooldown and retry layers outside act on, and
//! errors and readiness pass through.

use std::convert::Infallible;
use std::fmt;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderMap, Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use ratewise::classify::{ClassifyLayer, Preset, ResponseView};
use ratewise::{verdict_of, Classifier, Verdict};
use tokio::sync::Notify;
use tokio::time::timeout;
use tower::{service_fn, Service, ServiceBuilder, ServiceExt};

// ---------------------------------------------------------------------------------
// Test classifiers and bodies

#[derive(Debug, Default)]
struct Counts {
    wants_body: AtomicUsize,
    classify: AtomicUsize,
    /// The body prefix of every `classify` call.
    seen: Mutex<Vec<Option<Vec<u8>>>>,
}

impl Counts {
    fn wants_body(&self) -> usize {
        self.wants_body.load(Ordering::SeqCst)
    }
    fn classify(&self) -> usize {
        self.classify.load(Ordering::SeqCst)
    }
    fn seen(&self) -> Vec<Option<Vec<u8>>> {
        self.seen.lock().unwrap().clone()
    }
}

/// Wants the body of non-2xx responses only; says rate-limited when the body holds
/// `needle`, else has no opinion. Counts its calls.
struct Non2xxBody {
    counts: Arc<Counts>,
    needle: &'static [u8],
}

impl Non2xxBody {
    fn new(needle: &'static str) -> (Self, Arc<Counts>) {
        let counts = Arc::new(Counts::default());
        (
            Non2xxBody {
                counts: counts.clone(),
                needle: needle.as_bytes(),
            },
            counts,
        )
    }
}

impl Classifier for Non2xxBody {
    fn wants_body(&self, status: StatusCode, _: &HeaderMap) -> bool {
        self.counts.wants_body.fetch_add(1, Ordering::SeqCst);
        !status.is_success()
    }

    fn classify(&self, view: &ResponseView<'_>) -> Option<Verdict> {
        self.counts.classify.fetch_add(1, Ordering::SeqCst);
        self.counts
            .seen
            .lock()
            .unwrap()
            .push(view.body().map(<[u8]>::to_vec));
        let body = view.body()?;
        body.windows(self.needle.len())
            .any(|w| w == self.needle)
            .then(|| Verdict::rate_limited(Some(Duration::from_secs(7))))
    }
}

/// Always answers `verdict` (wanting the body when `wants`), counting its calls.
struct Fixed {
    counts: Arc<Counts>,
    wants: bool,
    verdict: Option<Verdict>,
}

impl Classifier for Fixed {
    fn wants_body(&self, _: StatusCode, _: &HeaderMap) -> bool {
        self.counts.wants_body.fetch_add(1, Ordering::SeqCst);
        self.wants
    }

    fn classify(&self, view: &ResponseView<'_>) -> Option<Verdict> {
        self.counts.classify.fetch_add(1, Ordering::SeqCst);
        self.counts
            .seen
            .lock()
            .unwrap()
            .push(view.body().map(<[u8]>::to_vec));
        self.verdict
    }
}

/// Yields one frame, then is pending forever (never wakes). Counts its polls.
struct FirstThenHang {
    first: Option<Bytes>,
    polls: Arc<AtomicUsize>,
}

impl Body for FirstThenHang {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.polls.fetch_add(1, Ordering::SeqCst);
        match self.first.take() {
            Some(chunk) => Poll::Ready(Some(Ok(Frame::data(chunk)))),
            None => Poll::Pending,
        }
    }
}

// ---------------------------------------------------------------------------------
// Over a real HTTP server on 127.0.0.1 (the crate's `MockServer`)

#[cfg(feature = "testing")]
mod real_server {
    use super::*;
    use http::Method;
    use ratewise::testing::{client, empty_request, MockServer};
    use tokio::sync::mpsc;

    /// A body fed from a channel: each message is one data frame, sent when it arrives.
    struct ChannelBody(mpsc::Receiver<Bytes>);

    impl Body for ChannelBody {
        type Data = Bytes;
        type Error = Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            self.0
                .poll_recv(cx)
                .map(|chunk| chunk.map(|c| Ok(Frame::data(c))))
        }
    }

    /// Reads data frames until `want` bytes have arrived.
    async fn read_exactly<B>(body: &mut B, want: usize) -> Vec<u8>
    where
        B: Body<Data = Bytes> + Unpin,
        B::Error: fmt::Debug,
    {
        let mut got = Vec::new();
        while got.len() < want {
            let frame = body
                .frame()
                .await
                .expect("body ended early")
                .expect("body error");
            if let Ok(data) = frame.into_data() {
                got.extend_from_slice(&data);
            }
        }
        got
    }

    /// Serves every request on 127.0.0.1 with `respond()`, whatever its body type.
    async fn serve<F, B>(respond: F) -> MockServer
    where
        F: Fn() -> Response<B> + Clone + Send + Sync + 'static,
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<ratewise::BoxError>,
    {
        let router = axum::Router::new().fallback(move || {
            let respond = respond.clone();
            async move { respond().map(axum::body::Body::new) }
        });
        MockServer::start(router).await.unwrap()
    }

    const EVENTS: [&str; 3] = ["data: one\n\n", "data: two\n\n", "data: three\n\n"];

    /// A 200 `text/event-stream` through `ClassifyLayer` (whose classifier wants bodies of
    /// non-2xx only) reaches the caller chunk by chunk: the server sends its second and
    /// last events only after the client has received the first one. If the layer
    /// buffered the stream, the client would never see the first event and the test
    /// would time out.
    #[tokio::test]
    async fn sse_200_streams_chunk_by_chunk_through_classify_layer_over_real_hyper() {
        let first_received = Arc::new(Notify::new());
        let sent_rest = Arc::new(AtomicUsize::new(0));
        let server = {
            let first_received = first_received.clone();
            let sent_rest = sent_rest.clone();
            serve(move || {
                let (tx, rx) = mpsc::channel(4);
                let first_received = first_received.clone();
                let sent_rest = sent_rest.clone();
                tokio::spawn(async move {
                    tx.send(Bytes::from_static(EVENTS[0].as_bytes()))
                        .await
                        .unwrap();
                    // The rest only once the client has the first event.
                    first_received.notified().await;
                    for event in &EVENTS[1..] {
                        tx.send(Bytes::from_static(event.as_bytes())).await.unwrap();
                        sent_rest.fetch_add(1, Ordering::SeqCst);
                    }
                });
                Response::builder()
                    .header(header::CONTENT_TYPE, "text/event-stream")
                    .header(header::CACHE_CONTROL, "no-cache")
                    .body(ChannelBody(rx))
                    .unwrap()
            })
            .await
        };

        let (classifier, counts) = Non2xxBody::new("rate limit");
        let svc = ServiceBuilder::new()
            .layer(ClassifyLayer::new(classifier))
            .service(client());

        let test = async {
            let req = empty_request(Method::GET, &server.url("/events")).unwrap();
            let res = svc.oneshot(req).await.unwrap();
            assert_eq!(res.status(), StatusCode::OK);
            assert_eq!(res.headers()[header::CONTENT_TYPE], "text/event-stream");
            assert_eq!(verdict_of(&res), Verdict::Success);
            assert!(res.body().is_pass_through(), "a 200 must not be buffered");
            let mut body = res.into_body();

            let first = read_exactly(&mut body, EVENTS[0].len()).await;
            assert_eq!(first, EVENTS[0].as_bytes());
            assert_eq!(
                sent_rest.load(Ordering::SeqCst),
                0,
                "the first event arrived before the server sent the others"
            );
            first_received.notify_one();

            let rest = body.collect().await.unwrap().to_bytes();
            assert_eq!(&rest[..], EVENTS[1..].concat().as_bytes());
            assert_eq!(sent_rest.load(Ordering::SeqCst), 2);
        };
        timeout(Duration::from_secs(20), test)
            .await
            .expect("the SSE stream stalled: was the 200 body buffered?");

        assert_eq!(counts.wants_body(), 1);
        assert_eq!(counts.classify(), 1);
        assert_eq!(counts.seen(), vec![None], "the classifier saw no body");
    }

    /// A rate-limit answer whose body arrives over a real socket in several chunks, longer
    /// than the cap: the classifier sees the prefix and the caller the whole body.
    #[tokio::test]
    async fn chunked_error_body_over_real_hyper_is_classified_and_delivered_whole() {
        const NEEDLE: &str = "接口调用超过频率限制";
        let head = format!("{{\"code\":40054,\"message\":\"{NEEDLE}\",\"pad\":\"");
        let padding = "x".repeat(96 * 1024);
        let whole = format!("{head}{padding}\"}}");
        let chunks: Vec<Bytes> = whole
            .as_bytes()
            .chunks(10_000)
            .map(Bytes::copy_from_slice)
            .collect();

        let server = serve(move || {
            let (tx, rx) = mpsc::channel(chunks.len());
            for chunk in &chunks {
                tx.try_send(chunk.clone()).unwrap();
            }
            Response::builder()
                .status(StatusCode::BAD_REQUEST)
                .body(ChannelBody(rx))
                .unwrap()
        })
        .await;

        let (classifier, counts) = Non2xxBody::new(NEEDLE);
        let svc = ServiceBuilder::new()
            .layer(ClassifyLayer::new(classifier).body_cap(1024))
            .service(client());

        let test = async {
            let req = empty_request(Method::GET, &server.url("/send")).unwrap();
            let res = svc.oneshot(req).await.unwrap();
            assert_eq!(res.status(), StatusCode::BAD_REQUEST);
            assert_eq!(
                verdict_of(&res),
                Verdict::rate_limited(Some(Duration::from_secs(7)))
            );
            assert!(!res.body().is_pass_through());
            res.into_body().collect().await.unwrap().to_bytes()
        };
        let got = timeout(Duration::from_secs(20), test).await.unwrap();
        assert_eq!(got.len(), whole.len());
        assert!(
            got == whole.as_bytes(),
            "the caller got every byte, in order"
        );

        let seen = counts.seen();
        assert_eq!(seen.len(), 1);
        let prefix = seen[0].as_ref().expect("the classifier saw the body");
        assert_eq!(&prefix[..], &whole.as_bytes()[..1024], "exactly the cap");
    }

    /// A small `content-length` body read whole while peeking keeps an exact size hint
    /// (what a proxy re-serving it would send as `content-length`).
    #[tokio::test]
    async fn peeked_hyper_body_keeps_its_exact_size_hint() {
        let server = serve(|| {
            Response::builder()
                .status(StatusCode::TOO_MANY_REQUESTS)
                .body(Full::new(Bytes::from_static(b"{\"error\":\"slow down\"}")))
                .unwrap()
        })
        .await;

        let (classifier, _counts) = Non2xxBody::new("slow down");
        let svc = ServiceBuilder::new()
            .layer(ClassifyLayer::new(classifier))
            .service(client());
        let test = async {
            let req = empty_request(Method::GET, &server.url("/")).unwrap();
            let res = svc.oneshot(req).await.unwrap();
            assert!(verdict_of(&res).is_rate_limited());
            assert_eq!(res.body().size_hint().exact(), Some(21));
            res.into_body().collect().await.unwrap().to_bytes()
        };
        let got = timeout(Duration::from_secs(20), test).await.unwrap();
        assert_eq!(&got[..], b"{\"error\":\"slow down\"}");
    }
}

// ---------------------------------------------------------------------------------
// In-memory behaviour

fn hanging_upstream(
    status: StatusCode,
    polls: Arc<AtomicUsize>,
) -> impl Service<
    Request<()>,
    Response = Response<FirstThenHang>,
    Error = Infallible,
    Future = impl Send,
> + Clone {
    service_fn(move |_req: Request<()>| {
        let polls = polls.clone();
        async move {
            Ok::<_, Infallible>(
                Response::builder()
                    .status(status)
                    .body(FirstThenHang {
                        first: Some(Bytes::from_static(b"data: first\n\n")),
                        polls,
                    })
                    .unwrap(),
            )
        }
    })
}

/// A status the classifier does not ask about is never read by the layer: the
/// response comes back without a single poll of its body, and the caller gets the
/// first frame of a body that hangs after it.
#[tokio::test(start_paused = true)]
async fn status_not_asked_about_is_never_buffered() {
    let polls = Arc::new(AtomicUsize::new(0));
    let (classifier, counts) = Non2xxBody::new("limit");
    let svc = ServiceBuilder::new()
        .layer(ClassifyLayer::new(classifier))
        .service(hanging_upstream(StatusCode::OK, polls.clone()));

    let res = timeout(Duration::from_secs(5), svc.oneshot(Request::new(())))
        .await
        .expect("the layer waited on a body it was not asked to read")
        .unwrap();
    assert_eq!(polls.load(Ordering::SeqCst), 0, "the layer polled the body");
    assert!(res.body().is_pass_through());
    assert_eq!(verdict_of(&res), Verdict::Success);
    assert_eq!(counts.seen(), vec![None]);

    let mut body = res.into_body();
    let frame = timeout(Duration::from_secs(5), body.frame())
        .await
        .expect("first frame")
        .unwrap()
        .unwrap();
    assert_eq!(&frame.into_data().unwrap()[..], b"data: first\n\n");
    assert_eq!(polls.load(Ordering::SeqCst), 1);
    assert!(
        timeout(Duration::from_secs(5), body.frame()).await.is_err(),
        "the inner body hangs after its first frame"
    );
}

/// The control for the test above: the same hanging body under a status the
/// classifier does ask about is peeked, so the response waits for the cap.
#[tokio::test(start_paused = true)]
async fn status_asked_about_is_peeked_up_to_the_cap() {
    let polls = Arc::new(AtomicUsize::new(0));
    let (classifier, counts) = Non2xxBody::new("limit");
    let svc = ServiceBuilder::new()
        .layer(ClassifyLayer::new(classifier))
        .service(hanging_upstream(
            StatusCode::TOO_MANY_REQUESTS,
            polls.clone(),
        ));

    let res = timeout(Duration::from_secs(5), svc.oneshot(Request::new(()))).await;
    assert!(
        res.is_err(),
        "a peeked body is read until the cap or its end"
    );
    assert!(
        polls.load(Ordering::SeqCst) >= 2,
        "read the first frame, then waited on the body for more"
    );
    assert_eq!(counts.classify(), 0);

    // With a cap below the first frame, the layer answers after one frame.
    let polls = Arc::new(AtomicUsize::new(0));
    let (classifier, counts) = Non2xxBody::new("first");
    let svc = ServiceBuilder::new()
        .layer(ClassifyLayer::new(classifier).body_cap(8))
        .service(hanging_upstream(
            StatusCode::TOO_MANY_REQUESTS,
            polls.clone(),
        ));
    let res = timeout(Duration::from_secs(5), svc.oneshot(Request::new(())))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(polls.load(Ordering::SeqCst), 1);
    assert_eq!(counts.seen(), vec![Some(b"data: fi".to_vec())]);
    assert_eq!(verdict_of(&res), Verdict::Failure, "needle beyond the cap");
    let frame = res.into_body().frame().await.unwrap().unwrap();
    assert_eq!(&frame.into_data().unwrap()[..], b"data: first\n\n");
}

fn slow_down_429() -> Response<Full<Bytes>> {
    Response::builder()
        .status(StatusCode::TOO_MANY_REQUESTS)
        .body(Full::new(Bytes::from_static(b"{\"error\":\"slow down\"}")))
        .unwrap()
}

/// Stacked layers classify once: the outer layer finds the inner one's verdict and
/// neither asks its own classifier nor reads the body again.
#[tokio::test]
async fn verdict_already_present_is_not_recomputed() {
    let (inner, inner_counts) = Non2xxBody::new("slow down");
    let outer_counts = Arc::new(Counts::default());
    let outer = Fixed {
        counts: outer_counts.clone(),
        wants: true,
        verdict: Some(Verdict::Failure),
    };
    let svc = ServiceBuilder::new()
        .layer(ClassifyLayer::new(outer))
        .layer(ClassifyLayer::new(inner))
        .service(service_fn(|_req: Request<()>| async {
            Ok::<_, Infallible>(slow_down_429())
        }));

    let res = svc.oneshot(Request::new(())).await.unwrap();
    assert_eq!(
        verdict_of(&res),
        Verdict::rate_limited(Some(Duration::from_secs(7))),
        "the inner verdict stands"
    );
    assert!(
        res.body().is_pass_through(),
        "the outer layer did not buffer"
    );
    assert_eq!((inner_counts.wants_body(), inner_counts.classify()), (1, 1));
    assert_eq!((outer_counts.wants_body(), outer_counts.classify()), (0, 0));
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"{\"error\":\"slow down\"}");

    // The same classifier (shared counts) on three stacked layers: one call.
    let counts = Arc::new(Counts::default());
    let fixed = || Fixed {
        counts: counts.clone(),
        wants: true,
        verdict: None,
    };
    let svc = ServiceBuilder::new()
        .layer(ClassifyLayer::new(fixed()))
        .layer(ClassifyLayer::new(fixed()))
        .layer(ClassifyLayer::new(fixed()))
        .service(service_fn(|_req: Request<()>| async {
            Ok::<_, Infallible>(slow_down_429())
        }));
    let res = svc.oneshot(Request::new(())).await.unwrap();
    assert_eq!(
        verdict_of(&res),
        Verdict::from_status(StatusCode::TOO_MANY_REQUESTS)
    );
    assert_eq!((counts.wants_body(), counts.classify()), (1, 1));
}

/// A verdict the upstream service itself put in the extensions is kept as is.
#[tokio::test]
async fn verdict_set_by_the_inner_service_is_kept() {
    let counts = Arc::new(Counts::default());
    let svc = ServiceBuilder::new()
        .layer(ClassifyLayer::new(Fixed {
            counts: counts.clone(),
            wants: true,
            verdict: Some(Verdict::Failure),
        }))
        .service(service_fn(|_req: Request<()>| async {
            let mut res = slow_down_429();
            res.extensions_mut().insert(Verdict::Transient);
            Ok::<_, Infallible>(res)
        }));
    let res = svc.oneshot(Request::new(())).await.unwrap();
    assert_eq!(verdict_of(&res), Verdict::Transient);
    assert_eq!(counts.classify(), 0);
}

/// Without a body, the classifier judges from status and headers; with no opinion
/// the verdict falls back to the status.
#[tokio::test]
async fn header_only_classification_and_status_fallback() {
    // QQ's preset asks for a body on a 400 only: 429 and 5xx, nothing else.
    let classifier = Preset::qq();
    let layer = ClassifyLayer::new(classifier);
    for (status, expected) in [
        (StatusCode::TOO_MANY_REQUESTS, Verdict::rate_limited(None)),
        (StatusCode::SERVICE_UNAVAILABLE, Verdict::Transient),
        (StatusCode::NOT_FOUND, Verdict::Failure),
        (StatusCode::OK, Verdict::Success),
        (StatusCode::MOVED_PERMANENTLY, Verdict::Success),
    ] {
        let svc = ServiceBuilder::new()
            .layer(layer.clone())
            .service(service_fn(move |_req: Request<()>| async move {
                Ok::<_, Infallible>(
                    Response::builder()
                        .status(status)
                        .body(Full::new(Bytes::from_static(b"body")))
                        .unwrap(),
                )
            }));
        let res = svc.oneshot(Request::new(())).await.unwrap();
        assert_eq!(
            res.extensions().get::<Verdict>(),
            Some(&expected),
            "{status}"
        );
        assert!(res.body().is_pass_through(), "{status}");
    }
}

#[derive(Debug, PartialEq, Eq)]
struct UpstreamDown(u32);

impl fmt::Display for UpstreamDown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "upstream down ({})", self.0)
    }
}

impl std::error::Error for UpstreamDown {}

/// Errors of the inner service pass through untouched, with their own type, and the
/// classifier is not consulted.
#[tokio::test]
async fn inner_errors_pass_through_unchanged() {
    let counts = Arc::new(Counts::default());
    let svc = ServiceBuilder::new()
        .layer(ClassifyLayer::new(Fixed {
            counts: counts.clone(),
            wants: true,
            verdict: None,
        }))
        .service(service_fn(|_req: Request<()>| async {
            Err::<Response<Full<Bytes>>, _>(UpstreamDown(42))
        }));
    let err: UpstreamDown = svc.oneshot(Request::new(())).await.unwrap_err();
    assert_eq!(err, UpstreamDown(42));
    assert_eq!((counts.wants_body(), counts.classify()), (0, 0));
}

/// `poll_ready` is the inner service's: pending while the inner is at its
/// concurrency limit, ready once a slot frees, and clones share the inner state.
#[tokio::test]
async fn poll_ready_delegates_to_the_inner_service() {
    let (classifier, _counts) = Non2xxBody::new("slow down");
    let release = Arc::new(Notify::new());
    let upstream = {
        let release = release.clone();
        service_fn(move |_req: Request<()>| {
            let release = release.clone();
            async move {
                release.notified().await;
                Ok::<_, Infallible>(slow_down_429())
            }
        })
    };
    let mut svc = ServiceBuilder::new()
        .layer(ClassifyLayer::new(classifier))
        .concurrency_limit(1)
        .service(upstream);
    let mut other = svc.clone();

    let first = svc.ready().await.unwrap().call(Request::new(()));
    let poll = std::future::poll_fn(|cx| Poll::Ready(other.poll_ready(cx))).await;
    assert!(poll.is_pending(), "the inner limit is taken: not ready");

    release.notify_one();
    let res = first.await.unwrap();
    assert!(verdict_of(&res).is_rate_limited());
    drop(res);
    let ready = timeout(
        Duration::from_secs(5),
        std::future::poll_fn(|cx| other.poll_ready(cx)),
    )
    .await;
    assert!(matches!(ready, Ok(Ok(()))), "ready once the slot is free");
}

/// Accessors and `Debug` that does not need the classifier to be `Debug`.
#[test]
fn accessors_and_debug() {
    struct NotDebug;
    impl Classifier for NotDebug {
        fn classify(&self, _: &ResponseView<'_>) -> Option<Verdict> {
            None
        }
    }
    let layer = ClassifyLayer::new(NotDebug).body_cap(123);
    let text = format!("{layer:?}");
    assert!(text.contains("body_cap: 123"), "{text}");
    assert!(text.contains("NotDebug"), "{text}");

    let mut svc = tower::Layer::layer(&layer, 7u8);
    assert_eq!(*svc.get_ref(), 7);
    *svc.get_mut() = 8;
    assert!(format!("{svc:?}").contains("inner: 8"));
    assert_eq!(svc.into_inner(), 8);
}

/// The layer's future and body can cross threads (axum and hyper need `Send`).
#[tokio::test]
async fn future_and_body_are_send() {
    fn assert_send<T: Send>(_: &T) {}
    fn assert_send_sync<T: Send + Sync>() {}
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let svc = ServiceBuilder::new()
        .layer(ClassifyLayer::new(Preset::qq()))
        .service(client);
    let fut = svc.oneshot(Request::new(Empty::new()));
    assert_send(&fut);
    assert_send_sync::<ratewise::body::PeekBody<hyper::body::Incoming>>();
    // The peek future and `Peeked` are private now: their `Send` checks are in
    // `src/body/peek.rs`.
    drop(fut);
}

// ---------------------------------------------------------------------------------
// The verdict reaches the layers stacked outside

/// GLM's rate limit, as seed 004 shows it: 429 with business code 1302.
const GLM_1302: &str =
    r#"{"error":{"code":"1302","message":"您的账户已达到速率限制,请您控制请求频率"}}"#;
/// GLM's account in arrears: a 429 too, but waiting does not cure it.
const GLM_1113: &str = r#"{"error":{"code":"1113","message":"您的账户已欠费,请充值后重试。"}}"#;

/// An upstream answering every call with a 429 carrying `body` (and no `Retry-After`),
/// recording when each call reached it.
fn glm_429(
    body: &'static str,
    calls: Arc<Mutex<Vec<tokio::time::Instant>>>,
) -> impl Service<
    Request<()>,
    Response = Response<Full<Bytes>>,
    Error = Infallible,
    Future = impl Send,
> + Clone {
    service_fn(move |_req: Request<()>| {
        calls.lock().unwrap().push(tokio::time::Instant::now());
        async move {
            Ok::<_, Infallible>(
                Response::builder()
                    .status(StatusCode::TOO_MANY_REQUESTS)
                    .header(header::CONTENT_TYPE, "application/json")
                    .body(Full::new(Bytes::from_static(body.as_bytes())))
                    .unwrap(),
            )
        }
    })
}

fn glm_request() -> Request<()> {
    Request::post("http://open.bigmodel.cn/api/paas/v4/chat/completions")
        .body(())
        .unwrap()
}

/// `Retry → Cooldown → Classify(glm) → upstream`: the GLM 429 1302 classified once,
/// innermost, is rate-limited for the cooldown (it cools the key and holds the retries
/// back until the cooldown ends) and for the retry (it retries, then gives up on its
/// attempts), and the caller gets the upstream's body byte for byte. The control, a
/// GLM 429 with an account code, is a failure for the same preset: neither layer treats
/// it as a rate limit, which a 429 judged by status alone would be. So the outer layers
/// act on the `ClassifyLayer`'s verdict.
#[tokio::test(start_paused = true)]
async fn glm_1302_classified_inside_is_rate_limited_for_cooldown_and_retry_outside() {
    use ratewise::classify::Preset;
    use ratewise::retry::GiveUp;
    use ratewise::{CooldownLayer, RetryLayer};

    let stack = |body: &'static str| {
        let calls = Arc::new(Mutex::new(Vec::new()));
        let retry = RetryLayer::builder()
            .exponential(Duration::from_secs(1), Duration::from_secs(8))
            .max_attempts(3)
            .build()
            .unwrap();
        let cooldown = CooldownLayer::builder()
            .exponential(Duration::from_secs(2), Duration::from_secs(60))
            .wait(Duration::from_secs(60))
            .build()
            .unwrap();
        let (retry_layer, cooldown_handle) = (retry.clone(), cooldown.handle());
        let svc = ServiceBuilder::new()
            .layer(retry)
            .layer(cooldown)
            .layer(ClassifyLayer::new(Preset::glm()))
            .service(glm_429(body, calls.clone()));
        (svc, calls, retry_layer, cooldown_handle)
    };
    const HOST: &str = "open.bigmodel.cn";

    // GLM 429 1302.
    let (svc, calls, retry, cooldown) = stack(GLM_1302);
    let t0 = tokio::time::Instant::now();
    let res = svc.oneshot(glm_request()).await.unwrap();
    // Call 1 at 0 s cools the key for 2 s; the retry after 1 s waits for the cooldown
    // and probes at 2 s, which cools it for 4 s (n = 2); the retry after 2 more
    // seconds waits again and probes at 6 s: the last attempt.
    let offsets: Vec<_> = calls.lock().unwrap().iter().map(|t| *t - t0).collect();
    assert_eq!(offsets, [0, 2, 6].map(Duration::from_secs));
    assert_eq!(tokio::time::Instant::now() - t0, Duration::from_secs(6));
    assert_eq!(retry.stats().retries, 2);
    assert_eq!(retry.stats().give_ups_for(GiveUp::Attempts), 1);
    let stats = cooldown.stats();
    assert_eq!((stats.cooldowns_started, stats.waited), (3, 2));
    assert_eq!(
        cooldown.cooling_until(HOST),
        Some(t0 + Duration::from_secs(6 + 8)),
        "n = 3: 2 s doubled twice"
    );
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(verdict_of(&res), Verdict::rate_limited(None));
    assert_eq!(res.headers()[header::CONTENT_TYPE], "application/json");
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, GLM_1302.as_bytes(), "the caller gets every byte");

    // Control: GLM 429 1113 (arrears).
    let (svc, calls, retry, cooldown) = stack(GLM_1113);
    let t0 = tokio::time::Instant::now();
    let res = svc.oneshot(glm_request()).await.unwrap();
    assert_eq!(calls.lock().unwrap().len(), 1, "not retried");
    assert_eq!(tokio::time::Instant::now(), t0);
    assert_eq!(retry.stats().retries, 0);
    assert_eq!(cooldown.cooling_until(HOST), None, "not cooled");
    assert_eq!(cooldown.stats().cooldowns_started, 0);
    assert_eq!(verdict_of(&res), Verdict::Failure);
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, GLM_1113.as_bytes());
}
