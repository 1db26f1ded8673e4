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

use crate::cache::{Cache, MarkKind, Successor, unix_secs};
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
    /// Every session of `user_id` issued before `at` (Unix seconds), but
    /// `keep`, is signed out until `until`.
    User {
        user_id: String,
        keep: Option<[u8; 32]>,
        at: u64,
        until: u64,
    },
}

/// Where a resolver sends its revocations (the revocation bus).
pub(crate) trait Fanout: Send + Sync + 'static {
    fn publish(&self, revocation: RemoteRevocation);
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
                // Revocations override stale serving (SECURITY.md R2.5).
                Some(entry) if Instant::now() < entry.stale_until && !revoked() => {
                    Resolution::signed_in(entry.user, true)
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
        self.inner
            .store(key, Arc::new(user), expires_at, recheck_at, session_id);
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
                at: unix_secs(now),
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
        let until = Instant::now() + self.user_revocation_horizon();
        inner.cache.mark_session_id(session_id, until);
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
        let inner = &self.inner;
        let Some(remote) = &inner.remote else {
            return;
        };
        let now = Instant::now();
        let wall_now = SystemTime::now();
        match revocation {
            RemoteRevocation::Session { hash, until } => {
                let until_wall = std::time::UNIX_EPOCH + Duration::from_secs(until);
                if until_wall <= wall_now {
                    return;
                }
                let cached = {
                    let mut state = remote.state.lock().unwrap_or_else(PoisonError::into_inner);
                    if state.revoked.len() >= REMOTE_MAX {
                        state.revoked.retain(|_, until| *until > wall_now);
                        if state.revoked.len() >= REMOTE_MAX {
                            state.revoked.clear();
                        }
                    }
                    state.revoked.insert(hash, until_wall);
                    state.cached.get(&hash).cloned()
                };
                if let Some(key) = cached {
                    inner
                        .cache
                        .mark_token(&key, MarkKind::Revoked, instant_at(until_wall, now));
                }
            }
            RemoteRevocation::User {
                user_id,
                keep,
                at,
                until,
            } => {
                let until_wall = std::time::UNIX_EPOCH + Duration::from_secs(until);
                if until_wall <= wall_now {
                    return;
                }
                inner.cache.mark_user_remote(
                    &user_id,
                    keep,
                    std::time::UNIX_EPOCH + Duration::from_secs(at),
                    instant_at(until_wall, now),
                    &|token| inner.token_hash(token),
                );
            }
        }
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
                    self.cache.clear_cooldown(key);
                    return self.admit(key, valid);
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
    fn admit(&self, key: &[u8], valid: Valid) -> Fetched {
        let session_id = valid.session_id.as_deref();
        if session_id.is_some_and(|sid| self.cache.session_revoked(sid)) {
            // Ended by a back-channel logout: neither served nor rotated.
            return self.invalid(key);
        }
        let user = Arc::new(valid.user);
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
        Fetched::Valid {
            user,
            rotated: Some(successor),
        }
    }
}
