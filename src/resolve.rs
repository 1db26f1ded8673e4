//! The [`Resolver`]: a bounded, shared cache of token → user with single
//! flight, a stale-if-error window, a negative cache, a failure cooldown and
//! tombstones after sign-out (SECURITY.md R1–R5).
//!
//! Deadlines are kept in the entries as `tokio::time::Instant`s, so a paused
//! tokio clock drives expiry in tests; moka's own expiry only reclaims
//! memory.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures_util::FutureExt as _;
use futures_util::future::{BoxFuture, Shared};
use hmac::{Hmac, Mac};
use moka::sync::Cache;
use rand::Rng as _;
use sha2::Sha256;
use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::config::CacheSettings;
use crate::events::{AuthEvent, AuthEvents, SessionHash};
use crate::upstream::{Lookup, SessionToken, Upstream, User};

/// A keyed hash of a full token: the cache key, and (shortened) the only
/// form in which a token ever reaches a log line.
pub(crate) type TokenKey = [u8; 32];

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
    fn signed_in(user: Arc<User>, stale: bool) -> Self {
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

struct Entry {
    user: Arc<User>,
    fresh_until: Instant,
    stale_until: Instant,
    weight: u32,
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
    users: Cache<TokenKey, Arc<Entry>>,
    /// Definitive invalid answers, with their deadline.
    negative: Cache<TokenKey, Instant>,
    /// Signed-out tokens: never served stale, never re-cached.
    tombstones: Cache<TokenKey, Instant>,
    /// Tokens whose last lookup failed transiently, until when not to retry.
    cooldown: Cache<TokenKey, Instant>,
    in_flight: Mutex<HashMap<TokenKey, Flight>>,
    permits: Semaphore,
    settings: CacheSettings,
    upstream_calls: std::sync::atomic::AtomicU64,
    events: AuthEvents,
}

impl fmt::Debug for Resolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Resolver")
            .field("cached_users", &self.inner.users.entry_count())
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
        let horizon = settings.fresh_ttl + settings.stale_window;
        let users = Cache::builder()
            .max_capacity(settings.max_bytes)
            .weigher(|_, entry: &Arc<Entry>| entry.weight)
            .time_to_live(horizon.max(Duration::from_secs(1)))
            .support_invalidation_closures()
            .build();
        let short = |ttl: Duration, capacity: u64| {
            Cache::builder()
                .max_capacity(capacity)
                .time_to_live(ttl.max(Duration::from_secs(1)))
                .build()
        };
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
                users,
                negative: short(settings.negative_ttl, 100_000),
                tombstones: short(horizon, 1_000_000),
                cooldown: short(settings.failure_cooldown, 100_000),
                in_flight: Mutex::new(HashMap::new()),
                permits: Semaphore::new(settings.max_in_flight),
                settings,
                upstream_calls: std::sync::atomic::AtomicU64::new(0),
                events,
            }),
        }
    }

    pub(crate) fn upstream(&self) -> &Arc<dyn Upstream> {
        &self.inner.upstream
    }

    /// The keyed hash of a token.
    pub(crate) fn key(&self, token: &SessionToken) -> TokenKey {
        let mut mac = self.inner.hasher.clone();
        mac.update(token.expose().as_bytes());
        mac.finalize().into_bytes().into()
    }

    /// How many user lookups this resolver has sent upstream.
    pub fn upstream_lookups(&self) -> u64 {
        self.inner
            .upstream_calls
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Resolves a token: cache, then one coalesced upstream lookup.
    pub(crate) async fn resolve(&self, token: &SessionToken) -> Resolution {
        let key = self.key(token);
        let now = Instant::now();
        let inner = &self.inner;
        if inner.is_marked(&inner.tombstones, &key, now)
            || inner.is_marked(&inner.negative, &key, now)
        {
            return Resolution::invalid();
        }
        let cached = inner.users.get(&key);
        if let Some(entry) = cached.as_ref().filter(|e| now < e.fresh_until) {
            return Resolution::signed_in(entry.user.clone(), false);
        }
        let fetched = if inner.is_marked(&inner.cooldown, &key, now) {
            Fetched::Failed
        } else {
            self.flight(key, token).await
        };
        match fetched {
            // A sign-out may have landed while the lookup was in flight.
            Fetched::Valid(_) if inner.is_marked(&inner.tombstones, &key, Instant::now()) => {
                Resolution::invalid()
            }
            Fetched::Valid(user) => Resolution::signed_in(user, false),
            Fetched::Invalid => Resolution::invalid(),
            Fetched::Failed => match cached {
                Some(entry) if Instant::now() < entry.stale_until => {
                    Resolution::signed_in(entry.user.clone(), true)
                }
                _ => Resolution::unavailable(),
            },
        }
    }

    /// Joins the lookup in flight for `key`, or starts one as a detached
    /// task so a cancelled request does not cancel its waiters (R3.3).
    fn flight(&self, key: TokenKey, token: &SessionToken) -> Flight {
        let mut in_flight = self
            .inner
            .in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(flight) = in_flight.get(&key) {
            return flight.clone();
        }
        let inner = self.inner.clone();
        let token = token.clone();
        // The task removes its map entry under the same lock, so it cannot
        // do so before the entry below is inserted.
        let task = tokio::spawn(async move { inner.fetch(key, token).await });
        let flight = async move { task.await.unwrap_or(Fetched::Failed) }
            .boxed()
            .shared();
        in_flight.insert(key, flight.clone());
        flight
    }

    /// Puts a freshly signed-in user in the cache, so the next request does
    /// not need the upstream.
    pub(crate) fn prime(&self, token: &SessionToken, user: User) {
        let key = self.key(token);
        self.inner.tombstones.invalidate(&key);
        self.inner.negative.invalidate(&key);
        self.inner.store(key, Arc::new(user));
    }

    /// Forgets a signed-out token and tombstones it.
    pub(crate) fn revoke(&self, token: &SessionToken) {
        let key = self.key(token);
        let inner = &self.inner;
        let horizon = inner.settings.fresh_ttl + inner.settings.stale_window;
        inner.users.invalidate(&key);
        inner.tombstones.insert(key, Instant::now() + horizon);
    }

    /// Forgets every cached session of a user, except `keep`.
    pub(crate) fn revoke_user(&self, user_id: &str, keep: Option<&SessionToken>) {
        let keep = keep.map(|token| self.key(token));
        let user_id = user_id.to_owned();
        // Only fails when closures are unsupported, which `new` enables.
        let _ = self.inner.users.invalidate_entries_if(move |key, entry| {
            entry.user.id == user_id && Some(*key) != keep
        });
    }

    /// A short, keyed fingerprint of a token for log lines.
    pub(crate) fn fingerprint(&self, token: &SessionToken) -> String {
        fingerprint(&self.key(token))
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

fn fingerprint(key: &TokenKey) -> String {
    key[..6].iter().map(|b| format!("{b:02x}")).collect()
}

impl Inner {
    fn is_marked(&self, cache: &Cache<TokenKey, Instant>, key: &TokenKey, now: Instant) -> bool {
        cache.get(key).is_some_and(|until| now < until)
    }

    fn store(&self, key: TokenKey, user: Arc<User>) {
        let settings = &self.settings;
        let now = Instant::now();
        // Up to 10 % jitter so users warmed together do not expire together.
        let jitter = settings
            .fresh_ttl
            .mul_f64(rand::thread_rng().gen_range(0.0..0.1));
        let fresh_until = now + settings.fresh_ttl - jitter;
        let weight = user.weight();
        self.users.insert(
            key,
            Arc::new(Entry {
                user,
                fresh_until,
                stale_until: fresh_until + settings.stale_window,
                weight,
            }),
        );
    }

    async fn fetch(self: Arc<Self>, key: TokenKey, token: SessionToken) -> Fetched {
        let fetched = self.lookup_upstream(&key, &token).await;
        self.in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&key);
        fetched
    }

    async fn lookup_upstream(&self, key: &TokenKey, token: &SessionToken) -> Fetched {
        let settings = &self.settings;
        let permit = tokio::time::timeout(settings.queue_timeout, self.permits.acquire()).await;
        let Ok(Ok(_permit)) = permit else {
            tracing::warn!(token = %fingerprint(key), "authgate: upstream lookup queue full; request is unavailable");
            return Fetched::Failed;
        };
        self.upstream_calls
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let result = tokio::time::timeout(HARD_LOOKUP_TIMEOUT, self.upstream.lookup(token)).await;
        match result {
            Ok(Ok(Lookup::Valid { user, .. })) => {
                let user = Arc::new(user);
                if !self.is_marked(&self.tombstones, key, Instant::now()) {
                    self.store(*key, user.clone());
                }
                self.cooldown.invalidate(key);
                Fetched::Valid(user)
            }
            Ok(Ok(Lookup::Invalid)) => {
                self.events.emit(AuthEvent::SessionInvalidated {
                    session: SessionHash(fingerprint(key)),
                });
                self.users.invalidate(key);
                self.negative
                    .insert(*key, Instant::now() + settings.negative_ttl);
                Fetched::Invalid
            }
            Ok(Err(err)) => {
                tracing::warn!(token = %fingerprint(key), error = %err, "authgate: user lookup failed; keeping the session");
                self.cooldown
                    .insert(*key, Instant::now() + settings.failure_cooldown);
                Fetched::Failed
            }
            Err(_) => {
                tracing::warn!(token = %fingerprint(key), "authgate: user lookup timed out; keeping the session");
                self.cooldown
                    .insert(*key, Instant::now() + settings.failure_cooldown);
                Fetched::Failed
            }
        }
    }
}
