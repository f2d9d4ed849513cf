//! The one parser for every "wait this long" signal a server sends. STUB.

use std::time::{Duration, SystemTime};

use http::HeaderMap;

/// The server's retry hint, from headers and an optional body prefix, relative to now.
pub fn parse(headers: &HeaderMap, body: Option<&[u8]>) -> Option<Duration> {
    parse_at(headers, body, SystemTime::now())
}

/// Like [`parse`], with "now" given (for HTTP-dates and epoch resets).
pub fn parse_at(headers: &HeaderMap, body: Option<&[u8]>, now: SystemTime) -> Option<Duration> {
    let _ = (headers, body, now);
    None
}
