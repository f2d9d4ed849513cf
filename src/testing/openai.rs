//! An OpenAI-compatible backend: `POST /v1/chat/completions`, JSON or SSE, with
//! OpenAI's 429 and rate-limit headers.
//!
//! One backend of an LLM gateway that spreads chat completions over OpenAI-compatible
//! backends, cools down the ones answering 429 and streams SSE through (such as a
//! [`Pool`](crate::Pool)): it answers a chat completion, streams it as SSE when asked,
//! and over its quota (requests, or [tokens per minute](OpenAiApi::tpm)) answers 429
//! with `retry-after-ms`. What it answers, exactly, is on [`OpenAiApi`].
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
use std::time::Duration;

use axum::extract::Request;
use axum::response::Response;
use axum::Router;
use bytes::Bytes;
use http::{Method, StatusCode};
use serde_json::{json, Value};

use super::common::{
    ceil_millis, handler, json, set_header, sse_response, usage, Core, Incoming, QuotaWindow,
    TokenWindow,
};
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
///   reply is [`OpenAiApi::reply`] (default `"mock reply from <name>"`) and whose
///   `usage` is deterministic: prompt tokens are the characters of the messages' text
///   divided by 4, rounded up (at least 1); completion tokens the reply's, at most
///   `max_tokens` (or `max_completion_tokens`) when given;
/// - within quota, `"stream": true`: 200 `text/event-stream`, one
///   `data: {chat.completion.chunk}\n\n` event per word of the reply, then one with
///   `finish_reason: "stop"`, then `data: [DONE]\n\n`. With
///   `"stream_options": {"include_usage": true}`, as OpenAI does, every chunk carries
///   `"usage": null` and one more chunk, with `"choices": []` and the usage, comes
///   before `[DONE]`. Events after the first are sent [`OpenAiApi::stream_gap`] apart
///   (default 50 ms, `tokio::time::sleep`), so a test sees them arrive one by one;
/// - over quota: `429 {"error":{"message":"Rate limit reached for requests","type":"requests","param":null,"code":"rate_limit_exceeded"}}`
///   with `retry-after-ms` (milliseconds until the window closes, rounded up) and
///   `x-ratelimit-reset-requests` (the same wait written OpenAI's way, e.g. `1s`,
///   `250ms`, `6m0s`);
/// - over its [tokens per minute](OpenAiApi::tpm), when set (an answer whose
///   `usage.total_tokens` would bring the last 60 s over the budget): `429` with
///   `"type":"tokens"`, OpenAI's message (`… on tokens per min (TPM): Limit 1000,
///   Used 900, Requested 200. Please try again in 6s.`), `retry-after-ms` and
///   `x-ratelimit-*-tokens`; the call takes nothing from the request quota;
/// - a body that is not a JSON object: 400 `invalid_request_error`.
///
/// Every answer carries `x-mock-backend: <name>` (default `"openai"`), and 200/429 carry
/// `x-ratelimit-limit-requests`, `x-ratelimit-remaining-requests` and
/// `x-ratelimit-reset-requests` (and, with a token budget, the `-tokens` three). The
/// quota is a fixed window anchored at the first admitted call (default 60 per 60 s);
/// refused calls do not count. [`tokens_served`](OpenAiApi::tokens_served) sums the
/// usage of every answer served.
#[derive(Clone)]
pub struct OpenAiApi {
    core: Core<State>,
}

#[derive(Debug)]
struct State {
    rate: QuotaWindow,
    tokens: TokenWindow,
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
                tokens: TokenWindow::default(),
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

    /// A budget of `tokens` per minute (none by default): an answer whose
    /// `usage.total_tokens` would bring the tokens served in the last 60 s (a sliding
    /// window, on tokio's clock; see [`tpm_window`](Self::tpm_window)) over it gets
    /// OpenAI's token 429 instead.
    pub fn tpm(self, tokens: u32) -> Self {
        self.core.state().tokens.limit = Some(u64::from(tokens));
        self
    }

    /// The window of the [`tpm`](Self::tpm) budget (default 60 s): a test can pace a
    /// run of several windows in seconds, e.g. 300 tokens per 2 s.
    pub fn tpm_window(self, window: Duration) -> Self {
        self.core.state().tokens.window = window;
        self
    }

    /// The sum of `usage.total_tokens` over every answer served.
    pub fn tokens_served(&self) -> u64 {
        self.core.state().tokens.served
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
        let name = state.name.clone();
        let reply = state
            .reply
            .clone()
            .unwrap_or_else(|| format!("mock reply from {name}"));
        let usage = body.as_ref().ok().map(|body| usage(body, &reply));
        let tokens = usage
            .as_ref()
            .and_then(|u| u["total_tokens"].as_u64())
            .unwrap_or(0);
        // The token budget first: a call refused for tokens takes no request.
        let token_check = match &usage {
            Some(_) => state.tokens.check(inc.now, tokens),
            None => Ok(u64::MAX),
        };
        if let (Err((used, wait)), Some(limit)) = (token_check, state.tokens.limit) {
            let model = body
                .as_ref()
                .ok()
                .and_then(|b| b.get("model"))
                .and_then(Value::as_str)
                .unwrap_or("gpt-mock");
            let message = format!(
                "Rate limit reached for {model} in organization org-mock on tokens per min (TPM): \
                 Limit {limit}, Used {used}, Requested {tokens}. Please try again in {}.",
                reset_text(wait)
            );
            let mut resp = json(
                StatusCode::TOO_MANY_REQUESTS,
                &json!({
                    "error": {
                        "message": message,
                        "type": "tokens",
                        "param": null,
                        "code": "rate_limit_exceeded",
                    }
                }),
            );
            token_headers(&mut resp, limit, limit.saturating_sub(used), wait);
            set_header(&mut resp, "retry-after-ms", ceil_millis(wait).to_string());
            return (Outcome::RateLimited, resp);
        }
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
                state.tokens.take(inc.now, tokens);
                let n = state.served;
                let usage = usage.unwrap_or(Value::Null);
                let model = body
                    .get("model")
                    .cloned()
                    .unwrap_or_else(|| json!("gpt-mock"));
                let id = format!("chatcmpl-{name}-{n}");
                let mut resp = if body.get("stream").and_then(Value::as_bool) == Some(true) {
                    let include_usage = body
                        .get("stream_options")
                        .and_then(|o| o.get("include_usage"))
                        .and_then(Value::as_bool)
                        == Some(true);
                    let usage = include_usage.then_some(usage);
                    stream(&id, &model, &reply, usage, state.gap)
                } else {
                    json(StatusCode::OK, &completion(&id, &model, &reply, usage))
                };
                rate_headers(&mut resp, quota.limit, remaining, reset_in);
                if let Some(limit) = state.tokens.limit {
                    let left = state.tokens.check(inc.now, 0).unwrap_or(0);
                    token_headers(&mut resp, limit, left, state.tokens.reset_in(inc.now));
                }
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

fn token_headers(resp: &mut Response, limit: u64, remaining: u64, reset_in: Duration) {
    set_header(resp, "x-ratelimit-limit-tokens", limit.to_string());
    set_header(resp, "x-ratelimit-remaining-tokens", remaining.to_string());
    set_header(resp, "x-ratelimit-reset-tokens", reset_text(reset_in));
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

fn completion(id: &str, model: &Value, reply: &str, usage: Value) -> Value {
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
        "usage": usage,
    })
}

/// One chunk event; with `usage` set (`include_usage`), its `usage` field too.
fn chunk(id: &str, model: &Value, choices: Value, usage: Option<&Value>) -> Bytes {
    let mut event = json!({
        "id": id,
        "object": "chat.completion.chunk",
        "created": 0,
        "model": model,
        "choices": choices,
    });
    if let Some(usage) = usage {
        event["usage"] = usage.clone();
    }
    Bytes::from(format!("data: {event}\n\n"))
}

/// The SSE answer: a chunk per word, the `stop` chunk, then (when `usage` is given,
/// `include_usage`) a chunk with no choices and the usage, while the others carry
/// `"usage": null`; then `[DONE]`.
fn stream(id: &str, model: &Value, reply: &str, usage: Option<Value>, gap: Duration) -> Response {
    let null = usage.as_ref().map(|_| Value::Null);
    let choice = |delta: Value, finish: Value| json!([{ "index": 0, "delta": delta, "finish_reason": finish }]);
    let mut events: VecDeque<Bytes> = reply
        .split_whitespace()
        .enumerate()
        .map(|(i, word)| {
            let piece = if i == 0 {
                word.to_owned()
            } else {
                format!(" {word}")
            };
            let choices = choice(json!({ "content": piece }), Value::Null);
            chunk(id, model, choices, null.as_ref())
        })
        .collect();
    events.push_back(chunk(
        id,
        model,
        choice(json!({}), json!("stop")),
        null.as_ref(),
    ));
    if let Some(usage) = &usage {
        events.push_back(chunk(id, model, json!([]), Some(usage)));
    }
    events.push_back(Bytes::from_static(b"data: [DONE]\n\n"));
    sse_response(events, gap)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{body_json, json_request};
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    /// 40 characters of prompt (10 tokens) and a 16-character reply (4 tokens): 14.
    fn call(stream: bool, include_usage: bool) -> http::Request<http_body_util::Full<Bytes>> {
        let mut body = json!({
            "model": "gpt-mock",
            "messages": [{"role": "user", "content": "x".repeat(40)}],
            "stream": stream,
        });
        if include_usage {
            body["stream_options"] = json!({"include_usage": true});
        }
        json_request(Method::POST, PATH, &body).unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn a_token_budget_refuses_the_answer_that_would_pass_it() {
        let api = OpenAiApi::new().reply("sixteen chars!!!").tpm(30);
        for _ in 0..2 {
            let resp = api.router().oneshot(call(false, false)).await.unwrap();
            assert_eq!(resp.status(), StatusCode::OK);
            assert_eq!(resp.headers()["x-ratelimit-limit-tokens"], "30");
            let body = body_json(resp.into_body()).await.unwrap();
            assert_eq!(body["usage"]["prompt_tokens"], 10);
            assert_eq!(body["usage"]["total_tokens"], 14);
        }
        tokio::time::advance(Duration::from_secs(15)).await;
        // 28 used in the last minute: 14 more would make 42.
        let resp = api.router().oneshot(call(false, false)).await.unwrap();
        assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(resp.headers()["retry-after-ms"], "45000");
        assert_eq!(resp.headers()["x-ratelimit-remaining-tokens"], "2");
        let body = body_json(resp.into_body()).await.unwrap();
        assert_eq!(body["error"]["type"], "tokens");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(
            message.contains("(TPM): Limit 30, Used 28, Requested 14. Please try again in 45s."),
            "{message}"
        );
        // The refusal took no request from the request quota, and no token.
        assert_eq!(api.tokens_served(), 28);
        tokio::time::advance(Duration::from_secs(45)).await;
        let resp = api.router().oneshot(call(false, false)).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(api.tokens_served(), 42);
        assert_eq!(api.hits().count_of(Outcome::RateLimited), 1);
    }

    async fn events(resp: Response) -> Vec<String> {
        let mut body = resp.into_body();
        let mut events = Vec::new();
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame.unwrap().into_data() {
                events.push(String::from_utf8(data.to_vec()).unwrap());
            }
        }
        events
    }

    fn parse(event: &str) -> Value {
        serde_json::from_str(event.strip_prefix("data: ").unwrap().trim_end()).unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_carries_usage_in_one_last_chunk_when_asked() {
        let api = OpenAiApi::new().reply("sixteen chars!!!");
        let asked = events(api.router().oneshot(call(true, true)).await.unwrap()).await;
        // "sixteen", " chars!!!", stop, usage, [DONE].
        assert_eq!(asked.len(), 5, "{asked:?}");
        for e in &asked[..3] {
            assert_eq!(parse(e)["usage"], Value::Null, "{e}");
        }
        let last = parse(&asked[3]);
        assert_eq!(last["choices"], json!([]));
        assert_eq!(last["usage"]["total_tokens"], 14);
        assert_eq!(asked[4], "data: [DONE]\n\n");

        // Not asked: no usage anywhere, as OpenAI does.
        let plain = events(api.router().oneshot(call(true, false)).await.unwrap()).await;
        assert_eq!(plain.len(), 4, "{plain:?}");
        assert!(plain.iter().all(|e| !e.contains("usage")), "{plain:?}");
        // Both answers counted their usage.
        assert_eq!(api.tokens_served(), 28);
    }

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
