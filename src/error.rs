//! Errors: [`ConfigError`] at start-up, [`Error`] at run time.

use std::fmt;

use http::StatusCode;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A configuration value was rejected when the layer or a client was built.
///
/// Every variant names the offending input, so a bad deployment fails at
/// start-up instead of on the first request.
///
/// Its `Debug` is its message, so `fn main() -> Result<(), Box<dyn Error>>`
/// prints what to fix (`cookie key must be at least 64 bytes, got 5: …`)
/// rather than `KeyTooShort(5)`.
#[derive(Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A URL could not be parsed, or is not an absolute `http(s)` URL.
    #[error("invalid URL for {what}: {value:?}")]
    InvalidUrl {
        /// Which setting held the URL.
        what: &'static str,
        /// The value given.
        value: String,
    },
    /// The public origin is plain `http://` on a host that is not loopback.
    #[error(
        "public origin {0:?} is plain http on a non-loopback host; use https or opt in with AuthConfig::new_allowing_plain_http"
    )]
    InsecureOrigin(String),
    /// A key shorter than 64 bytes was given.
    #[error(
        "cookie key must be at least 64 bytes, got {0}: generate one with `openssl rand -base64 64`"
    )]
    KeyTooShort(usize),
    /// A cookie name with characters outside the RFC 6265 token alphabet.
    #[error("invalid cookie name {0:?}")]
    InvalidCookieName(String),
    /// A path setting that is not an absolute path (`/...`).
    #[error("invalid path for {what}: {value:?} (must start with a single '/')")]
    InvalidPath {
        /// Which setting held the path.
        what: &'static str,
        /// The value given.
        value: String,
    },
    /// A duration or size setting outside its allowed range.
    #[error("{0}")]
    OutOfRange(&'static str),
    /// The HTTP client could not be built.
    #[error("the upstream HTTP client could not be built")]
    HttpClient,
}

impl fmt::Debug for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// What went wrong with an upstream call. See [`Error::kind`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The connection failed (refused, reset, TLS, DNS).
    Transport,
    /// The upstream did not answer within the timeout.
    Timeout,
    /// The upstream answered with a non-success status that is not a
    /// definitive "invalid session"; see [`Error::items`] for its own codes.
    Status(StatusCode),
    /// The answer could not be decoded (bad JSON, wrong shape, too large).
    Decode,
    /// The upstream positively said the session token is invalid.
    InvalidSession,
    /// Too many upstream calls were in flight; this one was not sent.
    Overloaded,
    /// The request was not sent because its input was rejected locally.
    InvalidInput,
    /// The upstream does not offer this operation (e.g. a sign-out scope
    /// it cannot end).
    Unsupported,
    /// The upstream wants a recent sign-in for this operation (Webcom
    /// `TOKEN_TOO_OLD`): send the user through
    /// `{prefix}/signin/{provider}?prompt=login`.
    FreshAuthRequired,
    /// The session does not fit the session cookie's ceiling, even in
    /// chunks (SECURITY.md T-C4); a retry cannot help.
    SessionTooLarge,
}

/// One error entry as the upstream sent it (for Altogic: an item of
/// `errors`), with its own `code` and `message` kept.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct UpstreamErrorItem {
    /// Where the upstream says the error came from.
    #[serde(default)]
    pub origin: Option<String>,
    /// The upstream's machine-readable code, e.g. `invalid_session_token`.
    #[serde(default)]
    pub code: Option<String>,
    /// The upstream's human-readable message.
    #[serde(default)]
    pub message: Option<String>,
}

/// An upstream or run-time failure.
///
/// Opaque on purpose: match on [`kind()`](Error::kind), read the upstream's
/// own error entries with [`items()`](Error::items), and find the cause in
/// [`source()`](std::error::Error::source). Neither `Display` nor `Debug`
/// ever contains a token or a URL with a token in it.
pub struct Error {
    kind: ErrorKind,
    items: Vec<UpstreamErrorItem>,
    source: Option<BoxError>,
}

/// Constructors for upstream implementations, one per class of
/// SECURITY.md R1. Only [`invalid_session`](Error::invalid_session) says
/// anything about the session; the others keep the cookie.
impl Error {
    /// An error of this kind.
    pub fn new(kind: ErrorKind) -> Self {
        Self {
            kind,
            items: Vec::new(),
            source: None,
        }
    }

    /// The upstream could not be reached (refused, reset, TLS, DNS).
    pub fn transport(source: impl Into<BoxError>) -> Self {
        Self::new(ErrorKind::Transport).with_source(source)
    }

    /// The upstream did not answer in time.
    pub fn timeout() -> Self {
        Self::new(ErrorKind::Timeout)
    }

    /// The upstream is down or overloaded (`503 Service Unavailable`).
    pub fn unavailable() -> Self {
        Self::from_status(StatusCode::SERVICE_UNAVAILABLE)
    }

    /// The upstream asked to slow down (`429 Too Many Requests`).
    pub fn rate_limited() -> Self {
        Self::from_status(StatusCode::TOO_MANY_REQUESTS)
    }

    /// The upstream answered with this status and it is not a definitive
    /// "invalid session".
    pub fn from_status(status: StatusCode) -> Self {
        Self::new(ErrorKind::Status(status))
    }

    /// The upstream's answer could not be understood (bad JSON, wrong
    /// shape, too large, wrong media type).
    pub fn bad_answer(source: impl Into<BoxError>) -> Self {
        Self::new(ErrorKind::Decode).with_source(source)
    }

    /// The upstream definitively said the session is invalid.
    pub fn invalid_session() -> Self {
        Self::new(ErrorKind::InvalidSession)
    }

    /// The input was refused before anything was sent.
    pub fn invalid_input(source: impl Into<BoxError>) -> Self {
        Self::new(ErrorKind::InvalidInput).with_source(source)
    }

    /// The upstream does not offer this operation.
    pub fn unsupported() -> Self {
        Self::new(ErrorKind::Unsupported)
    }

    /// The operation needs a recent sign-in.
    pub fn fresh_auth_required() -> Self {
        Self::new(ErrorKind::FreshAuthRequired)
    }

    /// With the upstream's own error entries (code and message).
    #[must_use]
    pub fn with_items(mut self, items: Vec<UpstreamErrorItem>) -> Self {
        self.items = items;
        self
    }

    /// With the underlying cause (never put a token in it).
    #[must_use]
    pub fn with_source(mut self, source: impl Into<BoxError>) -> Self {
        self.source = Some(source.into());
        self
    }

    /// Maps a reqwest error, dropping its URL (it may carry a grant key).
    #[cfg(any(feature = "altogic", feature = "webcom", feature = "jwt"))]
    pub(crate) fn from_reqwest(err: reqwest::Error) -> Self {
        let kind = if err.is_timeout() {
            ErrorKind::Timeout
        } else if err.is_decode() || err.is_body() {
            ErrorKind::Decode
        } else {
            ErrorKind::Transport
        };
        Self::new(kind).with_source(err.without_url())
    }

    /// What kind of failure this is.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The upstream's own error entries (code and message), if it sent any.
    pub fn items(&self) -> &[UpstreamErrorItem] {
        &self.items
    }

    /// The first upstream error code, if any.
    pub fn code(&self) -> Option<&str> {
        self.items.iter().find_map(|item| item.code.as_deref())
    }

    /// The first upstream message, if any: suitable to show a user.
    pub fn message(&self) -> Option<&str> {
        self.items.iter().find_map(|item| item.message.as_deref())
    }

    /// The HTTP status the upstream answered with, if it answered.
    pub fn status(&self) -> Option<StatusCode> {
        match self.kind {
            ErrorKind::Status(status) => Some(status),
            _ => None,
        }
    }

    /// True when the upstream definitively said the session is invalid.
    pub fn is_invalid_session(&self) -> bool {
        self.kind == ErrorKind::InvalidSession
    }

    /// True for failures that say nothing about the session itself
    /// (timeouts, connection errors, 5xx, 429, garbage): retry later.
    pub fn is_transient(&self) -> bool {
        match self.kind {
            ErrorKind::Transport
            | ErrorKind::Timeout
            | ErrorKind::Decode
            | ErrorKind::Overloaded => true,
            ErrorKind::Status(status) => {
                status.is_server_error()
                    || status == StatusCode::TOO_MANY_REQUESTS
                    || status == StatusCode::REQUEST_TIMEOUT
            }
            ErrorKind::InvalidSession
            | ErrorKind::InvalidInput
            | ErrorKind::Unsupported
            | ErrorKind::FreshAuthRequired
            | ErrorKind::SessionTooLarge => false,
        }
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Error")
            .field("kind", &self.kind)
            .field("items", &self.items)
            .field("source", &self.source)
            .finish()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            ErrorKind::Transport => f.write_str("could not reach the auth upstream")?,
            ErrorKind::Timeout => f.write_str("the auth upstream timed out")?,
            ErrorKind::Status(status) => write!(f, "the auth upstream answered {status}")?,
            ErrorKind::Decode => f.write_str("the auth upstream's answer could not be decoded")?,
            ErrorKind::InvalidSession => f.write_str("the session is invalid")?,
            ErrorKind::Overloaded => f.write_str("too many auth upstream calls in flight")?,
            ErrorKind::InvalidInput => f.write_str("invalid input")?,
            ErrorKind::Unsupported => f.write_str("the auth upstream does not offer this")?,
            ErrorKind::FreshAuthRequired => f.write_str("a recent sign-in is required")?,
            ErrorKind::SessionTooLarge => {
                f.write_str("the session does not fit the session cookie")?;
            }
        }
        if let Some(code) = self.code() {
            write!(f, " ({code})")?;
        }
        if let Some(message) = self.message() {
            write!(f, ": {message}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transient_classification_follows_r1() {
        let cases = [
            (ErrorKind::Timeout, true),
            (ErrorKind::Transport, true),
            (ErrorKind::Decode, true),
            (ErrorKind::Overloaded, true),
            (ErrorKind::Status(StatusCode::INTERNAL_SERVER_ERROR), true),
            (ErrorKind::Status(StatusCode::TOO_MANY_REQUESTS), true),
            (ErrorKind::Status(StatusCode::BAD_REQUEST), false),
            (ErrorKind::InvalidSession, false),
        ];
        for (kind, transient) in cases {
            assert_eq!(Error::new(kind).is_transient(), transient, "{kind:?}");
        }
    }

    #[test]
    fn display_is_lowercase_and_keeps_upstream_code() {
        let err = Error::new(ErrorKind::Status(StatusCode::BAD_REQUEST)).with_items(vec![
            UpstreamErrorItem {
                origin: None,
                code: Some("email_not_unique".into()),
                message: Some("Email exists".into()),
            },
        ]);
        assert_eq!(
            err.to_string(),
            "the auth upstream answered 400 Bad Request (email_not_unique): Email exists"
        );
    }
}
