//! Plumbing shared by the mocks: their core (state, hits, router, handler outline),
//! fixed windows, token windows and usage, request reading, JSON answers.

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::response::Response;
use axum::routing::{any, MethodRouter};
use axum::Router;
use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use serde_json::Value;
use tokio::time::Instant;

use super::recorder::{Hits, Outcome};

/// The most body a mock reads; anything longer is answered 400.
pub(crate) const MAX_BODY: usize = 1024 * 1024;

pub(crate) use crate::util::lock;

/// N calls per window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Quota {
    pub(crate) limit: u32,
    pub(crate) window: Duration,
}

/// A fixed window anchored at the first admitted call: it opens at that call, admits
/// `limit` calls, and closes `window` later; the next call opens a fresh one. Calls
/// refused while the window is full do not count.
#[derive(Debug, Clone, Default)]
pub(crate) struct FixedWindow {
    start: Option<Instant>,
    used: u32,
}

impl FixedWindow {
    fn roll(&mut self, now: Instant, quota: Quota) {
        if let Some(start) = self.start {
            // An end that overflows the clock never comes.
            if start
                .checked_add(quota.window)
                .is_some_and(|end| now >= end)
            {
                self.reset();
            }
        }
    }

    /// Time until the current window closes (a full window if none is open).
    fn reset_in(&self, now: Instant, quota: Quota) -> Duration {
        match self.start.and_then(|s| s.checked_add(quota.window)) {
            Some(end) => end.saturating_duration_since(now),
            None if self.start.is_some() => Duration::MAX,
            None => quota.window,
        }
    }

    /// Whether a call now would be admitted; `Err` carries the time until the window
    /// closes. Consumes nothing.
    pub(crate) fn peek(&mut self, now: Instant, quota: Quota) -> Result<(), Duration> {
        self.roll(now, quota);
        if self.used < quota.limit {
            Ok(())
        } else {
            Err(self.reset_in(now, quota))
        }
    }

    /// Counts one admitted call (opening the window if needed); returns the calls left
    /// and the time until the window closes.
    pub(crate) fn take(&mut self, now: Instant, quota: Quota) -> (u32, Duration) {
        self.roll(now, quota);
        if self.start.is_none() {
            self.start = Some(now);
        }
        self.used = self.used.saturating_add(1);
        (
            quota.limit.saturating_sub(self.used),
            self.reset_in(now, quota),
        )
    }

    /// `peek` then `take`: `Ok((remaining, reset_in))` or `Err(reset_in)`.
    pub(crate) fn admit(
        &mut self,
        now: Instant,
        quota: Quota,
    ) -> Result<(u32, Duration), Duration> {
        self.peek(now, quota)?;
        Ok(self.take(now, quota))
    }

    /// Closes the window.
    pub(crate) fn reset(&mut self) {
        self.start = None;
        self.used = 0;
    }
}

/// A quota and the fixed window that counts calls against it: a mock's rate limit.
#[derive(Debug, Clone)]
pub(crate) struct QuotaWindow {
    pub(crate) quota: Quota,
    window: FixedWindow,
}

impl QuotaWindow {
    /// `limit` calls per `window`, no window open yet.
    pub(crate) fn new(limit: u32, window: Duration) -> Self {
        QuotaWindow {
            quota: Quota { limit, window },
            window: FixedWindow::default(),
        }
    }

    /// [`FixedWindow::admit`] against this quota.
    pub(crate) fn admit(&mut self, now: Instant) -> Result<(u32, Duration), Duration> {
        self.window.admit(now, self.quota)
    }

    /// Closes the window.
    pub(crate) fn reset(&mut self) {
        self.window.reset();
    }
}

/// A token budget counted over a sliding window (60 s unless set): each served
/// answer's `usage.total_tokens` counts from its arrival for one window. No limit:
/// every answer fits (and is still counted in [`served`](Self::served)).
#[derive(Debug, Clone)]
pub(crate) struct TokenWindow {
    pub(crate) limit: Option<u64>,
    /// The window's length.
    pub(crate) window: Duration,
    /// The answers within the last window, oldest first, and their sum.
    entries: VecDeque<(Instant, u64)>,
    used: u64,
    /// Every token served since the mock was made.
    pub(crate) served: u64,
}

/// The token window's default length: one minute.
pub(crate) const TOKEN_WINDOW: Duration = Duration::from_secs(60);

impl Default for TokenWindow {
    fn default() -> Self {
        TokenWindow {
            limit: None,
            window: TOKEN_WINDOW,
            entries: VecDeque::new(),
            used: 0,
            served: 0,
        }
    }
}

impl TokenWindow {
    fn expire(&mut self, now: Instant) {
        while let Some(&(at, tokens)) = self.entries.front() {
            if now.saturating_duration_since(at) < self.window {
                break;
            }
            self.entries.pop_front();
            self.used -= tokens;
        }
    }

    /// Whether `tokens` more fit at `now`: `Ok(remaining after them)`, or
    /// `Err((used, wait))`, the tokens in the window and the time until enough leave it
    /// (a whole window when `tokens` alone is over the limit). Takes nothing.
    pub(crate) fn check(&mut self, now: Instant, tokens: u64) -> Result<u64, (u64, Duration)> {
        self.expire(now);
        let Some(limit) = self.limit else {
            return Ok(u64::MAX);
        };
        let total = self.used + tokens;
        if total <= limit {
            return Ok(limit - total);
        }
        let must_leave = total - limit;
        let mut left = 0;
        let wait = self
            .entries
            .iter()
            .find(|(_, t)| {
                left += t;
                left >= must_leave
            })
            .filter(|_| tokens <= limit)
            .map_or(self.window, |(at, _)| {
                (*at + self.window).saturating_duration_since(now)
            });
        Err((self.used, wait))
    }

    /// Counts an answer of `tokens` at `now`.
    pub(crate) fn take(&mut self, now: Instant, tokens: u64) {
        self.expire(now);
        self.entries.push_back((now, tokens));
        self.used += tokens;
        self.served += tokens;
    }

    /// Time until the window is empty.
    pub(crate) fn reset_in(&self, now: Instant) -> Duration {
        self.entries.back().map_or(Duration::ZERO, |(at, _)| {
            (*at + self.window).saturating_duration_since(now)
        })
    }
}

/// `chars / 4`, rounded up, at least 1: the mocks' token count of a text.
pub(crate) fn tokens_of(chars: usize) -> u64 {
    (chars as u64).div_ceil(4).max(1)
}

/// The usage a mock reports for a chat completion, deterministic: prompt tokens from
/// the characters of the messages' text ([`tokens_of`]), completion tokens from the
/// reply's characters, at most `max_tokens` (or `max_completion_tokens`) when given.
pub(crate) fn usage(body: &serde_json::Map<String, Value>, reply: &str) -> Value {
    let text = |content: &Value| match content {
        Value::String(s) => s.chars().count(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .map(|s| s.chars().count())
            .sum(),
        _ => 0,
    };
    let chars: usize = body
        .get("messages")
        .and_then(Value::as_array)
        .map_or(0, |m| {
            m.iter().filter_map(|m| m.get("content")).map(text).sum()
        });
    let prompt = tokens_of(chars);
    let cap = ["max_completion_tokens", "max_tokens"]
        .iter()
        .find_map(|f| body.get(*f).and_then(Value::as_u64))
        .unwrap_or(u64::MAX)
        .max(1);
    let completion = tokens_of(reply.chars().count()).min(cap);
    serde_json::json!({
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    })
}

/// What every mock is made of: its state behind one lock (shared by every clone and
/// router of the mock) and the record of every request it got.
pub(crate) struct Core<S> {
    state: Arc<Mutex<S>>,
    hits: Hits,
}

impl<S> Clone for Core<S> {
    fn clone(&self) -> Self {
        Core {
            state: Arc::clone(&self.state),
            hits: self.hits.clone(),
        }
    }
}

impl<S> Core<S> {
    /// A core holding `state`, with an empty record starting now.
    pub(crate) fn new(state: S) -> Self {
        Core {
            state: Arc::new(Mutex::new(state)),
            hits: Hits::new(),
        }
    }

    /// Locks the state.
    pub(crate) fn state(&self) -> MutexGuard<'_, S> {
        lock(&self.state)
    }

    /// The record of every request that reached the mock.
    pub(crate) fn hits(&self) -> &Hits {
        &self.hits
    }

    /// The mock's `Debug`: `name { <what fields writes from the state>, hits: … }`.
    pub(crate) fn debug(
        &self,
        f: &mut fmt::Formatter<'_>,
        name: &str,
        fields: impl FnOnce(&mut fmt::DebugStruct<'_, '_>, &S),
    ) -> fmt::Result {
        let state = self.state();
        let mut out = f.debug_struct(name);
        fields(&mut out, &state);
        out.field("hits", &self.hits).finish()
    }

    /// A router serving `routes` and answering every other path with [`unrouted`].
    pub(crate) fn router(
        &self,
        routes: impl IntoIterator<Item = (&'static str, MethodRouter)>,
    ) -> Router {
        let hits = self.hits.clone();
        routes
            .into_iter()
            .fold(Router::new(), |router, (path, route)| {
                router.route(path, route)
            })
            .fallback(move |req: Request| unrouted(hits.clone(), req))
    }

    /// The outline of a routed handler: reads the request, answers a method not in
    /// `methods` with [`wrong_method`] and any other with `answer`, and records the hit.
    pub(crate) async fn serve(
        &self,
        req: Request,
        methods: &[Method],
        answer: impl FnOnce(&Incoming) -> (Outcome, Response),
    ) -> Response {
        let inc = Incoming::read(req).await;
        let (outcome, resp) = if methods.contains(&inc.method) {
            answer(&inc)
        } else {
            let allowed = methods
                .iter()
                .map(Method::as_str)
                .collect::<Vec<_>>()
                .join(", ");
            (Outcome::Rejected, wrong_method(&allowed))
        };
        let path = inc.path.clone();
        finish(&self.hits, &inc, path, outcome, resp)
    }
}

/// An axum route (any method) handing each request to `handle`, with a clone of `mock`.
pub(crate) fn handler<M, F, Fut>(mock: &M, handle: F) -> MethodRouter
where
    M: Clone + Send + Sync + 'static,
    F: Fn(M, Request) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response> + Send + 'static,
{
    let mock = mock.clone();
    any(move |req: Request| handle(mock.clone(), req))
}

/// A request as a mock handler sees it: read in full, never failing.
#[derive(Debug)]
pub(crate) struct Incoming {
    pub(crate) now: Instant,
    pub(crate) method: Method,
    pub(crate) path: String,
    pub(crate) headers: HeaderMap,
    /// The body, or why it could not be read.
    pub(crate) body: Result<Bytes, String>,
}

impl Incoming {
    /// Stamps the arrival time, then reads the body (at most [`MAX_BODY`]).
    pub(crate) async fn read(req: Request) -> Incoming {
        let now = Instant::now();
        let (parts, body) = req.into_parts();
        let body = axum::body::to_bytes(body, MAX_BODY)
            .await
            .map_err(|e| format!("could not read the request body: {e}"));
        Incoming {
            now,
            method: parts.method,
            path: parts.uri.path().to_owned(),
            headers: parts.headers,
            body,
        }
    }

    /// The body as a JSON object, or a message saying why not.
    pub(crate) fn json_object(&self) -> Result<serde_json::Map<String, Value>, String> {
        let bytes = self.body.as_ref().map_err(Clone::clone)?;
        if bytes.is_empty() {
            return Err("the request body is empty; a JSON object was expected".into());
        }
        match serde_json::from_slice::<Value>(bytes) {
            Ok(Value::Object(map)) => Ok(map),
            Ok(_) => Err("the request body is JSON but not an object".into()),
            Err(e) => Err(format!("the request body is not valid JSON: {e}")),
        }
    }

    /// A header as text, when present and printable.
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// A JSON answer.
pub(crate) fn json(status: StatusCode, value: &Value) -> Response {
    let body = serde_json::to_vec(value).unwrap_or_default();
    let mut resp = Response::new(Body::from(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// Adds a header whose value is plain ASCII we formatted ourselves.
pub(crate) fn set_header(resp: &mut Response, name: &'static str, value: String) {
    if let Ok(v) = HeaderValue::from_str(&value) {
        resp.headers_mut().insert(name, v);
    }
}

pub(crate) use crate::util::ceil_secs;

/// Milliseconds, rounded up, saturating.
pub(crate) fn ceil_millis(d: Duration) -> u64 {
    let ms = d.as_millis() + u128::from(d.as_nanos() % 1_000_000 > 0);
    u64::try_from(ms).unwrap_or(u64::MAX)
}

/// The outcome a status stands for when the handler did not say.
pub(crate) fn outcome_of(status: StatusCode) -> Outcome {
    if status.is_success() {
        Outcome::Served
    } else {
        Outcome::Rejected
    }
}

/// Records a request and hands back the response.
pub(crate) fn finish(
    hits: &Hits,
    inc: &Incoming,
    path: String,
    outcome: Outcome,
    resp: Response,
) -> Response {
    hits.record(inc.now, inc.method.clone(), path, resp.status(), outcome);
    resp
}

/// The 404/405 answer every mock gives to what it does not route, recorded.
async fn unrouted(hits: Hits, req: Request) -> Response {
    let inc = Incoming::read(req).await;
    let resp = json(
        StatusCode::NOT_FOUND,
        &serde_json::json!({ "error": format!("the mock has no route for {} {}", inc.method, inc.path) }),
    );
    let path = inc.path.clone();
    finish(&hits, &inc, path, Outcome::Rejected, resp)
}

/// The 405 answer for a routed path called with the wrong method.
fn wrong_method(allowed: &str) -> Response {
    let mut resp = json(
        StatusCode::METHOD_NOT_ALLOWED,
        &serde_json::json!({ "error": format!("method not allowed; use {allowed}") }),
    );
    set_header(&mut resp, "allow", allowed.to_owned());
    resp
}

/// A `200` `text/event-stream` answer that sends `events` one frame at a time, `gap`
/// apart (the GLM and OpenAI-like mocks' streams).
pub(crate) fn sse_response(events: VecDeque<Bytes>, gap: Duration) -> Response {
    let mut resp = Response::new(Body::new(SseBody {
        events,
        gap,
        sleep: None,
    }));
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}

/// Hands out its events one frame at a time, sleeping `gap` between them.
struct SseBody {
    events: VecDeque<Bytes>,
    gap: Duration,
    sleep: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

impl http_body::Body for SseBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        if let Some(sleep) = this.sleep.as_mut() {
            std::task::ready!(sleep.as_mut().poll(cx));
            this.sleep = None;
        }
        let Some(event) = this.events.pop_front() else {
            return std::task::Poll::Ready(None);
        };
        if !this.events.is_empty() && !this.gap.is_zero() {
            this.sleep = Some(Box::pin(tokio::time::sleep(this.gap)));
        }
        std::task::Poll::Ready(Some(Ok(http_body::Frame::data(event))))
    }

    fn is_end_stream(&self) -> bool {
        self.events.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const Q: Quota = Quota {
        limit: 2,
        window: Duration::from_secs(10),
    };

    #[tokio::test(start_paused = true)]
    async fn fixed_window_opens_at_first_call_and_closes_after_window() {
        let mut w = FixedWindow::default();
        let t0 = Instant::now();
        assert_eq!(w.admit(t0, Q), Ok((1, Duration::from_secs(10))));
        let t1 = t0 + Duration::from_secs(3);
        assert_eq!(w.admit(t1, Q), Ok((0, Duration::from_secs(7))));
        assert_eq!(w.admit(t1, Q), Err(Duration::from_secs(7)));
        let t2 = t0 + Duration::from_millis(9_999);
        assert_eq!(w.admit(t2, Q), Err(Duration::from_millis(1)));
        let t3 = t0 + Duration::from_secs(10);
        assert_eq!(w.admit(t3, Q), Ok((1, Duration::from_secs(10))));
    }

    #[tokio::test(start_paused = true)]
    async fn zero_limit_always_refuses_and_huge_window_never_overflows() {
        let mut w = FixedWindow::default();
        let now = Instant::now();
        let q0 = Quota {
            limit: 0,
            window: Duration::from_secs(1),
        };
        assert_eq!(w.admit(now, q0), Err(Duration::from_secs(1)));
        let big = Quota {
            limit: 1,
            window: Duration::MAX,
        };
        assert!(w.admit(now, big).is_ok());
        assert_eq!(
            w.admit(now + Duration::from_secs(1 << 40), big),
            Err(Duration::MAX)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_token_window_slides_over_sixty_seconds() {
        let mut w = TokenWindow {
            limit: Some(100),
            ..TokenWindow::default()
        };
        let t0 = Instant::now();
        assert_eq!(w.check(t0, 60), Ok(40));
        w.take(t0, 60);
        let t1 = t0 + Duration::from_secs(20);
        w.take(t1, 30);
        // 20 more need the 60 of t0 to leave: at 60 s.
        assert_eq!(w.check(t1, 20), Err((90, Duration::from_secs(40))));
        // More than the whole budget never fits.
        assert_eq!(w.check(t1, 101), Err((90, TOKEN_WINDOW)));
        let t2 = t0 + Duration::from_secs(60);
        assert_eq!(w.check(t2, 70), Ok(0));
        assert_eq!(w.reset_in(t2), Duration::from_secs(20));
        assert_eq!(w.served, 90);
    }

    #[tokio::test(start_paused = true)]
    async fn a_token_window_can_be_shorter() {
        let mut w = TokenWindow {
            limit: Some(100),
            window: Duration::from_secs(2),
            ..TokenWindow::default()
        };
        let t0 = Instant::now();
        w.take(t0, 80);
        let t1 = t0 + Duration::from_millis(500);
        assert_eq!(w.check(t1, 30), Err((80, Duration::from_millis(1_500))));
        assert_eq!(w.check(t1, 101), Err((80, Duration::from_secs(2))));
        assert_eq!(w.check(t0 + Duration::from_secs(2), 100), Ok(0));
    }

    #[test]
    fn usage_counts_characters_by_four_and_caps_at_max_tokens() {
        let body = serde_json::json!({
            "messages": [
                {"role": "system", "content": "abcd"},
                {"role": "user", "content": [{"type": "text", "text": "efghi"}]},
            ],
            "max_tokens": 2,
        });
        let body = body.as_object().unwrap();
        // 9 characters: 3 prompt tokens; a 20-character reply is 5, capped at 2.
        let u = usage(body, "twenty characters!!!");
        assert_eq!(u["prompt_tokens"], 3);
        assert_eq!(u["completion_tokens"], 2);
        assert_eq!(u["total_tokens"], 5);
        let empty = serde_json::Map::new();
        assert_eq!(usage(&empty, "")["total_tokens"], 2);
    }

    #[test]
    fn rounding_up() {
        // `ceil_secs` is the crate's (`util`), tested there.
        assert_eq!(ceil_millis(Duration::from_nanos(1)), 1);
        assert_eq!(ceil_millis(Duration::from_millis(1500)), 1500);
        assert_eq!(ceil_millis(Duration::MAX), u64::MAX);
    }
}
