//! The QQ Bot reconnect storm (seed 000), against the `QqGateway` mock on 127.0.0.1.
//!
//! Every reconnect of a QQ bot asks `GET /gateway` for the WebSocket URL. The endpoint
//! allows about two calls per window and then answers **HTTP 400**
//! `{"message":"接口调用超过频率限制"}`, so a storm of reconnects (close code 4009)
//! ends with no URL at all and the adapter gives up. The client stack here:
//!
//! ```text
//! CachedEndpointLayer          the last good URL, served with no call; one refresh at a time;
//!                              the stale URL (and a cooldown) when a refresh is refused
//!   ClassifyLayer(Preset::qq) a 400 whose body says 频率限制 is a rate limit
//!     FreshClientLayer         a new HTTP client after 2 connection-level errors in a row
//!       hyper-util client
//! ```
//!
//! The mock's window is 2 s here (its default is 10 s) so the example ends quickly.
//!
//! ```sh
//! cargo run --example qq_gateway --features testing
//! ```

#[path = "support/mod.rs"]
mod support;

use std::convert::Infallible;
use std::error::Error;
use std::fmt;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::Full;
use ratewise::cache::{CacheStatus, StaleReason};
use ratewise::classify::Preset;
use ratewise::key::MethodUri;
use ratewise::testing::{body_json, client, empty_request, qq, MockServer, Outcome, QqGateway};
use ratewise::{BoxError, CachedEndpointLayer, ClassifyLayer, FreshClientLayer};
use tower::{service_fn, Service, ServiceBuilder, ServiceExt};

use support::{bounded, hits_summary, print_hits, Report};

/// Reconnects in the storm.
const RECONNECTS: usize = 30;
/// The gateway's window: 2 calls per window, then 400.
const WINDOW: Duration = Duration::from_secs(2);
/// The bot's pause between two reconnect attempts after a failed connect.
const RECONNECT_DELAY: Duration = Duration::from_millis(250);
/// The most attempts the bot makes to get a working URL after one disconnect.
const MAX_ATTEMPTS: usize = 12;

#[allow(dead_code)] // `demo.rs` includes this file as a module and calls `run`.
#[tokio::main]
async fn main() -> ExitCode {
    support::finish(run().await)
}

/// Runs the scenario and checks what the mock recorded.
pub async fn run() -> Result<Report, BoxError> {
    let mut report = Report::new("QQ gateway");
    println!("== QQ Bot: a reconnect storm on GET /gateway (2 calls per {WINDOW:?}, then 400 接口调用超过频率限制)");

    // --- Without ratewise: every reconnect asks the gateway. ---------------------------
    let naive = QqGateway::new().window(WINDOW);
    let naive_server = MockServer::start(naive.router()).await?;
    let http = client();
    bounded("the unprotected storm", Duration::from_secs(10), async {
        for _ in 0..RECONNECTS {
            let req = empty_request(Method::GET, &naive_server.url("/gateway"))?;
            http.request(req).await?;
        }
        Ok::<_, BoxError>(())
    })
    .await??;
    println!(
        "-- without ratewise: {RECONNECTS} reconnects made {}",
        hits_summary(&naive.hits())
    );
    report.check(
        naive.hits().rate_limited() > 0,
        format!(
            "the storm does exceed the limit when unprotected ({} of {RECONNECTS} refused)",
            naive.hits().rate_limited()
        ),
    );
    naive_server.shutdown().await;

    // --- With ratewise. ------------------------------------------------------------------
    let qq = QqGateway::new().window(WINDOW);
    let server = MockServer::start(qq.router()).await?;
    let gateway_url = server.url("/gateway");

    let cache = CachedEndpointLayer::builder()
        .default_backoff(WINDOW) // QQ sends no retry hint: hold refreshes back one window
        .build()?;
    let cache_handle = cache.handle();
    let fresh = FreshClientLayer::builder()
        .threshold(2)
        .name("qq http client")
        .build()?;

    // Builds hyper-util clients for `FreshClientLayer`. `stale_pool` simulates the
    // incident's stale connection pool: while it is set, the FIRST client fails every call
    // with an error whose message is empty.
    let stale_pool = Arc::new(AtomicBool::new(false));
    let made = Arc::new(AtomicU64::new(0));
    let make_client = service_fn({
        let (stale_pool, made) = (stale_pool.clone(), made.clone());
        move |()| {
            let generation = made.fetch_add(1, Ordering::SeqCst) + 1;
            let stale_pool = stale_pool.clone();
            let http = client();
            async move {
                Ok::<_, Infallible>(service_fn(move |req: Request<Full<Bytes>>| {
                    let http = http.clone();
                    let broken = generation == 1 && stale_pool.load(Ordering::SeqCst);
                    async move {
                        if broken {
                            return Err(BoxError::from(StalePool));
                        }
                        http.request(req).await.map_err(BoxError::from)
                    }
                }))
            }
        }
    });

    let gateway = ServiceBuilder::new()
        .layer(cache)
        .layer(ClassifyLayer::new(Preset::qq()))
        .layer(fresh.clone())
        .service(make_client);

    let mut bot = Bot {
        gateway,
        gateway_url,
        live: qq::DEFAULT_URL.to_owned(),
        got: Tally::default(),
    };

    // 1. The storm: the session drops (4009) right after every connect.
    println!("-- 1. {RECONNECTS} reconnects after 4009 disconnects");
    bounded("the storm", Duration::from_secs(10), async {
        for _ in 0..RECONNECTS {
            bot.reconnect(|_| {}).await?;
            tokio::time::sleep(Duration::from_millis(10)).await; // the session's short life
        }
        Ok::<_, BoxError>(())
    })
    .await??;
    let calls_after_storm = qq.hits().count();
    report.check(
        calls_after_storm == 1,
        format!("{RECONNECTS} reconnects cost {calls_after_storm} call(s) to /gateway (expected 1: the first)"),
    );

    // 2. The gateway hands out a new URL; the cached one is dead.
    println!("-- 2. the cached URL is dead: invalidate, one refresh");
    bot.rotate(&qq, 2);
    let attempts = bot.reconnect(|k| {
        cache_handle.invalidate(k);
    });
    let attempts = bounded("the dead-URL reconnect", Duration::from_secs(10), attempts).await??;
    report.check(
        qq.hits().count() == calls_after_storm + 1 && attempts == 2,
        format!(
            "a dead URL costs one refresh: connected on attempt {attempts}, {} call(s) in all",
            qq.hits().count()
        ),
    );

    // 3. Dead again, and the window is spent: the refresh is refused (400). The stale URL
    //    is served, the key cools down, and reconnects cost nothing until it is over.
    println!("-- 3. dead again while the window is spent: stale URL, cooldown, then one refresh");
    bot.rotate(&qq, 3);
    let before = qq.hits().count();
    let attempts = bot.reconnect(|k| {
        cache_handle.invalidate(k);
    });
    let attempts = bounded(
        "the reconnect during the cooldown",
        Duration::from_secs(10),
        attempts,
    )
    .await??;
    let hits = qq.hits().all();
    let refused = hits
        .iter()
        .filter(|h| h.outcome == Outcome::RateLimited)
        .count();
    let calls = hits.len() - before;
    report.check(
        refused == 1 && calls == 2,
        format!("{attempts} reconnect attempts cost {calls} calls: one refused (400), one after the cooldown"),
    );
    // The first call after the 400, measured on the mock's clock.
    let gap = hits
        .windows(2)
        .find(|w| w[0].outcome == Outcome::RateLimited)
        .map(|w| w[1].at.saturating_sub(w[0].at));
    report.check(
        gap.is_some_and(|gap| gap >= WINDOW),
        format!(
            "no call while cooling down: the next call came {} after the 400 (cooldown {})",
            gap.map_or_else(|| "never".to_owned(), support::secs),
            support::secs(WINDOW)
        ),
    );

    // 4. The HTTP client's pool goes stale (simulated): its errors say nothing. After two
    //    in a row the client is rebuilt; meanwhile the cached URL is served.
    println!("-- 4. the HTTP client goes stale: two errors, a new client, one refresh");
    stale_pool.store(true, Ordering::SeqCst);
    bot.rotate(&qq, 4);
    let before = qq.hits().count();
    let attempts = bot.reconnect(|k| {
        cache_handle.invalidate(k);
    });
    let attempts = bounded(
        "the reconnect on a stale client",
        Duration::from_secs(10),
        attempts,
    )
    .await??;
    let fresh_stats = fresh.stats();
    report.check(
        fresh_stats.rebuilds == 1 && fresh_stats.generation == 2,
        format!(
            "the stale client was replaced: generation {}, {} rebuild(s), {} clients made",
            fresh_stats.generation,
            fresh_stats.rebuilds,
            made.load(Ordering::SeqCst)
        ),
    );
    report.check(
        qq.hits().count() == before + 1,
        format!(
            "connected on attempt {attempts}; the stale client's calls never reached the gateway, the new one's did ({} call)",
            qq.hits().count() - before
        ),
    );

    // --- What reached the gateway, and what the bot got. --------------------------------
    println!("-- what reached GET /gateway (time since the mock started):");
    print_hits(&qq.hits());
    let stats = cache_handle.stats();
    let got = &bot.got;
    println!(
        "-- what the bot got: {} URLs: {} cached (hit), {} fetched (miss), {} stale [{} refused refresh, {} cooling down, {} client error]; {} errors",
        got.total(), got.hit, got.miss, got.stale(), got.stale_limited, got.stale_cooling, got.stale_error, got.errors
    );
    println!(
        "-- cache: {} upstream calls ({} failed inside the stale client), {} hits, {} stale serves; HTTP client generation {}",
        stats.upstream_calls,
        stats.upstream_calls.saturating_sub(qq.hits().count() as u64),
        stats.hits,
        stats.stale_serves,
        fresh.stats().generation
    );
    report.check(
        got.errors == 0,
        "every reconnect got a URL (no error reached the bot)",
    );
    report.check(
        qq.hits().rate_limited() == 1,
        format!(
            "one 400 in all with ratewise, against {} without",
            naive.hits().rate_limited()
        ),
    );
    report.upstream = format!(
        "{} (without ratewise: {})",
        hits_summary(&qq.hits()),
        hits_summary(&naive.hits())
    );
    report.callers = format!(
        "{} URLs, 0 errors: {} cached, {} fetched, {} stale",
        got.total(),
        got.hit,
        got.miss,
        got.stale()
    );
    server.shutdown().await;
    Ok(report)
}

/// The bot: asks the gateway stack for a URL and "connects" to it. The simulated
/// WebSocket accepts only the URL the gateway currently hands out (`live`).
struct Bot<S> {
    gateway: S,
    gateway_url: String,
    live: String,
    got: Tally,
}

impl<S, B> Bot<S>
where
    S: Service<Request<Full<Bytes>>, Response = http::Response<B>, Error = BoxError> + Clone,
    B: http_body::Body,
    B::Error: Into<BoxError>,
{
    /// The gateway starts handing out a new URL; the old one is dead from now on.
    fn rotate(&mut self, qq: &QqGateway, generation: u32) {
        self.live = format!("{}?generation={generation}", qq::DEFAULT_URL);
        qq.set_url(self.live.clone());
    }

    /// Gets a URL and connects; on a dead URL calls `on_dead` with the cache key and
    /// tries again after a pause. Returns the attempts it took.
    async fn reconnect(&mut self, on_dead: impl Fn(&str)) -> Result<usize, BoxError> {
        // The cache's default key for this request (secrets masked, see `MethodUri`).
        let key = MethodUri::key_for(&Method::GET, &self.gateway_url.parse()?);
        for attempt in 1..=MAX_ATTEMPTS {
            let url = self.gateway_url().await?;
            if url.as_deref() == Some(self.live.as_str()) {
                return Ok(attempt);
            }
            on_dead(key.as_str());
            tokio::time::sleep(RECONNECT_DELAY).await;
        }
        Err(format!("no working gateway URL after {MAX_ATTEMPTS} attempts").into())
    }

    /// One `GET /gateway` through the stack: the URL, or `None` when the bot got an
    /// error (counted).
    async fn gateway_url(&mut self) -> Result<Option<String>, BoxError> {
        let req = empty_request(Method::GET, &self.gateway_url)?;
        let res = match self.gateway.clone().oneshot(req).await {
            Ok(res) => res,
            Err(err) => {
                println!("   the bot got an error: {err}");
                self.got.errors += 1;
                return Ok(None);
            }
        };
        match CacheStatus::of(&res) {
            Some(CacheStatus::Hit) => self.got.hit += 1,
            Some(CacheStatus::Miss) => self.got.miss += 1,
            Some(CacheStatus::Stale { reason }) => match reason {
                StaleReason::RateLimited => self.got.stale_limited += 1,
                StaleReason::CoolingDown { .. } => self.got.stale_cooling += 1,
                _ => self.got.stale_error += 1,
            },
            _ => {}
        }
        if !res.status().is_success() {
            return Ok(None);
        }
        let json = body_json(res.into_body()).await?;
        Ok(json["url"].as_str().map(str::to_owned))
    }
}

/// What the bot got from the gateway stack.
#[derive(Debug, Default)]
struct Tally {
    hit: usize,
    miss: usize,
    stale_limited: usize,
    stale_cooling: usize,
    stale_error: usize,
    errors: usize,
}

impl Tally {
    fn stale(&self) -> usize {
        self.stale_limited + self.stale_cooling + self.stale_error
    }

    fn total(&self) -> usize {
        self.hit + self.miss + self.stale()
    }
}

/// The error a stale connection pool raised in the incident: its message is empty.
#[derive(Debug)]
struct StalePool;

impl fmt::Display for StalePool {
    fn fmt(&self, _f: &mut fmt::Formatter<'_>) -> fmt::Result {
        Ok(())
    }
}

impl Error for StalePool {}
