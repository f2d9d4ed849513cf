//! Checked conversions from the numbers servers send to [`Duration`]s.
//!
//! Nothing here panics: every conversion from `f64` goes through
//! [`Duration::try_from_secs_f64`] after the value was checked to be finite and
//! non-negative, and every sum uses `checked_add`.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Why a value was not usable as a wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Invalid {
    Empty,
    Malformed,
    Negative,
    NotFinite,
    Overflow,
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Invalid::Empty => "empty value",
            Invalid::Malformed => "not a number, duration or date",
            Invalid::Negative => "negative value",
            Invalid::NotFinite => "NaN or infinite value",
            Invalid::Overflow => "value too large for a duration",
        })
    }
}

/// Reset values at or above this are Unix timestamps in seconds, not deltas.
///
/// 10⁹ seconds is about 31.7 years, far longer than any server asks a client to wait,
/// and 10⁹ seconds after the epoch is September 2001, earlier than any live server's
/// clock.
pub(crate) const EPOCH_SECONDS_FROM: u64 = 1_000_000_000;

/// Reset values at or above this are Unix timestamps in milliseconds (10¹² seconds
/// after the epoch is in the year 33658, so no seconds timestamp is this large).
pub(crate) const EPOCH_MILLIS_FROM: u64 = 1_000_000_000_000;

/// A number as the server wrote it: an exact integer when it is one.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Num {
    Int(u64),
    Float(f64),
}

/// Parses a decimal number: an integer, or anything `f64` accepts. Rejects empty,
/// negative, NaN and infinite values (`1e400` parses to infinity and is rejected).
fn number(s: &str) -> Result<Num, Invalid> {
    let s = s.trim();
    if s.is_empty() {
        return Err(Invalid::Empty);
    }
    if let Ok(n) = s.parse::<u64>() {
        return Ok(Num::Int(n));
    }
    let v: f64 = s.parse().map_err(|_| Invalid::Malformed)?;
    if !v.is_finite() {
        return Err(Invalid::NotFinite);
    }
    if v < 0.0 {
        return Err(Invalid::Negative);
    }
    Ok(Num::Float(v))
}

/// A finite, non-negative number of seconds as a [`Duration`].
pub(crate) fn secs_f64(v: f64) -> Result<Duration, Invalid> {
    if !v.is_finite() {
        return Err(Invalid::NotFinite);
    }
    if v < 0.0 {
        return Err(Invalid::Negative);
    }
    Duration::try_from_secs_f64(v).map_err(|_| Invalid::Overflow)
}

/// A number of seconds (`120`, `1.5`).
pub(crate) fn seconds(s: &str) -> Result<Duration, Invalid> {
    match number(s)? {
        Num::Int(n) => Ok(Duration::from_secs(n)),
        Num::Float(v) => secs_f64(v),
    }
}

/// A number of milliseconds (`1500`, `20.5`).
pub(crate) fn millis(s: &str) -> Result<Duration, Invalid> {
    match number(s)? {
        Num::Int(n) => Ok(Duration::from_millis(n)),
        Num::Float(v) => secs_f64(v / 1000.0),
    }
}

/// A reset value: a delta in seconds, or a Unix timestamp in seconds (at or above
/// [`EPOCH_SECONDS_FROM`]) or in milliseconds (at or above [`EPOCH_MILLIS_FROM`]).
/// A timestamp in the past means "no wait".
pub(crate) fn reset(s: &str, now: SystemTime) -> Result<Duration, Invalid> {
    let at = match number(s)? {
        Num::Int(n) if n >= EPOCH_MILLIS_FROM => Duration::from_millis(n),
        Num::Int(n) if n >= EPOCH_SECONDS_FROM => Duration::from_secs(n),
        Num::Int(n) => return Ok(Duration::from_secs(n)),
        Num::Float(v) if v >= EPOCH_MILLIS_FROM as f64 => secs_f64(v / 1000.0)?,
        Num::Float(v) if v >= EPOCH_SECONDS_FROM as f64 => secs_f64(v)?,
        Num::Float(v) => return secs_f64(v),
    };
    let at = UNIX_EPOCH.checked_add(at).ok_or(Invalid::Overflow)?;
    Ok(until(at, now))
}

/// How long from `now` until `at`; zero when `at` is not in the future.
pub(crate) fn until(at: SystemTime, now: SystemTime) -> Duration {
    at.duration_since(now).unwrap_or(Duration::ZERO)
}

/// The seconds one unit of a Go-style duration (`1h2m3.5s`) stands for.
fn go_unit(unit: &str) -> Option<f64> {
    Some(match unit {
        "h" => 3600.0,
        "m" => 60.0,
        "s" => 1.0,
        "ms" => 1e-3,
        "us" | "µs" | "μs" => 1e-6,
        "ns" => 1e-9,
        _ => return None,
    })
}

/// A Go-style duration as OpenAI sends in `x-ratelimit-reset-requests` and
/// `x-ratelimit-reset-tokens`: `1s`, `6m0s`, `20ms`, `1h2m3.5s`. A bare number is
/// taken as seconds.
pub(crate) fn go_duration(s: &str) -> Result<Duration, Invalid> {
    let s = s.trim();
    if s.is_empty() {
        return Err(Invalid::Empty);
    }
    if s.starts_with('-') {
        return Err(Invalid::Negative);
    }
    let s = s.strip_prefix('+').unwrap_or(s);
    if s.ends_with(|c: char| c.is_ascii_digit() || c == '.') {
        return seconds(s);
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_len == 0 {
            return Err(Invalid::Malformed);
        }
        let (num, tail) = rest.split_at(num_len);
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let per = go_unit(unit).ok_or(Invalid::Malformed)?;
        let v: f64 = num.parse().map_err(|_| Invalid::Malformed)?;
        let part = secs_f64(v * per)?;
        total = total.checked_add(part).ok_or(Invalid::Overflow)?;
        rest = tail;
    }
    Ok(total)
}

/// The seconds one unit word in free text stands for (`7 seconds`, `20s`, `2 min`).
pub(crate) fn text_unit(word: &str) -> Option<f64> {
    Some(match word {
        "ms" | "msec" | "msecs" | "millisecond" | "milliseconds" => 1e-3,
        "s" | "sec" | "secs" | "second" | "seconds" => 1.0,
        "m" | "min" | "mins" | "minute" | "minutes" => 60.0,
        "h" | "hr" | "hrs" | "hour" | "hours" => 3600.0,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_accepts_integers_and_floats() {
        assert_eq!(seconds("120"), Ok(Duration::from_secs(120)));
        assert_eq!(seconds(" 1.5 "), Ok(Duration::from_millis(1500)));
        assert_eq!(seconds("+3"), Ok(Duration::from_secs(3)));
        assert_eq!(seconds("0"), Ok(Duration::ZERO));
    }

    #[test]
    fn seconds_rejects_bad_values() {
        assert_eq!(seconds(""), Err(Invalid::Empty));
        assert_eq!(seconds("   "), Err(Invalid::Empty));
        assert_eq!(seconds("-1"), Err(Invalid::Negative));
        assert_eq!(seconds("-0.5"), Err(Invalid::Negative));
        assert_eq!(seconds("abc"), Err(Invalid::Malformed));
        assert_eq!(seconds("1e400"), Err(Invalid::NotFinite));
        assert_eq!(seconds("NaN"), Err(Invalid::NotFinite));
        assert_eq!(seconds("inf"), Err(Invalid::NotFinite));
        assert_eq!(seconds("-inf"), Err(Invalid::NotFinite));
        assert_eq!(seconds("18446744073709551616"), Err(Invalid::Overflow));
        assert_eq!(seconds("1e300"), Err(Invalid::Overflow));
    }

    #[test]
    fn seconds_keeps_u64_max_exactly() {
        assert_eq!(
            seconds("18446744073709551615"),
            Ok(Duration::from_secs(u64::MAX))
        );
    }

    #[test]
    fn millis_converts() {
        assert_eq!(millis("1500"), Ok(Duration::from_millis(1500)));
        assert_eq!(millis("20.5"), Ok(Duration::from_micros(20_500)));
        assert_eq!(millis("-5"), Err(Invalid::Negative));
        assert_eq!(millis("1e400"), Err(Invalid::NotFinite));
    }

    #[test]
    fn reset_tells_deltas_from_timestamps() {
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(reset("30", now), Ok(Duration::from_secs(30)));
        assert_eq!(reset("2.5", now), Ok(Duration::from_millis(2500)));
        assert_eq!(
            reset("999999999", now),
            Ok(Duration::from_secs(999_999_999))
        );
        assert_eq!(reset("1700000042", now), Ok(Duration::from_secs(42)));
        assert_eq!(
            reset("1700000042.5", now),
            Ok(Duration::from_millis(42_500))
        );
        assert_eq!(reset("1700000042000", now), Ok(Duration::from_secs(42)));
        assert_eq!(reset("1600000000", now), Ok(Duration::ZERO));
        assert_eq!(reset("-3", now), Err(Invalid::Negative));
    }

    #[test]
    fn go_durations() {
        assert_eq!(go_duration("1s"), Ok(Duration::from_secs(1)));
        assert_eq!(go_duration("6m0s"), Ok(Duration::from_secs(360)));
        assert_eq!(go_duration("20ms"), Ok(Duration::from_millis(20)));
        assert_eq!(
            go_duration("1h2m3.5s"),
            Ok(Duration::from_millis(3_723_500))
        );
        assert_eq!(go_duration("2m59.56s"), Ok(Duration::from_millis(179_560)));
        assert_eq!(go_duration("7"), Ok(Duration::from_secs(7)));
        assert_eq!(go_duration("-1s"), Err(Invalid::Negative));
        assert_eq!(go_duration("1x"), Err(Invalid::Malformed));
        assert_eq!(go_duration("s"), Err(Invalid::Malformed));
        assert_eq!(go_duration("1..2s"), Err(Invalid::Malformed));
        assert_eq!(go_duration(""), Err(Invalid::Empty));
        assert!(go_duration("99999999999999999999999h").is_err());
    }
}
