//! The shared cache's worth (issue 15 point 3): a cold instance's cache
//! miss served from Redis (the shared cache, another instance resolved the
//! session) against the same miss served by the upstream, over real HTTP
//! on 127.0.0.1 (a small upstream of this file: `GET /me` with a bearer
//! token answers a user, as a hosted auth service's user endpoint does).
//! Both are measured in the same run, on the same machine, and their ratio
//! printed.
//!
//! Run with `cargo bench --features redis --bench shared_cache`. It starts
//! its own `redis-server` on a free port; without one it prints why and
//! measures nothing.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use authgate::bus::RedisBus;
use authgate::upstream::{
    BoxFuture, CallbackOutcome, CallbackParams, Capabilities, FlowRecord, Lookup, Session,
    SignInRedirect, SignInStart, SignOutOutcome, SignOutScope, Upstream, User, Valid,
};
use authgate::{AuthConfig, AuthLayer, AuthService, CurrentUser, Error};
use axum::Router;
use axum::body::Body;
use axum::routing::get;
use criterion::{Criterion, criterion_group};
use http::Request;
use tower::ServiceExt as _;

const ORIGIN: &str = "https://app.test";
const CHANNEL: &str = "authgate:bench";

/// The upstream: `GET {base}/me` with `Authorization: Bearer <token>`.
#[derive(Clone)]
struct HttpUpstream {
    client: reqwest::Client,
    base: String,
    calls: Arc<AtomicU64>,
}

impl Upstream for HttpUpstream {
    fn capabilities(&self) -> Capabilities {
        Capabilities::new().with_providers(["bench"])
    }

    fn lookup<'a>(&'a self, session: &'a Session) -> BoxFuture<'a, Result<Lookup, Error>> {
        Box::pin(async move {
            self.calls.fetch_add(1, Ordering::Relaxed);
            let response = self
                .client
                .get(format!("{}/me", self.base))
                .bearer_auth(session.token.expose())
                .send()
                .await
                .map_err(|_| Error::unavailable())?;
            let raw: serde_json::Value = response.json().await.map_err(|_| Error::unavailable())?;
            let mut user = User::new(raw["id"].as_str().unwrap_or_default(), raw.clone());
            user.email = raw["email"].as_str().map(str::to_owned);
            user.name = raw["name"].as_str().map(str::to_owned);
            Ok(Lookup::Valid(Valid::new(user)))
        })
    }

    fn start_sign_in<'a>(
        &'a self,
        _start: SignInStart<'a>,
    ) -> BoxFuture<'a, Result<SignInRedirect, Error>> {
        Box::pin(async { Err(Error::unsupported()) })
    }

    fn complete_callback<'a>(
        &'a self,
        _params: &'a CallbackParams,
        _flow: Option<&'a FlowRecord>,
    ) -> BoxFuture<'a, Result<CallbackOutcome, Error>> {
        Box::pin(async { Err(Error::unsupported()) })
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

async fn me(headers: http::HeaderMap) -> axum::Json<serde_json::Value> {
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let id = format!("u-{}", &token[token.len().saturating_sub(8)..]);
    axum::Json(serde_json::json!({
        "id": id,
        "email": "ada@example.test",
        "name": "Ada Lovelace",
        "emailVerified": true,
        "groups": ["staff", "admin"],
        "createdAt": "2026-01-01T00:00:00Z",
    }))
}

async fn page(user: CurrentUser) -> String {
    format!("<p>Hello, {}</p>", user.display_name())
}

fn request(token: &str) -> Request<Body> {
    Request::get("/account")
        .header("accept", "text/html")
        .header("cookie", format!("__Host-authgate={token}"))
        .body(Body::empty())
        .unwrap()
}

/// A `redis-server` on a free port, or `None` with the reason printed.
fn start_redis() -> Option<(std::process::Child, u16)> {
    let found = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .any(|dir| dir.join("redis-server").is_file());
    if !found {
        eprintln!(
            "shared_cache bench skipped: redis-server is not installed (apt-get install redis-server)"
        );
        return None;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = std::process::Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start redis-server");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "redis-server did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    Some((child, port))
}

fn instance(upstream: &HttpUpstream, bus: Option<RedisBus>) -> AuthService<Router> {
    let mut config = AuthConfig::new(ORIGIN)
        .unwrap()
        .with_key([9u8; 64])
        .unwrap();
    if let Some(bus) = bus {
        config = config.with_revocation_bus(bus);
    }
    AuthLayer::new(config, upstream.clone()).layer(Router::new().route("/account", get(page)))
}

fn tokens(n: u64) -> Vec<String> {
    (0..n)
        .map(|_| {
            (0..24)
                .map(|_| format!("{:02x}", rand::random::<u8>()))
                .collect()
        })
        .collect()
}

/// Each token once through `app`: every request a cold miss.
async fn misses(app: &AuthService<Router>, tokens: &[String]) -> Duration {
    let start = Instant::now();
    for token in tokens {
        let response = app.clone().oneshot(request(token)).await.unwrap();
        assert_eq!(response.status(), 200);
    }
    start.elapsed()
}

fn shared_cache(c: &mut Criterion) {
    let Some((mut redis, port)) = start_redis() else {
        return;
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let _guard = runtime.enter();
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    runtime.spawn(async move {
        axum::serve(listener, Router::new().route("/me", get(me)))
            .await
            .unwrap();
    });
    let upstream = HttpUpstream {
        client: reqwest::Client::new(),
        base,
        calls: Arc::new(AtomicU64::new(0)),
    };
    let bus = || {
        RedisBus::new(&format!("redis://127.0.0.1:{port}/"))
            .unwrap()
            .with_channel(CHANNEL)
            .with_shared_cache(true)
    };
    // A resolves every session first; B, cold, finds them in Redis. C has
    // no shared cache: its misses go to the upstream.
    let a = instance(&upstream, Some(bus()));
    let b = instance(&upstream, Some(bus()));
    let c_app = instance(&upstream, None);

    // Warm-up: connections to Redis and the upstream exist on each side.
    let warm = tokens(50);
    runtime.block_on(async {
        misses(&a, &warm).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        misses(&b, &warm).await;
        misses(&c_app, &warm).await;
    });

    let mut group = c.benchmark_group("cold-instance cache miss");
    group.bench_function("served by the upstream (HTTP, 127.0.0.1)", |bench| {
        bench.iter_custom(|iters| {
            let tokens = tokens(iters);
            runtime.block_on(misses(&c_app, &tokens))
        })
    });
    group.bench_function("served from the shared cache (Redis, 127.0.0.1)", |bench| {
        bench.iter_custom(|iters| {
            let tokens = tokens(iters);
            runtime.block_on(async {
                misses(&a, &tokens).await;
                // The writes are queued: wait for the last one.
                tokio::time::sleep(Duration::from_millis(50)).await;
                let calls = upstream.calls.load(Ordering::Relaxed);
                let took = misses(&b, &tokens).await;
                assert_eq!(
                    upstream.calls.load(Ordering::Relaxed),
                    calls,
                    "B asked the upstream"
                );
                took
            })
        })
    });
    group.finish();

    // The ratio, measured here in one run: 2,000 misses each, interleaved
    // in rounds of 200 so drift hits both alike.
    let (mut from_upstream, mut from_redis) = (Duration::ZERO, Duration::ZERO);
    runtime.block_on(async {
        for _ in 0..10 {
            let round = tokens(200);
            from_upstream += misses(&c_app, &round).await;
            let round = tokens(200);
            misses(&a, &round).await;
            tokio::time::sleep(Duration::from_millis(50)).await;
            from_redis += misses(&b, &round).await;
        }
    });
    let per = |total: Duration| total / 2_000;
    eprintln!(
        "cold-instance miss: upstream over HTTP {:?}, shared cache over Redis {:?} per request; the shared cache takes {:.2}x the upstream's time",
        per(from_upstream),
        per(from_redis),
        from_redis.as_secs_f64() / from_upstream.as_secs_f64()
    );
    let _ = redis.kill();
    let _ = redis.wait();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1));
    targets = shared_cache
}
criterion::criterion_main!(benches);
