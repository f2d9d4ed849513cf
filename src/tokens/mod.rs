//! Tokens per minute for LLM APIs ([`TokenLimitLayer`]): reserve a call's estimated
//! tokens before it is sent, then settle with the `usage` its answer reports.
//!
//! A call reserves its [`estimate`] (the prompt's characters / 4 plus `max_tokens`, or
//! your [`estimator`](TokenLimitBuilder::estimator)) from a budget of `n` tokens in any
//! 60 s (or any window: [`per_period`](TokenLimitBuilder::per_period)), waiting in line
//! when the budget is spent (a [`RateLimitLayer`](crate::RateLimitLayer) whose cost is
//! the estimate: its FIFO lines, `max_wait`, call deadlines, stores and stats). The answer passes through in a [`TokenBody`] that reads its last `usage`
//! object as it goes by, never buffering: a JSON answer's, or the last SSE chunk's
//! ([`include_usage`](TokenLimitBuilder::include_usage) asks OpenAI-style streams for
//! it). When the body ends the reservation is settled in the limiter's store: the tokens not
//! used go back to the budget, tokens used beyond the estimate are charged, both counted
//! at the instant the call was sent. An answer without usage keeps its reservation if
//! it succeeded and gives it back if it was an error (a 429) or was never sent.
//!
//! Put it above the request limit, so that a call takes its request slot only once its
//! tokens are there: `ServiceBuilder::new().layer(tokens).layer(stack)` over a
//! [`ClientStackLayer`](crate::ClientStackLayer), or, by hand, `Retry → Cooldown →
//! TokenLimit → RateLimit → Classify → client`. With
//! [`store`](TokenLimitBuilder::store)`(redis.rate_limit(name))` every process shares
//! the budget. The layer reads the request body whole (LLM calls are JSON held in
//! memory): any body that is `From<Bytes>` works (`Full<Bytes>`, axum's and reqwest's
//! `Body`).
//!
//! # Example
//!
//! ```
//! use std::convert::Infallible;
//! use bytes::Bytes;
//! use http::{Request, Response};
//! use http_body_util::{BodyExt, Full};
//! use ratewise::tokens::TokenLimitLayer;
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), ratewise::BoxError> {
//! let tpm = TokenLimitLayer::builder().per_minute(1_000).build()?;
//! let llm = service_fn(|_req: Request<Full<Bytes>>| async {
//!     let answer = r#"{"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":25,"total_tokens":30}}"#;
//!     Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(answer))))
//! });
//! let client = ServiceBuilder::new().layer(tpm.clone()).service(llm);
//!
//! // 20 characters of prompt (5 tokens) and up to 200 more: 205 reserved.
//! let body = r#"{"messages":[{"role":"user","content":"Say hello in French."}],"max_tokens":200}"#;
//! let call = Request::post("http://llm.test/v1/chat/completions").body(Full::new(Bytes::from(body)))?;
//! let answer = client.oneshot(call).await?;
//! answer.into_body().collect().await?; // read to its end: the usage says 30
//! let stats = tpm.stats();
//! assert_eq!((stats.reserved, stats.used, stats.refunded), (205, 30, 175));
//! # Ok(()) }
//! ```

mod body;
mod estimate;
mod future;
mod layer;
mod service;
mod stats;

pub use self::body::TokenBody;
pub use self::estimate::estimate;
#[cfg(feature = "proxy")]
pub(crate) use self::estimate::UsageScanner;
pub use self::layer::{TokenLimitBuilder, TokenLimitLayer};
pub use self::service::TokenLimit;
pub use self::stats::TokenStats;
