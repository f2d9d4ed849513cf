//! The store a built layer holds: [`Store`], in memory by default or any shared store
//! chosen with [`RateLimitBuilder::store`](super::RateLimitBuilder::store), and
//! [`MakeStore`], which builds a shared store from the layer's limits.

// The pub items here are reachable from outside only through `testing::engine`
// (the benchmarks), so they are unreachable without that feature.
#![cfg_attr(not(feature = "testing"), allow(unreachable_pub))]

use std::{
    fmt,
    future::{Future, Ready},
    num::NonZeroU32,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use super::{
    limits::{MemoryStore, Rule},
    quota::Quota,
    store::{Decision, Keys, RateLimitStore, SettleFuture, StoreError},
};
use crate::vocabulary::ConfigError;

/// Builds the store of a layer from the layer's limits, so that a store shared between
/// processes follows exactly the limits the builder was given.
///
/// [`RateLimitBuilder::store`](super::RateLimitBuilder::store) takes one; the Redis
/// store's [`Redis::rate_limit`](crate::redis::Redis::rate_limit) is one.
pub trait MakeStore: Send + Sync + 'static {
    /// The store it builds.
    type Store: RateLimitStore;

    /// A store deciding by `rules` (the layer's limits, in its keys' order, margins
    /// applied), whose headers and wait estimates use `quota`. Errors name the field.
    fn make_store(&self, rules: &[Rule], quota: Quota) -> Result<Self::Store, ConfigError>;
}

/// The store of a layer made by [`build`](super::RateLimitBuilder::build): the
/// in-memory `MemoryStore`, or the shared store a `MakeStore` built. The layer's
/// type is the same either way, so a stack does not change type when its limits move
/// to Redis.
#[derive(Clone)]
pub struct Store {
    engine: Engine,
}

#[derive(Clone)]
enum Engine {
    Memory(MemoryStore),
    Shared(Arc<dyn DynStore>),
}

impl Store {
    pub(crate) fn memory(store: MemoryStore) -> Self {
        Store {
            engine: Engine::Memory(store),
        }
    }

    pub(crate) fn shared(store: impl RateLimitStore) -> Self {
        Store {
            engine: Engine::Shared(Arc::new(store)),
        }
    }
}

/// A [`RateLimitStore`] behind a pointer: the shared engine.
trait DynStore: Send + Sync {
    fn acquire(&self, keys: &Keys, cost: NonZeroU32) -> BoxedDecision;
    fn quota(&self) -> Quota;
    fn key_count(&self) -> Option<usize>;
    fn max_cost(&self) -> u32;
    fn cell_interval(&self) -> Duration;
    fn settle(&self, keys: &Keys, reserved: u32, actual: u32, age: Duration) -> SettleFuture;
}

type BoxedDecision = Pin<Box<dyn Future<Output = Result<Decision, StoreError>> + Send>>;

impl<St: RateLimitStore> DynStore for St {
    fn acquire(&self, keys: &Keys, cost: NonZeroU32) -> BoxedDecision {
        Box::pin(RateLimitStore::acquire(self, keys, cost))
    }
    fn quota(&self) -> Quota {
        RateLimitStore::quota(self)
    }
    fn key_count(&self) -> Option<usize> {
        RateLimitStore::key_count(self)
    }
    fn max_cost(&self) -> u32 {
        RateLimitStore::max_cost(self)
    }
    fn cell_interval(&self) -> Duration {
        RateLimitStore::cell_interval(self)
    }
    fn settle(&self, keys: &Keys, reserved: u32, actual: u32, age: Duration) -> SettleFuture {
        RateLimitStore::settle(self, keys, reserved, actual, age)
    }
}

/// The future of [`Store::acquire`]: ready at once in memory, a round trip when shared.
pub enum StoreFuture {
    /// In memory.
    Ready {
        /// The decision.
        inner: Ready<Result<Decision, StoreError>>,
    },
    /// Shared.
    Shared {
        /// The round trip.
        inner: BoxedDecision,
    },
}

impl Future for StoreFuture {
    type Output = Result<Decision, StoreError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.get_mut() {
            StoreFuture::Ready { inner } => Pin::new(inner).poll(cx),
            StoreFuture::Shared { inner } => inner.as_mut().poll(cx),
        }
    }
}

impl fmt::Debug for StoreFuture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("StoreFuture")
    }
}

impl RateLimitStore for Store {
    type Future = StoreFuture;

    fn acquire(&self, keys: &Keys, cost: NonZeroU32) -> StoreFuture {
        match &self.engine {
            Engine::Memory(store) => StoreFuture::Ready {
                inner: RateLimitStore::acquire(store, keys, cost),
            },
            Engine::Shared(store) => StoreFuture::Shared {
                inner: store.acquire(keys, cost),
            },
        }
    }

    fn quota(&self) -> Quota {
        match &self.engine {
            Engine::Memory(store) => RateLimitStore::quota(store),
            Engine::Shared(store) => store.quota(),
        }
    }

    fn key_count(&self) -> Option<usize> {
        match &self.engine {
            Engine::Memory(store) => RateLimitStore::key_count(store),
            Engine::Shared(store) => store.key_count(),
        }
    }

    fn max_cost(&self) -> u32 {
        match &self.engine {
            Engine::Memory(store) => RateLimitStore::max_cost(store),
            Engine::Shared(store) => store.max_cost(),
        }
    }

    fn cell_interval(&self) -> Duration {
        match &self.engine {
            Engine::Memory(store) => RateLimitStore::cell_interval(store),
            Engine::Shared(store) => store.cell_interval(),
        }
    }

    fn settle(&self, keys: &Keys, reserved: u32, actual: u32, age: Duration) -> SettleFuture {
        match &self.engine {
            Engine::Memory(store) => RateLimitStore::settle(store, keys, reserved, actual, age),
            Engine::Shared(store) => store.settle(keys, reserved, actual, age),
        }
    }
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.engine {
            Engine::Memory(store) => fmt::Debug::fmt(store, f),
            Engine::Shared(store) => f
                .debug_struct("Store")
                .field("shared", &true)
                .field("quota", &store.quota())
                .finish(),
        }
    }
}
