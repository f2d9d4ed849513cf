use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use pin_project_lite::pin_project;

use crate::BoxError;

use super::shared::Tally;

pin_project! {
    /// The response future of [`FreshClient`](super::FreshClient): the client's
    /// response, or its error wrapped in a [`ClientError`](super::ClientError).
    ///
    /// On completion it tells the shared state how the client did: any response
    /// ends the run of connection-level errors, a connection-level error extends it.
    #[derive(Debug)]
    pub struct ResponseFuture<F> {
        #[pin]
        state: State<F>,
    }
}

pin_project! {
    #[project = StateProj]
    #[derive(Debug)]
    enum State<F> {
        Called {
            #[pin]
            fut: F,
            tally: Arc<Tally>,
            generation: u64,
        },
        Failed {
            error: Option<BoxError>,
        },
    }
}

impl<F> ResponseFuture<F> {
    pub(super) fn called(fut: F, tally: Arc<Tally>, generation: u64) -> Self {
        ResponseFuture {
            state: State::Called {
                fut,
                tally,
                generation,
            },
        }
    }

    pub(super) fn failed(error: BoxError) -> Self {
        ResponseFuture {
            state: State::Failed { error: Some(error) },
        }
    }
}

impl<F, T, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Called {
                fut,
                tally,
                generation,
            } => match ready!(fut.poll(cx)) {
                Ok(response) => {
                    tally.on_response(*generation);
                    Poll::Ready(Ok(response))
                }
                Err(err) => Poll::Ready(Err(tally.on_error(
                    *generation,
                    err.into(),
                    std::any::type_name::<E>(),
                ))),
            },
            StateProj::Failed { error } => Poll::Ready(Err(error
                .take()
                .expect("ResponseFuture polled after completion"))),
        }
    }
}
