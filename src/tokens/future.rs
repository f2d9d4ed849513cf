//! The futures: [`ResponseFuture`] (read and estimate the body, then wait for the tokens
//! and call) and `SettleResponse` (the answer, in a body that settles).

use std::{
    fmt,
    future::Future,
    mem,
    pin::Pin,
    sync::Arc,
    task::{ready, Context, Poll},
};

use bytes::{Buf, Bytes, BytesMut};
use http::{header, request::Parts, HeaderValue, Request, Response};
use http_body::Body;
use pin_project_lite::pin_project;
use serde_json::Value;
use tower::Service;

use super::{
    body::{Settlement, TokenBody},
    estimate::ask_usage,
    layer::{Reserve, Shared},
    service::Settle,
};
use crate::{
    rate_limit::{self, RateLimit, Wait},
    BoxError, Refusal,
};

pin_project! {
    /// Response future of [`TokenLimit`](super::TokenLimit): reads the request body,
    /// reserves its estimate (waiting for it), then sends the call.
    pub struct ResponseFuture<S, B>
    where
        S: Service<Request<B>>,
        Settle<S>: Service<Request<B>>,
    {
        #[pin]
        state: State<S, B>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, B>
    where
        S: Service<Request<B>>,
        Settle<S>: Service<Request<B>>,
    {
        // Reading the request body, to estimate it.
        Reading {
            #[pin]
            body: B,
            parts: Option<Parts>,
            // The body so far: its first chunk as it came, or every chunk copied.
            first: Option<Bytes>,
            rest: BytesMut,
            inner: Option<RateLimit<Settle<S>>>,
            shared: Arc<Shared>,
        },
        // Waiting for the tokens, then the answer.
        Called {
            #[pin]
            fut: rate_limit::ResponseFuture<Settle<S>, B, Wait>,
        },
    }
}

impl<S, B> ResponseFuture<S, B>
where
    S: Service<Request<B>>,
    Settle<S>: Service<Request<B>>,
{
    pub(super) fn new(
        request: Request<B>,
        inner: RateLimit<Settle<S>>,
        shared: Arc<Shared>,
    ) -> Self {
        let (parts, body) = request.into_parts();
        ResponseFuture {
            state: State::Reading {
                body,
                parts: Some(parts),
                first: None,
                rest: BytesMut::new(),
                inner: Some(inner),
                shared,
            },
        }
    }
}

impl<S, B, ResB> Future for ResponseFuture<S, B>
where
    S: Service<Request<B>, Response = Response<ResB>> + Clone,
    S::Error: Into<BoxError>,
    B: Body + From<Bytes>,
    B::Data: Buf,
    B::Error: Into<BoxError>,
{
    type Output = Result<Response<TokenBody<ResB>>, BoxError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            let this = self.as_mut().project();
            let request = match this.state.project() {
                StateProj::Called { fut } => return fut.poll(cx),
                StateProj::Reading {
                    mut body,
                    parts,
                    first,
                    rest,
                    inner,
                    shared,
                } => {
                    while let Some(frame) = ready!(body.as_mut().poll_frame(cx)) {
                        let Ok(mut data) = frame.map_err(Into::into)?.into_data() else {
                            continue; // request trailers are not forwarded
                        };
                        let chunk = data.copy_to_bytes(data.remaining());
                        match first {
                            None if rest.is_empty() => *first = Some(chunk),
                            _ => {
                                if let Some(first) = first.take() {
                                    rest.extend_from_slice(&first);
                                }
                                rest.extend_from_slice(&chunk);
                            }
                        }
                    }
                    let bytes = first.take().unwrap_or_else(|| mem::take(rest).freeze());
                    let Some(parts) = parts.take() else {
                        panic!("tokens ResponseFuture polled after completion");
                    };
                    let Some(inner) = inner.take() else {
                        panic!("tokens ResponseFuture polled after completion");
                    };
                    (prepare(parts, bytes, shared), inner)
                }
            };
            let (request, mut inner) = request;
            let fut = inner.call(request);
            self.as_mut().project().state.set(State::Called { fut });
        }
    }
}

/// The request to send: its estimate in its extensions for the rate limiter, and its
/// body asking for usage when the layer does so; otherwise the bytes as they came.
fn prepare<B: From<Bytes>>(mut parts: Parts, bytes: Bytes, shared: &Shared) -> Request<B> {
    let json: Option<Value> = serde_json::from_slice(&bytes).ok();
    parts
        .extensions
        .insert(Reserve(shared.estimate(json.as_ref())));
    let asked = match &json {
        Some(value) if shared.include_usage => ask_usage(&bytes, value),
        _ => None,
    };
    let bytes = match asked {
        Some(asked) => {
            if parts.headers.contains_key(header::CONTENT_LENGTH) {
                parts
                    .headers
                    .insert(header::CONTENT_LENGTH, HeaderValue::from(asked.len()));
            }
            asked
        }
        None => bytes,
    };
    Request::from_parts(parts, B::from(bytes))
}

impl<S, B> fmt::Debug for ResponseFuture<S, B>
where
    S: Service<Request<B>>,
    Settle<S>: Service<Request<B>>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

pin_project! {
    /// The answer of a call whose tokens are reserved, in a [`TokenBody`] that settles
    /// them. Public only because it appears in [`ResponseFuture`]'s type, in a private
    /// module: users never name it.
    #[allow(unreachable_pub)]
    pub struct SettleResponse<F> {
        #[pin]
        fut: F,
        settlement: Option<Settlement>,
    }
}

impl<F> SettleResponse<F> {
    pub(super) fn new(fut: F, settlement: Settlement) -> Self {
        SettleResponse {
            fut,
            settlement: Some(settlement),
        }
    }
}

impl<F, ResB, E> Future for SettleResponse<F>
where
    F: Future<Output = Result<Response<ResB>, E>>,
    E: Into<BoxError>,
{
    type Output = Result<Response<TokenBody<ResB>>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.fut.poll(cx));
        let Some(mut settlement) = this.settlement.take() else {
            panic!("tokens SettleResponse polled after completion");
        };
        Poll::Ready(match result {
            Ok(response) => {
                // An error answer (a 429 above all) without usage cost the upstream
                // nothing it counts.
                if !response.status().is_success() {
                    settlement.free_without_usage();
                }
                Ok(response.map(|body| TokenBody::new(body, settlement)))
            }
            Err(err) => {
                let err = err.into();
                // Held back by a layer below: nothing was sent.
                if Refusal::find(&*err).is_some_and(|r| !r.reached_upstream()) {
                    settlement.free_without_usage();
                }
                settlement.finish();
                Err(err)
            }
        })
    }
}

impl<F> fmt::Debug for SettleResponse<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SettleResponse")
            .field("settlement", &self.settlement)
            .finish_non_exhaustive()
    }
}
