//! The in-process callgrind harness behind BENCHMARKS.md's "Where the warm
//! path's instructions go": the same router and handler as the load
//! benchmark's page, called directly (no network, no hyper, no timers), so
//! the count is deterministic and a change of a few instructions shows.
//!
//! ```text
//! warm-path VARIANT[+3c] REQUESTS
//! ```
//!
//! - `bare`: axum, the handler renders a name it holds.
//! - `bare-headers`: the same, then the two N7 headers inserted into the
//!   response as authgate does.
//! - `authgate`: `AuthLayer` (the test kit's in-memory upstream, warm)
//!   wrapping the router, `CurrentUser` in the handler; the session cookie
//!   holds the token (plain storage, as for Altogic).
//! - `authgate-sealed`: the same with sealed sessions (the whole session
//!   AES-GCM-sealed in the cookie, as OpenID Connect sessions will be).
//!
//! A `+3c` suffix sends what a browser sends: a consent cookie, an
//! analytics cookie and the session cookie in one `Cookie` header; without
//! it, the session cookie alone.
//!
//! `scripts/warm-path.sh` runs each under callgrind with 1,000 and 11,000
//! requests and prints (Ir(11,000) − Ir(1,000)) / 10,000.

use std::process::ExitCode;

use authgate::test::{MemoryUpstream, TestKit};
use authgate::{AuthConfig, CurrentUser};
use axum::Router;
use axum::body::Body;
use axum::http::header::{CACHE_CONTROL, COOKIE, VARY};
use axum::http::{HeaderValue, Request};
use axum::routing::get;
use tower::{Service, ServiceExt as _};
use tower_layer::Layer as _;

async fn page(user: CurrentUser) -> String {
    format!("<p>Hello, {}</p>", user.display_name())
}

async fn bare_page() -> String {
    format!("<p>Hello, {}</p>", std::hint::black_box("Ada Lovelace"))
}

/// Sends `requests` requests carrying `cookie` through `service`.
async fn drive<S>(mut service: S, cookie: &HeaderValue, requests: usize, add_headers: bool)
where
    S: Service<Request<Body>, Response = axum::response::Response>,
    S::Error: std::fmt::Debug,
{
    for _ in 0..requests {
        let mut request = Request::new(Body::empty());
        request.headers_mut().insert(COOKIE, cookie.clone());
        let ready = match service.ready().await {
            Ok(ready) => ready,
            Err(err) => panic!("service not ready: {err:?}"),
        };
        let mut response = match ready.call(request).await {
            Ok(response) => response,
            Err(err) => panic!("request failed: {err:?}"),
        };
        assert_eq!(response.status(), 200, "every request is served");
        if add_headers {
            let headers = response.headers_mut();
            headers.insert(CACHE_CONTROL, HeaderValue::from_static("private, no-store"));
            headers.insert(VARY, HeaderValue::from_static("Cookie"));
        }
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let (Some(variant), Some(Ok(requests))) = (args.get(1), args.get(2).map(|n| n.parse())) else {
        eprintln!("usage: warm-path bare|bare-headers|authgate|authgate-sealed[+3c] REQUESTS");
        return ExitCode::from(2);
    };
    let (variant, three_cookies) = match variant.strip_suffix("+3c") {
        Some(base) => (base, true),
        None => (variant.as_str(), false),
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("warm-path: {err}");
            return ExitCode::FAILURE;
        }
    };
    let upstream = match variant {
        "authgate-sealed" => MemoryUpstream::default().with_sealed_sessions(),
        _ => MemoryUpstream::default(),
    };
    let config = AuthConfig::new(authgate::test::TEST_ORIGIN)
        .and_then(|config| config.with_key([0x5a; 64]));
    let Ok(config) = config else {
        eprintln!("warm-path: bad test configuration");
        return ExitCode::FAILURE;
    };
    let kit = TestKit::with_upstream(config, upstream);
    let user = kit.user("ada@example.test");
    let session = format!("__Host-authgate={}", kit.session_cookie(&user));
    let header = if three_cookies {
        format!(
            "cookieconsent_status=dismissed; _ga=GA1.1.1418365342.1732924800; {session}"
        )
    } else {
        session
    };
    let Ok(cookie) = HeaderValue::from_str(&header) else {
        eprintln!("warm-path: the cookie does not fit a header");
        return ExitCode::FAILURE;
    };
    runtime.block_on(async {
        match variant {
            "bare" | "bare-headers" => {
                let router = Router::new().route("/", get(bare_page)).with_state(());
                drive(router, &cookie, requests, variant == "bare-headers").await;
            }
            "authgate" | "authgate-sealed" => {
                let router = Router::new().route("/", get(page)).with_state(());
                drive(kit.layer().layer(router), &cookie, requests, false).await;
            }
            other => panic!("unknown variant {other}"),
        }
    });
    ExitCode::SUCCESS
}
