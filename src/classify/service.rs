use std::sync::Arc;

/// The service made by [`ClassifyLayer`](super::ClassifyLayer). STUB.
#[derive(Debug, Clone)]
pub struct Classify<S, C> {
    inner: S,
    classifier: Arc<C>,
    body_cap: usize,
}

impl<S, C> Classify<S, C> {
    pub(crate) fn new(inner: S, classifier: Arc<C>, body_cap: usize) -> Self {
        Classify { inner, classifier, body_cap }
    }
    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }
    /// The inner service, consuming this one.
    pub fn into_inner(self) -> S {
        self.inner
    }
}
