//! The site's auth events: one [`AuthEvents`] hook, given to the layer and
//! to the Altogic client, that writes every event to the log and keeps the
//! most recent ones in memory for the account page's "Recent auth events".
//!
//! Events carry user ids and keyed session hashes, never tokens, so showing
//! their text on a page is safe.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use authgate::events::{AuthEvent, AuthEvents, SessionHash};
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
    /// The event's own text (`AuthEvent`'s `Display`).
    pub(crate) text: String,
    /// The user it concerns: named by the event, or the owner of the
    /// session it names.
    #[serde(skip)]
    pub(crate) user_id: Option<String>,
    /// A rejected flow (cross-site post, replayed link …).
    #[serde(skip)]
    pub(crate) rejected: bool,
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

    /// What the account page of `user_id` shows, newest first: the events
    /// of that user, and rejected flows that concern no known user.
    pub(crate) fn recent_for(&self, user_id: &str) -> Vec<Entry> {
        lock(&self.recent)
            .entries
            .iter()
            .rev()
            .filter(|entry| match &entry.user_id {
                Some(id) => id == user_id,
                None => entry.rejected,
            })
            .cloned()
            .collect()
    }
}

impl Recent {
    fn record(&mut self, event: &AuthEvent) {
        let (named, session, rejected) = match event {
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
                (user_id.clone(), Some(session), false)
            }
            AuthEvent::SignedOut {
                user_id, session, ..
            } => (user_id.clone(), Some(session), false),
            AuthEvent::SessionInvalidated { session } => (None, Some(session), false),
            AuthEvent::PasswordChanged { user_id }
            | AuthEvent::EmailChanged { user_id }
            | AuthEvent::PhoneChanged { user_id } => (user_id.clone(), None, false),
            AuthEvent::FlowRejected { session, .. } => (None, session.as_ref(), true),
            // A kind this site does not know yet: kept, shown to nobody.
            _ => (None, None, false),
        };
        let user_id = named.or_else(|| session.and_then(|s| self.owners.get(s).cloned()));
        self.entries.push_back(Entry {
            at: now_utc(),
            text: event.to_string(),
            user_id,
            rejected,
        });
        while self.entries.len() > KEPT {
            self.entries.pop_front();
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
