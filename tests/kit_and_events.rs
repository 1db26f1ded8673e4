//! The app developer's test kit (`authgate::test`) and auth events.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use authgate::events::{AuthEvent, AuthEvents, FlowRejection, SignInMethod};
use authgate::test::{Fault, SessionChange, TestKit};
use authgate::{AuthConfig, CurrentUser, SignOutScope};
use axum::Router;
use axum::routing::get;
use http::StatusCode;
use tokio::sync::mpsc::Receiver;
use tower::ServiceExt as _;

fn app(kit: &TestKit) -> authgate::AuthService<Router> {
    kit.layer().layer(
        Router::new()
            .route("/account", get(|u: CurrentUser| async move { format!("hi {}", u.email.clone().unwrap_or_default()) }))
            .route("/maybe", get(|u: Option<CurrentUser>| async move { u.map(|u| u.id.clone()).unwrap_or_default() })),
    )
}

fn kit_with_events() -> (TestKit, Receiver<AuthEvent>) {
    let (events, receiver) = AuthEvents::channel(64);
    let config = AuthConfig::new("https://app.test")
        .unwrap()
        .with_key([1u8; 64])
        .unwrap()
        .with_events(events);
    (TestKit::with_config(config), receiver)
}

fn drain(receiver: &mut Receiver<AuthEvent>) -> Vec<AuthEvent> {
    let mut events = Vec::new();
    while let Ok(event) = receiver.try_recv() {
        events.push(event);
    }
    events
}

#[tokio::test]
async fn kit_signed_in_and_anonymous_requests() {
    let kit = TestKit::new();
    let user = kit.user("ada@example.test");
    let app = app(&kit);
    let response = app
        .clone()
        .oneshot(kit.signed_in(&user).get("/account"))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(kit.session_change(&response), SessionChange::Unchanged);
    let response = app.oneshot(kit.anonymous().get("/account")).await.unwrap();
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
}

#[tokio::test]
async fn kit_reports_set_and_cleared_sessions() {
    let kit = TestKit::new();
    let user = kit.user("bo@example.test");
    let app = app(&kit);
    let response = app
        .clone()
        .oneshot(kit.anonymous().get(&kit.magic_link(&user)))
        .await
        .unwrap();
    let SessionChange::Set(_) = kit.session_change(&response) else {
        panic!("expected a new session");
    };
    let signed_in = kit.signed_in(&user);
    let response = app
        .clone()
        .oneshot(signed_in.post_form("/auth/signout", ""))
        .await
        .unwrap();
    assert_eq!(kit.session_change(&response), SessionChange::Cleared);
    // The signed-out session is gone.
    let response = app.oneshot(signed_in.get("/account")).await.unwrap();
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
}

#[tokio::test(start_paused = true)]
async fn kit_faults_and_deterministic_time() {
    let kit = TestKit::new();
    let user = kit.user("cy@example.test");
    let other = kit.user("di@example.test");
    let app = app(&kit);
    let request = kit.signed_in(&user);
    let other_request = kit.signed_in(&other);
    assert_eq!(
        app.clone()
            .oneshot(request.get("/account"))
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    assert_eq!(kit.upstream_lookups(), 1);

    // Within the TTL: cache hits, even with a fault configured.
    kit.fail(&user, Fault::Hang);
    tokio::time::advance(Duration::from_secs(30)).await;
    assert_eq!(
        app.clone()
            .oneshot(request.get("/account"))
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    assert_eq!(kit.upstream_lookups(), 1);

    // Past TTL and stale window, a hanging upstream is a 503, never a redirect.
    tokio::time::advance(Duration::from_secs(400)).await;
    let response = app.clone().oneshot(request.get("/account")).await.unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(response.headers().contains_key("retry-after"));
    assert_eq!(kit.session_change(&response), SessionChange::Unchanged);

    // Only that user is affected.
    assert_eq!(
        app.clone()
            .oneshot(other_request.get("/account"))
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );

    // Invalid: signed out, cookie cleared.
    kit.heal(&user);
    kit.fail(&user, Fault::Invalid);
    tokio::time::advance(Duration::from_secs(5)).await; // past the failure cooldown
    let response = app.clone().oneshot(request.get("/account")).await.unwrap();
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    assert_eq!(kit.session_change(&response), SessionChange::Cleared);
}

#[tokio::test]
async fn events_for_sign_in_sign_out_invalidation_and_rejections() {
    let (kit, mut receiver) = kit_with_events();
    let user = kit.user("ev@example.test");
    let app = app(&kit);

    // Signed in (magic link), then the replay is rejected.
    let link = kit.magic_link(&user);
    let response = app
        .clone()
        .oneshot(kit.anonymous().get(&link))
        .await
        .unwrap();
    let SessionChange::Set(token) = kit.session_change(&response) else {
        panic!()
    };
    app.clone()
        .oneshot(kit.anonymous().get(&link))
        .await
        .unwrap();

    // Signed out with scope all, with an off-origin return_to.
    let signed_in = kit.signed_in(&user);
    app.clone()
        .oneshot(signed_in.post_form("/auth/signout?scope=all&return_to=//evil.example", ""))
        .await
        .unwrap();

    // Session invalidated upstream.
    let victim = kit.signed_in(&user);
    kit.fail(&user, Fault::Invalid);
    app.clone().oneshot(victim.get("/account")).await.unwrap();
    kit.heal(&user);

    // Cross-site sign-out and duplicate cookies.
    let cross = http::Request::post("/auth/signout")
        .header("sec-fetch-site", "cross-site")
        .body(axum::body::Body::empty())
        .unwrap();
    app.clone().oneshot(cross).await.unwrap();
    let dup = http::Request::get("/maybe")
        .header("cookie", "__Host-authgate=a; __Host-authgate=b")
        .body(axum::body::Body::empty())
        .unwrap();
    app.clone().oneshot(dup).await.unwrap();

    let events = drain(&mut receiver);
    let has = |f: &dyn Fn(&AuthEvent) -> bool| events.iter().any(f);
    assert!(
        has(
            &|e| matches!(e, AuthEvent::SignedIn { method: SignInMethod::MagicLink, user_id: Some(id), .. } if id == user.id())
        ),
        "{events:#?}"
    );
    assert!(has(&|e| matches!(
        e,
        AuthEvent::FlowRejected {
            reason: FlowRejection::ReplayedGrant,
            ..
        }
    )));
    assert!(has(&|e| matches!(
        e,
        AuthEvent::FlowRejected {
            reason: FlowRejection::OpenRedirect,
            ..
        }
    )));
    assert!(has(&|e| matches!(
        e,
        AuthEvent::SignedOut {
            scope: SignOutScope::All,
            user_id: Some(_),
            ..
        }
    )));
    assert!(has(&|e| matches!(e, AuthEvent::SessionInvalidated { .. })));
    assert!(has(&|e| matches!(
        e,
        AuthEvent::FlowRejected {
            reason: FlowRejection::CrossSite,
            ..
        }
    )));
    assert!(has(&|e| matches!(
        e,
        AuthEvent::FlowRejected {
            reason: FlowRejection::DuplicateCookies,
            ..
        }
    )));
    let text = format!(
        "{events:?} {}",
        events
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(" ")
    );
    assert!(!text.contains(&token), "events carry hashes, never tokens");
}

#[tokio::test]
async fn a_failing_or_panicking_hook_never_fails_the_request() {
    let calls = Arc::new(AtomicUsize::new(0));
    let seen = calls.clone();
    let events = AuthEvents::new(move |event| {
        seen.fetch_add(1, Ordering::SeqCst);
        match event {
            AuthEvent::SignedIn { .. } => panic!("hook bug"),
            _ => Err("hook refused".into()),
        }
    });
    let config = AuthConfig::new("https://app.test")
        .unwrap()
        .with_events(events);
    let kit = TestKit::with_config(config);
    let user = kit.user("hook@example.test");
    let app = app(&kit);
    let response = app
        .clone()
        .oneshot(kit.anonymous().get(&kit.magic_link(&user)))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    let response = app
        .oneshot(kit.signed_in(&user).post_form("/auth/signout", ""))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    for _ in 0..100 {
        if calls.load(Ordering::SeqCst) >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn the_client_reports_credential_changes() {
    let (events, mut receiver) = AuthEvents::channel(16);
    let dev = authgate::dev::DevUpstream::spawn().await.unwrap();
    let client = authgate::altogic::Client::builder(dev.url(), dev.client_key())
        .with_events(events)
        .build()
        .unwrap();
    let signed_up = client
        .sign_up_with_email("cc@example.test", "password-1", None)
        .await
        .unwrap();
    let user_id = signed_up.user.id.clone();
    let token = signed_up.session.unwrap().token;
    client
        .change_password(&token, "password-2", "password-1")
        .await
        .unwrap();
    client
        .change_email(&token, "password-2", "cc2@example.test")
        .await
        .unwrap();
    client
        .change_phone(&token, "password-2", "+15550123")
        .await
        .unwrap();
    let events = drain(&mut receiver);
    assert_eq!(
        events,
        vec![
            AuthEvent::PasswordChanged { user_id: None },
            AuthEvent::EmailChanged {
                user_id: Some(user_id.clone())
            },
            AuthEvent::PhoneChanged {
                user_id: Some(user_id)
            },
        ]
    );
}

/// The layer gives requests that arrive with no extensions a roomy map of
/// its own (issue #5); extensions set before it (here as `ConnectInfo`
/// would be) must survive, and a bare request must still work.
#[tokio::test]
async fn extensions_set_before_the_layer_reach_the_handler() {
    #[derive(Clone)]
    struct Peer(&'static str);
    let kit = TestKit::new();
    let user = kit.user("ext@example.test");
    let app = kit.layer().layer(
        Router::new()
            .route(
                "/who",
                get(
                    |u: CurrentUser, peer: Option<axum::Extension<Peer>>| async move {
                        format!(
                            "{} from {}",
                            u.email.clone().unwrap_or_default(),
                            peer.map_or("-", |p| p.0.0)
                        )
                    },
                ),
            )
            .with_state(()),
    );

    let mut request = kit.signed_in(&user).get("/who");
    request.extensions_mut().insert(Peer("10.0.0.7"));
    let response = app.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body = axum::body::to_bytes(response.into_body(), 1 << 16)
        .await
        .unwrap();
    assert_eq!(&body[..], b"ext@example.test from 10.0.0.7");

    let request = kit.signed_in(&user).get("/who");
    assert!(request.extensions().is_empty());
    let response = app.oneshot(request).await.unwrap();
    let body = axum::body::to_bytes(response.into_body(), 1 << 16)
        .await
        .unwrap();
    assert_eq!(&body[..], b"ext@example.test from -");
}
