//! SECURITY.md T-G1: tokens, cookie values and grant keys never appear in
//! captured TRACE logs, errors or `Debug` output.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};

use authgate::upstream::CallbackParams;
use authgate::{AuthConfig, AuthLayer, SessionToken, altogic};
use base64::Engine as _;
use common::*;
use http::StatusCode;
use tower::ServiceExt as _;

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn forms_of(secret: &str) -> Vec<String> {
    vec![
        secret.to_owned(),
        url::form_urlencoded::byte_serialize(secret.as_bytes()).collect(),
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret),
        base64::engine::general_purpose::STANDARD.encode(secret),
    ]
}

#[tokio::test(flavor = "current_thread")]
async fn t_g1_no_token_in_logs_errors_or_debug_output() {
    let capture = Capture::default();
    let writer = capture.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let mut secrets: Vec<String> = Vec::new();
    let mut debug_output = String::new();

    let site = site().await;
    // Sign up, sign in through the app, resolve, sign out.
    let (_, token) = site.user("log@example.test").await;
    secrets.push(token.clone());
    let response = site
        .send(form(
            "/signin",
            None,
            "email=log%40example.test&password=password-1",
        ))
        .await;
    let session = set_cookie(response.headers(), "__Host-authgate").unwrap();
    secrets.push(session.value().to_owned());
    assert_eq!(
        site.get("/account", Some(&site.cookie(session.value())))
            .await
            .status(),
        StatusCode::OK
    );

    // A callback success, then its replay (failure).
    let callback = site.magic_link_callback("log@example.test").await;
    secrets.push(query_param(&callback, "access_token").unwrap());
    let first = site.land(&callback, None).await;
    let magic_session = set_cookie(first.headers(), "__Host-authgate").unwrap();
    secrets.push(magic_session.value().to_owned());
    assert_eq!(
        site.land(&callback, None).await.status(),
        StatusCode::BAD_REQUEST
    );

    // A reset landing (its key moves into a sealed cookie).
    site.client
        .send_reset_pwd_email("log@example.test")
        .await
        .unwrap();
    let link = site
        .dev
        .last_message_to("log@example.test")
        .unwrap()
        .link
        .unwrap();
    let reset = site.follow_upstream(&link).await;
    secrets.push(query_param(&reset, "access_token").unwrap());
    site.get(&reset, None).await;

    // An invalid session, then sign-out.
    site.send(form("/auth/signout", Some(&site.cookie(&token)), ""))
        .await;
    site.get("/account", Some(&site.cookie(&token))).await;

    // Upstream down: transient errors on lookup, callback and sign-out.
    // Connection refused: bind a port, then close it (SECURITY.md R9).
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let down = altogic::Client::new(&format!("http://{closed}"), "k").unwrap();
    let app =
        AuthLayer::new(AuthConfig::new(ORIGIN).unwrap(), down.clone()).layer(router(down.clone()));
    let secret = "upstream-down-secret-token";
    secrets.push(secret.to_owned());
    let cookie = format!("__Host-authgate={secret}");
    let response = app
        .clone()
        .oneshot(request("GET", "/account", Some(&cookie)))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    let grant_key = "grant-key-while-down";
    secrets.push(grant_key.to_owned());
    let path = format!("/auth/callback?action=magic-link&status=200&access_token={grant_key}");
    // The e-mail link is held (no upstream call), then confirmed.
    let held = app
        .clone()
        .oneshot(request("GET", &path, None))
        .await
        .unwrap();
    assert_eq!(held.status(), StatusCode::SEE_OTHER);
    let link = set_cookie(held.headers(), "__Host-authgate-link").unwrap();
    let response = app
        .clone()
        .oneshot(form(
            "/auth/continue",
            Some(&format!("__Host-authgate-link={}", link.value())),
            "",
        ))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    app.clone()
        .oneshot(form("/auth/signout", Some(&cookie), ""))
        .await
        .unwrap();
    let err = down.get_auth_grant(grant_key).await.unwrap_err();
    debug_output.push_str(&format!("{err} {err:?}\n"));

    // Debug of every public type that holds a secret.
    let t = SessionToken::new(secret).unwrap();
    debug_output.push_str(&format!("{t:?}\n"));
    debug_output.push_str(&format!(
        "{:?}\n",
        authgate::upstream::Secret::new(grant_key)
    ));
    debug_output.push_str(&format!("{:?}\n", CallbackParams::parse(&path)));
    debug_output.push_str(&format!(
        "{:?}\n",
        authgate::Grant::new(t.clone(), authgate::events::SignInMethod::Password)
    ));
    let signed_in = site
        .client
        .sign_in_with_email("log@example.test", "password-1")
        .await;
    if let Ok(response) = &signed_in {
        secrets.push(response.session.as_ref().unwrap().token.expose().to_owned());
        debug_output.push_str(&format!("{response:?}\n"));
        let sessions = site
            .client
            .get_all_sessions(&response.session.as_ref().unwrap().token)
            .await
            .unwrap();
        debug_output.push_str(&format!("{sessions:?}\n"));
    }
    debug_output.push_str(&format!(
        "{:?} {:?} {:?}\n",
        site.config, site.client, site.layer
    ));
    debug_output.push_str(&format!("{:?}\n", site.dev));

    let logs = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
    assert!(logs.contains("authgate"), "the capture works: {logs}");
    for secret in &secrets {
        for form in forms_of(secret) {
            assert!(
                !logs.contains(&form),
                "a secret reached the logs: {form}\n{logs}"
            );
            assert!(
                !debug_output.contains(&form),
                "a secret reached Debug output: {form}\n{debug_output}"
            );
        }
    }
    // The client key and app key stay out too.
    assert!(!debug_output.contains(site.dev.client_key()));
    eprintln!(
        "T-G1: {} log bytes, {} secrets x 4 encodings checked",
        logs.len(),
        secrets.len()
    );
}
