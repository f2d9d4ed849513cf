//! A Telegram bot over its limit (seed 002), against the `TelegramBot` mock on 127.0.0.1.
//!
//! Telegram answers **429** `{"parameters":{"retry_after":N}}` when a bot sends too
//! fast, and every call that arrives during the penalty makes it longer: the incident's
//! bot met `retry_after: 4310` and could do nothing for 72 minutes. The client here is
//! [`ClientStackLayer::preset(Platform::Telegram)`](ratewise::stack::ClientStackLayer):
//!
//! ```text
//! RetryLayer                waits out the server's retry_after, up to max_delay (60 s)
//!   CooldownLayer           no call to a key while it is penalised; one probe after
//!     RateLimitLayer        20/s, burst 1: looser than this mock (10 per second)
//!       ClassifyLayer       429 + retry_after (header or body) is a rate limit
//!         hyper-util client
//! ```
//!
//! The rate limit has a burst of 1, so the senders' calls go one every 50 ms and the
//! others wait in the limiter's queue. When a call comes back 429, the calls waiting
//! there passed the cooldown before the penalty began; the cooldown's gate stops them in
//! the limiter (no cell taken, nothing sent) and the retry waits the penalty out. Only a
//! call already on the wire when Telegram sends its 429 could still land in the
//! penalty; pacing keeps calls from overlapping on the wire.
//!
//! Two parts: 24 messages from 6 senders sharing the bot (each 429 waited out, every
//! message delivered, zero calls during a penalty), then a bot that starts while banned
//! for 4310 s: its call comes back at once instead of hanging for 72 minutes.
//!
//! The penalty is 2 s here (the mock's default is 5 s) so the example ends quickly.
//!
//! ```sh
//! cargo run --example telegram --features testing
//! ```

#[path = "support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Duration;

use http::{Method, StatusCode};
use ratewise::stack::ClientStackLayer;
use ratewise::testing::{body_json, client, json_request, MockServer, Outcome, TelegramBot};
use ratewise::vocabulary::RefusalKind;
use ratewise::{verdict_of, BoxError, Platform, Refusal};
use serde_json::json;
use tokio::task::JoinSet;
use tower::{ServiceBuilder, ServiceExt};

use support::{bounded, hits_summary, print_hits, secs, Report};

/// Senders sharing the bot.
const SENDERS: usize = 6;
/// Messages each sender sends.
const MESSAGES_EACH: usize = 4;
/// The mock's limit: this many calls per second, then a penalty.
const LIMIT: u32 = 10;
/// The mock's first penalty.
const PENALTY: Duration = Duration::from_secs(2);
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
        "== Telegram: {SENDERS} senders, {total} messages; the mock allows {LIMIT}/s, then 429 retry_after {}, doubled by every call during the penalty",
        PENALTY.as_secs()
    );

    // --- 1. Messages past the limit. -------------------------------------------------
    let tg = TelegramBot::new()
        .limit(LIMIT)
        .window(Duration::from_secs(1))
        .penalty(PENALTY);
    let server = MockServer::start(tg.router()).await?;
    // One call every 50 ms at most: the rest wait in the limiter, behind the cooldown.
    let stack = ClientStackLayer::preset(Platform::Telegram)
        .rate_limit(|rl| rl.per_second(20).burst(1))
        .build()?;
    let bot = ServiceBuilder::new().layer(stack.clone()).service(client());
    let url = server.url(&format!("/bot{TOKEN}/sendMessage"));

    let started = tokio::time::Instant::now();
    let mut senders = JoinSet::new();
    for s in 0..SENDERS {
        let (bot, url) = (bot.clone(), url.clone());
        senders.spawn(async move {
            let mut got = Vec::new();
            for m in 0..MESSAGES_EACH {
                let req = json_request(
                    Method::POST,
                    &url,
                    &json!({"chat_id": 1000 + s, "text": format!("sender {s}, message {m}")}),
                )?;
                got.push(bot.clone().oneshot(req).await.map(|res| res.status()));
            }
            Ok::<_, BoxError>(got)
        });
    }
    let mut statuses = BTreeMap::<String, usize>::new();
    bounded("the senders", Duration::from_secs(30), async {
        while let Some(done) = senders.join_next().await {
            for got in done?? {
                let what = match got {
                    Ok(status) => status.to_string(),
                    Err(err) => format!("error: {err}"),
                };
                *statuses.entry(what).or_default() += 1;
            }
        }
        Ok::<_, BoxError>(())
    })
    .await??;
    let elapsed = started.elapsed();

    let hits = tg.hits();
    println!("-- what reached sendMessage (time since the mock started):");
    print_hits(&hits);
    let stats = stack.stats();
    println!(
        "-- in {}: {}; the stack cooled down {} time(s), stopped {} call(s) waiting in the rate limiter when a penalty began, retried {} time(s)",
        secs(elapsed),
        hits_summary(&hits),
        stats.cooldown.cooldowns_started,
        stats.cooldown.rejected,
        stats.retry.retries
    );
    println!("-- what the senders got: {statuses:?}");

    report.check(
        hits.rate_limited() > 0,
        format!(
            "the senders did go past the limit ({} × 429 retry_after)",
            hits.rate_limited()
        ),
    );
    report.check(
        tg.calls_during_penalty() == 0,
        format!(
            "zero calls during a penalty ({} counted by the mock)",
            tg.calls_during_penalty()
        ),
    );
    let limited_at = hits.times_of(Outcome::RateLimited);
    let gaps_ok = hits.all().windows(2).all(|w| {
        w[0].outcome != Outcome::RateLimited || w[1].at.saturating_sub(w[0].at) >= PENALTY
    });
    report.check(
        gaps_ok,
        format!(
            "after each 429, the next call came only once the penalty ({}) was over",
            secs(PENALTY)
        ),
    );
    let mut delivered = BTreeMap::<String, usize>::new();
    for d in tg.delivered() {
        *delivered.entry(d.text).or_default() += 1;
    }
    report.check(
        delivered.len() == total && delivered.values().all(|n| *n == 1),
        format!(
            "every message delivered exactly once ({} of {total})",
            delivered.len()
        ),
    );
    report.check(
        statuses.get("200 OK") == Some(&total),
        format!("every sender got 200 for every message ({statuses:?})"),
    );
    server.shutdown().await;

    // --- 2. A bot that starts while banned for 4310 s. --------------------------------
    println!(
        "== Telegram: a bot that starts while banned for {} s (max_delay 60 s)",
        BAN.as_secs()
    );
    let banned = TelegramBot::new().limit(0).penalty(BAN);
    let server = MockServer::start(banned.router()).await?;
    let stack = ClientStackLayer::preset(Platform::Telegram).build()?;
    let bot = ServiceBuilder::new().layer(stack).service(client());
    let url = server.url(&format!("/bot{TOKEN}/getMe"));

    let t = tokio::time::Instant::now();
    let res = bounded(
        "the banned call",
        Duration::from_secs(10),
        bot.clone()
            .oneshot(json_request(Method::POST, &url, &json!({}))?),
    )
    .await??;
    let first = t.elapsed();
    let status = res.status();
    let asked = verdict_of(&res).retry_after();
    let body = body_json(res.into_body()).await?;
    println!(
        "-- call 1: {status} after {}: retry_after {} in the body, {} read by the classifier; more than max_delay, so not waited",
        secs(first),
        body["parameters"]["retry_after"],
        asked.map_or_else(|| "nothing".to_owned(), secs)
    );
    report.check(
        status == StatusCode::TOO_MANY_REQUESTS
            && asked == Some(BAN)
            && first < Duration::from_secs(5),
        format!(
            "a {} s retry_after comes back to the caller at once ({}), not after 72 minutes",
            BAN.as_secs(),
            secs(first)
        ),
    );

    let t = tokio::time::Instant::now();
    let second = bounded(
        "the second banned call",
        Duration::from_secs(10),
        bot.oneshot(json_request(Method::POST, &url, &json!({}))?),
    )
    .await?;
    let took = t.elapsed();
    let cooling = second
        .as_ref()
        .err()
        .and_then(|e| e.downcast_ref::<Refusal>())
        .filter(|r| matches!(r.kind(), RefusalKind::CoolingDown | RefusalKind::Probing))
        .and_then(Refusal::retry_after);
    println!(
        "-- call 2: {} after {}",
        match &second {
            Ok(res) => res.status().to_string(),
            Err(err) => format!("error: {err}"),
        },
        secs(took)
    );
    report.check(
        cooling.is_some_and(|left| left > BAN - Duration::from_secs(60))
            && took < Duration::from_secs(5),
        "the next call fails at once with a typed CoolingDown refusal naming the wait",
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
        "{}, {} during a penalty; banned bot: {} call",
        hits_summary(&hits),
        tg.calls_during_penalty(),
        banned.hits().count()
    );
    report.callers = format!(
        "{}/{total} messages delivered after {} × 429; banned: answer in {}",
        delivered.len(),
        limited_at.len(),
        secs(first)
    );
    Ok(report)
}
