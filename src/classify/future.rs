/// The response future of [`Classify`](super::Classify). STUB.
#[derive(Debug)]
pub struct ResponseFuture<F> {
    inner: F,
}
