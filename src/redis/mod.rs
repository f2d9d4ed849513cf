//! Limits and cooldowns shared by every process, in Redis (feature `redis`).
//!
//! A [`Redis`] handle makes the stores: [`rate_limit`](Redis::rate_limit) for a
//! [`RateLimitLayer`](crate::rate_limit::RateLimitLayer) (through
//! [`RateLimitBuilder::store`](crate::rate_limit::RateLimitBuilder::store)) and
//! [`cooldown`](Redis::cooldown) for a [`CooldownLayer`](crate::cooldown::CooldownLayer)
//! (through [`CooldownBuilder::store`](crate::cooldown::CooldownBuilder::store)).
//! Processes that use the same prefix and name share one limit and one cooldown.
//!
//! - **One round trip per decision:** each decision is one Lua script (`EVALSHA`,
//!   loaded again on `NOSCRIPT`) that checks and takes every limit of a request
//!   atomically, on the server's clock (`TIME`), in integer microseconds.
//! - **Keys** are `{prefix:name}:…` and expire on their own once idle.
//! - **Redis unreachable:** [`fail_open`](Redis::fail_open) (the default, with one
//!   instance) falls back to a local in-memory limiter at `1/instances` of each quota;
//!   [`fail_closed`](Redis::fail_closed) refuses with
//!   [`RefusalKind::StoreUnavailable`](crate::vocabulary::RefusalKind::StoreUnavailable). Either way
//!   one warning is logged per outage, and the handle reconnects on its own (within
//!   about 100 ms of Redis returning, while requests flow).
//!
//! # Redis Cluster
//!
//! Every key of one limiter (or cooldown) carries the hash tag `{prefix:name}`, so one
//! script's keys always sit in one slot. The tag is the unit of distribution: give
//! independent limiters different names to spread them over the cluster; a limiter's
//! own keys stay on one node, which its atomic multi-key decision needs.
//!
//! # Example
//!
//! ```no_run
//! use ratewise::{rate_limit::RateLimitLayer, redis::Redis};
//!
//! # fn main() -> Result<(), ratewise::ConfigError> {
//! // Four replicas of this process share one 30/s limit; if Redis goes away, each
//! // keeps a quarter of it until Redis is back.
//! let redis = Redis::new("redis://127.0.0.1:6379")?.fail_open(4);
//! let layer = RateLimitLayer::builder()
//!     .per_second(30)
//!     .store(redis.rate_limit("telegram"))
//!     .build()?;
//! # let _ = layer; Ok(()) }
//! ```

mod conn;
mod cooldown;
mod rate_limit;

use std::{fmt, sync::Arc, time::Duration};

use self::conn::Conn;
use self::cooldown::RedisCooldown;
use self::rate_limit::RedisLimits;
use crate::{
    vocabulary::StoreError,
    vocabulary::{ConfigError, LayerKind},
};

/// What a store does while Redis is unreachable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FailMode {
    /// Decide locally, in memory, at `1/instances` of each quota (and cooldowns
    /// locally), so that `instances` processes together stay within the limit.
    Open {
        /// How many processes share the limit.
        instances: u32,
    },
    /// Refuse every request with
    /// [`RefusalKind::StoreUnavailable`](crate::vocabulary::RefusalKind::StoreUnavailable), at once.
    Closed,
}

/// A handle on one Redis server: makes the shared stores. Cheap to clone; every clone
/// shares one multiplexed connection.
#[derive(Clone)]
pub struct Redis {
    conn: Arc<Conn>,
    prefix: Arc<str>,
    fail: FailMode,
}

/// The default connect and response timeout.
const TIMEOUT: Duration = Duration::from_millis(500);

impl Redis {
    /// A handle on the server at `url` (`redis://host:port/db`). It connects on first
    /// use, not here, so a process starts even while Redis is down. Error (field
    /// `redis.url`) when the URL does not parse.
    pub fn new(url: &str) -> Result<Redis, ConfigError> {
        let client = redis::Client::open(url).map_err(|e| {
            ConfigError::new(
                LayerKind::Stack,
                "redis.url",
                format!("is not a redis URL: {e}"),
            )
        })?;
        Ok(Redis {
            conn: Conn::new(client, TIMEOUT),
            prefix: Arc::from("ratewise"),
            fail: FailMode::Open { instances: 1 },
        })
    }

    /// The first part of every key (default `ratewise`).
    pub fn prefix(mut self, prefix: &str) -> Self {
        self.prefix = Arc::from(prefix);
        self
    }

    /// While Redis is unreachable, decide locally at `1/instances` of each quota.
    pub fn fail_open(mut self, instances: u32) -> Self {
        self.fail = FailMode::Open { instances };
        self
    }

    /// While Redis is unreachable, refuse every request with `StoreUnavailable`.
    pub fn fail_closed(mut self) -> Self {
        self.fail = FailMode::Closed;
        self
    }

    /// The connect and response timeout (default 500 ms): how long a decision waits
    /// for Redis before it counts as unreachable. It gives this handle a connection of
    /// its own: call it before making stores, which keep the connection they were made
    /// with.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.conn = Conn::new(self.conn.client().clone(), timeout);
        self
    }

    /// The store for a rate limit named `name`: every process whose layer uses this
    /// name (and prefix) shares its buckets.
    pub fn rate_limit(&self, name: &str) -> RedisLimits {
        RedisLimits::new(self.clone(), name)
    }

    /// The store for a cooldown named `name`: every process whose cooldown uses this
    /// name (and prefix) shares its deadlines, counts and probe.
    pub fn cooldown(&self, name: &str) -> RedisCooldown {
        RedisCooldown::new(self.clone(), name)
    }

    /// One `PING` round trip (the benchmark's yardstick).
    pub async fn ping(&self) -> Result<(), StoreError> {
        let mut conn = self.conn.get().await?;
        redis::cmd("PING")
            .query_async::<String>(&mut conn)
            .await
            .map(drop)
            .map_err(|e| {
                self.conn.failed(&e);
                StoreError::new(e)
            })
    }

    /// The hash-tagged namespace of `name`: `{prefix:name}`.
    fn namespace(&self, layer: LayerKind, name: &str) -> Result<String, ConfigError> {
        if name.is_empty() || name.contains(['{', '}']) {
            return Err(ConfigError::new(
                layer,
                "redis.name",
                format!("must be non-empty and without braces (got {name:?})"),
            ));
        }
        Ok(format!("{{{}:{}}}", self.prefix, name))
    }
}

impl fmt::Debug for Redis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The URL may hold a password: not shown.
        f.debug_struct("Redis")
            .field("prefix", &self.prefix)
            .field("fail", &self.fail)
            .finish_non_exhaustive()
    }
}
