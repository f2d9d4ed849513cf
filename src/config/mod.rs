//! The client stack from a file (feature `serde`): [`StackConfig`] reads a TOML, YAML
//! or JSON file and hands its settings to the same builders code uses.
//!
//! Every key is a builder call of [`ClientStackLayer`]'s layers, with durations in
//! human form (`"800ms"`, `"1.5s"`, `"2m"`); the keys a file leaves out keep the
//! preset's value (or the general defaults with no `platform`). Unknown keys, wrong
//! types and invalid values are refused with the key's place in the file:
//! `rate_limit.limits[0].per_period`. Every key, from `examples/ratewise.toml`:
//!
//! ```toml
#![doc = include_str!("../../examples/ratewise.toml")]
//! ```
//!
//! Closures (a key or a cost computed in code, an event callback, a shared budget)
//! stay in code: [`StackConfig::builder`] returns the [`ClientStackBuilder`] for them.
//!
//! # Example
//!
//! ```
//! use ratewise::config::StackConfig;
//!
//! let text = r#"
//!     platform = "glm"
//!     [rate_limit]
//!     per_minute = 30
//!     [retry]
//!     deadline = "90s"
//! "#;
//! let config = StackConfig::from_deserializer(toml::Deserializer::parse(text)?)?;
//! let glm = config.build()?;
//! assert_eq!(glm.rate_limit_layer().quota().burst(), 30);
//!
//! let typo = "[rate_limit]\nper_secnd = 5\n";
//! let err = StackConfig::from_deserializer(toml::Deserializer::parse(typo)?).unwrap_err();
//! assert_eq!(err.path(), "rate_limit.per_secnd");
//!
//! let zero = StackConfig::from_deserializer(toml::Deserializer::parse("[rate_limit]\nper_second = 0\n")?)?;
//! let err = zero.build().unwrap_err();
//! assert_eq!(err.field(), "per_second");
//! assert!(err.to_string().contains("(at `rate_limit.per_second`)"), "{err}");
//! # Ok::<(), ratewise::BoxError>(())
//! ```

pub(crate) mod duration;
mod key;
mod sections;

use std::fmt;

use serde::{Deserialize, Deserializer};

use self::sections::{CooldownConfig, RateLimitConfig, RetryConfig};
use crate::{
    stack::{ClientStackBuilder, ClientStackLayer, Platform},
    vocabulary::{ConfigError, LayerKind},
};

/// A [`ClientStackLayer`]'s configuration as a file writes it. Read it with
/// [`from_deserializer`](Self::from_deserializer); make the layer with
/// [`build`](Self::build), or the builder with [`builder`](Self::builder). The keys
/// are in the [module docs](self). It is `Deserialize`, so it can also be one field of
/// an application's own configuration.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StackConfig {
    platform: Option<Platform>,
    body_cap: Option<usize>,
    #[serde(default)]
    rate_limit: RateLimitConfig,
    #[serde(default)]
    cooldown: CooldownConfig,
    #[serde(default)]
    retry: RetryConfig,
}

impl StackConfig {
    /// Reads a configuration from any serde `Deserializer`: `toml::Deserializer`,
    /// `serde_json::Deserializer`, `serde_yaml_ng::Deserializer`, a `config::Config`...
    /// An unknown key, a wrong type or a bad duration is a [`ParseError`] naming its
    /// path in the file.
    ///
    /// # Environment variables over the file
    ///
    /// A layered loader such as the `config` crate (or figment) puts the environment
    /// over the file, and its result is a `Deserializer`. The convention ratewise
    /// documents and tests: the prefix `RATEWISE_`, then the key's path in upper case
    /// with `__` between the levels. `RATEWISE_RATE_LIMIT__PER_SECOND=5` sets
    /// `rate_limit.per_second`, `RATEWISE_PLATFORM=glm` the platform; a misspelled
    /// variable is an unknown key like any other. Lists (`rate_limit.limits`) stay in
    /// the file.
    ///
    /// ```
    /// use config::{Config, Environment, File, FileFormat};
    /// use ratewise::config::StackConfig;
    ///
    /// # let env = std::collections::HashMap::from([("RATEWISE_RATE_LIMIT__PER_SECOND".to_owned(), "5".to_owned())]);
    /// let layered = Config::builder()
    ///     .add_source(File::from_str("platform = \"telegram\"", FileFormat::Toml)) // or File::with_name("ratewise.toml")
    ///     .add_source(Environment::with_prefix("RATEWISE").prefix_separator("_").separator("__")
    /// #       .source(Some(env))
    ///     )
    ///     .build()?;
    /// let stack = StackConfig::from_deserializer(layered)?.build()?;
    /// assert_eq!(stack.rate_limit_layer().quota().burst(), 5);
    /// # Ok::<(), ratewise::BoxError>(())
    /// ```
    pub fn from_deserializer<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Self, ParseError> {
        parse(deserializer)
    }

    /// The layer. An invalid value is a [`ConfigError`] naming the layer and the
    /// builder call, with the value's place in the file at the end of its reason:
    /// "(at `rate_limit.limits[1].per_period`)".
    pub fn build(self) -> Result<ClientStackLayer, ConfigError> {
        let place = Place::of(&self);
        self.apply()?.build().map_err(|err| place.locate(err))
    }

    /// The builder, with the file's settings applied, for what only code can set
    /// (a closure key, an event callback, a shared budget). The file is checked whole
    /// first, so its errors name their place as [`build`](Self::build)'s do.
    pub fn builder(self) -> Result<ClientStackBuilder, ConfigError> {
        self.clone().build()?;
        self.apply()
    }

    /// The preset's (or the defaults') builder with every section applied.
    fn apply(self) -> Result<ClientStackBuilder, ConfigError> {
        let mut builder = match self.platform {
            Some(platform) => ClientStackLayer::preset(platform),
            None => ClientStackLayer::builder(),
        };
        if let Some(cap) = self.body_cap {
            builder = builder.body_cap(cap);
        }
        let builder = self.rate_limit.apply(builder)?;
        let builder = self.cooldown.apply(builder)?;
        self.retry.apply(builder)
    }
}

/// Reads any `Deserialize` type, an error naming the key's path in the file (also the
/// proxy's configuration).
pub(crate) fn parse<'de, T: Deserialize<'de>, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<T, ParseError> {
    serde_path_to_error::deserialize(deserializer).map_err(|err| {
        let path = err.path().to_string();
        let message = err.inner().to_string();
        // Some formats (YAML) start their message with the path, or a part of it.
        let message = match message.split_once(": ") {
            Some((head, rest)) if !head.contains(' ') && path.starts_with(head) => rest.to_owned(),
            _ => message,
        };
        ParseError { path, message }
    })
}

/// Where a builder's error sits in the file: the section of its layer, and the key
/// that holds its field.
struct Place {
    /// `exponential` or `linear`: the cooldown key that holds `base` and `cap`.
    cooldown_backoff: &'static str,
}

impl Place {
    fn of(config: &StackConfig) -> Self {
        Place {
            cooldown_backoff: config.cooldown.backoff_key(),
        }
    }

    fn locate(&self, err: ConfigError) -> ConfigError {
        let field = err.field();
        let path = match (err.layer(), field) {
            (LayerKind::Stack, _) => field.to_owned(),
            (LayerKind::RateLimit, _) => format!("rate_limit.{field}"),
            (LayerKind::Cooldown, "base" | "cap") => {
                format!("cooldown.{}.{field}", self.cooldown_backoff)
            }
            (LayerKind::Cooldown, _) => format!("cooldown.{field}"),
            (LayerKind::Retry, "ttl" | "min_per_sec" | "retry_percent") => {
                format!("retry.tps_budget.{field}")
            }
            (LayerKind::Retry, _) => format!("retry.{field}"),
            _ => return err,
        };
        at(err, &path)
    }
}

/// `err` with its place in the file at the end of its reason.
fn at(err: ConfigError, path: &str) -> ConfigError {
    let reason = format!("{} (at `{path}`)", err.reason());
    ConfigError::new(err.layer(), err.field(), reason)
}

/// A file that could not be read into a [`StackConfig`]: an unknown key, a wrong type,
/// a bad duration or a syntax error, with where it was found.
///
/// ```
/// use ratewise::config::StackConfig;
///
/// let json = r#"{"retry": {"deadline": "90 parsecs"}}"#;
/// let err = StackConfig::from_deserializer(&mut serde_json::Deserializer::from_str(json)).unwrap_err();
/// assert_eq!(err.path(), "retry.deadline");
/// assert!(err.to_string().starts_with("invalid config at `retry.deadline`: invalid duration"), "{err}");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    path: String,
    message: String,
}

impl ParseError {
    /// An error at `path` (`.` for the whole file).
    #[cfg_attr(not(feature = "proxy"), allow(dead_code))]
    pub(crate) fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        ParseError {
            path: path.into(),
            message: message.into(),
        }
    }

    /// The path of the key at fault, `rate_limit.limits[0].per_period` (`.` for the
    /// file as a whole).
    pub fn path(&self) -> &str {
        &self.path
    }

    /// What was wrong, as the format's parser said it.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path == "." {
            write!(f, "invalid config: {}", self.message)
        } else {
            write!(f, "invalid config at `{}`: {}", self.path, self.message)
        }
    }
}

impl std::error::Error for ParseError {}
