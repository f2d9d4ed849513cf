//! [`ProxyConfig`]: the proxy's TOML file, with environment variables over it.

use std::{collections::BTreeMap, net::SocketAddr, time::Duration};

use serde::Deserialize;

use crate::config::{duration, ParseError};

/// The prefix of the environment variables that override the file:
/// `RATEWISE_PROXY__BACKENDS__GLM__RPM=30` sets `backends.glm.rpm`.
pub(crate) const ENV_PREFIX: &str = "RATEWISE_PROXY__";

/// The proxy's configuration, as `examples/proxy.toml` writes it.
///
/// Read it with [`from_toml`](Self::from_toml) (or
/// [`from_toml_and_env`](Self::from_toml_and_env)), then hand it to
/// [`Proxy::from_config`](super::Proxy::from_config), which checks the values and
/// reads the API keys. Unknown keys and wrong types are refused with their path:
/// `backends.glm.rmp`. Durations are written with their unit: `"800ms"`, `"1.5s"`,
/// `"2m"`. [`with_redis_url`](Self::with_redis_url) is `--redis`. Every key, from
/// `examples/proxy.toml`:
///
/// ```toml
#[doc = include_str!("../../examples/proxy.toml")]
/// ```
#[non_exhaustive]
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyConfig {
    /// The address to listen on (default `127.0.0.1:8080`; `--listen` wins).
    #[serde(default)]
    pub(crate) listen: Option<SocketAddr>,
    /// The upstream backends, by name. The name identifies the backend in routes,
    /// stats, metrics, logs and Redis keys: never put a secret in it.
    pub(crate) backends: BTreeMap<String, Backend>,
    /// The models the proxy serves, by the name clients send in `model`.
    pub(crate) models: BTreeMap<String, ModelRoute>,
    /// How long a backend that answered rate-limited is skipped.
    #[serde(default)]
    pub(crate) cooldown: CooldownSettings,
    /// How long a call may wait for a backend, and whether failures move on.
    #[serde(default)]
    pub(crate) routing: RoutingSettings,
    /// Connect, upstream and shutdown timeouts.
    #[serde(default)]
    pub(crate) timeouts: Timeouts,
    /// The largest request body accepted (default 4 MiB); a larger one is answered 413.
    #[serde(default = "default_max_body_bytes")]
    pub(crate) max_body_bytes: usize,
    /// Limits and cooldowns shared through Redis (`--redis` sets the URL).
    #[serde(default)]
    pub(crate) redis: Option<RedisSettings>,
}

/// One upstream: `[backends.<name>]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Backend {
    /// Which API it speaks, for its rate-limit answers: `"glm"` (429 code 1302) or
    /// `"openai"` (429 with `retry-after-ms`).
    pub(crate) kind: BackendKind,
    /// The API's base URL, up to the version: `https://open.bigmodel.cn/api/paas/v4`,
    /// `https://api.openai.com/v1` (`https://` needs the `proxy-tls` feature). The
    /// proxy appends `/chat/completions` or `/embeddings`.
    pub(crate) base_url: String,
    /// The environment variable holding the API key, sent as `Authorization: Bearer`.
    /// Start-up fails, naming the variable, when it is not set. No key: no header.
    #[serde(default)]
    pub(crate) api_key_env: Option<String>,
    /// Requests per minute (GCRA; the burst defaults to the same number).
    #[serde(default)]
    pub(crate) rpm: Option<u32>,
    /// The burst of `rpm`: requests that may go at once.
    #[serde(default)]
    pub(crate) burst: Option<u32>,
    /// A strict window: at most `n` requests in any `per` (`{ n = 10, per = "2s" }`),
    /// alone or beside `rpm`.
    #[serde(default)]
    pub(crate) window: Option<Window>,
    /// Tokens per minute: each call reserves its estimate (the prompt's characters / 4
    /// plus `max_tokens`) before it is sent, and is settled with the `usage` of its
    /// answer (the JSON body's, or the last SSE chunk's; OpenAI-kind streams are asked
    /// for it with `stream_options.include_usage`). A backend without room is skipped
    /// like one over its `rpm`.
    #[serde(default)]
    pub(crate) tpm: Option<u32>,
    /// The window `tpm` is counted over (default 60 s): a testing and advanced knob,
    /// for an API that counts tokens over another period.
    #[serde(default, deserialize_with = "duration::optional")]
    pub(crate) tpm_window: Option<Duration>,
    /// The most requests in flight at once, a streamed answer counting until its end.
    #[serde(default)]
    pub(crate) max_concurrency: Option<usize>,
}

/// `{ n = 10, per = "2s" }`: at most `n` requests in any window of `per`.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Window {
    /// Requests per window.
    pub(crate) n: u32,
    /// The window.
    #[serde(deserialize_with = "duration::required")]
    pub(crate) per: Duration,
}

/// Which API a backend speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum BackendKind {
    /// Zhipu GLM (BigModel): over its limit, 429 `{"error":{"code":"1302",…}}`.
    Glm,
    /// OpenAI or an OpenAI-compatible API.
    OpenAi,
}

/// One model: `[models.<name>]`, its backends in the order they are tried.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ModelRoute {
    /// Tried first, in order.
    pub(crate) primary: Vec<String>,
    /// Tried when every primary backend is cooling, busy or answered rate-limited.
    #[serde(default)]
    pub(crate) fallback: Vec<String>,
}

/// `[cooldown]`: how long a backend that answered rate-limited is skipped.
///
/// A retry hint from the backend (`Retry-After`, `retry-after-ms`) is the cooldown;
/// without one, the backoff after the `n`-th answer in a row: `base·2ⁿ⁻¹` or `base·n`,
/// at most `cap`.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CooldownSettings {
    /// `"exponential"` (default) or `"linear"`.
    #[serde(default)]
    pub(crate) backoff: BackoffKind,
    /// The first cooldown (default 1 s).
    #[serde(default = "one_second", deserialize_with = "duration::required")]
    pub(crate) base: Duration,
    /// The longest backoff (default 60 s).
    #[serde(default = "one_minute", deserialize_with = "duration::required")]
    pub(crate) cap: Duration,
    /// The longest any cooldown may last, a backend's hint included (default: none).
    #[serde(default, deserialize_with = "duration::optional")]
    pub(crate) max: Option<Duration>,
    /// A backend whose cooldown ends within this margin still counts as cooling
    /// (default 0).
    #[serde(default, deserialize_with = "duration::optional")]
    pub(crate) precheck: Option<Duration>,
}

impl Default for CooldownSettings {
    fn default() -> Self {
        CooldownSettings {
            backoff: BackoffKind::Exponential,
            base: one_second(),
            cap: one_minute(),
            max: None,
            precheck: None,
        }
    }
}

/// The shape of the cooldown's backoff.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum BackoffKind {
    /// `base·2ⁿ⁻¹`, at most `cap`.
    #[default]
    Exponential,
    /// `base·n`, at most `cap`.
    Linear,
}

/// `[routing]`: the call's budget.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RoutingSettings {
    /// The longest a call waits, from its arrival, for a backend to recover or have
    /// capacity (default 10 s). Past it the proxy answers 503 with `Retry-After`.
    #[serde(default = "ten_seconds", deserialize_with = "duration::required")]
    pub(crate) max_wait: Duration,
    /// Whether a transient failure (5xx, timeout, connection error) moves the call on
    /// to the next backend (default true).
    #[serde(default = "yes")]
    pub(crate) failover_on_transient: bool,
}

impl Default for RoutingSettings {
    fn default() -> Self {
        RoutingSettings {
            max_wait: ten_seconds(),
            failover_on_transient: true,
        }
    }
}

/// `[timeouts]`.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Timeouts {
    /// Connecting to a backend (default 5 s).
    #[serde(default = "five_seconds", deserialize_with = "duration::required")]
    pub(crate) connect: Duration,
    /// From sending a request to a backend's response headers (default 60 s); a
    /// stream may then take as long as it takes.
    #[serde(default = "one_minute", deserialize_with = "duration::required")]
    pub(crate) upstream: Duration,
    /// On shutdown, how long in-flight requests and streams may take to finish
    /// (default 30 s).
    #[serde(default = "thirty_seconds", deserialize_with = "duration::required")]
    pub(crate) shutdown: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: five_seconds(),
            upstream: one_minute(),
            shutdown: thirty_seconds(),
        }
    }
}

/// `[redis]`: every backend's limit and cooldown shared by the processes that use the
/// same server and prefix.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RedisSettings {
    /// `redis://host:port/db` (it may hold a password: never logged).
    pub(crate) url: String,
    /// The first part of every key (default `ratewise-proxy`).
    #[serde(default = "default_prefix")]
    pub(crate) prefix: String,
    /// How many replicas share the limits: while Redis is unreachable, each keeps
    /// `1/instances` of every limit locally (default 1).
    #[serde(default = "one")]
    pub(crate) instances: u32,
}

impl RedisSettings {
    /// Settings for `url` with the defaults.
    pub(crate) fn new(url: impl Into<String>) -> Self {
        RedisSettings {
            url: url.into(),
            prefix: default_prefix(),
            instances: 1,
        }
    }
}

impl std::fmt::Debug for RedisSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisSettings")
            .field("prefix", &self.prefix)
            .field("instances", &self.instances)
            .finish_non_exhaustive()
    }
}

fn default_max_body_bytes() -> usize {
    4 * 1024 * 1024
}
fn default_prefix() -> String {
    "ratewise-proxy".to_owned()
}
fn one() -> u32 {
    1
}
fn yes() -> bool {
    true
}
fn one_second() -> Duration {
    Duration::from_secs(1)
}
fn five_seconds() -> Duration {
    Duration::from_secs(5)
}
fn ten_seconds() -> Duration {
    Duration::from_secs(10)
}
fn thirty_seconds() -> Duration {
    Duration::from_secs(30)
}
fn one_minute() -> Duration {
    Duration::from_secs(60)
}

impl ProxyConfig {
    /// Shares every backend's limit and cooldown through the Redis server at `url`, as
    /// `ratewise-proxy --redis URL` does: the file's `[redis]` keeps its `prefix` and
    /// `instances` and takes this URL, or the defaults come with it when the file has no
    /// `[redis]`. [`Proxy::from_config`](super::Proxy::from_config) checks the URL.
    ///
    /// ```
    /// use ratewise::proxy::{Proxy, ProxyConfig};
    ///
    /// let text = "[backends.glm]\nkind = \"glm\"\nbase_url = \"http://127.0.0.1:9/v4\"\n[models.glm-4]\nprimary = [\"glm\"]\n";
    /// let config = ProxyConfig::from_toml(text)?.with_redis_url("redis://127.0.0.1:6379/");
    /// # let _ = config;
    /// let config = ProxyConfig::from_toml(text)?.with_redis_url("not a url");
    /// let err = Proxy::from_config(config).unwrap_err();
    /// assert!(err.to_string().contains("(at `redis.url`)"), "{err}");
    /// # Ok::<(), ratewise::BoxError>(())
    /// ```
    pub fn with_redis_url(mut self, url: impl Into<String>) -> Self {
        let url = url.into();
        self.redis = Some(match self.redis.take() {
            Some(settings) => RedisSettings { url, ..settings },
            None => RedisSettings::new(url),
        });
        self
    }

    /// Reads a TOML file's text. A syntax error, an unknown key, a wrong type or a bad
    /// duration is a [`ParseError`] naming its path (`backends.glm.rpm`).
    ///
    /// ```
    /// use ratewise::proxy::ProxyConfig;
    ///
    /// let text = r#"
    ///     [backends.glm]
    ///     kind = "glm"
    ///     base_url = "http://127.0.0.1:9/api/paas/v4"
    ///     rpm = "many"
    ///     [models.glm-4]
    ///     primary = ["glm"]
    /// "#;
    /// let err = ProxyConfig::from_toml(text).unwrap_err();
    /// assert_eq!(err.path(), "backends.glm.rpm");
    /// ```
    pub fn from_toml(text: &str) -> Result<ProxyConfig, ParseError> {
        Self::from_toml_and_env(text, std::iter::empty::<(String, String)>())
    }

    /// Reads a TOML file's text with environment variables over it (pass
    /// `std::env::vars()`).
    ///
    /// # The rule
    ///
    /// A variable `RATEWISE_PROXY__` + the key's path in upper case, with `__` between
    /// the levels, sets that key: `RATEWISE_PROXY__BACKENDS__GLM__RPM=30` sets
    /// `backends.glm.rpm`, `RATEWISE_PROXY__REDIS__URL=redis://…` sets `redis.url`.
    /// Names match the file's keys whatever their case, with `_` standing for `-`
    /// (`…__BACKENDS__GLM_MAIN__RPM` reaches `[backends.glm-main]`). The value is read
    /// as a TOML value (`30`, `true`, `["glm", "openai"]`), else as a string. Other
    /// variables are ignored; a misspelled key is an unknown key like any other, and an
    /// error caused by a variable names it.
    ///
    /// ```
    /// use ratewise::proxy::{Proxy, ProxyConfig};
    ///
    /// let text = "[backends.glm]\nkind = \"glm\"\nbase_url = \"http://127.0.0.1:9/v4\"\nrpm = 45\n[models.glm-4]\nprimary = [\"glm\"]\n";
    /// // `backends.glm.rpm` is 30, not 45:
    /// let env = [("RATEWISE_PROXY__BACKENDS__GLM__RPM".to_owned(), "30".to_owned())];
    /// let proxy = Proxy::from_config(ProxyConfig::from_toml_and_env(text, env)?)?;
    /// # let _ = proxy;
    ///
    /// // An error caused by a variable names it.
    /// let env = [("RATEWISE_PROXY__BACKENDS__GLM__RPM", "lots")];
    /// let err = ProxyConfig::from_toml_and_env(text, env).unwrap_err();
    /// assert_eq!(err.path(), "backends.glm.rpm");
    /// assert!(err.to_string().contains("(set by RATEWISE_PROXY__BACKENDS__GLM__RPM)"), "{err}");
    /// # Ok::<(), ratewise::BoxError>(())
    /// ```
    pub fn from_toml_and_env<I, K, V>(text: &str, env: I) -> Result<ProxyConfig, ParseError>
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<str>,
        V: AsRef<str>,
    {
        let mut table: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| ParseError::new(".", e.to_string().trim_end()))?;
        let mut applied: Vec<(String, String)> = Vec::new();
        let mut vars: Vec<(String, String)> = env
            .into_iter()
            .filter_map(|(k, v)| {
                let k = k.as_ref();
                k.starts_with(ENV_PREFIX)
                    .then(|| (k.to_owned(), v.as_ref().to_owned()))
            })
            .collect();
        vars.sort();
        for (name, value) in vars {
            let path = apply_env(&mut table, &name, &value)?;
            applied.push((path, name));
        }
        crate::config::parse(table).map_err(|err| {
            match applied
                .iter()
                .find(|(path, _)| err.path() == path || err.path().starts_with(&format!("{path}.")))
            {
                Some((_, var)) => {
                    ParseError::new(err.path(), format!("{} (set by {var})", err.message()))
                }
                None => err,
            }
        })
    }
}

/// Sets the key `name` stands for; returns its path in the file.
fn apply_env(table: &mut toml::Table, name: &str, value: &str) -> Result<String, ParseError> {
    let rest = &name[ENV_PREFIX.len()..];
    let segments: Vec<&str> = rest.split("__").collect();
    if segments.iter().any(|s| s.is_empty()) {
        return Err(ParseError::new(
            ".",
            format!("environment variable {name}: an empty key between `__`"),
        ));
    }
    let mut path: Vec<String> = Vec::new();
    let mut here = table;
    for (i, segment) in segments.iter().enumerate() {
        let key = here
            .keys()
            .find(|k| k.to_ascii_uppercase().replace('-', "_") == segment.to_ascii_uppercase())
            .cloned()
            .unwrap_or_else(|| segment.to_ascii_lowercase());
        path.push(key.clone());
        if i + 1 == segments.len() {
            here.insert(key, env_value(value));
            break;
        }
        let next = here
            .entry(key)
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        here = match next {
            toml::Value::Table(t) => t,
            _ => {
                return Err(ParseError::new(
                    path.join("."),
                    format!(
                        "environment variable {name}: `{}` is not a table",
                        path.join(".")
                    ),
                ))
            }
        };
    }
    Ok(path.join("."))
}

/// A variable's value read as a TOML value (`30`, `true`, `["a"]`), else as a string.
fn env_value(raw: &str) -> toml::Value {
    format!("v = {raw}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
        [backends.glm]
        kind = "glm"
        base_url = "http://127.0.0.1:9/api/paas/v4"
        rpm = 45

        [backends.glm-backup]
        kind = "openai"
        base_url = "http://127.0.0.1:9/v1"

        [models.glm-4]
        primary = ["glm"]
        fallback = ["glm-backup"]
    "#;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn defaults_fill_what_the_file_leaves_out() {
        let c = ProxyConfig::from_toml(BASE).unwrap();
        assert_eq!(c.max_body_bytes, 4 * 1024 * 1024);
        assert_eq!(c.routing.max_wait, Duration::from_secs(10));
        assert!(c.routing.failover_on_transient);
        assert_eq!(c.cooldown.backoff, BackoffKind::Exponential);
        assert_eq!(c.timeouts.shutdown, Duration::from_secs(30));
        assert_eq!(c.backends["glm"].kind, BackendKind::Glm);
        assert_eq!(c.backends["glm-backup"].kind, BackendKind::OpenAi);
        assert_eq!(c.models["glm-4"].fallback, ["glm-backup"]);
    }

    /// (From tests/proxy.rs's `the_shipped_example_config_is_valid`, which builds the
    /// proxy from the same file.)
    #[test]
    fn the_shipped_example_config_sets_a_tpm() {
        let text = include_str!("../../examples/proxy.toml");
        let config = ProxyConfig::from_toml(text).expect("examples/proxy.toml parses");
        assert_eq!(config.backends["glm"].tpm, Some(100_000));
    }

    #[test]
    fn env_overrides_follow_the_rule() {
        let c = ProxyConfig::from_toml_and_env(
            BASE,
            env(&[
                ("RATEWISE_PROXY__BACKENDS__GLM__RPM", "30"),
                ("RATEWISE_PROXY__BACKENDS__GLM_BACKUP__TPM", "1000"),
                ("RATEWISE_PROXY__COOLDOWN__BACKOFF", "linear"),
                ("RATEWISE_PROXY__COOLDOWN__BASE", "2s"),
                (
                    "RATEWISE_PROXY__MODELS__GLM-4__PRIMARY",
                    r#"["glm-backup"]"#,
                ),
                ("RATEWISE_PROXY__REDIS__URL", "redis://127.0.0.1:6379/"),
                ("GLM_API_KEY", "ignored: not under the prefix"),
            ]),
        )
        .unwrap();
        assert_eq!(c.backends["glm"].rpm, Some(30));
        assert_eq!(c.backends["glm-backup"].tpm, Some(1000));
        assert_eq!(c.backends["glm-backup"].tpm_window, None);
        assert_eq!(c.cooldown.backoff, BackoffKind::Linear);
        assert_eq!(c.cooldown.base, Duration::from_secs(2));
        assert_eq!(c.models["glm-4"].primary, ["glm-backup"]);
        let redis = c.redis.unwrap();
        assert_eq!(
            (redis.url.as_str(), redis.prefix.as_str()),
            ("redis://127.0.0.1:6379/", "ratewise-proxy")
        );
    }

    #[test]
    fn a_redis_url_keeps_the_files_prefix_and_instances_or_takes_the_defaults() {
        let c = ProxyConfig::from_toml(BASE)
            .unwrap()
            .with_redis_url("redis://10.0.0.1/");
        let redis = c.redis.unwrap();
        assert_eq!(
            (redis.url.as_str(), redis.prefix.as_str(), redis.instances),
            ("redis://10.0.0.1/", "ratewise-proxy", 1)
        );

        let file = format!(
            "{BASE}\n[redis]\nurl = \"redis://file/\"\nprefix = \"team-a\"\ninstances = 3\n"
        );
        let c = ProxyConfig::from_toml(&file)
            .unwrap()
            .with_redis_url("redis://10.0.0.1/");
        let redis = c.redis.unwrap();
        assert_eq!(
            (redis.url.as_str(), redis.prefix.as_str(), redis.instances),
            ("redis://10.0.0.1/", "team-a", 3)
        );
    }

    #[test]
    fn errors_name_the_path_and_the_variable() {
        let typo = BASE.replace("rpm = 45", "rmp = 45");
        let err = ProxyConfig::from_toml(&typo).unwrap_err();
        assert_eq!(err.path(), "backends.glm.rmp");
        assert!(err.message().contains("unknown field"), "{err}");

        let err = ProxyConfig::from_toml_and_env(
            BASE,
            env(&[("RATEWISE_PROXY__BACKENDS__GLM__RPM", "lots")]),
        )
        .unwrap_err();
        assert_eq!(err.path(), "backends.glm.rpm");
        assert!(
            err.to_string()
                .contains("(set by RATEWISE_PROXY__BACKENDS__GLM__RPM)"),
            "{err}"
        );

        let err = ProxyConfig::from_toml_and_env(
            BASE,
            env(&[("RATEWISE_PROXY__MAX_BODY_BYTES__X", "1")]),
        )
        .unwrap_err();
        assert_eq!(err.path(), "max_body_bytes");

        let err = ProxyConfig::from_toml("[backends.glm\n").unwrap_err();
        assert_eq!(err.path(), ".");

        let err = ProxyConfig::from_toml(&BASE.replace("kind = \"glm\"", "kind = \"claude\""))
            .unwrap_err();
        assert_eq!(err.path(), "backends.glm.kind");

        let c = ProxyConfig::from_toml(&BASE.replace("rpm = 45", "tpm = 300\ntpm_window = \"2s\""))
            .unwrap();
        assert_eq!(c.backends["glm"].tpm_window, Some(Duration::from_secs(2)));
        let err =
            ProxyConfig::from_toml(&BASE.replace("rpm = 45", "tpm_window = \"soon\"")).unwrap_err();
        assert_eq!(err.path(), "backends.glm.tpm_window");

        let err = ProxyConfig::from_toml(&format!("{BASE}\n[timeouts]\nupstream = \"10\"\n"))
            .unwrap_err();
        assert_eq!(err.path(), "timeouts.upstream");
        assert!(err.message().contains("invalid duration"), "{err}");
    }
}
