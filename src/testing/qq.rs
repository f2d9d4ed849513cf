//! QQ Bot `GET /gateway`: a few calls per window, then HTTP 400 "接口调用超过频率限制".
//!
//! The real endpoint (api.sgroup.qq.com) allows about two calls per time window and
//! then hides its rate limit in a **400** whose body says "接口调用超过频率限制".
//! This mock reproduces that:
//!
//! - within quota: `200 {"url":"wss://api.sgroup.qq.com/websocket/"}`;
//! - over quota: `400 {"code":40034,"message":"接口调用超过频率限制"}`. The numeric
//!   `code` is illustrative (the real one is not known); the message is the real one.
//!
//! The quota is a fixed window anchored at the first admitted call (default 2 calls per
//! 10 s); refused calls do not count. The handed-out URL can be changed at run time
//! with [`QqGateway::set_url`], so a test can tell a fresh URL from a cached one.
//!
//! # Example
//!
//! ```
//! use axum::body::Body;
//! use http::Request;
//! use ratewise::testing::{body_json, QqGateway};
//! use tower::ServiceExt;
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), ratewise::BoxError> {
//! let qq = QqGateway::new(); // 2 calls per 10 s
//! let app = qq.router();
//! let get = || Request::get("/gateway").body(Body::empty());
//! assert_eq!(app.clone().oneshot(get()?).await?.status(), 200);
//! assert_eq!(app.clone().oneshot(get()?).await?.status(), 200);
//! let limited = app.clone().oneshot(get()?).await?;
//! assert_eq!(limited.status(), 400);
//! assert_eq!(body_json(limited.into_body()).await?["message"], "接口调用超过频率限制");
//!
//! tokio::time::advance(std::time::Duration::from_secs(10)).await;
//! assert_eq!(app.oneshot(get()?).await?.status(), 200);
//! assert_eq!(qq.hits().times().len(), 4);
//! # Ok(()) }
//! ```

use std::fmt;
use std::time::Duration;

use axum::extract::Request;
use axum::response::Response;
use axum::Router;
use http::{Method, StatusCode};
use serde_json::json;

use super::common::{handler, json, outcome_of, Core, Incoming, QuotaWindow};
use super::recorder::{Hits, Outcome};

/// Default calls per window: 2 (the real endpoint's limit, confirmed by live API testing).
pub const DEFAULT_LIMIT: u32 = 2;
/// Default window: 10 s (the platform only says "per time window"; the length is
/// illustrative).
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(10);
/// The URL handed out by default.
pub const DEFAULT_URL: &str = "wss://api.sgroup.qq.com/websocket/";
/// The `code` field of the over-limit body (illustrative).
pub const RATE_LIMIT_CODE: u64 = 40034;
/// The `message` field of the over-limit body, as the real API sends it.
pub const RATE_LIMIT_MESSAGE: &str = "接口调用超过频率限制";

/// The QQ gateway mock. Clones share state.
#[derive(Clone)]
pub struct QqGateway {
    core: Core<State>,
}

#[derive(Debug)]
struct State {
    rate: QuotaWindow,
    url: String,
}

impl fmt::Debug for QqGateway {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.core.debug(f, "QqGateway", |out, state| {
            out.field("limit", &state.rate.quota.limit)
                .field("window", &state.rate.quota.window)
                .field("url", &state.url);
        })
    }
}

impl Default for QqGateway {
    fn default() -> Self {
        Self::new()
    }
}

impl QqGateway {
    /// A gateway with the defaults: [`DEFAULT_LIMIT`] calls per [`DEFAULT_WINDOW`],
    /// handing out [`DEFAULT_URL`].
    pub fn new() -> Self {
        QqGateway {
            core: Core::new(State {
                rate: QuotaWindow::new(DEFAULT_LIMIT, DEFAULT_WINDOW),
                url: DEFAULT_URL.to_owned(),
            }),
        }
    }

    /// Calls admitted per window (0: every call is over the limit).
    pub fn limit(self, calls: u32) -> Self {
        self.core.state().rate.quota.limit = calls;
        self
    }

    /// The window length.
    pub fn window(self, window: Duration) -> Self {
        self.core.state().rate.quota.window = window;
        self
    }

    /// The URL handed out.
    pub fn url(self, url: impl Into<String>) -> Self {
        self.set_url(url);
        self
    }

    /// Changes the URL handed out from now on (shared by every clone and router).
    pub fn set_url(&self, url: impl Into<String>) {
        self.core.state().url = url.into();
    }

    /// Every request that reached this gateway.
    pub fn hits(&self) -> Hits {
        self.core.hits().clone()
    }

    /// The axum router serving `GET /gateway`; unknown paths answer 404.
    pub fn router(&self) -> Router {
        self.core
            .router([("/gateway", handler(self, Self::handle))])
    }

    async fn handle(self, req: Request) -> Response {
        self.core
            .serve(req, &[Method::GET], |inc| self.answer(inc))
            .await
    }

    fn answer(&self, inc: &Incoming) -> (Outcome, Response) {
        let mut state = self.core.state();
        match state.rate.admit(inc.now) {
            Ok(_) => {
                let resp = json(StatusCode::OK, &json!({ "url": state.url }));
                (outcome_of(resp.status()), resp)
            }
            Err(_) => (
                Outcome::RateLimited,
                json(
                    StatusCode::BAD_REQUEST,
                    &json!({ "code": RATE_LIMIT_CODE, "message": RATE_LIMIT_MESSAGE }),
                ),
            ),
        }
    }
}
