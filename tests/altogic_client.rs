//! Every operation of `authgate::altogic::Client` against the dev upstream
//! over real HTTP on 127.0.0.1:0.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use authgate::altogic::Client;
use authgate::dev::{DevUpstream, MessageKind};
use authgate::upstream::{Lookup, Secret, Session, Upstream};
use authgate::{ErrorKind, SessionToken};
use http::StatusCode;
use serde_json::json;

async fn setup() -> (DevUpstream, Client) {
    let dev = DevUpstream::spawn().await.unwrap();
    dev.set_redirect_url("https://app.example/auth/callback");
    let client = Client::new(dev.url(), dev.client_key()).unwrap();
    (dev, client)
}

fn token(response: &authgate::altogic::AuthResponse) -> SessionToken {
    response.session.as_ref().expect("session").token.clone()
}

/// Follows an e-mailed link on the dev upstream and returns the query of
/// the app URL it redirects to.
async fn landing_query(link: &str) -> Vec<(String, String)> {
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let response = http.get(link).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    let location = url::Url::parse(response.headers()["location"].to_str().unwrap()).unwrap();
    location
        .query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

fn param(query: &[(String, String)], name: &str) -> String {
    query
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.clone())
        .unwrap()
}

#[tokio::test]
async fn sign_up_and_sign_in_with_email_keep_the_whole_user() {
    let (_dev, client) = setup().await;
    let data = json!({"name": "Ada", "plan": "pro", "tags": ["a"]});
    let signed_up = client
        .sign_up_with_email("ada@example.test", "password-1", Some(data))
        .await
        .unwrap();
    assert_eq!(signed_up.user.email.as_deref(), Some("ada@example.test"));
    assert_eq!(signed_up.user.name.as_deref(), Some("Ada"));
    assert_eq!(signed_up.user.provider.as_deref(), Some("Altogic"));
    assert_eq!(
        signed_up.user.raw.get("plan"),
        Some(json!("pro")),
        "custom fields kept in raw"
    );
    assert!(signed_up.session.is_some());

    let signed_in = client
        .sign_in_with_email("ada@example.test", "password-1")
        .await
        .unwrap();
    assert_eq!(signed_in.user.id, signed_up.user.id);
    assert_ne!(token(&signed_in), token(&signed_up));

    let err = client
        .sign_in_with_email("ada@example.test", "wrong-pass")
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Status(StatusCode::UNAUTHORIZED));
    assert_eq!(err.code(), Some("invalid_credentials"));
    assert!(err.message().is_some());
    assert!(!err.is_invalid_session());

    let err = client
        .sign_up_with_email("ada@example.test", "password-1", None)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("email_not_unique"));
}

#[tokio::test]
async fn email_confirmation_and_resend() {
    let (dev, client) = setup().await;
    dev.set_email_confirmation(true);
    let signed_up = client
        .sign_up_with_email("conf@example.test", "password-1", Some(json!("Conf")))
        .await
        .unwrap();
    assert!(signed_up.session.is_none());
    assert!(signed_up.grant().is_none());
    let err = client
        .sign_in_with_email("conf@example.test", "password-1")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("email_not_verified"));
    client
        .resend_verification_email("conf@example.test")
        .await
        .unwrap();
    let mail = dev.last_message_to("conf@example.test").unwrap();
    assert_eq!(mail.kind, MessageKind::VerifyEmail);
    let query = landing_query(&mail.link.unwrap()).await;
    assert_eq!(param(&query, "action"), "email-confirm");
    let granted = client
        .get_auth_grant(&param(&query, "access_token"))
        .await
        .unwrap();
    assert!(granted.session.is_some());
    client
        .sign_in_with_email("conf@example.test", "password-1")
        .await
        .unwrap();
}

#[tokio::test]
async fn grants_are_single_use() {
    let (dev, client) = setup().await;
    client
        .sign_up_with_email("g@example.test", "password-1", None)
        .await
        .unwrap();
    client
        .send_magic_link_email("g@example.test")
        .await
        .unwrap();
    let link = dev.last_message_to("g@example.test").unwrap().link.unwrap();
    let query = landing_query(&link).await;
    assert_eq!(param(&query, "action"), "magic-link");
    let key = param(&query, "access_token");
    let first = client.get_auth_grant(&key).await.unwrap();
    assert_eq!(first.user.email.as_deref(), Some("g@example.test"));
    let again = client.get_auth_grant(&key).await.unwrap_err();
    assert_eq!(again.code(), Some("invalid_access_token"));
    assert!(!again.is_invalid_session());
}

#[tokio::test]
async fn phone_sign_up_verification_and_sign_in() {
    let (dev, client) = setup().await;
    dev.set_phone_confirmation(true);
    let signed_up = client
        .sign_up_with_phone("+15550100", "password-1", Some(json!("Phoebe")))
        .await
        .unwrap();
    assert!(signed_up.session.is_none());
    client.resend_verification_code("+15550100").await.unwrap();
    let code = dev.last_message_to("+15550100").unwrap().code.unwrap();
    let verified = client.verify_phone("+15550100", &code).await.unwrap();
    assert!(
        verified.session.is_some(),
        "verification after sign-up signs in"
    );
    let signed_in = client
        .sign_in_with_phone("+15550100", "password-1")
        .await
        .unwrap();
    assert_eq!(signed_in.user.phone.as_deref(), Some("+15550100"));
}

#[tokio::test]
async fn sign_in_with_an_sms_code() {
    let (dev, client) = setup().await;
    client
        .sign_up_with_phone("+15550101", "password-1", None)
        .await
        .unwrap();
    client.send_sign_in_code("+15550101").await.unwrap();
    let sms = dev.last_message_to("+15550101").unwrap();
    assert_eq!(sms.kind, MessageKind::SignInCode);
    let wrong = client.sign_in_with_code("+15550101", "000000").await;
    if let Err(err) = &wrong {
        assert_eq!(err.code(), Some("invalid_code"));
    }
    let signed_in = client
        .sign_in_with_code("+15550101", &sms.code.unwrap())
        .await
        .unwrap();
    assert!(signed_in.session.is_some());
}

#[tokio::test]
async fn user_sessions_and_the_three_sign_outs() {
    let (_dev, client) = setup().await;
    let a = token(
        &client
            .sign_up_with_email("s@example.test", "password-1", None)
            .await
            .unwrap(),
    );
    let b = token(
        &client
            .sign_in_with_email("s@example.test", "password-1")
            .await
            .unwrap(),
    );
    let c = token(
        &client
            .sign_in_with_email("s@example.test", "password-1")
            .await
            .unwrap(),
    );

    let user = client.get_user(&a).await.unwrap();
    assert_eq!(user.email.as_deref(), Some("s@example.test"));
    let sessions = client.get_all_sessions(&a).await.unwrap();
    assert_eq!(sessions.len(), 3);
    assert!(sessions.iter().all(|s| s.user_id == user.id));
    assert!(!sessions[0].device().is_empty());
    assert!(
        !format!("{:?}", sessions[0]).contains(a.expose()),
        "Debug redacts tokens"
    );

    // Sign out one other session by its non-secret id.
    let id_of_b = sessions.iter().find(|s| s.token == b).unwrap().id();
    assert_eq!(
        client.sign_out_session_by_id(&a, &id_of_b).await.unwrap(),
        Some(b.clone())
    );
    assert!(client.get_user(&b).await.unwrap_err().is_invalid_session());
    assert_eq!(
        client.sign_out_session_by_id(&a, "nope").await.unwrap(),
        None
    );

    let d = token(
        &client
            .sign_in_with_email("s@example.test", "password-1")
            .await
            .unwrap(),
    );
    client.sign_out_all_except_current(&a).await.unwrap();
    assert!(client.get_user(&a).await.is_ok());
    assert!(client.get_user(&c).await.unwrap_err().is_invalid_session());
    assert!(client.get_user(&d).await.unwrap_err().is_invalid_session());

    let e = token(
        &client
            .sign_in_with_email("s@example.test", "password-1")
            .await
            .unwrap(),
    );
    client.sign_out_all(&a).await.unwrap();
    for t in [&a, &e] {
        assert!(client.get_user(t).await.unwrap_err().is_invalid_session());
    }

    let f = token(
        &client
            .sign_in_with_email("s@example.test", "password-1")
            .await
            .unwrap(),
    );
    client.sign_out(&f, None).await.unwrap();
    assert!(client.get_user(&f).await.unwrap_err().is_invalid_session());
}

#[tokio::test]
async fn change_password_email_and_phone() {
    let (dev, client) = setup().await;
    let t = token(
        &client
            .sign_up_with_email("c@example.test", "password-1", None)
            .await
            .unwrap(),
    );
    client
        .change_password(&t, "password-2", "password-1")
        .await
        .unwrap();
    client
        .sign_in_with_email("c@example.test", "password-2")
        .await
        .unwrap();
    let err = client
        .change_password(&t, "password-3", "wrong-old")
        .await
        .unwrap_err();
    assert!(err.code().is_some());
    assert!(!err.is_invalid_session());

    // Confirmation off: applied at once.
    let user = client
        .change_email(&t, "password-2", "c2@example.test")
        .await
        .unwrap();
    assert_eq!(user.email.as_deref(), Some("c2@example.test"));

    // Confirmation on: a link to the new address, then a change-email landing.
    dev.set_email_confirmation(true);
    client
        .change_email(&t, "password-2", "c3@example.test")
        .await
        .unwrap();
    let link = dev
        .last_message_to("c3@example.test")
        .unwrap()
        .link
        .unwrap();
    let query = landing_query(&link).await;
    assert_eq!(param(&query, "action"), "change-email");
    assert_eq!(
        client.get_user(&t).await.unwrap().email.as_deref(),
        Some("c3@example.test")
    );

    dev.set_phone_confirmation(true);
    client
        .change_phone(&t, "password-2", "+15550199")
        .await
        .unwrap();
    let code = dev.last_message_to("+15550199").unwrap().code.unwrap();
    let verified = client.verify_phone("+15550199", &code).await.unwrap();
    assert!(
        verified.session.is_none(),
        "a phone change yields no session"
    );
    assert_eq!(
        client.get_user(&t).await.unwrap().phone.as_deref(),
        Some("+15550199")
    );
}

#[tokio::test]
async fn reset_password_by_email_token_and_by_sms_code() {
    let (dev, client) = setup().await;
    let t = token(
        &client
            .sign_up_with_email("r@example.test", "password-1", None)
            .await
            .unwrap(),
    );
    client.send_reset_pwd_email("r@example.test").await.unwrap();
    let link = dev.last_message_to("r@example.test").unwrap().link.unwrap();
    let query = landing_query(&link).await;
    assert_eq!(param(&query, "action"), "reset-pwd");
    let key = Secret::new(param(&query, "access_token"));
    client
        .reset_pwd_with_token(&key, "password-2")
        .await
        .unwrap();
    client
        .sign_in_with_email("r@example.test", "password-2")
        .await
        .unwrap();
    assert!(
        client.get_user(&t).await.unwrap_err().is_invalid_session(),
        "old sessions revoked"
    );
    assert!(
        client
            .reset_pwd_with_token(&key, "password-3")
            .await
            .is_err(),
        "single use"
    );

    client
        .sign_up_with_phone("+15550102", "password-1", None)
        .await
        .unwrap();
    client.send_reset_pwd_code("+15550102").await.unwrap();
    let code = dev.last_message_to("+15550102").unwrap().code.unwrap();
    client
        .reset_pwd_with_code("+15550102", &code, "password-9")
        .await
        .unwrap();
    client
        .sign_in_with_phone("+15550102", "password-9")
        .await
        .unwrap();
}

#[tokio::test]
async fn query_values_are_encoded() {
    let (dev, client) = setup().await;
    client
        .sign_up_with_email("a+b@example.test", "password-1", None)
        .await
        .unwrap();
    client
        .send_magic_link_email("a+b@example.test")
        .await
        .unwrap();
    assert!(
        dev.last_message_to("a+b@example.test").is_some(),
        "the + survived"
    );
}

#[tokio::test]
async fn r1_a_wrong_client_key_is_never_an_invalid_session() {
    let (dev, client) = setup().await;
    let t = token(
        &client
            .sign_up_with_email("k@example.test", "password-1", None)
            .await
            .unwrap(),
    );
    let wrong = Client::new(dev.url(), "not-the-key").unwrap();
    let err = wrong.get_user(&t).await.unwrap_err();
    assert_eq!(err.code(), Some("invalid_client_key"));
    assert!(!err.is_invalid_session());
    assert!(
        wrong.lookup(&Session::new(t.clone())).await.is_err(),
        "lookup is transient, not Invalid"
    );
    assert!(matches!(
        client.lookup(&Session::new(t)).await,
        Ok(Lookup::Valid(_))
    ));
    let revoked = Session::new(SessionToken::new("no-such-session").unwrap());
    assert!(matches!(client.lookup(&revoked).await, Ok(Lookup::Invalid)));
}

#[tokio::test]
async fn t_e1_redirects_are_not_followed_and_errors_carry_no_url() {
    // The dev upstream stopped: a transport error whose text has no URL.
    let (dev, client) = setup().await;
    let t = token(
        &client
            .sign_up_with_email("x@example.test", "password-1", None)
            .await
            .unwrap(),
    );
    let url = dev.url().to_owned();
    dev.shutdown().await;
    let err = client.get_auth_grant("secret-grant-key").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Transport);
    let chain = format!("{err} {err:?} {:?}", std::error::Error::source(&err));
    assert!(!chain.contains("secret-grant-key"), "{chain}");
    assert!(!chain.contains(&url), "{chain}");
    assert!(!format!("{:?}", client.get_user(&t).await).contains(t.expose()));
}
