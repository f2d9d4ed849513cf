//! A governor clock that reads tokio's time, so paused-clock tests drive the limiter.

use std::time::Duration;

use tokio::time::Instant;

/// governor's [`Clock`](governor::clock::Clock) on `tokio::time`: its instants are the
/// [`Duration`]s elapsed since an origin taken when the clock was made (governor
/// implements `Reference` for `Duration`).
///
/// governor's default clock reads the real monotonic clock, which tokio cannot pause
/// or advance; this one reads [`tokio::time::Instant::now`], which it can.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TokioClock {
    origin: Instant,
}

impl TokioClock {
    pub(crate) fn new() -> Self {
        TokioClock {
            origin: Instant::now(),
        }
    }
}

impl governor::clock::Clock for TokioClock {
    type Instant = Duration;

    fn now(&self) -> Duration {
        Instant::now().saturating_duration_since(self.origin)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::Clock;

    #[tokio::test(start_paused = true)]
    async fn follows_paused_tokio_time() {
        let clock = TokioClock::new();
        assert_eq!(clock.now(), Duration::ZERO);
        tokio::time::advance(Duration::from_millis(250)).await;
        assert_eq!(clock.now(), Duration::from_millis(250));
    }
}
