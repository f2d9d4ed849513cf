//! ratewise's metrics on a Prometheus endpoint: with the `metrics` feature every layer
//! reports its counters to the installed recorder, here `metrics-exporter-prometheus`.
//!
//! It serves the GLM mock on 127.0.0.1 (3 calls per second, then 429 code 1302), sends
//! 6 requests through the GLM preset of the stack, scrapes the exporter's endpoint on
//! 127.0.0.1 once, prints what it got, and exits. About 2 s; nothing leaves the machine.
//!
//! ```sh
//! cargo run --example metrics --features testing,metrics
//! ```

use std::{net::TcpListener, time::Duration};

use http::Method;
use metrics_exporter_prometheus::PrometheusBuilder;
use ratewise::{
    testing::{self, body_bytes, glm, json_request, GlmApi, MockServer},
    BoxError, ClientStackLayer, Platform,
};
use serde_json::json;
use tower::{ServiceBuilder, ServiceExt};

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    // The exporter's scrape endpoint, on a free loopback port.
    let addr = TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    PrometheusBuilder::new()
        .with_http_listener(addr)
        .install()?;
    ratewise::metrics::describe();

    // The upstream, and the stack in front of it, named for its metrics.
    let glm = GlmApi::new().limit(3).window(Duration::from_secs(1));
    let server = MockServer::start(glm.router()).await?;
    let stack = ClientStackLayer::preset(Platform::Glm)
        .name("glm-example")
        .build()?;
    let client = ServiceBuilder::new()
        .layer(stack)
        .service(testing::client());

    for i in 1..=6 {
        let req = json_request(
            Method::POST,
            &server.url(glm::PATH),
            &json!({"messages": []}),
        )?;
        let res = client.clone().oneshot(req).await?;
        println!("request {i}: {}", res.status());
    }

    let scrape = testing::client()
        .get(format!("http://{addr}/metrics").parse()?)
        .await?;
    let text = body_bytes(scrape.into_body()).await?;
    println!(
        "\nGET http://{addr}/metrics\n{}",
        String::from_utf8_lossy(&text)
    );
    server.shutdown().await;
    Ok(())
}
