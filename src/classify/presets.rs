//! The per-platform classifiers: [`Preset`].

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use http::{HeaderMap, StatusCode};

use super::{
    Classifier, DingTalkQpsLimit, JsonFieldIn, ResponseView, ServerErrors, StatusBodyContains,
    TelegramRetryAfter, TooManyRequests, Verdict,
};

/// A named classifier, cheap to clone (it shares one `Arc`): a platform's bundle of
/// rules, or your own ([`Preset::new`]). It is one type, so it fits in a struct field.
///
/// | preset | rate-limited | failure (waiting does not help) | transient |
/// |---|---|---|---|
/// | [`qq`](Preset::qq) | 400 whose body contains `频率限制`; any 429 | | 5xx, 408 |
/// | [`dingtalk`](Preset::dingtalk) | 403 or 429 with a `...QpsLimit...` code; any 429 | | 5xx, 408 |
/// | [`telegram`](Preset::telegram) | 429, hint from `parameters.retry_after` in the body | | 5xx, 408 |
/// | [`glm`](Preset::glm) | 4xx/5xx with `error.code` 1302, 1303 or 1305; any 429 | 429 with an account code (1110–1113, 1121: arrears, locked, inactive) | 5xx, 408 |
/// | [`openai`](Preset::openai) | 429 (hint from `retry-after-ms`, `Retry-After`, `x-ratelimit-reset-*`) | 429 `insufficient_quota` | 5xx, 408 |
/// | [`default`](Preset::default) | all of the above | all of the above | 5xx, 408 |
///
/// Every preset asks for a body only on the error statuses it inspects, never on a
/// 2xx, so a 200 SSE stream is never buffered. Every rate-limited verdict takes its
/// hint from the crate's one parser ([`crate::retry_after`]). Responses none of the
/// rules match get no opinion, and the layer falls back to
/// [`Verdict::from_status`](crate::Verdict::from_status).
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use http::{HeaderMap, HeaderValue, StatusCode};
/// use ratewise::classify::{Classifier, Preset, ResponseView};
/// use ratewise::{Verdict};
///
/// let openai = Preset::openai();
/// let mut headers = HeaderMap::new();
/// headers.insert("retry-after-ms", HeaderValue::from_static("1500"));
/// let body = br#"{"error":{"message":"Rate limit reached","type":"requests","code":"rate_limit_exceeded"}}"#;
/// let view = ResponseView::new(StatusCode::TOO_MANY_REQUESTS, &headers).with_body(body);
/// assert_eq!(
///     openai.classify(&view),
///     Some(Verdict::rate_limited(Some(Duration::from_millis(1500))))
/// );
///
/// // A preset is one type, so it fits in a struct field.
/// struct Client { classifier: Preset }
/// let client = Client { classifier: Preset::default() };
/// assert_eq!(client.classifier.name(), "default");
/// ```
#[derive(Clone)]
pub struct Preset {
    name: Cow<'static, str>,
    classifier: Arc<dyn Classifier>,
}

impl Preset {
    /// Names a classifier, e.g. a built-in preset extended with [`Classifier::or`].
    ///
    /// ```
    /// use http::StatusCode;
    /// use ratewise::classify::{Preset, Classifier, StatusBodyContains};
    ///
    /// let mine = Preset::new(
    ///     "qq+gateway-503",
    ///     Preset::qq().or(StatusBodyContains::new(StatusCode::SERVICE_UNAVAILABLE, "busy")),
    /// );
    /// assert_eq!(mine.name(), "qq+gateway-503");
    /// ```
    pub fn new(name: impl Into<Cow<'static, str>>, classifier: impl Classifier) -> Self {
        Preset {
            name: name.into(),
            classifier: Arc::new(classifier),
        }
    }

    /// The preset's name (`"qq"`, `"default"`, ...).
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Default for Preset {
    /// Every platform rule in one classifier: failures that waiting does not cure
    /// first (GLM account codes, OpenAI `insufficient_quota`), then QQ's 400,
    /// DingTalk's QpsLimit, GLM's rate-limit codes, any 429 (with its body read, so
    /// Telegram's `parameters.retry_after` is found), and 5xx/408 as transient.
    ///
    /// It reads the body of every 4xx and 5xx response (GLM's codes may come with any
    /// error status, e.g. through a proxy); never a 2xx one.
    fn default() -> Self {
        Preset::every_platform()
    }
}

impl fmt::Debug for Preset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Preset")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Classifier for Preset {
    fn wants_body(&self, status: StatusCode, headers: &HeaderMap) -> bool {
        self.classifier.wants_body(status, headers)
    }

    fn classify(&self, response: &ResponseView<'_>) -> Option<Verdict> {
        self.classifier.classify(response)
    }
}

/// QQ's marker for a rate limit hidden in a 400 (`接口调用超过频率限制`).
const QQ_MARKER: &str = "频率限制";

/// GLM (Zhipu) business codes for rate limits: 1302 concurrency too high, 1303
/// frequency too high, 1305 too many requests.
pub(crate) const GLM_RATE_LIMIT_CODES: [&str; 3] = ["1302", "1303", "1305"];

/// GLM (Zhipu) account codes sent with HTTP 429 that waiting does not cure: 1110
/// inactive, 1111 does not exist, 1112 locked, 1113 in arrears, 1121 locked for
/// irregular activity.
pub(crate) const GLM_ACCOUNT_CODES: [&str; 5] = ["1110", "1111", "1112", "1113", "1121"];

fn qq_rules() -> StatusBodyContains {
    StatusBodyContains::new(StatusCode::BAD_REQUEST, QQ_MARKER)
}

fn glm_failures() -> JsonFieldIn {
    JsonFieldIn::new("/error/code", GLM_ACCOUNT_CODES)
        .statuses([StatusCode::TOO_MANY_REQUESTS])
        .on_match(Verdict::Failure)
}

fn glm_rate_limits() -> JsonFieldIn {
    JsonFieldIn::new("/error/code", GLM_RATE_LIMIT_CODES)
}

/// OpenAI's 429 `insufficient_quota` (in `error.code`, and in `error.type`): billing,
/// not a rate limit.
fn openai_failures() -> impl Classifier + Clone {
    let quota = |pointer| {
        JsonFieldIn::new(pointer, ["insufficient_quota"])
            .statuses([StatusCode::TOO_MANY_REQUESTS])
            .on_match(Verdict::Failure)
    };
    quota("/error/code").or(quota("/error/type"))
}

impl Preset {
    /// QQ bots: a **400** whose body contains `频率限制` (as in
    /// `{"code":...,"message":"接口调用超过频率限制"}` from `GET /gateway`) is rate-limited;
    /// any 429 too; 5xx and 408 are transient. Other 400s get no opinion (a failure).
    /// QQ sends no retry hint, so the hint is usually `None`.
    pub fn qq() -> Preset {
        Preset::new(
            "qq",
            qq_rules()
                .or(TooManyRequests::new())
                .or(ServerErrors::new()),
        )
    }

    /// DingTalk: a **403** or **429** whose `code` contains `QpsLimit`
    /// (`Forbidden.AccessDenied.QpsLimitForApi`, ...) is rate-limited, and so is any other
    /// 429; 5xx and 408 are transient. A 403 without `QpsLimit` gets no opinion (a
    /// failure).
    pub fn dingtalk() -> Preset {
        Preset::new(
            "dingtalk",
            DingTalkQpsLimit::new()
                .or(TooManyRequests::new())
                .or(ServerErrors::new()),
        )
    }

    /// Telegram Bot API: **429** is rate-limited and its body is read, so the wait comes
    /// from `Retry-After` or, failing that, from `parameters.retry_after` (4310 s is a
    /// real value); 5xx and 408 are transient.
    pub fn telegram() -> Preset {
        Preset::new(
            "telegram",
            TelegramRetryAfter::new().or(ServerErrors::new()),
        )
    }

    /// GLM (Zhipu): a 4xx or 5xx response whose `error.code` is one of GLM's rate-limit
    /// codes, 1302, 1303 or 1305 (`{"error":{"code":"1302",...}}`), is rate-limited, and
    /// so is any other 429, except a 429 whose code is one of GLM's account codes, 1110 to
    /// 1113 or 1121 (arrears, locked account): waiting will not cure those, so they are
    /// failures.
    /// 5xx and 408 are transient.
    pub fn glm() -> Preset {
        Preset::new(
            "glm",
            glm_failures()
                .or(glm_rate_limits())
                .or(TooManyRequests::new())
                .or(ServerErrors::new()),
        )
    }

    /// OpenAI and OpenAI-compatible APIs: **429** is rate-limited, with the wait from
    /// `retry-after-ms`, `Retry-After` or `x-ratelimit-reset-requests`/`-tokens` (the
    /// parser's order), or from "try again in 20s" in the message. A 429 with
    /// `insufficient_quota` ("You exceeded your current quota") is a failure: it is a
    /// billing state and will not get better by waiting. 5xx and 408 are transient.
    /// The body is read on 429 only.
    pub fn openai() -> Preset {
        Preset::new(
            "openai",
            openai_failures()
                .or(TooManyRequests::new())
                .or(ServerErrors::new()),
        )
    }

    /// Every platform rule above in one classifier: failures that waiting does not cure
    /// first (GLM account codes, OpenAI `insufficient_quota`), then QQ's 400, DingTalk's
    /// QpsLimit, GLM's rate-limit codes, any 429 (with its body read, so Telegram's
    /// `parameters.retry_after` is found), and 5xx/408 as transient.
    ///
    /// It reads the body of every 4xx and 5xx response (GLM's codes may come with any error
    /// status, e.g. through a proxy); never a 2xx one.
    fn every_platform() -> Preset {
        Preset::new(
            "default",
            glm_failures()
                .or(openai_failures())
                .or(qq_rules())
                .or(DingTalkQpsLimit::new())
                .or(glm_rate_limits())
                .or(TelegramRetryAfter::new())
                .or(ServerErrors::new()),
        )
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use http::HeaderValue;

    use super::*;
    use crate::retry_after::parses;

    const GLM_429: &str =
        r#"{"error":{"code":"1302","message":"您的账户已达到速率限制,请您控制请求频率"}}"#;
    const TELEGRAM_429: &str = r#"{"ok":false,"error_code":429,"description":"Too Many Requests: retry after 4310","parameters":{"retry_after":4310}}"#;
    const DINGTALK_403: &str =
        r#"{"code":"Forbidden.AccessDenied.QpsLimitForApi","requestid":"x","message":"qps"}"#;
    const OPENAI_QUOTA: &str = r#"{"error":{"message":"You exceeded your current quota","type":"insufficient_quota","code":"insufficient_quota"}}"#;
    const QQ_400: &str = r#"{"code":11241,"message":"接口调用超过频率限制"}"#;

    /// The verdict of `preset` and how many times the body was parsed as JSON
    /// while judging it.
    fn judge_counting(
        preset: &Preset,
        status: u16,
        headers: &HeaderMap,
        body: &[u8],
    ) -> (Option<Verdict>, usize) {
        let status = StatusCode::from_u16(status).expect("test status");
        let view = ResponseView::new(status, headers).with_body(body);
        let before = parses::so_far();
        let verdict = preset.classify(&view);
        (verdict, parses::so_far() - before)
    }

    #[test]
    fn default_preset_parses_a_glm_429_body_once() {
        let h = HeaderMap::new();
        // Four JSON rules run before GLM's rate-limit codes match, then the parser
        // looks for a hint in the body: one parse for all of them.
        let (verdict, parses) = judge_counting(&Preset::default(), 429, &h, GLM_429.as_bytes());
        assert_eq!(verdict, Some(Verdict::rate_limited(None)));
        assert_eq!(parses, 1);
    }

    #[test]
    fn default_preset_reads_telegrams_hint_from_the_one_parse() {
        let h = HeaderMap::new();
        let (verdict, parses) =
            judge_counting(&Preset::default(), 429, &h, TELEGRAM_429.as_bytes());
        assert_eq!(
            verdict,
            Some(Verdict::rate_limited(Some(Duration::from_secs(4310))))
        );
        assert_eq!(parses, 1);
    }

    #[test]
    fn every_preset_parses_each_body_at_most_once() {
        let mut with_header = HeaderMap::new();
        with_header.insert("retry-after", HeaderValue::from_static("7"));
        let bodies: [(u16, &[u8]); 8] = [
            (429, GLM_429.as_bytes()),
            (503, GLM_429.as_bytes()),
            (429, TELEGRAM_429.as_bytes()),
            (403, DINGTALK_403.as_bytes()),
            (429, DINGTALK_403.as_bytes()),
            (429, OPENAI_QUOTA.as_bytes()),
            (400, QQ_400.as_bytes()),
            // Not JSON: the failed parse is remembered too.
            (
                429,
                b"<html>Too Many Requests. Please retry after 3 seconds</html>",
            ),
        ];
        let presets = [
            Preset::qq(),
            Preset::dingtalk(),
            Preset::telegram(),
            Preset::glm(),
            Preset::openai(),
            Preset::default(),
        ];
        for preset in &presets {
            for headers in [HeaderMap::new(), with_header.clone()] {
                for (status, body) in bodies {
                    let (verdict, parses) = judge_counting(preset, status, &headers, body);
                    assert!(
                        parses <= 1,
                        "{}: {status} {} parsed {parses} times ({verdict:?})",
                        preset.name(),
                        String::from_utf8_lossy(body)
                    );
                }
            }
        }
    }

    #[test]
    fn the_parse_is_shared_through_the_view() {
        let h = HeaderMap::new();
        let view =
            ResponseView::new(StatusCode::TOO_MANY_REQUESTS, &h).with_body(GLM_429.as_bytes());
        assert!(!view.json_parsed());
        assert_eq!(
            Preset::default().classify(&view),
            Some(Verdict::rate_limited(None))
        );
        assert!(view.json_parsed());
        // A later reader gets the stored value, and nothing is parsed again.
        let before = parses::so_far();
        let code = view.json().and_then(|j| j.pointer("/error/code"));
        assert_eq!(code.and_then(serde_json::Value::as_str), Some("1302"));
        assert_eq!(view.retry_after(), None);
        assert_eq!(parses::so_far(), before);
    }

    #[test]
    fn bodies_are_parsed_only_when_read() {
        let h = HeaderMap::new();
        // QQ's 400 rule searches bytes; only the hint parser reads the JSON (QQ
        // sends no hint), once.
        let (verdict, parses) = judge_counting(&Preset::qq(), 400, &h, QQ_400.as_bytes());
        assert_eq!(verdict, Some(Verdict::rate_limited(None)));
        assert_eq!(parses, 1);
        // No rule of the default preset reads a 2xx body.
        let (verdict, parses) = judge_counting(&Preset::default(), 200, &h, GLM_429.as_bytes());
        assert_eq!(verdict, None);
        assert_eq!(parses, 0);
    }

    #[test]
    fn a_new_body_drops_the_old_parse() {
        let h = HeaderMap::new();
        let view =
            ResponseView::new(StatusCode::TOO_MANY_REQUESTS, &h).with_body(GLM_429.as_bytes());
        assert!(view.json().is_some());
        let view = view.with_body(b"not json");
        assert!(!view.json_parsed());
        assert!(view.json().is_none());
    }
}
