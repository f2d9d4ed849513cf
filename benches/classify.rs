//! Group `classify`: what `ClassifyLayer::new(Preset::default())` costs.
//!
//! - `200`: a success is judged from its status alone and its body passed through
//!   unbuffered; the caller reads the body.
//! - `429_glm_*`: GLM's rate-limit answer (`{"error":{"code":"1302",...}}`, padded with
//!   JSON whitespace to the size named) is peeked (up to the 64 KiB cap), classified
//!   and replayed; the caller reads the whole body. The baseline is the same response
//!   read with `BodyExt::collect` and no layer, so the difference is the cost of
//!   peeking, classifying and replaying. `64KiB_16_frames` sends the same 64 KiB as 16
//!   frames of 4 KiB, as a streaming upstream would.
//!
//! Every variant checks, once and outside the timing, that the verdict is the expected
//! one; the timed loop checks that every byte reached the caller.

use std::{
    collections::VecDeque,
    convert::Infallible,
    pin::Pin,
    task::{Context, Poll},
};

use bytes::Bytes;
use criterion::Criterion;
use http::{Request, Response, StatusCode};
use http_body::{Body as HttpBody, Frame};
use http_body_util::BodyExt;
use ratewise::{classify::Preset, verdict_of, ClassifyLayer, Verdict};
use tower::{Service, ServiceBuilder, ServiceExt};

use crate::{calls_and_collect, configure, ok_upstream, request, response, runtime, Body};

/// GLM's rate-limit body, padded with whitespace before the final `}` to `len` bytes
/// (still valid JSON).
fn glm_body(len: usize) -> Bytes {
    let head =
        "{\"error\":{\"code\":\"1302\",\"message\":\"您的账户已达到速率限制,请您控制请求频率\"}";
    assert!(len > head.len(), "{len} is too short for GLM's body");
    let mut body = String::with_capacity(len);
    body.push_str(head);
    body.extend(std::iter::repeat_n(' ', len - head.len() - 1));
    body.push('}');
    assert_eq!(body.len(), len);
    Bytes::from(body)
}

/// A body that yields its chunks one frame each.
struct Chunks(VecDeque<Bytes>);

impl HttpBody for Chunks {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.get_mut().0.pop_front().map(|c| Ok(Frame::data(c))))
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_empty()
    }
}

fn glm_429(
    body: Bytes,
) -> impl Service<Request<Body>, Response = Response<Body>, Error = Infallible, Future = impl Send> + Clone
{
    tower::service_fn(move |_req: Request<Body>| {
        let res = response(StatusCode::TOO_MANY_REQUESTS, body.clone());
        async move { Ok::<_, Infallible>(res) }
    })
}

fn glm_429_chunked(
    body: Bytes,
    frame: usize,
) -> impl Service<Request<Body>, Response = Response<Chunks>, Error = Infallible, Future = impl Send>
       + Clone {
    tower::service_fn(move |_req: Request<Body>| {
        let chunks = (0..body.len())
            .step_by(frame)
            .map(|at| body.slice(at..(at + frame).min(body.len())))
            .collect();
        let mut res = Response::new(Chunks(chunks));
        *res.status_mut() = StatusCode::TOO_MANY_REQUESTS;
        async move { Ok::<_, Infallible>(res) }
    })
}

/// One call through `svc`, outside any timing: the verdict and the body length.
fn check<S, RB>(rt: &tokio::runtime::Runtime, svc: S) -> (Verdict, usize)
where
    S: Service<Request<Body>, Response = Response<RB>>,
    S::Error: std::fmt::Debug,
    RB: HttpBody,
    RB::Error: std::fmt::Debug,
{
    rt.block_on(async {
        let res = svc.oneshot(request()).await.expect("call");
        let verdict = verdict_of(&res);
        let len = res
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes()
            .len();
        (verdict, len)
    })
}

pub(crate) fn bench(c: &mut Criterion) {
    let rt = runtime();
    let layer = ClassifyLayer::new(Preset::default());
    let mut group = c.benchmark_group("classify");
    configure(&mut group);

    // A 200: classified from the status, never buffered.
    let ok_len = 11; // {"ok":true}
    assert_eq!(
        check(
            &rt,
            ServiceBuilder::new()
                .layer(layer.clone())
                .service(ok_upstream())
        ),
        (Verdict::Success, ok_len)
    );
    group.bench_function("200/baseline_no_layer", |b| {
        calls_and_collect(b, &rt, ok_upstream, request, ok_len)
    });
    group.bench_function("200/ratewise_classify_default", |b| {
        calls_and_collect(
            b,
            &rt,
            || {
                ServiceBuilder::new()
                    .layer(layer.clone())
                    .service(ok_upstream())
            },
            request,
            ok_len,
        )
    });

    // GLM's 429, one frame.
    for (name, len) in [("100B", 100), ("64KiB", 64 * 1024)] {
        let body = glm_body(len);
        let (verdict, got) = check(
            &rt,
            ServiceBuilder::new()
                .layer(layer.clone())
                .service(glm_429(body.clone())),
        );
        assert!(verdict.is_rate_limited(), "{name}: {verdict:?}");
        assert_eq!(got, len);
        group.bench_function(format!("429_glm_{name}/baseline_collect"), |b| {
            calls_and_collect(b, &rt, || glm_429(body.clone()), request, len)
        });
        group.bench_function(format!("429_glm_{name}/ratewise_classify_default"), |b| {
            calls_and_collect(
                b,
                &rt,
                || {
                    ServiceBuilder::new()
                        .layer(layer.clone())
                        .service(glm_429(body.clone()))
                },
                request,
                len,
            )
        });
    }

    // GLM's 429, 64 KiB in 16 frames of 4 KiB.
    let len = 64 * 1024;
    let body = glm_body(len);
    let (verdict, got) = check(
        &rt,
        ServiceBuilder::new()
            .layer(layer.clone())
            .service(glm_429_chunked(body.clone(), 4096)),
    );
    assert!(verdict.is_rate_limited(), "chunked: {verdict:?}");
    assert_eq!(got, len);
    group.bench_function("429_glm_64KiB_16_frames/baseline_collect", |b| {
        calls_and_collect(b, &rt, || glm_429_chunked(body.clone(), 4096), request, len)
    });
    group.bench_function("429_glm_64KiB_16_frames/ratewise_classify_default", |b| {
        calls_and_collect(
            b,
            &rt,
            || {
                ServiceBuilder::new()
                    .layer(layer.clone())
                    .service(glm_429_chunked(body.clone(), 4096))
            },
            request,
            len,
        )
    });

    group.finish();
}
