//! DingTalk AI cards at the tenant's real cap, against the `DingTalkCards` mock on
//! 127.0.0.1.
//!
//! DingTalk answers **403** `QpsLimitForApi` past 20 calls per second per tenant, and a
//! card takes one edit every 800 ms. Both limits go in one [`RateLimitLayer`] of the
//! DingTalk preset: an edit waits until the tenant and its card both have room, then
//! takes from both at the same instant, so no slot is spent on an edit still waiting.
//! The card is the body's `outTrackId`: the stack parses the body once per call.
//!
//! [`RateLimitLayer`]: ratewise::RateLimitLayer
//!
//! ```sh
//! cargo run --example dingtalk_cards --features testing
//! ```

#[path = "support/mod.rs"]
mod support;

use std::process::ExitCode;
use std::time::Duration;

use http::{Method, StatusCode};
use ratewise::key::json_field;
use ratewise::rate_limit::Limit;
use ratewise::testing::{body_bytes, client, dingtalk, json_request, DingTalkCards, MockServer};
use ratewise::{BoxError, ClientStackLayer, Platform};
use serde_json::json;
use tokio::task::JoinSet;
use tower::{ServiceBuilder, ServiceExt};

use support::{bounded, hits_summary, secs, Report};

/// Cards, one conversation (and adapter) each, opening 100 ms apart: while few are
/// open, each card's 800 ms holds its edits back; once 16 are, they need the tenant's
/// whole 20 per second.
const CARDS: usize = 16;
/// Edits per card, sent as fast as the limits allow; the last one is final.
const EDITS: usize = 6;
/// DingTalk's per-card interval.
const CARD_INTERVAL: Duration = Duration::from_millis(800);

#[allow(dead_code)] // `demo.rs` includes this file as a module and calls `run`.
#[tokio::main]
async fn main() -> ExitCode {
    support::finish(run().await)
}

/// Runs the scenario and checks what the mock recorded.
pub async fn run() -> Result<Report, BoxError> {
    let mut report = Report::new("DingTalk cards");
    let total = CARDS * EDITS;
    println!(
        "== DingTalk AI cards: {CARDS} cards, {total} edits; the mock allows 20 per second per tenant, then 403 QpsLimit"
    );
    let mock = DingTalkCards::new(); // 20 calls per second per tenant
    let server = MockServer::start(mock.router()).await?;

    // The tenant's 20 per second (the preset pads it by 1 %) and each card's one edit
    // per 800 ms (padded by 1 % too: 8 ms of headroom against loopback jitter).
    let card = Limit::per_period(CARD_INTERVAL)
        .key(json_field("/outTrackId"))
        .margin_percent(1);
    let stack = ClientStackLayer::preset(Platform::DingTalk)
        .rate_limit(|r| r.per_second(20).burst(1).limit(card))
        .build()?;

    let mut adapters = JoinSet::new();
    for c in 0..CARDS {
        // A clone of the layer per adapter: one tenant bucket for all of them.
        let adapter = ServiceBuilder::new().layer(stack.clone()).service(client());
        let url = server.url("/v1.0/card/streaming");
        adapters.spawn(async move {
            tokio::time::sleep(Duration::from_millis(100) * c as u32).await;
            for e in 0..EDITS {
                let edit = json!({
                    "outTrackId": format!("card-{c}"),
                    "content": format!("part {e}"),
                    "isFinalize": e + 1 == EDITS,
                });
                let mut req = json_request(Method::PUT, &url, &edit)?;
                req.headers_mut()
                    .insert(dingtalk::TENANT_HEADER, "tenant-token".parse()?);
                body_bytes(adapter.clone().oneshot(req).await?.into_body()).await?;
            }
            Ok::<_, BoxError>(())
        });
    }
    bounded("the adapters", Duration::from_secs(30), async {
        while let Some(done) = adapters.join_next().await {
            done??;
        }
        Ok::<_, BoxError>(())
    })
    .await??;
    server.shutdown().await;

    // --- What reached the mock, on its clock. --------------------------------------------
    let edits = mock.edits();
    let ok = edits.iter().filter(|e| e.status == StatusCode::OK).count();
    let mut min_gap = Duration::MAX;
    for c in 0..CARDS {
        let times: Vec<_> = mock
            .edits_for(&format!("card-{c}"))
            .iter()
            .map(|e| e.at)
            .collect();
        min_gap = times
            .windows(2)
            .map(|w| w[1] - w[0])
            .fold(min_gap, Duration::min);
    }
    // The most edits that reached the mock within one second.
    let busiest = edits
        .iter()
        .map(|a| {
            edits
                .iter()
                .filter(|b| b.at >= a.at && b.at - a.at < Duration::from_secs(1))
                .count()
        })
        .max()
        .unwrap_or_default();
    println!("-- {}", hits_summary(&mock.hits()));

    report.check(
        ok == total && edits.len() == total,
        format!(
            "every edit answered 200, zero 403 ({ok} of {total} served, {} calls)",
            edits.len()
        ),
    );
    report.check(
        min_gap >= CARD_INTERVAL,
        format!(
            "edits of one card at least {CARD_INTERVAL:?} apart on the mock's clock (smallest gap {})",
            secs(min_gap)
        ),
    );
    report.check(
        busiest >= 18,
        format!("the tenant ran at its cap once all cards were open: {busiest} edits in the busiest second, of 20"),
    );

    report.upstream = format!("{}, {} × 403", hits_summary(&mock.hits()), total - ok);
    report.callers = format!(
        "{ok}/{total} edits, {busiest} in the busiest second (cap 20), smallest card gap {}",
        secs(min_gap)
    );
    Ok(report)
}
