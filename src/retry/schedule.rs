//! The delays between attempts when the server did not say how long to wait.

use std::time::Duration;

use crate::util;

/// How scheduled delays are randomised, so that many clients failing together do not
/// retry together.
///
/// Jitter applies to scheduled delays only, never to a wait the server asked for.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Jitter {
    /// The delay as scheduled.
    #[default]
    None,
    /// A uniformly random delay between zero and the scheduled delay.
    Full,
    /// Half the scheduled delay plus a uniformly random part of the other half.
    Equal,
}

impl Jitter {
    /// Applies this jitter to `delay`, with `unit` a number in `[0, 1)`.
    fn apply(self, delay: Duration, unit: f64) -> Duration {
        match self {
            Jitter::None => delay,
            Jitter::Full => delay.mul_f64(unit),
            Jitter::Equal => {
                let half = delay / 2;
                half + (delay - half).mul_f64(unit)
            }
        }
    }
}

/// The schedule of delays, validated by the builder.
#[derive(Debug, Clone)]
pub(crate) enum Schedule {
    /// Retry `n` (1-based) waits `delays[n - 1]`, or the last entry once past the end.
    List(Box<[Duration]>),
    /// Retry `n` waits `base * 2^(n-1)`, at most `cap`.
    Exponential { base: Duration, cap: Duration },
}

impl Schedule {
    /// The delay before retry number `retry` (1 for the first retry), before jitter.
    pub(crate) fn base_delay(&self, retry: u32) -> Duration {
        let n = retry.max(1);
        match self {
            Schedule::List(delays) => {
                let i = (n as usize - 1).min(delays.len().saturating_sub(1));
                delays.get(i).copied().unwrap_or(Duration::ZERO)
            }
            Schedule::Exponential { base, cap } => util::exponential(*base, *cap, n),
        }
    }

    /// The delay before retry number `retry`, with `jitter` applied.
    pub(crate) fn delay(&self, retry: u32, jitter: Jitter) -> Duration {
        let d = self.base_delay(retry);
        if jitter == Jitter::None {
            d
        } else {
            jitter.apply(d, util::unit_random())
        }
    }

    /// The longest delay this schedule can produce.
    pub(crate) fn longest(&self) -> Duration {
        match self {
            Schedule::List(delays) => delays.iter().copied().max().unwrap_or(Duration::ZERO),
            Schedule::Exponential { cap, .. } => *cap,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn list_is_followed_then_repeats_its_last_entry() {
        let s = Schedule::List(vec![ms(500), ms(1500), ms(3000)].into());
        assert_eq!(s.base_delay(1), ms(500));
        assert_eq!(s.base_delay(2), ms(1500));
        assert_eq!(s.base_delay(3), ms(3000));
        assert_eq!(s.base_delay(9), ms(3000));
        assert_eq!(s.longest(), ms(3000));
    }

    #[test]
    fn exponential_doubles_up_to_the_cap_without_overflow() {
        let s = Schedule::Exponential {
            base: ms(100),
            cap: ms(1000),
        };
        assert_eq!(s.base_delay(1), ms(100));
        assert_eq!(s.base_delay(2), ms(200));
        assert_eq!(s.base_delay(4), ms(800));
        assert_eq!(s.base_delay(5), ms(1000));
        assert_eq!(s.base_delay(u32::MAX), ms(1000));
        let huge = Schedule::Exponential {
            base: Duration::from_secs(u64::MAX / 2),
            cap: Duration::MAX,
        };
        assert_eq!(huge.base_delay(40), Duration::MAX);
    }

    #[test]
    fn jitter_stays_in_its_range() {
        let s = Schedule::Exponential {
            base: ms(1000),
            cap: ms(1000),
        };
        let mut full_seen_low = false;
        for _ in 0..1000 {
            let f = s.delay(1, Jitter::Full);
            assert!(f <= ms(1000), "{f:?}");
            full_seen_low |= f < ms(500);
            let e = s.delay(1, Jitter::Equal);
            assert!(e >= ms(500) && e <= ms(1000), "{e:?}");
            assert_eq!(s.delay(1, Jitter::None), ms(1000));
        }
        assert!(
            full_seen_low,
            "full jitter never went below half in 1000 draws"
        );
    }

    #[test]
    fn unit_random_is_in_range_and_varies() {
        let draws: Vec<f64> = (0..100).map(|_| util::unit_random()).collect();
        assert!(draws.iter().all(|u| (0.0..1.0).contains(u)));
        let first = draws[0];
        assert!(draws.iter().any(|u| *u != first));
    }
}
