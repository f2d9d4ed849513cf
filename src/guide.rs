//!
//! The module docs say what a layer is for and show one example; this guide says what
//! it does in every case. It has no items of its own.
//!
//! | chapter | module | what it does |
//! |---|---|---|
//! | [Rate limit](#rate-limit) | [`rate_limit`](crate::rate_limit) | [`RateLimitLayer`](crate::RateLimitLayer): keyed GCRA rates and window quotas, several limits taken together, a safety margin; shared across clones, wait or reject |
//! | [Cooldown](#cooldown) | [`cooldown`](crate::cooldown) | [`CooldownLayer`](crate::CooldownLayer): per-key backoff after a rate-limited answer, honouring Retry-After, with a single half-open probe |
//! | [Retry](#retry) | [`retry`](crate::retry) | [`RetryLayer`](crate::RetryLayer): retries as the server asks (its wait, a schedule or capped exponential), within attempts, a deadline and a budget |
//! | [Cache](#cache) | [`cache`](crate::cache) | [`CachedEndpointLayer`](crate::CachedEndpointLayer): the last good answer of a discovery endpoint, served while it is rate-limited, with single flight |
//! | [Fresh client](#fresh-client) | [`fresh`](crate::fresh) | [`FreshClientLayer`](crate::FreshClientLayer): rebuilds the inner client through a `MakeService` after N consecutive connection-level errors |
//! | [Classify](#classify) | [`classify`](crate::classify), [`retry_after`](crate::retry_after), [`body`](crate::body) | one [`Verdict`](crate::Verdict) per response (success, rate-limited, transient, failure), read from status, headers and, only when asked, a bounded body prefix; the one parser for every "wait this long" signal; body peeking that hands the caller back every byte |
//! | [Pool](#pool) | [`pool`](crate::pool) | [`Pool`](crate::Pool): ordered backends (primary, fallback) with per-backend cooldown, failover within the call, model routing and stats |
//! | [Stack](#stack) | [`stack`](crate::stack) | [`ClientStackLayer`](crate::ClientStackLayer): the standard client stack (`Retry → Cooldown → RateLimit → Classify`) from one config, with presets per platform |
//!
//! Every layer says what it decided with the words of [`vocabulary`](crate::vocabulary):
//! a [`Verdict`](crate::Verdict) per response, a [`Refusal`](crate::Refusal) when it
//! holds a request back, a [`ConfigError`](crate::ConfigError) from every builder.
//! [`key`](crate::key) chooses which bucket, cooldown or cache entry a request belongs
//! to.
//!
//! # Rate limit
//!
//! [`RateLimitLayer`](crate::RateLimitLayer): wait to be admitted (clients) or answer
//! `429` (servers), one bucket per key, shared across clones.
//!
//! ## Quota
//!
//! A rate (`per_second(n)`, `per_minute(n)` or `per_period(d)`: one cell every
//! `1 s / n`, `60 s / n` or `d`) plus a burst (the most cells available at once;
//! defaults to `n`, or 1 for `per_period`). The algorithm is GCRA: a rested key takes
//! `burst` cells at once, then one per interval. With `per_second(10).burst(5)`,
//! requests at `t = 0` get 5 through at once, then one every 100 ms: 15 by `t = 1 s`.
//! Instead of a rate, a quota can be a [window](#window-quotas). A zero rate, period,
//! window or burst is a [`ConfigError`](crate::ConfigError) from `build()` that names
//! the field.
//!
//! ## Keys and cost
//!
//! - [`key`](crate::rate_limit::RateLimitBuilder::key): any
//!   [`KeyExtractor`](crate::key::KeyExtractor) (a closure over a
//!   [`RequestRef`](crate::key::RequestRef), [`Authority`](crate::key::Authority),
//!   ...); the default is one bucket for everything.
//!   Each key has its own bucket.
//! - [`cost`](crate::rate_limit::RateLimitBuilder::cost): `Fn(&RequestRef<'_>) -> u32`,
//!   how many cells a request takes (default 1). Cost 0 is the bypass: the request is
//!   never throttled and takes no cell (DingTalk's final card edits, which must never
//!   be dropped). A cost above the burst can never be admitted: it fails at once with a
//!   [`Refusal`](crate::Refusal) of kind
//!   [`CostExceedsBurst`](crate::vocabulary::RefusalKind::CostExceedsBurst) (reject
//!   mode: `429` without `Retry-After`), it does not hang.
//!
//! ## Several limits
//!
//! A layer can hold other limits beside its main one
//! ([`limit`](crate::rate_limit::RateLimitBuilder::limit) with a
//! [`Limit`](crate::rate_limit::Limit)), each with its own quota, key and margin:
//! DingTalk's 20 calls per second per tenant and one edit per 800 ms per card,
//! Telegram's 30 messages per second per bot and one per second per chat. A request
//! waits until **every** limit has room, then takes from all of them at the same
//! instant, in one atomic step of the store, in the poll that sends it. So:
//!
//! - no limit's slot is taken while the request still waits for another: every per-key
//!   interval holds on the wire, and no budget is spent on requests still waiting;
//! - when one limit has no room, nothing is taken from any, and the wait is the longest
//!   of the limits';
//! - a request's cost is taken from every limit;
//! - waiters line up under all their keys joined (tenant and card), so an edit waiting
//!   for its card's slot does not hold back an edit for another card; `max_wait`
//!   bounds the whole wait.
//!
//! Two layers, one per limit, cannot do this: whichever is outer takes its slot before
//! the inner one lets the request go. With the tenant outside, tenant budget is spent on
//! edits still waiting for their card; with the card outside, the card's interval is
//! counted from the wrong moment and shrinks on the wire.
//!
//! ```
//! use std::{convert::Infallible, time::Duration};
//! use http::{Request, Response};
//! use ratewise::{key::RequestRef, rate_limit::{Limit, RateLimitLayer}};
//! use tokio::time::Instant;
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), ratewise::BoxError> {
//! let card = |req: &RequestRef<'_>| req.uri().path().to_owned();
//! let limits = RateLimitLayer::builder()
//!     .per_second(20) // the tenant: one call every 50 ms
//!     .burst(1)
//!     .limit(Limit::per_period(Duration::from_millis(800)).key(card))
//!     .build()?;
//! let upstream = service_fn(|_req: Request<()>| async { Ok::<_, Infallible>(Response::new(())) });
//! let cards = ServiceBuilder::new().layer(limits).service(upstream);
//! let edit = |card: &str| Request::put(format!("http://dingtalk.test/{card}")).body(());
//!
//! let start = Instant::now();
//! cards.clone().oneshot(edit("a")?).await?;
//! cards.clone().oneshot(edit("b")?).await?; // another card: the tenant's next slot
//! assert_eq!(start.elapsed(), Duration::from_millis(50));
//! cards.clone().oneshot(edit("a")?).await?; // card `a` again: its next 800 ms slot
//! assert_eq!(start.elapsed(), Duration::from_millis(800));
//! # Ok(()) }
//! ```
//!
//! ## Window quotas
//!
//! Instead of a GCRA rate, a limit (the main one or another) can count "`n` per
//! window", as many upstreams do. The burst does not apply to windows.
//!
//! | quota | admits | memory per key |
//! |---|---|---|
//! | [`sliding_window(n, w)`](crate::rate_limit::RateLimitBuilder::sliding_window) | at most `n` in **any** window of length `w`; a request that finds `n` waits until the oldest leaves the window | at most `n` timestamps |
//! | [`fixed_window(n, w)`](crate::rate_limit::RateLimitBuilder::fixed_window) | at most `n` per window of length `w`, windows aligned on the limiter's start; a request that finds its window full waits for the next one | one counter |
//!
//! Use the upstream's own semantics. A GCRA rate can match "100 calls in any 5 s" only
//! by keeping `burst + rate × window` at the cap, which runs well under it: 400 calls
//! take about 21 s, where a sliding window of 100 per 5 s sends them in 15 s (100 at
//! once, then the next as the first leave the window) with no rejection.
//!
//! A fixed window's boundaries are the limiter's, not the upstream's: `n` calls at the
//! end of one window and `n` at the start of the next are `2n` within less than `w`,
//! which an upstream counting on other boundaries (or sliding) can refuse. A sliding
//! window never puts more than `n` in any window of length `w`, so it is safe against
//! an upstream counting either way; a fixed window trades that for one counter per key.
//!
//! ## Safety margin
//!
//! A limit releases a request the instant its interval ends, but the upstream counts
//! arrivals, on its own clock. Between the two lie the runtime, the connection and the
//! network, which never take exactly the same time twice: two requests released 800 ms
//! apart can arrive 795 ms apart, and an upstream that allows one per 800 ms refuses the
//! second. Measured at DingTalk's per-card interval over loopback, this jitter caused up
//! to 11 violations in a run; a margin of 10 ms removed them all.
//!
//! A margin pads a limit's interval (or window):
//! [`margin(d)`](crate::rate_limit::RateLimitBuilder::margin) by a duration,
//! [`margin_percent(p)`](crate::rate_limit::RateLimitBuilder::margin_percent) by a share
//! of it (both can be set; they add up). The builder's set the main limit's; each
//! [`Limit`](crate::rate_limit::Limit) has its own
//! ([`Limit::margin`](crate::rate_limit::Limit::margin),
//! [`Limit::margin_percent`](crate::rate_limit::Limit::margin_percent)), none by default.
//!
//! The trade-off: a margin of `p` % costs `p` % of the limit's throughput, and buys `p`
//! % of each interval as headroom against jitter. At one request per second, 1 % is
//! 10 ms; at one edit per 800 ms, 8 ms; at 20 per second, 0.5 ms per interval, or 10 ms
//! over the 20 intervals that separate 21 calls (what keeps a 21st call out of an
//! upstream's one-second window). Choose it from the jitter of the path to the upstream:
//! a few milliseconds on loopback or a LAN, more across the internet. The
//! [presets](#presets) pad their rate by 1 %.
//!
//! ## Wait mode (clients, the default)
//!
//! A request over the limit waits, in `tokio::time`, until its cells are available, then
//! calls the inner service in the same poll in which it takes them. A request dropped
//! while waiting takes no cell. If the wait would be longer than
//! [`max_wait`](crate::rate_limit::RateLimitBuilder::max_wait), the call fails **at
//! once**, without sleeping, with a [`Refusal`](crate::Refusal) of kind
//! [`MaxWait`](crate::vocabulary::RefusalKind::MaxWait) (its key, the wait as
//! [`retry_after`](crate::Refusal::retry_after) and the earliest admission time as
//! [`earliest`](crate::Refusal::earliest)). The service's error type is
//! [`BoxError`](crate::BoxError); every refusal is a [`Refusal`](crate::Refusal),
//! found with one downcast ([`Refusal::find`](crate::Refusal::find)).
//!
//! Under a [`CooldownLayer`](crate::CooldownLayer): a request that was held back (denied
//! cells, or queued behind other waiters) re-checks the cooldowns it passed right before
//! it asks for its cells. If its key began cooling while it waited, it takes no cell, is
//! not sent, and fails with the cooldown's [`Refusal`](crate::Refusal) (see
//! [requests held back below the cooldown](#requests-held-back-below-the-cooldown)). A
//! request admitted at its first attempt is not re-checked: nothing held it back since
//! the cooldown let it through.
//!
//! Waiters are admitted in arrival order, without starvation: each key with waiters has
//! a FIFO line (a fair `Semaphore(1)`, held only by waiting requests, dropped with the
//! last waiter). Only the head of the line asks the store for cells; a newcomer that
//! finds a line queues behind it instead of grabbing the next cell. A newcomer's wait is
//! estimated as the head's expected admission plus one replenish interval per cell
//! queued behind the head and per cell of its own, so `max_wait` still fails fast under
//! contention. Should that estimate prove short, the request still fails as soon as its
//! admission is known to fall past `max_wait`, never later than `max_wait`.
//!
//! ## Reject mode (servers)
//!
//! [`reject`](crate::rate_limit::RateLimitBuilder::reject): a request over the limit (or
//! arriving while waiters from a wait-mode layer on the same limiter are queued) is
//! answered at once, without calling the inner service, with:
//!
//! ```text
//! HTTP/1.1 429 Too Many Requests
//! retry-after: <wait in whole seconds, rounded up>
//! ratelimit-policy: "ratewise";q=<burst>;w=<window>
//! ratelimit: "ratewise";r=0;t=<wait in whole seconds, rounded up>
//! content-type: application/problem+json
//!
//! {"type":"https://iana.org/assignments/http-problem-types#quota-exceeded",
//!  "title":"Request cannot be satisfied as assigned quota has been exceeded",
//!  "status":429,"detail":"Too many requests: retry in 3 s.","violated-policies":["ratewise"]}
//! ```
//!
//! `RateLimit-Policy` and `RateLimit` follow the structured-field form of the IETF
//! draft-ietf-httpapi-ratelimit-headers (drafts 09 to 11): the policy is named
//! `"ratewise"`, `q` is the burst, `w` the time an empty bucket takes to refill
//! (`burst × interval`) in whole seconds rounded up (at least 1), `r` the cells left
//! and `t` the seconds until the request could be admitted. The body is the draft's
//! `quota-exceeded` problem (RFC 9457); a request that costs more than the burst gets
//! one without `Retry-After`, since waiting cannot help.
//! [`respond_with`](crate::rate_limit::RateLimitBuilder::respond_with) replaces it with
//! the answer of a closure over the [`Refusal`](crate::Refusal) (the headers are added
//! unless it has them). [`ratelimit_headers(true)`](crate::rate_limit::RateLimitBuilder::ratelimit_headers)
//! adds both fields to admitted responses too: `r` the cells the key has left, `t` the
//! seconds until its bucket is full again. If the store fails, the answer is `503`; if
//! the key cannot be made (a [`ClientIp`](crate::key::ClientIp) on a server that does
//! not pass peer addresses), `500`, and the error is logged once at `ERROR`: a request
//! is never put in a bucket every client shares. The inner service's error type is
//! kept, so axum can use the layer directly, without `HandleErrorLayer`; its response
//! body must be `From<String>` (axum's `Body`, `Full<Bytes>`, `String`).
//!
//! Per-client limits key by [`ClientIp`](crate::key::ClientIp): the peer address
//! (axum's `ConnectInfo` with the `axum` feature, or a `SocketAddr` extension), or,
//! behind proxies trusted by count or by CIDR, the address they forward in
//! `X-Forwarded-For` or `Forwarded`, read from the right so that a client cannot
//! choose its own bucket; IPv6 clients by their `/64`.
//!
//! ```
//! use std::convert::Infallible;
//! use http::{Request, Response, StatusCode};
//! use ratewise::{key::{Key, RequestRef}, rate_limit::RateLimitLayer};
//! use tower::{service_fn, Service, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let per_client = RateLimitLayer::builder()
//!     .per_second(1)
//!     // Never key by a raw credential: derive the key with a keyed hash.
//!     .key(|req: &RequestRef<'_>| {
//!         Key::from_secret(req.headers().get("x-api-key").and_then(|v| v.to_str().ok()).unwrap_or(""))
//!     })
//!     .reject()
//!     .ratelimit_headers(true)
//!     .build()?;
//! let mut app = ServiceBuilder::new().layer(per_client).service(service_fn(
//!     |_req: Request<String>| async { Ok::<_, Infallible>(Response::new(String::new())) },
//! ));
//!
//! let req = || Request::builder().header("x-api-key", "alice").body(String::new()).unwrap();
//! let first = app.ready().await?.call(req()).await?;
//! assert_eq!(first.status(), StatusCode::OK);
//! assert_eq!(first.headers()["ratelimit"], r#""ratewise";r=0;t=1"#);
//! let second = app.ready().await?.call(req()).await?;
//! assert_eq!(second.status(), StatusCode::TOO_MANY_REQUESTS);
//! assert_eq!(second.headers()["retry-after"], "1");
//! assert_eq!(second.headers()["ratelimit-policy"], r#""ratewise";q=1;w=1"#);
//! assert_eq!(second.headers()["ratelimit"], r#""ratewise";r=0;t=1"#);
//! assert_eq!(second.headers()["content-type"], "application/problem+json");
//! # Ok(()) }
//! ```
//!
//! ## Sharing a limiter
//!
//! The layer's state (buckets, queues, counters) lives in one
//! [`RateLimiter`](crate::rate_limit::RateLimiter) behind an `Arc`, created by
//! `build()`. Every clone of the layer and every service it makes share it: build the
//! layer once and `.clone()` it into every stack that must share the bucket (DingTalk's
//! process-wide card bucket). To share the bucket between layers that differ (another
//! key, mode or cost rule), take the handle with
//! [`RateLimitLayer::limiter`](crate::RateLimitLayer::limiter) and pass it to
//! [`build_with_limiter`](crate::rate_limit::RateLimitBuilder::build_with_limiter).
//!
//! ## Stores
//!
//! The state sits behind one internal call, "take n cells for these keys" (one key per
//! limit), whose answer is admitted / denied-with-wait / error, decided atomically for
//! every limit at once. By default it lives in memory, on tokio's clock (so paused-clock
//! tests drive it), with a ready future (no allocation): one plain GCRA rate goes to
//! governor; several limits, a window or a margin go to a small core of the crate's own,
//! one lock over every limit's state, because governor cannot take from several keys
//! only if all have room, and has no windows. Both evict idle keys, so memory stays
//! bounded with millions of distinct keys.
//!
//! A store shared between processes is chosen on the builder with
//! [`store`](crate::rate_limit::RateLimitBuilder::store): it builds the store from the
//! layer's own limits, so it follows every limit, key and margin set on the builder,
//! and the layer keeps its type. With the `redis` feature,
//! `ratewise::redis::Redis::rate_limit(name)` is that store: one Lua script per
//! decision, on the server's clock, deciding exactly as the in-memory store does; while
//! Redis is unreachable it decides locally at `1/n` of each quota (`fail_open(n)`) or
//! refuses with [`StoreUnavailable`](crate::vocabulary::RefusalKind::StoreUnavailable)
//! (`fail_closed()`). Redis is the one distributed engine: the store contract is
//! internal, so there are no custom stores to keep in step with it.
//!
//! ## Observing a rate limiter
//!
//! `tracing` events: every wait (`debug`, key and expected wait; again on admission with
//! the actual wait), every wait-mode refusal (`info`, key and wait), every reject-mode
//! `429` (`debug`, key and retry-after, plus at most two summary lines per 10 s at
//! `warn`/`info` that never name a key), store failures (`debug`: a shared store logs its
//! outage itself, once). Counters: [`RateLimitLayer::stats`](crate::RateLimitLayer::stats) /
//! [`RateLimit::stats`](crate::rate_limit::RateLimit::stats), a
//! [`RateLimitStats`](crate::rate_limit::RateLimitStats) snapshot.
//!
//! # Cooldown
//!
//! [`CooldownLayer`](crate::CooldownLayer) watches the verdict of every answer (read
//! with [`verdict_of`](crate::verdict_of) and
//! [`verdict_of_error`](crate::verdict_of_error), so put a
//! [`ClassifyLayer`](crate::ClassifyLayer) underneath for bodies such as QQ's 400 or
//! GLM's code 1302; a plain 429 is judged without one). When an answer is
//! rate-limited, its key (by default the request's authority; any
//! [`KeyExtractor`](crate::key::KeyExtractor)) cools down, and no request for that key
//! reaches the upstream until the cooldown is over: neither new requests nor those that
//! passed the cooldown earlier and are still waiting in a rate limiter below it (see
//! [below](#requests-held-back-below-the-cooldown)).
//!
//! ## How long a key cools
//!
//! The server's hint is the cooldown; the layer's own backoff applies only when there
//! is none. `n` counts consecutive rate-limited answers and `backoff(n)` is
//! [`exponential`](crate::cooldown::CooldownBuilder::exponential) (`base * 2^(n-1)`) or
//! [`linear`](crate::cooldown::CooldownBuilder::linear) (`base * n`), both capped.
//!
//! | the rate-limited answer | the key cools for |
//! |---|---|
//! | carries a hint (`Retry-After`, `retry_after`, ...) | the hint, plus the `precheck` margin: a string of `retry_after: 1` answers cools 1 s each time, however many |
//! | carries no hint | `backoff(n)` plus the margin: 1, 2, 4, 8 s... for a 1 s base |
//! | limited again right after a hinted cooldown, with no new hint | `backoff(n)`: `n` kept counting through the hinted cooldowns, so the backoff has escalated |
//!
//! A server that keeps answering with a short hint gets one probe per hint plus
//! margin, as it asked: never more. An optional
//! [`max_cooldown`](crate::cooldown::CooldownBuilder::max_cooldown) caps the total, the
//! server's hint included, and the
//! [`CooldownEvent::Started`](crate::cooldown::CooldownEvent::Started) event says so (`capped`,
//! `requested`). An optional [`precheck`](crate::cooldown::CooldownBuilder::precheck)
//! margin keeps a key cooling a little past the end the server asked for.
//!
//! - A later signal only ever **extends** a cooldown, never shortens it.
//! - `n` counts answers to requests sent after the previous counted signal: ten 429s
//!   to ten requests that were in flight together count once (the later ones can still
//!   extend the cooldown with their own `Retry-After`).
//! - A success resets `n` to zero. Transient answers (5xx, 408, connection errors) and
//!   other failures leave `n` alone.
//! - Refusals by other ratewise layers below (a rate limiter's `max_wait`, a pool with
//!   every backend cooling: a [`Refusal`](crate::Refusal) that has not
//!   [`reached_upstream`](crate::Refusal::reached_upstream)) never reached the
//!   upstream, so they are no signal: they pass through and change nothing.
//!
//! ## While a key cools
//!
//! - [`wait`](crate::cooldown::CooldownBuilder::wait) (default, 10 s): the response future
//!   waits (with `tokio::time`) if the cooldown ends within `max_wait` of the request's
//!   arrival, and otherwise fails at once, without sleeping, with a
//!   [`Refusal`](crate::Refusal) of kind
//!   [`CoolingDown`](crate::vocabulary::RefusalKind::CoolingDown).
//! - [`fail_fast`](crate::cooldown::CooldownBuilder::fail_fast): that refusal at once.
//!
//! The refusal (find it in a [`BoxError`](crate::BoxError) with
//! [`Refusal::find`](crate::Refusal::find)) names the key and the remaining wait
//! ([`retry_after`](crate::Refusal::retry_after)); `verdict_of_error` reads it as
//! rate-limited with that wait.
//!
//! ## Half-open
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
//! In fail-fast mode, requests that meet a probe in flight get a refusal of kind
//! [`Probing`](crate::vocabulary::RefusalKind::Probing) with a zero wait
//! ([`Refusal::is_probing`](crate::Refusal::is_probing)).
//!
//! ## Requests held back below the cooldown
//!
//! In the standard stack the cooldown sits above a
//! [`RateLimitLayer`](crate::RateLimitLayer) (so that after a cooldown the released
//! requests are paced by the limiter, not sent as a burst). A request can then pass the
//! cooldown while its key is open and wait in the limiter's queue while another
//! request's rate-limited answer starts a cooldown. Such a request must not go out when
//! its cell comes: it would land inside the server's penalty (Telegram doubles the
//! penalty on every such call).
//!
//! So the cooldown attaches a hold (its table, the key, and whether the request is the
//! probe) to every request it lets through, and the rate limiter, in wait mode,
//! re-checks every hold a request carries right before a request it held back (denied
//! a cell, or queued) asks for its cells. If a key is cooling by then, or half-open with
//! another request as the probe, the request takes no cell, is not sent, and fails with
//! the cooldown's [`Refusal`](crate::Refusal) (the remaining wait, or zero when
//! half-open). The cooldown recognises that refusal as coming from its own hold: it
//! counts the request in [`rejected`](crate::cooldown::CooldownStats::rejected), not as
//! a rate-limited answer (no `n + 1`, no extension), and a probe refused that way frees
//! its slot. The probe passes its own hold.
//!
//! The cooldown no longer holds that request, so it cannot wait on its behalf even in
//! [`wait`](crate::cooldown::CooldownBuilder::wait): the caller gets the refusal. A
//! [`RetryLayer`](crate::RetryLayer) above (as in
//! [`ClientStackLayer`](crate::ClientStackLayer)) reads it as rate-limited with the
//! remaining wait, waits, and sends the request again through the cooldown, which then
//! lines it up behind the probe.
//!
//! The guarantee: once a rate-limited answer has reached the cooldown, no request for
//! its key reaches the upstream through ratewise's layers until the cooldown is over
//! and the probe has been answered. The one exception no client can avoid: requests
//! already sent when the upstream sent that answer (on the wire, or handed to the inner
//! client in the same instant). Their answers may extend the cooldown with their own
//! retry hints but do not count as new signals; keeping few requests in flight (a
//! limiter with a small burst) keeps them few.
//!
//! ## Observing a cooldown
//!
//! [`CooldownHandle`](crate::cooldown::CooldownHandle) (from
//! [`CooldownLayer::handle`](crate::CooldownLayer::handle) or
//! [`Cooldown::handle`](crate::cooldown::Cooldown::handle)) answers
//! [`state`](crate::cooldown::CooldownHandle::state) /
//! [`cooling_until`](crate::cooldown::CooldownHandle::cooling_until) per key, cheaply,
//! and returns [`CooldownStats`](crate::cooldown::CooldownStats).
//! [`CooldownEvent`](crate::cooldown::CooldownEvent)s go to `tracing` and to the
//! callback set with [`CooldownBuilder::on_event`](crate::cooldown::CooldownBuilder::on_event).
//!
//! Keys that are neither cooling nor half-open and have `n == 0` are dropped from the
//! table. A key whose cooldown ended but was never probed (no request came) keeps its
//! entry until its next request.
//!
//! ## Cooldowns shared between processes
//!
//! [`CooldownBuilder::store`](crate::cooldown::CooldownBuilder::store) takes a shared
//! store: with the `redis` feature, `ratewise::redis::Redis::cooldown(name)`. The table stays in memory (waiters,
//! fairness, the local probe) and mirrors the store: each admission asks the store where
//! the key stands, so a cooldown another process started holds here before this process
//! sends again; rate limits, probe answers and count resets are recorded there before
//! the caller gets them. The store extends (never shortens) the deadline, counts, and
//! hands the half-open probe to one request across every process.
//!
//! # Retry
//!
//! [`RetryLayer`](crate::RetryLayer) wraps a service in tower's own
//! [`tower::retry::Retry`], driven by a policy (`RetryLayer::policy`) that
//! reads every result's [`Verdict`](crate::Verdict) through
//! [`verdict_of`](crate::verdict_of) (responses) and
//! [`verdict_of_error`](crate::verdict_of_error) (errors):
//!
//! - **What is retried**: rate-limited and transient verdicts, which includes
//!   connection-level errors. Anything else (a success, a plain 400) goes back at once.
//!   Rate limits hidden in other statuses (QQ's 400, DingTalk's 403, GLM's 429 code
//!   1302) are retried once a [`ClassifyLayer`](crate::ClassifyLayer) below this layer
//!   has marked them.
//! - **How long to wait**: the server's wait (`Retry-After`, Telegram's `retry_after`)
//!   when it gave one; a wait longer than
//!   [`max_delay`](crate::retry::RetryBuilder::max_delay) is not waited at all, the
//!   response goes straight back (Telegram's 4310 s never hangs a caller). Otherwise the
//!   [schedule](crate::retry::RetryBuilder::schedule) (QQ's 0.5, 1.5, 3.0 s) or
//!   [exponential](crate::retry::RetryBuilder::exponential) delays with a cap and
//!   optional [`Jitter`](crate::retry::Jitter).
//! - **When to stop**: after [`max_attempts`](crate::retry::RetryBuilder::max_attempts);
//!   before a wait that would end at or past the call's total
//!   [`deadline`](crate::retry::RetryBuilder::deadline); when the shared retry
//!   [budget](crate::retry::RetryBuilder::tps_budget) (tower's `TpsBudget`) is
//!   overdrawn, which stops retry storms. Each reason is counted in
//!   [`RetryStats`](crate::retry::RetryStats).
//! - **How long a call lasts**: never past its total
//!   [`deadline`](crate::retry::RetryBuilder::deadline), attempts and the waits inside
//!   them included (a slow upstream, a cooldown or rate limiter waiting below): what is
//!   in flight at the deadline is dropped and the caller gets
//!   [`DeadlineExceeded`](crate::retry::DeadlineExceeded).
//! - **What the caller gets**: the last upstream response untouched (status, headers,
//!   body), or the last error if the last attempt errored, or
//!   [`DeadlineExceeded`](crate::retry::DeadlineExceeded).
//!
//! Waits use `tokio::time::sleep`, so they are cancelled with the caller's future and
//! follow tokio's paused clock in tests. Each retry is a `debug` tracing event (attempt,
//! delay, verdict) and each give-up an `info` event naming the reason. Events never
//! carry the URI, which for some APIs (Telegram) holds a token.
//!
//! ## Retried request bodies
//!
//! A request is sent again only if it can be copied: its body must implement
//! [`TryCloneBody`](crate::retry::TryCloneBody). Bodies in memory (`Full<Bytes>`,
//! `String`, `Bytes`, `()`...) clone. Streaming bodies do not: a request carrying one is
//! sent once, without retry, and whatever comes back is returned as is. To retry a
//! streaming body, read it into memory first with
//! [`buffer_request`](crate::retry::buffer_request) (up to a limit), which gives a
//! [`RetryBody`](crate::retry::RetryBody); any other body type can ride the same layer
//! as [`RetryBody::streaming`](crate::retry::RetryBody::streaming).
//!
//! tower's `Retry` stores a clone of the inner service per call, so the inner service
//! must be `Clone`.
//!
//! # Cache
//!
//! Some endpoints are asked the same question again and again, and punish the asking:
//! every QQ bot reconnect calls `GET /gateway`, which allows about two calls per
//! window and then answers HTTP 400 "接口调用超过频率限制", so a reconnect storm ends
//! with no gateway URL at all. [`CachedEndpointLayer`](crate::CachedEndpointLayer)
//! keeps the last good answer per key and hands it out while the endpoint refuses, with
//! zero calls.
//!
//! ## The rules of the cache
//!
//! - **Per key.** Requests map to entries through a
//!   [`KeyExtractor`](crate::key::KeyExtractor), by default
//!   [`MethodUri`](crate::key::MethodUri) (`GET api.sgroup.qq.com/gateway #<fingerprint>`:
//!   method, host, path with token-looking segments masked, and a hash of the full URI).
//! - **What is kept**: the last good answer, that is a 2xx response whose
//!   [`verdict_of`](crate::verdict_of) is [`Verdict::Success`](crate::Verdict::Success):
//!   status, headers, extensions, body and trailers, buffered with the crate's one
//!   body peeker up to [`body_cap`](crate::cache::CacheBuilder::body_cap). A good answer
//!   with a larger body reaches its caller whole (the peeker replays what it read) and
//!   is not kept. Put a [`ClassifyLayer`](crate::ClassifyLayer) under this layer so that
//!   a rate limit hidden in a 400 body (QQ) or a 200 body is judged as one.
//! - **Fresh** for the [`ttl`](crate::cache::CacheBuilder::ttl), or, without one, until
//!   [invalidated](crate::cache::CacheHandle::invalidate). A fresh entry is served
//!   without calling the upstream ([`CacheStatus::Hit`](crate::cache::CacheStatus::Hit)).
//! - **Single flight.** At most one upstream call per key is in flight. Requests that
//!   find no fresh entry while it runs wait for it (on a `tokio::sync::watch` channel,
//!   no polling) and get: the new entry, or the stale entry when the call was
//!   refused, or, with nothing cached, an identical copy of the upstream's answer,
//!   buffered up to the cap. An answer that cannot be copied (an error, or a body over
//!   the cap) goes to its own caller only; the waiters then decide again, so the next
//!   of them makes the next call, alone, and the others wait for that one. Never more
//!   than one call per key is in flight, and every caller gets a real answer of the
//!   upstream or a copy of one. A cancelled caller hands the lead on the same way.
//! - **Serving stale.** When the upstream answers rate-limited, or fails (a
//!   [`Transient`](crate::Verdict::Transient) or [`Failure`](crate::Verdict::Failure)
//!   verdict, or an error, judged by [`verdict_of_error`](crate::verdict_of_error)),
//!   and the key has an entry, fresh or not, the entry is served, marked
//!   [`CacheStatus::Stale`](crate::cache::CacheStatus::Stale) with the
//!   [`StaleReason`](crate::cache::StaleReason).
//! - **Cooldown.** A rate-limited answer (or error) starts a cooldown for its key: the
//!   server's retry hint, else
//!   [`default_backoff`](crate::cache::CacheBuilder::default_backoff) (10 s, QQ's
//!   window). During it no request for the key reaches the upstream: the stale entry is
//!   served ([`StaleReason::CoolingDown`](crate::cache::StaleReason::CoolingDown)), or,
//!   with nothing cached, the request fails with a [`Refusal`](crate::Refusal) of kind
//!   [`EndpointLimited`](crate::vocabulary::RefusalKind::EndpointLimited) (key and
//!   remaining wait). So in a storm on an empty cache, the callers whose call was in
//!   flight when the 400 came get that 400, byte for byte, and the ones after it get
//!   `EndpointLimited` instead of a call that would only prolong the limit. Nothing is
//!   invented: no response is ever made up.
//! - **No entry**: the upstream's answer or error reaches the caller unchanged; an
//!   error is the inner service's own, boxed (downcast it to its type).
//! - **Invalidation** ([`CacheHandle::invalidate`](crate::cache::CacheHandle::invalidate),
//!   [`invalidate_all`](crate::cache::CacheHandle::invalidate_all)) marks an entry
//!   stale rather than deleting it: the next request refreshes, and if that refresh is
//!   refused the invalidated entry is still served. It does not lift a running
//!   cooldown. [`CacheHandle::remove`](crate::cache::CacheHandle::remove) deletes an
//!   entry for real.
//! - **Marks.** Every response the layer returns carries a
//!   [`CacheStatus`](crate::cache::CacheStatus) in its extensions;
//!   [`status_header`](crate::cache::CacheBuilder::status_header) also writes it to a
//!   header (`hit`, `miss`, `stale`); that is off by default, leaving the upstream's
//!   headers untouched.
//! - **Counters**: [`CacheHandle::stats`](crate::cache::CacheHandle::stats).
//!
//! ## What to cache
//!
//! Use it for idempotent requests (GET, HEAD, or a POST that only fetches, such as a
//! token endpoint): a cached answer stands in for a call that was not made. The key
//! includes the method by default. The layer's `poll_ready` is always ready; a request
//! that calls the upstream waits for a clone of the inner service to be ready, so the
//! inner service must be `Clone`. Entries live until removed: key by a few endpoints,
//! not by something unbounded. Not for streams: a 2xx answer is buffered (up to the
//! cap) before its caller sees it, so an SSE endpoint would be held back.
//!
//! ## A refresh that is refused
//!
//! An endpoint that answers once, then says 429: the first call is a miss, the
//! next is served from the cache, and after an invalidation the refused refresh
//! gets the old answer, marked stale.
//!
//! ```
//! use bytes::Bytes;
//! use http::{Request, Response};
//! use http_body_util::{BodyExt, Empty, Full};
//! use ratewise::cache::{CacheStatus, CachedEndpointLayer, StaleReason};
//! use ratewise::key::{KeyExtractor, MethodUri};
//! use std::sync::atomic::{AtomicUsize, Ordering};
//! use std::sync::Arc;
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), ratewise::BoxError> {
//! // An endpoint that answers once, then says 429.
//! let calls = Arc::new(AtomicUsize::new(0));
//! let upstream = service_fn({
//!     let calls = calls.clone();
//!     move |_req: Request<Empty<Bytes>>| {
//!         let n = calls.fetch_add(1, Ordering::SeqCst);
//!         async move {
//!             let res = match n {
//!                 0 => Response::new(Full::new(Bytes::from(r#"{"url":"wss://gw/1"}"#))),
//!                 _ => Response::builder().status(429).body(Full::new(Bytes::new()))?,
//!             };
//!             Ok::<_, http::Error>(res)
//!         }
//!     }
//! });
//! let layer = CachedEndpointLayer::new();
//! let handle = layer.handle();
//! let svc = ServiceBuilder::new().layer(layer).service(upstream);
//! let get = || Request::get("https://api.example/gateway").body(Empty::new()).unwrap();
//!
//! let res = svc.clone().oneshot(get()).await?;
//! assert_eq!(res.extensions().get::<CacheStatus>(), Some(&CacheStatus::Miss));
//!
//! // Fresh: no call.
//! let res = svc.clone().oneshot(get()).await?;
//! assert_eq!(res.extensions().get::<CacheStatus>(), Some(&CacheStatus::Hit));
//! assert_eq!(calls.load(Ordering::SeqCst), 1);
//!
//! // The URL turned out dead: refresh. The endpoint says 429; the old URL is served.
//! handle.invalidate(MethodUri.key_of(&get()));
//! let res = svc.clone().oneshot(get()).await?;
//! assert_eq!(
//!     res.extensions().get::<CacheStatus>(),
//!     Some(&CacheStatus::Stale { reason: StaleReason::RateLimited })
//! );
//! let body = res.into_body().collect().await?.to_bytes();
//! assert_eq!(body, Bytes::from(r#"{"url":"wss://gw/1"}"#));
//! assert_eq!(calls.load(Ordering::SeqCst), 2);
//! # Ok(()) }
//! ```
//!
//! # Fresh client
//!
//! A pooled HTTP client can go stale: every request on it fails at the connection
//! level until the client is rebuilt, and the errors may not even say why (a QQ Bot
//! gateway client once ran on a stale pool whose exceptions had empty messages, so the
//! logs said nothing). [`FreshClientLayer`](crate::FreshClientLayer) fixes both halves:
//!
//! - It wraps a `MakeService` (any [`Service`](tower::Service) that takes a target
//!   and returns a client, e.g. `tower::service_fn(|()| async { Ok(build_client()) })`)
//!   in a [`FreshClient`](crate::fresh::FreshClient). The client is built lazily, on
//!   the first `poll_ready`, and requests go through it. After `threshold` consecutive
//!   connection-level errors from that client, it is dropped and the `MakeService`
//!   builds a new one before the next request.
//! - Every error the client returns comes back as a
//!   [`ClientError`](crate::fresh::ClientError) whose `Display` names the client's
//!   generation and its run of errors and is never empty (it falls back to the
//!   original's `Debug`, then its type name); `source()` is the original.
//!
//! ## What counts as a connection error
//!
//! Results are judged with [`verdict_of_error`](crate::verdict_of_error):
//!
//! - an `Err` that is [`Verdict::Transient`](crate::Verdict::Transient) (every error
//!   except ratewise's own refusals) counts: it is a connection-level error;
//! - a response of **any** status (a 500 or a 429 too) ends the run: the connection
//!   worked;
//! - ratewise's own refusals ([`Refusal`](crate::Refusal): rate-limited, not
//!   connection-level) are passed through unwrapped and neither count nor end the run.
//!
//! ## Sharing and concurrency
//!
//! Clones share the current client, its generation and the run of errors. The client
//! type must be `Clone`; each clone of the service holds its own copy of the current
//! client, so requests in flight on a retired client finish on it. Results from a
//! retired generation change nothing: N errors from the old client, arriving after a
//! rebuild started, do not retire the new one. Only one build runs at a time: the
//! `MakeService` future lives in the shared state, and every clone waiting for it helps
//! drive it, so a caller that gives up cannot strand the others.
//!
//! A failed build is returned as a [`MakeClientError`](crate::fresh::MakeClientError)
//! (naming the target) from the `call` of the request that was waiting for it; the next
//! request tries again.
//!
//! [`FreshStats`](crate::fresh::FreshStats) counts rebuilds and shows the current
//! generation and run of errors. A rebuild is logged with `tracing` at `warn` (target
//! `ratewise::fresh`) with the generation, the run length and the last error's text,
//! URL paths and queries cut out so no token reaches the log.
//!
//! # Classify
//!
//! A [`Classifier`](crate::Classifier) looks at a response's status and headers. Only
//! for the statuses it asks about
//! ([`Classifier::wants_body`](crate::Classifier::wants_body)) does it also see a
//! bounded prefix of the body (64 KiB by default, see
//! [`ClassifyLayer::body_cap`](crate::ClassifyLayer::body_cap)). Responses it does not
//! ask about are never buffered, so a 200 SSE stream flows through chunk by chunk.
//!
//! [`ClassifyLayer`](crate::ClassifyLayer) runs the classifier once and stores the
//! verdict in the response's extensions; every other ratewise layer reads it from there
//! with [`verdict_of`](crate::verdict_of), so a response stacked under several layers is
//! classified once. Built-in classifiers, one per file, compose with
//! [`Classifier::or`](crate::Classifier::or) and closures;
//! [`Preset`](crate::classify::Preset) bundles them per platform.
//!
//! ## Retry hints
//!
//! [`retry_after::parse`](crate::retry_after::parse) reads the headers, and the body
//! prefix when one is given, and returns how long the server asked the client to wait.
//! Every ratewise layer and classifier gets its retry hint from there (through
//! [`ResponseView::retry_after`](crate::classify::ResponseView::retry_after)); nothing
//! else in the crate parses `Retry-After`.
//!
//! The first source that yields a usable value wins; an unusable value is skipped
//! with a `tracing` warning naming the header (a body is never logged) and the next
//! source is tried. The sources, in order of precedence:
//!
//! | # | source | form |
//! |---|---|---|
//! | 1 | `retry-after-ms` (OpenAI, Azure) | milliseconds, integer or float |
//! | 2 | `Retry-After` (RFC 9110) | seconds, integer or float, or an HTTP-date; a date in the past means zero |
//! | 3 | `x-ratelimit-reset-after` (Discord and others) | seconds, float allowed |
//! | 4a | `x-ratelimit-reset` | a reset value (see below) |
//! | 4b | `x-ratelimit-reset-requests`, `x-ratelimit-reset-tokens` (OpenAI) | Go-style durations (`1s`, `6m0s`, `20ms`, `1h2m3.5s`); the larger of the two |
//! | 5a | `RateLimit` (IETF draft) | `limit=10, remaining=0, reset=5` (draft-07) or `"default";r=0;t=30` (draft-08+); with several policies, the longest reset among exhausted ones (`r=0`), else the longest reset |
//! | 5b | `RateLimit-Reset` (IETF drafts up to 06) | a reset value |
//! | 6 | JSON body: `parameters.retry_after` (Telegram), then top-level `retry_after` | seconds |
//! | 7 | text in the body | `retry after 4310`, `Retry-After: 5`, `Please retry after 7 seconds`, `try again in 20s`, `try again in 1m30s`; case-insensitive, a bare number is seconds |
//!
//! A **reset value** is a delta in seconds, or an absolute Unix time: values of at
//! least 1 000 000 000 (10⁹ s is 31.7 years as a delta, September 2001 as a date) are
//! epoch seconds, values of at least 10¹² are epoch milliseconds. Absolute times are
//! measured against `now` and a time in the past means zero. Deltas may be floats.
//!
//! Malformed, empty, negative, NaN, infinite (`1e400`) and overflowing
//! (`18446744073709551616`) values are skipped. When a header has several values, the
//! first usable one counts (`RateLimit` lines are read together as one list). Header
//! values that are not visible ASCII are skipped. The body may be a truncated prefix,
//! invalid JSON or not UTF-8. The parser never panics.
//!
//! The result may be very long (a server may say `Retry-After: 4310`, or much more):
//! callers compare it with their own maximum wait and add it to instants with
//! `checked_add`.
//!
//! ## Body peeking
//!
//! Every ratewise layer that needs to see a body goes through the one
//! [`body`](crate::body) module:
//!
//! - `peek` reads data frames until at least `cap` bytes are
//!   buffered or the body ends, and resolves to a `Peeked`: the
//!   bounded `prefix` a classifier looks at, whether the
//!   whole body fitted in the cap (`is_complete`,
//!   what a cache needs before it stores a body, see
//!   `into_complete`), and the body to give back
//!   (`into_body`).
//! - [`PeekBody`](crate::body::PeekBody) is the body the caller gets. It is either a
//!   zero-cost pass-through of the inner body (nothing buffered, nothing boxed, frames
//!   forwarded as they arrive), or a replay: the frames already read, then the rest of
//!   the inner body, then its trailers. A body error met while peeking is delivered
//!   after the bytes read before it, exactly as the upstream produced it.
//!
//! Only the peeking path boxes the inner body (so that no `Unpin` bound is needed);
//! the pass-through path costs nothing.
//!
//! # Pool
//!
//! Ordered backends with fallback: a request goes to the first backend that is not
//! cooling down and has capacity, and moves on to the next in the same call when a
//! backend answers rate-limited. [`Pool`](crate::Pool) does an LLM sidecar's job
//! (primary/fallback pools, per-backend cooldown `base * 2^(n-1)`, precheck, model to
//! backend routing, retry across pools, SSE passed through, stats) as one tower
//! service, built from the crate's pieces:
//!
//! - **Backends** are any `Service<Request<B>>`, usually a client under its own
//!   [`RateLimitLayer`](crate::RateLimitLayer) (the per-backend RPM bucket) and a
//!   [`ClassifyLayer`](crate::ClassifyLayer) for its platform (GLM's 429 code 1302,
//!   OpenAI's 429). They are boxed, so stacks of different types mix; each has a name
//!   and sits in a priority group: [`primary`](crate::pool::PoolBuilder::primary) (0),
//!   then [`fallback`](crate::pool::PoolBuilder::fallback) (1), then any further
//!   [`backend`](crate::pool::PoolBuilder::backend) group.
//! - **Cooldown**: the pool owns one [`CooldownLayer`](crate::CooldownLayer), keyed by
//!   backend name, in fail-fast mode, around every backend. A rate-limited answer
//!   (read with [`verdict_of`](crate::verdict_of) /
//!   [`verdict_of_error`](crate::verdict_of_error)) puts the backend into cooldown,
//!   the server's hint, else `base * 2^(n-1)` by default; configure it with
//!   [`PoolBuilder::cooldown`](crate::pool::PoolBuilder::cooldown) (backoff,
//!   `max_cooldown`, [`precheck`](crate::cooldown::CooldownBuilder::precheck)). After
//!   the cooldown, one probe request goes to the backend and decides.
//! - **Routing**: the candidates of a request come from a route table keyed by model
//!   ([`route`](crate::pool::PoolBuilder::route), reading the
//!   [`Model`](crate::pool::Model) extension or any
//!   [`route_key`](crate::pool::PoolBuilder::route_key)), or from a closure
//!   ([`route_fn`](crate::pool::PoolBuilder::route_fn)); by default every backend.
//!   Candidates are always tried in priority-group order, then in the order the route
//!   names them.
//!
//! ## One call
//!
//! 1. The candidates are looked at in order. A candidate that is cooling, or half-open
//!    with its probe in flight, is skipped. The next one's `poll_ready` is polled:
//!    `Pending` means no capacity now (e.g. a `ConcurrencyLimit` that is full): skipped
//!    too. The first candidate that is ready gets the request.
//!
//!    A backend's own [`RateLimitLayer`](crate::RateLimitLayer) is always ready (it
//!    waits in its response future, like every ratewise layer), so an empty bucket does
//!    not show in `poll_ready`. Give it a short
//!    [`max_wait`](crate::rate_limit::RateLimitBuilder::max_wait) (`Duration::ZERO`:
//!    "only if a cell is free now"): an empty bucket then answers a
//!    [`MaxWait`](crate::vocabulary::RefusalKind::MaxWait) refusal at once, which the
//!    pool reads as rate-limited with the bucket's wait: the call moves on, and the
//!    backend is skipped until its bucket has a cell. With an unbounded `max_wait` the
//!    call would wait inside that backend instead.
//! 2. If its answer is rate-limited (a response whose verdict says so, or an error
//!    such as a rate limiter's `max_wait` refusal), the backend cools down and the
//!    same call goes on with the remaining candidates, with a copy of the request.
//!    With [`failover_on_transient`](crate::pool::PoolBuilder::failover_on_transient),
//!    5xx and connection errors move on too. Each backend is tried at most once per
//!    call.
//! 3. If no remaining candidate is available, the call waits (with `tokio::time`,
//!    never past its arrival plus [`max_wait`](crate::pool::PoolBuilder::max_wait)) for
//!    the first cooldown to end or for a busy candidate to have capacity, then looks
//!    again. When every remaining candidate is cooling and the first recovers too late,
//!    it stops at once, without sleeping.
//!
//! ## What the caller of a pool gets
//!
//! - **A backend's answer, as it came** (status, headers, body, streaming included),
//!   with [`ServedBy`](crate::pool::ServedBy) in its extensions, whenever a backend was
//!   called during the call: the answer that was not failed over, or, when the call has
//!   to stop after a failover (no candidate left, or none reachable within
//!   `max_wait`), **the last answer a backend gave**. A real upstream 429 is never
//!   replaced by a pool error (LiteLLM #20867: "No deployments available" hid the real
//!   429).
//! - A [`Refusal`](crate::Refusal) of kind
//!   [`AllBackendsCooling`](crate::vocabulary::RefusalKind::AllBackendsCooling) only
//!   when **no backend was called**: every candidate was cooling (or unavailable) and
//!   the first recovery lies past `max_wait`. Its
//!   [`retry_after`](crate::Refusal::retry_after) is the time to that recovery;
//!   [`verdict_of_error`](crate::verdict_of_error) reads it as rate-limited with that
//!   wait, so a retry layer above knows how long to wait. Its
//!   [`candidates`](crate::Refusal::candidates) say why each backend was passed over.
//! - [`NoBackendReady`](crate::vocabulary::RefusalKind::NoBackendReady) when no backend
//!   was called and, for the whole `max_wait`, the candidates had no capacity (and none
//!   was cooling).
//! - [`NoRoute`](crate::vocabulary::RefusalKind::NoRoute) when the route chose no
//!   backend.
//!
//! ## Pool request bodies
//!
//! Moving on needs a copy of the request: the body must implement
//! [`TryCloneBody`](crate::retry::TryCloneBody), and a copy is made only while another
//! candidate remains. A request whose body cannot be cloned (a streaming body,
//! [`RetryBody::streaming`](crate::retry::RetryBody::streaming)) goes to **one backend
//! only**: the first available candidate, whose answer, rate-limited or not, goes to
//! the caller. Buffer it first with [`buffer_request`](crate::retry::buffer_request)
//! to let it fail over.
//!
//! ## Pool responses
//!
//! The pool never touches a response body: an SSE stream flows from the backend that
//! serves it to the caller chunk by chunk. (A [`ClassifyLayer`](crate::ClassifyLayer)
//! reads a body prefix only for the statuses its classifier asks about, never a 2xx
//! one in the presets.) All backends must answer with the same body type.
//!
//! ## Observing a pool
//!
//! [`Pool::handle`](crate::Pool::handle) gives a [`PoolHandle`](crate::pool::PoolHandle):
//! each backend's cooldown state (ok, cooling until, half-open) and counters (requests,
//! successes, rate-limited, failed, failovers, skips), and pool-wide totals. `tracing`
//! events (target `ratewise::pool`): `info` on failover (backend, verdict, retry hint)
//! and on a refusal, `debug` on a skip (backend, reason, wait) and when a call starts
//! waiting. Events carry backend names, never URIs or headers.
//!
//! A waiting call is woken exactly, never by polling: by the earliest cooldown's end,
//! by a busy backend's `poll_ready`, or by the cooldown entry of a backend whose probe
//! is in flight, when that probe is answered.
//!
//! # Stack
//!
//! [`ClientStackLayer`](crate::ClientStackLayer) assembles the four layers of the
//! standard client stack, `Retry → Cooldown → RateLimit → classification → client`, in
//! that order, so that:
//!
//! - every response is classified once, innermost ([`ClassifyLayer`](crate::ClassifyLayer)
//!   with a [`Preset`](crate::classify::Preset)), and every outer layer reads
//!   that verdict;
//! - the rate limiter paces what reaches the upstream (wait mode, bounded by its
//!   `max_wait`);
//! - the cooldown sits outside the limiter, so a key that the upstream is punishing
//!   holds its callers back before they take a token, and lets exactly one probe
//!   through when the penalty ends, after which the limiter paces the rest. Requests
//!   that were already waiting in the limiter when the penalty began are stopped there
//!   by the cooldown's hold, take no token, and go back to the retry with the
//!   cooldown's [`Refusal`](crate::Refusal), which it waits out. Only requests already
//!   sent when the upstream sent its rate-limited answer can land in the penalty (see
//!   [requests held back below the cooldown](#requests-held-back-below-the-cooldown));
//! - the retry is outermost: it waits out a server's `Retry-After` (up to its
//!   `max_delay`) and then goes through the cooldown again, so a retry never reaches
//!   an upstream that is still penalising the client. A wait longer than `max_delay`
//!   is not waited: the caller gets the upstream's answer (or the cooldown's
//!   [`Refusal`](crate::Refusal)) at once.
//!
//! ## Presets
//!
//! | preset | classifier | rate limit | cooldown | retry |
//! |---|---|---|---|---|
//! | [`Platform::Qq`](crate::Platform::Qq) | [`Preset::qq`](crate::classify::Preset::qq) (400 + "频率限制") | 4/s, burst 1, max wait 10 s | exponential 1 s..60 s | schedule 0.5, 1.5, 3.0 s; max delay 10 s; deadline 30 s |
//! | [`Platform::DingTalk`](crate::Platform::DingTalk) | [`Preset::dingtalk`](crate::classify::Preset::dingtalk) (403/429 QpsLimit) | 18/s, burst 2, max wait 2 s (the per-tenant card cap of 20 per second) | exponential 2 s..60 s | exponential 2 s..30 s, 4 attempts, deadline 30 s |
//! | [`Platform::Telegram`](crate::Platform::Telegram) | [`Preset::telegram`](crate::classify::Preset::telegram) (429 `retry_after`) | 28/s, burst 2, max wait 10 s (about 30 messages per second) | exponential 1 s..60 s, the server's `retry_after` is the cooldown | exponential 1 s..30 s, 5 attempts, max delay 60 s, deadline 60 s |
//! | [`Platform::Glm`](crate::Platform::Glm) | [`Preset::glm`](crate::classify::Preset::glm) (429 code 1302) | 45/min, burst 5, max wait 30 s (50 calls per 60 s) | exponential 1 s..60 s | exponential 1 s..30 s, 4 attempts, max delay 60 s, deadline 120 s |
//! | [`Platform::OpenAi`](crate::Platform::OpenAi) | [`Preset::openai`](crate::classify::Preset::openai) (429 `retry-after-ms`) | 50/min, burst 10, max wait 30 s (60 requests per minute) | exponential 1 s..60 s | exponential 0.5 s..20 s, 4 attempts, max delay 60 s, deadline 120 s |
//!
//! The deadline is the whole call's budget: every attempt, every wait and the body of
//! an error answer read for its classification end by then. A request a layer below
//! held back (a cooldown that began while it waited in the limiter) is sent again within
//! it without counting an attempt, and a refusal past the limiter's `max_wait` comes
//! back at once.
//!
//! The limits are conservative defaults taken from the platforms' published or
//! observed limits (DingTalk's 20 QPS per tenant, GLM's 50 calls per 60 s, Telegram's
//! ~30 messages per second). Platforms count calls in fixed windows, and GCRA admits at
//! most `burst + rate × window` calls in any window, so each preset keeps that sum at
//! the platform's cap (DingTalk: 2 + 18/s × 1 s = 20) rather than setting the burst to
//! the cap, which would let twice the cap through in the first window. Tune each field
//! with [`ClientStackBuilder::rate_limit`](crate::stack::ClientStackBuilder::rate_limit),
//! [`cooldown`](crate::stack::ClientStackBuilder::cooldown) and
//! [`retry`](crate::stack::ClientStackBuilder::retry), which hand you that layer's own
//! builder. Keys: the rate limiter has one bucket for the stack
//! (the default key: clone the layer into every stack that must share
//! it), the cooldown is per authority (host and port). For other keys, set them through
//! those builders, or stack the layers yourself in the same order. Every preset pads its
//! rate by a 1 % [margin](#safety-margin); a [limit](#several-limits) you add through
//! `rate_limit` has none until you give it one.
//!
//! ## Keys from the body
//!
//! The keys these platforms limit on are often in the JSON request body: Telegram's
//! `chat_id`, DingTalk's `outTrackId`.
//! [`key::json_field("/chat_id")`](crate::key::json_field) is a key extractor that reads
//! one field, by JSON pointer (strings as they are, numbers and booleans as their
//! text; a missing field, or a body that is not JSON, is the empty key). It reads the
//! body parsed once per call, a [`JsonBody`](crate::key::JsonBody) in the request's
//! extensions, and never parses it itself:
//!
//! - a [`ClientStackLayer`](crate::ClientStackLayer) whose rate limit or cooldown has a
//!   key that [needs the body](crate::key::KeyExtractor::needs_body) has its retry, the
//!   outermost layer, parse it once per call; every layer and every retry of the call
//!   share that parse;
//! - stacked by hand, build the outermost [`RetryLayer`](crate::RetryLayer) with
//!   [`parse_json_body(true)`](crate::retry::RetryBuilder::parse_json_body).
//!
//! Only bodies held in memory are read, the ones a retry can copy
//! ([`TryCloneBody::try_bytes`](crate::retry::TryCloneBody::try_bytes)); a streaming
//! body gets the empty key.
//!
//! ```
//! use ratewise::{key::json_field, rate_limit::Limit, ClientStackLayer, Platform};
//!
//! // Telegram: about 30 messages per second for the bot (the preset), and one per
//! // second per chat, keyed by the body's `chat_id`.
//! let telegram = ClientStackLayer::preset(Platform::Telegram)
//!     .rate_limit(|r| r.limit(Limit::per_second(1).key(json_field("/chat_id")).margin_percent(1)))
//!     .build()?;
//! # let _ = telegram;
//! # Ok::<(), ratewise::ConfigError>(())
//! ```
//!
//! ## The stack by hand
//!
//! The standard client stack by hand, outermost first: retry, cooldown, rate limit,
//! and one classification of every response.
//! [`ClientStackLayer`](crate::ClientStackLayer) builds the same from one config. Here
//! the upstream answers GLM's 429 code 1302 once: the cooldown holds the key back, the
//! retry tries again once it is over, and the caller gets the answer to the second
//! call.
//!
//! ```
//! use std::sync::atomic::{AtomicUsize, Ordering};
//! use std::sync::Arc;
//! use std::time::Duration;
//!
//! use http::{Request, Response, StatusCode};
//! use ratewise::{classify::Preset, ClassifyLayer, CooldownLayer, RateLimitLayer, RetryLayer};
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), ratewise::BoxError> {
//! // Any client service: hyper-util's `Client`, reqwest behind a `Service`, a mock...
//! let calls = Arc::new(AtomicUsize::new(0));
//! let client = service_fn({
//!     let calls = calls.clone();
//!     move |_req: Request<String>| {
//!         let first = calls.fetch_add(1, Ordering::SeqCst) == 0;
//!         async move {
//!             let (status, body) = if first {
//!                 (StatusCode::TOO_MANY_REQUESTS, r#"{"error":{"code":"1302","message":"rate limited"}}"#)
//!             } else {
//!                 (StatusCode::OK, r#"{"choices":[]}"#)
//!             };
//!             Response::builder().status(status).body(body.to_owned())
//!         }
//!     }
//! });
//!
//! let glm = ServiceBuilder::new()
//!     .layer(RetryLayer::builder().exponential(Duration::from_secs(1), Duration::from_secs(30)).build()?)
//!     .layer(CooldownLayer::new())
//!     .layer(RateLimitLayer::builder().per_minute(50).burst(10).max_wait(Duration::from_secs(30)).build()?)
//!     .layer(ClassifyLayer::new(Preset::glm()))
//!     .service(client);
//!
//! let req = Request::post("http://open.bigmodel.cn/api/paas/v4/chat/completions").body(String::new())?;
//! let res = glm.oneshot(req).await?;
//! assert_eq!(res.status(), StatusCode::OK);
//! assert_eq!(calls.load(Ordering::SeqCst), 2);
//! # Ok(()) }
//! ```
