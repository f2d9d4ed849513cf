//! GLM / Zhipu chat completions: N calls per window, then 429 with error code 1302.
//!
//! The API answers **429**
//! `{"error":{"code":"1302","message":"您的账户已达到速率限制,请您控制请求频率"}}`, and the
//! team limited itself to 50 calls per 60 s. This mock serves
//! `POST /api/paas/v4/chat/completions`:
//!
//! - within quota: 200 with a chat-completion body whose reply is
//!   `"glm mock reply #<n>"` (n counts served calls from 1);
//! - over quota, or always when [`GlmApi::always_rate_limited`] is on: the 429 above,
//!   with no `Retry-After` (GLM sends none);
//! - a body that is not a JSON object: `400 {"error":{"code":"1214",…}}` (the code is
//!   illustrative).
//!
//! The quota is a fixed window anchored at the first admitted call (default 50 per
//! 60 s); refused calls do not count.
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

use std::fmt;
use std::time::Duration;

use axum::extract::Request;
use axum::response::Response;
use axum::Router;
use http::{Method, StatusCode};
use serde_json::{json, Value};

use super::common::{handler, json, Core, Incoming, QuotaWindow};
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

/// The GLM mock. Clones share state.
#[derive(Clone)]
pub struct GlmApi {
    core: Core<State>,
}

#[derive(Debug)]
struct State {
    rate: QuotaWindow,
    always_limited: bool,
    served: u64,
}

impl fmt::Debug for GlmApi {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.core.debug(f, "GlmApi", |out, state| {
            out.field("quota", &state.rate.quota)
                .field("always_rate_limited", &state.always_limited);
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
                always_limited: false,
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
        let admitted = {
            let mut state = self.core.state();
            if state.always_limited || state.rate.admit(inc.now).is_err() {
                None
            } else if body.is_ok() {
                state.served += 1;
                Some(state.served)
            } else {
                Some(0)
            }
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
            (Some(n), Ok(body)) => {
                let model = body.get("model").cloned().unwrap_or_else(|| json!("glm-4"));
                (
                    Outcome::Served,
                    json(StatusCode::OK, &completion(n, &model)),
                )
            }
        }
    }
}

fn completion(n: u64, model: &Value) -> Value {
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
        "usage": { "prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0 },
    })
}
