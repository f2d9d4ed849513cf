//! The Redis store of a cooldown: [`RedisCooldown`].

use std::{fmt, sync::Arc, time::Duration};

use redis::Script;

use super::{FailMode, Redis};
use crate::{
    cooldown::{Answer, CooldownStore, Probe, Remote, Rules, StoreFuture},
    key::Key,
    vocabulary::StoreError,
};

/// The script: one key's shared cooldown, read or changed in one atomic step.
const SCRIPT: &str = include_str!("cooldown.lua");

/// A cooldown table in Redis, from [`Redis::cooldown`](super::Redis::cooldown): give
/// it to [`CooldownBuilder::store`](crate::cooldown::CooldownBuilder::store).
///
/// Each admission asks Redis where the key stands (one round trip): a process learns
/// of a cooldown started elsewhere before it sends again. A check per admission, not
/// pub/sub: a message could arrive after the send it should have stopped, and a
/// process would have to keep a subscription per key; the check is one script on the
/// same connection as the limiter's. Requests already past the cooldown (waiting in
/// the limiter's line) learn of it through this process's table, which every
/// admission refreshes. "Extend, never shorten" and the count happen inside the
/// script, and the half-open probe is claimed there, once across all processes.
#[derive(Clone)]
pub struct RedisCooldown {
    inner: Arc<Inner>,
}

struct Inner {
    redis: Redis,
    name: String,
    /// `{prefix:name}`: the hash tag every key of this table carries.
    namespace: String,
    script: Script,
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros())
        .unwrap_or(u64::MAX / 4)
        .min(1 << 51)
}

impl RedisCooldown {
    pub(crate) fn new(redis: Redis, name: &str) -> Self {
        // Braces would break the hash tag, and an empty name would be ambiguous.
        let clean = match name {
            "" => "cooldown".to_owned(),
            name => name.replace(['{', '}'], "_"),
        };
        RedisCooldown {
            inner: Arc::new(Inner {
                namespace: format!("{{{}:{clean}}}", redis.prefix),
                redis,
                name: name.to_owned(),
                script: Script::new(SCRIPT),
            }),
        }
    }

    fn call(&self, key: &Key, args: Vec<String>) -> StoreFuture {
        let inner = self.inner.clone();
        let redis_key = format!("{}:cd:{}", inner.namespace, key.as_str());
        Box::pin(async move {
            let conn = &inner.redis.conn;
            let result = match conn.get().await {
                Ok(mut c) => {
                    let mut call = inner.script.prepare_invoke();
                    call.key(redis_key);
                    for a in &args {
                        call.arg(a);
                    }
                    let answer = call
                        .invoke_async::<(i64, i64, i64, i64, i64, i64)>(&mut c)
                        .await;
                    answer.map_err(|err| {
                        conn.failed(&err);
                        StoreError::new(err)
                    })
                }
                Err(err) => Err(err),
            };
            match result {
                Ok((cooling, n, h, probe, left, signal)) => {
                    let us = |x: i64| Duration::from_micros(u64::try_from(x).unwrap_or(0));
                    Ok(Remote {
                        cooling: (cooling > 0).then(|| us(cooling)),
                        n: u32::try_from(n).unwrap_or(u32::MAX),
                        half_open: h == 1,
                        probe: match probe {
                            1 => Probe::Mine,
                            2 => Probe::Elsewhere(us(left)),
                            _ => Probe::None,
                        },
                        signal: u64::try_from(signal).unwrap_or(0),
                    })
                }
                // Fail open: the layer decides alone until Redis is back.
                Err(_) if matches!(inner.redis.fail, FailMode::Open { .. }) => Ok(Remote::open()),
                Err(err) => Err(err),
            }
        })
    }
}

impl CooldownStore for RedisCooldown {
    fn admit(&self, key: &Key, token: u64, probe_for: Duration) -> StoreFuture {
        let args = vec![
            "admit".to_owned(),
            token.to_string(),
            micros(probe_for).to_string(),
        ];
        self.call(key, args)
    }

    fn record(
        &self,
        key: &Key,
        token: u64,
        signal: u64,
        answer: Answer,
        rules: &Rules,
    ) -> StoreFuture {
        let (name, hint) = match answer {
            Answer::RateLimited(hint) => ("limited", hint.map_or(-1, |h| micros(h) as i64)),
            Answer::Success => ("success", -1),
            Answer::Served => ("served", -1),
            Answer::Transient => ("transient", -1),
        };
        let mut args = vec![
            "record".to_owned(),
            token.to_string(),
            signal.to_string(),
            name.to_owned(),
            hint.to_string(),
            rules
                .max_cooldown
                .map_or(-1, |m| micros(m) as i64)
                .to_string(),
            micros(rules.precheck).to_string(),
        ];
        args.extend(rules.backoff.iter().map(|b| micros(*b).to_string()));
        if rules.backoff.is_empty() {
            args.push(micros(Duration::from_secs(1)).to_string());
        }
        self.call(key, args)
    }
}

impl fmt::Debug for RedisCooldown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisCooldown")
            .field("name", &self.inner.name)
            .field("redis", &self.inner.redis)
            .finish()
    }
}
