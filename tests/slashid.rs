//! The SlashID upstream (issue 13) against the SlashID dev server
//! (`authgate::dev::slashid`) and a fault-injecting SlashID, all on
//! `127.0.0.1:0`. The app is driven in-process with `oneshot`; the
//! upstream traffic is real HTTP.
//!
//! Each test names the SECURITY.md items it covers (R1, R2, T-B1, T-B2,
//! T-D1, T-F1, T-G1, T-H1).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use authgate::dev::slashid::{DevAlgorithm, SlashIdDev};
use authgate::events::AuthEvents;
use authgate::slashid::{self, Client, UserClaims, buckets};
use authgate::test::TestKit;
use authgate::upstream::{Revocation, SignOutScope, Upstream};
use authgate::{
    Auth, AuthConfig, AuthLayer, AuthService, CurrentUser, ErrorKind, RequireGroup, SessionToken,
};
use axum::Router;
use axum::body::Body;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::header::{COOKIE, LOCATION, SET_COOKIE};
use http::{HeaderMap, Request, StatusCode};
use serde_json::{Value, json};
use tower::ServiceExt as _;
use url::Url;

const ORIGIN: &str = "https://app.example";
const SESSION: &str = "__Host-authgate";
const OTHER_ORG: &str = "org-b";

// ---------------------------------------------------------------------------
// The app

type App = AuthService<Router>;

struct Harness {
    dev: SlashIdDev,
    client: Client,
    app: App,
}

async fn account(user: CurrentUser) -> String {
    format!(
        "Hello {} of {} in [{}]",
        user.id,
        user.org.as_deref().unwrap_or("-"),
        user.groups.join(",")
    )
}

/// The org switch of an app: the new token through `Auth::sign_in`.
async fn switch(
    axum::extract::State(client): axum::extract::State<Client>,
    auth: Auth,
    axum::Form(form): axum::Form<BTreeMap<String, String>>,
) -> Response {
    let token = auth.token().unwrap().clone();
    match client.token_for_organization(&token, &form["org"]).await {
        Ok(grant) => {
            auth.sign_in(grant).unwrap();
            Redirect::to("/account").into_response()
        }
        Err(err) => (StatusCode::BAD_GATEWAY, err.to_string()).into_response(),
    }
}

fn config() -> AuthConfig {
    let (events, _) = AuthEvents::channel(64);
    AuthConfig::new(ORIGIN)
        .unwrap()
        .with_key([7u8; 64])
        .unwrap()
        .with_events(events)
        .with_failure_cooldown(Duration::from_millis(1))
}

fn app_for(client: &Client, config: AuthConfig) -> App {
    let router = Router::new()
        .route("/account", get(account))
        .route("/switch", post(switch))
        .merge(
            Router::new()
                .route("/admin", get(|| async { "admins only" }))
                .route_layer(RequireGroup::new("admin")),
        )
        .with_state(client.clone());
    AuthLayer::new(config, client.clone()).layer(router)
}

async fn dev_server(algorithm: DevAlgorithm) -> SlashIdDev {
    SlashIdDev::builder()
        .with_algorithm(algorithm)
        .with_organization(OTHER_ORG, "Org B")
        .with_person("admin@example.com", &["admin", "staff"])
        .spawn()
        .await
        .unwrap()
}

fn builder_for(dev: &SlashIdDev) -> slashid::ClientBuilder {
    Client::builder(dev.url(), dev.org_id())
        .with_hosted_login(dev.client_id())
        .with_accepted_organizations([OTHER_ORG])
        .with_jwks_min_refetch(Duration::ZERO)
        .with_timeout(Duration::from_millis(500))
}

async fn harness() -> Harness {
    harness_with(DevAlgorithm::Rs256, |b| b).await
}

async fn harness_with(
    algorithm: DevAlgorithm,
    tune: impl FnOnce(slashid::ClientBuilder) -> slashid::ClientBuilder,
) -> Harness {
    let dev = dev_server(algorithm).await;
    let client = tune(builder_for(&dev)).build().unwrap();
    let app = app_for(&client, config());
    Harness { dev, client, app }
}

impl Harness {
    async fn send(&self, request: Request<Body>) -> http::Response<Body> {
        self.app.clone().oneshot(request).await.unwrap()
    }

    async fn get(&self, path: &str, cookies: Option<&str>) -> http::Response<Body> {
        self.send(page_request("GET", path, cookies)).await
    }
}

fn page_request(method: &str, path: &str, cookies: Option<&str>) -> Request<Body> {
    let mut builder = Request::builder()
        .method(method)
        .uri(path)
        .header("accept", "text/html")
        .header("sec-fetch-site", "same-origin")
        .header("origin", ORIGIN);
    if let Some(cookies) = cookies {
        builder = builder.header(COOKIE, cookies);
    }
    builder.body(Body::empty()).unwrap()
}

fn form_request(path: &str, form: &str, cookies: &str) -> Request<Body> {
    Request::post(path)
        .header("accept", "text/html")
        .header("sec-fetch-site", "same-origin")
        .header("origin", ORIGIN)
        .header("content-type", "application/x-www-form-urlencoded")
        .header(COOKIE, cookies)
        .body(Body::from(form.to_owned()))
        .unwrap()
}

fn session(value: &str) -> String {
    format!("{SESSION}={value}")
}

#[derive(Default)]
struct Browser {
    jar: BTreeMap<String, String>,
}

impl Browser {
    fn header(&self) -> Option<String> {
        (!self.jar.is_empty()).then(|| {
            self.jar
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join("; ")
        })
    }

    fn absorb(&mut self, headers: &HeaderMap) {
        for cookie in set_cookies(headers) {
            if cookie.value().is_empty() {
                self.jar.remove(cookie.name());
            } else {
                self.jar
                    .insert(cookie.name().to_owned(), cookie.value().to_owned());
            }
        }
    }
}

fn set_cookies(headers: &HeaderMap) -> Vec<cookie::Cookie<'static>> {
    headers
        .get_all(SET_COOKIE)
        .iter()
        .map(|v| cookie::Cookie::parse(v.to_str().unwrap().to_owned()).unwrap())
        .collect()
}

fn set_cookie(headers: &HeaderMap, name: &str) -> Option<cookie::Cookie<'static>> {
    set_cookies(headers).into_iter().find(|c| c.name() == name)
}

fn is_removal(cookie: &cookie::Cookie<'_>) -> bool {
    cookie.value().is_empty() && cookie.max_age() == Some(time::Duration::ZERO)
}

fn location(response: &http::Response<Body>) -> &str {
    response.headers()[LOCATION].to_str().unwrap()
}

fn query_param(url: &str, name: &str) -> Option<String> {
    Url::parse(url)
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

async fn body_string(response: http::Response<Body>) -> String {
    use http_body_util::BodyExt as _;
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(bytes.to_vec()).unwrap()
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .build()
        .unwrap()
}

fn token(value: &str) -> SessionToken {
    SessionToken::new(value).unwrap()
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The claims of a good token of `dev`, to alter one at a time.
fn good_claims(dev: &SlashIdDev, person: &str) -> Value {
    let now = unix_now();
    json!({
        "iss": dev.url(), "aud": dev.org_id(), "oid": dev.org_id(), "sub": person,
        "person_id": person, "iat": now, "nbf": now, "exp": now + 3600,
        "person_type": "regular", "groups": ["staff"],
    })
}

/// `header.payload.signature` of a JWT, each part base64url.
fn parts(token: &str) -> Vec<String> {
    token.split('.').map(str::to_owned).collect()
}

fn b64(value: &Value) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(value).unwrap())
}

/// Asserts a page navigation with `cookie` is signed out and the cookie
/// cleared.
async fn assert_refused(h: &Harness, name: &str, cookie: &str) {
    let response = h.get("/account", Some(&session(cookie))).await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER, "{name}");
    assert!(location(&response).contains("/signin"), "{name}");
    assert!(
        set_cookie(response.headers(), SESSION)
            .as_ref()
            .is_some_and(is_removal),
        "{name}: cookie cleared"
    );
}

// ---------------------------------------------------------------------------
// Local verification (issue 13 points 1 and 9)

/// RS256 and ES256 tokens verify locally; after the one key-set fetch, a
/// warm request and a cache miss on a new token make zero network calls.
#[tokio::test]
async fn rs256_and_es256_tokens_verify_locally_and_warm_requests_make_no_call() {
    for algorithm in [DevAlgorithm::Rs256, DevAlgorithm::Es256] {
        let h = harness_with(algorithm, |b| b).await;
        let jwt = h.dev.issue_token("ada@example.com");
        let header: Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(&parts(&jwt)[0]).unwrap()).unwrap();
        let expected = match algorithm {
            DevAlgorithm::Rs256 => "RS256",
            _ => "ES256",
        };
        assert_eq!(header["alg"], expected);

        let first = h.get("/account", Some(&session(&jwt))).await;
        assert_eq!(first.status(), StatusCode::OK, "{algorithm:?}");
        let person = h.dev.person_id("ada@example.com");
        assert!(body_string(first).await.contains(&person));
        assert_eq!(h.dev.calls(), 1, "one key-set fetch");
        assert_eq!(h.dev.calls_to("/.well-known/jwks.json"), 1);

        // Warm: served from the cache, no call at all.
        for _ in 0..3 {
            let warm = h.get("/account", Some(&session(&jwt))).await;
            assert_eq!(warm.status(), StatusCode::OK);
        }
        // A cache miss on another token: verified with the cached keys.
        let other = h.dev.issue_token("grace@example.com");
        let miss = h.get("/account", Some(&session(&other))).await;
        assert_eq!(miss.status(), StatusCode::OK);
        assert_eq!(
            h.dev.calls(),
            1,
            "{algorithm:?}: no network after the key set"
        );
    }
}

/// Point 8: every way a token can be wrong signs the browser out (the
/// cookie is cleared), and none of them makes more than the key-set fetch.
#[tokio::test]
async fn expired_early_foreign_forged_and_confused_tokens_are_invalid() {
    let h = harness_with(DevAlgorithm::Rs256, |b| {
        b.with_leeway(Duration::from_secs(5))
    })
    .await;
    let person = h.dev.person_id("ada@example.com");
    let good = good_claims(&h.dev, &person);
    let with = |key: &str, value: Value| {
        let mut claims = good.clone();
        claims[key] = value;
        h.dev.sign_claims(&claims)
    };
    let now = unix_now();
    // Sanity: the good claims are accepted.
    let ok = h.dev.sign_claims(&good);
    assert_eq!(
        h.get("/account", Some(&session(&ok))).await.status(),
        StatusCode::OK
    );

    // An `id_token` addressed to the hosted-login client is accepted too.
    let for_client = with("aud", json!(h.dev.client_id()));
    assert_eq!(
        h.get("/account", Some(&session(&for_client)))
            .await
            .status(),
        StatusCode::OK
    );

    let valid = h.dev.issue_token("ada@example.com");
    let p = parts(&valid);
    let mut forged_payload: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(&p[1]).unwrap()).unwrap();
    forged_payload["person_id"] = json!("someone-else");
    let wrong_signature = format!("{}.{}.{}", p[0], b64(&forged_payload), p[2]);
    let kid = h.dev.current_kid();
    let alg_none = format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "typ": "JWT", "kid": kid})),
        p[1]
    );
    // HS256 "signed" with the public key (RFC 8725 §2.1): the key set's
    // JSON is what an attacker has.
    let jwks: Value = http()
        .get(format!("{}/.well-known/jwks.json", h.dev.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let public = serde_json::to_vec(&jwks["keys"][0]).unwrap();
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    header.kid = Some(kid.clone());
    let hs256 = jsonwebtoken::encode(
        &header,
        &good,
        &jsonwebtoken::EncodingKey::from_secret(&public),
    )
    .unwrap();
    let mut no_person = good.clone();
    no_person.as_object_mut().unwrap().remove("person_id");
    no_person.as_object_mut().unwrap().remove("sub");

    let cases = [
        ("expired", with("exp", json!(now - 60))),
        ("not yet valid", with("nbf", json!(now + 3600))),
        (
            "wrong issuer",
            with("iss", json!("https://api.slashid.com")),
        ),
        ("wrong audience", with("aud", json!("someone-elses-org"))),
        ("no audience", {
            let mut c = good.clone();
            c.as_object_mut().unwrap().remove("aud");
            h.dev.sign_claims(&c)
        }),
        ("no exp", {
            let mut c = good.clone();
            c.as_object_mut().unwrap().remove("exp");
            h.dev.sign_claims(&c)
        }),
        ("wrong signature", wrong_signature),
        ("alg none", alg_none),
        ("hs256 with the public key", hs256),
        ("no person_id", h.dev.sign_claims(&no_person)),
        ("not a jwt", "garbage-token".to_owned()),
    ];
    let calls = h.dev.calls();
    for (name, jwt) in &cases {
        assert_refused(&h, name, jwt).await;
    }
    assert_eq!(h.dev.calls(), calls, "decided locally");
    // Within the leeway, a token from a clock a little ahead passes.
    let skewed = with("nbf", json!(now + 3));
    assert_eq!(
        h.get("/account", Some(&session(&skewed))).await.status(),
        StatusCode::OK
    );
}

/// Point 1 (T-H1): an unknown `kid` triggers one refetch; after a
/// rotation the new key is found; a `kid` the fresh set does not have is
/// invalid. With the rate limit, a burst of unknown `kid`s costs at most
/// one fetch and keeps the cookie (an outage, not a verdict).
#[tokio::test]
async fn an_unknown_kid_refetches_once_and_finds_the_rotated_key() {
    let h = harness().await;
    let before = h.dev.issue_token("ada@example.com");
    assert_eq!(
        h.get("/account", Some(&session(&before))).await.status(),
        StatusCode::OK
    );
    assert_eq!(h.dev.calls_to("/.well-known/jwks.json"), 1);

    let new_kid = h.dev.rotate_keys();
    assert_eq!(new_kid, "dev-es256-a");
    let after = h.dev.issue_token("grace@example.com");
    assert_eq!(
        h.get("/account", Some(&session(&after))).await.status(),
        StatusCode::OK
    );
    assert_eq!(h.dev.calls_to("/.well-known/jwks.json"), 2, "one refetch");

    // A token of the old key still verifies (it is still published).
    let old = h.get("/account", Some(&session(&before))).await;
    assert_eq!(old.status(), StatusCode::OK);

    // A kid nobody published: refetched, then invalid.
    let p = parts(&after);
    let forged_header = b64(&json!({"alg": "ES256", "typ": "JWT", "kid": "nobody"}));
    let forged = format!("{forged_header}.{}.{}", p[1], p[2]);
    assert_refused(&h, "unknown kid", &forged).await;
    assert_eq!(h.dev.calls_to("/.well-known/jwks.json"), 3);

    // Rate-limited: a burst of unknown kids, no more fetches, cookie kept.
    let limited = harness_with(DevAlgorithm::Rs256, |b| {
        b.with_jwks_min_refetch(Duration::from_secs(60))
    })
    .await;
    let jwt = limited.dev.issue_token("ada@example.com");
    assert_eq!(
        limited.get("/account", Some(&session(&jwt))).await.status(),
        StatusCode::OK
    );
    limited.dev.rotate_keys();
    for _ in 0..5 {
        let fresh = limited.dev.issue_token("grace@example.com");
        let response = limited.get("/account", Some(&session(&fresh))).await;
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(set_cookie(response.headers(), SESSION).is_none(), "kept");
    }
    assert_eq!(limited.dev.calls_to("/.well-known/jwks.json"), 1);
}

/// Point 1: a scheduled refresh that no longer has a key withdraws it:
/// its tokens stop verifying.
#[tokio::test]
async fn a_key_withdrawn_from_the_set_verifies_nothing() {
    let h = harness_with(DevAlgorithm::Rs256, |b| {
        b.with_jwks_refresh(Duration::from_millis(1))
    })
    .await;
    let first = h.dev.issue_token("ada@example.com");
    let second = h.dev.issue_token("ada@example.com");
    assert_eq!(
        h.get("/account", Some(&session(&first))).await.status(),
        StatusCode::OK
    );
    // Two rotations: the first key is no longer published.
    h.dev.rotate_keys();
    h.dev.rotate_keys();
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert_refused(&h, "withdrawn key", &second).await;
}

/// Point 1, R1/R2: a key set that cannot be fetched is an outage: never
/// fetched → 503 with the cookie kept; fetched before → served from the
/// last good set while the scheduled refresh fails.
#[tokio::test]
async fn a_key_set_outage_keeps_the_cookie_and_the_last_good_set() {
    let h = harness_with(DevAlgorithm::Rs256, |b| {
        b.with_jwks_refresh(Duration::from_millis(1))
    })
    .await;
    let jwt = h.dev.issue_token("ada@example.com");
    h.dev.set_jwks_failure(Some(503));
    let never = h.get("/account", Some(&session(&jwt))).await;
    assert_eq!(never.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(set_cookie(never.headers(), SESSION).is_none(), "kept");

    h.dev.set_jwks_failure(None);
    // Past the failure cooldown (1 ms here).
    tokio::time::sleep(Duration::from_millis(20)).await;
    let ok = h.get("/account", Some(&session(&jwt))).await;
    assert_eq!(ok.status(), StatusCode::OK);
    let fetches = h.dev.calls_to("/.well-known/jwks.json");

    h.dev.set_jwks_failure(Some(500));
    tokio::time::sleep(Duration::from_millis(5)).await;
    let other = h.dev.issue_token("grace@example.com");
    let served = h.get("/account", Some(&session(&other))).await;
    assert_eq!(served.status(), StatusCode::OK, "the last good set");
    assert!(
        h.dev.calls_to("/.well-known/jwks.json") > fetches,
        "the refresh was tried"
    );
}

/// Point 1: a token container is verified and unwrapped; SlashID calls
/// get the inner user token.
#[tokio::test]
async fn token_containers_are_unwrapped() {
    let h = harness_with(DevAlgorithm::Es256, |b| {
        b.with_remote_check(Duration::from_secs(60))
    })
    .await;
    let container = h.dev.issue_container("ada@example.com");
    assert!(
        jsonwebtoken::dangerous::insecure_decode::<Value>(&container)
            .map(|d| d.claims["user_token"].is_string())
            .unwrap_or(false)
    );
    let response = h.get("/account", Some(&session(&container))).await;
    assert_eq!(response.status(), StatusCode::OK);
    let person = h.dev.person_id("ada@example.com");
    assert!(body_string(response).await.contains(&person));
    assert_eq!(
        h.dev.calls_to("/token/validate"),
        1,
        "the inner token was valid"
    );
    let validity = h.client.validate_token(&token(&container)).await.unwrap();
    assert!(validity.valid);
    let grant = h.client.grant_for_token(&token(&container)).await.unwrap();
    assert_eq!(grant.user.unwrap().id, person);
    // The container's own claims (the SDK's `tokenContainerClaims`),
    // verified, without the inner token; none for a plain user token.
    let claims = h
        .client
        .token_container_claims(&token(&container))
        .await
        .unwrap()
        .expect("a container");
    assert!(claims.get("user_token").is_none());
    assert!(claims.get("exp").is_some());
    let plain = h.dev.issue_token("ada@example.com");
    assert!(
        h.client
            .token_container_claims(&token(&plain))
            .await
            .unwrap()
            .is_none()
    );
    let mut forged = container.clone();
    forged.push('x');
    assert!(
        h.client
            .token_container_claims(&token(&forged))
            .await
            .is_err()
    );
}

// ---------------------------------------------------------------------------
// Remote check (point 2) and R1

/// Point 2: with the remote check, `/token/validate` runs at the recheck
/// time and catches a revoked token and an inactive person.
#[tokio::test]
async fn the_remote_check_catches_revocation_and_inactive_persons() {
    let h = harness_with(DevAlgorithm::Rs256, |b| {
        b.with_remote_check(Duration::from_millis(50))
    })
    .await;
    let jwt = h.dev.issue_token("ada@example.com");
    assert_eq!(
        h.get("/account", Some(&session(&jwt))).await.status(),
        StatusCode::OK
    );
    assert_eq!(h.dev.calls_to("/token/validate"), 1);
    // Within the interval: cached, no call.
    assert_eq!(
        h.get("/account", Some(&session(&jwt))).await.status(),
        StatusCode::OK
    );
    assert_eq!(h.dev.calls_to("/token/validate"), 1);

    h.dev.revoke_all();
    tokio::time::sleep(Duration::from_millis(120)).await;
    assert_refused(&h, "revoked", &jwt).await;

    let other = h.dev.issue_token("grace@example.com");
    assert_eq!(
        h.get("/account", Some(&session(&other))).await.status(),
        StatusCode::OK
    );
    h.dev.deactivate("grace@example.com");
    tokio::time::sleep(Duration::from_millis(120)).await;
    assert_refused(&h, "person not active", &other).await;
}

#[derive(Clone, Copy, Debug)]
enum Fault {
    Answer(u16, &'static str),
    Hang,
}

/// A SlashID whose key set works and whose `/token/validate` misbehaves.
#[derive(Clone)]
struct FaultServer {
    url: String,
    fault: Arc<Mutex<Fault>>,
    calls: Arc<AtomicUsize>,
}

impl FaultServer {
    /// With `jwks`, the key set is served; without, it faults too.
    async fn spawn(jwks: Option<Value>) -> Self {
        let fault = Arc::new(Mutex::new(Fault::Answer(200, "{}")));
        let calls = Arc::new(AtomicUsize::new(0));
        let (f, n) = (fault.clone(), calls.clone());
        let mut router = Router::new();
        if let Some(jwks) = jwks {
            router = router.route(
                "/.well-known/jwks.json",
                get(move || {
                    let jwks = jwks.clone();
                    async move { axum::Json(jwks) }
                }),
            );
        }
        let router = router.fallback(move || {
            let fault = *f.lock().unwrap();
            n.fetch_add(1, Ordering::SeqCst);
            async move {
                match fault {
                    Fault::Answer(status, body) => {
                        let content_type = if body.starts_with('{') {
                            "application/json"
                        } else {
                            "text/html"
                        };
                        (
                            StatusCode::from_u16(status).unwrap(),
                            [("content-type", content_type)],
                            body,
                        )
                            .into_response()
                    }
                    Fault::Hang => {
                        tokio::time::sleep(Duration::from_secs(30)).await;
                        StatusCode::OK.into_response()
                    }
                }
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, router).await });
        Self { url, fault, calls }
    }

    fn set(&self, fault: Fault) {
        *self.fault.lock().unwrap() = fault;
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

/// R1 for the remote check: only `{"valid": false}` and a 401 saying the
/// authentication expired clear the cookie; 5xx, 429, a timeout, a
/// non-JSON answer, a bare 401 and a 404 keep it (503, never a redirect);
/// a refused connection too.
#[tokio::test]
async fn only_a_definitive_validate_answer_clears_the_cookie() {
    let dev = dev_server(DevAlgorithm::Rs256).await;
    let jwks: Value = http()
        .get(format!("{}/.well-known/jwks.json", dev.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let server = FaultServer::spawn(Some(jwks)).await;
    let now = unix_now();
    let jwt = dev.sign_claims(&json!({
        "iss": server.url, "aud": dev.org_id(), "oid": dev.org_id(), "person_id": "p1",
        "iat": now, "exp": now + 3600
    }));
    let app_for_fault = |base: &str| {
        let client = Client::builder(base, dev.org_id())
            .with_remote_check(Duration::from_secs(60))
            .with_timeout(Duration::from_millis(300))
            .build()
            .unwrap();
        app_for(&client, config())
    };
    let cases: &[(&str, Fault, bool)] = &[
        ("500", Fault::Answer(500, r#"{"errors":[]}"#), false),
        (
            "502 html",
            Fault::Answer(502, "<html>bad gateway</html>"),
            false,
        ),
        ("503", Fault::Answer(503, "{}"), false),
        (
            "429",
            Fault::Answer(
                429,
                r#"{"errors":[{"httpcode":429,"message":"rate limit"}]}"#,
            ),
            false,
        ),
        ("timeout", Fault::Hang, false),
        (
            "200 not json",
            Fault::Answer(200, "<html>hello</html>"),
            false,
        ),
        (
            "200 no valid",
            Fault::Answer(200, r#"{"result":{}}"#),
            false,
        ),
        ("401 html", Fault::Answer(401, "<html>login</html>"), false),
        (
            "404",
            Fault::Answer(
                404,
                r#"{"errors":[{"httpcode":404,"message":"not found"}]}"#,
            ),
            false,
        ),
        (
            "valid false",
            Fault::Answer(
                200,
                r#"{"result":{"valid":false,"invalidity_reason":"expired"}}"#,
            ),
            true,
        ),
        (
            "401 authentication has expired",
            Fault::Answer(
                401,
                r#"{"errors":[{"httpcode":401,"message":"authentication has expired"}]}"#,
            ),
            true,
        ),
    ];
    for (name, fault, definitive) in cases {
        server.set(*fault);
        let app = app_for_fault(&server.url);
        let calls = server.calls();
        let response = app
            .clone()
            .oneshot(page_request("GET", "/account", Some(&session(&jwt))))
            .await
            .unwrap();
        assert_eq!(server.calls(), calls + 1, "{name}");
        let removal = set_cookie(response.headers(), SESSION);
        if *definitive {
            assert_eq!(response.status(), StatusCode::SEE_OTHER, "{name}");
            assert!(removal.as_ref().is_some_and(is_removal), "{name}");
        } else {
            assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE, "{name}");
            assert!(removal.is_none(), "{name}: cookie kept");
        }
    }
    // A valid answer signs in.
    server.set(Fault::Answer(200, r#"{"result":{"valid":true}}"#));
    let response = app_for_fault(&server.url)
        .oneshot(page_request("GET", "/account", Some(&session(&jwt))))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);

    // Connection refused: nobody listens; the key set was never fetched.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let response = app_for_fault(&dead)
        .oneshot(page_request("GET", "/account", Some(&session(&jwt))))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(set_cookie(response.headers(), SESSION).is_none());
}

/// R1 for the key-set fetch: whatever goes wrong (5xx, 429, 404, a
/// timeout, a non-JSON answer, a set without usable keys) is an outage:
/// 503, the cookie kept, never a sign-out.
#[tokio::test]
async fn a_failing_key_set_fetch_is_always_an_outage() {
    let dev = dev_server(DevAlgorithm::Es256).await;
    let server = FaultServer::spawn(None).await;
    let now = unix_now();
    let jwt = dev.sign_claims(&json!({
        "iss": server.url, "aud": dev.org_id(), "person_id": "p1", "iat": now, "exp": now + 3600
    }));
    let cases: &[(&str, Fault)] = &[
        ("500", Fault::Answer(500, "{}")),
        ("502 html", Fault::Answer(502, "<html>bad gateway</html>")),
        ("429", Fault::Answer(429, "{}")),
        ("404", Fault::Answer(404, r#"{"errors":[]}"#)),
        ("timeout", Fault::Hang),
        ("200 not json", Fault::Answer(200, "<html>hello</html>")),
        ("200 no keys", Fault::Answer(200, r#"{"keys":[]}"#)),
        (
            "200 only a symmetric key",
            Fault::Answer(200, r#"{"keys":[{"kty":"oct","k":"c2VjcmV0","kid":"h"}]}"#),
        ),
    ];
    for (name, fault) in cases {
        server.set(*fault);
        let client = Client::builder(&server.url, dev.org_id())
            .with_timeout(Duration::from_millis(300))
            .build()
            .unwrap();
        let calls = server.calls();
        let response = app_for(&client, config())
            .oneshot(page_request("GET", "/account", Some(&session(&jwt))))
            .await
            .unwrap();
        assert_eq!(server.calls(), calls + 1, "{name}");
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE, "{name}");
        assert!(
            set_cookie(response.headers(), SESSION).is_none(),
            "{name}: kept"
        );
    }
}

/// T-H2: a token of the dev server's short lifetime is served until its
/// `exp`, then refused and its cookie cleared (the layer never serves a
/// session past `exp`, whatever the leeway).
#[tokio::test]
async fn a_token_is_served_until_its_exp_and_no_longer() {
    let h = harness().await;
    h.dev.set_token_lifetime(Duration::from_secs(2));
    let jwt = h.dev.issue_token("ada@example.com");
    assert_eq!(
        h.get("/account", Some(&session(&jwt))).await.status(),
        StatusCode::OK
    );
    tokio::time::sleep(Duration::from_millis(3100)).await;
    assert_refused(&h, "past exp", &jwt).await;
}

// ---------------------------------------------------------------------------
// Authorization (point 4)

/// Point 4: a signed-in user outside the group gets 403 (never a sign-in
/// redirect, cookie untouched); a member gets the page; a signed-out
/// browser gets `CurrentUser`'s redirect.
#[tokio::test]
async fn require_group_answers_403_to_members_of_other_groups() {
    let h = harness().await;
    let admin = h.dev.issue_token("admin@example.com");
    let plain = h.dev.issue_token("ada@example.com");

    let ok = h.get("/admin", Some(&session(&admin))).await;
    assert_eq!(ok.status(), StatusCode::OK);
    assert_eq!(body_string(ok).await, "admins only");

    let refused = h.get("/admin", Some(&session(&plain))).await;
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    assert!(refused.headers().get(LOCATION).is_none());
    assert!(set_cookie(refused.headers(), SESSION).is_none());
    assert!(
        body_string(refused)
            .await
            .contains("not open to your account")
    );

    let api = h
        .send(
            Request::get("/admin")
                .header(COOKIE, session(&plain))
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(api.status(), StatusCode::FORBIDDEN);

    let anonymous = h.get("/admin", None).await;
    assert_eq!(anonymous.status(), StatusCode::SEE_OTHER);
    assert!(location(&anonymous).contains("/signin"));
}

/// Point 4, upstream-neutral: the guard with the test kit's upstream.
#[tokio::test]
async fn require_group_works_with_the_test_kit() {
    let kit = TestKit::new();
    let app = kit.layer().layer(
        Router::new()
            .route("/admin", get(|| async { "admins only" }))
            .route_layer(RequireGroup::new("admin")),
    );
    let admin = kit.user_in_groups("root@example.com", &["admin"]);
    let plain = kit.user_in_groups("ada@example.com", &["staff"]);
    let ok = app
        .clone()
        .oneshot(kit.signed_in(&admin).get("/admin"))
        .await
        .unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
    let refused = app
        .clone()
        .oneshot(kit.signed_in(&plain).get("/admin"))
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    let anonymous = app.oneshot(kit.anonymous().get("/admin")).await.unwrap();
    assert_eq!(anonymous.status(), StatusCode::SEE_OTHER);
}

// ---------------------------------------------------------------------------
// Org switch, sign-out (points 5, 6)

/// Point 5: `token_for_organization` gives a grant; `Auth::sign_in` sets
/// it; the old organization's session is forgotten (T-F1).
#[tokio::test]
async fn org_switch_replaces_the_cookie_and_forgets_the_old_org() {
    let h = harness().await;
    let jwt = h.dev.issue_token("ada@example.com");
    let page = h.get("/account", Some(&session(&jwt))).await;
    assert!(body_string(page).await.contains(h.dev.org_id()));

    let response = h
        .send(form_request("/switch", "org=org-b", &session(&jwt)))
        .await;
    assert_eq!(
        response.status(),
        StatusCode::SEE_OTHER,
        "{}",
        location(&response)
    );
    let new = set_cookie(response.headers(), SESSION).unwrap();
    assert!(!new.value().is_empty() && new.value() != jwt);
    let page = h.get("/account", Some(&session(new.value()))).await;
    assert_eq!(page.status(), StatusCode::OK);
    assert!(body_string(page).await.contains("of org-b"));

    // The old organization's session is over here.
    let old = h.get("/account", Some(&session(&jwt))).await;
    assert_eq!(old.status(), StatusCode::SEE_OTHER);

    // An organization the client does not accept: nothing is sent.
    let calls = h.dev.calls_to("/token");
    let err = h
        .client
        .token_for_organization(&token(new.value()), "org-z")
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    assert_eq!(h.dev.calls_to("/token"), calls);
}

async fn wait_for(what: impl Fn() -> bool) {
    for _ in 0..100 {
        if what() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Point 5/6, T-D1: sign-out revokes the token at SlashID and tombstones
/// it here.
#[tokio::test]
async fn sign_out_revokes_the_token() {
    let h = harness().await;
    let caps = h.client.capabilities();
    assert_eq!(caps.revocation, Revocation::UntilExpiry);
    assert!(caps.supports_sign_out(SignOutScope::This));
    assert!(!caps.supports_sign_out(SignOutScope::All));
    assert!(caps.has_provider("slashid"));

    let jwt = h.dev.issue_token("ada@example.com");
    assert_eq!(
        h.get("/account", Some(&session(&jwt))).await.status(),
        StatusCode::OK
    );
    let response = h
        .send(page_request("POST", "/auth/signout", Some(&session(&jwt))))
        .await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    assert!(is_removal(
        &set_cookie(response.headers(), SESSION).unwrap()
    ));
    wait_for(|| h.dev.calls_to("/token/revoke") == 1).await;
    assert_eq!(h.dev.calls_to("/token/revoke"), 1);
    let validity = h.client.validate_token(&token(&jwt)).await.unwrap();
    assert!(!validity.valid);

    let replay = h.get("/account", Some(&session(&jwt))).await;
    assert_eq!(replay.status(), StatusCode::SEE_OTHER, "tombstoned");
    // A second revoke (already revoked) is not an error (§3.2).
    h.client.logout(&token(&jwt)).await.unwrap();
}

// ---------------------------------------------------------------------------
// Hosted login (point 6)

/// Plays the browser on the dev server's login page: where it sends the
/// browser back.
async fn log_in(authorize_url: &str, email: &str, groups: &str) -> String {
    let page = http().get(authorize_url).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let mut form: Vec<(String, String)> = Url::parse(authorize_url)
        .unwrap()
        .query_pairs()
        .filter(|(k, _)| k != "scope" && k != "prompt")
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    form.push(("email".into(), email.into()));
    form.push(("groups".into(), groups.into()));
    form.push(("decision".into(), "allow".into()));
    let answer = http()
        .post(authorize_url.split('?').next().unwrap())
        .form(&form)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 303);
    answer.headers()["location"].to_str().unwrap().to_owned()
}

fn app_path(url: &str) -> String {
    let url = Url::parse(url).unwrap();
    assert_eq!(url.origin().ascii_serialization(), ORIGIN, "{url}");
    format!("{}?{}", url.path(), url.query().unwrap_or(""))
}

/// Point 6, T-B1, T-B2: hosted login through `{prefix}/signin/slashid`
/// and `{prefix}/callback`: PKCE S256, `state` = the flow, one code
/// exchange, the `id_token` becomes the session.
#[tokio::test]
async fn hosted_login_signs_in_through_the_layer_routes() {
    let h = harness().await;
    let mut browser = Browser::default();
    let start = h.get("/auth/signin/slashid?return_to=%2Fadmin", None).await;
    assert_eq!(start.status(), StatusCode::SEE_OTHER);
    browser.absorb(start.headers());
    let authorize = location(&start).to_owned();
    assert!(authorize.starts_with(&format!("{}/oauth2/authorize?", h.dev.url())));
    assert_eq!(
        query_param(&authorize, "code_challenge_method").unwrap(),
        "S256"
    );
    assert_eq!(query_param(&authorize, "code_challenge").unwrap().len(), 43);
    assert_eq!(
        query_param(&authorize, "client_id").unwrap(),
        h.dev.client_id()
    );
    assert_eq!(query_param(&authorize, "response_type").unwrap(), "code");
    assert_eq!(
        query_param(&authorize, "redirect_uri").unwrap(),
        format!("{ORIGIN}/auth/callback")
    );
    assert!(
        !authorize.contains("verifier"),
        "the verifier never travels"
    );
    let state = query_param(&authorize, "state").unwrap();
    assert!(state.len() >= 43);

    let back = log_in(&authorize, "lin@example.com", "admin").await;
    assert_eq!(query_param(&back, "state").unwrap(), state);
    let landing = h.get(&app_path(&back), browser.header().as_deref()).await;
    assert_eq!(landing.status(), StatusCode::SEE_OTHER);
    assert_eq!(location(&landing), format!("{ORIGIN}/admin"));
    browser.absorb(landing.headers());
    assert_eq!(h.dev.calls_to("/oauth2/tokens"), 1);
    let page = h.get("/admin", browser.header().as_deref()).await;
    assert_eq!(page.status(), StatusCode::OK);

    // Replaying the landing: refused, no second exchange (T-B1.7).
    let replay = h.get(&app_path(&back), browser.header().as_deref()).await;
    assert_eq!(replay.status(), StatusCode::BAD_REQUEST);
    assert_eq!(h.dev.calls_to("/oauth2/tokens"), 1);

    // Re-authentication (step-up): `prompt=login` reaches SlashID.
    let again = h
        .get(
            "/auth/signin/slashid?prompt=login",
            browser.header().as_deref(),
        )
        .await;
    assert_eq!(query_param(location(&again), "prompt").unwrap(), "login");
}

/// T-B1: a landing from another browser, with a wrong state or without a
/// flow never reaches SlashID's token endpoint.
#[tokio::test]
async fn a_landing_from_another_browser_never_reaches_slashid() {
    let h = harness().await;
    let mut victim = Browser::default();
    let start = h.get("/auth/signin/slashid", None).await;
    victim.absorb(start.headers());
    let back = log_in(location(&start), "mallory@example.com", "").await;

    // The attacker's landing in another browser (no flow cookie).
    let other = h.get(&app_path(&back), None).await;
    assert_eq!(other.status(), StatusCode::BAD_REQUEST);
    assert!(set_cookie(other.headers(), SESSION).is_none());

    // The right browser, a wrong state.
    let code = query_param(&back, "code").unwrap();
    let wrong = h
        .get(
            &format!("/auth/callback?code={code}&state=WRONG"),
            victim.header().as_deref(),
        )
        .await;
    assert_eq!(wrong.status(), StatusCode::BAD_REQUEST);
    assert_eq!(h.dev.calls_to("/oauth2/tokens"), 0, "no exchange");

    // A forged code with the right state: exchanged once, refused.
    let state = query_param(&back, "state").unwrap();
    let forged = h
        .get(
            &format!("/auth/callback?code=forged&state={state}"),
            victim.header().as_deref(),
        )
        .await;
    assert_eq!(forged.status(), StatusCode::BAD_REQUEST);
    assert!(set_cookie(forged.headers(), SESSION).is_none_or(|c| c.value().is_empty()));
}

/// R1 for the code exchange: a 5xx or a timeout at `/oauth2/tokens` is
/// "try again" (503, no session, no sign-out); a 4xx (`invalid_grant`) is
/// a refused landing (400).
#[tokio::test]
async fn the_code_exchange_fails_softly_on_outages_and_refuses_bad_codes() {
    let server = FaultServer::spawn(None).await;
    let client = Client::builder(&server.url, "dev-org")
        .with_hosted_login("dev-client")
        .with_timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let app = app_for(&client, config());
    let cases: &[(&str, Fault, StatusCode)] = &[
        (
            "502",
            Fault::Answer(502, "<html>bad gateway</html>"),
            StatusCode::SERVICE_UNAVAILABLE,
        ),
        ("timeout", Fault::Hang, StatusCode::SERVICE_UNAVAILABLE),
        (
            "200 not json",
            Fault::Answer(200, "<html>x</html>"),
            StatusCode::SERVICE_UNAVAILABLE,
        ),
        (
            "400 invalid_grant",
            Fault::Answer(400, r#"{"error":"invalid_grant"}"#),
            StatusCode::BAD_REQUEST,
        ),
    ];
    for (name, fault, status) in cases {
        server.set(*fault);
        let mut browser = Browser::default();
        let start = app
            .clone()
            .oneshot(page_request("GET", "/auth/signin/slashid", None))
            .await
            .unwrap();
        browser.absorb(start.headers());
        let state = query_param(location(&start), "state").unwrap();
        let calls = server.calls();
        let landing = app
            .clone()
            .oneshot(page_request(
                "GET",
                &format!("/auth/callback?code=c0de&state={state}"),
                browser.header().as_deref(),
            ))
            .await
            .unwrap();
        assert_eq!(server.calls(), calls + 1, "{name}: one exchange");
        assert_eq!(landing.status(), *status, "{name}");
        assert!(
            set_cookie(landing.headers(), SESSION).is_none(),
            "{name}: no session"
        );
    }
}

/// T-B2: SlashID (the dev server, as the wire protocol says) refuses a
/// code exchanged with another verifier, so a stolen code is worthless
/// without the flow cookie's verifier.
#[tokio::test]
async fn a_code_with_the_wrong_verifier_is_refused() {
    let h = harness().await;
    let start = h.get("/auth/signin/slashid", None).await;
    let back = log_in(location(&start), "ada@example.com", "").await;
    let code = query_param(&back, "code").unwrap();
    let answer = http()
        .post(format!("{}/oauth2/tokens", h.dev.url()))
        .form(&[
            ("client_id", h.dev.client_id()),
            ("code", code.as_str()),
            (
                "code_verifier",
                "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk",
            ),
            ("grant_type", "authorization_code"),
            ("redirect_uri", &format!("{ORIGIN}/auth/callback")),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 400);
    let body: Value = answer.json().await.unwrap();
    assert_eq!(body["error"], "invalid_grant");
}

// ---------------------------------------------------------------------------
// The typed client (point 5)

/// Point 5: every server-side operation of the SDK's `User` against the
/// dev server.
#[tokio::test]
async fn every_typed_client_operation_works() {
    let h = harness_with(DevAlgorithm::Rs256, |b| {
        b.with_api_key("dev-api-key").with_groups_claim("groups")
    })
    .await;
    let jwt = token(&h.dev.issue_token("admin@example.com"));
    let c = &h.client;

    // Claims (point 3).
    let grant = c.grant_for_token(&jwt).await.unwrap();
    let user = grant.user.clone().unwrap();
    assert_eq!(user.email.as_deref(), Some("admin@example.com"));
    assert_eq!(user.groups, ["admin", "staff"]);
    assert_eq!(user.org.as_deref(), Some(h.dev.org_id()));
    assert!(!user.anonymous);
    let claims = UserClaims::of(&user).unwrap();
    assert!(claims.first_token);
    assert_eq!(claims.authenticated_methods, ["email_link"]);
    assert_eq!(claims.oid.as_deref(), Some(h.dev.org_id()));
    assert!(claims.is_recent(
        Duration::from_secs(60),
        Some("email_link"),
        SystemTime::now()
    ));
    assert_eq!(c.get_groups(&jwt).await.unwrap(), ["admin", "staff"]);

    // Validity.
    assert!(c.validate_token(&jwt).await.unwrap().valid);
    assert!(c.is_authenticated(&jwt).await.unwrap());
    assert!(!c.is_authenticated(&token("garbage")).await.unwrap());

    // `/me`.
    let me = c.me(&jwt).await.unwrap();
    assert_eq!(me.person["person_id"], user.id.as_str());
    let orgs = c.get_organizations(&jwt).await.unwrap();
    assert!(orgs.iter().any(|o| o.id == OTHER_ORG));
    let handles = c.get_handles(&jwt).await.unwrap();
    assert_eq!(handles[0].kind, "email_address");
    assert_eq!(handles[0].value, "admin@example.com");

    // Attributes.
    let mut attributes = serde_json::Map::new();
    attributes.insert("theme".into(), json!("dark"));
    attributes.insert("lang".into(), json!("fr"));
    c.set_attributes(&jwt, buckets::END_USER_READ_WRITE, &attributes)
        .await
        .unwrap();
    let all = c
        .get_attributes(&jwt, buckets::END_USER_READ_WRITE, &[])
        .await
        .unwrap();
    assert_eq!(all.len(), 2);
    let some = c
        .get_attributes(&jwt, buckets::END_USER_READ_WRITE, &["theme"])
        .await
        .unwrap();
    assert_eq!(some["theme"], "dark");
    assert_eq!(some.len(), 1);
    c.delete_attributes(&jwt, buckets::END_USER_READ_WRITE, &["theme"])
        .await
        .unwrap();
    let left = c
        .get_attributes(&jwt, buckets::END_USER_READ_WRITE, &[])
        .await
        .unwrap();
    assert!(!left.contains_key("theme"));
    // Server-to-server with the API key.
    let by_api = c
        .api(
            http::Method::GET,
            &[
                "persons",
                &user.id,
                "attributes",
                buckets::END_USER_READ_WRITE,
            ],
            &[],
            None,
        )
        .await
        .unwrap();
    assert_eq!(by_api["lang"], "fr");

    // GDPR consent.
    let set = c
        .set_gdpr_consent(&jwt, &["necessary", "analytics"])
        .await
        .unwrap();
    assert_eq!(set.len(), 2);
    let added = c.add_gdpr_consent(&jwt, &["marketing"]).await.unwrap();
    assert_eq!(added.len(), 3);
    c.remove_gdpr_consent(&jwt, &["analytics", "marketing"])
        .await
        .unwrap();
    let now = c.get_gdpr_consent(&jwt).await.unwrap();
    assert_eq!(now.len(), 1);
    assert_eq!(now[0].consent_level, "necessary");
    c.remove_all_gdpr_consent(&jwt).await.unwrap();
    assert!(c.get_gdpr_consent(&jwt).await.unwrap().is_empty());
    let bad = c.add_gdpr_consent(&jwt, &["everything"]).await.unwrap_err();
    assert_eq!(bad.status(), Some(StatusCode::BAD_REQUEST));
    assert_eq!(bad.code(), Some("400"));

    // Direct-ID.
    let direct = c.create_direct_id(&jwt).await.unwrap();
    assert!(direct.expose().starts_with("did:"));

    // Anonymous persons.
    let anonymous = c.create_anonymous_person(None).await.unwrap();
    let anon_user = anonymous.user.clone().unwrap();
    assert!(anon_user.anonymous);
    assert!(!c.is_authenticated(anonymous.token()).await.unwrap());

    // The SDK's cookie (migration from SlashID's SSR SDK).
    let mut headers = HeaderMap::new();
    headers.insert(
        COOKIE,
        format!("@slashid/USER_TOKEN/{}={}", h.dev.org_id(), jwt.expose())
            .parse()
            .unwrap(),
    );
    let found = c.sdk_cookie_token(&headers).unwrap();
    assert_eq!(found.expose(), jwt.expose());
    assert!(c.sdk_cookie_removal().contains("Path=/"));

    // Logout, then the token is refused by SlashID's per-user calls.
    c.logout(&jwt).await.unwrap();
    assert!(!c.validate_token(&jwt).await.unwrap().valid);
    let err = c.me(&jwt).await.unwrap_err();
    assert!(err.is_invalid_session(), "{err:?}");

    // No API key: nothing sent.
    let keyless = Client::builder(h.dev.url(), h.dev.org_id())
        .build()
        .unwrap();
    let calls = h.dev.calls();
    let err = keyless
        .api(http::Method::GET, &["persons"], &[], None)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    assert_eq!(h.dev.calls(), calls);
}

/// Point 6: the SDK's cookie `@slashid/USER_TOKEN/<oid>` is adopted as
/// authgate's session (opt-in layer): 303 back to the page with the new
/// session and the SDK cookie removed; an invalid one is removed and the
/// request goes on signed out; an existing authgate session wins; a
/// `//host` path never becomes the redirect (T-A1).
#[tokio::test]
async fn the_sdk_cookie_is_adopted_by_the_migration_layer() {
    let dev = dev_server(DevAlgorithm::Rs256).await;
    let client = builder_for(&dev).build().unwrap();
    let router = Router::new()
        .route("/account", get(account))
        .route("/{*rest}", get(account))
        .layer(slashid::SdkCookieMigration::new(client.clone()));
    let app = AuthLayer::new(config(), client).layer(router);
    let sdk_cookie = |value: &str| format!("@slashid/USER_TOKEN/{}={value}", dev.org_id());
    let jwt = dev.issue_token("ada@example.com");

    let adopted = app
        .clone()
        .oneshot(page_request(
            "GET",
            "/account?tab=1",
            Some(&sdk_cookie(&jwt)),
        ))
        .await
        .unwrap();
    assert_eq!(adopted.status(), StatusCode::SEE_OTHER);
    assert_eq!(location(&adopted), "/account?tab=1");
    let lines: Vec<String> = adopted
        .headers()
        .get_all(SET_COOKIE)
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect();
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("@slashid/USER_TOKEN/") && l.contains("1970"))
    );
    let new = set_cookie(adopted.headers(), SESSION).unwrap();
    assert_eq!(new.value(), jwt);
    let page = app
        .clone()
        .oneshot(page_request("GET", "/account", Some(&session(new.value()))))
        .await
        .unwrap();
    assert_eq!(page.status(), StatusCode::OK);

    // An invalid SDK token: removed, the request goes on signed out.
    let invalid = app
        .clone()
        .oneshot(page_request(
            "GET",
            "/account",
            Some(&sdk_cookie("garbage")),
        ))
        .await
        .unwrap();
    assert_eq!(invalid.status(), StatusCode::SEE_OTHER);
    assert!(location(&invalid).contains("/signin"));
    assert!(
        invalid
            .headers()
            .get_all(SET_COOKIE)
            .iter()
            .any(|v| v.to_str().unwrap().starts_with("@slashid/USER_TOKEN/"))
    );

    // An authgate session already there wins: nothing adopted.
    let other = dev.issue_token("grace@example.com");
    let both = format!("{}; {}", session(&jwt), sdk_cookie(&other));
    let kept = app
        .clone()
        .oneshot(page_request("GET", "/account", Some(&both)))
        .await
        .unwrap();
    assert_eq!(kept.status(), StatusCode::OK);
    assert!(set_cookie(kept.headers(), SESSION).is_none());

    // `//evil.example` is not a place to send the browser back to.
    let evil = app
        .oneshot(page_request(
            "GET",
            "//evil.example/x",
            Some(&sdk_cookie(&jwt)),
        ))
        .await
        .unwrap();
    assert_eq!(evil.status(), StatusCode::SEE_OTHER);
    assert_eq!(location(&evil), "/");
}

/// T-G1: no token in any `Debug` or `Display` output.
#[tokio::test]
async fn debug_output_carries_no_token() {
    let h = harness_with(DevAlgorithm::Rs256, |b| b.with_api_key("very-secret-key")).await;
    let jwt = h.dev.issue_token("ada@example.com");
    let grant = h.client.grant_for_token(&token(&jwt)).await.unwrap();
    let err = h
        .client
        .grant_for_token(&token(&format!("{jwt}x")))
        .await
        .unwrap_err();
    let outputs = [
        format!("{:?}", h.client),
        format!("{grant:?}"),
        format!("{:?}", grant.session),
        format!("{err:?}"),
        err.to_string(),
        format!("{:?}", h.dev),
        format!("{:?}", builder_for(&h.dev).with_api_key("very-secret-key")),
    ];
    let signature = parts(&jwt)[2].clone();
    for output in outputs {
        assert!(!output.contains(&signature), "{output}");
        assert!(!output.contains("very-secret-key"), "{output}");
    }
}

/// R3, T-H1: concurrent cache misses on tokens of a new key share one
/// key-set fetch (single flight).
#[tokio::test]
async fn concurrent_unknown_kids_share_one_fetch() {
    let h = harness().await;
    let first = h.dev.issue_token("ada@example.com");
    assert_eq!(
        h.get("/account", Some(&session(&first))).await.status(),
        StatusCode::OK
    );
    h.dev.rotate_keys();
    let tokens: Vec<String> = (0..8)
        .map(|i| h.dev.issue_token(&format!("user{i}@example.com")))
        .collect();
    let cookies: Vec<String> = tokens.iter().map(|t| session(t)).collect();
    let requests = cookies
        .iter()
        .map(|c| h.get("/account", Some(c)).map_status());
    let statuses = futures_util::future::join_all(requests).await;
    assert!(
        statuses.iter().all(|s| *s == StatusCode::OK),
        "{statuses:?}"
    );
    assert_eq!(h.dev.calls_to("/.well-known/jwks.json"), 2, "one refetch");
}

trait MapStatus {
    async fn map_status(self) -> StatusCode;
}

impl<F: std::future::Future<Output = http::Response<Body>>> MapStatus for F {
    async fn map_status(self) -> StatusCode {
        self.await.status()
    }
}

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// T-G1: a hosted login, resolutions (valid, invalid, remote check), a
/// refused landing, the typed client's calls and a sign-out, traced at
/// TRACE level: no token, code or API key in the log (raw,
/// percent-encoded or base64).
#[tokio::test(flavor = "current_thread")]
async fn no_slashid_secret_reaches_the_logs() {
    let capture = Capture::default();
    let writer = capture.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let h = harness_with(DevAlgorithm::Rs256, |b| {
        b.with_api_key("dev-api-key")
            .with_remote_check(Duration::from_secs(60))
    })
    .await;
    let mut secrets = vec![h.dev.api_key().to_owned()];

    let mut browser = Browser::default();
    let start = h.get("/auth/signin/slashid", None).await;
    browser.absorb(start.headers());
    let back = log_in(location(&start), "log@example.com", "").await;
    secrets.push(query_param(&back, "code").unwrap());
    let landing = h.get(&app_path(&back), browser.header().as_deref()).await;
    browser.absorb(landing.headers());
    secrets.push(browser.jar[SESSION].clone());
    let replay = h.get(&app_path(&back), browser.header().as_deref()).await;
    assert_eq!(replay.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        h.get("/account", browser.header().as_deref())
            .await
            .status(),
        StatusCode::OK
    );
    let forged = format!("{}x", browser.jar[SESSION]);
    secrets.push(forged.clone());
    assert_refused(&h, "forged", &forged).await;
    let session_token = token(&browser.jar[SESSION]);
    h.client.me(&session_token).await.unwrap();
    h.client.validate_token(&session_token).await.unwrap();
    let anonymous = h.client.create_anonymous_person(None).await.unwrap();
    secrets.push(anonymous.token().expose().to_owned());
    let sign_out = page_request("POST", "/auth/signout", browser.header().as_deref());
    assert_eq!(h.send(sign_out).await.status(), StatusCode::SEE_OTHER);
    wait_for(|| h.dev.calls_to("/token/revoke") == 1).await;

    let log = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
    assert!(log.contains("authgate"), "the capture works");
    for secret in &secrets {
        let signature = secret.rsplit('.').next().unwrap().to_owned();
        let forms = [
            secret.clone(),
            signature,
            url::form_urlencoded::byte_serialize(secret.as_bytes()).collect(),
            URL_SAFE_NO_PAD.encode(secret),
        ];
        for form in forms {
            assert!(!log.contains(&form), "a secret in the log");
        }
    }
}
