//! An in-memory, Webcom-compatible auth server for development and tests
//! (features `dev-upstream` and `webcom`).
//!
//! [`WebcomDev`] runs a small axum server on a local port that speaks the
//! Orange Webcom authentication wire protocol (UPSTREAMS.md §2) under
//! `/auth/v2/{appId}/`, plus what a browser sees of Webcom: the OAuth
//! sign-in page of redirect mode, a simulated OAuth provider for code mode
//! (`/_dev/oauth/{provider}/authorize`), an outbox of every code it
//! "sent" (`/_dev/outbox`, `/_dev/outbox.json`, linked from `/`) and the picture its OAuth
//! users have (`/_dev/avatar.svg`, in `providerProfile.picture`). Nothing
//! leaves the process.
//!
//! Like the Altogic dev server it is written from the wire protocol alone
//! and never uses the crate's Webcom client, so a misunderstanding in the
//! client cannot hide behind the same one here.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use authgate::dev::webcom::WebcomDev;
//!
//! let webcom = WebcomDev::builder().with_app_id("my-app").spawn().await?;
//! // authgate::webcom::Client::builder(webcom.url(), webcom.app_id()).build()
//! println!("base URL: {}, app: {}", webcom.url(), webcom.app_id());
//! # Ok(()) }
//! ```
//!
//! # REST endpoints
//!
//! Paths are under `/auth/v2/{appId}/`; every request must carry the
//! client version `?c=` (`[bnai]<major>.<minor>.<patch>`, e.g. `n3.12.0`),
//! else `400 MISSING_PARAMETER`. "Bearer" means `Authorization: Bearer
//! <token>`. JSON bodies need `Content-Type: application/json`, forms
//! `application/x-www-form-urlencoded`. A sign-in answers
//! `{"token","user"}` with `user` = `{"uid","provider","providerUid",
//! "providerProfile"?,"expires"}` (`expires` in seconds since the epoch).
//!
//! | method + path | input | success |
//! |---|---|---|
//! | GET `decode` | Bearer | `{"data": user}` |
//! | POST `anonymous/signin` | – | sign-in (provider `anonymous`) |
//! | POST `password/signin` | JSON `{"id","password"}` or `{"id","password":<otp>,"challenge"}` | sign-in |
//! | POST `phone/signin` | JSON `{"id","password":<otp>,"challenge"}` | sign-in (the identity is created on first use) |
//! | POST `{password,phone}/otps` | JSON string id, `?template&sender&locale` | `{"challenge"}`; the code goes to the outbox |
//! | POST `custom.{p}/signin` | form `token` (from [`WebcomDev::issue_custom_token`], single use) | sign-in (provider `custom.{p}`) |
//! | POST `wassup/signin` | form `mcc` (3 digits or `wisp`) | sign-in (provider `wassup`) |
//! | POST `server/signin` | form `token`: RS512 JWT `{"id","timestamp"}` (ms, ±5 min) checked with the key of [`WebcomDevBuilder::with_server_key`] | sign-in (provider `server`) |
//! | GET `{oauth}/signin` | `?mode=redirect&to&from&pm&c` | the consent page |
//! | POST `{oauth}/signin` | form `to`, `from`, `name`, `email`, `decision=allow\|deny` | 303 to `to` plus `__wcsession` (allow) or unchanged (deny) |
//! | POST `session` | JSON `{"sessionKey","requestKey"}` | sign-in; the key is single-use and base64url(SHA-256(requestKey)) with padding must equal its `from` |
//! | GET `{oauth}/callback` | `?mode=code&code&state` | sign-in; the code is single-use and must have been issued for this provider and `state` |
//! | POST `{password,phone}/identities` | JSON `{"id","password"?,"displayName"?,"profile"?}`, optional Bearer (joins that account) | `{"uid","provider","providerUid","verificationPending"?}`; a verification token (e-mail) or code (phone) goes to the outbox |
//! | POST `{p}/identities/{id}/verify` | JSON `{"token"}` (e-mail) or `{"challenge","password"}` (phone) | sign-in |
//! | POST `{p}/identities/{id}/sendVerification` | – | `{"challenge"}` (phone) or `{}`; `INVALID_STATE` when already verified |
//! | POST `password/identities/{id}/reset` | – | `{}` (a reset code goes to the outbox; the same answer for an unknown address) |
//! | PUT `password/identities/{id}/password` | form `password` (current password or reset code), `newPassword` | `{}` |
//! | PUT `{p}/identities/{puid}/providerProfile[/{path}]` | Bearer of that identity, JSON data | `{}` |
//! | DELETE `{p}/identities/{puid}` | Bearer of that identity, fresh | `{}` (the account goes with its last identity) |
//! | GET `accounts/{uid}` | Bearer of that account | `{"uid","createdOn":<ms>,"providers":{p:{puid:{…}}}}` |
//! | DELETE `accounts/{uid}` | Bearer of that account, fresh | `{}` |
//!
//! A context bearer on a sign-in (the SDK's
//! `useCurrentContextForNextAuthOperation`) is accepted and ignored: the
//! dev server makes no multi-factor tokens.
//!
//! "Fresh" means the token was issued within the fresh-auth window
//! (default 5 minutes, [`WebcomDevBuilder::with_fresh_auth_window`]);
//! otherwise `403 TOKEN_TOO_OLD`. OAuth providers are `facebook`,
//! `google`, `apple`, `github`, `gitlab`, `orange` and `mobileconnect*`.
//!
//! # Errors
//!
//! `{"error":{"code","message"}}` with: `400 MISSING_PARAMETER` (missing or
//! malformed input, no `c`), `400 MISSING_EMAIL_OR_PASSWORD`,
//! `400 TOO_WEAK_PASSWORD` (under 8 characters), `400 INVALID_STATE` (an
//! unknown, used, expired or mismatched `__wcsession` or code; verifying a
//! verified identity), `401 INVALID_TOKEN` (no, unknown or expired bearer
//! token), `403 INVALID_CREDENTIALS`, `403 UNVERIFIED_IDENTITY` (with
//! [`WebcomDevBuilder::with_verification_required`]), `403 TOKEN_TOO_OLD`,
//! `404 UNKNOWN_APPLICATION`, `404 UNSUPPORTED_PROVIDER` (unknown path),
//! `409 EXISTING_IDENTITY`.
//!
//! Tokens live for the token lifetime (default 1 hour,
//! [`WebcomDevBuilder::with_token_lifetime`]); there is no revocation, as
//! on Webcom. One-time codes, `__wcsession` keys and authorization codes
//! live 10 minutes; a code dies after 5 wrong attempts.

use std::fmt;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{any, get};
use serde_json::Value;
use tokio::sync::watch;

use super::ServerCtl;
use super::pages::esc;

mod api;
mod store;
#[cfg(test)]
mod tests;

use store::Store;

/// The application id a [`WebcomDev`] serves unless configured otherwise.
pub const DEFAULT_APP_ID: &str = "dev-app";

const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

pub use super::Channel;

/// Why a code was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum WebcomMessageKind {
    /// A one-time password for sign-in (`otps`).
    Otp,
    /// An identity verification token (e-mail) or code (phone).
    Verification,
    /// A password reset code.
    PasswordReset,
}

impl WebcomMessageKind {
    /// `otp`, `verification` or `password-reset`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Otp => "otp",
            Self::Verification => "verification",
            Self::PasswordReset => "password-reset",
        }
    }
}

/// One code the dev server "sent".
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct WebcomMessage {
    /// E-mail (`password` identities) or SMS (`phone` identities).
    pub channel: Channel,
    /// What it is for.
    pub kind: WebcomMessageKind,
    /// The e-mail address or MSISDN.
    pub to: String,
    /// The code or token.
    pub code: String,
    /// When it was sent (server clock, with any [`WebcomDev::advance_clock`] skew).
    pub sent_at: SystemTime,
}

impl WebcomMessage {
    /// The message as served by `/_dev/outbox.json`.
    pub fn to_json(&self) -> Value {
        serde_json::json!({
            "channel": self.channel.as_str(),
            "kind": self.kind.as_str(),
            "to": self.to,
            "code": self.code,
            "sentAt": store::unix_secs(self.sent_at),
        })
    }
}

/// Whether `name` is an OAuth provider of the simulator.
fn is_oauth_provider(name: &str) -> bool {
    matches!(
        name,
        "facebook" | "google" | "apple" | "github" | "gitlab" | "orange"
    ) || name
        .strip_prefix("mobileconnect")
        .is_some_and(|c| c.len() == 3 && c.bytes().all(|b| b.is_ascii_uppercase()))
}

struct Shared {
    store: Mutex<Store>,
    calls: AtomicU64,
    app_id: String,
    url: String,
    server_keys: Vec<(String, jsonwebtoken::DecodingKey)>,
    wassup_msisdn: String,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A handle to a running Webcom dev server. Cheap to clone.
#[derive(Clone)]
pub struct WebcomDev {
    shared: Arc<Shared>,
    ctl: Arc<ServerCtl>,
}

impl fmt::Debug for WebcomDev {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebcomDev")
            .field("url", &self.shared.url)
            .field("app_id", &self.shared.app_id)
            .field("calls", &self.calls())
            .finish_non_exhaustive()
    }
}

impl WebcomDev {
    /// Starts a server with the defaults on `127.0.0.1` with a free port.
    pub async fn spawn() -> io::Result<Self> {
        Self::builder().spawn().await
    }

    /// A builder for a customised server.
    pub fn builder() -> WebcomDevBuilder {
        WebcomDevBuilder::default()
    }

    /// The base URL, `http://127.0.0.1:<port>` (the auth route is
    /// `{url}/auth/v2/{app_id}`).
    pub fn url(&self) -> &str {
        &self.shared.url
    }

    /// The application id it serves.
    pub fn app_id(&self) -> &str {
        &self.shared.app_id
    }

    /// The simulated provider's authorization URL for code mode: it shows
    /// a consent page and sends the browser to `redirect_uri` with `code`
    /// and the `state` the app adds.
    pub fn authorize_url(&self, provider: &str, redirect_uri: &str) -> String {
        let mut url = format!("{}/_dev/oauth/{provider}/authorize?", self.shared.url);
        url.push_str(
            &url::form_urlencoded::Serializer::new(String::new())
                .append_pair("redirect_uri", redirect_uri)
                .finish(),
        );
        url
    }

    /// A single-use credential for `POST /custom.{provider}/signin` that
    /// signs in `provider_uid` with `profile` (what a third-party identity
    /// provider would hand the app).
    pub fn issue_custom_token(&self, provider: &str, provider_uid: &str, profile: Value) -> String {
        let token = super::store::random_token();
        self.shared.lock().custom_tokens.insert(
            token.clone(),
            (provider.to_owned(), provider_uid.to_owned(), profile),
        );
        token
    }

    /// Every code sent so far, oldest first.
    pub fn outbox(&self) -> Vec<WebcomMessage> {
        self.shared.lock().outbox.clone()
    }

    /// The newest code sent to `to`.
    pub fn last_message_to(&self, to: &str) -> Option<WebcomMessage> {
        self.shared
            .lock()
            .outbox
            .iter()
            .rev()
            .find(|m| m.to == to)
            .cloned()
    }

    /// How many requests reached `/auth/v2/` (including refused ones).
    pub fn calls(&self) -> u64 {
        self.shared.calls.load(Ordering::Relaxed)
    }

    /// The lifetime of tokens issued from now on.
    pub fn set_token_lifetime(&self, lifetime: Duration) {
        self.shared.lock().token_lifetime = lifetime;
    }

    /// Moves the server's clock forward (tokens get older, codes expire).
    pub fn advance_clock(&self, by: Duration) {
        let mut st = self.shared.lock();
        st.skew = st.skew.saturating_add(by);
    }

    /// Stops the server (open connections get up to 5 seconds).
    pub async fn shutdown(self) {
        self.ctl.stop.send_replace(true);
        let task = self
            .ctl
            .task
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(mut task) = task
            && tokio::time::timeout(SHUTDOWN_GRACE, &mut task)
                .await
                .is_err()
        {
            task.abort();
        }
    }
}

/// Configures and starts a [`WebcomDev`].
#[derive(Clone)]
pub struct WebcomDevBuilder {
    app_id: String,
    token_lifetime: Duration,
    fresh_auth_window: Duration,
    verification_required: bool,
    server_keys: Vec<(String, Vec<u8>)>,
    wassup_msisdn: String,
    addr: SocketAddr,
}

impl fmt::Debug for WebcomDevBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebcomDevBuilder")
            .field("app_id", &self.app_id)
            .field("token_lifetime", &self.token_lifetime)
            .field("fresh_auth_window", &self.fresh_auth_window)
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl Default for WebcomDevBuilder {
    fn default() -> Self {
        Self {
            app_id: DEFAULT_APP_ID.to_owned(),
            token_lifetime: Duration::from_secs(3600),
            fresh_auth_window: Duration::from_secs(300),
            verification_required: false,
            server_keys: Vec::new(),
            wassup_msisdn: "33600000000".to_owned(),
            addr: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
        }
    }
}

impl WebcomDevBuilder {
    /// The application id (default `dev-app`).
    #[must_use]
    pub fn with_app_id(mut self, app_id: &str) -> Self {
        app_id.clone_into(&mut self.app_id);
        self
    }

    /// How long tokens live (default 1 hour; whole seconds on the wire).
    #[must_use]
    pub fn with_token_lifetime(mut self, lifetime: Duration) -> Self {
        self.token_lifetime = lifetime;
        self
    }

    /// How recent a sign-in must be for `removeIdentity` and
    /// `removeAccount` (default 5 minutes), else `TOKEN_TOO_OLD`.
    #[must_use]
    pub fn with_fresh_auth_window(mut self, window: Duration) -> Self {
        self.fresh_auth_window = window;
        self
    }

    /// Whether e-mail identities must be verified before a password
    /// sign-in (default `false`).
    #[must_use]
    pub fn with_verification_required(mut self, on: bool) -> Self {
        self.verification_required = on;
        self
    }

    /// A server key `name` and its RSA public key in PEM, for
    /// `POST /server/signin`.
    #[must_use]
    pub fn with_server_key(mut self, name: &str, public_key_pem: &[u8]) -> Self {
        self.server_keys
            .push((name.to_owned(), public_key_pem.to_vec()));
        self
    }

    /// The MSISDN `wassup/signin` signs in (default `33600000000`).
    #[must_use]
    pub fn with_wassup_msisdn(mut self, msisdn: &str) -> Self {
        msisdn.clone_into(&mut self.wassup_msisdn);
        self
    }

    /// The address to bind (default `127.0.0.1:0`).
    #[must_use]
    pub fn with_addr(mut self, addr: SocketAddr) -> Self {
        self.addr = addr;
        self
    }

    /// Binds the listener and starts the server on the current runtime. A
    /// server key that is not an RSA public key in PEM is an
    /// `InvalidInput` error.
    pub async fn spawn(self) -> io::Result<WebcomDev> {
        let server_keys = self
            .server_keys
            .iter()
            .map(|(name, pem)| {
                jsonwebtoken::DecodingKey::from_rsa_pem(pem)
                    .map(|key| (name.clone(), key))
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))
            })
            .collect::<io::Result<Vec<_>>>()?;
        let listener = tokio::net::TcpListener::bind(self.addr).await?;
        let url = format!("http://{}", listener.local_addr()?);
        let store = Store {
            token_lifetime: self.token_lifetime,
            fresh_auth_window: self.fresh_auth_window,
            verification_required: self.verification_required,
            ..Store::default()
        };
        let shared = Arc::new(Shared {
            store: Mutex::new(store),
            calls: AtomicU64::new(0),
            app_id: self.app_id,
            url,
            server_keys,
            wassup_msisdn: self.wassup_msisdn,
        });
        let app = router(shared.clone());
        let (stop, mut stopped) = watch::channel(false);
        let task = tokio::spawn(async move {
            let signal = async move {
                if stopped.wait_for(|s| *s).await.is_err() {
                    std::future::pending::<()>().await;
                }
            };
            if let Err(err) = axum::serve(listener, app)
                .with_graceful_shutdown(signal)
                .await
            {
                tracing::warn!(error = %err, "webcom dev server stopped with an error");
            }
        });
        tracing::info!(url = %shared.url, app = %shared.app_id, "webcom dev server listening");
        Ok(WebcomDev {
            shared,
            ctl: Arc::new(ServerCtl {
                stop,
                task: Mutex::new(Some(task)),
            }),
        })
    }
}

fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/auth/v2/{*rest}", any(api::handle))
        .route(
            "/_dev/oauth/{provider}/authorize",
            get(authorize_page).post(authorize_submit),
        )
        .route("/_dev/avatar.svg", get(avatar))
        .route("/_dev/outbox", get(outbox_html))
        .route("/_dev/outbox.json", get(outbox_json))
        .fallback(|| async {
            api::ApiError::new(StatusCode::NOT_FOUND, "UNSUPPORTED_PROVIDER", "Not found.")
                .into_response()
        })
        .with_state(shared)
}

/// An `http(s)` URL to send a browser to (never `javascript:`).
fn web_url(url: &str) -> Option<url::Url> {
    url::Url::parse(url)
        .ok()
        .filter(|u| matches!(u.scheme(), "http" | "https"))
}

#[derive(serde::Deserialize)]
struct AuthorizeQuery {
    redirect_uri: String,
    state: String,
}

/// The simulated provider's consent page (code mode).
async fn authorize_page(
    Path(provider): Path<String>,
    Query(query): Query<AuthorizeQuery>,
) -> Response {
    if !is_oauth_provider(&provider) || web_url(&query.redirect_uri).is_none() {
        return (
            StatusCode::BAD_REQUEST,
            "unknown provider or bad redirect_uri",
        )
            .into_response();
    }
    let provider = esc(&provider);
    Html(format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>{provider} (dev provider)</title></head>\
<body><h1>Sign in with {provider} (dev provider, code mode)</h1><form method=\"post\">\
<input type=\"hidden\" name=\"redirect_uri\" value=\"{uri}\"><input type=\"hidden\" name=\"state\" value=\"{state}\">\
<label>Name <input name=\"name\" value=\"Dev User\"></label> <label>E-mail <input name=\"email\" value=\"dev@example.com\"></label>\
<button name=\"decision\" value=\"allow\">Continue</button> <button name=\"decision\" value=\"deny\">Deny</button></form></body></html>",
        uri = esc(&query.redirect_uri),
        state = esc(&query.state),
    ))
    .into_response()
}

#[derive(serde::Deserialize)]
struct AuthorizeForm {
    redirect_uri: String,
    state: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    email: String,
    #[serde(default)]
    decision: String,
}

/// The consent's answer: `redirect_uri?code&state`, or
/// `?error=access_denied&state`.
async fn authorize_submit(
    State(shared): State<Arc<Shared>>,
    Path(provider): Path<String>,
    axum::Form(form): axum::Form<AuthorizeForm>,
) -> Response {
    let Some(mut target) = web_url(&form.redirect_uri) else {
        return (StatusCode::BAD_REQUEST, "bad redirect_uri").into_response();
    };
    if !is_oauth_provider(&provider) {
        return (StatusCode::BAD_REQUEST, "unknown provider").into_response();
    }
    if form.decision == "allow" && form.email.contains('@') {
        let name = if form.name.is_empty() {
            "Dev User"
        } else {
            &form.name
        };
        let code = api::issue_code(&shared, &provider, &form.state, &form.email, name);
        target
            .query_pairs_mut()
            .append_pair("code", &code)
            .append_pair("state", &form.state);
    } else {
        target
            .query_pairs_mut()
            .append_pair("error", "access_denied")
            .append_pair("state", &form.state);
    }
    Response::builder()
        .status(StatusCode::SEE_OTHER)
        .header(header::LOCATION, target.as_str())
        .body(Body::empty())
        .unwrap_or_default()
}

/// What this server is, for a developer who opens its URL.
async fn index(State(shared): State<Arc<Shared>>) -> Response {
    Html(format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>Webcom dev server</title></head>\
<body><h1>Webcom dev server</h1><p>Application <code>{app}</code>, auth route \
<code>{url}/auth/v2/{app}</code>. Nothing leaves this process.</p>\
<ul><li><a href=\"/_dev/outbox\">Outbox</a> (one-time passwords, verification and reset codes)</li>\
<li><a href=\"/_dev/outbox.json\">Outbox as JSON</a></li></ul></body></html>",
        app = esc(&shared.app_id),
        url = esc(&shared.url),
    ))
    .into_response()
}

/// The picture of every OAuth user of the simulator.
async fn avatar() -> Response {
    (
        [(header::CONTENT_TYPE, "image/svg+xml")],
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"64\" height=\"64\"><circle cx=\"32\" cy=\"32\" r=\"30\" fill=\"#f60\"/></svg>",
    )
        .into_response()
}

async fn outbox_json(State(shared): State<Arc<Shared>>) -> Response {
    let items: Vec<Value> = shared
        .lock()
        .outbox
        .iter()
        .map(WebcomMessage::to_json)
        .collect();
    axum::Json(Value::Array(items)).into_response()
}

async fn outbox_html(State(shared): State<Arc<Shared>>) -> Response {
    let rows: String = shared
        .lock()
        .outbox
        .iter()
        .rev()
        .map(|m| {
            format!(
                "<tr><td>{}</td><td>{}</td><td>{}</td><td><code>{}</code></td></tr>",
                m.channel.as_str(),
                m.kind.as_str(),
                esc(&m.to),
                esc(&m.code)
            )
        })
        .collect();
    Html(format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>Webcom dev outbox</title></head>\
<body><h1>Webcom dev outbox</h1><table><tr><th>channel</th><th>kind</th><th>to</th><th>code</th></tr>{rows}</table></body></html>"
    ))
    .into_response()
}
