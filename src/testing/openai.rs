//! An OpenAI-compatible backend: `POST /v1/chat/completions`, JSON or SSE, with
//! OpenAI's 429 and rate-limit headers.
//!
//! One backend of an LLM gateway that spreads chat completions over OpenAI-compatible
//! backends, cools down the ones answering 429 and streams SSE through (such as a
//! [`Pool`](crate::Pool)): it answers a chat completion, streams it as SSE when asked,
//! and over its quota answers 429 with `retry-after-ms`. What it answers, exactly, is
//! on [`OpenAiApi`].
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use http::Method;
//! use http_body_util::BodyExt;
//! use ratewise::testing::{json_request, OpenAiApi};
//! use serde_json::json;
//! use tower::ServiceExt;
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), ratewise::BoxError> {
//! let api = OpenAiApi::new().name("primary").reply("one two").stream_gap(Duration::from_millis(100));
//! let req = json_request(Method::POST, "/v1/chat/completions", &json!({"stream": true, "messages": []}))?;
//! let resp = api.router().oneshot(req).await?;
//! assert_eq!(resp.headers()["x-mock-backend"], "primary");
//! let mut body = resp.into_body();
//! let mut events = Vec::new();
//! while let Some(frame) = body.frame().await {
//!     if let Ok(data) = frame?.into_data() {
//!         events.push(String::from_utf8(data.to_vec())?);
//!     }
//! }
//! assert_eq!(events.len(), 4); // "one", " two", stop, [DONE]
//! assert_eq!(events[3], "data: [DONE]\n\n");
//! # Ok(()) }
//! ```

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::response::Response;
use axum::Router;
use bytes::Bytes;
use http::{header, HeaderValue, Method, StatusCode};
use http_body::Frame;
use serde_json::{json, Value};
use tokio::time::Sleep;

use super::common::{ceil_millis, handler, json, set_header, Core, Incoming, QuotaWindow};
use super::recorder::{Hits, Outcome};

/// Default calls per window: 60.
pub const DEFAULT_LIMIT: u32 = 60;
/// Default window: 60 s.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(60);
/// Default gap between SSE events: 50 ms.
pub const DEFAULT_STREAM_GAP: Duration = Duration::from_millis(50);
/// Default backend name.
pub const DEFAULT_NAME: &str = "openai";
/// The path served.
pub const PATH: &str = "/v1/chat/completions";
/// The header naming the backend.
pub const BACKEND_HEADER: &str = "x-mock-backend";

/// The OpenAI-compatible mock. Clones share state.
///
/// - within quota, `"stream": true` absent: 200 with a `chat.completion` body whose
///   reply is [`OpenAiApi::reply`] (default `"mock reply from <name>"`);
/// - within quota, `"stream": true`: 200 `text/event-stream`, one
///   `data: {chat.completion.chunk}\n\n` event per word of the reply, then one with
///   `finish_reason: "stop"`, then `data: [DONE]\n\n`. Events after the first are sent
///   [`OpenAiApi::stream_gap`] apart (default 50 ms, `tokio::time::sleep`), so a test
///   sees them arrive one by one;
/// - over quota: `429 {"error":{"message":"Rate limit reached for requests","type":"requests","param":null,"code":"rate_limit_exceeded"}}`
///   with `retry-after-ms` (milliseconds until the window closes, rounded up) and
///   `x-ratelimit-reset-requests` (the same wait written OpenAI's way, e.g. `1s`,
///   `250ms`, `6m0s`);
/// - a body that is not a JSON object: 400 `invalid_request_error`.
///
/// Every answer carries `x-mock-backend: <name>` (default `"openai"`), and 200/429 carry
/// `x-ratelimit-limit-requests`, `x-ratelimit-remaining-requests` and
/// `x-ratelimit-reset-requests`. The quota is a fixed window anchored at the first
/// admitted call (default 60 per 60 s); refused calls do not count.
#[derive(Clone)]
pub struct OpenAiApi {
    core: Core<State>,
}

#[derive(Debug)]
struct State {
    rate: QuotaWindow,
    name: String,
    reply: Option<String>,
    gap: Duration,
    served: u64,
}

impl fmt::Debug for OpenAiApi {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.core.debug(f, "OpenAiApi", |out, state| {
            out.field("name", &state.name)
                .field("quota", &state.rate.quota)
                .field("stream_gap", &state.gap);
        })
    }
}

impl Default for OpenAiApi {
    fn default() -> Self {
        Self::new()
    }
}

impl OpenAiApi {
    /// A mock with the defaults: [`DEFAULT_LIMIT`] calls per [`DEFAULT_WINDOW`], named
    /// [`DEFAULT_NAME`], streaming events [`DEFAULT_STREAM_GAP`] apart.
    pub fn new() -> Self {
        OpenAiApi {
            core: Core::new(State {
                rate: QuotaWindow::new(DEFAULT_LIMIT, DEFAULT_WINDOW),
                name: DEFAULT_NAME.to_owned(),
                reply: None,
                gap: DEFAULT_STREAM_GAP,
                served: 0,
            }),
        }
    }

    /// Calls admitted per window.
    pub fn limit(self, calls: u32) -> Self {
        self.core.state().rate.quota.limit = calls;
        self
    }

    /// The window length.
    pub fn window(self, window: Duration) -> Self {
        self.core.state().rate.quota.window = window;
        self
    }

    /// The backend's name, sent in `x-mock-backend` and in the default reply, so a pool
    /// test can tell which backend served.
    pub fn name(self, name: impl Into<String>) -> Self {
        self.core.state().name = name.into();
        self
    }

    /// The reply text (streamed one word per event).
    pub fn reply(self, text: impl Into<String>) -> Self {
        self.core.state().reply = Some(text.into());
        self
    }

    /// The gap between SSE events.
    pub fn stream_gap(self, gap: Duration) -> Self {
        self.core.state().gap = gap;
        self
    }

    /// Every request that reached the mock.
    pub fn hits(&self) -> Hits {
        self.core.hits().clone()
    }

    /// The axum router serving [`PATH`]; unknown paths answer 404.
    pub fn router(&self) -> Router {
        self.core.router([(PATH, handler(self, Self::handle))])
    }

    async fn handle(self, req: Request) -> Response {
        let mut resp = self
            .core
            .serve(req, &[Method::POST], |inc| self.answer(inc))
            .await;
        let name = self.core.state().name.clone();
        set_header(&mut resp, BACKEND_HEADER, name);
        resp
    }

    fn answer(&self, inc: &Incoming) -> (Outcome, Response) {
        let body = inc.json_object();
        let mut state = self.core.state();
        let quota = state.rate.quota;
        match (state.rate.admit(inc.now), body) {
            (Err(reset_in), _) => {
                let mut resp = json(
                    StatusCode::TOO_MANY_REQUESTS,
                    &json!({
                        "error": {
                            "message": "Rate limit reached for requests",
                            "type": "requests",
                            "param": null,
                            "code": "rate_limit_exceeded",
                        }
                    }),
                );
                rate_headers(&mut resp, quota.limit, 0, reset_in);
                set_header(
                    &mut resp,
                    "retry-after-ms",
                    ceil_millis(reset_in).to_string(),
                );
                (Outcome::RateLimited, resp)
            }
            (Ok(_), Err(why)) => (
                Outcome::Rejected,
                json(
                    StatusCode::BAD_REQUEST,
                    &json!({
                        "error": {
                            "message": format!("We could not parse the JSON body of your request: {why}"),
                            "type": "invalid_request_error",
                            "param": null,
                            "code": null,
                        }
                    }),
                ),
            ),
            (Ok((remaining, reset_in)), Ok(body)) => {
                state.served += 1;
                let n = state.served;
                let name = &state.name;
                let reply = state
                    .reply
                    .clone()
                    .unwrap_or_else(|| format!("mock reply from {name}"));
                let model = body
                    .get("model")
                    .cloned()
                    .unwrap_or_else(|| json!("gpt-mock"));
                let id = format!("chatcmpl-{name}-{n}");
                let mut resp = if body.get("stream").and_then(Value::as_bool) == Some(true) {
                    stream(&id, &model, &reply, state.gap)
                } else {
                    json(StatusCode::OK, &completion(&id, &model, &reply))
                };
                rate_headers(&mut resp, quota.limit, remaining, reset_in);
                (Outcome::Served, resp)
            }
        }
    }
}

fn rate_headers(resp: &mut Response, limit: u32, remaining: u32, reset_in: Duration) {
    set_header(resp, "x-ratelimit-limit-requests", limit.to_string());
    set_header(
        resp,
        "x-ratelimit-remaining-requests",
        remaining.to_string(),
    );
    set_header(resp, "x-ratelimit-reset-requests", reset_text(reset_in));
}

/// A wait written the way OpenAI's `x-ratelimit-reset-*` headers do: `250ms`, `1s`,
/// `1.5s`, `6m0s`, `1h0m0s` (rounded up to the millisecond).
pub fn reset_text(wait: Duration) -> String {
    let ms = ceil_millis(wait);
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let (h, m, rest) = (ms / 3_600_000, (ms / 60_000) % 60, ms % 60_000);
    let secs = if rest % 1000 == 0 {
        format!("{}s", rest / 1000)
    } else {
        let frac = format!("{:03}", rest % 1000);
        format!("{}.{}s", rest / 1000, frac.trim_end_matches('0'))
    };
    match (h, m) {
        (0, 0) => secs,
        (0, m) => format!("{m}m{secs}"),
        (h, m) => format!("{h}h{m}m{secs}"),
    }
}

fn completion(id: &str, model: &Value, reply: &str) -> Value {
    json!({
        "id": id,
        "object": "chat.completion",
        "created": 0,
        "model": model,
        "choices": [{
            "index": 0,
            "message": { "role": "assistant", "content": reply },
            "finish_reason": "stop",
        }],
        "usage": { "prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0 },
    })
}

fn chunk(id: &str, model: &Value, delta: Value, finish: Value) -> Bytes {
    let event = json!({
        "id": id,
        "object": "chat.completion.chunk",
        "created": 0,
        "model": model,
        "choices": [{ "index": 0, "delta": delta, "finish_reason": finish }],
    });
    Bytes::from(format!("data: {event}\n\n"))
}

fn stream(id: &str, model: &Value, reply: &str, gap: Duration) -> Response {
    let mut events: VecDeque<Bytes> = reply
        .split_whitespace()
        .enumerate()
        .map(|(i, word)| {
            let piece = if i == 0 {
                word.to_owned()
            } else {
                format!(" {word}")
            };
            chunk(id, model, json!({ "content": piece }), Value::Null)
        })
        .collect();
    events.push_back(chunk(id, model, json!({}), json!("stop")));
    events.push_back(Bytes::from_static(b"data: [DONE]\n\n"));
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
    sleep: Option<Pin<Box<Sleep>>>,
}

impl http_body::Body for SseBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        if let Some(sleep) = this.sleep.as_mut() {
            ready!(sleep.as_mut().poll(cx));
            this.sleep = None;
        }
        let Some(event) = this.events.pop_front() else {
            return Poll::Ready(None);
        };
        if !this.events.is_empty() && !this.gap.is_zero() {
            this.sleep = Some(Box::pin(tokio::time::sleep(this.gap)));
        }
        Poll::Ready(Some(Ok(Frame::data(event))))
    }

    fn is_end_stream(&self) -> bool {
        self.events.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::reset_text;
    use std::time::Duration;

    #[test]
    fn reset_text_reads_like_openai() {
        assert_eq!(reset_text(Duration::from_millis(250)), "250ms");
        assert_eq!(reset_text(Duration::from_nanos(1)), "1ms");
        assert_eq!(reset_text(Duration::from_secs(1)), "1s");
        assert_eq!(reset_text(Duration::from_millis(1500)), "1.5s");
        assert_eq!(reset_text(Duration::from_millis(59_999)), "59.999s");
        assert_eq!(reset_text(Duration::from_secs(360)), "6m0s");
        assert_eq!(reset_text(Duration::from_secs(3600)), "1h0m0s");
    }
}
