//! [`Refusal`]: the one error a ratewise layer returns when it holds a request back.
//!
//! A new kind of refusal is a variant of [`RefusalKind`], its verdict in
//! [`Refusal::verdict`] and its message in `Display`: all in this file.

use std::{error::Error, fmt, time::Duration};

use tokio::time::Instant;

use super::{LayerId, LayerKind, Verdict};
use crate::key::Key;

/// What kind of refusal: why the layer held the request back.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefusalKind {
    /// Admission would take longer than the rate limiter's `max_wait`.
    MaxWait {
        /// The limiter's `max_wait`, which the wait exceeds.
        max_wait: Duration,
    },
    /// The request costs more cells than the bucket's burst: it can never be admitted.
    CostExceedsBurst {
        /// The request's cost in cells.
        cost: u32,
        /// The bucket's burst.
        burst: u32,
    },
    /// The key is cooling down after a rate-limited answer.
    CoolingDown,
    /// The key is half-open after a cooldown and another request is its probe.
    Probing,
    /// The endpoint is cooling down and nothing is cached for it.
    EndpointLimited,
    /// Every backend of a pool is cooling, past the pool's `max_wait`.
    AllBackendsCooling {
        /// The pool's `max_wait`.
        max_wait: Duration,
    },
    /// No backend of a pool had capacity within its `max_wait`.
    NoBackendReady {
        /// How long the call waited.
        waited: Duration,
    },
    /// The store that shares this layer's state between processes (Redis) is
    /// unreachable, and the layer is set to fail closed: nothing was sent.
    StoreUnavailable,
    /// A pool's route chose no backend.
    NoRoute {
        /// The route key (the model) the table was asked about, when it routes by table.
        model: Option<Key>,
    },
}

/// Why a pool's candidate backend was passed over.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unavailable {
    /// The backend is cooling down after a rate-limited answer.
    Cooling {
        /// How long its cooldown still runs.
        remaining: Duration,
    },
    /// The backend's cooldown is over and its single probe request is in flight.
    Probing,
    /// The backend has no capacity now: its `poll_ready` was `Pending`.
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

/// One candidate backend of a pool and why it could not take the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    name: Key,
    why: Unavailable,
}

impl Candidate {
    /// The backend `name`, passed over for `why`.
    pub fn new(name: Key, why: Unavailable) -> Self {
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

/// A ratewise layer held the request back: nothing was sent upstream for it.
///
/// Every refusal of every layer is this one type, boxed into a
/// [`BoxError`](crate::BoxError): find it with one downcast ([`Refusal::find`]) and
/// read which layer refused ([`layer`](Self::layer)), why ([`kind`](Self::kind)), for
/// which key ([`key`](Self::key), shown redacted), and how long waiting would take
/// ([`retry_after`](Self::retry_after)). [`verdict_of_error`](crate::verdict_of_error)
/// reads it as [`Refusal::verdict`].
#[derive(Debug, Clone)]
pub struct Refusal {
    layer: LayerKind,
    kind: RefusalKind,
    key: Option<Key>,
    retry_after: Option<Duration>,
    at: Instant,
    held_by: Option<LayerId>,
    reached_upstream: bool,
    candidates: Vec<Candidate>,
}

impl Refusal {
    /// A refusal by `layer`, of `kind`, made now.
    pub fn new(layer: LayerKind, kind: RefusalKind) -> Self {
        Refusal {
            layer,
            kind,
            key: None,
            retry_after: None,
            at: Instant::now(),
            held_by: None,
            reached_upstream: false,
            candidates: Vec::new(),
        }
    }

    /// The same refusal, for `key`.
    pub fn with_key(mut self, key: Key) -> Self {
        self.key = Some(key);
        self
    }

    /// The same refusal, with the wait after which the request could go.
    pub fn with_retry_after(mut self, retry_after: Duration) -> Self {
        self.retry_after = Some(retry_after);
        self
    }

    /// The same refusal, made at `at` instead of now.
    pub fn at(mut self, at: Instant) -> Self {
        self.at = at;
        self
    }

    /// The same refusal, listing a pool's candidates.
    pub fn with_candidates(mut self, candidates: Vec<Candidate>) -> Self {
        self.candidates = candidates;
        self
    }

    /// The same refusal, made below the layer `by` by its `Hold`.
    pub(crate) fn with_held_by(mut self, by: LayerId) -> Self {
        self.held_by = Some(by);
        self
    }

    /// The same refusal, marked as having reached (or not) the upstream of the layer
    /// that reads it. A pool marks its backends' refusals so: for the pool, the backend
    /// stack is the upstream, and a backend that refuses is a backend that is limited.
    pub fn with_reached_upstream(mut self, reached: bool) -> Self {
        self.reached_upstream = reached;
        self
    }

    /// The first [`Refusal`] in `err` or its `source()` chain.
    pub fn find<'a>(err: &'a (dyn Error + 'static)) -> Option<&'a Refusal> {
        let mut cur: Option<&'a (dyn Error + 'static)> = Some(err);
        while let Some(e) = cur {
            if let Some(refusal) = e.downcast_ref::<Refusal>() {
                return Some(refusal);
            }
            cur = e.source();
        }
        None
    }

    /// The layer that refused.
    pub fn layer(&self) -> LayerKind {
        self.layer
    }

    /// Why.
    pub fn kind(&self) -> &RefusalKind {
        &self.kind
    }

    /// The key of the request, when the layer is keyed.
    pub fn key(&self) -> Option<&Key> {
        self.key.as_ref()
    }

    /// How long until the request could go: the limiter's wait, the cooldown's
    /// remaining time (zero while a probe is in flight), the pool's first recovery.
    /// `None` when the layer cannot tell (no backend had capacity) or waiting cannot
    /// help (cost above the burst, no route).
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }

    /// The earliest time the request could go (`tokio` time): the refusal's instant
    /// plus [`retry_after`](Self::retry_after).
    pub fn earliest(&self) -> Option<Instant> {
        self.retry_after.and_then(|d| self.at.checked_add(d))
    }

    /// The layer whose `Hold` refused the request below that layer, when a hold did.
    pub(crate) fn held_by(&self) -> Option<LayerId> {
        self.held_by
    }

    /// Whether the request reached the upstream: false for a refusal straight from a
    /// layer (see [`with_reached_upstream`](Self::with_reached_upstream)).
    pub fn reached_upstream(&self) -> bool {
        self.reached_upstream
    }

    /// A pool's candidates, in priority order, and why each was passed over (empty for
    /// other layers).
    pub fn candidates(&self) -> &[Candidate] {
        &self.candidates
    }

    /// Whether the key is half-open with a probe in flight (rather than cooling).
    pub fn is_probing(&self) -> bool {
        self.kind == RefusalKind::Probing
    }

    /// What the refusal means: rate-limited with [`retry_after`](Self::retry_after),
    /// or a failure when waiting can never cure it (a cost above the burst, no route).
    pub fn verdict(&self) -> Verdict {
        match self.kind {
            RefusalKind::CostExceedsBurst { .. }
            | RefusalKind::NoRoute { .. }
            | RefusalKind::StoreUnavailable => Verdict::Failure,
            _ => Verdict::rate_limited(self.retry_after),
        }
    }
}

/// The key as messages show it: redacted, or `*` when the layer had none.
struct KeyText<'a>(Option<&'a Key>);

impl fmt::Display for KeyText<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(key) => fmt::Display::fmt(key, f),
            None => f.write_str("*"),
        }
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

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let key = KeyText(self.key.as_ref());
        let wait = self.retry_after.unwrap_or_default();
        let secs = wait.as_secs_f64();
        match &self.kind {
            RefusalKind::MaxWait { max_wait } => write!(
                f,
                "rate limited: key \"{key}\" needs a wait of {wait:?}, more than max_wait {max_wait:?}"
            ),
            RefusalKind::CostExceedsBurst { cost, burst } => write!(
                f,
                "rate limit: a request for key \"{key}\" costs {cost} cells but the burst is {burst}, so it can never be admitted"
            ),
            RefusalKind::CoolingDown | RefusalKind::Probing if self.held_by.is_some() => {
                write!(
                    f,
                    "key `{key}` began cooling down after a rate-limited answer while this request waited to be sent, so it was not sent: {secs:.3} s remaining"
                )?;
                if self.is_probing() {
                    f.write_str(", then a probe request in flight decides")?;
                }
                Ok(())
            }
            RefusalKind::CoolingDown => write!(
                f,
                "key `{key}` is cooling down after a rate-limited answer: {secs:.3} s remaining"
            ),
            RefusalKind::Probing => write!(
                f,
                "key `{key}` is half-open after a rate-limit cooldown: waiting for the probe request's answer"
            ),
            RefusalKind::EndpointLimited => write!(
                f,
                "endpoint `{key}` is rate-limited and has no cached answer; retry in {wait:?}"
            ),
            RefusalKind::AllBackendsCooling { max_wait } => write!(
                f,
                "all backends are cooling down: the first recovers in {secs:.3} s, more than max_wait {:.3} s allows (candidates: {})",
                max_wait.as_secs_f64(),
                CandidateList(&self.candidates)
            ),
            RefusalKind::NoBackendReady { waited } => write!(
                f,
                "no backend had capacity within {:.3} s (candidates: {})",
                waited.as_secs_f64(),
                CandidateList(&self.candidates)
            ),
            RefusalKind::StoreUnavailable => write!(
                f,
                "the shared store of this {} layer is unreachable and it fails closed: key `{key}` was not sent",
                self.layer.as_str()
            ),
            RefusalKind::NoRoute { model } => match model {
                Some(m) if m.as_str().is_empty() => {
                    f.write_str("no backend is routed for requests without a model")
                }
                Some(m) => write!(f, "no backend is routed for model `{m}`"),
                None => f.write_str("the route named no backend of the pool for this request"),
            },
        }
    }
}

impl Error for Refusal {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{verdict_of_error, BoxError};

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

    #[tokio::test(start_paused = true)]
    async fn max_wait_is_rate_limited_with_its_wait_and_names_key_and_wait() {
        let now = Instant::now();
        let err: BoxError = Box::new(
            Refusal::new(
                LayerKind::RateLimit,
                RefusalKind::MaxWait {
                    max_wait: Duration::from_secs(1),
                },
            )
            .with_key(Key::from("bot1"))
            .with_retry_after(Duration::from_millis(1500)),
        );
        assert_eq!(
            verdict_of_error(&*err),
            Verdict::rate_limited(Some(Duration::from_millis(1500)))
        );
        let refusal = Refusal::find(&*err).unwrap();
        assert_eq!(refusal.earliest(), Some(now + Duration::from_millis(1500)));
        let shown = err.to_string();
        assert!(shown.contains("bot1") && shown.contains("1.5s"), "{shown}");
    }

    #[test]
    fn cost_and_no_route_are_failures_the_rest_rate_limited() {
        let cost = Refusal::new(
            LayerKind::RateLimit,
            RefusalKind::CostExceedsBurst { cost: 9, burst: 5 },
        )
        .with_key(Key::from("k"));
        assert_eq!(cost.verdict(), Verdict::Failure);
        let shown = cost.to_string();
        assert!(shown.contains("\"k\"") && shown.contains('9') && shown.contains('5'));
        let e = Refusal::new(
            LayerKind::Pool,
            RefusalKind::NoRoute {
                model: Some(Key::from("gpt-9")),
            },
        );
        assert_eq!(e.verdict(), Verdict::Failure);
        assert_eq!(e.to_string(), "no backend is routed for model `gpt-9`");
        let e = Refusal::new(
            LayerKind::Pool,
            RefusalKind::NoBackendReady {
                waited: Duration::from_secs(1),
            },
        )
        .with_candidates(cands());
        assert_eq!(e.verdict(), Verdict::rate_limited(None));
        assert!(e.to_string().contains("1.000 s"), "{e}");
    }

    #[test]
    fn cooling_and_probing_messages() {
        let e = Refusal::new(LayerKind::Cooldown, RefusalKind::CoolingDown)
            .with_key(Key::from("api.telegram.org"))
            .with_retry_after(Duration::from_millis(4_310_500));
        let s = e.to_string();
        assert!(
            s.contains("api.telegram.org") && s.contains("4310.500 s"),
            "{s}"
        );
        let probing = Refusal::new(LayerKind::Cooldown, RefusalKind::Probing)
            .with_key(Key::from("h"))
            .with_retry_after(Duration::ZERO);
        assert!(probing.is_probing());
        let text = probing.to_string();
        assert!(text.contains("`h`") && text.contains("probe"), "{text}");
        let held = e.with_held_by(LayerId::new()).to_string();
        assert!(held.contains("was not sent"), "{held}");
    }

    #[test]
    fn all_cooling_names_wait_and_candidates() {
        let e = Refusal::new(
            LayerKind::Pool,
            RefusalKind::AllBackendsCooling {
                max_wait: Duration::from_millis(500),
            },
        )
        .with_retry_after(Duration::from_millis(700))
        .with_candidates(cands());
        let s = e.to_string();
        assert!(s.contains("0.700 s"), "{s}");
        assert!(s.contains("max_wait 0.500 s"), "{s}");
        assert!(s.contains("`glm` cooling 0.700 s"), "{s}");
        assert!(s.contains("`openai` no capacity"), "{s}");
        assert_eq!(
            e.verdict(),
            Verdict::rate_limited(Some(Duration::from_millis(700)))
        );
    }

    #[test]
    fn a_refusal_is_found_through_a_source_chain() {
        #[derive(Debug)]
        struct Wrapper(Refusal);
        impl fmt::Display for Wrapper {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("wrapped")
            }
        }
        impl Error for Wrapper {
            fn source(&self) -> Option<&(dyn Error + 'static)> {
                Some(&self.0)
            }
        }
        let inner = Refusal::new(LayerKind::Cache, RefusalKind::EndpointLimited)
            .with_retry_after(Duration::from_secs(7));
        let err: BoxError = Box::new(Wrapper(inner));
        assert_eq!(
            verdict_of_error(&*err),
            Verdict::rate_limited(Some(Duration::from_secs(7)))
        );
        let other: BoxError = "connection reset".into();
        assert_eq!(verdict_of_error(&*other), Verdict::Transient);
    }
}
