//! Request keys: which bucket, cooldown or cache entry a request belongs to.
//!
//! Every keyed layer takes a [`KeyExtractor`]: [`Global`] (one key for everything),
//! [`Authority`] (the request's host and port), [`MethodUri`], or any closure
//! `Fn(&Request<B>) -> K` where `K: Into<Key>` (a header, a path segment, an extension).
//!
//! # Example
//!
//! ```
//! use ratewise::key::{Authority, Key, KeyExtractor};
//! use http::Request;
//!
//! let req = Request::get("https://api.telegram.org/bot123/sendMessage").body(()).unwrap();
//! assert_eq!(Authority.key(&req), Key::from("api.telegram.org"));
//!
//! let by_bot = |req: &Request<()>| req.uri().path().split('/').nth(1).unwrap_or("").to_owned();
//! assert_eq!(by_bot.key(&req), Key::from("bot123"));
//! ```

use std::{borrow::Borrow, fmt, sync::Arc};

use http::Request;

/// A key: a cheap-to-clone shared string.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key(Arc<str>);

impl Key {
    /// The key as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Borrow<str> for Key {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl From<&str> for Key {
    fn from(s: &str) -> Self {
        Key(Arc::from(s))
    }
}

impl From<String> for Key {
    fn from(s: String) -> Self {
        Key(Arc::from(s))
    }
}

impl From<Arc<str>> for Key {
    fn from(s: Arc<str>) -> Self {
        Key(s)
    }
}

/// Chooses the key of a request.
pub trait KeyExtractor<B>: Send + Sync + 'static {
    /// The request's key.
    fn key(&self, request: &Request<B>) -> Key;
}

impl<B, F, K> KeyExtractor<B> for F
where
    F: Fn(&Request<B>) -> K + Send + Sync + 'static,
    K: Into<Key>,
{
    fn key(&self, request: &Request<B>) -> Key {
        self(request).into()
    }
}

/// One key for every request: `"*"`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Global;

impl<B> KeyExtractor<B> for Global {
    fn key(&self, _request: &Request<B>) -> Key {
        thread_local! {
            static GLOBAL: Key = Key::from("*");
        }
        GLOBAL.with(Key::clone)
    }
}

/// The request's authority (`host[:port]`), from the URI, else the `Host` header,
/// else the empty key.
#[derive(Debug, Clone, Copy, Default)]
pub struct Authority;

impl<B> KeyExtractor<B> for Authority {
    fn key(&self, request: &Request<B>) -> Key {
        if let Some(a) = request.uri().authority() {
            return Key::from(a.as_str());
        }
        request
            .headers()
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(Key::from)
            .unwrap_or_else(|| Key::from(""))
    }
}

/// The request's method and URI, e.g. `GET https://api.sgroup.qq.com/gateway`.
#[derive(Debug, Clone, Copy, Default)]
pub struct MethodUri;

impl<B> KeyExtractor<B> for MethodUri {
    fn key(&self, request: &Request<B>) -> Key {
        Key::from(format!("{} {}", request.method(), request.uri()))
    }
}
