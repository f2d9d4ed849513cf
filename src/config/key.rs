//! The keys a file can name: a small declarative set over [`crate::key`]. Closures stay
//! in code (`builder()?.rate_limit(|rl| rl.key(...))`).

use http::HeaderName;
use serde::Deserialize;

use crate::key::{
    json_field, Authority, Global, JsonField, Key, KeyExtractor, MethodUri, RequestRef,
};

/// A key as a file writes it: `"global"`, `"authority"`, `"method_uri"`, `"path"`, or a
/// one-entry table `{ header = "x-tenant" }`, `{ secret_header = "authorization" }`,
/// `{ path_segment = 0 }`, `{ json_field = "/chat_id" }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub(super) enum KeyConfig {
    Global,
    Authority,
    MethodUri,
    /// The URI's path, without the query.
    Path,
    /// The `n`-th non-empty segment of the path, from 0.
    PathSegment(usize),
    /// A header's value (the empty key when absent or not text).
    Header(String),
    /// A header's value hashed by [`Key::from_secret`]: an API key or a token.
    SecretHeader(String),
    /// A field of the JSON body, by JSON pointer.
    JsonField(String),
}

impl KeyConfig {
    /// The extractor, or why the header name is not one (the reason of a `ConfigError`).
    pub(super) fn extractor(&self) -> Result<FileKey, String> {
        let header = |name: &str| {
            HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| format!("is not a valid header name ({name:?})"))
        };
        Ok(match self {
            KeyConfig::Global => FileKey::Global,
            KeyConfig::Authority => FileKey::Authority,
            KeyConfig::MethodUri => FileKey::MethodUri,
            KeyConfig::Path => FileKey::Path,
            KeyConfig::PathSegment(n) => FileKey::PathSegment(*n),
            KeyConfig::Header(name) => FileKey::Header(header(name)?),
            KeyConfig::SecretHeader(name) => FileKey::SecretHeader(header(name)?),
            KeyConfig::JsonField(pointer) => FileKey::Json(json_field(pointer.as_str())),
        })
    }

    /// The config key of this variant's value (`header`, `json_field`...), for a path.
    pub(super) fn field(&self) -> &'static str {
        match self {
            KeyConfig::SecretHeader(_) => "secret_header",
            _ => "header",
        }
    }
}

/// The extractor a [`KeyConfig`] makes: one type for every declarative key.
#[derive(Debug, Clone)]
pub(super) enum FileKey {
    Global,
    Authority,
    MethodUri,
    Path,
    PathSegment(usize),
    Header(HeaderName),
    SecretHeader(HeaderName),
    Json(JsonField),
}

impl KeyExtractor for FileKey {
    fn key(&self, request: &RequestRef<'_>) -> Key {
        let header = |name: &HeaderName| {
            request
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
        };
        match self {
            FileKey::Global => Global.key(request),
            FileKey::Authority => Authority.key(request),
            FileKey::MethodUri => MethodUri.key(request),
            FileKey::Path => Key::from(request.uri().path()),
            FileKey::PathSegment(n) => Key::from(
                request
                    .uri()
                    .path()
                    .split('/')
                    .filter(|s| !s.is_empty())
                    .nth(*n)
                    .unwrap_or(""),
            ),
            FileKey::Header(name) => Key::from(header(name)),
            FileKey::SecretHeader(name) => Key::from_secret(header(name)),
            FileKey::Json(field) => field.key(request),
        }
    }

    fn needs_body(&self) -> bool {
        matches!(self, FileKey::Json(_))
    }
}

#[cfg(test)]
mod tests {
    use http::Request;

    use super::*;
    use crate::key::JsonBody;

    fn key(config: &str, req: &Request<()>) -> Key {
        let config: KeyConfig = serde_json::from_str(config).unwrap();
        config.extractor().unwrap().key_of(req)
    }

    #[test]
    fn declarative_keys() {
        let mut req = Request::post("https://api.telegram.org/bot1:AB/sendMessage?x=1")
            .header("x-tenant", "acme")
            .header("authorization", "Bearer sk-live-1")
            .body(())
            .unwrap();
        req.extensions_mut()
            .insert(JsonBody::parse(br#"{"chat_id":42}"#).unwrap());
        assert_eq!(key(r#""global""#, &req), Key::from("*"));
        assert_eq!(key(r#""authority""#, &req), Key::from("api.telegram.org"));
        assert_eq!(key(r#""path""#, &req), Key::from("/bot1:AB/sendMessage"));
        assert_eq!(key(r#"{"path_segment":1}"#, &req), Key::from("sendMessage"));
        assert_eq!(key(r#"{"path_segment":5}"#, &req), Key::from(""));
        assert_eq!(key(r#"{"header":"X-Tenant"}"#, &req), Key::from("acme"));
        assert_eq!(key(r#"{"header":"x-missing"}"#, &req), Key::from(""));
        let secret = key(r#"{"secret_header":"authorization"}"#, &req);
        assert_eq!(secret, Key::from_secret("Bearer sk-live-1"));
        assert_eq!(key(r#"{"json_field":"/chat_id"}"#, &req), Key::from("42"));
        assert!(key(r#""method_uri""#, &req)
            .as_str()
            .starts_with("POST api.telegram.org/***/sendMessage #"));
    }

    #[test]
    fn only_json_fields_need_the_body() {
        let body = |c: &str| {
            serde_json::from_str::<KeyConfig>(c)
                .unwrap()
                .extractor()
                .unwrap()
                .needs_body()
        };
        assert!(body(r#"{"json_field":"chat_id"}"#));
        assert!(!body(r#"{"header":"x-tenant"}"#));
        assert!(!body(r#""authority""#));
    }

    #[test]
    fn a_bad_header_name_is_refused() {
        let config: KeyConfig = serde_json::from_str(r#"{"header":"x tenant"}"#).unwrap();
        assert!(config
            .extractor()
            .unwrap_err()
            .contains("not a valid header name"));
        assert!(serde_json::from_str::<KeyConfig>(r#""ip""#).is_err());
    }
}
