//! One [`Verdict`] per response: success, rate-limited, transient or failure.
//!
//! A [`Classifier`] looks at a response's status and headers. Only for the statuses
//! it asks about ([`Classifier::wants_body`]) does it also see a bounded prefix of the
//! body (64 KiB by default, see [`ClassifyLayer::body_cap`]). Responses it does not ask
//! about are never buffered, so a 200 SSE stream flows through chunk by chunk.
//!
//! [`ClassifyLayer`] runs the classifier once and stores the verdict in the response's
//! extensions; every other ratewise layer reads it from there with [`verdict_of`], so a
//! response stacked under several layers is classified once.
//!
//! Built-in classifiers, one per file, compose with [`Classifier::or`] and closures;
//! [`presets`] bundles them per platform.
//!
//! # Example
//!
//! ```
//! use ratewise::classify::{presets, Classifier, ResponseView, Verdict};
//! use http::{HeaderMap, StatusCode};
//!
//! let glm = presets::glm();
//! let headers = HeaderMap::new();
//! let body = br#"{"error":{"code":"1302","message":"rate limited"}}"#;
//! assert!(glm.wants_body(StatusCode::TOO_MANY_REQUESTS, &headers));
//! let view = ResponseView::new(StatusCode::TOO_MANY_REQUESTS, &headers).with_body(body);
//! assert!(matches!(glm.classify(&view), Some(Verdict::RateLimited { .. })));
//! ```

use std::fmt;
use std::sync::OnceLock;
use std::time::Duration;

use http::{HeaderMap, Response, StatusCode};
use serde_json::Value;

mod combinators;
mod future;
mod layer;
mod service;

pub mod body_contains;
pub mod dingtalk;
pub mod json_field;
pub mod presets;
pub mod status;
pub mod telegram;
pub mod transient;

pub use self::body_contains::StatusBodyContains;
pub use self::combinators::{classify_fn, ClassifyFn, Or};
pub use self::dingtalk::DingTalkQpsLimit;
pub use self::future::ResponseFuture;
pub use self::json_field::JsonFieldIn;
pub use self::layer::ClassifyLayer;
pub use self::service::Classify;
pub use self::status::TooManyRequests;
pub use self::telegram::TelegramRetryAfter;
pub use self::transient::ServerErrors;

/// The default cap on how much of a body a classifier may see: 64 KiB.
pub const DEFAULT_BODY_CAP: usize = 64 * 1024;

/// What a response means for rate limiting.
///
/// Stored in the response's extensions by [`ClassifyLayer`].
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The upstream served the request.
    Success,
    /// The upstream says the client is over its limit.
    RateLimited {
        /// How long the server asked the client to wait, when it said.
        retry_after: Option<Duration>,
    },
    /// A failure worth retrying: 5xx, 408, connection errors.
    Transient,
    /// A failure not worth retrying.
    Failure,
}

impl Verdict {
    /// A rate-limited verdict with the server's hint.
    pub fn rate_limited(retry_after: Option<Duration>) -> Self {
        Verdict::RateLimited { retry_after }
    }

    /// Whether this verdict says "rate-limited".
    pub fn is_rate_limited(&self) -> bool {
        matches!(self, Verdict::RateLimited { .. })
    }

    /// The server's retry hint, when the verdict is rate-limited and the server gave one.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Verdict::RateLimited { retry_after } => *retry_after,
            _ => None,
        }
    }

    /// Whether a retry could succeed: rate-limited or transient.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Verdict::RateLimited { .. } | Verdict::Transient)
    }

    /// The verdict a status gets when no classifier has an opinion: 1xx, 2xx and 3xx
    /// are success, everything else failure.
    pub fn from_status(status: StatusCode) -> Self {
        if status.is_success() || status.is_informational() || status.is_redirection() {
            Verdict::Success
        } else {
            Verdict::Failure
        }
    }
}

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
        crate::retry_after::parse_view(self)
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

/// The verdict of a response: the one [`ClassifyLayer`] stored in its extensions, or,
/// when no classification layer ran, a header-only judgement (429 is rate-limited with
/// the parsed retry hint, 5xx and 408 are transient, see [`Verdict::from_status`] for
/// the rest).
///
/// Every ratewise layer reads verdicts through this one function.
pub fn verdict_of<B>(response: &Response<B>) -> Verdict {
    if let Some(v) = response.extensions().get::<Verdict>() {
        return *v;
    }
    let view = ResponseView::new(response.status(), response.headers());
    TooManyRequests::new()
        .or(ServerErrors::new())
        .classify(&view)
        .unwrap_or_else(|| Verdict::from_status(response.status()))
}

/// Whether `err` (or an error in its `source()` chain) is one of ratewise's own
/// refusals: the request was never sent upstream. Those are a rate limiter's
/// [`MaxWaitExceeded`](crate::rate_limit::MaxWaitExceeded) and
/// [`CostExceedsBurst`](crate::rate_limit::CostExceedsBurst), a cooldown's
/// [`CoolingDown`](crate::cooldown::CoolingDown), the cache's
/// [`EndpointLimited`](crate::cache::error::EndpointLimited) and the pool's
/// [`AllBackendsCooling`](crate::pool::AllBackendsCooling),
/// [`NoBackendReady`](crate::pool::NoBackendReady) and [`NoRoute`](crate::pool::NoRoute).
///
/// Layers that learn from the upstream's answers (the cooldown) ignore these: they say
/// nothing about the upstream. A retry still waits them out: their
/// [`verdict_of_error`] carries the wait.
pub fn is_local_refusal(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if e.is::<crate::rate_limit::MaxWaitExceeded>()
            || e.is::<crate::rate_limit::CostExceedsBurst>()
            || e.is::<crate::cooldown::CoolingDown>()
            || e.is::<crate::cache::error::EndpointLimited>()
            || e.is::<crate::pool::AllBackendsCooling>()
            || e.is::<crate::pool::NoBackendReady>()
            || e.is::<crate::pool::NoRoute>()
        {
            return true;
        }
        cur = e.source();
    }
    false
}

/// The verdict of an error returned instead of a response.
///
/// ratewise's own errors that carry a wait (a rate limiter's `max_wait` refusal, a
/// cooldown, the cache's limited endpoint, a pool whose backends are all cooling) are
/// rate-limited with that wait; a pool with no backend ready within its `max_wait` is
/// rate-limited without a hint; errors that waiting can never cure (a request costing
/// more than the rate limiter's burst, a pool with no route for the request) are
/// failures; every other error is taken to be connection-level and transient. The
/// error's `source()` chain is searched.
pub fn verdict_of_error(err: &(dyn std::error::Error + 'static)) -> Verdict {
    /// Each module's judgement of its own error types.
    const OWN_ERRORS: [fn(&(dyn std::error::Error + 'static)) -> Option<Verdict>; 4] = [
        crate::rate_limit::error::verdict,
        crate::cooldown::error::verdict,
        crate::cache::error::verdict,
        crate::pool::error::verdict,
    ];
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(verdict) = OWN_ERRORS.iter().find_map(|judge| judge(e)) {
            return verdict;
        }
        cur = e.source();
    }
    Verdict::Transient
}
