//! Mock upstreams that rate-limit like the real platforms, in-process or on 127.0.0.1.
//!
//! Each mock answers like its platform when over the limit, keeps its state on tokio's
//! clock (a paused clock controls every window) and records every request in [`Hits`].
//!
//! | mock | endpoint | over the limit |
//! |---|---|---|
//! | [`QqGateway`] | `GET /gateway` | 400 `{"code":40034,"message":"接口调用超过频率限制"}` |
//! | [`DingTalkCards`] | `PUT /v1.0/card/instances`, `PUT /v1.0/card/streaming` | 403 per tenant / 429 per robot, `Forbidden.AccessDenied.QpsLimit…` |
//! | [`TelegramBot`] | `POST /bot<token>/<method>` | 429 `retry_after` + `Retry-After`, doubling while penalised, capped at 4310 s |
//! | [`GlmApi`] | `POST /api/paas/v4/chat/completions` | 429 `{"error":{"code":"1302",…}}` |
//! | [`OpenAiApi`] | `POST /v1/chat/completions` (JSON or SSE) | 429 with `retry-after-ms`, `x-ratelimit-reset-requests` |
//!
//! Every mock's `router()` is an axum [`Router`](axum::Router): drive it in-process
//! with `oneshot`, or serve it on 127.0.0.1 with [`MockServer`] and call it with
//! [`client`]. Malformed bodies get a 400 with a message, never a panic.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use ratewise::testing::{body_json, json_request, GlmApi, Outcome};
//! use serde_json::json;
//! use tower::ServiceExt;
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), ratewise::BoxError> {
//! let glm = GlmApi::new().limit(1).window(Duration::from_secs(60));
//! let app = glm.router();
//! let call = || json_request(http::Method::POST, "/api/paas/v4/chat/completions", &json!({"messages": []}));
//!
//! assert_eq!(app.clone().oneshot(call()?).await?.status(), 200);
//! tokio::time::advance(Duration::from_secs(1)).await;
//! let limited = app.clone().oneshot(call()?).await?;
//! assert_eq!(limited.status(), 429);
//! assert_eq!(body_json(limited.into_body()).await?["error"]["code"], "1302");
//!
//! // What reached the upstream, and when:
//! assert_eq!(glm.hits().times(), [Duration::ZERO, Duration::from_secs(1)]);
//! assert_eq!(glm.hits().count_of(Outcome::RateLimited), 1);
//! # Ok(()) }
//! ```

mod common;
pub mod dingtalk;
pub mod engine;
pub mod glm;
pub mod openai;
pub mod qq;
mod recorder;
mod redis;
mod server;
pub mod telegram;

pub use self::dingtalk::{CardEdit, DingTalkCards};
pub use self::glm::GlmApi;
pub use self::openai::OpenAiApi;
pub use self::qq::QqGateway;
pub use self::recorder::{Hit, Hits, Outcome};
pub use self::redis::RedisServer;
pub use self::server::{
    body_bytes, body_json, client, empty_request, json_request, MockServer, TestClient,
};
pub use self::telegram::{Delivered, TelegramBot};
