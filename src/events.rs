//! Auth events: a hook the app gives authgate, called on sign-in, sign-out,
//! invalidated sessions, credential changes and rejected flows.
//!
//! Every event is also emitted as a `tracing` event (target
//! `authgate::events`, level INFO, WARN for rejected flows), so an audit log
//! needs no code. Events carry user ids and keyed token hashes
//! ([`SessionHash`]), never tokens.
//!
//! The hook never blocks the request: a closure runs on tokio's blocking
//! pool, its errors and panics are logged and never fail the request; a
//! channel ([`AuthEvents::channel`]) never waits.
//!
//! ```
//! use authgate::events::{AuthEvent, AuthEvents};
//!
//! let events = AuthEvents::new(|event: &AuthEvent| {
//!     println!("auth event: {event}");
//!     Ok(())
//! });
//! // Give it to the layer and to the typed client:
//! # fn wire(events: AuthEvents) -> Result<(), authgate::ConfigError> {
//! let config = authgate::AuthConfig::new("https://app.example")?.with_events(events.clone());
//! # #[cfg(feature = "altogic")]
//! let client = authgate::altogic::Client::builder("https://x.c1-na.altogic.com", "key")
//!     .with_events(events)
//!     .build()?;
//! # Ok(()) }
//! # wire(events).unwrap();
//! ```

use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

use tokio::sync::mpsc;

use crate::upstream::SignOutScope;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Hook = dyn Fn(&AuthEvent) -> Result<(), BoxError> + Send + Sync;

/// A keyed hash of a session token (the same short fingerprint as in log
/// lines): lets an audit log follow a session without holding its token.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SessionHash(pub(crate) String);

impl fmt::Display for SessionHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// How a user signed in.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SignInMethod {
    /// E-mail or phone and password.
    Password,
    /// A one-time code sent by SMS.
    Code,
    /// A magic link.
    MagicLink,
    /// The link of a sign-up confirmation e-mail.
    EmailConfirmation,
    /// The code of a sign-up phone verification.
    PhoneVerification,
    /// Straight after sign-up (no confirmation required).
    SignUp,
    /// An OAuth provider, e.g. `google`.
    OAuth(String),
    /// Anything else the app names.
    Other(String),
}

impl fmt::Display for SignInMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Password => f.write_str("password"),
            Self::Code => f.write_str("code"),
            Self::MagicLink => f.write_str("magic-link"),
            Self::EmailConfirmation => f.write_str("email-confirmation"),
            Self::PhoneVerification => f.write_str("phone-verification"),
            Self::SignUp => f.write_str("sign-up"),
            Self::OAuth(provider) => write!(f, "oauth:{provider}"),
            Self::Other(name) => f.write_str(name),
        }
    }
}

/// Why a flow was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FlowRejection {
    /// An OAuth landing this browser never started (no flow cookie).
    MissingFlow,
    /// A flow or reset cookie that does not decrypt (tampered, foreign key,
    /// expired).
    TamperedFlow,
    /// A grant the upstream refused: replayed, expired or forged.
    ReplayedGrant,
    /// A malformed landing (unknown action, duplicate parameters, a token
    /// outside the alphabet).
    MalformedLanding,
    /// A `return_to` that would leave the origin or loop into the auth
    /// routes; the fallback was used.
    OpenRedirect,
    /// A state-changing request from another site.
    CrossSite,
    /// Two different session cookies in one request (cookie tossing).
    DuplicateCookies,
    /// An OAuth landing signed in with a provider that no flow of this
    /// browser was started for; the new session was ended.
    ProviderMismatch,
    /// The user declined at the identity provider (OAuth consent denied,
    /// `access_denied`).
    ConsentDenied,
    /// The upstream refused the landing for a reason of its own (an
    /// account conflict, a locked account, …).
    UpstreamRefused,
}

impl fmt::Display for FlowRejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::MissingFlow => "missing-flow",
            Self::TamperedFlow => "tampered-flow",
            Self::ReplayedGrant => "replayed-grant",
            Self::MalformedLanding => "malformed-landing",
            Self::OpenRedirect => "open-redirect",
            Self::CrossSite => "cross-site",
            Self::DuplicateCookies => "duplicate-cookies",
            Self::ProviderMismatch => "provider-mismatch",
            Self::ConsentDenied => "consent-denied",
            Self::UpstreamRefused => "upstream-refused",
        })
    }
}

/// Something that happened to a session or an account.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum AuthEvent {
    /// A browser signed in.
    SignedIn {
        /// The user, when the upstream said.
        user_id: Option<String>,
        /// How.
        method: SignInMethod,
        /// The new session.
        session: SessionHash,
    },
    /// A browser signed out.
    SignedOut {
        /// The user, when known.
        user_id: Option<String>,
        /// Which sessions ended.
        scope: SignOutScope,
        /// The browser's session.
        session: SessionHash,
    },
    /// The upstream said a session is no longer valid (expired, revoked
    /// elsewhere, password reset): its cookie was cleared.
    SessionInvalidated {
        /// The session.
        session: SessionHash,
    },
    /// A password was changed or reset.
    PasswordChanged {
        /// The user, when known (a reset by e-mail link does not say).
        user_id: Option<String>,
    },
    /// An e-mail address was changed.
    EmailChanged {
        /// The user, when known (a confirmation landing does not say).
        user_id: Option<String>,
    },
    /// A phone number was changed.
    PhoneChanged {
        /// The user, when known.
        user_id: Option<String>,
    },
    /// A flow was refused.
    FlowRejected {
        /// Why.
        reason: FlowRejection,
        /// The session involved, if any.
        session: Option<SessionHash>,
    },
    /// The revocation bus (Redis) failed: a revocation made here could not
    /// be shared (`flushed: false`; the other instances see it when their
    /// cache entry expires), or the subscription was lost and this
    /// instance forgot its cached users (`flushed: true`).
    RevocationBusFailed {
        /// Whether this instance's cached users were forgotten.
        flushed: bool,
    },
    /// The provider ended sessions with a verified back-channel logout
    /// token (OpenID Connect Back-Channel Logout 1.0): the session
    /// `session_id` (`sid`) or, without one, every session of `user_id`
    /// (`sub`) is signed out in this instance.
    BackChannelLogout {
        /// The user (`sub`), when the token names one.
        user_id: Option<String>,
        /// The provider's session id (`sid`), when the token names one.
        session_id: Option<String>,
    },
}

impl fmt::Display for AuthEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let user = |id: &Option<String>| id.clone().unwrap_or_else(|| "?".to_owned());
        match self {
            Self::SignedIn {
                user_id,
                method,
                session,
            } => {
                write!(
                    f,
                    "signed in: user {} by {method} (session {session})",
                    user(user_id)
                )
            }
            Self::SignedOut {
                user_id,
                scope,
                session,
            } => {
                write!(
                    f,
                    "signed out: user {} scope {} (session {session})",
                    user(user_id),
                    scope.as_str()
                )
            }
            Self::SessionInvalidated { session } => {
                write!(f, "session invalidated upstream ({session})")
            }
            Self::PasswordChanged { user_id } => {
                write!(f, "password changed: user {}", user(user_id))
            }
            Self::EmailChanged { user_id } => write!(f, "e-mail changed: user {}", user(user_id)),
            Self::PhoneChanged { user_id } => write!(f, "phone changed: user {}", user(user_id)),
            Self::FlowRejected { reason, session } => match session {
                Some(session) => write!(f, "flow rejected: {reason} (session {session})"),
                None => write!(f, "flow rejected: {reason}"),
            },
            Self::RevocationBusFailed { flushed: false } => {
                f.write_str("revocation bus: a revocation could not be shared")
            }
            Self::RevocationBusFailed { flushed: true } => {
                f.write_str("revocation bus: subscription lost; cached users forgotten")
            }
            Self::BackChannelLogout {
                user_id,
                session_id: Some(sid),
            } => write!(
                f,
                "back-channel logout: session {sid} of user {}",
                user(user_id)
            ),
            Self::BackChannelLogout {
                user_id,
                session_id: None,
            } => write!(
                f,
                "back-channel logout: every session of user {}",
                user(user_id)
            ),
        }
    }
}

#[derive(Clone)]
enum Sink {
    Hook(Arc<Hook>),
    Channel(mpsc::Sender<AuthEvent>),
}

/// Where auth events go. Cheap to clone; give one to
/// [`AuthConfig::with_events`](crate::AuthConfig::with_events) and to the
/// typed client. See the [module docs](self).
#[derive(Clone, Default)]
pub struct AuthEvents {
    sink: Option<Sink>,
}

impl fmt::Debug for AuthEvents {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.sink {
            None => "tracing only",
            Some(Sink::Hook(_)) => "hook <fn>",
            Some(Sink::Channel(_)) => "channel",
        };
        f.debug_tuple("AuthEvents").field(&kind).finish()
    }
}

impl AuthEvents {
    /// Events go to `tracing` only.
    pub fn tracing_only() -> Self {
        Self::default()
    }

    /// Events go to `hook` (on tokio's blocking pool when inside a runtime)
    /// and to `tracing`. Errors and panics of the hook are logged.
    pub fn new<F>(hook: F) -> Self
    where
        F: Fn(&AuthEvent) -> Result<(), BoxError> + Send + Sync + 'static,
    {
        Self {
            sink: Some(Sink::Hook(Arc::new(hook))),
        }
    }

    /// Events go into a bounded channel (and to `tracing`); when it is full
    /// events are dropped with a warning, never waited for.
    pub fn channel(capacity: usize) -> (Self, mpsc::Receiver<AuthEvent>) {
        let (sender, receiver) = mpsc::channel(capacity.max(1));
        (
            Self {
                sink: Some(Sink::Channel(sender)),
            },
            receiver,
        )
    }

    /// Emits an event: a `tracing` event, then the hook or channel.
    pub fn emit(&self, event: AuthEvent) {
        match &event {
            AuthEvent::FlowRejected { .. } => {
                tracing::warn!(target: "authgate::events", "{event}");
            }
            _ => tracing::info!(target: "authgate::events", "{event}"),
        }
        match &self.sink {
            None => {}
            Some(Sink::Channel(sender)) => {
                let _ = sender.try_send(event).inspect_err(|err| {
                    tracing::warn!(target: "authgate::events", error = %err, "event dropped");
                });
            }
            Some(Sink::Hook(hook)) => {
                let hook = hook.clone();
                let run = move || match catch_unwind(AssertUnwindSafe(|| hook(&event))) {
                    Ok(Ok(())) => {}
                    Ok(Err(err)) => {
                        tracing::error!(target: "authgate::events", error = %err, "auth event hook failed")
                    }
                    Err(_) => {
                        tracing::error!(target: "authgate::events", "auth event hook panicked")
                    }
                };
                match tokio::runtime::Handle::try_current() {
                    Ok(runtime) => drop(runtime.spawn_blocking(run)),
                    Err(_) => run(),
                }
            }
        }
    }
}
