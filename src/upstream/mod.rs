//! The upstream seam: the neutral [`Upstream`] trait every hosted auth
//! service plugs in through, and the neutral types it speaks:
//! [`Capabilities`], [`Session`], [`Lookup`]/[`Valid`], [`Grant`], the
//! flow types ([`FlowId`], [`FlowRecord`], [`SignInRedirect`]) and
//! [`User`].
//!
//! Each hosted auth service has a typed client (the `altogic`, `webcom`
//! and `slashid` modules, behind features of the same names) that implements [`Upstream`]
//! and also exposes the service's own operations. An upstream can be written outside the crate
//! with the public API alone.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::time::SystemTime;

use serde::Serialize;
use url::Url;

use crate::error::Error;
use crate::events::{FlowRejection, SignInMethod};

#[cfg(feature = "jwt")]
pub(crate) mod jwt;
#[cfg(any(feature = "altogic", feature = "webcom", feature = "jwt"))]
pub(crate) mod wire;

/// A boxed, sendable future, as returned by [`Upstream`] methods.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// An upstream session token (the bearer credential: an Altogic or Webcom
/// session token, a SlashID JWT, an OpenID Connect access token). Its
/// `Debug` output is redacted.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct SessionToken(Box<str>);

impl SessionToken {
    /// Wraps a token; `None` if it is empty or holds control characters.
    /// Whether it fits a cookie is the session codec's question: a session
    /// over the cookie budget is split into chunks, and one over the
    /// configured ceiling fails the sign-in with a clear error
    /// ([`ErrorKind::SessionTooLarge`](crate::ErrorKind::SessionTooLarge),
    /// SECURITY.md T-C4).
    pub fn new(token: impl Into<String>) -> Option<Self> {
        let token = token.into();
        let valid = !token.is_empty() && !token.bytes().any(|b| b.is_ascii_control());
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
    /// Phone number, if any, in E.164 (`+33612345678`) when the upstream
    /// gives a number.
    pub phone: Option<String>,
    /// Display name, if any.
    pub name: Option<String>,
    /// Picture URL, if any.
    pub picture: Option<String>,
    /// The identity provider (e.g. `Altogic`, `Google`), if known.
    pub provider: Option<String>,
    /// Whether the e-mail address is verified, if the upstream says.
    pub email_verified: Option<bool>,
    /// Groups or roles, if any (SlashID: the groups claim), which
    /// [`RequireGroup`](crate::RequireGroup) checks.
    pub groups: Vec<String>,
    /// Organisation id, if the upstream has one.
    pub org: Option<String>,
    /// A guest or anonymous user (Webcom guests, SlashID anonymous
    /// persons).
    pub anonymous: bool,
    /// When the user last authenticated at the provider, in seconds since
    /// the Unix epoch (OpenID Connect Core 1.0 §2 `auth_time`), if the
    /// upstream says. See [`User::authenticated_within`].
    pub auth_time: Option<u64>,
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

    /// Whether the user authenticated at the provider no longer than
    /// `max_age` ago ([`auth_time`](Self::auth_time)); `false` when the
    /// upstream did not say. A page that wants a recent sign-in sends an
    /// older session to `{prefix}/signin/{provider}?prompt=login`.
    pub fn authenticated_within(&self, max_age: std::time::Duration) -> bool {
        let Some(auth_time) = self.auth_time else {
            return false;
        };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        now.saturating_sub(auth_time) <= max_age.as_secs()
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

/// One upstream session, whatever its cookie looks like: the bearer token
/// and, for upstreams that hand out more (OpenID Connect), the ID token,
/// the refresh token and the token's expiry. `Debug` is redacted.
///
/// With [`SessionStorage::Plain`] only [`token`](Self::token) is kept in
/// the cookie; [`SessionStorage::Sealed`] keeps all of it, encrypted.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Session {
    /// The bearer token sent upstream.
    pub token: SessionToken,
    /// The OpenID Connect ID token (claims, `id_token_hint`), if any.
    pub id_token: Option<Secret>,
    /// The refresh token, if any.
    pub refresh_token: Option<Secret>,
    /// When [`token`](Self::token) expires, if the upstream says.
    pub expires_at: Option<SystemTime>,
}

impl Session {
    /// A session of one bearer token.
    pub fn new(token: SessionToken) -> Self {
        Self {
            token,
            id_token: None,
            refresh_token: None,
            expires_at: None,
        }
    }

    /// With the token's expiry.
    #[must_use]
    pub fn with_expires_at(mut self, at: SystemTime) -> Self {
        self.expires_at = Some(at);
        self
    }

    /// With an ID token.
    #[must_use]
    pub fn with_id_token(mut self, id_token: Secret) -> Self {
        self.id_token = Some(id_token);
        self
    }

    /// With a refresh token.
    #[must_use]
    pub fn with_refresh_token(mut self, refresh_token: Secret) -> Self {
        self.refresh_token = Some(refresh_token);
        self
    }
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("token", &self.token)
            .field("id_token", &self.id_token)
            .field("refresh_token", &self.refresh_token)
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// How the session cookie holds a [`Session`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum SessionStorage {
    /// The cookie value is the bearer token itself (base64url after a `~`
    /// when it has bytes outside `[A-Za-z0-9._-]`). For opaque tokens the
    /// upstream can look up (Altogic, Webcom).
    #[default]
    Plain,
    /// The whole [`Session`] encrypted with the app key (AES-256-GCM, the
    /// cookie name as associated data). For token sets (OpenID Connect).
    Sealed,
}

/// How long a signed-out session must stay refused locally.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Revocation {
    /// The upstream ends sessions itself and answers "invalid" afterwards:
    /// a local tombstone only has to outlive the cache (fresh TTL plus the
    /// stale window).
    #[default]
    Upstream,
    /// The upstream cannot end a session (or it is checked locally, like a
    /// JWT): a tombstone lasts until the session expires ([`Session::expires_at`],
    /// or for a plain cookie, which holds only the token, the
    /// [`Valid::expires_at`] of its last lookup or the [`Grant`]'s expiry at
    /// sign-in), else for the configured session max age.
    UntilExpiry,
}

/// What an upstream supports, declared once and read when the layer is
/// built.
///
/// ```
/// use authgate::upstream::{Capabilities, Revocation, SignOutScope};
///
/// let caps = Capabilities::new()
///     .with_providers(["google", "github"])
///     .with_sign_out_scopes(&[SignOutScope::This])
///     .with_revocation(Revocation::UntilExpiry);
/// assert!(caps.supports_sign_out(SignOutScope::This));
/// assert!(!caps.supports_sign_out(SignOutScope::All));
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Capabilities {
    /// How the session cookie holds a session.
    pub storage: SessionStorage,
    /// The names accepted by `{prefix}/signin/{provider}`.
    pub providers: Vec<Box<str>>,
    /// The sign-out scopes the upstream can end.
    pub sign_out: &'static [SignOutScope],
    /// How long a signed-out session stays refused locally.
    pub revocation: Revocation,
    /// Whether the upstream verifies back-channel logout tokens
    /// ([`Upstream::back_channel_logout`]).
    pub back_channel_logout: bool,
}

impl Default for Capabilities {
    fn default() -> Self {
        Self::new()
    }
}

impl Capabilities {
    /// Plain storage, no providers, sign-out of this session only,
    /// upstream revocation, no back-channel logout.
    pub fn new() -> Self {
        Self {
            storage: SessionStorage::Plain,
            providers: Vec::new(),
            sign_out: &[SignOutScope::This],
            revocation: Revocation::Upstream,
            back_channel_logout: false,
        }
    }

    /// With a session storage.
    #[must_use]
    pub fn with_storage(mut self, storage: SessionStorage) -> Self {
        self.storage = storage;
        self
    }

    /// With the providers a sign-in can start with.
    #[must_use]
    pub fn with_providers<I, P>(mut self, providers: I) -> Self
    where
        I: IntoIterator<Item = P>,
        P: Into<Box<str>>,
    {
        self.providers = providers.into_iter().map(Into::into).collect();
        self
    }

    /// With the sign-out scopes the upstream supports.
    #[must_use]
    pub fn with_sign_out_scopes(mut self, scopes: &'static [SignOutScope]) -> Self {
        self.sign_out = scopes;
        self
    }

    /// With a revocation horizon.
    #[must_use]
    pub fn with_revocation(mut self, revocation: Revocation) -> Self {
        self.revocation = revocation;
        self
    }

    /// With back-channel logout.
    #[must_use]
    pub fn with_back_channel_logout(mut self, supported: bool) -> Self {
        self.back_channel_logout = supported;
        self
    }

    /// Whether `provider` is one of [`providers`](Self::providers).
    pub fn has_provider(&self, provider: &str) -> bool {
        self.providers.iter().any(|p| &**p == provider)
    }

    /// Whether the upstream can end sessions in `scope`.
    pub fn supports_sign_out(&self, scope: SignOutScope) -> bool {
        self.sign_out.contains(&scope)
    }
}

/// A session handed out by the upstream (sign-in, sign-up, grant exchange).
/// Turn it into a cookie with [`Auth::sign_in`](crate::Auth::sign_in).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Grant {
    /// The new session.
    pub session: Session,
    /// The user, when the upstream returned it with the session.
    pub user: Option<User>,
    /// How the user signed in (for [auth events](crate::events)).
    pub method: SignInMethod,
    /// The upstream's id of the session, if it has one (OpenID Connect
    /// `sid`).
    pub session_id: Option<String>,
    /// When to ask the upstream about the new session first (a refresh
    /// point before the access token expires): the sign-in's cache entry
    /// is fresh until then at most. `None`: the configured cache TTL.
    pub recheck_at: Option<SystemTime>,
}

impl Grant {
    /// A grant for a session token.
    pub fn new(token: SessionToken, method: SignInMethod) -> Self {
        Self::from_session(Session::new(token), method)
    }

    /// A grant for a whole session.
    pub fn from_session(session: Session, method: SignInMethod) -> Self {
        Self {
            session,
            user: None,
            method,
            session_id: None,
            recheck_at: None,
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
        self.session.expires_at = Some(at);
        self
    }

    /// With the upstream's id of the session (OpenID Connect `sid`), which
    /// a back-channel logout names.
    #[must_use]
    pub fn with_session_id(mut self, id: impl Into<String>) -> Self {
        self.session_id = Some(id.into());
        self
    }

    /// With the time to ask the upstream about the session first (see
    /// [`Grant::recheck_at`]).
    #[must_use]
    pub fn with_recheck_at(mut self, at: SystemTime) -> Self {
        self.recheck_at = Some(at);
        self
    }

    /// The session token.
    pub fn token(&self) -> &SessionToken {
        &self.session.token
    }
}

/// The answer to "who owns this session?".
#[derive(Debug, Clone)]
#[allow(clippy::large_enum_variant)] // made once per upstream call, never stored
pub enum Lookup {
    /// The session is valid.
    Valid(Valid),
    /// The upstream definitively said the session is invalid.
    Invalid,
}

/// A valid session's user and the deadlines the upstream sets on it.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Valid {
    /// The user.
    pub user: User,
    /// When the session ends: a hard cap on the cache's fresh and stale
    /// deadlines (the cookie's `Max-Age` follows [`Session::expires_at`]),
    /// and the end of a [`Revocation::UntilExpiry`] tombstone. An answer
    /// whose end has already passed counts as [`Lookup::Invalid`].
    /// `None`: no known end.
    pub expires_at: Option<SystemTime>,
    /// When to ask the upstream again (a JWT's refresh point, a remote
    /// check interval). `None`: the configured cache TTL.
    pub recheck_at: Option<SystemTime>,
    /// A new session that replaces the request's (a refresh happened). The
    /// core seals it once and sets it on every waiting request; the old
    /// cookie stays served for a short successor window (SECURITY.md R10).
    pub rotated: Option<Session>,
    /// The upstream's session id (OpenID Connect `sid`): a back-channel
    /// logout naming it ends every cookie of this session here.
    pub session_id: Option<String>,
    /// When the session was issued (a JWT's `iat`; for a session that is
    /// refreshed, when the user signed in, kept across refreshes), for
    /// user-wide revocations ("every session of this user issued before
    /// T"). An upstream that cannot end sessions itself
    /// ([`Revocation::UntilExpiry`]) must give it, or a user-wide
    /// revocation (a back-channel logout by `sub`) only ends the sessions
    /// cached or in flight when it lands.
    pub issued_at: Option<SystemTime>,
}

impl Valid {
    /// A valid session of `user` with no deadlines of its own.
    pub fn new(user: User) -> Self {
        Self {
            user,
            expires_at: None,
            recheck_at: None,
            rotated: None,
            session_id: None,
            issued_at: None,
        }
    }

    /// With the session's end.
    #[must_use]
    pub fn with_expires_at(mut self, at: SystemTime) -> Self {
        self.expires_at = Some(at);
        self
    }

    /// With the time to ask again.
    #[must_use]
    pub fn with_recheck_at(mut self, at: SystemTime) -> Self {
        self.recheck_at = Some(at);
        self
    }

    /// With the session that replaces the request's.
    #[must_use]
    pub fn with_rotated(mut self, session: Session) -> Self {
        self.rotated = Some(session);
        self
    }

    /// With the upstream's session id.
    #[must_use]
    pub fn with_session_id(mut self, id: impl Into<String>) -> Self {
        self.session_id = Some(id.into());
        self
    }

    /// With the issue time.
    #[must_use]
    pub fn with_issued_at(mut self, at: SystemTime) -> Self {
        self.issued_at = Some(at);
        self
    }
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

    /// The query value: `this`, `all` or `others`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::This => "this",
            Self::All => "all",
            Self::Others => "others",
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

/// The id of one sign-in in flight: 32 bytes from the operating system's
/// random source, base64url (43 characters). It is the OAuth `state`
/// (RFC 6749 §10.12) wherever the upstream carries one back.
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct FlowId(Box<str>);

impl FlowId {
    /// A fresh id from the OS random source (the core makes one per
    /// sign-in; public for upstreams' own tests).
    pub fn generate() -> Self {
        use base64::Engine as _;
        use rand::RngCore as _;
        let mut bytes = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        Self(
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .encode(bytes)
                .into_boxed_str(),
        )
    }

    /// The id as sent in URLs (`state=`, `flow=`).
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `candidate` is this id, compared in constant time.
    pub(crate) fn matches(&self, candidate: &str) -> bool {
        use subtle::ConstantTimeEq as _;
        self.0.len() == candidate.len() && bool::from(self.0.as_bytes().ct_eq(candidate.as_bytes()))
    }
}

impl fmt::Debug for FlowId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FlowId(<redacted>)")
    }
}

/// How a callback landing finds its flow record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub enum Correlation {
    /// The upstream sends the flow id back as the OAuth `state` parameter.
    State,
    /// The sign-in URL's return address carries `?flow=<id>` and the
    /// upstream keeps it (Webcom's redirect mode).
    CallbackQuery,
    /// Nothing comes back (Altogic's fixed redirect URL): the core keeps a
    /// few flows per browser and picks the one whose provider matches the
    /// landing's exchange result, the most recent on a tie.
    Single,
}

/// The upstream's own per-flow data (a PKCE verifier, a nonce, a
/// `requestKey`), sealed in the flow cookie with the core's record and
/// handed back to [`Upstream::complete_callback`]. Its `Debug` output is
/// redacted.
#[derive(Clone, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct FlowData(Box<serde_json::value::RawValue>);

impl FlowData {
    /// No data.
    pub fn none() -> Self {
        Self(serde_json::value::RawValue::NULL.to_owned())
    }

    /// Data from any serializable value.
    pub fn new<T: Serialize>(value: &T) -> Result<Self, Error> {
        serde_json::value::to_raw_value(value)
            .map(Self)
            .map_err(Error::invalid_input)
    }

    /// The data, deserialized.
    pub fn get<T: serde::de::DeserializeOwned>(&self) -> Result<T, Error> {
        serde_json::from_str(self.0.get()).map_err(Error::bad_answer)
    }
}

impl Default for FlowData {
    fn default() -> Self {
        Self::none()
    }
}

impl fmt::Debug for FlowData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FlowData(<redacted>)")
    }
}

impl PartialEq for FlowData {
    fn eq(&self, other: &Self) -> bool {
        self.0.get() == other.0.get()
    }
}

/// Whether the user must sign in again at the provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Prompt {
    /// The provider decides (an existing provider session may be reused).
    #[default]
    Default,
    /// Fresh authentication (`?prompt=login` on the start route; OpenID
    /// Connect `prompt=login`): the answer to
    /// [`ErrorKind::FreshAuthRequired`](crate::ErrorKind::FreshAuthRequired).
    Login,
}

/// What [`Upstream::start_sign_in`] gets: the provider, the flow's id and
/// the app's callback URL.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct SignInStart<'a> {
    /// The provider, one of [`Capabilities::providers`].
    pub provider: &'a str,
    /// The flow's id: send it as `state` (or in the return address).
    pub flow: &'a FlowId,
    /// The app's callback URL ([`AuthConfig::callback_url`](crate::AuthConfig::callback_url)).
    pub callback_url: &'a Url,
    /// Whether the user must authenticate again.
    pub prompt: Prompt,
    /// The longest time since the user last authenticated at the provider
    /// that this sign-in accepts (`?max_age=` on the start route, whole
    /// seconds; OpenID Connect Core 1.0 §3.1.2.1 `max_age`). `None`: the
    /// provider decides.
    pub max_age: Option<std::time::Duration>,
}

impl<'a> SignInStart<'a> {
    /// A start for `provider` (for upstream implementations' own tests).
    pub fn new(provider: &'a str, flow: &'a FlowId, callback_url: &'a Url) -> Self {
        Self {
            provider,
            flow,
            callback_url,
            prompt: Prompt::Default,
            max_age: None,
        }
    }
}

/// Where to send the browser to sign in, and what to remember.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SignInRedirect {
    /// The upstream's (or provider's) sign-in URL.
    pub url: Url,
    /// How the callback will find this flow.
    pub correlation: Correlation,
    /// The upstream's own per-flow data.
    pub data: FlowData,
}

impl SignInRedirect {
    /// A redirect with no per-flow data.
    pub fn new(url: Url, correlation: Correlation) -> Self {
        Self {
            url,
            correlation,
            data: FlowData::none(),
        }
    }

    /// With per-flow data.
    #[must_use]
    pub fn with_data(mut self, data: FlowData) -> Self {
        self.data = data;
        self
    }
}

/// A sign-in in flight, sealed in its own flow cookie and checked by the
/// core (flow id in constant time, correlation, provider) before the
/// upstream sees the landing.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub struct FlowRecord {
    /// The provider the flow was started for.
    pub provider: String,
    /// Where to go after signing in (validated again at use).
    pub return_to: String,
    /// The flow's id.
    pub flow: FlowId,
    /// How the callback finds it.
    pub correlation: Correlation,
    /// The upstream's own data.
    pub data: FlowData,
    /// When the flow started, in seconds since the Unix epoch.
    pub started: u64,
}

impl FlowRecord {
    /// A record as the core makes it at a sign-in start (public for
    /// upstreams' own tests of [`Upstream::complete_callback`]).
    pub fn new(provider: &str, return_to: &str, flow: FlowId, redirect: SignInRedirect) -> Self {
        Self {
            provider: provider.to_owned(),
            return_to: return_to.to_owned(),
            flow,
            correlation: redirect.correlation,
            data: redirect.data,
            started: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        }
    }
}

/// What a sign-out amounts to. `Debug` shows a redirect's origin and path
/// only (its query may carry an `id_token_hint`).
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SignOutOutcome {
    /// Done; the browser goes to the validated `return_to`.
    Done,
    /// The browser must visit the upstream to finish (an OpenID Connect
    /// `end_session_endpoint`); it comes back to the `after` URL.
    Redirect(Url),
}

impl fmt::Debug for SignOutOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Done => f.write_str("Done"),
            Self::Redirect(url) => f
                .debug_tuple("Redirect")
                .field(&format_args!(
                    "{}{}",
                    url.origin().ascii_serialization(),
                    url.path()
                ))
                .finish(),
        }
    }
}

/// Whom a back-channel logout ends (OpenID Connect Back-Channel Logout
/// 1.0 §2.4: `sid`, `sub` or both).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SessionRevocation {
    /// The upstream's session id.
    pub sid: Option<String>,
    /// The user's id.
    pub sub: Option<String>,
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
    /// The flow failed.
    /// The page's title and way out follow `landing`, its message is
    /// fixed, chosen by authgate from `rejection`
    /// (SECURITY.md T-B1: a landing's text is whatever an attacker put in
    /// the URL); `message` goes to the log only.
    Failed {
        /// The HTTP status of the error page.
        status: http::StatusCode,
        /// The upstream's own text or the upstream implementation's
        /// explanation, for the log (capped, never shown).
        message: String,
        /// Why: picks the page's message and the
        /// [`FlowRejected`](crate::events::AuthEvent::FlowRejected) event's
        /// reason; `None` counts as
        /// [`UpstreamRefused`](FlowRejection::UpstreamRefused).
        rejection: Option<FlowRejection>,
        /// What kind of landing failed (its page's title and way out).
        landing: LandingKind,
    },
}

/// What a callback landing was, for the outcome of a failure: each kind
/// gets its own title and way out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum LandingKind {
    /// Not known (a landing too malformed to tell).
    #[default]
    Unknown,
    /// An OAuth or OpenID Connect sign-in.
    OAuth,
    /// A magic link from an e-mail.
    MagicLink,
    /// An address-confirmation link from an e-mail.
    EmailConfirmation,
    /// The confirmation of a new e-mail address.
    EmailChange,
    /// A password-reset link (see
    /// [`AuthConfig::with_reset_failure_page`](crate::AuthConfig::with_reset_failure_page)).
    PasswordReset,
}

/// The seam between authgate's core and a hosted auth service: the few
/// operations the layer needs. Each upstream's typed client implements it
/// (see the `altogic` module) and offers the service's other operations
/// itself.
///
/// The core owns every cookie (session, flow, reset), every cache entry and
/// every deadline; an upstream owns its wire protocol and an opaque
/// per-flow blob ([`FlowData`]). Methods return [`BoxFuture`] so the layer
/// holds one `Arc<dyn Upstream>`; they are reached only on cold events
/// (a cache miss, a sign-in, a sign-out), never on the warm path.
///
/// Report failures with [`Error`]'s constructors
/// ([`Error::unavailable`], [`Error::timeout`], [`Error::rate_limited`],
/// [`Error::bad_answer`], …): only `Ok(Lookup::Invalid)` signs a user
/// out; every `Err` keeps the cookie (SECURITY.md R1).
pub trait Upstream: Send + Sync + 'static {
    /// What this upstream supports; read once when the layer is built.
    fn capabilities(&self) -> Capabilities;

    /// Resolves a session to its user. Return `Ok(Lookup::Invalid)` only
    /// on a definitive "this session is invalid"; everything else that is
    /// not a user is an `Err` and keeps the cookie.
    fn lookup<'a>(&'a self, session: &'a Session) -> BoxFuture<'a, Result<Lookup, Error>>;

    /// Starts a sign-in with a provider: the URL to send the browser to,
    /// how the callback will find the flow, and the upstream's own data
    /// for it. The core has checked the provider against
    /// [`Capabilities::providers`].
    fn start_sign_in<'a>(
        &'a self,
        start: SignInStart<'a>,
    ) -> BoxFuture<'a, Result<SignInRedirect, Error>>;

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

    /// Completes a callback landing (never cached, never coalesced). `flow`
    /// is the record the core found and checked for this landing; `None`
    /// when the browser has no flow in flight (an e-mail link, or a
    /// landing nobody started here, which an OAuth landing must refuse).
    /// A [`Correlation::Single`] upstream names the provider that really
    /// signed in with [`SignInMethod::OAuth`]; the core then picks the
    /// browser's flow for that provider.
    fn complete_callback<'a>(
        &'a self,
        params: &'a CallbackParams,
        flow: Option<&'a FlowRecord>,
    ) -> BoxFuture<'a, Result<CallbackOutcome, Error>>;

    /// Ends sessions upstream. `scope` is one of
    /// [`Capabilities::sign_out`]; `after` is where the browser goes next
    /// (for a [`SignOutOutcome::Redirect`] back to the app).
    fn sign_out<'a>(
        &'a self,
        session: &'a Session,
        scope: SignOutScope,
        after: &'a Url,
    ) -> BoxFuture<'a, Result<SignOutOutcome, Error>>;

    /// Verifies a back-channel logout token (OpenID Connect Back-Channel
    /// Logout 1.0) and says whom it ends. Default: unsupported.
    fn back_channel_logout<'a>(
        &'a self,
        logout_token: &'a str,
    ) -> BoxFuture<'a, Result<SessionRevocation, Error>> {
        let _ = logout_token;
        Box::pin(std::future::ready(Err(Error::unsupported())))
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use super::User;

    #[test]
    fn authenticated_within_reads_auth_time_and_is_false_without_it() {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut user = User::new("u1", serde_json::json!({}));
        assert!(!user.authenticated_within(Duration::from_secs(3600)));
        user.auth_time = Some(now - 100);
        assert!(user.authenticated_within(Duration::from_secs(300)));
        assert!(!user.authenticated_within(Duration::from_secs(60)));
        // A clock skewed into the future counts as just now.
        user.auth_time = Some(now + 30);
        assert!(user.authenticated_within(Duration::ZERO));
    }
}
