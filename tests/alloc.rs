//! The warm path allocates nothing beyond reference-count clones and one
//! extension slot (issue #5). Counts allocations, never times.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::alloc::System;
use std::sync::Arc;

use authgate::CurrentUser;
use authgate::test::TestKit;
use axum::Router;
use axum::body::Body;
use axum::routing::get;
use bytes::Bytes;
use http::{HeaderValue, Request};
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};
use tower::{Service, ServiceExt as _};
use tower_layer::Layer as _;

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const REQUESTS: usize = 200;

async fn page(user: CurrentUser) -> &'static str {
    std::hint::black_box(&user.id);
    "page"
}

async fn bare_page() -> &'static str {
    "page"
}

/// Requests as hyper builds them: header values share one buffer.
fn requests(cookie: &str) -> Vec<Request<Body>> {
    let shared = Bytes::from(cookie.to_owned());
    (0..REQUESTS)
        .map(|_| {
            let mut request = Request::get("/").body(Body::empty()).unwrap();
            request.headers_mut().insert(
                http::header::COOKIE,
                HeaderValue::from_maybe_shared(shared.clone()).unwrap(),
            );
            request
        })
        .collect()
}

/// Allocations per request while `service` answers every request.
fn allocations<S>(runtime: &tokio::runtime::Runtime, mut service: S, cookie: &str) -> f64
where
    S: Service<Request<Body>, Response = http::Response<Body>>,
    S::Error: std::fmt::Debug,
{
    let batch = requests(cookie);
    let region = Region::new(GLOBAL);
    runtime.block_on(async {
        for request in batch {
            let response = service.ready().await.unwrap().call(request).await.unwrap();
            drop(response);
        }
    });
    region.change().allocations as f64 / REQUESTS as f64
}

/// Net heap bytes each cached session keeps, with a realistic Altogic user
/// record (issue #5 target: at most 1 KiB, the user record included).
fn bytes_per_cached_session(runtime: &tokio::runtime::Runtime) -> f64 {
    const SESSIONS: usize = 5_000;
    let kit = TestKit::new();
    let app = kit.layer().layer(Router::new().route("/", get(page)));
    let cookies: Vec<String> = (0..SESSIONS)
        .map(|i| {
            let user = kit.user_with(serde_json::json!({
                "_id": format!("63a1f0c2b7e4{i:012}"),
                "provider": "Altogic",
                "providerUserId": format!("63a1f0c2b7e4{i:012}"),
                "email": format!("user{i}@example.test"),
                "name": "Ada Lovelace",
                "emailVerified": true,
                "phoneVerified": false,
                "signUpAt": "2026-11-22T03:24:05.123Z",
                "lastLoginAt": "2026-11-22T03:24:05.123Z"
            }));
            format!("__Host-authgate={}", kit.session(&user).expose())
        })
        .collect();
    // Net bytes of answering every session once: cold (the cache grows),
    // then warm (it does not); the requests themselves cost the same both
    // times, so the difference is what the cache keeps.
    let net = |app: &authgate::AuthService<Router>| {
        let batch: Vec<Request<Body>> = cookies.iter().map(|c| requests(c).remove(0)).collect();
        let region = Region::new(GLOBAL);
        runtime.block_on(async {
            for request in batch {
                let response = app.clone().oneshot(request).await.unwrap();
                assert_eq!(response.status(), 200);
            }
        });
        let change = region.change();
        change.bytes_allocated as f64 - change.bytes_deallocated as f64
    };
    let cold = net(&app);
    let warm = net(&app);
    assert_eq!(
        kit.upstream_lookups(),
        SESSIONS as u64,
        "the second pass was all cache hits"
    );
    (cold - warm) / SESSIONS as f64
}

#[test]
fn warm_path_allocates_nothing_and_a_cached_session_takes_under_1_kib() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let per_session = bytes_per_cached_session(&runtime);
    eprintln!(
        "heap bytes kept per cached session (Altogic user record included): {per_session:.0}"
    );
    assert!(
        per_session <= 1024.0,
        "{per_session:.0} bytes per cached session"
    );

    let kit = TestKit::new();
    let user = kit.user("alloc@example.test");
    let token = kit.session(&user);
    let cookie = format!(
        "_ga=GA1.2.3; __Host-authgate={}; theme=dark",
        token.expose()
    );

    let bare = Router::new().route("/", get(bare_page));
    // One extension slot holding a reference-counted value: the allowance.
    let marker = Arc::new(0u64);
    let one_slot = tower::util::MapRequestLayer::new(move |mut request: Request<Body>| {
        request.extensions_mut().insert(marker.clone());
        request
    })
    .layer(Router::new().route("/", get(bare_page)));
    let authgate = kit.layer().layer(Router::new().route("/", get(page)));

    // Warm everything up (cache, pools, lazy statics).
    for _ in 0..3 {
        allocations(&runtime, bare.clone(), &cookie);
        allocations(&runtime, one_slot.clone(), &cookie);
        allocations(&runtime, authgate.clone(), &cookie);
    }
    let response = runtime
        .block_on(authgate.clone().oneshot(requests(&cookie).remove(0)))
        .unwrap();
    assert_eq!(response.status(), 200, "the warm request is signed in");

    let bare = allocations(&runtime, bare, &cookie);
    let one_slot = allocations(&runtime, one_slot, &cookie);
    let authgate = allocations(&runtime, authgate, &cookie);
    eprintln!(
        "allocations per request: bare {bare:.2}, bare + one extension slot {one_slot:.2}, authgate warm {authgate:.2}"
    );
    assert!(
        authgate <= one_slot + 0.01,
        "authgate's warm path allocates {authgate:.2} per request; the allowance is {one_slot:.2}"
    );
    // Tighter: the slot's own box and nothing else. A plain insert costs
    // two (the box and a regrowth of the map once axum's router adds its
    // three entries); authgate's roomy map spares the regrowth.
    assert!(
        authgate <= bare + 1.01,
        "authgate's warm path allocates {authgate:.2} per request; bare + the slot's box is {:.2}",
        bare + 1.0
    );
}
