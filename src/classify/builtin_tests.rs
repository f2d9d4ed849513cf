//! The built-in classifiers, combinators and presets, judged through `ResponseView`
//! against responses shaped like the real incidents (QQ, DingTalk, Telegram, GLM,
//! OpenAI).
//!
//! (Moved from `tests/classify.rs` when the platform-specific classifiers became
//! private; the tests are unchanged.)
//!
//! Each test follows what the ClassifyLayer does: ask `wants_body` first, and hand
//! the classifier the body only if it asked.

use std::time::Duration;

use super::{
    classify_fn, Classifier, DingTalkQpsLimit, JsonFieldIn, Preset, ResponseView, ServerErrors,
    StatusBodyContains, TelegramRetryAfter, TooManyRequests,
};
use crate::Verdict;
use http::{HeaderMap, HeaderValue, StatusCode};

const QQ_400: &str =
    r#"{"code":11241,"message":"接口调用超过频率限制","err_code":40034010,"trace_id":"9a7f"}"#;
const QQ_400_OTHER: &str = r#"{"code":11242,"message":"请求参数错误","trace_id":"9a80"}"#;
const DINGTALK_403: &str = r#"{"code":"Forbidden.AccessDenied.QpsLimitForApi","requestid":"8D6A7E21-0DD4-7A4C-B3A2-1D3E4F5A6B7C","message":"The request has exceeded the QPS limit for this API."}"#;
const DINGTALK_403_APPKEY: &str = r#"{"code":"Forbidden.AccessDenied.QpsLimitForAppkeyAndApi","requestid":"x","message":"appkey qps limit"}"#;
const DINGTALK_403_OTHER: &str = r#"{"code":"Forbidden.AccessDenied.AccessTokenPermissionDenied","requestid":"y","message":"没有调用该接口的权限"}"#;
const GLM_429: &str =
    r#"{"error":{"code":"1302","message":"您的账户已达到速率限制,请您控制请求频率"}}"#;
const GLM_429_ARREARS: &str =
    r#"{"error":{"code":"1113","message":"您的账户已欠费,请充值后重试。"}}"#;
const GLM_200_MENTIONS_1302: &str = r#"{"choices":[{"message":{"role":"assistant","content":"Error 1302 means rate limited: {\"error\":{\"code\":\"1302\"}}"}}]}"#;
const TELEGRAM_429: &str = r#"{"ok":false,"error_code":429,"description":"Too Many Requests: retry after 4310","parameters":{"retry_after":4310}}"#;
const OPENAI_429: &str = r#"{"error":{"message":"Rate limit reached for gpt-4o in organization org-x on requests per min (RPM): Limit 500, Used 500, Requested 1. Please try again in 120ms.","type":"requests","param":null,"code":"rate_limit_exceeded"}}"#;
const OPENAI_429_QUOTA: &str = r#"{"error":{"message":"You exceeded your current quota, please check your plan and billing details.","type":"insufficient_quota","param":null,"code":"insufficient_quota"}}"#;

/// A response as the ClassifyLayer would show it.
struct Resp {
    status: StatusCode,
    headers: HeaderMap,
    body: Vec<u8>,
}

fn resp(status: u16, body: &str) -> Resp {
    Resp {
        status: StatusCode::from_u16(status).expect("status"),
        headers: HeaderMap::new(),
        body: body.as_bytes().to_vec(),
    }
}

impl Resp {
    fn header(mut self, name: &'static str, value: &'static str) -> Self {
        self.headers.append(name, HeaderValue::from_static(value));
        self
    }

    /// What `c` says, seeing the body only when it asks for it.
    fn judge(&self, c: &impl Classifier) -> Option<Verdict> {
        let view = ResponseView::new(self.status, &self.headers);
        if c.wants_body(self.status, &self.headers) {
            c.classify(&view.with_body(&self.body))
        } else {
            c.classify(&view)
        }
    }

    /// What the layer would store: the classifier's verdict, or the status fallback.
    fn verdict(&self, c: &impl Classifier) -> Verdict {
        self.judge(c)
            .unwrap_or_else(|| Verdict::from_status(self.status))
    }
}

fn limited(secs: Option<u64>) -> Verdict {
    Verdict::rate_limited(secs.map(Duration::from_secs))
}

fn all_presets() -> Vec<Preset> {
    vec![
        Preset::qq(),
        Preset::dingtalk(),
        Preset::telegram(),
        Preset::glm(),
        Preset::openai(),
        Preset::default(),
    ]
}

// ---- StatusBodyContains / QQ ----

#[test]
fn qq_400_with_frequency_limit_is_rate_limited() {
    let c = StatusBodyContains::new(StatusCode::BAD_REQUEST, "频率限制");
    assert_eq!(resp(400, QQ_400).judge(&c), Some(limited(None)));
    assert_eq!(resp(400, QQ_400).verdict(&Preset::qq()), limited(None));
    assert_eq!(resp(400, QQ_400).verdict(&Preset::default()), limited(None));
}

#[test]
fn qq_other_400_is_not_rate_limited() {
    let c = StatusBodyContains::new(StatusCode::BAD_REQUEST, "频率限制");
    assert_eq!(resp(400, QQ_400_OTHER).judge(&c), None);
    for p in all_presets() {
        assert_eq!(
            resp(400, QQ_400_OTHER).verdict(&p),
            Verdict::Failure,
            "{p:?}"
        );
    }
}

#[test]
fn status_body_contains_needs_the_status_and_asks_body_only_for_it() {
    let c = StatusBodyContains::new(StatusCode::BAD_REQUEST, "频率限制");
    let h = HeaderMap::new();
    assert!(c.wants_body(StatusCode::BAD_REQUEST, &h));
    for s in [200, 201, 403, 429, 500] {
        assert!(!c.wants_body(StatusCode::from_u16(s).unwrap(), &h), "{s}");
    }
    // The same body under another status is none of its business.
    assert_eq!(resp(403, QQ_400).judge(&c), None);
    assert_eq!(resp(200, QQ_400).judge(&c), None);
}

#[test]
fn status_body_contains_takes_the_hint_from_the_parser() {
    let c = StatusBodyContains::new(StatusCode::BAD_REQUEST, "频率限制");
    let r = resp(400, QQ_400).header("retry-after", "3");
    assert_eq!(r.judge(&c), Some(limited(Some(3))));
}

#[test]
fn status_body_contains_empty_needle_never_matches() {
    let c = StatusBodyContains::new(StatusCode::BAD_REQUEST, "");
    assert_eq!(resp(400, QQ_400).judge(&c), None);
}

// ---- DingTalk ----

#[test]
fn dingtalk_403_qps_limit_is_rate_limited() {
    let c = DingTalkQpsLimit::new();
    assert_eq!(resp(403, DINGTALK_403).judge(&c), Some(limited(None)));
    assert_eq!(
        resp(403, DINGTALK_403_APPKEY).judge(&c),
        Some(limited(None))
    );
    assert_eq!(resp(429, DINGTALK_403).judge(&c), Some(limited(None)));
    assert_eq!(
        resp(403, DINGTALK_403).verdict(&Preset::dingtalk()),
        limited(None)
    );
    assert_eq!(
        resp(403, DINGTALK_403).verdict(&Preset::default()),
        limited(None)
    );
}

#[test]
fn dingtalk_403_without_qps_limit_is_a_failure() {
    let c = DingTalkQpsLimit::new();
    assert_eq!(resp(403, DINGTALK_403_OTHER).judge(&c), None);
    assert_eq!(
        resp(403, DINGTALK_403_OTHER).verdict(&Preset::dingtalk()),
        Verdict::Failure
    );
    assert_eq!(
        resp(403, DINGTALK_403_OTHER).verdict(&Preset::default()),
        Verdict::Failure
    );
}

#[test]
fn dingtalk_plain_429_is_rate_limited_by_the_preset_not_the_classifier() {
    let r = resp(429, r#"{"code":"Throttling","message":"slow"}"#).header("retry-after", "2");
    assert_eq!(r.judge(&DingTalkQpsLimit::new()), None);
    assert_eq!(r.verdict(&Preset::dingtalk()), limited(Some(2)));
}

#[test]
fn dingtalk_truncated_body_is_searched_raw() {
    let cut = &DINGTALK_403[..60];
    assert!(serde_json::from_str::<serde_json::Value>(cut).is_err());
    assert_eq!(
        resp(403, cut).judge(&DingTalkQpsLimit::new()),
        Some(limited(None))
    );
}

// ---- GLM / JsonFieldIn ----

#[test]
fn glm_429_1302_is_rate_limited() {
    let c = JsonFieldIn::new("/error/code", ["1302", "1303", "1305"]);
    assert_eq!(resp(429, GLM_429).judge(&c), Some(limited(None)));
    assert_eq!(resp(429, GLM_429).verdict(&Preset::glm()), limited(None));
    assert_eq!(
        resp(429, GLM_429).verdict(&Preset::default()),
        limited(None)
    );
}

#[test]
fn glm_code_as_number_matches() {
    let body = r#"{"error":{"code":1305,"message":"当前API请求过多"}}"#;
    let c = JsonFieldIn::new("/error/code", ["1302", "1303", "1305"]);
    assert_eq!(resp(429, body).judge(&c), Some(limited(None)));
    // Through a proxy that turned the 429 into a 500, the code still says "rate limit".
    assert_eq!(resp(500, body).verdict(&Preset::glm()), limited(None));
}

#[test]
fn a_200_whose_body_mentions_1302_is_not_rate_limited() {
    let c = JsonFieldIn::new("/error/code", ["1302"]);
    // Not even with the body forced on it.
    let h = HeaderMap::new();
    let view = ResponseView::new(StatusCode::OK, &h).with_body(GLM_200_MENTIONS_1302.as_bytes());
    assert_eq!(c.classify(&view), None);
    // Nor a 200 whose body is exactly the error document.
    let view = ResponseView::new(StatusCode::OK, &h).with_body(GLM_429.as_bytes());
    assert_eq!(c.classify(&view), None);
    for p in all_presets() {
        assert_eq!(
            resp(200, GLM_200_MENTIONS_1302).verdict(&p),
            Verdict::Success,
            "{p:?}"
        );
        assert_eq!(resp(200, GLM_429).verdict(&p), Verdict::Success, "{p:?}");
    }
}

#[test]
fn json_field_statuses_are_configurable() {
    let c = JsonFieldIn::new("/error/code", ["1302"]).statuses([StatusCode::TOO_MANY_REQUESTS]);
    let h = HeaderMap::new();
    assert!(c.wants_body(StatusCode::TOO_MANY_REQUESTS, &h));
    assert!(!c.wants_body(StatusCode::BAD_REQUEST, &h));
    assert!(!c.wants_body(StatusCode::INTERNAL_SERVER_ERROR, &h));
    assert_eq!(resp(400, GLM_429).judge(&c), None);
    assert_eq!(resp(429, GLM_429).judge(&c), Some(limited(None)));

    // The default: every 4xx and 5xx status; no 1xx, 2xx or 3xx.
    let d = JsonFieldIn::new("/error/code", ["1302"]);
    for s in [400, 403, 404, 429, 500, 503] {
        assert!(d.wants_body(StatusCode::from_u16(s).unwrap(), &h), "{s}");
    }
    for s in [101, 200, 201, 204, 206, 301, 302, 304] {
        assert!(!d.wants_body(StatusCode::from_u16(s).unwrap(), &h), "{s}");
    }
}

#[test]
fn glm_account_in_arrears_is_a_failure_not_a_rate_limit() {
    assert_eq!(
        resp(429, GLM_429_ARREARS).verdict(&Preset::glm()),
        Verdict::Failure
    );
    assert_eq!(
        resp(429, GLM_429_ARREARS).verdict(&Preset::default()),
        Verdict::Failure
    );
}

#[test]
fn glm_hint_comes_from_the_parser() {
    let r = resp(429, GLM_429).header("retry-after", "17");
    assert_eq!(r.verdict(&Preset::glm()), limited(Some(17)));
}

// ---- Telegram ----

#[test]
fn telegram_429_retry_after_4310_from_the_body() {
    let c = TelegramRetryAfter::new();
    assert_eq!(resp(429, TELEGRAM_429).judge(&c), Some(limited(Some(4310))));
    assert_eq!(
        resp(429, TELEGRAM_429).verdict(&Preset::telegram()),
        limited(Some(4310))
    );
    assert_eq!(
        resp(429, TELEGRAM_429).verdict(&Preset::default()),
        limited(Some(4310))
    );
}

#[test]
fn telegram_429_retry_after_4310_from_the_header() {
    let r = resp(429, TELEGRAM_429).header("retry-after", "4310");
    assert_eq!(r.verdict(&Preset::telegram()), limited(Some(4310)));
    // A header that disagrees with the body wins (documented precedence).
    let r = resp(429, TELEGRAM_429).header("retry-after", "60");
    assert_eq!(r.verdict(&Preset::telegram()), limited(Some(60)));
}

#[test]
fn too_many_requests_is_header_only() {
    let c = TooManyRequests::new();
    let h = HeaderMap::new();
    assert!(!c.wants_body(StatusCode::TOO_MANY_REQUESTS, &h));
    // Without the body it cannot see Telegram's hint...
    assert_eq!(resp(429, TELEGRAM_429).judge(&c), Some(limited(None)));
    // ...but it reads it when a classifier before it in the chain asked for the body.
    let chain = TelegramRetryAfter::new().or(c);
    assert_eq!(
        resp(429, TELEGRAM_429).judge(&chain),
        Some(limited(Some(4310)))
    );
    assert_eq!(resp(400, "").judge(&c), None);
}

// ---- OpenAI ----

#[test]
fn openai_429_retry_after_ms_1500() {
    let r = resp(429, OPENAI_429)
        .header("retry-after-ms", "1500")
        .header("retry-after", "2")
        .header("x-ratelimit-reset-requests", "120ms")
        .header("x-ratelimit-reset-tokens", "6m0s");
    let want = Verdict::rate_limited(Some(Duration::from_millis(1500)));
    assert_eq!(r.verdict(&Preset::openai()), want);
    assert_eq!(r.verdict(&Preset::default()), want);
}

#[test]
fn openai_429_reset_headers_without_retry_after() {
    let r = resp(429, OPENAI_429)
        .header("x-ratelimit-reset-requests", "120ms")
        .header("x-ratelimit-reset-tokens", "1s");
    assert_eq!(r.verdict(&Preset::openai()), limited(Some(1)));
}

#[test]
fn openai_429_message_hint_when_no_header() {
    assert_eq!(
        resp(429, OPENAI_429).verdict(&Preset::openai()),
        Verdict::rate_limited(Some(Duration::from_millis(120)))
    );
}

#[test]
fn openai_insufficient_quota_is_a_failure() {
    let r = resp(429, OPENAI_429_QUOTA).header("retry-after", "20");
    assert_eq!(r.verdict(&Preset::openai()), Verdict::Failure);
    assert_eq!(r.verdict(&Preset::default()), Verdict::Failure);
    // Found by `type` too, when a gateway drops the code.
    let typed = r#"{"error":{"message":"quota","type":"insufficient_quota","code":null}}"#;
    assert_eq!(
        resp(429, typed).verdict(&Preset::openai()),
        Verdict::Failure
    );
}

// ---- ServerErrors and fallbacks ----

#[test]
fn server_errors_and_408_are_transient_in_every_preset() {
    for p in all_presets() {
        for s in [500, 502, 503, 504, 408] {
            assert_eq!(
                resp(s, "upstream hiccup").verdict(&p),
                Verdict::Transient,
                "{p:?} {s}"
            );
        }
    }
    assert_eq!(resp(404, "").judge(&ServerErrors::new()), None);
}

#[test]
fn plain_429_is_rate_limited_in_every_preset() {
    for p in all_presets() {
        let r = resp(429, "Too Many Requests").header("retry-after", "5");
        assert_eq!(r.verdict(&p), limited(Some(5)), "{p:?}");
    }
}

#[test]
fn successes_stay_successes() {
    for p in all_presets() {
        assert_eq!(
            resp(200, TELEGRAM_429).verdict(&p),
            Verdict::Success,
            "{p:?}"
        );
        assert_eq!(resp(204, "").verdict(&p), Verdict::Success, "{p:?}");
    }
}

// ---- wants_body: never a 2xx, so streams are never buffered ----

#[test]
fn no_preset_wants_the_body_of_a_2xx() {
    let mut sse = HeaderMap::new();
    sse.insert(
        "content-type",
        HeaderValue::from_static("text/event-stream"),
    );
    for p in all_presets() {
        for s in 200..300 {
            let s = StatusCode::from_u16(s).unwrap();
            assert!(!p.wants_body(s, &HeaderMap::new()), "{p:?} {s}");
            assert!(!p.wants_body(s, &sse), "{p:?} {s}");
        }
    }
}

#[test]
fn presets_ask_for_the_bodies_they_inspect() {
    let h = HeaderMap::new();
    let asks = |p: &Preset, s: u16| p.wants_body(StatusCode::from_u16(s).unwrap(), &h);
    assert!(asks(&Preset::qq(), 400));
    assert!(!asks(&Preset::qq(), 429));
    assert!(asks(&Preset::dingtalk(), 403) && asks(&Preset::dingtalk(), 429));
    assert!(!asks(&Preset::dingtalk(), 400));
    assert!(asks(&Preset::telegram(), 429));
    assert!(!asks(&Preset::telegram(), 400));
    assert!(asks(&Preset::glm(), 429) && asks(&Preset::glm(), 500));
    assert!(asks(&Preset::openai(), 429));
    assert!(!asks(&Preset::openai(), 500));
    for s in [400, 403, 429, 500] {
        assert!(asks(&Preset::default(), s), "{s}");
    }
}

// ---- Preset type ----

#[test]
fn presets_are_one_nameable_clonable_type() {
    struct Config {
        classifier: Preset,
    }
    let c = Config {
        classifier: Preset::telegram(),
    };
    let copy = c.classifier.clone();
    assert_eq!(copy.name(), "telegram");
    assert_eq!(format!("{copy:?}"), r#"Preset { name: "telegram", .. }"#);
    let names: Vec<String> = all_presets().iter().map(|p| p.name().to_owned()).collect();
    assert_eq!(
        names,
        ["qq", "dingtalk", "telegram", "glm", "openai", "default"]
    );
}

#[test]
fn custom_preset_wraps_any_classifier() {
    let mine = Preset::new(
        "qq+503",
        Preset::qq().or(StatusBodyContains::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "busy",
        )),
    );
    // The custom rule comes after qq's own, whose ServerErrors claims the 503 first.
    assert_eq!(resp(503, "busy").verdict(&mine), Verdict::Transient);
    let first = Preset::new(
        "503-first",
        StatusBodyContains::new(StatusCode::SERVICE_UNAVAILABLE, "busy").or(Preset::qq()),
    );
    assert_eq!(resp(503, "busy").verdict(&first), limited(None));
    assert_eq!(resp(400, QQ_400).verdict(&first), limited(None));
}

// ---- combinators ----

#[test]
fn or_tries_the_second_only_without_an_opinion_and_unites_wants_body() {
    let a = StatusBodyContains::new(StatusCode::BAD_REQUEST, "limit");
    let b = JsonFieldIn::new("/e", ["x"])
        .statuses([StatusCode::FORBIDDEN])
        .on_match(Verdict::Failure);
    let both = a.or(b);
    let h = HeaderMap::new();
    assert!(both.wants_body(StatusCode::BAD_REQUEST, &h));
    assert!(both.wants_body(StatusCode::FORBIDDEN, &h));
    assert!(!both.wants_body(StatusCode::OK, &h));
    assert_eq!(resp(400, "limit").judge(&both), Some(limited(None)));
    assert_eq!(
        resp(403, r#"{"e":"x"}"#).judge(&both),
        Some(Verdict::Failure)
    );
    assert_eq!(resp(404, "").judge(&both), None);
    // The first opinion wins even when the second would disagree.
    let first = ServerErrors::new().or(classify_fn(|_| Some(Verdict::Success)));
    assert_eq!(resp(502, "").judge(&first), Some(Verdict::Transient));
    assert_eq!(resp(404, "").judge(&first), Some(Verdict::Success));
}

#[test]
fn closures_classify_and_name_their_body_statuses() {
    let c = classify_fn(|r| {
        (r.status() == StatusCode::SERVICE_UNAVAILABLE && r.body()? == b"slow down")
            .then(|| Verdict::rate_limited(r.retry_after()))
    })
    .wants_body_for([StatusCode::SERVICE_UNAVAILABLE]);
    let h = HeaderMap::new();
    assert!(c.wants_body(StatusCode::SERVICE_UNAVAILABLE, &h));
    assert!(!c.wants_body(StatusCode::OK, &h));
    let r = resp(503, "slow down").header("retry-after", "4");
    assert_eq!(r.judge(&c), Some(limited(Some(4))));
    assert_eq!(resp(503, "down").judge(&c), None);

    // Without `wants_body_for` it never sees a body.
    let blind = classify_fn(|r| r.body().map(|_| Verdict::Failure));
    assert!(!blind.wants_body(StatusCode::SERVICE_UNAVAILABLE, &h));
    assert_eq!(resp(503, "slow down").judge(&blind), None);
}

#[test]
fn boxed_and_shared_classifiers_still_classify() {
    let boxed: Box<dyn Classifier> = Box::new(TelegramRetryAfter::new());
    assert_eq!(
        resp(429, TELEGRAM_429).judge(&boxed),
        Some(limited(Some(4310)))
    );
    let shared = std::sync::Arc::new(Preset::glm());
    assert_eq!(resp(429, GLM_429).judge(&shared), Some(limited(None)));
}
