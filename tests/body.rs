//! Body identity through `ClassifyLayer`: whatever the chunking, the caller receives
//! exactly the bytes, trailers and errors the upstream sent, and the classifier sees
//! exactly the first `cap` bytes.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::fmt;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use proptest::prelude::*;
use ratewise::body::PeekBody;
use ratewise::classify::{ClassifyLayer, ResponseView};

/// The layer's default body cap (64 KiB).
const DEFAULT_BODY_CAP: usize = 64 * 1024;
use ratewise::{verdict_of, Classifier, Verdict};
use tower::{service_fn, ServiceBuilder, ServiceExt};

/// The error a scripted body fails with.
#[derive(Debug, Clone, PartialEq, Eq)]
struct BodyError(&'static str);

impl fmt::Display for BodyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "body error: {}", self.0)
    }
}

impl std::error::Error for BodyError {}

enum Step {
    /// Return `Pending` once (and wake at once), as a socket that has nothing yet.
    Pending,
    Frame(Result<Frame<Bytes>, BodyError>),
}

/// A body that plays a script of frames, errors and `Pending`s.
struct Scripted {
    steps: VecDeque<Step>,
    /// Data bytes still to come, reported as an exact size hint when `Some`.
    remaining: Option<u64>,
    /// Whether `is_end_stream` tells the truth once the script is played out.
    knows_end: bool,
}

impl Scripted {
    fn new(steps: Vec<Step>) -> Self {
        Scripted {
            steps: steps.into(),
            remaining: None,
            knows_end: false,
        }
    }
}

impl Body for Scripted {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.steps.pop_front() {
            None => Poll::Ready(None),
            Some(Step::Pending) => {
                cx.waker().wake_by_ref();
                Poll::Pending
            }
            Some(Step::Frame(frame)) => {
                if let (Ok(frame), Some(remaining)) = (&frame, self.remaining.as_mut()) {
                    if let Some(data) = frame.data_ref() {
                        *remaining -= data.len() as u64;
                    }
                }
                Poll::Ready(Some(frame))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.knows_end && self.steps.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        match self.remaining {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}

/// Wants every body; says rate-limited when the prefix it sees contains `LIMIT`, and
/// records every prefix it was shown.
#[derive(Clone, Default)]
struct Marker {
    seen: Arc<Mutex<Vec<Option<Vec<u8>>>>>,
}

const MARK: &[u8] = b"LIMIT";

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

impl Classifier for Marker {
    fn wants_body(&self, _: StatusCode, _: &HeaderMap) -> bool {
        true
    }

    fn classify(&self, view: &ResponseView<'_>) -> Option<Verdict> {
        self.seen
            .lock()
            .unwrap()
            .push(view.body().map(<[u8]>::to_vec));
        contains(view.body()?, MARK).then(|| Verdict::rate_limited(None))
    }
}

fn trailers() -> HeaderMap {
    let mut t = HeaderMap::new();
    t.insert("x-upstream-checksum", "deadbeef".parse().unwrap());
    t.insert("grpc-status", "0".parse().unwrap());
    t
}

/// Splits `body` into data frames of the given sizes (cycled; 0 makes an empty frame),
/// each optionally preceded by a `Pending`, then appends trailers when asked.
fn script(body: &[u8], sizes: &[usize], pendings: &[bool], with_trailers: bool) -> Vec<Step> {
    let mut steps = Vec::new();
    let mut at = 0;
    let mut i = 0;
    while at < body.len() {
        let size = sizes[i % sizes.len()].min(body.len() - at);
        if pendings[i % pendings.len()] {
            steps.push(Step::Pending);
        }
        steps.push(Step::Frame(Ok(Frame::data(Bytes::copy_from_slice(
            &body[at..at + size],
        )))));
        at += size;
        i += 1;
        if i > 100_000 {
            // Only empty frames would get here: sizes are all 0; finish in one frame.
            steps.push(Step::Frame(Ok(Frame::data(Bytes::copy_from_slice(
                &body[at..],
            )))));
            break;
        }
    }
    if with_trailers {
        steps.push(Step::Frame(Ok(Frame::trailers(trailers()))));
    }
    steps
}

/// What one request through the layer produced.
struct Outcome {
    verdict: Verdict,
    seen: Vec<Option<Vec<u8>>>,
    hint: SizeHint,
    bytes: Bytes,
    trailers: Option<HeaderMap>,
}

struct Case {
    body: Vec<u8>,
    sizes: Vec<usize>,
    pendings: Vec<bool>,
    with_trailers: bool,
    exact_hint: bool,
    knows_end: bool,
}

impl fmt::Debug for Case {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Case");
        d.field("len", &self.body.len());
        if self.body.len() <= 4 * SMALL_CAP {
            d.field("body", &Bytes::copy_from_slice(&self.body));
        } else {
            let marks: Vec<usize> = (0..self.body.len().saturating_sub(MARK.len() - 1))
                .filter(|&i| self.body[i..].starts_with(MARK))
                .collect();
            d.field("marks_at", &marks);
        }
        d.field("sizes", &self.sizes)
            .field("pendings", &self.pendings)
            .field("with_trailers", &self.with_trailers)
            .field("exact_hint", &self.exact_hint)
            .field("knows_end", &self.knows_end)
            .finish()
    }
}

async fn run(case: &Case, cap: usize) -> Outcome {
    let mut upstream_body = Scripted::new(script(
        &case.body,
        &case.sizes,
        &case.pendings,
        case.with_trailers,
    ));
    upstream_body.knows_end = case.knows_end;
    if case.exact_hint {
        upstream_body.remaining = Some(case.body.len() as u64);
    }
    let upstream_body = Mutex::new(Some(upstream_body));
    let classifier = Marker::default();
    let svc = ServiceBuilder::new()
        .layer(ClassifyLayer::new(classifier.clone()).body_cap(cap))
        .service(service_fn(move |_req: Request<()>| {
            let body = upstream_body.lock().unwrap().take().expect("one call");
            async move {
                Ok::<_, Infallible>(
                    Response::builder()
                        .status(StatusCode::BAD_REQUEST)
                        .body(body)
                        .unwrap(),
                )
            }
        }));
    let res = svc.oneshot(Request::new(())).await.unwrap();
    let verdict = verdict_of(&res);
    let body: PeekBody<Scripted> = res.into_body();
    let hint = body.size_hint();
    let collected = body.collect().await.expect("no error in this script");
    let seen = classifier.seen.lock().unwrap().clone();
    Outcome {
        verdict,
        seen,
        hint,
        trailers: collected.trailers().cloned(),
        bytes: collected.to_bytes(),
    }
}

fn check(case: &Case, cap: usize, out: &Outcome) -> Result<(), TestCaseError> {
    let len = case.body.len();
    let prefix = &case.body[..cap.min(len)];
    prop_assert_eq!(out.bytes.len(), len, "caller got a different length");
    prop_assert!(out.bytes[..] == case.body[..], "caller got different bytes");
    prop_assert_eq!(
        out.trailers.clone(),
        case.with_trailers.then(trailers),
        "trailers"
    );
    prop_assert_eq!(out.seen.len(), 1, "classified exactly once");
    prop_assert_eq!(
        out.seen[0].as_deref(),
        Some(prefix),
        "classifier saw exactly the first min(cap, len) bytes"
    );
    let expected = if contains(prefix, MARK) {
        Verdict::rate_limited(None)
    } else {
        Verdict::from_status(StatusCode::BAD_REQUEST)
    };
    prop_assert_eq!(out.verdict, expected);
    if case.exact_hint {
        prop_assert_eq!(out.hint.exact(), Some(len as u64), "size hint kept exact");
    } else {
        prop_assert!(out.hint.upper().is_none() || out.hint.upper() >= Some(len as u64));
    }
    Ok(())
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
}

const SMALL_CAP: usize = 64;

fn small_case() -> impl Strategy<Value = Case> {
    (
        prop::collection::vec(any::<u8>(), 0..=4 * SMALL_CAP),
        prop::option::of(0..4 * SMALL_CAP),
        prop::collection::vec(0usize..=80, 1..=24),
        prop::collection::vec(any::<bool>(), 1..=8),
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(
            |(mut body, mark_at, sizes, pendings, with_trailers, exact_hint, knows_end)| {
                if let Some(at) = mark_at {
                    if at + MARK.len() <= body.len() {
                        body[at..at + MARK.len()].copy_from_slice(MARK);
                    }
                }
                Case {
                    body,
                    sizes,
                    pendings,
                    with_trailers,
                    exact_hint,
                    knows_end,
                }
            },
        )
}

/// Up to 4x the default cap, generated from a seed (cheap to shrink).
fn default_cap_case() -> impl Strategy<Value = Case> {
    (
        0..=4 * DEFAULT_BODY_CAP,
        any::<u32>(),
        prop::option::of(0..4 * DEFAULT_BODY_CAP),
        prop::collection::vec(0usize..=40_000, 1..=12),
        prop::collection::vec(any::<bool>(), 1..=4),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(
            |(len, seed, mark_at, sizes, pendings, with_trailers, exact_hint)| {
                let mut x = seed | 1;
                let mut body: Vec<u8> = (0..len)
                    .map(|_| {
                        // xorshift32
                        x ^= x << 13;
                        x ^= x >> 17;
                        x ^= x << 5;
                        x as u8
                    })
                    .collect();
                if let Some(at) = mark_at {
                    if at + MARK.len() <= body.len() {
                        body[at..at + MARK.len()].copy_from_slice(MARK);
                    }
                }
                Case {
                    body,
                    sizes,
                    pendings,
                    with_trailers,
                    exact_hint,
                    knows_end: true,
                }
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Small cap (64 B), bodies 0..=256 B in random chunkings with random `Pending`s.
    #[test]
    fn body_identity_through_classify_layer_small_cap(case in small_case()) {
        let out = rt().block_on(run(&case, SMALL_CAP));
        check(&case, SMALL_CAP, &out)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// The default cap (64 KiB), bodies up to 256 KiB.
    #[test]
    fn body_identity_through_classify_layer_default_cap(case in default_cap_case()) {
        let out = rt().block_on(run(&case, DEFAULT_BODY_CAP));
        check(&case, DEFAULT_BODY_CAP, &out)?;
    }
}

/// A body in one frame exactly at the cap, and one byte past it, both edge cases of
/// "stop at the cap".
#[tokio::test]
async fn bodies_at_and_just_over_the_cap_are_whole() {
    for len in [SMALL_CAP - 1, SMALL_CAP, SMALL_CAP + 1] {
        let body: Vec<u8> = (0..len as u8).collect();
        for sizes in [vec![len], vec![1], vec![SMALL_CAP - 1, 2]] {
            let case = Case {
                body: body.clone(),
                sizes,
                pendings: vec![false],
                with_trailers: true,
                exact_hint: true,
                knows_end: true,
            };
            let out = run(&case, SMALL_CAP).await;
            check(&case, SMALL_CAP, &out).unwrap();
        }
    }
}

/// Reads the body frame by frame until it fails; returns the data before the error
/// and the error itself (of the upstream body's own type).
async fn read_until_error<B>(mut body: B) -> (Vec<u8>, B::Error)
where
    B: Body<Data = Bytes> + Unpin,
{
    let mut got = Vec::new();
    loop {
        match body.frame().await {
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    got.extend_from_slice(&data);
                }
            }
            Some(Err(err)) => return (got, err),
            None => panic!("the body ended without delivering its error"),
        }
    }
}

fn failing_body() -> Scripted {
    Scripted::new(vec![
        Step::Frame(Ok(Frame::data(Bytes::from_static(b"{\"par")))),
        Step::Pending,
        Step::Frame(Ok(Frame::data(Bytes::from_static(b"tial\":")))),
        Step::Frame(Err(BodyError("connection reset"))),
    ])
}

/// An error that happens while the layer peeks reaches the caller after the bytes read
/// before it, as the upstream's own error type, not swallowed or replaced.
#[tokio::test]
async fn error_mid_body_reaches_the_caller_after_the_bytes_before_it() {
    // cap 64: the error happens while peeking; cap 4: after peeking stopped;
    // `None`: the classifier does not want the body (pass-through).
    for cap in [Some(64), Some(4), None] {
        let classifier = Marker::default();
        let wants = cap.is_some();
        let classifier_seen = classifier.seen.clone();
        let classifier = PickyMarker {
            inner: classifier,
            wants,
        };
        let body = Mutex::new(Some(failing_body()));
        let svc = ServiceBuilder::new()
            .layer(ClassifyLayer::new(classifier).body_cap(cap.unwrap_or(64)))
            .service(service_fn(move |_req: Request<()>| {
                let body = body.lock().unwrap().take().expect("one call");
                async move { Ok::<_, Infallible>(Response::new(body)) }
            }));
        let res = svc.oneshot(Request::new(())).await.unwrap();
        assert_eq!(verdict_of(&res), Verdict::Success, "cap {cap:?}");
        let (data, err): (Vec<u8>, BodyError) = read_until_error(res.into_body()).await;
        assert_eq!(data, b"{\"partial\":", "cap {cap:?}");
        assert_eq!(err, BodyError("connection reset"), "cap {cap:?}");

        let seen = classifier_seen.lock().unwrap().clone();
        let expected: Option<&[u8]> = match cap {
            Some(64) => Some(b"{\"partial\":"),
            Some(4) => Some(b"{\"pa"),
            _ => None,
        };
        assert_eq!(seen, vec![expected.map(<[u8]>::to_vec)], "cap {cap:?}");
    }
}

/// `Marker`, wanting the body only when told to.
struct PickyMarker {
    inner: Marker,
    wants: bool,
}

impl Classifier for PickyMarker {
    fn wants_body(&self, _: StatusCode, _: &HeaderMap) -> bool {
        self.wants
    }

    fn classify(&self, view: &ResponseView<'_>) -> Option<Verdict> {
        self.inner.classify(view)
    }
}
