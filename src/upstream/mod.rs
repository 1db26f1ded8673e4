//! The upstream seam: the small neutral trait the layer needs, and the
//! neutral [`User`], [`SessionToken`] and [`Grant`] types.
//!
//! Each hosted auth service has a typed client (see [`crate::altogic`]) that
//! implements [`Upstream`] and also exposes the service's own operations.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::time::SystemTime;

use serde::Serialize;

use crate::error::Error;
use crate::events::{FlowRejection, SignInMethod};

/// A boxed, sendable future, as returned by [`Upstream`] methods.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The longest session token authgate accepts, in bytes as stored in the
/// cookie.
///
/// A cookie whose name and value exceed 4096 bytes is dropped by browsers,
/// so longer tokens could never round-trip (SECURITY.md T-C4).
pub const MAX_TOKEN_LEN: usize = 4000;

/// An upstream session token. Its `Debug` output is redacted.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct SessionToken(Box<str>);

impl SessionToken {
    /// Wraps a token; `None` if it is empty, holds control characters, or
    /// would not fit a cookie: longer than [`MAX_TOKEN_LEN`] as stored in
    /// the cookie (tokens outside `[A-Za-z0-9._-]` are stored base64url,
    /// a third longer). A browser silently drops a cookie over 4096 bytes,
    /// which would loop the user back to sign-in; refusing the token makes
    /// the sign-in fail with a clear error instead (SECURITY.md T-C4).
    pub fn new(token: impl Into<String>) -> Option<Self> {
        let token = token.into();
        let plain = token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        let stored_len = if plain {
            token.len()
        } else {
            1 + token.len().div_ceil(3) * 4
        };
        let valid = !token.is_empty()
            && stored_len <= MAX_TOKEN_LEN
            && !token.bytes().any(|b| b.is_ascii_control());
        valid.then(|| Self(token.into_boxed_str()))
    }

    /// The token itself, to send upstream. Never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SessionToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SessionToken(<redacted>)")
    }
}

/// A short-lived secret handed over by a landing (a password-reset key).
/// Its `Debug` output is redacted.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Box<str>);

impl Secret {
    /// Wraps a secret string.
    pub fn new(secret: impl Into<String>) -> Self {
        Self(secret.into().into_boxed_str())
    }

    /// The secret itself. Never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// The upstream's whole user object, kept as its JSON text: cached users
/// stay small (parsing it into a `serde_json::Value` tree would double a
/// cached session's memory), and nothing the upstream sent is lost.
#[derive(Clone, Serialize)]
#[serde(transparent)]
pub struct RawJson(Box<serde_json::value::RawValue>);

impl RawJson {
    /// Wraps a JSON value.
    pub fn new(value: &serde_json::Value) -> Self {
        serde_json::value::to_raw_value(value).map_or_else(|_| Self::default(), Self)
    }

    /// The JSON text.
    pub fn as_str(&self) -> &str {
        self.0.get()
    }

    /// Parses the whole object.
    pub fn to_value(&self) -> serde_json::Value {
        serde_json::from_str(self.0.get()).unwrap_or(serde_json::Value::Null)
    }

    /// One field of the object, parsed.
    pub fn get(&self, key: &str) -> Option<serde_json::Value> {
        match self.to_value() {
            serde_json::Value::Object(mut map) => map.remove(key),
            _ => None,
        }
    }

    /// Deserializes the object into your own type (custom user fields).
    pub fn deserialize<T: serde::de::DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_str(self.0.get())
    }
}

impl Default for RawJson {
    fn default() -> Self {
        Self(serde_json::value::RawValue::NULL.to_owned())
    }
}

impl PartialEq for RawJson {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl fmt::Debug for RawJson {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The neutral user every upstream maps to. `raw` keeps the upstream's
/// whole object, so nothing it sends is lost.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[non_exhaustive]
pub struct User {
    /// The upstream's user id.
    pub id: String,
    /// E-mail address, if any.
    pub email: Option<String>,
    /// Phone number, if any.
    pub phone: Option<String>,
    /// Display name, if any.
    pub name: Option<String>,
    /// Picture URL, if any.
    pub picture: Option<String>,
    /// The identity provider (e.g. `Altogic`, `Google`), if known.
    pub provider: Option<String>,
    /// Whether the e-mail address is verified, if the upstream says.
    pub email_verified: Option<bool>,
    /// Groups or roles, if any.
    pub groups: Vec<String>,
    /// Organisation id, if the upstream has one.
    pub org: Option<String>,
    /// The upstream's whole user object.
    pub raw: RawJson,
}

impl User {
    /// Builds a user from an id and the upstream's raw object; the other
    /// fields start empty.
    pub fn new(id: impl Into<String>, raw: serde_json::Value) -> Self {
        Self {
            id: id.into(),
            raw: RawJson::new(&raw),
            ..Self::default()
        }
    }

    /// The best name to show: the name, else the e-mail, else the phone,
    /// else the id.
    pub fn display_name(&self) -> &str {
        self.name
            .as_deref()
            .filter(|n| !n.is_empty())
            .or(self.email.as_deref())
            .or(self.phone.as_deref())
            .unwrap_or(&self.id)
    }

    /// An estimate of the bytes this user takes in the cache.
    pub(crate) fn weight(&self) -> u32 {
        let fields = [
            &self.email,
            &self.phone,
            &self.name,
            &self.picture,
            &self.provider,
            &self.org,
        ];
        let strings: usize = fields
            .iter()
            .map(|f| f.as_ref().map_or(0, String::len))
            .sum::<usize>()
            + self.id.len()
            + self.groups.iter().map(String::len).sum::<usize>();
        let raw = self.raw.as_str().len();
        u32::try_from(strings + raw + 256).unwrap_or(u32::MAX)
    }
}

/// A session handed out by the upstream (sign-in, sign-up, grant exchange).
/// Turn it into a cookie with [`Auth::sign_in`](crate::Auth::sign_in).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Grant {
    /// The new session token.
    pub token: SessionToken,
    /// The user, when the upstream returned it with the session.
    pub user: Option<User>,
    /// When the session ends, if the upstream says.
    pub expires_at: Option<SystemTime>,
    /// How the user signed in (for [auth events](crate::events)).
    pub method: SignInMethod,
}

impl Grant {
    /// A grant for a session token.
    pub fn new(token: SessionToken, method: SignInMethod) -> Self {
        Self {
            token,
            user: None,
            expires_at: None,
            method,
        }
    }

    /// With the user the upstream returned.
    #[must_use]
    pub fn with_user(mut self, user: User) -> Self {
        self.user = Some(user);
        self
    }

    /// With the session's end.
    #[must_use]
    pub fn with_expires_at(mut self, at: SystemTime) -> Self {
        self.expires_at = Some(at);
        self
    }
}

/// The answer to "who owns this token?".
#[derive(Debug, Clone)]
#[allow(clippy::large_enum_variant)] // made once per upstream call, never stored
pub enum Lookup {
    /// The token is valid and belongs to this user.
    Valid {
        /// The user.
        user: User,
        /// When the session ends, if the upstream says.
        expires_at: Option<SystemTime>,
    },
    /// The upstream definitively said the token is invalid.
    Invalid,
}

/// Which sessions a sign-out ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SignOutScope {
    /// Only this browser's session.
    #[default]
    This,
    /// Every session of the user.
    All,
    /// Every session of the user except this browser's.
    Others,
}

impl SignOutScope {
    /// Parses `this`, `all` or `others`.
    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "this" | "" => Some(Self::This),
            "all" => Some(Self::All),
            "others" => Some(Self::Others),
            _ => None,
        }
    }
}

/// The query of a callback request, parsed once, with duplicate names kept
/// so an upstream can reject them.
#[derive(Clone, Default)]
pub struct CallbackParams {
    pairs: Vec<(String, String)>,
    user_agent: Option<String>,
}

impl CallbackParams {
    /// Parses a raw query string.
    pub fn parse(query: &str) -> Self {
        Self {
            pairs: url::form_urlencoded::parse(query.as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
            user_agent: None,
        }
    }

    /// With the browser's `User-Agent`, for upstreams that record the
    /// device of the session they create.
    #[must_use]
    pub fn with_user_agent(mut self, user_agent: Option<&str>) -> Self {
        self.user_agent = user_agent.map(str::to_owned);
        self
    }

    /// The browser's `User-Agent`, if the layer passed it on.
    pub fn user_agent(&self) -> Option<&str> {
        self.user_agent.as_deref()
    }

    /// The value of `name` if it appears exactly once; `Err(())` if it
    /// appears more than once.
    #[allow(clippy::result_unit_err)]
    pub fn single(&self, name: &str) -> Result<Option<&str>, ()> {
        let mut found = None;
        for (key, value) in &self.pairs {
            if key == name {
                if found.is_some() {
                    return Err(());
                }
                found = Some(value.as_str());
            }
        }
        Ok(found)
    }

    /// Whether any parameter name appears more than once.
    pub fn has_duplicates(&self) -> bool {
        self.pairs
            .iter()
            .enumerate()
            .any(|(i, (k, _))| self.pairs[..i].iter().any(|(k2, _)| k2 == k))
    }
}

impl fmt::Debug for CallbackParams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Values are tokens: print names only.
        f.debug_list()
            .entries(self.pairs.iter().map(|(k, _)| k))
            .finish()
    }
}

/// The browser-bound record of a sign-in in flight (kept in the encrypted
/// flow cookie).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FlowRecord {
    /// The provider the flow was started for.
    pub provider: String,
    /// Where to go after signing in (validated again at use).
    pub return_to: String,
}

/// What a callback landing amounts to.
#[derive(Debug)]
#[non_exhaustive]
#[allow(clippy::large_enum_variant)] // made once per callback, never stored
pub enum CallbackOutcome {
    /// A session was granted ([`Grant::method`] says how).
    SignedIn(Grant),
    /// A password-reset landing: the key to reset with.
    PasswordReset(Secret),
    /// An e-mail change was confirmed.
    EmailChanged,
    /// The flow failed; the message is shown (escaped) to the user.
    Failed {
        /// The HTTP status of the error page.
        status: http::StatusCode,
        /// A human-readable message.
        message: String,
        /// Set when authgate (not the upstream) refused the landing.
        rejection: Option<FlowRejection>,
    },
}

/// The operations the layer needs from a hosted auth service.
///
/// Implemented by [`altogic::Client`](crate::altogic::Client); implement it
/// for any other upstream. Methods return [`BoxFuture`] so the layer can
/// hold an `Arc<dyn Upstream>`.
pub trait Upstream: Send + Sync + 'static {
    /// Resolves a session token to its user. Return `Ok(Lookup::Invalid)`
    /// only on a definitive "this token is invalid"; everything else that is
    /// not a user is an `Err` and keeps the cookie.
    fn lookup<'a>(&'a self, token: &'a SessionToken) -> BoxFuture<'a, Result<Lookup, Error>>;

    /// The OAuth providers this upstream can start a sign-in with.
    fn providers(&self) -> &[&str];

    /// The URL to send the browser to for a provider sign-in.
    fn sign_in_url(&self, provider: &str, flow: &FlowRecord) -> Result<url::Url, Error>;

    /// Whether a landing comes from a link in an e-mail (a magic link, an
    /// address confirmation) that should be confirmed by a click before it
    /// is exchanged (SECURITY.md T-B6.4): mail scanners open such links, and
    /// must neither spend the grant nor receive a session. Only well-formed,
    /// successful landings qualify; the rest go straight to
    /// [`complete_callback`](Self::complete_callback), which refuses them.
    /// Default: none.
    fn is_email_link(&self, params: &CallbackParams) -> bool {
        let _ = params;
        false
    }

    /// Completes a callback landing (never cached, never coalesced).
    fn complete_callback<'a>(
        &'a self,
        params: &'a CallbackParams,
        flow: Option<&'a FlowRecord>,
    ) -> BoxFuture<'a, Result<CallbackOutcome, Error>>;

    /// Ends sessions upstream.
    fn sign_out<'a>(
        &'a self,
        token: &'a SessionToken,
        scope: SignOutScope,
    ) -> BoxFuture<'a, Result<(), Error>>;

    /// Sets a new password with a password-reset key.
    fn reset_password<'a>(
        &'a self,
        key: &'a Secret,
        new_password: &'a str,
    ) -> BoxFuture<'a, Result<(), Error>>;
}
