//! Small helpers shared by the layers: time arithmetic that cannot overflow, the one
//! backoff (exponential or linear, capped) and its jitter, and a lock that survives
//! poisoning.

use std::{
    cell::RefCell,
    sync::{Mutex, MutexGuard, PoisonError},
    time::Duration,
};

use tower::util::rng::{HasherRng, Rng};

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

/// The `n`-th exponential delay (`n` from 1; 0 counts as 1): `base * 2^(n-1)`, at most
/// `cap`. Saturates at `cap`, never overflows.
pub(crate) fn exponential(base: Duration, cap: Duration, n: u32) -> Duration {
    1u32.checked_shl(n.max(1) - 1)
        .and_then(|factor| base.checked_mul(factor))
        .map_or(cap, |d| d.min(cap))
}

/// The `n`-th linear delay (`n` from 1; 0 counts as 1): `base * n`, at most `cap`.
pub(crate) fn linear(base: Duration, cap: Duration, n: u32) -> Duration {
    base.checked_mul(n.max(1)).map_or(cap, |d| d.min(cap))
}

thread_local! {
    static RNG: RefCell<HasherRng> = RefCell::new(HasherRng::new());
}

/// A uniform number in `[0, 1)` for jitter, from tower's `HasherRng` (one per thread):
/// spread, not cryptographic quality.
pub(crate) fn unit_random() -> f64 {
    RNG.with(|rng| rng.borrow_mut().next_f64())
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
