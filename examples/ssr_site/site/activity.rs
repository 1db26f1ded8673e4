//! When each session was last active on this site, for the sessions page:
//! Altogic's session list says when a session started, not when it was last
//! used. Every page a signed-in browser opens records the time under the
//! session's id (`altogic::Session::id_of`, a hash: no token is kept).
//! Per process and in memory, like the events list.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use time::OffsetDateTime;

/// How many sessions are remembered before the map starts over (a demo:
/// forgetting now and then is fine).
const KEPT: usize = 10_000;

#[derive(Debug, Default)]
pub(crate) struct Activity {
    last_seen: Mutex<HashMap<String, OffsetDateTime>>,
}

impl Activity {
    /// The session `id` was used now.
    pub(crate) fn touch(&self, id: String) {
        let mut last_seen = self
            .last_seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if last_seen.len() >= KEPT && !last_seen.contains_key(&id) {
            last_seen.clear();
        }
        last_seen.insert(id, OffsetDateTime::now_utc());
    }

    /// When the session `id` was last used on this site, as
    /// `2026-11-30 18:26 UTC`.
    pub(crate) fn last_seen(&self, id: &str) -> Option<String> {
        let last_seen = self
            .last_seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        last_seen.get(id).map(|at| {
            format!(
                "{:04}-{:02}-{:02} {:02}:{:02} UTC",
                at.year(),
                u8::from(at.month()),
                at.day(),
                at.hour(),
                at.minute()
            )
        })
    }
}
