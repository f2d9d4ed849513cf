//! Shared by the examples: the expectations each scenario checks, a time bound for
//! every traffic loop, and report printing. Nothing here talks to the network.

// Each example uses a different part of this module.
#![allow(dead_code)]

use std::fmt::Write as _;
use std::future::Future;
use std::process::ExitCode;
use std::time::Duration;

use ratewise::testing::{Hit, Hits, Outcome};
use ratewise::BoxError;

/// What one scenario did: one line for the demo's summary table, and every expectation
/// it checked against what the mocks recorded.
#[derive(Debug)]
pub struct Report {
    /// The scenario's name.
    pub name: &'static str,
    /// What reached the upstream, in a few words.
    pub upstream: String,
    /// What the callers got, in a few words.
    pub callers: String,
    /// Each expectation and whether it held.
    pub checks: Vec<(String, bool)>,
}

impl Report {
    /// An empty report.
    pub fn new(name: &'static str) -> Self {
        Report {
            name,
            upstream: String::new(),
            callers: String::new(),
            checks: Vec::new(),
        }
    }

    /// Records an expectation and prints whether it held.
    pub fn check(&mut self, held: bool, what: impl Into<String>) {
        let what = what.into();
        println!("  [{}] {what}", if held { " ok " } else { "FAIL" });
        self.checks.push((what, held));
    }

    /// The expectations that did not hold.
    pub fn failures(&self) -> Vec<&str> {
        self.checks
            .iter()
            .filter(|(_, held)| !held)
            .map(|(what, _)| what.as_str())
            .collect()
    }
}

/// Runs `fut`, or fails once `limit` has passed: every traffic loop of the examples is
/// bounded in time as well as in count.
pub async fn bounded<T>(
    what: &str,
    limit: Duration,
    fut: impl Future<Output = T>,
) -> Result<T, BoxError> {
    tokio::time::timeout(limit, fut)
        .await
        .map_err(|_| format!("{what}: still running after {limit:?}; gave up").into())
}

/// `1.234 s`.
pub fn secs(d: Duration) -> String {
    format!("{:.3} s", d.as_secs_f64())
}

/// A mock's log: when each request arrived (since the mock started), what it was and
/// what it got. A run of requests with the same answer is one line.
pub fn print_hits(hits: &Hits) {
    let all = hits.all();
    let mut i = 0;
    while i < all.len() {
        let Hit {
            at,
            method,
            path,
            status,
            outcome,
            ..
        } = &all[i];
        let run = all[i..]
            .iter()
            .take_while(|h| h.status == *status && h.path == *path && h.method == *method)
            .count();
        // The log is in the order the answers were recorded; arrival times within a run
        // of concurrent requests can be out of order.
        let times = all[i..i + run].iter().map(|h| h.at);
        let (first, last) = (
            secs(times.clone().min().unwrap_or(*at)),
            secs(times.max().unwrap_or(*at)),
        );
        let when = if first == last {
            format!("+{first}")
        } else {
            format!("+{first} .. +{last}")
        };
        let note = match outcome {
            Outcome::RateLimited => "  <- over the limit",
            _ => "",
        };
        println!("    {when:<24} {run:>3} × {method} {path}  {status}{note}");
        i += run;
    }
}

/// `12 calls: 10 served, 2 over the limit`, from a mock's log.
pub fn hits_summary(hits: &Hits) -> String {
    let mut s = format!("{} calls: {} served", hits.count(), hits.served());
    let limited = hits.rate_limited();
    if limited > 0 {
        let _ = write!(s, ", {limited} over the limit");
    }
    let other = hits.count() - hits.served() - limited;
    if other > 0 {
        let _ = write!(s, ", {other} refused");
    }
    s
}

/// Prints a standalone example's verdict and turns it into the process exit code.
pub fn finish(result: Result<Report, BoxError>) -> ExitCode {
    match result {
        Ok(report) => {
            let failed = report.failures();
            println!();
            println!("{}: {}", report.name, report.upstream);
            println!("callers: {}", report.callers);
            if failed.is_empty() {
                println!("all {} expectations held", report.checks.len());
                ExitCode::SUCCESS
            } else {
                println!("{} expectation(s) FAILED:", failed.len());
                for what in failed {
                    println!("  - {what}");
                }
                ExitCode::FAILURE
            }
        }
        Err(err) => {
            println!("the scenario could not run: {err}");
            ExitCode::FAILURE
        }
    }
}
