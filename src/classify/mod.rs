//! One [`Verdict`] per response: success, rate-limited, transient or failure.
//!
//! A [`Classifier`] looks at a response's status and headers. Only for the statuses
//! it asks about ([`Classifier::wants_body`]) does it also see a bounded prefix of the
//! body (64 KiB by default, see [`ClassifyLayer::body_cap`]). Responses it does not ask
//! about are never buffered, so a 200 SSE stream flows through chunk by chunk.
//!
//! [`ClassifyLayer`] runs the classifier once and stores the verdict in the response's
//! extensions; every other ratewise layer reads it from there with
//! [`verdict_of`](crate::verdict_of), so a
//! response stacked under several layers is classified once.
//!
//! Built-in classifiers, one per file, compose with [`Classifier::or`] and closures;
//! [`Preset`] bundles them per platform. See also [the guide](crate::guide#classify).
//!
//! # Example
//!
//! ```
//! use ratewise::classify::{Preset, Classifier, ResponseView};
//! use ratewise::Verdict;
//! use http::{HeaderMap, StatusCode};
//!
//! let glm = Preset::glm();
//! let headers = HeaderMap::new();
//! let body = br#"{"error":{"code":"1302","message":"rate limited"}}"#;
//! assert!(glm.wants_body(StatusCode::TOO_MANY_REQUESTS, &headers));
//! let view = ResponseView::new(StatusCode::TOO_MANY_REQUESTS, &headers).with_body(body);
//! assert!(matches!(glm.classify(&view), Some(Verdict::RateLimited { .. })));
//! ```

use std::fmt;
use std::sync::OnceLock;
use std::time::Duration;

use http::{HeaderMap, StatusCode};
use serde_json::Value;

mod body_contains;
#[cfg(test)]
mod builtin_tests;
mod combinators;
mod dingtalk;
mod future;
mod json_field;
mod layer;
mod presets;
mod service;
mod status;
mod telegram;
mod transient;

pub use self::body_contains::StatusBodyContains;
pub use self::combinators::classify_fn;
use self::combinators::Or;
use self::dingtalk::DingTalkQpsLimit;
use self::future::ResponseFuture;
pub use self::json_field::JsonFieldIn;
pub use self::layer::ClassifyLayer;
pub use self::presets::Preset;
pub use self::service::Classify;
use self::status::TooManyRequests;
use self::telegram::TelegramRetryAfter;
use self::transient::ServerErrors;
use crate::vocabulary::Verdict;

/// The default cap on how much of a body a classifier may see: 64 KiB.
pub(crate) const DEFAULT_BODY_CAP: usize = crate::body::DEFAULT_CAP;

/// What a classifier sees of a response.
///
/// The body is present only when the classifier asked for it through
/// [`Classifier::wants_body`], and is at most the layer's body cap long.
///
/// The body is parsed as JSON at most once per view, on first use, and the result
/// ([`json`](Self::json)) is shared by every classifier in an [`or`](Classifier::or)
/// chain and by [`retry_after`](Self::retry_after). Pass the view by reference, as
/// [`Classifier::classify`] does, to keep that sharing: a clone carries a copy of
/// whatever was parsed so far.
#[derive(Clone)]
pub struct ResponseView<'a> {
    status: StatusCode,
    headers: &'a HeaderMap,
    body: Option<&'a [u8]>,
    /// The body parsed as JSON: unset until [`json`](Self::json) is first called,
    /// then `None` when there is no body or it is not complete JSON. A `OnceLock`
    /// rather than a `OnceCell` keeps the view `Send + Sync`, as it was before.
    json: OnceLock<Option<Value>>,
}

impl<'a> ResponseView<'a> {
    /// A view of a status and headers, with no body.
    pub fn new(status: StatusCode, headers: &'a HeaderMap) -> Self {
        ResponseView {
            status,
            headers,
            body: None,
            json: OnceLock::new(),
        }
    }

    /// The same view with a body prefix.
    pub fn with_body(mut self, body: &'a [u8]) -> Self {
        self.body = Some(body);
        // Whatever was parsed belonged to the previous body.
        self.json = OnceLock::new();
        self
    }

    /// The response status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The response headers.
    pub fn headers(&self) -> &'a HeaderMap {
        self.headers
    }

    /// The body prefix, if the classifier asked for it.
    pub fn body(&self) -> Option<&'a [u8]> {
        self.body
    }

    /// The body prefix parsed as JSON, or `None` when there is no body or it is not
    /// complete JSON (a body cut off by the layer's cap, HTML, plain text).
    ///
    /// The body is parsed on the first call only; later calls, from this classifier
    /// or the next ones in a chain, get the same value.
    ///
    /// ```
    /// use http::{HeaderMap, StatusCode};
    /// use ratewise::classify::ResponseView;
    ///
    /// let headers = HeaderMap::new();
    /// let body = br#"{"error":{"code":"1302"}}"#;
    /// let view = ResponseView::new(StatusCode::TOO_MANY_REQUESTS, &headers).with_body(body);
    /// let code = view.json().and_then(|j| j.pointer("/error/code"));
    /// assert_eq!(code.and_then(|c| c.as_str()), Some("1302"));
    ///
    /// let cut = ResponseView::new(StatusCode::TOO_MANY_REQUESTS, &headers).with_body(&body[..10]);
    /// assert!(cut.json().is_none());
    /// ```
    pub fn json(&self) -> Option<&Value> {
        self.json
            .get_or_init(|| self.body.and_then(crate::retry_after::parse_json))
            .as_ref()
    }

    /// The server's retry hint, read by the crate's one parser
    /// ([`crate::retry_after::parse`]) from the headers and the body prefix, reusing
    /// the body's [`json`](Self::json) parse.
    pub fn retry_after(&self) -> Option<Duration> {
        crate::retry_after::parse_with(self.headers, || self.json(), self.body)
    }

    /// Whether the body has been parsed as JSON yet (for tests).
    #[cfg(test)]
    pub(crate) fn json_parsed(&self) -> bool {
        self.json.get().is_some()
    }
}

impl fmt::Debug for ResponseView<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let json = match self.json.get() {
            None => "not parsed yet",
            Some(None) => "not JSON",
            Some(Some(_)) => "parsed",
        };
        f.debug_struct("ResponseView")
            .field("status", &self.status)
            .field("headers", &self.headers)
            .field("body", &self.body)
            .field("json", &json)
            .finish()
    }
}

/// Decides what a response means.
///
/// A classifier returns `None` when it has no opinion, so that classifiers can be
/// chained with [`or`](Classifier::or); the layer falls back to
/// [`Verdict::from_status`].
pub trait Classifier: Send + Sync + 'static {
    /// Whether this classifier needs a body prefix to judge a response with this
    /// status and these headers. Defaults to `false`: only responses some classifier
    /// asks about are ever buffered.
    fn wants_body(&self, status: StatusCode, headers: &HeaderMap) -> bool {
        let _ = (status, headers);
        false
    }

    /// The verdict, or `None` for "no opinion".
    fn classify(&self, response: &ResponseView<'_>) -> Option<Verdict>;

    /// Try `self`, then `other` when `self` has no opinion.
    fn or<C: Classifier>(self, other: C) -> Or<Self, C>
    where
        Self: Sized,
    {
        Or::new(self, other)
    }
}

impl<C: Classifier + ?Sized> Classifier for Box<C> {
    fn wants_body(&self, status: StatusCode, headers: &HeaderMap) -> bool {
        (**self).wants_body(status, headers)
    }
    fn classify(&self, response: &ResponseView<'_>) -> Option<Verdict> {
        (**self).classify(response)
    }
}

impl<C: Classifier + ?Sized> Classifier for std::sync::Arc<C> {
    fn wants_body(&self, status: StatusCode, headers: &HeaderMap) -> bool {
        (**self).wants_body(status, headers)
    }
    fn classify(&self, response: &ResponseView<'_>) -> Option<Verdict> {
        (**self).classify(response)
    }
}
