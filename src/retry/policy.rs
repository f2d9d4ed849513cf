//! The [`tower::retry::Policy`] that decides, per result, whether and when to retry.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use tokio::time::{Instant, Sleep};
use tower::retry::budget::Budget;
use tower::retry::Policy;

use super::body::{try_clone_request, TryCloneBody};
use super::schedule::{Jitter, Schedule};
use super::stats::{Counters, GiveUp, RetryStats};
use crate::redact::Redacted;
use crate::vocabulary::{
    verdict_of, verdict_of_error, CallContext, LayerId, Refusal, RefusalKind, Verdict,
};
use crate::BoxError;

/// Validated configuration, shared by every clone.
#[derive(Debug)]
pub(crate) struct Config {
    pub(crate) parse_json_body: bool,
    pub(crate) max_attempts: u32,
    pub(crate) max_delay: Duration,
    pub(crate) deadline: Option<Duration>,
    pub(crate) schedule: Schedule,
    pub(crate) jitter: Jitter,
}

/// What every clone of one layer shares: configuration, counters, budget.
pub(crate) struct Shared {
    /// Stamped on the [`CallContext`] this layer sets, so its policy reads only its own.
    pub(crate) id: LayerId,
    pub(crate) config: Config,
    pub(crate) stats: Counters,
    pub(crate) budget: Option<Arc<dyn Budget + Send + Sync>>,
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared")
            .field("config", &self.config)
            .field("stats", &self.stats)
            .field("budget", &self.budget.as_ref().map(|_| "Budget"))
            .finish()
    }
}

/// The number of the attempt a request is sent as (1 when absent), set by the policy on
/// the copy it sends again and read by the service for its `attempt` span.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Attempt(pub(crate) u32);

/// The shortest wait before a held request is sent again.
const MIN_HELD_WAIT: Duration = Duration::from_millis(1);

/// Where a result came from, for the retry's count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Local {
    /// The upstream's answer, or a connection error: an attempt.
    Upstream,
    /// A layer below held the request back (a cooldown, a pool): nothing was sent.
    Held,
    /// A layer below refused because the wait exceeds the caller's `max_wait`.
    OverBudget,
}

/// Per-call state. tower's `Retry` clones the policy for every call (its
/// `Service::call` runs `clone_request` on the service's policy, then clones the whole
/// service into the response future), so this state belongs to one call.
#[derive(Debug, Clone, Copy, Default)]
struct CallState {
    /// When the call started (the first attempt was sent).
    start: Option<Instant>,
    /// When the call's total deadline falls, as this layer's [`CallContext`] set it; without one
    /// (the policy used outside its layer) it is counted from `start`.
    end: Option<Instant>,
    /// The number of the attempt whose result is awaited (1 for the first).
    attempt: u32,
    /// `retry` returned a wait; the next `clone_request` belongs to this call.
    retry_pending: bool,
}

/// The retry policy built by [`RetryLayer`](super::RetryLayer): retries rate-limited
/// and transient results, as the server asks or on a schedule, within attempts, a total
/// deadline and an optional budget.
///
/// It implements [`tower::retry::Policy`] for `http::Request<B>` with
/// `B:` [`TryCloneBody`] and `Result<http::Response<_>, BoxError>`, so it can also be
/// given to `tower::retry::Retry::new` directly, over a service whose errors are boxed
/// (`ServiceExt::map_err(Into::into)`). Clones share the
/// configuration, the [`RetryStats`] and the budget; each call's attempt count and
/// start time live in the clone tower makes for that call.
#[derive(Clone)]
pub struct RetryPolicy {
    shared: Arc<Shared>,
    call: CallState,
}

impl fmt::Debug for RetryPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryPolicy")
            .field("config", &self.shared.config)
            .field("attempt", &self.call.attempt)
            .field("start", &self.call.start)
            .field("end", &self.call.end)
            .finish()
    }
}

/// What came back from an attempt, for tracing.
enum Outcome<'a> {
    Status(http::StatusCode),
    Error(&'a (dyn std::error::Error + 'static)),
}

impl fmt::Display for Outcome<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Status(s) => write!(f, "status {}", s.as_u16()),
            Outcome::Error(e) => write!(f, "error: {}", Redacted(e)),
        }
    }
}

impl RetryPolicy {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        RetryPolicy {
            shared,
            call: CallState::default(),
        }
    }

    /// The counters this policy writes.
    pub fn stats(&self) -> RetryStats {
        self.shared.stats.snapshot()
    }

    fn start_call<B>(&mut self, req: &Request<B>) {
        let end = CallContext::get(req.extensions())
            .filter(|c| c.set_by() == self.shared.id)
            .map(CallContext::deadline);
        self.call = CallState {
            start: Some(Instant::now()),
            end,
            attempt: 1,
            retry_pending: false,
        };
        self.shared.stats.record_call();
        if let Some(budget) = &self.shared.budget {
            budget.deposit();
        }
    }

    fn give_up(&self, reason: GiveUp, verdict: Verdict, outcome: &Outcome<'_>) -> Option<Sleep> {
        self.shared.stats.record_give_up(reason);
        tracing::info!(
            reason = reason.as_str(),
            attempt = self.call.attempt,
            verdict = ?verdict,
            server_wait = ?verdict.retry_after(),
            outcome = %outcome,
            "retry: giving up, returning the last result",
        );
        None
    }

    fn decide(&mut self, verdict: Verdict, outcome: Outcome<'_>, local: Local) -> Option<Sleep> {
        if !verdict.is_retryable() {
            return None;
        }
        if local == Local::OverBudget {
            return self.give_up(GiveUp::MaxWait, verdict, &outcome);
        }
        let now = Instant::now();
        let start = *self.call.start.get_or_insert(now);
        let attempt = self.call.attempt.max(1);
        let config = &self.shared.config;
        // A request a layer below held back never reached the upstream: within a
        // deadline it is sent again without counting an attempt (`max_attempts` counts
        // what the upstream was asked). Without a deadline it counts, so that nothing
        // can wait forever.
        // The call's end: its context's (the layer's deadline, or the request's own
        // budget), else counted from its start when the policy runs outside its layer.
        let end = self
            .call
            .end
            .or_else(|| config.deadline.and_then(|d| start.checked_add(d)));
        let bounded = end.is_some();
        let held = local == Local::Held && bounded;
        if !held && attempt >= config.max_attempts {
            return self.give_up(GiveUp::Attempts, verdict, &outcome);
        }
        let delay = match verdict.retry_after() {
            Some(wait) if wait > config.max_delay => {
                return self.give_up(GiveUp::MaxDelay, verdict, &outcome);
            }
            // A held request whose holder gave no wait (a probe in flight) waits the
            // schedule's first delay rather than spinning.
            Some(wait) if held && wait.is_zero() => config.schedule.delay(1, config.jitter),
            Some(wait) => wait,
            None => config.schedule.delay(attempt, config.jitter),
        };
        // Never spin on a layer that keeps holding the request back.
        let delay = if held {
            delay.max(MIN_HELD_WAIT)
        } else {
            delay
        };
        // An attempt starting at the deadline would have no time left: not taken. A
        // deadline too far off to represent does not bound anything.
        if let Some(end) = end {
            if now.checked_add(delay).is_none_or(|resume| resume >= end) {
                return self.give_up(GiveUp::Deadline, verdict, &outcome);
            }
        }
        if held {
            self.call.retry_pending = true;
            self.shared.stats.record_held();
            tracing::debug!(
                attempt,
                delay = ?delay,
                outcome = %outcome,
                "retry: a layer below held the request back; sending it again, not counted as an attempt",
            );
            return Some(tokio::time::sleep(delay));
        }
        if let Some(budget) = &self.shared.budget {
            if !budget.withdraw() {
                return self.give_up(GiveUp::Budget, verdict, &outcome);
            }
        }
        self.call.attempt = attempt + 1;
        self.call.retry_pending = true;
        self.shared.stats.record_retry();
        tracing::debug!(
            attempt,
            next_attempt = attempt + 1,
            delay = ?delay,
            verdict = ?verdict,
            outcome = %outcome,
            "retry: retrying after a retryable result",
        );
        Some(tokio::time::sleep(delay))
    }
}

impl<B, ResB> Policy<Request<B>, Response<ResB>, BoxError> for RetryPolicy
where
    B: TryCloneBody,
{
    type Future = Sleep;

    fn retry(
        &mut self,
        req: &mut Request<B>,
        result: &mut Result<Response<ResB>, BoxError>,
    ) -> Option<Self::Future> {
        let wait = match result {
            Ok(response) => {
                let verdict = verdict_of(response);
                self.decide(verdict, Outcome::Status(response.status()), Local::Upstream)
            }
            Err(err) => {
                let local = match Refusal::find(&**err) {
                    Some(r) if matches!(r.kind(), RefusalKind::MaxWait { .. }) => Local::OverBudget,
                    Some(r) if !r.reached_upstream() => Local::Held,
                    _ => Local::Upstream,
                };
                self.decide(verdict_of_error(&**err), Outcome::Error(&**err), local)
            }
        };
        if wait.is_some() {
            // The number the request is sent again as: its `attempt` span's `n`.
            req.extensions_mut().insert(Attempt(self.call.attempt));
        }
        wait
    }

    fn clone_request(&mut self, req: &Request<B>) -> Option<Request<B>> {
        let new_call = !self.call.retry_pending;
        if new_call {
            self.start_call(req);
        } else {
            self.call.retry_pending = false;
        }
        let copy = try_clone_request(req);
        if copy.is_none() && new_call {
            self.shared.stats.record_not_cloneable();
            tracing::debug!(
                method = %req.method(),
                "retry: request body cannot be cloned, sending it once without retry",
            );
        }
        copy
    }
}
