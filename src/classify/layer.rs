use super::{Classify, DEFAULT_BODY_CAP};
use tower::Layer;

/// Classifies every response once and stores the [`Verdict`](super::Verdict) in its
/// extensions. STUB: to be completed.
#[derive(Debug, Clone)]
pub struct ClassifyLayer<C> {
    classifier: std::sync::Arc<C>,
    body_cap: usize,
}

impl<C> ClassifyLayer<C> {
    /// A layer using `classifier`.
    pub fn new(classifier: C) -> Self {
        ClassifyLayer { classifier: std::sync::Arc::new(classifier), body_cap: DEFAULT_BODY_CAP }
    }

    /// How many body bytes a classifier may see (default 64 KiB).
    pub fn body_cap(mut self, cap: usize) -> Self {
        self.body_cap = cap;
        self
    }
}

impl<S, C> Layer<S> for ClassifyLayer<C> {
    type Service = Classify<S, C>;
    fn layer(&self, inner: S) -> Self::Service {
        Classify::new(inner, self.classifier.clone(), self.body_cap)
    }
}
