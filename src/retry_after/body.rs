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

/// A body prefix parsed as JSON: `None` when it is not complete JSON.
///
/// The one place the crate parses a body as JSON; classifiers reach it through
/// [`ResponseView::json`](crate::classify::ResponseView::json), which calls it at
/// most once per view.
pub(crate) fn parse_json(body: &[u8]) -> Option<Value> {
    #[cfg(test)]
    parses::count();
    serde_json::from_slice(body).ok()
}

/// How many times this thread called [`parse_json`] (unit tests only): proof that
/// a classified body is parsed once.
#[cfg(test)]
pub(crate) mod parses {
    use std::cell::Cell;

    thread_local! {
        static PARSES: Cell<usize> = const { Cell::new(0) };
    }

    pub(super) fn count() {
        PARSES.with(|n| n.set(n.get() + 1));
    }

    /// The calls so far on this thread.
    pub(crate) fn so_far() -> usize {
        PARSES.with(Cell::get)
    }
}

/// The wait in a parsed JSON body's retry field, if it has one.
///
/// Returns the field's pointer with the error when the field is there but unusable.
pub(crate) fn json_value(value: &Value) -> Option<Result<Duration, (&'static str, Invalid)>> {
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

/// The phrases after which a wait is looked for, lower-case. Each starts with `r`
/// or `t` (see [`may_start_phrase`]).
pub(crate) const PHRASES: [&[u8]; 4] = [
    b"retry after",
    b"retry-after",
    b"retry_after",
    b"try again in",
];

/// How many separator bytes (spaces, `:`, `=`, quotes) may sit between a phrase and
/// its number.
const MAX_SEPARATORS: usize = 8;

/// Whether `b` is a byte a phrase can start with: `r`, `R`, `t` or `T`. (`b | 0x20`
/// is `r` for exactly `R` and `r`, and `t` for exactly `T` and `t`.)
fn may_start_phrase(b: u8) -> bool {
    matches!(b | 0x20, b'r' | b't')
}

/// The first position at or after `from` whose byte may start a phrase.
///
/// Blocks of 16 bytes with no such byte are skipped whole (a branch-free test the
/// compiler vectorises), so long runs of other bytes, such as JSON padding, cost
/// little.
fn next_candidate(body: &[u8], from: usize) -> Option<usize> {
    const BLOCK: usize = 16;
    let mut at = from;
    while let Some(block) = body.get(at..at + BLOCK) {
        if block
            .iter()
            .fold(false, |any, &b| any | may_start_phrase(b))
        {
            break;
        }
        at += BLOCK;
    }
    let offset = body.get(at..)?.iter().position(|&b| may_start_phrase(b))?;
    Some(at + offset)
}

/// Whether `s` starts with `prefix` (lower-case), ignoring ASCII case.
fn starts_with_ignore_case(s: &[u8], prefix: &[u8]) -> bool {
    s.get(..prefix.len())
        .is_some_and(|head| head.eq_ignore_ascii_case(prefix))
}

/// The first "retry after N" style wait in a body prefix.
///
/// Case-insensitive. Recognised: `retry after 4310`, `Retry-After: 5`,
/// `"retry_after": 1.5`, `Please retry after 7 seconds`, `try again in 20s`,
/// `try again in 1m30s`, `try again in 250 ms`. A bare number is seconds. Occurrences
/// whose number is unusable are skipped (the first reason is returned if none is
/// usable).
///
/// The body is not copied: the scan jumps between bytes that may start a phrase and
/// compares the phrases there only, ignoring ASCII case.
pub(crate) fn text(body: &[u8]) -> Option<Result<Duration, Invalid>> {
    let mut first_err = None;
    let mut from = 0;
    while let Some(i) = next_candidate(body, from) {
        from = i + 1;
        let Some(phrase) = PHRASES
            .iter()
            .find(|p| starts_with_ignore_case(&body[i..], p))
        else {
            continue;
        };
        let mut pos = i + phrase.len();
        let sep_end = (pos + MAX_SEPARATORS).min(body.len());
        while pos < sep_end && matches!(body[pos], b' ' | b'\t' | b':' | b'=' | b'"' | b'\'') {
            pos += 1;
        }
        match scan_duration(&body[pos..]) {
            Some(Ok(d)) => return Some(Ok(d)),
            Some(Err(e)) => {
                first_err.get_or_insert(e);
            }
            None => {}
        }
    }
    first_err.map(Err)
}

/// The seconds a unit word (ASCII letters, any case) stands for: `s`, `Seconds`, `MS`.
fn unit_secs(word: &[u8]) -> Option<f64> {
    /// The longest unit word [`number::text_unit`] knows: `milliseconds`.
    const LONGEST: usize = 12;
    let mut buf = [0u8; LONGEST];
    let lower = buf.get_mut(..word.len())?;
    lower.copy_from_slice(word);
    lower.make_ascii_lowercase();
    std::str::from_utf8(lower).ok().and_then(number::text_unit)
}

/// Splits a leading run of bytes matching `pred` off `s`.
fn take_while(s: &[u8], pred: impl Fn(u8) -> bool) -> (&[u8], &[u8]) {
    let n = s.iter().position(|&b| !pred(b)).unwrap_or(s.len());
    s.split_at(n)
}

/// Reads a wait at the start of `s` (any case): one or more `<number><unit>`
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
            let per = unit_secs(word).unwrap_or(1.0);
            (per, false, rest)
        } else {
            match unit_secs(attached) {
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

    fn json(body: &[u8]) -> Option<Result<Duration, (&'static str, Invalid)>> {
        json_value(&parse_json(body)?)
    }

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

    /// The scanner as it was before it stopped copying the body to lower case, kept
    /// verbatim as the reference the current one must agree with.
    mod before {
        use super::super::{number, take_while, Invalid, MAX_SEPARATORS, PHRASES};
        use std::time::Duration;

        pub(super) fn text_before(body: &[u8]) -> Option<Result<Duration, Invalid>> {
            let lower = body.to_ascii_lowercase();
            let mut first_err = None;
            for i in 0..lower.len() {
                let Some(phrase) = PHRASES.iter().find(|p| lower[i..].starts_with(p)) else {
                    continue;
                };
                let mut pos = i + phrase.len();
                let sep_end = (pos + MAX_SEPARATORS).min(lower.len());
                while pos < sep_end
                    && matches!(lower[pos], b' ' | b'\t' | b':' | b'=' | b'"' | b'\'')
                {
                    pos += 1;
                }
                match scan_duration_before(&lower[pos..]) {
                    Some(Ok(d)) => return Some(Ok(d)),
                    Some(Err(e)) => {
                        first_err.get_or_insert(e);
                    }
                    None => {}
                }
            }
            first_err.map(Err)
        }

        /// Reads a wait at the start of `s` (lower-case): one or more `<number><unit>`
        /// parts (`1m30s`), or one number followed by an optional unit word (`7 seconds`).
        /// `None` when `s` does not start with a digit.
        fn scan_duration_before(mut s: &[u8]) -> Option<Result<Duration, Invalid>> {
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
    }

    /// Pieces that make phrases, separators, numbers and units in mixed case,
    /// plus bytes that are not ASCII or not UTF-8.
    const PIECES: &[&[u8]] = &[
        b"retry after",
        b"RETRY AFTER",
        b"Retry-After",
        b"retry_AFTER",
        b"rEtRy",
        b"retry",
        b"try again in",
        b"Try Again In",
        b"TRY again",
        b"again in",
        b"re",
        b"r",
        b"R",
        b"t",
        b"T",
        b"y",
        b" ",
        b" ",
        b":",
        b"=",
        b"\"",
        b"'",
        b"\t",
        b"0",
        b"1",
        b"7",
        b"42",
        b"4310",
        b"9999999999999999999999999",
        b".",
        b".5",
        b"s",
        b"S",
        b"ms",
        b"MS",
        b"m",
        b"M",
        b"min",
        b"Minutes",
        b"h",
        b"HOURS",
        b"seconds",
        b"Seconds",
        b"MILLISECONDS",
        b"millisecondss",
        b"x",
        b"please",
        b"\xe9",
        b"\xff\xfe",
        "频率".as_bytes(),
    ];

    proptest::proptest! {
        #[test]
        fn text_scan_agrees_with_the_lower_casing_scan(
            pieces in proptest::collection::vec(proptest::sample::select(PIECES), 0..24)
        ) {
            let body = pieces.concat();
            proptest::prop_assert_eq!(text(&body), before::text_before(&body));
        }

        #[test]
        fn text_scan_agrees_on_arbitrary_bytes(
            body in proptest::collection::vec(proptest::num::u8::ANY, 0..256)
        ) {
            proptest::prop_assert_eq!(text(&body), before::text_before(&body));
        }
    }

    #[test]
    fn text_units_in_any_case() {
        assert_eq!(text(b"TRY AGAIN IN 20S"), Some(Ok(Duration::from_secs(20))));
        assert_eq!(
            text(b"Retry After 250 MILLISECONDS"),
            Some(Ok(Duration::from_millis(250)))
        );
        assert_eq!(
            text(b"retry after 1M30S"),
            Some(Ok(Duration::from_secs(90)))
        );
        // A word longer than any unit is no unit: bare seconds.
        assert_eq!(
            text(b"retry after 3 millisecondsss"),
            Some(Ok(Duration::from_secs(3)))
        );
    }

    #[test]
    fn text_finds_phrases_across_skipped_blocks() {
        // Phrases before, inside and after long runs with no candidate byte, at
        // every alignment against the scanner's 16-byte blocks.
        for pad in 0..40 {
            let mut body = vec![b' '; pad];
            body.extend_from_slice(b"RETRY AFTER 5");
            assert_eq!(text(&body), Some(Ok(Duration::from_secs(5))), "pad {pad}");
            let mut body = vec![b'{'; pad];
            body.extend_from_slice(b"try again in 2s");
            body.extend(vec![b' '; pad]);
            assert_eq!(text(&body), Some(Ok(Duration::from_secs(2))), "pad {pad}");
        }
        assert_eq!(text(&[b' '; 100]), None);
    }
}
