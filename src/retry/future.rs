//! The response future of [`Retry`](super::Retry): tower's retry future under the
//! call's total deadline.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::time::{sleep_until, Instant, Sleep};

use super::error::DeadlineExceeded;
use super::stats::{Counters, GiveUp};
use crate::BoxError;

pin_project! {
    #[project = StateProj]
    enum State<F> {
        // tower's retry future: an attempt, a wait between attempts, or a readiness wait.
        Running {
            #[pin]
            inner: F,
        },
        // The deadline passed; the call in flight was dropped.
        Expired,
    }
}

pin_project! {
    /// The future of [`Retry`](super::Retry): the whole call (every attempt, the waits
    /// between them and the readiness waits before them), cut off at the call's total
    /// [`deadline`](super::RetryBuilder::deadline) when one is configured.
    ///
    /// At the deadline the call in flight is dropped at once and the future resolves
    /// to a [`DeadlineExceeded`] error.
    pub struct ResponseFuture<F> {
        #[pin]
        state: State<F>,
        // Made only once the call has to wait: a call answered in its first poll
        // never touches the timer wheel.
        #[pin]
        timer: Option<Sleep>,
        end: Option<Instant>,
        deadline: Duration,
        stats: Counters,
        // The call's span, entered on every poll.
        span: tracing::Span,
    }
}

impl<F> ResponseFuture<F> {
    pub(crate) fn new(
        inner: F,
        end: Option<Instant>,
        deadline: Duration,
        stats: Counters,
        span: tracing::Span,
    ) -> Self {
        ResponseFuture {
            state: State::Running { inner },
            timer: None,
            end,
            deadline,
            stats,
            span,
        }
    }
}

impl<F> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("expired", &matches!(self.state, State::Expired))
            .field("deadline", &self.end.map(|_| self.deadline))
            .finish()
    }
}

impl<F, T> Future for ResponseFuture<F>
where
    F: Future<Output = Result<T, BoxError>>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let _entered = this.span.enter();
        let StateProj::Running { inner } = this.state.as_mut().project() else {
            return Poll::Ready(Err(DeadlineExceeded::new(*this.deadline).into()));
        };
        // A result that is ready at the deadline instant wins over the deadline.
        if let Poll::Ready(result) = inner.poll(cx) {
            return Poll::Ready(result);
        }
        if this.timer.is_none() {
            match *this.end {
                Some(end) => this.timer.set(Some(sleep_until(end))),
                None => return Poll::Pending,
            }
        }
        let Some(timer) = this.timer.as_pin_mut() else {
            return Poll::Pending;
        };
        ready!(timer.poll(cx));
        // Drop the attempt or wait in flight now, not when the caller drops this future.
        this.state.set(State::Expired);
        this.stats.record_give_up(GiveUp::Deadline);
        tracing::info!(
            reason = GiveUp::Deadline.as_str(),
            deadline = ?this.deadline,
            "retry: the call's total deadline passed, dropping the attempt in flight",
        );
        Poll::Ready(Err(DeadlineExceeded::new(*this.deadline).into()))
    }
}
