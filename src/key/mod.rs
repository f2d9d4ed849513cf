//! Request keys: which bucket, cooldown or cache entry a request belongs to.
//!
//! Every keyed layer takes a [`KeyExtractor`]: by default one key for everything,
//! [`Authority`] (the request's host and port), [`MethodUri`] (method, host, path and a
//! fingerprint of the whole URI, with no secret in it), [`ClientIp`] (a server's client
//! address, behind trusted proxies), or any closure `Fn(&RequestRef<'_>) -> K` where
//! `K: Into<Key>` (a header, a path segment, an extension). Layers hold it as a value,
//! so it is never a type parameter.
//!
//! Keys are logged and appear in error messages, always through one redaction path: a
//! [`Key`]'s `Display` and `Debug` mask every run of 24 or more token characters. To key
//! by a credential, derive the key with [`Key::from_secret`] (a keyed hash).
//!
//! # Example
//!
//! ```
//! use ratewise::key::{Authority, Key, KeyExtractor, RequestRef};
//! use http::Request;
//!
//! let req = Request::get("https://api.telegram.org/bot123/sendMessage").body(()).unwrap();
//! assert_eq!(Authority.key_of(&req), Key::from("api.telegram.org"));
//!
//! let by_bot = |req: &RequestRef<'_>| req.uri().path().split('/').nth(1).unwrap_or("").to_owned();
//! assert_eq!(by_bot.key_of(&req), Key::from("bot123"));
//!
//! let api_key = "sk-live-0123456789abcdefghijklmnop";
//! let by_api_key = Key::from_secret(api_key);
//! assert!(!by_api_key.to_string().contains("0123456789"));
//! assert!(!Key::from(api_key).to_string().contains("0123456789"), "Display redacts");
//! ```

mod ip;

use std::{borrow::Borrow, borrow::Cow, fmt, sync::Arc};

use http::{Extensions, HeaderMap, Method, Request, Uri, Version};

pub use self::ip::{ClientIp, ClientIpBuilder};

/// A key: a cheap-to-clone shared string.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key(Arc<str>);

impl Key {
    /// The key as a string, unredacted: for lookups, never for logs.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A key derived from a secret (an API key, a token) by a keyed hash:
    /// `secret#` and 16 hex digits. Two secrets get two keys, the same secret the
    /// same key in every process built with the same Rust toolchain, and the secret
    /// cannot be read back from the key (a short, guessable one could be found by
    /// trial: the hash is an identity, not encryption).
    pub fn from_secret(secret: &str) -> Key {
        use std::hash::{DefaultHasher, Hash, Hasher};
        /// The hash's key: fixed, so that processes sharing limits agree.
        const SALT: &str = "ratewise::key::Key::from_secret v1";
        let mut hasher = DefaultHasher::new();
        SALT.hash(&mut hasher);
        secret.hash(&mut hasher);
        Key::from(format!("secret#{:016x}", hasher.finish()))
    }

    /// The key as logs show it: a word (token characters, ASCII letters, digits and
    /// `-_~+=%`, joined by dots) holding a run of [`SECRET_RUN`] or more token
    /// characters becomes `***` whole (so a `<id>.<secret>` API key loses both parts),
    /// and a key that lost any word gets ` #` and a fingerprint, so that two such keys
    /// still differ in a log. Host names and paths, short runs joined by dots and
    /// slashes, stay readable.
    fn write_redacted(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = self.as_str();
        let is_token =
            |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '~' | '+' | '=' | '%');
        let in_word = |c: char| is_token(c) || c == '.';
        let mut masked = false;
        let mut rest = text;
        while !rest.is_empty() {
            let end = rest.find(|c: char| !in_word(c)).unwrap_or(rest.len());
            let word = &rest[..end];
            if word.split('.').any(|run| run.len() >= SECRET_RUN) {
                f.write_str("***")?;
                masked = true;
            } else {
                f.write_str(word)?;
            }
            rest = &rest[end..];
            let gap = rest.find(in_word).unwrap_or(rest.len());
            f.write_str(&rest[..gap])?;
            rest = &rest[gap..];
        }
        if masked {
            use std::hash::{DefaultHasher, Hash, Hasher};
            let mut hasher = DefaultHasher::new();
            text.hash(&mut hasher);
            write!(f, " #{:08x}", hasher.finish() as u32)?;
        }
        Ok(())
    }
}

/// Redacted (see [`Key::as_str`] for the raw text).
impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"")?;
        self.write_redacted(f)?;
        f.write_str("\"")
    }
}

/// Serialized as it is displayed: redacted.
#[cfg(feature = "serde")]
impl serde::Serialize for Key {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// Redacted: what every log line and error message shows of a key.
impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.write_redacted(f)
    }
}

impl Borrow<str> for Key {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl From<&str> for Key {
    fn from(s: &str) -> Self {
        Key(Arc::from(s))
    }
}

impl From<String> for Key {
    fn from(s: String) -> Self {
        Key(Arc::from(s))
    }
}

impl From<Arc<str>> for Key {
    fn from(s: Arc<str>) -> Self {
        Key(s)
    }
}

/// What a key extractor sees of a request: its method, URI, version, headers and
/// extensions, whatever its body type. Built from any `&Request<B>` with
/// [`From`]; it reads like the request itself (`req.headers()`, `req.uri()`...).
#[derive(Debug, Clone, Copy)]
pub struct RequestRef<'a> {
    method: &'a Method,
    uri: &'a Uri,
    version: Version,
    headers: &'a HeaderMap,
    extensions: &'a Extensions,
}

impl<'a> RequestRef<'a> {
    /// The request's method.
    pub fn method(&self) -> &'a Method {
        self.method
    }

    /// The request's URI.
    pub fn uri(&self) -> &'a Uri {
        self.uri
    }

    /// The request's HTTP version.
    pub fn version(&self) -> Version {
        self.version
    }

    /// The request's headers.
    pub fn headers(&self) -> &'a HeaderMap {
        self.headers
    }

    /// The request's extensions (a route's model, a peer address, a parsed body...).
    pub fn extensions(&self) -> &'a Extensions {
        self.extensions
    }
}

impl<'a, B> From<&'a Request<B>> for RequestRef<'a> {
    fn from(req: &'a Request<B>) -> Self {
        RequestRef {
            method: req.method(),
            uri: req.uri(),
            version: req.version(),
            headers: req.headers(),
            extensions: req.extensions(),
        }
    }
}

/// Chooses the key of a request.
///
/// Implemented by [`Authority`], [`MethodUri`], [`ClientIp`] and every
/// closure `Fn(&RequestRef<'_>) -> K` where `K: Into<Key>`. Layers hold it as a value
/// (`SharedKey`), so a key never becomes a type parameter of a stack.
pub trait KeyExtractor: Send + Sync + 'static {
    /// The request's key.
    fn key(&self, request: &RequestRef<'_>) -> Key;

    /// The request's key, or why this request cannot have one (a server's key needs the
    /// peer address and the request carries none). [`RateLimitLayer`](crate::RateLimitLayer)
    /// asks this: it refuses such a request (`500` in reject mode, the [`KeyError`] in
    /// wait mode) rather than put it in a bucket shared with every other such request.
    /// Defaults to `Ok(self.key(request))`; implement it for an extractor that can fail.
    fn try_key(&self, request: &RequestRef<'_>) -> Result<Key, KeyError> {
        Ok(self.key(request))
    }

    /// The key of a whole request: [`key`](Self::key) of its [`RequestRef`].
    fn key_of<B>(&self, request: &Request<B>) -> Key
    where
        Self: Sized,
    {
        self.key(&RequestRef::from(request))
    }

    /// Whether this extractor reads the request's body (a [`JsonBody`] extension), so
    /// that a stack parses the body once per call for it. `false` by default.
    fn needs_body(&self) -> bool {
        false
    }
}

/// A request's body parsed as JSON, in the request's extensions: parsed once per call
/// by a [`RetryLayer`](crate::RetryLayer) built with
/// [`parse_json_body`](crate::retry::RetryBuilder::parse_json_body) (a
/// [`ClientStackLayer`](crate::ClientStackLayer) turns that on when one of its keys
/// [needs the body](KeyExtractor::needs_body)), and shared by every layer and every
/// retry of the call.
#[derive(Debug, Clone)]
pub struct JsonBody(Arc<serde_json::Value>);

impl JsonBody {
    /// `bytes` parsed as JSON, or `None` when they are not JSON.
    pub fn parse(bytes: &[u8]) -> Option<Self> {
        serde_json::from_slice(bytes)
            .ok()
            .map(|v| JsonBody(Arc::new(v)))
    }

    /// The parsed value.
    pub fn value(&self) -> &serde_json::Value {
        &self.0
    }
}

/// A key read from a field of the JSON request body, by JSON pointer: Telegram's
/// `json_field("/chat_id")`, DingTalk's `json_field("/outTrackId")`. Strings are the
/// key as they are, numbers and booleans their text; a missing field, or a body that is
/// not JSON or was not parsed, is the empty key.
///
/// The body is read from the [`JsonBody`] extension, never parsed here: the stack
/// parses it once per call.
///
/// ```
/// use http::Request;
/// use ratewise::key::{json_field, JsonBody, Key, KeyExtractor};
///
/// let mut req = Request::post("/bot1/sendMessage").body(()).unwrap();
/// req.extensions_mut().insert(JsonBody::parse(br#"{"chat_id":42,"text":"hi"}"#).unwrap());
/// assert_eq!(json_field("/chat_id").key_of(&req), Key::from("42"));
/// ```
pub fn json_field(pointer: impl Into<String>) -> JsonField {
    let mut pointer = pointer.into();
    // `json_field("chat_id")` means the top-level field, as `/chat_id` does.
    if !pointer.is_empty() && !pointer.starts_with('/') {
        pointer.insert(0, '/');
    }
    JsonField { pointer }
}

/// The extractor [`json_field`] makes.
#[derive(Debug, Clone)]
pub struct JsonField {
    pointer: String,
}

impl KeyExtractor for JsonField {
    fn key(&self, request: &RequestRef<'_>) -> Key {
        let value = request
            .extensions()
            .get::<JsonBody>()
            .and_then(|body| body.value().pointer(&self.pointer));
        match value {
            Some(serde_json::Value::String(s)) => Key::from(s.as_str()),
            Some(serde_json::Value::Null) | None => Key::from(""),
            Some(other) => Key::from(other.to_string()),
        }
    }

    fn needs_body(&self) -> bool {
        true
    }
}

impl<F, K> KeyExtractor for F
where
    F: Fn(&RequestRef<'_>) -> K + Send + Sync + 'static,
    K: Into<Key>,
{
    fn key(&self, request: &RequestRef<'_>) -> Key {
        self(request).into()
    }
}

/// A request that cannot be keyed: a [`KeyExtractor::try_key`] refused it.
///
/// [`RateLimitLayer`](crate::RateLimitLayer) answers such a request `500` in reject
/// mode (and logs this error once, at `ERROR`) and fails it with this error in wait
/// mode: a request is never put in a bucket it does not belong to.
///
/// ```
/// use http::Request;
/// use ratewise::key::{ClientIp, KeyExtractor, RequestRef};
///
/// // No peer address in the request's extensions: the server was not set up for it.
/// let req = Request::get("/").body(()).unwrap();
/// let err = ClientIp::peer().try_key(&RequestRef::from(&req)).unwrap_err();
/// assert!(err.to_string().contains("no peer address"), "{err}");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot key the request: {reason}")]
pub struct KeyError {
    reason: Cow<'static, str>,
}

impl KeyError {
    /// A request that cannot be keyed, for `reason` (a phrase: "no `x-tenant` header").
    pub fn new(reason: impl Into<Cow<'static, str>>) -> Self {
        KeyError {
            reason: reason.into(),
        }
    }

    /// Why the request cannot be keyed.
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

/// A key extractor held as a value: what every keyed layer stores.
pub(crate) type SharedKey = Arc<dyn KeyExtractor>;

/// The key of `request` by `extractor`.
pub(crate) fn key_of<B>(extractor: &dyn KeyExtractor, request: &Request<B>) -> Key {
    extractor.key(&RequestRef::from(request))
}

/// The key of `request` by `extractor`, or why it has none.
pub(crate) fn try_key_of<B>(
    extractor: &dyn KeyExtractor,
    request: &Request<B>,
) -> Result<Key, KeyError> {
    extractor.try_key(&RequestRef::from(request))
}

/// One key for every request: `"*"` (a layer's default key).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Global;

impl KeyExtractor for Global {
    fn key(&self, _request: &RequestRef<'_>) -> Key {
        thread_local! {
            static GLOBAL: Key = Key::from("*");
        }
        GLOBAL.with(Key::clone)
    }
}

/// The request's authority (`host[:port]`), from the URI, else the `Host` header,
/// else the empty key.
///
/// User info (`user:password@`) is never part of the key: keys are logged and shown in
/// error messages.
///
/// ```
/// use ratewise::key::{Authority, Key, KeyExtractor};
/// use http::Request;
///
/// let req = Request::get("https://user:s3cret@api.example.com:8443/v1").body(()).unwrap();
/// assert_eq!(Authority.key_of(&req), Key::from("api.example.com:8443"));
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct Authority;

impl KeyExtractor for Authority {
    fn key(&self, request: &RequestRef<'_>) -> Key {
        let text = match request.uri().authority() {
            Some(a) => without_userinfo(a.as_str()),
            None => request
                .headers()
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
                .map_or("", |h| without_userinfo(h.trim())),
        };
        cached(text)
    }
}

/// `text` as a key, reusing the last key this thread made when it is the same text: a
/// client calls a handful of hosts, so the common case costs a comparison, not an
/// allocation.
fn cached(text: &str) -> Key {
    thread_local! {
        static LAST: std::cell::RefCell<Option<Key>> = const { std::cell::RefCell::new(None) };
    }
    LAST.with(|last| {
        let mut last = last.borrow_mut();
        match &*last {
            Some(key) if key.as_str() == text => key.clone(),
            _ => {
                let key = Key::from(text);
                *last = Some(key.clone());
                key
            }
        }
    })
}

/// `host[:port]` of an authority: everything after its last `@`.
fn without_userinfo(authority: &str) -> &str {
    authority.rsplit('@').next().unwrap_or(authority)
}

/// The request's method, host, path and a fingerprint of the whole URI, e.g.
/// `GET api.sgroup.qq.com/gateway #5f0c3a1e9b7d2c44`.
///
/// The key is logged and shown in error messages, so it carries no secret, yet two
/// requests share a key only if their method and URI are the same:
///
/// - `METHOD`, a space, then the URI's `host[:port]` (user info dropped; nothing for a
///   URI without authority, e.g. `/gateway` on a server), then its path with every
///   secret-looking segment replaced by `***`: a segment containing `:` (Telegram's
///   `bot123456:ABC-DEF...`), or one with a run of 24 or more token characters
///   (ASCII letters, digits, `-_.~+=%`). The query is left out.
/// - a space, `#` and 16 hex digits: a 64-bit hash of the method and the full URI,
///   query and user info included. Two bots with different tokens, or two calls with
///   different `?key=` values, get different keys.
///
/// The hash is fixed-key ([`DefaultHasher::new`](std::hash::DefaultHasher::new)): the
/// same request gives the same key for the life of the program, across layers and
/// processes built from the same Rust toolchain (std does not promise the algorithm
/// across Rust releases, so do not persist keys across upgrades). It is an identity,
/// not a secret: a short or guessable secret in a URI could be found from it by trial.
///
/// To name an entry by hand (e.g. [`CacheHandle::invalidate`](crate::cache::CacheHandle::invalidate)),
/// build the key with [`MethodUri::key_for`].
///
/// ```
/// use ratewise::key::{KeyExtractor, MethodUri};
/// use http::{Method, Request};
///
/// let req = Request::get("https://api.sgroup.qq.com/gateway").body(()).unwrap();
/// let key = MethodUri.key_of(&req);
/// assert!(key.as_str().starts_with("GET api.sgroup.qq.com/gateway #"));
/// assert_eq!(key, MethodUri::key_for(&Method::GET, req.uri()));
///
/// let bot = Request::post("https://api.telegram.org/bot123:SECRET/sendMessage").body(()).unwrap();
/// let key = MethodUri.key_of(&bot);
/// assert!(key.as_str().starts_with("POST api.telegram.org/***/sendMessage #"));
/// assert!(!key.as_str().contains("SECRET"));
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct MethodUri;

impl MethodUri {
    /// The key [`MethodUri`] gives a request with this method and URI.
    pub fn key_for(method: &Method, uri: &Uri) -> Key {
        use std::fmt::Write;
        use std::hash::{DefaultHasher, Hash, Hasher};

        let mut hasher = DefaultHasher::new();
        method.as_str().hash(&mut hasher);
        uri.to_string().hash(&mut hasher);
        let fingerprint = hasher.finish();

        let path = uri.path();
        let mut out = String::with_capacity(method.as_str().len() + path.len() + 48);
        out.push_str(method.as_str());
        out.push(' ');
        if let Some(a) = uri.authority() {
            out.push_str(without_userinfo(a.as_str()));
        }
        for (i, segment) in path.split('/').enumerate() {
            if i > 0 {
                out.push('/');
            }
            if looks_secret(segment) {
                out.push_str("***");
            } else {
                out.push_str(segment);
            }
        }
        let _ = write!(out, " #{fingerprint:016x}");
        Key::from(out)
    }
}

impl KeyExtractor for MethodUri {
    fn key(&self, request: &RequestRef<'_>) -> Key {
        MethodUri::key_for(request.method(), request.uri())
    }
}

/// The shortest run of token characters taken for a secret.
const SECRET_RUN: usize = 24;

/// Whether a path segment looks like it carries a token: it contains `:` (Telegram's
/// `bot<id>:<secret>`), or a run of [`SECRET_RUN`] or more token characters.
fn looks_secret(segment: &str) -> bool {
    if segment.contains(':') {
        return true;
    }
    let mut run = 0;
    for c in segment.chars() {
        if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '~' | '+' | '=' | '%') {
            run += 1;
            if run >= SECRET_RUN {
                return true;
            }
        } else {
            run = 0;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: Method, uri: &str) -> Request<()> {
        Request::builder().method(method).uri(uri).body(()).unwrap()
    }

    #[test]
    fn authority_drops_userinfo() {
        let r = req(Method::GET, "https://user:s3cret@api.example.com/v1");
        assert_eq!(Authority.key_of(&r), Key::from("api.example.com"));
        let r = req(Method::GET, "http://tok@127.0.0.1:8080/");
        assert_eq!(Authority.key_of(&r), Key::from("127.0.0.1:8080"));
        let r = req(Method::GET, "https://api.example.com:8443/v1");
        assert_eq!(Authority.key_of(&r), Key::from("api.example.com:8443"));
    }

    #[test]
    fn authority_from_host_header_drops_userinfo() {
        let mut r = req(Method::GET, "/v1");
        r.headers_mut().insert(
            http::header::HOST,
            "user:s3cret@gw.example:81".parse().unwrap(),
        );
        assert_eq!(Authority.key_of(&r), Key::from("gw.example:81"));
        let mut r = req(Method::GET, "/v1");
        r.headers_mut()
            .insert(http::header::HOST, "gw.example".parse().unwrap());
        assert_eq!(Authority.key_of(&r), Key::from("gw.example"));
        assert_eq!(Authority.key_of(&req(Method::GET, "/v1")), Key::from(""));
    }

    #[test]
    fn method_uri_hides_telegram_token_and_query() {
        let r = req(
            Method::POST,
            "https://api.telegram.org/bot123456:AAH-secretTOKEN_x/sendMessage?key=sk-QUERY",
        );
        let key = MethodUri.key_of(&r);
        let text = key.as_str();
        assert!(
            text.starts_with("POST api.telegram.org/***/sendMessage #"),
            "{text}"
        );
        for secret in ["123456", "AAH", "secretTOKEN", "sk-QUERY", "key="] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
    }

    #[test]
    fn method_uri_hides_userinfo_and_long_token_segments() {
        let r = req(
            Method::GET,
            "https://u:pw@gw.example:8443/v1/keys/0123456789abcdefABCDEF0123/models",
        );
        let key = MethodUri.key_of(&r);
        let text = key.as_str();
        assert!(
            text.starts_with("GET gw.example:8443/v1/keys/***/models #"),
            "{text}"
        );
        assert!(
            !text.contains("pw@") && !text.contains("0123456789"),
            "{text}"
        );
    }

    #[test]
    fn method_uri_keeps_identity() {
        let a = req(Method::GET, "https://api.telegram.org/bot1:AAA/getMe");
        let b = req(Method::GET, "https://api.telegram.org/bot2:BBB/getMe");
        assert_ne!(MethodUri.key_of(&a), MethodUri.key_of(&b));
        assert_eq!(
            MethodUri.key_of(&a),
            MethodUri.key_of(&req(Method::GET, "https://api.telegram.org/bot1:AAA/getMe"))
        );
        let q1 = req(Method::GET, "https://gw.example/v1?key=one");
        let q2 = req(Method::GET, "https://gw.example/v1?key=two");
        assert_ne!(MethodUri.key_of(&q1), MethodUri.key_of(&q2));
        let post = req(Method::POST, "https://api.telegram.org/bot1:AAA/getMe");
        assert_ne!(MethodUri.key_of(&a), MethodUri.key_of(&post));
        let http = req(Method::GET, "http://api.telegram.org/bot1:AAA/getMe");
        assert_ne!(MethodUri.key_of(&a), MethodUri.key_of(&http));
    }

    #[test]
    fn display_redacts_long_tokens_and_keeps_hosts() {
        let key = Key::from("tenant sk-live-0123456789abcdefghijklmnop");
        let shown = key.to_string();
        assert!(shown.starts_with("tenant *** #"), "{shown}");
        assert!(!format!("{key:?}").contains("0123456789"));
        assert_eq!(key.as_str(), "tenant sk-live-0123456789abcdefghijklmnop");
        let host = Key::from("open.bigmodel.cn/api/paas/v4/chat/completions");
        assert_eq!(host.to_string(), host.as_str());
        assert_eq!(Key::from("").to_string(), "");
        assert_eq!(Key::from("é ü").to_string(), "é ü");
        let other = Key::from("tenant sk-live-0123456789abcdefghijklmnoq");
        assert_ne!(key.to_string(), other.to_string());
        // A GLM-style `<id>.<secret>` key loses both parts.
        let glm = Key::from("0123456789abcdef0123456789abcdef.Sec4et5ecret6789");
        let shown = glm.to_string();
        assert!(
            shown.starts_with("*** #") && !shown.contains("Sec4et"),
            "{shown}"
        );
    }

    #[test]
    fn from_secret_is_stable_and_hides_the_secret() {
        let a = Key::from_secret("sk-live-abc");
        assert_eq!(a, Key::from_secret("sk-live-abc"));
        assert_ne!(a, Key::from_secret("sk-live-abd"));
        assert!(a.as_str().starts_with("secret#") && !a.as_str().contains("abc"));
    }

    #[test]
    fn method_uri_keeps_plain_paths_readable() {
        let key = MethodUri.key_of(&req(Method::GET, "https://api.sgroup.qq.com/gateway"));
        let (readable, fingerprint) = key.as_str().split_once(" #").unwrap();
        assert_eq!(readable, "GET api.sgroup.qq.com/gateway");
        assert_eq!(fingerprint.len(), 16);
        assert!(fingerprint.chars().all(|c| c.is_ascii_hexdigit()));
        let key = MethodUri.key_of(&req(Method::GET, "/gateway"));
        assert!(key.as_str().starts_with("GET /gateway #"), "{key}");
        // 23 token characters: still readable.
        let key = MethodUri.key_of(&req(Method::GET, "http://h/chat-completions-stream"));
        assert!(
            key.as_str().starts_with("GET h/chat-completions-stream #"),
            "{key}"
        );
    }
}
