//! A real HTTP/1 server on 127.0.0.1 for any mock, and a small client for it.

use std::fmt;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};

use axum::Router;
use bytes::Bytes;
use http::{header, Method, Request};
use http_body::Body as HttpBody;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

use crate::BoxError;

/// A mock served over real TCP on `127.0.0.1:<ephemeral port>`.
///
/// Dropping it aborts the accept loop and every connection task it spawned, so nothing
/// it started outlives it.
///
/// # Example
///
/// ```no_run
/// use ratewise::testing::{client, body_json, MockServer, QqGateway};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), ratewise::BoxError> {
/// let qq = QqGateway::new();
/// let server = MockServer::start(qq.router()).await?;
/// let resp = client().get(server.url("/gateway").parse()?).await?;
/// assert_eq!(resp.status(), 200);
/// let json = body_json(resp.into_body()).await?;
/// assert_eq!(json["url"], "wss://api.sgroup.qq.com/websocket/");
/// # Ok(()) }
/// ```
pub struct MockServer {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl fmt::Debug for MockServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MockServer")
            .field("addr", &self.addr)
            .finish()
    }
}

impl MockServer {
    /// Binds `127.0.0.1:0` and serves `router` (HTTP/1.1, keep-alive) on the current
    /// tokio runtime until dropped.
    pub async fn start(router: Router) -> io::Result<MockServer> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(accept_loop(listener, router));
        Ok(MockServer { addr, task })
    }

    /// The address the server listens on (always on 127.0.0.1).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:<port><path>`; `path` should start with `/`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Stops the server now and waits until its tasks are gone.
    pub async fn shutdown(mut self) {
        self.task.abort();
        // Wait for the abort to take effect; `Drop` then aborts again, harmlessly.
        let _ = (&mut self.task).await;
    }
}

impl Drop for MockServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn accept_loop(listener: TcpListener, router: Router) {
    // Owned by this task: when the task is aborted, dropping the set aborts every
    // connection task.
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    let service = TowerToHyperService::new(router.clone());
                    conns.spawn(async move {
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
                // Out of descriptors or similar: back off briefly instead of spinning.
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(10)).await,
            },
            Some(_) = conns.join_next() => {}
        }
    }
}

/// The client type [`client`] returns: hyper-util's pooled HTTP/1 client with a
/// [`Full<Bytes>`] request body.
pub type TestClient = Client<HttpConnector, Full<Bytes>>;

/// A plain HTTP/1 client for talking to a [`MockServer`] (no TLS, no proxy).
pub fn client() -> TestClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// A request with a JSON body and `content-type: application/json`, usable both with
/// [`client`] and in-process with a mock's router.
pub fn json_request(
    method: Method,
    uri: &str,
    body: &serde_json::Value,
) -> Result<Request<Full<Bytes>>, http::Error> {
    Request::builder()
        .method(method)
        .uri(uri)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
}

/// A request with an empty body.
pub fn empty_request(method: Method, uri: &str) -> Result<Request<Full<Bytes>>, http::Error> {
    Request::builder()
        .method(method)
        .uri(uri)
        .body(Full::new(Bytes::new()))
}

/// Collects a whole body.
pub async fn body_bytes<B>(body: B) -> Result<Bytes, BoxError>
where
    B: HttpBody,
    B::Error: Into<BoxError>,
{
    Ok(body.collect().await.map_err(Into::into)?.to_bytes())
}

/// Collects a whole body and parses it as JSON.
pub async fn body_json<B>(body: B) -> Result<serde_json::Value, BoxError>
where
    B: HttpBody,
    B::Error: Into<BoxError>,
{
    Ok(serde_json::from_slice(&body_bytes(body).await?)?)
}
