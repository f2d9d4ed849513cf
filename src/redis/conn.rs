//! One multiplexed connection, reconnected on demand, and what to do while Redis is
//! unreachable.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use redis::{aio::MultiplexedConnection, AsyncConnectionConfig, RedisError};
use tokio::time::Instant;

use crate::{util::lock, vocabulary::StoreError};

/// How often a caller may try to reconnect while Redis is down: the store is back on
/// Redis within this (plus one connect) of Redis returning, while requests flow.
const RECONNECT_EVERY: Duration = Duration::from_millis(100);

/// The connection of a [`Redis`](super::Redis) handle and its clones.
pub(crate) struct Conn {
    client: redis::Client,
    timeout: Duration,
    state: Mutex<State>,
    /// Held by the one caller connecting.
    connecting: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct State {
    conn: Option<MultiplexedConnection>,
    last_attempt: Option<Instant>,
    /// Since when Redis has been unreachable (one warning per outage).
    down_since: Option<Instant>,
}

fn unreachable() -> StoreError {
    StoreError::new("redis is unreachable (reconnecting)")
}

impl Conn {
    pub(crate) fn new(client: redis::Client, timeout: Duration) -> Arc<Self> {
        Arc::new(Conn {
            client,
            timeout,
            state: Mutex::new(State::default()),
            connecting: tokio::sync::Mutex::new(()),
        })
    }

    pub(crate) fn client(&self) -> &redis::Client {
        &self.client
    }

    /// The connection. While Redis is known to be down, an error at once unless it is
    /// this caller's turn to try again (one caller every [`RECONNECT_EVERY`]); before
    /// that, callers wait for the one connect in flight.
    pub(crate) async fn get(&self) -> Result<MultiplexedConnection, StoreError> {
        let down = {
            let state = lock(&self.state);
            if let Some(conn) = &state.conn {
                return Ok(conn.clone());
            }
            state.down_since.is_some()
        };
        let _turn = if down {
            match self.connecting.try_lock() {
                Ok(turn) => turn,
                Err(_) => return Err(unreachable()),
            }
        } else {
            self.connecting.lock().await
        };
        {
            let mut state = lock(&self.state);
            if let Some(conn) = &state.conn {
                return Ok(conn.clone());
            }
            let now = Instant::now();
            let recent = state
                .last_attempt
                .is_some_and(|at| now.saturating_duration_since(at) < RECONNECT_EVERY);
            if state.down_since.is_some() && recent {
                return Err(unreachable());
            }
            state.last_attempt = Some(now);
        }
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout));
        let result = tokio::time::timeout(
            self.timeout,
            self.client
                .get_multiplexed_async_connection_with_config(&config),
        )
        .await;
        let mut state = lock(&self.state);
        match result {
            Ok(Ok(conn)) => {
                if let Some(since) = state.down_since.take() {
                    tracing::warn!(
                        down_for_ms = since.elapsed().as_millis() as u64,
                        "redis: reachable again, shared limits and cooldowns are back on redis"
                    );
                }
                state.conn = Some(conn.clone());
                Ok(conn)
            }
            Ok(Err(err)) => {
                Self::went_down(&mut state, &err.to_string());
                Err(StoreError::new(err))
            }
            Err(_) => {
                Self::went_down(&mut state, "connect timed out");
                Err(StoreError::new("redis connect timed out"))
            }
        }
    }

    /// A command failed: when the connection itself is broken, drop it so the next
    /// caller reconnects.
    pub(crate) fn failed(&self, err: &RedisError) {
        if err.is_io_error()
            || err.is_connection_dropped()
            || err.is_connection_refusal()
            || err.is_timeout()
            || err.is_unrecoverable_error()
        {
            let mut state = lock(&self.state);
            state.conn = None;
            Self::went_down(&mut state, &err.to_string());
        }
    }

    /// Whether Redis is known to be unreachable now.
    pub(crate) fn is_down(&self) -> bool {
        lock(&self.state).down_since.is_some()
    }

    fn went_down(state: &mut State, why: &str) {
        if state.down_since.is_none() {
            state.down_since = Some(Instant::now());
            // Once per outage, not once per request.
            tracing::warn!(
                error = why,
                "redis: unreachable; shared limits and cooldowns fall back until it returns"
            );
        }
    }
}
