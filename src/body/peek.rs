//! Reading the first bytes of a body.

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use http_body::{Body, Frame};
use pin_project_lite::pin_project;

use super::frame_to_bytes;
use super::peek_body::{PeekBody, Replay};

/// Reads `body` until at least `cap` bytes are buffered or it ends.
///
/// The returned future resolves to a [`Peeked`], which never loses anything: its
/// [`into_body`](Peeked::into_body) replays what was read, then the rest. A body error
/// met while peeking does not fail the future; it is kept and delivered by the replay
/// after the bytes read before it.
///
/// The body is boxed (this is the slow path), so `B` need not be `Unpin`. With
/// `cap == 0` nothing is read.
///
/// Peeking stops as soon as `cap` bytes are buffered, so a stream that pauses before
/// the cap is reached keeps the future pending until more arrives or the body ends:
/// only peek bodies you need to see.
pub(crate) fn peek<B: Body>(body: B, cap: usize) -> Peek<B> {
    Peek {
        state: Some(Reading {
            body: Box::pin(body),
            frames: VecDeque::new(),
            buffered: 0,
            cap,
        }),
    }
}

pin_project! {
    /// The future returned by [`peek`].
    pub(crate) struct Peek<B>
    where
        B: Body,
    {
        state: Option<Reading<B>>,
    }
}

struct Reading<B: Body> {
    body: Pin<Box<B>>,
    frames: VecDeque<Frame<Bytes>>,
    buffered: usize,
    cap: usize,
}

impl<B: Body> Future for Peek<B> {
    type Output = Peeked<B>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let reading = this.state.as_mut().expect("Peek polled after completion");
        let (ended, error) = loop {
            if reading.buffered >= reading.cap {
                break (reading.body.is_end_stream(), None);
            }
            match reading.body.as_mut().poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => break (true, None),
                Poll::Ready(Some(Err(err))) => break (false, Some(err)),
                Poll::Ready(Some(Ok(frame))) => {
                    let frame = frame_to_bytes(frame);
                    if let Some(data) = frame.data_ref() {
                        reading.buffered = reading.buffered.saturating_add(data.len());
                    }
                    reading.frames.push_back(frame);
                }
            }
        };
        let Reading {
            body,
            frames,
            buffered,
            cap,
        } = this.state.take().expect("Peek polled after completion");
        let prefix = prefix_of(&frames, buffered.min(cap));
        let rest = (!ended && error.is_none()).then_some(body);
        Poll::Ready(Peeked {
            frames,
            prefix,
            buffered,
            cap,
            ended,
            error,
            rest,
        })
    }
}

/// The first `want` data bytes of `frames`: a zero-copy slice when one frame holds
/// them all, else a copy (of at most `want` bytes).
fn prefix_of(frames: &VecDeque<Frame<Bytes>>, want: usize) -> Bytes {
    let mut data = frames
        .iter()
        .filter_map(Frame::data_ref)
        .filter(|d| !d.is_empty());
    let Some(first) = data.next() else {
        return Bytes::new();
    };
    if first.len() >= want {
        return first.slice(..want);
    }
    let mut prefix = BytesMut::with_capacity(want);
    prefix.extend_from_slice(first);
    for chunk in data {
        let take = (want - prefix.len()).min(chunk.len());
        prefix.extend_from_slice(&chunk[..take]);
        if prefix.len() == want {
            break;
        }
    }
    prefix.freeze()
}

impl<B: Body> fmt::Debug for Peek<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Peek");
        if let Some(reading) = &self.state {
            d.field("cap", &reading.cap)
                .field("buffered", &reading.buffered);
        }
        d.finish_non_exhaustive()
    }
}

/// A body whose first bytes have been read by [`peek`].
pub(crate) struct Peeked<B: Body> {
    /// Every frame read, in order (data and trailers).
    frames: VecDeque<Frame<Bytes>>,
    /// The first `min(cap, buffered)` data bytes.
    prefix: Bytes,
    /// Data bytes read.
    buffered: usize,
    cap: usize,
    /// The body reached its end (no more frames) without an error.
    ended: bool,
    /// The error that stopped the reading.
    error: Option<B::Error>,
    /// The unread rest of the body; `None` when it ended or errored.
    rest: Option<Pin<Box<B>>>,
}

impl<B: Body> Peeked<B> {
    /// The first data bytes of the body: `cap` bytes, or fewer when the body ended (or
    /// failed) before `cap`.
    pub(crate) fn prefix(&self) -> &[u8] {
        &self.prefix
    }

    /// How many data bytes were read. At least `cap` unless the body ended or failed
    /// first; it may exceed `cap` by part of the last frame read.
    #[cfg(test)]
    pub(crate) fn buffered_len(&self) -> usize {
        self.buffered
    }

    /// Whether the whole body was read within the cap: it ended without an error and
    /// holds at most `cap` data bytes.
    ///
    /// A body that reaches exactly `cap` bytes counts as complete only when it reports
    /// [`is_end_stream`](Body::is_end_stream) at that point (hyper's bodies with a
    /// `content-length` do); peeking never reads past the cap to find out.
    pub(crate) fn is_complete(&self) -> bool {
        self.ended && self.error.is_none() && self.buffered <= self.cap
    }

    /// The body error met while peeking, if any. It is still delivered by
    /// [`into_body`](Self::into_body), after the bytes read before it.
    #[cfg(test)]
    pub(crate) fn error(&self) -> Option<&B::Error> {
        self.error.as_ref()
    }

    /// The body to hand to the caller: the frames read, then the error met while
    /// peeking (if any), then the rest of the inner body and its trailers.
    pub(crate) fn into_body(self) -> PeekBody<B> {
        let queued = self
            .frames
            .iter()
            .filter_map(Frame::data_ref)
            .map(|d| d.len() as u64)
            .sum();
        PeekBody::replay(Replay {
            frames: self.frames,
            queued,
            error: self.error,
            rest: self.rest,
        })
    }

    /// The whole body and its trailers, when it [`is_complete`](Self::is_complete);
    /// otherwise `self` back, unchanged.
    ///
    /// The data is one contiguous [`Bytes`] (zero-copy when the body came in one
    /// frame). Several trailer frames are merged into one map.
    pub(crate) fn into_complete(self) -> Result<(Bytes, Option<HeaderMap>), Self> {
        if !self.is_complete() {
            return Err(self);
        }
        let mut data: Option<Bytes> = None;
        let mut joined: Option<BytesMut> = None;
        let mut trailers: Option<HeaderMap> = None;
        for frame in self.frames {
            match frame.into_data() {
                Ok(chunk) if chunk.is_empty() => {}
                Ok(chunk) => match (&mut joined, data.take()) {
                    (Some(buf), _) => buf.extend_from_slice(&chunk),
                    (None, None) => data = Some(chunk),
                    (None, Some(first)) => {
                        let mut buf = BytesMut::with_capacity(self.buffered);
                        buf.extend_from_slice(&first);
                        buf.extend_from_slice(&chunk);
                        joined = Some(buf);
                    }
                },
                Err(frame) => {
                    if let Ok(map) = frame.into_trailers() {
                        match &mut trailers {
                            Some(all) => all.extend(map),
                            None => trailers = Some(map),
                        }
                    }
                }
            }
        }
        let data = match joined {
            Some(buf) => buf.freeze(),
            None => data.unwrap_or_default(),
        };
        Ok((data, trailers))
    }
}

impl<B: Body> fmt::Debug for Peeked<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Peeked")
            .field("prefix_len", &self.prefix.len())
            .field("buffered", &self.buffered)
            .field("cap", &self.cap)
            .field("complete", &self.is_complete())
            .field("errored", &self.error.is_some())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full};

    /// (The body module's example, from when `peek` was public.)
    #[tokio::test]
    async fn a_peek_sees_a_prefix_and_the_caller_gets_every_byte() {
        let upstream = Full::new(Bytes::from_static(
            b"{\"error\":{\"code\":\"1302\"}} and more",
        ));

        // Look at the first 8 bytes...
        let peeked = peek(upstream, 8).await;
        assert_eq!(peeked.prefix(), b"{\"error\"");
        assert!(!peeked.is_complete()); // the body is longer than the cap

        // ...and the caller still gets all of it.
        let body: PeekBody<_> = peeked.into_body();
        let bytes = body.collect().await.unwrap().to_bytes();
        assert_eq!(&bytes[..], b"{\"error\":{\"code\":\"1302\"}} and more");

        // A small body fits in the cap: a cache can take it whole.
        let peeked = peek(Full::new(Bytes::from_static(b"ok")), 64).await;
        assert!(peeked.is_complete());
        let (data, trailers) = peeked.into_complete().ok().unwrap();
        assert_eq!(&data[..], b"ok");
        assert!(trailers.is_none());
    }

    /// (Moved from `tests/classify_layer.rs::future_and_body_are_send` when `peek`
    /// became private.)
    #[test]
    fn the_peek_future_and_its_result_are_send() {
        fn assert_send<T: Send>(_: &T) {}
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Peeked<hyper::body::Incoming>>();
        assert_send(&peek(Full::new(Bytes::new()), 1));
    }

    /// A body that yields the given frames, each after one `Pending`.
    struct Frames {
        frames: VecDeque<Result<Frame<Bytes>, &'static str>>,
        pending: bool,
        end_known: bool,
    }

    impl Frames {
        fn new(frames: Vec<Result<Frame<Bytes>, &'static str>>) -> Self {
            Frames {
                frames: frames.into(),
                pending: false,
                end_known: false,
            }
        }
    }

    impl Body for Frames {
        type Data = Bytes;
        type Error = &'static str;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            if !self.pending && !self.frames.is_empty() {
                self.pending = true;
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            self.pending = false;
            Poll::Ready(self.frames.pop_front())
        }

        fn is_end_stream(&self) -> bool {
            self.end_known && self.frames.is_empty()
        }
    }

    fn data(s: &'static [u8]) -> Result<Frame<Bytes>, &'static str> {
        Ok(Frame::data(Bytes::from_static(s)))
    }

    #[test]
    fn prefix_is_a_slice_of_one_frame_or_a_copy_across_frames() {
        let one: VecDeque<_> = [Frame::data(Bytes::from_static(b"abcdef"))].into();
        let p = prefix_of(&one, 4);
        assert_eq!(&p[..], b"abcd");
        assert_eq!(
            p.as_ptr(),
            one[0].data_ref().unwrap().as_ptr(),
            "zero-copy slice"
        );

        let many: VecDeque<_> = [
            Frame::data(Bytes::new()),
            Frame::data(Bytes::from_static(b"ab")),
            Frame::data(Bytes::from_static(b"cd")),
            Frame::data(Bytes::from_static(b"ef")),
        ]
        .into();
        assert_eq!(&prefix_of(&many, 5)[..], b"abcde");
        assert_eq!(&prefix_of(&many, 0)[..], b"");
        assert_eq!(&prefix_of(&VecDeque::new(), 3)[..], b"");
    }

    #[tokio::test]
    async fn stops_at_the_cap_and_replays_everything() {
        let body = Frames::new(vec![data(b"abc"), data(b"def"), data(b"ghi"), data(b"jkl")]);
        let peeked = peek(body, 5).await;
        assert_eq!(peeked.prefix(), b"abcde");
        assert_eq!(peeked.buffered_len(), 6, "read two frames, not more");
        assert!(!peeked.is_complete());
        assert!(peeked.error().is_none());
        let peeked = peeked.into_complete().unwrap_err();
        let all = peeked.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&all[..], b"abcdefghijkl");
    }

    #[tokio::test]
    async fn cap_zero_reads_nothing() {
        let body = Frames::new(vec![data(b"abc")]);
        let peeked = peek(body, 0).await;
        assert_eq!(peeked.prefix(), b"");
        assert_eq!(peeked.buffered_len(), 0);
        assert!(!peeked.is_complete());
        let all = peeked.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&all[..], b"abc");
    }

    #[tokio::test]
    async fn small_body_is_complete_with_trailers() {
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", "0".parse().unwrap());
        let body = Frames::new(vec![
            data(b"ab"),
            data(b"cd"),
            Ok(Frame::trailers(trailers.clone())),
        ]);
        let peeked = peek(body, 64).await;
        assert!(peeked.is_complete());
        assert_eq!(peeked.prefix(), b"abcd");
        let (bytes, got) = peeked.into_complete().unwrap();
        assert_eq!(&bytes[..], b"abcd");
        assert_eq!(got, Some(trailers));
    }

    #[tokio::test]
    async fn exactly_cap_is_complete_only_when_the_body_says_it_ended() {
        let mut body = Frames::new(vec![data(b"abcd")]);
        body.end_known = true;
        let peeked = peek(body, 4).await;
        assert!(peeked.is_complete());
        assert_eq!(&peeked.into_complete().unwrap().0[..], b"abcd");

        let body = Frames::new(vec![data(b"abcd")]);
        let peeked = peek(body, 4).await;
        assert!(
            !peeked.is_complete(),
            "end unknown without reading past cap"
        );
        let all = peeked.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&all[..], b"abcd");
    }

    #[tokio::test]
    async fn one_frame_over_the_cap_is_not_complete_but_is_all_there() {
        let peeked = peek(Full::new(Bytes::from_static(b"0123456789")), 4).await;
        assert_eq!(peeked.prefix(), b"0123");
        assert_eq!(peeked.buffered_len(), 10);
        assert!(!peeked.is_complete());
        let body = peeked.into_body();
        assert_eq!(body.size_hint().exact(), Some(10));
        let all = body.collect().await.unwrap().to_bytes();
        assert_eq!(&all[..], b"0123456789");
    }

    #[tokio::test]
    async fn error_while_peeking_comes_after_the_bytes_before_it() {
        let body = Frames::new(vec![data(b"ab"), data(b"cd"), Err("boom"), data(b"never")]);
        let peeked = peek(body, 64).await;
        assert_eq!(peeked.prefix(), b"abcd");
        assert_eq!(peeked.error(), Some(&"boom"));
        assert!(!peeked.is_complete());
        let mut body = peeked.into_body();
        assert_eq!(body.size_hint().exact(), Some(4));
        let mut got = Vec::new();
        let err = loop {
            match body.frame().await {
                Some(Ok(frame)) => got.extend_from_slice(&frame.into_data().unwrap()),
                Some(Err(err)) => break err,
                None => panic!("body ended without its error"),
            }
        };
        assert_eq!(got, b"abcd");
        assert_eq!(err, "boom");
        assert!(body.frame().await.is_none());
    }

    #[tokio::test]
    async fn empty_body_is_complete_and_empty() {
        let peeked = peek(http_body_util::Empty::<Bytes>::new(), 16).await;
        assert!(peeked.is_complete());
        let body = peeked.into_body();
        assert!(body.is_end_stream());
        assert_eq!(body.size_hint().exact(), Some(0));
    }
}
