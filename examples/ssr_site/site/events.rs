//! The site's auth events: one [`AuthEvents`] hook, given to the layer and
//! to the Altogic client, that writes every event to the log and keeps the
//! most recent ones in memory for the account page's "Recent auth events".
//!
//! Events carry user ids and keyed session hashes, never tokens, so showing
//! their text on a page is safe.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use authgate::SignOutScope;
use authgate::events::{AuthEvent, AuthEvents, FlowRejection, SessionHash, SignInMethod};
use serde::Serialize;

/// How many events the site keeps (all users together).
pub(crate) const KEPT: usize = 20;

/// How many session → user pairs (learnt from sign-ins) the site keeps to
/// attribute later events that name only a session.
const KEPT_OWNERS: usize = 1000;

/// The hook and what it has seen. Cheap to clone; every clone shares the
/// same events.
#[derive(Clone)]
pub(crate) struct EventLog {
    recent: Arc<Mutex<Recent>>,
    events: AuthEvents,
}

impl fmt::Debug for EventLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventLog")
            .field("kept", &lock(&self.recent).entries.len())
            .finish_non_exhaustive()
    }
}

impl Default for EventLog {
    fn default() -> Self {
        Self::new()
    }
}

/// One event as the account page shows it.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Entry {
    /// When the site heard it, e.g. `2024-05-01 09:30:12 UTC`.
    pub(crate) at: String,
    /// What happened, in plain words.
    pub(crate) text: String,
    /// The user it concerns: named by the event, or the owner of the
    /// session it names.
    #[serde(skip)]
    pub(crate) user_id: Option<String>,
}

#[derive(Default)]
struct Recent {
    /// Oldest first, at most [`KEPT`].
    entries: VecDeque<Entry>,
    /// Session → user, from sign-in events.
    owners: HashMap<SessionHash, String>,
}

fn lock(recent: &Mutex<Recent>) -> MutexGuard<'_, Recent> {
    recent.lock().unwrap_or_else(PoisonError::into_inner)
}

impl EventLog {
    /// A log with nothing in it yet, and its hook.
    pub(crate) fn new() -> Self {
        let recent = Arc::new(Mutex::new(Recent::default()));
        let sink = Arc::clone(&recent);
        // authgate runs the hook on tokio's blocking pool: a plain mutex is
        // fine, and the request never waits for it.
        let events = AuthEvents::new(move |event: &AuthEvent| {
            tracing::info!(target: "ssr_site::events", "auth event: {event}");
            lock(&sink).record(event);
            Ok(())
        });
        Self { recent, events }
    }

    /// The hook, for `AuthConfig::with_events` and the client builder's
    /// `with_events`.
    pub(crate) fn auth_events(&self) -> AuthEvents {
        self.events.clone()
    }

    /// What the account page of `user_id` shows, newest first: that user's
    /// events only (named by the event, or by the session it names).
    pub(crate) fn recent_for(&self, user_id: &str) -> Vec<Entry> {
        lock(&self.recent)
            .entries
            .iter()
            .rev()
            .filter(|entry| entry.user_id.as_deref() == Some(user_id))
            .cloned()
            .collect()
    }
}

impl Recent {
    fn record(&mut self, event: &AuthEvent) {
        let (named, session) = match event {
            AuthEvent::SignedIn {
                user_id, session, ..
            } => {
                if let Some(user_id) = user_id {
                    if self.owners.len() >= KEPT_OWNERS {
                        // A demo: forgetting them all now and then is fine.
                        self.owners.clear();
                    }
                    self.owners.insert(session.clone(), user_id.clone());
                }
                (user_id.clone(), Some(session))
            }
            AuthEvent::SignedOut {
                user_id, session, ..
            } => (user_id.clone(), Some(session)),
            AuthEvent::SessionInvalidated { session } => (None, Some(session)),
            AuthEvent::PasswordChanged { user_id }
            | AuthEvent::EmailChanged { user_id }
            | AuthEvent::PhoneChanged { user_id } => (user_id.clone(), None),
            AuthEvent::FlowRejected { session, .. } => (None, session.as_ref()),
            // A kind this site does not know yet: kept, shown to nobody.
            _ => (None, None),
        };
        let user_id = named.or_else(|| session.and_then(|s| self.owners.get(s).cloned()));
        self.entries.push_back(Entry {
            at: now_utc(),
            text: describe(event),
            user_id,
        });
        while self.entries.len() > KEPT {
            self.entries.pop_front();
        }
    }
}

/// An event in plain words, for the user it concerns: never a variant
/// name or an id.
fn describe(event: &AuthEvent) -> String {
    match event {
        AuthEvent::SignedIn { method, .. } => match method {
            SignInMethod::Password => "Signed in with e-mail (or phone) and password".to_owned(),
            SignInMethod::Code => "Signed in with a code sent by SMS".to_owned(),
            SignInMethod::MagicLink => "Signed in with a sign-in link".to_owned(),
            SignInMethod::EmailConfirmation => {
                "Confirmed the e-mail address and signed in".to_owned()
            }
            SignInMethod::PhoneVerification => "Verified the phone number and signed in".to_owned(),
            SignInMethod::SignUp => "Created the account and signed in".to_owned(),
            SignInMethod::OAuth(provider) => format!("Signed in with {}", provider_name(provider)),
            _ => "Signed in".to_owned(),
        },
        AuthEvent::SignedOut { scope, .. } => match scope {
            SignOutScope::All => "Signed out everywhere",
            SignOutScope::Others => "Signed out of every other device",
            _ => "Signed out",
        }
        .to_owned(),
        AuthEvent::SessionInvalidated { .. } => {
            "A session was ended by the sign-in service".to_owned()
        }
        AuthEvent::PasswordChanged { .. } => "Changed the password".to_owned(),
        AuthEvent::EmailChanged { .. } => "Changed the e-mail address".to_owned(),
        AuthEvent::PhoneChanged { .. } => "Changed the phone number".to_owned(),
        AuthEvent::FlowRejected { reason, .. } => match reason {
            FlowRejection::ReplayedGrant => "A sign-in link was used twice and refused",
            FlowRejection::CrossSite => "A form sent from another site was refused",
            FlowRejection::ConsentDenied => "A sign-in was cancelled at the provider",
            FlowRejection::MissingFlow | FlowRejection::ProviderMismatch => {
                "A sign-in that was not started here was refused"
            }
            _ => "A sign-in attempt was refused",
        }
        .to_owned(),
        _ => "Something happened to the account".to_owned(),
    }
}

/// `github` → `GitHub`, as the providers spell themselves.
fn provider_name(provider: &str) -> String {
    match provider {
        "github" => "GitHub".to_owned(),
        "oidc" => "your OpenID Provider".to_owned(),
        other => {
            let mut chars = other.chars();
            chars.next().map_or_else(String::new, |first| {
                first.to_uppercase().chain(chars).collect()
            })
        }
    }
}

/// The wall-clock time, e.g. `2024-05-01 09:30:12 UTC`.
fn now_utc() -> String {
    let now = time::OffsetDateTime::now_utc();
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02} UTC",
        now.year(),
        u8::from(now.month()),
        now.day(),
        now.hour(),
        now.minute(),
        now.second()
    )
}
