//! DingTalk AI cards streamed from concurrent conversations under the tenant's 20 QPS
//! cap (seed 001), against the `DingTalkCards` mock on 127.0.0.1.
//!
//! Every conversation streams an answer into its card: many non-final edits, then one
//! final edit. DingTalk answers **403** `Forbidden.AccessDenied.QpsLimitForApi` beyond
//! ~20 calls per second per tenant, and a final edit lost to a 403 leaves the card stuck
//! in its streaming state. The fix the incident asked for, with ratewise:
//!
//! - one process-wide token bucket ([`RateLimitLayer`], waiting at most 2 s), cloned into
//!   every adapter's stack so that all conversations share it;
//! - at most one non-final edit per card every 800 ms (a second [`RateLimitLayer`] keyed
//!   by card id, `per_period(800 ms)`, burst 1);
//! - final edits bypass both: they are never delayed nor dropped by the client.
//!
//! ```text
//! adapter stack (one per adapter; the tenant bucket is shared by all of them):
//!   RateLimitLayer  tenant bucket: wait up to 2 s for a token        (finals bypass)
//!     RateLimitLayer  per card: wait for the card's next 800 ms slot (finals bypass)
//!       hyper-util client
//! ```
//!
//! The per-card limiter sits innermost: an edit takes its card's slot in the very poll
//! that sends it, so the 800 ms hold on the wire. Its tenant token was taken before
//! that, up to 800 ms earlier, so the bucket's budget allows for it (see `run`).
//!
//! The same conversations also run, at the same time, without any throttle against a
//! second mock: the control that shows the load really does exceed the cap.
//!
//! ```sh
//! cargo run --example dingtalk_cards --features testing
//! ```

#[path = "support/mod.rs"]
mod support;

use std::process::ExitCode;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::Full;
use ratewise::key::{Key, RequestRef};
use ratewise::testing::{body_bytes, client, dingtalk, json_request, DingTalkCards, MockServer};
use ratewise::vocabulary::RefusalKind;
use ratewise::{BoxError, RateLimitLayer, Refusal};
use serde_json::json;
use tokio::task::JoinSet;
use tokio::time::{sleep_until, Instant};
use tower::util::BoxCloneService;
use tower::{Service, ServiceBuilder, ServiceExt};

use support::{bounded, hits_summary, secs, Report};

/// The tenant's cap: calls per second.
const TENANT_QPS: u32 = 20;
/// Concurrent conversations, each streaming into its own card.
const CONVERSATIONS: usize = 8;
/// Adapters (bot instances in one process) the conversations are spread over.
const ADAPTERS: usize = 2;
/// The tenant bucket's burst.
const BURST: u32 = 3;
/// Minimum time between two non-final edits of one card.
const CARD_INTERVAL: Duration = Duration::from_millis(800);
/// The model produces a chunk of text this often.
const CHUNK_EVERY: Duration = Duration::from_millis(100);
/// How much earlier than `CARD_INTERVAL` two edits may reach the mock, measured on its
/// clock: the time between the limiter's admission and the mock's stamp varies a little
/// from one request to the next on a loaded machine.
const JITTER_ALLOWANCE: Duration = Duration::from_millis(50);

/// The card an edit is for (request extension): the per-card limiter's key.
#[derive(Clone)]
struct CardId(Key);

/// Marks a final edit (request extension): both limiters let it through.
#[derive(Clone, Copy)]
struct FinalEdit;

type Edit = Request<Full<Bytes>>;
type Adapter = BoxCloneService<Edit, http::Response<hyper::body::Incoming>, BoxError>;

#[allow(dead_code)] // `demo.rs` includes this file as a module and calls `run`.
#[tokio::main]
async fn main() -> ExitCode {
    support::finish(run().await)
}

/// Runs the scenario and checks what the mocks recorded.
pub async fn run() -> Result<Report, BoxError> {
    let mut report = Report::new("DingTalk cards");
    println!(
        "== DingTalk AI cards: {CONVERSATIONS} conversations streaming at once over {ADAPTERS} adapters ({TENANT_QPS} QPS per tenant, then 403 QpsLimit)"
    );

    // The budget. A token bucket with rate r and burst b hands out at most b + r * t
    // tokens in any t seconds. An edit leaves at most CARD_INTERVAL after it took its
    // token (it waits for its card's slot), so the edits on the wire in any one second
    // took their tokens within 1 s + CARD_INTERVAL. Final edits bypass the bucket, one
    // per conversation. Hence b + r * (1 s + CARD_INTERVAL) + CONVERSATIONS <= TENANT_QPS.
    let span_ms = 1000 + CARD_INTERVAL.as_millis() as u32;
    let rate = (TENANT_QPS - BURST - CONVERSATIONS as u32) * 1000 / span_ms;
    // A cost of 0 bypasses a limiter: final edits take no token and never wait.
    let cost = |req: &RequestRef<'_>| u32::from(req.extensions().get::<FinalEdit>().is_none());
    let tenant_bucket = RateLimitLayer::builder()
        .per_second(rate)
        .burst(BURST)
        .max_wait(Duration::from_secs(2))
        .cost(cost)
        .build()?;
    println!("   tenant bucket: {rate}/s, burst {BURST}, max wait 2 s (finals bypass it: one per conversation); cards: one edit per {CARD_INTERVAL:?}");

    let cards = DingTalkCards::new().tenant_qps(TENANT_QPS);
    let server = MockServer::start(cards.router()).await?;
    let control = DingTalkCards::new().tenant_qps(TENANT_QPS);
    let control_server = MockServer::start(control.router()).await?;

    // Several adapters, each its own stack, all sharing the one tenant bucket.
    let mut adapters = Vec::new();
    let mut per_card_layers = Vec::new();
    for _ in 0..ADAPTERS {
        let per_card = RateLimitLayer::builder()
            .per_period(CARD_INTERVAL)
            .burst(1)
            .max_wait(CARD_INTERVAL)
            .key(|req: &RequestRef<'_>| {
                req.extensions()
                    .get::<CardId>()
                    .map_or_else(|| Key::from(""), |c| c.0.clone())
            })
            .cost(cost)
            .build()?;
        per_card_layers.push(per_card.clone());
        let stack = ServiceBuilder::new()
            .layer(tenant_bucket.clone())
            .layer(per_card)
            .service(client());
        adapters.push(BoxCloneService::new(stack));
    }
    let unthrottled: Adapter = BoxCloneService::new(client().map_err(BoxError::from));

    let mut set = JoinSet::new();
    for i in 0..CONVERSATIONS {
        let card = format!("card-{i}");
        let adapter = adapters[i % ADAPTERS].clone();
        let start = Instant::now() + CHUNK_EVERY * (i as u32);
        let chunks = 15 + 2 * i as u32;
        let url = server.url("/v1.0/card/streaming");
        set.spawn(converse(adapter, url, card.clone(), start, chunks, false));
        let url = control_server.url("/v1.0/card/streaming");
        set.spawn(converse(
            unthrottled.clone(),
            url,
            card,
            start,
            chunks,
            true,
        ));
    }
    let mut ours = Vec::new();
    bounded("the conversations", Duration::from_secs(30), async {
        while let Some(done) = set.join_next().await {
            if let Some(tally) = done?? {
                ours.push(tally);
            }
        }
        Ok::<_, BoxError>(())
    })
    .await??;

    // --- What reached the mocks. ---------------------------------------------------------
    let limited = |c: &DingTalkCards| {
        c.edits()
            .iter()
            .filter(|e| {
                e.status == StatusCode::FORBIDDEN || e.status == StatusCode::TOO_MANY_REQUESTS
            })
            .count()
    };
    let control_finals = control.finals_delivered().len();
    println!(
        "-- without a throttle: {} ; {} of {CONVERSATIONS} final edits delivered",
        hits_summary(&control.hits()),
        control_finals
    );
    report.check(
        limited(&control) > 0,
        format!(
            "the load does exceed the cap when unthrottled ({} edits refused with 403)",
            limited(&control)
        ),
    );

    println!("-- with ratewise: {}", hits_summary(&cards.hits()));
    println!("   card      edits sent  skipped(bucket full)  min gap between edits  final");
    let mut min_gap = Duration::MAX;
    ours.sort_by(|a, b| a.card.cmp(&b.card));
    for t in &ours {
        let arrivals: Vec<Instant> = cards
            .edits_for(&t.card)
            .iter()
            .filter(|e| !e.is_final)
            .map(|e| e.instant)
            .collect();
        let gap = arrivals.windows(2).map(|w| w[1] - w[0]).min();
        if let Some(gap) = gap {
            min_gap = min_gap.min(gap);
        }
        println!(
            "   {:<8}  {:>10}  {:>20}  {:>21}  {}",
            t.card,
            t.sent,
            t.bucket_full,
            gap.map_or_else(|| "-".to_owned(), secs),
            t.final_status
                .map_or_else(|| "none".to_owned(), |s| s.to_string()),
        );
    }
    let stats = tenant_bucket.stats();
    println!(
        "   tenant bucket (shared by {ADAPTERS} adapters): {} admitted after waiting {} in all (longest {}), {} refused (2 s max wait), {} finals bypassed",
        stats.admitted,
        secs(Duration::from_millis(stats.total_wait_ms)),
        secs(Duration::from_millis(stats.max_wait_ms)),
        stats.rejected,
        stats.bypassed
    );
    let per_card_stats: Vec<_> = per_card_layers.iter().map(|l| l.stats()).collect();
    let card_wait = Duration::from_millis(per_card_stats.iter().map(|s| s.total_wait_ms).sum());
    let card_longest = Duration::from_millis(
        per_card_stats
            .iter()
            .map(|s| s.max_wait_ms)
            .max()
            .unwrap_or_default(),
    );
    println!(
        "   card limiters: edits waited {} in all for their card's next slot (longest {})",
        secs(card_wait),
        secs(card_longest)
    );

    report.check(
        limited(&cards) == 0,
        format!(
            "zero 403/429 with ratewise ({} calls)",
            cards.hits().count()
        ),
    );
    let mut finals = cards.finals_delivered();
    finals.sort();
    finals.dedup();
    report.check(
        finals.len() == CONVERSATIONS
            && ours.iter().all(|t| t.final_status == Some(StatusCode::OK)),
        format!(
            "every final edit delivered ({} of {CONVERSATIONS})",
            finals.len()
        ),
    );
    report.check(
        min_gap >= CARD_INTERVAL - JITTER_ALLOWANCE,
        format!(
            "non-final edits of one card at least {CARD_INTERVAL:?} apart on the mock's clock: smallest gap {} (allowance {JITTER_ALLOWANCE:?} for loopback jitter)",
            secs(min_gap)
        ),
    );
    // Evidence that the bucket did the work: some edit waited at least one token's
    // interval for its token.
    let interval = Duration::from_secs(1) / rate;
    report.check(
        Duration::from_millis(stats.max_wait_ms) >= interval,
        format!(
            "the shared bucket is wired in and held edits back (longest wait {}, one token every {})",
            secs(Duration::from_millis(stats.max_wait_ms)),
            secs(interval)
        ),
    );

    let sent: usize = ours.iter().map(|t| t.sent).sum();
    let skipped: usize = ours.iter().map(|t| t.bucket_full).sum();
    report.upstream = format!(
        "{}, 0 refused (unthrottled: {} refused)",
        hits_summary(&cards.hits()),
        limited(&control)
    );
    report.callers = format!(
        "{}/{CONVERSATIONS} finals, {sent} edits sent, {skipped} skipped (unthrottled: {control_finals}/{CONVERSATIONS} finals)",
        finals.len()
    );
    server.shutdown().await;
    control_server.shutdown().await;
    Ok(report)
}

/// What one conversation's adapter did.
#[derive(Debug, Default)]
struct Tally {
    card: String,
    /// Non-final edits sent (answered by the mock).
    sent: usize,
    /// Attempts refused because the tenant bucket had no token within 2 s.
    bucket_full: usize,
    /// The final edit's status.
    final_status: Option<StatusCode>,
}

/// One conversation: the model streams `chunks` chunks from `start`, one every
/// `CHUNK_EVERY`; the adapter edits the card with the text so far, one edit at a time,
/// then sends the final edit. Unthrottled (the control), it edits on every chunk. Returns
/// the tally of a throttled conversation (the control's is not needed).
async fn converse<S>(
    mut adapter: S,
    url: String,
    card: String,
    start: Instant,
    chunks: u32,
    is_control: bool,
) -> Result<Option<Tally>, BoxError>
where
    S: Service<Edit, Response = http::Response<hyper::body::Incoming>, Error = BoxError>,
{
    let end = start + CHUNK_EVERY * chunks;
    let text = |now: Instant| {
        let n = (now.saturating_duration_since(start).as_millis() / CHUNK_EVERY.as_millis()) as u32;
        (0..n.min(chunks))
            .map(|j| format!("token{j} "))
            .collect::<String>()
    };
    let edit = |content: String, is_final: bool| -> Result<Edit, BoxError> {
        let mut req = json_request(
            Method::PUT,
            &url,
            &json!({"outTrackId": card, "content": content, "isFinalize": is_final}),
        )?;
        req.headers_mut()
            .insert(dingtalk::TENANT_HEADER, "tenant-token".parse()?); // never printed
        req.extensions_mut()
            .insert(CardId(Key::from(card.as_str())));
        if is_final {
            req.extensions_mut().insert(FinalEdit);
        }
        Ok(req)
    };
    let mut tally = Tally {
        card: card.clone(),
        ..Tally::default()
    };

    let mut next_try = start + CHUNK_EVERY;
    while next_try < end {
        sleep_until(next_try).await;
        let req = edit(text(Instant::now()), false)?;
        match adapter.ready().await?.call(req).await {
            Ok(res) => {
                body_bytes(res.into_body()).await?;
                tally.sent += 1;
                next_try = Instant::now() + CHUNK_EVERY;
            }
            // The tenant bucket had no token for 2 s: skip this edit (the next one
            // carries its text) and try again when a token is due.
            Err(err) => match err.downcast_ref::<Refusal>() {
                Some(full) if matches!(full.kind(), RefusalKind::MaxWait { .. }) => {
                    tally.bucket_full += 1;
                    let retry = Instant::now() + CHUNK_EVERY;
                    next_try = full.earliest().map_or(retry, |at| at.max(retry));
                }
                _ => return Err(err),
            },
        }
    }
    sleep_until(end).await;
    let res = adapter.ready().await?.call(edit(text(end), true)?).await?;
    tally.final_status = Some(res.status());
    body_bytes(res.into_body()).await?;
    Ok((!is_control).then_some(tally))
}
