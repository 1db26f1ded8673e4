//! The Webcom dev server over real HTTP, spoken to from the wire protocol
//! (UPSTREAMS.md §2) with a plain HTTP client, never the crate's Webcom
//! client.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::{URL_SAFE, URL_SAFE_NO_PAD};
use reqwest::StatusCode;
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

use super::WebcomDev;

struct T {
    dev: WebcomDev,
    http: reqwest::Client,
}

impl T {
    async fn new(lifetime: Duration) -> Self {
        let dev = WebcomDev::builder()
            .with_token_lifetime(lifetime)
            .spawn()
            .await
            .unwrap();
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .build()
            .unwrap();
        Self { dev, http }
    }

    /// `{route}/{path}` with `c=n3.12.0` appended.
    fn url(&self, path: &str) -> String {
        let sep = if path.contains('?') { '&' } else { '?' };
        format!(
            "{}/auth/v2/{}/{path}{sep}c=n3.12.0",
            self.dev.url(),
            self.dev.app_id()
        )
    }

    async fn json(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut request = self.http.request(method, self.url(path));
        if let Some(body) = body {
            request = request.json(&body);
        }
        read(request.send().await.unwrap()).await
    }

    async fn bearer(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
    ) -> (StatusCode, Value) {
        read(
            self.http
                .request(method, self.url(path))
                .bearer_auth(token)
                .send()
                .await
                .unwrap(),
        )
        .await
    }
}

async fn read(response: reqwest::Response) -> (StatusCode, Value) {
    let status = response.status();
    let body = response.json().await.unwrap_or(Value::Null);
    (status, body)
}

fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("<none>")
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[tokio::test]
async fn every_call_needs_the_client_version_and_the_right_application() {
    let t = T::new(Duration::from_secs(60)).await;
    let base = format!("{}/auth/v2/{}", t.dev.url(), t.dev.app_id());
    for c in ["", "?c=", "?c=x3.12.0", "?c=n3.12"] {
        let (status, body) = read(
            t.http
                .post(format!("{base}/anonymous/signin{c}"))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{c}");
        assert_eq!(code(&body), "MISSING_PARAMETER", "{c}");
    }
    let other = format!(
        "{}/auth/v2/other-app/anonymous/signin?c=b3.12.0",
        t.dev.url()
    );
    let (status, body) = read(t.http.post(other).send().await.unwrap()).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(code(&body), "UNKNOWN_APPLICATION");
    let (status, body) = t
        .json(reqwest::Method::POST, "anonymous/signin", None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["user"]["provider"], "anonymous");
    assert!(body["token"].as_str().is_some());
}

#[tokio::test]
async fn otps_take_a_json_string_and_a_code_dies_after_five_wrong_tries() {
    let t = T::new(Duration::from_secs(60)).await;
    let (status, _) = t
        .json(
            reqwest::Method::POST,
            "phone/otps",
            Some(json!({"id": "33612345678"})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "an object is not the id");
    let (status, body) = t
        .json(
            reqwest::Method::POST,
            "phone/otps",
            Some(json!("33612345678")),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let challenge = body["challenge"].as_str().unwrap().to_owned();
    let otp = t.dev.last_message_to("33612345678").unwrap().code;
    let attempt = |password: String| json!({"id": "33612345678", "password": password, "challenge": challenge});
    for _ in 0..5 {
        let (status, body) = t
            .json(
                reqwest::Method::POST,
                "phone/signin",
                Some(attempt("999999x".into())),
            )
            .await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert_eq!(code(&body), "INVALID_CREDENTIALS");
    }
    let (status, _) = t
        .json(reqwest::Method::POST, "phone/signin", Some(attempt(otp)))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "the challenge is spent");
}

/// §2.5: `POST /session` wants the request key whose padded base64url
/// SHA-256 was the sign-in's `from`; the key is single-use.
#[tokio::test]
async fn session_keys_are_bound_to_the_request_key_and_single_use() {
    let t = T::new(Duration::from_secs(60)).await;
    let request_key = "k".repeat(64);
    let from = URL_SAFE.encode(Sha256::digest(request_key.as_bytes()));
    assert!(from.ends_with('='));
    let to = "https://app.example/auth/callback?flow=f1";
    let sign_in = t.url(&format!(
        "google/signin?mode=redirect&to={}&from={}&pm=2",
        url::form_urlencoded::byte_serialize(to.as_bytes()).collect::<String>(),
        url::form_urlencoded::byte_serialize(from.as_bytes()).collect::<String>(),
    ));
    let page = t.http.get(&sign_in).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    // An unpadded `from` is not what the SDK sends.
    let unpadded = sign_in.replace("%3D", "");
    assert_eq!(
        t.http.get(&unpadded).send().await.unwrap().status(),
        StatusCode::BAD_REQUEST
    );
    let consent = |decision: &'static str| {
        t.http
            .post(&sign_in)
            .form(&[
                ("to", to),
                ("from", from.as_str()),
                ("email", "ada@example.com"),
                ("name", "Ada"),
                ("decision", decision),
            ])
            .send()
    };
    let denied = consent("deny").await.unwrap();
    assert_eq!(denied.headers()["location"], to);
    let allowed = consent("allow").await.unwrap();
    let location = allowed.headers()["location"].to_str().unwrap().to_owned();
    let key = url::Url::parse(&location)
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == "__wcsession")
        .unwrap()
        .1
        .into_owned();
    assert!(location.starts_with(&format!("{to}&__wcsession=")));

    let (status, body) = t
        .json(
            reqwest::Method::POST,
            "session",
            Some(json!({"sessionKey": key, "requestKey": "k".repeat(63) + "j"})),
        )
        .await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::BAD_REQUEST, "INVALID_STATE")
    );
    // The failed attempt spent the key.
    let (status, body) = t
        .json(
            reqwest::Method::POST,
            "session",
            Some(json!({"sessionKey": key, "requestKey": request_key})),
        )
        .await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::BAD_REQUEST, "INVALID_STATE")
    );

    // A fresh key, the right request key: signed in, once.
    let location = consent("allow").await.unwrap().headers()["location"]
        .to_str()
        .unwrap()
        .to_owned();
    let key = location.rsplit_once("__wcsession=").unwrap().1.to_owned();
    let body = json!({"sessionKey": key, "requestKey": request_key});
    let (status, answer) = t
        .json(reqwest::Method::POST, "session", Some(body.clone()))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(answer["user"]["provider"], "google");
    assert_eq!(
        answer["user"]["providerProfile"]["email"],
        "ada@example.com"
    );
    let (status, _) = t.json(reqwest::Method::POST, "session", Some(body)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn tokens_expire_and_sensitive_calls_need_a_fresh_one() {
    let t = T::new(Duration::from_secs(3600)).await;
    let (_, answer) = t
        .json(reqwest::Method::POST, "anonymous/signin", None)
        .await;
    let token = answer["token"].as_str().unwrap().to_owned();
    let uid = answer["user"]["uid"].as_str().unwrap().to_owned();
    let expires = answer["user"]["expires"].as_u64().unwrap();
    assert!(
        (unix_now() + 3599..=unix_now() + 3600).contains(&expires),
        "seconds"
    );
    let (status, decoded) = t.bearer(reqwest::Method::GET, "decode", &token).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(decoded["data"]["uid"], uid.as_str());
    assert!(decoded["data"].get("token").is_none());

    t.dev.advance_clock(Duration::from_secs(301));
    let (status, body) = t
        .bearer(reqwest::Method::DELETE, &format!("accounts/{uid}"), &token)
        .await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::FORBIDDEN, "TOKEN_TOO_OLD")
    );

    t.dev.advance_clock(Duration::from_secs(3600));
    let (status, body) = t.bearer(reqwest::Method::GET, "decode", &token).await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::UNAUTHORIZED, "INVALID_TOKEN")
    );
    let (status, body) = read(t.http.get(t.url("decode")).send().await.unwrap()).await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::UNAUTHORIZED, "INVALID_TOKEN")
    );
}

/// A server-key assertion must be RS512-signed with the registered key:
/// `alg: none` and an unsigned token are refused.
#[tokio::test]
async fn server_key_assertions_without_a_signature_are_refused() {
    let dev = WebcomDev::builder()
        .with_server_key(
            "backend",
            include_bytes!("../../../tests/data/webcom-server-key.pub.pem"),
        )
        .spawn()
        .await
        .unwrap();
    let claims = json!({"id": "backend", "timestamp": unix_now() * 1000});
    let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
    let url = format!(
        "{}/auth/v2/{}/server/signin?c=n3.12.0",
        dev.url(),
        dev.app_id()
    );
    for header in [
        r#"{"alg":"none","typ":"JWT"}"#,
        r#"{"alg":"RS512","typ":"JWT"}"#,
    ] {
        let token = format!("{}.{payload}.", URL_SAFE_NO_PAD.encode(header));
        let response = reqwest::Client::builder()
            .no_proxy()
            .build()
            .unwrap()
            .post(&url)
            .form(&[("token", token)])
            .send()
            .await
            .unwrap();
        let (status, body) = read(response).await;
        assert_eq!(
            (status, code(&body)),
            (StatusCode::FORBIDDEN, "INVALID_CREDENTIALS"),
            "{header}"
        );
    }
    let bad_key = WebcomDev::builder()
        .with_server_key("backend", b"not a key")
        .spawn()
        .await;
    assert!(bad_key.is_err());
}
