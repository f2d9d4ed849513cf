//! Body peeking that loses nothing: look at the first bytes of a body, then hand the
//! caller back every byte, in order, with its trailers and its errors.
//!
//! [`peek`] reads up to a cap and resolves to a [`Peeked`]: the bounded prefix a
//! classifier looks at, whether the whole body fitted, and a [`PeekBody`] that replays
//! every byte (or passes an unpeeked body through at no cost). Every ratewise layer that
//! needs to see a body goes through this module; see [the guide](crate::guide#body-peeking).
//!
//! # Example
//!
//! ```
//! use bytes::Bytes;
//! use http_body_util::{BodyExt, Full};
//! use ratewise::body::{peek, PeekBody};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let upstream = Full::new(Bytes::from_static(b"{\"error\":{\"code\":\"1302\"}} and more"));
//!
//! // Look at the first 8 bytes...
//! let peeked = peek(upstream, 8).await;
//! assert_eq!(peeked.prefix(), b"{\"error\"");
//! assert!(!peeked.is_complete()); // the body is longer than the cap
//!
//! // ...and the caller still gets all of it.
//! let body: PeekBody<_> = peeked.into_body();
//! let bytes = body.collect().await.unwrap().to_bytes();
//! assert_eq!(&bytes[..], b"{\"error\":{\"code\":\"1302\"}} and more");
//!
//! // A small body fits in the cap: a cache can take it whole.
//! let peeked = peek(Full::new(Bytes::from_static(b"ok")), 64).await;
//! assert!(peeked.is_complete());
//! let (data, trailers) = peeked.into_complete().ok().unwrap();
//! assert_eq!(&data[..], b"ok");
//! assert!(trailers.is_none());
//! # }
//! ```

/// The default cap on how much of a body a layer reads: 64 KiB.
pub(crate) const DEFAULT_CAP: usize = 64 * 1024;

mod peek;
mod peek_body;

pub use self::peek::{peek, Peek, Peeked};
pub use self::peek_body::PeekBody;

use bytes::{Buf, Bytes};
use http_body::Frame;

/// Turns a frame of any `Buf` into a frame of `Bytes` (zero-copy when the data already
/// is `Bytes`).
fn frame_to_bytes<D: Buf>(frame: Frame<D>) -> Frame<Bytes> {
    frame.map_data(|mut data| data.copy_to_bytes(data.remaining()))
}
