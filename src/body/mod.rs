//! The body of a response a ratewise layer looked at: [`PeekBody`], which loses
//! nothing. A layer that classifies or caches a response reads at most a bounded prefix
//! of its body, then hands the caller back every byte, in order, with its trailers and
//! its errors; a body nobody looked at passes through at no cost. See
//! [the guide](crate::guide#body-peeking).
//!
//! # Example
//!
//! ```
//! use bytes::Bytes;
//! use http_body_util::{BodyExt, Full};
//! use ratewise::body::PeekBody;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! // A body no layer looked at passes through as it is.
//! let body = PeekBody::new(Full::new(Bytes::from_static(b"{\"error\":{\"code\":\"1302\"}}")));
//! assert!(body.is_pass_through());
//! let bytes = body.collect().await.unwrap().to_bytes();
//! assert_eq!(&bytes[..], b"{\"error\":{\"code\":\"1302\"}}");
//! # }
//! ```

/// The default cap on how much of a body a layer reads: 64 KiB.
pub(crate) const DEFAULT_CAP: usize = 64 * 1024;

mod peek;
mod peek_body;

pub(crate) use self::peek::{peek, Peek};
pub use self::peek_body::PeekBody;

use bytes::{Buf, Bytes};
use http_body::Frame;

/// Turns a frame of any `Buf` into a frame of `Bytes` (zero-copy when the data already
/// is `Bytes`).
fn frame_to_bytes<D: Buf>(frame: Frame<D>) -> Frame<Bytes> {
    frame.map_data(|mut data| data.copy_to_bytes(data.remaining()))
}
