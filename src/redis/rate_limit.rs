//! The Redis store of a rate limit: [`RedisLimits`] (what the builder is given) and
//! [`RedisStore`] (what the layer holds).

use std::{fmt, future::Future, num::NonZeroU32, pin::Pin, sync::Arc, time::Duration};

use redis::Script;

use super::{FailMode, Redis};
use crate::{
    rate_limit::{
        Decision, Keys, MakeStore, MemoryStore, Quota, RateLimitStore, Rule, SettleFuture,
    },
    vocabulary::{ConfigError, LayerKind, StoreError},
};

/// The script: every limit of one request, checked and taken in one atomic step.
const SCRIPT: &str = include_str!("rate_limit.lua");
/// The settle script: a reservation corrected to its real cost, every limit at once.
const SETTLE: &str = include_str!("rate_limit_settle.lua");

/// The Redis store of a rate limit named `name`, from
/// [`Redis::rate_limit`](super::Redis::rate_limit): give it to
/// [`RateLimitBuilder::store`](crate::rate_limit::RateLimitBuilder::store), which
/// builds a [`RedisStore`] that follows the builder's limits.
#[derive(Debug, Clone)]
pub struct RedisLimits {
    redis: Redis,
    name: String,
}

impl RedisLimits {
    pub(crate) fn new(redis: Redis, name: &str) -> Self {
        RedisLimits {
            redis,
            name: name.to_owned(),
        }
    }
}

impl MakeStore for RedisLimits {
    type Store = RedisStore;

    fn make_store(&self, rules: &[Rule], quota: Quota) -> Result<RedisStore, ConfigError> {
        RedisStore::new(&self.redis, &self.name, rules, quota)
    }
}

/// A rate limit store in Redis: one Lua script per decision (one round trip), on the
/// server's clock, shared by every process that uses the same prefix and name.
///
/// A decision whose future is dropped after the script ran keeps the cells it took:
/// the limit errs on the safe side.
#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
}

struct Inner {
    redis: Redis,
    namespace: String,
    script: Script,
    settle: Script,
    /// Three numbers per limit: kind, a, b (see the script).
    args: Vec<u64>,
    quota: Quota,
    max_cost: u32,
    cell_interval: Duration,
    /// The local limiter at `1/instances` of each quota, in fail-open mode.
    fallback: Option<MemoryStore>,
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}

/// The largest integer a Lua number (a double) holds exactly.
const LUA_EXACT: u64 = 1 << 53;

impl RedisStore {
    fn new(redis: &Redis, name: &str, rules: &[Rule], quota: Quota) -> Result<Self, ConfigError> {
        let namespace = redis.namespace(LayerKind::RateLimit, name)?;
        let mut args = Vec::with_capacity(rules.len() * 3);
        for rule in rules {
            let (kind, a, b, span) = match *rule {
                Rule::Rate { interval, burst } => {
                    let us = micros(interval);
                    (0, us, u64::from(burst), us.saturating_mul(u64::from(burst)))
                }
                Rule::Sliding { n, window } => (1, u64::from(n), micros(window), micros(window)),
                Rule::Fixed { n, window } => (2, u64::from(n), micros(window), micros(window)),
            };
            // The script adds spans to a microsecond clock near 2^51: both must stay
            // exact in Lua's doubles.
            if span > LUA_EXACT / 4 {
                return Err(ConfigError::new(
                    LayerKind::RateLimit,
                    "store",
                    "a limit's window is too long for the Redis store (over 71 years)",
                ));
            }
            args.extend([kind, a, b]);
        }
        let fallback = match redis.fail {
            FailMode::Open { instances } => {
                let shared: Vec<Rule> = rules.iter().map(|r| r.share(instances)).collect();
                Some(MemoryStore::with_rules(shared, quota)?)
            }
            FailMode::Closed => None,
        };
        let max_cost = rules.iter().map(Rule::capacity).min().unwrap_or(1);
        let cell_interval = rules
            .iter()
            .map(|rule| match *rule {
                Rule::Rate { interval, .. } => interval,
                Rule::Sliding { n, window } | Rule::Fixed { n, window } => window / n.max(1),
            })
            .max()
            .unwrap_or(quota.replenish_interval());
        Ok(RedisStore {
            inner: Arc::new(Inner {
                redis: redis.clone(),
                namespace,
                script: Script::new(SCRIPT),
                settle: Script::new(SETTLE),
                args,
                quota,
                max_cost,
                cell_interval,
                fallback,
            }),
        })
    }

    /// The Redis key of limit `i` for `key`.
    fn redis_key(&self, i: usize, key: &str) -> String {
        format!("{}:{i}:{key}", self.inner.namespace)
    }

    /// One decision at `at` microseconds (`0`: the server's clock).
    pub(crate) async fn decide_at(
        &self,
        keys: &Keys,
        cost: NonZeroU32,
        at: u64,
    ) -> Result<Decision, StoreError> {
        let inner = &*self.inner;
        let conn = &inner.redis.conn;
        let result = match conn.get().await {
            Ok(mut c) => {
                let mut call = inner.script.prepare_invoke();
                for i in 0..inner.args.len() / 3 {
                    call.key(self.redis_key(i, keys.get(i).as_str()));
                }
                call.arg(at).arg(cost.get());
                for a in &inner.args {
                    call.arg(*a);
                }
                match call.invoke_async::<(u8, i64, i64)>(&mut c).await {
                    Ok(answer) => Ok(answer),
                    Err(err) => {
                        conn.failed(&err);
                        Err(StoreError::new(err))
                    }
                }
            }
            Err(err) => Err(err),
        };
        match result {
            Ok((1, remaining, _)) => Ok(Decision::Admitted {
                remaining: u32::try_from(remaining.max(0)).unwrap_or(u32::MAX),
            }),
            Ok((_, _, wait)) => Ok(Decision::Denied {
                wait: Duration::from_micros(u64::try_from(wait.max(1)).unwrap_or(1)),
            }),
            Err(err) => match &inner.fallback {
                Some(local) if conn.is_down() => local.acquire(keys, cost).await,
                _ => Err(err),
            },
        }
    }
}

impl RedisStore {
    /// One settle at `at` microseconds (`0`: the server's clock).
    pub(crate) async fn settle_at(
        &self,
        keys: &Keys,
        (reserved, actual): (u32, u32),
        age: Duration,
        at: u64,
    ) -> Result<(), StoreError> {
        let inner = &*self.inner;
        let conn = &inner.redis.conn;
        let result = match conn.get().await {
            Ok(mut c) => {
                let mut call = inner.settle.prepare_invoke();
                for i in 0..inner.args.len() / 3 {
                    call.key(self.redis_key(i, keys.get(i).as_str()));
                }
                let age = u64::try_from(age.as_micros()).unwrap_or(u64::MAX);
                call.arg(at)
                    .arg(reserved)
                    .arg(actual)
                    .arg(age.min(LUA_EXACT));
                for a in &inner.args {
                    call.arg(*a);
                }
                match call.invoke_async::<i64>(&mut c).await {
                    Ok(_) => Ok(()),
                    Err(err) => {
                        conn.failed(&err);
                        Err(StoreError::new(err))
                    }
                }
            }
            Err(err) => Err(err),
        };
        match (result, &inner.fallback) {
            (Err(_), Some(local)) if conn.is_down() => {
                local.settle(keys, reserved, actual, age).await
            }
            (result, _) => result,
        }
    }
}

impl RateLimitStore for RedisStore {
    type Future = Pin<Box<dyn Future<Output = Result<Decision, StoreError>> + Send>>;

    fn acquire(&self, keys: &Keys, cost: NonZeroU32) -> Self::Future {
        let (store, keys) = (self.clone(), keys.clone());
        Box::pin(async move { store.decide_at(&keys, cost, 0).await })
    }

    fn quota(&self) -> Quota {
        self.inner.quota
    }

    fn max_cost(&self) -> u32 {
        self.inner.max_cost
    }

    fn cell_interval(&self) -> Duration {
        self.inner.cell_interval
    }

    /// One round trip (a second small script), on the server's clock: the reservation's
    /// instant is the server's now minus `age`. A settle whose future is dropped after
    /// the script ran is applied; one that fails changes nothing.
    fn settle(&self, keys: &Keys, reserved: u32, actual: u32, age: Duration) -> SettleFuture {
        let (store, keys) = (self.clone(), keys.clone());
        Box::pin(async move { store.settle_at(&keys, (reserved, actual), age, 0).await })
    }
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("namespace", &self.inner.namespace)
            .field("quota", &self.inner.quota)
            .field("fallback", &self.inner.fallback.is_some())
            .finish()
    }
}

#[cfg(all(test, feature = "testing"))]
mod tests {
    use super::*;
    use crate::{key::Key, testing::RedisServer};

    const MS: Duration = Duration::from_millis(1);

    /// A deterministic sequence: (milliseconds since the start, key, second key, cost).
    fn sequence(seed: u64, len: usize) -> Vec<(u64, String, String, u32)> {
        let mut x = seed;
        let mut next = move || {
            // xorshift64
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut t = 0;
        (0..len)
            .map(|_| {
                t += next() % 120;
                let key = format!("tenant{}", next() % 2);
                let card = format!("card{}", next() % 3);
                let cost = 1 + u32::from(next() % 4 == 0);
                (t, key, card, cost)
            })
            .collect()
    }

    fn keys_of(key: &str, card: &str, n: usize) -> Keys {
        if n == 1 {
            Keys::one(Key::from(key))
        } else {
            Keys::new(Key::from(key), vec![Key::from(card)])
        }
    }

    fn quota() -> Quota {
        Quota::per_period(100 * MS).unwrap()
    }

    /// The in-memory decisions, on tokio's paused clock.
    fn in_memory(rules: &[Rule], seq: &[(u64, String, String, u32)]) -> Vec<Decision> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        rt.block_on(async {
            let store = MemoryStore::with_rules(rules.to_vec(), quota()).unwrap();
            let start = tokio::time::Instant::now();
            let mut out = Vec::new();
            for (t, key, card, cost) in seq {
                tokio::time::advance(
                    (start + Duration::from_millis(*t)) - tokio::time::Instant::now(),
                )
                .await;
                let cost = NonZeroU32::new(*cost).unwrap();
                out.push(
                    store
                        .acquire(&keys_of(key, card, rules.len()), cost)
                        .await
                        .unwrap(),
                );
            }
            out
        })
    }

    /// The Redis decisions, at the same instants (given to the script as its clock).
    fn in_redis(
        url: &str,
        name: &str,
        rules: &[Rule],
        seq: &[(u64, String, String, u32)],
    ) -> Vec<Decision> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let redis = Redis::new(url).unwrap().fail_closed();
            let store = RedisStore::new(&redis, name, rules, quota()).unwrap();
            // A whole number of seconds (and so of every window), like the memory
            // store's origin.
            let base: u64 = 1_700_000_000_000_000;
            let mut out = Vec::new();
            for (t, key, card, cost) in seq {
                let cost = NonZeroU32::new(*cost).unwrap();
                let keys = keys_of(key, card, rules.len());
                out.push(store.decide_at(&keys, cost, base + t * 1000).await.unwrap());
            }
            out
        })
    }

    /// The hash tag Redis Cluster hashes: the text between the first `{` and the next
    /// `}`, when not empty.
    fn hash_tag(key: &str) -> &str {
        key.find('{')
            .and_then(|open| {
                let rest = &key[open + 1..];
                rest.find('}')
                    .filter(|close| *close > 0)
                    .map(|close| &rest[..close])
            })
            .unwrap_or(key)
    }

    #[test]
    fn every_key_of_a_request_shares_one_hash_tag_whatever_the_key_holds() {
        let redis = Redis::new("redis://127.0.0.1:1/").unwrap().prefix("app");
        let rules = [
            Rule::Rate {
                interval: 50 * MS,
                burst: 2,
            },
            Rule::Sliding {
                n: 3,
                window: 1000 * MS,
            },
        ];
        let store = RedisStore::new(&redis, "dingtalk", &rules, quota()).unwrap();
        for key in ["tenant", "{card}", "a}b{c", ""] {
            for i in 0..2 {
                assert_eq!(hash_tag(&store.redis_key(i, key)), "app:dingtalk", "{key}");
            }
        }
        let err = RedisStore::new(&redis, "a{b}", &rules, quota()).unwrap_err();
        assert_eq!(err.field(), "redis.name");
    }

    /// One step of a run with settles: an acquisition, or the settle of the admission
    /// made at `admitted_at` ms.
    #[derive(Debug, Clone)]
    enum Step {
        Acquire(u64, String, String, u32),
        Settle {
            t: u64,
            key: String,
            card: String,
            admitted_at: u64,
            reserved: u32,
            actual: u32,
        },
    }

    /// Runs `seq` in memory, settling an earlier admission every third step (its real
    /// cost anywhere from 0 to four times the reservation): the decisions and the steps.
    fn in_memory_settling(
        rules: &[Rule],
        seq: &[(u64, String, String, u32)],
    ) -> (Vec<Decision>, Vec<Step>) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        rt.block_on(async {
            let store = MemoryStore::with_rules(rules.to_vec(), quota()).unwrap();
            let start = tokio::time::Instant::now();
            let (mut out, mut steps, mut pending) = (Vec::new(), Vec::new(), Vec::new());
            for (n, (t, key, card, cost)) in seq.iter().enumerate() {
                tokio::time::advance(
                    (start + Duration::from_millis(*t)) - tokio::time::Instant::now(),
                )
                .await;
                let keys = keys_of(key, card, rules.len());
                if n % 3 == 2 && !pending.is_empty() {
                    let (admitted_at, key, card, reserved): (u64, String, String, u32) =
                        pending.remove(0);
                    let actual = (n as u32 * 7) % (4 * reserved + 1);
                    let age = Duration::from_millis(t - admitted_at);
                    let keys = keys_of(&key, &card, rules.len());
                    store.settle(&keys, reserved, actual, age).await.unwrap();
                    steps.push(Step::Settle {
                        t: *t,
                        key,
                        card,
                        admitted_at,
                        reserved,
                        actual,
                    });
                }
                let d = store
                    .acquire(&keys, NonZeroU32::new(*cost).unwrap())
                    .await
                    .unwrap();
                if matches!(d, Decision::Admitted { .. }) {
                    pending.push((*t, key.clone(), card.clone(), *cost));
                }
                steps.push(Step::Acquire(*t, key.clone(), card.clone(), *cost));
                out.push(d);
            }
            (out, steps)
        })
    }

    /// The same steps in Redis, at the same instants.
    fn in_redis_settling(url: &str, name: &str, rules: &[Rule], steps: &[Step]) -> Vec<Decision> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let redis = Redis::new(url).unwrap().fail_closed();
            let store = RedisStore::new(&redis, name, rules, quota()).unwrap();
            let base: u64 = 1_700_000_000_000_000;
            let mut out = Vec::new();
            for step in steps {
                match step {
                    Step::Acquire(t, key, card, cost) => {
                        let keys = keys_of(key, card, rules.len());
                        let cost = NonZeroU32::new(*cost).unwrap();
                        out.push(store.decide_at(&keys, cost, base + t * 1000).await.unwrap());
                    }
                    Step::Settle {
                        t,
                        key,
                        card,
                        admitted_at,
                        reserved,
                        actual,
                    } => {
                        let keys = keys_of(key, card, rules.len());
                        let age = Duration::from_millis(t - admitted_at);
                        store
                            .settle_at(&keys, (*reserved, *actual), age, base + t * 1000)
                            .await
                            .unwrap();
                    }
                }
            }
            out
        })
    }

    #[test]
    fn the_memory_and_redis_stores_settle_alike() {
        let Some(server) = RedisServer::start() else {
            return;
        };
        let cases: [(&str, Vec<Rule>); 3] = [
            (
                "sliding",
                vec![Rule::Sliding {
                    n: 6,
                    window: 1000 * MS,
                }],
            ),
            (
                "fixed",
                vec![Rule::Fixed {
                    n: 5,
                    window: 1000 * MS,
                }],
            ),
            (
                "two_rates",
                vec![
                    Rule::Rate {
                        interval: 50 * MS,
                        burst: 4,
                    },
                    Rule::Rate {
                        interval: 200 * MS,
                        burst: 3,
                    },
                ],
            ),
        ];
        let unique = std::process::id();
        for (i, (label, rules)) in cases.iter().enumerate() {
            let seq = sequence(0x2545_f491_4f6c_dd1d + i as u64, 400);
            let (memory, steps) = in_memory_settling(rules, &seq);
            let name = format!("settle-{label}-{unique}");
            let redis = in_redis_settling(server.url(), &name, rules, &steps);
            let admitted = memory
                .iter()
                .filter(|d| matches!(d, Decision::Admitted { .. }))
                .count();
            assert!(
                (40..=360).contains(&admitted),
                "{label}: {admitted} of 400 admitted"
            );
            for (n, (m, r)) in memory.iter().zip(&redis).enumerate() {
                assert_eq!(m, r, "{label}: decision {n} at {} ms differs", seq[n].0);
            }
        }
    }

    #[test]
    fn the_memory_and_redis_stores_make_the_same_decisions() {
        let Some(server) = RedisServer::start() else {
            return;
        };
        let cases: [(&str, Vec<Rule>); 4] = [
            (
                "gcra",
                vec![Rule::Rate {
                    interval: 100 * MS,
                    burst: 5,
                }],
            ),
            (
                "sliding",
                vec![Rule::Sliding {
                    n: 5,
                    window: 1000 * MS,
                }],
            ),
            (
                "fixed",
                vec![Rule::Fixed {
                    n: 4,
                    window: 1000 * MS,
                }],
            ),
            (
                "two_keys",
                vec![
                    Rule::Rate {
                        interval: 50 * MS,
                        burst: 3,
                    },
                    Rule::Rate {
                        interval: 300 * MS,
                        burst: 1,
                    },
                ],
            ),
        ];
        let unique = std::process::id();
        for (i, (label, rules)) in cases.iter().enumerate() {
            let seq = sequence(0x9e37_79b9_7f4a_7c15 + i as u64, 400);
            let memory = in_memory(rules, &seq);
            let redis = in_redis(
                server.url(),
                &format!("agree-{label}-{unique}"),
                rules,
                &seq,
            );
            let admitted = memory
                .iter()
                .filter(|d| matches!(d, Decision::Admitted { .. }))
                .count();
            // The sequence is dense enough that both answers occur often.
            assert!(
                (40..=360).contains(&admitted),
                "{label}: {admitted} of 400 admitted"
            );
            for (n, (m, r)) in memory.iter().zip(&redis).enumerate() {
                assert_eq!(m, r, "{label}: decision {n} at {} ms differs", seq[n].0);
            }
        }
    }
}
