//! The resolver's cache: a sharded map keyed by the full token, with the
//! deadlines in the values.
//!
//! Why not moka: a moka `get` cost about 1,100 instructions and the hot path
//! needed four lookups (users, tombstones, negative answers, cooldowns); a
//! hit here is one shard read lock and one `foldhash` probe (see
//! BENCHMARKS.md). Keys are the full tokens, so two tokens never share an
//! entry (no truncated hashes, SECURITY.md T-F1).
//!
//! Two maps per shard keep a flood of invalid tokens from evicting real
//! users (SECURITY.md T-H1): `users` holds resolved users within a byte
//! budget; `marks` holds invalid answers, tombstones and failure cooldowns
//! within an entry budget of its own.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::SystemTime;

use foldhash::fast::RandomState;
use tokio::time::Instant;

use crate::upstream::User;

const SHARDS: usize = 16;

/// Bytes counted per entry on top of the token and the user.
const ENTRY_OVERHEAD: u64 = 160;

/// A resolved user and its deadlines, kept in the map itself (a separate
/// allocation per session cost more than the wider buckets).
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub(crate) user: Arc<User>,
    pub(crate) fresh_until: Instant,
    pub(crate) stale_until: Instant,
    /// The session's end as the lookup reported it, in seconds since the
    /// Unix epoch (0: unknown), for the tombstone of a sign-out
    /// ([`Revocation::UntilExpiry`](crate::upstream::Revocation)) when the
    /// cookie cannot say (plain storage holds only the token). Four bytes
    /// beside a four-byte weight, so the entry does not grow.
    expires: u32,
    weight: u32,
    /// The upstream's session id (OpenID Connect `sid`), for a
    /// back-channel logout; one pointer, `None` for upstreams without.
    session_id: Option<Box<Box<str>>>,
}

impl Entry {
    /// The upstream's session id, if the lookup reported one.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn session_id(&self) -> Option<&str> {
        self.session_id.as_deref().map(|sid| &**sid)
    }

    /// The session's end, if the lookup reported one.
    pub(crate) fn expires_at(&self) -> Option<SystemTime> {
        (self.expires != 0)
            .then(|| std::time::UNIX_EPOCH + std::time::Duration::from_secs(self.expires.into()))
    }
}

/// What is known about a token that is not a user.
#[derive(Debug, Clone)]
pub(crate) enum MarkKind {
    /// The upstream definitively said it is invalid.
    Invalid,
    /// Signed out here or elsewhere: never serve it, never re-cache it.
    Revoked,
    /// The last lookup failed transiently: do not retry before the deadline.
    Cooldown,
    /// The session was rotated: requests that still carry it get its
    /// successor's user and cookie (SECURITY.md R10).
    Rotated(Arc<Successor>),
}

impl MarkKind {
    fn is_revoked(&self) -> bool {
        matches!(self, Self::Revoked)
    }
}

/// The session that replaced a rotated one. `Debug` is redacted.
pub(crate) struct Successor {
    /// The new cookie value (the new cache key).
    pub(crate) wire: Arc<str>,
    /// When the new cookie expires.
    pub(crate) cookie_until: SystemTime,
    /// The user.
    pub(crate) user: Arc<User>,
    /// The upstream's session id, if it has one.
    pub(crate) session_id: Option<Box<str>>,
}

impl std::fmt::Debug for Successor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Successor")
            .field("wire", &"<redacted>")
            .field("user", &self.user.id)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone)]
struct Mark {
    kind: MarkKind,
    until: Instant,
}

/// A user-wide revocation (sign out everywhere, a password change): a
/// lookup that started before it, or a session issued before it, must not
/// be served (SECURITY.md §5).
struct UserMark {
    at: Instant,
    wall: SystemTime,
    until: Instant,
    /// The session the revocation spared (sign out of all others).
    keep: Option<Box<[u8]>>,
    /// The spared session by its keyed hash, for a revocation another
    /// instance made (the revocation bus never carries tokens).
    keep_hash: Option<[u8; 32]>,
}

#[derive(Default)]
struct Shard {
    users: HashMap<Box<[u8]>, Entry, RandomState>,
    user_bytes: u64,
    marks: HashMap<Box<[u8]>, Mark, RandomState>,
}

pub(crate) struct Cache {
    shards: Box<[RwLock<Shard>]>,
    shard_bytes: u64,
    shard_marks: usize,
    /// Consulted only when a lookup completes: never on the warm path.
    user_marks: Mutex<HashMap<Box<str>, UserMark>>,
    max_user_marks: usize,
    /// Upstream session ids ended by a back-channel logout, until when
    /// (OpenID Connect Back-Channel Logout 1.0 §2.7); consulted only when a
    /// lookup completes.
    session_marks: Mutex<HashMap<Box<str>, Instant>>,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("users", &self.user_count())
            .finish_non_exhaustive()
    }
}

pub(crate) fn unix_secs(at: SystemTime) -> u64 {
    at.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Keys longer than this are kept in the marks map as their SHA-256
/// digest, so a flood of large bogus cookies costs at most ~300 bytes a
/// mark (marks are bounded by count). The digest is the whole 32 bytes:
/// never a truncated key (SECURITY.md T-F1).
const LONG_MARK_KEY: usize = 256;

/// A token's key in the marks map.
fn mark_key(token: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    use sha2::Digest as _;
    if token.len() <= LONG_MARK_KEY {
        return std::borrow::Cow::Borrowed(token);
    }
    // 0xFF never starts a cookie value that decodes, so a digest key
    // cannot equal a real one.
    let mut key = Vec::with_capacity(33);
    key.push(0xFF);
    key.extend_from_slice(&sha2::Sha256::digest(token));
    std::borrow::Cow::Owned(key)
}

/// The shard of a token. Tokens are random; an attacker who skews their
/// own tokens into one shard only churns that shard's marks.
fn shard_index(token: &[u8]) -> usize {
    token.last().map_or(0, |&b| usize::from(b)) % SHARDS
}

impl Cache {
    pub(crate) fn new(max_bytes: u64, max_marks: usize) -> Self {
        let shards = (0..SHARDS).map(|_| RwLock::new(Shard::default())).collect();
        Self {
            shards,
            shard_bytes: (max_bytes / SHARDS as u64).max(1),
            shard_marks: (max_marks / SHARDS).max(16),
            user_marks: Mutex::new(HashMap::new()),
            max_user_marks: max_marks.max(16),
            session_marks: Mutex::new(HashMap::new()),
        }
    }

    fn shard(&self, token: &[u8]) -> &RwLock<Shard> {
        &self.shards[shard_index(token)]
    }

    /// The cached user of a token, fresh or not.
    pub(crate) fn user(&self, token: &[u8]) -> Option<Entry> {
        let shard = self
            .shard(token)
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        shard.users.get(token).cloned()
    }

    /// The cached user of a token while it is fresh at `now`: the warm
    /// path, checked under the read lock so only the user's `Arc` is cloned.
    pub(crate) fn fresh_user(&self, token: &[u8], now: Instant) -> Option<Arc<User>> {
        let shard = self
            .shard(token)
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        let entry = shard.users.get(token)?;
        (now < entry.fresh_until).then(|| entry.user.clone())
    }

    /// The active mark of a token, if any.
    pub(crate) fn mark(&self, token: &[u8], now: Instant) -> Option<MarkKind> {
        let shard = self
            .shard(token)
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        shard
            .marks
            .get(&*mark_key(token))
            .filter(|mark| now < mark.until)
            .map(|mark| mark.kind.clone())
    }

    /// Stores a resolved user with no known end (see
    /// [`insert_session`](Self::insert_session)).
    #[cfg(test)]
    pub(crate) fn insert_user(
        &self,
        token: &[u8],
        user: Arc<User>,
        fresh_until: Instant,
        stale_until: Instant,
    ) -> bool {
        self.insert_session(token, user, fresh_until, stale_until, None, None)
    }

    /// Stores a resolved user, its session's end and the upstream's
    /// session id unless the token (or that session id) was revoked
    /// meanwhile (checked under the same lock, so a sign-out racing a
    /// lookup wins).
    pub(crate) fn insert_session(
        &self,
        token: &[u8],
        user: Arc<User>,
        fresh_until: Instant,
        stale_until: Instant,
        expires_at: Option<SystemTime>,
        session_id: Option<&str>,
    ) -> bool {
        let now = Instant::now();
        let weight = u32::try_from(ENTRY_OVERHEAD + token.len() as u64 + u64::from(user.weight()))
            .unwrap_or(u32::MAX);
        // Rounded up to the second, so the tombstone never ends early.
        let expires = expires_at
            .and_then(|at| at.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| {
                u32::try_from(d.as_secs() + u64::from(d.subsec_nanos() > 0)).unwrap_or(u32::MAX)
            });
        let mut shard = self
            .shard(token)
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let key = mark_key(token);
        let revoked = shard
            .marks
            .get(&*key)
            .is_some_and(|m| m.kind.is_revoked() && now < m.until);
        // Under the shard's lock: a back-channel logout marks first and
        // then sweeps each shard under its lock, so it either sees this
        // entry or this insert sees its mark.
        if revoked || session_id.is_some_and(|sid| self.session_revoked(sid)) {
            return false;
        }
        shard.marks.remove(&*key);
        let entry = Entry {
            user,
            fresh_until,
            stale_until,
            expires,
            weight,
            session_id: session_id.map(|sid| Box::new(sid.into())),
        };
        if let Some(old) = shard.users.insert(token.into(), entry) {
            shard.user_bytes -= u64::from(old.weight);
        }
        shard.user_bytes += u64::from(weight);
        if shard.user_bytes > self.shard_bytes {
            shard.evict_users(self.shard_bytes, now);
        }
        true
    }

    /// Marks a token (and forgets its user for `Invalid` and `Revoked`).
    pub(crate) fn mark_token(&self, token: &[u8], kind: MarkKind, until: Instant) {
        let now = Instant::now();
        let mut shard = self
            .shard(token)
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let cooldown = matches!(kind, MarkKind::Cooldown);
        if !cooldown && let Some(old) = shard.users.remove(token) {
            shard.user_bytes -= u64::from(old.weight);
        }
        let key = mark_key(token);
        // A cooldown or a rotation never replaces a tombstone; a cooldown
        // or an invalid answer (a late refresh with the spent session)
        // never replaces a live successor.
        let keeps = shard
            .marks
            .get(&*key)
            .filter(|m| now < m.until)
            .is_some_and(|m| {
                matches!(
                    (&m.kind, &kind),
                    (MarkKind::Revoked, MarkKind::Cooldown | MarkKind::Rotated(_))
                        | (MarkKind::Rotated(_), MarkKind::Cooldown | MarkKind::Invalid)
                )
            });
        if keeps {
            return;
        }
        shard
            .marks
            .insert(key.into_owned().into(), Mark { kind, until });
        if shard.marks.len() > self.shard_marks {
            shard.evict_marks(self.shard_marks, now);
        }
    }

    /// Forgets a token's cached user.
    pub(crate) fn forget_user(&self, token: &[u8]) {
        let mut shard = self
            .shard(token)
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(old) = shard.users.remove(token) {
            shard.user_bytes -= u64::from(old.weight);
        }
    }

    /// Clears a cooldown after a successful lookup.
    pub(crate) fn clear_cooldown(&self, token: &[u8]) {
        let mut shard = self
            .shard(token)
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let key = mark_key(token);
        if shard
            .marks
            .get(&*key)
            .is_some_and(|m| matches!(m.kind, MarkKind::Cooldown))
        {
            shard.marks.remove(&*key);
        }
    }

    /// Forgets every cached session of a user, except `keep`.
    pub(crate) fn remove_user_sessions(&self, user_id: &str, keep: Option<&[u8]>) {
        for shard in self.shards.iter() {
            let mut shard = shard.write().unwrap_or_else(PoisonError::into_inner);
            let mut freed = 0;
            shard.users.retain(|token, entry| {
                let remove = entry.user.id == user_id && Some(&**token) != keep;
                if remove {
                    freed += u64::from(entry.weight);
                }
                !remove
            });
            shard.user_bytes -= freed;
        }
    }

    /// Records a user-wide revocation until `until` and forgets the user's
    /// cached sessions (except `keep`).
    pub(crate) fn mark_user(&self, user_id: &str, keep: Option<&[u8]>, until: Instant) {
        let now = Instant::now();
        {
            let mut marks = self
                .user_marks
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if marks.len() >= self.max_user_marks {
                marks.retain(|_, mark| now < mark.until);
                if marks.len() >= self.max_user_marks {
                    // The oldest goes: a lost mark only shortens the window
                    // in which in-flight lookups are refused.
                    let oldest = marks
                        .iter()
                        .min_by_key(|(_, mark)| mark.at)
                        .map(|(id, _)| id.clone());
                    if let Some(oldest) = oldest {
                        marks.remove(&oldest);
                    }
                }
            }
            marks.insert(
                user_id.into(),
                UserMark {
                    at: now,
                    wall: SystemTime::now(),
                    until,
                    keep: keep.map(Into::into),
                    keep_hash: None,
                },
            );
        }
        self.remove_user_sessions(user_id, keep);
        // Old cookies whose successor belongs to the user no longer lead to
        // it.
        for shard in self.shards.iter() {
            let mut shard = shard.write().unwrap_or_else(PoisonError::into_inner);
            shard.marks.retain(|_, mark| match &mark.kind {
                MarkKind::Rotated(next) => {
                    next.user.id != user_id || keep == Some(next.wire.as_bytes())
                }
                _ => true,
            });
        }
    }

    /// A user-wide revocation another instance made (from the revocation
    /// bus): issued at `wall` on that instance, sparing the session whose
    /// keyed hash is `keep_hash`. Forgets the user's cached sessions here
    /// except that one (`hash` gives a cached token's keyed hash).
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn mark_user_remote(
        &self,
        user_id: &str,
        keep_hash: Option<[u8; 32]>,
        wall: SystemTime,
        until: Instant,
        hash: &dyn Fn(&[u8]) -> [u8; 32],
    ) {
        {
            let mut marks = self
                .user_marks
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let now = Instant::now();
            marks.retain(|_, mark| now < mark.until);
            if marks.len() < self.max_user_marks || marks.contains_key(user_id) {
                marks.insert(
                    user_id.into(),
                    UserMark {
                        at: now,
                        wall,
                        until,
                        keep: None,
                        keep_hash,
                    },
                );
            }
        }
        for shard in self.shards.iter() {
            let mut shard = shard.write().unwrap_or_else(PoisonError::into_inner);
            let mut freed = 0;
            shard.users.retain(|token, entry| {
                let remove =
                    entry.user.id == user_id && keep_hash.is_none_or(|keep| hash(token) != keep);
                if remove {
                    freed += u64::from(entry.weight);
                }
                !remove
            });
            shard.user_bytes -= freed;
        }
    }

    /// Ends an upstream session by its id until `until` (a back-channel
    /// logout): forgets its cached cookies (a rotated session's old and new
    /// ones share the id) and refuses lookups that complete afterwards.
    pub(crate) fn mark_session_id(&self, session_id: &str, until: Instant) {
        let now = Instant::now();
        {
            let mut marks = self
                .session_marks
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if marks.len() >= self.max_user_marks {
                marks.retain(|_, until| now < *until);
            }
            // Full of live marks: the sweep below still ends the cached
            // sessions; only a lookup in flight could slip through.
            if marks.len() < self.max_user_marks || marks.contains_key(session_id) {
                marks.insert(session_id.into(), until);
            }
        }
        for shard in self.shards.iter() {
            let mut shard = shard.write().unwrap_or_else(PoisonError::into_inner);
            let mut freed = 0;
            let mut ended = Vec::new();
            shard.users.retain(|token, entry| {
                let remove = entry
                    .session_id
                    .as_deref()
                    .is_some_and(|sid| **sid == *session_id);
                if remove {
                    freed += u64::from(entry.weight);
                    ended.push(token.clone());
                }
                !remove
            });
            shard.user_bytes -= freed;
            for token in ended {
                let key = mark_key(&token).into_owned().into_boxed_slice();
                shard.marks.insert(
                    key,
                    Mark {
                        kind: MarkKind::Revoked,
                        until,
                    },
                );
            }
            // Old cookies whose successor is an ended session no longer
            // lead to it.
            shard.marks.retain(|_, mark| match &mark.kind {
                MarkKind::Rotated(next) => next.session_id.as_deref() != Some(session_id),
                _ => true,
            });
            if shard.marks.len() > self.shard_marks {
                shard.evict_marks(self.shard_marks, now);
            }
        }
    }

    /// Whether a back-channel logout ended the upstream session
    /// `session_id`.
    pub(crate) fn session_revoked(&self, session_id: &str) -> bool {
        let marks = self
            .session_marks
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        marks
            .get(session_id)
            .is_some_and(|until| Instant::now() < *until)
    }

    /// Forgets every cached user (marks stay): after the revocation bus
    /// lost messages, nothing cached here may be trusted.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn clear_users(&self) {
        for shard in self.shards.iter() {
            let mut shard = shard.write().unwrap_or_else(PoisonError::into_inner);
            shard.users.clear();
            shard.user_bytes = 0;
        }
    }

    /// Whether a user-wide revocation forbids serving the session `token`
    /// of `user_id` whose lookup started at `started`: it was issued before
    /// the revocation (when the upstream says when), or its lookup started
    /// before it (when not).
    pub(crate) fn user_revoked(
        &self,
        user_id: &str,
        token: &[u8],
        started: Instant,
        issued_at: Option<SystemTime>,
        hash: &dyn Fn(&[u8]) -> [u8; 32],
    ) -> bool {
        let marks = self
            .user_marks
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let Some(mark) = marks.get(user_id) else {
            return false;
        };
        if Instant::now() >= mark.until
            || mark.keep.as_deref() == Some(token)
            || mark.keep_hash.is_some_and(|keep| hash(token) == keep)
        {
            return false;
        }
        match issued_at {
            // `iat` is whole seconds: a session issued in the second of the
            // revocation is given the benefit (refusing it would sign out
            // a user who signed in again at once).
            Some(issued_at) => unix_secs(issued_at) < unix_secs(mark.wall),
            None => started <= mark.at,
        }
    }

    /// How many users are cached.
    pub(crate) fn user_count(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.read().unwrap_or_else(PoisonError::into_inner).users.len())
            .sum()
    }

    /// The bytes the cached users are weighed at.
    pub(crate) fn user_bytes(&self) -> u64 {
        self.shards
            .iter()
            .map(|s| s.read().unwrap_or_else(PoisonError::into_inner).user_bytes)
            .sum()
    }
}

impl Shard {
    /// Drops expired users, then (in the map's random order) as many as it
    /// takes to get under 90 % of the budget.
    fn evict_users(&mut self, budget: u64, now: Instant) {
        let mut freed = 0;
        self.users.retain(|_, entry| {
            let keep = now < entry.stale_until;
            if !keep {
                freed += u64::from(entry.weight);
            }
            keep
        });
        self.user_bytes -= freed;
        let target = budget / 10 * 9;
        if self.user_bytes <= target {
            return;
        }
        let mut excess = self.user_bytes - target;
        let mut freed = 0;
        self.users.retain(|_, entry| {
            if excess == 0 {
                return true;
            }
            excess = excess.saturating_sub(u64::from(entry.weight));
            freed += u64::from(entry.weight);
            false
        });
        self.user_bytes -= freed;
    }

    fn evict_marks(&mut self, budget: usize, now: Instant) {
        self.marks.retain(|_, mark| now < mark.until);
        let target = budget / 10 * 9;
        if self.marks.len() <= target {
            return;
        }
        // Tombstones are kept longest: cooldowns and invalid answers can be
        // asked again, a forgotten tombstone only costs one upstream call.
        // Then tombstones too, so the bound holds and each eviction frees a
        // tenth of the budget (no full scan per insert).
        for tombstones in [false, true] {
            let mut excess = self.marks.len().saturating_sub(target);
            if excess == 0 {
                return;
            }
            self.marks.retain(|_, mark| {
                if excess > 0 && mark.kind.is_revoked() == tombstones {
                    excess -= 1;
                    return false;
                }
                true
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn user(id: &str) -> Arc<User> {
        Arc::new(User::new(id, serde_json::json!({"_id": id})))
    }

    /// The session's end rides in the entry without growing it (the
    /// weight went from eight bytes to four), rounded up to the second so
    /// a tombstone built from it never ends early. The provider's session
    /// id (back-channel logout) costs one pointer: 741 → 754 heap bytes
    /// per cached session in tests/alloc.rs.
    #[test]
    fn entries_keep_the_session_end_without_growing() {
        assert!(std::mem::size_of::<Entry>() <= 56);
        let cache = Cache::new(1 << 20, 1000);
        let later = Instant::now() + Duration::from_secs(60);
        let end = std::time::UNIX_EPOCH + Duration::from_millis(1_700_000_000_250);
        assert!(cache.insert_session(b"tok", user("u"), later, later, Some(end), None));
        let kept = cache.user(b"tok").unwrap().expires_at().unwrap();
        assert_eq!(
            kept,
            std::time::UNIX_EPOCH + Duration::from_secs(1_700_000_001)
        );
        assert!(cache.insert_user(b"other", user("u"), later, later));
        assert!(cache.user(b"other").unwrap().expires_at().is_none());
    }

    /// A back-channel logout by `sid` forgets and tombstones that
    /// session's cookies, refuses a later insert with the same `sid`, and
    /// leaves other sessions alone.
    #[tokio::test(start_paused = true)]
    async fn a_session_id_mark_ends_its_cookies_and_refuses_late_inserts() {
        let cache = Cache::new(1 << 20, 1000);
        let later = Instant::now() + Duration::from_secs(60);
        let insert = |token: &[u8], sid| {
            cache.insert_session(token, user("u"), later, later, None, Some(sid))
        };
        assert!(insert(b"a1", "s1"));
        assert!(insert(b"b1", "s2"));
        assert!(cache.insert_user(b"plain", user("u"), later, later));
        cache.mark_session_id("s1", later);
        assert!(cache.user(b"a1").is_none());
        assert!(matches!(
            cache.mark(b"a1", Instant::now()),
            Some(MarkKind::Revoked)
        ));
        assert!(cache.user(b"b1").is_some() && cache.user(b"plain").is_some());
        assert!(!insert(b"a2", "s1"), "a lookup completing later is refused");
        assert!(cache.session_revoked("s1") && !cache.session_revoked("s2"));
        tokio::time::advance(Duration::from_secs(61)).await;
        assert!(!cache.session_revoked("s1"), "the mark ends at its horizon");
    }

    #[tokio::test(start_paused = true)]
    async fn revocation_wins_over_a_late_insert() {
        let cache = Cache::new(1 << 20, 1000);
        let now = Instant::now();
        let later = now + Duration::from_secs(60);
        assert!(cache.insert_user(b"tok", user("u"), later, later));
        cache.mark_token(b"tok", MarkKind::Revoked, later);
        assert!(cache.user(b"tok").is_none());
        assert!(!cache.insert_user(b"tok", user("u"), later, later));
        cache.mark_token(b"tok", MarkKind::Cooldown, later);
        assert!(matches!(cache.mark(b"tok", now), Some(MarkKind::Revoked)));
        tokio::time::advance(Duration::from_secs(61)).await;
        assert!(cache.mark(b"tok", Instant::now()).is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn memory_is_bounded_by_bytes_and_marks_by_count() {
        let cache = Cache::new(200_000, 1_000);
        let later = Instant::now() + Duration::from_secs(60);
        for i in 0..20_000 {
            cache.insert_user(
                format!("token-{i}").as_bytes(),
                user(&format!("u{i}")),
                later,
                later,
            );
            cache.mark_token(format!("bad-{i}").as_bytes(), MarkKind::Invalid, later);
        }
        assert!(cache.user_bytes() <= 200_000, "{}", cache.user_bytes());
        assert!(cache.user_count() > 100);
        let marks: usize = cache
            .shards
            .iter()
            .map(|s| s.read().unwrap().marks.len())
            .sum();
        assert!(marks <= 1_000 + SHARDS, "{marks}");
    }

    #[tokio::test(start_paused = true)]
    async fn tombstones_are_bounded_too_and_long_keys_are_kept_as_digests() {
        let cache = Cache::new(1 << 20, 1_000);
        let later = Instant::now() + Duration::from_secs(3600);
        for i in 0..50_000 {
            cache.mark_token(format!("gone-{i}").as_bytes(), MarkKind::Revoked, later);
        }
        let marks = |cache: &Cache| -> Vec<usize> {
            cache
                .shards
                .iter()
                .flat_map(|s| {
                    s.read()
                        .unwrap()
                        .marks
                        .keys()
                        .map(|k| k.len())
                        .collect::<Vec<_>>()
                })
                .collect()
        };
        assert!(
            marks(&cache).len() <= 1_000 + SHARDS,
            "{}",
            marks(&cache).len()
        );
        let long = vec![b'x'; 7_000];
        cache.mark_token(&long, MarkKind::Revoked, later);
        assert!(matches!(
            cache.mark(&long, Instant::now()),
            Some(MarkKind::Revoked)
        ));
        assert!(marks(&cache).iter().all(|&len| len <= LONG_MARK_KEY));
        // A user for that key is refused: the digest is what is checked.
        assert!(!cache.insert_user(&long, user("u"), later, later));
    }

    #[tokio::test(start_paused = true)]
    async fn a_flood_of_invalid_tokens_does_not_evict_users() {
        let cache = Cache::new(1 << 20, 1_000);
        let later = Instant::now() + Duration::from_secs(60);
        cache.insert_user(b"real-user-token", user("real"), later, later);
        for i in 0..100_000 {
            cache.mark_token(format!("random-{i}").as_bytes(), MarkKind::Invalid, later);
        }
        assert!(cache.user(b"real-user-token").is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn user_wide_removal_keeps_the_named_session() {
        let cache = Cache::new(1 << 20, 1_000);
        let later = Instant::now() + Duration::from_secs(60);
        for token in [b"a1", b"a2", b"a3"] {
            cache.insert_user(token, user("a"), later, later);
        }
        cache.insert_user(b"b1", user("b"), later, later);
        cache.remove_user_sessions("a", Some(b"a2"));
        assert!(cache.user(b"a1").is_none() && cache.user(b"a3").is_none());
        assert!(cache.user(b"a2").is_some() && cache.user(b"b1").is_some());
    }
}
