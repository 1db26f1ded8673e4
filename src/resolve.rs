//! The [`Resolver`]: a bounded, shared cache of session → user with single
//! flight, a stale-if-error window, a negative cache, a failure cooldown,
//! tombstones and user-wide marks after sign-out, deadlines capped by the
//! session's expiry, and coalesced rotation with a successor mark
//! (SECURITY.md R1–R5, R10).
//!
//! Deadlines are kept in the entries as `tokio::time::Instant`s, so a paused
//! tokio clock drives expiry in tests.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use futures_util::FutureExt as _;
use futures_util::future::{BoxFuture, Shared};
use hmac::{Hmac, Mac};
use rand::Rng as _;
use sha2::Sha256;
use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::cache::{Cache, Entry, MarkKind, Successor, unix_secs};
use crate::config::CacheSettings;
use crate::cookie::SessionCodec;
use crate::events::{AuthEvent, AuthEvents, SessionHash};
use crate::upstream::{Lookup, Revocation, Session, Upstream, User, Valid};

/// How long a single upstream lookup may take in total, whatever the
/// client's own timeouts say.
const HARD_LOOKUP_TIMEOUT: Duration = Duration::from_secs(30);

/// Who the request's session cookie belongs to.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum AuthState {
    /// Signed in. `stale` is true when the upstream could not be asked and
    /// the cached user is served within its stale window.
    SignedIn {
        /// The user.
        user: Arc<User>,
        /// Served from the cache during an upstream failure.
        stale: bool,
    },
    /// No session, or the upstream definitively said it is invalid.
    Anonymous,
    /// The upstream could not be asked and no usable cached user exists.
    /// The cookie is kept; `CurrentUser` answers 503.
    Unavailable,
}

impl AuthState {
    /// The user, when signed in (fresh or stale).
    pub fn user(&self) -> Option<&Arc<User>> {
        match self {
            Self::SignedIn { user, .. } => Some(user),
            _ => None,
        }
    }

    /// True when signed in.
    pub fn is_signed_in(&self) -> bool {
        matches!(self, Self::SignedIn { .. })
    }

    /// True when the upstream could not be asked.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Self::Unavailable)
    }
}

/// What a resolution does to the session cookie.
#[derive(Debug, Clone)]
pub(crate) enum CookieChange {
    Keep,
    /// The session can never be valid again: delete the cookie.
    Clear,
    /// The session was rotated: set its successor (every request that
    /// waited on the rotation sets the same value).
    Set(Arc<Successor>),
}

/// The result of resolving one request's session.
#[derive(Debug, Clone)]
pub(crate) struct Resolution {
    pub(crate) state: AuthState,
    pub(crate) cookie: CookieChange,
}

impl Resolution {
    pub(crate) fn signed_in(user: Arc<User>, stale: bool) -> Self {
        Self {
            state: AuthState::SignedIn { user, stale },
            cookie: CookieChange::Keep,
        }
    }

    fn invalid() -> Self {
        Self {
            state: AuthState::Anonymous,
            cookie: CookieChange::Clear,
        }
    }

    fn unavailable() -> Self {
        Self {
            state: AuthState::Unavailable,
            cookie: CookieChange::Keep,
        }
    }
}

#[derive(Clone)]
enum Fetched {
    Valid {
        user: Arc<User>,
        rotated: Option<Arc<Successor>>,
    },
    Invalid,
    Failed,
}

type Flight = Shared<BoxFuture<'static, Fetched>>;

/// How long a rotated session's old cookie is still served (with the new
/// cookie set on its response), so sibling requests that left before the
/// rotation are healed instead of refreshing again (SECURITY.md R10).
const ROTATION_GRACE: Duration = Duration::from_secs(30);

/// Resolves sessions to users through the upstream, with a shared cache.
/// One per [`AuthLayer`](crate::AuthLayer); cheap to clone.
#[derive(Clone)]
pub struct Resolver {
    inner: Arc<Inner>,
}

struct Inner {
    upstream: Arc<dyn Upstream>,
    hasher: Hmac<Sha256>,
    cache: Cache,
    in_flight: Mutex<HashMap<Box<[u8]>, Flight>>,
    permits: Semaphore,
    settings: CacheSettings,
    upstream_calls: AtomicU64,
    events: AuthEvents,
    codec: SessionCodec,
    revocation: Revocation,
    session_max_age: Duration,
    /// The revocation bus's side of this resolver, when one is configured.
    remote: Option<Remote>,
}

/// A revocation to share with the other instances, or one they shared.
/// Sessions are named by their keyed hash (HMAC-SHA256 with the app key):
/// never a token (SECURITY.md §5.5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RemoteRevocation {
    /// One session is signed out until `until` (Unix seconds).
    Session { hash: [u8; 32], until: u64 },
    /// Every session of `user_id` issued before `at_ms` (milliseconds
    /// since the Unix epoch; whole seconds on the wire), but `keep`, is
    /// signed out until `until` (Unix seconds).
    User {
        user_id: String,
        keep: Option<[u8; 32]>,
        at_ms: u64,
        until: u64,
    },
    /// The session was rotated; its successor is in Redis (sealed) until
    /// `until` (Unix seconds).
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    Rotated { hash: [u8; 32], until: u64 },
    /// The upstream session `session_id` (OpenID Connect `sid`) was ended
    /// by a back-channel logout, until `until` (Unix seconds).
    SessionId { session_id: String, until: u64 },
}

impl RemoteRevocation {
    /// When the revocation ends, in Unix seconds.
    fn until(&self) -> u64 {
        match self {
            Self::Session { until, .. }
            | Self::User { until, .. }
            | Self::Rotated { until, .. }
            | Self::SessionId { until, .. } => *until,
        }
    }
}

/// Where a resolver sends its revocations (the revocation bus), and the
/// Redis keys it reads on cold paths (tombstones, rotation successors, the
/// optional shared cache). Every read is bounded by the bus's read timeout
/// and answers `None` when Redis cannot say: the caller then does what it
/// did without the bus.
pub(crate) trait Fanout: Send + Sync + 'static {
    /// Shares a revocation: a tombstone key and a message.
    fn publish(&self, revocation: RemoteRevocation);

    /// Shares a rotation: the sealed successor under the old session's
    /// keyed hash, then a [`RemoteRevocation::Rotated`] message.
    fn rotated(&self, _hash: [u8; 32], _successor: SharedSuccessor) {}

    /// Whether resolved users are shared through Redis.
    fn shares(&self) -> bool {
        false
    }

    /// Writes a resolved user to the shared cache (when it is on).
    fn share(&self, _hash: [u8; 32], _entry: SharedUser) {}

    /// The tombstones Redis holds for a session and its user.
    fn tombstones<'a>(
        &'a self,
        _hash: [u8; 32],
        _user_id: &'a str,
        _session_id: Option<&'a str>,
    ) -> BoxFuture<'a, Option<Tombstones>> {
        futures_util::future::ready(None).boxed()
    }

    /// What Redis knows of a session before an upstream lookup: its
    /// rotation successor (when `successor`), its shared cache entry
    /// (when the shared cache is on) and the tombstones that apply.
    fn prefetch(&self, _hash: [u8; 32], _successor: bool) -> BoxFuture<'_, Option<Prefetched>> {
        futures_util::future::ready(None).boxed()
    }
}

/// What the tombstones in Redis say of a stale entry.
enum StaleCheck {
    /// None applies (or Redis cannot say): serve it stale.
    Serve,
    /// The session was signed out: clear the cookie.
    SignedOut,
    /// A user-wide revocation may cover it: do not serve it, keep the
    /// cookie.
    Refuse,
}

/// The tombstone keys Redis holds for one session and its user.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Tombstones {
    /// The session is signed out until then (Unix seconds).
    pub(crate) session: Option<u64>,
    /// The user's sessions issued (or resolved) before `at` are signed
    /// out, but `keep`.
    pub(crate) user: Option<UserTombstone>,
    /// The upstream session (its `sid`) was ended by a back-channel
    /// logout.
    pub(crate) session_id: bool,
}

/// A user-wide revocation as its Redis key keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct UserTombstone {
    /// When it was made, in milliseconds since the Unix epoch.
    pub(crate) at_ms: u64,
    /// The session it spared, by keyed hash.
    pub(crate) keep: Option<[u8; 32]>,
}

impl UserTombstone {
    /// Whether it forbids a session (keyed hash `hash`) of its user that was
    /// issued at `issued_at` (when known) or resolved at `resolved_ms`.
    pub(crate) fn forbids(
        &self,
        hash: &[u8; 32],
        issued_at: Option<SystemTime>,
        resolved_ms: u64,
    ) -> bool {
        if self.keep.as_ref() == Some(hash) {
            return false;
        }
        match issued_at {
            // Whole seconds, as for local marks.
            Some(issued) => unix_secs(issued) < self.at_ms / 1000,
            None => resolved_ms <= self.at_ms,
        }
    }
}

/// A user another instance resolved, as the shared cache holds it.
#[derive(Debug, Clone)]
pub(crate) struct SharedUser {
    pub(crate) user: Arc<User>,
    /// Until when it is fresh.
    pub(crate) fresh_until: SystemTime,
    /// The session's end, if known.
    pub(crate) expires_at: Option<SystemTime>,
    /// When the lookup that produced it started, in ms since the epoch.
    pub(crate) resolved_ms: u64,
    /// When the session was issued, if the upstream said.
    pub(crate) issued_at: Option<SystemTime>,
    /// The upstream's session id, if it has one.
    pub(crate) session_id: Option<String>,
}

/// A rotation another instance made: the old session's successor. `Debug`
/// is redacted (the wire value is a cookie).
#[derive(Clone)]
pub(crate) struct SharedSuccessor {
    /// The new cookie value.
    pub(crate) wire: String,
    /// When the new cookie expires.
    pub(crate) cookie_until: SystemTime,
    /// The user.
    pub(crate) user: Arc<User>,
    /// When to ask the upstream again about the new session.
    pub(crate) recheck_at: Option<SystemTime>,
    /// The new session's end.
    pub(crate) expires_at: Option<SystemTime>,
    /// When the rotation happened, in ms since the epoch.
    pub(crate) at_ms: u64,
    /// The end of the successor window.
    pub(crate) until: SystemTime,
    /// The upstream's session id, if it has one.
    pub(crate) session_id: Option<String>,
}

impl fmt::Debug for SharedSuccessor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedSuccessor")
            .field("wire", &"<redacted>")
            .field("user", &self.user.id)
            .finish_non_exhaustive()
    }
}

/// What [`Fanout::prefetch`] found.
#[derive(Debug, Default)]
pub(crate) struct Prefetched {
    pub(crate) successor: Option<SharedSuccessor>,
    pub(crate) user: Option<SharedUser>,
    pub(crate) tombstones: Tombstones,
}

/// Milliseconds since the Unix epoch.
pub(crate) fn unix_ms(at: SystemTime) -> u64 {
    at.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The bus's state in a resolver: the outlet, the sessions cached here by
/// their keyed hash (to find them when another instance revokes one) and
/// the sessions revoked elsewhere (so a lookup of one that was not cached
/// here, or was in flight, is refused).
struct Remote {
    fanout: Arc<dyn Fanout>,
    state: Mutex<RemoteState>,
}

#[derive(Default)]
struct RemoteState {
    cached: HashMap<[u8; 32], Box<[u8]>>,
    revoked: HashMap<[u8; 32], SystemTime>,
    /// Sessions another instance rotated: their successor is in Redis.
    rotated: HashMap<[u8; 32], SystemTime>,
}

/// Inserts into one of the bounded hash → deadline maps: expired entries
/// go first, then everything (the documented worst case).
fn insert_bounded(map: &mut HashMap<[u8; 32], SystemTime>, hash: [u8; 32], until: SystemTime) {
    if map.len() >= REMOTE_MAX {
        let now = SystemTime::now();
        map.retain(|_, until| *until > now);
        if map.len() >= REMOTE_MAX {
            map.clear();
        }
    }
    map.insert(hash, until);
}

/// How many entries each of the two maps above keeps before it starts over
/// (a lost `cached` entry means a revocation from elsewhere reaches that
/// session here only when its cache entry expires: the documented worst
/// case, the cache TTL).
const REMOTE_MAX: usize = 100_000;

/// A resolver that does not keep it alive (for background tasks).
#[derive(Clone)]
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
pub(crate) struct WeakResolver(std::sync::Weak<Inner>);

#[cfg_attr(not(feature = "redis"), allow(dead_code))]
impl WeakResolver {
    pub(crate) fn upgrade(&self) -> Option<Resolver> {
        self.0.upgrade().map(|inner| Resolver { inner })
    }
}

impl fmt::Debug for Resolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Resolver")
            .field("cache", &self.inner.cache)
            .field("settings", &self.inner.settings)
            .finish_non_exhaustive()
    }
}

/// What the resolver needs besides the upstream.
pub(crate) struct ResolverParts {
    pub(crate) hash_key: Vec<u8>,
    pub(crate) settings: CacheSettings,
    pub(crate) events: AuthEvents,
    pub(crate) codec: SessionCodec,
    pub(crate) revocation: Revocation,
    pub(crate) session_max_age: Duration,
    /// The revocation bus's outlet, if one is configured.
    pub(crate) fanout: Option<Arc<dyn Fanout>>,
}

/// The tokio instant of a wall-clock time (now, if it has passed).
fn instant_at(at: SystemTime, now: Instant) -> Instant {
    // At most a year ahead, so an absurd expiry cannot overflow.
    const YEAR: Duration = Duration::from_secs(365 * 24 * 3600);
    at.duration_since(SystemTime::now())
        .map_or(now, |left| now + left.min(YEAR))
}

/// The wall-clock time of a tokio instant.
fn wall_of(at: Instant) -> SystemTime {
    let now = Instant::now();
    if at <= now {
        SystemTime::now()
            .checked_sub(now - at)
            .unwrap_or(std::time::UNIX_EPOCH)
    } else {
        SystemTime::now() + (at - now)
    }
}

/// The tokio instant of a wall-clock time in ms since the epoch; `None`
/// when it is too far back to express.
fn instant_of(ms: u64) -> Option<Instant> {
    let at = std::time::UNIX_EPOCH + Duration::from_millis(ms);
    let now = Instant::now();
    match SystemTime::now().duration_since(at) {
        Ok(ago) => now.checked_sub(ago),
        Err(ahead) => Some(now + ahead.duration()),
    }
}

impl Resolver {
    pub(crate) fn new(upstream: Arc<dyn Upstream>, parts: ResolverParts) -> Self {
        // HMAC pads keys to its 64-byte block; doing it here makes the
        // constructor infallible.
        let mut block = [0u8; 64];
        let len = parts.hash_key.len().min(block.len());
        block[..len].copy_from_slice(&parts.hash_key[..len]);
        let hasher = <Hmac<Sha256> as hmac::digest::KeyInit>::new(&block.into());
        let settings = parts.settings;
        Self {
            inner: Arc::new(Inner {
                upstream,
                hasher,
                cache: Cache::new(settings.max_bytes, settings.max_marks),
                in_flight: Mutex::new(HashMap::new()),
                permits: Semaphore::new(settings.max_in_flight),
                settings,
                upstream_calls: AtomicU64::new(0),
                events: parts.events,
                codec: parts.codec,
                revocation: parts.revocation,
                session_max_age: parts.session_max_age,
                remote: parts.fanout.map(|fanout| Remote {
                    fanout,
                    state: Mutex::new(RemoteState::default()),
                }),
            }),
        }
    }

    /// This resolver, without keeping it alive.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn downgrade(&self) -> WeakResolver {
        WeakResolver(Arc::downgrade(&self.inner))
    }

    pub(crate) fn upstream(&self) -> &Arc<dyn Upstream> {
        &self.inner.upstream
    }

    /// How many user lookups this resolver has sent upstream.
    pub fn upstream_lookups(&self) -> u64 {
        self.inner.upstream_calls.load(Ordering::Relaxed)
    }

    /// How many users are cached, and the bytes they are weighed at.
    pub fn cached_users(&self) -> (usize, u64) {
        (self.inner.cache.user_count(), self.inner.cache.user_bytes())
    }

    /// The fresh cached user of a session cookie value: the warm path, with
    /// no upstream call and no allocation.
    pub(crate) fn fresh(&self, key: &[u8]) -> Option<Arc<User>> {
        self.inner.cache.fresh_user(key, Instant::now())
    }

    /// Resolves a session: cache, then one coalesced upstream lookup. `key`
    /// is the session cookie's value, `session` what it decodes to.
    pub(crate) async fn resolve(&self, key: &[u8], session: &Session) -> Resolution {
        let cache = &self.inner.cache;
        let now = Instant::now();
        let cached = cache.user(key);
        if let Some(entry) = cached.as_ref().filter(|e| now < e.fresh_until) {
            return Resolution::signed_in(entry.user.clone(), false);
        }
        let fetched = match cache.mark(key, now) {
            Some(MarkKind::Invalid | MarkKind::Revoked) => return Resolution::invalid(),
            Some(MarkKind::Rotated(next)) => {
                // Signed out (or revoked user-wide) since: so is this.
                let gone = matches!(
                    cache.mark(next.wire.as_bytes(), now),
                    Some(MarkKind::Revoked | MarkKind::Invalid)
                );
                if gone {
                    return Resolution::invalid();
                }
                return Resolution {
                    state: AuthState::SignedIn {
                        user: next.user.clone(),
                        stale: false,
                    },
                    cookie: CookieChange::Set(next),
                };
            }
            Some(MarkKind::Cooldown) => Fetched::Failed,
            None => self.flight(key, session).await,
        };
        let revoked = || matches!(cache.mark(key, Instant::now()), Some(MarkKind::Revoked));
        match fetched {
            // A sign-out may have landed while the lookup was in flight.
            Fetched::Valid { .. } if revoked() => Resolution::invalid(),
            Fetched::Valid { user, rotated } => Resolution {
                state: AuthState::SignedIn { user, stale: false },
                cookie: rotated.map_or(CookieChange::Keep, CookieChange::Set),
            },
            Fetched::Invalid => Resolution::invalid(),
            Fetched::Failed => match cached {
                // Revocations override stale serving (SECURITY.md R2.5),
                // those kept in Redis included (§5.4).
                Some(entry) if Instant::now() < entry.stale_until && !revoked() => {
                    match self.inner.stale_check(key, &entry).await {
                        StaleCheck::Serve => Resolution::signed_in(entry.user, true),
                        StaleCheck::SignedOut => Resolution::invalid(),
                        StaleCheck::Refuse => Resolution::unavailable(),
                    }
                }
                _ => Resolution::unavailable(),
            },
        }
    }

    /// Joins the lookup in flight for the session, or starts one as a
    /// detached task so a cancelled request does not cancel its waiters
    /// (R3.3).
    fn flight(&self, key: &[u8], session: &Session) -> Flight {
        let mut in_flight = self
            .inner
            .in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(flight) = in_flight.get(key) {
            return flight.clone();
        }
        // A rotation may have finished since `resolve` looked: its answer
        // stands (a second refresh would use the spent session).
        if let Some(MarkKind::Rotated(next)) = self.inner.cache.mark(key, Instant::now()) {
            let fetched = Fetched::Valid {
                user: next.user.clone(),
                rotated: Some(next),
            };
            return futures_util::future::ready(fetched).boxed().shared();
        }
        let inner = self.inner.clone();
        let owned_key: Box<[u8]> = key.into();
        let owned_session = session.clone();
        // The task removes its map entry under the same lock, so it cannot
        // do so before the entry below is inserted.
        let task = tokio::spawn(async move { inner.fetch(owned_key, owned_session).await });
        let flight = async move { task.await.unwrap_or(Fetched::Failed) }
            .boxed()
            .shared();
        in_flight.insert(key.into(), flight.clone());
        flight
    }

    /// Puts a freshly signed-in user in the cache, so the next request does
    /// not need the upstream; the session's expiry caps the deadlines.
    pub(crate) fn prime(
        &self,
        key: &[u8],
        user: User,
        expires_at: Option<SystemTime>,
        recheck_at: Option<SystemTime>,
        session_id: Option<&str>,
    ) {
        let user = Arc::new(user);
        if self
            .inner
            .store(key, user.clone(), expires_at, recheck_at, session_id)
        {
            self.inner.share(
                key,
                user,
                (expires_at, recheck_at, None),
                session_id,
                SystemTime::now(),
            );
        }
    }

    /// Forgets the cached user of a session (the next request asks the
    /// upstream), without tombstoning it.
    pub(crate) fn forget(&self, key: &[u8]) {
        self.inner.cache.forget_user(key);
    }

    /// Forgets every cached session of a user (without tombstones), so their
    /// profile is read fresh on each session's next request.
    pub(crate) fn refresh_user(&self, user_id: &str) {
        self.inner.cache.remove_user_sessions(user_id, None);
    }

    /// Forgets a signed-out session and tombstones it: until its token
    /// expires, or, when a refresh token can renew it (the upstream may
    /// still honour that, e.g. without RFC 7009 revocation), for the
    /// configured session max age.
    pub(crate) fn revoke_session(&self, key: &[u8], session: &Session) {
        if session.refresh_token.is_some() {
            self.revoke(key, Some(SystemTime::now() + self.inner.session_max_age));
        } else {
            self.revoke(key, session.expires_at);
        }
    }

    /// Forgets a signed-out session and tombstones it for as long as the
    /// upstream's revocation horizon says.
    pub(crate) fn revoke(&self, key: &[u8], expires_at: Option<SystemTime>) {
        let inner = &self.inner;
        let now = Instant::now();
        // A plain cookie holds only the token: its end is the one the last
        // lookup (or the sign-in) reported, kept in the cache entry.
        let expires_at =
            expires_at.or_else(|| inner.cache.user(key).and_then(|entry| entry.expires_at()));
        let until = match inner.revocation {
            Revocation::UntilExpiry => match expires_at {
                Some(at) => instant_at(at, now),
                None => now + inner.session_max_age,
            },
            _ => now + inner.settings.fresh_ttl + inner.settings.stale_window,
        };
        inner.cache.mark_token(key, MarkKind::Revoked, until);
        if let Some(remote) = &inner.remote {
            let wall = SystemTime::now() + until.saturating_duration_since(now);
            remote.fanout.publish(RemoteRevocation::Session {
                hash: inner.token_hash(key),
                until: unix_secs(wall),
            });
        }
    }

    /// A user-wide revocation (sign out of all or all other sessions, a
    /// password or e-mail change): forgets the user's cached sessions
    /// except `keep`, and leaves a mark that lookups completing afterwards
    /// respect.
    pub(crate) fn revoke_user(&self, user_id: &str, keep: Option<&[u8]>) {
        let inner = &self.inner;
        let horizon = self.user_revocation_horizon();
        inner
            .cache
            .mark_user(user_id, keep, Instant::now() + horizon);
        if let Some(remote) = &inner.remote {
            let now = SystemTime::now();
            remote.fanout.publish(RemoteRevocation::User {
                user_id: user_id.to_owned(),
                keep: keep.map(|key| inner.token_hash(key)),
                at_ms: unix_ms(now),
                until: unix_secs(now + horizon),
            });
        }
    }

    /// Ends an upstream session by its id (a back-channel logout, OpenID
    /// Connect Back-Channel Logout 1.0 §2.7): every cookie of it cached
    /// here is signed out, and a lookup that completes with that id later
    /// (one in flight, a cookie not seen yet) is refused, for as long as a
    /// session may live.
    pub(crate) fn revoke_session_id(&self, session_id: &str) {
        let inner = &self.inner;
        let horizon = self.user_revocation_horizon();
        inner
            .cache
            .mark_session_id(session_id, Instant::now() + horizon);
        if let Some(remote) = &inner.remote {
            remote.fanout.publish(RemoteRevocation::SessionId {
                session_id: session_id.to_owned(),
                until: unix_secs(SystemTime::now() + horizon),
            });
        }
    }

    /// How long a user-wide or session-id mark must last: until every
    /// session it ends has expired (or, for an upstream that ends sessions
    /// itself, until any lookup that started before it has ended).
    fn user_revocation_horizon(&self) -> Duration {
        let inner = &self.inner;
        let settings = &inner.settings;
        match inner.revocation {
            Revocation::UntilExpiry => inner.session_max_age,
            // Long enough for any lookup that started before it to end.
            _ => settings.fresh_ttl + settings.stale_window + HARD_LOOKUP_TIMEOUT,
        }
    }

    /// Applies a revocation another instance published: the session (or
    /// the user's sessions) is signed out here too, a lookup in flight
    /// included, and nothing is published again.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn apply_remote(&self, revocation: RemoteRevocation) {
        self.inner.apply_remote(revocation);
    }

    /// Forgets every cached user (tombstones stay): the revocation bus lost
    /// its subscription, so revocations may have been missed.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn forget_all(&self) {
        self.inner.cache.clear_users();
    }

    /// A short, keyed fingerprint of a session for log lines and events.
    pub(crate) fn fingerprint(&self, key: &[u8]) -> String {
        self.inner.fingerprint(key)
    }

    /// The fingerprint as an event field.
    pub(crate) fn session_hash(&self, key: &[u8]) -> SessionHash {
        SessionHash(self.fingerprint(key))
    }

    /// Emits an auth event.
    pub(crate) fn emit(&self, event: AuthEvent) {
        self.inner.events.emit(event);
    }
}

impl Inner {
    fn apply_remote(&self, revocation: RemoteRevocation) {
        let Some(remote) = &self.remote else {
            return;
        };
        // Every revocation carries its end in Unix seconds; one already
        // over changes nothing.
        let until_wall = std::time::UNIX_EPOCH + Duration::from_secs(revocation.until());
        if until_wall <= SystemTime::now() {
            return;
        }
        let until = instant_at(until_wall, Instant::now());
        match revocation {
            RemoteRevocation::Session { hash, .. } => {
                let cached = {
                    let mut state = remote.state.lock().unwrap_or_else(PoisonError::into_inner);
                    insert_bounded(&mut state.revoked, hash, until_wall);
                    state.cached.get(&hash).cloned()
                };
                if let Some(key) = cached {
                    self.cache.mark_token(&key, MarkKind::Revoked, until);
                }
            }
            RemoteRevocation::User {
                user_id,
                keep,
                at_ms,
                ..
            } => {
                self.cache.mark_user_remote(
                    &user_id,
                    keep,
                    std::time::UNIX_EPOCH + Duration::from_millis(at_ms),
                    until,
                    &|token| self.token_hash(token),
                );
            }
            RemoteRevocation::SessionId { session_id, .. } => {
                self.cache.mark_session_id(&session_id, until);
            }
            RemoteRevocation::Rotated { hash, .. } => {
                let cached = {
                    let mut state = remote.state.lock().unwrap_or_else(PoisonError::into_inner);
                    insert_bounded(&mut state.rotated, hash, until_wall);
                    state.cached.get(&hash).cloned()
                };
                // The old session is spent: its next request here takes
                // the cold path, which finds the successor.
                if let Some(key) = cached {
                    self.cache.forget_user(&key);
                }
            }
        }
    }

    /// The keyed hash that names a session on the revocation bus.
    fn token_hash(&self, key: &[u8]) -> [u8; 32] {
        let mut mac = self.hasher.clone();
        mac.update(key);
        mac.finalize().into_bytes().into()
    }

    /// With a revocation bus: records that this instance caches `key`, so
    /// a revocation from elsewhere finds it; `false` when another instance
    /// revoked it already (then it must not be cached or served). Runs
    /// under the bus state's lock, before the cache insert: a revocation
    /// arriving after it finds the key and tombstones it, and the insert
    /// then refuses.
    fn register_remote(&self, key: &[u8]) -> bool {
        let Some(remote) = &self.remote else {
            return true;
        };
        let hash = self.token_hash(key);
        let mut state = remote.state.lock().unwrap_or_else(PoisonError::into_inner);
        if state
            .revoked
            .get(&hash)
            .is_some_and(|until| *until > SystemTime::now())
        {
            return false;
        }
        if state.cached.len() >= REMOTE_MAX {
            state.cached.clear();
        }
        state.cached.insert(hash, key.into());
        true
    }

    fn fingerprint(&self, key: &[u8]) -> String {
        let mut mac = self.hasher.clone();
        mac.update(key);
        let digest = mac.finalize().into_bytes();
        digest[..6].iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Caches a user: fresh until the upstream's recheck time or the
    /// jittered TTL, stale for the window after, both capped by the
    /// session's expiry (SECURITY.md T-H2).
    fn store(
        &self,
        key: &[u8],
        user: Arc<User>,
        expires_at: Option<SystemTime>,
        recheck_at: Option<SystemTime>,
        session_id: Option<&str>,
    ) -> bool {
        if !self.register_remote(key) {
            // Revoked on another instance: never cached or served here.
            self.cache.mark_token(
                key,
                MarkKind::Revoked,
                Instant::now() + self.settings.fresh_ttl + self.settings.stale_window,
            );
            return false;
        }
        let settings = &self.settings;
        let now = Instant::now();
        let mut fresh_until = match recheck_at {
            Some(at) => instant_at(at, now),
            None => {
                // Up to 10 % jitter so users warmed together do not expire
                // together.
                let jitter = settings
                    .fresh_ttl
                    .mul_f64(rand::thread_rng().gen_range(0.0..0.1));
                now + settings.fresh_ttl - jitter
            }
        };
        let mut stale_until = fresh_until + settings.stale_window;
        if let Some(at) = expires_at {
            let end = instant_at(at, now);
            fresh_until = fresh_until.min(end);
            stale_until = stale_until.min(end);
        }
        self.cache
            .insert_session(key, user, fresh_until, stale_until, expires_at, session_id)
    }

    async fn fetch(self: Arc<Self>, key: Box<[u8]>, session: Session) -> Fetched {
        let fetched = self.lookup_upstream(&key, &session).await;
        self.in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&key);
        fetched
    }

    async fn lookup_upstream(&self, key: &[u8], session: &Session) -> Fetched {
        if let Some(fetched) = self.ask_redis(key, session).await {
            return fetched;
        }
        let settings = &self.settings;
        let permit = tokio::time::timeout(settings.queue_timeout, self.permits.acquire()).await;
        let Ok(Ok(_permit)) = permit else {
            tracing::warn!(token = %self.fingerprint(key), "authgate: upstream lookup queue full; request is unavailable");
            return Fetched::Failed;
        };
        let cooldown = || {
            self.cache.mark_token(
                key,
                MarkKind::Cooldown,
                Instant::now() + settings.failure_cooldown,
            );
        };
        // A second attempt only when a user-wide revocation landed while
        // the first was in flight.
        for attempt in 0..2 {
            let started = Instant::now();
            self.upstream_calls.fetch_add(1, Ordering::Relaxed);
            let result =
                tokio::time::timeout(HARD_LOOKUP_TIMEOUT, self.upstream.lookup(session)).await;
            match result {
                // A session past the end the upstream itself reports is
                // never served, not even stale (SECURITY.md T-H2).
                Ok(Ok(Lookup::Valid(valid)))
                    if valid.expires_at.is_some_and(|at| at <= SystemTime::now()) =>
                {
                    return self.invalid(key);
                }
                Ok(Ok(Lookup::Valid(valid))) => {
                    let revoked = self.cache.user_revoked(
                        &valid.user.id,
                        key,
                        started,
                        valid.issued_at,
                        &|token| self.token_hash(token),
                    );
                    if revoked && valid.issued_at.is_none() && attempt == 0 {
                        // The answer may predate the revocation: ask again.
                        continue;
                    }
                    if revoked {
                        return self.invalid(key);
                    }
                    if self
                        .tombstoned(
                            key,
                            &valid.user.id,
                            valid.session_id.as_deref(),
                            valid.issued_at,
                            started,
                        )
                        .await
                    {
                        return Fetched::Invalid;
                    }
                    self.cache.clear_cooldown(key);
                    return self.admit(key, valid, started);
                }
                Ok(Ok(Lookup::Invalid)) => return self.invalid(key),
                Ok(Err(err)) => {
                    tracing::warn!(token = %self.fingerprint(key), error = %err, "authgate: user lookup failed; keeping the session");
                    cooldown();
                    return Fetched::Failed;
                }
                Err(_) => {
                    tracing::warn!(token = %self.fingerprint(key), "authgate: user lookup timed out; keeping the session");
                    cooldown();
                    return Fetched::Failed;
                }
            }
        }
        // The second answer also predated a revocation (only with a
        // revocation at each attempt): keep the cookie, serve nobody.
        Fetched::Failed
    }

    fn invalid(&self, key: &[u8]) -> Fetched {
        self.cache.mark_token(
            key,
            MarkKind::Invalid,
            Instant::now() + self.settings.negative_ttl,
        );
        self.events.emit(AuthEvent::SessionInvalidated {
            session: SessionHash(self.fingerprint(key)),
        });
        Fetched::Invalid
    }

    /// Caches a valid answer. A rotated session is sealed here, once, by
    /// the lookup every waiting request shares: they all set the same new
    /// cookie, and the old one is marked with its successor.
    fn admit(&self, key: &[u8], valid: Valid, started: Instant) -> Fetched {
        let session_id = valid.session_id.as_deref();
        if session_id.is_some_and(|sid| self.cache.session_revoked(sid)) {
            // Ended by a back-channel logout: neither served nor rotated.
            return self.invalid(key);
        }
        let user = Arc::new(valid.user);
        let started = wall_of(started);
        let Some(next) = valid.rotated else {
            if !self.store(
                key,
                user.clone(),
                valid.expires_at,
                valid.recheck_at,
                session_id,
            ) {
                return Fetched::Invalid;
            }
            self.share(
                key,
                user.clone(),
                (valid.expires_at, valid.recheck_at, valid.issued_at),
                session_id,
                started,
            );
            return Fetched::Valid {
                user,
                rotated: None,
            };
        };
        let wire = match self.codec.encode(&next) {
            Ok(wire) => wire,
            Err(err) => {
                tracing::error!(token = %self.fingerprint(key), error = %err, "authgate: the rotated session does not fit the cookie; the old one stays");
                if !self.store(
                    key,
                    user.clone(),
                    valid.expires_at,
                    valid.recheck_at,
                    session_id,
                ) {
                    return Fetched::Invalid;
                }
                return Fetched::Valid {
                    user,
                    rotated: None,
                };
            }
        };
        let successor = Arc::new(Successor {
            cookie_until: SystemTime::now() + self.codec.max_age(&next),
            wire: wire.into(),
            user: user.clone(),
            session_id: session_id.map(Into::into),
        });
        self.store(
            successor.wire.as_bytes(),
            user.clone(),
            valid.expires_at,
            valid.recheck_at,
            session_id,
        );
        self.cache.mark_token(
            key,
            MarkKind::Rotated(successor.clone()),
            Instant::now() + ROTATION_GRACE,
        );
        if let Some(remote) = &self.remote {
            // The other instances serve the old cookie's requests with the
            // same successor instead of refreshing again with the spent
            // session (SEAM.md §4.3).
            remote.fanout.rotated(
                self.token_hash(key),
                SharedSuccessor {
                    wire: successor.wire.to_string(),
                    cookie_until: successor.cookie_until,
                    user: user.clone(),
                    recheck_at: valid.recheck_at,
                    expires_at: valid.expires_at,
                    at_ms: unix_ms(SystemTime::now()),
                    until: SystemTime::now() + ROTATION_GRACE,
                    session_id: session_id.map(str::to_owned),
                },
            );
            self.share(
                successor.wire.as_bytes(),
                user.clone(),
                (valid.expires_at, valid.recheck_at, None),
                session_id,
                started,
            );
        }
        Fetched::Valid {
            user,
            rotated: Some(successor),
        }
    }

    /// Writes a user this instance resolved to the shared cache (when it
    /// is on): fresh as long as here, never past the session's end.
    fn share(
        &self,
        key: &[u8],
        user: Arc<User>,
        (expires_at, recheck_at, issued_at): (
            Option<SystemTime>,
            Option<SystemTime>,
            Option<SystemTime>,
        ),
        session_id: Option<&str>,
        resolved: SystemTime,
    ) {
        let Some(remote) = self.remote.as_ref().filter(|r| r.fanout.shares()) else {
            return;
        };
        let mut fresh_until =
            recheck_at.unwrap_or_else(|| SystemTime::now() + self.settings.fresh_ttl);
        if let Some(end) = expires_at {
            fresh_until = fresh_until.min(end);
        }
        remote.fanout.share(
            self.token_hash(key),
            SharedUser {
                user,
                fresh_until,
                expires_at,
                resolved_ms: unix_ms(resolved),
                issued_at,
                session_id: session_id.map(str::to_owned),
            },
        );
    }

    /// Before an upstream lookup, with a bus: a session signed out
    /// elsewhere (its tombstone), a rotation another instance made (its
    /// successor), or a user another instance resolved (the shared cache).
    /// `None`: ask the upstream.
    async fn ask_redis(&self, key: &[u8], session: &Session) -> Option<Fetched> {
        let remote = self.remote.as_ref()?;
        let hash = self.token_hash(key);
        let successor = session.refresh_token.is_some() || {
            let state = remote.state.lock().unwrap_or_else(PoisonError::into_inner);
            state
                .rotated
                .get(&hash)
                .is_some_and(|until| *until > SystemTime::now())
        };
        if !successor && !remote.fanout.shares() {
            return None;
        }
        let found = remote.fanout.prefetch(hash, successor).await?;
        if let Some(until) = found.tombstones.session {
            self.apply_remote(RemoteRevocation::Session { hash, until });
            return Some(Fetched::Invalid);
        }
        if let Some(next) = found.successor
            && let Some(fetched) = self.adopt_successor(key, next)
        {
            return Some(fetched);
        }
        let shared = found.user?;
        let forbidden = found
            .tombstones
            .user
            .as_ref()
            .is_some_and(|tomb| tomb.forbids(&hash, shared.issued_at, shared.resolved_ms));
        let ended = found.tombstones.session_id
            || shared
                .session_id
                .as_deref()
                .is_some_and(|sid| self.cache.session_revoked(sid));
        let started = instant_of(shared.resolved_ms)?;
        if forbidden
            || ended
            || self
                .cache
                .user_revoked(&shared.user.id, key, started, shared.issued_at, &|token| {
                    self.token_hash(token)
                })
        {
            return None;
        }
        let user = shared.user;
        if !self.store(
            key,
            user.clone(),
            shared.expires_at,
            Some(shared.fresh_until),
            shared.session_id.as_deref(),
        ) {
            return Some(Fetched::Invalid);
        }
        Some(Fetched::Valid {
            user,
            rotated: None,
        })
    }

    /// Takes over a rotation another instance made, unless its successor
    /// was signed out since: the old cookie gets the successor's user and
    /// cookie, as on the instance that rotated it.
    fn adopt_successor(&self, key: &[u8], next: SharedSuccessor) -> Option<Fetched> {
        let remote = self.remote.as_ref()?;
        let now = Instant::now();
        if next.until <= SystemTime::now() {
            return None;
        }
        let wire = next.wire.as_bytes();
        if matches!(
            self.cache.mark(wire, now),
            Some(MarkKind::Revoked | MarkKind::Invalid)
        ) {
            return None;
        }
        let wire_hash = self.token_hash(wire);
        let revoked = {
            let state = remote.state.lock().unwrap_or_else(PoisonError::into_inner);
            state
                .revoked
                .get(&wire_hash)
                .is_some_and(|until| *until > SystemTime::now())
        };
        let started = instant_of(next.at_ms)?;
        let ended = next
            .session_id
            .as_deref()
            .is_some_and(|sid| self.cache.session_revoked(sid));
        if revoked
            || ended
            || self
                .cache
                .user_revoked(&next.user.id, wire, started, None, &|token| {
                    self.token_hash(token)
                })
        {
            return None;
        }
        let user = next.user;
        let successor = Arc::new(Successor {
            wire: next.wire.into(),
            cookie_until: next.cookie_until,
            user: user.clone(),
            session_id: next.session_id.clone().map(Into::into),
        });
        if !self.store(
            successor.wire.as_bytes(),
            user.clone(),
            next.expires_at,
            next.recheck_at,
            next.session_id.as_deref(),
        ) {
            return None;
        }
        self.cache.mark_token(
            key,
            MarkKind::Rotated(successor.clone()),
            instant_at(next.until, now),
        );
        Some(Fetched::Valid {
            user,
            rotated: Some(successor),
        })
    }

    /// With a bus and an upstream that cannot revoke
    /// ([`Revocation::UntilExpiry`]): whether Redis holds a tombstone that
    /// signs out the session the upstream just called valid (a sign-out
    /// whose message this instance missed). Redis unreachable: `false`.
    async fn tombstoned(
        &self,
        key: &[u8],
        user_id: &str,
        session_id: Option<&str>,
        issued_at: Option<SystemTime>,
        started: Instant,
    ) -> bool {
        let Some(remote) = &self.remote else {
            return false;
        };
        if !matches!(self.revocation, Revocation::UntilExpiry) {
            return false;
        }
        let hash = self.token_hash(key);
        let Some(tombstones) = remote.fanout.tombstones(hash, user_id, session_id).await else {
            return false;
        };
        self.apply_tombstones(key, hash, &tombstones, issued_at, unix_ms(wall_of(started)))
    }

    /// Before serving a stale entry, with a bus: the tombstones Redis
    /// holds for the session or its user (SECURITY.md §5.4). Redis
    /// unreachable too: the entry is served within its stale window, as
    /// without a bus (documented).
    async fn stale_check(&self, key: &[u8], entry: &Entry) -> StaleCheck {
        let Some(remote) = &self.remote else {
            return StaleCheck::Serve;
        };
        let hash = self.token_hash(key);
        let Some(tombstones) = remote
            .fanout
            .tombstones(hash, &entry.user.id, entry.session_id())
            .await
        else {
            tracing::warn!(token = %self.fingerprint(key), "authgate: Redis is unreachable too; serving a stale user without checking its tombstones");
            return StaleCheck::Serve;
        };
        if tombstones.session.is_some() || tombstones.session_id {
            self.apply_tombstones(key, hash, &tombstones, None, 0);
            return StaleCheck::SignedOut;
        }
        // The entry was stored no earlier than a fresh TTL before it
        // turned stale: a lower bound, so the user's tombstone may cover
        // a session signed in again just after it. Not served, but the
        // cookie is kept (only a definitive answer removes it, R1).
        let stored = entry
            .fresh_until
            .checked_sub(self.settings.fresh_ttl)
            .unwrap_or(entry.fresh_until);
        let covered = tombstones
            .user
            .as_ref()
            .is_some_and(|tomb| tomb.forbids(&hash, None, unix_ms(wall_of(stored))));
        if covered {
            StaleCheck::Refuse
        } else {
            StaleCheck::Serve
        }
    }

    /// Whether `tombstones` sign out the session `key` (resolved at
    /// `resolved_ms`); if so it is tombstoned here too.
    fn apply_tombstones(
        &self,
        key: &[u8],
        hash: [u8; 32],
        tombstones: &Tombstones,
        issued_at: Option<SystemTime>,
        resolved_ms: u64,
    ) -> bool {
        if let Some(until) = tombstones.session {
            self.apply_remote(RemoteRevocation::Session { hash, until });
            self.cache.mark_token(
                key,
                MarkKind::Revoked,
                instant_at(
                    std::time::UNIX_EPOCH + Duration::from_secs(until),
                    Instant::now(),
                ),
            );
            return true;
        }
        let forbidden = tombstones.session_id
            || tombstones
                .user
                .as_ref()
                .is_some_and(|tomb| tomb.forbids(&hash, issued_at, resolved_ms));
        if forbidden {
            self.cache.mark_token(
                key,
                MarkKind::Revoked,
                Instant::now() + self.settings.fresh_ttl + self.settings.stale_window,
            );
        }
        forbidden
    }
}
