//! The main job: the incidents behind ratewise, replayed against mock upstreams on
//! 127.0.0.1, with real sockets, and a report of what reached each upstream and what
//! each caller got.
//!
//! 1. QQ Bot: a reconnect storm on `GET /gateway` (400 "接口调用超过频率限制").
//! 2. DingTalk: AI cards at the tenant's real cap, 20 per second and 800 ms per card
//!    (403 QpsLimit).
//! 3. Telegram: one message per second per chat, keyed by the body's `chat_id` (no 429),
//!    and a 4310 s ban.
//! 4. GLM: a burst over the account's limit (429 code 1302).
//! 5. LLM pool: a primary/fallback `Pool` failing over from a GLM primary (1302) to an
//!    OpenAI-compatible fallback, and answering at once when every backend cools (the
//!    gateway over HTTP, with SSE, is `ratewise-proxy`'s and `tests/llm_gateway.rs`').
//!
//! Every number printed is read from the mocks' recorders or the layers' counters. The
//! process exits non-zero if an expectation fails, so the demo is also a smoke test.
//! It takes about 20 s; nothing leaves the machine.
//!
//! ```sh
//! cargo run --example demo --features testing
//! ```

// Each scenario file is also an example of its own, so each one brings its own copy of
// `support/mod.rs`.
#![allow(clippy::duplicate_mod)]

#[path = "dingtalk_cards.rs"]
mod dingtalk_cards;
#[path = "llm_gateway.rs"]
mod llm_gateway;
#[path = "qq_gateway.rs"]
mod qq_gateway;
#[path = "telegram.rs"]
mod telegram;

use std::process::ExitCode;
use std::time::Instant;

/// One line of the summary table.
struct Row {
    name: &'static str,
    upstream: String,
    callers: String,
    checks: usize,
    failed: Vec<String>,
}

/// Runs one scenario function (a module's `run()`, or `llm_gateway::run_pool()`) and
/// keeps what the summary needs (each module has its own copy of the `support` types,
/// hence a macro rather than a function).
macro_rules! scenario {
    ($name:literal, $run:path) => {
        match $run().await {
            Ok(r) => Row {
                name: r.name,
                failed: r.failures().into_iter().map(String::from).collect(),
                checks: r.checks.len(),
                upstream: r.upstream,
                callers: r.callers,
            },
            Err(err) => Row {
                name: $name,
                upstream: String::new(),
                callers: String::new(),
                checks: 1,
                failed: vec![format!("the scenario could not run: {err}")],
            },
        }
    };
}

#[tokio::main]
async fn main() -> ExitCode {
    let started = Instant::now();
    println!("ratewise demo: five rate-limit scenarios against mock upstreams on 127.0.0.1");
    println!();
    let mut rows = Vec::new();
    rows.push(scenario!("QQ gateway", qq_gateway::run));
    println!();
    rows.push(scenario!("DingTalk cards", dingtalk_cards::run));
    println!();
    rows.push(scenario!("Telegram", telegram::run));
    println!();
    rows.push(scenario!("GLM gateway", llm_gateway::run));
    println!();
    rows.push(scenario!("LLM pool", llm_gateway::run_pool));

    println!();
    println!(
        "== summary ({:.1} s; every number read from the mocks and the layers' counters)",
        started.elapsed().as_secs_f64()
    );
    println!(
        "{:<15} {:>6}  reached the upstream / what the callers got",
        "scenario", "checks"
    );
    let mut failed = Vec::new();
    for row in &rows {
        let passed = row.checks - row.failed.len();
        println!(
            "{:<15} {:>6}  {}",
            row.name,
            format!("{passed}/{}", row.checks),
            row.upstream
        );
        println!("{:<15} {:>6}  {}", "", "", row.callers);
        failed.extend(row.failed.iter().map(|f| format!("{}: {f}", row.name)));
    }
    if failed.is_empty() {
        println!("all expectations held");
        ExitCode::SUCCESS
    } else {
        println!("{} expectation(s) FAILED:", failed.len());
        for f in &failed {
            println!("  - {f}");
        }
        ExitCode::FAILURE
    }
}
