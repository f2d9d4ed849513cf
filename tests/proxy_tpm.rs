//! Tokens per minute through `ratewise::proxy`, over real sockets on 127.0.0.1: an
//! OpenAI-like simulator enforcing a token budget, and a run of calls whose `usage` sums
//! to three times it. The proxy paces them (0 upstream 429s, every client answer 200)
//! and the tokens it reconciled from the answers (`/stats`) are the simulator's count,
//! for JSON answers and for streams (asked for their usage by the proxy).
//!
//! The budget's window is 2 s, not a minute, so the run takes seconds. The proxy counts
//! it over 2.2 s: a margin for the time a call takes from the proxy to the simulator,
//! which both count from (as an operator keeps a margin under an account's limit).

#![cfg(all(feature = "proxy", feature = "testing"))]

use std::{future::Future, time::Duration};

use bytes::Bytes;
use http::{Method, StatusCode};
use ratewise::{
    proxy::{Proxy, ProxyConfig},
    testing::{
        self, body_bytes, client, empty_request, json_request, MockServer, OpenAiApi, Outcome,
    },
};
use serde_json::{json, Value};
use tokio::{net::TcpListener, sync::oneshot, task::JoinSet};

/// Every network step of a test is bounded by this.
const LIMIT: Duration = Duration::from_secs(10);
/// The simulator's budget: 300 tokens in any 2 s.
const BUDGET: u64 = 300;
const WINDOW: Duration = Duration::from_secs(2);
/// Calls of 100 tokens each: 900 tokens, three times the budget.
const CALLS: usize = 9;

async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(LIMIT, fut)
        .await
        .unwrap_or_else(|_| panic!("{what} took over {LIMIT:?}"))
}

/// An OpenAI-like simulator with 300 tokens per 2 s (and room for any number of
/// requests), whose reply is 200 characters in 5 words: 50 completion tokens.
fn simulator() -> OpenAiApi {
    let reply = vec!["x".repeat(39); 5].join(" ") + " ";
    assert_eq!(reply.chars().count(), 200);
    OpenAiApi::new()
        .limit(10_000)
        .tpm(BUDGET as u32)
        .tpm_window(WINDOW)
        .reply(reply)
        .stream_gap(Duration::from_millis(20))
}

/// The proxy over `server`, its backend limited to 300 tokens per 2.2 s; a call may wait
/// 8 s for room. Returns its URL and the sender that stops it.
async fn proxy(server: &MockServer) -> (String, oneshot::Sender<()>) {
    let base = server.url(testing::openai::PATH.trim_end_matches("/chat/completions"));
    let toml = format!(
        r#"
        [backends.openai]
        kind = "openai"
        base_url = "{base}"
        tpm = {BUDGET}
        tpm_window = "2200ms"

        [models.gpt-mock]
        primary = ["openai"]

        [routing]
        max_wait = "8s"
        "#
    );
    let config = ProxyConfig::from_toml(&toml).expect("valid config");
    let proxy = Proxy::from_config(config).expect("valid proxy");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(proxy.serve(listener, async move {
        let _ = stopped.await;
    }));
    (url, stop)
}

/// A chat call of 200 characters of prompt (50 tokens) allowing 50 more: the proxy
/// estimates 100, and the simulator's usage is 100 (50 + its reply's 50).
fn chat(stream: bool) -> Value {
    json!({
        "model": "gpt-mock",
        "messages": [{"role": "user", "content": "y".repeat(200)}],
        "max_tokens": 50,
        "stream": stream,
    })
}

/// Sends the run at once through the proxy: each client answer's status and body.
async fn run(url: &str, stream: bool) -> Vec<(StatusCode, Bytes)> {
    let mut calls = JoinSet::new();
    for _ in 0..CALLS {
        let url = format!("{url}/v1/chat/completions");
        calls.spawn(async move {
            let req = json_request(Method::POST, &url, &chat(stream)).expect("request");
            let res = within("a proxy call", client().request(req))
                .await
                .expect("the proxy answers");
            let status = res.status();
            let body = within("a proxy answer", body_bytes(res.into_body()))
                .await
                .expect("a whole body");
            (status, body)
        });
    }
    let mut answers = Vec::new();
    while let Some(answer) = calls.join_next().await {
        answers.push(answer.expect("no panic"));
    }
    answers
}

/// The proxy's `/stats` entry for the backend once it has reported every call (a
/// backend's call is reported when its answer's body is done, just after the client
/// read its end).
async fn backend_stats(url: &str) -> Value {
    within("the stats of every call", async {
        loop {
            let req =
                empty_request(Method::GET, &format!("{url}/stats?window=15m")).expect("request");
            let res = client().request(req).await.expect("the proxy answers");
            let body = body_bytes(res.into_body()).await.expect("a whole body");
            let stats: Value = serde_json::from_slice(&body).expect("JSON stats");
            let backend = stats["backends"][0].clone();
            if backend["ok"] == json!(CALLS) {
                return backend;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}

/// What every run must show: all answered 200 by the simulator, none refused upstream,
/// the simulator's tokens three times its budget and paced over three windows, and the
/// proxy's reconciled count the simulator's.
async fn check(api: &OpenAiApi, url: &str, answers: &[(StatusCode, Bytes)]) {
    assert_eq!(answers.len(), CALLS);
    for (status, body) in answers {
        assert_eq!(*status, StatusCode::OK, "{}", String::from_utf8_lossy(body));
    }
    let hits = api.hits();
    assert_eq!(hits.count_of(Outcome::RateLimited), 0, "no upstream 429");
    assert_eq!(hits.served(), CALLS);
    assert_eq!(api.tokens_served(), 3 * BUDGET, "three times the budget");

    // Paced: three calls fit a window, so the fourth and the seventh reached the
    // simulator a window after the first and the fourth.
    let mut times = hits.times_of(Outcome::Served);
    times.sort();
    assert!(times[3] - times[0] >= WINDOW, "{times:?}");
    assert!(times[6] - times[3] >= WINDOW, "{times:?}");

    let stats = backend_stats(url).await;
    assert_eq!(stats["rate_limited"], json!(0));
    assert_eq!(
        stats["tokens"],
        json!(api.tokens_served()),
        "the proxy's reconciled count is the simulator's"
    );
}

/// The Done-when of TPM, JSON answers: a run of three times the budget is paced, with
/// no upstream 429, and the proxy reconciled the simulator's count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_of_three_times_the_budget_is_paced_without_a_429() {
    let api = simulator();
    let server = MockServer::start(api.router()).await.expect("simulator");
    let (url, stop) = proxy(&server).await;

    let answers = run(&url, false).await;
    for (_, body) in &answers {
        let body: Value = serde_json::from_slice(body).expect("JSON answer");
        assert_eq!(body["usage"]["total_tokens"], json!(100));
    }
    check(&api, &url, &answers).await;
    let _ = stop.send(());
}

/// The same run streamed: the proxy asks each stream for its usage (the client did
/// not), reconciles it from the last chunk, and the client gets that chunk too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_run_is_paced_and_reconciled_from_the_last_chunks() {
    let api = simulator();
    let server = MockServer::start(api.router()).await.expect("simulator");
    let (url, stop) = proxy(&server).await;

    let answers = run(&url, true).await;
    for (_, body) in &answers {
        let text = String::from_utf8_lossy(body);
        assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
        let usage_chunk = text
            .split("\n\n")
            .filter_map(|event| event.strip_prefix("data: "))
            .filter_map(|data| serde_json::from_str::<Value>(data).ok())
            .find(|chunk| chunk["usage"].is_object())
            .expect("a chunk with the usage the proxy asked for");
        assert_eq!(usage_chunk["usage"]["total_tokens"], json!(100));
    }
    check(&api, &url, &answers).await;
    let _ = stop.send(());
}

/// `tpm_window` without `tpm`, or a zero `tpm`, stops the proxy at start-up, naming
/// the field.
#[test]
fn a_token_window_without_a_budget_is_refused() {
    let config = |limits: &str| {
        ProxyConfig::from_toml(&format!(
            "[backends.openai]\nkind = \"openai\"\nbase_url = \"http://127.0.0.1:9/v1\"\n{limits}\n\
             [models.gpt-mock]\nprimary = [\"openai\"]\n"
        ))
        .expect("parses")
    };
    let err = Proxy::from_config(config("tpm_window = \"2s\"")).unwrap_err();
    assert!(
        err.to_string().contains("backends.openai.tpm_window"),
        "{err}"
    );
    let err = Proxy::from_config(config("tpm = 0")).unwrap_err();
    assert!(err.to_string().contains("backends.openai.tpm`"), "{err}");
    let err = Proxy::from_config(config("tpm = 300\ntpm_window = \"0s\"")).unwrap_err();
    assert!(
        err.to_string().contains("backends.openai.tpm_window"),
        "{err}"
    );
    assert!(Proxy::from_config(config("tpm = 300\ntpm_window = \"2s\"")).is_ok());
}
