//! The `ratewise-proxy` binary: `--demo` on a fresh machine, start-up errors, and two
//! replicas sharing one GLM limit through Redis.

#![cfg(all(feature = "proxy", feature = "testing"))]

use std::{
    io::{BufRead, BufReader, Read},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use http::{Method, StatusCode};
use ratewise::testing::{body_json, client, glm, json_request, GlmApi, MockServer, RedisServer};
use serde_json::json;
use tokio::time::Instant;

const BIN: &str = env!("CARGO_BIN_EXE_ratewise-proxy");

/// A running binary, killed when dropped.
struct Proc {
    child: Child,
    url: String,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proc {
    /// Starts the binary and waits (at most 20 s) for its "listening on" line.
    fn start(args: &[&str], env: &[(&str, &str)]) -> Proc {
        let mut cmd = Command::new(BIN);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("the binary starts");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            for line in lines.by_ref() {
                let Ok(line) = line else { break };
                if let Some(url) = line.strip_prefix("ratewise-proxy listening on ") {
                    let _ = tx.send(url.to_owned());
                }
            }
        });
        let url = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("the binary prints its URL");
        Proc { child, url }
    }

    /// Waits (at most `limit`) for the process to exit; its exit code.
    fn wait(&mut self, limit: Duration) -> Option<i32> {
        let start = std::time::Instant::now();
        while start.elapsed() < limit {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("the binary did not exit within {limit:?}");
    }
}

/// Runs the binary to completion (it must fail fast); its exit code and stderr.
fn run_failing(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("the binary starts");
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut stderr)
        .expect("stderr");
    let start = std::time::Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return (status.code(), stderr);
        }
        if start.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            panic!("the binary kept running: {stderr}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A config file in the temp directory, removed when dropped.
struct TempFile(PathBuf);

impl TempFile {
    fn new(name: &str, text: &str) -> TempFile {
        let path =
            std::env::temp_dir().join(format!("ratewise-proxy-{}-{name}", std::process::id()));
        std::fs::write(&path, text).expect("write the config");
        TempFile(path)
    }

    fn path(&self) -> &str {
        self.0.to_str().expect("utf-8 path")
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn chat(model: &str) -> serde_json::Value {
    json!({ "model": model, "messages": [{ "role": "user", "content": "hello" }] })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_serves_the_simulators_and_stops_by_itself() {
    let mut proc = Proc::start(
        &["--demo", "--listen", "127.0.0.1:0", "--exit-after", "3"],
        &[],
    );
    let url = format!("{}/v1/chat/completions", proc.url);
    let res = tokio::time::timeout(
        Duration::from_secs(10),
        client().request(json_request(Method::POST, &url, &chat("glm-4")).unwrap()),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["x-ratewise-backend"], "glm");
    let body = body_json(res.into_body()).await.unwrap();
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "glm mock reply #1"
    );
    let models = client()
        .get(format!("{}/v1/models", proc.url).parse().unwrap())
        .await
        .unwrap();
    let models = body_json(models.into_body()).await.unwrap();
    assert_eq!(models["data"][0]["id"], "glm-4");
    let code = tokio::task::spawn_blocking(move || proc.wait(Duration::from_secs(15)))
        .await
        .unwrap();
    assert_eq!(code, Some(0));
}

#[test]
fn start_up_errors_name_the_key_or_the_variable() {
    let good = "[backends.glm]\nkind = \"glm\"\nbase_url = \"http://127.0.0.1:9/api/paas/v4\"\n[models.glm-4]\nprimary = [\"glm\"]\n";

    let typo = TempFile::new(
        "typo.toml",
        &good.replace("kind = \"glm\"", "kind = \"glm\"\nrmp = 5"),
    );
    let (code, stderr) = run_failing(&["--config", typo.path()], &[]);
    assert_eq!(code, Some(2));
    assert!(stderr.contains("backends.glm.rmp"), "{stderr}");

    let keyed = TempFile::new(
        "keyed.toml",
        &good.replace(
            "kind = \"glm\"",
            "kind = \"glm\"\napi_key_env = \"RATEWISE_TEST_UNSET_KEY_90\"",
        ),
    );
    let (code, stderr) = run_failing(&["--config", keyed.path()], &[]);
    assert_eq!(code, Some(2));
    assert!(stderr.contains("RATEWISE_TEST_UNSET_KEY_90"), "{stderr}");

    let plain = TempFile::new("plain.toml", good);
    let (code, stderr) = run_failing(
        &["--config", plain.path()],
        &[("RATEWISE_PROXY__BACKENDS__GLM__RPM", "lots")],
    );
    assert_eq!(code, Some(2));
    assert!(
        stderr.contains("backends.glm.rpm")
            && stderr.contains("RATEWISE_PROXY__BACKENDS__GLM__RPM"),
        "{stderr}"
    );

    let (code, stderr) = run_failing(&["--config", "/nonexistent/ratewise-proxy.toml"], &[]);
    assert_eq!(code, Some(2));
    assert!(
        stderr.contains("/nonexistent/ratewise-proxy.toml"),
        "{stderr}"
    );

    let (code, stderr) = run_failing(&["--listen", "127.0.0.1:0"], &[]);
    assert_eq!(code, Some(2));
    assert!(stderr.contains("--config FILE or --demo"), "{stderr}");
}

/// Two proxy processes share one GLM limit through Redis: the simulator admits 50 calls
/// per 2 s; 200 requests spread over both replicas are all served, by both, and meet
/// no 1302. Calls that find the shared limit spent wait their turn (within `max_wait`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_share_one_limit() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let glm_api = GlmApi::new().limit(50).window(Duration::from_secs(2));
    let server = MockServer::start(glm_api.router()).await.unwrap();
    // 50 per 2.2 s: any 2 s the simulator counts holds at most 50 sends, whatever the
    // transit time.
    let config = TempFile::new(
        "replicas.toml",
        &format!(
            r#"
            [backends.glm]
            kind = "glm"
            base_url = "{}"
            window = {{ n = 50, per = "2200ms" }}
            [models.glm-4]
            primary = ["glm"]
            [routing]
            max_wait = "20s"
            [redis]
            url = "{}"
            prefix = "replicas-{}"
            instances = 2
            "#,
            server.url(glm::PATH.trim_end_matches("/chat/completions")),
            redis.url(),
            std::process::id(),
        ),
    );
    let a = Proc::start(&["--config", config.path(), "--listen", "127.0.0.1:0"], &[]);
    let b = Proc::start(&["--config", config.path(), "--listen", "127.0.0.1:0"], &[]);
    let urls = [
        format!("{}/v1/chat/completions", a.url),
        format!("{}/v1/chat/completions", b.url),
    ];

    let served = Arc::new([AtomicUsize::new(0), AtomicUsize::new(0)]);
    let refused = Arc::new(AtomicUsize::new(0));
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..40)
        .map(|_| {
            let (urls, served, refused, next) =
                (urls.clone(), served.clone(), refused.clone(), next.clone());
            tokio::spawn(async move {
                let client = client();
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    if i >= 200 {
                        return;
                    }
                    let req = json_request(Method::POST, &urls[i % 2], &chat("glm-4")).unwrap();
                    let res = tokio::time::timeout(Duration::from_secs(30), client.request(req))
                        .await
                        .expect("an answer within 30 s")
                        .expect("the replica answers");
                    match res.status() {
                        StatusCode::OK => served[i % 2].fetch_add(1, Ordering::SeqCst),
                        StatusCode::SERVICE_UNAVAILABLE => {
                            assert!(res.headers().contains_key("retry-after"));
                            refused.fetch_add(1, Ordering::SeqCst)
                        }
                        other => panic!("replica {} answered {other}", i % 2),
                    };
                }
            })
        })
        .collect();
    for w in workers {
        w.await.unwrap();
    }
    let took = started.elapsed();
    let hits = glm_api.hits();
    let (a_served, b_served) = (
        served[0].load(Ordering::SeqCst),
        served[1].load(Ordering::SeqCst),
    );
    println!(
        "200 requests in {took:?}: replica a served {a_served}, b {b_served}, {} refused; GLM saw {} served, {} × 1302",
        refused.load(Ordering::SeqCst),
        hits.served(),
        hits.rate_limited()
    );
    assert_eq!(hits.rate_limited(), 0, "no 1302 reached the replicas");
    assert_eq!(a_served + b_served + refused.load(Ordering::SeqCst), 200);
    assert_eq!(a_served + b_served, 200, "every request served");
    assert_eq!(hits.served(), a_served + b_served);
    assert!(a_served > 0 && b_served > 0, "both replicas served");
    drop((a, b));
}

/// The control: the same two replicas without Redis each keep their own 10 per 2.2 s,
/// so together they send more than the simulator admits, and it answers 1302 (which
/// the replicas pass on as it came).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_without_redis_overrun_the_limit() {
    let glm_api = GlmApi::new().limit(10).window(Duration::from_secs(2));
    let server = MockServer::start(glm_api.router()).await.unwrap();
    let config = TempFile::new(
        "alone.toml",
        &format!(
            "[backends.glm]\nkind = \"glm\"\nbase_url = \"{}\"\nwindow = {{ n = 10, per = \"2200ms\" }}\n[models.glm-4]\nprimary = [\"glm\"]\n[routing]\nmax_wait = \"0s\"\n",
            server.url(glm::PATH.trim_end_matches("/chat/completions")),
        ),
    );
    let a = Proc::start(&["--config", config.path(), "--listen", "127.0.0.1:0"], &[]);
    let b = Proc::start(&["--config", config.path(), "--listen", "127.0.0.1:0"], &[]);
    let mut limited = 0;
    for i in 0..20 {
        let url = format!(
            "{}/v1/chat/completions",
            if i % 2 == 0 { &a.url } else { &b.url }
        );
        let res = tokio::time::timeout(
            Duration::from_secs(10),
            client().request(json_request(Method::POST, &url, &chat("glm-4")).unwrap()),
        )
        .await
        .unwrap()
        .unwrap();
        if res.status() == StatusCode::TOO_MANY_REQUESTS {
            let body = body_json(res.into_body()).await.unwrap();
            assert_eq!(body["error"]["code"], "1302");
            limited += 1;
        }
    }
    assert!(glm_api.hits().rate_limited() > 0 && limited > 0);
}
