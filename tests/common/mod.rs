//! Shared fixtures: the dev upstream on 127.0.0.1:0, a small app behind the
//! layer, and helpers to read responses.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

use authgate::dev::DevUpstream;
use authgate::{Auth, AuthState};
use authgate::{AuthConfig, AuthLayer, AuthService, CurrentUser, SameOrigin, altogic};
use axum::Router;
use axum::body::Body;
use axum::extract::{Form, State};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use http::header::{COOKIE, LOCATION, SET_COOKIE};
use http::{HeaderMap, Request, StatusCode};
use http_body_util::BodyExt as _;
use tower::ServiceExt as _;

pub const ORIGIN: &str = "https://app.example";
pub const KEY: [u8; 64] = [42; 64];

pub type App = AuthService<Router>;

pub struct Site {
    pub app: App,
    pub layer: AuthLayer,
    pub dev: DevUpstream,
    pub client: altogic::Client,
    pub config: AuthConfig,
}

impl Site {
    pub fn cookie_name(&self) -> String {
        self.config.session_cookie_name()
    }

    pub async fn get(&self, path: &str, cookie: Option<&str>) -> Response<Body> {
        self.send(request("GET", path, cookie)).await
    }

    pub async fn send(&self, request: Request<Body>) -> Response<Body> {
        self.app.clone().oneshot(request).await.expect("infallible")
    }

    /// A signed-in user with a fresh session: (user id, token).
    pub async fn user(&self, email: &str) -> (String, String) {
        let response = self
            .client
            .sign_up_with_email(email, "password-1", Some(serde_json::json!("Ada Lovelace")))
            .await
            .expect("sign-up");
        let token = response.session.expect("session").token.expose().to_owned();
        (response.user.id, token)
    }

    /// A fresh session for an existing user.
    pub async fn session(&self, email: &str, password: &str) -> String {
        self.client
            .sign_in_with_email(email, password)
            .await
            .expect("sign-in")
            .session
            .expect("session")
            .token
            .expose()
            .to_owned()
    }

    pub fn cookie(&self, token: &str) -> String {
        format!("{}={token}", self.cookie_name())
    }

    /// Opens a callback landing as a browser would: an e-mail link's
    /// landing is held (SECURITY.md T-B6.4) until a same-origin `POST` to
    /// `/auth/continue` with the link cookie, which this helper sends.
    pub async fn land(&self, callback: &str, user_agent: Option<&str>) -> Response<Body> {
        let mut first = request("GET", callback, None);
        if let Some(user_agent) = user_agent {
            first
                .headers_mut()
                .insert("user-agent", user_agent.parse().unwrap());
        }
        let response = self.send(first).await;
        if response
            .headers()
            .get(LOCATION)
            .and_then(|l| l.to_str().ok())
            != Some(&format!("{ORIGIN}/auth/continue"))
        {
            return response;
        }
        let link = set_cookie(response.headers(), &format!("{}-link", self.cookie_name()))
            .expect("the held link's cookie");
        let mut post = form(
            "/auth/continue",
            Some(&format!("{}={}", link.name(), link.value())),
            "",
        );
        if let Some(user_agent) = user_agent {
            post.headers_mut()
                .insert("user-agent", user_agent.parse().unwrap());
        }
        self.send(post).await
    }

    /// Mails `email` a magic link and follows it to the app's callback: the
    /// callback's path and query.
    pub async fn magic_link_callback(&self, email: &str) -> String {
        self.client
            .send_magic_link_email(email)
            .await
            .expect("magic link sent");
        let link = self
            .dev
            .last_message_to(email)
            .expect("a message")
            .link
            .expect("a link");
        self.follow_upstream(&link).await
    }

    /// Follows a dev-upstream link (e-mail link or simulator) to the app's
    /// callback: the path and query of the Location it answers.
    pub async fn follow_upstream(&self, link: &str) -> String {
        let http = no_redirect_client();
        let response = http.get(link).send().await.expect("dev upstream");
        assert_eq!(response.status(), StatusCode::SEE_OTHER, "{link}");
        local_path(response.headers()[LOCATION].to_str().unwrap())
    }
}

pub fn no_redirect_client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// `https://app.example/x?y` → `/x?y`.
pub fn local_path(location: &str) -> String {
    let url = url::Url::parse(location).expect("absolute");
    assert_eq!(url.origin().ascii_serialization(), ORIGIN, "{location}");
    match url.query() {
        Some(q) => format!("{}?{q}", url.path()),
        None => url.path().to_owned(),
    }
}

pub fn request(method: &str, path: &str, cookie: Option<&str>) -> Request<Body> {
    let mut builder = Request::builder()
        .method(method)
        .uri(path)
        .header("accept", "text/html")
        .header("sec-fetch-site", "same-origin");
    if let Some(cookie) = cookie {
        builder = builder.header(COOKIE, cookie);
    }
    builder.body(Body::empty()).unwrap()
}

pub fn form(path: &str, cookie: Option<&str>, body: &str) -> Request<Body> {
    let mut builder = Request::post(path)
        .header("content-type", "application/x-www-form-urlencoded")
        .header("origin", ORIGIN)
        .header("sec-fetch-site", "same-origin");
    if let Some(cookie) = cookie {
        builder = builder.header(COOKIE, cookie);
    }
    builder.body(Body::from(body.to_owned())).unwrap()
}

pub async fn body_string(response: Response<Body>) -> String {
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(bytes.to_vec()).unwrap()
}

pub fn set_cookies(headers: &HeaderMap) -> Vec<cookie::Cookie<'static>> {
    headers
        .get_all(SET_COOKIE)
        .iter()
        .map(|v| cookie::Cookie::parse(v.to_str().unwrap().to_owned()).unwrap())
        .collect()
}

pub fn set_cookie(headers: &HeaderMap, name: &str) -> Option<cookie::Cookie<'static>> {
    let matching: Vec<_> = set_cookies(headers)
        .into_iter()
        .filter(|c| c.name() == name)
        .collect();
    assert!(matching.len() <= 1, "two Set-Cookie for {name} (T-C7)");
    matching.into_iter().next()
}

pub fn is_removal(cookie: &cookie::Cookie<'_>) -> bool {
    cookie.value().is_empty() && cookie.max_age() == Some(time::Duration::ZERO)
}

pub fn location(response: &Response<Body>) -> &str {
    response.headers()[LOCATION].to_str().unwrap()
}

pub fn query_param(path_or_url: &str, name: &str) -> Option<String> {
    let query = path_or_url.split_once('?')?.1;
    url::form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

#[derive(serde::Deserialize)]
struct SignInForm {
    email: String,
    password: String,
    return_to: Option<String>,
}

async fn home(user: Option<CurrentUser>, auth: Auth) -> String {
    match (user, auth.state().await) {
        (Some(user), _) => format!(
            "home: signed in as {}",
            user.email.as_deref().unwrap_or("?")
        ),
        (None, AuthState::Unavailable) => "home: anonymous (upstream unavailable)".to_owned(),
        (None, _) => "home: anonymous".to_owned(),
    }
}

async fn account(user: CurrentUser) -> String {
    format!(
        "account: {} <{}>",
        user.display_name(),
        user.email.as_deref().unwrap_or("")
    )
}

async fn cached_account(user: CurrentUser) -> Response {
    let mut response = format!("cached: {}", user.id).into_response();
    let headers = response.headers_mut();
    headers.insert("cache-control", "public, max-age=600".parse().unwrap());
    headers.insert("vary", "Accept-Encoding".parse().unwrap());
    response
}

async fn public_page() -> Response {
    let mut response = "public".into_response();
    response
        .headers_mut()
        .insert("cache-control", "public, max-age=600".parse().unwrap());
    response
}

async fn sign_in(
    _: SameOrigin,
    auth: Auth,
    State(client): State<altogic::Client>,
    Form(form): Form<SignInForm>,
) -> Response {
    match client.sign_in_with_email(&form.email, &form.password).await {
        Ok(response) => {
            if let Some(grant) = response.into_grant()
                && let Err(err) = auth.sign_in(grant)
            {
                return (StatusCode::INTERNAL_SERVER_ERROR, err.to_string()).into_response();
            }
            Redirect::to(&auth.return_to(form.return_to.as_deref())).into_response()
        }
        Err(err) => (
            StatusCode::UNAUTHORIZED,
            format!("error: {}", err.message().unwrap_or("?")),
        )
            .into_response(),
    }
}

#[derive(serde::Deserialize)]
struct ResetForm {
    password: String,
}

async fn reset_page(auth: Auth) -> String {
    match auth.password_reset_key() {
        Some(_) => "reset: pending".to_owned(),
        None => "reset: none".to_owned(),
    }
}

async fn reset_submit(
    _: SameOrigin,
    auth: Auth,
    State(client): State<altogic::Client>,
    Form(form): Form<ResetForm>,
) -> Response {
    let reset = auth.reset_password_with(|key| async move {
        client.reset_pwd_with_token(&key, &form.password).await
    });
    match reset.await {
        Ok(()) => Redirect::to("/signin?reset=ok").into_response(),
        Err(err) => (StatusCode::BAD_REQUEST, format!("reset failed: {err}")).into_response(),
    }
}

async fn both(user: CurrentUser, again: Option<CurrentUser>, auth: Auth) -> String {
    let state = auth.state().await;
    format!(
        "{} {} {}",
        user.id,
        again.map(|u| u.id.clone()).unwrap_or_default(),
        state.is_signed_in()
    )
}

pub fn router(client: altogic::Client) -> Router {
    Router::new()
        .route("/", get(home))
        .route("/public", get(public_page))
        .route("/account", get(account))
        .route(
            "/update",
            post(|user: CurrentUser| async move { user.id.clone() }),
        )
        .route("/both", get(both))
        .route("/cached", get(cached_account))
        .route("/signin", post(sign_in))
        .route("/reset-password", get(reset_page).post(reset_submit))
        .with_state(client)
}

pub async fn site() -> Site {
    site_with(|config| config).await
}

pub async fn site_with(configure: impl FnOnce(AuthConfig) -> AuthConfig) -> Site {
    let dev = DevUpstream::spawn().await.expect("dev upstream");
    let config = configure(
        AuthConfig::new(ORIGIN)
            .unwrap()
            .with_key(KEY)
            .unwrap()
            .with_after_sign_in("/account")
            .unwrap(),
    );
    dev.set_redirect_url(&config.callback_url());
    let client = altogic::Client::new(dev.url(), dev.client_key()).unwrap();
    let layer = AuthLayer::new(config.clone(), client.clone());
    let app = layer.layer(router(client.clone()));
    Site {
        app,
        layer,
        dev,
        client,
        config,
    }
}
