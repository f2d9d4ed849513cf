//! Small helpers shared by the layers: time arithmetic that cannot overflow, and a
//! lock that survives poisoning.

use std::{
    sync::{Mutex, MutexGuard, PoisonError},
    time::Duration,
};

use tokio::time::Instant;

/// About thirty years: what "never" means for a deadline.
const FAR: Duration = Duration::from_secs(60 * 60 * 24 * 365 * 30);

/// `now + d`, saturating far in the future instead of overflowing.
pub(crate) fn add(now: Instant, d: Duration) -> Instant {
    now.checked_add(d)
        .or_else(|| now.checked_add(FAR))
        .unwrap_or(now)
}

/// An instant far in the future: a deadline that never comes.
pub(crate) fn far_future(now: Instant) -> Instant {
    add(now, FAR)
}

/// Whole seconds, rounded up.
pub(crate) fn ceil_secs(d: Duration) -> u64 {
    d.as_secs().saturating_add(u64::from(d.subsec_nanos() > 0))
}

/// Locks `mutex`. Every critical section in the crate leaves its state consistent
/// between statements, so a panic elsewhere while the lock was held is no reason to
/// refuse service.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceil_secs_rounds_up() {
        assert_eq!(ceil_secs(Duration::from_secs(3)), 3);
        assert_eq!(ceil_secs(Duration::from_nanos(1)), 1);
        assert_eq!(ceil_secs(Duration::from_millis(1)), 1);
        assert_eq!(ceil_secs(Duration::from_secs(4310)), 4310);
        assert_eq!(ceil_secs(Duration::MAX), u64::MAX);
    }

    #[tokio::test(start_paused = true)]
    async fn add_saturates() {
        let now = Instant::now();
        assert_eq!(
            add(now, Duration::from_secs(1)),
            now + Duration::from_secs(1)
        );
        assert!(add(now, Duration::MAX) > now + Duration::from_secs(60 * 60 * 24 * 365));
        assert!(far_future(now) > now);
    }
}
