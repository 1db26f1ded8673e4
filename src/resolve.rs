//! The [`Resolver`]: a bounded, shared cache of token → user with single
//! flight, a stale-if-error window, a negative cache, a failure cooldown and
//! tombstones after sign-out (SECURITY.md R1–R5).
//!
//! Deadlines are kept in the entries as `tokio::time::Instant`s, so a paused
//! tokio clock drives expiry in tests.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures_util::FutureExt as _;
use futures_util::future::{BoxFuture, Shared};
use hmac::{Hmac, Mac};
use rand::Rng as _;
use sha2::Sha256;
use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::cache::{Cache, MarkKind};
use crate::config::CacheSettings;
use crate::events::{AuthEvent, AuthEvents, SessionHash};
use crate::upstream::{Lookup, SessionToken, Upstream, User};

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

/// The result of resolving one request's token.
#[derive(Debug, Clone)]
pub(crate) struct Resolution {
    pub(crate) state: AuthState,
    /// The token can never be valid again: delete the cookie.
    pub(crate) clear_cookie: bool,
}

impl Resolution {
    pub(crate) fn signed_in(user: Arc<User>, stale: bool) -> Self {
        Self {
            state: AuthState::SignedIn { user, stale },
            clear_cookie: false,
        }
    }

    fn invalid() -> Self {
        Self {
            state: AuthState::Anonymous,
            clear_cookie: true,
        }
    }

    fn unavailable() -> Self {
        Self {
            state: AuthState::Unavailable,
            clear_cookie: false,
        }
    }
}

#[derive(Clone)]
enum Fetched {
    Valid(Arc<User>),
    Invalid,
    Failed,
}

type Flight = Shared<BoxFuture<'static, Fetched>>;

/// Resolves session tokens to users through the upstream, with a shared
/// cache. One per [`AuthLayer`](crate::AuthLayer); cheap to clone.
#[derive(Clone)]
pub struct Resolver {
    inner: Arc<Inner>,
}

struct Inner {
    upstream: Arc<dyn Upstream>,
    hasher: Hmac<Sha256>,
    cache: Cache,
    in_flight: Mutex<HashMap<Box<str>, Flight>>,
    permits: Semaphore,
    settings: CacheSettings,
    upstream_calls: AtomicU64,
    events: AuthEvents,
}

impl fmt::Debug for Resolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Resolver")
            .field("cache", &self.inner.cache)
            .field("settings", &self.inner.settings)
            .finish_non_exhaustive()
    }
}

impl Resolver {
    pub(crate) fn new(
        upstream: Arc<dyn Upstream>,
        hash_key: &[u8],
        settings: CacheSettings,
        events: AuthEvents,
    ) -> Self {
        // HMAC pads keys to its 64-byte block; doing it here makes the
        // constructor infallible.
        let mut block = [0u8; 64];
        let len = hash_key.len().min(block.len());
        block[..len].copy_from_slice(&hash_key[..len]);
        let hasher = <Hmac<Sha256> as hmac::digest::KeyInit>::new(&block.into());
        Self {
            inner: Arc::new(Inner {
                upstream,
                hasher,
                cache: Cache::new(settings.max_bytes, settings.max_marks),
                in_flight: Mutex::new(HashMap::new()),
                permits: Semaphore::new(settings.max_in_flight),
                settings,
                upstream_calls: AtomicU64::new(0),
                events,
            }),
        }
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

    /// The fresh cached user of a token: the warm path, with no upstream
    /// call and no allocation.
    pub(crate) fn fresh(&self, token: &[u8]) -> Option<Arc<User>> {
        self.inner.cache.fresh_user(token, Instant::now())
    }

    /// Resolves a token: cache, then one coalesced upstream lookup.
    pub(crate) async fn resolve(&self, token: &SessionToken) -> Resolution {
        let key = token.expose().as_bytes();
        let cache = &self.inner.cache;
        let now = Instant::now();
        let cached = cache.user(key);
        if let Some(entry) = cached.as_ref().filter(|e| now < e.fresh_until) {
            return Resolution::signed_in(entry.user.clone(), false);
        }
        let fetched = match cache.mark(key, now) {
            Some(MarkKind::Invalid | MarkKind::Revoked) => return Resolution::invalid(),
            Some(MarkKind::Cooldown) => Fetched::Failed,
            None => self.flight(token).await,
        };
        match fetched {
            // A sign-out may have landed while the lookup was in flight.
            Fetched::Valid(_) if cache.mark(key, Instant::now()) == Some(MarkKind::Revoked) => {
                Resolution::invalid()
            }
            Fetched::Valid(user) => Resolution::signed_in(user, false),
            Fetched::Invalid => Resolution::invalid(),
            Fetched::Failed => match cached {
                // Revocations override stale serving (SECURITY.md R2.5).
                Some(entry)
                    if Instant::now() < entry.stale_until
                        && cache.mark(key, Instant::now()) != Some(MarkKind::Revoked) =>
                {
                    Resolution::signed_in(entry.user, true)
                }
                _ => Resolution::unavailable(),
            },
        }
    }

    /// Joins the lookup in flight for the token, or starts one as a detached
    /// task so a cancelled request does not cancel its waiters (R3.3).
    fn flight(&self, token: &SessionToken) -> Flight {
        let mut in_flight = self
            .inner
            .in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(flight) = in_flight.get(token.expose()) {
            return flight.clone();
        }
        let inner = self.inner.clone();
        let owned = token.clone();
        // The task removes its map entry under the same lock, so it cannot
        // do so before the entry below is inserted.
        let task = tokio::spawn(async move { inner.fetch(owned).await });
        let flight = async move { task.await.unwrap_or(Fetched::Failed) }
            .boxed()
            .shared();
        in_flight.insert(token.expose().into(), flight.clone());
        flight
    }

    /// Puts a freshly signed-in user in the cache, so the next request does
    /// not need the upstream.
    pub(crate) fn prime(&self, token: &SessionToken, user: User) {
        self.inner.store(token.expose().as_bytes(), Arc::new(user));
    }

    /// Forgets the cached user of a token (the next request asks the
    /// upstream), without tombstoning it.
    pub(crate) fn forget(&self, token: &SessionToken) {
        self.inner.cache.forget_user(token.expose().as_bytes());
    }

    /// Forgets every cached session of a user (without tombstones), so their
    /// profile is read fresh on each session's next request.
    pub(crate) fn refresh_user(&self, user_id: &str) {
        self.inner.cache.remove_user_sessions(user_id, None);
    }

    /// Forgets a signed-out token and tombstones it.
    pub(crate) fn revoke(&self, token: &SessionToken) {
        let settings = &self.inner.settings;
        let horizon = settings.fresh_ttl + settings.stale_window;
        self.inner.cache.mark_token(
            token.expose().as_bytes(),
            MarkKind::Revoked,
            Instant::now() + horizon,
        );
    }

    /// Forgets every cached session of a user, except `keep`.
    pub(crate) fn revoke_user(&self, user_id: &str, keep: Option<&SessionToken>) {
        self.inner
            .cache
            .remove_user_sessions(user_id, keep.map(|t| t.expose().as_bytes()));
    }

    /// A short, keyed fingerprint of a token for log lines and events.
    pub(crate) fn fingerprint(&self, token: &SessionToken) -> String {
        self.inner.fingerprint(token.expose().as_bytes())
    }

    /// The fingerprint as an event field.
    pub(crate) fn session_hash(&self, token: &SessionToken) -> SessionHash {
        SessionHash(self.fingerprint(token))
    }

    /// Emits an auth event.
    pub(crate) fn emit(&self, event: AuthEvent) {
        self.inner.events.emit(event);
    }
}

impl Inner {
    fn fingerprint(&self, token: &[u8]) -> String {
        let mut mac = self.hasher.clone();
        mac.update(token);
        let digest = mac.finalize().into_bytes();
        digest[..6].iter().map(|b| format!("{b:02x}")).collect()
    }

    fn store(&self, token: &[u8], user: Arc<User>) {
        let settings = &self.settings;
        let now = Instant::now();
        // Up to 10 % jitter so users warmed together do not expire together.
        let jitter = settings
            .fresh_ttl
            .mul_f64(rand::thread_rng().gen_range(0.0..0.1));
        let fresh_until = now + settings.fresh_ttl - jitter;
        self.cache.insert_user(
            token,
            user,
            fresh_until,
            fresh_until + settings.stale_window,
        );
    }

    async fn fetch(self: Arc<Self>, token: SessionToken) -> Fetched {
        let fetched = self.lookup_upstream(&token).await;
        self.in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(token.expose());
        fetched
    }

    async fn lookup_upstream(&self, token: &SessionToken) -> Fetched {
        let settings = &self.settings;
        let key = token.expose().as_bytes();
        let permit = tokio::time::timeout(settings.queue_timeout, self.permits.acquire()).await;
        let Ok(Ok(_permit)) = permit else {
            tracing::warn!(token = %self.fingerprint(key), "authgate: upstream lookup queue full; request is unavailable");
            return Fetched::Failed;
        };
        self.upstream_calls.fetch_add(1, Ordering::Relaxed);
        let result = tokio::time::timeout(HARD_LOOKUP_TIMEOUT, self.upstream.lookup(token)).await;
        let cooldown = || {
            self.cache.mark_token(
                key,
                MarkKind::Cooldown,
                Instant::now() + settings.failure_cooldown,
            );
        };
        match result {
            Ok(Ok(Lookup::Valid { user, .. })) => {
                let user = Arc::new(user);
                self.cache.clear_cooldown(key);
                self.store(key, user.clone());
                Fetched::Valid(user)
            }
            Ok(Ok(Lookup::Invalid)) => {
                self.cache.mark_token(
                    key,
                    MarkKind::Invalid,
                    Instant::now() + settings.negative_ttl,
                );
                self.events.emit(AuthEvent::SessionInvalidated {
                    session: SessionHash(self.fingerprint(key)),
                });
                Fetched::Invalid
            }
            Ok(Err(err)) => {
                tracing::warn!(token = %self.fingerprint(key), error = %err, "authgate: user lookup failed; keeping the session");
                cooldown();
                Fetched::Failed
            }
            Err(_) => {
                tracing::warn!(token = %self.fingerprint(key), "authgate: user lookup timed out; keeping the session");
                cooldown();
                Fetched::Failed
            }
        }
    }
}
