//! An in-memory, Altogic-compatible auth server for development and tests.
//!
//! [`DevUpstream`] runs a small axum server on a local port that speaks the
//! Altogic auth wire protocol (`/_api/rest/v1/auth/...`), plus the browser-facing
//! pages Altogic itself would serve: e-mail landings (`/_auth/verify-email`,
//! `/_auth/magic`, `/_auth/reset`, `/_auth/change-email`), an OAuth provider
//! simulator (`/_auth/{provider}`) and an outbox of every e-mail and SMS it
//! "sent" (`/_dev/outbox`). Nothing leaves the process: no e-mail or SMS is
//! delivered, everything lands in the outbox.
//!
//! It is written from the wire protocol alone and shares no code with the
//! crate's own client, so that a misunderstanding in the client cannot hide
//! behind the same misunderstanding in the server.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use authgate::dev::DevUpstream;
//!
//! let upstream = DevUpstream::builder()
//!     .with_email_confirmation(true)
//!     .spawn()
//!     .await?;
//! // ... bind the app, then tell the upstream where to send browsers back:
//! upstream.set_redirect_url("https://app.example/auth/callback"); // config.callback_url()
//! println!("environment URL: {}", upstream.url());
//! println!("client key:      {}", upstream.client_key());
//! # Ok(()) }
//! ```
//!
//! The server keeps running until [`DevUpstream::shutdown`] is called or the
//! tokio runtime it was spawned on shuts down; dropping the handle does not
//! stop it.
//!
//! # REST endpoints
//!
//! Every request under `/_api/` must carry `X-Client-Key: <client key>`.
//! Bodies are JSON (an empty body counts as `{}`); success bodies are plain
//! JSON without an envelope; "no data" is `200` with an empty body.
//! "Session" means the `Session: <token>` header is required.
//!
//! | method + path (under `/_api/rest/v1/auth/`) | input | success |
//! |---|---|---|
//! | POST `signup-email` | `{"email","password","nameOrUserData"?}` | `{"user","session"}`, `session: null` while e-mail confirmation is pending |
//! | POST `signup-phone` | `{"phone","password","nameOrUserData"?}` | `{"user","session"}`, `session: null` while phone confirmation is pending |
//! | POST `signin-email` | `{"email","password"}` | `{"user","session"}` |
//! | POST `signin-phone` | `{"phone","password"}` | `{"user","session"}` |
//! | POST `send-code` | `?phone=` | no data (SMS with a 6-digit code) |
//! | POST `signin-code` | `?phone=&code=` | `{"user","session"}` |
//! | GET `grant` | `?key=<access_token>` | `{"user","session"}` (a new session) |
//! | GET `user` | Session | `User` |
//! | GET `sessions` | Session | `Session[]` (oldest first) |
//! | POST `signout` | Session, `{"token"?}` | no data |
//! | POST `signout-all` | Session | no data |
//! | POST `signout-all-except` | Session | no data |
//! | POST `change-pwd` | Session, `{"newPassword","oldPassword"}` | no data |
//! | POST `change-email` | Session, `{"currentPassword","newEmail"}` | `User` (unchanged while confirmation is pending) |
//! | POST `change-phone` | Session, `{"currentPassword","newPhone"}` | `User` (unchanged while confirmation is pending) |
//! | POST `verify-phone` | `?phone=&code=` | `{"user","session"}` after sign-up, `{"user"}` after a phone change |
//! | POST `resend` | `?email=` | no data |
//! | POST `resend-code` | `?phone=` | no data |
//! | POST `send-magic` | `?email=` | no data |
//! | POST `send-reset` | `?email=` | no data |
//! | POST `reset-pwd` | `?key=`, `{"newPassword"}` | no data; revokes all the user's sessions |
//! | POST `send-reset-code` | `?phone=` | no data |
//! | POST `reset-pwd-code` | `?phone=&code=`, `{"newPassword"}` | no data; revokes all the user's sessions |
//!
//! Behaviour worth knowing:
//!
//! - With e-mail confirmation **on**, `signup-email` sends a link to
//!   `/_auth/verify-email`, sign-in is refused with `email_not_verified` until it
//!   is followed, `change-email` sends a link to the *new* address and only
//!   changes the e-mail when `/_auth/change-email` is followed, and
//!   `send-magic` / `send-reset` refuse unverified addresses. With it **off**,
//!   sign-up returns a session at once and `change-email` applies the change
//!   immediately and returns the updated user (as the Altogic SDK documents).
//!   `nameOrUserData.emailVerified: true` skips the confirmation.
//! - Phone confirmation works the same way with SMS codes: `signup-phone` sends
//!   a code that `verify-phone` checks; `change-phone` sends a code to the new
//!   number and `verify-phone` applies the change (immediately when off).
//!   `nameOrUserData.phoneVerified: true` skips the confirmation.
//! - `send-code`, `send-magic`, `send-reset`, `send-reset-code`, `resend` and
//!   `resend-code` answer `200` and send nothing for an unknown address, so they
//!   do not reveal which accounts exist.
//! - Access tokens (`grant` keys) are single-use and expire after 5 minutes;
//!   reset-password tokens are single-use and expire after 15 minutes; e-mailed
//!   links expire after 1 hour; SMS codes expire after 10 minutes and die after
//!   5 wrong attempts. Sessions never expire.
//! - Users: `provider` is `"Altogic"` for native users and the capitalised
//!   provider name (`"Google"`, `"Facebook"`, `"Twitter"`, `"Apple"`,
//!   `"Discord"`, `"Github"`) for OAuth users. Absent `email`, `phone`, `name`,
//!   `profilePicture` are omitted; `emailVerified`, `phoneVerified`, `signUpAt`
//!   and `lastLoginAt` are always present; custom fields given in
//!   `nameOrUserData` are kept. Timestamps are RFC 3339 in UTC with
//!   milliseconds. The password is never returned (a salted SHA-256 is stored).
//! - E-mail addresses are matched case-insensitively; phone numbers have
//!   spaces, dashes, dots and parentheses removed and must then be
//!   `+?[0-9]{4,15}`. Query strings are decoded strictly as
//!   `application/x-www-form-urlencoded` (an unencoded `+` becomes a space).
//!
//! # Errors
//!
//! Every REST error has the body
//! `{"errors":[{"origin":"client_error","code":"<code>","message":"<text>","details":{}}]}`.
//!
//! | status | code | when |
//! |---|---|---|
//! | 400 | `invalid_request` | missing or malformed field or query parameter, body not a JSON object, new e-mail/phone equal to the current one |
//! | 400 | `invalid_password` | new password shorter than 6 characters |
//! | 400 | `email_confirmation_disabled` | `resend` while e-mail confirmation is off |
//! | 400 | `phone_confirmation_disabled` | `resend-code` while phone confirmation is off |
//! | 400 | `email_already_verified` | `resend` for a verified address |
//! | 400 | `phone_already_verified` | `resend-code` for a verified number |
//! | 401 | `invalid_client_key` | `X-Client-Key` missing or wrong (checked first, on every `/_api/` path) |
//! | 401 | `missing_session_token` | no `Session` header on a Session endpoint |
//! | 401 | `invalid_session_token` | unknown or revoked session token |
//! | 401 | `invalid_credentials` | sign-in with an unknown e-mail/phone, a wrong password, or an OAuth-only account |
//! | 401 | `invalid_access_token` | `grant` / `reset-pwd` key unknown, already used or expired |
//! | 401 | `invalid_code` | SMS code wrong, already used, expired or out of attempts |
//! | 403 | `email_not_verified` | sign-in, `send-magic` or `send-reset` before the e-mail is confirmed (confirmation on) |
//! | 403 | `phone_not_verified` | sign-in, `send-code`, `signin-code` or `send-reset-code` before the phone is confirmed (confirmation on) |
//! | 403 | `incorrect_password` | wrong current password on `change-pwd`, `change-email`, `change-phone` |
//! | 404 | `session_not_found` | `signout` with a token that is not one of the caller's sessions |
//! | 404 | `not_found` | unknown path |
//! | 405 | `method_not_allowed` | known path, wrong method |
//! | 409 | `email_not_unique` | e-mail already used by another account |
//! | 409 | `phone_not_unique` | phone already used by another account |
//! | 413 | `payload_too_large` | body over 64 KiB |
//!
//! # Browser pages and landings
//!
//! Landings redirect (`303 See Other`) to the redirect URL set with
//! [`DevUpstream::set_redirect_url`], adding query parameters with the `url`
//! crate's serializer. If no redirect URL is set they render an HTML error
//! page with status 500 instead (and consume nothing).
//!
//! | page | success redirect query | failure redirect query |
//! |---|---|---|
//! | GET `/_auth/verify-email?key=` | `action=email-confirm&status=200&access_token=<grant>` | `action=email-confirm&status=401&error=<text>` |
//! | GET `/_auth/magic?key=` | `action=magic-link&status=200&access_token=<grant>` | `action=magic-link&status=401&error=<text>` |
//! | GET `/_auth/reset?key=` | `action=reset-pwd&status=200&access_token=<reset token>` | `action=reset-pwd&status=401&error=<text>` |
//! | GET `/_auth/change-email?key=` | `action=change-email&status=200` | `action=change-email&status=401&error=<text>` (`409` if the address was taken meanwhile) |
//! | POST `/_auth/{provider}` (Continue) | `action=oauth-signin&status=200&access_token=<grant>` | `action=oauth-signin&status=409&error=<text>` (e-mail used by another account), `400` (bad e-mail) |
//! | POST `/_auth/{provider}` (Deny) | – | `action=oauth-signin&status=401&error=<text>` |
//!
//! Other pages: GET `/_auth/{provider}` (provider in `google`, `facebook`,
//! `twitter`, `apple`, `discord`, `github`; anything else is a 404 page) shows
//! the "Sign in with &lt;Provider&gt; (dev simulator)" form, optionally pre-filled
//! from `?name=&email=`; GET `/_dev/outbox` lists sent messages newest first;
//! GET `/_dev/outbox.json` returns them as a JSON array (oldest first); GET `/`
//! is an index page.

use std::fmt;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::routing::{any, get};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use url::Url;

mod api;
mod pages;
#[cfg(feature = "slashid")]
#[cfg_attr(docsrs, doc(cfg(feature = "slashid")))]
pub mod slashid;
mod store;
#[cfg(test)]
mod tests;
#[cfg(feature = "webcom")]
#[cfg_attr(docsrs, doc(cfg(feature = "webcom")))]
pub mod webcom;

use store::Store;

/// The client key a [`DevUpstream`] accepts unless configured otherwise.
pub const DEFAULT_CLIENT_KEY: &str = "dev-client-key";

/// How long [`DevUpstream::shutdown`] waits for open connections before
/// aborting the server task.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// The channel a message was "sent" through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Channel {
    /// An e-mail.
    Email,
    /// A text message.
    Sms,
}

impl Channel {
    /// `"email"` or `"sms"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Email => "email",
            Channel::Sms => "sms",
        }
    }
}

/// Why a message was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MessageKind {
    /// Sign-up e-mail confirmation (link to `/_auth/verify-email`).
    VerifyEmail,
    /// Magic sign-in link (link to `/_auth/magic`).
    MagicLink,
    /// Password reset link (link to `/_auth/reset`).
    ResetPassword,
    /// Confirmation of a new e-mail address (link to `/_auth/change-email`).
    ChangeEmail,
    /// Sign-up phone confirmation code (for `verify-phone`).
    VerifyPhone,
    /// Confirmation code for a new phone number (for `verify-phone`).
    ChangePhone,
    /// One-time sign-in code (for `signin-code`).
    SignInCode,
    /// Password reset code (for `reset-pwd-code`).
    ResetPasswordCode,
}

impl MessageKind {
    /// A stable kebab-case name, as used in `/_dev/outbox.json`.
    pub fn as_str(self) -> &'static str {
        match self {
            MessageKind::VerifyEmail => "verify-email",
            MessageKind::MagicLink => "magic-link",
            MessageKind::ResetPassword => "reset-pwd",
            MessageKind::ChangeEmail => "change-email",
            MessageKind::VerifyPhone => "verify-phone",
            MessageKind::ChangePhone => "change-phone",
            MessageKind::SignInCode => "signin-code",
            MessageKind::ResetPasswordCode => "reset-pwd-code",
        }
    }
}

/// One e-mail or SMS the dev upstream "sent".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxMessage {
    /// E-mail or SMS.
    pub channel: Channel,
    /// What the message is for.
    pub kind: MessageKind,
    /// The e-mail address or phone number it was sent to (normalised:
    /// lower-case e-mail, phone without separators).
    pub to: String,
    /// Subject line (for SMS, a short title).
    pub subject: String,
    /// Plain-text body.
    pub body: String,
    /// The link in an e-mail, if any.
    pub link: Option<String>,
    /// The code in an SMS, if any.
    pub code: Option<String>,
    /// When it was sent (server clock, including any [`DevUpstream::advance_clock`] skew).
    pub sent_at: SystemTime,
}

impl OutboxMessage {
    /// The message as the JSON object served by `/_dev/outbox.json`.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "channel": self.channel.as_str(),
            "kind": self.kind.as_str(),
            "to": self.to,
            "subject": self.subject,
            "body": self.body,
            "link": self.link,
            "code": self.code,
            "sentAt": store::format_time(self.sent_at),
        })
    }
}

/// State shared by the handle and the server task.
struct Shared {
    store: Mutex<Store>,
    calls: AtomicU64,
    /// The environment URL, parsed (used to build links).
    base: Url,
    /// The environment URL without a trailing slash.
    url: String,
    client_key: String,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

struct ServerCtl {
    stop: watch::Sender<bool>,
    task: Mutex<Option<JoinHandle<()>>>,
}

/// A handle to a running dev upstream. Cheap to clone; all clones control the
/// same server.
#[derive(Clone)]
pub struct DevUpstream {
    shared: Arc<Shared>,
    ctl: Arc<ServerCtl>,
}

impl fmt::Debug for DevUpstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DevUpstream")
            .field("url", &self.shared.url)
            .field("client_key", &"<redacted>")
            .field("upstream_calls", &self.upstream_calls())
            .finish_non_exhaustive()
    }
}

impl DevUpstream {
    /// Starts a server with the defaults (client key `"dev-client-key"`, no
    /// e-mail or phone confirmation, no redirect URL) on `127.0.0.1` with a
    /// free port.
    pub async fn spawn() -> io::Result<DevUpstream> {
        DevUpstream::builder().spawn().await
    }

    /// A builder for a customised server.
    pub fn builder() -> DevUpstreamBuilder {
        DevUpstreamBuilder::default()
    }

    /// The environment URL, e.g. `http://127.0.0.1:<port>` (no trailing slash).
    pub fn url(&self) -> &str {
        &self.shared.url
    }

    /// The `X-Client-Key` value the server accepts.
    pub fn client_key(&self) -> &str {
        &self.shared.client_key
    }

    /// Sets the app URL the landings and the OAuth simulator redirect the
    /// browser to (the app's auth callback).
    pub fn set_redirect_url(&self, url: &str) {
        self.shared.lock().redirect_url = Some(url.to_owned());
    }

    /// The current redirect URL, if one is set.
    pub fn redirect_url(&self) -> Option<String> {
        self.shared.lock().redirect_url.clone()
    }

    /// Turns e-mail confirmation on or off (affects later requests only).
    pub fn set_email_confirmation(&self, on: bool) {
        self.shared.lock().email_confirmation = on;
    }

    /// Turns phone confirmation on or off (affects later requests only).
    pub fn set_phone_confirmation(&self, on: bool) {
        self.shared.lock().phone_confirmation = on;
    }

    /// Every message sent so far, oldest first.
    pub fn outbox(&self) -> Vec<OutboxMessage> {
        self.shared.lock().outbox.clone()
    }

    /// The newest message sent to `to` (an e-mail address, compared
    /// case-insensitively, or a phone number, compared without separators).
    pub fn last_message_to(&self, to: &str) -> Option<OutboxMessage> {
        let want = store::normalize_address(to);
        self.shared
            .lock()
            .outbox
            .iter()
            .rev()
            .find(|m| m.to == want)
            .cloned()
    }

    /// How many requests reached a path under `/_api/` (including rejected ones).
    pub fn upstream_calls(&self) -> u64 {
        self.shared.calls.load(Ordering::Relaxed)
    }

    /// Moves the server's clock forward by `by`, so tests can expire access
    /// tokens, links and codes without waiting. Timestamps in responses move
    /// too.
    pub fn advance_clock(&self, by: Duration) {
        let mut st = self.shared.lock();
        st.skew = st.skew.saturating_add(by);
    }

    /// Stops the server: stops accepting connections, lets open ones finish
    /// (for up to 5 seconds) and waits for the server task to end. Other
    /// clones of the handle keep working as state handles but the port is
    /// closed.
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

/// Configures and starts a [`DevUpstream`].
#[derive(Clone)]
pub struct DevUpstreamBuilder {
    client_key: String,
    email_confirmation: bool,
    phone_confirmation: bool,
    redirect_url: Option<String>,
    addr: SocketAddr,
}

impl fmt::Debug for DevUpstreamBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DevUpstreamBuilder")
            .field("client_key", &"<redacted>")
            .field("email_confirmation", &self.email_confirmation)
            .field("phone_confirmation", &self.phone_confirmation)
            .field("redirect_url", &self.redirect_url)
            .field("addr", &self.addr)
            .finish()
    }
}

impl Default for DevUpstreamBuilder {
    fn default() -> Self {
        DevUpstreamBuilder {
            client_key: DEFAULT_CLIENT_KEY.to_owned(),
            email_confirmation: false,
            phone_confirmation: false,
            redirect_url: None,
            addr: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
        }
    }
}

impl DevUpstreamBuilder {
    /// The `X-Client-Key` the server accepts (default `"dev-client-key"`).
    pub fn with_client_key(mut self, key: &str) -> Self {
        self.client_key = key.to_owned();
        self
    }

    /// Whether e-mail sign-ups must be confirmed by link (default `false`).
    pub fn with_email_confirmation(mut self, on: bool) -> Self {
        self.email_confirmation = on;
        self
    }

    /// Whether phone sign-ups must be confirmed by SMS code (default `false`).
    pub fn with_phone_confirmation(mut self, on: bool) -> Self {
        self.phone_confirmation = on;
        self
    }

    /// The app URL the landings redirect to (default: none; can be set later
    /// with [`DevUpstream::set_redirect_url`]).
    pub fn with_redirect_url(mut self, url: &str) -> Self {
        self.redirect_url = Some(url.to_owned());
        self
    }

    /// The address to bind (default `127.0.0.1:0`, a free local port).
    pub fn with_addr(mut self, addr: SocketAddr) -> Self {
        self.addr = addr;
        self
    }

    /// Binds the listener and starts the server on the current tokio runtime.
    pub async fn spawn(self) -> io::Result<DevUpstream> {
        let listener = tokio::net::TcpListener::bind(self.addr).await?;
        let local = listener.local_addr()?;
        let url = format!("http://{local}");
        let base = Url::parse(&url).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;

        let mut store = Store::default();
        store.email_confirmation = self.email_confirmation;
        store.phone_confirmation = self.phone_confirmation;
        store.redirect_url = self.redirect_url;

        let shared = Arc::new(Shared {
            store: Mutex::new(store),
            calls: AtomicU64::new(0),
            base,
            url,
            client_key: self.client_key,
        });

        let app = router(Arc::clone(&shared));
        let (stop, mut stopped) = watch::channel(false);
        let task = tokio::spawn(async move {
            let signal = async move {
                if stopped.wait_for(|s| *s).await.is_err() {
                    // Every handle is gone without asking for a stop: keep
                    // serving until the runtime shuts down.
                    std::future::pending::<()>().await;
                }
            };
            if let Err(err) = axum::serve(listener, app)
                .with_graceful_shutdown(signal)
                .await
            {
                tracing::warn!(error = %err, "dev upstream server stopped with an error");
            }
        });
        tracing::info!(url = %shared.url, "dev upstream listening");

        Ok(DevUpstream {
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
        .route("/", get(pages::index))
        .route("/_api", any(api::handle))
        .route("/_api/", any(api::handle))
        .route("/_api/{*rest}", any(api::handle))
        .route("/_auth/verify-email", get(pages::verify_email))
        .route("/_auth/magic", get(pages::magic))
        .route("/_auth/reset", get(pages::reset))
        .route("/_auth/change-email", get(pages::change_email))
        .route(
            "/_auth/{provider}",
            get(pages::oauth_page).post(pages::oauth_submit),
        )
        .route("/_dev/outbox", get(pages::outbox_html))
        .route("/_dev/outbox.json", get(pages::outbox_json))
        .fallback(pages::not_found)
        .with_state(shared)
}
