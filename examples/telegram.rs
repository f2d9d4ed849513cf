//! A Telegram bot inside its limits, against the `TelegramBot` mock on 127.0.0.1.
//!
//! Telegram allows about one message per second per chat, and answers a violation with
//! **429** `retry_after`, a penalty for the whole bot that every call made during it
//! makes longer (the incident's bot met `retry_after: 4310`). The client is
//! [`ClientStackLayer::preset(Platform::Telegram)`](ratewise::ClientStackLayer) with one
//! more limit, per chat, keyed by the body's `chat_id`:
//!
//! ```text
//! RetryLayer          parses the JSON body once per call; waits out retry_after
//!   CooldownLayer     no call while the bot is penalised
//!     RateLimitLayer  28/s for the bot, and 1/s per chat_id, taken together
//!       ClassifyLayer 429 + retry_after (header or body) is a rate limit
//!         hyper-util client
//! ```
//!
//! Two parts: 16 senders writing to 8 chats (every message delivered, not one 429),
//! then a bot that starts while banned for 4310 s: `ratewise::outcome` reports the
//! ban at once, whether it comes back as the upstream's 429 or as the cooldown's
//! refusal.
//!
//! ```sh
//! cargo run --example telegram --features testing
//! ```

#[path = "support/mod.rs"]
mod support;

use std::process::ExitCode;
use std::time::Duration;

use http::Method;
use ratewise::key::json_field;
use ratewise::rate_limit::Limit;
use ratewise::testing::{client, json_request, MockServer, TelegramBot};
use ratewise::{outcome, BoxError, ClientStackLayer, Platform, Verdict};
use serde_json::json;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tower::{ServiceBuilder, ServiceExt};

use support::{bounded, hits_summary, secs, Report};

/// Senders sharing the bot.
const SENDERS: usize = 16;
/// Chats they write to: sender `s` writes to chat `s % CHATS`, two senders per chat.
const CHATS: usize = 8;
/// Messages each sender sends, one after another.
const MESSAGES_EACH: usize = 2;
/// The penalty of the banned bot: the incident's.
const BAN: Duration = Duration::from_secs(4310);
/// The bot token: part of every URL, never printed (the mock redacts it in its log).
const TOKEN: &str = "123456:demo-token";

#[allow(dead_code)] // `demo.rs` includes this file as a module and calls `run`.
#[tokio::main]
async fn main() -> ExitCode {
    support::finish(run().await)
}

/// Runs the scenario and checks what the mocks recorded.
pub async fn run() -> Result<Report, BoxError> {
    let mut report = Report::new("Telegram");
    let total = SENDERS * MESSAGES_EACH;
    println!(
        "== Telegram: {SENDERS} senders, {total} messages to {CHATS} chats; the mock allows 1 message per second per chat, then 429 for the whole bot"
    );

    // --- 1. One message per second per chat, from the body's chat_id. ------------------
    let tg = TelegramBot::new().per_chat(1, Duration::from_secs(1));
    let server = MockServer::start(tg.router()).await?;
    // Padded by 1 % (10 ms), like the preset's own rate: headroom against jitter.
    let per_chat = Limit::per_second(1)
        .key(json_field("/chat_id"))
        .margin_percent(1);
    let stack = ClientStackLayer::preset(Platform::Telegram)
        .rate_limit(|r| r.limit(per_chat))
        .build()?;
    let bot = ServiceBuilder::new().layer(stack).service(client());
    let url = server.url(&format!("/bot{TOKEN}/sendMessage"));

    let started = Instant::now();
    let mut senders = JoinSet::new();
    for s in 0..SENDERS {
        let (bot, url) = (bot.clone(), url.clone());
        senders.spawn(async move {
            let mut limited = 0;
            for m in 0..MESSAGES_EACH {
                let text = format!("sender {s}, message {m}");
                let req = json_request(
                    Method::POST,
                    &url,
                    &json!({"chat_id": s % CHATS, "text": text}),
                )?;
                let result = bot.clone().oneshot(req).await;
                // One call says whether the call was rate-limited, however it ended.
                if let Verdict::RateLimited { retry_after } = outcome(&result) {
                    println!("   {text}: rate-limited, retry after {retry_after:?}");
                    limited += 1;
                }
            }
            Ok::<_, BoxError>(limited)
        });
    }
    let mut limited = 0;
    bounded("the senders", Duration::from_secs(30), async {
        while let Some(done) = senders.join_next().await {
            limited += done??;
        }
        Ok::<_, BoxError>(())
    })
    .await??;
    let hits = tg.hits();
    println!("-- in {}: {}", secs(started.elapsed()), hits_summary(&hits));
    let mut delivered: Vec<_> = tg.delivered().into_iter().map(|d| d.text).collect();
    delivered.sort();
    delivered.dedup();
    report.check(
        hits.rate_limited() == 0 && limited == 0,
        format!(
            "not one 429 ({} at the mock, {limited} reported to the senders)",
            hits.rate_limited()
        ),
    );
    report.check(
        delivered.len() == total && tg.delivered().len() == total,
        format!(
            "every message delivered exactly once ({} of {total})",
            delivered.len()
        ),
    );
    server.shutdown().await;

    // --- 2. A bot that starts while banned for 4310 s. --------------------------------
    println!(
        "== Telegram: a bot that starts while banned for {} s (max_delay 60 s)",
        BAN.as_secs()
    );
    let banned = TelegramBot::new().limit(0).penalty(BAN);
    let server = MockServer::start(banned.router()).await?;
    let bot = ServiceBuilder::new()
        .layer(ClientStackLayer::preset(Platform::Telegram).build()?)
        .service(client());
    let url = server.url(&format!("/bot{TOKEN}/getMe"));
    let mut waits = Vec::new();
    for call in 1..=2 {
        let t = Instant::now();
        let req = json_request(Method::POST, &url, &json!({}))?;
        let result = bounded(
            "a banned call",
            Duration::from_secs(10),
            bot.clone().oneshot(req),
        )
        .await?;
        let how = match &result {
            Ok(res) => format!("the upstream's {}", res.status()),
            Err(err) => format!("a refusal: {err}"),
        };
        let wait = outcome(&result).retry_after();
        println!(
            "-- call {call}: {how}, after {}; outcome: retry after {wait:?}",
            secs(t.elapsed())
        );
        let at_once = t.elapsed() < Duration::from_secs(5);
        waits.push(at_once && wait.is_some_and(|w| w > BAN - Duration::from_secs(60)));
    }
    report.check(
        waits == [true, true],
        "both calls come back at once, and `outcome` reports the ban for each (the 429, then the cooldown's refusal)",
    );
    report.check(
        banned.hits().count() == 1 && banned.calls_during_penalty() == 0,
        format!(
            "the ban was not prolonged: {} call reached Telegram, {} during the penalty",
            banned.hits().count(),
            banned.calls_during_penalty()
        ),
    );
    server.shutdown().await;

    report.upstream = format!(
        "{}; banned bot: {} call, {} during the penalty",
        hits_summary(&hits),
        banned.hits().count(),
        banned.calls_during_penalty()
    );
    report.callers = format!(
        "{}/{total} messages delivered, {limited} rate-limited; banned: both calls answered at once",
        delivered.len()
    );
    Ok(report)
}
