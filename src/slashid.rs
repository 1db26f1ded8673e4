//! The SlashID client: sessions verified locally against the
//! organization's key set, SlashID hosted login, and every server-side
//! operation of the SDK's `User` class, with SlashID's wire protocol
//! (UPSTREAMS.md §3).
//!
//! One [`Client`] holds one shared `reqwest::Client` (timeouts, a body-size
//! cap, redirects off) and the organization's cached key set
//! (`{base}/.well-known/jwks.json`). Per-user calls send the user token as
//! `Authorization: Bearer` with `SlashID-SdkVersion` (§3.1); server-to-server
//! calls send `SlashID-OrgID` and `SlashID-API-Key`. SlashID's error
//! envelope `{"errors":[{"httpcode","message"}]}` becomes an [`Error`] whose
//! [`code`](Error::code) is the `httpcode` and whose
//! [`message`](Error::message) is SlashID's message (§3.6).
//!
//! # What the layer does with it
//!
//! [`Client`] implements [`Upstream`], so it is what
//! [`AuthLayer::new`](crate::AuthLayer::new) takes:
//!
//! - **Lookup** verifies the cookie's JWT locally (§3.3; SEAM.md §2.6): the
//!   signature with the key of the key set named by `kid`, in the key's own
//!   algorithm (RS256, ES256, …; `alg: none` and HS256 are refused), `iss`
//!   = the base URL, `aud` = the organization id (or one of
//!   [`ClientBuilder::with_accepted_organizations`], or the hosted-login
//!   client id), `exp` and `nbf` with a
//!   leeway (default 30 s). No network is used once the key set is
//!   cached; the layer's cache keeps the user until `exp`
//!   ([`Valid::expires_at`]). A token container (a JWT whose payload holds
//!   `user_token`) is verified and unwrapped. A key set that cannot be
//!   fetched is an outage (the cookie is kept, SECURITY.md R1), never an
//!   invalid session.
//! - **Remote check** (opt-in, [`ClientBuilder::with_remote_check`]): every
//!   interval per token, `POST /token/validate` catches revocation and
//!   `person_not_active`; `{"valid": false}` clears the cookie, an outage
//!   keeps it.
//! - **Sign-in** is SlashID hosted login ([`ClientBuilder::with_hosted_login`],
//!   §3.5), answered by `{prefix}/signin/slashid` and `{prefix}/callback`:
//!   an authorization-code flow with PKCE S256 (RFC 7636) and `state` = the
//!   flow id (`Correlation::State`), then `POST /oauth2/tokens`; the
//!   `id_token` is the user token.
//! - **Sign-out** revokes the token (`POST /token/revoke`); the layer also
//!   tombstones it until its `exp` ([`Revocation::UntilExpiry`]), since a
//!   revoked JWT still verifies locally.
//!
//! ```no_run
//! # fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use authgate::{AuthConfig, AuthLayer, slashid};
//!
//! let slashid = slashid::Client::builder(slashid::PRODUCTION_URL, "my-org-id")
//!     .with_hosted_login("my-oauth-client-id")
//!     .build()?;
//! let layer = AuthLayer::new(AuthConfig::new("https://app.example")?, slashid.clone());
//! # let _ = layer;
//! # Ok(()) }
//! ```
//!
//! Apps moving from SlashID's SSR SDK can adopt its cookie
//! `@slashid/USER_TOKEN/<oid>` with the [`SdkCookieMigration`] layer.
//!
//! # The user
//!
//! [`User::id`] is `person_id`, [`User::org`] is `oid`, [`User::groups`]
//! is the claim named by [`ClientBuilder::with_groups_claim`] (default
//! `groups`), [`User::anonymous`] is `person_type == "anonymous"`,
//! [`User::email`]/[`User::phone`] are the first `email_address` /
//! `phone_number` handle of `authentications`; the whole claim set is in
//! [`User::raw`], read back with [`UserClaims::of`].
//!
//! # What is not known
//!
//! None of UPSTREAMS.md §3 was checked against a live SlashID. In
//! particular (§3.8): the signing algorithm (any asymmetric key of the set
//! is accepted, in its own algorithm), the user token's `iss` outside the
//! Remix SDK's check (here: the base URL without a trailing `/`), the issuer
//! of token containers (not checked; the inner user token is), the `aud` of
//! hosted login's `id_token` (the organization or the OAuth client id are
//! both accepted), whether
//! `/oauth2/tokens` wraps its answer in `result` (both are read), and
//! whether `/token/validate` wants the Bearer token or the API key (the API
//! key when one is configured).

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::response::IntoResponse as _;
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use url::Url;

use crate::error::{ConfigError, Error, ErrorKind, UpstreamErrorItem};
use crate::events::{FlowRejection, SignInMethod};
use crate::upstream::jwt::{self, Expect, Jwks, JwtError};
use crate::upstream::wire::{Answer, pkce_challenge, random_token, send, strict_json};
use crate::upstream::{
    BoxFuture, CallbackOutcome, CallbackParams, Capabilities, Correlation, FlowData, FlowRecord,
    Grant, LandingKind, Lookup, Prompt, RawJson, Revocation, Secret, Session, SessionToken,
    SignInRedirect, SignInStart, SignOutOutcome, SignOutScope, Upstream, User, Valid,
};

/// SlashID's production API (§3.1).
pub const PRODUCTION_URL: &str = "https://api.slashid.com";
/// SlashID's sandbox API (§3.1).
pub const SANDBOX_URL: &str = "https://api.sandbox.slashid.com";
/// The SDK version sent as `SlashID-SdkVersion` (§3.1).
pub const SDK_VERSION: &str = "3.29.6";
/// The provider name of hosted login: `{prefix}/signin/slashid`.
pub const HOSTED_LOGIN: &str = "slashid";
/// The default name of the groups claim (§3.3 `groups_claim_name`).
pub const DEFAULT_GROUPS_CLAIM: &str = "groups";
/// The SlashID SSR SDK's cookie name, before the organization id (§3.4).
pub const SDK_COOKIE_PREFIX: &str = "@slashid/USER_TOKEN/";

/// The default attribute bucket names (§3.2, the SDK's `DefaultBucketName`).
pub mod buckets {
    /// Read-write for the user (the SDK's default bucket).
    pub const END_USER_READ_WRITE: &str = "end_user_read_write";
    /// Read-only for the user.
    pub const END_USER_READ_ONLY: &str = "end_user_read_only";
    /// Not readable by the user.
    pub const END_USER_NO_ACCESS: &str = "end_user_no_access";
    /// Person-pool wide, read-write for the user.
    pub const PERSON_POOL_END_USER_READ_WRITE: &str = "person_pool-end_user_read_write";
    /// Person-pool wide, read-only for the user.
    pub const PERSON_POOL_END_USER_READ_ONLY: &str = "person_pool-end_user_read_only";
    /// Person-pool wide, not readable by the user.
    pub const PERSON_POOL_END_USER_NO_ACCESS: &str = "person_pool-end_user_no_access";
}

/// The GDPR consent levels (§3.2, the SDK's `GDPRConsentLevel`).
pub const GDPR_CONSENT_LEVELS: &[&str] = &[
    "none",
    "necessary",
    "analytics",
    "marketing",
    "retargeting",
    "tracking",
];

const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const DEFAULT_BODY_LIMIT: usize = 1024 * 1024;
const DEFAULT_LEEWAY: Duration = Duration::from_secs(30);
const DEFAULT_JWKS_REFRESH: Duration = Duration::from_secs(3600);
const DEFAULT_JWKS_MIN_REFETCH: Duration = Duration::from_secs(30);
/// The longest landing value sent anywhere (SECURITY.md T-B3.5).
const MAX_LANDING_VALUE: usize = 4096;
/// SlashID messages that say the session is over (§3.6), on a 401/403.
const SESSION_OVER: &[&str] = &["authentication has expired", "person is not active"];

/// A handle (`{"type","value"}`, §3.2): `email_address`, `phone_number` or
/// `username`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Handle {
    /// `email_address`, `phone_number` or `username`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The address, number or name.
    pub value: String,
}

/// One authentication of the token (§3.3 `authentications`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Authentication {
    /// The handle used, if any.
    #[serde(default)]
    pub handle: Option<Handle>,
    /// When (RFC 3339, as SlashID sends it).
    #[serde(default)]
    pub timestamp: Option<String>,
    /// The factor method (`webauthn`, `email_link`, `otp_via_sms`, …).
    #[serde(default)]
    pub method: Option<String>,
}

/// The claims of a verified SlashID user token (§3.3), read back from a
/// [`User`] made by this client. Every claim is also in [`raw`](Self::raw).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct UserClaims {
    /// `person_id` (the SDK's `User.ID`).
    pub person_id: String,
    /// `oid`, the organization (`User.oid`).
    pub oid: Option<String>,
    /// `authenticated_methods` (`User.authentication`).
    pub authenticated_methods: Vec<String>,
    /// `authentications` (`User.authentications`).
    pub authentications: Vec<Authentication>,
    /// `first_token`: the user just registered (`User.firstLogin`).
    pub first_token: bool,
    /// `person_type`: `regular` or `anonymous` (`User.anonymous`).
    pub person_type: Option<String>,
    /// `iat`, when the token was issued.
    pub issued_at: Option<SystemTime>,
    /// `exp`, when it expires.
    pub expires_at: Option<SystemTime>,
    /// The whole claim set (`User.tokenClaims`).
    pub raw: Map<String, Value>,
}

impl UserClaims {
    /// The claims of a user this client resolved (from [`User::raw`]). A
    /// user from elsewhere is an [`ErrorKind::InvalidInput`] error.
    pub fn of(user: &User) -> Result<Self, Error> {
        match user.raw.to_value() {
            Value::Object(map) => Self::from_map(map),
            _ => Err(Error::invalid_input("not a SlashID user")),
        }
    }

    fn from_map(raw: Map<String, Value>) -> Result<Self, Error> {
        let text = |k: &str| raw.get(k).and_then(Value::as_str).map(str::to_owned);
        let time = |k: &str| {
            raw.get(k)
                .and_then(Value::as_u64)
                .map(|s| UNIX_EPOCH + Duration::from_secs(s))
        };
        let person_id = text("person_id")
            .or_else(|| text("sub"))
            .filter(|s| !s.is_empty())
            .ok_or_else(|| Error::invalid_input("not a SlashID user"))?;
        let authenticated_methods = raw
            .get("authenticated_methods")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        let authentications = raw
            .get("authentications")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|v| serde_json::from_value(v.clone()).ok())
                    .collect()
            })
            .unwrap_or_default();
        Ok(Self {
            oid: text("oid"),
            first_token: raw.get("first_token").and_then(Value::as_bool) == Some(true),
            person_type: text("person_type"),
            issued_at: time("iat"),
            expires_at: time("exp"),
            person_id,
            authenticated_methods,
            authentications,
            raw,
        })
    }

    /// Whether the user is anonymous (`person_type`).
    pub fn is_anonymous(&self) -> bool {
        self.person_type.as_deref() == Some("anonymous")
    }

    /// The server's step-up check (the seed's `mfa()` is browser-only):
    /// whether the token was issued less than `max_age` before `now` and
    /// was authenticated with `method` (e.g. `webauthn`), when given. When
    /// it is not, send the browser through hosted login again:
    /// `{prefix}/signin/slashid?prompt=login&return_to=<page>`.
    pub fn is_recent(&self, max_age: Duration, method: Option<&str>, now: SystemTime) -> bool {
        let recent = self
            .issued_at
            .is_some_and(|at| now.duration_since(at).map_or(true, |age| age <= max_age));
        recent && method.is_none_or(|m| self.authenticated_methods.iter().any(|x| x == m))
    }
}

/// The answer of `POST /token/validate` (§3.2).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[non_exhaustive]
pub struct TokenValidity {
    /// Whether the token is valid.
    pub valid: bool,
    /// Why not: `invalid_token_content`, `expired`, `invalid_issuer`,
    /// `not_enough_factors` or `person_not_active`.
    #[serde(default)]
    pub invalidity_reason: Option<String>,
    /// Seconds left.
    #[serde(default)]
    pub expires_in_seconds: Option<i64>,
    /// When it expires (RFC 3339).
    #[serde(default)]
    pub expires_at: Option<String>,
}

/// An organization of the user (§3.2 `OrganizationDetails`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[non_exhaustive]
pub struct Organization {
    /// Its id.
    pub id: String,
    /// Its parent organization.
    #[serde(default)]
    pub parent_id: Option<String>,
    /// Its name.
    #[serde(default)]
    pub org_name: Option<String>,
    /// Its tenant's name.
    #[serde(default)]
    pub tenant_name: Option<String>,
}

/// The answer of `GET /me` (§3.2).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Me {
    /// The person (`active`, `person_id`, `person_type`, `region`,
    /// `handles`, `groups`, `attributes`).
    pub person: Value,
    /// The person's organizations.
    pub organizations: Vec<Organization>,
    /// The person's handles.
    pub handles: Vec<Handle>,
    /// The whole `result`.
    pub raw: Value,
}

/// One GDPR consent (§3.2).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[non_exhaustive]
pub struct GdprConsent {
    /// One of [`GDPR_CONSENT_LEVELS`].
    pub consent_level: String,
    /// When it was given (RFC 3339).
    #[serde(default)]
    pub created_at: Option<String>,
}

/// A client for one SlashID organization. Cheap to clone.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    /// The API base URL, without a trailing `/`: also the tokens' `iss`.
    base: Url,
    issuer: String,
    org_id: String,
    /// The organizations whose tokens are accepted (the first is
    /// `org_id`).
    orgs: Vec<String>,
    /// The accepted `aud` values: `orgs`, and the hosted-login client id.
    audiences: Vec<String>,
    api_key: Option<Secret>,
    jwks: Jwks,
    leeway: Duration,
    groups_claim: String,
    remote_check: Option<Duration>,
    oauth_client_id: Option<String>,
    timeout: Duration,
    body_limit: usize,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("slashid::Client")
            .field("base", &self.inner.issuer)
            .field("org_id", &self.inner.org_id)
            .field(
                "api_key",
                &self.inner.api_key.as_ref().map(|_| "<redacted>"),
            )
            .field("remote_check", &self.inner.remote_check)
            .finish_non_exhaustive()
    }
}

/// Builds a [`Client`] with non-default settings.
#[must_use]
pub struct ClientBuilder {
    base_url: String,
    org_id: String,
    accepted: Vec<String>,
    api_key: Option<Secret>,
    timeout: Duration,
    connect_timeout: Duration,
    body_limit: usize,
    http: Option<reqwest::Client>,
    leeway: Duration,
    groups_claim: String,
    remote_check: Option<Duration>,
    jwks_refresh: Duration,
    jwks_min_refetch: Duration,
    oauth_client_id: Option<String>,
}

impl fmt::Debug for ClientBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientBuilder")
            .field("base_url", &self.base_url)
            .field("org_id", &self.org_id)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .finish_non_exhaustive()
    }
}

impl ClientBuilder {
    /// The organization API key, for the server-to-server calls
    /// ([`Client::api`], [`Client::validate_token`]): sent as
    /// `SlashID-API-Key` with `SlashID-OrgID` (§3.1).
    pub fn with_api_key(mut self, key: &str) -> Self {
        self.api_key = Some(Secret::new(key));
        self
    }

    /// Other organizations whose tokens are accepted (`aud`), for
    /// [`Client::token_for_organization`]: organizations sharing the
    /// person pool. Default: only the client's organization.
    pub fn with_accepted_organizations<I, S>(mut self, orgs: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.accepted.extend(orgs.into_iter().map(Into::into));
        self
    }

    /// Checks each session with `POST /token/validate` at most every
    /// `interval` (the layer's recheck time, SEAM.md §2.5) to catch
    /// revocation and `person_not_active`. Default: off (local
    /// verification only, no network).
    pub fn with_remote_check(mut self, interval: Duration) -> Self {
        self.remote_check = Some(interval);
        self
    }

    /// The claim holding the groups (§3.3 `groups_claim_name`). Default
    /// `groups`.
    pub fn with_groups_claim(mut self, name: &str) -> Self {
        name.clone_into(&mut self.groups_claim);
        self
    }

    /// Clock skew allowed on `exp` and `nbf` (whole seconds). Default 30 s.
    pub fn with_leeway(mut self, leeway: Duration) -> Self {
        self.leeway = leeway;
        self
    }

    /// How old the cached key set may get before it is fetched again.
    /// Default 1 hour.
    pub fn with_jwks_refresh(mut self, every: Duration) -> Self {
        self.jwks_refresh = every;
        self
    }

    /// The least time between two fetches of the key set for an unknown
    /// `kid` (a forged `kid` must not make the app hammer SlashID,
    /// SECURITY.md T-H1). Default 30 s.
    pub fn with_jwks_min_refetch(mut self, every: Duration) -> Self {
        self.jwks_min_refetch = every;
        self
    }

    /// Enables hosted login (§3.5) under the provider name
    /// [`HOSTED_LOGIN`], with this OAuth client id. The app's callback URL
    /// (`{origin}{prefix}/callback`) must be a registered redirect URI.
    pub fn with_hosted_login(mut self, client_id: &str) -> Self {
        self.oauth_client_id = Some(client_id.to_owned());
        self
    }

    /// Total timeout of one SlashID call. Default: 5 s.
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

    /// Builds the client (no network).
    pub fn build(self) -> Result<Client, ConfigError> {
        let invalid = |what: &'static str, value: &str| ConfigError::InvalidUrl {
            what,
            value: value.to_owned(),
        };
        let valid_id = |id: &str| {
            !id.is_empty()
                && id.len() <= 128
                && id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        };
        if !valid_id(&self.org_id) {
            return Err(invalid("slashid organization id", &self.org_id));
        }
        if let Some(bad) = self.accepted.iter().find(|o| !valid_id(o)) {
            return Err(invalid("slashid organization id", bad));
        }
        let trimmed = self.base_url.trim_end_matches('/');
        let base = Url::parse(trimmed)
            .ok()
            .filter(|u| {
                matches!(u.scheme(), "http" | "https")
                    && u.host().is_some()
                    && u.query().is_none()
                    && u.fragment().is_none()
            })
            .ok_or_else(|| invalid("slashid base URL", trimmed))?;
        let http =
            crate::upstream::wire::http_client(self.http, self.timeout, self.connect_timeout)?;
        let jwks_url = join(&base, &[".well-known", "jwks.json"])
            .map_err(|_| invalid("slashid base URL", trimmed))?;
        let jwks = Jwks::new(
            jwks_url,
            http.clone(),
            self.timeout,
            self.jwks_refresh,
            self.jwks_min_refetch,
        );
        let mut orgs = vec![self.org_id.clone()];
        for org in self.accepted {
            if !orgs.contains(&org) {
                orgs.push(org);
            }
        }
        // An OpenID Connect ID token's `aud` is the client id (OIDC Core
        // §2); whether SlashID's hosted-login `id_token` says the client or
        // the organization is not known (UPSTREAMS.md §3.8), so both are
        // accepted.
        let mut audiences = orgs.clone();
        audiences.extend(self.oauth_client_id.clone());
        Ok(Client {
            inner: Arc::new(Inner {
                http,
                issuer: trimmed.to_owned(),
                base,
                org_id: self.org_id,
                orgs,
                audiences,
                api_key: self.api_key,
                jwks,
                leeway: self.leeway,
                groups_claim: self.groups_claim,
                remote_check: self.remote_check,
                oauth_client_id: self.oauth_client_id,
                timeout: self.timeout,
                body_limit: self.body_limit,
            }),
        })
    }
}

/// `base` with more path segments, each percent-encoded.
fn join(base: &Url, segments: &[&str]) -> Result<Url, Error> {
    let mut url = base.clone();
    url.path_segments_mut()
        .map_err(|()| Error::new(ErrorKind::InvalidInput))?
        .pop_if_empty()
        .extend(segments);
    Ok(url)
}

/// A verified token: its user and its times.
struct Verified {
    user: User,
    expires_at: SystemTime,
    issued_at: Option<SystemTime>,
}

/// Who a call is made as.
#[derive(Clone, Copy)]
enum As<'a> {
    /// `Authorization: Bearer` (a per-user call).
    User(&'a str),
    /// `SlashID-OrgID` alone (anonymous-person creation).
    Org(&'a str),
    /// `SlashID-OrgID` and `SlashID-API-Key`.
    ApiKey,
    /// Nothing (the token endpoint).
    Nobody,
}

/// A request body.
enum Body<'a> {
    None,
    Json(&'a Value),
    Form(&'a [(&'a str, &'a str)]),
}

/// The per-flow data of a hosted login, sealed in the flow cookie.
#[derive(Serialize, Deserialize)]
struct HostedFlow {
    /// The PKCE verifier.
    #[serde(rename = "v")]
    verifier: String,
    /// The `redirect_uri` sent, to send again with the code.
    #[serde(rename = "r")]
    redirect_uri: String,
}

impl Client {
    /// A client for organization `org_id` on SlashID's production API.
    pub fn new(org_id: &str) -> Result<Self, ConfigError> {
        Self::builder(PRODUCTION_URL, org_id).build()
    }

    /// A builder for another base URL ([`SANDBOX_URL`], the dev server) or
    /// non-default settings.
    pub fn builder(base_url: &str, org_id: &str) -> ClientBuilder {
        ClientBuilder {
            base_url: base_url.to_owned(),
            org_id: org_id.to_owned(),
            accepted: Vec::new(),
            api_key: None,
            timeout: DEFAULT_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            body_limit: DEFAULT_BODY_LIMIT,
            http: None,
            leeway: DEFAULT_LEEWAY,
            groups_claim: DEFAULT_GROUPS_CLAIM.to_owned(),
            remote_check: None,
            jwks_refresh: DEFAULT_JWKS_REFRESH,
            jwks_min_refetch: DEFAULT_JWKS_MIN_REFETCH,
            oauth_client_id: None,
        }
    }

    /// The organization id.
    pub fn org_id(&self) -> &str {
        &self.inner.org_id
    }

    /// The API base URL (also the tokens' issuer).
    pub fn base_url(&self) -> &str {
        &self.inner.issuer
    }

    // ---- local verification ----------------------------------------------

    /// Verifies a user token or token container locally (§3.3) and gives
    /// the grant `Auth::sign_in` turns into the session cookie: for a token
    /// the app received some other way (the SDK's cookie, a Direct-ID
    /// flow). An invalid token is [`ErrorKind::InvalidSession`]; a key set
    /// that cannot be fetched is an outage error.
    pub async fn grant_for_token(&self, token: &SessionToken) -> Result<Grant, Error> {
        let verified = self.verify(token.expose()).await.map_err(jwt_error)?;
        Ok(grant_of(
            token.clone(),
            verified,
            SignInMethod::Other("token".into()),
        ))
    }

    /// The claims of a token container (the SDK's `tokenContainerClaims`),
    /// its signature checked against the key set; `None` for a plain user
    /// token. The inner `user_token` is left out (it is the session token;
    /// [`grant_for_token`](Self::grant_for_token) checks it in full).
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidSession`] for a container that does not verify;
    /// an outage error when the key set cannot be fetched.
    pub async fn token_container_claims(
        &self,
        token: &SessionToken,
    ) -> Result<Option<Map<String, Value>>, Error> {
        let is_container = jwt::peek_claims(token.expose())
            .is_some_and(|claims| claims.contains_key("user_token"));
        if !is_container {
            return Ok(None);
        }
        let inner = &self.inner;
        // As in `verify`: the container's own `iss` and `aud` are not
        // documented, so its signature and times are what is checked.
        let expect = Expect {
            issuer: None,
            audience: None,
            expiry: true,
            leeway: inner.leeway,
            now: SystemTime::now(),
        };
        let mut claims: Map<String, Value> = jwt::verify(&inner.jwks, token.expose(), &expect)
            .await
            .map_err(jwt_error)?;
        claims.remove("user_token");
        Ok(Some(claims))
    }

    /// The groups of a token (the SDK's `getGroups()`), verified locally.
    pub async fn get_groups(&self, token: &SessionToken) -> Result<Vec<String>, Error> {
        let verified = self.verify(token.expose()).await.map_err(jwt_error)?;
        Ok(verified.user.groups)
    }

    async fn verify(&self, token: &str) -> Result<Verified, JwtError> {
        let now = SystemTime::now();
        let inner = &self.inner;
        let peeked = jwt::peek_claims(token);
        let container = peeked
            .as_ref()
            .and_then(|c| c.get("user_token"))
            .and_then(Value::as_str);
        let (bearer, cap) = match container {
            Some(user_token) => {
                // A token container (§3.3): its own `iss` is documented as
                // `slashid` and its `aud` is not documented, so only its
                // signature and times are checked; the user token inside
                // is checked in full.
                let expect = Expect {
                    issuer: None,
                    audience: None,
                    expiry: true,
                    leeway: inner.leeway,
                    now,
                };
                let outer: Map<String, Value> = jwt::verify(&inner.jwks, token, &expect).await?;
                let cap = outer
                    .get("exp")
                    .and_then(Value::as_u64)
                    .map(|s| UNIX_EPOCH + Duration::from_secs(s));
                (user_token.to_owned(), cap)
            }
            None => (token.to_owned(), None),
        };
        let audiences: Vec<&str> = inner.audiences.iter().map(String::as_str).collect();
        let expect = Expect {
            issuer: Some(&inner.issuer),
            audience: Some(&audiences),
            expiry: true,
            leeway: inner.leeway,
            now,
        };
        let claims: Map<String, Value> = jwt::verify(&inner.jwks, &bearer, &expect).await?;
        if claims.contains_key("user_token") {
            return Err(JwtError::Invalid("a container inside a container"));
        }
        let time = |k: &str| {
            claims
                .get(k)
                .and_then(Value::as_u64)
                .map(|s| UNIX_EPOCH + Duration::from_secs(s))
        };
        // `exp` is there: the verifier requires it.
        let Some(mut expires_at) = time("exp") else {
            return Err(JwtError::Invalid("no exp"));
        };
        let issued_at = time("iat");
        if let Some(cap) = cap {
            expires_at = expires_at.min(cap);
        }
        let user = user_from_claims(claims, &inner.groups_claim)
            .ok_or(JwtError::Invalid("no person_id"))?;
        Ok(Verified {
            user,
            expires_at,
            issued_at,
        })
    }

    /// The bearer for SlashID calls: the inner user token of a container
    /// (as the SDK sends it, §3.1), else the token itself. Not verified.
    fn bearer_of(token: &str) -> String {
        jwt::peek_claims(token)
            .and_then(|c| {
                c.get("user_token")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
            })
            .unwrap_or_else(|| token.to_owned())
    }

    // ---- per-user operations (§3.2) --------------------------------------

    /// `POST /token/validate` (the SDK's `validateToken()`): with the API
    /// key when one is configured (the server SDK's way), else as the user.
    pub async fn validate_token(&self, token: &SessionToken) -> Result<TokenValidity, Error> {
        let bearer = Self::bearer_of(token.expose());
        let body = json!({ "token": bearer });
        let who = if self.inner.api_key.is_some() {
            As::ApiKey
        } else {
            As::User(&bearer)
        };
        let value = self
            .call(
                Method::POST,
                &["token", "validate"],
                &[],
                who,
                Body::Json(&body),
            )
            .await?;
        serde_json::from_value(value).map_err(Error::bad_answer)
    }

    /// The SDK's `isAuthenticated()`: a valid token of a person who is not
    /// anonymous. Verified locally, then with [`validate_token`](Self::validate_token).
    pub async fn is_authenticated(&self, token: &SessionToken) -> Result<bool, Error> {
        match self.verify(token.expose()).await {
            Ok(v) if v.user.anonymous => Ok(false),
            Ok(_) => Ok(self.validate_token(token).await?.valid),
            Err(JwtError::Invalid(_)) => Ok(false),
            Err(JwtError::Unavailable(err)) => Err(err),
        }
    }

    /// `POST /token/revoke` (the SDK's `logout()`, used on sign-out). A 400
    /// (already revoked or expired, §3.2) is success.
    pub async fn logout(&self, token: &SessionToken) -> Result<(), Error> {
        let bearer = Self::bearer_of(token.expose());
        let body = json!({ "token": bearer });
        match self
            .call(
                Method::POST,
                &["token", "revoke"],
                &[],
                As::User(&bearer),
                Body::Json(&body),
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(err) if err.status() == Some(StatusCode::BAD_REQUEST) => Ok(()),
            Err(err) => Err(err),
        }
    }

    /// `GET /me`: the person, their organizations and handles.
    pub async fn me(&self, token: &SessionToken) -> Result<Me, Error> {
        let bearer = Self::bearer_of(token.expose());
        let raw = self
            .call(Method::GET, &["me"], &[], As::User(&bearer), Body::None)
            .await?;
        let list = |key: &str| raw.get(key).cloned().unwrap_or(Value::Array(Vec::new()));
        Ok(Me {
            person: raw.get("person").cloned().unwrap_or(Value::Null),
            organizations: serde_json::from_value(list("organizations"))
                .map_err(Error::bad_answer)?,
            handles: serde_json::from_value(list("handles")).map_err(Error::bad_answer)?,
            raw,
        })
    }

    /// The person's handles (the SDK's `getHandles()`, `GET /me`).
    pub async fn get_handles(&self, token: &SessionToken) -> Result<Vec<Handle>, Error> {
        Ok(self.me(token).await?.handles)
    }

    /// The person's organizations (the SDK's `getOrganizations()`, `GET /me`).
    pub async fn get_organizations(
        &self,
        token: &SessionToken,
    ) -> Result<Vec<Organization>, Error> {
        Ok(self.me(token).await?.organizations)
    }

    /// A token for the same person in organization `oid` (the SSR SDK's
    /// `getTokenForOrganization`, `GET /token` with `SlashID-OrgID`), as a
    /// grant: `auth.sign_in(grant)` replaces the session cookie, and the
    /// layer forgets the old organization's session. `oid` must be one of
    /// the accepted organizations ([`ClientBuilder::with_accepted_organizations`]),
    /// else nothing is sent ([`ErrorKind::InvalidInput`]).
    pub async fn token_for_organization(
        &self,
        token: &SessionToken,
        oid: &str,
    ) -> Result<Grant, Error> {
        if !self.inner.orgs.iter().any(|a| a == oid) {
            return Err(Error::invalid_input(
                "an organization this client does not accept",
            ));
        }
        let bearer = Self::bearer_of(token.expose());
        let value = self
            .call_with(
                Method::GET,
                &["token"],
                &[],
                As::User(&bearer),
                Body::None,
                Some(oid),
            )
            .await?;
        let new = value
            .as_str()
            .and_then(SessionToken::new)
            .ok_or_else(|| Error::bad_answer("no token in the answer"))?;
        let verified = self.verify(new.expose()).await.map_err(|err| match err {
            // SlashID's own answer does not verify: a bad answer, not a
            // statement about the session the browser has.
            JwtError::Invalid(reason) => Error::bad_answer(reason),
            JwtError::Unavailable(err) => err,
        })?;
        Ok(grant_of(
            new,
            verified,
            SignInMethod::Other("organization-switch".into()),
        ))
    }

    /// `POST /direct-id` (the SDK's `createDirectID()`): a Direct-ID.
    pub async fn create_direct_id(&self, token: &SessionToken) -> Result<Secret, Error> {
        let bearer = Self::bearer_of(token.expose());
        let value = self
            .call(
                Method::POST,
                &["direct-id"],
                &[],
                As::User(&bearer),
                Body::None,
            )
            .await?;
        value
            .as_str()
            .filter(|s| !s.is_empty())
            .map(Secret::new)
            .ok_or_else(|| Error::bad_answer("no Direct-ID in the answer"))
    }

    /// `GET /attributes/{bucket}` (the SDK's `getBucket(b).get(names)`):
    /// the named attributes, or all of them when `names` is empty.
    pub async fn get_attributes(
        &self,
        token: &SessionToken,
        bucket: &str,
        names: &[&str],
    ) -> Result<Map<String, Value>, Error> {
        let bearer = Self::bearer_of(token.expose());
        let csv = names.join(",");
        let query: &[(&str, &str)] = if names.is_empty() {
            &[]
        } else {
            &[("attributes", &csv)]
        };
        match self
            .call(
                Method::GET,
                &["attributes", bucket],
                query,
                As::User(&bearer),
                Body::None,
            )
            .await?
        {
            Value::Object(map) => Ok(map),
            Value::Null => Ok(Map::new()),
            _ => Err(Error::bad_answer("attributes are not an object")),
        }
    }

    /// `PUT /attributes/{bucket}` (`getBucket(b).set(obj)`).
    pub async fn set_attributes(
        &self,
        token: &SessionToken,
        bucket: &str,
        attributes: &Map<String, Value>,
    ) -> Result<(), Error> {
        let bearer = Self::bearer_of(token.expose());
        let body = Value::Object(attributes.clone());
        self.call(
            Method::PUT,
            &["attributes", bucket],
            &[],
            As::User(&bearer),
            Body::Json(&body),
        )
        .await
        .map(drop)
    }

    /// `DELETE /attributes/{bucket}?attributes=a,b` (`getBucket(b).delete(names)`).
    pub async fn delete_attributes(
        &self,
        token: &SessionToken,
        bucket: &str,
        names: &[&str],
    ) -> Result<(), Error> {
        let bearer = Self::bearer_of(token.expose());
        let csv = names.join(",");
        self.call(
            Method::DELETE,
            &["attributes", bucket],
            &[("attributes", &csv)],
            As::User(&bearer),
            Body::None,
        )
        .await
        .map(drop)
    }

    /// `GET /consent/gdpr` (`getGDPRConsent()`).
    pub async fn get_gdpr_consent(&self, token: &SessionToken) -> Result<Vec<GdprConsent>, Error> {
        self.consent(Method::GET, token, &[], None).await
    }

    /// `PUT /consent/gdpr` (`setGDPRConsent()`): exactly these levels.
    pub async fn set_gdpr_consent(
        &self,
        token: &SessionToken,
        levels: &[&str],
    ) -> Result<Vec<GdprConsent>, Error> {
        self.consent(Method::PUT, token, &[], Some(levels)).await
    }

    /// `POST /consent/gdpr` (`addGDPRConsent()`): these levels too.
    pub async fn add_gdpr_consent(
        &self,
        token: &SessionToken,
        levels: &[&str],
    ) -> Result<Vec<GdprConsent>, Error> {
        self.consent(Method::POST, token, &[], Some(levels)).await
    }

    /// `DELETE /consent/gdpr?consent_levels=a&consent_levels=b`
    /// (`removeGDPRConsent()`).
    pub async fn remove_gdpr_consent(
        &self,
        token: &SessionToken,
        levels: &[&str],
    ) -> Result<(), Error> {
        let query: Vec<(&str, &str)> = levels.iter().map(|l| ("consent_levels", *l)).collect();
        self.consent(Method::DELETE, token, &query, None)
            .await
            .map(drop)
    }

    /// `DELETE /consent/gdpr?deleteAll=true` (`removeGDPRConsentAll()`).
    pub async fn remove_all_gdpr_consent(&self, token: &SessionToken) -> Result<(), Error> {
        self.consent(Method::DELETE, token, &[("deleteAll", "true")], None)
            .await
            .map(drop)
    }

    async fn consent(
        &self,
        method: Method,
        token: &SessionToken,
        query: &[(&str, &str)],
        levels: Option<&[&str]>,
    ) -> Result<Vec<GdprConsent>, Error> {
        let bearer = Self::bearer_of(token.expose());
        let body = levels.map(|l| json!({ "consent_levels": l }));
        let body = body.as_ref().map_or(Body::None, Body::Json);
        let value = self
            .call(method, &["consent", "gdpr"], query, As::User(&bearer), body)
            .await?;
        match value.get("consents") {
            Some(list) => serde_json::from_value(list.clone()).map_err(Error::bad_answer),
            None => Ok(Vec::new()),
        }
    }

    /// `POST /persons/anonymous` (the SSR SDK's `createAnonymousUserToken`,
    /// §3.2): a new anonymous person's grant, optionally in `region`.
    pub async fn create_anonymous_person(&self, region: Option<&str>) -> Result<Grant, Error> {
        let body = match region {
            Some(region) => json!({ "region": region }),
            None => json!({}),
        };
        let org = self.inner.org_id.clone();
        let value = self
            .call(
                Method::POST,
                &["persons", "anonymous"],
                &[],
                As::Org(&org),
                Body::Json(&body),
            )
            .await?;
        let token = value
            .as_str()
            .and_then(SessionToken::new)
            .ok_or_else(|| Error::bad_answer("no token in the answer"))?;
        let verified = self.verify(token.expose()).await.map_err(|err| match err {
            JwtError::Invalid(reason) => Error::bad_answer(reason),
            JwtError::Unavailable(err) => err,
        })?;
        Ok(grant_of(
            token,
            verified,
            SignInMethod::Other("anonymous".into()),
        ))
    }

    /// A server-to-server call with the organization API key (§3.1:
    /// `SlashID-OrgID` and `SlashID-API-Key`), e.g.
    /// `GET /persons/{person_id}/attributes/{bucket}`: `path` is the
    /// segments (each percent-encoded), the answer SlashID's `result`.
    /// Without an API key: [`ErrorKind::InvalidInput`], nothing sent.
    pub async fn api(
        &self,
        method: Method,
        path: &[&str],
        query: &[(&str, &str)],
        body: Option<&Value>,
    ) -> Result<Value, Error> {
        if self.inner.api_key.is_none() {
            return Err(Error::invalid_input("no organization API key configured"));
        }
        let body = body.map_or(Body::None, Body::Json);
        self.call(method, path, query, As::ApiKey, body).await
    }

    /// The token in the SlashID SSR SDK's cookie `@slashid/USER_TOKEN/<oid>`
    /// (§3.4: the name is not URL-encoded, the value is), for apps moving
    /// from SlashID's SDK: verify it with
    /// [`grant_for_token`](Self::grant_for_token) and hand the grant to
    /// `auth.sign_in`, then drop the SDK's cookie with
    /// [`sdk_cookie_removal`](Self::sdk_cookie_removal).
    pub fn sdk_cookie_token(&self, headers: &HeaderMap) -> Option<SessionToken> {
        let name = format!("{SDK_COOKIE_PREFIX}{}", self.inner.org_id);
        headers
            .get_all(http::header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .find(|(n, _)| percent_decode(n).as_deref() == Some(name.as_str()))
            .and_then(|(_, value)| percent_decode(value))
            .and_then(SessionToken::new)
    }

    /// The `Set-Cookie` value that removes the SDK's cookie (§3.4: same
    /// name, `Path=/`, an expiry in the past).
    pub fn sdk_cookie_removal(&self) -> String {
        format!(
            "{SDK_COOKIE_PREFIX}{}=; Path=/; Expires=Thu, 01 Jan 1970 00:00:00 GMT",
            self.inner.org_id
        )
    }

    // ---- transport -------------------------------------------------------

    async fn call(
        &self,
        method: Method,
        segments: &[&str],
        query: &[(&str, &str)],
        who: As<'_>,
        body: Body<'_>,
    ) -> Result<Value, Error> {
        self.call_with(method, segments, query, who, body, None)
            .await
    }

    async fn call_with(
        &self,
        method: Method,
        segments: &[&str],
        query: &[(&str, &str)],
        who: As<'_>,
        body: Body<'_>,
        org_header: Option<&str>,
    ) -> Result<Value, Error> {
        if segments.iter().any(|s| s.is_empty()) {
            return Err(Error::invalid_input("an empty path segment"));
        }
        let inner = &self.inner;
        let mut url = join(&inner.base, segments)?;
        if !query.is_empty() {
            // A query serializer, never concatenation (SECURITY.md T-B3.3).
            url.query_pairs_mut().extend_pairs(query);
        }
        let mut request = inner
            .http
            .request(method, url)
            .timeout(inner.timeout)
            .header(http::header::ACCEPT, "application/json")
            .header("SlashID-SdkVersion", SDK_VERSION);
        let sensitive = |value: &str| {
            let mut value =
                HeaderValue::from_str(value).map_err(|_| Error::new(ErrorKind::InvalidInput))?;
            value.set_sensitive(true);
            Ok::<_, Error>(value)
        };
        match who {
            As::User(token) => {
                request = request.header(
                    http::header::AUTHORIZATION,
                    sensitive(&format!("Bearer {token}"))?,
                );
            }
            As::Org(org) => request = request.header("SlashID-OrgID", org),
            As::ApiKey => {
                let key = inner
                    .api_key
                    .as_ref()
                    .ok_or_else(|| Error::invalid_input("no organization API key configured"))?;
                request = request
                    .header("SlashID-OrgID", inner.org_id.as_str())
                    .header("SlashID-API-Key", sensitive(key.expose())?);
            }
            As::Nobody => {}
        }
        if let Some(org) = org_header {
            request = request.header("SlashID-OrgID", org);
        }
        request = match body {
            Body::None => request,
            Body::Json(value) => request.json(value),
            Body::Form(pairs) => request.form(pairs),
        };
        let Answer {
            status,
            json,
            bytes,
        } = send(request, inner.body_limit).await?;
        classify(status, json, &bytes)
    }

    // ---- hosted login (§3.5) ---------------------------------------------

    fn start(&self, start: &SignInStart<'_>) -> Result<SignInRedirect, Error> {
        let Some(client_id) = self.inner.oauth_client_id.as_deref() else {
            return Err(Error::unsupported());
        };
        if start.provider != HOSTED_LOGIN {
            return Err(Error::unsupported());
        }
        let verifier = random_token();
        let redirect_uri = start.callback_url.to_string();
        let mut url = join(&self.inner.base, &["oauth2", "authorize"])?;
        url.query_pairs_mut()
            .append_pair("redirect_uri", &redirect_uri)
            .append_pair("client_id", client_id)
            .append_pair("response_type", "code")
            .append_pair("state", start.flow.as_str())
            .append_pair("scope", "openid")
            .append_pair("code_challenge", &pkce_challenge(&verifier))
            .append_pair("code_challenge_method", "S256");
        if start.prompt == Prompt::Login {
            // OpenID Connect Core §3.1.2.1: re-authenticate (step-up).
            url.query_pairs_mut().append_pair("prompt", "login");
        }
        let data = FlowData::new(&HostedFlow {
            verifier,
            redirect_uri,
        })?;
        Ok(SignInRedirect::new(url, Correlation::State).with_data(data))
    }

    /// The code exchange (`POST /oauth2/tokens`): the `id_token`.
    async fn exchange(&self, code: &str, flow: &HostedFlow) -> Result<SessionToken, Error> {
        let client_id = self
            .inner
            .oauth_client_id
            .as_deref()
            .ok_or_else(Error::unsupported)?;
        let form = [
            ("client_id", client_id),
            ("code", code),
            ("code_verifier", flow.verifier.as_str()),
            ("grant_type", "authorization_code"),
            ("redirect_uri", flow.redirect_uri.as_str()),
        ];
        let value = self
            .call(
                Method::POST,
                &["oauth2", "tokens"],
                &[],
                As::Nobody,
                Body::Form(&form),
            )
            .await?;
        value
            .get("id_token")
            .and_then(Value::as_str)
            .and_then(SessionToken::new)
            .ok_or_else(|| Error::bad_answer("no id_token in the answer"))
    }

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
        if flow.correlation != Correlation::State {
            return Ok(failed(
                "a flow this upstream does not start",
                FlowRejection::MissingFlow,
            ));
        }
        if params.has_duplicates() {
            return Ok(failed(
                "duplicate landing parameters",
                FlowRejection::MalformedLanding,
            ));
        }
        let single = |name| params.single(name).ok().flatten();
        if let Some(error) = single("error") {
            // The provider's text is not shown (T-B4).
            let reason = if error == "access_denied" {
                FlowRejection::ConsentDenied
            } else {
                FlowRejection::UpstreamRefused
            };
            return Ok(failed("slashid refused the sign-in", reason));
        }
        let Some(code) = single("code").filter(|c| plausible(c)) else {
            return Ok(failed(
                "no or a malformed code on the landing",
                FlowRejection::MalformedLanding,
            ));
        };
        let data: HostedFlow = flow.data.get()?;
        let token = match self.exchange(code, &data).await {
            Ok(token) => token,
            Err(err) if err.status().is_some_and(|s| s.is_client_error()) => {
                tracing::info!(error = %err, "authgate: slashid refused a code");
                return Ok(failed(
                    "slashid refused the code",
                    FlowRejection::ReplayedGrant,
                ));
            }
            Err(err) => return Err(err),
        };
        match self.verify(token.expose()).await {
            Ok(verified) => Ok(CallbackOutcome::SignedIn(grant_of(
                token,
                verified,
                SignInMethod::OAuth(HOSTED_LOGIN.to_owned()),
            ))),
            Err(JwtError::Invalid(reason)) => {
                tracing::warn!(reason, "authgate: slashid's id_token did not verify");
                Ok(failed(
                    "the id_token did not verify",
                    FlowRejection::UpstreamRefused,
                ))
            }
            Err(JwtError::Unavailable(err)) => Err(err),
        }
    }

    async fn resolve(&self, session: &Session) -> Result<Lookup, Error> {
        let verified = match self.verify(session.token.expose()).await {
            Ok(v) => v,
            Err(JwtError::Invalid(reason)) => {
                tracing::debug!(reason, "authgate: a slashid token did not verify");
                return Ok(Lookup::Invalid);
            }
            Err(JwtError::Unavailable(err)) => return Err(err),
        };
        let mut recheck_at = verified.expires_at;
        if let Some(interval) = self.inner.remote_check {
            match self.validate_token(&session.token).await {
                Ok(validity) if validity.valid => {}
                Ok(validity) => {
                    tracing::debug!(
                        reason = validity.invalidity_reason.as_deref().unwrap_or(""),
                        "authgate: slashid says the token is not valid"
                    );
                    return Ok(Lookup::Invalid);
                }
                Err(err) if err.is_invalid_session() => return Ok(Lookup::Invalid),
                Err(err) => return Err(err),
            }
            recheck_at = recheck_at.min(SystemTime::now() + interval);
        }
        let mut valid = Valid::new(verified.user)
            .with_expires_at(verified.expires_at)
            .with_recheck_at(recheck_at);
        if let Some(at) = verified.issued_at {
            valid = valid.with_issued_at(at);
        }
        Ok(Lookup::Valid(valid))
    }
}

fn grant_of(token: SessionToken, verified: Verified, method: SignInMethod) -> Grant {
    let session = Session::new(token).with_expires_at(verified.expires_at);
    Grant::from_session(session, method).with_user(verified.user)
}

fn jwt_error(err: JwtError) -> Error {
    match err {
        JwtError::Invalid(reason) => Error::invalid_session().with_source(reason),
        JwtError::Unavailable(err) => err,
    }
}

/// `%XX` decoding (the SDK writes the value with `encodeURIComponent`).
fn percent_decode(value: &str) -> Option<String> {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Maps verified claims to the neutral [`User`] (§3.3); `None` without a
/// `person_id` (or `sub`).
fn user_from_claims(claims: Map<String, Value>, groups_claim: &str) -> Option<User> {
    let text = |k: &str| {
        claims
            .get(k)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
    };
    let id = text("person_id").or_else(|| text("sub"))?;
    let mut user = User::new(id, Value::Null);
    user.org = text("oid");
    user.anonymous = text("person_type").as_deref() == Some("anonymous");
    user.provider = Some(HOSTED_LOGIN.to_owned());
    // `getGroups()` returns the raw claim, which may be absent (§3.3).
    user.groups = claims
        .get(groups_claim)
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    let handle_of = |kind: &str| {
        claims
            .get("authentications")
            .and_then(Value::as_array)?
            .iter()
            .filter_map(|a| a.get("handle"))
            .find(|h| h.get("type").and_then(Value::as_str) == Some(kind))
            .and_then(|h| h.get("value").and_then(Value::as_str))
            .map(str::to_owned)
    };
    user.email = handle_of("email_address");
    user.phone = handle_of("phone_number");
    user.name = handle_of("username");
    user.raw = RawJson::new(&Value::Object(claims));
    Some(user)
}

/// Turns an answer into its `result` or an [`Error`] (§3.1, §3.6): a 2xx's
/// `result` (`null` for an empty body, a 204); a 4xx's `errors` become the
/// error's items (`code` = `httpcode`, `message`). Only a 401/403 whose
/// message says the session is over ([`SESSION_OVER`]) is
/// [`ErrorKind::InvalidSession`] (SECURITY.md R1); a body that is not JSON
/// is a decode error on a 2xx and says nothing on a 4xx.
fn classify(status: StatusCode, json: bool, bytes: &[u8]) -> Result<Value, Error> {
    if status.is_server_error() {
        return Err(Error::from_status(status));
    }
    let success = status.is_success();
    if success && bytes.is_empty() {
        return Ok(Value::Null);
    }
    let parsed = if json { strict_json(bytes).ok() } else { None };
    let Some(value) = parsed else {
        return Err(if success {
            Error::bad_answer("not a JSON answer")
        } else {
            Error::from_status(status)
        });
    };
    if success {
        return Ok(match value {
            Value::Object(mut map) if map.contains_key("result") || map.contains_key("meta") => {
                map.remove("result").unwrap_or(Value::Null)
            }
            // The token endpoint answers plain OAuth JSON (§3.5).
            other => other,
        });
    }
    let items: Vec<UpstreamErrorItem> = value
        .get("errors")
        .and_then(Value::as_array)
        .map(|errors| {
            errors
                .iter()
                .filter_map(|e| {
                    let code = e.get("httpcode").map(|c| match c {
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    });
                    let message = e.get("message").and_then(Value::as_str).map(str::to_owned);
                    (code.is_some() || message.is_some()).then_some(UpstreamErrorItem {
                        origin: None,
                        code,
                        message,
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    let over = matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN)
        && items.iter().any(|i| {
            i.message
                .as_deref()
                .is_some_and(|m| SESSION_OVER.iter().any(|s| m.eq_ignore_ascii_case(s)))
        });
    let kind = if over {
        ErrorKind::InvalidSession
    } else {
        ErrorKind::Status(status)
    };
    Err(Error::new(kind).with_items(items))
}

fn failed(message: &str, rejection: FlowRejection) -> CallbackOutcome {
    CallbackOutcome::Failed {
        status: StatusCode::BAD_REQUEST,
        message: message.to_owned(),
        rejection: Some(rejection),
        landing: LandingKind::OAuth,
    }
}

/// A landing value must look like a code before it is sent anywhere
/// (SECURITY.md T-B3.5).
fn plausible(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= MAX_LANDING_VALUE
        && value.bytes().all(|b| b.is_ascii_graphic())
}

/// An opt-in route layer for apps moving from SlashID's SSR SDK (§3.4): a
/// page request (`GET`/`HEAD`) that carries the SDK's cookie
/// `@slashid/USER_TOKEN/<oid>` and no authgate session has the SDK's token
/// verified locally ([`Client::grant_for_token`]) and turned into
/// authgate's session (`Auth::sign_in`); the answer is a 303 back to the
/// same URL, which also removes the SDK's cookie. An invalid SDK token is
/// removed and the request goes on signed out; during a key-set outage the
/// request goes on untouched (the SDK cookie is kept for the next try).
///
/// Put it inside the [`AuthLayer`](crate::AuthLayer) (it needs the
/// request's [`Auth`](crate::Auth)):
///
/// ```no_run
/// # fn run(client: authgate::slashid::Client, config: authgate::AuthConfig) {
/// use authgate::{AuthLayer, slashid::SdkCookieMigration};
/// use axum::{Router, routing::get};
///
/// let app: Router = Router::new()
///     .route("/", get(|| async { "home" }))
///     .layer(SdkCookieMigration::new(client.clone()));
/// let app = AuthLayer::new(config, client).layer(app);
/// # let _ = app; }
/// ```
///
/// A request without the SDK's cookie costs one substring search of its
/// `Cookie` header.
#[derive(Clone, Debug)]
pub struct SdkCookieMigration {
    client: Client,
}

impl SdkCookieMigration {
    /// The layer for `client`'s organization.
    pub fn new(client: Client) -> Self {
        Self { client }
    }
}

impl<S> tower_layer::Layer<S> for SdkCookieMigration {
    type Service = SdkCookieMigrationService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        SdkCookieMigrationService {
            inner,
            client: self.client.clone(),
        }
    }
}

/// The service of [`SdkCookieMigration`].
#[derive(Clone, Debug)]
pub struct SdkCookieMigrationService<S> {
    inner: S,
    client: Client,
}

impl<S, B> tower_service::Service<http::Request<B>> for SdkCookieMigrationService<S>
where
    S: tower_service::Service<
            http::Request<B>,
            Response = axum::response::Response,
            Error = std::convert::Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = axum::response::Response;
    type Error = std::convert::Infallible;
    type Future = BoxFuture<'static, Result<axum::response::Response, std::convert::Infallible>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), std::convert::Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        // The clone that was made ready runs the request (tower's rule).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let client = self.client.clone();
        Box::pin(async move {
            let page = matches!(*request.method(), Method::GET | Method::HEAD);
            let carries = request
                .headers()
                .get_all(http::header::COOKIE)
                .iter()
                .any(|v| v.as_bytes().windows(10).any(|w| w == b"USER_TOKEN"));
            let sdk_token = (page && carries)
                .then(|| client.sdk_cookie_token(request.headers()))
                .flatten();
            let auth = crate::Auth::from_request(&request);
            let (Some(sdk_token), Some(auth)) = (sdk_token, auth) else {
                return inner.call(request).await;
            };
            if auth.token().is_some() {
                return inner.call(request).await;
            }
            let removal = HeaderValue::from_str(&client.sdk_cookie_removal()).ok();
            match client.grant_for_token(&sdk_token).await {
                Ok(grant) => {
                    if let Err(err) = auth.sign_in(grant) {
                        tracing::warn!(error = %err, "authgate: the SlashID SDK session could not be adopted");
                        return inner.call(request).await;
                    }
                    let back = request
                        .uri()
                        .path_and_query()
                        .map_or("/", http::uri::PathAndQuery::as_str);
                    // `//host` or `/\host` would leave the site (SECURITY.md T-A1).
                    let back = if back.starts_with("//") || back.starts_with("/\\") {
                        "/"
                    } else {
                        back
                    }
                    .to_owned();
                    let mut response = axum::response::Redirect::to(&back).into_response();
                    if let Some(removal) = removal {
                        response
                            .headers_mut()
                            .append(http::header::SET_COOKIE, removal);
                    }
                    Ok(response)
                }
                Err(err) if err.is_invalid_session() => {
                    let mut response = inner.call(request).await?;
                    if let Some(removal) = removal {
                        response
                            .headers_mut()
                            .append(http::header::SET_COOKIE, removal);
                    }
                    Ok(response)
                }
                Err(_) => inner.call(request).await,
            }
        })
    }
}

impl Upstream for Client {
    /// Plain storage (the cookie holds the JWT), hosted login when
    /// configured, sign-out of this session only, tombstones until the
    /// token's `exp` (a revoked JWT still verifies locally).
    fn capabilities(&self) -> Capabilities {
        let providers: &[&str] = if self.inner.oauth_client_id.is_some() {
            &[HOSTED_LOGIN]
        } else {
            &[]
        };
        Capabilities::new()
            .with_providers(providers.iter().copied())
            .with_sign_out_scopes(&[SignOutScope::This])
            .with_revocation(Revocation::UntilExpiry)
    }

    fn lookup<'a>(&'a self, session: &'a Session) -> BoxFuture<'a, Result<Lookup, Error>> {
        Box::pin(self.resolve(session))
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

    /// `POST /token/revoke` (§3.2).
    fn sign_out<'a>(
        &'a self,
        session: &'a Session,
        scope: SignOutScope,
        _after: &'a Url,
    ) -> BoxFuture<'a, Result<SignOutOutcome, Error>> {
        Box::pin(async move {
            if scope != SignOutScope::This {
                return Err(Error::unsupported());
            }
            self.logout(&session.token).await?;
            Ok(SignOutOutcome::Done)
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn errors_keep_slashid_codes_and_only_session_over_is_invalid() {
        let body = br#"{"errors":[{"httpcode":409,"message":"person exists"}]}"#;
        let err = classify(StatusCode::CONFLICT, true, body).unwrap_err();
        assert_eq!(err.code(), Some("409"));
        assert_eq!(err.message(), Some("person exists"));
        assert!(!err.is_invalid_session());
        let body = br#"{"errors":[{"httpcode":401,"message":"authentication has expired"}]}"#;
        assert!(
            classify(StatusCode::UNAUTHORIZED, true, body)
                .unwrap_err()
                .is_invalid_session()
        );
        // The same message on a 404 or a 429 says nothing.
        assert!(
            !classify(StatusCode::NOT_FOUND, true, body)
                .unwrap_err()
                .is_invalid_session()
        );
        assert!(
            classify(StatusCode::TOO_MANY_REQUESTS, true, body)
                .unwrap_err()
                .is_transient()
        );
        assert!(
            classify(StatusCode::OK, false, b"<html>")
                .unwrap_err()
                .is_transient()
        );
        assert_eq!(
            classify(StatusCode::OK, true, br#"{"result":{"valid":true}}"#).unwrap(),
            json!({"valid": true})
        );
        assert_eq!(
            classify(StatusCode::NO_CONTENT, false, b"").unwrap(),
            Value::Null
        );
    }

    #[test]
    fn claims_map_to_the_neutral_user() {
        let claims = json!({
            "person_id": "p1", "oid": "o1", "sub": "s", "exp": 2_000_000_000u64, "iat": 1_000_000_000u64,
            "first_token": true, "person_type": "regular", "roles": ["admin", 3, "ops"],
            "authenticated_methods": ["email_link"],
            "authentications": [{"handle": {"type": "email_address", "value": "a@b.c"}, "method": "email_link", "timestamp": "2024-01-01T00:00:00Z"}]
        });
        let Value::Object(map) = claims else { panic!() };
        let user = user_from_claims(map, "roles").unwrap();
        assert_eq!(user.id, "p1");
        assert_eq!(user.org.as_deref(), Some("o1"));
        assert_eq!(user.groups, ["admin", "ops"]);
        assert_eq!(user.email.as_deref(), Some("a@b.c"));
        assert!(!user.anonymous);
        let claims = UserClaims::of(&user).unwrap();
        assert!(claims.first_token);
        assert_eq!(claims.authenticated_methods, ["email_link"]);
        assert_eq!(
            claims.authentications[0].method.as_deref(),
            Some("email_link")
        );
        let issued = UNIX_EPOCH + Duration::from_secs(1_000_000_000);
        assert!(claims.is_recent(Duration::from_secs(60), Some("email_link"), issued));
        assert!(!claims.is_recent(Duration::from_secs(60), Some("webauthn"), issued));
        assert!(!claims.is_recent(
            Duration::from_secs(60),
            None,
            issued + Duration::from_secs(61)
        ));
    }

    #[test]
    fn the_sdk_cookie_is_found_by_its_decoded_name() {
        let client = Client::builder("http://127.0.0.1:1", "org1")
            .build()
            .unwrap();
        let mut headers = HeaderMap::new();
        headers.insert(
            http::header::COOKIE,
            HeaderValue::from_static("a=b; @slashid/USER_TOKEN/org1=x%2Ey.z; c=d"),
        );
        assert_eq!(client.sdk_cookie_token(&headers).unwrap().expose(), "x.y.z");
        headers.insert(
            http::header::COOKIE,
            HeaderValue::from_static("%40slashid%2FUSER_TOKEN%2Forg2=t"),
        );
        assert!(client.sdk_cookie_token(&headers).is_none());
    }
}
