//! The client stack as a [`reqwest_middleware::Middleware`] (feature `reqwest`).
//!
//! [`Middleware`] is [`ClientStackLayer`] itself: the same presets, builder, classifier,
//! limits, keys (body keys such as [`json_field`](crate::key::json_field) included),
//! cooldown, retry, deadline and stats. Add it to a `reqwest_middleware::ClientBuilder`
//! with `.with(..)`; clone it into every client (or tower stack) that must share its
//! limits and cooldowns.
//!
//! # Example
//!
//! Telegram's preset, plus its one-message-per-second-per-chat limit keyed by the JSON
//! body's `chat_id`:
//!
#![cfg_attr(feature = "testing", doc = "```")]
#![cfg_attr(not(feature = "testing"), doc = "```ignore")]
//! use std::time::Duration;
//! use ratewise::{key::json_field, rate_limit::Limit, Platform};
//! use reqwest_middleware::ClientBuilder;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), ratewise::BoxError> {
//! # let bot = ratewise::testing::TelegramBot::new().per_chat(1, Duration::from_secs(1));
//! # let server = ratewise::testing::MockServer::start(bot.router()).await?;
//! # let url = server.url("/bot123:secret/sendMessage");
//! let per_chat = Limit::per_period(Duration::from_secs(1)).key(json_field("/chat_id")).margin_percent(1);
//! let telegram = ratewise::reqwest::Middleware::preset(Platform::Telegram)
//!     .rate_limit(|r| r.limit(per_chat))
//!     .build()?;
//! let client = ClientBuilder::new(reqwest::Client::new()).with(telegram).build();
//! let res = client.post(&url).json(&serde_json::json!({"chat_id": 42, "text": "hi"})).send().await?;
//! assert!(res.status().is_success());
//! # // The same chat again: it waits its second instead of drawing a 429.
//! # let again = client.post(&url).json(&serde_json::json!({"chat_id": 42, "text": "again"})).send().await?;
//! # assert!(again.status().is_success());
//! # assert_eq!((bot.delivered().len(), bot.hits().rate_limited()), (2, 0));
//! # Ok(()) }
//! ```
//!
//! # How it runs
//!
//! - **Per call.** The rest of the chain, [`Next<'_>`](reqwest_middleware::Next), is
//!   borrowed for one call only, so it cannot sit inside a long-lived tower service. Each
//!   call therefore makes the stack anew around it: [`ClientStackLayer`]'s `layer` over a
//!   small tower service that runs `Next` once per attempt. That costs a few `Arc`
//!   clones; the limiter, the cooldown table, the retry budget and the stats live in the
//!   layer and are shared by every call and every clone.
//! - **Bodies.** A request body held in memory (`.json(..)`, `.body(String)`, bytes) is
//!   sent again by the retry and read by body keys; a streaming body
//!   (`reqwest::Body::wrap_stream`, `Body::wrap`) is sent once and its response comes
//!   back as it is. The response body is never buffered: a 200 (an SSE stream
//!   included) passes through frame by frame, and the classifier reads a bounded prefix
//!   of the error statuses it asks about, then hands every byte back.
//! - **Errors.** What reqwest or a middleware below returned comes back unchanged
//!   (`reqwest_middleware::Error::Reqwest`, `is_timeout()`...). An error of ratewise's
//!   own is a `reqwest_middleware::Error::Middleware` whose `source()` is the typed
//!   error: [`Refusal::find(&err)`](crate::Refusal::find) finds a [`Refusal`] (which
//!   layer held the call back, why, for how long), `err.source()` downcasts to
//!   [`DeadlineExceeded`](crate::retry::DeadlineExceeded), and [`outcome`] says whether
//!   the call was rate-limited, and for how long, however it ended. These work through
//!   a wrapping middleware too (reqwest-retry's `RetryError`).
//! - **Budget.** One call's own total deadline:
//!   `.with_extension(ratewise::vocabulary::Budget(d))` on reqwest-middleware's request
//!   builder. reqwest's per-request `timeout` bounds each attempt.
//!
//! # Beside reqwest-retry
//!
//! This middleware replaces reqwest-retry: its retry waits what the server asked
//! (`Retry-After`, Telegram's `retry_after`, GLM's 1302...), which reqwest-retry does
//! not. If both are present, add reqwest-retry **first** (outermost):
//! `.with(RetryTransientMiddleware::new_with_policy(..)).with(ratewise)`. Each of its
//! retries is then a new call through ratewise: a key still cooling down is refused
//! without reaching the upstream, and reqwest-retry takes that refusal
//! (`Error::Middleware`) as fatal and returns it. Nothing extra reaches a penalised
//! upstream. Added after ratewise, reqwest-retry would sit between ratewise and the
//! network and re-send a 429 on its own backoff, below the limiter and the cooldown:
//! don't.

use std::error::Error as StdError;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use ::reqwest::{Body, Request, Response, ResponseBuilderExt};
use bytes::Bytes;
use http::Extensions;
use reqwest_middleware::Next;
use tower::{Layer, Service, ServiceExt};

#[cfg(doc)]
use crate::Refusal;
use crate::{
    retry::TryCloneBody, stack::ClientStackLayer, verdict_of, verdict_of_error, BoxError, Verdict,
};

/// The standard client stack as a `reqwest_middleware::Middleware`: the same type as
/// [`ClientStackLayer`], built the same way (`Middleware::preset(Platform::Glm)`,
/// `Middleware::builder()`), usable as a tower layer and as a reqwest middleware at once.
pub type Middleware = ClientStackLayer;

#[async_trait::async_trait]
impl reqwest_middleware::Middleware for ClientStackLayer {
    async fn handle(
        &self,
        req: Request,
        extensions: &mut Extensions,
        next: Next<'_>,
    ) -> reqwest_middleware::Result<Response> {
        let req = into_http(req, extensions)?;
        match self.layer(Chain { next }).oneshot(req).await {
            Ok(res) => Ok(Response::from(res.map(Body::wrap))),
            Err(err) => Err(into_error(err)),
        }
    }
}

/// What a reqwest call's result means, whichever way it came back (the reqwest form of
/// [`outcome`](crate::outcome)): an answer by the verdict the stack's classifier gave it
/// (GLM's 1302, QQ's 400 "频率限制" included), else by its status and headers; an error
/// by the [`Refusal`] in it, if any ([`verdict_of_error`]).
///
/// ```
/// use std::time::Duration;
/// use ratewise::Verdict;
///
/// let limited = http::Response::builder().status(429).header("retry-after", "4310").body("").unwrap();
/// let result: reqwest_middleware::Result<reqwest::Response> = Ok(limited.into());
/// assert_eq!(ratewise::reqwest::outcome(&result), Verdict::rate_limited(Some(Duration::from_secs(4310))));
/// ```
pub fn outcome(result: &reqwest_middleware::Result<Response>) -> Verdict {
    match result {
        Ok(res) => match res.extensions().get::<Verdict>() {
            Some(verdict) => *verdict,
            None => {
                let mut head = http::Response::new(());
                *head.status_mut() = res.status();
                *head.headers_mut() = res.headers().clone();
                verdict_of(&head)
            }
        },
        Err(err) => verdict_of_error(err),
    }
}

/// The rest of the reqwest-middleware chain as a tower service, for one call: each
/// attempt the stack lets through runs it once.
#[derive(Clone)]
struct Chain<'a> {
    next: Next<'a>,
}

impl<'a> Service<http::Request<Payload>> for Chain<'a> {
    type Response = http::Response<Body>;
    type Error = reqwest_middleware::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send + 'a>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Payload>) -> Self::Future {
        let next = self.next.clone();
        Box::pin(async move {
            // The middlewares below see the call's extensions, ratewise's included.
            let mut extensions = req.extensions().clone();
            let req = from_http(req)?;
            let res = next.run(req, &mut extensions).await?;
            Ok(into_http_response(res))
        })
    }
}

/// A reqwest request as the stack's `http::Request`: reqwest's own settings (its
/// timeout) ride in the extensions, beside the middleware chain's.
fn into_http(
    mut req: Request,
    extensions: &Extensions,
) -> Result<http::Request<Payload>, ::reqwest::Error> {
    let payload = Payload::new(req.body_mut().take());
    let (mut parts, _empty) = http::Request::<Body>::try_from(req)?.into_parts();
    parts.extensions.extend(extensions.clone());
    Ok(http::Request::from_parts(parts, payload))
}

/// One attempt's reqwest request, from the stack's copy.
fn from_http(req: http::Request<Payload>) -> Result<Request, ::reqwest::Error> {
    let (parts, payload) = req.into_parts();
    let mut req = Request::try_from(http::Request::from_parts(parts, Body::from(Bytes::new())))?;
    *req.body_mut() = payload.into_body();
    Ok(req)
}

/// reqwest's response as an `http::Response`, keeping its URL (reqwest carries it in an
/// extension of its own, which the way back reads).
fn into_http_response(res: Response) -> http::Response<Body> {
    let url = res.url().clone();
    let mut res = http::Response::<Body>::from(res);
    let mut carrier = http::response::Builder::new().url(url);
    if let Some(url) = carrier.extensions_mut() {
        res.extensions_mut().extend(std::mem::take(url));
    }
    res
}

/// The stack's error as reqwest-middleware's: the chain's own error unchanged, any
/// other (ratewise's) as the source of a `Middleware` error.
fn into_error(err: BoxError) -> reqwest_middleware::Error {
    match err.downcast::<reqwest_middleware::Error>() {
        Ok(err) => *err,
        Err(err) => reqwest_middleware::Error::middleware(Ratewise(err)),
    }
}

/// An error of ratewise's own (a [`Refusal`], a
/// [`DeadlineExceeded`](crate::retry::DeadlineExceeded)), inside
/// `reqwest_middleware::Error::Middleware`. It is its typed error's `source()`, so the
/// typed error is found by walking the chain, also through reqwest-middleware's
/// `#[error(transparent)]` and wrappers such as reqwest-retry's.
#[derive(Debug)]
struct Ratewise(BoxError);

impl fmt::Display for Ratewise {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ratewise: {}", self.0)
    }
}

impl StdError for Ratewise {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        Some(&*self.0)
    }
}

/// A reqwest request body inside the stack.
enum Payload {
    /// No body (a GET).
    None,
    /// A body in memory: copied for every attempt, readable by body keys.
    Bytes(Bytes),
    /// A streaming body: sent once.
    Stream(Body),
}

impl Payload {
    fn new(body: Option<Body>) -> Self {
        match body {
            None => Payload::None,
            Some(body) => match body.as_bytes() {
                // reqwest hands out only a slice of its bytes: one copy per call.
                Some(bytes) => Payload::Bytes(Bytes::copy_from_slice(bytes)),
                None => Payload::Stream(body),
            },
        }
    }

    fn into_body(self) -> Option<Body> {
        match self {
            Payload::None => None,
            Payload::Bytes(bytes) => Some(Body::from(bytes)),
            Payload::Stream(body) => Some(body),
        }
    }
}

impl TryCloneBody for Payload {
    fn try_clone_body(&self) -> Option<Self> {
        match self {
            Payload::None => Some(Payload::None),
            Payload::Bytes(bytes) => Some(Payload::Bytes(bytes.clone())),
            Payload::Stream(_) => None,
        }
    }

    fn try_bytes(&self) -> Option<Bytes> {
        match self {
            Payload::None => Some(Bytes::new()),
            Payload::Bytes(bytes) => Some(bytes.clone()),
            Payload::Stream(_) => None,
        }
    }
}
