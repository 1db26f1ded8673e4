//! A test kit for apps built on authgate: test a protected handler in a few
//! lines, without a network.
//!
//! [`TestKit`] runs an in-memory upstream (no HTTP, so tokio's paused clock
//! drives the cache's TTL and stale window deterministically), creates
//! users, mints sessions, builds requests that carry a valid session cookie,
//! tells what a response did to the session, and makes the upstream answer
//! "invalid", fail or hang for one user so you can test your outage pages.
//!
//! ```
//! use authgate::{CurrentUser, test::TestKit};
//! use axum::{Router, routing::get};
//! use tower::ServiceExt as _;
//!
//! async fn account(user: CurrentUser) -> String {
//!     format!("Hello, {}", user.display_name())
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let kit = TestKit::new();
//! let user = kit.user("ada@example.test");
//! let app = kit.layer().layer(Router::new().route("/account", get(account)));
//! let response = app.oneshot(kit.signed_in(&user).get("/account")).await.unwrap();
//! assert_eq!(response.status(), 200);
//! # }
//! ```
//!
//! Outages and time:
//!
//! ```
//! # use authgate::{CurrentUser, test::{Fault, TestKit}};
//! # use axum::{Router, routing::get};
//! # use std::time::Duration;
//! # use tower::ServiceExt as _;
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! let kit = TestKit::new();
//! let user = kit.user("ada@example.test");
//! let app = kit.layer().layer(Router::new().route("/", get(|u: CurrentUser| async move { u.id.clone() })));
//! let request = kit.signed_in(&user);
//! assert_eq!(app.clone().oneshot(request.get("/")).await.unwrap().status(), 200);
//!
//! kit.fail(&user, Fault::Unavailable);
//! tokio::time::advance(Duration::from_secs(61)).await; // past the 60 s TTL
//! assert_eq!(app.clone().oneshot(request.get("/")).await.unwrap().status(), 200); // stale
//! tokio::time::advance(Duration::from_secs(301)).await; // past the stale window
//! assert_eq!(app.oneshot(request.get("/")).await.unwrap().status(), 503);
//! # }
//! ```

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use axum::body::Body;
use http::header::{COOKIE, SET_COOKIE};
use http::{Method, Request, Response};
use rand::Rng as _;

use std::time::{Duration, SystemTime};

use crate::config::AuthConfig;
use crate::cookie::SessionCodec;
use crate::error::Error;
use crate::events::{FlowRejection, SignInMethod};
use crate::layer::AuthLayer;
use crate::upstream::{
    BoxFuture, CallbackOutcome, CallbackParams, Capabilities, Correlation, FlowRecord, Grant,
    LandingKind, Lookup, Revocation, Session, SessionRevocation, SessionStorage, SessionToken,
    SignInRedirect, SignInStart, SignOutOutcome, SignOutScope, Upstream, User, Valid,
};

/// The public origin the kit's default configuration uses.
pub const TEST_ORIGIN: &str = "https://app.test";

/// A fixed 64-byte key for tests (never use it in production).
const TEST_KEY: [u8; 64] = [0x5a; 64];

/// How the kit's upstream misbehaves for one user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Fault {
    /// Every session of the user is definitively invalid (the cookie is
    /// cleared).
    Invalid,
    /// The upstream fails transiently (like a 503): the cookie is kept, the
    /// cached user is served within the stale window, then 503.
    Unavailable,
    /// The upstream never answers (the resolver's own timeout ends it).
    Hang,
    /// The upstream answers after this delay, with the answer it had when
    /// the lookup arrived (a slow network: a sign-out meanwhile does not
    /// change the answer already on its way).
    Delay(Duration),
}

/// A user of the kit's upstream.
#[derive(Debug, Clone)]
pub struct TestUser {
    /// The user as handlers see it.
    pub user: User,
}

impl TestUser {
    /// The user's id.
    pub fn id(&self) -> &str {
        &self.user.id
    }
}

/// What a response did to the session cookie.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionChange {
    /// A new session cookie was set (its value).
    Set(String),
    /// The session cookie was cleared.
    Cleared,
    /// The session cookie was not touched.
    Unchanged,
}

#[derive(Default)]
struct MemoryState {
    users: HashMap<String, User>,
    /// token → (user id, expiry).
    sessions: HashMap<String, (String, Option<SystemTime>)>,
    grants: HashMap<String, String>,
    faults: HashMap<String, Fault>,
    /// token → the provider's session id and when the user signed in to
    /// it (with back-channel logout).
    session_ids: HashMap<String, (String, SystemTime)>,
    /// logout token → whom it ends (one use).
    logout_tokens: HashMap<String, SessionRevocation>,
}

/// How the kit's upstream behaves: which seam v2 features it exercises.
#[derive(Debug, Clone)]
struct Modes {
    storage: SessionStorage,
    correlation: Correlation,
    revocation: Revocation,
    session_lifetime: Option<Duration>,
    rotate_after: Option<Duration>,
    token_len: usize,
    back_channel_logout: bool,
}

impl Default for Modes {
    fn default() -> Self {
        Self {
            storage: SessionStorage::Plain,
            correlation: Correlation::Single,
            revocation: Revocation::Upstream,
            session_lifetime: None,
            rotate_after: None,
            token_len: 24,
            back_channel_logout: false,
        }
    }
}

/// The kit's in-memory upstream. By default it behaves like Altogic
/// (opaque tokens in a plain cookie, no expiry, one redirect URL); its
/// `with_*` modes exercise the rest of the seam: sealed sessions, expiry,
/// rotation and `state` correlation.
#[derive(Clone, Default)]
pub struct MemoryUpstream {
    state: Arc<Mutex<MemoryState>>,
    lookups: Arc<AtomicU64>,
    rotations: Arc<AtomicU64>,
    modes: Modes,
}

impl fmt::Debug for MemoryUpstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryUpstream")
            .field("lookups", &self.lookups.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

fn random_token() -> String {
    random_hex(24)
}

fn random_hex(bytes: usize) -> String {
    let mut rng = rand::thread_rng();
    (0..bytes)
        .map(|_| format!("{:02x}", rng.r#gen::<u8>()))
        .collect()
}

impl MemoryUpstream {
    fn state(&self) -> std::sync::MutexGuard<'_, MemoryState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// How many user lookups reached this upstream.
    pub fn lookups(&self) -> u64 {
        self.lookups.load(Ordering::Relaxed)
    }

    /// How many sessions this upstream rotated.
    pub fn rotations(&self) -> u64 {
        self.rotations.load(Ordering::Relaxed)
    }

    /// Keeps whole sessions sealed in the cookie
    /// ([`SessionStorage::Sealed`]), each with a refresh token.
    #[must_use]
    pub fn with_sealed_sessions(mut self) -> Self {
        self.modes.storage = SessionStorage::Sealed;
        self
    }

    /// Sessions end `lifetime` after they are minted; the lookup says so.
    #[must_use]
    pub fn with_session_lifetime(mut self, lifetime: Duration) -> Self {
        self.modes.session_lifetime = Some(lifetime);
        self
    }

    /// Every lookup rotates the session (a refresh): the old token stops
    /// working, the new one is due for the next rotation after `after`.
    #[must_use]
    pub fn with_rotation(mut self, after: Duration) -> Self {
        self.modes.rotate_after = Some(after);
        self
    }

    /// Sign-ins carry the flow id back as `state` ([`Correlation::State`])
    /// and complete with `?state=…&code=…` ([`TestKit::authorization_code`]).
    #[must_use]
    pub fn with_state_correlation(mut self) -> Self {
        self.modes.correlation = Correlation::State;
        self
    }

    /// Signed-out sessions stay refused until they expire
    /// ([`Revocation::UntilExpiry`]).
    #[must_use]
    pub fn with_revocation_until_expiry(mut self) -> Self {
        self.modes.revocation = Revocation::UntilExpiry;
        self
    }

    /// Tokens of `bytes` random bytes (hex, so twice as many characters);
    /// default 24.
    #[must_use]
    pub fn with_token_bytes(mut self, bytes: usize) -> Self {
        self.modes.token_len = bytes.max(1);
        self
    }

    /// Sessions carry a provider session id (`sid`) and the layer answers
    /// `{prefix}/backchannel-logout` with logout tokens from
    /// [`TestKit::logout_token`] (OpenID Connect Back-Channel Logout). Like
    /// a provider whose ID tokens are verified locally, the kit keeps the
    /// sessions valid afterwards: only the layer's marks end them.
    #[must_use]
    pub fn with_back_channel_logout(mut self) -> Self {
        self.modes.back_channel_logout = true;
        self
    }

    /// A new session of `user_id`, as this upstream would hand it out.
    fn mint(&self, state: &mut MemoryState, user_id: &str) -> Session {
        self.mint_in(state, user_id, None)
    }

    /// A new session of `user_id` in the provider session `sid` (a new one,
    /// signed in now, when `None`; with back-channel logout).
    fn mint_in(
        &self,
        state: &mut MemoryState,
        user_id: &str,
        sid: Option<(String, SystemTime)>,
    ) -> Session {
        let token = random_hex(self.modes.token_len);
        if self.modes.back_channel_logout {
            let sid = sid.unwrap_or_else(|| (format!("sid-{}", random_hex(8)), SystemTime::now()));
            state.session_ids.insert(token.clone(), sid);
        }
        let expires_at = self
            .modes
            .session_lifetime
            .map(|lifetime| SystemTime::now() + lifetime);
        state
            .sessions
            .insert(token.clone(), (user_id.to_owned(), expires_at));
        let token =
            SessionToken::new(token).unwrap_or_else(|| unreachable!("hex tokens are valid"));
        let mut session = Session::new(token);
        session.expires_at = expires_at;
        if self.modes.storage == SessionStorage::Sealed {
            session.refresh_token = Some(crate::upstream::Secret::new(random_token()));
        }
        session
    }
}

impl Upstream for MemoryUpstream {
    fn capabilities(&self) -> Capabilities {
        Capabilities::new()
            .with_providers(["test", "other"])
            .with_storage(self.modes.storage)
            .with_revocation(self.modes.revocation)
            .with_sign_out_scopes(&[SignOutScope::This, SignOutScope::All, SignOutScope::Others])
            .with_back_channel_logout(self.modes.back_channel_logout)
    }

    fn lookup<'a>(&'a self, session: &'a Session) -> BoxFuture<'a, Result<Lookup, Error>> {
        Box::pin(async move {
            self.lookups.fetch_add(1, Ordering::Relaxed);
            let token = session.token.expose();
            let answer = {
                let mut state = self.state();
                let found = state
                    .sessions
                    .get(token)
                    .cloned()
                    .filter(|(_, expires)| expires.is_none_or(|at| SystemTime::now() < at))
                    .and_then(|(id, expires)| Some((state.users.get(&id)?.clone(), expires)));
                let fault = found
                    .as_ref()
                    .and_then(|(u, _)| state.faults.get(&u.id).copied());
                let valid = match found {
                    Some((user, expires)) => {
                        let mut valid = Valid::new(user);
                        valid.expires_at = expires;
                        // The provider session and its sign-in time, which a
                        // refresh keeps (a `sub` logout ends sessions signed
                        // in before it).
                        if let Some((sid, signed_in)) = state.session_ids.get(token) {
                            valid.session_id = Some(sid.clone());
                            valid.issued_at = Some(*signed_in);
                        }
                        if let Some(after) = self.modes.rotate_after {
                            state.sessions.remove(token);
                            // A refresh stays in the provider's session.
                            let sid = state.session_ids.remove(token);
                            let next = self.mint_in(&mut state, &valid.user.id, sid);
                            self.rotations.fetch_add(1, Ordering::Relaxed);
                            valid.expires_at = next.expires_at;
                            valid.recheck_at = Some(SystemTime::now() + after);
                            valid.rotated = Some(next);
                        }
                        Some(valid)
                    }
                    None => None,
                };
                (valid, fault)
            };
            match answer {
                (None, _) | (Some(_), Some(Fault::Invalid)) => Ok(Lookup::Invalid),
                (Some(_), Some(Fault::Unavailable)) => Err(Error::unavailable()),
                (Some(_), Some(Fault::Hang)) => std::future::pending().await,
                (Some(valid), Some(Fault::Delay(delay))) => {
                    tokio::time::sleep(delay).await;
                    Ok(Lookup::Valid(valid))
                }
                (Some(valid), None) => Ok(Lookup::Valid(valid)),
            }
        })
    }

    fn start_sign_in<'a>(
        &'a self,
        start: SignInStart<'a>,
    ) -> BoxFuture<'a, Result<SignInRedirect, Error>> {
        let mut url = format!("https://upstream.test/_auth/{}", start.provider);
        if self.modes.correlation == Correlation::State {
            url.push_str("?state=");
            url.push_str(start.flow.as_str());
        }
        let redirect = url::Url::parse(&url)
            .map(|url| SignInRedirect::new(url, self.modes.correlation))
            .map_err(Error::invalid_input);
        Box::pin(std::future::ready(redirect))
    }

    /// Understands `?access_token=<key>` with a key from
    /// [`TestKit::magic_link`], and `?code=<key>` with a key from
    /// [`TestKit::authorization_code`] for the flow's provider.
    fn complete_callback<'a>(
        &'a self,
        params: &'a CallbackParams,
        flow: Option<&'a FlowRecord>,
    ) -> BoxFuture<'a, Result<CallbackOutcome, Error>> {
        Box::pin(async move {
            let single = |name| params.single(name).ok().flatten();
            let (key, method) = match (single("code"), flow) {
                (Some(code), Some(flow)) => (code, SignInMethod::OAuth(flow.provider.clone())),
                (Some(_), None) => {
                    return Ok(CallbackOutcome::Failed {
                        status: http::StatusCode::BAD_REQUEST,
                        message: "No sign-in was started in this browser.".to_owned(),
                        rejection: Some(FlowRejection::MissingFlow),
                        landing: LandingKind::OAuth,
                    });
                }
                (None, _) => (
                    single("access_token").unwrap_or(""),
                    SignInMethod::MagicLink,
                ),
            };
            let mut state = self.state();
            let Some(user_id) = state.grants.remove(key) else {
                return Ok(CallbackOutcome::Failed {
                    status: http::StatusCode::BAD_REQUEST,
                    message: "This link has expired or was already used.".to_owned(),
                    rejection: Some(FlowRejection::ReplayedGrant),
                    landing: match method {
                        SignInMethod::OAuth(_) => LandingKind::OAuth,
                        _ => LandingKind::MagicLink,
                    },
                });
            };
            let session = self.mint(&mut state, &user_id);
            let sid = state
                .session_ids
                .get(session.token.expose())
                .map(|(sid, _)| sid.clone());
            let mut grant = Grant::from_session(session, method);
            grant.user = state.users.get(&user_id).cloned();
            grant.session_id = sid;
            Ok(CallbackOutcome::SignedIn(grant))
        })
    }

    fn sign_out<'a>(
        &'a self,
        session: &'a Session,
        scope: SignOutScope,
        _after: &'a url::Url,
    ) -> BoxFuture<'a, Result<SignOutOutcome, Error>> {
        Box::pin(async move {
            let token = session.token.expose();
            let mut state = self.state();
            let Some((user_id, _)) = state.sessions.get(token).cloned() else {
                return Err(Error::invalid_session());
            };
            match scope {
                SignOutScope::This => {
                    state.sessions.remove(token);
                }
                SignOutScope::All => state.sessions.retain(|_, (id, _)| *id != user_id),
                SignOutScope::Others => state
                    .sessions
                    .retain(|t, (id, _)| *id != user_id || t == token),
            }
            Ok(SignOutOutcome::Done)
        })
    }

    /// Accepts each token from [`TestKit::logout_token`] once; anything
    /// else is refused as a provider's verifier would.
    fn back_channel_logout<'a>(
        &'a self,
        logout_token: &'a str,
    ) -> BoxFuture<'a, Result<SessionRevocation, Error>> {
        let found = self.state().logout_tokens.remove(logout_token);
        Box::pin(std::future::ready(found.ok_or_else(|| {
            Error::invalid_input("not a logout token of this provider")
        })))
    }
}

/// The test kit. See the [module docs](self).
#[derive(Debug, Clone)]
pub struct TestKit {
    upstream: MemoryUpstream,
    layer: AuthLayer,
    cookie_name: String,
    codec: SessionCodec,
}

impl Default for TestKit {
    fn default() -> Self {
        Self::new()
    }
}

impl TestKit {
    /// A kit with the default configuration for `https://app.test` and a
    /// fixed test key.
    pub fn new() -> Self {
        let config = AuthConfig::new(TEST_ORIGIN)
            .and_then(|config| config.with_key(TEST_KEY))
            .unwrap_or_else(|_| unreachable!("the test origin and key are valid"));
        Self::with_config(config)
    }

    /// A kit with your configuration (your cookie name, pages, TTLs).
    pub fn with_config(config: AuthConfig) -> Self {
        Self::with_upstream(config, MemoryUpstream::default())
    }

    /// A kit with your configuration and an upstream in one of its modes
    /// (`MemoryUpstream::default().with_rotation(..)`, …).
    pub fn with_upstream(config: AuthConfig, upstream: MemoryUpstream) -> Self {
        let cookie_name = config.session_cookie_name();
        let layer = AuthLayer::new(config, upstream.clone());
        let codec = layer.codec().clone();
        Self {
            upstream,
            layer,
            cookie_name,
            codec,
        }
    }

    /// The layer to wrap the app under test in. All clones share the kit's
    /// cache and upstream.
    pub fn layer(&self) -> AuthLayer {
        self.layer.clone()
    }

    /// The kit's upstream.
    pub fn upstream(&self) -> &MemoryUpstream {
        &self.upstream
    }

    /// Creates a user with this e-mail (named after its local part).
    pub fn user(&self, email: &str) -> TestUser {
        let id = format!("user-{}", random_token());
        let mut user = User::new(
            id.clone(),
            serde_json::json!({"_id": id, "email": email, "provider": "Test"}),
        );
        user.email = Some(email.to_owned());
        user.name = email.split('@').next().map(str::to_owned);
        user.provider = Some("Test".to_owned());
        self.upstream.state().users.insert(id, user.clone());
        TestUser { user }
    }

    /// Creates a user with this e-mail in these groups
    /// ([`User::groups`], which [`RequireGroup`](crate::RequireGroup)
    /// reads).
    pub fn user_in_groups(&self, email: &str, groups: &[&str]) -> TestUser {
        let mut test_user = self.user(email);
        test_user.user.groups = groups.iter().map(|g| (*g).to_owned()).collect();
        self.upstream
            .state()
            .users
            .insert(test_user.user.id.clone(), test_user.user.clone());
        test_user
    }

    /// Creates a user from the upstream's own object (for Altogic: `_id`,
    /// `email`, `name`, custom fields …), as the upstream would return it.
    pub fn user_with(&self, raw: serde_json::Value) -> TestUser {
        let field = |key: &str| raw.get(key).and_then(|v| v.as_str()).map(str::to_owned);
        let id = field("_id").unwrap_or_else(|| format!("user-{}", random_token()));
        let mut user = User::new(id.clone(), raw.clone());
        user.email = field("email");
        user.phone = field("phone");
        user.name = field("name");
        user.provider = field("provider");
        self.upstream.state().users.insert(id, user.clone());
        TestUser { user }
    }

    /// Mints a new session for the user and returns its token.
    pub fn session(&self, user: &TestUser) -> SessionToken {
        self.upstream
            .mint(&mut self.upstream.state(), &user.user.id)
            .token
    }

    /// Mints a new session for the user and returns its session cookie
    /// value (`Cookie: {name}={value}`), encoded as the layer stores it
    /// (sealed, when the upstream's mode says so). A value over 4,000
    /// bytes is a chunked cookie: use [`signed_in`](Self::signed_in).
    pub fn session_cookie(&self, user: &TestUser) -> String {
        let session = self
            .upstream
            .mint(&mut self.upstream.state(), &user.user.id);
        self.codec
            .encode(&session)
            .unwrap_or_else(|_| unreachable!("the kit's sessions fit a cookie"))
    }

    /// Requests that carry a new session of the user.
    pub fn signed_in(&self, user: &TestUser) -> TestRequest {
        let value = self.session_cookie(user);
        TestRequest {
            cookie: Some(self.codec.cookie_header(&value)),
        }
    }

    /// Requests that carry this session cookie value (for example one a
    /// response set).
    pub fn with_session_cookie(&self, value: &str) -> TestRequest {
        TestRequest {
            cookie: Some(self.codec.cookie_header(value)),
        }
    }

    /// An authorization code that signs the user in on
    /// `{prefix}/callback?state=…&code=…` (with
    /// [`MemoryUpstream::with_state_correlation`]).
    pub fn authorization_code(&self, user: &TestUser) -> String {
        let code = random_token();
        self.upstream
            .state()
            .grants
            .insert(code.clone(), user.user.id.clone());
        code
    }

    /// A logout token, as the provider would post to
    /// `{prefix}/backchannel-logout` (with
    /// [`MemoryUpstream::with_back_channel_logout`]): it ends the provider
    /// session of `session_cookie` (a value from
    /// [`session_cookie`](Self::session_cookie) or a response), or every
    /// session of `user` when no cookie is given. Usable once.
    pub fn logout_token(&self, user: &TestUser, session_cookie: Option<&str>) -> String {
        let sid = session_cookie
            .and_then(|value| self.codec.decode(value.as_bytes()))
            .and_then(|session| {
                self.upstream
                    .state()
                    .session_ids
                    .get(session.token.expose())
                    .map(|(sid, _)| sid.clone())
            });
        let token = format!("logout.{}", random_token());
        self.upstream.state().logout_tokens.insert(
            token.clone(),
            SessionRevocation {
                sid,
                sub: Some(user.user.id.clone()),
            },
        );
        token
    }

    /// Requests without a session.
    pub fn anonymous(&self) -> TestRequest {
        TestRequest { cookie: None }
    }

    /// A callback path that signs the user in (a one-time magic link). Its
    /// `GET` signs in at once: the kit's upstream does not ask for the
    /// click on `{prefix}/continue` that Altogic's e-mail links wait for
    /// ([`AuthConfig::with_email_link_confirmation`](crate::AuthConfig::with_email_link_confirmation)).
    pub fn magic_link(&self, user: &TestUser) -> String {
        let key = self.authorization_code(user);
        format!(
            "{}/callback?action=magic-link&status=200&access_token={key}",
            self.layer.config().route_prefix()
        )
    }

    /// Makes the upstream misbehave for this user from now on.
    pub fn fail(&self, user: &TestUser, fault: Fault) {
        self.upstream
            .state()
            .faults
            .insert(user.user.id.clone(), fault);
    }

    /// Makes the upstream answer normally for this user again.
    pub fn heal(&self, user: &TestUser) {
        self.upstream.state().faults.remove(&user.user.id);
    }

    /// How many sessions of the user the upstream holds.
    pub fn sessions_of(&self, user: &TestUser) -> usize {
        self.upstream
            .state()
            .sessions
            .values()
            .filter(|(id, _)| *id == user.user.id)
            .count()
    }

    /// How many user lookups reached the upstream (cache misses).
    pub fn upstream_lookups(&self) -> u64 {
        self.upstream.lookups()
    }

    /// What the response did to the session cookie. A chunked cookie's
    /// value is its chunks joined, as [`with_session_cookie`](Self::with_session_cookie)
    /// takes it.
    pub fn session_change<B>(&self, response: &Response<B>) -> SessionChange {
        let mut single = None;
        let mut chunks: Vec<(usize, String)> = Vec::new();
        let chunk_prefix = format!("{}__", self.cookie_name);
        for value in response.headers().get_all(SET_COOKIE) {
            let Ok(parsed) = value.to_str().map(cookie::Cookie::parse) else {
                continue;
            };
            let Ok(parsed) = parsed else { continue };
            if parsed.name() == self.cookie_name {
                single = Some(parsed.value().to_owned());
            } else if let Some(index) = parsed
                .name()
                .strip_prefix(&chunk_prefix)
                .and_then(|i| i.parse::<usize>().ok())
                && !parsed.value().is_empty()
            {
                chunks.push((index, parsed.value().to_owned()));
            }
        }
        if !chunks.is_empty() {
            chunks.sort();
            return SessionChange::Set(chunks.into_iter().map(|(_, v)| v).collect());
        }
        match single {
            Some(value) if value.is_empty() => SessionChange::Cleared,
            Some(value) => SessionChange::Set(value),
            None => SessionChange::Unchanged,
        }
    }
}

/// Builds requests that carry (or do not carry) a session cookie, as a
/// browser navigation (`Accept: text/html`, same-origin).
#[derive(Debug, Clone)]
pub struct TestRequest {
    cookie: Option<String>,
}

impl TestRequest {
    /// A `GET` page navigation.
    pub fn get(&self, uri: &str) -> Request<Body> {
        self.request(Method::GET, uri, Body::empty())
    }

    /// A same-origin form `POST` (`application/x-www-form-urlencoded`).
    pub fn post_form(&self, uri: &str, form: &str) -> Request<Body> {
        let mut request = self.request(Method::POST, uri, Body::from(form.to_owned()));
        request.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/x-www-form-urlencoded"),
        );
        request
    }

    /// Any request, with the session cookie, `Accept: text/html` and
    /// `Sec-Fetch-Site: same-origin`.
    pub fn request(&self, method: Method, uri: &str, body: Body) -> Request<Body> {
        let mut request = Request::new(body);
        *request.method_mut() = method;
        *request.uri_mut() = uri.parse().unwrap_or_else(|_| http::Uri::from_static("/"));
        let headers = request.headers_mut();
        headers.insert(
            http::header::ACCEPT,
            http::HeaderValue::from_static("text/html"),
        );
        headers.insert(
            "sec-fetch-site",
            http::HeaderValue::from_static("same-origin"),
        );
        if let Some(cookie) = self
            .cookie
            .as_deref()
            .and_then(|c| http::HeaderValue::from_str(c).ok())
        {
            headers.insert(COOKIE, cookie);
        }
        request
    }
}
