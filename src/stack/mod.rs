//! The standard client stack, from one config: `Retry → Cooldown → RateLimit →
//! classification → client`.
//!
//! [`ClientStackLayer`] assembles the four layers in that order, from a [`Platform`]
//! preset ([`ClientStackLayer::preset`]) or general defaults
//! ([`ClientStackLayer::builder`]), every layer tunable through its own builder. Why
//! this order, the presets' numbers and the stack by hand are in
//! [the guide](crate::guide#stack).
//!
//! # Example
//!
//! ```
//! use std::{convert::Infallible, time::Duration};
//! use http::{Request, Response};
//! use ratewise::stack::{ClientStackLayer, Platform};
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), ratewise::BoxError> {
//! let telegram = ClientStackLayer::preset(Platform::Telegram)
//!     .rate_limit(|rl| rl.per_second(20).burst(20))
//!     .retry(|r| r.max_delay(Duration::from_secs(30)))
//!     .build()?;
//!
//! // Any client service: hyper-util's `Client`, reqwest wrapped in a Service, a mock...
//! let client = service_fn(|_req: Request<String>| async {
//!     Ok::<_, Infallible>(Response::new(String::from(r#"{"ok":true}"#)))
//! });
//! let bot = ServiceBuilder::new().layer(telegram.clone()).service(client);
//!
//! let res = bot
//!     .oneshot(Request::post("http://127.0.0.1:1/bot123/sendMessage").body(String::new())?)
//!     .await?;
//! assert!(res.status().is_success());
//! assert_eq!(telegram.stats().rate_limit.admitted, 1);
//! # Ok(()) }
//! ```

use std::{fmt, time::Duration};

use tower::Layer;

use crate::{
    classify::{Classify, ClassifyLayer, Preset, DEFAULT_BODY_CAP},
    cooldown::{Cooldown, CooldownBuilder, CooldownLayer, CooldownStats},
    rate_limit::{self, RateLimit, RateLimitBuilder},
    retry::{Retry, RetryBuilder, RetryLayer, RetryStats},
    vocabulary::{ConfigError, LayerKind},
    RateLimitLayer,
};

/// The platforms with a preset. With the `serde` feature, a config file names one in
/// lower case: `platform = "telegram"` (`qq`, `dingtalk`, `telegram`, `glm`, `openai`).
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize, serde::Deserialize),
    serde(rename_all = "lowercase")
)]
pub enum Platform {
    /// QQ Bot open platform.
    Qq,
    /// DingTalk open platform (AI cards, robots).
    DingTalk,
    /// Telegram Bot API.
    Telegram,
    /// Zhipu GLM (BigModel) API.
    Glm,
    /// OpenAI and OpenAI-compatible APIs.
    OpenAi,
}

impl Platform {
    /// The `name` label a preset gives its layers' metrics.
    fn name(self) -> &'static str {
        match self {
            Platform::Qq => "qq",
            Platform::DingTalk => "dingtalk",
            Platform::Telegram => "telegram",
            Platform::Glm => "glm",
            Platform::OpenAi => "openai",
        }
    }
}

/// The four layers of the standard client stack, in order. See
/// [the guide](crate::guide#stack).
#[derive(Clone, Debug)]
pub struct ClientStackLayer {
    retry: RetryLayer,
    cooldown: CooldownLayer,
    rate_limit: RateLimitLayer,
    classify: ClassifyLayer<Preset>,
}

/// The service a [`ClientStackLayer`] makes around a client `S`.
pub type ClientStack<S> = Retry<Cooldown<RateLimit<Classify<S, Preset>>>>;

impl ClientStackLayer {
    /// A builder with general defaults: the [`Preset::default`] classifier (every
    /// platform's rate-limit signals), 10 requests per second with a burst of 10 and a
    /// 10 s max wait, exponential cooldown 1 s..60 s, exponential retry 0.5 s..20 s with
    /// 4 attempts, a 60 s max delay and a 60 s deadline.
    pub fn builder() -> ClientStackBuilder {
        ClientStackBuilder {
            classifier: Preset::default(),
            body_cap: DEFAULT_BODY_CAP,
            rate_limit: RateLimitLayer::builder()
                .per_second(10)
                .burst(10)
                .max_wait(Duration::from_secs(10)),
            cooldown: CooldownLayer::builder()
                .exponential(Duration::from_secs(1), Duration::from_secs(60))
                .wait(Duration::from_secs(10)),
            retry: RetryLayer::builder()
                .exponential(Duration::from_millis(500), Duration::from_secs(20))
                .max_attempts(4)
                .max_delay(Duration::from_secs(60))
                .deadline(Duration::from_secs(60)),
        }
    }

    /// A builder with a platform's preset (see the table in
    /// [the guide](crate::guide#presets)).
    pub fn preset(platform: Platform) -> ClientStackBuilder {
        let secs = Duration::from_secs;
        let b = Self::builder().name(platform.name());
        match platform {
            Platform::Qq => b
                .classifier(Preset::qq())
                .rate_limit(|rl| {
                    rl.per_second(4)
                        .burst(1)
                        .max_wait(secs(10))
                        .margin_percent(1)
                })
                .retry(|r| {
                    r.schedule([
                        Duration::from_millis(500),
                        Duration::from_millis(1500),
                        secs(3),
                    ])
                    .max_attempts(4)
                    .max_delay(secs(10))
                    .deadline(secs(30))
                }),
            Platform::DingTalk => b
                .classifier(Preset::dingtalk())
                .rate_limit(|rl| {
                    rl.per_second(18)
                        .burst(2)
                        .max_wait(secs(2))
                        .margin_percent(1)
                })
                .cooldown(|c| c.exponential(secs(2), secs(60)))
                .retry(|r| {
                    r.exponential(secs(2), secs(30))
                        .max_attempts(4)
                        .deadline(secs(30))
                }),
            Platform::Telegram => b
                .classifier(Preset::telegram())
                .rate_limit(|rl| {
                    rl.per_second(28)
                        .burst(2)
                        .max_wait(secs(10))
                        .margin_percent(1)
                })
                .retry(|r| {
                    r.exponential(secs(1), secs(30))
                        .max_attempts(5)
                        .deadline(secs(60))
                }),
            Platform::Glm => b
                .classifier(Preset::glm())
                .rate_limit(|rl| {
                    rl.per_minute(45)
                        .burst(5)
                        .max_wait(secs(30))
                        .margin_percent(1)
                })
                .retry(|r| {
                    r.exponential(secs(1), secs(30))
                        .max_attempts(4)
                        .deadline(secs(120))
                }),
            Platform::OpenAi => b
                .classifier(Preset::openai())
                .rate_limit(|rl| {
                    rl.per_minute(50)
                        .burst(10)
                        .max_wait(secs(30))
                        .margin_percent(1)
                })
                .retry(|r| r.deadline(secs(120))),
        }
    }

    /// The retry layer.
    pub fn retry_layer(&self) -> &RetryLayer {
        &self.retry
    }

    /// The cooldown layer (its [`handle`](CooldownLayer::handle) answers per-key state).
    pub fn cooldown_layer(&self) -> &CooldownLayer {
        &self.cooldown
    }

    /// The rate limit layer (its [`limiter`](RateLimitLayer::limiter) is the shared
    /// bucket).
    pub fn rate_limit_layer(&self) -> &RateLimitLayer {
        &self.rate_limit
    }

    /// The counters of all three layers, shared by every clone of this layer.
    pub fn stats(&self) -> StackStats {
        StackStats {
            rate_limit: self.rate_limit.stats(),
            cooldown: self.cooldown.stats(),
            retry: self.retry.stats(),
        }
    }
}

impl<S> Layer<S> for ClientStackLayer {
    type Service = ClientStack<S>;

    fn layer(&self, client: S) -> Self::Service {
        self.retry.layer(
            self.cooldown
                .layer(self.rate_limit.layer(self.classify.layer(client))),
        )
    }
}

/// The counters of a [`ClientStackLayer`].
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct StackStats {
    /// Admitted, waited, rejected...
    pub rate_limit: rate_limit::RateLimitStats,
    /// Cooldowns started, requests that met a cooldown, probes...
    pub cooldown: CooldownStats,
    /// Retries and give-ups.
    pub retry: RetryStats,
}

/// Builds a [`ClientStackLayer`]; each method changes one thing.
pub struct ClientStackBuilder {
    classifier: Preset,
    body_cap: usize,
    rate_limit: RateLimitBuilder,
    cooldown: CooldownBuilder,
    retry: RetryBuilder,
}

impl fmt::Debug for ClientStackBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientStackBuilder")
            .field("classifier", &self.classifier)
            .field("body_cap", &self.body_cap)
            .field("retry", &self.retry)
            .finish_non_exhaustive()
    }
}

impl ClientStackBuilder {
    /// The classifier (default: the preset's).
    pub fn classifier(mut self, classifier: Preset) -> Self {
        self.classifier = classifier;
        self
    }

    /// How much of a body the classifier may see (default 64 KiB).
    pub fn body_cap(mut self, cap: usize) -> Self {
        self.body_cap = cap;
        self
    }

    /// The `name` label of every layer's [metrics](crate::metrics) and of the retry's
    /// `call` span (default `"default"`; a preset's is its platform's, e.g.
    /// `"telegram"`). A layer's own `name`, set after this, wins.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        let name = name.into();
        self.rate_limit = self.rate_limit.name(name.as_str());
        self.cooldown = self.cooldown.name(name.as_str());
        self.retry = self.retry.name(name);
        self
    }

    /// Tune the rate limiter: `f` gets the preset's builder.
    pub fn rate_limit(mut self, f: impl FnOnce(RateLimitBuilder) -> RateLimitBuilder) -> Self {
        self.rate_limit = f(self.rate_limit);
        self
    }

    /// Tune the cooldown: `f` gets the preset's builder.
    pub fn cooldown(mut self, f: impl FnOnce(CooldownBuilder) -> CooldownBuilder) -> Self {
        self.cooldown = f(self.cooldown);
        self
    }

    /// Tune the retry: `f` gets the preset's builder.
    pub fn retry(mut self, f: impl FnOnce(RetryBuilder) -> RetryBuilder) -> Self {
        self.retry = f(self.retry);
        self
    }

    /// The layer; an invalid field of any layer is a [`ConfigError`] naming the
    /// layer and the field.
    pub fn build(self) -> Result<ClientStackLayer, ConfigError> {
        if self.body_cap == 0 {
            return Err(ConfigError::new(
                LayerKind::Stack,
                "body_cap",
                "must be greater than zero",
            ));
        }
        // Keys read from the body: the retry, outermost, parses it once per call.
        let needs_body = self.rate_limit.needs_body() || self.cooldown.needs_body();
        let retry = if needs_body {
            self.retry.parse_json_body(true)
        } else {
            self.retry
        };
        Ok(ClientStackLayer {
            retry: retry.build()?,
            cooldown: self.cooldown.build()?,
            rate_limit: self.rate_limit.build()?,
            classify: ClassifyLayer::new(self.classifier).body_cap(self.body_cap),
        })
    }
}
