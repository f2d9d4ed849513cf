//! An OpenAI-compatible gateway over a [`Pool`], for the tests (seed 003's sidecar):
//! `POST /v1/chat/completions` buffers the body, reads its `model`, and hands the
//! request to the pool. A backend's answer goes back as it came (streams included)
//! with `x-served-by`; the gateway answers on its own only when no backend was called.
//!
//! Test scaffolding, not library API: the crate's proxy binary is the real gateway.
#![allow(dead_code)]

use std::error::Error;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::routing::post;
use axum::Router;
use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Request, Response, StatusCode, Uri};
use http_body_util::BodyExt;
use ratewise::classify::{ClassifyLayer, Preset};
use ratewise::pool::{Model, Pool, ServedBy};
use ratewise::retry::{buffer_request, RetryBody};
use ratewise::vocabulary::RefusalKind;
use ratewise::{verdict_of_error, BoxError, RateLimitLayer, Refusal};
use serde_json::{json, Value};
use tokio::time::Instant;
use tower::util::BoxCloneSyncService;
use tower::{Service, ServiceBuilder, ServiceExt};

/// The request body the gateway hands its pool: buffered, so the pool can send a copy
/// to the fallback after the primary consumed its own.
pub type GatewayBody = RetryBody<Body>;
/// One backend as the pool holds it: any client under its own bucket and classifier.
pub type Backend = BoxCloneSyncService<Request<GatewayBody>, Response<Body>, BoxError>;
/// The gateway's pool.
pub type GatewayPool = Pool<GatewayBody, Body>;

/// The header the gateway sets from the pool's [`ServedBy`].
pub const SERVED_BY: &str = "x-served-by";
/// The largest request body the gateway buffers.
pub const MAX_REQUEST_BODY: usize = 256 * 1024;
/// Hop-by-hop headers (RFC 9110 §7.6.1): a proxy does not forward them.
const HOP_BY_HOP: [&str; 7] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// One backend: `client` under the backend's own bucket and its platform's classifier,
/// every request sent to `upstream` with the backend's own API key (marked sensitive).
/// `client` is a mock's router (in-process) or a hyper-util client (real sockets).
pub fn backend<S, B>(
    client: S,
    upstream: &str,
    api_key: &str,
    classifier: Preset,
    bucket: RateLimitLayer,
) -> Result<Backend, BoxError>
where
    S: Service<Request<GatewayBody>, Response = Response<B>> + Clone + Send + Sync + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError> + Send,
{
    let upstream: Uri = upstream.parse()?;
    let mut auth = HeaderValue::try_from(format!("Bearer {api_key}"))?;
    auth.set_sensitive(true);
    let service = ServiceBuilder::new()
        .map_request(move |mut req: Request<GatewayBody>| {
            *req.uri_mut() = upstream.clone();
            req.headers_mut()
                .insert(header::AUTHORIZATION, auth.clone());
            req
        })
        .map_response(|res: Response<_>| res.map(Body::new))
        .layer(bucket)
        .layer(ClassifyLayer::new(classifier))
        .service(client);
    Ok(BoxCloneSyncService::new(service))
}

/// The gateway: `POST /v1/chat/completions`, answered through `pool`.
pub fn router(pool: GatewayPool) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(completions))
        .with_state(pool)
}

/// Buffers the request, routes it by its `model`, and relays the pool's answer.
async fn completions(State(pool): State<GatewayPool>, req: Request<Body>) -> Response<Body> {
    let mut req = match buffer_request(req, MAX_REQUEST_BODY).await {
        Ok(req) => req,
        Err(err) => {
            let message = format!("could not read the request body: {err}");
            return error_response(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                None,
                message,
            );
        }
    };
    let Some(bytes) = req.body().buffered_bytes() else {
        let message = format!("the request body is over {MAX_REQUEST_BODY} bytes");
        return error_response(
            StatusCode::PAYLOAD_TOO_LARGE,
            "request_too_large",
            None,
            message,
        );
    };
    let model = serde_json::from_slice::<Value>(bytes)
        .ok()
        .and_then(|body| body.get("model")?.as_str().map(str::to_owned));
    let Some(model) = model else {
        let message = "the body must be a JSON object with a string `model`".to_owned();
        return error_response(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            None,
            message,
        );
    };
    // The caller's credentials and connection headers stay here: each backend gets its
    // own key, and its client its own connection.
    let headers = req.headers_mut();
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
    headers.remove(header::HOST);
    headers.remove(header::AUTHORIZATION);
    req.extensions_mut().insert(Model::new(model));
    match pool.oneshot(req).await {
        Ok(res) => relay(res),
        Err(err) => pool_error(&*err),
    }
}

/// A backend's answer as it came, with `x-served-by` from the pool's [`ServedBy`].
fn relay(mut res: Response<Body>) -> Response<Body> {
    let served_by = res
        .extensions()
        .get::<ServedBy>()
        .and_then(|by| HeaderValue::from_str(by.name()).ok());
    let headers = res.headers_mut();
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
    if let Some(name) = served_by {
        headers.insert(SERVED_BY, name);
    }
    res
}

/// The gateway's own answer when the pool called no backend.
fn pool_error(err: &(dyn Error + 'static)) -> Response<Body> {
    let refusal = Refusal::find(err);
    let (status, code) = match refusal.map(Refusal::kind) {
        Some(RefusalKind::AllBackendsCooling { .. }) => {
            (StatusCode::SERVICE_UNAVAILABLE, "all_backends_cooling")
        }
        Some(RefusalKind::NoBackendReady { .. }) => {
            (StatusCode::SERVICE_UNAVAILABLE, "no_backend_ready")
        }
        Some(RefusalKind::NoRoute { .. }) => (StatusCode::NOT_FOUND, "model_not_found"),
        _ => {
            let message = format!("the backend could not be reached: {err}");
            return error_response(StatusCode::BAD_GATEWAY, "upstream_error", None, message);
        }
    };
    let wait = verdict_of_error(err).retry_after();
    error_response(status, code, wait, err.to_string())
}

/// An OpenAI-style error answer; with a wait, `Retry-After` (whole seconds, rounded up,
/// at least 1) and `retry-after-ms`.
fn error_response(
    status: StatusCode,
    code: &str,
    retry_after: Option<Duration>,
    message: String,
) -> Response<Body> {
    let body = json!({
        "error": { "message": message, "type": "gateway_error", "param": null, "code": code }
    });
    let mut res = Response::new(Body::from(body.to_string()));
    *res.status_mut() = status;
    let headers = res.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Some(wait) = retry_after {
        let whole = (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1);
        headers.insert(header::RETRY_AFTER, HeaderValue::from(whole));
        let ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX);
        headers.insert("retry-after-ms", HeaderValue::from(ms));
    }
    res
}

// ---- The client side --------------------------------------------------------------

/// A chat completion request body.
pub fn chat_body(model: &str, stream: bool) -> Value {
    json!({
        "model": model,
        "stream": stream,
        "messages": [{ "role": "user", "content": "hello" }],
    })
}

/// What a client got from the gateway.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Value,
}

impl Answer {
    /// Reads a whole answer.
    pub async fn read<B>(res: Response<B>) -> Result<Answer, BoxError>
    where
        B: http_body::Body,
        B::Error: Into<BoxError>,
    {
        let (parts, body) = res.into_parts();
        let bytes = body.collect().await.map_err(Into::into)?.to_bytes();
        Ok(Answer {
            status: parts.status,
            headers: parts.headers,
            body: serde_json::from_slice(&bytes)?,
        })
    }

    /// A header as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The backend that answered, from `x-served-by`; `None`: the gateway itself.
    pub fn served_by(&self) -> Option<&str> {
        self.header(SERVED_BY)
    }

    /// The OpenAI-style error code.
    pub fn error_code(&self) -> Option<&str> {
        self.body["error"]["code"].as_str()
    }
}

/// A streamed answer: its head, and each SSE event with the time it reached the client
/// (tokio's clock, since the body started to be read).
#[derive(Debug)]
pub struct Streamed {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub events: Vec<(Duration, String)>,
}

impl Streamed {
    /// Reads the body frame by frame, splitting it into `\n\n`-terminated events.
    pub async fn read<B>(res: Response<B>) -> Result<Streamed, BoxError>
    where
        B: http_body::Body<Data = Bytes> + Unpin,
        B::Error: Into<BoxError>,
    {
        let started = Instant::now();
        let (parts, mut body) = res.into_parts();
        let mut pending: Vec<u8> = Vec::new();
        let mut events = Vec::new();
        while let Some(frame) = body.frame().await {
            let Ok(data) = frame.map_err(Into::into)?.into_data() else {
                continue;
            };
            let at = started.elapsed();
            pending.extend_from_slice(&data);
            while let Some(end) = pending.windows(2).position(|w| w == b"\n\n") {
                let event: Vec<u8> = pending.drain(..end + 2).collect();
                events.push((at, String::from_utf8(event)?.trim_end().to_owned()));
            }
        }
        if !pending.is_empty() {
            return Err(format!("the stream ended inside an event: {pending:?}").into());
        }
        Ok(Streamed {
            status: parts.status,
            headers: parts.headers,
            events,
        })
    }

    /// The events' texts, in order.
    pub fn texts(&self) -> Vec<&str> {
        self.events.iter().map(|(_, e)| e.as_str()).collect()
    }

    /// The reply the chunks carry, joined.
    pub fn content(&self) -> String {
        self.events
            .iter()
            .filter_map(|(_, e)| serde_json::from_str::<Value>(e.strip_prefix("data: ")?).ok())
            .filter_map(|chunk| {
                chunk["choices"][0]["delta"]["content"]
                    .as_str()
                    .map(str::to_owned)
            })
            .collect()
    }
}
