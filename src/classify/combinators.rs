//! `or` and closures.
//!
//! Closures become classifiers through [`classify_fn`] rather than a blanket
//! `impl<F: Fn(&ResponseView) -> Option<Verdict>> Classifier for F`. Such an impl would
//! overlap with the `Box<C>` and `Arc<C>` impls (a boxed closure is itself a closure),
//! and a closure handed to a generic `C: Classifier` parameter gets no signature hint
//! from the compiler, so every closure would need a spelled-out
//! `|r: &ResponseView<'_>|` to compile. `classify_fn`'s direct `Fn` bound lets the
//! compiler infer it, and gives a place to say which statuses need a body.

use std::fmt;
use std::sync::Arc;

use http::{HeaderMap, StatusCode};

use super::{Classifier, ResponseView, Verdict};

/// Tries one classifier, then another when the first has no opinion.
///
/// Made by [`Classifier::or`]. It wants a body when either side does.
#[derive(Debug, Clone, Copy)]
pub struct Or<A, B> {
    first: A,
    second: B,
}

impl<A, B> Or<A, B> {
    pub(crate) fn new(first: A, second: B) -> Self {
        Or { first, second }
    }
}

impl<A: Classifier, B: Classifier> Classifier for Or<A, B> {
    fn wants_body(&self, status: StatusCode, headers: &HeaderMap) -> bool {
        self.first.wants_body(status, headers) || self.second.wants_body(status, headers)
    }

    fn classify(&self, response: &ResponseView<'_>) -> Option<Verdict> {
        self.first
            .classify(response)
            .or_else(|| self.second.classify(response))
    }
}

/// A classifier made from a closure; see [`classify_fn`].
///
/// By default it never asks for a body; [`wants_body_for`](Self::wants_body_for)
/// names the statuses whose body prefix the closure needs.
#[derive(Clone)]
pub struct ClassifyFn<F> {
    f: F,
    body_for: Arc<[StatusCode]>,
}

impl<F> fmt::Debug for ClassifyFn<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClassifyFn")
            .field("body_for", &self.body_for)
            .finish_non_exhaustive()
    }
}

impl<F> ClassifyFn<F>
where
    F: Fn(&ResponseView<'_>) -> Option<Verdict> + Send + Sync + 'static,
{
    /// Wrap a closure. Same as [`classify_fn`].
    pub fn new(f: F) -> Self {
        ClassifyFn {
            f,
            body_for: Arc::from([]),
        }
    }

    /// Ask for the body prefix of responses with these statuses (replacing any
    /// earlier list). Keep 2xx out of it to keep streams unbuffered.
    pub fn wants_body_for(mut self, statuses: impl IntoIterator<Item = StatusCode>) -> Self {
        self.body_for = statuses.into_iter().collect();
        self
    }
}

/// Makes a classifier from a closure returning `Some(verdict)`, or `None` for "no
/// opinion".
///
/// The closure sees what [`ResponseView`] offers; for a rate-limited verdict, take
/// the hint from [`ResponseView::retry_after`] (the crate's one parser).
///
/// # Example
///
/// ```
/// use http::{HeaderMap, StatusCode};
/// use ratewise::classify::{classify_fn, Classifier, ResponseView};
/// use ratewise::{Verdict};
///
/// // An API that says "slow down" in a 503 body.
/// let slow_down = classify_fn(|r| {
///     let hit = r.status() == StatusCode::SERVICE_UNAVAILABLE
///         && r.body().is_some_and(|b| b.windows(9).any(|w| w == b"slow down"));
///     hit.then(|| Verdict::rate_limited(r.retry_after()))
/// })
/// .wants_body_for([StatusCode::SERVICE_UNAVAILABLE]);
///
/// let headers = HeaderMap::new();
/// assert!(slow_down.wants_body(StatusCode::SERVICE_UNAVAILABLE, &headers));
/// assert!(!slow_down.wants_body(StatusCode::OK, &headers));
/// let view = ResponseView::new(StatusCode::SERVICE_UNAVAILABLE, &headers)
///     .with_body(b"please slow down");
/// assert!(slow_down.classify(&view).is_some_and(|v| v.is_rate_limited()));
/// ```
pub fn classify_fn<F>(f: F) -> ClassifyFn<F>
where
    F: Fn(&ResponseView<'_>) -> Option<Verdict> + Send + Sync + 'static,
{
    ClassifyFn::new(f)
}

impl<F> Classifier for ClassifyFn<F>
where
    F: Fn(&ResponseView<'_>) -> Option<Verdict> + Send + Sync + 'static,
{
    fn wants_body(&self, status: StatusCode, _headers: &HeaderMap) -> bool {
        self.body_for.contains(&status)
    }

    fn classify(&self, response: &ResponseView<'_>) -> Option<Verdict> {
        (self.f)(response)
    }
}
