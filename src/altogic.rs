//! The Altogic client: every server-side operation of Altogic's
//! `AuthManager`, with Altogic's real wire protocol.
//!
//! One [`Client`] holds one shared `reqwest::Client` (timeouts, a body-size
//! cap, redirects off) and sends `X-Client-Key` on every call and the
//! `Session` header per request — never shared mutable state, unlike the JS
//! SDK. Errors keep Altogic's own `code` and `message`
//! ([`Error::code`], [`Error::message`]); users keep Altogic's whole object
//! in [`User::raw`].
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use authgate::altogic::Client;
//!
//! let altogic = Client::new("https://myapp.c1-na.altogic.com", "client-key")?;
//! let signed_in = altogic.sign_in_with_email("ada@example.com", "secret").await?;
//! if let Some(grant) = signed_in.grant() {
//!     // `auth.sign_in(grant)` in a handler turns it into the session cookie.
//!     # let _ = grant;
//! }
//! # Ok(()) }
//! ```
//!
//! The client implements [`Upstream`], so it is what
//! [`AuthLayer::new`](crate::AuthLayer::new) takes.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderValue, Method, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use url::Url;

use crate::error::{ConfigError, Error, ErrorKind, UpstreamErrorItem};
use crate::events::{AuthEvent, AuthEvents, FlowRejection, SignInMethod};
use crate::upstream::wire::{is_json_media_type, strict_json};
use crate::upstream::{
    BoxFuture, CallbackOutcome, CallbackParams, Capabilities, Correlation, FlowRecord, Grant,
    LandingKind, Lookup, Secret, Session as UpstreamSession, SessionToken, SignInRedirect,
    SignInStart, SignOutOutcome, SignOutScope, Upstream, User, Valid,
};

/// The OAuth providers Altogic supports (`/_auth/{provider}`).
pub const PROVIDERS: &[&str] = &[
    "google", "facebook", "twitter", "apple", "discord", "github",
];

/// The actions Altogic puts on its redirects back to the app.
const ACTIONS: &[&str] = &[
    "oauth-signin",
    "magic-link",
    "email-confirm",
    "reset-pwd",
    "change-email",
];

/// Error codes that definitively mean "this session is gone".
const SESSION_GONE_CODES: &[&str] = &["invalid_session_token", "missing_session_token"];

const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const DEFAULT_BODY_LIMIT: usize = 1024 * 1024;
const MAX_GRANT_LEN: usize = 4096;

/// A client for one Altogic environment. Cheap to clone.
///
/// See the [module docs](self) for an example.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
    user_agent: Option<HeaderValue>,
}

struct Inner {
    http: reqwest::Client,
    env_url: Url,
    api_base: String,
    client_key: HeaderValue,
    api_key: Option<HeaderValue>,
    body_limit: usize,
    timeout: Duration,
    events: AuthEvents,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("altogic::Client")
            .field("env_url", &self.inner.env_url.as_str())
            .field("client_key", &"<redacted>")
            .finish()
    }
}

/// Builds a [`Client`] with non-default settings.
///
/// See the [module docs](self) for an example.
#[must_use]
pub struct ClientBuilder {
    env_url: String,
    client_key: String,
    api_key: Option<String>,
    timeout: Duration,
    connect_timeout: Duration,
    body_limit: usize,
    http: Option<reqwest::Client>,
    events: AuthEvents,
}

impl fmt::Debug for ClientBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientBuilder")
            .field("env_url", &self.env_url)
            .field("timeout", &self.timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("body_limit", &self.body_limit)
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

    /// Altogic's optional API key, sent raw in `Authorization`.
    pub fn with_api_key(mut self, api_key: impl Into<String>) -> Self {
        self.api_key = Some(api_key.into());
        self
    }

    /// Shares an existing `reqwest::Client`. It must not follow redirects
    /// (`redirect::Policy::none()`). The total timeout set here still applies
    /// to every request; the connect timeout is the shared client's own.
    pub fn with_http_client(mut self, client: reqwest::Client) -> Self {
        self.http = Some(client);
        self
    }

    /// Where to report password, e-mail and phone changes made through
    /// this client (see [`crate::events`]). Default: `tracing` only.
    pub fn with_events(mut self, events: AuthEvents) -> Self {
        self.events = events;
        self
    }

    /// Builds the client.
    pub fn build(self) -> Result<Client, ConfigError> {
        let invalid = || ConfigError::InvalidUrl {
            what: "altogic environment URL",
            value: self.env_url.clone(),
        };
        let trimmed = self.env_url.trim_end_matches('/');
        let env_url = Url::parse(trimmed).map_err(|_| invalid())?;
        if !matches!(env_url.scheme(), "http" | "https")
            || env_url.host().is_none()
            || env_url.query().is_some()
        {
            return Err(invalid());
        }
        let mut client_key =
            HeaderValue::from_str(&self.client_key).map_err(|_| ConfigError::InvalidUrl {
                what: "altogic client key",
                value: "<redacted>".into(),
            })?;
        client_key.set_sensitive(true);
        let api_key = match self.api_key {
            Some(key) => {
                let mut value =
                    HeaderValue::from_str(&key).map_err(|_| ConfigError::InvalidUrl {
                        what: "altogic api key",
                        value: "<redacted>".into(),
                    })?;
                value.set_sensitive(true);
                Some(value)
            }
            None => None,
        };
        let http =
            crate::upstream::wire::http_client(self.http, self.timeout, self.connect_timeout)?;
        let api_base = format!("{trimmed}/_api/rest/v1/auth/");
        Ok(Client {
            user_agent: None,
            inner: Arc::new(Inner {
                http,
                env_url,
                api_base,
                client_key,
                api_key,
                body_limit: self.body_limit,
                timeout: self.timeout,
                events: self.events,
            }),
        })
    }
}

/// A user and, when one was created, their new session.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct AuthResponse {
    /// The user.
    pub user: User,
    /// The new session; `None` while e-mail or phone confirmation is pending.
    pub session: Option<Session>,
    method: SignInMethod,
}

impl AuthResponse {
    /// The session as a [`Grant`] for
    /// [`Auth::sign_in`](crate::Auth::sign_in), if one was created.
    pub fn grant(&self) -> Option<Grant> {
        self.session.as_ref().map(|session| {
            Grant::new(session.token.clone(), self.method.clone()).with_user(self.user.clone())
        })
    }

    /// Consumes the response into a [`Grant`], if a session was created.
    pub fn into_grant(self) -> Option<Grant> {
        let user = self.user;
        let method = self.method;
        self.session
            .map(|session| Grant::new(session.token, method).with_user(user))
    }

    /// How this response signed the user in, if it did.
    pub fn method(&self) -> &SignInMethod {
        &self.method
    }
}

/// One Altogic session, as listed by [`Client::get_all_sessions`].
#[derive(Clone)]
#[non_exhaustive]
pub struct Session {
    /// The owner's user id.
    pub user_id: String,
    /// The session token.
    pub token: SessionToken,
    /// When the session was created (as Altogic sent it, RFC 3339).
    pub creation_dtm: Option<String>,
    /// Access group keys.
    pub access_group_keys: Vec<String>,
    /// The device, as Altogic parsed its user agent.
    pub user_agent: Option<UserAgent>,
    /// Altogic's whole session object.
    pub raw: Value,
}

impl Session {
    /// A stable, non-secret id for this session (a hash of its token), safe
    /// to put in HTML forms; see [`Client::sign_out_session_by_id`].
    pub fn id(&self) -> String {
        session_id(&self.token)
    }

    /// The [`id`](Self::id) of the session `token` names: 24 hex digits of
    /// its SHA-256, so an app can tie its own records (last seen, device) to
    /// rows of [`Client::get_all_sessions`] without keeping tokens.
    pub fn id_of(token: &SessionToken) -> String {
        session_id(token)
    }

    /// A short description of the device, e.g. "Chrome on Linux".
    pub fn device(&self) -> String {
        match &self.user_agent {
            Some(ua) => match (&ua.family, &ua.os) {
                (Some(browser), Some(os)) => format!("{browser} on {os}"),
                (Some(browser), None) => browser.clone(),
                (None, Some(os)) => os.clone(),
                (None, None) => "Unknown device".to_owned(),
            },
            None => "Unknown device".to_owned(),
        }
    }
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("user_id", &self.user_id)
            .field("token", &self.token)
            .field("creation_dtm", &self.creation_dtm)
            .field("user_agent", &self.user_agent)
            .finish_non_exhaustive()
    }
}

/// The device behind a session.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct UserAgent {
    /// Browser family, e.g. `Chrome`.
    pub family: Option<String>,
    /// Operating system family, e.g. `Mac OS X`.
    pub os: Option<String>,
    /// Device family.
    pub device: Option<String>,
}

fn session_id(token: &SessionToken) -> String {
    let digest = Sha256::digest(token.expose().as_bytes());
    digest[..12].iter().map(|b| format!("{b:02x}")).collect()
}

impl Client {
    /// A client for the environment URL (`https://<app>.<cluster>.altogic.com`
    /// or `https://<cluster>.altogic.com/e:<envId>`) with default settings.
    pub fn new(env_url: &str, client_key: &str) -> Result<Self, ConfigError> {
        Self::builder(env_url, client_key).build()
    }

    /// A builder for non-default timeouts, body limit, API key or HTTP client.
    pub fn builder(env_url: &str, client_key: &str) -> ClientBuilder {
        ClientBuilder {
            env_url: env_url.to_owned(),
            client_key: client_key.to_owned(),
            api_key: None,
            timeout: DEFAULT_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            body_limit: DEFAULT_BODY_LIMIT,
            http: None,
            events: AuthEvents::default(),
        }
    }

    /// A handle that sends the browser's `User-Agent` upstream, so the
    /// sessions it creates show the user's device (Altogic records it per
    /// session). Cheap: shares the connection pool.
    #[must_use]
    pub fn with_user_agent(&self, user_agent: &str) -> Client {
        Client {
            inner: self.inner.clone(),
            user_agent: HeaderValue::from_str(user_agent).ok(),
        }
    }

    /// The environment URL.
    pub fn env_url(&self) -> &Url {
        &self.inner.env_url
    }

    // ---- sign-up and sign-in -------------------------------------------

    /// `POST /auth/signup-email`. `name_or_data` is a name string or an
    /// object of user fields (it may carry `emailVerified: true`). The
    /// session is `None` while e-mail confirmation is pending.
    pub async fn sign_up_with_email(
        &self,
        email: &str,
        password: &str,
        name_or_data: Option<Value>,
    ) -> Result<AuthResponse, Error> {
        let body = json!({"email": email, "password": password, "nameOrUserData": name_or_data});
        let value = self
            .json(Method::POST, "signup-email", &[], None, Some(&body))
            .await?;
        auth_response(value, SignInMethod::SignUp)
    }

    /// `POST /auth/signup-phone`.
    pub async fn sign_up_with_phone(
        &self,
        phone: &str,
        password: &str,
        name_or_data: Option<Value>,
    ) -> Result<AuthResponse, Error> {
        let body = json!({"phone": phone, "password": password, "nameOrUserData": name_or_data});
        let value = self
            .json(Method::POST, "signup-phone", &[], None, Some(&body))
            .await?;
        auth_response(value, SignInMethod::SignUp)
    }

    /// `POST /auth/signin-email`.
    pub async fn sign_in_with_email(
        &self,
        email: &str,
        password: &str,
    ) -> Result<AuthResponse, Error> {
        let body = json!({"email": email, "password": password});
        let value = self
            .json(Method::POST, "signin-email", &[], None, Some(&body))
            .await?;
        auth_response(value, SignInMethod::Password)
    }

    /// `POST /auth/signin-phone`.
    pub async fn sign_in_with_phone(
        &self,
        phone: &str,
        password: &str,
    ) -> Result<AuthResponse, Error> {
        let body = json!({"phone": phone, "password": password});
        let value = self
            .json(Method::POST, "signin-phone", &[], None, Some(&body))
            .await?;
        auth_response(value, SignInMethod::Password)
    }

    /// `POST /auth/send-code`: texts a sign-in code to the phone.
    pub async fn send_sign_in_code(&self, phone: &str) -> Result<(), Error> {
        self.no_data(Method::POST, "send-code", &[("phone", phone)], None, None)
            .await
    }

    /// `POST /auth/signin-code`.
    pub async fn sign_in_with_code(&self, phone: &str, code: &str) -> Result<AuthResponse, Error> {
        let query = [("code", code), ("phone", phone)];
        let value = self
            .json(Method::POST, "signin-code", &query, None, None)
            .await?;
        auth_response(value, SignInMethod::Code)
    }

    /// The URL that starts an OAuth sign-in with `provider`
    /// (`{envUrl}/_auth/{provider}`).
    pub fn provider_sign_in_url(&self, provider: &str) -> Result<Url, Error> {
        if !PROVIDERS.contains(&provider) {
            return Err(Error::new(ErrorKind::InvalidInput));
        }
        let mut url = self.inner.env_url.clone();
        url.path_segments_mut()
            .map_err(|()| Error::new(ErrorKind::InvalidInput))?
            .pop_if_empty()
            .push("_auth")
            .push(provider);
        Ok(url)
    }

    /// `GET /auth/grant?key=`: exchanges a landing's `access_token` for a
    /// session. One-time: never cached, never retried, never coalesced.
    pub async fn get_auth_grant(&self, access_token: &str) -> Result<AuthResponse, Error> {
        let value = self
            .json(Method::GET, "grant", &[("key", access_token)], None, None)
            .await?;
        auth_response(value, SignInMethod::Other("grant".to_owned()))
    }

    // ---- the signed-in user ----------------------------------------------

    /// `GET /auth/user`: the session's user, fresh from the database.
    pub async fn get_user(&self, session: &SessionToken) -> Result<User, Error> {
        let value = self
            .json(Method::GET, "user", &[], Some(session), None)
            .await?;
        user_from_value(value)
    }

    /// `GET /auth/sessions`: all active sessions of the session's user.
    pub async fn get_all_sessions(&self, session: &SessionToken) -> Result<Vec<Session>, Error> {
        let value = self
            .json(Method::GET, "sessions", &[], Some(session), None)
            .await?;
        match value {
            Value::Array(items) => items.into_iter().map(session_from_value).collect(),
            _ => Err(Error::new(ErrorKind::Decode)),
        }
    }

    /// `POST /auth/signout`: ends `other` (a session of the same user), or
    /// the current session when `other` is `None`.
    pub async fn sign_out(
        &self,
        session: &SessionToken,
        other: Option<&SessionToken>,
    ) -> Result<(), Error> {
        let body = match other {
            Some(token) => json!({"token": token.expose()}),
            None => json!({}),
        };
        self.no_data(Method::POST, "signout", &[], Some(session), Some(&body))
            .await
    }

    /// Ends the session whose [`Session::id`] is `id` (looked up among the
    /// user's sessions), so forms never carry a token. Returns the ended
    /// session's token — pass it to [`Auth::revoke`](crate::Auth::revoke) so
    /// the cache forgets it at once — or `None` when no such session exists.
    pub async fn sign_out_session_by_id(
        &self,
        session: &SessionToken,
        id: &str,
    ) -> Result<Option<SessionToken>, Error> {
        let sessions = self.get_all_sessions(session).await?;
        match sessions.into_iter().find(|s| s.id() == id) {
            Some(target) => {
                self.sign_out(session, Some(&target.token)).await?;
                Ok(Some(target.token))
            }
            None => Ok(None),
        }
    }

    /// `POST /auth/signout-all`: ends every session of the user.
    pub async fn sign_out_all(&self, session: &SessionToken) -> Result<(), Error> {
        self.no_data(Method::POST, "signout-all", &[], Some(session), None)
            .await
    }

    /// `POST /auth/signout-all-except`: ends every session but this one.
    pub async fn sign_out_all_except_current(&self, session: &SessionToken) -> Result<(), Error> {
        self.no_data(Method::POST, "signout-all-except", &[], Some(session), None)
            .await
    }

    // ---- account changes -------------------------------------------------

    /// `POST /auth/change-pwd`.
    pub async fn change_password(
        &self,
        session: &SessionToken,
        new_password: &str,
        old_password: &str,
    ) -> Result<(), Error> {
        let body = json!({"newPassword": new_password, "oldPassword": old_password});
        self.no_data(Method::POST, "change-pwd", &[], Some(session), Some(&body))
            .await?;
        self.emit(AuthEvent::PasswordChanged { user_id: None });
        Ok(())
    }

    /// `POST /auth/change-email`: Altogic mails a confirmation to the new
    /// address (if confirmation is on); returns the user.
    pub async fn change_email(
        &self,
        session: &SessionToken,
        current_password: &str,
        new_email: &str,
    ) -> Result<User, Error> {
        let body = json!({"currentPassword": current_password, "newEmail": new_email});
        let value = self
            .json(
                Method::POST,
                "change-email",
                &[],
                Some(session),
                Some(&body),
            )
            .await?;
        let user = user_from_value(value)?;
        if user.email.as_deref() == Some(new_email) {
            self.emit(AuthEvent::EmailChanged {
                user_id: Some(user.id.clone()),
            });
        }
        Ok(user)
    }

    /// `POST /auth/change-phone`: Altogic texts a code to the new phone (if
    /// confirmation is on); returns the user.
    pub async fn change_phone(
        &self,
        session: &SessionToken,
        current_password: &str,
        new_phone: &str,
    ) -> Result<User, Error> {
        let body = json!({"currentPassword": current_password, "newPhone": new_phone});
        let value = self
            .json(
                Method::POST,
                "change-phone",
                &[],
                Some(session),
                Some(&body),
            )
            .await?;
        let user = user_from_value(value)?;
        if user.phone.as_deref() == Some(new_phone) {
            self.emit(AuthEvent::PhoneChanged {
                user_id: Some(user.id.clone()),
            });
        }
        Ok(user)
    }

    /// `POST /auth/verify-phone`: confirms a phone with its SMS code. After a
    /// sign-up the response carries a session; after a phone change it does
    /// not.
    pub async fn verify_phone(&self, phone: &str, code: &str) -> Result<AuthResponse, Error> {
        let query = [("code", code), ("phone", phone)];
        let value = self
            .json(Method::POST, "verify-phone", &query, None, None)
            .await?;
        let response = auth_response(value, SignInMethod::PhoneVerification)?;
        if response.session.is_none() {
            // No session: this confirmed a phone change, not a sign-up.
            self.emit(AuthEvent::PhoneChanged {
                user_id: Some(response.user.id.clone()),
            });
        }
        Ok(response)
    }

    /// `POST /auth/resend`: resends the e-mail confirmation.
    pub async fn resend_verification_email(&self, email: &str) -> Result<(), Error> {
        self.no_data(Method::POST, "resend", &[("email", email)], None, None)
            .await
    }

    /// `POST /auth/resend-code`: resends the phone confirmation code.
    pub async fn resend_verification_code(&self, phone: &str) -> Result<(), Error> {
        self.no_data(Method::POST, "resend-code", &[("phone", phone)], None, None)
            .await
    }

    /// `POST /auth/send-magic`: mails a magic sign-in link.
    pub async fn send_magic_link_email(&self, email: &str) -> Result<(), Error> {
        self.no_data(Method::POST, "send-magic", &[("email", email)], None, None)
            .await
    }

    /// `POST /auth/send-reset`: mails a password-reset link.
    pub async fn send_reset_pwd_email(&self, email: &str) -> Result<(), Error> {
        self.no_data(Method::POST, "send-reset", &[("email", email)], None, None)
            .await
    }

    /// `POST /auth/reset-pwd?key=`: sets a new password with the key from a
    /// `reset-pwd` landing.
    pub async fn reset_pwd_with_token(
        &self,
        key: &Secret,
        new_password: &str,
    ) -> Result<(), Error> {
        let body = json!({"newPassword": new_password});
        self.no_data(
            Method::POST,
            "reset-pwd",
            &[("key", key.expose())],
            None,
            Some(&body),
        )
        .await?;
        self.emit(AuthEvent::PasswordChanged { user_id: None });
        Ok(())
    }

    /// `POST /auth/send-reset-code`: texts a password-reset code.
    pub async fn send_reset_pwd_code(&self, phone: &str) -> Result<(), Error> {
        self.no_data(
            Method::POST,
            "send-reset-code",
            &[("phone", phone)],
            None,
            None,
        )
        .await
    }

    /// `POST /auth/reset-pwd-code`: sets a new password with an SMS code.
    pub async fn reset_pwd_with_code(
        &self,
        phone: &str,
        code: &str,
        new_password: &str,
    ) -> Result<(), Error> {
        let body = json!({"newPassword": new_password});
        self.no_data(
            Method::POST,
            "reset-pwd-code",
            &[("phone", phone), ("code", code)],
            None,
            Some(&body),
        )
        .await?;
        self.emit(AuthEvent::PasswordChanged { user_id: None });
        Ok(())
    }

    fn emit(&self, event: AuthEvent) {
        self.inner.events.emit(event);
    }

    // ---- transport -------------------------------------------------------

    async fn json(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        session: Option<&SessionToken>,
        body: Option<&Value>,
    ) -> Result<Value, Error> {
        let answer = self.send(method, path, query, session, body).await?;
        if !answer.json {
            return Err(Error::new(ErrorKind::Decode).with_source("answer is not JSON"));
        }
        strict_json(&answer.bytes).map_err(|e| Error::new(ErrorKind::Decode).with_source(e))
    }

    async fn no_data(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        session: Option<&SessionToken>,
        body: Option<&Value>,
    ) -> Result<(), Error> {
        self.send(method, path, query, session, body)
            .await
            .map(drop)
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        session: Option<&SessionToken>,
        body: Option<&Value>,
    ) -> Result<Answer, Error> {
        let inner = &self.inner;
        let mut url = Url::parse(&format!("{}{path}", inner.api_base))
            .map_err(|e| Error::new(ErrorKind::InvalidInput).with_source(e))?;
        if !query.is_empty() {
            // A query serializer, never concatenation (SECURITY.md T-B3.3).
            url.query_pairs_mut().extend_pairs(query);
        }
        let mut request = inner
            .http
            .request(method, url)
            .timeout(inner.timeout)
            .header("X-Client", "authgate")
            .header("X-Client-Key", inner.client_key.clone());
        if let Some(user_agent) = &self.user_agent {
            request = request.header(http::header::USER_AGENT, user_agent.clone());
        }
        if let Some(api_key) = &inner.api_key {
            request = request.header(http::header::AUTHORIZATION, api_key.clone());
        }
        if let Some(token) = session {
            let mut value = HeaderValue::from_str(token.expose())
                .map_err(|_| Error::new(ErrorKind::InvalidInput))?;
            value.set_sensitive(true);
            request = request.header("Session", value);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let mut response = request.send().await.map_err(Error::from_reqwest)?;
        let status = response.status();
        let json = response
            .headers()
            .get(http::header::CONTENT_TYPE)
            .is_none_or(|value| is_json_media_type(value.as_bytes()));
        if response
            .content_length()
            .is_some_and(|len| len > inner.body_limit as u64)
        {
            return Err(Error::new(ErrorKind::Decode).with_source("upstream answer too large"));
        }
        let mut bytes = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(Error::from_reqwest)? {
            if bytes.len() + chunk.len() > inner.body_limit {
                return Err(Error::new(ErrorKind::Decode).with_source("upstream answer too large"));
            }
            bytes.extend_from_slice(&chunk);
        }
        if status.is_success() {
            return Ok(Answer { bytes, json });
        }
        Err(classify_failure(status, &bytes))
    }
}

/// A 2xx answer's body, and whether it claims to be JSON.
struct Answer {
    bytes: Vec<u8>,
    json: bool,
}

/// Turns a non-2xx answer into an [`Error`]: only a 4xx whose errors carry a
/// session-gone code is [`ErrorKind::InvalidSession`] (SECURITY.md R1).
fn classify_failure(status: StatusCode, body: &[u8]) -> Error {
    let items = parse_error_items(body);
    let session_gone = status.is_client_error()
        && items.iter().any(|item| {
            item.code
                .as_deref()
                .is_some_and(|c| SESSION_GONE_CODES.contains(&c))
        });
    let kind = if session_gone {
        ErrorKind::InvalidSession
    } else {
        ErrorKind::Status(status)
    };
    Error::new(kind).with_items(items)
}

/// Altogic's wire errors: `{"errors": [...]}` or `{"errors": {...}}`, or the
/// whole body as one entry or array of entries.
fn parse_error_items(body: &[u8]) -> Vec<UpstreamErrorItem> {
    let Ok(value) = serde_json::from_slice::<Value>(body) else {
        return Vec::new();
    };
    let errors = match value {
        Value::Object(mut map) => map.remove("errors").unwrap_or(Value::Object(map)),
        other => other,
    };
    let entries = match errors {
        Value::Array(entries) => entries,
        Value::Object(_) => vec![errors],
        _ => Vec::new(),
    };
    entries
        .into_iter()
        .filter_map(|entry| UpstreamErrorItem::deserialize(entry).ok())
        .filter(|item| item.code.is_some() || item.message.is_some())
        .collect()
}

fn string_field(map: &serde_json::Map<String, Value>, key: &str) -> Option<String> {
    map.get(key)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

/// Maps Altogic's user object to the neutral [`User`], keeping it whole in
/// `raw`. A user without a string `_id` is a decode error, never "no user".
pub(crate) fn user_from_value(value: Value) -> Result<User, Error> {
    let Value::Object(map) = &value else {
        return Err(Error::new(ErrorKind::Decode).with_source("user is not an object"));
    };
    let Some(id) = string_field(map, "_id") else {
        return Err(Error::new(ErrorKind::Decode).with_source("user has no _id"));
    };
    let mut user = User::new(id, Value::Null);
    user.email = string_field(map, "email");
    user.phone = string_field(map, "phone");
    user.name = string_field(map, "name");
    user.picture = string_field(map, "profilePicture");
    user.provider = string_field(map, "provider");
    user.email_verified = map.get("emailVerified").and_then(Value::as_bool);
    user.raw = crate::upstream::RawJson::new(&value);
    Ok(user)
}

fn session_from_value(value: Value) -> Result<Session, Error> {
    let decode = |what: &'static str| Error::new(ErrorKind::Decode).with_source(what);
    let Value::Object(map) = &value else {
        return Err(decode("session is not an object"));
    };
    let token = map
        .get("token")
        .and_then(Value::as_str)
        .and_then(SessionToken::new)
        .ok_or_else(|| decode("session has no usable token"))?;
    let user_agent = map.get("userAgent").and_then(Value::as_object).map(|ua| {
        let nested = |key: &str| {
            ua.get(key)
                .and_then(Value::as_object)
                .and_then(|m| string_field(m, "family"))
        };
        UserAgent {
            family: string_field(ua, "family"),
            os: nested("os"),
            device: nested("device"),
        }
    });
    Ok(Session {
        user_id: string_field(map, "userId").unwrap_or_default(),
        token,
        creation_dtm: string_field(map, "creationDtm"),
        access_group_keys: map
            .get("accessGroupKeys")
            .and_then(Value::as_array)
            .map(|keys| {
                keys.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default(),
        user_agent,
        raw: value,
    })
}

fn auth_response(value: Value, method: SignInMethod) -> Result<AuthResponse, Error> {
    let Value::Object(mut map) = value else {
        return Err(Error::new(ErrorKind::Decode).with_source("answer is not an object"));
    };
    let user = user_from_value(map.remove("user").unwrap_or(Value::Null))?;
    let session = match map.remove("session") {
        None | Some(Value::Null) => None,
        Some(session) => Some(session_from_value(session)?),
    };
    Ok(AuthResponse {
        user,
        session,
        method,
    })
}

fn failed(landing: LandingKind, message: &str, rejection: FlowRejection) -> CallbackOutcome {
    CallbackOutcome::Failed {
        status: StatusCode::BAD_REQUEST,
        message: message.to_owned(),
        rejection: Some(rejection),
        landing,
    }
}

/// The kind of an Altogic landing, by its `action`.
fn landing_kind(action: &str) -> LandingKind {
    match action {
        "oauth-signin" => LandingKind::OAuth,
        "magic-link" => LandingKind::MagicLink,
        "email-confirm" => LandingKind::EmailConfirmation,
        "change-email" => LandingKind::EmailChange,
        "reset-pwd" => LandingKind::PasswordReset,
        _ => LandingKind::Unknown,
    }
}

/// A grant key from a landing must look like a token before it is sent
/// anywhere (SECURITY.md T-B3.5).
fn plausible_grant(key: &str) -> bool {
    !key.is_empty() && key.len() <= MAX_GRANT_LEN && key.bytes().all(|b| b.is_ascii_graphic())
}

/// What a landing's query says, before anything is sent upstream
/// (UPSTREAMS.md §1.5).
enum Landing<'a> {
    /// Duplicated, unknown or missing parameters (SECURITY.md T-B6.1).
    Malformed,
    /// The upstream reports a failure (its text goes to the log only).
    Failed(LandingKind, FlowRejection, &'a str),
    EmailChanged,
    /// A successful landing with a plausible grant key.
    Grant {
        action: &'a str,
        key: &'a str,
    },
}

impl<'a> Landing<'a> {
    fn parse(params: &'a CallbackParams) -> Self {
        if params.has_duplicates() {
            return Self::Malformed;
        }
        let single = |name| params.single(name).ok().flatten();
        let Some(action) = single("action").filter(|a| ACTIONS.contains(a)) else {
            return Self::Malformed;
        };
        let status = single("status")
            .and_then(|s| s.parse::<u16>().ok())
            .filter(|s| (200..=599).contains(s));
        let Some(status) = status else {
            return Self::Malformed;
        };
        if !(200..300).contains(&status) || single("error").is_some() {
            // A declined consent comes back as 401/403 on an OAuth landing.
            let reason = match (action, status) {
                ("oauth-signin", 401 | 403) => FlowRejection::ConsentDenied,
                _ => FlowRejection::UpstreamRefused,
            };
            let text = single("error").unwrap_or("The sign-in did not complete.");
            return Self::Failed(landing_kind(action), reason, text);
        }
        if action == "change-email" {
            return Self::EmailChanged;
        }
        match single("access_token").filter(|k| plausible_grant(k)) {
            Some(key) => Self::Grant { action, key },
            None => Self::Malformed,
        }
    }
}

impl Client {
    async fn complete_landing(
        &self,
        params: &CallbackParams,
        flow: Option<&FlowRecord>,
    ) -> Result<CallbackOutcome, Error> {
        let (action, key) = match Landing::parse(params) {
            Landing::Malformed => {
                let kind = params
                    .single("action")
                    .ok()
                    .flatten()
                    .map_or(LandingKind::Unknown, landing_kind);
                return Ok(failed(
                    kind,
                    "This sign-in link is malformed.",
                    FlowRejection::MalformedLanding,
                ));
            }
            Landing::Failed(kind, reason, text) => return Ok(failed(kind, text, reason)),
            Landing::EmailChanged => return Ok(CallbackOutcome::EmailChanged),
            Landing::Grant { action, key } => (action, key),
        };
        if action == "reset-pwd" {
            return Ok(CallbackOutcome::PasswordReset(Secret::new(key)));
        }
        let method = match (action, flow) {
            ("oauth-signin", Some(flow)) => SignInMethod::OAuth(flow.provider.clone()),
            ("oauth-signin", None) => {
                // A landing this browser never started: login CSRF.
                return Ok(failed(
                    LandingKind::OAuth,
                    "No sign-in was started in this browser. Please start again.",
                    FlowRejection::MissingFlow,
                ));
            }
            ("magic-link", _) => SignInMethod::MagicLink,
            _ => SignInMethod::EmailConfirmation,
        };
        let client = match params.user_agent() {
            Some(user_agent) => self.with_user_agent(user_agent),
            None => self.clone(),
        };
        match client.get_auth_grant(key).await {
            Ok(response) => match response.into_grant() {
                Some(mut grant) => {
                    // The provider that really signed in is the user's own
                    // (`Google` for a Google user): it picks the browser's
                    // flow when several are in flight.
                    grant.method = match method {
                        SignInMethod::OAuth(started) => SignInMethod::OAuth(
                            grant
                                .user
                                .as_ref()
                                .and_then(|u| u.provider.as_deref())
                                .map_or(started, str::to_ascii_lowercase),
                        ),
                        other => other,
                    };
                    Ok(CallbackOutcome::SignedIn(grant))
                }
                None => Err(Error::new(ErrorKind::Decode).with_source("grant without session")),
            },
            Err(err) if err.status().is_some_and(|s| s.is_client_error()) => Ok(failed(
                landing_kind(action),
                "This link has expired or was already used. Please sign in again.",
                FlowRejection::ReplayedGrant,
            )),
            Err(err) => Err(err),
        }
    }
}

impl Upstream for Client {
    fn capabilities(&self) -> Capabilities {
        Capabilities::new()
            .with_providers(PROVIDERS.iter().copied())
            .with_sign_out_scopes(&[SignOutScope::This, SignOutScope::All, SignOutScope::Others])
    }

    fn lookup<'a>(&'a self, session: &'a UpstreamSession) -> BoxFuture<'a, Result<Lookup, Error>> {
        Box::pin(async move {
            match self.get_user(&session.token).await {
                Ok(user) => Ok(Lookup::Valid(Valid::new(user))),
                Err(err) if err.is_invalid_session() => Ok(Lookup::Invalid),
                Err(err) => Err(err),
            }
        })
    }

    /// Altogic redirects every provider back to the app's one redirect URL
    /// with no `state`: [`Correlation::Single`].
    fn start_sign_in<'a>(
        &'a self,
        start: SignInStart<'a>,
    ) -> BoxFuture<'a, Result<SignInRedirect, Error>> {
        let redirect = self
            .provider_sign_in_url(start.provider)
            .map(|url| SignInRedirect::new(url, Correlation::Single));
        Box::pin(std::future::ready(redirect))
    }

    fn is_email_link(&self, params: &CallbackParams) -> bool {
        matches!(
            Landing::parse(params),
            Landing::Grant {
                action: "magic-link" | "email-confirm",
                ..
            }
        )
    }

    fn complete_callback<'a>(
        &'a self,
        params: &'a CallbackParams,
        flow: Option<&'a FlowRecord>,
    ) -> BoxFuture<'a, Result<CallbackOutcome, Error>> {
        Box::pin(self.complete_landing(params, flow))
    }

    fn sign_out<'a>(
        &'a self,
        session: &'a UpstreamSession,
        scope: SignOutScope,
        _after: &'a Url,
    ) -> BoxFuture<'a, Result<SignOutOutcome, Error>> {
        Box::pin(async move {
            let token = &session.token;
            match scope {
                SignOutScope::This => Client::sign_out(self, token, None).await,
                SignOutScope::All => self.sign_out_all(token).await,
                SignOutScope::Others => self.sign_out_all_except_current(token).await,
            }
            .map(|()| SignOutOutcome::Done)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_session_codes_on_4xx_are_definitive() {
        let body = br#"{"errors":[{"origin":"x","code":"invalid_session_token","message":"m"}]}"#;
        let cases = [
            ("401 + invalid_session_token", 401, &body[..], true),
            ("400 + invalid_session_token", 400, &body[..], true),
            ("500 + invalid_session_token", 500, &body[..], false),
            (
                "401 + missing_session_token (single object)",
                401,
                &br#"{"errors":{"code":"missing_session_token"}}"#[..],
                true,
            ),
            (
                "401 + other code",
                401,
                &br#"{"errors":[{"code":"invalid_client_key"}]}"#[..],
                false,
            ),
            ("401 html", 401, &b"<html>nope</html>"[..], false),
            ("404 empty", 404, &b""[..], false),
        ];
        for (name, status, body, definitive) in cases {
            let err = classify_failure(StatusCode::from_u16(status).unwrap(), body);
            assert_eq!(err.is_invalid_session(), definitive, "{name}");
        }
    }

    #[test]
    fn user_without_id_is_a_decode_error() {
        for value in [json!({}), json!({"_id": null}), json!([]), json!(null)] {
            let err = user_from_value(value.clone()).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Decode, "{value}");
        }
        let user = user_from_value(json!({"_id": "u1", "name": "Ada", "custom": 7})).unwrap();
        assert_eq!(user.id, "u1");
        assert_eq!(user.raw.get("custom"), Some(json!(7)));
    }

    #[test]
    fn provider_url_is_built_from_the_env_url() {
        let client = Client::new("https://c1.altogic.com/e:abc/", "k").unwrap();
        assert_eq!(
            client.provider_sign_in_url("google").unwrap().as_str(),
            "https://c1.altogic.com/e:abc/_auth/google"
        );
        assert!(client.provider_sign_in_url("google\r\nX: 1").is_err());
    }

    #[test]
    fn debug_output_redacts_the_client_key() {
        let client = Client::new("https://c1.altogic.com", "super-secret-key").unwrap();
        assert!(!format!("{client:?}").contains("super-secret-key"));
    }
}
