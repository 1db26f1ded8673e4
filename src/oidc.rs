//! The OpenID Connect upstream: any OpenID Provider (Keycloak, Auth0,
//! Zitadel, Okta, Google, Ory, Logto, …) as authgate's upstream, through
//! discovery, the authorization code flow with PKCE, a sealed token set in
//! the session cookie that is refreshed before it expires, RP-initiated
//! logout, token revocation and back-channel logout.
//!
//! ```no_run
//! # fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use authgate::{AuthConfig, AuthLayer, oidc};
//!
//! // Keycloak: the realm's URL is the issuer.
//! let keycloak = oidc::Client::builder("https://sso.example/realms/acme", "my-app")
//!     .with_client_secret("the client secret")
//!     .with_scopes(&["openid", "email", "profile"])
//!     .with_groups_claim("realm_access.roles")
//!     .build()?;
//! // Auth0: the issuer ends with `/`; `offline_access` asks for a refresh token.
//! let auth0 = oidc::Client::builder("https://acme.eu.auth0.com/", "client-id")
//!     .with_client_secret("the client secret")
//!     .with_client_auth(oidc::ClientAuth::Post)
//!     .with_scopes(&["openid", "email", "profile", "offline_access"])
//!     .build()?;
//! # let _ = auth0;
//! let layer = AuthLayer::new(AuthConfig::new("https://app.example")?, keycloak);
//! # let _ = layer;
//! # Ok(()) }
//! ```
//!
//! Register `{origin}{prefix}/callback` (`https://app.example/auth/callback`)
//! as a redirect URI, the after-sign-out page (`{origin}/` by default) as a
//! post-logout redirect URI, and `{origin}{prefix}/backchannel-logout` as
//! the back-channel logout URI. The sign-in route is
//! `{prefix}/signin/oidc` ([`ClientBuilder::with_provider_name`]).
//!
//! # Discovery (OpenID Connect Discovery 1.0)
//!
//! `{issuer}/.well-known/openid-configuration` is fetched on first use (or
//! by [`Client::metadata`], to fail at start-up), kept, and fetched again
//! when older than [`ClientBuilder::with_discovery_refresh`] (default 1 h).
//! A failed fetch keeps the last good document; without one, it is an
//! outage (503 pages, cookies kept) and the next fetch waits 1 s, then 2 s,
//! 4 s, … up to 60 s. The document's `issuer` must equal the configured
//! issuer exactly (§4.3; a trailing `/` counts), and every endpoint must
//! be `https` when the issuer is. The key set (`jwks_uri`) goes through
//! authgate's JWT verifier: the algorithm comes from the key, never the
//! token (RS256, PS256, ES256, EdDSA, …; `alg: none` and HMAC are refused),
//! and an unknown `kid` refetches the set once (key rotation).
//!
//! # Sign-in (OpenID Connect Core 1.0 §3.1; RFC 6749 §4.1; RFC 7636; RFC 9207)
//!
//! - **Start**: the code flow with PKCE S256, `state` = the core's flow id
//!   ([`Correlation::State`]: one sealed flow cookie per sign-in, so several
//!   tabs work), a fresh `nonce` (32 random bytes) and the verifier in the
//!   flow's sealed data; `prompt=login` from `?prompt=login` and `max_age`
//!   from `?max_age=` on the start route.
//! - **Callback**: the RFC 9207 `iss` parameter must equal the issuer when
//!   present, and must be present when the provider advertises
//!   `authorization_response_iss_parameter_supported` (mix-up defence, RFC
//!   9700 §4.4); a provider `error` becomes one of authgate's fixed
//!   messages (its text goes to the log only, SECURITY.md T-B4); then one
//!   code exchange with the verifier.
//! - **The ID token** (§3.1.3.7) is verified: signature with the provider's
//!   key, `iss` = the issuer, `aud` contains the client id, `azp` = the
//!   client id when present (required with several audiences), `exp` (with
//!   [`ClientBuilder::with_leeway`], default 30 s), `iat` not in the future
//!   and at most 5 minutes old, `nonce` = the flow's (compared in constant
//!   time), `at_hash` = the access token's hash when present (§3.1.3.8,
//!   the hash of the ID token's algorithm), `auth_time` within `max_age`
//!   when one was asked, and not before the flow started after
//!   `prompt=login`.
//! - **The user** ([`User`]): `sub` → [`User::id`], `email`,
//!   `email_verified`, `name`, `picture`, `phone_number` → [`User::phone`],
//!   `auth_time` → [`User::auth_time`] (seconds since the epoch), the claim
//!   of [`ClientBuilder::with_groups_claim`] (default `groups`; a dotted
//!   path such as `realm_access.roles` reaches into objects) →
//!   [`User::groups`], the provider name → [`User::provider`], every claim
//!   in [`User::raw`]. With [`ClientBuilder::with_userinfo`], the userinfo
//!   endpoint's claims are merged over them (§5.3; its `sub` must equal
//!   the ID token's, §5.3.2).
//!
//! # The session
//!
//! The cookie holds the whole token set sealed ([`SessionStorage::Sealed`]:
//! AES-256-GCM with the app key; chunked over ~3,800 bytes, and a sign-in
//! whose tokens exceed the cookie ceiling fails with a clear page,
//! SECURITY.md T-C4): the access token, the ID token, the refresh token
//! and the access token's expiry (`expires_in`).
//!
//! **A lookup** (only on a cache miss) verifies the kept ID token's
//! signature, `iss` and `aud` again against the key set (no network while
//! the set is cached) but not its `exp`, which bounds its acceptance at
//! sign-in, not the session: so a session is bound to a token the provider
//! signed even if the app key leaks, and a key the provider withdrew signs
//! its sessions out. The user comes from its claims (and userinfo when
//! configured, one call per lookup). The answer is cached until the
//! access token's expiry minus [`ClientBuilder::with_refresh_margin`]
//! (default 60 s), with `sid` as the session id (back-channel logout) and
//! `auth_time` (else `iat`) as the issue time (a back-channel logout by
//! `sub` ends the sessions signed in before it).
//!
//! **Refresh** (§12; RFC 6749 §6): a lookup at or after that point with a
//! refresh token refreshes it (`grant_type=refresh_token`) and hands the
//! new token set to the core, which refreshes once per session under any
//! concurrency, sets the same new cookie on every waiting request, and
//! serves an old cookie inside a short successor window with the new
//! cookie (SECURITY.md R10). A new ID token is verified like the first
//! (without `nonce`; `sub` must not change); without one the old one is
//! kept, as is the old refresh token when none comes back. Without a
//! refresh token, the session ends with the access token.
//!
//! **What signs out** (SECURITY.md R1): only a definitive answer. A refresh
//! refused with `invalid_grant` signs the user out once the access token
//! has expired; before that it is an outage, and the cookie is kept
//! (another instance may have rotated the token, and the browser brings
//! the new cookie next, SEAM.md §4.3). A network failure, a timeout, a
//! 5xx, another 4xx (`invalid_client` is a configuration problem) or a
//! key-set outage never signs anyone out.
//!
//! # Sign-out
//!
//! `POST {prefix}/signout` ends this browser's session
//! ([`SignOutScope::This`]): the refresh token (else the access token) is
//! revoked at the `revocation_endpoint` when there is one (RFC 7009;
//! failures are logged, never fatal), and with an `end_session_endpoint`
//! the browser goes there (OpenID Connect RP-Initiated Logout 1.0 §2) with
//! `id_token_hint`, `client_id` and `post_logout_redirect_uri` = the
//! validated, absolute `return_to` of the sign-out (or
//! [`ClientBuilder::with_post_logout_redirect`]), which must be registered
//! at the provider. The layer tombstones the session locally until its
//! access token expires ([`Revocation::UntilExpiry`]).
//!
//! **Back-channel logout** (OpenID Connect Back-Channel Logout 1.0 §2.4,
//! §2.6): the logout token's signature, `iss`, `aud`, `iat` (not in the
//! future, at most 10 minutes old), `exp` when present, `events` holding
//! `http://schemas.openid.net/event/backchannel-logout`, `sid` or `sub`,
//! no `nonce`, and a `typ` header of `logout+jwt` (or `JWT`, or none) are
//! checked; the sessions it names are then revoked by the core.

use std::fmt;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use http::{HeaderValue, StatusCode};
use jsonwebtoken::Algorithm;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use url::Url;

use crate::error::{ConfigError, Error, UpstreamErrorItem};
use crate::events::{FlowRejection, SignInMethod};
use crate::upstream::jwt::{self, Expect, Jwks, JwtError};
use crate::upstream::wire::{pkce_challenge, random_token, send};
use crate::upstream::{
    BoxFuture, CallbackOutcome, CallbackParams, Capabilities, Correlation, FlowData, FlowRecord,
    Grant, LandingKind, Lookup, Prompt, RawJson, Revocation, Secret, Session, SessionRevocation,
    SessionStorage, SessionToken, SignInRedirect, SignInStart, SignOutOutcome, SignOutScope,
    Upstream, User, Valid,
};

/// The default provider name: the sign-in route is `{prefix}/signin/oidc`.
pub const DEFAULT_PROVIDER: &str = "oidc";
/// The default scopes (OpenID Connect Core §5.4).
pub const DEFAULT_SCOPES: &[&str] = &["openid", "email", "profile"];
/// The default name of the groups claim.
pub const DEFAULT_GROUPS_CLAIM: &str = "groups";
/// The event a back-channel logout token carries (Back-Channel Logout
/// 1.0 §2.4).
pub const BACKCHANNEL_LOGOUT_EVENT: &str = "http://schemas.openid.net/event/backchannel-logout";

const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const DEFAULT_BODY_LIMIT: usize = 256 * 1024;
const DEFAULT_LEEWAY: Duration = Duration::from_secs(30);
const DEFAULT_REFRESH_MARGIN: Duration = Duration::from_secs(60);
const DEFAULT_DISCOVERY_REFRESH: Duration = Duration::from_secs(3600);
const DEFAULT_JWKS_REFRESH: Duration = Duration::from_secs(3600);
const DEFAULT_JWKS_MIN_REFETCH: Duration = Duration::from_secs(30);
/// The first wait after a failed discovery; doubled per failure.
const DISCOVERY_BACKOFF: Duration = Duration::from_secs(1);
const DISCOVERY_BACKOFF_MAX: Duration = Duration::from_secs(60);
/// How old an ID token may be when it arrives from the token endpoint.
const MAX_ID_TOKEN_AGE: Duration = Duration::from_secs(300);
/// How old a back-channel logout token may be.
const MAX_LOGOUT_TOKEN_AGE: Duration = Duration::from_secs(600);
/// The longest landing value sent anywhere (SECURITY.md T-B3.5).
const MAX_LANDING_VALUE: usize = 4096;

/// How the client authenticates at the token and revocation endpoints
/// (OpenID Connect Core §9; RFC 6749 §2.3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum ClientAuth {
    /// `client_secret_basic`: HTTP Basic with the form-urlencoded id and
    /// secret (RFC 6749 §2.3.1). The default with a secret.
    #[default]
    Basic,
    /// `client_secret_post`: `client_id` and `client_secret` in the form.
    Post,
    /// `none`: a public client, `client_id` in the form; PKCE is its
    /// proof. The default without a secret.
    None,
}

/// The provider's discovery document (OpenID Connect Discovery 1.0 §3),
/// the fields authgate uses.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Metadata {
    /// `issuer`: equal to the configured issuer.
    pub issuer: String,
    /// `authorization_endpoint`.
    pub authorization_endpoint: Url,
    /// `token_endpoint`.
    pub token_endpoint: Url,
    /// `jwks_uri`.
    pub jwks_uri: Url,
    /// `userinfo_endpoint`.
    pub userinfo_endpoint: Option<Url>,
    /// `end_session_endpoint` (RP-Initiated Logout 1.0 §2.1).
    pub end_session_endpoint: Option<Url>,
    /// `revocation_endpoint` (RFC 8414 §2, RFC 7009).
    pub revocation_endpoint: Option<Url>,
    /// `authorization_response_iss_parameter_supported` (RFC 9207 §3).
    pub iss_parameter_supported: bool,
    /// `backchannel_logout_supported` (Back-Channel Logout 1.0 §2.1).
    pub backchannel_logout_supported: bool,
}

impl Metadata {
    /// Reads a discovery document for `issuer`: `issuer` must be equal,
    /// the endpoints absolute `http(s)` URLs (`https` when the issuer is).
    fn parse(value: &Value, issuer: &str) -> Result<Self, Error> {
        let text = |key: &str| value.get(key).and_then(Value::as_str);
        if text("issuer") != Some(issuer) {
            return Err(Error::bad_answer(
                "the discovery document names another issuer",
            ));
        }
        let secure = issuer.starts_with("https://");
        let endpoint = |key: &'static str| -> Result<Option<Url>, Error> {
            let Some(raw) = value.get(key) else {
                return Ok(None);
            };
            let url = raw
                .as_str()
                .and_then(|s| Url::parse(s).ok())
                .filter(|u| match u.scheme() {
                    "https" => true,
                    "http" => !secure,
                    _ => false,
                })
                .filter(|u| u.host().is_some() && u.fragment().is_none())
                .ok_or_else(|| {
                    Error::bad_answer(format!("a bad {key} in the discovery document"))
                })?;
            Ok(Some(url))
        };
        let required = |key: &'static str| {
            endpoint(key)?
                .ok_or_else(|| Error::bad_answer(format!("no {key} in the discovery document")))
        };
        let flag = |key: &str| value.get(key).and_then(Value::as_bool) == Some(true);
        Ok(Self {
            issuer: issuer.to_owned(),
            authorization_endpoint: required("authorization_endpoint")?,
            token_endpoint: required("token_endpoint")?,
            jwks_uri: required("jwks_uri")?,
            userinfo_endpoint: endpoint("userinfo_endpoint")?,
            end_session_endpoint: endpoint("end_session_endpoint")?,
            revocation_endpoint: endpoint("revocation_endpoint")?,
            iss_parameter_supported: flag("authorization_response_iss_parameter_supported"),
            backchannel_logout_supported: flag("backchannel_logout_supported"),
        })
    }
}

/// A discovery document with its key set.
struct Discovered {
    metadata: Metadata,
    jwks: Arc<Jwks>,
    fetched_at: Instant,
}

/// The backoff of discovery fetches, behind the single-flight lock.
#[derive(Default)]
struct Backoff {
    failures: u32,
    retry_at: Option<Instant>,
}

/// A client for one OpenID Provider. Cheap to clone.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    issuer: String,
    discovery_url: Url,
    client_id: String,
    secret: Option<Secret>,
    auth: ClientAuth,
    scope: String,
    groups_claim: String,
    userinfo: bool,
    provider: String,
    leeway: Duration,
    refresh_margin: Duration,
    timeout: Duration,
    body_limit: usize,
    discovery_refresh: Duration,
    jwks_refresh: Duration,
    jwks_min_refetch: Duration,
    post_logout_redirect: Option<Url>,
    discovered: RwLock<Option<Arc<Discovered>>>,
    flight: tokio::sync::Mutex<Backoff>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("oidc::Client")
            .field("issuer", &self.inner.issuer)
            .field("client_id", &self.inner.client_id)
            .field(
                "client_secret",
                &self.inner.secret.as_ref().map(|_| "<redacted>"),
            )
            .field("client_auth", &self.inner.auth)
            .field("provider", &self.inner.provider)
            .finish_non_exhaustive()
    }
}

/// Builds a [`Client`]: [`Client::builder`].
#[must_use]
pub struct ClientBuilder {
    issuer: String,
    client_id: String,
    secret: Option<Secret>,
    auth: Option<ClientAuth>,
    scopes: Vec<String>,
    groups_claim: String,
    userinfo: bool,
    provider: String,
    leeway: Duration,
    refresh_margin: Duration,
    timeout: Duration,
    connect_timeout: Duration,
    body_limit: usize,
    http: Option<reqwest::Client>,
    discovery_refresh: Duration,
    jwks_refresh: Duration,
    jwks_min_refetch: Duration,
    post_logout_redirect: Option<String>,
}

impl fmt::Debug for ClientBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("oidc::ClientBuilder")
            .field("issuer", &self.issuer)
            .field("client_id", &self.client_id)
            .field("client_secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .finish_non_exhaustive()
    }
}

impl ClientBuilder {
    /// The client secret of a confidential client. Without one the client
    /// is public ([`ClientAuth::None`]).
    pub fn with_client_secret(mut self, secret: &str) -> Self {
        self.secret = Some(Secret::new(secret));
        self
    }

    /// How the client authenticates. Default: [`ClientAuth::Basic`] with a
    /// secret, [`ClientAuth::None`] without.
    pub fn with_client_auth(mut self, auth: ClientAuth) -> Self {
        self.auth = Some(auth);
        self
    }

    /// The scopes asked for; `openid` is added when missing. Default
    /// [`DEFAULT_SCOPES`]. Add `offline_access` where the provider wants it
    /// for a refresh token (Auth0, Okta).
    pub fn with_scopes(mut self, scopes: &[&str]) -> Self {
        self.scopes = scopes.iter().map(|s| (*s).to_owned()).collect();
        self
    }

    /// The claim holding the groups or roles; a dotted path (`realm_access.roles`)
    /// reaches into objects when no claim has the whole name. Default
    /// [`DEFAULT_GROUPS_CLAIM`].
    pub fn with_groups_claim(mut self, claim: &str) -> Self {
        claim.clone_into(&mut self.groups_claim);
        self
    }

    /// Merges the userinfo endpoint's claims into the user, at sign-in and
    /// at every lookup (one call per cache miss). Default: off, the ID
    /// token's claims only.
    pub fn with_userinfo(mut self, on: bool) -> Self {
        self.userinfo = on;
        self
    }

    /// The provider name in `{prefix}/signin/{name}` and [`User::provider`].
    /// Default [`DEFAULT_PROVIDER`].
    pub fn with_provider_name(mut self, name: &str) -> Self {
        name.clone_into(&mut self.provider);
        self
    }

    /// Clock skew allowed on `exp`, `iat` and `nbf`. Default 30 s.
    pub fn with_leeway(mut self, leeway: Duration) -> Self {
        self.leeway = leeway;
        self
    }

    /// How long before the access token expires the session is refreshed
    /// (when it has a refresh token). Default 60 s. A margin longer than
    /// the tokens' lifetime refreshes on every cache miss.
    pub fn with_refresh_margin(mut self, margin: Duration) -> Self {
        self.refresh_margin = margin;
        self
    }

    /// The `post_logout_redirect_uri` of every RP-initiated logout, instead
    /// of the sign-out's `return_to`: for providers that match registered
    /// URIs exactly. An absolute URL.
    pub fn with_post_logout_redirect(mut self, url: &str) -> Self {
        self.post_logout_redirect = Some(url.to_owned());
        self
    }

    /// How old the discovery document may get before it is fetched again.
    /// Default 1 hour.
    pub fn with_discovery_refresh(mut self, every: Duration) -> Self {
        self.discovery_refresh = every;
        self
    }

    /// How old the cached key set may get before it is fetched again.
    /// Default 1 hour.
    pub fn with_jwks_refresh(mut self, every: Duration) -> Self {
        self.jwks_refresh = every;
        self
    }

    /// The least time between two fetches of the key set for an unknown
    /// `kid` (SECURITY.md T-H1). Default 30 s.
    pub fn with_jwks_min_refetch(mut self, every: Duration) -> Self {
        self.jwks_min_refetch = every;
        self
    }

    /// Total timeout of one call to the provider. Default 5 s.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Connect timeout. Default 2 s.
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// The most bytes read from one answer. Default 256 KiB.
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

    /// Builds the client (no network: discovery happens on first use, or
    /// with [`Client::metadata`]).
    pub fn build(self) -> Result<Client, ConfigError> {
        let invalid = |what: &'static str, value: &str| ConfigError::InvalidUrl {
            what,
            value: value.to_owned(),
        };
        let issuer = Url::parse(&self.issuer)
            .ok()
            .filter(|u| {
                matches!(u.scheme(), "http" | "https")
                    && u.host().is_some()
                    && u.query().is_none()
                    && u.fragment().is_none()
                    && u.username().is_empty()
            })
            .ok_or_else(|| invalid("OpenID Connect issuer", &self.issuer));
        issuer?;
        // Discovery §4: the issuer without a trailing `/`, then the
        // well-known path.
        let discovery_url = Url::parse(&format!(
            "{}/.well-known/openid-configuration",
            self.issuer.trim_end_matches('/')
        ))
        .map_err(|_| invalid("OpenID Connect issuer", &self.issuer))?;
        let id_ok = !self.client_id.is_empty()
            && self.client_id.len() <= 512
            && !self.client_id.bytes().any(|b| b.is_ascii_control());
        if !id_ok {
            return Err(invalid("OpenID Connect client id", &self.client_id));
        }
        let provider_ok = !self.provider.is_empty()
            && self.provider.len() <= 64
            && self
                .provider
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !provider_ok {
            return Err(invalid("OpenID Connect provider name", &self.provider));
        }
        let auth = self.auth.unwrap_or(if self.secret.is_some() {
            ClientAuth::Basic
        } else {
            ClientAuth::None
        });
        if auth != ClientAuth::None && self.secret.is_none() {
            return Err(ConfigError::OutOfRange(
                "client_secret_basic and client_secret_post need a client secret",
            ));
        }
        let post_logout_redirect = match &self.post_logout_redirect {
            None => None,
            Some(raw) => Some(
                Url::parse(raw)
                    .ok()
                    .filter(|u| matches!(u.scheme(), "http" | "https"))
                    .ok_or_else(|| invalid("post-logout redirect URI", raw))?,
            ),
        };
        let mut scopes = self.scopes;
        if !scopes.iter().any(|s| s == "openid") {
            scopes.insert(0, "openid".to_owned());
        }
        let http =
            crate::upstream::wire::http_client(self.http, self.timeout, self.connect_timeout)?;
        Ok(Client {
            inner: Arc::new(Inner {
                http,
                issuer: self.issuer,
                discovery_url,
                client_id: self.client_id,
                secret: self.secret,
                auth,
                scope: scopes.join(" "),
                groups_claim: self.groups_claim,
                userinfo: self.userinfo,
                provider: self.provider,
                leeway: self.leeway,
                refresh_margin: self.refresh_margin,
                timeout: self.timeout,
                body_limit: self.body_limit,
                discovery_refresh: self.discovery_refresh,
                jwks_refresh: self.jwks_refresh,
                jwks_min_refetch: self.jwks_min_refetch,
                post_logout_redirect,
                discovered: RwLock::new(None),
                flight: tokio::sync::Mutex::new(Backoff::default()),
            }),
        })
    }
}

/// The per-flow data of a sign-in, sealed in its flow cookie.
#[derive(Serialize, Deserialize)]
struct Flow {
    /// The PKCE verifier.
    #[serde(rename = "v")]
    verifier: String,
    /// The nonce.
    #[serde(rename = "n")]
    nonce: String,
    /// The `redirect_uri` sent, to send again with the code.
    #[serde(rename = "r")]
    redirect_uri: String,
    /// The `max_age` asked, in seconds.
    #[serde(rename = "m", default, skip_serializing_if = "Option::is_none")]
    max_age: Option<u64>,
    /// Whether `prompt=login` was asked.
    #[serde(rename = "l", default, skip_serializing_if = "std::ops::Not::not")]
    login: bool,
}

/// A token endpoint answer (RFC 6749 §5.1).
struct Tokens {
    access_token: SessionToken,
    id_token: Option<String>,
    refresh_token: Option<String>,
    expires_at: Option<SystemTime>,
}

/// Why a token request gave no tokens.
enum TokenError {
    /// The provider refused with this OAuth error code (RFC 6749 §5.2).
    Refused(String),
    /// No answer, or one that says nothing definitive.
    Outage(Error),
}

/// What a verified ID token says.
struct IdToken {
    claims: Map<String, Value>,
}

impl IdToken {
    fn text(&self, key: &str) -> Option<&str> {
        self.claims
            .get(key)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
    }

    fn time(&self, key: &str) -> Option<SystemTime> {
        self.claims
            .get(key)
            .and_then(Value::as_u64)
            .map(|s| UNIX_EPOCH + Duration::from_secs(s))
    }
}

/// What the ID token is checked for beyond the key set's rules.
#[derive(Clone, Copy)]
struct IdTokenChecks<'a> {
    /// `exp` checked, `iat` recent: a token that just arrived.
    fresh: bool,
    /// The flow's nonce; `None`: `nonce` not checked (a refresh).
    nonce: Option<&'a str>,
    /// The access token it came with, for `at_hash`.
    access_token: Option<&'a str>,
    /// `max_age` asked at the start.
    max_age: Option<u64>,
    /// The flow's start, when it asked `prompt=login`.
    login_since: Option<u64>,
}

fn unix(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl Client {
    /// A builder for the provider at `issuer` (its exact issuer identifier,
    /// e.g. `https://sso.example/realms/acme`, or Auth0's
    /// `https://tenant.auth0.com/` with its trailing `/`) and the client
    /// `client_id`.
    pub fn builder(issuer: &str, client_id: &str) -> ClientBuilder {
        ClientBuilder {
            issuer: issuer.to_owned(),
            client_id: client_id.to_owned(),
            secret: None,
            auth: None,
            scopes: DEFAULT_SCOPES.iter().map(|s| (*s).to_owned()).collect(),
            groups_claim: DEFAULT_GROUPS_CLAIM.to_owned(),
            userinfo: false,
            provider: DEFAULT_PROVIDER.to_owned(),
            leeway: DEFAULT_LEEWAY,
            refresh_margin: DEFAULT_REFRESH_MARGIN,
            timeout: DEFAULT_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            body_limit: DEFAULT_BODY_LIMIT,
            http: None,
            discovery_refresh: DEFAULT_DISCOVERY_REFRESH,
            jwks_refresh: DEFAULT_JWKS_REFRESH,
            jwks_min_refetch: DEFAULT_JWKS_MIN_REFETCH,
            post_logout_redirect: None,
        }
    }

    /// The configured issuer.
    pub fn issuer(&self) -> &str {
        &self.inner.issuer
    }

    /// The client id.
    pub fn client_id(&self) -> &str {
        &self.inner.client_id
    }

    /// The provider name (`{prefix}/signin/{name}`).
    pub fn provider_name(&self) -> &str {
        &self.inner.provider
    }

    /// The provider's discovery document, fetched now if it is not cached:
    /// call it at start-up to fail early on a wrong issuer.
    ///
    /// # Errors
    ///
    /// An outage error when the document cannot be fetched; a decode error
    /// ([`ErrorKind::Decode`](crate::ErrorKind::Decode)) when it names another issuer or lacks an
    /// endpoint.
    pub async fn metadata(&self) -> Result<Metadata, Error> {
        Ok(self.discovered().await?.metadata.clone())
    }

    fn current(&self) -> Option<Arc<Discovered>> {
        self.inner
            .discovered
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The discovery document and key set: cached, refetched when old
    /// (single flight), the last good one kept on failure, with backoff.
    async fn discovered(&self) -> Result<Arc<Discovered>, Error> {
        let inner = &self.inner;
        let fresh = |d: &Discovered| d.fetched_at.elapsed() < inner.discovery_refresh;
        if let Some(d) = self.current().filter(|d| fresh(d)) {
            return Ok(d);
        }
        let mut backoff = inner.flight.lock().await;
        let stale = self.current();
        if let Some(d) = stale.as_ref().filter(|d| fresh(d)) {
            return Ok(d.clone());
        }
        if backoff.retry_at.is_some_and(|at| Instant::now() < at) {
            return stale.ok_or_else(Error::unavailable);
        }
        match self.fetch_discovery(stale.as_deref()).await {
            Ok(d) => {
                *backoff = Backoff::default();
                let d = Arc::new(d);
                *inner
                    .discovered
                    .write()
                    .unwrap_or_else(PoisonError::into_inner) = Some(d.clone());
                Ok(d)
            }
            Err(err) => {
                backoff.failures = backoff.failures.saturating_add(1);
                let wait = DISCOVERY_BACKOFF
                    .saturating_mul(1 << backoff.failures.min(7).saturating_sub(1))
                    .min(DISCOVERY_BACKOFF_MAX);
                backoff.retry_at = Some(Instant::now() + wait);
                tracing::warn!(error = %err, issuer = %inner.issuer, "authgate: the OpenID Connect discovery document could not be fetched");
                stale.ok_or(err)
            }
        }
    }

    async fn fetch_discovery(&self, previous: Option<&Discovered>) -> Result<Discovered, Error> {
        let inner = &self.inner;
        let request = inner
            .http
            .get(inner.discovery_url.clone())
            .timeout(inner.timeout)
            .header(http::header::ACCEPT, "application/json");
        let answer = send(request, inner.body_limit).await?;
        if !answer.status.is_success() {
            return Err(Error::from_status(answer.status));
        }
        let value = answer
            .value()
            .ok_or_else(|| Error::bad_answer("the discovery document is not JSON"))?;
        let metadata = Metadata::parse(&value, &inner.issuer)?;
        // The same key set keeps its cached keys.
        let jwks = match previous {
            Some(p) if p.metadata.jwks_uri == metadata.jwks_uri => p.jwks.clone(),
            _ => Arc::new(Jwks::new(
                metadata.jwks_uri.clone(),
                inner.http.clone(),
                inner.timeout,
                inner.jwks_refresh,
                inner.jwks_min_refetch,
            )),
        };
        Ok(Discovered {
            metadata,
            jwks,
            fetched_at: Instant::now(),
        })
    }

    // ---- the token endpoint ----------------------------------------------

    /// A form to the token or revocation endpoint, with the client's
    /// authentication (RFC 6749 §2.3.1, OpenID Connect Core §9).
    fn authenticated(&self, endpoint: &Url, form: &[(&str, &str)]) -> reqwest::RequestBuilder {
        let inner = &self.inner;
        let mut pairs: Vec<(&str, &str)> = form.to_vec();
        let mut request = inner
            .http
            .post(endpoint.clone())
            .timeout(inner.timeout)
            .header(http::header::ACCEPT, "application/json");
        let secret = inner.secret.as_ref().map_or("", Secret::expose);
        match inner.auth {
            ClientAuth::Basic => {
                let mut value = HeaderValue::from_str(&basic_auth(&inner.client_id, secret))
                    .unwrap_or_else(|_| HeaderValue::from_static(""));
                value.set_sensitive(true);
                request = request.header(http::header::AUTHORIZATION, value);
            }
            ClientAuth::Post => {
                pairs.push(("client_id", &inner.client_id));
                pairs.push(("client_secret", secret));
            }
            ClientAuth::None => pairs.push(("client_id", &inner.client_id)),
        }
        request.form(&pairs)
    }

    async fn token_request(
        &self,
        discovered: &Discovered,
        form: &[(&str, &str)],
    ) -> Result<Tokens, TokenError> {
        let request = self.authenticated(&discovered.metadata.token_endpoint, form);
        let answer = send(request, self.inner.body_limit)
            .await
            .map_err(TokenError::Outage)?;
        let value = answer.value();
        if !answer.status.is_success() {
            let code = value
                .as_ref()
                .and_then(|v| v.get("error"))
                .and_then(Value::as_str);
            return Err(match code {
                Some(code) if answer.status.is_client_error() => {
                    TokenError::Refused(code.to_owned())
                }
                _ => TokenError::Outage(Error::from_status(answer.status)),
            });
        }
        parse_tokens(value.as_ref(), SystemTime::now()).map_err(TokenError::Outage)
    }

    // ---- ID tokens ----------------------------------------------------------

    async fn verify_id_token_with(
        &self,
        discovered: &Discovered,
        token: &str,
        checks: IdTokenChecks<'_>,
    ) -> Result<IdToken, JwtError> {
        let inner = &self.inner;
        let now = SystemTime::now();
        let audience = [inner.client_id.as_str()];
        let expect = Expect {
            issuer: Some(&inner.issuer),
            audience: Some(&audience),
            expiry: checks.fresh,
            leeway: inner.leeway,
            now,
        };
        let claims: Map<String, Value> = jwt::verify(&discovered.jwks, token, &expect).await?;
        let alg = jsonwebtoken::decode_header(token)
            .map_err(|_| JwtError::Invalid("malformed token"))?
            .alg;
        id_token_rules(&claims, &inner.client_id, alg, checks, now, inner.leeway)
            .map_err(JwtError::Invalid)?;
        Ok(IdToken { claims })
    }

    /// Verifies an ID token of this client (OpenID Connect Core
    /// §3.1.3.7): signature, `iss`, `aud`, `azp`, `exp`, `iat` (at most 5
    /// minutes old), `nonce` when given, and gives its user. For ID tokens
    /// the app received some other way; the layer's own sign-ins are
    /// checked by it.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidSession`](crate::ErrorKind::InvalidSession) for a token that does not verify (the
    /// reason in its source); an outage error when the discovery document
    /// or the key set cannot be fetched.
    pub async fn verify_id_token(
        &self,
        id_token: &str,
        nonce: Option<&str>,
    ) -> Result<User, Error> {
        let discovered = self.discovered().await?;
        let checks = IdTokenChecks {
            fresh: true,
            nonce,
            access_token: None,
            max_age: None,
            login_since: None,
        };
        let verified = self
            .verify_id_token_with(&discovered, id_token, checks)
            .await
            .map_err(jwt_error)?;
        self.user_of(verified.claims)
            .ok_or_else(|| Error::invalid_session().with_source("no sub"))
    }

    fn user_of(&self, claims: Map<String, Value>) -> Option<User> {
        user_from_claims(claims, &self.inner.groups_claim, &self.inner.provider)
    }

    // ---- userinfo -----------------------------------------------------------

    /// The userinfo endpoint's claims for an access token (OpenID Connect
    /// Core §5.3).
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Unsupported`](crate::ErrorKind::Unsupported) when the provider has no userinfo
    /// endpoint; the endpoint's status otherwise (a 401 is
    /// [`ErrorKind::Status`](crate::ErrorKind::Status), never a sign-out by itself).
    pub async fn userinfo(&self, access_token: &SessionToken) -> Result<Map<String, Value>, Error> {
        let discovered = self.discovered().await?;
        self.userinfo_with(&discovered, access_token).await
    }

    async fn userinfo_with(
        &self,
        discovered: &Discovered,
        access_token: &SessionToken,
    ) -> Result<Map<String, Value>, Error> {
        let Some(endpoint) = &discovered.metadata.userinfo_endpoint else {
            return Err(Error::unsupported());
        };
        let mut bearer = HeaderValue::from_str(&format!("Bearer {}", access_token.expose()))
            .map_err(|_| Error::invalid_input("an access token that is no header value"))?;
        bearer.set_sensitive(true);
        let request = self
            .inner
            .http
            .get(endpoint.clone())
            .timeout(self.inner.timeout)
            .header(http::header::ACCEPT, "application/json")
            .header(http::header::AUTHORIZATION, bearer);
        let answer = send(request, self.inner.body_limit).await?;
        if !answer.status.is_success() {
            return Err(Error::from_status(answer.status));
        }
        // A signed userinfo answer (`application/jwt`) is not read.
        match answer.value() {
            Some(Value::Object(map)) => Ok(map),
            _ => Err(Error::bad_answer(
                "the userinfo answer is not a JSON object",
            )),
        }
    }

    /// The user of verified ID-token claims, merged with userinfo when
    /// configured (its `sub` must be the same, Core §5.3.2).
    async fn user_with_userinfo(
        &self,
        discovered: &Discovered,
        mut claims: Map<String, Value>,
        access_token: &SessionToken,
    ) -> Result<User, Error> {
        if self.inner.userinfo {
            let info = self.userinfo_with(discovered, access_token).await?;
            if info.get("sub") != claims.get("sub") {
                return Err(Error::bad_answer("userinfo names another subject"));
            }
            for (key, value) in info {
                if !matches!(
                    key.as_str(),
                    "iss" | "aud" | "sub" | "exp" | "iat" | "nonce"
                ) {
                    claims.insert(key, value);
                }
            }
        }
        self.user_of(claims)
            .ok_or_else(|| Error::bad_answer("no sub in the ID token"))
    }

    // ---- sign-in ------------------------------------------------------------

    async fn start(&self, start: &SignInStart<'_>) -> Result<SignInRedirect, Error> {
        if start.provider != self.inner.provider {
            return Err(Error::unsupported());
        }
        let discovered = self.discovered().await?;
        let inner = &self.inner;
        let verifier = random_token();
        let nonce = random_token();
        let redirect_uri = start.callback_url.to_string();
        let max_age = start.max_age.map(|d| d.as_secs());
        let login = start.prompt == Prompt::Login;
        let mut url = discovered.metadata.authorization_endpoint.clone();
        {
            let mut query = url.query_pairs_mut();
            query
                .append_pair("response_type", "code")
                .append_pair("client_id", &inner.client_id)
                .append_pair("redirect_uri", &redirect_uri)
                .append_pair("scope", &inner.scope)
                .append_pair("state", start.flow.as_str())
                .append_pair("nonce", &nonce)
                .append_pair("code_challenge", &pkce_challenge(&verifier))
                .append_pair("code_challenge_method", "S256");
            if login {
                query.append_pair("prompt", "login");
            }
            if let Some(max_age) = max_age {
                query.append_pair("max_age", &max_age.to_string());
            }
        }
        let data = FlowData::new(&Flow {
            verifier,
            nonce,
            redirect_uri,
            max_age,
            login,
        })?;
        Ok(SignInRedirect::new(url, Correlation::State).with_data(data))
    }

    async fn complete_landing(
        &self,
        params: &CallbackParams,
        flow: Option<&FlowRecord>,
    ) -> Result<CallbackOutcome, Error> {
        let Some(flow) = flow else {
            // A landing this browser never started: login CSRF (T-B1.3).
            return Ok(failed(
                "no sign-in was started in this browser",
                FlowRejection::MissingFlow,
            ));
        };
        if flow.correlation != Correlation::State || flow.provider != self.inner.provider {
            return Ok(failed(
                "a flow this upstream did not start",
                FlowRejection::MissingFlow,
            ));
        }
        if params.has_duplicates() {
            return Ok(failed(
                "duplicate landing parameters",
                FlowRejection::MalformedLanding,
            ));
        }
        let discovered = self.discovered().await?;
        let single = |name| params.single(name).ok().flatten();
        // RFC 9207 §2.4: the response's issuer, checked before anything
        // else, errors included (mix-up, RFC 9700 §4.4).
        match single("iss") {
            Some(iss) if iss != self.inner.issuer => {
                return Ok(failed(
                    "the landing's iss names another provider",
                    FlowRejection::ProviderMismatch,
                ));
            }
            None if discovered.metadata.iss_parameter_supported => {
                return Ok(failed(
                    "no iss on the landing of a provider that sends it",
                    FlowRejection::ProviderMismatch,
                ));
            }
            _ => {}
        }
        if let Some(error) = single("error") {
            // The provider's text is not shown (T-B4); its code picks the
            // fixed message.
            let reason = if error == "access_denied" {
                FlowRejection::ConsentDenied
            } else {
                FlowRejection::UpstreamRefused
            };
            return Ok(failed("the provider refused the sign-in", reason));
        }
        let Some(code) = single("code").filter(|c| plausible(c)) else {
            return Ok(failed(
                "no or a malformed code on the landing",
                FlowRejection::MalformedLanding,
            ));
        };
        let data: Flow = flow.data.get()?;
        let form = [
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", data.redirect_uri.as_str()),
            ("code_verifier", data.verifier.as_str()),
        ];
        let tokens = match self.token_request(&discovered, &form).await {
            Ok(tokens) => tokens,
            Err(TokenError::Refused(code)) => {
                tracing::info!(error = %code, "authgate: the OpenID Provider refused a code");
                let reason = if code == "invalid_grant" {
                    FlowRejection::ReplayedGrant
                } else {
                    FlowRejection::UpstreamRefused
                };
                return Ok(failed("the provider refused the code", reason));
            }
            Err(TokenError::Outage(err)) => return Err(err),
        };
        let Some(id_token) = tokens.id_token.as_deref() else {
            return Err(Error::bad_answer("no id_token in the token answer"));
        };
        let checks = IdTokenChecks {
            fresh: true,
            nonce: Some(&data.nonce),
            access_token: Some(tokens.access_token.expose()),
            max_age: data.max_age,
            login_since: data.login.then_some(flow.started),
        };
        let verified = match self
            .verify_id_token_with(&discovered, id_token, checks)
            .await
        {
            Ok(verified) => verified,
            Err(JwtError::Invalid(reason)) => {
                tracing::warn!(reason, "authgate: an ID token did not verify");
                return Ok(failed(
                    &format!("the ID token did not verify: {reason}"),
                    FlowRejection::UpstreamRefused,
                ));
            }
            Err(JwtError::Unavailable(err)) => return Err(err),
        };
        let sid = verified.text("sid").map(str::to_owned);
        let user = self
            .user_with_userinfo(&discovered, verified.claims, &tokens.access_token)
            .await?;
        let session = session_of(tokens, None);
        // The sign-in's cache entry lasts until the refresh point, like a
        // lookup's.
        let recheck = session.expires_at.map(|at| {
            at.checked_sub(self.inner.refresh_margin)
                .unwrap_or(UNIX_EPOCH)
        });
        let mut grant =
            Grant::from_session(session, SignInMethod::OAuth(self.inner.provider.clone()))
                .with_user(user);
        grant.recheck_at = recheck;
        if let Some(sid) = sid {
            grant = grant.with_session_id(sid);
        }
        Ok(CallbackOutcome::SignedIn(grant))
    }

    // ---- lookup and refresh -------------------------------------------------

    async fn resolve(&self, session: &Session) -> Result<Lookup, Error> {
        let Some(id_token) = &session.id_token else {
            // Not a session this client made.
            return Ok(Lookup::Invalid);
        };
        let now = SystemTime::now();
        let margin = self.inner.refresh_margin;
        let expired = session.expires_at.is_some_and(|at| at <= now);
        let due = session.expires_at.is_some_and(|at| at <= now + margin);
        let discovered = self.discovered().await?;
        if due {
            match &session.refresh_token {
                Some(refresh_token) => {
                    return self
                        .refresh_with(&discovered, session, id_token, refresh_token, expired)
                        .await;
                }
                None if expired => return Ok(Lookup::Invalid),
                None => {}
            }
        }
        let checks = IdTokenChecks {
            fresh: false,
            nonce: None,
            access_token: None,
            max_age: None,
            login_since: None,
        };
        let verified = match self
            .verify_id_token_with(&discovered, id_token.expose(), checks)
            .await
        {
            Ok(verified) => verified,
            Err(JwtError::Invalid(reason)) => {
                tracing::debug!(reason, "authgate: a session's ID token no longer verifies");
                return Ok(Lookup::Invalid);
            }
            Err(JwtError::Unavailable(err)) => return Err(err),
        };
        Ok(Lookup::Valid(
            self.valid_of(&discovered, session, verified).await?,
        ))
    }

    async fn valid_of(
        &self,
        discovered: &Discovered,
        session: &Session,
        verified: IdToken,
    ) -> Result<Valid, Error> {
        let sid = verified.text("sid").map(str::to_owned);
        // For user-wide revocations (a back-channel logout by `sub`): when
        // the user signed in, which a refresh keeps (`auth_time`, Core
        // §12.2), else when this ID token was issued.
        let issued_at = verified.time("auth_time").or_else(|| verified.time("iat"));
        let user = self
            .user_with_userinfo(discovered, verified.claims, &session.token)
            .await?;
        let mut valid = Valid::new(user);
        if let Some(at) = session.expires_at {
            // With a refresh token the session outlives its access token.
            if session.refresh_token.is_none() {
                valid = valid.with_expires_at(at);
            }
            let recheck = at
                .checked_sub(self.inner.refresh_margin)
                .unwrap_or(UNIX_EPOCH);
            valid = valid.with_recheck_at(recheck);
        }
        if let Some(sid) = sid {
            valid = valid.with_session_id(sid);
        }
        if let Some(at) = issued_at {
            valid = valid.with_issued_at(at);
        }
        Ok(valid)
    }

    async fn refresh_with(
        &self,
        discovered: &Discovered,
        session: &Session,
        id_token: &Secret,
        refresh_token: &Secret,
        expired: bool,
    ) -> Result<Lookup, Error> {
        let form = [
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token.expose()),
        ];
        let tokens = match self.token_request(discovered, &form).await {
            Ok(tokens) => tokens,
            // SEAM.md §4.3: definitive only once the access token is over;
            // before, another instance may have rotated the refresh token.
            Err(TokenError::Refused(code)) if code == "invalid_grant" && expired => {
                tracing::debug!(
                    "authgate: the OpenID Provider refused the refresh token; the session is over"
                );
                return Ok(Lookup::Invalid);
            }
            Err(TokenError::Refused(code)) => {
                return Err(Error::from_status(StatusCode::BAD_REQUEST).with_items(vec![
                    UpstreamErrorItem {
                        origin: Some("token_endpoint".to_owned()),
                        code: Some(code),
                        message: None,
                    },
                ]));
            }
            Err(TokenError::Outage(err)) => return Err(err),
        };
        // OpenID Connect Core §12.2: a new ID token is checked like the
        // first (its nonce aside), for the same subject.
        let verified = match tokens.id_token.as_deref() {
            Some(new) => {
                let checks = IdTokenChecks {
                    fresh: true,
                    nonce: None,
                    access_token: Some(tokens.access_token.expose()),
                    max_age: None,
                    login_since: None,
                };
                let verified = self
                    .verify_id_token_with(discovered, new, checks)
                    .await
                    .map_err(|err| match err {
                        JwtError::Invalid(reason) => Error::bad_answer(reason),
                        JwtError::Unavailable(err) => err,
                    })?;
                let before = jwt::peek_claims(id_token.expose());
                let same = before
                    .as_ref()
                    .and_then(|c| c.get("sub"))
                    .is_some_and(|sub| verified.claims.get("sub") == Some(sub));
                if !same {
                    return Err(Error::bad_answer(
                        "a refreshed ID token names another subject",
                    ));
                }
                verified
            }
            None => {
                let checks = IdTokenChecks {
                    fresh: false,
                    nonce: None,
                    access_token: None,
                    max_age: None,
                    login_since: None,
                };
                match self
                    .verify_id_token_with(discovered, id_token.expose(), checks)
                    .await
                {
                    Ok(verified) => verified,
                    Err(JwtError::Invalid(_)) => return Ok(Lookup::Invalid),
                    Err(JwtError::Unavailable(err)) => return Err(err),
                }
            }
        };
        let next = session_of(tokens, Some(session));
        let valid = self.valid_of(discovered, &next, verified).await?;
        Ok(Lookup::Valid(valid.with_rotated(next)))
    }

    // ---- sign-out -----------------------------------------------------------

    /// Revokes a token at the revocation endpoint (RFC 7009 §2.1).
    async fn revoke(&self, endpoint: &Url, token: &str, hint: &str) -> Result<(), Error> {
        let form = [("token", token), ("token_type_hint", hint)];
        let answer = send(self.authenticated(endpoint, &form), self.inner.body_limit).await?;
        if answer.status.is_success() {
            Ok(())
        } else {
            Err(Error::from_status(answer.status))
        }
    }

    async fn end(
        &self,
        session: &Session,
        scope: SignOutScope,
        after: &Url,
    ) -> Result<SignOutOutcome, Error> {
        if scope != SignOutScope::This {
            return Err(Error::unsupported());
        }
        let discovered = self.discovered().await?;
        let metadata = &discovered.metadata;
        if let Some(endpoint) = &metadata.revocation_endpoint {
            // The refresh token's revocation ends its grant (RFC 7009
            // §2.1); without one, the access token.
            let (token, hint) = match &session.refresh_token {
                Some(refresh) => (refresh.expose(), "refresh_token"),
                None => (session.token.expose(), "access_token"),
            };
            if let Err(err) = self.revoke(endpoint, token, hint).await {
                tracing::warn!(error = %err, "authgate: the OpenID Provider did not revoke the session's token; signed out here anyway");
            }
        }
        let Some(endpoint) = &metadata.end_session_endpoint else {
            return Ok(SignOutOutcome::Done);
        };
        let back = self.inner.post_logout_redirect.as_ref().unwrap_or(after);
        let mut url = endpoint.clone();
        {
            let mut query = url.query_pairs_mut();
            if let Some(id_token) = &session.id_token {
                query.append_pair("id_token_hint", id_token.expose());
            }
            query
                .append_pair("client_id", &self.inner.client_id)
                .append_pair("post_logout_redirect_uri", back.as_str());
        }
        Ok(SignOutOutcome::Redirect(url))
    }

    // ---- back-channel logout ------------------------------------------------

    async fn verify_logout_token(&self, token: &str) -> Result<SessionRevocation, Error> {
        let discovered = self.discovered().await?;
        let header =
            jsonwebtoken::decode_header(token).map_err(|_| Error::invalid_input("not a JWT"))?;
        // §2.4: `logout+jwt` is what a logout token should say; an ID or
        // access token's own `typ` (`at+jwt`, …) is refused (§4.1).
        if let Some(typ) = header.typ.as_deref()
            && !typ.eq_ignore_ascii_case("logout+jwt")
            && !typ.eq_ignore_ascii_case("JWT")
        {
            return Err(Error::invalid_input("not a logout token (typ)"));
        }
        let inner = &self.inner;
        let now = SystemTime::now();
        let audience = [inner.client_id.as_str()];
        let expect = Expect {
            issuer: Some(&inner.issuer),
            audience: Some(&audience),
            expiry: false,
            leeway: inner.leeway,
            now,
        };
        let claims: Map<String, Value> = match jwt::verify(&discovered.jwks, token, &expect).await {
            Ok(claims) => claims,
            Err(JwtError::Invalid(reason)) => return Err(Error::invalid_input(reason)),
            Err(JwtError::Unavailable(err)) => return Err(err),
        };
        logout_token_rules(&claims, now, inner.leeway).map_err(Error::invalid_input)
    }
}

/// HTTP Basic credentials of a client (RFC 6749 §2.3.1): id and secret
/// each `application/x-www-form-urlencoded` first.
fn basic_auth(client_id: &str, secret: &str) -> String {
    let encode = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    format!(
        "Basic {}",
        STANDARD.encode(format!("{}:{}", encode(client_id), encode(secret)))
    )
}

/// `at_hash` / `c_hash` (OpenID Connect Core §3.1.3.6, §3.3.2.11): the
/// left half of the hash of the ASCII token, with the hash of the ID
/// token's algorithm (SHA-256 for `*256`, SHA-384, SHA-512; SHA-512 for
/// Ed25519), base64url.
fn token_hash(alg: Algorithm, token: &str) -> String {
    use sha2::Digest as _;
    let digest: Vec<u8> = match alg {
        Algorithm::RS384 | Algorithm::PS384 | Algorithm::ES384 | Algorithm::HS384 => {
            sha2::Sha384::digest(token.as_bytes()).to_vec()
        }
        Algorithm::RS512 | Algorithm::PS512 | Algorithm::HS512 | Algorithm::EdDSA => {
            sha2::Sha512::digest(token.as_bytes()).to_vec()
        }
        _ => sha2::Sha256::digest(token.as_bytes()).to_vec(),
    };
    URL_SAFE_NO_PAD.encode(&digest[..digest.len() / 2])
}

/// Compares two secrets in constant time (SECURITY.md T-B1.9).
fn ct_eq(a: &str, b: &str) -> bool {
    use subtle::ConstantTimeEq as _;
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// The ID token rules beyond signature, `iss`, `aud` and `exp` (OpenID
/// Connect Core §3.1.3.7 items 4–5 `azp`, 9–10 `iat`, 11 `nonce`, 12–13
/// `auth_time`; §3.1.3.8 `at_hash`).
fn id_token_rules(
    claims: &Map<String, Value>,
    client_id: &str,
    alg: Algorithm,
    checks: IdTokenChecks<'_>,
    now: SystemTime,
    leeway: Duration,
) -> Result<(), &'static str> {
    let now = unix(now);
    let leeway = leeway.as_secs();
    if claims
        .get("sub")
        .and_then(Value::as_str)
        .is_none_or(str::is_empty)
    {
        return Err("no sub");
    }
    let several = claims
        .get("aud")
        .and_then(Value::as_array)
        .is_some_and(|a| a.len() > 1);
    match claims.get("azp") {
        Some(azp) if azp.as_str() != Some(client_id) => return Err("azp is another client"),
        None if several => return Err("several audiences and no azp"),
        _ => {}
    }
    let Some(iat) = claims.get("iat").and_then(Value::as_u64) else {
        return Err("no iat");
    };
    if iat > now.saturating_add(leeway) {
        return Err("iat is in the future");
    }
    if checks.fresh && iat.saturating_add(MAX_ID_TOKEN_AGE.as_secs() + leeway) < now {
        return Err("iat is too old");
    }
    if let Some(expected) = checks.nonce {
        match claims.get("nonce").and_then(Value::as_str) {
            Some(nonce) if ct_eq(nonce, expected) => {}
            _ => return Err("nonce is not the flow's"),
        }
    }
    if let (Some(access_token), Some(at_hash)) = (checks.access_token, claims.get("at_hash"))
        && at_hash.as_str() != Some(token_hash(alg, access_token).as_str())
    {
        return Err("at_hash is not the access token's");
    }
    let auth_time = claims.get("auth_time").and_then(Value::as_u64);
    if let Some(max_age) = checks.max_age {
        match auth_time {
            Some(at) if at.saturating_add(max_age).saturating_add(leeway) >= now => {}
            Some(_) => return Err("auth_time is older than max_age"),
            None => return Err("no auth_time with max_age"),
        }
    }
    if let (Some(since), Some(at)) = (checks.login_since, auth_time)
        && at.saturating_add(leeway) < since
    {
        return Err("auth_time predates a prompt=login sign-in");
    }
    Ok(())
}

/// The logout token rules beyond signature, `iss` and `aud`
/// (Back-Channel Logout 1.0 §2.4, §2.6 items 4–8).
fn logout_token_rules(
    claims: &Map<String, Value>,
    now: SystemTime,
    leeway: Duration,
) -> Result<SessionRevocation, &'static str> {
    let now = unix(now);
    let leeway = leeway.as_secs();
    let Some(iat) = claims.get("iat").and_then(Value::as_u64) else {
        return Err("no iat");
    };
    if iat > now.saturating_add(leeway) {
        return Err("iat is in the future");
    }
    if iat.saturating_add(MAX_LOGOUT_TOKEN_AGE.as_secs() + leeway) < now {
        return Err("iat is too old");
    }
    match claims.get("exp") {
        None => {}
        Some(exp) => match exp.as_u64() {
            Some(exp) if now < exp.saturating_add(leeway) => {}
            _ => return Err("expired"),
        },
    }
    let event = claims
        .get("events")
        .and_then(Value::as_object)
        .and_then(|events| events.get(BACKCHANNEL_LOGOUT_EVENT));
    if !event.is_some_and(Value::is_object) {
        return Err("no back-channel logout event");
    }
    if claims.contains_key("nonce") {
        return Err("a nonce: an ID token, not a logout token");
    }
    let text = |key: &str| -> Result<Option<String>, &'static str> {
        match claims.get(key) {
            None => Ok(None),
            Some(Value::String(s)) if !s.is_empty() => Ok(Some(s.clone())),
            Some(_) => Err("sid or sub is not a string"),
        }
    };
    let revocation = SessionRevocation {
        sid: text("sid")?,
        sub: text("sub")?,
    };
    if revocation.sid.is_none() && revocation.sub.is_none() {
        return Err("neither sid nor sub");
    }
    Ok(revocation)
}

/// Reads a token answer (RFC 6749 §5.1): a Bearer `access_token`, and
/// `id_token`, `refresh_token`, `expires_in` when given.
fn parse_tokens(value: Option<&Value>, now: SystemTime) -> Result<Tokens, Error> {
    let Some(Value::Object(map)) = value else {
        return Err(Error::bad_answer("the token answer is not a JSON object"));
    };
    let text = |key: &str| {
        map.get(key)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
    };
    let access_token = text("access_token")
        .and_then(SessionToken::new)
        .ok_or_else(|| Error::bad_answer("no access_token in the token answer"))?;
    if !text("token_type").is_some_and(|t| t.eq_ignore_ascii_case("bearer")) {
        return Err(Error::bad_answer("the token answer is not a Bearer token"));
    }
    let expires_at = match map.get("expires_in") {
        None | Some(Value::Null) => None,
        Some(value) => {
            let seconds = value
                .as_u64()
                .or_else(|| value.as_str().and_then(|s| s.parse().ok()))
                .ok_or_else(|| Error::bad_answer("expires_in is not a number of seconds"))?;
            Some(now + Duration::from_secs(seconds.min(10 * 365 * 24 * 3600)))
        }
    };
    Ok(Tokens {
        access_token,
        id_token: text("id_token").map(str::to_owned),
        refresh_token: text("refresh_token").map(str::to_owned),
        expires_at,
    })
}

/// The session of a token answer; after a refresh, what the answer leaves
/// out (the ID and refresh tokens) is kept from `previous`.
fn session_of(tokens: Tokens, previous: Option<&Session>) -> Session {
    let mut session = Session::new(tokens.access_token);
    session.expires_at = tokens.expires_at;
    session.id_token = tokens
        .id_token
        .map(Secret::new)
        .or_else(|| previous.and_then(|p| p.id_token.clone()));
    session.refresh_token = tokens
        .refresh_token
        .map(Secret::new)
        .or_else(|| previous.and_then(|p| p.refresh_token.clone()));
    session
}

/// A claim by name, else by a dotted path into objects.
fn claim<'a>(claims: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    if let Some(value) = claims.get(name) {
        return Some(value);
    }
    let mut parts = name.split('.');
    let mut value = claims.get(parts.next()?)?;
    for part in parts {
        value = value.as_object()?.get(part)?;
    }
    Some(value)
}

/// Maps verified claims to the neutral [`User`] (OpenID Connect Core
/// §5.1); `None` without a `sub`.
fn user_from_claims(
    claims: Map<String, Value>,
    groups_claim: &str,
    provider: &str,
) -> Option<User> {
    let text = |k: &str| {
        claims
            .get(k)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
    };
    let id = text("sub")?;
    let mut user = User::new(id, Value::Null);
    user.email = text("email");
    // Some providers (Cognito) send the boolean as a string.
    user.email_verified = match claims.get("email_verified") {
        Some(Value::Bool(b)) => Some(*b),
        Some(Value::String(s)) => s.parse().ok(),
        _ => None,
    };
    user.name = text("name").or_else(|| text("preferred_username"));
    user.picture = text("picture");
    user.phone = text("phone_number");
    user.auth_time = claims.get("auth_time").and_then(Value::as_u64);
    user.provider = Some(provider.to_owned());
    user.groups = match claim(&claims, groups_claim) {
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect(),
        Some(Value::String(one)) if !one.is_empty() => vec![one.clone()],
        _ => Vec::new(),
    };
    user.raw = RawJson::new(&Value::Object(claims));
    Some(user)
}

fn jwt_error(err: JwtError) -> Error {
    match err {
        JwtError::Invalid(reason) => Error::invalid_session().with_source(reason),
        JwtError::Unavailable(err) => err,
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

/// A landing value must look like a code before it is sent anywhere
/// (SECURITY.md T-B3.5).
fn plausible(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= MAX_LANDING_VALUE
        && value.bytes().all(|b| b.is_ascii_graphic())
}

impl Upstream for Client {
    /// Sealed storage (the cookie holds the token set), one provider,
    /// sign-out of this session only, tombstones until the access token's
    /// expiry, back-channel logout.
    fn capabilities(&self) -> Capabilities {
        Capabilities::new()
            .with_storage(SessionStorage::Sealed)
            .with_providers([self.inner.provider.as_str()])
            .with_sign_out_scopes(&[SignOutScope::This])
            .with_revocation(Revocation::UntilExpiry)
            .with_back_channel_logout(true)
    }

    fn lookup<'a>(&'a self, session: &'a Session) -> BoxFuture<'a, Result<Lookup, Error>> {
        Box::pin(self.resolve(session))
    }

    fn start_sign_in<'a>(
        &'a self,
        start: SignInStart<'a>,
    ) -> BoxFuture<'a, Result<SignInRedirect, Error>> {
        Box::pin(async move { self.start(&start).await })
    }

    fn complete_callback<'a>(
        &'a self,
        params: &'a CallbackParams,
        flow: Option<&'a FlowRecord>,
    ) -> BoxFuture<'a, Result<CallbackOutcome, Error>> {
        Box::pin(self.complete_landing(params, flow))
    }

    /// RFC 7009 revocation, then RP-initiated logout when the provider
    /// offers it.
    fn sign_out<'a>(
        &'a self,
        session: &'a Session,
        scope: SignOutScope,
        after: &'a Url,
    ) -> BoxFuture<'a, Result<SignOutOutcome, Error>> {
        Box::pin(self.end(session, scope, after))
    }

    fn back_channel_logout<'a>(
        &'a self,
        logout_token: &'a str,
    ) -> BoxFuture<'a, Result<SessionRevocation, Error>> {
        Box::pin(self.verify_logout_token(logout_token))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    fn map(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(map) => map,
            _ => Map::new(),
        }
    }

    #[test]
    fn client_secret_basic_form_urlencodes_id_and_secret_first() {
        // RFC 6749 §2.3.1: `application/x-www-form-urlencoded`, then Basic.
        let header = basic_auth("my client", "s&c:r+t/é");
        let encoded = header.strip_prefix("Basic ").unwrap();
        let decoded = String::from_utf8(STANDARD.decode(encoded).unwrap()).unwrap();
        assert_eq!(decoded, "my+client:s%26c%3Ar%2Bt%2F%C3%A9");
        let plain = basic_auth("app", "secret");
        assert_eq!(plain, format!("Basic {}", STANDARD.encode("app:secret")));
    }

    #[test]
    fn at_hash_follows_openid_connect_core_appendix_a() {
        // OpenID Connect Core 1.0 A.3 (RS256).
        assert_eq!(
            token_hash(
                Algorithm::RS256,
                "jHkWEdUXMU1BwAsC4vtUsZwnNvTIxEl0z9K3vx5KF0Y"
            ),
            "77QmUPtjPfzWtF2AnpK9RQ"
        );
        // The hash follows the algorithm: 384 bits → 24 bytes → 32 chars.
        assert_eq!(token_hash(Algorithm::ES384, "x").len(), 32);
        assert_eq!(token_hash(Algorithm::EdDSA, "x").len(), 43);
    }

    fn document(issuer: &str) -> Value {
        json!({
            "issuer": issuer,
            "authorization_endpoint": format!("{issuer}/auth"),
            "token_endpoint": format!("{issuer}/token"),
            "jwks_uri": format!("{issuer}/jwks"),
            "end_session_endpoint": format!("{issuer}/session/end"),
            "authorization_response_iss_parameter_supported": true,
        })
    }

    #[test]
    fn discovery_needs_the_exact_issuer_and_sound_endpoints() {
        let issuer = "https://op.example/realms/a";
        let metadata = Metadata::parse(&document(issuer), issuer).unwrap();
        assert!(metadata.iss_parameter_supported);
        assert!(metadata.revocation_endpoint.is_none());
        assert_eq!(
            metadata.token_endpoint.as_str(),
            "https://op.example/realms/a/token"
        );
        // Discovery §4.3: the issuer must be identical, a `/` counts.
        for other in [
            "https://op.example/realms/a/",
            "https://op.example/realms/b",
            "https://evil.example/realms/a",
            "http://op.example/realms/a",
        ] {
            assert!(
                Metadata::parse(&document(other), issuer).is_err(),
                "{other}"
            );
        }
        let mut bad = document(issuer);
        bad["token_endpoint"] = json!("http://op.example/token");
        assert!(Metadata::parse(&bad, issuer).is_err(), "http under https");
        bad = document(issuer);
        bad["jwks_uri"] = json!(null);
        assert!(Metadata::parse(&bad, issuer).is_err(), "no key set");
        bad = document(issuer);
        bad["userinfo_endpoint"] = json!("javascript:alert(1)");
        assert!(Metadata::parse(&bad, issuer).is_err(), "bad scheme");
        // A loopback issuer over http may have http endpoints.
        let local = "http://127.0.0.1";
        assert!(Metadata::parse(&document(local), local).is_ok());
    }

    fn claims_now(extra: Value) -> Map<String, Value> {
        let now = unix(SystemTime::now());
        let mut claims = map(json!({
            "iss": "https://op.example", "sub": "u1", "aud": "app",
            "iat": now, "exp": now + 300, "nonce": "n-1", "auth_time": now - 10,
        }));
        claims.extend(map(extra));
        claims
    }

    fn at_sign_in(nonce: &'static str) -> IdTokenChecks<'static> {
        IdTokenChecks {
            fresh: true,
            nonce: Some(nonce),
            access_token: Some("the-access-token"),
            max_age: None,
            login_since: None,
        }
    }

    #[test]
    fn id_token_rules_nonce_azp_iat_at_hash_and_auth_time() {
        let now = SystemTime::now();
        let leeway = Duration::from_secs(30);
        let check = |claims: Map<String, Value>, checks: IdTokenChecks<'_>| {
            id_token_rules(&claims, "app", Algorithm::RS256, checks, now, leeway)
        };
        let good = at_sign_in("n-1");
        assert_eq!(check(claims_now(json!({})), good), Ok(()));
        let at_hash = token_hash(Algorithm::RS256, "the-access-token");
        assert_eq!(check(claims_now(json!({"at_hash": at_hash})), good), Ok(()));
        let u = unix(now);
        let cases: &[(&str, Value, IdTokenChecks<'_>)] = &[
            ("another nonce", json!({}), at_sign_in("n-2")),
            ("no nonce", json!({"nonce": null}), good),
            ("azp of another client", json!({"azp": "other"}), good),
            (
                "several aud, no azp",
                json!({"aud": ["app", "other"]}),
                good,
            ),
            ("iat in the future", json!({"iat": u + 600}), good),
            ("iat too old", json!({"iat": u - 3600}), good),
            ("no iat", json!({"iat": null}), good),
            ("no sub", json!({"sub": ""}), good),
            (
                "at_hash of another token",
                json!({"at_hash": "AAAAAAAAAAAAAAAAAAAAAA"}),
                good,
            ),
            (
                "auth_time older than max_age",
                json!({"auth_time": u - 600}),
                IdTokenChecks {
                    max_age: Some(60),
                    ..good
                },
            ),
            (
                "no auth_time with max_age",
                json!({"auth_time": null}),
                IdTokenChecks {
                    max_age: Some(60),
                    ..good
                },
            ),
            (
                "auth_time before a prompt=login start",
                json!({"auth_time": u - 600}),
                IdTokenChecks {
                    login_since: Some(u - 5),
                    ..good
                },
            ),
        ];
        for (name, extra, checks) in cases {
            let mut claims = claims_now(extra.clone());
            claims.retain(|_, v| !v.is_null());
            assert!(check(claims, *checks).is_err(), "{name}");
        }
        // azp equal to the client, with several audiences: accepted.
        let several = claims_now(json!({"aud": ["app", "api"], "azp": "app"}));
        assert_eq!(check(several, good), Ok(()));
        // A kept ID token (a lookup): old `iat`, no nonce check.
        let kept = IdTokenChecks {
            fresh: false,
            nonce: None,
            access_token: None,
            max_age: None,
            login_since: None,
        };
        assert_eq!(check(claims_now(json!({"iat": u - 86_400})), kept), Ok(()));
    }

    #[test]
    fn logout_token_rules_follow_back_channel_logout_2_6() {
        let now = SystemTime::now();
        let u = unix(now);
        let leeway = Duration::from_secs(30);
        let event = json!({ BACKCHANNEL_LOGOUT_EVENT: {} });
        let good = json!({"iss": "i", "aud": "app", "iat": u, "jti": "j", "sid": "s1", "sub": "u1", "events": event});
        let revocation = logout_token_rules(&map(good.clone()), now, leeway).unwrap();
        assert_eq!(revocation.sid.as_deref(), Some("s1"));
        assert_eq!(revocation.sub.as_deref(), Some("u1"));
        let only_sub = logout_token_rules(
            &map(json!({"iat": u, "sub": "u1", "events": event})),
            now,
            leeway,
        )
        .unwrap();
        assert_eq!(only_sub.sid, None);
        let with = |patch: Value| {
            let mut claims = map(good.clone());
            for (k, v) in map(patch) {
                if v.is_null() {
                    claims.remove(&k);
                } else {
                    claims.insert(k, v);
                }
            }
            logout_token_rules(&claims, now, leeway)
        };
        for (name, patch) in [
            ("a nonce", json!({"nonce": "n"})),
            ("no events", json!({"events": null})),
            (
                "another event",
                json!({"events": {"http://example/other": {}}}),
            ),
            (
                "an event that is no object",
                json!({"events": {BACKCHANNEL_LOGOUT_EVENT: "x"}}),
            ),
            ("neither sid nor sub", json!({"sid": null, "sub": null})),
            ("a sid that is no string", json!({"sid": 5})),
            ("no iat", json!({"iat": null})),
            ("iat in the future", json!({"iat": u + 600})),
            ("iat too old", json!({"iat": u - 7200})),
            ("expired", json!({"exp": u - 600})),
        ] {
            assert!(with(patch).is_err(), "{name}");
        }
        assert!(with(json!({"exp": u + 120})).is_ok());
    }

    #[test]
    fn token_answers_are_bearer_tokens_with_an_expiry() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000);
        let answer = json!({"access_token": "at", "token_type": "Bearer", "expires_in": 60,
                            "id_token": "a.b.c", "refresh_token": "rt"});
        let tokens = parse_tokens(Some(&answer), now).unwrap();
        assert_eq!(tokens.expires_at, Some(now + Duration::from_secs(60)));
        assert_eq!(tokens.refresh_token.as_deref(), Some("rt"));
        let stringly = json!({"access_token": "at", "token_type": "bearer", "expires_in": "60"});
        assert!(parse_tokens(Some(&stringly), now).is_ok());
        for bad in [
            json!({"access_token": "at", "token_type": "DPoP"}),
            json!({"token_type": "Bearer"}),
            json!({"access_token": "at", "token_type": "Bearer", "expires_in": -1}),
            json!([1]),
        ] {
            assert!(parse_tokens(Some(&bad), now).is_err(), "{bad}");
        }
        // After a refresh, what the answer leaves out is kept.
        let previous = Session::new(SessionToken::new("old").unwrap())
            .with_id_token(Secret::new("old-id"))
            .with_refresh_token(Secret::new("old-rt"));
        let bare = json!({"access_token": "new", "token_type": "Bearer"});
        let next = session_of(parse_tokens(Some(&bare), now).unwrap(), Some(&previous));
        assert_eq!(next.token.expose(), "new");
        assert_eq!(next.id_token.unwrap().expose(), "old-id");
        assert_eq!(next.refresh_token.unwrap().expose(), "old-rt");
    }

    #[test]
    fn claims_map_to_the_neutral_user() {
        let claims = map(json!({
            "sub": "u1", "email": "a@b.c", "email_verified": "true", "preferred_username": "ada",
            "phone_number": "+33612345678", "auth_time": 1_700_000_000u64,
            "realm_access": {"roles": ["admin", 3, "ops"]},
        }));
        let user = user_from_claims(claims, "realm_access.roles", "keycloak").unwrap();
        assert_eq!(user.id, "u1");
        assert_eq!(user.email_verified, Some(true));
        assert_eq!(user.name.as_deref(), Some("ada"));
        assert_eq!(user.phone.as_deref(), Some("+33612345678"));
        assert_eq!(user.auth_time, Some(1_700_000_000));
        assert_eq!(user.groups, ["admin", "ops"]);
        assert_eq!(user.provider.as_deref(), Some("keycloak"));
        let one = map(json!({"sub": "u2", "groups": "staff"}));
        assert_eq!(
            user_from_claims(one, "groups", "oidc").unwrap().groups,
            ["staff"]
        );
        assert!(user_from_claims(map(json!({"email": "x"})), "groups", "oidc").is_none());
    }

    #[test]
    fn the_builder_refuses_what_cannot_work_and_redacts_the_secret() {
        assert!(Client::builder("not a url", "app").build().is_err());
        assert!(
            Client::builder("https://op.example?x=1", "app")
                .build()
                .is_err()
        );
        assert!(Client::builder("https://op.example", "").build().is_err());
        assert!(
            Client::builder("https://op.example", "app")
                .with_client_auth(ClientAuth::Basic)
                .build()
                .is_err(),
            "basic without a secret"
        );
        assert!(
            Client::builder("https://op.example", "app")
                .with_provider_name("bad name")
                .build()
                .is_err()
        );
        let client = Client::builder("https://op.example/", "app")
            .with_client_secret("hunter2-the-secret")
            .with_scopes(&["email"])
            .build()
            .unwrap();
        assert_eq!(client.inner.auth, ClientAuth::Basic);
        assert_eq!(client.inner.scope, "openid email");
        assert_eq!(
            client.inner.discovery_url.as_str(),
            "https://op.example/.well-known/openid-configuration"
        );
        assert!(!format!("{client:?}").contains("hunter2"));
        let public = Client::builder("https://op.example", "app")
            .build()
            .unwrap();
        assert_eq!(public.inner.auth, ClientAuth::None);
        let caps = public.capabilities();
        assert_eq!(caps.storage, SessionStorage::Sealed);
        assert!(caps.has_provider("oidc") && caps.back_channel_logout);
        assert_eq!(caps.revocation, Revocation::UntilExpiry);
    }
}
