//! Per-key backoff after a rate-limited answer, honouring the server's retry hint.
//!
//! [`CooldownLayer`] watches the verdict of every answer (read with
//! [`verdict_of`](crate::classify::verdict_of) and
//! [`verdict_of_error`](crate::classify::verdict_of_error), so put a
//! [`ClassifyLayer`](crate::ClassifyLayer) underneath for bodies such as QQ's 400 or
//! GLM's code 1302; a plain 429 is judged without one). When an answer is
//! rate-limited, its key (by default the request's authority; any
//! [`KeyExtractor`](crate::key::KeyExtractor)) cools down, and no request for that key
//! reaches the upstream until the cooldown is over: neither new requests nor those that
//! passed the cooldown earlier and are still waiting in a rate limiter below it (see
//! [below](#requests-held-back-below-the-cooldown)).
//!
//! # How long a key cools
//!
//! `max(retry_after, backoff(n))`, where `n` counts consecutive rate-limited answers
//! and `backoff` is [`Backoff::Exponential`] (`base * 2^(n-1)`) or [`Backoff::Linear`]
//! (`base * n`), both capped. The server's hint wins when it is longer. An optional
//! [`max_cooldown`](CooldownBuilder::max_cooldown) caps the total, the server's hint
//! included, and the [`CooldownStarted`] event says so (`capped`, `requested`).
//!
//! - A later signal only ever **extends** a cooldown, never shortens it.
//! - `n` counts answers to requests sent after the previous counted signal: ten 429s
//!   to ten requests that were in flight together count once (the later ones can still
//!   extend the cooldown with their own `Retry-After`).
//! - A success resets `n` to zero. Transient answers (5xx, 408, connection errors) and
//!   other failures leave `n` alone.
//! - Refusals by other ratewise layers below (a rate limiter's `max_wait`, a pool with
//!   every backend cooling: see [`is_local_refusal`](crate::classify::is_local_refusal))
//!   never reached the upstream, so they are no signal: they pass through and change
//!   nothing.
//!
//! # While a key cools
//!
//! - [`Mode::Wait`] (default, 10 s): the response future waits (with `tokio::time`) if
//!   the cooldown ends within `max_wait` of the request's arrival, and otherwise fails
//!   at once, without sleeping, with [`CoolingDown`].
//! - [`Mode::FailFast`]: [`CoolingDown`] at once.
//!
//! [`CoolingDown`] (downcast it from [`BoxError`](crate::BoxError)) names the key and
//! the remaining wait; `verdict_of_error` reads it as rate-limited with that wait.
//!
//! # Half-open
//!
//! When a cooldown ends, exactly one request, the probe, goes upstream; every other
//! request for the key (waiting already, or arriving meanwhile) waits for its answer:
//! - rate-limited again: the key cools again with `n + 1`, the others keep waiting (or
//!   fail when the new end is past their `max_wait`);
//! - served (success, or a failure that is not a rate limit): the key is open and all
//!   go;
//! - transient (5xx, connection error) or the probe's future dropped: the slot is freed
//!   and the next request probes.
//!
//! In fail-fast mode, requests that meet a probe in flight get [`CoolingDown`] with a
//! zero wait ([`CoolingDown::is_probing`]).
//!
//! # Requests held back below the cooldown
//!
//! In the standard stack the cooldown sits above a
//! [`RateLimitLayer`](crate::RateLimitLayer) (so that after a cooldown the released
//! requests are paced by the limiter, not sent as a burst). A request can then pass the
//! cooldown while its key is open and wait in the limiter's queue while another
//! request's rate-limited answer starts a cooldown. Such a request must not go out when
//! its cell comes: it would land inside the server's penalty (Telegram doubles the
//! penalty on every such call).
//!
//! So the cooldown attaches a gate (its table, the key, and whether the request is the
//! probe) to every request it lets through, and the rate limiter, in wait mode,
//! re-checks every gate a request carries right before a request it held back (denied
//! a cell, or queued) asks for its cells. If a key is cooling by then, or half-open with
//! another request as the probe, the request takes no cell, is not sent, and fails with
//! [`CoolingDown`] (the remaining wait, or zero when half-open). The cooldown recognises
//! that error as coming from a gate: it counts the request in
//! [`rejected`](CooldownStats::rejected), not as a rate-limited answer (no `n + 1`, no
//! extension), and a probe refused that way frees its slot. The probe passes its own
//! gate.
//!
//! The cooldown no longer holds that request, so it cannot wait on its behalf even in
//! [`Mode::Wait`]: the caller gets [`CoolingDown`]. A [`RetryLayer`](crate::RetryLayer)
//! above (as in [`ClientStackLayer`](crate::ClientStackLayer)) reads it as rate-limited
//! with the remaining wait, waits, and sends the request again through the cooldown,
//! which then lines it up behind the probe.
//!
//! The guarantee: once a rate-limited answer has reached the cooldown, no request for
//! its key reaches the upstream through ratewise's layers until the cooldown is over
//! and the probe has been answered. The one exception no client can avoid: requests
//! already sent when the upstream sent that answer (on the wire, or handed to the inner
//! client in the same instant). Their answers may extend the cooldown with their own
//! retry hints but do not count as new signals; keeping few requests in flight (a
//! limiter with a small burst) keeps them few.
//!
//! # Observing it
//!
//! [`CooldownHandle`] (from [`CooldownLayer::handle`] or [`Cooldown::handle`]) answers
//! [`state`](CooldownHandle::state) / [`cooling_until`](CooldownHandle::cooling_until)
//! per key, cheaply, and returns [`CooldownStats`]. [`CooldownEvent`]s go to `tracing`
//! and to the callback set with [`CooldownBuilder::on_event`].
//!
//! Keys that are neither cooling nor half-open and have `n == 0` are dropped from the
//! table. A key whose cooldown ended but was never probed (no request came) keeps its
//! entry until its next request.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use http::{Request, Response, StatusCode};
//! use ratewise::{cooldown::KeyState, BoxError, CooldownLayer, Refusal};
//! use tower::{service_fn, Service, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), BoxError> {
//! let layer = CooldownLayer::builder()
//!     .exponential(Duration::from_secs(1), Duration::from_secs(60))
//!     .max_cooldown(Duration::from_secs(600))
//!     .fail_fast()
//!     .build()?;
//! let handle = layer.handle();
//! let mut svc = ServiceBuilder::new().layer(layer).service(service_fn(|_req: Request<()>| async {
//!     // Telegram's answer: 429, retry after 4310 s.
//!     Ok::<_, BoxError>(Response::builder().status(StatusCode::TOO_MANY_REQUESTS)
//!         .header("retry-after", "4310").body(())?)
//! }));
//!
//! let req = || Request::get("https://api.telegram.org/bot1/getMe").body(()).unwrap();
//! let res = svc.ready().await?.call(req()).await?;
//! assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
//! // The key cools for min(4310 s, max_cooldown) = 600 s.
//! assert!(matches!(handle.state("api.telegram.org"), KeyState::Cooling { n: 1, .. }));
//!
//! // The next request is refused at once, without reaching Telegram.
//! let err = svc.ready().await?.call(req()).await.unwrap_err();
//! let cooling = Refusal::find(&*err).expect("typed error");
//! assert_eq!(cooling.key().map(|k| k.as_str()), Some("api.telegram.org"));
//! assert!(cooling.retry_after() <= Some(Duration::from_secs(600)));
//! # Ok(()) }
//! ```

mod events;
mod future;
pub(crate) mod layer;
mod service;
mod state;
mod stats;

pub use self::events::{
    CooldownEnded, CooldownEvent, CooldownExtended, CooldownReason, CooldownStarted,
    OnCooldownEvent,
};
pub use self::future::ResponseFuture;
pub use self::layer::{Backoff, CooldownBuilder, CooldownLayer, Mode};
pub use self::service::Cooldown;
pub use self::state::{CooldownHandle, KeyState};
pub use self::stats::CooldownStats;
