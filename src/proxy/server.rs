//! The proxy's HTTP side: the router, its handlers, its own error answers, and
//! [`serve`] with graceful shutdown.

use std::{future::Future, sync::OnceLock, time::Duration};

use axum::{
    body::Body,
    extract::{Request, State},
    response::Response,
    routing::{get, post},
    Router,
};
use http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use http_body_util::{Full, LengthLimitError};
use hyper_util::{rt::TokioIo, server::graceful::GracefulShutdown, service::TowerToHyperService};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use serde_json::{json, Value};
use tokio::{net::TcpListener, task::JoinSet};
use tower::ServiceExt;

use super::{
    backend::{Arrived, Endpoint},
    stats, Proxy,
};
use crate::{
    pool::{Model, ServedBy},
    redact::Redacted,
    vocabulary::{verdict_of_error, Refusal, RefusalKind},
};

/// The header naming the backend that answered.
pub(crate) const SERVED_BY: &str = "x-ratewise-backend";

/// Hop-by-hop headers (RFC 9110 §7.6.1): a proxy does not forward them.
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Request headers that stay at the proxy: the client's credentials (each backend gets
/// its own key), the framing (the body is sent again), and `accept-encoding` (the
/// proxy reads each answer's `usage`).
const NOT_FORWARDED: [&str; 8] = [
    "host",
    "authorization",
    "proxy-authorization",
    "cookie",
    "x-api-key",
    "api-key",
    "content-length",
    "accept-encoding",
];

pub(super) fn router(proxy: Proxy) -> Router {
    let stats_routes = stats::routes(proxy.inner.stats.clone(), proxy.states());
    Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/v1/embeddings", post(embeddings))
        .route("/v1/models", get(models))
        .route("/metrics", get(metrics))
        .with_state(proxy)
        .merge(stats_routes)
        .fallback(not_found)
}

async fn chat(State(proxy): State<Proxy>, req: Request) -> Response {
    forward(proxy, Endpoint::Chat, req).await
}

async fn embeddings(State(proxy): State<Proxy>, req: Request) -> Response {
    forward(proxy, Endpoint::Embeddings, req).await
}

/// Reads the body, checks it, routes it by its `model` through the pool, and relays
/// the answer.
async fn forward(proxy: Proxy, endpoint: Endpoint, req: Request) -> Response {
    let max = proxy.inner.max_body;
    let (parts, body) = req.into_parts();
    let too_large = || {
        error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            "request_too_large",
            format!("the request body is over {max} bytes"),
        )
    };
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return too_large();
    }
    let bytes = match axum::body::to_bytes(body, max).await {
        Ok(bytes) => bytes,
        Err(err) => {
            let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&err);
            while let Some(e) = source {
                if e.is::<LengthLimitError>() {
                    return too_large();
                }
                source = e.source();
            }
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "unreadable_body",
                format!("could not read the request body: {err}"),
            );
        }
    };
    let value: Value = match serde_json::from_slice(&bytes) {
        Ok(value) => value,
        Err(err) => {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "invalid_json",
                format!("the request body is not valid JSON: {err}"),
            )
        }
    };
    let Some(model) = value.get("model").and_then(Value::as_str) else {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "missing_model",
            "the request body must be a JSON object with a string `model`".to_owned(),
        );
    };
    if !proxy.inner.models.contains(model) {
        return model_not_found(model);
    }
    let model = model.to_owned();

    let mut upstream = http::Request::new(Full::new(bytes));
    *upstream.method_mut() = Method::POST;
    let headers = upstream.headers_mut();
    *headers = parts.headers;
    strip_hop_by_hop(headers);
    for name in NOT_FORWARDED {
        headers.remove(name);
    }
    if !headers.contains_key(header::CONTENT_TYPE) {
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
    }
    upstream.extensions_mut().insert(Model::new(model.as_str()));
    upstream.extensions_mut().insert(endpoint);
    upstream
        .extensions_mut()
        .insert(Arrived(tokio::time::Instant::now()));
    match proxy.inner.pool.clone().oneshot(upstream).await {
        Ok(res) => relay(res),
        Err(err) => {
            tracing::info!(target: "ratewise::proxy", model = %model, error = %Redacted(&err), "no backend answered");
            pool_error(&*err, &model)
        }
    }
}

/// A backend's answer as it came (streams included), without hop-by-hop headers, with
/// `x-ratewise-backend` naming the backend.
fn relay(res: http::Response<Body>) -> Response {
    let served_by = res
        .extensions()
        .get::<ServedBy>()
        .and_then(|by| HeaderValue::from_str(by.name()).ok());
    let mut res = res;
    strip_hop_by_hop(res.headers_mut());
    if let Some(name) = served_by {
        res.headers_mut()
            .insert(HeaderName::from_static(SERVED_BY), name);
    }
    res
}

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Headers named by `Connection` are hop-by-hop too.
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
}

/// The proxy's own answer when no backend answered the call.
fn pool_error(err: &(dyn std::error::Error + 'static), model: &str) -> Response {
    let Some(refusal) = Refusal::find(err) else {
        // Every backend tried failed without an answer (connection refused, timeout).
        return error(
            StatusCode::BAD_GATEWAY,
            "api_error",
            "upstream_unreachable",
            format!(
                "no backend of `{model}` could be reached: {}",
                Redacted(err)
            ),
        );
    };
    let (code, message) = match refusal.kind() {
        RefusalKind::NoRoute { .. } => return model_not_found(model),
        RefusalKind::AllBackendsCooling { .. } => (
            "all_backends_cooling",
            format!("every backend of `{model}` is cooling down after a rate limit"),
        ),
        RefusalKind::NoBackendReady { .. } => (
            "no_backend_ready",
            format!("no backend of `{model}` had capacity in time"),
        ),
        _ => (
            "backend_limited",
            format!("no backend of `{model}` has room now: {}", Redacted(err)),
        ),
    };
    let wait = refusal
        .retry_after()
        .or_else(|| verdict_of_error(err).retry_after())
        .unwrap_or(Duration::from_secs(1));
    let mut res = error(
        StatusCode::SERVICE_UNAVAILABLE,
        "rate_limit_error",
        code,
        message,
    );
    let headers = res.headers_mut();
    let whole = (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1);
    headers.insert(header::RETRY_AFTER, HeaderValue::from(whole));
    let ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX).max(1);
    headers.insert("retry-after-ms", HeaderValue::from(ms));
    res
}

fn model_not_found(model: &str) -> Response {
    error(
        StatusCode::NOT_FOUND,
        "invalid_request_error",
        "model_not_found",
        format!("the model `{model}` does not exist on this proxy"),
    )
}

/// An error in OpenAI's shape: `{"error":{"message","type","param","code"}}`.
pub(crate) fn error(status: StatusCode, kind: &str, code: &str, message: String) -> Response {
    let body = json!({
        "error": { "message": message, "type": kind, "param": null, "code": code }
    });
    let mut res = Response::new(Body::from(body.to_string()));
    *res.status_mut() = status;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    res
}

async fn not_found(req: Request) -> Response {
    error(
        StatusCode::NOT_FOUND,
        "invalid_request_error",
        "not_found",
        format!("no route for {} {}", req.method(), req.uri().path()),
    )
}

/// `GET /v1/models`: the configured models.
async fn models(State(proxy): State<Proxy>) -> Response {
    let data: Vec<Value> = proxy
        .inner
        .models
        .iter()
        .map(
            |id| json!({ "id": id, "object": "model", "created": 0, "owned_by": "ratewise-proxy" }),
        )
        .collect();
    let mut res = Response::new(Body::from(
        json!({ "object": "list", "data": data }).to_string(),
    ));
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    res
}

/// `GET /metrics`: Prometheus text.
async fn metrics(State(proxy): State<Proxy>) -> Response {
    let Some(handle) = &proxy.inner.prometheus else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "api_error",
            "metrics_unavailable",
            "another metrics recorder was installed in this process before the proxy's".to_owned(),
        );
    };
    handle.run_upkeep();
    let mut res = Response::new(Body::from(handle.render()));
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    res
}

/// The process's Prometheus recorder, installed on first use; `None` when another
/// recorder was installed first.
pub(super) fn prometheus() -> Option<PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let handle = PrometheusBuilder::new().install_recorder().ok();
            if handle.is_some() {
                crate::metrics::describe();
                ::metrics::describe_counter!(
                    super::UPSTREAM_REQUESTS,
                    "Requests the proxy sent to each backend, by outcome."
                );
            }
            handle
        })
        .clone()
}

/// Accepts connections until `shutdown`, then lets the open ones finish for up to the
/// grace period and closes the rest.
pub(super) async fn serve<F>(
    proxy: Proxy,
    listener: TcpListener,
    shutdown: F,
) -> std::io::Result<()>
where
    F: Future<Output = ()> + Send + 'static,
{
    let grace = proxy.inner.shutdown_grace;
    let router = proxy.router();
    let graceful = GracefulShutdown::new();
    let mut conns: JoinSet<()> = JoinSet::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    let service = TowerToHyperService::new(router.clone());
                    let conn = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service);
                    let conn = graceful.watch(conn);
                    conns.spawn(async move {
                        let _ = conn.await;
                    });
                }
                // Out of descriptors or similar: back off briefly instead of spinning.
                Err(err) => {
                    tracing::warn!(target: "ratewise::proxy", error = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    tracing::info!(target: "ratewise::proxy", open = conns.len(), grace_ms = grace.as_millis() as u64, "shutting down: letting open requests finish");
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(grace) => {
            tracing::warn!(target: "ratewise::proxy", open = conns.len(), "shutdown grace period over: closing the connections left");
        }
    }
    conns.shutdown().await;
    Ok(())
}
