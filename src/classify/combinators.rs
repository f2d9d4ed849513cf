//! `or` and closures.

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

/// A classifier made from a closure. STUB: to be completed.
#[derive(Clone, Copy)]
pub struct ClassifyFn<F> {
    f: F,
}

impl<F> std::fmt::Debug for ClassifyFn<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClassifyFn").finish_non_exhaustive()
    }
}

impl<F> ClassifyFn<F> {
    /// Wrap a closure.
    pub fn new(f: F) -> Self {
        ClassifyFn { f }
    }
}

impl<F> Classifier for ClassifyFn<F>
where
    F: Fn(&ResponseView<'_>) -> Option<Verdict> + Send + Sync + 'static,
{
    fn classify(&self, response: &ResponseView<'_>) -> Option<Verdict> {
        (self.f)(response)
    }
}
