//! End-to-end tests of the dev upstream over real HTTP (this file is
//! compiled only under #[cfg(test)], see `mod tests` in mod.rs).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use super::{Channel, DevUpstream, DevUpstreamBuilder, MessageKind, store};

const REDIRECT: &str = "http://app.test/auth/callback?from=dev";
const UA_CHROME_MAC: &str = "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/108.0.0.0 Safari/537.36";

struct T {
    up: DevUpstream,
    http: reqwest::Client,
}

/// The result of one API call: status and parsed body (`Null` when empty).
struct Reply {
    status: StatusCode,
    body: Value,
    raw: String,
}

impl Reply {
    fn code(&self) -> &str {
        self.body["errors"][0]["code"].as_str().unwrap_or("<none>")
    }

    #[track_caller]
    fn ok(&self) -> &Value {
        assert_eq!(self.status, StatusCode::OK, "body: {}", self.raw);
        &self.body
    }

    #[track_caller]
    fn no_data(&self) {
        assert_eq!(self.status, StatusCode::OK, "body: {}", self.raw);
        assert!(
            self.raw.is_empty(),
            "expected an empty body, got {}",
            self.raw
        );
    }

    #[track_caller]
    fn err(&self, status: u16, code: &str) {
        assert_eq!(self.status.as_u16(), status, "body: {}", self.raw);
        assert_eq!(self.code(), code, "body: {}", self.raw);
        let entry = &self.body["errors"][0];
        assert!(entry["origin"].is_string());
        assert!(entry["message"].as_str().is_some_and(|m| !m.is_empty()));
        assert!(entry["details"].is_object());
    }
}

impl T {
    async fn new() -> T {
        T::with(DevUpstream::builder()).await
    }

    async fn with(builder: DevUpstreamBuilder) -> T {
        let up = builder.with_redirect_url(REDIRECT).spawn().await.unwrap();
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(UA_CHROME_MAC)
            .build()
            .unwrap();
        T { up, http }
    }

    fn api(&self, op: &str) -> String {
        format!("{}/_api/rest/v1/auth/{op}", self.up.url())
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> Reply {
        let res = req.send().await.unwrap();
        let status = res.status();
        let raw = res.text().await.unwrap();
        let body = if raw.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&raw).unwrap_or(Value::Null)
        };
        Reply { status, body, raw }
    }

    async fn call(
        &self,
        method: Method,
        op: &str,
        query: &[(&str, &str)],
        body: Option<Value>,
        session: Option<&str>,
    ) -> Reply {
        let mut req = self
            .http
            .request(method, self.api(op))
            .header("X-Client-Key", self.up.client_key())
            .query(query);
        if let Some(s) = session {
            req = req.header("Session", s);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        self.send(req).await
    }

    async fn post(&self, op: &str, query: &[(&str, &str)], body: Option<Value>) -> Reply {
        self.call(Method::POST, op, query, body, None).await
    }

    async fn post_s(&self, op: &str, session: &str, body: Option<Value>) -> Reply {
        self.call(Method::POST, op, &[], body, Some(session)).await
    }

    async fn get_s(&self, op: &str, session: &str) -> Reply {
        self.call(Method::GET, op, &[], None, Some(session)).await
    }

    async fn grant(&self, key: &str) -> Reply {
        self.call(Method::GET, "grant", &[("key", key)], None, None)
            .await
    }

    /// Signs up by e-mail with confirmation off; returns (user, token).
    async fn signup_email(&self, email: &str, password: &str) -> (Value, String) {
        let r = self
            .post(
                "signup-email",
                &[],
                Some(json!({"email": email, "password": password, "nameOrUserData": "Ada"})),
            )
            .await;
        let body = r.ok().clone();
        let token = body["session"]["token"].as_str().unwrap().to_owned();
        (body["user"].clone(), token)
    }

    async fn signup_phone(&self, phone: &str, password: &str, data: Value) -> Reply {
        self.post(
            "signup-phone",
            &[],
            Some(json!({"phone": phone, "password": password, "nameOrUserData": data})),
        )
        .await
    }

    async fn signin_email(&self, email: &str, password: &str) -> Reply {
        self.post(
            "signin-email",
            &[],
            Some(json!({"email": email, "password": password})),
        )
        .await
    }

    async fn signin_phone(&self, phone: &str, password: &str) -> Reply {
        self.post(
            "signin-phone",
            &[],
            Some(json!({"phone": phone, "password": password})),
        )
        .await
    }

    /// Follows a landing link; asserts a 303 to the redirect URL and returns
    /// its query parameters.
    async fn landing(&self, link: &str) -> HashMap<String, String> {
        let res = self.http.get(link).send().await.unwrap();
        assert_eq!(res.status(), StatusCode::SEE_OTHER, "landing {link}");
        let location = res.headers()["location"].to_str().unwrap().to_owned();
        location_params(&location)
    }

    fn last_link(&self, to: &str) -> String {
        self.up.last_message_to(to).unwrap().link.unwrap()
    }

    fn last_code(&self, to: &str) -> String {
        self.up.last_message_to(to).unwrap().code.unwrap()
    }
}

/// Checks that `location` points at [`REDIRECT`] (keeping its own query) and
/// returns the added parameters.
fn location_params(location: &str) -> HashMap<String, String> {
    let url = url::Url::parse(location).unwrap();
    assert_eq!(url.scheme(), "http");
    assert_eq!(url.host_str(), Some("app.test"));
    assert_eq!(url.path(), "/auth/callback");
    let params: HashMap<String, String> = url.query_pairs().into_owned().collect();
    assert_eq!(params.get("from").map(String::as_str), Some("dev"));
    params
}

fn param<'a>(params: &'a HashMap<String, String>, name: &str) -> Option<&'a str> {
    params.get(name).map(String::as_str)
}

fn is_rfc3339_ms(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 24
        && b[4] == b'-'
        && b[7] == b'-'
        && b[10] == b'T'
        && b[13] == b':'
        && b[16] == b':'
        && b[19] == b'.'
        && b[23] == b'Z'
}

// ---------------------------------------------------------------- basics

#[tokio::test]
async fn binds_loopback_and_reports_url_and_key() {
    let t = T::new().await;
    assert!(t.up.url().starts_with("http://127.0.0.1:"));
    assert!(!t.up.url().ends_with('/'));
    assert_eq!(t.up.client_key(), "dev-client-key");
    assert_eq!(t.up.redirect_url().as_deref(), Some(REDIRECT));

    let custom = DevUpstream::builder()
        .with_client_key("k-123")
        .spawn()
        .await
        .unwrap();
    assert_eq!(custom.client_key(), "k-123");
    assert_eq!(custom.redirect_url(), None);
    assert_ne!(custom.url(), t.up.url());
}

#[tokio::test]
async fn debug_does_not_leak_secrets() {
    let up = DevUpstream::builder()
        .with_client_key("super-secret-key")
        .spawn()
        .await
        .unwrap();
    let dbg = format!("{up:?}");
    assert!(dbg.contains(up.url()));
    assert!(!dbg.contains("super-secret-key"), "{dbg}");
    let b = DevUpstream::builder().with_client_key("super-secret-key");
    assert!(!format!("{b:?}").contains("super-secret-key"));
}

#[tokio::test]
async fn client_key_is_checked_first_and_never_looks_like_a_session_error() {
    let t = T::new().await;
    let (_, token) = t.signup_email("ada@example.com", "secret1").await;

    // No key at all.
    let r = t
        .send(t.http.get(t.api("user")).header("Session", &token))
        .await;
    r.err(401, "invalid_client_key");

    // Wrong key, valid session.
    let r = t
        .send(
            t.http
                .get(t.api("user"))
                .header("X-Client-Key", "nope")
                .header("Session", &token),
        )
        .await;
    r.err(401, "invalid_client_key");

    // Wrong key on an unknown path: still the key error.
    let r = t
        .send(
            t.http
                .get(format!("{}/_api/rest/v1/nothing", t.up.url()))
                .header("X-Client-Key", "nope"),
        )
        .await;
    r.err(401, "invalid_client_key");

    // Right key: fine.
    t.get_s("user", &token).await.ok();
}

#[tokio::test]
async fn counts_api_calls_only() {
    let t = T::new().await;
    assert_eq!(t.up.upstream_calls(), 0);
    t.post("send-magic", &[("email", "x@example.com")], None)
        .await
        .no_data();
    t.send(t.http.get(t.api("user"))).await; // rejected, still counted
    t.http
        .get(format!("{}/_dev/outbox.json", t.up.url()))
        .send()
        .await
        .unwrap();
    t.http
        .get(format!("{}/_auth/google", t.up.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(t.up.upstream_calls(), 2);
}

#[tokio::test]
async fn unknown_paths_and_wrong_methods_are_json_errors() {
    let t = T::new().await;
    t.post("does-not-exist", &[], None)
        .await
        .err(404, "not_found");
    t.send(
        t.http
            .get(format!("{}/_api/other", t.up.url()))
            .header("X-Client-Key", t.up.client_key()),
    )
    .await
    .err(404, "not_found");
    t.call(Method::GET, "signin-email", &[], None, None)
        .await
        .err(405, "method_not_allowed");
    t.call(Method::POST, "user", &[], None, Some("x"))
        .await
        .err(405, "method_not_allowed");
    let r = t.send(t.http.get(format!("{}/nowhere", t.up.url()))).await;
    r.err(404, "not_found");
}

#[tokio::test]
async fn malformed_bodies_are_invalid_request() {
    let t = T::new().await;
    let r = t
        .send(
            t.http
                .post(t.api("signin-email"))
                .header("X-Client-Key", t.up.client_key())
                .header("Content-Type", "application/json")
                .body("{not json"),
        )
        .await;
    r.err(400, "invalid_request");
    t.post("signin-email", &[], Some(json!([1, 2])))
        .await
        .err(400, "invalid_request");
    t.post(
        "signin-email",
        &[],
        Some(json!({"email": 5, "password": "x"})),
    )
    .await
    .err(400, "invalid_request");
    t.post("signin-email", &[], None)
        .await
        .err(400, "invalid_request");
    let big = "x".repeat(100 * 1024);
    t.post("signin-email", &[], Some(json!({"email": big})))
        .await
        .err(413, "payload_too_large");
}

// ---------------------------------------------------------------- sign-up / sign-in

#[tokio::test]
async fn signup_email_without_confirmation_returns_user_and_session() {
    let t = T::new().await;
    let r = t
        .post(
            "signup-email",
            &[],
            Some(
                json!({"email": "Ada@Example.COM", "password": "secret1", "nameOrUserData": "Ada"}),
            ),
        )
        .await;
    let body = r.ok();
    let user = &body["user"];
    let id = user["_id"].as_str().unwrap();
    assert_eq!(id.len(), 24);
    assert_eq!(user["provider"], "Altogic");
    assert_eq!(user["providerUserId"], id);
    assert_eq!(user["email"], "ada@example.com");
    assert_eq!(user["name"], "Ada");
    assert_eq!(user["emailVerified"], false);
    assert_eq!(user["phoneVerified"], false);
    assert!(user.get("phone").is_none());
    assert!(user.get("password").is_none());
    assert!(is_rfc3339_ms(user["signUpAt"].as_str().unwrap()));
    assert!(is_rfc3339_ms(user["lastLoginAt"].as_str().unwrap()));
    assert!(!r.raw.contains("secret1"));

    let session = &body["session"];
    let token = session["token"].as_str().unwrap();
    assert_eq!(token.len(), 43);
    assert!(
        token
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    );
    assert_eq!(session["userId"], id);
    assert!(is_rfc3339_ms(session["creationDtm"].as_str().unwrap()));
    assert_eq!(session["accessGroupKeys"], json!([]));
    assert_eq!(session["userAgent"]["family"], "Chrome");
    assert_eq!(session["userAgent"]["major"], "108");
    assert_eq!(session["userAgent"]["os"]["family"], "Mac OS X");
    assert_eq!(session["userAgent"]["os"]["major"], "10");
    assert_eq!(session["userAgent"]["os"]["minor"], "15");
    assert_eq!(session["userAgent"]["os"]["patch"], "7");
    assert_eq!(session["userAgent"]["device"]["family"], "Other");

    let me = t.get_s("user", token).await;
    assert_eq!(me.ok()["_id"], id);
    assert!(t.up.outbox().is_empty());
}

#[tokio::test]
async fn signup_email_validation_errors() {
    let t = T::new().await;
    t.post("signup-email", &[], Some(json!({"password": "secret1"})))
        .await
        .err(400, "invalid_request");
    t.post(
        "signup-email",
        &[],
        Some(json!({"email": "not-an-email", "password": "secret1"})),
    )
    .await
    .err(400, "invalid_request");
    t.post(
        "signup-email",
        &[],
        Some(json!({"email": "a@example.com", "password": "12345"})),
    )
    .await
    .err(400, "invalid_password");
    t.post(
        "signup-email",
        &[],
        Some(json!({"email": "a@example.com", "password": "123456", "nameOrUserData": 7})),
    )
    .await
    .err(400, "invalid_request");
    t.signup_email("a@example.com", "123456").await;
    t.post(
        "signup-email",
        &[],
        Some(json!({"email": "A@EXAMPLE.com", "password": "123456"})),
    )
    .await
    .err(409, "email_not_unique");
}

#[tokio::test]
async fn name_or_user_data_object_is_merged() {
    let t = T::with(DevUpstream::builder().with_email_confirmation(true)).await;
    let r = t
        .post(
            "signup-email",
            &[],
            Some(json!({
                "email": "grace@example.com",
                "password": "secret1",
                "nameOrUserData": {
                    "name": "Grace",
                    "profilePicture": "https://img.example/g.png",
                    "emailVerified": true,
                    "plan": "pro",
                    "prefs": {"theme": "dark"},
                    "_id": "hijack",
                    "provider": "Evil",
                    "password": "sneaky",
                    "email": "other@example.com"
                }
            })),
        )
        .await;
    let body = r.ok();
    let user = &body["user"];
    assert_eq!(user["name"], "Grace");
    assert_eq!(user["profilePicture"], "https://img.example/g.png");
    assert_eq!(user["emailVerified"], true);
    assert_eq!(user["plan"], "pro");
    assert_eq!(user["prefs"]["theme"], "dark");
    assert_ne!(user["_id"], "hijack");
    assert_eq!(user["provider"], "Altogic");
    assert_eq!(user["email"], "grace@example.com");
    assert!(user.get("password").is_none());
    // emailVerified skipped the confirmation: a session and no e-mail.
    assert!(body["session"]["token"].is_string());
    assert!(t.up.outbox().is_empty());
    // Custom fields come back from `user` too.
    let token = body["session"]["token"].as_str().unwrap();
    assert_eq!(t.get_s("user", token).await.ok()["plan"], "pro");
}

#[tokio::test]
async fn signin_email_success_and_failures() {
    let t = T::new().await;
    let (user, _) = t.signup_email("ada@example.com", "secret1").await;
    let r = t.signin_email("ADA@example.com", "secret1").await;
    let body = r.ok();
    assert_eq!(body["user"]["_id"], user["_id"]);
    assert!(body["session"]["token"].is_string());

    t.signin_email("ada@example.com", "wrong-password")
        .await
        .err(401, "invalid_credentials");
    t.signin_email("nobody@example.com", "secret1")
        .await
        .err(401, "invalid_credentials");
    t.signin_email("ada@example.com", "")
        .await
        .err(400, "invalid_request");
}

#[tokio::test]
async fn signup_and_signin_by_phone() {
    let t = T::new().await;
    let r = t
        .signup_phone("+1 (555) 010-0100", "secret1", json!("Ada"))
        .await;
    let body = r.ok();
    assert_eq!(body["user"]["phone"], "+15550100100");
    assert!(body["user"].get("email").is_none());
    assert!(body["session"]["token"].is_string());

    t.signup_phone("+15550100100", "secret1", Value::Null)
        .await
        .err(409, "phone_not_unique");
    t.signup_phone("call me", "secret1", Value::Null)
        .await
        .err(400, "invalid_request");

    t.signin_phone("+15550100100", "secret1").await.ok();
    t.signin_phone("+15550100100", "nope-nope")
        .await
        .err(401, "invalid_credentials");
    t.signin_phone("+15550100199", "secret1")
        .await
        .err(401, "invalid_credentials");
}

// ---------------------------------------------------------------- e-mail confirmation and grants

#[tokio::test]
async fn email_confirmation_flow() {
    let t = T::with(DevUpstream::builder().with_email_confirmation(true)).await;
    let r = t
        .post(
            "signup-email",
            &[],
            Some(json!({"email": "ada@example.com", "password": "secret1"})),
        )
        .await;
    let body = r.ok();
    assert!(body["session"].is_null());
    assert_eq!(body["user"]["emailVerified"], false);

    let msg = t.up.last_message_to("ada@example.com").unwrap();
    assert_eq!(msg.channel, Channel::Email);
    assert_eq!(msg.kind, MessageKind::VerifyEmail);
    let link = msg.link.clone().unwrap();
    assert!(
        link.starts_with(&format!("{}/_auth/verify-email?key=", t.up.url())),
        "{link}"
    );
    assert!(msg.body.contains(&link));

    t.signin_email("ada@example.com", "secret1")
        .await
        .err(403, "email_not_verified");

    // Resend sends a second link.
    t.post("resend", &[("email", "ada@example.com")], None)
        .await
        .no_data();
    assert_eq!(t.up.outbox().len(), 2);
    // Unknown address: 200, nothing sent.
    t.post("resend", &[("email", "nobody@example.com")], None)
        .await
        .no_data();
    assert_eq!(t.up.outbox().len(), 2);

    let params = t.landing(&link).await;
    assert_eq!(param(&params, "action"), Some("email-confirm"));
    assert_eq!(param(&params, "status"), Some("200"));
    assert!(param(&params, "error").is_none());
    let access = param(&params, "access_token").unwrap().to_owned();

    let g = t.grant(&access).await;
    let body = g.ok();
    assert_eq!(body["user"]["emailVerified"], true);
    let token = body["session"]["token"].as_str().unwrap();
    t.get_s("user", token).await.ok();

    // Grants are single-use.
    t.grant(&access).await.err(401, "invalid_access_token");
    // Links are single-use: the landing redirects with an error.
    let again = t.landing(&link).await;
    assert_eq!(param(&again, "action"), Some("email-confirm"));
    assert_eq!(param(&again, "status"), Some("401"));
    assert!(param(&again, "error").is_some_and(|e| !e.is_empty()));
    assert!(param(&again, "access_token").is_none());

    t.signin_email("ada@example.com", "secret1").await.ok();
    t.post("resend", &[("email", "ada@example.com")], None)
        .await
        .err(400, "email_already_verified");

    t.up.set_email_confirmation(false);
    t.post("resend", &[("email", "ada@example.com")], None)
        .await
        .err(400, "email_confirmation_disabled");
}

#[tokio::test]
async fn email_confirmation_can_be_toggled_at_runtime() {
    let t = T::new().await;
    t.up.set_email_confirmation(true);
    let r = t
        .post(
            "signup-email",
            &[],
            Some(json!({"email": "a@example.com", "password": "secret1"})),
        )
        .await;
    assert!(r.ok()["session"].is_null());
    t.up.set_email_confirmation(false);
    t.signin_email("a@example.com", "secret1").await.ok();
}

#[tokio::test]
async fn grants_expire_and_unknown_keys_fail() {
    let t = T::new().await;
    t.signup_email("ada@example.com", "secret1").await;
    t.grant("no-such-key")
        .await
        .err(401, "invalid_access_token");
    t.call(Method::GET, "grant", &[], None, None)
        .await
        .err(400, "invalid_request");

    t.post("send-magic", &[("email", "ada@example.com")], None)
        .await
        .no_data();
    let params = t.landing(&t.last_link("ada@example.com")).await;
    let access = param(&params, "access_token").unwrap().to_owned();
    t.up.advance_clock(Duration::from_secs(5 * 60 + 1));
    t.grant(&access).await.err(401, "invalid_access_token");

    // A fresh one within 5 minutes works.
    t.post("send-magic", &[("email", "ada@example.com")], None)
        .await
        .no_data();
    let params = t.landing(&t.last_link("ada@example.com")).await;
    let access = param(&params, "access_token").unwrap().to_owned();
    t.up.advance_clock(Duration::from_secs(4 * 60));
    t.grant(&access).await.ok();
}

#[tokio::test]
async fn expired_links_redirect_with_an_error() {
    let t = T::new().await;
    t.signup_email("ada@example.com", "secret1").await;
    t.post("send-magic", &[("email", "ada@example.com")], None)
        .await
        .no_data();
    let link = t.last_link("ada@example.com");
    t.up.advance_clock(Duration::from_secs(2 * 60 * 60));
    let params = t.landing(&link).await;
    assert_eq!(param(&params, "action"), Some("magic-link"));
    assert_eq!(param(&params, "status"), Some("401"));
    assert!(param(&params, "error").unwrap().contains("expired"));
    assert!(param(&params, "access_token").is_none());

    // A made-up key too.
    let params = t
        .landing(&format!("{}/_auth/magic?key=made-up", t.up.url()))
        .await;
    assert_eq!(param(&params, "status"), Some("401"));
}

// ---------------------------------------------------------------- magic link

#[tokio::test]
async fn magic_link_signs_in() {
    let t = T::new().await;
    let (user, first) = t.signup_email("ada@example.com", "secret1").await;
    t.post("send-magic", &[("email", "ada@example.com")], None)
        .await
        .no_data();
    let msg = t.up.last_message_to("ada@example.com").unwrap();
    assert_eq!(msg.kind, MessageKind::MagicLink);
    let link = msg.link.unwrap();
    assert!(link.starts_with(&format!("{}/_auth/magic?key=", t.up.url())));

    let params = t.landing(&link).await;
    assert_eq!(param(&params, "action"), Some("magic-link"));
    assert_eq!(param(&params, "status"), Some("200"));
    let g = t.grant(param(&params, "access_token").unwrap()).await;
    let body = g.ok();
    assert_eq!(body["user"]["_id"], user["_id"]);
    assert_ne!(body["session"]["token"].as_str().unwrap(), first);

    // Unknown addresses are not revealed.
    let before = t.up.outbox().len();
    t.post("send-magic", &[("email", "nobody@example.com")], None)
        .await
        .no_data();
    assert_eq!(t.up.outbox().len(), before);
    t.post("send-magic", &[], None)
        .await
        .err(400, "invalid_request");
}

#[tokio::test]
async fn magic_link_needs_a_verified_email_when_confirmation_is_on() {
    let t = T::with(DevUpstream::builder().with_email_confirmation(true)).await;
    t.post(
        "signup-email",
        &[],
        Some(json!({"email": "ada@example.com", "password": "secret1"})),
    )
    .await
    .ok();
    t.post("send-magic", &[("email", "ada@example.com")], None)
        .await
        .err(403, "email_not_verified");
    t.post("send-reset", &[("email", "ada@example.com")], None)
        .await
        .err(403, "email_not_verified");
}

#[tokio::test]
async fn plus_in_email_survives_proper_encoding() {
    let t = T::new().await;
    t.signup_email("a+tag@example.com", "secret1").await;
    // reqwest encodes `+` as %2B.
    t.post("send-magic", &[("email", "a+tag@example.com")], None)
        .await
        .no_data();
    assert!(t.up.last_message_to("a+tag@example.com").is_some());
    // An unencoded `+` decodes to a space, which is not a valid address.
    let r = t
        .send(
            t.http
                .post(format!("{}?email=a+tag@example.com", t.api("send-magic")))
                .header("X-Client-Key", t.up.client_key()),
        )
        .await;
    r.err(400, "invalid_request");
}

// ---------------------------------------------------------------- password reset

#[tokio::test]
async fn reset_password_by_email() {
    let t = T::new().await;
    let (_, s1) = t.signup_email("ada@example.com", "secret1").await;
    let s2 = t.signin_email("ada@example.com", "secret1").await.ok()["session"]["token"]
        .as_str()
        .unwrap()
        .to_owned();

    t.post("send-reset", &[("email", "ada@example.com")], None)
        .await
        .no_data();
    let msg = t.up.last_message_to("ada@example.com").unwrap();
    assert_eq!(msg.kind, MessageKind::ResetPassword);
    let link = msg.link.unwrap();
    assert!(link.starts_with(&format!("{}/_auth/reset?key=", t.up.url())));
    let params = t.landing(&link).await;
    assert_eq!(param(&params, "action"), Some("reset-pwd"));
    assert_eq!(param(&params, "status"), Some("200"));
    let key = param(&params, "access_token").unwrap().to_owned();

    // A reset token is not a session grant (and using it as one does not burn it).
    t.grant(&key).await.err(401, "invalid_access_token");
    // Too short: refused without consuming the token.
    t.post(
        "reset-pwd",
        &[("key", &key)],
        Some(json!({"newPassword": "123"})),
    )
    .await
    .err(400, "invalid_password");
    t.post(
        "reset-pwd",
        &[("key", "bogus")],
        Some(json!({"newPassword": "newpass1"})),
    )
    .await
    .err(401, "invalid_access_token");
    t.post(
        "reset-pwd",
        &[("key", &key)],
        Some(json!({"newPassword": "newpass1"})),
    )
    .await
    .no_data();

    // Every session is gone.
    t.get_s("user", &s1).await.err(401, "invalid_session_token");
    t.get_s("user", &s2).await.err(401, "invalid_session_token");
    t.signin_email("ada@example.com", "secret1")
        .await
        .err(401, "invalid_credentials");
    t.signin_email("ada@example.com", "newpass1").await.ok();
    // Single use.
    t.post(
        "reset-pwd",
        &[("key", &key)],
        Some(json!({"newPassword": "newpass2"})),
    )
    .await
    .err(401, "invalid_access_token");

    // Unknown address: 200 and nothing sent.
    let before = t.up.outbox().len();
    t.post("send-reset", &[("email", "nobody@example.com")], None)
        .await
        .no_data();
    assert_eq!(t.up.outbox().len(), before);
}

#[tokio::test]
async fn reset_password_by_sms_code() {
    let t = T::new().await;
    let s1 = t
        .signup_phone("+15550100", "secret1", Value::Null)
        .await
        .ok()["session"]["token"]
        .as_str()
        .unwrap()
        .to_owned();
    t.post("send-reset-code", &[("phone", "+15550100")], None)
        .await
        .no_data();
    let msg = t.up.last_message_to("+15550100").unwrap();
    assert_eq!(msg.channel, Channel::Sms);
    assert_eq!(msg.kind, MessageKind::ResetPasswordCode);
    let code = msg.code.unwrap();
    assert_eq!(code.len(), 6);
    assert!(code.chars().all(|c| c.is_ascii_digit()));
    let wrong = if code == "000000" { "111111" } else { "000000" };

    t.post(
        "reset-pwd-code",
        &[("phone", "+15550100"), ("code", wrong)],
        Some(json!({"newPassword": "newpass1"})),
    )
    .await
    .err(401, "invalid_code");
    t.post(
        "reset-pwd-code",
        &[("phone", "+15550100"), ("code", &code)],
        Some(json!({"newPassword": "short"})),
    )
    .await
    .err(400, "invalid_password");
    t.post(
        "reset-pwd-code",
        &[("phone", "+15550100"), ("code", &code)],
        Some(json!({"newPassword": "newpass1"})),
    )
    .await
    .no_data();
    t.get_s("user", &s1).await.err(401, "invalid_session_token");
    t.signin_phone("+15550100", "newpass1").await.ok();
    t.post(
        "reset-pwd-code",
        &[("phone", "+15550100"), ("code", &code)],
        Some(json!({"newPassword": "newpass2"})),
    )
    .await
    .err(401, "invalid_code");

    let before = t.up.outbox().len();
    t.post("send-reset-code", &[("phone", "+15559999")], None)
        .await
        .no_data();
    assert_eq!(t.up.outbox().len(), before);
}

// ---------------------------------------------------------------- phone codes

#[tokio::test]
async fn phone_confirmation_flow() {
    let t = T::with(DevUpstream::builder().with_phone_confirmation(true)).await;
    let r = t.signup_phone("+15550100", "secret1", json!("Ada")).await;
    let body = r.ok();
    assert!(body["session"].is_null());
    assert_eq!(body["user"]["phoneVerified"], false);
    let msg = t.up.last_message_to("+1 555-0100").unwrap();
    assert_eq!(msg.kind, MessageKind::VerifyPhone);
    assert!(msg.body.contains(msg.code.as_deref().unwrap()));

    t.signin_phone("+15550100", "secret1")
        .await
        .err(403, "phone_not_verified");
    t.post("send-code", &[("phone", "+15550100")], None)
        .await
        .err(403, "phone_not_verified");

    t.post("resend-code", &[("phone", "+15550100")], None)
        .await
        .no_data();
    let code = t.last_code("+15550100");
    let wrong = if code == "000000" { "111111" } else { "000000" };
    t.post(
        "verify-phone",
        &[("phone", "+15550100"), ("code", wrong)],
        None,
    )
    .await
    .err(401, "invalid_code");
    t.post("verify-phone", &[("phone", "+15550100")], None)
        .await
        .err(400, "invalid_request");

    let r = t
        .post(
            "verify-phone",
            &[("code", &code), ("phone", "+15550100")],
            None,
        )
        .await;
    let body = r.ok();
    assert_eq!(body["user"]["phoneVerified"], true);
    assert!(body["session"]["token"].is_string());

    t.signin_phone("+15550100", "secret1").await.ok();
    t.post("resend-code", &[("phone", "+15550100")], None)
        .await
        .err(400, "phone_already_verified");
    t.up.set_phone_confirmation(false);
    t.post("resend-code", &[("phone", "+15550100")], None)
        .await
        .err(400, "phone_confirmation_disabled");
}

#[tokio::test]
async fn phone_verified_in_user_data_skips_confirmation() {
    let t = T::with(DevUpstream::builder().with_phone_confirmation(true)).await;
    let r = t
        .signup_phone("+15550100", "secret1", json!({"phoneVerified": true}))
        .await;
    assert!(r.ok()["session"]["token"].is_string());
    assert!(t.up.outbox().is_empty());
}

#[tokio::test]
async fn sign_in_with_sms_code() {
    let t = T::new().await;
    let user = t
        .signup_phone("+15550100", "secret1", Value::Null)
        .await
        .ok()["user"]
        .clone();
    t.post("send-code", &[("phone", "+15550100")], None)
        .await
        .no_data();
    let msg = t.up.last_message_to("+15550100").unwrap();
    assert_eq!(msg.kind, MessageKind::SignInCode);
    let code = msg.code.unwrap();

    let r = t
        .post(
            "signin-code",
            &[("code", &code), ("phone", "+15550100")],
            None,
        )
        .await;
    let body = r.ok();
    assert_eq!(body["user"]["_id"], user["_id"]);
    assert!(body["session"]["token"].is_string());
    // Single use.
    t.post(
        "signin-code",
        &[("code", &code), ("phone", "+15550100")],
        None,
    )
    .await
    .err(401, "invalid_code");

    // Unknown phone: 200 and nothing sent.
    let before = t.up.outbox().len();
    t.post("send-code", &[("phone", "+15559999")], None)
        .await
        .no_data();
    assert_eq!(t.up.outbox().len(), before);
}

#[tokio::test]
async fn sms_codes_die_after_five_wrong_attempts_and_expire() {
    let t = T::new().await;
    t.signup_phone("+15550100", "secret1", Value::Null)
        .await
        .ok();
    t.post("send-code", &[("phone", "+15550100")], None)
        .await
        .no_data();
    let code = t.last_code("+15550100");
    let wrong = if code == "000000" { "111111" } else { "000000" };
    for _ in 0..5 {
        t.post(
            "signin-code",
            &[("code", wrong), ("phone", "+15550100")],
            None,
        )
        .await
        .err(401, "invalid_code");
    }
    t.post(
        "signin-code",
        &[("code", &code), ("phone", "+15550100")],
        None,
    )
    .await
    .err(401, "invalid_code");

    t.post("send-code", &[("phone", "+15550100")], None)
        .await
        .no_data();
    let code = t.last_code("+15550100");
    t.up.advance_clock(Duration::from_secs(11 * 60));
    t.post(
        "signin-code",
        &[("code", &code), ("phone", "+15550100")],
        None,
    )
    .await
    .err(401, "invalid_code");
}

// ---------------------------------------------------------------- account changes

#[tokio::test]
async fn change_password() {
    let t = T::new().await;
    let (_, token) = t.signup_email("ada@example.com", "secret1").await;
    t.post_s(
        "change-pwd",
        &token,
        Some(json!({"newPassword": "newpass1", "oldPassword": "wrong1"})),
    )
    .await
    .err(403, "incorrect_password");
    t.post_s(
        "change-pwd",
        &token,
        Some(json!({"newPassword": "123", "oldPassword": "secret1"})),
    )
    .await
    .err(400, "invalid_password");
    t.post_s(
        "change-pwd",
        &token,
        Some(json!({"newPassword": "newpass1"})),
    )
    .await
    .err(400, "invalid_request");
    t.post_s(
        "change-pwd",
        &token,
        Some(json!({"newPassword": "newpass1", "oldPassword": "secret1"})),
    )
    .await
    .no_data();
    // The session survives a password change.
    t.get_s("user", &token).await.ok();
    t.signin_email("ada@example.com", "secret1")
        .await
        .err(401, "invalid_credentials");
    t.signin_email("ada@example.com", "newpass1").await.ok();
    t.call(
        Method::POST,
        "change-pwd",
        &[],
        Some(json!({"newPassword": "x", "oldPassword": "y"})),
        None,
    )
    .await
    .err(401, "missing_session_token");
}

#[tokio::test]
async fn change_email_with_confirmation() {
    let t = T::with(DevUpstream::builder().with_email_confirmation(true)).await;
    let r = t
        .post(
            "signup-email",
            &[],
            Some(json!({"email": "ada@example.com", "password": "secret1", "nameOrUserData": {"emailVerified": true}})),
        )
        .await;
    let token = r.ok()["session"]["token"].as_str().unwrap().to_owned();
    t.post(
        "signup-email",
        &[],
        Some(json!({"email": "taken@example.com", "password": "secret1", "nameOrUserData": {"emailVerified": true}})),
    )
    .await
    .ok();

    t.post_s(
        "change-email",
        &token,
        Some(json!({"currentPassword": "wrong1", "newEmail": "new@example.com"})),
    )
    .await
    .err(403, "incorrect_password");
    t.post_s(
        "change-email",
        &token,
        Some(json!({"currentPassword": "secret1", "newEmail": "taken@example.com"})),
    )
    .await
    .err(409, "email_not_unique");
    t.post_s(
        "change-email",
        &token,
        Some(json!({"currentPassword": "secret1", "newEmail": "nope"})),
    )
    .await
    .err(400, "invalid_request");

    let r = t
        .post_s(
            "change-email",
            &token,
            Some(json!({"currentPassword": "secret1", "newEmail": "New@Example.com"})),
        )
        .await;
    // Unchanged until the link is followed.
    assert_eq!(r.ok()["email"], "ada@example.com");
    let msg = t.up.last_message_to("new@example.com").unwrap();
    assert_eq!(msg.kind, MessageKind::ChangeEmail);
    assert!(t.up.last_message_to("ada@example.com").is_none());
    let link = msg.link.unwrap();
    assert!(link.starts_with(&format!("{}/_auth/change-email?key=", t.up.url())));
    assert_eq!(
        t.get_s("user", &token).await.ok()["email"],
        "ada@example.com"
    );

    let params = t.landing(&link).await;
    assert_eq!(param(&params, "action"), Some("change-email"));
    assert_eq!(param(&params, "status"), Some("200"));
    assert!(param(&params, "access_token").is_none());
    assert!(param(&params, "error").is_none());

    let me = t.get_s("user", &token).await;
    assert_eq!(me.ok()["email"], "new@example.com");
    assert_eq!(me.ok()["emailVerified"], true);
    t.signin_email("new@example.com", "secret1").await.ok();
    t.signin_email("ada@example.com", "secret1")
        .await
        .err(401, "invalid_credentials");

    let again = t.landing(&link).await;
    assert_eq!(param(&again, "action"), Some("change-email"));
    assert_eq!(param(&again, "status"), Some("401"));
}

#[tokio::test]
async fn change_email_without_confirmation_is_immediate() {
    let t = T::new().await;
    let (_, token) = t.signup_email("ada@example.com", "secret1").await;
    let r = t
        .post_s(
            "change-email",
            &token,
            Some(json!({"currentPassword": "secret1", "newEmail": "new@example.com"})),
        )
        .await;
    assert_eq!(r.ok()["email"], "new@example.com");
    assert!(t.up.outbox().is_empty());
}

#[tokio::test]
async fn change_phone_and_verify() {
    let t = T::with(DevUpstream::builder().with_phone_confirmation(true)).await;
    let r = t
        .signup_phone("+15550100", "secret1", json!({"phoneVerified": true}))
        .await;
    let token = r.ok()["session"]["token"].as_str().unwrap().to_owned();
    t.signup_phone("+15550300", "secret1", json!({"phoneVerified": true}))
        .await
        .ok();

    t.post_s(
        "change-phone",
        &token,
        Some(json!({"currentPassword": "nope-nope", "newPhone": "+15550200"})),
    )
    .await
    .err(403, "incorrect_password");
    t.post_s(
        "change-phone",
        &token,
        Some(json!({"currentPassword": "secret1", "newPhone": "+15550300"})),
    )
    .await
    .err(409, "phone_not_unique");

    let r = t
        .post_s(
            "change-phone",
            &token,
            Some(json!({"currentPassword": "secret1", "newPhone": "+15550200"})),
        )
        .await;
    assert_eq!(r.ok()["phone"], "+15550100");
    let msg = t.up.last_message_to("+15550200").unwrap();
    assert_eq!(msg.kind, MessageKind::ChangePhone);
    let code = msg.code.unwrap();

    // The code is bound to the new number.
    t.post(
        "verify-phone",
        &[("phone", "+15550100"), ("code", &code)],
        None,
    )
    .await
    .err(401, "invalid_code");

    let r = t
        .post(
            "verify-phone",
            &[("phone", "+15550200"), ("code", &code)],
            None,
        )
        .await;
    let body = r.ok();
    assert_eq!(body["user"]["phone"], "+15550200");
    assert_eq!(body["user"]["phoneVerified"], true);
    assert!(body.get("session").is_none(), "{body}");

    assert_eq!(t.get_s("user", &token).await.ok()["phone"], "+15550200");
    t.signin_phone("+15550200", "secret1").await.ok();
    t.signin_phone("+15550100", "secret1")
        .await
        .err(401, "invalid_credentials");
}

#[tokio::test]
async fn change_phone_without_confirmation_is_immediate() {
    let t = T::new().await;
    let (_, token) = t.signup_email("ada@example.com", "secret1").await;
    let r = t
        .post_s(
            "change-phone",
            &token,
            Some(json!({"currentPassword": "secret1", "newPhone": "+15550200"})),
        )
        .await;
    assert_eq!(r.ok()["phone"], "+15550200");
    assert!(t.up.outbox().is_empty());
    t.signin_phone("+15550200", "secret1").await.ok();
}

// ---------------------------------------------------------------- sessions and sign-out

#[tokio::test]
async fn session_header_errors() {
    let t = T::new().await;
    t.call(Method::GET, "user", &[], None, None)
        .await
        .err(401, "missing_session_token");
    t.call(Method::GET, "sessions", &[], None, Some(""))
        .await
        .err(401, "missing_session_token");
    t.get_s("user", "not-a-session")
        .await
        .err(401, "invalid_session_token");
    t.post_s("signout", "not-a-session", None)
        .await
        .err(401, "invalid_session_token");
    t.post_s("signout-all", "not-a-session", None)
        .await
        .err(401, "invalid_session_token");
    t.post_s("signout-all-except", "not-a-session", None)
        .await
        .err(401, "invalid_session_token");
}

#[tokio::test]
async fn sessions_and_the_three_sign_outs() {
    let t = T::new().await;
    let (user, a) = t.signup_email("ada@example.com", "secret1").await;
    let sign_in = || async {
        t.signin_email("ada@example.com", "secret1").await.ok()["session"]["token"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let b = sign_in().await;
    let c = sign_in().await;
    let (_, other) = t.signup_email("bob@example.com", "secret1").await;

    let list = t.get_s("sessions", &a).await;
    let tokens: Vec<&str> = list
        .ok()
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["token"].as_str().unwrap())
        .collect();
    assert_eq!(tokens, vec![a.as_str(), b.as_str(), c.as_str()]);
    assert!(
        list.ok()
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["userId"] == user["_id"])
    );

    // Sign out another of my sessions by token.
    t.post_s("signout", &a, Some(json!({"token": b})))
        .await
        .no_data();
    t.get_s("user", &b).await.err(401, "invalid_session_token");
    t.get_s("user", &a).await.ok();
    // Someone else's session cannot be signed out.
    t.post_s("signout", &a, Some(json!({"token": other})))
        .await
        .err(404, "session_not_found");
    t.get_s("user", &other).await.ok();
    // `{}` signs out the current session.
    t.post_s("signout", &a, Some(json!({}))).await.no_data();
    t.get_s("user", &a).await.err(401, "invalid_session_token");
    // So does no body at all.
    let d = sign_in().await;
    t.post_s("signout", &d, None).await.no_data();
    t.get_s("user", &d).await.err(401, "invalid_session_token");

    // signout-all-except keeps only the caller.
    let e = sign_in().await;
    let f = sign_in().await;
    t.post_s("signout-all-except", &f, None).await.no_data();
    t.get_s("user", &c).await.err(401, "invalid_session_token");
    t.get_s("user", &e).await.err(401, "invalid_session_token");
    t.get_s("user", &f).await.ok();
    assert_eq!(
        t.get_s("sessions", &f).await.ok().as_array().unwrap().len(),
        1
    );

    // signout-all ends everything, and only for this user.
    let g = sign_in().await;
    t.post_s("signout-all", &f, None).await.no_data();
    t.get_s("user", &f).await.err(401, "invalid_session_token");
    t.get_s("user", &g).await.err(401, "invalid_session_token");
    t.get_s("user", &other).await.ok();
}

// ---------------------------------------------------------------- OAuth simulator

#[tokio::test]
async fn oauth_simulator_page() {
    let t = T::new().await;
    let res = t
        .http
        .get(format!("{}/_auth/google", t.up.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert!(
        res.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let html = res.text().await.unwrap();
    assert!(html.contains("Sign in with Google (dev simulator)"));
    assert!(html.contains("Ada Lovelace"));
    assert!(html.contains("ada@google.example"));
    assert!(html.contains(">Continue<"));
    assert!(html.contains(">Deny<"));
    assert!(html.contains("action=\"/_auth/google\""));

    for p in ["facebook", "twitter", "apple", "discord", "github"] {
        let res = t
            .http
            .get(format!("{}/_auth/{p}", t.up.url()))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK, "{p}");
    }
    let res = t
        .http
        .get(format!("{}/_auth/myspace", t.up.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NOT_FOUND);

    // Pre-fill values are escaped.
    let res = t
        .http
        .get(format!("{}/_auth/github", t.up.url()))
        .query(&[("name", "<script>alert(1)</script>"), ("email", "\"x@y.z")])
        .send()
        .await
        .unwrap();
    let html = res.text().await.unwrap();
    assert!(!html.contains("<script>alert(1)"));
    assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
    assert!(html.contains("&quot;x@y.z"));
}

async fn oauth_post(t: &T, provider: &str, form: &[(&str, &str)]) -> reqwest::Response {
    t.http
        .post(format!("{}/_auth/{provider}", t.up.url()))
        .form(form)
        .send()
        .await
        .unwrap()
}

fn location(res: &reqwest::Response) -> HashMap<String, String> {
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    location_params(res.headers()["location"].to_str().unwrap())
}

#[tokio::test]
async fn oauth_simulator_continue_creates_then_finds_the_user() {
    let t = T::new().await;
    let res = oauth_post(
        &t,
        "google",
        &[
            ("name", "Ada Lovelace"),
            ("email", "ada@google.example"),
            ("decision", "continue"),
        ],
    )
    .await;
    let params = location(&res);
    assert_eq!(param(&params, "action"), Some("oauth-signin"));
    assert_eq!(param(&params, "status"), Some("200"));
    let g = t.grant(param(&params, "access_token").unwrap()).await;
    let body = g.ok();
    let user = &body["user"];
    assert_eq!(user["provider"], "Google");
    assert_eq!(user["email"], "ada@google.example");
    assert_eq!(user["name"], "Ada Lovelace");
    assert_eq!(user["emailVerified"], true);
    assert_ne!(user["providerUserId"], user["_id"]);
    assert!(body["session"]["token"].is_string());

    // Same provider and e-mail: same user.
    let res = oauth_post(
        &t,
        "google",
        &[("name", "Someone Else"), ("email", "ADA@google.example")],
    )
    .await;
    let params = location(&res);
    let again = t.grant(param(&params, "access_token").unwrap()).await;
    assert_eq!(again.ok()["user"]["_id"], user["_id"]);
    assert_eq!(again.ok()["user"]["name"], "Ada Lovelace");

    // OAuth users have no password.
    t.signin_email("ada@google.example", "")
        .await
        .err(400, "invalid_request");
    t.signin_email("ada@google.example", "anything")
        .await
        .err(401, "invalid_credentials");
}

#[tokio::test]
async fn oauth_simulator_deny_and_conflicts() {
    let t = T::new().await;
    let res = oauth_post(
        &t,
        "discord",
        &[
            ("name", "Ada"),
            ("email", "ada@discord.example"),
            ("decision", "deny"),
        ],
    )
    .await;
    let params = location(&res);
    assert_eq!(param(&params, "action"), Some("oauth-signin"));
    assert_eq!(param(&params, "status"), Some("401"));
    assert!(param(&params, "error").unwrap().contains("denied"));
    assert!(param(&params, "access_token").is_none());

    // An e-mail owned by a native account cannot be taken by a provider.
    t.signup_email("ada@example.com", "secret1").await;
    let res = oauth_post(
        &t,
        "github",
        &[("name", "Ada"), ("email", "ada@example.com")],
    )
    .await;
    let params = location(&res);
    assert_eq!(param(&params, "status"), Some("409"));
    assert!(param(&params, "error").is_some());
    assert!(param(&params, "access_token").is_none());

    // A GitHub account with that e-mail also blocks a native sign-up.
    let res = oauth_post(
        &t,
        "github",
        &[("name", "Bob"), ("email", "bob@example.com")],
    )
    .await;
    let params = location(&res);
    let user = t.grant(param(&params, "access_token").unwrap()).await;
    assert_eq!(user.ok()["user"]["provider"], "Github");
    t.post(
        "signup-email",
        &[],
        Some(json!({"email": "bob@example.com", "password": "secret1"})),
    )
    .await
    .err(409, "email_not_unique");

    let res = oauth_post(&t, "github", &[("email", "not an email")]).await;
    assert_eq!(param(&location(&res), "status"), Some("400"));

    let res = oauth_post(&t, "myspace", &[("email", "a@b.c")]).await;
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn without_a_redirect_url_landings_show_a_page_and_consume_nothing() {
    let up = DevUpstream::spawn().await.unwrap();
    let t = T {
        up,
        http: reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap(),
    };
    t.signup_email("ada@example.com", "secret1").await;
    t.post("send-magic", &[("email", "ada@example.com")], None)
        .await
        .no_data();
    let link = t.last_link("ada@example.com");
    let res = t.http.get(&link).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert!(res.text().await.unwrap().contains("No redirect URL"));

    let res = oauth_post(&t, "google", &[("email", "x@google.example")]).await;
    assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);

    t.up.set_redirect_url(REDIRECT);
    let params = t.landing(&link).await;
    assert_eq!(param(&params, "status"), Some("200"));
}

// ---------------------------------------------------------------- outbox

#[tokio::test]
async fn outbox_json_and_html() {
    let t = T::new().await;
    t.signup_email("a<b>@example.com", "secret1").await;
    t.signup_phone("+15550100", "secret1", Value::Null)
        .await
        .ok();
    t.post("send-magic", &[("email", "a<b>@example.com")], None)
        .await
        .no_data();
    t.post("send-code", &[("phone", "+15550100")], None)
        .await
        .no_data();

    let outbox = t.up.outbox();
    assert_eq!(outbox.len(), 2);
    assert_eq!(outbox[0].channel, Channel::Email);
    assert_eq!(outbox[1].channel, Channel::Sms);
    assert!(outbox[0].sent_at <= outbox[1].sent_at);

    let json: Value = t
        .http
        .get(format!("{}/_dev/outbox.json", t.up.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let arr = json.as_array().unwrap();
    assert_eq!(arr.len(), 2);
    assert_eq!(arr[0]["channel"], "email");
    assert_eq!(arr[0]["kind"], "magic-link");
    assert_eq!(arr[0]["to"], "a<b>@example.com");
    assert_eq!(arr[0]["link"], outbox[0].link.clone().unwrap());
    assert!(arr[0]["code"].is_null());
    assert_eq!(arr[1]["channel"], "sms");
    assert_eq!(arr[1]["kind"], "signin-code");
    assert_eq!(arr[1]["code"], outbox[1].code.clone().unwrap());
    assert!(is_rfc3339_ms(arr[1]["sentAt"].as_str().unwrap()));
    assert_eq!(arr[0], outbox[0].to_json());

    let res = t
        .http
        .get(format!("{}/_dev/outbox", t.up.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let html = res.text().await.unwrap();
    assert!(!html.contains("a<b>@"));
    assert!(html.contains("a&lt;b&gt;@example.com"));
    let code = outbox[1].code.clone().unwrap();
    let link_pos = html.find("/_auth/magic?key=").unwrap();
    let code_pos = html.find(&code).unwrap();
    assert!(code_pos < link_pos, "newest (the SMS) comes first");
    assert!(html.contains("<a href=\""));

    let index = t.http.get(format!("{}/", t.up.url())).send().await.unwrap();
    assert_eq!(index.status(), StatusCode::OK);
    assert!(index.text().await.unwrap().contains("/_dev/outbox"));
}

#[tokio::test]
async fn last_message_to_normalises_addresses() {
    let t = T::new().await;
    t.signup_email("ada@example.com", "secret1").await;
    t.post("send-magic", &[("email", "ada@example.com")], None)
        .await
        .no_data();
    t.post("send-reset", &[("email", "ada@example.com")], None)
        .await
        .no_data();
    let m = t.up.last_message_to(" ADA@example.com ").unwrap();
    assert_eq!(m.kind, MessageKind::ResetPassword);
    assert!(t.up.last_message_to("bob@example.com").is_none());
}

// ---------------------------------------------------------------- lifecycle

#[tokio::test]
async fn shutdown_closes_the_port() {
    let up = DevUpstream::spawn().await.unwrap();
    let url = format!("{}/_dev/outbox.json", up.url());
    let http = reqwest::Client::new();
    assert!(http.get(&url).send().await.is_ok());
    let keep = up.clone();
    up.shutdown().await;
    let fresh = reqwest::Client::new();
    assert!(fresh.get(&url).send().await.is_err());
    // The surviving handle still reads state.
    assert_eq!(keep.outbox().len(), 0);
}

#[tokio::test]
async fn concurrent_grant_redemption_is_single_use() {
    let t = T::new().await;
    t.signup_email("ada@example.com", "secret1").await;
    t.post("send-magic", &[("email", "ada@example.com")], None)
        .await
        .no_data();
    let params = t.landing(&t.last_link("ada@example.com")).await;
    let key = param(&params, "access_token").unwrap().to_owned();
    let (r1, r2, r3) = tokio::join!(t.grant(&key), t.grant(&key), t.grant(&key));
    let ok = [&r1, &r2, &r3]
        .iter()
        .filter(|r| r.status == StatusCode::OK)
        .count();
    assert_eq!(ok, 1);
}

// ---------------------------------------------------------------- helpers

#[test]
fn user_agent_parsing() {
    let ua = |s: &str| store::parse_user_agent(s);
    let v = ua("Mozilla/5.0 (X11; Linux x86_64; rv:120.0) Gecko/20100101 Firefox/120.0");
    assert_eq!(v["family"], "Firefox");
    assert_eq!(v["major"], "120");
    assert_eq!(v["os"]["family"], "Linux");

    let v = ua(
        "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1_2 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.1 Mobile/15E148 Safari/604.1",
    );
    assert_eq!(v["family"], "Mobile Safari");
    assert_eq!(v["major"], "17");
    assert_eq!(v["os"]["family"], "iOS");
    assert_eq!(v["os"]["major"], "17");
    assert_eq!(v["os"]["minor"], "1");
    assert_eq!(v["os"]["patch"], "2");

    let v = ua(
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36 Edg/120.0.2210.91", // allow-fixed-port: a browser version, not an address
    );
    assert_eq!(v["family"], "Edge");
    assert_eq!(v["os"]["family"], "Windows");
    assert_eq!(v["os"]["major"], "10");

    let v = ua(
        "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Mobile Safari/537.36", // allow-fixed-port: a browser version, not an address
    );
    assert_eq!(v["family"], "Chrome");
    assert_eq!(v["os"]["family"], "Android");
    assert_eq!(v["os"]["major"], "14");

    let v = ua("curl/8.4.0");
    assert_eq!(v["family"], "curl");
    assert_eq!(v["major"], "8");
    assert_eq!(v["minor"], "4");
    assert_eq!(v["os"]["family"], "Other");

    let v = ua("");
    assert_eq!(v["family"], "Other");
    assert_eq!(v["major"], "0");
    assert_eq!(v["device"]["family"], "Other");
    // Odd input never panics.
    for s in ["Chrome/", "Windows NT ", "é Firefox/ü", "iPhone OS "] {
        let _ = ua(s);
    }
}

#[test]
fn address_normalisation() {
    assert_eq!(
        store::normalize_email(" Ada@Example.com ").as_deref(),
        Some("ada@example.com")
    );
    assert_eq!(store::normalize_email("no-at-sign"), None);
    assert_eq!(store::normalize_email("a@b@c"), None);
    assert_eq!(store::normalize_email("a b@c.d"), None);
    assert_eq!(store::normalize_email("@c.d"), None);
    assert_eq!(
        store::normalize_phone("+1 (555) 010-0100").as_deref(),
        Some("+15550100100")
    );
    assert_eq!(store::normalize_phone("555"), None);
    assert_eq!(store::normalize_phone("+1555abc"), None);
    assert_eq!(store::normalize_phone("++15550100"), None);
}

#[test]
fn html_escaping() {
    assert_eq!(
        super::pages::esc("<a href=\"x\">'&'</a>"),
        "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
    );
}

#[test]
fn timestamps_are_rfc3339_with_milliseconds() {
    let s = store::format_time(std::time::UNIX_EPOCH + Duration::from_millis(1_671_040_800_123));
    assert_eq!(s, "2022-12-14T18:00:00.123Z");
}
