//! The revocation bus: sign-outs reach every instance of the app, over
//! Redis (feature `redis`), with an optional shared user cache.
//!
//! Each instance of an app keeps its own user cache. Without a bus, a
//! session signed out on instance A keeps working on B and C until their
//! cache entries expire (and, for upstreams that cannot revoke, until the
//! token expires). With [`RedisBus`] given to
//! [`AuthConfig::with_revocation_bus`](crate::AuthConfig::with_revocation_bus),
//! every revocation the layer records — a session signed out, a user
//! signed out everywhere or of all other sessions, a session rotated by a
//! refresh — is published on a Redis pub/sub channel and written as a key,
//! and every instance applies the others' (SECURITY.md §5):
//!
//! - Sessions are named by their keyed hash, HMAC-SHA256 with the app key
//!   (the instances share it), never by a token: anyone who can read Redis
//!   (`MONITOR`, logs) learns nothing to sign in with. Cookie values (a
//!   rotation's successor) and users (the shared cache) are sealed with
//!   AES-256-GCM under keys derived from the app key, each under its own
//!   label, with the Redis key as associated data (a value moved to
//!   another key does not open).
//! - A lookup in flight when a revocation arrives does not cache or serve
//!   the session: the instance remembers revoked hashes until their end.
//! - Pub/sub delivers at most once (Redis docs, "Pub/Sub", delivery
//!   semantics): when the subscription is lost (a dropped connection, no
//!   answer to the periodic `PING`), the instance forgets every cached user
//!   (its tombstones stay) and subscribes again with backoff (50 ms
//!   doubling to 10 s), so nothing it may have missed is served from its
//!   cache. What it missed stays readable in the tombstone keys.
//! - Before serving a user stale (the upstream failing), an instance reads
//!   the session's and the user's tombstone keys; so does an instance whose
//!   upstream cannot revoke ([`Revocation::UntilExpiry`](crate::upstream::Revocation))
//!   before it trusts a fresh "valid".
//! - Malformed, oversized, foreign or unknown messages and values are
//!   ignored: they cannot flush a cache or sign anyone in. (Whoever can
//!   write to Redis can sign sessions *out*, or hold sign-outs back, as
//!   with any bus: keep Redis private.)
//! - Redis down: sign-out still clears the cookie and signs out upstream;
//!   the failed write is logged and [`AuthEvent::RevocationBusFailed`]
//!   emitted. A failed or late read (past [`RedisBus::with_read_timeout`])
//!   makes the instance skip Redis for one second and go on as without the
//!   bus: stale users are served within the stale window, shared-cache
//!   misses go to the upstream. The other instances then see a sign-out
//!   when their cache entry expires (at most the cache's fresh TTL, plus
//!   its stale window during an upstream outage) or, for upstreams that
//!   revoke, at their next lookup.
//!
//! # Messages
//!
//! JSON, at most [`MAX_MESSAGE`] bytes, `v` 1, `origin` the sending
//! instance's random id (its own messages are skipped); hashes are 64
//! lowercase hex digits, times Unix seconds:
//!
//! - `{"v":1,"origin":…,"kind":"session","hash":"<hex>","until":<s>}`
//! - `{"v":1,"origin":…,"kind":"user","user":"<id>","keep":"<hex>"|null,"at":<s>,"until":<s>}`
//!   (`at` is rounded down on the wire and read as the end of its second)
//! - `{"v":1,"origin":…,"kind":"rotated","hash":"<hex>","until":<s>}`
//! - `{"v":1,"origin":…,"kind":"sid","sid":"<provider session id>","until":<s>}`
//!   (an OpenID Connect back-channel logout by `sid`; one by `sub` alone
//!   travels as `user`)
//!
//! # Keys
//!
//! Under the channel's name, each with a TTL (`SET … PX`) that covers its
//! horizon, written in the same pipeline before the message (so a key
//! exists when its message arrives):
//!
//! | key | value | TTL |
//! |---|---|---|
//! | `<channel>:s:<hex>` | the tombstone's end, Unix seconds | the revocation horizon: the session's end for an upstream that cannot revoke, else the fresh TTL plus the stale window |
//! | `<channel>:u:<user id>` | `{"at_ms":<ms>,"keep":"<hex>"\|null}` | the user-wide horizon |
//! | `<channel>:i:<sid>` | the tombstone's end, Unix seconds | the user-wide horizon |
//! | `<channel>:r:<hex>` (old session) | the successor, sealed: cookie value, user, deadlines | the 30 s successor window |
//! | `<channel>:c:<hex>` (shared cache) | `<user id>\0<sealed user and deadlines>` | min(fresh TTL, session end) |
//!
//! A sign-out deletes its session's `c` key; a user-wide one cannot find
//! the user's values, and its `u` key keeps every value resolved before
//! it from serving. Reads before an upstream lookup are one round trip (a
//! Lua script computes the user's `u` key from the value's prefix, so the
//! bus needs a standalone Redis, not a cluster).

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::FutureExt as _;
use futures_util::StreamExt as _;
use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::cookie::Keys;
use crate::error::ConfigError;
use crate::events::AuthEvent;
use crate::resolve::{
    Fanout, Prefetched, RemoteRevocation, Resolver, SharedSuccessor, SharedUser, Tombstones,
    UserTombstone, WeakResolver, unix_ms,
};
use crate::upstream::User;

/// The longest message the bus reads; longer ones are ignored.
pub const MAX_MESSAGE: usize = 2048;

/// The longest value the bus reads from a Redis key (a sealed user or
/// successor); longer ones are ignored.
pub const MAX_VALUE: usize = 64 * 1024;

/// The default channel.
pub const DEFAULT_CHANNEL: &str = "authgate:revocations";

/// The key the shared cache's values are sealed with is derived from the
/// app key under this label; successors under the next one.
const SHARED_CACHE_LABEL: &str = "authgate: redis shared cache";
const SUCCESSOR_LABEL: &str = "authgate: redis rotation successors";

/// A revocation bus on Redis pub/sub: give it to
/// [`AuthConfig::with_revocation_bus`](crate::AuthConfig::with_revocation_bus)
/// on every instance (with the same app key).
///
/// ```no_run
/// # fn demo() -> Result<(), authgate::ConfigError> {
/// use authgate::AuthConfig;
/// use authgate::bus::RedisBus;
///
/// let bus = RedisBus::new("redis://redis.internal/")?.with_shared_cache(true);
/// let config = AuthConfig::new("https://app.example")?
///     .with_key([7u8; 64])?
///     .with_revocation_bus(bus);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisBus {
    client: redis::Client,
    channel: String,
    ping_every: Duration,
    reconnect_max: Duration,
    read_timeout: Duration,
    shared_cache: bool,
}

impl fmt::Debug for RedisBus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The URL may carry a password.
        f.debug_struct("RedisBus")
            .field("channel", &self.channel)
            .field("ping_every", &self.ping_every)
            .field("read_timeout", &self.read_timeout)
            .field("shared_cache", &self.shared_cache)
            .finish_non_exhaustive()
    }
}

impl RedisBus {
    /// A bus on the Redis server at `url` (`redis://host:port/db`,
    /// `rediss://…` needs the redis crate's TLS features; the URL's
    /// password, if any, is used and never shown). Connects lazily, when
    /// the layer starts.
    ///
    /// # Errors
    ///
    /// [`ConfigError::InvalidUrl`] when `url` is not a Redis URL.
    pub fn new(url: &str) -> Result<Self, ConfigError> {
        let client = redis::Client::open(url).map_err(|_| ConfigError::InvalidUrl {
            what: "the revocation bus (a redis:// URL)",
            // The URL may hold a password: not repeated.
            value: "(not shown)".to_owned(),
        })?;
        Ok(Self {
            client,
            channel: DEFAULT_CHANNEL.to_owned(),
            ping_every: Duration::from_secs(5),
            reconnect_max: Duration::from_secs(10),
            read_timeout: Duration::from_millis(50),
            shared_cache: false,
        })
    }

    /// The pub/sub channel (default [`DEFAULT_CHANNEL`]): one per app, the
    /// same on every instance. It also prefixes the bus's Redis keys
    /// (`<channel>:s:…`, `:u:`, `:i:`, `:r:`, `:c:`).
    #[must_use]
    pub fn with_channel(mut self, channel: &str) -> Self {
        self.channel = channel.to_owned();
        self
    }

    /// How often the subscription is checked with `PING` (default 5 s); no
    /// answer within the same time counts as a lost subscription.
    #[must_use]
    pub fn with_ping_interval(mut self, every: Duration) -> Self {
        self.ping_every = every.max(Duration::from_millis(10));
        self
    }

    /// How long a request may wait for Redis on a cold path (default
    /// 50 ms, at least 1 ms): the tombstone check before serving a stale
    /// user, the successor and shared-cache read before an upstream
    /// lookup. Past it, or for one second after any Redis failure, the
    /// request goes on as without the bus.
    #[must_use]
    pub fn with_read_timeout(mut self, timeout: Duration) -> Self {
        self.read_timeout = timeout.max(Duration::from_millis(1));
        self
    }

    /// Shares resolved users between the instances through Redis (default
    /// off): a cold instance asks Redis before the upstream. Values are
    /// sealed (AES-256-GCM) with a key derived from the app key and named
    /// by the session's keyed hash; each lives as long as the user is
    /// fresh, never past the session's end. A sign-out deletes its value;
    /// tombstones keep any value from serving a signed-out session or user.
    #[must_use]
    pub fn with_shared_cache(mut self, on: bool) -> Self {
        self.shared_cache = on;
        self
    }

    /// Starts the bus for a resolver: its publisher (the resolver's
    /// [`Fanout`]) and the starter of its tasks. `keys` are the layer's
    /// keys, from which the sealing keys are derived. Needs a tokio
    /// runtime (the layer is built inside one).
    pub(crate) fn start(&self, keys: &Keys) -> (Arc<dyn Fanout>, Starter) {
        // A random id per instance, to skip its own messages.
        let origin: String = (0..16)
            .map(|_| format!("{:02x}", rand::random::<u8>()))
            .collect();
        let (outbox, queue) = mpsc::unbounded_channel();
        let link = Arc::new(Link {
            client: self.client.clone(),
            connection: tokio::sync::Mutex::new(None),
            down_until_ms: AtomicU64::new(0),
        });
        let publisher = Publisher {
            outbox,
            origin: origin.clone(),
            names: Names(self.channel.clone()),
            link: link.clone(),
            read_timeout: self.read_timeout,
            shared: self.shared_cache.then(|| keys.derived(SHARED_CACHE_LABEL)),
            successors: keys.derived(SUCCESSOR_LABEL),
        };
        let starter = Starter {
            bus: self.clone(),
            origin,
            queue,
            link,
        };
        (Arc::new(publisher), starter)
    }
}

/// What starts the bus's tasks once the resolver exists.
pub(crate) struct Starter {
    bus: RedisBus,
    origin: String,
    queue: mpsc::UnboundedReceiver<Job>,
    link: Arc<Link>,
}

impl Starter {
    /// Spawns the publisher and the subscriber; both stop when the resolver
    /// is dropped.
    pub(crate) fn spawn(self, resolver: &Resolver) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::error!(
                "authgate: the revocation bus needs a tokio runtime: build the layer inside one; revocations stay local"
            );
            return;
        };
        runtime.spawn(publish_loop(
            self.link.clone(),
            self.bus.channel.clone(),
            self.queue,
            resolver.downgrade(),
        ));
        runtime.spawn(subscribe_loop(
            self.bus,
            self.origin,
            self.link,
            resolver.downgrade(),
        ));
    }
}

/// The bus's Redis keys, all under the channel's name.
#[derive(Clone)]
struct Names(String);

impl Names {
    /// A signed-out session's tombstone: its end, in Unix seconds.
    fn session(&self, hash: &[u8; 32]) -> String {
        format!("{}:s:{}", self.0, hex(hash))
    }
    /// A user-wide revocation: `{"at_ms":…,"keep":"<64 hex>"|null}`.
    fn user(&self, user_id: &str) -> String {
        format!("{}:u:{user_id}", self.0)
    }
    /// An upstream session ended by a back-channel logout (its `sid`):
    /// the tombstone's end, in Unix seconds.
    fn session_id(&self, session_id: &str) -> String {
        format!("{}:i:{session_id}", self.0)
    }
    /// A rotated session's sealed successor.
    fn successor(&self, hash: &[u8; 32]) -> String {
        format!("{}:r:{}", self.0, hex(hash))
    }
    /// A session's sealed user in the shared cache.
    fn cached(&self, hash: &[u8; 32]) -> String {
        format!("{}:c:{}", self.0, hex(hash))
    }
}

/// The connection the publisher and the cold-path reads share (one
/// multiplexed connection), and whether Redis failed lately.
struct Link {
    client: redis::Client,
    connection: tokio::sync::Mutex<Option<redis::aio::MultiplexedConnection>>,
    /// Until when (ms since the epoch) reads skip Redis after a failure.
    down_until_ms: AtomicU64,
}

/// How long reads skip Redis after a failure.
const DOWN_FOR: Duration = Duration::from_secs(1);

impl Link {
    /// Whether reads should try Redis.
    fn usable(&self) -> bool {
        unix_ms(SystemTime::now()) >= self.down_until_ms.load(Ordering::Relaxed)
    }

    fn up(&self) {
        self.down_until_ms.store(0, Ordering::Relaxed);
    }

    /// Redis failed: reads skip it for a while, and the next use connects
    /// again.
    fn failed(&self) {
        let until = unix_ms(SystemTime::now() + DOWN_FOR);
        self.down_until_ms.store(until, Ordering::Relaxed);
        if let Ok(mut connection) = self.connection.try_lock() {
            *connection = None;
        }
    }

    /// The shared connection, connecting within `wait` if need be.
    async fn connection(&self, wait: Duration) -> Option<redis::aio::MultiplexedConnection> {
        let mut slot = tokio::time::timeout(wait, self.connection.lock())
            .await
            .ok()?;
        if let Some(connection) = slot.as_ref() {
            return Some(connection.clone());
        }
        let connection = tokio::time::timeout(wait, self.client.get_multiplexed_async_connection())
            .await
            .ok()?
            .ok()?;
        *slot = Some(connection.clone());
        Some(connection)
    }

    /// Runs a pipeline within `wait`; `None` (and the link marked down)
    /// on any failure.
    async fn run<T: redis::FromRedisValue>(
        &self,
        pipeline: &redis::Pipeline,
        wait: Duration,
    ) -> Option<T> {
        let answer = async {
            let mut connection = self.connection(wait).await?;
            tokio::time::timeout(wait, pipeline.query_async::<T>(&mut connection))
                .await
                .ok()?
                .ok()
        }
        .await;
        match answer {
            Some(answer) => {
                self.up();
                Some(answer)
            }
            None => {
                self.failed();
                None
            }
        }
    }
}

/// The wire form of a revocation (see the [module docs](self)). Any
/// other field, kind or version is refused.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
enum Message {
    Session {
        v: u8,
        origin: String,
        hash: String,
        until: u64,
    },
    User {
        v: u8,
        origin: String,
        user: String,
        keep: Option<String>,
        at: u64,
        until: u64,
    },
    Rotated {
        v: u8,
        origin: String,
        hash: String,
        until: u64,
    },
    Sid {
        v: u8,
        origin: String,
        sid: String,
        until: u64,
    },
}

fn hex(hash: &[u8; 32]) -> String {
    hash.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<[u8; 32]> {
    if text.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

impl Message {
    fn of(origin: &str, revocation: RemoteRevocation) -> Self {
        let origin = origin.to_owned();
        match revocation {
            RemoteRevocation::Session { hash, until } => Self::Session {
                v: 1,
                origin,
                hash: hex(&hash),
                until,
            },
            RemoteRevocation::User {
                user_id,
                keep,
                at_ms,
                until,
            } => Self::User {
                v: 1,
                origin,
                user: user_id,
                keep: keep.as_ref().map(hex),
                at: at_ms / 1000,
                until,
            },
            RemoteRevocation::Rotated { hash, until } => Self::Rotated {
                v: 1,
                origin,
                hash: hex(&hash),
                until,
            },
            RemoteRevocation::SessionId { session_id, until } => Self::Sid {
                v: 1,
                origin,
                sid: session_id,
                until,
            },
        }
    }

    /// The revocation a message from another instance carries; `None` for
    /// anything else (own, malformed, oversized, another version).
    fn parse(payload: &[u8], own_origin: &str) -> Option<RemoteRevocation> {
        if payload.len() > MAX_MESSAGE {
            return None;
        }
        match serde_json::from_slice(payload).ok()? {
            Self::Session {
                v: 1,
                origin,
                hash,
                until,
            } if origin != own_origin => Some(RemoteRevocation::Session {
                hash: unhex(&hash)?,
                until,
            }),
            Self::User {
                v: 1,
                origin,
                user,
                keep,
                at,
                until,
            } if origin != own_origin && !user.is_empty() && user.len() <= 512 => {
                let keep = match keep {
                    Some(keep) => Some(unhex(&keep)?),
                    None => None,
                };
                Some(RemoteRevocation::User {
                    user_id: user,
                    keep,
                    // Whole seconds on the wire: the end of that second,
                    // so nothing issued before the revocation slips by.
                    at_ms: at.saturating_mul(1000).saturating_add(999),
                    until,
                })
            }
            Self::Rotated {
                v: 1,
                origin,
                hash,
                until,
            } if origin != own_origin => Some(RemoteRevocation::Rotated {
                hash: unhex(&hash)?,
                until,
            }),
            Self::Sid {
                v: 1,
                origin,
                sid,
                until,
            } if origin != own_origin && !sid.is_empty() && sid.len() <= 512 => {
                Some(RemoteRevocation::SessionId {
                    session_id: sid,
                    until,
                })
            }
            _ => None,
        }
    }
}

/// A user-wide tombstone's value.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct UserTombstoneValue {
    at_ms: u64,
    keep: Option<String>,
}

/// A user as sealed in Redis (every field of [`User`]).
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SealedUser {
    id: String,
    email: Option<String>,
    phone: Option<String>,
    name: Option<String>,
    picture: Option<String>,
    provider: Option<String>,
    email_verified: Option<bool>,
    groups: Vec<String>,
    org: Option<String>,
    anonymous: bool,
    auth_time: Option<u64>,
    raw: Box<serde_json::value::RawValue>,
}

impl SealedUser {
    fn of(user: &User) -> Option<Self> {
        // Every field, named: a new field of `User` does not compile here
        // until it is carried.
        let User {
            id,
            email,
            phone,
            name,
            picture,
            provider,
            email_verified,
            groups,
            org,
            anonymous,
            auth_time,
            raw,
        } = user;
        Some(Self {
            id: id.clone(),
            email: email.clone(),
            phone: phone.clone(),
            name: name.clone(),
            picture: picture.clone(),
            provider: provider.clone(),
            email_verified: *email_verified,
            groups: groups.clone(),
            org: org.clone(),
            anonymous: *anonymous,
            auth_time: *auth_time,
            raw: serde_json::value::RawValue::from_string(raw.as_str().to_owned()).ok()?,
        })
    }

    fn into_user(self) -> Option<User> {
        let raw: serde_json::Value = serde_json::from_str(self.raw.get()).ok()?;
        let mut user = User::new(self.id, raw);
        user.email = self.email;
        user.phone = self.phone;
        user.name = self.name;
        user.picture = self.picture;
        user.provider = self.provider;
        user.email_verified = self.email_verified;
        user.groups = self.groups;
        user.org = self.org;
        user.anonymous = self.anonymous;
        user.auth_time = self.auth_time;
        Some(user)
    }
}

/// A shared cache value, sealed: the user and its deadlines.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SharedValue {
    /// The user.
    u: SealedUser,
    /// Fresh until (ms since the epoch).
    f: u64,
    /// The session's end (ms), if known.
    e: Option<u64>,
    /// When its lookup started (ms).
    r: u64,
    /// When the session was issued (ms), if known.
    i: Option<u64>,
    /// The upstream's session id, if any.
    #[serde(default)]
    s: Option<String>,
}

/// A rotation's successor, sealed.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SuccessorValue {
    /// The new cookie value.
    w: String,
    /// The new cookie's end (ms).
    c: u64,
    /// The user.
    u: SealedUser,
    /// When to ask the upstream again (ms), if it said.
    f: Option<u64>,
    /// The new session's end (ms), if known.
    e: Option<u64>,
    /// When the rotation happened (ms).
    a: u64,
    /// The end of the successor window (ms).
    n: u64,
    /// The upstream's session id, if any.
    #[serde(default)]
    s: Option<String>,
}

fn at_ms(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

/// The TTL of a key that must live until `until`; `None` once it passed.
fn ttl_until(until: SystemTime) -> Option<u64> {
    let left = until.duration_since(SystemTime::now()).ok()?;
    let ms = u64::try_from(left.as_millis()).unwrap_or(u64::MAX);
    (ms > 0).then_some(ms)
}

/// One write to Redis.
enum Op {
    /// `SET key value PX ttl_ms`.
    Set {
        key: String,
        value: String,
        ttl_ms: u64,
    },
    /// `DEL key`.
    Del { key: String },
}

/// One item of the publisher's queue: writes, then (for a revocation or a
/// rotation) a message, in one pipeline on one connection, so a message's
/// key exists when the message arrives.
struct Job {
    ops: Vec<Op>,
    message: Option<Message>,
}

/// The resolver's outlet: revocations, rotations and shared users go to a
/// queue the publish task drains, so a request never waits for a write;
/// reads (tombstones, successors, shared users) wait at most the read
/// timeout.
struct Publisher {
    outbox: mpsc::UnboundedSender<Job>,
    origin: String,
    names: Names,
    link: Arc<Link>,
    read_timeout: Duration,
    /// The shared cache's sealing keys, when it is on.
    shared: Option<Keys>,
    successors: Keys,
}

impl Publisher {
    fn send(&self, job: Job) {
        if self.outbox.send(job).is_err() {
            tracing::warn!("authgate: the revocation bus is stopped; a revocation stays local");
        }
    }

    /// Opens a sealed value read from `key`.
    fn open<T: serde::de::DeserializeOwned>(
        keys: &Keys,
        key: &str,
        purpose: &str,
        value: &[u8],
    ) -> Option<T> {
        if value.len() > MAX_VALUE {
            return None;
        }
        keys.open(key, purpose, std::str::from_utf8(value).ok()?)
    }

    fn session_tombstone(value: Option<&[u8]>) -> Option<u64> {
        let until: u64 = std::str::from_utf8(value?).ok()?.parse().ok()?;
        (until > crate::cache::unix_secs(SystemTime::now())).then_some(until)
    }

    fn user_tombstone(value: Option<&[u8]>) -> Option<UserTombstone> {
        let value = value?;
        if value.len() > MAX_MESSAGE {
            return None;
        }
        let parsed: UserTombstoneValue = serde_json::from_slice(value).ok()?;
        let keep = match parsed.keep {
            Some(keep) => Some(unhex(&keep)?),
            None => None,
        };
        Some(UserTombstone {
            at_ms: parsed.at_ms,
            keep,
        })
    }

    /// `MGET` of `keys`: each value's bytes, or `None` when Redis could
    /// not answer within the read timeout.
    async fn mget(&self, keys: &[String]) -> Option<Vec<Option<Vec<u8>>>> {
        if !self.link.usable() {
            return None;
        }
        let mut pipeline = redis::pipe();
        pipeline.cmd("MGET").arg(keys);
        let (values,): (Vec<Option<Vec<u8>>>,) =
            self.link.run(&pipeline, self.read_timeout).await?;
        (values.len() == keys.len()).then_some(values)
    }

    fn open_successor(&self, key: &str, value: &[u8]) -> Option<SharedSuccessor> {
        let sealed: SuccessorValue = Self::open(&self.successors, key, "successor", value)?;
        Some(SharedSuccessor {
            wire: sealed.w,
            cookie_until: at_ms(sealed.c),
            user: Arc::new(sealed.u.into_user()?),
            recheck_at: sealed.f.map(at_ms),
            expires_at: sealed.e.map(at_ms),
            at_ms: sealed.a,
            until: at_ms(sealed.n),
            session_id: sealed.s,
        })
    }

    fn open_shared(&self, key: &str, value: &[u8]) -> Option<SharedUser> {
        // `<user id>\0<sealed>`: the id in clear lets the read script
        // fetch the user's tombstone in the same round trip; it must be
        // the sealed user's.
        let split = value.iter().position(|&b| b == 0)?;
        let (user_id, sealed) = (&value[..split], &value[split + 1..]);
        let sealed: SharedValue = Self::open(self.shared.as_ref()?, key, "user", sealed)?;
        if sealed.u.id.as_bytes() != user_id {
            return None;
        }
        let now = SystemTime::now();
        let fresh_until = at_ms(sealed.f);
        let expires_at = sealed.e.map(at_ms);
        if fresh_until <= now || expires_at.is_some_and(|end| end <= now) {
            return None;
        }
        Some(SharedUser {
            user: Arc::new(sealed.u.into_user()?),
            fresh_until,
            expires_at,
            resolved_ms: sealed.r,
            issued_at: sealed.i.map(at_ms),
            session_id: sealed.s,
        })
    }
}

impl Fanout for Publisher {
    fn publish(&self, revocation: RemoteRevocation) {
        let mut ops = Vec::with_capacity(2);
        match &revocation {
            RemoteRevocation::Session { hash, until } => {
                if let Some(ttl_ms) = ttl_until(UNIX_EPOCH + Duration::from_secs(*until)) {
                    ops.push(Op::Set {
                        key: self.names.session(hash),
                        value: until.to_string(),
                        ttl_ms,
                    });
                }
                if self.shared.is_some() {
                    ops.push(Op::Del {
                        key: self.names.cached(hash),
                    });
                }
            }
            RemoteRevocation::User {
                user_id,
                keep,
                at_ms,
                until,
            } => {
                let value = UserTombstoneValue {
                    at_ms: *at_ms,
                    keep: keep.as_ref().map(hex),
                };
                if let (Some(ttl_ms), Ok(value)) = (
                    ttl_until(UNIX_EPOCH + Duration::from_secs(*until)),
                    serde_json::to_string(&value),
                ) {
                    ops.push(Op::Set {
                        key: self.names.user(user_id),
                        value,
                        ttl_ms,
                    });
                }
            }
            RemoteRevocation::SessionId { session_id, until } => {
                if let Some(ttl_ms) = ttl_until(UNIX_EPOCH + Duration::from_secs(*until)) {
                    ops.push(Op::Set {
                        key: self.names.session_id(session_id),
                        value: until.to_string(),
                        ttl_ms,
                    });
                }
            }
            RemoteRevocation::Rotated { .. } => {}
        }
        self.send(Job {
            ops,
            message: Some(Message::of(&self.origin, revocation)),
        });
    }

    fn rotated(&self, hash: [u8; 32], successor: SharedSuccessor) {
        let Some(ttl_ms) = ttl_until(successor.until) else {
            return;
        };
        let key = self.names.successor(&hash);
        let Some(user) = SealedUser::of(&successor.user) else {
            return;
        };
        let value = SuccessorValue {
            w: successor.wire,
            c: unix_ms(successor.cookie_until),
            u: user,
            f: successor.recheck_at.map(unix_ms),
            e: successor.expires_at.map(unix_ms),
            a: successor.at_ms,
            n: unix_ms(successor.until),
            s: successor.session_id,
        };
        let ttl = Duration::from_millis(ttl_ms) + Duration::from_secs(1);
        let Some(sealed) = self.successors.seal(&key, "successor", &value, ttl) else {
            return;
        };
        let until = crate::cache::unix_secs(successor.until) + 1;
        self.send(Job {
            ops: vec![Op::Set {
                key,
                value: sealed,
                ttl_ms,
            }],
            message: Some(Message::of(
                &self.origin,
                RemoteRevocation::Rotated { hash, until },
            )),
        });
    }

    fn shares(&self) -> bool {
        self.shared.is_some()
    }

    fn share(&self, hash: [u8; 32], entry: SharedUser) {
        let Some(keys) = &self.shared else {
            return;
        };
        // Redis failing: the shared cache is an optimisation, skipped.
        if !self.link.usable() {
            return;
        }
        let Some(ttl_ms) = ttl_until(entry.fresh_until) else {
            return;
        };
        let Some(user) = SealedUser::of(&entry.user) else {
            return;
        };
        let value = SharedValue {
            u: user,
            f: unix_ms(entry.fresh_until),
            e: entry.expires_at.map(unix_ms),
            r: entry.resolved_ms,
            i: entry.issued_at.map(unix_ms),
            s: entry.session_id,
        };
        let key = self.names.cached(&hash);
        let ttl = Duration::from_millis(ttl_ms) + Duration::from_secs(1);
        let Some(sealed) = keys.seal(&key, "user", &value, ttl) else {
            return;
        };
        if entry.user.id.contains('\0') {
            return;
        }
        self.send(Job {
            ops: vec![Op::Set {
                key,
                value: format!("{}\0{sealed}", entry.user.id),
                ttl_ms,
            }],
            message: None,
        });
    }

    fn tombstones<'a>(
        &'a self,
        hash: [u8; 32],
        user_id: &'a str,
        session_id: Option<&'a str>,
    ) -> BoxFuture<'a, Option<Tombstones>> {
        async move {
            let mut keys = vec![self.names.session(&hash), self.names.user(user_id)];
            if let Some(sid) = session_id {
                keys.push(self.names.session_id(sid));
            }
            let values = self.mget(&keys).await?;
            Some(Tombstones {
                session: Self::session_tombstone(values[0].as_deref()),
                user: Self::user_tombstone(values[1].as_deref()),
                session_id: Self::session_tombstone(values.get(2).and_then(Option::as_deref))
                    .is_some(),
            })
        }
        .boxed()
    }

    fn prefetch(&self, hash: [u8; 32], successor: bool) -> BoxFuture<'_, Option<Prefetched>> {
        async move {
            if !self.link.usable() {
                return None;
            }
            let successor_key = self.names.successor(&hash);
            let cached_key = self.names.cached(&hash);
            // One round trip: the tombstone, the successor, the shared
            // value and its user's tombstone.
            let mut pipeline = redis::pipe();
            pipeline
                .cmd("EVAL")
                .arg(PREFETCH_SCRIPT)
                .arg(3)
                .arg(self.names.session(&hash))
                .arg(&successor_key)
                .arg(&cached_key)
                .arg(if successor { "1" } else { "0" })
                .arg(if self.shared.is_some() { "1" } else { "0" })
                .arg(self.names.user(""));
            let (values,): (Vec<Option<Vec<u8>>>,) =
                self.link.run(&pipeline, self.read_timeout).await?;
            let [session, next, cached, user]: [Option<Vec<u8>>; 4] = values.try_into().ok()?;
            let mut found = Prefetched {
                tombstones: Tombstones {
                    session: Self::session_tombstone(session.as_deref()),
                    user: None,
                    session_id: false,
                },
                ..Prefetched::default()
            };
            if successor {
                found.successor =
                    next.and_then(|value| self.open_successor(&successor_key, &value));
            }
            if found.tombstones.session.is_none() {
                found.user = cached.and_then(|value| self.open_shared(&cached_key, &value));
                found.tombstones.user = Self::user_tombstone(user.as_deref());
            }
            // A shared user of an upstream session (OpenID Connect `sid`):
            // its back-channel logout's tombstone too, one more round trip
            // for those alone; unknown means the value does not serve.
            let sid = found.user.as_ref().and_then(|u| u.session_id.clone());
            if let Some(sid) = sid {
                match self.mget(&[self.names.session_id(&sid)]).await {
                    Some(values) => {
                        found.tombstones.session_id =
                            Self::session_tombstone(values[0].as_deref()).is_some();
                    }
                    None => found.user = None,
                }
            }
            Some(found)
        }
        .boxed()
    }
}

/// The read before an upstream lookup, in one round trip (Lua, run by
/// Redis itself): KEYS = the session's tombstone, successor and shared
/// value; ARGV = whether to read the successor, whether to read the shared
/// value, the user tombstones' prefix. The user's tombstone is named by
/// the id in front of the shared value (checked against the sealed user
/// when opened). Needs a standalone Redis (the key is computed in the
/// script), as the bus's client is.
const PREFETCH_SCRIPT: &str = r"
local s = redis.call('GET', KEYS[1])
local r = false
if ARGV[1] == '1' then r = redis.call('GET', KEYS[2]) end
local c = false
local u = false
if ARGV[2] == '1' then
  c = redis.call('GET', KEYS[3])
  if c then
    local at = string.find(c, '\0', 1, true)
    if at and at > 1 then u = redis.call('GET', ARGV[3] .. string.sub(c, 1, at - 1)) end
  end
end
return {s, r, c, u}
";

async fn publish_loop(
    link: Arc<Link>,
    channel: String,
    mut queue: mpsc::UnboundedReceiver<Job>,
    resolver: WeakResolver,
) {
    while let Some(job) = queue.recv().await {
        let is_revocation = job.message.is_some();
        // A shared-cache write while Redis fails is dropped at once: the
        // queue does not grow behind a dead server.
        if !is_revocation && !link.usable() {
            continue;
        }
        let mut pipeline = redis::pipe();
        for op in &job.ops {
            match op {
                Op::Set { key, value, ttl_ms } => {
                    pipeline
                        .cmd("SET")
                        .arg(key)
                        .arg(value)
                        .arg("PX")
                        .arg(*ttl_ms)
                        .ignore();
                }
                Op::Del { key } => {
                    pipeline.cmd("DEL").arg(key).ignore();
                }
            }
        }
        if let Some(message) = &job.message {
            let Ok(payload) = serde_json::to_string(message) else {
                continue;
            };
            pipeline.cmd("PUBLISH").arg(&channel).arg(payload).ignore();
        }
        let sent = link.run::<()>(&pipeline, CONNECT_TIMEOUT).await.is_some();
        if sent {
            continue;
        }
        if !is_revocation {
            tracing::warn!(
                "authgate: Redis is unreachable; a user was not written to the shared cache"
            );
            continue;
        }
        tracing::warn!(
            "authgate: Redis is unreachable; a revocation was not shared with the other instances (they see it when their cache entry expires)"
        );
        match resolver.upgrade() {
            Some(resolver) => resolver.emit(AuthEvent::RevocationBusFailed { flushed: false }),
            None => return,
        }
    }
}

/// How long a connection, a publish or a `PING` may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Subscribes, applies the others' revocations, and on any loss (the
/// stream ends, a `PING` goes unanswered) forgets every cached user and
/// subscribes again, with backoff. Ends when the resolver is dropped.
async fn subscribe_loop(bus: RedisBus, origin: String, link: Arc<Link>, resolver: WeakResolver) {
    let mut backoff = Duration::from_millis(50);
    let mut ever_subscribed = false;
    loop {
        if resolver.upgrade().is_none() {
            return;
        }
        let subscribed = async {
            let pubsub = tokio::time::timeout(CONNECT_TIMEOUT, bus.client.get_async_pubsub())
                .await
                .ok()?
                .ok()?;
            let (mut sink, stream) = pubsub.split();
            tokio::time::timeout(CONNECT_TIMEOUT, sink.subscribe(&bus.channel))
                .await
                .ok()?
                .ok()?;
            Some((sink, stream))
        }
        .await;
        // A failed subscription says nothing of the reads (a subscriber
        // may be refused while keys are readable): they find out alone.
        let Some((mut sink, mut stream)) = subscribed else {
            tracing::warn!(retry_in = ?backoff, "authgate: cannot subscribe to the revocation bus");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(bus.reconnect_max);
            continue;
        };
        link.up();
        // Whatever was published while this instance was not listening is
        // lost: nothing cached before this point may be trusted.
        if ever_subscribed {
            match resolver.upgrade() {
                Some(resolver) => {
                    resolver.forget_all();
                    resolver.emit(AuthEvent::RevocationBusFailed { flushed: true });
                }
                None => return,
            }
        }
        ever_subscribed = true;
        backoff = Duration::from_millis(50);
        let mut ping = tokio::time::interval(bus.ping_every);
        ping.tick().await;
        loop {
            tokio::select! {
                message = stream.next() => {
                    let Some(message) = message else { break };
                    let payload: &[u8] = message.get_payload_bytes();
                    let Some(revocation) = Message::parse(payload, &origin) else {
                        continue;
                    };
                    match resolver.upgrade() {
                        Some(resolver) => resolver.apply_remote(revocation),
                        None => return,
                    }
                }
                _ = ping.tick() => {
                    // A subscribed connection answers PING with an array
                    // (RESP2) or a string (RESP3): any answer will do.
                    let answered =
                        tokio::time::timeout(bus.ping_every, sink.ping::<redis::Value>()).await;
                    if !matches!(answered, Ok(Ok(_))) {
                        break;
                    }
                }
            }
        }
        tracing::warn!(
            "authgate: the revocation bus subscription was lost; forgetting cached users and subscribing again"
        );
        if let Some(resolver) = resolver.upgrade() {
            resolver.forget_all();
            resolver.emit(AuthEvent::RevocationBusFailed { flushed: true });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_and_anything_else_is_ignored() {
        let session = RemoteRevocation::Session {
            hash: [7; 32],
            until: 2_000_000_000,
        };
        let user = RemoteRevocation::User {
            user_id: "u1".to_owned(),
            keep: Some([9; 32]),
            at_ms: 1_900_000_000_999,
            until: 2_000_000_000,
        };
        let rotated = RemoteRevocation::Rotated {
            hash: [3; 32],
            until: 2_000_000_000,
        };
        let sid = RemoteRevocation::SessionId {
            session_id: "sid-1".to_owned(),
            until: 2_000_000_000,
        };
        for revocation in [session, user, rotated, sid] {
            let wire = serde_json::to_vec(&Message::of("a", revocation.clone())).unwrap();
            assert!(!String::from_utf8_lossy(&wire).contains("token"));
            assert_eq!(Message::parse(&wire, "b"), Some(revocation));
            assert_eq!(Message::parse(&wire, "a"), None, "its own message");
        }
        for hostile in [
            &b"not json"[..],
            b"",
            br#"{"v":2,"origin":"x","kind":"session","hash":"0707070707070707070707070707070707070707070707070707070707070707","until":2000000000}"#,
            br#"{"v":1,"origin":"x","kind":"flush"}"#,
            br#"{"v":1,"origin":"x","kind":"session","hash":"07","until":2000000000}"#,
            br#"{"v":1,"origin":"x","kind":"session","hash":"0707070707070707070707070707070707070707070707070707070707070707","until":2000000000,"more":1}"#,
            br#"{"v":1,"origin":"x","kind":"user","user":"","keep":null,"at":1,"until":2}"#,
        ] {
            assert_eq!(Message::parse(hostile, "b"), None, "{}", String::from_utf8_lossy(hostile));
        }
        let long = format!(
            r#"{{"v":1,"origin":"x","kind":"user","user":"{}","keep":null,"at":1,"until":2}}"#,
            "u".repeat(MAX_MESSAGE)
        );
        assert_eq!(Message::parse(long.as_bytes(), "b"), None, "oversized");
    }
}
