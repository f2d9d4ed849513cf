//! The body handed back to the caller.

use std::collections::VecDeque;
use std::fmt;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use super::frame_to_bytes;

pin_project! {
    /// A response body that is byte for byte what the upstream sent.
    ///
    /// Either a zero-cost pass-through of the inner body `B` (made by
    /// [`PeekBody::new`]; no buffering, no boxing, frames forwarded as they arrive),
    /// or a replay made by `Peeked::into_body`: the frames
    /// already read while peeking, then the error met while peeking (if any), then the
    /// rest of the inner body and its trailers.
    ///
    /// Data frames are converted to [`Bytes`] (zero-copy when `B::Data` already is
    /// `Bytes`); the error type is `B`'s, unchanged.
    pub struct PeekBody<B>
    where
        B: Body,
    {
        #[pin]
        kind: Kind<B>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<B>
    where
        B: Body,
    {
        Pass {
            #[pin]
            inner: B,
        },
        Replay {
            replay: Replay<B>,
        },
    }
}

/// What a replaying body still has to yield, in order.
pub(super) struct Replay<B: Body> {
    /// Frames read while peeking, not yet yielded.
    pub(super) frames: VecDeque<Frame<Bytes>>,
    /// Data bytes in `frames`.
    pub(super) queued: u64,
    /// The error met while peeking, yielded after `frames`.
    pub(super) error: Option<B::Error>,
    /// The rest of the inner body; `None` once it ended (or errored while peeking).
    pub(super) rest: Option<Pin<Box<B>>>,
}

impl<B: Body> PeekBody<B> {
    /// A pass-through of `inner`: nothing is buffered or boxed.
    pub fn new(inner: B) -> Self {
        PeekBody {
            kind: Kind::Pass { inner },
        }
    }

    /// A body that yields `data` (when not empty), then `trailers` (when some), then
    /// ends. Lets a layer that answers from memory (a cache) return the same body type
    /// as one that forwards the upstream's.
    pub fn full(data: Bytes, trailers: Option<HeaderMap>) -> Self {
        let queued = data.len() as u64;
        let mut frames = VecDeque::with_capacity(2);
        if !data.is_empty() {
            frames.push_back(Frame::data(data));
        }
        if let Some(trailers) = trailers {
            frames.push_back(Frame::trailers(trailers));
        }
        PeekBody::replay(Replay {
            frames,
            queued,
            error: None,
            rest: None,
        })
    }

    pub(super) fn replay(replay: Replay<B>) -> Self {
        PeekBody {
            kind: Kind::Replay { replay },
        }
    }

    /// Whether this body forwards the inner body directly, with nothing buffered.
    pub fn is_pass_through(&self) -> bool {
        matches!(self.kind, Kind::Pass { .. })
    }
}

impl<B: Body> Replay<B> {
    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        if let Some(frame) = self.frames.pop_front() {
            if let Some(data) = frame.data_ref() {
                self.queued = self.queued.saturating_sub(data.len() as u64);
            }
            return Poll::Ready(Some(Ok(frame)));
        }
        if let Some(err) = self.error.take() {
            return Poll::Ready(Some(Err(err)));
        }
        let Some(rest) = self.rest.as_mut() else {
            return Poll::Ready(None);
        };
        match ready!(rest.as_mut().poll_frame(cx)) {
            Some(frame) => Poll::Ready(Some(frame.map(frame_to_bytes))),
            None => {
                self.rest = None;
                Poll::Ready(None)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.frames.is_empty()
            && self.error.is_none()
            && self.rest.as_ref().is_none_or(|rest| rest.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        let Some(rest) = self.rest.as_ref() else {
            return SizeHint::with_exact(self.queued);
        };
        let rest = rest.size_hint();
        let mut hint = SizeHint::new();
        match rest
            .upper()
            .and_then(|upper| upper.checked_add(self.queued))
        {
            Some(upper) => {
                hint.set_upper(upper);
                hint.set_lower(rest.lower().saturating_add(self.queued).min(upper));
            }
            None => hint.set_lower(rest.lower().saturating_add(self.queued)),
        }
        hint
    }
}

impl<B: Body> Body for PeekBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        match self.project().kind.project() {
            KindProj::Pass { inner } => inner
                .poll_frame(cx)
                .map(|frame| frame.map(|frame| frame.map(frame_to_bytes))),
            KindProj::Replay { replay } => replay.poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Pass { inner } => inner.is_end_stream(),
            Kind::Replay { replay } => replay.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Pass { inner } => inner.size_hint(),
            Kind::Replay { replay } => replay.size_hint(),
        }
    }
}

impl<B: Body> fmt::Debug for PeekBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Kind::Pass { .. } => f
                .debug_struct("PeekBody")
                .field("mode", &"pass-through")
                .finish(),
            Kind::Replay { replay } => f
                .debug_struct("PeekBody")
                .field("mode", &"replay")
                .field("queued_frames", &replay.frames.len())
                .field("queued_bytes", &replay.queued)
                .field("error_pending", &replay.error.is_some())
                .field("rest", &replay.rest.is_some())
                .finish(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Empty, Full};

    #[tokio::test]
    async fn pass_through_forwards_hints_and_frames() {
        let body = PeekBody::new(Full::new(Bytes::from_static(b"hello")));
        assert!(body.is_pass_through());
        assert_eq!(body.size_hint().exact(), Some(5));
        assert!(!body.is_end_stream());
        let mut body = body;
        let frame = body.frame().await.unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), Bytes::from_static(b"hello"));
        assert!(body.is_end_stream());
        assert!(body.frame().await.is_none());

        let empty = PeekBody::new(Empty::<Bytes>::new());
        assert!(empty.is_end_stream());
        assert_eq!(empty.size_hint().exact(), Some(0));
    }

    #[tokio::test]
    async fn full_yields_data_then_trailers_then_ends() {
        let mut trailers = HeaderMap::new();
        trailers.insert("x-checksum", "abc".parse().unwrap());
        let mut body =
            PeekBody::<Empty<Bytes>>::full(Bytes::from_static(b"cached"), Some(trailers.clone()));
        assert!(!body.is_pass_through());
        assert_eq!(body.size_hint().exact(), Some(6));
        assert!(!body.is_end_stream());
        let data = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(&data[..], b"cached");
        assert_eq!(body.size_hint().exact(), Some(0));
        assert!(!body.is_end_stream(), "trailers still to come");
        let got = body
            .frame()
            .await
            .unwrap()
            .unwrap()
            .into_trailers()
            .unwrap();
        assert_eq!(got, trailers);
        assert!(body.is_end_stream());
        assert!(body.frame().await.is_none());

        let empty = PeekBody::<Empty<Bytes>>::full(Bytes::new(), None);
        assert!(empty.is_end_stream());
        assert_eq!(empty.size_hint().exact(), Some(0));
    }

    #[test]
    fn replay_size_hint_adds_the_rest() {
        let replay = Replay {
            frames: VecDeque::from([Frame::data(Bytes::from_static(b"abcd"))]),
            queued: 4,
            error: None,
            rest: Some(Box::pin(Full::new(Bytes::from_static(b"efg")))),
        };
        let body = PeekBody::replay(replay);
        assert_eq!(body.size_hint().exact(), Some(7));

        // A rest of unknown length: lower bound only.
        let replay = Replay {
            frames: VecDeque::from([Frame::data(Bytes::from_static(b"abcd"))]),
            queued: 4,
            error: None,
            rest: Some(Box::pin(Unknown)),
        };
        let body = PeekBody::replay(replay);
        assert_eq!(body.size_hint().lower(), 4);
        assert_eq!(body.size_hint().upper(), None);
    }

    /// A body of unknown length that never yields.
    struct Unknown;

    impl Body for Unknown {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            Poll::Pending
        }
    }
}
