//! The IETF `RateLimit` header (draft-ietf-httpapi-ratelimit-headers), in both the
//! combined dictionary form of draft-07 (`limit=10, remaining=0, reset=5`) and the
//! structured-field list of draft-08 and later (`"default";r=0;t=30`).

use std::time::{Duration, SystemTime};

use super::number::{self, Invalid};

/// One policy's quota state: what is left and when the window resets.
#[derive(Debug, Default, Clone, Copy)]
struct Window<'a> {
    remaining: Option<&'a str>,
    reset: Option<&'a str>,
}

/// Splits `s` on `sep` outside double-quoted strings (which may contain `\"`).
fn split_unquoted(s: &str, sep: u8) -> impl Iterator<Item = &str> {
    let bytes = s.as_bytes();
    let mut start = 0;
    let mut quoted = false;
    let mut escaped = false;
    let mut parts = Vec::new();
    for (i, &b) in bytes.iter().enumerate() {
        if escaped {
            escaped = false;
        } else if quoted && b == b'\\' {
            escaped = true;
        } else if b == b'"' {
            quoted = !quoted;
        } else if b == sep && !quoted {
            // `sep` is ASCII, so `start..i` falls on char boundaries.
            parts.push(&s[start..i]);
            start = i + 1;
        }
    }
    parts.push(&s[start..]);
    parts.into_iter()
}

/// The wait the `RateLimit` header values announce.
///
/// Every value (header line) and every list member is read: the structured form's
/// items each carry `r` (remaining) and `t` (reset), the dictionary form's members
/// `remaining` and `reset` describe one window. When some window is exhausted
/// (remaining is 0) the answer is the longest reset among exhausted windows;
/// otherwise the longest reset of all. Reset values go through
/// [`number::reset`], so a Unix timestamp is also understood.
///
/// `Ok(None)` means no reset was announced; `Err` that every announced reset was
/// unusable (the first reason is returned).
pub(crate) fn wait<'a>(
    values: impl Iterator<Item = &'a str>,
    now: SystemTime,
) -> Result<Option<Duration>, Invalid> {
    let mut windows: Vec<Window<'a>> = Vec::new();
    for value in values {
        let mut dict = Window::default();
        for member in split_unquoted(value, b',') {
            let mut item = Window::default();
            for param in split_unquoted(member, b';') {
                let Some((key, val)) = param.split_once('=') else {
                    continue;
                };
                let val = val.trim();
                match key.trim().to_ascii_lowercase().as_str() {
                    "r" => item.remaining = Some(val),
                    "t" => item.reset = Some(val),
                    "remaining" => dict.remaining = Some(val),
                    "reset" => dict.reset = Some(val),
                    _ => {}
                }
            }
            if item.reset.is_some() {
                windows.push(item);
            }
        }
        if dict.reset.is_some() {
            windows.push(dict);
        }
    }

    let mut first_err = None;
    let mut exhausted: Option<Duration> = None;
    let mut any: Option<Duration> = None;
    for w in &windows {
        let Some(reset) = w.reset else { continue };
        match number::reset(reset, now) {
            Ok(d) => {
                any = any.max(Some(d));
                let is_exhausted = w
                    .remaining
                    .and_then(|r| r.parse::<f64>().ok())
                    .is_some_and(|r| r <= 0.0);
                if is_exhausted {
                    exhausted = exhausted.max(Some(d));
                }
            }
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
    }
    match (exhausted.or(any), first_err) {
        (Some(d), _) => Ok(Some(d)),
        (None, Some(e)) => Err(e),
        (None, None) => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    fn now() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_700_000_000)
    }

    fn one(v: &str) -> Result<Option<Duration>, Invalid> {
        wait(std::iter::once(v), now())
    }

    #[test]
    fn dictionary_form() {
        assert_eq!(
            one("limit=10, remaining=0, reset=5"),
            Ok(Some(Duration::from_secs(5)))
        );
        assert_eq!(
            one("limit=10,remaining=3,reset=7"),
            Ok(Some(Duration::from_secs(7)))
        );
    }

    #[test]
    fn structured_form() {
        assert_eq!(
            one(r#""default";r=0;t=30"#),
            Ok(Some(Duration::from_secs(30)))
        );
        assert_eq!(one("default;r=0;t=30"), Ok(Some(Duration::from_secs(30))));
    }

    #[test]
    fn structured_form_prefers_exhausted_policies() {
        // The hour policy still has quota; the minute one is exhausted.
        assert_eq!(
            one(r#""hour";r=500;t=3000, "minute";r=0;t=12"#),
            Ok(Some(Duration::from_secs(12)))
        );
        // Two exhausted: the longer wait wins.
        assert_eq!(
            one(r#""a";r=0;t=5, "b";r=0;t=9"#),
            Ok(Some(Duration::from_secs(9)))
        );
        // None exhausted: the longest reset.
        assert_eq!(
            one(r#""a";r=1;t=5, "b";r=2;t=9"#),
            Ok(Some(Duration::from_secs(9)))
        );
    }

    #[test]
    fn quoted_separators_do_not_split() {
        assert_eq!(
            one(r#""a,b;c\"d";r=0;t=4"#),
            Ok(Some(Duration::from_secs(4)))
        );
    }

    #[test]
    fn several_header_lines_are_one_list() {
        let v = [r#""a";r=5;t=50"#, r#""b";r=0;t=3"#];
        assert_eq!(wait(v.into_iter(), now()), Ok(Some(Duration::from_secs(3))));
    }

    #[test]
    fn bad_or_missing_reset() {
        assert_eq!(one("limit=10, remaining=0"), Ok(None));
        assert_eq!(one(r#""default";r=0"#), Ok(None));
        assert_eq!(one(""), Ok(None));
        assert_eq!(one(r#""default";r=0;t=-1"#), Err(Invalid::Negative));
        assert_eq!(one("reset=soon"), Err(Invalid::Malformed));
        // One bad window does not hide a good one.
        assert_eq!(
            one(r#""a";r=0;t=x, "b";r=0;t=6"#),
            Ok(Some(Duration::from_secs(6)))
        );
    }
}
