//! Keeping secrets out of logs and error messages.
//!
//! Tokens travel in URLs (`https://api.telegram.org/bot<token>/...`, `?key=...`,
//! `https://user:password@host/`), and HTTP client errors print the URL they failed
//! on. Every error text ratewise logs goes through [`redact_urls`] first.

use std::{borrow::Cow, fmt};

/// Cuts every `scheme://...` URL in `text` down to `scheme://host[:port]`: user info is
/// dropped, and a path, query or fragment becomes `/[redacted]`. Tokens travel in
/// exactly those parts (`https://api.telegram.org/bot<token>/`, `?key=`). Text without
/// `://` is returned as it is, without a copy.
pub(crate) fn redact_urls(text: &str) -> Cow<'_, str> {
    if !text.contains("://") {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("://") {
        let before = &rest[..i];
        let scheme_len = before
            .chars()
            .rev()
            .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
            .map(char::len_utf8)
            .sum::<usize>();
        if scheme_len == 0 {
            out.push_str(&rest[..i + 3]);
            rest = &rest[i + 3..];
            continue;
        }
        out.push_str(before);
        let after = &rest[i + 3..];
        let stop = |c: char| c.is_whitespace() || matches!(c, '"' | '\'' | '<' | '>' | '`');
        let authority_end = after
            .find(|c: char| stop(c) || matches!(c, '/' | '?' | '#' | ')' | ','))
            .unwrap_or(after.len());
        let authority = &after[..authority_end];
        let host = match authority.rfind('@') {
            Some(at) => &authority[at + 1..],
            None => authority,
        };
        out.push_str("://");
        out.push_str(host);
        let tail = &after[authority_end..];
        let tail_end = tail
            .find(|c: char| stop(c) || c == ')')
            .unwrap_or(tail.len());
        if tail[..tail_end].starts_with(['/', '?', '#']) && tail_end > 1 {
            out.push_str("/[redacted]");
        } else {
            out.push_str(&tail[..tail_end]);
        }
        rest = &tail[tail_end..];
    }
    out.push_str(rest);
    Cow::Owned(out)
}

/// Displays `T` with its URLs redacted ([`redact_urls`]): for `tracing` fields,
/// `error = %Redacted(&err)`.
pub(crate) struct Redacted<T>(pub(crate) T);

impl<T: fmt::Display> fmt::Display for Redacted<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&redact_urls(&self.0.to_string()))
    }
}

impl<T: fmt::Display> fmt::Debug for Redacted<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*redact_urls(&self.0.to_string()), f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_paths_queries_and_userinfo() {
        assert_eq!(
            redact_urls(
                "error sending request for url (https://api.telegram.org/bot123:ABC/getMe)"
            ),
            "error sending request for url (https://api.telegram.org/[redacted])"
        );
        assert_eq!(
            redact_urls("GET http://user:pw@127.0.0.1:8080?key=sk-1 failed"),
            "GET http://127.0.0.1:8080/[redacted] failed"
        );
        assert_eq!(
            redact_urls("to http://host, then https://h2/"),
            "to http://host, then https://h2/"
        );
        assert_eq!(redact_urls("no url :// here"), "no url :// here");
        assert_eq!(redact_urls("é://x/ü"), "é://x/ü");
        assert_eq!(redact_urls("a://"), "a://");
    }

    #[test]
    fn text_without_urls_is_borrowed() {
        assert!(matches!(redact_urls("connection reset"), Cow::Borrowed(_)));
    }

    #[test]
    fn redacted_wrapper_redacts_display_and_debug() {
        let e = std::io::Error::other("GET https://api.telegram.org/bot1:SECRET/x?key=SECRET");
        assert_eq!(
            Redacted(&e).to_string(),
            "GET https://api.telegram.org/[redacted]"
        );
        assert_eq!(
            format!("{:?}", Redacted(&e)),
            "\"GET https://api.telegram.org/[redacted]\""
        );
    }
}
