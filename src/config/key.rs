//! The keys a file can name: a small declarative set over [`crate::key`]. Closures stay
//! in code (`builder()?.rate_limit(|rl| rl.key(...))`).

use std::fmt;

use http::HeaderName;
use serde::{de, Deserialize, Deserializer};

use crate::key::{
    json_field, Authority, Global, JsonField, Key, KeyExtractor, MethodUri, RequestRef,
};

/// A key as a file writes it: `"global"`, `"authority"`, `"method_uri"`, `"path"`, or a
/// one-entry table `{ header = "x-tenant" }`, `{ secret_header = "authorization" }`,
/// `{ path_segment = 0 }`, `{ json_field = "/chat_id" }`. Read by hand rather than
/// derived, so that the table form reads the same in TOML, JSON and YAML (serde's
/// derived enums want a YAML tag).
#[derive(Debug, Clone)]
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

/// The names a key can have, for "expected one of" messages.
const NAMES: &[&str] = &[
    "global",
    "authority",
    "method_uri",
    "path",
    "path_segment",
    "header",
    "secret_header",
    "json_field",
];

impl<'de> Deserialize<'de> for KeyConfig {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(KeyVisitor)
    }
}

struct KeyVisitor;

impl<'de> de::Visitor<'de> for KeyVisitor {
    type Value = KeyConfig;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a key: \"global\", \"authority\", \"method_uri\", \"path\", or one entry such as { header = \"x-tenant\" }")
    }

    fn visit_str<E: de::Error>(self, name: &str) -> Result<KeyConfig, E> {
        match name {
            "global" => Ok(KeyConfig::Global),
            "authority" => Ok(KeyConfig::Authority),
            "method_uri" => Ok(KeyConfig::MethodUri),
            "path" => Ok(KeyConfig::Path),
            other => Err(E::unknown_variant(other, NAMES)),
        }
    }

    fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<KeyConfig, A::Error> {
        let Some(name) = map.next_key::<String>()? else {
            return Err(de::Error::invalid_length(0, &"one entry"));
        };
        let key = match name.as_str() {
            "path_segment" => KeyConfig::PathSegment(map.next_value()?),
            "header" => KeyConfig::Header(map.next_value()?),
            "secret_header" => KeyConfig::SecretHeader(map.next_value()?),
            "json_field" => KeyConfig::JsonField(map.next_value()?),
            other => return Err(de::Error::unknown_variant(other, NAMES)),
        };
        if let Some(extra) = map.next_key::<String>()? {
            return Err(de::Error::custom(format_args!(
                "a key has one entry, `{name}`; `{extra}` is one too many"
            )));
        }
        Ok(key)
    }
}

impl KeyConfig {
    /// The extractor, or the variant at fault (`header`, `secret_header`) and why.
    pub(super) fn extractor(&self) -> Result<FileKey, (&'static str, String)> {
        let header = |variant: &'static str, name: &str| {
            HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| (variant, format!("is not a valid header name ({name:?})")))
        };
        Ok(match self {
            KeyConfig::Global => FileKey::Global,
            KeyConfig::Authority => FileKey::Authority,
            KeyConfig::MethodUri => FileKey::MethodUri,
            KeyConfig::Path => FileKey::Path,
            KeyConfig::PathSegment(n) => FileKey::PathSegment(*n),
            KeyConfig::Header(name) => FileKey::Header(header("header", name)?),
            KeyConfig::SecretHeader(name) => FileKey::SecretHeader(header("secret_header", name)?),
            KeyConfig::JsonField(pointer) => FileKey::Json(json_field(pointer.as_str())),
        })
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
        let (variant, reason) = config.extractor().unwrap_err();
        assert_eq!(variant, "header");
        assert!(reason.contains("not a valid header name"), "{reason}");
        let err = |text: &str| {
            serde_json::from_str::<KeyConfig>(text)
                .unwrap_err()
                .to_string()
        };
        assert!(err(r#""ip""#).contains("unknown variant `ip`"));
        assert!(err(r#"{"json_feild":"/a"}"#).contains("unknown variant `json_feild`"));
        assert!(err(r#"{"header":"a","json_field":"/b"}"#).contains("one too many"));
        assert!(err(r#"{}"#).contains("one entry"));
        assert!(err("3").contains("a key:"));
    }
}
