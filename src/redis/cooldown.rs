//! The Redis store of a cooldown (filled in next).

use super::Redis;

/// The Redis store of a cooldown named `name`.
#[derive(Debug, Clone)]
pub struct RedisCooldown {
    #[allow(dead_code)]
    redis: Redis,
    #[allow(dead_code)]
    namespace: String,
}

impl RedisCooldown {
    pub(crate) fn new(redis: Redis, name: &str) -> Self {
        RedisCooldown {
            namespace: name.to_owned(),
            redis,
        }
    }
}
