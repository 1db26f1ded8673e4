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
//! analytics cookie and the session cookie in one `Cookie` header; `+10c`
//! nine other cookies (a site with the usual marketing tags, ~480 bytes in
//! all); without a suffix, the session cookie alone.
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

/// What a browser sends besides the session on a plain site: a consent
/// and an analytics cookie.
const BROWSER_COOKIES: &str = "cookieconsent_status=dismissed; _ga=GA1.1.1418365342.1732924800; ";

/// … and on a site with the usual marketing tags (nine cookies, ~420 bytes).
const MANY_COOKIES: &str = "cookieconsent_status=dismissed; _ga=GA1.1.1418365342.1732924800; \
    _gid=GA1.1.918273645.1732924800; _gcl_au=1.1.1122334455.1732924800; \
    _fbp=fb.1.1732924800123.1234567890; _hjSessionUser_123456=eyJpZCI6IjEyMzQ1Njc4OTAiLCJjcmVhdGVkIjoxNzMyOTI0ODAwfQ==; \
    intercom-id-abc123=0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0; \
    ajs_anonymous_id=9f8e7d6c-5b4a-3928-1706-f5e4d3c2b1a0; locale=en-GB; ";

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
        eprintln!("usage: warm-path bare|bare-headers|authgate|authgate-sealed[+3c|+10c] REQUESTS");
        return ExitCode::from(2);
    };
    let (variant, others) = if let Some(base) = variant.strip_suffix("+3c") {
        (base, BROWSER_COOKIES)
    } else if let Some(base) = variant.strip_suffix("+10c") {
        (base, MANY_COOKIES)
    } else {
        (variant.as_str(), "")
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
    let config =
        AuthConfig::new(authgate::test::TEST_ORIGIN).and_then(|config| config.with_key([0x5a; 64]));
    let Ok(config) = config else {
        eprintln!("warm-path: bad test configuration");
        return ExitCode::FAILURE;
    };
    let kit = TestKit::with_upstream(config, upstream);
    let user = kit.user("ada@example.test");
    let session = format!("__Host-authgate={}", kit.session_cookie(&user));
    let header = format!("{others}{session}");
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
