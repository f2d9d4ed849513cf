//! Behaviour of the mock upstreams in `ratewise::testing`: within-limit answers, the
//! exact over-limit answers, window resets on paused time, Telegram's escalating
//! penalty, and real-socket serving on 127.0.0.1.
#![cfg(feature = "testing")]

use std::time::Duration;

use axum::Router;
use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use ratewise::testing::{
    body_bytes, body_json, client, dingtalk, empty_request, glm, json_request, openai, qq,
    telegram, DingTalkCards, GlmApi, MockServer, OpenAiApi, Outcome, QqGateway, TelegramBot,
};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::{advance, Instant};
use tower::ServiceExt;

type Error = ratewise::BoxError;

/// Sends one request in-process and returns status, headers and the body as JSON
/// (`Value::Null` when the body is not JSON).
async fn call(
    app: &Router,
    req: Request<Full<Bytes>>,
) -> Result<(StatusCode, HeaderMap, Value), Error> {
    let resp = app.clone().oneshot(req).await?;
    let (parts, body) = resp.into_parts();
    let bytes = body_bytes(body).await?;
    let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Ok((parts.status, parts.headers, json))
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn ms(m: u64) -> Duration {
    Duration::from_millis(m)
}

// ---------------------------------------------------------------------------------
// QQ gateway
// ---------------------------------------------------------------------------------

fn gateway() -> Result<Request<Full<Bytes>>, http::Error> {
    empty_request(Method::GET, "/gateway")
}

#[tokio::test(start_paused = true)]
async fn qq_serves_two_urls_then_answers_400_with_the_rate_limit_body() -> Result<(), Error> {
    let qq = QqGateway::new();
    let app = qq.router();
    for _ in 0..2 {
        let (status, headers, body) = call(&app, gateway()?).await?;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers["content-type"], "application/json");
        assert_eq!(body, json!({ "url": "wss://api.sgroup.qq.com/websocket/" }));
    }
    let (status, _, body) = call(&app, gateway()?).await?;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        body,
        json!({ "code": 40034, "message": "接口调用超过频率限制" })
    );
    assert_eq!(body["code"], qq::RATE_LIMIT_CODE);

    let hits = qq.hits();
    assert_eq!(hits.count(), 3);
    assert_eq!(hits.served(), 2);
    assert_eq!(hits.rate_limited(), 1);
    let last = hits.last().ok_or("no hit recorded")?;
    assert_eq!((last.method, last.path.as_str()), (Method::GET, "/gateway"));
    assert_eq!(last.status, StatusCode::BAD_REQUEST);
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn qq_window_reopens_exactly_one_window_after_its_first_call() -> Result<(), Error> {
    let qq = QqGateway::new().limit(2).window(secs(10));
    let app = qq.router();
    assert_eq!(call(&app, gateway()?).await?.0, StatusCode::OK); // t = 0 opens the window
    advance(secs(4)).await;
    assert_eq!(call(&app, gateway()?).await?.0, StatusCode::OK); // t = 4
    advance(ms(5_999)).await;
    assert_eq!(call(&app, gateway()?).await?.0, StatusCode::BAD_REQUEST); // t = 9.999
    advance(ms(1)).await;
    assert_eq!(call(&app, gateway()?).await?.0, StatusCode::OK); // t = 10: fresh window
    assert_eq!(call(&app, gateway()?).await?.0, StatusCode::OK);
    assert_eq!(call(&app, gateway()?).await?.0, StatusCode::BAD_REQUEST);

    let hits = qq.hits();
    assert_eq!(
        hits.times(),
        [
            Duration::ZERO,
            secs(4),
            ms(9_999),
            secs(10),
            secs(10),
            secs(10)
        ]
    );
    assert_eq!(hits.times_of(Outcome::RateLimited), [ms(9_999), secs(10)]);
    hits.clear();
    assert_eq!(hits.count(), 0);
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn qq_set_url_changes_the_url_handed_out_from_then_on() -> Result<(), Error> {
    let qq = QqGateway::new().limit(10).url("wss://first.example/ws");
    let app = qq.router();
    assert_eq!(
        call(&app, gateway()?).await?.2["url"],
        "wss://first.example/ws"
    );
    qq.set_url("wss://second.example/ws");
    assert_eq!(
        call(&app, gateway()?).await?.2["url"],
        "wss://second.example/ws"
    );
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn qq_wrong_method_and_unknown_path_are_rejected_recorded_and_free() -> Result<(), Error> {
    let qq = QqGateway::new().limit(1);
    let app = qq.router();
    let (status, headers, _) = call(&app, empty_request(Method::POST, "/gateway")?).await?;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(headers["allow"], "GET");
    let (status, _, _) = call(&app, empty_request(Method::GET, "/gateway/nope")?).await?;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // Neither consumed the single call of the window.
    assert_eq!(call(&app, gateway()?).await?.0, StatusCode::OK);
    assert_eq!(qq.hits().count_of(Outcome::Rejected), 2);
    assert_eq!(qq.hits().count(), 3);
    Ok(())
}

#[tokio::test]
async fn qq_over_a_real_server_on_localhost_two_ok_then_400() -> Result<(), Error> {
    let qq = QqGateway::new();
    let server = MockServer::start(qq.router()).await?;
    assert!(server.addr().ip().is_loopback());
    let client = client();
    let mut answers = Vec::new();
    for _ in 0..3 {
        let resp = client.get(server.url("/gateway").parse()?).await?;
        let status = resp.status();
        answers.push((status, body_json(resp.into_body()).await?));
    }
    assert_eq!(
        answers[0],
        (StatusCode::OK, json!({ "url": qq::DEFAULT_URL }))
    );
    assert_eq!(
        answers[1],
        (StatusCode::OK, json!({ "url": qq::DEFAULT_URL }))
    );
    assert_eq!(
        answers[2],
        (
            StatusCode::BAD_REQUEST,
            json!({ "code": 40034, "message": "接口调用超过频率限制" })
        )
    );
    assert_eq!(qq.hits().count(), 3);
    Ok(())
}

// ---------------------------------------------------------------------------------
// MockServer
// ---------------------------------------------------------------------------------

#[tokio::test]
async fn mock_server_shutdown_closes_the_listener_and_open_connections() -> Result<(), Error> {
    let qq = QqGateway::new();
    let server = MockServer::start(qq.router()).await?;
    let addr = server.addr();

    // A keep-alive connection that has been served once.
    let mut conn = tokio::net::TcpStream::connect(addr).await?;
    conn.write_all(b"GET /gateway HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n")
        .await?;
    let mut buf = vec![0u8; 4096];
    let n = conn.read(&mut buf).await?;
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));

    server.shutdown().await;
    // The connection task was aborted with the server: the socket is closed.
    let n = tokio::time::timeout(secs(5), conn.read(&mut buf)).await??;
    assert_eq!(n, 0);
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    assert_eq!(qq.hits().count(), 1);
    Ok(())
}

#[tokio::test]
async fn mock_server_drop_aborts_its_connection_tasks() -> Result<(), Error> {
    let server = MockServer::start(QqGateway::new().router()).await?;
    let mut conn = tokio::net::TcpStream::connect(server.addr()).await?;
    conn.write_all(b"GET /gateway HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n")
        .await?;
    let mut buf = vec![0u8; 4096];
    assert!(conn.read(&mut buf).await? > 0);

    drop(server);
    // The keep-alive connection would stay open forever; the drop closes it.
    let n = tokio::time::timeout(secs(5), conn.read(&mut buf)).await??;
    assert_eq!(n, 0);
    Ok(())
}

// ---------------------------------------------------------------------------------
// DingTalk AI cards
// ---------------------------------------------------------------------------------

fn card_edit(token: &str, body: Value) -> Result<Request<Full<Bytes>>, http::Error> {
    let mut req = json_request(Method::PUT, "/v1.0/card/streaming", &body)?;
    req.headers_mut().insert(
        dingtalk::TENANT_HEADER,
        http::HeaderValue::from_str(token).map_err(http::Error::from)?,
    );
    Ok(req)
}

#[tokio::test(start_paused = true)]
async fn dingtalk_tenant_over_20_qps_gets_403_qps_limit_then_recovers() -> Result<(), Error> {
    let cards = DingTalkCards::new();
    let app = cards.router();
    for i in 0..20 {
        let (status, _, body) = call(
            &app,
            card_edit(
                "tenant-a",
                json!({ "outTrackId": format!("c{i}"), "content": "x" }),
            )?,
        )
        .await?;
        assert_eq!(status, StatusCode::OK, "call {i}");
        assert_eq!(body, json!({ "success": true, "result": true }));
    }
    let (status, _, body) =
        call(&app, card_edit("tenant-a", json!({ "outTrackId": "c20" }))?).await?;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(body["code"], "Forbidden.AccessDenied.QpsLimitForApi");
    assert_eq!(body["requestid"], "mock-00000021");
    assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));
    assert_eq!(body.as_object().map(|o| o.len()), Some(3));

    // Another tenant has its own quota.
    let (status, _, _) = call(&app, card_edit("tenant-b", json!({ "outTrackId": "b" }))?).await?;
    assert_eq!(status, StatusCode::OK);

    advance(secs(1)).await;
    let (status, _, _) = call(&app, card_edit("tenant-a", json!({ "outTrackId": "c21" }))?).await?;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(cards.hits().rate_limited(), 1);
    assert_eq!(cards.hits().served(), 22);
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn dingtalk_robot_over_its_qps_gets_429_with_the_qps_limit_family_code() -> Result<(), Error>
{
    let cards = DingTalkCards::new().tenant_qps(1_000).robot_qps(2);
    let app = cards.router();
    let edit = |robot: &str| {
        json_request(
            Method::PUT,
            "/v1.0/card/instances",
            &json!({ "outTrackId": "card", "robotCode": robot, "cardData": {} }),
        )
    };
    assert_eq!(call(&app, edit("r1")?).await?.0, StatusCode::OK);
    assert_eq!(call(&app, edit("r1")?).await?.0, StatusCode::OK);
    let (status, _, body) = call(&app, edit("r1")?).await?;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(body["code"], dingtalk::ROBOT_LIMIT_CODE);
    assert!(body["code"]
        .as_str()
        .is_some_and(|c| c.contains("QpsLimit")));
    assert_eq!(body["requestid"], "mock-00000003");
    // Another robot is not affected; after the window r1 is served again.
    assert_eq!(call(&app, edit("r2")?).await?.0, StatusCode::OK);
    advance(secs(1)).await;
    assert_eq!(call(&app, edit("r1")?).await?.0, StatusCode::OK);
    // POST (create) is routed too.
    let create = json_request(
        Method::POST,
        "/v1.0/card/instances",
        &json!({ "outTrackId": "new" }),
    )?;
    assert_eq!(call(&app, create).await?.0, StatusCode::OK);
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn dingtalk_logs_every_card_edit_with_its_time_and_finality() -> Result<(), Error> {
    let cards = DingTalkCards::new().tenant_qps(2);
    let app = cards.router();
    let edit = |body: Value| card_edit("t", body);
    call(&app, edit(json!({ "outTrackId": "A", "content": "he" }))?).await?; // t = 0
    advance(ms(800)).await;
    call(
        &app,
        edit(json!({ "outTrackId": "A", "content": "hello", "isFinalize": true }))?,
    )
    .await?; // t = 0.8
    call(
        &app,
        edit(json!({ "outTrackId": "B", "content": "x", "isFinal": true }))?,
    )
    .await?; // refused: 403
    advance(ms(200)).await;
    call(
        &app,
        edit(json!({ "outTrackId": "B", "content": "x", "isFinal": true }))?,
    )
    .await?; // t = 1.0

    let a = cards.edits_for("A");
    assert_eq!(a.len(), 2);
    assert_eq!(
        (a[0].at, a[0].is_final, a[0].content.as_deref()),
        (Duration::ZERO, false, Some("he"))
    );
    assert_eq!(
        (a[1].at, a[1].is_final, a[1].content.as_deref()),
        (ms(800), true, Some("hello"))
    );
    assert!(a
        .iter()
        .all(|e| e.delivered() && e.path == "/v1.0/card/streaming"));

    let b = cards.edits_for("B");
    assert_eq!(
        b.iter().map(|e| e.status).collect::<Vec<_>>(),
        [StatusCode::FORBIDDEN, StatusCode::OK]
    );
    assert_eq!(
        b.iter().map(|e| e.at).collect::<Vec<_>>(),
        [ms(800), secs(1)]
    );
    assert!(b.iter().all(|e| e.is_final));
    assert_eq!(cards.finals_delivered(), ["A", "B"]);
    assert_eq!(cards.edits().len(), 4);

    cards.clear();
    assert!(cards.edits().is_empty());
    assert_eq!(cards.hits().count(), 0);
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn dingtalk_malformed_bodies_get_400_invalid_parameter() -> Result<(), Error> {
    let cards = DingTalkCards::new();
    let app = cards.router();
    let raw = |body: &'static str| {
        Request::put("/v1.0/card/streaming").body(Full::new(Bytes::from_static(body.as_bytes())))
    };
    for (req, needle) in [
        (raw("{not json")?, "not valid JSON"),
        (raw("")?, "empty"),
        (raw("[1,2]")?, "not an object"),
        (
            json_request(
                Method::PUT,
                "/v1.0/card/streaming",
                &json!({ "content": "x" }),
            )?,
            "outTrackId",
        ),
        (
            json_request(
                Method::PUT,
                "/v1.0/card/streaming",
                &json!({ "outTrackId": 7 }),
            )?,
            "outTrackId",
        ),
    ] {
        let (status, _, body) = call(&app, req).await?;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(body["code"], "InvalidParameter");
        let message = body["message"].as_str().unwrap_or_default();
        assert!(
            message.contains(needle),
            "{message:?} should mention {needle:?}"
        );
    }
    let (status, _, _) = call(&app, empty_request(Method::GET, "/v1.0/card/streaming")?).await?;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(cards.hits().count_of(Outcome::Rejected), 6);
    assert!(cards.finals_delivered().is_empty());
    Ok(())
}

// ---------------------------------------------------------------------------------
// Telegram
// ---------------------------------------------------------------------------------

const TOKEN_PATH: &str = "/bot123456:SECRET-token/sendMessage";

fn send(text: &str) -> Result<Request<Full<Bytes>>, http::Error> {
    json_request(
        Method::POST,
        TOKEN_PATH,
        &json!({ "chat_id": 42, "text": text }),
    )
}

fn too_many(n: u64) -> Value {
    json!({
        "ok": false,
        "error_code": 429,
        "description": format!("Too Many Requests: retry after {n}"),
        "parameters": { "retry_after": n },
    })
}

#[tokio::test(start_paused = true)]
async fn telegram_delivers_messages_in_order_within_quota() -> Result<(), Error> {
    let tg = TelegramBot::new().limit(4);
    let app = tg.router();
    for (i, text) in ["one", "two", "three"].into_iter().enumerate() {
        let (status, _, body) = call(&app, send(text)?).await?;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["ok"], true);
        assert_eq!(body["result"]["message_id"], i + 1);
        assert_eq!(body["result"]["chat"]["id"], 42);
        assert_eq!(body["result"]["text"], text);
    }
    // Other methods, any case, GET or POST.
    let (status, _, body) = call(&app, empty_request(Method::GET, "/bot1:x/getme")?).await?;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["result"]["is_bot"], true);
    advance(secs(1)).await;
    let string_chat = json_request(
        Method::POST,
        "/bot1:x/SENDMESSAGE",
        &json!({ "chat_id": "@chan", "text": "four" }),
    )?;
    assert_eq!(call(&app, string_chat).await?.0, StatusCode::OK);

    let delivered = tg.delivered();
    let texts: Vec<_> = delivered
        .iter()
        .map(|d| (d.chat_id.as_str(), d.text.as_str(), d.at))
        .collect();
    assert_eq!(
        texts,
        [
            ("42", "one", Duration::ZERO),
            ("42", "two", Duration::ZERO),
            ("42", "three", Duration::ZERO),
            ("@chan", "four", secs(1)),
        ]
    );
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn telegram_over_quota_answers_429_with_retry_after_in_body_and_header() -> Result<(), Error>
{
    let tg = TelegramBot::new().limit(2).window(secs(1)).penalty(secs(7));
    let app = tg.router();
    assert_eq!(call(&app, send("a")?).await?.0, StatusCode::OK);
    assert_eq!(call(&app, send("b")?).await?.0, StatusCode::OK);
    let (status, headers, body) = call(&app, send("c")?).await?;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(headers["retry-after"], "7");
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(body, too_many(7));
    // The call that started the penalty is not a call "during" it.
    assert_eq!(tg.calls_during_penalty(), 0);
    assert_eq!(tg.penalty_remaining(), Some(secs(7)));
    assert_eq!(tg.delivered().len(), 2);
    assert_eq!(tg.hits().rate_limited(), 1);
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn telegram_calls_during_the_penalty_double_it_up_to_4310_seconds() -> Result<(), Error> {
    let tg = TelegramBot::new().limit(1).penalty(secs(5));
    let app = tg.router();
    assert_eq!(call(&app, send("ok")?).await?.0, StatusCode::OK);
    assert_eq!(call(&app, send("over")?).await?.2, too_many(5));

    // Each call during the penalty doubles what is left of it, up to the seed's 4310 s.
    let mut seen = Vec::new();
    for _ in 0..12 {
        let (status, headers, body) = call(&app, send("hammer")?).await?;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
        let n = body["parameters"]["retry_after"]
            .as_u64()
            .ok_or("no retry_after")?;
        assert_eq!(headers["retry-after"], n.to_string().as_str());
        assert_eq!(body, too_many(n));
        seen.push(n);
    }
    assert_eq!(
        seen,
        [10, 20, 40, 80, 160, 320, 640, 1280, 2560, 4310, 4310, 4310]
    );
    assert_eq!(tg.calls_during_penalty(), 12);
    assert_eq!(tg.penalty_remaining(), Some(telegram::MAX_PENALTY));

    // Doubling works on what is left: 4310 - 4000 = 310 left, a call makes it 620.
    advance(secs(4000)).await;
    assert_eq!(call(&app, send("again")?).await?.2, too_many(620));
    assert_eq!(tg.calls_during_penalty(), 13);

    // Waiting it out ends the penalty and opens a fresh window.
    advance(secs(620)).await;
    assert_eq!(tg.penalty_remaining(), None);
    assert_eq!(call(&app, send("finally")?).await?.0, StatusCode::OK);
    let texts: Vec<_> = tg.delivered().into_iter().map(|d| d.text).collect();
    assert_eq!(texts, ["ok", "finally"]);
    assert_eq!(tg.hits().served(), 2);
    assert_eq!(tg.hits().rate_limited(), 14);
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn telegram_client_that_waits_retry_after_is_never_escalated() -> Result<(), Error> {
    let tg = TelegramBot::new()
        .limit(1)
        .window(secs(1))
        .penalty(ms(2_500));
    let app = tg.router();
    let mut delivered = 0;
    for i in 0..6 {
        let (status, _, body) = call(&app, send(&format!("m{i}"))?).await?;
        if status == StatusCode::TOO_MANY_REQUESTS {
            let n = body["parameters"]["retry_after"]
                .as_u64()
                .ok_or("no retry_after")?;
            assert_eq!(n, 3, "2.5 s rounds up to 3");
            advance(secs(n)).await;
        } else {
            assert_eq!(status, StatusCode::OK);
            delivered += 1;
        }
    }
    assert_eq!(tg.calls_during_penalty(), 0);
    assert_eq!(tg.delivered().len(), delivered);
    assert_eq!(delivered, 3);
    // OK at 0, 429 at 0, OK at 3, 429 at 3, OK at 6, 429 at 6.
    assert_eq!(
        tg.hits().times(),
        [
            Duration::ZERO,
            Duration::ZERO,
            secs(3),
            secs(3),
            secs(6),
            secs(6)
        ]
    );
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn telegram_never_records_or_prints_the_bot_token() -> Result<(), Error> {
    let tg = TelegramBot::new();
    let app = tg.router();
    call(&app, send("hi")?).await?;
    call(&app, empty_request(Method::GET, "/bot123456:SECRET-token")?).await?;
    let paths: Vec<_> = tg.hits().all().into_iter().map(|h| h.path).collect();
    assert_eq!(paths, ["/bot***/sendMessage", "/bot***"]);
    let printed = format!("{tg:?} {:?} {:?}", tg.hits().all(), tg.delivered());
    assert!(!printed.contains("SECRET"), "{printed}");
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn telegram_bad_requests_get_400_or_404_descriptions() -> Result<(), Error> {
    let tg = TelegramBot::new();
    let app = tg.router();
    let raw = Request::post(TOKEN_PATH).body(Full::new(Bytes::from_static(b"\xff\xfe garbage")))?;
    let (status, _, body) = call(&app, raw).await?;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["ok"], false);
    assert_eq!(body["error_code"], 400);
    assert!(body["description"]
        .as_str()
        .is_some_and(|d| d.starts_with("Bad Request: ")));

    let no_text = json_request(Method::POST, TOKEN_PATH, &json!({ "chat_id": 1 }))?;
    assert_eq!(
        call(&app, no_text).await?.2["description"],
        "Bad Request: message text is empty"
    );
    let no_chat = json_request(Method::POST, TOKEN_PATH, &json!({ "text": "x" }))?;
    assert_eq!(
        call(&app, no_chat).await?.2["description"],
        "Bad Request: chat_id is empty"
    );

    let (status, _, body) = call(&app, empty_request(Method::GET, "/nothing")?).await?;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(
        body,
        json!({ "ok": false, "error_code": 404, "description": "Not Found" })
    );
    assert!(tg.delivered().is_empty());
    assert_eq!(tg.hits().count_of(Outcome::Rejected), 4);
    Ok(())
}

// ---------------------------------------------------------------------------------
// GLM
// ---------------------------------------------------------------------------------

fn glm_call() -> Result<Request<Full<Bytes>>, http::Error> {
    json_request(
        Method::POST,
        glm::PATH,
        &json!({ "model": "glm-4-flash", "messages": [{ "role": "user", "content": "hi" }] }),
    )
}

#[tokio::test(start_paused = true)]
async fn glm_serves_50_per_minute_then_answers_429_code_1302() -> Result<(), Error> {
    let glm = GlmApi::new();
    let app = glm.router();
    for i in 1..=50 {
        let (status, _, body) = call(&app, glm_call()?).await?;
        assert_eq!(status, StatusCode::OK, "call {i}");
        assert_eq!(body["model"], "glm-4-flash");
        assert_eq!(
            body["choices"][0]["message"]["content"],
            format!("glm mock reply #{i}")
        );
    }
    let (status, headers, body) = call(&app, glm_call()?).await?;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        body,
        json!({ "error": { "code": "1302", "message": "您的账户已达到速率限制,请您控制请求频率" } })
    );
    assert!(headers.get("retry-after").is_none());

    advance(ms(59_999)).await;
    assert_eq!(
        call(&app, glm_call()?).await?.0,
        StatusCode::TOO_MANY_REQUESTS
    );
    advance(ms(1)).await;
    let (status, _, body) = call(&app, glm_call()?).await?;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "glm mock reply #51"
    );
    assert_eq!(
        glm.hits().times_of(Outcome::RateLimited),
        [Duration::ZERO, ms(59_999)]
    );
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn glm_always_rate_limited_answers_1302_until_switched_off() -> Result<(), Error> {
    let glm = GlmApi::new().always_rate_limited(true);
    let app = glm.router();
    for _ in 0..3 {
        let (status, _, body) = call(&app, glm_call()?).await?;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(body["error"]["code"], glm::RATE_LIMIT_CODE);
    }
    glm.set_always_rate_limited(false);
    assert_eq!(call(&app, glm_call()?).await?.0, StatusCode::OK);
    assert_eq!((glm.hits().rate_limited(), glm.hits().served()), (3, 1));
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn glm_malformed_body_gets_400_with_a_message() -> Result<(), Error> {
    let glm = GlmApi::new();
    let app = glm.router();
    let raw = Request::post(glm::PATH).body(Full::new(Bytes::from_static(b"{\"messages\": [")))?;
    let (status, _, body) = call(&app, raw).await?;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["code"], "1214");
    assert!(body["error"]["message"]
        .as_str()
        .is_some_and(|m| m.contains("not valid JSON")));
    // The next good call is reply #1: a rejected call is not a served one.
    assert_eq!(
        call(&app, glm_call()?).await?.2["choices"][0]["message"]["content"],
        "glm mock reply #1"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------
// OpenAI-compatible
// ---------------------------------------------------------------------------------

fn chat(stream: bool) -> Result<Request<Full<Bytes>>, http::Error> {
    json_request(
        Method::POST,
        openai::PATH,
        &json!({ "model": "gpt-4o-mini", "stream": stream, "messages": [{ "role": "user", "content": "hi" }] }),
    )
}

#[tokio::test(start_paused = true)]
async fn openai_within_quota_answers_json_naming_the_backend() -> Result<(), Error> {
    let api = OpenAiApi::new().name("fallback").limit(3).window(secs(60));
    let app = api.router();
    let (status, headers, body) = call(&app, chat(false)?).await?;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers[openai::BACKEND_HEADER], "fallback");
    assert_eq!(headers["x-ratelimit-limit-requests"], "3");
    assert_eq!(headers["x-ratelimit-remaining-requests"], "2");
    assert_eq!(headers["x-ratelimit-reset-requests"], "1m0s");
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["model"], "gpt-4o-mini");
    assert_eq!(body["id"], "chatcmpl-fallback-1");
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "mock reply from fallback"
    );
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn openai_over_quota_answers_429_with_retry_after_ms_and_reset_headers() -> Result<(), Error>
{
    let api = OpenAiApi::new().name("primary").limit(2).window(secs(60));
    let app = api.router();
    assert_eq!(call(&app, chat(false)?).await?.0, StatusCode::OK); // t = 0
    assert_eq!(call(&app, chat(false)?).await?.0, StatusCode::OK);
    advance(ms(15_500)).await;
    let (status, headers, body) = call(&app, chat(false)?).await?;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(headers["retry-after-ms"], "44500");
    assert_eq!(headers["x-ratelimit-reset-requests"], "44.5s");
    assert_eq!(headers["x-ratelimit-remaining-requests"], "0");
    assert_eq!(headers[openai::BACKEND_HEADER], "primary");
    assert!(headers.get("retry-after").is_none());
    assert_eq!(
        body,
        json!({ "error": {
            "message": "Rate limit reached for requests",
            "type": "requests",
            "param": null,
            "code": "rate_limit_exceeded",
        } })
    );
    // The window closes 60 s after its first call.
    advance(ms(44_499)).await;
    assert_eq!(call(&app, chat(false)?).await?.1["retry-after-ms"], "1");
    advance(ms(1)).await;
    assert_eq!(call(&app, chat(false)?).await?.0, StatusCode::OK);
    assert_eq!(
        api.hits().times_of(Outcome::RateLimited),
        [ms(15_500), ms(59_999)]
    );
    Ok(())
}

/// Reads a body frame by frame, noting the (tokio) instant each frame arrived.
async fn frames<B>(mut body: B) -> Result<Vec<(Instant, String)>, Error>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: Into<Error>,
{
    let mut out = Vec::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.map_err(Into::into)?.into_data() {
            out.push((Instant::now(), String::from_utf8(data.to_vec())?));
        }
    }
    Ok(out)
}

fn expected_events(reply_words: &[&str]) -> Vec<Value> {
    let mut events: Vec<Value> = reply_words
        .iter()
        .map(|w| json!({ "content": w }))
        .collect();
    events.push(json!({}));
    events
}

/// Splits an SSE text into its `data:` payloads.
fn sse_data(text: &str) -> Vec<String> {
    text.split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|e| e.strip_prefix("data: ").unwrap_or(e).to_owned())
        .collect()
}

#[tokio::test(start_paused = true)]
async fn openai_stream_in_process_sends_each_event_one_gap_apart() -> Result<(), Error> {
    let api = OpenAiApi::new()
        .reply("alpha beta gamma")
        .stream_gap(ms(100));
    let resp = api.router().oneshot(chat(true)?).await?;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let start = Instant::now();
    let frames = frames(resp.into_body()).await?;

    // One frame per event: three words, the stop chunk, [DONE].
    let times: Vec<_> = frames.iter().map(|(t, _)| *t - start).collect();
    assert_eq!(times, [Duration::ZERO, ms(100), ms(200), ms(300), ms(400)]);
    let data: Vec<_> = frames.iter().flat_map(|(_, f)| sse_data(f)).collect();
    assert_eq!(data.len(), 5);
    assert_eq!(data[4], "[DONE]");
    let chunks: Vec<Value> = data[..4]
        .iter()
        .map(|d| serde_json::from_str(d))
        .collect::<Result<_, _>>()?;
    let deltas: Vec<_> = chunks
        .iter()
        .map(|c| c["choices"][0]["delta"].clone())
        .collect();
    assert_eq!(deltas, expected_events(&["alpha", " beta", " gamma"]));
    assert_eq!(chunks[3]["choices"][0]["finish_reason"], "stop");
    assert!(chunks
        .iter()
        .all(|c| c["object"] == "chat.completion.chunk" && c["id"] == "chatcmpl-openai-1"));
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn openai_sse_over_a_real_server_arrives_in_several_chunks() -> Result<(), Error> {
    let api = OpenAiApi::new()
        .name("remote")
        .reply("one two three")
        .stream_gap(ms(250));
    let server = MockServer::start(api.router()).await?;
    let req = json_request(
        Method::POST,
        &server.url(openai::PATH),
        &json!({ "stream": true, "messages": [] }),
    )?;
    let resp = client().request(req).await?;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    assert_eq!(resp.headers()[openai::BACKEND_HEADER], "remote");
    let start = Instant::now();
    let frames = frames(resp.into_body()).await?;

    // The events did not arrive as one blob: at least one frame per distinct send time,
    // and the last came three gaps after the first (on the paused clock).
    let mut arrival: Vec<_> = frames.iter().map(|(t, _)| *t - start).collect();
    arrival.dedup();
    assert!(arrival.len() >= 5, "events arrived at {arrival:?}");
    assert_eq!(arrival.last().copied(), Some(ms(1_000)));
    let text: String = frames.iter().map(|(_, f)| f.as_str()).collect();
    let data = sse_data(&text);
    assert_eq!(data.len(), 5);
    assert_eq!(data[4], "[DONE]");
    let deltas: Vec<Value> = data[..4]
        .iter()
        .map(|d| serde_json::from_str::<Value>(d).map(|c| c["choices"][0]["delta"].clone()))
        .collect::<Result<_, _>>()?;
    assert_eq!(deltas, expected_events(&["one", " two", " three"]));
    assert_eq!(api.hits().served(), 1);
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn openai_malformed_body_gets_400_invalid_request_error() -> Result<(), Error> {
    let api = OpenAiApi::new();
    let app = api.router();
    let raw = Request::post(openai::PATH).body(Full::new(Bytes::from_static(b"stream=true")))?;
    let (status, headers, body) = call(&app, raw).await?;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["type"], "invalid_request_error");
    assert!(body["error"]["message"]
        .as_str()
        .is_some_and(|m| m.contains("could not parse the JSON body")));
    assert_eq!(headers[openai::BACKEND_HEADER], "openai");
    let (status, _, _) = call(&app, empty_request(Method::GET, openai::PATH)?).await?;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(api.hits().count_of(Outcome::Rejected), 2);
    Ok(())
}

#[tokio::test]
async fn every_mock_answers_over_a_real_server() -> Result<(), Error> {
    let client = client();
    let glm = GlmApi::new().limit(0);
    let server = MockServer::start(glm.router()).await?;
    let req = json_request(
        Method::POST,
        &server.url(glm::PATH),
        &json!({ "messages": [] }),
    )?;
    let resp = client.request(req).await?;
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(body_json(resp.into_body()).await?["error"]["code"], "1302");

    let tg = TelegramBot::new().limit(0).penalty(secs(30));
    let server = MockServer::start(tg.router()).await?;
    let req = json_request(
        Method::POST,
        &server.url(TOKEN_PATH),
        &json!({ "chat_id": 1, "text": "x" }),
    )?;
    let resp = client.request(req).await?;
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(resp.headers()["retry-after"], "30");
    assert_eq!(body_json(resp.into_body()).await?, too_many(30));

    let cards = DingTalkCards::new().tenant_qps(0);
    let server = MockServer::start(cards.router()).await?;
    let req = json_request(
        Method::PUT,
        &server.url("/v1.0/card/streaming"),
        &json!({ "outTrackId": "c" }),
    )?;
    let resp = client.request(req).await?;
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        body_json(resp.into_body()).await?["code"],
        dingtalk::TENANT_LIMIT_CODE
    );
    Ok(())
}
