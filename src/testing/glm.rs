//! GLM / Zhipu chat completions: N calls per window, then 429 with error code 1302.
//!
//! The API answers **429**
//! `{"error":{"code":"1302","message":"您的账户已达到速率限制,请您控制请求频率"}}`, and the
//! team limited itself to 50 calls per 60 s. This mock serves
//! `POST /api/paas/v4/chat/completions`:
//!
//! - within quota: 200 with a chat-completion body whose reply is
//!   `"glm mock reply #<n>"` (n counts served calls from 1) and whose `usage` is
//!   deterministic: prompt tokens are the characters of the messages' text divided by
//!   4, rounded up (at least 1), completion tokens the reply's, at most `max_tokens`;
//! - within quota with `"stream": true`: 200 `text/event-stream`, GLM's SSE: one
//!   `data: {chunk}` event per word of that reply, one with `finish_reason: "stop"`
//!   and the usage, then `data: [DONE]`, each event its own body frame, sent
//!   [`GlmApi::stream_gap`] apart (default 50 ms, on tokio's clock);
//! - over quota, over its [tokens per minute](GlmApi::tpm) when set (an answer whose
//!   `usage.total_tokens` would bring the last 60 s over the budget), or always when
//!   [`GlmApi::always_rate_limited`] is on: the 429 above, with no `Retry-After` (GLM
//!   sends none);
//! - a body that is not a JSON object: `400 {"error":{"code":"1214",…}}` (the code is
//!   illustrative).
//!
//! The quota is a fixed window anchored at the first admitted call (default 50 per
//! 60 s); refused calls do not count. [`GlmApi::tokens_served`] sums the usage of every
//! answer served.
//!
//! # Example
//!
//! ```
//! use http::Method;
//! use ratewise::testing::{body_json, json_request, GlmApi};
//! use serde_json::json;
//! use tower::ServiceExt;
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), ratewise::BoxError> {
//! let glm = GlmApi::new().always_rate_limited(true); // a backend that never serves
//! let req = json_request(Method::POST, "/api/paas/v4/chat/completions", &json!({"messages": []}))?;
//! let resp = glm.router().oneshot(req).await?;
//! assert_eq!(resp.status(), 429);
//! assert_eq!(body_json(resp.into_body()).await?["error"]["code"], "1302");
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

use super::common::{handler, json, sse_response, usage, Core, Incoming, QuotaWindow, TokenWindow};
use super::recorder::{Hits, Outcome};

/// Default calls per window: 50 (the self-imposed limit above).
pub const DEFAULT_LIMIT: u32 = 50;
/// Default window: 60 s (the self-imposed limit above).
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(60);
/// The path served.
pub const PATH: &str = "/api/paas/v4/chat/completions";
/// The `error.code` of the over-limit body.
pub const RATE_LIMIT_CODE: &str = "1302";
/// The `error.message` of the over-limit body, as the real API sends it.
pub const RATE_LIMIT_MESSAGE: &str = "您的账户已达到速率限制,请您控制请求频率";
/// Default gap between SSE events: 50 ms.
pub const DEFAULT_STREAM_GAP: Duration = Duration::from_millis(50);

/// The GLM mock. Clones share state.
#[derive(Clone)]
pub struct GlmApi {
    core: Core<State>,
}

#[derive(Debug)]
struct State {
    rate: QuotaWindow,
    tokens: TokenWindow,
    always_limited: bool,
    served: u64,
    gap: Duration,
}

impl fmt::Debug for GlmApi {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.core.debug(f, "GlmApi", |out, state| {
            out.field("quota", &state.rate.quota)
                .field("always_rate_limited", &state.always_limited)
                .field("stream_gap", &state.gap);
        })
    }
}

impl Default for GlmApi {
    fn default() -> Self {
        Self::new()
    }
}

impl GlmApi {
    /// A mock with the defaults: [`DEFAULT_LIMIT`] calls per [`DEFAULT_WINDOW`].
    pub fn new() -> Self {
        GlmApi {
            core: Core::new(State {
                rate: QuotaWindow::new(DEFAULT_LIMIT, DEFAULT_WINDOW),
                tokens: TokenWindow::default(),
                always_limited: false,
                served: 0,
                gap: DEFAULT_STREAM_GAP,
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

    /// The gap between the events of a streamed answer (`"stream": true`), so a test
    /// can tell a stream passed through from one buffered on the way.
    pub fn stream_gap(self, gap: Duration) -> Self {
        self.core.state().gap = gap;
        self
    }

    /// A budget of `tokens` per minute (none by default): an answer whose
    /// `usage.total_tokens` would bring the tokens served in the last 60 s (a sliding
    /// window, on tokio's clock; see [`tpm_window`](Self::tpm_window)) over it gets the
    /// 1302 429 instead, and takes nothing from the call quota.
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

    /// Answer every call with the 1302 429, whatever the quota says.
    pub fn always_rate_limited(self, on: bool) -> Self {
        self.set_always_rate_limited(on);
        self
    }

    /// Switches "always 1302" on or off from now on (shared by every clone).
    pub fn set_always_rate_limited(&self, on: bool) {
        self.core.state().always_limited = on;
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
        self.core
            .serve(req, &[Method::POST], |inc| self.answer(inc))
            .await
    }

    fn answer(&self, inc: &Incoming) -> (Outcome, Response) {
        let body = inc.json_object();
        let (admitted, gap) = {
            let mut state = self.core.state();
            // The reply and usage this call would get (the next served number).
            let reply = format!("glm mock reply #{}", state.served + 1);
            let usage = body.as_ref().ok().map(|body| usage(body, &reply));
            let tokens = usage
                .as_ref()
                .and_then(|u| u["total_tokens"].as_u64())
                .unwrap_or(0);
            let over_tokens = usage.is_some() && state.tokens.check(inc.now, tokens).is_err();
            let admitted =
                if state.always_limited || over_tokens || state.rate.admit(inc.now).is_err() {
                    None
                } else if let Some(usage) = usage {
                    state.served += 1;
                    state.tokens.take(inc.now, tokens);
                    Some((state.served, usage))
                } else {
                    Some((0, Value::Null))
                };
            (admitted, state.gap)
        };
        match (admitted, body) {
            (None, _) => (
                Outcome::RateLimited,
                json(
                    StatusCode::TOO_MANY_REQUESTS,
                    &json!({ "error": { "code": RATE_LIMIT_CODE, "message": RATE_LIMIT_MESSAGE } }),
                ),
            ),
            (Some(_), Err(why)) => (
                Outcome::Rejected,
                json(
                    StatusCode::BAD_REQUEST,
                    &json!({ "error": { "code": "1214", "message": why } }),
                ),
            ),
            (Some((n, usage)), Ok(body)) => {
                let model = body.get("model").cloned().unwrap_or_else(|| json!("glm-4"));
                let resp = if body.get("stream").and_then(Value::as_bool) == Some(true) {
                    stream(n, &model, usage, gap)
                } else {
                    json(StatusCode::OK, &completion(n, &model, usage))
                };
                (Outcome::Served, resp)
            }
        }
    }
}

fn completion(n: u64, model: &Value, usage: Value) -> Value {
    json!({
        "id": format!("glm-mock-{n}"),
        "request_id": format!("glm-mock-{n}"),
        "created": 0,
        "model": model,
        "choices": [{
            "index": 0,
            "finish_reason": "stop",
            "message": { "role": "assistant", "content": format!("glm mock reply #{n}") },
        }],
        "usage": usage,
    })
}

/// GLM's SSE for reply `n`: a chunk per word, the `stop` chunk with the usage, `[DONE]`.
fn stream(n: u64, model: &Value, usage: Value, gap: Duration) -> Response {
    let event = |choice: Value, usage: Option<Value>| {
        let mut chunk = json!({ "id": format!("glm-mock-{n}"), "created": 0, "model": model, "choices": [choice] });
        if let Some(usage) = usage {
            chunk["usage"] = usage;
        }
        Bytes::from(format!("data: {chunk}\n\n"))
    };
    let reply = format!("glm mock reply #{n}");
    let mut events: VecDeque<Bytes> = reply
        .split_inclusive(' ')
        .map(|word| {
            let delta = json!({ "role": "assistant", "content": word });
            event(json!({ "index": 0, "delta": delta }), None)
        })
        .collect();
    let delta = json!({ "role": "assistant", "content": "" });
    events.push_back(event(
        json!({ "index": 0, "finish_reason": "stop", "delta": delta }),
        Some(usage),
    ));
    events.push_back(Bytes::from_static(b"data: [DONE]\n\n"));
    sse_response(events, gap)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::json_request;
    use http_body_util::BodyExt;
    use tokio::time::Instant;
    use tower::ServiceExt;

    /// A token budget answers 1302 to the call whose usage would pass it; the usage is
    /// in the body, and in the last chunk of a stream.
    #[tokio::test(start_paused = true)]
    async fn a_token_budget_answers_1302_and_usage_is_always_reported() {
        // 20 characters: 5 prompt tokens; "glm mock reply #1" is 17 characters: 5.
        let glm = GlmApi::new().tpm(25).stream_gap(Duration::ZERO);
        let call = |stream: bool| {
            let body = json!({"messages": [{"role": "user", "content": "y".repeat(20)}], "stream": stream});
            json_request(Method::POST, PATH, &body).unwrap()
        };
        let resp = glm.router().oneshot(call(false)).await.unwrap();
        let body = crate::testing::body_json(resp.into_body()).await.unwrap();
        assert_eq!(body["usage"]["total_tokens"], 10);
        let resp = glm.router().oneshot(call(true)).await.unwrap();
        let text = crate::testing::body_bytes(resp.into_body()).await.unwrap();
        let text = String::from_utf8(text.to_vec()).unwrap();
        let last = text
            .split("\n\n")
            .filter(|e| e.starts_with("data: {"))
            .last()
            .unwrap();
        let chunk: Value = serde_json::from_str(last.strip_prefix("data: ").unwrap()).unwrap();
        assert_eq!(chunk["usage"]["total_tokens"], 10);
        // 20 used: 10 more would make 30.
        tokio::time::advance(Duration::from_secs(30)).await;
        let resp = glm.router().oneshot(call(false)).await.unwrap();
        assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
        let body = crate::testing::body_json(resp.into_body()).await.unwrap();
        assert_eq!(body["error"]["code"], RATE_LIMIT_CODE);
        assert_eq!(glm.tokens_served(), 20);
        // The window slides: at 60 s the first answer's 10 leave it.
        tokio::time::advance(Duration::from_secs(30)).await;
        let resp = glm.router().oneshot(call(false)).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(glm.tokens_served(), 30);
    }

    /// `"stream": true` gets GLM's SSE, one event per frame, `stream_gap` apart.
    #[tokio::test(start_paused = true)]
    async fn a_streamed_answer_sends_its_events_a_gap_apart() {
        let gap = Duration::from_millis(300);
        let glm = GlmApi::new().stream_gap(gap);
        let req =
            json_request(Method::POST, PATH, &json!({"stream": true, "messages": []})).unwrap();
        let start = Instant::now();
        let resp = glm.router().oneshot(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(
            resp.headers()[http::header::CONTENT_TYPE],
            "text/event-stream"
        );

        let mut body = resp.into_body();
        let mut events = Vec::new();
        while let Some(frame) = body.frame().await {
            let data = frame.unwrap().into_data().unwrap();
            events.push((start.elapsed(), String::from_utf8(data.to_vec()).unwrap()));
        }
        // "glm ", "mock ", "reply ", "#1", stop, [DONE].
        assert_eq!(events.len(), 6, "{events:?}");
        for (i, (at, _)) in events.iter().enumerate() {
            assert_eq!(*at, gap * i as u32, "event {i}");
        }
        let content: String = events[..4]
            .iter()
            .map(|(_, e)| {
                let chunk: Value = serde_json::from_str(e.strip_prefix("data: ").unwrap()).unwrap();
                chunk["choices"][0]["delta"]["content"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect();
        assert_eq!(content, "glm mock reply #1");
        let stop: Value =
            serde_json::from_str(events[4].1.strip_prefix("data: ").unwrap()).unwrap();
        assert_eq!(stop["choices"][0]["finish_reason"], "stop");
        assert_eq!(events[5].1, "data: [DONE]\n\n");
        assert_eq!(glm.hits().served(), 1);
    }
}
