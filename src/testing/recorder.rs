//! What reached a mock, and when: [`Hits`].

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Method, StatusCode};
use tokio::time::Instant;

use super::common::lock;

/// Which kind of answer a mock gave to one request.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// The mock served the request (2xx).
    Served,
    /// The mock answered with its platform's over-limit answer (QQ 400, DingTalk 403/429,
    /// Telegram/GLM/OpenAI 429).
    RateLimited,
    /// The mock refused the request for another reason: malformed body (400), unknown
    /// path (404) or wrong method (405).
    Rejected,
}

/// One request as a mock saw it.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hit {
    /// The tokio instant the request reached the mock's handler.
    pub instant: Instant,
    /// Time since the mock was created (`instant - start`).
    pub at: Duration,
    /// The request method.
    pub method: Method,
    /// The request path, without query. Secrets in paths (Telegram's bot token) are
    /// redacted.
    pub path: String,
    /// The status the mock answered with.
    pub status: StatusCode,
    /// What kind of answer that was.
    pub outcome: Outcome,
}

/// A shared, cloneable record of every request that reached one mock.
///
/// Every mock owns one; get it with the mock's `hits()` method. Clones share the record.
/// The record is in arrival order (by [`Hit::instant`]; requests that arrived at the same
/// instant stay in the order they were recorded), whatever order the mock's handlers
/// finished in.
#[derive(Clone)]
pub struct Hits {
    inner: Arc<HitsInner>,
}

struct HitsInner {
    start: Instant,
    hits: Mutex<Vec<Hit>>,
}

impl fmt::Debug for Hits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hits")
            .field("start", &self.inner.start)
            .field("count", &self.count())
            .finish()
    }
}

impl Hits {
    /// A new, empty record whose "mock start" is now (tokio's clock).
    pub(crate) fn new() -> Self {
        Hits {
            inner: Arc::new(HitsInner {
                start: Instant::now(),
                hits: Mutex::new(Vec::new()),
            }),
        }
    }

    /// Records one request.
    pub(crate) fn record(
        &self,
        instant: Instant,
        method: Method,
        path: String,
        status: StatusCode,
        outcome: Outcome,
    ) {
        let hit = Hit {
            instant,
            at: instant.saturating_duration_since(self.inner.start),
            method,
            path,
            status,
            outcome,
        };
        // Handlers record when they answer, not when the request arrived: keep the
        // record in arrival order (stable: equal instants stay in recording order).
        let mut hits = lock(&self.inner.hits);
        let at = hits.partition_point(|h| h.instant <= instant);
        hits.insert(at, hit);
    }

    /// The instant the mock was created; [`Hit::at`] and [`Hits::times`] count from it.
    pub fn start(&self) -> Instant {
        self.inner.start
    }

    /// How many requests reached the mock (every outcome).
    pub fn count(&self) -> usize {
        lock(&self.inner.hits).len()
    }

    /// How many requests got the given outcome.
    pub fn count_of(&self, outcome: Outcome) -> usize {
        lock(&self.inner.hits)
            .iter()
            .filter(|h| h.outcome == outcome)
            .count()
    }

    /// How many requests were served (2xx).
    pub fn served(&self) -> usize {
        self.count_of(Outcome::Served)
    }

    /// How many requests got the over-limit answer.
    pub fn rate_limited(&self) -> usize {
        self.count_of(Outcome::RateLimited)
    }

    /// Arrival times of every request, as durations since the mock was created, in
    /// arrival order.
    pub fn times(&self) -> Vec<Duration> {
        lock(&self.inner.hits).iter().map(|h| h.at).collect()
    }

    /// Arrival times of the requests that got the given outcome, in arrival order.
    pub fn times_of(&self, outcome: Outcome) -> Vec<Duration> {
        lock(&self.inner.hits)
            .iter()
            .filter(|h| h.outcome == outcome)
            .map(|h| h.at)
            .collect()
    }

    /// Every recorded request, in arrival order.
    pub fn all(&self) -> Vec<Hit> {
        lock(&self.inner.hits).clone()
    }

    /// The request that arrived last (of those that arrived together, the last
    /// recorded), if any.
    pub fn last(&self) -> Option<Hit> {
        lock(&self.inner.hits).last().cloned()
    }

    /// Forgets every recorded request. The mock's start instant and its rate-limit
    /// state are unchanged.
    pub fn clear(&self) {
        lock(&self.inner.hits).clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A mock records a request when its handler answers; a slow answer is recorded
    /// after a later request's quick one. The record is still in arrival order.
    #[tokio::test(start_paused = true)]
    async fn hits_are_in_arrival_order_not_recording_order() {
        let hits = Hits::new();
        let t0 = hits.start();
        let ms = Duration::from_millis;
        let rec = |at: Duration, path: &str, outcome: Outcome| {
            hits.record(t0 + at, Method::POST, path.into(), StatusCode::OK, outcome)
        };
        // Recorded in the order the handlers finished.
        rec(ms(30), "/c", Outcome::Served);
        rec(ms(10), "/a", Outcome::RateLimited);
        rec(ms(30), "/d", Outcome::Served);
        rec(ms(20), "/b", Outcome::Served);
        rec(ms(10), "/a2", Outcome::Served);

        let paths: Vec<_> = hits.all().into_iter().map(|h| h.path).collect();
        assert_eq!(paths, ["/a", "/a2", "/b", "/c", "/d"], "stable by instant");
        assert_eq!(hits.times(), [10, 10, 20, 30, 30].map(ms));
        assert_eq!(hits.times_of(Outcome::Served), [10, 20, 30, 30].map(ms));
        assert_eq!(hits.last().map(|h| h.path), Some("/d".to_owned()));
        assert_eq!(hits.count(), 5);
    }

    #[tokio::test(start_paused = true)]
    async fn times_count_from_start_and_clear_keeps_start() {
        let hits = Hits::new();
        tokio::time::advance(Duration::from_millis(250)).await;
        hits.record(
            Instant::now(),
            Method::GET,
            "/a".into(),
            StatusCode::OK,
            Outcome::Served,
        );
        tokio::time::advance(Duration::from_secs(1)).await;
        hits.record(
            Instant::now(),
            Method::GET,
            "/a".into(),
            StatusCode::TOO_MANY_REQUESTS,
            Outcome::RateLimited,
        );
        assert_eq!(
            hits.times(),
            vec![Duration::from_millis(250), Duration::from_millis(1250)]
        );
        assert_eq!(hits.served(), 1);
        assert_eq!(hits.rate_limited(), 1);
        assert_eq!(
            hits.times_of(Outcome::RateLimited),
            vec![Duration::from_millis(1250)]
        );
        hits.clear();
        assert_eq!(hits.count(), 0);
        hits.record(
            Instant::now(),
            Method::POST,
            "/b".into(),
            StatusCode::OK,
            Outcome::Served,
        );
        assert_eq!(hits.times(), vec![Duration::from_millis(1250)]);
    }
}
