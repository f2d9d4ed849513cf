use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use http::response::Parts;
use http::Response;
use http_body::Body;
use pin_project_lite::pin_project;

use super::{Classifier, ResponseView, Verdict};
use crate::body::{peek, Peek, PeekBody};

pin_project! {
    /// The response future of [`Classify`](super::Classify).
    ///
    /// Waits for the inner response, then either answers at once (verdict already
    /// present, or judged from status and headers) or first peeks the body prefix the
    /// classifier asked for.
    pub struct ResponseFuture<F, C, B>
    where
        B: Body,
    {
        #[pin]
        state: State<F, B>,
        classifier: Arc<C>,
        body_cap: usize,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, B>
    where
        B: Body,
    {
        Called {
            #[pin]
            fut: F,
        },
        Peeking {
            #[pin]
            peek: Peek<B>,
            parts: Option<Parts>,
        },
    }
}

impl<F, C, B: Body> ResponseFuture<F, C, B> {
    pub(crate) fn new(fut: F, classifier: Arc<C>, body_cap: usize) -> Self {
        ResponseFuture {
            state: State::Called { fut },
            classifier,
            body_cap,
        }
    }
}

impl<F, C, B, E> Future for ResponseFuture<F, C, B>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: Body,
    C: Classifier,
{
    type Output = Result<Response<PeekBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Called { fut } => {
                    let res = ready!(fut.poll(cx))?;
                    if res.extensions().get::<Verdict>().is_some() {
                        // An inner ClassifyLayer already judged this response.
                        return Poll::Ready(Ok(res.map(PeekBody::new)));
                    }
                    let (mut parts, body) = res.into_parts();
                    if !this.classifier.wants_body(parts.status, &parts.headers) {
                        let view = ResponseView::new(parts.status, &parts.headers);
                        let verdict = judge(&**this.classifier, &view);
                        parts.extensions.insert(verdict);
                        return Poll::Ready(Ok(Response::from_parts(parts, PeekBody::new(body))));
                    }
                    this.state.set(State::Peeking {
                        peek: peek(body, *this.body_cap),
                        parts: Some(parts),
                    });
                }
                StateProj::Peeking { peek, parts } => {
                    let peeked = ready!(peek.poll(cx));
                    let mut parts = parts
                        .take()
                        .expect("ResponseFuture polled after completion");
                    let view =
                        ResponseView::new(parts.status, &parts.headers).with_body(peeked.prefix());
                    let verdict = judge(&**this.classifier, &view);
                    parts.extensions.insert(verdict);
                    return Poll::Ready(Ok(Response::from_parts(parts, peeked.into_body())));
                }
            }
        }
    }
}

/// The classifier's verdict, or the status's when it has no opinion.
fn judge<C: Classifier + ?Sized>(classifier: &C, view: &ResponseView<'_>) -> Verdict {
    let verdict = classifier
        .classify(view)
        .unwrap_or_else(|| Verdict::from_status(view.status()));
    tracing::trace!(
        status = %view.status(),
        body_seen = view.body().map(<[u8]>::len),
        ?verdict,
        "classified response"
    );
    verdict
}

impl<F, C, B: Body> fmt::Debug for ResponseFuture<F, C, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Called { .. } => "awaiting response",
            State::Peeking { .. } => "peeking body",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .field("body_cap", &self.body_cap)
            .finish_non_exhaustive()
    }
}
