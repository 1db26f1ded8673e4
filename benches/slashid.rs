//! The SlashID upstream's costs (issue 13 point 9): one local JWT
//! verification on a cache miss (RS256 and ES256, key set cached), and a
//! warm authenticated request through the layer, against bare axum in the
//! same run. A warm request makes no network call (checked here against
//! the dev server's request count).
//!
//! Run with `cargo bench --features slashid,dev-upstream --bench slashid`.
//!
//! Instruction counts: `SLASHID_BENCH_COUNT=<n> SLASHID_BENCH_CASE=<case>`
//! makes the binary run `n` operations of one case (`rs256`, `es256`,
//! `warm`, `bare`) and exit, to run under callgrind twice (e.g. 1 and 101)
//! and divide the difference by 100.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;

use authgate::dev::slashid::{DevAlgorithm, SlashIdDev};
use authgate::slashid::Client;
use authgate::upstream::{Lookup, Session, Upstream};
use authgate::{AuthConfig, AuthLayer, AuthService, CurrentUser, SessionToken};
use axum::Router;
use axum::body::Body;
use axum::routing::get;
use criterion::{BatchSize, Criterion, criterion_group};
use http::Request;
use tower::{Service, ServiceExt as _};

async fn page(user: CurrentUser) -> String {
    format!("<p>Hello, {}</p>", user.display_name())
}

async fn bare_page() -> String {
    format!("<p>Hello, {}</p>", black_box("ada"))
}

fn request(token: &str) -> Request<Body> {
    Request::get("/account")
        .header("accept", "text/html")
        .header(
            "cookie",
            format!("_ga=GA1.2.3; __Host-authgate={token}; theme=dark"),
        )
        .body(Body::empty())
        .unwrap()
}

fn slashid(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();

    // One local verification, the key set already cached: what a cache
    // miss costs (signature, claims, the user mapping; no network).
    let mut group = c.benchmark_group("slashid verification (cache miss)");
    for (name, algorithm) in [
        ("RS256", DevAlgorithm::Rs256),
        ("ES256", DevAlgorithm::Es256),
    ] {
        let dev = runtime
            .block_on(SlashIdDev::builder().with_algorithm(algorithm).spawn())
            .unwrap();
        let client = Client::builder(dev.url(), dev.org_id()).build().unwrap();
        let session = Session::new(SessionToken::new(dev.issue_token("ada@example.test")).unwrap());
        let warm = runtime.block_on(client.lookup(&session)).unwrap();
        assert!(matches!(warm, Lookup::Valid(_)));
        let calls = dev.calls();
        group.bench_function(name, |b| {
            b.iter(|| {
                runtime
                    .block_on(client.lookup(black_box(&session)))
                    .unwrap()
            })
        });
        assert_eq!(dev.calls(), calls, "a verification makes no network call");
    }
    group.finish();

    let dev = runtime.block_on(SlashIdDev::spawn()).unwrap();
    let client = Client::builder(dev.url(), dev.org_id()).build().unwrap();
    let config = AuthConfig::new("https://app.example").unwrap();
    let mut service: AuthService<Router> =
        AuthLayer::new(config, client).layer(Router::new().route("/account", get(page)));
    let mut bare = Router::new().route("/account", get(bare_page));
    let token = dev.issue_token("ada@example.test");
    let warm = runtime
        .block_on(service.clone().oneshot(request(&token)))
        .unwrap();
    assert_eq!(warm.status(), 200);
    let calls = dev.calls();

    let mut group = c.benchmark_group("slashid request");
    group.bench_function("bare axum handler (baseline)", |b| {
        b.iter(|| runtime.block_on(bare.call(request(&token))).unwrap())
    });
    group.bench_function("authgate warm path, SlashID JWT session", |b| {
        b.iter(|| runtime.block_on(service.call(request(&token))).unwrap())
    });
    assert_eq!(dev.calls(), calls, "a warm request makes no network call");
    group.bench_function("authgate cold path: a new JWT, verified locally", |b| {
        b.iter_batched(
            || request(&dev.issue_token("ada@example.test")),
            |request| runtime.block_on(service.call(request)).unwrap(),
            BatchSize::SmallInput,
        )
    });
    assert_eq!(
        dev.calls(),
        calls,
        "nor does a cache miss, the key set cached"
    );
    group.finish();
}

/// `n` operations of one case, for callgrind (see the module docs).
fn count(n: usize, case: &str) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let algorithm = if case == "es256" {
        DevAlgorithm::Es256
    } else {
        DevAlgorithm::Rs256
    };
    let dev = runtime
        .block_on(SlashIdDev::builder().with_algorithm(algorithm).spawn())
        .unwrap();
    let client = Client::builder(dev.url(), dev.org_id()).build().unwrap();
    let token = dev.issue_token("ada@example.test");
    let session = Session::new(SessionToken::new(token.clone()).unwrap());
    let config = AuthConfig::new("https://app.example").unwrap();
    let mut service: AuthService<Router> =
        AuthLayer::new(config, client.clone()).layer(Router::new().route("/account", get(page)));
    let mut bare = Router::new().route("/account", get(bare_page));
    // Warm the key set and the cache, and the bare router's first call.
    runtime.block_on(client.lookup(&session)).unwrap();
    runtime.block_on(service.call(request(&token))).unwrap();
    runtime.block_on(bare.call(request(&token))).unwrap();
    let calls = dev.calls();
    eprintln!("{case}: the session cookie's JWT is {} bytes", token.len());
    for _ in 0..n {
        match case {
            "warm" => drop(runtime.block_on(service.call(request(&token))).unwrap()),
            "bare" => drop(runtime.block_on(bare.call(request(&token))).unwrap()),
            _ => drop(
                runtime
                    .block_on(client.lookup(black_box(&session)))
                    .unwrap(),
            ),
        }
    }
    assert_eq!(dev.calls(), calls, "no network call");
}

criterion_group!(benches, slashid);

fn main() {
    if let Ok(n) = std::env::var("SLASHID_BENCH_COUNT") {
        let case = std::env::var("SLASHID_BENCH_CASE").unwrap_or_default();
        count(n.parse().unwrap(), &case);
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
