//! What a call will cost before it is sent ([`estimate`]), asking a stream for its usage,
//! and reading the usage an answer reports.

use bytes::{Bytes, BytesMut};
use serde_json::Value;

/// The default estimate of a JSON request body, in tokens: the characters of its prompt
/// divided by 4, rounded up (at least 1), plus the most it may generate.
///
/// The prompt is the text of `messages[].content` (a string, or the `text` of each
/// part), of `input` (embeddings: a string or a list of them) and of `prompt` (legacy
/// completions). The most it may generate is `max_completion_tokens`, else
/// `max_tokens`, else 0. Saturates at `u32::MAX`.
///
/// Four characters per token is English text's average; other scripts take more tokens
/// per character, and the answer's `usage` corrects the estimate either way.
///
/// ```
/// use ratewise::tokens::estimate;
/// use serde_json::json;
///
/// let body = json!({
///     "model": "gpt-4o-mini",
///     "messages": [{"role": "user", "content": "Say hello in French."}], // 20 characters
///     "max_tokens": 50,
/// });
/// assert_eq!(estimate(&body), 5 + 50);
/// ```
pub fn estimate(body: &Value) -> u32 {
    let mut chars = 0usize;
    if let Some(messages) = body.get("messages").and_then(Value::as_array) {
        for content in messages.iter().filter_map(|m| m.get("content")) {
            chars = chars.saturating_add(text_len(content));
        }
    }
    for field in ["input", "prompt"] {
        if let Some(value) = body.get(field) {
            chars = chars.saturating_add(text_len(value));
        }
    }
    let prompt = u32::try_from(chars.div_ceil(4)).unwrap_or(u32::MAX).max(1);
    let completion = ["max_completion_tokens", "max_tokens"]
        .iter()
        .find_map(|f| body.get(*f).and_then(Value::as_u64))
        .map_or(0, |n| u32::try_from(n).unwrap_or(u32::MAX));
    prompt.saturating_add(completion)
}

/// The characters of the text in a prompt value: a string, the `text` of parts, or a
/// list of either.
fn text_len(value: &Value) -> usize {
    match value {
        Value::String(s) => s.chars().count(),
        Value::Array(items) => items.iter().map(text_len).sum(),
        Value::Object(part) => part.get("text").map_or(0, text_len),
        _ => 0,
    }
}

/// The body of a streaming request (`"stream": true`) that does not ask for usage,
/// rewritten to ask (`"stream_options": {"include_usage": true}`); `None` when there is
/// nothing to change.
///
/// Without `stream_options`, the field is written right after the opening brace and
/// every other byte stays as it was; a `stream_options` object without the flag is
/// completed by writing the whole body again.
pub(crate) fn ask_usage(bytes: &Bytes, body: &Value) -> Option<Bytes> {
    if body.get("stream").and_then(Value::as_bool) != Some(true) {
        return None;
    }
    match body.get("stream_options") {
        None => {
            let open = bytes.iter().position(|b| !b.is_ascii_whitespace())?;
            if bytes[open] != b'{' {
                return None;
            }
            const FIELD: &[u8] = br#""stream_options":{"include_usage":true},"#;
            let mut out = BytesMut::with_capacity(bytes.len() + FIELD.len());
            out.extend_from_slice(&bytes[..=open]);
            out.extend_from_slice(FIELD);
            out.extend_from_slice(&bytes[open + 1..]);
            Some(out.freeze())
        }
        Some(Value::Object(options))
            if options.get("include_usage") != Some(&Value::Bool(true)) =>
        {
            let mut body = body.clone();
            body["stream_options"]["include_usage"] = Value::Bool(true);
            serde_json::to_vec(&body).ok().map(Bytes::from)
        }
        Some(_) => None,
    }
}

/// The most of a `usage` object the scanner keeps: a real one is about 200 bytes.
const USAGE_CAP: usize = 4096;

/// Finds the last `"usage": {…}` object in a body as it passes, one chunk at a time,
/// keeping only that object: a JSON answer's, or the last SSE chunk's. Nothing else of
/// the body is kept.
///
/// The key is matched as the bytes `"usage"`, then `:` and `{` (spaces allowed): inside
/// a JSON string a quote is escaped, so the match is always a real key. `"usage": null`
/// (OpenAI's chunks before the last) is skipped.
#[derive(Debug, Default)]
pub(crate) struct UsageScanner {
    state: Scan,
    /// Bytes of `"usage"` matched so far.
    matched: usize,
    object: Vec<u8>,
    depth: u32,
    in_string: bool,
    escaped: bool,
    found: Option<u64>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Scan {
    /// Looking for `"usage"`.
    #[default]
    Key,
    /// After the key: spaces, then `:`.
    Colon,
    /// After the colon: spaces, then `{`.
    Open,
    /// Inside the object.
    Object,
}

const KEY: &[u8] = b"\"usage\"";

impl UsageScanner {
    /// The tokens of the last usage object seen: `total_tokens`, else
    /// `prompt_tokens + completion_tokens` (or `input_tokens + output_tokens`).
    pub(crate) fn found(&self) -> Option<u64> {
        self.found
    }

    /// Scans the next bytes of the body.
    pub(crate) fn feed(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.step(b);
        }
    }

    fn step(&mut self, b: u8) {
        match self.state {
            Scan::Key => {
                if b == KEY[self.matched] {
                    self.matched += 1;
                    if self.matched == KEY.len() {
                        self.matched = 0;
                        self.state = Scan::Colon;
                    }
                } else {
                    // Only the key's first byte, a quote, can start it again.
                    self.matched = usize::from(b == b'"');
                }
            }
            Scan::Colon | Scan::Open if b.is_ascii_whitespace() => {}
            Scan::Colon if b == b':' => self.state = Scan::Open,
            Scan::Open if b == b'{' => {
                self.state = Scan::Object;
                self.object.clear();
                self.object.push(b);
                self.depth = 1;
                self.in_string = false;
                self.escaped = false;
            }
            Scan::Colon | Scan::Open => {
                self.state = Scan::Key;
                self.step(b);
            }
            Scan::Object => {
                if self.object.len() >= USAGE_CAP {
                    // Not a usage object of any API we know: give up on it.
                    self.state = Scan::Key;
                    return;
                }
                self.object.push(b);
                if self.in_string {
                    match b {
                        _ if self.escaped => self.escaped = false,
                        b'\\' => self.escaped = true,
                        b'"' => self.in_string = false,
                        _ => {}
                    }
                    return;
                }
                match b {
                    b'"' => self.in_string = true,
                    b'{' => self.depth += 1,
                    b'}' => {
                        self.depth -= 1;
                        if self.depth == 0 {
                            self.state = Scan::Key;
                            if let Some(tokens) = tokens_of(&self.object) {
                                self.found = Some(tokens);
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
    }
}

/// The tokens a usage object reports.
fn tokens_of(object: &[u8]) -> Option<u64> {
    let usage: Value = serde_json::from_slice(object).ok()?;
    let field = |name: &str| usage.get(name).and_then(Value::as_u64);
    field("total_tokens")
        .or_else(|| Some(field("prompt_tokens")? + field("completion_tokens").unwrap_or(0)))
        .or_else(|| Some(field("input_tokens")? + field("output_tokens").unwrap_or(0)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn scan(chunks: &[&str]) -> Option<u64> {
        let mut s = UsageScanner::default();
        for c in chunks {
            s.feed(c.as_bytes());
        }
        s.found()
    }

    #[test]
    fn finds_the_last_usage_object_across_chunk_boundaries() {
        let body = r#"{"id":"x","choices":[{"message":{"content":"the \"usage\": {\"total_tokens\": 99}"}}],"usage" : { "prompt_tokens": 12, "completion_tokens": 30, "total_tokens": 42, "prompt_tokens_details": {"cached_tokens": 0} }}"#;
        assert_eq!(scan(&[body]), Some(42));
        // Split at every byte.
        let bytes: Vec<String> = body.chars().map(String::from).collect();
        let pieces: Vec<&str> = bytes.iter().map(String::as_str).collect();
        assert_eq!(scan(&pieces), Some(42));
    }

    #[test]
    fn reads_openai_and_glm_streams() {
        // OpenAI with include_usage: null in every chunk but the last.
        let openai = [
            "data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}],\"usage\":null}\n\n",
            "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":2,\"total_tokens\":7}}\n\n",
            "data: [DONE]\n\n",
        ];
        assert_eq!(scan(&openai), Some(7));
        let glm = "data: {\"choices\":[{\"finish_reason\":\"stop\"}],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":4}}\n\ndata: [DONE]\n\n";
        assert_eq!(scan(&[glm]), Some(7));
        let anthropic = r#"{"usage":{"input_tokens":10,"output_tokens":5}}"#;
        assert_eq!(scan(&[anthropic]), Some(15));
        assert_eq!(
            scan(&[r#"{"type":"usage","x":1}"#, r#"{"usage":null}"#]),
            None
        );
        assert_eq!(scan(&["not json at all"]), None);
    }

    #[test]
    fn estimates_prompts_of_every_shape() {
        assert_eq!(estimate(&json!({})), 1);
        assert_eq!(
            estimate(
                &json!({"messages": [{"content": [{"type": "text", "text": "12345678"}]}], "max_completion_tokens": 10, "max_tokens": 99})
            ),
            12
        );
        assert_eq!(estimate(&json!({"input": ["abcd", "efgh"]})), 2);
        assert_eq!(estimate(&json!({"max_tokens": u64::MAX})), u32::MAX);
    }

    #[test]
    fn asks_for_usage_only_where_missing() {
        let plain = Bytes::from_static(br#" {"stream":true,"messages":[]}"#);
        let value: Value = serde_json::from_slice(&plain).unwrap();
        let asked = ask_usage(&plain, &value).unwrap();
        assert_eq!(
            &asked[..],
            br#" {"stream_options":{"include_usage":true},"stream":true,"messages":[]}"#
        );
        let parsed: Value = serde_json::from_slice(&asked).unwrap();
        assert_eq!(parsed["stream_options"]["include_usage"], true);

        let partial = json!({"stream": true, "stream_options": {"include_obfuscation": false}});
        let bytes = Bytes::from(partial.to_string());
        let asked: Value = serde_json::from_slice(&ask_usage(&bytes, &partial).unwrap()).unwrap();
        assert_eq!(asked["stream_options"]["include_usage"], true);
        assert_eq!(asked["stream_options"]["include_obfuscation"], false);

        for untouched in [
            json!({"stream": false}),
            json!({"messages": []}),
            json!({"stream": true, "stream_options": {"include_usage": true}}),
        ] {
            let bytes = Bytes::from(untouched.to_string());
            assert_eq!(ask_usage(&bytes, &untouched), None, "{untouched}");
        }
    }
}
