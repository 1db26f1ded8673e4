//! The Orange Webcom client: every server-side operation of Webcom's
//! `Authentication` service, with Webcom's real wire protocol
//! (UPSTREAMS.md §2, the SDK's `Authentication` interface).
//!
//! One [`Client`] holds one shared `reqwest::Client` (timeouts, a body-size
//! cap, redirects off). Every call goes to `{baseUrl}/auth/v2/{appId}/…`
//! with the client-version parameter `c=n3.12.0` the Node SDK sends
//! (§2.1); the session token travels as `Authorization: Bearer`, per
//! request. Errors keep Webcom's own `code` and `message`
//! ([`Error::code`], [`Error::message`]); users keep Webcom's whole
//! `AuthenticationDetails` object (but its `extra`, which may hold a
//! provider's access token) in [`User::raw`].
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use authgate::webcom::{Client, Credentials, Provider};
//!
//! let webcom = Client::new("my-app")?;
//! let details = webcom
//!     .sign_in_with_credentials(Provider::Password, &Credentials::password("ada@example.com", "secret"))
//!     .await?;
//! let grant = details.into_grant();
//! // `auth.sign_in(grant)` in a handler turns it into the session cookie.
//! # let _ = grant;
//! # Ok(()) }
//! ```
//!
//! # What the layer does with it
//!
//! [`Client`] implements [`Upstream`], so it is what
//! [`AuthLayer::new`](crate::AuthLayer::new) takes:
//!
//! - **Lookup** is `GET /decode` with the cookie's token. The token's
//!   `expires` caps the cached user's freshness and stale window; a token
//!   past `expires` is refused without asking (as the SDK's expiry watcher
//!   does, §2.3). Only Webcom's `INVALID_TOKEN` on a 4xx clears the cookie
//!   (SECURITY.md R1); 5xx, 429, timeouts, refused connections and non-JSON
//!   answers keep it.
//! - **OAuth, redirect mode** (§2.5, SEAM.md §2.7): `{prefix}/signin/{provider}`
//!   draws a 64-character `requestKey`, sends `from` = base64url(SHA-256(requestKey))
//!   with `=` padding and `to` = the callback URL with `?flow=<flow id>`, and
//!   keeps `requestKey` in the sealed flow cookie. The callback's
//!   `__wcsession` is completed with `POST /session`.
//! - **OAuth, code mode**: for providers set up with
//!   [`ClientBuilder::with_code_mode_provider`], the start goes to the
//!   provider's own authorization URL with `state=<flow id>`; the callback's
//!   `code` and `state` are completed with `GET /{provider}/callback?mode=code`.
//! - **Sign-out** is local: Webcom has no revocation endpoint (§2.7), so the
//!   token stays valid upstream until its `expires`. The layer clears the
//!   cookie and tombstones the token until then
//!   ([`Revocation::UntilExpiry`]).
//!
//! A callback that names no flow this browser started is refused by the
//! core before this client sees it, and this client refuses one without a
//! flow record without any call (SECURITY.md T-B1).
//!
//! ```no_run
//! # fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use authgate::{AuthConfig, AuthLayer, webcom};
//!
//! let webcom = webcom::Client::builder(webcom::DEFAULT_BASE_URL, "my-app")
//!     .with_providers(["google", "github"])
//!     .build()?;
//! let config = AuthConfig::new("https://app.example")?;
//! let layer = AuthLayer::new(config, webcom.clone()); // `webcom` also serves the app's own calls
//! # let _ = layer;
//! # Ok(()) }
//! ```
//!
//! # What is not known
//!
//! None of UPSTREAMS.md §2 was checked against a live Webcom. In
//! particular: whether Webcom keeps the `?flow=` already in `to` when it
//! appends `__wcsession` (if it does not, every landing is refused as
//! having no flow, and nothing is exchanged); the HTTP status of each
//! error code (only `INVALID_TOKEN` on a 4xx is read as definitive);
//! the shape of `sendOtp`'s answer (a JSON string or an object with
//! `challenge` is accepted); how code mode's `redirect_uri` must be set up
//! at the provider; and whether `prompt=login` reaches the provider.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::{URL_SAFE, URL_SAFE_NO_PAD};
use http::{HeaderValue, Method, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use sha2::{Digest as _, Sha256};
use url::Url;

use crate::error::{ConfigError, Error, ErrorKind, UpstreamErrorItem};
use crate::events::{AuthEvent, AuthEvents, FlowRejection, SignInMethod};
use crate::upstream::wire::{Answer, send, strict_json};
use crate::upstream::{
    BoxFuture, CallbackOutcome, CallbackParams, Capabilities, Correlation, FlowData, FlowRecord,
    Grant, LandingKind, Lookup, Prompt, RawJson, Revocation, Secret, Session, SessionToken,
    SignInRedirect, SignInStart, SignOutOutcome, SignOutScope, Upstream, User, Valid,
};

/// Webcom's standard base URL (§2.1).
pub const DEFAULT_BASE_URL: &str = "https://io.datasync.orange.com";

/// The client version sent as `c=` on every call: the Node SDK's
/// (`n` + its version, §2.1).
pub const CLIENT_VERSION: &str = "n3.12.0";

/// The OAuth providers the Webcom `Authentication` docs list for
/// `signInWithOAuth` (the default of [`ClientBuilder::with_providers`]).
pub const OAUTH_PROVIDERS: &[&str] = &[
    "facebook",
    "google",
    "apple",
    "github",
    "gitlab",
    "orange",
    "mobileconnectOFR",
    "mobileconnectOJO",
    "mobileconnectOMG",
    "mobileconnectOMA",
    "mobileconnectOCI",
    "mobileconnectOEG",
    "mobileconnectOCD",
    "mobileconnectOBW",
    "mobileconnectOGN",
    "mobileconnectOTN",
    "mobileconnectOSN",
    "mobileconnectOGW",
    "mobileconnectOCM",
    "mobileconnectOLR",
    "mobileconnectOML",
    "mobileconnectONE",
    "mobileconnectOBF",
];

/// Webcom's code for a token it does not accept: the one definitive
/// "this session is gone" (§2.4, SECURITY.md R1).
const INVALID_TOKEN: &str = "INVALID_TOKEN";
/// Webcom's code for an operation that needs a recent sign-in (§2.4).
const TOKEN_TOO_OLD: &str = "TOKEN_TOO_OLD";

const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const DEFAULT_BODY_LIMIT: usize = 1024 * 1024;
/// The longest `__wcsession` or `code` sent upstream (SECURITY.md T-B3.5).
const MAX_LANDING_VALUE: usize = 4096;
/// `requestKey` length: the SDK draws 64 characters of base64url (§2.5).
const REQUEST_KEY_LEN: usize = 64;

/// The application id rule of the SDK's `WebcomApp` (§2.1):
/// `^[a-z0-9](?:[-a-z0-9]{0,38}[a-z0-9])?$`.
fn valid_app_id(id: &str) -> bool {
    let bytes = id.as_bytes();
    let inner = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    !bytes.is_empty()
        && bytes.len() <= 40
        && bytes.first().is_some_and(inner)
        && bytes.last().is_some_and(inner)
        && bytes.iter().all(|b| inner(b) || *b == b'-')
}

/// A Webcom-managed identity provider: `password` (e-mail identities) or
/// `phone` (phone identities, MSISDN without `+`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Provider {
    /// E-mail identities (`"password"`).
    Password,
    /// Phone identities (`"phone"`).
    Phone,
}

impl Provider {
    /// The wire name: `password` or `phone`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Password => "password",
            Self::Phone => "phone",
        }
    }
}

/// The credentials of [`Client::sign_in_with_credentials`]. `Debug` is
/// redacted.
#[derive(Clone, Copy)]
pub struct Credentials<'a> {
    /// The identity: an e-mail address, or an MSISDN without `+`.
    pub id: &'a str,
    /// The password, or the one-time password received.
    pub password: &'a str,
    /// The challenge [`Client::send_otp`] returned (phone sign-in).
    pub challenge: Option<&'a str>,
}

impl<'a> Credentials<'a> {
    /// An e-mail identity and its password.
    pub fn password(id: &'a str, password: &'a str) -> Self {
        Self {
            id,
            password,
            challenge: None,
        }
    }

    /// An identity, the challenge [`Client::send_otp`] returned, and the
    /// one-time password the user received.
    pub fn otp(id: &'a str, challenge: &'a str, otp: &'a str) -> Self {
        Self {
            id,
            password: otp,
            challenge: Some(challenge),
        }
    }
}

impl fmt::Debug for Credentials<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("id", &self.id)
            .field("password", &"<redacted>")
            .field("challenge", &self.challenge.map(|_| "<redacted>"))
            .finish()
    }
}

/// The message options of the calls that send a code (`template`,
/// `sender`, `locale`); sent as query parameters (§2.2).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Message {
    /// The message template defined in the Webcom console.
    pub template: Option<String>,
    /// The SMS sender implementation (phone identities).
    pub sender: Option<String>,
    /// The locale, `ll` or `ll_CC`.
    pub locale: Option<String>,
}

impl Message {
    /// No options: Webcom's defaults.
    pub fn new() -> Self {
        Self::default()
    }

    /// With a template.
    #[must_use]
    pub fn with_template(mut self, template: &str) -> Self {
        self.template = Some(template.to_owned());
        self
    }

    /// With an SMS sender.
    #[must_use]
    pub fn with_sender(mut self, sender: &str) -> Self {
        self.sender = Some(sender.to_owned());
        self
    }

    /// With a locale.
    #[must_use]
    pub fn with_locale(mut self, locale: &str) -> Self {
        self.locale = Some(locale.to_owned());
        self
    }

    fn query(&self) -> Vec<(&str, &str)> {
        [
            ("template", &self.template),
            ("sender", &self.sender),
            ("locale", &self.locale),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.as_deref().map(|v| (k, v)))
        .collect()
    }
}

/// A new identity for [`Client::add_identity`]. `Debug` is redacted.
#[derive(Clone, Default)]
#[non_exhaustive]
pub struct NewIdentity {
    /// An e-mail address, or an MSISDN without `+`.
    pub id: String,
    /// The password (e-mail identities).
    pub password: Option<String>,
    /// A display name (returned as `providerProfile.displayName`).
    pub display_name: Option<String>,
    /// A profile object (returned in `providerProfile`).
    pub profile: Option<Value>,
}

impl NewIdentity {
    /// An e-mail identity with its password.
    pub fn email(email: &str, password: &str) -> Self {
        Self {
            id: email.to_owned(),
            password: Some(password.to_owned()),
            ..Self::default()
        }
    }

    /// A phone identity (MSISDN without `+`).
    pub fn phone(msisdn: &str) -> Self {
        Self {
            id: msisdn.to_owned(),
            ..Self::default()
        }
    }

    /// With a display name.
    #[must_use]
    pub fn with_display_name(mut self, name: &str) -> Self {
        self.display_name = Some(name.to_owned());
        self
    }

    /// With a profile object.
    #[must_use]
    pub fn with_profile(mut self, profile: Value) -> Self {
        self.profile = Some(profile);
        self
    }

    fn body(&self) -> Value {
        let mut body = Map::new();
        body.insert("id".into(), Value::String(self.id.clone()));
        if let Some(password) = &self.password {
            body.insert("password".into(), Value::String(password.clone()));
        }
        if let Some(name) = &self.display_name {
            body.insert("displayName".into(), Value::String(name.clone()));
        }
        if let Some(profile) = &self.profile {
            body.insert("profile".into(), profile.clone());
        }
        Value::Object(body)
    }
}

impl fmt::Debug for NewIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NewIdentity")
            .field("id", &self.id)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("display_name", &self.display_name)
            .finish_non_exhaustive()
    }
}

/// An identity just created by [`Client::add_identity`], waiting for its
/// verification. `Debug` is redacted.
#[derive(Clone)]
#[non_exhaustive]
pub struct AddedIdentity {
    /// For a phone identity, the challenge to verify it with
    /// ([`Verification::Otp`]): Webcom's `verificationPending`.
    pub verification_pending: Option<Secret>,
    /// Webcom's whole answer.
    pub raw: Value,
}

impl fmt::Debug for AddedIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AddedIdentity")
            .field("verification_pending", &self.verification_pending)
            .finish_non_exhaustive()
    }
}

/// How [`Client::verify_identity`] proves an identity. `Debug` is redacted.
#[derive(Clone, Copy)]
#[non_exhaustive]
pub enum Verification<'a> {
    /// The token sent to an e-mail identity (`{"token"}`).
    EmailToken(&'a str),
    /// A phone identity's challenge (from [`AddedIdentity::verification_pending`]
    /// or [`Client::send_verification_code`]) and the one-time password
    /// received (`{"challenge","password"}`).
    Otp {
        /// The challenge.
        challenge: &'a str,
        /// The one-time password.
        password: &'a str,
    },
}

impl fmt::Debug for Verification<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::EmailToken(_) => f.write_str("EmailToken(<redacted>)"),
            Self::Otp { .. } => f.write_str("Otp(<redacted>)"),
        }
    }
}

/// The identity a signed-in user is signed in with: the Webcom account
/// (`uid`) and the identity (`provider`, `providerUid`), read from the
/// user's `raw` object. Identity and account calls need it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Identity {
    /// The Webcom account id.
    pub uid: String,
    /// The identity's provider (`password`, `phone`, `google`, …).
    pub provider: String,
    /// The identity's id at its provider.
    pub provider_uid: String,
}

impl Identity {
    /// The identity of a user this client resolved (its `raw` object holds
    /// `uid`, `provider` and `providerUid`); a decode error otherwise.
    pub fn of(user: &User) -> Result<Self, Error> {
        let field = |key: &str| {
            user.raw
                .get(key)
                .and_then(|v| v.as_str().map(str::to_owned))
                .filter(|v| !v.is_empty())
                .ok_or_else(|| Error::bad_answer("not a Webcom user"))
        };
        Ok(Self {
            uid: field("uid")?,
            provider: field("provider")?,
            provider_uid: field("providerUid")?,
        })
    }
}

/// A Webcom account, as [`Client::account_details`] reads it.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct AccountDetails {
    /// The identities of the account, by provider (the SDK's
    /// `identities: {provider: [providerUid]}`, from the wire's
    /// `providers: {provider: {providerUid: …}}`).
    pub identities: BTreeMap<String, Vec<String>>,
    /// When the account was created (`createdOn`, ms since the Unix epoch).
    pub created_on: Option<SystemTime>,
    /// Webcom's whole answer.
    pub raw: Value,
}

/// A successful authentication: the SDK's `AuthenticationDetails` with its
/// token. Turn it into a cookie with [`into_grant`](Self::into_grant) and
/// [`Auth::sign_in`](crate::Auth::sign_in). `Debug` is redacted.
#[derive(Clone)]
#[non_exhaustive]
pub struct AuthDetails {
    /// The user.
    pub user: User,
    /// The Webcom token (`webcomAuthToken`).
    pub token: SessionToken,
    /// When the token expires (`expires`, seconds since the Unix epoch).
    pub expires_at: Option<SystemTime>,
    method: SignInMethod,
}

impl AuthDetails {
    /// The session as a [`Grant`] (its expiry caps the cookie's `Max-Age`).
    pub fn grant(&self) -> Grant {
        self.clone().into_grant()
    }

    /// Consumes the details into a [`Grant`].
    pub fn into_grant(self) -> Grant {
        let mut session = Session::new(self.token);
        if let Some(at) = self.expires_at {
            session = session.with_expires_at(at);
        }
        Grant::from_session(session, self.method).with_user(self.user)
    }

    /// How this sign-in happened.
    pub fn method(&self) -> &SignInMethod {
        &self.method
    }
}

impl fmt::Debug for AuthDetails {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthDetails")
            .field("user", &self.user.id)
            .field("token", &self.token)
            .field("expires_at", &self.expires_at)
            .field("method", &self.method)
            .finish()
    }
}

/// An RSA private key registered in the Webcom console as a server key,
/// for [`Client::sign_in_with_server_key`]. `Debug` is redacted.
#[derive(Clone)]
pub struct ServerKey {
    name: String,
    key: jsonwebtoken::EncodingKey,
}

impl ServerKey {
    /// The key named `name` in the console, from its private key in PEM
    /// (PKCS#1 `RSA PRIVATE KEY` or PKCS#8 `PRIVATE KEY`).
    pub fn from_pem(name: &str, pem: &[u8]) -> Result<Self, ConfigError> {
        let key =
            jsonwebtoken::EncodingKey::from_rsa_pem(pem).map_err(|_| ConfigError::InvalidUrl {
                what: "webcom server key (RSA private key in PEM)",
                value: "<redacted>".into(),
            })?;
        Ok(Self {
            name: name.to_owned(),
            key,
        })
    }

    /// The key's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The signed assertion `POST /server/signin` takes (§2.2): a JWT with
    /// header `{"alg":"RS512","typ":"JWT"}` and payload
    /// `{"id":<name>,"timestamp":<ms since the Unix epoch>}`.
    fn assertion(&self, now: SystemTime) -> Result<String, Error> {
        #[derive(Serialize)]
        struct Claims<'a> {
            id: &'a str,
            timestamp: u64,
        }
        let timestamp = now
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS512);
        let claims = Claims {
            id: &self.name,
            timestamp,
        };
        jsonwebtoken::encode(&header, &claims, &self.key).map_err(Error::invalid_input)
    }
}

impl fmt::Debug for ServerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerKey")
            .field("name", &self.name)
            .field("key", &"<redacted>")
            .finish()
    }
}

/// A client for one Webcom application. Cheap to clone.
///
/// See the [module docs](self) for an example.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
    /// The signed-in session the next operations run in (the SDK's
    /// `useCurrentContextForNextAuthOperation`).
    context: Option<SessionToken>,
}

struct Inner {
    http: reqwest::Client,
    /// `{baseUrl}/auth/v2/{appId}`.
    route: Url,
    app_id: String,
    body_limit: usize,
    timeout: Duration,
    providers: Vec<Box<str>>,
    /// Code-mode providers and their authorization URLs.
    code_mode: BTreeMap<String, Url>,
    scopes: BTreeMap<String, String>,
    events: AuthEvents,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("webcom::Client")
            .field("route", &self.inner.route.as_str())
            .field("providers", &self.inner.providers)
            .field("context", &self.context)
            .finish_non_exhaustive()
    }
}

/// Builds a [`Client`] with non-default settings.
#[must_use]
pub struct ClientBuilder {
    base_url: String,
    app_id: String,
    timeout: Duration,
    connect_timeout: Duration,
    body_limit: usize,
    http: Option<reqwest::Client>,
    providers: Vec<Box<str>>,
    code_mode: Vec<(String, String)>,
    scopes: BTreeMap<String, String>,
    events: AuthEvents,
}

impl fmt::Debug for ClientBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientBuilder")
            .field("base_url", &self.base_url)
            .field("app_id", &self.app_id)
            .field("timeout", &self.timeout)
            .field("providers", &self.providers)
            .finish_non_exhaustive()
    }
}

impl ClientBuilder {
    /// Total timeout of one upstream call. Default: 5 s.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Connect timeout. Default: 2 s.
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// The most bytes read from one answer. Default: 1 MiB.
    pub fn with_body_limit(mut self, bytes: usize) -> Self {
        self.body_limit = bytes;
        self
    }

    /// Shares an existing `reqwest::Client`. It must not follow redirects
    /// (`redirect::Policy::none()`). The total timeout set here still
    /// applies to every request.
    pub fn with_http_client(mut self, client: reqwest::Client) -> Self {
        self.http = Some(client);
        self
    }

    /// The OAuth providers `{prefix}/signin/{provider}` accepts (those
    /// enabled in the Webcom console). Default: [`OAUTH_PROVIDERS`].
    pub fn with_providers<I, P>(mut self, providers: I) -> Self
    where
        I: IntoIterator<Item = P>,
        P: Into<Box<str>>,
    {
        self.providers = providers.into_iter().map(Into::into).collect();
        self
    }

    /// The OAuth `scope` sent for `provider` in redirect mode (§2.5: a
    /// caller option). Default: none, the provider's minimal scope.
    pub fn with_scope(mut self, provider: &str, scope: &str) -> Self {
        self.scopes.insert(provider.to_owned(), scope.to_owned());
        self
    }

    /// Signs in with `provider` in code mode (§2.5): the start sends the
    /// browser to `authorize_url` (the provider's authorization endpoint
    /// with your `client_id`, `redirect_uri` = the app's callback URL and
    /// `scope`) plus `state=<flow id>`; the callback's `code` and `state`
    /// go to `GET /{provider}/callback?mode=code`. The provider is added to
    /// the accepted providers.
    pub fn with_code_mode_provider(mut self, provider: &str, authorize_url: &str) -> Self {
        self.code_mode
            .push((provider.to_owned(), authorize_url.to_owned()));
        self
    }

    /// Where to report password changes made through this client (see
    /// [`crate::events`]). Default: `tracing` only.
    pub fn with_events(mut self, events: AuthEvents) -> Self {
        self.events = events;
        self
    }

    /// Builds the client.
    pub fn build(self) -> Result<Client, ConfigError> {
        let invalid = |what: &'static str, value: &str| ConfigError::InvalidUrl {
            what,
            value: value.to_owned(),
        };
        if !valid_app_id(&self.app_id) {
            return Err(invalid("webcom application id", &self.app_id));
        }
        let trimmed = self.base_url.trim_end_matches('/');
        let mut route = Url::parse(trimmed).map_err(|_| invalid("webcom base URL", trimmed))?;
        if !matches!(route.scheme(), "http" | "https")
            || route.host().is_none()
            || route.query().is_some()
            || route.fragment().is_some()
        {
            return Err(invalid("webcom base URL", trimmed));
        }
        route
            .path_segments_mut()
            .map_err(|()| invalid("webcom base URL", trimmed))?
            .pop_if_empty()
            .extend(["auth", "v2", self.app_id.as_str()]);
        let mut code_mode = BTreeMap::new();
        let mut providers = self.providers;
        for (provider, url) in self.code_mode {
            let parsed = Url::parse(&url)
                .ok()
                .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
                .ok_or_else(|| invalid("webcom code-mode authorization URL", &url))?;
            if !providers.iter().any(|p| **p == *provider) {
                providers.push(provider.clone().into_boxed_str());
            }
            code_mode.insert(provider, parsed);
        }
        let http =
            crate::upstream::wire::http_client(self.http, self.timeout, self.connect_timeout)?;
        Ok(Client {
            context: None,
            inner: Arc::new(Inner {
                http,
                route,
                app_id: self.app_id,
                body_limit: self.body_limit,
                timeout: self.timeout,
                providers,
                code_mode,
                scopes: self.scopes,
                events: self.events,
            }),
        })
    }
}

/// A fresh `requestKey`: 64 characters of the base64url alphabet from the
/// OS random source (48 bytes, base64url), as the SDK draws it (§2.5).
fn request_key() -> String {
    use rand::RngCore as _;
    let mut bytes = [0u8; REQUEST_KEY_LEN / 4 * 3];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// `from` for a `requestKey`: base64url(SHA-256(requestKey)) **with** `=`
/// padding, as the SDK computes it (§2.5).
pub fn request_key_hash(request_key: &str) -> String {
    URL_SAFE.encode(Sha256::digest(request_key.as_bytes()))
}

/// The per-flow data of a redirect-mode sign-in, sealed in the flow
/// cookie.
#[derive(Serialize, Deserialize)]
struct RedirectFlow {
    #[serde(rename = "rk")]
    request_key: String,
}

fn unix_time(secs: f64) -> Option<SystemTime> {
    (0.0..1e11)
        .contains(&secs)
        .then(|| UNIX_EPOCH + Duration::from_secs_f64(secs))
}

impl Client {
    /// A client for application `app_id` on Webcom's standard base URL.
    pub fn new(app_id: &str) -> Result<Self, ConfigError> {
        Self::builder(DEFAULT_BASE_URL, app_id).build()
    }

    /// A builder for another base URL (a Webcom-compatible server, the dev
    /// upstream) or non-default settings.
    pub fn builder(base_url: &str, app_id: &str) -> ClientBuilder {
        ClientBuilder {
            base_url: base_url.to_owned(),
            app_id: app_id.to_owned(),
            timeout: DEFAULT_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            body_limit: DEFAULT_BODY_LIMIT,
            http: None,
            providers: OAUTH_PROVIDERS.iter().map(|p| (*p).into()).collect(),
            code_mode: Vec::new(),
            scopes: BTreeMap::new(),
            events: AuthEvents::default(),
        }
    }

    /// A handle whose operations run in the context of `session` (the
    /// SDK's `useCurrentContextForNextAuthOperation`, §2.2 "ctx"): it sends
    /// `Authorization: Bearer <session>` on the calls that take a context,
    /// the sign-ins, [`add_identity`](Self::add_identity) and
    /// [`verify_identity`](Self::verify_identity), so a new identity joins
    /// the signed-in account, and a sign-in adds a factor to it. Cheap:
    /// shares the connection pool.
    #[must_use]
    pub fn with_context(&self, session: &SessionToken) -> Client {
        Client {
            inner: self.inner.clone(),
            context: Some(session.clone()),
        }
    }

    fn context(&self) -> Option<&SessionToken> {
        self.context.as_ref()
    }

    /// The application id.
    pub fn app_id(&self) -> &str {
        &self.inner.app_id
    }

    /// The auth route, `{baseUrl}/auth/v2/{appId}`.
    pub fn route(&self) -> &Url {
        &self.inner.route
    }

    // ---- sign-in ---------------------------------------------------------

    /// `POST /{provider}/signin` (JSON credentials): `signInWithCredentials`.
    /// A phone sign-in needs the challenge of [`send_otp`](Self::send_otp).
    pub async fn sign_in_with_credentials(
        &self,
        provider: Provider,
        credentials: &Credentials<'_>,
    ) -> Result<AuthDetails, Error> {
        let mut body = json!({"id": credentials.id, "password": credentials.password});
        if let (Some(challenge), Value::Object(map)) = (credentials.challenge, &mut body) {
            map.insert("challenge".into(), Value::String(challenge.to_owned()));
        }
        let method = match provider {
            Provider::Password if credentials.challenge.is_none() => SignInMethod::Password,
            _ => SignInMethod::Code,
        };
        let value = self
            .call(
                Method::POST,
                &[provider.as_str(), "signin"],
                &[],
                self.context(),
                Body::Json(&body),
            )
            .await?;
        details_from_signin(value, method)
    }

    /// `POST /{provider}/otps`: sends a one-time password to an identity
    /// (`sendOtp`); the body is the id as a JSON string (§2.2). Returns the
    /// challenge to sign in with ([`Credentials::otp`]).
    pub async fn send_otp(
        &self,
        provider: Provider,
        id: &str,
        message: &Message,
    ) -> Result<Secret, Error> {
        let body = Value::String(id.to_owned());
        let value = self
            .call(
                Method::POST,
                &[provider.as_str(), "otps"],
                &message.query(),
                None,
                Body::Json(&body),
            )
            .await?;
        challenge_of(&value).ok_or_else(|| Error::bad_answer("no OTP challenge in the answer"))
    }

    /// `POST /anonymous/signin`: a guest account (`signInAsGuest`); its
    /// user is [`anonymous`](User::anonymous).
    pub async fn sign_in_as_guest(&self) -> Result<AuthDetails, Error> {
        let value = self
            .call(
                Method::POST,
                &["anonymous", "signin"],
                &[],
                self.context(),
                Body::None,
            )
            .await?;
        details_from_signin(value, SignInMethod::Other("guest".to_owned()))
    }

    /// `POST /custom.{provider}/signin` with the form `token=<credentials>`
    /// (`signInWithCustomProvider`).
    pub async fn sign_in_with_custom_provider(
        &self,
        provider: &str,
        credentials: &str,
    ) -> Result<AuthDetails, Error> {
        let segment = format!("custom.{provider}");
        let value = self
            .call(
                Method::POST,
                &[segment.as_str(), "signin"],
                &[],
                self.context(),
                Body::Form(&[("token", credentials)]),
            )
            .await?;
        details_from_signin(value, SignInMethod::Other(format!("custom.{provider}")))
    }

    /// `GET /decode` with the token (`signInWithToken`): checks a Webcom
    /// token obtained elsewhere and returns it with its user.
    pub async fn sign_in_with_token(&self, token: &SessionToken) -> Result<AuthDetails, Error> {
        let (user, expires_at) = self.decode(token).await?;
        Ok(AuthDetails {
            user,
            token: token.clone(),
            expires_at,
            method: SignInMethod::Other("token".to_owned()),
        })
    }

    /// `POST /wassup/signin` with the form of `options` (`signInWithWassup`,
    /// e.g. `[("mcc", "208")]`): Orange's implicit sign-in for devices on
    /// its mobile network.
    pub async fn sign_in_with_wassup(
        &self,
        options: &[(&str, &str)],
    ) -> Result<AuthDetails, Error> {
        let value = self
            .call(
                Method::POST,
                &["wassup", "signin"],
                &[],
                self.context(),
                Body::Form(options),
            )
            .await?;
        details_from_signin(value, SignInMethod::Other("wassup".to_owned()))
    }

    /// `POST /server/signin` with the form `token=<assertion>`
    /// (`signInWithServerKey`, Node only in the SDK): signs the server in
    /// with its RSA key, the assertion signed RS512 (§2.2).
    pub async fn sign_in_with_server_key(&self, key: &ServerKey) -> Result<AuthDetails, Error> {
        let assertion = key.assertion(SystemTime::now())?;
        let value = self
            .call(
                Method::POST,
                &["server", "signin"],
                &[],
                self.context(),
                Body::Form(&[("token", &assertion)]),
            )
            .await?;
        details_from_signin(value, SignInMethod::Other("server".to_owned()))
    }

    /// The redirect-mode sign-in URL (§2.5 step 2):
    /// `GET {route}/{provider}/signin?[scope&]mode=redirect&to&from&pm=2&c`.
    /// `from` is [`request_key_hash`] of the request key that
    /// [`resume_oauth_session`](Self::resume_oauth_session) must send.
    pub fn oauth_sign_in_url(
        &self,
        provider: &str,
        to: &Url,
        from: &str,
        extra: &[(&str, &str)],
    ) -> Result<Url, Error> {
        let mut url = self.url(&[provider, "signin"])?;
        {
            let mut query = url.query_pairs_mut();
            if let Some(scope) = self.inner.scopes.get(provider) {
                query.append_pair("scope", scope);
            }
            query
                .extend_pairs(extra)
                .append_pair("mode", "redirect")
                .append_pair("to", to.as_str())
                .append_pair("from", from)
                .append_pair("pm", "2")
                .append_pair("c", CLIENT_VERSION);
        }
        Ok(url)
    }

    /// `POST /session` `{"sessionKey","requestKey"}` (§2.5 step 4): the
    /// `__wcsession` a redirect-mode sign-in came back with, and the
    /// request key whose hash was its `from`. One-time.
    pub async fn resume_oauth_session(
        &self,
        provider: &str,
        session_key: &str,
        request_key: &str,
    ) -> Result<AuthDetails, Error> {
        let body = json!({"sessionKey": session_key, "requestKey": request_key});
        let value = self
            .call(Method::POST, &["session"], &[], None, Body::Json(&body))
            .await?;
        details_from_signin(value, SignInMethod::OAuth(provider.to_owned()))
    }

    /// `GET /{provider}/callback?mode=code&code&state` (§2.5, code mode):
    /// exchanges a provider's authorization code. One-time.
    pub async fn sign_in_with_oauth_code(
        &self,
        provider: &str,
        code: &str,
        state: &str,
    ) -> Result<AuthDetails, Error> {
        let query = [("mode", "code"), ("code", code), ("state", state)];
        let value = self
            .call(
                Method::GET,
                &[provider, "callback"],
                &query,
                None,
                Body::None,
            )
            .await?;
        details_from_signin(value, SignInMethod::OAuth(provider.to_owned()))
    }

    // ---- the signed-in user ----------------------------------------------

    /// `GET /decode` (Bearer): the token's user and its expiry. An unknown
    /// or expired token is [`ErrorKind::InvalidSession`].
    pub async fn decode(&self, token: &SessionToken) -> Result<(User, Option<SystemTime>), Error> {
        let value = self
            .call(Method::GET, &["decode"], &[], Some(token), Body::None)
            .await?;
        let Value::Object(mut map) = value else {
            return Err(Error::bad_answer("decode answer is not an object"));
        };
        let data = map.remove("data").unwrap_or(Value::Null);
        user_from_details(data)
    }

    // ---- identities and accounts -----------------------------------------

    /// `POST /{provider}/identities` (`addIdentity`): a new e-mail or phone
    /// identity, bound to the account of the [context](Self::with_context)
    /// when there is one, else to a new account. Webcom sends the
    /// verification message.
    pub async fn add_identity(
        &self,
        provider: Provider,
        identity: &NewIdentity,
        message: &Message,
    ) -> Result<AddedIdentity, Error> {
        let body = identity.body();
        let raw = self
            .call(
                Method::POST,
                &[provider.as_str(), "identities"],
                &message.query(),
                self.context(),
                Body::Json(&body),
            )
            .await?;
        let verification_pending = raw
            .get("verificationPending")
            .and_then(Value::as_str)
            .map(Secret::new);
        Ok(AddedIdentity {
            verification_pending,
            raw,
        })
    }

    /// `POST /{provider}/identities/{id}/verify` (`verifyIdentity`):
    /// verifies a new identity and signs in with it.
    pub async fn verify_identity(
        &self,
        provider: Provider,
        id: &str,
        verification: Verification<'_>,
    ) -> Result<AuthDetails, Error> {
        let body = match verification {
            Verification::EmailToken(token) => json!({"token": token}),
            Verification::Otp {
                challenge,
                password,
            } => json!({"challenge": challenge, "password": password}),
        };
        let value = self
            .call(
                Method::POST,
                &[provider.as_str(), "identities", id, "verify"],
                &[],
                self.context(),
                Body::Json(&body),
            )
            .await?;
        let method = match provider {
            Provider::Password => SignInMethod::EmailConfirmation,
            Provider::Phone => SignInMethod::PhoneVerification,
        };
        details_from_signin(value, method)
    }

    /// `POST /{provider}/identities/{id}/sendVerification`
    /// (`sendVerificationCode`): sends a new verification code; Webcom
    /// refuses an identity already verified. Returns the challenge, if
    /// the answer carries one (phone identities).
    pub async fn send_verification_code(
        &self,
        provider: Provider,
        id: &str,
        message: &Message,
    ) -> Result<Option<Secret>, Error> {
        let value = self
            .call(
                Method::POST,
                &[provider.as_str(), "identities", id, "sendVerification"],
                &message.query(),
                None,
                Body::None,
            )
            .await?;
        Ok(challenge_of(&value))
    }

    /// `POST /password/identities/{id}/reset` (`sendPasswordResetCode`,
    /// e-mail identities only): mails a reset code, to use as the current
    /// password of [`update_password`](Self::update_password).
    pub async fn send_password_reset_code(&self, id: &str, message: &Message) -> Result<(), Error> {
        self.call(
            Method::POST,
            &["password", "identities", id, "reset"],
            &message.query(),
            None,
            Body::None,
        )
        .await
        .map(drop)
    }

    /// `PUT /password/identities/{id}/password` with the form
    /// `password=<current>&newPassword=<new>` (`updatePassword`; no token:
    /// the current password, or a reset code, proves it).
    pub async fn update_password(
        &self,
        id: &str,
        current_password: &str,
        new_password: &str,
    ) -> Result<(), Error> {
        self.call(
            Method::PUT,
            &["password", "identities", id, "password"],
            &[],
            None,
            Body::Form(&[
                ("password", current_password),
                ("newPassword", new_password),
            ]),
        )
        .await?;
        self.inner
            .events
            .emit(AuthEvent::PasswordChanged { user_id: None });
        Ok(())
    }

    /// `PUT /{provider}/identities/{providerUid}/providerProfile[/{path}]`
    /// (`updateIdentityProfile`): sets `data` at `path` (slash-separated;
    /// empty = the whole profile) in the signed-in identity's profile.
    pub async fn update_identity_profile(
        &self,
        session: &SessionToken,
        identity: &Identity,
        data: &Value,
        path: &str,
    ) -> Result<(), Error> {
        let mut segments = vec![
            identity.provider.as_str(),
            "identities",
            identity.provider_uid.as_str(),
            "providerProfile",
        ];
        segments.extend(path.split('/').filter(|s| !s.is_empty()));
        self.call(Method::PUT, &segments, &[], Some(session), Body::Json(data))
            .await
            .map(drop)
    }

    /// `DELETE /{provider}/identities/{providerUid}` (`removeIdentity`):
    /// removes the signed-in identity (and its account when it was the
    /// last one). Needs a recent sign-in:
    /// [`ErrorKind::FreshAuthRequired`] otherwise.
    pub async fn remove_identity(
        &self,
        session: &SessionToken,
        identity: &Identity,
    ) -> Result<(), Error> {
        let segments = [
            identity.provider.as_str(),
            "identities",
            identity.provider_uid.as_str(),
        ];
        self.call(Method::DELETE, &segments, &[], Some(session), Body::None)
            .await
            .map(drop)
    }

    /// `GET /accounts/{uid}` (`getAccountDetails`).
    pub async fn account_details(
        &self,
        session: &SessionToken,
        uid: &str,
    ) -> Result<AccountDetails, Error> {
        let raw = self
            .call(
                Method::GET,
                &["accounts", uid],
                &[],
                Some(session),
                Body::None,
            )
            .await?;
        let identities = raw
            .get("providers")
            .and_then(Value::as_object)
            .map(|providers| {
                providers
                    .iter()
                    .map(|(provider, uids)| {
                        let uids = uids
                            .as_object()
                            .map(|m| m.keys().cloned().collect())
                            .unwrap_or_default();
                        (provider.clone(), uids)
                    })
                    .collect()
            })
            .unwrap_or_default();
        let created_on = raw
            .get("createdOn")
            .and_then(Value::as_f64)
            .and_then(|ms| unix_time(ms / 1000.0));
        Ok(AccountDetails {
            identities,
            created_on,
            raw,
        })
    }

    /// `DELETE /accounts/{uid}` (`removeAccount`): deletes the account and
    /// all its identities. Needs a recent sign-in: Webcom's `TOKEN_TOO_OLD`
    /// is [`ErrorKind::FreshAuthRequired`]; send the user through
    /// `{prefix}/signin/{provider}?prompt=login` or your sign-in form.
    pub async fn remove_account(&self, session: &SessionToken, uid: &str) -> Result<(), Error> {
        self.call(
            Method::DELETE,
            &["accounts", uid],
            &[],
            Some(session),
            Body::None,
        )
        .await
        .map(drop)
    }

    // ---- transport -------------------------------------------------------

    /// `{route}/{segments…}`, each segment percent-encoded (§2.1).
    fn url(&self, segments: &[&str]) -> Result<Url, Error> {
        let mut url = self.inner.route.clone();
        url.path_segments_mut()
            .map_err(|()| Error::new(ErrorKind::InvalidInput))?
            .extend(segments);
        Ok(url)
    }

    async fn call(
        &self,
        method: Method,
        segments: &[&str],
        query: &[(&str, &str)],
        token: Option<&SessionToken>,
        body: Body<'_>,
    ) -> Result<Value, Error> {
        if segments.iter().any(|s| s.is_empty()) {
            return Err(Error::invalid_input("an empty path segment"));
        }
        let inner = &self.inner;
        let mut url = self.url(segments)?;
        // A query serializer, never concatenation (SECURITY.md T-B3.3); the
        // client version last, as the SDK appends it.
        url.query_pairs_mut()
            .extend_pairs(query)
            .append_pair("c", CLIENT_VERSION);
        let mut request = inner
            .http
            .request(method, url)
            .timeout(inner.timeout)
            .header(http::header::ACCEPT, "application/json, text/plain");
        if let Some(token) = token {
            let mut value = HeaderValue::from_str(&format!("Bearer {}", token.expose()))
                .map_err(|_| Error::new(ErrorKind::InvalidInput))?;
            value.set_sensitive(true);
            request = request.header(http::header::AUTHORIZATION, value);
        }
        request = match body {
            Body::None => request,
            Body::Json(value) => request.json(value),
            Body::Form(pairs) => request.form(pairs),
        };
        // A 5xx is an outage, its body not read: the SDK ignores it (§2.4).
        let Answer {
            status,
            json,
            bytes,
        } = send(request, inner.body_limit).await?;
        classify(status, json, &bytes)
    }
}

/// A request body: none, JSON, or a form.
enum Body<'a> {
    None,
    Json(&'a Value),
    Form(&'a [(&'a str, &'a str)]),
}

/// Turns an answer into its JSON or an [`Error`], as the SDK reads it
/// (§2.4): a 4xx's error is `body.error` or the whole body; a 2xx with an
/// `error` is an error too (a string `error` is `{code: body.status,
/// message: body.error}`); a body that is not JSON is a decode error.
/// Only `INVALID_TOKEN` on a 4xx is [`ErrorKind::InvalidSession`]
/// (SECURITY.md R1); `TOKEN_TOO_OLD` is [`ErrorKind::FreshAuthRequired`].
fn classify(status: StatusCode, json: bool, bytes: &[u8]) -> Result<Value, Error> {
    if status.is_server_error() {
        // The SDK ignores a 5xx body (§2.4).
        return Err(Error::from_status(status));
    }
    let success = status.is_success() || status == StatusCode::NOT_MODIFIED;
    let parsed = if json { strict_json(bytes).ok() } else { None };
    let Some(value) = parsed else {
        return Err(if success {
            Error::bad_answer("not a JSON answer")
        } else {
            // A proxy's HTML page says nothing about the session.
            Error::from_status(status)
        });
    };
    let error = match (&value, success) {
        (Value::Object(map), true) => match map.get("error") {
            None | Some(Value::Null) => return Ok(value),
            Some(Value::String(message)) => Some(UpstreamErrorItem {
                origin: None,
                code: map
                    .get("status")
                    .map(|s| s.as_str().map_or_else(|| s.to_string(), str::to_owned)),
                message: Some(message.clone()),
            }),
            Some(object) => error_item(object),
        },
        (_, true) => return Ok(value),
        (Value::Object(map), false) => error_item(map.get("error").unwrap_or(&value)),
        (other, false) => error_item(other),
    };
    let items: Vec<_> = error.into_iter().collect();
    let code = items.first().and_then(|i| i.code.as_deref());
    let kind = match code {
        Some(INVALID_TOKEN) if status.is_client_error() => ErrorKind::InvalidSession,
        Some(TOKEN_TOO_OLD) => ErrorKind::FreshAuthRequired,
        _ if success => ErrorKind::Status(StatusCode::BAD_REQUEST),
        _ => ErrorKind::Status(status),
    };
    Err(Error::new(kind).with_items(items))
}

/// One `{"code","message"}` error object.
fn error_item(value: &Value) -> Option<UpstreamErrorItem> {
    let map = value.as_object()?;
    let text = |key| map.get(key).and_then(Value::as_str).map(str::to_owned);
    let item = UpstreamErrorItem {
        origin: None,
        code: text("code"),
        message: text("message"),
    };
    (item.code.is_some() || item.message.is_some()).then_some(item)
}

/// A challenge from an answer: a JSON string, or an object's `challenge`
/// (or `verificationPending`).
fn challenge_of(value: &Value) -> Option<Secret> {
    match value {
        Value::String(s) if !s.is_empty() => Some(Secret::new(s.clone())),
        Value::Object(map) => ["challenge", "verificationPending"]
            .iter()
            .find_map(|k| map.get(*k).and_then(Value::as_str))
            .filter(|s| !s.is_empty())
            .map(Secret::new),
        _ => None,
    }
}

fn string_field(map: &Map<String, Value>, key: &str) -> Option<String> {
    map.get(key)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

/// Maps Webcom's `AuthenticationDetails` to the neutral [`User`] and the
/// token's expiry (§2.3): `uid` is the id; the provider's profile gives
/// the name (`displayName`, `name`) and e-mail; a `password` identity's
/// `providerUid` is its e-mail, a `phone` identity's its MSISDN; a guest
/// (`anonymous`) is [`anonymous`](User::anonymous). The whole object is
/// kept in `raw`, but `extra` (provider secrets such as an OAuth access
/// token, which the SDK does not persist either).
pub(crate) fn user_from_details(value: Value) -> Result<(User, Option<SystemTime>), Error> {
    let Value::Object(mut map) = value else {
        return Err(Error::bad_answer("user is not an object"));
    };
    map.remove("extra");
    map.remove("webcomAuthToken");
    let Some(uid) = string_field(&map, "uid") else {
        return Err(Error::bad_answer("user has no uid"));
    };
    let provider = string_field(&map, "provider");
    let provider_uid = string_field(&map, "providerUid");
    let profile = map.get("providerProfile").and_then(Value::as_object);
    let profile_field =
        |keys: &[&str]| profile.and_then(|p| keys.iter().find_map(|k| string_field(p, k)));
    let mut user = User::new(uid, Value::Null);
    user.name = profile_field(&["displayName", "name"]);
    user.email = profile_field(&["email"]);
    match provider.as_deref() {
        Some("password") if user.email.is_none() => user.email.clone_from(&provider_uid),
        // Webcom's phone identities are MSISDNs without the `+`; the
        // neutral `User::phone` is E.164, as the other upstreams give it.
        Some("phone") => {
            user.phone = provider_uid.as_deref().map(|msisdn| {
                if msisdn.bytes().all(|b| b.is_ascii_digit()) {
                    format!("+{msisdn}")
                } else {
                    msisdn.to_owned()
                }
            });
        }
        Some("anonymous") => user.anonymous = true,
        _ => {}
    }
    user.email_verified = profile
        .and_then(|p| p.get("emailVerified").or_else(|| p.get("email_verified")))
        .and_then(Value::as_bool);
    let expires_at = map
        .get("expires")
        .and_then(Value::as_f64)
        .and_then(unix_time);
    user.provider = provider;
    let value = Value::Object(map);
    user.picture = avatar_of(&value);
    user.raw = RawJson::new(&value);
    Ok((user, expires_at))
}

/// A sign-in answer, `{"token","user"}`, as [`AuthDetails`]; an answer
/// without a token is a decode error (the SDK's `UNEXPECTED_RESPONSE`).
fn details_from_signin(value: Value, method: SignInMethod) -> Result<AuthDetails, Error> {
    let Value::Object(mut map) = value else {
        return Err(Error::bad_answer("sign-in answer is not an object"));
    };
    let token = map
        .get("token")
        .and_then(Value::as_str)
        .and_then(SessionToken::new)
        .ok_or_else(|| Error::bad_answer("sign-in answer without a usable token"))?;
    let (user, expires_at) = user_from_details(map.remove("user").unwrap_or(Value::Null))?;
    Ok(AuthDetails {
        user,
        token,
        expires_at,
        method,
    })
}

/// The user's avatar URL, if its identity's profile has one (the SDK's
/// `Authentication.avatarURL`, also set as [`User::picture`]): a string
/// `picture`, `picture.data.url` (Facebook), `avatar_url` (GitHub,
/// GitLab), `avatar` or `photoURL`, if it is an `http(s)` URL (never
/// `javascript:` or `data:`, so it is safe in `<img src>`); for Facebook
/// without one, the Graph API picture of `providerUid`. The SDK's own
/// rules are not recorded in UPSTREAMS.md; these are authgate's.
pub fn avatar_url(user: &User) -> Option<String> {
    avatar_of(&user.raw.to_value())
}

fn avatar_of(details: &Value) -> Option<String> {
    let profile = details.get("providerProfile");
    let found = profile.and_then(|p| {
        let direct = ["picture", "avatar_url", "avatar", "photoURL"]
            .iter()
            .find_map(|k| p.get(*k).and_then(Value::as_str));
        direct.or_else(|| p.pointer("/picture/data/url").and_then(Value::as_str))
    });
    let web = |s: &str| {
        Url::parse(s)
            .ok()
            .filter(|u| matches!(u.scheme(), "https" | "http"))
            .map(String::from)
    };
    match found {
        Some(url) => web(url),
        None if details.get("provider").and_then(Value::as_str) == Some("facebook") => {
            let uid = details.get("providerUid").and_then(Value::as_str)?;
            let mut url = Url::parse("https://graph.facebook.com/").ok()?;
            url.path_segments_mut()
                .ok()?
                .pop_if_empty()
                .extend([uid, "picture"]);
            Some(url.into())
        }
        None => None,
    }
}

fn failed(message: &str, rejection: FlowRejection) -> CallbackOutcome {
    CallbackOutcome::Failed {
        status: StatusCode::BAD_REQUEST,
        message: message.to_owned(),
        rejection: Some(rejection),
        landing: LandingKind::OAuth,
    }
}

/// A landing value must look like a key before it is sent anywhere
/// (SECURITY.md T-B3.5).
fn plausible(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= MAX_LANDING_VALUE
        && value.bytes().all(|b| b.is_ascii_graphic())
}

impl Client {
    /// Completes a landing (§2.5) for the flow the core found. Nothing is
    /// sent upstream unless the flow exists and the landing is well formed.
    async fn complete_landing(
        &self,
        params: &CallbackParams,
        flow: Option<&FlowRecord>,
    ) -> Result<CallbackOutcome, Error> {
        let Some(flow) = flow else {
            // A landing this browser never started: login CSRF (T-B1.3).
            return Ok(failed(
                "No sign-in was started in this browser.",
                FlowRejection::MissingFlow,
            ));
        };
        if params.has_duplicates() {
            return Ok(failed(
                "duplicate landing parameters",
                FlowRejection::MalformedLanding,
            ));
        }
        let single = |name| params.single(name).ok().flatten();
        if single("error").is_some() {
            // The provider's text is not shown (T-B4).
            let reason = match single("error") {
                Some("access_denied") => FlowRejection::ConsentDenied,
                _ => FlowRejection::UpstreamRefused,
            };
            return Ok(failed("the provider refused the sign-in", reason));
        }
        let provider = flow.provider.as_str();
        let result = match flow.correlation {
            Correlation::CallbackQuery => {
                // The SDK reads a missing `__wcsession` as USER_DENIED (§2.5).
                let Some(session_key) = single("__wcsession") else {
                    return Ok(failed(
                        "no __wcsession on the landing",
                        FlowRejection::ConsentDenied,
                    ));
                };
                if !plausible(session_key) {
                    return Ok(failed(
                        "a malformed __wcsession",
                        FlowRejection::MalformedLanding,
                    ));
                }
                let data: RedirectFlow = flow.data.get()?;
                self.resume_oauth_session(provider, session_key, &data.request_key)
                    .await
            }
            Correlation::State => {
                let (Some(code), Some(state)) = (single("code"), single("state")) else {
                    return Ok(failed(
                        "no code or state on the landing",
                        FlowRejection::MalformedLanding,
                    ));
                };
                if !plausible(code) {
                    return Ok(failed("a malformed code", FlowRejection::MalformedLanding));
                }
                self.sign_in_with_oauth_code(provider, code, state).await
            }
            _ => {
                return Ok(failed(
                    "a flow this upstream does not start",
                    FlowRejection::MissingFlow,
                ));
            }
        };
        match result {
            Ok(details) => Ok(CallbackOutcome::SignedIn(details.into_grant())),
            // A used, expired or forged key, or a request key that does
            // not hash to `from`: refused, with a fixed page.
            Err(err) if err.status().is_some_and(|s| s.is_client_error()) => {
                tracing::info!(error = %err, "authgate: webcom refused an OAuth landing");
                Ok(failed(
                    "webcom refused the landing",
                    FlowRejection::ReplayedGrant,
                ))
            }
            Err(err) => Err(err),
        }
    }

    /// The start of a sign-in (§2.5): code mode for the providers set up
    /// for it, redirect mode otherwise.
    fn start(&self, start: &SignInStart<'_>) -> Result<SignInRedirect, Error> {
        let provider = start.provider;
        if let Some(authorize) = self.inner.code_mode.get(provider) {
            let mut url = authorize.clone();
            url.query_pairs_mut()
                .append_pair("state", start.flow.as_str());
            if start.prompt == Prompt::Login {
                url.query_pairs_mut().append_pair("prompt", "login");
            }
            return Ok(SignInRedirect::new(url, Correlation::State));
        }
        let request_key = request_key();
        let mut to = start.callback_url.clone();
        to.query_pairs_mut()
            .append_pair("flow", start.flow.as_str());
        // `prompt=login` is passed as a caller option, as the SDK passes
        // every option; whether Webcom forwards it is unknown (§2.5).
        let extra: &[(&str, &str)] = if start.prompt == Prompt::Login {
            &[("prompt", "login")]
        } else {
            &[]
        };
        let url = self.oauth_sign_in_url(provider, &to, &request_key_hash(&request_key), extra)?;
        let data = FlowData::new(&RedirectFlow { request_key })?;
        Ok(SignInRedirect::new(url, Correlation::CallbackQuery).with_data(data))
    }
}

impl Upstream for Client {
    /// Plain storage (the cookie holds the token), the configured OAuth
    /// providers, sign-out of this session only, tombstones until the
    /// token's `expires` (Webcom cannot revoke a token, §2.7).
    fn capabilities(&self) -> Capabilities {
        Capabilities::new()
            .with_providers(self.inner.providers.iter().cloned())
            .with_sign_out_scopes(&[SignOutScope::This])
            .with_revocation(Revocation::UntilExpiry)
    }

    fn lookup<'a>(&'a self, session: &'a Session) -> BoxFuture<'a, Result<Lookup, Error>> {
        Box::pin(async move {
            match self.decode(&session.token).await {
                // Past `expires` the token is refused, as the SDK's expiry
                // watcher does (§2.3), whatever the server said.
                Ok((_, Some(at))) if at <= SystemTime::now() => Ok(Lookup::Invalid),
                Ok((user, expires_at)) => {
                    let mut valid = Valid::new(user);
                    if let Some(at) = expires_at {
                        valid = valid.with_expires_at(at);
                    }
                    Ok(Lookup::Valid(valid))
                }
                Err(err) if err.is_invalid_session() => Ok(Lookup::Invalid),
                Err(err) => Err(err),
            }
        })
    }

    fn start_sign_in<'a>(
        &'a self,
        start: SignInStart<'a>,
    ) -> BoxFuture<'a, Result<SignInRedirect, Error>> {
        Box::pin(std::future::ready(self.start(&start)))
    }

    fn complete_callback<'a>(
        &'a self,
        params: &'a CallbackParams,
        flow: Option<&'a FlowRecord>,
    ) -> BoxFuture<'a, Result<CallbackOutcome, Error>> {
        Box::pin(self.complete_landing(params, flow))
    }

    /// Nothing to call: Webcom's sign-out only forgets local state (§2.2).
    /// The token stays valid upstream until its `expires`; the layer
    /// tombstones it until then.
    fn sign_out<'a>(
        &'a self,
        _session: &'a Session,
        _scope: SignOutScope,
        _after: &'a Url,
    ) -> BoxFuture<'a, Result<SignOutOutcome, Error>> {
        Box::pin(std::future::ready(Ok(SignOutOutcome::Done)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(code: u16) -> StatusCode {
        StatusCode::from_u16(code).unwrap()
    }

    /// SECURITY.md R1 against Webcom's envelopes (UPSTREAMS.md §2.4).
    #[test]
    fn error_envelopes_follow_r1() {
        let invalid = br#"{"error":{"code":"INVALID_TOKEN","message":"bad"}}"#;
        type Case<'a> = (
            &'a str,
            u16,
            bool,
            &'a [u8],
            Option<ErrorKind>,
            Option<&'a str>,
        );
        let cases: &[Case<'_>] = &[
            (
                "401 INVALID_TOKEN",
                401,
                true,
                invalid,
                Some(ErrorKind::InvalidSession),
                Some("INVALID_TOKEN"),
            ),
            (
                "403 bare INVALID_TOKEN",
                403,
                true,
                br#"{"code":"INVALID_TOKEN","message":"m"}"#,
                Some(ErrorKind::InvalidSession),
                Some("INVALID_TOKEN"),
            ),
            (
                "500 INVALID_TOKEN body ignored",
                500,
                true,
                invalid,
                Some(ErrorKind::Status(status(500))),
                None,
            ),
            (
                "400 TOKEN_TOO_OLD",
                400,
                true,
                br#"{"error":{"code":"TOKEN_TOO_OLD","message":"m"}}"#,
                Some(ErrorKind::FreshAuthRequired),
                Some("TOKEN_TOO_OLD"),
            ),
            (
                "403 INVALID_CREDENTIALS",
                403,
                true,
                br#"{"error":{"code":"INVALID_CREDENTIALS","message":"m"}}"#,
                Some(ErrorKind::Status(status(403))),
                Some("INVALID_CREDENTIALS"),
            ),
            (
                "401 html",
                401,
                false,
                b"<html>no</html>",
                Some(ErrorKind::Status(status(401))),
                None,
            ),
            (
                "429",
                429,
                true,
                br#"{"error":{"code":"SLOW_DOWN"}}"#,
                Some(ErrorKind::Status(status(429))),
                Some("SLOW_DOWN"),
            ),
            (
                "200 error object",
                200,
                true,
                br#"{"error":{"code":"INVALID_STATE","message":"m"}}"#,
                Some(ErrorKind::Status(status(400))),
                Some("INVALID_STATE"),
            ),
            (
                "200 error string",
                200,
                true,
                br#"{"status":"UNKNOWN_APPLICATION","error":"no app"}"#,
                Some(ErrorKind::Status(status(400))),
                Some("UNKNOWN_APPLICATION"),
            ),
            (
                "200 INVALID_TOKEN is not definitive",
                200,
                true,
                invalid,
                Some(ErrorKind::Status(status(400))),
                Some("INVALID_TOKEN"),
            ),
            (
                "200 not json",
                200,
                false,
                b"hello",
                Some(ErrorKind::Decode),
                None,
            ),
            (
                "200 bad json",
                200,
                true,
                b"{\"uid\":",
                Some(ErrorKind::Decode),
                None,
            ),
            (
                "200 duplicate keys",
                200,
                true,
                br#"{"uid":"a","uid":"b"}"#,
                Some(ErrorKind::Decode),
                None,
            ),
            ("200 ok", 200, true, br#"{"data":{}}"#, None, None),
        ];
        for (name, code, json, body, kind, upstream_code) in cases {
            let result = classify(status(*code), *json, body);
            match kind {
                None => assert!(result.is_ok(), "{name}"),
                Some(kind) => {
                    let err = result.unwrap_err();
                    assert_eq!(err.kind(), *kind, "{name}");
                    assert_eq!(err.code(), *upstream_code, "{name}");
                }
            }
        }
    }

    /// The SDK's `from`: base64url(SHA-256(requestKey)) with `=` padding.
    #[test]
    fn request_keys_and_their_hash_follow_the_sdk() {
        let key = request_key();
        assert_eq!(key.len(), 64);
        assert!(
            key.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        );
        assert_ne!(key, request_key());
        // SHA-256("abc") = ba7816bf…15ad; base64url with padding.
        assert_eq!(
            request_key_hash("abc"),
            "ungWv48Bz-pBQUDeXa4iI7ADYaOWF3qctBD_YfIAFa0="
        );
    }

    #[test]
    fn user_mapping_follows_the_authentication_details() {
        let (user, expires) = user_from_details(json!({
            "uid": "acc-1", "provider": "password", "providerUid": "ada@example.com",
            "providerProfile": {"displayName": "Ada"}, "expires": 1_700_000_000,
            "extra": {"accessToken": "provider-secret"}
        }))
        .unwrap();
        assert_eq!(user.id, "acc-1");
        assert_eq!(user.name.as_deref(), Some("Ada"));
        assert_eq!(user.email.as_deref(), Some("ada@example.com"));
        assert_eq!(user.provider.as_deref(), Some("password"));
        assert!(!user.anonymous);
        assert_eq!(
            expires,
            Some(UNIX_EPOCH + Duration::from_secs(1_700_000_000))
        );
        assert!(!user.raw.as_str().contains("provider-secret"));
        assert_eq!(user.raw.get("providerUid"), Some(json!("ada@example.com")));

        let (guest, _) =
            user_from_details(json!({"uid": "g", "provider": "anonymous", "providerUid": "g"}))
                .unwrap();
        assert!(guest.anonymous);
        let (phone, _) = user_from_details(
            json!({"uid": "p", "provider": "phone", "providerUid": "33612345678"}),
        )
        .unwrap();
        assert_eq!(phone.phone.as_deref(), Some("+33612345678"), "E.164");
        for bad in [json!({}), json!({"uid": ""}), json!([]), json!(null)] {
            assert_eq!(
                user_from_details(bad.clone()).unwrap_err().kind(),
                ErrorKind::Decode,
                "{bad}"
            );
        }
    }

    #[test]
    fn avatar_urls_come_from_the_provider_profile() {
        let cases = [
            (
                json!({"uid":"u","provider":"google","providerProfile":{"picture":"https://p.example/a.png"}}),
                Some("https://p.example/a.png"),
            ),
            (
                json!({"uid":"u","provider":"facebook","providerProfile":{"picture":{"data":{"url":"https://fb.example/p"}}}}),
                Some("https://fb.example/p"),
            ),
            (
                json!({"uid":"u","provider":"facebook","providerUid":"123"}),
                Some("https://graph.facebook.com/123/picture"),
            ),
            (
                json!({"uid":"u","provider":"github","providerProfile":{"avatar_url":"https://gh.example/u"}}),
                Some("https://gh.example/u"),
            ),
            (
                json!({"uid":"u","provider":"github","providerProfile":{"avatar_url":"javascript:alert(1)"}}),
                None,
            ),
            (
                json!({"uid":"u","provider":"gitlab","providerProfile":{"avatar_url":"data:image/png;base64,AA"}}),
                None,
            ),
            (json!({"uid":"u","provider":"password"}), None),
        ];
        for (details, want) in cases {
            let (user, _) = user_from_details(details.clone()).unwrap();
            assert_eq!(avatar_url(&user).as_deref(), want, "{details}");
            assert_eq!(user.picture.as_deref(), want, "{details}");
        }
    }

    #[test]
    fn app_ids_follow_the_sdk_rule() {
        for (id, ok) in [
            ("my-app", true),
            ("a", true),
            ("a1-b2", true),
            ("-a", false),
            ("a-", false),
            ("My-App", false),
            ("", false),
            ("a/b", false),
        ] {
            assert_eq!(valid_app_id(id), ok, "{id}");
        }
        assert_eq!(
            Client::builder("https://io.example/", "my-app")
                .build()
                .unwrap()
                .route()
                .as_str(),
            "https://io.example/auth/v2/my-app"
        );
    }

    /// Redirect mode (§2.5): `from` is the padded hash of the request key
    /// kept in the flow data; `to` carries the flow id; the configured
    /// scope and `prompt=login` are caller options. Code mode: `state` is
    /// the flow id, nothing else is kept.
    #[test]
    fn sign_in_starts_follow_both_modes() {
        let client = Client::builder("https://io.example", "app")
            .with_scope("google", "openid email")
            .with_code_mode_provider("github", "https://gh.example/authorize?client_id=c")
            .build()
            .unwrap();
        assert!(client.capabilities().has_provider("github"));
        assert!(client.capabilities().has_provider("mobileconnectOFR"));
        let flow = crate::upstream::FlowId::generate();
        let callback = Url::parse("https://app.example/auth/callback").unwrap();
        let mut start = SignInStart::new("google", &flow, &callback);
        start.prompt = Prompt::Login;
        let redirect = client.start(&start).unwrap();
        assert_eq!(redirect.correlation, Correlation::CallbackQuery);
        let pairs: BTreeMap<String, String> = redirect.url.query_pairs().into_owned().collect();
        let data: RedirectFlow = redirect.data.get().unwrap();
        assert_eq!(data.request_key.len(), 64);
        assert_eq!(pairs["from"], request_key_hash(&data.request_key));
        assert_eq!(
            pairs["to"],
            format!("https://app.example/auth/callback?flow={}", flow.as_str())
        );
        assert_eq!(pairs["scope"], "openid email");
        assert_eq!(pairs["prompt"], "login");
        assert_eq!(pairs["c"], CLIENT_VERSION);
        assert!(!redirect.url.as_str().contains(&data.request_key));
        assert_eq!(redirect.url.path(), "/auth/v2/app/google/signin");

        let code = client
            .start(&SignInStart::new("github", &flow, &callback))
            .unwrap();
        assert_eq!(code.correlation, Correlation::State);
        assert_eq!(
            code.url.as_str(),
            format!(
                "https://gh.example/authorize?client_id=c&state={}",
                flow.as_str()
            )
        );
        assert_eq!(code.data, FlowData::none());

        let bad = Client::builder("https://io.example", "app")
            .with_code_mode_provider("github", "not a url")
            .build();
        assert!(bad.is_err());
        for base in ["ftp://io.example", "https://io.example/?q=1", "nope"] {
            assert!(Client::builder(base, "app").build().is_err(), "{base}");
        }
    }

    /// SECURITY.md T-G1: no secret in `Debug`.
    #[test]
    fn debug_output_is_redacted() {
        let creds = Credentials::otp("33612345678", "challenge-secret", "905090");
        let text = format!("{creds:?}");
        assert!(!text.contains("challenge-secret") && !text.contains("905090"));
        let identity = NewIdentity::email("a@b.c", "pw-secret");
        assert!(!format!("{identity:?}").contains("pw-secret"));
        let verification = Verification::Otp {
            challenge: "c-secret",
            password: "654321",
        };
        let text = format!("{verification:?}");
        assert!(!text.contains("c-secret") && !text.contains("654321"));
    }
}
