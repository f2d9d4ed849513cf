//! The one Retry-After parser: every source, the precedence between them, and
//! tolerance of bad input.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{HeaderMap, HeaderName, HeaderValue};
use proptest::prelude::*;
use ratewise::retry_after::{parse, parse_at};

/// A fixed "now": 2023-11-14T22:13:20Z.
fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_700_000_000)
}

fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (name, value) in pairs {
        h.append(
            *name,
            HeaderValue::from_str(value).expect("test header value"),
        );
    }
    h
}

fn at(pairs: &[(&'static str, &str)]) -> Option<Duration> {
    parse_at(&headers(pairs), None, now())
}

fn secs(n: u64) -> Option<Duration> {
    Some(Duration::from_secs(n))
}

const TELEGRAM_BODY: &[u8] = br#"{"ok":false,"error_code":429,"description":"Too Many Requests: retry after 4310","parameters":{"retry_after":4310}}"#;

// ---- each source on its own ----

#[test]
fn retry_after_ms_integer_and_float() {
    assert_eq!(
        at(&[("retry-after-ms", "1500")]),
        Some(Duration::from_millis(1500))
    );
    assert_eq!(
        at(&[("retry-after-ms", "20.5")]),
        Some(Duration::from_micros(20_500))
    );
}

#[test]
fn retry_after_seconds_integer_and_float() {
    assert_eq!(at(&[("retry-after", "120")]), secs(120));
    assert_eq!(
        at(&[("Retry-After", "1.5")]),
        Some(Duration::from_millis(1500))
    );
    assert_eq!(at(&[("retry-after", "4310")]), secs(4310));
    assert_eq!(at(&[("retry-after", "0")]), secs(0));
}

#[test]
fn retry_after_http_date_in_the_future() {
    let date = httpdate::fmt_http_date(now() + Duration::from_secs(120));
    assert_eq!(at(&[("retry-after", &date)]), secs(120));
}

#[test]
fn retry_after_http_date_in_the_past_is_zero() {
    let date = httpdate::fmt_http_date(now() - Duration::from_secs(3600));
    assert_eq!(at(&[("retry-after", &date)]), secs(0));
}

#[test]
fn retry_after_http_date_is_measured_against_the_real_clock_by_parse() {
    // `parse` uses SystemTime::now(): a date a day ahead is a wait of about a day.
    let date = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(86_400));
    let wait = parse(&headers(&[("retry-after", &date)]), None).expect("a wait");
    assert!(
        wait > Duration::from_secs(86_000) && wait <= Duration::from_secs(86_400),
        "{wait:?}"
    );
}

#[test]
fn x_ratelimit_reset_after_seconds() {
    assert_eq!(
        at(&[("x-ratelimit-reset-after", "2.5")]),
        Some(Duration::from_millis(2500))
    );
    assert_eq!(at(&[("x-ratelimit-reset-after", "64")]), secs(64));
}

#[test]
fn x_ratelimit_reset_delta_and_epoch() {
    // Small values are deltas.
    assert_eq!(at(&[("x-ratelimit-reset", "30")]), secs(30));
    // Values >= 1e9 are Unix seconds, measured against `now`.
    assert_eq!(at(&[("x-ratelimit-reset", "1700000090")]), secs(90));
    // Float Unix seconds (Discord).
    assert_eq!(
        at(&[("x-ratelimit-reset", "1700000001.25")]),
        Some(Duration::from_millis(1250))
    );
    // Values >= 1e12 are Unix milliseconds.
    assert_eq!(at(&[("x-ratelimit-reset", "1700000007000")]), secs(7));
    // A reset in the past: no wait.
    assert_eq!(at(&[("x-ratelimit-reset", "1690000000")]), secs(0));
}

#[test]
fn openai_reset_durations_take_the_larger() {
    assert_eq!(
        at(&[
            ("x-ratelimit-reset-requests", "1s"),
            ("x-ratelimit-reset-tokens", "6m0s")
        ]),
        secs(360)
    );
    assert_eq!(
        at(&[("x-ratelimit-reset-tokens", "20ms")]),
        Some(Duration::from_millis(20))
    );
    assert_eq!(
        at(&[("x-ratelimit-reset-requests", "1h2m3.5s")]),
        Some(Duration::from_millis(3_723_500))
    );
}

#[test]
fn ietf_ratelimit_combined_dictionary_form() {
    assert_eq!(
        at(&[("ratelimit", "limit=10, remaining=0, reset=5")]),
        secs(5)
    );
}

#[test]
fn ietf_ratelimit_structured_field_form() {
    assert_eq!(at(&[("ratelimit", r#""default";r=0;t=30"#)]), secs(30));
    assert_eq!(
        at(&[("ratelimit", r#""day";r=900;t=40000, "burst";r=0;t=2"#)]),
        secs(2),
        "the exhausted policy decides"
    );
}

#[test]
fn ietf_ratelimit_reset_header() {
    assert_eq!(at(&[("ratelimit-reset", "5")]), secs(5));
}

#[test]
fn telegram_body_retry_after_4310() {
    assert_eq!(
        parse_at(&HeaderMap::new(), Some(TELEGRAM_BODY), now()),
        secs(4310)
    );
}

#[test]
fn telegram_header_and_body_agree() {
    let h = headers(&[("retry-after", "4310")]);
    assert_eq!(parse_at(&h, Some(TELEGRAM_BODY), now()), secs(4310));
}

#[test]
fn text_in_the_body() {
    let cases: &[(&str, Option<Duration>)] = &[
        ("Too Many Requests: retry after 4310", secs(4310)),
        ("retry-after: 12", secs(12)),
        ("Please retry after 7 seconds", secs(7)),
        (
            "Rate limit reached. Please try again in 20s. Visit ...",
            secs(20),
        ),
        ("please TRY AGAIN IN 1m30s", secs(90)),
        ("try again in 250ms", Some(Duration::from_millis(250))),
        ("接口调用超过频率限制", None),
        ("retry after a while", None),
    ];
    for (body, want) in cases {
        assert_eq!(
            parse_at(&HeaderMap::new(), Some(body.as_bytes()), now()),
            *want,
            "{body}"
        );
    }
}

#[test]
fn truncated_telegram_body_still_yields_the_description_hint() {
    let cut = &TELEGRAM_BODY[..TELEGRAM_BODY.len() - 20];
    assert!(serde_json::from_slice::<serde_json::Value>(cut).is_err());
    assert_eq!(parse_at(&HeaderMap::new(), Some(cut), now()), secs(4310));
}

#[test]
fn truncated_json_with_only_the_field_left() {
    let body = br#"{"ok":false,"parameters":{"retry_after": 33"#;
    assert_eq!(parse_at(&HeaderMap::new(), Some(body), now()), secs(33));
}

#[test]
fn body_is_not_read_when_absent() {
    assert_eq!(at(&[]), None);
}

// ---- precedence ----

#[test]
fn precedence_is_the_documented_order() {
    let date = httpdate::fmt_http_date(now() + Duration::from_secs(2));
    let all: Vec<(&'static str, String)> = vec![
        ("retry-after-ms", "1000".into()),
        ("retry-after", date),
        ("x-ratelimit-reset-after", "3".into()),
        ("x-ratelimit-reset", "4".into()),
        ("x-ratelimit-reset-requests", "5s".into()),
        ("ratelimit", r#""default";r=0;t=6"#.into()),
        ("ratelimit-reset", "7".into()),
    ];
    // With sources 1..=n removed, the next one answers; last the body's JSON (8),
    // then the body's text (9).
    let body_json = br#"{"parameters":{"retry_after":8},"description":"retry after 9"}"#;
    let body_text = b"retry after 9";
    let expected = [1, 2, 3, 4, 5, 6, 7];
    for skip in 0..all.len() {
        let pairs: Vec<(&'static str, &str)> =
            all[skip..].iter().map(|(k, v)| (*k, v.as_str())).collect();
        assert_eq!(
            parse_at(&headers(&pairs), Some(body_json), now()),
            secs(expected[skip]),
            "with the first {skip} sources removed"
        );
    }
    assert_eq!(parse_at(&HeaderMap::new(), Some(body_json), now()), secs(8));
    assert_eq!(parse_at(&HeaderMap::new(), Some(body_text), now()), secs(9));
}

#[test]
fn invalid_source_falls_through_to_the_next() {
    assert_eq!(
        at(&[("retry-after-ms", "soon"), ("retry-after", "5")]),
        secs(5)
    );
    assert_eq!(
        at(&[("retry-after", "-5"), ("x-ratelimit-reset-after", "6")]),
        secs(6)
    );
    assert_eq!(
        at(&[("retry-after", "1e400"), ("x-ratelimit-reset", "7")]),
        secs(7)
    );
    let h = headers(&[("retry-after", "garbage")]);
    assert_eq!(parse_at(&h, Some(TELEGRAM_BODY), now()), secs(4310));
}

#[test]
fn multiple_values_first_valid_wins() {
    assert_eq!(
        at(&[
            ("retry-after", ""),
            ("retry-after", "NaN"),
            ("retry-after", "11"),
            ("retry-after", "12")
        ]),
        secs(11)
    );
}

// ---- bad values are ignored ----

#[test]
fn bad_values_are_ignored_under_every_header() {
    let names = [
        "retry-after-ms",
        "retry-after",
        "x-ratelimit-reset-after",
        "x-ratelimit-reset",
        "x-ratelimit-reset-requests",
        "x-ratelimit-reset-tokens",
        "ratelimit",
        "ratelimit-reset",
    ];
    let bad = [
        "-1", "-0.5", "garbage", "1e400", "", "   ", "NaN", "inf", "-inf", "1e300", "t=-3",
        "reset=x",
    ];
    for name in names {
        for value in bad {
            assert_eq!(at(&[(name, value)]), None, "{name}: {value:?}");
        }
    }
}

#[test]
fn overflowing_values_are_ignored() {
    // One more than u64::MAX seconds does not fit a Duration.
    for name in [
        "retry-after",
        "x-ratelimit-reset-after",
        "x-ratelimit-reset-requests",
        "x-ratelimit-reset-tokens",
    ] {
        assert_eq!(at(&[(name, "18446744073709551616")]), None, "{name}");
        assert_eq!(at(&[(name, "1e300")]), None, "{name}");
    }
    // As milliseconds it fits (584 million years); a million times more does not.
    assert!(at(&[("retry-after-ms", "18446744073709551616")]).is_some());
    assert_eq!(
        at(&[("retry-after-ms", "18446744073709551616000000")]),
        None
    );
    // Reset values this large are Unix milliseconds: a far-future date still fits,
    // 1e300 ms after the epoch does not.
    for name in ["x-ratelimit-reset", "ratelimit-reset"] {
        assert_eq!(at(&[(name, "1e300")]), None, "{name}");
    }
    assert_eq!(at(&[("ratelimit", r#""default";r=0;t=1e300"#)]), None);
}

#[test]
fn non_utf8_header_bytes_are_ignored() {
    let mut h = HeaderMap::new();
    h.insert("retry-after", HeaderValue::from_bytes(b"1\xff").unwrap());
    assert_eq!(parse_at(&h, None, now()), None);
    h.append("retry-after", HeaderValue::from_static("2"));
    assert_eq!(parse_at(&h, None, now()), secs(2));
}

#[test]
fn bad_body_values_are_ignored() {
    for body in [
        &br#"{"parameters":{"retry_after":-1}}"#[..],
        br#"{"parameters":{"retry_after":"soon"}}"#,
        br#"{"parameters":{"retry_after":1e400}}"#,
        br#"{"parameters":{"retry_after":18446744073709551616e10}}"#,
        b"retry after 99999999999999999999999999999999",
        b"\xff\xfe\x00",
    ] {
        assert_eq!(
            parse_at(&HeaderMap::new(), Some(body), now()),
            None,
            "{}",
            String::from_utf8_lossy(body)
        );
    }
}

// ---- never panics ----

const NAMES: [&str; 8] = [
    "retry-after-ms",
    "retry-after",
    "x-ratelimit-reset-after",
    "x-ratelimit-reset",
    "x-ratelimit-reset-requests",
    "x-ratelimit-reset-tokens",
    "ratelimit",
    "ratelimit-reset",
];

fn check(h: &HeaderMap, body: &[u8], now_secs: u64) {
    let now = UNIX_EPOCH + Duration::from_secs(now_secs);
    // `Duration` is always finite; what must hold is that the call returns.
    let _ = parse_at(h, Some(body), now);
    let _ = parse_at(h, None, now);
    let _ = parse(h, Some(body));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_under_every_header_never_panic(
        values in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..48), NAMES.len()),
        body in proptest::collection::vec(any::<u8>(), 0..256),
        now_secs in 0u64..4_000_000_000,
    ) {
        let mut h = HeaderMap::new();
        for (name, bytes) in NAMES.iter().zip(&values) {
            if let Ok(v) = HeaderValue::from_bytes(bytes) {
                h.append(HeaderName::from_static(name), v);
            }
        }
        check(&h, &body, now_secs);
        for (name, bytes) in NAMES.iter().zip(&values) {
            let mut one = HeaderMap::new();
            if let Ok(v) = HeaderValue::from_bytes(bytes) {
                one.insert(HeaderName::from_static(name), v);
                let got = parse_at(&one, None, UNIX_EPOCH + Duration::from_secs(now_secs));
                if let Some(d) = got {
                    prop_assert!(d.as_secs_f64().is_finite());
                }
            }
        }
    }

    #[test]
    fn integers_round_trip(n in any::<u64>(), ms in any::<u64>()) {
        let v = n.to_string();
        prop_assert_eq!(at(&[("retry-after", &v)]), Some(Duration::from_secs(n)));
        prop_assert_eq!(at(&[("x-ratelimit-reset-after", &v)]), Some(Duration::from_secs(n)));
        let v = ms.to_string();
        prop_assert_eq!(at(&[("retry-after-ms", &v)]), Some(Duration::from_millis(ms)));
        let body = format!(r#"{{"ok":false,"parameters":{{"retry_after":{n}}}}}"#);
        prop_assert_eq!(
            parse_at(&HeaderMap::new(), Some(body.as_bytes()), now()),
            Some(Duration::from_secs(n))
        );
    }

    #[test]
    fn number_like_values_never_panic(
        name in proptest::sample::select(NAMES.to_vec()),
        value in "[-+]?[0-9]{0,25}(\\.[0-9]{0,5})?([eE][-+]?[0-9]{1,4})?(ms|s|m|h)?",
        now_secs in 0u64..4_000_000_000,
    ) {
        let mut h = HeaderMap::new();
        if let Ok(v) = HeaderValue::from_str(&value) {
            h.insert(HeaderName::from_static(name), v);
        }
        if let Some(d) = parse_at(&h, None, UNIX_EPOCH + Duration::from_secs(now_secs)) {
            prop_assert!(d.as_secs_f64().is_finite());
        }
    }

    #[test]
    fn body_text_with_phrases_never_panics(
        prefix in "\\PC{0,20}",
        phrase in proptest::sample::select(vec!["retry after ", "Retry-After: ", "try again in ", "\"retry_after\":", "\"parameters\":{\"retry_after\":"]),
        tail in "[0-9a-zµ. ]{0,30}",
        cut in 0usize..80,
    ) {
        let body = format!("{prefix}{phrase}{tail}");
        let bytes = body.as_bytes();
        let cut = cut.min(bytes.len());
        let got = parse_at(&HeaderMap::new(), Some(&bytes[..cut]), now());
        if let Some(d) = got {
            prop_assert!(d.as_secs_f64().is_finite());
        }
    }
}
