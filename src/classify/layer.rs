use std::fmt;
use std::sync::Arc;

use super::{Classify, DEFAULT_BODY_CAP};
use tower::Layer;

/// Classifies every response once and stores the [`Verdict`](super::Verdict) in its
/// extensions, where [`verdict_of`](crate::verdict_of) reads it.
///
/// For each response of the inner service:
///
/// - if a verdict is already in its extensions (an inner `ClassifyLayer` ran), it is
///   passed through untouched: a response is classified once, however many layers it
///   crosses;
/// - else, if the classifier does not [want the body](super::Classifier::wants_body)
///   for this status and these headers, it is classified from them alone and its body
///   is passed through unbuffered (a 200 SSE stream flows chunk by chunk);
/// - else the first [`body_cap`](Self::body_cap) bytes are peeked
///   and shown to the classifier, and the caller gets a body that replays them, then
///   the rest: byte for byte what the upstream sent, trailers and errors included.
///
/// When the classifier has no opinion the verdict is [`Verdict::from_status`](super::Verdict::from_status).
/// The response body becomes [`PeekBody<B>`](crate::body::PeekBody); errors of the
/// inner service pass through unchanged.
///
/// The classifier lives in an [`Arc`]: clones of the layer and of its services share it.
///
/// # Example
///
/// ```
/// use bytes::Bytes;
/// use http::{Request, Response, StatusCode};
/// use http_body_util::{BodyExt, Full};
/// use ratewise::classify::{ClassifyLayer};
/// use ratewise::{Verdict, verdict_of};
/// use ratewise::Classifier;
/// use tower::{service_fn, ServiceBuilder, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// // QQ says "rate limited" with a 400 and a Chinese message in the body.
/// #[derive(Debug)]
/// struct QqLimit;
/// impl Classifier for QqLimit {
///     fn wants_body(&self, status: StatusCode, _: &http::HeaderMap) -> bool {
///         status == StatusCode::BAD_REQUEST
///     }
///     fn classify(&self, view: &ratewise::classify::ResponseView<'_>) -> Option<Verdict> {
///         let body = view.body()?;
///         let needle = "接口调用超过频率限制".as_bytes();
///         body.windows(needle.len())
///             .any(|w| w == needle)
///             .then(|| Verdict::rate_limited(None))
///     }
/// }
///
/// let upstream = service_fn(|_req: Request<()>| async {
///     let body = Full::new(Bytes::from("{\"msg\":\"接口调用超过频率限制\"}"));
///     Ok::<_, std::convert::Infallible>(
///         Response::builder().status(400).body(body).unwrap(),
///     )
/// });
/// let svc = ServiceBuilder::new()
///     .layer(ClassifyLayer::new(QqLimit).body_cap(4096))
///     .service(upstream);
///
/// let res = svc.oneshot(Request::new(())).await.unwrap();
/// assert!(verdict_of(&res).is_rate_limited());
/// // The caller still reads the whole body.
/// let body = res.into_body().collect().await.unwrap().to_bytes();
/// assert_eq!(body, Bytes::from("{\"msg\":\"接口调用超过频率限制\"}"));
/// # }
/// ```
pub struct ClassifyLayer<C> {
    classifier: Arc<C>,
    body_cap: usize,
}

impl<C> ClassifyLayer<C> {
    /// A layer using `classifier`, showing it at most
    /// 64 KiB of a body.
    pub fn new(classifier: C) -> Self {
        ClassifyLayer {
            classifier: Arc::new(classifier),
            body_cap: DEFAULT_BODY_CAP,
        }
    }

    /// How many body bytes a classifier may see (default 64 KiB). Only responses the
    /// classifier [asks about](super::Classifier::wants_body) are read, and only up to
    /// this many bytes (plus the rest of the frame that crosses it).
    pub fn body_cap(mut self, cap: usize) -> Self {
        self.body_cap = cap;
        self
    }
}

impl<C> Clone for ClassifyLayer<C> {
    fn clone(&self) -> Self {
        ClassifyLayer {
            classifier: Arc::clone(&self.classifier),
            body_cap: self.body_cap,
        }
    }
}

impl<C> fmt::Debug for ClassifyLayer<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClassifyLayer")
            .field("classifier", &std::any::type_name::<C>())
            .field("body_cap", &self.body_cap)
            .finish()
    }
}

impl<S, C> Layer<S> for ClassifyLayer<C> {
    type Service = Classify<S, C>;

    fn layer(&self, inner: S) -> Self::Service {
        Classify::new(inner, Arc::clone(&self.classifier), self.body_cap)
    }
}
