//! The answer's body, passed through as it arrives while its `usage` is read
//! ([`TokenBody`]), and the settlement of a call's reservation.

use std::{
    fmt,
    pin::Pin,
    sync::Arc,
    task::{ready, Context, Poll},
};

use bytes::{Buf, Bytes};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::time::Instant;

use super::{estimate::UsageScanner, layer::Shared, stats::Counters};
use crate::{rate_limit::Keys, rate_limit::RateLimitStore, redact::Redacted};

pin_project! {
    /// An answer's body, frame for frame as the upstream sends it, read on the way for
    /// its last `usage` object (a JSON answer's, or the last SSE chunk's). Nothing is
    /// buffered but that object. When the body ends, or is dropped, the call's
    /// reservation is settled.
    ///
    /// Data frames are converted to [`Bytes`] (zero-copy when they already are); the
    /// error type is `B`'s.
    pub struct TokenBody<B> {
        #[pin]
        inner: B,
        settlement: Settlement,
    }
}

impl<B> TokenBody<B> {
    pub(crate) fn new(inner: B, settlement: Settlement) -> Self {
        TokenBody { inner, settlement }
    }

    /// The inner body.
    pub fn get_ref(&self) -> &B {
        &self.inner
    }

    /// The tokens of the last `usage` read so far, if any.
    pub fn usage(&self) -> Option<u64> {
        self.settlement.scan.found()
    }
}

impl<B> Body for TokenBody<B>
where
    B: Body,
    B::Data: Buf,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let mut this = self.project();
        match ready!(this.inner.as_mut().poll_frame(cx)) {
            Some(Ok(frame)) => {
                let frame = frame.map_data(|mut data| data.copy_to_bytes(data.remaining()));
                if let Some(data) = frame.data_ref() {
                    this.settlement.scan.feed(data);
                }
                if this.inner.is_end_stream() {
                    this.settlement.finish();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Some(Err(err)) => Poll::Ready(Some(Err(err))),
            None => {
                this.settlement.finish();
                Poll::Ready(None)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B> fmt::Debug for TokenBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenBody")
            .field("usage", &self.usage())
            .finish_non_exhaustive()
    }
}

/// One call's reservation, until it is settled: at the end of the answer's body, or when
/// whatever holds it (the call's future, the body) is dropped.
pub(crate) struct Settlement {
    shared: Arc<Shared>,
    /// `None` once settled, or when the call's key could not be made.
    keys: Option<Keys>,
    reserved: u32,
    /// When the call was sent: the reservation's instant.
    sent: Instant,
    /// The cost to settle at when no usage is read.
    otherwise: u32,
    pub(super) scan: UsageScanner,
    done: bool,
}

impl Settlement {
    /// The reservation of a call of `reserved` tokens sent now under `keys`. Until told
    /// otherwise it keeps its reservation when no usage is read.
    pub(crate) fn new(shared: Arc<Shared>, keys: Option<Keys>, reserved: u32) -> Self {
        Counters::add(&shared.counters.reserved, u64::from(reserved));
        Settlement {
            shared,
            keys,
            reserved,
            sent: Instant::now(),
            otherwise: reserved,
            scan: UsageScanner::default(),
            done: false,
        }
    }

    /// Without a usage, the call costs nothing: its answer was an error, or it was never
    /// sent.
    pub(crate) fn free_without_usage(&mut self) {
        self.otherwise = 0;
    }

    /// Settles the reservation, once: to the usage read, else to what the answer implies.
    pub(crate) fn finish(&mut self) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        let counters = &self.shared.counters;
        let actual = match self.scan.found() {
            Some(tokens) => {
                Counters::add(&counters.reconciled, 1);
                Counters::add(&counters.used, tokens);
                u32::try_from(tokens).unwrap_or(u32::MAX)
            }
            None => {
                Counters::add(&counters.unreported, 1);
                self.otherwise
            }
        };
        let reserved = self.reserved;
        if actual == reserved {
            return;
        }
        if actual < reserved {
            Counters::add(&counters.refunded, u64::from(reserved - actual));
        } else {
            Counters::add(&counters.charged, u64::from(actual - reserved));
        }
        let Some(keys) = self.keys.take() else {
            return;
        };
        let age = self.sent.elapsed();
        let mut settle = self.shared.store.settle(&keys, reserved, actual, age);
        // In memory the settle is done at once; a shared store's round trip goes on in
        // a task of its own, so the body's end is never delayed by it.
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let shared = self.shared.clone();
        match settle.as_mut().poll(&mut cx) {
            Poll::Ready(result) => settled(&shared, result),
            Poll::Pending => match tokio::runtime::Handle::try_current() {
                Ok(runtime) => {
                    runtime.spawn(async move { settled(&shared, settle.await) });
                }
                Err(_) => settled(
                    &shared,
                    Err(crate::vocabulary::StoreError::new(
                        "no tokio runtime to finish the settlement on",
                    )),
                ),
            },
        }
    }
}

fn settled(shared: &Shared, result: Result<(), crate::vocabulary::StoreError>) {
    if let Err(err) = result {
        Counters::add(&shared.counters.settle_errors, 1);
        tracing::debug!(error = %Redacted(&err), "tokens: could not settle a reservation");
    }
}

impl Drop for Settlement {
    fn drop(&mut self) {
        self.finish();
    }
}

impl fmt::Debug for Settlement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Settlement")
            .field("reserved", &self.reserved)
            .field("usage", &self.scan.found())
            .finish_non_exhaustive()
    }
}
