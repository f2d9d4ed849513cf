//! Errors of the pool: [`AllBackendsCooling`], [`NoBackendReady`] and [`NoRoute`] at
//! request time, [`ConfigError`] from the builder.
//!
//! None of the request-time errors is ever returned once a backend has been called
//! during the call: from then on the caller gets that backend's answer (see the
//! [module docs](super#what-the-caller-gets)).

use std::{error::Error, fmt, time::Duration};

use crate::{classify::Verdict, key::Key};

/// Why a candidate backend was passed over.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unavailable {
    /// The backend is cooling down after a rate-limited answer.
    Cooling {
        /// How long its cooldown still runs.
        remaining: Duration,
    },
    /// The backend's cooldown is over and its single probe request is in flight; no
    /// other request may go until the probe is answered.
    Probing,
    /// The backend has no capacity now: its `poll_ready` was `Pending` (a rate limiter
    /// out of tokens, a concurrency limit reached).
    Busy,
}

impl fmt::Display for Unavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Unavailable::Cooling { remaining } => {
                write!(f, "cooling {:.3} s", remaining.as_secs_f64())
            }
            Unavailable::Probing => f.write_str("half-open, probe in flight"),
            Unavailable::Busy => f.write_str("no capacity"),
        }
    }
}

/// One candidate backend and why it could not take the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    name: Key,
    why: Unavailable,
}

impl Candidate {
    pub(crate) fn new(name: Key, why: Unavailable) -> Self {
        Candidate { name, why }
    }

    /// The backend's name.
    pub fn name(&self) -> &Key {
        &self.name
    }

    /// Why it was passed over.
    pub fn why(&self) -> Unavailable {
        self.why
    }
}

struct CandidateList<'a>(&'a [Candidate]);

impl fmt::Display for CandidateList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, c) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "`{}` {}", c.name, c.why)?;
        }
        Ok(())
    }
}

/// No backend was called: every candidate was cooling (or otherwise unavailable) and
/// the earliest cooldown ends later than the pool's `max_wait` allows.
///
/// Returned at once, without sleeping, when every candidate is cooling and the
/// earliest recovery lies past the call's deadline (its arrival plus `max_wait`); or
/// at the deadline, when the pool waited for candidates without capacity and at least
/// one candidate was cooling. [`verdict_of_error`](crate::classify::verdict_of_error)
/// reads it as rate-limited with [`retry_after`](Self::retry_after) as the hint.
///
/// This is the pool's own refusal, never an upstream's answer: when a backend answered
/// 429 and no other candidate could be reached, the caller gets that 429 response
/// itself, not this error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllBackendsCooling {
    retry_after: Duration,
    max_wait: Duration,
    candidates: Vec<Candidate>,
}

impl AllBackendsCooling {
    pub(crate) fn new(
        retry_after: Duration,
        max_wait: Duration,
        candidates: Vec<Candidate>,
    ) -> Self {
        AllBackendsCooling {
            retry_after,
            max_wait,
            candidates,
        }
    }

    /// How long until the first candidate's cooldown ends.
    pub fn retry_after(&self) -> Duration {
        self.retry_after
    }

    /// The pool's `max_wait`.
    pub fn max_wait(&self) -> Duration {
        self.max_wait
    }

    /// Every candidate of the request, in priority order, and why it was passed over.
    pub fn candidates(&self) -> &[Candidate] {
        &self.candidates
    }
}

impl fmt::Display for AllBackendsCooling {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "all backends are cooling down: the first recovers in {:.3} s, more than max_wait {:.3} s allows (candidates: {})",
            self.retry_after.as_secs_f64(),
            self.max_wait.as_secs_f64(),
            CandidateList(&self.candidates)
        )
    }
}

impl Error for AllBackendsCooling {}

/// No backend was called: for the whole `max_wait`, no candidate had capacity (their
/// `poll_ready` stayed `Pending`) or could be probed, and none was cooling.
///
/// [`verdict_of_error`](crate::classify::verdict_of_error) reads it as rate-limited,
/// without a hint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoBackendReady {
    waited: Duration,
    candidates: Vec<Candidate>,
}

impl NoBackendReady {
    pub(crate) fn new(waited: Duration, candidates: Vec<Candidate>) -> Self {
        NoBackendReady { waited, candidates }
    }

    /// How long the call waited.
    pub fn waited(&self) -> Duration {
        self.waited
    }

    /// Every candidate of the request, in priority order, and why it was passed over.
    pub fn candidates(&self) -> &[Candidate] {
        &self.candidates
    }
}

impl fmt::Display for NoBackendReady {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "no backend had capacity within {:.3} s (candidates: {})",
            self.waited.as_secs_f64(),
            CandidateList(&self.candidates)
        )
    }
}

impl Error for NoBackendReady {}

/// The route chose no backend for the request: the default route is empty, or the
/// route closure named no backend the pool knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoRoute {
    model: Option<Key>,
}

impl NoRoute {
    pub(crate) fn new(model: Option<Key>) -> Self {
        NoRoute { model }
    }

    /// The route key (the model) the table was asked about, when the pool routes by
    /// table.
    pub fn model(&self) -> Option<&Key> {
        self.model.as_ref()
    }
}

impl fmt::Display for NoRoute {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.model {
            Some(m) if m.as_str().is_empty() => {
                f.write_str("no backend is routed for requests without a model")
            }
            Some(m) => write!(f, "no backend is routed for model `{m}`"),
            None => f.write_str("the route named no backend of the pool for this request"),
        }
    }
}

impl Error for NoRoute {}

/// The verdict of one of the pool's own errors, for
/// [`verdict_of_error`](crate::classify::verdict_of_error): [`AllBackendsCooling`] is
/// rate-limited with its wait, [`NoBackendReady`] rate-limited without a hint, and
/// [`NoRoute`] a failure (sending it again cannot help).
pub(crate) fn verdict(err: &(dyn Error + 'static)) -> Option<Verdict> {
    if let Some(e) = err.downcast_ref::<AllBackendsCooling>() {
        return Some(Verdict::rate_limited(Some(e.retry_after)));
    }
    if err.is::<NoBackendReady>() {
        return Some(Verdict::rate_limited(None));
    }
    if err.is::<NoRoute>() {
        return Some(Verdict::Failure);
    }
    None
}

/// A pool configuration the builder refused, naming the field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    field: &'static str,
    reason: String,
}

impl ConfigError {
    pub(crate) fn new(field: &'static str, reason: impl Into<String>) -> Self {
        ConfigError {
            field,
            reason: reason.into(),
        }
    }

    /// The builder field at fault: `"backends"`, `"name"`, `"route"`, `"route_fn"`,
    /// `"default_route"` or `"cooldown"`.
    pub fn field(&self) -> &'static str {
        self.field
    }

    /// Why the value was refused.
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid pool configuration: `{}` {}",
            self.field, self.reason
        )
    }
}

impl Error for ConfigError {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{classify::verdict_of_error, BoxError};

    fn cands() -> Vec<Candidate> {
        vec![
            Candidate::new(
                Key::from("glm"),
                Unavailable::Cooling {
                    remaining: Duration::from_millis(700),
                },
            ),
            Candidate::new(Key::from("openai"), Unavailable::Busy),
        ]
    }

    #[test]
    fn all_cooling_display_names_wait_and_candidates() {
        let e = AllBackendsCooling::new(
            Duration::from_millis(700),
            Duration::from_millis(500),
            cands(),
        );
        let s = e.to_string();
        assert!(s.contains("0.700 s"), "{s}");
        assert!(s.contains("max_wait 0.500 s"), "{s}");
        assert!(s.contains("`glm` cooling 0.700 s"), "{s}");
        assert!(s.contains("`openai` no capacity"), "{s}");
    }

    #[test]
    fn verdicts_of_pool_errors() {
        let e: BoxError = Box::new(AllBackendsCooling::new(
            Duration::from_secs(3),
            Duration::ZERO,
            cands(),
        ));
        assert_eq!(
            verdict_of_error(&*e),
            Verdict::rate_limited(Some(Duration::from_secs(3)))
        );
        let e: BoxError = Box::new(NoBackendReady::new(Duration::from_secs(1), cands()));
        assert_eq!(verdict_of_error(&*e), Verdict::rate_limited(None));
        assert!(e.to_string().contains("1.000 s"), "{e}");
        let e: BoxError = Box::new(NoRoute::new(Some(Key::from("gpt-9"))));
        assert_eq!(verdict_of_error(&*e), Verdict::Failure);
        assert_eq!(e.to_string(), "no backend is routed for model `gpt-9`");
    }

    #[test]
    fn config_error_names_field() {
        let e = ConfigError::new("name", "`glm` is used twice");
        assert_eq!(e.field(), "name");
        assert_eq!(
            e.to_string(),
            "invalid pool configuration: `name` `glm` is used twice"
        );
    }
}
