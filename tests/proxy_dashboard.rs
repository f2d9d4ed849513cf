//! The proxy's `/stats` and its dashboard at `/`, served on 127.0.0.1 while a task
//! records traffic; the dashboard is opened in headless Chromium.
//!
//! Without a `chromium` binary the browser test prints one `skipped:` line;
//! `RATEWISE_REQUIRE_CHROMIUM=1` (set by `.ci/run`) makes that a failure instead.
//! `cargo test --all-features --test proxy_dashboard -- --ignored` redraws
//! `docs/dashboard.png`, the README's screenshot.
#![cfg(all(feature = "proxy", feature = "testing"))]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{header, StatusCode};
use ratewise::proxy::stats::{routes, BackendState, Call, CallOutcome, ProxyStats, StateFn};
use ratewise::testing::{body_bytes, body_json, client, MockServer};
use tokio::task::JoinHandle;

const BACKENDS: [&str; 3] = ["glm-primary", "openai-fallback", "local-vllm"];

/// A made-up day at the gateway, on the real clock: every 20 s the GLM backend is
/// rate-limited, cools down for 5 s, probes for 1 s; its calls move to the fallback meanwhile.
#[derive(Clone)]
struct Scenario {
    start: Instant,
}

impl Scenario {
    fn state(&self, backend: &str) -> BackendState {
        let t = self.start.elapsed().as_millis() as u64 % 20_000;
        match backend {
            "glm-primary" if (10_000..15_000).contains(&t) => BackendState::Cooling {
                remaining: Duration::from_millis(15_000 - t),
            },
            "glm-primary" if (15_000..16_000).contains(&t) => BackendState::Probing,
            _ => BackendState::Ok,
        }
    }

    fn states(&self) -> StateFn {
        let scenario = self.clone();
        Arc::new(move |name: &str| scenario.state(name))
    }

    /// Records a call every 20 ms until aborted; `fed` counts them.
    fn feed(&self, stats: ProxyStats, fed: Arc<AtomicU64>) -> JoinHandle<()> {
        let scenario = self.clone();
        tokio::spawn(async move {
            let mut seed = 0x2545_f491_4f6c_dd1d_u64;
            let mut tick = tokio::time::interval(Duration::from_millis(20));
            let mut was_cooling = false;
            loop {
                tick.tick().await;
                let cooling = matches!(scenario.state("glm-primary"), BackendState::Cooling { .. });
                if cooling && !was_cooling {
                    stats.record_cooldown("glm-primary");
                }
                was_cooling = cooling;
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let roll = seed % 100;
                let t = scenario.start.elapsed().as_millis() as u64 % 20_000;
                let (backend, outcome) = match scenario.state("glm-primary") {
                    BackendState::Ok if (8_000..10_000).contains(&t) && roll < 45 => {
                        ("glm-primary", CallOutcome::RateLimited)
                    }
                    BackendState::Ok if roll < 55 => ("glm-primary", CallOutcome::Ok),
                    _ if roll < 3 => ("openai-fallback", CallOutcome::Transient),
                    _ if roll < 80 => ("openai-fallback", CallOutcome::Ok),
                    _ => ("local-vllm", CallOutcome::Ok),
                };
                let base = match backend {
                    "glm-primary" => 180,
                    "openai-fallback" => 420,
                    _ => 60,
                };
                stats.record(Call {
                    backend,
                    outcome,
                    latency: Duration::from_millis(base + seed % base),
                    wait: Duration::from_millis(if roll < 20 { seed % 40 } else { 0 }),
                    tokens: if outcome == CallOutcome::Ok {
                        200 + seed % 900
                    } else {
                        0
                    },
                });
                fed.fetch_add(1, Ordering::Relaxed);
            }
        })
    }
}

fn names() -> impl Iterator<Item = String> {
    BACKENDS.iter().map(|s| s.to_string())
}

async fn get_json(server: &MockServer, path: &str) -> (StatusCode, serde_json::Value) {
    let resp = client()
        .get(server.url(path).parse().unwrap())
        .await
        .unwrap();
    let status = resp.status();
    (status, body_json(resp.into_body()).await.unwrap())
}

fn requests(doc: &serde_json::Value, backend: usize) -> u64 {
    doc["backends"][backend]["requests"].as_u64().unwrap()
}

#[tokio::test]
async fn stats_windows_move_after_traffic_and_a_bad_window_is_a_400() {
    let stats = ProxyStats::new(names());
    let scenario = Scenario {
        start: Instant::now(),
    };
    let server = MockServer::start(routes(stats.clone(), scenario.states()))
        .await
        .unwrap();

    for window in ["1m", "15m", "60m"] {
        let (status, doc) = get_json(&server, &format!("/stats?window={window}")).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(doc["window"], window);
        let names: Vec<_> = doc["backends"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["name"].clone())
            .collect();
        assert_eq!(names, BACKENDS);
        assert_eq!(requests(&doc, 0), 0);
    }

    for i in 0..30u64 {
        stats.record(Call {
            backend: "glm-primary",
            outcome: if i % 3 == 0 {
                CallOutcome::RateLimited
            } else {
                CallOutcome::Ok
            },
            latency: Duration::from_millis(100),
            wait: Duration::ZERO,
            tokens: 10,
        });
    }
    stats.record_cooldown("glm-primary");
    stats.record(Call {
        backend: "local-vllm",
        outcome: CallOutcome::Failed,
        latency: Duration::from_millis(3),
        wait: Duration::from_millis(1),
        tokens: 0,
    });

    for window in ["1m", "15m", "60m"] {
        let (_, doc) = get_json(&server, &format!("/stats?window={window}")).await;
        let glm = &doc["backends"][0];
        assert_eq!(glm["requests"], 30, "{window}");
        assert_eq!(
            (glm["ok"].as_u64(), glm["rate_limited"].as_u64()),
            (Some(20), Some(10))
        );
        assert_eq!(
            (glm["cooldowns"].as_u64(), glm["tokens"].as_u64()),
            (Some(1), Some(300))
        );
        assert_eq!(glm["p50_latency_ms"], 100.0);
        assert_eq!(requests(&doc, 1), 0);
        assert_eq!(doc["backends"][2]["failed"], 1);
        let chart: u64 = doc["series"]["requests"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap())
            .sum();
        assert_eq!(chart, 31);
    }
    // No window: 1m.
    let (_, doc) = get_json(&server, "/stats").await;
    assert_eq!(
        (doc["window"].as_str(), requests(&doc, 0)),
        (Some("1m"), 30)
    );

    let (status, doc) = get_json(&server, "/stats?window=5m").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(doc["error"]["type"], "invalid_request_error");
    assert_eq!(doc["error"]["code"], "invalid_window");
    assert!(
        doc["error"]["message"]
            .as_str()
            .unwrap()
            .contains("1m, 15m or 60m"),
        "{doc}"
    );

    let resp = client()
        .get(server.url("/").parse().unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        resp.headers()[header::CONTENT_TYPE],
        "text/html; charset=utf-8"
    );
    assert!(resp.headers()[header::CONTENT_SECURITY_POLICY]
        .to_str()
        .unwrap()
        .contains("default-src 'none'"));
    let page = body_bytes(resp.into_body()).await.unwrap();
    assert!(String::from_utf8_lossy(&page).contains("id=\"total-requests\""));
}

/// The Chromium binary, or `None` after one `skipped:` line (a panic under
/// `RATEWISE_REQUIRE_CHROMIUM=1`).
fn chromium() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let found = ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .find_map(|name| {
            std::env::split_paths(&path)
                .map(|dir| dir.join(name))
                .find(|p| p.is_file())
        });
    if found.is_none() {
        assert!(
            std::env::var("RATEWISE_REQUIRE_CHROMIUM").as_deref() != Ok("1"),
            "RATEWISE_REQUIRE_CHROMIUM=1 but no chromium on PATH"
        );
        println!("skipped: no chromium on PATH (apt-get install chromium)");
    }
    found
}

/// Runs headless Chromium on `url` with `args`, bounded to 90 s, in a throwaway profile.
async fn run_chromium(bin: &Path, url: &str, args: &[&str]) -> String {
    static RUN: AtomicU64 = AtomicU64::new(0);
    let profile = std::env::temp_dir().join(format!(
        "ratewise-chromium-{}-{}",
        std::process::id(),
        RUN.fetch_add(1, Ordering::Relaxed)
    ));
    let child = tokio::process::Command::new(bin)
        .args([
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
        ])
        .args([
            "--no-first-run",
            "--disable-extensions",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("chromium starts");
    let out = tokio::time::timeout(Duration::from_secs(90), child.wait_with_output())
        .await
        .expect("chromium finished within 90 s")
        .expect("chromium ran");
    let _ = std::fs::remove_dir_all(&profile);
    assert!(out.status.success(), "chromium exited with {}", out.status);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The element (start tag) holding `marker` in `html`, from `from` on.
fn tag_with<'a>(html: &'a str, marker: &str) -> Option<&'a str> {
    let at = html.find(marker)?;
    let start = html[..at].rfind('<')?;
    let end = at + html[at..].find('>')?;
    Some(&html[start..=end])
}

fn attr(tag: &str, name: &str) -> Option<String> {
    let key = format!(" {name}=\"");
    let at = tag.find(&key)? + key.len();
    Some(tag[at..at + tag[at..].find('"')?].to_owned())
}

/// The HTML of one backend's card: from its `data-backend` to the next card.
fn card<'a>(dom: &'a str, backend: &str) -> Option<&'a str> {
    let at = dom.find(&format!("data-backend=\"{backend}\""))?;
    let rest = &dom[at + 1..];
    Some(&dom[at..at + 1 + rest.find("data-backend=").unwrap_or(rest.len())])
}

/// A counter of a backend's card, as the page shows it (`data-value` of its field).
fn counter(dom: &str, backend: &str, field: &str) -> u64 {
    let card = card(dom, backend).unwrap_or_else(|| panic!("no card for {backend} in:\n{dom}"));
    let tag = tag_with(card, &format!("data-field=\"{field}\"")).unwrap();
    attr(tag, "data-value").unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_in_headless_chromium_shows_every_backend_and_live_counters() {
    let Some(bin) = chromium() else { return };
    let stats = ProxyStats::new(names());
    let scenario = Scenario {
        start: Instant::now(),
    };
    let server = MockServer::start(routes(stats.clone(), scenario.states()))
        .await
        .unwrap();
    let fed = Arc::new(AtomicU64::new(0));
    let feeder = scenario.feed(stats.clone(), fed.clone());

    // 60m, so a minute boundary between the two reads cannot reset the counters.
    let url = server.url("/?window=60m");
    let args = ["--virtual-time-budget=2500", "--dump-dom"];
    let first = run_chromium(&bin, &url, &args).await;
    let fed_between = fed.load(Ordering::Relaxed);
    // The feeder records every 20 ms: wait until the counters have surely moved.
    while fed.load(Ordering::Relaxed) < fed_between + 10 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let second = run_chromium(&bin, &url, &args).await;
    feeder.abort();

    for dom in [&first, &second] {
        let status = tag_with(dom, "id=\"status\"").expect("the status line");
        let updates: u64 = attr(status, "data-updates").unwrap().parse().unwrap();
        assert!(updates >= 1, "the page fetched /stats: {status}");
        for backend in BACKENDS {
            assert!(card(dom, backend).is_some(), "{backend} is shown");
            let state = tag_with(card(dom, backend).unwrap(), "data-field=\"state\"").unwrap();
            assert!(state.contains("class=\"state "), "{state}");
        }
        let active = tag_with(dom, "id=\"window-60m\"").unwrap();
        assert_eq!(attr(active, "class").as_deref(), Some("active"));
        let chart = &dom[dom.find("id=\"chart\"").unwrap()..];
        assert!(
            chart[..chart.find("</svg>").unwrap()].contains("<rect"),
            "the chart has bars"
        );
    }

    let total = |dom: &str| -> u64 {
        attr(
            tag_with(dom, "id=\"total-requests\"").unwrap(),
            "data-value",
        )
        .unwrap()
        .parse()
        .unwrap()
    };
    let (before, after) = (total(&first), total(&second));
    assert!(
        before > 0 && after > before,
        "total requests {before} then {after}"
    );
    let per_backend = |dom: &str| {
        BACKENDS
            .iter()
            .map(|b| counter(dom, b, "requests"))
            .sum::<u64>()
    };
    assert_eq!(per_backend(&first), before, "the cards add up to the total");
    assert!(
        counter(&second, "openai-fallback", "requests")
            > counter(&first, "openai-fallback", "requests"),
        "the fallback's counter moved"
    );
    // The page never shows more than was recorded when it was read.
    assert!(after <= fed.load(Ordering::Relaxed));
}

/// Redraws `docs/dashboard.png` while traffic flows (about 100 s; run by hand).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "redraws docs/dashboard.png; run by hand"]
async fn screenshot_for_the_readme() {
    let Some(bin) = chromium() else { return };
    let stats = ProxyStats::new(names());
    // Start 10 s into the scenario's 20 s cycle, so the shot (100 s and Chromium's start
    // later) catches GLM cooling down.
    let scenario = Scenario {
        start: Instant::now() - Duration::from_secs(10),
    };
    let server = MockServer::start(routes(stats.clone(), scenario.states()))
        .await
        .unwrap();
    let feeder = scenario.feed(stats, Arc::new(AtomicU64::new(0)));
    let secs = std::env::var("RATEWISE_SCREENSHOT_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100);
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let png = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/dashboard.png");
    std::fs::create_dir_all(png.parent().unwrap()).unwrap();
    let shot = format!("--screenshot={}", png.display());
    run_chromium(
        &bin,
        &server.url("/?window=15m"),
        &[
            &shot,
            "--window-size=1200,800",
            "--virtual-time-budget=2500",
        ],
    )
    .await;
    feeder.abort();
    assert!(
        std::fs::metadata(&png).unwrap().len() > 10_000,
        "a PNG was written"
    );
}
