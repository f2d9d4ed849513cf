//! The client stack from a config file (`ratewise::config::StackConfig`): the file's
//! limits and cooldown are what the upstream sees, through the Telegram mock on tokio's
//! paused clock; a misspelled key, a bad duration and a zero rate are refused with
//! their place in the file.
#![cfg(all(feature = "serde", feature = "testing"))]

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
    time::Duration,
};

use http::{Method, Request, Response, StatusCode};
use ratewise::{
    config::{ParseError, StackConfig},
    stack::ClientStackLayer,
    testing::{json_request, Outcome, TelegramBot},
    BoxError, ConfigError,
};
use serde_json::json;
use tokio::{task::JoinSet, time::Instant};
use tower::{service_fn, ServiceBuilder, ServiceExt};

/// The sample a user copies: a Telegram bot's stack.
const TELEGRAM_TOML: &str = include_str!("../examples/telegram.toml");
/// Every key, one alternative each.
const REFERENCE_TOML: &str = include_str!("../examples/ratewise.toml");

fn parse(text: &str) -> Result<StackConfig, ParseError> {
    let toml = toml::Deserializer::parse(text).expect("TOML syntax");
    StackConfig::from_deserializer(toml)
}

fn stack(text: &str) -> ClientStackLayer {
    parse(text)
        .expect("a valid file")
        .build()
        .expect("a valid config")
}

/// `TELEGRAM_TOML` with `from` replaced by `to` (which must occur).
fn edited(from: &str, to: &str) -> String {
    assert!(TELEGRAM_TOML.contains(from), "{from:?} not in the sample");
    TELEGRAM_TOML.replacen(from, to, 1)
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Sends `per_chat` messages to each of `chats` chats, all at once from one task per
/// message, through `stack` to `bot`; returns each caller's status.
async fn send(
    bot: &TelegramBot,
    stack: &ClientStackLayer,
    chats: u64,
    per_chat: u64,
) -> Vec<StatusCode> {
    let client = ServiceBuilder::new()
        .layer(stack.clone())
        .service(bot.router());
    let mut calls = JoinSet::new();
    for m in 0..per_chat {
        for chat in 0..chats {
            let client = client.clone();
            calls.spawn(async move {
                let body = json!({"chat_id": 100 + chat, "text": format!("c{chat}-m{m}")});
                let req = json_request(
                    Method::POST,
                    "http://api.telegram.test/bot1:T/sendMessage",
                    &body,
                )?;
                Ok::<_, BoxError>(client.oneshot(req).await?.status())
            });
            tokio::task::yield_now().await;
        }
    }
    let mut statuses = Vec::new();
    while let Some(done) = calls.join_next().await {
        statuses.push(done.expect("no panic").expect("every call answered"));
    }
    statuses
}

/// The sample file's stack against a bot that allows 30 calls per second and one per
/// second per chat (and penalises the whole bot for a violation): every message gets
/// through without a single 429, the bot sees the file's 25 per second (not the
/// preset's 28) and the file's one per second per chat.
#[tokio::test(start_paused = true)]
async fn the_sample_file_configures_the_limits_the_upstream_sees() {
    let bot = TelegramBot::new()
        .limit(30)
        .window(Duration::from_secs(1))
        .per_chat(1, Duration::from_secs(1));
    let stack = stack(TELEGRAM_TOML);

    let statuses = send(&bot, &stack, 4, 3).await;
    assert_eq!(statuses, vec![StatusCode::OK; 12]);
    assert_eq!(bot.hits().rate_limited(), 0, "a 429 reached the client");
    assert_eq!(bot.calls_during_penalty(), 0);

    let delivered = bot.delivered();
    assert_eq!(delivered.len(), 12);
    // The main rate: 25 per second, burst 1, padded by the preset's 1 %: 40.4 ms apart.
    // The preset's own 28 per second would be 36.1 ms.
    let times: Vec<Duration> = delivered.iter().map(|d| d.at).collect();
    for pair in times.windows(2) {
        assert!(
            pair[1] - pair[0] >= Duration::from_micros(40_400),
            "{times:?}"
        );
    }
    // The per-chat limit from `[[rate_limit.limits]]`: 1 s plus 1 % between two
    // messages to one chat.
    let mut per_chat: BTreeMap<String, Vec<Duration>> = BTreeMap::new();
    for d in &delivered {
        per_chat.entry(d.chat_id.clone()).or_default().push(d.at);
    }
    assert_eq!(per_chat.len(), 4);
    for (chat, at) in &per_chat {
        assert_eq!(at.len(), 3);
        for pair in at.windows(2) {
            assert!(pair[1] - pair[0] >= ms(1010), "chat {chat}: {at:?}");
        }
    }
    // And no slower than those limits make it: the last chat's third message leaves
    // 2.02 s after its first, which left within the first 4 × 40.4 ms.
    assert!(*times.last().unwrap() <= ms(2020 + 4 * 41), "{times:?}");
}

/// The file's cooldown holds: a bot that allows one call per second answers the second
/// message 429 `retry_after: 5`; the stack calls again only after the 5 s plus the
/// file's `precheck = "250ms"`, and never during a penalty.
#[tokio::test(start_paused = true)]
async fn the_cooldown_from_the_file_holds_past_the_servers_hint() {
    let bot = TelegramBot::new()
        .limit(1)
        .window(Duration::from_secs(1))
        .penalty(Duration::from_secs(5));
    let stack = stack(TELEGRAM_TOML);

    let statuses = send(&bot, &stack, 3, 1).await;
    assert_eq!(statuses, vec![StatusCode::OK; 3]);
    assert_eq!(bot.calls_during_penalty(), 0);
    let hits = bot.hits();
    let limited = hits.times_of(Outcome::RateLimited);
    let served = hits.times_of(Outcome::Served);
    println!("served at {served:?}, 429 at {limited:?}");
    // 0: served. One cell later (40.4 ms, on tokio's 1 ms timer): the second message,
    // the 429 that starts a 5 s penalty.
    assert_eq!(served.len(), 3, "{served:?}");
    assert_eq!(served[0], Duration::ZERO);
    assert_eq!(limited.len(), 2, "{limited:?}");
    assert!(
        limited[0] >= Duration::from_micros(40_400) && limited[0] <= ms(41),
        "{limited:?}"
    );
    // The cooldown ends 5 s after that 429, plus the file's 250 ms precheck: the probe
    // goes then, not at 5 s.
    let reopened = limited[0] + Duration::from_secs(5) + ms(250);
    assert!(
        served[1] >= reopened && served[1] <= reopened + ms(1),
        "{served:?}"
    );
    // The third message one cell after it: a second 429, and the same again.
    let reopened = limited[1] + Duration::from_secs(5) + ms(250);
    assert!(
        served[2] >= reopened && served[2] <= reopened + ms(1),
        "{served:?}"
    );
    assert_eq!(stack.stats().cooldown.cooldowns_started, 2);
}

/// A key from the file: the cooldown keyed by the `x-tenant` header cools only the
/// tenant that was told to wait.
#[tokio::test(start_paused = true)]
async fn a_header_key_from_the_file_cools_one_tenant() {
    let config = r#"
        [rate_limit]
        per_second = 100
        [cooldown]
        exponential = { base = "2s", cap = "10s" }
        key = { header = "x-tenant" }
    "#;
    let start = Instant::now();
    let calls: Arc<Mutex<Vec<(String, Duration)>>> = Arc::default();
    let log = calls.clone();
    let upstream = service_fn(move |req: Request<String>| {
        let tenant = req.headers()["x-tenant"].to_str().unwrap().to_owned();
        let first_of_a = {
            let mut log = log.lock().unwrap();
            log.push((tenant.clone(), start.elapsed()));
            tenant == "a" && log.iter().filter(|(t, _)| t == "a").count() == 1
        };
        async move {
            let status = if first_of_a { 429 } else { 200 };
            Response::builder().status(status).body(String::new())
        }
    });
    let client = ServiceBuilder::new().layer(stack(config)).service(upstream);
    let call = |tenant: &str| {
        let req = Request::post("http://api.test/send")
            .header("x-tenant", tenant)
            .body(String::new())
            .unwrap();
        client.clone().oneshot(req)
    };
    let (a, b) = tokio::join!(call("a"), async {
        tokio::time::sleep(ms(100)).await;
        call("b").await
    });
    assert_eq!(a.unwrap().status(), StatusCode::OK);
    assert_eq!(b.unwrap().status(), StatusCode::OK);
    let calls = calls.lock().unwrap().clone();
    // Tenant a: a 429 (no hint), then the retry after the file's 2 s backoff. Tenant b
    // goes through at once, while a cools.
    assert_eq!(
        calls,
        [
            ("a".to_owned(), ms(0)),
            ("b".to_owned(), ms(100)),
            ("a".to_owned(), ms(2000))
        ],
        "{calls:?}"
    );
}

/// A misspelled key is refused with its path in the file.
#[test]
fn a_misspelled_key_names_its_path() {
    let err = parse(&edited("per_period = \"1s\"", "per_perod = \"1s\"")).unwrap_err();
    assert_eq!(err.path(), "rate_limit.limits[0].per_perod");
    let text = err.to_string();
    assert!(
        text.starts_with("invalid config at `rate_limit.limits[0].per_perod`: "),
        "{text}"
    );
    assert!(text.contains("unknown field `per_perod`"), "{text}");

    let err = parse(&edited("[cooldown]", "[cooldwon]")).unwrap_err();
    assert_eq!(err.path(), "cooldwon", "{err}");
    let err = parse(&edited(
        "platform = \"telegram\"",
        "platform = \"telegarm\"",
    ))
    .unwrap_err();
    assert_eq!(err.path(), "platform", "{err}");
    assert!(
        err.message().contains("unknown variant `telegarm`"),
        "{err}"
    );
    let err = parse(&edited(
        "{ json_field = \"/chat_id\" }",
        "{ json_feild = \"/chat_id\" }",
    ))
    .unwrap_err();
    assert_eq!(err.path(), "rate_limit.limits[0].key", "{err}");
}

/// A bad duration is refused naming its key; so is a number without a unit.
#[test]
fn a_bad_duration_names_its_key() {
    let err = parse(&edited("max_wait = \"20s\"", "max_wait = \"20 parsecs\"")).unwrap_err();
    assert_eq!(err.path(), "rate_limit.max_wait");
    assert!(
        err.to_string().contains("invalid duration \"20 parsecs\""),
        "{err}"
    );

    let err = parse(&edited("deadline = \"90s\"", "deadline = 90")).unwrap_err();
    assert_eq!(err.path(), "retry.deadline");
    assert!(err.message().contains("a duration with its unit"), "{err}");

    let err = parse("[retry]\nschedule = [\"500ms\", \"1.5\"]\n").unwrap_err();
    assert_eq!(err.path(), "retry.schedule[1]", "{err}");
}

/// A zero rate passes the parser and is refused by the builder, naming the builder
/// call and its place in the file.
#[test]
fn a_zero_rate_names_its_field() {
    let config = parse(&edited("per_second = 25", "per_second = 0")).unwrap();
    let err = config.build().unwrap_err();
    assert_eq!(err.field(), "per_second");
    assert_eq!(
        err.to_string(),
        "invalid rate_limit configuration: `per_second` must be at least 1 (got 0) (at `rate_limit.per_second`)"
    );

    let two_limits = format!(
        "{TELEGRAM_TOML}\n[[rate_limit.limits]]\nper_period = \"0s\"\nkey = \"authority\"\n"
    );
    let err = parse(&two_limits).unwrap().build().unwrap_err();
    assert_eq!(err.field(), "per_period");
    assert!(
        err.to_string()
            .ends_with("(at `rate_limit.limits[1].per_period`)"),
        "{err}"
    );

    // The same through `builder()`, which checks the whole file first.
    let err = parse(&two_limits).unwrap().builder().unwrap_err();
    assert!(
        err.to_string()
            .ends_with("(at `rate_limit.limits[1].per_period`)"),
        "{err}"
    );
}

/// Other values the builders refuse, each at its place; and keys that contradict each
/// other.
#[test]
fn invalid_values_and_conflicts_name_their_place() {
    let err = |text: &str| -> ConfigError { parse(text).unwrap().build().unwrap_err() };
    let cases = [
        ("[rate_limit]\nburst = 0\n", "rate_limit.burst"),
        (
            "[rate_limit]\nsliding_window = { n = 10, window = \"0s\" }\n",
            "rate_limit.sliding_window",
        ),
        ("[[rate_limit.limits]]\nburst = 2\n", "rate_limit.limits[0]"),
        (
            "[[rate_limit.limits]]\nper_minute = 0\n",
            "rate_limit.limits[0].per_minute",
        ),
        (
            "[rate_limit]\nper_second = 5\nper_minute = 60\n",
            "rate_limit.per_minute",
        ),
        (
            "[rate_limit]\nkey = { header = \"x tenant\" }\n",
            "rate_limit.key.header",
        ),
        (
            "[cooldown]\nlinear = { base = \"5s\", cap = \"1s\" }\n",
            "cooldown.linear.cap",
        ),
        (
            "[cooldown]\nexponential = { base = \"0s\", cap = \"1s\" }\n",
            "cooldown.exponential.base",
        ),
        (
            "[cooldown]\nmax_cooldown = \"0s\"\n",
            "cooldown.max_cooldown",
        ),
        (
            "[cooldown]\nfail_fast = true\nmax_wait = \"1s\"\n",
            "cooldown.fail_fast",
        ),
        ("[retry]\nmax_attempts = 0\n", "retry.max_attempts"),
        (
            "[retry]\nschedule = [\"1s\"]\nexponential = { base = \"1s\", cap = \"2s\" }\n",
            "retry.schedule",
        ),
        ("[retry]\nschedule = [\"2m\"]\n", "retry.max_delay"),
        (
            "[retry]\ntps_budget = { ttl = \"2m\", min_per_sec = 1, retry_percent = 0.1 }\n",
            "retry.tps_budget.ttl",
        ),
        ("body_cap = 0\n", "body_cap"),
    ];
    for (text, path) in cases {
        let message = err(text).to_string();
        assert!(
            message.ends_with(&format!("(at `{path}`)")),
            "{text:?}: {message}"
        );
    }
}

/// Keys the file leaves out keep the preset's values; a file without `platform` starts
/// from the general defaults; JSON reads the same as TOML.
#[test]
fn left_out_keys_keep_the_presets_values() {
    let glm = stack("platform = \"glm\"\n");
    let preset = ClientStackLayer::preset(ratewise::Platform::Glm)
        .build()
        .unwrap();
    assert_eq!(
        glm.rate_limit_layer().quota(),
        preset.rate_limit_layer().quota()
    );
    assert_eq!(
        glm.rate_limit_layer().max_wait(),
        Some(Duration::from_secs(30))
    );

    let defaults = stack("");
    assert_eq!(defaults.rate_limit_layer().quota().burst(), 10);

    let json = r#"{"platform": "glm", "rate_limit": {"burst": 2}}"#;
    let from_json =
        StackConfig::from_deserializer(&mut serde_json::Deserializer::from_str(json)).unwrap();
    let from_json = from_json.build().unwrap();
    assert_eq!(from_json.rate_limit_layer().quota().burst(), 2);
    assert_eq!(
        from_json.rate_limit_layer().quota().replenish_interval(),
        preset.rate_limit_layer().quota().replenish_interval()
    );

    // The reference file, every key set, builds.
    let reference = stack(REFERENCE_TOML);
    assert_eq!(
        reference.rate_limit_layer().max_wait(),
        Some(Duration::from_secs(20))
    );
}

/// The sample in YAML: the same stack, and the bot sees the same thing. The key's
/// one-entry form (`{ json_field: /chat_id }`) reads as it does in TOML; a misspelled
/// key names its path.
#[tokio::test(start_paused = true)]
async fn yaml_configures_the_same_stack() {
    let yaml = "
platform: telegram
rate_limit:
  per_second: 25
  burst: 1
  max_wait: 20s
  limits:
    - per_period: 1s
      margin_percent: 1
      key: { json_field: /chat_id }
cooldown:
  precheck: 250ms
  max_cooldown: 10m
retry:
  max_attempts: 5
  deadline: 90s
";
    let from_yaml = StackConfig::from_deserializer(serde_yaml_ng::Deserializer::from_str(yaml))
        .unwrap()
        .build()
        .unwrap();
    let mut delivered = Vec::new();
    for stack in [from_yaml, stack(TELEGRAM_TOML)] {
        // A new bot each time: its times count from its creation.
        let bot = TelegramBot::new().per_chat(1, Duration::from_secs(1));
        assert_eq!(send(&bot, &stack, 2, 2).await, vec![StatusCode::OK; 4]);
        assert_eq!(bot.hits().rate_limited(), 0);
        let times: Vec<Duration> = bot.delivered().iter().map(|d| d.at).collect();
        delivered.push(times);
    }
    assert_eq!(delivered[0], delivered[1]);
    assert_eq!(delivered[0].len(), 4);
    assert!(delivered[0][3] >= ms(1010), "{:?}", delivered[0]);

    let typo = "rate_limit:\n  limits:\n    - per_perod: 1s\n";
    let err =
        StackConfig::from_deserializer(serde_yaml_ng::Deserializer::from_str(typo)).unwrap_err();
    assert_eq!(err.path(), "rate_limit.limits[0].per_perod");
    assert!(
        err.message().starts_with("unknown field `per_perod`"),
        "{err}"
    );
}

/// Environment variables over the file, by the documented convention (`RATEWISE_`,
/// the key's path with `__` between levels), through the `config` crate: the
/// environment's 5 per second is what the upstream sees, and the file's other keys
/// stay.
#[tokio::test(start_paused = true)]
async fn environment_variables_override_the_file() {
    use config::{Config, Environment, File, FileFormat};

    let env = HashMap::from([
        ("RATEWISE_RATE_LIMIT__PER_SECOND".to_owned(), "5".to_owned()),
        ("RATEWISE_COOLDOWN__PRECHECK".to_owned(), "1s".to_owned()),
    ]);
    let layered = Config::builder()
        .add_source(File::from_str(TELEGRAM_TOML, FileFormat::Toml))
        .add_source(
            Environment::with_prefix("RATEWISE")
                .prefix_separator("_")
                .separator("__")
                .source(Some(env)),
        )
        .build()
        .unwrap();
    let stack = StackConfig::from_deserializer(layered)
        .unwrap()
        .build()
        .unwrap();

    let bot = TelegramBot::new().per_chat(1, Duration::from_secs(1));
    let statuses = send(&bot, &stack, 3, 1).await;
    assert_eq!(statuses, vec![StatusCode::OK; 3]);
    // 5 per second plus the preset's 1 % margin: 202 ms apart.
    let times: Vec<Duration> = bot.delivered().iter().map(|d| d.at).collect();
    assert_eq!(times, [ms(0), ms(202), ms(404)]);
    // The file's `max_wait = "20s"` survived the layering.
    assert_eq!(
        stack.rate_limit_layer().max_wait(),
        Some(Duration::from_secs(20))
    );

    let bad = HashMap::from([("RATEWISE_RATE_LIMIT__PER_SECNOD".to_owned(), "5".to_owned())]);
    let layered = Config::builder()
        .add_source(File::from_str(TELEGRAM_TOML, FileFormat::Toml))
        .add_source(
            Environment::with_prefix("RATEWISE")
                .prefix_separator("_")
                .separator("__")
                .source(Some(bad)),
        )
        .build()
        .unwrap();
    let err = StackConfig::from_deserializer(layered).unwrap_err();
    assert_eq!(err.path(), "rate_limit.per_secnod", "{err}");
}
