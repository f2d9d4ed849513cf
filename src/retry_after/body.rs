//! Retry hints in a body prefix: Telegram's JSON `parameters.retry_after`, and
//! "retry after N" phrases in any text.
//!
//! The body may be a truncated prefix, not valid JSON, not UTF-8: the JSON reader
//! then finds nothing and the text scanner works on bytes.

use std::time::Duration;

use serde_json::Value;

use super::number::{self, Invalid};

/// The JSON fields read, in order, as seconds: Telegram's
/// `{"parameters":{"retry_after":N}}`, then a top-level `retry_after` (Discord).
pub(crate) const JSON_FIELDS: [&str; 2] = ["/parameters/retry_after", "/retry_after"];

/// The wait in a JSON body's retry field, if the body is complete JSON with one.
///
/// Returns the field's pointer with the error when the field is there but unusable.
pub(crate) fn json(body: &[u8]) -> Option<Result<Duration, (&'static str, Invalid)>> {
    let value: Value = serde_json::from_slice(body).ok()?;
    let mut first_err = None;
    for field in JSON_FIELDS {
        let Some(v) = value.pointer(field) else {
            continue;
        };
        let parsed = match v {
            Value::Number(n) => match n.as_u64() {
                Some(secs) => Ok(Duration::from_secs(secs)),
                None => n.as_f64().map_or(Err(Invalid::Malformed), number::secs_f64),
            },
            Value::String(s) => number::seconds(s),
            _ => Err(Invalid::Malformed),
        };
        match parsed {
            Ok(d) => return Some(Ok(d)),
            Err(e) => {
                first_err.get_or_insert((field, e));
            }
        }
    }
    first_err.map(Err)
}

/// The phrases after which a wait is looked for, lower-case.
pub(crate) const PHRASES: [&[u8]; 4] = [
    b"retry after",
    b"retry-after",
    b"retry_after",
    b"try again in",
];

/// How many separator bytes (spaces, `:`, `=`, quotes) may sit between a phrase and
/// its number.
const MAX_SEPARATORS: usize = 8;

/// The first "retry after N" style wait in a body prefix.
///
/// Case-insensitive. Recognised: `retry after 4310`, `Retry-After: 5`,
/// `"retry_after": 1.5`, `Please retry after 7 seconds`, `try again in 20s`,
/// `try again in 1m30s`, `try again in 250 ms`. A bare number is seconds. Occurrences
/// whose number is unusable are skipped (the first reason is returned if none is
/// usable).
pub(crate) fn text(body: &[u8]) -> Option<Result<Duration, Invalid>> {
    let lower = body.to_ascii_lowercase();
    let mut first_err = None;
    for i in 0..lower.len() {
        let Some(phrase) = PHRASES.iter().find(|p| lower[i..].starts_with(p)) else {
            continue;
        };
        let mut pos = i + phrase.len();
        let sep_end = (pos + MAX_SEPARATORS).min(lower.len());
        while pos < sep_end && matches!(lower[pos], b' ' | b'\t' | b':' | b'=' | b'"' | b'\'') {
            pos += 1;
        }
        match scan_duration(&lower[pos..]) {
            Some(Ok(d)) => return Some(Ok(d)),
            Some(Err(e)) => {
                first_err.get_or_insert(e);
            }
            None => {}
        }
    }
    first_err.map(Err)
}

/// Splits a leading run of bytes matching `pred` off `s`.
fn take_while(s: &[u8], pred: impl Fn(u8) -> bool) -> (&[u8], &[u8]) {
    let n = s.iter().position(|&b| !pred(b)).unwrap_or(s.len());
    s.split_at(n)
}

/// Reads a wait at the start of `s` (lower-case): one or more `<number><unit>`
/// parts (`1m30s`), or one number followed by an optional unit word (`7 seconds`).
/// `None` when `s` does not start with a digit.
fn scan_duration(mut s: &[u8]) -> Option<Result<Duration, Invalid>> {
    let mut total = Duration::ZERO;
    let mut parts = 0;
    loop {
        let (int, rest) = take_while(s, |b| b.is_ascii_digit());
        if int.is_empty() {
            break;
        }
        let (num_len, rest) = match rest {
            [b'.', d, ..] if d.is_ascii_digit() => {
                let (frac, rest) = take_while(&rest[1..], |b| b.is_ascii_digit());
                (int.len() + 1 + frac.len(), rest)
            }
            _ => (int.len(), rest),
        };
        // The number is ASCII digits and at most one dot: valid UTF-8 and a valid f64.
        let value = std::str::from_utf8(&s[..num_len])
            .ok()
            .and_then(|n| n.parse::<f64>().ok());
        let Some(value) = value else {
            return Some(Err(Invalid::Malformed));
        };
        let (attached, after) = take_while(rest, |b| b.is_ascii_alphabetic());
        let (per, more, rest) = if attached.is_empty() {
            // `7 seconds`, `4310`, `4310.`: a separate unit word, else seconds.
            let (_, spaced) = take_while(rest, |b| b == b' ');
            let (word, _) = take_while(spaced, |b| b.is_ascii_alphabetic());
            let per = std::str::from_utf8(word)
                .ok()
                .and_then(number::text_unit)
                .unwrap_or(1.0);
            (per, false, rest)
        } else {
            let unit = std::str::from_utf8(attached)
                .ok()
                .and_then(number::text_unit);
            match unit {
                Some(per) => (per, true, after),
                None => return Some(Err(Invalid::Malformed)),
            }
        };
        let part = match number::secs_f64(value * per) {
            Ok(d) => d,
            Err(e) => return Some(Err(e)),
        };
        total = match total.checked_add(part) {
            Some(t) => t,
            None => return Some(Err(Invalid::Overflow)),
        };
        parts += 1;
        s = rest;
        if !more {
            break;
        }
    }
    (parts > 0).then_some(Ok(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn telegram_json() {
        let body = br#"{"ok":false,"error_code":429,"description":"Too Many Requests: retry after 4310","parameters":{"retry_after":4310}}"#;
        assert_eq!(json(body), Some(Ok(Duration::from_secs(4310))));
    }

    #[test]
    fn top_level_retry_after_float() {
        assert_eq!(
            json(
                br#"{"message":"You are being rate limited.","retry_after":64.57,"global":false}"#
            ),
            Some(Ok(Duration::from_millis(64_570)))
        );
    }

    #[test]
    fn json_field_as_string() {
        assert_eq!(
            json(br#"{"parameters":{"retry_after":"12"}}"#),
            Some(Ok(Duration::from_secs(12)))
        );
    }

    #[test]
    fn json_bad_field_is_reported_and_next_field_tried() {
        assert_eq!(
            json(br#"{"parameters":{"retry_after":-5}}"#),
            Some(Err(("/parameters/retry_after", Invalid::Negative)))
        );
        assert_eq!(
            json(br#"{"parameters":{"retry_after":null},"retry_after":3}"#),
            Some(Ok(Duration::from_secs(3)))
        );
    }

    #[test]
    fn json_ignores_non_json_and_absent_fields() {
        assert_eq!(json(b"not json"), None);
        assert_eq!(json(br#"{"ok":false,"parameters":{"retry_af"#), None);
        assert_eq!(json(br#"{"ok":false}"#), None);
        assert_eq!(json(b"[1,2]"), None);
    }

    #[test]
    fn text_forms() {
        let cases: &[(&[u8], Duration)] = &[
            (
                b"Too Many Requests: retry after 4310",
                Duration::from_secs(4310),
            ),
            (b"RETRY AFTER 5", Duration::from_secs(5)),
            (b"retry-after: 9", Duration::from_secs(9)),
            (b"Please retry after 7 seconds.", Duration::from_secs(7)),
            (b"Please try again in 20s.", Duration::from_secs(20)),
            (b"Please try again in 1m30s.", Duration::from_secs(90)),
            (b"Please try again in 6m0s", Duration::from_secs(360)),
            (b"try again in 250 ms", Duration::from_millis(250)),
            (b"try again in 1.5 minutes", Duration::from_secs(90)),
            (b"Please try again in 2.345s.", Duration::from_millis(2345)),
            (br#"{"retry_after": 1.5"#, Duration::from_millis(1500)),
            (b"retry after 4310.", Duration::from_secs(4310)),
        ];
        for (body, want) in cases {
            assert_eq!(
                text(body),
                Some(Ok(*want)),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn text_skips_phrases_without_numbers() {
        assert_eq!(
            text(b"Please retry after a while. Or retry after 3 s"),
            Some(Ok(Duration::from_secs(3)))
        );
        assert_eq!(text(b"retry after a while"), None);
        assert_eq!(text(b"no hint here"), None);
        assert_eq!(text(b""), None);
        assert_eq!(text(b"retry after"), None);
    }

    #[test]
    fn text_reports_bad_numbers() {
        assert_eq!(text(b"retry after 5x"), Some(Err(Invalid::Malformed)));
        let huge = format!("retry after {}", "9".repeat(400));
        assert_eq!(text(huge.as_bytes()), Some(Err(Invalid::NotFinite)));
        let big = format!("retry after {}", "9".repeat(30));
        assert_eq!(text(big.as_bytes()), Some(Err(Invalid::Overflow)));
    }

    #[test]
    fn text_tolerates_non_utf8_and_cjk() {
        let mut body = vec![0xff, 0xfe, 0x80];
        body.extend_from_slice("请求过多, retry after 11 秒".as_bytes());
        assert_eq!(text(&body), Some(Ok(Duration::from_secs(11))));
    }
}
