//! The layer and the extractors through a Router against the dev upstream:
//! lazy resolution, the cache, rejections, cookie parsing and writing, and
//! header hygiene (SECURITY.md T-C*, T-F2, §4).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use authgate::{AuthConfig, AuthLayer, CurrentUser, altogic};
use axum::Router;
use axum::body::Body;
use axum::routing::get;
use common::*;
use http::header::{CACHE_CONTROL, VARY};
use http::{Request, StatusCode};
use tower::ServiceExt as _;

#[tokio::test]
async fn missing_layer_is_a_500_that_names_the_layer() {
    let app = Router::new().route("/", get(|_: CurrentUser| async { "x" }));
    let response = app
        .oneshot(Request::get("/").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert!(body_string(response).await.contains("AuthLayer"));
}

#[tokio::test]
async fn navigation_without_a_user_goes_to_sign_in_and_api_calls_get_401() {
    let site = site().await;
    let page = site.get("/account", None).await;
    assert_eq!(page.status(), StatusCode::SEE_OTHER);
    assert_eq!(location(&page), "/signin?return_to=%2Faccount");

    let navigate = Request::get("/account?x=1")
        .header("sec-fetch-mode", "navigate")
        .body(Body::empty())
        .unwrap();
    let response = site.send(navigate).await;
    assert_eq!(location(&response), "/signin?return_to=%2Faccount%3Fx%3D1");

    let api = Request::get("/account")
        .header("accept", "application/json")
        .body(Body::empty())
        .unwrap();
    let response = site.send(api).await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    // An RFC 9457 problem (issue 10 point 7).
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    assert!(body_string(response).await.contains("not_signed_in"));

    let post = Request::post("/account")
        .header("accept", "text/html")
        .body(Body::empty())
        .unwrap();
    assert_eq!(
        site.send(post).await.status(),
        StatusCode::METHOD_NOT_ALLOWED
    );
}

/// Issue 10 point 7: a missing user is answered the way the request was
/// made: a navigation is redirected, htmx gets `HX-Redirect` (never a
/// redirect it would swap into a fragment), a form post whose session ended
/// goes to sign-in with a notice and back to the form's page, and `fetch`
/// or an API client gets a 401 problem.
#[tokio::test]
async fn rejections_fit_how_the_request_was_made() {
    let site = site().await;
    struct Case {
        name: &'static str,
        method: &'static str,
        path: &'static str,
        headers: &'static [(&'static str, &'static str)],
        status: StatusCode,
        location: Option<&'static str>,
        hx_redirect: Option<&'static str>,
        problem: bool,
    }
    const HTML: (&str, &str) = ("accept", "text/html,application/xhtml+xml");
    const FORM: (&str, &str) = ("content-type", "application/x-www-form-urlencoded");
    let cases = [
        Case {
            name: "page navigation",
            method: "GET",
            path: "/account?tab=2",
            headers: &[HTML],
            status: StatusCode::SEE_OTHER,
            location: Some("/signin?return_to=%2Faccount%3Ftab%3D2"),
            hx_redirect: None,
            problem: false,
        },
        Case {
            name: "htmx GET",
            method: "GET",
            path: "/account",
            headers: &[("hx-request", "true"), HTML],
            status: StatusCode::UNAUTHORIZED,
            location: None,
            hx_redirect: Some("/signin?return_to=%2Faccount"),
            problem: false,
        },
        Case {
            name: "htmx POST from a page of the app",
            method: "POST",
            path: "/update",
            headers: &[
                ("hx-request", "true"),
                ("hx-current-url", "https://app.example/settings?tab=1"),
                FORM,
            ],
            status: StatusCode::UNAUTHORIZED,
            location: None,
            hx_redirect: Some("/signin?return_to=%2Fsettings%3Ftab%3D1"),
            problem: false,
        },
        Case {
            name: "htmx POST claiming a foreign page",
            method: "POST",
            path: "/update",
            headers: &[
                ("hx-request", "true"),
                ("hx-current-url", "https://evil.example/phish"),
            ],
            status: StatusCode::UNAUTHORIZED,
            location: None,
            hx_redirect: Some("/signin"),
            problem: false,
        },
        Case {
            name: "form post whose session ended",
            method: "POST",
            path: "/update",
            headers: &[HTML, FORM, ("referer", "https://app.example/settings")],
            status: StatusCode::SEE_OTHER,
            location: Some("/signin?return_to=%2Fsettings&notice=session-ended"),
            hx_redirect: None,
            problem: false,
        },
        Case {
            name: "multipart form post from a foreign referer",
            method: "POST",
            path: "/update",
            headers: &[
                HTML,
                ("content-type", "multipart/form-data; boundary=x"),
                ("referer", "https://evil.example/"),
            ],
            status: StatusCode::SEE_OTHER,
            location: Some("/signin?notice=session-ended"),
            hx_redirect: None,
            problem: false,
        },
        Case {
            name: "fetch with JSON",
            method: "POST",
            path: "/update",
            headers: &[("content-type", "application/json"), ("accept", "*/*")],
            status: StatusCode::UNAUTHORIZED,
            location: None,
            hx_redirect: None,
            problem: true,
        },
        Case {
            name: "API client GET",
            method: "GET",
            path: "/account",
            headers: &[("accept", "application/json")],
            status: StatusCode::UNAUTHORIZED,
            location: None,
            hx_redirect: None,
            problem: true,
        },
    ];
    for case in cases {
        let mut request = Request::builder().method(case.method).uri(case.path);
        for (name, value) in case.headers {
            request = request.header(*name, *value);
        }
        let response = site.send(request.body(Body::empty()).unwrap()).await;
        let name = case.name;
        assert_eq!(response.status(), case.status, "{name}");
        let header = |h: &str| response.headers().get(h).map(|v| v.to_str().unwrap());
        assert_eq!(header("location"), case.location, "{name}");
        assert_eq!(header("hx-redirect"), case.hx_redirect, "{name}");
        assert_eq!(header("cache-control"), Some("no-store"), "{name}");
        let is_problem = header("content-type") == Some("application/problem+json");
        assert_eq!(is_problem, case.problem, "{name}");
        if case.problem {
            let body: serde_json::Value =
                serde_json::from_str(&body_string(response).await).unwrap();
            assert_eq!(body["status"], 401, "{name}");
            assert_eq!(body["title"], "Unauthorized", "{name}");
        }
    }
}

#[tokio::test]
async fn anonymous_requests_cost_no_upstream_call_and_no_headers() {
    let site = site().await;
    let calls = site.dev.upstream_calls();
    let response = site.get("/", None).await;
    assert_eq!(body_string(response).await, "home: anonymous");
    let response = site.get("/public", None).await;
    assert_eq!(response.headers()[CACHE_CONTROL], "public, max-age=600");
    assert!(response.headers().get(VARY).is_none());
    assert!(set_cookies(response.headers()).is_empty());
    assert_eq!(site.dev.upstream_calls(), calls);
}

#[tokio::test]
async fn resolution_is_lazy_once_per_request_and_cached_across_requests() {
    let site = site().await;
    let (user_id, token) = site.user("lazy@example.test").await;
    let cookie = site.cookie(&token);
    let lookups = site.layer.resolver().upstream_lookups();

    // A page that never asks for the user: no lookup.
    let response = site.get("/public", Some(&cookie)).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(site.layer.resolver().upstream_lookups(), lookups);

    // CurrentUser + Option<CurrentUser> + Auth::state in one handler: one lookup.
    let response = site.get("/both", Some(&cookie)).await;
    assert_eq!(
        body_string(response).await,
        format!("{user_id} {user_id} true")
    );
    assert_eq!(site.layer.resolver().upstream_lookups(), lookups + 1);

    // The next requests are cache hits.
    for _ in 0..5 {
        assert_eq!(
            site.get("/account", Some(&cookie)).await.status(),
            StatusCode::OK
        );
    }
    assert_eq!(site.layer.resolver().upstream_lookups(), lookups + 1);
}

#[tokio::test]
async fn t_f2_user_pages_are_private_even_when_the_handler_says_public() {
    let site = site().await;
    let (_, token) = site.user("cache@example.test").await;
    let response = site.get("/cached", Some(&site.cookie(&token))).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()[CACHE_CONTROL], "private, no-store");
    let vary: Vec<_> = response.headers().get_all(VARY).iter().collect();
    assert_eq!(vary, ["Accept-Encoding", "Cookie"]);
    // Web cache deception: a user page under a static-looking path.
    let response = site.get("/cached", Some(&site.cookie(&token))).await;
    assert!(
        !response.headers()[CACHE_CONTROL]
            .to_str()
            .unwrap()
            .contains("public")
    );
}

/// Issue 10 point 6: a page whose handler asked who is signed in varies
/// on `Cookie` even when the answer was "nobody", so a shared cache never
/// serves the anonymous variant to a signed-in browser; it stays cacheable
/// (nothing user-specific in it). A handler that never asked is untouched.
#[tokio::test]
async fn anonymous_pages_whose_handler_asked_for_the_user_vary_on_cookie() {
    let site = site().await;
    let response = site.get("/", None).await;
    assert_eq!(response.status(), StatusCode::OK);
    let vary: Vec<_> = response.headers().get_all(VARY).iter().collect();
    assert_eq!(vary, ["Cookie"]);
    assert!(response.headers().get(CACHE_CONTROL).is_none());
    let response = site.get("/public", None).await;
    assert!(response.headers().get(VARY).is_none());
    assert_eq!(response.headers()[CACHE_CONTROL], "public, max-age=600");
}

#[tokio::test]
async fn t_c1_sign_in_sets_a_host_prefixed_cookie_with_strict_cache_headers() {
    let site = site().await;
    site.user("attrs@example.test").await;
    let response = site
        .send(form(
            "/signin",
            None,
            "email=attrs%40example.test&password=password-1&return_to=%2Faccount",
        ))
        .await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    assert_eq!(location(&response), "https://app.example/account");
    let cookie = set_cookie(response.headers(), "__Host-authgate").unwrap();
    assert_eq!(cookie.secure(), Some(true));
    assert_eq!(cookie.http_only(), Some(true));
    assert_eq!(cookie.same_site(), Some(cookie::SameSite::Lax));
    assert_eq!(cookie.path(), Some("/"));
    assert_eq!(cookie.domain(), None);
    assert_eq!(cookie.max_age(), Some(time::Duration::days(30)));
    assert_eq!(
        response.headers()[CACHE_CONTROL],
        "private, no-cache, no-store, must-revalidate, max-age=0"
    );
    assert_eq!(response.headers()["pragma"], "no-cache");
    assert_eq!(response.headers()[VARY], "Cookie");

    // The sign-in primed the cache: the first page costs no lookup.
    let lookups = site.layer.resolver().upstream_lookups();
    let page = site
        .get("/account", Some(&site.cookie(cookie.value())))
        .await;
    assert_eq!(page.status(), StatusCode::OK);
    assert_eq!(site.layer.resolver().upstream_lookups(), lookups);
}

#[tokio::test]
async fn t_c2_sign_in_replaces_a_planted_cookie() {
    let site = site().await;
    site.user("fix@example.test").await;
    let planted = site.cookie("ATTACKER-token");
    let response = site
        .send(form(
            "/signin",
            Some(&planted),
            "email=fix%40example.test&password=password-1",
        ))
        .await;
    let cookie = set_cookie(response.headers(), "__Host-authgate").unwrap();
    assert_ne!(cookie.value(), "ATTACKER-token");
}

#[tokio::test]
async fn wrong_password_sets_no_cookie() {
    let site = site().await;
    site.user("wrong@example.test").await;
    let response = site
        .send(form(
            "/signin",
            None,
            "email=wrong%40example.test&password=nope-nope",
        ))
        .await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert!(set_cookies(response.headers()).is_empty());
}

#[tokio::test]
async fn form_posts_from_other_sites_are_refused() {
    let site = site().await;
    site.user("csrf@example.test").await;
    let request = Request::post("/signin")
        .header("content-type", "application/x-www-form-urlencoded")
        .header("sec-fetch-site", "cross-site")
        .body(Body::from("email=csrf%40example.test&password=password-1"))
        .unwrap();
    let response = site.send(request).await;
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    assert!(set_cookies(response.headers()).is_empty());
}

#[tokio::test]
async fn r1_invalid_session_deletes_the_cookie_with_mirrored_attributes() {
    let site = site().await;
    let (_, token) = site.user("gone@example.test").await;
    let session = authgate::SessionToken::new(token.clone()).unwrap();
    site.client.sign_out(&session, None).await.unwrap();

    let response = site.get("/account", Some(&site.cookie(&token))).await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    let removal = set_cookie(response.headers(), "__Host-authgate").unwrap();
    assert!(is_removal(&removal));
    assert_eq!(removal.secure(), Some(true));
    assert_eq!(removal.path(), Some("/"));
    assert_eq!(removal.same_site(), Some(cookie::SameSite::Lax));
    assert!(
        response.headers()[CACHE_CONTROL]
            .to_str()
            .unwrap()
            .contains("no-store")
    );

    // The negative cache answers the next request without the upstream.
    let lookups = site.layer.resolver().upstream_lookups();
    let page = body_string(site.get("/", Some(&site.cookie(&token))).await).await;
    assert_eq!(page, "home: anonymous");
    assert_eq!(site.layer.resolver().upstream_lookups(), lookups);
}

#[tokio::test]
async fn t_c5_malformed_cookie_headers_never_hide_or_break_the_session() {
    let site = site().await;
    let (_, token) = site.user("bytes@example.test").await;
    let raw = |bytes: Vec<u8>| {
        Request::get("/")
            .header("cookie", http::HeaderValue::from_bytes(&bytes).unwrap())
            .body(Body::empty())
            .unwrap()
    };
    let ours = format!("__Host-authgate={token}");

    // A non-UTF-8 neighbour does not hide our cookie.
    let mut bytes = b"_ga=\xff\xfe; ".to_vec();
    bytes.extend_from_slice(ours.as_bytes());
    let page = body_string(site.send(raw(bytes)).await).await;
    assert_eq!(page, "home: signed in as bytes@example.test");

    // Junk around it.
    let page = body_string(
        site.send(raw(format!("{ours};;; ;=x; =; novalue").into_bytes()))
            .await,
    )
    .await;
    assert_eq!(page, "home: signed in as bytes@example.test");

    // Split Cookie header fields.
    let request = Request::get("/")
        .header("cookie", "a=1")
        .header("cookie", ours.as_str())
        .body(Body::empty())
        .unwrap();
    assert_eq!(
        body_string(site.send(request).await).await,
        "home: signed in as bytes@example.test"
    );
}

#[tokio::test]
async fn t_c3_duplicate_session_cookies_are_ambiguous_and_never_deleted() {
    let site = site().await;
    let (_, token) = site.user("dup@example.test").await;
    let lookups = site.layer.resolver().upstream_lookups();
    let cookie = format!("__Host-authgate={token}; __Host-authgate=attacker");
    let response = site.get("/account", Some(&cookie)).await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    assert!(set_cookies(response.headers()).is_empty(), "no deletion");
    assert_eq!(
        site.layer.resolver().upstream_lookups(),
        lookups,
        "no upstream call"
    );
    // A case variant of the prefix is not ours.
    let response = site
        .get("/", Some(&format!("__host-authgate={token}")))
        .await;
    assert_eq!(body_string(response).await, "home: anonymous");
}

#[tokio::test]
async fn t_c4_oversized_and_malformed_values_cost_no_upstream_call() {
    let site = site().await;
    let lookups = site.layer.resolver().upstream_lookups();
    for (name, value) in [
        ("8 KB", "a".repeat(8 * 1024)),
        ("64 KB", "a".repeat(60 * 1024)),
        ("quoted", "\"VALID\"".to_owned()),
        ("percent junk", "%ZZ".to_owned()),
        (
            "T-C6 flow cookie value under the session name",
            "aGVsbG8+/w==".to_owned(),
        ),
    ] {
        let response = site
            .get("/account", Some(&format!("__Host-authgate={value}")))
            .await;
        assert_eq!(response.status(), StatusCode::SEE_OTHER, "{name}");
        let removal = set_cookie(response.headers(), "__Host-authgate").unwrap();
        assert!(
            is_removal(&removal),
            "{name}: a value that can never be valid is deleted"
        );
    }
    assert_eq!(site.layer.resolver().upstream_lookups(), lookups);
}

#[tokio::test]
async fn development_mode_drops_secure_and_the_prefix() {
    let dev = authgate::dev::DevUpstream::spawn().await.unwrap();
    let client = altogic::Client::new(dev.url(), dev.client_key()).unwrap();
    let config = AuthConfig::new("http://127.0.0.1:3000").unwrap(); // allow-fixed-port: an origin string, nothing binds it
    assert_eq!(config.session_cookie_name(), "authgate");
    let app = AuthLayer::new(config, client.clone()).layer(router(client.clone()));
    client
        .sign_up_with_email("devmode@example.test", "password-1", None)
        .await
        .unwrap();
    let request = Request::post("/signin")
        .header("content-type", "application/x-www-form-urlencoded")
        .header("origin", "http://127.0.0.1:3000") // allow-fixed-port: an origin string, nothing binds it
        .body(Body::from(
            "email=devmode%40example.test&password=password-1",
        ))
        .unwrap();
    let response = app.oneshot(request).await.unwrap();
    let cookie = set_cookie(response.headers(), "authgate").unwrap();
    assert_eq!(cookie.secure(), None);
    assert_eq!(cookie.http_only(), Some(true));
}

#[tokio::test]
async fn the_layer_wraps_any_tower_service() {
    use authgate::Auth;
    let dev = authgate::dev::DevUpstream::spawn().await.unwrap();
    let client = altogic::Client::new(dev.url(), dev.client_key()).unwrap();
    let response = client
        .sign_up_with_email("tower@example.test", "password-1", None)
        .await
        .unwrap();
    let token = response.session.unwrap().token.expose().to_owned();
    let service = tower::service_fn(|request: Request<Body>| async move {
        let auth = Auth::from_request(&request).expect("layer installed");
        let name = auth.user().await.map(|u| u.id.clone()).unwrap_or_default();
        Ok::<_, std::convert::Infallible>(http::Response::new(Body::from(name)))
    });
    let config = AuthConfig::new(ORIGIN).unwrap();
    let app = AuthLayer::new(config, client).layer(service);
    let request = Request::get("/")
        .header("cookie", format!("__Host-authgate={token}"))
        .body(Body::empty())
        .unwrap();
    let response = app.oneshot(request).await.unwrap();
    assert_eq!(response.headers()[CACHE_CONTROL], "private, no-store");
    assert!(!body_string(response).await.is_empty());
}

#[test]
fn public_types_are_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<AuthLayer>();
    assert_send_sync::<authgate::AuthService<Router>>();
    assert_send_sync::<CurrentUser>();
    assert_send_sync::<authgate::Auth>();
    assert_send_sync::<altogic::Client>();
    fn assert_send<T: Send>() {}
    assert_send::<authgate::ResponseFuture<<Router as tower::Service<Request<Body>>>::Future>>();
}
