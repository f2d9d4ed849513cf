//! Cloning requests so they can be sent again, and buffering bodies that cannot be
//! cloned as they are.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::{HeaderMap, Request};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use pin_project_lite::pin_project;

use super::error::BufferError;
use crate::BoxError;

/// A request body that can perhaps be copied so the request can be sent again.
///
/// The retry policy asks the body of every request. When it answers `None`, the request
/// is sent once, without retry, and its response (or error) goes back to the caller as
/// is: a body that cannot be cloned is never turned into an error.
///
/// Implemented for bodies that are plain memory (`()`, [`String`], [`Vec<u8>`],
/// [`Bytes`], `&'static str`, `&'static [u8]`, [`Full`](http_body_util::Full),
/// [`Empty`](http_body_util::Empty)), for [`RetryBody`] (its buffered form clones, its
/// streaming form does not), and, always answering `None`, for the streaming bodies
/// [`hyper::body::Incoming`], [`BoxBody`](http_body_util::combinators::BoxBody) and
/// [`UnsyncBoxBody`](http_body_util::combinators::UnsyncBoxBody). Any other body can be
/// used through [`RetryBody::streaming`] (sent once) or [`buffer_request`] (buffered,
/// hence retried, when small enough).
pub trait TryCloneBody: Sized {
    /// A copy of this body carrying the same bytes, or `None` when it has none to give.
    fn try_clone_body(&self) -> Option<Self>;

    /// The body's bytes, when it holds them in memory (for keys read from the body,
    /// see [`key::json_field`](crate::key::json_field)). `None` by default.
    fn try_bytes(&self) -> Option<Bytes> {
        None
    }
}

macro_rules! clone_body {
    ($($t:ty => |$b:ident| $bytes:expr),* $(,)?) => {$(
        impl TryCloneBody for $t {
            fn try_clone_body(&self) -> Option<Self> {
                Some(self.clone())
            }

            fn try_bytes(&self) -> Option<Bytes> {
                let $b = self;
                Some($bytes)
            }
        }
    )*};
}

clone_body!(
    () => |_b| Bytes::new(),
    String => |b| Bytes::copy_from_slice(b.as_bytes()),
    Vec<u8> => |b| Bytes::copy_from_slice(b),
    Bytes => |b| b.clone(),
    &'static str => |b| Bytes::from_static(b.as_bytes()),
    &'static [u8] => |b| Bytes::from_static(b),
);

impl<D: Buf + Clone> TryCloneBody for http_body_util::Full<D> {
    fn try_clone_body(&self) -> Option<Self> {
        Some(self.clone())
    }

    /// The bytes of a copy, read in one poll: a `Full` body yields its one frame at once.
    fn try_bytes(&self) -> Option<Bytes> {
        let mut copy = self.clone();
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match Pin::new(&mut copy).poll_frame(&mut cx) {
            Poll::Ready(Some(Ok(frame))) => frame
                .into_data()
                .ok()
                .map(|mut data| data.copy_to_bytes(data.remaining())),
            Poll::Ready(None) => Some(Bytes::new()),
            _ => None,
        }
    }
}

impl<D> TryCloneBody for http_body_util::Empty<D> {
    fn try_clone_body(&self) -> Option<Self> {
        Some(*self)
    }

    fn try_bytes(&self) -> Option<Bytes> {
        Some(Bytes::new())
    }
}

impl TryCloneBody for hyper::body::Incoming {
    fn try_clone_body(&self) -> Option<Self> {
        None
    }
}

impl<D, E> TryCloneBody for http_body_util::combinators::BoxBody<D, E> {
    fn try_clone_body(&self) -> Option<Self> {
        None
    }
}

impl<D, E> TryCloneBody for http_body_util::combinators::UnsyncBoxBody<D, E> {
    fn try_clone_body(&self) -> Option<Self> {
        None
    }
}

/// A copy of `req` (method, URI, version, headers, extensions and body), or `None`
/// when its body cannot be cloned.
pub(crate) fn try_clone_request<B: TryCloneBody>(req: &Request<B>) -> Option<Request<B>> {
    let body = req.body().try_clone_body()?;
    let mut out = Request::new(body);
    *out.method_mut() = req.method().clone();
    *out.uri_mut() = req.uri().clone();
    *out.version_mut() = req.version();
    *out.headers_mut() = req.headers().clone();
    *out.extensions_mut() = req.extensions().clone();
    Some(out)
}

pin_project! {
    /// A request body that is either held in memory, and so can be sent any number of
    /// times, or streamed, and so sent once.
    ///
    /// Made by [`buffer_request`], or directly with [`RetryBody::buffered`] and
    /// [`RetryBody::streaming`]. Either way its bytes reach the upstream in order and
    /// complete.
    #[derive(Debug)]
    pub struct RetryBody<B> {
        #[pin]
        inner: Inner<B>,
    }
}

pin_project! {
    #[project = InnerProj]
    #[derive(Debug)]
    enum Inner<B> {
        Buffered {
            data: Bytes,
            trailers: Option<HeaderMap>,
            sent_data: bool,
            sent_trailers: bool,
        },
        Streaming {
            // Bytes read while trying to buffer, replayed before the rest of the body.
            prefix: Option<Bytes>,
            #[pin]
            body: B,
        },
    }
}

impl<B> RetryBody<B> {
    /// A body held in memory: it clones, so a request carrying it can be retried.
    pub fn buffered(data: impl Into<Bytes>) -> Self {
        Self::buffered_with_trailers(data.into(), None)
    }

    fn buffered_with_trailers(data: Bytes, trailers: Option<HeaderMap>) -> Self {
        RetryBody {
            inner: Inner::Buffered {
                data,
                trailers,
                sent_data: false,
                sent_trailers: false,
            },
        }
    }

    /// A streaming body: it does not clone, so a request carrying it is sent once.
    pub fn streaming(body: B) -> Self {
        Self::streaming_after(None, body)
    }

    fn streaming_after(prefix: Option<Bytes>, body: B) -> Self {
        RetryBody {
            inner: Inner::Streaming {
                prefix: prefix.filter(|p| !p.is_empty()),
                body,
            },
        }
    }

    /// Whether the body is held in memory (and so the request can be retried).
    pub fn is_buffered(&self) -> bool {
        matches!(self.inner, Inner::Buffered { .. })
    }

    /// The buffered bytes, when the body is held in memory.
    pub fn buffered_bytes(&self) -> Option<&Bytes> {
        match &self.inner {
            Inner::Buffered { data, .. } => Some(data),
            Inner::Streaming { .. } => None,
        }
    }
}

impl<B> TryCloneBody for RetryBody<B> {
    /// A fresh copy of a buffered body (from its first byte, whatever has been read of
    /// this one); `None` for a streaming body.
    fn try_clone_body(&self) -> Option<Self> {
        match &self.inner {
            Inner::Buffered { data, trailers, .. } => {
                Some(Self::buffered_with_trailers(data.clone(), trailers.clone()))
            }
            Inner::Streaming { .. } => None,
        }
    }

    fn try_bytes(&self) -> Option<Bytes> {
        self.buffered_bytes().cloned()
    }
}

impl<B> Body for RetryBody<B>
where
    B: Body,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        match self.project().inner.project() {
            InnerProj::Buffered {
                data,
                trailers,
                sent_data,
                sent_trailers,
            } => {
                if !*sent_data {
                    *sent_data = true;
                    if !data.is_empty() {
                        return Poll::Ready(Some(Ok(Frame::data(data.clone()))));
                    }
                }
                if !*sent_trailers {
                    *sent_trailers = true;
                    if let Some(t) = trailers {
                        return Poll::Ready(Some(Ok(Frame::trailers(t.clone()))));
                    }
                }
                Poll::Ready(None)
            }
            InnerProj::Streaming { prefix, body } => {
                if let Some(p) = prefix.take() {
                    return Poll::Ready(Some(Ok(Frame::data(p))));
                }
                body.poll_frame(cx).map(|frame| {
                    frame.map(|res| res.map(|f| f.map_data(|mut d| d.copy_to_bytes(d.remaining()))))
                })
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Buffered {
                data,
                trailers,
                sent_data,
                sent_trailers,
            } => (*sent_data || data.is_empty()) && (*sent_trailers || trailers.is_none()),
            Inner::Streaming { prefix, body } => prefix.is_none() && body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Buffered {
                data, sent_data, ..
            } => SizeHint::with_exact(if *sent_data { 0 } else { data.len() as u64 }),
            Inner::Streaming { prefix, body } => {
                let extra = prefix.as_ref().map_or(0, |p| p.len() as u64);
                let inner = body.size_hint();
                let mut hint = SizeHint::new();
                hint.set_lower(inner.lower().saturating_add(extra));
                if let Some(upper) = inner.upper() {
                    hint.set_upper(upper.saturating_add(extra));
                }
                hint
            }
        }
    }
}

/// Reads a request's body into memory, up to `limit` bytes, so that the request can be
/// cloned and retried.
///
/// - A body of at most `limit` bytes comes back [buffered](RetryBody::buffered)
///   (trailers kept): the request is retried as the policy says.
/// - A longer body (or one whose size hint already says it is longer) comes back
///   [streaming](RetryBody::streaming): the bytes already read are replayed first,
///   then the rest of the body, so nothing is lost; the request is sent once.
/// - A body that fails while being read is a [`BufferError`] carrying its error.
///
/// # Example
///
/// ```
/// # use http_body_util::{BodyExt, Full};
/// # use bytes::Bytes;
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), ratewise::retry::BufferError> {
/// let req = http::Request::post("http://127.0.0.1/send")
///     .body(Full::new(Bytes::from_static(b"hello")))
///     .unwrap();
/// let req = ratewise::retry::buffer_request(req, 64 * 1024).await?;
/// assert!(req.body().is_buffered());
/// # Ok(()) }
/// ```
pub async fn buffer_request<B>(
    req: Request<B>,
    limit: usize,
) -> Result<Request<RetryBody<B>>, BufferError>
where
    B: Body + Unpin,
    B::Error: Into<BoxError>,
{
    let (parts, mut body) = req.into_parts();
    if body.size_hint().lower() > limit as u64 {
        return Ok(Request::from_parts(parts, RetryBody::streaming(body)));
    }
    let mut buf = BytesMut::new();
    let mut trailers: Option<HeaderMap> = None;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| BufferError::new(buf.len(), e.into()))?;
        match frame.into_data() {
            Ok(mut data) => {
                let over = buf.len().saturating_add(data.remaining()) > limit;
                while data.has_remaining() {
                    let chunk = data.chunk();
                    let n = chunk.len();
                    buf.put_slice(chunk);
                    data.advance(n);
                }
                if over {
                    // Trailers end a body, so none have been read yet: the rest of the
                    // body, trailers included, follows the replayed prefix.
                    let prefix = Some(buf.freeze());
                    return Ok(Request::from_parts(
                        parts,
                        RetryBody::streaming_after(prefix, body),
                    ));
                }
            }
            Err(frame) => {
                if let Ok(t) = frame.into_trailers() {
                    trailers.get_or_insert_with(HeaderMap::new).extend(t);
                }
            }
        }
    }
    Ok(Request::from_parts(
        parts,
        RetryBody::buffered_with_trailers(buf.freeze(), trailers),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{combinators::BoxBody, Full};
    use std::convert::Infallible;

    async fn collect<B: Body>(b: B) -> (Bytes, Option<HeaderMap>)
    where
        B::Error: std::fmt::Debug,
    {
        let c = b.collect().await.expect("body");
        let trailers = c.trailers().cloned();
        (c.to_bytes(), trailers)
    }

    /// A streaming test body yielding the given chunks, with no size hint.
    #[derive(Debug)]
    struct Chunks(std::collections::VecDeque<Bytes>);

    impl Body for Chunks {
        type Data = Bytes;
        type Error = Infallible;
        fn poll_frame(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            Poll::Ready(self.get_mut().0.pop_front().map(|b| Ok(Frame::data(b))))
        }
    }

    fn chunks(parts: Vec<&'static [u8]>) -> Chunks {
        Chunks(parts.into_iter().map(Bytes::from_static).collect())
    }

    #[test]
    fn requests_clone_with_everything() {
        let mut req = Request::post("http://127.0.0.1/x")
            .header("x-a", "1")
            .body(Full::new(Bytes::from_static(b"abc")))
            .unwrap();
        req.extensions_mut().insert(7u32);
        let copy = try_clone_request(&req).expect("clones");
        assert_eq!(copy.method(), req.method());
        assert_eq!(copy.uri(), req.uri());
        assert_eq!(copy.headers(), req.headers());
        assert_eq!(copy.extensions().get::<u32>(), Some(&7));
    }

    #[test]
    fn streaming_bodies_do_not_clone() {
        let req = Request::new(RetryBody::streaming(Full::new(Bytes::from_static(b"x"))));
        assert!(try_clone_request(&req).is_none());
        let boxed: BoxBody<Bytes, Infallible> = BoxBody::new(Full::new(Bytes::new()));
        assert!(boxed.try_clone_body().is_none());
    }

    #[tokio::test]
    async fn buffered_clone_restarts_from_the_first_byte() {
        let mut trailers = HeaderMap::new();
        trailers.insert("x-t", "v".parse().unwrap());
        let mut b: RetryBody<Full<Bytes>> =
            RetryBody::buffered_with_trailers(Bytes::from_static(b"hello"), Some(trailers));
        let first = b.frame().await.unwrap().unwrap();
        assert_eq!(first.into_data().unwrap(), Bytes::from_static(b"hello"));
        let copy = b.try_clone_body().expect("buffered clones");
        let (bytes, t) = collect(copy).await;
        assert_eq!(bytes, Bytes::from_static(b"hello"));
        assert_eq!(t.unwrap().get("x-t").unwrap(), "v");
        // The original goes on with its trailers and ends.
        assert!(b.frame().await.unwrap().unwrap().is_trailers());
        assert!(b.frame().await.is_none());
        assert!(b.is_end_stream());
    }

    #[tokio::test]
    async fn buffer_request_keeps_small_bodies() {
        let req = Request::new(chunks(vec![b"ab", b"cd"]));
        let req = buffer_request(req, 4).await.unwrap();
        assert_eq!(
            req.body().buffered_bytes().unwrap(),
            &Bytes::from_static(b"abcd")
        );
        let (bytes, _) = collect(req.into_body()).await;
        assert_eq!(bytes, Bytes::from_static(b"abcd"));
    }

    #[tokio::test]
    async fn buffer_request_streams_long_bodies_without_losing_a_byte() {
        let req = Request::new(chunks(vec![b"ab", b"cd", b"ef", b"gh"]));
        let req = buffer_request(req, 3).await.unwrap();
        assert!(!req.body().is_buffered());
        assert!(try_clone_request(&req).is_none());
        let (bytes, _) = collect(req.into_body()).await;
        assert_eq!(bytes, Bytes::from_static(b"abcdefgh"));
    }

    #[tokio::test]
    async fn buffer_request_does_not_read_a_body_known_to_be_too_long() {
        let req = Request::new(Full::new(Bytes::from_static(b"0123456789")));
        let req = buffer_request(req, 4).await.unwrap();
        assert!(!req.body().is_buffered());
        assert_eq!(req.body().size_hint().exact(), Some(10));
        let (bytes, _) = collect(req.into_body()).await;
        assert_eq!(bytes, Bytes::from_static(b"0123456789"));
    }
}
