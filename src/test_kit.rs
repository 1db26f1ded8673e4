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
//! use tower_layer::Layer as _;
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
//! # use tower_layer::Layer as _;
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

use crate::config::AuthConfig;
use crate::error::{Error, ErrorKind};
use crate::events::{FlowRejection, SignInMethod};
use crate::layer::AuthLayer;
use crate::upstream::{
    BoxFuture, CallbackOutcome, CallbackParams, FlowRecord, Grant, Lookup, Secret, SessionToken,
    SignOutScope, Upstream, User,
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
    sessions: HashMap<String, String>,
    grants: HashMap<String, String>,
    faults: HashMap<String, Fault>,
}

/// The kit's in-memory upstream.
#[derive(Clone, Default)]
pub struct MemoryUpstream {
    state: Arc<Mutex<MemoryState>>,
    lookups: Arc<AtomicU64>,
}

impl fmt::Debug for MemoryUpstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryUpstream")
            .field("lookups", &self.lookups.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

fn random_token() -> String {
    let bytes: [u8; 24] = rand::thread_rng().r#gen();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl MemoryUpstream {
    fn state(&self) -> std::sync::MutexGuard<'_, MemoryState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// How many user lookups reached this upstream.
    pub fn lookups(&self) -> u64 {
        self.lookups.load(Ordering::Relaxed)
    }
}

impl Upstream for MemoryUpstream {
    fn lookup<'a>(&'a self, token: &'a SessionToken) -> BoxFuture<'a, Result<Lookup, Error>> {
        Box::pin(async move {
            self.lookups.fetch_add(1, Ordering::Relaxed);
            let (user, fault) = {
                let state = self.state();
                let user = state
                    .sessions
                    .get(token.expose())
                    .and_then(|id| state.users.get(id))
                    .cloned();
                let fault = user.as_ref().and_then(|u| state.faults.get(&u.id).copied());
                (user, fault)
            };
            match (user, fault) {
                (None, _) | (Some(_), Some(Fault::Invalid)) => Ok(Lookup::Invalid),
                (Some(_), Some(Fault::Unavailable)) => Err(Error::new(ErrorKind::Status(
                    http::StatusCode::SERVICE_UNAVAILABLE,
                ))),
                (Some(_), Some(Fault::Hang)) => std::future::pending().await,
                (Some(user), None) => Ok(Lookup::Valid {
                    user,
                    expires_at: None,
                }),
            }
        })
    }

    fn providers(&self) -> &[&str] {
        &["test"]
    }

    fn sign_in_url(&self, provider: &str, _flow: &FlowRecord) -> Result<url::Url, Error> {
        url::Url::parse(&format!("https://upstream.test/_auth/{provider}"))
            .map_err(|e| Error::new(ErrorKind::InvalidInput).with_source(e))
    }

    /// Understands `?access_token=<key>` with a key from
    /// [`TestKit::magic_link`].
    fn complete_callback<'a>(
        &'a self,
        params: &'a CallbackParams,
        _flow: Option<&'a FlowRecord>,
    ) -> BoxFuture<'a, Result<CallbackOutcome, Error>> {
        Box::pin(async move {
            let key = params.single("access_token").ok().flatten().unwrap_or("");
            let mut state = self.state();
            let Some(user_id) = state.grants.remove(key) else {
                return Ok(CallbackOutcome::Failed {
                    status: http::StatusCode::BAD_REQUEST,
                    message: "This link has expired or was already used.".to_owned(),
                    rejection: Some(FlowRejection::ReplayedGrant),
                });
            };
            let token = random_token();
            state.sessions.insert(token.clone(), user_id.clone());
            let user = state.users.get(&user_id).cloned();
            let token = SessionToken::new(token).ok_or_else(|| Error::new(ErrorKind::Decode))?;
            let mut grant = Grant::new(token, SignInMethod::MagicLink);
            grant.user = user;
            Ok(CallbackOutcome::SignedIn(grant))
        })
    }

    fn sign_out<'a>(
        &'a self,
        token: &'a SessionToken,
        scope: SignOutScope,
    ) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async move {
            let mut state = self.state();
            let Some(user_id) = state.sessions.get(token.expose()).cloned() else {
                return Err(Error::new(ErrorKind::InvalidSession));
            };
            match scope {
                SignOutScope::This => {
                    state.sessions.remove(token.expose());
                }
                SignOutScope::All => state.sessions.retain(|_, id| *id != user_id),
                SignOutScope::Others => state
                    .sessions
                    .retain(|t, id| *id != user_id || t == token.expose()),
            }
            Ok(())
        })
    }

    fn reset_password<'a>(
        &'a self,
        _key: &'a Secret,
        _new_password: &'a str,
    ) -> BoxFuture<'a, Result<(), Error>> {
        // The memory upstream keeps no passwords; test resets against the
        // dev upstream (`authgate::dev`).
        Box::pin(async { Err(Error::new(ErrorKind::InvalidInput)) })
    }
}

/// The test kit. See the [module docs](self).
#[derive(Debug, Clone)]
pub struct TestKit {
    upstream: MemoryUpstream,
    layer: AuthLayer,
    cookie_name: String,
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
        let upstream = MemoryUpstream::default();
        let cookie_name = config.session_cookie_name();
        let layer = AuthLayer::new(config, upstream.clone());
        Self {
            upstream,
            layer,
            cookie_name,
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
        let token = random_token();
        self.upstream
            .state()
            .sessions
            .insert(token.clone(), user.user.id.clone());
        SessionToken::new(token).unwrap_or_else(|| unreachable!("hex tokens are valid"))
    }

    /// Requests that carry a new session of the user.
    pub fn signed_in(&self, user: &TestUser) -> TestRequest {
        let token = self.session(user);
        TestRequest {
            cookie: Some(format!(
                "{}={}",
                self.cookie_name,
                crate::cookie::encode_token(&token)
            )),
        }
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
        let key = random_token();
        self.upstream
            .state()
            .grants
            .insert(key.clone(), user.user.id.clone());
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

    /// How many user lookups reached the upstream (cache misses).
    pub fn upstream_lookups(&self) -> u64 {
        self.upstream.lookups()
    }

    /// What the response did to the session cookie.
    pub fn session_change<B>(&self, response: &Response<B>) -> SessionChange {
        let mut change = SessionChange::Unchanged;
        for value in response.headers().get_all(SET_COOKIE) {
            let Ok(parsed) = value.to_str().map(cookie::Cookie::parse) else {
                continue;
            };
            let Ok(parsed) = parsed else { continue };
            if parsed.name() == self.cookie_name {
                change = if parsed.value().is_empty() {
                    SessionChange::Cleared
                } else {
                    SessionChange::Set(parsed.value().to_owned())
                };
            }
        }
        change
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
