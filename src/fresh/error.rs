//! Errors of the fresh-client layer.
//!
//! Every error here has a `Display` that is never empty: a stale connection pool can
//! produce errors whose own message is empty (a QQ Bot gateway client's did), and an
//! empty log line is the worst kind.

use std::error::Error;
use std::fmt;

use crate::{redact::redact_urls, BoxError};

/// Longest error text the layer writes to a log line.
pub(super) const LOG_TEXT_CAP: usize = 512;

/// Where an error stood in its client's run of consecutive connection-level errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Standing {
    /// Counted; the run is still below the threshold.
    Counted,
    /// Counted, and this error brought the run to the threshold: the client is retired
    /// and a new one is built before the next request.
    Retired,
    /// The error came from a client that had already been retired (a request that was
    /// in flight when its client was replaced); it is not counted again.
    AlreadyRetired,
    /// Not a connection-level error; the run is left as it was.
    NotCounted,
}

/// An error from the wrapped client, with the client's generation and how many
/// connection-level errors in a row that client had produced.
///
/// `Display` is never empty, even when the original error's is: it falls back to the
/// original's `Debug`, then to its type name. URLs in the original's text are cut to
/// `scheme://host[:port]` (a token in a path or query, like Telegram's
/// `/bot<token>/`, never reaches a log through this `Display`).
/// [`source`](Error::source) is the original error, unchanged.
///
/// # Example
///
/// ```
/// # use ratewise::fresh::ClientError;
/// # fn handle(err: ratewise::BoxError) {
/// if let Some(e) = err.downcast_ref::<ClientError>() {
///     eprintln!("client #{} failed ({} in a row): {e}", e.generation(), e.consecutive());
/// }
/// # }
/// ```
pub struct ClientError {
    generation: u64,
    consecutive: u32,
    threshold: u32,
    standing: Standing,
    source: Original,
}

impl ClientError {
    pub(super) fn new(
        generation: u64,
        consecutive: u32,
        threshold: u32,
        standing: Standing,
        source: BoxError,
        source_type: &'static str,
    ) -> Self {
        ClientError {
            generation,
            consecutive,
            threshold,
            standing,
            source: Original::new(source, source_type),
        }
    }

    /// The generation of the client that failed: 1 for the first client built, 2 for
    /// the first replacement, and so on.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// How many connection-level errors in a row that client had produced when this
    /// error arrived, this one included when it counted.
    pub fn consecutive(&self) -> u32 {
        self.consecutive
    }

    /// The configured number of consecutive connection-level errors that retires a
    /// client.
    pub fn threshold(&self) -> u32 {
        self.threshold
    }

    /// Whether this error was counted as a connection-level error of the current
    /// client. Errors from an already retired client and errors that are not
    /// connection-level are not.
    pub fn is_counted(&self) -> bool {
        matches!(self.standing, Standing::Counted | Standing::Retired)
    }

    /// Whether this error retired its client: a new one is built before the next
    /// request.
    pub fn triggered_rebuild(&self) -> bool {
        self.standing == Standing::Retired
    }

    /// The type name of the original error.
    pub fn source_type(&self) -> &'static str {
        self.source.type_name
    }

    /// The original error.
    pub fn into_source(self) -> BoxError {
        self.source.error
    }
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let g = self.generation;
        let (c, t) = (self.consecutive, self.threshold);
        match self.standing {
            Standing::Counted => write!(
                f,
                "connection-level error from client generation {g} ({c} of {t} in a row before a rebuild)"
            )?,
            Standing::Retired => write!(
                f,
                "connection-level error from client generation {g} ({c} of {t} in a row; the client is rebuilt before the next request)"
            )?,
            Standing::AlreadyRetired => write!(
                f,
                "connection-level error from client generation {g}, already retired after {c} errors in a row"
            )?,
            Standing::NotCounted => write!(
                f,
                "error from client generation {g} (not connection-level; {c} of {t} in a row so far)"
            )?,
        }
        write!(f, ": {}", self.source)
    }
}

impl fmt::Debug for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.source.end_debug(
            f.debug_struct("ClientError")
                .field("generation", &self.generation)
                .field("consecutive", &self.consecutive)
                .field("threshold", &self.threshold)
                .field("standing", &self.standing),
        )
    }
}

impl Error for ClientError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        Some(&*self.source.error)
    }
}

/// The `MakeService` failed to build a client (its `poll_ready` or its future
/// returned an error).
///
/// The failed attempt is not retried by itself: the request that started it gets this
/// error, and the next request tries again. `Display` names the target and is never
/// empty; [`source`](Error::source) is the original error.
pub struct MakeClientError {
    target: std::sync::Arc<str>,
    generation: u64,
    source: Original,
}

impl MakeClientError {
    pub(super) fn new(
        target: std::sync::Arc<str>,
        generation: u64,
        source: BoxError,
        source_type: &'static str,
    ) -> Self {
        MakeClientError {
            target,
            generation,
            source: Original::new(source, source_type),
        }
    }

    /// The target's name: the label given to
    /// [`FreshClientBuilder::name`](super::FreshClientBuilder::name), else the target's
    /// `Debug`.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// The generation the client would have had.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The original error.
    pub fn into_source(self) -> BoxError {
        self.source.error
    }
}

impl fmt::Display for MakeClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "could not build client generation {} for target {}: {}",
            self.generation, self.target, self.source
        )
    }
}

impl fmt::Debug for MakeClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.source.end_debug(
            f.debug_struct("MakeClientError")
                .field("target", &self.target)
                .field("generation", &self.generation),
        )
    }
}

impl Error for MakeClientError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        Some(&*self.source.error)
    }
}

/// The wrapped client's original error and its type name: what [`ClientError`] and
/// [`MakeClientError`] both carry, show and hand back.
struct Original {
    error: BoxError,
    type_name: &'static str,
}

impl Original {
    fn new(error: BoxError, type_name: &'static str) -> Self {
        Original { error, type_name }
    }

    /// Ends an error's `Debug` with the fields both errors end with.
    fn end_debug(&self, out: &mut fmt::DebugStruct<'_, '_>) -> fmt::Result {
        out.field("source_type", &self.type_name)
            .field("source", &self.error)
            .finish()
    }
}

/// [`describe`]: never empty, URLs redacted.
impl fmt::Display for Original {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&describe(&*self.error, self.type_name))
    }
}

/// `FreshClient::call` was called without a preceding `poll_ready` that returned
/// `Ready(Ok(()))`.
#[derive(Debug, Clone, Default)]
pub(crate) struct NotReady;

impl fmt::Display for NotReady {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad("FreshClient::call before poll_ready returned Ready(Ok(()))")
    }
}

impl Error for NotReady {}

/// A never-empty, URL-redacted description of `err`: its `Display`, else its `Debug`,
/// else its type name.
pub(super) fn describe(err: &(dyn Error + 'static), type_name: &str) -> String {
    let shown = err.to_string();
    let text = if !shown.trim().is_empty() {
        shown
    } else {
        let debug = format!("{err:?}");
        if !debug.trim().is_empty() {
            format!("{debug} (empty message)")
        } else if !type_name.trim().is_empty() {
            format!("{type_name} (empty message)")
        } else {
            String::from("unnamed error (empty message)")
        }
    };
    redact_urls(&text).into_owned()
}

/// `text` cut to at most `cap` bytes on a char boundary, with a marker when cut.
pub(super) fn truncate(text: &str, cap: usize) -> String {
    if text.len() <= cap {
        return text.to_owned();
    }
    let mut end = cap;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...[truncated]", &text[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Silent;
    impl fmt::Display for Silent {
        fn fmt(&self, _: &mut fmt::Formatter<'_>) -> fmt::Result {
            Ok(())
        }
    }
    impl Error for Silent {}

    struct Mute;
    impl fmt::Debug for Mute {
        fn fmt(&self, _: &mut fmt::Formatter<'_>) -> fmt::Result {
            Ok(())
        }
    }
    impl fmt::Display for Mute {
        fn fmt(&self, _: &mut fmt::Formatter<'_>) -> fmt::Result {
            Ok(())
        }
    }
    impl Error for Mute {}

    #[test]
    fn describe_falls_back_to_debug_then_type_name() {
        assert_eq!(describe(&Silent, "x::Silent"), "Silent (empty message)");
        assert_eq!(describe(&Mute, "x::Mute"), "x::Mute (empty message)");
        assert_eq!(describe(&Mute, ""), "unnamed error (empty message)");
        let io = std::io::Error::other("boom");
        assert_eq!(describe(&io, "io::Error"), "boom");
    }

    #[test]
    fn client_error_display_is_never_empty_and_keeps_source() {
        for standing in [
            Standing::Counted,
            Standing::Retired,
            Standing::AlreadyRetired,
            Standing::NotCounted,
        ] {
            let e = ClientError::new(4, 2, 3, standing, Box::new(Mute), "my::Mute");
            let shown = e.to_string();
            assert!(shown.contains("generation 4"), "{shown}");
            assert!(shown.ends_with(": my::Mute (empty message)"), "{shown}");
            assert!(e.source().is_some_and(|s| s.is::<Mute>()));
        }
        let e = ClientError::new(1, 3, 3, Standing::Retired, Box::new(Silent), "Silent");
        assert_eq!(
            e.to_string(),
            "connection-level error from client generation 1 (3 of 3 in a row; the client is \
             rebuilt before the next request): Silent (empty message)"
        );
        assert!(e.triggered_rebuild() && e.is_counted());
    }

    #[test]
    fn make_client_error_names_target() {
        let e = MakeClientError::new("qq-gateway".into(), 2, Box::new(Silent), "Silent");
        assert_eq!(
            e.to_string(),
            "could not build client generation 2 for target qq-gateway: Silent (empty message)"
        );
        assert_eq!(e.target(), "qq-gateway");
    }

    #[test]
    fn truncate_respects_char_boundaries() {
        assert_eq!(truncate("abc", 5), "abc");
        assert_eq!(truncate("频率限制", 4), "频...[truncated]");
    }
}
