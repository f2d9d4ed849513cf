//! The proxy's `/stats` and its dashboard at `/`: the real proxy (`Proxy::serve` on
//! 127.0.0.1) in front of the GLM and OpenAI-like simulators, whose own counts the
//! numbers must match, with the dashboard opened in headless Chromium while traffic
//! flows. (The stats routes alone, fed recorded calls, are unit tests in
//! `src/proxy/stats.rs`.)
//!
//! Without a `chromium` binary the browser test prints one `skipped:` line;
//! `RATEWISE_REQUIRE_CHROMIUM=1` (set by `.ci/run`) makes that a failure instead.
//! `cargo test --all-features --test proxy_dashboard -- --ignored` redraws
//! `docs/dashboard.png`, the README's screenshot, from the real proxy under traffic.
#![cfg(all(feature = "proxy", feature = "testing"))]

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::{Method, StatusCode};
use ratewise::proxy::{Proxy, ProxyConfig};
use ratewise::testing::{
    body_bytes, body_json, client, glm, json_request, openai, GlmApi, MockServer, OpenAiApi,
};
use serde_json::{json, Value};
use tokio::{sync::oneshot, task::JoinHandle};

/// Every network step of a real-proxy test is bounded by this.
const LIMIT: Duration = Duration::from_secs(10);

async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(LIMIT, fut)
        .await
        .unwrap_or_else(|_| panic!("{what} took over {LIMIT:?}"))
}

async fn fetch_json(url: &str) -> (StatusCode, Value) {
    let resp = within("a GET", client().get(url.parse().unwrap()))
        .await
        .unwrap();
    let status = resp.status();
    (
        status,
        within("its body", body_json(resp.into_body()))
            .await
            .unwrap(),
    )
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

// ---------------------------------------------------------------------------------
// The real proxy

/// The windows `/stats` takes.
const WINDOWS: [&str; 3] = ["1m", "15m", "60m"];

/// The GLM and OpenAI-like simulators on 127.0.0.1 and the proxy in front of them,
/// served until dropped: backend `glm` is the primary of model `glm-4`, backend
/// `openai` its fallback and the only backend of `gpt-4o-mini`.
struct Gateway {
    glm: GlmApi,
    openai: OpenAiApi,
    url: String,
    _simulators: (MockServer, MockServer),
    _stop: oneshot::Sender<()>,
}

impl Gateway {
    /// `extra` (TOML tables such as `[cooldown]`) ends the configuration.
    async fn start(glm: GlmApi, openai: OpenAiApi, extra: &str) -> Gateway {
        let glm_server = MockServer::start(glm.router()).await.unwrap();
        let openai_server = MockServer::start(openai.router()).await.unwrap();
        let toml = format!(
            r#"
            [backends.glm]
            kind = "glm"
            base_url = "{}"

            [backends.openai]
            kind = "openai"
            base_url = "{}"

            [models.glm-4]
            primary = ["glm"]
            fallback = ["openai"]

            [models.gpt-4o-mini]
            primary = ["openai"]

            {extra}
            "#,
            glm_server.url(glm::PATH.trim_end_matches("/chat/completions")),
            openai_server.url(openai::PATH.trim_end_matches("/chat/completions")),
        );
        let proxy = Proxy::from_config(ProxyConfig::from_toml(&toml).expect("valid config"))
            .expect("valid proxy");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(proxy.serve(listener, async move {
            let _ = stopped.await;
        }));
        Gateway {
            glm,
            openai,
            url,
            _simulators: (glm_server, openai_server),
            _stop: stop,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }

    /// `/stats?window=…` of the proxy.
    async fn stats(&self, window: &str) -> (StatusCode, Value) {
        fetch_json(&self.url(&format!("/stats?window={window}"))).await
    }

    /// Calls the simulators saw.
    fn upstream_calls(&self) -> u64 {
        (self.glm.hits().count() + self.openai.hits().count()) as u64
    }

    /// A client sending one call after the other, every `every`: three to `glm-4`,
    /// then one to `gpt-4o-mini`; every fifth call streamed.
    fn traffic(&self, every: Duration) -> Traffic {
        let (ok, other) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let url = self.url.clone();
        let task = tokio::spawn({
            let (ok, other) = (ok.clone(), other.clone());
            async move {
                let mut tick = tokio::time::interval(every);
                for i in 0u64.. {
                    tick.tick().await;
                    let model = if i % 4 == 3 { "gpt-4o-mini" } else { "glm-4" };
                    let counter = if chat(&url, model, i % 5 == 4).await == StatusCode::OK {
                        &ok
                    } else {
                        &other
                    };
                    counter.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        Traffic { ok, other, task }
    }
}

/// The client of [`Gateway::traffic`]: answers 200 and others so far.
struct Traffic {
    ok: Arc<AtomicU64>,
    other: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One chat call through the proxy: its status, once the whole answer was read. A
/// streamed call asks for `usage` in its last chunk.
async fn chat(base: &str, model: &str, stream: bool) -> StatusCode {
    let mut body = json!({
        "model": model,
        "stream": stream,
        "messages": [{ "role": "user", "content": "how are the limits today?" }]
    });
    if stream {
        body["stream_options"] = json!({ "include_usage": true });
    }
    let url = format!("{base}/v1/chat/completions");
    let req = json_request(Method::POST, &url, &body).unwrap();
    let resp = within("a chat call", client().request(req)).await.unwrap();
    let status = resp.status();
    within("its answer", body_bytes(resp.into_body()))
        .await
        .unwrap();
    status
}

/// The backend `name` of a `/stats` document.
fn backend<'a>(doc: &'a Value, name: &str) -> &'a Value {
    doc["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["name"] == name)
        .unwrap_or_else(|| panic!("no backend {name} in {doc}"))
}

fn sum(series: &Value) -> u64 {
    series
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .sum()
}

/// The GLM simulator admits 2 calls a minute, then answers 1302: the proxy cools `glm`
/// down for 30 s and moves the rest to `openai`. Every window of `/stats` counts what
/// each simulator saw (calls, answers, 1302s, tokens), and shows `glm` cooling.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_of_the_real_proxy_match_what_the_simulators_saw() {
    let gw = Gateway::start(
        GlmApi::new().limit(2),
        OpenAiApi::new().name("openai"),
        "[cooldown]\nbase = \"30s\"\ncap = \"60s\"",
    )
    .await;
    for window in WINDOWS {
        let (status, doc) = gw.stats(window).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(doc["window"], window);
        let names: Vec<&Value> = doc["backends"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| &b["name"])
            .collect();
        assert_eq!(
            names,
            ["glm", "openai"],
            "the configured backends, in order"
        );
        for name in ["glm", "openai"] {
            let b = backend(&doc, name);
            assert_eq!(b["requests"], 0, "{window} {name}");
            assert_eq!(b["state"], "ok", "{window} {name}");
        }
    }

    // Six calls to glm-4 (the fifth streamed), then two to gpt-4o-mini.
    for i in 0..6 {
        assert_eq!(chat(&gw.url, "glm-4", i == 4).await, StatusCode::OK);
    }
    for _ in 0..2 {
        assert_eq!(chat(&gw.url, "gpt-4o-mini", false).await, StatusCode::OK);
    }
    let (glm, openai) = (gw.glm.hits(), gw.openai.hits());
    assert_eq!((glm.count(), glm.served(), glm.rate_limited()), (3, 2, 1));
    assert_eq!((openai.count(), openai.served()), (6, 6));

    // A successful call is counted when its answer's body ends at the proxy, which can
    // be a moment after the client has read it.
    within("/stats to count every call", async {
        loop {
            let (_, doc) = gw.stats("1m").await;
            if sum(&doc["series"]["requests"]) >= gw.upstream_calls() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;

    for window in WINDOWS {
        let (status, doc) = gw.stats(window).await;
        assert_eq!(status, StatusCode::OK);
        let b = backend(&doc, "glm");
        let counts = |b: &Value| {
            [
                "requests",
                "ok",
                "rate_limited",
                "transient",
                "failed",
                "cooldowns",
            ]
            .map(|field| b[field].as_u64().unwrap())
        };
        assert_eq!(
            counts(b),
            [
                glm.count() as u64,
                glm.served() as u64,
                glm.rate_limited() as u64,
                0,
                0,
                1
            ],
            "{window}: glm {b}"
        );
        assert_eq!(b["tokens"], gw.glm.tokens_served(), "{window}");
        assert_eq!(b["state"], "cooling", "{window}: {b}");
        let remaining = b["remaining_ms"].as_u64().unwrap();
        assert!((1..=30_000).contains(&remaining), "{window}: {b}");
        assert!(b["p50_latency_ms"].as_f64().unwrap() > 0.0, "{b}");

        let b = backend(&doc, "openai");
        assert_eq!(
            counts(b),
            [openai.count() as u64, openai.served() as u64, 0, 0, 0, 0],
            "{window}: openai {b}"
        );
        assert!(gw.openai.tokens_served() > 0);
        assert_eq!(b["tokens"], gw.openai.tokens_served(), "{window}");
        assert_eq!(
            (b["state"].as_str(), b["remaining_ms"].as_u64()),
            (Some("ok"), Some(0))
        );

        assert_eq!(sum(&doc["series"]["requests"]), 9, "{window}: the chart");
        assert_eq!(
            sum(&doc["series"]["rate_limited"]),
            1,
            "{window}: the chart"
        );
    }
    let (_, doc) = fetch_json(&gw.url("/stats")).await;
    assert_eq!(
        (
            doc["window"].as_str(),
            backend(&doc, "glm")["requests"].as_u64()
        ),
        (Some("1m"), Some(3))
    );

    for bad in ["5m", "60", "1h"] {
        let (status, doc) = gw.stats(bad).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
        assert_eq!(doc["error"]["code"], "invalid_window", "{bad}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_real_proxys_dashboard_in_headless_chromium_shows_every_backend_and_live_counters() {
    let Some(bin) = chromium() else { return };
    // GLM admits 3 calls per 2 s: under the traffic below it answers 1302 every
    // second or so, and `glm` cools for 1 s.
    let gw = Gateway::start(
        GlmApi::new().limit(3).window(Duration::from_secs(2)),
        OpenAiApi::new().name("openai").limit(100_000),
        "[cooldown]\nbase = \"1s\"\ncap = \"2s\"",
    )
    .await;
    let traffic = gw.traffic(Duration::from_millis(40));

    // 60m, so a minute boundary between the two reads cannot reset the counters.
    let url = gw.url("/?window=60m");
    let args = ["--virtual-time-budget=2500", "--dump-dom"];
    let first = run_chromium(&bin, &url, &args).await;
    let seen_first = gw.upstream_calls();
    within("ten more calls", async {
        while gw.upstream_calls() < seen_first + 10 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let second = run_chromium(&bin, &url, &args).await;
    let seen_second = gw.upstream_calls();
    let answered = (
        traffic.ok.load(Ordering::Relaxed),
        traffic.other.load(Ordering::Relaxed),
    );
    drop(traffic);
    // With `openai` as the fallback, every call got its answer.
    assert!(answered.0 > 0 && answered.1 == 0, "{answered:?}");

    for dom in [&first, &second] {
        let status = tag_with(dom, "id=\"status\"").expect("the status line");
        let updates: u64 = attr(status, "data-updates").unwrap().parse().unwrap();
        assert!(updates >= 1, "the page fetched /stats: {status}");
        for backend in ["glm", "openai"] {
            let card = card(dom, backend).unwrap_or_else(|| panic!("{backend} is shown"));
            let name = tag_with(card, "data-field=\"name\"").unwrap();
            assert!(card[card.find(name).unwrap() + name.len()..].starts_with(backend));
            let state = tag_with(card, "data-field=\"state\"").unwrap();
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
    let per_backend =
        |dom: &str| counter(dom, "glm", "requests") + counter(dom, "openai", "requests");
    assert_eq!(per_backend(&first), before, "the cards add up to the total");
    assert_eq!(per_backend(&second), after, "the cards add up to the total");
    assert!(counter(&first, "glm", "requests") > 0, "glm was called");
    assert!(
        counter(&second, "openai", "requests") > counter(&first, "openai", "requests"),
        "the fallback's counter moved"
    );
    // The page never shows more calls than the simulators had seen when it was read.
    assert!(before <= seen_first && after <= seen_second);
}

/// Redraws `docs/dashboard.png` (1200×800) from the real proxy, demo-like, after a
/// minute of traffic, at a moment `glm` cools down (about 80 s; run by hand;
/// `RATEWISE_SCREENSHOT_SECS` sets the minute).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "redraws docs/dashboard.png; run by hand"]
async fn screenshot_for_the_readme() {
    let Some(bin) = chromium() else { return };
    // As `ratewise-proxy --demo`: GLM admits 5 calls per 10 s, then 1302.
    let gap = Duration::from_millis(150);
    let gw = Gateway::start(
        GlmApi::new()
            .limit(5)
            .window(Duration::from_secs(10))
            .stream_gap(gap),
        OpenAiApi::new().name("openai").limit(600).stream_gap(gap),
        "[cooldown]\nbackoff = \"exponential\"\nbase = \"2s\"\ncap = \"30s\"\nprecheck = \"500ms\"",
    )
    .await;
    let traffic = gw.traffic(Duration::from_millis(250));
    let secs = std::env::var("RATEWISE_SCREENSHOT_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    tokio::time::sleep(Duration::from_secs(secs)).await;
    // Shoot while glm has a few seconds of cooldown left.
    tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let (_, doc) = gw.stats("1m").await;
            if backend(&doc, "glm")["remaining_ms"].as_u64().unwrap() >= 4_000 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("glm cooled down within a minute");
    let png = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/dashboard.png");
    std::fs::create_dir_all(png.parent().unwrap()).unwrap();
    let shot = format!("--screenshot={}", png.display());
    run_chromium(
        &bin,
        &gw.url("/?window=15m"),
        &[
            &shot,
            "--window-size=1200,800",
            "--virtual-time-budget=2500",
        ],
    )
    .await;
    println!(
        "answers: {} ok, {} other; simulators: glm {} calls ({} × 1302), openai {}",
        traffic.ok.load(Ordering::Relaxed),
        traffic.other.load(Ordering::Relaxed),
        gw.glm.hits().count(),
        gw.glm.hits().rate_limited(),
        gw.openai.hits().count()
    );
    assert!(
        std::fs::metadata(&png).unwrap().len() > 10_000,
        "a PNG was written"
    );
}
