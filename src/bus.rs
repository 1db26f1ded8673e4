//! The revocation bus: sign-outs reach every instance of the app, over
//! Redis (feature `redis`).
//!
//! Each instance of an app keeps its own user cache. Without a bus, a
//! session signed out on instance A keeps working on B and C until their
//! cache entries expire (and, for upstreams that cannot revoke, until the
//! token expires). With [`RedisBus`] given to
//! [`AuthConfig::with_revocation_bus`](crate::AuthConfig::with_revocation_bus),
//! every revocation the layer records — a session signed out, a user
//! signed out everywhere or of all other sessions — is published on a Redis
//! pub/sub channel, and every instance applies the others' (SECURITY.md
//! §5):
//!
//! - Sessions are named by their keyed hash, HMAC-SHA256 with the app key
//!   (the instances share it), never by a token: anyone who can read Redis
//!   (`MONITOR`, logs) learns nothing to sign in with.
//! - A lookup in flight when a revocation arrives does not cache or serve
//!   the session: the instance remembers revoked hashes until their end.
//! - Pub/sub delivers at most once (Redis docs, "Pub/Sub", delivery
//!   semantics): when the subscription is lost (a dropped connection, no
//!   answer to the periodic `PING`), the instance forgets every cached user
//!   (its tombstones stay) and subscribes again with backoff, so nothing it
//!   may have missed is served from its cache.
//! - Malformed, oversized, foreign or unknown messages are ignored: they
//!   cannot flush a cache or sign anyone out.
//! - Redis down: sign-out still clears the cookie and signs out upstream;
//!   the failed publish is logged. The other instances then see the
//!   sign-out when their cache entry expires (at most the cache's fresh TTL
//!   plus its stale window) or, for upstreams that revoke, at their next
//!   lookup.
//!
//! Message (JSON, at most [`MAX_MESSAGE`] bytes): `{"v":1,"origin":"<instance
//! id>","kind":"session","hash":"<64 hex>","until":<unix s>}` or
//! `{"v":1,"origin":…,"kind":"user","user":"<id>","keep":"<64 hex>"|null,
//! "at":<unix s>,"until":<unix s>}`.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt as _;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::error::ConfigError;
use crate::events::AuthEvent;
use crate::resolve::{Fanout, RemoteRevocation, Resolver, WeakResolver};

/// The longest message the bus reads; longer ones are ignored.
pub const MAX_MESSAGE: usize = 2048;

/// The default channel.
pub const DEFAULT_CHANNEL: &str = "authgate:revocations";

/// A revocation bus on Redis pub/sub: give it to
/// [`AuthConfig::with_revocation_bus`](crate::AuthConfig::with_revocation_bus)
/// on every instance (with the same app key).
///
/// ```no_run
/// # fn demo() -> Result<(), authgate::ConfigError> {
/// use authgate::AuthConfig;
/// use authgate::bus::RedisBus;
///
/// let bus = RedisBus::new("redis://redis.internal/")?;
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
}

impl fmt::Debug for RedisBus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The URL may carry a password.
        f.debug_struct("RedisBus")
            .field("channel", &self.channel)
            .field("ping_every", &self.ping_every)
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
        })
    }

    /// The pub/sub channel (default [`DEFAULT_CHANNEL`]): one per app, the
    /// same on every instance.
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

    /// Starts the bus for `resolver`: its publisher, and the subscriber
    /// task that applies the other instances' revocations. Needs a tokio
    /// runtime (the layer is built inside one).
    pub(crate) fn start(&self) -> (Arc<dyn Fanout>, Starter) {
        // A random id per instance, to skip its own messages.
        let origin: String = (0..16)
            .map(|_| format!("{:02x}", rand::random::<u8>()))
            .collect();
        let (outbox, queue) = mpsc::unbounded_channel();
        let publisher = Publisher {
            outbox,
            origin: origin.clone(),
        };
        let starter = Starter {
            bus: self.clone(),
            origin,
            queue,
        };
        (Arc::new(publisher), starter)
    }
}

/// What starts the bus's tasks once the resolver exists.
pub(crate) struct Starter {
    bus: RedisBus,
    origin: String,
    queue: mpsc::UnboundedReceiver<Message>,
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
            self.bus.client.clone(),
            self.bus.channel.clone(),
            self.queue,
            resolver.downgrade(),
        ));
        runtime.spawn(subscribe_loop(self.bus, self.origin, resolver.downgrade()));
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
                at,
                until,
            } => Self::User {
                v: 1,
                origin,
                user: user_id,
                keep: keep.as_ref().map(hex),
                at,
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
                    at,
                    until,
                })
            }
            _ => None,
        }
    }
}

/// The resolver's outlet: revocations go to a queue the publish task
/// drains, so a sign-out never waits for Redis.
struct Publisher {
    outbox: mpsc::UnboundedSender<Message>,
    origin: String,
}

impl Fanout for Publisher {
    fn publish(&self, revocation: RemoteRevocation) {
        if self
            .outbox
            .send(Message::of(&self.origin, revocation))
            .is_err()
        {
            tracing::warn!("authgate: the revocation bus is stopped; a revocation stays local");
        }
    }
}

async fn publish_loop(
    client: redis::Client,
    channel: String,
    mut queue: mpsc::UnboundedReceiver<Message>,
    resolver: WeakResolver,
) {
    let mut connection: Option<redis::aio::MultiplexedConnection> = None;
    while let Some(message) = queue.recv().await {
        let Ok(payload) = serde_json::to_string(&message) else {
            continue;
        };
        if connection.is_none() {
            connection =
                tokio::time::timeout(CONNECT_TIMEOUT, client.get_multiplexed_async_connection())
                    .await
                    .ok()
                    .and_then(Result::ok);
        }
        let sent = match connection.as_mut() {
            Some(conn) => {
                let mut command = redis::cmd("PUBLISH");
                command.arg(&channel).arg(&payload);
                let publish = command.query_async::<i64>(conn);
                matches!(
                    tokio::time::timeout(CONNECT_TIMEOUT, publish).await,
                    Ok(Ok(_))
                )
            }
            None => false,
        };
        if !sent {
            connection = None;
            tracing::warn!(
                "authgate: Redis is unreachable; a revocation was not shared with the other instances (they see it when their cache entry expires)"
            );
            match resolver.upgrade() {
                Some(resolver) => resolver.emit(AuthEvent::RevocationBusFailed { flushed: false }),
                None => return,
            }
        }
    }
}

/// How long a connection, a publish or a `PING` may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Subscribes, applies the others' revocations, and on any loss (the
/// stream ends, a `PING` goes unanswered) forgets every cached user and
/// subscribes again, with backoff. Ends when the resolver is dropped.
async fn subscribe_loop(bus: RedisBus, origin: String, resolver: WeakResolver) {
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
        let Some((mut sink, mut stream)) = subscribed else {
            tracing::warn!(retry_in = ?backoff, "authgate: cannot subscribe to the revocation bus");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(bus.reconnect_max);
            continue;
        };
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
            at: 1_900_000_000,
            until: 2_000_000_000,
        };
        for revocation in [session, user] {
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
