//! Micro benchmarks of authgate's hot path and its pure parts.
//!
//! Run with `cargo bench --features test-util --bench hot_path`.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::convert::Infallible;
use std::hint::black_box;

use authgate::redirect::ReturnTo;
use authgate::test::TestKit;
use authgate::{Auth, AuthService};
use axum::body::Body;
use criterion::{Criterion, criterion_group, criterion_main};
use http::{Request, Response};
use tower::{Service, ServiceExt as _};
use tower_layer::Layer as _;

type Handler = tower::util::ServiceFn<fn(Request<Body>) -> HandlerFuture>;
type HandlerFuture =
    std::pin::Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

/// A handler that asks for the user, as a `CurrentUser` extractor would.
fn with_user(request: Request<Body>) -> HandlerFuture {
    Box::pin(async move {
        let auth = Auth::from_request(&request).expect("layer");
        let name = auth.user().await.map(|u| u.id.len()).unwrap_or(0);
        black_box(name);
        Ok(Response::new(Body::empty()))
    })
}

/// The same handler without auth: the baseline.
fn bare(request: Request<Body>) -> HandlerFuture {
    Box::pin(async move {
        black_box(&request);
        Ok(Response::new(Body::empty()))
    })
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

    let mut bare_service = tower::service_fn(bare as fn(Request<Body>) -> HandlerFuture);
    let mut service: AuthService<Handler> = kit.layer().layer(tower::service_fn(
        with_user as fn(Request<Body>) -> HandlerFuture,
    ));
    // Warm the cache.
    runtime
        .block_on(service.clone().oneshot(request(&cookie)))
        .unwrap();

    let mut group = c.benchmark_group("request");
    group.bench_function("bare handler (baseline)", |b| {
        b.iter(|| {
            runtime
                .block_on(bare_service.call(request(&cookie)))
                .unwrap()
        })
    });
    group.bench_function(
        "warm path: cookie, cache hit, context, response hook",
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

criterion_group!(benches, hot_path, pure_parts);
criterion_main!(benches);
