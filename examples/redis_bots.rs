//! N bot processes, one Telegram, one Redis: each process runs the Telegram preset with
//! its limit and cooldown in Redis, and the mock Telegram (30 messages per second, a
//! penalty that doubles on every call during it) counts what arrived.
//!
//! ```sh
//! cargo run --example redis_bots --features testing,redis          # 4 processes
//! cargo run --example redis_bots --features testing,redis -- 6     # 6 processes
//! ```
//!
//! It starts its own `redis-server` on 127.0.0.1 (or uses `REDIS_URL`) and runs itself
//! again as each bot process.

use std::{process::Command, time::Duration};

use ratewise::{
    redis::Redis,
    stack::{ClientStackLayer, Platform},
    testing::{client, json_request, MockServer, RedisServer, TelegramBot},
};
use serde_json::json;
use tower::{ServiceBuilder, ServiceExt};

const MESSAGES: usize = 60;

#[tokio::main]
async fn main() -> Result<(), ratewise::BoxError> {
    let args: Vec<String> = std::env::args().collect();
    if let [_, flag, redis_url, url, id] = &args[..] {
        if flag == "--bot" {
            return bot(redis_url, url, id).await;
        }
    }
    let n: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(4);
    let Some(redis) = RedisServer::start() else {
        return Ok(()); // printed "skipped: no redis-server"
    };
    let telegram = TelegramBot::new().limit(30).window(Duration::from_secs(1));
    let server = MockServer::start(telegram.router()).await?;
    let url = server.url("/bot123:secret/sendMessage");
    println!("{n} bot processes, {MESSAGES} messages each, one Telegram (30/s), one Redis");
    let start = std::time::Instant::now();
    let exe = std::env::current_exe()?;
    let children: Vec<_> = (0..n)
        .map(|i| {
            Command::new(&exe)
                .args(["--bot", redis.url(), &url, &i.to_string()])
                .spawn()
        })
        .collect::<Result<_, _>>()?;
    tokio::task::spawn_blocking(move || {
        for mut child in children {
            let _ = child.wait();
        }
    })
    .await?;
    let hits = telegram.hits();
    println!(
        "the upstream saw: {} calls in {:.1} s, {} delivered, {} × 429, {} during a penalty",
        hits.count(),
        start.elapsed().as_secs_f64(),
        telegram.delivered().len(),
        hits.rate_limited(),
        telegram.calls_during_penalty(),
    );
    server.shutdown().await;
    Ok(())
}

/// One bot process: the preset, its limit and cooldown shared through Redis.
async fn bot(redis_url: &str, url: &str, id: &str) -> Result<(), ratewise::BoxError> {
    let redis = Redis::new(redis_url)?.fail_open(4);
    let stack = ClientStackLayer::preset(Platform::Telegram)
        .rate_limit(|r| r.store(redis.rate_limit("bots")))
        .cooldown(|c| c.store(redis.cooldown("bots")))
        .build()?;
    let svc = ServiceBuilder::new().layer(stack).service(client());
    let mut sent = tokio::task::JoinSet::new();
    for m in 0..MESSAGES {
        let body = json!({"chat_id": 1000 + m % 20, "text": format!("bot{id}-{m}")});
        let req = json_request(http::Method::POST, url, &body)?;
        let svc = svc.clone();
        sent.spawn(async move { svc.oneshot(req).await.map(|r| r.status()) });
    }
    let mut ok = 0;
    while let Some(result) = sent.join_next().await {
        ok += usize::from(matches!(result, Ok(Ok(s)) if s == 200));
    }
    println!("bot {id}: {ok} of {MESSAGES} sent");
    Ok(())
}
