//! Issue 15: sign-out reaches every instance, over a real Redis.
//!
//! Each test starts its own `redis-server` on 127.0.0.1 with a free port
//! and three app instances in this process, each with its own layer and
//! cache, sharing one upstream and one Redis. Without `redis-server`
//! (Debian: `apt-get install redis-server`) the tests say so and pass,
//! unless `AUTHGATE_REQUIRE_REDIS=1` (CI) makes that a failure.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Stdio;
use std::time::{Duration, Instant};

use authgate::bus::RedisBus;
use authgate::events::{AuthEvent, AuthEvents};
use authgate::test::{Fault, MemoryUpstream, TestKit, TestUser};
use authgate::upstream::{
    CallbackOutcome, CallbackParams, Capabilities, FlowRecord, Lookup, Session, SignInRedirect,
    SignInStart, SignOutOutcome, Upstream,
};
use authgate::{AuthConfig, AuthLayer, CurrentUser, Error, SignOutScope};
use axum::Router;
use axum::body::Body;
use axum::routing::get;
use futures_util::future::BoxFuture;
use http::StatusCode;
use tokio::process::{Child, Command};
use tower::ServiceExt as _;

const ORIGIN: &str = "https://app.test";
const CHANNEL: &str = "authgate:test-revocations";

/// A `redis-server` of this test; stopped when dropped.
struct RedisServer {
    port: u16,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts one, or `None` (with the reason printed) when the machine has
    /// no `redis-server` and CI does not require it.
    async fn start() -> Option<Self> {
        let found = std::env::var_os("PATH")
            .into_iter()
            .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
            .any(|dir| dir.join("redis-server").is_file());
        if !found {
            let reason = "redis-server is not installed (apt-get install redis-server)";
            if std::env::var("AUTHGATE_REQUIRE_REDIS").as_deref() == Ok("1") {
                panic!("{reason}; AUTHGATE_REQUIRE_REDIS=1");
            }
            eprintln!("skipped: {reason}");
            return None;
        }
        // A port the system says is free (a race with another process is
        // possible; the start below would then fail loudly).
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut server = Self { port, child: None };
        server.run().await;
        Some(server)
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    async fn run(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start redis-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if self.query::<String>(&["PING"]).await.is_some() {
                return;
            }
            assert!(Instant::now() < deadline, "redis-server did not answer");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
            let _ = child.wait().await;
        }
    }

    /// One command on a fresh connection; `None` when Redis does not answer.
    async fn query<T: redis::FromRedisValue>(&self, args: &[&str]) -> Option<T> {
        let client = redis::Client::open(self.url()).ok()?;
        let mut conn = tokio::time::timeout(
            Duration::from_secs(1),
            client.get_multiplexed_async_connection(),
        )
        .await
        .ok()?
        .ok()?;
        let mut command = redis::cmd(args[0]);
        for arg in &args[1..] {
            command.arg(*arg);
        }
        command.query_async(&mut conn).await.ok()
    }

    /// Waits until `n` instances are subscribed to the channel.
    async fn wait_subscribers(&self, n: i64) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let counts: Option<Vec<redis::Value>> =
                self.query(&["PUBSUB", "NUMSUB", CHANNEL]).await;
            let subscribed = counts
                .and_then(|v| v.get(1).cloned())
                .and_then(|v| redis::from_redis_value::<i64>(v).ok())
                .unwrap_or(0);
            if subscribed >= n {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{subscribed} of {n} instances subscribed"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// The kit's upstream, told nothing of sign-outs: every session it minted
/// stays valid there, so only the bus can sign a session out on B and C.
#[derive(Clone)]
struct ToldNothing(MemoryUpstream);

impl Upstream for ToldNothing {
    fn capabilities(&self) -> Capabilities {
        self.0.capabilities()
    }
    fn lookup<'a>(&'a self, session: &'a Session) -> BoxFuture<'a, Result<Lookup, Error>> {
        self.0.lookup(session)
    }
    fn start_sign_in<'a>(
        &'a self,
        start: SignInStart<'a>,
    ) -> BoxFuture<'a, Result<SignInRedirect, Error>> {
        self.0.start_sign_in(start)
    }
    fn complete_callback<'a>(
        &'a self,
        params: &'a CallbackParams,
        flow: Option<&'a FlowRecord>,
    ) -> BoxFuture<'a, Result<CallbackOutcome, Error>> {
        self.0.complete_callback(params, flow)
    }
    fn sign_out<'a>(
        &'a self,
        _session: &'a Session,
        _scope: SignOutScope,
        _after: &'a url::Url,
    ) -> BoxFuture<'a, Result<SignOutOutcome, Error>> {
        Box::pin(async { Ok(SignOutOutcome::Done) })
    }
}

/// One app instance: its own layer (and cache) on the shared upstream
/// and Redis, and the auth events it emitted.
struct Instance {
    app: authgate::AuthService<Router>,
    layer: AuthLayer,
    events: tokio::sync::mpsc::Receiver<AuthEvent>,
}

fn bus(redis: &RedisServer) -> RedisBus {
    RedisBus::new(&redis.url())
        .unwrap()
        .with_channel(CHANNEL)
        .with_ping_interval(Duration::from_millis(200))
}

fn config(bus: RedisBus, events: AuthEvents) -> AuthConfig {
    AuthConfig::new(ORIGIN)
        .unwrap()
        .with_key([5u8; 64])
        .unwrap()
        .with_events(events)
        .with_revocation_bus(bus)
}

fn instance(redis: &RedisServer, upstream: impl Upstream) -> Instance {
    instance_with(bus(redis), upstream, |config| config)
}

/// An instance whose cache shares users through Redis.
fn sharing(redis: &RedisServer, upstream: impl Upstream) -> Instance {
    instance_with(bus(redis).with_shared_cache(true), upstream, |c| c)
}

fn instance_with(
    bus: RedisBus,
    upstream: impl Upstream,
    tune: impl FnOnce(AuthConfig) -> AuthConfig,
) -> Instance {
    let (events, received) = AuthEvents::channel(256);
    let layer = AuthLayer::new(tune(config(bus, events)), upstream);
    let router = Router::new().route(
        "/account",
        get(|user: CurrentUser| async move { user.id.clone() }),
    );
    Instance {
        app: layer.layer(router),
        layer,
        events: received,
    }
}

impl Instance {
    async fn get(&self, kit: &TestKit, cookie: &str) -> StatusCode {
        self.fetch(kit, cookie).await.status()
    }

    async fn fetch(&self, kit: &TestKit, cookie: &str) -> http::Response<Body> {
        let request = kit.with_session_cookie(cookie).get("/account");
        self.app.clone().oneshot(request).await.unwrap()
    }

    fn lookups(&self) -> u64 {
        self.layer.resolver().upstream_lookups()
    }

    async fn sign_out(&self, kit: &TestKit, cookie: &str, scope: &str) -> http::Response<Body> {
        let mut request = kit.with_session_cookie(cookie).request(
            http::Method::POST,
            &format!("/auth/signout?scope={scope}"),
            Body::empty(),
        );
        request
            .headers_mut()
            .insert("origin", http::HeaderValue::from_static(ORIGIN));
        self.app.clone().oneshot(request).await.unwrap()
    }

    /// Whether the instance emitted `RevocationBusFailed` with `flushed`
    /// within `within`.
    async fn saw_bus_failure(&mut self, flushed: bool, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        while let Ok(Some(event)) = tokio::time::timeout_at(deadline, self.events.recv()).await {
            if matches!(event, AuthEvent::RevocationBusFailed { flushed: f } if f == flushed) {
                return true;
            }
        }
        false
    }
}

/// Polls `instance` until it refuses `cookie`; the time it took.
async fn refused_after(
    instance: &Instance,
    kit: &TestKit,
    cookie: &str,
    start: Instant,
) -> Duration {
    loop {
        if instance.get(kit, cookie).await != StatusCode::OK {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "still served 5 s after the sign-out"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

impl RedisServer {
    /// The bus's keys of one kind (`s`, `u`, `r`, `c`).
    async fn keys(&self, kind: &str) -> Vec<String> {
        self.query(&["KEYS", &format!("{CHANNEL}:{kind}:*")])
            .await
            .unwrap_or_default()
    }

    /// Waits until a key of `kind` exists; its names.
    async fn wait_keys(&self, kind: &str, n: usize) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let keys = self.keys(kind).await;
            if keys.len() >= n {
                return keys;
            }
            assert!(Instant::now() < deadline, "{} {kind} keys", keys.len());
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

fn kit_and_user(upstream: &MemoryUpstream) -> (TestKit, TestUser) {
    let config = AuthConfig::new(ORIGIN)
        .unwrap()
        .with_key([5u8; 64])
        .unwrap();
    let kit = TestKit::with_upstream(config, upstream.clone());
    let user = kit.user("ada@example.test");
    (kit, user)
}

/// SECURITY.md §5, issue 15 point 5: a sign-out on A reaches B and C
/// within 100 ms although the upstream is told nothing (it still calls the
/// session valid). Five rounds; the figures are printed for the record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sign_out_on_one_instance_reaches_the_others_within_100_ms() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let upstream = MemoryUpstream::default();
    let (kit, user) = kit_and_user(&upstream);
    let told_nothing = ToldNothing(upstream.clone());
    let [a, b, c] = [0, 1, 2].map(|_| instance(&redis, told_nothing.clone()));
    redis.wait_subscribers(3).await;

    let mut delays = Vec::new();
    for _ in 0..5 {
        let cookie = kit.session_cookie(&user);
        for instance in [&a, &b, &c] {
            assert_eq!(instance.get(&kit, &cookie).await, StatusCode::OK);
        }
        let start = Instant::now();
        let out = a.sign_out(&kit, &cookie, "this").await;
        assert_eq!(out.status(), StatusCode::SEE_OTHER);
        let (on_b, on_c) = tokio::join!(
            refused_after(&b, &kit, &cookie, start),
            refused_after(&c, &kit, &cookie, start)
        );
        delays.push(on_b.max(on_c));
        // The upstream still says valid: only the bus signed it out.
        let session = Session::new(authgate::SessionToken::new(cookie.clone()).unwrap());
        assert!(matches!(
            told_nothing.lookup(&session).await,
            Ok(Lookup::Valid(_))
        ));
    }
    delays.sort();
    eprintln!(
        "revocation propagation over Redis, A → B and C: median {:?}, max {:?} ({} rounds)",
        delays[delays.len() / 2],
        delays[delays.len() - 1],
        delays.len()
    );
    assert!(
        delays[delays.len() - 1] < Duration::from_millis(100),
        "{delays:?}"
    );
}

/// A user-wide sign-out on A while B's lookup of that user is in flight:
/// the answer B receives afterwards does not cache or serve the session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_wide_sign_out_beats_a_lookup_in_flight_elsewhere() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let upstream = MemoryUpstream::default();
    let (kit, user) = kit_and_user(&upstream);
    let a = instance(&redis, upstream.clone());
    let b = instance(&redis, upstream.clone());
    redis.wait_subscribers(2).await;
    let on_a = kit.session_cookie(&user);
    let on_b = kit.session_cookie(&user);
    assert_eq!(a.get(&kit, &on_a).await, StatusCode::OK);

    // B's lookup answers "valid" after 400 ms, whatever happens meanwhile.
    kit.fail(&user, Fault::Delay(Duration::from_millis(400)));
    let b_request = tokio::spawn({
        let app = b.app.clone();
        let request = kit.with_session_cookie(&on_b).get("/account");
        async move { app.oneshot(request).await.unwrap().status() }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let out = a.sign_out(&kit, &on_a, "all").await;
    assert_eq!(out.status(), StatusCode::SEE_OTHER);
    kit.heal(&user);
    assert_ne!(
        b_request.await.unwrap(),
        StatusCode::OK,
        "B served a signed-out user"
    );
    assert_ne!(b.get(&kit, &on_b).await, StatusCode::OK);
}

/// Pub/sub is at most once: B's subscription is killed while A signs out,
/// so B never gets the message; B notices, forgets its cached users and
/// asks the upstream again — it does not serve the signed-out session
/// from its cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_subscription_forgets_the_cache_instead_of_serving_from_it() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let upstream = MemoryUpstream::default();
    let (kit, user) = kit_and_user(&upstream);
    let a = instance(&redis, upstream.clone());
    let mut b = instance(&redis, upstream.clone());
    redis.wait_subscribers(2).await;
    let cookie = kit.session_cookie(&user);
    assert_eq!(a.get(&kit, &cookie).await, StatusCode::OK);
    assert_eq!(b.get(&kit, &cookie).await, StatusCode::OK);
    assert_eq!(b.layer.resolver().cached_users().0, 1);

    // Every subscriber connection is cut; A publishes into the gap.
    let killed: Option<i64> = redis.query(&["CLIENT", "KILL", "TYPE", "pubsub"]).await;
    assert!(killed.unwrap_or(0) >= 2, "{killed:?}");
    let out = a.sign_out(&kit, &cookie, "this").await;
    assert_eq!(out.status(), StatusCode::SEE_OTHER);

    assert!(
        b.saw_bus_failure(true, Duration::from_secs(5)).await,
        "B did not notice the lost subscription"
    );
    assert_eq!(b.layer.resolver().cached_users().0, 0, "B forgot its cache");
    assert_ne!(b.get(&kit, &cookie).await, StatusCode::OK);
    redis.wait_subscribers(2).await;
}

/// Redis stops mid-test: a sign-out still clears the cookie and reaches
/// the upstream, the failure is an event; when Redis is back the instances
/// subscribe again and sign-outs travel again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_down_sign_out_still_works_and_the_bus_comes_back() {
    let Some(mut redis) = RedisServer::start().await else {
        return;
    };
    let upstream = MemoryUpstream::default();
    let (kit, user) = kit_and_user(&upstream);
    let mut a = instance(&redis, upstream.clone());
    let mut b = instance(&redis, ToldNothing(upstream.clone()));
    redis.wait_subscribers(2).await;

    redis.stop().await;
    let cookie = kit.session_cookie(&user);
    assert_eq!(a.get(&kit, &cookie).await, StatusCode::OK);
    let out = a.sign_out(&kit, &cookie, "this").await;
    assert_eq!(out.status(), StatusCode::SEE_OTHER);
    assert_eq!(
        kit.session_change(&out),
        authgate::test::SessionChange::Cleared
    );
    let session = Session::new(authgate::SessionToken::new(cookie.clone()).unwrap());
    assert!(
        matches!(upstream.lookup(&session).await, Ok(Lookup::Invalid)),
        "signed out upstream"
    );
    assert!(
        a.saw_bus_failure(false, Duration::from_secs(5)).await,
        "A reported the failed publish"
    );
    assert!(
        b.saw_bus_failure(true, Duration::from_secs(5)).await,
        "B noticed the lost subscription"
    );

    redis.run().await;
    redis.wait_subscribers(2).await;
    let cookie = kit.session_cookie(&user);
    assert_eq!(b.get(&kit, &cookie).await, StatusCode::OK);
    let start = Instant::now();
    let _ = a.sign_out(&kit, &cookie, "this").await;
    let delay = refused_after(&b, &kit, &cookie, start).await;
    assert!(delay < Duration::from_millis(100), "{delay:?}");
}

/// Hostile or foreign messages on the channel change nothing: no flush, no
/// sign-out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_messages_are_ignored() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let upstream = MemoryUpstream::default();
    let (kit, user) = kit_and_user(&upstream);
    let b = instance(&redis, ToldNothing(upstream.clone()));
    redis.wait_subscribers(1).await;
    let cookie = kit.session_cookie(&user);
    assert_eq!(b.get(&kit, &cookie).await, StatusCode::OK);
    let lookups = b.layer.resolver().upstream_lookups();

    let oversized = format!(
        r#"{{"v":1,"origin":"x","kind":"user","user":"{}","keep":null,"at":0,"until":99999999999}}"#,
        "u".repeat(4000)
    );
    let user_id = user.user.id.clone();
    let hostile = [
        "not json".to_owned(),
        String::new(),
        oversized,
        // Another version, an unknown kind, an extra field, a bad hash.
        format!(
            r#"{{"v":2,"origin":"x","kind":"user","user":"{user_id}","keep":null,"at":0,"until":99999999999}}"#
        ),
        r#"{"v":1,"origin":"x","kind":"flush"}"#.to_owned(),
        format!(
            r#"{{"v":1,"origin":"x","kind":"user","user":"{user_id}","keep":null,"at":0,"until":99999999999,"all":true}}"#
        ),
        r#"{"v":1,"origin":"x","kind":"session","hash":"zz","until":99999999999}"#.to_owned(),
        // A user-wide revocation that ended long ago.
        format!(
            r#"{{"v":1,"origin":"x","kind":"user","user":"{user_id}","keep":null,"at":0,"until":1}}"#
        ),
    ];
    for message in &hostile {
        let _: Option<i64> = redis.query(&["PUBLISH", CHANNEL, message]).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(b.get(&kit, &cookie).await, StatusCode::OK);
    assert_eq!(
        b.layer.resolver().cached_users().0,
        1,
        "nothing was flushed"
    );
    assert_eq!(
        b.layer.resolver().upstream_lookups(),
        lookups,
        "served from the cache"
    );
}

/// Issue 15 point 1: a sign-out is also a tombstone key in Redis, named by
/// the session's keyed hash (never the token) and living as long as the
/// revocation's horizon. An instance that missed the message (here B
/// joins after it, as after a lost subscription) and holds the session in
/// its cache does not serve it stale once the upstream is down: it reads
/// the tombstone first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_user_is_not_served_when_redis_holds_its_tombstone() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let upstream = MemoryUpstream::default();
    let (kit, user) = kit_and_user(&upstream);
    let told_nothing = ToldNothing(upstream.clone());
    let a = instance(&redis, told_nothing.clone());
    redis.wait_subscribers(1).await;
    let cookie = kit.session_cookie(&user);
    let kept = kit.session_cookie(&user);
    assert_eq!(a.get(&kit, &cookie).await, StatusCode::OK);
    let out = a.sign_out(&kit, &cookie, "this").await;
    assert_eq!(out.status(), StatusCode::SEE_OTHER);

    let tombstones = redis.wait_keys("s", 1).await;
    assert_eq!(tombstones.len(), 1);
    assert!(!tombstones[0].contains(&cookie), "no token in a key");
    let ttl: i64 = redis.query(&["TTL", &tombstones[0]]).await.unwrap();
    // Revocation::Upstream: the cache's fresh TTL plus its stale window.
    assert!((300..=360).contains(&ttl), "{ttl}");

    // B missed the message; the upstream (told nothing) calls it valid.
    let b = instance_with(bus(&redis), told_nothing.clone(), |config| {
        config.with_cache_ttl(Duration::from_millis(50))
    });
    redis.wait_subscribers(2).await;
    assert_eq!(b.get(&kit, &cookie).await, StatusCode::OK);
    assert_eq!(b.get(&kit, &kept).await, StatusCode::OK);

    // The upstream goes down; both entries turn stale.
    kit.fail(&user, Fault::Unavailable);
    tokio::time::sleep(Duration::from_millis(80)).await;
    let stale = b.fetch(&kit, &cookie).await;
    assert_ne!(stale.status(), StatusCode::OK, "served a signed-out user");
    assert_eq!(
        kit.session_change(&stale),
        authgate::test::SessionChange::Cleared
    );
    assert_eq!(
        b.get(&kit, &kept).await,
        StatusCode::OK,
        "another session of the user is still served stale"
    );
}

/// Issue 15 point 1, user-wide: "sign out everywhere" is a tombstone key
/// of the user. B's subscriber is killed and kept from subscribing again
/// (a Redis ACL), so A's message never reaches it; B caches the session
/// again after its flush (the told-nothing upstream says valid, as an
/// answer that predates a sign-out would). Once the upstream is down, B
/// does not serve it stale: it reads the user's tombstone first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_wide_tombstone_stops_stale_serving_on_an_instance_that_missed_it() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let _: Option<String> = redis
        .query(&[
            "ACL", "SETUSER", "bee", "on", ">secret", "~*", "&*", "+@all",
        ])
        .await;
    let upstream = MemoryUpstream::default();
    let (kit, user) = kit_and_user(&upstream);
    let told_nothing = ToldNothing(upstream.clone());
    let a = instance(&redis, told_nothing.clone());
    let bee = RedisBus::new(&format!("redis://bee:secret@127.0.0.1:{}/", redis.port))
        .unwrap()
        .with_channel(CHANNEL)
        .with_ping_interval(Duration::from_millis(200));
    let mut b = instance_with(bee, told_nothing.clone(), |config| {
        config.with_cache_ttl(Duration::from_millis(50))
    });
    redis.wait_subscribers(2).await;
    let other = kit.session_cookie(&user);
    assert_eq!(b.get(&kit, &other).await, StatusCode::OK);

    // B may no longer subscribe: Redis drops its subscriber at once.
    let _: Option<String> = redis
        .query(&["ACL", "SETUSER", "bee", "resetchannels"])
        .await;
    assert!(b.saw_bus_failure(true, Duration::from_secs(5)).await);
    assert_eq!(b.get(&kit, &other).await, StatusCode::OK, "cached again");

    let cookie = kit.session_cookie(&user);
    assert_eq!(a.get(&kit, &cookie).await, StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(5)).await;
    let out = a.sign_out(&kit, &cookie, "all").await;
    assert_eq!(out.status(), StatusCode::SEE_OTHER);
    let users = redis.wait_keys("u", 1).await;
    assert_eq!(users, vec![format!("{CHANNEL}:u:{}", user.user.id)]);

    kit.fail(&user, Fault::Unavailable);
    tokio::time::sleep(Duration::from_millis(80)).await;
    assert_ne!(
        b.get(&kit, &other).await,
        StatusCode::OK,
        "served a user signed out everywhere"
    );
}

/// Issue 15 point 1 and SEAM.md §4.3: A rotates a session (a refresh);
/// B, given the old cookie inside the successor window, serves the
/// successor's user and sets the same new cookie instead of refreshing
/// again with the spent session. The upstream rotated once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_on_one_instance_is_taken_over_by_the_others() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let upstream = MemoryUpstream::default().with_rotation(Duration::from_secs(60));
    let (kit, user) = kit_and_user(&upstream);
    let a = instance(&redis, upstream.clone());
    let b = instance(&redis, upstream.clone());
    redis.wait_subscribers(2).await;
    let old = kit.session_cookie(&user);

    let on_a = a.fetch(&kit, &old).await;
    assert_eq!(on_a.status(), StatusCode::OK);
    let authgate::test::SessionChange::Set(new) = kit.session_change(&on_a) else {
        panic!("A did not rotate");
    };
    assert_eq!(upstream.rotations(), 1);
    let successors = redis.wait_keys("r", 1).await;
    let sealed: String = redis.query(&["GET", &successors[0]]).await.unwrap();
    assert!(!sealed.contains(&new) && !successors[0].contains(&old));
    tokio::time::sleep(Duration::from_millis(20)).await;

    let on_b = b.fetch(&kit, &old).await;
    assert_eq!(on_b.status(), StatusCode::OK);
    assert_eq!(
        kit.session_change(&on_b),
        authgate::test::SessionChange::Set(new.clone()),
        "B sets A's successor"
    );
    assert_eq!(upstream.rotations(), 1, "no second refresh");
    assert_eq!(b.lookups(), 0);
    // The new cookie is cached on B too.
    assert_eq!(b.get(&kit, &new).await, StatusCode::OK);
    assert_eq!(b.lookups(), 0);
}

/// The same with sealed sessions that carry a refresh token: B missed the
/// message (it joins after the rotation) and still finds the successor,
/// in Redis, before it would refresh.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missed_rotation_message_is_found_in_redis() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let upstream = MemoryUpstream::default()
        .with_sealed_sessions()
        .with_rotation(Duration::from_secs(60));
    let (kit, user) = kit_and_user(&upstream);
    let a = instance(&redis, upstream.clone());
    redis.wait_subscribers(1).await;
    let old = kit.session_cookie(&user);
    let on_a = a.fetch(&kit, &old).await;
    let authgate::test::SessionChange::Set(new) = kit.session_change(&on_a) else {
        panic!("A did not rotate");
    };
    redis.wait_keys("r", 1).await;

    let b = instance(&redis, upstream.clone());
    let on_b = b.fetch(&kit, &old).await;
    assert_eq!(on_b.status(), StatusCode::OK);
    assert_eq!(
        kit.session_change(&on_b),
        authgate::test::SessionChange::Set(new)
    );
    assert_eq!(upstream.rotations(), 1);
}

/// Issue 15 point 3: with the shared cache on, a cold instance serves a
/// user another instance resolved without asking the upstream; the value
/// in Redis is sealed and named by the keyed hash.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cold_instance_serves_a_shared_user_without_the_upstream() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let upstream = MemoryUpstream::default();
    let (kit, user) = kit_and_user(&upstream);
    let a = sharing(&redis, upstream.clone());
    let b = sharing(&redis, upstream.clone());
    let cookie = kit.session_cookie(&user);
    assert_eq!(a.get(&kit, &cookie).await, StatusCode::OK);
    let keys = redis.wait_keys("c", 1).await;
    let value: String = redis.query(&["GET", &keys[0]]).await.unwrap();
    assert!(!keys[0].contains(&cookie) && !value.contains(&cookie));
    assert!(!value.contains("ada@example.test"), "sealed");
    let ttl: i64 = redis.query(&["PTTL", &keys[0]]).await.unwrap();
    assert!((50_000..=60_000).contains(&ttl), "{ttl} ms: the fresh TTL");

    assert_eq!(b.get(&kit, &cookie).await, StatusCode::OK);
    assert_eq!(b.lookups(), 0, "served from the shared cache");
    assert_eq!(b.layer.resolver().cached_users().0, 1);
}

/// After a sign-out on A, a cold instance does not get the user from
/// Redis: the sign-out deleted the value, and a user-wide sign-out (which
/// cannot find the user's values) is a tombstone the values are checked
/// against.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_out_session_is_not_served_from_the_shared_cache() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let upstream = MemoryUpstream::default();
    let (kit, user) = kit_and_user(&upstream);
    let a = sharing(&redis, upstream.clone());
    let one = kit.session_cookie(&user);
    let two = kit.session_cookie(&user);
    assert_eq!(a.get(&kit, &one).await, StatusCode::OK);
    assert_eq!(a.get(&kit, &two).await, StatusCode::OK);
    redis.wait_keys("c", 2).await;

    let _ = a.sign_out(&kit, &one, "this").await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while redis.keys("c").await.len() != 1 {
        assert!(Instant::now() < deadline, "the value was not deleted");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let b = sharing(&redis, ToldNothing(upstream.clone()));
    // Told nothing, the upstream would still say valid: B refuses because
    // of the tombstone it read with the (absent) value.
    assert_ne!(b.get(&kit, &one).await, StatusCode::OK);
    assert_eq!(b.lookups(), 0, "refused on the tombstone");

    // "Sign out everywhere" from a third session: two's value stays in
    // Redis, but the user's tombstone keeps it from serving.
    let three = kit.session_cookie(&user);
    assert_eq!(a.get(&kit, &three).await, StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(5)).await;
    let _ = a.sign_out(&kit, &three, "all").await;
    redis.wait_keys("u", 1).await;
    assert!(
        !redis.keys("c").await.is_empty(),
        "two's value is still there"
    );
    let c = sharing(&redis, upstream.clone());
    assert_ne!(c.get(&kit, &two).await, StatusCode::OK);
    assert_eq!(c.lookups(), 1, "asked the upstream, which said invalid");
}

/// A tampered value, or a value moved from another session's key, is
/// ignored: the instance asks the upstream and flushes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_or_moved_shared_values_are_ignored() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let upstream = MemoryUpstream::default();
    let (kit, user) = kit_and_user(&upstream);
    let eve = kit.user("eve@example.test");
    let a = sharing(&redis, upstream.clone());
    let cookie = kit.session_cookie(&user);
    let eves = kit.session_cookie(&eve);
    assert_eq!(a.get(&kit, &cookie).await, StatusCode::OK);
    let ada_key = redis.wait_keys("c", 1).await.remove(0);
    assert_eq!(a.get(&kit, &eves).await, StatusCode::OK);
    let keys = redis.wait_keys("c", 2).await;
    let eve_key = keys.into_iter().find(|k| *k != ada_key).unwrap();

    let b = sharing(&redis, upstream.clone());
    let other = kit.session_cookie(&user);
    assert_eq!(b.get(&kit, &other).await, StatusCode::OK);
    let lookups = b.lookups();

    // Eve's sealed value moved under Ada's key: it must not make Ada's
    // cookie resolve to Eve.
    let eve_value: String = redis.query(&["GET", &eve_key]).await.unwrap();
    let _: Option<String> = redis.query(&["SET", &ada_key, &eve_value]).await;
    let response = b.fetch(&kit, &cookie).await;
    assert_eq!(response.status(), StatusCode::OK);
    let body = http_body_util::BodyExt::collect(response.into_body())
        .await
        .unwrap()
        .to_bytes();
    assert_eq!(&body[..], user.user.id.as_bytes(), "Ada, not Eve");
    assert_eq!(b.lookups(), lookups + 1, "asked the upstream");

    // A flipped byte, then plain garbage, under Eve's key: each read by a
    // cold instance that has another user cached.
    let tampered_source = eve_value.clone();
    let mut tampered = eve_value.into_bytes();
    let at = tampered.len() - 10;
    tampered[at] = if tampered[at] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();
    // Eve's sealed value under Eve's key, but named as another user's (so
    // the read would skip Eve's tombstone): refused too.
    let renamed = format!(
        "someone-else\0{}",
        tampered_source.split('\0').nth(1).unwrap()
    );
    for value in [tampered.as_str(), renamed.as_str(), "garbage", ""] {
        let d = sharing(&redis, upstream.clone());
        assert_eq!(
            d.get(&kit, &kit.session_cookie(&user)).await,
            StatusCode::OK
        );
        let _: Option<String> = redis.query(&["SET", &eve_key, value]).await;
        assert_eq!(d.get(&kit, &eves).await, StatusCode::OK);
        assert_eq!(d.lookups(), 2, "{value:?}: asked the upstream");
        assert_eq!(d.layer.resolver().cached_users().0, 2, "nothing flushed");
    }
}

/// Redis down: a cold instance with the shared cache on asks the upstream
/// (no long wait), and writes are dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_down_the_shared_cache_falls_back_to_the_upstream() {
    let Some(mut redis) = RedisServer::start().await else {
        return;
    };
    let upstream = MemoryUpstream::default();
    let (kit, user) = kit_and_user(&upstream);
    let mut a = sharing(&redis, upstream.clone());
    redis.wait_subscribers(1).await;
    redis.stop().await;
    assert!(a.saw_bus_failure(true, Duration::from_secs(5)).await);
    let cookie = kit.session_cookie(&user);
    let start = Instant::now();
    assert_eq!(a.get(&kit, &cookie).await, StatusCode::OK);
    assert!(
        start.elapsed() < Duration::from_millis(500),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(a.lookups(), 1);
    let b = sharing(&redis, upstream.clone());
    let start = Instant::now();
    assert_eq!(b.get(&kit, &cookie).await, StatusCode::OK);
    assert!(
        start.elapsed() < Duration::from_millis(500),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(b.lookups(), 1);
    let out = a.sign_out(&kit, &cookie, "this").await;
    assert_eq!(
        kit.session_change(&out),
        authgate::test::SessionChange::Cleared
    );
    assert!(a.saw_bus_failure(false, Duration::from_secs(5)).await);
}

/// OpenID Connect back-channel logout (`sid`) on A reaches B: the
/// provider session's cookies cached on B are refused within 100 ms, the
/// user's other sessions stay, and the `sid` is a tombstone key too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_back_channel_logout_by_sid_on_one_instance_reaches_the_others() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let upstream = MemoryUpstream::default().with_back_channel_logout();
    let (kit, user) = kit_and_user(&upstream);
    let a = instance(&redis, upstream.clone());
    let b = instance(&redis, upstream.clone());
    redis.wait_subscribers(2).await;
    let laptop = kit.session_cookie(&user);
    let phone = kit.session_cookie(&user);
    for cookie in [&laptop, &phone] {
        assert_eq!(a.get(&kit, cookie).await, StatusCode::OK);
        assert_eq!(b.get(&kit, cookie).await, StatusCode::OK);
    }

    let token = kit.logout_token(&user, Some(&laptop));
    let start = Instant::now();
    let request = http::Request::post("/auth/backchannel-logout")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(Body::from(format!("logout_token={token}")))
        .unwrap();
    let response = a.app.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let delay = refused_after(&b, &kit, &laptop, start).await;
    assert!(delay < Duration::from_millis(100), "{delay:?}");
    assert_eq!(
        b.get(&kit, &phone).await,
        StatusCode::OK,
        "the other session"
    );
    let keys = redis.wait_keys("i", 1).await;
    assert_eq!(keys.len(), 1);
    let ttl: i64 = redis.query(&["TTL", &keys[0]]).await.unwrap();
    assert!(ttl > 300, "{ttl}");
}

/// For an upstream that cannot revoke (`Revocation::UntilExpiry`: it
/// still calls a signed-out session valid), an instance that missed the
/// sign-out's message (B joins after it) checks the tombstone before it
/// trusts the upstream's "valid", and refuses the session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_cannot_revoke_is_not_trusted_over_a_tombstone() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let upstream = MemoryUpstream::default()
        .with_revocation_until_expiry()
        .with_session_lifetime(Duration::from_secs(3600));
    let (kit, user) = kit_and_user(&upstream);
    let told_nothing = ToldNothing(upstream.clone());
    let a = instance(&redis, told_nothing.clone());
    redis.wait_subscribers(1).await;
    let cookie = kit.session_cookie(&user);
    let other = kit.session_cookie(&user);
    assert_eq!(a.get(&kit, &cookie).await, StatusCode::OK);
    let _ = a.sign_out(&kit, &cookie, "this").await;
    let keys = redis.wait_keys("s", 1).await;
    let ttl: i64 = redis.query(&["TTL", &keys[0]]).await.unwrap();
    assert!(
        (3500..=3602).contains(&ttl),
        "{ttl}: until the session ends"
    );

    let b = instance(&redis, told_nothing.clone());
    let refused = b.fetch(&kit, &cookie).await;
    assert_ne!(refused.status(), StatusCode::OK, "trusted the upstream");
    assert_eq!(
        kit.session_change(&refused),
        authgate::test::SessionChange::Cleared
    );
    assert_eq!(b.get(&kit, &other).await, StatusCode::OK);
}

/// Redis and the upstream both down: the tombstone check cannot answer,
/// so a stale user is served within its stale window as without a bus
/// (the documented fallback), without waiting long for Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_down_too_a_stale_user_is_served_as_without_the_bus() {
    let Some(mut redis) = RedisServer::start().await else {
        return;
    };
    let upstream = MemoryUpstream::default();
    let (kit, user) = kit_and_user(&upstream);
    let mut b = instance_with(bus(&redis), upstream.clone(), |config| {
        config.with_cache_ttl(Duration::from_millis(50))
    });
    redis.wait_subscribers(1).await;
    let cookie = kit.session_cookie(&user);
    assert_eq!(b.get(&kit, &cookie).await, StatusCode::OK);
    redis.stop().await;
    assert!(b.saw_bus_failure(true, Duration::from_secs(5)).await);
    // The flush forgot the user: cache it again, then let it turn stale.
    assert_eq!(b.get(&kit, &cookie).await, StatusCode::OK);
    kit.fail(&user, Fault::Unavailable);
    tokio::time::sleep(Duration::from_millis(80)).await;
    let start = Instant::now();
    assert_eq!(b.get(&kit, &cookie).await, StatusCode::OK, "served stale");
    assert!(
        start.elapsed() < Duration::from_millis(500),
        "{:?}",
        start.elapsed()
    );
}
