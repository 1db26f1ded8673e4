//! The Orange Webcom upstream (issue 12) against the Webcom dev server
//! (`authgate::dev::webcom`) and against a fault-injecting Webcom, all on
//! `127.0.0.1:0`. The app is driven in-process with `oneshot`; the
//! upstream traffic is real HTTP.
//!
//! Each test names the SECURITY.md items it covers (R1, T-B1, T-B3, T-D1,
//! T-G1, T-H2).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use authgate::dev::webcom::{WebcomDev, WebcomMessageKind};
use authgate::events::{AuthEvent, AuthEvents, FlowRejection};
use authgate::upstream::{Capabilities, Revocation, SignOutScope, Upstream};
use authgate::webcom::{
    self, Client, Credentials, Identity, Message, NewIdentity, Provider, ServerKey, Verification,
};
use authgate::{Auth, AuthConfig, AuthLayer, AuthService, CurrentUser, ErrorKind, SessionToken};
use axum::Router;
use axum::body::Body;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::header::{COOKIE, LOCATION, SET_COOKIE};
use http::{HeaderMap, Request, StatusCode};
use sha2::{Digest as _, Sha256};
use tokio::sync::mpsc::Receiver;
use tower::ServiceExt as _;
use url::Url;

const ORIGIN: &str = "https://app.example";
const CALLBACK: &str = "https://app.example/auth/callback";
const SESSION: &str = "__Host-authgate";
const FLOW_PREFIX: &str = "__Host-authgate-flow.";
const SERVER_KEY: &[u8] = include_bytes!("data/webcom-server-key.pem");
const SERVER_PUBLIC_KEY: &[u8] = include_bytes!("data/webcom-server-key.pub.pem");
const OTHER_KEY: &[u8] = include_bytes!("data/webcom-other-key.pem");

// ---------------------------------------------------------------------------
// The app

type App = AuthService<Router>;

struct Harness {
    dev: WebcomDev,
    client: Client,
    app: App,
    events: Receiver<AuthEvent>,
}

async fn account(user: CurrentUser) -> String {
    format!("Hello {}", user.display_name())
}

/// The guest sign-in of an app: the client's grant through `Auth::sign_in`.
async fn guest(axum::extract::State(client): axum::extract::State<Client>, auth: Auth) -> Response {
    match client.sign_in_as_guest().await {
        Ok(details) => {
            auth.sign_in(details.into_grant()).unwrap();
            Redirect::to("/account").into_response()
        }
        Err(err) => (StatusCode::BAD_GATEWAY, err.to_string()).into_response(),
    }
}

/// An e-mail sign-in form's handler.
async fn password(
    axum::extract::State(client): axum::extract::State<Client>,
    auth: Auth,
    axum::Form(form): axum::Form<BTreeMap<String, String>>,
) -> Response {
    let credentials = Credentials::password(&form["email"], &form["password"]);
    match client
        .sign_in_with_credentials(Provider::Password, &credentials)
        .await
    {
        Ok(details) => {
            auth.sign_in(details.into_grant()).unwrap();
            Redirect::to("/account").into_response()
        }
        Err(err) => (
            StatusCode::UNAUTHORIZED,
            err.code().unwrap_or("").to_owned(),
        )
            .into_response(),
    }
}

/// Account removal, with `TOKEN_TOO_OLD` turned into a re-authentication
/// redirect (issue 12 point 5).
async fn delete_account(
    axum::extract::State(client): axum::extract::State<Client>,
    auth: Auth,
    user: CurrentUser,
) -> Response {
    let token = auth.token().unwrap().clone();
    match client.remove_account(&token, &user.id).await {
        Ok(()) => {
            auth.sign_out_locally();
            Redirect::to("/").into_response()
        }
        Err(err) if err.kind() == ErrorKind::FreshAuthRequired => {
            Redirect::to("/auth/signin/google?prompt=login&return_to=/account").into_response()
        }
        Err(err) => (StatusCode::BAD_GATEWAY, err.to_string()).into_response(),
    }
}

fn config(events: AuthEvents) -> AuthConfig {
    AuthConfig::new(ORIGIN)
        .unwrap()
        .with_key([7u8; 64])
        .unwrap()
        .with_events(events)
}

fn app_for(client: &Client, config: AuthConfig) -> App {
    let router = Router::new()
        .route("/account", get(account))
        .route("/signin/guest", post(guest))
        .route("/signin/password", post(password))
        .route("/account/delete", post(delete_account))
        .with_state(client.clone());
    AuthLayer::new(config, client.clone()).layer(router)
}

async fn dev_server(lifetime: Duration) -> WebcomDev {
    WebcomDev::builder()
        .with_app_id("my-app")
        .with_token_lifetime(lifetime)
        .with_server_key("backend", SERVER_PUBLIC_KEY)
        .spawn()
        .await
        .unwrap()
}

fn client_for(dev: &WebcomDev) -> Client {
    Client::builder(dev.url(), dev.app_id())
        .with_code_mode_provider("github", &dev.authorize_url("github", CALLBACK))
        .build()
        .unwrap()
}

async fn harness() -> Harness {
    harness_with(Duration::from_secs(3600), |c| c).await
}

async fn harness_with(lifetime: Duration, tune: impl FnOnce(AuthConfig) -> AuthConfig) -> Harness {
    let dev = dev_server(lifetime).await;
    let client = client_for(&dev);
    let (events, receiver) = AuthEvents::channel(64);
    let app = app_for(&client, tune(config(events)));
    Harness {
        dev,
        client,
        app,
        events: receiver,
    }
}

impl Harness {
    async fn send(&self, request: Request<Body>) -> http::Response<Body> {
        self.app.clone().oneshot(request).await.unwrap()
    }

    async fn get(&self, path: &str, cookies: Option<&str>) -> http::Response<Body> {
        self.send(page_request("GET", path, cookies)).await
    }

    fn events(&mut self) -> Vec<AuthEvent> {
        let mut events = Vec::new();
        while let Ok(event) = self.events.try_recv() {
            events.push(event);
        }
        events
    }

    /// A guest signed in through the app: the session cookie's value.
    async fn guest_cookie(&self) -> String {
        let response = self.send(page_request("POST", "/signin/guest", None)).await;
        assert_eq!(response.status(), StatusCode::SEE_OTHER);
        set_cookie(response.headers(), SESSION)
            .unwrap()
            .value()
            .to_owned()
    }

    /// Starts an OAuth sign-in in `browser`: where the browser goes.
    async fn start(&self, browser: &mut Browser, provider: &str) -> String {
        let path = format!("/auth/signin/{provider}?return_to=%2Faccount");
        let response = self.get(&path, browser.header().as_deref()).await;
        assert_eq!(response.status(), StatusCode::SEE_OTHER, "{path}");
        browser.absorb(response.headers());
        location(&response).to_owned()
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

fn form_request(path: &str, form: &str) -> Request<Body> {
    Request::post(path)
        .header("sec-fetch-site", "same-origin")
        .header("origin", ORIGIN)
        .header("content-type", "application/x-www-form-urlencoded")
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

/// The app-relative path and query of an absolute app URL.
fn app_path(url: &str) -> String {
    let url = Url::parse(url).unwrap();
    assert_eq!(url.origin().ascii_serialization(), ORIGIN, "{url}");
    format!("{}?{}", url.path(), url.query().unwrap_or(""))
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

/// Plays the browser on Webcom's redirect-mode sign-in page: the consent
/// form, then `decision`. Returns where Webcom sends the browser back.
async fn consent(sign_in_url: &str, email: &str, decision: &str) -> String {
    let page = http().get(sign_in_url).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains("Webcom dev simulator"));
    let form = [
        ("to", query_param(sign_in_url, "to").unwrap()),
        ("from", query_param(sign_in_url, "from").unwrap()),
        ("name", "Grace Hopper".to_owned()),
        ("email", email.to_owned()),
        ("decision", decision.to_owned()),
    ];
    let answer = http().post(sign_in_url).form(&form).send().await.unwrap();
    assert_eq!(answer.status(), 303);
    answer.headers()["location"].to_str().unwrap().to_owned()
}

/// Plays the browser on the simulated provider of code mode.
async fn authorize(authorize_url: &str, email: &str, decision: &str) -> String {
    let page = http().get(authorize_url).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let form = [
        (
            "redirect_uri",
            query_param(authorize_url, "redirect_uri").unwrap(),
        ),
        ("state", query_param(authorize_url, "state").unwrap()),
        ("name", "Linus".to_owned()),
        ("email", email.to_owned()),
        ("decision", decision.to_owned()),
    ];
    let answer = http().post(authorize_url).form(&form).send().await.unwrap();
    assert_eq!(answer.status(), 303);
    answer.headers()["location"].to_str().unwrap().to_owned()
}

fn flow_cookie_for(id: &str) -> String {
    format!(
        "{FLOW_PREFIX}{}",
        &URL_SAFE_NO_PAD.encode(Sha256::digest(id.as_bytes()))[..16]
    )
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

// ---------------------------------------------------------------------------
// The typed client against the dev server: every operation

#[tokio::test]
async fn email_identity_is_added_verified_signed_in_reset_and_updated() {
    let h = harness().await;
    let c = &h.client;
    let email = "ada@example.com";
    let added = c
        .add_identity(
            Provider::Password,
            &NewIdentity::email(email, "correct horse").with_display_name("Ada"),
            &Message::new().with_locale("en_GB"),
        )
        .await
        .unwrap();
    assert!(added.verification_pending.is_none());
    let uid = added.raw["uid"].as_str().unwrap().to_owned();

    // A second verification code, then verification with the mailed token.
    assert!(
        c.send_verification_code(Provider::Password, email, &Message::new())
            .await
            .unwrap()
            .is_none()
    );
    let mail = h.dev.last_message_to(email).unwrap();
    assert_eq!(mail.kind, WebcomMessageKind::Verification);
    let verified = c
        .verify_identity(
            Provider::Password,
            email,
            Verification::EmailToken(&mail.code),
        )
        .await
        .unwrap();
    assert_eq!(verified.user.id, uid);
    assert_eq!(verified.user.email.as_deref(), Some(email));
    assert_eq!(verified.user.name.as_deref(), Some("Ada"));
    let already = c
        .send_verification_code(Provider::Password, email, &Message::new())
        .await
        .unwrap_err();
    assert_eq!(already.code(), Some("INVALID_STATE"));

    // Password sign-in; a wrong password keeps Webcom's code.
    let signed_in = c
        .sign_in_with_credentials(
            Provider::Password,
            &Credentials::password(email, "correct horse"),
        )
        .await
        .unwrap();
    assert_eq!(signed_in.user.provider.as_deref(), Some("password"));
    let expires = signed_in.expires_at.unwrap();
    assert!(expires > SystemTime::now() + Duration::from_secs(3500));
    let wrong = c
        .sign_in_with_credentials(
            Provider::Password,
            &Credentials::password(email, "nope nope"),
        )
        .await
        .unwrap_err();
    assert_eq!(wrong.code(), Some("INVALID_CREDENTIALS"));
    assert_eq!(wrong.kind(), ErrorKind::Status(StatusCode::FORBIDDEN));
    assert!(!wrong.is_invalid_session());

    // Password change with the current password, then a reset code.
    c.update_password(email, "correct horse", "battery staple")
        .await
        .unwrap();
    c.send_password_reset_code(email, &Message::new())
        .await
        .unwrap();
    let reset = h.dev.last_message_to(email).unwrap();
    assert_eq!(reset.kind, WebcomMessageKind::PasswordReset);
    c.update_password(email, &reset.code, "new secret 1")
        .await
        .unwrap();
    let weak = c
        .update_password(email, "new secret 1", "short")
        .await
        .unwrap_err();
    assert_eq!(weak.code(), Some("TOO_WEAK_PASSWORD"));
    let fresh = c
        .sign_in_with_credentials(
            Provider::Password,
            &Credentials::password(email, "new secret 1"),
        )
        .await
        .unwrap();

    // The profile, read back through `/decode`.
    let identity = Identity::of(&fresh.user).unwrap();
    assert_eq!(identity.provider_uid, email);
    c.update_identity_profile(
        &fresh.token,
        &identity,
        &serde_json::json!("Ada L."),
        "displayName",
    )
    .await
    .unwrap();
    let (user, _) = c.decode(&fresh.token).await.unwrap();
    assert_eq!(user.name.as_deref(), Some("Ada L."));

    // Account details list the identity.
    let details = c.account_details(&fresh.token, &uid).await.unwrap();
    assert_eq!(details.identities["password"], vec![email.to_owned()]);
    assert!(details.created_on.is_some());
}

#[tokio::test]
async fn phone_sign_in_uses_the_otp_challenge_from_send_otp() {
    let h = harness().await;
    let c = &h.client;
    let msisdn = "33612345678";
    let challenge = c
        .send_otp(
            Provider::Phone,
            msisdn,
            &Message::new().with_sender("dev-sms"),
        )
        .await
        .unwrap();
    let sms = h.dev.last_message_to(msisdn).unwrap();
    assert_eq!(sms.kind, WebcomMessageKind::Otp);
    assert_eq!(sms.channel, authgate::dev::Channel::Sms);
    // A wrong code, then the right one; the code is single-use.
    let wrong = c
        .sign_in_with_credentials(
            Provider::Phone,
            &Credentials::otp(msisdn, challenge.expose(), "000000x"),
        )
        .await
        .unwrap_err();
    assert_eq!(wrong.code(), Some("INVALID_CREDENTIALS"));
    let details = c
        .sign_in_with_credentials(
            Provider::Phone,
            &Credentials::otp(msisdn, challenge.expose(), &sms.code),
        )
        .await
        .unwrap();
    // The neutral user carries E.164.
    assert_eq!(details.user.phone, Some(format!("+{msisdn}")));
    assert_eq!(details.user.provider.as_deref(), Some("phone"));
    let replay = c
        .sign_in_with_credentials(
            Provider::Phone,
            &Credentials::otp(msisdn, challenge.expose(), &sms.code),
        )
        .await
        .unwrap_err();
    assert_eq!(replay.code(), Some("INVALID_CREDENTIALS"));
}

#[tokio::test]
async fn phone_identity_is_added_to_the_current_account_and_verified_by_otp() {
    let h = harness().await;
    let c = &h.client;
    let guest = c.sign_in_as_guest().await.unwrap();
    let msisdn = "33698765432";
    let added = c
        .with_context(&guest.token)
        .add_identity(
            Provider::Phone,
            &NewIdentity::phone(msisdn),
            &Message::new(),
        )
        .await
        .unwrap();
    let challenge = added.verification_pending.unwrap();
    assert_eq!(added.raw["uid"], guest.user.id.as_str());
    // A new code replaces nothing: both challenges are live until used.
    let again = c
        .send_verification_code(Provider::Phone, msisdn, &Message::new())
        .await
        .unwrap()
        .unwrap();
    assert_ne!(again.expose(), challenge.expose());
    let sms = h.dev.last_message_to(msisdn).unwrap();
    let verified = c
        .verify_identity(
            Provider::Phone,
            msisdn,
            Verification::Otp {
                challenge: again.expose(),
                password: &sms.code,
            },
        )
        .await
        .unwrap();
    assert_eq!(verified.user.id, guest.user.id, "same account");
    let details = c
        .account_details(&verified.token, &guest.user.id)
        .await
        .unwrap();
    assert_eq!(details.identities.len(), 2, "{:?}", details.identities);
    let exists = c
        .add_identity(
            Provider::Phone,
            &NewIdentity::phone(msisdn),
            &Message::new(),
        )
        .await
        .unwrap_err();
    assert_eq!(exists.code(), Some("EXISTING_IDENTITY"));
}

#[tokio::test]
async fn guest_custom_token_wassup_and_server_key_sign_ins_yield_grants() {
    let h = harness().await;
    let c = &h.client;

    let guest = c.sign_in_as_guest().await.unwrap();
    assert!(guest.user.anonymous);
    assert_eq!(guest.user.provider.as_deref(), Some("anonymous"));

    let credential = h.dev.issue_custom_token(
        "partner",
        "p-42",
        serde_json::json!({"displayName": "Partner User"}),
    );
    let custom = c
        .sign_in_with_custom_provider("partner", &credential)
        .await
        .unwrap();
    assert_eq!(custom.user.provider.as_deref(), Some("custom.partner"));
    assert_eq!(custom.user.name.as_deref(), Some("Partner User"));
    let reused = c
        .sign_in_with_custom_provider("partner", &credential)
        .await
        .unwrap_err();
    assert_eq!(reused.code(), Some("INVALID_CREDENTIALS"));

    let by_token = c.sign_in_with_token(&custom.token).await.unwrap();
    assert_eq!(by_token.user.id, custom.user.id);
    assert_eq!(by_token.expires_at, custom.expires_at);
    let bad = c
        .sign_in_with_token(&token("not-a-token"))
        .await
        .unwrap_err();
    assert!(bad.is_invalid_session());

    let wassup = c.sign_in_with_wassup(&[("mcc", "208")]).await.unwrap();
    assert_eq!(wassup.user.provider.as_deref(), Some("wassup"));

    let key = ServerKey::from_pem("backend", SERVER_KEY).unwrap();
    let server = c.sign_in_with_server_key(&key).await.unwrap();
    assert_eq!(server.user.provider.as_deref(), Some("server"));
    // Signed with a key the console does not know, or named wrongly.
    for key in [
        ServerKey::from_pem("backend", OTHER_KEY).unwrap(),
        ServerKey::from_pem("other", SERVER_KEY).unwrap(),
    ] {
        let refused = c.sign_in_with_server_key(&key).await.unwrap_err();
        assert_eq!(refused.code(), Some("INVALID_CREDENTIALS"), "{key:?}");
    }
    assert!(ServerKey::from_pem("backend", b"not a key").is_err());

    // Every grant becomes a cookie through `Auth::sign_in` (the guest route).
    let cookie = h.guest_cookie().await;
    let page = h.get("/account", Some(&session(&cookie))).await;
    assert_eq!(page.status(), StatusCode::OK);
}

#[tokio::test]
async fn every_call_carries_the_client_version_and_the_right_body_type() {
    let h = harness().await;
    let route = format!("{}/auth/v2/{}", h.dev.url(), h.dev.app_id());
    // Without `c=` the dev server refuses: the client's calls above all
    // passed, so they all sent it.
    let missing = http()
        .post(format!("{route}/anonymous/signin"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 400);
    assert!(missing.text().await.unwrap().contains("MISSING_PARAMETER"));
    // A JSON body where Webcom takes a form.
    let json = http()
        .post(format!("{route}/wassup/signin?c=n3.12.0"))
        .json(&serde_json::json!({"mcc": "208"}))
        .send()
        .await
        .unwrap();
    assert_eq!(json.status(), 400);
    // Another application.
    let other = Client::builder(h.dev.url(), "other-app").build().unwrap();
    let unknown = other.sign_in_as_guest().await.unwrap_err();
    assert_eq!(unknown.code(), Some("UNKNOWN_APPLICATION"));
    assert!(!unknown.is_invalid_session());
    assert_eq!(h.client.route().as_str(), route);
}

/// Issue 12 point 5: `TOKEN_TOO_OLD` is a typed "fresh authentication
/// required" error, which the app turns into a re-authentication redirect.
#[tokio::test]
async fn token_too_old_is_fresh_auth_required_and_the_app_reauthenticates() {
    let h = harness().await;
    let c = &h.client;
    let email = "old@example.com";
    c.add_identity(
        Provider::Password,
        &NewIdentity::email(email, "long password"),
        &Message::new(),
    )
    .await
    .unwrap();
    let form = format!("email={}&password=long+password", "old%40example.com");
    let response = h.send(form_request("/signin/password", &form)).await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    let cookie = set_cookie(response.headers(), SESSION)
        .unwrap()
        .value()
        .to_owned();
    let details = c
        .sign_in_with_credentials(
            Provider::Password,
            &Credentials::password(email, "long password"),
        )
        .await
        .unwrap();

    h.dev.advance_clock(Duration::from_secs(600));
    let too_old = c
        .remove_account(&details.token, &details.user.id)
        .await
        .unwrap_err();
    assert_eq!(too_old.kind(), ErrorKind::FreshAuthRequired);
    assert_eq!(too_old.code(), Some("TOKEN_TOO_OLD"));
    assert!(!too_old.is_invalid_session() && !too_old.is_transient());
    let identity = Identity::of(&details.user).unwrap();
    let too_old = c
        .remove_identity(&details.token, &identity)
        .await
        .unwrap_err();
    assert_eq!(too_old.kind(), ErrorKind::FreshAuthRequired);

    let page = h
        .send({
            let mut r = page_request("POST", "/account/delete", Some(&session(&cookie)));
            *r.method_mut() = http::Method::POST;
            r
        })
        .await;
    assert_eq!(page.status(), StatusCode::SEE_OTHER);
    assert_eq!(
        location(&page),
        "/auth/signin/google?prompt=login&return_to=/account"
    );
    // `prompt=login` reaches the start of the sign-in.
    let mut browser = Browser::default();
    let response = h
        .get(
            "/auth/signin/google?prompt=login",
            browser.header().as_deref(),
        )
        .await;
    browser.absorb(response.headers());
    assert_eq!(
        query_param(location(&response), "prompt").as_deref(),
        Some("login")
    );

    // A fresh sign-in may remove the account; its token is refused after.
    let fresh = c
        .sign_in_with_credentials(
            Provider::Password,
            &Credentials::password(email, "long password"),
        )
        .await
        .unwrap();
    c.remove_account(&fresh.token, &fresh.user.id)
        .await
        .unwrap();
    assert!(
        c.decode(&fresh.token)
            .await
            .unwrap_err()
            .is_invalid_session()
    );
}

#[tokio::test]
async fn remove_identity_with_a_fresh_token_removes_the_last_identity_and_its_account() {
    let h = harness().await;
    let c = &h.client;
    let credential = h
        .dev
        .issue_custom_token("partner", "solo", serde_json::json!({}));
    let details = c
        .sign_in_with_custom_provider("partner", &credential)
        .await
        .unwrap();
    let identity = Identity::of(&details.user).unwrap();
    c.remove_identity(&details.token, &identity).await.unwrap();
    let gone = c
        .account_details(&details.token, &identity.uid)
        .await
        .unwrap_err();
    assert!(gone.is_invalid_session());
}

// ---------------------------------------------------------------------------
// OAuth through the layer's routes

/// Redirect mode end to end (issue 12 point 4; T-B1.7): the start sends
/// `from` = padded base64url(SHA-256(requestKey)) and `to` with the flow id;
/// the callback's `__wcsession` completes with `POST /session`; a replay
/// is refused without ending the new session.
#[tokio::test]
async fn redirect_mode_signs_in_through_the_layer_routes() {
    let mut h = harness().await;
    let mut browser = Browser::default();
    let sign_in = h.start(&mut browser, "google").await;
    let url = Url::parse(&sign_in).unwrap();
    assert_eq!(url.path(), "/auth/v2/my-app/google/signin");
    let pairs: BTreeMap<_, _> = url.query_pairs().into_owned().collect();
    assert_eq!(pairs["mode"], "redirect");
    assert_eq!(pairs["pm"], "2");
    assert_eq!(pairs["c"], webcom::CLIENT_VERSION);
    let from = &pairs["from"];
    assert_eq!(from.len(), 44);
    assert!(from.ends_with('='), "padded: {from}");
    let to = Url::parse(&pairs["to"]).unwrap();
    assert_eq!(
        format!("{}{}", to.origin().ascii_serialization(), to.path()),
        CALLBACK
    );
    let flow = query_param(to.as_str(), "flow").unwrap();
    assert!(browser.jar.contains_key(&flow_cookie_for(&flow)));
    // The request key stays in the sealed flow cookie, never in a URL.
    assert!(!sign_in.contains("requestKey") && !sign_in.contains("rk"));

    let back = consent(&sign_in, "grace@example.com", "allow").await;
    assert!(query_param(&back, "__wcsession").is_some());
    assert_eq!(query_param(&back, "flow").as_deref(), Some(flow.as_str()));
    let callback = app_path(&back);
    let calls = h.dev.calls();
    let response = h.get(&callback, browser.header().as_deref()).await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    assert_eq!(location(&response), "https://app.example/account");
    assert_eq!(h.dev.calls(), calls + 1, "one POST /session");
    let cookie = set_cookie(response.headers(), SESSION).unwrap();
    assert!(!is_removal(&cookie));
    // The cookie lives no longer than the token (T-H2).
    let max_age = cookie.max_age().unwrap().whole_seconds();
    assert!((3500..=3600).contains(&max_age), "{max_age}");
    let flow_removal = set_cookie(response.headers(), &flow_cookie_for(&flow)).unwrap();
    assert!(is_removal(&flow_removal));
    browser.absorb(response.headers());

    let page = h.get("/account", browser.header().as_deref()).await;
    assert_eq!(body_string(page).await, "Hello Grace Hopper");
    // The OAuth identity's picture is the user's avatar.
    let (user, _) = h
        .client
        .decode(&token(browser.jar[SESSION].as_str()))
        .await
        .unwrap();
    let avatar = webcom::avatar_url(&user).unwrap();
    assert_eq!(avatar, format!("{}/_dev/avatar.svg", h.dev.url()));
    assert_eq!(user.picture.as_deref(), Some(avatar.as_str()));
    assert_eq!(user.provider.as_deref(), Some("google"));
    assert_eq!(user.email.as_deref(), Some("grace@example.com"));
    let svg = http().get(&avatar).send().await.unwrap();
    assert_eq!(svg.headers()["content-type"], "image/svg+xml");
    let events = h.events();
    assert!(
        events
            .iter()
            .any(|e| matches!(e, AuthEvent::SignedIn { .. })),
        "{events:?}"
    );

    // Replaying the landing: refused, no upstream call, the session stays.
    let calls = h.dev.calls();
    let replay = h.get(&callback, browser.header().as_deref()).await;
    assert_eq!(replay.status(), StatusCode::BAD_REQUEST);
    assert!(set_cookie(replay.headers(), SESSION).is_none());
    assert_eq!(h.dev.calls(), calls);
}

/// T-B1.3 / T-C6: a landing whose flow cookie another browser holds, or
/// none at all, is refused before any upstream call.
#[tokio::test]
async fn a_landing_from_another_browser_or_without_a_flow_never_reaches_webcom() {
    let mut h = harness().await;
    let mut alice = Browser::default();
    let sign_in = h.start(&mut alice, "google").await;
    let back = consent(&sign_in, "alice@example.com", "allow").await;
    let callback = app_path(&back);

    let calls = h.dev.calls();
    let mallory = Browser::default();
    let refused = h.get(&callback, mallory.header().as_deref()).await;
    assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
    assert!(set_cookie(refused.headers(), SESSION).is_none());
    // A `__wcsession` with no flow id at all: the core finds no flow, and
    // the client refuses without a call.
    let wcsession = query_param(&back, "__wcsession").unwrap();
    let bare = h
        .get(
            &format!("/auth/callback?__wcsession={wcsession}"),
            alice.header().as_deref(),
        )
        .await;
    assert_eq!(bare.status(), StatusCode::BAD_REQUEST);
    assert!(set_cookie(bare.headers(), SESSION).is_none());
    assert_eq!(h.dev.calls(), calls, "no upstream call");
    let events = h.events();
    assert!(
        events.iter().any(|e| matches!(
            e,
            AuthEvent::FlowRejected {
                reason: FlowRejection::MissingFlow,
                ..
            }
        )),
        "{events:?}"
    );

    // Alice's own browser still completes.
    let ok = h.get(&callback, alice.header().as_deref()).await;
    assert_eq!(ok.status(), StatusCode::SEE_OTHER);
    assert!(set_cookie(ok.headers(), SESSION).is_some());
}

/// T-B3: a forged `__wcsession` is refused by Webcom; a missing one (the
/// user denied) is refused without a call; a key issued for another flow
/// fails the SHA-256(requestKey) = `from` check.
#[tokio::test]
async fn forged_missing_or_transplanted_wcsession_is_refused() {
    let h = harness().await;

    // Forged.
    let mut browser = Browser::default();
    let sign_in = h.start(&mut browser, "google").await;
    let flow = query_param(&query_param(&sign_in, "to").unwrap(), "flow").unwrap();
    let forged = format!("/auth/callback?flow={flow}&__wcsession=forged-key");
    let refused = h.get(&forged, browser.header().as_deref()).await;
    assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
    assert!(set_cookie(refused.headers(), SESSION).is_none());
    assert!(
        body_string(refused)
            .await
            .contains("expired or was already used")
    );

    // A repeated parameter (T-B1.4): never picked, never sent.
    let calls = h.dev.calls();
    let twice = format!("/auth/callback?flow={flow}&__wcsession=a&__wcsession=b");
    let refused = h.get(&twice, browser.header().as_deref()).await;
    assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
    assert_eq!(h.dev.calls(), calls);

    // Denied: Webcom comes back without `__wcsession`.
    let mut browser = Browser::default();
    let sign_in = h.start(&mut browser, "google").await;
    let back = consent(&sign_in, "deny@example.com", "deny").await;
    assert!(query_param(&back, "__wcsession").is_none());
    let calls = h.dev.calls();
    let denied = h.get(&app_path(&back), browser.header().as_deref()).await;
    assert_eq!(denied.status(), StatusCode::BAD_REQUEST);
    assert!(set_cookie(denied.headers(), SESSION).is_none());
    assert_eq!(h.dev.calls(), calls, "no upstream call");

    // Transplanted: flow 1's key on flow 2's landing (another requestKey).
    let mut browser = Browser::default();
    let first = h.start(&mut browser, "google").await;
    let second = h.start(&mut browser, "google").await;
    let key = query_param(
        &consent(&first, "t@example.com", "allow").await,
        "__wcsession",
    )
    .unwrap();
    let flow2 = query_param(&query_param(&second, "to").unwrap(), "flow").unwrap();
    let landing = format!("/auth/callback?flow={flow2}&__wcsession={key}");
    let refused = h.get(&landing, browser.header().as_deref()).await;
    assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
    assert!(set_cookie(refused.headers(), SESSION).is_none());
}

/// Code mode (issue 12 point 4): the start goes to the provider with
/// `state` = the flow id; `code` + `state` complete through
/// `GET /{provider}/callback?mode=code`; a wrong state never reaches Webcom.
#[tokio::test]
async fn code_mode_signs_in_with_state_and_refuses_a_wrong_state() {
    let h = harness().await;
    let mut browser = Browser::default();
    let authorize_url = h.start(&mut browser, "github").await;
    assert!(authorize_url.starts_with(&format!("{}/_dev/oauth/github/authorize", h.dev.url())));
    let state = query_param(&authorize_url, "state").unwrap();
    assert!(browser.jar.contains_key(&flow_cookie_for(&state)));
    let back = authorize(&authorize_url, "linus@example.com", "allow").await;
    let callback = app_path(&back);

    // Another browser, a tampered state, no state: no upstream call.
    let calls = h.dev.calls();
    for (path, cookies) in [
        (callback.clone(), None),
        (
            callback.replace(&state, "A".repeat(43).as_str()),
            browser.header(),
        ),
        (
            format!(
                "/auth/callback?code={}",
                query_param(&back, "code").unwrap()
            ),
            browser.header(),
        ),
    ] {
        let refused = h.get(&path, cookies.as_deref()).await;
        assert_eq!(refused.status(), StatusCode::BAD_REQUEST, "{path}");
        assert!(set_cookie(refused.headers(), SESSION).is_none(), "{path}");
    }
    assert_eq!(h.dev.calls(), calls);

    let response = h.get(&callback, browser.header().as_deref()).await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    assert_eq!(h.dev.calls(), calls + 1, "one GET /github/callback");
    browser.absorb(response.headers());
    let page = h.get("/account", browser.header().as_deref()).await;
    assert_eq!(body_string(page).await, "Hello Linus");

    // A denied consent comes back with `error`: refused, no call.
    let mut browser = Browser::default();
    let authorize_url = h.start(&mut browser, "github").await;
    let back = authorize(&authorize_url, "linus@example.com", "deny").await;
    let calls = h.dev.calls();
    let denied = h.get(&app_path(&back), browser.header().as_deref()).await;
    assert_eq!(denied.status(), StatusCode::BAD_REQUEST);
    assert_eq!(h.dev.calls(), calls);
}

// ---------------------------------------------------------------------------
// Expiry and sign-out

/// Issue 12 point 6 (T-D1, `Revocation::UntilExpiry`): Webcom cannot end a
/// token, so sign-out tombstones it until its `expires`: the old cookie is
/// refused with no upstream call long after the cache's own horizon, the
/// token still being valid at Webcom; once it has expired, the tombstone is
/// gone and Webcom's own answer decides.
#[tokio::test]
async fn sign_out_tombstones_the_token_until_it_expires_and_no_longer() {
    // Seconds of margin between the steps, for a loaded machine.
    let lifetime = Duration::from_secs(6);
    let h = harness_with(lifetime, |c| {
        c.with_cache_ttl(Duration::from_millis(100))
            .with_stale_window(Duration::from_millis(100))
    })
    .await;
    let caps: Capabilities = h.client.capabilities();
    assert_eq!(caps.revocation, Revocation::UntilExpiry);
    assert!(!caps.supports_sign_out(SignOutScope::All));

    let cookie = h.guest_cookie().await;
    let expires = h.client.decode(&token(&cookie)).await.unwrap().1.unwrap();
    let page = h.get("/account", Some(&session(&cookie))).await;
    assert_eq!(page.status(), StatusCode::OK);

    // Webcom cannot end every session of a user: that scope is refused,
    // and nothing changes.
    let mut all = page_request("POST", "/auth/signout?scope=all", Some(&session(&cookie)));
    *all.method_mut() = http::Method::POST;
    let refused = h.send(all).await;
    assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
    assert!(set_cookie(refused.headers(), SESSION).is_none());

    let mut sign_out = page_request("POST", "/auth/signout", Some(&session(&cookie)));
    *sign_out.method_mut() = http::Method::POST;
    let calls = h.dev.calls();
    let response = h.send(sign_out).await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    assert!(is_removal(
        &set_cookie(response.headers(), SESSION).unwrap()
    ));
    assert_eq!(h.dev.calls(), calls, "Webcom has no sign-out call");

    // Past the cache's horizon (fresh + stale = 200 ms), before `expires`.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(SystemTime::now() < expires);
    h.client
        .decode(&token(&cookie))
        .await
        .expect("still valid at Webcom");
    let calls = h.dev.calls();
    let replay = h.get("/account", Some(&session(&cookie))).await;
    assert_eq!(replay.status(), StatusCode::SEE_OTHER, "tombstoned");
    assert_eq!(h.dev.calls(), calls, "refused locally");

    // After `expires`, the tombstone is gone: one lookup, Webcom refuses.
    let wait = expires
        .duration_since(SystemTime::now())
        .unwrap_or_default()
        + Duration::from_millis(1100);
    tokio::time::sleep(wait).await;
    let after = h.get("/account", Some(&session(&cookie))).await;
    assert_eq!(after.status(), StatusCode::SEE_OTHER);
    assert_eq!(h.dev.calls(), calls + 1, "the tombstone ended at expires");
}

/// T-H2: the cached user's freshness is capped by `expires`; the expired
/// token is never served, and the cookie is cleared.
#[tokio::test]
async fn an_expired_token_is_not_served_and_its_cookie_is_cleared() {
    let h = harness_with(Duration::from_secs(4), |c| {
        c.with_cache_ttl(Duration::from_secs(60))
    })
    .await;
    let cookie = h.guest_cookie().await;
    let ok = h.get("/account", Some(&session(&cookie))).await;
    assert_eq!(ok.status(), StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(5100)).await;
    let calls = h.dev.calls();
    let expired = h.get("/account", Some(&session(&cookie))).await;
    assert_eq!(expired.status(), StatusCode::SEE_OTHER);
    assert!(is_removal(&set_cookie(expired.headers(), SESSION).unwrap()));
    assert_eq!(h.dev.calls(), calls + 1, "the 60 s cache did not serve it");
}

// ---------------------------------------------------------------------------
// A fault-injecting Webcom (SECURITY.md R1, R9)

#[derive(Clone, Copy, Debug)]
enum Fault {
    /// A valid user whose token expires at this Unix time.
    Valid(u64),
    /// This status and body (JSON if it starts with `{`).
    Answer(u16, &'static str),
    /// Never answer.
    Hang,
}

#[derive(Clone)]
struct FaultServer {
    url: String,
    fault: Arc<Mutex<Fault>>,
    calls: Arc<AtomicUsize>,
}

impl FaultServer {
    async fn spawn() -> Self {
        let fault = Arc::new(Mutex::new(Fault::Valid(unix_now() + 3600)));
        let calls = Arc::new(AtomicUsize::new(0));
        let (f, n) = (fault.clone(), calls.clone());
        let router = Router::new().fallback(move || {
            let fault = *f.lock().unwrap();
            n.fetch_add(1, Ordering::SeqCst);
            async move {
                match fault {
                    Fault::Valid(expires) => axum::Json(serde_json::json!({"data": {
                        "uid": "u1", "provider": "password", "providerUid": "ada@example.com",
                        "providerProfile": {"displayName": "Ada"}, "expires": expires
                    }}))
                    .into_response(),
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

fn fault_app(base: &str, tune: impl FnOnce(AuthConfig) -> AuthConfig) -> App {
    let client = Client::builder(base, "my-app")
        .with_timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let (events, _) = AuthEvents::channel(8);
    app_for(&client, tune(config(events)))
}

async fn get_with(app: &App, path: &str, cookies: &str) -> http::Response<Body> {
    app.clone()
        .oneshot(page_request("GET", path, Some(cookies)))
        .await
        .unwrap()
}

/// R1 (issue 12 point 1): only Webcom's `INVALID_TOKEN` on a 4xx clears
/// the cookie; 5xx, 429, a timeout, a refused connection, a non-JSON
/// answer, a bare 401 and an unknown code keep it (503, never a redirect).
#[tokio::test]
async fn only_invalid_token_clears_the_cookie() {
    let server = FaultServer::spawn().await;
    let cookie = session("tok-123");
    let cases: &[(&str, Fault, bool)] = &[
        (
            "500",
            Fault::Answer(500, r#"{"error":{"code":"INVALID_TOKEN"}}"#),
            false,
        ),
        (
            "502 html",
            Fault::Answer(502, "<html>bad gateway</html>"),
            false,
        ),
        ("503", Fault::Answer(503, "{}"), false),
        (
            "429",
            Fault::Answer(429, r#"{"error":{"code":"TOO_MANY"}}"#),
            false,
        ),
        ("timeout", Fault::Hang, false),
        (
            "200 not json",
            Fault::Answer(200, "<html>hello</html>"),
            false,
        ),
        (
            "200 no uid",
            Fault::Answer(200, r#"{"data":{"provider":"x"}}"#),
            false,
        ),
        ("401 html", Fault::Answer(401, "<html>login</html>"), false),
        (
            "404 unknown code",
            Fault::Answer(404, r#"{"error":{"code":"UNKNOWN_APPLICATION"}}"#),
            false,
        ),
        (
            "401 INVALID_TOKEN",
            Fault::Answer(401, r#"{"error":{"code":"INVALID_TOKEN","message":"m"}}"#),
            true,
        ),
        (
            "400 bare INVALID_TOKEN",
            Fault::Answer(400, r#"{"code":"INVALID_TOKEN","message":"m"}"#),
            true,
        ),
    ];
    for (name, fault, definitive) in cases {
        server.set(*fault);
        let app = fault_app(&server.url, |c| c);
        let calls = server.calls();
        let response = get_with(&app, "/account", &cookie).await;
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

    // Connection refused: a port nobody listens on.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let app = fault_app(&dead, |c| c);
    let response = get_with(&app, "/account", &cookie).await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(set_cookie(response.headers(), SESSION).is_none());
}

/// T-H2, R2: a cached user is served stale during an outage, but never
/// past the token's `expires`; a server that still calls an expired token
/// valid is not believed.
#[tokio::test]
async fn an_expired_token_is_never_served_stale() {
    let server = FaultServer::spawn().await;
    let cookie = session("tok-exp");
    let app = fault_app(&server.url, |c| {
        c.with_cache_ttl(Duration::from_millis(200))
            .with_stale_window(Duration::from_secs(600))
            .with_failure_cooldown(Duration::from_millis(1))
    });
    // Seconds of margin between the steps, for a loaded machine.
    server.set(Fault::Valid(unix_now() + 4));
    assert_eq!(
        get_with(&app, "/account", &cookie).await.status(),
        StatusCode::OK
    );

    // Past the fresh TTL, before `expires`: the stale user is served.
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.set(Fault::Answer(503, "{}"));
    // (`expires` is at least 3 s after the warm-up: whole seconds.)
    let stale = get_with(&app, "/account", &cookie).await;
    assert_eq!(stale.status(), StatusCode::OK, "stale within expires");

    // Past `expires` with the stale window still open: not served.
    tokio::time::sleep(Duration::from_millis(4200)).await;
    let outage = get_with(&app, "/account", &cookie).await;
    assert_eq!(outage.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        set_cookie(outage.headers(), SESSION).is_none(),
        "outage keeps the cookie"
    );

    // Webcom answers "valid" but with an `expires` in the past: refused
    // (once the 1 ms failure cooldown has passed).
    server.set(Fault::Valid(unix_now() - 5));
    tokio::time::sleep(Duration::from_millis(20)).await;
    let refused = get_with(&app, "/account", &cookie).await;
    assert_eq!(refused.status(), StatusCode::SEE_OTHER);
    assert!(
        set_cookie(refused.headers(), SESSION)
            .as_ref()
            .is_some_and(is_removal)
    );
}

// ---------------------------------------------------------------------------
// Redaction

/// T-G1: no token, request key, challenge or key material in `Debug`.
#[tokio::test]
async fn debug_output_carries_no_secret() {
    let h = harness().await;
    let c = &h.client;
    let details = c.sign_in_as_guest().await.unwrap();
    let secret = details.token.expose().to_owned();
    let grant = details.grant();
    let challenge = c
        .send_otp(Provider::Phone, "33611112222", &Message::new())
        .await
        .unwrap();
    let key = ServerKey::from_pem("backend", SERVER_KEY).unwrap();
    let err = c
        .sign_in_with_credentials(
            Provider::Password,
            &Credentials::password("x@example.com", "pw-secret-1"),
        )
        .await
        .unwrap_err();
    let texts = [
        format!("{details:?}"),
        format!("{grant:?}"),
        format!("{challenge:?}"),
        format!("{key:?}"),
        format!("{c:?}"),
        format!("{err:?} {err}"),
        format!("{:?}", h.dev),
    ];
    for text in &texts {
        assert!(!text.contains(&secret), "{text}");
        assert!(!text.contains(challenge.expose()), "{text}");
        assert!(
            !text.contains("PRIVATE KEY") && !text.contains("pw-secret-1"),
            "{text}"
        );
    }
    assert!(texts[0].contains("redacted"));
}

// ---------------------------------------------------------------------------
// The core change behind the expiry rule, with any upstream

/// An upstream that calls every session valid but reports it expired.
struct Lenient;

impl Upstream for Lenient {
    fn capabilities(&self) -> Capabilities {
        Capabilities::new()
    }

    fn lookup<'a>(
        &'a self,
        _session: &'a authgate::upstream::Session,
    ) -> authgate::upstream::BoxFuture<'a, Result<authgate::upstream::Lookup, authgate::Error>>
    {
        let user = authgate::User::new("u1", serde_json::json!({"id": "u1"}));
        let valid = authgate::upstream::Valid::new(user)
            .with_expires_at(SystemTime::now() - Duration::from_secs(1));
        Box::pin(std::future::ready(Ok(authgate::upstream::Lookup::Valid(
            valid,
        ))))
    }

    fn start_sign_in<'a>(
        &'a self,
        _start: authgate::upstream::SignInStart<'a>,
    ) -> authgate::upstream::BoxFuture<
        'a,
        Result<authgate::upstream::SignInRedirect, authgate::Error>,
    > {
        Box::pin(std::future::ready(Err(authgate::Error::unsupported())))
    }

    fn complete_callback<'a>(
        &'a self,
        _params: &'a authgate::upstream::CallbackParams,
        _flow: Option<&'a authgate::upstream::FlowRecord>,
    ) -> authgate::upstream::BoxFuture<
        'a,
        Result<authgate::upstream::CallbackOutcome, authgate::Error>,
    > {
        Box::pin(std::future::ready(Err(authgate::Error::unsupported())))
    }

    fn sign_out<'a>(
        &'a self,
        _session: &'a authgate::upstream::Session,
        _scope: SignOutScope,
        _after: &'a Url,
    ) -> authgate::upstream::BoxFuture<
        'a,
        Result<authgate::upstream::SignOutOutcome, authgate::Error>,
    > {
        Box::pin(std::future::ready(Ok(
            authgate::upstream::SignOutOutcome::Done,
        )))
    }
}

/// T-H2 in the core: a lookup whose own `expires_at` has passed is a
/// definitive "invalid", whatever upstream answered it.
#[tokio::test]
async fn a_valid_lookup_past_its_own_expiry_is_invalid_in_the_core() {
    let (events, _) = AuthEvents::channel(8);
    let app = AuthLayer::new(config(events), Lenient)
        .layer(Router::new().route("/account", get(account)));
    let response = get_with(&app, "/account", &session("tok-lenient")).await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    assert!(
        set_cookie(response.headers(), SESSION)
            .as_ref()
            .is_some_and(is_removal)
    );
}

// ---------------------------------------------------------------------------
// Logs (SECURITY.md T-G1)

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

/// T-G1: a sign-in, a refused landing, an OTP sign-in, a resolution and a
/// sign-out, traced at TRACE level: no token, `__wcsession`, OTP or
/// challenge in the log (raw, percent-encoded or base64).
#[tokio::test(flavor = "current_thread")]
async fn no_webcom_secret_reaches_the_logs() {
    let capture = Capture::default();
    let writer = capture.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let h = harness().await;
    let mut secrets = Vec::new();

    let mut browser = Browser::default();
    let sign_in = h.start(&mut browser, "google").await;
    let back = consent(&sign_in, "log@example.com", "allow").await;
    secrets.push(query_param(&back, "__wcsession").unwrap());
    let response = h.get(&app_path(&back), browser.header().as_deref()).await;
    browser.absorb(response.headers());
    secrets.push(browser.jar[SESSION].clone());
    // The replay is refused and logged.
    let replay = h.get(&app_path(&back), browser.header().as_deref()).await;
    assert_eq!(replay.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        h.get("/account", browser.header().as_deref())
            .await
            .status(),
        StatusCode::OK
    );
    let challenge = h
        .client
        .send_otp(Provider::Phone, "33655555555", &Message::new())
        .await
        .unwrap();
    let otp = h.dev.last_message_to("33655555555").unwrap().code;
    let phone = h
        .client
        .sign_in_with_credentials(
            Provider::Phone,
            &Credentials::otp("33655555555", challenge.expose(), &otp),
        )
        .await
        .unwrap();
    secrets.extend([
        challenge.expose().to_owned(),
        otp,
        phone.token.expose().to_owned(),
    ]);
    let mut sign_out = page_request("POST", "/auth/signout", browser.header().as_deref());
    *sign_out.method_mut() = http::Method::POST;
    assert_eq!(h.send(sign_out).await.status(), StatusCode::SEE_OTHER);

    let log = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
    assert!(log.contains("authgate"), "the capture works");
    for secret in &secrets {
        let forms = [
            secret.clone(),
            url::form_urlencoded::byte_serialize(secret.as_bytes()).collect(),
            URL_SAFE_NO_PAD.encode(secret),
        ];
        for form in forms {
            assert!(!appears(&log, &form), "a secret in the log");
        }
    }
}

/// Whether `secret` appears in `log` as itself: a six-digit one-time code
/// inside a longer number (a timestamp, a port) is not it.
fn appears(log: &str, secret: &str) -> bool {
    let digits = |b: Option<&u8>| b.is_some_and(u8::is_ascii_digit);
    log.match_indices(secret).any(|(at, _)| {
        let bytes = log.as_bytes();
        let before = at.checked_sub(1).and_then(|i| bytes.get(i));
        let after = bytes.get(at + secret.len());
        !(secret.bytes().all(|b| b.is_ascii_digit()) && (digits(before) || digits(after)))
    })
}
