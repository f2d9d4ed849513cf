//! [`Verdict`]: what a response (or an error) means for rate limiting.

use std::time::Duration;

use http::{Response, StatusCode};

use super::Refusal;

/// What a response means for rate limiting.
///
/// Stored in the response's extensions by [`ClassifyLayer`](crate::ClassifyLayer);
/// every other layer reads it with [`verdict_of`].
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The upstream served the request.
    Success,
    /// The upstream says the client is over its limit.
    RateLimited {
        /// How long the server asked the client to wait, when it said.
        retry_after: Option<Duration>,
    },
    /// A failure worth retrying: 5xx, 408, connection errors.
    Transient,
    /// A failure not worth retrying.
    Failure,
}

impl Verdict {
    /// A rate-limited verdict with the server's hint.
    pub fn rate_limited(retry_after: Option<Duration>) -> Self {
        Verdict::RateLimited { retry_after }
    }

    /// Whether this verdict says "rate-limited".
    pub fn is_rate_limited(&self) -> bool {
        matches!(self, Verdict::RateLimited { .. })
    }

    /// The server's retry hint, when the verdict is rate-limited and the server gave one.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Verdict::RateLimited { retry_after } => *retry_after,
            _ => None,
        }
    }

    /// Whether a retry could succeed: rate-limited or transient.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Verdict::RateLimited { .. } | Verdict::Transient)
    }

    /// The verdict a status gets when no classifier has an opinion: 1xx, 2xx and 3xx
    /// are success, everything else failure.
    pub fn from_status(status: StatusCode) -> Self {
        if status.is_success() || status.is_informational() || status.is_redirection() {
            Verdict::Success
        } else {
            Verdict::Failure
        }
    }
}

/// The verdict of a response: the one [`ClassifyLayer`](crate::ClassifyLayer) stored in
/// its extensions, or, when no classification layer ran, a header-only judgement (429
/// is rate-limited with the parsed retry hint, 5xx and 408 are transient, see
/// [`Verdict::from_status`] for the rest).
///
/// Every ratewise layer reads verdicts through this one function.
pub fn verdict_of<B>(response: &Response<B>) -> Verdict {
    if let Some(v) = response.extensions().get::<Verdict>() {
        return *v;
    }
    let status = response.status();
    if status == StatusCode::TOO_MANY_REQUESTS {
        return Verdict::rate_limited(crate::retry_after::parse(response.headers(), None));
    }
    if status.is_server_error() || status == StatusCode::REQUEST_TIMEOUT {
        return Verdict::Transient;
    }
    Verdict::from_status(status)
}

/// What a call's result means, whichever way it came back: an answer (a 429 the
/// retry did not wait out, a success...) is judged by [`verdict_of`], an error (a
/// [`Refusal`] of a layer that held the call back, a connection error) by
/// [`verdict_of_error`]. One call tells the caller whether a call was rate-limited, and
/// for how long.
///
/// ```
/// use std::time::Duration;
/// use http::{Response, StatusCode};
/// use ratewise::{outcome, BoxError, Verdict};
///
/// let answer: Result<Response<()>, BoxError> = Ok(Response::builder()
///     .status(StatusCode::TOO_MANY_REQUESTS)
///     .header("retry-after", "4310")
///     .body(())
///     .unwrap());
/// assert_eq!(outcome(&answer), Verdict::rate_limited(Some(Duration::from_secs(4310))));
/// ```
pub fn outcome<B>(result: &Result<Response<B>, crate::BoxError>) -> Verdict {
    match result {
        Ok(response) => verdict_of(response),
        Err(err) => verdict_of_error(&**err),
    }
}

/// The verdict of an error returned instead of a response.
///
/// A ratewise [`Refusal`] anywhere in the error's `source()` chain gives its own
/// verdict ([`Refusal::verdict`]): rate-limited with its wait when waiting can cure it,
/// a failure when it cannot. Every other error (hyper's, io's, a timeout) is taken to
/// be connection-level and transient.
pub fn verdict_of_error(err: &(dyn std::error::Error + 'static)) -> Verdict {
    Refusal::find(err).map_or(Verdict::Transient, Refusal::verdict)
}
