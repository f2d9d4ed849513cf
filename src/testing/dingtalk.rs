//! DingTalk AI cards: a QPS cap per tenant (403) and per robot (429), and a log of
//! every card edit.
//!
//! The interactive-card PUT API enforces about 20 QPS per tenant and answers **403**
//! beyond it; the AI-card streaming API allows 50 QPS per robot and answers **429**.
//! Both bodies carry a `Forbidden.AccessDenied.QpsLimit…` code:
//!
//! - tenant over quota: `403 {"code":"Forbidden.AccessDenied.QpsLimitForApi","requestid":"…","message":"…"}`;
//! - robot over quota: `429 {"code":"Forbidden.AccessDenied.QpsLimitForAppkeyAndApi","requestid":"…","message":"…"}`.
//!
//! The tenant is named by the `x-acs-dingtalk-access-token` header and the robot by
//! the body's `robotCode` field; either one missing counts as `"default"`. The tenant
//! cap is checked first; a call refused by either cap consumes neither. Quotas are fixed
//! windows (default 1 s) anchored at the first admitted call.
//!
//! Routes: `PUT /v1.0/card/instances` (update), `POST /v1.0/card/instances` (create) and
//! `PUT /v1.0/card/streaming`. Every call to them is logged as a [`CardEdit`]: the card
//! (`outTrackId`), whether it is a final edit (`isFinalize` or `isFinal` true), the
//! streamed `content`, and the status it got. A body that is not a JSON object with an
//! `outTrackId` string gets `400 {"code":"InvalidParameter",…}`.
//!
//! # Example
//!
//! ```
//! use http::Method;
//! use ratewise::testing::{json_request, DingTalkCards};
//! use serde_json::json;
//! use tower::ServiceExt;
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), ratewise::BoxError> {
//! let cards = DingTalkCards::new().tenant_qps(1);
//! let app = cards.router();
//! let edit = |final_: bool| json_request(Method::PUT, "/v1.0/card/streaming",
//!     &json!({"outTrackId": "card-1", "content": "hi", "isFinalize": final_}));
//! assert_eq!(app.clone().oneshot(edit(false)?).await?.status(), 200);
//! assert_eq!(app.clone().oneshot(edit(true)?).await?.status(), 403);
//! tokio::time::advance(std::time::Duration::from_secs(1)).await;
//! assert_eq!(app.oneshot(edit(true)?).await?.status(), 200);
//! assert_eq!(cards.finals_delivered(), ["card-1"]);
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use axum::extract::Request;
use axum::response::Response;
use axum::Router;
use http::{Method, StatusCode};
use serde_json::{json, Map, Value};
use tokio::time::Instant;

use super::common::{handler, json, Core, FixedWindow, Incoming, Quota};
use super::recorder::{Hits, Outcome};

/// Default QPS per tenant: 20 (DingTalk's card API limit).
pub const DEFAULT_TENANT_QPS: u32 = 20;
/// Default QPS per robot: 50 (DingTalk's AI-card streaming limit).
pub const DEFAULT_ROBOT_QPS: u32 = 50;
/// Default window the QPS caps count over: 1 s.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(1);
/// The code of the tenant cap's 403.
pub const TENANT_LIMIT_CODE: &str = "Forbidden.AccessDenied.QpsLimitForApi";
/// The code of the robot cap's 429.
pub const ROBOT_LIMIT_CODE: &str = "Forbidden.AccessDenied.QpsLimitForAppkeyAndApi";
/// The header naming the tenant.
pub const TENANT_HEADER: &str = "x-acs-dingtalk-access-token";

/// One call to a card endpoint, as the mock saw it.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CardEdit {
    /// The tokio instant the call arrived.
    pub instant: Instant,
    /// Time since the mock was created.
    pub at: Duration,
    /// The endpoint path.
    pub path: String,
    /// The card (`outTrackId`), when the body named one.
    pub card_id: Option<String>,
    /// Whether the body marked this as the final edit (`isFinalize` or `isFinal`).
    pub is_final: bool,
    /// The streamed `content`, when the body had one.
    pub content: Option<String>,
    /// The status the mock answered with.
    pub status: StatusCode,
}

impl CardEdit {
    /// Whether the edit was applied (200).
    pub fn delivered(&self) -> bool {
        self.status == StatusCode::OK
    }
}

/// The DingTalk AI-card mock. Clones share state.
#[derive(Clone)]
pub struct DingTalkCards {
    core: Core<State>,
}

#[derive(Debug)]
struct State {
    tenant: Quota,
    robot: Quota,
    tenants: HashMap<String, FixedWindow>,
    robots: HashMap<String, FixedWindow>,
    edits: Vec<CardEdit>,
    requests: u64,
}

impl fmt::Debug for DingTalkCards {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.core.debug(f, "DingTalkCards", |out, state| {
            out.field("tenant", &state.tenant)
                .field("robot", &state.robot)
                .field("edits", &state.edits.len());
        })
    }
}

impl Default for DingTalkCards {
    fn default() -> Self {
        Self::new()
    }
}

enum Refusal {
    Tenant,
    Robot,
}

impl DingTalkCards {
    /// A mock with the defaults: [`DEFAULT_TENANT_QPS`] per tenant and
    /// [`DEFAULT_ROBOT_QPS`] per robot, each per [`DEFAULT_WINDOW`].
    pub fn new() -> Self {
        DingTalkCards {
            core: Core::new(State {
                tenant: Quota {
                    limit: DEFAULT_TENANT_QPS,
                    window: DEFAULT_WINDOW,
                },
                robot: Quota {
                    limit: DEFAULT_ROBOT_QPS,
                    window: DEFAULT_WINDOW,
                },
                tenants: HashMap::new(),
                robots: HashMap::new(),
                edits: Vec::new(),
                requests: 0,
            }),
        }
    }

    /// Calls per window per tenant, beyond which the answer is 403.
    pub fn tenant_qps(self, calls: u32) -> Self {
        self.core.state().tenant.limit = calls;
        self
    }

    /// Calls per window per robot, beyond which the answer is 429.
    pub fn robot_qps(self, calls: u32) -> Self {
        self.core.state().robot.limit = calls;
        self
    }

    /// The window both caps count over (default 1 s).
    pub fn window(self, window: Duration) -> Self {
        {
            let mut state = self.core.state();
            state.tenant.window = window;
            state.robot.window = window;
        }
        self
    }

    /// Every request that reached the mock.
    pub fn hits(&self) -> Hits {
        self.core.hits().clone()
    }

    /// Every call to a card endpoint, in arrival order, whatever it got.
    pub fn edits(&self) -> Vec<CardEdit> {
        self.core.state().edits.clone()
    }

    /// The calls for one card, in arrival order, whatever they got.
    pub fn edits_for(&self, card_id: &str) -> Vec<CardEdit> {
        self.core
            .state()
            .edits
            .iter()
            .filter(|e| e.card_id.as_deref() == Some(card_id))
            .cloned()
            .collect()
    }

    /// The cards whose final edit was delivered, in delivery order (a card appears once
    /// per delivered final edit).
    pub fn finals_delivered(&self) -> Vec<String> {
        self.core
            .state()
            .edits
            .iter()
            .filter(|e| e.is_final && e.delivered())
            .filter_map(|e| e.card_id.clone())
            .collect()
    }

    /// Forgets the edit log and the hits; quotas and windows are unchanged.
    pub fn clear(&self) {
        self.core.state().edits.clear();
        self.core.hits().clear();
    }

    /// The axum router serving the card endpoints; unknown paths answer 404.
    pub fn router(&self) -> Router {
        self.core.router([
            (
                "/v1.0/card/instances",
                handler(self, |me: Self, req| async move {
                    me.handle(req, &[Method::PUT, Method::POST]).await
                }),
            ),
            (
                "/v1.0/card/streaming",
                handler(self, |me: Self, req| async move {
                    me.handle(req, &[Method::PUT]).await
                }),
            ),
        ])
    }

    async fn handle(self, req: Request, methods: &[Method]) -> Response {
        self.core.serve(req, methods, |inc| self.answer(inc)).await
    }

    fn answer(&self, inc: &Incoming) -> (Outcome, Response) {
        let body = inc.json_object();
        let fields = body.as_ref().ok();
        let text =
            |m: &Map<String, Value>, k: &str| m.get(k).and_then(Value::as_str).map(str::to_owned);
        let card_id = fields.and_then(|m| text(m, "outTrackId"));
        let is_final = fields.is_some_and(|m| {
            ["isFinalize", "isFinal"]
                .iter()
                .any(|k| m.get(*k).and_then(Value::as_bool) == Some(true))
        });
        let content = fields.and_then(|m| text(m, "content"));
        let tenant = inc.header(TENANT_HEADER).unwrap_or("default").to_owned();
        let robot = fields
            .and_then(|m| text(m, "robotCode"))
            .unwrap_or_else(|| "default".to_owned());

        let mut state = self.core.state();
        state.requests += 1;
        let request_id = format!("mock-{:08}", state.requests);
        let admitted = state.admit(inc.now, tenant, robot);
        let (outcome, resp) = match (admitted, &body) {
            (Err(Refusal::Tenant), _) => (
                Outcome::RateLimited,
                json(
                    StatusCode::FORBIDDEN,
                    &json!({
                        "code": TENANT_LIMIT_CODE,
                        "requestid": request_id,
                        "message": "调用该接口超过了租户的 QPS 限制 (tenant QPS limit exceeded)",
                    }),
                ),
            ),
            (Err(Refusal::Robot), _) => (
                Outcome::RateLimited,
                json(
                    StatusCode::TOO_MANY_REQUESTS,
                    &json!({
                        "code": ROBOT_LIMIT_CODE,
                        "requestid": request_id,
                        "message": "调用该接口超过了机器人的 QPS 限制 (robot QPS limit exceeded)",
                    }),
                ),
            ),
            (Ok(()), Err(why)) => (Outcome::Rejected, invalid(&request_id, why)),
            (Ok(()), Ok(_)) if card_id.is_none() => (
                Outcome::Rejected,
                invalid(&request_id, "outTrackId is required and must be a string"),
            ),
            (Ok(()), Ok(_)) => (
                Outcome::Served,
                json(StatusCode::OK, &json!({ "success": true, "result": true })),
            ),
        };
        state.edits.push(CardEdit {
            instant: inc.now,
            at: inc.now.saturating_duration_since(self.core.hits().start()),
            path: inc.path.clone(),
            card_id,
            is_final,
            content,
            status: resp.status(),
        });
        (outcome, resp)
    }
}

impl State {
    fn admit(&mut self, now: Instant, tenant: String, robot: String) -> Result<(), Refusal> {
        let (tq, rq) = (self.tenant, self.robot);
        let t = self.tenants.entry(tenant).or_default();
        let r = self.robots.entry(robot).or_default();
        t.peek(now, tq).map_err(|_| Refusal::Tenant)?;
        r.peek(now, rq).map_err(|_| Refusal::Robot)?;
        t.take(now, tq);
        r.take(now, rq);
        Ok(())
    }
}

fn invalid(request_id: &str, why: &str) -> Response {
    json(
        StatusCode::BAD_REQUEST,
        &json!({ "code": "InvalidParameter", "requestid": request_id, "message": why }),
    )
}
