//! Telegram Bot API: N calls per window, then a 429 penalty that doubles while the
//! client keeps calling, up to 4310 s; optionally, a per-chat limit that penalises the
//! whole bot too ([`TelegramBot::per_chat`]).
//!
//! Telegram has answered **429** "Too Many Requests" with a retry after **4310 s**, and
//! the platform escalates the ban when a client keeps hammering. This mock models that,
//! so a test can check that a client waits a penalty out:
//! [`TelegramBot::calls_during_penalty`] counts the calls that escalated it. What it
//! answers, exactly, is on [`TelegramBot`].
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use http::Method;
//! use ratewise::testing::{json_request, TelegramBot};
//! use serde_json::json;
//! use tower::ServiceExt;
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), ratewise::BoxError> {
//! let tg = TelegramBot::new().limit(1).penalty(Duration::from_secs(5));
//! let app = tg.router();
//! let send = || json_request(Method::POST, "/bot123:ABC/sendMessage",
//!     &json!({"chat_id": 42, "text": "hello"}));
//! assert_eq!(app.clone().oneshot(send()?).await?.status(), 200);
//! let limited = app.clone().oneshot(send()?).await?;
//! assert_eq!(limited.status(), 429);
//! assert_eq!(limited.headers()["retry-after"], "5");
//!
//! tokio::time::advance(Duration::from_secs(5)).await; // wait it out: no escalation
//! assert_eq!(app.oneshot(send()?).await?.status(), 200);
//! assert_eq!(tg.calls_during_penalty(), 0);
//! assert_eq!(tg.delivered().len(), 2);
//! # Ok(()) }
//! ```

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::time::Duration;

use axum::extract::Request;
use axum::response::Response;
use axum::Router;
use http::{Method, StatusCode};
use serde_json::{json, Value};
use tokio::time::Instant;

use super::common::{ceil_secs, finish, json, outcome_of, set_header, Core, Incoming, QuotaWindow};
use super::recorder::{Hits, Outcome};

/// Default calls per window: 30 (Telegram's documented bulk limit, per second).
pub const DEFAULT_LIMIT: u32 = 30;
/// Default window: 1 s.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(1);
/// Default first penalty: 5 s.
pub const DEFAULT_PENALTY: Duration = Duration::from_secs(5);
/// The cap on the penalty: 4310 s, the longest retry_after Telegram was seen to send.
pub const MAX_PENALTY: Duration = Duration::from_secs(4310);

/// One accepted `sendMessage`.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivered {
    /// Time since the mock was created.
    pub at: Duration,
    /// The `chat_id`, as text (numbers are written in decimal).
    pub chat_id: String,
    /// The `text`.
    pub text: String,
}

/// The Telegram Bot API mock. Clones share state.
///
/// - within quota: `200 {"ok":true,"result":…}` (for `sendMessage`, a message object);
/// - the first call over quota starts a penalty of [`TelegramBot::penalty`] (default
///   5 s) and gets `429 {"ok":false,"error_code":429,"description":"Too Many Requests:
///   retry after N","parameters":{"retry_after":N}}` with `Retry-After: N`, where N is
///   the remaining penalty in whole seconds, rounded up;
/// - **every call during the penalty doubles the remaining penalty**, capped at
///   [`TelegramBot::max_penalty`] (default [`MAX_PENALTY`], 4310 s), and gets the same
///   429 with the new N. Such calls are counted by [`TelegramBot::calls_during_penalty`]:
///   a well-behaved client makes none;
/// - when the penalty has run out, the quota window starts afresh;
/// - with [`TelegramBot::per_chat`] (off by default), at most `limit` calls per `window`
///   to one `chat_id` (the JSON body's field, a number or a string; `1` and `"1"` are
///   the same chat). A call past it starts a penalty of the window (whole seconds,
///   rounded up) **for the whole bot**, like the global limit: the same 429, and the
///   same doubling while penalised. Calls without a `chat_id` are not counted per chat.
///
/// Any method is served at `POST` or `GET /bot<token>/<method>` (method names are
/// case-insensitive, as on Telegram). One mock is one bot on one IP: the quota and the
/// penalty are shared by every token and chat. Accepted `sendMessage` calls are kept in
/// order by [`TelegramBot::delivered`]. The token is never stored, printed or recorded:
/// recorded paths read `/bot***/<method>`.
#[derive(Clone)]
pub struct TelegramBot {
    core: Core<State>,
}

#[derive(Debug)]
struct State {
    rate: QuotaWindow,
    first_penalty: Duration,
    max_penalty: Duration,
    penalty_until: Option<Instant>,
    calls_during_penalty: u64,
    per_chat: Option<PerChat>,
    delivered: Vec<Delivered>,
    next_message_id: u64,
}

/// The per-chat limit: at most `limit` calls to one chat in any `window` (a sliding
/// window: the admitted calls of the last `window`, at most `limit` instants per chat).
#[derive(Debug)]
struct PerChat {
    limit: u32,
    window: Duration,
    chats: HashMap<String, VecDeque<Instant>>,
}

impl PerChat {
    /// Forgets the calls that left the window (every chat's, so that memory stays
    /// bounded by the chats called within the last window).
    fn expire(&mut self, now: Instant) {
        let window = self.window;
        self.chats.retain(|_, sent| {
            while sent
                .front()
                .is_some_and(|t| now.saturating_duration_since(*t) >= window)
            {
                sent.pop_front();
            }
            !sent.is_empty()
        });
    }

    /// Whether one more call to `chat` now stays within the limit. Consumes nothing.
    fn allows(&mut self, now: Instant, chat: &str) -> bool {
        self.expire(now);
        let sent = self.chats.get(chat).map_or(0, VecDeque::len);
        u32::try_from(sent).is_ok_and(|n| n < self.limit)
    }

    /// Counts one admitted call to `chat`.
    fn take(&mut self, now: Instant, chat: &str) {
        self.chats
            .entry(chat.to_owned())
            .or_default()
            .push_back(now);
    }

    /// The penalty a violation starts: the window in whole seconds, rounded up.
    fn penalty(&self) -> Duration {
        Duration::from_secs(ceil_secs(self.window))
    }
}

impl fmt::Debug for TelegramBot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.core.debug(f, "TelegramBot", |out, state| {
            out.field("quota", &state.rate.quota)
                .field("first_penalty", &state.first_penalty)
                .field("max_penalty", &state.max_penalty)
                .field(
                    "per_chat",
                    &state.per_chat.as_ref().map(|p| (p.limit, p.window)),
                )
                .field("penalised", &state.penalty_until.is_some())
                .field("calls_during_penalty", &state.calls_during_penalty);
        })
    }
}

impl Default for TelegramBot {
    fn default() -> Self {
        Self::new()
    }
}

impl TelegramBot {
    /// A mock with the defaults: [`DEFAULT_LIMIT`] calls per [`DEFAULT_WINDOW`], a first
    /// penalty of [`DEFAULT_PENALTY`], capped at [`MAX_PENALTY`].
    pub fn new() -> Self {
        TelegramBot {
            core: Core::new(State {
                rate: QuotaWindow::new(DEFAULT_LIMIT, DEFAULT_WINDOW),
                first_penalty: DEFAULT_PENALTY,
                max_penalty: MAX_PENALTY,
                penalty_until: None,
                calls_during_penalty: 0,
                per_chat: None,
                delivered: Vec::new(),
                next_message_id: 1,
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

    /// The penalty the first over-quota call starts (capped by `max_penalty`).
    pub fn penalty(self, penalty: Duration) -> Self {
        self.core.state().first_penalty = penalty;
        self
    }

    /// Also limit each chat: at most `limit` calls per `window` to one `chat_id` (any
    /// method whose JSON body has one), as Telegram allows about one message per second
    /// per chat. Off by default. A call past it penalises the whole bot for `window`
    /// (whole seconds, rounded up; capped by `max_penalty`): 429 with `retry_after`, and
    /// every call during the penalty doubles it, as for the global limit.
    ///
    /// ```
    /// use std::time::Duration;
    /// use http::Method;
    /// use ratewise::testing::{json_request, TelegramBot};
    /// use serde_json::json;
    /// use tower::ServiceExt;
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), ratewise::BoxError> {
    /// let tg = TelegramBot::new().per_chat(1, Duration::from_secs(1));
    /// let app = tg.router();
    /// let send = |chat: u64| json_request(Method::POST, "/bot123:ABC/sendMessage",
    ///     &json!({"chat_id": chat, "text": "hello"}));
    /// assert_eq!(app.clone().oneshot(send(1)?).await?.status(), 200);
    /// assert_eq!(app.clone().oneshot(send(2)?).await?.status(), 200); // another chat
    /// let limited = app.clone().oneshot(send(1)?).await?;
    /// assert_eq!(limited.status(), 429);
    /// assert_eq!(limited.headers()["retry-after"], "1");
    /// tokio::time::advance(Duration::from_secs(1)).await;
    /// assert_eq!(app.oneshot(send(1)?).await?.status(), 200);
    /// assert_eq!(tg.calls_during_penalty(), 0);
    /// # Ok(()) }
    /// ```
    pub fn per_chat(self, limit: u32, window: Duration) -> Self {
        self.core.state().per_chat = Some(PerChat {
            limit,
            window,
            chats: HashMap::new(),
        });
        self
    }

    /// The cap on the penalty after doubling (default [`MAX_PENALTY`]).
    pub fn max_penalty(self, cap: Duration) -> Self {
        self.core.state().max_penalty = cap;
        self
    }

    /// Every request that reached the mock (paths redacted to `/bot***/<method>`).
    pub fn hits(&self) -> Hits {
        self.core.hits().clone()
    }

    /// How many calls arrived while a penalty was running (each doubled it).
    pub fn calls_during_penalty(&self) -> u64 {
        self.core.state().calls_during_penalty
    }

    /// What is left of the running penalty, if one is running now.
    pub fn penalty_remaining(&self) -> Option<Duration> {
        let now = Instant::now();
        self.core
            .state()
            .penalty_until
            .filter(|until| *until > now)
            .map(|until| until - now)
    }

    /// Accepted `sendMessage` calls, in order.
    pub fn delivered(&self) -> Vec<Delivered> {
        self.core.state().delivered.clone()
    }

    /// Forgets delivered messages, the penalty-call counter and the hits; the quota
    /// window and any running penalty are unchanged.
    pub fn clear(&self) {
        {
            let mut state = self.core.state();
            state.delivered.clear();
            state.calls_during_penalty = 0;
        }
        self.core.hits().clear();
    }

    /// The axum router: every path; `/bot<token>/<method>` is served, anything else
    /// answers 404 like Telegram.
    pub fn router(&self) -> Router {
        let me = self.clone();
        Router::new().fallback(move |req: Request| Self::handle(me.clone(), req))
    }

    async fn handle(self, req: Request) -> Response {
        let inc = Incoming::read(req).await;
        let (redacted, api_method) = split_path(&inc.path);
        let Some(api_method) = api_method else {
            let resp = error(StatusCode::NOT_FOUND, "Not Found");
            return finish(self.core.hits(), &inc, redacted, Outcome::Rejected, resp);
        };
        if inc.method != Method::POST && inc.method != Method::GET {
            let resp = error(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed");
            return finish(self.core.hits(), &inc, redacted, Outcome::Rejected, resp);
        }

        let chat = chat_of(&inc);
        let mut state = self.core.state();
        if let Err(wait) = state.admit(inc.now, chat.as_deref()) {
            drop(state);
            let resp = too_many_requests(wait);
            return finish(self.core.hits(), &inc, redacted, Outcome::RateLimited, resp);
        }

        let resp = if api_method.eq_ignore_ascii_case("sendMessage") {
            match send_message(&inc) {
                Ok((chat, chat_id, text)) => {
                    let id = state.next_message_id;
                    state.next_message_id += 1;
                    state.delivered.push(Delivered {
                        at: inc.now.saturating_duration_since(self.core.hits().start()),
                        chat_id,
                        text: text.clone(),
                    });
                    json(
                        StatusCode::OK,
                        &json!({
                            "ok": true,
                            "result": { "message_id": id, "date": 0, "chat": { "id": chat }, "text": text },
                        }),
                    )
                }
                Err(why) => error(StatusCode::BAD_REQUEST, &format!("Bad Request: {why}")),
            }
        } else {
            match &inc.body {
                Ok(b) if !b.is_empty() && serde_json::from_slice::<Value>(b).is_err() => error(
                    StatusCode::BAD_REQUEST,
                    "Bad Request: the request body is not valid JSON",
                ),
                Err(why) => error(StatusCode::BAD_REQUEST, &format!("Bad Request: {why}")),
                Ok(_) if api_method.eq_ignore_ascii_case("getMe") => json(
                    StatusCode::OK,
                    &json!({
                        "ok": true,
                        "result": { "id": 1, "is_bot": true, "first_name": "ratewise mock", "username": "ratewise_mock_bot" },
                    }),
                ),
                Ok(_) => json(StatusCode::OK, &json!({ "ok": true, "result": true })),
            }
        };
        drop(state);
        let outcome = outcome_of(resp.status());
        finish(self.core.hits(), &inc, redacted, outcome, resp)
    }
}

impl State {
    /// Admits a call (to `chat`, if it names one), or returns the penalty the caller
    /// must now wait out.
    fn admit(&mut self, now: Instant, chat: Option<&str>) -> Result<(), Duration> {
        if let Some(until) = self.penalty_until {
            if now < until {
                let doubled = (until - now).saturating_mul(2).min(self.max_penalty);
                self.penalty_until = Some(deadline(now, doubled));
                self.calls_during_penalty += 1;
                return Err(doubled);
            }
            self.penalty_until = None;
            self.rate.reset();
        }
        // The per-chat limit is checked first and taken last, so that a call refused
        // by one limit takes nothing from the other.
        if let (Some(per_chat), Some(chat)) = (self.per_chat.as_mut(), chat) {
            if !per_chat.allows(now, chat) {
                let penalty = per_chat.penalty().min(self.max_penalty);
                return Err(self.start_penalty(now, penalty));
            }
        }
        if self.rate.admit(now).is_err() {
            let penalty = self.first_penalty.min(self.max_penalty);
            return Err(self.start_penalty(now, penalty));
        }
        if let (Some(per_chat), Some(chat)) = (self.per_chat.as_mut(), chat) {
            per_chat.take(now, chat);
        }
        Ok(())
    }

    /// Penalises the whole bot from `now` for `penalty`; returns it.
    fn start_penalty(&mut self, now: Instant, penalty: Duration) -> Duration {
        self.penalty_until = Some(deadline(now, penalty));
        penalty
    }
}

/// `now + wait`, without overflowing on absurd configurations.
fn deadline(now: Instant, wait: Duration) -> Instant {
    now.checked_add(wait)
        .or_else(|| now.checked_add(Duration::from_secs(u64::from(u32::MAX))))
        .unwrap_or(now)
}

/// Splits `/bot<token>/<method>` into a redacted path and the method name.
fn split_path(path: &str) -> (String, Option<&str>) {
    let Some(rest) = path.strip_prefix("/bot") else {
        return (path.to_owned(), None);
    };
    match rest.split_once('/') {
        Some((token, method))
            if !token.is_empty() && !method.is_empty() && !method.contains('/') =>
        {
            (format!("/bot***/{method}"), Some(method))
        }
        Some((_, tail)) => (format!("/bot***/{tail}"), None),
        None => ("/bot***".to_owned(), None),
    }
}

/// The `chat_id` of a call's JSON body, as text (numbers in decimal), if it has one.
fn chat_of(inc: &Incoming) -> Option<String> {
    match inc.json_object().ok()?.get("chat_id")? {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// `chat_id` (as JSON and as text) and `text` of a `sendMessage` body.
fn send_message(inc: &Incoming) -> Result<(Value, String, String), String> {
    let body = inc.json_object()?;
    let chat = match body.get("chat_id") {
        Some(Value::String(s)) if !s.is_empty() => (Value::String(s.clone()), s.clone()),
        Some(Value::Number(n)) => (Value::Number(n.clone()), n.to_string()),
        _ => return Err("chat_id is empty".into()),
    };
    match body.get("text").and_then(Value::as_str) {
        Some(text) if !text.is_empty() => Ok((chat.0, chat.1, text.to_owned())),
        _ => Err("message text is empty".into()),
    }
}

fn error(status: StatusCode, description: &str) -> Response {
    json(
        status,
        &json!({ "ok": false, "error_code": status.as_u16(), "description": description }),
    )
}

fn too_many_requests(wait: Duration) -> Response {
    let secs = ceil_secs(wait);
    let mut resp = json(
        StatusCode::TOO_MANY_REQUESTS,
        &json!({
            "ok": false,
            "error_code": 429,
            "description": format!("Too Many Requests: retry after {secs}"),
            "parameters": { "retry_after": secs },
        }),
    );
    set_header(&mut resp, "retry-after", secs.to_string());
    resp
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use http::Method;
    use serde_json::{json, Value};
    use tower::ServiceExt;

    use super::{split_path, TelegramBot};
    use crate::testing::{body_json, json_request, Outcome};

    async fn send(tg: &TelegramBot, body: serde_json::Value) -> (u16, Option<String>, Value) {
        let req = json_request(Method::POST, "/bot123:SECRET/sendMessage", &body).unwrap();
        let resp = tg.router().oneshot(req).await.unwrap();
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap().to_owned());
        (
            status,
            retry_after,
            body_json(resp.into_body()).await.unwrap(),
        )
    }

    /// One message per second per chat: a second message to a chat within the second
    /// answers 429 `retry_after: 1` and penalises the whole bot; a call to another chat
    /// during that penalty doubles it and is counted.
    #[tokio::test(start_paused = true)]
    async fn per_chat_violation_penalises_the_whole_bot() {
        let ms = Duration::from_millis;
        let tg = TelegramBot::new()
            .limit(30)
            .per_chat(1, Duration::from_secs(1));
        let msg = |chat: Value, text: &str| json!({"chat_id": chat, "text": text});

        assert_eq!(send(&tg, msg(json!(1), "a")).await.0, 200);
        assert_eq!(send(&tg, msg(json!(2), "b")).await.0, 200, "another chat");
        tokio::time::advance(ms(500)).await;
        // The same chat, as a string: still chat 1, within its second.
        let (status, retry_after, body) = send(&tg, msg(json!("1"), "c")).await;
        assert_eq!(status, 429);
        assert_eq!(retry_after.as_deref(), Some("1"));
        assert_eq!(
            body,
            json!({"ok":false,"error_code":429,"description":"Too Many Requests: retry after 1","parameters":{"retry_after":1}})
        );
        assert_eq!(tg.penalty_remaining(), Some(Duration::from_secs(1)));
        assert_eq!(
            tg.calls_during_penalty(),
            0,
            "the violation itself is not one"
        );

        // The whole bot is penalised: chat 3, never called, is refused and doubles it.
        tokio::time::advance(ms(500)).await;
        let (status, retry_after, _) = send(&tg, msg(json!(3), "d")).await;
        assert_eq!((status, retry_after.as_deref()), (429, Some("1")));
        assert_eq!(tg.penalty_remaining(), Some(Duration::from_secs(1)));
        assert_eq!(tg.calls_during_penalty(), 1);

        // Waited out: chat 1 (last message 2 s ago) and chat 3 go through.
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(tg.penalty_remaining(), None);
        assert_eq!(send(&tg, msg(json!(1), "e")).await.0, 200);
        assert_eq!(send(&tg, msg(json!(3), "f")).await.0, 200);
        assert_eq!(tg.calls_during_penalty(), 1);

        let texts: Vec<_> = tg.delivered().into_iter().map(|d| d.text).collect();
        assert_eq!(texts, ["a", "b", "e", "f"]);
        let hits = tg.hits();
        assert_eq!(hits.rate_limited(), 2);
        assert_eq!(hits.times_of(Outcome::RateLimited), [ms(500), ms(1000)]);
    }

    /// A sliding window: at most `limit` calls to a chat in any `window`; the window is
    /// rounded up to whole seconds for the penalty; a refused call takes nothing.
    #[tokio::test(start_paused = true)]
    async fn per_chat_limit_is_a_sliding_window_and_off_by_default() {
        let ms = Duration::from_millis;
        let tg = TelegramBot::new().per_chat(2, ms(1500));
        let msg = |text: &str| json!({"chat_id": -100, "text": text});
        assert_eq!(send(&tg, msg("a")).await.0, 200);
        tokio::time::advance(ms(1000)).await;
        assert_eq!(send(&tg, msg("b")).await.0, 200);
        tokio::time::advance(ms(400)).await;
        // Two calls in the last 1.4 s: refused; the penalty is 2 s (1.5 s rounded up).
        let (status, retry_after, body) = send(&tg, msg("c")).await;
        assert_eq!((status, retry_after.as_deref()), (429, Some("2")));
        assert_eq!(body["parameters"]["retry_after"], 2);
        tokio::time::advance(ms(2000)).await;
        // At 3.4 s, "b" (1.0 s) is 2.4 s old: the window is free again.
        assert_eq!(send(&tg, msg("d")).await.0, 200);
        assert_eq!(send(&tg, msg("e")).await.0, 200);
        assert_eq!(tg.calls_during_penalty(), 0);

        // Default: no per-chat limit, only the global one.
        let plain = TelegramBot::new();
        for text in ["a", "b", "c", "d", "e"] {
            assert_eq!(send(&plain, msg(text)).await.0, 200);
        }
        assert_eq!(plain.delivered().len(), 5);
    }

    #[test]
    fn paths_are_redacted() {
        assert_eq!(
            split_path("/bot123:SECRET/sendMessage"),
            ("/bot***/sendMessage".to_owned(), Some("sendMessage"))
        );
        assert_eq!(split_path("/bot123:SECRET"), ("/bot***".to_owned(), None));
        assert_eq!(
            split_path("/bot123:SECRET/a/b"),
            ("/bot***/a/b".to_owned(), None)
        );
        assert_eq!(split_path("/bot/getMe"), ("/bot***/getMe".to_owned(), None));
        assert_eq!(split_path("/other"), ("/other".to_owned(), None));
    }
}
