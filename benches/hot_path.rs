//! Micro benchmarks of authgate's hot path and its pure parts.
//!
//! Run with `cargo bench --features test-util --bench hot_path`.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;

use authgate::redirect::ReturnTo;
use authgate::test::TestKit;
use authgate::{AuthService, CurrentUser};
use axum::Router;
use axum::body::Body;
use axum::routing::get;
use criterion::{Criterion, criterion_group, criterion_main};
use http::Request;
use tower::{Service, ServiceExt as _};

async fn page(user: CurrentUser) -> String {
    format!("<p>Hello, {}</p>", user.display_name())
}

async fn bare_page() -> String {
    format!("<p>Hello, {}</p>", black_box("ada"))
}

fn request(cookie: &str) -> Request<Body> {
    Request::get("/account")
        .header("accept", "text/html")
        .header("cookie", cookie)
        .body(Body::empty())
        .unwrap()
}

fn hot_path(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let kit = TestKit::new();
    let user = kit.user("ada@example.test");
    let token = kit.session(&user);
    let cookie = format!(
        "_ga=GA1.2.3; __Host-authgate={}; theme=dark",
        token.expose()
    );

    let mut bare_service = Router::new().route("/account", get(bare_page));
    let mut service: AuthService<Router> = kit
        .layer()
        .layer(Router::new().route("/account", get(page)));
    // Warm the cache.
    let warm = runtime
        .block_on(service.clone().oneshot(request(&cookie)))
        .unwrap();
    assert_eq!(warm.status(), 200);

    let mut group = c.benchmark_group("request");
    group.bench_function("bare axum handler (baseline)", |b| {
        b.iter(|| {
            runtime
                .block_on(bare_service.call(request(&cookie)))
                .unwrap()
        })
    });
    group.bench_function(
        "authgate warm path: cookie, cache hit, CurrentUser, response hook",
        |b| b.iter(|| runtime.block_on(service.call(request(&cookie))).unwrap()),
    );
    group.bench_function("cold path: new session, in-process upstream", |b| {
        b.iter_batched(
            || {
                let token = kit.session(&user);
                request(&format!("__Host-authgate={}", token.expose()))
            },
            |request| runtime.block_on(service.call(request)).unwrap(),
            criterion::BatchSize::SmallInput,
        )
    });
    group.finish();
}

fn flow_cookie(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let kit = TestKit::new();
    let mut service: AuthService<Router> = kit.layer().layer(Router::new());
    let start = || {
        Request::get("/auth/signin/test?return_to=%2Faccount")
            .body(Body::empty())
            .unwrap()
    };
    let response = runtime.block_on(service.clone().oneshot(start())).unwrap();
    let flow = response
        .headers()
        .get_all("set-cookie")
        .iter()
        .find_map(|v| {
            let v = v.to_str().ok()?;
            v.starts_with("__Host-authgate-flow=")
                .then(|| v.split(';').next().unwrap().to_owned())
        })
        .unwrap();
    let mut group = c.benchmark_group("flow cookie");
    group.bench_function("sign-in start: seal the flow cookie (whole route)", |b| {
        b.iter(|| runtime.block_on(service.call(start())).unwrap())
    });
    group.bench_function(
        "callback: open the flow cookie, refused grant (whole route)",
        |b| {
            b.iter(|| {
                let request = Request::get(
                    "/auth/callback?action=magic-link&status=200&access_token=unknown",
                )
                .header("cookie", &flow)
                .body(Body::empty())
                .unwrap();
                runtime.block_on(service.call(request)).unwrap()
            })
        },
    );
    group.finish();
}

fn pure_parts(c: &mut Criterion) {
    let policy = ReturnTo::new("https://app.example".parse().unwrap(), "/auth");
    let mut group = c.benchmark_group("pure");
    group.bench_function("return_to: same-origin path", |b| {
        b.iter(|| policy.validate(black_box("/account/settings?tab=security")))
    });
    group.bench_function("return_to: hostile input", |b| {
        b.iter(|| policy.validate(black_box("/%09/evil.example")))
    });
    group.finish();
}

criterion_group!(benches, hot_path, flow_cookie, pure_parts);
criterion_main!(benches);
